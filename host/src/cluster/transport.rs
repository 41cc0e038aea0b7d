//! Frames between hosts: casts, infos, calls and their replies, monitors and their
//! `down`, as NATS messages on the fleet's connection.
//!
//! SKELETON (issue 17, WP1): refuses every remote message as not found.

use super::ClusterNamespace;
use super::hosts::HostTracker;
use super::names::Names;
use crate::fleet::{Fleet, FleetError};
use crate::plugin::{SendKind, ServiceError};
use crate::runtime::{ActorRef, CallError, Runtime, Target};
use futures_util::future::BoxFuture;
use std::time::Duration;

/// This host's end of the cluster's messaging. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    runtime: Runtime,
}

impl Transport {
    /// Subscribes to this host's inbox, replies and refusals, and starts the writer.
    pub async fn start(
        _fleet: &Fleet,
        _namespace: &ClusterNamespace,
        _host: &str,
        runtime: Runtime,
        _hosts: HostTracker,
        _names: Names,
    ) -> Result<Transport, FleetError> {
        Ok(Transport { runtime })
    }

    /// Sends a cast or info message to `to` on another host.
    pub fn send(
        &self,
        _from: &str,
        to: &Target,
        _kind: SendKind,
        _message: Vec<u8>,
    ) -> Result<(), ServiceError> {
        Err(ServiceError::NotFound(to.to_string()))
    }

    /// Calls `to` on another host.
    pub fn call(
        &self,
        to: &Target,
        _request: Vec<u8>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, CallError>> {
        let to = to.to_string();
        Box::pin(async move { Err(CallError::NotFound(to)) })
    }

    /// Monitors `to` on another host for `watcher`; the monitor id.
    pub fn monitor(&self, _watcher: &ActorRef, _to: &Target) -> u64 {
        self.runtime.next_monitor_id()
    }

    /// Stops the writer and the subscriptions.
    pub fn stop(&self) {}
}
