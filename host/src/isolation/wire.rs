//! The frames the host and a worker process exchange over one actor's connection.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of MessagePack
//! (`rmp_serde`, compact: both ends are the same `graft` build, and [`PROTOCOL`] in the
//! first request of every connection says so). Byte payloads (messages, states, replies)
//! are MessagePack `bin`, not arrays of integers.
//!
//! The conversation on a connection is strictly request/answer, driven by the host:
//! - host → worker: [`ToWorker::Load`], answered by [`FromWorker::Loaded`];
//! - host → worker: [`ToWorker::Call`] (one callback), answered by any number of
//!   [`FromWorker::Service`] (each answered by one [`ToWorker::Answer`]) and
//!   [`FromWorker::Log`] (not answered), then exactly one [`FromWorker::Done`] (for a
//!   batch of casts, [`FromWorker::CastsDone`]: one result per cast that ran);
//! - host → worker: [`ToWorker::Drop`]: the worker drops the instance and closes.
//!
//! So neither side ever has two frames of its own in flight on one connection, and a
//! frame is always written whole by one thread.

use crate::plugin::{CallbackError, Outputs, PluginIdentity, SendKind, ServiceError};
use graft_plugin::StopReason;
use serde::{Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// How long a side waits for the other's next frame by polling before it blocks: an
/// answer usually comes within microseconds, and a thread that blocks (its CPU going idle,
/// on a virtual machine its vCPU halting) takes tens of microseconds to wake.
pub const SPIN_FOR_FRAME: std::time::Duration = std::time::Duration::from_micros(50);

/// Polls `stream` for up to `budget` until bytes (or the end of the stream) wait on it,
/// so the blocking read that follows returns at once. Unbuffered bytes only: call it when
/// the reader's buffer is empty.
pub fn spin_until_readable(stream: &std::os::unix::net::UnixStream, budget: std::time::Duration) {
    use std::os::fd::AsRawFd;
    let start = std::time::Instant::now();
    let mut byte = 0u8;
    loop {
        for _ in 0..32 {
            // SAFETY: `recv` writes at most one byte into `byte`, a local that outlives
            // the call; the descriptor is borrowed from `stream`, open for the call.
            let received = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    (&raw mut byte).cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            // Bytes, the end of the stream, or an error the read will report.
            if received >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock {
                return;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= budget {
            return;
        }
    }
}

/// The protocol version; a worker refuses a `Load` of another version. 2: the cluster
/// services of ABI 1.2 ([`Service::Hosts`], [`Service::RegisterGlobal`],
/// [`Service::Monitor`], [`Service::MonitorHosts`]).
pub const PROTOCOL: u32 = 2;

/// The largest frame either side accepts: the largest encoded state a plugin may return
/// (1 GiB) and room for the frame around it.
pub const MAX_FRAME: usize = (1 << 30) + (1 << 20);

/// Serde for `Vec<u8>` as MessagePack `bin`.
mod bin {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::ser::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
            Ok(bytes.to_vec())
        }

        fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(bytes)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(bytes)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        deserializer.deserialize_byte_buf(BytesVisitor)
    }

    pub mod option {
        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        #[derive(Serialize, Deserialize)]
        struct Wrapped(#[serde(with = "super")] Vec<u8>);

        pub fn serialize<S: Serializer>(
            bytes: &Option<Vec<u8>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(bytes) => serializer.serialize_some(&Wrapped(bytes.clone())),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Vec<u8>>, D::Error> {
            Ok(Option::<Wrapped>::deserialize(deserializer)?.map(|wrapped| wrapped.0))
        }
    }
}

/// A frame from the host to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// Load (or reuse) a plugin library for this connection; answered by `Loaded`.
    Load {
        /// [`PROTOCOL`].
        protocol: u32,
        /// The library file.
        path: PathBuf,
        /// The SHA-256 its bytes must have (64 hex digits).
        sha256: Option<String>,
        /// The name its header must declare.
        name: Option<String>,
        /// The version its header must declare.
        version: Option<String>,
    },
    /// Run one callback on this connection's instance, as actor `actor`.
    Call {
        /// The actor's label (what `Context::name` returns).
        actor: String,
        /// The callback.
        callback: Callback,
    },
    /// The answer to the worker's last `Service` request.
    Answer(Answer),
    /// Drop the instance and close the connection.
    Drop,
}

/// One callback, with its inputs.
#[derive(Debug, Serialize, Deserialize)]
pub enum Callback {
    /// `init`: creates the connection's instance.
    Start {
        /// Encoded start arguments.
        #[serde(with = "bin")]
        args: Vec<u8>,
    },
    /// `restore_state`: creates the instance from state in this version's shape.
    Restore {
        /// Encoded state.
        #[serde(with = "bin")]
        state: Vec<u8>,
    },
    /// `code_change`: creates the instance from an older version's state.
    CodeChange {
        /// The older version.
        from: String,
        /// Its encoded state.
        #[serde(with = "bin")]
        state: Vec<u8>,
        /// The script's `extra`.
        #[serde(with = "bin")]
        extra: Vec<u8>,
    },
    /// `handle_call`.
    HandleCall {
        /// The request.
        #[serde(with = "bin")]
        request: Vec<u8>,
        /// The reply token.
        token: u64,
    },
    /// `handle_cast`.
    HandleCast {
        /// The message.
        #[serde(with = "bin")]
        message: Vec<u8>,
    },
    /// `handle_info`.
    HandleInfo {
        /// The `INFO_*` kind.
        kind: u32,
        /// The message.
        #[serde(with = "bin")]
        message: Vec<u8>,
    },
    /// `handle_continue`.
    HandleContinue {
        /// The argument.
        #[serde(with = "bin")]
        argument: Vec<u8>,
    },
    /// `terminate`.
    Terminate {
        /// The stop reason, as text.
        reason: String,
    },
    /// `encode_state`.
    EncodeState,
    /// `handle_cast` for each message in order, stopping after the first that fails,
    /// stops the actor or asks for a continuation; answered by [`FromWorker::CastsDone`].
    HandleCasts {
        /// The messages.
        messages: Vec<WireBytes>,
    },
    /// `health` (ABI 1.1): answered with the encoded health as the reply, or no reply
    /// when the plugin does not implement it.
    Health,
    /// `format_status` (ABI 1.1): answered with the formatted state as the state, or no
    /// state when the plugin does not implement it.
    FormatStatus,
    /// `downgrade_state`.
    Downgrade {
        /// The older version.
        to: String,
        /// The script's `extra`.
        #[serde(with = "bin")]
        extra: Vec<u8>,
    },
}

impl Callback {
    /// The callback's name, as [`CallbackError`]s of in-process instances name it.
    pub fn name(&self) -> &'static str {
        match self {
            Callback::Start { .. } => "init",
            Callback::Restore { .. } => "restore_state",
            Callback::CodeChange { .. } => "code_change",
            Callback::HandleCall { .. } => "handle_call",
            Callback::HandleCast { .. } | Callback::HandleCasts { .. } => "handle_cast",
            Callback::HandleInfo { .. } => "handle_info",
            Callback::HandleContinue { .. } => "handle_continue",
            Callback::Terminate { .. } => "terminate",
            Callback::EncodeState => "encode_state",
            Callback::Health => "health",
            Callback::FormatStatus => "format_status",
            Callback::Downgrade { .. } => "downgrade",
        }
    }
}

/// A frame from a worker to the host.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// The answer to `Load`: what was loaded, or why not (the loader's message).
    Loaded(Result<LoadedInfo, String>),
    /// A host service the callback in progress asks for; answered by `Answer`.
    Service(Service),
    /// A log record of the plugin (or of the worker) during the callback.
    Log(LogRecord),
    /// The callback's result.
    Done(Result<WireOutputs, WireCallbackError>),
    /// The results of a `HandleCasts`, one per message that ran, in order.
    CastsDone(Vec<Result<WireOutputs, WireCallbackError>>),
}

