//! What the host and its clients trust on disk: the root directory is checked the way
//! OpenSSH's `StrictModes` checks `~/.ssh` before anything in it is used.
//!
//! A path graft relies on — the root, its `run/` and `releases/`, the release record (and
//! its previous copy), each release directory with its manifest and libraries, and the
//! control socket — must be:
//! - not a symbolic link (never followed: a link would let whoever made it point the host
//!   at a directory to chmod or a library to run);
//! - owned by the user running graft, or by root (uid 0);
//! - not writable by group or others (else another user could plant a socket or a
//!   library that then runs as this user).
//!
//! The root's ancestors must be owned by this user or by root and, when writable by
//! others, carry the sticky bit (as `/tmp` does), so nobody else can rename the root away.
//! A group-writable ancestor is accepted (shared build directories often are; the group is
//! trusted there), unlike OpenSSH, which refuses it.
//!
//! Invariant: every check uses `lstat` (`symlink_metadata`), never `stat`; a path that is
//! missing is not an error here (the caller creates it or reports it missing).
//!
//! Tricky: checks and uses are separate system calls. That is sound because everything
//! checked is writable only by this user (or root) — a link on the root's path included:
//! only its owner, this user or root, can repoint it — so nobody else can swap a path
//! between the check and its use. The exception is a group-writable ancestor, whose group
//! is trusted.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A path in the root cannot be trusted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TrustError {
    /// Another user can write it.
    #[error(
        "{path} is writable by {who} (mode {mode:03o}): another user could plant files the host trusts; \
         fix it with `chmod go-w {path}`"
    )]
    Writable {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// "group", "others" or "group and others".
        who: &'static str,
    },
    /// Someone else owns it.
    #[error(
        "{path} is owned by uid {owner}, not by uid {expected} (the user running graft) or root; \
         run graft as its owner"
    )]
    Owner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The user running graft.
        expected: u32,
    },
    /// It is a symbolic link.
    #[error("{path} is a symbolic link; graft does not follow symbolic links in its root")]
    SymbolicLink {
        /// The path.
        path: PathBuf,
    },
    /// It is not the kind of file expected.
    #[error("{path} is not a {expected}")]
    Kind {
        /// The path.
        path: PathBuf,
        /// "directory", "socket" or "regular file".
        expected: &'static str,
    },
    /// It could not be inspected.
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The kind of file a checked path must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Directory,
    /// A regular file.
    File,
    /// A Unix socket.
    Socket,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Directory => "directory",
            Kind::File => "regular file",
            Kind::Socket => "socket",
        }
    }

    fn matches(self, file_type: std::fs::FileType) -> bool {
        match self {
            Kind::Directory => file_type.is_dir(),
            Kind::File => file_type.is_file(),
            Kind::Socket => file_type.is_socket(),
        }
    }
}

/// The effective user id of this process.
pub fn current_user() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Checks one path (not following a link). `Ok(false)` when it does not exist.
pub fn check(path: &Path, kind: Kind) -> Result<bool, TrustError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(TrustError::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    let file_type = metadata.file_type();
    if file_type.is_symlink() {
        return Err(TrustError::SymbolicLink {
            path: path.to_owned(),
        });
    }
    if !kind.matches(file_type) {
        return Err(TrustError::Kind {
            path: path.to_owned(),
            expected: kind.name(),
        });
    }
    check_owner_and_mode(path, &metadata, Place::Inside)?;
    Ok(true)
}

/// Where a checked path stands: the root's own parts, or an ancestor of the root.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Inside,
    Ancestor,
}

