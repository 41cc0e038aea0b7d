//! Phase 2 of an install: the migration each suspended actor runs (snapshot, then move to
//! the new code and prove the way back; what it shares with the others of its update is
//! one [`MigrationPlan`]), the restoration that undoes it, and the checks of the answers
//! collected under one deadline; `rollback` puts every migrated actor back on its old
//! code from its snapshot. Also the [`Walk`] of the tree an install works from.
//!
//! Invariants: a restoration queues behind its migration in the actor's mailbox, so even a
//! migration that returns after the deadline is undone; a migration files its snapshot
//! under the book's lock only if the install is not abandoned, so the rollback (which
//! marks it abandoned under that lock first) sees every snapshot taken.

use super::*;

/// One planned `update`.
pub(super) struct PlannedUpdate {
    pub(super) plugin: String,
    pub(super) target: PluginVersion,
    /// The update moves the plugin between the host and a worker process.
    pub(super) switches_isolation: bool,
    pub(super) mode: UpdateMode,
    pub(super) extra: Vec<u8>,
    pub(super) suspend_timeout: Duration,
    pub(super) purge: PurgePolicy,
    /// The version `code_change` is told it upgrades from, instead of the running one's
    /// (a `graft dev` rebuild: `0.1.0+dev.N`).
    pub(super) code_change_from: Option<Version>,
}

/// What a swap did.
pub(super) struct Swapped {
    pub(super) migrated: usize,
    pub(super) suspended: usize,
    pub(super) longest_pause: Duration,
    /// The walk the batch worked from (reused after the commit when no actor started
    /// since).
    pub(super) walk: Walk,
}

/// The workers found in the tree, and how many processes had started when the walk
/// began: while [`Runtime::processes_started`] still says so, no actor is missing from it.
pub(super) struct Walk {
    pub(super) workers: Vec<Worker>,
    pub(super) started_before: u64,
}

impl Walk {
    /// Walks the tree under `root`.
    pub(super) async fn of(runtime: &Runtime, root: &SupervisorRef) -> Walk {
        let started_before = runtime.processes_started();
        Walk {
            workers: workers(root.clone()).await,
            started_before,
        }
    }

    /// Whether an actor started since the walk began (the walk may miss it).
    pub(super) fn outdated(&self, runtime: &Runtime) -> bool {
        runtime.processes_started() != self.started_before
    }
}

/// What an actor looked like before its migration, to restore it.
pub(super) struct Snapshot {
    pub(super) plugin: PluginVersion,
    /// Shared with the migration that reads it: a large state is not copied twice.
    pub(super) state: Arc<Vec<u8>>,
}

/// The snapshots of one install, and whether it was abandoned. Both live under one lock:
/// a migration either sees the abort (and changes nothing) or files its snapshot before
/// the rollback collects them.
#[derive(Default)]
pub(super) struct SnapshotBook {
    pub(super) taken: HashMap<ProcessId, Snapshot>,
    pub(super) aborted: bool,
    /// Actors whose migrated state was over the state cap, with its size.
    pub(super) too_large: HashMap<ProcessId, usize>,
}

impl SnapshotBook {
    /// A book with room for `actors` snapshots (filled by the actors' threads under its
    /// lock, so it should not grow while they wait for it).
    pub(super) fn with_capacity(actors: usize) -> SnapshotBook {
        SnapshotBook {
            taken: HashMap::with_capacity(actors),
            ..SnapshotBook::default()
        }
    }
}

pub(super) type Snapshots = Arc<Mutex<SnapshotBook>>;

/// Abandons an install's migrations: those that have not taken their snapshot yet change
/// nothing when they run; those that have are undone by [`rollback`].
pub(super) fn abandon(snapshots: &Snapshots) {
    lock(snapshots).aborted = true;
}

/// What every migration of one `update` shares: built once per update, not per actor, so
/// the task driving the batch allocates one `Arc` per actor and nothing else.
pub(super) struct MigrationPlan {
    target: PluginVersion,
    mode: UpdateMode,
    extra: Vec<u8>,
    /// `code_change` is told it upgrades from this version instead of the running one's.
    code_change_from: Option<Version>,
    direction: Direction,
    snapshots: Snapshots,
}

