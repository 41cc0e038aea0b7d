//! The `graft` subcommands (clap), their output for people (`--json` for scripts), and the
//! mapping of failures to exit codes.
//!
//! Client commands talk to a running host over its control socket (see `graft::control`);
//! `build`, `start`, `demo` and `new` do their work here; `graft fleet …` talks to the
//! fleet's NATS server (see [`fleet`] and `graft::fleet`).
//!
//! `--json` (global) makes every command print one JSON document on stdout, a failure
//! included: `{"error": {"kind", "message"}}`, with the same exit code as in text mode
//! (0 done, 1 failed, 2 usage / no host, 3 refused for safety). Results go through
//! [`output`], which never panics on a closed stdout.

mod logging;
mod output;

use output::say;

use anyhow::{Context as _, anyhow};
use clap::{Parser, Subcommand};
use graft::control::protocol::{
    CastResponse, InstallResponse, PermanentResponse, PlanResponse, ReleaseEntry, RemovedResponse,
    ReplacedResponse, ResumedResponse, StatusResponse, SuspendedResponse, TreeNode,
};
use graft::control::{ControlClient, ControlError, ControlServer, Request};
use graft::release::assemble::assemble;
use graft::release::handler::ReleaseHandler;
use graft::runtime::Runtime;
use semver::Version;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

mod dev;
mod fleet;
mod scaffold;

