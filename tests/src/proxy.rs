//! A cuttable TCP forwarder on loopback, to partition one host from nats-server.
//!
//! [`TcpForwarder::start`] listens on a port of its own and forwards every connection to
//! `127.0.0.1:<to_port>`, one thread per direction. [`TcpForwarder::cut`] shuts down every
//! open connection and, until [`TcpForwarder::heal`], closes each new one at once (the
//! client sees its connect succeed and then the connection end, as a partition looks to a
//! NATS client reconnecting). Dropping the forwarder cuts and stops accepting.
//!
//! Tricky: the accept loop polls a non-blocking listener every 10 ms so it can notice the
//! forwarder's drop; connections are shut down (not just dropped) so both copy threads end.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Shared {
    cut: AtomicBool,
    stopped: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

/// A TCP forwarder from its own loopback port to another.
pub struct TcpForwarder {
    port: u16,
    shared: Arc<Shared>,
}

impl TcpForwarder {
    /// Listens on a free loopback port and forwards to `127.0.0.1:to_port`.
    pub fn start(to_port: u16) -> TcpForwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the forwarder");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("a local address").port();
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, to_port, accepting));
        TcpForwarder { port, shared }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`: the URL to give a host instead of the server's.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Drops every connection and refuses new ones until [`TcpForwarder::heal`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        let open = std::mem::take(&mut *self.shared.open.lock().unwrap_or_else(|p| p.into_inner()));
        for stream in open {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// Accepts and forwards new connections again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.cut();
    }
}

fn accept_loop(listener: TcpListener, to_port: u16, shared: Arc<Shared>) {
    while !shared.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", to_port)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = shared.open.lock().unwrap_or_else(|p| p.into_inner());
                    for stream in [&client, &server] {
                        if let Ok(copy) = stream.try_clone() {
                            open.push(copy);
                        }
                    }
                }
                for (from, to) in [(&client, &server), (&server, &client)] {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                        std::thread::spawn(move || copy(from, to));
                    }
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if to.write_all(&buffer[..read]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_then_cuts_then_heals() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let server_port = server.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in server.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buffer = [0u8; 64];
                    while let Ok(read) = stream.read(&mut buffer) {
                        if read == 0 || stream.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let forwarder = TcpForwarder::start(server_port);
        let echo = |stream: &mut TcpStream| -> bool {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buffer = [0u8; 4];
            stream.write_all(b"ping").is_ok()
                && stream.read_exact(&mut buffer).is_ok()
                && &buffer == b"ping"
        };
        let mut first = TcpStream::connect(("127.0.0.1", forwarder.port())).unwrap();
        assert!(echo(&mut first));
        forwarder.cut();
        assert!(!echo(&mut first), "a cut connection carries nothing");
        let mut refused = TcpStream::connect(("127.0.0.1", forwarder.port())).unwrap();
        assert!(!echo(&mut refused), "a new connection is closed while cut");
        forwarder.heal();
        let mut healed = TcpStream::connect(("127.0.0.1", forwarder.port())).unwrap();
        assert!(echo(&mut healed));
    }
}
