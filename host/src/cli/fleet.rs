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
use graft::fleet::converge::{ConvergeReport, Converger};
use graft::fleet::membership::{HostStatus, Membership, default_host_name, list_hosts};
use graft::fleet::releases::{Fetched, fetch, publish};
use graft::fleet::{DEFAULT_FLEET, Fleet, FleetOptions};
use graft::release::handler::ReleaseHandler;
use semver::Version;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

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

/// `graft start --fleet`: connects, registers (a failure stops the start) and returns the
/// task that heartbeats and converges to the fleet's desired release; `None` without
/// `--fleet`.
pub async fn join(
    root: &Path,
    join: &JoinArgs,
    handler: &Arc<ReleaseHandler>,
) -> Result<Option<tokio::task::JoinHandle<()>>, Failure> {
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
    let report = ConvergeReport::default();
    let membership = Membership::join(
        fleet.clone(),
        Arc::clone(handler),
        host.clone(),
        join.group.clone(),
        report.clone(),
    )
    .await?;
    let converger = Converger::new(fleet, Arc::clone(handler), host, join.group.clone(), report);
    tracing::info!(
        host = membership.host(),
        group = %join.group,
        fleet = %join.fleet_name,
        server = %url,
        "joined the fleet"
    );
    Ok(Some(tokio::spawn(async move {
        tokio::join!(membership.run(), converger.run());
    })))
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
            print_status(&options.fleet, &hosts, json)?;
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

/// `graft fleet status`'s output.
fn print_status(fleet: &str, hosts: &[HostStatus], json: bool) -> Result<(), Failure> {
    if json {
        output::json(&json!({ "fleet": fleet, "hosts": hosts }))?;
        return Ok(());
    }
    say!("fleet {fleet}: {} host(s)", hosts.len());
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
        for actor in &host.unhealthy {
            say!("    unhealthy: {actor}");
        }
    }
    Ok(())
}
