//! `graft dev`: run a release and hot-swap each of its plugins whenever cargo rebuilds it.
//!
//! Invariants:
//! - The dev host has a root of its own (`<workspace>/target/graft-dev` unless `--root` is
//!   given), marked by a file [`MARKER`] that lists the releases it assembled there. It
//!   deletes only what it created: its own earlier releases and the release record its
//!   host wrote. A root holding a release record or releases it did not write (an
//!   operator's root) is refused with exit code 3, before anything is touched.
//! - No rebuild is missed, however slowly cargo writes: every plugin's artifact is watched
//!   by file events *and* polled (size, modification time, inode), a changed artifact is
//!   read only once two looks a moment apart agree, and every artifact is looked at again
//!   after each swap. Cargo may replace the artifact by a hard link or a rename, or rewrite
//!   it in place through its other link in `deps/` (no event in the watched directory):
//!   the poll sees all of these. A file is loaded only when it is a whole ELF file (its
//!   section headers, written last, are inside it).
//! - A rejected build is reported on the terminal (stderr) in one block with the error,
//!   besides the log line; the old code keeps running, and the build is not retried until
//!   the artifact changes again.
//!
//! Tricky: `code_change` of a rebuild is told it upgrades from `<version>+dev.<N>` (see
//! `ReleaseHandler::hot_swap`), N counting the builds this host has run (1: the one it
//! booted).

use super::Failure;
use anyhow::{Context as _, anyhow};
use graft::control::ControlServer;
use graft::plugin::Sha256Digest;
use graft::release::Manifest;
use graft::release::assemble::{assemble, package_of};
use graft::release::handler::ReleaseHandler;
use graft::runtime::Runtime;
use semver::Version;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The file that marks a root as `graft dev`'s, listing the releases it assembled there.
pub(super) const MARKER: &str = "GRAFT_DEV";

/// How often the artifacts are looked at without a file event.
const POLL: Duration = Duration::from_millis(500);

/// How long an artifact must stay unchanged before it is read.
const SETTLE: Duration = Duration::from_millis(250);

/// What a look at an artifact saw, without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Look {
    length: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn look(path: &Path) -> Option<Look> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(Look {
        length: metadata.len(),
        modified: metadata.modified().ok(),
        inode: metadata.ino(),
    })
}

/// One plugin the dev host follows.
struct Watched {
    plugin: String,
    artifact: PathBuf,
    /// What the last look saw.
    seen: Option<Look>,
    /// The content last swapped in (or rejected).
    digest: Sha256Digest,
    /// The number of the build running now (1: the booted one).
    running_build: u64,
}

/// The dev root: `--root` when given, else `<workspace>/target/graft-dev`.
pub(super) fn dev_root(explicit: Option<&Path>, workspace: &Path) -> PathBuf {
    explicit
        .map(Path::to_owned)
        .unwrap_or_else(|| workspace.join("target").join("graft-dev"))
}

/// The releases `graft dev` assembled in `root` (from its marker), or `None` when the root
/// is not marked as a dev root.
fn marked_releases(root: &Path) -> Result<Option<BTreeSet<Version>>, Failure> {
    let marker = root.join(MARKER);
    let text = match std::fs::read_to_string(&marker) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(anyhow!(error)
                .context(format!("reading {}", marker.display()))
                .into());
        }
    };
    Ok(Some(
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(|line| Version::parse(line).ok())
            .collect(),
    ))
}

