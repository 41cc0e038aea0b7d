//! Benchmark of a live release upgrade through the real release handler: N = 1, 100 and
//! 10,000 `counter` actors move from counter 1.0.0 to 1.1.0 in advanced mode (1.1.0's
//! `code_change` migrates each state from `{ count }` to `{ count, history, limit }`) while
//! a client keeps casting `{"Add": 1}` to them, and nothing it sent may be lost.
//!
//! Per N, two source releases are written into a temporary directory and assembled with
//! the release profile (as `faulty_releases` in `tests/tests/releases.rs` does): 1.0.0 with
//! counter 1.0.0, and 2.0.0 with counter 1.1.0, an `[[upgrade]]` from 1.0.0 and a
//! `[[downgrade]]` back to it, each one `update` of `counter` in advanced mode. For N = 1
//! the actor is a static child of the root supervisor; for more, the root has one
//! `dynamic` supervisor child whose N children are started at run time with
//! `start_dynamic_child` (the release handler finds them by walking the tree).
//!
//! Each round, under the client's load:
//! 1. `install(2.0.0)`: the upgrade measured ([`InstallReport::total`] and
//!    [`InstallReport::longest_pause`], plus where the time went, from the install's
//!    progress callback);
//! 2. the baseline: every actor suspended and resumed concurrently with
//!    [`ActorRef::suspend`]/[`ActorRef::resume`], one task per actor as the release handler
//!    does it, with no tree walk, no library load and no migration, so the ratio shows what
//!    everything else in an upgrade costs;
//! 3. `install(1.0.0)`: the downgrade (1.1.0's `downgrade`), which readies the next round.
//!
//! Then, per N, rounds under an *unpaced* client: it casts as fast as it can while an
//! actor's mailbox holds fewer than its share of [`UNPACED_BACKLOG`] (about 100,000 casts
//! queued in the fleet's mailboxes the whole time), and each round is `install(2.0.0)`
//! (measured) and `install(1.0.0)`, each checked after. The paced client hides that a
//! system message may wait behind a mailbox's backlog; this one does not.
//!
//! After each of the three the client stops and every actor is called with `Get`; the sum of
//! the counts must equal the initial state plus everything cast since. "Lost" is the size of
//! that difference, summed over every check of a fleet (the N = 1 fleet's include the
//! criterion run's), so a message handled twice would count too.
//!
//! The N = 1 upgrade is also a criterion case (`upgrade/1_actor_under_load`, downgrade
//! untimed); the `summary:` lines at the end take medians of rounds timed by this program
//! (11 rounds for N = 1 and 100, 5 for 10,000, after one warm-up round) and say whether the
//! targets are met: 10,000 actors upgraded in at most 25 ms in total, no actor suspended
//! longer than 15 ms, under the paced client and under the unpaced one (5 rounds each), no
//! message lost. For reference, Erlang/OTP 25 upgrades 10,001 gen_servers in 80–93 ms.
//!
//! Tricky parts:
//! - The client is a plain OS thread, not a task on the tokio runtime: it paces itself
//!   ([`CLIENT_BATCH`] casts, then a sleep of [`CLIENT_PAUSE`]) so the mailboxes stay short
//!   and a suspend request is not queued behind a backlog the client piled up, and it does
//!   not take one of the two workers away from the actors and the install.
//! - [`ActorRef::cast`] takes ownership of its bytes, so every cast clones the encoded
//!   message, as a caller would.
//! - Casts that arrive while an actor is suspended wait in its side queue and run after the
//!   resume, before the `Get` sent after the client stopped (mailboxes are FIFO), so a `Get`
//!   per actor is enough to know every cast was handled.
//! - Every install loads its target library from disk again (read, SHA-256, private copy,
//!   `dlopen`): the version left behind is unloaded as soon as no actor uses it, so the
//!   upgrade and the downgrade of every round pay for it. It happens on the blocking pool
//!   before any actor is suspended (while the handler walks the tree): it counts in the
//!   total, not in the pause.
//! - The unpaced client sleeps only when every mailbox is full, so it does not spin a core
//!   away from the actors; a suspended actor's casts still count in its mailbox's length,
//!   so the backlog stays put during the pause rather than growing.
//! - Installs (and the baseline) run in a task spawned on the runtime, as the host's control
//!   server runs them, not on the `block_on` thread: their awaits resume on a worker as in
//!   a host, and whatever an install does synchronously (hashing and copying the library,
//!   unloading the old one) occupies a worker as it would there.
//! - `longest_pause` is the handler's figure: from the first suspend request to the last
//!   resume's answer, so it bounds every single actor's pause from above.
//! - The machine may have only two cores for the two workers and the client thread, so
//!   absolute times include some contention; the phases printed per fleet show where an
//!   install's time went.
//! - Run without `--bench` (as `cargo test --benches` does), criterion runs its case once
//!   and the summary runs one round (and one unpaced round) for 1, 100 and 1,000 actors: a
//!   smoke test, not a measurement.

