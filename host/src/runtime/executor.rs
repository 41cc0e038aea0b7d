//! The actor executor: the only threads that run plugin code, and the watchdog that keeps
//! them honest.
//!
//! Actors' tasks (and so every plugin callback, which runs synchronously inside its
//! actor's task) run on a process-wide pool of *runner* threads (`graft-actor-N`). The
//! control plane — the control socket, the release handler, supervisors, signal handling —
//! runs on the caller's tokio runtime, and actor timers run on a small tokio runtime of
//! their own (`graft-timer`); plugin code never runs on either.
//!
//! Scheduling: tasks are [`async_task`] tasks. Each runner has a LIFO deque
//! ([`crossbeam_deque`]): a task woken by the task running on a runner (an actor's reply
//! waking its caller, a call waking the callee) goes on top of that runner's deque and
//! runs next on the same thread, so a call round trip between two tasks of the pool
//! crosses no thread. Tasks woken from outside the pool, woken by a running callback, or
//! yielding, go to the shared injector queue. Idle runners steal from the injector and
//! from each other's deques (the oldest first), and park; a runner is unparked when work
//! arrives that no awake runner is sure to find.
//!
//! Invariants:
//! - Every callback runs inside a `CallbackGuard`, which records on its runner's slot
//!   which actor runs which callback since when, and under which deadline.
//! - The watchdog (`graft-watchdog`, a plain thread) looks at the slots every
//!   [`WATCHDOG_TICK`]. A runner busy in one callback for longer than [`STALL`] (or at
//!   once, when the callback is blocked in a call to another actor) gets a replacement
//!   runner, so the pool's capacity never shrinks behind a slow or stuck callback; the
//!   replacement retires when the slow callback returns. A callback past its deadline has
//!   its actor killed with `callback timeout: <callback> of <plugin> <version> after N ms`:
//!   to everyone else the actor is gone at once (its supervisor restarts it), while the
//!   thread stays inside the plugin, holding the instance and so the library: a library
//!   with a thread inside it is never unmapped. [`stuck_callbacks`] lists such threads.
//!   While metrics are on, each such kill counts as a timeout of the plugin version
//!   ([`crate::metrics`]).
//! - Nothing a stuck runner holds is lost: its deque is stealable, and wakes from inside a
//!   callback go to the injector, never to the deque of a runner that may be stuck.
//! - Pool growth is bounded ([`MAX_RUNNERS`]); past it, a stuck runner is not replaced.
//! - A runner's slot names the actor of its callback by identity (the address of the
//!   actor's shared state), never by process id: ids repeat across `Runtime`s and the
//!   pool serves them all, so an id would let the watchdog kill another runtime's actor
//!   and leave the stuck one running.
//!
//! - Waking threads is what costs (a parked thread, on a virtual machine a halted vCPU,
//!   takes tens of microseconds to wake): one idle runner at a time spins briefly before
//!   parking (a few pure spins, then yielding its core between looks), and no runner is
//!   unparked while one spins; a caller off the pool (a tokio task, `block_on`) spins up
//!   to 30 µs for its answer before awaiting it, yielding its core after the first 3 µs
//!   (on a loaded machine the runner that is to answer may need that very core).
//!
//! What is tricky: a runner cannot be preempted, only abandoned. The parking protocol is
//! Dekker's: a runner registers as idle and then looks for work once more; a scheduler
//! queues work and then looks for idle runners (or a spinning one); a fence on each side
//! guarantees one of them sees the other. Idle runners also wake every 100 ms as
//! a safety net.

use super::{ActorRef, lock};
use async_task::{Runnable, ScheduleInfo, WithInfo};
use crossbeam_deque::{Injector, Steal, Stealer, Worker};
use graft_plugin::StopReason;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a callback may hold a runner before the pool adds a replacement runner.
pub const STALL: Duration = Duration::from_millis(50);

/// How often the watchdog looks at the runners.
pub const WATCHDOG_TICK: Duration = Duration::from_millis(10);

/// The most runner threads the pool grows to, replacements included.
pub const MAX_RUNNERS: usize = 512;

/// How long an idle runner sleeps before it looks for work on its own.
const PARK_TIMEOUT: Duration = Duration::from_millis(100);