fn write_marker(root: &Path, releases: &BTreeSet<Version>) -> Result<(), Failure> {
    let mut text = String::from(
        "# This root belongs to `graft dev`: it assembled the releases below here and its host\n\
         # wrote the release record. `graft dev` deletes only these; remove this directory when\n\
         # you are done with it.\n",
    );
    for version in releases {
        text.push_str(&format!("{version}\n"));
    }
    let marker = root.join(MARKER);
    std::fs::write(&marker, text).with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// A refusal for safety (exit code 3).
fn refuse(message: String) -> Failure {
    Failure {
        code: 3,
        kind: "refused_dev_root",
        error: anyhow!(message),
    }
}

/// Checks that `root` is `graft dev`'s to use and returns the releases it assembled there
/// before. Refuses a root holding a release record or releases another command wrote.
fn claim(root: &Path, workspace: &Path) -> Result<BTreeSet<Version>, Failure> {
    let marked = marked_releases(root)?;
    let releases = root.join("releases");
    let record = releases.join(graft::release::record::RECORD_FILE);
    let default_root = dev_root(None, workspace);
    if marked.is_none() && record.exists() {
        return Err(refuse(format!(
            "refusing to run graft dev on the root {}: it holds a release record ({}) that graft dev did not write, so it is an operator's root and graft dev would replace its releases. Run graft dev without --root (it uses {}), or pass --root an empty directory",
            root.display(),
            record.display(),
            default_root.display()
        )));
    }
    let ours = marked.clone().unwrap_or_default();
    let mut foreign = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&releases) {
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Staging directories, the record, its previous copy and its temporary files
            // belong to whoever wrote the record (checked above).
            if name.starts_with('.') || name.starts_with(graft::release::record::RECORD_FILE) {
                continue;
            }
            if Version::parse(&name).is_ok_and(|version| ours.contains(&version)) {
                continue;
            }
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        return Err(refuse(format!(
            "refusing to run graft dev on the root {}: its releases/ holds {} that graft dev did not assemble. Run graft dev without --root (it uses {}), or pass --root an empty directory",
            root.display(),
            foreign.join(", "),
            default_root.display()
        )));
    }
    Ok(ours)
}

/// `graft dev`: a release whose plugins are hot-swapped on every rebuild.
pub(super) async fn dev(
    explicit_root: Option<&Path>,
    workspace: &Path,
    version: Option<Version>,
    http: Option<std::net::SocketAddr>,
    json: bool,
) -> Result<ExitCode, Failure> {
    use notify::Watcher;
    super::init_tracing();
    if http.is_some() {
        graft::metrics::enable();
    }
    let workspace = workspace
        .canonicalize()
        .with_context(|| format!("resolving the workspace {}", workspace.display()))?;
    let root = dev_root(explicit_root, &workspace);
    let version = match version {
        Some(version) => version,
        None => std::fs::read_dir(workspace.join("releases"))
            .with_context(|| format!("reading {}", workspace.join("releases").display()))?
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join("release.toml").is_file())
            .filter_map(|entry| Version::parse(&entry.file_name().to_string_lossy()).ok())
            .max()
            .ok_or_else(|| anyhow!("no releases under {}", workspace.join("releases").display()))?,
    };
    let manifest_path = workspace
        .join("releases")
        .join(version.to_string())
        .join("release.toml");

    // Nothing is touched before the root is known to be ours and not in use.
    let previous = claim(&root, &workspace)?;
    ControlServer::refuse_if_served(&root).await?;
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&root)
            .with_context(|| format!("creating {}", root.display()))?;
    }
    // The one host of this root until it exits: a second `graft dev` or `graft start`
    // still booting here is refused before it runs any plugin code.
    let _claim = ControlServer::claim_root(&root).await?;
    graft::http::remove_info(&root);
    let http = match http {
        Some(address) => Some(graft::http::HttpServer::bind(address).await?),
        None => None,
    };
    let mut ours = previous.clone();
    ours.insert(version.clone());
    // Marked before anything is assembled: what a crash leaves behind is known to be ours.
    write_marker(&root, &ours)?;
    // This release must be what boots: the other releases this command assembled here and
    // the record its host wrote go.
    let releases = root.join("releases");
    for old in previous.iter().filter(|old| **old != version) {
        let directory = releases.join(old.to_string());
        if directory.exists() {
            std::fs::remove_dir_all(&directory)
                .with_context(|| format!("removing {}", directory.display()))?;
        }
    }
    write_marker(&root, &BTreeSet::from([version.clone()]))?;
    for record in [
        graft::release::record::RECORD_FILE,
        graft::release::record::PREVIOUS_RECORD_FILE,
    ] {
        let _ = std::fs::remove_file(releases.join(record));
    }
    assemble(&manifest_path, &workspace, &root, false)?;

    let source = Manifest::read(&manifest_path)?;
    let mut packages = Vec::new();
    for (plugin, entry) in &source.plugins {
        let directory = graft::release::resolve_inside(
            &workspace,
            entry.crate_path.as_deref().unwrap_or(Path::new(".")),
        )
        .map_err(|message| anyhow!("plugins.{plugin}.crate: {message}"))?;
        let (package, _) = package_of(&directory).map_err(|message| anyhow!(message))?;
        packages.push((plugin.clone(), package));
    }
    let names: Vec<&str> = packages
        .iter()
        .map(|(_, package)| package.as_str())
        .collect();
    let built = graft::build::CargoBuild::new(&workspace).build_all(&names)?;
    let mut watched = Vec::new();
    for (plugin, package) in &packages {
        let artifact = built[package].clone();
        let seen = look(&artifact);
        let digest = Sha256Digest::of(
            &std::fs::read(&artifact).with_context(|| format!("reading {}", artifact.display()))?,
        );
        watched.push(Watched {
            plugin: plugin.clone(),
            artifact,
            seen,
            digest,
            running_build: 1,
        });
    }

    // One signal stream for the whole life of the host, from before the socket answers: a
    // client that sees the host up and stops it at once gets the orderly stop, and a
    // SIGINT that arrives while a swap runs waits in it instead of being missed.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the SIGINT handler")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let handler = Arc::new(ReleaseHandler::boot(&root, Runtime::new()).await?);
    let server = ControlServer::bind(&root).await?;
    tracing::info!(release = %version, root = %root.display(), socket = %server.path().display(), "dev host started; rebuild a plugin with cargo build to hot-swap it");
    let serving = tokio::spawn(server.serve(Arc::clone(&handler)));
    let observing = http.map(|server| super::serve_http(&root, server, &handler, json));

    let (notices, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = notices.send(());
        }
    })?;
    // The artifact's directory and cargo's `deps/` beside it (where rustc writes first).
    let directories: BTreeSet<PathBuf> = watched
        .iter()
        .filter_map(|watched| watched.artifact.parent().map(Path::to_owned))
        .flat_map(|directory| [directory.join("deps"), directory])
        .collect();
    for directory in &directories {
        // A directory that cannot be watched is still polled.
        if let Err(error) = watcher.watch(directory, notify::RecursiveMode::NonRecursive) {
            tracing::debug!(directory = %directory.display(), "not watched, polled only: {error}");
        }
    }
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            Some(()) = changes.recv() => {}
            _ = poll.tick() => {}
        }
        while changes.try_recv().is_ok() {}
        // Look again after every swap: a build that finished during one is not missed.
        while check_once(&handler, &mut watched).await {}
    }
    drop(watcher);
    serving.abort();
    let _ = serving.await;
    if let Some(observing) = observing {
        observing.abort();
        let _ = observing.await;
        graft::http::remove_info(&root);
    }
    handler.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Swaps in every artifact whose content changed since the last swap. Returns whether it
