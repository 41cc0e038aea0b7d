//! Frames between hosts: casts, infos, calls and their replies, monitors and their
//! `down`, as NATS messages on the fleet's connection.
//!
//! Responsibility: turn a remote send, call or monitor into a frame (NATS headers + the
//! untouched MessagePack payload), deliver inbound frames to local actors, route replies
//! and refusals back to whoever waits for them.
//!
//! Invariants:
//! - One ordered outbound path: every frame this host sends (casts, infos, calls, their
//!   replies, monitor requests, `down` notices) goes through one bounded queue drained by
//!   ONE writer task on the host's one connection; the inbox is ONE subscription handled
//!   by ONE task doing only non-blocking deliveries. NATS keeps per-connection order, so
//!   whatever actor X sends actor Y arrives in send order.
//! - Refused, reported or delivered, never dropped unreported: a send is refused at once
//!   (unknown name, host down, cluster unreachable, payload too big, queue full); a cast
//!   or info refused later by the receiving host (no such actor, mailbox full) comes back
//!   as a NAK on `nak_subject(me, to_host)`, and a 503 (no responders: the host has no
//!   inbox any more) arrives there too; both are logged (`warn!`) and counted as lost
//!   messages. A reply that comes after its call timed out is dropped, logged (debug)
//!   and counted.
//! - A `down` frame goes through the writer too, so it follows every message the
//!   monitored actor sent before it exited.
//!
//! What is tricky: a 503 "no responders" reaches a publish-with-reply only because the
//! reply subject is subscribed by this same connection (our `reply.*` and `nak.*`
//! subscriptions) and async-nats connects with `no_responders` on. The callee's waiter
//! for a call's reply waits [`LATE_GRACE`] past the caller's timeout, so a reply the caller
//! gave up on is still sent and counted as late by the caller rather than vanishing
//! uncounted at the callee.

use super::ClusterNamespace;
use super::hosts::{HostChange, HostTracker};
use super::names::Names;
use crate::fleet::{Fleet, FleetError};
use crate::plugin::{SendKind, ServiceError};
use crate::runtime::{ActorRef, CallError, ExitNotice, ProcessId, Runtime, Target, Watcher};
use async_nats::header::HeaderMap;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use graft_plugin::{Down, StopReason, abi, codec};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// How many frames may wait for the writer before a send is refused.
pub const OUTBOUND_QUEUE: usize = 65_536;
/// How long past the caller's timeout a callee still waits to send a call's reply.
pub const LATE_GRACE: Duration = Duration::from_secs(1);

const KIND: &str = "Graft-Kind";
const TO: &str = "Graft-To";
const FROM: &str = "Graft-From";
const FROM_HOST: &str = "Graft-From-Host";
const TIMEOUT_MS: &str = "Graft-Timeout-Ms";
const MONITOR: &str = "Graft-Monitor";
const REASON: &str = "Graft-Reason";
const STATUS: &str = "Graft-Status";
const DETAIL: &str = "Graft-Detail";

/// One frame for the writer.
struct Outbound {
    subject: String,
    reply: Option<String>,
    headers: HeaderMap,
    payload: Vec<u8>,
}

/// A call waiting for its reply.
struct PendingCall {
    host: String,
    actor: String,
    reply: oneshot::Sender<Result<Vec<u8>, CallError>>,
}

/// A monitor this host's actor holds on an actor elsewhere.
struct RemoteMonitor {
    host: String,
    name: String,
    watcher: ActorRef,
}

/// A monitor another host holds on one of this host's actors.
struct WatchedBy {
    host: String,
    monitor: u64,
    name: String,
}

struct Inner {
    runtime: Runtime,
    namespace: ClusterNamespace,
    host: String,
    client: async_nats::Client,
    hosts: HostTracker,
    names: Names,
    outbound: mpsc::Sender<Outbound>,
    next_call: AtomicU64,
    pending: Mutex<HashMap<u64, PendingCall>>,
    monitors: Mutex<HashMap<u64, RemoteMonitor>>,
    watched: Mutex<HashMap<ProcessId, Vec<WatchedBy>>>,
    exits: mpsc::UnboundedSender<ExitNotice>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stopped: AtomicBool,
    late_replies: AtomicU64,
    lost_messages: AtomicU64,
}

/// This host's end of the cluster's messaging. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

