//! `graft inspect FILE.so`, through the real binary: what a real plugin library is, in text
//! and JSON; refusals (a corrupt file, a patched fingerprint, a newer ABI minor, a
//! `panic = "abort"` build, a missing file) with their exit statuses; and that inspecting
//! runs none of the library's code (a fixture whose load-time constructor leaves a marker).

use graft_plugin::abi;
use graft_tests::{
    abort_plugin_library, find_unique, plugin_library, run_graft, stderr_text, stdout_text,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const COUNTER_1_0: &str = "counter-1-0-0";

/// The callbacks every ABI 1.x plugin provides.
const ABI_1_0_CALLBACKS: [&str; 12] = [
    "initialize",
    "init",
    "handle_call",
    "handle_cast",
    "handle_info",
    "handle_continue",
    "terminate",
    "encode_state",
    "restore_state",
    "code_change",
    "downgrade_state",
    "drop_instance",
];

fn inspect(path: &Path, json: bool) -> std::process::Output {
    let root = tempfile::tempdir().unwrap();
    let path = path.to_str().unwrap();
    let args: Vec<&str> = if json {
        vec!["inspect", "--json", path]
    } else {
        vec!["inspect", path]
    };
    run_graft(root.path(), &args)
}

fn inspect_json(path: &Path) -> (i32, Value) {
    let output = inspect(path, true);
    let report: Value = serde_json::from_str(&stdout_text(&output)).unwrap_or_else(|error| {
        panic!(
            "--json printed no JSON ({error}): {}{}",
            stdout_text(&output),
            stderr_text(&output)
        )
    });
    (output.status.code().unwrap(), report)
}

/// A copy of counter 1.0.0 in `directory` with `value` written at `offset` in its header.
fn patched_counter(directory: &Path, name: &str, offset: usize, value: &[u8]) -> PathBuf {
    let mut bytes = std::fs::read(plugin_library(COUNTER_1_0)).unwrap();
    let mut needle = abi::MAGIC.to_le_bytes().to_vec();
    needle.extend_from_slice(&(size_of::<abi::PluginHeader>() as u32).to_le_bytes());
    let start = find_unique(&bytes, &needle) + offset;
    bytes[start..start + value.len()].copy_from_slice(value);
    let path = directory.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_real_plugin_is_described_and_loadable() {
    let path = plugin_library(COUNTER_1_0);
    let bytes = std::fs::read(&path).unwrap();
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();

    let output = inspect(&path, false);
    let text = stdout_text(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}{}",
        stderr_text(&output)
    );
    for expected in [
        "plugin:         counter 1.0.0",
        &format!("sha256:         {digest}"),
        &format!("size:           {} bytes", bytes.len()),
        &format!("target:         {}", abi::TARGET),
        &format!("(as this host expects of ABI 1.{})", abi::ABI_MINOR),
        "panic strategy: unwind",
        "loadable:       yes",
    ] {
        assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
    }

    let (code, report) = inspect_json(&path);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["loadable"], true);
    assert_eq!(report["refusal"], Value::Null);
    assert_eq!(report["sha256"], digest.as_str());
    assert_eq!(report["size"], bytes.len() as u64);
    let header = &report["header"];
    assert_eq!(header["name"], "counter");
    assert_eq!(header["version"], "1.0.0");
    assert_eq!(
        header["abi"],
        format!("{}.{}", abi::ABI_MAJOR, abi::ABI_MINOR).as_str()
    );
    assert_eq!(
        header["fingerprint"],
        format!("{:#018x}", abi::LAYOUT_FINGERPRINT).as_str()
    );
    assert_eq!(header["fingerprint_matches"], true);
    assert_eq!(header["api_version"], abi::API_VERSION);
    assert_eq!(header["target"], abi::TARGET);
    assert_eq!(header["panic_strategy"], "unwind");
    let callbacks: Vec<&str> = header["callbacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|callback| callback.as_str().unwrap())
        .collect();
    assert_eq!(callbacks[..12], ABI_1_0_CALLBACKS, "{callbacks:?}");
}

#[test]
fn a_corrupt_file_is_refused_with_exit_status_1() {
    let directory = tempfile::tempdir().unwrap();
    let text = directory.path().join("notes.so");
    std::fs::write(&text, b"not a library at all").unwrap();
    let (code, report) = inspect_json(&text);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["loadable"], false);
    assert_eq!(report["header"], Value::Null);
    assert!(
        report["refusal"].as_str().unwrap().contains("not an ELF"),
        "{report}"
    );

    let mut bytes = std::fs::read(plugin_library(COUNTER_1_0)).unwrap();
    bytes.truncate(bytes.len() / 2);
    let truncated = directory.path().join("truncated.so");
    std::fs::write(&truncated, bytes).unwrap();
    let output = inspect(&truncated, false);
    assert_eq!(output.status.code(), Some(1));
    let text = stdout_text(&output);
    assert!(text.contains("loadable:       no:"), "{text}");
    assert!(text.contains("truncated"), "{text}");
}

