//! The host side of process isolation: [`Worker`] (one worker process per plugin, spawned
//! and respawned on demand, watched by a monitor thread), [`IsolatedPlugin`] (one plugin
//! version loaded in a worker), [`RemoteInstance`] (one actor's behaviour, in the worker)
//! and [`IsolatedFactory`].
//!
//! Each actor has its own connection; a callback writes one `Call` frame and then serves
//! the worker's service requests with the `&dyn HostServices` the runtime passed in, on the
//! actor's own thread, until the `Done` frame arrives. So the runtime's invariants (one
//! callback at a time, replies, timers, calls from callbacks) hold unchanged.

use super::wire::{
    self, Answer, Callback, FromWorker, LoadedInfo, LogRecord, Service, ToWorker, WireBytes,
    WireCallbackError, WireOutputs,
};
use crate::plugin::{
    CallbackError, Detached, Expectations, HostServices, Outputs, PluginIdentity, Sha256Digest,
};
use crate::runtime::{ActorRef, Behaviour, BehaviourFactory, Started};
use graft_plugin::StopReason;
use semver::Version;
use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use thiserror::Error;

/// The environment variable naming the worker program (a `graft` binary).
pub const WORKER_PROGRAM_ENV: &str = "GRAFT_WORKER_PROGRAM";

/// How often a worker's monitor checks whether it exited and how much memory it uses.
const MONITOR_INTERVAL: Duration = Duration::from_millis(10);

/// How long a callback whose connection broke waits for the monitor to learn why.
const EXIT_WAIT: Duration = Duration::from_secs(5);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Process isolation failed outside a callback (finding, starting or reaching a worker,
/// or loading a library in it).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IsolationError {
    /// No worker program was found.
    #[error(
        "no worker program found (a `graft` binary, set with {WORKER_PROGRAM_ENV}); tried {}",
        describe_paths(tried)
    )]
    WorkerProgramNotFound {
        /// Every path looked at, in order.
        tried: Vec<PathBuf>,
    },
    /// The worker could not be started.
    #[error("cannot start worker {program} for plugin {plugin}: {message}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The plugin.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The worker's socket could not be set up or reached.
    #[error("worker of plugin {plugin}: socket {socket}: {message}")]
    Socket {
        /// The plugin.
        plugin: String,
        /// The socket.
        socket: PathBuf,
        /// Why.
        message: String,
    },
    /// The worker refused the library (the loader's message names the check).
    #[error("worker of plugin {plugin}: {message}")]
    Load {
        /// The plugin.
        plugin: String,
        /// The library.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The worker died (or the connection broke) during the exchange.
    #[error("worker of plugin {plugin}: {reason}")]
    Crashed {
        /// The plugin.
        plugin: String,
        /// `worker crashed: ...`.
        reason: String,
    },
}

fn describe_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing".to_owned();
    }
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where the worker program (a `graft` binary with the hidden `worker` subcommand) is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum WorkerProgram {
    /// `$GRAFT_WORKER_PROGRAM`, else the running executable if it is `graft`, else a
    /// `graft` next to it or in its parent directory (test binaries live in
    /// `target/debug/deps`, the binary in `target/debug`).
    #[default]
    Search,
    /// This file.
    Path(PathBuf),
}

impl WorkerProgram {
    /// The program to run, or which paths were tried.
    pub fn resolve(&self) -> Result<PathBuf, IsolationError> {
        let mut tried = Vec::new();
        let candidates: Vec<PathBuf> = match self {
            WorkerProgram::Path(path) => vec![path.clone()],
            WorkerProgram::Search => {
                let mut candidates = Vec::new();
                if let Some(path) = std::env::var_os(WORKER_PROGRAM_ENV) {
                    candidates.push(PathBuf::from(path));
                } else if let Ok(exe) = std::env::current_exe() {
                    if exe.file_name().is_some_and(|name| name == "graft") {
                        candidates.push(exe.clone());
                    }
                    if let Some(directory) = exe.parent() {
                        candidates.push(directory.join("graft"));
                        if let Some(parent) = directory.parent() {
                            candidates.push(parent.join("graft"));
                        }
                    }
                }
                candidates
            }
        };
        for candidate in candidates {
            if candidate.is_file() {
                return Ok(candidate);
            }
            tried.push(candidate);
        }
        Err(IsolationError::WorkerProgramNotFound { tried })
    }
}

/// How a plugin's worker runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerOptions {
    /// The program.
    pub program: WorkerProgram,
    /// Kill the worker when its resident memory exceeds this many MiB.
    pub memory_limit_mb: Option<u64>,
}

