//! Example plugin `kv` 1.1.0: the key-value server of 1.0.0, now logging and counting
//! every request — the classic Elixir hot-code-loading demo.
//!
//! The protocol is 1.0.0's plus the `Requests` call. The state gained one field,
//! `requests`, marked `#[serde(default)]`, so this version does not override
//! [`GenServer::code_change`]: the default migration decodes 1.0.0's state bytes as this
//! state, with the counter starting at zero and every entry kept. The default downgrade
//! works too: 1.0.0 decodes this state and ignores the field it does not know.

use graft_plugin::{CallResult, Context, Error, Flow, GenServer, ReplyTo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The state: the entries, ordered by key, and the number of requests handled.
#[derive(Serialize, Deserialize, Default)]
pub struct Kv {
    entries: BTreeMap<String, String>,
    /// Requests (calls and casts, except `Requests` itself) handled by this version.
    /// Absent from 1.0.0's state, hence the default.
    #[serde(default)]
    requests: u64,
}

/// Start arguments: none (`{}` or nil).
#[derive(Deserialize, Default)]
pub struct Args {}

/// Calls: those of 1.0.0 plus `Requests`.
#[derive(Deserialize, Debug)]
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
    /// The number of requests handled so far (not counting this one).
    Requests,
}

/// Casts.
#[derive(Deserialize, Debug)]
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
    /// A count of entries.
    Len(usize),
    /// A count of requests.
    Requests(u64),
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
        graft_plugin::tracing::info!(?request, "kv 1.1.0 handling a call");
        if !matches!(request, Request::Requests) {
            self.requests += 1;
        }
        Ok(CallResult::Reply(match request {
            Request::Get(key) => Response::Value(self.entries.get(&key).cloned()),
            Request::Put { key, value } => Response::Value(self.entries.insert(key, value)),
            Request::Delete(key) => Response::Value(self.entries.remove(&key)),
            Request::Keys => Response::Keys(self.entries.keys().cloned().collect()),
            Request::Len => Response::Len(self.entries.len()),
            Request::Requests => Response::Requests(self.requests),
        }))
    }

    fn handle_cast(&mut self, command: Command, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
        graft_plugin::tracing::info!(?command, "kv 1.1.0 handling a cast");
        self.requests += 1;
        match command {
            Command::Put { key, value } => {
                self.entries.insert(key, value);
            }
        }
        Ok(Flow::Run)
    }
}

graft_plugin::export_plugin!(Kv, name = "kv");
