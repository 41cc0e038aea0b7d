//! Files and directories owned by a live process, and the removal of those whose owner
//! died: the private copies of loaded libraries (`<root>/run/libraries/<pid>/`, one
//! directory per host or worker process), the staging directories of `graft build`
//! (`releases/.assembling-*`), the temporary files of the release record, and — for a
//! process without a root — its copies and worker sockets under this user's private part
//! of the temporary directory (`$TMPDIR/graft-<uid>/{plugins,socket}-<pid>`).
//!
//! Ownership is an exclusive `flock` that the owner takes on the entry itself (the
//! directory or the file) right after creating it and holds for as long as it uses the
//! entry. The kernel drops the lock when the process dies, however it dies (SIGKILL
//! included), so "can I take its lock?" tells a dead owner from a live one — a pid reused by
//! an unrelated process never makes leftovers look alive, and a live owner's entry is never
//! taken from it.
//!
//! Invariants:
//! - An owner verifies, after locking, that the path still names the inode it locked (a
//!   sweeper may have taken and removed a fresh entry before its owner locked it); if not,
//!   it creates another one.
//! - A sweeper removes an entry only while holding its lock and only if the path still names
//!   the inode it locked, so it never removes an entry that a live process owns.
//! - No entry made or swept here is reached through a symbolic link: the directories of
//!   [`private_directories`] are created and opened component by component with
//!   `O_NOFOLLOW` (mode 0700), and a symbolic link where an entry should be is refused
//!   (there) or skipped (by a sweep). The parent directory a caller passes by path is
//!   opened as given: it is the caller's to have checked (the root's parts pass
//!   [`crate::trust::check_root`] first).

use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// How many names [`OwnedDirectory::create`] tries before giving up.
const ATTEMPTS: u32 = 16;

/// A directory or file of this process could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OwnershipError {
    /// A symbolic link where a directory should be.
    #[error("{path} is a symbolic link; refusing to follow it")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// Something other than a directory where a directory should be.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// No free name was found (every candidate is owned by a live process).
    #[error("cannot create a private directory in {parent}: {attempts} names tried, all in use")]
    NoFreeName {
        /// The parent directory.
        parent: PathBuf,
        /// How many names were tried.
        attempts: u32,
    },
    /// A system call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`creating`, `locking`, …).
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> OwnershipError + 'a {
    move |errno| OwnershipError::Io {
        action,
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// The directory holding one private directory of library copies per process:
/// `<root>/run/libraries`.
pub fn libraries_directory(root: &Path) -> PathBuf {
    root.join("run").join("libraries")
}

/// Creates (mode 0700) or opens each of `components` under `root` in turn, never following
/// a symbolic link, and returns the last one's path. `root` itself is the operator's choice
/// and is opened as given.
pub fn private_directories(root: &Path, components: &[&str]) -> Result<PathBuf, OwnershipError> {
    let mut path = root.to_owned();
    let mut directory = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io_error("opening", root))?;
    for component in components {
        path.push(component);
        match rustix::fs::mkdirat(&directory, *component, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(errno) => return Err(io_error("creating", &path)(errno)),
        }
        directory = open_directory_at(&directory, component, &path)?;
    }
    Ok(path)
}

/// This user's private part of the temporary directory `temporary`, `graft-<uid>`
/// (0700), created if need be; `None` when it cannot be made or is not private: a symbolic
/// link, or a directory that another user owns or that others may enter.
fn private_temporary(temporary: &Path) -> Option<PathBuf> {
    let uid = rustix::process::geteuid().as_raw();
    let name = format!("graft-{uid}");
    let parent = rustix::fs::open(
        temporary,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    match rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(_) => return None,
    }
    let path = temporary.join(&name);
    let directory = open_directory_at(&parent, &name, &path).ok()?;
    let stat = rustix::fs::fstat(&directory).ok()?;
    (stat.st_uid == uid && stat.st_mode & 0o077 == 0).then_some(path)
}