/// The worker process of one plugin. Cheap to clone; the process is started on first use,
/// started again after it dies, and killed when the last clone (and every instance and
/// [`IsolatedPlugin`] using it) is gone.
#[derive(Clone)]
pub struct Worker {
    shared: Arc<WorkerShared>,
}

struct WorkerShared {
    plugin: String,
    program: WorkerProgram,
    /// The memory limit in MiB (0: none), read by the monitor of every process it starts,
    /// so a change applies to the running process too.
    memory_limit_mb: Arc<AtomicU64>,
    /// A root's `run/libraries`: each process puts its library copies in its own
    /// directory there (`None`: the worker's temporary directory).
    libraries: Option<PathBuf>,
    current: Mutex<Option<Arc<Process>>>,
}

impl Drop for WorkerShared {
    fn drop(&mut self) {
        if let Some(process) = lock(&self.current).take() {
            process.stop();
        }
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("plugin", &self.shared.plugin)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Worker {
    /// A worker for `plugin` (not started yet).
    pub fn new(plugin: impl Into<String>, options: WorkerOptions) -> Worker {
        Worker::with_libraries(plugin, options, None)
    }

    /// A worker for `plugin` (not started yet) whose processes put their library copies
    /// in their own directories under `libraries` (a root's `run/libraries`, see
    /// [`crate::ownership`]); the directory of a process that exits is removed.
    pub fn with_libraries(
        plugin: impl Into<String>,
        options: WorkerOptions,
        libraries: Option<PathBuf>,
    ) -> Worker {
        Worker {
            shared: Arc::new(WorkerShared {
                plugin: plugin.into(),
                program: options.program,
                memory_limit_mb: Arc::new(AtomicU64::new(options.memory_limit_mb.unwrap_or(0))),
                libraries,
                current: Mutex::new(None),
            }),
        }
    }

    /// The plugin it runs.
    pub fn plugin(&self) -> &str {
        &self.shared.plugin
    }

    /// Its options (with the memory limit in force now).
    pub fn options(&self) -> WorkerOptions {
        WorkerOptions {
            program: self.shared.program.clone(),
            memory_limit_mb: self.memory_limit_mb(),
        }
    }

    /// The memory limit in force, in MiB.
    pub fn memory_limit_mb(&self) -> Option<u64> {
        Some(self.shared.memory_limit_mb.load(Ordering::Relaxed)).filter(|&limit| limit > 0)
    }

    /// Changes the memory limit; it applies to the running process at once (its monitor
    /// reads it on every check) and to every process started later.
    pub fn set_memory_limit_mb(&self, limit: Option<u64>) {
        self.shared
            .memory_limit_mb
            .store(limit.unwrap_or(0), Ordering::Relaxed);
    }

    /// The latest process started (running or exited), to learn later whether it exited
    /// and why; `None` before the first start.
    pub fn latest_process(&self) -> Option<WorkerProcess> {
        lock(&self.shared.current)
            .as_ref()
            .map(|process| WorkerProcess(Arc::clone(process)))
    }

    /// The pid of the running worker process, if one runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.shared.current)
            .as_ref()
            .filter(|process| process.exit_reason().is_none())
            .map(|process| process.pid)
    }

    /// How many worker processes this handle has started in all.
    pub fn spawned(&self) -> u64 {
        lock(&self.shared.current)
            .as_ref()
            .map_or(0, |process| process.generation)
    }

    /// The running process, started now if none runs.
    fn process(&self) -> Result<Arc<Process>, IsolationError> {
        let mut current = lock(&self.shared.current);
        if let Some(process) = current.as_ref()
            && process.exit_reason().is_none()
        {
            return Ok(Arc::clone(process));
        }
        let generation = current.as_ref().map_or(0, |process| process.generation) + 1;
        let process = Process::spawn(
            &self.shared.plugin,
            &self.shared.program,
            &self.shared.memory_limit_mb,
            self.shared.libraries.as_deref(),
            generation,
        )?;
        *current = Some(Arc::clone(&process));
        Ok(process)
    }
}

/// One process of a [`Worker`] (see [`Worker::latest_process`]): whether it still runs.
#[derive(Clone)]
pub struct WorkerProcess(Arc<Process>);

impl fmt::Debug for WorkerProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerProcess")
            .field("plugin", &self.0.plugin)
            .field("pid", &self.0.pid)
            .field("generation", &self.0.generation)
            .finish()
    }
}

impl WorkerProcess {
    /// Its pid (possibly exited).
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// Which start of its worker it is (1 for the first).
    pub fn generation(&self) -> u64 {
        self.0.generation
    }

