//! Benchmarks of the actor runtime with a real plugin actor (the release build of
//! `counter-1-0-0`), each against a bare tokio actor (a task reading an unbounded
//! `tokio::sync::mpsc` channel: the floor for an actor-per-task design) and a `ractor` actor
//! doing the same work, all in the same run so the ratios carry the argument.
//!
//! Groups and measurements:
//! - `call_round_trip`: one call `{"Add": 1}` and its reply. Graft encodes the request
//!   (MessagePack, [`graft_plugin::codec`]), crosses into the plugin and decodes the `i64`;
//!   the bare actor sends `(i64, oneshot::Sender<i64>)`; ractor uses `ActorRef::call`. A
//!   fourth case, the bare actor with a `tokio::time::timeout` around the reply, shows
//!   what the timeout every graft and ractor call carries costs by itself.
//! - `cast_throughput`: [`CASTS`] casts `{"Add": 1}`, then one call that returns once all
//!   of them have been handled (mailboxes are FIFO); criterion reports elements per second.
//! - Spawning (timed by hand, not by criterion): [`SPAWNED_ACTORS`] counter actors under a
//!   `dynamic` supervisor, one `start_dynamic_child` after another; the time for all of
//!   them, and the memory of an idle actor, then the supervisor is shut down.
//! - A `summary:` block after the groups with medians (31 samples of calibrated batches,
//!   timed by this program: criterion hands no medians back), ratios and the targets.
//!
//! Every caller runs inside the tokio runtime (2 worker threads) through `block_on` of one
//! whole measured batch, so the caller is the `block_on` thread and the actors run on the
//! workers, and no batch pays for entering the runtime more than once.
//!
//! Tricky parts:
//! - Memory per actor comes from a counting `#[global_allocator]` that wraps `System`. It
//!   counts only while switched on, around the spawns: the change of live bytes between two
//!   points needs only the allocations and frees in between, and leaving it off keeps its
//!   contended atomic out of the timed message paths. It sees requested sizes (malloc's
//!   per-chunk overhead comes on top, so live allocations per actor are printed too) and
//!   only the host's heap: the plugin is a `cdylib` with its own Rust std, whose global
//!   allocator is `System` directly, so an actor's state inside the plugin is not counted.
//!   The resident set size delta (`/proc/self/statm`) is printed as a second figure that
//!   includes it; it is meaningful on the first round only, as later rounds reuse the pages
//!   the earlier ones freed.
//! - A cast has to carry a fresh `Vec<u8>` ([`ActorRef::cast`] takes ownership), so each
//!   graft cast encodes its message, as a caller would; the bare and ractor actors send a
//!   plain `i64` in an enum, which is the point of comparing against them.
//! - Run without `--bench` (as `cargo test --benches` does), criterion runs each case once
//!   and the summary takes one tiny sample and spawns few actors: a smoke test, not a
//!   measurement.

