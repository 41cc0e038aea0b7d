//! The running supervisor: one tokio task owning the ordered children, their exits, the
//! restart decisions and the child operations.
//!
//! Invariants: children start in order and stop in reverse (a dynamic supervisor stops
//! them in parallel); every restart attempt counts against the intensity; the task never
//! panics on its own, and if code it calls panics anyway, its wrapper stops the children it
//! left and finishes the supervisor with the panic as the exit reason.
//!
//! What is tricky: an exit notice may arrive for a child the supervisor itself just
//! stopped or replaced; notices are matched against the *current* process of each child,
//! so stale ones are ignored.

use super::spec::{
    ChildSpec, ChildStart, Restart, Shutdown, Strategy, SupervisorSpec, SupervisorUpdate,
};
use super::{
    ChildCounts, ChildInfo, ChildKey, ChildRef, Control, SupervisorError, SupervisorRef,
    start_nested,
};
use crate::runtime::{ActorOptions, ExitNotice, ProcessId, Runtime, SpawnError, Watcher};
use graft_plugin::StopReason;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub(super) struct Child {
    spec: ChildSpec,
    running: Option<ChildRef>,
    restarts: u32,
}

pub(super) struct Supervisor {
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

fn describe_reason(reason: &StopReason) -> &'static str {
    if reason.is_clean() {
        "exited"
    } else {
        "crashed"
    }
}

impl Supervisor {
    pub(super) fn new(
        runtime: Runtime,
        me: SupervisorRef,
        spec: SupervisorSpec,
        label: String,
        exits: mpsc::UnboundedSender<ExitNotice>,
    ) -> Supervisor {
        Supervisor {
            runtime,
            me,
            children: Vec::new(),
            restart_times: VecDeque::new(),
            exits,
            by_process: std::collections::HashMap::new(),
            retry: VecDeque::new(),
            label,
            spec,
        }
    }

    pub(super) async fn start_initial_children(&mut self) -> Result<(), SupervisorError> {
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

    pub(super) async fn run(
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

    pub(super) fn finish(&self, reason: StopReason) {
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
    pub(super) async fn stop_all(&mut self, brutal: bool) {
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
