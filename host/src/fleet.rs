//! Fleets: many hosts on one NATS server (JetStream), rolled onto a release together.
//!
//! Responsibility: connecting to NATS (with a token or a credentials file), the names of
//! a fleet's buckets (every bucket is namespaced by the fleet's name, so fleets share a
//! server without seeing each other), and the typed [`FleetError`]. The pieces:
//! - [`membership`]: a host's registration and heartbeat (`graft start --fleet`), and the
//!   listing of the fleet's live hosts (`graft fleet status`).
//! - [`releases`]: assembled releases in the object store (`graft fleet publish`), and
//!   their download, verification against the manifest's SHA-256s, and unpacking.
//! - [`state`]: the desired state and rollout record, changed only by compare-and-swap.
//! - [`converge`]: a host installing (and making permanent) what the record wants of it.
//! - [`rollout`]: the controller: canaries, waves, health gates, fleet rollback.
//!
//! Invariants:
//! - All transport and consensus is NATS JetStream's (key-value buckets, compare-and-swap
//!   by revision); nothing here invents its own.
//! - Only the stream features Debian's nats-server 2.9.10 understands are used: async-nats
//!   is built without its `server_2_10`+ features (see host/Cargo.toml), and per-key TTLs
//!   (2.11) are not used — a host's entry expires through the bucket's `max_age`.
//!
//! Tricky: hosts and `graft fleet` commands race to create a bucket; creation is
//! "get, else create, else get again" so the loser of the race uses the winner's bucket.

pub mod converge;
pub mod membership;
pub mod releases;
pub mod rollout;
pub mod state;

use semver::Version;
use std::path::PathBuf;
use std::time::Duration;

/// The fleet name used when none is given.
pub const DEFAULT_FLEET: &str = "default";

/// How long a connection attempt waits for the server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach a fleet: the NATS server, the fleet's name (its namespace) and the
/// credentials, if the server wants them.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The server's URL (`nats://HOST:4222`).
    pub url: String,
    /// The fleet's name: the namespace of its buckets (`[A-Za-z0-9_-]`, at most 64).
    pub fleet: String,
    /// A token for a server started with `--auth`.
    pub token: Option<String>,
    /// A credentials file (`.creds`: JWT and NKey seed) for a server with accounts.
    pub credentials: Option<PathBuf>,
}