use criterion::Criterion;
use graft::release::assemble::assemble;
use graft::release::handler::{InstallPhase, InstallReport, ProgressFn, ReleaseHandler};
use graft::runtime::{ActorRef, Runtime};
use graft::supervisor::ChildRef;
use graft_plugin::codec;
use semver::Version;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Worker threads of the tokio runtime.
const WORKER_THREADS: usize = 2;

/// The id of the dynamic supervisor that holds the actors when there is more than one.
const DYNAMIC_SUPERVISOR: &str = "counters";

/// `suspend_timeout_ms` of the `update` instructions.
const SUSPEND_TIMEOUT_MILLISECONDS: u64 = 5_000;

/// The timeout of the benchmark's own calls, suspends and resumes (never reached).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The casts that give every actor its initial state.
const INITIAL_ADDS: [i64; 3] = [40, 2, 7];

/// Casts the client sends between two pauses.
const CLIENT_BATCH: usize = 10;

/// The client's pause between two batches.
const CLIENT_PAUSE: Duration = Duration::from_micros(100);

/// How long the client runs before each measured operation.
const CLIENT_LEAD: Duration = Duration::from_millis(5);

/// The target for upgrading [`TARGET_ACTORS`] actors.
const TARGET_TIME: Duration = Duration::from_millis(25);

/// The target for any one actor's pause during that upgrade.
const TARGET_PAUSE: Duration = Duration::from_millis(15);

/// The unpaced client keeps about this many casts queued in a fleet's mailboxes (each
/// actor's share, at least one).
const UNPACED_BACKLOG: usize = 100_000;

/// How long the unpaced client runs before an install, to pile its backlog up.
const UNPACED_LEAD: Duration = Duration::from_millis(50);

/// The fleet size the targets are about.
const TARGET_ACTORS: usize = 10_000;

/// The `update` instruction of both scripts.
fn update_counter() -> String {
    format!(
        "op = \"update\"\nplugin = \"counter\"\nmode = \"advanced\"\nsuspend_timeout_ms = {SUSPEND_TIMEOUT_MILLISECONDS}\n"
    )
}

fn initial_version() -> Version {
    Version::new(1, 0, 0)
}

fn upgraded_version() -> Version {
    Version::new(2, 0, 0)
}

// ---------------------------------------------------------------------------------------
// Messages of `counter` (the same shapes in 1.0.0 and 1.1.0).

/// Its start arguments (`Args`).
#[derive(Serialize)]
struct StartArguments {
    start: i64,
}

/// The calls the benchmark makes (`Request`).
#[derive(Serialize)]
enum Request {
    Get,
}

/// The casts the benchmark sends (`Command`): `{"Add": n}`.
#[derive(Serialize)]
enum Command {
    Add(i64),
}

fn encode(value: &impl Serialize) -> Vec<u8> {
    codec::encode(value).expect("encoding a counter message")
}

async fn count_of(actor: &ActorRef) -> i64 {
    let reply = actor
        .call(encode(&Request::Get), CALL_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("Get from {}: {error}", actor.label()));
    codec::decode(&reply).expect("a count")
}

/// The sum of every actor's count, asked concurrently.
async fn total_count(actors: &[ActorRef]) -> i64 {
    let mut calls = JoinSet::new();
    for actor in actors {
        let actor = actor.clone();
        calls.spawn(async move { count_of(&actor).await });
    }
    let mut total = 0;
    while let Some(count) = calls.join_next().await {
        total += count.expect("the Get task finished");
    }
    total
}

// ---------------------------------------------------------------------------------------
// Releases.

fn actor_name(index: usize) -> String {
    format!("counter-{index}")
}