    /// Why it is gone (`worker crashed: ...`, or `worker stopped`), once it is.
    pub fn exit_reason(&self) -> Option<String> {
        self.0.exit_reason()
    }
}

/// One worker process: its socket, its exit, and the actors to end when it dies.
struct Process {
    plugin: String,
    pid: u32,
    generation: u64,
    socket: PathBuf,
    /// The private (0700) directory holding the socket; removed with the process.
    _directory: SocketDirectory,
    /// Where its library copies go (its own directory in there is removed once it exits).
    libraries: Option<PathBuf>,
    state: Mutex<ProcessState>,
    exited: Condvar,
}

#[derive(Default)]
struct ProcessState {
    /// Why it is gone (`worker crashed: ...`), once it is.
    exit: Option<String>,
    /// The host asked it to stop.
    stop: bool,
    /// The actors of its instances, by registration.
    actors: HashMap<u64, ActorRef>,
}

type SpawnJob = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns worker processes from one thread that lives as long as the host: the kernel's
/// parent-death signal fires when the *thread* that forked a child exits, so workers must
/// not be forked from short-lived runtime threads.
fn spawn_child(mut command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Option<Mutex<mpsc::Sender<SpawnJob>>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("graft-worker-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in receiver {
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| Mutex::new(sender))
    });
    let Some(spawner) = spawner else {
        return command.spawn();
    };
    let (reply, answer) = mpsc::channel();
    if let Err(mpsc::SendError((mut command, _))) = lock(spawner).send((command, reply)) {
        return command.spawn();
    }
    answer
        .recv()
        .unwrap_or_else(|_| Err(io::Error::other("the spawner thread is gone")))
}

/// The worker socket's name in its directory.
const SOCKET_NAME: &str = "worker.sock";

/// The longest socket path `bind` takes (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Where a worker's socket lives: under the root beside the library copies
/// (`run/libraries/<host pid>-socket/`, locked by the host, so the next host removes it if
/// this one dies), or — without a root, or when that path would be too long for a socket —
/// `$TMPDIR/graft-<uid>/socket-<pid>` (locked the same way), else a temporary directory.
enum SocketDirectory {
    Owned(crate::ownership::OwnedDirectory),
    Temporary(tempfile::TempDir),
}

impl SocketDirectory {
    /// A locked directory in `libraries`, if the socket's path fits.
    fn under_root(libraries: &Path) -> Option<SocketDirectory> {
        // Room for `<pid>-socket-<n>/worker.sock`.
        let longest = libraries.as_os_str().len() + 40 + SOCKET_NAME.len();
        if longest > MAX_SOCKET_PATH {
            return None;
        }
        let name = format!("{}-socket", std::process::id());
        match crate::ownership::OwnedDirectory::create(libraries, &name) {
            Ok(directory) => Some(SocketDirectory::Owned(directory)),
            Err(error) => {
                tracing::warn!(
                    "worker socket: cannot use a directory under {}: {error}; using $TMPDIR",
                    libraries.display()
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            SocketDirectory::Owned(directory) => directory.path(),
            SocketDirectory::Temporary(directory) => directory.path(),
        }
    }
}

/// A signal's name, for exit reasons.
fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGSYS => "SIGSYS",
        _ => "unknown signal",
    }
}