impl MigrationPlan {
    pub(super) fn new(
        update: &PlannedUpdate,
        direction: Direction,
        snapshots: &Snapshots,
    ) -> Arc<MigrationPlan> {
        Arc::new(MigrationPlan {
            target: update.target.clone(),
            mode: update.mode,
            extra: update.extra.clone(),
            code_change_from: update.code_change_from.clone(),
            direction,
            snapshots: Arc::clone(snapshots),
        })
    }
}

/// The migration `actor` runs: snapshot its state, move it to the target code, prove the
/// way back. Everything per actor (its label, the snapshot) is made inside, on the actor's
/// own thread.
pub(super) fn migration(plan: &Arc<MigrationPlan>, actor: &ActorRef) -> Migration {
    let plan = Arc::clone(plan);
    let actor = actor.clone();
    Box::new(move |current| {
        let MigrationPlan {
            target,
            mode,
            extra,
            code_change_from,
            direction,
            snapshots,
        } = &*plan;
        let (mode, direction) = (*mode, *direction);
        let Some(old) = PluginVersion::of(current.as_ref()) else {
            return Ok(None);
        };
        if old.same(target) {
            return Ok(None);
        }
        let id = actor.id();
        let state = Arc::new(current.encode_state().map_err(|error| error.to_string())?);
        {
            let mut book = lock(snapshots);
            if book.aborted {
                return Ok(None);
            }
            book.taken.insert(
                id,
                Snapshot {
                    plugin: old.clone(),
                    state: Arc::clone(&state),
                },
            );
        }
        let services = Detached::new(actor.label());
        // The state travels as bytes, so the old and the new version may run in different
        // places (the host, a worker process).
        let converted = match (direction, mode) {
            (Direction::Downgrade, UpdateMode::Advanced) => Some(
                current
                    .downgrade(target.version(), extra)
                    .map_err(|error| error.to_string())?,
            ),
            _ => None,
        };
        let source: &[u8] = converted.as_deref().unwrap_or(&state);
        let code_change = direction == Direction::Upgrade && mode == UpdateMode::Advanced;
        let from = code_change_from.as_ref().unwrap_or(old.version());
        // Prove the way back before the commit: a downgrade or a restore from a snapshot
        // starts from the new state, so it must come out of the plugin under the state cap.
        let (behaviour, size): (Box<dyn Behaviour>, _) = match target {
            PluginVersion::InProcess(plugin) => {
                let instance = if code_change {
                    Instance::code_change(plugin, from, source, extra, &services)
                } else {
                    Instance::restore(plugin, source, &services)
                };
                let mut instance = instance.map_err(|error| error.to_string())?;
                drop((converted, state));
                // Measured, not copied, even when it is over the cap.
                let size = instance.encoded_state_size();
                (Box::new(instance), size)
            }
            PluginVersion::Isolated(plugin) => {
                let behaviour = if code_change {
                    plugin.code_change(from, source, extra, &services)
                } else {
                    plugin.restore(source, &services)
                };
                let mut behaviour = behaviour.map_err(|error| error.to_string())?;
                drop((converted, state));
                // The state comes over the wire (frames carry up to the state cap and a
                // little more); the worker refuses one over the cap with an error.
                let size = behaviour.encode_state().map(|state| state.len());
                (behaviour, size)
            }
        };
        let size = size.map_err(|error| format!("the way back is not proven: {error}"))?;
        if size > MAX_STATE_BYTES {
            lock(snapshots).too_large.insert(id, size);
            return Err(format!(
                "the migrated state is {size} bytes, over the {MAX_STATE_BYTES}-byte cap a rollback could carry"
            ));
        }
        Ok(Some(behaviour))
    })
}

pub(super) fn restoration(snapshot: Snapshot, label: String) -> Migration {
    Box::new(move |_current| {
        // An isolated version whose worker died is restored in a fresh worker.
        let behaviour = snapshot
            .plugin
            .restore(&snapshot.state, &Detached::new(label))
            .map_err(|error| error.to_string())?;
        Ok(Some(behaviour))
    })
}

/// A failed phase: the first error, and the actors that did not answer in time.
pub(super) type Failure = Box<(ReleaseError, HashSet<ProcessId>)>;

