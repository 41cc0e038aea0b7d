//! Which hosts of the cluster are up, and `HostUp`/`HostDown` to the actors that asked.
//!
//! Responsibility: [`HostTracker`] reads the fleet's hosts bucket (the heartbeats
//! `fleet::membership` writes every 2 s) every [`super::HOSTS_POLL`], keeps the hosts of
//! this host's group, and tells every change to the cluster's parts (a
//! [`broadcast`] of [`HostChange`]) and to the actors that turned host events on
//! (`abi::INFO_HOST_UP` / `abi::INFO_HOST_DOWN` with an encoded [`HostEvent`]).
//!
//! Invariants:
//! - This host is always a member; it never reports itself down.
//! - A host is a member while its entry is present and its revision changed within
//!   [`super::NAMES_TTL`] (the heartbeat TTL): an entry the server has not expired yet but
//!   that nobody renews is not a live host.
//! - A failed read changes nothing: a NATS outage makes nobody down (sends meanwhile are
//!   refused as unreachable by the transport, not as dead hosts).
//! - The first successful read only seeds the members; changes after it are events (as
//!   OTP's `monitor_nodes` reports changes, not the nodes already up).
//!
//! Tricky: expiry by `max_age` leaves no delete marker, so a KV watch never reports a dead
//! host; the bucket is polled instead, and re-opened after a failure (a server restarted
//! without its store has lost it).

use super::ClusterNamespace;
use crate::fleet::membership::{LISTING_TIMEOUT, hosts_bucket};
use crate::fleet::{Fleet, FleetError};
use crate::runtime::{ActorRef, Runtime, lock};
use futures_util::StreamExt as _;
use graft_plugin::{HostEvent, abi, codec};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// The key prefix of host entries in the fleet's hosts bucket.
const HOST_KEY_PREFIX: &str = "host.";

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
    group: String,
    fleet: Fleet,
    state: Mutex<State>,
    changes: broadcast::Sender<HostChange>,
    /// Actors that asked for host events.
    watchers: Mutex<Vec<ActorRef>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct State {
    /// Every entry of the group seen, with its revision and when that last changed.
    seen: BTreeMap<String, (u64, Instant)>,
    /// The members as of the last read (this host excluded).
    members: BTreeSet<String>,
    /// Hosts seen and then lost, until they come back.
    lost: BTreeSet<String>,
    /// Whether a read has succeeded yet.
    seeded: bool,
}

/// What the hosts bucket holds of a host (the rest of its `HostStatus` is the fleet's).
#[derive(serde::Deserialize)]
struct Entry {
    group: String,
}