/// `worker crashed: killed by signal 11 (SIGSEGV)`, `worker crashed: exited with status 1`.
pub fn crash_reason(status: ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(signal), _) => format!(
            "worker crashed: killed by signal {signal} ({})",
            signal_name(signal)
        ),
        (None, Some(code)) => format!("worker crashed: exited with status {code}"),
        (None, None) => format!("worker crashed: {status}"),
    }
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Process {
    fn spawn(
        plugin: &str,
        program: &WorkerProgram,
        memory_limit_mb: &Arc<AtomicU64>,
        libraries: Option<&Path>,
        generation: u64,
    ) -> Result<Arc<Process>, IsolationError> {
        use std::os::unix::fs::PermissionsExt;
        let program = program.resolve()?;
        let socket_error = |socket: &Path, error: io::Error| IsolationError::Socket {
            plugin: plugin.to_owned(),
            socket: socket.to_owned(),
            message: error.to_string(),
        };
        let directory = match libraries.and_then(SocketDirectory::under_root).or_else(|| {
            crate::ownership::temporary_for_this_process("socket").map(SocketDirectory::Owned)
        }) {
            Some(directory) => directory,
            None => {
                let directory = tempfile::Builder::new()
                    .prefix("graft-worker-")
                    .tempdir()
                    .map_err(|error| socket_error(&std::env::temp_dir(), error))?;
                std::fs::set_permissions(directory.path(), std::fs::Permissions::from_mode(0o700))
                    .map_err(|error| socket_error(directory.path(), error))?;
                SocketDirectory::Temporary(directory)
            }
        };
        let socket = directory.path().join(SOCKET_NAME);
        // The host binds and listens before the worker starts, then hands the listening
        // socket over as the worker's stdin: connections made before the worker is ready
        // wait in the backlog, so there is no start-up race.
        let listener = UnixListener::bind(&socket).map_err(|error| socket_error(&socket, error))?;
        let stdout = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|error| socket_error(&socket, error))?;
        let mut command = Command::new(&program);
        command
            .arg("worker")
            .arg("--socket")
            .arg(&socket)
            .arg("--parent")
            .arg(std::process::id().to_string())
            .arg("--log-level")
            .arg(crate::plugin::level_number().to_string());
        if let Some(libraries) = libraries {
            command.arg("--libraries").arg(libraries);
        }
        command
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::inherit());
        let child = spawn_child(command).map_err(|error| IsolationError::Spawn {
            program: program.clone(),
            plugin: plugin.to_owned(),
            message: error.to_string(),
        })?;
        let process = Arc::new(Process {
            plugin: plugin.to_owned(),
            pid: child.id(),
            generation,
            socket,
            _directory: directory,
            libraries: libraries.map(Path::to_owned),
            state: Mutex::new(ProcessState::default()),
            exited: Condvar::new(),
        });
        let monitored = Arc::clone(&process);
        let limit = Arc::clone(memory_limit_mb);
        let monitor = std::thread::Builder::new()
            .name(format!("graft-worker-monitor-{}", process.pid))
            .spawn(move || monitored.monitor(child, limit));
        if let Err(error) = monitor {
            // Without a monitor nobody would reap it: do not run it at all.
            process.finish(format!("worker crashed: cannot monitor it: {error}"));
            return Err(IsolationError::Spawn {
                program,
                plugin: plugin.to_owned(),
                message: format!("cannot start its monitor thread: {error}"),
            });
        }
        tracing::debug!(plugin, pid = process.pid, generation, "worker started");
        Ok(process)
    }

    /// Waits for the child (polling, so that the same thread can kill it without racing
    /// the reaping: a reaped pid could be reused), enforces the memory limit, and ends the
    /// actors when it is gone.
    fn monitor(self: Arc<Process>, mut child: Child, memory_limit_mb: Arc<AtomicU64>) {
        let mut over_limit: Option<String> = None;
        let reason = loop {
            match child.try_wait() {
                Ok(Some(status)) => break over_limit.unwrap_or_else(|| crash_reason(status)),
                Ok(None) => {}
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break format!("worker crashed: cannot wait for it: {error}");
                }
            }
            if lock(&self.state).stop {
                let _ = child.kill();
                let _ = child.wait();
                break "worker stopped".to_owned();
            }
            let limit = memory_limit_mb.load(Ordering::Relaxed);
            if limit > 0
                && over_limit.is_none()
                && let Some(resident) = resident_kib(self.pid)
                && resident > limit.saturating_mul(1024)
            {
                over_limit = Some(format!(
                    "worker crashed: killed for exceeding its memory limit ({} MB resident, limit {limit} MB)",
                    resident / 1024
                ));
                let _ = child.kill();
            }
            std::thread::sleep(MONITOR_INTERVAL);
        };
        // Reaped: its lock is released, so its copies (left whole if it was killed) go.
        if let Some(libraries) = &self.libraries {
            let pid = self.pid.to_string();
            let own = format!("{pid}-");
            crate::ownership::remove_abandoned(libraries, |name| {
                name == pid || name.starts_with(&own)
            });
        }
        self.finish(reason);
    }

    /// Records the exit, wakes callbacks waiting for it, and ends every attached actor.
    fn finish(&self, reason: String) {
        let actors = {
            let mut state = lock(&self.state);
            if state.exit.is_some() {
                return;
            }
            state.exit = Some(reason.clone());
            std::mem::take(&mut state.actors)
        };
        self.exited.notify_all();
        if !actors.is_empty() || reason != "worker stopped" {
            tracing::warn!(plugin = %self.plugin, pid = self.pid, actors = actors.len(), "{reason}");
        }
        for actor in actors.values() {
            actor.kill_with(StopReason::Error(reason.clone()));
        }
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
    }

    fn exit_reason(&self) -> Option<String> {
        lock(&self.state).exit.clone()
    }

    /// Waits (bounded) for the exit to be known.
    fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        while state.exit.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state = self
                .exited
                .wait_timeout(state, left)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
        }
        state.exit.clone()
    }

    /// Why an exchange with it failed: its exit if it died, else the I/O error.
    fn failure(&self, error: &io::Error) -> String {
        self.wait_exit(EXIT_WAIT)
            .unwrap_or_else(|| format!("worker connection lost: {error}"))
    }

    fn register(&self, key: u64, actor: &ActorRef) {
        let mut state = lock(&self.state);
        match &state.exit {
            Some(reason) => {
                let reason = reason.clone();
                drop(state);
                actor.kill_with(StopReason::Error(reason));
            }
            None => {
                state.actors.insert(key, actor.clone());
            }
        }
    }

    fn unregister(&self, key: u64) {
        lock(&self.state).actors.remove(&key);
    }
}

