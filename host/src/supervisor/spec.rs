//! Supervisor and child specs: strategies, restart types, shutdowns, significance and
//! `auto_shutdown`, the flags an update applies, and the checks OTP makes of them
//! (`check_childspecs`, `check_flags`).
//!
//! Invariant: a spec that passes [`validate`] has unique child ids at every level, exactly
//! one template under a dynamic supervisor, and no significant child that is permanent or
//! sits under a supervisor whose `auto_shutdown` is `never`. The running task relies on
//! the template being there; it still never indexes it blindly.

use super::SupervisorError;
use crate::runtime::BehaviourFactory;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Which siblings restart with a failed child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child.
    OneForAll,
    /// The failed child and those started after it.
    RestForOne,
    /// Children started at run time from one template spec (OTP's `simple_one_for_one`),
    /// restarted one for one.
    Dynamic,
}

/// When a child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always.
    Permanent,
    /// Only after an abnormal exit.
    Transient,
    /// Never.
    Temporary,
}

/// How a child is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shutdown {
    /// Killed at once, without `terminate`.
    BrutalKill,
    /// Asked to stop (`terminate` runs), killed if not gone within the timeout.
    Timeout(Duration),
    /// Asked to stop, waited for as long as it takes (for supervisors).
    Infinity,
}

/// What a child is.
#[derive(Clone)]
pub enum ChildStart {
    /// An actor.
    Worker(WorkerSpec),
    /// A nested supervisor.
    Supervisor(SupervisorSpec),
}

/// How to start a worker.
#[derive(Clone)]
pub struct WorkerSpec {
    /// Creates the behaviour.
    pub factory: Arc<dyn BehaviourFactory>,
    /// Encoded start arguments.
    pub args: Vec<u8>,
    /// A name to register.
    pub name: Option<String>,
    /// Whether link exit signals arrive as messages.
    pub trap_exit: bool,
    /// The most calls, casts and info messages its mailbox holds (`None`: unbounded).
    pub max_mailbox: Option<usize>,
}

/// One child of a supervisor.
#[derive(Clone)]
pub struct ChildSpec {
    /// Unique among its siblings.
    pub id: String,
    /// What to start.
    pub start: ChildStart,
    /// When to restart it.
    pub restart: Restart,
    /// How to stop it.
    pub shutdown: Shutdown,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl ChildSpec {
    /// A permanent worker with a 5 s shutdown, registered under `name` when given.
    pub fn worker(
        id: impl Into<String>,
        factory: Arc<dyn BehaviourFactory>,
        args: Vec<u8>,
    ) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            start: ChildStart::Worker(WorkerSpec {
                factory,
                args,
                name: None,
                trap_exit: false,
                max_mailbox: None,
            }),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
        }
    }

    /// A permanent nested supervisor with an `infinity` shutdown.
    pub fn supervisor(id: impl Into<String>, spec: SupervisorSpec) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            start: ChildStart::Supervisor(spec),
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
        }
    }

    /// Registers the worker under `name`.
    pub fn named(mut self, name: impl Into<String>) -> ChildSpec {
        if let ChildStart::Worker(worker) = &mut self.start {
            worker.name = Some(name.into());
        }
        self
    }

    /// Bounds the worker's mailbox at `limit` calls, casts and info messages.
    pub fn max_mailbox(mut self, limit: usize) -> ChildSpec {
        if let ChildStart::Worker(worker) = &mut self.start {
            worker.max_mailbox = Some(limit);
        }
        self
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> ChildSpec {
        self.restart = restart;
        self
    }

    /// Sets the shutdown.
    pub fn shutdown(mut self, shutdown: Shutdown) -> ChildSpec {
        self.shutdown = shutdown;
        self
    }
}

/// A supervisor: its flags and children (for `dynamic`, the one template child).
#[derive(Clone, Debug)]
pub struct SupervisorSpec {
    /// A name to register.
    pub name: Option<String>,
    /// The strategy.
    pub strategy: Strategy,
    /// At most this many restarts …
    pub max_restarts: u32,
    /// … within this many seconds.
    pub max_seconds: u64,
    /// Children in start order (for `dynamic`: exactly one template).
    pub children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    /// A supervisor with OTP's default intensity (1 restart in 5 seconds).
    pub fn new(strategy: Strategy, children: Vec<ChildSpec>) -> SupervisorSpec {
        SupervisorSpec {
            name: None,
            strategy,
            max_restarts: 1,
            max_seconds: 5,
            children,
        }
    }

    /// Registers the supervisor under `name`.
    pub fn named(mut self, name: impl Into<String>) -> SupervisorSpec {
        self.name = Some(name.into());
        self
    }

    /// Sets the restart intensity.
    pub fn intensity(mut self, max_restarts: u32, max_seconds: u64) -> SupervisorSpec {
        self.max_restarts = max_restarts;
        self.max_seconds = max_seconds;
        self
    }
}

/// New flags and child specs for a running supervisor, as OTP's supervisor `code_change`
/// applies them: specs are merged by id keeping live children; new specs are added without
/// being started; specs whose ids vanished are kept.
#[derive(Clone, Debug)]
pub struct SupervisorUpdate {
    /// The new strategy (a static supervisor cannot become dynamic or back).
    pub strategy: Strategy,
    /// The new intensity.
    pub max_restarts: u32,
    /// The new intensity window.
    pub max_seconds: u64,
    /// The new child specs (for a dynamic supervisor: its template).
    pub children: Vec<ChildSpec>,
}

pub(crate) fn validate(spec: &SupervisorSpec) -> Result<(), SupervisorError> {
    if spec.strategy == Strategy::Dynamic && spec.children.len() != 1 {
        return Err(SupervisorError::InvalidSpec(format!(
            "a dynamic supervisor needs exactly one template child spec, found {}",
            spec.children.len()
        )));
    }
    let mut ids = std::collections::HashSet::new();
    for child in &spec.children {
        if !ids.insert(child.id.as_str()) {
            return Err(SupervisorError::InvalidSpec(format!(
                "duplicate child id {:?}",
                child.id
            )));
        }
        if let ChildStart::Supervisor(nested) = &child.start {
            validate(nested)?;
        }
    }
    Ok(())
}
