//! What the `graft` binary prints, for scripts and for people: `--json` on every command,
//! failures included (`{"error": {"kind", "message"}}` on stdout, the usual exit codes);
//! a closed stdout ends a command quietly; `graft build` shows progress and a summary;
//! logs without colour when not on a terminal, and `RUST_LOG` selecting one plugin; watch
//! mode logging every release it sees.

use graft_tests::{
    Host, built_releases, built_root, eventually_blocking as eventually, graft_binary,
    run_graft as graft, stderr_text as stderr, stdout_text as stdout, workspace_root,
};
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `graft` with `args` and `--json`; its exit code and stdout parsed as one JSON value
/// (a test failure if stdout is not exactly that).
fn graft_json(root: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let output = graft(root, &all);
    let text = stdout(&output);
    let value = serde_json::from_str(&text).unwrap_or_else(|error| {
        panic!(
            "graft {all:?}: stdout is not one JSON value ({error}): {text:?}; stderr: {}",
            stderr(&output)
        )
    });
    (output.status.code().unwrap_or(-1), value)
}

/// Requires `value` to be the JSON error object, of `kind`, its message containing
/// `message`.
fn assert_error(value: &Value, kind: &str, message: &str) {
    assert_eq!(value["error"]["kind"], kind, "{value}");
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|text| text.contains(message)),
        "expected a message with {message:?}: {value}"
    );
}

/// Requires no `{"secs", "nanos"}` object (serde's shape of a `Duration`) anywhere in
/// `value`: a duration is one number, its unit in the field's name.
fn assert_no_duration_objects(value: &Value) {
    match value {
        Value::Object(fields) => {
            assert!(
                !(fields.contains_key("secs") && fields.contains_key("nanos")),
                "a duration as {{secs, nanos}}: {value}"
            );
            fields.values().for_each(assert_no_duration_objects);
        }
        Value::Array(items) => items.iter().for_each(assert_no_duration_objects),
        _ => {}
    }
}

