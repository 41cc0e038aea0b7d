//! `graft new`: an application workspace that builds and boots as created, or one more
//! plugin in an existing one.
//!
//! An application workspace is a Cargo workspace (`members = ["plugins/*/*"]`) holding
//! `plugins/<NAME>/<VERSION>/` crates and `releases/<VERSION>/release.toml` manifests, the
//! layout `graft build`, `graft start` and `graft dev` read. Invariants:
//! - Nothing existing is overwritten: a new workspace's directory must not exist, and a
//!   plugin's directory must not exist in the workspace it is added to.
//! - The dependency on `graft-plugin` is a crates.io requirement (`graft-plugin = "0.2"`),
//!   pointed at the Graft checkout this binary was built from by a `[patch.crates-io]`
//!   entry in the workspace's Cargo.toml: deleting that entry is all it takes to build
//!   against a published `graft-plugin`.
//! - Package names are plain (`hello`): the `name-x-y-z` convention of Graft's own example
//!   workspace is only needed when two versions of a plugin live in one workspace.
//! - Release builds strip plugin libraries (`strip = "symbols"` in the workspace's
//!   `[profile.release]`), as Graft's own workspace does: every load reads and hashes every
//!   byte of a library.

use super::Failure;
use super::output::{self, say};
use anyhow::{Context as _, anyhow};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The first version of a new application and its plugin.
const FIRST_VERSION: &str = "0.1.0";

/// `graft new`: a new application workspace (`app` given) or a plugin added to the
/// workspace at `path` (default: the current directory).
pub(super) fn new(
    app: Option<&str>,
    plugin: Option<&str>,
    path: Option<PathBuf>,
    json: bool,
) -> Result<(), Failure> {
    match (app, plugin) {
        (Some(app), plugin) => new_application(app, plugin.unwrap_or(app), path, json),
        (None, Some(plugin)) => {
            add_plugin(plugin, &path.unwrap_or_else(|| PathBuf::from(".")), json)
        }
        (None, None) => Err(Failure {
            code: 2,
            kind: "usage",
            error: anyhow!(
                "graft new needs an application name (graft new APP) or --plugin NAME to add a plugin to this workspace"
            ),
        }),
    }
}

/// Refuses a name that is not a plain package and plugin name.
fn validate(kind: &str, name: &str) -> Result<(), Failure> {
    let valid = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if valid {
        Ok(())
    } else {
        Err(anyhow!(
            "invalid {kind} name {name:?}: expected letters, digits, '-' or '_', starting with a letter"
        )
        .into())
    }
}

/// The Graft checkout this binary was built from, whose `plugin-api/` the workspace's
/// `[patch.crates-io]` entry points at.
fn plugin_api() -> PathBuf {
    super::source_workspace().join("plugin-api")
}

