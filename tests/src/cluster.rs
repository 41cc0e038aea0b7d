//! Helpers shared by the cluster tests (`tests/cluster.rs`, `tests/cluster_upgrade.rs`,
//! `tests/cluster_plugin_api.rs`): hosts of a group on a real nats-server, and `graft call`
//! polled until it answers.
//!
//! Every wait is a poll with a generous deadline ([`DEADLINE`]): hosts are read every
//! second, names renewed every 2 s and forgotten 10 s after their host's last renewal.

use crate::fleet::DEADLINE;
use crate::nats::NatsServer;
use crate::{Host, eventually_blocking, run_graft, stderr_text, stdout_text};
use std::path::Path;

/// `graft start --fleet URL --group GROUP --host-name NAME` arguments.
pub fn join_arguments<'a>(url: &'a str, group: &'a str, name: &'a str) -> Vec<&'a str> {
    vec!["--fleet", url, "--group", group, "--host-name", name]
}

/// A host named `name` of cluster `group` on `server`, on `root`.
pub fn start_host(server: &NatsServer, group: &str, name: &str, root: &Path) -> Host {
    let url = server.url();
    Host::start(root, &join_arguments(&url, group, name))
}

/// `graft call NAME REQUEST` on `root` with a 10 s timeout: the reply's text, or the
/// error's (stdout and stderr).
pub fn call(root: &Path, name: &str, request: &str) -> Result<String, String> {
    let output = run_graft(root, &["call", name, request, "--timeout", "10000"]);
    if output.status.success() {
        Ok(stdout_text(&output).trim().to_owned())
    } else {
        Err(format!("{}{}", stdout_text(&output), stderr_text(&output)))
    }
}

/// Polls `graft call` until it answers `expected`; fails with the last answer.
pub fn await_reply(root: &Path, name: &str, request: &str, expected: &str) {
    let mut last = Err(String::new());
    let answered = eventually_blocking(DEADLINE, || {
        last = call(root, name, request);
        last.as_deref() == Ok(expected)
    });
    assert!(
        answered,
        "{name} {request}: expected {expected}, last {last:?}"
    );
}
