//! `graft-plugin`: what a Graft plugin author writes against.
//!
//! A plugin is a `cdylib` crate with one type that implements [`GenServer`] — the type is
//! the actor's state — and one [`export_plugin!`] line. The author writes no `unsafe` and
//! no `extern`; the macro generates the C ABI described in [`abi`]. The host loads the
//! library, runs each actor's callbacks on the actor's own task, and upgrades actors from
//! one plugin version to the next with their state.
//!
//! # Example
//!
//! ```
//! use graft_plugin::{CallResult, Context, Error, Flow, GenServer, ReplyTo, export_plugin};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! pub struct Counter {
//!     count: i64,
//! }
//!
//! #[derive(Deserialize)]
//! pub enum Request {
//!     Get,
//! }
//!
//! #[derive(Deserialize)]
//! pub enum Command {
//!     Add(i64),
//! }
//!
//! impl GenServer for Counter {
//!     type Args = i64;
//!     type Call = Request;
//!     type Reply = i64;
//!     type Cast = Command;
//!     type Info = ();
//!     type Continue = ();
//!
//!     fn init(start: i64, _ctx: &mut Context<'_>) -> Result<Self, Error> {
//!         Ok(Counter { count: start })
//!     }
//!
//!     fn handle_call(
//!         &mut self,
//!         request: Request,
//!         _from: ReplyTo,
//!         _ctx: &mut Context<'_>,
//!     ) -> Result<CallResult<i64>, Error> {
//!         match request {
//!             Request::Get => Ok(CallResult::Reply(self.count)),
//!         }
//!     }
//!
//!     fn handle_cast(&mut self, command: Command, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
//!         match command {
//!             Command::Add(n) => self.count += n,
//!         }
//!         Ok(Flow::Run)
//!     }
//! }
//!
//! // Name and version default to the crate's; `name = "counter"` overrides the name.
//! export_plugin!(Counter, name = "counter");
//! # fn main() {}
//! ```
//!
//! # State migration (appup-style)
//!
//! Upgrading, the **new** version's [`GenServer::code_change`] receives the old version,
//! the old state ([`Payload::decode`] it into a type you declare for the old shape) and the
//! `extra` value from the release. Downgrading, the **current** (newer) version's
//! [`GenServer::downgrade`] converts its state to the older shape, which the older plugin
//! then decodes as its own state. Both default to "the bytes are already the right shape".
//!
//! # Wire format
//!
//! Everything crossing the boundary is MessagePack with named fields ([`codec`]), so a
//! field added with `#[serde(default)]` stays compatible between versions.
//!
//! # Rules for plugin code
//!
//! A plugin never runs tokio, spawns no threads and keeps no durable state in statics:
//! the host may unload the library once no actor uses it. Use the [`Context`] for
//! messages and timers; `log` and `tracing` macros are forwarded to the host's subscriber.
#![deny(missing_docs)]
#![deny(improper_ctypes_definitions)]

pub mod abi;
pub mod codec;
mod context;
#[doc(hidden)]
pub mod export;
mod logging;

pub use context::{Context, ContextError, TimerRef};
pub use semver::Version;

