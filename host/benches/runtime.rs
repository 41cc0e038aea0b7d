//! Benchmarks of the actor runtime with a real plugin actor (the release build of
//! `counter-1-0-0`), against a bare tokio actor (a task reading an unbounded
//! `tokio::sync::mpsc` channel: the floor for this actor-per-task design) and a `ractor`
//! actor doing the same work, all in one run so the ratios carry the argument.
//!
//! What it measures (on a tokio multi-thread runtime with 2 worker threads):
//! - `call_round_trip`: one call `{"Add": 1}` and its reply. Graft encodes the request
//!   (MessagePack, [`graft_plugin::codec`]), crosses into the plugin and decodes the `i64`;
//!   the bare actor gets `(i64, oneshot::Sender<i64>)`; ractor uses `ActorRef::call`. A
//!   fourth contender, the bare actor with a `tokio::time::timeout` around the reply, shows
//!   what the timeout that every graft and ractor call carries costs by itself.
//! - `cast_throughput`: [`CASTS`] casts `{"Add": 1}`, then one call that returns once all of
//!   them have been handled (mailboxes are FIFO); criterion reports elements per second.
//!   Graft runs twice: unbounded, and with a `max_mailbox` it never reaches.
//! - Spawning, timed by hand: [`SPAWNED_ACTORS`] counter actors under a `dynamic`
//!   supervisor, one `start_dynamic_child` after the other, and the memory of an idle actor;
//!   then the supervisor is shut down (timed too). The bare and ractor floors spawn the same
//!   number of their actors, each waiting for its actor to have started, as graft's does.
//! - A `summary:` block after the groups: medians (31 samples of calibrated batches, timed
//!   by this program, since criterion hands no medians back), ratios and the targets.
//!
//! Tricky parts:
//! - Where the caller runs decides what a round trip costs. Graft's actors run on its own
//!   actor executor (runner threads that run plugin code, apart from the tokio runtime of
//!   the control plane); the bare and ractor actors run on the benchmark's tokio runtime.
//!   Each measured batch is one future, run by `block_on` on the main thread (not a worker
//!   of anything), as a task on a tokio worker (for graft: a caller on the control plane's
//!   side, crossing to the executor and back; a caller off the pool spins briefly for the
//!   answer rather than being woken), or beside the actor (graft: a task on its actor
//!   executor, as another actor's task would be; the others: a tokio worker task, where
//!   their actors are). Spawns are measured from `block_on` and from a tokio task (the
//!   supervisor lives on the tokio runtime). Casts are sent from the `block_on` thread only,
//!   so sender and actor run in parallel on two threads.
//! - Memory per actor comes from a counting `#[global_allocator]` that wraps `System`. It
//!   counts only while switched on, around the spawns: the change of live bytes between two
//!   points needs only the allocations and frees in between, and leaving it off keeps a
//!   contended atomic out of the timed message paths. Because frees inside a window count
//!   too, each round first waits for the heap to be quiet: a stopped supervisor drops its
//!   child list, and with it its actors' last handles, only after its exit is reported,
//!   and that teardown would otherwise be subtracted from the next round's actors. The
//!   counter sees requested sizes (malloc's per-chunk overhead comes on top, so live
//!   allocations per actor are printed too) and only the host's heap: the plugin is a
//!   `cdylib` with its own Rust std, whose global allocator is `System` itself, so an
//!   actor's state inside the plugin is not counted. The resident set size growth
//!   (`/proc/self/statm`) is printed as a second figure that includes it; it means
//!   something on the first round only, as later rounds reuse the pages that earlier ones
//!   freed.
//! - A graft cast carries a fresh `Vec<u8>` ([`ActorRef::cast`] takes ownership), so each
//!   one encodes its message, as a caller would; the bare and ractor actors get a plain
//!   `i64` in an enum, which is the point of comparing against them.
//! - Run without `--bench` (as `cargo test --benches` does), criterion runs each case once
//!   and the summary takes one tiny sample and spawns few actors: a smoke test, not a
//!   measurement. To measure one figure again quickly, skip criterion's groups with a
//!   filter that matches none and name the summary's parts:
//!   `GRAFT_BENCH_PARTS=calls cargo bench -p graft --bench runtime -- none` (`calls`,
//!   `casts`, `spawns`, `metrics`, comma-separated; all when unset).
//! - The cost of metrics (`metrics`): [`graft::metrics`] is process-wide, so everything
//!   else runs with it off; then graft's call (caller in block_on and in a tokio worker
//!   task) and cast throughput are measured in rounds, each off and on (off first in even
//!   rounds, on first in odd ones; its hidden `disable` turns it off), and the ratio reported is the median
//!   of the rounds' on/off ratios: adjacent measurements, so that the noise of a shared
//!   machine falls on both sides. The target: at most 5% lost.

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use graft::build::CargoBuild;
use graft::plugin::{Expectations, Loader};
use graft::runtime::{ActorOptions, ActorRef, BehaviourFactory, PluginFactory, Runtime, executor};
use graft::supervisor::{ChildSpec, Strategy, SupervisorSpec, start_supervisor};
use graft_plugin::{StopReason, codec};
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
use tokio::task::JoinHandle;

