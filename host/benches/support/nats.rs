//! A `nats-server -js` for the benchmarks that need one (`fleet`, `cluster`, `singleton`),
//! included by each with `#[path = "support/nats.rs"] mod nats;`: the binary's lookup
//! (`$GRAFT_NATS_SERVER`, else `PATH`, else `/usr/sbin`, `/usr/bin`; a bench without one
//! says it skipped), a free loopback port, and a server with its own store, killed when
//! dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary, if there is one.
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GRAFT_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path).map(|directory| directory.join("nats-server"));
    let fixed = ["/usr/sbin/nats-server", "/usr/bin/nats-server"].map(PathBuf::from);
    on_path.chain(fixed).find(|candidate| candidate.is_file())
}

/// A TCP port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("binding a free port")
        .port()
}

/// Polls `condition` every 20 ms until it holds or `deadline` passes.
pub fn eventually(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// A running `nats-server -js` with its own store, killed when dropped.
pub struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one on a free port (retrying on another port if it does not come up).
    pub fn start(binary: &Path) -> NatsServer {
        for _ in 0..5 {
            let store = tempfile::tempdir().expect("creating the nats store");
            let log = store.path().join("nats.log");
            let port = free_port();
            let child = Command::new(binary)
                .arg("-js")
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .arg("-sd")
                .arg(store.path().join("jetstream"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("creating the nats log"))
                .spawn()
                .expect("starting nats-server");
            let mut server = NatsServer {
                child,
                port,
                _store: store,
            };
            let ready = eventually(Duration::from_secs(30), || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("Server is ready")
                    && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if ready {
                return server;
            }
            server.stop();
        }
        panic!("nats-server did not start");
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