/// Re-exported so plugins log through the same `log` the forwarding logger is installed in.
pub use log;
/// Re-exported so plugins trace through the same `tracing` the forwarding subscriber is
/// installed in.
pub use tracing;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A GenServer-style actor behaviour; the implementing type is the actor's state.
///
/// Callbacks run one at a time on the actor's task. Errors are values: returning `Err`
/// stops the actor with that error as its exit reason (its supervisor decides what next).
/// A panic is caught inside the plugin and treated the same way.
pub trait GenServer: Serialize + DeserializeOwned + Send + 'static {
    /// Start arguments.
    type Args: DeserializeOwned;
    /// Call requests.
    type Call: DeserializeOwned;
    /// Call replies.
    type Reply: Serialize;
    /// Cast messages.
    type Cast: DeserializeOwned;
    /// Info messages of the plugin's own (timers, plain sends).
    type Info: DeserializeOwned;
    /// The argument of `handle_continue`.
    type Continue: DeserializeOwned;

    /// Creates the state. Call [`Context::continue_with`] to run `handle_continue` before
    /// any message. Return [`Error::ignore`] to decline to start (OTP's `ignore`); any
    /// other error fails the start (OTP's `{stop, Reason}`: `terminate` does not run).
    fn init(args: Self::Args, ctx: &mut Context<'_>) -> Result<Self, Error>;

    /// Handles a call: reply now, reply later through `from` ([`Context::reply`]), or stop.
    fn handle_call(
        &mut self,
        request: Self::Call,
        from: ReplyTo,
        ctx: &mut Context<'_>,
    ) -> Result<CallResult<Self::Reply>, Error>;

    /// Handles a cast. The default fails, which stops the actor with the reason
    /// "this plugin does not handle casts …", as a missing `handle_cast` does in OTP (an
    /// `undef` crash) and Elixir's default `handle_cast` does: a cast to the wrong actor is
    /// a bug to hear of, not to drop.
    fn handle_cast(&mut self, message: Self::Cast, ctx: &mut Context<'_>) -> Result<Flow, Error> {
        let _ = (message, ctx);
        Err(Error::new(
            "this plugin does not handle casts (GenServer::handle_cast is not implemented)",
        ))
    }

    /// Handles an info message: the plugin's own, a monitor's `down`, or a trapped exit.
    /// The default drops it with a warning, as OTP's default `handle_info` does.
    fn handle_info(
        &mut self,
        message: Info<Self::Info>,
        ctx: &mut Context<'_>,
    ) -> Result<Flow, Error> {
        let _ = (message, ctx);
        log::warn!("info message dropped: this plugin does not handle info messages");
        Ok(Flow::Run)
    }

    /// Runs when the inactivity timeout the previous callback asked for
    /// ([`Context::set_inactivity_timeout`]) passed without a message: OTP's `timeout`
    /// info message. Ask again here to keep a periodic idle check going. The default logs a
    /// warning and keeps running.
    fn handle_timeout(&mut self, ctx: &mut Context<'_>) -> Result<Flow, Error> {
        let _ = ctx;
        log::warn!("inactivity timeout dropped: this plugin does not handle timeouts");
        Ok(Flow::Run)
    }

    /// Runs right after a callback that called [`Context::continue_with`], before any
    /// other message. The default fails, as a missing `handle_continue` does in OTP.
    fn handle_continue(
        &mut self,
        argument: Self::Continue,
        ctx: &mut Context<'_>,
    ) -> Result<Flow, Error> {
        let _ = (argument, ctx);
        Err(Error::new(
            "handle_continue is not implemented by this plugin",
        ))
    }

    /// Runs when the actor stops (not on a brutal kill, nor after a failed `init`). The
    /// default does nothing.
    ///
    /// To fail, panic: as in OTP, a crash in `terminate` becomes the actor's exit reason
    /// (`… terminate panicked: MESSAGE`), replacing the reason it was stopping with, so
    /// its supervisor and monitors see an abnormal exit.
    fn terminate(&mut self, reason: &StopReason, ctx: &mut Context<'_>) {
        let _ = (reason, ctx);
    }

    /// Upgrade: builds this version's state from an older version's. The default decodes
    /// the old bytes as `Self`, which works while every change is a `#[serde(default)]` field.
    ///
    /// Under `graft dev`, a rebuild of the same version gets `from_version` with the build
    /// metadata `dev.N` (`0.1.0+dev.1`): `from_version.build.starts_with("dev.")`.
    fn code_change(
        from_version: &Version,
        old_state: Payload<'_>,
        extra: Payload<'_>,
    ) -> Result<Self, Error> {
        let _ = (from_version, extra);
        old_state.decode()
    }

    /// Downgrade: converts this state to the shape of the older version `to_version`,
    /// which then decodes it as its own state. The default encodes `self` unchanged.
    fn downgrade(&self, to_version: &Version, extra: Payload<'_>) -> Result<EncodedState, Error> {
        let _ = (to_version, extra);
        EncodedState::encode(self)
    }

    /// The actor's own view of its health (ABI 1.1): `graft status` shows it, and the watch
    /// mode's health gate (`--auto-permanent`) rolls a release back when an actor reports
    /// [`Health::Unhealthy`]. Called between messages, so keep it cheap and do not block.
    ///
    /// The default reports [`Health::Healthy`]: an actor that runs and answers is healthy
    /// unless it says otherwise (the host cannot tell an overridden `health` from this
    /// default). Hosts older than ABI 1.1 never call it.
    fn health(&self) -> Health {
        Health::Healthy
    }

    /// What operators and logs see of the state (ABI 1.1; OTP's `format_status`):
    /// `graft state` shows it, so redact secrets here. Encode any serializable view, for
    /// example the state with its secret fields replaced. The default is the state itself.
    ///
    /// The raw state is still what migrations, snapshots and `graft state --raw` use.
    fn format_status(&self) -> Result<EncodedState, Error> {
        EncodedState::encode(self)
    }
}

