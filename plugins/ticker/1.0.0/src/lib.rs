//! Example plugin `ticker` 1.0.0: periodic work, and one-shot work at boot.
//!
//! One plugin, two roles chosen by the start arguments:
//!
//! - `"ticker"`: `init` starts a repeating timer with [`Context::send_interval`]; every
//!   `Tick` the host delivers to `handle_info` is counted. `StopTicking` cancels the timer.
//! - `"startup"`: a task that runs once while the supervision tree boots and then exits
//!   normally. `init` returns at once after asking for a continuation
//!   ([`Context::continue_with`], OTP's `{continue, ...}`), so the supervisor is not held
//!   up; `handle_continue` does the one-time work — telling the `notify` actor, if any — and
//!   returns `Flow::Stop(StopReason::Normal)`. Run it as a transient child: a normal exit is
//!   not restarted.

use graft_plugin::{CallResult, Context, ContextError, Error, Flow, GenServer, Info, ReplyTo};
use graft_plugin::{StopReason, TimerRef};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The default tick period.
const DEFAULT_PERIOD_MS: u64 = 50;

fn default_period_ms() -> u64 {
    DEFAULT_PERIOD_MS
}

/// What an actor of this plugin does.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Counts ticks of a repeating timer.
    Ticker,
    /// Runs once at boot, then exits normally.
    Startup,
}

/// Start arguments: `{ "role": "ticker" | "startup", "period_ms": u64, "notify": name }`.
#[derive(Deserialize)]
pub struct Args {
    role: Role,
    /// The tick period (role ticker), default 50 ms.
    #[serde(default = "default_period_ms")]
    period_ms: u64,
    /// An actor to tell that startup work is done (role startup).
    #[serde(default)]
    notify: Option<String>,
}

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Ticker {
    role: Role,
    period_ms: u64,
    notify: Option<String>,
    /// Ticks counted so far.
    ticks: u64,
    /// The repeating timer while it runs.
    timer: Option<TimerRef>,
}

/// Calls.
#[derive(Deserialize)]
pub enum Request {
    /// The number of ticks counted so far.
    Ticks,
    /// Cancels the repeating timer; replies whether it was running.
    StopTicking,
}

/// Replies, untagged so they read naturally (`3`, `true`).
#[derive(Serialize)]
#[serde(untagged)]
pub enum Response {
    /// A tick count.
    Ticks(u64),
    /// Whether a timer was stopped.
    Stopped(bool),
}

/// Info messages: what the repeating timer delivers.
#[derive(Serialize, Deserialize)]
pub enum Signal {
    /// One period has passed.
    Tick,
}

/// The cast sent to the `notify` actor when startup work is done. It has the shape of the
/// `kv` plugin's `Put` cast, so a `kv` actor records `<startup actor name> = "done"`.
#[derive(Serialize)]
pub enum Notice {
    /// Sets `key` to `value`.
    Put {
        /// The startup actor's name.
        key: String,
        /// Always `"done"`.
        value: String,
    },
}

impl GenServer for Ticker {
    type Args = Args;
    type Call = Request;
    type Reply = Response;
    type Cast = ();
    type Info = Signal;
    type Continue = ();

    fn init(args: Args, ctx: &mut Context<'_>) -> Result<Self, Error> {
        let mut ticker = Ticker {
            role: args.role,
            period_ms: args.period_ms,
            notify: args.notify,
            ticks: 0,
            timer: None,
        };
        match ticker.role {
            Role::Ticker => {
                if ticker.period_ms == 0 {
                    return Err(Error::new("ticker: period_ms must be at least 1"));
                }
                let period = Duration::from_millis(ticker.period_ms);
                ticker.timer = Some(ctx.send_interval(period, &Signal::Tick)?);
            }
            Role::Startup => ctx.continue_with(&())?,
        }
        Ok(ticker)
    }

    fn handle_call(
        &mut self,
        request: Request,
        _from: ReplyTo,
        ctx: &mut Context<'_>,
    ) -> Result<CallResult<Response>, Error> {
        Ok(CallResult::Reply(match request {
            Request::Ticks => Response::Ticks(self.ticks),
            Request::StopTicking => Response::Stopped(match self.timer.take() {
                Some(timer) => ctx.cancel_timer(timer),
                None => false,
            }),
        }))
    }

    fn handle_info(&mut self, info: Info<Signal>, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
        match info {
            // A tick already on its way when the timer was cancelled is not counted.
            Info::Message(Signal::Tick) if self.timer.is_some() => self.ticks += 1,
            // Monitors and links are not used here. `Info` is `#[non_exhaustive]`: the
            // wildcard also covers kinds of info a later graft-plugin adds.
            _ => {}
        }
        Ok(Flow::Run)
    }

    fn handle_continue(&mut self, _argument: (), ctx: &mut Context<'_>) -> Result<Flow, Error> {
        let name = ctx.name();
        graft_plugin::log::info!("startup task {name} running its one-time work");
        if let Some(notify) = &self.notify {
            let notice = Notice::Put {
                key: name.clone(),
                value: "done".to_owned(),
            };
            match ctx.cast(notify, &notice) {
                Ok(()) => {}
                Err(ContextError::NotFound(_)) => {
                    graft_plugin::log::warn!("startup task {name}: no actor {notify:?} to notify");
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Flow::Stop(StopReason::Normal))
    }
}

graft_plugin::export_plugin!(Ticker, name = "ticker");