/// tried a swap (so the caller looks again).
async fn check_once(handler: &ReleaseHandler, watched: &mut [Watched]) -> bool {
    let mut swapped = false;
    for entry in watched.iter_mut() {
        let Some(first) = look(&entry.artifact) else {
            continue;
        };
        if entry.seen.as_ref() == Some(&first) {
            continue;
        }
        // Changed: wait until two looks a moment apart agree (cargo finished writing).
        let mut previous = first;
        let stable = loop {
            tokio::time::sleep(SETTLE).await;
            match look(&entry.artifact) {
                Some(current) if current == previous => break current,
                Some(current) => previous = current,
                None => break previous,
            }
        };
        let Ok(bytes) = std::fs::read(&entry.artifact) else {
            continue;
        };
        // A file cut short (a writer that paused longer than the settling time) is looked
        // at again on the next round, not loaded: mapping it could fault past its end.
        if !elf_complete(&bytes) {
            continue;
        }
        // Read after the looks agreed; if it changed meanwhile, the next look sees it.
        entry.seen = Some(stable);
        let digest = Sha256Digest::of(&bytes);
        if digest == entry.digest {
            continue;
        }
        entry.digest = digest;
        swapped = true;
        match handler
            .hot_swap(&entry.plugin, &entry.artifact, entry.running_build)
            .await
        {
            Ok(report) => {
                entry.running_build += 1;
                tracing::info!(
                    plugin = %entry.plugin,
                    build = entry.running_build,
                    from = %report.from,
                    migrated = report.actors_migrated,
                    longest_pause_us = report.longest_pause.as_micros() as u64,
                    "hot-swapped to the new build"
                );
            }
            Err(error) => {
                let error = super::describe(&anyhow::Error::from(error));
                tracing::error!(plugin = %entry.plugin, "new build rejected, the old code keeps running: {error}");
                eprintln!(
                    "{}",
                    rejection_block(&entry.plugin, &entry.artifact, &error)
                );
            }
        }
    }
    swapped
}

