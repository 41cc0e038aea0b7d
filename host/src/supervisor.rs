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
//!   stops every child in reverse order and exits the supervisor with an error reason, which
//!   its parent treats as a child failure (escalation).
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
    ChildSpec, ChildStart, Restart, Shutdown, Strategy, SupervisorSpec, SupervisorUpdate,
    WorkerSpec,
};

use crate::plugin::PluginIdentity;
use crate::runtime::{ActorRef, Lifecycle, ProcessId, Registered, Runtime};
use graft_plugin::StopReason;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use task::Supervisor;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// A supervisor operation failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SupervisorError {
    /// No child with this id (or process).
    #[error("no child {0}")]
    NotFound(String),
    /// A child with this id exists.
    #[error("a child with id {0:?} already exists")]
    AlreadyPresent(String),
    /// The child is running (restart_child, delete_child need it stopped).
    #[error("child {0:?} is running")]
    Running(String),
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
    InvalidSpec(String),
    /// The supervisor has exited.
    #[error("the supervisor has exited: {0}")]
    Exited(StopReason),
}

/// Which child an operation is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildKey {
    /// By spec id (static supervisors).
    Id(String),
    /// By process (dynamic supervisors).
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
    /// The restart type.
    pub restart: Restart,
    /// How many times it was restarted.
    pub restarts: u32,
    /// The plugin new instances start on, for plugin workers.
    #[serde(skip)]
    pub plugin: Option<PluginIdentity>,
}

/// `count_children`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChildCounts {
    /// Child specs.
    pub specs: usize,
    /// Running children.
    pub active: usize,
    /// Child specs that are supervisors.
    pub supervisors: usize,
    /// Child specs that are workers.
    pub workers: usize,
}

pub(super) enum Control {
    WhichChildren(oneshot::Sender<Vec<ChildInfo>>),
    RunningChildren(oneshot::Sender<Vec<(ChildRef, Option<String>)>>),
    CountChildren(oneshot::Sender<ChildCounts>),
    StartChild(
        ChildSpec,
        oneshot::Sender<Result<ChildRef, SupervisorError>>,
    ),
    StartDynamic {
        args: Vec<u8>,
        name: Option<String>,
        reply: oneshot::Sender<Result<ChildRef, SupervisorError>>,
    },
    TerminateChild(ChildKey, oneshot::Sender<Result<(), SupervisorError>>),
    RestartChild(String, oneshot::Sender<Result<ChildRef, SupervisorError>>),
    DeleteChild(String, oneshot::Sender<Result<(), SupervisorError>>),
    Update(
        SupervisorUpdate,
        oneshot::Sender<Result<(), SupervisorError>>,
    ),
    Shutdown {
        brutal: bool,
    },
    TryAgainRestart,
}

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
        let exited =
            || SupervisorError::Exited(self.exit_reason().unwrap_or(StopReason::Shutdown(None)));
        self.shared
            .sender
            .send(build(reply))
            .map_err(|_| exited())?;
        receiver.await.map_err(|_| exited())
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

    /// Adds a child spec to a static supervisor and starts it.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<ChildRef, SupervisorError> {
        self.request(|reply| Control::StartChild(spec, reply))
            .await?
    }

    /// Starts a child of a dynamic supervisor from its template, with these arguments and
    /// optionally a name.
    pub async fn start_dynamic_child(
        &self,
        args: Vec<u8>,
        name: Option<String>,
    ) -> Result<ChildRef, SupervisorError> {
        self.request(|reply| Control::StartDynamic { args, name, reply })
            .await?
    }

    /// Stops a child (its spec stays for a static supervisor, unless temporary).
    pub async fn terminate_child(&self, key: ChildKey) -> Result<(), SupervisorError> {
        self.request(|reply| Control::TerminateChild(key, reply))
            .await?
    }

    /// Starts a stopped child of a static supervisor again.
    pub async fn restart_child(&self, id: &str) -> Result<ChildRef, SupervisorError> {
        let id = id.to_owned();
        self.request(|reply| Control::RestartChild(id, reply))
            .await?
    }

    /// Removes a stopped child's spec from a static supervisor.
    pub async fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        let id = id.to_owned();
        self.request(|reply| Control::DeleteChild(id, reply))
            .await?
    }

    /// Applies new flags and child specs (see [`SupervisorUpdate`]).
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
            lifecycle: Lifecycle::new(id, label.clone()),
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
    let (exits, exit_notices) = mpsc::unbounded_channel();
    let mut supervisor = Supervisor::new(runtime.clone(), me.clone(), spec, label, exits);
    if let Err(error) = supervisor.start_initial_children().await {
        supervisor.stop_all(false).await;
        supervisor.finish(StopReason::Error(error.to_string()));
        return Err(error);
    }
    tokio::spawn(supervisor.run(control, exit_notices));
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
