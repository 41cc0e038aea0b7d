//! Fleets when things go wrong (issue 16), on a real `nats-server -js` (see
//! `graft_tests::nats`) with real `graft start --fleet` hosts:
//! - a canary whose plugin's `health` callback reports it unhealthy fails the gate, and
//!   the fleet ends on 1.0.0 with the actors' state kept;
//! - the NATS server restarted while a rollout controller runs: the rollout finishes, or
//!   the controller stops with an error and leaves the rollout recorded so `--resume`
//!   finishes it — never a mixed fleet that nobody reports; a controller that loses the
//!   server for longer than its patience stops with an error, rolls nothing back, and
//!   the rollout resumes once the server is back;
//! - a server in operator (JWT) mode: a host with a user's credentials file joins, a
//!   client without credentials (or with a user the operator never signed) is refused,
//!   and another account of the same operator does not see the fleet.
//!
//! Waits are polls with generous deadlines (a loaded 2-core machine), never sleeps.

use graft_tests::fleet::{
    CanaryInWindow, await_hosts, await_hosts_with, fleet_status, rollout_arguments,
    root_with_only_1_0_0,
};
use graft_tests::nats::{NatsServer, Operator};
use graft_tests::{
    Host, assembled_root, eventually_blocking, graft_binary, run_graft, stderr_text, stdout_text,
    succeed_graft,
};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Why the canary's actor says it is unhealthy (set by 1.1.0's `code_change`).
const UNHEALTHY: &str = "cannot reach the ledger";

/// A release of the `abi-counter` fixture (its plugin at `plugin_version`) with one child,
/// `counter`, starting at 40; `script` is appended (upgrade and downgrade instructions).
fn abi_release(version: &str, plugin_version: &str, script: &str) -> String {
    format!(
        "[release]\nname = \"abi\"\nversion = \"{version}\"\n\n\
         [plugins.abi-counter]\nversion = \"{plugin_version}\"\n\
         crate = \"tests/fixtures/abi-counter/{plugin_version}\"\n\n\
         [supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 0\n\n\
         [[supervisor.children]]\nid = \"counter\"\nplugin = \"abi-counter\"\n\
         args = {{ start = 40, secret = \"hunter2\" }}\n{script}"
    )
}

/// 1.1.0 of the fixture: upgraded from 1.0.0 by `code_change`, whose `extra` marks the
/// actor unhealthy (so its `health` callback reports it), and downgraded back.
fn unhealthy_1_1_0() -> String {
    let script = format!(
        "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\n\
         plugin = \"abi-counter\"\nmode = \"advanced\"\n\
         extra = {{ unhealthy = \"{UNHEALTHY}\" }}\n\n\
         [[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\nop = \"update\"\n\
         plugin = \"abi-counter\"\nmode = \"advanced\"\n"
    );
    abi_release("1.1.0", "1.1.0", &script)
}

/// Whether every host listed runs `release` and has it permanent.
fn all_on(hosts: &[Value], count: usize, release: &str) -> bool {
    hosts.len() == count
        && hosts
            .iter()
            .all(|host| host["current"] == release && host["permanent"] == release)
}

#[test]
fn a_canary_whose_health_callback_reports_unhealthy_fails_the_gate_and_the_fleet_stays_on_1_0_0() {
    let server = NatsServer::start();
    let url = server.url();
    let publisher = assembled_root(&[
        ("1.0.0", abi_release("1.0.0", "1.0.0", "")),
        ("1.1.0", unhealthy_1_1_0()),
    ]);
    succeed_graft(
        publisher.path(),
        &["fleet", "--server", &url, "publish", "1.1.0"],
    );
    let hosts: Vec<(tempfile::TempDir, Host)> = ["host-a", "host-b"]
        .iter()
        .map(|name| {
            let root = assembled_root(&[("1.0.0", abi_release("1.0.0", "1.0.0", ""))]);
            let host = Host::start(
                root.path(),
                &["--fleet", &url, "--group", "web", "--host-name", name],
            );
            (root, host)
        })
        .collect();
    // State set before the rollout: 40 + 2.
    for (root, _) in &hosts {
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#"{"Add": 2}"#]).trim(),
            "42"
        );
    }
    let root = hosts[0].0.path();
    await_hosts(root, &server, "both hosts on 1.0.0", |listed| {
        all_on(listed, 2, "1.0.0")
    });

    // A long window: the gate can only fail by the health callback, never pass first.
    let output = run_graft(root, &rollout_arguments(&url, "60"));
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}{}",
        stdout_text(&output),
        stderr_text(&output)
    );
    let error: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(error["error"]["kind"], "rollout_failed", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("host host-a") && message.contains("unhealthy"),
        "{message}"
    );
    assert!(message.contains(UNHEALTHY), "{message}");

    let status = await_hosts(root, &server, "every host back on 1.0.0", |listed| {
        all_on(listed, 2, "1.0.0")
    });
    assert_eq!(status["rollout"]["phase"], "rolled_back", "{status}");
    assert_eq!(status["rollout"]["host"], "host-a", "{status}");
    // The canary went to 1.1.0 and came back down: the state survived both ways.
    assert!(
        hosts[0].1.log().contains("1.1.0"),
        "the canary never installed 1.1.0: {}",
        hosts[0].1.log()
    );
    for (root, _) in &hosts {
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#""Get""#]).trim(),
            "42",
            "state kept"
        );
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#""Version""#]).trim(),
            r#""1.0.0""#
        );
    }
}

