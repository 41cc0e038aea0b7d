//! The host's metrics and recent history: what `/metrics` (Prometheus text) and the web
//! observer read.
//!
//! SKELETON — the interface the HTTP server and the observer are written against. The
//! bodies are filled in by the metrics work (counters, histograms, the hooks in the
//! runtime, supervisors, release handler and loader).
//!
//! Invariants:
//! - Process-wide, like a Prometheus client's default registry: every runtime and release
//!   handler in the process reports here.
//! - Off until [`enable`]: until then a hook costs one relaxed load and nothing is timed.
//! - Bounded: label cardinality (per plugin and version, per supervisor, top-N actors) and
//!   the history rings ([`upgrades`], [`recent_exits`]) never grow without bound.

use serde::{Deserialize, Serialize};

/// Turns metrics on for this process (`graft start --http`). Idempotent.
pub fn enable() {}

/// Whether [`enable`] was called.
pub fn is_enabled() -> bool {
    false
}

/// The metrics in the Prometheus text exposition format (what `GET /metrics` serves).
pub fn render() -> String {
    String::new()
}

/// The last upgrades (installs and rollbacks), oldest first, at most a fixed number.
pub fn upgrades() -> Vec<UpgradeRecord> {
    Vec::new()
}

/// The last exits of the actor registered (or labelled) `actor`, oldest first, at most a
/// fixed number.
pub fn recent_exits(actor: &str) -> Vec<ExitRecord> {
    let _ = actor;
    Vec::new()
}

/// Which operation an [`UpgradeRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeKind {
    /// `install` (an upgrade or a downgrade).
    Install,
    /// `rollback`.
    Rollback,
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
    /// mailbox, while it ran (0 is the point).
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