/// The plugin every runtime benchmark uses.
const PACKAGE: &str = "counter-1-0-0";

/// Casts per `cast_throughput` iteration.
const CASTS: u64 = 100_000;

/// The bounded counter's `max_mailbox`: far above a batch of [`CASTS`], so nothing is
/// refused and only the counting is measured.
const BOUNDED_MAILBOX: usize = 1_000_000;

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
#[derive(Clone)]
struct BareCounter {
    sender: mpsc::UnboundedSender<BareMessage>,
}

impl BareCounter {
    /// Spawns the task and waits until it runs (as graft's spawn waits for `init`). The
    /// task ends when every sender is gone.
    async fn start() -> (BareCounter, JoinHandle<()>) {
        let (sender, mut receiver) = mpsc::unbounded_channel::<BareMessage>();
        let (started, has_started) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = started.send(());
            let mut count = 0_i64;
            while let Some((amount, reply)) = receiver.recv().await {
                count += amount;
                if let Some(reply) = reply {
                    let _ = reply.send(count);
                }
            }
        });
        has_started.await.expect("the bare actor starts");
        (BareCounter { sender }, task)
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

async fn ractor_start() -> (ractor::ActorRef<RactorMessage>, JoinHandle<()>) {
    Actor::spawn(None, RactorCounter, 0)
        .await
        .unwrap_or_else(|error| panic!("spawning a ractor counter: {error}"))
}

// ---------------------------------------------------------------------------------------
// What is compared, and from where.

/// Who is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    /// The plugin actor on graft's runtime.
    Graft,
    /// The bare tokio actor.
    BareTokio,
    /// The bare tokio actor, with a timeout on each call's reply.
    BareTokioWithTimeout,
    /// The ractor actor.
    Ractor,
    /// The plugin actor on graft's runtime, with a bounded mailbox (`max_mailbox`, never
    /// reached here): the cost of counting against the bound.
    GraftBounded,
}

impl Contender {
    const CALLING: [Contender; 4] = [
        Contender::Graft,
        Contender::BareTokio,
        Contender::BareTokioWithTimeout,
        Contender::Ractor,
    ];
    const CASTING: [Contender; 4] = [
        Contender::Graft,
        Contender::BareTokio,
        Contender::Ractor,
        Contender::GraftBounded,
    ];
    const SPAWNING: [Contender; 3] = [Contender::Graft, Contender::BareTokio, Contender::Ractor];

    fn name(self) -> &'static str {
        match self {
            Contender::Graft => "graft",
            Contender::BareTokio => "bare_tokio",
            Contender::BareTokioWithTimeout => "bare_tokio_with_timeout",
            Contender::Ractor => "ractor",
            Contender::GraftBounded => "graft_bounded_mailbox",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Contender::Graft => "graft",
            Contender::BareTokio => "bare tokio",
            Contender::BareTokioWithTimeout => "bare tokio + timeout",
            Contender::Ractor => "ractor",
            Contender::GraftBounded => "graft, bounded mailbox",
        }
    }
}

