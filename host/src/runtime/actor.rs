//! One actor's task: its mailbox loop, system messages, exit path, and the host services
//! its behaviour reaches through the plugin context.
//!
//! Invariants:
//! - One callback at a time; system messages are handled between callbacks, a waiting one
//!   before the next ordinary message wherever that waits (mailbox, side queue, stash),
//!   or, during a run of casts (below), before the next run: a run is one turn of the
//!   loop, at most [`CASTS_PER_RUN`] casts, as a batch for a worker process is.
//!   A pending continuation still goes first: it is the end of the callback before.
//! - While suspended, every non-system message moves, in arrival order, to a side queue
//!   that is drained before the mailbox after `resume`, so nothing is lost or reordered.
//! - A pending continuation runs before any other message (OTP's `{continue, _}`).
//! - On exit: `terminate` (unless killed, after a panic, or after a failed start; an error
//!   or panic in it becomes the exit reason, as in OTP), the behaviour is dropped (so its
//!   plugin version can be unloaded), the name is freed, and only then are watchers told;
//!   callers still waiting see "exited" with the reason.
//! - A failed start (`init` fails, declines, or stops) answers its spawner only once the
//!   name is free, so an immediate retry can take it (OTP's `{stop, Reason}` and `ignore`
//!   run no `terminate`; a continuation that stops after a successful `init` is a running
//!   actor stopping, and does).
//! - An inactivity timeout (OTP's `timeout`) lasts from the callback that asked for it to
//!   the next message: any call, cast or info message clears it, system messages do not,
//!   and it fires only while running (not suspended), as an `INFO_TIMEOUT` info message.
//!
//! What is tricky: the reply channel of the call in progress sits in a slot, not the
//! pending map, so the common "reply now" path costs no map operations; only a call left
//! unanswered (a deferred reply) moves to the map. A long callback can also delay the
//! task its previous reply woke: the executor puts that task on top of this runner's
//! deque, which other runners leave alone until the watchdog finds this runner stalled
//! (an install that queues a migration right behind a suspend therefore waits for its
//! answers on a tokio task, off the executor). Every callback
//! runs under a guard the watchdog reads (its deadline), and a loop that finds its actor
//! killed meanwhile (a deadline, a crashed worker) handles nothing more. Casts to a
//! behaviour that batches them (a process-isolated one) are gathered from the mailbox in
//! order and sent together; what a batch did not run goes back in front. Casts to an
//! in-process behaviour go in runs: the casts right behind one in the mailbox's local
//! batch are taken up with it (one update of the shared length, not one per cast) and
//! handled one callback at a time, each under its own guard; a continuation, a stop or a
//! kill ends a run early and the rest stays at the front of the mailbox, counted again.
//!
//! Metrics (see [`crate::metrics`]): each call, cast and info message is counted in
//! `messages_handled` (what `status` reports); while metrics are on, it is also counted
//! in its plugin version's sharded metrics (a run of casts once, at its end), and one in
//! [`metrics::plugin::TIMED_EVERY`] is timed (two clock reads cost more than the rest);
//! the actor holds its version's metrics (so it counts as running that version) from its
//! start, a code change or its first message after they were turned on. Off, a message
//! costs one relaxed load for them.
//!
//! The mailbox length is one counter shared with the senders (see [`super`]): a call,
//! cast or info message of the plugin's own type counts from its send until the loop
//! takes it up to handle it (a run or a batch of casts is taken up at once); moving
//! between the mailbox's lanes, its batch, the side queue and the stash changes nothing.
//!
//! An idle actor costs its shared state and its task, whose future lives as long as the
//! actor: `init` runs in a plain function from boxed start arguments (freed once it has
//! run), and what only some actors use (timers, the inactivity timeout's sleep) is
//! allocated on first use, so the future holds little more than the [`Actor`] itself. When a mailbox that grew past [`LARGE_MAILBOX`] drains to empty, the
//! loop frees its queues' buffers and hands the freed heap back to the OS
//! ([`crate::process::return_free_memory_soon`]), so a flood that has passed leaves no
//! resident memory behind.

use super::behaviour::Behaviour;
use super::executor::{self, Callback, CallbackGuard};
use super::mailbox::{Next, Receiver};
use super::{ActorOptions, ActorRef, CallError, Migration, Runtime, SpawnError, SystemError, lock};
use crate::metrics::{self, MessageKind, Running};
use crate::plugin::{CallbackError, HostServices, Outputs, SendKind, ServiceError};
use graft_plugin::{Exit, StopReason, abi, codec};
use serde::Serialize;
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

/// The most casts sent to a worker process in one round trip.
const CASTS_PER_BATCH: usize = 256;

/// The most casts an in-process behaviour's run takes up at once (see
/// [`Actor::handle_cast_run`]).
const CASTS_PER_RUN: usize = 64;

/// A batch stops growing past this many bytes of messages.
const BATCH_BYTES: usize = 1 << 20;

/// A mailbox that held this many messages returns its memory once it drains to empty.
pub(crate) const LARGE_MAILBOX: usize = 64 * 1024;

/// Records `callback` of `actor` on the executor's watchdog until the guard drops.
fn guard(actor: &ActorRef, callback: Callback) -> CallbackGuard {
    executor::enter_callback(actor, callback, actor.callback_timeout())
}

/// An actor's running timers, each one's task by its id.
type Timers = Arc<Mutex<HashMap<u64, AbortHandle>>>;

type ReplySender = oneshot::Sender<Result<Vec<u8>, CallError>>;

