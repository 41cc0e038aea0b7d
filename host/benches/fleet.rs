//! Benchmark of a fleet rollout (issue 16's measurement): 5 `graft start --fleet` hosts,
//! each its own process and root with 1,000 `counter` actors, rolled from release 1.0.0
//! (counter 1.0.0) to 2.0.0 (counter 1.1.0, advanced-mode `code_change`) with
//! `graft fleet rollout 2.0.0 --group bench --canary 1 --wave 2 --health-window 1` while
//! a client per host keeps calling its actors through the host's control socket.
//!
//! Setup: a real `nats-server -js` ([`NatsServer`]: `$GRAFT_NATS_SERVER`, else
//! `nats-server` on `PATH`, else `/usr/sbin/nats-server`, `/usr/bin/nats-server`) on a free
//! loopback port with its own temporary store, killed on drop; without a server binary the
//! bench says so and skips. Two source releases are written and assembled with the release
//! profile as `upgrade.rs` does: 1.0.0 with counter 1.0.0, and 2.0.0 with counter 1.1.0,
//! an `[[upgrade]]` from 1.0.0 and a `[[downgrade]]` back, each one `update` of `counter`
//! in advanced mode. A manifest cannot start a dynamic supervisor's children at boot (a
//! `dynamic` supervisor holds one template and the control socket has no
//! `start_child`), so the 1,000 actors are **static** children `counter-0` …
//! `counter-999` of the root supervisor. A publisher root holds both releases and runs
//! `graft fleet publish 2.0.0` and every `graft fleet` command; each host root holds only
//! 1.0.0, so the rollout downloads, verifies and unpacks 2.0.0 on every host.
//!
//! The clients: one tokio task per host on the bench's own runtime, on one connection of
//! graft's own [`ControlClient`] (the library `graft call` uses, without a process per
//! call), calling `{"Add": 1}` to `counter-0`, `counter-1`, … in turn, one call at a time,
//! then sleeping [`CLIENT_PAUSE`]. Every call's time from request sent to reply read is
//! recorded; the longest is "the longest pause seen by a client" (a call to a suspended
//! actor waits for its resume). Each successful call adds one to the count expected of its
//! actor; after every phase the clients stop and every actor of every host is asked
//! `Get`: "lost" is the sum of |count − expected| (so a message handled twice counts too).
//!
//! Phases, in this order:
//! 0. quiet: the clients for [`QUIET`] with no install anywhere (heartbeats only): the
//!    noise floor of a client-seen pause on this machine;
//! 1. baseline (before the fleet has any desired state, so the hosts' convergers leave
//!    them alone): per round, `graft install 2.0.0 --json` on the 5 hosts one after the
//!    other (timed: the sequential total, and each host's own `total_us` and
//!    `longest_pause_us`), then `graft install 1.0.0` on each (untimed). The hosts got 2.0.0
//!    by `graft fleet fetch` and it is removed (control `remove`) after the baseline;
//! 2. fleet rounds: `graft fleet rollout …` timed end to end while a monitor polls every
//!    host's `releases` every [`MONITOR_INTERVAL`] to learn when each one started running
//!    2.0.0, and the controller's progress lines (stderr) are time-stamped; then
//!    `graft fleet rollback` (timed too), a wait until every host runs 1.0.0 permanent,
//!    and a `remove` of 2.0.0 on every host so the next round downloads it again.
//!
//! Where a rollout's time goes, by construction: 3 waves ([host-0], [host-1, host-2],
//! [host-3, host-4]), each gated by a health window of [`HEALTH_WINDOW_SECONDS`]; a host
//! notices its new desired release at its next read of the state record (every 0.5 s), it
//! heartbeats as soon as it has installed (before that fix, at its next periodic
//! heartbeat: up to 2 s later), and the controller polls the heartbeats every 0.5 s. Each
//! fleet round also prints on which host the longest client call fell and when, relative
//! to the moment the monitor first saw that host run 2.0.0. The summary splits each wave into "until installed" (wave start to the
//! last host of the wave running 2.0.0, as the monitor saw it) and "gate" (from there to
//! the controller's "healthy" line: heartbeat lag, polls and the window).
//!
//! Tricky parts:
//! - The machine has 2 cores for 5 hosts, nats-server, the clients and the controller:
//!   absolute times include contention; the clients are paced so they do not starve the
//!   hosts, and the baseline runs under the same clients.
//! - Calls carry `timeout_ms` 30 s so none times out during a pause and leaves its effect
//!   unknown; a failed call is counted as an error and reported (it would make "lost"
//!   ambiguous), never silently.
//! - Run without `--bench` (as `cargo test --benches` does), it runs one round of each: a
//!   smoke test, not a measurement.

