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
//!
//! Every release that appears (a new version, or a version assembled again: a new
//! directory renamed over the old one, told apart by its inode) is logged with what the
//! watch did with it: installed, refused, or left alone and why (not newer than the running
//! release, already tried once, a newer one chosen). A removed release is logged too.

use crate::release::assemble::{assembled_versions, releases_directory};
use crate::release::handler::ReleaseHandler;
use crate::runtime::ActorRef;
use crate::supervisor::{ChildRef, SupervisorRef};
use notify::{RecursiveMode, Watcher};
use semver::Version;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
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

/// Restarts (and stopped children) across the tree under `root`: what a fleet host
/// reports in its heartbeat, so a crash after an install shows fleet-wide.
pub async fn total_restarts(root: SupervisorRef) -> u64 {
    crash_indicator(root).await
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
    /// Each assembled release's directory as last seen (device and inode): a release
    /// assembled again is a new directory.
    seen: HashMap<Version, (u64, u64)>,
}

/// Every assembled release with its directory's identity (device, inode).
fn assembled_directories(root: &std::path::Path) -> HashMap<Version, (u64, u64)> {
    let releases = releases_directory(root);
    assembled_versions(root)
        .into_iter()
        .filter_map(|version| {
            let metadata = std::fs::metadata(releases.join(version.to_string())).ok()?;
            Some((version, (metadata.dev(), metadata.ino())))
        })
        .collect()
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
        let seen = assembled_directories(handler.root());
        let attempted: HashSet<Version> = seen.keys().cloned().collect();
        Ok(ReleaseWatch {
            handler,
            _watcher: watcher,
            changes,
            attempted,
            seen,
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
            mut seen,
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
            let now = assembled_directories(handler.root());
            let candidates: Vec<Version> = now
                .keys()
                .filter(|version| **version > current && !attempted.contains(*version))
                .cloned()
                .collect();
            let chosen = candidates.into_iter().max();
            log_arrivals(&seen, &now, &current, chosen.as_ref(), &attempted);
            seen = now;
            let Some(target) = chosen else {
                continue;
            };
            attempted.insert(target.clone());
            let before = crash_indicator(handler.root_supervisor().await).await;
            match handler.install(&target, None).await {
                Ok(_) => {
                    tracing::info!(release = %target, from = %current, "watch: installed");
                    report(WatchEvent::Installed(target.clone()));
                }
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
                    Ok(()) => {
                        tracing::info!(release = %target, "watch: no crash in the health window; made permanent");
                        report(WatchEvent::MadePermanent(target));
                    }
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
                    Ok(_) => {
                        tracing::info!(release = %target, to = %current, "watch: rolled back");
                        report(WatchEvent::RolledBack {
                            from: target,
                            to: current,
                        });
                    }
                    Err(error) => tracing::error!("watch: rollback to {current} failed: {error}"),
                }
            }
        }
        Ok(())
    }
}

/// Logs each release that appeared, was assembled again, or was removed since `before`,
/// and what the watch does with it (`chosen` is about to be installed).
fn log_arrivals(
    before: &HashMap<Version, (u64, u64)>,
    now: &HashMap<Version, (u64, u64)>,
    current: &Version,
    chosen: Option<&Version>,
    attempted: &HashSet<Version>,
) {
    for version in before.keys().filter(|version| !now.contains_key(*version)) {
        tracing::info!(release = %version, "watch: release removed");
    }
    let mut arrived: Vec<(&Version, bool)> = now
        .iter()
        .filter_map(|(version, identity)| match before.get(version) {
            None => Some((version, false)),
            Some(previous) if previous != identity => Some((version, true)),
            Some(_) => None,
        })
        .collect();
    arrived.sort();
    for (version, again) in arrived {
        let seen = if again {
            "release assembled again"
        } else {
            "new release"
        };
        if Some(version) == chosen {
            tracing::info!(release = %version, "watch: {seen}; installing it");
        } else if version == current {
            tracing::info!(release = %version, "watch: {seen}; not installed: it is the running release (install another release and back to run the new build)");
        } else if version < current {
            tracing::info!(release = %version, running = %current, "watch: {seen}; not installed: not newer than the running release (`graft install {version}` downgrades)");
        } else if attempted.contains(version) {
            tracing::info!(release = %version, "watch: {seen}; not installed: watch mode tries each version once (`graft install {version}` installs it)");
        } else if let Some(chosen) = chosen {
            tracing::info!(release = %version, newest = %chosen, "watch: {seen}; not installed: a newer release is installed instead");
        }
    }
}
