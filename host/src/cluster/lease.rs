//! Singleton leases: which host runs a `placement = "singleton"` child, by
//! compare-and-swap on a key of the leases bucket that expires unless renewed; the owner
//! stops its copy when it cannot renew.
//!
//! Responsibility: one keeper task per (supervisor, child), created by the first
//! [`Leases::gate`] call (the supervisor asks it before starting the child). The keeper is
//! either a standby, trying `kv.create("singleton.<child>")` every [`STANDBY_POLL`] and, on
//! winning, starting the held child again through its supervisor (`restart_child`), or the
//! owner, renewing with `update(key, entry, revision)` every [`LEASE_RENEW`].
//!
//! Invariants:
//! - The gate answers from the keeper's state only (owner = start), never waiting on the
//!   keeper: the keeper's `restart_child` makes the supervisor ask the gate again.
//! - Fencing: an owner whose last *successful* renewal was sent [`FENCE_STOP`] ago (or
//!   whose renewal is refused: someone else's entry, or the key gone) becomes a standby
//!   and stops its copy (`terminate_child`: orderly, the spec stays, no restart), and kills
//!   it ([`ActorRef::kill_with`]) if it still lives [`FENCE_KILL`] after that renewal's send.
//!   The server stored that renewal after its send, so the lease cannot expire before
//!   `send + LEASE_TTL`: the copy is gone ≥ 1 s before any standby can win.
//! - Renewals never wait on the supervisor, an install or an actor callback: stops, kills
//!   and restarts run in tasks of their own; every KV request has a timeout.
//! - A standby does not try to win while its own fencing task still runs.
//! - A child an install deleted from its supervisor frees its lease (checked every
//!   [`SPEC_CHECK`] beside the keeper), so a host whose release still has it takes over.
//!
//! - Quarantine: a host that wins a lease in a bucket younger than [`FENCE_KILL`] (server
//!   times: the bucket's creation and the lease entry's) starts its copy only once the
//!   bucket is that old. A young bucket may replace one the server lost (restarted without
//!   its store); an owner of the lost bucket, cut off from the server then, made its last
//!   good renewal before the loss, so its fence has killed its copy by that time. The cost
//!   is that a new cluster's singletons start up to 5 s after its first host.
//!
//! Tricky: expiry (the bucket's `max_age`) leaves no delete marker and is invisible to
//! watches, so a standby polls with `create`. After a server restart that lost its store,
//! renewals fail and the copy is fenced (the safe side); a failed `create` opens the bucket
//! again (creating it), and the first standby to try wins it, then waits out the
//! quarantine.

use super::{ClusterNamespace, FENCE_KILL, FENCE_STOP, LEASE_RENEW, LEASE_TTL, STANDBY_POLL};
use crate::fleet::{Fleet, FleetError, now_ms};
use crate::runtime::{ActorRef, Runtime};
use crate::supervisor::{ChildKey, SupervisorError};
use async_nats::jetstream::kv;
use futures_util::future::BoxFuture;
use graft_plugin::StopReason;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long one request to the leases bucket may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// The value of a lease key: who holds it, since when, last renewed when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    /// The owner's host name.
    pub host: String,
    /// When the owner acquired the lease (ms since the Unix epoch).
    pub acquired_ms: u64,
    /// When the owner last renewed it (ms since the Unix epoch).
    #[serde(default)]
    pub renewed_ms: u64,
}

/// What an owner does after a renewal attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Still the owner.
    Keep,
    /// Stop the copy now (lease refused, or the fence deadline passed).
    Fence,
}

/// The fencing rule: an owner whose last good renewal was sent `since_ok` ago keeps the
/// lease only while that is below [`FENCE_STOP`]; a refused renewal fences at once.
fn verdict(refused: bool, since_ok: Duration) -> Verdict {
    if refused || since_ok >= FENCE_STOP {
        Verdict::Fence
    } else {
        Verdict::Keep
    }
}

/// A keeper's state.
#[derive(Debug, Clone, Copy)]
enum State {
    Standby,
    Owner {
        revision: u64,
        last_ok_sent: Instant,
        /// Set while the owner of a young bucket waits out its [`quarantine`] before
        /// starting the copy; the gate answers "not here" until then.
        start_at: Option<Instant>,
    },
}

impl State {
    /// Whether the child may run here now: the owner, past any quarantine.
    fn may_run(&self) -> bool {
        match self {
            State::Standby => false,
            State::Owner { start_at, .. } => start_at.is_none_or(|at| at <= Instant::now()),
        }
    }
}