/// A call's failure as the reply frame's `Graft-Status` and `Graft-Detail`.
fn status_of(error: &CallError) -> (&'static str, String) {
    match error {
        CallError::NotFound(_) => ("not_found", String::new()),
        CallError::Exited { reason, .. } => ("exited", reason.to_string()),
        CallError::Timeout { .. } => ("timeout", String::new()),
        CallError::BadRequest { message, .. } => ("bad_request", message.clone()),
        CallError::MailboxFull { limit, .. } => ("mailbox_full", limit.to_string()),
        CallError::CallingSelf(_) => ("bad_request", "an actor cannot call itself".to_owned()),
        CallError::HostDown { host, .. } => ("exited", format!("host {host} down")),
        CallError::Unreachable { why, .. } => ("exited", why.clone()),
    }
}

/// The caller's result for a reply frame (the inverse of [`status_of`]).
fn result_of(
    status: &str,
    detail: &str,
    actor: &str,
    timeout: Duration,
    payload: Vec<u8>,
) -> Result<Vec<u8>, CallError> {
    let actor = actor.to_owned();
    match status {
        "ok" => Ok(payload),
        "not_found" => Err(CallError::NotFound(actor)),
        "timeout" => Err(CallError::Timeout { actor, timeout }),
        "bad_request" => Err(CallError::BadRequest {
            actor,
            message: detail.to_owned(),
        }),
        "mailbox_full" => Err(CallError::MailboxFull {
            actor,
            limit: detail.parse().unwrap_or(0),
        }),
        _ => Err(CallError::Exited {
            actor,
            reason: StopReason::from_text(detail),
        }),
    }
}

fn nats_error(action: String, error: impl std::error::Error + Send + Sync + 'static) -> FleetError {
    FleetError::JetStream {
        action,
        source: Box::new(error),
    }
}

