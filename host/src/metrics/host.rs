//! The metrics of rare events, kept in the `prometheus` crate's own types and registry:
//! supervisors' restarts, installs, rollbacks and hot swaps (counters and histograms),
//! actor exits by reason, plugin libraries loaded and closed, and the current and permanent
//! release.
//!
//! Invariants:
//! - Every family here is registered once, in the process-wide registry
//!   (`super::registry`), with the scrape-time collector of [`super::render`] beside it.
//! - Label values are bounded: supervisor names (a release's tree), outcomes, kinds, and
//!   the two release statuses.
//! - The release facts and the library counts are kept whether metrics are on or not
//!   (they are a state to report, changed only by rare operations); the rest counts only
//!   while metrics are on (their hooks check first).

use super::{UpgradeKind, UpgradeOutcome};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use std::sync::LazyLock;
use std::time::Duration;

/// Bucket bounds, in seconds, of an install's total duration.
const INSTALL_BOUNDS_S: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Bucket bounds, in seconds, of an install's longest pause.
const PAUSE_BOUNDS_S: [f64; 16] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The families kept here.
pub(crate) struct HostMetrics {
    pub(crate) restarts: IntCounterVec,
    pub(crate) intensity_exits: IntCounterVec,
    pub(crate) upgrades: IntCounterVec,
    pub(crate) upgrade_duration: HistogramVec,
    pub(crate) upgrade_longest_pause: HistogramVec,
    pub(crate) exits: IntCounterVec,
    pub(crate) libraries_loaded: IntCounter,
    pub(crate) libraries_unloaded: IntCounter,
    pub(crate) libraries_resident: IntCounter,
    pub(crate) release: IntGaugeVec,
}

/// A family's definition is fixed here; only a bug could make it invalid.
fn valid<T>(made: Result<T, prometheus::Error>) -> T {
    match made {
        Ok(made) => made,
        Err(error) => unreachable!("a metric family defined in this file is invalid: {error}"),
    }
}

pub(crate) static HOST: LazyLock<HostMetrics> = LazyLock::new(|| HostMetrics {
    restarts: valid(IntCounterVec::new(
        Opts::new(
            "graft_supervisor_restarts_total",
            "Children restarted by each supervisor (each child of a group restart counts).",
        ),
        &["supervisor"],
    )),
    intensity_exits: valid(IntCounterVec::new(
        Opts::new(
            "graft_supervisor_intensity_exits_total",
            "Supervisors that shut down because they reached their maximum restart intensity.",
        ),
        &["supervisor"],
    )),
    upgrades: valid(IntCounterVec::new(
        Opts::new(
            "graft_upgrades_total",
            "Installs and rollbacks, by how they ended (completed, rolled_back, failed).",
        ),
        &["kind", "outcome"],
    )),
    upgrade_duration: valid(HistogramVec::new(
        HistogramOpts::new(
            "graft_upgrade_duration_seconds",
            "The whole of each install or rollback.",
        )
        .buckets(INSTALL_BOUNDS_S.to_vec()),
        &["kind"],
    )),
    upgrade_longest_pause: valid(HistogramVec::new(
        HistogramOpts::new(
            "graft_upgrade_longest_pause_seconds",
            "The longest one actor was suspended in each install or rollback.",
        )
        .buckets(PAUSE_BOUNDS_S.to_vec()),
        &["kind"],
    )),
    exits: valid(IntCounterVec::new(
        Opts::new(
            "graft_actor_exits_total",
            "Actor exits by reason (normal, shutdown, error, killed, other).",
        ),
        &["reason"],
    )),
    libraries_loaded: valid(IntCounter::new(
        "graft_libraries_loaded_total",
        "Plugin libraries loaded into the host (dlopen of a verified copy).",
    )),
    libraries_unloaded: valid(IntCounter::new(
        "graft_libraries_unloaded_total",
        "Plugin libraries closed and gone from the address space.",
    )),
    libraries_resident: valid(IntCounter::new(
        "graft_libraries_resident_after_close_total",
        "Plugin libraries closed but still mapped (pinned on purpose, held by a thread-local destructor, or a failed dlclose).",
    )),
    release: valid(IntGaugeVec::new(
        Opts::new(
            "graft_release_info",
            "The current and the permanent release (value 1; the version is the label).",
        ),
        &["version", "status"],
    )),
});