struct Keeper {
    supervisor: String,
    child: String,
    state: Mutex<State>,
    /// The running fence (stop, then kill) of this child, if any.
    fencing: Mutex<Option<JoinHandle<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// The check that the child is still in its supervisor's spec.
    spec_watch: Mutex<Option<JoinHandle<()>>>,
    /// Set when an install deleted the child from its supervisor: the keeper frees the
    /// lease (a host whose release still has the child takes it) and ends.
    retired: std::sync::atomic::AtomicBool,
}

struct Shared {
    host: String,
    fleet: Fleet,
    bucket: String,
    /// The leases bucket; opened again (created if need be) after a failed `create`, in
    /// case the server lost it (restarted without its store).
    store: Mutex<kv::Store>,
    runtime: Runtime,
    tokio: tokio::runtime::Handle,
    keepers: Mutex<HashMap<(String, String), Arc<Keeper>>>,
}

/// This host's singleton leases. Cheap to clone.
#[derive(Clone)]
pub struct Leases {
    shared: Arc<Shared>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn key(child: &str) -> String {
    format!("singleton.{child}")
}

async fn open_bucket(fleet: &Fleet, bucket: &str) -> Result<kv::Store, FleetError> {
    fleet
        .bucket(bucket, "graft singleton leases", 1, LEASE_TTL)
        .await
}

impl Shared {
    fn store(&self) -> kv::Store {
        lock(&self.store).clone()
    }

