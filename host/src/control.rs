//! The control socket: how operators' tools talk to a running host.
//!
//! A Unix socket at `<root>/run/control.sock` — the socket 0600 in a 0700 directory, so only
//! its owner controls the host. The protocol is newline-delimited JSON: one request object
//! per line, answered by zero or more `{"progress": …}` lines and then exactly one
//! `{"ok": true, "result": …}` or `{"ok": false, "error": "…"}` line. Several clients may be
//! connected at once; each connection carries any number of requests, one at a time.
//!
//! Invariants: a malformed, oversized or unknown request gets an error response and the
//! host carries on (an oversized line also closes that connection: the rest of it cannot be
//! framed); a client that disconnects mid-request affects nobody else.

use crate::release::handler::{InstallPhase, InstallReport, ProgressFn, ReleaseHandler};
use crate::runtime::{ActorRef, ProcessId, SystemError};
use crate::supervisor::{ChildRef, SupervisorRef};
use graft_plugin::codec;
use semver::Version;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The longest request line accepted, in bytes.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

/// How long system requests (`state`, `suspend`, …) wait for an actor.
const SYSTEM_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket's path under a root.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join("run").join("control.sock")
}

/// A request, as sent on the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The supervision tree, resident libraries, isolated plugins' workers and releases.
    Status {},
    /// Every release and its status.
    Releases {},
    /// Installs a release (upgrade or downgrade), optionally making it permanent.
    Install {
        /// The version.
        version: Version,
        /// Make it permanent once installed.
        #[serde(default)]
        permanent: bool,
    },
    /// Makes the current release permanent.
    MakePermanent {
        /// The version.
        version: Version,
    },
    /// Back to the release that was current before the last install (undoing it); refused
    /// when no install of the host's life is left to undo.
    Rollback {},
    /// Removes a release.
    Remove {
        /// The version.
        version: Version,
    },
    /// Calls an actor with a JSON message.
    Call {
        /// The actor's name.
        actor: String,
        /// The request.
        message: Value,
        /// The timeout in milliseconds (default 5000).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Casts a JSON message to an actor.
    Cast {
        /// The actor's name.
        actor: String,
        /// The message.
        message: Value,
    },
    /// An actor's state as JSON.
    State {
        /// The actor's name.
        actor: String,
    },
    /// Suspends an actor.
    Suspend {
        /// The actor's name.
        actor: String,
    },
    /// Resumes an actor.
    Resume {
        /// The actor's name.
        actor: String,
    },
}

