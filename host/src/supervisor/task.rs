//! The running supervisor: one tokio task owning the ordered children, their exits, the
//! restart decisions and the child operations.
//!
//! Invariants:
//! - Children start in order and stop in reverse (a dynamic supervisor stops them in
//!   parallel). Every restart attempt counts against the intensity, retries too.
//! - A child is `running` (it has a process), `restarting` (a restart failed and a retry is
//!   queued, OTP's `try_again_restart`) or `stopped`. A retry only runs while its child is
//!   still `restarting`: `terminate_child` and a group restart clear the flag, which is how
//!   they cancel it.
//! - While metrics are on, each child restart and a shutdown at the maximum intensity
//!   count in [`crate::metrics`], by the supervisor's label.
//! - The task never panics on its own (no indexing it has not checked, no `unwrap`). If
//!   code it calls panics anyway (a third-party `BehaviourFactory`), [`spawn`]'s watcher
//!   stops the children the task left behind (its `Drop` hands them over) and finishes the
//!   supervisor with the panic message as its exit reason, so its parent hears of it.
//!
//! What is tricky: an exit notice may arrive for a child the supervisor itself just
//! stopped or replaced; notices are matched against the *current* process of each child,
//! so stale ones are ignored.

use super::spec::{
    self, AutoShutdown, ChildSpec, ChildStart, Placement, Restart, Shutdown, SpecError, Strategy,
    SupervisorSpec, SupervisorUpdate,
};
use super::{
    ChildCounts, ChildInfo, ChildKey, ChildRef, ChildState, Control, SupervisorError,
    SupervisorRef, start_nested,
};
use crate::runtime::{
    ActorOptions, ExitNotice, Global, ProcessId, Runtime, SpawnError, Watcher, lock,
};
use graft_plugin::StopReason;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The exit reason after too many restarts (OTP's `shutdown`, with the why).
pub const REACHED_MAXIMUM_INTENSITY: &str = "reached maximum restart intensity";

/// Children a panicked task left running, with how to stop each, in start order.
type Leftovers = Arc<Mutex<Vec<(ChildRef, Shutdown)>>>;

struct Child {
    spec: ChildSpec,
    running: Option<ChildRef>,
    restarts: u32,
    /// A restart failed and a retry is queued (OTP's `{restarting, Pid}`).
    restarting: bool,
}

impl Child {
    fn new(spec: ChildSpec, running: Option<ChildRef>) -> Child {
        Child {
            spec,
            running,
            restarts: 0,
            restarting: false,
        }
    }

    fn state(&self) -> ChildState {
        match (&self.running, self.restarting) {
            (Some(_), _) => ChildState::Running,
            (None, true) => ChildState::Restarting,
            (None, false) => ChildState::Stopped,
        }
    }
}

struct Supervisor {
    runtime: Runtime,
    me: SupervisorRef,
    spec: SupervisorSpec,
    children: Vec<Child>,
    restart_times: VecDeque<Instant>,
    exits: mpsc::UnboundedSender<ExitNotice>,
    /// Where each running child is in `children`, by process (exits are looked up here).
    by_process: HashMap<ProcessId, usize>,
    label: String,
    /// Where `Drop` leaves the running children if the task ends without stopping them.
    leftovers: Leftovers,
}

impl Drop for Supervisor {
    /// Every normal end stops the children first; only a panic leaves some running. Hand
    /// them to the watcher, which stops them (it can wait; a `Drop` cannot).
    fn drop(&mut self) {
        let running: Vec<(ChildRef, Shutdown)> = self
            .children
            .iter_mut()
            .filter_map(|child| {
                child
                    .running
                    .take()
                    .map(|running| (running, child.spec.shutdown))
            })
            .collect();
        if !running.is_empty() {
            lock(&self.leftovers).extend(running);
        }
    }
}

/// Starts the supervisor's task (and its children, in order, inside it); returns once they
/// have all started, or why not.
pub(super) async fn spawn(
    runtime: Runtime,
    me: SupervisorRef,
    spec: SupervisorSpec,
    label: String,
    control: mpsc::UnboundedReceiver<Control>,
) -> Result<(), SupervisorError> {
    let (exits, exit_notices) = mpsc::unbounded_channel();
    let leftovers: Leftovers = Arc::default();
    let name = spec.name.clone();
    let supervisor = Supervisor {
        runtime: runtime.clone(),
        me: me.clone(),
        spec,
        children: Vec::new(),
        restart_times: VecDeque::new(),
        exits,
        by_process: HashMap::new(),
        label: label.clone(),
        leftovers: Arc::clone(&leftovers),
    };
    let (started, start_result) = oneshot::channel();
    let task = tokio::spawn(supervisor.start_and_run(control, exit_notices, started));
    tokio::spawn(watch_over(
        task,
        me.clone(),
        runtime,
        name,
        label.clone(),
        leftovers,
    ));
    match start_result.await {
        Ok(result) => result,
        // The task panicked while starting the children: the watcher finishes it.
        Err(_) => Err(SupervisorError::StartFailed {
            id: label,
            reason: me.exited().await.to_string(),
        }),
    }
}

/// Waits for the supervisor's task; if it panicked (or was cancelled), stops the children
/// it left, frees its name and finishes it with the panic as the reason.
async fn watch_over(
    task: tokio::task::JoinHandle<()>,
    me: SupervisorRef,
    runtime: Runtime,
    name: Option<String>,
    label: String,
    leftovers: Leftovers,
) {
    let Err(error) = task.await else {
        return;
    };
    let message = if error.is_panic() {
        let payload = error.into_panic();
        let text = payload
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        format!("supervisor panicked: {text}")
    } else {
        "supervisor task cancelled".to_owned()
    };
    let children = std::mem::take(&mut *lock(&leftovers));
    for (child, shutdown) in children.into_iter().rev() {
        stop_child(&child, shutdown).await;
    }
    if let Some(name) = &name {
        runtime.unregister_supervisor(name, me.id());
    }
    tracing::error!(supervisor = %label, reason = %message, "supervisor exited");
    me.shared.lifecycle.finish(StopReason::Error(message));
}

fn describe_reason(reason: &StopReason) -> &'static str {
    if reason.is_clean() {
        "exited"
    } else {
        "crashed"
    }
}

