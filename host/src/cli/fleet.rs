//! `graft fleet …` and the fleet side of `graft start --fleet`: their clap arguments and
//! their output.
//!
//! Responsibility: turning the connection flags (server, fleet name, token, credentials
//! file; each also from the environment) into [`graft::fleet::FleetOptions`], running
//! the fleet subcommands, and starting a host's membership task.
//!
//! Invariants: the library (`graft::fleet`) does the work and returns typed errors; this
//! file only prints. `--json` prints one document, as every other command does.

use super::Failure;
use super::output;
use super::output::say;
use clap::{Args, Subcommand};
use graft::fleet::converge::{ConvergeReport, Converger, target_of};
use graft::fleet::membership::{HostStatus, Membership, default_host_name, list_hosts};
use graft::fleet::releases::{Fetched, fetch, publish};
use graft::fleet::rollout::{RolloutOptions, rollback, rollout};
use graft::fleet::state::{FleetState, Phase, StateStore, WaveSize};
use graft::fleet::{DEFAULT_FLEET, Fleet, FleetOptions};
use graft::release::handler::ReleaseHandler;
use semver::Version;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// How to reach a fleet (shared by `graft fleet …`).
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The fleet's NATS server (`nats://HOST:4222`).
    #[arg(long, env = "GRAFT_FLEET_SERVER", value_name = "URL", global = true)]
    pub server: Option<String>,
    /// The fleet's name: the namespace of its buckets on the server.
    #[arg(long, env = "GRAFT_FLEET_NAME", value_name = "NAME", default_value = DEFAULT_FLEET, global = true)]
    pub fleet_name: String,
    /// A token for a NATS server that requires one.
    #[arg(long, env = "GRAFT_FLEET_TOKEN", value_name = "TOKEN", global = true)]
    pub token: Option<String>,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(
        long,
        env = "GRAFT_FLEET_CREDENTIALS",
        value_name = "FILE",
        global = true
    )]
    pub credentials: Option<PathBuf>,
}

impl Connection {
    /// The options, or a usage failure if no server is given.
    fn options(&self) -> Result<FleetOptions, Failure> {
        let url = self.server.clone().ok_or_else(|| Failure {
            code: 2,
            kind: "usage",
            error: anyhow::anyhow!(
                "no fleet server: pass --server nats://HOST:4222 or set GRAFT_FLEET_SERVER"
            ),
        })?;
        Ok(FleetOptions {
            url,
            fleet: self.fleet_name.clone(),
            token: self.token.clone(),
            credentials: self.credentials.clone(),
        })
    }
}

/// `graft fleet` subcommands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Every live host of the fleet: its group, release, permanent release and health.
    Status,
    /// Upload the release VERSION assembled under the root (its manifest and libraries,
    /// each checked against the manifest's SHA-256 first) to the fleet's object store.
    Publish {
        /// The release.
        version: Version,
    },
    /// Download a published release into the root: every library is verified against
    /// the manifest's SHA-256 before anything is written; a mismatch refuses the release.
    Fetch {
        /// The release.
        version: Version,
    },
    /// Roll a group onto a published release: canaries first, then wave by wave, each
    /// wave gated on its hosts' health and made permanent once it passes; a failed gate
    /// rolls every upgraded host back and exits 1 naming the host and why.
    Rollout {
        /// The release (not with --resume).
        #[arg(required_unless_present = "resume")]
        version: Option<Version>,
        /// The group.
        #[arg(long, default_value = "default")]
        group: String,
        /// Hosts of the first wave (alone).
        #[arg(long, value_name = "N", default_value_t = 1)]
        canary: usize,
        /// Hosts per following wave: a number or a percentage of the group.
        #[arg(long, value_name = "N|P%", default_value = "1")]
        wave: WaveSize,
        /// At most N hosts upgrade at once: caps --canary and --wave.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_unavailable: Option<u64>,
        /// Seconds a wave must stay healthy before it passes.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        health_window: u64,
        /// Seconds a wave's hosts may take to install (and a vanished host to return).
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        install_timeout: u64,
        /// Continue the rollout in progress (whose controller died).
        #[arg(long, conflicts_with = "version")]
        resume: bool,
    },
    /// Roll every host of the last rollout back to its previous release.
    Rollback {
        /// Seconds to wait for the live hosts to report their previous release.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        timeout: u64,
    },
}

