//! A real `nats-server` with JetStream for the fleet tests: on a free loopback port, with
//! its own store directory, stopped (killed and reaped) when dropped.
//!
//! The binary is `$GRAFT_NATS_SERVER`, else `nats-server` on `PATH`, else Debian's
//! `/usr/sbin/nats-server` (package `nats-server`). [`NatsServer::restart`] stops it and
//! starts it again on the same port and store, for tests of a server that goes away.
//!
//! Tricky: the port is picked free and then handed to the server, so another process can
//! take it in between; start retries on a fresh port when the server does not come up.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// A running `nats-server -js`, killed when dropped.
pub struct NatsServer {
    child: Option<std::process::Child>,
    port: u16,
    token: Option<String>,
    store: tempfile::TempDir,
    log: PathBuf,
}

/// The nats-server binary to run.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("GRAFT_NATS_SERVER") {
        return PathBuf::from(path);
    }
    for directory in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let candidate = directory.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("/usr/sbin/nats-server")
}

impl NatsServer {
    /// Starts a server with JetStream and no authentication.
    pub fn start() -> NatsServer {
        NatsServer::start_with_token(None)
    }

    /// Starts a server with JetStream that requires `token` (when given).
    pub fn start_with_token(token: Option<&str>) -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let log = store.path().join("nats.log");
        let mut server = NatsServer {
            child: None,
            port: 0,
            token: token.map(str::to_owned),
            store,
            log,
        };
        for _ in 0..5 {
            server.port = crate::free_port();
            if server.spawn() {
                return server;
            }
            server.stop();
        }
        panic!("nats-server did not start: {}", server.log());
    }

    /// Starts the process on `self.port`; whether it accepts connections in time.
    fn spawn(&mut self) -> bool {
        let binary = nats_server_binary();
        assert!(
            binary.exists(),
            "no nats-server at {} (apt-get install nats-server, or set GRAFT_NATS_SERVER)",
            binary.display()
        );
        let mut command = std::process::Command::new(&binary);
        command
            .arg("-js")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(self.store.path().join("jetstream"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap());
        if let Some(token) = &self.token {
            command.args(["--auth", token]);
        }
        self.child = Some(command.spawn().unwrap());
        let port = self.port;
        let log = self.log.clone();
        crate::eventually_blocking(Duration::from_secs(30), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("Server is ready")
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }

    /// Kills the process and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "nats-server did not restart: {}", self.log());
    }

    /// The client URL (`nats://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The store directory.
    pub fn store(&self) -> &Path {
        self.store.path()
    }

    /// What the server logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Replaces object `name` in the object store `bucket` on the server at `url` with
/// `bytes` (a consistent object, its own digest updated: what an attacker with write
/// access to the store could do).
pub fn replace_object(url: &str, bucket: &str, name: &str, bytes: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let store = jetstream.get_object_store(bucket).await.unwrap();
        let mut reader = bytes;
        store.put(name, &mut reader).await.unwrap();
    });
}
