//! Helpers shared by the fleet tests (`tests/fleet.rs`, `tests/fleet_failures.rs`): the
//! fleet's status as `graft fleet status --json` prints it, polled until a condition on
//! its hosts holds, and fleets of real `graft start --fleet` hosts.
//!
//! Every wait is a poll with a generous deadline ([`DEADLINE`]): the tests run on loaded
//! 2-core machines, where heartbeats (every 2 s, expiring after 10 s) can lag.

use crate::nats::NatsServer;
use crate::{Host, built_root, eventually_blocking, run_graft, stdout_text, succeed_graft};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long any fleet state may take to show (heartbeats every 2 s, expiry after 10 s).
pub const DEADLINE: Duration = Duration::from_secs(90);

/// `graft fleet status --json` against `server` with extra arguments; `None` if it failed.
pub fn fleet_status(root: &Path, server: &NatsServer, extra: &[&str]) -> Option<Value> {
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

/// Polls `graft fleet status` until `check` holds of the hosts; the last status.
pub fn await_hosts(
    root: &Path,
    server: &NatsServer,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Value {
    await_hosts_with(root, server, &[], what, check)
}

/// [`await_hosts`] with extra connection arguments (`--credentials FILE`, …).
pub fn await_hosts_with(
    root: &Path,
    server: &NatsServer,
    extra: &[&str],
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Value {
    let mut last = Value::Null;
    let held = eventually_blocking(DEADLINE, || {
        fleet_status(root, server, extra).is_some_and(|status| {
            last = status;
            last["hosts"].as_array().is_some_and(|hosts| check(hosts))
        })
    });
    assert!(held, "{what}: {last}");
    last
}

/// A root holding only release 1.0.0 of the built releases.
pub fn root_with_only_1_0_0() -> tempfile::TempDir {
    let root = built_root();
    for version in ["1.1.0", "1.2.0"] {
        std::fs::remove_dir_all(root.path().join("releases").join(version)).unwrap();
    }
    root
}

/// Hosts `names` in group web on `server`, each on a fresh root with only 1.0.0 and
/// `{"Add": 7}` counted.
pub fn fleet_of(server: &NatsServer, names: &[&str]) -> Vec<(tempfile::TempDir, Host)> {
    let url = server.url();
    let hosts: Vec<(tempfile::TempDir, Host)> = names
        .iter()
        .map(|name| {
            let root = root_with_only_1_0_0();
            let host = Host::start(
                root.path(),
                &["--fleet", &url, "--group", "web", "--host-name", name],
            );
            (root, host)
        })
        .collect();
    for (root, _) in &hosts {
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#"{"Add": 7}"#]).trim(),
            "7"
        );
    }
    let count = names.len();
    await_hosts(hosts[0].0.path(), server, "every host listed", |listed| {
        listed.len() == count
    });
    hosts
}

/// A child process (a `graft fleet rollout` controller) killed and reaped when dropped,
/// so a test that fails leaves nothing running.
pub struct Reaped(pub Option<std::process::Child>);

impl Reaped {
    /// Starts `graft ARGUMENTS` on `root` with its output captured.
    pub fn graft(root: &Path, arguments: &[&str]) -> Reaped {
        let child = std::process::Command::new(crate::graft_binary())
            .env("GRAFT_ROOT", root)
            .args(arguments)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("graft starts");
        Reaped(Some(child))
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A rollout caught inside its canary's health window: two hosts of group `web` on
/// 1.0.0 (`host-a`, `host-b`, counters at 7), 1.1.0 published, and a controller rolling
/// `web` onto it (canary `host-a`, then one host per wave, `--health-window WINDOW`,
/// `--json`, then `extra`) whose canary already runs 1.1.0.
pub struct CanaryInWindow {
    /// The hosts and their roots.
    pub hosts: Vec<(tempfile::TempDir, Host)>,
    /// `host-a`'s root, from which the test runs `graft fleet …`.
    pub root: PathBuf,
    /// The running `graft fleet rollout`.
    pub controller: Reaped,
}

impl CanaryInWindow {
    /// Sets it up on `server`.
    pub fn start(server: &NatsServer, window: &str, extra: &[&str]) -> CanaryInWindow {
        let url = server.url();
        let publisher = built_root();
        succeed_graft(
            publisher.path(),
            &["fleet", "--server", &url, "publish", "1.1.0"],
        );
        let hosts = fleet_of(server, &["host-a", "host-b"]);
        let root = hosts[0].0.path().to_path_buf();
        let mut arguments = rollout_arguments(&url, window);
        arguments.extend_from_slice(extra);
        let controller = Reaped::graft(&root, &arguments);
        await_hosts(&root, server, "the canary on 1.1.0", |listed| {
            listed
                .iter()
                .any(|host| host["host"] == "host-a" && host["current"] == "1.1.0")
        });
        CanaryInWindow {
            hosts,
            root,
            controller,
        }
    }
}

/// The `graft fleet rollout` arguments for 1.1.0 on group web, canary first, one host
/// per wave, `window` seconds of health window, `--json`.
pub fn rollout_arguments<'a>(url: &'a str, window: &'a str) -> Vec<&'a str> {
    vec![
        "fleet",
        "--server",
        url,
        "rollout",
        "1.1.0",
        "--group",
        "web",
        "--canary",
        "1",
        "--wave",
        "1",
        "--health-window",
        window,
        "--json",
    ]
}