/// `graft start`'s fleet flags.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// Join the fleet on this NATS server (`nats://HOST:4222`): register, heartbeat and
    /// publish this host's status.
    #[arg(long = "fleet", env = "GRAFT_FLEET_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// The host's group in the fleet (rollouts target a group).
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub group: String,
    /// The fleet's name: the namespace of its buckets on the server.
    #[arg(long, env = "GRAFT_FLEET_NAME", value_name = "NAME", default_value = DEFAULT_FLEET)]
    pub fleet_name: String,
    /// This host's name in the fleet [default: the hostname and a digest of the root].
    #[arg(long, value_name = "NAME")]
    pub host_name: Option<String>,
    /// A token for a NATS server that requires one.
    #[arg(long = "fleet-token", env = "GRAFT_FLEET_TOKEN", value_name = "TOKEN")]
    pub token: Option<String>,
    /// A NATS credentials file (JWT and NKey seed).
    #[arg(
        long = "fleet-credentials",
        env = "GRAFT_FLEET_CREDENTIALS",
        value_name = "FILE"
    )]
    pub credentials: Option<PathBuf>,
}

/// A host's connection to its fleet and membership of its group's cluster, made before
/// the release boots (global and singleton children register while it boots).
pub struct Joined {
    fleet: Fleet,
    host: String,
    /// The cluster, attached to the runtime.
    pub cluster: Arc<graft::cluster::Cluster>,
}

/// `graft start --fleet`, before the boot: connects (a failure stops the start) and joins
/// the group's cluster on `runtime`; `None` without `--fleet`.
pub async fn connect(
    root: &Path,
    join: &JoinArgs,
    runtime: &graft::runtime::Runtime,
) -> Result<Option<Joined>, Failure> {
    let Some(url) = &join.server else {
        return Ok(None);
    };
    let options = FleetOptions {
        url: url.clone(),
        fleet: join.fleet_name.clone(),
        token: join.token.clone(),
        credentials: join.credentials.clone(),
    };
    let fleet = Fleet::connect(&options, false).await?;
    let host = join
        .host_name
        .clone()
        .unwrap_or_else(|| default_host_name(root));
    let cluster =
        graft::cluster::Cluster::connect(fleet.clone(), &join.group, &host, runtime.clone())
            .await?;
    Ok(Some(Joined {
        fleet,
        host,
        cluster,
    }))
}

/// `graft start --fleet`, after the boot: registers (a failure stops the start) and
/// returns the task that heartbeats and converges to the fleet's desired release.
pub async fn join(
    joined: &Joined,
    join: &JoinArgs,
    handler: &Arc<ReleaseHandler>,
) -> Result<tokio::task::JoinHandle<()>, Failure> {
    let report = ConvergeReport::default();
    let membership = Membership::join(
        joined.fleet.clone(),
        Arc::clone(handler),
        joined.host.clone(),
        join.group.clone(),
        report.clone(),
    )
    .await?
    .with_cluster(Arc::clone(&joined.cluster));
    let converger = Converger::new(
        joined.fleet.clone(),
        Arc::clone(handler),
        joined.host.clone(),
        join.group.clone(),
        report,
    );
    tracing::info!(
        host = membership.host(),
        group = %join.group,
        fleet = %join.fleet_name,
        server = join.server.as_deref().unwrap_or_default(),
        "joined the fleet"
    );
    Ok(tokio::spawn(async move {
        tokio::join!(membership.run(), converger.run());
    }))
}