    /// Opens the bucket again (creating it if the server lost it).
    async fn reopen(&self) {
        if let Ok(Ok(store)) =
            tokio::time::timeout(REQUEST_TIMEOUT, open_bucket(&self.fleet, &self.bucket)).await
        {
            *lock(&self.store) = store;
        }
    }
}

impl Leases {
    /// Opens the leases bucket.
    pub async fn start(
        fleet: &Fleet,
        namespace: &ClusterNamespace,
        host: &str,
        runtime: Runtime,
    ) -> Result<Leases, FleetError> {
        let store = open_bucket(fleet, &namespace.leases_bucket()).await?;
        Ok(Leases {
            shared: Arc::new(Shared {
                host: host.to_owned(),
                fleet: fleet.clone(),
                bucket: namespace.leases_bucket(),
                store: Mutex::new(store),
                runtime,
                tokio: tokio::runtime::Handle::current(),
                keepers: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Whether the singleton child `child` of supervisor `supervisor` starts here now.
    ///
    /// The first call creates the child's keeper and tries to take the lease once; later
    /// calls answer from the keeper's state.
    pub fn gate(&self, supervisor: &str, child: &str) -> BoxFuture<'static, bool> {
        let shared = Arc::clone(&self.shared);
        let supervisor = supervisor.to_owned();
        let child = child.to_owned();
        Box::pin(async move {
            let id = (supervisor.clone(), child.clone());
            if let Some(keeper) = lock(&shared.keepers).get(&id) {
                return lock(&keeper.state).may_run();
            }
            let keeper = Arc::new(Keeper {
                supervisor,
                child,
                state: Mutex::new(State::Standby),
                fencing: Mutex::new(None),
                task: Mutex::new(None),
                spec_watch: Mutex::new(None),
                retired: std::sync::atomic::AtomicBool::new(false),
            });
            {
                let mut keepers = lock(&shared.keepers);
                if let Some(existing) = keepers.get(&id) {
                    return lock(&existing.state).may_run();
                }
                keepers.insert(id, Arc::clone(&keeper));
            }
            try_acquire(&shared, &keeper).await;
            let task = shared
                .tokio
                .spawn(run_keeper(Arc::clone(&shared), Arc::clone(&keeper)));
            *lock(&keeper.task) = Some(task);
            lock(&keeper.state).may_run()
        })
    }

    /// The singletons whose lease this host holds, sorted.
    pub fn owned(&self) -> Vec<String> {
        let mut owned: Vec<String> = lock(&self.shared.keepers)
            .values()
            .filter(|keeper| matches!(*lock(&keeper.state), State::Owner { .. }))
            .map(|keeper| keeper.child.clone())
            .collect();
        owned.sort();
        owned
    }

    /// Frees this host's leases (after its tree stopped) and stops their keepers.
    ///
    /// Each owned lease is deleted over its own revision (never a successor's entry), so a
    /// standby elsewhere takes it at its next poll.
    pub async fn leave(&self) {
        let keepers: Vec<Arc<Keeper>> =
            lock(&self.shared.keepers).drain().map(|(_, k)| k).collect();
        for keeper in &keepers {
            if let Some(task) = lock(&keeper.task).take() {
                task.abort();
            }
            if let Some(task) = lock(&keeper.spec_watch).take() {
                task.abort();
            }
        }
        for keeper in keepers {
            let state = std::mem::replace(&mut *lock(&keeper.state), State::Standby);
            if let State::Owner { revision, .. } = state {
                let deleted = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    self.shared
                        .store()
                        .delete_expect_revision(key(&keeper.child), Some(revision)),
                )
                .await;
                match deleted {
                    Ok(Ok(())) => tracing::info!(child = %keeper.child, "singleton lease freed"),
                    Ok(Err(error)) => {
                        tracing::warn!(child = %keeper.child, %error, "freeing a singleton lease failed")
                    }
                    Err(_) => {
                        tracing::warn!(child = %keeper.child, "freeing a singleton lease timed out")
                    }
                }
            }
        }
    }
}

/// How long the new owner of a lease waits before it starts its copy: until [`FENCE_KILL`]
/// after the bucket was created, both times read off the server (the bucket's creation
/// and this lease entry's), or [`FENCE_KILL`] when they cannot be read.
///
/// An old bucket waits nothing. A young one may have replaced a bucket the server lost
/// (restarted without its store): an owner of the lost bucket cut off from the server
/// made its last good renewal before the loss, so its own fence has killed its copy by
/// the time this one starts.
async fn quarantine(shared: &Shared, key: &str) -> Option<Duration> {
    let store = shared.store();
    let read = async {
        let info = store.stream.get_info().await.ok()?;
        let entry = store.entry(key).await.ok()??;
        Some((info.created, entry.created))
    };
    let Ok(Some((bucket_created, entry_created))) =
        tokio::time::timeout(REQUEST_TIMEOUT, read).await
    else {
        return Some(FENCE_KILL);
    };
    let Ok(end) = async_nats::datetime::add_std_duration(bucket_created, FENCE_KILL) else {
        return Some(FENCE_KILL);
    };
    (entry_created < end).then(|| (end - entry_created).unsigned_abs())
}

/// One `create` of the lease key; on success the keeper is the owner (starting its copy
/// now, or after a [`quarantine`]).
async fn try_acquire(shared: &Shared, keeper: &Keeper) -> bool {
    let now = now_ms();
    let entry = LeaseEntry {
        host: shared.host.clone(),
        acquired_ms: now,
        renewed_ms: now,
    };
    let value = serde_json::to_vec(&entry).expect("a lease entry serializes");
    let sent = Instant::now();
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        shared.store().create(key(&keeper.child), value.into()),
    )
    .await
    {
        Ok(Ok(revision)) => {
            let wait = quarantine(shared, &key(&keeper.child)).await;
            *lock(&keeper.state) = State::Owner {
                revision,
                last_ok_sent: sent,
                start_at: wait.map(|wait| Instant::now() + wait),
            };
            match wait {
                None => {
                    tracing::info!(child = %keeper.child, host = %shared.host, "singleton lease acquired")
                }
                Some(wait) => {
                    tracing::info!(child = %keeper.child, host = %shared.host, ?wait, "singleton lease acquired in a young bucket: starting after its quarantine")
                }
            }
            true
        }
        Ok(Err(error)) => {
            if error.kind() != kv::CreateErrorKind::AlreadyExists {
                tracing::debug!(child = %keeper.child, %error, "taking a singleton lease failed");
                shared.reopen().await;
            }
            false
        }
        // A publish into a stream the server lost waits for an acknowledgement that never
        // comes: a timeout also opens the bucket again.
        Err(_) => {
            tracing::debug!(child = %keeper.child, "taking a singleton lease timed out");
            shared.reopen().await;
            false
        }
    }
}

/// The pause before an owner tries again to start a copy whose start failed.
const START_RETRY: Duration = Duration::from_secs(1);

/// How often a keeper checks that its child is still in its supervisor's spec.
const SPEC_CHECK: Duration = Duration::from_secs(2);

/// Marks the keeper retired once its supervisor no longer has the child (an install
/// deleted it). A supervisor that is gone (the tree stopping) or slow to answer changes
/// nothing: `leave` frees the lease after the tree stopped. Runs beside the keeper, so
/// the renewals never wait on the supervisor.
async fn watch_spec(shared: Arc<Shared>, keeper: Arc<Keeper>) {
    let mut interval = tokio::time::interval(SPEC_CHECK);
    loop {
        interval.tick().await;
        let Some(supervisor) = shared.runtime.supervisor(&keeper.supervisor) else {
            continue;
        };
        let spec = tokio::time::timeout(
            REQUEST_TIMEOUT,
            supervisor.get_childspec(ChildKey::Id(keeper.child.clone())),
        )
        .await;
        if let Ok(Err(crate::supervisor::SupervisorError::NotFound(_))) = spec {
            tracing::info!(child = %keeper.child, "the singleton was deleted from its supervisor; freeing its lease");
            keeper
                .retired
                .store(true, std::sync::atomic::Ordering::Release);
            return;
        }
    }
}

/// Frees a retired keeper's lease (if it holds it) and forgets the keeper.
async fn retire(shared: &Shared, keeper: &Keeper) {
    let state = std::mem::replace(&mut *lock(&keeper.state), State::Standby);
    if let State::Owner { revision, .. } = state {
        let _ = tokio::time::timeout(
            REQUEST_TIMEOUT,
            shared
                .store()
                .delete_expect_revision(key(&keeper.child), Some(revision)),
        )
        .await;
    }
    lock(&shared.keepers).remove(&(keeper.supervisor.clone(), keeper.child.clone()));
}

async fn run_keeper(shared: Arc<Shared>, keeper: Arc<Keeper>) {
    let spec_watch = shared
        .tokio
        .spawn(watch_spec(Arc::clone(&shared), Arc::clone(&keeper)));
    *lock(&keeper.spec_watch) = Some(spec_watch);
    let mut next_renew = Instant::now() + LEASE_RENEW;
    loop {
        if keeper.retired.load(std::sync::atomic::Ordering::Acquire) {
            retire(&shared, &keeper).await;
            return;
        }
        let state = *lock(&keeper.state);
        match state {
            State::Standby => {
                tokio::time::sleep(STANDBY_POLL).await;
                let fencing = lock(&keeper.fencing)
                    .as_ref()
                    .is_some_and(|task| !task.is_finished());
                if fencing {
                    continue;
                }
                if try_acquire(&shared, &keeper).await {
                    next_renew = Instant::now() + LEASE_RENEW;
                    if lock(&keeper.state).may_run() {
                        start_child(&shared, &keeper);
                    }
                }
            }
            State::Owner {
                revision,
                last_ok_sent,
                start_at: Some(start_at),
            } if start_at < next_renew => {
                // The quarantine ends before the next renewal: start the copy then.
                tokio::time::sleep_until(start_at).await;
                let mut state = lock(&keeper.state);
                if let State::Owner {
                    revision: current, ..
                } = *state
                    && current == revision
                {
                    *state = State::Owner {
                        revision,
                        last_ok_sent,
                        start_at: None,
                    };
                    drop(state);
                    start_child(&shared, &keeper);
                }
            }
            State::Owner {
                revision,
                last_ok_sent,
                start_at,
            } => {
                tokio::time::sleep_until(next_renew).await;
                let sent = Instant::now();
                next_renew = sent + LEASE_RENEW;
                let entry = LeaseEntry {
                    host: shared.host.clone(),
                    acquired_ms: 0,
                    renewed_ms: now_ms(),
                };
                let value = serde_json::to_vec(&entry).expect("a lease entry serializes");
                let renewed = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    shared
                        .store()
                        .update(key(&keeper.child), value.into(), revision),
                )
                .await;
                let refused = match renewed {
                    Ok(Ok(new_revision)) => {
                        *lock(&keeper.state) = State::Owner {
                            revision: new_revision,
                            last_ok_sent: sent,
                            start_at,
                        };
                        continue;
                    }
                    Ok(Err(error)) => {
                        let refused = error.kind() == kv::UpdateErrorKind::WrongLastRevision;
                        tracing::warn!(child = %keeper.child, %error, "renewing a singleton lease failed");
                        refused
                    }
                    Err(_) => {
                        tracing::warn!(child = %keeper.child, "renewing a singleton lease timed out");
                        false
                    }
                };
                if verdict(refused, last_ok_sent.elapsed()) == Verdict::Fence {
                    *lock(&keeper.state) = State::Standby;
                    let kill_at = if refused {
                        Instant::now() + (FENCE_KILL - FENCE_STOP)
                    } else {
                        last_ok_sent + FENCE_KILL
                    };
                    tracing::warn!(child = %keeper.child, refused, "singleton lease lost: stopping the local copy");
                    let fence = shared.tokio.spawn(fence(
                        Arc::clone(&shared),
                        Arc::clone(&keeper),
                        kill_at,
                    ));
                    *lock(&keeper.fencing) = Some(fence);
                }
            }
        }
    }
}

/// Starts the held child again after this host won its lease (in a task of its own: the
/// supervisor asks the gate, which answers from the keeper's state).
fn start_child(shared: &Arc<Shared>, keeper: &Arc<Keeper>) {
    let shared = Arc::clone(shared);
    let keeper = Arc::clone(keeper);
    shared.tokio.clone().spawn(async move {
        let Some(supervisor) = shared.runtime.supervisor(&keeper.supervisor) else {
            tracing::warn!(supervisor = %keeper.supervisor, "singleton's supervisor not found");
            return;
        };
        // A failed start (its global name not registered yet, say) is tried again while
        // this host still holds the lease: an owner without a copy runs nothing anywhere.
        loop {
            match supervisor.restart_child(&keeper.child).await {
                Ok(_) => {
                    tracing::info!(child = %keeper.child, "singleton started after taking its lease");
                    return;
                }
                Err(
                    SupervisorError::Running(_)
                    | SupervisorError::Restarting(_)
                    | SupervisorError::NotFound(_)
                    | SupervisorError::Exited(_),
                ) => return,
                Err(error) => {
                    tracing::warn!(child = %keeper.child, %error, "starting a singleton after taking its lease failed; trying again")
                }
            }
            tokio::time::sleep(START_RETRY).await;
            if !lock(&keeper.state).may_run()
                || keeper.retired.load(std::sync::atomic::Ordering::Acquire)
            {
                return;
            }
        }
    });
}

/// Stops the local copy (orderly), and kills it if it still lives at `kill_at`.
async fn fence(shared: Arc<Shared>, keeper: Arc<Keeper>, kill_at: Instant) {
    let Some(supervisor) = shared.runtime.supervisor(&keeper.supervisor) else {
        return;
    };
    let actor: Option<ActorRef> = tokio::time::timeout_at(
        kill_at,
        supervisor.which_child(ChildKey::Id(keeper.child.clone())),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .and_then(|info| info.child)
    .and_then(|child| child.actor().cloned());
    let terminate = {
        let supervisor = supervisor.clone();
        let child = keeper.child.clone();
        shared.tokio.spawn(async move {
            if let Err(error) = supervisor
                .terminate_child(ChildKey::Id(child.clone()))
                .await
            {
                tracing::warn!(%child, %error, "stopping a fenced singleton failed");
            }
        })
    };
    let _ = tokio::time::timeout_at(kill_at, terminate).await;
    if let Some(actor) = actor
        && actor.is_alive()
    {
        tracing::warn!(child = %keeper.child, "fenced singleton still running: killing it");
        actor.kill_with(StopReason::Error("singleton lease lost".to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_keeps_its_lease_until_the_fence_deadline() {
        assert_eq!(verdict(false, Duration::ZERO), Verdict::Keep);
        assert_eq!(
            verdict(false, FENCE_STOP - Duration::from_millis(1)),
            Verdict::Keep
        );
        assert_eq!(verdict(false, FENCE_STOP), Verdict::Fence);
    }

    #[test]
    fn a_refused_renewal_fences_at_once() {
        assert_eq!(verdict(true, Duration::ZERO), Verdict::Fence);
    }

    #[test]
    fn the_fence_stops_the_copy_well_before_the_lease_can_expire() {
        assert!(FENCE_STOP < FENCE_KILL);
        assert!(FENCE_KILL + Duration::from_secs(1) <= LEASE_TTL);
        assert!(LEASE_RENEW * 3 <= FENCE_STOP);
    }

    #[test]
    fn lease_entries_read_without_a_renewal_time() {
        let entry: LeaseEntry =
            serde_json::from_str(r#"{"host":"a","acquired_ms":5}"#).expect("decodes");
        assert_eq!(entry.renewed_ms, 0);
        assert_eq!(key("probe"), "singleton.probe");
    }
}
