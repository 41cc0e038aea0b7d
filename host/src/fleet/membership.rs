//! A host's membership of a fleet: its entry in the fleet's hosts bucket, kept alive by a
//! heartbeat, and the listing of the live hosts.
//!
//! Responsibility: `graft start --fleet URL --group NAME` runs [`Membership::run`] beside
//! the control server; it puts the host's [`HostStatus`] (group, current and permanent
//! release, health, restarts) under `host.<name>` every [`HEARTBEAT_INTERVAL`], and at
//! once when the host's convergence task installs, makes permanent or fails
//! ([`ConvergeReport::changed`]), so a rollout's gate need not wait for the next tick.
//! [`list_hosts`] reads every live entry (`graft fleet status`).
//!
//! Invariants:
//! - The hosts bucket has `max_age` [`HEARTBEAT_TTL`] and history 1: an entry that is not
//!   renewed (the host died, or lost its connection) disappears on its own; nothing has
//!   to notice a death. The TTL is five heartbeats, so a host on a loaded machine that
//!   misses a few is not dropped.
//! - A host's name is stable across restarts of the same root on the same machine
//!   (hostname plus a digest of the root's path) unless given, so a restarted host takes
//!   its old entry back instead of appearing twice.
//!
//! Tricky: a heartbeat that fails (server down, restarting) is logged and retried at the
//! next tick; the client reconnects by itself, and the bucket is looked up again after a
//! failure in case the server lost it (a server restarted without its store).

use super::converge::ConvergeReport;
use super::{Fleet, FleetError, now_ms, valid_name};
use crate::release::handler::ReleaseHandler;
use crate::release::record::ReleaseStatus;
use futures_util::StreamExt as _;
use semver::Version;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How often a host renews its entry.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// How long an entry lives without renewal (the hosts bucket's `max_age`).
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);

/// The key prefix of host entries in the hosts bucket.
const HOST_KEY_PREFIX: &str = "host.";

/// What a host publishes about itself at each heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host's name in the fleet.
    pub host: String,
    /// Its group (rollouts target a group).
    pub group: String,
    /// The release it runs.
    pub current: Version,
    /// Its permanent release (booted on restart), if any.
    pub permanent: Option<Version>,
    /// Every release assembled in its root.
    pub releases: Vec<Version>,
    /// `healthy` or `unhealthy`.
    pub health: Health,
    /// The actors that report themselves unhealthy, each with why.
    pub unhealthy: Vec<String>,
    /// Restarts across its supervision tree since the running release started.
    pub restarts: u64,
    /// Restarts since it began running its current release (as this process saw the
    /// release change: its heartbeat right after an install takes the count), so the
    /// gate counts a crash right after an install even when it reads the host later.
    #[serde(default)]
    pub restarts_since_release: Option<u64>,
    /// Whether an install is running on it now.
    pub installing: bool,
    /// Why its last attempt to converge to the fleet's release failed, if it did.
    #[serde(default)]
    pub converge_error: Option<String>,
    /// When it wrote this entry (milliseconds since the Unix epoch, its clock).
    pub updated_ms: u64,
    /// The global names it holds in its group's cluster, sorted.
    #[serde(default)]
    pub globals: Vec<String>,
    /// The singletons it runs for its group's cluster (their child ids), sorted.
    #[serde(default)]
    pub singletons: Vec<String>,
}

/// A host's health as its heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No actor reports itself unhealthy.
    Healthy,
    /// Some actor reports itself unhealthy (see [`HostStatus::unhealthy`]).
    Unhealthy,
}

impl std::fmt::Display for Health {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        })
    }
}

/// The default name of the host whose root is `root`: the machine's hostname and the
/// first 8 hex digits of the SHA-256 of the root's canonical path, in `[A-Za-z0-9_-]`.
pub fn default_host_name(root: &std::path::Path) -> String {
    use sha2::Digest as _;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() || character == '-' || character == '_' {
                character
            } else {
                '_'
            }
        })
        .take(40)
        .collect::<String>();
    let path = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let digest = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
    let short: String = digest[..4]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    if hostname.is_empty() {
        format!("host-{short}")
    } else {
        format!("{hostname}-{short}")
    }
}

