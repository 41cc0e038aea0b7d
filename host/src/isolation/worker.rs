//! The worker process: `graft worker --socket PATH`, started by the host for each plugin
//! with `isolation = "process"`.
//!
//! The worker loads plugin libraries with the ordinary [`Loader`] (its own private 0700
//! directory — `<root>/run/libraries/<pid>/` when the host passes `--libraries` — and
//! the same checks) and serves one connection per actor, each on its own thread.
//! On a connection it runs that actor's callbacks on its one [`Instance`], and implements
//! [`HostServices`] by forwarding each service to the host over the same connection and
//! waiting for the answer. Log records of plugin code running on a connection's thread are
//! forwarded as `Log` frames; records from elsewhere (a plugin's own threads, loading) go
//! to the inherited stderr.
//!
//! Lifetime: the worker asks the kernel to SIGKILL it when the host's spawning thread
//! dies (`PR_SET_PDEATHSIG`), and checks that its parent is still the host afterwards, so
//! it never outlives the host. It exits when the listener fails; the host kills it when the
//! plugin is no longer used.

use super::wire::{
    self, Answer, Callback, FromWorker, LoadedInfo, LogRecord, Service, ToWorker, WireBytes,
    WireCallbackError, WireOutputs,
};
use crate::plugin::{
    Expectations, HostServices, Instance, LoadedPlugin, Loader, Outputs, SendKind, ServiceError,
};
use graft_plugin::StopReason;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The worker's command line (`graft worker ...`).
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The socket the host connects to. When stdin is already a listening socket (how the
    /// host starts workers) that one is used and this is only reported.
    pub socket: PathBuf,
    /// The host's pid: the worker exits at once if its parent is not (or no longer) it.
    pub parent: Option<u32>,
    /// The most verbose log level to forward (1 error … 5 trace).
    pub log_level: u32,
    /// A root's `run/libraries`: the worker's library copies go in its own directory
    /// there, `<libraries>/<pid>/` (locked while it lives, removed by the host once it
    /// exits). Without it, a temporary directory.
    pub libraries: Option<PathBuf>,
}

/// Runs the worker until its listener fails (or the host kills it).
pub fn main(args: WorkerArgs) -> ExitCode {
    // SAFETY: `prctl(PR_SET_PDEATHSIG, SIGKILL)` only sets this process's parent-death
    // signal; it takes integer arguments and touches no memory of ours.
    let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if set != 0 {
        eprintln!("graft worker: cannot set the parent-death signal");
        return ExitCode::from(1);
    }
    // No more privilege than the host, ever: no exec (of a setuid program, say) can add
    // any to this process or its children.
    // SAFETY: `prctl(PR_SET_NO_NEW_PRIVS, 1)` only sets a flag of this process; integer
    // arguments, no memory of ours.
    let restricted = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if restricted != 0 {
        eprintln!("graft worker: cannot set no_new_privs");
        return ExitCode::from(1);
    }
    // The host may have died before the signal was armed: then the parent is someone else.
    if let Some(parent) = args.parent
        && std::os::unix::process::parent_id() != parent
    {
        return ExitCode::from(1);
    }
    logging::install(args.log_level);
    let listener = match listener(&args.socket) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "graft worker: cannot listen on {}: {error}",
                args.socket.display()
            );
            return ExitCode::from(1);
        }
    };
    let loader = match &args.libraries {
        Some(libraries) => {
            Loader::in_process_directory(libraries).map_err(|error| error.to_string())
        }
        None => Loader::new().map_err(|error| error.to_string()),
    };
    let loader = match loader {
        Ok(loader) => loader,
        Err(error) => {
            eprintln!("graft worker: cannot create the plugin directory: {error}");
            return ExitCode::from(1);
        }
    };
    let shared = Arc::new(Shared {
        loader,
        loaded: Mutex::new(HashMap::new()),
    });
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("graft-worker-actor".to_owned())
                    .spawn(move || serve(stream, &shared));
                if let Err(error) = spawned {
                    eprintln!("graft worker: cannot start a connection thread: {error}");
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                eprintln!("graft worker: accept failed: {error}");
                return ExitCode::from(1);
            }
        }
    }
}

/// The listening socket the host handed over as stdin, or a new one bound at `path`.
fn listener(path: &Path) -> std::io::Result<UnixListener> {
    let inherited = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(UnixListener::from);
    match inherited {
        Ok(listener) if listener.local_addr().is_ok() => Ok(listener),
        _ => UnixListener::bind(path),
    }
}

struct Shared {
    loader: Loader,
    /// Every version loaded, by SHA-256: kept until the worker exits (see the module doc
    /// of `isolation`: a worker is per plugin and restarted with its actors).
    loaded: Mutex<HashMap<String, Arc<LoadedPlugin>>>,
}

