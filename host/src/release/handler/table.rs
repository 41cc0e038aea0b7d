//! What new actors start from: the plugin table (the version of each plugin, switched at an
//! install's commit, and its callback deadline), loading a release's plugins into it, the
//! factory supervisors use to start an actor from it (handed to the tree translation,
//! [`super::super::tree`]), and keeping the worker processes of isolated plugins in step
//! with the running release.
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
        timeout_in(&lock(&self.callback_timeouts), plugin)
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

    /// Gives running `workers` the current callback deadlines and mailbox bounds (each
    /// table locked once, not once per actor).
    pub(super) fn apply_limits(&self, workers: &[Worker]) {
        let callback_timeouts = lock(&self.callback_timeouts);
        let max_mailboxes = lock(&self.max_mailboxes);
        for (actor, plugin) in workers {
            if let Some(plugin) = plugin {
                actor.set_callback_timeout(timeout_in(&callback_timeouts, plugin));
            }
            if let Some(bound) = actor.name().and_then(|name| max_mailboxes.get(name)) {
                actor.set_max_mailbox(*bound);
            }
        }
    }
}

/// `plugin`'s callback deadline in `timeouts` (the default for a plugin it does not name).
fn timeout_in(timeouts: &HashMap<String, Option<Duration>>, plugin: &str) -> Option<Duration> {
    timeouts
        .get(plugin)
        .copied()
        .unwrap_or(Some(crate::runtime::DEFAULT_CALLBACK_TIMEOUT))
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

/// Makes each worker's factory: a [`ReleaseFactory`] on this table.
fn factories(table: &Arc<PluginTable>) -> impl Fn(&str, &str) -> Arc<dyn BehaviourFactory> + '_ {
    move |plugin: &str, name: &str| -> Arc<dyn BehaviourFactory> {
        Arc::new(ReleaseFactory {
            plugin: plugin.to_owned(),
            name: name.to_owned(),
            table: Arc::clone(table),
        })
    }
}

/// A child's spec ([`super::super::tree`]), its workers started from the table.
pub(super) fn child_spec(
    child: &ChildManifest,
    table: &Arc<PluginTable>,
) -> Result<ChildSpec, String> {
    tree::child_spec(child, &factories(table)).map_err(|error| error.to_string())
}

/// A supervisor's spec ([`super::super::tree`]), its workers started from the table.
pub(super) fn supervisor_spec(
    manifest: &SupervisorManifest,
    id: &str,
    table: &Arc<PluginTable>,
) -> Result<SupervisorSpec, String> {
    tree::supervisor_spec(manifest, id, &factories(table)).map_err(|error| error.to_string())
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

impl ReleaseHandler {
    /// Loads every plugin of a release, reusing versions already loaded (the same library
    /// in the same place): in-process ones in the host, `isolation = "process"` ones in
    /// their plugin's worker process (started if need be).
    pub(super) fn load_plugins(
        loader: &Loader,
        workers: &Workers,
        release: &AssembledRelease,
        already: &HashMap<String, PluginVersion>,
    ) -> Result<HashMap<String, PluginVersion>, ReleaseError> {
        let manifest = release.directory.join("release.toml");
        let mut plugins = HashMap::new();
        for (name, entry) in &release.manifest.plugins {
            let same_library = |loaded: &&PluginVersion| {
                *loaded.version() == entry.version
                    && loaded.isolation() == entry.isolation()
                    && entry.sha256.as_deref() == Some(loaded.sha256().to_string().as_str())
            };
            if let Some(loaded) = already.get(name).filter(same_library) {
                plugins.insert(name.clone(), loaded.clone());
                continue;
            }
            let plan_error = |message: String| {
                ReleaseError::Plan(PlanError::Invalid {
                    manifest: manifest.clone(),
                    field: format!("plugins.{name}.library"),
                    message,
                })
            };
            let library = resolve_inside(
                &release.directory,
                entry.library.as_deref().unwrap_or(Path::new("")),
            )
            .map_err(plan_error)?;
            let sha256 = entry
                .sha256
                .as_deref()
                .unwrap_or_default()
                .parse::<Sha256Digest>()
                .map_err(|error| plan_error(error.to_string()))?;
            let expect = Expectations {
                sha256: Some(sha256),
                name: Some(name.clone()),
                version: Some(entry.version.clone()),
            };
            let plugin = match entry.isolation() {
                Isolation::InProcess => {
                    PluginVersion::InProcess(loader.load(&library, &expect).map_err(|source| {
                        ReleaseError::Load {
                            manifest: manifest.clone(),
                            plugin: name.clone(),
                            source: Box::new(source),
                        }
                    })?)
                }
                Isolation::Process => {
                    // A new worker takes this release's memory limit; a running one takes
                    // it at the commit.
                    let worker = lock(workers)
                        .entry(name.clone())
                        .or_insert_with(|| {
                            crate::isolation::Worker::with_libraries(
                                name.clone(),
                                WorkerOptions {
                                    program: WorkerProgram::Search,
                                    memory_limit_mb: entry.memory_limit_mb,
                                },
                                loader.process_directories().map(Path::to_owned),
                            )
                        })
                        .clone();
                    PluginVersion::Isolated(
                        IsolatedPlugin::load(&worker, &library, &expect).map_err(|source| {
                            ReleaseError::Isolation {
                                manifest: manifest.clone(),
                                plugin: name.clone(),
                                source: Box::new(source),
                            }
                        })?,
                    )
                }
            };
            plugins.insert(name.clone(), plugin);
        }
        Ok(plugins)
    }
}
