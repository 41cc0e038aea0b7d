//! `graft`: the host. Loads actor behaviour from `cdylib` plugins and (in later modules)
//! supervises actors and upgrades them while they run.
//!
//! Modules:
//! - [`plugin`]: the loader — read, verify, copy, `dlopen`, check the header — and the
//!   typed, safe face of a loaded plugin ([`plugin::LoadedPlugin`], [`plugin::Instance`]).
//!   Its `ffi` submodule is the only code that calls into plugin code through raw pointers.
//! - [`build`]: builds plugin crates with cargo and finds their `cdylib` artifacts.

pub mod build;
pub mod control;
pub mod plugin;
pub mod release;
pub mod runtime;
pub mod supervisor;
pub mod watch;