/// A source manifest: counter `counter_version`, the tree for `actor_count` actors, then
/// `scripts`.
fn release_manifest(
    version: &Version,
    counter_version: &str,
    actor_count: usize,
    scripts: &str,
) -> String {
    let mut text = format!(
        "[release]\nname = \"upgrade-bench\"\nversion = \"{version}\"\n\n\
         [plugins.counter]\nversion = \"{counter_version}\"\ncrate = \"plugins/counter/{counter_version}\"\n\n\
         [supervisor]\nstrategy = \"one_for_one\"\n\n"
    );
    if actor_count == 1 {
        text.push_str(&format!(
            "[[supervisor.children]]\nid = \"{}\"\nplugin = \"counter\"\nargs = {{ start = 0 }}\n",
            actor_name(0)
        ));
    } else {
        text.push_str(&format!(
            "[[supervisor.children]]\nid = \"{DYNAMIC_SUPERVISOR}\"\nstrategy = \"dynamic\"\n\n\
             [[supervisor.children.children]]\nid = \"counter\"\nplugin = \"counter\"\n"
        ));
    }
    text.push_str(scripts);
    text
}

/// Writes and assembles releases 1.0.0 and 2.0.0 for `actor_count` actors.
fn assemble_releases(actor_count: usize) -> tempfile::TempDir {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate is inside the workspace");
    let root = tempfile::tempdir().expect("creating the release root");
    let update = update_counter();
    let scripts = format!(
        "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\n{update}\n\
         [[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\n{update}"
    );
    for (version, counter_version, scripts) in [
        (initial_version(), "1.0.0", ""),
        (upgraded_version(), "1.1.0", scripts.as_str()),
    ] {
        let directory = root.path().join("sources").join(version.to_string());
        std::fs::create_dir_all(&directory).expect("creating the source directory");
        let manifest = directory.join("release.toml");
        std::fs::write(
            &manifest,
            release_manifest(&version, counter_version, actor_count, scripts),
        )
        .expect("writing the manifest");
        assemble(&manifest, workspace, root.path(), true)
            .unwrap_or_else(|error| panic!("assembling release {version}: {error}"));
    }
    root
}

// ---------------------------------------------------------------------------------------
// The client.

/// How a client sends.
#[derive(Debug, Clone, Copy)]
enum Pacing {
    /// [`CLIENT_BATCH`] casts, then a sleep of [`CLIENT_PAUSE`]: the mailboxes stay short.
    Paced,
    /// As fast as it can while an actor's mailbox holds fewer than this many messages:
    /// the fleet's mailboxes hold a backlog the whole time (it sleeps [`CLIENT_PAUSE`] only
    /// when every mailbox is full, so as not to spin a core away from the actors).
    Backlog(usize),
}

/// A thread casting `{"Add": 1}` round-robin to every actor until stopped.
struct Client {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
    started: Instant,
}

impl Client {
    fn start(actors: Arc<[ActorRef]>, pacing: Pacing) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let message = encode(&Command::Add(1));
            let mut sent = 0_u64;
            let mut next = 0;
            while !stopping.load(Ordering::Relaxed) {
                match pacing {
                    Pacing::Paced => {
                        for _ in 0..CLIENT_BATCH {
                            actors[next].cast(message.clone());
                            next = (next + 1) % actors.len();
                            sent += 1;
                        }
                        std::thread::sleep(CLIENT_PAUSE);
                    }
                    Pacing::Backlog(per_actor) => {
                        let mut sent_this_pass = false;
                        for actor in actors.iter() {
                            let room = per_actor.saturating_sub(actor.mailbox_length());
                            for _ in 0..room {
                                actor.cast(message.clone());
                            }
                            sent += room as u64;
                            sent_this_pass |= room > 0;
                            if stopping.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        if !sent_this_pass {
                            std::thread::sleep(CLIENT_PAUSE);
                        }
                    }
                }
            }
            sent
        });
        Client {
            stop,
            thread,
            started: Instant::now(),
        }
    }

    /// Stops the client; returns how many casts it sent and for how long.
    fn stop(self) -> (u64, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.thread.join().expect("the client thread finished");
        (sent, self.started.elapsed())
    }
}

// ---------------------------------------------------------------------------------------
// One install, measured.