/// What a worker loaded, from the library's checked header.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadedInfo {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The SHA-256 of the file's bytes.
    pub sha256: String,
    /// The `graft-plugin` version it was built with.
    pub api_version: String,
}

/// A host service request.
#[derive(Debug, Serialize, Deserialize)]
pub enum Service {
    /// [`crate::plugin::HostServices::send`].
    Send {
        /// The target's name.
        to: String,
        /// Cast (`true`) or info.
        cast: bool,
        /// The message.
        #[serde(with = "bin")]
        message: Vec<u8>,
    },
    /// [`crate::plugin::HostServices::call`].
    Call {
        /// The target's name.
        to: String,
        /// The request.
        #[serde(with = "bin")]
        message: Vec<u8>,
        /// The timeout.
        timeout_ms: u64,
    },
    /// [`crate::plugin::HostServices::start_timer`].
    StartTimer {
        /// The delay.
        delay_ms: u64,
        /// Whether it repeats.
        repeat: bool,
        /// The message.
        #[serde(with = "bin")]
        message: Vec<u8>,
    },
    /// [`crate::plugin::HostServices::cancel_timer`].
    CancelTimer {
        /// The timer.
        timer: u64,
    },
    /// [`crate::plugin::HostServices::reply`].
    Reply {
        /// The reply token.
        token: u64,
        /// The reply.
        #[serde(with = "bin")]
        message: Vec<u8>,
    },
    /// [`crate::plugin::HostServices::hosts`].
    Hosts,
    /// [`crate::plugin::HostServices::register_global`].
    RegisterGlobal,
    /// [`crate::plugin::HostServices::monitor`].
    Monitor {
        /// `name` or `name@host`.
        to: String,
    },
    /// [`crate::plugin::HostServices::monitor_hosts`].
    MonitorHosts {
        /// On or off.
        on: bool,
    },
}

