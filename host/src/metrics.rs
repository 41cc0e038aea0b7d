//! The host's metrics and recent history: what `/metrics` (Prometheus text) and the web
//! observer read.
//!
//! Where each part lives: [`plugin`] the per-plugin-version counters of the hot path
//! (sharded by thread), [`host`] the rare events in the `prometheus` crate's own types
//! (supervisors, installs, exits, libraries, the release), [`history`] the rings the
//! observer reads (upgrades with their phases, actor exits) and the lost-message count,
//! [`render`] what is computed at scrape and the text encoding.
//!
//! Invariants:
//! - Process-wide, like a Prometheus client's default registry: every runtime and release
//!   handler in the process reports here.
//! - Off until [`enable`]: until then a hook costs one relaxed load and nothing is timed.
//!   Only the release facts (current, permanent) and the library counts are kept while
//!   off: they are a state, changed by rare operations, that a later scrape must show
//!   true.
//! - Bounded: label cardinality (per plugin and version, per supervisor, top-N actors) and
//!   the history rings ([`upgrades`], [`recent_exits`]) never grow without bound.
//! - Counters only grow (a scrape sums shards and never resets them); tests in one process
//!   share them, so they compare deltas.
//!
//! What is tricky: an actor counts in "actors running" from the first message it handles
//! (or its start, or a code change) while metrics are on: one idle since before [`enable`]
//! is not counted until it handles something.

pub mod history;
pub mod host;
pub mod plugin;
mod render;

pub use history::{UpgradeRecorder, UpgradeSummary};
pub use plugin::{MessageKind, Running, VersionMetrics};

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// How many actors get a label of their own in the mailbox families unless told.
pub const DEFAULT_TOP_ACTORS: usize = 10;

/// What [`enable_with`] turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsOptions {
    /// Label every named actor's mailbox (not only the top ones): one series per actor,
    /// so only for hosts with few actors.
    pub per_actor: bool,
    /// How many actors, the longest mailboxes first, get a label of their own.
    pub top_actors: usize,
}

impl Default for MetricsOptions {
    fn default() -> MetricsOptions {
        MetricsOptions {
            per_actor: false,
            top_actors: DEFAULT_TOP_ACTORS,
        }
    }
}

static OPTIONS: Mutex<MetricsOptions> = Mutex::new(MetricsOptions {
    per_actor: false,
    top_actors: DEFAULT_TOP_ACTORS,
});

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The options in force.
pub fn options() -> MetricsOptions {
    *lock(&OPTIONS)
}

/// Turns metrics on for this process (`graft start --http`). Idempotent.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Turns metrics on with `options` (the per-actor labels); may be called again to change
/// them.
pub fn enable_with(options: MetricsOptions) {
    *lock(&OPTIONS) = options;
    enable();
}

/// Turns metrics off again: hooks stop counting and timing (what was counted stays).
/// For benchmarks that alternate off and on in one process; a host never calls it.
#[doc(hidden)]
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// Whether [`enable`] was called.
#[inline]
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why the metrics could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A family could not be registered or encoded (a bug: they are defined here).
    #[error("metrics could not be encoded: {0}")]
    Prometheus(#[from] prometheus::Error),
}

/// The process-wide registry: the rare-event families and the scrape-time collector.
fn registry() -> Result<&'static prometheus::Registry, RenderError> {
    static REGISTRY: OnceLock<Result<prometheus::Registry, String>> = OnceLock::new();
    let made = REGISTRY.get_or_init(|| {
        let registry = prometheus::Registry::new();
        host::register(&registry)
            .and_then(|()| registry.register(Box::new(render::ScrapeCollector::new()?)))
            .map_err(|error| error.to_string())?;
        Ok(registry)
    });
    made.as_ref()
        .map_err(|message| RenderError::Prometheus(prometheus::Error::Msg(message.clone())))
}

/// The metrics in the Prometheus text exposition format (version 0.0.4).
pub fn try_render() -> Result<String, RenderError> {
    let families = registry()?.gather();
    Ok(prometheus::TextEncoder::new().encode_to_string(&families)?)
}

/// The metrics in the Prometheus text exposition format (what `GET /metrics` serves);
/// empty if they cannot be encoded (logged; see [`try_render`]).
pub fn render() -> String {
    try_render().unwrap_or_else(|error| {
        tracing::error!("{error}");
        String::new()
    })
}

/// The content type of [`render`]'s text (`text/plain; version=0.0.4`).
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// The last upgrades (installs, rollbacks and hot swaps), oldest first, at most a fixed number
/// ([`history::KEPT_UPGRADES`]).
pub fn upgrades() -> Vec<UpgradeRecord> {
    history::upgrades()
}

/// The last exits of the actor registered (or labelled) `actor`, oldest first, at most a
/// fixed number (from one ring of the last [`history::KEPT_EXITS`] exits of all actors).
pub fn recent_exits(actor: &str) -> Vec<ExitRecord> {
    history::exits_of(actor)
}