use criterion::{Criterion, Throughput};
use graft::build::CargoBuild;
use graft::plugin::{Expectations, Loader};
use graft::runtime::{ActorOptions, ActorRef, BehaviourFactory, PluginFactory, Runtime};
use graft::supervisor::{ChildSpec, Strategy, SupervisorSpec, start_supervisor};
use graft_plugin::codec;
use ractor::{Actor, ActorProcessingErr, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The plugin every runtime benchmark uses.
const PACKAGE: &str = "counter-1-0-0";

/// Casts per `cast_throughput` iteration.
const CASTS: u64 = 100_000;

/// Actors spawned per round of the spawn measurement.
const SPAWNED_ACTORS: usize = 100_000;

/// The timeout graft and ractor calls carry (never reached here).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Worker threads of the tokio runtime.
const WORKER_THREADS: usize = 2;

// ---------------------------------------------------------------------------------------
// Counting allocator.

/// Whether [`CountingAllocator`] is counting.
static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed while counting.
static NET_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Allocations minus frees while counting.
static NET_ALLOCATIONS: AtomicIsize = AtomicIsize::new(0);

/// `System`, plus a count of the host's heap growth while [`COUNTING`] is on.
struct CountingAllocator;

impl CountingAllocator {
    fn record(bytes: isize, allocations: isize) {
        if COUNTING.load(Ordering::Relaxed) {
            NET_BYTES.fetch_add(bytes, Ordering::Relaxed);
            NET_ALLOCATIONS.fetch_add(allocations, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards its arguments unchanged to `System` and returns what
// `System` returned, so `System`'s guarantees are this allocator's; the bookkeeping only
// touches atomics and never allocates or panics.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract (a non-zero size),
        // which is `System.alloc`'s.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            CountingAllocator::record(layout.size() as isize, 1);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`: the caller's contract is `System.alloc_zeroed`'s.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            CountingAllocator::record(layout.size() as isize, 1);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator, that is from `System`, with `layout`,
        // as the caller guarantees.
        unsafe { System.dealloc(pointer, layout) };
        CountingAllocator::record(-(layout.size() as isize), -1);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `pointer` came from `System` with `layout`, and `new_size` is valid for
        // it, as the caller guarantees.
        let new_pointer = unsafe { System.realloc(pointer, layout, new_size) };
        if !new_pointer.is_null() {
            CountingAllocator::record(new_size as isize - layout.size() as isize, 0);
        }
        new_pointer
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The host's heap growth between [`HeapWindow::open`] and [`HeapWindow::close`].
struct HeapWindow;

/// What a [`HeapWindow`] saw.
#[derive(Debug, Clone, Copy)]
struct HeapGrowth {
    bytes: isize,
    allocations: isize,
}

impl HeapWindow {
    fn open() -> HeapWindow {
        NET_BYTES.store(0, Ordering::SeqCst);
        NET_ALLOCATIONS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        HeapWindow
    }

    fn close(self) -> HeapGrowth {
        COUNTING.store(false, Ordering::SeqCst);
        HeapGrowth {
            bytes: NET_BYTES.load(Ordering::SeqCst),
            allocations: NET_ALLOCATIONS.load(Ordering::SeqCst),
        }
    }
}

/// The page size, from the auxiliary vector the kernel gave this process (`AT_PAGESZ`).
fn page_size() -> u64 {
    const AT_PAGESZ: u64 = 6;
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().expect("eight bytes"));
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxiliary| {
            auxiliary
                .chunks_exact(16)
                .map(|entry| (word(&entry[..8]), word(&entry[8..])))
                .find(|(key, _)| *key == AT_PAGESZ)
                .map(|(_, value)| value)
        })
        .unwrap_or(4096)
}

/// The resident set size, from `/proc/self/statm` (its second field, in pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("reading /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm has a resident field");
    pages * page_size()
}

// ---------------------------------------------------------------------------------------
// The three counters.

/// The start arguments of `counter` 1.0.0 (its `Args`).
#[derive(Serialize)]
struct StartArguments {
    start: i64,
}

/// The calls of `counter` 1.0.0 that the benchmark sends, in the shape of its `Request`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
enum Request {
    Add(i64),
    Get,
}

/// The cast of `counter` 1.0.0 that the benchmark sends, in the shape of its `Command`
/// (it encodes as `{"Add": n}`, like `Request::Add`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
enum Command {
    Add(i64),
}

/// A call to the plugin actor: encode, call, decode.
async fn graft_call(counter: &ActorRef, request: Request) -> i64 {
    let bytes = codec::encode(&request).expect("encoding the request");
    let reply = counter
        .call(bytes, CALL_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("calling counter: {error}"));
    codec::decode(&reply).expect("decoding the reply")
}

/// A cast to the plugin actor.
fn graft_cast(counter: &ActorRef, command: Command) {
    counter.cast(codec::encode(&command).expect("encoding the cast"));
}

/// A message to the bare actor: an amount to add, and where to send the new count (none
/// for a cast).
type BareMessage = (i64, Option<oneshot::Sender<i64>>);

/// The floor: a tokio task that owns a count and reads an unbounded channel.
struct BareCounter {
    sender: mpsc::UnboundedSender<BareMessage>,
}

impl BareCounter {
    /// Spawns the task (inside a runtime).
    fn spawn() -> BareCounter {
        let (sender, mut receiver) = mpsc::unbounded_channel::<BareMessage>();
        tokio::spawn(async move {
            let mut count = 0_i64;
            while let Some((amount, reply)) = receiver.recv().await {
                count += amount;
                if let Some(reply) = reply {
                    let _ = reply.send(count);
                }
            }
        });
        BareCounter { sender }
    }

    async fn call(&self, amount: i64) -> i64 {
        let (reply, receiver) = oneshot::channel();
        self.sender
            .send((amount, Some(reply)))
            .expect("the bare actor runs");
        receiver.await.expect("the bare actor replies")
    }

    /// A call that waits at most [`CALL_TIMEOUT`], as graft's and ractor's do.
    async fn call_with_timeout(&self, amount: i64) -> i64 {
        let (reply, receiver) = oneshot::channel();
        self.sender
            .send((amount, Some(reply)))
            .expect("the bare actor runs");
        tokio::time::timeout(CALL_TIMEOUT, receiver)
            .await
            .expect("the bare actor replies in time")
            .expect("the bare actor replies")
    }

    fn cast(&self, amount: i64) {
        self.sender
            .send((amount, None))
            .expect("the bare actor runs");
    }
}

/// The same counter as a `ractor` actor.
struct RactorCounter;

/// Its messages.
enum RactorMessage {
    Call(i64, RpcReplyPort<i64>),
    Cast(i64),
}

impl Actor for RactorCounter {
    type Msg = RactorMessage;
    type State = i64;
    type Arguments = i64;

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<RactorMessage>,
        start: i64,
    ) -> Result<i64, ActorProcessingErr> {
        Ok(start)
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<RactorMessage>,
        message: RactorMessage,
        count: &mut i64,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RactorMessage::Call(amount, reply) => {
                *count += amount;
                let _ = reply.send(*count);
            }
            RactorMessage::Cast(amount) => *count += amount,
        }
        Ok(())
    }
}

