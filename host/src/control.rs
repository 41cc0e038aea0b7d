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

use crate::release::handler::{
    InstallPhase, ProgressFn, ReleaseHandler, ReleaseInfo, ReleaseStatus,
};
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
    /// Back to the permanent release, or (when the current one is permanent) to the
    /// newest old one.
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
    /// The socket broke mid-request.
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
    pub async fn bind(root: &Path) -> Result<ControlServer, ControlError> {
        use std::os::unix::fs::PermissionsExt;
        let path = socket_path(root);
        let directory = path.parent().expect("the socket has a directory");
        std::fs::create_dir_all(directory)?;
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o700))?;
        if path.exists() {
            if UnixStream::connect(&path).await.is_ok() {
                return Err(ControlError::AlreadyRunning(path));
            }
            std::fs::remove_file(&path)?;
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
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
            let target = rollback_target(&handler.which_releases().await)?;
            install(handler, &target, false, progress).await
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
            actor(handler, &name)
                .await?
                .suspend(SYSTEM_TIMEOUT)
                .await
                .map_err(system_error)?;
            Ok(json!({"suspended": name}))
        }
        Request::Resume { actor: name } => {
            actor(handler, &name)
                .await?
                .resume(SYSTEM_TIMEOUT)
                .await
                .map_err(system_error)?;
            Ok(json!({"resumed": name}))
        }
    }
}

/// OTP's rollback: to the permanent release when the current one is not permanent, else
/// to the newest old release.
pub fn rollback_target(releases: &[ReleaseInfo]) -> Result<Version, String> {
    let running = releases
        .iter()
        .find(|release| release.running)
        .ok_or("no release is running")?;
    if running.status != ReleaseStatus::Permanent {
        return releases
            .iter()
            .find(|release| release.status == ReleaseStatus::Permanent)
            .map(|release| release.version.clone())
            .ok_or_else(|| "no permanent release to roll back to".to_owned());
    }
    releases
        .iter()
        .filter(|release| release.status == ReleaseStatus::Old)
        .map(|release| release.version.clone())
        .max()
        .ok_or_else(|| {
            format!(
                "{} is permanent and there is no old release to roll back to",
                running.version
            )
        })
}

async fn install(
    handler: &ReleaseHandler,
    version: &Version,
    permanent: bool,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Value, String> {
    let sender = progress;
    let report_phase: ProgressFn = Arc::new(move |phase| {
        let _ = sender.send(describe_phase(&phase));
    });
    let report = handler
        .install(version, Some(report_phase))
        .await
        .map_err(|error| error.to_string())?;
    if permanent {
        handler
            .make_permanent(version)
            .await
            .map_err(|error| error.to_string())?;
    }
    let mut value = serde_json::to_value(&report).unwrap_or_default();
    value["longest_pause_us"] = json!(report.longest_pause.as_micros() as u64);
    value["total_us"] = json!(report.total.as_micros() as u64);
    value["permanent"] = json!(permanent);
    Ok(value)
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
        .zip(crate::runtime::status_all(&actors, STATUS_WAIT).await)
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
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl ControlClient {
    /// Connects to the host serving `root`.
    pub async fn connect(root: &Path) -> Result<ControlClient, ControlError> {
        let path = socket_path(root);
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| ControlError::NotRunning { path, source })?;
        let (reader, writer) = stream.into_split();
        Ok(ControlClient {
            reader: BufReader::new(reader),
            writer,
        })
    }

    /// Sends a request; `on_progress` sees each progress line; returns the result.
    pub async fn request(
        &mut self,
        request: &Request,
        mut on_progress: impl FnMut(&str),
    ) -> Result<Value, ControlError> {
        let value = serde_json::to_value(request)
            .map_err(|error| ControlError::Protocol(error.to_string()))?;
        write_line(&mut self.writer, &value).await?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(ControlError::Protocol(
                    "the host closed the connection".to_owned(),
                ));
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

    fn release(version: &str, status: ReleaseStatus, running: bool) -> ReleaseInfo {
        ReleaseInfo {
            name: "demo".to_owned(),
            version: Version::parse(version).unwrap(),
            status,
            running,
        }
    }

    #[test]
    fn rollback_goes_to_the_permanent_release_or_else_the_newest_old_one() {
        let upgraded = [
            release("1.0.0", ReleaseStatus::Permanent, false),
            release("1.1.0", ReleaseStatus::Current, true),
        ];
        assert_eq!(rollback_target(&upgraded).unwrap(), Version::new(1, 0, 0));
        let made_permanent = [
            release("1.0.0", ReleaseStatus::Old, false),
            release("1.1.0", ReleaseStatus::Old, false),
            release("1.2.0", ReleaseStatus::Permanent, true),
        ];
        assert_eq!(
            rollback_target(&made_permanent).unwrap(),
            Version::new(1, 1, 0)
        );
        let alone = [release("1.0.0", ReleaseStatus::Permanent, true)];
        assert!(
            rollback_target(&alone)
                .unwrap_err()
                .contains("no old release")
        );
    }

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