fn check_owner_and_mode(
    path: &Path,
    metadata: &std::fs::Metadata,
    place: Place,
) -> Result<(), TrustError> {
    let expected = current_user();
    let owner = metadata.uid();
    if owner != expected && owner != 0 {
        return Err(TrustError::Owner {
            path: path.to_owned(),
            owner,
            expected,
        });
    }
    let mode = metadata.mode() & 0o7777;
    // The same rule for every kind: a socket writable by others would let them connect.
    let group_writable = mode & 0o020 != 0 && place == Place::Inside;
    let who = match (group_writable, mode & 0o002 != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    let sticky = mode & 0o1000 != 0;
    match who {
        Some(_) if place == Place::Ancestor && sticky => Ok(()),
        Some(who) => Err(TrustError::Writable {
            path: path.to_owned(),
            mode: mode & 0o777,
            who,
        }),
        None => Ok(()),
    }
}

/// Checks the root's ancestors: owned by this user or root, and writable by others only
/// with the sticky bit.
fn check_ancestors(root: &Path) -> Result<(), TrustError> {
    let absolute = std::path::absolute(root).map_err(|source| TrustError::Inspect {
        path: root.to_owned(),
        source,
    })?;
    let inspect = |path: &Path| {
        std::fs::symlink_metadata(path).map_err(|source| TrustError::Inspect {
            path: path.to_owned(),
            source,
        })
    };
    // The path as written: a link on it must belong to this user or root (only they can
    // repoint it); a directory on it must be safe like any ancestor.
    for ancestor in absolute.ancestors().skip(1) {
        let metadata = inspect(ancestor)?;
        if metadata.file_type().is_symlink() {
            let owner = metadata.uid();
            let expected = current_user();
            if owner != expected && owner != 0 {
                return Err(TrustError::Owner {
                    path: ancestor.to_owned(),
                    owner,
                    expected,
                });
            }
        } else {
            check_owner_and_mode(ancestor, &metadata, Place::Ancestor)?;
        }
    }
    // The directories the links lead through.
    let parent = absolute.parent().unwrap_or(&absolute);
    let resolved = parent
        .canonicalize()
        .map_err(|source| TrustError::Inspect {
            path: parent.to_owned(),
            source,
        })?;
    for ancestor in resolved.ancestors() {
        check_owner_and_mode(ancestor, &inspect(ancestor)?, Place::Ancestor)?;
    }
    Ok(())
}

/// Checks the root, its ancestors, `run/`, `releases/` and the release record (and its
/// previous copy).
pub fn check_root(root: &Path) -> Result<(), TrustError> {
    check_ancestors(root)?;
    check(root, Kind::Directory)?;
    check(&root.join("run"), Kind::Directory)?;
    let releases = root.join("releases");
    if check(&releases, Kind::Directory)? {
        for record in [
            crate::release::record::RECORD_FILE,
            crate::release::record::PREVIOUS_RECORD_FILE,
        ] {
            check(&releases.join(record), Kind::File)?;
        }
    }
    Ok(())
}

/// Checks an assembled release directory before anything in it is read: the directory,
/// its manifest, its `lib/` and every file in it.
pub fn check_release(directory: &Path) -> Result<(), TrustError> {
    check(directory, Kind::Directory)?;
    check(&directory.join("release.toml"), Kind::File)?;
    let libraries = directory.join("lib");
    if check(&libraries, Kind::Directory)? {
        let entries = std::fs::read_dir(&libraries).map_err(|source| TrustError::Inspect {
            path: libraries.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| TrustError::Inspect {
                path: libraries.clone(),
                source,
            })?;
            check(&entry.path(), Kind::File)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_root_passes_and_missing_parts_are_not_errors() {
        let root = tempfile::tempdir().unwrap();
        check_root(root.path()).unwrap();
        std::fs::create_dir(root.path().join("releases")).unwrap();
        std::fs::create_dir(root.path().join("run")).unwrap();
        check_root(root.path()).unwrap();
    }

    #[test]
    fn writable_by_others_is_refused_naming_the_path_and_the_mode() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("run");
        std::fs::create_dir(&run).unwrap();
        set_mode(&run, 0o777);
        let error = check_root(root.path()).unwrap_err();
        assert!(
            matches!(&error, TrustError::Writable { path, mode: 0o777, who: "group and others" } if *path == run),
            "{error}"
        );
        assert!(error.to_string().contains("chmod go-w"), "{error}");
        set_mode(&run, 0o720);
        assert!(matches!(
            check_root(root.path()),
            Err(TrustError::Writable { who: "group", .. })
        ));
        // Sticky helps an ancestor, not the root's own directories.
        set_mode(&run, 0o1777);
        assert!(matches!(
            check_root(root.path()),
            Err(TrustError::Writable { .. })
        ));
    }

    #[test]
    fn an_ancestor_others_can_write_needs_the_sticky_bit() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("root");
        std::fs::create_dir(&root).unwrap();
        set_mode(parent.path(), 0o777);
        let error = check_root(&root).unwrap_err();
        assert!(
            matches!(&error, TrustError::Writable { path, who: "others", .. } if path == parent.path()),
            "{error}"
        );
        set_mode(parent.path(), 0o1777);
        check_root(&root).unwrap();
        set_mode(parent.path(), 0o770);
        check_root(&root).unwrap();
    }

    #[test]
    fn a_link_on_the_roots_path_is_followed_and_its_target_checked() {
        let parent = tempfile::tempdir().unwrap();
        let real = parent.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::create_dir(real.join("root")).unwrap();
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        check_root(&link.join("root")).unwrap();
        set_mode(&real, 0o777);
        let error = check_root(&link.join("root")).unwrap_err();
        assert!(
            matches!(&error, TrustError::Writable { path, .. } if path.ends_with("real")),
            "{error}"
        );
    }

    #[test]
    fn a_symbolic_link_is_refused_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("run")).unwrap();
        let error = check_root(root.path()).unwrap_err();
        assert!(
            matches!(&error, TrustError::SymbolicLink { path } if path.ends_with("run")),
            "{error}"
        );
    }

    #[test]
    fn a_file_where_a_directory_belongs_is_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("releases"), b"").unwrap();
        assert!(matches!(
            check_root(root.path()),
            Err(TrustError::Kind {
                expected: "directory",
                ..
            })
        ));
    }

    #[test]
    fn a_release_with_a_library_others_can_write_is_refused() {
        let release = tempfile::tempdir().unwrap();
        std::fs::write(release.path().join("release.toml"), b"").unwrap();
        std::fs::create_dir(release.path().join("lib")).unwrap();
        let library = release.path().join("lib/kv-1.0.0.so");
        std::fs::write(&library, b"").unwrap();
        check_release(release.path()).unwrap();
        set_mode(&library, 0o666);
        let error = check_release(release.path()).unwrap_err();
        assert!(
            matches!(&error, TrustError::Writable { path, .. } if *path == library),
            "{error}"
        );
    }
}