#[path = "support/host.rs"]
mod host;
#[path = "support/nats.rs"]
mod nats;

use graft::control::protocol::ReleaseEntry;
use graft::control::{ControlClient, Request};
use graft::release::assemble::assemble;
use host::start_fleet_host;
use nats::{NatsServer, eventually, nats_server_binary};
use semver::Version;
use serde_json::{Value, json};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hosts in the fleet.
const HOSTS: usize = 5;

/// Counter actors per host.
const ACTORS: usize = 1_000;

/// The hosts' group.
const GROUP: &str = "bench";

/// `--health-window` of the rollouts, in seconds.
const HEALTH_WINDOW_SECONDS: u64 = 1;

/// `--canary` and `--wave` of the rollouts.
const CANARY: usize = 1;
const WAVE: usize = 2;

/// `suspend_timeout_ms` of the `update` instructions.
const SUSPEND_TIMEOUT_MILLISECONDS: u64 = 5_000;

/// The clients' pause between two calls.
const CLIENT_PAUSE: Duration = Duration::from_millis(1);

/// The `timeout_ms` of the clients' calls (never reached).
const CALL_TIMEOUT_MILLISECONDS: u64 = 30_000;

/// How often the monitor asks every host which release runs.
const MONITOR_INTERVAL: Duration = Duration::from_millis(10);

/// How long the clients run with no install anywhere (their noise floor).
const QUIET: Duration = Duration::from_secs(5);

/// How long a host, a convergence or a rollback may take (generous: a loaded machine).
const DEADLINE: Duration = Duration::from_secs(120);

fn initial_version() -> Version {
    Version::new(1, 0, 0)
}

fn upgraded_version() -> Version {
    Version::new(2, 0, 0)
}

fn actor_name(index: usize) -> String {
    format!("counter-{index}")
}

fn host_name(index: usize) -> String {
    format!("host-{index}")
}

// ---------------------------------------------------------------------------------------
// Releases.

/// A source manifest: counter `counter_version`, [`ACTORS`] static children, `scripts`.
fn release_manifest(version: &Version, counter_version: &str, scripts: &str) -> String {
    let mut text = format!(
        "[release]\nname = \"fleet-bench\"\nversion = \"{version}\"\n\n\
         [plugins.counter]\nversion = \"{counter_version}\"\ncrate = \"plugins/counter/{counter_version}\"\n\n\
         [supervisor]\nstrategy = \"one_for_one\"\n\n"
    );
    for index in 0..ACTORS {
        text.push_str(&format!(
            "[[supervisor.children]]\nid = \"{}\"\nplugin = \"counter\"\nargs = {{ start = 0 }}\n\n",
            actor_name(index)
        ));
    }
    text.push_str(scripts);
    text
}

/// Writes the two source releases under `sources`; their manifests' paths.
fn write_sources(sources: &Path) -> [(Version, PathBuf); 2] {
    let update = format!(
        "op = \"update\"\nplugin = \"counter\"\nmode = \"advanced\"\nsuspend_timeout_ms = {SUSPEND_TIMEOUT_MILLISECONDS}\n"
    );
    let scripts = format!(
        "[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\n{update}\n\
         [[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\n{update}"
    );
    [
        (initial_version(), "1.0.0", String::new()),
        (upgraded_version(), "1.1.0", scripts),
    ]
    .map(|(version, counter_version, scripts)| {
        let directory = sources.join(version.to_string());
        std::fs::create_dir_all(&directory).expect("creating the source directory");
        let manifest = directory.join("release.toml");
        std::fs::write(
            &manifest,
            release_manifest(&version, counter_version, &scripts),
        )
        .expect("writing the manifest");
        (version, manifest)
    })
}

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate is inside the workspace")
}