/// A message in an actor's mailbox.
pub(crate) enum Envelope {
    Call {
        request: Vec<u8>,
        reply: ReplySender,
    },
    Cast(Vec<u8>),
    Info {
        kind: u32,
        message: Vec<u8>,
    },
    /// Boxed: links are rare, and every mailbox slot is as large as the largest variant.
    ExitSignal(Box<Exit>),
    Stop {
        reason: StopReason,
    },
}

impl Envelope {
    /// Whether it counts in the mailbox length and is bounded by `max_mailbox`: calls,
    /// casts and info messages of the plugin's own type. Stops, exit signals and
    /// monitors' `down` are neither (nor are system messages, which have their own lane).
    pub(crate) fn is_counted(&self) -> bool {
        match self {
            Envelope::Call { .. } | Envelope::Cast(_) => true,
            Envelope::Info { kind, .. } => *kind == abi::INFO_MESSAGE,
            Envelope::ExitSignal(_) | Envelope::Stop { .. } => false,
        }
    }
}

/// A `sys`-style request, handled between callbacks; it has its own lane in the mailbox
/// and goes before any ordinary message still queued.
pub(crate) enum SystemRequest {
    Suspend(oneshot::Sender<()>),
    Resume(oneshot::Sender<()>),
    GetState(oneshot::Sender<Result<serde_json::Value, SystemError>>),
    FormatStatus(oneshot::Sender<Result<serde_json::Value, SystemError>>),
    Status(oneshot::Sender<ActorStatus>),
    ChangeCode {
        migration: Migration,
        reply: oneshot::Sender<Result<(), SystemError>>,
    },
    ReplaceState {
        state: Vec<u8>,
        reply: oneshot::Sender<Result<(), SystemError>>,
    },
}

/// What `status` reports about an actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActorStatus {
    /// The process id.
    pub id: u64,
    /// The registered name.
    pub name: Option<String>,
    /// The plugin, when the behaviour is one.
    pub plugin: Option<String>,
    /// The plugin's version.
    pub version: Option<String>,
    /// Messages not yet handled (including those waiting while suspended).
    pub mailbox_length: usize,
    /// The largest mailbox length since the actor started.
    pub mailbox_high_water: usize,
    /// The bound on calls, casts and info messages in its mailbox (`None`: unbounded).
    pub max_mailbox: Option<usize>,
    /// Calls, casts and info messages refused (or dropped) because the mailbox was full.
    pub mailbox_refused: u64,
    /// Casts and info messages dropped because the actor could not decode them.
    pub undecodable_messages: u64,
    /// How many times its supervisor restarted it.
    pub restarts: u32,
    /// Whether it is suspended.
    pub suspended: bool,
    /// Calls, casts and info messages its callbacks have handled since it started (a
    /// message rate, for the observer).
    pub messages_handled: u64,
    /// Its own view of its health (plugin ABI 1.1 `health`): `None` when it reports none
    /// (an ABI 1.0 plugin, a host-native behaviour), `Err` with the message when the check
    /// failed.
    pub health: Option<Result<graft_plugin::Health, String>>,
}

/// The host services of one actor, handed to its callbacks.
struct ActorServices {
    runtime: Runtime,
    me: ActorRef,
    next_token: Cell<u64>,
    current_call: RefCell<Option<(u64, ReplySender)>>,
    pending: RefCell<HashMap<u64, ReplySender>>,
    /// The running timers, created with the first one (most actors never start one).
    timers: OnceCell<Timers>,
}

impl ActorServices {
    /// The actor's name, or its id when unnamed (kept once, in its shared state).
    fn label(&self) -> &str {
        self.me.shared.lifecycle.label.as_str()
    }
}

impl Drop for ActorServices {
    fn drop(&mut self) {
        let Some(timers) = self.timers.get() else {
            return;
        };
        for (_, timer) in lock(timers).drain() {
            timer.abort();
        }
    }
}

pub(crate) fn service_error(error: CallError) -> ServiceError {
    match error {
        CallError::NotFound(name) => ServiceError::NotFound(name),
        CallError::Timeout { actor, .. } => ServiceError::Timeout(actor),
        CallError::Exited { actor, reason } => ServiceError::Exited {
            actor,
            reason: reason.to_string(),
        },
        CallError::BadRequest { actor, message } => ServiceError::Refused {
            actor,
            reason: message,
        },
        CallError::CallingSelf(actor) => ServiceError::Refused {
            actor,
            reason: "an actor cannot call itself".to_owned(),
        },
        CallError::MailboxFull { actor, limit } => mailbox_full(actor, limit),
        CallError::HostDown { actor, host } => ServiceError::Exited {
            actor: format!("{actor}@{host}"),
            reason: "host down".to_owned(),
        },
        CallError::Unreachable { actor, why } => ServiceError::Refused { actor, reason: why },
    }
}

fn mailbox_full(actor: String, limit: usize) -> ServiceError {
    ServiceError::Refused {
        actor,
        reason: format!("its mailbox is full (max_mailbox = {limit})"),
    }
}

/// Where a callback's message goes: an actor here, or the cluster with the target.
enum Resolved {
    Local(ActorRef),
    Remote(Arc<dyn super::Remote>, super::Target),
}

impl ActorServices {
    fn resolve(&self, to: &str) -> Result<Resolved, ServiceError> {
        match (self.runtime.route(to), self.runtime.remote()) {
            (Some(super::Route::Local(target)), _) => Ok(Resolved::Local(target)),
            (Some(super::Route::Remote(target)), Some(remote)) => {
                Ok(Resolved::Remote(Arc::clone(remote), target))
            }
            _ => Err(ServiceError::NotFound(to.to_owned())),
        }
    }
}

