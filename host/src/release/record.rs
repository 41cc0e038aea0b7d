//! The release record, `releases/RELEASES.json`: which release is permanent (booted on
//! restart) and which were installed before (*old*); the statuses it gives each assembled
//! release (OTP's *unpacked*, *current*, *permanent*, *old*). Read at boot; written only by the
//! release handler's `make_permanent` and `remove` (and by the first boot, which makes the
//! oldest assembled release permanent).
//!
//! Invariants:
//! - Every write is atomic: a temporary file `.RELEASES.json.<random>.writing` in the same
//!   directory, locked by its writer ([`crate::ownership`]), written, fsynced, renamed over
//!   the record, and the directory fsynced. A write that fails (out of space, over the
//!   file-size limit) removes its temporary file and leaves the record as it was; one cut
//!   short by a crash leaves a temporary file that the next start or build removes
//!   ([`remove_interrupted_writes`]).
//! - Before each replace, the record being replaced — if it parses — is kept, written the
//!   same way, as `RELEASES.json.previous`. A record that does not parse is never kept, so
//!   the previous copy is always the last good one.
//! - A record that does not parse boots from the previous copy with a loud error in the
//!   log; when neither parses, boot refuses with [`RecordError::Corrupt`], which names both
//!   files and the command that repairs the root.

use super::assemble::{assembled_versions, read_assembled, releases_directory};
use crate::ownership::{OwnershipError, lock_new_file, remove_abandoned};
use semver::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The file recording the permanent release and the old ones.
pub const RECORD_FILE: &str = "RELEASES.json";

/// The last good record before the latest replace.
pub const PREVIOUS_RECORD_FILE: &str = "RELEASES.json.previous";

/// How temporary files of the record start …
const TEMPORARY_PREFIX: &str = ".RELEASES.json.";
/// … and end.
const TEMPORARY_SUFFIX: &str = ".writing";

/// The release record could not be read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Neither the record nor its previous copy is readable.
    #[error(
        "the release record {path} is corrupt ({message}) and {previous} {previous_message}; to repair the root, run `rm '{path}'` (the next start boots the oldest assembled release, {oldest}, and records it as permanent; install and make permanent another one from there)"
    )]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// Why it is unreadable.
        message: String,
        /// Its previous copy.
        previous: PathBuf,
        /// Why that is unreadable too (`is missing`, `is corrupt too (...)`).
        previous_message: String,
        /// The release a start would boot after the repair.
        oldest: String,
    },
    /// Writing failed; the record is as it was.
    #[error("writing the release record {path}: {source}")]
    Write {
        /// The file being replaced.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The temporary file could not be locked.
    #[error("writing the release record: {0}")]
    Lock(#[source] OwnershipError),
}

/// The record's contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// The release booted on restart.
    pub(super) permanent: Option<Version>,
    /// Releases installed before.
    #[serde(default)]
    pub(super) old: BTreeSet<Version>,
}

/// A release's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseStatus {
    /// Assembled, never installed here.
    Unpacked,
    /// Running, not yet permanent.
    Current,
    /// Booted on restart (and running, unless another release is current).
    Permanent,
    /// Installed before, now replaced.
    Old,
}

impl ReleaseStatus {
    /// The status as every output spells it: `unpacked`, `current`, `permanent`, `old`
    /// (the same word as in `graft releases --json`).
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Unpacked => "unpacked",
            ReleaseStatus::Current => "current",
            ReleaseStatus::Permanent => "permanent",
            ReleaseStatus::Old => "old",
        }
    }
}