fn assemble_into(manifest: &Path, root: &Path) {
    assemble(manifest, workspace(), root, true)
        .unwrap_or_else(|error| panic!("assembling {}: {error}", manifest.display()));
}

// ---------------------------------------------------------------------------------------
// graft processes.

/// Runs `graft` with `GRAFT_ROOT=root`; its output and how long it took.
fn graft(root: &Path, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_graft"))
        .env("GRAFT_ROOT", root)
        .args(args)
        .output()
        .expect("running graft");
    (output, started.elapsed())
}

/// Runs `graft`, requires success; its stdout and how long it took.
fn succeed(root: &Path, args: &[&str]) -> (String, Duration) {
    let (output, took) = graft(root, args);
    assert!(
        output.status.success(),
        "graft {args:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (String::from_utf8_lossy(&output.stdout).into_owned(), took)
}

/// A `graft start --fleet` host, killed when dropped.
struct Host {
    name: String,
    root: tempfile::TempDir,
    child: Child,
}

impl Host {
    fn start(index: usize, url: &str, manifest: &Path) -> Host {
        let root = tempfile::tempdir().expect("creating a host root");
        assemble_into(manifest, root.path());
        let name = host_name(index);
        let child = start_fleet_host(root.path(), url, GROUP, &name);
        let host = Host { name, root, child };
        let socket = graft::control::socket_path(host.root.path());
        assert!(
            eventually(DEADLINE, || std::os::unix::net::UnixStream::connect(
                &socket
            )
            .is_ok()),
            "{} did not start: {}",
            host.name,
            std::fs::read_to_string(host.root.path().join("host.log")).unwrap_or_default()
        );
        host
    }

    fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(root: &Path) -> ControlClient {
    ControlClient::connect(root)
        .await
        .unwrap_or_else(|error| panic!("connecting to {}: {error}", root.display()))
}

/// The release running on the host at `root`, and its permanent one.
async fn releases_of(client: &mut ControlClient) -> (Option<Version>, Option<Version>) {
    let releases: Vec<ReleaseEntry> = client
        .request(&Request::Releases {}, |_| {})
        .await
        .expect("listing releases");
    let running = releases
        .iter()
        .find(|release| release.running)
        .map(|release| release.version.clone());
    let permanent = releases
        .iter()
        .find(|release| release.status == "permanent")
        .map(|release| release.version.clone());
    (running, permanent)
}

// ---------------------------------------------------------------------------------------
// The clients.

/// What one client saw in one phase.
#[derive(Debug, Default)]
struct ClientReport {
    /// Successful `Add(1)` calls per actor.
    added: Vec<i64>,
    /// Calls answered.
    calls: u64,
    /// Calls that failed.
    errors: u64,
    /// Every answered call's time from request sent to reply read.
    latencies: Vec<Duration>,
    /// The longest call, and when it was sent.
    longest: Duration,
    longest_sent: Option<Instant>,
}

/// One client per host, calling until stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<ClientReport>>,
}

impl Clients {
    fn start(runtime: &tokio::runtime::Runtime, roots: &[PathBuf]) -> Clients {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = roots
            .iter()
            .enumerate()
            .map(|(host, root)| {
                let stop = Arc::clone(&stop);
                let root = root.clone();
                runtime.spawn(async move {
                    let mut client = connect(&root).await;
                    let mut report = ClientReport {
                        added: vec![0; ACTORS],
                        ..ClientReport::default()
                    };
                    // Start each client at another actor.
                    let mut next = host * ACTORS / HOSTS;
                    while !stop.load(Ordering::Relaxed) {
                        let request = Request::Call {
                            actor: actor_name(next),
                            message: json!({"Add": 1}),
                            timeout_ms: Some(CALL_TIMEOUT_MILLISECONDS),
                        };
                        let sent = Instant::now();
                        match client.request::<Value>(&request, |_| {}).await {
                            Ok(_) => {
                                let took = sent.elapsed();
                                if took > report.longest {
                                    report.longest = took;
                                    report.longest_sent = Some(sent);
                                }
                                report.latencies.push(took);
                                report.added[next] += 1;
                                report.calls += 1;
                            }
                            Err(error) => {
                                eprintln!("client of host-{host}: {error}");
                                report.errors += 1;
                                client = connect(&root).await;
                            }
                        }
                        next = (next + 1) % ACTORS;
                        tokio::time::sleep(CLIENT_PAUSE).await;
                    }
                    report
                })
            })
            .collect();
        Clients { stop, tasks }
    }

    fn stop(self, runtime: &tokio::runtime::Runtime) -> Vec<ClientReport> {
        self.stop.store(true, Ordering::Relaxed);
        runtime.block_on(async {
            let mut reports = Vec::new();
            for task in self.tasks {
                reports.push(task.await.expect("a client task finished"));
            }
            reports
        })
    }
}

/// The clients' figures of one phase.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    calls: u64,
    errors: u64,
    median: Duration,
    p99: Duration,
    longest: Duration,
    /// The host whose client saw the longest call, and when that call was sent.
    longest_at: Option<(usize, Instant)>,
}

