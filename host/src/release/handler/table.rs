//! What new actors start from: the plugin table (the version of each plugin, switched at an
//! install's commit, and its callback deadline), the factory supervisors use to start an
//! actor from it, the supervisor specs built from a manifest's tree, and keeping the worker
//! processes of isolated plugins in step with the running release.
//!
//! Invariant: a factory reads the table when it starts an actor, never before, so a
//! restart after the commit starts on the new code.

use super::*;

/// The version of each plugin new actors start on (in the host or in its worker process);
/// switched at an install's commit.
#[derive(Default)]
pub(super) struct PluginTable {
    pub(super) current: Mutex<HashMap<String, PluginVersion>>,
    /// Each plugin's `callback_timeout_ms` in the current release (`None`: infinity).
    pub(super) callback_timeouts: Mutex<HashMap<String, Option<Duration>>>,
    /// Each worker's `max_mailbox` in the current release, by registered name (`None`:
    /// unbounded), so a restart after an install takes the new bound.
    pub(super) max_mailboxes: Mutex<HashMap<String, Option<usize>>>,
}

impl PluginTable {
    pub(super) fn get(&self, plugin: &str) -> Option<PluginVersion> {
        lock(&self.current).get(plugin).cloned()
    }

    pub(super) fn callback_timeout(&self, plugin: &str) -> Option<Duration> {
        lock(&self.callback_timeouts)
            .get(plugin)
            .copied()
            .unwrap_or(Some(crate::runtime::DEFAULT_CALLBACK_TIMEOUT))
    }

    /// The `max_mailbox` of the worker registered as `name` in the current release
    /// (`None` when the release does not name it).
    pub(super) fn max_mailbox(&self, name: &str) -> Option<Option<usize>> {
        lock(&self.max_mailboxes).get(name).copied()
    }

    /// Takes the callback deadlines of `release`'s plugins and the mailbox bounds of its
    /// workers.
    pub(super) fn set_limits(&self, release: &AssembledRelease) {
        *lock(&self.callback_timeouts) = release
            .manifest
            .plugins
            .iter()
            .map(|(name, entry)| (name.clone(), entry.callback_timeout()))
            .collect();
        *lock(&self.max_mailboxes) = release.manifest.max_mailboxes();
    }
}

/// Starts actors of a plugin on whatever version is current when they start.
pub(super) struct ReleaseFactory {
    pub(super) plugin: String,
    /// The registered name of the child it starts (its mailbox bound is looked up by it).
    pub(super) name: String,
    pub(super) table: Arc<PluginTable>,
}

impl BehaviourFactory for ReleaseFactory {
    fn start(&self, args: &[u8], services: &dyn HostServices) -> Result<Started, CallbackError> {
        let Some(plugin) = self.table.get(&self.plugin) else {
            return Err(CallbackError::Protocol {
                plugin: PluginIdentity {
                    name: self.plugin.clone(),
                    version: Version::new(0, 0, 0),
                },
                callback: "init",
                message: "the plugin is not part of the current release".to_owned(),
            });
        };
        plugin.start(args, services)
    }

    fn identity(&self) -> Option<PluginIdentity> {
        self.table
            .get(&self.plugin)
            .map(|plugin| plugin.identity().clone())
    }

    fn plugin_name(&self) -> Option<String> {
        Some(self.plugin.clone())
    }

    fn max_mailbox(&self, from_spec: Option<usize>) -> Option<usize> {
        self.table.max_mailbox(&self.name).unwrap_or(from_spec)
    }

    fn callback_timeout(&self) -> Option<Duration> {
        self.table.callback_timeout(&self.plugin)
    }
}

pub(super) fn child_spec(
    child: &ChildManifest,
    table: &Arc<PluginTable>,
) -> Result<ChildSpec, String> {
    let restart = child
        .restart
        .map(Restart::from)
        .unwrap_or(Restart::Permanent);
    if let Some(nested) = child.as_supervisor() {
        let spec = supervisor_spec(&nested, &child.id, table)?;
        return Ok(ChildSpec {
            id: child.id.clone(),
            start: ChildStart::Supervisor(spec),
            restart,
            shutdown: child
                .shutdown
                .map(Shutdown::from)
                .unwrap_or(Shutdown::Infinity),
            significant: child.significant.unwrap_or(false),
        });
    }
    let plugin = child.plugin.clone().unwrap_or_default();
    let args = encode_value(child.args.as_ref())
        .map_err(|error| format!("child {}: args: {error}", child.id))?;
    Ok(ChildSpec {
        id: child.id.clone(),
        start: ChildStart::Worker(WorkerSpec {
            factory: Arc::new(ReleaseFactory {
                plugin,
                name: child.registered_name().to_owned(),
                table: Arc::clone(table),
            }),
            args,
            name: Some(child.registered_name().to_owned()),
            trap_exit: child.trap_exit.unwrap_or(false),
            max_mailbox: child
                .max_mailbox
                .and_then(crate::release::MaxMailbox::limit),
        }),
        restart,
        shutdown: child
            .shutdown
            .map(Shutdown::from)
            .unwrap_or(Shutdown::Timeout(Duration::from_secs(5))),
        significant: child.significant.unwrap_or(false),
    })
}

pub(super) fn supervisor_spec(
    manifest: &SupervisorManifest,
    id: &str,
    table: &Arc<PluginTable>,
) -> Result<SupervisorSpec, String> {
    let children = manifest
        .children
        .iter()
        .map(|child| child_spec(child, table))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SupervisorSpec {
        name: Some(id.to_owned()),
        strategy: manifest.strategy.into(),
        max_restarts: manifest.max_restarts,
        max_seconds: manifest.max_seconds,
        children,
        auto_shutdown: manifest.auto_shutdown.unwrap_or_default(),
    })
}

/// A worker and the plugin its spec starts.
pub(super) type Worker = (ActorRef, Option<String>);

/// Every worker in the tree under `supervisor`, with the plugin its spec starts.
pub(super) fn workers(
    supervisor: SupervisorRef,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Worker>> + Send>> {
    Box::pin(async move {
        let mut found = Vec::new();
        for (child, plugin) in supervisor.running_children().await.unwrap_or_default() {
            match child {
                ChildRef::Worker(actor) => found.push((actor, plugin)),
                ChildRef::Supervisor(nested) => found.extend(workers(nested).await),
            }
        }
        found
    })
}

/// Makes the workers follow `release`: each isolated plugin's worker takes its memory
/// limit; the workers of plugins it does not run in a worker process are let go (each
/// process stops once no version loaded in it is used any more).
pub(super) fn settle_workers(workers: &Workers, release: &AssembledRelease) {
    lock(workers).retain(|name, worker| {
        match release
            .manifest
            .plugins
            .get(name)
            .filter(|entry| entry.isolation() == Isolation::Process)
        {
            Some(entry) => {
                worker.set_memory_limit_mb(entry.memory_limit_mb);
                true
            }
            None => false,
        }
    });
}

/// `in_process` or `process`, as in `release.toml`.
pub(super) fn isolation_name(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::InProcess => "in_process",
        Isolation::Process => "process",
    }
}
