//! The cluster as a plugin sees it (ABI 1.2, issue 17), with a real nats-server and real
//! `graft start --fleet` hosts: `ctx.hosts()`, `HostUp`/`HostDown` info messages to an
//! actor that asked (`ctx.monitor_hosts(true)`), a monitor of a global name on another
//! host that fires with `host down` when that host is SIGKILLed, `ctx.register_global`
//! and its refusal ("already started on host H"), and an ABI 1.0 plugin that runs beside
//! them unharmed (it never asked for host events, so it never gets a kind it cannot read).
//! Host C runs its watcher with `isolation = "process"`: the same services reach a plugin
//! in a worker process, over its connection to the host.
//!
//! Fixtures: `tests/fixtures/cluster-watcher` (the 1.2 plugin; it records what it sees as
//! lines) and `tests/fixtures/abi-counter/1.0.0` (built with the frozen ABI 1.0 crate).
//!
//! Every wait is a poll with a generous deadline: hosts are polled every second, and a
//! SIGKILLed host's heartbeat expires after 10 s.

use graft_tests::cluster::{call, start_host};
use graft_tests::fleet::DEADLINE;
use graft_tests::nats::NatsServer;
use graft_tests::{Host, assembled_root, eventually_blocking, kill_9, run_graft, stdout_text};
use std::path::Path;

/// A release with a global `kv` (when `with_kv`), a `watcher` (cluster-watcher) that
/// monitors `kv` from its `init` (when `with_watcher`; in a worker process when
/// `isolated`), and an ABI 1.0 `legacy` counter.
fn release(with_kv: bool, with_watcher: bool, isolated: bool) -> String {
    let isolation = if isolated {
        "isolation = \"process\"\n"
    } else {
        ""
    };
    let mut text = format!(
        "[release]\nname = \"cluster-api\"\nversion = \"1.0.0\"\n\n\
         [plugins.kv]\nversion = \"1.0.0\"\ncrate = \"plugins/kv/1.0.0\"\n\n\
         [plugins.cluster-watcher]\nversion = \"0.1.0\"\ncrate = \"tests/fixtures/cluster-watcher\"\n\
         {isolation}\n\
         [plugins.abi-counter]\nversion = \"1.0.0\"\ncrate = \"tests/fixtures/abi-counter/1.0.0\"\n\n\
         [supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 5\nmax_seconds = 10\n\n\
         [[supervisor.children]]\nid = \"legacy\"\nplugin = \"abi-counter\"\n\
         args = {{ start = 40, secret = \"s\" }}\n",
    );
    if with_kv {
        text.push_str("\n[[supervisor.children]]\nid = \"kv\"\nplugin = \"kv\"\nglobal = true\n");
    }
    if with_watcher {
        text.push_str(
            "\n[[supervisor.children]]\nid = \"watcher\"\nplugin = \"cluster-watcher\"\n\
             args = { monitor = \"kv\" }\n",
        );
    }
    text
}

/// A host of group `api` named `name` on `server`, on its own root with `release`.
fn host(server: &NatsServer, name: &str, release: String) -> (tempfile::TempDir, Host) {
    let root = assembled_root(&[("1.0.0", release)]);
    let host = start_host(server, "api", name, root.path());
    (root, host)
}

/// The watcher's events on `root`, one per line.
fn events(root: &Path) -> String {
    call(root, "watcher", r#""Events""#)
        .map(|reply| serde_json::from_str::<String>(&reply).unwrap_or(reply))
        .unwrap_or_default()
}

/// Polls the watcher's events on `root` until `check` holds of them.
fn await_events(root: &Path, what: &str, check: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let held = eventually_blocking(DEADLINE, || {
        last = events(root);
        check(&last)
    });
    assert!(held, "{what}; the watcher saw:\n{last}");
    last
}

#[test]
fn a_plugin_sees_hosts_come_and_go_and_its_remote_monitor_fires_with_host_down() {
    let server = NatsServer::start();
    let (root_a, mut host_a) = host(&server, "host-a", release(true, false, false));
    let (root_b, _host_b) = host(&server, "host-b", release(false, true, false));

    // The watcher on B asked for host events and monitored the global `kv` on A.
    let seen = await_events(
        root_b.path(),
        "monitor_hosts and the monitor of kv",
        |seen| seen.contains("monitor_hosts ok") && seen.contains("monitor kv: monitor "),
    );
    assert!(!seen.contains("down kv"), "kv is alive on host-a:\n{seen}");

    // C joins, with its watcher in a worker process (the ABI 1.2 services cross the
    // worker's connection): B's watcher hears of it, and ctx.hosts() lists all three.
    let (root_c, _host_c) = host(&server, "host-c", release(false, true, true));
    await_events(root_b.path(), "HostUp for host-c", |seen| {
        seen.contains("up host-c")
    });
    await_events(
        root_c.path(),
        "the isolated watcher's monitor_hosts and monitor of kv",
        |seen| seen.contains("monitor_hosts ok") && seen.contains("monitor kv: monitor "),
    );
    for root in [root_b.path(), root_c.path()] {
        let mut hosts = String::new();
        assert!(
            eventually_blocking(DEADLINE, || {
                hosts = call(root, "watcher", r#""Hosts""#).unwrap_or_default();
                hosts == r#""host-a,host-b,host-c""#
            }),
            "ctx.hosts() on {}: {hosts}",
            root.display()
        );
    }

    // Global registration from a plugin: B's watcher takes the name, C's is refused.
    assert_eq!(
        call(root_b.path(), "watcher", r#""RegisterGlobal""#).unwrap(),
        r#""ok""#
    );
    let refused = call(root_c.path(), "watcher", r#""RegisterGlobal""#).unwrap();
    assert!(
        refused.contains(r#"global name \"watcher\" is already started on host host-b"#),
        "{refused}"
    );

    // A dies without a word: B's and C's monitors of kv fire with `host down`, and both
    // hear that host-a is down.
    kill_9(host_a.child.id());
    let _ = host_a.child.wait();
    for root in [root_b.path(), root_c.path()] {
        let seen = await_events(root, "host-a down and kv's monitor fired", |seen| {
            seen.contains("host-down host-a host down") && seen.contains("down kv")
        });
        let down_kv = seen
            .lines()
            .find(|line| line.starts_with("down kv"))
            .unwrap();
        assert!(down_kv.ends_with("host down"), "{seen}");
    }

    // The ABI 1.0 plugin beside them never got a host event it could not decode: it
    // answers, never restarted.
    for root in [root_b.path(), root_c.path()] {
        assert_eq!(call(root, "legacy", r#""Get""#).unwrap(), "40");
        let status = stdout_text(&run_graft(root, &["status", "--json"]));
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        let legacy = status["tree"]["children"]
            .as_array()
            .and_then(|children| children.iter().find(|child| child["id"] == "legacy"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(legacy["restarts"], 0, "{status}");
    }
    drop(root_a);
}
