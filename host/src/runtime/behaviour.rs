//! What an actor runs: the [`Behaviour`] trait, implemented by a loaded plugin's
//! [`Instance`] and, for the runtime's own tests, by host-native Rust types.
//!
//! Everything is bytes in the plugin wire format (MessagePack), so the runtime never knows
//! which kind of behaviour it drives. A [`BehaviourFactory`] creates a behaviour from
//! encoded start arguments; child specs and dynamic supervisors hold factories.

use crate::plugin::{CallbackError, HostServices, Instance, LoadedPlugin, Outputs, PluginIdentity};
use graft_plugin::{Health, StopReason};
use std::fmt;
use std::sync::Arc;

/// An actor's behaviour. Callbacks run one at a time on the actor's task.
pub trait Behaviour: Send {
    /// The plugin and version, when the behaviour is a plugin.
    fn identity(&self) -> Option<&PluginIdentity>;
    /// "plugin version" (`native code` for host-native behaviours), for reports; a
    /// plugin's is one string shared by all its actors.
    fn code_label(&self) -> Arc<str> {
        code_label_of(self.identity())
    }
    /// The metrics of the code it runs (a loaded plugin keeps its own, looked up once).
    fn version_metrics(&self) -> Arc<crate::metrics::VersionMetrics> {
        crate::metrics::plugin::for_identity(self.identity())
    }
    /// Handles a call; `reply_token` identifies it for a deferred reply.
    fn handle_call(
        &mut self,
        request: &[u8],
        reply_token: u64,
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError>;
    /// Handles a cast.
    fn handle_cast(
        &mut self,
        message: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError>;
    /// Whether [`Behaviour::handle_casts`] is worth calling with more than one message (a
    /// process-isolated behaviour sends them to its worker in one round trip).
    fn batches_casts(&self) -> bool {
        false
    }
    /// Handles casts in order, and stops after the first that fails, stops the actor or
    /// asks for a continuation: one result per cast that ran (the rest are handled later,
    /// as if still in the mailbox).
    fn handle_casts(
        &mut self,
        messages: &[Vec<u8>],
        services: &dyn HostServices,
    ) -> Vec<Result<Outputs, CallbackError>> {
        let mut results = Vec::with_capacity(messages.len());
        for message in messages {
            let result = self.handle_cast(message, services);
            let ends = ends_a_batch(&result);
            results.push(result);
            if ends {
                break;
            }
        }
        results
    }
    /// Handles an info message of an `INFO_*` kind.
    fn handle_info(
        &mut self,
        kind: u32,
        message: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError>;
    /// Handles a continuation.
    fn handle_continue(
        &mut self,
        argument: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError>;
    /// Runs terminate.
    fn terminate(
        &mut self,
        reason: &StopReason,
        services: &dyn HostServices,
    ) -> Result<(), CallbackError>;
    /// The state, encoded.
    fn encode_state(&mut self) -> Result<Vec<u8>, CallbackError>;
    /// The loaded plugin, when the behaviour is a plugin (used by code change).
    fn plugin(&self) -> Option<&Arc<LoadedPlugin>> {
        None
    }
    /// Tells the behaviour which actor runs it: after `init`, and after a `change_code`
    /// installs it. Process-isolated behaviours use it to end their actor when the worker
    /// dies; others ignore it.
    fn attach(&mut self, actor: &super::ActorRef) {
        let _ = actor;
    }
    /// The plugin version in a worker process, when the behaviour is a process-isolated
    /// plugin's (used by code change, as [`Behaviour::plugin`] is for in-process ones).
    fn isolated_plugin(&self) -> Option<&Arc<crate::isolation::IsolatedPlugin>> {
        None
    }
    /// The behaviour's own view of its health (plugin ABI 1.1 `health`); `None` when it
    /// reports none (an ABI 1.0 plugin, a host-native behaviour). A failed check is an
    /// `Err`, which the health gate counts as unhealthy.
    fn health(&mut self) -> Option<Result<Health, CallbackError>> {
        None
    }
    /// What operators see of the state, encoded (plugin ABI 1.1 `format_status`, secrets
    /// redacted); `None` when the behaviour has no such view, and the state itself is shown.
    fn format_status(&mut self) -> Option<Result<Vec<u8>, CallbackError>> {
        None
    }
    /// Downgrade: the state in the shape of an older version.
    fn downgrade(
        &mut self,
        to_version: &semver::Version,
        extra: &[u8],
    ) -> Result<Vec<u8>, CallbackError> {
        let _ = (to_version, extra);
        self.encode_state()
    }
}

impl Behaviour for Instance {
    fn identity(&self) -> Option<&PluginIdentity> {
        Some(self.plugin().identity())
    }

    fn code_label(&self) -> Arc<str> {
        self.plugin().code_label()
    }

    fn version_metrics(&self) -> Arc<crate::metrics::VersionMetrics> {
        self.plugin().version_metrics()
    }

    fn handle_call(
        &mut self,
        request: &[u8],
        reply_token: u64,
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        Instance::handle_call(self, request, reply_token, services)
    }

    fn handle_cast(
        &mut self,
        message: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        Instance::handle_cast(self, message, services)
    }

    fn handle_info(
        &mut self,
        kind: u32,
        message: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        Instance::handle_info(self, kind, message, services)
    }

    fn handle_continue(
        &mut self,
        argument: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        Instance::handle_continue(self, argument, services)
    }

    fn terminate(
        &mut self,
        reason: &StopReason,
        services: &dyn HostServices,
    ) -> Result<(), CallbackError> {
        Instance::terminate(self, reason, services)
    }

    fn encode_state(&mut self) -> Result<Vec<u8>, CallbackError> {
        Instance::encode_state(self)
    }

    fn plugin(&self) -> Option<&Arc<LoadedPlugin>> {
        Some(Instance::plugin(self))
    }

    fn health(&mut self) -> Option<Result<Health, CallbackError>> {
        Instance::health(self)
    }

    fn format_status(&mut self) -> Option<Result<Vec<u8>, CallbackError>> {
        Instance::format_status(self)
    }

    fn downgrade(
        &mut self,
        to_version: &semver::Version,
        extra: &[u8],
    ) -> Result<Vec<u8>, CallbackError> {
        Instance::downgrade(self, to_version, extra)
    }
}

/// Whether a cast's result ends a batch of casts: it stopped the actor, asked for a
/// continuation (which runs before anything else), or failed (a refused message does not:
/// it is dropped and the next one runs, as in the mailbox).
pub(crate) fn ends_a_batch(result: &Result<Outputs, CallbackError>) -> bool {
    match result {
        Ok(outputs) => outputs.stop.is_some() || outputs.continue_with.is_some(),
        Err(error) => !error.is_bad_input(),
    }
}

/// "plugin version", or `native code` without a plugin.
fn code_label_of(identity: Option<&PluginIdentity>) -> Arc<str> {
    identity.map_or_else(
        || Arc::from("native code"),
        |identity| Arc::from(identity.to_string()),
    )
}

/// A started behaviour and what its `init` produced (a continuation, say).
pub type Started = (Box<dyn Behaviour>, Outputs);

/// Creates behaviours from encoded start arguments.
pub trait BehaviourFactory: Send + Sync {
    /// Runs `init`.
    fn start(&self, args: &[u8], services: &dyn HostServices) -> Result<Started, CallbackError>;
    /// The plugin and version new actors will run, when a plugin.
    fn identity(&self) -> Option<PluginIdentity>;

    /// "plugin version" of the actors it starts (`native code` for host-native ones).
    fn code_label(&self) -> Arc<str> {
        code_label_of(self.identity().as_ref())
    }

    /// The mailbox bound of the actors it starts, given the child spec's (a factory that
    /// follows releases may know a newer one).
    fn max_mailbox(&self, from_spec: Option<usize>) -> Option<usize> {
        from_spec
    }

    /// How long each callback of the actors it starts may run (`None`: no deadline).
    fn callback_timeout(&self) -> Option<std::time::Duration> {
        Some(super::DEFAULT_CALLBACK_TIMEOUT)
    }

    /// The plugin's name alone (cheaper than `identity` for some factories).
    fn plugin_name(&self) -> Option<String> {
        self.identity().map(|identity| identity.name)
    }
}

/// Starts actors on a loaded plugin version.
#[derive(Clone)]
pub struct PluginFactory {
    plugin: Arc<LoadedPlugin>,
}

impl PluginFactory {
    /// A factory for `plugin`.
    pub fn new(plugin: Arc<LoadedPlugin>) -> PluginFactory {
        PluginFactory { plugin }
    }

    /// The plugin.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }
}

impl fmt::Debug for PluginFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginFactory({})", self.plugin.identity())
    }
}

impl BehaviourFactory for PluginFactory {
    fn start(&self, args: &[u8], services: &dyn HostServices) -> Result<Started, CallbackError> {
        let (instance, outputs) = Instance::start(&self.plugin, args, services)?;
        Ok((Box::new(instance), outputs))
    }

    fn identity(&self) -> Option<PluginIdentity> {
        Some(self.plugin.identity().clone())
    }

    fn code_label(&self) -> Arc<str> {
        self.plugin.code_label()
    }
}

/// Wraps a closure as a factory (host-native behaviours in tests).
pub struct NativeFactory<F>(pub F);

impl<F> BehaviourFactory for NativeFactory<F>
where
    F: Fn(&[u8], &dyn HostServices) -> Result<Started, CallbackError> + Send + Sync,
{
    fn start(&self, args: &[u8], services: &dyn HostServices) -> Result<Started, CallbackError> {
        (self.0)(args, services)
    }

    fn identity(&self) -> Option<PluginIdentity> {
        None
    }
}