/// What starting one child gave.
type Started = Result<Option<ChildRef>, String>;

impl Supervisor {
    async fn start_and_run(
        mut self,
        control: mpsc::UnboundedReceiver<Control>,
        exit_notices: mpsc::UnboundedReceiver<ExitNotice>,
        started: oneshot::Sender<Result<(), SupervisorError>>,
    ) {
        if let Err(error) = self.start_initial_children().await {
            self.stop_all(false).await;
            self.finish(StopReason::Error(error.to_string()));
            let _ = started.send(Err(error));
            return;
        }
        let _ = started.send(Ok(()));
        self.run(control, exit_notices).await;
    }

    async fn start_initial_children(&mut self) -> Result<(), SupervisorError> {
        if self.spec.strategy == Strategy::Dynamic {
            return Ok(());
        }
        for spec in self.spec.children.clone() {
            self.start_and_add(spec).await?;
        }
        Ok(())
    }

    /// Starts one child and watches its exit; `Ok(None)` when its `init` declined (OTP's
    /// `ignore`).
    async fn start(&self, spec: &ChildSpec, restarts: u32) -> Started {
        let child = match &spec.start {
            ChildStart::Worker(worker) => {
                // A singleton starts only on the holder of its lease; elsewhere it is held
                // in standby like an `ignore`d child (spec kept, no process), and the
                // cluster restarts it here when this host wins the lease.
                if worker.placement == Placement::Singleton
                    && let Some(remote) = self.runtime.remote()
                    && !remote
                        .singleton_gate(self.spec.name.as_deref().unwrap_or_default(), &spec.id)
                        .await
                {
                    return Ok(None);
                }
                let options = ActorOptions {
                    name: worker.name.clone(),
                    factory: Arc::clone(&worker.factory),
                    args: worker.args.clone(),
                    trap_exit: worker.trap_exit,
                    restarts,
                    max_mailbox: worker.factory.max_mailbox(worker.max_mailbox),
                    global: match (worker.placement, worker.global) {
                        (Placement::Singleton, _) => Global::Singleton,
                        (Placement::Local, true) => Global::Yes,
                        (Placement::Local, false) => Global::No,
                    },
                };
                match self.runtime.spawn(options).await {
                    Ok(actor) => ChildRef::Worker(actor),
                    Err(SpawnError::Ignored { .. }) => return Ok(None),
                    Err(SpawnError::Stopped { reason, .. }) if reason.is_clean() => {
                        // Started and done at once (a one-off task): counted as a failed
                        // start, so restart rules still apply.
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
        Ok(Some(child))
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
        self.by_process
            .get(&process)
            .copied()
            .filter(|&index| index < self.children.len())
    }

    fn position_of(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|child| child.spec.id == id)
    }

    /// Sets the running process of the child at `index`, keeping the index current.
    fn set_running(&mut self, index: usize, running: ChildRef) {
        let Some(child) = self.children.get_mut(index) else {
            return;
        };
        child.restarting = false;
        let previous = child.running.replace(running.clone());
        if let Some(previous) = previous {
            self.by_process.remove(&previous.id());
        }
        self.by_process.insert(running.id(), index);
    }

    /// Takes the running process of the child at `index`, keeping the index current.
    fn take_running(&mut self, index: usize) -> Option<ChildRef> {
        let running = self.children.get_mut(index)?.running.take()?;
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
        if index >= self.children.len() {
            return;
        }
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
        let child = self.children.get(index)?;
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
        if restart {
            return self.restart_from(index).await;
        }
        let (id, significant) = (child.spec.id.clone(), child.spec.significant);
        if child.spec.restart == Restart::Temporary || self.spec.strategy == Strategy::Dynamic {
            self.remove_child(index);
        }
        if significant {
            return self.auto_shutdown(&id).await;
        }
        None
    }

    /// A significant child has exited for good: shuts the supervisor down if its
    /// `auto_shutdown` says so (OTP's `do_auto_shutdown`).
    async fn auto_shutdown(&mut self, id: &str) -> Option<StopReason> {
        let shut_down = match self.spec.auto_shutdown {
            AutoShutdown::Never => false,
            AutoShutdown::AnySignificant => true,
            AutoShutdown::AllSignificant => !self.children.iter().any(|child| {
                child.spec.significant && (child.running.is_some() || child.restarting)
            }),
        };
        if !shut_down {
            return None;
        }
        tracing::info!(supervisor = %self.label, child = %id, "significant child exited; shutting down (auto_shutdown)");
        self.stop_all(false).await;
        Some(StopReason::Shutdown(Some(format!(
            "auto_shutdown: significant child {id:?} exited"
        ))))
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

    /// A restart of `id` failed: it is `restarting` until a retry, queued behind the
    /// requests already waiting (OTP's `try_again_restart`), starts it or something cancels
    /// it.
    fn retry_later(&mut self, index: usize, reason: &str) {
        let Some(child) = self.children.get_mut(index) else {
            return;
        };
        tracing::error!(supervisor = %self.label, child = %child.spec.id, "restart failed: {reason}");
        child.restarting = true;
        let _ = self
            .me
            .shared
            .sender
            .send(Control::TryAgainRestart(child.spec.id.clone()));
    }

    /// Restarts the child at `index` (with its siblings, by strategy).
    async fn restart_from(&mut self, index: usize) -> Option<StopReason> {
        let id = self.children.get(index)?.spec.id.clone();
        if !self.add_restart() {
            tracing::error!(
                supervisor = %self.label,
                child = %id,
                max_restarts = self.spec.max_restarts,
                max_seconds = self.spec.max_seconds,
                "reached maximum restart intensity; shutting down"
            );
            crate::metrics::host::supervisor_reached_intensity(&self.label);
            self.stop_all(false).await;
            return Some(StopReason::Shutdown(Some(
                REACHED_MAXIMUM_INTENSITY.to_owned(),
            )));
        }
        match self.spec.strategy {
            Strategy::OneForOne | Strategy::Dynamic => {
                self.restart_one(index).await;
                None
            }
            Strategy::OneForAll => {
                self.restart_group(0).await;
                None
            }
            Strategy::RestForOne => {
                self.restart_group(index).await;
                None
            }
        }
    }

    /// Starts the child at `index` again (one for one).
    async fn restart_one(&mut self, index: usize) {
        let Some(child) = self.children.get_mut(index) else {
            return;
        };
        child.restarts += 1;
        let (spec, restarts) = (child.spec.clone(), child.restarts);
        crate::metrics::host::supervisor_restarted(&self.label);
        match self.start(&spec, restarts).await {
            Ok(Some(running)) => self.set_running(index, running),
            Ok(None) => {
                // Ignored: a dynamic child goes; a static one stays, with no process.
                if self.spec.strategy == Strategy::Dynamic {
                    self.remove_child(index);
                } else if let Some(child) = self.children.get_mut(index) {
                    child.restarting = false;
                }
            }
            Err(reason) => self.retry_later(index, &reason),
        }
    }

    /// Stops the children from `first` on (in reverse order) and starts them all again in
    /// order, as OTP's `one_for_all` (from 0) and `rest_for_one` do: every child of the
    /// group comes back, including ones stopped with `terminate_child`; temporary ones are
    /// stopped and their specs go.
    async fn restart_group(&mut self, first: usize) {
        for sibling in (first..self.children.len()).rev() {
            if let Some(running) = self.take_running(sibling) {
                let shutdown = self
                    .children
                    .get(sibling)
                    .map_or(Shutdown::BrutalKill, |child| child.spec.shutdown);
                stop_child(&running, shutdown).await;
            }
        }
        let mut position = first;
        while position < self.children.len() {
            if self
                .children
                .get(position)
                .is_some_and(|child| child.spec.restart == Restart::Temporary)
            {
                self.children.remove(position);
            } else {
                position += 1;
            }
        }
        self.reindex();
        for index in first..self.children.len() {
            let Some(child) = self.children.get_mut(index) else {
                break;
            };
            // Any retry queued for a child of the group is now moot.
            child.restarting = false;
            child.restarts += 1;
            let (spec, restarts) = (child.spec.clone(), child.restarts);
            crate::metrics::host::supervisor_restarted(&self.label);
            match self.start(&spec, restarts).await {
                Ok(Some(running)) => self.set_running(index, running),
                Ok(None) => {}
                Err(reason) => {
                    // The rest of the group waits, stopped, for the retry, which restarts
                    // the group again.
                    self.retry_later(index, &reason);
                    return;
                }
            }
        }
    }

    async fn on_control(&mut self, message: Control) -> Option<StopReason> {
        match message {
            Control::WhichChildren(reply) => {
                let _ = reply.send(self.which_children());
            }
            Control::WhichChild(key, reply) => {
                let _ = reply.send(
                    self.find(&key)
                        .and_then(|index| self.children.get(index))
                        .map(|child| self.child_info(child))
                        .ok_or_else(|| SupervisorError::NotFound(key.to_string())),
                );
            }
            Control::GetChildSpec(key, reply) => {
                let _ = reply.send(
                    self.find(&key)
                        .and_then(|index| self.children.get(index))
                        .map(|child| child.spec.clone())
                        .ok_or_else(|| SupervisorError::NotFound(key.to_string())),
                );
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
                let _ = reply.send(self.count_children());
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
            Control::TryAgainRestart(id) => {
                if let Some(index) = self.position_of(&id)
                    && self
                        .children
                        .get(index)
                        .is_some_and(|child| child.restarting && child.running.is_none())
                {
                    return self.restart_from(index).await;
                }
            }
            Control::Update(update, reply) => {
                let _ = reply.send(self.update(update));
            }
            Control::Shutdown { brutal } => {
                self.stop_all(brutal).await;
                return Some(StopReason::Shutdown(None));
            }
        }
        None
    }

    /// OTP's supervisor `code_change`: checked whole first, then applied; a refused update
    /// changes nothing.
    fn update(&mut self, update: SupervisorUpdate) -> Result<(), SupervisorError> {
        if (self.spec.strategy == Strategy::Dynamic) != (update.strategy == Strategy::Dynamic) {
            return Err(SupervisorError::Unsupported {
                operation: "changing between a dynamic and a static strategy",
                strategy: self.spec.strategy,
            });
        }
        spec::check_children(update.strategy, update.auto_shutdown, &update.children)?;
        // Specs the update does not mention are kept: they must suit the new flags too.
        if update.strategy != Strategy::Dynamic
            && update.auto_shutdown == AutoShutdown::Never
            && let Some(child) = self.children.iter().find(|child| {
                child.spec.significant
                    && !update.children.iter().any(|spec| spec.id == child.spec.id)
            })
        {
            return Err(SupervisorError::InvalidSpec(
                SpecError::SignificantWithoutAutoShutdown(child.spec.id.clone()),
            ));
        }
        self.spec.strategy = update.strategy;
        self.spec.max_restarts = update.max_restarts;
        self.spec.max_seconds = update.max_seconds;
        self.spec.auto_shutdown = update.auto_shutdown;
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
                None => self.children.push(Child::new(spec, None)),
            }
        }
        Ok(())
    }

    fn child_info(&self, child: &Child) -> ChildInfo {
        let (name, plugin) = match &child.spec.start {
            ChildStart::Worker(worker) => (worker.name.clone(), worker.factory.identity()),
            ChildStart::Supervisor(nested) => (nested.name.clone(), None),
        };
        ChildInfo {
            id: child.spec.id.clone(),
            process: child.running.as_ref().map(|running| running.id().0),
            child: child.running.clone(),
            state: child.state(),
            supervisor: matches!(child.spec.start, ChildStart::Supervisor(_)),
            name,
            restart: child.spec.restart,
            significant: child.spec.significant,
            restarts: child.restarts,
            plugin,
        }
    }

    fn which_children(&self) -> Vec<ChildInfo> {
        self.children
            .iter()
            .map(|child| self.child_info(child))
            .collect()
    }

    /// OTP's `count_children`: a dynamic supervisor has one spec (its template) and counts
    /// its children as workers or supervisors by that template.
    fn count_children(&self) -> ChildCounts {
        let active = self
            .children
            .iter()
            .filter(|child| child.running.is_some())
            .count();
        if self.spec.strategy == Strategy::Dynamic {
            let nested = self
                .spec
                .children
                .first()
                .is_some_and(|template| matches!(template.start, ChildStart::Supervisor(_)));
            let count = self.children.len();
            return ChildCounts {
                specs: 1,
                active,
                supervisors: if nested { count } else { 0 },
                workers: if nested { 0 } else { count },
            };
        }
        let supervisors = self
            .children
            .iter()
            .filter(|child| matches!(child.spec.start, ChildStart::Supervisor(_)))
            .count();
        ChildCounts {
            specs: self.children.len(),
            active,
            supervisors,
            workers: self.children.len() - supervisors,
        }
    }

    fn refuse_dynamic<T>(&self, operation: &'static str) -> Result<T, SupervisorError> {
        Err(SupervisorError::Unsupported {
            operation,
            strategy: self.spec.strategy,
        })
    }

    async fn start_static_child(
        &mut self,
        spec: ChildSpec,
    ) -> Result<Option<ChildRef>, SupervisorError> {
        if self.spec.strategy == Strategy::Dynamic {
            return self.refuse_dynamic("start_child with a spec");
        }
        spec::check_child(&spec, self.spec.auto_shutdown)?;
        if let Some(existing) = self.children.iter().find(|child| child.spec.id == spec.id) {
            return Err(if existing.running.is_some() {
                SupervisorError::AlreadyStarted(spec.id)
            } else {
                SupervisorError::AlreadyPresent(spec.id)
            });
        }
        self.start_and_add(spec).await
    }

    /// Starts a child and appends it to the children, in start order. An ignored start
    /// keeps the spec, with no process, unless the child is temporary.
    async fn start_and_add(
        &mut self,
        spec: ChildSpec,
    ) -> Result<Option<ChildRef>, SupervisorError> {
        let running =
            self.start(&spec, 0)
                .await
                .map_err(|reason| SupervisorError::StartFailed {
                    id: spec.id.clone(),
                    reason,
                })?;
        if running.is_some() || spec.restart != Restart::Temporary {
            self.push_child(Child::new(spec, running.clone()));
        }
        Ok(running)
    }

    async fn start_dynamic_child(
        &mut self,
        args: Vec<u8>,
        name: Option<String>,
    ) -> Result<Option<ChildRef>, SupervisorError> {
        if self.spec.strategy != Strategy::Dynamic {
            return self.refuse_dynamic("start_dynamic_child");
        }
        let Some(template) = self.spec.children.first() else {
            return Err(SupervisorError::InvalidSpec(SpecError::TemplateCount {
                found: 0,
            }));
        };
        let mut spec = template.clone();
        if let ChildStart::Worker(worker) = &mut spec.start {
            worker.args = args;
            worker.name = name.clone();
        }
        let started =
            self.start(&spec, 0)
                .await
                .map_err(|reason| SupervisorError::StartFailed {
                    id: name.clone().unwrap_or_else(|| spec.id.clone()),
                    reason,
                })?;
        // Ignored: not recorded (OTP answers `{ok, undefined}`).
        let Some(running) = started else {
            return Ok(None);
        };
        spec.id = name.unwrap_or_else(|| running.id().to_string());
        self.push_child(Child::new(spec, Some(running.clone())));
        Ok(Some(running))
    }

    /// Where the child `key` names is. A static supervisor's children are named by id
    /// only (a process id is "not found", as in OTP); a dynamic one's by process, or by
    /// the id it was given (its name, or its first process id).
    fn find(&self, key: &ChildKey) -> Option<usize> {
        match key {
            ChildKey::Id(id) => self.position_of(id),
            ChildKey::Process(process) if self.spec.strategy == Strategy::Dynamic => {
                self.position(*process)
            }
            ChildKey::Process(_) => None,
        }
    }

    async fn terminate_child(&mut self, key: ChildKey) -> Result<(), SupervisorError> {
        let index = self
            .find(&key)
            .ok_or_else(|| SupervisorError::NotFound(key.to_string()))?;
        self.terminate_at(index).await;
        Ok(())
    }

    /// Stops the child at `index` and cancels any retry queued for it; its spec stays,
    /// unless it is temporary or dynamic.
    async fn terminate_at(&mut self, index: usize) {
        if let Some(running) = self.take_running(index) {
            let shutdown = self
                .children
                .get(index)
                .map_or(Shutdown::BrutalKill, |child| child.spec.shutdown);
            stop_child(&running, shutdown).await;
        }
        let Some(child) = self.children.get_mut(index) else {
            return;
        };
        child.restarting = false;
        if self.spec.strategy == Strategy::Dynamic || child.spec.restart == Restart::Temporary {
            self.remove_child(index);
        }
    }

    /// The index of the static child `id`, which must exist and be stopped (not running,
    /// not restarting).
    fn stopped_static_child(&self, id: &str) -> Result<usize, SupervisorError> {
        let index = self
            .position_of(id)
            .ok_or_else(|| SupervisorError::NotFound(format!("{id:?}")))?;
        match self.children.get(index).map(Child::state) {
            Some(ChildState::Running) => Err(SupervisorError::Running(id.to_owned())),
            Some(ChildState::Restarting) => Err(SupervisorError::Restarting(id.to_owned())),
            Some(ChildState::Stopped) => Ok(index),
            None => Err(SupervisorError::NotFound(format!("{id:?}"))),
        }
    }

    async fn restart_child(&mut self, id: &str) -> Result<Option<ChildRef>, SupervisorError> {
        if self.spec.strategy == Strategy::Dynamic {
            return self.refuse_dynamic("restart_child");
        }
        let index = self.stopped_static_child(id)?;
        let Some(child) = self.children.get(index) else {
            return Err(SupervisorError::NotFound(format!("{id:?}")));
        };
        let (spec, restarts) = (child.spec.clone(), child.restarts);
        let running =
            self.start(&spec, restarts)
                .await
                .map_err(|reason| SupervisorError::StartFailed {
                    id: id.to_owned(),
                    reason,
                })?;
        if let Some(running) = &running {
            self.set_running(index, running.clone());
        }
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
    /// supervisor (as OTP does). Queued retries are cancelled.
    async fn stop_all(&mut self, brutal: bool) {
        self.by_process.clear();
        let running: Vec<(ChildRef, Shutdown)> = self
            .children
            .iter_mut()
            .filter_map(|child| {
                child.restarting = false;
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