impl std::fmt::Display for ReleaseStatus {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One line of `which_releases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseInfo {
    /// The release's name.
    pub name: String,
    /// Its version.
    pub version: Version,
    /// Its status.
    pub status: ReleaseStatus,
    /// Whether it is running now.
    pub running: bool,
}

impl Record {
    /// The status of `version` with `current` running: *permanent* wins over *current*
    /// (a permanent release that is running is reported as permanent, and `running`).
    pub(super) fn status(&self, version: &Version, current: &Version) -> ReleaseStatus {
        if self.permanent.as_ref() == Some(version) {
            ReleaseStatus::Permanent
        } else if version == current {
            ReleaseStatus::Current
        } else if self.old.contains(version) {
            ReleaseStatus::Old
        } else {
            ReleaseStatus::Unpacked
        }
    }

    /// The record once `version` is made permanent: the permanent release it replaces
    /// becomes *old*; `version` is no longer *old*.
    pub(super) fn made_permanent(&self, version: &Version) -> Record {
        let mut record = self.clone();
        if let Some(previous) = record.permanent.replace(version.clone()) {
            record.old.insert(previous);
        }
        record.old.remove(version);
        record
    }
}

/// Every assembled release under `root` with its status, oldest first. Each release
/// directory is checked before it is read, as every one is; one that fails shows no name
/// (an install of it says why).
pub(super) fn statuses(root: &Path, current: &Version, record: &Record) -> Vec<ReleaseInfo> {
    assembled_versions(root)
        .into_iter()
        .map(|version| {
            let directory = releases_directory(root).join(version.to_string());
            let name = crate::trust::check_release(&directory)
                .ok()
                .and_then(|()| read_assembled(root, &version).ok())
                .map(|release| release.manifest.release.name)
                .unwrap_or_default();
            ReleaseInfo {
                name,
                status: record.status(&version, current),
                running: version == *current,
                version,
            }
        })
        .collect()
}

/// The record's path under `root`.
pub fn record_path(root: &Path) -> PathBuf {
    releases_directory(root).join(RECORD_FILE)
}

/// Parses the file at `path`: `Ok(None)` when it does not exist, `Err(why)` when it cannot
/// be read or does not parse.
fn parse(path: &Path) -> Result<Option<Record>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|error| error.to_string()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

/// Reads the record (empty when there is none). One that does not parse is replaced, in
/// memory, by the previous good copy, with an error in the log; when that is missing or
/// corrupt too, [`RecordError::Corrupt`].
pub(super) fn read_record(root: &Path) -> Result<Record, RecordError> {
    let path = record_path(root);
    let message = match parse(&path) {
        Ok(record) => return Ok(record.unwrap_or_default()),
        Err(message) => message,
    };
    let previous = releases_directory(root).join(PREVIOUS_RECORD_FILE);
    let previous_message = match parse(&previous) {
        Ok(Some(record)) => {
            tracing::error!(
                record = %path.display(),
                previous = %previous.display(),
                permanent = %record.permanent.as_ref().map_or("none".to_owned(), Version::to_string),
                "THE RELEASE RECORD IS CORRUPT ({message}); booting from its previous good copy. \
                 The next `graft make-permanent` rewrites it."
            );
            return Ok(record);
        }
        Ok(None) => "is missing".to_owned(),
        Err(previous_message) => format!("is corrupt too ({previous_message})"),
    };
    Err(RecordError::Corrupt {
        path,
        message,
        previous,
        previous_message,
        oldest: assembled_versions(root)
            .first()
            .map_or("none is assembled".to_owned(), Version::to_string),
    })
}

/// Writes `record`, keeping the record it replaces (if that one parses) as the previous
/// copy. Each file is replaced atomically; on failure the record is as it was.
pub(super) fn write_record(root: &Path, record: &Record) -> Result<(), RecordError> {
    let directory = releases_directory(root);
    let path = directory.join(RECORD_FILE);
    if let Ok(text) = std::fs::read(&path)
        && serde_json::from_slice::<Record>(&text).is_ok()
    {
        write_atomically(&directory, PREVIOUS_RECORD_FILE, &text)?;
    }
    let text = serde_json::to_vec_pretty(record).map_err(|error| RecordError::Write {
        path: path.clone(),
        source: std::io::Error::other(error),
    })?;
    write_atomically(&directory, RECORD_FILE, &text)
}

/// Replaces `directory/name` with `bytes`: a locked temporary file, fsync, rename over,
/// fsync of the directory. The temporary file is removed on failure.
fn write_atomically(directory: &Path, name: &str, bytes: &[u8]) -> Result<(), RecordError> {
    let path = directory.join(name);
    let write_error = |source| RecordError::Write {
        path: path.clone(),
        source,
    };
    // A sweep by another process (a boot, a build) may remove a new temporary file in
    // the instant before it is locked: then take another.
    let mut attempts = 0;
    let mut temporary = loop {
        let temporary = tempfile::Builder::new()
            .prefix(TEMPORARY_PREFIX)
            .suffix(TEMPORARY_SUFFIX)
            .tempfile_in(directory)
            .map_err(write_error)?;
        match lock_new_file(temporary.as_file(), temporary.path()) {
            Ok(()) => break temporary,
            Err(_) if attempts < 8 => attempts += 1,
            Err(error) => return Err(RecordError::Lock(error)),
        }
    };
    temporary.write_all(bytes).map_err(write_error)?;
    temporary.as_file().sync_all().map_err(write_error)?;
    temporary
        .persist(&path)
        .map_err(|error| write_error(error.error))?;
    std::fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(write_error)
}

/// Removes temporary files of the record whose writer died (no live process holds their
/// lock), and those of hosts before these were named (`.tmp*`). Returns what it removed.
pub fn remove_interrupted_writes(root: &Path) -> Vec<PathBuf> {
    remove_abandoned(&releases_directory(root), |name| {
        (name.starts_with(TEMPORARY_PREFIX) && name.ends_with(TEMPORARY_SUFFIX))
            || name.starts_with(".tmp")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_spelled_as_its_json() {
        for status in [
            ReleaseStatus::Unpacked,
            ReleaseStatus::Current,
            ReleaseStatus::Permanent,
            ReleaseStatus::Old,
        ] {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.to_string())
            );
        }
    }

    fn root_with_releases() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(releases_directory(root.path())).unwrap();
        root
    }

    fn record(permanent: &str) -> Record {
        Record {
            permanent: Some(Version::parse(permanent).unwrap()),
            old: BTreeSet::new(),
        }
    }

    #[test]
    fn each_replace_keeps_the_last_good_record_and_leaves_no_temporary_file() {
        let root = root_with_releases();
        write_record(root.path(), &record("1.0.0")).unwrap();
        assert!(
            !releases_directory(root.path())
                .join(PREVIOUS_RECORD_FILE)
                .exists()
        );
        write_record(root.path(), &record("1.1.0")).unwrap();
        assert_eq!(read_record(root.path()).unwrap(), record("1.1.0"));
        let previous = releases_directory(root.path()).join(PREVIOUS_RECORD_FILE);
        assert_eq!(parse(&previous).unwrap(), Some(record("1.0.0")));
        // A corrupt record is never kept as the previous one.
        std::fs::write(record_path(root.path()), b"{torn").unwrap();
        write_record(root.path(), &record("1.2.0")).unwrap();
        assert_eq!(parse(&previous).unwrap(), Some(record("1.0.0")));
        let names: Vec<String> = std::fs::read_dir(releases_directory(root.path()))
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().all(|name| !name.ends_with(TEMPORARY_SUFFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn a_corrupt_record_falls_back_to_the_previous_copy() {
        let root = root_with_releases();
        write_record(root.path(), &record("1.0.0")).unwrap();
        write_record(root.path(), &record("1.1.0")).unwrap();
        std::fs::write(record_path(root.path()), b"\0\0garbage").unwrap();
        assert_eq!(read_record(root.path()).unwrap(), record("1.0.0"));
    }

    #[test]
    fn a_corrupt_record_without_a_good_copy_names_the_repair() {
        let root = root_with_releases();
        std::fs::write(record_path(root.path()), b"{torn").unwrap();
        let error = read_record(root.path()).unwrap_err();
        let text = error.to_string();
        let path = record_path(root.path());
        assert!(text.contains(&format!("rm '{}'", path.display())), "{text}");
        assert!(text.contains("is missing"), "{text}");
        std::fs::write(
            releases_directory(root.path()).join(PREVIOUS_RECORD_FILE),
            b"[",
        )
        .unwrap();
        let text = read_record(root.path()).unwrap_err().to_string();
        assert!(text.contains("is corrupt too"), "{text}");
    }

    #[test]
    fn only_abandoned_temporary_files_are_removed() {
        let root = root_with_releases();
        let directory = releases_directory(root.path());
        let abandoned = directory.join(".RELEASES.json.abc123.writing");
        std::fs::write(&abandoned, b"{\"perm").unwrap();
        let legacy = directory.join(".tmpXYZ");
        std::fs::write(&legacy, b"{").unwrap();
        let live = tempfile::Builder::new()
            .prefix(TEMPORARY_PREFIX)
            .suffix(TEMPORARY_SUFFIX)
            .tempfile_in(&directory)
            .unwrap();
        lock_new_file(live.as_file(), live.path()).unwrap();
        std::fs::write(directory.join(RECORD_FILE), b"{}").unwrap();
        let mut removed = remove_interrupted_writes(root.path());
        removed.sort();
        let mut expected = vec![abandoned, legacy];
        expected.sort();
        assert_eq!(removed, expected);
        assert!(live.path().exists());
        assert!(directory.join(RECORD_FILE).exists());
    }

    #[test]
    fn statuses_follow_otp_and_making_permanent_moves_the_previous_to_old() {
        let version = |text: &str| Version::parse(text).unwrap();
        let record = record("1.0.0");
        let current = version("1.1.0");
        assert_eq!(
            record.status(&version("1.0.0"), &current),
            ReleaseStatus::Permanent
        );
        assert_eq!(record.status(&current, &current), ReleaseStatus::Current);
        assert_eq!(
            record.status(&version("1.2.0"), &current),
            ReleaseStatus::Unpacked
        );
        let made = record.made_permanent(&current);
        assert_eq!(made.permanent, Some(current.clone()));
        assert!(made.old.contains(&version("1.0.0")));
        assert_eq!(made.status(&version("1.0.0"), &current), ReleaseStatus::Old);
        let back = made.made_permanent(&version("1.0.0"));
        assert_eq!(back.permanent, Some(version("1.0.0")));
        assert!(!back.old.contains(&version("1.0.0")) && back.old.contains(&current));
    }
}