impl HostTracker {
    /// Reads the group's members once (a failure is not fatal: the host may be the first
    /// in a fresh fleet, or the read is retried) and starts polling them every
    /// [`super::HOSTS_POLL`].
    pub async fn start(
        fleet: &Fleet,
        namespace: &ClusterNamespace,
        host: &str,
        _runtime: Runtime,
    ) -> Result<HostTracker, FleetError> {
        let (changes, _) = broadcast::channel(1024);
        let tracker = HostTracker {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                group: namespace.group().to_owned(),
                fleet: fleet.clone(),
                state: Mutex::new(State::default()),
                changes,
                watchers: Mutex::new(Vec::new()),
                task: Mutex::new(None),
            }),
        };
        let mut store = hosts_bucket(fleet).await.ok();
        if let Some(opened) = &store
            && let Ok(Ok(read)) = tokio::time::timeout(LISTING_TIMEOUT, tracker.read(opened)).await
        {
            tracker.apply(read);
        }
        let polling = tracker.clone();
        let task = tokio::spawn(async move {
            let mut interval = tokio::time::interval(super::HOSTS_POLL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if store.is_none() {
                    store = hosts_bucket(&polling.inner.fleet).await.ok();
                }
                let Some(opened) = &store else { continue };
                match tokio::time::timeout(LISTING_TIMEOUT, polling.read(opened))
                    .await
                    .unwrap_or_else(|elapsed| {
                        Err(FleetError::jetstream(
                            "listing the cluster's hosts",
                            elapsed,
                        ))
                    }) {
                    Ok(read) => polling.apply(read),
                    Err(error) => {
                        tracing::debug!(%error, "reading the cluster's hosts failed; nothing changes");
                        store = None;
                    }
                }
            }
        });
        *lock(&tracker.inner.task) = Some(task);
        Ok(tracker)
    }

    /// The group's entries now: host → revision.
    async fn read(
        &self,
        store: &async_nats::jetstream::kv::Store,
    ) -> Result<BTreeMap<String, u64>, FleetError> {
        let bucket = self.inner.fleet.namespace.hosts_bucket();
        let listing = |error: &dyn std::fmt::Display| FleetError::JetStream {
            action: format!("listing {bucket}"),
            source: error.to_string().into(),
        };
        let mut keys = store.keys().await.map_err(|error| listing(&error))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|error| listing(&error))?;
            if let Some(host) = key.strip_prefix(HOST_KEY_PREFIX) {
                names.push(host.to_owned());
            }
        }
        let mut entries = BTreeMap::new();
        for host in names {
            // An entry can expire (or be deleted) between the listing and the read.
            let entry = store
                .entry(format!("{HOST_KEY_PREFIX}{host}"))
                .await
                .map_err(|error| listing(&error))?;
            let Some(entry) = entry else { continue };
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                continue;
            }
            match serde_json::from_slice::<Entry>(&entry.value) {
                Ok(status) if status.group == self.inner.group => {
                    entries.insert(host, entry.revision);
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(%host, %error, "an undecodable host entry"),
            }
        }
        Ok(entries)
    }

    /// Takes a successful read in: the new members, and the changes to tell.
    fn apply(&self, read: BTreeMap<String, u64>) {
        let now = Instant::now();
        let changes = {
            let mut state = lock(&self.inner.state);
            let mut members = BTreeSet::new();
            for (host, revision) in &read {
                let changed = match state.seen.get(host) {
                    Some((seen, at)) if seen == revision => *at,
                    _ => now,
                };
                state.seen.insert(host.clone(), (*revision, changed));
                if *host != self.inner.host && now.duration_since(changed) < super::NAMES_TTL {
                    members.insert(host.clone());
                }
            }
            state.seen.retain(|host, _| read.contains_key(host));
            let mut changes = Vec::new();
            if state.seeded {
                for host in members.difference(&state.members) {
                    changes.push(HostChange::Up(host.clone()));
                }
                for host in state.members.difference(&members) {
                    changes.push(HostChange::Down(host.clone()));
                }
            }
            for change in &changes {
                match change {
                    HostChange::Up(host) => {
                        state.lost.remove(host);
                    }
                    HostChange::Down(host) => {
                        state.lost.insert(host.clone());
                    }
                }
            }
            state.members = members;
            state.seeded = true;
            changes
        };
        for change in changes {
            self.tell(change);
        }
    }

    /// Tells a change to the cluster's parts and to the actors that asked.
    fn tell(&self, change: HostChange) {
        match &change {
            HostChange::Up(host) => tracing::info!(%host, "host joined the cluster"),
            HostChange::Down(host) => tracing::warn!(%host, "host left the cluster (host down)"),
        }
        let (kind, event) = match &change {
            HostChange::Up(host) => (abi::INFO_HOST_UP, HostEvent::new(host.clone(), None)),
            HostChange::Down(host) => (
                abi::INFO_HOST_DOWN,
                HostEvent::new(host.clone(), Some("host down".to_owned())),
            ),
        };
        if let Ok(message) = codec::encode(&event) {
            lock(&self.inner.watchers)
                .retain(|watcher| watcher.deliver_info_uncounted(kind, message.clone()));
        }
        // No receiver is fine: nothing in the cluster waits on hosts yet.
        let _ = self.inner.changes.send(change);
    }

    /// The live hosts, this one included, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = lock(&self.inner.state).members.iter().cloned().collect();
        hosts.push(self.inner.host.clone());
        hosts.sort();
        hosts
    }

    /// Whether `host` was seen in the cluster and then lost (a host never seen is not
    /// down: it may be booting, its heartbeat starts after its boot).
    pub fn is_down(&self, host: &str) -> bool {
        host != self.inner.host && lock(&self.inner.state).lost.contains(host)
    }

    /// Host changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HostChange> {
        self.inner.changes.subscribe()
    }

    /// Turns `HostUp`/`HostDown` info messages to `watcher` on or off.
    pub fn watch_hosts(&self, watcher: &ActorRef, on: bool) {
        let mut watchers = lock(&self.inner.watchers);
        watchers.retain(|known| known != watcher && known.is_alive());
        if on {
            watchers.push(watcher.clone());
        }
    }

    /// Deletes this host's entry from the hosts bucket, so the other hosts see it leave at
    /// their next read instead of when its heartbeat expires. Call it after the heartbeat
    /// stopped.
    pub async fn leave(&self) {
        let key = format!("{HOST_KEY_PREFIX}{}", self.inner.host);
        match hosts_bucket(&self.inner.fleet).await {
            Ok(store) => {
                if let Err(error) = store.delete(&key).await {
                    tracing::debug!(%error, "deleting this host's entry failed; it expires");
                }
            }
            Err(error) => {
                tracing::debug!(%error, "the hosts bucket is unreachable; the entry expires")
            }
        }
    }

    /// Stops polling.
    pub fn stop(&self) {
        if let Some(task) = lock(&self.inner.task).take() {
            task.abort();
        }
    }
}
