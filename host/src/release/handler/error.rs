//! The release handler's errors. Each names the manifest, plugin, actor, version or file
//! involved, and what was expected; causes are kept as sources.

use super::*;

/// A release operation failed. Names the manifest, plugin or actor, and the reason.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// Another install is running.
    #[error("an install is already in progress")]
    InstallInProgress,
    /// A path in the root could be written by another user, or is a link.
    #[error("refusing to use the root: {0}")]
    Untrusted(#[source] crate::trust::TrustError),
    /// A rollback with no install of this host's life left to undo.
    #[error(
        "nothing to roll back to: {current} was not reached by an install since the host started \
         (install an older release by version: `graft install VERSION`)"
    )]
    NothingToRollBack {
        /// The running release.
        current: Version,
    },
    /// No assembled releases under the root.
    #[error("no assembled release under {0} (run `graft build` first)")]
    NothingToBoot(PathBuf),
    /// The release is already the current one.
    #[error("release {0} is already current")]
    AlreadyCurrent(Version),
    /// The version is not assembled under the root.
    #[error("release {version} is not assembled under {root}")]
    UnknownRelease {
        /// The version.
        version: Version,
        /// The root.
        root: PathBuf,
    },
    /// A manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No script leads to the target, or the script does not fit the releases (checked
    /// before anything changes).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The libraries' load was abandoned before it finished (the runtime is shutting
    /// down); nothing changed.
    #[error("the load of the target's libraries was abandoned (the host is shutting down)")]
    LoadAbandoned,
    /// A library was refused.
    #[error("manifest {manifest}: plugin {plugin}: {source}")]
    Load {
        /// The manifest.
        manifest: PathBuf,
        /// The plugin.
        plugin: String,
        /// The loader's error.
        source: Box<LoadError>,
    },
    /// A library could not be loaded in its plugin's worker process (`isolation = "process"`):
    /// no worker program, the worker could not start, or it refused the library.
    #[error("manifest {manifest}: plugin {plugin}: {source}")]
    Isolation {
        /// The manifest.
        manifest: PathBuf,
        /// The plugin.
        plugin: String,
        /// Why.
        #[source]
        source: Box<IsolationError>,
    },
    /// The worker process of an updated plugin died during the install (its actors went
    /// with it and restart on the old code); nothing else changed.
    #[error(
        "upgrade aborted, every actor is back on its old code: the worker of plugin {plugin} died during the install: {reason}"
    )]
    WorkerCrashed {
        /// The plugin.
        plugin: String,
        /// `worker crashed: ...`.
        reason: String,
    },
    /// An actor did not suspend in time (it may be stuck in a long callback); nothing changed.
    #[error(
        "upgrade aborted, every actor is back on its old code: actor {actor} (plugin {plugin}) did not suspend: {reason}"
    )]
    Suspend {
        /// The actor.
        actor: String,
        /// Its plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// A migration failed; nothing changed.
    #[error(
        "upgrade aborted, every actor is back on its old code: actor {actor} (plugin {plugin}): {reason}"
    )]
    Migration {
        /// The actor.
        actor: String,
        /// Its plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// A migrated state is too large for the way back (the state cap a downgrade or a
    /// restore from snapshot must fit in): refused before the commit; nothing changed.
    #[error(
        "install refused before its commit: actor {actor}: the migrated state is {size} bytes, over the {cap}-byte cap a rollback could carry"
    )]
    NoWayBack {
        /// The actor.
        actor: String,
        /// Its plugin.
        plugin: String,
        /// The size of its migrated state, encoded.
        size: usize,
        /// The state cap ([`crate::plugin::MAX_STATE_BYTES`]).
        cap: usize,
    },
    /// A supervisor operation failed while booting.
    #[error("starting release {version}: {source}")]
    Boot {
        /// The release.
        version: Version,
        /// The supervisor's error.
        source: SupervisorError,
    },
    /// An instruction written before the first update failed, before the suspend: nothing
    /// was migrated and the running release is still current (the instructions before it
    /// ran, and are not undone).
    #[error(
        "install stopped before the suspend: instruction {index} ({instruction}) failed: {message}; nothing was migrated and release {current} is still current"
    )]
    BeforeSuspend {
        /// The running release, still current.
        current: Version,
        /// The instruction's index in the script.
        index: usize,
        /// Its `op`.
        instruction: &'static str,
        /// Why.
        message: String,
    },
    /// A step after the commit failed; the target release is current.
    #[error(
        "release {version} is current, but instruction {index} ({instruction}) failed: {message}"
    )]
    AfterCommit {
        /// The release.
        version: Version,
        /// The instruction's index in the script.
        index: usize,
        /// Its `op`.
        instruction: &'static str,
        /// Why.
        message: String,
    },
    /// `make_permanent` of a release that is not current.
    #[error("release {version} is {status}; only the current release can be made permanent")]
    BadStatus {
        /// The release.
        version: Version,
        /// Its status.
        status: ReleaseStatus,
    },
    /// `remove` of the permanent or current release.
    #[error("release {version} is {status}; it cannot be removed")]
    InUse {
        /// The release.
        version: Version,
        /// `permanent` or `current`.
        status: &'static str,
    },
    /// The record or a release directory could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The record cannot be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// This process's directory for library copies could not be set up.
    #[error("setting up the directory for library copies under {root}: {source}")]
    CopyDirectory {
        /// The root.
        root: PathBuf,
        /// Why.
        #[source]
        source: crate::ownership::OwnershipError,
    },
}