/// The answer to a [`Service`] request.
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    /// `send` and `reply`.
    Done(Result<(), WireServiceError>),
    /// `call`.
    Reply(Result<WireBytes, WireServiceError>),
    /// `start_timer`.
    Timer(Option<u64>),
    /// `cancel_timer`.
    Cancelled(bool),
    /// `hosts`.
    Hosts(Result<Vec<String>, WireServiceError>),
    /// `monitor`: the monitor id.
    Monitor(Result<u64, WireServiceError>),
}

/// Bytes as MessagePack `bin` (for use inside `Result`).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireBytes(#[serde(with = "bin")] pub Vec<u8>);

/// A [`ServiceError`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireServiceError {
    /// No such actor.
    NotFound(String),
    /// Timed out.
    Timeout(String),
    /// Exited.
    Exited {
        /// The actor.
        actor: String,
        /// Its reason.
        reason: String,
    },
    /// Refused.
    Refused {
        /// The actor.
        actor: String,
        /// Why.
        reason: String,
    },
    /// Not available here.
    Unavailable(String),
}

impl From<ServiceError> for WireServiceError {
    fn from(error: ServiceError) -> WireServiceError {
        match error {
            ServiceError::NotFound(name) => WireServiceError::NotFound(name),
            ServiceError::Timeout(name) => WireServiceError::Timeout(name),
            ServiceError::Exited { actor, reason } => WireServiceError::Exited { actor, reason },
            ServiceError::Refused { actor, reason } => WireServiceError::Refused { actor, reason },
            ServiceError::Unavailable(what) => WireServiceError::Unavailable(what.to_owned()),
        }
    }
}