#[test]
fn nats_restarted_while_the_controller_runs_the_rollout_finishes_or_stays_resumable() {
    let mut server = NatsServer::start();
    let url = server.url();
    let CanaryInWindow {
        hosts,
        root,
        mut controller,
    } = CanaryInWindow::start(&server, "20", &[]);
    // The server goes away and comes back (same store) inside the canary's window.
    let status = fleet_status(&root, &server, &[]).expect("fleet status");
    assert_eq!(status["rollout"]["phase"], "running", "{status}");
    server.restart();

    // The controller ends on its own: by finishing, or by giving up with an error.
    let mut ended = None;
    let finished = eventually_blocking(Duration::from_secs(400), || {
        ended = controller.0.as_mut().unwrap().try_wait().unwrap();
        ended.is_some()
    });
    assert!(
        finished,
        "the controller still runs 400 s after the restart"
    );
    let output = controller.0.take().unwrap().wait_with_output().unwrap();
    let printed = format!("{}{}", stdout_text(&output), stderr_text(&output));
    if output.status.success() {
        let result: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
        assert_eq!(result["rollout"]["phase"], "succeeded", "{result}");
        eprintln!("the controller rode out the restart and finished");
    } else {
        // A clean failure: a clear error, and the rollout still recorded as running.
        let error: Value = serde_json::from_str(&stdout_text(&output))
            .unwrap_or_else(|_| panic!("not a JSON error: {printed}"));
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{error}");
        assert_ne!(error["error"]["kind"], "rollout_failed", "{error}");
        let status = await_hosts(&root, &server, "both hosts listed", |listed| {
            listed.len() == 2
        });
        assert_eq!(
            status["rollout"]["phase"], "running",
            "a controller that stopped must leave the rollout resumable: {status}\n{printed}"
        );
        eprintln!("the controller stopped ({message}); resuming");
        let resumed = run_graft(
            &root,
            &["fleet", "--server", &url, "rollout", "--resume", "--json"],
        );
        assert!(
            resumed.status.success(),
            "{}{}",
            stdout_text(&resumed),
            stderr_text(&resumed)
        );
    }
    let status = await_hosts(&root, &server, "1.1.0 permanent on both", |listed| {
        all_on(listed, 2, "1.1.0")
    });
    assert_eq!(status["rollout"]["phase"], "succeeded", "{status}");
    for (root, _) in &hosts {
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#""Get""#]).trim(),
            "7",
            "state kept"
        );
    }
}

