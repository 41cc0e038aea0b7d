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
//!    against both trees; every new library is loaded and verified (on the blocking pool,
//!    before any actor is suspended, so no actor waits for a library to load).
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
//!    code), the actors resume, stragglers started during the window are migrated, and the
//!    purge policy applies to anything left on the old code.
//!
//! The script's other instructions (`add_child`, `remove_child`, `restart_child`,
//! `update_supervisor`, `apply`) run in the order written ([`super::plan`]): those before
//! the first `update` after phase 1, before the suspend, on the old code (a failure there
//! stops the install, [`ReleaseError::BeforeSuspend`]: nothing was migrated; what ran is
//! not undone); those after the last `update` after the commit, on the new code (a failure
//! there is reported, [`ReleaseError::AfterCommit`]; the target stays current, and the
//! permanent release is still what a restart boots). One between two updates is refused
//! before anything runs: the updates are one atomic batch.
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
//! This file is the facade: the handler and its operations, each handing off to the
//! module that does it. Beside it, in `handler/`: `boot` (boot, reading a release),
//! `install` (the install transaction, and `hot_swap`), `batch` (the atomic update batch:
//! suspend, migrate, commit or roll back; stragglers; purge), `migration` (what each actor
//! runs in the batch, the checks of its answers, rolling back), `table` (the plugin table
//! new actors start from, loading into it, workers), `permanence` (`make_permanent`,
//! `remove`), `state` (the state, its lock and the published copy), `report` (what
//! operations report), `error` ([`ReleaseError`]). Plain values and translations live in
//! `release/`: the plan ([`super::plan`]), the supervision tree ([`super::tree`]), the
//! record and statuses ([`super::record`]).

use super::assemble::{
    AssembledRelease, assembled_versions, read_assembled, releases_directory,
    remove_interrupted_builds,
};
use super::record::{
    Record, RecordError, read_record, remove_interrupted_writes, statuses, write_record,
};
use super::{
    ChildManifest, Instruction, Isolation, Manifest, ManifestError, PurgePolicy, ROOT_SUPERVISOR,
    SupervisorManifest, UpdateMode, encode_value, resolve_inside, tree,
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
    ChildKey, ChildRef, ChildSpec, SupervisorError, SupervisorRef, SupervisorSpec, start_supervisor,
};
use semver::Version;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use thiserror::Error;

mod batch;
mod boot;
mod error;
mod install;
mod migration;
mod permanence;
mod report;
mod state;
mod table;

pub use super::plan::{Direction, Plan, PlanError, Step};
pub use super::record::{RECORD_FILE, ReleaseInfo, ReleaseStatus};
pub use error::ReleaseError;
pub use report::{InstallPhase, InstallReport, ProgressFn, ReadView, ResidentLibrary, WorkerInfo};

use super::plan::{PlanRelease, instruction_name};
use install::*;
use migration::*;
use state::*;
use table::*;

/// The plan from the `current` release to the `target`, checked against both.
fn plan_between(
    current: &AssembledRelease,
    target: &AssembledRelease,
) -> Result<Plan, ReleaseError> {
    let current_path = current.directory.join("release.toml");
    let target_path = target.directory.join("release.toml");
    Ok(Plan::new(
        PlanRelease {
            manifest: &current.manifest,
            path: &current_path,
        },
        PlanRelease {
            manifest: &target.manifest,
            path: &target_path,
        },
    )?)
}

/// The release handler of one host.
pub struct ReleaseHandler {
    root: PathBuf,
    runtime: Runtime,
    /// Shared with the blocking thread an install loads its libraries on.
    loader: Arc<Loader>,
    table: Arc<PluginTable>,
    /// The worker process of each plugin with `isolation = "process"` in the running
    /// release (started when its first version loads); shared like the loader.
    workers: Arc<Workers>,
    state: tokio::sync::Mutex<State>,
    /// The state as read-only requests see it (see [`Published`]).
    published: Mutex<Arc<Published>>,
    /// An install (or hot swap) is running: a second one is refused at once, while reads
    /// of the state (status, releases) read [`Published`] and never wait for it.
    installing: std::sync::atomic::AtomicBool,
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
        Self::boot_release(root, runtime).await
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

    /// Every assembled release with its status, oldest first.
    pub async fn which_releases(&self) -> Vec<ReleaseInfo> {
        let published = self.published();
        statuses(&self.root, &published.current, &published.record)
    }

    /// The release facts read-only requests report, all from one published state (as of
    /// the last finished operation; never waits for an install).
    pub fn read_view(&self) -> ReadView {
        let published = self.published();
        ReadView {
            current: published.current.clone(),
            root_supervisor: published.root_supervisor.clone(),
            releases: statuses(&self.root, &published.current, &published.record),
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

    /// Makes the current release permanent (recorded on disk; booted on restart).
    pub async fn make_permanent(&self, version: &Version) -> Result<(), ReleaseError> {
        self.record_permanent(version).await
    }

    /// Removes an assembled release (not the permanent one, not the running one).
    pub async fn remove(&self, version: &Version) -> Result<(), ReleaseError> {
        self.remove_release(version).await
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

    /// The plan an install of `target` would run, in the order it would run (before the
    /// suspend, the atomic update batch, after the commit), checked as the install checks
    /// it; changes nothing and loads nothing. Reads the running release as of the last
    /// finished operation (never waits for an install).
    pub fn plan(&self, target: &Version) -> Result<Plan, ReleaseError> {
        let current = self.published().current.clone();
        if *target == current {
            return Err(ReleaseError::AlreadyCurrent(current));
        }
        let current = Self::read_release(&self.root, &current)?;
        let target = Self::read_release(&self.root, target)?;
        plan_between(&current, &target)
    }

    /// Goes back to the release that was current before the last install (undoing it);
    /// refused when no install of this host's life is left to undo.
    pub async fn rollback(
        &self,
        progress: Option<ProgressFn>,
    ) -> Result<InstallReport, ReleaseError> {
        self.install_target(InstallTarget::Previous, progress).await
    }

    /// Stops the running release's tree (children in reverse order; terminate callbacks
    /// run) and returns the root's exit reason.
    pub async fn shutdown(&self) -> graft_plugin::StopReason {
        let root = self.state.lock().await.root_supervisor.clone();
        root.shutdown().await
    }
}