impl HostServices for ActorServices {
    fn actor_name(&self) -> &str {
        self.label()
    }

    fn send(&self, to: &str, kind: SendKind, message: Vec<u8>) -> Result<(), ServiceError> {
        let target = match self.resolve(to)? {
            Resolved::Local(target) => target,
            Resolved::Remote(remote, target) => {
                return remote.send(self.label(), &target, kind, message);
            }
        };
        let sent = match kind {
            SendKind::Cast => target.try_cast(message),
            SendKind::Info => target.try_send_info(message),
        };
        sent.map_err(|super::CastError::MailboxFull { actor, limit }| mailbox_full(actor, limit))
    }

    fn call(&self, to: &str, message: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, ServiceError> {
        let target = match self.resolve(to)? {
            Resolved::Local(target) => target,
            Resolved::Remote(remote, target) => {
                // Blocks this runner as a local call does (below).
                let timers = executor::timers();
                return executor::blocking(|| {
                    timers.block_on(remote.call(&target, message, timeout))
                })
                .map_err(service_error);
            }
        };
        if target == self.me {
            return Err(service_error(CallError::CallingSelf(
                self.label().to_owned(),
            )));
        }
        // The callback is synchronous: block this runner; the executor replaces it while
        // it waits, so waiting for `target` cannot starve the pool.
        let timers = executor::timers();
        executor::blocking(|| timers.block_on(target.call(message, timeout))).map_err(service_error)
    }

    /// The cluster's live hosts; without a cluster, this host alone is a cluster of one
    /// with no name, so the list is empty.
    fn hosts(&self) -> Result<Vec<String>, ServiceError> {
        Ok(self
            .runtime
            .remote()
            .map(|remote| remote.hosts())
            .unwrap_or_default())
    }

    fn register_global(&self) -> Result<(), ServiceError> {
        let timers = executor::timers();
        executor::blocking(|| timers.block_on(self.runtime.make_global(&self.me))).map_err(
            |error| match error {
                super::GlobalError::Unavailable(why) => ServiceError::Refused {
                    actor: self.label().to_owned(),
                    reason: format!("cluster unavailable: {why}"),
                },
                other => ServiceError::Refused {
                    actor: self.label().to_owned(),
                    reason: other.to_string(),
                },
            },
        )
    }

    fn monitor(&self, to: &str) -> Result<u64, ServiceError> {
        self.runtime
            .monitor_name(&self.me, to)
            .ok_or_else(|| ServiceError::NotFound(to.to_owned()))
    }

    fn monitor_hosts(&self, on: bool) -> Result<(), ServiceError> {
        match self.runtime.remote() {
            Some(remote) => {
                remote.watch_hosts(&self.me, on);
                Ok(())
            }
            None => Err(ServiceError::Unavailable("monitor_hosts")),
        }
    }

    fn start_timer(&self, delay: Duration, repeat: bool, message: Vec<u8>) -> Option<u64> {
        let id = self
            .runtime
            .inner
            .next_timer
            .fetch_add(1, Ordering::Relaxed);
        let me = self.me.clone();
        let registry = self.timers.get_or_init(Timers::default);
        let timers = Arc::clone(registry);
        // Hold the registry lock while spawning, so a timer that fires at once cannot try
        // to remove its entry before it is inserted.
        let mut registry = lock(registry);
        let task = executor::timers().spawn(async move {
            if repeat {
                let period = delay.max(Duration::from_millis(1));
                let mut interval =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    me.send_info(message.clone());
                }
            } else {
                tokio::time::sleep(delay).await;
                lock(&timers).remove(&id);
                me.send_info(message);
            }
        });
        registry.insert(id, task.abort_handle());
        Some(id)
    }

