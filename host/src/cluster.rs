//! Clusters: the hosts of one fleet group on the fleet's NATS connection, messaging each
//! other's actors, sharing global names, and running singleton children on exactly one
//! of them.
//!
//! Responsibility: the cluster's names on the server ([`ClusterNamespace`]: subjects and
//! buckets, all namespaced by fleet and group), its timing constants, and [`Cluster`],
//! which implements the runtime's [`Remote`] seam by delegating to its parts:
//! - [`transport`]: frames between hosts (casts, infos, calls and replies, monitors and
//!   their `down`), one writer task and one inbox subscription per host.
//! - [`hosts`]: which hosts of the group are up (polled from the fleet's heartbeat bucket),
//!   `HostUp`/`HostDown` to actors that asked.
//! - [`names`]: global names (`kv.create` on a bucket whose entries expire unless refreshed).
//! - [`lease`]: singleton leases (`kv.create` + renewals; the owner fences itself).
//!
//! Invariants:
//! - All cluster transport is NATS core publish/subscribe and JetStream key-value
//!   compare-and-swap on the fleet's connection; nothing here invents a transport or a
//!   consensus.
//! - A NATS outage declares no host down and changes no running actor, except that a
//!   singleton's owner stops its copy when it cannot renew its lease.
//!
//! Tricky: `Cluster` holds the `Runtime` and the runtime holds the cluster (as its
//! `Remote`): a cycle, harmless for a host process; [`Cluster::leave`] stops the cluster's
//! tasks so in-process tests end cleanly.

pub mod hosts;
pub mod lease;
pub mod names;
pub mod transport;

use crate::fleet::{Fleet, FleetError, valid_name};
use crate::plugin::{SendKind, ServiceError};
use crate::runtime::{ActorRef, CallError, GlobalError, ProcessId, Remote, Runtime, Target};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// How often a host re-reads the group's members from the heartbeat bucket.
pub const HOSTS_POLL: Duration = Duration::from_secs(1);
/// How often a host refreshes the global names it holds (the fleet's heartbeat interval).
pub const NAMES_REFRESH: Duration = crate::fleet::membership::HEARTBEAT_INTERVAL;
/// How long a global name outlives its host's last refresh (the names bucket's `max_age`,
/// the fleet's heartbeat TTL).
pub const NAMES_TTL: Duration = crate::fleet::membership::HEARTBEAT_TTL;
/// How long a singleton's lease outlives its owner's last renewal (the leases bucket's
/// `max_age`).
pub const LEASE_TTL: Duration = Duration::from_secs(6);
/// How often the owner renews a singleton's lease.
pub const LEASE_RENEW: Duration = Duration::from_secs(1);
/// An owner that has not renewed for this long (from the send of its last successful
/// renewal) stops its singleton.
pub const FENCE_STOP: Duration = Duration::from_millis(3_500);
/// … and kills it if it still runs this long after that renewal.
pub const FENCE_KILL: Duration = Duration::from_secs(5);
/// How often a standby tries to take a singleton's lease.
pub const STANDBY_POLL: Duration = Duration::from_millis(250);

/// A cluster's names on the server: subjects and buckets, namespaced by fleet and group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNamespace {
    fleet: String,
    group: String,
}

impl ClusterNamespace {
    /// The namespace of group `group` of `fleet`.
    pub fn new(
        fleet: &crate::fleet::Namespace,
        group: &str,
    ) -> Result<ClusterNamespace, FleetError> {
        if !valid_name(group) {
            return Err(FleetError::InvalidName {
                what: "group",
                name: group.to_owned(),
            });
        }
        Ok(ClusterNamespace {
            fleet: fleet.fleet().to_owned(),
            group: group.to_owned(),
        })
    }

    /// The group (the cluster's name in its fleet).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Every subject of the cluster starts with this (`graft.<fleet>.<group>`).
    pub fn subject_prefix(&self) -> String {
        format!("graft.{}.{}", self.fleet, self.group)
    }

    /// Where frames to `host` go.
    pub fn inbox(&self, host: &str) -> String {
        format!("{}.host.{host}.in", self.subject_prefix())
    }

    /// Where the reply to `host`'s call `call` goes.
    pub fn reply_subject(&self, host: &str, call: u64) -> String {
        format!("{}.host.{host}.reply.{call}", self.subject_prefix())
    }

    /// Every reply to `host`'s calls.
    pub fn replies_wildcard(&self, host: &str) -> String {
        format!("{}.host.{host}.reply.*", self.subject_prefix())
    }

    /// Where a refusal of a message from `from` to host `to` goes.
    pub fn nak_subject(&self, from: &str, to: &str) -> String {
        format!("{}.host.{from}.nak.{to}", self.subject_prefix())
    }

    /// Every refusal of `host`'s messages.
    pub fn naks_wildcard(&self, host: &str) -> String {
        format!("{}.host.{host}.nak.*", self.subject_prefix())
    }

    /// The bucket of global names (key `name.<name>`).
    pub fn names_bucket(&self) -> String {
        format!("graft_{}_{}_names", self.fleet, self.group)
    }