/// An actor's own view of its health, from [`GenServer::health`].
///
/// ```
/// use graft_plugin::Health;
///
/// let health = Health::Degraded("cache cold, serving from disk".to_owned());
/// assert!(!health.is_unhealthy());
/// assert_eq!(health.to_string(), "degraded: cache cold, serving from disk");
/// assert!(Health::Unhealthy("database unreachable".to_owned()).is_unhealthy());
/// assert_eq!(Health::Healthy.to_string(), "healthy");
///
/// // It crosses the boundary in the wire format, like every other value.
/// let bytes = graft_plugin::codec::encode(&health).unwrap();
/// assert_eq!(graft_plugin::codec::decode::<Health>(&bytes).unwrap(), health);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Health {
    /// Working as intended.
    Healthy,
    /// Working, with a problem worth an operator's attention (the reason). Does not stop
    /// a release from becoming permanent.
    Degraded(String),
    /// Not doing its job (the reason). The watch mode's health gate rolls back a release
    /// while any actor reports this.
    Unhealthy(String),
}

impl Health {
    /// Whether this is [`Health::Unhealthy`].
    pub fn is_unhealthy(&self) -> bool {
        matches!(self, Health::Unhealthy(_))
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => f.write_str("healthy"),
            Health::Degraded(reason) => write!(f, "degraded: {reason}"),
            Health::Unhealthy(reason) => write!(f, "unhealthy: {reason}"),
        }
    }
}

/// What `handle_call` decided.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallResult<R> {
    /// Reply now.
    Reply(R),
    /// Reply later with [`Context::reply`] and the call's [`ReplyTo`].
    NoReply,
    /// Stop the actor, replying first when `reply` is set.
    Stop {
        /// Why the actor stops.
        reason: StopReason,
        /// A last reply to the caller.
        reply: Option<R>,
    },
}

/// What a cast, info or continue callback decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flow {
    /// Keep running.
    Run,
    /// Stop with a reason.
    Stop(StopReason),
}

/// Why an actor stopped. `Normal` and `Shutdown` are clean exits (a transient child is not
/// restarted, nothing is logged as a crash); anything else is an error.
///
/// `Shutdown(Some(info))` is OTP's `{shutdown, Info}`: a clean exit that says why. It
/// crosses to `terminate`, monitors' [`Down`] and links' [`Exit`] intact. As in OTP, only
/// `Normal` leaves a linked actor that does not trap exits running: `Shutdown`, with or
/// without details, takes it down with the same reason.
///
/// ```
/// use graft_plugin::StopReason;
///
/// let reason = StopReason::Shutdown(Some("drained".to_owned()));
/// assert!(reason.is_clean());
/// assert_eq!(reason.to_string(), "shutdown: drained");
/// assert_eq!(StopReason::from_text("shutdown: drained"), reason);
/// assert_eq!(StopReason::from_text("shutdown"), StopReason::Shutdown(None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// A normal exit.
    Normal,
    /// Stopped by its supervisor or the host, or a clean exit with details
    /// (OTP's `shutdown` and `{shutdown, Info}`).
    Shutdown(Option<String>),
    /// Any other reason: a crash.
    Error(String),
}

impl StopReason {
    /// Parses the text form: `normal`, `shutdown`, `shutdown: INFO`, or anything else as an
    /// error.
    pub fn from_text(text: &str) -> StopReason {
        match text {
            "normal" => StopReason::Normal,
            "shutdown" => StopReason::Shutdown(None),
            other => match other.strip_prefix("shutdown: ") {
                Some(info) => StopReason::Shutdown(Some(info.to_owned())),
                None => StopReason::Error(other.to_owned()),
            },
        }
    }

    /// Whether this is a clean exit (`normal` or `shutdown`).
    pub fn is_clean(&self) -> bool {
        !matches!(self, StopReason::Error(_))
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Normal => f.write_str("normal"),
            StopReason::Shutdown(None) => f.write_str("shutdown"),
            StopReason::Shutdown(Some(info)) => write!(f, "shutdown: {info}"),
            StopReason::Error(text) => f.write_str(text),
        }
    }
}

impl Serialize for StopReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StopReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(StopReason::from_text(&text))
    }
}

/// Identifies a caller waiting for a reply. Serializable, so it can be kept in the state
/// and answered later with [`Context::reply`].
///
/// Only the host makes one (it arrives in [`GenServer::handle_call`]): the token inside is
/// private, so plugin code cannot forge a reply to a call it was never given. One restored
/// from state is only as good as the state it came from; the host refuses a reply whose
/// token is not one of this actor's pending calls ([`ContextError::Refused`]).
///
/// ```compile_fail,E0423
/// let forged = graft_plugin::ReplyTo(5); // the token is private
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReplyTo(u64);