impl Transport {
    /// Subscribes to this host's inbox, replies and refusals, and starts the writer.
    pub async fn start(
        fleet: &Fleet,
        namespace: &ClusterNamespace,
        host: &str,
        runtime: Runtime,
        hosts: HostTracker,
        names: Names,
    ) -> Result<Transport, FleetError> {
        let client = fleet.client.clone();
        let subscribe = |subject: String| {
            let client = client.clone();
            async move {
                client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|error| nats_error(format!("subscribing to {subject}"), error))
            }
        };
        let inbox = subscribe(namespace.inbox(host)).await?;
        let replies = subscribe(namespace.replies_wildcard(host)).await?;
        let naks = subscribe(namespace.naks_wildcard(host)).await?;
        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        let (exits, exit_notices) = mpsc::unbounded_channel();
        let host_changes = hosts.subscribe();
        let transport = Transport {
            inner: Arc::new(Inner {
                runtime,
                namespace: namespace.clone(),
                host: host.to_owned(),
                client: client.clone(),
                hosts,
                names,
                outbound,
                next_call: AtomicU64::new(1),
                pending: Mutex::new(HashMap::new()),
                monitors: Mutex::new(HashMap::new()),
                watched: Mutex::new(HashMap::new()),
                exits,
                tasks: Mutex::new(Vec::new()),
                stopped: AtomicBool::new(false),
                late_replies: AtomicU64::new(0),
                lost_messages: AtomicU64::new(0),
            }),
        };
        // The tasks hold a weak reference: a dropped transport ends them.
        let weak = Arc::downgrade(&transport.inner);
        let tasks = vec![
            tokio::spawn(write(client.clone(), queue)),
            tokio::spawn(receive_inbox(weak.clone(), inbox)),
            tokio::spawn(receive_replies(weak.clone(), replies)),
            tokio::spawn(receive_naks(weak.clone(), naks)),
            tokio::spawn(watch_hosts(weak.clone(), host_changes)),
            tokio::spawn(tell_exits(weak, exit_notices)),
        ];
        *lock(&transport.inner.tasks) = tasks;
        Ok(transport)
    }

    /// Replies that came after their call had timed out (dropped).
    pub fn late_replies(&self) -> u64 {
        self.inner.late_replies.load(Ordering::Relaxed)
    }

    /// Casts and infos another host refused, or that found no host (NAKs and 503s).
    pub fn lost_messages(&self) -> u64 {
        self.inner.lost_messages.load(Ordering::Relaxed)
    }

    /// The host `to` is on, or why it cannot be reached.
    async fn host_of(inner: &Inner, to: &Target) -> Result<String, CallError> {
        let host = match &to.host {
            Some(host) => host.clone(),
            None => match inner.names.resolve(&to.name) {
                Some(host) => host,
                None => inner
                    .names
                    .lookup(&to.name)
                    .await
                    .ok_or_else(|| CallError::NotFound(to.name.clone()))?,
            },
        };
        if inner.hosts.is_down(&host) {
            return Err(CallError::HostDown {
                actor: to.name.clone(),
                host,
            });
        }
        if inner.stopped.load(Ordering::Acquire)
            || inner.client.connection_state() != async_nats::connection::State::Connected
        {
            return Err(CallError::Unreachable {
                actor: to.to_string(),
                why: "cluster unreachable".to_owned(),
            });
        }
        Ok(host)
    }

    /// Resolves `to`'s host from a synchronous context (a plugin callback): the cache
    /// first, the server only on a miss.
    fn host_of_blocking(&self, to: &Target) -> Result<String, CallError> {
        if to.host.is_some() || self.inner.names.resolve(&to.name).is_some() {
            return futures_util::FutureExt::now_or_never(Self::host_of(&self.inner, to))
                .unwrap_or_else(|| Err(CallError::NotFound(to.name.clone())));
        }
        let inner = Arc::clone(&self.inner);
        let to = to.clone();
        let timers = crate::runtime::executor::timers();
        crate::runtime::executor::blocking(|| {
            timers.block_on(async move { Self::host_of(&inner, &to).await })
        })
    }

    fn enqueue(&self, frame: Outbound) -> Result<(), ServiceError> {
        let max_payload = self.inner.client.server_info().max_payload;
        let size = frame.payload.len();
        if max_payload > 0 && size > max_payload {
            return Err(ServiceError::Refused {
                actor: frame.subject,
                reason: format!(
                    "message of {size} bytes is over the cluster's max_payload of {max_payload} bytes"
                ),
            });
        }
        self.inner
            .outbound
            .try_send(frame)
            .map_err(|error| ServiceError::Refused {
                actor: error.into_inner().subject,
                reason: "cluster outbound queue full".to_owned(),
            })
    }

    /// Sends a cast or info message to `to` on another host.
    pub fn send(
        &self,
        from: &str,
        to: &Target,
        kind: SendKind,
        message: Vec<u8>,
    ) -> Result<(), ServiceError> {
        let host = self.host_of_blocking(to).map_err(refusal)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            KIND,
            match kind {
                SendKind::Cast => "cast",
                SendKind::Info => "info",
            },
        );
        headers.insert(TO, to.name.as_str());
        headers.insert(FROM, from);
        headers.insert(FROM_HOST, self.inner.host.as_str());
        self.enqueue(Outbound {
            subject: self.inner.namespace.inbox(&host),
            reply: Some(self.inner.namespace.nak_subject(&self.inner.host, &host)),
            headers,
            payload: message,
        })
        .map_err(|error| match error {
            ServiceError::Refused { reason, .. } => ServiceError::Refused {
                actor: to.to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Calls `to` on another host.
    pub fn call(
        &self,
        to: &Target,
        request: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, CallError>> {
        let transport = self.clone();
        let to = to.clone();
        Box::pin(async move {
            let inner = &transport.inner;
            let host = Self::host_of(inner, &to).await?;
            let call = inner.next_call.fetch_add(1, Ordering::Relaxed);
            let (reply, receiver) = oneshot::channel();
            lock(&inner.pending).insert(
                call,
                PendingCall {
                    host: host.clone(),
                    actor: to.name.clone(),
                    reply,
                },
            );
            let mut headers = HeaderMap::new();
            headers.insert(KIND, "call");
            headers.insert(TO, to.name.as_str());
            headers.insert(FROM_HOST, inner.host.as_str());
            headers.insert(TIMEOUT_MS, timeout.as_millis().to_string().as_str());
            let sent = transport.enqueue(Outbound {
                subject: inner.namespace.inbox(&host),
                reply: Some(inner.namespace.reply_subject(&inner.host, call)),
                headers,
                payload: request,
            });
            if let Err(error) = sent {
                lock(&inner.pending).remove(&call);
                return Err(CallError::Unreachable {
                    actor: to.to_string(),
                    why: error.to_string(),
                });
            }
            match tokio::time::timeout(timeout, receiver).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(CallError::Unreachable {
                    actor: to.to_string(),
                    why: "cluster transport stopped".to_owned(),
                }),
                Err(_) => {
                    lock(&inner.pending).remove(&call);
                    Err(CallError::Timeout {
                        actor: to.name.clone(),
                        timeout,
                    })
                }
            }
        })
    }

    /// Monitors `to` on another host for `watcher`; the monitor id.
    pub fn monitor(&self, watcher: &ActorRef, to: &Target) -> u64 {
        let inner = &self.inner;
        let monitor = inner.runtime.next_monitor_id();
        let fire = |reason: &str| {
            deliver_down(watcher, monitor, &to.to_string(), reason);
        };
        let host = match self.host_of_blocking(to) {
            Ok(host) => host,
            Err(CallError::HostDown { .. }) => {
                fire("host down");
                return monitor;
            }
            Err(CallError::NotFound(_)) => {
                fire("noproc");
                return monitor;
            }
            Err(_) => {
                fire("noconnection");
                return monitor;
            }
        };
        lock(&inner.monitors).insert(
            monitor,
            RemoteMonitor {
                host: host.clone(),
                name: to.to_string(),
                watcher: watcher.clone(),
            },
        );
        let mut headers = HeaderMap::new();
        headers.insert(KIND, "monitor");
        headers.insert(TO, to.name.as_str());
        headers.insert(FROM_HOST, inner.host.as_str());
        headers.insert(MONITOR, monitor.to_string().as_str());
        let sent = self.enqueue(Outbound {
            subject: inner.namespace.inbox(&host),
            reply: Some(inner.namespace.nak_subject(&inner.host, &host)),
            headers,
            payload: Vec::new(),
        });
        if sent.is_err()
            && let Some(remote) = lock(&inner.monitors).remove(&monitor)
        {
            deliver_down(&remote.watcher, monitor, &remote.name, "noconnection");
        }
        monitor
    }

    /// Stops the writer and the subscriptions; calls still waiting fail as unreachable.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        for task in lock(&self.inner.tasks).drain(..) {
            task.abort();
        }
        lock(&self.inner.pending).clear();
    }
}

