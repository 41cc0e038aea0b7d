//! Guards `graft-plugin`'s public API: renders it from rustdoc JSON with the `public-api`
//! crate and compares it with the committed snapshot `plugin-api/public-api.txt`, so an
//! accidental change to what plugin authors compile against fails `cargo test`.
//!
//! The snapshot is the API of the last release plus every change deliberately accepted since.
//! To accept a change, rerun with `GRAFT_BLESS_PUBLIC_API=1` (README, "The plugin API's
//! stability") and commit the new snapshot with the change.
//!
//! What is tricky: rustdoc JSON is unstable output. It is produced by the stable toolchain
//! with `RUSTC_BOOTSTRAP=1`, and its format version must be the one the pinned `public-api`
//! release reads ([`FORMAT_VERSION`]); a toolchain that writes another format fails this test
//! with a message saying so, not with a misleading API diff. The nested `cargo rustdoc` uses
//! its own target directory under `CARGO_TARGET_TMPDIR`, so it never waits on the lock of the
//! build running this test, and it is incremental from one run to the next.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The rustdoc JSON format version the pinned `public-api` (0.52.1, `rustdoc-types` 0.57)
/// reads: what rustc 1.95 writes.
const FORMAT_VERSION: u64 = 57;

/// Set to `1` to write the current API to the snapshot instead of comparing.
const BLESS_VARIABLE: &str = "GRAFT_BLESS_PUBLIC_API";

fn snapshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("public-api.txt")
}

/// Runs `cargo rustdoc` on this crate with JSON output; returns the JSON file's path.
fn build_rustdoc_json() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let target_directory = Path::new(env!("CARGO_TARGET_TMPDIR")).join("public-api-rustdoc");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .arg("rustdoc")
        .arg("--quiet")
        .arg("--lib")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_directory)
        .args(["--", "-Z", "unstable-options", "--output-format", "json"])
        // Rustdoc JSON is unstable; the stable toolchain writes it with bootstrap mode on.
        .env("RUSTC_BOOTSTRAP", "1")
        // The outer build's flags are not this build's.
        .env_remove("RUSTDOCFLAGS")
        .output()
        .expect("running `cargo rustdoc` for graft-plugin's rustdoc JSON");
    assert!(
        output.status.success(),
        "`cargo rustdoc --output-format json` for graft-plugin failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    target_directory.join("doc").join("graft_plugin.json")
}

fn format_version(json_path: &Path) -> u64 {
    let text = std::fs::read_to_string(json_path).expect("reading graft-plugin's rustdoc JSON");
    let json: serde_json::Value =
        serde_json::from_str(&text).expect("graft-plugin's rustdoc JSON is JSON");
    json["format_version"]
        .as_u64()
        .expect("rustdoc JSON has a numeric `format_version`")
}

/// The public API, one item a line, sorted: `pub fn …`, `pub enum …`, `impl … for …`.
/// Blanket impls (`impl<T> From<T> for T` and the like) are left out: they follow from the
/// rest. Auto-trait impls (`Send`, `Sync`, `Unpin`, …) stay: losing one breaks authors.
fn render_public_api(json_path: &Path) -> String {
    public_api::Builder::from_rustdoc_json(json_path)
        .omit_blanket_impls(true)
        .build()
        .expect("public-api reads graft-plugin's rustdoc JSON")
        .to_string()
}

#[test]
fn the_public_api_of_graft_plugin_matches_the_committed_snapshot() {
    let json_path = build_rustdoc_json();
    let found_format = format_version(&json_path);
    assert_eq!(
        found_format, FORMAT_VERSION,
        "this toolchain's rustdoc writes JSON format {found_format}, but the pinned `public-api` \
         reads format {FORMAT_VERSION}: move plugin-api's `public-api` dev-dependency to the \
         release that reads format {found_format} and update FORMAT_VERSION in this test"
    );
    let current = render_public_api(&json_path);
    let snapshot_path = snapshot_path();

    if std::env::var(BLESS_VARIABLE).is_ok_and(|value| value == "1") {
        std::fs::write(&snapshot_path, &current).expect("writing plugin-api/public-api.txt");
        return;
    }

    let committed = std::fs::read_to_string(&snapshot_path).unwrap_or_default();
    let Some(difference) = describe_difference(&committed, &current) else {
        return;
    };
    panic!(
        "graft-plugin's public API differs from the committed snapshot {}:\n{difference}\n\
         If the change is intended, accept it with\n    \
         {BLESS_VARIABLE}=1 cargo test -p graft-plugin --test public_api\n\
         and commit plugin-api/public-api.txt with it.",
        snapshot_path.display()
    );
}

