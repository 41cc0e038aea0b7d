//! The host services a plugin reaches during a callback: messages, calls, timers,
//! deferred replies, its own name, continuations, and (ABI 1.2) the cluster: its hosts,
//! global names and monitors.
//!
//! A [`Context`] exists only for the duration of one callback (its lifetime is the
//! callback's) and is not `Send`: the host's services are valid on that thread, during that
//! call, and nowhere else. All raw calls into the host live in `export.rs`.

use crate::export::{self, RawContext};
use crate::{ReplyTo, abi, codec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// The calling actor's handle on the host, valid during one callback.
pub struct Context<'a> {
    raw: RawContext,
    _call: PhantomData<&'a mut ()>,
}

/// A pending timer, returned by [`Context::send_after`] and [`Context::send_interval`].
///
/// Only the host makes one: the id inside is private, so plugin code cannot forge a
/// reference to cancel a timer it was never given. Serializable, so it can be kept in the
/// state; one restored from state is only as good as the state it came from.
///
/// ```compile_fail,E0423
/// let forged = graft_plugin::TimerRef(5); // the id is private
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TimerRef(u64);

/// A host service failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContextError {
    /// No actor has this name.
    NotFound(String),
    /// The call did not get a reply in time.
    Timeout(String),
    /// The actor exited before it replied.
    Exited(String),
    /// The callee refused the message (it did not decode, or the callback failed).
    Refused(String),
    /// The service is not available here (for example outside an actor).
    Unavailable(String),
    /// A message or reply could not be encoded or decoded.
    Codec(String),
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextError::NotFound(detail) => write!(f, "actor not found: {detail}"),
            ContextError::Timeout(detail) => write!(f, "call timed out: {detail}"),
            ContextError::Exited(detail) => write!(f, "actor exited: {detail}"),
            ContextError::Refused(detail) => write!(f, "message refused: {detail}"),
            ContextError::Unavailable(detail) => write!(f, "service unavailable: {detail}"),
            ContextError::Codec(detail) => write!(f, "codec error: {detail}"),
        }
    }
}

impl std::error::Error for ContextError {}