#[test]
fn a_controller_that_loses_nats_for_longer_than_its_patience_stops_and_the_rollout_resumes() {
    let mut server = NatsServer::start();
    let url = server.url();
    // The install timeout is also the controller's patience with an unreachable server.
    let CanaryInWindow {
        hosts,
        root,
        mut controller,
    } = CanaryInWindow::start(&server, "30", &["--install-timeout", "30"]);
    // The server stays down, inside the canary's window, until the controller gives up.
    server.stop();
    let mut ended = None;
    let gave_up = eventually_blocking(Duration::from_secs(300), || {
        ended = controller.0.as_mut().unwrap().try_wait().unwrap();
        ended.is_some()
    });
    assert!(gave_up, "the controller still runs 300 s into the outage");
    let output = controller.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}{}",
        stdout_text(&output),
        stderr_text(&output)
    );
    let error: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(error["error"]["kind"], "rollout_interrupted", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("lost the fleet's NATS server")
            && message.contains("nothing was rolled back")
            && message.contains("--resume"),
        "{message}"
    );
    eprintln!("the controller gave up: {message}");

    // The server comes back: nothing was rolled back, the rollout is still recorded as
    // running, and --resume finishes it.
    server.start_again();
    let status = await_hosts(&root, &server, "both hosts back", |listed| {
        listed.len() == 2
    });
    assert_eq!(status["rollout"]["phase"], "running", "{status}");
    assert_eq!(status["rollout"]["waves_done"], 0, "{status}");
    let resumed = run_graft(
        &root,
        &["fleet", "--server", &url, "rollout", "--resume", "--json"],
    );
    assert!(
        resumed.status.success(),
        "{}{}",
        stdout_text(&resumed),
        stderr_text(&resumed)
    );
    let status = await_hosts(&root, &server, "1.1.0 permanent on both", |listed| {
        all_on(listed, 2, "1.1.0")
    });
    assert_eq!(status["rollout"]["phase"], "succeeded", "{status}");
    for (root, _) in &hosts {
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#""Get""#]).trim(),
            "7",
            "state kept"
        );
    }
}

/// Runs `graft fleet status --json` with `extra` connection arguments and requires the
/// server to refuse it: exit 2, `fleet_unreachable`, the server's reason in the message.
fn assert_refused(root: &Path, server: &NatsServer, extra: &[&str]) {
    let url = server.url();
    let mut args = vec!["fleet", "--server", url.as_str()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["status", "--json"]);
    let output = run_graft(root, &args);
    assert_eq!(
        output.status.code(),
        Some(2),
        "{extra:?}: {}{}",
        stdout_text(&output),
        stderr_text(&output)
    );
    let error: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(error["error"]["kind"], "fleet_unreachable", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot connect to the fleet's NATS server")
            && message.to_lowercase().contains("authorization"),
        "{message}"
    );
}

#[test]
fn a_credentials_file_lets_a_host_join_a_server_in_operator_mode_and_others_are_refused() {
    let operator = Operator::new("graft-tests");
    let system = operator.system_account();
    let fleet = operator.account("FLEET");
    let other = operator.account("OTHER");
    let server = NatsServer::start_with_operator(&operator, &[&system, &fleet, &other]);
    let url = server.url();
    let secrets = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let path = secrets.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let credentials = write("fleet.creds", fleet.user_credentials("host"));
    let other_credentials = write("other.creds", other.user_credentials("host"));
    let stranger = Operator::new("stranger").account("FLEET");
    let unknown_credentials = write("unknown.creds", stranger.user_credentials("host"));

    let root = root_with_only_1_0_0();
    let host = Host::start(
        root.path(),
        &[
            "--fleet",
            &url,
            "--group",
            "web",
            "--host-name",
            "alpha",
            "--fleet-credentials",
            &credentials,
        ],
    );
    let status = await_hosts_with(
        root.path(),
        &server,
        &["--credentials", &credentials],
        "alpha listed through the credentials file",
        |listed| {
            listed.len() == 1
                && listed[0]["host"] == "alpha"
                && listed[0]["group"] == "web"
                && listed[0]["current"] == "1.0.0"
        },
    );
    assert_eq!(status["hosts"][0]["health"], "healthy", "{status}");

    // No credentials, or a user whose account the server's operator never signed: the
    // server refuses the connection, a clean failure.
    assert_refused(root.path(), &server, &[]);
    assert_refused(
        root.path(),
        &server,
        &["--credentials", &unknown_credentials],
    );
    // A host without credentials does not start.
    let refused_root = root_with_only_1_0_0();
    let refused = std::process::Command::new(graft_binary())
        .env("GRAFT_ROOT", refused_root.path())
        .args(["start", "--fleet", &url, "--host-name", "beta", "--json"])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{}", stderr_text(&refused));
    let said = format!("{}{}", stdout_text(&refused), stderr_text(&refused));
    assert!(
        said.contains("cannot connect to the fleet's NATS server"),
        "{said}"
    );

    // Another account of the same operator is let in but sees nothing of this fleet:
    // accounts do not share subjects, buckets or streams.
    let elsewhere = fleet_status(root.path(), &server, &["--credentials", &other_credentials])
        .expect("status through another account");
    assert_eq!(elsewhere["hosts"], serde_json::json!([]), "{elsewhere}");
    drop(host);
}
