//! Releases: manifests, their validation, assembling them, and the release handler.
//!
//! A release is a versioned manifest, `releases/<version>/release.toml`: the plugins it
//! uses, its supervision tree, and appup-style scripts — `[[upgrade]]` sections keyed by a
//! semver requirement on the version upgraded *from*, `[[downgrade]]` sections keyed by the
//! version downgraded *to*. A *source* manifest names each plugin's crate; an *assembled*
//! one (written by [`assemble::assemble`]) names its library file and SHA-256 instead.
//! Running hosts only load assembled releases.
//!
//! Invariants:
//! - Parsing is strict: unknown fields, missing fields, non-semver versions and paths that
//!   could leave the release directory (`..`, absolute paths, symlinks) are errors that
//!   name the manifest, the field and what was expected.
//! - Child ids are unique across a release's whole tree (supervisors are addressed by id;
//!   the root supervisor is `root`).

pub mod assemble;
pub mod handler;
pub mod plan;
pub mod record;
pub mod tree;

use crate::plugin::Sha256Digest;
use crate::supervisor::{AutoShutdown, Restart, Shutdown, Strategy};
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// The id of every release's root supervisor.
pub const ROOT_SUPERVISOR: &str = "root";

/// A release manifest (source or assembled).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Name and version.
    pub release: ReleaseHeader,
    /// The plugins it uses, by plugin name.
    pub plugins: BTreeMap<String, PluginEntry>,
    /// The root supervisor.
    pub supervisor: SupervisorManifest,
    /// How to get here from older versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upgrade: Vec<UpgradeSection>,
    /// How to go back from here to older versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub downgrade: Vec<DowngradeSection>,
}

/// `[release]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseHeader {
    /// The release's name.
    pub name: String,
    /// Its semver version.
    pub version: Version,
}

/// `[plugins.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// The plugin's version.
    pub version: Version,
    /// Source manifests: the plugin crate's directory, relative to the manifest.
    #[serde(default, rename = "crate", skip_serializing_if = "Option::is_none")]
    pub crate_path: Option<PathBuf>,
    /// Assembled manifests: the library, relative to the release directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<PathBuf>,
    /// Assembled manifests: the library's SHA-256 (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// How long one callback may run before its actor is killed (default 5000 ms;
    /// `"infinity"` for no deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_timeout_ms: Option<CallbackTimeout>,
    /// Where the plugin's code runs: in the host (default) or in a worker process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    /// Process isolation only: a worker whose resident memory exceeds this is killed and
    /// its actors restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u64>,
}

impl PluginEntry {
    /// The callback deadline: `None` is no deadline (`"infinity"`).
    pub fn callback_timeout(&self) -> Option<Duration> {
        match self.callback_timeout_ms {
            None => Some(DEFAULT_CALLBACK_TIMEOUT),
            Some(CallbackTimeout::Milliseconds(milliseconds)) => {
                Some(Duration::from_millis(milliseconds))
            }
            Some(CallbackTimeout::Word(InfinityWord::Infinity)) => None,
        }
    }

    /// The isolation, defaulting to in-process.
    pub fn isolation(&self) -> Isolation {
        self.isolation.unwrap_or_default()
    }
}

pub use crate::runtime::DEFAULT_CALLBACK_TIMEOUT;

/// `callback_timeout_ms`: milliseconds or `"infinity"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CallbackTimeout {
    /// A deadline in milliseconds.
    Milliseconds(u64),
    /// No deadline.
    Word(InfinityWord),
}

/// The word `infinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InfinityWord {
    /// No limit.
    Infinity,
}

/// Where a plugin's callbacks run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// In the host process, on the actor executor's threads.
    #[default]
    InProcess,
    /// In a worker process per plugin, reached over a Unix socket.
    Process,
}

/// A supervisor's flags and children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorManifest {
    /// The strategy.
    pub strategy: StrategyName,
    /// Restart intensity: at most this many restarts …
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// … in this many seconds.
    #[serde(default = "default_max_seconds")]
    pub max_seconds: u64,
    /// Children in start order (a dynamic supervisor: its one template).
    #[serde(default)]
    pub children: Vec<ChildManifest>,
    /// When significant children's exits shut it down (default `never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_shutdown: Option<AutoShutdown>,
}

