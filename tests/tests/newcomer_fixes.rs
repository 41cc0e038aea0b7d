//! Detours a newcomer met (issue 13, "Output that people and scripts can rely on"), each
//! driven through the real `graft` binary and real plugins: a message with a field of the
//! wrong type is refused with the field's path; a cast the actor cannot decode is reported
//! as queued, then dropped, logged with the path and counted in `graft status`; a release
//! directory whose manifest declares another version is refused at build; a second
//! `graft start` on a root whose host is still booting refuses before running plugin code;
//! an `update` that leaves a child on the older release's `args` is warned about by
//! `graft install --dry-run` and `graft install` (the plan's rules themselves are tested
//! on manifest text in `host/src/release/plan.rs`).
//!
//! Nothing here waits on timing: the tests poll for what they expect under generous
//! deadlines, and the booting host is held in its plugin's `init` by a file the test
//! creates when it is done.

use graft_tests::{
    Host, assembled_root, eventually_blocking as eventually, graft_binary, run_graft as graft,
    stderr_text as stderr, stdout_text as stdout, succeed_graft,
};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);

/// Release 1.0.0 with one child, `counter` (plugins/counter 1.0.0).
fn counter_release() -> String {
    r#"
[release]
name = "newcomer"
version = "1.0.0"

[plugins.counter]
version = "1.0.0"
crate = "plugins/counter/1.0.0"

[supervisor]
strategy = "one_for_one"

[[supervisor.children]]
id = "counter"
plugin = "counter"
args = { start = 0 }
"#
    .to_owned()
}

fn status_json(root: &Path) -> Value {
    serde_json::from_str(&succeed_graft(root, &["status", "--json"])).unwrap()
}