/// A request failed.
#[derive(Debug, Error)]
pub enum ControlError {
    /// No host listens on the socket.
    #[error("no host is running at {path}: {source}")]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The socket exists but this user may not reach it.
    #[error(
        "permission denied: uid {uid} may not reach {path} ({source}); run graft as the user who started the host"
    )]
    PermissionDenied {
        /// The socket.
        path: PathBuf,
        /// This process's user.
        uid: u32,
        /// The refusal.
        source: std::io::Error,
    },
    /// The root (or the socket) could be written by another user, or is a link.
    #[error("refusing to use the root: {0}")]
    Untrusted(#[from] crate::trust::TrustError),
    /// The process serving the socket runs as another user.
    #[error(
        "refusing to talk to {path}: it is served by pid {pid} running as uid {uid}, not by uid {expected} \
         (an impostor could answer in the host's place)"
    )]
    Impostor {
        /// The socket.
        path: PathBuf,
        /// The peer's pid (0 when unknown).
        pid: i32,
        /// The peer's user.
        uid: u32,
        /// This user.
        expected: u32,
    },
    /// The socket could not be set up.
    #[error("cannot serve the control socket at {path}: {source}")]
    Bind {
        /// The socket (or its directory).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host went away while a request was in flight.
    #[error("the host at {path} died while handling the request ({detail}); see its log")]
    HostDied {
        /// The socket.
        path: PathBuf,
        /// What the client saw.
        detail: String,
    },
    /// The socket broke mid-request while the host still runs.
    #[error("the connection to the host broke: {0}")]
    Connection(#[from] std::io::Error),
    /// The host answered something that is not the protocol.
    #[error("the host sent an invalid response: {0}")]
    Protocol(String),
    /// The host refused or failed the request.
    #[error("{0}")]
    Failed(String),
    /// Another host already serves this root.
    #[error("a host is already running at {0}")]
    AlreadyRunning(PathBuf),
}

/// Serves the control socket until the task is dropped.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `<root>/run/control.sock` (0600, in a 0700 directory). A stale socket left by
    /// a killed host is replaced; a live one is an error.
    ///
    /// The root must pass [`crate::trust::check_root`]; `run/` and the socket are never
    /// followed when they are links, and a file that is not a socket is not removed.
    pub async fn bind(root: &Path) -> Result<ControlServer, ControlError> {
        use crate::trust::{Kind, check, check_root};
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        check_root(root)?;
        let path = socket_path(root);
        let directory = path.parent().expect("the socket has a directory");
        let bind_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ControlError::Bind { path, source }
        };
        if !check(directory, Kind::Directory)? {
            // `create` (not `create_dir_all`) fails on anything, a link included, that
            // appeared in the meantime.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(directory)
                .map_err(bind_error(directory))?;
        }
        // Checked above: a directory of ours, not a link.
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o700))
            .map_err(bind_error(directory))?;
        if check(&path, Kind::Socket)? {
            if UnixStream::connect(&path).await.is_ok() {
                return Err(ControlError::AlreadyRunning(path));
            }
            std::fs::remove_file(&path).map_err(bind_error(&path))?;
        }
        let listener = UnixListener::bind(&path).map_err(bind_error(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error(&path))?;
        Ok(ControlServer { listener, path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients forever, each on its own task.
    pub async fn serve(self, handler: Arc<ReleaseHandler>) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let handler = Arc::clone(&handler);
                    tokio::spawn(async move {
                        if let Err(error) = serve_client(stream, handler).await {
                            tracing::debug!("control client: {error}");
                        }
                    });
                }
                Err(error) => tracing::warn!("control socket accept failed: {error}"),
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn write_line(
    writer: &mut (impl AsyncWriteExt + Unpin),
    value: &Value,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

async fn serve_client(stream: UnixStream, handler: Arc<ReleaseHandler>) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let mut line = Vec::new();
        let read = (&mut reader)
            .take(MAX_REQUEST_BYTES + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if read == 0 {
            return Ok(());
        }
        if line.len() as u64 > MAX_REQUEST_BYTES {
            let error =
                format!("request too large: more than {MAX_REQUEST_BYTES} bytes without a newline");
            write_line(&mut writer, &json!({"ok": false, "error": error})).await?;
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        let request = match serde_json::from_str::<Request>(text.trim()) {
            Ok(request) => request,
            Err(error) => {
                let message = format!("invalid request: {error}");
                write_line(&mut writer, &json!({"ok": false, "error": message})).await?;
                continue;
            }
        };
        let (progress_sender, mut progress) = tokio::sync::mpsc::unbounded_channel::<String>();
        let work = {
            let handler = Arc::clone(&handler);
            tokio::spawn(async move { execute(&handler, request, progress_sender).await })
        };
        while let Some(message) = progress.recv().await {
            write_line(&mut writer, &json!({"progress": message})).await?;
        }
        let response = match work.await {
            Ok(Ok(result)) => json!({"ok": true, "result": result}),
            Ok(Err(error)) => json!({"ok": false, "error": error}),
            Err(error) => {
                json!({"ok": false, "error": format!("the request failed inside the host: {error}")})
            }
        };
        write_line(&mut writer, &response).await?;
    }
}

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

async fn actor(handler: &ReleaseHandler, name: &str) -> Result<ActorRef, String> {
    handler
        .runtime()
        .whereis(name)
        .ok_or_else(|| format!("no actor named {name:?}"))
}

fn system_error(error: SystemError) -> String {
    error.to_string()
}

async fn is_suspended(actor: &ActorRef) -> Result<bool, String> {
    Ok(actor
        .status(SYSTEM_TIMEOUT)
        .await
        .map_err(system_error)?
        .suspended)
}

/// Runs one request; progress lines go to `progress`.
async fn execute(
    handler: &ReleaseHandler,
    request: Request,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Value, String> {
    match request {
        Request::Status {} => Ok(status(handler).await),
        Request::Releases {} => {
            Ok(serde_json::to_value(handler.which_releases().await).unwrap_or_default())
        }
        Request::Install { version, permanent } => {
            install(handler, &version, permanent, progress).await
        }
        Request::MakePermanent { version } => {
            handler
                .make_permanent(&version)
                .await
                .map_err(|error| error.to_string())?;
            Ok(json!({"permanent": version}))
        }
        Request::Rollback {} => {
            let report = handler
                .rollback(Some(report_progress(progress)))
                .await
                .map_err(|error| error.to_string())?;
            Ok(install_value(&report, false))
        }
        Request::Remove { version } => {
            handler
                .remove(&version)
                .await
                .map_err(|error| error.to_string())?;
            Ok(json!({"removed": version}))
        }
        Request::Call {
            actor: name,
            message,
            timeout_ms,
        } => {
            let target = actor(handler, &name).await?;
            let request = codec::encode(&message).map_err(|error| error.to_string())?;
            let timeout = Duration::from_millis(timeout_ms.unwrap_or(5_000));
            let reply = target
                .call(request, timeout)
                .await
                .map_err(|error| error.to_string())?;
            rmp_serde::from_slice::<Value>(&reply)
                .map_err(|error| format!("the reply is not decodable: {error}"))
        }
        Request::Cast {
            actor: name,
            message,
        } => {
            let target = actor(handler, &name).await?;
            target
                .try_cast(codec::encode(&message).map_err(|error| error.to_string())?)
                .map_err(|error| error.to_string())?;
            Ok(json!({"cast": name}))
        }
        Request::State { actor: name } => actor(handler, &name)
            .await?
            .get_state(SYSTEM_TIMEOUT)
            .await
            .map_err(system_error),
        Request::Suspend { actor: name } => {
            let target = actor(handler, &name).await?;
            if is_suspended(&target).await? {
                return Err(format!("actor {name} is already suspended"));
            }
            target.suspend(SYSTEM_TIMEOUT).await.map_err(system_error)?;
            Ok(json!({"suspended": name}))
        }
        Request::Resume { actor: name } => {
            let target = actor(handler, &name).await?;
            if !is_suspended(&target).await? {
                return Err(format!("actor {name} is not suspended: nothing to resume"));
            }
            target.resume(SYSTEM_TIMEOUT).await.map_err(system_error)?;
            Ok(json!({"resumed": name}))
        }
    }
}

async fn install(
    handler: &ReleaseHandler,
    version: &Version,
    permanent: bool,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Value, String> {
    let report = handler
        .install(version, Some(report_progress(progress)))
        .await
        .map_err(|error| error.to_string())?;
    if permanent {
        handler
            .make_permanent(version)
            .await
            .map_err(|error| error.to_string())?;
    }
    Ok(install_value(&report, permanent))
}

/// Sends each phase of an install to the client as a progress line.
fn report_progress(progress: tokio::sync::mpsc::UnboundedSender<String>) -> ProgressFn {
    Arc::new(move |phase| {
        let _ = progress.send(describe_phase(&phase));
    })
}

/// An install's report as the protocol carries it.
fn install_value(report: &InstallReport, permanent: bool) -> Value {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    value["longest_pause_us"] = json!(report.longest_pause.as_micros() as u64);
    value["total_us"] = json!(report.total.as_micros() as u64);
    value["permanent"] = json!(permanent);
    value
}

/// The supervision tree as JSON, each actor with its plugin, version, state of running,
/// restarts, mailbox length, high-water mark, bound and refusals; the resident libraries
/// (in-process versions); the worker process of each isolated plugin (pid, processes
/// started); the releases.
pub async fn status(handler: &ReleaseHandler) -> Value {
    let root = handler.root_supervisor().await;
    // Every actor is asked at once under one deadline, so actors stuck in callbacks cost
    // one wait, not one each.
    let mut actors = Vec::new();
    collect_workers(root.clone(), &mut actors).await;
    let statuses: HashMap<ProcessId, Value> = actors
        .iter()
        .zip(crate::runtime::status_all(&actors, status_wait(handler)).await)
        .map(|(actor, status)| {
            let entry = match status {
                Ok(status) => json!({
                    "name": status.name,
                    "plugin": status.plugin,
                    "version": status.version,
                    "state": if status.suspended { "suspended" } else { "running" },
                    "restarts": status.restarts,
                    "mailbox": status.mailbox_length,
                    "mailbox_high_water": status.mailbox_high_water,
                    "max_mailbox": status.max_mailbox,
                    "mailbox_refused": status.mailbox_refused,
                }),
                // Busy in a callback: the mailbox figures are the senders' own counts.
                Err(error) => {
                    json!({
                        "name": actor.name(),
                        "code": actor.code_label(),
                        "state": "busy",
                        "error": error.to_string(),
                        "mailbox": actor.mailbox_length(),
                        "mailbox_high_water": actor.mailbox_high_water(),
                        "max_mailbox": actor.max_mailbox(),
                        "mailbox_refused": actor.mailbox_refused(),
                    })
                }
            };
            (actor.id(), entry)
        })
        .collect();
    let tree = describe_supervisor("root", root, &statuses).await;
    let (resident, unloaded) = handler.resident().await;
    json!({
        "release": handler.current_version().await,
        "install_in_progress": handler.install_in_progress(),
        "tree": tree,
        "resident": resident,
        "workers": handler.isolated_workers(),
        "still_mapped_after_close": unloaded
            .iter()
            .filter_map(|report| match &report.outcome {
                crate::plugin::UnloadOutcome::Resident => Some(report.identity.to_string()),
                crate::plugin::UnloadOutcome::Pinned(reason) => {
                    Some(format!("{} (pinned: {reason})", report.identity))
                }
                _ => None,
            })
            .collect::<Vec<_>>(),
        "stuck_callbacks": crate::runtime::executor::stuck_callbacks(),
        "releases": handler.which_releases().await,
    })
}

/// How long `status` waits for actors to report.
const STATUS_WAIT: Duration = Duration::from_millis(300);

/// How long `status` waits for actors while an install runs: actors in the middle of a
/// migration show as busy rather than hold up the answer.
const STATUS_WAIT_DURING_INSTALL: Duration = Duration::from_millis(30);

fn status_wait(handler: &ReleaseHandler) -> Duration {
    if handler.install_in_progress() {
        STATUS_WAIT_DURING_INSTALL
    } else {
        STATUS_WAIT
    }
}

fn collect_workers<'a>(
    supervisor: SupervisorRef,
    found: &'a mut Vec<ActorRef>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        for child in supervisor.which_children().await.unwrap_or_default() {
            match child.child {
                Some(ChildRef::Supervisor(nested)) => collect_workers(nested, found).await,
                Some(ChildRef::Worker(actor)) => found.push(actor),
                None => {}
            }
        }
    })
}

fn describe_supervisor<'a>(
    id: &'a str,
    supervisor: SupervisorRef,
    statuses: &'a HashMap<ProcessId, Value>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + Send + 'a>> {
    Box::pin(async move {
        let mut children = Vec::new();
        for child in supervisor.which_children().await.unwrap_or_default() {
            let entry = match &child.child {
                Some(ChildRef::Supervisor(nested)) => {
                    describe_supervisor(&child.id, nested.clone(), statuses).await
                }
                Some(ChildRef::Worker(actor)) => {
                    let mut entry = statuses.get(&actor.id()).cloned().unwrap_or_else(
                        || json!({"name": actor.name(), "state": "started after the count"}),
                    );
                    entry["id"] = json!(child.id);
                    entry
                }
                None => json!({"id": child.id, "state": "stopped", "restarts": child.restarts}),
            };
            children.push(entry);
        }
        json!({"id": id, "supervisor": true, "children": children})
    })
}

/// A connection to a running host.
pub struct ControlClient {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl ControlClient {
    /// Connects to the host serving `root`. Before anything is sent, the root must pass
    /// [`crate::trust::check_root`], the socket must be a socket of this user (not a link),
    /// and the process serving it must run as this user (`SO_PEERCRED`).
    pub async fn connect(root: &Path) -> Result<ControlClient, ControlError> {
        use crate::trust::{Kind, TrustError, check, check_root, current_user};
        use std::io::ErrorKind;
        let path = socket_path(root);
        let uid = current_user();
        let refused = |path: PathBuf, source: std::io::Error| match source.kind() {
            ErrorKind::PermissionDenied => ControlError::PermissionDenied { path, uid, source },
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                ControlError::NotRunning { path, source }
            }
            _ => ControlError::Connection(source),
        };
        check_root(root).map_err(|error| match error {
            TrustError::Inspect { path, source } => refused(path, source),
            error => ControlError::Untrusted(error),
        })?;
        match check(&path, Kind::Socket) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ControlError::NotRunning {
                    path,
                    source: ErrorKind::NotFound.into(),
                });
            }
            Err(TrustError::Inspect { source, .. }) => return Err(refused(path, source)),
            Err(error) => return Err(error.into()),
        }
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| refused(path.clone(), source))?;
        let peer = stream.peer_cred()?;
        if peer.uid() != uid {
            return Err(ControlError::Impostor {
                path,
                pid: peer.pid().unwrap_or(0),
                uid: peer.uid(),
                expected: uid,
            });
        }
        let (reader, writer) = stream.into_split();
        Ok(ControlClient {
            path,
            reader: BufReader::new(reader),
            writer,
        })
    }

    /// The connection ended before the answer: the host died, or (when it still accepts
    /// connections) it closed this one.
    async fn ended(&self, detail: String) -> ControlError {
        if UnixStream::connect(&self.path).await.is_ok() {
            ControlError::Protocol(format!(
                "the host closed the connection before answering ({detail})"
            ))
        } else {
            ControlError::HostDied {
                path: self.path.clone(),
                detail,
            }
        }
    }

    /// Sends a request; `on_progress` sees each progress line; returns the result.
    pub async fn request(
        &mut self,
        request: &Request,
        mut on_progress: impl FnMut(&str),
    ) -> Result<Value, ControlError> {
        let value = serde_json::to_value(request)
            .map_err(|error| ControlError::Protocol(error.to_string()))?;
        if let Err(error) = write_line(&mut self.writer, &value).await {
            return Err(self.ended(format!("sending the request: {error}")).await);
        }
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line).await {
                Ok(0) => return Err(self.ended("closed without an answer".to_owned()).await),
                Ok(_) => {}
                Err(error) => {
                    return Err(self.ended(format!("reading the answer: {error}")).await);
                }
            }
            let response: Value = serde_json::from_str(&line)
                .map_err(|error| ControlError::Protocol(format!("{error}: {line}")))?;
            if let Some(message) = response.get("progress").and_then(Value::as_str) {
                on_progress(message);
                continue;
            }
            return match response.get("ok").and_then(Value::as_bool) {
                Some(true) => Ok(response.get("result").cloned().unwrap_or(Value::Null)),
                Some(false) => Err(ControlError::Failed(
                    response
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_owned(),
                )),
                None => Err(ControlError::Protocol(line)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_the_documented_json() {
        let request: Request =
            serde_json::from_str(r#"{"command":"call","actor":"kv","message":{"Get":"a"}}"#)
                .unwrap();
        assert_eq!(
            request,
            Request::Call {
                actor: "kv".to_owned(),
                message: json!({"Get": "a"}),
                timeout_ms: None
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"launch"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"status","extra":1}"#).is_err());
    }
}

#[cfg(test)]
mod properties {
    //! The request decoder never panics, whatever the line.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_decode_to_a_request_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = serde_json::from_slice::<Request>(&bytes);
        }

        #[test]
        fn json_shaped_lines_decode_to_a_request_or_an_error(
            command in "(status|releases|install|make_permanent|rollback|remove|call|cast|state|suspend|resume|[a-z]{1,8})",
            field in "(version|actor|message|timeout_ms|permanent|[a-z]{1,6})",
            value in "(\"1.0.0\"|\"x\"|1|-1|true|null|\\{\\}|\\[\\]|\"[a-z]{0,5}\")",
        ) {
            let line = format!("{{\"command\":\"{command}\",\"{field}\":{value}}}");
            let _ = serde_json::from_str::<Request>(&line);
        }
    }
}