fn default_max_restarts() -> u32 {
    3
}

fn default_max_seconds() -> u64 {
    5
}

/// A strategy, as written in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    /// `one_for_one`.
    OneForOne,
    /// `one_for_all`.
    OneForAll,
    /// `rest_for_one`.
    RestForOne,
    /// `dynamic` (OTP's `simple_one_for_one`).
    Dynamic,
}

impl From<StrategyName> for Strategy {
    fn from(name: StrategyName) -> Strategy {
        match name {
            StrategyName::OneForOne => Strategy::OneForOne,
            StrategyName::OneForAll => Strategy::OneForAll,
            StrategyName::RestForOne => Strategy::RestForOne,
            StrategyName::Dynamic => Strategy::Dynamic,
        }
    }
}

/// A restart type, as written in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartName {
    /// `permanent`.
    Permanent,
    /// `transient`.
    Transient,
    /// `temporary`.
    Temporary,
}

impl From<RestartName> for Restart {
    fn from(name: RestartName) -> Restart {
        match name {
            RestartName::Permanent => Restart::Permanent,
            RestartName::Transient => Restart::Transient,
            RestartName::Temporary => Restart::Temporary,
        }
    }
}

/// A shutdown, as written: `"brutal_kill"`, `"infinity"`, or milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShutdownName {
    /// A timeout in milliseconds.
    Milliseconds(u64),
    /// `brutal_kill` or `infinity`.
    Word(ShutdownWord),
}

/// The named shutdowns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownWord {
    /// Kill at once.
    BrutalKill,
    /// Wait as long as it takes.
    Infinity,
}

impl From<ShutdownName> for Shutdown {
    fn from(name: ShutdownName) -> Shutdown {
        match name {
            ShutdownName::Milliseconds(milliseconds) => {
                Shutdown::Timeout(Duration::from_millis(milliseconds))
            }
            ShutdownName::Word(ShutdownWord::BrutalKill) => Shutdown::BrutalKill,
            ShutdownName::Word(ShutdownWord::Infinity) => Shutdown::Infinity,
        }
    }
}

/// One child: a worker (`plugin` set) or a supervisor (`strategy` set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildManifest {
    /// Unique across the release's tree.
    pub id: String,
    /// Worker: the plugin it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// Worker: the name it registers (defaults to the id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Worker: start arguments (any TOML value; becomes the plugin's `Args`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<toml::Value>,
    /// Worker: whether link exit signals arrive as messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trap_exit: Option<bool>,
    /// Worker: the most calls, casts and info messages its mailbox holds (default
    /// unbounded, as in OTP); over it they are refused to their senders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mailbox: Option<MaxMailbox>,
    /// Worker: whether its name is registered cluster-wide (default `false`): on a host in
    /// a cluster, reachable from every host, and a second start anywhere fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<bool>,
    /// Worker: where in the cluster it runs (default `local`; `singleton`: on exactly one
    /// host at a time, its name global).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::supervisor::Placement>,
    /// Restart type (default `permanent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartName>,
    /// Shutdown (default 5000 ms for workers, `infinity` for supervisors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<ShutdownName>,
    /// Supervisor: its strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<StrategyName>,
    /// Supervisor: restart intensity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    /// Supervisor: intensity window in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seconds: Option<u64>,
    /// Supervisor: its children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<Vec<ChildManifest>>,
    /// Supervisor: when significant children's exits shut it down (default `never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_shutdown: Option<AutoShutdown>,
    /// Whether its exit for good may shut its supervisor down (transient or temporary
    /// children, under an `auto_shutdown` other than `never`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub significant: Option<bool>,
}

impl ChildManifest {
    /// This child as a supervisor, when it is one.
    pub fn as_supervisor(&self) -> Option<SupervisorManifest> {
        let strategy = self.strategy?;
        Some(SupervisorManifest {
            strategy,
            max_restarts: self.max_restarts.unwrap_or_else(default_max_restarts),
            max_seconds: self.max_seconds.unwrap_or_else(default_max_seconds),
            children: self.children.clone().unwrap_or_default(),
            auto_shutdown: self.auto_shutdown,
        })
    }