/// Where an install's time went, from its progress callback.
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    /// Reading the target, finding and checking the script.
    plan: Duration,
    /// Loading the new library and walking the tree.
    load_and_walk: Duration,
    /// Suspending every actor.
    suspend: Duration,
    /// Migrating every actor.
    migrate: Duration,
    /// Switching the plugin table and resuming every actor.
    resume: Duration,
    /// After the resume: stragglers, purge, other instructions, the report.
    after_resume: Duration,
}

/// One install's figures.
#[derive(Debug, Clone, Copy)]
struct Install {
    total: Duration,
    longest_pause: Duration,
    phases: Phases,
}

impl Install {
    fn from_report(
        report: &InstallReport,
        marks: &[(InstallPhase, Instant)],
        started: Instant,
        returned: Instant,
    ) -> Install {
        let mark = |wanted: fn(&InstallPhase) -> bool| {
            marks
                .iter()
                .find(|(phase, _)| wanted(phase))
                .map(|(_, at)| *at)
                .expect("the install reported every phase")
        };
        let loading = mark(|phase| matches!(phase, InstallPhase::Loading(_)));
        let suspending = mark(|phase| matches!(phase, InstallPhase::Suspending(_)));
        let migrating = mark(|phase| matches!(phase, InstallPhase::Migrating(_)));
        let resuming = mark(|phase| matches!(phase, InstallPhase::Resuming(_)));
        // The handler's pause starts right after it reports `Suspending`.
        let resumed = suspending + report.longest_pause;
        Install {
            total: report.total,
            longest_pause: report.longest_pause,
            phases: Phases {
                plan: loading - started,
                load_and_walk: suspending - loading,
                suspend: migrating - suspending,
                migrate: resuming - migrating,
                resume: resumed.saturating_duration_since(resuming),
                after_resume: returned.saturating_duration_since(resumed),
            },
        }
    }
}

/// Runs `install(target)` in a task on the runtime, as the host's control server does;
/// returns the report, and when the install started and returned as that task saw it.
async fn install_in_task(
    handler: &Arc<ReleaseHandler>,
    target: Version,
    progress: Option<ProgressFn>,
) -> (InstallReport, Instant, Instant) {
    let handler = Arc::clone(handler);
    tokio::spawn(async move {
        let started = Instant::now();
        let report = handler
            .install(&target, progress)
            .await
            .unwrap_or_else(|error| panic!("installing {target}: {error}"));
        (report, started, Instant::now())
    })
    .await
    .expect("the install task finished")
}

// ---------------------------------------------------------------------------------------
// A fleet of counters under one release handler.

/// One measured round.
#[derive(Debug, Clone, Copy)]
struct Round {
    upgrade: Install,
    downgrade: Install,
    /// Suspending and resuming every actor, nothing else.
    baseline: Duration,
    /// One walk of the supervision tree (`which_children` of every supervisor), as an
    /// install makes to find the actors (and makes again to look for stragglers).
    walk: Duration,
}

/// One round under the unpaced client.
#[derive(Debug, Clone, Copy)]
struct UnpacedRound {
    upgrade: Install,
    downgrade: Install,
}

struct Fleet {
    handler: Arc<ReleaseHandler>,
    actors: Arc<[ActorRef]>,
    /// The sum of the counts the actors should report.
    expected_total: i64,
    /// The sum of |expected − reported| over every check.
    lost: u64,
    /// Casts the client sent, and for how long it ran.
    casts_sent: u64,
    client_time: Duration,
    /// The same for the unpaced client.
    unpaced_casts_sent: u64,
    unpaced_client_time: Duration,
    _root: tempfile::TempDir,
}