/// Where the caller of a measured batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// In `block_on` on the main thread, which is not one of the workers.
    BlockOn,
    /// In a task on a worker thread of the tokio runtime (for graft, whose actors run on
    /// their own executor, that is a call from the control plane's side).
    Worker,
    /// Beside the actor: graft's caller is a task on graft's actor executor (where other
    /// actors' code runs); the others' callers are tokio worker tasks, as for `Worker`.
    Beside,
}

impl Placement {
    const ALL: [Placement; 2] = [Placement::BlockOn, Placement::Worker];
    const CALLS: [Placement; 3] = [Placement::BlockOn, Placement::Worker, Placement::Beside];

    fn name(self) -> &'static str {
        match self {
            Placement::BlockOn => "from_block_on",
            Placement::Worker => "from_worker",
            Placement::Beside => "beside_the_actor",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Placement::BlockOn => "caller in block_on",
            Placement::Worker => "caller in a tokio worker task",
            Placement::Beside => {
                "caller beside the actor: graft on its actor executor, others on a tokio worker"
            }
        }
    }
}

/// What one spawn round measured.
#[derive(Debug, Clone, Copy)]
struct SpawnRound {
    /// Starting every actor, one after the other.
    spawning: Duration,
    /// Stopping them all and waiting until they are gone.
    stopping: Duration,
    /// The host heap's growth over the spawning.
    heap: HeapGrowth,
    /// The resident set's growth over the spawning.
    resident: i64,
}

/// What [`spawn_many`] left running, and what it measured.
struct Spawned<T> {
    handles: Vec<T>,
    spawning: Duration,
    heap: HeapGrowth,
    resident: i64,
}

/// Waits until the host heap stops changing: the teardown of an earlier round (a stopped
/// supervisor drops its child list and the actors' last handles after its exit has been
/// reported; finished tasks are freed after that) must not free memory inside the next
/// round's window, where it would be subtracted from that round's actors.
async fn settle() {
    const QUIET_BYTES: isize = 64 * 1024;
    for _ in 0..100 {
        let window = HeapWindow::open();
        tokio::time::sleep(Duration::from_millis(20)).await;
        if window.close().bytes.abs() < QUIET_BYTES {
            return;
        }
    }
}

/// Runs `start_one` `count` times, one after the other, counting the host heap and the
/// resident set around the whole. The handles are kept in a `Vec` grown as it goes (graft's
/// supervisor keeps its children the same way), and counted.
async fn spawn_many<T, F: Future<Output = T>>(
    count: usize,
    mut start_one: impl FnMut() -> F,
) -> Spawned<T> {
    settle().await;
    let resident_before = resident_bytes();
    let window = HeapWindow::open();
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..count {
        handles.push(start_one().await);
    }
    let spawning = start.elapsed();
    let heap = window.close();
    Spawned {
        handles,
        spawning,
        heap,
        resident: resident_bytes() as i64 - resident_before as i64,
    }
}

// ---------------------------------------------------------------------------------------
// Fixture.

