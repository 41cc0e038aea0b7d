//! What each request does, and the `status` report (the tree with every actor's plugin,
//! version, state, restarts, mailbox and health; resident libraries; workers; releases).
//! `state` shows what the plugin's `format_status` shows (the raw state with `raw`).
//! The HTTP observer (`crate::http`) runs the same [`execute`] for its actor view and its
//! install, rollback and make-permanent, so both doors behave alike.
//!
//! Invariant: nothing here waits on an actor or a supervisor without a deadline; `status`
//! asks every actor at once under one deadline, shorter while an install runs, and takes
//! the release facts from one published view.

use super::Request;
use super::protocol::{
    CastResponse, ChildNode, InstallResponse, PermanentResponse, PlanResponse, ReleaseEntry,
    RemovedResponse, ReplacedResponse, ResidentEntry, ResumedResponse, StatusResponse,
    StuckCallbackEntry, SupervisorNode, SuspendedResponse, TreeNode, WorkerEntry,
};
use crate::release::handler::{InstallPhase, ProgressFn, ReleaseError, ReleaseHandler};
use crate::runtime::{ActorRef, CallError, CastError, ProcessId, SendError, SystemError};
use crate::supervisor::{ChildCounts, ChildInfo, ChildRef, SupervisorRef};
use graft_plugin::codec;
use semver::Version;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How long system requests (`state`, `suspend`, …) wait for an actor.
const SYSTEM_TIMEOUT: Duration = Duration::from_secs(5);

fn describe_phase(phase: &InstallPhase) -> String {
    match phase {
        InstallPhase::Loading(count) => format!("loading {count} libraries"),
        InstallPhase::Suspending(count) => format!("suspending {count} actors"),
        InstallPhase::Migrating(count) => format!("migrating {count} actors"),
        InstallPhase::Resuming(count) => format!("resuming {count} actors"),
        InstallPhase::RolledBack => "rolled back: every actor is on its old code".to_owned(),
        InstallPhase::Instruction { index, total } => {
            format!("instruction {} of {total}", index + 1)
        }
    }
}