/// How many times an idle runner looks for work (yielding its core in between) before it
/// parks.
const SPINS_BEFORE_PARKING: u32 = 128;

/// How many of an idle runner's first looks for work follow a short pure spin
/// ([`wait_briefly_for_work`]) rather than a yield: a few microseconds in all.
const PURE_SPINS: u32 = 16;

/// A runner takes from the injector first every this many tasks, so tasks woken from
/// outside are not starved by a busy deque.
const INJECTOR_FIRST_EVERY: u32 = 61;

/// A callback that outlived its deadline and still holds its thread.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StuckCallback {
    /// The actor it belonged to (already exited).
    pub actor: String,
    /// The callback (`handle_call`, `code_change`, …).
    pub callback: String,
    /// The plugin and version whose code holds the thread (its library stays loaded).
    pub code: String,
    /// How long it has been running, in milliseconds.
    pub running_ms: u64,
}

/// The callbacks a guard can record (in the order of [`Callback::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Callback {
    Init,
    HandleCall,
    HandleCast,
    HandleInfo,
    HandleContinue,
    Terminate,
    CodeChange,
    EncodeState,
    Drop,
    RestoreState,
    Health,
    FormatStatus,
}

impl Callback {
    const ALL: [Callback; 12] = [
        Callback::Init,
        Callback::HandleCall,
        Callback::HandleCast,
        Callback::HandleInfo,
        Callback::HandleContinue,
        Callback::Terminate,
        Callback::CodeChange,
        Callback::EncodeState,
        Callback::Drop,
        Callback::RestoreState,
        Callback::Health,
        Callback::FormatStatus,
    ];

    fn name(self) -> &'static str {
        match self {
            Callback::Init => "init",
            Callback::HandleCall => "handle_call",
            Callback::HandleCast => "handle_cast",
            Callback::HandleInfo => "handle_info",
            Callback::HandleContinue => "handle_continue",
            Callback::Terminate => "terminate",
            Callback::CodeChange => "code_change",
            Callback::EncodeState => "encode_state",
            Callback::Drop => "drop",
            Callback::RestoreState => "restore_state",
            Callback::Health => "health",
            Callback::FormatStatus => "format_status",
        }
    }
}

/// What one runner is doing. Written by its own thread at every callback (atomics only,
/// and the actor's handle only when the actor changes), read by the watchdog.
struct RunnerSlot {
    /// The pool's clock ([`Pool::clock`], in ms) when the current callback began; zero when
    /// idle.
    busy_since: AtomicU64,
    /// Counts callbacks, so the watchdog can tell one long callback from two short ones.
    generation: AtomicU64,
    /// The current callback's deadline in ms (`u64::MAX`: none).
    deadline: AtomicU64,
    /// The current callback, as an index into [`Callback::ALL`].
    callback: AtomicUsize,
    /// Which actor is in `actor`: its [`ActorRef::identity`], unique in the process
    /// (process ids are unique only within one `Runtime`, and the pool serves them all).
    actor_key: AtomicUsize,
    /// The actor of the current (or last) callback; cleared when the runner parks.
    actor: Mutex<Option<ActorRef>>,
    /// The callback is blocked waiting for another actor: replace the runner at once.
    blocking: AtomicBool,
    /// A replacement runner was started for the current callback.
    replaced: AtomicBool,
    /// The current callback's actor was killed for its deadline.
    timed_out: AtomicBool,
    /// Set to make this runner leave the pool after its current task.
    retire: AtomicBool,
    /// Whether this runner has already been asked to retire.
    retiring: AtomicBool,
}

/// Another runner's deque as seen by thieves: its runner's number, its stealer, its slot.
type Thief = (usize, Stealer<Runnable>, Arc<RunnerSlot>);

struct Pool {
    injector: Injector<Runnable>,
    /// Every runner's deque, for stealing, with its slot.
    stealers: RwLock<Vec<Thief>>,
    /// Parked runners.
    idle: Mutex<Vec<(usize, Thread)>>,
    idle_count: AtomicUsize,
    /// Runners looking for work without parking (at most one).
    spinners: AtomicUsize,
    timers: tokio::runtime::Runtime,
    epoch: Instant,
    /// Milliseconds since `epoch`, plus one, as of the watchdog's last tick: a clock that
    /// costs a callback one relaxed load.
    clock: AtomicU64,
    runners: Mutex<Vec<Arc<RunnerSlot>>>,
    /// Runners serving the pool (retiring ones excluded).
    live: AtomicUsize,
    /// Runners the pool keeps when nothing is stuck.
    target: usize,
    next_runner: AtomicUsize,
}