    /// The registered name of a worker.
    pub fn registered_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.id)
    }
}

/// `max_mailbox` as written: any TOML integer (checked to be positive by
/// [`Manifest::validate`], which names the field); anything else is a parse error that
/// says what was expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MaxMailbox(pub i64);

impl MaxMailbox {
    /// The bound, once validated as positive.
    pub fn limit(self) -> Option<usize> {
        usize::try_from(self.0).ok().filter(|limit| *limit > 0)
    }
}

impl<'de> Deserialize<'de> for MaxMailbox {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<MaxMailbox, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MaxMailbox;
            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("max_mailbox as a positive whole number of messages")
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<MaxMailbox, E> {
                Ok(MaxMailbox(value))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<MaxMailbox, E> {
                i64::try_from(value)
                    .map(MaxMailbox)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(value), &self))
            }
        }
        deserializer.deserialize_i64(Visitor)
    }
}

/// `[[upgrade]]`: how to get here from versions matching `from`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSection {
    /// A semver requirement on the version upgraded from.
    pub from: VersionReq,
    /// The script.
    #[serde(default)]
    pub instructions: Vec<Instruction>,
}

/// `[[downgrade]]`: how to go from here back to `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DowngradeSection {
    /// The version downgraded to.
    pub to: Version,
    /// The script.
    #[serde(default)]
    pub instructions: Vec<Instruction>,
}

/// How `update` moves state to the new code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateMode {
    /// New code, state bytes taken as they are.
    Soft,
    /// The plugin's migration (`code_change` up, `downgrade` down) with `extra`.
    #[default]
    Advanced,
}

/// What to do with actors still on the old version after an `update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PurgePolicy {
    /// Let them run; the old library stays loaded until the last one exits.
    #[default]
    Soft,
    /// Stop them.
    Brutal,
}

/// One step of an upgrade or downgrade script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Instruction {
    /// Moves every actor of `plugin` to the target release's version of it.
    Update {
        /// The plugin.
        plugin: String,
        /// Soft or advanced.
        #[serde(default)]
        mode: UpdateMode,
        /// Passed to the migration (any TOML value).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        extra: Option<toml::Value>,
        /// How long each actor may take to suspend.
        #[serde(default = "default_suspend_timeout_ms")]
        suspend_timeout_ms: u64,
        /// What to do with actors still on the old version.
        #[serde(default)]
        purge: PurgePolicy,
        /// Plugins whose actors are suspended together with these (a producer and its
        /// consumer), so none of them runs while the others change.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        suspend_with: Vec<String>,
    },
    /// Starts the target release's child `id` under `supervisor`.
    AddChild {
        /// The supervisor's id.
        supervisor: String,
        /// The child's id.
        id: String,
    },
    /// Stops and removes the child `id` of `supervisor`.
    RemoveChild {
        /// The supervisor's id.
        supervisor: String,
        /// The child's id.
        id: String,
    },
    /// Stops the child and starts it again on the target release's code and spec.
    RestartChild {
        /// The supervisor's id.
        supervisor: String,
        /// The child's id.
        id: String,
    },
    /// Gives `supervisor` the target release's strategy, intensity and child specs,
    /// merged by id, keeping live children.
    UpdateSupervisor {
        /// The supervisor's id.
        supervisor: String,
    },
    /// Calls `actor` with `message` (JSON-like TOML) at this point of the script.
    Apply {
        /// The actor's registered name.
        actor: String,
        /// The request.
        message: toml::Value,
        /// The call's timeout.
        #[serde(default = "default_apply_timeout_ms")]
        timeout_ms: u64,
    },
}

fn default_suspend_timeout_ms() -> u64 {
    5_000
}

fn default_apply_timeout_ms() -> u64 {
    5_000
}

