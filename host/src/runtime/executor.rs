//! The actor executor: the only threads that run plugin code, and the watchdog that keeps
//! them honest.
//!
//! Actors' tasks (and so every plugin callback, which runs synchronously inside its
//! actor's task) run on a process-wide pool of *runner* threads (`graft-actor-N`), an
//! [`async_executor::Executor`] that any number of threads can serve. The control plane —
//! the control socket, the release handler, supervisors, signal handling — runs on the
//! caller's tokio runtime, and actor timers run on a small tokio runtime of their own
//! (`graft-timer`); plugin code never runs on either.
//!
//! Invariants:
//! - Every callback runs inside a [`CallbackGuard`], which records on its runner's slot
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
//! - Pool growth is bounded ([`MAX_RUNNERS`]); past it, a stuck runner is not replaced.
//!
//! What is tricky: a runner cannot be preempted, only abandoned. Tasks queued on a
//! stuck runner's local queue are stolen by the others (the executor has no unstealable
//! LIFO slot), so no actor waits behind a stuck one.

use super::{ActorRef, lock};
use graft_plugin::StopReason;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a callback may hold a runner before the pool adds a replacement runner.
pub const STALL: Duration = Duration::from_millis(50);

/// How often the watchdog looks at the runners.
pub const WATCHDOG_TICK: Duration = Duration::from_millis(10);

/// The most runner threads the pool grows to, replacements included.
pub const MAX_RUNNERS: usize = 512;

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