/// Why a request failed; the client sees its message (the wire carries the text).
#[derive(Debug, Error)]
pub(crate) enum CommandError {
    /// No actor is registered under the name.
    #[error("no actor named {0:?}")]
    NoActor(String),
    /// The release handler refused or failed.
    #[error(transparent)]
    Release(#[from] ReleaseError),
    /// A system request to an actor failed.
    #[error(transparent)]
    System(#[from] SystemError),
    /// The actor's call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The cast could not be queued.
    #[error(transparent)]
    Cast(#[from] CastError),
    /// The cast could not be sent (to an actor on another host of the cluster).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The message (or state) could not be encoded for the plugin.
    #[error(transparent)]
    Encode(#[from] graft_plugin::codec::CodecError),
    /// The actor's reply is not MessagePack JSON can show.
    #[error("the reply is not decodable: {0}")]
    Reply(#[source] rmp_serde::decode::Error),
    /// An operator's suspend, resume or replace while an install runs.
    #[error(
        "an install is in progress: {command} is refused until it ends (it suspends and resumes actors itself)"
    )]
    InstallInProgress {
        /// The refused command.
        command: &'static str,
    },
    /// `suspend` of a suspended actor.
    #[error("actor {0} is already suspended")]
    AlreadySuspended(String),
    /// `resume` of a running actor.
    #[error("actor {0} is not suspended: nothing to resume")]
    NotSuspended(String),
    /// The typed response could not become JSON.
    #[error("the response could not be encoded: {0}")]
    Response(#[source] serde_json::Error),
}

async fn actor(handler: &ReleaseHandler, name: &str) -> Result<ActorRef, CommandError> {
    handler
        .runtime()
        .whereis(name)
        .ok_or_else(|| CommandError::NoActor(name.to_owned()))
}

/// An operator's suspend or resume would race the install's own (it suspends and resumes
/// the actors it migrates): refused while one runs.
fn refuse_during_install(
    handler: &ReleaseHandler,
    command: &'static str,
) -> Result<(), CommandError> {
    if handler.install_in_progress() {
        return Err(CommandError::InstallInProgress { command });
    }
    Ok(())
}

async fn is_suspended(actor: &ActorRef) -> Result<bool, CommandError> {
    Ok(actor.status(SYSTEM_TIMEOUT).await?.suspended)
}

/// A typed response as the wire carries it (a JSON object with its keys sorted, as the
/// untyped server sent).
fn encode(response: &impl Serialize) -> Result<Value, CommandError> {
    serde_json::to_value(response).map_err(CommandError::Response)
}

/// Runs one request; progress lines go to `progress`.
pub(crate) async fn execute(
    handler: &ReleaseHandler,
    request: Request,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Value, CommandError> {
    match request {
        Request::Status {} => encode(&status_report(handler).await),
        Request::Releases {} => encode(
            &handler
                .which_releases()
                .await
                .iter()
                .map(ReleaseEntry::from)
                .collect::<Vec<_>>(),
        ),
        Request::Install { version, permanent } => {
            install(handler, &version, permanent, progress).await
        }
        Request::Plan { version } => {
            let plan = handler.plan(&version)?;
            encode(&PlanResponse {
                plan: encode(&plan)?,
                text: plan.to_string(),
            })
        }
        Request::MakePermanent { version } => {
            handler.make_permanent(&version).await?;
            encode(&PermanentResponse { permanent: version })
        }
        Request::Rollback {} => {
            let report = handler.rollback(Some(report_progress(progress))).await?;
            encode(&InstallResponse::new(&report, false))
        }
        Request::Remove { version } => {
            handler.remove(&version).await?;
            encode(&RemovedResponse { removed: version })
        }
        Request::Call {
            actor: name,
            message,
            timeout_ms,
        } => {
            let request = codec::encode(&message)?;
            let timeout = Duration::from_millis(timeout_ms.unwrap_or(5_000));
            // Here, or (on a host in a cluster) wherever the name runs: `kv` or `kv@host`.
            let reply = match handler.runtime().call(&name, request, timeout).await {
                Err(CallError::NotFound(_)) => return Err(CommandError::NoActor(name)),
                other => other?,
            };
            rmp_serde::from_slice::<Value>(&reply).map_err(CommandError::Reply)
        }
        Request::Cast {
            actor: name,
            message,
        } => {
            match handler.runtime().cast(&name, codec::encode(&message)?) {
                Err(SendError::NotFound(_)) => return Err(CommandError::NoActor(name)),
                other => other?,
            }
            encode(&CastResponse { cast: name })
        }
        Request::State {
            actor: name,
            replace: None,
            raw,
        } => {
            let target = actor(handler, &name).await?;
            Ok(if raw {
                target.get_state(SYSTEM_TIMEOUT).await
            } else {
                target.format_status(SYSTEM_TIMEOUT).await
            }?)
        }
        Request::State {
            actor: name,
            replace: Some(state),
            ..
        } => {
            refuse_during_install(handler, "state --replace")?;
            let target = actor(handler, &name).await?;
            let state = codec::encode(&state)?;
            target.replace_state(state, SYSTEM_TIMEOUT).await?;
            encode(&ReplacedResponse { replaced: name })
        }
        Request::Suspend { actor: name } => {
            refuse_during_install(handler, "suspend")?;
            let target = actor(handler, &name).await?;
            if is_suspended(&target).await? {
                return Err(CommandError::AlreadySuspended(name));
            }
            target.suspend(SYSTEM_TIMEOUT).await?;
            encode(&SuspendedResponse { suspended: name })
        }
        Request::Resume { actor: name } => {
            refuse_during_install(handler, "resume")?;
            let target = actor(handler, &name).await?;
            if !is_suspended(&target).await? {
                return Err(CommandError::NotSuspended(name));
            }
            target.resume(SYSTEM_TIMEOUT).await?;
            encode(&ResumedResponse { resumed: name })
        }
    }
}

async fn install(
    handler: &ReleaseHandler,
    version: &Version,
    permanent: bool,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Value, CommandError> {
    let report = handler
        .install(version, Some(report_progress(progress)))
        .await?;
    if permanent {
        handler.make_permanent(version).await?;
    }
    encode(&InstallResponse::new(&report, permanent))
}

/// Sends each phase of an install to the client as a progress line.
fn report_progress(progress: tokio::sync::mpsc::UnboundedSender<String>) -> ProgressFn {
    Arc::new(move |phase| {
        let _ = progress.send(describe_phase(&phase));
    })
}

/// The supervision tree as JSON, each actor with its plugin, version, state of running,
/// restarts, mailbox length, high-water mark, bound, refusals and undecodable messages
/// dropped; the resident libraries (in-process versions); the worker process of each
/// isolated plugin (pid, processes started); the releases.
///
/// The release facts (`release`, `releases`, `resident`) come from one published view of
/// the handler's state, as of its last finished operation; the tree and the actors'
/// figures are live, each supervisor and actor asked under a deadline (one that does not
/// answer in time shows as `busy`).
pub async fn status(handler: &ReleaseHandler) -> Value {
    // A report of plain strings, numbers and lists always encodes.
    serde_json::to_value(status_report(handler).await).unwrap_or(Value::Null)
}

/// The `status` report, typed (what [`status`] sends as JSON).
pub async fn status_report(handler: &ReleaseHandler) -> StatusResponse {
    let view = handler.read_view();
    let wait = status_wait(handler);
    let tree = list_supervisor("root".to_owned(), view.root_supervisor.clone(), wait).await;
    // Every actor is asked at once under one deadline, so actors stuck in callbacks cost
    // one wait, not one each.
    let mut actors = Vec::new();
    tree.collect_workers(&mut actors);
    let statuses: HashMap<ProcessId, ChildNode> = actors
        .iter()
        .zip(crate::runtime::status_all(&actors, wait).await)
        .map(|(actor, status)| {
            let entry = match status {
                Ok(status) => {
                    let (health, reason) = health_fields(&status);
                    ChildNode {
                        name: status.name.clone(),
                        plugin: status.plugin.clone(),
                        version: status.version.clone(),
                        state: if status.suspended {
                            "suspended"
                        } else {
                            "running"
                        }
                        .to_owned(),
                        restarts: Some(u64::from(status.restarts)),
                        mailbox: Some(status.mailbox_length as u64),
                        mailbox_high_water: Some(status.mailbox_high_water as u64),
                        max_mailbox: status.max_mailbox.map(|bound| bound as u64),
                        mailbox_refused: Some(status.mailbox_refused),
                        undecodable_messages: Some(status.undecodable_messages),
                        messages_handled: Some(status.messages_handled),
                        health: Some(health.to_owned()),
                        health_reason: reason,
                        ..ChildNode::default()
                    }
                }
                // Busy in a callback: the mailbox figures are the senders' own counts.
                Err(error) => ChildNode {
                    name: actor.name().map(str::to_owned),
                    code: Some(actor.code_label()),
                    state: "busy".to_owned(),
                    error: Some(error.to_string()),
                    mailbox: Some(actor.mailbox_length() as u64),
                    mailbox_high_water: Some(actor.mailbox_high_water() as u64),
                    max_mailbox: actor.max_mailbox().map(|bound| bound as u64),
                    mailbox_refused: Some(actor.mailbox_refused()),
                    undecodable_messages: Some(actor.undecodable_messages()),
                    ..ChildNode::default()
                },
            };
            (actor.id(), entry)
        })
        .collect();
    let unloaded = handler.unload_reports();
    StatusResponse {
        release: view.current.clone(),
        install_in_progress: handler.install_in_progress(),
        tree: tree.describe(&statuses),
        resident: view.resident.iter().map(ResidentEntry::from).collect(),
        workers: handler
            .isolated_workers()
            .iter()
            .map(WorkerEntry::from)
            .collect(),
        still_mapped_after_close: unloaded
            .iter()
            .filter_map(|report| match &report.outcome {
                crate::plugin::UnloadOutcome::Resident => Some(report.identity.to_string()),
                crate::plugin::UnloadOutcome::Pinned(reason) => {
                    Some(format!("{} (pinned: {reason})", report.identity))
                }
                _ => None,
            })
            .collect(),
        stuck_callbacks: crate::runtime::executor::stuck_callbacks()
            .iter()
            .map(StuckCallbackEntry::from)
            .collect(),
        releases: view.releases.iter().map(ReleaseEntry::from).collect(),
    }
}

/// An actor's health as `status` shows it: `healthy`, `degraded` or `unhealthy` (a failed
/// check is unhealthy), with the reason; `not reported (ABI 1.0)` for a plugin without a
/// `health` callback, `not reported` for a host-native behaviour.
fn health_fields(status: &crate::runtime::ActorStatus) -> (&'static str, Option<String>) {
    use graft_plugin::Health;
    match &status.health {
        Some(Ok(Health::Healthy)) => ("healthy", None),
        Some(Ok(Health::Degraded(reason))) => ("degraded", Some(reason.clone())),
        Some(Ok(Health::Unhealthy(reason))) => ("unhealthy", Some(reason.clone())),
        // A variant of a newer `graft-plugin` than this host's.
        Some(Ok(other)) => ("unhealthy", Some(format!("unknown health {other}"))),
        Some(Err(message)) => (
            "unhealthy",
            Some(format!("the health check failed: {message}")),
        ),
        None if status.plugin.is_some() => ("not reported (ABI 1.0)", None),
        None => ("not reported", None),
    }
}

/// A child's state as the wire spells it (`running`, `restarting`, `stopped`).
fn child_state(state: crate::supervisor::ChildState) -> &'static str {
    use crate::supervisor::ChildState;
    match state {
        ChildState::Running => "running",
        ChildState::Restarting => "restarting",
        ChildState::Stopped => "stopped",
    }
}

/// How long `status` waits for actors and supervisors to report.
const STATUS_WAIT: Duration = Duration::from_millis(300);

/// How long `status` waits while an install runs: actors in the middle of a migration show
/// as busy rather than hold up the answer.
const STATUS_WAIT_DURING_INSTALL: Duration = Duration::from_millis(30);

fn status_wait(handler: &ReleaseHandler) -> Duration {
    if handler.install_in_progress() {
        STATUS_WAIT_DURING_INSTALL
    } else {
        STATUS_WAIT
    }
}

/// A supervisor's children as it listed them, and its `count_children`; `None` when it
/// did not answer in time.
struct Listed {
    id: String,
    children: Option<Vec<(ChildInfo, Option<Listed>)>>,
    counts: Option<ChildCounts>,
}

/// Lists a supervisor and, recursively, its nested supervisors, each under `wait`.
fn list_supervisor(
    id: String,
    supervisor: SupervisorRef,
    wait: Duration,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Listed> + Send>> {
    Box::pin(async move {
        let Ok(answer) = tokio::time::timeout(wait, supervisor.which_children()).await else {
            return Listed {
                id,
                children: None,
                counts: None,
            };
        };
        let counts = tokio::time::timeout(wait, supervisor.count_children())
            .await
            .ok()
            .and_then(Result::ok);
        let mut children = Vec::new();
        for child in answer.unwrap_or_default() {
            let nested = match &child.child {
                Some(ChildRef::Supervisor(nested)) => {
                    Some(list_supervisor(child.id.clone(), nested.clone(), wait).await)
                }
                _ => None,
            };
            children.push((child, nested));
        }
        Listed {
            id,
            children: Some(children),
            counts,
        }
    })
}

impl Listed {
    fn collect_workers(&self, found: &mut Vec<ActorRef>) {
        for (child, nested) in self.children.iter().flatten() {
            match (&child.child, nested) {
                (_, Some(nested)) => nested.collect_workers(found),
                (Some(ChildRef::Worker(actor)), None) => found.push(actor.clone()),
                _ => {}
            }
        }
    }

    fn describe(&self, statuses: &HashMap<ProcessId, ChildNode>) -> TreeNode {
        let Some(children) = &self.children else {
            return TreeNode::Supervisor(SupervisorNode {
                id: self.id.clone(),
                supervisor: true,
                state: Some("busy".to_owned()),
                counts: None,
                children: Vec::new(),
            });
        };
        let children = children
            .iter()
            .map(|(child, nested)| match (&child.child, nested) {
                (_, Some(nested)) => nested.describe(statuses),
                (Some(ChildRef::Worker(actor)), None) => {
                    let mut entry =
                        statuses
                            .get(&actor.id())
                            .cloned()
                            .unwrap_or_else(|| ChildNode {
                                name: actor.name().map(str::to_owned),
                                state: "started after the count".to_owned(),
                                ..ChildNode::default()
                            });
                    entry.id = child.id.clone();
                    TreeNode::Child(entry)
                }
                // No process: `restarting` (a retry is queued) or `stopped`.
                _ => TreeNode::Child(ChildNode {
                    id: child.id.clone(),
                    state: child_state(child.state).to_owned(),
                    restarts: Some(u64::from(child.restarts)),
                    ..ChildNode::default()
                }),
            })
            .collect();
        TreeNode::Supervisor(SupervisorNode {
            id: self.id.clone(),
            supervisor: true,
            state: None,
            counts: self.counts.map(Into::into),
            children,
        })
    }
}
