//! Global names: registered cluster-wide by compare-and-swap in the names bucket,
//! refreshed while their actor lives, resolved to the host that holds them.
//!
//! Responsibility: [`Names::register`] takes `name.<name>` in `graft_<fleet>_<group>_names`
//! with `kv.create`, which succeeds only where the key is absent; the entry ([`GlobalEntry`])
//! names the host. A refresh task renews every owned name each [`super::NAMES_REFRESH`] by
//! `kv.update` over the revision it last wrote (the bucket's `max_age`,
//! [`super::NAMES_TTL`], forgets a name nobody renews: a dead host's), and reads the whole
//! bucket into this host's directory, which [`Names::resolve`] answers from.
//!
//! Invariants:
//! - A name is held by one host: a second `create` fails, and a refusal names the holder
//!   ("already started on host H", OTP's `{already_started, Pid}`). The same host may take
//!   its own stale entry back (a restarted actor, or this host's previous run: host names are
//!   stable per root), and a singleton's new lease holder takes over the dead holder's entry
//!   (`takeover`: the lease, not the name, decides).
//! - A name is freed only by the process that holds it: the delete names the revision this
//!   host wrote, so it never deletes a successor's entry.
//! - A renewal that finds another host's entry means this host lost the name while it could
//!   not renew (a partition): its actor is killed (`global name N taken by host H`), as OTP's
//!   `global` kills one of two clashing registrations. A renewal that finds no entry (a
//!   server restarted without its store) creates it again, so names come back.
//! - A server that cannot be reached changes nothing: the names are kept and renewed later.
//!
//! Tricky: `unregister` is called from an actor's exit path, which must not wait on NATS;
//! it only queues the delete.

use super::ClusterNamespace;
use super::hosts::{HostChange, HostTracker};
use crate::fleet::{Fleet, FleetError, now_ms, valid_name};
use crate::runtime::{ActorRef, GlobalError, ProcessId, lock};
use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The key prefix of names in the names bucket.
const NAME_KEY_PREFIX: &str = "name.";

/// How long a registration waits for the server.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one attempt of a registration may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// The pause between two attempts of a registration.
const ATTEMPT_PAUSE: Duration = Duration::from_millis(250);

/// What the names bucket holds for a global name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalEntry {
    /// The host that holds the name.
    pub host: String,
    /// The actor's label.
    pub actor: String,
    /// Its process id on that host.
    pub id: u64,
    /// When it registered (milliseconds since the Unix epoch, the host's clock).
    pub registered_ms: u64,
}

/// A name this host holds.
struct Owned {
    actor: ActorRef,
    revision: u64,
}

