//! Example plugin `counter` 1.0.0: a running count. Its state is `{ count }`.
//!
//! Version 1.1.0 (`plugins/counter/1.1.0`) adds a history and migrates to and from this
//! shape; the two are loaded side by side by the tests.

use graft_plugin::{CallResult, Context, Error, Flow, GenServer, Info, ReplyTo, StopReason};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The state: just a count.
#[derive(Serialize, Deserialize)]
pub struct Counter {
    count: i64,
}

/// Start arguments.
#[derive(Deserialize, Default)]
pub struct Args {
    #[serde(default)]
    start: i64,
}

/// Calls.
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

impl GenServer for Counter {
    type Args = Args;
    type Call = Request;
    type Reply = i64;
    type Cast = Command;
    type Info = Tick;
    type Continue = ();

    fn init(args: Args, ctx: &mut Context<'_>) -> Result<Self, Error> {
        graft_plugin::log::info!("counter 1.0.0 starting as {} at {}", ctx.name(), args.start);
        Ok(Counter { count: args.start })
    }

    fn handle_call(
        &mut self,
        request: Request,
        from: ReplyTo,
        ctx: &mut Context<'_>,
    ) -> Result<CallResult<i64>, Error> {
        Ok(match request {
            Request::Get => CallResult::Reply(self.count),
            Request::Add(amount) => {
                self.count += amount;
                CallResult::Reply(self.count)
            }
            Request::GetLater { delay_ms } => {
                ctx.send_after(Duration::from_millis(delay_ms), &Tick::Answer(from))?;
                CallResult::NoReply
            }
            Request::Stop => CallResult::Stop {
                reason: StopReason::Normal,
                reply: Some(self.count),
            },
        })
    }

    fn handle_cast(&mut self, command: Command, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
        match command {
            Command::Add(amount) => self.count += amount,
            Command::Reset => self.count = 0,
        }
        Ok(Flow::Run)
    }

    fn handle_info(&mut self, info: Info<Tick>, ctx: &mut Context<'_>) -> Result<Flow, Error> {
        match info {
            Info::Message(Tick::Add(amount)) => self.count += amount,
            Info::Message(Tick::Answer(from)) => ctx.reply(from, &self.count)?,
            // Monitors and links are not used here. `Info` is `#[non_exhaustive]`: the
            // wildcard also covers kinds of info a later graft-plugin adds.
            _ => {}
        }
        Ok(Flow::Run)
    }
}

graft_plugin::export_plugin!(Counter, name = "counter");
