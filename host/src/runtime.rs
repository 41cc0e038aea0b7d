//! The actor runtime: actors as tasks with mailboxes, GenServer semantics, names,
//! monitors, links, timers and `sys`-style system messages.
//!
//! An actor runs one [`Behaviour`] (a loaded plugin's instance, or a host-native one) on
//! its own task on the actor [`executor`] (never on the caller's tokio runtime); callbacks
//! are synchronous, run one at a time on that task, and each has a deadline
//! ([`DEFAULT_CALLBACK_TIMEOUT`] unless its factory says otherwise). Callers reach it
//! through an [`ActorRef`] or its registered name, from any tokio runtime.
//!
//! Invariants (OTP's, kept here):
//! - A call waits at most its timeout (default [`DEFAULT_CALL_TIMEOUT`]); a reply that
//!   arrives later is dropped with its one-shot channel, never delivered to a later call.
//!   A caller sees a distinct error for timeout, not found, and exited (with the reason).
//! - System messages (`suspend`, `resume`, `get_state`, `format_status`, `status`,
//!   `change_code`, `replace_state`) are handled between callbacks. They have their own
//!   lane in the mailbox ([`mailbox`]): a waiting system message goes before the next
//!   ordinary one, so a `suspend` never waits behind a backlog of casts (and `get_state`
//!   or `status` shows the actor as of its last callback, not after what is still queued).
//!   Stops and links' exit signals stay in order with the messages sent before them.
//!   While suspended, other messages wait
//!   in order in a side queue and run first after `resume`; none is lost. `change_code` and
//!   `replace_state` are accepted only while suspended, and a failed one leaves the old
//!   behaviour and state in place.
//! - A mailbox is bounded when its actor has a `max_mailbox` (default unbounded, as in
//!   OTP). Its length — calls, casts and info messages not yet handled — is counted
//!   exactly by the senders (one atomic, incremented on send, decremented when the actor
//!   takes the message up), so a full mailbox refuses a call, a cast or an info message at
//!   once, without blocking the sender. System messages, stops, links' exit signals and
//!   monitors' `down` are neither counted nor refused: an upgrade or a stop never fails
//!   because a mailbox is full.
//! - Every runtime of the process is listed (weakly) for the metrics' mailbox walk, and an
//!   actor's exit goes to [`crate::metrics`]' history while metrics are on, before any of
//!   its watchers is told (so whoever reacts to the exit finds it there).
//! - A name is unique and freed when its actor exits; exit notifications (monitors,
//!   links, supervisors) are delivered exactly once, also to watchers added after the exit, and
//!   `ActorRef::exited` returns only once they have been (so an exit it then causes reaches
//!   a supervisor after this one).
//!
//! - A name is resolved here first ([`Runtime::route`]): a registered local name wins;
//!   only a name unknown here, or `name@other-host`, goes to the cluster ([`remote`]), when
//!   the host is in one. A `global` actor's name is registered here and cluster-wide before
//!   its task starts, and freed in both places when it exits.
//!
//! - A caller watches the callee's exit as well as its reply: an actor killed while a
//!   callback holds its thread (past its deadline) cannot drop the reply channels it
//!   holds, yet its callers hear of the exit at once.
//!
//! What is tricky: a callback that calls another actor blocks its runner thread; the
//! executor replaces that runner while it waits (the other tasks move elsewhere), and the
//! wait is bounded by the call's timeout: a cycle A → B → A ends in a timeout, never a
//! hang.

mod actor;
pub mod behaviour;
pub mod executor;
mod mailbox;
pub mod remote;

pub use actor::ActorStatus;
pub use behaviour::{Behaviour, BehaviourFactory, NativeFactory, PluginFactory, Started};
pub use remote::{Global, GlobalError, Remote, Target};

use crate::plugin::CallbackError;
use actor::{Envelope, SystemRequest};
use graft_plugin::{Down, StopReason, abi, codec};
use mailbox::Mailbox;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{Notify, mpsc, oneshot};

/// How long a call waits for its reply unless told otherwise (OTP's 5 s).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one callback may run before its actor is killed, unless its factory says
/// otherwise (a release's `callback_timeout_ms`).
pub const DEFAULT_CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);

/// `callback_timeout_ms` as stored: milliseconds, `u64::MAX` for none.
fn timeout_millis(timeout: Option<Duration>) -> u64 {
    timeout.map_or(u64::MAX, |timeout| {
        u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX - 1)
    })
}

/// A process's unique id (never reused within a host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessId(pub u64);

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// An exit, as delivered to a supervisor or other channel watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitNotice {
    /// Who exited.
    pub id: ProcessId,
    /// Why.
    pub reason: StopReason,
}

/// Who is told when a process exits.
pub(crate) enum Watcher {
    /// A monitor: the watcher gets a `down` info message.
    Monitor { monitor: u64, watcher: ActorRef },
    /// A link: the other actor gets an exit signal.
    Link(ActorRef),
    /// A channel (supervisors watch their children this way).
    Channel(mpsc::UnboundedSender<ExitNotice>),
}

/// A process's label: its registered name, or else its id in decimal, kept inline so that
/// an unnamed process needs no allocation for it.
pub(crate) enum Label {
    Name(String),
    Id { digits: [u8; 20], length: u8 },
}

impl Label {
    pub(crate) fn new(id: ProcessId, name: Option<String>) -> Label {
        match name {
            Some(name) => Label::Name(name),
            None => {
                let mut digits = [0u8; 20];
                let mut value = id.0;
                let mut start = digits.len();
                loop {
                    start -= 1;
                    digits[start] = b'0' + (value % 10) as u8;
                    value /= 10;
                    if value == 0 {
                        break;
                    }
                }
                digits.copy_within(start.., 0);
                Label::Id {
                    digits,
                    length: (digits.len() - start) as u8,
                }
            }
        }
    }

    /// The registered name, if any.
    pub(crate) fn name(&self) -> Option<&str> {
        match self {
            Label::Name(name) => Some(name),
            Label::Id { .. } => None,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Label::Name(name) => name,
            // Only ASCII digits are ever written there.
            Label::Id { digits, length } => {
                std::str::from_utf8(&digits[..usize::from(*length)]).unwrap_or_default()
            }
        }
    }
}

/// The exit of one process: set once, with its watchers.
pub(crate) struct Lifecycle {
    id: ProcessId,
    label: Label,
    exit: OnceLock<StopReason>,
    watchers: Mutex<Vec<Watcher>>,
    /// Set once every watcher of the exit has been told; [`Lifecycle::exited`] waits for
    /// it, so whoever saw `exited()` return knows the supervisor, monitors and links have
    /// their notices already (an exit it causes next reaches them after this one).
    told: std::sync::atomic::AtomicBool,
    exited: Notify,
}

impl Lifecycle {
    pub(crate) fn new(id: ProcessId, name: Option<String>) -> Lifecycle {
        Lifecycle {
            id,
            label: Label::new(id, name),
            exit: OnceLock::new(),
            watchers: Mutex::new(Vec::new()),
            told: std::sync::atomic::AtomicBool::new(false),
            exited: Notify::new(),
        }
    }

    pub(crate) fn id(&self) -> ProcessId {
        self.id
    }

