//! Releases in the fleet's object store: `graft fleet publish` uploads an assembled
//! release; hosts (and `graft fleet fetch`) download one, verify it and unpack it into
//! their root.
//!
//! Layout in the bucket `graft_<fleet>_releases`: `<version>/<library>` for each plugin
//! library the manifest names (its `library` path, e.g. `1.1.0/lib/counter-1.1.0.so`),
//! then `<version>/release.toml`, the assembled manifest, uploaded last: a release whose
//! manifest is there has all its libraries there.
//!
//! Invariants:
//! - Nothing downloaded is trusted: the manifest is parsed and validated as an assembled
//!   one (every plugin with a relative library path and a SHA-256), its version must be
//!   the one asked for, and every library's SHA-256 is computed over the downloaded
//!   bytes and compared with the manifest's before the release is unpacked, so nothing
//!   from the store is ever loaded unverified — and the loader verifies again at load.
//! - Unpacking is atomic: the release is written and fsynced in a staging directory that
//!   this process owns (`releases/.assembling-<version>-fleet`, swept like an interrupted
//!   build if the process dies) and renamed into place; a refused download leaves nothing.
//! - A release already assembled in the root is kept, not replaced.
//! - Publishing verifies the local release first: a corrupted release is not spread.
//!
//! Tricky: the object store checks its own digest of each object, but that digest is
//! whatever the uploader computed; only the manifest's digests say what the release is.

use super::{DigestMismatch, Fleet, FleetError};
use crate::ownership::OwnedDirectory;
use crate::plugin::Sha256Digest;
use crate::release::Manifest;
use crate::release::assemble::{read_assembled, releases_directory, swap_into_place};
use semver::Version;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt as _;

/// The manifest's file name in a release directory and in the store.
const MANIFEST: &str = "release.toml";

/// What [`fetch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The release was downloaded, verified and unpacked.
    Unpacked,
    /// It was already assembled in the root.
    AlreadyThere,
}

/// The fleet's releases bucket, created if needed.
pub async fn releases_bucket(
    fleet: &Fleet,
) -> Result<async_nats::jetstream::object_store::ObjectStore, FleetError> {
    let name = fleet.namespace.releases_bucket();
    if let Ok(store) = fleet.jetstream.get_object_store(&name).await {
        return Ok(store);
    }
    let created = fleet
        .jetstream
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: name.clone(),
            description: Some("graft: assembled releases (manifests and libraries)".into()),
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        Err(error) => fleet
            .jetstream
            .get_object_store(&name)
            .await
            .map_err(|_| FleetError::jetstream(format!("creating bucket {name}"), error)),
    }
}

/// The plugins of `manifest` as (plugin, library path, expected digest); refuses an entry
/// without a library or digest, a library path that is not relative, or a malformed
/// digest.
fn libraries(
    manifest: &Manifest,
    version: &Version,
) -> Result<Vec<(String, PathBuf, Sha256Digest)>, FleetError> {
    let mut found = Vec::new();
    for (plugin, entry) in &manifest.plugins {
        let invalid = |message: String| FleetError::InvalidRelease {
            version: version.clone(),
            message,
        };
        let library = entry
            .library
            .clone()
            .ok_or_else(|| invalid(format!("plugin {plugin} has no library")))?;
        crate::release::check_relative(&library)
            .map_err(|message| invalid(format!("plugin {plugin}: {message}")))?;
        let digest: Sha256Digest = entry
            .sha256
            .as_deref()
            .ok_or_else(|| invalid(format!("plugin {plugin} has no sha256")))?
            .parse()
            .map_err(|error| invalid(format!("plugin {plugin}: {error}")))?;
        found.push((plugin.clone(), library, digest));
    }
    Ok(found)
}

/// Whether `bytes`, the library `library` of `plugin` in release `version`, have the
/// manifest's digest `expected`; [`FleetError::DigestMismatch`] naming both if not.
fn verify(
    version: &Version,
    plugin: &str,
    library: &Path,
    expected: &Sha256Digest,
    bytes: &[u8],
) -> Result<(), FleetError> {
    let found = Sha256Digest::of(bytes);
    if found == *expected {
        return Ok(());
    }
    Err(FleetError::DigestMismatch(Box::new(DigestMismatch {
        version: version.clone(),
        plugin: plugin.to_owned(),
        library: library.to_path_buf(),
        expected: expected.to_string(),
        found: found.to_string(),
    })))
}

/// The object name of `relative` in release `version`.
fn object_name(version: &Version, relative: &Path) -> String {
    format!("{version}/{}", relative.to_string_lossy())
}

/// Uploads the release `version` assembled under `root`: its libraries, then its
/// manifest. Each library is checked against the manifest's digest first. Returns the
/// number of bytes uploaded.
pub async fn publish(fleet: &Fleet, root: &Path, version: &Version) -> Result<u64, FleetError> {
    let assembled = read_assembled(root, version).map_err(|error| FleetError::InvalidRelease {
        version: version.clone(),
        message: error.to_string(),
    })?;
    let store = releases_bucket(fleet).await?;
    let mut uploaded = 0;
    for (plugin, library, expected) in libraries(&assembled.manifest, version)? {
        let path = assembled.directory.join(&library);
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|source| FleetError::Io {
                action: "reading",
                path: path.clone(),
                source,
            })?;
        verify(version, &plugin, &library, &expected, &bytes)?;
        put(&store, &object_name(version, &library), &bytes).await?;
        uploaded += bytes.len() as u64;
    }
    let manifest_path = assembled.directory.join(MANIFEST);
    let manifest = tokio::fs::read(&manifest_path)
        .await
        .map_err(|source| FleetError::Io {
            action: "reading",
            path: manifest_path,
            source,
        })?;
    put(
        &store,
        &object_name(version, Path::new(MANIFEST)),
        &manifest,
    )
    .await?;
    uploaded += manifest.len() as u64;
    Ok(uploaded)
}

