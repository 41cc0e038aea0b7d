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
//! What is tricky: an exit notice may arrive for a child the supervisor itself just
//! stopped or replaced; notices are matched against the *current* process of each child,
//! so stale ones are ignored.

use crate::plugin::PluginIdentity;
use crate::runtime::{
    ActorOptions, ActorRef, BehaviourFactory, ExitNotice, Lifecycle, ProcessId, Registered,
    Runtime, SpawnError, Watcher,
};
use graft_plugin::StopReason;
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Which siblings restart with a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child.
    OneForAll,
    /// The failed child and those started after it.
    RestForOne,
    /// Children started at run time from one template spec (OTP's `simple_one_for_one`),
    /// restarted one for one.
    Dynamic,
}

/// When a child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only after an abnormal exit.
    Transient,
    /// Never.
    Temporary,
}

/// How a child is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shutdown {
    /// Killed at once, without `terminate`.
    BrutalKill,
    /// Asked to stop (`terminate` runs), killed if not gone within the timeout.
    Timeout(Duration),
    /// Asked to stop, waited for as long as it takes (for supervisors).
    Infinity,
}

/// What a child is.
#[derive(Clone)]
pub enum ChildStart {
    /// An actor.
    Worker(WorkerSpec),
    /// A nested supervisor.
    Supervisor(SupervisorSpec),
}

/// How to start a worker.
#[derive(Clone)]
pub struct WorkerSpec {
    /// Creates the behaviour.
    pub factory: Arc<dyn BehaviourFactory>,
    /// Encoded start arguments.
    pub args: Vec<u8>,
    /// A name to register.
    pub name: Option<String>,
    /// Whether link exit signals arrive as messages.
    pub trap_exit: bool,
    /// The most calls, casts and info messages its mailbox holds (`None`: unbounded).
    pub max_mailbox: Option<usize>,
}

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique among its siblings.
    pub id: String,
    /// What to start.
    pub start: ChildStart,
    /// When to restart it.
    pub restart: Restart,
    /// How to stop it.
    pub shutdown: Shutdown,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A permanent worker with a 5 s shutdown, registered under `name` when given.
    pub fn worker(
        id: impl Into<String>,
        factory: Arc<dyn BehaviourFactory>,
        args: Vec<u8>,
    ) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            start: ChildStart::Worker(WorkerSpec {
                factory,
                args,
                name: None,
                trap_exit: false,
                max_mailbox: None,
            }),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
        }
    }

    /// A permanent nested supervisor with an `infinity` shutdown.
    pub fn supervisor(id: impl Into<String>, spec: SupervisorSpec) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            start: ChildStart::Supervisor(spec),
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
        }
    }

    /// Registers the worker under `name`.
    pub fn named(mut self, name: impl Into<String>) -> ChildSpec {
        if let ChildStart::Worker(worker) = &mut self.start {
            worker.name = Some(name.into());
        }
        self
    }

    /// Bounds the worker's mailbox at `limit` calls, casts and info messages.
    pub fn max_mailbox(mut self, limit: usize) -> ChildSpec {
        if let ChildStart::Worker(worker) = &mut self.start {
            worker.max_mailbox = Some(limit);
        }
        self
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> ChildSpec {
        self.restart = restart;
        self
    }

    /// Sets the shutdown.
    pub fn shutdown(mut self, shutdown: Shutdown) -> ChildSpec {
        self.shutdown = shutdown;
        self
    }
}

/// A supervisor: its flags and children (for `dynamic`, the one template child).
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    /// A name to register.
    pub name: Option<String>,
    /// The strategy.
    pub strategy: Strategy,
    /// At most this many restarts …
    pub max_restarts: u32,
    /// … within this many seconds.
    pub max_seconds: u64,
    /// Children in start order (for `dynamic`: exactly one template).
    pub children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    /// A supervisor with OTP's default intensity (1 restart in 5 seconds).
    pub fn new(strategy: Strategy, children: Vec<ChildSpec>) -> SupervisorSpec {
        SupervisorSpec {
            name: None,
            strategy,
            max_restarts: 1,
            max_seconds: 5,
            children,
        }
    }

    /// Registers the supervisor under `name`.
    pub fn named(mut self, name: impl Into<String>) -> SupervisorSpec {
        self.name = Some(name.into());
        self
    }

    /// Sets the restart intensity.
    pub fn intensity(mut self, max_restarts: u32, max_seconds: u64) -> SupervisorSpec {
        self.max_restarts = max_restarts;
        self.max_seconds = max_seconds;
        self
    }
}

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