    pub(crate) fn exit_reason(&self) -> Option<&StopReason> {
        self.exit.get()
    }

    /// Records the exit (the first one wins) and tells every watcher. Returns whether this
    /// call was the one that recorded it.
    pub(crate) fn finish(&self, reason: StopReason) -> bool {
        self.finish_then_tell(reason, |_| {})
    }

    /// [`Lifecycle::finish`], running `recorded` with the reason once it is recorded and
    /// before any watcher is told (what a watcher does next may depend on it: the metrics'
    /// exit history).
    pub(crate) fn finish_then_tell(
        &self,
        reason: StopReason,
        recorded: impl FnOnce(&StopReason),
    ) -> bool {
        let watchers = {
            let mut watchers = lock(&self.watchers);
            if self.exit.set(reason.clone()).is_err() {
                return false;
            }
            std::mem::take(&mut *watchers)
        };
        recorded(&reason);
        for watcher in watchers {
            self.deliver(watcher, &reason);
        }
        self.told.store(true, Ordering::Release);
        self.exited.notify_waiters();
        true
    }

    pub(crate) fn watch(&self, watcher: Watcher) {
        let mut watchers = lock(&self.watchers);
        match self.exit.get() {
            Some(reason) => {
                let reason = reason.clone();
                drop(watchers);
                self.deliver(watcher, &reason);
            }
            None => {
                // Most processes have one watcher (their supervisor): room for one, not
                // the four a first `push` would make.
                if watchers.capacity() == 0 {
                    watchers.reserve_exact(1);
                }
                watchers.push(watcher);
            }
        }
    }

    fn deliver(&self, watcher: Watcher, reason: &StopReason) {
        match watcher {
            Watcher::Monitor { monitor, watcher } => {
                let down = Down {
                    monitor,
                    actor: self.label.as_str().to_owned(),
                    reason: reason.clone(),
                };
                if let Ok(message) = codec::encode(&down) {
                    watcher.deliver(Envelope::Info {
                        kind: abi::INFO_DOWN,
                        message,
                    });
                }
            }
            Watcher::Link(other) => {
                other.deliver(Envelope::ExitSignal(Box::new(graft_plugin::Exit {
                    actor: self.label.as_str().to_owned(),
                    reason: reason.clone(),
                })));
            }
            Watcher::Channel(sender) => {
                let _ = sender.send(ExitNotice {
                    id: self.id,
                    reason: reason.clone(),
                });
            }
        }
    }

    /// Waits until the process has exited and every watcher has been told, and returns
    /// its reason.
    pub(crate) async fn exited(&self) -> StopReason {
        loop {
            let notified = self.exited.notified();
            if self.told.load(Ordering::Acquire)
                && let Some(reason) = self.exit.get()
            {
                return reason.clone();
            }
            notified.await;
        }
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

pub(crate) struct ActorShared {
    runtime: std::sync::Weak<RuntimeInner>,
    /// The two lanes (ordinary and system messages); allocates nothing until used.
    mailbox: Mailbox,
    /// Calls, casts and info messages sent and not yet taken up by the actor (waiting in
    /// the channel, in the side queue while suspended, or gathered ahead of their turn).
    mailbox_length: AtomicUsize,
    /// The largest `mailbox_length` since the actor started.
    mailbox_high_water: AtomicUsize,
    /// The bound on `mailbox_length` for calls, casts and info messages (`usize::MAX`:
    /// unbounded).
    max_mailbox: AtomicUsize,
    /// Calls, casts and info messages refused (or, by [`ActorRef::cast`], dropped) at the
    /// bound.
    mailbox_refused: AtomicU64,
    /// Casts and info messages dropped because the actor could not decode them.
    undecodable_messages: AtomicU64,
    pub(crate) lifecycle: Lifecycle,
    /// The actor's task on the executor; dropping it cancels the task.
    task: Mutex<Option<async_task::Task<()>>>,
    /// The deadline of each callback, in milliseconds (`u64::MAX`: none).
    callback_timeout_ms: AtomicU64,
    /// "plugin version" of the code the actor runs, for timeout reasons and reports.
    code_label: Mutex<Arc<str>>,
    /// Frees the thread of a callback killed at its deadline, when the behaviour can
    /// (a process-isolated one closes its connection to the worker).
    interrupt: Mutex<Option<Interrupt>>,
    /// Whether its name is registered cluster-wide (freed there when it exits).
    global: std::sync::atomic::AtomicBool,
}

/// Frees the thread of a callback that was abandoned (see [`ActorRef::set_interrupt`]).
pub type Interrupt = Arc<dyn Fn() + Send + Sync>;

/// A handle on an actor: send it messages, call it, watch it. Cheap to clone.
#[derive(Clone)]
pub struct ActorRef {
    shared: Arc<ActorShared>,
}

impl fmt::Debug for ActorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorRef({})", self.label())
    }
}

impl PartialEq for ActorRef {
    fn eq(&self, other: &ActorRef) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

/// A call failed. Timeout, not found and exited are told apart, as in OTP.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallError {
    /// No actor has this name.
    #[error("no actor named {0:?}")]
    NotFound(String),
    /// No reply within the timeout (the request may still be handled later).
    #[error("call to {actor} timed out after {timeout:?}")]
    Timeout {
        /// The actor.
        actor: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The actor exited before replying.
    #[error("{actor} exited: {reason}")]
    Exited {
        /// The actor.
        actor: String,
        /// Its exit reason.
        reason: StopReason,
    },
    /// The request did not decode as the actor's call type; the actor is unharmed.
    #[error("{actor} refused the request: {message}")]
    BadRequest {
        /// The actor.
        actor: String,
        /// Why.
        message: String,
    },
    /// An actor called itself (it would wait for itself forever).
    #[error("{0} called itself")]
    CallingSelf(String),
    /// The actor's mailbox is at its `max_mailbox`: the request was not sent.
    #[error("mailbox of actor {actor} is full (max_mailbox = {limit})")]
    MailboxFull {
        /// The actor.
        actor: String,
        /// Its `max_mailbox`.
        limit: usize,
    },
    /// The actor is on another host of the cluster, which is down (OTP's `nodedown`).
    #[error("{actor} is on host {host}, which is down")]
    HostDown {
        /// The actor.
        actor: String,
        /// Its host.
        host: String,
    },
    /// The actor is on another host and the cluster's server cannot be reached: the
    /// request was not sent.
    #[error("cannot reach {actor}: {why}")]
    Unreachable {
        /// The actor.
        actor: String,
        /// Why.
        why: String,
    },
}

/// A cast or info message was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CastError {
    /// The actor's mailbox is at its `max_mailbox`: the message was not sent.
    #[error("mailbox of actor {actor} is full (max_mailbox = {limit})")]
    MailboxFull {
        /// The actor.
        actor: String,
        /// Its `max_mailbox`.
        limit: usize,
    },
}

/// A message could not be sent.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No actor has this name.
    #[error("no actor named {0:?}")]
    NotFound(String),
    /// The actor's mailbox is at its `max_mailbox`: the message was not sent.
    #[error(transparent)]
    Refused(#[from] CastError),
    /// The actor is on another host, and the cluster refused or could not send it.
    #[error(transparent)]
    Remote(crate::plugin::ServiceError),
}