impl Shared {
    fn load(
        &self,
        path: &Path,
        sha256: Option<String>,
        name: Option<String>,
        version: Option<String>,
    ) -> Result<Arc<LoadedPlugin>, String> {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(plugin) = sha256.as_ref().and_then(|sha256| loaded.get(sha256))
            && name.as_deref().is_none_or(|name| plugin.name() == name)
            && version
                .as_deref()
                .is_none_or(|version| plugin.version().to_string() == version)
        {
            return Ok(Arc::clone(plugin));
        }
        let expect = Expectations {
            sha256: sha256
                .map(|text| text.parse().map_err(|error| format!("{error}")))
                .transpose()?,
            name,
            version: version
                .map(|text| semver::Version::parse(&text).map_err(|error| error.to_string()))
                .transpose()?,
        };
        let plugin = self
            .loader
            .load(path, &expect)
            .map_err(|error| error.to_string())?;
        loaded.insert(plugin.sha256().to_string(), Arc::clone(&plugin));
        Ok(plugin)
    }
}

/// One actor's connection: its frames in and out.
struct Connection {
    reader: RefCell<BufReader<UnixStream>>,
    writer: RefCell<BufWriter<UnixStream>>,
}

impl Connection {
    fn send(&self, frame: &FromWorker) -> std::io::Result<()> {
        wire::write_frame(&mut *self.writer.borrow_mut(), frame)
    }

    fn receive(&self) -> std::io::Result<ToWorker> {
        let mut reader = self.reader.borrow_mut();
        if reader.buffer().is_empty() {
            wire::spin_until_readable(reader.get_ref(), wire::SPIN_FOR_FRAME);
        }
        wire::read_frame(&mut *reader)
    }
}

fn serve(stream: UnixStream, shared: &Shared) {
    let (Ok(reading), Ok(logging)) = (stream.try_clone(), stream.try_clone()) else {
        return;
    };
    let connection = Connection {
        reader: RefCell::new(BufReader::new(reading)),
        writer: RefCell::new(BufWriter::new(stream)),
    };
    logging::set_connection(Some(logging));
    let mut plugin: Option<Arc<LoadedPlugin>> = None;
    let mut instance: Option<Instance> = None;
    while let Ok(frame) = connection.receive() {
        let answer = match frame {
            ToWorker::Load {
                protocol,
                path,
                sha256,
                name,
                version,
            } => {
                let result = if protocol != wire::PROTOCOL {
                    Err(format!(
                        "the worker speaks protocol {}, the host {protocol}",
                        wire::PROTOCOL
                    ))
                } else {
                    shared.load(&path, sha256, name, version)
                };
                let info = result.map(|loaded| {
                    let info = LoadedInfo {
                        name: loaded.name().to_owned(),
                        version: loaded.version().to_string(),
                        sha256: loaded.sha256().to_string(),
                        api_version: loaded.api_version().to_owned(),
                    };
                    plugin = Some(loaded);
                    info
                });
                FromWorker::Loaded(info)
            }
            ToWorker::Call {
                actor,
                callback: Callback::HandleCasts { messages },
            } => {
                let services = Remote {
                    connection: &connection,
                    actor,
                };
                FromWorker::CastsDone(run_casts(instance.as_mut(), messages, &services))
            }
            ToWorker::Call { actor, callback } => {
                let services = Remote {
                    connection: &connection,
                    actor,
                };
                let result = run(&plugin, &mut instance, callback, &services);
                FromWorker::Done(result.map(WireOutputs::from))
            }
            ToWorker::Answer(_) | ToWorker::Drop => break,
        };
        if connection.send(&answer).is_err() {
            break;
        }
    }
    logging::set_connection(None);
    // Dropped inside the plugin, on this thread, before the connection closes.
    drop(instance);
}

fn run(
    plugin: &Option<Arc<LoadedPlugin>>,
    instance: &mut Option<Instance>,
    callback: Callback,
    services: &Remote<'_>,
) -> Result<Outputs, WireCallbackError> {
    let Some(plugin) = plugin else {
        return Err(WireCallbackError::protocol(
            "no plugin loaded on this connection",
        ));
    };
    let created = match callback {
        Callback::Start { args } => {
            let (started, outputs) = Instance::start(plugin, &args, services)?;
            *instance = Some(started);
            return Ok(outputs);
        }
        Callback::Restore { state } => Instance::restore(plugin, &state, services),
        Callback::CodeChange { from, state, extra } => {
            let from = semver::Version::parse(&from)
                .map_err(|error| WireCallbackError::protocol(error.to_string()))?;
            Instance::code_change(plugin, &from, &state, &extra, services)
        }
        other => {
            let Some(instance) = instance.as_mut() else {
                return Err(WireCallbackError::protocol(
                    "no instance on this connection",
                ));
            };
            return call(instance, other, services);
        }
    };
    *instance = Some(created?);
    Ok(Outputs::default())
}

