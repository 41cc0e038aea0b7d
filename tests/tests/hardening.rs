//! The fault matrix's rows for what a host trusts and what it answers (issue 10): a root
//! another user can write, an impostor on the control socket, symbolic links planted at
//! `run/`, at the socket and at a release; read-only requests during a long install;
//! rollback's target; and the CLI's messages and exit codes for a reply without its fields,
//! a bind failure, a host that dies mid-request, a resume of a running
//! actor. Each row names what it injects and asserts what survives.
//!
//! Exit codes: 0 done, 1 refused or failed by the host, 2 no host reachable (or it died),
//! 3 refused for safety (untrusted root, impostor, permission denied).
//! The other-user rows run a process as `nobody` via `setpriv` (we run as root in CI); the
//! row of a user denied the socket is `only_the_owner_can_reach_the_control_socket` in
//! `cli.rs`.

use graft::control::{ControlClient, ControlServer, Request};
use graft::release::handler::ReleaseHandler;
use graft_tests::{
    Host, boot, example_root, faulty_releases, run_graft as graft, stderr_text as stderr,
    stdout_text as stdout, version,
};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Asserts the exit code and that stderr holds every one of `needles`.
fn assert_fails(output: &Output, code: i32, needles: &[&str]) {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "expected {needle:?} in: {text}");
    }
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn running_as_root() -> bool {
    graft::trust::current_user() == 0
}

#[test]
fn injected_a_root_part_others_can_write_the_host_refuses_to_start_naming_path_and_mode() {
    let root = example_root();
    std::fs::create_dir_all(root.path().join("run")).unwrap();
    std::fs::write(
        root.path().join("releases/RELEASES.json"),
        "{\"permanent\":null}",
    )
    .unwrap();
    for part in ["", "run", "releases", "releases/RELEASES.json"] {
        let path = root.path().join(part);
        let before = mode_of(&path);
        set_mode(&path, before | 0o002);
        let output = graft(root.path(), &["start"]);
        let shown = path.to_string_lossy().trim_end_matches('/').to_owned();
        assert_fails(
            &output,
            3,
            &[
                &shown,
                "writable by others",
                &format!("{:03o}", before | 0o002),
            ],
        );
        set_mode(&path, before);
    }
    // Fixed, it starts.
    let _host = Host::start(root.path(), &[]);
}

