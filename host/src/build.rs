//! Building plugin crates with cargo and finding their `cdylib` artifacts.
//!
//! Cargo offers no stable way to depend on a `cdylib`, so the host (for `graft build`),
//! the end-to-end tests and the benchmarks run `cargo build -p <package>
//! --message-format=json` and read the artifact's path from the `compiler-artifact`
//! message. The artifact path is cargo's; callers must not `dlopen` it directly (cargo
//! hard-links it, and rebuilds replace it) — the loader copies it first.
//!
//! With [`CargoBuild::progress`], cargo writes to our stderr itself (`Compiling …` lines,
//! diagnostics, and on a terminal its progress bar); the error then says so instead of
//! repeating them.

use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use thiserror::Error;

/// A plugin crate could not be built.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BuildError {
    /// cargo could not be started.
    #[error("cannot run {cargo}: {source}")]
    Spawn {
        /// The cargo executable.
        cargo: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// cargo failed.
    #[error("cargo build of {package} failed:\n{stderr}")]
    Failed {
        /// The package.
        package: String,
        /// cargo's diagnostics.
        stderr: String,
    },
    /// cargo failed; its diagnostics were shown on stderr as it ran ([`CargoBuild::progress`]).
    #[error("cargo build of {package} failed (cargo's messages are above)")]
    FailedShown {
        /// The package.
        package: String,
    },
    /// cargo succeeded but reported no `cdylib` for the package.
    #[error(
        "cargo built {package} but reported no cdylib artifact (is `crate-type = [\"cdylib\"]` set?)"
    )]
    NoArtifact {
        /// The package.
        package: String,
    },
}

/// How to build: which cargo, in which workspace, which profile, extra `rustc` flags.
#[derive(Debug, Clone)]
pub struct CargoBuild {
    cargo: String,
    workspace: PathBuf,
    release: bool,
    rustc_flags: Vec<String>,
    progress: bool,
}

impl CargoBuild {
    /// Builds in the workspace at `workspace`, with the cargo that runs us (`$CARGO`) or
    /// `cargo` from `PATH`, in the dev profile.
    pub fn new(workspace: impl AsRef<Path>) -> CargoBuild {
        CargoBuild {
            cargo: std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()),
            workspace: workspace.as_ref().to_owned(),
            release: false,
            rustc_flags: Vec::new(),
            progress: false,
        }
    }

    /// Uses the release profile.
    pub fn release(mut self, release: bool) -> CargoBuild {
        self.release = release;
        self
    }

    /// Lets cargo write its progress and diagnostics to our stderr as it goes.
    pub fn progress(mut self, progress: bool) -> CargoBuild {
        self.progress = progress;
        self
    }

    /// Passes flags to the final `rustc` invocation of the package only (`cargo rustc`).
    pub fn rustc_flags(mut self, flags: &[&str]) -> CargoBuild {
        self.rustc_flags = flags.iter().map(|flag| (*flag).to_owned()).collect();
        self
    }

    /// Builds `package` and returns the path of its `cdylib`.
    pub fn build(&self, package: &str) -> Result<PathBuf, BuildError> {
        let mut built = self.build_all(&[package])?;
        Ok(built
            .remove(package)
            .expect("build_all returns every package"))
    }

    /// Builds several packages in one cargo run and returns each one's `cdylib`.
    pub fn build_all(&self, packages: &[&str]) -> Result<HashMap<String, PathBuf>, BuildError> {
        let mut command = Command::new(&self.cargo);
        if self.rustc_flags.is_empty() {
            command.arg("build");
        } else {
            command.args(["rustc", "--lib"]);
        }
        for package in packages {
            command.args(["-p", package]);
        }
        command.args(["--message-format=json-render-diagnostics"]);
        if self.release {
            command.arg("--release");
        }
        if !self.rustc_flags.is_empty() {
            command.arg("--").args(&self.rustc_flags);
        }
        let messages = self.run(command, &packages.join(", "))?;
        packages
            .iter()
            .map(|package| {
                cdylib_from_messages(&messages, package)
                    .map(|path| ((*package).to_owned(), path))
                    .ok_or_else(|| BuildError::NoArtifact {
                        package: (*package).to_owned(),
                    })
            })
            .collect()
    }
}

impl CargoBuild {
    /// Runs a cargo command in the workspace; its standard output, or its diagnostics as
    /// the error.
    fn run(&self, mut command: Command, packages: &str) -> Result<String, BuildError> {
        let spawn_error = |source| BuildError::Spawn {
            cargo: self.cargo.clone(),
            source,
        };
        command.current_dir(&self.workspace).stdin(Stdio::null());
        let (success, stdout, stderr) = if self.progress {
            // cargo writes to our stderr itself: its progress bar and colours on a
            // terminal, its lines otherwise; the error need not repeat them.
            let mut child = command
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(spawn_error)?;
            let mut stdout = String::new();
            if let Some(mut cargo_stdout) = child.stdout.take() {
                use std::io::Read as _;
                cargo_stdout
                    .read_to_string(&mut stdout)
                    .map_err(spawn_error)?;
            }
            let status = child.wait().map_err(spawn_error)?;
            (status.success(), stdout, None)
        } else {
            let output = command.output().map_err(spawn_error)?;
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                Some(String::from_utf8_lossy(&output.stderr).into_owned()),
            )
        };
        if !success {
            let package = packages.to_owned();
            return Err(match stderr {
                Some(stderr) => BuildError::Failed { package, stderr },
                None => BuildError::FailedShown { package },
            });
        }
        Ok(stdout)
    }

    /// Builds the binary `name` of `package` and returns its path.
    pub fn build_binary(&self, package: &str, name: &str) -> Result<PathBuf, BuildError> {
        let mut command = Command::new(&self.cargo);
        command.args([
            "build",
            "-p",
            package,
            "--bin",
            name,
            "--message-format=json-render-diagnostics",
        ]);
        if self.release {
            command.arg("--release");
        }
        let stdout = self.run(command, package)?;
        stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|message| {
                message["reason"] == "compiler-artifact" && message["target"]["name"] == name
            })
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .ok_or_else(|| BuildError::NoArtifact {
                package: format!("{package} (binary {name})"),
            })
    }
}

/// Finds the `cdylib` of `package` in cargo's JSON messages.
fn cdylib_from_messages(messages: &str, package: &str) -> Option<PathBuf> {
    let crate_name = package.replace('-', "_");
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| {
            message["target"]["name"] == crate_name.as_str() || message["target"]["name"] == package
        })
        .filter(|message| {
            message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "cdylib"))
        })
        .flat_map(|message| {
            message["filenames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|name| name.as_str().map(PathBuf::from))
        })
        .rfind(|path| path.extension().is_some_and(|extension| extension == "so"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cdylib_among_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"serde","kind":["lib"]},"filenames":["/t/libserde.rlib"]}
not json
{"reason":"compiler-artifact","target":{"name":"counter_1_0_0","kind":["cdylib"]},"filenames":["/t/debug/libcounter_1_0_0.so"]}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            cdylib_from_messages(messages, "counter-1-0-0"),
            Some(PathBuf::from("/t/debug/libcounter_1_0_0.so"))
        );
        assert_eq!(cdylib_from_messages(messages, "kv"), None);
    }
}
