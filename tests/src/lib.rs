//! Helpers shared by the end-to-end tests: building the real plugin crates with cargo (once
//! per test process) and making altered copies of their libraries.
//!
//! Tests never load cargo's artifact paths themselves; the loader copies every library to
//! a private file first, and altered copies are written to the test's own temp directory.

use graft::build::CargoBuild;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The workspace root (where the top `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn cache() -> &'static Mutex<HashMap<String, PathBuf>> {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Builds a plugin package (once per process) and returns its `cdylib` path.
pub fn plugin_library(package: &str) -> PathBuf {
    let mut cache = cache().lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(path) = cache.get(package) {
        return path.clone();
    }
    let path = CargoBuild::new(workspace_root())
        .build(package)
        .unwrap_or_else(|error| panic!("building {package}: {error}"));
    cache.insert(package.to_owned(), path.clone());
    path
}

/// Builds `graft-fixture-abort` with `-C panic=abort` and returns a stable copy of it (the
/// same artifact path is rebuilt with unwinding by a normal workspace build).
pub fn abort_plugin_library() -> PathBuf {
    let key = "graft-fixture-abort (panic=abort)";
    let mut cache = cache().lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(path) = cache.get(key) {
        return path.clone();
    }
    let built = CargoBuild::new(workspace_root())
        .rustc_flags(&["-C", "panic=abort"])
        .build("graft-fixture-abort")
        .unwrap_or_else(|error| panic!("building the abort fixture: {error}"));
    let directory = workspace_root().join("target").join("graft-test-artifacts");
    std::fs::create_dir_all(&directory).expect("creating target/graft-test-artifacts");
    let copy = directory.join(format!("abort-{}.so", std::process::id()));
    std::fs::copy(&built, &copy).expect("copying the abort fixture");
    cache.insert(key.to_owned(), copy.clone());
    copy
}

/// Finds `needle` in `haystack`; panics when it is absent or not unique.
pub fn find_unique(haystack: &[u8], needle: &[u8]) -> usize {
    let positions: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(position, _)| position)
        .collect();
    assert_eq!(
        positions.len(),
        1,
        "expected exactly one occurrence of {needle:?}"
    );
    positions[0]
}
