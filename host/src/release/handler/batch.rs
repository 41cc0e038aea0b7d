//! The atomic update batch (phases 2 and 3 of an install): every actor of an updated
//! plugin (and its `suspend_with` companions) suspended under one deadline, snapshotted
//! and migrated ([`super::migration`]), then either all rolled back onto their old code
//! or committed — the plugin table switches, they resume, stragglers started during the
//! window are moved, and each update's purge policy applies.
//!
//! What is tricky: an actor that did not answer in time still has the suspend (and the
//! abandoned migration) in its mailbox, so the rollback's resume is queued behind them;
//! a worker process of an updated plugin that died during the batch aborts it.

use super::*;

impl ReleaseHandler {
    /// Phases 2 and 3 of an install for the given updates: suspend, snapshot and migrate
    /// (or undo all of it), then switch the plugin table, resume, move stragglers, purge.
    pub(super) async fn swap(
        &self,
        state: &mut State,
        updates: &[PlannedUpdate],
        companions: &HashSet<String>,
        direction: Direction,
        target_plugins: &HashMap<String, PluginVersion>,
        report: &(dyn Fn(InstallPhase) + Send + Sync),
    ) -> Result<Swapped, ReleaseError> {
        let started_before = self.runtime.processes_started();
        let watched = self.watch_workers(updates);
        let all_workers = workers(state.root_supervisor.clone()).await;
        let updated: HashMap<&str, &PlannedUpdate> = updates
            .iter()
            .map(|update| (update.plugin.as_str(), update))
            .collect();
        let mut to_migrate: Vec<(ActorRef, &PlannedUpdate)> = Vec::new();
        let mut to_suspend: Vec<(ActorRef, String, Duration)> = Vec::new();
        for (actor, plugin) in &all_workers {
            let Some(plugin) = plugin else { continue };
            if let Some(update) = updated.get(plugin.as_str()) {
                to_migrate.push((actor.clone(), update));
                to_suspend.push((actor.clone(), plugin.clone(), update.suspend_timeout));
            } else if companions.contains(plugin) {
                let timeout = updates
                    .iter()
                    .map(|update| update.suspend_timeout)
                    .max()
                    .unwrap_or_default();
                to_suspend.push((actor.clone(), plugin.clone(), timeout));
            }
        }
        // Suspend everyone, then migrate everyone: each phase one batch under one deadline.
        // (Sending change_code right behind suspend would save a round trip, but a long
        // migration would then hold hostage the task the suspend answer just woke: tokio
        // puts it in the worker's LIFO slot, which other workers cannot steal.)
        report(InstallPhase::Suspending(to_suspend.len()));
        let snapshots: Snapshots = Arc::default();
        let suspended_at = Instant::now();
        let timeout = updates
            .iter()
            .map(|update| update.suspend_timeout)
            .max()
            .unwrap_or_default();
        let suspend_refs: Vec<ActorRef> = to_suspend
            .iter()
            .map(|(actor, _, _)| actor.clone())
            .collect();
        let migrate_refs: Vec<ActorRef> =
            to_migrate.iter().map(|(actor, _)| actor.clone()).collect();
        let suspended = runtime::suspend_all(&suspend_refs, timeout).await;
        let failure = match check_suspended(&to_suspend, suspended) {
            Err(failure) => Some(failure),
            Ok(()) => {
                report(InstallPhase::Migrating(to_migrate.len()));
                let migrations = to_migrate
                    .iter()
                    .map(|(actor, update)| migration(update, direction, &snapshots, actor))
                    .collect();
                check_migrated(
                    &to_migrate,
                    runtime::change_code_all(&migrate_refs, migrations, timeout).await,
                    &snapshots,
                )
            }
        };
        // A worker of an updated plugin that died meanwhile took its actors with it (they
        // exited, so their answers do not count as failures): the install aborts too, and
        // they restart on the old code.
        let failure = failure.or_else(|| {
            watched.iter().find_map(|(plugin, process)| {
                process.exit_reason().map(|reason| {
                    Box::new((
                        ReleaseError::WorkerCrashed {
                            plugin: plugin.clone(),
                            reason,
                        },
                        HashSet::new(),
                    ))
                })
            })
        });
        if let Some(failure) = failure {
            let (error, busy) = *failure;
            rollback(&to_migrate, &snapshots, &busy).await;
            let answering: Vec<(ActorRef, String, Duration)> = to_suspend
                .iter()
                .filter(|(actor, _, _)| !busy.contains(&actor.id()))
                .cloned()
                .collect();
            resume_all(&answering).await;
            // An actor that did not answer in time still has the suspend (and the abandoned
            // change_code) in its mailbox; the resume queued behind them undoes it when it
            // gets there (OTP sends this defensive resume too). Nobody waits for those.
            let still_busy: Vec<ActorRef> = to_suspend
                .iter()
                .filter(|(actor, _, _)| busy.contains(&actor.id()))
                .map(|(actor, _, _)| actor.clone())
                .collect();
            tokio::spawn(async move {
                runtime::resume_all(&still_busy, Duration::from_secs(3600)).await;
            });
            report(InstallPhase::RolledBack);
            return Err(error);
        }

        // Commit.
        lock(&self.table.current).extend(
            target_plugins
                .iter()
                .map(|(name, plugin)| (name.clone(), plugin.clone())),
        );
        report(InstallPhase::Resuming(to_suspend.len()));
        resume_all(&to_suspend).await;
        let longest_pause = suspended_at.elapsed();
        for plugin in target_plugins
            .values()
            .filter_map(PluginVersion::in_process)
        {
            if !state
                .loaded
                .iter()
                .any(|loaded| loaded.as_ptr() == Arc::as_ptr(plugin))
            {
                state.loaded.push(Arc::downgrade(plugin));
            }
        }
        state.loaded.retain(|loaded| loaded.strong_count() > 0);
        let migrated = lock(&snapshots).taken.len();
        drop(snapshots);
        // Only actors started since the walk can still be on the old code.
        let stragglers = if self.runtime.processes_started() == started_before {
            0
        } else {
            let handled: HashSet<ProcessId> =
                to_suspend.iter().map(|(actor, _, _)| actor.id()).collect();
            self.migrate_stragglers(&state.root_supervisor, updates, direction, &handled)
                .await
        };
        self.purge(updates, &state.root_supervisor).await;
        Ok(Swapped {
            migrated: migrated + stragglers,
            suspended: to_suspend.len(),
            longest_pause,
        })
    }

