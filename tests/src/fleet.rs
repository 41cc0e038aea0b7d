//! Helpers shared by the fleet tests (`tests/fleet.rs`, `tests/fleet_failures.rs`): the
//! fleet's status as `graft fleet status --json` prints it, polled until a condition on
//! its hosts holds, and fleets of real `graft start --fleet` hosts.
//!
//! Every wait is a poll with a generous deadline ([`DEADLINE`]): the tests run on loaded
//! 2-core machines, where heartbeats (every 2 s, expiring after 10 s) can lag.

use crate::nats::NatsServer;
use crate::{Host, built_root, eventually_blocking, run_graft, stdout_text, succeed_graft};
use serde_json::Value;
use std::path::Path;
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