/// Registers every family of [`HOST`] in `registry`.
pub(crate) fn register(registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
    let host = &*HOST;
    registry.register(Box::new(host.restarts.clone()))?;
    registry.register(Box::new(host.intensity_exits.clone()))?;
    registry.register(Box::new(host.upgrades.clone()))?;
    registry.register(Box::new(host.upgrade_duration.clone()))?;
    registry.register(Box::new(host.upgrade_longest_pause.clone()))?;
    registry.register(Box::new(host.exits.clone()))?;
    registry.register(Box::new(host.libraries_loaded.clone()))?;
    registry.register(Box::new(host.libraries_unloaded.clone()))?;
    registry.register(Box::new(host.libraries_resident.clone()))?;
    registry.register(Box::new(host.release.clone()))?;
    Ok(())
}

fn kind_label(kind: UpgradeKind) -> &'static str {
    match kind {
        UpgradeKind::Install => "install",
        UpgradeKind::Rollback => "rollback",
        UpgradeKind::HotSwap => "hot_swap",
    }
}

fn outcome_label(outcome: UpgradeOutcome) -> &'static str {
    match outcome {
        UpgradeOutcome::Completed => "completed",
        UpgradeOutcome::RolledBack => "rolled_back",
        UpgradeOutcome::Failed => "failed",
    }
}

/// Counts one finished install or rollback.
pub(crate) fn count_upgrade(
    kind: UpgradeKind,
    outcome: UpgradeOutcome,
    total: Duration,
    longest_pause: Duration,
) {
    let host = &*HOST;
    let kind = kind_label(kind);
    host.upgrades
        .with_label_values(&[kind, outcome_label(outcome)])
        .inc();
    host.upgrade_duration
        .with_label_values(&[kind])
        .observe(total.as_secs_f64());
    host.upgrade_longest_pause
        .with_label_values(&[kind])
        .observe(longest_pause.as_secs_f64());
}

/// Counts one actor exit by the kind of its reason.
pub(crate) fn count_exit(reason: &graft_plugin::StopReason) {
    use graft_plugin::StopReason;
    let label = match reason {
        StopReason::Normal => "normal",
        StopReason::Shutdown(_) => "shutdown",
        StopReason::Error(message) if message == "killed" => "killed",
        StopReason::Error(_) => "error",
        _ => "other",
    };
    HOST.exits.with_label_values(&[label]).inc();
}

/// Counts a child restart by the supervisor `supervisor` (while metrics are on).
pub fn supervisor_restarted(supervisor: &str) {
    if super::is_enabled() {
        HOST.restarts.with_label_values(&[supervisor]).inc();
    }
}

/// Counts a supervisor shutting down at its restart intensity (while metrics are on).
pub fn supervisor_reached_intensity(supervisor: &str) {
    if super::is_enabled() {
        HOST.intensity_exits.with_label_values(&[supervisor]).inc();
    }
}

/// Counts a plugin library loaded (always: it is a state to report).
pub fn library_loaded() {
    HOST.libraries_loaded.inc();
}

/// Counts a plugin library closed: gone from the address space (`unloaded`), or still
/// mapped (always: it is a state to report).
pub fn library_closed(unloaded: bool) {
    if unloaded {
        HOST.libraries_unloaded.inc();
    } else {
        HOST.libraries_resident.inc();
    }
}

/// The release handler published its state: the current release, and the permanent one
/// (always: the last handler to publish in the process is the one reported).
pub fn release_published(current: &str, permanent: Option<&str>) {
    let release = &HOST.release;
    release.reset();
    release.with_label_values(&[current, "current"]).set(1);
    if let Some(permanent) = permanent {
        release.with_label_values(&[permanent, "permanent"]).set(1);
    }
}