impl From<WireServiceError> for ServiceError {
    fn from(error: WireServiceError) -> ServiceError {
        match error {
            WireServiceError::NotFound(name) => ServiceError::NotFound(name),
            WireServiceError::Timeout(name) => ServiceError::Timeout(name),
            WireServiceError::Exited { actor, reason } => ServiceError::Exited { actor, reason },
            WireServiceError::Refused { actor, reason } => ServiceError::Refused { actor, reason },
            // `Unavailable` holds a static text: the host's known ones are kept, anything
            // else (none today) reads as the generic one.
            WireServiceError::Unavailable(what) => ServiceError::Unavailable(static_text(&what)),
        }
    }
}

fn static_text(text: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "send",
        "call",
        "reply",
        "hosts",
        "register_global",
        "monitor",
        "monitor_hosts",
        "a call from inside a callback on a current-thread runtime",
        "the host connection",
    ];
    KNOWN
        .iter()
        .find(|known| **known == text)
        .copied()
        .unwrap_or("this service")
}

/// [`Outputs`] on the wire.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WireOutputs {
    /// A reply.
    #[serde(with = "bin::option")]
    pub reply: Option<Vec<u8>>,
    /// Encoded state.
    #[serde(with = "bin::option")]
    pub state: Option<Vec<u8>>,
    /// A stop, as text.
    pub stop: Option<String>,
    /// A continuation.
    #[serde(with = "bin::option")]
    pub continue_with: Option<Vec<u8>>,
    /// A message.
    pub message: Option<String>,
    /// An inactivity timeout, in milliseconds.
    pub inactivity_timeout_ms: Option<u64>,
}

impl From<Outputs> for WireOutputs {
    fn from(outputs: Outputs) -> WireOutputs {
        WireOutputs {
            reply: outputs.reply,
            state: outputs.state,
            stop: outputs.stop.map(|reason| reason.to_string()),
            continue_with: outputs.continue_with,
            message: outputs.message,
            inactivity_timeout_ms: outputs
                .inactivity_timeout
                .map(|timeout| u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

impl From<WireOutputs> for Outputs {
    fn from(outputs: WireOutputs) -> Outputs {
        Outputs {
            reply: outputs.reply,
            state: outputs.state,
            stop: outputs.stop.map(|text| StopReason::from_text(&text)),
            continue_with: outputs.continue_with,
            message: outputs.message,
            oversized: None,
            ignored: false,
            inactivity_timeout: outputs
                .inactivity_timeout_ms
                .map(std::time::Duration::from_millis),
        }
    }
}

/// Which [`CallbackError`] variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// `Failed`.
    Failed,
    /// `Panicked`.
    Panicked,
    /// `BadInput`.
    BadInput,
    /// `Protocol`.
    Protocol,
    /// `Ignored`: `init` declined to start (its message is what declined).
    Ignored,
}

/// A [`CallbackError`] on the wire (the host knows the plugin and the callback).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireCallbackError {
    /// The variant.
    pub kind: ErrorKind,
    /// Its message.
    pub message: String,
}

impl From<CallbackError> for WireCallbackError {
    fn from(error: CallbackError) -> WireCallbackError {
        let kind = match &error {
            CallbackError::Failed { .. } => ErrorKind::Failed,
            CallbackError::Panicked { .. } => ErrorKind::Panicked,
            CallbackError::BadInput { .. } => ErrorKind::BadInput,
            CallbackError::Ignored { .. } => ErrorKind::Ignored,
            _ => ErrorKind::Protocol,
        };
        // Variants without a plain message (an output over its cap) travel as their text.
        #[allow(unreachable_patterns)]
        let message = match error {
            CallbackError::Failed { message, .. }
            | CallbackError::Panicked { message, .. }
            | CallbackError::BadInput { message, .. }
            | CallbackError::Protocol { message, .. } => message,
            CallbackError::Ignored { code } => code,
            other => other.to_string(),
        };
        WireCallbackError { kind, message }
    }
}

impl WireCallbackError {
    /// A protocol error with `message`.
    pub fn protocol(message: impl Into<String>) -> WireCallbackError {
        WireCallbackError {
            kind: ErrorKind::Protocol,
            message: message.into(),
        }
    }

    /// The host-side error, naming `plugin` and `callback`.
    pub fn into_error(self, plugin: PluginIdentity, callback: &'static str) -> CallbackError {
        let message = self.message;
        match self.kind {
            ErrorKind::Failed => CallbackError::Failed {
                plugin,
                callback,
                message,
            },
            ErrorKind::Panicked => CallbackError::Panicked {
                plugin,
                callback,
                message,
            },
            ErrorKind::BadInput => CallbackError::BadInput {
                plugin,
                callback,
                message,
            },
            ErrorKind::Protocol => CallbackError::Protocol {
                plugin,
                callback,
                message,
            },
            ErrorKind::Ignored => CallbackError::Ignored {
                code: plugin.to_string(),
            },
        }
    }
}

/// A log record forwarded from a worker.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogRecord {
    /// 1 error … 5 trace (the plugin ABI's levels).
    pub level: u32,
    /// The plugin's target (module path), or the worker's.
    pub target: String,
    /// The formatted message.
    pub message: String,
    /// The plugin's name, empty for the worker's own records.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// The actor.
    pub actor: String,
}

/// The [`SendKind`] a `Send` service means.
pub fn send_kind(cast: bool) -> SendKind {
    if cast { SendKind::Cast } else { SendKind::Info }
}

/// Writes one frame (length and body in one `write_all`).
pub fn write_frame<T: Serialize>(writer: &mut impl Write, value: &T) -> io::Result<()> {
    let mut buffer = vec![0u8; 4];
    rmp_serde::encode::write(&mut buffer, value).map_err(io::Error::other)?;
    let length = buffer.len() - 4;
    if length > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a frame of {length} bytes exceeds the cap of {MAX_FRAME}"),
        ));
    }
    buffer[..4].copy_from_slice(&(length as u32).to_be_bytes());
    writer.write_all(&buffer)?;
    writer.flush()
}

