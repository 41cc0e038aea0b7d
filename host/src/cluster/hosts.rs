//! Which hosts of the cluster are up, and `HostUp`/`HostDown` to the actors that asked.
//!
//! SKELETON (issue 17, WP2): answers as a cluster of one host; the poll of the fleet's
//! heartbeat bucket is not written yet.

use super::ClusterNamespace;
use crate::fleet::{Fleet, FleetError};
use crate::runtime::{ActorRef, Runtime};
use std::sync::Arc;
use tokio::sync::broadcast;

/// A host of the cluster came or went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostChange {
    /// It joined (its first heartbeat in the group).
    Up(String),
    /// It died or left (its heartbeat expired or was deleted).
    Down(String),
}

/// The cluster's live hosts, as this host last read them. Cheap to clone.
#[derive(Clone)]
pub struct HostTracker {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    changes: broadcast::Sender<HostChange>,
}

impl HostTracker {
    /// Reads the group's members once and starts polling them every
    /// [`super::HOSTS_POLL`].
    pub async fn start(
        _fleet: &Fleet,
        _namespace: &ClusterNamespace,
        host: &str,
        _runtime: Runtime,
    ) -> Result<HostTracker, FleetError> {
        let (changes, _) = broadcast::channel(1024);
        Ok(HostTracker {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                changes,
            }),
        })
    }

    /// The live hosts, this one included, sorted.
    pub fn hosts(&self) -> Vec<String> {
        vec![self.inner.host.clone()]
    }

    /// Whether `host` was seen in the cluster and then lost (a host never seen is not
    /// down: it may be booting).
    pub fn is_down(&self, _host: &str) -> bool {
        false
    }

    /// Host changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HostChange> {
        self.inner.changes.subscribe()
    }

    /// Turns `HostUp`/`HostDown` info messages to `watcher` on or off.
    pub fn watch_hosts(&self, _watcher: &ActorRef, _on: bool) {}

    /// Stops polling.
    pub fn stop(&self) {}
}