enum Control {
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

/// New flags and child specs for a running supervisor, as OTP's supervisor `code_change`
/// applies them: specs are merged by id keeping live children; new specs are added without
/// being started; specs whose ids vanished are kept.
#[derive(Clone, Debug)]
pub struct SupervisorUpdate {
    /// The new strategy (a static supervisor cannot become dynamic or back).
    pub strategy: Strategy,
    /// The new intensity.
    pub max_restarts: u32,
    /// The new intensity window.
    pub max_seconds: u64,
    /// The new child specs (for a dynamic supervisor: its template).
    pub children: Vec<ChildSpec>,
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

struct Child {
    spec: ChildSpec,
    running: Option<ChildRef>,
    restarts: u32,
}

struct Supervisor {
    runtime: Runtime,
    me: SupervisorRef,
    spec: SupervisorSpec,
    children: Vec<Child>,
    restart_times: VecDeque<Instant>,
    exits: mpsc::UnboundedSender<ExitNotice>,
    /// Where each running child is in `children`, by process (exits are looked up here).
    by_process: std::collections::HashMap<ProcessId, usize>,
    retry: VecDeque<String>,
    label: String,
}

/// Starts a supervisor and its children (in order); returns once all have started.
pub async fn start_supervisor(
    runtime: &Runtime,
    spec: SupervisorSpec,
) -> Result<SupervisorRef, SupervisorError> {
    validate(&spec)?;
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
    let mut supervisor = Supervisor {
        runtime: runtime.clone(),
        me: me.clone(),
        children: Vec::new(),
        restart_times: VecDeque::new(),
        exits,
        by_process: std::collections::HashMap::new(),
        retry: VecDeque::new(),
        label,
        spec,
    };
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

fn validate(spec: &SupervisorSpec) -> Result<(), SupervisorError> {
    if spec.strategy == Strategy::Dynamic && spec.children.len() != 1 {
        return Err(SupervisorError::InvalidSpec(format!(
            "a dynamic supervisor needs exactly one template child spec, found {}",
            spec.children.len()
        )));
    }
    let mut ids = std::collections::HashSet::new();
    for child in &spec.children {
        if !ids.insert(child.id.as_str()) {
            return Err(SupervisorError::InvalidSpec(format!(
                "duplicate child id {:?}",
                child.id
            )));
        }
        if let ChildStart::Supervisor(nested) = &child.start {
            validate(nested)?;
        }
    }
    Ok(())
}

fn describe_reason(reason: &StopReason) -> &'static str {
    if reason.is_clean() {
        "exited"
    } else {
        "crashed"
    }
}

impl Supervisor {
    async fn start_initial_children(&mut self) -> Result<(), SupervisorError> {
        if self.spec.strategy == Strategy::Dynamic {
            return Ok(());
        }
        for spec in self.spec.children.clone() {
            self.start_and_add(spec).await?;
        }
        Ok(())
    }

    /// Starts one child and watches its exit.
    async fn start(&self, spec: &ChildSpec, restarts: u32) -> Result<ChildRef, String> {
        let child = match &spec.start {
            ChildStart::Worker(worker) => {
                let options = ActorOptions {
                    name: worker.name.clone(),
                    factory: Arc::clone(&worker.factory),
                    args: worker.args.clone(),
                    trap_exit: worker.trap_exit,
                    restarts,
                    max_mailbox: worker.factory.max_mailbox(worker.max_mailbox),
                };
                match self.runtime.spawn(options).await {
                    Ok(actor) => ChildRef::Worker(actor),
                    Err(SpawnError::Stopped { reason, .. }) if reason.is_clean() => {
                        // Like OTP's `ignore`: started and done (a one-off task). Report
                        // the exit so restart rules still apply.
                        return Err(format!("stopped during start: {reason}"));
                    }
                    Err(error) => return Err(error.to_string()),
                }
            }
            ChildStart::Supervisor(nested) => {
                let supervisor = start_nested(&self.runtime, nested.clone())
                    .await
                    .map_err(|error| error.to_string())?;
                ChildRef::Supervisor(supervisor)
            }
        };
        child
            .lifecycle()
            .watch(Watcher::Channel(self.exits.clone()));
        Ok(child)
    }

