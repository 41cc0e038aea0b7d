//! What the release handler reports: the published view read-only requests see, the
//! libraries still resident, the isolated plugins' workers, an install's report and the
//! phases it goes through.

use super::*;

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
    /// The longest time any one actor was suspended (serialized in microseconds,
    /// `longest_pause_us`).
    #[serde(rename = "longest_pause_us", serialize_with = "microseconds")]
    pub longest_pause: Duration,
    /// The whole install (serialized in microseconds, `total_us`).
    #[serde(rename = "total_us", serialize_with = "microseconds")]
    pub total: Duration,
    /// Plugin versions loaded after the install.
    pub resident: Vec<ResidentLibrary>,
    /// The plan's warnings ([`crate::release::plan::PlanWarning`]): the install ran
    /// regardless.
    pub warnings: Vec<crate::release::plan::PlanWarning>,
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
    /// Running instruction `index` (as written) of `total`: before the suspend when it is
    /// written before the first `update`, after the commit when after the last.
    Instruction {
        /// Which.
        index: usize,
        /// Of how many.
        total: usize,
    },
}

/// Called with each phase of an install.
pub type ProgressFn = Arc<dyn Fn(InstallPhase) + Send + Sync>;

impl ReleaseHandler {
    pub(super) fn resident_with(loaded: &[Weak<LoadedPlugin>]) -> Vec<ResidentLibrary> {
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
}

/// A duration as whole microseconds: one unit per field, named in the field.
fn microseconds<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX))
}