/// A send refused before it left, as the plugin services report it.
fn refusal(error: CallError) -> ServiceError {
    match error {
        CallError::NotFound(name) => ServiceError::NotFound(name),
        CallError::HostDown { actor, host } => ServiceError::Exited {
            actor: format!("{actor}@{host}"),
            reason: "host down".to_owned(),
        },
        CallError::Unreachable { actor, why } => ServiceError::Refused { actor, reason: why },
        other => ServiceError::Refused {
            actor: String::new(),
            reason: other.to_string(),
        },
    }
}

fn deliver_down(watcher: &ActorRef, monitor: u64, actor: &str, reason: &str) {
    let down = Down {
        monitor,
        actor: actor.to_owned(),
        reason: StopReason::from_text(reason),
    };
    if let Ok(message) = codec::encode(&down) {
        watcher.deliver_info_uncounted(abi::INFO_DOWN, message);
    }
}

fn count_lost(inner: &Inner) {
    inner.lost_messages.fetch_add(1, Ordering::Relaxed);
    if crate::metrics::is_enabled() {
        crate::metrics::history::count_lost(1);
    }
}

/// The writer: publishes every frame in queue order.
async fn write(client: async_nats::Client, mut queue: mpsc::Receiver<Outbound>) {
    while let Some(frame) = queue.recv().await {
        let published = match frame.reply {
            Some(reply) => {
                client
                    .publish_with_reply_and_headers(
                        frame.subject,
                        reply,
                        frame.headers,
                        frame.payload.into(),
                    )
                    .await
            }
            None => {
                client
                    .publish_with_headers(frame.subject, frame.headers, frame.payload.into())
                    .await
            }
        };
        if let Err(error) = published {
            warn!(%error, "cluster: a frame could not be published");
        }
    }
}

fn reply_frame(subject: String, status: &str, detail: &str, payload: Vec<u8>) -> Outbound {
    let mut headers = HeaderMap::new();
    headers.insert(STATUS, status);
    if !detail.is_empty() {
        headers.insert(DETAIL, detail);
    }
    Outbound {
        subject,
        reply: None,
        headers,
        payload,
    }
}