/// The cluster's global names, as this host knows them. Cheap to clone.
#[derive(Clone)]
pub struct Names {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    fleet: Fleet,
    bucket: String,
    store: Mutex<Option<Store>>,
    owned: Mutex<HashMap<String, Owned>>,
    /// Name → host, from the last read of the bucket and the lookups since.
    directory: Mutex<HashMap<String, String>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn key(name: &str) -> String {
    format!("{NAME_KEY_PREFIX}{name}")
}

impl Names {
    /// Opens the names bucket (later, if the server cannot be reached now) and starts the
    /// refresh of this host's names and of its directory.
    pub async fn start(
        fleet: &Fleet,
        namespace: &ClusterNamespace,
        host: &str,
        hosts: HostTracker,
    ) -> Result<Names, FleetError> {
        let names = Names {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                fleet: fleet.clone(),
                bucket: namespace.names_bucket(),
                store: Mutex::new(None),
                owned: Mutex::new(HashMap::new()),
                directory: Mutex::new(HashMap::new()),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let store = names.store().await?;
        names.read_directory(&store).await;
        let refreshing = names.clone();
        let refresh = tokio::spawn(async move {
            let mut interval = tokio::time::interval(super::NAMES_REFRESH);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                refreshing.refresh().await;
            }
        });
        let purging = names.clone();
        let mut changes = hosts.subscribe();
        let purge = tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(HostChange::Down(host)) => {
                        lock(&purging.inner.directory).retain(|_, holder| *holder != host);
                    }
                    Ok(HostChange::Up(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        lock(&names.inner.tasks).extend([refresh, purge]);
        Ok(names)
    }

    /// The names bucket, opened (or created) on first use and after a failure.
    async fn store(&self) -> Result<Store, FleetError> {
        if let Some(store) = lock(&self.inner.store).clone() {
            return Ok(store);
        }
        let store = self
            .inner
            .fleet
            .bucket(
                &self.inner.bucket,
                "graft: the cluster's global names (entries expire unless renewed)",
                1,
                super::NAMES_TTL,
            )
            .await?;
        *lock(&self.inner.store) = Some(store.clone());
        Ok(store)
    }

    /// Forgets the opened bucket after a failure (the server may have lost it).
    fn reopen_later(&self) {
        *lock(&self.inner.store) = None;
    }

    /// Registers `actor`'s name cluster-wide; `takeover` replaces another host's entry
    /// (a singleton whose lease this host holds).
    pub fn register(
        &self,
        actor: &ActorRef,
        takeover: bool,
    ) -> BoxFuture<'static, Result<(), GlobalError>> {
        let names = self.clone();
        let actor = actor.clone();
        Box::pin(async move {
            let Some(name) = actor.name().map(str::to_owned) else {
                return Err(GlobalError::Invalid {
                    name: actor.label(),
                    why: "an unnamed actor cannot be global".to_owned(),
                });
            };
            if !valid_name(&name) {
                return Err(GlobalError::Invalid {
                    name,
                    why: "a global name is 1 to 64 of A-Z, a-z, 0-9, '_' and '-'".to_owned(),
                });
            }
            // Attempts of their own, each bounded: a create into a bucket the server lost
            // waits for an acknowledgement that never comes, and the next attempt opens
            // the bucket again (creating it).
            let deadline = tokio::time::Instant::now() + REGISTER_TIMEOUT;
            loop {
                let attempt =
                    tokio::time::timeout(ATTEMPT_TIMEOUT, names.take(&name, &actor, takeover))
                        .await;
                let why = match attempt {
                    Ok(Err(GlobalError::Unavailable(why))) => why,
                    Ok(result) => return result,
                    Err(_) => format!("a request took longer than {ATTEMPT_TIMEOUT:?}"),
                };
                names.reopen_later();
                if tokio::time::Instant::now() + ATTEMPT_PAUSE + ATTEMPT_TIMEOUT > deadline {
                    return Err(GlobalError::Unavailable(format!(
                        "registering {name:?} failed for {REGISTER_TIMEOUT:?}: {why}"
                    )));
                }
                tokio::time::sleep(ATTEMPT_PAUSE).await;
            }
        })
    }

    fn entry_for(&self, actor: &ActorRef) -> Vec<u8> {
        let entry = GlobalEntry {
            host: self.inner.host.clone(),
            actor: actor.label(),
            id: actor.id().0,
            registered_ms: now_ms(),
        };
        serde_json::to_vec(&entry).unwrap_or_default()
    }

    async fn take(&self, name: &str, actor: &ActorRef, takeover: bool) -> Result<(), GlobalError> {
        let unavailable =
            |error: &dyn std::fmt::Display| GlobalError::Unavailable(error.to_string());
        let store = self.store().await.map_err(|error| unavailable(&error))?;
        let value = self.entry_for(actor);
        let revision = match store.create(key(name), value.clone().into()).await {
            Ok(revision) => revision,
            Err(error) if error.kind() == CreateErrorKind::AlreadyExists => {
                let current = store
                    .entry(key(name))
                    .await
                    .map_err(|error| unavailable(&error))?;
                let holder = current
                    .as_ref()
                    .filter(|entry| entry.operation == Operation::Put)
                    .and_then(|entry| serde_json::from_slice::<GlobalEntry>(&entry.value).ok());
                match (current, holder) {
                    (Some(current), Some(holder)) if holder.host == self.inner.host || takeover => {
                        if holder.host != self.inner.host {
                            tracing::info!(name, from = %holder.host, "taking over the global name of a singleton whose lease this host holds");
                        }
                        store
                            .update(key(name), value.into(), current.revision)
                            .await
                            .map_err(|_| GlobalError::Taken {
                                name: name.to_owned(),
                                host: holder.host.clone(),
                            })?
                    }
                    (_, Some(holder)) => {
                        return Err(GlobalError::Taken {
                            name: name.to_owned(),
                            host: holder.host,
                        });
                    }
                    // Deleted or expired between the two reads: try once more.
                    _ => store
                        .create(key(name), value.into())
                        .await
                        .map_err(|error| unavailable(&error))?,
                }
            }
            Err(error) => {
                self.reopen_later();
                return Err(unavailable(&error));
            }
        };
        lock(&self.inner.owned).insert(
            name.to_owned(),
            Owned {
                actor: actor.clone(),
                revision,
            },
        );
        lock(&self.inner.directory).insert(name.to_owned(), self.inner.host.clone());
        tracing::info!(name, "registered a global name");
        Ok(())
    }

    /// Frees `name` if the process `id` still holds it; does not wait.
    pub fn unregister(&self, name: &str, id: ProcessId) {
        let owned = {
            let mut owned = lock(&self.inner.owned);
            match owned.get(name) {
                Some(entry) if entry.actor.id() == id => owned.remove(name),
                _ => None,
            }
        };
        let Some(owned) = owned else { return };
        lock(&self.inner.directory).remove(name);
        let names = self.clone();
        let name = name.to_owned();
        tokio::spawn(async move {
            names.delete(&name, owned.revision).await;
        });
    }

    /// Deletes `name` if the entry is still the one this host wrote at `revision`.
    async fn delete(&self, name: &str, revision: u64) {
        let Ok(store) = self.store().await else {
            return;
        };
        if let Err(error) = store
            .delete_expect_revision(key(name), Some(revision))
            .await
        {
            tracing::debug!(name, %error, "the global name was not deleted (a successor's, or it expires)");
        }
    }

    /// Renews every owned name and reads the directory again.
    async fn refresh(&self) {
        let store = match self.store().await {
            Ok(store) => store,
            Err(error) => {
                tracing::debug!(%error, "the names bucket is unreachable; names are kept");
                return;
            }
        };
        let owned: Vec<(String, ActorRef, u64)> = lock(&self.inner.owned)
            .iter()
            .map(|(name, owned)| (name.clone(), owned.actor.clone(), owned.revision))
            .collect();
        for (name, actor, revision) in owned {
            if !actor.is_alive() {
                continue;
            }
            let value = self.entry_for(&actor);
            let renewed = match store
                .update(key(&name), value.clone().into(), revision)
                .await
            {
                Ok(revision) => Some(revision),
                Err(error)
                    if error.kind()
                        == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision =>
                {
                    self.recover(&store, &name, &actor, value).await
                }
                Err(error) => {
                    tracing::debug!(name, %error, "renewing a global name failed; retried");
                    self.reopen_later();
                    return;
                }
            };
            let mut owned = lock(&self.inner.owned);
            match (renewed, owned.get_mut(&name)) {
                (Some(revision), Some(entry)) if entry.actor == actor => entry.revision = revision,
                (None, Some(entry)) if entry.actor == actor => {
                    owned.remove(&name);
                }
                _ => {}
            }
        }
        self.read_directory(&store).await;
    }

    /// A renewal was refused: the entry is gone (create it again) or another host's (this
    /// host lost the name: kill its actor). The new revision, or `None` if lost.
    async fn recover(
        &self,
        store: &Store,
        name: &str,
        actor: &ActorRef,
        value: Vec<u8>,
    ) -> Option<u64> {
        let current = store.entry(key(name)).await.ok()?;
        let holder = current
            .as_ref()
            .filter(|entry| entry.operation == Operation::Put)
            .and_then(|entry| serde_json::from_slice::<GlobalEntry>(&entry.value).ok());
        match (current, holder) {
            (Some(current), Some(holder)) if holder.host == self.inner.host => store
                .update(key(name), value.into(), current.revision)
                .await
                .ok(),
            (_, Some(holder)) => {
                let reason = format!("global name {name} taken by host {}", holder.host);
                tracing::error!(name, host = %holder.host, "this host lost a global name while it could not renew it; stopping its actor");
                actor.kill_with(graft_plugin::StopReason::Error(reason));
                None
            }
            _ => {
                tracing::info!(
                    name,
                    "the global name was gone from the server; registering it again"
                );
                store.create(key(name), value.into()).await.ok()
            }
        }
    }

    /// Reads every name of the bucket into the directory (bounded: a listing that hangs
    /// leaves the directory as it was).
    async fn read_directory(&self, store: &Store) {
        let _ = tokio::time::timeout(
            crate::fleet::membership::LISTING_TIMEOUT,
            self.read_directory_unbounded(store),
        )
        .await;
    }

    async fn read_directory_unbounded(&self, store: &Store) {
        let Ok(mut keys) = store.keys().await else {
            return;
        };
        let mut names = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            if let Some(name) = key.strip_prefix(NAME_KEY_PREFIX) {
                names.push(name.to_owned());
            }
        }
        let mut directory = BTreeMap::new();
        for name in names {
            if let Ok(Some(value)) = store.get(key(&name)).await
                && let Ok(entry) = serde_json::from_slice::<GlobalEntry>(&value)
            {
                directory.insert(name, entry.host);
            }
        }
        let mut known = lock(&self.inner.directory);
        known.clear();
        known.extend(directory);
        for name in lock(&self.inner.owned).keys() {
            known.insert(name.clone(), self.inner.host.clone());
        }
    }