/// What a runner thread keeps for itself.
struct Local {
    number: usize,
    deque: Worker<Runnable>,
    slot: Arc<RunnerSlot>,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

static POOL: OnceLock<Arc<Pool>> = OnceLock::new();

fn pool() -> &'static Arc<Pool> {
    POOL.get_or_init(|| {
        let target = std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(2)
            .max(2);
        let timers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("graft-timer")
            .enable_time()
            .build()
            .expect("the actor timer runtime starts");
        let pool = Arc::new(Pool {
            injector: Injector::new(),
            stealers: RwLock::new(Vec::new()),
            idle: Mutex::new(Vec::new()),
            idle_count: AtomicUsize::new(0),
            spinners: AtomicUsize::new(0),
            timers,
            epoch: Instant::now(),
            clock: AtomicU64::new(1),
            runners: Mutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            target,
            next_runner: AtomicUsize::new(0),
        });
        for _ in 0..target {
            start_runner(&pool);
        }
        let watched = Arc::clone(&pool);
        std::thread::Builder::new()
            .name("graft-watchdog".to_owned())
            .spawn(move || watchdog(&watched))
            .expect("the watchdog thread starts");
        pool
    })
}

impl Pool {
    /// Advances the coarse clock; milliseconds since the epoch, plus one.
    fn tick(&self) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.clock.store(now, Ordering::Relaxed);
        now
    }

    /// Unparks one idle runner, if any (after work was queued).
    fn notify_one(&self) {
        fence(Ordering::SeqCst);
        // A spinning runner finds the work itself (and if it gives up, it looks once more
        // after registering as idle); parked ones stay asleep.
        if self.spinners.load(Ordering::SeqCst) > 0 || self.idle_count.load(Ordering::SeqCst) == 0 {
            return;
        }
        let parked = {
            let mut idle = lock(&self.idle);
            let parked = idle.pop();
            self.idle_count.store(idle.len(), Ordering::SeqCst);
            parked
        };
        if let Some((_, thread)) = parked {
            thread.unpark();
        }
    }

    /// Queues a woken task: on top of this runner's deque when the wake comes from the
    /// task running here (it runs next, on this thread), else on the injector.
    fn schedule(self: &Arc<Pool>, runnable: Runnable, info: ScheduleInfo) {
        let queued_here = LOCAL.with(|local| match &*local.borrow() {
            Some(local)
                if !info.woken_while_running
                    && local.slot.busy_since.load(Ordering::Relaxed) == 0 =>
            {
                local.deque.push(runnable);
                Ok(local.deque.len())
            }
            _ => Err(runnable),
        });
        match queued_here {
            // The task runs next here; others are woken only when more is waiting.
            Ok(waiting) if waiting <= 1 => {}
            Ok(_) => self.notify_one(),
            Err(runnable) => {
                self.injector.push(runnable);
                self.notify_one();
            }
        }
    }

    /// A task from the injector or another runner's deque (moving a batch into `deque`).
    fn find_elsewhere(&self, number: usize, deque: &Worker<Runnable>) -> Option<Runnable> {
        loop {
            match self.injector.steal_batch_and_pop(deque) {
                Steal::Success(runnable) => return Some(runnable),
                Steal::Retry => continue,
                Steal::Empty => break,
            }
        }
        let stealers = self
            .stealers
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        let count = stealers.len();
        if count == 0 {
            return None;
        }
        let start = number % count;
        for index in (0..count).map(|offset| (start + offset) % count) {
            let (owner, stealer, slot) = &stealers[index];
            // The task on top of a busy runner's deque is the one it runs next (a reply
            // waking its caller): taking it would move a round trip across threads. Take
            // from a deque holding more than that, or from a runner stuck in a callback.
            if *owner == number || !stealable(stealer, slot) {
                continue;
            }
            loop {
                match stealer.steal_batch_and_pop(deque) {
                    Steal::Success(runnable) => return Some(runnable),
                    Steal::Retry => continue,
                    Steal::Empty => break,
                }
            }
        }
        None
    }
}