async fn ractor_call(counter: &ractor::ActorRef<RactorMessage>, amount: i64) -> i64 {
    match counter
        .call(
            |reply| RactorMessage::Call(amount, reply),
            Some(CALL_TIMEOUT),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(count)) => count,
        Ok(_) => panic!("the ractor counter did not reply in time"),
        Err(error) => panic!("calling the ractor counter: {error}"),
    }
}

fn ractor_cast(counter: &ractor::ActorRef<RactorMessage>, amount: i64) {
    counter
        .cast(RactorMessage::Cast(amount))
        .unwrap_or_else(|error| panic!("casting to the ractor counter: {error}"));
}

// ---------------------------------------------------------------------------------------
// Fixture and timing helpers.

/// Everything the benchmarks share.
struct Fixture {
    executor: tokio::runtime::Runtime,
    actors: Runtime,
    factory: Arc<dyn BehaviourFactory>,
    start_arguments: Vec<u8>,
    graft_counter: ActorRef,
    bare_counter: BareCounter,
    ractor_counter: ractor::ActorRef<RactorMessage>,
    /// Keeps the loader's directory (where the loaded copy lives) for the whole run.
    _loader: Loader,
}

impl Fixture {
    fn new() -> Fixture {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("host/ has a parent");
        let library = CargoBuild::new(workspace)
            .release(true)
            .build(PACKAGE)
            .unwrap_or_else(|error| panic!("building {PACKAGE} in release: {error}"));
        let loader = Loader::new().expect("creating the loader");
        let plugin = loader
            .load(&library, &Expectations::default())
            .unwrap_or_else(|error| panic!("loading {PACKAGE}: {error}"));
        let factory: Arc<dyn BehaviourFactory> = Arc::new(PluginFactory::new(plugin));
        let start_arguments =
            codec::encode(&StartArguments { start: 0 }).expect("encoding the start arguments");
        let executor = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .enable_all()
            .build()
            .expect("building the tokio runtime");
        let actors = Runtime::new();
        let (graft_counter, bare_counter, ractor_counter) = executor.block_on(async {
            let graft_counter = actors
                .spawn(ActorOptions::new(
                    Arc::clone(&factory),
                    start_arguments.clone(),
                ))
                .await
                .unwrap_or_else(|error| panic!("spawning the counter actor: {error}"));
            let (ractor_counter, _) = Actor::spawn(None, RactorCounter, 0)
                .await
                .unwrap_or_else(|error| panic!("spawning the ractor counter: {error}"));
            (graft_counter, BareCounter::spawn(), ractor_counter)
        });
        Fixture {
            executor,
            actors,
            factory,
            start_arguments,
            graft_counter,
            bare_counter,
            ractor_counter,
            _loader: loader,
        }
    }

