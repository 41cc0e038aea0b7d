//! The seam between the runtime and a cluster: what the runtime asks of the hosts it
//! does not run on (messages, calls and monitors to actors elsewhere, global names,
//! singleton placement). `crate::cluster::Cluster` implements [`Remote`] on NATS; a
//! runtime without one is a cluster of one host.
//!
//! Invariants:
//! - A local registration wins: a name this runtime has registered is reached locally,
//!   without the cluster, also when it is a global name (its owner is this host).
//! - A remote message is refused, reported or delivered, never dropped unreported: every
//!   method returns the error the sender must hear of (unknown name, dead host, cluster
//!   unreachable), and what can only fail after the send is logged and counted by the
//!   implementation.
//!
//! What is tricky: the runtime calls [`Remote::send`] and [`Remote::monitor`] from
//! synchronous plugin callbacks, so they must not block for long; [`Remote::call`] and
//! [`Remote::register_global`] return futures the caller blocks on (a callback) or awaits.

use super::{ActorRef, CallError, ProcessId};
use crate::plugin::{SendKind, ServiceError};
use futures_util::future::BoxFuture;
use std::time::Duration;
use thiserror::Error;

/// Where a message goes: a name, optionally qualified with the host it runs on
/// (`"kv"` or `"kv@host-a"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// The actor's registered (local or global) name.
    pub name: String,
    /// The host it runs on, if the sender named one.
    pub host: Option<String>,
}

impl Target {
    /// Parses `name` or `name@host`, splitting at the last `@` (a name never holds one).
    pub fn parse(text: &str) -> Target {
        match text.rsplit_once('@') {
            Some((name, host)) if !name.is_empty() && !host.is_empty() => Target {
                name: name.to_owned(),
                host: Some(host.to_owned()),
            },
            _ => Target {
                name: text.to_owned(),
                host: None,
            },
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) => write!(formatter, "{}@{host}", self.name),
            None => formatter.write_str(&self.name),
        }
    }
}

/// Whether an actor's name is registered cluster-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Global {
    /// Only on this host (the default).
    #[default]
    No,
    /// Cluster-wide: a second registration anywhere fails ("already started on host H").
    Yes,
    /// Cluster-wide, by the owner of a singleton's lease: the lease, not the name, decides,
    /// so a dead owner's entry that outlives its lease is taken over.
    Singleton,
}

/// A global name could not be registered.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GlobalError {
    /// Another host holds the name (OTP's `{already_started, Pid}`).
    #[error("global name {name:?} is already started on host {host}")]
    Taken {
        /// The name.
        name: String,
        /// The host that holds it.
        host: String,
    },
    /// The name cannot be global (an unnamed actor, or a name that is not a valid key).
    #[error("global name {name:?}: {why}")]
    Invalid {
        /// The name.
        name: String,
        /// Why.
        why: String,
    },
    /// The cluster's server could not be reached to register it.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
}

/// What a runtime asks of the cluster it belongs to (see the module docs).
pub trait Remote: Send + Sync + 'static {
    /// This host's name in the cluster.
    fn this_host(&self) -> &str;

    /// The cluster's live hosts, this one included, sorted.
    fn hosts(&self) -> Vec<String>;

    /// Turns `HostUp`/`HostDown` info messages to `watcher` on or off (OTP's
    /// `monitor_node`/`net_kernel:monitor_nodes`).
    fn watch_hosts(&self, watcher: &ActorRef, on: bool);

    /// Sends a cast or info message to an actor on another host (or a global name this
    /// host does not hold). `from` is the sender's label.
    fn send(
        &self,
        from: &str,
        to: &Target,
        kind: SendKind,
        message: Vec<u8>,
    ) -> Result<(), ServiceError>;

    /// Calls an actor on another host, waiting at most `timeout` (a late reply is dropped).
    fn call(
        &self,
        to: &Target,
        request: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, CallError>>;

    /// `watcher` gets a `down` info message when the actor `to` exits, or with reason
    /// `host down` when its host does (`noproc` at once when it does not exist). Returns
    /// the monitor id (from [`super::Runtime::next_monitor_id`]).
    fn monitor(&self, watcher: &ActorRef, to: &Target) -> u64;

    /// Registers `actor`'s name cluster-wide; `takeover` for a singleton whose lease this
    /// host holds.
    fn register_global(
        &self,
        actor: &ActorRef,
        takeover: bool,
    ) -> BoxFuture<'static, Result<(), GlobalError>>;

    /// Frees a global name of the process `id` (never a successor's); does not wait.
    fn unregister_global(&self, name: &str, id: ProcessId);

    /// Whether the singleton child `child` of supervisor `supervisor` should start here
    /// now (this host holds its lease); `false` holds it in standby, and the cluster
    /// restarts it through its supervisor when this host wins the lease later.
    fn singleton_gate(&self, supervisor: &str, child: &str) -> BoxFuture<'static, bool>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_a_name_optionally_at_a_host() {
        assert_eq!(
            Target::parse("kv"),
            Target {
                name: "kv".into(),
                host: None
            }
        );
        let qualified = Target::parse("kv@host-a");
        assert_eq!(qualified.name, "kv");
        assert_eq!(qualified.host.as_deref(), Some("host-a"));
        assert_eq!(qualified.to_string(), "kv@host-a");
        assert_eq!(Target::parse("@x").host, None);
        assert_eq!(Target::parse("x@").host, None);
    }
}
