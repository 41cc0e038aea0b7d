//! A real `nats-server` with JetStream for the fleet tests: on a free loopback port, with
//! its own store directory, stopped (killed and reaped) when dropped.
//!
//! The binary is `$GRAFT_NATS_SERVER`, else `nats-server` on `PATH`, else Debian's
//! `/usr/sbin/nats-server` (package `nats-server`). [`NatsServer::restart`] stops it and
//! starts it again on the same port and store, for tests of a server that goes away.
//!
//! [`Operator`] makes what a server in operator (decentralised JWT) mode needs without
//! `nsc`: an operator, accounts (JetStream enabled) and users, as NATS JWTs signed with
//! nkeys, and a user's `.creds` file; [`NatsServer::start_with_operator`] runs a server
//! that trusts the operator and has the accounts preloaded (`resolver: MEMORY`).
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
    /// A configuration file's text (`-c`), beside the command-line flags.
    config: Option<String>,
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
        NatsServer::start_with(token, None)
    }

    /// Starts a server with JetStream in operator mode: it trusts `operator` and knows
    /// the accounts in `accounts` (their JWTs preloaded), the first of which is its
    /// system account.
    pub fn start_with_operator(operator: &Operator, accounts: &[&Account]) -> NatsServer {
        let preload: Vec<String> = accounts
            .iter()
            .map(|account| format!("  {}: \"{}\"", account.public_key(), account.jwt))
            .collect();
        let config = format!(
            "operator: \"{}\"\nsystem_account: {}\nresolver: MEMORY\nresolver_preload: {{\n{}\n}}\n",
            operator.jwt,
            accounts[0].public_key(),
            preload.join("\n")
        );
        NatsServer::start_with(None, Some(config))
    }

    /// Starts a server with JetStream, a token and a configuration file, when given.
    fn start_with(token: Option<&str>, config: Option<String>) -> NatsServer {
        let store = tempfile::tempdir().unwrap();
        let log = store.path().join("nats.log");
        let mut server = NatsServer {
            child: None,
            port: 0,
            token: token.map(str::to_owned),
            config,
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
        if let Some(config) = &self.config {
            let path = self.store.path().join("nats.conf");
            std::fs::write(&path, config).unwrap();
            command.arg("-c").arg(path);
        }
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
        self.start_again();
    }

    /// Starts a server that was [`stop`](NatsServer::stop)ped again, on the same port
    /// and store.
    pub fn start_again(&mut self) {
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

/// Base64url without padding, as NATS JWTs encode every part.
fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A NATS JWT (v2) with `claims` (`iss` and `sub` set, `nats` the typed part), signed by
/// `issuer`. Its `jti` is the base32 SHA-512/256 of the claims without it, as the Go
/// library computes it.
fn sign_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use sha2::Digest as _;
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut claims = serde_json::json!({
        "jti": "",
        "iat": issued,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let hash = sha2::Sha512_256::digest(serde_json::to_vec(&claims).unwrap());
    claims["jti"] = data_encoding::BASE32_NOPAD.encode(&hash).into();
    let header = base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = base64url(&serde_json::to_vec(&claims).unwrap());
    let signed = format!("{header}.{body}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", base64url(&signature))
}

/// An operator: its key pair and self-signed JWT.
pub struct Operator {
    keys: nkeys::KeyPair,
    /// The operator's JWT (what the server's `operator:` names).
    pub jwt: String,
}

/// An account signed by an operator, with JetStream enabled (no limits).
pub struct Account {
    keys: nkeys::KeyPair,
    /// The account's JWT (preloaded into the server).
    pub jwt: String,
}

impl Operator {
    /// A fresh operator named `name`.
    pub fn new(name: &str) -> Operator {
        let keys = nkeys::KeyPair::new_operator();
        let jwt = sign_jwt(
            &keys,
            &keys.public_key(),
            name,
            serde_json::json!({"type": "operator", "version": 2}),
        );
        Operator { keys, jwt }
    }

    /// A fresh account named `name`, signed by this operator, JetStream enabled.
    pub fn account(&self, name: &str) -> Account {
        self.account_with(name, -1)
    }

    /// A fresh account for the server's own use (`system_account`): no JetStream.
    pub fn system_account(&self) -> Account {
        self.account_with("SYS", 0)
    }

    /// An account whose JetStream storage limits are `storage` (-1 unlimited, 0 none).
    fn account_with(&self, name: &str, storage: i64) -> Account {
        let keys = nkeys::KeyPair::new_account();
        let jwt = sign_jwt(
            &self.keys,
            &keys.public_key(),
            name,
            serde_json::json!({
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": storage, "disk_storage": storage,
                    "streams": storage, "consumer": storage,
                },
                "default_permissions": {"pub": {}, "sub": {}},
            }),
        );
        Account { keys, jwt }
    }
}

impl Account {
    /// The account's public key (its id on the server).
    pub fn public_key(&self) -> String {
        self.keys.public_key()
    }

    /// A `.creds` file's text for a fresh user `name` of this account: the user's JWT
    /// and its nkey seed, in the format `nsc` writes.
    pub fn user_credentials(&self, name: &str) -> String {
        let user = nkeys::KeyPair::new_user();
        let jwt = sign_jwt(
            &self.keys,
            &user.public_key(),
            name,
            serde_json::json!({
                "type": "user",
                "version": 2,
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            }),
        );
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            user.seed().unwrap()
        )
    }
}