    /// Checks each counter's arithmetic once, so a mismatch fails loudly instead of being
    /// timed.
    fn check(&self) {
        self.executor.block_on(async {
            let before = graft_call(&self.graft_counter, Request::Get).await;
            assert_eq!(
                graft_call(&self.graft_counter, Request::Add(2)).await,
                before + 2
            );
            graft_cast(&self.graft_counter, Command::Add(3));
            assert_eq!(
                graft_call(&self.graft_counter, Request::Get).await,
                before + 5
            );

            let before = self.bare_counter.call(0).await;
            self.bare_counter.cast(3);
            assert_eq!(self.bare_counter.call_with_timeout(2).await, before + 5);

            let before = ractor_call(&self.ractor_counter, 0).await;
            ractor_cast(&self.ractor_counter, 3);
            assert_eq!(ractor_call(&self.ractor_counter, 2).await, before + 5);
        });
    }

    /// Runs `iterations` calls made by `call` in one `block_on`; the time they took.
    fn time_calls<F: Future<Output = i64>>(
        &self,
        iterations: u64,
        mut call: impl FnMut() -> F,
    ) -> Duration {
        self.executor.block_on(async {
            let start = Instant::now();
            for _ in 0..iterations {
                black_box(call().await);
            }
            start.elapsed()
        })
    }

    fn time_graft_calls(&self, iterations: u64) -> Duration {
        let counter = &self.graft_counter;
        self.time_calls(iterations, move || {
            graft_call(counter, black_box(Request::Add(1)))
        })
    }

    fn time_bare_calls(&self, iterations: u64) -> Duration {
        let counter = &self.bare_counter;
        self.time_calls(iterations, move || counter.call(black_box(1)))
    }

    fn time_bare_calls_with_timeout(&self, iterations: u64) -> Duration {
        let counter = &self.bare_counter;
        self.time_calls(iterations, move || counter.call_with_timeout(black_box(1)))
    }

    fn time_ractor_calls(&self, iterations: u64) -> Duration {
        let counter = &self.ractor_counter;
        self.time_calls(iterations, move || ractor_call(counter, black_box(1)))
    }

    /// `batches` times: [`CASTS`] graft casts and a call that waits for them.
    fn time_graft_casts(&self, batches: u64) -> Duration {
        self.executor.block_on(async {
            let start = Instant::now();
            for _ in 0..batches {
                for _ in 0..CASTS {
                    graft_cast(&self.graft_counter, black_box(Command::Add(1)));
                }
                black_box(graft_call(&self.graft_counter, Request::Get).await);
            }
            start.elapsed()
        })
    }

    fn time_bare_casts(&self, batches: u64) -> Duration {
        self.executor.block_on(async {
            let start = Instant::now();
            for _ in 0..batches {
                for _ in 0..CASTS {
                    self.bare_counter.cast(black_box(1));
                }
                black_box(self.bare_counter.call(0).await);
            }
            start.elapsed()
        })
    }