/// Everything the benchmarks share.
struct Fixture {
    executor: tokio::runtime::Runtime,
    actors: Runtime,
    factory: Arc<dyn BehaviourFactory>,
    start_arguments: Vec<u8>,
    graft_counter: ActorRef,
    /// The same plugin actor with a `max_mailbox` it never reaches.
    graft_bounded_counter: ActorRef,
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
        let (graft_counter, graft_bounded_counter, bare_counter, ractor_counter) = executor
            .block_on(async {
                let graft_counter = actors
                    .spawn(ActorOptions::new(
                        Arc::clone(&factory),
                        start_arguments.clone(),
                    ))
                    .await
                    .unwrap_or_else(|error| panic!("spawning the counter actor: {error}"));
                let graft_bounded_counter = actors
                    .spawn(
                        ActorOptions::new(Arc::clone(&factory), start_arguments.clone())
                            .max_mailbox(BOUNDED_MAILBOX),
                    )
                    .await
                    .unwrap_or_else(|error| panic!("spawning the bounded counter actor: {error}"));
                let (bare_counter, _) = BareCounter::start().await;
                let (ractor_counter, _) = ractor_start().await;
                (
                    graft_counter,
                    graft_bounded_counter,
                    bare_counter,
                    ractor_counter,
                )
            });
        Fixture {
            executor,
            actors,
            factory,
            start_arguments,
            graft_counter,
            graft_bounded_counter,
            bare_counter,
            ractor_counter,
            _loader: loader,
        }
    }

    /// Graft's counter for `contender`: bounded or not.
    fn graft_counter_of(&self, contender: Contender) -> &ActorRef {
        match contender {
            Contender::GraftBounded => &self.graft_bounded_counter,
            _ => &self.graft_counter,
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

    /// Runs one measured batch with its caller where `placement` says.
    fn run<T: Send + 'static>(
        &self,
        placement: Placement,
        batch: impl Future<Output = T> + Send + 'static,
    ) -> T {
        match placement {
            Placement::BlockOn => self.executor.block_on(batch),
            Placement::Worker | Placement::Beside => self
                .executor
                .block_on(self.executor.spawn(batch))
                .expect("the measured batch runs to completion"),
        }
    }

    /// The time `iterations` calls `{"Add": 1}` take, one after the other.
    fn time_calls(&self, contender: Contender, placement: Placement, iterations: u64) -> Duration {
        match contender {
            Contender::Graft | Contender::GraftBounded => {
                let counter = self.graft_counter_of(contender).clone();
                let batch = async move {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        black_box(graft_call(&counter, black_box(Request::Add(1))).await);
                    }
                    start.elapsed()
                };
                match placement {
                    Placement::Beside => self.executor.block_on(executor::spawn(batch)),
                    _ => self.run(placement, batch),
                }
            }
            Contender::BareTokio => {
                let counter = self.bare_counter.clone();
                self.run(placement, async move {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        black_box(counter.call(black_box(1)).await);
                    }
                    start.elapsed()
                })
            }
            Contender::BareTokioWithTimeout => {
                let counter = self.bare_counter.clone();
                self.run(placement, async move {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        black_box(counter.call_with_timeout(black_box(1)).await);
                    }
                    start.elapsed()
                })
            }
            Contender::Ractor => {
                let counter = self.ractor_counter.clone();
                self.run(placement, async move {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        black_box(ractor_call(&counter, black_box(1)).await);
                    }
                    start.elapsed()
                })
            }
        }
    }

    /// The time `batches` × ([`CASTS`] casts `{"Add": 1}`, then a call that waits for them)
    /// take, sent from the `block_on` thread.
    fn time_casts(&self, contender: Contender, batches: u64) -> Duration {
        self.executor.block_on(async {
            let start = Instant::now();
            for _ in 0..batches {
                match contender {
                    Contender::Graft | Contender::GraftBounded => {
                        let counter = self.graft_counter_of(contender);
                        for _ in 0..CASTS {
                            graft_cast(counter, black_box(Command::Add(1)));
                        }
                        black_box(graft_call(counter, Request::Get).await);
                    }
                    Contender::BareTokio | Contender::BareTokioWithTimeout => {
                        for _ in 0..CASTS {
                            self.bare_counter.cast(black_box(1));
                        }
                        black_box(self.bare_counter.call(0).await);
                    }
                    Contender::Ractor => {
                        for _ in 0..CASTS {
                            ractor_cast(&self.ractor_counter, black_box(1));
                        }
                        black_box(ractor_call(&self.ractor_counter, 0).await);
                    }
                }
            }
            start.elapsed()
        })
    }

    /// One spawn round: `count` actors started one after the other (graft's under a fresh
    /// dynamic supervisor), then all of them stopped.
    fn spawn_round(&self, contender: Contender, placement: Placement, count: usize) -> SpawnRound {
        match contender {
            Contender::Graft | Contender::GraftBounded => {
                let actors = self.actors.clone();
                let template = ChildSpec::worker(
                    "counter",
                    Arc::clone(&self.factory),
                    self.start_arguments.clone(),
                );
                let arguments = self.start_arguments.clone();
                self.run(placement, async move {
                    let supervisor = start_supervisor(
                        &actors,
                        SupervisorSpec::new(Strategy::Dynamic, vec![template]),
                    )
                    .await
                    .unwrap_or_else(|error| panic!("starting the dynamic supervisor: {error}"));
                    let spawned = spawn_many(count, || {
                        let child = supervisor.start_dynamic_child(arguments.clone(), None);
                        async move {
                            // The supervisor keeps the child; the benchmark keeps nothing.
                            drop(
                                child
                                    .await
                                    .unwrap_or_else(|error| panic!("starting a counter: {error}")),
                            );
                        }
                    })
                    .await;
                    let counts = supervisor
                        .count_children()
                        .await
                        .unwrap_or_else(|error| panic!("counting children: {error}"));
                    assert_eq!(counts.active, count, "every child is running");
                    let start = Instant::now();
                    assert_eq!(supervisor.shutdown().await, StopReason::Shutdown(None));
                    SpawnRound {
                        spawning: spawned.spawning,
                        stopping: start.elapsed(),
                        heap: spawned.heap,
                        resident: spawned.resident,
                    }
                })
            }
            Contender::BareTokio | Contender::BareTokioWithTimeout => {
                self.run(placement, async move {
                    let spawned = spawn_many(count, BareCounter::start).await;
                    let start = Instant::now();
                    let (senders, tasks): (Vec<BareCounter>, Vec<JoinHandle<()>>) =
                        spawned.handles.into_iter().unzip();
                    drop(senders);
                    for task in tasks {
                        task.await.expect("a bare actor ends cleanly");
                    }
                    SpawnRound {
                        spawning: spawned.spawning,
                        stopping: start.elapsed(),
                        heap: spawned.heap,
                        resident: spawned.resident,
                    }
                })
            }
            Contender::Ractor => self.run(placement, async move {
                let spawned = spawn_many(count, ractor_start).await;
                let start = Instant::now();
                for (counter, _) in &spawned.handles {
                    counter.stop(None);
                }
                for (_, task) in spawned.handles {
                    task.await.expect("a ractor actor ends cleanly");
                }
                SpawnRound {
                    spawning: spawned.spawning,
                    stopping: start.elapsed(),
                    heap: spawned.heap,
                    resident: spawned.resident,
                }
            }),
        }
    }

    fn stop(self) {
        self.executor.block_on(async {
            self.graft_counter
                .stop(StopReason::Shutdown(None), Some(CALL_TIMEOUT))
                .await;
            self.ractor_counter.stop(None);
        });
    }
}