#[test]
fn a_call_whose_field_has_the_wrong_type_is_refused_with_the_fields_path() {
    let root = assembled_root(&[("1.0.0", counter_release())]);
    let root = root.path();
    let _host = Host::start(root, &[]);
    let output = graft(
        root,
        &["call", "counter", r#"{"GetLater": {"delay_ms": "soon"}}"#],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let error = stderr(&output);
    assert!(
        error.contains(r#"invalid type: string "soon", expected u64 at GetLater.delay_ms"#),
        "{error}"
    );
    assert!(!error.contains("marker"), "{error}");
    // The actor is unharmed.
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#"{"Add": 2}"#]).trim(),
        "2"
    );
}

#[test]
fn a_cast_the_actor_cannot_decode_is_reported_queued_then_dropped_counted_and_logged() {
    let root = assembled_root(&[("1.0.0", counter_release())]);
    let root = root.path();
    let host = Host::start(root, &[]);
    let counter = |status: &Value| status["tree"]["children"][0].clone();
    assert_eq!(counter(&status_json(root))["undecodable_messages"], 0);

    // The CLI cannot know whether the actor will decode it: it says the cast was queued.
    let said = succeed_graft(root, &["cast", "counter", r#"{"Add": "soon"}"#]);
    assert!(said.contains("cast queued for counter"), "{said}");
    assert!(said.contains("not yet handled"), "{said}");

    assert!(
        eventually(
            PATIENCE,
            || counter(&status_json(root))["undecodable_messages"] == 1
        ),
        "the drop was not counted: {}",
        status_json(root)
    );
    let text = succeed_graft(root, &["status"]);
    assert!(text.contains("1 undecodable dropped"), "{text}");
    // Logged with the field's path and what was expected.
    assert!(
        eventually(PATIENCE, || host
            .log()
            .contains(r#"invalid type: string "soon", expected i64 at Add"#)),
        "{}",
        host.log()
    );
    // The actor carries on; a good cast is handled and not counted.
    succeed_graft(root, &["cast", "counter", r#"{"Add": 3}"#]);
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#""Get""#]).trim(),
        "3"
    );
    assert_eq!(counter(&status_json(root))["undecodable_messages"], 1);
}

#[test]
fn a_release_directory_whose_manifest_declares_another_version_is_refused_at_build() {
    let workspace = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    // A directory copied for 1.1.0 whose manifest still says 1.0.0.
    let directory = workspace.path().join("releases").join("1.1.0");
    std::fs::create_dir_all(&directory).unwrap();
    std::fs::write(directory.join("release.toml"), counter_release()).unwrap();
    let output = Command::new(graft_binary())
        .args(["build", "--debug", "--workspace"])
        .arg(workspace.path())
        .arg("--root")
        .arg(root.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let error = stderr(&output);
    let canonical = directory.canonicalize().unwrap();
    assert!(
        error.contains(&canonical.display().to_string()),
        "names the directory: {error}"
    );
    assert!(error.contains("declares version 1.0.0"), "{error}");
    assert!(error.contains("expected 1.1.0"), "{error}");
    // Nothing was assembled over release 1.0.0.
    assert!(!root.path().join("releases").join("1.0.0").exists());
    assert!(!root.path().join("releases").join("1.1.0").exists());
}

#[test]
fn a_second_start_on_a_root_still_booting_refuses_before_running_plugin_code() {
    let scratch = tempfile::tempdir().unwrap();
    let journal = scratch.path().join("otp.journal");
    let go = scratch.path().join("go");
    let release = format!(
        r#"
[release]
name = "booting"
version = "1.0.0"

[plugins.otp]
version = "0.1.0"
crate = "tests/fixtures/otp"
callback_timeout_ms = "infinity"

[supervisor]
strategy = "one_for_one"

[[supervisor.children]]
id = "slow"
plugin = "otp"
args = {{ journal = "{}", init_waits_for = "{}" }}
"#,
        journal.display(),
        go.display()
    );
    let root = assembled_root(&[("1.0.0", release)]);
    let root = root.path();
    let inits = || {
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .filter(|line| *line == "init")
            .count()
    };

    // The first host boots and is held in the plugin's `init`: its socket is not bound yet.
    let first_log = scratch.path().join("first.log");
    let mut first = Command::new(graft_binary())
        .env("GRAFT_ROOT", root)
        .arg("start")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&first_log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        eventually(PATIENCE, || inits() == 1),
        "the first host did not reach init: {}",
        std::fs::read_to_string(&first_log).unwrap_or_default()
    );

    // The second refuses, and its refusal comes before any plugin code: still one init.
    let mut second = Command::new(graft_binary())
        .env("GRAFT_ROOT", root)
        .arg("start")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(PATIENCE, || matches!(second.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = second.kill();
    }
    let output = second.wait_with_output().unwrap();
    std::fs::write(&go, "").unwrap();
    assert!(
        exited,
        "the second host kept running (init ran {} times)",
        inits()
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("another host is starting or running on the root"),
        "{}",
        stderr(&output)
    );
    assert_eq!(inits(), 1, "the second host ran the plugin's init");

    // Released, the first host comes up; a later start is refused the same way.
    let socket = root.join("run").join("control.sock");
    assert!(
        eventually(PATIENCE, || std::os::unix::net::UnixStream::connect(
            &socket
        )
        .is_ok()),
        "the first host did not come up: {}",
        std::fs::read_to_string(&first_log).unwrap_or_default()
    );
    let third = graft(root, &["start"]);
    assert_eq!(third.status.code(), Some(1), "{}", stderr(&third));
    assert_eq!(inits(), 1);
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn an_update_that_leaves_a_child_on_the_older_args_is_warned_about_by_dry_run_and_install() {
    let upgraded = r#"
[release]
name = "newcomer"
version = "1.1.0"

[plugins.counter]
version = "1.1.0"
crate = "plugins/counter/1.1.0"

[supervisor]
strategy = "one_for_one"

[[supervisor.children]]
id = "counter"
plugin = "counter"
args = { start = 100 }

[[upgrade]]
from = "1.0.0"

[[upgrade.instructions]]
op = "update"
plugin = "counter"
mode = "advanced"
"#;
    let root = assembled_root(&[("1.0.0", counter_release()), ("1.1.0", upgraded.to_owned())]);
    let root = root.path();
    let _host = Host::start(root, &[]);
    let expected = [
        "warning: child \"counter\" (plugin \"counter\") has new args in 1.1.0 ({ start = 100 })",
        "1.0.0's args ({ start = 0 })",
        "`op = \"update_supervisor\", supervisor = \"root\"`",
    ];

    let plan = succeed_graft(root, &["install", "--dry-run", "1.1.0"]);
    for part in expected {
        assert!(plan.contains(part), "{part}: {plan}");
    }
    let plan: Value = serde_json::from_str(&succeed_graft(
        root,
        &["install", "--dry-run", "--json", "1.1.0"],
    ))
    .unwrap();
    assert_eq!(plan["warnings"][0]["child"], "counter", "{plan}");

    // The install runs regardless, and says so on stderr beside its summary.
    let output = graft(root, &["install", "1.1.0"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("installed 1.1.0"),
        "{}",
        stdout(&output)
    );
    for part in expected {
        assert!(
            stderr(&output).contains(part),
            "{part}: {}",
            stderr(&output)
        );
    }
}
