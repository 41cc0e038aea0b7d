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
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

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
    /// Whether its name is registered cluster-wide.
    pub global: bool,
    /// Where in the cluster it runs.
    pub placement: Placement,
}

/// Where in a cluster a worker runs (a release's `placement`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// On every host whose release has it (the default).
    #[default]
    Local,
    /// On exactly one host of the cluster at a time: the holder of its lease; the others
    /// hold it in standby (no process) and one takes over when the holder dies or leaves.
    /// Its name is global.
    Singleton,
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
    /// Whether its exit for good may shut the supervisor down (see [`AutoShutdown`]); only
    /// for transient and temporary children, under a supervisor whose `auto_shutdown` is
    /// not `never`.
    pub significant: bool,
}

impl fmt::Debug for ChildSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSpec")
            .field("id", &self.id)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("significant", &self.significant)
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
                global: false,
                placement: Placement::Local,
            }),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            significant: false,
        }
    }

    /// A permanent nested supervisor with an `infinity` shutdown.
    pub fn supervisor(id: impl Into<String>, spec: SupervisorSpec) -> ChildSpec {
        ChildSpec {
            id: id.into(),
            start: ChildStart::Supervisor(spec),
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
            significant: false,
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

    /// Marks the child significant (or not) for its supervisor's `auto_shutdown`.
    pub fn significant(mut self, significant: bool) -> ChildSpec {
        self.significant = significant;
        self
    }
}

/// When a supervisor shuts itself down because significant children exited (OTP 24's
/// `auto_shutdown`). A significant child has exited for good when it is not restarted: a
/// transient one after a clean exit, a temporary one after any exit. Children the
/// supervisor stops itself (`terminate_child`, its own shutdown) do not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoShutdown {
    /// Never (the default); significant children are refused.
    #[default]
    Never,
    /// When any significant child has exited for good.
    AnySignificant,
    /// When no significant child is left running (or about to be restarted).
    AllSignificant,
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
    /// Whether significant children's exits shut it down.
    pub auto_shutdown: AutoShutdown,
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
            auto_shutdown: AutoShutdown::Never,
        }
    }

    /// Sets when significant children's exits shut it down.
    pub fn auto_shutdown(mut self, auto_shutdown: AutoShutdown) -> SupervisorSpec {
        self.auto_shutdown = auto_shutdown;
        self
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
    /// The new child specs (for a dynamic supervisor: exactly one, its template).
    pub children: Vec<ChildSpec>,
    /// The new `auto_shutdown`.
    pub auto_shutdown: AutoShutdown,
}

impl From<SupervisorSpec> for SupervisorUpdate {
    /// The flags and children of `spec` (its name is not part of an update).
    fn from(spec: SupervisorSpec) -> SupervisorUpdate {
        SupervisorUpdate {
            strategy: spec.strategy,
            max_restarts: spec.max_restarts,
            max_seconds: spec.max_seconds,
            children: spec.children,
            auto_shutdown: spec.auto_shutdown,
        }
    }
}

/// What is wrong with a supervisor or child spec (OTP's `check_childspecs` errors).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecError {
    /// Two children share an id (OTP's `duplicate_child_name`).
    #[error("duplicate child id {0:?}")]
    DuplicateChildId(String),
    /// A dynamic supervisor has not exactly one template.
    #[error("a dynamic supervisor needs exactly one template child spec, found {found}")]
    TemplateCount {
        /// How many there were.
        found: usize,
    },
    /// A significant child is permanent (it would never exit for good).
    #[error(
        "child {0:?} is significant and permanent: only transient or temporary children can be significant"
    )]
    SignificantPermanent(String),
    /// A significant child under a supervisor whose `auto_shutdown` is `never`.
    #[error("child {0:?} is significant but the supervisor's auto_shutdown is never")]
    SignificantWithoutAutoShutdown(String),
}

/// Checks a whole tree of specs before anything starts.
pub(crate) fn validate(spec: &SupervisorSpec) -> Result<(), SupervisorError> {
    check_children(spec.strategy, spec.auto_shutdown, &spec.children)?;
    for child in &spec.children {
        if let ChildStart::Supervisor(nested) = &child.start {
            validate(nested)?;
        }
    }
    Ok(())
}

/// Checks one level's children against its flags: the template count, unique ids, each
/// child's significance.
pub(crate) fn check_children(
    strategy: Strategy,
    auto_shutdown: AutoShutdown,
    children: &[ChildSpec],
) -> Result<(), SupervisorError> {
    if strategy == Strategy::Dynamic && children.len() != 1 {
        return Err(SupervisorError::InvalidSpec(SpecError::TemplateCount {
            found: children.len(),
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for child in children {
        if !ids.insert(child.id.as_str()) {
            return Err(SupervisorError::InvalidSpec(SpecError::DuplicateChildId(
                child.id.clone(),
            )));
        }
        check_child(child, auto_shutdown)?;
    }
    Ok(())
}

/// OTP's `validSignificant`: significant children are transient or temporary, under a
/// supervisor whose `auto_shutdown` is not `never`.
pub(crate) fn check_child(
    child: &ChildSpec,
    auto_shutdown: AutoShutdown,
) -> Result<(), SupervisorError> {
    if !child.significant {
        return Ok(());
    }
    if auto_shutdown == AutoShutdown::Never {
        return Err(SupervisorError::InvalidSpec(
            SpecError::SignificantWithoutAutoShutdown(child.id.clone()),
        ));
    }
    if child.restart == Restart::Permanent {
        return Err(SupervisorError::InvalidSpec(
            SpecError::SignificantPermanent(child.id.clone()),
        ));
    }
    Ok(())
}