/// Whether other runners may take from this deque: when it holds more than the task its
/// owner runs next, or when its owner is stuck in a callback (replaced).
fn stealable(stealer: &Stealer<Runnable>, slot: &RunnerSlot) -> bool {
    // The deque first: an idle runner looking around must not read the slot (written at
    // every callback of its owner) while there is nothing to take anyway.
    match stealer.len() {
        0 => false,
        1 => slot.replaced.load(Ordering::Relaxed),
        _ => true,
    }
}

fn start_runner(pool: &Arc<Pool>) {
    let slot = Arc::new(RunnerSlot {
        busy_since: AtomicU64::new(0),
        generation: AtomicU64::new(0),
        deadline: AtomicU64::new(u64::MAX),
        callback: AtomicUsize::new(0),
        actor_key: AtomicUsize::new(0),
        actor: Mutex::new(None),
        blocking: AtomicBool::new(false),
        replaced: AtomicBool::new(false),
        timed_out: AtomicBool::new(false),
        retire: AtomicBool::new(false),
        retiring: AtomicBool::new(false),
    });
    lock(&pool.runners).push(Arc::clone(&slot));
    pool.live.fetch_add(1, Ordering::SeqCst);
    let number = pool.next_runner.fetch_add(1, Ordering::Relaxed);
    let served = Arc::clone(pool);
    let spawned = std::thread::Builder::new()
        .name(format!("graft-actor-{number}"))
        .spawn(move || run_runner(&served, number, slot));
    if let Err(error) = spawned {
        pool.live.fetch_sub(1, Ordering::SeqCst);
        tracing::error!("cannot start an actor runner thread: {error}");
    }
}

fn run_runner(pool: &Arc<Pool>, number: usize, slot: Arc<RunnerSlot>) {
    // Actor code uses tokio's time (call timeouts) from these threads.
    let _timers = pool.timers.handle().enter();
    let deque = Worker::new_lifo();
    pool.stealers
        .write()
        .unwrap_or_else(|poison| poison.into_inner())
        .push((number, deque.stealer(), Arc::clone(&slot)));
    LOCAL.with(|local| {
        *local.borrow_mut() = Some(Local {
            number,
            deque,
            slot: Arc::clone(&slot),
        })
    });
    let mut ticks: u32 = 0;
    let mut idle_rounds = 0;
    let mut spinning = false;
    while !slot.retire.load(Ordering::Acquire) {
        ticks = ticks.wrapping_add(1);
        let found = LOCAL.with(|local| {
            let local = local.borrow();
            let local = local.as_ref().expect("a runner's own state");
            if ticks.is_multiple_of(INJECTOR_FIRST_EVERY)
                && let Steal::Success(runnable) = pool.injector.steal()
            {
                return Some(runnable);
            }
            local
                .deque
                .pop()
                .or_else(|| pool.find_elsewhere(local.number, &local.deque))
        });
        match found {
            Some(runnable) => {
                if spinning {
                    spinning = false;
                    pool.spinners.fetch_sub(1, Ordering::AcqRel);
                }
                idle_rounds = 0;
                runnable.run();
            }
            // Out of work: look again a few times, giving the core away in between (a
            // reply is often about to wake a task here), then park. One runner spins at
            // a time: more would take cores from the threads doing the work. The first
            // looks come after a short pure spin instead: a caller off the pool sends its
            // next request within a microsecond or two, and a yield costs a system call.
            None if idle_rounds < SPINS_BEFORE_PARKING
                && (spinning || pool.spinners.fetch_add(1, Ordering::AcqRel) == 0 || {
                    pool.spinners.fetch_sub(1, Ordering::AcqRel);
                    false
                }) =>
            {
                spinning = true;
                idle_rounds += 1;
                if idle_rounds <= PURE_SPINS {
                    wait_briefly_for_work(pool);
                } else {
                    std::thread::yield_now();
                }
            }
            None => {
                if spinning {
                    spinning = false;
                    pool.spinners.fetch_sub(1, Ordering::AcqRel);
                }
                idle_rounds = 0;
                park(pool, number, &slot);
            }
        }
    }
    if spinning {
        pool.spinners.fetch_sub(1, Ordering::AcqRel);
    }
    // Leaving: hand what is queued here to the others.
    let local = LOCAL.with(|local| local.borrow_mut().take());
    pool.stealers
        .write()
        .unwrap_or_else(|poison| poison.into_inner())
        .retain(|(owner, _, _)| *owner != number);
    if let Some(local) = local {
        while let Some(runnable) = local.deque.pop() {
            pool.injector.push(runnable);
        }
        pool.notify_one();
    }
    lock(&pool.runners).retain(|other| !Arc::ptr_eq(other, &slot));
}

