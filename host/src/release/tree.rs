//! The supervision-tree translation: a manifest's tree (`[supervisor]` and its
//! `children`, nested supervisors included) as the [`SupervisorSpec`]s and [`ChildSpec`]s
//! the supervisors run. What starts each worker's actor is the caller's: it hands in a
//! factory per worker (the release handler's reads its plugin table when the actor
//! starts, so a restart after an install's commit starts on the new code), which keeps
//! this a pure translation, tested on manifest text alone.
//!
//! The defaults are the manifest's: restart `permanent`; shutdown 5000 ms for a worker,
//! `infinity` for a supervisor; a worker registers under its `name`, else its id. A field
//! added to a manifest's child or supervisor maps to its spec here, in one place each
//! ([`child_spec`], [`supervisor_spec`]).

use super::{ChildManifest, MaxMailbox, SupervisorManifest, encode_value};
use crate::runtime::BehaviourFactory;
use crate::supervisor::{
    ChildSpec, ChildStart, Restart, Shutdown, SupervisorSpec, SupervisorUpdate, WorkerSpec,
};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The worker's shutdown when the manifest gives none.
pub const DEFAULT_WORKER_SHUTDOWN: Duration = Duration::from_secs(5);

/// Makes the factory of one worker, from its plugin and registered name.
pub type FactoryFor<'a> = &'a dyn Fn(&str, &str) -> Arc<dyn BehaviourFactory>;

/// A child that cannot become a spec, naming it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TreeError {
    /// A worker's `args` do not encode to the plugin wire format.
    #[error("child {child}: args: {message}")]
    Args {
        /// The child's id.
        child: String,
        /// Why.
        message: String,
    },
}

/// The spec of one child (a worker, or a supervisor with its whole subtree).
pub fn child_spec(child: &ChildManifest, factory: FactoryFor<'_>) -> Result<ChildSpec, TreeError> {
    let restart = child
        .restart
        .map(Restart::from)
        .unwrap_or(Restart::Permanent);
    if let Some(nested) = child.as_supervisor() {
        return Ok(ChildSpec {
            id: child.id.clone(),
            start: ChildStart::Supervisor(supervisor_spec(&nested, &child.id, factory)?),
            restart,
            shutdown: child
                .shutdown
                .map(Shutdown::from)
                .unwrap_or(Shutdown::Infinity),
            significant: child.significant.unwrap_or(false),
        });
    }
    let plugin = child.plugin.as_deref().unwrap_or_default();
    let name = child.registered_name();
    let args = encode_value(child.args.as_ref()).map_err(|message| TreeError::Args {
        child: child.id.clone(),
        message,
    })?;
    Ok(ChildSpec {
        id: child.id.clone(),
        start: ChildStart::Worker(WorkerSpec {
            factory: factory(plugin, name),
            args,
            name: Some(name.to_owned()),
            trap_exit: child.trap_exit.unwrap_or(false),
            max_mailbox: child.max_mailbox.and_then(MaxMailbox::limit),
            global: child.global.unwrap_or(false),
            placement: child.placement.unwrap_or_default(),
        }),
        restart,
        shutdown: child
            .shutdown
            .map(Shutdown::from)
            .unwrap_or(Shutdown::Timeout(DEFAULT_WORKER_SHUTDOWN)),
        significant: child.significant.unwrap_or(false),
    })
}