/// `try_stop` of an actor that has already exited (OTP's `noproc`).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("no such process: actor {actor} has already exited ({reason})")]
pub struct NoSuchProcess {
    /// The actor (its name, or its process id).
    pub actor: String,
    /// Why it exited.
    pub reason: StopReason,
}

/// An actor could not be started.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpawnError {
    /// The name is registered to a live actor.
    #[error("the name {0:?} is already registered")]
    NameTaken(String),
    /// `init` failed.
    #[error("starting {actor}: {error}")]
    InitFailed {
        /// The actor.
        actor: String,
        /// The callback error.
        error: Box<CallbackError>,
    },
    /// `init` declined to start (OTP's `ignore`): no actor runs, and its name is free.
    #[error("{actor} declined to start (ignore)")]
    Ignored {
        /// The actor.
        actor: String,
    },
    /// `init` asked to stop (OTP's `{stop, Reason}` from a host-native behaviour), or the
    /// actor was killed during `init` (its deadline). No `terminate` ran; the name is free.
    #[error("{actor} stopped during start: {reason}")]
    Stopped {
        /// The actor.
        actor: String,
        /// Its reason.
        reason: StopReason,
    },
    /// The name is global and another host of the cluster holds it, or the cluster could
    /// not register it.
    #[error("starting {actor}: {error}")]
    Global {
        /// The actor.
        actor: String,
        /// Why the global registration failed.
        #[source]
        error: GlobalError,
    },
}

/// A system request (`suspend`, `change_code`, …) failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SystemError {
    /// No actor has this name.
    #[error("no actor named {0:?}")]
    NotFound(String),
    /// The actor did not answer in time (it may be stuck in a long callback).
    #[error("{actor} did not answer {request} within {timeout:?}")]
    Timeout {
        /// The actor.
        actor: String,
        /// The request.
        request: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// The actor exited.
    #[error("{actor} exited: {reason}")]
    Exited {
        /// The actor.
        actor: String,
        /// Its reason.
        reason: StopReason,
    },
    /// `change_code` needs the actor suspended first.
    #[error("{0} is not suspended; change_code is only accepted while suspended")]
    NotSuspended(String),
    /// The migration failed; the actor keeps its old code and state.
    #[error("change_code of {actor} failed: {message}")]
    ChangeCodeFailed {
        /// The actor.
        actor: String,
        /// Why.
        message: String,
    },
    /// A request accepted only while suspended (`replace_state`) came while running.
    #[error("{actor} is not suspended; {request} is only accepted while suspended")]
    NotSuspendedFor {
        /// The actor.
        actor: String,
        /// The request.
        request: &'static str,
    },
    /// `replace_state` failed (the bytes did not decode as the plugin's state, or the
    /// behaviour has no plugin); the actor keeps its state.
    #[error("replace_state of {actor} failed: {message}; it keeps its state")]
    ReplaceStateFailed {
        /// The actor.
        actor: String,
        /// Why.
        message: String,
    },
    /// The state could not be read.
    #[error("cannot read the state of {actor}: {message}")]
    State {
        /// The actor.
        actor: String,
        /// Why.
        message: String,
    },
}

/// A code change to run inside a suspended actor: receives the current behaviour and
/// returns its replacement (`None`: keep it), or an error (the current one then stays).
pub type Migration =
    Box<dyn FnOnce(&mut Box<dyn Behaviour>) -> Result<Option<Box<dyn Behaviour>>, String> + Send>;

impl ActorRef {
    /// The process id.
    pub fn id(&self) -> ProcessId {
        self.shared.lifecycle.id
    }

    /// A key unique among the actors alive in this process, whatever their `Runtime`
    /// (process ids repeat across runtimes): the address of the actor's shared state,
    /// which cannot be reused while any handle, this one included, keeps it alive.
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// The registered name, if any.
    pub fn name(&self) -> Option<&str> {
        self.shared.lifecycle.label.name()
    }

    /// The name, or the id when unnamed.
    pub fn label(&self) -> String {
        self.shared.lifecycle.label.as_str().to_owned()
    }

    /// Calls, casts and info messages waiting in the mailbox (also those waiting while
    /// suspended), exactly: counted by the senders, and by the actor as it takes each one
    /// up. System messages are not counted.
    pub fn mailbox_length(&self) -> usize {
        self.shared.mailbox_length.load(Ordering::Relaxed)
    }

    /// The largest mailbox length since the actor started.
    pub fn mailbox_high_water(&self) -> usize {
        self.shared.mailbox_high_water.load(Ordering::Relaxed)
    }

    /// The bound on its mailbox (`None`: unbounded).
    pub fn max_mailbox(&self) -> Option<usize> {
        match self.shared.max_mailbox.load(Ordering::Relaxed) {
            usize::MAX => None,
            limit => Some(limit),
        }
    }

    /// Changes the bound on its mailbox (`None`: unbounded). Messages already queued stay;
    /// new ones are refused while the length is at or over the bound.
    pub fn set_max_mailbox(&self, limit: Option<usize>) {
        self.shared
            .max_mailbox
            .store(limit.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// How many calls, casts and info messages were refused (or dropped) at the bound.
    pub fn mailbox_refused(&self) -> u64 {
        self.shared.mailbox_refused.load(Ordering::Relaxed)
    }

    /// Casts and info messages dropped because the actor could not decode them (the
    /// sender of a cast is not told: it was queued, not handled).
    pub fn undecodable_messages(&self) -> u64 {
        self.shared.undecodable_messages.load(Ordering::Relaxed)
    }

    /// Counts a message dropped because the actor could not decode it.
    pub(crate) fn count_undecodable(&self) {
        self.shared
            .undecodable_messages
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The exit reason, once exited.
    pub fn exit_reason(&self) -> Option<StopReason> {
        self.shared.lifecycle.exit_reason().cloned()
    }

    /// Whether the actor is still running.
    pub fn is_alive(&self) -> bool {
        self.shared.lifecycle.exit_reason().is_none()
    }

    /// Waits for the actor to exit and returns its reason.
    pub async fn exited(&self) -> StopReason {
        self.shared.lifecycle.exited().await
    }

    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        &self.shared.lifecycle
    }

    /// The deadline of each of its callbacks (`None`: no deadline).
    pub fn callback_timeout(&self) -> Option<Duration> {
        match self.shared.callback_timeout_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            milliseconds => Some(Duration::from_millis(milliseconds)),
        }
    }

    /// Changes the deadline of its callbacks (an install does, for the new release's
    /// `callback_timeout_ms`); the callback in progress keeps the deadline it began with.
    pub fn set_callback_timeout(&self, timeout: Option<Duration>) {
        self.shared
            .callback_timeout_ms
            .store(timeout_millis(timeout), Ordering::Relaxed);
    }

    /// The plugin and version it runs (`native` for host-native behaviours).
    pub fn code_label(&self) -> String {
        lock(&self.shared.code_label).to_string()
    }

    pub(crate) fn set_code_label(&self, label: Arc<str>) {
        *lock(&self.shared.code_label) = label;
    }

    /// Registers how to free the thread of a callback of this actor once the actor has
    /// been killed at the callback's deadline (a behaviour calls it from `attach`). An
    /// in-process callback cannot be freed; a process-isolated one can: its connection is
    /// closed and the worker keeps the stuck thread.
    pub fn set_interrupt(&self, interrupt: Option<Interrupt>) {
        *lock(&self.shared.interrupt) = interrupt;
    }

    /// Runs the registered interrupt, if any.
    pub(crate) fn interrupt(&self) {
        let interrupt = lock(&self.shared.interrupt).clone();
        if let Some(interrupt) = interrupt {
            interrupt();
        }
    }

    /// Queues a message that is neither counted nor refused (stops, links' exit signals,
    /// monitors' `down`; see [`Envelope::is_counted`]). Returns whether the actor's
    /// mailbox is still open.
    fn deliver(&self, envelope: Envelope) -> bool {
        debug_assert!(!envelope.is_counted());
        self.shared.mailbox.send(envelope).is_ok()
    }

    /// Queues a system message on its own lane, ahead of every ordinary message still
    /// queued. Returns whether the actor's mailbox is still open.
    fn deliver_system(&self, request: SystemRequest) -> bool {
        self.shared.mailbox.send_system(request).is_ok()
    }

    /// Queues a call, cast or info message of the plugin's own type unless the mailbox is
    /// at its bound. Returns whether the actor's mailbox is still open.
    fn deliver_bounded(&self, envelope: Envelope) -> Result<bool, CastError> {
        let limit = self.shared.max_mailbox.load(Ordering::Relaxed);
        let previous = if limit == usize::MAX {
            self.shared.mailbox_length.fetch_add(1, Ordering::Relaxed)
        } else {
            // Reserve a place only below the bound: the length never passes it for these
            // messages, and a refusal costs the sender nothing but this.
            self.shared
                .mailbox_length
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |length| {
                    (length < limit).then_some(length + 1)
                })
                .map_err(|_| {
                    self.shared.mailbox_refused.fetch_add(1, Ordering::Relaxed);
                    if crate::metrics::is_enabled() {
                        crate::metrics::history::count_lost(1);
                    }
                    CastError::MailboxFull {
                        actor: self.label(),
                        limit,
                    }
                })?
        };
        self.raise_high_water(previous + 1);
        Ok(self.send_counted(envelope))
    }