    fn cancel_timer(&self, timer: u64) -> bool {
        let Some(timers) = self.timers.get() else {
            return false;
        };
        match lock(timers).remove(&timer) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    fn reply(&self, token: u64, message: Vec<u8>) -> Result<(), ServiceError> {
        let sender = {
            let mut current = self.current_call.borrow_mut();
            match current.as_ref() {
                Some((current_token, _)) if *current_token == token => {
                    current.take().map(|(_, sender)| sender)
                }
                _ => self.pending.borrow_mut().remove(&token),
            }
        };
        match sender {
            // A caller that gave up dropped its receiver: the late reply is dropped too.
            Some(sender) => {
                let _ = sender.send(Ok(message));
                Ok(())
            }
            None => Err(ServiceError::Refused {
                actor: self.label().to_owned(),
                reason: format!("no call is waiting for reply {token}"),
            }),
        }
    }
}

/// What the metrics do with one message (see [`Actor::sample`]).
#[derive(Clone, Copy)]
enum Sample {
    /// Metrics are off.
    Off,
    /// Counted, not timed.
    Counted,
    /// Counted and timed from this instant.
    Timed(Instant),
}

/// Why the loop ended.
struct Ending {
    reason: StopReason,
    run_terminate: bool,
}

impl Ending {
    fn crash(error: &CallbackError) -> Ending {
        Ending {
            reason: StopReason::Error(error.to_string()),
            // A panicked instance is poisoned: no more calls into it.
            run_terminate: !error.is_panic(),
        }
    }
}

struct Actor {
    behaviour: Box<dyn Behaviour>,
    services: ActorServices,
    mailbox: Receiver,
    deferred: VecDeque<Envelope>,
    /// Taken from the mailbox ahead of their turn (while gathering a batch of casts);
    /// handled before anything else in the mailbox, in order.
    stashed: VecDeque<Envelope>,
    suspended: bool,
    trap_exit: bool,
    restarts: u32,
    continue_with: Option<Vec<u8>>,
    /// When the inactivity timeout the last callback asked for fires (OTP's `timeout`):
    /// any message clears it, each callback sets it again or not.
    inactivity_deadline: Option<tokio::time::Instant>,
    /// The timer of that deadline: allocated the first time one is armed, then reset
    /// (kept out of the task's future, which every idle actor pays for).
    inactivity_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The longest the mailbox has been since its memory was last returned.
    longest_since_returned: usize,
    /// Messages this turn may still handle before the loop lets other tasks run.
    turn_left: u32,
    /// Calls, casts and info messages handled so far (`status` reports it).
    messages_handled: u64,
    /// The metrics of the plugin version it runs, counting it as running there: set while
    /// metrics are on (at the start, a code change, or the first message after
    /// [`metrics::enable`]), `None` otherwise.
    metrics: Option<Running>,
}

/// What an actor's task starts from, boxed until `init` has run: the task's future then
/// holds one pointer for it (its size is every idle actor's cost), and the box is freed
/// once the actor runs.
struct Start {
    runtime: Runtime,
    me: ActorRef,
    options: ActorOptions,
    mailbox: Receiver,
    started: oneshot::Sender<Result<(), SpawnError>>,
}

/// The actor task: `init`, the loop, the exit path. `init` and the rest of the start run
/// in a plain function ([`start`]), so that what they need is not part of the future
/// that lives as long as the actor.
pub(crate) fn run(
    runtime: Runtime,
    me: ActorRef,
    options: ActorOptions,
    mailbox: Receiver,
    started: oneshot::Sender<Result<(), SpawnError>>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let arguments = Box::new(Start {
        runtime,
        me,
        options,
        mailbox,
        started,
    });
    async move {
        // Moved out of the box in a block of its own, so the box is freed before the loop
        // begins (moving out of the captured box directly would keep its allocation as
        // long as this future).
        let arguments = {
            let boxed = arguments;
            *boxed
        };
        let Some(mut actor) = start(arguments) else {
            return;
        };
        let exit = actor.run_loop().await;
        let (runtime, me) = (actor.services.runtime.clone(), actor.services.me.clone());
        actor.exit(&runtime, &me, exit, None);
    }
}

/// Runs `init`; answers the spawner. `None`: the start failed (already answered, the
/// exit recorded).
fn start(arguments: Start) -> Option<Actor> {
    let Start {
        runtime,
        me,
        options,
        mailbox,
        started,
    } = arguments;
    let label = me.label();
    let services = ActorServices {
        runtime: runtime.clone(),
        me: me.clone(),
        next_token: Cell::new(1),
        current_call: RefCell::new(None),
        pending: RefCell::new(HashMap::new()),
        timers: OnceCell::new(),
    };
    let initialising = guard(&me, Callback::Init);
    let started_behaviour = options.factory.start(&options.args, &services);
    drop(initialising);
    if let Err(error) = &started_behaviour
        && error.is_panic()
        && metrics::is_enabled()
    {
        metrics::plugin::for_identity(options.factory.identity().as_ref()).count_panic();
    }
    let (mut behaviour, outputs) = match started_behaviour {
        Ok(started) => started,
        Err(CallbackError::Ignored { .. }) => {
            runtime.unregister(&me);
            let _ = started.send(Err(SpawnError::Ignored { actor: label }));
            me.finish(StopReason::Normal);
            return None;
        }
        Err(error) => {
            let reason = StopReason::Error(error.to_string());
            runtime.unregister(&me);
            // The spawner hears first: it also watches the exit (for an `init` killed at
            // its deadline), and must not mistake this failure for such a kill.
            let _ = started.send(Err(SpawnError::InitFailed {
                actor: label,
                error: Box::new(error),
            }));
            me.finish(reason);
            return None;
        }
    };
    behaviour.attach(&me);
    me.set_code_label(behaviour.code_label());
    let mut actor = Actor {
        behaviour,
        services,
        mailbox,
        deferred: VecDeque::new(),
        stashed: VecDeque::new(),
        suspended: false,
        trap_exit: options.trap_exit,
        restarts: options.restarts,
        continue_with: outputs.continue_with,
        inactivity_deadline: None,
        inactivity_timer: None,
        longest_since_returned: 0,
        turn_left: executor::MESSAGES_PER_TURN,
        messages_handled: 0,
        metrics: None,
    };
    actor.metrics_on();
    actor.arm_inactivity_timeout(outputs.inactivity_timeout);
    if let Some(reason) = outputs.stop {
        // OTP's `{stop, Reason}` from `init`: the start failed, so no `terminate`; the
        // name is freed before the spawner hears, so that it can retry at once.
        let exit = Ending {
            reason: reason.clone(),
            run_terminate: false,
        };
        let failed = SpawnError::Stopped {
            actor: label,
            reason,
        };
        actor.exit(&runtime, &me, exit, Some((started, failed)));
        return None;
    }
    let _ = started.send(Ok(()));
    Some(actor)
}

impl Actor {
    /// Whether metrics are on; when they are, the actor's version metrics are set (and it
    /// counts as running that version).
    #[inline]
    fn metrics_on(&mut self) -> bool {
        if !metrics::is_enabled() {
            return false;
        }
        if self.metrics.is_none() {
            self.metrics = Some(Running::start(self.behaviour.version_metrics()));
        }
        true
    }

