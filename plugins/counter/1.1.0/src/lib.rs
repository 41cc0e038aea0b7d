//! Example plugin `counter` 1.1.0: a running count plus the history of recent changes.
//!
//! The state's shape changed from 1.0.0 (`{ count }`) to `{ count, history, limit }`:
//! `code_change` migrates up from 1.0.x (the release's `extra` may set `history_limit`), and
//! `downgrade` converts back to the 1.0.0 shape so 1.0.0 can take over with the count kept.

use graft_plugin::{
    CallResult, Context, EncodedState, Error, Flow, GenServer, Info, Payload, ReplyTo, StopReason,
    Version,
};
use serde::{Deserialize, Serialize};
use std::time::Duration;

const DEFAULT_LIMIT: usize = 16;

/// The state: a count and its most recent changes (newest last).
#[derive(Serialize, Deserialize)]
pub struct Counter {
    count: i64,
    history: Vec<i64>,
    limit: usize,
}

/// The 1.0.0 state shape.
#[derive(Serialize, Deserialize)]
struct CounterV1 {
    count: i64,
}

/// The release's `extra` for an upgrade.
#[derive(Deserialize, Default)]
struct UpgradeExtra {
    history_limit: Option<usize>,
}

/// Start arguments.
#[derive(Deserialize, Default)]
pub struct Args {
    #[serde(default)]
    start: i64,
    history_limit: Option<usize>,
}

/// Calls: those of 1.0.0 plus `History`.
#[derive(Deserialize)]
pub enum Request {
    /// The count.
    Get,
    /// Adds and returns the new count.
    Add(i64),
    /// Replies later, from a timer, with the count.
    GetLater { delay_ms: u64 },
    /// Stops normally, replying with the count.
    Stop,
    /// The recent changes.
    History,
}

/// Replies.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Response {
    /// A count.
    Count(i64),
    /// A history.
    History(Vec<i64>),
}

/// Casts.
#[derive(Deserialize)]
pub enum Command {
    /// Adds to the count.
    Add(i64),
    /// Sets the count to zero.
    Reset,
}

/// Info messages (timers).
#[derive(Serialize, Deserialize)]
pub enum Tick {
    /// Adds to the count.
    Add(i64),
    /// Replies to a deferred call.
    Answer(ReplyTo),
}

impl Counter {
    fn add(&mut self, amount: i64) {
        self.count += amount;
        self.history.push(amount);
        if self.history.len() > self.limit {
            let excess = self.history.len() - self.limit;
            self.history.drain(..excess);
        }
    }
}

impl GenServer for Counter {
    type Args = Args;
    type Call = Request;
    type Reply = Response;
    type Cast = Command;
    type Info = Tick;
    type Continue = ();

    fn init(args: Args, ctx: &mut Context<'_>) -> Result<Self, Error> {
        graft_plugin::tracing::info!(
            start = args.start,
            "counter 1.1.0 starting as {}",
            ctx.name()
        );
        Ok(Counter {
            count: args.start,
            history: Vec::new(),
            limit: args.history_limit.unwrap_or(DEFAULT_LIMIT),
        })
    }

    fn handle_call(
        &mut self,
        request: Request,
        from: ReplyTo,
        ctx: &mut Context<'_>,
    ) -> Result<CallResult<Response>, Error> {
        Ok(match request {
            Request::Get => CallResult::Reply(Response::Count(self.count)),
            Request::Add(amount) => {
                self.add(amount);
                CallResult::Reply(Response::Count(self.count))
            }
            Request::GetLater { delay_ms } => {
                ctx.send_after(Duration::from_millis(delay_ms), &Tick::Answer(from))?;
                CallResult::NoReply
            }
            Request::Stop => CallResult::Stop {
                reason: StopReason::Normal,
                reply: Some(Response::Count(self.count)),
            },
            Request::History => CallResult::Reply(Response::History(self.history.clone())),
        })
    }

    fn handle_cast(&mut self, command: Command, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
        match command {
            Command::Add(amount) => self.add(amount),
            Command::Reset => {
                self.count = 0;
                self.history.clear();
            }
        }
        Ok(Flow::Run)
    }

    fn handle_info(&mut self, info: Info<Tick>, ctx: &mut Context<'_>) -> Result<Flow, Error> {
        match info {
            Info::Message(Tick::Add(amount)) => self.add(amount),
            Info::Message(Tick::Answer(from)) => ctx.reply(from, &Response::Count(self.count))?,
            // Monitors and links are not used here. `Info` is `#[non_exhaustive]`: the
            // wildcard also covers kinds of info a later graft-plugin adds.
            _ => {}
        }
        Ok(Flow::Run)
    }

    fn code_change(from: &Version, old: Payload<'_>, extra: Payload<'_>) -> Result<Self, Error> {
        if from.major != 1 || from.minor != 0 {
            return Err(Error::new(format!(
                "counter 1.1.0 cannot upgrade from {from}"
            )));
        }
        let old: CounterV1 = old.decode()?;
        let extra: UpgradeExtra = if extra.bytes().is_empty() {
            UpgradeExtra::default()
        } else {
            extra.decode::<Option<UpgradeExtra>>()?.unwrap_or_default()
        };
        Ok(Counter {
            count: old.count,
            history: Vec::new(),
            limit: extra.history_limit.unwrap_or(DEFAULT_LIMIT),
        })
    }

    fn downgrade(&self, to: &Version, _extra: Payload<'_>) -> Result<EncodedState, Error> {
        if to.major != 1 || to.minor != 0 {
            return Err(Error::new(format!(
                "counter 1.1.0 cannot downgrade to {to}"
            )));
        }
        EncodedState::encode(&CounterV1 { count: self.count })
    }
}

graft_plugin::export_plugin!(Counter, name = "counter");