    async fn run(
        mut self,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut exit_notices: mpsc::UnboundedReceiver<ExitNotice>,
    ) {
        let reason = loop {
            tokio::select! {
                biased;
                Some(notice) = exit_notices.recv() => {
                    if let Some(reason) = self.on_child_exit(notice).await {
                        break reason;
                    }
                }
                message = control.recv() => match message {
                    Some(Control::Shutdown { brutal }) => {
                        self.stop_all(brutal).await;
                        break StopReason::Shutdown(None);
                    }
                    Some(message) => {
                        if let Some(reason) = self.on_control(message).await {
                            break reason;
                        }
                    }
                    None => {
                        self.stop_all(false).await;
                        break StopReason::Shutdown(None);
                    }
                },
            }
        };
        self.finish(reason);
    }

    fn finish(&self, reason: StopReason) {
        if let Some(name) = &self.spec.name {
            self.runtime.unregister_supervisor(name, self.me.id());
        }
        if !reason.is_clean() {
            tracing::error!(supervisor = %self.label, reason = %reason, "supervisor exited");
        }
        self.me.shared.lifecycle.finish(reason);
    }

    fn position(&self, process: ProcessId) -> Option<usize> {
        self.by_process.get(&process).copied()
    }

    /// Sets the running process of the child at `index`, keeping the index current.
    fn set_running(&mut self, index: usize, running: ChildRef) {
        self.by_process.insert(running.id(), index);
        if let Some(previous) = self.children[index].running.replace(running) {
            self.by_process.remove(&previous.id());
        }
    }

    /// Takes the running process of the child at `index`, keeping the index current.
    fn take_running(&mut self, index: usize) -> Option<ChildRef> {
        let running = self.children[index].running.take()?;
        self.by_process.remove(&running.id());
        Some(running)
    }

    /// Appends a child, keeping the index current.
    fn push_child(&mut self, child: Child) {
        if let Some(running) = &child.running {
            self.by_process.insert(running.id(), self.children.len());
        }
        self.children.push(child);
    }

    /// Removes the child at `index`. A dynamic supervisor's children have no order, so the
    /// last one takes its place (constant time with 100,000 children); a static one keeps
    /// its start order.
    fn remove_child(&mut self, index: usize) {
        self.take_running(index);
        if self.spec.strategy == Strategy::Dynamic {
            self.children.swap_remove(index);
            if let Some(moved) = self
                .children
                .get(index)
                .and_then(|child| child.running.as_ref())
            {
                self.by_process.insert(moved.id(), index);
            }
        } else {
            self.children.remove(index);
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        self.by_process = self
            .children
            .iter()
            .enumerate()
            .filter_map(|(index, child)| {
                child.running.as_ref().map(|running| (running.id(), index))
            })
            .collect();
    }

    /// Handles a child's exit; returns the supervisor's own exit reason when it gives up.
    async fn on_child_exit(&mut self, notice: ExitNotice) -> Option<StopReason> {
        let index = self.position(notice.id)?;
        self.take_running(index);
        let child = &self.children[index];
        tracing::debug!(
            supervisor = %self.label,
            child = %child.spec.id,
            reason = %notice.reason,
            "child {}",
            describe_reason(&notice.reason)
        );
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => !notice.reason.is_clean(),
            Restart::Temporary => false,
        };
        if !restart {
            if child.spec.restart == Restart::Temporary || self.spec.strategy == Strategy::Dynamic {
                self.remove_child(index);
            }
            return None;
        }
        self.restart_from(index).await
    }

    /// Records a restart attempt; `false` when the intensity is exceeded.
    fn add_restart(&mut self) -> bool {
        let now = Instant::now();
        let window = Duration::from_secs(self.spec.max_seconds);
        self.restart_times.push_back(now);
        while let Some(oldest) = self.restart_times.front() {
            if now.duration_since(*oldest) > window {
                self.restart_times.pop_front();
            } else {
                break;
            }
        }
        self.restart_times.len() <= self.spec.max_restarts as usize
    }

