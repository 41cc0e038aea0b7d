//! The atomic update batch (phases 2 and 3 of an install): every actor of an updated
//! plugin (and its `suspend_with` companions) suspended under one deadline, snapshotted
//! and migrated ([`super::migration`]), then either all rolled back onto their old code
//! or committed — the plugin table switches, they resume, stragglers started during the
//! window are moved, and each update's purge policy applies.
//!
//! Speed: the pause is from the first suspend to the last resume's answer, so everything
//! that can be made before it is (the lists of actors from one walk of the tree, one
//! migration closure per actor from one shared [`MigrationPlan`] per update). Each actor's
//! migration is queued right behind its suspend, so it migrates as soon as it is
//! suspended and the batch pays one round trip, not two; the commit still waits for every
//! suspend and every migration. The requests are sent and their answers collected by one
//! task per core ([`driver_count`]), each with a contiguous share of the actors.
//!
//! What is tricky: an actor that did not answer in time still has the suspend (and the
//! abandoned migration) in its mailbox, so the rollback's resume is queued behind them; a
//! failed suspend *abandons* the migrations already queued (those that have not taken
//! their snapshot change nothing when they run; those that have are undone from it like
//! after a failed migration); a worker process of an updated plugin that died during the
//! batch aborts it.

use super::*;