/// Spins for a fraction of a microsecond, or until the injector holds work: cheaper than a
/// yield when work is about to come (a caller off the pool sending its next request).
fn wait_briefly_for_work(pool: &Pool) {
    for _ in 0..8 {
        if !pool.injector.is_empty() {
            return;
        }
        std::hint::spin_loop();
    }
}

/// Registers as idle, looks for work once more, then sleeps until unparked.
fn park(pool: &Arc<Pool>, number: usize, slot: &RunnerSlot) {
    // Let go of the last actor's handle, so an idle runner keeps no actor alive.
    if slot.actor_key.swap(0, Ordering::Relaxed) != 0 {
        lock(&slot.actor).take();
    }
    {
        let mut idle = lock(&pool.idle);
        idle.push((number, std::thread::current()));
        pool.idle_count.store(idle.len(), Ordering::SeqCst);
    }
    fence(Ordering::SeqCst);
    let work_waiting = !pool.injector.is_empty()
        || pool
            .stealers
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .iter()
            .any(|(_, stealer, slot)| stealable(stealer, slot));
    if !work_waiting {
        std::thread::park_timeout(PARK_TIMEOUT);
    }
    let mut idle = lock(&pool.idle);
    idle.retain(|(owner, _)| *owner != number);
    pool.idle_count.store(idle.len(), Ordering::SeqCst);
}

fn watchdog(pool: &Arc<Pool>) {
    let stall = STALL.as_millis() as u64;
    loop {
        std::thread::sleep(WATCHDOG_TICK);
        let now = pool.tick();
        let slots: Vec<Arc<RunnerSlot>> = lock(&pool.runners).clone();
        for slot in slots {
            let generation = slot.generation.load(Ordering::Acquire);
            let since = slot.busy_since.load(Ordering::Acquire);
            if since == 0 {
                continue;
            }
            let running = now.saturating_sub(since);
            let stalled = slot.blocking.load(Ordering::Relaxed) || running >= stall;
            if stalled
                && !slot.replaced.swap(true, Ordering::AcqRel)
                && pool.live.load(Ordering::SeqCst) < MAX_RUNNERS
            {
                start_runner(pool);
                // Whatever waits in the stuck runner's deque is stolen by the others.
                pool.notify_one();
            }
            let deadline = slot.deadline.load(Ordering::Relaxed);
            // The clock is as coarse as the tick: never kill before the deadline.
            let tick = WATCHDOG_TICK.as_millis() as u64;
            if running <= deadline.saturating_add(tick) || slot.timed_out.load(Ordering::Acquire) {
                continue;
            }
            let actor = lock(&slot.actor).clone();
            let callback = Callback::ALL[slot.callback.load(Ordering::Relaxed)];
            // The same callback still runs (not one that began since the first look).
            if slot.generation.load(Ordering::Acquire) != generation
                || slot.busy_since.load(Ordering::Acquire) == 0
            {
                continue;
            }
            slot.timed_out.store(true, Ordering::Release);
            if let Some(actor) = actor {
                let reason = format!(
                    "callback timeout: {} of {} after {deadline} ms",
                    callback.name(),
                    actor.code_label(),
                );
                tracing::error!(actor = %actor.label(), "{reason}; its thread is abandoned and its library stays loaded");
                if crate::metrics::is_enabled() {
                    crate::metrics::plugin::for_code_label(&actor.code_label()).count_timeout();
                }
                actor.kill_with(StopReason::Error(reason));
                // A behaviour that can free its thread does (an isolated one's worker
                // keeps the stuck thread instead).
                actor.interrupt();
            }
        }
    }
}