    /// Restarts the child at `index` (with its siblings, by strategy).
    async fn restart_from(&mut self, index: usize) -> Option<StopReason> {
        if !self.add_restart() {
            tracing::error!(
                supervisor = %self.label,
                child = %self.children[index].spec.id,
                max_restarts = self.spec.max_restarts,
                max_seconds = self.spec.max_seconds,
                "reached maximum restart intensity; shutting down"
            );
            self.stop_all(false).await;
            return Some(StopReason::Error(
                "shutdown: reached maximum restart intensity".to_owned(),
            ));
        }
        let group: Vec<usize> = match self.spec.strategy {
            Strategy::OneForOne | Strategy::Dynamic => vec![index],
            Strategy::OneForAll => (0..self.children.len()).collect(),
            Strategy::RestForOne => (index..self.children.len()).collect(),
        };
        // Stop the running siblings of the group, in reverse start order.
        let mut was_running = Vec::new();
        for &sibling in group.iter().rev() {
            if let Some(running) = self.take_running(sibling) {
                was_running.push(self.children[sibling].spec.id.clone());
                stop_child(&running, self.children[sibling].spec.shutdown).await;
            }
        }
        // Restart the failed child and the siblings that were running, in start order;
        // temporary siblings are not restarted: their specs go.
        let failed = self.children[index].spec.id.clone();
        let restart_ids: Vec<String> = group
            .iter()
            .map(|&sibling| &self.children[sibling])
            .filter(|child| {
                child.spec.id == failed
                    || (was_running.contains(&child.spec.id)
                        && child.spec.restart != Restart::Temporary)
            })
            .map(|child| child.spec.id.clone())
            .collect();
        let stopped_temporary: Vec<String> = group
            .iter()
            .map(|&sibling| &self.children[sibling])
            .filter(|child| {
                child.spec.restart == Restart::Temporary && was_running.contains(&child.spec.id)
            })
            .map(|child| child.spec.id.clone())
            .collect();
        if !stopped_temporary.is_empty() {
            self.children
                .retain(|child| !stopped_temporary.contains(&child.spec.id));
            self.reindex();
        }
        for id in restart_ids {
            let position = if self
                .children
                .get(index)
                .is_some_and(|child| child.spec.id == id)
            {
                index
            } else {
                match self.children.iter().position(|child| child.spec.id == id) {
                    Some(position) => position,
                    None => continue,
                }
            };
            let child = &mut self.children[position];
            child.restarts += 1;
            let (spec, restarts) = (child.spec.clone(), child.restarts);
            match self.start(&spec, restarts).await {
                Ok(running) => self.set_running(position, running),
                Err(reason) => {
                    tracing::error!(supervisor = %self.label, child = %spec.id, "restart failed: {reason}");
                    // OTP's try_again_restart: let other requests in, then try again; every
                    // attempt counts against the intensity.
                    self.retry.push_back(spec.id.clone());
                    let _ = self.me.shared.sender.send(Control::TryAgainRestart);
                    return None;
                }
            }
        }
        None
    }

    async fn on_control(&mut self, message: Control) -> Option<StopReason> {
        match message {
            Control::WhichChildren(reply) => {
                let _ = reply.send(self.which_children());
            }
            Control::RunningChildren(reply) => {
                let running = self
                    .children
                    .iter()
                    .filter_map(|child| {
                        let plugin = match &child.spec.start {
                            ChildStart::Worker(worker) => worker.factory.plugin_name(),
                            ChildStart::Supervisor(_) => None,
                        };
                        child.running.clone().map(|running| (running, plugin))
                    })
                    .collect();
                let _ = reply.send(running);
            }
            Control::CountChildren(reply) => {
                let specs = self.children.len();
                let supervisors = self
                    .children
                    .iter()
                    .filter(|child| matches!(child.spec.start, ChildStart::Supervisor(_)))
                    .count();
                let _ = reply.send(ChildCounts {
                    specs,
                    active: self
                        .children
                        .iter()
                        .filter(|child| child.running.is_some())
                        .count(),
                    supervisors,
                    workers: specs - supervisors,
                });
            }
            Control::StartChild(spec, reply) => {
                let _ = reply.send(self.start_static_child(spec).await);
            }
            Control::StartDynamic { args, name, reply } => {
                let _ = reply.send(self.start_dynamic_child(args, name).await);
            }
            Control::TerminateChild(key, reply) => {
                let _ = reply.send(self.terminate_child(key).await);
            }
            Control::RestartChild(id, reply) => {
                let _ = reply.send(self.restart_child(&id).await);
            }
            Control::DeleteChild(id, reply) => {
                let _ = reply.send(self.delete_child(&id));
            }
            Control::TryAgainRestart => {
                if let Some(id) = self.retry.pop_front()
                    && let Some(index) = self.children.iter().position(|child| child.spec.id == id)
                    && self.children[index].running.is_none()
                {
                    return self.restart_from(index).await;
                }
            }
            Control::Update(update, reply) => {
                let _ = reply.send(self.update(update));
            }
            Control::Shutdown { .. } => unreachable!("handled by the loop"),
        }
        None
    }