/// A fresh directory of this process, `$TMPDIR/graft-<uid>/<kind>-<pid>`, for a process
/// without a root (a worker started without `--libraries`, a test, a tool), after removing
/// the `<kind>-*` directories there whose owner died: so a killed process's library
/// copies or socket are removed by the next one instead of filling the disk. `None` when
/// this user's part of the temporary directory is not private (a link, another user's, or
/// open to others):
/// the caller then makes a plain temporary directory.
pub fn temporary_for_this_process(kind: &str) -> Option<OwnedDirectory> {
    let parent = private_temporary(&std::env::temp_dir())?;
    let prefix = format!("{kind}-");
    remove_abandoned(&parent, |name| name.starts_with(&prefix));
    OwnedDirectory::create(&parent, &format!("{kind}-{}", std::process::id())).ok()
}

/// Opens the directory `name` in `parent` without following a symbolic link.
fn open_directory_at(
    parent: impl AsFd,
    name: &str,
    path: &Path,
) -> Result<OwnedFd, OwnershipError> {
    let parent = parent.as_fd();
    rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| {
        let is_link = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode).is_symlink());
        match errno {
            _ if is_link => OwnershipError::Symlink {
                path: path.to_owned(),
            },
            Errno::NOTDIR => OwnershipError::NotADirectory {
                path: path.to_owned(),
            },
            errno => io_error("opening", path)(errno),
        }
    })
}

/// Whether `name` in `parent` is still the inode open as `fd`.
fn still_names(parent: impl AsFd, name: &str, fd: impl AsFd) -> bool {
    let (Ok(named), Ok(open)) = (
        rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW),
        rustix::fs::fstat(fd),
    ) else {
        return false;
    };
    (named.st_dev, named.st_ino) == (open.st_dev, open.st_ino)
}

/// A directory this process owns (holds the lock of) and removes when dropped.
#[derive(Debug)]
pub struct OwnedDirectory {
    path: PathBuf,
    /// The directory itself, opened and locked.
    _lock: OwnedFd,
    /// False once [`OwnedDirectory::abandon`]ed.
    remove_on_drop: bool,
}

impl OwnedDirectory {
    /// Creates and locks a fresh directory (0700) named `name` in `parent` (which must
    /// exist). A leftover of that name whose owner died is removed first; when a live
    /// process owns it, `name-1`, `name-2`, … are tried.
    pub fn create(parent: &Path, name: &str) -> Result<OwnedDirectory, OwnershipError> {
        let parent_fd = rustix::fs::open(
            parent,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_error("opening", parent))?;
        let mut suffix = 0;
        for _ in 0..ATTEMPTS {
            let candidate = if suffix == 0 {
                name.to_owned()
            } else {
                format!("{name}-{suffix}")
            };
            let path = parent.join(&candidate);
            match rustix::fs::mkdirat(&parent_fd, candidate.as_str(), Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    if !remove_if_abandoned(&parent_fd, &candidate, &path) {
                        suffix += 1;
                    }
                    continue;
                }
                Err(errno) => return Err(io_error("creating", &path)(errno)),
            }
            let fd = match open_directory_at(&parent_fd, &candidate, &path) {
                Ok(fd) => fd,
                // Swept (or replaced) between its creation and its opening by a sweep of
                // another process that found it unlocked: take another name.
                Err(OwnershipError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    suffix += 1;
                    continue;
                }
                Err(error) => return Err(error),
            };
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                // A sweeper holds it and is removing it: take another name.
                Err(Errno::WOULDBLOCK) => {
                    suffix += 1;
                    continue;
                }
                Err(errno) => return Err(io_error("locking", &path)(errno)),
            }
            if still_names(&parent_fd, &candidate, &fd) {
                return Ok(OwnedDirectory {
                    path,
                    _lock: fd,
                    remove_on_drop: true,
                });
            }
            suffix += 1;
        }
        Err(OwnershipError::NoFreeName {
            parent: parent.to_owned(),
            attempts: ATTEMPTS,
        })
    }

    /// Creates this process's own directory in `parent`, named by its pid.
    pub fn for_this_process(parent: &Path) -> Result<OwnedDirectory, OwnershipError> {
        OwnedDirectory::create(parent, &std::process::id().to_string())
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock and leaves the directory behind — what dying does (for tests of
    /// the sweeps).
    pub fn abandon(mut self) {
        self.remove_on_drop = false;
    }
}

impl Drop for OwnedDirectory {
    fn drop(&mut self) {
        if !self.remove_on_drop {
            return;
        }
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %self.path.display(), "cannot remove a private directory: {error}");
            }
        }
    }
}

