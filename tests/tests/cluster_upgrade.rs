//! Upgrades stay live across a cluster (issue 17): real `graft start --fleet` hosts on a
//! real nats-server.
//!
//! - A call from host B to the global `kv` on host A while A's `kv` is suspended waits in
//!   its mailbox and is answered after the resume, not refused.
//! - A singleton `kv` (`placement = "singleton"`) upgraded by its owner's own
//!   `graft install` (kv 1.0.0 → 1.1.0, a soft update) while host B calls it in a loop: no
//!   call fails, and the state written before the install is read after it from B.
//! - An install on the owner that removes the singleton (`remove_child`) frees its lease:
//!   host B, whose release still has it, starts its own copy, and A reaches it by name.
//!
//! Every wait is a poll with a generous deadline ([`DEADLINE`]).

use graft_tests::cluster::{await_reply, call, start_host};
use graft_tests::fleet::DEADLINE;
use graft_tests::nats::NatsServer;
use graft_tests::{assembled_root, eventually_blocking, run_graft, stderr_text, stdout_text};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Release `version` with kv `kv_version` as a global worker (`placement` extra, e.g.
/// `placement = "singleton"`), and from 1.0.0 a soft update of kv.
fn release(version: &str, kv_version: &str, placement: &str) -> String {
    let mut text = format!(
        "[release]\nname = \"upgrade\"\nversion = \"{version}\"\n\n\
         [plugins.kv]\nversion = \"{kv_version}\"\ncrate = \"plugins/kv/{kv_version}\"\n\n\
         [supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 3\nmax_seconds = 10\n\n\
         [[supervisor.children]]\nid = \"kv\"\nplugin = \"kv\"\n{placement}\n"
    );
    if version != "1.0.0" {
        text.push_str(
            "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\n\
             plugin = \"kv\"\nmode = \"soft\"\n\n[[downgrade]]\nto = \"1.0.0\"\n\n\
             [[downgrade.instructions]]\nop = \"update\"\nplugin = \"kv\"\nmode = \"soft\"\n",
        );
    }
    text
}

/// `graft status --json` on `root` (null if it printed no JSON).
fn status(root: &Path) -> Value {
    let output = run_graft(root, &["status", "--json"]);
    serde_json::from_str(&stdout_text(&output)).unwrap_or_default()
}

/// `kv`'s mailbox length on `root`, from `graft status --json`.
fn kv_mailbox(root: &Path) -> u64 {
    status(root)["tree"]["children"]
        .as_array()
        .and_then(|children| children.iter().find(|child| child["id"] == "kv"))
        .and_then(|kv| kv["mailbox"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_remote_call_to_a_suspended_actor_waits_for_its_resume() {
    let server = NatsServer::start();
    let root_a = assembled_root(&[("1.0.0", release("1.0.0", "1.0.0", "global = true"))]);
    let root_b = assembled_root(&[("1.0.0", release("1.0.0", "1.0.0", ""))]);
    // B has its own local kv: it is reached as kv@host-a.
    let _host_a = start_host(&server, "upgrade", "host-a", root_a.path());
    let _host_b = start_host(&server, "upgrade", "host-b", root_b.path());
    await_reply(
        root_b.path(),
        "kv@host-a",
        r#"{"Put": {"key": "k", "value": "v"}}"#,
        "null",
    );

    let suspended = run_graft(root_a.path(), &["suspend", "kv"]);
    assert!(suspended.status.success(), "{}", stderr_text(&suspended));
    let waiting = {
        let root = root_b.path().to_owned();
        std::thread::spawn(move || call(&root, "kv@host-a", r#"{"Get": "k"}"#))
    };
    // The call is in the suspended actor's mailbox, waiting.
    assert!(
        eventually_blocking(DEADLINE, || kv_mailbox(root_a.path()) >= 1),
        "the remote call never reached the mailbox"
    );
    assert!(
        !waiting.is_finished(),
        "a call to a suspended actor must wait"
    );
    let resumed = run_graft(root_a.path(), &["resume", "kv"]);
    assert!(resumed.status.success(), "{}", stderr_text(&resumed));
    assert_eq!(waiting.join().unwrap().unwrap(), r#""v""#);
}

#[test]
fn a_singleton_upgraded_by_its_owner_keeps_its_state_and_callers_on_other_hosts() {
    let server = NatsServer::start();
    let singleton = "placement = \"singleton\"";
    let releases = || {
        [
            ("1.0.0", release("1.0.0", "1.0.0", singleton)),
            ("1.1.0", release("1.1.0", "1.1.0", singleton)),
        ]
    };
    let root_a = assembled_root(&releases());
    let _host_a = start_host(&server, "upgrade", "host-a", root_a.path());
    // A owns the singleton before B starts: B holds it in standby.
    await_reply(
        root_a.path(),
        "kv",
        r#"{"Put": {"key": "before", "value": "kept"}}"#,
        "null",
    );
    let root_b = assembled_root(&releases());
    let _host_b = start_host(&server, "upgrade", "host-b", root_b.path());
    await_reply(root_b.path(), "kv", r#"{"Get": "before"}"#, r#""kept""#);

    // B calls the singleton in a loop while A installs 1.1.0.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let caller = {
        let (root, stop, answered) = (
            root_b.path().to_owned(),
            Arc::clone(&stop),
            Arc::clone(&answered),
        );
        std::thread::spawn(move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match call(&root, "kv", r#"{"Get": "before"}"#) {
                    Ok(reply) if reply == r#""kept""# => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failures.push(format!("{other:?}")),
                }
            }
            failures
        })
    };
    assert!(eventually_blocking(DEADLINE, || answered
        .load(Ordering::Relaxed)
        >= 3));
    let install = run_graft(root_a.path(), &["install", "1.1.0"]);
    assert!(install.status.success(), "{}", stderr_text(&install));
    let after = answered.load(Ordering::Relaxed);
    assert!(eventually_blocking(DEADLINE, || {
        answered.load(Ordering::Relaxed) >= after + 3
    }));
    stop.store(true, Ordering::Relaxed);
    let failures = caller.join().unwrap();
    assert!(
        failures.is_empty(),
        "calls failed during the upgrade: {failures:?}"
    );
    // A runs kv 1.1.0 with the state from before; B's standby never started one.
    let status = status(root_a.path());
    assert_eq!(status["release"], "1.1.0", "{status}");
    assert_eq!(
        call(root_b.path(), "kv", r#"{"Get": "before"}"#).unwrap(),
        r#""kept""#
    );
}

/// Release `version` of "handover": a local `kv` worker named `local` on every version, and
/// on 1.0.0 also the singleton `kv`; 1.1.0 removes the singleton (`remove_child`), its
/// downgrade adds it back.
fn handover_release(version: &str) -> String {
    let mut text = format!(
        "[release]\nname = \"handover\"\nversion = \"{version}\"\n\n\
         [plugins.kv]\nversion = \"1.0.0\"\ncrate = \"plugins/kv/1.0.0\"\n\n\
         [supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 3\nmax_seconds = 10\n\n\
         [[supervisor.children]]\nid = \"local\"\nplugin = \"kv\"\n"
    );
    if version == "1.0.0" {
        text.push_str(
            "\n[[supervisor.children]]\nid = \"kv\"\nplugin = \"kv\"\n\
             placement = \"singleton\"\n",
        );
    } else {
        text.push_str(
            "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"remove_child\"\n\
             supervisor = \"root\"\nid = \"kv\"\n\n[[downgrade]]\nto = \"1.0.0\"\n\n\
             [[downgrade.instructions]]\nop = \"add_child\"\nsupervisor = \"root\"\nid = \"kv\"\n",
        );
    }
    text
}

#[test]
fn an_install_that_removes_a_singleton_hands_it_to_a_host_that_still_has_it() {
    let server = NatsServer::start();
    let root_a = assembled_root(&[
        ("1.0.0", handover_release("1.0.0")),
        ("1.1.0", handover_release("1.1.0")),
    ]);
    let _host_a = start_host(&server, "handover", "host-a", root_a.path());
    // A owns the singleton before B starts: B holds it in standby and reaches A's copy.
    await_reply(
        root_a.path(),
        "kv",
        r#"{"Put": {"key": "owner", "value": "a"}}"#,
        "null",
    );
    let root_b = assembled_root(&[("1.0.0", handover_release("1.0.0"))]);
    let _host_b = start_host(&server, "handover", "host-b", root_b.path());
    await_reply(root_b.path(), "kv", r#"{"Get": "owner"}"#, r#""a""#);

    // A's install removes the singleton from A's tree: A frees the lease, B's standby
    // starts its own copy (a fresh state: a singleton's state stays with its host).
    let install = run_graft(root_a.path(), &["install", "1.1.0"]);
    assert!(install.status.success(), "{}", stderr_text(&install));
    await_reply(root_b.path(), "kv", r#"{"Get": "owner"}"#, "null");
    await_reply(
        root_b.path(),
        "kv",
        r#"{"Put": {"key": "owner", "value": "b"}}"#,
        "null",
    );
    // A, without a kv of its own now, reaches B's copy by the global name.
    await_reply(root_a.path(), "kv", r#"{"Get": "owner"}"#, r#""b""#);
    let status = status(root_a.path());
    assert_eq!(status["release"], "1.1.0", "{status}");
    let ids: Vec<&str> = status["tree"]["children"]
        .as_array()
        .map(|children| {
            children
                .iter()
                .filter_map(|child| child["id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids, ["local"], "A's tree after the install: {status}");
}