/// Supervise actors from cdylib plugins and upgrade them while they run.
#[derive(Debug, Parser)]
#[command(name = "graft", version, about, long_about = None)]
struct Cli {
    /// The root directory: assembled releases, the release record, the control socket
    /// [default: target/graft; for `graft dev`: <WORKSPACE>/target/graft-dev].
    #[arg(long, env = "GRAFT_ROOT", global = true)]
    root: Option<PathBuf>,
    /// Print the result as JSON on stdout (a failure as `{"error": {"kind", "message"}}`).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Assemble releases from releases/<VERSION>/release.toml into the root, building their
    /// plugins with cargo (all versions when none is given).
    Build {
        /// Versions to assemble.
        versions: Vec<Version>,
        /// The workspace holding releases/ and the plugin crates.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// Build plugins in the dev profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Run the host in the foreground: boot the permanent release and serve the control
    /// socket; SIGINT/SIGTERM stop the tree in order.
    Start {
        /// Install newly assembled releases as they appear under the root.
        #[arg(long)]
        watch: bool,
        /// With --watch: make a new release permanent if no actor crashes within SECONDS,
        /// roll it back if one does.
        #[arg(long, value_name = "SECONDS", requires = "watch")]
        auto_permanent: Option<u64>,
        /// Clients connected to the control socket at once; one more gets an error and is
        /// closed.
        #[arg(long, value_name = "COUNT", default_value_t = graft::control::DEFAULT_MAX_CONNECTIONS as u64, value_parser = parse_at_least_one)]
        max_connections: u64,
        /// Close a control connection that sends no request for SECONDS.
        #[arg(long, value_name = "SECONDS", default_value_t = graft::control::DEFAULT_IDLE_TIMEOUT.as_secs(), value_parser = parse_at_least_one)]
        idle_timeout: u64,
        /// Serve /metrics (Prometheus) and the observer web page on ADDR [default:
        /// 127.0.0.1:9464, loopback only]; prints the page's address and the token its
        /// actions need. Off without the flag.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
        http: Option<std::net::SocketAddr>,
        #[command(flatten)]
        fleet: fleet::JoinArgs,
    },
    /// Fleets of hosts on a NATS server: their status, publishing and fetching releases.
    Fleet {
        #[command(flatten)]
        connection: fleet::Connection,
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// The supervision tree, each actor's plugin and version, resident libraries, workers.
    Status,
    /// Every release and its status.
    Releases,
    /// Install a release into the running host (upgrade or downgrade).
    Install {
        /// The release.
        version: Version,
        /// Make it permanent once installed.
        #[arg(long, conflicts_with = "dry_run")]
        permanent: bool,
        /// Print the plan in the order it would run (before the suspend, the atomic update
        /// batch, after the commit) and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Make the current release permanent (booted on restart).
    MakePermanent {
        /// The release.
        version: Version,
    },
    /// Back to the permanent release (or, if the current one is permanent, the newest old one).
    Rollback,
    /// Remove an assembled release (not the permanent or current one).
    Remove {
        /// The release.
        version: Version,
    },
    /// Call an actor with a JSON message and print the reply.
    Call {
        /// The actor's name; on a host in a cluster also a global name, or `name@host`.
        actor: String,
        /// The message, as JSON (e.g. '"Get"' or '{"Add": 5}').
        #[arg(value_parser = parse_json)]
        message: Value,
        /// Timeout in milliseconds.
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
    },
    /// Cast a JSON message to an actor.
    Cast {
        /// The actor's name; on a host in a cluster also a global name, or `name@host`.
        actor: String,
        /// The message, as JSON.
        #[arg(value_parser = parse_json)]
        message: Value,
    },
    /// Print what an actor shows of its state as JSON (its `format_status`: secrets
    /// redacted), or replace it (`--replace`, only while suspended).
    State {
        /// The actor's name.
        actor: String,
        /// Print the raw state, unredacted (what `--replace` takes), instead of what the
        /// plugin's `format_status` shows.
        #[arg(long, conflicts_with = "replace")]
        raw: bool,
        /// Replace the state (`sys:replace_state`) with this JSON, or with the JSON in this
        /// file (an existing file wins); refused unless the actor is suspended.
        #[arg(long, value_name = "FILE_OR_JSON")]
        replace: Option<String>,
    },
    /// Suspend an actor (its messages wait).
    Suspend {
        /// The actor's name.
        actor: String,
    },
    /// Resume a suspended actor.
    Resume {
        /// The actor's name.
        actor: String,
    },
    /// For plugin authors: run a release and, each time one of its plugin crates is rebuilt
    /// (`cargo build`), hot-swap its actors to the new build with their state kept; a build
    /// whose migration fails is rejected and the old code keeps running.
    Dev {
        /// The release (default: the newest under releases/).
        version: Option<Version>,
        /// The workspace holding releases/ and the plugin crates.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// Serve /metrics and the observer web page on ADDR [default: 127.0.0.1:9464], as
        /// `graft start --http` does (after the version: `graft dev 1.0.0 --http`).
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
        http: Option<std::net::SocketAddr>,
    },
    /// From a fresh clone: build, start, upgrade under traffic, roll back, report.
    Demo {
        /// Build plugins in the dev profile instead of release.
        #[arg(long)]
        debug: bool,
    },
    /// Internal: a worker process for a plugin with `isolation = "process"` (started by
    /// the host; not for people).
    #[command(hide = true)]
    Worker {
        /// The socket the host connects to (the host passes the listening socket as stdin).
        #[arg(long)]
        socket: PathBuf,
        /// The host's pid: exit at once if the parent is not it.
        #[arg(long)]
        parent: Option<u32>,
        /// The most verbose log level to forward (1 error ... 5 trace).
        #[arg(long, default_value_t = 3)]
        log_level: u32,
        /// A root's `run/libraries`: library copies go in `<libraries>/<pid>/`.
        #[arg(long)]
        libraries: Option<PathBuf>,
    },
    /// Create an application workspace that `graft build` and `graft start` run as is: a
    /// Cargo workspace, a plugin under plugins/NAME/0.1.0/, releases/0.1.0/release.toml and a
    /// README. Without APP, `--plugin NAME` adds a plugin to an existing workspace.
    New {
        /// The application's name (a new workspace in ./APP, or --path).
        app: Option<String>,
        /// The plugin's name (default: APP); without APP, the plugin to add to the
        /// workspace in the current directory (or --path).
        #[arg(long, value_name = "NAME")]
        plugin: Option<String>,
        /// Where to create the workspace (default: ./APP), or the workspace to add the
        /// plugin to (default: .).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Show what a plugin library is and whether this host would load it, without running
    /// any of its code. Exit status 0: loadable; 1: this host would refuse it (the reason
    /// is printed); 2: the file cannot be read.
    Inspect {
        /// The library (`.so`).
        file: PathBuf,
    },
}

/// `graft inspect`: the report on stdout; exit 0 when loadable, 1 when refused, 2 when the
/// file cannot be read.
fn inspect(file: &Path, json: bool) -> Result<ExitCode, Failure> {
    let inspection = graft::plugin::inspect::inspect(file).map_err(|error| Failure {
        code: 2,
        kind: "unreadable",
        error: error.into(),
    })?;
    if json {
        say!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        say!("{inspection}");
    }
    Ok(if inspection.loadable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A whole number that must be at least 1 (a count of connections, a number of seconds).
fn parse_at_least_one(text: &str) -> Result<u64, String> {
    let value: u64 = text
        .parse()
        .map_err(|error| format!("expected a whole number: {error}"))?;
    if value == 0 {
        return Err("must be at least 1".to_owned());
    }
    Ok(value)
}

/// `graft state --replace`'s argument: the JSON in the file it names when one exists, else
/// the argument itself as JSON.
fn replacement_state(argument: &str) -> anyhow::Result<Value> {
    let path = Path::new(argument);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the state in {}", path.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("the state in {} is not valid JSON", path.display()));
    }
    parse_json(argument)
        .map_err(|message| anyhow!("--replace {argument:?} is neither a file nor JSON: {message}"))
}

fn parse_json(text: &str) -> Result<Value, String> {
    serde_json::from_str(text)
        .map_err(|error| format!("not valid JSON ({error}); quote strings, e.g. '\"Get\"'"))
}

/// A failure, its exit code, and its kind (`--json`'s `error.kind`: a word scripts can
/// match on, `snake_case`).
struct Failure {
    code: u8,
    kind: &'static str,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        let error = error.into();
        let (code, kind) = match error.downcast_ref::<ControlError>() {
            Some(ControlError::NotRunning { .. }) => (2, "not_running"),
            Some(ControlError::HostDied { .. }) => (2, "host_died"),
            Some(ControlError::PermissionDenied { .. }) => (3, "permission_denied"),
            Some(ControlError::Untrusted(_)) => (3, "untrusted_root"),
            Some(ControlError::Impostor { .. }) => (3, "impostor"),
            Some(ControlError::PeerUnknown { .. }) => (3, "peer_unknown"),
            Some(ControlError::AlreadyRunning(_)) => (1, "already_running"),
            Some(ControlError::Connection(_)) => (1, "connection"),
            Some(
                ControlError::Protocol(_)
                | ControlError::Response { .. }
                | ControlError::InvalidLine { .. }
                | ControlError::Encode(_),
            ) => (1, "protocol"),
            _ if matches!(
                error.downcast_ref::<graft::release::handler::ReleaseError>(),
                Some(graft::release::handler::ReleaseError::Untrusted(_))
            ) =>
            {
                (3, "untrusted_root")
            }
            _ => match error.downcast_ref::<graft::fleet::FleetError>() {
                Some(graft::fleet::FleetError::Connect { .. }) => (2, "fleet_unreachable"),
                Some(
                    graft::fleet::FleetError::InvalidFleetName(_)
                    | graft::fleet::FleetError::InvalidName { .. },
                ) => (2, "usage"),
                Some(graft::fleet::FleetError::DigestMismatch(_)) => (3, "digest_mismatch"),
                Some(graft::fleet::FleetError::RolloutInProgress { .. }) => {
                    (1, "rollout_in_progress")
                }
                Some(graft::fleet::FleetError::RolloutFailed { .. }) => (1, "rollout_failed"),
                Some(graft::fleet::FleetError::RolloutStopped { .. }) => (1, "rollout_stopped"),
                Some(graft::fleet::FleetError::RolloutInterrupted { .. }) => {
                    (1, "rollout_interrupted")
                }
                Some(_) => (1, "fleet"),
                None => (1, "failed"),
            },
        };
        Failure { code, kind, error }
    }
}

/// Parses the command line; a usage error under `--json` is printed as the JSON error
/// object (exit 2), help and `--version` as clap prints them.
fn parse_command_line() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(error) => {
            use clap::error::ErrorKind;
            let informational = matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            );
            let wants_json = std::env::args_os()
                .take_while(|argument| argument != "--")
                .any(|argument| argument == "--json");
            if informational || !wants_json {
                // Prints to stdout (help) or stderr (errors) and picks the exit code;
                // a closed stdout is ignored there.
                error.exit();
            }
            let message = error.to_string();
            let message = message.trim().trim_start_matches("error: ");
            let _ = output::json(&output::error_value("usage", message));
            Err(ExitCode::from(2))
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let json = cli.json;
    // A write past the file-size limit fails with EFBIG (reported) instead of killing us.
    graft::process::ignore_file_size_signal();
    // A worker runs plugin code on plain threads: no async runtime, its own logging.
    if let Command::Worker {
        socket,
        parent,
        log_level,
        libraries,
    } = cli.command
    {
        return graft::isolation::worker::main(graft::isolation::worker::WorkerArgs {
            socket,
            parent,
            log_level,
            libraries,
        });
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return report_failure(
                &Failure {
                    code: 1,
                    kind: "failed",
                    error: anyhow!("cannot start the async runtime: {error}"),
                },
                json,
            );
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => report_failure(&failure, json),
    }
}

/// Prints a failure (stderr in text mode, the JSON error object on stdout with `--json`)
/// and returns its exit code. A closed stdout ends the command quietly, with success: the
/// reader stopped reading, nothing failed.
fn report_failure(failure: &Failure, json: bool) -> ExitCode {
    if matches!(
        failure.error.downcast_ref::<output::OutputError>(),
        Some(output::OutputError::Closed)
    ) {
        return ExitCode::SUCCESS;
    }
    let message = describe(&failure.error);
    if json {
        let _ = output::json(&output::error_value(failure.kind, &message));
    } else {
        let _ = writeln!(std::io::stderr(), "graft: {message}");
    }
    ExitCode::from(failure.code)
}

/// The error and its causes, skipping a cause whose text its parent already shows (typed
/// errors here print their source inline).
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    // `graft dev` has its own default root (see `dev::dev_root`).
    let explicit_root = cli.root.clone();
    let root = cli.root.unwrap_or_else(|| PathBuf::from("target/graft"));
    let json = cli.json;
    match cli.command {
        Command::Build {
            versions,
            workspace,
            debug,
        } => build(&root, &workspace, &versions, !debug, json).map(|()| ExitCode::SUCCESS),
        Command::Start {
            watch,
            auto_permanent,
            max_connections,
            idle_timeout,
            http,
            fleet,
        } => {
            let limits = graft::control::ControlLimits {
                max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
                idle_timeout: Duration::from_secs(idle_timeout),
                ..Default::default()
            };
            start(
                &root,
                watch,
                auto_permanent.map(Duration::from_secs),
                limits,
                http,
                &fleet,
                json,
            )
            .await
        }
        Command::Fleet {
            connection,
            command,
        } => fleet::run(&root, &connection, &command, json).await,
        Command::Status => {
            let status: StatusResponse = request(&root, &Request::Status {}).await?;
            print_status(&status, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Releases => {
            let releases: Vec<ReleaseEntry> = request(&root, &Request::Releases {}).await?;
            print_releases(&releases, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Install {
            version,
            dry_run: true,
            ..
        } => {
            let answer: PlanResponse = request(&root, &Request::Plan { version }).await?;
            if json {
                output::json(&answer.plan)?;
            } else {
                output::text(&answer.text)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Install {
            version, permanent, ..
        } => {
            let report: InstallResponse =
                request_with_progress(&root, &Request::Install { version, permanent }).await?;
            print_install(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::MakePermanent { version } => {
            let _: PermanentResponse = request(
                &root,
                &Request::MakePermanent {
                    version: version.clone(),
                },
            )
            .await?;
            if json {
                output::json(&json!({"version": version.to_string(), "permanent": true}))?;
            } else {
                say!("{version} is permanent");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback => {
            let report: InstallResponse =
                request_with_progress(&root, &Request::Rollback {}).await?;
            print_install(&report, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Remove { version } => {
            let _: RemovedResponse = request(
                &root,
                &Request::Remove {
                    version: version.clone(),
                },
            )
            .await?;
            if json {
                output::json(&json!({"removed": version.to_string()}))?;
            } else {
                say!("removed {version}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Call {
            actor,
            message,
            timeout,
        } => {
            let reply: Value = request(
                &root,
                &Request::Call {
                    actor,
                    message,
                    timeout_ms: timeout,
                },
            )
            .await?;
            if json {
                output::json(&json!({ "reply": reply }))?;
            } else {
                say!("{reply}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cast { actor, message } => {
            let _: CastResponse = request(
                &root,
                &Request::Cast {
                    actor: actor.clone(),
                    message,
                },
            )
            .await?;
            if json {
                output::json(&json!({"actor": actor, "queued": true}))?;
            } else {
                // A cast is not answered: one the actor cannot decode is dropped later,
                // logged and counted in `graft status`.
                say!(
                    "cast queued for {actor} (not yet handled: if {actor} cannot decode it, it is dropped and counted as undecodable in `graft status`)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::State {
            actor,
            replace: Some(replacement),
            ..
        } => {
            let state = replacement_state(&replacement)?;
            let _: ReplacedResponse = request(
                &root,
                &Request::State {
                    actor: actor.clone(),
                    replace: Some(state),
                    raw: false,
                },
            )
            .await?;
            if json {
                output::json(&json!({"actor": actor, "replaced": true}))?;
            } else {
                say!("state of {actor} replaced");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::State {
            actor,
            raw,
            replace: None,
        } => {
            let state: Value = request(
                &root,
                &Request::State {
                    actor,
                    replace: None,
                    raw,
                },
            )
            .await?;
            if json {
                output::json(&state)?;
            } else {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&state).unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Suspend { actor } => {
            let _: SuspendedResponse = request(
                &root,
                &Request::Suspend {
                    actor: actor.clone(),
                },
            )
            .await?;
            if json {
                output::json(&json!({"actor": actor, "state": "suspended"}))?;
            } else {
                say!("{actor} suspended");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { actor } => {
            let _: ResumedResponse = request(
                &root,
                &Request::Resume {
                    actor: actor.clone(),
                },
            )
            .await?;
            if json {
                output::json(&json!({"actor": actor, "state": "running"}))?;
            } else {
                say!("{actor} resumed");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev {
            version,
            workspace,
            http,
        } => dev::dev(explicit_root.as_deref(), &workspace, version, http, json).await,
        Command::Demo { debug } => demo(!debug, json).await.map(|()| ExitCode::SUCCESS),
        Command::New { app, plugin, path } => {
            scaffold::new(app.as_deref(), plugin.as_deref(), path, json).map(|()| ExitCode::SUCCESS)
        }
        Command::Inspect { file } => inspect(&file, json),
        // Handled in `main`, before the async runtime starts.
        Command::Worker { .. } => Ok(ExitCode::from(2)),
    }
}

async fn request<T: DeserializeOwned>(root: &Path, request: &Request) -> Result<T, Failure> {
    let mut client = ControlClient::connect(root).await?;
    Ok(client.request(request, |_| {}).await?)
}

/// Sends a request and shows its progress: one rewritten line on a terminal, plain lines
/// otherwise (on stderr, so stdout stays the result).
async fn request_with_progress<T: DeserializeOwned>(
    root: &Path,
    request: &Request,
) -> Result<T, Failure> {
    let mut client = ControlClient::connect(root).await?;
    let terminal = std::io::stderr().is_terminal();
    let result = client
        .request(request, |message| {
            let mut stderr = std::io::stderr();
            if terminal {
                let _ = write!(stderr, "\r\x1b[2K{message}");
                let _ = stderr.flush();
            } else {
                let _ = writeln!(stderr, "{message}");
            }
        })
        .await;
    if terminal {
        let _ = writeln!(std::io::stderr());
    }
    Ok(result?)
}

/// Prints an install's report (a report without its fields is a protocol error, caught
/// when the client parsed it).
fn print_install(report: &InstallResponse, json: bool) -> Result<(), Failure> {
    if json {
        output::json(&to_json(report)?)?;
        return Ok(());
    }
    // The plan's warnings (the install ran regardless), on stderr beside the progress lines.
    for warning in &report.warnings {
        eprintln!("warning: {}", warning.message);
    }
    say!(
        "installed {} (from {}): {} actors migrated, longest pause {:.3} ms, took {:.1} ms{}",
        report.to,
        report.from,
        report.actors_migrated,
        report.longest_pause_us as f64 / 1000.0,
        report.total_us as f64 / 1000.0,
        if report.permanent { ", permanent" } else { "" }
    );
    Ok(())
}

/// A typed response as `--json` prints it: the host's JSON, keys sorted as it sent them.
fn to_json(response: &impl serde::Serialize) -> Result<Value, Failure> {
    serde_json::to_value(response).map_err(|error| {
        ControlError::Protocol(format!("cannot show the response: {error}")).into()
    })
}

fn print_releases(releases: &[ReleaseEntry], json: bool) -> Result<(), Failure> {
    if json {
        output::json(&to_json(&releases)?)?;
        return Ok(());
    }
    say!("{:<12} {:<10} {:<8} NAME", "VERSION", "STATUS", "RUNNING");
    for release in releases {
        say!(
            "{:<12} {:<10} {:<8} {}",
            release.version.to_string(),
            release.status,
            if release.running { "yes" } else { "" },
            release.name
        );
    }
    Ok(())
}

fn print_tree(children: &[TreeNode], prefix: &str, out: &mut String) {
    for (index, child) in children.iter().enumerate() {
        let last = index + 1 == children.len();
        let branch = if last { "└─ " } else { "├─ " };
        let id = child.id();
        let child = match child {
            TreeNode::Supervisor(supervisor) => {
                out.push_str(&format!("{prefix}{branch}{id} (supervisor)\n"));
                let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
                print_tree(&supervisor.children, &deeper, out);
                continue;
            }
            TreeNode::Child(child) => child,
        };
        let plugin = match (&child.plugin, &child.version) {
            (Some(plugin), Some(version)) => format!("{plugin} {version}"),
            _ => "-".to_owned(),
        };
        let bound = match child.max_mailbox {
            Some(limit) => format!(", max {limit}"),
            None => String::new(),
        };
        let mut refused = match child.mailbox_refused {
            Some(refused) if refused > 0 => format!(", {refused} refused"),
            _ => String::new(),
        };
        if let Some(dropped) = child.undecodable_messages
            && dropped > 0
        {
            refused.push_str(&format!(", {dropped} undecodable dropped"));
        }
        // Shown where the plugin reports it (ABI 1.1 and later).
        let health = match (&child.health, &child.health_reason) {
            (Some(health), _) if health.starts_with("not reported") => String::new(),
            (Some(health), Some(reason)) => format!(" health {health}: {reason}"),
            (Some(health), None) => format!(" health {health}"),
            _ => String::new(),
        };
        // A child without a process has no mailbox: its figures show as 0.
        out.push_str(&format!(
            "{prefix}{branch}{id:<14} {plugin:<20} {:<10} restarts {:<3} mailbox {} (high-water {}{bound}{refused}){health}\n",
            child.state,
            child.restarts.unwrap_or(0),
            child.mailbox.unwrap_or(0),
            child.mailbox_high_water.unwrap_or(0)
        ));
    }
}

fn print_status(status: &StatusResponse, json: bool) -> Result<(), Failure> {
    if json {
        output::json(&to_json(status)?)?;
        return Ok(());
    }
    let mut out = format!(
        "release {}{}\nroot (supervisor)\n",
        status.release,
        if status.install_in_progress {
            " (an install is in progress: the release as of before it; the tree is live)"
        } else {
            ""
        }
    );
    if let TreeNode::Supervisor(root) = &status.tree {
        print_tree(&root.children, "", &mut out);
    }
    let resident: Vec<String> = status
        .resident
        .iter()
        .map(|library| {
            format!(
                "{} {} ({} users)",
                library.plugin, library.version, library.users
            )
        })
        .collect();
    out.push_str(&format!("resident libraries: {}\n", resident.join(", ")));
    for worker in &status.workers {
        let pid = worker
            .pid
            .map_or_else(|| "not running".to_owned(), |pid| format!("pid {pid}"));
        out.push_str(&format!(
            "worker of {}: {pid}, started {} time(s)\n",
            worker.plugin, worker.spawned,
        ));
    }
    for stuck in &status.stuck_callbacks {
        out.push_str(&format!(
            "stuck callback: {} of {} (actor {}, killed) running for {} ms; its library stays loaded\n",
            stuck.callback, stuck.code, stuck.actor, stuck.running_ms,
        ));
    }
    output::text(&out)?;
    Ok(())
}

/// `graft build`: assembles releases from the workspace into the root. Progress (cargo's
/// own lines, then one line per release) goes to stderr; the summary of what was
/// assembled to stdout.
fn build(
    root: &Path,
    workspace: &Path,
    versions: &[Version],
    release_profile: bool,
    json: bool,
) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let releases = workspace.join("releases");
    let mut targets: Vec<Version> = versions.to_vec();
    if targets.is_empty() {
        let entries = std::fs::read_dir(&releases)
            .with_context(|| format!("reading {}", releases.display()))?;
        targets = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join("release.toml").is_file())
            .filter_map(|entry| Version::parse(&entry.file_name().to_string_lossy()).ok())
            .collect();
        targets.sort();
    }
    if targets.is_empty() {
        return Err(anyhow!(
            "no releases under {} (expected releases/<VERSION>/release.toml)",
            releases.display()
        )
        .into());
    }
    let workspace = workspace
        .canonicalize()
        .with_context(|| format!("resolving the workspace {}", workspace.display()))?;
    let manifests: Vec<PathBuf> = targets
        .iter()
        .map(|version| {
            workspace
                .join("releases")
                .join(version.to_string())
                .join("release.toml")
        })
        .collect();
    // Every plugin crate of every release in one cargo run, its progress shown; assembling
    // then finds them built. A manifest this cannot read is left for `assemble` to report.
    let mut packages = std::collections::BTreeSet::new();
    for manifest in &manifests {
        let Ok(source) = graft::release::Manifest::read(manifest) else {
            continue;
        };
        for entry in source.plugins.values() {
            let relative = entry.crate_path.as_deref().unwrap_or(Path::new("."));
            if let Ok(directory) = graft::release::resolve_inside(&workspace, relative)
                && let Ok((package, _)) = graft::release::assemble::package_of(&directory)
            {
                packages.insert(package);
            }
        }
    }
    progress(&format!(
        "building {} plugin crate(s) for release(s) {} with cargo ({} profile) …",
        packages.len(),
        targets
            .iter()
            .map(Version::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        if release_profile { "release" } else { "dev" }
    ));
    if !packages.is_empty() {
        let names: Vec<&str> = packages.iter().map(String::as_str).collect();
        graft::build::CargoBuild::new(&workspace)
            .release(release_profile)
            .progress(true)
            .build_all(&names)?;
    }
    let mut assembled_releases = Vec::new();
    for (version, manifest) in targets.iter().zip(&manifests) {
        progress(&format!("assembling {version} …"));
        let assembled = assemble(manifest, &workspace, root, release_profile)?;
        if !json {
            say!(
                "assembled {} {} → {} ({} plugins)",
                assembled.manifest.release.name,
                version,
                assembled.directory.display(),
                assembled.manifest.plugins.len()
            );
        }
        assembled_releases.push(json!({
            "name": assembled.manifest.release.name,
            "version": version.to_string(),
            "directory": assembled.directory,
            "plugins": assembled.manifest.plugins.keys().collect::<Vec<_>>(),
        }));
    }
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if json {
        output::json(&json!({
            "root": root,
            "assembled": assembled_releases,
            "elapsed_ms": elapsed_ms,
        }))?;
    } else {
        say!(
            "built {} plugin crate(s) and assembled {} release(s) into {} in {:.1} s",
            packages.len(),
            assembled_releases.len(),
            root.join("releases").display(),
            elapsed_ms as f64 / 1000.0
        );
    }
    Ok(())
}

/// A progress line on stderr (stdout is the result).
fn progress(message: &str) {
    let _ = writeln!(std::io::stderr(), "graft: {message}");
}

/// The host's logs: see [`logging`].
fn init_tracing() {
    logging::init();
}

/// `graft start`: runs the host in the foreground.
async fn start(
    root: &Path,
    watch: bool,
    auto_permanent: Option<Duration>,
    limits: graft::control::ControlLimits,
    http: Option<std::net::SocketAddr>,
    fleet: &fleet::JoinArgs,
    json: bool,
) -> Result<ExitCode, Failure> {
    init_tracing();
    // Metrics are counted from the boot on when they will be served.
    if http.is_some() {
        graft::metrics::enable();
    }
    // A second host on a live root — serving, or still booting — stops here, before it
    // boots anything; the claim is held until this host exits.
    let _claim = ControlServer::claim_root(root).await?;
    // What a host that died left: this one serves HTTP only if asked, at its own address.
    graft::http::remove_info(root);
    // Bound before the boot: an address in use stops the start before any plugin runs.
    let http = match http {
        Some(address) => Some(graft::http::HttpServer::bind(address).await?),
        None => None,
    };
    // Signals are caught from before the socket answers: a client that sees the host up
    // and stops it at once gets the orderly stop, not the default action of SIGINT.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // The cluster is joined before the boot: global and singleton children register
    // while the release boots.
    let runtime = Runtime::new();
    let joined = fleet::connect(root, fleet, &runtime).await?;
    let handler = Arc::new(ReleaseHandler::boot(root, runtime).await?);
    // Watching starts before the socket answers: a client that sees the host up and then
    // drops in a release gets it installed.
    let watch = watch
        .then(|| graft::watch::ReleaseWatch::start(Arc::clone(&handler)))
        .transpose()?;
    // The fleet entry is written before the socket answers: a host that is up is listed.
    let membership = match &joined {
        Some(joined) => Some(fleet::join(joined, fleet, &handler).await?),
        None => None,
    };
    let server = ControlServer::bind(root).await?;
    tracing::info!(socket = %server.path().display(), release = %handler.current_version().await, "host started");
    let serving = tokio::spawn(server.serve_with(Arc::clone(&handler), limits));
    let observing = http.map(|server| serve_http(root, server, &handler, json));
    let watching = watch.map(|watch| {
        tokio::spawn(async move {
            if let Err(error) = watch.run(auto_permanent, None).await {
                tracing::error!("watch mode stopped: {error}");
            }
        })
    });
    let root_supervisor = handler.root_supervisor().await;
    let code = tokio::select! {
        _ = interrupt.recv() => None,
        _ = terminate.recv() => None,
        reason = root_supervisor.exited() => Some(reason),
    };
    if let Some(watching) = watching {
        watching.abort();
    }
    if let Some(membership) = membership {
        // Awaited: a heartbeat in flight must land before the cluster deletes the entry
        // on leaving, or it would bring the host back until its TTL.
        membership.abort();
        let _ = membership.await;
    }
    serving.abort();
    let _ = serving.await;
    if let Some(observing) = observing {
        observing.abort();
        let _ = observing.await;
        graft::http::remove_info(root);
    }
    let exit = match code {
        None => {
            tracing::info!("stopping: shutting the supervision tree down");
            handler.shutdown().await;
            ExitCode::SUCCESS
        }
        Some(reason) => {
            tracing::error!(
                reason = %reason,
                "the root supervisor exited (restart intensity exceeded at the top of the tree); stopping the host"
            );
            ExitCode::from(1)
        }
    };
    // After the tree stopped: its leases and names are freed for the other hosts at once
    // (bounded: an unreachable server leaves them to expire).
    if let Some(joined) = &joined
        && tokio::time::timeout(CLUSTER_LEAVE_TIMEOUT, joined.cluster.leave())
            .await
            .is_err()
    {
        tracing::warn!("leaving the cluster timed out; its names and leases expire on their own");
    }
    tracing::info!("stopped");
    Ok(exit)
}

/// How long a stopping host tries to free its cluster names and leases.
const CLUSTER_LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// `graft start --http`: tells the operator where the bound HTTP server (`/metrics` and
/// the observer) is and its token (a line on stdout; with `--json`, a JSON line
/// `{"observer": {"url", "address", "token"}}`), writes `<root>/run/http.json` (0600) for
/// tools, and serves it in a task of the control plane's runtime.
fn serve_http(
    root: &Path,
    server: graft::http::HttpServer,
    handler: &Arc<ReleaseHandler>,
    json: bool,
) -> tokio::task::JoinHandle<()> {
    // A stdout nobody reads any more does not stop the host: the file below still tells.
    let printed = if json {
        output::json(&json!({"observer": {
            "url": server.url(),
            "address": server.local_addr().to_string(),
            "token": server.token().as_str(),
        }}))
    } else {
        output::line(format_args!(
            "observer: {} token: {}\nopen {}",
            server.url(),
            server.token().as_str(),
            server.url_with_token()
        ))
    };
    if let Err(error) = printed {
        tracing::warn!("printing the observer's address: {error}");
    }
    if let Err(error) = server.write_info(root) {
        tracing::warn!("{error}; the observer's address and token are only printed");
    }
    tracing::info!(address = %server.local_addr(), "serving /metrics and the observer");
    let handler = Arc::clone(handler);
    tokio::spawn(async move {
        if let Err(error) = server.serve(handler).await {
            tracing::error!("the HTTP server stopped: {error}");
        }
    })
}

/// The workspace this binary was built from (for the demo and `graft new`).
fn source_workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// `graft demo`: the whole idea in a minute.
async fn demo(release_profile: bool, json: bool) -> Result<(), Failure> {
    // The story goes to stdout, or to stderr with `--json` (stdout is then the report).
    macro_rules! narrate {
        ($($argument:tt)*) => {
            if json {
                let _ = writeln!(std::io::stderr(), $($argument)*);
            } else {
                say!($($argument)*);
            }
        };
    }
    let workspace = source_workspace();
    let root = tempfile::Builder::new().prefix("graft-demo-").tempdir()?;
    narrate!("1. building the example plugins and releases 1.0.0, 1.1.0 (cargo) …");
    for version in ["1.0.0", "1.1.0"] {
        let manifest = workspace
            .join("releases")
            .join(version)
            .join("release.toml");
        assemble(&manifest, &workspace, root.path(), release_profile)?;
    }
    let runtime = Runtime::new();
    let handler = Arc::new(ReleaseHandler::boot(root.path(), runtime.clone()).await?);
    narrate!(
        "2. host started on release {} (root {})",
        handler.current_version().await,
        root.path().display()
    );

    let call = |actor: &'static str, message: Value| {
        let runtime = runtime.clone();
        async move {
            let reply = runtime
                .call(
                    actor,
                    graft_plugin::codec::encode(&message)?,
                    Duration::from_secs(5),
                )
                .await?;
            anyhow::Ok(rmp_serde::from_slice::<Value>(&reply)?)
        }
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (runtime, stop) = (runtime.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut sent: i64 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += 1;
                let add = graft_plugin::codec::encode(&json!({"Add": 1}))?;
                runtime.cast("counter", add)?;
                let put = json!({"Put": {"key": "last", "value": sent.to_string()}});
                let previous: Value = rmp_serde::from_slice(
                    &runtime
                        .call(
                            "kv",
                            graft_plugin::codec::encode(&put)?,
                            Duration::from_secs(5),
                        )
                        .await?,
                )?;
                let expected = if sent == 1 {
                    Value::Null
                } else {
                    json!((sent - 1).to_string())
                };
                anyhow::ensure!(
                    previous == expected,
                    "kv lost or reordered a message: {previous} after {}",
                    sent - 1
                );
                if sent % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            anyhow::Ok(sent)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    narrate!(
        "3. traffic running: counter = {}, kv last = {}",
        call("counter", json!("Get")).await?,
        call("kv", json!({"Get": "last"})).await?
    );

    narrate!(
        "4. installing 1.1.0 live (counter 1.1.0 migrates its state; kv 1.1.0 logs requests) …"
    );
    let report = handler.install(&Version::new(1, 1, 0), None).await?;
    narrate!(
        "   installed in {:.1} ms: {} actors migrated, longest pause {:.3} ms",
        report.total.as_secs_f64() * 1000.0,
        report.actors_migrated,
        report.longest_pause.as_secs_f64() * 1000.0
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    narrate!(
        "   counter state now: {}",
        runtime
            .whereis("counter")
            .context("counter")?
            .get_state(Duration::from_secs(5))
            .await?
    );

    narrate!("5. rolling back to 1.0.0 (1.1.0 converts its state to 1.0.0's shape) …");
    let back = handler.install(&Version::new(1, 0, 0), None).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = traffic.await.context("the traffic task")??;
    let counted = call("counter", json!("Get")).await?;
    narrate!(
        "   rolled back in {:.1} ms; counter state: {}",
        back.total.as_secs_f64() * 1000.0,
        runtime
            .whereis("counter")
            .context("counter")?
            .get_state(Duration::from_secs(5))
            .await?
    );
    let lost = sent - counted.as_i64().unwrap_or(0);
    narrate!(
        "6. report: {sent} casts sent, counter counted {counted}: {lost} lost; every kv call saw its predecessor (per-sender order kept)"
    );
    handler.shutdown().await;
    if json {
        output::json(&json!({
            "casts_sent": sent,
            "counted": counted,
            "lost": lost,
            "install_us": u64::try_from(report.total.as_micros()).unwrap_or(u64::MAX),
            "longest_pause_us": u64::try_from(report.longest_pause.as_micros()).unwrap_or(u64::MAX),
            "rollback_us": u64::try_from(back.total.as_micros()).unwrap_or(u64::MAX),
        }))?;
    }
    if lost != 0 {
        return Err(anyhow!("{lost} messages were lost").into());
    }
    Ok(())
}