/// Locks a file this process has just created at `path` (a temporary file it is about to
/// write), so that no sweep removes it while it lives. Fails if a sweep got to it first.
pub fn lock_new_file(file: &fs::File, path: &Path) -> Result<(), OwnershipError> {
    rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive)
        .map_err(io_error("locking", path))?;
    let named = rustix::fs::lstat(path).map_err(io_error("checking", path))?;
    let open = rustix::fs::fstat(file).map_err(io_error("checking", path))?;
    if (named.st_dev, named.st_ino) != (open.st_dev, open.st_ino) {
        return Err(OwnershipError::Io {
            action: "locking",
            path: path.to_owned(),
            source: std::io::Error::other("the file was replaced before it was locked"),
        });
    }
    Ok(())
}

/// Removes `name` in `parent` (a file or a directory tree) if no live process holds its
/// lock. True if it is gone.
fn remove_if_abandoned(parent: impl AsFd, name: &str, path: &Path) -> bool {
    let parent = parent.as_fd();
    let Ok(fd) = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) else {
        return false;
    };
    if rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_err()
        || !still_names(parent, name, &fd)
    {
        return false;
    }
    let is_directory = rustix::fs::fstat(&fd)
        .is_ok_and(|stat| rustix::fs::FileType::from_raw_mode(stat.st_mode).is_dir());
    let removed = if is_directory {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Ok(()) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
        Err(error) => {
            tracing::warn!(path = %path.display(), "cannot remove a leftover: {error}");
            false
        }
    }
}