/// Failures of fleet operations.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The fleet's name cannot be used in bucket names.
    #[error("invalid fleet name {0:?}: use 1 to 64 of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidFleetName(String),
    /// A host or group name cannot be used as a key.
    #[error("invalid {what} {name:?}: use 1 to 64 of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidName {
        /// What the name names (`host name`, `group`).
        what: &'static str,
        /// The name.
        name: String,
    },
    /// The credentials file could not be read.
    #[error("cannot read the credentials file {path}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to the server failed.
    #[error("cannot connect to the fleet's NATS server {url}")]
    Connect {
        /// The server.
        url: String,
        /// Why.
        #[source]
        source: async_nats::ConnectError,
    },
    /// A JetStream request failed.
    #[error("{action} failed")]
    JetStream {
        /// What was being done (`creating bucket graft_x_hosts`, …).
        action: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The release is not in the fleet's object store.
    #[error("release {0} is not published in the fleet (graft fleet publish {0})")]
    NotPublished(Version),
    /// A release (local or downloaded) is not a valid assembled release.
    #[error("release {version} is not a valid assembled release: {message}")]
    InvalidRelease {
        /// The release.
        version: Version,
        /// What is wrong.
        message: String,
    },
    /// A library's bytes are not the ones its manifest names.
    #[error("{0}")]
    DigestMismatch(Box<DigestMismatch>),
    /// Another writer changed the state record since it was read.
    #[error("the fleet's state changed concurrently (another controller?); read it again")]
    Conflict,
    /// A rollout is already running.
    #[error("a rollout of group {group} to {to} is in progress; resume it (--resume) or wait")]
    RolloutInProgress {
        /// Its group.
        group: String,
        /// Its release.
        to: Version,
    },
    /// `--resume` with no rollout running.
    #[error("no rollout is in progress to resume")]
    NothingToResume,
    /// `graft fleet rollback` with no rollout recorded.
    #[error("no rollout is recorded to roll back")]
    NothingToRollBack,
    /// A rollout's group has no live host.
    #[error("group {0} has no live host in the fleet")]
    NoHosts(String),
    /// The controller could not read the fleet for longer than its patience (the server
    /// went away); nothing was decided or rolled back, the rollout is left running.
    #[error(
        "lost the fleet's NATS server for more than {patience_seconds} s during the rollout of group {group} to {to}; nothing was rolled back and the rollout is left running: resume it with `graft fleet rollout --resume` once the server is back"
    )]
    RolloutInterrupted {
        /// The group.
        group: String,
        /// The release.
        to: Version,
        /// How long the controller kept retrying.
        patience_seconds: u64,
        /// The last failure.
        #[source]
        source: Box<FleetError>,
    },
    /// A gate failed; the fleet was rolled back.
    #[error(
        "rollout of group {group} to {to} failed: host {host}: {reason}; every upgraded host was rolled back to its previous release"
    )]
    RolloutFailed {
        /// The group.
        group: String,
        /// The release.
        to: Version,
        /// The host whose gate failed.
        host: String,
        /// Why.
        reason: String,
    },
    /// The rollout this controller drove was rolled back by the operator or taken over by
    /// another controller (`--resume`); this one stopped without writing anything more.
    #[error("rollout of group {group} to {to} is no longer driven by this controller: {why}")]
    RolloutStopped {
        /// The group.
        group: String,
        /// The release.
        to: Version,
        /// What happened to it.
        why: String,
    },
    /// A file could not be read or written.
    #[error("{action} {path} failed")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An entry in a bucket is not what graft writes there.
    #[error("entry {key} of bucket {bucket} is not valid")]
    Decode {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// A library whose SHA-256 is not its manifest's (boxed in [`FleetError`]: it is large).
#[derive(Debug, thiserror::Error)]
#[error(
    "refused release {version}: library {library} of plugin {plugin} has SHA-256 {found}, the manifest says {expected}",
    library = library.display()
)]
pub struct DigestMismatch {
    /// The release.
    pub version: Version,
    /// The plugin.
    pub plugin: String,
    /// The library's path in the release.
    pub library: PathBuf,
    /// The manifest's digest.
    pub expected: String,
    /// The digest of the bytes found.
    pub found: String,
}

impl FleetError {
    /// A JetStream failure while doing `action`.
    pub(crate) fn jetstream(
        action: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> FleetError {
        FleetError::JetStream {
            action: action.into(),
            source: Box::new(source),
        }
    }
}

/// Whether `name` is usable in bucket names and keys: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// A fleet's bucket names: each prefixed with `graft_<fleet>_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    fleet: String,
}

impl Namespace {
    /// The namespace of fleet `fleet`.
    pub fn new(fleet: &str) -> Result<Namespace, FleetError> {
        if !valid_name(fleet) {
            return Err(FleetError::InvalidFleetName(fleet.to_owned()));
        }
        Ok(Namespace {
            fleet: fleet.to_owned(),
        })
    }

    /// The fleet's name.
    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    /// The bucket of live hosts (entries expire: the heartbeat).
    pub fn hosts_bucket(&self) -> String {
        format!("graft_{}_hosts", self.fleet)
    }

    /// The bucket of the desired state and rollout record (no expiry, CAS writes).
    pub fn state_bucket(&self) -> String {
        format!("graft_{}_state", self.fleet)
    }

    /// The object store of published releases.
    pub fn releases_bucket(&self) -> String {
        format!("graft_{}_releases", self.fleet)
    }
}

/// How many messages one subscription may hold before the client drops (async-nats's
/// default is 65,536).
pub const SUBSCRIPTION_CAPACITY: usize = 1 << 18;