#[test]
fn every_command_prints_json_with_json_on_success_and_on_failure() {
    let root = built_root();
    let root = root.path();
    let _host = Host::start(root, &[]);

    let (code, status) = graft_json(root, &["status"]);
    assert_eq!((code, &status["release"]), (0, &json!("1.0.0")));
    let (code, releases) = graft_json(root, &["releases"]);
    assert_eq!((code, &releases[1]["status"]), (0, &json!("unpacked")));
    let (code, reply) = graft_json(root, &["call", "counter", r#"{"Add": 2}"#]);
    assert_eq!((code, reply), (0, json!({"reply": 2})));
    let (code, cast) = graft_json(root, &["cast", "counter", r#"{"Add": 3}"#]);
    assert_eq!((code, &cast["actor"]), (0, &json!("counter")));
    let (code, suspended) = graft_json(root, &["suspend", "counter"]);
    assert_eq!(
        (code, suspended),
        (0, json!({"actor": "counter", "state": "suspended"}))
    );
    let (code, replaced) = graft_json(root, &["state", "counter", "--replace", r#"{"count": 5}"#]);
    assert_eq!((code, &replaced["replaced"]), (0, &json!(true)));
    let (code, resumed) = graft_json(root, &["resume", "counter"]);
    assert_eq!((code, &resumed["state"]), (0, &json!("running")));
    let (code, state) = graft_json(root, &["state", "counter"]);
    assert_eq!((code, state), (0, json!({"count": 5})));

    let (code, plan) = graft_json(root, &["install", "1.1.0", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(plan.is_object(), "{plan}");
    let (code, report) = graft_json(root, &["install", "1.1.0"]);
    assert_eq!((code, &report["to"]), (0, &json!("1.1.0")), "{report}");
    // One unit per duration field, named in the field.
    assert!(
        report["longest_pause_us"].is_u64() && report["total_us"].is_u64(),
        "{report}"
    );
    assert!(
        report.get("longest_pause").is_none() && report.get("total").is_none(),
        "a duration twice, in two shapes: {report}"
    );
    for value in [&report, &plan, &status] {
        assert_no_duration_objects(value);
    }
    let (code, permanent) = graft_json(root, &["make-permanent", "1.1.0"]);
    assert_eq!(
        (code, permanent),
        (0, json!({"version": "1.1.0", "permanent": true}))
    );
    let (code, rollback) = graft_json(root, &["rollback"]);
    assert_eq!(
        (code, &rollback["to"], &rollback["from"]),
        (0, &json!("1.0.0"), &json!("1.1.0")),
        "{rollback}"
    );
    // Status words are the same lowercase words as in `releases --json`.
    let (code, error) = graft_json(root, &["make-permanent", "1.2.0"]);
    assert_eq!(code, 1);
    assert_error(&error, "failed", "release 1.2.0 is unpacked;");
    let (code, removed) = graft_json(root, &["remove", "1.2.0"]);
    assert_eq!((code, removed), (0, json!({"removed": "1.2.0"})));
    let library = root.join("releases/1.0.0/lib/counter-1.0.0.so");
    let (code, inspection) = graft_json(root, &["inspect", library.to_str().unwrap()]);
    assert_eq!((code, &inspection["loadable"]), (0, &json!(true)));

    // Failures: the error object on stdout, the usual exit codes.
    let (code, error) = graft_json(root, &["install", "9.9.9"]);
    assert_eq!(code, 1);
    assert_error(&error, "failed", "9.9.9");
    let (code, error) = graft_json(root, &["remove", "1.1.0"]);
    assert_eq!(code, 1);
    assert_error(&error, "failed", "release 1.1.0 is permanent");
    let (code, error) = graft_json(root, &["call", "nobody", r#""Get""#]);
    assert_eq!(code, 1);
    assert_error(&error, "failed", "no actor named \"nobody\"");
    let (code, error) = graft_json(root, &["install"]);
    assert_eq!(code, 2);
    assert_error(&error, "usage", "<VERSION>");
    let (code, error) = graft_json(root, &["cast", "kv", "{oops"]);
    assert_eq!(code, 2);
    assert_error(&error, "usage", "<MESSAGE>");
    let (code, error) = graft_json(root, &["inspect", "/nonexistent/library.so"]);
    assert_eq!(code, 2);
    assert_error(&error, "unreadable", "/nonexistent/library.so");

    let empty = tempfile::tempdir().unwrap();
    let (code, error) = graft_json(empty.path(), &["rollback"]);
    assert_eq!(code, 2);
    assert_error(&error, "not_running", "no host is running at");
    let (code, error) = graft_json(empty.path(), &["start"]);
    assert_eq!(code, 1);
    assert_error(&error, "failed", "no assembled release");
}

/// Runs `graft ARGS` with its stdout a pipe whose read end is closed at once, `runs`
/// times; requires a quiet end every time (no panic, no exit 101).
fn assert_quiet_on_a_closed_pipe(root: &Path, args: &[&str], runs: usize) {
    for run in 0..runs {
        let mut child = Command::new(graft_binary())
            .env("GRAFT_ROOT", root)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let code = output.status.code();
        assert!(
            code == Some(0) && !stderr(&output).contains("panicked"),
            "graft {args:?}, run {run}: exit {code:?}, stderr {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_closed_stdout_ends_listing_commands_quietly() {
    let root = built_root();
    let root = root.path();
    let _host = Host::start(root, &[]);
    assert_quiet_on_a_closed_pipe(root, &["releases"], 20);
    assert_quiet_on_a_closed_pipe(root, &["status"], 10);
    assert_quiet_on_a_closed_pipe(root, &["releases", "--json"], 10);
    // A failure whose error object cannot be written ends quietly too, with its code.
    let empty = tempfile::tempdir().unwrap();
    let mut child = Command::new(graft_binary())
        .env("GRAFT_ROOT", empty.path())
        .args(["status", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}

#[test]
fn graft_build_shows_progress_on_stderr_and_a_summary_on_stdout() {
    let target = tempfile::tempdir().unwrap();
    let root = target.path().join("root");
    let root_text = root.to_str().unwrap();
    let workspace = workspace_root();
    let workspace_text = workspace.to_str().unwrap();
    let arguments = [
        "build",
        "1.0.0",
        "--debug",
        "--workspace",
        workspace_text,
        "--root",
        root_text,
    ];
    let output = graft(&root, &arguments);
    assert!(output.status.success(), "{}", stderr(&output));
    let progress = stderr(&output);
    assert!(
        progress.contains("graft: building 6 plugin crate(s) for release(s) 1.0.0"),
        "{progress}"
    );
    // cargo's own status lines, passed on.
    assert!(progress.contains("Finished"), "{progress}");
    assert!(progress.contains("graft: assembling 1.0.0"), "{progress}");
    let summary = stdout(&output);
    assert!(summary.contains("assembled graft-demo 1.0.0"), "{summary}");
    assert!(
        summary.contains("built 6 plugin crate(s) and assembled 1 release(s) into"),
        "{summary}"
    );

    let (code, report) = graft_json(&root, &arguments);
    assert_eq!(code, 0);
    assert_eq!(report["assembled"][0]["version"], "1.0.0", "{report}");
    assert_eq!(report["assembled"][0]["name"], "graft-demo", "{report}");
    assert!(report["elapsed_ms"].is_u64(), "{report}");

    let (code, error) = graft_json(
        &root,
        &["build", "--workspace", "/nonexistent", "--root", root_text],
    );
    assert_eq!(code, 1);
    assert_error(&error, "failed", "/nonexistent/releases");
}

#[test]
fn logs_are_plain_off_a_terminal_and_rust_log_selects_one_plugin() {
    let root = built_root();
    let root = root.path();
    // Only counter's records: its init logs "counter 1.0.0 starting"; super_duper's
    // ("enters the scene") run at the same boot and must not show.
    let host = Host::start_with_environment(
        root,
        &[],
        &[(
            "RUST_LOG",
            std::ffi::OsStr::new("info,graft::plugin=off,graft::plugin::counter=info"),
        )],
    );
    // The host's own logs stay ("host started" comes just after the socket answers).
    assert!(
        eventually(Duration::from_secs(20), || {
            let log = host.log();
            log.contains("counter 1.0.0 starting") && log.contains("host started")
        }),
        "{}",
        host.log()
    );
    let log = host.log();
    assert!(!log.contains("enters the scene"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes off a terminal: {log:?}"
    );
    drop(host);

    let other = built_root();
    let other = other.path();
    let host = Host::start_with_environment(
        other,
        &[],
        &[(
            "RUST_LOG",
            std::ffi::OsStr::new("graft::plugin::super_duper=info"),
        )],
    );
    assert!(
        eventually(Duration::from_secs(20), || host
            .log()
            .contains("enters the scene")),
        "{}",
        host.log()
    );
    let log = host.log();
    assert!(!log.contains("counter 1.0.0 starting"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
}

#[test]
fn watch_mode_logs_a_re_assembled_release_and_a_new_one() {
    let root = built_root();
    let root = root.path();
    std::fs::remove_dir_all(root.join("releases/1.1.0")).unwrap();
    std::fs::remove_dir_all(root.join("releases/1.2.0")).unwrap();
    let host = Host::start(root, &["--watch"]);
    let workspace = workspace_root();
    let build = |version: &str| {
        let output = graft(
            root,
            &[
                "build",
                version,
                "--debug",
                "--workspace",
                workspace.to_str().unwrap(),
            ],
        );
        assert!(output.status.success(), "{}", stderr(&output));
    };
    build("1.0.0");
    assert!(
        eventually(Duration::from_secs(30), || host.log().contains(
            "release assembled again; not installed: it is the running release"
        )),
        "{}",
        host.log()
    );
    // Assembled from the shared build, not built again.
    graft_tests::copy_tree(
        &built_releases().join("releases/1.1.0"),
        &root.join("releases/.incoming-1.1.0"),
    );
    std::fs::rename(
        root.join("releases/.incoming-1.1.0"),
        root.join("releases/1.1.0"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || {
            let log = host.log();
            log.contains("new release; installing it") && log.contains("watch: installed")
        }),
        "{}",
        host.log()
    );
    build("1.1.0");
    assert!(
        eventually(Duration::from_secs(30), || host
            .log()
            .matches("it is the running release")
            .count()
            >= 2),
        "{}",
        host.log()
    );
}

#[test]
fn graft_demo_with_json_tells_its_story_on_stderr_and_reports_in_json() {
    let root = tempfile::tempdir().unwrap();
    let (code, report) = graft_json(root.path(), &["demo", "--debug"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert!(
        report["casts_sent"].as_i64().is_some_and(|sent| sent > 0),
        "{report}"
    );
    assert!(
        report["install_us"].is_u64() && report["rollback_us"].is_u64(),
        "{report}"
    );
}

#[test]
fn a_failed_graft_build_shows_cargo_s_diagnostics_once_and_fails_in_json() {
    let workspace = tempfile::tempdir().unwrap();
    let workspace = workspace.path();
    let write = |path: &str, text: &str| {
        let path = workspace.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "Cargo.toml",
        "[workspace]\nmembers = [\"output-broken\"]\nresolver = \"2\"\n",
    );
    write(
        "output-broken/Cargo.toml",
        "[package]\nname = \"output-broken\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n",
    );
    write(
        "output-broken/src/lib.rs",
        "pub fn oops() -> u32 { \"not a number\" }\n",
    );
    write(
        "releases/0.1.0/release.toml",
        "[release]\nname = \"broken-app\"\nversion = \"0.1.0\"\n\n[plugins.broken]\nversion = \"0.1.0\"\ncrate = \"output-broken\"\n\n[supervisor]\nstrategy = \"one_for_one\"\n\n[[supervisor.children]]\nid = \"broken\"\nplugin = \"broken\"\n",
    );
    let root = workspace.join("root");
    let arguments = [
        "build",
        "--debug",
        "--workspace",
        workspace.to_str().unwrap(),
    ];
    let output = graft(&root, &arguments);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let diagnostics = stderr(&output);
    assert_eq!(
        diagnostics.matches("error[E0308]").count(),
        1,
        "cargo's diagnostics, once: {diagnostics}"
    );
    assert!(
        diagnostics.contains("cargo build of output-broken failed"),
        "{diagnostics}"
    );
    let (code, error) = graft_json(&root, &arguments);
    assert_eq!(code, 1);
    assert_error(&error, "failed", "cargo build of output-broken failed");
}

/// `graft new --json` reports what it created, as one JSON document, for an application
/// and for a plugin added to it.
#[test]
fn graft_new_with_json_reports_what_it_created() {
    let directory = tempfile::tempdir().unwrap();
    let application = directory.path().join("jsonapp");
    let (code, created) = graft_json(
        directory.path(),
        &["new", "jsonapp", "--path", application.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{created}");
    assert_eq!(created["application"], "jsonapp");
    assert_eq!(created["release"], "0.1.0");
    let plugin_directory = created["plugin_directory"].as_str().unwrap();
    assert!(
        Path::new(plugin_directory).join("Cargo.toml").is_file(),
        "{created}"
    );
    let (code, added) = graft_json(
        directory.path(),
        &[
            "new",
            "--plugin",
            "extra",
            "--path",
            application.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{added}");
    assert_eq!(added["plugin"], "extra");
    assert_eq!(added["workspace_member"], true);
    assert!(application.join("plugins/extra/0.1.0/src/lib.rs").is_file());
    let (code, refused) = graft_json(directory.path(), &["new"]);
    assert_eq!(code, 2);
    assert_error(&refused, "usage", "graft new needs an application name");
}