/// An info message as the plugin sees it.
///
/// `#[non_exhaustive]`, as every public enum a plugin matches on: a later graft-plugin may
/// add a kind of info, so a `match` needs a wildcard arm.
///
/// ```compile_fail,E0004
/// # use graft_plugin::Info;
/// fn describe(info: Info<()>) -> &'static str {
///     match info {
///         Info::Message(()) => "mine",
///         Info::Down(_) => "down",
///         Info::Exit(_) => "exit",
///         // Without `_ => …` this does not compile.
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Info<T> {
    /// The plugin's own info message (a timer, or a send from another actor).
    Message(T),
    /// A monitored actor exited.
    Down(Down),
    /// A linked actor exited and this actor traps exits.
    Exit(Exit),
    /// A host joined the cluster (only after `ctx.monitor_hosts(true)`; OTP's `nodeup`).
    HostUp(HostEvent),
    /// A host of the cluster died or left (only after `ctx.monitor_hosts(true)`; OTP's
    /// `nodedown`).
    HostDown(HostEvent),
}

/// A host of the cluster came or went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HostEvent {
    /// The host's name in the cluster.
    pub host: String,
    /// Why it went (`host down`), if it did.
    pub reason: Option<String>,
}

impl HostEvent {
    /// An event about `host`, with the reason it went, if it did.
    pub fn new(host: impl Into<String>, reason: Option<String>) -> HostEvent {
        HostEvent {
            host: host.into(),
            reason,
        }
    }
}

/// A monitor fired: the monitored actor exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Down {
    /// The monitor's id.
    pub monitor: u64,
    /// The monitored actor's name.
    pub actor: String,
    /// Its exit reason.
    pub reason: StopReason,
}

/// A linked actor exited (delivered only to actors that trap exits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// The linked actor's name.
    pub actor: String,
    /// Its exit reason.
    pub reason: StopReason,
}

/// A callback's error: becomes the actor's exit reason.
///
/// Like `anyhow::Error`, any `std::error::Error` converts into it with `?`.
///
/// From [`GenServer::init`], [`Error::ignore`] declines to start instead (OTP's `ignore`):
/// no actor runs, its name is free, and the start is not a failure. A supervisor keeps a
/// permanent or transient child's spec with no process, and drops a temporary one.
///
/// ```
/// use graft_plugin::{Context, Error};
///
/// # struct Args { enabled: bool }
/// # struct Worker;
/// fn init(args: Args, _ctx: &mut Context<'_>) -> Result<Worker, Error> {
///     if !args.enabled {
///         // Not needed on this node: start nothing, and that is not an error.
///         return Err(Error::ignore());
///     }
///     Ok(Worker)
/// }
///
/// assert!(Error::ignore().is_ignore());
/// assert!(!Error::new("disk full").is_ignore());
/// assert_eq!(Error::ignore().message(), "ignore");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    ignore: bool,
}

impl Error {
    /// An error with this message.
    pub fn new(message: impl fmt::Display) -> Error {
        Error {
            message: message.to_string(),
            ignore: false,
        }
    }

    /// From `init`: decline to start (OTP's `ignore`). Returned from any other callback it
    /// is an ordinary error with the message `ignore`.
    pub fn ignore() -> Error {
        Error {
            message: "ignore".to_owned(),
            ignore: true,
        }
    }

    /// Whether this is [`Error::ignore`].
    pub fn is_ignore(&self) -> bool {
        self.ignore
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Error {
        Error::new(error)
    }
}

/// Encoded bytes handed to a migration callback: an old state or a release's `extra`.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    bytes: &'a [u8],
}

impl<'a> Payload<'a> {
    /// Wraps encoded bytes.
    pub fn new(bytes: &'a [u8]) -> Payload<'a> {
        Payload { bytes }
    }

    /// Decodes into a type you declare (for example the old version's state shape).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        codec::decode(self.bytes).map_err(Error::new)
    }

    /// The raw encoded bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// An encoded state: for another version, returned by [`GenServer::downgrade`], or the
/// view operators see, returned by [`GenServer::format_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedState(Vec<u8>);

impl EncodedState {
    /// Encodes a value of the older version's state shape.
    pub fn encode<T: Serialize + ?Sized>(state: &T) -> Result<EncodedState, Error> {
        codec::encode(state).map(EncodedState).map_err(Error::new)
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}