static DROPPED_BY_CLIENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Messages the NATS client of this process dropped because a subscription was full (each
/// is also logged, and counted as lost in the metrics when they are on).
pub fn dropped_by_client() -> u64 {
    DROPPED_BY_CLIENT.load(std::sync::atomic::Ordering::Relaxed)
}

/// A connection to a fleet: the client, its JetStream context and the namespace.
#[derive(Clone)]
pub struct Fleet {
    /// The NATS client.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub jetstream: async_nats::jetstream::Context,
    /// The fleet's bucket names.
    pub namespace: Namespace,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Fleet")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// Connects to the fleet's server with its credentials. `retry` keeps trying (and
    /// reconnecting) for a host that must outlive server restarts; without it one failed
    /// attempt is an error (for commands).
    pub async fn connect(options: &FleetOptions, retry: bool) -> Result<Fleet, FleetError> {
        let namespace = Namespace::new(&options.fleet)?;
        let mut connect = match &options.credentials {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|source| FleetError::Credentials {
                    path: path.clone(),
                    source,
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(token) = &options.token {
            connect = connect.token(token.clone());
        }
        connect = connect
            .connection_timeout(CONNECT_TIMEOUT)
            .name(format!("graft-{}", namespace.fleet()))
            // A cluster host's inbox may take bursts of casts: room for them before the
            // client must drop (and the drop below is reported, never silent).
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .event_callback(|event| async move {
                if let async_nats::Event::SlowConsumer(subscription) = event {
                    let dropped = DROPPED_BY_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if crate::metrics::is_enabled() {
                        crate::metrics::history::count_lost(1);
                    }
                    tracing::error!(
                        subscription,
                        dropped,
                        "a message was dropped: this host reads its cluster inbox slower than others send (NATS core is at most once)"
                    );
                }
            });
        if retry {
            connect = connect.retry_on_initial_connect();
        }
        let client = connect
            .connect(options.url.as_str())
            .await
            .map_err(|source| FleetError::Connect {
                url: options.url.clone(),
                source,
            })?;
        let jetstream = async_nats::jetstream::new(client.clone());
        Ok(Fleet {
            client,
            jetstream,
            namespace,
        })
    }

    /// The key-value bucket `bucket`, created as described if it does not exist (a
    /// racing creator's bucket is used as is).
    ///
    /// The bucket's stream is created here, as async-nats's `create_key_value` would
    /// make it (`KV_<bucket>`, subjects `$KV.<bucket>.>`, discard new, rollups, direct
    /// get, deletes denied): `create_key_value` first asks for the account's info, and
    /// async-nats 0.50 cannot decode nats-server 2.9's answer (it lacks
    /// `reserved_memory`). `get_key_value` only reads the stream's info, which decodes.
    pub(crate) async fn bucket(
        &self,
        bucket: &str,
        description: &str,
        history: i64,
        max_age: Duration,
    ) -> Result<async_nats::jetstream::kv::Store, FleetError> {
        use async_nats::jetstream::stream;
        if let Ok(store) = self.jetstream.get_key_value(bucket).await {
            return Ok(store);
        }
        let created = self
            .jetstream
            .get_or_create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                description: Some(description.to_owned()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: history,
                max_age,
                allow_rollup: true,
                deny_delete: true,
                deny_purge: false,
                allow_direct: true,
                num_replicas: 1,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await;
        match self.jetstream.get_key_value(bucket).await {
            Ok(store) => Ok(store),
            Err(error) => Err(match created {
                Err(create) => FleetError::jetstream(format!("creating bucket {bucket}"), create),
                Ok(_) => FleetError::jetstream(format!("opening bucket {bucket}"), error),
            }),
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_rollout_says_nothing_was_rolled_back_and_how_to_resume() {
        let error = FleetError::RolloutInterrupted {
            group: "web".into(),
            to: Version::new(1, 1, 0),
            patience_seconds: 30,
            source: Box::new(FleetError::NoHosts("web".into())),
        };
        let message = error.to_string();
        assert!(
            message.contains("group web to 1.1.0")
                && message.contains("more than 30 s")
                && message.contains("nothing was rolled back")
                && message.contains("graft fleet rollout --resume"),
            "{message}"
        );
        assert!(std::error::Error::source(&error).is_some());
    }

    #[test]
    fn names_are_checked_and_namespaced() {
        assert!(valid_name("web-1_a"));
        assert!(!valid_name(""));
        assert!(!valid_name("a.b"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(matches!(
            Namespace::new("bad.name"),
            Err(FleetError::InvalidFleetName(_))
        ));
        let namespace = Namespace::new("prod").unwrap();
        assert_eq!(namespace.hosts_bucket(), "graft_prod_hosts");
        assert_ne!(
            Namespace::new("staging").unwrap().hosts_bucket(),
            namespace.hosts_bucket()
        );
    }
}