    /// The running worker processes of the updated plugins (old and target versions), to
    /// tell afterwards whether one died during the install.
    pub(super) fn watch_workers(&self, updates: &[PlannedUpdate]) -> Vec<(String, WorkerProcess)> {
        let table = lock(&self.table.current);
        let mut watched: Vec<(String, WorkerProcess)> = Vec::new();
        for update in updates {
            for version in [table.get(&update.plugin), Some(&update.target)]
                .into_iter()
                .flatten()
            {
                let PluginVersion::Isolated(plugin) = version else {
                    continue;
                };
                if let Some(process) = plugin.worker().latest_process()
                    && process.exit_reason().is_none()
                    && !watched
                        .iter()
                        .any(|(_, known)| known.pid() == process.pid())
                {
                    watched.push((update.plugin.clone(), process));
                }
            }
        }
        watched
    }

    /// Actors of updated plugins still on the old code (started during the window):
    /// moved now, one by one.
    pub(super) async fn migrate_stragglers(
        &self,
        root: &SupervisorRef,
        updates: &[PlannedUpdate],
        direction: Direction,
        handled: &HashSet<ProcessId>,
    ) -> usize {
        let mut migrated = 0;
        for (actor, plugin) in workers(root.clone()).await {
            if handled.contains(&actor.id()) {
                continue;
            }
            let Some(update) =
                plugin.and_then(|plugin| updates.iter().find(|update| update.plugin == plugin))
            else {
                continue;
            };
            let Ok(status) = actor.status(update.suspend_timeout).await else {
                continue;
            };
            // Already on the target version (unless the update moves it between the host
            // and a worker: then the migration itself tells).
            if !update.switches_isolation
                && status.version.as_deref() == Some(&update.target.version().to_string())
            {
                continue;
            }
            let snapshots: Snapshots = Arc::default();
            if actor.suspend(update.suspend_timeout).await.is_ok() {
                let result = actor
                    .change_code(
                        migration(update, direction, &snapshots, &actor),
                        update.suspend_timeout,
                    )
                    .await;
                let _ = actor.resume(update.suspend_timeout).await;
                match result {
                    Ok(()) => migrated += 1,
                    Err(error) => {
                        tracing::warn!(actor = %actor.label(), "straggler not migrated: {error}")
                    }
                }
            }
        }
        migrated
    }

    /// Applies each update's purge policy to actors still on an old version.
    pub(super) async fn purge(&self, updates: &[PlannedUpdate], root: &SupervisorRef) {
        let brutal: Vec<&PlannedUpdate> = updates
            .iter()
            .filter(|update| update.purge == PurgePolicy::Brutal)
            .collect();
        if brutal.is_empty() {
            return;
        }
        let mut candidates: Vec<ActorRef> = workers(root.clone())
            .await
            .into_iter()
            .map(|(actor, _)| actor)
            .collect();
        candidates.extend(
            self.runtime
                .registered_names()
                .iter()
                .filter_map(|name| self.runtime.whereis(name)),
        );
        let mut seen = HashSet::new();
        for actor in candidates {
            if !seen.insert(actor.id()) {
                continue;
            }
            let Ok(status) = actor.status(Duration::from_secs(1)).await else {
                continue;
            };
            let lingering = brutal.iter().any(|update| {
                status.plugin.as_deref() == Some(update.plugin.as_str())
                    && status.version.as_deref() != Some(&update.target.version().to_string())
            });
            if lingering {
                tracing::warn!(actor = %actor.label(), "brutal purge: stopping an actor still on old code");
                actor.kill();
            }
        }
    }
}