/// The hosts bucket of `fleet`, created if needed.
pub async fn hosts_bucket(fleet: &Fleet) -> Result<async_nats::jetstream::kv::Store, FleetError> {
    fleet
        .bucket(
            &fleet.namespace.hosts_bucket(),
            "graft: the fleet's live hosts (entries expire without heartbeats)",
            1,
            HEARTBEAT_TTL,
        )
        .await
}

/// How long a listing of a bucket may take: async-nats lists keys through an ordered
/// consumer, which has been seen to wait forever for its end under load; a listing that
/// takes longer fails (and is retried by whoever polls).
pub const LISTING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Every live host of the fleet, by name.
pub async fn list_hosts(fleet: &Fleet) -> Result<Vec<HostStatus>, FleetError> {
    let bucket_name = fleet.namespace.hosts_bucket();
    tokio::time::timeout(LISTING_TIMEOUT, list_hosts_unbounded(fleet))
        .await
        .map_err(|elapsed| FleetError::jetstream(format!("listing {bucket_name}"), elapsed))?
}

async fn list_hosts_unbounded(fleet: &Fleet) -> Result<Vec<HostStatus>, FleetError> {
    let bucket_name = fleet.namespace.hosts_bucket();
    let store = hosts_bucket(fleet).await?;
    let mut keys = store
        .keys()
        .await
        .map_err(|error| FleetError::jetstream(format!("listing {bucket_name}"), error))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        let key =
            key.map_err(|error| FleetError::jetstream(format!("listing {bucket_name}"), error))?;
        if key.starts_with(HOST_KEY_PREFIX) {
            names.push(key);
        }
    }
    let mut hosts = Vec::new();
    for key in names {
        // An entry can expire between the listing and the read.
        let Some(value) = store.get(key.as_str()).await.map_err(|error| {
            FleetError::jetstream(format!("reading {bucket_name} {key}"), error)
        })?
        else {
            continue;
        };
        let status: HostStatus =
            serde_json::from_slice(&value).map_err(|source| FleetError::Decode {
                bucket: bucket_name.clone(),
                key: key.clone(),
                source,
            })?;
        hosts.push(status);
    }
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(hosts)
}

/// A host's place in a fleet: what it needs to publish its status.
pub struct Membership {
    fleet: Fleet,
    handler: Arc<ReleaseHandler>,
    host: String,
    group: String,
    report: ConvergeReport,
    /// The release last seen running and the restart count when it was first seen.
    release_start: std::sync::Mutex<Option<(Version, u64)>>,
    /// The cluster the host belongs to, for its global names and singletons.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Membership")
            .field("host", &self.host)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// Joins `fleet` as `host` in `group`: checks the names and writes the first entry
    /// (so a host that cannot register fails its start).
    pub async fn join(
        fleet: Fleet,
        handler: Arc<ReleaseHandler>,
        host: String,
        group: String,
        report: ConvergeReport,
    ) -> Result<Membership, FleetError> {
        for (what, name) in [("host name", &host), ("group", &group)] {
            if !valid_name(name) {
                return Err(FleetError::InvalidName {
                    what,
                    name: name.clone(),
                });
            }
        }
        let membership = Membership {
            fleet,
            handler,
            host,
            group,
            report,
            release_start: std::sync::Mutex::new(None),
            cluster: None,
        };
        let store = hosts_bucket(&membership.fleet).await?;
        membership.heartbeat(&store).await?;
        Ok(membership)
    }

    /// Reports `cluster`'s global names and singletons in the heartbeat from now on.
    pub fn with_cluster(mut self, cluster: Arc<crate::cluster::Cluster>) -> Membership {
        self.cluster = Some(cluster);
        self
    }