/// The inbox: one task, only non-blocking deliveries, in arrival order.
async fn receive_inbox(inner: std::sync::Weak<Inner>, mut inbox: async_nats::Subscriber) {
    while let Some(message) = inbox.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let headers = message.headers.as_ref();
        let to = header(headers, TO).unwrap_or_default().to_owned();
        let target = inner.runtime.whereis(&to);
        match header(headers, KIND).unwrap_or_default() {
            kind @ ("cast" | "info") => {
                let payload = message.payload.to_vec();
                let refused = match &target {
                    None => Some(("not_found", String::new())),
                    Some(actor) => {
                        let sent = if kind == "cast" {
                            actor.try_cast(payload)
                        } else {
                            actor.try_send_info(payload)
                        };
                        sent.err().map(|error| ("mailbox_full", error.to_string()))
                    }
                };
                if let (Some((status, detail)), Some(reply)) = (refused, message.reply) {
                    let mut frame = reply_frame(reply.to_string(), status, &detail, Vec::new());
                    frame.headers.insert(TO, to.as_str());
                    let _ = inner.outbound.try_send(frame);
                }
            }
            "call" => {
                let Some(reply) = message.reply else { continue };
                let timeout = Duration::from_millis(
                    header(headers, TIMEOUT_MS)
                        .and_then(|text| text.parse().ok())
                        .unwrap_or(5_000),
                );
                let started = match &target {
                    None => Err(CallError::NotFound(to.clone())),
                    Some(actor) => actor.start_call(message.payload.to_vec()),
                };
                match started {
                    Err(error) => {
                        let (status, detail) = status_of(&error);
                        let _ = inner.outbound.try_send(reply_frame(
                            reply.to_string(),
                            status,
                            &detail,
                            Vec::new(),
                        ));
                    }
                    Ok(receiver) => {
                        let outbound = inner.outbound.clone();
                        tokio::spawn(async move {
                            let answer =
                                match tokio::time::timeout(timeout + LATE_GRACE, receiver).await {
                                    Ok(Ok(answer)) => answer,
                                    Ok(Err(_)) => Err(CallError::NotFound(to)),
                                    Err(_) => return,
                                };
                            let frame = match answer {
                                Ok(bytes) => reply_frame(reply.to_string(), "ok", "", bytes),
                                Err(error) => {
                                    let (status, detail) = status_of(&error);
                                    reply_frame(reply.to_string(), status, &detail, Vec::new())
                                }
                            };
                            let _ = outbound.send(frame).await;
                        });
                    }
                }
            }
            "monitor" => {
                let (Some(from_host), Some(monitor)) = (
                    header(headers, FROM_HOST),
                    header(headers, MONITOR).and_then(|text| text.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                let watched_by = WatchedBy {
                    host: from_host.to_owned(),
                    monitor,
                    name: to.clone(),
                };
                match target {
                    None => {
                        let _ = inner
                            .outbound
                            .try_send(down_frame(&inner, &watched_by, "noproc"));
                    }
                    Some(actor) => {
                        let first = {
                            let mut watched = lock(&inner.watched);
                            let entry = watched.entry(actor.id()).or_default();
                            entry.push(watched_by);
                            entry.len() == 1
                        };
                        if first {
                            actor
                                .lifecycle()
                                .watch(Watcher::Channel(inner.exits.clone()));
                        }
                    }
                }
            }
            "down" => {
                let Some(monitor) = header(headers, MONITOR).and_then(|text| text.parse().ok())
                else {
                    continue;
                };
                let reason = header(headers, REASON).unwrap_or("noproc").to_owned();
                let remote = lock(&inner.monitors).remove(&monitor);
                if let Some(remote) = remote {
                    deliver_down(&remote.watcher, monitor, &remote.name, &reason);
                }
            }
            other => debug!(kind = other, "cluster: a frame of unknown kind was ignored"),
        }
    }
}

fn down_frame(inner: &Inner, watched_by: &WatchedBy, reason: &str) -> Outbound {
    let mut headers = HeaderMap::new();
    headers.insert(KIND, "down");
    headers.insert(TO, watched_by.name.as_str());
    headers.insert(FROM_HOST, inner.host.as_str());
    headers.insert(MONITOR, watched_by.monitor.to_string().as_str());
    headers.insert(REASON, reason);
    Outbound {
        subject: inner.namespace.inbox(&watched_by.host),
        reply: None,
        headers,
        payload: Vec::new(),
    }
}

/// Exits of local actors other hosts monitor: a `down` frame to each, through the writer.
async fn tell_exits(inner: std::sync::Weak<Inner>, mut exits: mpsc::UnboundedReceiver<ExitNotice>) {
    while let Some(exit) = exits.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        let watchers = lock(&inner.watched).remove(&exit.id).unwrap_or_default();
        let reason = exit.reason.to_string();
        for watched_by in &watchers {
            let _ = inner
                .outbound
                .send(down_frame(&inner, watched_by, &reason))
                .await;
        }
    }
}