    /// Sends an envelope already counted in the mailbox length; uncounts it if the
    /// mailbox is closed (the actor has exited).
    fn send_counted(&self, envelope: Envelope) -> bool {
        debug_assert!(envelope.is_counted());
        let sent = self.shared.mailbox.send(envelope).is_ok();
        if !sent {
            self.shared.mailbox_length.fetch_sub(1, Ordering::Relaxed);
        }
        sent
    }

    fn raise_high_water(&self, length: usize) {
        // A load first: the shared line is written only when the mark moves.
        if length > self.shared.mailbox_high_water.load(Ordering::Relaxed) {
            self.shared
                .mailbox_high_water
                .fetch_max(length, Ordering::Relaxed);
        }
    }

    /// The actor took `count` messages up (out of every queue); returns the length
    /// before.
    pub(crate) fn taken_from_mailbox(&self, count: usize) -> usize {
        let previous = self
            .shared
            .mailbox_length
            .fetch_sub(count, Ordering::Relaxed);
        debug_assert!(previous >= count, "mailbox length {previous} < {count}");
        previous
    }

    /// Messages the actor took up and put back unhandled (the rest of a cast batch).
    pub(crate) fn returned_to_mailbox(&self, count: usize) {
        self.shared
            .mailbox_length
            .fetch_add(count, Ordering::Relaxed);
    }

    /// Counts and logs a message dropped at the bound by a sender that cannot be told.
    fn dropped(&self, error: &CastError) {
        let refused = self.mailbox_refused();
        // Logged at the first drop and then at each power of two, so a flood does not
        // become a flood of warnings.
        if refused.is_power_of_two() {
            tracing::warn!(actor = %self.label(), refused, "message dropped: {error}");
        }
    }

    /// The exit reason, or OTP's `noproc` when the actor is gone without one recorded yet.
    fn exit_reason_or_noproc(&self) -> StopReason {
        self.exit_reason()
            .unwrap_or_else(|| StopReason::Error("noproc".to_owned()))
    }

    fn exited_error(&self) -> CallError {
        CallError::Exited {
            actor: self.label(),
            reason: self.exit_reason_or_noproc(),
        }
    }

    /// Calls the actor with an encoded request and waits at most `timeout` for the reply.
    /// A call over the mailbox's bound fails at once with [`CallError::MailboxFull`].
    pub async fn call(&self, request: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, CallError> {
        let mut receiver = self.start_call(request)?;
        match executor::spin_for(&mut receiver, executor::SPIN_FOR_ANSWER) {
            Some(Some(result)) => return result,
            Some(None) => return Err(self.exited_error()),
            None => {}
        }
        // Only a call not answered during the spin (or made from the pool, where the callee
        // needs this very thread) arms a timer and watches the exit: a caller off the pool
        // answered while it spun pays for neither. (Measured with the runtime bench: a
        // caller on the pool pays about 0.2 µs for the timer.)
        // The exit is watched too: an actor killed while a callback holds its thread (its
        // deadline passed) never drops this call's reply channel, but the caller hears of
        // the exit at once, as an OTP caller does through its monitor.
        tokio::select! {
            biased;
            answer = tokio::time::timeout(timeout, &mut receiver) => match answer {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(self.exited_error()),
                Err(_) => Err(CallError::Timeout {
                    actor: self.label(),
                    timeout,
                }),
            },
            // A reply sent before the exit wins even when the receiver was not polled:
            // tokio's cooperative budget makes a ready receiver answer `Pending` once the
            // task has used its budget (an actor that replies and then stops, say).
            reason = self.exited() => match receiver.try_recv() {
                Ok(result) => result,
                Err(_) => Err(CallError::Exited {
                    actor: self.label(),
                    reason,
                }),
            },
        }
    }

    /// Delivers a call now and returns where its reply will come; waiting (with a
    /// timeout) is the caller's. Refused at once over the mailbox's bound, or when the
    /// actor has exited. A dropped receiver drops the reply, as a timed-out call's.
    pub fn start_call(
        &self,
        request: Vec<u8>,
    ) -> Result<oneshot::Receiver<Result<Vec<u8>, CallError>>, CallError> {
        let (reply, receiver) = oneshot::channel();
        match self.deliver_bounded(Envelope::Call { request, reply }) {
            Ok(true) => Ok(receiver),
            Ok(false) => Err(self.exited_error()),
            Err(CastError::MailboxFull { actor, limit }) => {
                Err(CallError::MailboxFull { actor, limit })
            }
        }
    }

    /// Delivers an info message of a host-made kind (`abi::INFO_DOWN`,
    /// `abi::INFO_HOST_UP`, …): neither counted nor refused, like a local monitor's
    /// `down`. Returns whether the actor's mailbox is still open.
    pub fn deliver_info_uncounted(&self, kind: u32, message: Vec<u8>) -> bool {
        self.deliver(Envelope::Info { kind, message })
    }

    /// Sends an encoded cast, refused at once when the mailbox is at its `max_mailbox`.
    /// Like OTP's, it succeeds even if the actor has exited.
    pub fn try_cast(&self, message: Vec<u8>) -> Result<(), CastError> {
        self.deliver_bounded(Envelope::Cast(message)).map(drop)
    }

    /// Sends an encoded cast and never fails, as OTP's does. Over the mailbox's
    /// `max_mailbox` the cast is dropped — counted in [`ActorRef::mailbox_refused`] and
    /// logged, never silently; use [`ActorRef::try_cast`] to hear of it.
    pub fn cast(&self, message: Vec<u8>) {
        if let Err(error) = self.try_cast(message) {
            self.dropped(&error);
        }
    }

    /// Sends an encoded info message of the plugin's own `Info` type, refused at once when
    /// the mailbox is at its `max_mailbox`.
    pub fn try_send_info(&self, message: Vec<u8>) -> Result<(), CastError> {
        self.deliver_bounded(Envelope::Info {
            kind: abi::INFO_MESSAGE,
            message,
        })
        .map(drop)
    }

    /// Sends an encoded info message of the plugin's own `Info` type (a timer's, say);
    /// over the bound it is dropped, counted and logged, as [`ActorRef::cast`] does.
    pub fn send_info(&self, message: Vec<u8>) {
        if let Err(error) = self.try_send_info(message) {
            self.dropped(&error);
        }
    }

    async fn system<T>(
        &self,
        request: &'static str,
        timeout: Duration,
        build: impl FnOnce(oneshot::Sender<T>) -> SystemRequest,
    ) -> Result<T, SystemError> {
        let (reply, mut receiver) = oneshot::channel();
        if !self.deliver_system(build(reply)) {
            return Err(self.exited_system_error());
        }
        tokio::select! {
            biased;
            answer = tokio::time::timeout(timeout, &mut receiver) => match answer {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(_)) => Err(self.exited_system_error()),
                Err(_) => Err(SystemError::Timeout {
                    actor: self.label(),
                    request,
                    timeout,
                }),
            },
            // An answer sent before the exit wins (see `call`).
            reason = self.exited() => match receiver.try_recv() {
                Ok(value) => Ok(value),
                Err(_) => Err(SystemError::Exited {
                    actor: self.label(),
                    reason,
                }),
            },
        }
    }