    /// The host holding `name`, from this host's directory (no server round trip).
    pub fn resolve(&self, name: &str) -> Option<String> {
        lock(&self.inner.directory).get(name).cloned()
    }

    /// The host holding `name`, read from the server.
    pub fn lookup(&self, name: &str) -> BoxFuture<'static, Option<String>> {
        let names = self.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let store = names.store().await.ok()?;
            let value = store.get(key(&name)).await.ok()??;
            let entry = serde_json::from_slice::<GlobalEntry>(&value).ok()?;
            lock(&names.inner.directory).insert(name, entry.host.clone());
            Some(entry.host)
        })
    }

    /// Forgets what the directory knows of `name` (its host said it has no such actor).
    pub fn evict(&self, name: &str) {
        lock(&self.inner.directory).remove(name);
    }

    /// The global names this host holds, sorted.
    pub fn owned(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.inner.owned).keys().cloned().collect();
        names.sort();
        names
    }

    /// Deletes this host's names (after its tree stopped) and stops the refresh.
    pub async fn leave(&self) {
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        let owned: Vec<(String, u64)> = lock(&self.inner.owned)
            .drain()
            .map(|(name, owned)| (name, owned.revision))
            .collect();
        for (name, revision) in owned {
            self.delete(&name, revision).await;
        }
    }
}
