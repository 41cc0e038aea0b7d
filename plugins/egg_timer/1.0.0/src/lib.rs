//! Example plugin `egg_timer` 1.0.0: timers as messages.
//!
//! `Schedule` asks the host for a one-shot timer with [`Context::send_after`]; when it
//! fires, the host delivers the timer's message to this actor's `handle_info`, which records
//! the alarm as rung and logs it. The state keeps, per pending alarm, its [`TimerRef`] (so
//! it can be cancelled) and its deadline as Unix epoch milliseconds — wall-clock time,
//! which, unlike an `Instant`, still means something after the state has been encoded and
//! handed to another plugin version or another process.
//!
//! Asking about or cancelling an unknown alarm is an answer (`false`, or its absence from
//! `Status`), never a crash.

use graft_plugin::{CallResult, Context, Error, Flow, GenServer, Info, ReplyTo, TimerRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The state: pending alarms by name, and the names of those that have rung, oldest first.
#[derive(Serialize, Deserialize, Default)]
pub struct EggTimer {
    alarms: BTreeMap<String, Alarm>,
    rang: Vec<String>,
}

/// A pending alarm.
#[derive(Serialize, Deserialize)]
pub struct Alarm {
    /// The host timer that will deliver [`Ring::Alarm`].
    timer: TimerRef,
    /// When it is due, in Unix epoch milliseconds.
    deadline_ms: u64,
}

/// Start arguments: none (`{}` or nil).
#[derive(Deserialize, Default)]
pub struct Args {}

/// Calls.
#[derive(Deserialize)]
pub enum Request {
    /// Schedules the alarm `name` to ring after `after_ms` milliseconds; replies with the
    /// name. A pending alarm of the same name is replaced (its timer cancelled; a ring of
    /// it already on its way would count for the new one).
    Schedule {
        /// The alarm's name.
        name: String,
        /// Its delay in milliseconds.
        after_ms: u64,
    },
    /// Replies with the pending alarms and their remaining time, sorted by name.
    Status,
    /// Cancels a pending alarm; replies whether there was one.
    Cancel(String),
    /// Replies with the names of the alarms that have rung so far, in order.
    Rang,
}

/// A pending alarm as `Status` reports it.
#[derive(Serialize)]
pub struct AlarmStatus {
    /// The alarm's name.
    pub name: String,
    /// Milliseconds until it rings (0 when it is due).
    pub remaining_ms: u64,
}

/// Replies, untagged so they read naturally (`"tea"`, `true`, `[...]`).
#[derive(Serialize)]
#[serde(untagged)]
pub enum Response {
    /// An alarm's name.
    Name(String),
    /// The pending alarms.
    Status(Vec<AlarmStatus>),
    /// Whether a cancel found its alarm.
    Cancelled(bool),
    /// The alarms that have rung.
    Rang(Vec<String>),
}

/// Info messages: what the timers deliver.
#[derive(Serialize, Deserialize)]
pub enum Ring {
    /// The alarm with this name is due.
    Alarm(String),
}

/// Now, in Unix epoch milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

impl GenServer for EggTimer {
    type Args = Option<Args>;
    type Call = Request;
    type Reply = Response;
    type Cast = ();
    type Info = Ring;
    type Continue = ();

    fn init(_args: Option<Args>, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        Ok(EggTimer::default())
    }

    fn handle_call(
        &mut self,
        request: Request,
        _from: ReplyTo,
        ctx: &mut Context<'_>,
    ) -> Result<CallResult<Response>, Error> {
        Ok(CallResult::Reply(match request {
            Request::Schedule { name, after_ms } => {
                let timer =
                    ctx.send_after(Duration::from_millis(after_ms), &Ring::Alarm(name.clone()))?;
                let deadline_ms = now_ms().saturating_add(after_ms);
                let alarm = Alarm { timer, deadline_ms };
                if let Some(previous) = self.alarms.insert(name.clone(), alarm) {
                    // Rescheduling replaces the pending alarm of the same name.
                    ctx.cancel_timer(previous.timer);
                }
                Response::Name(name)
            }
            Request::Status => {
                let now = now_ms();
                Response::Status(
                    self.alarms
                        .iter()
                        .map(|(name, alarm)| AlarmStatus {
                            name: name.clone(),
                            remaining_ms: alarm.deadline_ms.saturating_sub(now),
                        })
                        .collect(),
                )
            }
            Request::Cancel(name) => match self.alarms.remove(&name) {
                Some(alarm) => {
                    ctx.cancel_timer(alarm.timer);
                    Response::Cancelled(true)
                }
                None => Response::Cancelled(false),
            },
            Request::Rang => Response::Rang(self.rang.clone()),
        }))
    }

    fn handle_info(&mut self, info: Info<Ring>, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
        // Monitors and links are not used here, so any other info (`Info` is
        // `#[non_exhaustive]`: including kinds a later graft-plugin adds) is ignored.
        if let Info::Message(Ring::Alarm(name)) = info {
            if self.alarms.remove(&name).is_some() {
                graft_plugin::log::info!("egg timer: alarm {name:?} rang");
                self.rang.push(name);
            } else {
                // Cancelled after its timer had already fired: nothing to ring.
                graft_plugin::log::debug!("egg timer: ignoring a ring for {name:?}");
            }
        }
        Ok(Flow::Run)
    }
}

graft_plugin::export_plugin!(EggTimer, name = "egg_timer");