impl ContextError {
    fn from_service(code: u32, detail: String) -> ContextError {
        match code {
            abi::SERVICE_NOT_FOUND => ContextError::NotFound(detail),
            abi::SERVICE_TIMEOUT => ContextError::Timeout(detail),
            abi::SERVICE_EXITED => ContextError::Exited(detail),
            abi::SERVICE_REFUSED => ContextError::Refused(detail),
            _ => ContextError::Unavailable(detail),
        }
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ContextError> {
    codec::encode(value).map_err(|error| ContextError::Codec(error.to_string()))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl<'a> Context<'a> {
    pub(crate) fn new(raw: RawContext) -> Context<'a> {
        Context {
            raw,
            _call: PhantomData,
        }
    }

    /// The calling actor's registered name.
    pub fn name(&self) -> String {
        export::host_self_name(self.raw)
    }

    /// Sends a cast to a named actor.
    pub fn cast<M: Serialize + ?Sized>(
        &mut self,
        to: &str,
        message: &M,
    ) -> Result<(), ContextError> {
        self.send_kind(abi::SEND_CAST, to, message)
    }

    /// Sends an info message to a named actor.
    pub fn send<M: Serialize + ?Sized>(
        &mut self,
        to: &str,
        message: &M,
    ) -> Result<(), ContextError> {
        self.send_kind(abi::SEND_INFO, to, message)
    }

    fn send_kind<M: Serialize + ?Sized>(
        &mut self,
        kind: u32,
        to: &str,
        message: &M,
    ) -> Result<(), ContextError> {
        let bytes = encode(message)?;
        match export::host_send(self.raw, kind, to, &bytes) {
            abi::SERVICE_OK => Ok(()),
            code => Err(ContextError::from_service(code, to.to_owned())),
        }
    }

    /// Calls a named actor and waits at most `timeout` for its reply. The host keeps
    /// running other actors meanwhile; a call cycle ends in a timeout, never a hang.
    pub fn call<M: Serialize + ?Sized, R: DeserializeOwned>(
        &mut self,
        to: &str,
        request: &M,
        timeout: Duration,
    ) -> Result<R, ContextError> {
        let bytes = encode(request)?;
        let (code, reply) = export::host_call(self.raw, to, &bytes, millis(timeout));
        if code != abi::SERVICE_OK {
            let detail = String::from_utf8_lossy(&reply).into_owned();
            return Err(ContextError::from_service(code, detail));
        }
        codec::decode(&reply).map_err(|error| ContextError::Codec(error.to_string()))
    }

    /// Sends `message` to this actor as an info message after `delay`.
    pub fn send_after<M: Serialize + ?Sized>(
        &mut self,
        delay: Duration,
        message: &M,
    ) -> Result<TimerRef, ContextError> {
        self.timer(delay, false, message)
    }

    /// Sends `message` to this actor as an info message every `period` until cancelled.
    pub fn send_interval<M: Serialize + ?Sized>(
        &mut self,
        period: Duration,
        message: &M,
    ) -> Result<TimerRef, ContextError> {
        self.timer(period, true, message)
    }

    fn timer<M: Serialize + ?Sized>(
        &mut self,
        delay: Duration,
        repeat: bool,
        message: &M,
    ) -> Result<TimerRef, ContextError> {
        let bytes = encode(message)?;
        match export::host_send_after(self.raw, millis(delay), repeat, &bytes) {
            0 => Err(ContextError::Unavailable("timers".to_owned())),
            id => Ok(TimerRef(id)),
        }
    }

    /// Cancels a timer. Returns whether it was still pending.
    pub fn cancel_timer(&mut self, timer: TimerRef) -> bool {
        export::host_cancel_timer(self.raw, timer.0)
    }

    /// Replies to a call answered with [`crate::CallResult::NoReply`].
    pub fn reply<R: Serialize + ?Sized>(
        &mut self,
        to: ReplyTo,
        reply: &R,
    ) -> Result<(), ContextError> {
        let bytes = encode(reply)?;
        match export::host_reply(self.raw, to.0, &bytes) {
            abi::SERVICE_OK => Ok(()),
            code => Err(ContextError::from_service(code, format!("reply {}", to.0))),
        }
    }

    /// The cluster's live hosts, this one included, sorted (OTP's `[node() | nodes()]`).
    /// A host that is not in a cluster is not in a cluster answers
    /// [`ContextError::Unavailable`], as does a host older than ABI 1.2.
    pub fn hosts(&mut self) -> Result<Vec<String>, ContextError> {
        let (code, bytes) = export::host_hosts(self.raw);
        if code != abi::SERVICE_OK {
            let detail = String::from_utf8_lossy(&bytes).into_owned();
            return Err(ContextError::from_service(code, detail));
        }
        codec::decode(&bytes).map_err(|error| ContextError::Codec(error.to_string()))
    }

    /// Registers this actor's name cluster-wide (OTP's `global:register_name`): from
    /// every host of the cluster, `call`/`cast`/`send` to the name reach it. Fails with
    /// [`ContextError::Refused`] ("global name \"kv\" is already started on host H") when
    /// another host holds the name, and [`ContextError::Unavailable`] outside a cluster.
    pub fn register_global(&mut self) -> Result<(), ContextError> {
        match export::host_register_global(self.raw) {
            (abi::SERVICE_OK, _) => Ok(()),
            (code, bytes) => Err(ContextError::from_service(
                code,
                String::from_utf8_lossy(&bytes).into_owned(),
            )),
        }
    }

    /// Monitors the actor `to` names (`"kv"`, or `"kv@host-a"` on a given host), here or
    /// on another host of the cluster: when it exits, this actor gets
    /// [`crate::Info::Down`] with the returned monitor id and its reason, `noproc` if it
    /// does not exist, or `host down` if its host dies (OTP's `monitor/2`).
    pub fn monitor(&mut self, to: &str) -> Result<u64, ContextError> {
        match export::host_monitor(self.raw, to) {
            None => Err(ContextError::Unavailable(
                "monitor (the host's ABI is older than 1.2)".to_owned(),
            )),
            Some(0) => Err(ContextError::NotFound(to.to_owned())),
            Some(monitor) => Ok(monitor),
        }
    }

    /// Turns [`crate::Info::HostUp`] and [`crate::Info::HostDown`] on (or off) for this
    /// actor: a host joining or leaving the cluster (OTP's `net_kernel:monitor_nodes`).
    pub fn monitor_hosts(&mut self, on: bool) -> Result<(), ContextError> {
        match export::host_monitor_hosts(self.raw, on) {
            abi::SERVICE_OK => Ok(()),
            code => Err(ContextError::from_service(code, "monitor_hosts".to_owned())),
        }
    }

    /// Asks for an inactivity timeout (OTP's `timeout` in a callback's return): if no
    /// message (call, cast, info, `down`, trapped exit) arrives within `timeout` after this
    /// callback, [`crate::GenServer::handle_timeout`] runs. Any message cancels it, and it
    /// lasts one callback: each callback that wants one asks again. System messages
    /// (`suspend`, `get_state`, …) do not cancel it, and it does not fire while the actor
    /// is suspended.
    ///
    /// ```
    /// use graft_plugin::{Context, Error, Flow};
    /// use std::time::Duration;
    ///
    /// # struct Session { idle: u32 }
    /// // In any callback: "tell me if nothing happens for 30 s".
    /// fn handle_cast(session: &mut Session, ctx: &mut Context<'_>) -> Result<Flow, Error> {
    ///     session.idle = 0;
    ///     ctx.set_inactivity_timeout(Duration::from_secs(30));
    ///     Ok(Flow::Run)
    /// }
    /// ```
    pub fn set_inactivity_timeout(&mut self, timeout: Duration) {
        export::host_output(
            self.raw,
            abi::OUTPUT_TIMEOUT,
            &millis(timeout).to_le_bytes(),
        );
    }

    /// Asks for `handle_continue(argument)` to run right after this callback, before any
    /// other message (OTP's `{continue, Argument}`).
    pub fn continue_with<C: Serialize + ?Sized>(
        &mut self,
        argument: &C,
    ) -> Result<(), ContextError> {
        let bytes = encode(argument)?;
        export::host_output(self.raw, abi::OUTPUT_CONTINUE, &bytes);
        Ok(())
    }
}
