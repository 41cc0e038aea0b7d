//! Example plugin `super_duper` 1.0.0: a supervised character, the classic OTP demo.
//!
//! Each character is started with a name and a power, counts the greetings it receives
//! (by call or by cast), and crashes on request: `Crash` makes `handle_call` return an
//! [`Error`], which becomes the actor's exit reason. Its supervisor then starts a new
//! incarnation from the same arguments — same name and power, greetings back to zero, and
//! a new `incarnation` (the time it was started), which is how a test or a person tells
//! the restarted character apart from the one that crashed.

use graft_plugin::{CallResult, Context, Error, Flow, GenServer, ReplyTo};
use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// The state.
#[derive(Serialize, Deserialize)]
pub struct Character {
    name: String,
    power: String,
    /// When this incarnation started, in Unix epoch nanoseconds.
    incarnation: u64,
    /// Greetings received by this incarnation.
    greetings: u64,
}

/// Start arguments: `{ "name": String, "power": String }`.
#[derive(Deserialize)]
pub struct Args {
    name: String,
    power: String,
}

/// Calls.
#[derive(Deserialize)]
pub enum Request {
    /// Replies with the character's name, power and incarnation.
    WhoAreYou,
    /// Greets the character; replies with the number of greetings so far.
    Greet,
    /// Makes the character crash: the actor exits with an error.
    Crash,
}

/// Casts.
#[derive(Deserialize)]
pub enum Command {
    /// Greets the character.
    Greet,
}

/// Who a character is, as `WhoAreYou` replies.
#[derive(Serialize)]
pub struct Identity {
    /// Its name.
    pub name: String,
    /// Its power.
    pub power: String,
    /// When this incarnation started, in Unix epoch nanoseconds; a restart gives a new one.
    pub incarnation: u64,
}

/// Replies, untagged so they read naturally.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Response {
    /// Who the character is.
    Identity(Identity),
    /// The number of greetings.
    Greetings(u64),
}

/// Now, in Unix epoch nanoseconds.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
        })
}

impl GenServer for Character {
    type Args = Args;
    type Call = Request;
    type Reply = Response;
    type Cast = Command;
    type Info = ();
    type Continue = ();

    fn init(args: Args, ctx: &mut Context<'_>) -> Result<Self, Error> {
        graft_plugin::log::info!(
            "{} ({}) enters the scene as {}",
            args.name,
            args.power,
            ctx.name()
        );
        Ok(Character {
            name: args.name,
            power: args.power,
            incarnation: now_ns(),
            greetings: 0,
        })
    }

    fn handle_call(
        &mut self,
        request: Request,
        _from: ReplyTo,
        _ctx: &mut Context<'_>,
    ) -> Result<CallResult<Response>, Error> {
        match request {
            Request::WhoAreYou => Ok(CallResult::Reply(Response::Identity(Identity {
                name: self.name.clone(),
                power: self.power.clone(),
                incarnation: self.incarnation,
            }))),
            Request::Greet => {
                self.greetings += 1;
                Ok(CallResult::Reply(Response::Greetings(self.greetings)))
            }
            Request::Crash => Err(Error::new(format!(
                "{} was defeated after {} greetings",
                self.name, self.greetings
            ))),
        }
    }

    fn handle_cast(&mut self, command: Command, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
        match command {
            Command::Greet => self.greetings += 1,
        }
        Ok(Flow::Run)
    }
}

graft_plugin::export_plugin!(Character, name = "super_duper");