/// The requirement on `graft-plugin` a plugin writes: `MAJOR.MINOR` of the checkout's
/// version (`0.2` for 0.2.0), as a crate published against it would.
fn plugin_api_requirement(api: &Path) -> Result<String, Failure> {
    let (_, version) = graft::release::assemble::package_of(api)
        .map_err(|message| anyhow!("reading graft-plugin's version: {message}"))?;
    Ok(format!("{}.{}", version.major, version.minor))
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn new_application(
    app: &str,
    plugin: &str,
    path: Option<PathBuf>,
    json: bool,
) -> Result<(), Failure> {
    validate("application", app)?;
    validate("plugin", plugin)?;
    let directory = path.unwrap_or_else(|| PathBuf::from(app));
    if directory.exists() {
        return Err(anyhow!("{} already exists", directory.display()).into());
    }
    let api = plugin_api();
    let requirement = plugin_api_requirement(&api)?;
    write(
        &directory.join("Cargo.toml"),
        &WORKSPACE_MANIFEST
            .replace("{app}", app)
            .replace("{api}", &api.display().to_string()),
    )?;
    write(&directory.join(".gitignore"), "/target\n")?;
    write(
        &directory.join("README.md"),
        &APPLICATION_README
            .replace("{app}", app)
            .replace("{plugin}", plugin),
    )?;
    write(
        &directory
            .join("releases")
            .join(FIRST_VERSION)
            .join("release.toml"),
        &RELEASE_MANIFEST
            .replace("{app}", app)
            .replace("{plugin}", plugin)
            .replace("{version}", FIRST_VERSION),
    )?;
    write_plugin(&directory, plugin, &requirement)?;
    // The dependency versions Graft was tested with, when its lock file is at hand; cargo
    // drops the entries this workspace does not use.
    let lock = super::source_workspace().join("Cargo.lock");
    if lock.is_file() {
        std::fs::copy(&lock, directory.join("Cargo.lock"))
            .with_context(|| format!("copying {}", lock.display()))?;
    }
    if json {
        output::json(&json!({
            "application": app,
            "directory": directory,
            "plugin": plugin,
            "plugin_directory": directory.join("plugins").join(plugin).join(FIRST_VERSION),
            "release": FIRST_VERSION,
        }))?;
        return Ok(());
    }
    say!(
        "created application {app} in {} with plugin {plugin} (plugins/{plugin}/{FIRST_VERSION}) and release {FIRST_VERSION}",
        directory.display()
    );
    say!("next:");
    say!("  cd {}", directory.display());
    say!("  graft build            # build the plugins, assemble the releases into target/graft");
    say!("  graft start            # run the host (Ctrl-C stops it)");
    say!("  graft call {plugin} '{{\"Add\": 2}}'   # from another terminal");
    say!("  graft dev              # or: hot-swap the plugin on every cargo build");
    Ok(())
}

fn add_plugin(plugin: &str, workspace: &Path, json: bool) -> Result<(), Failure> {
    validate("plugin", plugin)?;
    let manifest = workspace.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|error| {
        anyhow!(
            "{} is not an application workspace ({}: {error}); create one with graft new APP, or pass --path to one",
            workspace.display(),
            manifest.display()
        )
    })?;
    if !text.contains("[workspace]") || !workspace.join("releases").is_dir() {
        return Err(anyhow!(
            "{} is not an application workspace (expected a Cargo.toml with [workspace] and a releases/ directory); create one with graft new APP, or pass --path to one",
            workspace.display()
        )
        .into());
    }
    if workspace.join("plugins").join(plugin).exists() {
        return Err(anyhow!(
            "{} already exists",
            workspace.join("plugins").join(plugin).display()
        )
        .into());
    }
    let requirement = plugin_api_requirement(&plugin_api())?;
    write_plugin(workspace, plugin, &requirement)?;
    let plugin_directory = workspace.join("plugins").join(plugin).join(FIRST_VERSION);
    if json {
        output::json(&json!({
            "plugin": plugin,
            "plugin_directory": plugin_directory,
            "workspace_member": text.contains("plugins/*/*"),
        }))?;
        return Ok(());
    }
    if !text.contains("plugins/*/*") {
        say!(
            "note: add \"plugins/{plugin}/{FIRST_VERSION}\" to [workspace] members in {}",
            manifest.display()
        );
    }
    say!("created plugin {plugin} in {}", plugin_directory.display());
    say!(
        "next: add it to a new release (releases/<VERSION>/release.toml):\n\n[plugins.{plugin}]\nversion = \"{FIRST_VERSION}\"\ncrate = \"plugins/{plugin}/{FIRST_VERSION}\"\n\n[[supervisor.children]]\nid = \"{plugin}\"\nplugin = \"{plugin}\"\nargs = 0\n\nand, for a running host, an `add_child` instruction in its [[upgrade]] (see Graft's README, \"Writing a release and its upgrade\")."
    );
    Ok(())
}

/// Writes `plugins/<plugin>/0.1.0/` in `workspace`.
fn write_plugin(workspace: &Path, plugin: &str, requirement: &str) -> Result<(), Failure> {
    let directory = workspace.join("plugins").join(plugin).join(FIRST_VERSION);
    write(
        &directory.join("Cargo.toml"),
        &PLUGIN_MANIFEST
            .replace("{plugin}", plugin)
            .replace("{version}", FIRST_VERSION)
            .replace("{requirement}", requirement),
    )?;
    write(
        &directory.join("src").join("lib.rs"),
        &PLUGIN_SOURCE.replace("{plugin}", plugin),
    )?;
    Ok(())
}

const WORKSPACE_MANIFEST: &str = r#"# The {app} application: plugin crates under plugins/<NAME>/<VERSION>/, releases under
# releases/<VERSION>/release.toml. `graft build` builds and assembles them.
[workspace]
resolver = "3"
members = ["plugins/*/*"]

# A host reads, SHA-256s and copies every byte of a plugin library each time it loads one:
# without debug info and symbol table a library is a fraction of the size (Graft's own
# workspace: 0.84 MB against 7.1 MB), its load well under a millisecond. Exported symbols and
# unwind tables stay.
[profile.release]
strip = "symbols"