    fn exited_system_error(&self) -> SystemError {
        SystemError::Exited {
            actor: self.label(),
            reason: self.exit_reason_or_noproc(),
        }
    }

    /// Suspends the actor: after the callback in progress, only system messages run.
    pub async fn suspend(&self, timeout: Duration) -> Result<(), SystemError> {
        self.system("suspend", timeout, SystemRequest::Suspend)
            .await
    }

    /// Resumes a suspended actor: messages that waited run first, in order.
    pub async fn resume(&self, timeout: Duration) -> Result<(), SystemError> {
        self.system("resume", timeout, SystemRequest::Resume).await
    }

    /// The state as JSON (a debugging view, like `sys:get_state`).
    pub async fn get_state(&self, timeout: Duration) -> Result<serde_json::Value, SystemError> {
        self.system("get_state", timeout, SystemRequest::GetState)
            .await?
    }

    /// What operators see of the state, as JSON (like the state part of `sys:get_status`,
    /// through the plugin's `format_status`, which may redact secrets); the state itself
    /// when the behaviour has no `format_status` (an ABI 1.0 plugin).
    pub async fn format_status(&self, timeout: Duration) -> Result<serde_json::Value, SystemError> {
        self.system("format_status", timeout, SystemRequest::FormatStatus)
            .await?
    }

    /// Replaces the state with `state`, encoded in the wire format (MessagePack) in the
    /// shape of the plugin's own state, as `sys:replace_state` does; accepted only while
    /// suspended ([`SystemError::NotSuspendedFor`]). The plugin decodes it as it decodes a
    /// snapshot (`restore_state`); a state that does not decode leaves the old one in place
    /// ([`SystemError::ReplaceStateFailed`]).
    pub async fn replace_state(
        &self,
        state: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), SystemError> {
        self.system("replace_state", timeout, |reply| {
            SystemRequest::ReplaceState { state, reply }
        })
        .await?
    }

    /// The actor's status (like `sys:get_status`).
    pub async fn status(&self, timeout: Duration) -> Result<ActorStatus, SystemError> {
        self.system("status", timeout, SystemRequest::Status).await
    }

    /// Runs a migration inside the suspended actor (like `sys:change_code`).
    pub async fn change_code(
        &self,
        migration: Migration,
        timeout: Duration,
    ) -> Result<(), SystemError> {
        self.system("change_code", timeout, |reply| SystemRequest::ChangeCode {
            migration,
            reply,
        })
        .await?
    }

    /// Asks the actor to stop: `terminate` runs, then it exits with `reason`. Waits at most
    /// `timeout` for the exit, then kills it (as a supervisor's shutdown timeout does).
    pub async fn stop(&self, reason: StopReason, timeout: Option<Duration>) -> StopReason {
        if self.deliver(Envelope::Stop { reason }) {
            match timeout {
                Some(timeout) => {
                    if let Ok(reason) = tokio::time::timeout(timeout, self.exited()).await {
                        return reason;
                    }
                    self.kill();
                }
                None => return self.exited().await,
            }
        }
        self.exited().await
    }

    /// `stop`, for an actor that should be alive: one that has already exited answers
    /// [`NoSuchProcess`] (OTP's `gen_server:stop` exits with `noproc`) instead of its old
    /// exit reason.
    pub async fn try_stop(
        &self,
        reason: StopReason,
        timeout: Option<Duration>,
    ) -> Result<StopReason, NoSuchProcess> {
        if let Some(exited) = self.exit_reason() {
            return Err(NoSuchProcess {
                actor: self.shared.lifecycle.label.as_str().to_owned(),
                reason: exited,
            });
        }
        Ok(self.stop(reason, timeout).await)
    }

    /// Kills the actor at once, without `terminate` (`brutal_kill`). A callback in progress
    /// cannot be interrupted; the actor is dead to everyone else immediately.
    pub fn kill(&self) {
        self.kill_with(StopReason::Error("killed".to_owned()));
    }

    /// Kills the actor at once with `reason`, without `terminate`: how a callback past its
    /// deadline or a crashed worker process ends an actor. Returns whether this call was
    /// the one that ended it.
    pub fn kill_with(&self, reason: StopReason) -> bool {
        // Dropping the task cancels it: at its next await, or, when a callback is
        // running, as soon as that callback returns (a stuck one keeps its thread).
        drop(lock(&self.shared.task).take());
        // The name is freed before watchers hear of the exit, so a supervisor restarting
        // the actor can register it again at once.
        if let Some(inner) = self.shared.runtime.upgrade() {
            Runtime { inner }.unregister(self);
        }
        self.finish(reason)
    }

    /// Records the actor's exit (the first one wins) and tells its watchers; while metrics
    /// are on, the exit and the messages it left queued go to [`crate::metrics::history`].
    pub(crate) fn finish(&self, reason: StopReason) -> bool {
        self.shared.lifecycle.finish_then_tell(reason, |reason| {
            // Before the watchers: a supervisor that restarts the actor, or a test that
            // waits for its exit, finds the exit in the history already.
            if crate::metrics::is_enabled() {
                crate::metrics::history::actor_exited(
                    self.shared.lifecycle.label.as_str(),
                    reason,
                    self.mailbox_length(),
                );
            }
        })
    }
}

