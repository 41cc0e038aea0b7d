//! The release handler: boots the permanent release, installs newer and older releases into
//! the running host, makes one permanent, removes old ones — OTP's `release_handler`, with
//! an atomic install.
//!
//! Statuses, as in OTP: *unpacked* (assembled on disk), *current* (running; in memory
//! only), *permanent* (booted on restart; recorded on disk), *old* (was installed before).
//! The record (`releases/RELEASES.json`, module [`super::record`]) is written only by
//! `make_permanent` and `remove`, atomically, keeping the previous good copy. A host that
//! stops — or is killed — before `make_permanent` boots the permanent release again. Boot
//! first removes what dead processes left under the root ([`crate::ownership`]): library
//! copies in `run/libraries/`, temporary files of the record, interrupted builds; this
//! host's own copies then go in `run/libraries/<pid>/` (its workers' in theirs).
//!
//! An install runs in three phases:
//! 1. **Check and load**: the script is found (the target's `[[upgrade]]` matching the
//!    running version, or the running release's `[[downgrade]]` to the target) and checked
//!    against both trees; every new library is loaded and verified.
//! 2. **Migrate, atomically**: every actor touched by an `update` (and its `suspend_with`
//!    companions) is suspended concurrently under one deadline, its state is snapshotted,
//!    and it is moved to the new code. Each new instance then proves the way back: its
//!    state is encoded once more and must fit the state cap
//!    ([`crate::plugin::MAX_STATE_BYTES`]) that a later downgrade or a
//!    restore from snapshot must carry it through; a state over it fails the migration
//!    ([`ReleaseError::NoWayBack`], naming the actor and the size). If anything fails — a
//!    suspend timeout, a migration error or panic, a state with no way back — every
//!    migrated actor is restored from its snapshot onto its old code, all are resumed, and
//!    the new libraries are dropped. Messages sent meanwhile wait in the mailboxes and are
//!    handled afterwards, in order, by whichever version runs.
//! 3. **Commit**: the plugin table switches (restarts and new children start on the new
//!    code), the actors resume, stragglers started during the window are migrated, the
//!    purge policy applies to anything left on the old code, and the script's other
//!    instructions (`add_child`, `remove_child`, `restart_child`, `update_supervisor`,
//!    `apply`) run in order. A failure there is reported; the target stays current, and
//!    the permanent release is still what a restart boots.
//!
//! # Rollback and reads
//!
//! [`ReleaseHandler::rollback`] undoes the last install: each install pushes the release it
//! replaced on a history of this host's life, a rollback pops it (two rollbacks undo two
//! installs, never going forward), and an empty history is
//! [`ReleaseError::NothingToRollBack`]. Operations that change the state hold its lock;
//! letting the lock go publishes a copy (`Published`) that `which_releases`,
//! `current_version`, `root_supervisor` and `resident` read, so they never wait for an
//! install. Every release directory is checked ([`crate::trust::check_release`]) before
//! it is read, and the root ([`crate::trust::check_root`]) before boot.
//!
//! # Isolation
//!
//! Each plugin's versions are [`PluginVersion`]s: `dlopen`ed in the host, or, with
//! `isolation = "process"`, loaded in the plugin's worker process. The handler keeps one
//! [`Worker`](crate::isolation::Worker) per isolated plugin (started by the first load,
//! with `WorkerProgram::Search`; `memory_limit_mb` applied at boot and at each commit;
//! let go when the running release no longer isolates the plugin, so the process stops
//! once no version in it is used); [`ReleaseHandler::isolated_workers`] reports them.
//! Everything above holds in and across modes, since states travel as bytes: an `update`
//! may move actors between the host and a worker (a change of isolation needs an
//! `update`, even at the same version). For an isolated target the way back is proven by
//! encoding the new state in the worker and measuring it (wire frames carry the state cap
//! and 1 MiB more, so the cap is the same). A worker of an updated plugin that dies
//! during phase 2 aborts the install ([`ReleaseError::WorkerCrashed`], unless a migration
//! already failed with the crash): its actors died with it, and their supervisors restart
//! them on the old code in a fresh worker. Shutdown stops the tree; workers exit with the
//! host (parent-death signal) or when their last handle goes.
//!
//! # Layout
//!
//! This file holds the handler, its state and the install's phases. Beside it: `plan`
//! (finding and checking the script), `migration` (what each actor runs in phase 2, the
//! checks of its answers, rolling back), `table` (the plugin table new actors start from,
//! supervisor specs, workers), `error` ([`ReleaseError`]); the record is
//! [`super::record`].