/// Puts `bytes` as object `name`.
async fn put(
    store: &async_nats::jetstream::object_store::ObjectStore,
    name: &str,
    bytes: &[u8],
) -> Result<(), FleetError> {
    let mut reader = bytes;
    store
        .put(name, &mut reader)
        .await
        .map_err(|error| FleetError::jetstream(format!("uploading {name}"), error))?;
    Ok(())
}

/// Downloads object `name`; `None` if the store has no such object.
async fn get(
    store: &async_nats::jetstream::object_store::ObjectStore,
    name: &str,
) -> Result<Option<Vec<u8>>, FleetError> {
    use async_nats::jetstream::object_store::GetErrorKind;
    let mut object = match store.get(name).await {
        Ok(object) => object,
        Err(error) if error.kind() == GetErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(FleetError::jetstream(format!("downloading {name}"), error)),
    };
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|error| FleetError::jetstream(format!("downloading {name}"), error))?;
    Ok(Some(bytes))
}

/// Downloads release `version` from the fleet's store, verifies every library against
/// the manifest's SHA-256 and unpacks it into `root`'s releases directory (see the
/// module's invariants). A release already assembled there is left as it is.
pub async fn fetch(fleet: &Fleet, root: &Path, version: &Version) -> Result<Fetched, FleetError> {
    let releases = releases_directory(root);
    let target = releases.join(version.to_string());
    if target.join(MANIFEST).is_file() {
        return Ok(Fetched::AlreadyThere);
    }
    let store = releases_bucket(fleet).await?;
    let manifest_name = object_name(version, Path::new(MANIFEST));
    let manifest_bytes = get(&store, &manifest_name)
        .await?
        .ok_or_else(|| FleetError::NotPublished(version.clone()))?;
    let invalid = |message: String| FleetError::InvalidRelease {
        version: version.clone(),
        message,
    };
    let manifest_text = String::from_utf8(manifest_bytes.clone())
        .map_err(|_| invalid("the manifest is not UTF-8".to_owned()))?;
    let shown = PathBuf::from(&manifest_name);
    let manifest =
        Manifest::parse(&shown, &manifest_text).map_err(|error| invalid(error.to_string()))?;
    manifest
        .validate(&shown, true)
        .map_err(|error| invalid(error.to_string()))?;
    if manifest.release.version != *version {
        return Err(invalid(format!(
            "the manifest is for {}",
            manifest.release.version
        )));
    }
    // Everything is downloaded and verified before anything is written.
    let mut files = Vec::new();
    for (plugin, library, expected) in libraries(&manifest, version)? {
        let name = object_name(version, &library);
        let bytes = get(&store, &name).await?.ok_or_else(|| {
            invalid(format!(
                "library {} of plugin {plugin} is missing",
                library.display()
            ))
        })?;
        verify(version, &plugin, &library, &expected, &bytes)?;
        files.push((library, bytes));
    }
    files.push((PathBuf::from(MANIFEST), manifest_bytes));
    let root = root.to_path_buf();
    let version = version.clone();
    tokio::task::spawn_blocking(move || unpack(&root, &version, &files))
        .await
        .map_err(|error| FleetError::jetstream("unpacking", error))?
}

/// Writes verified `files` into a staging directory and renames it into place.
fn unpack(
    root: &Path,
    version: &Version,
    files: &[(PathBuf, Vec<u8>)],
) -> Result<Fetched, FleetError> {
    use std::io::Write as _;
    let releases = releases_directory(root);
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| FleetError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(&releases).map_err(io("creating", &releases))?;
    let staging = OwnedDirectory::create(&releases, &format!(".assembling-{version}-fleet"))
        .map_err(|error| FleetError::Io {
            action: "creating",
            path: releases.clone(),
            source: std::io::Error::other(error.to_string()),
        })?;
    for (relative, bytes) in files {
        let path = staging.path().join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        let mut file = std::fs::File::create(&path).map_err(io("writing", &path))?;
        file.write_all(bytes).map_err(io("writing", &path))?;
        file.sync_all().map_err(io("writing", &path))?;
    }
    let target = releases.join(version.to_string());
    if target.join(MANIFEST).is_file() {
        return Ok(Fetched::AlreadyThere);
    }
    for directory in [staging.path().join("lib"), staging.path().to_path_buf()] {
        if let Ok(handle) = std::fs::File::open(&directory) {
            let _ = handle.sync_all();
        }
    }
    swap_into_place(staging.path(), &target).map_err(io("unpacking", &target))?;
    // `staging` now names what was at the target (nothing, or a partial directory
    // without a manifest); dropping it removes that.
    Ok(Fetched::Unpacked)
}