    fn update(&mut self, update: SupervisorUpdate) -> Result<(), SupervisorError> {
        if (self.spec.strategy == Strategy::Dynamic) != (update.strategy == Strategy::Dynamic) {
            return Err(SupervisorError::Unsupported {
                operation: "changing between a dynamic and a static strategy",
                strategy: self.spec.strategy,
            });
        }
        self.spec.strategy = update.strategy;
        self.spec.max_restarts = update.max_restarts;
        self.spec.max_seconds = update.max_seconds;
        if self.spec.strategy == Strategy::Dynamic {
            self.spec.children = update.children;
            return Ok(());
        }
        for spec in update.children {
            match self
                .children
                .iter_mut()
                .find(|child| child.spec.id == spec.id)
            {
                Some(child) => child.spec = spec,
                None => self.children.push(Child {
                    spec,
                    running: None,
                    restarts: 0,
                }),
            }
        }
        Ok(())
    }

    fn which_children(&self) -> Vec<ChildInfo> {
        self.children
            .iter()
            .map(|child| {
                let (name, plugin) = match &child.spec.start {
                    ChildStart::Worker(worker) => (worker.name.clone(), worker.factory.identity()),
                    ChildStart::Supervisor(nested) => (nested.name.clone(), None),
                };
                ChildInfo {
                    id: child.spec.id.clone(),
                    process: child.running.as_ref().map(|running| running.id().0),
                    child: child.running.clone(),
                    supervisor: matches!(child.spec.start, ChildStart::Supervisor(_)),
                    name,
                    restart: child.spec.restart,
                    restarts: child.restarts,
                    plugin,
                }
            })
            .collect()
    }

    fn refuse_dynamic<T>(&self, operation: &'static str) -> Result<T, SupervisorError> {
        Err(SupervisorError::Unsupported {
            operation,
            strategy: self.spec.strategy,
        })
    }

    async fn start_static_child(&mut self, spec: ChildSpec) -> Result<ChildRef, SupervisorError> {
        if self.spec.strategy == Strategy::Dynamic {
            return self.refuse_dynamic("start_child with a spec");
        }
        if self.children.iter().any(|child| child.spec.id == spec.id) {
            return Err(SupervisorError::AlreadyPresent(spec.id));
        }
        self.start_and_add(spec).await
    }

    /// Starts a child and appends it to the children, in start order.
    async fn start_and_add(&mut self, spec: ChildSpec) -> Result<ChildRef, SupervisorError> {
        let running =
            self.start(&spec, 0)
                .await
                .map_err(|reason| SupervisorError::StartFailed {
                    id: spec.id.clone(),
                    reason,
                })?;
        self.push_child(Child {
            spec,
            running: Some(running.clone()),
            restarts: 0,
        });
        Ok(running)
    }

    async fn start_dynamic_child(
        &mut self,
        args: Vec<u8>,
        name: Option<String>,
    ) -> Result<ChildRef, SupervisorError> {
        if self.spec.strategy != Strategy::Dynamic {
            return self.refuse_dynamic("start_dynamic_child");
        }
        let mut spec = self.spec.children[0].clone();
        if let ChildStart::Worker(worker) = &mut spec.start {
            worker.args = args;
            worker.name = name.clone();
        }
        let running =
            self.start(&spec, 0)
                .await
                .map_err(|reason| SupervisorError::StartFailed {
                    id: name.clone().unwrap_or_else(|| spec.id.clone()),
                    reason,
                })?;
        spec.id = name.unwrap_or_else(|| running.id().to_string());
        self.push_child(Child {
            spec,
            running: Some(running.clone()),
            restarts: 0,
        });
        Ok(running)
    }

    fn find(&self, key: &ChildKey) -> Option<usize> {
        match key {
            ChildKey::Id(id) => self.children.iter().position(|child| child.spec.id == *id),
            ChildKey::Process(process) => self.position(*process),
        }
    }