/// One connection to a worker.
struct Link {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Link {
    fn open(process: &Process) -> io::Result<Link> {
        let stream = UnixStream::connect(&process.socket)?;
        Ok(Link {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn send(&mut self, frame: &ToWorker) -> io::Result<()> {
        wire::write_frame(&mut self.writer, frame)
    }

    fn receive(&mut self) -> io::Result<FromWorker> {
        if self.reader.buffer().is_empty() {
            wire::spin_until_readable(self.reader.get_ref(), wire::SPIN_FOR_FRAME);
        }
        wire::read_frame(&mut self.reader)
    }

    /// Loads the library on this connection.
    fn load(
        &mut self,
        path: &Path,
        expect: &Expectations,
    ) -> io::Result<Result<LoadedInfo, String>> {
        self.send(&ToWorker::Load {
            protocol: wire::PROTOCOL,
            path: path.to_owned(),
            sha256: expect.sha256.map(|digest| digest.to_string()),
            name: expect.name.clone(),
            version: expect.version.as_ref().map(Version::to_string),
        })?;
        loop {
            match self.receive()? {
                FromWorker::Loaded(result) => return Ok(result),
                FromWorker::Log(record) => emit(record, None),
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("expected Loaded, the worker sent {other:?}"),
                    ));
                }
            }
        }
    }
}

/// Re-emits a worker's log record in the host's `tracing`.
fn emit(record: LogRecord, identity: Option<&PluginIdentity>) {
    if record.plugin.is_empty() {
        let message = &record.message;
        let target = &record.target;
        macro_rules! emit {
            ($level:expr) => {
                tracing::event!(target: "graft::worker", $level, worker_target = %target, "{message}")
            };
        }
        match record.level {
            1 => emit!(tracing::Level::ERROR),
            2 => emit!(tracing::Level::WARN),
            3 => emit!(tracing::Level::INFO),
            4 => emit!(tracing::Level::DEBUG),
            _ => emit!(tracing::Level::TRACE),
        }
        return;
    }
    let parsed;
    let identity = match identity {
        Some(identity)
            if identity.name == record.plugin && identity.version.to_string() == record.version =>
        {
            identity
        }
        _ => {
            parsed = PluginIdentity {
                name: record.plugin.clone(),
                version: Version::parse(&record.version).unwrap_or(Version::new(0, 0, 0)),
            };
            &parsed
        }
    };
    crate::plugin::emit_plugin_log(
        Some((identity, &record.actor)),
        record.level,
        &record.target,
        &record.message,
    );
}

/// One plugin version loaded in a [`Worker`] (loaded again, from the same verified bytes,
/// into each new worker process after a crash).
pub struct IsolatedPlugin {
    worker: Worker,
    path: PathBuf,
    /// The caller's expectations, with the SHA-256 of the first load pinned.
    expect: Expectations,
    identity: PluginIdentity,
    sha256: Sha256Digest,
    api_version: String,
}

impl fmt::Debug for IsolatedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsolatedPlugin")
            .field("identity", &self.identity)
            .field("sha256", &self.sha256)
            .field("worker", &self.worker)
            .finish()
    }
}

