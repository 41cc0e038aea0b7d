//! Assembling a release (the analogue of `mix release`): build its plugin crates with cargo
//! and produce an installable directory — the manifest resolved to library files with
//! their SHA-256, and the libraries.
//!
//! Layout: `<root>/releases/<version>/release.toml` and
//! `<root>/releases/<version>/lib/<plugin>-<version>.so`.
//!
//! Invariants:
//! - An assembled release directory appears whole or not at all, and re-assembling one
//!   replaces it in one step: the release is written (and fsynced) in a staging directory
//!   `releases/.assembling-<version>-<pid>` that this process owns (locked, see
//!   [`crate::ownership`]), which is renamed into place — or, when the release exists,
//!   exchanged with it in one `renameat2(RENAME_EXCHANGE)` — then the old tree, now under
//!   the staging name, is removed. Killed at any instant, the root holds the old or the new
//!   complete release; never neither.
//! - A failed assembly (cargo, out of space, over the file-size limit) removes its staging
//!   directory; one cut short by a crash leaves it unlocked, and the next build or start
//!   removes it ([`remove_interrupted_builds`]).
//! - A source release directory named for a version (`releases/1.1.0/`) holds that
//!   version's manifest: one that declares another is refused before anything is built,
//!   since it would be assembled over the release of the version it declares (a directory
//!   copied for a new release and not yet edited).
//! - Running hosts load libraries by copying them first, so replacing an assembled release
//!   never touches code that is running.

use super::{Manifest, ManifestError, resolve_inside};
use crate::build::{BuildError, CargoBuild};
use crate::ownership::{OwnedDirectory, OwnershipError, remove_abandoned};
use crate::plugin::Sha256Digest;
use semver::Version;
use std::fs;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A release could not be assembled.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AssembleError {
    /// The root could be written by another user, or is a link.
    #[error("refusing to assemble into the root: {0}")]
    Untrusted(#[source] crate::trust::TrustError),
    /// The source manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A release directory named for one version holds a manifest declaring another.
    #[error(
        "release directory {directory}: its release.toml declares version {declared}, \
         expected {expected} (the directory's name); edit release.version or rename the directory"
    )]
    VersionMismatch {
        /// The source release directory.
        directory: PathBuf,
        /// The version its manifest declares.
        declared: Version,
        /// The version its name says.
        expected: Version,
    },
    /// A plugin crate is not where the manifest says, or its Cargo.toml does not match.
    #[error("manifest {manifest}: plugins.{plugin}.crate: {message}")]
    Crate {
        /// The manifest.
        manifest: PathBuf,
        /// The plugin.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// cargo failed.
    #[error("building plugins {plugins} for release {version}: {source}")]
    Build {
        /// The plugins.
        plugins: String,
        /// The release.
        version: Version,
        /// cargo's error.
        source: BuildError,
    },
    /// The staging directory could not be created.
    #[error("staging release {version}: {source}")]
    Staging {
        /// The release.
        version: Version,
        /// Why.
        #[source]
        source: OwnershipError,
    },
    /// Writing the release directory failed.
    #[error("writing release {version} to {path}: {source}")]
    Write {
        /// The release.
        version: Version,
        /// Where.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// An assembled release on disk.
#[derive(Debug, Clone)]
pub struct AssembledRelease {
    /// Its version.
    pub version: Version,
    /// Its directory.
    pub directory: PathBuf,
    /// The resolved manifest.
    pub manifest: Manifest,
}

/// The directory holding a root's assembled releases.
pub fn releases_directory(root: &Path) -> PathBuf {
    root.join("releases")
}

/// Reads a plugin crate's package name and version from its Cargo.toml.
pub fn package_of(crate_directory: &Path) -> Result<(String, Version), String> {
    let manifest_path = crate_directory.join("Cargo.toml");
    let text = fs::read_to_string(&manifest_path)
        .map_err(|error| format!("cannot read {}: {error}", manifest_path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|error| format!("{}: {error}", manifest_path.display()))?;
    let package = table
        .get("package")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| format!("{} has no [package]", manifest_path.display()))?;
    let name = package
        .get("name")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| format!("{} has no package.name", manifest_path.display()))?;
    let version = package
        .get("version")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| format!("{} has no package.version", manifest_path.display()))?;
    let version = Version::parse(version)
        .map_err(|error| format!("{}: package.version: {error}", manifest_path.display()))?;
    Ok((name.to_owned(), version))
}