    fn time_ractor_casts(&self, batches: u64) -> Duration {
        self.executor.block_on(async {
            let start = Instant::now();
            for _ in 0..batches {
                for _ in 0..CASTS {
                    ractor_cast(&self.ractor_counter, black_box(1));
                }
                black_box(ractor_call(&self.ractor_counter, 0).await);
            }
            start.elapsed()
        })
    }

    /// One round of the spawn measurement: a fresh dynamic supervisor, `count` children
    /// started one after another, then a shutdown.
    fn spawn_round(&self, count: usize) -> SpawnRound {
        self.executor.block_on(async {
            let template = ChildSpec::worker(
                "counter",
                Arc::clone(&self.factory),
                self.start_arguments.clone(),
            );
            let supervisor = start_supervisor(
                &self.actors,
                SupervisorSpec::new(Strategy::Dynamic, vec![template]),
            )
            .await
            .unwrap_or_else(|error| panic!("starting the dynamic supervisor: {error}"));
            let resident_before = resident_bytes();
            let window = HeapWindow::open();
            let start = Instant::now();
            for _ in 0..count {
                let child = supervisor
                    .start_dynamic_child(self.start_arguments.clone(), None)
                    .await
                    .unwrap_or_else(|error| panic!("starting a counter: {error}"));
                drop(child);
            }
            let spawning = start.elapsed();
            let heap = window.close();
            let resident = resident_bytes() as i64 - resident_before as i64;
            let counts = supervisor
                .count_children()
                .await
                .unwrap_or_else(|error| panic!("counting children: {error}"));
            assert_eq!(counts.active, count, "every child is running");
            let start = Instant::now();
            supervisor.shutdown().await;
            SpawnRound {
                spawning,
                shutdown: start.elapsed(),
                heap,
                resident,
            }
        })
    }

    fn stop(self) {
        self.executor.block_on(async {
            self.graft_counter
                .stop(graft_plugin::StopReason::Shutdown, Some(CALL_TIMEOUT))
                .await;
            self.ractor_counter.stop(None);
        });
    }
}

/// What one spawn round measured.
#[derive(Debug, Clone, Copy)]
struct SpawnRound {
    spawning: Duration,
    shutdown: Duration,
    heap: HeapGrowth,
    resident: i64,
}

// ---------------------------------------------------------------------------------------
// Criterion groups.

fn bench_call_round_trip(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group("call_round_trip");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    group.bench_function("graft", |bencher| {
        bencher.iter_custom(|iterations| fixture.time_graft_calls(iterations))
    });
    group.bench_function("bare_tokio", |bencher| {
        bencher.iter_custom(|iterations| fixture.time_bare_calls(iterations))
    });
    group.bench_function("bare_tokio_with_timeout", |bencher| {
        bencher.iter_custom(|iterations| fixture.time_bare_calls_with_timeout(iterations))
    });
    group.bench_function("ractor", |bencher| {
        bencher.iter_custom(|iterations| fixture.time_ractor_calls(iterations))
    });
    group.finish();
}