impl Fleet {
    /// Assembles the releases, boots 1.0.0, starts the actors and gives them state.
    async fn start(actor_count: usize) -> Fleet {
        let root = assemble_releases(actor_count);
        let runtime = Runtime::new();
        let handler = ReleaseHandler::boot(root.path(), runtime.clone())
            .await
            .unwrap_or_else(|error| panic!("booting release 1.0.0: {error}"));
        let actors: Vec<ActorRef> = if actor_count == 1 {
            vec![runtime.whereis(&actor_name(0)).expect("the static counter")]
        } else {
            let supervisor = runtime
                .supervisor(DYNAMIC_SUPERVISOR)
                .expect("the dynamic supervisor runs");
            let arguments = encode(&StartArguments { start: 0 });
            let mut actors = Vec::with_capacity(actor_count);
            for index in 0..actor_count {
                let child = supervisor
                    .start_dynamic_child(arguments.clone(), Some(actor_name(index)))
                    .await
                    .unwrap_or_else(|error| panic!("starting {}: {error}", actor_name(index)))
                    .expect("counter's init does not decline");
                actors.push(child.actor().expect("a worker").clone());
            }
            actors
        };
        let mut expected_total = 0;
        for actor in &actors {
            for amount in INITIAL_ADDS {
                actor.cast(encode(&Command::Add(amount)));
                expected_total += amount;
            }
        }
        let mut fleet = Fleet {
            handler: Arc::new(handler),
            actors: actors.into(),
            expected_total,
            lost: 0,
            casts_sent: 0,
            client_time: Duration::ZERO,
            unpaced_casts_sent: 0,
            unpaced_client_time: Duration::ZERO,
            _root: root,
        };
        fleet.check(0, Duration::ZERO).await;
        fleet
    }

    fn start_client(&self) -> Client {
        Client::start(Arc::clone(&self.actors), Pacing::Paced)
    }

    /// A client that keeps about [`UNPACED_BACKLOG`] casts queued in the fleet's mailboxes.
    fn start_unpaced_client(&self) -> Client {
        let per_actor = UNPACED_BACKLOG.div_ceil(self.actors.len()).max(1);
        Client::start(Arc::clone(&self.actors), Pacing::Backlog(per_actor))
    }

    /// Stops the client and checks that every message sent so far was handled once.
    async fn stop_client_and_check(&mut self, client: Client) {
        let (sent, ran) = client.stop();
        self.check(sent, ran).await;
    }

    /// Stops the unpaced client and checks that every message sent so far was handled once.
    async fn stop_unpaced_client_and_check(&mut self, client: Client) {
        let (sent, ran) = client.stop();
        self.unpaced_casts_sent += sent;
        self.unpaced_client_time += ran;
        self.check(sent, Duration::ZERO).await;
        self.casts_sent -= sent;
    }

    async fn check(&mut self, sent: u64, ran: Duration) {
        self.casts_sent += sent;
        self.client_time += ran;
        self.expected_total += sent as i64;
        let reported = total_count(&self.actors).await;
        self.lost += self.expected_total.abs_diff(reported);
        // Later checks measure only what goes wrong after this one.
        self.expected_total = reported;
    }

    async fn install(&self, target: Version) -> Install {
        let marks = Arc::new(Mutex::new(Vec::with_capacity(8)));
        let recorder = Arc::clone(&marks);
        let progress: ProgressFn = Arc::new(move |phase| {
            recorder
                .lock()
                .expect("the marks")
                .push((phase, Instant::now()))
        });
        let (report, started, returned) =
            install_in_task(&self.handler, target, Some(progress)).await;
        assert_eq!(
            (report.actors_migrated, report.actors_suspended),
            (self.actors.len(), self.actors.len()),
            "every actor was suspended and migrated once"
        );
        let marks = marks.lock().expect("the marks");
        Install::from_report(&report, &marks, started, returned)
    }

