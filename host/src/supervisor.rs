//! Supervisors: OTP's strategies, restart types, restart intensity, shutdown and the child
//! operations, over actors from [`crate::runtime`] and nested supervisors.
//!
//! A supervisor is a tokio task owning an ordered list of children. It watches each child's
//! exit through a channel (not a link, like OTP's monitor-based shutdown wait), decides by
//! restart type (`permanent`, `transient`, `temporary`) whether to restart, and by strategy
//! (`one_for_one`, `one_for_all`, `rest_for_one`, or `dynamic` — OTP's
//! `simple_one_for_one`) which siblings go with it.
//!
//! Invariants (OTP's):
//! - Children start in order and stop in reverse order; a failing start stops the ones
//!   already started and fails the supervisor's own start.
//! - Restart intensity is a sliding window over monotonic time: more than `max_restarts`
//!   restart attempts within `max_seconds` — failed attempts count too, each retry again —
//!   stops every child in reverse order and exits the supervisor with reason `shutdown`
//!   (`reached maximum restart intensity`): a permanent parent restarts it, a transient one
//!   does not (escalation is the parent's restart type's call, as in OTP).
//! - A child whose restart failed is `restarting` until a queued retry starts it;
//!   `restart_child`/`delete_child` refuse it, `terminate_child` cancels the retry.
//! - An `init` that declines (OTP's `ignore`) is not a failure: a static child keeps its
//!   spec with no process (a temporary one's spec goes), a dynamic child is not kept.
//! - Significant children and `auto_shutdown` (OTP 24): a significant child's exit for good
//!   may shut the supervisor down, with reason `shutdown`.
//! - `temporary` children are never restarted, even by `one_for_all`/`rest_for_one`, and
//!   their specs vanish when they exit; `transient` ones are restarted only after an
//!   abnormal exit (not `normal`, not `shutdown`).
//! - Shutdown per child: `brutal_kill` (no `terminate`), a timeout (stop, then kill), or
//!   `infinity` (the default for supervisors). A dynamic supervisor stops its children in
//!   parallel.
//!
//! Layout: this file is the API (`SupervisorRef`, `start_supervisor`, errors, what
//! `which_children` answers); `supervisor/spec.rs` the specs and their checks;
//! `supervisor/task.rs` the running task.

mod spec;
mod task;

pub use spec::{
    AutoShutdown, ChildSpec, ChildStart, Placement, Restart, Shutdown, SpecError, Strategy,
    SupervisorSpec, SupervisorUpdate, WorkerSpec,
};
pub use task::REACHED_MAXIMUM_INTENSITY;

use crate::plugin::PluginIdentity;
use crate::runtime::{ActorRef, Lifecycle, ProcessId, Registered, Runtime};
use graft_plugin::StopReason;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// A supervisor operation failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorError {
    /// No child with this id (or process).
    #[error("no child {0}")]
    NotFound(String),
    /// A child with this id exists, stopped (OTP's `already_present`).
    #[error("a child with id {0:?} already exists")]
    AlreadyPresent(String),
    /// A child with this id exists and is running (OTP's `already_started`).
    #[error("a child with id {0:?} is already started")]
    AlreadyStarted(String),
    /// The child is running (restart_child, delete_child need it stopped).
    #[error("child {0:?} is running")]
    Running(String),
    /// The child's restart failed and a retry is queued (restart_child, delete_child need
    /// it stopped; terminate_child cancels the retry).
    #[error("child {0:?} is restarting")]
    Restarting(String),
    /// The operation does not apply to this kind of supervisor.
    #[error("{operation} is not supported by a {strategy:?} supervisor")]
    Unsupported {
        /// The operation.
        operation: &'static str,
        /// The supervisor's strategy.
        strategy: Strategy,
    },
    /// A child failed to start.
    #[error("child {id:?} failed to start: {reason}")]
    StartFailed {
        /// The child.
        id: String,
        /// Why.
        reason: String,
    },
    /// The spec is invalid.
    #[error("invalid supervisor spec: {0}")]
    InvalidSpec(#[from] SpecError),
    /// The supervisor has exited.
    #[error("the supervisor has exited: {0}")]
    Exited(StopReason),
}

/// Which child an operation is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildKey {
    /// By spec id (static supervisors; a dynamic child's name or first process id).
    Id(String),
    /// By process (dynamic supervisors only: a static supervisor answers not found, as
    /// OTP's does for a pid).
    Process(ProcessId),
}

impl fmt::Display for ChildKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildKey::Id(id) => write!(f, "{id:?}"),
            ChildKey::Process(id) => write!(f, "{id}"),
        }
    }
}

/// A running child.
#[derive(Clone, Debug)]
pub enum ChildRef {
    /// An actor.
    Worker(ActorRef),
    /// A supervisor.
    Supervisor(SupervisorRef),
}

impl ChildRef {
    /// The process id.
    pub fn id(&self) -> ProcessId {
        match self {
            ChildRef::Worker(actor) => actor.id(),
            ChildRef::Supervisor(supervisor) => supervisor.id(),
        }
    }