/// Everything the bench expects of the actors, and what it found.
struct Ledger {
    /// Expected count per host per actor.
    expected: Vec<Vec<i64>>,
    lost: u64,
    errors: u64,
    checks: u64,
}

impl Ledger {
    fn new() -> Ledger {
        Ledger {
            expected: vec![vec![0; ACTORS]; HOSTS],
            lost: 0,
            errors: 0,
            checks: 0,
        }
    }

    /// Adds the clients' calls; the phase's figures.
    fn account(&mut self, reports: Vec<ClientReport>) -> Seen {
        let mut latencies = Vec::new();
        let mut seen = Seen::default();
        for (host, report) in reports.into_iter().enumerate() {
            for (expected, added) in self.expected[host].iter_mut().zip(&report.added) {
                *expected += added;
            }
            seen.calls += report.calls;
            seen.errors += report.errors;
            if report.longest > seen.longest {
                seen.longest = report.longest;
                seen.longest_at = report.longest_sent.map(|sent| (host, sent));
            }
            latencies.extend(report.latencies);
        }
        self.errors += seen.errors;
        latencies.sort();
        if !latencies.is_empty() {
            seen.median = latencies[latencies.len() / 2];
            seen.p99 = latencies[latencies.len() * 99 / 100];
        }
        seen
    }

    /// Asks every actor of every host its count; adds the differences to `lost`.
    fn check(&mut self, runtime: &tokio::runtime::Runtime, roots: &[PathBuf]) {
        let lost = runtime.block_on(async {
            let mut lost = 0;
            for (host, root) in roots.iter().enumerate() {
                let mut client = connect(root).await;
                for (index, expected) in self.expected[host].iter().enumerate() {
                    let request = Request::Call {
                        actor: actor_name(index),
                        message: json!("Get"),
                        timeout_ms: Some(CALL_TIMEOUT_MILLISECONDS),
                    };
                    let count: Value = client
                        .request(&request, |_| {})
                        .await
                        .unwrap_or_else(|error| panic!("Get from host-{host}: {error}"));
                    let count = count.as_i64().expect("a count");
                    lost += count.abs_diff(*expected);
                }
            }
            lost
        });
        self.lost += lost;
        self.checks += 1;
    }
}

// ---------------------------------------------------------------------------------------
// Phases.

/// One baseline round: `graft install 2.0.0` on each host in turn.
struct BaselineRound {
    /// The five installs one after the other, each a `graft install` process.
    sequential: Duration,
    /// Each host's install as the host measured it (`total_us`).
    host_installs: Vec<Duration>,
    /// Each host's longest actor pause (`longest_pause_us`).
    host_pauses: Vec<Duration>,
    seen: Seen,
}

fn install_on(root: &Path, version: &Version) -> (Value, Duration) {
    let (stdout, took) = succeed(root, &["install", &version.to_string(), "--json"]);
    (serde_json::from_str(&stdout).expect("install's JSON"), took)
}

fn micros(value: &Value) -> Duration {
    Duration::from_micros(value.as_u64().expect("microseconds"))
}

