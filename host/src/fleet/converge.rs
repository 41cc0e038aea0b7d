//! A fleet host converging to the fleet's desired state: the release the state record
//! names for it (by host name, else by its group) is fetched, verified, unpacked and
//! installed through the host's own [`ReleaseHandler`], and made permanent when the record
//! says so.
//!
//! Responsibility: [`Converger::run`], a task of `graft start --fleet` beside the
//! heartbeat. It reads the record every [`CONVERGE_INTERVAL`] (a read is one direct get:
//! cheap, and no watch to re-establish after a server restart) and acts when the host
//! differs from it.
//!
//! Invariants:
//! - Only this host's own handler changes its releases; the fleet only says what it
//!   wants. A host that joins (or restarts, booting its permanent release) after a
//!   rollout converges the same way as one that was there.
//! - Nothing is installed unverified: [`super::releases::fetch`] checks every digest.
//! - A failure (release refused, install failed, server away) is reported in the host's
//!   heartbeat ([`ConvergeReport`]) for the rollout controller, and the same target is
//!   tried again only after [`RETRY_AFTER`], so a refused release does not spin.
//!
//! - After an install or a make-permanent (and when its failure changes) it asks the
//!   heartbeat to publish at once ([`ConvergeReport::changed`]): the controller's gate
//!   reads heartbeats, and waiting for the next periodic one cost up to 2 s per wave
//!   (measured by `host/benches/fleet.rs`).
//!
//! Tricky: while an install runs (this task's or an operator's) the host is left alone.

use super::releases::fetch;
use super::state::{FleetState, StateStore};
use super::{Fleet, FleetError};
use crate::release::handler::ReleaseHandler;
use crate::release::record::ReleaseStatus;
use semver::Version;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the record is read: a host sees a wave's new target within this (one
/// direct get per host per tick; 1,000 hosts make 2,000 small reads a second).
pub const CONVERGE_INTERVAL: Duration = Duration::from_millis(500);

/// How long a failed target waits before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The last convergence failure, shared with the heartbeat, and a signal that tells the
/// heartbeat to publish now: after an install, a make-permanent or a new failure, so the
/// rollout controller learns of it without waiting up to a [`HEARTBEAT_INTERVAL`].
///
/// [`HEARTBEAT_INTERVAL`]: super::membership::HEARTBEAT_INTERVAL
#[derive(Debug, Clone, Default)]
pub struct ConvergeReport(Arc<Mutex<Option<String>>>, Arc<tokio::sync::Notify>);

impl ConvergeReport {
    /// The last failure, if the last attempt failed.
    pub fn error(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, error: Option<String>) {
        let mut current = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current != error {
            *current = error;
            self.1.notify_one();
        }
    }

    /// Asks the heartbeat to publish the host's status now (kept until it next waits).
    pub fn changed(&self) {
        self.1.notify_one();
    }

    /// Waits until [`ConvergeReport::changed`] (or a change of the failure) asks for a
    /// heartbeat; returns at once if one was asked for since the last wait.
    pub async fn wait_for_change(&self) {
        self.1.notified().await;
    }
}

/// The release `state` wants on `host` of `group`, if any.
pub fn target_of<'state>(
    state: &'state FleetState,
    host: &str,
    group: &str,
) -> Option<&'state Version> {
    state
        .desired
        .get(host)
        .or_else(|| state.group_release.get(group))
}

/// A host's convergence task.
pub struct Converger {
    fleet: Fleet,
    handler: Arc<ReleaseHandler>,
    host: String,
    group: String,
    report: ConvergeReport,
}

impl std::fmt::Debug for Converger {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Converger")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Converger {
    /// The task for `host` in `group`, reporting failures to `report`.
    pub fn new(
        fleet: Fleet,
        handler: Arc<ReleaseHandler>,
        host: String,
        group: String,
        report: ConvergeReport,
    ) -> Converger {
        Converger {
            fleet,
            handler,
            host,
            group,
            report,
        }
    }

