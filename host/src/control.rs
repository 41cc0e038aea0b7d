//! The control socket: how operators' tools talk to a running host.
//!
//! A Unix socket at `<root>/run/control.sock` — the socket 0600 in a 0700 directory, so only
//! its owner controls the host. The protocol is newline-delimited JSON: one request object
//! per line, answered by zero or more `{"progress": …}` lines and then exactly one
//! `{"ok": true, "result": …}` or `{"ok": false, "error": "…"}` line. Several clients may be
//! connected at once; each connection carries any number of requests, one at a time.
//!
//! Invariants: a malformed, oversized or unknown request gets an error response and the
//! host carries on (an oversized line also closes that connection: the rest of it cannot be
//! framed); a client that disconnects mid-request affects nobody else.
//!
//! Resources are bounded ([`ControlLimits`]): at most `max_connections` clients at once (one
//! more gets a one-line error and is closed unread); request bytes buffered per connection
//! (`max_request_bytes`) and in total (`max_buffered_bytes`, beyond 8 KiB per connection),
//! taken without waiting, so a connection that cannot get bytes is told so and closed
//! rather than blocked holding partial bytes; an emptied buffer is freed, and freed large
//! buffers go back to the OS; a connection idle for `idle_timeout` is closed; a failed
//! accept (at the file-descriptor limit) pauses accepting, with one warning per interval.

use crate::release::handler::{InstallPhase, InstallReport, ProgressFn, ReleaseHandler};
use crate::runtime::{ActorRef, ProcessId, SystemError};
use crate::supervisor::{ChildRef, SupervisorRef};
use graft_plugin::codec;
use semver::Version;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The longest request line accepted, in bytes.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;

/// How long system requests (`state`, `suspend`, …) wait for an actor.
const SYSTEM_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket's path under a root.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join("run").join("control.sock")
}

/// A request, as sent on the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The supervision tree, resident libraries, isolated plugins' workers and releases.
    Status {},
    /// Every release and its status.
    Releases {},
    /// Installs a release (upgrade or downgrade), optionally making it permanent.
    Install {
        /// The version.
        version: Version,
        /// Make it permanent once installed.
        #[serde(default)]
        permanent: bool,
    },
    /// Makes the current release permanent.
    MakePermanent {
        /// The version.
        version: Version,
    },
    /// Back to the release that was current before the last install (undoing it); refused
    /// when no install of the host's life is left to undo.
    Rollback {},
    /// Removes a release.
    Remove {
        /// The version.
        version: Version,
    },
    /// Calls an actor with a JSON message.
    Call {
        /// The actor's name.
        actor: String,
        /// The request.
        message: Value,
        /// The timeout in milliseconds (default 5000).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Casts a JSON message to an actor.
    Cast {
        /// The actor's name.
        actor: String,
        /// The message.
        message: Value,
    },
    /// An actor's state as JSON.
    State {
        /// The actor's name.
        actor: String,
    },
    /// Suspends an actor.
    Suspend {
        /// The actor's name.
        actor: String,
    },
    /// Resumes an actor.
    Resume {
        /// The actor's name.
        actor: String,
    },
}

