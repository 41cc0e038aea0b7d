//! The `graft` binary: the operator's command line. Library errors are mapped to exit codes
//! here and only here.

fn main() -> std::process::ExitCode {
    println!("graft {}", env!("CARGO_PKG_VERSION"));
    std::process::ExitCode::SUCCESS
}
