//! [`PluginVersion`]: one loaded plugin version, in the host or in a worker process — what
//! the release handler's plugin table holds, so that starting, restoring and migrating an
//! actor reads the same for both isolation modes, and a migration can cross them (the
//! state travels as bytes: `encode_state`/`downgrade` on the old side, `code_change` or
//! `restore_state` on the new).

use super::IsolatedPlugin;
use crate::plugin::{
    CallbackError, HostServices, Instance, LoadedPlugin, PluginIdentity, Sha256Digest,
};
use crate::release::Isolation;
use crate::runtime::{Behaviour, Started};
use semver::Version;
use std::sync::Arc;

/// A loaded plugin version and where its code runs.
#[derive(Debug, Clone)]
pub enum PluginVersion {
    /// `dlopen`ed into the host.
    InProcess(Arc<LoadedPlugin>),
    /// Loaded in the plugin's worker process.
    Isolated(Arc<IsolatedPlugin>),
}

impl PluginVersion {
    /// The version `behaviour` runs on, when it is a plugin's.
    pub fn of(behaviour: &dyn Behaviour) -> Option<PluginVersion> {
        match (behaviour.plugin(), behaviour.isolated_plugin()) {
            (Some(plugin), _) => Some(PluginVersion::InProcess(Arc::clone(plugin))),
            (None, Some(plugin)) => Some(PluginVersion::Isolated(Arc::clone(plugin))),
            (None, None) => None,
        }
    }

    /// Name and version.
    pub fn identity(&self) -> &PluginIdentity {
        match self {
            PluginVersion::InProcess(plugin) => plugin.identity(),
            PluginVersion::Isolated(plugin) => plugin.identity(),
        }
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.identity().name
    }

    /// The plugin's version.
    pub fn version(&self) -> &Version {
        &self.identity().version
    }

    /// The SHA-256 of the library's bytes.
    pub fn sha256(&self) -> Sha256Digest {
        match self {
            PluginVersion::InProcess(plugin) => plugin.sha256(),
            PluginVersion::Isolated(plugin) => plugin.sha256(),
        }
    }

    /// Where its code runs.
    pub fn isolation(&self) -> Isolation {
        match self {
            PluginVersion::InProcess(_) => Isolation::InProcess,
            PluginVersion::Isolated(_) => Isolation::Process,
        }
    }

    /// The in-process library, if it is one.
    pub fn in_process(&self) -> Option<&Arc<LoadedPlugin>> {
        match self {
            PluginVersion::InProcess(plugin) => Some(plugin),
            PluginVersion::Isolated(_) => None,
        }
    }

    /// Whether both are the very same loaded version (not merely the same name and version).
    pub fn same(&self, other: &PluginVersion) -> bool {
        match (self, other) {
            (PluginVersion::InProcess(a), PluginVersion::InProcess(b)) => Arc::ptr_eq(a, b),
            (PluginVersion::Isolated(a), PluginVersion::Isolated(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Runs `init`.
    pub fn start(
        &self,
        args: &[u8],
        services: &dyn HostServices,
    ) -> Result<Started, CallbackError> {
        match self {
            PluginVersion::InProcess(plugin) => {
                let (instance, outputs) = Instance::start(plugin, args, services)?;
                Ok((Box::new(instance), outputs))
            }
            PluginVersion::Isolated(plugin) => plugin.start(args, services),
        }
    }

    /// Creates a behaviour from state bytes in this version's shape.
    pub fn restore(
        &self,
        state: &[u8],
        services: &dyn HostServices,
    ) -> Result<Box<dyn Behaviour>, CallbackError> {
        match self {
            PluginVersion::InProcess(plugin) => {
                Ok(Box::new(Instance::restore(plugin, state, services)?))
            }
            PluginVersion::Isolated(plugin) => plugin.restore(state, services),
        }
    }

    /// Upgrade: creates a behaviour from an older version's state (its `code_change`).
    pub fn code_change(
        &self,
        from_version: &Version,
        state: &[u8],
        extra: &[u8],
        services: &dyn HostServices,
    ) -> Result<Box<dyn Behaviour>, CallbackError> {
        match self {
            PluginVersion::InProcess(plugin) => Ok(Box::new(Instance::code_change(
                plugin,
                from_version,
                state,
                extra,
                services,
            )?)),
            PluginVersion::Isolated(plugin) => {
                plugin.code_change(from_version, state, extra, services)
            }
        }
    }
}