    /// Whether the next message is one the actor times (one in
    /// [`metrics::plugin::TIMED_EVERY`] by its count of messages handled, its first
    /// included; no field of its own, as every idle actor would pay for it).
    #[inline]
    fn timing_next(&self) -> bool {
        self.messages_handled
            .is_multiple_of(u64::from(metrics::plugin::TIMED_EVERY))
    }

    /// The bookkeeping of one message about to be handled: whether it counts, and its
    /// start if it is timed.
    #[inline]
    fn sample(&mut self) -> Sample {
        if !self.metrics_on() {
            Sample::Off
        } else if self.timing_next() {
            Sample::Timed(Instant::now())
        } else {
            Sample::Counted
        }
    }

    /// One message of `kind` handled, as `sample` said.
    #[inline]
    fn handled(&mut self, kind: MessageKind, sample: Sample) {
        self.messages_handled += 1;
        let Some(running) = &self.metrics else {
            return;
        };
        match sample {
            Sample::Off => {}
            Sample::Counted => running.metrics().count(kind, 1),
            Sample::Timed(began) => {
                running.metrics().count(kind, 1);
                running.metrics().observe(kind, began.elapsed());
            }
        }
    }

    /// A callback failed: the actor's exit (a panic counted in its version's metrics).
    fn crash(&self, error: &CallbackError) -> Ending {
        if error.is_panic()
            && let Some(running) = &self.metrics
        {
            running.metrics().count_panic();
        }
        Ending::crash(error)
    }

    async fn run_loop(&mut self) -> Ending {
        loop {
            self.turn_left = self.turn_left.saturating_sub(1);
            if self.turn_left == 0 {
                // A flood never makes the mailbox wait: yield now and then, so the other
                // tasks waiting for this runner get their turn.
                self.turn_left = executor::MESSAGES_PER_TURN;
                if executor::others_waiting() {
                    executor::yield_now().await;
                }
            }
            if !self.suspended
                && let Some(argument) = self.continue_with.take()
            {
                let running = guard(&self.services.me, Callback::HandleContinue);
                let result = self.behaviour.handle_continue(&argument, &self.services);
                drop(running);
                if let Some(exit) = self.after(result) {
                    return exit;
                }
                continue;
            }
            // A waiting system message goes before any ordinary one, wherever that waits.
            let next = match self.mailbox.try_system() {
                Some(request) => Next::System(request),
                None => match self.stashed.pop_front() {
                    Some(envelope) => Next::Ordinary(envelope),
                    None => self.next_queued().await,
                },
            };
            match next {
                Next::System(request) => self.handle_system(request),
                Next::Ordinary(envelope) => {
                    if let Some(exit) = self.handle(envelope) {
                        return exit;
                    }
                }
            }
            if let Some(reason) = self.services.me.exit_reason() {
                // Killed during that callback (its deadline, a crashed worker): its task
                // is cancelled; handle nothing more.
                return Ending {
                    reason,
                    run_terminate: false,
                };
            }
        }
    }

    /// The loop took `count` messages up to handle them; a large mailbox that is now
    /// empty frees its queues' buffers and returns the freed heap to the OS.
    fn taken(&mut self, count: usize) {
        let before = self.services.me.taken_from_mailbox(count);
        self.longest_since_returned = self.longest_since_returned.max(before);
        if before == count && self.longest_since_returned >= LARGE_MAILBOX {
            self.longest_since_returned = 0;
            self.deferred.shrink_to_fit();
            self.stashed.shrink_to_fit();
            self.mailbox.shrink();
            crate::process::return_free_memory_soon();
            tracing::debug!(actor = %self.services.label(), "a large mailbox drained: memory returned");
        }
    }

    /// The next message: one that waited while suspended, else the mailbox's next (a
    /// system message first).
    async fn next_queued(&mut self) -> Next {
        match self.deferred.pop_front() {
            Some(envelope) if !self.suspended => Next::Ordinary(envelope),
            Some(envelope) => {
                self.deferred.push_front(envelope);
                self.next_from_mailbox().await
            }
            None => self.next_from_mailbox().await,
        }
    }