/// A manifest could not be read or is invalid. Names the manifest and the field.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or shape (unknown or missing field, wrong type, bad semver), with the
    /// line and column.
    #[error("manifest {path} is invalid: {message}")]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A semantic error.
    #[error("manifest {path}: {field}: {message}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// The field, as a TOML path.
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl Manifest {
    /// Reads and parses a manifest (no semantic checks; see [`Manifest::validate`]).
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Manifest::parse(path, &text)
    }

    /// Parses manifest text; `path` is only for messages.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        toml::from_str(text).map_err(|error| ManifestError::Parse {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })
    }

    /// Renders the manifest as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serializes")
    }

    /// Checks everything that does not need other releases: the tree, the plugins it
    /// uses, and the instructions' own shape. `assembled` requires library and digest.
    pub fn validate(&self, path: &Path, assembled: bool) -> Result<(), ManifestError> {
        let invalid = |field: String, message: String| ManifestError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        if self.release.name.trim().is_empty() {
            return Err(invalid(
                "release.name".into(),
                "expected a non-empty name".into(),
            ));
        }
        for (name, entry) in &self.plugins {
            let field = |leaf: &str| format!("plugins.{name}.{leaf}");
            if assembled {
                let library = entry.library.as_ref().ok_or_else(|| {
                    invalid(
                        field("library"),
                        "expected the library's path in an assembled release".into(),
                    )
                })?;
                check_relative(library).map_err(|message| invalid(field("library"), message))?;
                let digest = entry.sha256.as_ref().ok_or_else(|| {
                    invalid(
                        field("sha256"),
                        "expected the library's SHA-256 in an assembled release".into(),
                    )
                })?;
                digest
                    .parse::<Sha256Digest>()
                    .map_err(|error| invalid(field("sha256"), error.to_string()))?;
            } else {
                let crate_path = entry.crate_path.as_ref().ok_or_else(|| {
                    invalid(
                        field("crate"),
                        "expected the plugin crate's directory".into(),
                    )
                })?;
                check_relative(crate_path).map_err(|message| invalid(field("crate"), message))?;
            }
            if entry.callback_timeout_ms == Some(CallbackTimeout::Milliseconds(0)) {
                return Err(invalid(
                    field("callback_timeout_ms"),
                    "expected a positive number of milliseconds or \"infinity\"".into(),
                ));
            }
            if entry.memory_limit_mb.is_some() && entry.isolation() != Isolation::Process {
                return Err(invalid(
                    field("memory_limit_mb"),
                    "a memory limit needs isolation = \"process\"".into(),
                ));
            }
            if entry.memory_limit_mb == Some(0) {
                return Err(invalid(
                    field("memory_limit_mb"),
                    "expected a positive number of MiB".into(),
                ));
            }
        }
        let mut ids = HashSet::from([ROOT_SUPERVISOR.to_owned()]);
        self.validate_supervisor(&self.supervisor, "supervisor", &mut ids, &invalid)?;
        for (index, section) in self.upgrade.iter().enumerate() {
            self.validate_instructions(
                &section.instructions,
                &format!("upgrade[{index}]"),
                &invalid,
            )?;
        }
        for (index, section) in self.downgrade.iter().enumerate() {
            if section.to >= self.release.version {
                return Err(invalid(
                    format!("downgrade[{index}].to"),
                    format!(
                        "expected a version older than {}, found {}",
                        self.release.version, section.to
                    ),
                ));
            }
            self.validate_instructions(
                &section.instructions,
                &format!("downgrade[{index}]"),
                &invalid,
            )?;
        }
        Ok(())
    }

    fn validate_supervisor(
        &self,
        supervisor: &SupervisorManifest,
        field: &str,
        ids: &mut HashSet<String>,
        invalid: &impl Fn(String, String) -> ManifestError,
    ) -> Result<(), ManifestError> {
        if supervisor.strategy == StrategyName::Dynamic && supervisor.children.len() != 1 {
            return Err(invalid(
                format!("{field}.children"),
                format!(
                    "a dynamic supervisor needs exactly one template child, found {}",
                    supervisor.children.len()
                ),
            ));
        }
        for (index, child) in supervisor.children.iter().enumerate() {
            let child_field = format!("{field}.children[{index}]");
            if child.id.trim().is_empty() {
                return Err(invalid(
                    format!("{child_field}.id"),
                    "expected a non-empty id".into(),
                ));
            }
            if !ids.insert(child.id.clone()) {
                return Err(invalid(
                    format!("{child_field}.id"),
                    format!(
                        "duplicate child id {:?} (ids are unique across the tree)",
                        child.id
                    ),
                ));
            }
            if child.significant == Some(true) {
                if supervisor.auto_shutdown.unwrap_or_default() == AutoShutdown::Never {
                    return Err(invalid(
                        format!("{child_field}.significant"),
                        "a significant child needs its supervisor's auto_shutdown to be any_significant or all_significant (it is never)".into(),
                    ));
                }
                if child.restart.unwrap_or(RestartName::Permanent) == RestartName::Permanent {
                    return Err(invalid(
                        format!("{child_field}.significant"),
                        "a significant child must be transient or temporary (its restart is permanent)".into(),
                    ));
                }
            }
            match (&child.plugin, child.as_supervisor()) {
                (Some(plugin), None) => {
                    if !self.plugins.contains_key(plugin) {
                        return Err(invalid(
                            format!("{child_field}.plugin"),
                            format!(
                                "unknown plugin {plugin:?}: expected one of [plugins] ({})",
                                self.plugin_names()
                            ),
                        ));
                    }
                    if (child.global == Some(true)
                        || child.placement == Some(crate::supervisor::Placement::Singleton))
                        && !crate::fleet::valid_name(child.registered_name())
                    {
                        return Err(invalid(
                            format!("{child_field}.name"),
                            format!(
                                "a global or singleton worker's name is a cluster-wide key: expected 1 to 64 of A-Z, a-z, 0-9, '_' and '-', found {:?}",
                                child.registered_name()
                            ),
                        ));
                    }
                    if child.registered_name().contains('@') {
                        return Err(invalid(
                            format!("{child_field}.name"),
                            format!(
                                "'@' is reserved for name@host; found {:?}",
                                child.registered_name()
                            ),
                        ));
                    }
                    if let Some(max_mailbox) = child.max_mailbox
                        && max_mailbox.limit().is_none()
                    {
                        return Err(invalid(
                            format!("{child_field}.max_mailbox"),
                            format!(
                                "expected a positive number of messages, found {}",
                                max_mailbox.0
                            ),
                        ));
                    }
                    if child.children.is_some()
                        || child.max_restarts.is_some()
                        || child.max_seconds.is_some()
                        || child.auto_shutdown.is_some()
                    {
                        return Err(invalid(
                            child_field,
                            "a worker (with `plugin`) cannot have supervisor fields (children, max_restarts, max_seconds, auto_shutdown)".into(),
                        ));
                    }
                }
                (None, Some(nested)) => {
                    if child.args.is_some() || child.name.is_some() {
                        return Err(invalid(
                            child_field,
                            "a supervisor (with `strategy`) takes no `args` or `name`".into(),
                        ));
                    }
                    if child.global.is_some() || child.placement.is_some() {
                        return Err(invalid(
                            child_field,
                            "a supervisor (with `strategy`) takes no `global` or `placement`; they are for workers"
                                .into(),
                        ));
                    }
                    if child.max_mailbox.is_some() {
                        return Err(invalid(
                            format!("{child_field}.max_mailbox"),
                            "a supervisor (with `strategy`) has no mailbox; max_mailbox is for workers"
                                .into(),
                        ));
                    }
                    self.validate_supervisor(&nested, &child_field, ids, invalid)?;
                }
                _ => {
                    return Err(invalid(
                        child_field,
                        "expected exactly one of `plugin` (a worker) or `strategy` (a supervisor)"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate_instructions(
        &self,
        instructions: &[Instruction],
        field: &str,
        invalid: &impl Fn(String, String) -> ManifestError,
    ) -> Result<(), ManifestError> {
        for (index, instruction) in instructions.iter().enumerate() {
            let field = format!("{field}.instructions[{index}]");
            if let Instruction::Update {
                suspend_timeout_ms, ..
            } = instruction
                && *suspend_timeout_ms == 0
            {
                return Err(invalid(
                    format!("{field}.suspend_timeout_ms"),
                    "expected a positive number of milliseconds".into(),
                ));
            }
        }
        Ok(())
    }

    fn plugin_names(&self) -> String {
        self.plugins.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Finds a child anywhere in the tree, with the id of its supervisor.
    pub fn find_child(&self, id: &str) -> Option<(&str, &ChildManifest)> {
        fn search<'a>(
            parent: &'a str,
            children: &'a [ChildManifest],
            id: &str,
        ) -> Option<(&'a str, &'a ChildManifest)> {
            for child in children {
                if child.id == id {
                    return Some((parent, child));
                }
                if let Some(nested) = &child.children
                    && let Some(found) = search(&child.id, nested, id)
                {
                    return Some(found);
                }
            }
            None
        }
        search(ROOT_SUPERVISOR, &self.supervisor.children, id)
    }

    /// The supervisor with this id (`root` is the root).
    pub fn find_supervisor(&self, id: &str) -> Option<SupervisorManifest> {
        if id == ROOT_SUPERVISOR {
            return Some(self.supervisor.clone());
        }
        self.find_child(id)
            .and_then(|(_, child)| child.as_supervisor())
    }

    /// Every worker's `max_mailbox` (`None`: unbounded), by registered name.
    pub fn max_mailboxes(&self) -> HashMap<String, Option<usize>> {
        fn collect(children: &[ChildManifest], bounds: &mut HashMap<String, Option<usize>>) {
            for child in children {
                if child.plugin.is_some() {
                    bounds.insert(
                        child.registered_name().to_owned(),
                        child.max_mailbox.and_then(MaxMailbox::limit),
                    );
                }
                collect(child.children.as_deref().unwrap_or_default(), bounds);
            }
        }
        let mut bounds = HashMap::new();
        collect(&self.supervisor.children, &mut bounds);
        bounds
    }
}

/// Checks that a manifest path stays inside its directory: relative, no `..`, no `.`.
pub fn check_relative(path: &Path) -> Result<(), String> {
    if path.as_os_str().is_empty() {
        return Err("expected a relative path, found an empty one".to_owned());
    }
    for component in path.components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => {
                return Err(format!(
                    "{} escapes the release directory (`..` is not allowed)",
                    path.display()
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{} is absolute; expected a path relative to the release",
                    path.display()
                ));
            }
            Component::CurDir => {}
        }
    }
    Ok(())
}

/// Resolves `relative` under `base`, refusing symlinks that lead outside `base`.
pub fn resolve_inside(base: &Path, relative: &Path) -> Result<PathBuf, String> {
    check_relative(relative)?;
    let base = base
        .canonicalize()
        .map_err(|error| format!("cannot resolve {}: {error}", base.display()))?;
    let joined = base.join(relative);
    let resolved = joined
        .canonicalize()
        .map_err(|error| format!("cannot resolve {}: {error}", joined.display()))?;
    if !resolved.starts_with(&base) {
        return Err(format!(
            "{} resolves to {}, outside {} (a symlink?)",
            relative.display(),
            resolved.display(),
            base.display()
        ));
    }
    Ok(resolved)
}

/// Converts a TOML value to the plugin wire format (via JSON's data model).
pub fn encode_value(value: Option<&toml::Value>) -> Result<Vec<u8>, String> {
    let json = match value {
        Some(value) => serde_json::to_value(value).map_err(|error| error.to_string())?,
        None => serde_json::Value::Null,
    };
    graft_plugin::codec::encode(&json).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[release]
name = "demo"
version = "1.0.0"

[plugins.counter]
version = "1.0.0"
crate = "plugins/counter/1.0.0"

[supervisor]
strategy = "one_for_one"

[[supervisor.children]]
id = "counter"
plugin = "counter"
args = { start = 1 }
"#;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("release.toml"), text)
    }

    #[test]
    fn global_and_singleton_workers_need_a_key_safe_name_and_no_supervisor_takes_them() {
        let validate = |text: &str| {
            parse(text).and_then(|manifest| manifest.validate(Path::new("release.toml"), false))
        };
        let global = MINIMAL.replace("args = { start = 1 }", "global = true");
        validate(&global).unwrap();
        let singleton = MINIMAL.replace("args = { start = 1 }", "placement = \"singleton\"");
        let manifest = parse(&singleton).unwrap();
        assert_eq!(
            manifest.supervisor.children[0].placement,
            Some(crate::supervisor::Placement::Singleton)
        );
        validate(&singleton).unwrap();
        let field_of = |text: &str| match validate(text).unwrap_err() {
            ManifestError::Invalid { field, message, .. } => (field, message),
            other => panic!("{other}"),
        };
        let (field, message) =
            field_of(&MINIMAL.replace("args = { start = 1 }", "global = true\nname = \"k.v\""));
        assert_eq!(field, "supervisor.children[0].name");
        assert!(message.contains("cluster-wide key"), "{message}");
        let (field, message) =
            field_of(&MINIMAL.replace("args = { start = 1 }", "name = \"kv@host-a\""));
        assert_eq!(field, "supervisor.children[0].name");
        assert!(message.contains("reserved for name@host"), "{message}");
        let unknown = parse(&MINIMAL.replace("args = { start = 1 }", "placement = \"everywhere\""))
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("everywhere"), "{unknown}");
    }

    #[test]
    fn max_mailbox_is_a_positive_whole_number_on_a_worker() {
        let bounded = MINIMAL.replace("args = { start = 1 }", "max_mailbox = 500");
        let manifest = parse(&bounded).unwrap();
        manifest.validate(Path::new("release.toml"), false).unwrap();
        assert_eq!(
            manifest.max_mailboxes(),
            HashMap::from([("counter".to_owned(), Some(500))])
        );
        assert_eq!(
            parse(MINIMAL).unwrap().max_mailboxes(),
            HashMap::from([("counter".to_owned(), None)])
        );
        for bad in ["0", "-1"] {
            let text = MINIMAL.replace("args = { start = 1 }", &format!("max_mailbox = {bad}"));
            let error = parse(&text)
                .unwrap()
                .validate(Path::new("release.toml"), false)
                .unwrap_err();
            assert!(
                matches!(&error, ManifestError::Invalid { field, .. } if field == "supervisor.children[0].max_mailbox"),
                "{error}"
            );
        }
        for bad in ["\"lots\"", "1.5", "true"] {
            let text = MINIMAL.replace("args = { start = 1 }", &format!("max_mailbox = {bad}"));
            let error = parse(&text).unwrap_err().to_string();
            assert!(
                error.contains("expected max_mailbox as a positive whole number of messages"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_minimal_source_manifest_parses_and_validates() {
        let manifest = parse(MINIMAL).unwrap();
        assert_eq!(manifest.release.version, Version::new(1, 0, 0));
        assert_eq!(manifest.supervisor.max_restarts, 3);
        manifest.validate(Path::new("release.toml"), false).unwrap();
        let (parent, child) = manifest.find_child("counter").unwrap();
        assert_eq!(parent, "root");
        assert_eq!(child.registered_name(), "counter");
    }

    #[test]
    fn syntax_errors_name_the_line_and_column() {
        let error = parse("[release]\nname = \"demo\nversion = 1").unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("release.toml") && text.contains("line 2"),
            "{text}"
        );
    }

    #[test]
    fn unknown_and_missing_fields_and_bad_versions_are_refused() {
        let unknown = MINIMAL.replace(
            "strategy = \"one_for_one\"",
            "strategy = \"one_for_one\"\ncolour = \"blue\"",
        );
        assert!(
            parse(&unknown)
                .unwrap_err()
                .to_string()
                .contains("unknown field `colour`")
        );
        let missing = MINIMAL.replace("name = \"demo\"\n", "");
        assert!(
            parse(&missing)
                .unwrap_err()
                .to_string()
                .contains("missing field `name`")
        );
        let not_semver = MINIMAL.replace(
            "version = \"1.0.0\"\n\n[plugins",
            "version = \"one\"\n\n[plugins",
        );
        let text = parse(&not_semver).unwrap_err().to_string();
        assert!(
            text.contains("release.version") || text.contains("unexpected character"),
            "{text}"
        );
    }

    #[test]
    fn significant_children_need_auto_shutdown_and_a_restart_that_can_end() {
        let path = Path::new("release.toml");
        let significant = MINIMAL.replace(
            "args = { start = 1 }",
            "args = { start = 1 }\nrestart = \"transient\"\nsignificant = true",
        );
        let with_flag = significant.replace(
            "strategy = \"one_for_one\"",
            "strategy = \"one_for_one\"\nauto_shutdown = \"any_significant\"",
        );
        let manifest = parse(&with_flag).unwrap();
        manifest.validate(path, false).unwrap();
        assert_eq!(
            manifest.supervisor.auto_shutdown,
            Some(AutoShutdown::AnySignificant)
        );
        assert_eq!(manifest.supervisor.children[0].significant, Some(true));

        let error = parse(&significant)
            .unwrap()
            .validate(path, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("supervisor.children[0].significant") && error.contains("never"),
            "{error}"
        );
        let permanent = with_flag.replace("restart = \"transient\"\n", "");
        let error = parse(&permanent)
            .unwrap()
            .validate(path, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("significant") && error.contains("permanent"),
            "{error}"
        );
    }

    #[test]
    fn duplicate_ids_unknown_plugins_and_escaping_paths_are_refused() {
        let path = Path::new("release.toml");
        let duplicate =
            format!("{MINIMAL}\n[[supervisor.children]]\nid = \"counter\"\nplugin = \"counter\"\n");
        let error = parse(&duplicate)
            .unwrap()
            .validate(path, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("supervisor.children[1].id") && error.contains("duplicate"),
            "{error}"
        );

        let unknown = MINIMAL.replace("plugin = \"counter\"", "plugin = \"kv\"");
        let error = parse(&unknown)
            .unwrap()
            .validate(path, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown plugin \"kv\""), "{error}");

        let absolute = MINIMAL.replace("plugins/counter/1.0.0", "/etc");
        let error = parse(&absolute)
            .unwrap()
            .validate(path, false)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("plugins.counter.crate") && error.contains("absolute"),
            "{error}"
        );

        let mut assembled = parse(MINIMAL).unwrap();
        let entry = assembled.plugins.get_mut("counter").unwrap();
        entry.library = Some(PathBuf::from("lib/../../x.so"));
        entry.sha256 = Some("00".repeat(32));
        let error = assembled.validate(path, true).unwrap_err().to_string();
        assert!(error.contains("escapes the release directory"), "{error}");
    }

    #[test]
    fn a_symlink_out_of_the_release_is_refused() {
        let release = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("evil.so"), b"x").unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("evil.so"),
            release.path().join("lib.so"),
        )
        .unwrap();
        let error = resolve_inside(release.path(), Path::new("lib.so")).unwrap_err();
        assert!(error.contains("outside"), "{error}");
    }
}

#[cfg(test)]
mod properties {
    //! The manifest parser and validator never panic, whatever the text.
    use super::*;
    use proptest::prelude::*;

    const VALID: &str = include_str!("../../releases/1.1.0/release.toml");

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_text_is_an_error_or_a_manifest_never_a_panic(text in "\\PC{0,400}") {
            if let Ok(manifest) = Manifest::parse(Path::new("fuzz.toml"), &text) {
                let _ = manifest.validate(Path::new("fuzz.toml"), false);
                let _ = manifest.validate(Path::new("fuzz.toml"), true);
            }
        }

        #[test]
        fn a_mutated_real_manifest_is_an_error_or_a_manifest_never_a_panic(
            edits in proptest::collection::vec((0usize..VALID.len(), any::<u8>()), 1..8)
        ) {
            let mut bytes = VALID.as_bytes().to_vec();
            for (position, byte) in edits {
                bytes[position] = byte;
            }
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(manifest) = Manifest::parse(Path::new("fuzz.toml"), &text) {
                let _ = manifest.validate(Path::new("fuzz.toml"), false);
                for child in ["counter", "tally", "characters", "nothing"] {
                    let _ = manifest.find_child(child);
                    let _ = manifest.find_supervisor(child);
                }
            }
        }
    }
}