fn next_registration() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl IsolatedPlugin {
    /// Loads the library at `path` in `worker` (starting it if needed), with the loader's
    /// checks and `expect`; the identity comes from the worker's answer.
    pub fn load(
        worker: &Worker,
        path: &Path,
        expect: &Expectations,
    ) -> Result<Arc<IsolatedPlugin>, IsolationError> {
        let plugin = worker.plugin().to_owned();
        let process = worker.process()?;
        let crashed = |error: io::Error| IsolationError::Crashed {
            plugin: plugin.clone(),
            reason: process.failure(&error),
        };
        let mut link = Link::open(&process).map_err(&crashed)?;
        let info = link
            .load(path, expect)
            .map_err(&crashed)?
            .map_err(|message| IsolationError::Load {
                plugin: plugin.clone(),
                path: path.to_owned(),
                message,
            })?;
        let invalid = |message: String| IsolationError::Load {
            plugin: plugin.clone(),
            path: path.to_owned(),
            message,
        };
        let version = Version::parse(&info.version).map_err(|error| invalid(error.to_string()))?;
        let sha256: Sha256Digest = info
            .sha256
            .parse()
            .map_err(|error: crate::plugin::ParseDigestError| invalid(error.to_string()))?;
        let _ = link.send(&ToWorker::Drop);
        Ok(Arc::new(IsolatedPlugin {
            worker: worker.clone(),
            path: path.to_owned(),
            expect: Expectations {
                sha256: Some(sha256),
                name: Some(info.name.clone()),
                version: Some(version.clone()),
            },
            identity: PluginIdentity {
                name: info.name,
                version,
            },
            sha256,
            api_version: info.api_version,
        }))
    }

    /// Name and version.
    pub fn identity(&self) -> &PluginIdentity {
        &self.identity
    }

    /// The plugin's version.
    pub fn version(&self) -> &Version {
        &self.identity.version
    }

    /// The SHA-256 of the library's bytes.
    pub fn sha256(&self) -> Sha256Digest {
        self.sha256
    }

    /// The `graft-plugin` version it was built with.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// The library file.
    pub fn source(&self) -> &Path {
        &self.path
    }

    /// The worker it runs in.
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Opens a connection, loads this version on it and runs a creating callback.
    fn create(
        self: &Arc<Self>,
        callback: Callback,
        services: &dyn HostServices,
    ) -> Result<(RemoteInstance, Outputs), CallbackError> {
        let name = callback.name();
        let failed = |message: String| CallbackError::Failed {
            plugin: self.identity.clone(),
            callback: name,
            message,
        };
        let process = self
            .worker
            .process()
            .map_err(|error| failed(error.to_string()))?;
        let mut link = Link::open(&process).map_err(|error| failed(process.failure(&error)))?;
        match link.load(&self.path, &self.expect) {
            Ok(Ok(_)) => {}
            Ok(Err(message)) => return Err(failed(message)),
            Err(error) => return Err(failed(process.failure(&error))),
        }
        let mut instance = RemoteInstance {
            plugin: Arc::clone(self),
            process,
            link,
            registration: next_registration(),
            broken: None,
        };
        let outputs = instance.run(callback, services)?;
        Ok((instance, outputs))
    }

    /// Runs `init` in the worker.
    pub fn start(
        self: &Arc<Self>,
        args: &[u8],
        services: &dyn HostServices,
    ) -> Result<Started, CallbackError> {
        let (instance, outputs) = self.create(
            Callback::Start {
                args: args.to_vec(),
            },
            services,
        )?;
        Ok((Box::new(instance), outputs))
    }

    /// Creates an instance from state bytes in this version's shape.
    pub fn restore(
        self: &Arc<Self>,
        state: &[u8],
        services: &dyn HostServices,
    ) -> Result<Box<dyn Behaviour>, CallbackError> {
        let (instance, _) = self.create(
            Callback::Restore {
                state: state.to_vec(),
            },
            services,
        )?;
        Ok(Box::new(instance))
    }

    /// Upgrade: creates an instance from an older version's state (its `code_change`).
    pub fn code_change(
        self: &Arc<Self>,
        from_version: &Version,
        state: &[u8],
        extra: &[u8],
        services: &dyn HostServices,
    ) -> Result<Box<dyn Behaviour>, CallbackError> {
        let (instance, _) = self.create(
            Callback::CodeChange {
                from: from_version.to_string(),
                state: state.to_vec(),
                extra: extra.to_vec(),
            },
            services,
        )?;
        Ok(Box::new(instance))
    }
}

/// One actor's behaviour, running in a worker process: each callback is forwarded over the
/// actor's connection, and the worker's service requests are served until it answers.
pub struct RemoteInstance {
    plugin: Arc<IsolatedPlugin>,
    process: Arc<Process>,
    link: Link,
    registration: u64,
    /// Why the connection is unusable, once it is.
    broken: Option<String>,
}

impl fmt::Debug for RemoteInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteInstance")
            .field("plugin", &self.plugin.identity)
            .field("pid", &self.process.pid)
            .finish()
    }
}

