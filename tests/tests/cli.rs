//! The `graft` binary end to end: a host started as a child process, driven through every
//! subcommand; kill -9 and restart; watch mode; the health gate's automatic rollback;
//! malformed requests and many clients on the control socket; its permissions; usage
//! errors. (`graft new` and `graft dev`: tests/newcomer.rs.)

use graft_tests::{
    Host, built_releases, built_root, copy_tree, eventually_blocking as eventually, graft_binary,
    run_graft as graft, stderr_text as stderr, stdout_text as stdout, succeed_graft,
};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn json(root: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&succeed_graft(root, args)).unwrap()
}

#[test]
fn every_subcommand_against_a_running_host() {
    let root = built_root();
    let root = root.path();
    let mut host = Host::start(root, &[]);

    let status = succeed_graft(root, &["status"]);
    assert!(status.contains("release 1.0.0"), "{status}");
    assert!(
        status.contains("counter 1.0.0") && status.contains("characters (supervisor)"),
        "{status}"
    );
    let status = json(root, &["status", "--json"]);
    assert_eq!(status["release"], "1.0.0");
    let releases = json(root, &["releases", "--json"]);
    assert_eq!(releases[0]["status"], "permanent");
    assert_eq!(releases[1]["status"], "unpacked");

    assert_eq!(
        succeed_graft(root, &["call", "counter", r#"{"Add": 2}"#]).trim(),
        "2"
    );
    succeed_graft(root, &["cast", "counter", r#"{"Add": 3}"#]);
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#""Get""#, "--timeout", "2000"]).trim(),
        "5"
    );
    assert_eq!(
        json(root, &["state", "counter", "--json"]),
        serde_json::json!({"count": 5})
    );

    assert!(succeed_graft(root, &["suspend", "counter"]).contains("counter suspended"));
    succeed_graft(root, &["cast", "counter", r#"{"Add": 1}"#]);
    let status = json(root, &["status", "--json"]);
    let counter = &status["tree"]["children"][0];
    assert_eq!(
        (counter["id"].as_str(), counter["state"].as_str()),
        (Some("counter"), Some("suspended"))
    );
    assert_eq!(counter["mailbox"], 1);
    succeed_graft(root, &["resume", "counter"]);
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#""Get""#]).trim(),
        "6"
    );

    let install = graft(root, &["install", "1.1.0"]);
    assert!(install.status.success(), "{}", stderr(&install));
    assert!(
        stdout(&install)
            .starts_with("installed 1.1.0 (from 1.0.0): 2 actors migrated, longest pause")
    );
    assert!(
        stderr(&install).contains("suspending 2 actors"),
        "progress: {}",
        stderr(&install)
    );
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#""History""#]).trim(),
        "[]"
    );
    succeed_graft(root, &["make-permanent", "1.1.0"]);
    let releases = json(root, &["releases", "--json"]);
    assert_eq!(releases[1]["status"], "permanent");

    // Rollback from a permanent release goes to the newest old one.
    let rollback = succeed_graft(root, &["rollback"]);
    assert!(
        rollback.starts_with("installed 1.0.0 (from 1.1.0)"),
        "{rollback}"
    );
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#""Get""#]).trim(),
        "6"
    );
    assert!(succeed_graft(root, &["remove", "1.2.0"]).contains("removed 1.2.0"));

    // Failures: exit 1 with the reason.
    let removed = graft(root, &["remove", "1.1.0"]);
    assert_eq!(removed.status.code(), Some(1));
    assert!(
        stderr(&removed).contains("release 1.1.0 is permanent; it cannot be removed"),
        "{}",
        stderr(&removed)
    );
    let unknown = graft(root, &["call", "nobody", r#""Get""#]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(stderr(&unknown).contains("no actor named \"nobody\""));
    let refused = graft(root, &["call", "counter", r#""History""#]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("unknown variant `History`"),
        "{}",
        stderr(&refused)
    );

    host.signal("TERM");
    assert_eq!(host.wait(), 0, "{}", host.log());
    let log = host.log();
    assert!(
        log.contains("stopping: shutting the supervision tree down") && log.contains("stopped"),
        "{log}"
    );
    assert!(
        !root.join("run/control.sock").exists(),
        "the socket is removed on a clean stop"
    );
}

#[test]
fn usage_errors_name_the_argument_and_no_host_is_exit_2() {
    let root = tempfile::tempdir().unwrap();
    let missing = graft(root.path(), &["call", "kv"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("<MESSAGE>"),
        "{}",
        stderr(&missing)
    );
    let not_json = graft(root.path(), &["cast", "kv", "{oops"]);
    assert_eq!(not_json.status.code(), Some(2));
    assert!(
        stderr(&not_json).contains("invalid value '{oops' for '<MESSAGE>'"),
        "{}",
        stderr(&not_json)
    );
    let not_semver = graft(root.path(), &["install", "latest"]);
    assert_eq!(not_semver.status.code(), Some(2));
    assert!(
        stderr(&not_semver).contains("'<VERSION>'"),
        "{}",
        stderr(&not_semver)
    );
    let unknown = graft(root.path(), &["launch"]);
    assert_eq!(unknown.status.code(), Some(2));
    let no_host = graft(root.path(), &["status"]);
    assert_eq!(no_host.status.code(), Some(2));
    assert!(
        stderr(&no_host).contains("no host is running at"),
        "{}",
        stderr(&no_host)
    );
    let help = graft(root.path(), &["install", "--help"]);
    assert!(help.status.success() && stdout(&help).contains("--permanent"));
    let nothing = graft(root.path(), &["start"]);
    assert_eq!(nothing.status.code(), Some(1));
    assert!(
        stderr(&nothing).contains("no assembled release"),
        "{}",
        stderr(&nothing)
    );
}

#[test]
fn a_host_killed_with_sigkill_restarts_on_the_permanent_release() {
    let root = built_root();
    let root = root.path();
    let mut host = Host::start(root, &[]);
    succeed_graft(root, &["call", "counter", r#"{"Add": 9}"#]);
    succeed_graft(root, &["install", "1.1.0"]);
    host.signal("KILL");
    host.wait();
    let record = std::fs::read_to_string(root.join("releases/RELEASES.json")).unwrap();
    assert!(record.contains("\"permanent\": \"1.0.0\""), "{record}");

    // The stale socket is replaced; the permanent release boots.
    let _host = Host::start(root, &[]);
    assert_eq!(json(root, &["status", "--json"])["release"], "1.0.0");
    let releases = json(root, &["releases", "--json"]);
    assert_eq!(
        releases[1]["status"], "unpacked",
        "1.1.0 was never made permanent"
    );
}

fn send_raw(stream: &mut UnixStream, bytes: &[u8]) -> Value {
    stream.write_all(bytes).unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line:?}"))
}

#[test]
fn malformed_oversized_and_unknown_requests_get_errors_and_the_host_carries_on() {
    let root = built_root();
    let root = root.path();
    let _host = Host::start(root, &[]);
    let socket = root.join("run/control.sock");
    let mut stream = UnixStream::connect(&socket).unwrap();

    let response = send_raw(&mut stream, b"this is not json\n");
    assert_eq!(response["ok"], false);
    assert!(
        response["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid request"),
        "{response}"
    );
    let response = send_raw(&mut stream, b"{\"command\":\"launch\"}\n");
    assert!(
        response["error"]
            .as_str()
            .unwrap()
            .contains("unknown variant `launch`"),
        "{response}"
    );
    let response = send_raw(
        &mut stream,
        b"{\"command\":\"call\",\"actor\":\"counter\"}\n",
    );
    assert!(
        response["error"]
            .as_str()
            .unwrap()
            .contains("missing field `message`"),
        "{response}"
    );
    let response = send_raw(
        &mut stream,
        b"{\"command\":\"call\",\"actor\":\"counter\",\"message\":\"Get\"}\n",
    );
    assert_eq!(
        response,
        serde_json::json!({"ok": true, "result": 0}),
        "the same connection still works"
    );

    let big = UnixStream::connect(&socket).unwrap();
    let oversized = vec![b'x'; 2 * 1024 * 1024];
    let writer = std::thread::spawn({
        let mut big = big.try_clone().unwrap();
        move || {
            let _ = big.write_all(&oversized);
        }
    });
    let mut response = String::new();
    BufReader::new(big.try_clone().unwrap())
        .read_line(&mut response)
        .unwrap();
    assert!(response.contains("request too large"), "{response}");
    let _ = big.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();

    // A client that disconnects mid-request.
    let mut rude = UnixStream::connect(&socket).unwrap();
    rude.write_all(b"{\"command\":\"call\",\"actor\":\"counter\",\"mess")
        .unwrap();
    drop(rude);
    let mut rude = UnixStream::connect(&socket).unwrap();
    rude.write_all(b"{\"command\":\"status\"}\n").unwrap();
    drop(rude);

    assert_eq!(
        json(root, &["status", "--json"])["release"],
        "1.0.0",
        "the host carries on"
    );
}

#[test]
fn a_hundred_clients_at_once() {
    let root = built_root();
    let root = root.path().to_owned();
    let _host = Host::start(&root, &[]);
    let socket = root.join("run/control.sock");
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut stream = UnixStream::connect(&socket).unwrap();
                let response = send_raw(
                    &mut stream,
                    b"{\"command\":\"call\",\"actor\":\"counter\",\"message\":{\"Add\":1}}\n",
                );
                assert_eq!(response["ok"], true, "{response}");
                let response = send_raw(&mut stream, b"{\"command\":\"status\"}\n");
                assert_eq!(response["ok"], true);
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(
        succeed_graft(&root, &["call", "counter", r#""Get""#]).trim(),
        "100"
    );
}

#[test]
fn only_the_owner_can_reach_the_control_socket() {
    let root = built_root();
    // The socket's directory must be reachable for another user to even try.
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let _host = Host::start(root.path(), &[]);
    let socket = root.path().join("run/control.sock");
    let directory_mode = std::fs::metadata(root.path().join("run"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    let socket_mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!((directory_mode, socket_mode), (0o700, 0o600));

    // As `nobody`, the host is out of reach.
    let binary = graft_binary();
    let mut binary_copy = std::env::temp_dir().join(format!("graft-nobody-{}", std::process::id()));
    std::fs::copy(&binary, &binary_copy).unwrap();
    std::fs::set_permissions(&binary_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary_copy)
        .arg("--root")
        .arg(root.path())
        .arg("status")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&mut binary_copy);
    // Told as it is: permission denied (exit 3), not "no host is running" (exit 2).
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("permission denied: uid 65534")
            && !stderr(&output).contains("no host"),
        "{}",
        stderr(&output)
    );
}

/// Drops an assembled release into a root the way assembling does: whole, by rename.
fn drop_in_release(root: &Path, version: &str) {
    let staging = root.join("releases").join(format!(".incoming-{version}"));
    copy_tree(&built_releases().join("releases").join(version), &staging);
    std::fs::rename(&staging, root.join("releases").join(version)).unwrap();
}

fn root_with_only_1_0_0() -> tempfile::TempDir {
    let root = built_root();
    std::fs::remove_dir_all(root.path().join("releases/1.1.0")).unwrap();
    std::fs::remove_dir_all(root.path().join("releases/1.2.0")).unwrap();
    root
}

fn release_status(root: &Path, version: &str) -> (String, bool) {
    let releases = json(root, &["releases", "--json"]);
    releases
        .as_array()
        .unwrap()
        .iter()
        .find(|release| release["version"] == version)
        .map(|release| {
            (
                release["status"].as_str().unwrap().to_owned(),
                release["running"] == true,
            )
        })
        .unwrap_or_default()
}

#[test]
fn watch_mode_installs_a_dropped_in_release_and_makes_it_permanent_when_healthy() {
    let root = root_with_only_1_0_0();
    let root = root.path();
    let host = Host::start(root, &["--watch", "--auto-permanent", "1"]);
    succeed_graft(root, &["call", "counter", r#"{"Add": 4}"#]);
    drop_in_release(root, "1.1.0");
    assert!(
        eventually(Duration::from_secs(20), || release_status(root, "1.1.0")
            == ("permanent".to_owned(), true)),
        "1.1.0 was not installed and made permanent: {:?}\n{}",
        release_status(root, "1.1.0"),
        host.log()
    );
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#""Get""#]).trim(),
        "4",
        "state kept"
    );
}

#[test]
fn a_crash_inside_the_health_window_rolls_the_release_back() {
    let root = root_with_only_1_0_0();
    let root = root.path();
    let host = Host::start(root, &["--watch", "--auto-permanent", "3"]);
    drop_in_release(root, "1.1.0");
    assert!(
        eventually(Duration::from_secs(20), || release_status(root, "1.1.0").1),
        "1.1.0 was not installed: {}",
        host.log()
    );
    // Crash an actor of the new release inside the window.
    let crash = graft(root, &["call", "calculator", r#"{"Divide": 0}"#]);
    assert_eq!(crash.status.code(), Some(1));
    assert!(
        eventually(Duration::from_secs(20), || release_status(root, "1.0.0")
            == ("permanent".to_owned(), true)),
        "no automatic rollback: {}",
        host.log()
    );
    assert_ne!(release_status(root, "1.1.0").0, "permanent");
    assert!(
        host.log().contains("actors crashed in the health window"),
        "{}",
        host.log()
    );
}