use super::assemble::{
    AssembledRelease, assembled_versions, read_assembled, releases_directory,
    remove_interrupted_builds,
};
use super::record::{Record, RecordError, read_record, remove_interrupted_writes, write_record};
use super::{
    ChildManifest, Instruction, Isolation, Manifest, ManifestError, PurgePolicy, ROOT_SUPERVISOR,
    SupervisorManifest, UpdateMode, encode_value, resolve_inside,
};
use crate::isolation::{
    IsolatedPlugin, IsolationError, PluginVersion, WorkerOptions, WorkerProcess, WorkerProgram,
};
use crate::plugin::{
    CallbackError, Detached, Expectations, HostServices, Instance, LoadError, LoadedPlugin, Loader,
    MAX_STATE_BYTES, PluginIdentity, Sha256Digest, UnloadReport,
};
use crate::runtime::{
    self, ActorRef, Behaviour, BehaviourFactory, Migration, ProcessId, Runtime, Started,
    SystemError, lock,
};
use crate::supervisor::{
    ChildKey, ChildRef, ChildSpec, ChildStart, Restart, Shutdown, SupervisorError, SupervisorRef,
    SupervisorSpec, SupervisorUpdate, WorkerSpec, start_supervisor,
};
use semver::Version;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use thiserror::Error;

mod error;
mod migration;
mod plan;
mod table;

pub use super::record::RECORD_FILE;
pub use error::ReleaseError;
use migration::*;
use plan::*;
use table::*;

/// The release facts of one published state (see [`ReleaseHandler::read_view`]).
#[derive(Debug, Clone)]
pub struct ReadView {
    /// The running release.
    pub current: Version,
    /// The root of its supervision tree.
    pub root_supervisor: SupervisorRef,
    /// Every assembled release with its status.
    pub releases: Vec<ReleaseInfo>,
    /// The plugin versions still loaded.
    pub resident: Vec<ResidentLibrary>,
}

/// A release's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Assembled, never installed here.
    Unpacked,
    /// Running, not yet permanent.
    Current,
    /// Booted on restart (and running, unless another release is current).
    Permanent,
    /// Installed before, now replaced.
    Old,
}

/// One line of `which_releases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseInfo {
    /// The release's name.
    pub name: String,
    /// Its version.
    pub version: Version,
    /// Its status.
    pub status: ReleaseStatus,
    /// Whether it is running now.
    pub running: bool,
}

/// A loaded plugin version and how many handles keep it loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResidentLibrary {
    /// The plugin.
    pub plugin: String,
    /// Its version.
    pub version: String,
    /// Handles (actors, factories) keeping it loaded.
    pub users: usize,
}

/// The worker process of a plugin with `isolation = "process"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerInfo {
    /// The plugin.
    pub plugin: String,
    /// The running process's pid (`None` between a crash and the next start).
    pub pid: Option<u32>,
    /// How many processes it has started in all (1 + restarts after crashes).
    pub spawned: u64,
    /// The memory limit in force, in MiB.
    pub memory_limit_mb: Option<u64>,
}

/// What an install did.
#[derive(Debug, Clone, Serialize)]
pub struct InstallReport {
    /// The version installed from.
    pub from: Version,
    /// The version installed.
    pub to: Version,
    /// Actors moved to new code (including stragglers).
    pub actors_migrated: usize,
    /// Actors suspended (migrated ones and their companions).
    pub actors_suspended: usize,
    /// The longest time any one actor was suspended.
    pub longest_pause: Duration,
    /// The whole install.
    pub total: Duration,
    /// Plugin versions loaded after the install.
    pub resident: Vec<ResidentLibrary>,
}

/// The phases an install reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallPhase {
    /// Loading and verifying this many libraries.
    Loading(usize),
    /// Suspending this many actors.
    Suspending(usize),
    /// Migrating this many actors.
    Migrating(usize),
    /// Resuming this many actors.
    Resuming(usize),
    /// Rolled back: every actor is on its old code.
    RolledBack,
    /// Running instruction `index` of `total` after the commit.
    Instruction {
        /// Which.
        index: usize,
        /// Of how many.
        total: usize,
    },
}

