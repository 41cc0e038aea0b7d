//! `graft`: the host. Loads actor behaviour from `cdylib` plugins, supervises the actors,
//! and upgrades them while they run, driven by versioned release manifests.
//!
//! Modules:
//! - [`plugin`]: the loader — read, verify, copy, `dlopen`, check the header — and the
//!   typed, safe face of a loaded plugin ([`plugin::LoadedPlugin`], [`plugin::Instance`]).
//!   Its `ffi` submodule is the only code that calls into plugin code through raw pointers.
//! - [`runtime`]: actors as tokio tasks with GenServer semantics, names, monitors, links,
//!   timers and `sys`-style system messages.
//! - [`supervisor`]: OTP's supervisors — strategies, restart types, intensity, shutdown.
//! - [`release`]: release manifests, assembling them, and the release handler (install,
//!   rollback, make permanent).
//! - [`isolation`]: process isolation — a plugin's callbacks in a worker process, reached
//!   over Unix sockets, so a segfault or abort in plugin code ends only its actors.
//! - [`control`]: the control socket's protocol, server and client.
//! - [`http`]: `graft start --http`: `/metrics` and the observer web page, its JSON API and
//!   event stream, and its token-guarded install, rollback and make-permanent.
//! - [`trust`]: the StrictModes-style checks of the root directory before it is used.
//! - [`watch`]: installing newly assembled releases as they appear, with a health gate.
//! - [`fleet`]: fleets of hosts on NATS JetStream: membership and heartbeats
//!   (`graft start --fleet`), releases in the object store, the desired state with
//!   compare-and-swap, hosts converging to it, and rollouts with health gates.
//! - [`build`]: builds plugin crates (and binaries, for tests) with cargo.
//! - [`ownership`]: files and directories owned by a live process (private library copies,
//!   build staging, temporary files), and the removal of those whose owner died.
//! - [`process`]: process-wide settings (SIGXFSZ ignored, freed memory returned to the OS).
//!
//! The `graft` binary (`main.rs`, `cli.rs`) is the only place that maps errors to exit codes.

pub mod build;
pub mod cluster;
pub mod control;
pub mod fleet;
pub mod http;
pub mod isolation;
pub mod metrics;
pub mod ownership;
pub mod plugin;
pub mod process;
pub mod release;
pub mod runtime;
pub mod supervisor;
pub mod trust;
pub mod watch;