/// Assembles the source release at `manifest_path` into `root`. Plugin crate paths are
/// relative to `workspace` (the directory that holds `plugins/` and `releases/`).
pub fn assemble(
    manifest_path: &Path,
    workspace: &Path,
    root: &Path,
    release_profile: bool,
) -> Result<AssembledRelease, AssembleError> {
    let mut manifest = Manifest::read(manifest_path)?;
    manifest.validate(manifest_path, false)?;
    let version = manifest.release.version.clone();
    check_directory_version(manifest_path, &version)?;
    let write_error = |path: &Path| {
        let version = version.clone();
        let path = path.to_owned();
        move |source| AssembleError::Write {
            version,
            path,
            source,
        }
    };
    let releases = releases_directory(root);
    // Explicit modes (less the umask): under a umask of 002 the defaults would make a root
    // that `graft start` refuses as group-writable.
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&releases)
            .map_err(write_error(&releases))?;
    }
    crate::trust::check_root(root).map_err(AssembleError::Untrusted)?;
    remove_interrupted_builds(root);
    super::record::remove_interrupted_writes(root);
    // Removed when dropped: on any error below, and after the swap (then it holds the old
    // release).
    let staging_directory = OwnedDirectory::create(
        &releases,
        &format!(".assembling-{version}-{}", std::process::id()),
    )
    .map_err(|source| AssembleError::Staging {
        version: version.clone(),
        source,
    })?;
    let staging = staging_directory.path().to_owned();
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o755)
            .create(staging.join("lib"))
            .map_err(write_error(&staging))?;
    }

    // Resolve every crate first, then build them all in one cargo run.
    let mut packages = Vec::new();
    for (name, entry) in manifest.plugins.iter_mut() {
        let crate_error = |message: String| AssembleError::Crate {
            manifest: manifest_path.to_owned(),
            plugin: name.clone(),
            message,
        };
        let relative = entry.crate_path.take().unwrap_or_default();
        let crate_directory = resolve_inside(workspace, &relative).map_err(crate_error)?;
        let (package, package_version) = package_of(&crate_directory).map_err(crate_error)?;
        if package_version != entry.version {
            return Err(crate_error(format!(
                "the crate is version {package_version}, the manifest expects {}",
                entry.version
            )));
        }
        packages.push((name.clone(), package));
    }
    let package_names: Vec<&str> = packages
        .iter()
        .map(|(_, package)| package.as_str())
        .collect();
    let built = CargoBuild::new(workspace)
        .release(release_profile)
        .build_all(&package_names)
        .map_err(|source| AssembleError::Build {
            plugins: packages
                .iter()
                .map(|(name, _)| name.clone())
                .collect::<Vec<_>>()
                .join(", "),
            version: version.clone(),
            source,
        })?;
    for (name, package) in &packages {
        let entry = manifest.plugins.get_mut(name).expect("resolved above");
        let artifact = &built[package];
        let bytes = fs::read(artifact).map_err(write_error(artifact))?;
        let library = PathBuf::from("lib").join(format!("{name}-{}.so", entry.version));
        let destination = staging.join(&library);
        write_synced(&destination, &bytes).map_err(write_error(&destination))?;
        entry.library = Some(library);
        entry.sha256 = Some(Sha256Digest::of(&bytes).to_string());
    }
    let resolved = staging.join("release.toml");
    write_synced(&resolved, manifest.to_toml().as_bytes()).map_err(write_error(&resolved))?;
    sync_directory(&staging.join("lib"))
        .and_then(|()| sync_directory(&staging))
        .map_err(write_error(&staging))?;

    let directory = releases.join(version.to_string());
    swap_into_place(&staging, &directory).map_err(write_error(&directory))?;
    drop(staging_directory);
    Ok(AssembledRelease {
        version,
        directory,
        manifest,
    })
}

/// Refuses a manifest whose directory is named for another version than it declares. A
/// directory whose name is not a version (a generated manifest) is not checked.
fn check_directory_version(manifest_path: &Path, declared: &Version) -> Result<(), AssembleError> {
    let Some(directory) = manifest_path.parent() else {
        return Ok(());
    };
    let Some(expected) = directory
        .file_name()
        .and_then(|name| Version::parse(&name.to_string_lossy()).ok())
    else {
        return Ok(());
    };
    if expected == *declared {
        return Ok(());
    }
    Err(AssembleError::VersionMismatch {
        directory: directory.to_owned(),
        declared: declared.clone(),
        expected,
    })
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_directory(path: &Path) -> std::io::Result<()> {
    fs::File::open(path)?.sync_all()
}

/// Puts the directory `staging` at `target` (both in one parent directory) in one step:
/// a rename when nothing is at `target`, else an exchange of the two
/// (`renameat2(RENAME_EXCHANGE)`), after which `staging` names the old tree. Then fsyncs
/// the parent.
pub fn swap_into_place(staging: &Path, target: &Path) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags, RenameFlags, renameat_with};
    let (Some(parent), Some(staging_name), Some(target_name)) =
        (staging.parent(), staging.file_name(), target.file_name())
    else {
        return Err(std::io::Error::other(
            "a staging or target path without a name",
        ));
    };
    if target.parent() != Some(parent) {
        return Err(std::io::Error::other(
            "the staging directory is not beside its target",
        ));
    }
    let parent = rustix::fs::open(
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    match renameat_with(
        &parent,
        staging_name,
        &parent,
        target_name,
        RenameFlags::NOREPLACE,
    ) {
        Ok(()) => {}
        Err(rustix::io::Errno::EXIST) => renameat_with(
            &parent,
            staging_name,
            &parent,
            target_name,
            RenameFlags::EXCHANGE,
        )?,
        Err(errno) => return Err(errno.into()),
    }
    rustix::fs::fsync(&parent)?;
    Ok(())
}

