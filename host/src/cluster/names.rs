//! Global names: registered cluster-wide by compare-and-swap in the names bucket,
//! refreshed while their actor lives, resolved to the host that holds them.
//!
//! SKELETON (issue 17, WP2): registers nothing on the server yet (a cluster of one).

use super::ClusterNamespace;
use super::hosts::HostTracker;
use crate::fleet::{Fleet, FleetError};
use crate::runtime::{ActorRef, GlobalError, ProcessId};
use futures_util::future::BoxFuture;

/// The cluster's global names, as this host knows them. Cheap to clone.
#[derive(Clone)]
pub struct Names {
    _hosts: HostTracker,
}

impl Names {
    /// Opens the names bucket and starts the refresh of this host's names.
    pub async fn start(
        _fleet: &Fleet,
        _namespace: &ClusterNamespace,
        _host: &str,
        hosts: HostTracker,
    ) -> Result<Names, FleetError> {
        Ok(Names { _hosts: hosts })
    }

    /// Registers `actor`'s name cluster-wide; `takeover` replaces another host's entry
    /// (a singleton whose lease this host holds).
    pub fn register(
        &self,
        _actor: &ActorRef,
        _takeover: bool,
    ) -> BoxFuture<'static, Result<(), GlobalError>> {
        Box::pin(async { Ok(()) })
    }

    /// Frees `name` if the process `id` still holds it; does not wait.
    pub fn unregister(&self, _name: &str, _id: ProcessId) {}

    /// The host holding `name`, from this host's directory (no server round trip).
    pub fn resolve(&self, _name: &str) -> Option<String> {
        None
    }

    /// The host holding `name`, read from the server.
    pub fn lookup(&self, _name: &str) -> BoxFuture<'static, Option<String>> {
        Box::pin(async { None })
    }

    /// Forgets what the directory knows of `name` (its host said it has no such actor).
    pub fn evict(&self, _name: &str) {}

    /// The global names this host holds, sorted.
    pub fn owned(&self) -> Vec<String> {
        Vec::new()
    }

    /// Deletes this host's names (after its tree stopped) and stops the refresh.
    pub async fn leave(&self) {}
}