    fn lifecycle(&self) -> &Lifecycle {
        match self {
            ChildRef::Worker(actor) => actor.lifecycle(),
            ChildRef::Supervisor(supervisor) => &supervisor.shared.lifecycle,
        }
    }

    /// The actor, when a worker.
    pub fn actor(&self) -> Option<&ActorRef> {
        match self {
            ChildRef::Worker(actor) => Some(actor),
            ChildRef::Supervisor(_) => None,
        }
    }

    /// The supervisor, when one.
    pub fn as_supervisor(&self) -> Option<&SupervisorRef> {
        match self {
            ChildRef::Worker(_) => None,
            ChildRef::Supervisor(supervisor) => Some(supervisor),
        }
    }
}

/// One line of `which_children`.
#[derive(Debug, Clone, Serialize)]
pub struct ChildInfo {
    /// The spec id (dynamic children: their name or process id).
    pub id: String,
    /// The running process, if any.
    #[serde(skip)]
    pub child: Option<ChildRef>,
    /// The process id, if running.
    pub process: Option<u64>,
    /// Whether a supervisor.
    pub supervisor: bool,
    /// The registered name of a worker.
    pub name: Option<String>,
    /// Running, restarting (a failed restart's retry is queued) or stopped.
    pub state: ChildState,
    /// The restart type.
    pub restart: Restart,
    /// Whether significant for the supervisor's `auto_shutdown`.
    pub significant: bool,
    /// How many times it was restarted.
    pub restarts: u32,
    /// The plugin new instances start on, for plugin workers.
    #[serde(skip)]
    pub plugin: Option<PluginIdentity>,
}

/// Where a child is: OTP's `which_children` shows a pid, `restarting` or `undefined`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// It has a process.
    Running,
    /// A restart failed; a retry is queued.
    Restarting,
    /// No process (terminated, exited for good, or its `init` declined).
    Stopped,
}

/// `count_children`, with OTP's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChildCounts {
    /// Child specs (a dynamic supervisor: 1, its template).
    pub specs: usize,
    /// Running children.
    pub active: usize,
    /// Children that are supervisors, running or not (a dynamic supervisor: its children,
    /// when its template is a supervisor).
    pub supervisors: usize,
    /// Children that are workers, running or not (a dynamic supervisor: its children,
    /// when its template is a worker).
    pub workers: usize,
}

pub(super) enum Control {
    WhichChildren(oneshot::Sender<Vec<ChildInfo>>),
    RunningChildren(oneshot::Sender<Vec<(ChildRef, Option<String>)>>),
    CountChildren(oneshot::Sender<ChildCounts>),
    WhichChild(
        ChildKey,
        oneshot::Sender<Result<ChildInfo, SupervisorError>>,
    ),
    GetChildSpec(
        ChildKey,
        oneshot::Sender<Result<ChildSpec, SupervisorError>>,
    ),
    StartChild(ChildSpec, oneshot::Sender<Started>),
    StartDynamic {
        args: Vec<u8>,
        name: Option<String>,
        reply: oneshot::Sender<Started>,
    },
    TerminateChild(ChildKey, oneshot::Sender<Result<(), SupervisorError>>),
    RestartChild(String, oneshot::Sender<Started>),
    DeleteChild(String, oneshot::Sender<Result<(), SupervisorError>>),
    Update(
        SupervisorUpdate,
        oneshot::Sender<Result<(), SupervisorError>>,
    ),
    Shutdown {
        brutal: bool,
    },
    /// Retry the failed restart of this child, if it is still `restarting`.
    TryAgainRestart(String),
}

/// What a start answers: the child, or `None` when its `init` declined (OTP's
/// `{ok, undefined}`).
type Started = Result<Option<ChildRef>, SupervisorError>;

struct SupervisorShared {
    name: Option<String>,
    sender: mpsc::UnboundedSender<Control>,
    lifecycle: Lifecycle,
}

/// A handle on a running supervisor. Cheap to clone.
#[derive(Clone)]
pub struct SupervisorRef {
    shared: Arc<SupervisorShared>,
}

impl fmt::Debug for SupervisorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SupervisorRef({:?}, {})",
            self.shared.name,
            self.shared.lifecycle_id()
        )
    }
}

impl SupervisorShared {
    fn lifecycle_id(&self) -> ProcessId {
        self.lifecycle.id()
    }
}

impl SupervisorRef {
    /// The process id.
    pub fn id(&self) -> ProcessId {
        self.shared.lifecycle_id()
    }

    /// The registered name.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// The exit reason, once exited.
    pub fn exit_reason(&self) -> Option<StopReason> {
        self.shared.lifecycle.exit_reason().cloned()
    }

    /// Waits for the supervisor to exit.
    pub async fn exited(&self) -> StopReason {
        self.shared.lifecycle.exited().await
    }

