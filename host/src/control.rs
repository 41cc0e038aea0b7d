//! The control socket: how operators' tools talk to a running host.
//!
//! A Unix socket at `<root>/run/control.sock` — the socket 0600 in a 0700 directory, so only
//! its owner controls the host. The protocol is newline-delimited JSON: one request object
//! per line, answered by zero or more `{"progress": …}` lines and then exactly one
//! `{"ok": true, "result": …}` or `{"ok": false, "error": "…"}` line. Several clients may be
//! connected at once; each connection carries any number of requests, one at a time.
//!
//! Submodules: `server` (binding and serving, one task per client), `limits` (what a
//! client may hold: connections, buffered bytes, idle time, accept backoff), `commands`
//! (what each request does, and `status`; the HTTP observer runs them too), `protocol` (the typed responses, one per request
//! kind, shared by the server and the client), `client` (connecting — after checking the
//! root and the server's peer — and sending requests, returning typed responses).
//!
//! Invariants: a malformed, oversized or unknown request gets an error response and the
//! host carries on (an oversized line also closes that connection: the rest of it cannot be
//! framed); a client that disconnects mid-request affects nobody else.
//!
//! Resources are bounded ([`ControlLimits`]): at most `max_connections` clients at once (one
//! more gets a one-line error and is closed unread); request bytes buffered per connection
//! (`max_request_bytes`) and in total (`max_buffered_bytes`, beyond 8 KiB per connection),
//! taken without waiting, so a connection that cannot get bytes is told so and closed
//! rather than blocked holding partial bytes; an emptied buffer is freed, and freed large
//! buffers go back to the OS; a connection idle for `idle_timeout` is closed; a failed
//! accept (at the file-descriptor limit) pauses accepting, with one warning per interval.

mod client;
pub(crate) mod commands;
mod limits;
pub mod protocol;
mod server;

pub use client::ControlClient;
pub use commands::{status, status_report};
pub use limits::{
    ControlLimits, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BUFFERED_BYTES, DEFAULT_MAX_CONNECTIONS,
};
pub use server::{ControlServer, HostClaim};

use semver::Version;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::io::AsyncWriteExt;

/// The longest request line accepted, in bytes.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

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
    /// The plan an install of `version` would run, in order; changes nothing.
    Plan {
        /// The version.
        version: Version,
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
    /// An actor's state as JSON; with `replace`, replaces it instead (`sys:replace_state`,
    /// refused unless the actor is suspended).
    State {
        /// The actor's name.
        actor: String,
        /// The new state, as JSON in the shape of the plugin's own state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replace: Option<Value>,
        /// The raw state (`sys:get_state`) instead of what the plugin's `format_status`
        /// shows (secrets redacted).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        raw: bool,
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

impl Request {
    /// The command's name as the wire spells it (`status`, `make_permanent`, …).
    pub fn command(&self) -> &'static str {
        match self {
            Request::Status {} => "status",
            Request::Releases {} => "releases",
            Request::Install { .. } => "install",
            Request::Plan { .. } => "plan",
            Request::MakePermanent { .. } => "make_permanent",
            Request::Rollback {} => "rollback",
            Request::Remove { .. } => "remove",
            Request::Call { .. } => "call",
            Request::Cast { .. } => "cast",
            Request::State { .. } => "state",
            Request::Suspend { .. } => "suspend",
            Request::Resume { .. } => "resume",
        }
    }
}

/// A request failed.
#[derive(Debug, Error)]
#[non_exhaustive]
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
    /// Who serves the socket could not be learned, so nothing is sent.
    #[error("refusing to talk to {path}: cannot learn which user serves it: {source}")]
    PeerUnknown {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
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
    /// The host sent a line that is not JSON.
    #[error("the host sent an invalid response: {source}: {line}")]
    InvalidLine {
        /// The line.
        line: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be encoded (a message JSON cannot carry).
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// The host's answer to `command` is not the response type the client expects (a
    /// field renamed or missing, of another type): names the field's path.
    #[error("the host sent an invalid response to `{command}` {source}")]
    Response {
        /// The request's command.
        command: &'static str,
        /// Where and what serde expected.
        #[source]
        source: protocol::ResponseError,
    },
    /// The host refused or failed the request.
    #[error("{0}")]
    Failed(String),
    /// Another host already serves this root.
    #[error("a host is already running at {0}")]
    AlreadyRunning(PathBuf),
    /// Another host holds this root (starting, or serving): nothing was booted.
    #[error(
        "another host is starting or running on the root {0} (it holds the root's lock); \
         refusing before running any plugin code"
    )]
    RootInUse(PathBuf),
    /// The root's lock could not be taken.
    #[error("cannot lock the root {path}: {source}")]
    Lock {
        /// The root.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

async fn write_line(
    writer: &mut (impl AsyncWriteExt + Unpin),
    value: &Value,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
            command in "(status|releases|install|plan|make_permanent|rollback|remove|call|cast|state|suspend|resume|[a-z]{1,8})",
            field in "(version|actor|message|timeout_ms|permanent|[a-z]{1,6})",
            value in "(\"1.0.0\"|\"x\"|1|-1|true|null|\\{\\}|\\[\\]|\"[a-z]{0,5}\")",
        ) {
            let line = format!("{{\"command\":\"{command}\",\"{field}\":{value}}}");
            let _ = serde_json::from_str::<Request>(&line);
        }
    }
}