/// Whether `bytes` hold a whole 64-bit little-endian ELF file: every table and loadable
/// segment the header names lies inside it. A linker writes the section headers last, so
/// a file still being written fails this.
fn elf_complete(bytes: &[u8]) -> bool {
    let field = |offset: usize, width: usize| -> Option<u64> {
        let slice = bytes.get(offset..offset + width)?;
        let mut buffer = [0u8; 8];
        buffer[..width].copy_from_slice(slice);
        Some(u64::from_le_bytes(buffer))
    };
    let within = |start: u64, length: u64| {
        start
            .checked_add(length)
            .is_some_and(|end| end <= bytes.len() as u64)
    };
    // ELFCLASS64, little-endian.
    if bytes.get(0..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(program_offset), Some(section_offset)) = (field(0x20, 8), field(0x28, 8)) else {
        return false;
    };
    let (Some(program_size), Some(program_count)) = (field(0x36, 2), field(0x38, 2)) else {
        return false;
    };
    let (Some(section_size), Some(section_count)) = (field(0x3A, 2), field(0x3C, 2)) else {
        return false;
    };
    if !within(program_offset, program_size * program_count)
        || !within(section_offset, section_size * section_count)
    {
        return false;
    }
    (0..program_count).all(|index| {
        let header = (program_offset + index * program_size) as usize;
        const LOAD: u64 = 1;
        match (
            field(header, 4),
            field(header + 0x08, 8),
            field(header + 0x20, 8),
        ) {
            (Some(LOAD), Some(offset), Some(file_size)) => within(offset, file_size),
            (Some(_), Some(_), Some(_)) => true,
            _ => false,
        }
    })
}

/// The block a rejected build prints on the terminal.
fn rejection_block(plugin: &str, artifact: &Path, error: &str) -> String {
    let rule = "=".repeat(78);
    format!(
        "\n{rule}\ngraft dev: the new build of plugin {plugin} was REJECTED; the old code keeps running.\n  build: {}\n  error: {error}\nFix it and run cargo build again; the next build is tried as soon as cargo writes it.\n{rule}\n",
        artifact.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unmarked_root_with_a_record_is_refused_with_exit_code_3() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("releases/1.0.0")).unwrap();
        std::fs::write(root.path().join("releases/RELEASES.json"), "{}").unwrap();
        let refusal = claim(root.path(), Path::new("/app")).err().unwrap();
        assert_eq!(refusal.code, 3);
        let message = refusal.error.to_string();
        assert!(
            message.contains(&root.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("/app/target/graft-dev"), "{message}");
    }

    #[test]
    fn a_marked_root_is_claimed_with_its_releases_and_foreign_ones_are_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("releases/0.1.0")).unwrap();
        std::fs::write(root.path().join("releases/RELEASES.json"), "{}").unwrap();
        assert!(write_marker(root.path(), &BTreeSet::from([Version::new(0, 1, 0)])).is_ok());
        assert_eq!(
            claim(root.path(), Path::new("/app")).ok().unwrap(),
            BTreeSet::from([Version::new(0, 1, 0)])
        );
        std::fs::create_dir_all(root.path().join("releases/2.0.0")).unwrap();
        let refusal = claim(root.path(), Path::new("/app")).err().unwrap();
        assert_eq!(refusal.code, 3);
        assert!(refusal.error.to_string().contains("2.0.0"));
    }

    #[test]
    fn a_library_cut_short_is_not_complete() {
        // This test binary is a whole ELF file; its first part is not.
        let whole = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_complete(&whole));
        assert!(!elf_complete(&whole[..whole.len() - 1]));
        assert!(!elf_complete(&whole[..whole.len() / 2]));
        assert!(!elf_complete(&whole[..10]));
        assert!(!elf_complete(b""));
    }

    #[test]
    fn the_rejection_block_names_the_plugin_and_the_error() {
        let block = rejection_block("hello", Path::new("/t/libhello.so"), "missing field `x`");
        assert!(block.contains("plugin hello was REJECTED"));
        assert!(block.contains("error: missing field `x`"));
    }
}