/// A request failed.
#[derive(Debug, Error)]
pub enum ControlError {
    /// No host listens on the socket.
    #[error("no host is running at {path}: {source}")]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The socket exists but this user may not reach it.
    #[error(
        "permission denied: uid {uid} may not reach {path} ({source}); run graft as the user who started the host"
    )]
    PermissionDenied {
        /// The socket.
        path: PathBuf,
        /// This process's user.
        uid: u32,
        /// The refusal.
        source: std::io::Error,
    },
    /// The root (or the socket) could be written by another user, or is a link.
    #[error("refusing to use the root: {0}")]
    Untrusted(#[from] crate::trust::TrustError),
    /// The process serving the socket runs as another user.
    #[error(
        "refusing to talk to {path}: it is served by pid {pid} running as uid {uid}, not by uid {expected} \
         (an impostor could answer in the host's place)"
    )]
    Impostor {
        /// The socket.
        path: PathBuf,
        /// The peer's pid (0 when unknown).
        pid: i32,
        /// The peer's user.
        uid: u32,
        /// This user.
        expected: u32,
    },
    /// The socket could not be set up.
    #[error("cannot serve the control socket at {path}: {source}")]
    Bind {
        /// The socket (or its directory).
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The host went away while a request was in flight.
    #[error("the host at {path} died while handling the request ({detail}); see its log")]
    HostDied {
        /// The socket.
        path: PathBuf,
        /// What the client saw.
        detail: String,
    },
    /// The socket broke mid-request while the host still runs.
    #[error("the connection to the host broke: {0}")]
    Connection(#[from] std::io::Error),
    /// The host answered something that is not the protocol.
    #[error("the host sent an invalid response: {0}")]
    Protocol(String),
    /// The host refused or failed the request.
    #[error("{0}")]
    Failed(String),
    /// Another host already serves this root.
    #[error("a host is already running at {0}")]
    AlreadyRunning(PathBuf),
}

/// Serves the control socket until the task is dropped.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Binds `<root>/run/control.sock` (0600, in a 0700 directory). A stale socket left by
    /// a killed host is replaced; a live one is an error.
    ///
    /// The root must pass [`crate::trust::check_root`]; `run/` and the socket are never
    /// followed when they are links, and a file that is not a socket is not removed.
    pub async fn bind(root: &Path) -> Result<ControlServer, ControlError> {
        use crate::trust::{Kind, check, check_root};
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        check_root(root)?;
        let path = socket_path(root);
        let directory = path.parent().expect("the socket has a directory");
        let bind_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ControlError::Bind { path, source }
        };
        if !check(directory, Kind::Directory)? {
            // `create` (not `create_dir_all`) fails on anything, a link included, that
            // appeared in the meantime.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(directory)
                .map_err(bind_error(directory))?;
        }
        // Checked above: a directory of ours, not a link.
        std::fs::set_permissions(directory, std::fs::Permissions::from_mode(0o700))
            .map_err(bind_error(directory))?;
        if check(&path, Kind::Socket)? {
            if UnixStream::connect(&path).await.is_ok() {
                return Err(ControlError::AlreadyRunning(path));
            }
            std::fs::remove_file(&path).map_err(bind_error(&path))?;
        }
        let listener = UnixListener::bind(&path).map_err(bind_error(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error(&path))?;
        Ok(ControlServer { listener, path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients forever, each on its own task, within the default [`ControlLimits`].
    pub async fn serve(self, handler: Arc<ReleaseHandler>) {
        self.serve_with(handler, ControlLimits::default()).await
    }

    /// Accepts clients forever, each on its own task, within `limits`: over
    /// `max_connections` a client gets a one-line error and is closed unread; a failed
    /// accept (at the file-descriptor limit, say) pauses accepting, with one warning per
    /// interval; freed request buffers go back to the OS once clients leave.
    pub async fn serve_with(self, handler: Arc<ReleaseHandler>, limits: ControlLimits) {
        let limits = Arc::new(limits);
        let budget = Arc::new(ByteBudget::new(limits.max_buffered_bytes));
        let connections = Arc::new(tokio::sync::Semaphore::new(
            limits
                .max_connections
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let lingering_refusals = Arc::new(tokio::sync::Semaphore::new(MAX_LINGERING_REFUSALS));
        let accepting = async {
            let mut backoff = AcceptBackoff::new(&limits);
            let mut failure_warning = RateLimitedWarning::new(limits.accept_warning_interval);
            let mut refusal_warning = RateLimitedWarning::new(limits.accept_warning_interval);
            loop {
                match self.listener.accept().await {
                    Ok((stream, _)) => {
                        backoff.succeeded();
                        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                            refuse(&stream, limits.max_connections);
                            // Kept open a moment (unread) so that the client's request
                            // write succeeds and it reads why (bounded in number and time).
                            if let Ok(lingering) =
                                Arc::clone(&lingering_refusals).try_acquire_owned()
                            {
                                tokio::spawn(async move {
                                    tokio::time::sleep(REFUSAL_LINGER).await;
                                    drop((stream, lingering));
                                });
                            }
                            if let Some(suppressed) = refusal_warning.due(std::time::Instant::now())
                            {
                                tracing::warn!(
                                    "control socket: refused a client over the limit of {} connections ({suppressed} more refused since the last warning; graft start --max-connections)",
                                    limits.max_connections
                                );
                            }
                            continue;
                        };
                        let handler = Arc::clone(&handler);
                        let limits = Arc::clone(&limits);
                        let budget = Arc::clone(&budget);
                        tokio::spawn(async move {
                            if let Err(error) = serve_client(stream, handler, &limits, budget).await
                            {
                                tracing::debug!("control client: {error}");
                            }
                            drop(permit);
                        });
                    }
                    Err(error) => {
                        let pause = backoff.failed();
                        if let Some(suppressed) = failure_warning.due(std::time::Instant::now()) {
                            let hint = if matches!(
                                error.raw_os_error(),
                                Some(libc::EMFILE | libc::ENFILE)
                            ) {
                                " (the host is at its open-file limit: raise it with ulimit -n or lower graft start --max-connections)"
                            } else {
                                ""
                            };
                            tracing::warn!(
                                "control socket accept failed: {error}{hint}; pausing accepts for {} ms ({suppressed} more failures since the last warning)",
                                pause.as_millis()
                            );
                        }
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        };
        let returning_memory = async {
            loop {
                budget.large_buffer_freed.notified().await;
                let _ = tokio::task::spawn_blocking(crate::process::return_free_memory).await;
                tokio::time::sleep(MEMORY_RETURN_INTERVAL).await;
            }
        };
        tokio::join!(accepting, returning_memory);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn write_line(
    writer: &mut (impl AsyncWriteExt + Unpin),
    value: &Value,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

/// The default cap on clients connected at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The default time a connection may send nothing before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The default budget of request bytes buffered across all connections: 64 requests of
/// the largest size at once. Real requests are a few hundred bytes, so only a flood comes
/// near it, and it keeps a flood to a small fraction of a host's memory (without it, 256
/// connections could hold 256 MiB and, before the cap, 2,000 held 2 GB).
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;

/// How much a connection reads at once. Each connection's first chunk is not charged to
/// the shared budget, so a short request is served even while a flood has spent it.
const READ_CHUNK: usize = 8 * 1024;

/// A request buffer larger than this goes back to the OS when freed.
const LARGE_BUFFER: usize = 64 * 1024;

/// Refused clients kept open (unread) at once, each for [`REFUSAL_LINGER`]: a client whose
/// socket closed before it wrote its request would see a broken pipe instead of the
/// reason. More are closed at once.
const MAX_LINGERING_REFUSALS: usize = 64;

/// The longest a refused client is kept open.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Freed memory is returned to the OS at most once per this interval.
const MEMORY_RETURN_INTERVAL: Duration = Duration::from_millis(250);

/// What the control socket's clients can make the host hold. Memory for requests is at
/// most `max_connections` × 8 KiB plus `max_buffered_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlLimits {
    /// Clients connected at once; one more gets a one-line error and is closed unread.
    pub max_connections: usize,
    /// The longest request line, in bytes, without its newline; a longer one gets an error
    /// and the connection is closed.
    pub max_request_bytes: usize,
    /// Request bytes buffered across all connections (beyond each connection's first
    /// 8 KiB). A connection that needs more while it is spent gets an error and is closed.
    pub max_buffered_bytes: usize,
    /// A connection that sends nothing while the host waits for a request, or accepts
    /// nothing of a response, for this long is closed.
    pub idle_timeout: Duration,
    /// The first pause after a failed accept; each further failure doubles it, up to
    /// `max_accept_backoff`.
    pub accept_backoff: Duration,
    /// The longest pause between failed accepts.
    pub max_accept_backoff: Duration,
    /// At most one warning about failed (or refused) accepts per interval.
    pub accept_warning_interval: Duration,
}

impl Default for ControlLimits {
    fn default() -> ControlLimits {
        ControlLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_request_bytes: MAX_REQUEST_BYTES as usize,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            accept_backoff: Duration::from_millis(100),
            max_accept_backoff: Duration::from_secs(1),
            accept_warning_interval: Duration::from_secs(10),
        }
    }
}

/// The request bytes buffered across connections, against a limit. Never waits: a
/// connection that cannot take bytes is refused, so none blocks holding partial bytes.
#[derive(Debug)]
struct ByteBudget {
    limit: usize,
    used: std::sync::atomic::AtomicUsize,
    /// Woken when a large buffer is freed, so that the memory goes back to the OS.
    large_buffer_freed: tokio::sync::Notify,
}

impl ByteBudget {
    fn new(limit: usize) -> ByteBudget {
        ByteBudget {
            limit,
            used: std::sync::atomic::AtomicUsize::new(0),
            large_buffer_freed: tokio::sync::Notify::new(),
        }
    }

    /// Takes `bytes` if they fit; whether they did.
    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |used| used.checked_add(bytes).filter(|&total| total <= self.limit),
            )
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used
            .fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One connection's unparsed bytes, in an anonymous mapping of their own (none while
/// empty): freeing it hands the memory straight back to the OS, whatever the allocator
/// keeps in its arenas. Its capacity beyond the first [`READ_CHUNK`] is charged to the
/// shared budget (invariant: `charged` is that amount, always).
struct LineBuffer {
    storage: Option<memmap2::MmapMut>,
    /// The unparsed bytes are `storage[start..end]`: a parsed line only moves `start`, so
    /// many lines in one read cost no copying; they move to the front before a read.
    start: usize,
    end: usize,
    charged: usize,
    budget: Arc<ByteBudget>,
}

/// Why a connection could not buffer more bytes.
enum BufferRefusal {
    /// The shared budget is spent.
    BudgetSpent,
    /// The OS gave no memory.
    NoMemory(std::io::Error),
}

impl LineBuffer {
    fn new(budget: Arc<ByteBudget>) -> LineBuffer {
        LineBuffer {
            storage: None,
            start: 0,
            end: 0,
            charged: 0,
            budget,
        }
    }

    fn capacity(&self) -> usize {
        self.storage.as_ref().map_or(0, |storage| storage.len())
    }

    /// The buffered bytes.
    fn bytes(&self) -> &[u8] {
        self.storage
            .as_ref()
            .map_or(&[], |storage| &storage[self.start..self.end])
    }

    /// The room after the buffered bytes, to read into.
    fn spare(&mut self) -> &mut [u8] {
        match &mut self.storage {
            Some(storage) => &mut storage[self.end..],
            None => &mut [],
        }
    }

    /// Records `count` bytes read into [`LineBuffer::spare`].
    fn filled(&mut self, count: usize) {
        self.end += count;
    }

    /// Makes room to read one more chunk, growing the capacity at most to `max_capacity`
    /// (nothing changes when it fails).
    fn reserve_chunk(&mut self, max_capacity: usize) -> Result<(), BufferRefusal> {
        if let Some(storage) = &mut self.storage {
            storage.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let needed = self.end + READ_CHUNK;
        if needed <= self.capacity() {
            return Ok(());
        }
        let capacity = (self.capacity() * 2).min(max_capacity).max(needed);
        let charged = self.charged;
        if !self.charge_for(capacity) {
            return Err(BufferRefusal::BudgetSpent);
        }
        if let Err(error) = self.move_to(capacity) {
            let restored = self.charge_for(charged + READ_CHUNK);
            debug_assert!(restored, "giving bytes back always succeeds");
            return Err(BufferRefusal::NoMemory(error));
        }
        Ok(())
    }

    /// Moves the bytes to the front of a new mapping of `capacity` bytes (the old one is
    /// unmapped).
    fn move_to(&mut self, capacity: usize) -> std::io::Result<()> {
        let mut storage = memmap2::MmapMut::map_anon(capacity)?;
        let bytes = self.bytes();
        storage[..bytes.len()].copy_from_slice(bytes);
        self.end = bytes.len();
        self.start = 0;
        self.storage = Some(storage);
        Ok(())
    }

    /// Brings the charge to what `capacity` costs; false (and no change) when that needs
    /// more than the budget has left.
    fn charge_for(&mut self, capacity: usize) -> bool {
        let due = capacity.saturating_sub(READ_CHUNK);
        if due > self.charged {
            if !self.budget.try_take(due - self.charged) {
                return false;
            }
        } else {
            self.budget.give_back(self.charged - due);
        }
        self.charged = due;
        true
    }

    /// Drops the first `count` bytes (a line that was parsed). An empty buffer is unmapped
    /// (an idle connection holds none) and a large one shrinks to what remains.
    fn consume(&mut self, count: usize) {
        let capacity = self.capacity();
        self.start += count;
        let remaining = self.end - self.start;
        if remaining == 0 {
            self.storage = None;
            self.start = 0;
            self.end = 0;
        } else if capacity <= LARGE_BUFFER
            || remaining >= capacity / 4
            || self.move_to(remaining.max(READ_CHUNK)).is_err()
        {
            return;
        }
        let shrunk = self.charge_for(self.capacity());
        debug_assert!(shrunk, "a smaller buffer needs no more budget");
        if capacity > LARGE_BUFFER {
            self.budget.large_buffer_freed.notify_one();
        }
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        self.budget.give_back(self.charged);
        if self.capacity() > LARGE_BUFFER {
            self.storage = None;
            self.budget.large_buffer_freed.notify_one();
        }
    }
}

/// The pause between failed accepts: it starts at `accept_backoff` and doubles up to
/// `max_accept_backoff`; a successful accept resets it.
#[derive(Debug)]
struct AcceptBackoff {
    first: Duration,
    longest: Duration,
    next: Duration,
}

impl AcceptBackoff {
    fn new(limits: &ControlLimits) -> AcceptBackoff {
        AcceptBackoff {
            first: limits.accept_backoff,
            longest: limits.max_accept_backoff,
            next: limits.accept_backoff,
        }
    }

    /// The pause after one more failure.
    fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.longest);
        pause
    }

    fn succeeded(&mut self) {
        self.next = self.first;
    }
}

/// One warning per interval; the occurrences in between are counted, not logged.
#[derive(Debug)]
struct RateLimitedWarning {
    interval: Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl RateLimitedWarning {
    fn new(interval: Duration) -> RateLimitedWarning {
        RateLimitedWarning {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// An occurrence at `now`: `Some(occurrences suppressed since the last warning)` when a
    /// warning is due, else `None` (and it is counted).
    fn due(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Tells a client over the connection cap why it is closed, without reading from it. A
/// fresh socket's send buffer is empty, so the write does not block.
fn refuse(stream: &UnixStream, max_connections: usize) {
    let error = format!(
        "too many connections: the host serves at most {max_connections} clients at once; retry later (graft start --max-connections)"
    );
    let mut line = json!({"ok": false, "error": error}).to_string();
    line.push('\n');
    let _ = stream.try_write(line.as_bytes());
}

/// Writes one response line, giving up when the client accepts none of it for the idle
/// timeout.
async fn send(
    writer: &mut (impl AsyncWriteExt + Unpin),
    value: &Value,
    limits: &ControlLimits,
) -> std::io::Result<()> {
    tokio::time::timeout(limits.idle_timeout, write_line(writer, value))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing of a response for {} s",
                    limits.idle_timeout.as_secs_f64()
                ),
            )
        })?
}

async fn serve_client(
    stream: UnixStream,
    handler: Arc<ReleaseHandler>,
    limits: &ControlLimits,
    budget: Arc<ByteBudget>,
) -> std::io::Result<()> {
    let (reader, mut writer) = stream.into_split();
    let mut buffer = LineBuffer::new(budget);
    // `buffer.bytes()[..scanned]` holds no newline.
    let mut scanned = 0;
    // The client has closed its side: what is buffered is all there is.
    let mut ended = false;
    loop {
        let buffered = buffer.bytes().len();
        let newline = buffer.bytes()[scanned..]
            .iter()
            .position(|&byte| byte == b'\n')
            .map(|offset| scanned + offset);
        scanned = buffered;
        let line_end = match newline {
            Some(end) => end,
            // The client's last line, without a newline.
            None if ended && buffered > 0 => buffered,
            None if ended => return Ok(()),
            None if buffered > limits.max_request_bytes => buffered,
            None => {
                match tokio::time::timeout(limits.idle_timeout, reader.readable()).await {
                    Ok(ready) => ready?,
                    Err(_) => {
                        let error = format!(
                            "closed: no request for {} s (graft start --idle-timeout)",
                            limits.idle_timeout.as_secs_f64()
                        );
                        send(&mut writer, &json!({"ok": false, "error": error}), limits).await?;
                        return Ok(());
                    }
                }
                let error = match buffer.reserve_chunk(limits.max_request_bytes + READ_CHUNK) {
                    Ok(()) => None,
                    Err(BufferRefusal::BudgetSpent) => Some(format!(
                        "the host's request buffers are full ({} MiB across all connections): retry later",
                        limits.max_buffered_bytes / (1024 * 1024)
                    )),
                    Err(BufferRefusal::NoMemory(error)) => Some(format!(
                        "the host could not allocate a request buffer: {error}"
                    )),
                };
                if let Some(error) = error {
                    send(&mut writer, &json!({"ok": false, "error": error}), limits).await?;
                    return Ok(());
                }
                match reader.try_read(buffer.spare()) {
                    Ok(0) => ended = true,
                    Ok(read) => buffer.filled(read),
                    // Readiness was stale: wait again, holding no buffer if it is empty.
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        buffer.consume(0)
                    }
                    Err(error) => return Err(error),
                }
                continue;
            }
        };
        if line_end > limits.max_request_bytes {
            let error = format!(
                "request too large: more than {} bytes without a newline",
                limits.max_request_bytes
            );
            send(&mut writer, &json!({"ok": false, "error": error}), limits).await?;
            return Ok(());
        }
        let parsed = {
            let text = String::from_utf8_lossy(&buffer.bytes()[..line_end]);
            let text = text.trim();
            (!text.is_empty()).then(|| serde_json::from_str::<Request>(text))
        };
        buffer.consume((line_end + 1).min(buffered));
        scanned = 0;
        let request = match parsed {
            None => continue,
            Some(Ok(request)) => request,
            Some(Err(error)) => {
                let message = format!("invalid request: {error}");
                send(&mut writer, &json!({"ok": false, "error": message}), limits).await?;
                continue;
            }
        };
        let (progress_sender, mut progress) = tokio::sync::mpsc::unbounded_channel::<String>();
        let work = {
            let handler = Arc::clone(&handler);
            tokio::spawn(async move { execute(&handler, request, progress_sender).await })
        };
        while let Some(message) = progress.recv().await {
            send(&mut writer, &json!({"progress": message}), limits).await?;
        }
        let response = match work.await {
            Ok(Ok(result)) => json!({"ok": true, "result": result}),
            Ok(Err(error)) => json!({"ok": false, "error": error}),
            Err(error) => {
                json!({"ok": false, "error": format!("the request failed inside the host: {error}")})
            }
        };
        send(&mut writer, &response, limits).await?;
    }
}

fn describe_phase(phase: &InstallPhase) -> String {
    match phase {
        InstallPhase::Loading(count) => format!("loading {count} libraries"),
        InstallPhase::Suspending(count) => format!("suspending {count} actors"),
        InstallPhase::Migrating(count) => format!("migrating {count} actors"),
        InstallPhase::Resuming(count) => format!("resuming {count} actors"),
        InstallPhase::RolledBack => "rolled back: every actor is on its old code".to_owned(),
        InstallPhase::Instruction { index, total } => {
            format!("instruction {} of {total}", index + 1)
        }
    }
}

async fn actor(handler: &ReleaseHandler, name: &str) -> Result<ActorRef, String> {
    handler
        .runtime()
        .whereis(name)
        .ok_or_else(|| format!("no actor named {name:?}"))
}

fn system_error(error: SystemError) -> String {
    error.to_string()
}

async fn is_suspended(actor: &ActorRef) -> Result<bool, String> {
    Ok(actor
        .status(SYSTEM_TIMEOUT)
        .await
        .map_err(system_error)?
        .suspended)
}

/// Runs one request; progress lines go to `progress`.
async fn execute(
    handler: &ReleaseHandler,
    request: Request,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Value, String> {
    match request {
        Request::Status {} => Ok(status(handler).await),
        Request::Releases {} => {
            Ok(serde_json::to_value(handler.which_releases().await).unwrap_or_default())
        }
        Request::Install { version, permanent } => {
            install(handler, &version, permanent, progress).await
        }
        Request::MakePermanent { version } => {
            handler
                .make_permanent(&version)
                .await
                .map_err(|error| error.to_string())?;
            Ok(json!({"permanent": version}))
        }
        Request::Rollback {} => {
            let report = handler
                .rollback(Some(report_progress(progress)))
                .await
                .map_err(|error| error.to_string())?;
            Ok(install_value(&report, false))
        }
        Request::Remove { version } => {
            handler
                .remove(&version)
                .await
                .map_err(|error| error.to_string())?;
            Ok(json!({"removed": version}))
        }
        Request::Call {
            actor: name,
            message,
            timeout_ms,
        } => {
            let target = actor(handler, &name).await?;
            let request = codec::encode(&message).map_err(|error| error.to_string())?;
            let timeout = Duration::from_millis(timeout_ms.unwrap_or(5_000));
            let reply = target
                .call(request, timeout)
                .await
                .map_err(|error| error.to_string())?;
            rmp_serde::from_slice::<Value>(&reply)
                .map_err(|error| format!("the reply is not decodable: {error}"))
        }
        Request::Cast {
            actor: name,
            message,
        } => {
            let target = actor(handler, &name).await?;
            target
                .try_cast(codec::encode(&message).map_err(|error| error.to_string())?)
                .map_err(|error| error.to_string())?;
            Ok(json!({"cast": name}))
        }
        Request::State { actor: name } => actor(handler, &name)
            .await?
            .get_state(SYSTEM_TIMEOUT)
            .await
            .map_err(system_error),
        Request::Suspend { actor: name } => {
            let target = actor(handler, &name).await?;
            if is_suspended(&target).await? {
                return Err(format!("actor {name} is already suspended"));
            }
            target.suspend(SYSTEM_TIMEOUT).await.map_err(system_error)?;
            Ok(json!({"suspended": name}))
        }
        Request::Resume { actor: name } => {
            let target = actor(handler, &name).await?;
            if !is_suspended(&target).await? {
                return Err(format!("actor {name} is not suspended: nothing to resume"));
            }
            target.resume(SYSTEM_TIMEOUT).await.map_err(system_error)?;
            Ok(json!({"resumed": name}))
        }
    }
}

async fn install(
    handler: &ReleaseHandler,
    version: &Version,
    permanent: bool,
    progress: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Value, String> {
    let report = handler
        .install(version, Some(report_progress(progress)))
        .await
        .map_err(|error| error.to_string())?;
    if permanent {
        handler
            .make_permanent(version)
            .await
            .map_err(|error| error.to_string())?;
    }
    Ok(install_value(&report, permanent))
}

/// Sends each phase of an install to the client as a progress line.
fn report_progress(progress: tokio::sync::mpsc::UnboundedSender<String>) -> ProgressFn {
    Arc::new(move |phase| {
        let _ = progress.send(describe_phase(&phase));
    })
}

/// An install's report as the protocol carries it.
fn install_value(report: &InstallReport, permanent: bool) -> Value {
    let mut value = serde_json::to_value(report).unwrap_or_default();
    value["longest_pause_us"] = json!(report.longest_pause.as_micros() as u64);
    value["total_us"] = json!(report.total.as_micros() as u64);
    value["permanent"] = json!(permanent);
    value
}

/// The supervision tree as JSON, each actor with its plugin, version, state of running,
/// restarts, mailbox length, high-water mark, bound and refusals; the resident libraries
/// (in-process versions); the worker process of each isolated plugin (pid, processes
/// started); the releases.
pub async fn status(handler: &ReleaseHandler) -> Value {
    let root = handler.root_supervisor().await;
    // Every actor is asked at once under one deadline, so actors stuck in callbacks cost
    // one wait, not one each.
    let mut actors = Vec::new();
    collect_workers(root.clone(), &mut actors).await;
    let statuses: HashMap<ProcessId, Value> = actors
        .iter()
        .zip(crate::runtime::status_all(&actors, status_wait(handler)).await)
        .map(|(actor, status)| {
            let entry = match status {
                Ok(status) => json!({
                    "name": status.name,
                    "plugin": status.plugin,
                    "version": status.version,
                    "state": if status.suspended { "suspended" } else { "running" },
                    "restarts": status.restarts,
                    "mailbox": status.mailbox_length,
                    "mailbox_high_water": status.mailbox_high_water,
                    "max_mailbox": status.max_mailbox,
                    "mailbox_refused": status.mailbox_refused,
                }),
                // Busy in a callback: the mailbox figures are the senders' own counts.
                Err(error) => {
                    json!({
                        "name": actor.name(),
                        "code": actor.code_label(),
                        "state": "busy",
                        "error": error.to_string(),
                        "mailbox": actor.mailbox_length(),
                        "mailbox_high_water": actor.mailbox_high_water(),
                        "max_mailbox": actor.max_mailbox(),
                        "mailbox_refused": actor.mailbox_refused(),
                    })
                }
            };
            (actor.id(), entry)
        })
        .collect();
    let tree = describe_supervisor("root", root, &statuses).await;
    let (resident, unloaded) = handler.resident().await;
    json!({
        "release": handler.current_version().await,
        "install_in_progress": handler.install_in_progress(),
        "tree": tree,
        "resident": resident,
        "workers": handler.isolated_workers(),
        "still_mapped_after_close": unloaded
            .iter()
            .filter_map(|report| match &report.outcome {
                crate::plugin::UnloadOutcome::Resident => Some(report.identity.to_string()),
                crate::plugin::UnloadOutcome::Pinned(reason) => {
                    Some(format!("{} (pinned: {reason})", report.identity))
                }
                _ => None,
            })
            .collect::<Vec<_>>(),
        "stuck_callbacks": crate::runtime::executor::stuck_callbacks(),
        "releases": handler.which_releases().await,
    })
}

/// How long `status` waits for actors to report.
const STATUS_WAIT: Duration = Duration::from_millis(300);

/// How long `status` waits for actors while an install runs: actors in the middle of a
/// migration show as busy rather than hold up the answer.
const STATUS_WAIT_DURING_INSTALL: Duration = Duration::from_millis(30);

fn status_wait(handler: &ReleaseHandler) -> Duration {
    if handler.install_in_progress() {
        STATUS_WAIT_DURING_INSTALL
    } else {
        STATUS_WAIT
    }
}

fn collect_workers<'a>(
    supervisor: SupervisorRef,
    found: &'a mut Vec<ActorRef>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        for child in supervisor.which_children().await.unwrap_or_default() {
            match child.child {
                Some(ChildRef::Supervisor(nested)) => collect_workers(nested, found).await,
                Some(ChildRef::Worker(actor)) => found.push(actor),
                None => {}
            }
        }
    })
}

fn describe_supervisor<'a>(
    id: &'a str,
    supervisor: SupervisorRef,
    statuses: &'a HashMap<ProcessId, Value>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Value> + Send + 'a>> {
    Box::pin(async move {
        let mut children = Vec::new();
        for child in supervisor.which_children().await.unwrap_or_default() {
            let entry = match &child.child {
                Some(ChildRef::Supervisor(nested)) => {
                    describe_supervisor(&child.id, nested.clone(), statuses).await
                }
                Some(ChildRef::Worker(actor)) => {
                    let mut entry = statuses.get(&actor.id()).cloned().unwrap_or_else(
                        || json!({"name": actor.name(), "state": "started after the count"}),
                    );
                    entry["id"] = json!(child.id);
                    entry
                }
                None => json!({"id": child.id, "state": "stopped", "restarts": child.restarts}),
            };
            children.push(entry);
        }
        json!({"id": id, "supervisor": true, "children": children})
    })
}

/// A connection to a running host.
pub struct ControlClient {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl ControlClient {
    /// Connects to the host serving `root`. Before anything is sent, the root must pass
    /// [`crate::trust::check_root`], the socket must be a socket of this user (not a link),
    /// and the process serving it must run as this user (`SO_PEERCRED`).
    pub async fn connect(root: &Path) -> Result<ControlClient, ControlError> {
        use crate::trust::{Kind, TrustError, check, check_root, current_user};
        use std::io::ErrorKind;
        let path = socket_path(root);
        let uid = current_user();
        let refused = |path: PathBuf, source: std::io::Error| match source.kind() {
            ErrorKind::PermissionDenied => ControlError::PermissionDenied { path, uid, source },
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                ControlError::NotRunning { path, source }
            }
            _ => ControlError::Connection(source),
        };
        check_root(root).map_err(|error| match error {
            TrustError::Inspect { path, source } => refused(path, source),
            error => ControlError::Untrusted(error),
        })?;
        match check(&path, Kind::Socket) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ControlError::NotRunning {
                    path,
                    source: ErrorKind::NotFound.into(),
                });
            }
            Err(TrustError::Inspect { source, .. }) => return Err(refused(path, source)),
            Err(error) => return Err(error.into()),
        }
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| refused(path.clone(), source))?;
        let peer = stream.peer_cred()?;
        if peer.uid() != uid {
            return Err(ControlError::Impostor {
                path,
                pid: peer.pid().unwrap_or(0),
                uid: peer.uid(),
                expected: uid,
            });
        }
        let (reader, writer) = stream.into_split();
        Ok(ControlClient {
            path,
            reader: BufReader::new(reader),
            writer,
        })
    }

    /// The connection ended before the answer: the host died, or (when it still accepts
    /// connections) it closed this one.
    async fn ended(&self, detail: String) -> ControlError {
        if UnixStream::connect(&self.path).await.is_ok() {
            ControlError::Protocol(format!(
                "the host closed the connection before answering ({detail})"
            ))
        } else {
            ControlError::HostDied {
                path: self.path.clone(),
                detail,
            }
        }
    }

    /// Sends a request; `on_progress` sees each progress line; returns the result.
    pub async fn request(
        &mut self,
        request: &Request,
        mut on_progress: impl FnMut(&str),
    ) -> Result<Value, ControlError> {
        let value = serde_json::to_value(request)
            .map_err(|error| ControlError::Protocol(error.to_string()))?;
        if let Err(error) = write_line(&mut self.writer, &value).await {
            return Err(self.ended(format!("sending the request: {error}")).await);
        }
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line).await {
                Ok(0) => return Err(self.ended("closed without an answer".to_owned()).await),
                Ok(_) => {}
                Err(error) => {
                    return Err(self.ended(format!("reading the answer: {error}")).await);
                }
            }
            let response: Value = serde_json::from_str(&line)
                .map_err(|error| ControlError::Protocol(format!("{error}: {line}")))?;
            if let Some(message) = response.get("progress").and_then(Value::as_str) {
                on_progress(message);
                continue;
            }
            return match response.get("ok").and_then(Value::as_bool) {
                Some(true) => Ok(response.get("result").cloned().unwrap_or(Value::Null)),
                Some(false) => Err(ControlError::Failed(
                    response
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_owned(),
                )),
                None => Err(ControlError::Protocol(line)),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_the_documented_json() {
        let request: Request =
            serde_json::from_str(r#"{"command":"call","actor":"kv","message":{"Get":"a"}}"#)
                .unwrap();
        assert_eq!(
            request,
            Request::Call {
                actor: "kv".to_owned(),
                message: json!({"Get": "a"}),
                timeout_ms: None
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"command":"launch"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"command":"status","extra":1}"#).is_err());
    }
}

#[cfg(test)]
mod properties {
    //! The request decoder never panics, whatever the line.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_decode_to_a_request_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = serde_json::from_slice::<Request>(&bytes);
        }

        #[test]
        fn json_shaped_lines_decode_to_a_request_or_an_error(
            command in "(status|releases|install|make_permanent|rollback|remove|call|cast|state|suspend|resume|[a-z]{1,8})",
            field in "(version|actor|message|timeout_ms|permanent|[a-z]{1,6})",
            value in "(\"1.0.0\"|\"x\"|1|-1|true|null|\\{\\}|\\[\\]|\"[a-z]{0,5}\")",
        ) {
            let line = format!("{{\"command\":\"{command}\",\"{field}\":{value}}}");
            let _ = serde_json::from_str::<Request>(&line);
        }
    }
}

#[cfg(test)]
mod limits {
    use super::*;

    #[test]
    fn the_byte_budget_refuses_what_does_not_fit_and_takes_back_what_is_given() {
        let budget = ByteBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(41), "60 + 41 is over 100");
        assert!(budget.try_take(40));
        budget.give_back(100);
        assert!(budget.try_take(100));
    }

    #[test]
    fn a_line_buffer_charges_its_capacity_beyond_the_first_chunk_and_frees_what_it_consumed() {
        let budget = Arc::new(ByteBudget::new(4 * READ_CHUNK));
        let mut buffer = LineBuffer::new(Arc::clone(&budget));
        let max_capacity = 1024 * 1024;
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        assert_eq!(buffer.capacity(), READ_CHUNK);
        assert_eq!(buffer.charged, 0, "the first chunk is free");
        buffer.spare().fill(b'x');
        buffer.filled(READ_CHUNK);
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        assert_eq!(buffer.capacity(), 2 * READ_CHUNK);
        assert_eq!(buffer.bytes(), vec![b'x'; READ_CHUNK]);
        assert_eq!(
            budget.used.load(std::sync::atomic::Ordering::Acquire),
            READ_CHUNK
        );
        buffer.filled(READ_CHUNK);
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        buffer.filled(2 * READ_CHUNK);
        assert!(
            matches!(
                buffer.reserve_chunk(max_capacity),
                Err(BufferRefusal::BudgetSpent)
            ),
            "8 chunks would charge 7, over the budget of 4"
        );
        assert_eq!(
            buffer.capacity(),
            4 * READ_CHUNK,
            "a refusal changes nothing"
        );
        buffer.spare();
        buffer.consume(4 * READ_CHUNK);
        assert_eq!(buffer.capacity(), 0, "an emptied buffer is unmapped");
        assert_eq!(budget.used.load(std::sync::atomic::Ordering::Acquire), 0);
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        buffer.spare()[..3].copy_from_slice(b"a\nb");
        buffer.filled(3);
        buffer.consume(2);
        assert_eq!(buffer.bytes(), b"b");
        assert_eq!(buffer.start, 2, "a parsed line moves nothing");
        assert!(buffer.reserve_chunk(max_capacity).is_ok());
        assert_eq!(
            buffer.start, 0,
            "before a read, the rest moves to the front"
        );
        assert_eq!(buffer.bytes(), b"b");
        drop(buffer);
        assert_eq!(budget.used.load(std::sync::atomic::Ordering::Acquire), 0);
    }

    #[test]
    fn a_large_buffer_shrinks_to_what_remains_after_a_line_and_returns_its_charge() {
        let budget = Arc::new(ByteBudget::new(usize::MAX));
        let mut buffer = LineBuffer::new(Arc::clone(&budget));
        while buffer.capacity() < 256 * 1024 {
            assert!(buffer.reserve_chunk(1024 * 1024).is_ok());
            let room = buffer.spare().len();
            buffer.filled(room);
        }
        buffer.consume(buffer.bytes().len() - 10);
        assert_eq!(buffer.capacity(), READ_CHUNK);
        assert_eq!(buffer.bytes().len(), 10);
        assert_eq!(budget.used.load(std::sync::atomic::Ordering::Acquire), 0);
    }

    #[test]
    fn failed_accepts_pause_longer_each_time_up_to_the_longest_and_a_success_resets_it() {
        let mut backoff = AcceptBackoff::new(&ControlLimits::default());
        let pauses: Vec<_> = (0..6).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(100));
    }

    #[test]
    fn a_warning_is_due_once_per_interval_with_the_count_of_those_suppressed() {
        let mut warning = RateLimitedWarning::new(Duration::from_secs(10));
        let start = std::time::Instant::now();
        assert_eq!(warning.due(start), Some(0));
        for second in 1..10 {
            assert_eq!(warning.due(start + Duration::from_secs(second)), None);
        }
        assert_eq!(warning.due(start + Duration::from_secs(10)), Some(9));
        assert_eq!(warning.due(start + Duration::from_secs(11)), None);
    }
}