/// System requests sent to many actors, whose answers are still to be collected.
struct PendingReplies<T> {
    actors: Vec<ActorRef>,
    receivers: Vec<Option<oneshot::Receiver<T>>>,
    request: &'static str,
}

impl<T> PendingReplies<T> {
    fn send(
        actors: &[ActorRef],
        request: &'static str,
        mut build: impl FnMut(usize, oneshot::Sender<T>) -> SystemRequest,
    ) -> PendingReplies<T> {
        let receivers = actors
            .iter()
            .enumerate()
            .map(|(index, actor)| {
                let (reply, receiver) = oneshot::channel();
                actor
                    .deliver_system(build(index, reply))
                    .then_some(receiver)
            })
            .collect();
        PendingReplies {
            actors: actors.to_vec(),
            receivers,
            request,
        }
    }

    /// Collects every answer within `timeout` (one timer for the whole batch); an answer
    /// that has not arrived by then is a timeout. One result per actor, in order.
    async fn collect(self, timeout: Duration) -> Vec<Result<T, SystemError>> {
        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        let mut results = Vec::with_capacity(self.actors.len());
        for (actor, receiver) in self.actors.iter().zip(self.receivers) {
            let timed_out = || SystemError::Timeout {
                actor: actor.label(),
                request: self.request,
                timeout,
            };
            let Some(mut receiver) = receiver else {
                results.push(Err(actor.exited_system_error()));
                continue;
            };
            let result = if sleep.is_elapsed() {
                match receiver.try_recv() {
                    Ok(value) => Ok(value),
                    Err(oneshot::error::TryRecvError::Empty) => Err(timed_out()),
                    Err(oneshot::error::TryRecvError::Closed) => Err(actor.exited_system_error()),
                }
            } else {
                tokio::select! {
                    biased;
                    value = &mut receiver => value.map_err(|_| actor.exited_system_error()),
                    _ = &mut sleep => match receiver.try_recv() {
                        Ok(value) => Ok(value),
                        Err(_) => Err(timed_out()),
                    },
                }
            };
            results.push(result);
        }
        results
    }
}

/// Sends `suspend` to every actor at once; collect the answers later.
fn send_suspend_all(actors: &[ActorRef]) -> PendingReplies<()> {
    PendingReplies::send(actors, "suspend", |_, reply| SystemRequest::Suspend(reply))
}

/// Sends `resume` to every actor at once; collect the answers later.
fn send_resume_all(actors: &[ActorRef]) -> PendingReplies<()> {
    PendingReplies::send(actors, "resume", |_, reply| SystemRequest::Resume(reply))
}

/// Sends `change_code` with one migration per actor at once; collect the answers later.
/// Sent right behind a `suspend`, it runs as soon as that actor is suspended.
fn send_change_code_all(
    actors: &[ActorRef],
    migrations: Vec<Migration>,
) -> PendingReplies<Result<(), SystemError>> {
    let mut migrations: Vec<Option<Migration>> = migrations.into_iter().map(Some).collect();
    PendingReplies::send(actors, "change_code", |index, reply| {
        SystemRequest::ChangeCode {
            migration: migrations[index].take().expect("one migration per actor"),
            reply,
        }
    })
}

/// Suspends many actors at once under one deadline; one result per actor, in order.
pub async fn suspend_all(actors: &[ActorRef], timeout: Duration) -> Vec<Result<(), SystemError>> {
    send_suspend_all(actors).collect(timeout).await
}

/// Asks many actors for their status at once under one deadline (an actor busy in a long
/// callback answers with a timeout); one result per actor, in order.
pub async fn status_all(
    actors: &[ActorRef],
    timeout: Duration,
) -> Vec<Result<ActorStatus, SystemError>> {
    PendingReplies::send(actors, "status", |_, reply| SystemRequest::Status(reply))
        .collect(timeout)
        .await
}

/// Resumes many actors at once under one deadline; one result per actor, in order.
pub async fn resume_all(actors: &[ActorRef], timeout: Duration) -> Vec<Result<(), SystemError>> {
    send_resume_all(actors).collect(timeout).await
}

/// Runs a migration in each (suspended) actor at once under one deadline; one result per
/// actor, in order.
pub async fn change_code_all(
    actors: &[ActorRef],
    migrations: Vec<Migration>,
    timeout: Duration,
) -> Vec<Result<(), SystemError>> {
    flatten(
        send_change_code_all(actors, migrations)
            .collect(timeout)
            .await,
    )
}

/// Sends `suspend` to every actor at once and returns the wait for their answers under one
/// deadline: the requests are sent by this call, whether or not the wait is ever awaited
/// (so a `change_code` queued next lands behind each actor's suspend).
pub fn queue_suspend_all(
    actors: &[ActorRef],
    timeout: Duration,
) -> impl std::future::Future<Output = Vec<Result<(), SystemError>>> + Send + 'static {
    let pending = send_suspend_all(actors);
    async move { pending.collect(timeout).await }
}

/// Queues a migration in each actor at once (on its system lane: behind the system
/// messages already queued there, ahead of ordinary messages) and
/// returns the wait for their answers under one deadline: the requests are sent by this
/// call, whether or not the wait is ever awaited.
pub fn queue_change_code_all(
    actors: &[ActorRef],
    migrations: Vec<Migration>,
    timeout: Duration,
) -> impl std::future::Future<Output = Vec<Result<(), SystemError>>> + Send + 'static {
    let pending = send_change_code_all(actors, migrations);
    async move { flatten(pending.collect(timeout).await) }
}

/// Merges a change_code's own result into the request's.
fn flatten(
    results: Vec<Result<Result<(), SystemError>, SystemError>>,
) -> Vec<Result<(), SystemError>> {
    results
        .into_iter()
        .map(|result| result.and_then(|inner| inner))
        .collect()
}

/// How to start an actor.
#[derive(Clone)]
pub struct ActorOptions {
    /// A unique name to register, if any.
    pub name: Option<String>,
    /// Creates the behaviour.
    pub factory: Arc<dyn BehaviourFactory>,
    /// Encoded start arguments.
    pub args: Vec<u8>,
    /// Whether exit signals from links arrive as `exit` info messages instead of
    /// stopping the actor.
    pub trap_exit: bool,
    /// How many times this child has been restarted (shown in `status`).
    pub restarts: u32,
    /// The most calls, casts and info messages its mailbox holds (`None`: unbounded).
    pub max_mailbox: Option<usize>,
    /// Whether its name is registered cluster-wide (needs a name).
    pub global: Global,
}

impl ActorOptions {
    /// Options with just a factory and encoded arguments.
    pub fn new(factory: Arc<dyn BehaviourFactory>, args: Vec<u8>) -> ActorOptions {
        ActorOptions {
            name: None,
            factory,
            args,
            trap_exit: false,
            restarts: 0,
            max_mailbox: None,
            global: Global::No,
        }
    }

    /// Registers the actor under `name`.
    pub fn named(mut self, name: impl Into<String>) -> ActorOptions {
        self.name = Some(name.into());
        self
    }