fn baseline_round(
    runtime: &tokio::runtime::Runtime,
    roots: &[PathBuf],
    ledger: &mut Ledger,
) -> BaselineRound {
    let clients = Clients::start(runtime, roots);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut host_installs = Vec::new();
    let mut host_pauses = Vec::new();
    for root in roots {
        let (report, _) = install_on(root, &upgraded_version());
        host_installs.push(micros(&report["total_us"]));
        host_pauses.push(micros(&report["longest_pause_us"]));
    }
    let sequential = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let seen = ledger.account(clients.stop(runtime));
    ledger.check(runtime, roots);
    for root in roots {
        install_on(root, &initial_version());
    }
    ledger.check(runtime, roots);
    BaselineRound {
        sequential,
        host_installs,
        host_pauses,
        seen,
    }
}

/// One wave of a rollout, as the controller's lines and the monitor saw it.
#[derive(Debug, Clone, Copy)]
struct WaveTimes {
    /// From the controller's "installing" line to the last host of the wave running 2.0.0.
    until_installed: Duration,
    /// From there to the controller's "healthy" line.
    gate: Duration,
}

/// One fleet round.
struct FleetRound {
    /// Where the longest client-seen call fell: its host, and how long after (or before,
    /// negative) that host started running 2.0.0, in milliseconds.
    longest_where: Option<(usize, f64)>,
    rollout: Duration,
    waves: Vec<WaveTimes>,
    rollback: Duration,
    seen: Seen,
}

/// Polls every host's running release until stopped; when each first ran `version`.
fn monitor(
    runtime: &tokio::runtime::Runtime,
    roots: &[PathBuf],
    version: Version,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Option<Instant>>> {
    let roots = roots.to_vec();
    runtime.spawn(async move {
        let mut clients = Vec::new();
        for root in &roots {
            clients.push(connect(root).await);
        }
        let mut seen = vec![None; roots.len()];
        while !stop.load(Ordering::Relaxed) {
            for (client, first) in clients.iter_mut().zip(seen.iter_mut()) {
                if first.is_none() && releases_of(client).await.0.as_ref() == Some(&version) {
                    *first = Some(Instant::now());
                }
            }
            tokio::time::sleep(MONITOR_INTERVAL).await;
        }
        seen
    })
}

/// Runs `graft fleet … rollout` and time-stamps its progress lines (stderr).
fn timed_rollout(publisher: &Path, url: &str) -> (Duration, Vec<(Instant, String)>) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_graft"))
        .env("GRAFT_ROOT", publisher)
        .env("RUST_LOG", "warn")
        .args(["fleet", "--server", url, "rollout"])
        .arg(upgraded_version().to_string())
        .args(["--group", GROUP])
        .args(["--canary", &CANARY.to_string()])
        .args(["--wave", &WAVE.to_string()])
        .args(["--health-window", &HEALTH_WINDOW_SECONDS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the rollout");
    let stderr = child.stderr.take().expect("the rollout's stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = std::thread::spawn({
        let lines = Arc::clone(&lines);
        move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines
                    .lock()
                    .expect("the lines")
                    .push((Instant::now(), line));
            }
        }
    });
    let output = child.wait_with_output().expect("waiting for the rollout");
    let took = started.elapsed();
    reader.join().expect("the stderr reader finished");
    let lines = std::mem::take(&mut *lines.lock().expect("the lines"));
    assert!(
        output.status.success(),
        "the rollout failed ({}): {}{:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        lines
    );
    (took, lines)
}

/// The waves' times from the controller's lines and the hosts' first 2.0.0 sightings.
fn wave_times(lines: &[(Instant, String)], running_since: &[Option<Instant>]) -> Vec<WaveTimes> {
    let line_at = |prefix: &str| {
        lines
            .iter()
            .find(|(_, line)| line.starts_with(prefix))
            .map(|(at, _)| *at)
    };
    let waves = graft::fleet::state::plan_waves(
        &(0..HOSTS).map(host_name).collect::<Vec<_>>(),
        CANARY,
        graft::fleet::state::WaveSize::Hosts(WAVE),
    );
    waves
        .iter()
        .enumerate()
        .filter_map(|(index, wave)| {
            let start = line_at(&format!("wave {}: installing", index + 1))?;
            let healthy = line_at(&format!("wave {}: healthy", index + 1))?;
            let installed = wave
                .iter()
                .map(|name| {
                    let host: usize = name["host-".len()..].parse().expect("a host index");
                    running_since[host]
                })
                .collect::<Option<Vec<Instant>>>()?
                .into_iter()
                .max()?;
            Some(WaveTimes {
                until_installed: installed.saturating_duration_since(start),
                gate: healthy.saturating_duration_since(installed),
            })
        })
        .collect()
}