/// Called with each phase of an install.
pub type ProgressFn = Arc<dyn Fn(InstallPhase) + Send + Sync>;
struct State {
    current: AssembledRelease,
    record: Record,
    root_supervisor: SupervisorRef,
    /// Every version loaded so far, to report which are still resident.
    loaded: Vec<Weak<LoadedPlugin>>,
    /// The release that was current before each install of this host's life, most recent
    /// last: an install pushes, a rollback pops (so two rollbacks never go forward again).
    history: Vec<Version>,
}

/// What read-only requests (`status`, `releases`) see: the state as of the last finished
/// operation, published when the state's lock is let go, so they never wait for an
/// install.
#[derive(Clone)]
struct Published {
    current: Version,
    record: Record,
    root_supervisor: SupervisorRef,
    loaded: Vec<Weak<LoadedPlugin>>,
}

impl Published {
    fn of(state: &State) -> Published {
        Published {
            current: state.current.version.clone(),
            record: state.record.clone(),
            root_supervisor: state.root_supervisor.clone(),
            loaded: state.loaded.clone(),
        }
    }
}

/// The state's lock; letting it go publishes the state for read-only requests.
struct StateGuard<'a> {
    state: tokio::sync::MutexGuard<'a, State>,
    published: &'a Mutex<Arc<Published>>,
}

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        *lock(self.published) = Arc::new(Published::of(&self.state));
    }
}

/// What an install is for: a named release, or going back (which undoes the last install).
#[derive(Clone, Copy)]
enum InstallTarget<'a> {
    Version(&'a Version),
    Previous,
}

/// One worker per isolated plugin, by name.
type Workers = Mutex<HashMap<String, crate::isolation::Worker>>;

/// The release handler of one host.
pub struct ReleaseHandler {
    root: PathBuf,
    runtime: Runtime,
    loader: Loader,
    table: Arc<PluginTable>,
    /// The worker process of each plugin with `isolation = "process"` in the running
    /// release (started when its first version loads).
    workers: Workers,
    state: tokio::sync::Mutex<State>,
    /// The state as read-only requests see it (see [`Published`]).
    published: Mutex<Arc<Published>>,
    /// An install (or hot swap) is running: a second one is refused at once, while reads
    /// of the state (status, releases) read [`Published`] and never wait for it.
    installing: std::sync::atomic::AtomicBool,
}

/// Marks an install as running until dropped.
struct Installing<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> Installing<'a> {
    fn begin(flag: &'a std::sync::atomic::AtomicBool) -> Result<Installing<'a>, ReleaseError> {
        if flag.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Err(ReleaseError::InstallInProgress);
        }
        Ok(Installing(flag))
    }
}

impl Drop for Installing<'_> {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