/// Removes every entry of `parent` whose name `matches` and whose owner is dead (no live
/// process holds its lock); symbolic links are skipped. Returns what it removed. A missing
/// `parent` holds nothing.
pub fn remove_abandoned(parent: &Path, matches: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(parent_fd) = rustix::fs::open(
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !matches(&name) || entry.file_type().is_ok_and(|kind| kind.is_symlink()) {
            continue;
        }
        let path = entry.path();
        if remove_if_abandoned(&parent_fd, &name, &path) {
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        tracing::info!(
            directory = %parent.display(),
            removed = removed.len(),
            "removed leftovers of processes that died"
        );
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn an_owned_directory_is_private_kept_from_sweeps_and_removed_when_dropped() {
        let root = tempfile::tempdir().unwrap();
        let parent = private_directories(root.path(), &["run", "libraries"]).unwrap();
        assert_eq!(parent, root.path().join("run").join("libraries"));
        let mode = fs::metadata(&parent).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let owned = OwnedDirectory::for_this_process(&parent).unwrap();
        assert_eq!(owned.path(), parent.join(std::process::id().to_string()));
        fs::write(owned.path().join("copy.so"), b"bytes").unwrap();
        assert!(remove_abandoned(&parent, |_| true).is_empty());
        assert!(owned.path().join("copy.so").exists());
        let path = owned.path().to_owned();
        drop(owned);
        assert!(!path.exists());
    }

    #[test]
    fn a_part_of_the_temporary_directory_that_is_not_private_is_not_used() {
        use std::os::unix::fs::symlink;
        let name = format!("graft-{}", rustix::process::geteuid().as_raw());
        // Made here: private.
        let fresh = tempfile::tempdir().unwrap();
        assert_eq!(
            private_temporary(fresh.path()),
            Some(fresh.path().join(&name))
        );
        // Others may enter it (as if another user had made it first, world-writable).
        let open = tempfile::tempdir().unwrap();
        fs::create_dir(open.path().join(&name)).unwrap();
        fs::set_permissions(open.path().join(&name), fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(private_temporary(open.path()), None);
        // A symbolic link to a private directory elsewhere.
        let linked = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::set_permissions(elsewhere.path(), fs::Permissions::from_mode(0o700)).unwrap();
        symlink(elsewhere.path(), linked.path().join(&name)).unwrap();
        assert_eq!(private_temporary(linked.path()), None);
        // Another user's, private to them (only root can make one here for a test).
        if rustix::process::geteuid().is_root() {
            let theirs = tempfile::tempdir().unwrap();
            fs::create_dir(theirs.path().join(&name)).unwrap();
            fs::set_permissions(theirs.path().join(&name), fs::Permissions::from_mode(0o700))
                .unwrap();
            std::os::unix::fs::chown(theirs.path().join(&name), Some(65534), Some(65534)).unwrap();
            assert_eq!(private_temporary(theirs.path()), None);
        }
    }

    #[test]
    fn a_temporary_directory_of_a_process_is_private_and_a_dead_ones_is_swept() {
        let first = temporary_for_this_process("ownership-test").expect("a private part");
        let parent = first.path().parent().unwrap().to_owned();
        let mode = fs::metadata(&parent).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(
            parent
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("graft-")
        );
        // A second one of this process takes another name; an abandoned one is swept by
        // the next creation, a live one is not.
        let second = temporary_for_this_process("ownership-test").unwrap();
        assert_ne!(first.path(), second.path());
        let abandoned = second.path().to_owned();
        fs::write(abandoned.join("copy.so"), b"bytes").unwrap();
        second.abandon();
        let third = temporary_for_this_process("ownership-test").unwrap();
        assert!(first.path().exists());
        assert!(third.path().exists());
        assert!(
            !abandoned.join("copy.so").exists(),
            "the abandoned directory was swept"
        );
    }

    #[test]
    fn a_directory_whose_lock_nobody_holds_is_swept_and_a_taken_name_is_reused() {
        let root = tempfile::tempdir().unwrap();
        let parent = private_directories(root.path(), &["libraries"]).unwrap();
        // A dead owner's directory: it exists, nobody holds its lock (even under our pid).
        let stale = parent.join(std::process::id().to_string());
        fs::create_dir(&stale).unwrap();
        fs::write(stale.join("copy.so"), b"bytes").unwrap();
        fs::create_dir(parent.join("12345")).unwrap();
        let owned = OwnedDirectory::for_this_process(&parent).unwrap();
        assert_eq!(owned.path(), stale);
        assert!(
            !stale.join("copy.so").exists(),
            "the stale content was removed"
        );
        let removed = remove_abandoned(&parent, |_| true);
        assert_eq!(removed, vec![parent.join("12345")]);
        assert!(owned.path().exists());
    }

    #[test]
    fn a_live_owners_name_is_not_taken() {
        let root = tempfile::tempdir().unwrap();
        let first = OwnedDirectory::create(root.path(), "staging").unwrap();
        let second = OwnedDirectory::create(root.path(), "staging").unwrap();
        assert_eq!(second.path(), root.path().join("staging-1"));
        assert!(first.path().exists());
    }

    #[test]
    fn symbolic_links_are_refused_and_never_swept_through() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        fs::write(elsewhere.path().join("precious"), b"keep").unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("run")).unwrap();
        let error = private_directories(root.path(), &["run", "libraries"]).unwrap_err();
        assert!(
            matches!(&error, OwnershipError::Symlink { path } if *path == root.path().join("run")),
            "{error}"
        );
        assert!(error.to_string().contains("symbolic link"), "{error}");
        assert!(!elsewhere.path().join("libraries").exists());
        let parent = root.path().join("sweep");
        fs::create_dir(&parent).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), parent.join("4242")).unwrap();
        assert!(remove_abandoned(&parent, |_| true).is_empty());
        assert!(elsewhere.path().join("precious").exists());
    }

    #[test]
    fn a_locked_file_is_kept_and_an_unlocked_one_swept() {
        let root = tempfile::tempdir().unwrap();
        let live = root.path().join(".live.writing");
        let file = fs::File::create(&live).unwrap();
        lock_new_file(&file, &live).unwrap();
        let dead = root.path().join(".dead.writing");
        fs::write(&dead, b"half").unwrap();
        let removed = remove_abandoned(root.path(), |name| name.ends_with(".writing"));
        assert_eq!(removed, vec![dead]);
        assert!(live.exists());
    }
}
