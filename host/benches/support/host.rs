//! A `graft start --fleet` host process for the benchmarks that run real hosts (`fleet`,
//! `singleton`), included by each with `#[path = "support/host.rs"] mod host;`: the
//! bench's own `graft` binary on an assembled root, logging warnings to `host.log` there.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `graft start --fleet URL --group GROUP --host-name NAME` on `root`.
pub fn start_fleet_host(root: &Path, url: &str, group: &str, name: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_graft"))
        .env("GRAFT_ROOT", root)
        .env("RUST_LOG", "warn")
        .args([
            "start",
            "--fleet",
            url,
            "--group",
            group,
            "--host-name",
            name,
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("host.log")).expect("creating the host log"))
        .spawn()
        .expect("starting a host")
}