impl RemoteInstance {
    /// The plugin version it runs.
    pub fn isolated_plugin(&self) -> &Arc<IsolatedPlugin> {
        &self.plugin
    }

    /// The worker process's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid
    }

    fn broken(&mut self, callback: &'static str, error: &io::Error) -> CallbackError {
        let reason = self.process.failure(error);
        self.broken = Some(reason.clone());
        CallbackError::Failed {
            plugin: self.plugin.identity.clone(),
            callback,
            message: reason,
        }
    }

    fn run(
        &mut self,
        callback: Callback,
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        let name = callback.name();
        match self.exchange(callback, services)? {
            Finished::Done(result) => result
                .map(Outputs::from)
                .map_err(|error| error.into_error(self.plugin.identity.clone(), name)),
            Finished::CastsDone(_) => Err(self.broken(
                name,
                &io::Error::new(
                    io::ErrorKind::InvalidData,
                    "CastsDone answered one callback",
                ),
            )),
        }
    }

    /// Sends one callback and serves the worker's service requests until it answers.
    fn exchange(
        &mut self,
        callback: Callback,
        services: &dyn HostServices,
    ) -> Result<Finished, CallbackError> {
        let name = callback.name();
        if let Some(reason) = self.broken.clone().or_else(|| self.process.exit_reason()) {
            return Err(CallbackError::Failed {
                plugin: self.plugin.identity.clone(),
                callback: name,
                message: reason,
            });
        }
        let frame = ToWorker::Call {
            actor: services.actor_name().to_owned(),
            callback,
        };
        if let Err(error) = self.link.send(&frame) {
            return Err(self.broken(name, &error));
        }
        loop {
            let frame = match self.link.receive() {
                Ok(frame) => frame,
                Err(error) => return Err(self.broken(name, &error)),
            };
            match frame {
                FromWorker::Done(result) => return Ok(Finished::Done(result)),
                FromWorker::CastsDone(results) => return Ok(Finished::CastsDone(results)),
                FromWorker::Log(record) => emit(record, Some(&self.plugin.identity)),
                FromWorker::Service(service) => {
                    let answer = serve(service, services);
                    if let Err(error) = self.link.send(&ToWorker::Answer(answer)) {
                        return Err(self.broken(name, &error));
                    }
                }
                FromWorker::Loaded(_) => {
                    let error = io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the worker sent Loaded during a callback",
                    );
                    return Err(self.broken(name, &error));
                }
            }
        }
    }
}

/// How a worker ended a callback.
enum Finished {
    Done(Result<WireOutputs, WireCallbackError>),
    CastsDone(Vec<Result<WireOutputs, WireCallbackError>>),
}

/// Runs one host service for the worker.
fn serve(service: Service, services: &dyn HostServices) -> Answer {
    match service {
        Service::Send { to, cast, message } => Answer::Done(
            services
                .send(&to, wire::send_kind(cast), message)
                .map_err(Into::into),
        ),
        Service::Call {
            to,
            message,
            timeout_ms,
        } => Answer::Reply(
            services
                .call(&to, message, Duration::from_millis(timeout_ms))
                .map(WireBytes)
                .map_err(Into::into),
        ),
        Service::StartTimer {
            delay_ms,
            repeat,
            message,
        } => Answer::Timer(services.start_timer(Duration::from_millis(delay_ms), repeat, message)),
        Service::CancelTimer { timer } => Answer::Cancelled(services.cancel_timer(timer)),
        Service::Reply { token, message } => {
            Answer::Done(services.reply(token, message).map_err(Into::into))
        }
        Service::Hosts => Answer::Hosts(services.hosts().map_err(Into::into)),
        Service::RegisterGlobal => Answer::Done(services.register_global().map_err(Into::into)),
        Service::Monitor { to } => Answer::Monitor(services.monitor(&to).map_err(Into::into)),
        Service::MonitorHosts { on } => {
            Answer::Done(services.monitor_hosts(on).map_err(Into::into))
        }
    }
}

impl Drop for RemoteInstance {
    fn drop(&mut self) {
        self.process.unregister(self.registration);
        if self.broken.is_none() {
            // The worker drops the instance inside the plugin and closes the connection.
            let _ = self.link.send(&ToWorker::Drop);
        }
    }
}

impl Behaviour for RemoteInstance {
    fn identity(&self) -> Option<&PluginIdentity> {
        Some(&self.plugin.identity)
    }

    fn handle_call(
        &mut self,
        request: &[u8],
        reply_token: u64,
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        self.run(
            Callback::HandleCall {
                request: request.to_vec(),
                token: reply_token,
            },
            services,
        )
    }