// ---------------------------------------------------------------------------------------
// Criterion groups.

fn bench_call_round_trip(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group("call_round_trip");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(50);
    group.throughput(Throughput::Elements(1));
    for placement in Placement::CALLS {
        for contender in Contender::CALLING {
            group.bench_function(
                BenchmarkId::new(contender.name(), placement.name()),
                |bencher| {
                    bencher.iter_custom(|iterations| {
                        fixture.time_calls(contender, placement, iterations)
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_cast_throughput(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group("cast_throughput");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(CASTS));
    for contender in Contender::CASTING {
        group.bench_function(contender.name(), |bencher| {
            bencher.iter_custom(|batches| fixture.time_casts(contender, batches))
        });
    }
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
    /// Spawn rounds per contender and placement; the median is reported.
    spawn_rounds: usize,
}

impl Sampling {
    const MEASURE: Sampling = Sampling {
        samples: 31,
        batch_target: Duration::from_millis(5),
        spawned_actors: SPAWNED_ACTORS,
        spawn_rounds: 3,
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

/// Median time of one call, in nanoseconds, over samples of calibrated batches.
fn median_call_nanoseconds(
    fixture: &Fixture,
    sampling: Sampling,
    contender: Contender,
    placement: Placement,
) -> f64 {
    let measure = |iterations| fixture.time_calls(contender, placement, iterations);
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

/// Median casts per second, over samples of one batch of [`CASTS`] each.
fn median_casts_per_second(fixture: &Fixture, sampling: Sampling, contender: Contender) -> f64 {
    fixture.time_casts(contender, 1);
    let seconds = median(
        (0..sampling.samples)
            .map(|_| fixture.time_casts(contender, 1).as_secs_f64())
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

/// The medians of one contender's spawn rounds from one placement.
struct SpawnMedians {
    spawning_seconds: f64,
    stopping_seconds: f64,
    heap_bytes_per_actor: f64,
    allocations_per_actor: f64,
}

impl SpawnMedians {
    fn of(rounds: &[SpawnRound], actors: usize) -> SpawnMedians {
        let actors = actors as f64;
        let median_of = |value: fn(&SpawnRound) -> f64| median(rounds.iter().map(value).collect());
        SpawnMedians {
            spawning_seconds: median_of(|round| round.spawning.as_secs_f64()),
            stopping_seconds: median_of(|round| round.stopping.as_secs_f64()),
            heap_bytes_per_actor: median_of(|round| round.heap.bytes as f64) / actors,
            allocations_per_actor: median_of(|round| round.heap.allocations as f64) / actors,
        }
    }
}

/// Which parts of the summary to measure: `GRAFT_BENCH_PARTS`, a comma-separated list of
/// `calls`, `casts` and `spawns` (all three when unset), so one figure can be measured
/// again quickly.
#[derive(Debug, Clone, Copy)]
struct Parts {
    calls: bool,
    casts: bool,
    spawns: bool,
    metrics: bool,
}

impl Parts {
    fn from_environment() -> Parts {
        match std::env::var("GRAFT_BENCH_PARTS") {
            Ok(list) => {
                let has = |part: &str| list.split(',').any(|listed| listed.trim() == part);
                Parts {
                    calls: has("calls"),
                    casts: has("casts"),
                    spawns: has("spawns"),
                    metrics: has("metrics"),
                }
            }
            Err(_) => Parts {
                calls: true,
                casts: true,
                spawns: true,
                metrics: true,
            },
        }
    }
}

fn print_summary(fixture: &Fixture, sampling: Sampling, parts: Parts) {
    let calls: Vec<(Placement, Vec<f64>)> = if parts.calls {
        Placement::CALLS
            .iter()
            .map(|&placement| {
                let medians = Contender::CALLING
                    .iter()
                    .map(|&contender| {
                        median_call_nanoseconds(fixture, sampling, contender, placement)
                    })
                    .collect();
                (placement, medians)
            })
            .collect()
    } else {
        Vec::new()
    };
    let casts: Vec<f64> = if parts.casts {
        Contender::CASTING
            .iter()
            .map(|&contender| median_casts_per_second(fixture, sampling, contender))
            .collect()
    } else {
        Vec::new()
    };

    // Graft from `block_on` first: its first round is the only one whose resident set
    // growth is not hidden by pages freed by an earlier round.
    let actors = sampling.spawned_actors;
    let mut first_resident = None;
    let mut spawns = Vec::new();
    if parts.spawns {
        for contender in Contender::SPAWNING {
            for placement in Placement::ALL {
                let rounds: Vec<SpawnRound> = (0..sampling.spawn_rounds)
                    .map(|_| fixture.spawn_round(contender, placement, actors))
                    .collect();
                first_resident.get_or_insert(rounds[0].resident);
                spawns.push((contender, placement, SpawnMedians::of(&rounds, actors)));
            }
        }
    }

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
    for (placement, medians) in &calls {
        let graft = medians[0];
        let others: Vec<String> = Contender::CALLING[1..]
            .iter()
            .zip(&medians[1..])
            .map(|(contender, &median)| {
                format!(
                    "{} {} ({:.2}x)",
                    contender.label(),
                    human_time(median),
                    graft / median
                )
            })
            .collect();
        println!(
            "summary: call ({}): graft {}, {} [(x) = graft's time / theirs]",
            placement.label(),
            human_time(graft),
            others.join(", ")
        );
    }
    if parts.casts {
        println!(
            "summary: casts (sender in block_on): graft {}, bare tokio {} ({:.2}x), ractor {} ({:.2}x) [(x) = graft's rate / theirs]",
            human_rate(casts[0]),
            human_rate(casts[1]),
            casts[0] / casts[1],
            human_rate(casts[2]),
            casts[0] / casts[2],
        );
        println!(
            "summary: casts to a bounded mailbox (max_mailbox {BOUNDED_MAILBOX}, never reached): {} ({:.2}x unbounded) [(x) = bounded rate / unbounded]",
            human_rate(casts[3]),
            casts[3] / casts[0],
        );
    }
    for (contender, placement, medians) in &spawns {
        println!(
            "summary: spawn {}k {} ({}): {:.3} s ({:.2} µs/actor), stop all {:.3} s; {}/actor host heap in {:.1} allocations",
            actors / 1_000,
            contender.label(),
            placement.label(),
            medians.spawning_seconds,
            medians.spawning_seconds * 1e6 / actors as f64,
            medians.stopping_seconds,
            human_bytes(medians.heap_bytes_per_actor),
            medians.allocations_per_actor,
        );
    }
    if let Some((_, _, graft_spawn)) = spawns.first() {
        println!(
            "summary: graft idle actor: {}/actor host heap (requested sizes, medians of {} rounds; malloc's per-chunk overhead is not in it, and neither is the actor's state: the plugin allocates it with its own System allocator, which the host's counter does not see)",
            human_bytes(graft_spawn.heap_bytes_per_actor),
            sampling.spawn_rounds,
        );
        println!(
            "summary: graft idle actor: {}/actor resident set growth on the first round (includes the plugin's state and malloc's overhead)",
            human_bytes(first_resident.unwrap_or(0) as f64 / actors as f64),
        );
    }

    if parts.calls {
        // The targets are for a caller in a tokio worker task (the control plane's side);
        // the other placements are shown beside them.
        let block_on_calls = &calls[0].1;
        let worker_calls = &calls[1].1;
        let beside_calls = &calls[2].1;
        let ratio = |medians: &[f64]| medians[0] / medians[1];
        println!(
            "summary: target call (caller in a tokio worker task) <= 1.5x bare tokio: {:.2}x, {} (caller in block_on: {:.2}x; beside the actor: {:.2}x)",
            ratio(worker_calls),
            verdict(ratio(worker_calls) <= 1.5),
            ratio(block_on_calls),
            ratio(beside_calls),
        );
        println!(
            "summary: target call (caller in a tokio worker task) ahead of ractor: {} vs {}, {} (caller in block_on: {} vs {}; beside the actor: {} vs {})",
            human_time(worker_calls[0]),
            human_time(worker_calls[3]),
            verdict(worker_calls[0] < worker_calls[3]),
            human_time(block_on_calls[0]),
            human_time(block_on_calls[3]),
            human_time(beside_calls[0]),
            human_time(beside_calls[3]),
        );
    }
    if parts.casts {
        let cast_ratio = casts[0] / casts[1];
        println!(
            "summary: target cast throughput >= 0.5x bare tokio: {:.2}x, {}",
            cast_ratio,
            verdict(cast_ratio >= 0.5)
        );
        println!(
            "summary: target casts ahead of ractor: {} vs {}, {}",
            human_rate(casts[0]),
            human_rate(casts[2]),
            verdict(casts[0] > casts[2])
        );
    }
    if parts.metrics {
        print_metrics_overhead(fixture, sampling);
    }
    if parts.spawns {
        let graft_spawn = &spawns[0].2;
        let graft_spawn_from_worker = &spawns[1].2;
        let for_100k = |medians: &SpawnMedians| {
            medians.spawning_seconds * SPAWNED_ACTORS as f64 / actors as f64
        };
        println!(
            "summary: target idle actor <= 1 KiB host heap beyond its state: {}, {}",
            human_bytes(graft_spawn.heap_bytes_per_actor),
            verdict(graft_spawn.heap_bytes_per_actor <= 1024.0)
        );
        let slowest = for_100k(graft_spawn).max(for_100k(graft_spawn_from_worker));
        println!(
            "summary: target 100k spawns <= 0.5 s (caller in block_on and in a tokio worker task): {:.3} s and {:.3} s{}, {}",
            for_100k(graft_spawn),
            for_100k(graft_spawn_from_worker),
            if actors == SPAWNED_ACTORS {
                String::new()
            } else {
                format!(" (scaled from {actors})")
            },
            verdict(slowest <= 0.5),
        );
    }
}

/// Rounds of paired measurements (off and on) for the metrics overhead: enough that the
/// median ratio stands above a shared machine's drift.
const METRICS_ROUNDS: usize = 11;

/// Graft's messaging figures in one measurement: medians of a call round trip (ns) and
/// casts per second.
struct Messaging {
    block_on_call: f64,
    worker_call: f64,
    casts: f64,
}

/// One figure of a [`Messaging`].
type Figure = fn(&Messaging) -> f64;

/// Graft's call and cast figures with metrics off, then on, in rounds (see the module
/// documentation); prints the medians, the median ratios and the target. Leaves metrics
/// off.
fn print_metrics_overhead(fixture: &Fixture, sampling: Sampling) {
    let measure = || Messaging {
        block_on_call: median_call_nanoseconds(
            fixture,
            sampling,
            Contender::Graft,
            Placement::BlockOn,
        ),
        worker_call: median_call_nanoseconds(
            fixture,
            sampling,
            Contender::Graft,
            Placement::Worker,
        ),
        casts: median_casts_per_second(fixture, sampling, Contender::Graft),
    };
    let rounds = if sampling.samples == 1 {
        1
    } else {
        METRICS_ROUNDS
    };
    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 0..rounds {
        // Off first in even rounds, on first in odd ones: a drift of the machine's speed
        // during a round (another tenant, the clock) then favours neither side.
        let measure_with = |enabled: bool| {
            if enabled {
                graft::metrics::enable();
            } else {
                graft::metrics::disable();
            }
            measure()
        };
        if round % 2 == 0 {
            off.push(measure_with(false));
            on.push(measure_with(true));
        } else {
            on.push(measure_with(true));
            off.push(measure_with(false));
        }
    }
    graft::metrics::disable();
    let ratio_of = |figure: Figure| {
        median(
            on.iter()
                .zip(&off)
                .map(|(on, off)| figure(on) / figure(off))
                .collect(),
        )
    };
    let median_of =
        |measured: &[Messaging], figure: Figure| median(measured.iter().map(figure).collect());
    let block_on: Figure = |measured| measured.block_on_call;
    let worker: Figure = |measured| measured.worker_call;
    let casts: Figure = |measured| measured.casts;
    let calls_on = [median_of(&on, block_on), median_of(&on, worker)];
    let calls_off = [median_of(&off, block_on), median_of(&off, worker)];
    let (casts_on, casts_off) = (median_of(&on, casts), median_of(&off, casts));
    let call_ratios = [ratio_of(block_on), ratio_of(worker)];
    let cast_ratio = ratio_of(casts);
    // Lost: the extra time of a call, the rate a cast stream gives up.
    let call_losses = [call_ratios[0] - 1.0, call_ratios[1] - 1.0];
    let cast_loss = 1.0 - cast_ratio;
    println!(
        "summary: metrics on vs off ({rounds} rounds, medians): call (caller in block_on) {} vs {} ({:.3}x), call (caller in a tokio worker task) {} vs {} ({:.3}x), casts {} vs {} ({:.3}x) [(x) = median of the rounds' on / off]",
        human_time(calls_on[0]),
        human_time(calls_off[0]),
        call_ratios[0],
        human_time(calls_on[1]),
        human_time(calls_off[1]),
        call_ratios[1],
        human_rate(casts_on),
        human_rate(casts_off),
        cast_ratio,
    );
    let worst = call_losses.iter().copied().fold(cast_loss, f64::max);
    println!(
        "summary: target metrics overhead <= 5% (calls and casts): calls {:+.1}% and {:+.1}%, casts {:+.1}%, {}",
        call_losses[0] * 100.0,
        call_losses[1] * 100.0,
        cast_loss * 100.0,
        verdict(worst <= 0.05)
    );
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let has = |flag: &str| arguments.iter().any(|argument| argument == flag);
    let fixture = Fixture::new();
    fixture.check();

    let mut criterion = Criterion::default().without_plots().configure_from_args();
    bench_call_round_trip(&mut criterion, &fixture);
    bench_cast_throughput(&mut criterion, &fixture);
    criterion.final_summary();

    if !has("--list") {
        let sampling = if has("--bench") {
            Sampling::MEASURE
        } else {
            Sampling::SMOKE
        };
        print_summary(&fixture, sampling, Parts::from_environment());
    }
    fixture.stop();
}