    /// Suspends every actor concurrently, then resumes them all, from a task on the
    /// runtime like an install: the pause without a migration.
    async fn suspend_and_resume_all(&self) -> Duration {
        let actors = Arc::clone(&self.actors);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut suspending = JoinSet::new();
            for actor in actors.iter() {
                let actor = actor.clone();
                suspending.spawn(async move { actor.suspend(CALL_TIMEOUT).await });
            }
            while let Some(joined) = suspending.join_next().await {
                joined
                    .expect("the suspend task finished")
                    .expect("the actor suspended");
            }
            let mut resuming = JoinSet::new();
            for actor in actors.iter() {
                let actor = actor.clone();
                resuming.spawn(async move { actor.resume(CALL_TIMEOUT).await });
            }
            while let Some(joined) = resuming.join_next().await {
                joined
                    .expect("the resume task finished")
                    .expect("the actor resumed");
            }
            started.elapsed()
        })
        .await
        .expect("the baseline task finished")
    }

    /// Walks the supervision tree from a task on the runtime; the time it took.
    async fn walk_tree(&self) -> Duration {
        let root = self.handler.root_supervisor().await;
        let actor_count = self.actors.len();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut pending = vec![root];
            let mut workers = 0;
            while let Some(supervisor) = pending.pop() {
                let children = supervisor
                    .which_children()
                    .await
                    .expect("the supervisor answers");
                for child in children {
                    match child.child {
                        Some(ChildRef::Worker(_)) => workers += 1,
                        Some(ChildRef::Supervisor(nested)) => pending.push(nested),
                        None => {}
                    }
                }
            }
            let took = started.elapsed();
            assert_eq!(workers, actor_count, "the walk found every actor");
            took
        })
        .await
        .expect("the walk task finished")
    }

    /// Upgrade, baseline, downgrade, each under the client's load and checked after.
    async fn round(&mut self) -> Round {
        let client = self.start_client();
        tokio::time::sleep(CLIENT_LEAD).await;
        let upgrade = self.install(upgraded_version()).await;
        self.stop_client_and_check(client).await;

        let client = self.start_client();
        tokio::time::sleep(CLIENT_LEAD).await;
        let baseline = self.suspend_and_resume_all().await;
        let walk = self.walk_tree().await;
        self.stop_client_and_check(client).await;

        let client = self.start_client();
        tokio::time::sleep(CLIENT_LEAD).await;
        let downgrade = self.install(initial_version()).await;
        self.stop_client_and_check(client).await;
        Round {
            upgrade,
            downgrade,
            baseline,
            walk,
        }
    }

    /// Upgrade and downgrade, each under the unpaced client's backlog and checked after.
    async fn unpaced_round(&mut self) -> UnpacedRound {
        let client = self.start_unpaced_client();
        tokio::time::sleep(UNPACED_LEAD).await;
        let upgrade = self.install(upgraded_version()).await;
        self.stop_unpaced_client_and_check(client).await;

        let client = self.start_unpaced_client();
        tokio::time::sleep(UNPACED_LEAD).await;
        let downgrade = self.install(initial_version()).await;
        self.stop_unpaced_client_and_check(client).await;
        UnpacedRound { upgrade, downgrade }
    }

    /// `iterations` upgrades under load (each followed by an untimed downgrade); the time
    /// of the upgrades.
    async fn timed_upgrades(&mut self, iterations: u64) -> Duration {
        let client = self.start_client();
        tokio::time::sleep(CLIENT_LEAD).await;
        let mut upgrading = Duration::ZERO;
        for _ in 0..iterations {
            let (_, started, returned) =
                install_in_task(&self.handler, upgraded_version(), None).await;
            upgrading += returned - started;
            install_in_task(&self.handler, initial_version(), None).await;
        }
        self.stop_client_and_check(client).await;
        upgrading
    }

    async fn shutdown(self) {
        self.handler.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------
// Summary.

/// How thoroughly the summary measures.
#[derive(Debug, Clone, Copy)]
struct Sampling {
    /// Fleet sizes and the measured rounds for each (after one warm-up round).
    fleets: [(usize, usize); 3],
    /// Rounds under the unpaced client, per fleet (after the paced ones).
    unpaced_rounds: usize,
}

impl Sampling {
    const MEASURE: Sampling = Sampling {
        fleets: [(1, 11), (100, 11), (10_000, 5)],
        unpaced_rounds: 5,
    };
    const SMOKE: Sampling = Sampling {
        fleets: [(1, 1), (100, 1), (1_000, 1)],
        unpaced_rounds: 1,
    };
}

/// The median of some durations.
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// A duration in milliseconds (microseconds below one).
fn human_time(duration: Duration) -> String {
    let milliseconds = duration.as_secs_f64() * 1e3;
    if milliseconds >= 1.0 {
        format!("{milliseconds:.1} ms")
    } else {
        format!("{:.0} µs", milliseconds * 1e3)
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// Medians of one fleet's rounds.
struct FleetSummary {
    actors: usize,
    installs: Installs,
    baseline: Duration,
    walk: Duration,
    phases: Phases,
    lost: u64,
    casts_per_second: f64,
    unpaced: UnpacedSummary,
}

/// Medians of one fleet's rounds under the unpaced client.
struct UnpacedSummary {
    installs: Installs,
    /// Suspending every actor (the suspends wait behind the backlog unless system
    /// messages are served first).
    suspend: Duration,
    casts_per_second: f64,
}

/// The upgrades and downgrades of some rounds: medians, and the worst upgrade pause.
struct Installs {
    rounds: usize,
    upgrade_total: Duration,
    upgrade_pause: Duration,
    worst_upgrade_pause: Duration,
    downgrade_total: Duration,
    downgrade_pause: Duration,
}

impl Installs {
    /// From each round's (upgrade, downgrade).
    fn new(rounds: &[(Install, Install)]) -> Installs {
        let of =
            |pick: fn(&(Install, Install)) -> Duration| median(rounds.iter().map(pick).collect());
        Installs {
            rounds: rounds.len(),
            upgrade_total: of(|(upgrade, _)| upgrade.total),
            upgrade_pause: of(|(upgrade, _)| upgrade.longest_pause),
            worst_upgrade_pause: rounds
                .iter()
                .map(|(upgrade, _)| upgrade.longest_pause)
                .max()
                .unwrap_or_default(),
            downgrade_total: of(|(_, downgrade)| downgrade.total),
            downgrade_pause: of(|(_, downgrade)| downgrade.longest_pause),
        }
    }

    /// The two targets' lines (total time, longest pause), each after its prefix (which
    /// names the client when it is not the paced one).
    fn print_targets(&self, total_prefix: &str, pause_prefix: &str) {
        println!(
            "summary: target {total_prefix}{TARGET_ACTORS} actors upgraded in <= {}: median {}, {}",
            human_time(TARGET_TIME),
            human_time(self.upgrade_total),
            verdict(self.upgrade_total <= TARGET_TIME)
        );
        println!(
            "summary: target {pause_prefix}no actor suspended longer than {}: median longest pause {} ({}), worst of {} rounds {} ({})",
            human_time(TARGET_PAUSE),
            human_time(self.upgrade_pause),
            verdict(self.upgrade_pause <= TARGET_PAUSE),
            self.rounds,
            human_time(self.worst_upgrade_pause),
            verdict(self.worst_upgrade_pause <= TARGET_PAUSE),
        );
    }
}

impl UnpacedSummary {
    fn new(rounds: &[UnpacedRound], fleet: &Fleet) -> UnpacedSummary {
        let of = |pick: fn(&UnpacedRound) -> Duration| median(rounds.iter().map(pick).collect());
        let installs: Vec<(Install, Install)> = rounds
            .iter()
            .map(|round| (round.upgrade, round.downgrade))
            .collect();
        UnpacedSummary {
            installs: Installs::new(&installs),
            suspend: of(|round| round.upgrade.phases.suspend),
            casts_per_second: fleet.unpaced_casts_sent as f64
                / fleet.unpaced_client_time.as_secs_f64(),
        }
    }
}

impl FleetSummary {
    fn new(fleet: &Fleet, rounds: &[Round], unpaced: &[UnpacedRound]) -> FleetSummary {
        let of = |pick: fn(&Round) -> Duration| median(rounds.iter().map(pick).collect());
        let installs: Vec<(Install, Install)> = rounds
            .iter()
            .map(|round| (round.upgrade, round.downgrade))
            .collect();
        FleetSummary {
            actors: fleet.actors.len(),
            installs: Installs::new(&installs),
            baseline: of(|round| round.baseline),
            walk: of(|round| round.walk),
            phases: Phases {
                plan: of(|round| round.upgrade.phases.plan),
                load_and_walk: of(|round| round.upgrade.phases.load_and_walk),
                suspend: of(|round| round.upgrade.phases.suspend),
                migrate: of(|round| round.upgrade.phases.migrate),
                resume: of(|round| round.upgrade.phases.resume),
                after_resume: of(|round| round.upgrade.phases.after_resume),
            },
            lost: fleet.lost,
            casts_per_second: fleet.casts_sent as f64 / fleet.client_time.as_secs_f64(),
            unpaced: UnpacedSummary::new(unpaced, fleet),
        }
    }

    fn print(&self) {
        let ratio = |time: Duration| time.as_secs_f64() / self.baseline.as_secs_f64();
        let installs = &self.installs;
        println!(
            "summary: upgrade {} actors: median total {}, longest pause {}, lost {}; suspend/resume only {} ({:.1}x)",
            self.actors,
            human_time(installs.upgrade_total),
            human_time(installs.upgrade_pause),
            self.lost,
            human_time(self.baseline),
            ratio(installs.upgrade_total),
        );
        println!(
            "summary:   {} rounds; pause {:.1}x suspend/resume only; worst round's pause {}; downgrade median total {}, pause {}; client {:.0} casts/s",
            installs.rounds,
            ratio(installs.upgrade_pause),
            human_time(installs.worst_upgrade_pause),
            human_time(installs.downgrade_total),
            human_time(installs.downgrade_pause),
            self.casts_per_second,
        );
        let phases = self.phases;
        println!(
            "summary:   upgrade phases (medians): plan {}, load library + walk tree {} (a walk alone: {}), suspend {}, migrate {}, resume {}, after resume (stragglers, report) {}",
            human_time(phases.plan),
            human_time(phases.load_and_walk),
            human_time(self.walk),
            human_time(phases.suspend),
            human_time(phases.migrate),
            human_time(phases.resume),
            human_time(phases.after_resume),
        );
        let unpaced = &self.unpaced;
        println!(
            "summary:   unpaced client (~{UNPACED_BACKLOG} casts queued), {} rounds: upgrade median total {}, longest pause {} (suspend {}), worst round's pause {}; downgrade median total {}, pause {}; client {:.0} casts/s",
            unpaced.installs.rounds,
            human_time(unpaced.installs.upgrade_total),
            human_time(unpaced.installs.upgrade_pause),
            human_time(unpaced.suspend),
            human_time(unpaced.installs.worst_upgrade_pause),
            human_time(unpaced.installs.downgrade_total),
            human_time(unpaced.installs.downgrade_pause),
            unpaced.casts_per_second,
        );
    }
}

fn print_targets(summaries: &[FleetSummary], smoke: bool) {
    let lost: u64 = summaries.iter().map(|summary| summary.lost).sum();
    match summaries
        .iter()
        .find(|summary| summary.actors == TARGET_ACTORS)
    {
        Some(largest) => {
            largest.installs.print_targets("", "");
            largest.unpaced.installs.print_targets(
                &format!("unpaced client (~{UNPACED_BACKLOG} casts queued): "),
                "unpaced client: ",
            );
        }
        None if smoke => println!("summary: no {TARGET_ACTORS}-actor fleet in a smoke run"),
        None => {}
    }
    println!(
        "summary: target zero messages lost: {lost} over every check of every fleet, {}",
        verdict(lost == 0)
    );
    println!("summary: reference: Erlang/OTP 25 upgrades 10,001 gen_servers in 80–93 ms");
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let has = |flag: &str| arguments.iter().any(|argument| argument == flag);
    let tokio_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
        .expect("building the tokio runtime");

    // The N = 1 fleet serves criterion first, then the summary.
    let mut single = tokio_runtime.block_on(Fleet::start(1));
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    criterion.bench_function("upgrade/1_actor_under_load", |bencher| {
        bencher.iter_custom(|iterations| tokio_runtime.block_on(single.timed_upgrades(iterations)))
    });
    criterion.final_summary();
    if has("--list") {
        tokio_runtime.block_on(single.shutdown());
        return;
    }

    let smoke = !has("--bench");
    let sampling = if smoke {
        Sampling::SMOKE
    } else {
        Sampling::MEASURE
    };
    let mut single = Some(single);
    let mut summaries = Vec::new();
    for (actor_count, rounds) in sampling.fleets {
        let summary = tokio_runtime.block_on(async {
            let mut fleet = match single.take() {
                Some(fleet) if actor_count == 1 => fleet,
                _ => Fleet::start(actor_count).await,
            };
            fleet.round().await; // warm-up
            let mut measured = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                measured.push(fleet.round().await);
            }
            let mut unpaced = Vec::with_capacity(sampling.unpaced_rounds);
            for _ in 0..sampling.unpaced_rounds {
                unpaced.push(fleet.unpaced_round().await);
            }
            let summary = FleetSummary::new(&fleet, &measured, &unpaced);
            fleet.shutdown().await;
            summary
        });
        summaries.push(summary);
    }

    println!();
    println!(
        "summary: release upgrade counter 1.0.0 -> 1.1.0 (advanced) under a client's casts, on a {WORKER_THREADS}-worker tokio runtime{}",
        if smoke {
            " (smoke run, not a measurement: pass --bench)"
        } else {
            ""
        }
    );
    for summary in &summaries {
        summary.print();
    }
    print_targets(&summaries, smoke);
}