    /// The mailbox's next message; while an inactivity timeout is armed (and the actor
    /// is not suspended), the timeout's info message if it passes first. A sleep exists
    /// only while one is armed: the common wait costs no timer.
    async fn next_from_mailbox(&mut self) -> Next {
        let deadline = match self.inactivity_deadline {
            Some(deadline) if !self.suspended => deadline,
            _ => return self.mailbox.next().await,
        };
        let timer = match &mut self.inactivity_timer {
            Some(timer) => {
                timer.as_mut().reset(deadline);
                timer
            }
            None => self
                .inactivity_timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        let mailbox = &mut self.mailbox;
        let inactivity_deadline = &mut self.inactivity_deadline;
        std::future::poll_fn(|context| {
            if let Poll::Ready(next) = mailbox.poll_next(context) {
                return Poll::Ready(next);
            }
            timer.as_mut().poll(context).map(|()| {
                *inactivity_deadline = None;
                Next::Ordinary(Envelope::Info {
                    kind: abi::INFO_TIMEOUT,
                    message: Vec::new(),
                })
            })
        })
        .await
    }

    fn arm_inactivity_timeout(&mut self, timeout: Option<Duration>) {
        self.inactivity_deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    }

    fn handle(&mut self, envelope: Envelope) -> Option<Ending> {
        // A counted message is taken up now, unless it waits while suspended. A cast to an
        // in-process behaviour takes up with it the casts right behind it in the mailbox
        // (a run: one count for all, see `handle_cast_run`), when nothing older waits
        // elsewhere (the side queue, the stash).
        let mut run = 0;
        if !self.suspended && envelope.is_counted() {
            if matches!(envelope, Envelope::Cast(_))
                && !self.behaviour.batches_casts()
                && self.deferred.is_empty()
                && self.stashed.is_empty()
            {
                let limit = (CASTS_PER_RUN - 1).min(self.turn_left as usize);
                run = self.mailbox.leading_casts(limit);
            }
            self.taken(1 + run);
        }
        // Any message cancels an inactivity timeout (system messages do not, and an exit
        // signal that does not stop the actor is no message in OTP).
        if matches!(
            envelope,
            Envelope::Call { .. } | Envelope::Cast(_) | Envelope::Info { .. }
        ) {
            self.inactivity_deadline = None;
        }
        match envelope {
            Envelope::Stop { reason } => Some(Ending {
                reason,
                run_terminate: true,
            }),
            Envelope::ExitSignal(signal) if self.trap_exit => {
                let message = codec::encode(&*signal).unwrap_or_default();
                // Handled as an info message (exit signals are never counted in the
                // mailbox's length, nor refused by its bound).
                self.handle(Envelope::Info {
                    kind: abi::INFO_EXIT,
                    message,
                })
            }
            Envelope::ExitSignal(signal) => {
                let reason = signal.reason;
                // Not trapping: an abnormal exit of a linked actor takes this one down too.
                (reason != StopReason::Normal).then_some(Ending {
                    reason,
                    run_terminate: false,
                })
            }
            other if self.suspended => {
                self.deferred.push_back(other);
                None
            }
            Envelope::Call { request, reply } => self.handle_call(&request, reply),
            Envelope::Cast(message) if self.behaviour.batches_casts() => self.handle_casts(message),
            Envelope::Cast(message) => self.handle_cast_run(message, run),
            Envelope::Info { kind, message } => {
                let sample = self.sample();
                let running = guard(&self.services.me, Callback::HandleInfo);
                let result = self.behaviour.handle_info(kind, &message, &self.services);
                drop(running);
                self.handled(MessageKind::Info, sample);
                self.after(result)
            }
        }
    }

    /// Handles `first` and the `run` casts right behind it in the mailbox, taken up with it
    /// (one count for all: the mailbox length is one atomic the senders write too), each
    /// in its own callback under its own guard and deadline, in order. A run is one turn
    /// of the loop: a system message that arrives during it waits for its end (at most
    /// [`CASTS_PER_RUN`] casts), as one during a batch does, and the deadline is read
    /// once for the run. Between two casts the run ends early when something must go
    /// first (a continuation, a stop, the actor killed): the casts not handled stay where
    /// they are, at the front of the mailbox, and count again.
    ///
    /// What is tricky: nothing read here per cast may share a cache line with what every
    /// send writes (the mailbox's lock and its system flag, the length), or each cast
    /// costs both cores a miss; hence the flag and the deadline once per run.
    fn handle_cast_run(&mut self, first: Vec<u8>, run: usize) -> Option<Ending> {
        // While metrics are on, the run's casts are counted once, at its end; one in
        // `TIMED_EVERY` is timed.
        let metrics_on = self.metrics_on();
        let handled_before = self.messages_handled;
        let exit = self.handle_casts_in_run(first, run, metrics_on);
        if metrics_on && let Some(running) = &self.metrics {
            running
                .metrics()
                .count(MessageKind::Cast, self.messages_handled - handled_before);
        }
        exit
    }

    /// [`Actor::handle_cast_run`] without the count.
    fn handle_casts_in_run(
        &mut self,
        first: Vec<u8>,
        run: usize,
        metrics_on: bool,
    ) -> Option<Ending> {
        let deadline = self.services.me.callback_timeout();
        let mut message = first;
        let mut left = run;
        loop {
            let timed = (metrics_on && self.timing_next()).then(Instant::now);
            let running =
                executor::enter_callback(&self.services.me, Callback::HandleCast, deadline);
            let result = self.behaviour.handle_cast(&message, &self.services);
            drop(running);
            self.messages_handled += 1;
            if let Some(began) = timed
                && let Some(running) = &self.metrics
            {
                running
                    .metrics()
                    .observe(MessageKind::Cast, began.elapsed());
            }
            drop(message);
            let exit = self.after(result);
            if left == 0 {
                return exit;
            }
            let next =
                if exit.is_none() && self.continue_with.is_none() && self.services.me.is_alive() {
                    self.mailbox.pop_leading_cast()
                } else {
                    None
                };
            let Some(next) = next else {
                self.services.me.returned_to_mailbox(left);
                return exit;
            };
            message = next;
            left -= 1;
            self.turn_left = self.turn_left.saturating_sub(1);
            // Any message cancels an inactivity timeout.
            self.inactivity_deadline = None;
        }
    }

    /// Handles `first` and the casts right behind it in the mailbox as one batch (one round
    /// trip to a worker process); a cast that did not run (an earlier one stopped the
    /// actor or asked for a continuation) goes back in front, in order.
    fn handle_casts(&mut self, first: Vec<u8>) -> Option<Ending> {
        let mut messages = vec![first];
        let mut bytes = messages[0].len();
        // Only the mailbox's own order is batched: not while older messages wait elsewhere.
        // A system message that arrives meanwhile ends the batch: it goes next.
        if self.deferred.is_empty() && self.stashed.is_empty() {
            while messages.len() < CASTS_PER_BATCH
                && bytes < BATCH_BYTES
                && !self.mailbox.system_waiting()
            {
                match self.mailbox.try_ordinary() {
                    Some(Envelope::Cast(message)) => {
                        bytes += message.len();
                        messages.push(message);
                    }
                    Some(other) => {
                        self.stashed.push_back(other);
                        break;
                    }
                    None => break,
                }
            }
        }
        if messages.len() > 1 {
            self.taken(messages.len() - 1);
        }
        // A batch is a round trip to a worker process: each is counted and timed (one
        // observation, its time per message).
        let timed = self.metrics_on().then(Instant::now);
        let running = guard(&self.services.me, Callback::HandleCast);
        let results = self.behaviour.handle_casts(&messages, &self.services);
        drop(running);
        let ran = results.len().max(1).min(messages.len());
        self.messages_handled += ran as u64;
        if let Some(began) = timed
            && let Some(running) = &self.metrics
        {
            running.metrics().count(MessageKind::Cast, ran as u64);
            let per_message = began.elapsed() / u32::try_from(ran).unwrap_or(u32::MAX);
            running.metrics().observe(MessageKind::Cast, per_message);
        }
        if ran < messages.len() {
            self.services.me.returned_to_mailbox(messages.len() - ran);
        }
        for message in messages.drain(ran..).rev() {
            self.stashed.push_front(Envelope::Cast(message));
        }
        for result in results {
            if let Some(exit) = self.after(result) {
                return Some(exit);
            }
        }
        None
    }

    /// An encoded state (or its formatted view) as JSON, for `get_state`/`format_status`.
    fn state_as_json(
        &self,
        encoded: Result<Vec<u8>, CallbackError>,
    ) -> Result<serde_json::Value, SystemError> {
        encoded
            .map_err(|error| error.to_string())
            .and_then(|bytes| {
                rmp_serde::from_slice::<serde_json::Value>(&bytes)
                    .map_err(|error| error.to_string())
            })
            .map_err(|message| SystemError::State {
                actor: self.services.label().to_owned(),
                message,
            })
    }

    fn handle_call(&mut self, request: &[u8], reply: ReplySender) -> Option<Ending> {
        let token = self.services.next_token.get();
        self.services.next_token.set(token + 1);
        *self.services.current_call.borrow_mut() = Some((token, reply));
        let sample = self.sample();
        let running = guard(&self.services.me, Callback::HandleCall);
        let result = self.behaviour.handle_call(request, token, &self.services);
        drop(running);
        let waiting = self.services.current_call.borrow_mut().take();
        // Recorded once the caller has its answer (the clock is read after the reply).
        let exit = match result {
            Ok(mut outputs) => {
                if let Some((_, sender)) = waiting {
                    match outputs.reply.take() {
                        Some(bytes) => {
                            let _ = sender.send(Ok(bytes));
                        }
                        None => {
                            self.services.pending.borrow_mut().insert(token, sender);
                        }
                    }
                }
                self.after(Ok(outputs))
            }
            Err(error) if error.is_bad_input() => {
                if let Some((_, sender)) = waiting {
                    let _ = sender.send(Err(CallError::BadRequest {
                        actor: self.services.label().to_owned(),
                        message: error.to_string(),
                    }));
                }
                None
            }
            Err(error) => {
                let exit = self.crash(&error);
                if let Some((_, sender)) = waiting {
                    let _ = sender.send(Err(CallError::Exited {
                        actor: self.services.label().to_owned(),
                        reason: exit.reason.clone(),
                    }));
                }
                Some(exit)
            }
        };
        self.handled(MessageKind::Call, sample);
        exit
    }

    /// Applies a callback's outputs: a continuation, a stop, or a crash.
    fn after(&mut self, result: Result<Outputs, CallbackError>) -> Option<Ending> {
        match result {
            Ok(outputs) => {
                self.arm_inactivity_timeout(outputs.inactivity_timeout);
                if let Some(argument) = outputs.continue_with {
                    self.continue_with = Some(argument);
                }
                outputs.stop.map(|reason| Ending {
                    reason,
                    run_terminate: true,
                })
            }
            Err(error) if error.is_bad_input() => {
                // The error names the field that failed (`... expected u64 at ttl_ms`).
                self.services.me.count_undecodable();
                tracing::warn!(actor = %self.services.label(), "message dropped, it does not decode: {error}");
                None
            }
            Err(error) => Some(self.crash(&error)),
        }
    }

    fn handle_system(&mut self, request: SystemRequest) {
        match request {
            SystemRequest::Suspend(reply) => {
                self.suspended = true;
                let _ = reply.send(());
            }
            SystemRequest::Resume(reply) => {
                self.suspended = false;
                let _ = reply.send(());
            }
            SystemRequest::GetState(reply) => {
                let _running = guard(&self.services.me, Callback::EncodeState);
                let encoded = self.behaviour.encode_state();
                let state = self.state_as_json(encoded);
                let _ = reply.send(state);
            }
            SystemRequest::FormatStatus(reply) => {
                let _running = guard(&self.services.me, Callback::FormatStatus);
                let formatted = match self.behaviour.format_status() {
                    Some(formatted) => formatted,
                    // No formatted view (an ABI 1.0 plugin): the state itself.
                    None => self.behaviour.encode_state(),
                };
                let state = self.state_as_json(formatted);
                let _ = reply.send(state);
            }
            SystemRequest::Status(reply) => {
                let health = {
                    let _running = guard(&self.services.me, Callback::Health);
                    self.behaviour
                        .health()
                        .map(|health| health.map_err(|error| error.to_string()))
                };
                let identity = self.behaviour.identity();
                let _ = reply.send(ActorStatus {
                    health,
                    id: self.services.me.id().0,
                    name: self.services.me.name().map(str::to_owned),
                    plugin: identity.map(|identity| identity.name.clone()),
                    version: identity.map(|identity| identity.version.to_string()),
                    mailbox_length: self.services.me.mailbox_length(),
                    mailbox_high_water: self.services.me.mailbox_high_water(),
                    max_mailbox: self.services.me.max_mailbox(),
                    mailbox_refused: self.services.me.mailbox_refused(),
                    undecodable_messages: self.services.me.undecodable_messages(),
                    restarts: self.restarts,
                    suspended: self.suspended,
                    messages_handled: self.messages_handled,
                });
            }
            SystemRequest::ChangeCode { migration, reply } => {
                let result = if !self.suspended {
                    Err(SystemError::NotSuspended(self.services.label().to_owned()))
                } else {
                    let running = guard(&self.services.me, Callback::CodeChange);
                    let migrated = migration(&mut self.behaviour);
                    drop(running);
                    match migrated {
                        Ok(replacement) => {
                            if let Some(replacement) = replacement {
                                self.install(replacement);
                            }
                            Ok(())
                        }
                        Err(message) => Err(SystemError::ChangeCodeFailed {
                            actor: self.services.label().to_owned(),
                            message,
                        }),
                    }
                };
                let _ = reply.send(result);
            }
            SystemRequest::ReplaceState { state, reply } => {
                let _ = reply.send(self.replace_state(&state));
            }
        }
    }

    /// Puts `replacement` in the place of the current behaviour (a code change, a replaced
    /// state); the old one is dropped.
    fn install(&mut self, mut replacement: Box<dyn Behaviour>) {
        // The old behaviour's interrupt (and any connection it holds) goes with it.
        self.services.me.set_interrupt(None);
        replacement.attach(&self.services.me);
        self.services.me.set_code_label(replacement.code_label());
        let _dropping = guard(&self.services.me, Callback::Drop);
        self.behaviour = replacement;
        // It runs another version now (or, after a replaced state, the same one again).
        self.metrics = None;
        self.metrics_on();
    }

    /// `sys:replace_state`: a new instance of the same plugin version from `state` (its
    /// `restore_state`), only while suspended; on failure the old one stays.
    fn replace_state(&mut self, state: &[u8]) -> Result<(), SystemError> {
        let actor = || self.services.label().to_owned();
        if !self.suspended {
            return Err(SystemError::NotSuspendedFor {
                actor: actor(),
                request: "replace_state",
            });
        }
        let running = guard(&self.services.me, Callback::RestoreState);
        let restored: Result<Box<dyn Behaviour>, String> =
            if let Some(plugin) = self.behaviour.plugin() {
                crate::plugin::Instance::restore(plugin, state, &self.services)
                    .map(|instance| Box::new(instance) as Box<dyn Behaviour>)
                    .map_err(|error| error.to_string())
            } else if let Some(plugin) = self.behaviour.isolated_plugin() {
                plugin
                    .restore(state, &self.services)
                    .map_err(|error| error.to_string())
            } else {
                Err("its behaviour is native code, which has no restore_state".to_owned())
            };
        drop(running);
        match restored {
            Ok(replacement) => {
                self.install(replacement);
                Ok(())
            }
            Err(message) => Err(SystemError::ReplaceStateFailed {
                actor: actor(),
                message,
            }),
        }
    }

    /// The exit path: `terminate` (when it runs), the behaviour dropped, the name freed,
    /// then a failed start answered (`start_failed`), and only then the watchers told.
    fn exit(
        self,
        runtime: &Runtime,
        me: &ActorRef,
        mut exit: Ending,
        start_failed: Option<(oneshot::Sender<Result<(), SpawnError>>, SpawnError)>,
    ) {
        let Actor {
            mut behaviour,
            services,
            mailbox,
            deferred,
            metrics,
            ..
        } = self;
        // No longer running its version (counted before the exit is, so whoever sees the
        // exit sees the gauge moved).
        drop(metrics);
        let terminating = guard(me, Callback::Terminate);
        if exit.run_terminate
            && let Err(error) = behaviour.terminate(&exit.reason, &services)
        {
            // OTP: a crash in `terminate` is the exit reason.
            tracing::error!(actor = %services.label(), stopping_with = %exit.reason, "terminate failed: {error}");
            exit.reason = StopReason::Error(error.to_string());
        }
        drop(terminating);
        if !exit.reason.is_clean() {
            tracing::error!(actor = %services.label(), reason = %exit.reason, "actor exited abnormally");
        }
        // Release the plugin instance (and with it, possibly, an old library version).
        let dropping = guard(me, Callback::Drop);
        drop(behaviour);
        drop(dropping);
        me.set_interrupt(None);
        runtime.unregister(me);
        // The spawner hears before the exit is recorded: it also watches the exit (for an
        // `init` killed at its deadline), and must not mistake this failure for such a kill.
        if let Some((started, error)) = start_failed {
            let _ = started.send(Err(error));
        }
        me.finish(exit.reason);
        // Callers waiting on a deferred reply or still queued now see "exited".
        drop(services);
        drop(deferred);
        drop(mailbox);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot of a mailbox's queues is as large as the largest message: keep it small.
    #[test]
    fn a_mailbox_slot_stays_small() {
        assert!(
            size_of::<Envelope>() <= 40,
            "{} bytes",
            size_of::<Envelope>()
        );
    }
}