# graft-plugin from the Graft checkout this workspace was created with. Delete this entry
# to build against graft-plugin from crates.io.
[patch.crates-io]
graft-plugin = { path = "{api}" }
"#;

const PLUGIN_MANIFEST: &str = r#"[package]
# A plain package name. Only when two versions of the plugin share this workspace (say
# plugins/{plugin}/0.1.0 and plugins/{plugin}/0.2.0, both built for an upgrade) do they
# need distinct package names, such as {plugin}-0-2-0.
name = "{plugin}"
version = "{version}"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
graft-plugin = "{requirement}"
serde = { version = "1", features = ["derive"] }
"#;

const RELEASE_MANIFEST: &str = r#"# Release {version} of {app}: the first release, booted and made permanent on first start.

[release]
name = "{app}"
version = "{version}"

[plugins.{plugin}]
version = "{version}"
crate = "plugins/{plugin}/{version}"

[supervisor]
strategy = "one_for_one"

[[supervisor.children]]
id = "{plugin}"
plugin = "{plugin}"
args = 0
"#;

const APPLICATION_README: &str = r#"# {app}

A Graft application: plugin crates under `plugins/<NAME>/<VERSION>/`,
releases under `releases/<VERSION>/release.toml`.

```sh
graft build                      # build the plugins, assemble the releases into target/graft
graft start                      # run the host in the foreground (Ctrl-C stops it)
graft call {plugin} '{"Add": 2}'     # from another terminal: 2
graft call {plugin} '"Get"'          # 2
graft status                     # the supervision tree
cargo test                       # the plugins' own tests
graft dev                        # or: run the newest release and hot-swap a plugin
                                 # on every `cargo build` (root: target/graft-dev)
graft new --plugin NAME          # add a plugin under plugins/NAME/0.1.0/
```

To upgrade a running host: copy `plugins/{plugin}/0.1.0` to `plugins/{plugin}/0.2.0`
(version 0.2.0 in its Cargo.toml, and a package name of its own, such as `{plugin}-0-2-0`,
since two versions now share the workspace), write `releases/0.2.0/release.toml` with an
`[[upgrade]]` from 0.1.0, then `graft build 0.2.0 && graft install 0.2.0`.
"#;

const PLUGIN_SOURCE: &str = r#"//! The `{plugin}` Graft plugin: a GenServer whose state is a count.
//!
//! Keep the logic in plain methods so it is easy to test, and let the callbacks call them.

use graft_plugin::{CallResult, Context, Error, Flow, GenServer, ReplyTo};
use serde::{Deserialize, Serialize};

/// The actor's state.
#[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
pub struct State {
    count: i64,
}

/// Calls.
#[derive(Serialize, Deserialize)]
pub enum Request {
    /// The count.
    Get,
    /// Adds and returns the new count.
    Add(i64),
}

/// Casts.
#[derive(Serialize, Deserialize)]
pub enum Command {
    /// Sets the count to zero.
    Reset,
}

impl State {
    fn apply(&mut self, request: Request) -> i64 {
        match request {
            Request::Get => self.count,
            Request::Add(amount) => {
                self.count += amount;
                self.count
            }
        }
    }
}

impl GenServer for State {
    type Args = i64;
    type Call = Request;
    type Reply = i64;
    type Cast = Command;
    type Info = ();
    type Continue = ();

    fn init(start: i64, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        Ok(State { count: start })
    }

    fn handle_call(&mut self, request: Request, _from: ReplyTo, _ctx: &mut Context<'_>) -> Result<CallResult<i64>, Error> {
        Ok(CallResult::Reply(self.apply(request)))
    }

    fn handle_cast(&mut self, command: Command, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
        match command {
            Command::Reset => self.count = 0,
        }
        Ok(Flow::Run)
    }

    // A `graft dev` rebuild's `code_change` gets `from` = the running version with build
    // metadata `dev.N` (`0.1.0+dev.1`): `from.build.starts_with("dev.")`.
}

graft_plugin::export_plugin!(State, name = "{plugin}");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_returns_the_new_count() {
        let mut state = State { count: 1 };
        assert_eq!(state.apply(Request::Add(2)), 3);
        assert_eq!(state.apply(Request::Get), 3);
    }

    #[test]
    fn the_state_round_trips_through_the_wire_format() {
        let state = State { count: 7 };
        let bytes = graft_plugin::codec::encode(&state).unwrap();
        assert_eq!(graft_plugin::codec::decode::<State>(&bytes).unwrap(), state);
    }
}
"#;