/// Runs `handle_cast` for each message in order, and stops after the first that fails,
/// stops the actor or asks for a continuation (the host handles those before anything
/// else, and the casts after it wait in the actor's mailbox as they would in process).
fn run_casts(
    instance: Option<&mut Instance>,
    messages: Vec<WireBytes>,
    services: &Remote<'_>,
) -> Vec<Result<WireOutputs, WireCallbackError>> {
    let Some(instance) = instance else {
        return vec![Err(WireCallbackError::protocol(
            "no instance on this connection",
        ))];
    };
    let mut results = Vec::with_capacity(messages.len());
    for WireBytes(message) in messages {
        let result = instance.handle_cast(&message, services);
        let ends_batch = crate::runtime::behaviour::ends_a_batch(&result);
        results.push(result.map(WireOutputs::from).map_err(Into::into));
        if ends_batch {
            break;
        }
    }
    results
}

/// Runs a callback on an existing instance (`other` is never a creating one).
fn call(
    instance: &mut Instance,
    callback: Callback,
    services: &Remote<'_>,
) -> Result<Outputs, WireCallbackError> {
    Ok(match callback {
        Callback::HandleCall { request, token } => {
            instance.handle_call(&request, token, services)?
        }
        Callback::HandleCast { message } => instance.handle_cast(&message, services)?,
        Callback::HandleInfo { kind, message } => instance.handle_info(kind, &message, services)?,
        Callback::HandleContinue { argument } => instance.handle_continue(&argument, services)?,
        Callback::Terminate { reason } => {
            instance.terminate(&StopReason::from_text(&reason), services)?;
            Outputs::default()
        }
        Callback::EncodeState => state_outputs(instance.encode_state()?),
        Callback::Health => match instance.health().transpose()? {
            Some(health) => Outputs {
                reply: Some(
                    graft_plugin::codec::encode(&health)
                        .map_err(|error| WireCallbackError::protocol(error.to_string()))?,
                ),
                ..Outputs::default()
            },
            None => Outputs::default(),
        },
        Callback::FormatStatus => match instance.format_status().transpose()? {
            Some(formatted) => state_outputs(formatted),
            None => Outputs::default(),
        },
        Callback::Downgrade { to, extra } => {
            let to = semver::Version::parse(&to)
                .map_err(|error| WireCallbackError::protocol(error.to_string()))?;
            state_outputs(instance.downgrade(&to, &extra)?)
        }
        Callback::HandleCasts { .. } => {
            return Err(WireCallbackError::protocol(
                "a batch of casts answers with CastsDone",
            ));
        }
        Callback::Start { .. } | Callback::Restore { .. } | Callback::CodeChange { .. } => {
            return Err(WireCallbackError::protocol(
                "the connection already has an instance",
            ));
        }
    })
}

fn state_outputs(state: Vec<u8>) -> Outputs {
    Outputs {
        state: Some(state),
        ..Outputs::default()
    }
}

/// The host services of a callback running in the worker: each one a request to the host
/// over the actor's connection, and the wait for its answer.
struct Remote<'a> {
    connection: &'a Connection,
    actor: String,
}

impl Remote<'_> {
    fn ask(&self, service: Service) -> Option<Answer> {
        self.connection.send(&FromWorker::Service(service)).ok()?;
        match self.connection.receive().ok()? {
            ToWorker::Answer(answer) => Some(answer),
            _ => None,
        }
    }

    /// Asks for a service that answers [`Answer::Done`].
    fn ask_done(&self, service: Service) -> Result<(), ServiceError> {
        match self.ask(service) {
            Some(Answer::Done(result)) => result.map_err(ServiceError::from),
            _ => Err(LOST),
        }
    }
}

const LOST: ServiceError = ServiceError::Unavailable("the host connection");