/// Reads one frame; `UnexpectedEof` when the peer closed the connection.
pub fn read_frame<T: for<'de> Deserialize<'de>>(reader: &mut impl Read) -> io::Result<T> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes exceeds the cap of {MAX_FRAME}"),
        ));
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    rmp_serde::from_slice(&body).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_bytes_as_bin() {
        let frame = ToWorker::Call {
            actor: "kv".to_owned(),
            callback: Callback::HandleCall {
                request: vec![200; 1000],
                token: 7,
            },
        };
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &frame).unwrap();
        // `bin` costs one byte per byte; an array of integers would cost two above 127.
        assert!(buffer.len() < 1100, "{} bytes", buffer.len());
        let back: ToWorker = read_frame(&mut buffer.as_slice()).unwrap();
        match back {
            ToWorker::Call {
                actor,
                callback: Callback::HandleCall { request, token },
            } => {
                assert_eq!((actor.as_str(), request, token), ("kv", vec![200; 1000], 7));
            }
            other => panic!("{other:?}"),
        }
        let outputs = FromWorker::Done(Ok(WireOutputs {
            reply: Some(vec![1, 2, 3]),
            stop: Some("shutdown: drained".to_owned()),
            inactivity_timeout_ms: Some(250),
            ..WireOutputs::default()
        }));
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &outputs).unwrap();
        match read_frame::<FromWorker>(&mut buffer.as_slice()).unwrap() {
            FromWorker::Done(Ok(outputs)) => {
                let outputs = Outputs::from(outputs);
                assert_eq!(outputs.reply, Some(vec![1, 2, 3]));
                assert_eq!(
                    outputs.stop,
                    Some(StopReason::Shutdown(Some("drained".to_owned())))
                );
                assert_eq!(
                    outputs.inactivity_timeout,
                    Some(std::time::Duration::from_millis(250))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_truncated_frame_is_an_error() {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &ToWorker::Drop).unwrap();
        buffer.pop();
        assert!(read_frame::<ToWorker>(&mut buffer.as_slice()).is_err());
    }
}
