//! Benchmark of a singleton's fail-over (issue 17): how long after its owner dies or
//! stops another host's copy of a `placement = "singleton"` worker starts.
//!
//! Setup: a real `nats-server -js` (`$GRAFT_NATS_SERVER`, else `nats-server` on `PATH`,
//! else `/usr/sbin/nats-server`, `/usr/bin/nats-server`; without one the bench says so and
//! skips) on a free loopback port with its own store. One release (assembled with the
//! release profile) runs the `cluster-probe` fixture as a singleton that appends
//! `<tag> <pid> <unix ms> <event>` to a shared log every 100 ms. Per round and per way of
//! ending the owner, two fresh `graft start --fleet` hosts join a group of their own (so no
//! lease of an earlier round is left); the owner is the pid writing the log; the clock
//! starts when the signal is sent (SIGKILL, or SIGTERM for a graceful stop) and stops when
//! a line of another pid appears (polled every 10 ms).
//!
//! What to expect, by construction: after SIGKILL the lease expires ≤ `LEASE_TTL` after
//! its last renewal (which was up to `LEASE_RENEW` before the kill), and a standby wins
//! within `STANDBY_POLL`: about `LEASE_TTL` (targets: ≤ `LEASE_TTL` + 1.5 s). A graceful
//! stop deletes the lease after the tree stopped: the next standby poll wins (target ≤ 1 s).
//! The lease TTL is printed beside the fail-over as its baseline.
//!
//! Run without `--bench` (as `cargo test --benches` does), it runs one round: a smoke test.

#[path = "support/host.rs"]
mod host;
#[path = "support/nats.rs"]
mod nats;

use graft::cluster::{LEASE_TTL, STANDBY_POLL};
use graft::release::assemble::assemble;
use host::start_fleet_host;
use nats::{NatsServer, eventually, nats_server_binary};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// How long anything may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(90);

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate is inside the workspace")
}

/// The pids writing the shared log, in order of their lines.
fn writers(log: &Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(1)?.parse().ok())
        .collect()
}

/// A `graft start --fleet` host, killed when dropped.
struct Host {
    root: tempfile::TempDir,
    child: Child,
}

impl Host {
    fn start(url: &str, group: &str, name: &str, log: &Path) -> Host {
        let root = tempfile::tempdir().expect("creating a host root");
        let sources = root.path().join("sources");
        std::fs::create_dir_all(&sources).expect("creating the sources");
        let manifest = sources.join("release.toml");
        std::fs::write(
            &manifest,
            format!(
                "[release]\nname = \"singleton-bench\"\nversion = \"1.0.0\"\n\n[plugins.cluster-probe]\nversion = \"0.1.0\"\ncrate = \"tests/fixtures/cluster-probe\"\n\n[supervisor]\nstrategy = \"one_for_one\"\n\n[[supervisor.children]]\nid = \"probe\"\nname = \"probe\"\nplugin = \"cluster-probe\"\nplacement = \"singleton\"\nargs = {{ log = {:?}, tag = {name:?} }}\n",
                log.display().to_string()
            ),
        )
        .expect("writing the manifest");
        assemble(&manifest, workspace(), root.path(), true)
            .unwrap_or_else(|error| panic!("assembling: {error}"));
        let child = start_fleet_host(root.path(), url, group, name);
        let host = Host { root, child };
        let socket = graft::control::socket_path(host.root.path());
        assert!(
            eventually(DEADLINE, || std::os::unix::net::UnixStream::connect(
                &socket
            )
            .is_ok()),
            "host {name} did not start"
        );
        host
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One fail-over: two hosts in group `group`; the owner gets `signal`; the time until
/// the other host's copy writes.
fn fail_over(url: &str, group: &str, signal: &str) -> Duration {
    let directory = tempfile::tempdir().expect("a log directory");
    let log = directory.path().join("shared.log");
    let hosts = [
        Host::start(url, group, "a", &log),
        Host::start(url, group, "b", &log),
    ];
    assert!(
        eventually(DEADLINE, || writers(&log).len() >= 20),
        "no singleton writes"
    );
    let owner = *writers(&log).last().expect("a writer");
    let _owner_host = hosts
        .iter()
        .find(|host| host.child.id() == owner)
        .expect("the writer is one of the hosts");
    let status = Command::new("kill")
        .args(["-s", signal, &owner.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success());
    let sent = Instant::now();
    let end = sent + DEADLINE;
    while !writers(&log).iter().any(|pid| *pid != owner) {
        assert!(Instant::now() < end, "no fail-over after {signal}");
        std::thread::sleep(Duration::from_millis(10));
    }
    sent.elapsed()
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let has = |flag: &str| arguments.iter().any(|argument| argument == flag);
    if has("--list") {
        return;
    }
    let rounds = if has("--bench") { 3 } else { 1 };
    let Some(nats) = nats_server_binary() else {
        println!(
            "summary: skipped: no nats-server (apt-get install nats-server, or set GRAFT_NATS_SERVER)"
        );
        return;
    };
    let server = NatsServer::start(&nats);
    let url = server.url();
    let mut killed = Vec::new();
    let mut stopped = Vec::new();
    for round in 0..rounds {
        let took = fail_over(&url, &format!("kill{round}"), "KILL");
        println!("round {round}: fail-over after SIGKILL of the owner: {took:?}");
        killed.push(took);
        let took = fail_over(&url, &format!("term{round}"), "TERM");
        println!("round {round}: hand-over after a graceful stop (SIGTERM) of the owner: {took:?}");
        stopped.push(took);
    }
    let killed = median(killed);
    let stopped = median(stopped);
    let kill_target = LEASE_TTL + Duration::from_millis(1_500);
    let stop_target = Duration::from_secs(1);
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!("summary:");
    println!(
        "  lease TTL (baseline): {LEASE_TTL:?}, standby poll {STANDBY_POLL:?}, {rounds} round(s)"
    );
    println!(
        "  SIGKILL fail-over median {killed:?} ({:.2} x the lease TTL), target <= {kill_target:?}: {}",
        killed.as_secs_f64() / LEASE_TTL.as_secs_f64(),
        verdict(killed <= kill_target)
    );
    println!(
        "  graceful hand-over median {stopped:?}, target <= {stop_target:?}: {}",
        verdict(stopped <= stop_target)
    );
}