/// What one runner is doing.
struct RunnerSlot {
    /// Nanoseconds since the executor's epoch when the current callback began, plus one;
    /// zero when idle.
    busy_since: AtomicU64,
    /// The current callback's deadline in nanoseconds after `busy_since` (`u64::MAX`:
    /// none).
    deadline: AtomicU64,
    /// The callback is blocked waiting for another actor: replace the runner at once.
    blocking: AtomicBool,
    /// A replacement runner was started for the current callback.
    replaced: AtomicBool,
    /// The current callback's actor was killed for its deadline.
    timed_out: AtomicBool,
    /// Which actor, which callback (read by the watchdog only on a timeout).
    current: Mutex<Option<(ActorRef, &'static str)>>,
    /// Set to make this runner leave the pool after its current task.
    retire: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

struct Pool {
    executor: async_executor::Executor<'static>,
    timers: tokio::runtime::Runtime,
    epoch: Instant,
    runners: Mutex<Vec<Arc<RunnerSlot>>>,
    /// Runners serving the pool (retired ones excluded).
    live: AtomicUsize,
    /// Runners the pool keeps when nothing is stuck.
    target: usize,
    next_runner: AtomicUsize,
}

thread_local! {
    static SLOT: RefCell<Option<Arc<RunnerSlot>>> = const { RefCell::new(None) };
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
            executor: async_executor::Executor::new(),
            timers,
            epoch: Instant::now(),
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

fn start_runner(pool: &Arc<Pool>) {
    let slot = Arc::new(RunnerSlot {
        busy_since: AtomicU64::new(0),
        deadline: AtomicU64::new(u64::MAX),
        blocking: AtomicBool::new(false),
        replaced: AtomicBool::new(false),
        timed_out: AtomicBool::new(false),
        current: Mutex::new(None),
        retire: Mutex::new(None),
    });
    let (retire, retired) = tokio::sync::oneshot::channel();
    *lock(&slot.retire) = Some(retire);
    lock(&pool.runners).push(Arc::clone(&slot));
    pool.live.fetch_add(1, Ordering::SeqCst);
    let number = pool.next_runner.fetch_add(1, Ordering::Relaxed);
    let served = Arc::clone(pool);
    let spawned = std::thread::Builder::new()
        .name(format!("graft-actor-{number}"))
        .spawn(move || {
            // Actor code uses tokio's time (call timeouts) from these threads.
            let _timers = served.timers.handle().enter();
            SLOT.with(|current| *current.borrow_mut() = Some(Arc::clone(&slot)));
            futures_lite::future::block_on(served.executor.run(async {
                let _ = retired.await;
            }));
            lock(&served.runners).retain(|other| !Arc::ptr_eq(other, &slot));
        });
    if let Err(error) = spawned {
        pool.live.fetch_sub(1, Ordering::SeqCst);
        tracing::error!("cannot start an actor runner thread: {error}");
    }
}

fn watchdog(pool: &Arc<Pool>) {
    loop {
        std::thread::sleep(WATCHDOG_TICK);
        let now = pool.epoch.elapsed().as_nanos() as u64 + 1;
        let slots: Vec<Arc<RunnerSlot>> = lock(&pool.runners).clone();
        for slot in slots {
            let since = slot.busy_since.load(Ordering::Acquire);
            if since == 0 {
                continue;
            }
            let running = now.saturating_sub(since);
            let stalled =
                slot.blocking.load(Ordering::Relaxed) || running >= STALL.as_nanos() as u64;
            if stalled
                && !slot.replaced.swap(true, Ordering::AcqRel)
                && pool.live.load(Ordering::SeqCst) < MAX_RUNNERS
            {
                start_runner(pool);
            }
            let deadline = slot.deadline.load(Ordering::Relaxed);
            if running > deadline && !slot.timed_out.swap(true, Ordering::AcqRel) {
                let current = lock(&slot.current).clone();
                if let Some((actor, callback)) = current {
                    let reason = format!(
                        "callback timeout: {callback} of {} after {} ms",
                        actor.code_label(),
                        deadline / 1_000_000
                    );
                    tracing::error!(actor = %actor.label(), "{reason}; its thread is abandoned and its library stays loaded");
                    actor.kill_with(StopReason::Error(reason));
                }
            }
        }
    }
}

/// Spawns an actor's task on the pool; dropping the returned task cancels it.
pub(crate) fn spawn<F>(future: F) -> async_executor::Task<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    pool().executor.spawn(future)
}

/// The runtime actor timers (`send_after`, `send_interval`) run on.
pub(crate) fn timers() -> tokio::runtime::Handle {
    pool().timers.handle().clone()
}

/// Marks the current runner as running `callback` of `actor` until the guard drops.
/// Off the pool (a callback run directly, as in some tests) it records nothing.
pub(crate) fn enter_callback(
    actor: &ActorRef,
    callback: &'static str,
    deadline: Option<Duration>,
) -> CallbackGuard {
    let slot = SLOT.with(|current| current.borrow().clone());
    if let Some(slot) = &slot {
        *lock(&slot.current) = Some((actor.clone(), callback));
        slot.deadline.store(
            deadline.map_or(u64::MAX, |deadline| deadline.as_nanos() as u64),
            Ordering::Relaxed,
        );
        let now = pool().epoch.elapsed().as_nanos() as u64 + 1;
        slot.busy_since.store(now, Ordering::Release);
    }
    CallbackGuard { slot }
}

/// Runs `wait` (a call to another actor from inside a callback): the runner is replaced
/// at once rather than after [`STALL`], so waiting never starves the pool.
pub(crate) fn blocking<T>(wait: impl FnOnce() -> T) -> T {
    let slot = SLOT.with(|current| current.borrow().clone());
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
    slot: Option<Arc<RunnerSlot>>,
}

impl Drop for CallbackGuard {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        slot.busy_since.store(0, Ordering::Release);
        *lock(&slot.current) = None;
        slot.timed_out.store(false, Ordering::Release);
        if slot.replaced.swap(false, Ordering::AcqRel) {
            // A replacement joined the pool while this callback ran: one of the two leaves.
            let pool = pool();
            if pool.live.load(Ordering::SeqCst) > pool.target
                && let Some(retire) = lock(&slot.retire).take()
            {
                pool.live.fetch_sub(1, Ordering::SeqCst);
                let _ = retire.send(());
            }
        }
    }
}

/// Callbacks that outlived their deadline and still hold a thread (their libraries stay
/// loaded).
pub fn stuck_callbacks() -> Vec<StuckCallback> {
    let Some(pool) = POOL.get() else {
        return Vec::new();
    };
    let now = pool.epoch.elapsed().as_nanos() as u64 + 1;
    lock(&pool.runners)
        .iter()
        .filter(|slot| slot.timed_out.load(Ordering::Acquire))
        .filter_map(|slot| {
            let since = slot.busy_since.load(Ordering::Acquire);
            let (actor, callback) = lock(&slot.current).clone()?;
            Some(StuckCallback {
                actor: actor.label(),
                callback: callback.to_owned(),
                code: actor.code_label(),
                running_ms: now.saturating_sub(since) / 1_000_000,
            })
        })
        .collect()
}

/// How many runner threads serve the pool now (replacements included).
pub fn runner_count() -> usize {
    POOL.get()
        .map_or(0, |pool| pool.live.load(Ordering::SeqCst))
}