/// Removes staging directories of builds that died (`.assembling-*`, no live process
/// holding their lock; and `.retired-*` of builds before these were locked) from `root`'s
/// releases directory. Returns what it removed.
pub fn remove_interrupted_builds(root: &Path) -> Vec<PathBuf> {
    remove_abandoned(&releases_directory(root), |name| {
        name.starts_with(".assembling-") || name.starts_with(".retired-")
    })
}

/// Reads an assembled release's manifest and validates it.
pub fn read_assembled(root: &Path, version: &Version) -> Result<AssembledRelease, ManifestError> {
    let directory = releases_directory(root).join(version.to_string());
    let path = directory.join("release.toml");
    let manifest = Manifest::read(&path)?;
    manifest.validate(&path, true)?;
    if manifest.release.version != *version {
        return Err(ManifestError::Invalid {
            path,
            field: "release.version".to_owned(),
            message: format!(
                "expected {version} (the directory's name), found {}",
                manifest.release.version
            ),
        });
    }
    Ok(AssembledRelease {
        version: version.clone(),
        directory,
        manifest,
    })
}

/// The versions assembled under `root`, oldest first.
pub fn assembled_versions(root: &Path) -> Vec<Version> {
    let mut versions: Vec<Version> = fs::read_dir(releases_directory(root))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|entry| entry.path().join("release.toml").is_file())
                .filter_map(|entry| Version::parse(&entry.file_name().to_string_lossy()).ok())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a release tree whose two files both say `content`.
    fn write_tree(directory: &Path, content: &str) {
        fs::create_dir_all(directory.join("lib")).unwrap();
        fs::write(directory.join("release.toml"), content).unwrap();
        fs::write(directory.join("lib").join("plugin.so"), content).unwrap();
    }

    /// The content of the complete release at `directory`; panics if it is missing or torn.
    fn complete(directory: &Path) -> String {
        let manifest = fs::read_to_string(directory.join("release.toml"))
            .unwrap_or_else(|error| panic!("{}: {error}", directory.display()));
        let library = fs::read_to_string(directory.join("lib").join("plugin.so")).unwrap();
        assert_eq!(
            manifest,
            library,
            "a torn release at {}",
            directory.display()
        );
        manifest
    }

    fn staged(releases: &Path) -> OwnedDirectory {
        let staging = OwnedDirectory::create(releases, ".assembling-1.0.0-1").unwrap();
        write_tree(staging.path(), "new");
        staging
    }

    #[test]
    fn a_reassembly_killed_at_any_step_leaves_the_old_or_the_new_complete_release() {
        let root = tempfile::tempdir().unwrap();
        let releases = releases_directory(root.path());
        let target = releases.join("1.0.0");
        write_tree(&target, "old");

        // Killed while staging: the old release stays, the staging goes at the next build.
        let staging = staged(&releases);
        assert_eq!(complete(&target), "old");
        staging.abandon();
        let removed = remove_interrupted_builds(root.path());
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert_eq!(complete(&target), "old");

        // Killed right after the swap: the new release is in place, the old one (under the
        // staging name) goes at the next build.
        let staging = staged(&releases);
        swap_into_place(staging.path(), &target).unwrap();
        assert_eq!(complete(&target), "new");
        assert_eq!(complete(staging.path()), "old");
        staging.abandon();
        assert_eq!(remove_interrupted_builds(root.path()).len(), 1);
        assert_eq!(complete(&target), "new");

        // A whole run, and a first assembly (nothing to exchange with).
        let staging = staged(&releases);
        write_tree(staging.path(), "newer");
        swap_into_place(staging.path(), &target).unwrap();
        drop(staging);
        assert_eq!(complete(&target), "newer");
        let first = releases.join("2.0.0");
        let staging = staged(&releases);
        swap_into_place(staging.path(), &first).unwrap();
        drop(staging);
        assert_eq!(complete(&first), "new");
        let mut left: Vec<String> = fs::read_dir(&releases)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["1.0.0", "2.0.0"]);
    }
}