fn bench_cast_throughput(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group("cast_throughput");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(10);
    group.throughput(Throughput::Elements(CASTS));
    group.bench_function("graft", |bencher| {
        bencher.iter_custom(|batches| fixture.time_graft_casts(batches))
    });
    group.bench_function("bare_tokio", |bencher| {
        bencher.iter_custom(|batches| fixture.time_bare_casts(batches))
    });
    group.bench_function("ractor", |bencher| {
        bencher.iter_custom(|batches| fixture.time_ractor_casts(batches))
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------
// Summary.

/// How thoroughly the summary measures.
#[derive(Debug, Clone, Copy)]
struct Sampling {
    /// Samples per case; the median is reported.
    samples: usize,
    /// Each call sample runs enough iterations to take at least this long.
    batch_target: Duration,
    /// Actors per spawn round.
    spawned_actors: usize,
    /// Spawn rounds; the median time is reported.
    spawn_rounds: usize,
}

impl Sampling {
    const MEASURE: Sampling = Sampling {
        samples: 31,
        batch_target: Duration::from_millis(5),
        spawned_actors: SPAWNED_ACTORS,
        spawn_rounds: 5,
    };
    const SMOKE: Sampling = Sampling {
        samples: 1,
        batch_target: Duration::ZERO,
        spawned_actors: 1_000,
        spawn_rounds: 1,
    };
}

/// The median of some numbers.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median time of one iteration, in nanoseconds. `measure(iterations)` runs the case that
/// many times and returns the time it took.
fn median_nanoseconds(sampling: Sampling, mut measure: impl FnMut(u64) -> Duration) -> f64 {
    let mut iterations = 1_u64;
    while measure(iterations) < sampling.batch_target && iterations < 1 << 30 {
        iterations *= 2;
    }
    median(
        (0..sampling.samples)
            .map(|_| measure(iterations).as_nanos() as f64 / iterations as f64)
            .collect(),
    )
}

/// Median casts per second over batches of [`CASTS`].
fn median_casts_per_second(sampling: Sampling, mut measure: impl FnMut(u64) -> Duration) -> f64 {
    measure(1);
    let seconds = median(
        (0..sampling.samples)
            .map(|_| measure(1).as_secs_f64())
            .collect(),
    );
    CASTS as f64 / seconds
}

/// A duration in nanoseconds with a readable unit.
fn human_time(nanoseconds: f64) -> String {
    if nanoseconds >= 1_000_000.0 {
        format!("{:.2} ms", nanoseconds / 1_000_000.0)
    } else if nanoseconds >= 1_000.0 {
        format!("{:.2} µs", nanoseconds / 1_000.0)
    } else {
        format!("{nanoseconds:.0} ns")
    }
}

/// A rate with a readable unit.
fn human_rate(per_second: f64) -> String {
    if per_second >= 1_000_000.0 {
        format!("{:.2} M/s", per_second / 1_000_000.0)
    } else {
        format!("{:.0} k/s", per_second / 1_000.0)
    }
}

/// A byte count with a readable unit.
fn human_bytes(bytes: f64) -> String {
    if bytes.abs() >= 1024.0 {
        format!("{:.2} KiB", bytes / 1024.0)
    } else {
        format!("{bytes:.0} B")
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn print_summary(fixture: &Fixture, sampling: Sampling) {
    let graft_call =
        median_nanoseconds(sampling, |iterations| fixture.time_graft_calls(iterations));
    let bare_call = median_nanoseconds(sampling, |iterations| fixture.time_bare_calls(iterations));
    let bare_call_with_timeout = median_nanoseconds(sampling, |iterations| {
        fixture.time_bare_calls_with_timeout(iterations)
    });
    let ractor_call =
        median_nanoseconds(sampling, |iterations| fixture.time_ractor_calls(iterations));

    let graft_casts =
        median_casts_per_second(sampling, |batches| fixture.time_graft_casts(batches));
    let bare_casts = median_casts_per_second(sampling, |batches| fixture.time_bare_casts(batches));
    let ractor_casts =
        median_casts_per_second(sampling, |batches| fixture.time_ractor_casts(batches));

    let rounds: Vec<SpawnRound> = (0..sampling.spawn_rounds)
        .map(|_| fixture.spawn_round(sampling.spawned_actors))
        .collect();
    let actors = sampling.spawned_actors as f64;
    let spawn_seconds = median(
        rounds
            .iter()
            .map(|round| round.spawning.as_secs_f64())
            .collect(),
    );
    let shutdown_seconds = median(
        rounds
            .iter()
            .map(|round| round.shutdown.as_secs_f64())
            .collect(),
    );
    let heap_per_actor = median(
        rounds
            .iter()
            .map(|round| round.heap.bytes as f64 / actors)
            .collect(),
    );
    let allocations_per_actor = median(
        rounds
            .iter()
            .map(|round| round.heap.allocations as f64 / actors)
            .collect(),
    );
    let first_resident_per_actor = rounds[0].resident as f64 / actors;
    let later_resident: Vec<String> = rounds[1..]
        .iter()
        .map(|round| human_bytes(round.resident as f64 / actors))
        .collect();

    println!();
    println!(
        "summary: medians of {} samples per case on a {WORKER_THREADS}-worker tokio runtime{}",
        sampling.samples,
        if sampling.samples == 1 {
            " (smoke run, not a measurement: pass --bench)"
        } else {
            ""
        }
    );
    println!(
        "summary: call graft {}, bare tokio {} (graft {:.2}x), bare tokio + timeout {} (graft {:.2}x), ractor {} (graft {:.2}x)",
        human_time(graft_call),
        human_time(bare_call),
        graft_call / bare_call,
        human_time(bare_call_with_timeout),
        graft_call / bare_call_with_timeout,
        human_time(ractor_call),
        graft_call / ractor_call,
    );
    println!(
        "summary: casts graft {}, bare tokio {} (graft {:.2}x), ractor {} (graft {:.2}x)",
        human_rate(graft_casts),
        human_rate(bare_casts),
        graft_casts / bare_casts,
        human_rate(ractor_casts),
        graft_casts / ractor_casts,
    );
    println!(
        "summary: spawn {}k: {:.3} s (median of {} rounds; {:.0} ns/actor), shutdown {:.3} s",
        sampling.spawned_actors / 1_000,
        spawn_seconds,
        rounds.len(),
        spawn_seconds * 1e9 / actors,
        shutdown_seconds,
    );
    println!(
        "summary: idle actor: {}/actor host heap in {:.1} allocations (requested sizes, without malloc's per-chunk overhead; the plugin's state is allocated by the plugin's own System allocator and is not in this figure)",
        human_bytes(heap_per_actor),
        allocations_per_actor,
    );
    println!(
        "summary: idle actor: {}/actor RSS growth on the first round (includes the plugin's state and malloc overhead){}",
        human_bytes(first_resident_per_actor),
        if later_resident.is_empty() {
            String::new()
        } else {
            format!(
                "; later rounds reuse freed pages: {}",
                later_resident.join(", ")
            )
        },
    );
    let call_ratio = graft_call / bare_call;
    let cast_ratio = graft_casts / bare_casts;
    println!(
        "summary: target call <= 1.5x bare tokio: {:.2}x, {}",
        call_ratio,
        verdict(call_ratio <= 1.5)
    );
    println!(
        "summary: target cast throughput >= 0.5x bare tokio: {:.2}x, {}",
        cast_ratio,
        verdict(cast_ratio >= 0.5)
    );
    println!(
        "summary: target call ahead of ractor: {} vs {}, {}",
        human_time(graft_call),
        human_time(ractor_call),
        verdict(graft_call < ractor_call)
    );
    println!(
        "summary: target casts ahead of ractor: {} vs {}, {}",
        human_rate(graft_casts),
        human_rate(ractor_casts),
        verdict(graft_casts > ractor_casts)
    );
    println!(
        "summary: target idle actor <= 1 KiB host heap beyond its state: {}, {}",
        human_bytes(heap_per_actor),
        verdict(heap_per_actor <= 1024.0)
    );
    println!(
        "summary: target 100k spawns <= 0.5 s: {:.3} s for {}k, {}",
        spawn_seconds,
        sampling.spawned_actors / 1_000,
        verdict(spawn_seconds * SPAWNED_ACTORS as f64 / actors <= 0.5)
    );
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let has = |flag: &str| arguments.iter().any(|argument| argument == flag);
    let fixture = Fixture::new();
    fixture.check();

    let mut criterion = Criterion::default().configure_from_args();
    bench_call_round_trip(&mut criterion, &fixture);
    bench_cast_throughput(&mut criterion, &fixture);
    criterion.final_summary();

    if !has("--list") {
        let sampling = if has("--bench") {
            Sampling::MEASURE
        } else {
            Sampling::SMOKE
        };
        print_summary(&fixture, sampling);
    }
    fixture.stop();
}
