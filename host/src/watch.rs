//! Watch mode: install newly assembled releases as they appear, with an optional health
//! gate that makes them permanent or rolls them back.
//!
//! `notify` watches `<root>/releases`. Assembling renames a complete release directory into
//! place, so a directory event there means a whole release (or a removal). Each release
//! newer than the running one is installed once; with `auto_permanent`, the host watches the
//! new release for that long: if no actor crashed (no supervisor restarted anything, no
//! supervisor gave up) and, at the end of the window, no actor reports itself unhealthy
//! (plugin ABI 1.1 `health`: `Unhealthy`, or a health check that fails), it becomes
//! permanent; otherwise the host rolls back to the release it came from — a health-gated
//! upgrade, which OTP leaves to the operator. Actors that report no health (ABI 1.0
//! plugins) and actors too busy to answer within [`HEALTH_WAIT`] do not hold it back.

use crate::release::assemble::{assembled_versions, releases_directory};
use crate::release::handler::ReleaseHandler;
use crate::runtime::ActorRef;
use crate::supervisor::{ChildRef, SupervisorRef};
use notify::{RecursiveMode, Watcher};
use semver::Version;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// Watch mode could not start.
#[derive(Debug, Error)]
#[error("cannot watch {path}: {source}")]
pub struct WatchError {
    path: std::path::PathBuf,
    source: notify::Error,
}

/// What watch mode did with one release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Installed.
    Installed(Version),
    /// Refused by the install (the error's text).
    Refused(Version, String),
    /// Made permanent after a healthy window.
    MadePermanent(Version),
    /// Rolled back to `to` after crashes in the window.
    RolledBack {
        /// The release that crashed.
        from: Version,
        /// The release it went back to.
        to: Version,
    },
}

/// Total restarts and stopped children across a tree: a crash shows up in one of them.
fn crash_indicator(
    supervisor: SupervisorRef,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>> {
    Box::pin(async move {
        let mut total = 0;
        for child in supervisor.which_children().await.unwrap_or_default() {
            total += u64::from(child.restarts);
            if let Some(ChildRef::Supervisor(nested)) = child.child {
                total += crash_indicator(nested).await;
            }
        }
        total
    })
}

/// How long the health gate waits for the actors' health reports.
pub const HEALTH_WAIT: Duration = Duration::from_secs(2);

/// Every worker actor of a tree.
fn workers(
    supervisor: SupervisorRef,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<ActorRef>> + Send>> {
    Box::pin(async move {
        let mut found = Vec::new();
        for child in supervisor.which_children().await.unwrap_or_default() {
            match child.child {
                Some(ChildRef::Supervisor(nested)) => found.extend(workers(nested).await),
                Some(ChildRef::Worker(actor)) => found.push(actor),
                None => {}
            }
        }
        found
    })
}

/// The actors of a tree that report themselves unhealthy, each with why (its name and
/// health, or the failed check's message).
pub async fn unhealthy_actors(root: SupervisorRef) -> Vec<String> {
    let actors = workers(root).await;
    crate::runtime::status_all(&actors, HEALTH_WAIT)
        .await
        .into_iter()
        .zip(&actors)
        .filter_map(|(status, actor)| {
            let label = actor
                .name()
                .map_or_else(|| actor.id().to_string(), str::to_owned);
            match status.ok()?.health? {
                Ok(health) if health.is_unhealthy() => Some(format!("{label}: {health}")),
                Ok(_) => None,
                Err(message) => Some(format!("{label}: the health check failed: {message}")),
            }
        })
        .collect()
}

/// Watches the root's releases directory and installs new releases until the task ends.
/// Each event is also sent to `events` (for logs and tests).
pub async fn watch(
    handler: Arc<ReleaseHandler>,
    auto_permanent: Option<Duration>,
    events: Option<tokio::sync::mpsc::UnboundedSender<WatchEvent>>,
) -> Result<(), WatchError> {
    ReleaseWatch::start(handler)?
        .run(auto_permanent, events)
        .await
}

/// Watch mode, set up: the releases directory is watched from [`ReleaseWatch::start`] on,
/// so a release that appears after it returns is installed by [`ReleaseWatch::run`] even if
/// `run` begins later.
pub struct ReleaseWatch {
    handler: Arc<ReleaseHandler>,
    _watcher: notify::RecommendedWatcher,
    changes: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// Releases present when watching began (not installed by the watch), and those tried.
    attempted: HashSet<Version>,
}

impl ReleaseWatch {
    /// Starts watching `<root>/releases` now.
    pub fn start(handler: Arc<ReleaseHandler>) -> Result<ReleaseWatch, WatchError> {
        let directory = releases_directory(handler.root());
        let (notices, changes) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = notices.send(());
                }
            })
            .map_err(|source| WatchError {
                path: directory.clone(),
                source,
            })?;
        watcher
            .watch(&directory, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError {
                path: directory.clone(),
                source,
            })?;
        let attempted: HashSet<Version> = assembled_versions(handler.root()).into_iter().collect();
        Ok(ReleaseWatch {
            handler,
            _watcher: watcher,
            changes,
            attempted,
        })
    }

    /// Installs new releases as they appear, until the task ends.
    pub async fn run(
        self,
        auto_permanent: Option<Duration>,
        events: Option<tokio::sync::mpsc::UnboundedSender<WatchEvent>>,
    ) -> Result<(), WatchError> {
        let ReleaseWatch {
            handler,
            _watcher,
            mut changes,
            mut attempted,
        } = self;
        let report = |event: WatchEvent| {
            if let Some(events) = &events {
                let _ = events.send(event);
            }
        };
        while changes.recv().await.is_some() {
            // Let a burst of events settle before looking.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while changes.try_recv().is_ok() {}
            let current = handler.current_version().await;
            let candidates: Vec<Version> = assembled_versions(handler.root())
                .into_iter()
                .filter(|version| *version > current && !attempted.contains(version))
                .collect();
            let Some(target) = candidates.into_iter().max() else {
                continue;
            };
            attempted.insert(target.clone());
            tracing::info!(release = %target, "watch: new release, installing");
            let before = crash_indicator(handler.root_supervisor().await).await;
            match handler.install(&target, None).await {
                Ok(_) => report(WatchEvent::Installed(target.clone())),
                Err(error) => {
                    tracing::error!(release = %target, "watch: install refused: {error}");
                    report(WatchEvent::Refused(target, error.to_string()));
                    continue;
                }
            }
            let Some(window) = auto_permanent else {
                continue;
            };
            tokio::time::sleep(window).await;
            let root = handler.root_supervisor().await;
            let after = crash_indicator(root.clone()).await;
            let crashed = after != before || root.exit_reason().is_some();
            let unhealthy = if crashed {
                Vec::new()
            } else {
                unhealthy_actors(root.clone()).await
            };
            if !crashed && unhealthy.is_empty() {
                match handler.make_permanent(&target).await {
                    Ok(()) => report(WatchEvent::MadePermanent(target)),
                    Err(error) => {
                        tracing::error!(release = %target, "watch: make_permanent failed: {error}")
                    }
                }
            } else {
                if crashed {
                    tracing::warn!(release = %target, "watch: actors crashed in the health window; rolling back to {current}");
                } else {
                    tracing::warn!(release = %target, "watch: actors report themselves unhealthy ({}); rolling back to {current}", unhealthy.join("; "));
                }
                match handler.install(&current, None).await {
                    Ok(_) => report(WatchEvent::RolledBack {
                        from: target,
                        to: current,
                    }),
                    Err(error) => tracing::error!("watch: rollback to {current} failed: {error}"),
                }
            }
        }
        Ok(())
    }
}