/// Checks the suspend answers of `actors` (each of plugin `plugins[i]`). An actor that
/// exited meanwhile is not in the way: its supervisor restarts it, and the sweep after the
/// commit moves it to the new code.
pub(super) fn check_suspended(
    actors: &[ActorRef],
    plugins: &[&str],
    results: Vec<Result<(), SystemError>>,
) -> Result<(), Failure> {
    let mut first_error = None;
    let mut late = HashSet::new();
    for ((actor, plugin), result) in actors.iter().zip(plugins).zip(results) {
        match result {
            Ok(()) | Err(SystemError::Exited { .. }) => {}
            Err(error) => {
                late.insert(actor.id());
                first_error.get_or_insert_with(|| ReleaseError::Suspend {
                    actor: actor.label(),
                    plugin: (*plugin).to_owned(),
                    reason: error.to_string(),
                });
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(error) => Err(Box::new((error, late))),
    }
}

pub(super) async fn resume_all(actors: &[ActorRef]) {
    for (actor, result) in actors
        .iter()
        .zip(runtime::resume_all(actors, Duration::from_secs(5)).await)
    {
        if let Err(error) = result
            && !matches!(error, SystemError::Exited { .. })
        {
            tracing::warn!(actor = %actor.label(), "resume: {error}");
        }
    }
}

/// Checks the change_code answers: the first error and the actors still busy migrating at
/// the deadline (a `code_change` that does not return), if any failed. A migration refused
/// for a state over the cap is reported as [`ReleaseError::NoWayBack`].
pub(super) fn check_migrated(
    actors: &[ActorRef],
    updates: &[&PlannedUpdate],
    results: Vec<Result<(), SystemError>>,
    snapshots: &Snapshots,
) -> Option<Failure> {
    let too_large = std::mem::take(&mut lock(snapshots).too_large);
    let mut first_error = None;
    let mut busy = HashSet::new();
    for ((actor, update), result) in actors.iter().zip(updates).zip(results) {
        match result {
            Ok(()) | Err(SystemError::Exited { .. }) => {}
            Err(error) => {
                if matches!(error, SystemError::Timeout { .. }) {
                    busy.insert(actor.id());
                }
                first_error.get_or_insert_with(|| match too_large.get(&actor.id()) {
                    Some(&size) => ReleaseError::NoWayBack {
                        actor: actor.label(),
                        plugin: update.plugin.clone(),
                        size,
                        cap: MAX_STATE_BYTES,
                    },
                    None => ReleaseError::Migration {
                        actor: actor.label(),
                        plugin: update.plugin.clone(),
                        reason: error.to_string(),
                    },
                });
            }
        }
    }
    first_error.map(|error| Box::new((error, busy)))
}

/// Puts every migrated actor back on its old code, from its snapshot.
///
/// A restoration queues behind the migration in the actor's mailbox, so it runs after it
/// even when the migration is still running (a `code_change` that has not returned):
/// those are not waited for.
pub(super) async fn rollback(
    actors: &[ActorRef],
    snapshots: &Snapshots,
    busy: &HashSet<ProcessId>,
) {
    let mut taken = {
        let mut book = lock(snapshots);
        book.aborted = true;
        std::mem::take(&mut book.taken)
    };
    let mut restoring = Vec::new();
    let mut restorations = Vec::new();
    for actor in actors {
        let Some(snapshot) = taken.remove(&actor.id()) else {
            continue;
        };
        let restore = restoration(snapshot, actor.label());
        if busy.contains(&actor.id()) {
            // Queued now, behind the migration still running, so nothing sent after the
            // install returns is handled before it; only the answer is awaited apart.
            let waiting = runtime::queue_change_code_all(
                std::slice::from_ref(actor),
                vec![restore],
                Duration::from_secs(3600),
            );
            let label = actor.label();
            tokio::spawn(async move {
                for error in waiting.await.into_iter().filter_map(Result::err) {
                    tracing::error!(actor = %label, "rollback could not restore the old code: {error}");
                }
            });
        } else {
            restorations.push(restore);
            restoring.push(actor.clone());
        }
    }
    let results = runtime::change_code_all(&restoring, restorations, Duration::from_secs(5)).await;
    for (actor, result) in restoring.iter().zip(results) {
        match result {
            // Gone (a worker crash, say): its supervisor restarts it on the old code.
            Ok(()) | Err(SystemError::Exited { .. }) => {}
            Err(error) => {
                tracing::error!(actor = %actor.label(), "rollback could not restore the old code: {error}")
            }
        }
    }
}