/// Spawns a task on the actor executor (actors' own tasks, and callers that should run
/// beside the actors they call); dropping the returned task cancels it, awaiting it
/// gives its output.
pub fn spawn<F>(future: F) -> async_task::Task<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let pool = Arc::clone(pool());
    let (runnable, task) = async_task::Builder::new().propagate_panic(true).spawn(
        |_| future,
        WithInfo(move |runnable, info| pool.schedule(runnable, info)),
    );
    runnable.schedule();
    task
}

/// How long a caller off the pool waits for an answer by spinning before it awaits it.
pub(crate) const SPIN_FOR_ANSWER: Duration = Duration::from_micros(30);

/// How long such a caller spins without giving its core away: a quick callback on an
/// awake runner answers within this.
const SPIN_WITHOUT_YIELDING: Duration = Duration::from_micros(3);

/// Waits up to `budget` for `receiver`'s value by spinning, when the current thread is
/// not a runner (a tokio worker calling an actor, say): an answer from the pool then
/// needs no cross-thread wake-up of the caller, which costs more than the answer itself.
/// `Some(Some(value))`: answered; `Some(None)`: the sender is gone; `None`: no answer yet
/// (await it). On a runner it returns `None` at once: the callee needs this very thread.
///
/// Past [`SPIN_WITHOUT_YIELDING`] it yields its core between looks: on a busy machine the
/// runner that is to answer may be waiting for this very core, and a pure spin would only
/// delay the answer it waits for.
pub(crate) fn spin_for<T>(
    receiver: &mut tokio::sync::oneshot::Receiver<T>,
    budget: Duration,
) -> Option<Option<T>> {
    use tokio::sync::oneshot::error::TryRecvError;
    if LOCAL.with(|local| local.borrow().is_some()) {
        return None;
    }
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            match receiver.try_recv() {
                Ok(value) => return Some(Some(value)),
                Err(TryRecvError::Closed) => return Some(None),
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        let spun = start.elapsed();
        if spun >= budget {
            return None;
        }
        if spun >= SPIN_WITHOUT_YIELDING {
            std::thread::yield_now();
        }
    }
}

/// Whether other tasks wait for this runner (its deque, or the injector): only then is
/// yielding worth its cost.
pub(crate) fn others_waiting() -> bool {
    let Some(pool) = POOL.get() else {
        return false;
    };
    !pool.injector.is_empty()
        || LOCAL.with(|local| {
            local
                .borrow()
                .as_ref()
                .is_some_and(|local| !local.deque.is_empty())
        })
}

/// Gives the runner to other tasks: the task goes to the back of the injector queue
/// (an actor in a flood of messages yields every [`MESSAGES_PER_TURN`] of them).
pub(crate) async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|context| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        context.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

/// How many messages an actor handles in one turn before it yields its runner.
pub(crate) const MESSAGES_PER_TURN: u32 = 128;

/// The runtime actor timers (`send_after`, `send_interval`) run on.
pub(crate) fn timers() -> tokio::runtime::Handle {
    pool().timers.handle().clone()
}

fn current_slot() -> Option<Arc<RunnerSlot>> {
    LOCAL.with(|local| local.borrow().as_ref().map(|local| Arc::clone(&local.slot)))
}

/// Marks the current runner as running `callback` of `actor` until the guard drops.
/// Off the pool (a callback run directly, as in some tests) it records nothing. Costs a
/// few relaxed atomic stores; the actor's handle is stored only when the actor changes.
pub(crate) fn enter_callback(
    actor: &ActorRef,
    callback: Callback,
    deadline: Option<Duration>,
) -> CallbackGuard {
    let Some(pool) = POOL.get() else {
        return CallbackGuard { active: false };
    };
    let active = LOCAL.with(|local| {
        let local = local.borrow();
        let Some(local) = local.as_ref() else {
            return false;
        };
        let slot = &local.slot;
        let key = actor.identity();
        if slot.actor_key.load(Ordering::Relaxed) != key {
            *lock(&slot.actor) = Some(actor.clone());
            slot.actor_key.store(key, Ordering::Relaxed);
        }
        slot.callback.store(callback as usize, Ordering::Relaxed);
        slot.deadline.store(
            deadline.map_or(u64::MAX, |deadline| deadline.as_millis() as u64),
            Ordering::Relaxed,
        );
        slot.timed_out.store(false, Ordering::Relaxed);
        let generation = slot.generation.load(Ordering::Relaxed);
        slot.generation.store(generation + 1, Ordering::Release);
        slot.busy_since
            .store(pool.clock.load(Ordering::Relaxed), Ordering::Release);
        true
    });
    CallbackGuard { active }
}