    /// Bounds the actor's mailbox at `limit` calls, casts and info messages.
    pub fn max_mailbox(mut self, limit: usize) -> ActorOptions {
        self.max_mailbox = Some(limit);
        self
    }
}

/// Something registered under a name.
#[derive(Clone)]
pub(crate) enum Registered {
    Actor(ActorRef),
    Supervisor(crate::supervisor::SupervisorRef),
}

pub(crate) struct RuntimeInner {
    registry: Mutex<HashMap<String, Registered>>,
    next_id: AtomicU64,
    next_monitor: AtomicU64,
    pub(crate) next_timer: AtomicU64,
    /// The cluster this runtime's host belongs to, once attached.
    remote: OnceLock<Arc<dyn Remote>>,
}

/// Where a message to a name goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// An actor of this runtime.
    Local(ActorRef),
    /// An actor on another host of the cluster (or a global name this host does not hold).
    Remote(Target),
}

/// The actor runtime: spawns actors, keeps the name registry. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl Default for Runtime {
    fn default() -> Runtime {
        Runtime::new()
    }
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

/// Every runtime of the process that is still alive, for the metrics' mailbox walk.
static RUNTIMES: Mutex<Vec<std::sync::Weak<RuntimeInner>>> = Mutex::new(Vec::new());