/// Replies to this host's calls; a 503 means the callee's host has no inbox (down).
async fn receive_replies(inner: std::sync::Weak<Inner>, mut replies: async_nats::Subscriber) {
    while let Some(message) = replies.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(call) = message
            .subject
            .rsplit('.')
            .next()
            .and_then(|text| text.parse::<u64>().ok())
        else {
            continue;
        };
        let Some(pending) = lock(&inner.pending).remove(&call) else {
            inner.late_replies.fetch_add(1, Ordering::Relaxed);
            if crate::metrics::is_enabled() {
                crate::metrics::history::count_lost(1);
            }
            debug!(
                call,
                "cluster: a reply came after its call timed out; dropped"
            );
            continue;
        };
        let result = if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            Err(CallError::HostDown {
                actor: pending.actor.clone(),
                host: pending.host.clone(),
            })
        } else {
            let headers = message.headers.as_ref();
            result_of(
                header(headers, STATUS).unwrap_or("ok"),
                header(headers, DETAIL).unwrap_or_default(),
                &pending.actor,
                Duration::ZERO,
                message.payload.to_vec(),
            )
        };
        let _ = pending.reply.send(result);
    }
}

/// Refusals of this host's casts, infos and monitors: logged, counted, the name evicted.
async fn receive_naks(inner: std::sync::Weak<Inner>, mut naks: async_nats::Subscriber) {
    while let Some(message) = naks.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let to_host = message.subject.rsplit('.').next().unwrap_or_default();
        count_lost(&inner);
        if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            warn!(
                host = to_host,
                "cluster: a message to host {to_host} was lost: the host has no inbox (down)"
            );
            continue;
        }
        let headers = message.headers.as_ref();
        let to = header(headers, TO).unwrap_or_default();
        let status = header(headers, STATUS).unwrap_or_default();
        warn!(
            host = to_host,
            actor = to,
            status,
            "cluster: a message to {to}@{to_host} was refused ({status}) and lost"
        );
        if status == "not_found" {
            inner.names.evict(to);
        }
    }
}

/// A host that went down fails every call waiting on it and fires every monitor on it.
async fn watch_hosts(
    inner: std::sync::Weak<Inner>,
    mut changes: tokio::sync::broadcast::Receiver<HostChange>,
) {
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        let HostChange::Down(host) = change else {
            continue;
        };
        let failed: Vec<PendingCall> = {
            let mut pending = lock(&inner.pending);
            let calls: Vec<u64> = pending
                .iter()
                .filter(|(_, call)| call.host == host)
                .map(|(id, _)| *id)
                .collect();
            calls.iter().filter_map(|id| pending.remove(id)).collect()
        };
        for call in failed {
            let _ = call.reply.send(Err(CallError::HostDown {
                actor: call.actor,
                host: host.clone(),
            }));
        }
        let fired: Vec<(u64, RemoteMonitor)> = {
            let mut monitors = lock(&inner.monitors);
            let ids: Vec<u64> = monitors
                .iter()
                .filter(|(_, monitor)| monitor.host == host)
                .map(|(id, _)| *id)
                .collect();
            ids.iter()
                .filter_map(|id| monitors.remove(id).map(|monitor| (*id, monitor)))
                .collect()
        };
        for (id, monitor) in fired {
            deliver_down(&monitor.watcher, id, &monitor.name, "host down");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_error_survives_the_wire() {
        let errors = [
            CallError::NotFound("kv".into()),
            CallError::BadRequest {
                actor: "kv".into(),
                message: "bad".into(),
            },
            CallError::MailboxFull {
                actor: "kv".into(),
                limit: 4,
            },
            CallError::Exited {
                actor: "kv".into(),
                reason: StopReason::from_text("boom"),
            },
        ];
        for error in errors {
            let (status, detail) = status_of(&error);
            let back = result_of(status, &detail, "kv", Duration::ZERO, Vec::new());
            assert_eq!(back, Err(error));
        }
        assert_eq!(
            result_of("ok", "", "kv", Duration::ZERO, vec![1]),
            Ok(vec![1])
        );
    }
}