impl ReleaseHandler {
    /// Phases 2 and 3 of an install for the given updates: suspend, snapshot and migrate
    /// (or undo all of it), then switch the plugin table, resume, move stragglers, purge.
    /// `walked`: the workers, when the caller found them already (while the libraries
    /// loaded); walked here otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn swap(
        &self,
        state: &mut State,
        updates: &[PlannedUpdate],
        companions: &HashSet<String>,
        direction: Direction,
        target_plugins: &HashMap<String, PluginVersion>,
        walked: Option<Walk>,
        report: &(dyn Fn(InstallPhase) + Send + Sync),
    ) -> Result<Swapped, ReleaseError> {
        let watched = self.watch_workers(updates);
        let walk = match walked {
            Some(walk) => walk,
            None => Walk::of(&self.runtime, &state.root_supervisor).await,
        };
        let updated: HashMap<&str, &PlannedUpdate> = updates
            .iter()
            .map(|update| (update.plugin.as_str(), update))
            .collect();
        // Parallel lists, not tuples: the runtime takes slices of actors, and nothing per
        // actor is cloned but its handle.
        let mut to_migrate: Vec<ActorRef> = Vec::with_capacity(walk.workers.len());
        let mut migrate_updates: Vec<&PlannedUpdate> = Vec::with_capacity(walk.workers.len());
        let mut to_suspend: Vec<ActorRef> = Vec::with_capacity(walk.workers.len());
        let mut suspend_plugins: Vec<&str> = Vec::with_capacity(walk.workers.len());
        for (actor, plugin) in &walk.workers {
            let Some(plugin) = plugin else { continue };
            if let Some(update) = updated.get(plugin.as_str()) {
                to_migrate.push(actor.clone());
                migrate_updates.push(update);
            } else if !companions.contains(plugin) {
                continue;
            }
            to_suspend.push(actor.clone());
            suspend_plugins.push(plugin.as_str());
        }
        let timeout = updates
            .iter()
            .map(|update| update.suspend_timeout)
            .max()
            .unwrap_or_default();
        // Every migration is made before the first suspend, so the pause does not pay for
        // them: one shared plan per update, one closure per actor.
        let snapshots: Snapshots =
            Arc::new(Mutex::new(SnapshotBook::with_capacity(to_migrate.len())));
        let plans: HashMap<&str, Arc<MigrationPlan>> = updates
            .iter()
            .map(|update| {
                (
                    update.plugin.as_str(),
                    MigrationPlan::new(update, direction, &snapshots),
                )
            })
            .collect();
        let migrations: Vec<Migration> = to_migrate
            .iter()
            .zip(&migrate_updates)
            .map(|(actor, update)| migration(&plans[update.plugin.as_str()], actor))
            .collect();
        drop(plans);

        // Suspend everyone and queue each migration right behind its actor's suspend: an
        // actor migrates as soon as it is suspended, while the others are still being
        // suspended, and the batch pays one round trip instead of two. The commit still
        // waits for every suspend and every migration; if a suspend fails, the migrations
        // are abandoned (see `abandon`), and those that ran are undone from their
        // snapshots like after a failed migration.
        report(InstallPhase::Suspending(to_suspend.len()));
        let suspended_at = Instant::now();
        let (suspended, migrating) =
            suspend_and_migrate_all(&to_suspend, &to_migrate, migrations, timeout).await;
        let failure = match check_suspended(&to_suspend, &suspend_plugins, suspended) {
            Err(failure) => {
                abandon(&snapshots);
                drop(migrating);
                Some(failure)
            }
            Ok(()) => {
                report(InstallPhase::Migrating(to_migrate.len()));
                check_migrated(&to_migrate, &migrate_updates, migrating.await, &snapshots)
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
            let (still_busy, answering): (Vec<ActorRef>, Vec<ActorRef>) = to_suspend
                .iter()
                .cloned()
                .partition(|actor| busy.contains(&actor.id()));
            resume_all(&answering).await;
            // An actor that did not answer in time still has the suspend (and the abandoned
            // change_code) in its mailbox; the resume queued behind them undoes it when it
            // gets there (OTP sends this defensive resume too). Nobody waits for those.
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
        resume_in_parallel(&to_suspend).await;
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
        let stragglers = if walk.outdated(&self.runtime) {
            let handled: HashSet<ProcessId> = to_suspend.iter().map(ActorRef::id).collect();
            self.migrate_stragglers(&state.root_supervisor, updates, direction, &handled)
                .await
        } else {
            0
        };
        self.purge(updates, &state.root_supervisor).await;
        Ok(Swapped {
            migrated: migrated + stragglers,
            suspended: to_suspend.len(),
            longest_pause,
            walk,
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
                let plan = MigrationPlan::new(update, direction, &snapshots);
                let result = actor
                    .change_code(migration(&plan, &actor), update.suspend_timeout)
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

/// Below this many actors per task, a batch is not split further.
const ACTORS_PER_DRIVER: usize = 512;

/// How many tasks drive a batch of `actors`: one per core, each with at least
/// [`ACTORS_PER_DRIVER`] actors.
fn driver_count(actors: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    cores.min(actors.div_ceil(ACTORS_PER_DRIVER)).max(1)
}

/// The joined task's value; a panic in it goes on in the caller.
async fn joined<T>(task: &mut tokio::task::JoinHandle<T>) -> T {
    task.await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}

/// Tasks aborted when their owner is dropped (an abandoned wait for answers).
struct AbortOnDrop<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// One driver's share of a batch: contiguous actors of the suspend list, and those of them
/// that migrate with their migrations.
struct Share {
    suspend: Vec<ActorRef>,
    migrate: Vec<ActorRef>,
    migrations: Vec<Migration>,
}

/// Suspends every actor of `to_suspend` and migrates those of `to_migrate` (a subsequence
/// of it, in the same order), split over [`driver_count`] tasks so that sending the
/// requests and collecting the answers runs on every core: each task sends its share's
/// suspends, queues its migrations behind them ([`suspend_then_migrate`]) and collects.
/// Returns the suspend answers, in order, and the wait for the migrations' answers, in
/// order.
pub(super) async fn suspend_and_migrate_all(
    to_suspend: &[ActorRef],
    to_migrate: &[ActorRef],
    migrations: Vec<Migration>,
    timeout: Duration,
) -> (
    Vec<Result<(), SystemError>>,
    impl std::future::Future<Output = Vec<Result<(), SystemError>>> + Send + 'static,
) {
    let share_size = to_suspend
        .len()
        .div_ceil(driver_count(to_suspend.len()))
        .max(1);
    let mut migrating = to_migrate.iter().zip(migrations).peekable();
    let mut tasks = Vec::new();
    for chunk in to_suspend.chunks(share_size) {
        let mut share = Share {
            suspend: chunk.to_vec(),
            migrate: Vec::new(),
            migrations: Vec::new(),
        };
        for actor in chunk {
            if let Some((_, migration)) =
                migrating.next_if(|(migrated, _)| migrated.id() == actor.id())
            {
                share.migrate.push(actor.clone());
                share.migrations.push(migration);
            }
        }
        tasks.push(tokio::spawn(async move {
            let (suspended, migrating) =
                suspend_then_migrate(&share.suspend, &share.migrate, share.migrations, timeout)
                    .await;
            // Collected on its own task too, as soon as the suspends are in.
            (suspended, tokio::spawn(migrating))
        }));
    }
    let mut suspended = Vec::with_capacity(to_suspend.len());
    let mut waits = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        let (answers, wait) = joined(&mut task).await;
        suspended.extend(answers);
        waits.push(wait);
    }
    let mut waits = AbortOnDrop(waits);
    let migrated = async move {
        let mut migrated = Vec::new();
        for wait in &mut waits.0 {
            migrated.extend(joined(wait).await);
        }
        migrated
    };
    (suspended, migrated)
}

/// Resumes every actor, split over [`driver_count`] tasks like the suspends.
pub(super) async fn resume_in_parallel(actors: &[ActorRef]) {
    let share_size = actors.len().div_ceil(driver_count(actors.len())).max(1);
    let tasks: Vec<_> = actors
        .chunks(share_size)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            tokio::spawn(async move { resume_all(&chunk).await })
        })
        .collect();
    for mut task in tasks {
        joined(&mut task).await;
    }
}

/// Sends every suspend, then queues every migration behind its actor's suspend; returns the
/// suspend answers (collected under `timeout`) and the wait for the migrations' answers
/// (under `timeout` again, from when it is first awaited).
///
/// What is tricky: a `change_code` sent before its actor's `suspend` would be refused (the
/// actor is not suspended yet), so the suspends are queued first
/// ([`runtime::queue_suspend_all`] sends them before it returns). The migrations' answers
/// come back to this task, a tokio task off the actor executor, so queuing a migration
/// right behind a suspend holds no task of the executor hostage behind a long
/// `code_change` (see `runtime/actor.rs`).
async fn suspend_then_migrate(
    to_suspend: &[ActorRef],
    to_migrate: &[ActorRef],
    migrations: Vec<Migration>,
    timeout: Duration,
) -> (
    Vec<Result<(), SystemError>>,
    impl std::future::Future<Output = Vec<Result<(), SystemError>>> + Send + 'static,
) {
    let suspending = runtime::queue_suspend_all(to_suspend, timeout);
    let migrating = runtime::queue_change_code_all(to_migrate, migrations, timeout);
    let suspended = suspending.await;
    (suspended, migrating)
}
