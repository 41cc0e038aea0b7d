//! The `graft` binary: the operator's and plugin author's command line.
//!
//! This is the edge where library errors become messages and exit codes: 0 done, 1 the
//! operation failed (the message says why), 2 a usage error or no host running, 3 refused
//! for safety. With `--json`, a failure is a JSON error object on stdout (see `cli`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