    /// Converges until the task is dropped.
    pub async fn run(self) {
        let mut store = None;
        let mut failed: Option<(Version, Instant)> = None;
        let mut ticks = tokio::time::interval(CONVERGE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if store.is_none() {
                store = StateStore::open(&self.fleet).await.ok();
            }
            let Some(opened) = &store else { continue };
            let state = match opened.read().await {
                Ok((state, _)) => state,
                Err(_) => {
                    store = None;
                    continue;
                }
            };
            if let Some((version, at)) = &failed
                && target_of(&state, &self.host, &self.group) == Some(version)
                && at.elapsed() < RETRY_AFTER
            {
                continue;
            }
            match self.step(&state).await {
                Ok(()) => {
                    failed = None;
                }
                Err((version, error)) => {
                    tracing::warn!(host = %self.host, release = %version, "fleet convergence failed: {error}");
                    self.report.set(Some(format!("{version}: {error}")));
                    failed = Some((version, Instant::now()));
                }
            }
        }
    }

    /// One step towards `state`: install the target, or make it permanent.
    async fn step(&self, state: &FleetState) -> Result<(), (Version, String)> {
        if self.handler.install_in_progress() {
            return Ok(());
        }
        let current = self.handler.current_version().await;
        if let Some(target) = target_of(state, &self.host, &self.group)
            && *target != current
        {
            let failure = |error: String| (target.clone(), error);
            tracing::info!(host = %self.host, from = %current, to = %target, "converging to the fleet's release");
            fetch(&self.fleet, self.handler.root(), target)
                .await
                .map_err(|error: FleetError| failure(describe(&error)))?;
            self.handler
                .install(target, None)
                .await
                .map_err(|error| failure(describe(&error)))?;
            self.report.set(None);
            self.report.changed();
            tracing::info!(host = %self.host, release = %target, "installed the fleet's release");
            return Ok(());
        }
        if let Some(permanent) = state.permanent.get(&self.host)
            && *permanent == current
        {
            let already = self.handler.which_releases().await.iter().any(|release| {
                release.version == current && release.status == ReleaseStatus::Permanent
            });
            if !already {
                self.handler
                    .make_permanent(&current)
                    .await
                    .map_err(|error| (current.clone(), describe(&error)))?;
                self.report.changed();
                tracing::info!(host = %self.host, release = %current, "made the fleet's release permanent");
            }
        }
        self.report.set(None);
        Ok(())
    }
}

/// An error and its causes on one line.
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_change_or_a_new_failure_asks_for_a_heartbeat_and_a_repeated_one_does_not() {
        let report = ConvergeReport::default();
        let asked = |report: &ConvergeReport| {
            let report = report.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(50), report.wait_for_change())
                    .await
                    .is_ok()
            }
        };
        assert!(!asked(&report).await, "nothing changed yet");
        report.changed();
        assert!(
            asked(&report).await,
            "a change asked before the wait is kept"
        );
        assert!(!asked(&report).await, "and taken once");
        report.set(Some("1.1.0: refused".into()));
        assert!(asked(&report).await, "a new failure asks");
        report.set(Some("1.1.0: refused".into()));
        assert!(!asked(&report).await, "the same failure again does not");
        report.set(None);
        assert!(asked(&report).await, "a cleared failure asks");
        assert_eq!(report.error(), None);
    }

    #[test]
    fn a_host_target_wins_over_its_group() {
        let mut state = FleetState::default();
        assert_eq!(target_of(&state, "a", "web"), None);
        state
            .group_release
            .insert("web".into(), Version::new(1, 1, 0));
        assert_eq!(target_of(&state, "a", "web"), Some(&Version::new(1, 1, 0)));
        assert_eq!(target_of(&state, "a", "db"), None);
        state.desired.insert("a".into(), Version::new(1, 0, 0));
        assert_eq!(target_of(&state, "a", "web"), Some(&Version::new(1, 0, 0)));
        assert_eq!(target_of(&state, "b", "web"), Some(&Version::new(1, 1, 0)));
    }
}
