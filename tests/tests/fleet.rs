//! Fleets on a real `nats-server -js` (see `graft_tests::nats`): real `graft start
//! --fleet` hosts, each with its own root, and the `graft fleet` commands against them.
//!
//! Every test starts its own server on a free loopback port with its own store, so tests
//! run in parallel without seeing each other; servers and hosts are killed on drop. Waits
//! are polls with generous deadlines (a loaded 2-core machine), never sleeps.

use graft_tests::nats::NatsServer;
use graft_tests::{Host, built_root, eventually_blocking, run_graft, stderr_text, stdout_text};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How long any fleet state may take to show (heartbeats every 2 s, expiry after 10 s).
const DEADLINE: Duration = Duration::from_secs(90);

/// `graft fleet status --json` against `server` with extra arguments; `None` if it failed.
fn fleet_status(root: &Path, server: &NatsServer, extra: &[&str]) -> Option<Value> {
    let url = server.url();
    let mut args = vec!["fleet", "--server", url.as_str()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["status", "--json"]);
    let output = run_graft(root, &args);
    if !output.status.success() {
        return None;
    }
    serde_json::from_str(&stdout_text(&output)).ok()
}

/// The hosts' (name, group, current release) in a status document.
fn hosts_of(status: &Value) -> Vec<(String, String, String)> {
    status["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .map(|host| {
                    (
                        host["host"].as_str().unwrap_or_default().to_owned(),
                        host["group"].as_str().unwrap_or_default().to_owned(),
                        host["current"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn hosts_join_report_their_release_and_expire_when_killed() {
    let server = NatsServer::start_with_token(Some("s3cret-token"));
    let url = server.url();
    let first_root = built_root();
    let second_root = built_root();
    let join = |name: &'static str| {
        [
            "--fleet",
            url.as_str(),
            "--group",
            "web",
            "--host-name",
            name,
            "--fleet-token",
            "s3cret-token",
        ]
    };
    let first = Host::start(first_root.path(), &join("alpha"));
    let mut second = Host::start(second_root.path(), &join("beta"));
    let token = ["--token", "s3cret-token"];

    let mut last = Value::Null;
    let both = eventually_blocking(DEADLINE, || {
        let Some(status) = fleet_status(first_root.path(), &server, &token) else {
            return false;
        };
        last = status;
        hosts_of(&last)
            == vec![
                ("alpha".into(), "web".into(), "1.0.0".into()),
                ("beta".into(), "web".into(), "1.0.0".into()),
            ]
    });
    assert!(
        both,
        "both hosts should be listed on 1.0.0: {last}\nalpha: {}\nbeta: {}",
        first.log(),
        second.log()
    );
    let alpha = &last["hosts"][0];
    assert_eq!(alpha["permanent"], "1.0.0", "{last}");
    assert_eq!(alpha["health"], "healthy", "{last}");
    assert_eq!(last["fleet"], "default", "{last}");

    // Another fleet's namespace on the same server sees none of them.
    let other = fleet_status(
        first_root.path(),
        &server,
        &["--token", "s3cret-token", "--fleet-name", "other"],
    )
    .expect("status of another fleet");
    assert!(hosts_of(&other).is_empty(), "{other}");

    // Without the token the server refuses the connection: a clean failure.
    let output = run_graft(
        first_root.path(),
        &["fleet", "--server", url.as_str(), "status", "--json"],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr_text(&output));
    let error: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(error["error"]["kind"], "fleet_unreachable", "{error}");

    // A host killed without a word: its heartbeat stops and its entry expires.
    second.signal("KILL");
    second.wait();
    let expired = eventually_blocking(DEADLINE, || {
        fleet_status(first_root.path(), &server, &token).is_some_and(|status| {
            last = status;
            hosts_of(&last) == vec![("alpha".into(), "web".into(), "1.0.0".into())]
        })
    });
    assert!(expired, "beta's entry should expire: {last}");
    drop(first);
}
