//! Serving the control socket: binding it (after the root's trust checks, never
//! following a link), accepting clients within [`ControlLimits`], and one task per client
//! that reads request lines and answers each.

use super::commands::execute;
use super::limits::*;
use super::{ControlError, Request, socket_path, write_line};
use crate::release::handler::ReleaseHandler;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

/// This process's claim to be the one host of a root ([`ControlServer::claim_root`]): held
/// for the host's life.
#[derive(Debug)]
pub struct HostClaim {
    _directory: Option<std::os::fd::OwnedFd>,
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
            Self::refuse_if_served(root).await?;
            std::fs::remove_file(&path).map_err(bind_error(&path))?;
        }
        let listener = UnixListener::bind(&path).map_err(bind_error(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error(&path))?;
        Ok(ControlServer { listener, path })
    }

    /// [`ControlError::AlreadyRunning`] when a host answers on the root's socket: a host
    /// checks this before it boots, so a second one on a live root starts nothing.
    pub async fn refuse_if_served(root: &Path) -> Result<(), ControlError> {
        let path = socket_path(root);
        if UnixStream::connect(&path).await.is_ok() {
            return Err(ControlError::AlreadyRunning(path));
        }
        Ok(())
    }

    /// Makes this process the one host of `root` before it boots anything: refuses when a
    /// host answers on the socket ([`ControlError::AlreadyRunning`]) or holds the root's
    /// lock ([`ControlError::RootInUse`]: one still booting, whose socket is not bound
    /// yet). The lock is an exclusive `flock` on the root directory, held until the
    /// [`HostClaim`] is dropped; the kernel drops it when the process dies however it dies.
    /// A root that does not exist is not locked: booting it fails and says why.
    pub async fn claim_root(root: &Path) -> Result<HostClaim, ControlError> {
        use rustix::fs::{FlockOperation, Mode, OFlags};
        Self::refuse_if_served(root).await?;
        let directory = match rustix::fs::open(
            root,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(directory) => directory,
            Err(rustix::io::Errno::NOENT) => return Ok(HostClaim { _directory: None }),
            Err(errno) => {
                return Err(ControlError::Lock {
                    path: root.to_owned(),
                    source: errno.into(),
                });
            }
        };
        match rustix::fs::flock(&directory, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(HostClaim {
                _directory: Some(directory),
            }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(ControlError::RootInUse(root.to_owned())),
            Err(errno) => Err(ControlError::Lock {
                path: root.to_owned(),
                source: errno.into(),
            }),
        }
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
        accepting.await
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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
            Ok(Err(error)) => json!({"ok": false, "error": error.to_string()}),
            Err(error) => {
                json!({"ok": false, "error": format!("the request failed inside the host: {error}")})
            }
        };
        send(&mut writer, &response, limits).await?;
    }
}