/// The named actors of every runtime in the process (what `/metrics` walks for mailbox
/// lengths).
pub(crate) fn named_actors_everywhere() -> Vec<ActorRef> {
    let runtimes: Vec<Arc<RuntimeInner>> = lock(&RUNTIMES)
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect();
    runtimes
        .iter()
        .flat_map(|inner| {
            lock(&inner.registry)
                .values()
                .filter_map(|entry| match entry {
                    Registered::Actor(actor) => Some(actor.clone()),
                    Registered::Supervisor(_) => None,
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

impl Runtime {
    /// A runtime with an empty registry. Actors run on the current tokio runtime.
    pub fn new() -> Runtime {
        let inner = Arc::new(RuntimeInner {
            registry: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            next_monitor: AtomicU64::new(1),
            next_timer: AtomicU64::new(1),
            remote: OnceLock::new(),
        });
        let mut runtimes = lock(&RUNTIMES);
        runtimes.retain(|runtime| runtime.strong_count() > 0);
        runtimes.push(Arc::downgrade(&inner));
        drop(runtimes);
        Runtime { inner }
    }

    /// How many processes (actors and supervisors) this runtime has started so far.
    pub fn processes_started(&self) -> u64 {
        self.inner.next_id.load(Ordering::Relaxed) - 1
    }

    pub(crate) fn next_id(&self) -> ProcessId {
        ProcessId(self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh monitor id (local and remote monitors share the sequence).
    pub fn next_monitor_id(&self) -> u64 {
        self.inner.next_monitor.fetch_add(1, Ordering::Relaxed)
    }

    /// Attaches the cluster this host belongs to; once, before anything global starts.
    /// Returns `false` (and changes nothing) if one is attached already.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) -> bool {
        self.inner.remote.set(remote).is_ok()
    }

    /// The cluster this host belongs to, if any.
    pub fn remote(&self) -> Option<&Arc<dyn Remote>> {
        self.inner.remote.get()
    }

    /// Where a message to `to` (`name` or `name@host`) goes: a local registration wins
    /// (for `name@<this host>` too); otherwise the cluster, if this host is in one;
    /// otherwise nowhere (`None`: not found).
    pub fn route(&self, to: &str) -> Option<Route> {
        let remote = self.remote();
        let target = if to.contains('@') {
            Target::parse(to)
        } else {
            return match self.whereis(to) {
                Some(actor) => Some(Route::Local(actor)),
                None => remote.map(|_| {
                    Route::Remote(Target {
                        name: to.to_owned(),
                        host: None,
                    })
                }),
            };
        };
        let here = match (&target.host, remote) {
            (Some(host), Some(remote)) => host == remote.this_host(),
            (Some(_), None) => false,
            (None, _) => true,
        };
        if here {
            return self.whereis(&target.name).map(Route::Local);
        }
        remote.map(|_| Route::Remote(target))
    }

    /// Starts an actor and waits for its `init` to finish, as OTP's `start_link` does; a
    /// continuation `init` asked for runs after the start has answered (OTP's
    /// `{continue, _}`). A failed start answers only once the name is free again.
    pub async fn spawn(&self, options: ActorOptions) -> Result<ActorRef, SpawnError> {
        let id = self.next_id();
        let actor = ActorRef {
            shared: Arc::new(ActorShared {
                runtime: Arc::downgrade(&self.inner),
                mailbox: Mailbox::new(),
                mailbox_length: AtomicUsize::new(0),
                mailbox_high_water: AtomicUsize::new(0),
                max_mailbox: AtomicUsize::new(options.max_mailbox.unwrap_or(usize::MAX)),
                mailbox_refused: AtomicU64::new(0),
                undecodable_messages: AtomicU64::new(0),
                lifecycle: Lifecycle::new(id, options.name.clone()),
                task: Mutex::new(None),
                callback_timeout_ms: AtomicU64::new(timeout_millis(
                    options.factory.callback_timeout(),
                )),
                interrupt: Mutex::new(None),
                code_label: Mutex::new(options.factory.code_label()),
                global: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        if let Some(name) = &options.name {
            self.register(name, Registered::Actor(actor.clone()))?;
        }
        if options.global != Global::No {
            self.register_global(&actor, options.global).await?;
        }
        let (started, mut start_result) = oneshot::channel();
        let task = executor::spawn(actor::run(
            self.clone(),
            actor.clone(),
            options,
            mailbox::Receiver::new(actor.clone()),
            started,
        ));
        *lock(&actor.shared.task) = Some(task);
        let spun = executor::spin_for(&mut start_result, executor::SPIN_FOR_ANSWER);
        let start_result = match spun {
            Some(Some(result)) => Ok(result),
            Some(None) => start_result.await,
            None => tokio::select! {
                biased;
                result = &mut start_result => result,
                // Killed during `init` (its deadline): the stuck thread holds the sender.
                reason = actor.exited() => match start_result.try_recv() {
                    Ok(result) => Ok(result),
                    Err(_) => Ok(Err(SpawnError::Stopped { actor: actor.label(), reason })),
                },
            },
        };
        match start_result {
            Ok(Ok(())) => Ok(actor),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(SpawnError::Stopped {
                actor: actor.label(),
                reason: actor
                    .exit_reason()
                    .unwrap_or_else(|| StopReason::Error("killed during start".to_owned())),
            }),
        }
    }

    pub(crate) fn register(&self, name: &str, entry: Registered) -> Result<(), SpawnError> {
        let mut registry = lock(&self.inner.registry);
        if registry.contains_key(name) {
            return Err(SpawnError::NameTaken(name.to_owned()));
        }
        registry.insert(name.to_owned(), entry);
        Ok(())
    }

    pub(crate) fn unregister(&self, actor: &ActorRef) {
        if let Some(name) = actor.name() {
            let mut registry = lock(&self.inner.registry);
            if matches!(registry.get(name), Some(Registered::Actor(registered)) if registered == actor)
            {
                registry.remove(name);
            }
            drop(registry);
            if actor.shared.global.swap(false, Ordering::AcqRel)
                && let Some(remote) = self.remote()
            {
                remote.unregister_global(name, actor.id());
            }
        }
    }

    /// Registers `actor`'s (local) name cluster-wide, as `global` asks; on failure the
    /// local name is freed and the start fails. Without a cluster the name stays local
    /// (a standalone host is a cluster of one).
    async fn register_global(&self, actor: &ActorRef, global: Global) -> Result<(), SpawnError> {
        let Some(remote) = self.remote() else {
            tracing::debug!(
                actor = %actor.label(),
                "not in a cluster: the global name is registered on this host only"
            );
            return Ok(());
        };
        let registered = match actor.name() {
            None => Err(GlobalError::Invalid {
                name: actor.label(),
                why: "an unnamed actor cannot be global".to_owned(),
            }),
            Some(_) => {
                remote
                    .register_global(actor, global == Global::Singleton)
                    .await
            }
        };
        match registered {
            Ok(()) => {
                actor.shared.global.store(true, Ordering::Release);
                Ok(())
            }
            Err(error) => {
                self.unregister(actor);
                Err(SpawnError::Global {
                    actor: actor.label(),
                    error,
                })
            }
        }
    }

    /// Registers a running actor's name cluster-wide (`ctx.register_global` from a
    /// plugin). Needs a cluster.
    pub async fn make_global(&self, actor: &ActorRef) -> Result<(), GlobalError> {
        let Some(remote) = self.remote() else {
            return Err(GlobalError::Unavailable(
                "this host is not in a cluster (start it with --fleet)".to_owned(),
            ));
        };
        if actor.shared.global.load(Ordering::Acquire) {
            return Ok(());
        }
        if actor.name().is_none() {
            return Err(GlobalError::Invalid {
                name: actor.label(),
                why: "an unnamed actor cannot be global".to_owned(),
            });
        }
        remote.register_global(actor, false).await?;
        actor.shared.global.store(true, Ordering::Release);
        // Exited meanwhile: its exit found no global flag to free.
        if !actor.is_alive()
            && actor.shared.global.swap(false, Ordering::AcqRel)
            && let Some(name) = actor.name()
        {
            remote.unregister_global(name, actor.id());
        }
        Ok(())
    }

    /// Whether `actor`'s name is registered cluster-wide.
    pub fn is_global(&self, actor: &ActorRef) -> bool {
        actor.shared.global.load(Ordering::Acquire)
    }

    pub(crate) fn unregister_supervisor(&self, name: &str, id: ProcessId) {
        let mut registry = lock(&self.inner.registry);
        if matches!(registry.get(name), Some(Registered::Supervisor(registered)) if registered.id() == id)
        {
            registry.remove(name);
        }
    }

    /// The actor registered under `name`.
    pub fn whereis(&self, name: &str) -> Option<ActorRef> {
        match lock(&self.inner.registry).get(name) {
            Some(Registered::Actor(actor)) => Some(actor.clone()),
            _ => None,
        }
    }

    /// The supervisor registered under `name`.
    pub fn supervisor(&self, name: &str) -> Option<crate::supervisor::SupervisorRef> {
        match lock(&self.inner.registry).get(name) {
            Some(Registered::Supervisor(supervisor)) => Some(supervisor.clone()),
            _ => None,
        }
    }

    /// Every registered actor name, sorted.
    pub fn registered_names(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.inner.registry).keys().cloned().collect();
        names.sort();
        names
    }

    /// Calls the actor `name` (`name` or `name@host`): registered here, or, on a host in a
    /// cluster, wherever it runs (see [`Runtime::route`]).
    pub async fn call(
        &self,
        name: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        match self.route(name) {
            Some(Route::Local(actor)) => actor.call(request, timeout).await,
            Some(Route::Remote(target)) => match self.remote() {
                Some(remote) => remote.call(&target, request, timeout).await,
                None => Err(CallError::NotFound(name.to_owned())),
            },
            None => Err(CallError::NotFound(name.to_owned())),
        }
    }

    /// Casts to the actor `name` (here or, in a cluster, wherever it runs); refused when
    /// its mailbox is full.
    pub fn cast(&self, name: &str, message: Vec<u8>) -> Result<(), SendError> {
        self.send_kind(name, crate::plugin::SendKind::Cast, message)
    }

    /// Sends an info message to the actor `name` (here or, in a cluster, wherever it
    /// runs); refused when its mailbox is full.
    pub fn send_info(&self, name: &str, message: Vec<u8>) -> Result<(), SendError> {
        self.send_kind(name, crate::plugin::SendKind::Info, message)
    }

    fn send_kind(
        &self,
        name: &str,
        kind: crate::plugin::SendKind,
        message: Vec<u8>,
    ) -> Result<(), SendError> {
        match self.route(name) {
            Some(Route::Local(actor)) => Ok(match kind {
                crate::plugin::SendKind::Cast => actor.try_cast(message),
                crate::plugin::SendKind::Info => actor.try_send_info(message),
            }?),
            Some(Route::Remote(target)) => match self.remote() {
                Some(remote) => remote
                    .send("host", &target, kind, message)
                    .map_err(SendError::Remote),
                None => Err(SendError::NotFound(name.to_owned())),
            },
            None => Err(SendError::NotFound(name.to_owned())),
        }
    }

    /// `watcher` gets a `down` info message when `target` exits (at once if it already
    /// has, with its reason). Returns the monitor id.
    pub fn monitor(&self, watcher: &ActorRef, target: &ActorRef) -> u64 {
        let monitor = self.next_monitor_id();
        target.lifecycle().watch(Watcher::Monitor {
            monitor,
            watcher: watcher.clone(),
        });
        monitor
    }

    /// Monitors the actor `to` names (`name` or `name@host`), here or on another host of
    /// the cluster; `None` when there is no such name here and no cluster. A remote
    /// target that does not exist, or whose host goes down, gives `down` with `noproc` or
    /// `host down`.
    pub fn monitor_name(&self, watcher: &ActorRef, to: &str) -> Option<u64> {
        match self.route(to)? {
            Route::Local(target) => Some(self.monitor(watcher, &target)),
            Route::Remote(target) => self.remote().map(|remote| remote.monitor(watcher, &target)),
        }
    }

    /// Links two actors: when either exits with a reason other than `normal`, the other
    /// gets an exit signal, which stops it with that reason unless it traps exits (OTP's
    /// links: `shutdown` and `{shutdown, Info}` propagate too).
    pub fn link(&self, first: &ActorRef, second: &ActorRef) {
        first.lifecycle().watch(Watcher::Link(second.clone()));
        second.lifecycle().watch(Watcher::Link(first.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unnamed process is labelled by its id in decimal, held inline; a named one by
    /// its name.
    #[test]
    fn a_label_is_the_name_or_the_id() {
        for id in [0, 7, 10, 12_345, u64::MAX] {
            let label = Label::new(ProcessId(id), None);
            assert_eq!(label.as_str(), id.to_string());
            assert_eq!(label.name(), None);
        }
        let named = Label::new(ProcessId(3), Some("counter".to_owned()));
        assert_eq!(named.as_str(), "counter");
        assert_eq!(named.name(), Some("counter"));
    }
}