/// What changed from the committed API to the current one, or `None` if nothing did: the
/// removed or changed lines (`- `), the added ones (`+ `), and what that means. Lines are
/// compared as a multiset, since one item can render the same line twice (a `Debug` and a
/// `Display` `fmt`).
fn describe_difference(committed: &str, current: &str) -> Option<String> {
    if committed == current {
        return None;
    }
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for line in committed.lines() {
        *counts.entry(line).or_default() -= 1;
    }
    for line in current.lines() {
        *counts.entry(line).or_default() += 1;
    }
    let mut removed = String::new();
    let mut added = String::new();
    for (line, count) in counts {
        let (list, sign) = if count < 0 {
            (&mut removed, '-')
        } else {
            (&mut added, '+')
        };
        for _ in 0..count.abs() {
            list.push_str(&format!("{sign} {line}\n"));
        }
    }
    let verdict = if !removed.is_empty() {
        "Items were removed or changed (`-` lines): that breaks plugin authors' code. It needs \
         a deliberate decision: a semver-breaking version of graft-plugin (0.x to 0.x+1 \
         before 1.0), and, if the exported ABI changes, an ABI major (see README, \
         \"Compatibility\")."
    } else if !added.is_empty() {
        "Only additions: compatible for plugin authors, but check each new public enum is \
         #[non_exhaustive] where a variant may be added later."
    } else {
        "Only the order of the lines changed (a new version of `public-api`?): nothing for \
         plugin authors."
    };
    Some(format!("{removed}{added}\n{verdict}"))
}

#[test]
fn a_removed_item_is_reported_as_breaking() {
    let committed = "pub enum graft_plugin::Flow\npub graft_plugin::Flow::Run\n";
    let current = "pub enum graft_plugin::Flow\n";
    let difference = describe_difference(committed, current).expect("a difference");
    assert!(
        difference.starts_with("- pub graft_plugin::Flow::Run\n"),
        "{difference}"
    );
    assert!(
        difference.contains("breaks plugin authors' code"),
        "{difference}"
    );
}

#[test]
fn a_changed_item_is_reported_as_removed_and_added() {
    let committed = "pub struct graft_plugin::ReplyTo(pub u64)\n";
    let current = "pub struct graft_plugin::ReplyTo(_)\n";
    let difference = describe_difference(committed, current).expect("a difference");
    assert!(
        difference.starts_with(
            "- pub struct graft_plugin::ReplyTo(pub u64)\n+ pub struct graft_plugin::ReplyTo(_)\n"
        ),
        "{difference}"
    );
    assert!(
        difference.contains("breaks plugin authors' code"),
        "{difference}"
    );
}

#[test]
fn an_added_item_is_reported_as_compatible() {
    let committed = "pub enum graft_plugin::Flow\n";
    let current = "pub enum graft_plugin::Flow\npub graft_plugin::Flow::Hibernate\n";
    let difference = describe_difference(committed, current).expect("a difference");
    assert!(
        difference.starts_with("+ pub graft_plugin::Flow::Hibernate\n"),
        "{difference}"
    );
    assert!(difference.contains("Only additions"), "{difference}");
}

#[test]
fn a_lost_duplicate_line_is_a_removal() {
    let line = "pub fn graft_plugin::codec::CodecError::fmt(&self, &mut core::fmt::Formatter<'_>) -> core::fmt::Result";
    let committed = format!("{line}\n{line}\n");
    let current = format!("{line}\n");
    let difference = describe_difference(&committed, &current).expect("a difference");
    assert!(
        difference.starts_with(&format!("- {line}\n")),
        "{difference}"
    );
}

#[test]
fn an_unchanged_api_has_no_difference() {
    let api = "pub enum graft_plugin::Flow\npub graft_plugin::Flow::Run\n";
    assert_eq!(describe_difference(api, api), None);
}