    /// The bucket of singleton leases (key `singleton.<child>`).
    pub fn leases_bucket(&self) -> String {
        format!("graft_{}_{}_leases", self.fleet, self.group)
    }
}

/// What this host holds in the cluster, for its heartbeat and `graft fleet status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterReport {
    /// The global names registered here, sorted.
    pub globals: Vec<String>,
    /// The singletons whose lease this host holds, sorted.
    pub singletons: Vec<String>,
}

/// This host's membership of a cluster: attached to its runtime as its [`Remote`].
pub struct Cluster {
    namespace: ClusterNamespace,
    host: String,
    hosts: hosts::HostTracker,
    names: names::Names,
    leases: lease::Leases,
    transport: transport::Transport,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Joins group `group` of `fleet`'s cluster as `host`: opens the cluster's buckets,
    /// subscribes to this host's inbox, reads the members once, starts the cluster's tasks
    /// and attaches the cluster to `runtime`. Call it before anything global starts (before
    /// the release boots).
    pub async fn connect(
        fleet: Fleet,
        group: &str,
        host: &str,
        runtime: Runtime,
    ) -> Result<Arc<Cluster>, FleetError> {
        let namespace = ClusterNamespace::new(&fleet.namespace, group)?;
        if !valid_name(host) {
            return Err(FleetError::InvalidName {
                what: "host name",
                name: host.to_owned(),
            });
        }
        let hosts = hosts::HostTracker::start(&fleet, &namespace, host, runtime.clone()).await?;
        let names = names::Names::start(&fleet, &namespace, host, hosts.clone()).await?;
        let leases = lease::Leases::start(&fleet, &namespace, host, runtime.clone()).await?;
        let transport = transport::Transport::start(
            &fleet,
            &namespace,
            host,
            runtime.clone(),
            hosts.clone(),
            names.clone(),
        )
        .await?;
        let cluster = Arc::new(Cluster {
            namespace,
            host: host.to_owned(),
            hosts,
            names,
            leases,
            transport,
        });
        runtime.set_remote(Arc::clone(&cluster) as Arc<dyn Remote>);
        Ok(cluster)
    }

    /// The cluster's names on the server.
    pub fn namespace(&self) -> &ClusterNamespace {
        &self.namespace
    }

    /// Leaves the cluster after the supervision tree stopped: frees this host's leases
    /// (a standby takes over at once) and global names, deletes its entry from the hosts
    /// bucket (the others see it leave at their next read), and stops the cluster's tasks.
    pub async fn leave(&self) {
        self.leases.leave().await;
        self.names.leave().await;
        self.transport.stop();
        self.hosts.stop();
        self.hosts.leave().await;
    }

    /// The global names and singleton leases this host holds.
    pub fn report(&self) -> ClusterReport {
        ClusterReport {
            globals: self.names.owned(),
            singletons: self.leases.owned(),
        }
    }
}

impl Remote for Cluster {
    fn this_host(&self) -> &str {
        &self.host
    }

    fn hosts(&self) -> Vec<String> {
        self.hosts.hosts()
    }

    fn watch_hosts(&self, watcher: &ActorRef, on: bool) {
        self.hosts.watch_hosts(watcher, on);
    }

    fn send(
        &self,
        from: &str,
        to: &Target,
        kind: SendKind,
        message: Vec<u8>,
    ) -> Result<(), ServiceError> {
        self.transport.send(from, to, kind, message)
    }

    fn call(
        &self,
        to: &Target,
        request: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, CallError>> {
        self.transport.call(to, request, timeout)
    }

    fn monitor(&self, watcher: &ActorRef, to: &Target) -> u64 {
        self.transport.monitor(watcher, to)
    }

    fn register_global(
        &self,
        actor: &ActorRef,
        takeover: bool,
    ) -> BoxFuture<'static, Result<(), GlobalError>> {
        self.names.register(actor, takeover)
    }

    fn unregister_global(&self, name: &str, id: ProcessId) {
        self.names.unregister(name, id);
    }

    fn singleton_gate(&self, supervisor: &str, child: &str) -> BoxFuture<'static, bool> {
        self.leases.gate(supervisor, child)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_buckets_are_namespaced_by_fleet_and_group() {
        let fleet = crate::fleet::Namespace::new("prod").unwrap();
        let namespace = ClusterNamespace::new(&fleet, "web").unwrap();
        assert_eq!(namespace.inbox("a"), "graft.prod.web.host.a.in");
        assert_eq!(
            namespace.reply_subject("a", 7),
            "graft.prod.web.host.a.reply.7"
        );
        assert_eq!(
            namespace.nak_subject("a", "b"),
            "graft.prod.web.host.a.nak.b"
        );
        assert_eq!(namespace.names_bucket(), "graft_prod_web_names");
        assert_eq!(namespace.leases_bucket(), "graft_prod_web_leases");
        assert!(ClusterNamespace::new(&fleet, "a.b").is_err());
    }
}