/// Runs a `graft fleet` subcommand.
pub async fn run(
    root: &Path,
    connection: &Connection,
    command: &FleetCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    let options = connection.options()?;
    let fleet = Fleet::connect(&options, false).await?;
    match command {
        FleetCommand::Status => {
            let hosts = list_hosts(&fleet).await?;
            let (state, _) = StateStore::open(&fleet).await?.read().await?;
            print_status(&options.fleet, &hosts, &state, json)?;
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Publish { version } => {
            let bytes = publish(&fleet, root, version).await?;
            if json {
                output::json(&json!({ "published": version.to_string(), "bytes": bytes }))?;
            } else {
                say!(
                    "published {version} to fleet {} ({bytes} bytes)",
                    options.fleet
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Rollout {
            version,
            group,
            canary,
            wave,
            max_unavailable,
            health_window,
            install_timeout,
            resume,
        } => {
            let options = RolloutOptions {
                group: group.clone(),
                to: version.clone().unwrap_or_else(|| Version::new(0, 0, 0)),
                canary: *canary,
                wave: *wave,
                max_unavailable: max_unavailable
                    .map(|most| usize::try_from(most).unwrap_or(usize::MAX)),
                health_window: Duration::from_secs(*health_window),
                install_deadline: Duration::from_secs(*install_timeout),
                resume: *resume,
            };
            let report = |line: String| {
                if !json {
                    tracing::info!("{line}");
                    eprintln!("{line}");
                }
            };
            let rollout = rollout(&fleet, &options, &report).await?;
            if json {
                output::json(&json!({ "rollout": rollout }))?;
            } else {
                say!("rolled group {} onto {}", rollout.group, rollout.to);
            }
            Ok(ExitCode::SUCCESS)
        }
        FleetCommand::Rollback { timeout } => {
            let (rollout, settled) = rollback(&fleet, Duration::from_secs(*timeout)).await?;
            if json {
                output::json(&json!({ "rolled_back": rollout, "settled": settled }))?;
            } else if settled {
                say!("rolled group {} back from {}", rollout.group, rollout.to);
            } else {
                say!(
                    "rolled group {} back from {} in the desired state; not every host reports it yet",
                    rollout.group,
                    rollout.to
                );
            }
            Ok(if settled {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        FleetCommand::Fetch { version } => {
            let fetched = fetch(&fleet, root, version).await?;
            let unpacked = fetched == Fetched::Unpacked;
            if json {
                output::json(&json!({ "fetched": version.to_string(), "unpacked": unpacked }))?;
            } else if unpacked {
                say!(
                    "fetched {version}: verified and unpacked into {}",
                    root.display()
                );
            } else {
                say!("{version} is already assembled in {}", root.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `graft fleet status`'s output: the hosts, and for each that does not run what the
/// fleet wants of it, the release it is converging to (and why it could not), so a mixed
/// fleet is always visible; and the global names and singletons each holds in its group's
/// cluster.
fn print_status(
    fleet: &str,
    hosts: &[HostStatus],
    state: &FleetState,
    json: bool,
) -> Result<(), Failure> {
    let rollout = state.rollout.as_ref();
    if json {
        output::json(&json!({
            "fleet": fleet,
            "hosts": hosts,
            "rollout": rollout,
            "desired": state.desired,
            "group_release": state.group_release,
        }))?;
        return Ok(());
    }
    say!("fleet {fleet}: {} host(s)", hosts.len());
    if let Some(rollout) = rollout {
        let phase = match &rollout.phase {
            Phase::Running => "running".to_owned(),
            Phase::Succeeded => "succeeded".to_owned(),
            Phase::RolledBack { host, reason } => format!("rolled back ({host}: {reason})"),
        };
        say!(
            "  rollout of group {} to {}: {phase}, {}/{} wave(s) passed",
            rollout.group,
            rollout.to,
            rollout.waves_done,
            rollout.waves.len()
        );
    }
    for host in hosts {
        let permanent = host
            .permanent
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        say!(
            "  {:<24} group {:<12} release {:<10} permanent {:<10} {}{}",
            host.host,
            host.group,
            host.current,
            permanent,
            host.health,
            if host.installing { " (installing)" } else { "" }
        );
        if let Some(target) = target_of(state, &host.host, &host.group)
            && *target != host.current
        {
            say!("    converging to {target}");
        }
        if let Some(error) = &host.converge_error {
            say!("    could not converge: {error}");
        }
        for actor in &host.unhealthy {
            say!("    unhealthy: {actor}");
        }
        if !host.globals.is_empty() {
            say!("    global names: {}", host.globals.join(", "));
        }
        if !host.singletons.is_empty() {
            say!("    singletons: {}", host.singletons.join(", "));
        }
    }
    Ok(())
}