#[test]
fn a_patched_fingerprint_or_newer_minor_is_described_and_refused() {
    let directory = tempfile::tempdir().unwrap();
    let fingerprint = patched_counter(
        directory.path(),
        "fingerprint.so",
        std::mem::offset_of!(abi::PluginHeader, layout_fingerprint),
        &0xdead_beef_u64.to_le_bytes(),
    );
    let (code, report) = inspect_json(&fingerprint);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["loadable"], false);
    assert_eq!(report["header"]["name"], "counter");
    assert_eq!(report["header"]["fingerprint"], "0x00000000deadbeef");
    assert_eq!(report["header"]["fingerprint_matches"], false);
    assert!(
        report["refusal"]
            .as_str()
            .unwrap()
            .contains("layout fingerprint 0x00000000deadbeef"),
        "{report}"
    );

    let newer = abi::ABI_MINOR + 1;
    let minor = patched_counter(
        directory.path(),
        "minor.so",
        std::mem::offset_of!(abi::PluginHeader, abi_minor),
        &newer.to_le_bytes(),
    );
    let (code, report) = inspect_json(&minor);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        report["header"]["abi"],
        format!("{}.{newer}", abi::ABI_MAJOR).as_str()
    );
    assert!(
        report["refusal"]
            .as_str()
            .unwrap()
            .contains("newer than this host's"),
        "{report}"
    );
}

#[test]
fn a_panic_abort_build_is_described_and_refused() {
    let (code, report) = inspect_json(&abort_plugin_library());
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["header"]["panic_strategy"], "abort");
    assert!(
        report["refusal"].as_str().unwrap().contains("panic"),
        "{report}"
    );
}

#[test]
fn a_missing_file_exits_with_status_2() {
    let output = inspect(Path::new("/nonexistent/libnothing.so"), false);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr_text(&output).contains("/nonexistent/libnothing.so"),
        "{}",
        stderr_text(&output)
    );
}

#[test]
fn inspecting_runs_none_of_the_librarys_code() {
    let path = plugin_library("graft-fixture-constructor");
    // The fixture's constructor writes its marker into the loading process's temporary
    // directory; give `graft inspect` an empty one of its own.
    let temporary = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(graft_tests::graft_binary())
        .env("GRAFT_ROOT", root.path())
        .env("TMPDIR", temporary.path())
        .args(["inspect", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}{}",
        stdout_text(&output),
        stderr_text(&output)
    );
    assert!(stdout_text(&output).contains("plugin:         constructor 0.1.0"));
    let left: Vec<_> = std::fs::read_dir(temporary.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "the library's constructor ran: {left:?}");
}

#[test]
fn each_minor_lists_the_callbacks_it_provides() {
    let (status, old) = inspect_json(&plugin_library("graft-fixture-abi-counter-1-0-0"));
    assert_eq!(status, 0, "an ABI 1.0 library still loads: {old}");
    assert_eq!(old["header"]["abi"], "1.0");
    assert_eq!(old["header"]["fingerprint_matches"], true, "{old}");
    assert_eq!(
        old["header"]["callbacks"],
        serde_json::json!(ABI_1_0_CALLBACKS)
    );
    let (status, new) = inspect_json(&plugin_library("graft-fixture-abi-counter-1-1-0"));
    assert_eq!(status, 0, "{new}");
    // The "1.1" fixture is built with today's crate: the current minor.
    assert_eq!(
        new["header"]["abi"],
        format!("{}.{}", abi::ABI_MAJOR, abi::ABI_MINOR)
    );
    let mut expected: Vec<&str> = ABI_1_0_CALLBACKS.to_vec();
    expected.extend(["health", "format_status"]);
    assert_eq!(new["header"]["callbacks"], serde_json::json!(expected));
}
