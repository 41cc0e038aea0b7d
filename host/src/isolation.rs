//! Process isolation: a plugin's callbacks run in a worker process instead of the host, so
//! what `catch_unwind` cannot contain — a segfault, an `abort`, a stack overflow, an OOM
//! kill — ends that plugin's actors (and their supervisors restart them), not the host.
//!
//! # Design
//!
//! Only the [`Behaviour`](crate::runtime::Behaviour) is remote. The host keeps each actor
//! exactly as for an in-process plugin — mailbox, name, monitors, links, timers,
//! supervision, suspend/resume, code change — and its behaviour is a
//! [`RemoteInstance`] that forwards every callback to the worker.
//! So everything a plugin can do in process it can do isolated, with the same semantics,
//! and the runtime does not know the difference.
//!
//! - [`wire`]: the frames (length-prefixed MessagePack). One conversation per callback:
//!   the host sends `Call`; the worker answers with any number of host-service requests
//!   (send, call, timers, deferred reply) and log records, then one `Done` with the
//!   callback's [`Outputs`](crate::plugin::Outputs) or error.
//! - [`worker`]: the worker process (`graft worker --socket PATH`, a hidden subcommand of
//!   the `graft` binary). It loads libraries with the ordinary
//!   [`Loader`](crate::plugin::Loader) — same checks, its own private 0700 directory — and
//!   serves **one connection per actor, one thread per connection**. Its
//!   [`HostServices`](crate::plugin::HostServices) forward each service over the actor's
//!   connection and wait for the answer.
//! - [`channel`]: the host side. [`Worker`] is one plugin's worker process, started on
//!   first use and started again after it dies; [`IsolatedPlugin`] is one plugin version
//!   loaded in it (identity from the worker's answer — the host never `dlopen`s it);
//!   [`IsolatedFactory`] starts actors on it with `Runtime::spawn` or a supervisor.
//! - [`version`]: [`PluginVersion`], a version in the host or in a worker: what the release
//!   handler's plugin table holds, so `isolation = "process"` in `release.toml` loads a
//!   plugin through [`IsolatedPlugin::load`] on the handler's `Worker` for it, and an
//!   install migrates actors within and across modes.
//!
//! Connections: the host binds a Unix socket in a fresh private (0700) directory, listens,
//! and hands the listening socket to the worker as its stdin; then it connects once per
//! actor. Binding before the spawn means no start-up race (early connections wait in the
//! backlog) and no file-descriptor passing; the directory's mode keeps other users out.
//! Under a release handler that directory (`<root>/run/libraries/<host pid>-socket*`) and
//! each worker's library copies (`<root>/run/libraries/<worker pid>/`) live under the root,
//! locked by their process, so the next host removes them if it dies
//! ([`crate::ownership`]); the host removes a worker's copies once it has exited.
//!
//! # Invariants
//!
//! - A frame is written whole by one thread, and a connection has one conversation at a
//!   time: the host side is driven by the actor's single callback, the worker side by one
//!   thread.
//! - Workers never outlive the host: each sets `PR_SET_PDEATHSIG(SIGKILL)` and then checks
//!   that its parent is still the host. The parent-death signal fires when the *thread*
//!   that forked the worker exits, so all workers are forked by one spawner thread that
//!   lives as long as the host.
//! - Workers never become zombies: a monitor thread per worker waits for it (polling
//!   `try_wait`, so the same thread can also kill it without racing the reaping of its
//!   pid), polls its resident memory against `memory_limit_mb`, and kills it over it.
//! - When a worker dies, every actor attached to it (see
//!   [`Behaviour::attach`](crate::runtime::Behaviour::attach)) exits with reason
//!   `worker crashed: <signal or status>` through `ActorRef::kill_with`, and a callback in
//!   progress returns a `CallbackError` with the same text. The next start (a supervisor
//!   restart) starts a fresh worker, which loads the same verified bytes (the SHA-256 of
//!   the first load is pinned).
//! - Log records of plugin code running on a connection's thread go to the host's
//!   `tracing` as `Log` frames, with plugin, version and actor; anything else the worker
//!   logs (a plugin's own threads) goes to the inherited stderr.
//! - The worker runs as the host's user with the host's environment; nothing is setuid.
//!
//! # What is tricky
//!
//! - A callback that calls another actor holds its connection while the host serves the
//!   call — possibly a call to *another* actor of the same worker, which has its own
//!   connection and thread, so this does not deadlock.
//! - A broken connection and the process exit are seen by different threads in either
//!   order: a callback whose connection breaks waits (bounded) for the monitor to learn
//!   the exit status, so the error names the signal.
//! - During a code change the new behaviour is attached before the old one is dropped,
//!   both in the same worker: registrations are keyed per instance, not per actor.
//!
//! # Costs and limits (today)
//!
//! - Every callback is a round trip over a socket plus a copy of its bytes, and every
//!   service a plugin uses during a callback is one more.
//! - One thread per actor in the worker; fine for tens to thousands of actors, not more.
//! - A worker keeps every version it loaded until it exits (a version is not unloaded in
//!   the worker when its last actor moves on).
//! - A callback that never returns holds its connection and host thread, as in process;
//!   a deadline is the runtime's watchdog's business.

pub mod channel;
pub mod version;
pub mod wire;
pub mod worker;

pub use channel::{
    IsolatedFactory, IsolatedPlugin, IsolationError, RemoteInstance, WORKER_PROGRAM_ENV, Worker,
    WorkerOptions, WorkerProcess, WorkerProgram,
};
pub use version::PluginVersion;