impl fmt::Debug for ReleaseHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleaseHandler")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl ReleaseHandler {
    /// Boots the permanent release under `root` (the first boot makes the oldest assembled
    /// release permanent) and starts its supervision tree.
    pub async fn boot(root: &Path, runtime: Runtime) -> Result<ReleaseHandler, ReleaseError> {
        crate::trust::check_root(root).map_err(ReleaseError::Untrusted)?;
        // Leftovers of processes that died: library copies, record writes, builds.
        let copy_directory_error = |source| ReleaseError::CopyDirectory {
            root: root.to_owned(),
            source,
        };
        let libraries = crate::ownership::private_directories(root, &["run", "libraries"])
            .map_err(copy_directory_error)?;
        crate::ownership::remove_abandoned(&libraries, |_| true);
        remove_interrupted_writes(root);
        remove_interrupted_builds(root);
        let mut record = read_record(root)?;
        let permanent = match &record.permanent {
            Some(version) => version.clone(),
            None => {
                let oldest = assembled_versions(root)
                    .into_iter()
                    .next()
                    .ok_or_else(|| ReleaseError::NothingToBoot(root.to_owned()))?;
                record.permanent = Some(oldest.clone());
                write_record(root, &record)?;
                oldest
            }
        };
        let release = Self::read_release(root, &permanent)?;
        let loader = Loader::in_process_directory(&libraries).map_err(copy_directory_error)?;
        let table = Arc::new(PluginTable::default());
        let workers = Workers::default();
        let mut loaded = Vec::new();
        for (name, plugin) in Self::load_plugins(&loader, &workers, &release, &HashMap::new())? {
            if let Some(library) = plugin.in_process() {
                loaded.push(Arc::downgrade(library));
            }
            lock(&table.current).insert(name, plugin);
        }
        table.set_limits(&release);
        settle_workers(&workers, &release);
        let manifest_path = release.directory.join("release.toml");
        let spec = supervisor_spec(&release.manifest.supervisor, ROOT_SUPERVISOR, &table).map_err(
            |message| ReleaseError::Plan {
                manifest: manifest_path.clone(),
                field: "supervisor".to_owned(),
                message,
            },
        )?;
        let root_supervisor =
            start_supervisor(&runtime, spec)
                .await
                .map_err(|source| ReleaseError::Boot {
                    version: permanent.clone(),
                    source,
                })?;
        tracing::info!(release = %permanent, "release booted");
        let state = State {
            current: release,
            record,
            root_supervisor,
            loaded,
            history: Vec::new(),
        };
        Ok(ReleaseHandler {
            root: root.to_owned(),
            runtime,
            loader,
            table,
            workers,
            published: Mutex::new(Arc::new(Published::of(&state))),
            state: tokio::sync::Mutex::new(state),
            installing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn read_release(root: &Path, version: &Version) -> Result<AssembledRelease, ReleaseError> {
        let directory = releases_directory(root).join(version.to_string());
        // Checked before anything in it is read: not a link, nothing another user can write.
        let exists = crate::trust::check(&directory, crate::trust::Kind::Directory)
            .and_then(|exists| {
                if exists {
                    crate::trust::check_release(&directory)?;
                }
                Ok(exists)
            })
            .map_err(ReleaseError::Untrusted)?;
        if !exists || !directory.join("release.toml").is_file() {
            return Err(ReleaseError::UnknownRelease {
                version: version.clone(),
                root: root.to_owned(),
            });
        }
        Ok(read_assembled(root, version)?)
    }

    /// Loads every plugin of a release, reusing versions already loaded (the same library
    /// in the same place): in-process ones in the host, `isolation = "process"` ones in
    /// their plugin's worker process (started if need be).
    fn load_plugins(
        loader: &Loader,
        workers: &Workers,
        release: &AssembledRelease,
        already: &HashMap<String, PluginVersion>,
    ) -> Result<HashMap<String, PluginVersion>, ReleaseError> {
        let manifest = release.directory.join("release.toml");
        let mut plugins = HashMap::new();
        for (name, entry) in &release.manifest.plugins {
            let same_library = |loaded: &&PluginVersion| {
                *loaded.version() == entry.version
                    && loaded.isolation() == entry.isolation()
                    && entry.sha256.as_deref() == Some(loaded.sha256().to_string().as_str())
            };
            if let Some(loaded) = already.get(name).filter(same_library) {
                plugins.insert(name.clone(), loaded.clone());
                continue;
            }
            let plan_error = |message: String| ReleaseError::Plan {
                manifest: manifest.clone(),
                field: format!("plugins.{name}.library"),
                message,
            };
            let library = resolve_inside(
                &release.directory,
                entry.library.as_deref().unwrap_or(Path::new("")),
            )
            .map_err(plan_error)?;
            let sha256 = entry
                .sha256
                .as_deref()
                .unwrap_or_default()
                .parse::<Sha256Digest>()
                .map_err(|error| plan_error(error.to_string()))?;
            let expect = Expectations {
                sha256: Some(sha256),
                name: Some(name.clone()),
                version: Some(entry.version.clone()),
            };
            let plugin = match entry.isolation() {
                Isolation::InProcess => {
                    PluginVersion::InProcess(loader.load(&library, &expect).map_err(|source| {
                        ReleaseError::Load {
                            manifest: manifest.clone(),
                            plugin: name.clone(),
                            source: Box::new(source),
                        }
                    })?)
                }
                Isolation::Process => {
                    // A new worker takes this release's memory limit; a running one takes
                    // it at the commit.
                    let worker = lock(workers)
                        .entry(name.clone())
                        .or_insert_with(|| {
                            crate::isolation::Worker::with_libraries(
                                name.clone(),
                                WorkerOptions {
                                    program: WorkerProgram::Search,
                                    memory_limit_mb: entry.memory_limit_mb,
                                },
                                loader.process_directories().map(Path::to_owned),
                            )
                        })
                        .clone();
                    PluginVersion::Isolated(
                        IsolatedPlugin::load(&worker, &library, &expect).map_err(|source| {
                            ReleaseError::Isolation {
                                manifest: manifest.clone(),
                                plugin: name.clone(),
                                source: Box::new(source),
                            }
                        })?,
                    )
                }
            };
            plugins.insert(name.clone(), plugin);
        }
        Ok(plugins)
    }

    /// The worker process of each plugin with `isolation = "process"` in the running
    /// release, by plugin name.
    pub fn isolated_workers(&self) -> Vec<WorkerInfo> {
        let mut workers: Vec<WorkerInfo> = lock(&self.workers)
            .iter()
            .map(|(plugin, worker)| WorkerInfo {
                plugin: plugin.clone(),
                pid: worker.pid(),
                spawned: worker.spawned(),
                memory_limit_mb: worker.memory_limit_mb(),
            })
            .collect();
        workers.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        workers
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The runtime the release runs in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The running release's version.
    pub async fn current_version(&self) -> Version {
        self.published().current.clone()
    }

    /// The root supervisor of the running release.
    pub async fn root_supervisor(&self) -> SupervisorRef {
        self.published().root_supervisor.clone()
    }

    /// Whether an install (or hot swap) is running now.
    pub fn install_in_progress(&self) -> bool {
        self.installing.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The state as of the last finished operation (never waits for an install).
    fn published(&self) -> Arc<Published> {
        Arc::clone(&lock(&self.published))
    }

    /// Takes the state's lock; letting it go publishes the state.
    async fn lock_state(&self) -> StateGuard<'_> {
        StateGuard {
            state: self.state.lock().await,
            published: &self.published,
        }
    }

    /// Every assembled release with its status, oldest first.
    pub async fn which_releases(&self) -> Vec<ReleaseInfo> {
        let published = self.published();
        self.releases_with(&published.current, &published.record)
    }

    fn releases_with(&self, current: &Version, record: &Record) -> Vec<ReleaseInfo> {
        assembled_versions(&self.root)
            .into_iter()
            .map(|version| {
                let running = version == *current;
                let status = if record.permanent.as_ref() == Some(&version) {
                    ReleaseStatus::Permanent
                } else if running {
                    ReleaseStatus::Current
                } else if record.old.contains(&version) {
                    ReleaseStatus::Old
                } else {
                    ReleaseStatus::Unpacked
                };
                // Checked before it is read, as every release directory is; one that
                // fails shows no name (an install of it says why).
                let directory = releases_directory(&self.root).join(version.to_string());
                let name = crate::trust::check_release(&directory)
                    .ok()
                    .and_then(|()| read_assembled(&self.root, &version).ok())
                    .map(|release| release.manifest.release.name)
                    .unwrap_or_default();
                ReleaseInfo {
                    name,
                    version,
                    status,
                    running,
                }
            })
            .collect()
    }

    /// The release facts read-only requests report, all from one published state (as of
    /// the last finished operation; never waits for an install).
    pub fn read_view(&self) -> ReadView {
        let published = self.published();
        ReadView {
            current: published.current.clone(),
            root_supervisor: published.root_supervisor.clone(),
            releases: self.releases_with(&published.current, &published.record),
            resident: Self::resident_with(&published.loaded),
        }
    }

    /// What became of the most recently closed libraries.
    pub fn unload_reports(&self) -> Vec<UnloadReport> {
        self.loader.unload_reports()
    }

    /// How many plugin libraries this host has closed in all.
    pub fn closed_libraries(&self) -> u64 {
        self.loader.closed_count()
    }

    /// Plugin versions still loaded, and what became of those closed (the most recent).
    pub async fn resident(&self) -> (Vec<ResidentLibrary>, Vec<UnloadReport>) {
        let published = self.published();
        (
            Self::resident_with(&published.loaded),
            self.loader.unload_reports(),
        )
    }

    fn resident_with(loaded: &[Weak<LoadedPlugin>]) -> Vec<ResidentLibrary> {
        let mut resident: Vec<ResidentLibrary> = loaded
            .iter()
            .filter_map(Weak::upgrade)
            .map(|plugin| ResidentLibrary {
                plugin: plugin.name().to_owned(),
                version: plugin.version().to_string(),
                // Not counting the handle taken just here.
                users: Arc::strong_count(&plugin) - 1,
            })
            .collect();
        resident.sort_by(|a, b| (&a.plugin, &a.version).cmp(&(&b.plugin, &b.version)));
        resident
    }

    /// Makes the current release permanent (recorded on disk; booted on restart).
    pub async fn make_permanent(&self, version: &Version) -> Result<(), ReleaseError> {
        let mut state = self.lock_state().await;
        if state.record.permanent.as_ref() == Some(version) {
            return Ok(());
        }
        if state.current.version != *version {
            let status = self
                .releases_with(&state.current.version, &state.record)
                .into_iter()
                .find(|release| release.version == *version)
                .map(|release| release.status)
                .ok_or_else(|| ReleaseError::UnknownRelease {
                    version: version.clone(),
                    root: self.root.clone(),
                })?;
            return Err(ReleaseError::BadStatus {
                version: version.clone(),
                status,
            });
        }
        let mut record = state.record.clone();
        if let Some(previous) = record.permanent.replace(version.clone()) {
            record.old.insert(previous);
        }
        record.old.remove(version);
        write_record(&self.root, &record)?;
        state.record = record;
        tracing::info!(release = %version, "release made permanent");
        Ok(())
    }

    /// Removes an assembled release (not the permanent one, not the running one).
    pub async fn remove(&self, version: &Version) -> Result<(), ReleaseError> {
        let mut state = self.lock_state().await;
        if state.record.permanent.as_ref() == Some(version) {
            return Err(ReleaseError::InUse {
                version: version.clone(),
                status: "permanent",
            });
        }
        if state.current.version == *version {
            return Err(ReleaseError::InUse {
                version: version.clone(),
                status: "current",
            });
        }
        let directory = releases_directory(&self.root).join(version.to_string());
        if !directory.is_dir() {
            return Err(ReleaseError::UnknownRelease {
                version: version.clone(),
                root: self.root.clone(),
            });
        }
        if state.record.old.contains(version) {
            let mut record = state.record.clone();
            record.old.remove(version);
            write_record(&self.root, &record)?;
            state.record = record;
        }
        std::fs::remove_dir_all(&directory).map_err(|source| ReleaseError::Write {
            path: directory,
            source,
        })?;
        Ok(())
    }

    /// Installs `target` into the running host: an upgrade when it is newer than the
    /// current release, a downgrade when older. See the module documentation.
    pub async fn install(
        &self,
        target: &Version,
        progress: Option<ProgressFn>,
    ) -> Result<InstallReport, ReleaseError> {
        self.install_target(InstallTarget::Version(target), progress)
            .await
    }

    /// Goes back to the release that was current before the last install (undoing it);
    /// refused when no install of this host's life is left to undo.
    pub async fn rollback(
        &self,
        progress: Option<ProgressFn>,
    ) -> Result<InstallReport, ReleaseError> {
        self.install_target(InstallTarget::Previous, progress).await
    }

    async fn install_target(
        &self,
        target: InstallTarget<'_>,
        progress: Option<ProgressFn>,
    ) -> Result<InstallReport, ReleaseError> {
        let started = Instant::now();
        let report = |phase: InstallPhase| {
            if let Some(progress) = &progress {
                progress(phase);
            }
        };
        let _installing = Installing::begin(&self.installing)?;
        let mut state = self.lock_state().await;
        let from = state.current.version.clone();
        let install_target = target;
        let target =
            &match target {
                InstallTarget::Version(version) => version.clone(),
                InstallTarget::Previous => state.history.last().cloned().ok_or_else(|| {
                    ReleaseError::NothingToRollBack {
                        current: from.clone(),
                    }
                })?,
            };
        if *target == from {
            return Err(ReleaseError::AlreadyCurrent(from));
        }
        let target_release = Self::read_release(&self.root, target)?;
        let (direction, script_manifest, instructions) =
            self.find_script(&state.current, &target_release)?;
        self.check_plan(
            &state.current,
            &target_release,
            &script_manifest,
            &instructions,
        )?;

        // Phase 1: load and verify every library of the target.
        let current_plugins = lock(&self.table.current).clone();
        report(InstallPhase::Loading(target_release.manifest.plugins.len()));
        let target_plugins = Self::load_plugins(
            &self.loader,
            &self.workers,
            &target_release,
            &current_plugins,
        )
        .inspect_err(|_| settle_workers(&self.workers, &state.current))?;

        let updates: Vec<PlannedUpdate> = instructions
            .iter()
            .filter_map(|instruction| match instruction {
                Instruction::Update {
                    plugin,
                    mode,
                    extra,
                    suspend_timeout_ms,
                    purge,
                    ..
                } => Some(PlannedUpdate {
                    plugin: plugin.clone(),
                    target: target_plugins[plugin].clone(),
                    switches_isolation: current_plugins
                        .get(plugin)
                        .is_some_and(|old| old.isolation() != target_plugins[plugin].isolation()),
                    mode: *mode,
                    extra: encode_value(extra.as_ref()).unwrap_or_default(),
                    suspend_timeout: Duration::from_millis(*suspend_timeout_ms),
                    purge: *purge,
                }),
                _ => None,
            })
            .collect();
        let companions: HashSet<String> = instructions
            .iter()
            .flat_map(|instruction| match instruction {
                Instruction::Update { suspend_with, .. } => suspend_with.clone(),
                _ => Vec::new(),
            })
            .collect();

        let swapped = self
            .swap(
                &mut state,
                &updates,
                &companions,
                direction,
                &target_plugins,
                &report,
            )
            .await
            .inspect_err(|error| {
                tracing::warn!(from = %from, to = %target, "install rolled back: {error}");
                settle_workers(&self.workers, &state.current);
            })?;
        // Plugins the target release does not have leave the table.
        lock(&self.table.current).retain(|name, _| target_plugins.contains_key(name));
        // Workers follow the target: its memory limits; none for plugins it runs in the
        // host (a worker stops when its last version is let go).
        settle_workers(&self.workers, &target_release);
        // The target's callback deadlines and mailbox bounds apply to new actors (restarts
        // included: their factory reads the table) and running ones alike.
        self.table.set_limits(&target_release);
        for (actor, plugin) in workers(state.root_supervisor.clone()).await {
            if let Some(plugin) = plugin {
                actor.set_callback_timeout(self.table.callback_timeout(&plugin));
            }
            if let Some(bound) = actor.name().and_then(|name| self.table.max_mailbox(name)) {
                actor.set_max_mailbox(bound);
            }
        }
        let previous = std::mem::replace(&mut state.current, target_release);
        match install_target {
            InstallTarget::Version(_) => state.history.push(previous.version.clone()),
            InstallTarget::Previous => {
                state.history.pop();
            }
        }
        if state.record.permanent.as_ref() != Some(&previous.version) {
            state.record.old.insert(previous.version.clone());
        }
        state.record.old.remove(target);
        let total_instructions = instructions.len();
        for (index, instruction) in instructions.iter().enumerate() {
            if matches!(instruction, Instruction::Update { .. }) {
                continue;
            }
            report(InstallPhase::Instruction {
                index,
                total: total_instructions,
            });
            self.run_instruction(&state, instruction)
                .await
                .map_err(|message| ReleaseError::AfterCommit {
                    version: target.clone(),
                    index,
                    instruction: instruction_name(instruction),
                    message,
                })?;
        }
        // Let go of the old versions (the old table holds them) before reporting what
        // stays resident.
        drop(current_plugins);
        let report = InstallReport {
            from: from.clone(),
            to: target.clone(),
            actors_migrated: swapped.migrated,
            actors_suspended: swapped.suspended,
            longest_pause: swapped.longest_pause,
            total: started.elapsed(),
            resident: Self::resident_with(&state.loaded),
        };
        tracing::info!(
            from = %from,
            to = %target,
            migrated = report.actors_migrated,
            longest_pause_us = report.longest_pause.as_micros() as u64,
            "release installed"
        );
        Ok(report)
    }

    /// Phases 2 and 3 of an install for the given updates: suspend, snapshot and migrate
    /// (or undo all of it), then switch the plugin table, resume, move stragglers, purge.
    async fn swap(
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
    fn watch_workers(&self, updates: &[PlannedUpdate]) -> Vec<(String, WorkerProcess)> {
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

    /// Hot-swaps every actor of `plugin` to the library at `path` (a fresh build of the
    /// same plugin: `graft dev`), keeping their state through the plugin's `code_change`
    /// (by default: decode the old bytes). A build that fails to load or migrate is
    /// rejected and the old code keeps running.
    pub async fn hot_swap(&self, plugin: &str, path: &Path) -> Result<InstallReport, ReleaseError> {
        let started = Instant::now();
        let _installing = Installing::begin(&self.installing)?;
        let mut state = self.lock_state().await;
        let manifest = state.current.directory.join("release.toml");
        let expect = Expectations {
            name: Some(plugin.to_owned()),
            ..Expectations::default()
        };
        let current = self.table.get(plugin);
        // The new build runs where the current version runs.
        let loaded = match &current {
            Some(PluginVersion::Isolated(running)) => PluginVersion::Isolated(
                IsolatedPlugin::load(running.worker(), path, &expect).map_err(|source| {
                    ReleaseError::Isolation {
                        manifest,
                        plugin: plugin.to_owned(),
                        source: Box::new(source),
                    }
                })?,
            ),
            _ => PluginVersion::InProcess(self.loader.load(path, &expect).map_err(|source| {
                ReleaseError::Load {
                    manifest,
                    plugin: plugin.to_owned(),
                    source: Box::new(source),
                }
            })?),
        };
        let from = current
            .map(|current| current.version().clone())
            .unwrap_or_else(|| loaded.version().clone());
        let update = PlannedUpdate {
            plugin: plugin.to_owned(),
            target: loaded.clone(),
            switches_isolation: false,
            mode: UpdateMode::Advanced,
            extra: encode_value(None).unwrap_or_default(),
            suspend_timeout: Duration::from_secs(5),
            purge: PurgePolicy::Soft,
        };
        let targets = HashMap::from([(plugin.to_owned(), loaded.clone())]);
        let swapped = self
            .swap(
                &mut state,
                &[update],
                &HashSet::new(),
                Direction::Up,
                &targets,
                &|_| {},
            )
            .await?;
        drop(targets);
        Ok(InstallReport {
            from,
            to: loaded.version().clone(),
            actors_migrated: swapped.migrated,
            actors_suspended: swapped.suspended,
            longest_pause: swapped.longest_pause,
            total: started.elapsed(),
            resident: Self::resident_with(&state.loaded),
        })
    }

    /// Actors of updated plugins still on the old code (started during the window):
    /// moved now, one by one.
    async fn migrate_stragglers(
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
    async fn purge(&self, updates: &[PlannedUpdate], root: &SupervisorRef) {
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

    async fn run_instruction(
        &self,
        state: &State,
        instruction: &Instruction,
    ) -> Result<(), String> {
        let manifest = &state.current.manifest;
        let supervisor_of = |id: &str| {
            self.runtime
                .supervisor(id)
                .ok_or_else(|| format!("supervisor {id:?} is not running"))
        };
        match instruction {
            Instruction::Update { .. } => Ok(()),
            Instruction::AddChild { supervisor, id } => {
                let (_, child) = manifest
                    .find_child(id)
                    .ok_or_else(|| format!("no child {id:?}"))?;
                let spec = child_spec(child, &self.table)?;
                supervisor_of(supervisor)?
                    .start_child(spec)
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
            Instruction::RemoveChild { supervisor, id } => {
                let supervisor = supervisor_of(supervisor)?;
                supervisor
                    .terminate_child(ChildKey::Id(id.clone()))
                    .await
                    .map_err(|error| error.to_string())?;
                match supervisor.delete_child(id).await {
                    Ok(()) | Err(SupervisorError::NotFound(_)) => Ok(()),
                    Err(error) => Err(error.to_string()),
                }
            }
            Instruction::RestartChild { supervisor, id } => {
                let supervisor = supervisor_of(supervisor)?;
                let (_, child) = manifest
                    .find_child(id)
                    .ok_or_else(|| format!("no child {id:?}"))?;
                let spec = child_spec(child, &self.table)?;
                supervisor
                    .terminate_child(ChildKey::Id(id.clone()))
                    .await
                    .map_err(|error| error.to_string())?;
                let _ = supervisor.delete_child(id).await;
                supervisor
                    .start_child(spec)
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
            Instruction::UpdateSupervisor { supervisor } => {
                let target = manifest
                    .find_supervisor(supervisor)
                    .ok_or_else(|| format!("no supervisor {supervisor:?}"))?;
                let spec = supervisor_spec(&target, supervisor, &self.table)?;
                supervisor_of(supervisor)?
                    .update(SupervisorUpdate::from(spec))
                    .await
                    .map_err(|error| error.to_string())
            }
            Instruction::Apply {
                actor,
                message,
                timeout_ms,
            } => {
                let request = encode_value(Some(message))?;
                self.runtime
                    .call(actor, request, Duration::from_millis(*timeout_ms))
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
        }
    }

    /// Stops the running release's tree (children in reverse order; terminate callbacks
    /// run) and returns the root's exit reason.
    pub async fn shutdown(&self) -> graft_plugin::StopReason {
        let root = self.state.lock().await.root_supervisor.clone();
        root.shutdown().await
    }
}