/// Which operation an [`UpgradeRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeKind {
    /// `install` (an upgrade or a downgrade).
    Install,
    /// `rollback`.
    Rollback,
    /// A hot swap of one plugin to a fresh build of it (`graft dev`); `from` and `to` are
    /// `plugin@version` (the running build's version carries `+dev.N`).
    HotSwap,
}

/// How an upgrade ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeOutcome {
    /// Every actor runs the new code.
    Completed,
    /// A migration failed and every actor is back on its old code.
    RolledBack,
    /// It failed before anything changed (a load, a plan, an instruction).
    Failed,
}

/// One phase of an upgrade, as the timeline draws it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// `loading`, `before_suspend`, `suspending`, `migrating`, `resuming`, `after_commit`, …
    pub name: String,
    /// When it began, in microseconds from the upgrade's start.
    pub start_us: u64,
    /// How long it took, in microseconds.
    pub duration_us: u64,
}

/// One install or rollback, for the observer's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    /// Install or rollback.
    pub kind: UpgradeKind,
    /// The release it started from.
    pub from: String,
    /// The release it went to.
    pub to: String,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// How it ended.
    pub outcome: UpgradeOutcome,
    /// The error, when it did not complete.
    pub error: Option<String>,
    /// Its phases, in order.
    pub phases: Vec<PhaseRecord>,
    /// Actors moved to new code.
    pub actors_migrated: u64,
    /// Actors suspended.
    pub actors_suspended: u64,
    /// The longest time one actor was suspended, in microseconds.
    pub longest_pause_us: u64,
    /// The whole operation, in microseconds.
    pub total_us: u64,
    /// Messages lost during it: dropped with an actor that exited, or refused by a full
    /// mailbox, while it ran (0 is the point). Measured as the growth of the process-wide
    /// count ([`history::lost_messages`]: messages still queued when their actor exited,
    /// plus messages a full mailbox refused) from its start to its end, so a loss anywhere
    /// in the process meanwhile counts.
    pub lost: u64,
}

/// One exit of an actor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The actor's name (or id).
    pub actor: String,
    /// The exit reason, as text (`normal`, `shutdown`, `error: …`, `killed`).
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    /// Runs `promtool check metrics` on `text`; panics with its findings, or when promtool
    /// is missing (CI installs it: Debian's `prometheus` package).
    pub(crate) fn promtool_accepts(text: &str) {
        let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
        file.write_all(text.as_bytes())
            .expect("the rendered metrics written");
        let input = std::fs::File::open(file.path()).expect("the rendered metrics reopened");
        let output = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(input)
            .output()
            .unwrap_or_else(|error| {
                panic!(
                    "promtool could not run ({error}): install Debian's `prometheus` package \
                     (it provides /usr/bin/promtool)"
                )
            });
        assert!(
            output.status.success(),
            "promtool check metrics refused the output:\n{}{}\n--- the output ---\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }

    #[test]
    fn the_rendered_metrics_pass_promtool() {
        enable();
        let version = plugin::for_version("unit-render", "1.2.3", "unit-render 1.2.3");
        let running = Running::start(std::sync::Arc::clone(&version));
        version.record(MessageKind::Call, Duration::from_micros(3));
        version.record(MessageKind::Cast, Duration::from_nanos(200));
        version.count_panic();
        host::supervisor_restarted("unit-render-supervisor");
        host::supervisor_reached_intensity("unit-render-supervisor");
        host::release_published("1.0.0", Some("0.9.0"));
        let recorder = UpgradeRecorder::begin(UpgradeKind::Install).expect("metrics are on");
        recorder.set_endpoints("0.9.0".to_owned(), "1.0.0".to_owned());
        recorder.finish(
            Some(UpgradeSummary {
                actors_migrated: 2,
                actors_suspended: 2,
                longest_pause: Duration::from_micros(40),
            }),
            None,
            true,
        );
        let text = try_render().expect("the metrics render");
        for expected in [
            "graft_plugin_messages_handled_total{plugin=\"unit-render\",version=\"1.2.3\",kind=\"call\"} 1",
            "graft_plugin_callback_duration_seconds_bucket{plugin=\"unit-render\",version=\"1.2.3\",kind=\"cast\",le=\"0.0000005\"} 1",
            "graft_plugin_callback_panics_total{plugin=\"unit-render\",version=\"1.2.3\"} 1",
            "graft_plugin_actors_running{plugin=\"unit-render\",version=\"1.2.3\"} 1",
            "graft_supervisor_restarts_total{supervisor=\"unit-render-supervisor\"}",
            "graft_upgrade_duration_seconds_count{kind=\"install\"}",
            "graft_messages_lost_total",
        ] {
            assert!(text.contains(expected), "no {expected} in:\n{text}");
        }
        promtool_accepts(&text);
        drop(running);
        assert!(
            upgrades()
                .iter()
                .any(|upgrade| upgrade.from == "0.9.0" && upgrade.actors_migrated == 2)
        );
    }
}