/// Runs `wait` (a call to another actor from inside a callback): the runner is replaced
/// at once rather than after [`STALL`], so waiting never starves the pool.
pub(crate) fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    let slot = current_slot();
    if let Some(slot) = &slot {
        slot.blocking.store(true, Ordering::Relaxed);
    }
    let result = wait();
    if let Some(slot) = &slot {
        slot.blocking.store(false, Ordering::Relaxed);
    }
    result
}

/// Ends a callback's record on its runner.
pub(crate) struct CallbackGuard {
    active: bool,
}

impl Drop for CallbackGuard {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        LOCAL.with(|local| {
            let local = local.borrow();
            let Some(local) = local.as_ref() else {
                return;
            };
            let slot = &local.slot;
            slot.busy_since.store(0, Ordering::Release);
            if slot.replaced.load(Ordering::Relaxed) && slot.replaced.swap(false, Ordering::AcqRel)
            {
                // A replacement joined the pool while this callback ran: one of the two
                // leaves.
                let Some(pool) = POOL.get() else {
                    return;
                };
                if pool.live.load(Ordering::SeqCst) > pool.target
                    && !slot.retiring.swap(true, Ordering::AcqRel)
                {
                    pool.live.fetch_sub(1, Ordering::SeqCst);
                    slot.retire.store(true, Ordering::Release);
                }
            }
        });
    }
}

/// Callbacks that outlived their deadline and still hold a thread (their libraries stay
/// loaded).
pub fn stuck_callbacks() -> Vec<StuckCallback> {
    let Some(pool) = POOL.get() else {
        return Vec::new();
    };
    let now = pool.epoch.elapsed().as_millis() as u64 + 1;
    lock(&pool.runners)
        .iter()
        .filter(|slot| slot.timed_out.load(Ordering::Acquire))
        .filter_map(|slot| {
            let since = slot.busy_since.load(Ordering::Acquire);
            if since == 0 {
                return None;
            }
            let actor = lock(&slot.actor).clone()?;
            Some(StuckCallback {
                actor: actor.label(),
                callback: Callback::ALL[slot.callback.load(Ordering::Relaxed)]
                    .name()
                    .to_owned(),
                code: actor.code_label(),
                running_ms: now.saturating_sub(since),
            })
        })
        .collect()
}

/// How many runner threads serve the pool now (replacements included).
pub fn runner_count() -> usize {
    POOL.get()
        .map_or(0, |pool| pool.live.load(Ordering::SeqCst))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slot stores a callback as its discriminant and reads it back from `ALL`.
    #[test]
    fn every_callback_sits_at_its_own_index() {
        for (index, callback) in Callback::ALL.iter().enumerate() {
            assert_eq!(*callback as usize, index, "{}", callback.name());
        }
    }

    /// A task spawned on the pool runs and hands back its output; a caller off the pool
    /// gets a ready answer by spinning, without awaiting.
    #[test]
    fn tasks_run_on_the_pool_and_callers_off_it_spin_for_answers() {
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let task = spawn(async move {
            let _ = sender.send(std::thread::current().name().map(str::to_owned));
            7
        });
        let answer = loop {
            if let Some(answer) = spin_for(&mut receiver, Duration::from_millis(10)) {
                break answer;
            }
        };
        let thread = answer
            .expect("the task answered")
            .expect("runners are named");
        assert!(thread.starts_with("graft-actor-"), "{thread}");
        let timers = timers();
        assert_eq!(timers.block_on(task), 7);
    }

    /// A caller off the pool stops spinning at its budget (past the pure spin, yielding
    /// in between) when nothing answers, and hears at once of a sender that is gone.
    #[test]
    fn a_spin_ends_at_its_budget_or_when_the_sender_is_gone() {
        let (sender, mut receiver) = tokio::sync::oneshot::channel::<u8>();
        assert_eq!(spin_for(&mut receiver, Duration::from_millis(2)), None);
        drop(sender);
        assert_eq!(spin_for(&mut receiver, Duration::from_secs(60)), Some(None));
    }
}
