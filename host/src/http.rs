//! The HTTP server of `graft start --http [ADDR]`: `/metrics` (Prometheus text) and the
//! observer, a web page that shows the running host live (the supervision tree, the
//! releases, the last upgrades) and can install, roll back and make permanent.
//!
//! Submodules: `access` (the token, the checks of `Host`, `Origin` and the token),
//! `routes` (the routes, the snapshot the page draws, the event stream and the
//! mutations), `assets` (the page: plain HTML, CSS and JS compiled in with `include_str!`,
//! no external resources).
//!
//! Security invariants:
//! - Off unless asked for; the default address is loopback (`127.0.0.1:9464`): another
//!   address only when the operator names it.
//! - `GET`s never change anything. A mutation (`POST /api/install/{version}`,
//!   `/api/rollback`, `/api/make-permanent/{version}`) needs the token this server made
//!   from 32 random bytes (`Authorization: Bearer TOKEN` or `X-Graft-Token: TOKEN`,
//!   compared in constant time; 401 without it or with another) and, when the request has
//!   an `Origin`, that origin must be this server's own (`http://` + its `Host`; 403
//!   otherwise). No CORS headers are sent, so other origins cannot read answers either.
//! - Bound to a loopback address, every request must name a loopback host in `Host`
//!   (`127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT`): a page whose DNS name was rebound
//!   to 127.0.0.1 gets 403 for everything, reads included.
//!
//! What is tricky: a mutation runs in a task of its own, so a browser that goes away
//! mid-install does not cancel the install half way (dropping the handler's future would).
//! The server runs on the control plane's tokio runtime, never on the actor executor, and
//! stops when its task is aborted (with the host).

mod access;
mod assets;
mod routes;

use crate::release::handler::ReleaseHandler;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

pub use access::Token;
pub use routes::MAX_EVENT_STREAMS;

/// Where `--http` without an address listens: loopback only.
pub const DEFAULT_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// Why the HTTP server could not start.
#[derive(Debug, Error)]
pub enum HttpError {
    /// The address could not be bound (in use, not local, not permitted).
    #[error("binding the HTTP server to {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The system's error.
        source: std::io::Error,
    },
    /// No random bytes for the token.
    #[error("reading random bytes for the observer's token from /dev/urandom: {0}")]
    Random(#[source] std::io::Error),
    /// The file telling tools where the server is could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The system's error.
        source: std::io::Error,
    },
    /// Serving failed (the listener broke).
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// A bound HTTP server, not yet serving: its address and token are known (to print) before
/// the first request is accepted.
///
/// Bound before the host boots (`graft start` binds first, so an address in use fails the
/// start before any plugin code runs), served once the host is up.
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    address: SocketAddr,
    token: Token,
}

impl HttpServer {
    /// Binds `address` (port 0: any free port), with a new random token, and turns the
    /// process's metrics on ([`crate::metrics::enable`]): the server serves them, and the
    /// observer's timeline is their upgrade history. (`graft start` turns them on earlier,
    /// before the boot, so the boot's actors count from their start.)
    pub async fn bind(address: SocketAddr) -> Result<HttpServer, HttpError> {
        crate::metrics::enable();
        let token = Token::generate().map_err(HttpError::Random)?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| HttpError::Bind { address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| HttpError::Bind { address, source })?;
        Ok(HttpServer {
            listener,
            address,
            token,
        })
    }

    /// The address it listens on (the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// The token mutations need.
    pub fn token(&self) -> &Token {
        &self.token
    }

    /// The observer's address: `http://ADDRESS/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// The observer's address with the token in the fragment (`#token=…`): a browser
    /// opening it never sends the token in a request; the page keeps it for the session.
    pub fn url_with_token(&self) -> String {
        format!("{}#token={}", self.url(), self.token.as_str())
    }

    /// Writes `<root>/run/http.json` (`{"url", "token", "address"}`), mode 0600, so tools
    /// and tests on this machine find the server; returns its path. [`remove_info`] takes it
    /// away when the host stops.
    pub fn write_info(&self, root: &Path) -> Result<PathBuf, HttpError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = info_path(root);
        let body = serde_json::json!({
            "url": self.url(),
            "address": self.address.to_string(),
            "token": self.token.as_str(),
        });
        let write = || -> std::io::Result<()> {
            // A stale file from a host that died is replaced, never written through.
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(format!("{body}\n").as_bytes())
        };
        write().map_err(|source| HttpError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Serves the host run by `handler` until the task running this is aborted (with the
    /// host) or the listener fails.
    pub async fn serve(self, handler: Arc<ReleaseHandler>) -> Result<(), HttpError> {
        let app = routes::router(routes::Shared::new(handler, self.token, self.address));
        axum::serve(self.listener, app)
            .await
            .map_err(HttpError::Serve)
    }
}

/// `<root>/run/http.json`: where a running host's HTTP server is, and its token.
pub fn info_path(root: &Path) -> PathBuf {
    root.join("run").join("http.json")
}

/// Removes `<root>/run/http.json` (the host stops); a missing file is fine.
pub fn remove_info(root: &Path) {
    let _ = std::fs::remove_file(info_path(root));
}