    async fn terminate_child(&mut self, key: ChildKey) -> Result<(), SupervisorError> {
        if self.spec.strategy == Strategy::Dynamic && matches!(key, ChildKey::Id(_)) {
            // Dynamic children are addressed by process, as in OTP; a name also works.
            if let ChildKey::Id(id) = &key
                && let Some(index) = self.children.iter().position(|child| child.spec.id == *id)
            {
                return self.terminate_at(index).await;
            }
            return Err(SupervisorError::NotFound(key.to_string()));
        }
        let index = self
            .find(&key)
            .ok_or_else(|| SupervisorError::NotFound(key.to_string()))?;
        self.terminate_at(index).await
    }

    async fn terminate_at(&mut self, index: usize) -> Result<(), SupervisorError> {
        if let Some(running) = self.take_running(index) {
            stop_child(&running, self.children[index].spec.shutdown).await;
        }
        if self.spec.strategy == Strategy::Dynamic
            || self.children[index].spec.restart == Restart::Temporary
        {
            self.remove_child(index);
        }
        Ok(())
    }

    /// The index of the static child `id`, which must exist and be stopped.
    fn stopped_static_child(&self, id: &str) -> Result<usize, SupervisorError> {
        let index = self
            .children
            .iter()
            .position(|child| child.spec.id == id)
            .ok_or_else(|| SupervisorError::NotFound(format!("{id:?}")))?;
        if self.children[index].running.is_some() {
            return Err(SupervisorError::Running(id.to_owned()));
        }
        Ok(index)
    }

    async fn restart_child(&mut self, id: &str) -> Result<ChildRef, SupervisorError> {
        if self.spec.strategy == Strategy::Dynamic {
            return self.refuse_dynamic("restart_child");
        }
        let index = self.stopped_static_child(id)?;
        let spec = self.children[index].spec.clone();
        let running = self
            .start(&spec, self.children[index].restarts)
            .await
            .map_err(|reason| SupervisorError::StartFailed {
                id: id.to_owned(),
                reason,
            })?;
        self.set_running(index, running.clone());
        Ok(running)
    }

    fn delete_child(&mut self, id: &str) -> Result<(), SupervisorError> {
        if self.spec.strategy == Strategy::Dynamic {
            return self.refuse_dynamic("delete_child");
        }
        let index = self.stopped_static_child(id)?;
        self.remove_child(index);
        Ok(())
    }

    /// Stops every running child: in reverse start order, or all at once for a dynamic
    /// supervisor (as OTP does).
    async fn stop_all(&mut self, brutal: bool) {
        self.by_process.clear();
        let running: Vec<(ChildRef, Shutdown)> = self
            .children
            .iter_mut()
            .filter_map(|child| {
                child.running.take().map(|running| {
                    (
                        running,
                        if brutal {
                            Shutdown::BrutalKill
                        } else {
                            child.spec.shutdown
                        },
                    )
                })
            })
            .collect();
        if self.spec.strategy == Strategy::Dynamic {
            let mut stopping = tokio::task::JoinSet::new();
            for (child, shutdown) in running {
                stopping.spawn(async move { stop_child(&child, shutdown).await });
            }
            while stopping.join_next().await.is_some() {}
        } else {
            for (child, shutdown) in running.into_iter().rev() {
                stop_child(&child, shutdown).await;
            }
        }
    }
}

/// Stops one child by its shutdown policy and waits until it is gone.
async fn stop_child(child: &ChildRef, shutdown: Shutdown) {
    match (child, shutdown) {
        (ChildRef::Worker(actor), Shutdown::BrutalKill) => actor.kill(),
        (ChildRef::Worker(actor), Shutdown::Timeout(timeout)) => {
            actor.stop(StopReason::Shutdown(None), Some(timeout)).await;
        }
        (ChildRef::Worker(actor), Shutdown::Infinity) => {
            actor.stop(StopReason::Shutdown(None), None).await;
        }
        (ChildRef::Supervisor(supervisor), Shutdown::BrutalKill) => {
            supervisor.kill();
            supervisor.exited().await;
        }
        (ChildRef::Supervisor(supervisor), Shutdown::Timeout(timeout)) => {
            let _ = supervisor
                .shared
                .sender
                .send(Control::Shutdown { brutal: false });
            if tokio::time::timeout(timeout, supervisor.exited())
                .await
                .is_err()
            {
                supervisor.kill();
                supervisor.exited().await;
            }
        }
        (ChildRef::Supervisor(supervisor), Shutdown::Infinity) => {
            supervisor.shutdown().await;
        }
    }
}
