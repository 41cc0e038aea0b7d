//! What the CLI prints: the result on stdout (text for people, one JSON document with
//! `--json`), everything else (progress, logs, errors in text mode) on stderr.
//!
//! Invariant: nothing here panics. `println!` panics when stdout is a pipe its reader has
//! closed (`graft releases | head -1`), which made the process exit 101; every result is
//! written through [`line`] instead, and a closed stdout becomes [`OutputError::Closed`],
//! which `main` ends on quietly.

use serde_json::{Value, json};
use std::io::Write as _;
use thiserror::Error;

/// Standard output could not be written.
#[derive(Debug, Error)]
pub enum OutputError {
    /// The reader went away (`EPIPE`): nobody is left to tell, so the command ends quietly.
    #[error("standard output was closed by its reader")]
    Closed,
    /// Any other write error.
    #[error("cannot write to standard output: {0}")]
    Write(std::io::Error),
}

impl From<std::io::Error> for OutputError {
    fn from(error: std::io::Error) -> OutputError {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Write(error)
        }
    }
}

/// Writes `text` and a newline to stdout.
pub fn line(text: std::fmt::Arguments<'_>) -> Result<(), OutputError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(text)?;
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    Ok(())
}

/// Writes `text` to stdout as is.
pub fn text(text: &str) -> Result<(), OutputError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// Writes `value` as one line of JSON.
pub fn json(value: &Value) -> Result<(), OutputError> {
    line(format_args!("{value}"))
}

/// The JSON a failed command prints with `--json`: `{"error": {"kind", "message"}}`.
pub fn error_value(kind: &str, message: &str) -> Value {
    json!({"error": {"kind": kind, "message": message}})
}

/// Prints a line to stdout, or returns the write error from the enclosing function.
macro_rules! say {
    ($($argument:tt)*) => {
        $crate::cli::output::line(format_args!($($argument)*))?
    };
}
pub(crate) use say;