    /// The host's name in the fleet.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The host's status now.
    pub async fn status(&self) -> HostStatus {
        let view = self.handler.read_view();
        let root = view.root_supervisor.clone();
        let unhealthy = crate::watch::unhealthy_actors(root.clone()).await;
        let restarts = crate::watch::total_restarts(root).await;
        let restarts_since_release = {
            let mut start = self
                .release_start
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match start.as_ref() {
                Some((version, at)) if *version == view.current => restarts.saturating_sub(*at),
                _ => {
                    *start = Some((view.current.clone(), restarts));
                    0
                }
            }
        };
        let cluster = self
            .cluster
            .as_ref()
            .map(|cluster| cluster.report())
            .unwrap_or_default();
        HostStatus {
            host: self.host.clone(),
            group: self.group.clone(),
            current: view.current.clone(),
            permanent: view
                .releases
                .iter()
                .find(|release| release.status == ReleaseStatus::Permanent)
                .map(|release| release.version.clone()),
            releases: view
                .releases
                .iter()
                .map(|release| release.version.clone())
                .collect(),
            health: if unhealthy.is_empty() {
                Health::Healthy
            } else {
                Health::Unhealthy
            },
            unhealthy,
            restarts,
            restarts_since_release: Some(restarts_since_release),
            installing: self.handler.install_in_progress(),
            converge_error: self.report.error(),
            updated_ms: now_ms(),
            globals: cluster.globals,
            singletons: cluster.singletons,
        }
    }

    /// Writes the host's entry once.
    async fn heartbeat(&self, store: &async_nats::jetstream::kv::Store) -> Result<(), FleetError> {
        let status = self.status().await;
        let value = serde_json::to_vec(&status).expect("a host status serializes");
        store
            .put(format!("{HOST_KEY_PREFIX}{}", self.host), value.into())
            .await
            .map_err(|error| {
                FleetError::jetstream(
                    format!("heartbeat to {}", self.fleet.namespace.hosts_bucket()),
                    error,
                )
            })?;
        Ok(())
    }

    /// Renews the host's entry every [`HEARTBEAT_INTERVAL`], and whenever the convergence
    /// task asks ([`ConvergeReport::changed`]), until the task is dropped; failures are
    /// logged and retried.
    pub async fn run(self) {
        let mut store = None;
        let mut failing = false;
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = self.report.wait_for_change() => {}
            }
            if store.is_none() {
                store = hosts_bucket(&self.fleet).await.ok();
            }
            let result = match &store {
                Some(store) => self.heartbeat(store).await,
                None => Err(FleetError::InvalidName {
                    what: "bucket",
                    name: self.fleet.namespace.hosts_bucket(),
                }),
            };
            match result {
                Ok(()) => {
                    if failing {
                        tracing::info!(host = %self.host, "fleet heartbeat restored");
                        failing = false;
                    }
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(host = %self.host, "fleet heartbeat failed: {error}");
                        failing = true;
                    }
                    store = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_and_stable_per_root() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let name = default_host_name(first.path());
        assert!(valid_name(&name), "{name}");
        assert_eq!(name, default_host_name(first.path()));
        assert_ne!(name, default_host_name(second.path()));
    }

    #[test]
    fn statuses_round_trip_as_json() {
        let status = HostStatus {
            host: "a".into(),
            group: "web".into(),
            current: Version::new(1, 0, 0),
            permanent: Some(Version::new(1, 0, 0)),
            releases: vec![Version::new(1, 0, 0)],
            health: Health::Healthy,
            unhealthy: Vec::new(),
            restarts: 0,
            restarts_since_release: None,
            installing: false,
            converge_error: None,
            updated_ms: 1,
            globals: vec!["kv".into()],
            singletons: Vec::new(),
        };
        let text = serde_json::to_string(&status).unwrap();
        assert!(text.contains(r#""health":"healthy""#), "{text}");
        assert_eq!(serde_json::from_str::<HostStatus>(&text).unwrap(), status);
    }
}
