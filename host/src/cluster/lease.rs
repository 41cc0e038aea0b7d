//! Singleton leases: which host runs a `placement = "singleton"` child, by
//! compare-and-swap on a key of the leases bucket that expires unless renewed; the owner
//! stops its copy when it cannot renew.
//!
//! SKELETON (issue 17, WP3): every gate opens (a cluster of one).

use super::ClusterNamespace;
use crate::fleet::{Fleet, FleetError};
use crate::runtime::Runtime;
use futures_util::future::BoxFuture;

/// This host's singleton leases. Cheap to clone.
#[derive(Clone)]
pub struct Leases {}

impl Leases {
    /// Opens the leases bucket.
    pub async fn start(
        _fleet: &Fleet,
        _namespace: &ClusterNamespace,
        _host: &str,
        _runtime: Runtime,
    ) -> Result<Leases, FleetError> {
        Ok(Leases {})
    }

    /// Whether the singleton child `child` of supervisor `supervisor` starts here now.
    pub fn gate(&self, _supervisor: &str, _child: &str) -> BoxFuture<'static, bool> {
        Box::pin(async { true })
    }

    /// The singletons whose lease this host holds, sorted.
    pub fn owned(&self) -> Vec<String> {
        Vec::new()
    }

    /// Frees this host's leases (after its tree stopped) and stops their keepers.
    pub async fn leave(&self) {}
}