/// Under a umask of 002 (many desktop sessions), what `graft build` makes is still a root
/// `graft start` trusts: its directories and files get explicit modes.
#[test]
fn a_root_built_under_a_group_writable_umask_starts() {
    let root = tempfile::tempdir().unwrap();
    let output = Command::new("sh")
        .args(["-c", "umask 002 && exec \"$0\" \"$@\""])
        .arg(graft_tests::graft_binary())
        .args(["build", "--debug", "--workspace"])
        .arg(graft_tests::workspace_root())
        .arg("--root")
        .arg(root.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let releases = root.path().join("releases");
    assert_eq!(mode_of(&releases), 0o755);
    assert_eq!(mode_of(&releases.join("1.0.0/lib")), 0o755);
    assert_eq!(mode_of(&releases.join("1.0.0/release.toml")), 0o644);
    let _host = Host::start(root.path(), &[]);
    let status = graft(root.path(), &["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
}

#[test]
fn injected_a_run_directory_others_can_write_the_client_refuses_to_connect() {
    let root = example_root();
    let host = Host::start(root.path(), &[]);
    let run = root.path().join("run");
    set_mode(&run, 0o777);
    let output = graft(root.path(), &["status"]);
    assert_fails(&output, 3, &[&run.to_string_lossy(), "777", "chmod go-w"]);
    set_mode(&run, 0o700);
    // The host ran on; the client talks to it again.
    let output = graft(root.path(), &["status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    drop(host);
}

/// Not a test: the impostor, run as `nobody` by the impostor row (this test binary with
/// `--ignored --exact impostor_process`). Listens on `GRAFT_IMPOSTOR_SOCKET` and writes
/// whatever a client sends to `GRAFT_IMPOSTOR_RECEIVED`.
#[test]
#[ignore = "the impostor process of the impostor row, not a test"]
fn impostor_process() {
    let (Ok(socket), Ok(received)) = (
        std::env::var("GRAFT_IMPOSTOR_SOCKET"),
        std::env::var("GRAFT_IMPOSTOR_RECEIVED"),
    ) else {
        return;
    };
    let listener = UnixListener::bind(&socket).unwrap();
    println!("impostor listening");
    for stream in listener.incoming() {
        let mut stream = stream.unwrap();
        let mut line = String::new();
        let _ = BufReader::new(&stream).read_line(&mut line);
        std::fs::write(&received, &line).unwrap();
        let _ = stream.write_all(b"{\"ok\":true,\"result\":{}}\n");
    }
}

#[test]
fn injected_an_impostor_of_another_user_on_the_socket_the_client_sends_nothing() {
    if !running_as_root() {
        eprintln!("skipped: needs root to run the impostor as nobody");
        return;
    }
    let root = example_root();
    let run = root.path().join("run");
    std::fs::create_dir(&run).unwrap();
    set_mode(&run, 0o700);
    // The impostor binds in a directory nobody can write; root then moves its socket into
    // place (as an attacker with a foothold could have arranged).
    let lair = tempfile::tempdir().unwrap();
    set_mode(lair.path(), 0o777);
    let program = lair.path().join("impostor");
    std::fs::copy(std::env::current_exe().unwrap(), &program).unwrap();
    set_mode(&program, 0o755);
    let socket = lair.path().join("impostor.sock");
    let received = lair.path().join("received");
    let mut impostor = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&program)
        .args(["--exact", "impostor_process", "--ignored", "--nocapture"])
        .env("GRAFT_IMPOSTOR_SOCKET", &socket)
        .env("GRAFT_IMPOSTOR_RECEIVED", &received)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        graft_tests::eventually_blocking(Duration::from_secs(20), || socket.exists()),
        "the impostor did not start"
    );
    let planted = run.join("control.sock");
    std::fs::rename(&socket, &planted).unwrap();
    // A socket file of another user is refused on sight.
    assert_fails(
        &graft(root.path(), &["install", "1.1.0"]),
        3,
        &["control.sock is owned by uid 65534"],
    );
    // Even when its file looks like ours, the process behind it is not.
    std::os::unix::fs::chown(&planted, Some(0), Some(0)).unwrap();
    let output = graft(root.path(), &["install", "1.1.0"]);
    let _ = impostor.kill();
    let _ = impostor.wait();
    assert_fails(
        &output,
        3,
        &["refusing to talk to", "uid 65534", "impostor"],
    );
    // It connected (to learn who serves the socket) and hung up without a byte.
    let sent = std::fs::read_to_string(&received).unwrap_or_default();
    assert!(sent.is_empty(), "the client sent the impostor: {sent}");
}

#[test]
fn injected_a_symbolic_link_at_run_the_host_neither_chmods_nor_deletes_through_it() {
    let root = example_root();
    let victim = tempfile::tempdir().unwrap();
    set_mode(victim.path(), 0o755);
    std::fs::write(victim.path().join("control.sock"), b"precious").unwrap();
    std::os::unix::fs::symlink(victim.path(), root.path().join("run")).unwrap();
    let output = graft(root.path(), &["start"]);
    assert_fails(&output, 3, &["run", "symbolic link"]);
    assert_eq!(
        mode_of(victim.path()),
        0o755,
        "the link's target was chmodded"
    );
    assert_eq!(
        std::fs::read(victim.path().join("control.sock")).unwrap(),
        b"precious"
    );
    // The client does not follow it either.
    assert_fails(&graft(root.path(), &["status"]), 3, &["symbolic link"]);
}

#[test]
fn injected_a_symbolic_link_at_the_socket_path_it_is_not_followed() {
    let root = example_root();
    let run = root.path().join("run");
    std::fs::create_dir(&run).unwrap();
    set_mode(&run, 0o700);
    let victim = tempfile::tempdir().unwrap();
    let target = victim.path().join("file");
    std::fs::write(&target, b"precious").unwrap();
    std::os::unix::fs::symlink(&target, run.join("control.sock")).unwrap();
    assert_fails(
        &graft(root.path(), &["start"]),
        3,
        &["control.sock", "symbolic link"],
    );
    assert_fails(
        &graft(root.path(), &["status"]),
        3,
        &["control.sock", "symbolic link"],
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}

#[test]
fn injected_a_symbolic_link_at_a_release_directory_the_install_is_refused() {
    let root = example_root();
    // 1.1.0 moves out and a link takes its place.
    let elsewhere = tempfile::tempdir().unwrap();
    let moved = elsewhere.path().join("1.1.0");
    std::fs::rename(root.path().join("releases/1.1.0"), &moved).unwrap();
    std::os::unix::fs::symlink(&moved, root.path().join("releases/1.1.0")).unwrap();
    let _host = Host::start(root.path(), &[]);
    assert_fails(
        &graft(root.path(), &["install", "1.1.0"]),
        1,
        &["releases/1.1.0", "symbolic link"],
    );
    // Still on 1.0.0, and serving.
    let status: Value =
        serde_json::from_str(&stdout(&graft(root.path(), &["status", "--json"]))).unwrap();
    assert_eq!(status["release"], json!("1.0.0"));
}

/// An install of `faulty` whose `code_change` takes 3 s in one actor (and a suspend
/// deadline long enough to wait for it).
const SLOW_UPGRADE: &str = "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\nplugin = \"faulty\"\nsuspend_timeout_ms = 30000\n";

async fn request(root: &Path, request: Request) -> Result<Value, graft::control::ControlError> {
    ControlClient::connect(root)
        .await?
        .request(&request, |_| {})
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_a_long_install_status_releases_and_state_answer_meanwhile() {
    let root = faulty_releases(
        3,
        |index| {
            if index == 3 {
                "{ hang_in = [\"code_change\"] }"
            } else {
                "{}"
            }
        },
        SLOW_UPGRADE,
    );
    let (_runtime, handler) = boot(root.path()).await;
    let handler: Arc<ReleaseHandler> = Arc::new(handler);
    let server = ControlServer::bind(root.path()).await.unwrap();
    let serving = tokio::spawn(server.serve(Arc::clone(&handler)));
    let install = {
        let handler = Arc::clone(&handler);
        tokio::spawn(async move { handler.install(&version("2.0.0"), None).await })
    };
    assert!(
        graft_tests::eventually(Duration::from_secs(20), || handler.install_in_progress()).await,
        "the install did not start"
    );
    let mut timings = Vec::new();
    for (name, command) in [
        ("status", Request::Status {}),
        ("releases", Request::Releases {}),
        (
            "state",
            Request::State {
                actor: "f1".to_owned(),
                replace: None,
                raw: false,
            },
        ),
    ] {
        let started = Instant::now();
        let answer = request(root.path(), command).await.unwrap();
        timings.push((name, started.elapsed()));
        if name == "status" {
            assert_eq!(answer["install_in_progress"], json!(true), "{answer}");
            assert_eq!(
                answer["release"],
                json!("1.0.0"),
                "as of before the install"
            );
        }
        if name == "releases" {
            assert!(
                answer
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|release| release["version"] == json!("1.0.0")
                        && release["running"] == json!(true)),
                "{answer}"
            );
        }
    }
    // An operator's suspend would race the install's own: refused while it runs.
    let refused = request(
        root.path(),
        Request::Suspend {
            actor: "f1".to_owned(),
        },
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("an install is in progress"),
        "{refused}"
    );
    // Each answered while the install still ran (it waits 3 s on f3's code_change).
    assert!(
        !install.is_finished(),
        "the install ended before the reads were answered: {timings:?}"
    );
    eprintln!("read-only requests during an install: {timings:?}");
    install.await.unwrap().unwrap();
    let answer = request(root.path(), Request::Status {}).await.unwrap();
    assert_eq!(answer["release"], json!("2.0.0"));
    assert_eq!(answer["install_in_progress"], json!(false));
    serving.abort();
    handler.shutdown().await;
}

#[test]
fn rollback_undoes_the_last_install_and_refuses_when_nothing_is_left() {
    let root = example_root();
    let _host = Host::start(root.path(), &[]);
    let installed = graft(root.path(), &["install", "1.1.0"]);
    assert!(installed.status.success(), "{}", stderr(&installed));
    let rollback = graft(root.path(), &["rollback"]);
    assert!(
        stdout(&rollback).starts_with("installed 1.0.0 (from 1.1.0)"),
        "{}{}",
        stdout(&rollback),
        stderr(&rollback)
    );
    // Nothing left to undo: refused, and nothing newer gets installed.
    assert_fails(
        &graft(root.path(), &["rollback"]),
        1,
        &["nothing to roll back to", "1.0.0", "graft install"],
    );
    // Two installs, two rollbacks, in reverse order; a permanent release is no barrier.
    for target in ["1.1.0", "1.2.0"] {
        let output = graft(root.path(), &["install", target, "--permanent"]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    for expected in [
        "installed 1.1.0 (from 1.2.0)",
        "installed 1.0.0 (from 1.1.0)",
    ] {
        let output = graft(root.path(), &["rollback"]);
        assert!(
            stdout(&output).starts_with(expected),
            "{expected}: {}{}",
            stdout(&output),
            stderr(&output)
        );
    }
    assert_fails(
        &graft(root.path(), &["rollback"]),
        1,
        &["nothing to roll back to"],
    );
}

/// A fake host in this process (same user, so it passes the peer check): answers each
/// request line with `reply` (none: closes the connection and stops listening).
fn fake_host(root: &Path, reply: Option<&'static str>) -> std::thread::JoinHandle<String> {
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    set_mode(&run, 0o700);
    let listener = UnixListener::bind(run.join("control.sock")).unwrap();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).unwrap();
        match reply {
            Some(reply) => {
                (&stream).write_all(reply.as_bytes()).unwrap();
                (&stream).write_all(b"\n").unwrap();
            }
            // A dying process closes every descriptor at once; the listener goes first
            // here so that the client, on seeing its connection end, can never still
            // reach a listening socket (that would read as "closed this connection").
            None => {
                drop(listener);
                drop(stream);
            }
        }
        line
    })
}

#[test]
fn injected_an_install_reply_without_its_fields_the_cli_fails_instead_of_printing_question_marks() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake_host(root.path(), Some("{\"ok\":true,\"result\":{}}"));
    let output = graft(root.path(), &["install", "1.1.0"]);
    assert!(fake.join().unwrap().contains("install"));
    assert_fails(
        &output,
        1,
        &["invalid response to `install`", "missing field `from`"],
    );
    assert!(!stdout(&output).contains('?'), "{}", stdout(&output));
}

/// A host whose `status` renamed a field (`state` → `status` on an actor): the CLI names
/// the command and the field instead of printing "?".
#[test]
fn injected_a_status_reply_with_a_renamed_field_the_cli_names_the_field() {
    const RENAMED: &str = r#"{"ok":true,"result":{"release":"1.0.0","install_in_progress":false,"tree":{"id":"root","supervisor":true,"counts":null,"children":[{"id":"kv","name":"kv","status":"running","restarts":0,"mailbox":0,"mailbox_high_water":0}]},"resident":[],"workers":[],"still_mapped_after_close":[],"stuck_callbacks":[],"releases":[]}}"#;
    // With --json: an error object of kind `protocol`.
    let root = tempfile::tempdir().unwrap();
    let fake = fake_host(root.path(), Some(RENAMED));
    let output = graft(root.path(), &["status", "--json"]);
    fake.join().unwrap();
    let error: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(error["error"]["kind"], json!("protocol"), "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("missing field `state`"), "{message}");

    let root = tempfile::tempdir().unwrap();
    let fake = fake_host(root.path(), Some(RENAMED));
    let output = graft(root.path(), &["status"]);
    assert!(fake.join().unwrap().contains("status"));
    assert_fails(
        &output,
        1,
        &[
            "invalid response to `status`",
            "children[0]",
            "missing field `state`",
        ],
    );
    assert!(!stdout(&output).contains('?'), "{}", stdout(&output));
}

#[test]
fn injected_a_host_that_dies_mid_request_the_cli_says_it_died() {
    let root = tempfile::tempdir().unwrap();
    let fake = fake_host(root.path(), None);
    let output = graft(root.path(), &["status"]);
    fake.join().unwrap();
    assert_fails(
        &output,
        2,
        &["the host at", "died while handling the request"],
    );
}

#[test]
fn injected_a_socket_path_too_long_to_bind_start_says_it_cannot_serve() {
    let base = example_root();
    // A root whose socket path is longer than a Unix socket address holds (108 bytes).
    let root = base.path().join("a".repeat(120));
    std::fs::create_dir(&root).unwrap();
    std::fs::rename(base.path().join("releases"), root.join("releases")).unwrap();
    let output = graft(&root, &["start"]);
    assert_fails(
        &output,
        1,
        &["cannot serve the control socket at", "control.sock"],
    );
    assert!(
        !stderr(&output).contains("connection"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn resuming_a_running_actor_or_suspending_a_suspended_one_is_an_error() {
    let root = example_root();
    let _host = Host::start(root.path(), &[]);
    assert_fails(
        &graft(root.path(), &["resume", "kv"]),
        1,
        &["kv is not suspended"],
    );
    assert!(graft(root.path(), &["suspend", "kv"]).status.success());
    assert_fails(
        &graft(root.path(), &["suspend", "kv"]),
        1,
        &["kv is already suspended"],
    );
    let output = graft(root.path(), &["resume", "kv"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "kv resumed");
}