    async fn request<T>(
        &self,
        build: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, SupervisorError> {
        let (reply, receiver) = oneshot::channel();
        if self.shared.sender.send(build(reply)).is_ok()
            && let Ok(answer) = receiver.await
        {
            return Ok(answer);
        }
        // The task has ended. Its exit reason is set before it ends, except after a panic:
        // then its watcher sets it once it has stopped the children left behind.
        let reason = match self.exit_reason() {
            Some(reason) => reason,
            None => tokio::time::timeout(Duration::from_secs(5), self.exited())
                .await
                .unwrap_or(StopReason::Shutdown(None)),
        };
        Err(SupervisorError::Exited(reason))
    }

    /// The children, in start order.
    pub async fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.request(Control::WhichChildren).await
    }

    /// The running children with the plugin each worker's spec starts: a lighter
    /// `which_children` for walking large trees.
    pub async fn running_children(
        &self,
    ) -> Result<Vec<(ChildRef, Option<String>)>, SupervisorError> {
        self.request(Control::RunningChildren).await
    }

    /// Counts of specs and running children.
    pub async fn count_children(&self) -> Result<ChildCounts, SupervisorError> {
        self.request(Control::CountChildren).await
    }

    /// One child's line of `which_children` (OTP 26's `which_child`).
    pub async fn which_child(&self, key: ChildKey) -> Result<ChildInfo, SupervisorError> {
        self.request(|reply| Control::WhichChild(key, reply))
            .await?
    }

    /// One child's spec (OTP's `get_childspec`); a dynamic child's carries its own
    /// arguments and name.
    pub async fn get_childspec(&self, key: ChildKey) -> Result<ChildSpec, SupervisorError> {
        self.request(|reply| Control::GetChildSpec(key, reply))
            .await?
    }

    /// Adds a child spec to a static supervisor and starts it. `Ok(None)`: its `init`
    /// declined (OTP's `ignore`); the spec is kept with no process, unless temporary.
    /// An id in use answers `AlreadyStarted` (running) or `AlreadyPresent` (stopped).
    pub async fn start_child(&self, spec: ChildSpec) -> Started {
        self.request(|reply| Control::StartChild(spec, reply))
            .await?
    }

    /// Starts a child of a dynamic supervisor from its template, with these arguments and
    /// optionally a name.
    /// `Ok(None)`: its `init` declined, and nothing is kept.
    pub async fn start_dynamic_child(&self, args: Vec<u8>, name: Option<String>) -> Started {
        self.request(|reply| Control::StartDynamic { args, name, reply })
            .await?
    }

    /// Stops a child (its spec stays for a static supervisor, unless temporary) and cancels
    /// a queued restart retry, so the child stays stopped.
    pub async fn terminate_child(&self, key: ChildKey) -> Result<(), SupervisorError> {
        self.request(|reply| Control::TerminateChild(key, reply))
            .await?
    }

    /// Starts a stopped child of a static supervisor again (`Ok(None)`: its `init`
    /// declined). A running or restarting child is refused.
    pub async fn restart_child(&self, id: &str) -> Started {
        let id = id.to_owned();
        self.request(|reply| Control::RestartChild(id, reply))
            .await?
    }

    /// Removes a stopped child's spec from a static supervisor (not a running or restarting
    /// one).
    pub async fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_owned();
        self.request(|reply| Control::DeleteChild(id, reply))
            .await?
    }

    /// Applies new flags and child specs (see [`SupervisorUpdate`]), checked first: duplicate
    /// ids, a dynamic supervisor without exactly one template, or significance its new
    /// `auto_shutdown` does not allow are refused and change nothing.
    pub async fn update(&self, update: SupervisorUpdate) -> Result<(), SupervisorError> {
        self.request(|reply| Control::Update(update, reply)).await?
    }

    /// Stops every child in reverse order, then the supervisor; returns its exit reason.
    pub async fn shutdown(&self) -> StopReason {
        let _ = self.shared.sender.send(Control::Shutdown { brutal: false });
        self.exited().await
    }

    fn kill(&self) {
        let _ = self.shared.sender.send(Control::Shutdown { brutal: true });
    }
}

/// Starts a supervisor and its children (in order); returns once all have started.
pub async fn start_supervisor(
    runtime: &Runtime,
    spec: SupervisorSpec,
) -> Result<SupervisorRef, SupervisorError> {
    spec::validate(&spec)?;
    let id = runtime.next_id();
    let label = spec.name.clone().unwrap_or_else(|| id.to_string());
    let (sender, control) = mpsc::unbounded_channel();
    let me = SupervisorRef {
        shared: Arc::new(SupervisorShared {
            name: spec.name.clone(),
            sender,
            lifecycle: Lifecycle::new(id, spec.name.clone()),
        }),
    };
    if let Some(name) = &spec.name {
        runtime
            .register(name, Registered::Supervisor(me.clone()))
            .map_err(|error| SupervisorError::StartFailed {
                id: label.clone(),
                reason: error.to_string(),
            })?;
    }
    task::spawn(runtime.clone(), me.clone(), spec, label, control).await?;
    Ok(me)
}

/// `start_supervisor` for a nested supervisor: boxed, because the future is recursive.
fn start_nested(
    runtime: &Runtime,
    spec: SupervisorSpec,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<SupervisorRef, SupervisorError>> + Send + '_>,
> {
    Box::pin(start_supervisor(runtime, spec))
}
