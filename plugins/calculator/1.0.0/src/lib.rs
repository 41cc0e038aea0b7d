//! Example plugin `calculator` 1.0.0: "let it crash".
//!
//! The state is a single running value. Every call applies one operation and replies with
//! the new value. Dividing by zero (or overflowing an `i64`) is not handled: the callback
//! panics, the panic is caught inside the plugin and reported to the host, and the host
//! treats it as the actor crashing — its supervisor restarts it with fresh state from its
//! start arguments, exactly as an Erlang process dies on `badarith`.

use graft_plugin::{CallResult, Context, Error, GenServer, ReplyTo};
use serde::{Deserialize, Serialize};

/// The state: the running value.
#[derive(Serialize, Deserialize)]
pub struct Calculator {
    value: i64,
}

/// Start arguments: `{ "start": i64 }`, the value to start from (default 0).
#[derive(Deserialize, Default)]
pub struct Args {
    #[serde(default)]
    start: i64,
}

/// Calls; each replies with the value after the operation.
#[derive(Deserialize)]
pub enum Request {
    /// The current value.
    Get,
    /// Adds to the value.
    Add(i64),
    /// Subtracts from the value.
    Subtract(i64),
    /// Multiplies the value.
    Multiply(i64),
    /// Divides the value (integer division, rounding toward zero). Panics on zero.
    Divide(i64),
}

/// Unwraps a checked operation, or panics (crashing the actor) with a clear message.
fn checked(result: Option<i64>, value: i64, operator: char, operand: i64) -> i64 {
    match result {
        Some(result) => result,
        None if operator == '/' && operand == 0 => {
            panic!("calculator: cannot divide {value} by zero")
        }
        None => panic!("calculator: {value} {operator} {operand} overflows an i64"),
    }
}

impl GenServer for Calculator {
    type Args = Args;
    type Call = Request;
    type Reply = i64;
    type Cast = ();
    type Info = ();
    type Continue = ();

    fn init(args: Args, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        Ok(Calculator { value: args.start })
    }

    fn handle_call(
        &mut self,
        request: Request,
        _from: ReplyTo,
        _ctx: &mut Context<'_>,
    ) -> Result<CallResult<i64>, Error> {
        let value = self.value;
        self.value = match request {
            Request::Get => value,
            Request::Add(n) => checked(value.checked_add(n), value, '+', n),
            Request::Subtract(n) => checked(value.checked_sub(n), value, '-', n),
            Request::Multiply(n) => checked(value.checked_mul(n), value, '*', n),
            Request::Divide(n) => checked(value.checked_div(n), value, '/', n),
        };
        Ok(CallResult::Reply(self.value))
    }
}

graft_plugin::export_plugin!(Calculator, name = "calculator");