/// The spec of the supervisor `id` (registered under it) and its subtree.
pub fn supervisor_spec(
    manifest: &SupervisorManifest,
    id: &str,
    factory: FactoryFor<'_>,
) -> Result<SupervisorSpec, TreeError> {
    let children = manifest
        .children
        .iter()
        .map(|child| child_spec(child, factory))
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

/// What `update_supervisor` hands a running supervisor: the spec's flags and children.
pub fn supervisor_update(spec: SupervisorSpec) -> SupervisorUpdate {
    SupervisorUpdate::from(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{CallbackError, HostServices, PluginIdentity};
    use crate::release::{Manifest, ROOT_SUPERVISOR};
    use crate::runtime::Started;
    use crate::supervisor::Strategy;
    use std::path::Path;
    use std::sync::Mutex;

    /// A factory that only remembers what it was made for.
    struct Named(String);

    impl BehaviourFactory for Named {
        fn start(&self, _: &[u8], _: &dyn HostServices) -> Result<Started, CallbackError> {
            unreachable!("the translation never starts an actor")
        }

        fn identity(&self) -> Option<PluginIdentity> {
            None
        }

        fn plugin_name(&self) -> Option<String> {
            Some(self.0.clone())
        }
    }

    const TREE: &str = r#"
[release]
name = "tree"
version = "1.0.0"

[plugins.counter]
version = "1.0.0"
crate = "plugins/counter"

[supervisor]
strategy = "one_for_all"
max_restarts = 7
max_seconds = 9

[[supervisor.children]]
id = "counter"
plugin = "counter"
name = "the_counter"
args = { start = 3 }
max_mailbox = 10
trap_exit = true
restart = "transient"
shutdown = "brutal_kill"

[[supervisor.children]]
id = "pool"
strategy = "dynamic"

[[supervisor.children.children]]
id = "member"
plugin = "counter"
"#;

    fn specs() -> (SupervisorSpec, Vec<(String, String)>) {
        let manifest = Manifest::parse(Path::new("release.toml"), TREE).unwrap();
        manifest.validate(Path::new("release.toml"), false).unwrap();
        let made = Mutex::new(Vec::new());
        let factory = |plugin: &str, name: &str| -> Arc<dyn BehaviourFactory> {
            made.lock()
                .unwrap()
                .push((plugin.to_owned(), name.to_owned()));
            Arc::new(Named(plugin.to_owned()))
        };
        let spec = supervisor_spec(&manifest.supervisor, ROOT_SUPERVISOR, &factory).unwrap();
        (spec, made.into_inner().unwrap())
    }

    #[test]
    fn a_tree_becomes_specs_with_every_field_and_default() {
        let (root, made) = specs();
        assert_eq!(root.name.as_deref(), Some("root"));
        assert_eq!(root.strategy, Strategy::OneForAll);
        assert_eq!((root.max_restarts, root.max_seconds), (7, 9));
        assert_eq!(
            made,
            [
                ("counter".to_owned(), "the_counter".to_owned()),
                ("counter".to_owned(), "member".to_owned())
            ]
        );
        let counter = &root.children[0];
        assert_eq!(counter.id, "counter");
        assert_eq!(counter.restart, Restart::Transient);
        assert_eq!(counter.shutdown, Shutdown::BrutalKill);
        let ChildStart::Worker(worker) = &counter.start else {
            panic!("counter is a worker");
        };
        assert_eq!(worker.name.as_deref(), Some("the_counter"));
        assert!(worker.trap_exit);
        assert_eq!(worker.max_mailbox, Some(10));
        assert_eq!(worker.factory.plugin_name().as_deref(), Some("counter"));
        let args: serde_json::Value = graft_plugin::codec::decode(&worker.args).unwrap();
        assert_eq!(args, serde_json::json!({"start": 3}));

        let pool = &root.children[1];
        assert_eq!(pool.restart, Restart::Permanent);
        assert_eq!(pool.shutdown, Shutdown::Infinity, "a supervisor's default");
        let ChildStart::Supervisor(nested) = &pool.start else {
            panic!("pool is a supervisor");
        };
        assert_eq!(nested.name.as_deref(), Some("pool"));
        assert_eq!(nested.strategy, Strategy::Dynamic);
        assert_eq!((nested.max_restarts, nested.max_seconds), (3, 5));
        let member = &nested.children[0];
        assert_eq!(member.shutdown, Shutdown::Timeout(DEFAULT_WORKER_SHUTDOWN));
        let ChildStart::Worker(worker) = &member.start else {
            panic!("member is a worker");
        };
        assert_eq!(worker.name.as_deref(), Some("member"), "the id by default");
        assert!(!worker.trap_exit);
        assert_eq!(worker.max_mailbox, None);
    }

    #[test]
    fn an_update_carries_the_flags_and_children() {
        let (root, _) = specs();
        let update = supervisor_update(root);
        assert_eq!(update.strategy, Strategy::OneForAll);
        assert_eq!((update.max_restarts, update.max_seconds), (7, 9));
        let ids: Vec<&str> = update
            .children
            .iter()
            .map(|child| child.id.as_str())
            .collect();
        assert_eq!(ids, ["counter", "pool"]);
    }
}