/// Waits until every host runs `version` and has it permanent.
fn await_everywhere(runtime: &tokio::runtime::Runtime, roots: &[PathBuf], version: &Version) {
    let settled = runtime.block_on(async {
        let end = Instant::now() + DEADLINE;
        let mut clients = Vec::new();
        for root in roots {
            clients.push(connect(root).await);
        }
        let mut last = Vec::new();
        while Instant::now() < end {
            last.clear();
            for client in &mut clients {
                last.push(releases_of(client).await);
            }
            if last.iter().all(|(running, permanent)| {
                running.as_ref() == Some(version) && permanent.as_ref() == Some(version)
            }) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    });
    if let Err(last) = settled {
        let logs: Vec<String> = roots
            .iter()
            .map(|root| std::fs::read_to_string(root.join("host.log")).unwrap_or_default())
            .collect();
        panic!(
            "not every host runs {version} permanent: (running, permanent) {last:?}\nhost logs:\n{}",
            logs.join("\n---\n")
        );
    }
}

/// Removes `version` from every host (so the next rollout downloads it again).
fn remove_everywhere(runtime: &tokio::runtime::Runtime, roots: &[PathBuf], version: &Version) {
    runtime.block_on(async {
        for root in roots {
            let mut client = connect(root).await;
            let removed: Result<Value, _> = client
                .request(
                    &Request::Remove {
                        version: version.clone(),
                    },
                    |_| {},
                )
                .await;
            removed.unwrap_or_else(|error| panic!("removing {version}: {error}"));
        }
    });
}

/// Waits until every host's heartbeat in the fleet reports `version` and no install.
fn await_heartbeats(publisher: &Path, url: &str, version: &Version) {
    let mut last = Value::Null;
    let reported = eventually(DEADLINE, || {
        let (output, _) = graft(publisher, &["fleet", "--server", url, "status", "--json"]);
        let Ok(status) = serde_json::from_slice::<Value>(&output.stdout) else {
            return false;
        };
        last = status;
        last["hosts"].as_array().is_some_and(|hosts| {
            hosts.len() == HOSTS
                && hosts.iter().all(|host| {
                    host["current"] == version.to_string() && host["installing"] == false
                })
        })
    });
    assert!(reported, "not every heartbeat reports {version}: {last}");
}

fn fleet_round(
    runtime: &tokio::runtime::Runtime,
    publisher: &Path,
    url: &str,
    roots: &[PathBuf],
    ledger: &mut Ledger,
) -> FleetRound {
    // Heartbeats are up to 2 s old, and one taken while a host briefly ran 2.0.0 (the
    // baseline's installs) would be taken by the controller as the host's release before
    // the rollout: its rollback would then go "back" to 2.0.0 (the gate itself no longer
    // trusts such a heartbeat, see `fleet::rollout`). Start from heartbeats that all say
    // 1.0.0, as an operator's `graft fleet status` would show before a rollout.
    await_heartbeats(publisher, url, &initial_version());
    let clients = Clients::start(runtime, roots);
    let stop_monitor = Arc::new(AtomicBool::new(false));
    let watching = monitor(
        runtime,
        roots,
        upgraded_version(),
        Arc::clone(&stop_monitor),
    );
    std::thread::sleep(Duration::from_millis(200));
    let (rollout, lines) = timed_rollout(publisher, url);
    std::thread::sleep(Duration::from_millis(200));
    stop_monitor.store(true, Ordering::Relaxed);
    let running_since = runtime
        .block_on(watching)
        .expect("the monitor task finished");
    let seen = ledger.account(clients.stop(runtime));
    ledger.check(runtime, roots);
    let waves = wave_times(&lines, &running_since);
    let longest_where = seen.longest_at.and_then(|(host, sent)| {
        let running = running_since[host]?;
        let after = if sent >= running {
            (sent - running).as_secs_f64()
        } else {
            -(running - sent).as_secs_f64()
        };
        Some((host, after * 1e3))
    });

    let (_, rollback) = succeed(publisher, &["fleet", "--server", url, "rollback", "--json"]);
    await_everywhere(runtime, roots, &initial_version());
    ledger.check(runtime, roots);
    remove_everywhere(runtime, roots, &upgraded_version());
    FleetRound {
        longest_where,
        rollout,
        waves,
        rollback,
        seen,
    }
}

// ---------------------------------------------------------------------------------------
// Summary.

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1e3)
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let has = |flag: &str| arguments.iter().any(|argument| argument == flag);
    if has("--list") {
        return;
    }
    let smoke = !has("--bench");
    let rounds = if smoke { 1 } else { 3 };
    let Some(nats) = nats_server_binary() else {
        println!(
            "summary: skipped: no nats-server (apt-get install nats-server, or set GRAFT_NATS_SERVER)"
        );
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");

    let setup_started = Instant::now();
    let server = NatsServer::start(&nats);
    let url = server.url();
    let publisher = tempfile::tempdir().expect("creating the publisher root");
    let [(_, first_manifest), (_, second_manifest)] =
        write_sources(&publisher.path().join("sources"));
    assemble_into(&first_manifest, publisher.path());
    assemble_into(&second_manifest, publisher.path());
    let (_, publish_time) = succeed(
        publisher.path(),
        &["fleet", "--server", &url, "publish", "2.0.0"],
    );
    let hosts: Vec<Host> = (0..HOSTS)
        .map(|index| Host::start(index, &url, &first_manifest))
        .collect();
    let roots: Vec<PathBuf> = hosts.iter().map(|host| host.root().to_path_buf()).collect();
    // Every host listed in the fleet before anything is rolled out.
    let listed = eventually(DEADLINE, || {
        let (output, _) = graft(
            publisher.path(),
            &["fleet", "--server", &url, "status", "--json"],
        );
        serde_json::from_slice::<Value>(&output.stdout)
            .ok()
            .and_then(|status| status["hosts"].as_array().map(Vec::len))
            == Some(HOSTS)
    });
    assert!(listed, "not every host joined the fleet");
    println!(
        "setup: nats-server, 2 releases assembled, 2.0.0 published in {}, {HOSTS} hosts × {ACTORS} actors up, in {}",
        millis(publish_time),
        seconds(setup_started.elapsed())
    );

    let mut ledger = Ledger::new();
    // The noise floor: the clients with no install anywhere (heartbeats only).
    let clients = Clients::start(&runtime, &roots);
    std::thread::sleep(QUIET);
    let quiet = ledger.account(clients.stop(&runtime));
    ledger.check(&runtime, &roots);
    println!(
        "quiet: {} of clients, no install: {} calls, median {}, p99 {}, longest {}",
        seconds(QUIET),
        quiet.calls,
        millis(quiet.median),
        millis(quiet.p99),
        millis(quiet.longest)
    );
    // Baseline: each host gets 2.0.0 from the fleet's store, then plain installs.
    for root in &roots {
        succeed(root, &["fleet", "--server", &url, "fetch", "2.0.0"]);
    }
    let mut baseline = Vec::new();
    for round in 0..rounds {
        let result = baseline_round(&runtime, &roots, &mut ledger);
        println!(
            "baseline round {}: 5 sequential `graft install 2.0.0`: {}; per host install {:?}; pauses {:?}; clients: {} calls, longest {}",
            round + 1,
            millis(result.sequential),
            result
                .host_installs
                .iter()
                .map(|took| millis(*took))
                .collect::<Vec<_>>(),
            result
                .host_pauses
                .iter()
                .map(|took| millis(*took))
                .collect::<Vec<_>>(),
            result.seen.calls,
            millis(result.seen.longest),
        );
        baseline.push(result);
    }
    remove_everywhere(&runtime, &roots, &upgraded_version());

    let mut fleet = Vec::new();
    for round in 0..rounds {
        let result = fleet_round(&runtime, publisher.path(), &url, &roots, &mut ledger);
        println!(
            "fleet round {}: rollout {}, waves {:?}, rollback {}; clients: {} calls, median {}, p99 {}, longest {} (host-{}, sent {:.0} ms from when it first ran 2.0.0 as polled)",
            round + 1,
            seconds(result.rollout),
            result
                .waves
                .iter()
                .map(|wave| format!(
                    "installed after {}, gate {}",
                    millis(wave.until_installed),
                    millis(wave.gate)
                ))
                .collect::<Vec<_>>(),
            seconds(result.rollback),
            result.seen.calls,
            millis(result.seen.median),
            millis(result.seen.p99),
            millis(result.seen.longest),
            result.longest_where.map_or(usize::MAX, |(host, _)| host),
            result.longest_where.map_or(f64::NAN, |(_, after)| after),
        );
        fleet.push(result);
    }
    drop(hosts);
    drop(server);

    let rollout = median(fleet.iter().map(|round| round.rollout).collect());
    let longest = median(fleet.iter().map(|round| round.seen.longest).collect());
    let worst = fleet
        .iter()
        .map(|round| round.seen.longest)
        .max()
        .unwrap_or_default();
    let typical = median(fleet.iter().map(|round| round.seen.median).collect());
    let rollback = median(fleet.iter().map(|round| round.rollback).collect());
    let sequential = median(baseline.iter().map(|round| round.sequential).collect());
    let host_install = median(
        baseline
            .iter()
            .flat_map(|round| round.host_installs.clone())
            .collect(),
    );
    let host_pause = median(
        baseline
            .iter()
            .flat_map(|round| round.host_pauses.clone())
            .collect(),
    );
    let baseline_longest = median(baseline.iter().map(|round| round.seen.longest).collect());
    let wave_count = fleet.first().map_or(0, |round| round.waves.len());
    let windows = Duration::from_secs(HEALTH_WINDOW_SECONDS * wave_count as u64);
    let until_installed: Duration = (0..wave_count)
        .map(|wave| {
            median(
                fleet
                    .iter()
                    .filter_map(|round| round.waves.get(wave).map(|times| times.until_installed))
                    .collect(),
            )
        })
        .sum();
    let gates: Duration = (0..wave_count)
        .map(|wave| {
            median(
                fleet
                    .iter()
                    .filter_map(|round| round.waves.get(wave).map(|times| times.gate))
                    .collect(),
            )
        })
        .sum();
    let calls: u64 = fleet.iter().map(|round| round.seen.calls).sum();

    println!();
    println!(
        "summary: fleet rollout {HOSTS} hosts × {ACTORS} actors, counter 1.0.0 -> 1.1.0 (advanced), --canary {CANARY} --wave {WAVE} --health-window {HEALTH_WINDOW_SECONDS}, one paced control-socket client per host{}",
        if smoke {
            " (smoke run, not a measurement: pass --bench)"
        } else {
            ""
        }
    );
    println!(
        "summary: rollout time: median {} over {} rounds ({} waves: {} of health windows by construction; until installed (state read + download + install) {} in sum of wave medians; gates after install (heartbeat lag, polls, window) {})",
        seconds(rollout),
        fleet.len(),
        wave_count,
        seconds(windows),
        seconds(until_installed),
        seconds(gates),
    );
    println!(
        "summary: longest pause seen by a client of any host during a rollout: median {}, max {} (typical call {}; {calls} calls)",
        millis(longest),
        millis(worst),
        millis(typical),
    );
    println!(
        "summary: with no install anywhere ({} of the same clients): longest call {}, p99 {}, median {}",
        seconds(QUIET),
        millis(quiet.longest),
        millis(quiet.p99),
        millis(quiet.median),
    );
    println!(
        "summary: baseline: 5 sequential `graft install 2.0.0` median {} (one host's install {} as it measures it, its longest actor pause {}; longest client-seen pause {}); rollout / baseline = {:.1}x; rollback median {}",
        millis(sequential),
        millis(host_install),
        millis(host_pause),
        millis(baseline_longest),
        rollout.as_secs_f64() / sequential.as_secs_f64(),
        seconds(rollback),
    );
    println!(
        "summary: rollout minus its health windows / baseline = {:.1}x",
        rollout.saturating_sub(windows).as_secs_f64() / sequential.as_secs_f64()
    );
    println!(
        "summary: target zero messages lost: {} over {} checks of {} actors, {}",
        ledger.lost,
        ledger.checks,
        HOSTS * ACTORS,
        verdict(ledger.lost == 0)
    );
    println!(
        "summary: target no failed client call: {} failed, {}",
        ledger.errors,
        verdict(ledger.errors == 0)
    );
}