impl HostServices for Remote<'_> {
    fn actor_name(&self) -> &str {
        &self.actor
    }

    fn send(&self, to: &str, kind: SendKind, message: Vec<u8>) -> Result<(), ServiceError> {
        let service = Service::Send {
            to: to.to_owned(),
            cast: kind == SendKind::Cast,
            message,
        };
        self.ask_done(service)
    }

    fn call(&self, to: &str, message: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, ServiceError> {
        let service = Service::Call {
            to: to.to_owned(),
            message,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        match self.ask(service) {
            Some(Answer::Reply(result)) => result.map(|bytes| bytes.0).map_err(ServiceError::from),
            _ => Err(LOST),
        }
    }

    fn start_timer(&self, delay: Duration, repeat: bool, message: Vec<u8>) -> Option<u64> {
        let service = Service::StartTimer {
            delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            repeat,
            message,
        };
        match self.ask(service) {
            Some(Answer::Timer(timer)) => timer,
            _ => None,
        }
    }

    fn cancel_timer(&self, timer: u64) -> bool {
        matches!(
            self.ask(Service::CancelTimer { timer }),
            Some(Answer::Cancelled(true))
        )
    }

    fn reply(&self, token: u64, message: Vec<u8>) -> Result<(), ServiceError> {
        self.ask_done(Service::Reply { token, message })
    }

    fn hosts(&self) -> Result<Vec<String>, ServiceError> {
        match self.ask(Service::Hosts) {
            Some(Answer::Hosts(result)) => result.map_err(ServiceError::from),
            _ => Err(LOST),
        }
    }

    fn register_global(&self) -> Result<(), ServiceError> {
        self.ask_done(Service::RegisterGlobal)
    }

    fn monitor(&self, to: &str) -> Result<u64, ServiceError> {
        match self.ask(Service::Monitor { to: to.to_owned() }) {
            Some(Answer::Monitor(result)) => result.map_err(ServiceError::from),
            _ => Err(LOST),
        }
    }

    fn monitor_hosts(&self, on: bool) -> Result<(), ServiceError> {
        self.ask_done(Service::MonitorHosts { on })
    }
}

/// Forwarding the worker's `tracing` events: to the host over the connection of the
/// thread they happen on, else to stderr.
mod logging {
    use super::*;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;

    thread_local! {
        /// The connection of the callback running on this thread, if any.
        static CONNECTION: RefCell<Option<UnixStream>> = const { RefCell::new(None) };
    }

    pub(super) fn set_connection(stream: Option<UnixStream>) {
        CONNECTION.with(|connection| *connection.borrow_mut() = stream);
    }

    pub(super) fn install(level: u32) {
        let filter = match level {
            0 => tracing_subscriber::filter::LevelFilter::OFF,
            1 => tracing_subscriber::filter::LevelFilter::ERROR,
            2 => tracing_subscriber::filter::LevelFilter::WARN,
            3 => tracing_subscriber::filter::LevelFilter::INFO,
            4 => tracing_subscriber::filter::LevelFilter::DEBUG,
            _ => tracing_subscriber::filter::LevelFilter::TRACE,
        };
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(Forward)
            .try_init();
    }

    #[derive(Default)]
    struct Fields {
        message: String,
        plugin: String,
        version: String,
        actor: String,
        plugin_target: String,
    }

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            match field.name() {
                "message" => self.message = value.to_owned(),
                "plugin" => self.plugin = value.to_owned(),
                "version" => self.version = value.to_owned(),
                "actor" => self.actor = value.to_owned(),
                "plugin_target" => self.plugin_target = value.to_owned(),
                other => self.message.push_str(&format!(" {other}={value}")),
            }
        }

        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.record_str(field, &format!("{value:?}"));
        }
    }

    struct Forward;

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Forward {
        fn on_event(&self, event: &tracing::Event<'_>, _context: Context<'_, S>) {
            let metadata = event.metadata();
            let mut fields = Fields::default();
            event.record(&mut fields);
            let level = match *metadata.level() {
                tracing::Level::ERROR => 1,
                tracing::Level::WARN => 2,
                tracing::Level::INFO => 3,
                tracing::Level::DEBUG => 4,
                tracing::Level::TRACE => 5,
            };
            let from_plugin = metadata.target() == "graft::plugin";
            let record = LogRecord {
                level,
                target: if from_plugin {
                    std::mem::take(&mut fields.plugin_target)
                } else {
                    metadata.target().to_owned()
                },
                message: fields.message,
                plugin: if from_plugin {
                    fields.plugin
                } else {
                    String::new()
                },
                version: fields.version,
                actor: fields.actor,
            };
            let forwarded = CONNECTION
                .try_with(|connection| {
                    let mut connection = connection.borrow_mut();
                    let stream = connection.as_mut()?;
                    wire::write_frame(stream, &FromWorker::Log(record)).ok()
                })
                .ok()
                .flatten();
            if forwarded.is_none() {
                let _ = writeln!(
                    std::io::stderr(),
                    "graft worker {}: {} {}: {}",
                    std::process::id(),
                    metadata.level(),
                    metadata.target(),
                    event_text(event)
                );
            }
        }
    }

    fn event_text(event: &tracing::Event<'_>) -> String {
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields.message
    }
}
