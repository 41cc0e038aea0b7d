//! Example plugin `kv` 1.0.0: a key-value server, the starting point of the classic
//! hot-code-loading demo.
//!
//! The state is an ordered map of strings. Version 1.1.0 (`plugins/kv/1.1.0`) speaks the
//! same protocol, logs every request and counts them; it adds its counter as a
//! `#[serde(default)]` field, so the default migration (decode 1.0.0's state as 1.1.0's)
//! upgrades a running server without a `code_change` of its own.

use graft_plugin::{CallResult, Context, Error, Flow, GenServer, ReplyTo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The state: the entries, ordered by key.
#[derive(Serialize, Deserialize, Default)]
pub struct Kv {
    entries: BTreeMap<String, String>,
}

/// Start arguments: none (`{}` or nil).
#[derive(Deserialize, Default)]
pub struct Args {}

/// Calls.
#[derive(Deserialize)]
pub enum Request {
    /// The value of a key, if any.
    Get(String),
    /// Sets a key; replies with its previous value, if any.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Removes a key; replies with its value, if any.
    Delete(String),
    /// All keys, in order.
    Keys,
    /// The number of entries.
    Len,
}

/// Casts.
#[derive(Deserialize)]
pub enum Command {
    /// Sets a key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
}

/// Replies, untagged so they read naturally (`"v"` or `null`, `["a", "b"]`, `2`).
#[derive(Serialize)]
#[serde(untagged)]
pub enum Response {
    /// A value, or none.
    Value(Option<String>),
    /// Keys.
    Keys(Vec<String>),
    /// A count.
    Len(usize),
}

impl GenServer for Kv {
    type Args = Option<Args>;
    type Call = Request;
    type Reply = Response;
    type Cast = Command;
    type Info = ();
    type Continue = ();

    fn init(_args: Option<Args>, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        Ok(Kv::default())
    }

    fn handle_call(
        &mut self,
        request: Request,
        _from: ReplyTo,
        _ctx: &mut Context<'_>,
    ) -> Result<CallResult<Response>, Error> {
        Ok(CallResult::Reply(match request {
            Request::Get(key) => Response::Value(self.entries.get(&key).cloned()),
            Request::Put { key, value } => Response::Value(self.entries.insert(key, value)),
            Request::Delete(key) => Response::Value(self.entries.remove(&key)),
            Request::Keys => Response::Keys(self.entries.keys().cloned().collect()),
            Request::Len => Response::Len(self.entries.len()),
        }))
    }

    fn handle_cast(&mut self, command: Command, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
        match command {
            Command::Put { key, value } => {
                self.entries.insert(key, value);
            }
        }
        Ok(Flow::Run)
    }
}

graft_plugin::export_plugin!(Kv, name = "kv");