    fn handle_cast(
        &mut self,
        message: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        self.run(
            Callback::HandleCast {
                message: message.to_vec(),
            },
            services,
        )
    }

    fn batches_casts(&self) -> bool {
        true
    }

    fn handle_casts(
        &mut self,
        messages: &[Vec<u8>],
        services: &dyn HostServices,
    ) -> Vec<Result<Outputs, CallbackError>> {
        let callback = Callback::HandleCasts {
            messages: messages.iter().cloned().map(WireBytes).collect(),
        };
        let plugin = self.plugin.identity.clone();
        match self.exchange(callback, services) {
            Ok(Finished::CastsDone(results)) => results
                .into_iter()
                .map(|result| {
                    result
                        .map(Outputs::from)
                        .map_err(|error| error.into_error(plugin.clone(), "handle_cast"))
                })
                .collect(),
            Ok(Finished::Done(result)) => vec![
                result
                    .map(Outputs::from)
                    .map_err(|error| error.into_error(plugin, "handle_cast")),
            ],
            Err(error) => vec![Err(error)],
        }
    }

    fn handle_info(
        &mut self,
        kind: u32,
        message: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        self.run(
            Callback::HandleInfo {
                kind,
                message: message.to_vec(),
            },
            services,
        )
    }

    fn handle_continue(
        &mut self,
        argument: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        self.run(
            Callback::HandleContinue {
                argument: argument.to_vec(),
            },
            services,
        )
    }

    fn terminate(
        &mut self,
        reason: &StopReason,
        services: &dyn HostServices,
    ) -> Result<(), CallbackError> {
        self.run(
            Callback::Terminate {
                reason: reason.to_string(),
            },
            services,
        )
        .map(drop)
    }

    fn encode_state(&mut self) -> Result<Vec<u8>, CallbackError> {
        let outputs = self.run(Callback::EncodeState, &Detached::new(""))?;
        outputs.into_state(&self.plugin.identity, "encode_state")
    }

    fn health(&mut self) -> Option<Result<graft_plugin::Health, CallbackError>> {
        let outputs = match self.run(Callback::Health, &Detached::new("")) {
            Ok(outputs) => outputs,
            Err(error) => return Some(Err(error)),
        };
        let bytes = outputs.reply?;
        Some(
            graft_plugin::codec::decode(&bytes).map_err(|error| CallbackError::Protocol {
                plugin: self.plugin.identity.clone(),
                callback: "health",
                message: format!("the health does not decode: {error}"),
            }),
        )
    }

    fn format_status(&mut self) -> Option<Result<Vec<u8>, CallbackError>> {
        match self.run(Callback::FormatStatus, &Detached::new("")) {
            Ok(outputs) => outputs.state.map(Ok),
            Err(error) => Some(Err(error)),
        }
    }

    fn attach(&mut self, actor: &ActorRef) {
        self.process.register(self.registration, actor);
        // A callback killed at its deadline frees its host thread: closing the connection
        // ends the wait for the worker's answer (the worker keeps its stuck thread).
        if let Ok(connection) = self.link.writer.try_clone() {
            actor.set_interrupt(Some(Arc::new(move || {
                let _ = connection.shutdown(std::net::Shutdown::Both);
            })));
        }
    }

    fn isolated_plugin(&self) -> Option<&Arc<IsolatedPlugin>> {
        Some(&self.plugin)
    }

    fn downgrade(&mut self, to_version: &Version, extra: &[u8]) -> Result<Vec<u8>, CallbackError> {
        let outputs = self.run(
            Callback::Downgrade {
                to: to_version.to_string(),
                extra: extra.to_vec(),
            },
            &Detached::new(""),
        )?;
        outputs.into_state(&self.plugin.identity, "downgrade")
    }
}

/// Starts actors on one isolated plugin version.
#[derive(Clone, Debug)]
pub struct IsolatedFactory {
    plugin: Arc<IsolatedPlugin>,
}

impl IsolatedFactory {
    /// A factory for `plugin`.
    pub fn new(plugin: Arc<IsolatedPlugin>) -> IsolatedFactory {
        IsolatedFactory { plugin }
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<IsolatedPlugin> {
        &self.plugin
    }
}

impl BehaviourFactory for IsolatedFactory {
    fn start(&self, args: &[u8], services: &dyn HostServices) -> Result<Started, CallbackError> {
        self.plugin.start(args, services)
    }

    fn identity(&self) -> Option<PluginIdentity> {
        Some(self.plugin.identity.clone())
    }
}
