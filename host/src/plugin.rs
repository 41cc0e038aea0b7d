//! The plugin loader and the safe face of loaded plugin code.
//!
//! Loading a plugin ([`Loader::load`]): read the file once (size-capped), SHA-256 the
//! bytes, compare with the expected digest when one is given, check the ELF machine and
//! read and check the header *from the bytes* ([`header`]: nothing of a refused library
//! runs, not even its load-time constructors), write those same bytes to a fresh uniquely
//! named file in a private (0700) directory, `dlopen` that copy (`RTLD_NOW | RTLD_LOCAL`),
//! then read and check the header again in memory (range-checked against the mappings)
//! before calling anything. [`inspect`] reports the same checks without loading.
//! The result is an `Arc<LoadedPlugin>`; every [`Instance`] holds one, so a version stays
//! loaded while any actor uses it and is closed when the last user drops it.
//!
//! Invariants:
//! - A path is never loaded twice, never hard-linked, never overwritten while loaded: each
//!   load gets its own copy named `<stem>-<sha16>-<sequence>.so` (glibc would otherwise hand
//!   back the already-loaded object, and overwriting a mapped file crashes).
//! - A library that fails a check on its bytes (digest, ELF machine, header) is never
//!   copied nor opened: none of its code runs. One that fails a later check (the in-memory
//!   header, `initialize`) is closed and its copy removed; nothing of it stays in use. A copy that cannot be written whole (out of space, over the file-size limit)
//!   is removed and the load fails with [`LoadError::Copy`] naming it.
//! - A host's copies live in its own directory under the root, `run/libraries/<pid>/`
//!   ([`Loader::in_process_directory`]), locked while the process lives and removed by the
//!   next host if it dies ([`crate::ownership`]); [`Loader::new`] uses a temporary
//!   directory (tests, tools).
//! - Unloading is best effort and always verified: after `dlclose` the loader looks for the
//!   copy in `/proc/self/maps` and records an [`UnloadReport`] (unloaded, or still resident
//!   because, say, a thread-local destructor pins it). Never a crash. Loads and closes
//!   (unloaded or still resident) are counted in [`crate::metrics`].
//!
//! - Outputs are capped before they are copied: an encoded state (`encode_state`,
//!   `downgrade`) at [`MAX_STATE_BYTES`] (1 GiB), anything else (replies, messages) at
//!   [`MAX_OUTPUT_BYTES`] (16 MiB). An output over its cap is not copied; the callback fails
//!   with a protocol error naming the size and the cap. [`Instance::encoded_state_size`]
//!   measures a state even over its cap (what an install checks before its commit).
//!
//! All raw calls into plugin code are in the `ffi` submodule.

mod ffi;
pub mod header;
pub mod inspect;

use graft_plugin::abi;
use graft_plugin::{Health, StopReason};
use semver::Version;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// The largest single output (reply, message, stop reason, continue argument) the host
/// copies out of a plugin. States have their own, larger cap: [`MAX_STATE_BYTES`].
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// The largest encoded state (`encode_state`, `downgrade`) the host copies out of a plugin.
/// A release install refuses, before its commit, a migration whose new state is over it:
/// the way back (a downgrade, or a restore from a snapshot) could not carry it.
pub const MAX_STATE_BYTES: usize = 1024 * 1024 * 1024;

/// How many unload reports a loader keeps (the most recent ones).
pub const KEPT_UNLOAD_REPORTS: usize = 256;

/// Default cap on a plugin file's size.
pub const DEFAULT_MAX_PLUGIN_SIZE: u64 = 256 * 1024 * 1024;

/// A SHA-256 digest, shown and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Digest {
        Sha256Digest(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// A digest that is not 64 hex digits.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("expected a SHA-256 digest as 64 hex digits, found {0:?}")]
pub struct ParseDigestError(String);

impl FromStr for Sha256Digest {
    type Err = ParseDigestError;

    fn from_str(text: &str) -> Result<Sha256Digest, ParseDigestError> {
        let error = || ParseDigestError(text.to_owned());
        if text.len() != 64 || !text.is_ascii() {
            return Err(error());
        }
        let mut digest = [0u8; 32];
        for (index, byte) in digest.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).map_err(|_| error())?;
        }
        Ok(Sha256Digest(digest))
    }
}

/// A plugin's name and version, as its header declares them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PluginIdentity {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    pub version: Version,
}

impl fmt::Display for PluginIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.version)
    }
}

/// What the caller expects of a library; each one set is checked before it is used.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// The SHA-256 of the file's bytes.
    pub sha256: Option<Sha256Digest>,
    /// The plugin name the header must declare.
    pub name: Option<String>,
    /// The version the header must declare.
    pub version: Option<Version>,
}

/// Why a library was refused. Every variant names the file; nothing of it stays loaded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The path is not a regular file.
    #[error("plugin {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is larger than the cap.
    #[error("plugin {path} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// The file is not an ELF shared object.
    #[error("plugin {path} is not an ELF shared object (expected the magic bytes 7f 45 4c 46)")]
    NotElf {
        /// The file.
        path: PathBuf,
    },
    /// The file is an ELF object for another machine or class.
    #[error(
        "plugin {path} is an ELF object for another machine: expected {expected}, found {found}"
    )]
    WrongMachine {
        /// The file.
        path: PathBuf,
        /// What this host runs.
        expected: String,
        /// What the file is.
        found: String,
    },
    /// The ELF structures (sections, symbol tables) cannot be parsed.
    #[error("plugin {path} is a malformed ELF object: {detail}")]
    MalformedElf {
        /// The file.
        path: PathBuf,
        /// What the ELF parser found wrong.
        detail: String,
    },
    /// The file is shorter than its own ELF headers say.
    #[error(
        "plugin {path} is truncated: its ELF headers need {expected} bytes, the file has {actual}"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The size its headers imply.
        expected: u64,
        /// Its size.
        actual: u64,
    },
    /// The bytes' SHA-256 differs from the expected digest.
    #[error("plugin {path} has SHA-256 {actual}, expected {expected}")]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// The expected digest.
        expected: Sha256Digest,
        /// The digest of the bytes read.
        actual: Sha256Digest,
    },
    /// The private copy could not be written.
    #[error("cannot copy plugin {path} to {copy}: {source}")]
    Copy {
        /// The file.
        path: PathBuf,
        /// The copy.
        copy: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `dlopen` refused the library.
    #[error("cannot load plugin {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The dynamic loader's message.
        message: String,
    },
    /// The library has no entry symbol for this ABI major.
    #[error(
        "plugin {path} does not export `{symbol}`: not a Graft plugin, or built for another ABI major version"
    )]
    MissingEntrySymbol {
        /// The file.
        path: PathBuf,
        /// The symbol looked for.
        symbol: String,
    },
    /// The header does not start with the magic.
    #[error("plugin {path} has a header with magic {found:#018x}, expected {expected:#018x}")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic found.
        found: u64,
        /// [`abi::MAGIC`].
        expected: u64,
    },
    /// The header, or something it points to, is malformed.
    #[error("plugin {path} has a malformed header: {detail}")]
    MalformedHeader {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Built for another ABI major version.
    #[error("plugin {path} uses ABI major version {found}, this host speaks {expected}")]
    AbiMajorMismatch {
        /// The file.
        path: PathBuf,
        /// The plugin's.
        found: u16,
        /// The host's.
        expected: u16,
    },
    /// Built for a newer ABI minor version than the host knows.
    #[error("plugin {path} uses ABI {major}.{found}, newer than this host's {major}.{supported}")]
    AbiMinorTooNew {
        /// The file.
        path: PathBuf,
        /// The major version.
        major: u16,
        /// The plugin's minor.
        found: u16,
        /// The newest minor this host knows.
        supported: u16,
    },
    /// The ABI structs' layout differs.
    #[error("plugin {path} has layout fingerprint {found:#018x}, this host has {expected:#018x}")]
    LayoutMismatch {
        /// The file.
        path: PathBuf,
        /// The plugin's.
        found: u64,
        /// The host's.
        expected: u64,
    },
    /// Built with `panic = "abort"`: a panic in it would abort the host.
    #[error(
        "plugin {path} was built with panic = \"abort\"; Graft needs panic = \"unwind\" so a panic cannot abort the host"
    )]
    PanicAbort {
        /// The file.
        path: PathBuf,
    },
    /// Built for another target.
    #[error("plugin {path} was built for {found}, this host is {expected}")]
    TargetMismatch {
        /// The file.
        path: PathBuf,
        /// The plugin's target.
        found: String,
        /// The host's target.
        expected: &'static str,
    },
    /// Declares another name than expected.
    #[error("plugin {path} is named {found:?}, expected {expected:?}")]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// The expected name.
        expected: String,
        /// The declared name.
        found: String,
    },
    /// Declares another version than expected.
    #[error("plugin {path} ({name}) is version {found}, expected {expected}")]
    VersionMismatch {
        /// The file.
        path: PathBuf,
        /// The plugin's name.
        name: String,
        /// The expected version.
        expected: Box<Version>,
        /// The declared version.
        found: Box<Version>,
    },
    /// The plugin's `initialize` failed.
    #[error("plugin {path} failed to initialize: {message}")]
    Initialize {
        /// The file.
        path: PathBuf,
        /// Its message.
        message: String,
    },
}

/// What became of a library after its last user dropped it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnloadOutcome {
    /// `dlclose` unmapped it.
    Unloaded,
    /// Still mapped after `dlclose` (pinned, e.g. by a thread-local destructor).
    Resident,
    /// Kept mapped on purpose (`RTLD_NODELETE`): the library can start threads, which may
    /// still run its code. The reason says which import.
    Pinned(String),
    /// `dlclose` reported an error.
    CloseFailed(String),
}

/// The record of one closed library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnloadReport {
    /// Which plugin.
    pub identity: PluginIdentity,
    /// The private copy that was loaded.
    pub copy: PathBuf,
    /// What happened.
    pub outcome: UnloadOutcome,
}

/// Where a loader writes its copies; removed (with the copies) when the loader goes.
enum CopyDirectory {
    /// A `graft-plugins-*` directory under a chosen parent (tests, tools).
    Temporary(tempfile::TempDir),
    /// This process's own directory under a root's `run/libraries` (or under this user's
    /// part of the temporary directory), locked while it lives so that the next host (or
    /// loader) removes it if this process dies ([`crate::ownership`]).
    Owned(crate::ownership::OwnedDirectory),
}

impl CopyDirectory {
    fn path(&self) -> &Path {
        match self {
            CopyDirectory::Temporary(directory) => directory.path(),
            CopyDirectory::Owned(directory) => directory.path(),
        }
    }
}

struct LoaderShared {
    directory: CopyDirectory,
    sequence: AtomicU64,
    /// The most recent reports (at most [`KEPT_UNLOAD_REPORTS`]), and how many libraries
    /// were closed in all: a long-running host must not grow with every upgrade.
    reports: Mutex<(std::collections::VecDeque<UnloadReport>, u64)>,
}

/// Loads plugin libraries into this process. Cheap to share by reference.
pub struct Loader {
    shared: Arc<LoaderShared>,
    max_size: u64,
}

/// Reads a library file whole: it must be a regular file of at most `max_size` bytes (the
/// size is checked before reading and again on what was read, since the file may grow).
pub(crate) fn read_library(path: &Path, max_size: u64) -> Result<Vec<u8>, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let metadata = fs::metadata(path).map_err(read_error)?;
    if !metadata.is_file() {
        return Err(LoadError::NotAFile {
            path: path.to_owned(),
        });
    }
    let too_large = |size| LoadError::TooLarge {
        path: path.to_owned(),
        size,
        limit: max_size,
    };
    if metadata.len() > max_size {
        return Err(too_large(metadata.len()));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    fs::File::open(path)
        .and_then(|file| file.take(max_size + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > max_size {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Whether a file is mapped into this process (per `/proc/self/maps`).
pub fn is_mapped(path: &Path) -> bool {
    let needle = path.to_string_lossy();
    fs::read_to_string("/proc/self/maps")
        .map(|maps| maps.lines().any(|line| line.contains(needle.as_ref())))
        .unwrap_or(false)
}

/// The host's most verbose enabled log level as the ABI numbers it (0 off, 1 error … 5
/// trace).
pub(crate) fn level_number() -> u32 {
    use tracing::level_filters::LevelFilter;
    match LevelFilter::current() {
        LevelFilter::OFF => 0,
        LevelFilter::ERROR => 1,
        LevelFilter::WARN => 2,
        LevelFilter::INFO => 3,
        LevelFilter::DEBUG => 4,
        _ => 5,
    }
}

/// What an ELF object is built for: its machine, class and byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfKind {
    /// The machine, as `object` names it.
    pub architecture: object::Architecture,
    /// 64-bit (ELFCLASS64) or not.
    pub is_64: bool,
    /// Big-endian or not.
    pub big_endian: bool,
}

impl ElfKind {
    /// What this host runs: its `target_arch`, pointer width and byte order. An
    /// architecture `object` does not name is `Unknown`, and such a host refuses every
    /// library (it cannot tell a foreign one from its own).
    pub fn host() -> ElfKind {
        use object::Architecture as A;
        let architecture = if cfg!(target_arch = "x86_64") {
            if cfg!(target_pointer_width = "32") {
                A::X86_64_X32
            } else {
                A::X86_64
            }
        } else if cfg!(target_arch = "aarch64") {
            A::Aarch64
        } else if cfg!(target_arch = "x86") {
            A::I386
        } else if cfg!(target_arch = "arm") {
            A::Arm
        } else if cfg!(target_arch = "riscv64") {
            A::Riscv64
        } else if cfg!(target_arch = "riscv32") {
            A::Riscv32
        } else if cfg!(target_arch = "powerpc64") {
            A::PowerPc64
        } else if cfg!(target_arch = "loongarch64") {
            A::LoongArch64
        } else if cfg!(target_arch = "s390x") {
            A::S390x
        } else if cfg!(target_arch = "powerpc") {
            A::PowerPc
        } else if cfg!(target_arch = "mips64") {
            A::Mips64
        } else if cfg!(target_arch = "mips") {
            A::Mips
        } else if cfg!(target_arch = "sparc64") {
            A::Sparc64
        } else if cfg!(target_arch = "loongarch32") {
            A::LoongArch32
        } else {
            A::Unknown
        };
        ElfKind {
            architecture,
            is_64: cfg!(target_pointer_width = "64"),
            big_endian: cfg!(target_endian = "big"),
        }
    }
}

impl fmt::Display for ElfKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ELF{} {}-endian {:?}",
            if self.is_64 { 64 } else { 32 },
            if self.big_endian { "big" } else { "little" },
            self.architecture
        )
    }
}

/// Checks the ELF identification, that the file holds all its headers claim, and that it
/// is built for this host's machine, class and byte order.
fn check_elf(path: &Path, bytes: &[u8]) -> Result<ElfKind, LoadError> {
    use object::Object;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(LoadError::NotElf {
            path: path.to_owned(),
        });
    }
    let truncated = |expected: u64| LoadError::Truncated {
        path: path.to_owned(),
        expected,
        actual: bytes.len() as u64,
    };
    let expected = ElfKind::host();
    let wrong = |found: String| LoadError::WrongMachine {
        path: path.to_owned(),
        expected: expected.to_string(),
        found,
    };
    let (Some(&class), Some(&encoding)) = (bytes.get(4), bytes.get(5)) else {
        return Err(truncated(6));
    };
    // (header size, offsets of e_phoff, e_shoff, e_phentsize, word size)
    let (header_size, program_offset, section_offset, sizes_offset, word) = match class {
        1 => (52, 0x1c, 0x20, 0x2a, 4),
        2 => (64, 0x20, 0x28, 0x36, 8),
        other => return Err(wrong(format!("an ELF object of unknown class {other}"))),
    };
    if encoding != 1 && encoding != 2 {
        return Err(wrong(format!(
            "an ELF object of unknown data encoding {encoding}"
        )));
    }
    if bytes.len() < header_size {
        return Err(truncated(header_size as u64));
    }
    let read = |offset: usize, length: usize| -> u64 {
        let mut buffer = [0u8; 8];
        let field = &bytes[offset..offset + length];
        if encoding == 2 {
            buffer[8 - length..].copy_from_slice(field);
            u64::from_be_bytes(buffer)
        } else {
            buffer[..length].copy_from_slice(field);
            u64::from_le_bytes(buffer)
        }
    };
    let program_end = read(program_offset, word)
        .saturating_add(read(sizes_offset, 2) * read(sizes_offset + 2, 2));
    let section_end = read(section_offset, word)
        .saturating_add(read(sizes_offset + 4, 2) * read(sizes_offset + 6, 2));
    let end = program_end.max(section_end);
    if end > bytes.len() as u64 {
        return Err(truncated(end));
    }
    let machine = read(0x12, 2);
    let file = object::File::parse(bytes).map_err(|error| LoadError::MalformedElf {
        path: path.to_owned(),
        detail: error.to_string(),
    })?;
    let found = ElfKind {
        architecture: file.architecture(),
        is_64: class == 2,
        big_endian: encoding == 2,
    };
    if found != expected || found.architecture == object::Architecture::Unknown {
        return Err(wrong(format!("{found} (e_machine {machine:#x})")));
    }
    Ok(found)
}

fn copy_stem(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy())
        .unwrap_or_default();
    let cleaned: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "plugin".to_owned()
    } else {
        cleaned
    }
}

impl Loader {
    /// A loader with its private directory under the system temporary directory:
    /// `$TMPDIR/graft-<uid>/plugins-<pid>` (locked while this process lives, so the next
    /// loader removes it if this process dies), else a `graft-plugins-*` directory there.
    pub fn new() -> std::io::Result<Loader> {
        match crate::ownership::temporary_for_this_process("plugins") {
            Some(directory) => Ok(Loader::with_directory(CopyDirectory::Owned(directory))),
            None => Loader::in_directory(&std::env::temp_dir()),
        }
    }

    /// A loader with its private (0700) directory created under `parent`.
    pub fn in_directory(parent: &Path) -> std::io::Result<Loader> {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::Builder::new()
            .prefix("graft-plugins-")
            .tempdir_in(parent)?;
        fs::set_permissions(directory.path(), fs::Permissions::from_mode(0o700))?;
        Ok(Loader::with_directory(CopyDirectory::Temporary(directory)))
    }

    /// A loader whose copies live in this process's own directory `<libraries>/<pid>/`
    /// (0700, locked while the process lives; see [`crate::ownership`]). `libraries` is
    /// a root's `run/libraries` and must exist.
    pub fn in_process_directory(
        libraries: &Path,
    ) -> Result<Loader, crate::ownership::OwnershipError> {
        let directory = crate::ownership::OwnedDirectory::for_this_process(libraries)?;
        Ok(Loader::with_directory(CopyDirectory::Owned(directory)))
    }

    fn with_directory(directory: CopyDirectory) -> Loader {
        Loader {
            shared: Arc::new(LoaderShared {
                directory,
                sequence: AtomicU64::new(0),
                reports: Mutex::new((std::collections::VecDeque::new(), 0)),
            }),
            max_size: DEFAULT_MAX_PLUGIN_SIZE,
        }
    }

    /// The directory that holds one private directory per process, when this loader's
    /// copies live in one of them ([`Loader::in_process_directory`]): where a worker
    /// process started for this host puts its own copies.
    pub fn process_directories(&self) -> Option<&Path> {
        match &self.shared.directory {
            CopyDirectory::Owned(directory) => directory.path().parent(),
            CopyDirectory::Temporary(_) => None,
        }
    }

    /// Sets the file size cap.
    pub fn with_max_size(mut self, max_size: u64) -> Loader {
        self.max_size = max_size;
        self
    }

    /// The private directory copies are loaded from.
    pub fn directory(&self) -> &Path {
        self.shared.directory.path()
    }

    /// Reads, verifies, copies, loads and checks the library at `path`. Every check that
    /// can refuse it (digest, ELF machine, the whole header against this host and
    /// `expect`) is made on the file's bytes before `dlopen`, so a refused library runs no
    /// code at all; the header is checked again in memory after loading.
    pub fn load(&self, path: &Path, expect: &Expectations) -> Result<Arc<LoadedPlugin>, LoadError> {
        let bytes = read_library(path, self.max_size)?;
        let digest = Sha256Digest::of(&bytes);
        if let Some(expected) = expect.sha256
            && expected != digest
        {
            return Err(LoadError::DigestMismatch {
                path: path.to_owned(),
                expected,
                actual: digest,
            });
        }
        // Everything that can refuse the library is checked on its bytes, before `dlopen`
        // runs any of its code (load-time constructors included).
        check_elf(path, &bytes)?;
        let file_header = read_file_header(path, &bytes)?;
        check_header(path, &file_header.fields, expect)?;
        let pinned = thread_starter(&bytes).map(|symbol| {
            format!("it imports {symbol}, so a thread of its own may still run its code")
        });
        let copy = self.write_copy(path, &bytes, &digest)?;
        let result = self.open_copy(path, &copy, digest, expect, pinned);
        if result.is_err() {
            let _ = fs::remove_file(&copy);
        }
        result
    }

    fn write_copy(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: &Sha256Digest,
    ) -> Result<PathBuf, LoadError> {
        let sequence = self.shared.sequence.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{}-{sequence}.so",
            copy_stem(path),
            &digest.to_string()[..16]
        );
        let copy = self.directory().join(name);
        let copy_error = |source| LoadError::Copy {
            path: path.to_owned(),
            copy: copy.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o500)
            // A symlink planted in the copy's place is refused, not followed.
            .custom_flags(libc::O_NOFOLLOW)
            .open(&copy)
            .map_err(copy_error)?;
        // No fsync: the copy is private and rewritten on every load; a crash loses nothing.
        if let Err(source) = file.write_all(bytes) {
            // A partial copy (out of space, over the file-size limit) is not left behind.
            let _ = fs::remove_file(&copy);
            return Err(copy_error(source));
        }
        Ok(copy)
    }

    fn open_copy(
        &self,
        path: &Path,
        copy: &Path,
        sha256: Sha256Digest,
        expect: &Expectations,
        pinned: Option<String>,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        let library = ffi::open(copy, pinned.is_some()).map_err(|message| LoadError::Open {
            path: path.to_owned(),
            message,
        })?;
        let (header, vtable) = ffi::read_header(&library, copy).map_err(|error| match error {
            ffi::HeaderReadError::MissingSymbol(symbol) => LoadError::MissingEntrySymbol {
                path: path.to_owned(),
                symbol,
            },
            ffi::HeaderReadError::OutOfImage(field) => LoadError::MalformedHeader {
                path: path.to_owned(),
                detail: format!("`{field}` points outside the library"),
            },
            ffi::HeaderReadError::TooSmall(size) => LoadError::MalformedHeader {
                path: path.to_owned(),
                detail: format!(
                    "header is {size} bytes, expected at least {}",
                    std::mem::size_of::<abi::PluginHeader>()
                ),
            },
        })?;
        let identity = check_header(path, &header, expect)?;
        // SAFETY: `check_header` verified magic, ABI major/minor, layout fingerprint and the
        // vtable size against this host's, and `vtable` comes from `read_header` on `library`.
        let code = unsafe { ffi::PluginCode::new(library, vtable, header.vtable_size) }.map_err(
            |detail| LoadError::MalformedHeader {
                path: path.to_owned(),
                detail,
            },
        )?;
        let mut plugin = LoadedPlugin {
            code_label: Arc::from(identity.to_string()),
            identity,
            abi_minor: header.abi_minor,
            api_version: String::from_utf8_lossy(&header.api_version).into_owned(),
            target: String::from_utf8_lossy(&header.target).into_owned(),
            sha256,
            source: path.to_owned(),
            copy: copy.to_owned(),
            code,
            shared: Arc::clone(&self.shared),
            report: false,
            pinned,
            metrics: std::sync::OnceLock::new(),
        };
        let (status, message) = plugin.code.initialize(level_number());
        if status != abi::STATUS_OK {
            return Err(LoadError::Initialize {
                path: path.to_owned(),
                message: initialize_failure(status, message),
            });
        }
        plugin.report = true;
        crate::metrics::host::library_loaded();
        tracing::debug!(plugin = %plugin.identity, copy = %copy.display(), "plugin loaded");
        Ok(Arc::new(plugin))
    }

    /// What became of the most recently closed libraries (the last
    /// [`KEPT_UNLOAD_REPORTS`]), re-checked against `/proc/self/maps` (glibc may unmap a
    /// pinned library at a later `dlclose`).
    pub fn unload_reports(&self) -> Vec<UnloadReport> {
        let mut reports = self
            .shared
            .reports
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for report in reports.0.iter_mut() {
            if report.outcome == UnloadOutcome::Resident && !is_mapped(&report.copy) {
                report.outcome = UnloadOutcome::Unloaded;
            }
        }
        reports.0.iter().cloned().collect()
    }

    /// How many libraries this loader has closed in all.
    pub fn closed_count(&self) -> u64 {
        self.shared
            .reports
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .1
    }
}

/// Why `initialize` failed: the plugin's own reason, else its status.
fn initialize_failure(status: u32, message: Option<String>) -> String {
    match message {
        Some(message) if status == abi::STATUS_PANIC => format!("it panicked: {message}"),
        Some(message) => message,
        None => format!("initialize returned status {status} and gave no reason"),
    }
}

/// Reads the header from a library's bytes ([`header::read`]), errors naming `path`.
fn read_file_header(path: &Path, bytes: &[u8]) -> Result<header::FileHeader, LoadError> {
    header::read(bytes).map_err(|error| match error {
        header::HeaderFileError::Elf(detail) => LoadError::MalformedElf {
            path: path.to_owned(),
            detail,
        },
        header::HeaderFileError::MissingSymbol(symbol) => LoadError::MissingEntrySymbol {
            path: path.to_owned(),
            symbol,
        },
        header::HeaderFileError::TooSmall(size) => LoadError::MalformedHeader {
            path: path.to_owned(),
            detail: format!(
                "header is {size} bytes, expected at least {}",
                std::mem::size_of::<abi::PluginHeader>()
            ),
        },
        header::HeaderFileError::Malformed(detail) => LoadError::MalformedHeader {
            path: path.to_owned(),
            detail,
        },
    })
}

/// The fields [`check_header`] checks, from a header read from the file.
fn check_header(
    path: &Path,
    header: &header::HeaderFields,
    expect: &Expectations,
) -> Result<PluginIdentity, LoadError> {
    let path_buf = || path.to_owned();
    if header.magic != abi::MAGIC {
        return Err(LoadError::BadMagic {
            path: path_buf(),
            found: header.magic,
            expected: abi::MAGIC,
        });
    }
    if header.abi_major != abi::ABI_MAJOR {
        return Err(LoadError::AbiMajorMismatch {
            path: path_buf(),
            found: header.abi_major,
            expected: abi::ABI_MAJOR,
        });
    }
    if header.abi_minor > abi::ABI_MINOR {
        return Err(LoadError::AbiMinorTooNew {
            path: path_buf(),
            major: header.abi_major,
            found: header.abi_minor,
            supported: abi::ABI_MINOR,
        });
    }
    // The fingerprint of the plugin's own minor: an ABI 1.0 plugin carries the 1.0 one.
    let expected_fingerprint =
        abi::layout_fingerprint(header.abi_minor).unwrap_or(abi::LAYOUT_FINGERPRINT);
    if header.layout_fingerprint != expected_fingerprint {
        return Err(LoadError::LayoutMismatch {
            path: path_buf(),
            found: header.layout_fingerprint,
            expected: expected_fingerprint,
        });
    }
    if header.panic_unwind != 1 {
        return Err(LoadError::PanicAbort { path: path_buf() });
    }
    // A plugin's vtable holds at least the entries of the minor it declares; the host
    // reads no further than the size declared (entries after it are not implemented).
    let needed = abi::plugin_vtable_size(header.abi_minor).unwrap_or(abi::PLUGIN_VTABLE_SIZE_1_0);
    if (header.vtable_size as usize) < needed {
        return Err(LoadError::MalformedHeader {
            path: path_buf(),
            detail: format!(
                "vtable is {} bytes, ABI {}.{} needs {needed}",
                header.vtable_size, header.abi_major, header.abi_minor
            ),
        });
    }
    let target = String::from_utf8_lossy(&header.target);
    if target != abi::TARGET {
        return Err(LoadError::TargetMismatch {
            path: path_buf(),
            found: target.into_owned(),
            expected: abi::TARGET,
        });
    }
    let name = String::from_utf8(header.name.clone())
        .ok()
        .filter(|name| !name.is_empty())
        .ok_or_else(|| LoadError::MalformedHeader {
            path: path_buf(),
            detail: "the plugin name is empty or not UTF-8".to_owned(),
        })?;
    let version_text = String::from_utf8_lossy(&header.version);
    let version = Version::parse(&version_text).map_err(|error| LoadError::MalformedHeader {
        path: path_buf(),
        detail: format!("version {version_text:?} is not semver: {error}"),
    })?;
    if let Some(expected) = &expect.name
        && *expected != name
    {
        return Err(LoadError::NameMismatch {
            path: path_buf(),
            expected: expected.clone(),
            found: name,
        });
    }
    if let Some(expected) = &expect.version
        && *expected != version
    {
        return Err(LoadError::VersionMismatch {
            path: path_buf(),
            name,
            expected: Box::new(expected.clone()),
            found: Box::new(version),
        });
    }
    Ok(PluginIdentity { name, version })
}

/// The dynamic imports through which a library can start threads of its own.
const THREAD_STARTERS: &[&str] = &["pthread_create", "clone", "clone3", "thrd_create"];

/// The first import of `bytes` (an ELF shared object) that can start a thread, if any.
/// Such a library is loaded with `RTLD_NODELETE`: a thread it started may outlive every
/// instance and run its code after the last `dlclose`, and unmapping code under a running
/// thread crashes the host. Unparsable bytes are left to `dlopen` to refuse.
fn thread_starter(bytes: &[u8]) -> Option<&'static str> {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(bytes).ok()?;
    file.dynamic_symbols()
        .filter(|symbol| symbol.is_undefined())
        .filter_map(|symbol| symbol.name().ok())
        .find_map(|name| {
            let name = name.split('@').next().unwrap_or(name);
            THREAD_STARTERS
                .iter()
                .copied()
                .find(|starter| *starter == name)
        })
}

/// One loaded plugin version. Closed (and its unloading verified) when the last `Arc` goes.
pub struct LoadedPlugin {
    identity: PluginIdentity,
    /// "name version", made once and shared by every actor running this version.
    code_label: Arc<str>,
    /// The ABI minor its header declares.
    abi_minor: u16,
    api_version: String,
    target: String,
    sha256: Sha256Digest,
    source: PathBuf,
    copy: PathBuf,
    code: ffi::PluginCode,
    shared: Arc<LoaderShared>,
    /// Whether closing it is worth a report (it passed every check).
    report: bool,
    /// Why it is loaded with `RTLD_NODELETE`, if it is.
    pinned: Option<String>,
    /// Its metrics, looked up once (by the first actor to run it while metrics are on).
    metrics: std::sync::OnceLock<Arc<crate::metrics::VersionMetrics>>,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("identity", &self.identity)
            .field("sha256", &self.sha256)
            .field("copy", &self.copy)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Name and version.
    pub fn identity(&self) -> &PluginIdentity {
        &self.identity
    }

    /// "name version", shared (each actor's code label points at it).
    pub fn code_label(&self) -> Arc<str> {
        Arc::clone(&self.code_label)
    }

    /// The metrics of this version (looked up in [`crate::metrics`] once).
    pub fn version_metrics(&self) -> Arc<crate::metrics::VersionMetrics> {
        Arc::clone(
            self.metrics
                .get_or_init(|| crate::metrics::plugin::for_identity(Some(&self.identity))),
        )
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// The plugin's version.
    pub fn version(&self) -> &Version {
        &self.identity.version
    }

    /// The `graft-plugin` version it was built with.
    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    /// The ABI minor it was built against (its major is [`abi::ABI_MAJOR`]).
    pub fn abi_minor(&self) -> u16 {
        self.abi_minor
    }

    /// Whether it implements `health` (ABI 1.1 and later).
    pub fn has_health(&self) -> bool {
        self.code.has_health()
    }

    /// Whether it implements `format_status` (ABI 1.1 and later).
    pub fn has_format_status(&self) -> bool {
        self.code.has_format_status()
    }

    /// The target it was built for.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The SHA-256 of the file's bytes.
    pub fn sha256(&self) -> Sha256Digest {
        self.sha256
    }

    /// The file it was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The private copy that is mapped.
    pub fn copy_path(&self) -> &Path {
        &self.copy
    }

    /// Why this library is never unmapped, if it is pinned (it can start threads).
    pub fn pinned(&self) -> Option<&str> {
        self.pinned.as_deref()
    }
}

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        let closed = self.code.close();
        let _ = fs::remove_file(&self.copy);
        if !self.report {
            return;
        }
        let outcome = match closed {
            Err(message) => UnloadOutcome::CloseFailed(message),
            Ok(()) if self.pinned.is_some() => {
                UnloadOutcome::Pinned(self.pinned.clone().unwrap_or_default())
            }
            Ok(()) if is_mapped(&self.copy) => UnloadOutcome::Resident,
            Ok(()) => UnloadOutcome::Unloaded,
        };
        crate::metrics::host::library_closed(outcome == UnloadOutcome::Unloaded);
        match &outcome {
            UnloadOutcome::Unloaded => tracing::debug!(plugin = %self.identity, "plugin unloaded"),
            UnloadOutcome::Pinned(reason) => tracing::info!(
                plugin = %self.identity,
                "plugin closed and kept mapped on purpose: {reason}"
            ),
            UnloadOutcome::Resident => tracing::warn!(
                plugin = %self.identity,
                copy = %self.copy.display(),
                "plugin closed but still resident (pinned, e.g. by a thread-local destructor)"
            ),
            UnloadOutcome::CloseFailed(message) => {
                tracing::warn!(plugin = %self.identity, "dlclose failed: {message}")
            }
        }
        let report = UnloadReport {
            identity: self.identity.clone(),
            copy: self.copy.clone(),
            outcome,
        };
        let mut reports = self
            .shared
            .reports
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if reports.0.len() == KEPT_UNLOAD_REPORTS {
            reports.0.pop_front();
        }
        reports.0.push_back(report);
        reports.1 += 1;
    }
}

/// How a message sent from a plugin is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// To `handle_cast`.
    Cast,
    /// To `handle_info`.
    Info,
}

/// A host service failed (as the plugin's [`graft_plugin::ContextError`] will see it).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceError {
    /// No actor has this name.
    #[error("no actor named {0:?}")]
    NotFound(String),
    /// No reply in time.
    #[error("call to {0:?} timed out")]
    Timeout(String),
    /// The actor exited first.
    #[error("actor {actor:?} exited: {reason}")]
    Exited {
        /// The actor.
        actor: String,
        /// Its exit reason.
        reason: String,
    },
    /// The callee refused the message.
    #[error("actor {actor:?} refused the message: {reason}")]
    Refused {
        /// The actor.
        actor: String,
        /// Why.
        reason: String,
    },
    /// The service is not available in this context.
    #[error("{0} is not available here")]
    Unavailable(&'static str),
}

impl ServiceError {
    /// The ABI's `SERVICE_*` code.
    pub fn code(&self) -> u32 {
        match self {
            ServiceError::NotFound(_) => abi::SERVICE_NOT_FOUND,
            ServiceError::Timeout(_) => abi::SERVICE_TIMEOUT,
            ServiceError::Exited { .. } => abi::SERVICE_EXITED,
            ServiceError::Refused { .. } => abi::SERVICE_REFUSED,
            ServiceError::Unavailable(_) => abi::SERVICE_UNAVAILABLE,
        }
    }
}

/// What the host offers a plugin callback: implemented by the actor runtime.
pub trait HostServices {
    /// The calling actor's name.
    fn actor_name(&self) -> &str;
    /// Sends a cast or info message to a named actor.
    fn send(&self, to: &str, kind: SendKind, message: Vec<u8>) -> Result<(), ServiceError>;
    /// Calls a named actor, waiting at most `timeout`; must not starve the runtime.
    fn call(&self, to: &str, message: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, ServiceError>;
    /// Sends `message` to the calling actor as an info message after `delay` (repeatedly
    /// when `repeat`); returns the timer id.
    fn start_timer(&self, delay: Duration, repeat: bool, message: Vec<u8>) -> Option<u64>;
    /// Cancels a timer; whether it was pending.
    fn cancel_timer(&self, timer: u64) -> bool;
    /// Answers a deferred call.
    fn reply(&self, token: u64, message: Vec<u8>) -> Result<(), ServiceError>;
    /// The cluster's live hosts, this one included, sorted (ABI 1.2).
    fn hosts(&self) -> Result<Vec<String>, ServiceError> {
        Err(ServiceError::Unavailable("hosts"))
    }
    /// Registers the calling actor's name cluster-wide (ABI 1.2).
    fn register_global(&self) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable("register_global"))
    }
    /// Monitors `to` (`name` or `name@host`); the monitor id (ABI 1.2).
    fn monitor(&self, _to: &str) -> Result<u64, ServiceError> {
        Err(ServiceError::Unavailable("monitor"))
    }
    /// Turns `HostUp`/`HostDown` info messages to the calling actor on or off (ABI 1.2).
    fn monitor_hosts(&self, _on: bool) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable("monitor_hosts"))
    }
}

/// Services for plugin code that runs outside any actor (migrations, tests): a name, and
/// every other service unavailable.
#[derive(Debug, Clone)]
pub struct Detached {
    name: String,
}

impl Detached {
    /// Detached services answering to `name`.
    pub fn new(name: impl Into<String>) -> Detached {
        Detached { name: name.into() }
    }
}

impl HostServices for Detached {
    fn actor_name(&self) -> &str {
        &self.name
    }

    fn send(&self, _to: &str, _kind: SendKind, _message: Vec<u8>) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable("send"))
    }

    fn call(
        &self,
        _to: &str,
        _message: Vec<u8>,
        _timeout: Duration,
    ) -> Result<Vec<u8>, ServiceError> {
        Err(ServiceError::Unavailable("call"))
    }

    fn start_timer(&self, _delay: Duration, _repeat: bool, _message: Vec<u8>) -> Option<u64> {
        None
    }

    fn cancel_timer(&self, _timer: u64) -> bool {
        false
    }

    fn reply(&self, _token: u64, _message: Vec<u8>) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable("reply"))
    }
}

/// What one callback produced, copied out of the plugin.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// A reply to the call.
    pub reply: Option<Vec<u8>>,
    /// Encoded state.
    pub state: Option<Vec<u8>>,
    /// The actor asked to stop.
    pub stop: Option<StopReason>,
    /// The actor asked for `handle_continue` with this argument.
    pub continue_with: Option<Vec<u8>>,
    /// An error or panic message.
    pub message: Option<String>,
    /// An output refused for exceeding its cap ([`MAX_STATE_BYTES`] for a state,
    /// [`MAX_OUTPUT_BYTES`] for anything else): its `abi::OUTPUT_*` kind and its size.
    pub oversized: Option<(u32, usize)>,
    /// `init` declined to start (`abi::OUTPUT_IGNORE`, OTP's `ignore`).
    pub ignored: bool,
    /// The actor asked for an inactivity timeout (`abi::OUTPUT_TIMEOUT`, OTP's `timeout`).
    pub inactivity_timeout: Option<Duration>,
}

/// The cap on an output of `kind` (an `abi::OUTPUT_*`).
fn output_cap(kind: u32) -> usize {
    if kind == abi::OUTPUT_STATE {
        MAX_STATE_BYTES
    } else {
        MAX_OUTPUT_BYTES
    }
}

impl Outputs {
    /// The encoded state a state callback (`encode_state`, `downgrade`) must produce, or
    /// the protocol error of `plugin`'s `callback` that returned success without one.
    pub fn into_state(
        self,
        plugin: &PluginIdentity,
        callback: &'static str,
    ) -> Result<Vec<u8>, CallbackError> {
        self.state.ok_or_else(|| CallbackError::Protocol {
            plugin: plugin.clone(),
            callback,
            message: "returned success without a state".to_owned(),
        })
    }

    fn record(&mut self, kind: u32, data: &[u8]) {
        if data.len() > output_cap(kind) {
            // Not copied: the callback fails with a protocol error instead.
            self.oversized = Some((kind, data.len()));
            return;
        }
        match kind {
            abi::OUTPUT_REPLY => self.reply = Some(data.to_vec()),
            abi::OUTPUT_STATE => self.state = Some(data.to_vec()),
            abi::OUTPUT_STOP => {
                self.stop = Some(StopReason::from_text(&String::from_utf8_lossy(data)))
            }
            abi::OUTPUT_CONTINUE => self.continue_with = Some(data.to_vec()),
            abi::OUTPUT_MESSAGE => self.message = Some(String::from_utf8_lossy(data).into_owned()),
            abi::OUTPUT_IGNORE => self.ignored = true,
            abi::OUTPUT_TIMEOUT => match <[u8; 8]>::try_from(data) {
                Ok(bytes) => {
                    self.inactivity_timeout = Some(Duration::from_millis(u64::from_le_bytes(bytes)))
                }
                Err(_) => tracing::warn!(
                    "plugin asked for an inactivity timeout of {} bytes, not 8; ignored",
                    data.len()
                ),
            },
            other => tracing::warn!("plugin produced an output of unknown kind {other}; ignored"),
        }
    }
}

/// Re-emits a plugin's log record in the host's `tracing`, with plugin, version and actor.
pub(crate) fn emit_plugin_log(
    origin: Option<(&PluginIdentity, &str)>,
    level: u32,
    target: &str,
    message: &str,
) {
    let (plugin, version, actor) = match origin {
        Some((identity, actor)) => (identity.name.as_str(), identity.version.to_string(), actor),
        None => ("", String::new(), ""),
    };
    macro_rules! emit {
        ($level:expr) => {
            tracing::event!(target: "graft::plugin", $level, plugin, version = %version, actor, plugin_target = target, "{message}")
        };
    }
    match level {
        1 => emit!(tracing::Level::ERROR),
        2 => emit!(tracing::Level::WARN),
        3 => emit!(tracing::Level::INFO),
        4 => emit!(tracing::Level::DEBUG),
        _ => emit!(tracing::Level::TRACE),
    }
}

/// A plugin callback failed. Names the plugin, its version and the callback.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallbackError {
    /// The callback returned an error.
    #[error("{plugin}: {callback} failed: {message}")]
    Failed {
        /// Which plugin.
        plugin: PluginIdentity,
        /// Which callback.
        callback: &'static str,
        /// Its message.
        message: String,
    },
    /// The callback panicked (caught inside the plugin).
    #[error("{plugin}: {callback} panicked: {message}")]
    Panicked {
        /// Which plugin.
        plugin: PluginIdentity,
        /// Which callback.
        callback: &'static str,
        /// The panic message.
        message: String,
    },
    /// The input did not decode as the type the plugin expects; nothing ran.
    #[error("{plugin}: {callback} refused its input: {message}")]
    BadInput {
        /// Which plugin.
        plugin: PluginIdentity,
        /// Which callback.
        callback: &'static str,
        /// The decode error.
        message: String,
    },
    /// `init` declined to start (OTP's `ignore`): no instance, and not a failure.
    #[error("{code}: init declined to start (ignore)")]
    Ignored {
        /// What declined: the plugin and version, or "native code".
        code: String,
    },
    /// The plugin broke the ABI contract (unknown status, missing output).
    #[error("{plugin}: {callback} broke the plugin ABI: {message}")]
    Protocol {
        /// Which plugin.
        plugin: PluginIdentity,
        /// Which callback.
        callback: &'static str,
        /// What was wrong.
        message: String,
    },
}

impl CallbackError {
    /// Whether the callback panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, CallbackError::Panicked { .. })
    }

    /// Whether the input was refused before the callback ran (the actor is unharmed).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, CallbackError::BadInput { .. })
    }
}

fn interpret(
    plugin: &LoadedPlugin,
    callback: &'static str,
    status: u32,
    outputs: Outputs,
) -> Result<Outputs, CallbackError> {
    let identity = || plugin.identity.clone();
    let message = || {
        outputs
            .message
            .clone()
            .unwrap_or_else(|| "no message".to_owned())
    };
    if let Some((kind, size)) = outputs.oversized {
        let cap = output_cap(kind);
        return Err(CallbackError::Protocol {
            plugin: identity(),
            callback,
            message: format!("an output of {size} bytes exceeds the cap of {cap} bytes"),
        });
    }
    match status {
        abi::STATUS_OK => Ok(outputs),
        abi::STATUS_ERROR => Err(CallbackError::Failed {
            plugin: identity(),
            callback,
            message: message(),
        }),
        abi::STATUS_PANIC => Err(CallbackError::Panicked {
            plugin: identity(),
            callback,
            message: message(),
        }),
        abi::STATUS_BAD_INPUT => Err(CallbackError::BadInput {
            plugin: identity(),
            callback,
            message: message(),
        }),
        other => Err(CallbackError::Protocol {
            plugin: identity(),
            callback,
            message: format!("unknown status {other}"),
        }),
    }
}

/// One actor's state inside a loaded plugin. Holds its plugin loaded; dropped inside the
/// plugin. Callbacks take `&mut self`: one at a time.
pub struct Instance {
    plugin: Arc<LoadedPlugin>,
    handle: Option<ffi::InstanceHandle>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", &self.plugin.identity)
            .finish()
    }
}

impl Instance {
    fn created(
        plugin: &Arc<LoadedPlugin>,
        callback: &'static str,
        status: u32,
        handle: Option<ffi::InstanceHandle>,
        outputs: Outputs,
    ) -> Result<(Instance, Outputs), CallbackError> {
        let instance = handle.map(|handle| Instance {
            plugin: Arc::clone(plugin),
            handle: Some(handle),
        });
        if callback == "init" && status == abi::STATUS_ERROR && outputs.ignored {
            return Err(CallbackError::Ignored {
                code: plugin.identity.to_string(),
            });
        }
        let outputs = interpret(plugin, callback, status, outputs)?;
        match instance {
            Some(instance) => Ok((instance, outputs)),
            None => Err(CallbackError::Protocol {
                plugin: plugin.identity.clone(),
                callback,
                message: "returned success without an instance".to_owned(),
            }),
        }
    }

    /// Runs `init` with encoded start arguments.
    pub fn start(
        plugin: &Arc<LoadedPlugin>,
        args: &[u8],
        services: &dyn HostServices,
    ) -> Result<(Instance, Outputs), CallbackError> {
        let mut context = ffi::CallContext::new(services, &plugin.identity);
        let (status, handle) = plugin.code.init(&mut context, args);
        Instance::created(plugin, "init", status, handle, context.outputs)
    }

    /// Creates an instance from state bytes already in this plugin's shape.
    pub fn restore(
        plugin: &Arc<LoadedPlugin>,
        state: &[u8],
        services: &dyn HostServices,
    ) -> Result<Instance, CallbackError> {
        let mut context = ffi::CallContext::new(services, &plugin.identity);
        let (status, handle) = plugin.code.restore_state(&mut context, state);
        Instance::created(plugin, "restore_state", status, handle, context.outputs)
            .map(|(instance, _)| instance)
    }

    /// Upgrade: creates an instance of `plugin` from an older version's state (its
    /// `code_change`).
    pub fn code_change(
        plugin: &Arc<LoadedPlugin>,
        from_version: &Version,
        state: &[u8],
        extra: &[u8],
        services: &dyn HostServices,
    ) -> Result<Instance, CallbackError> {
        let mut context = ffi::CallContext::new(services, &plugin.identity);
        let (status, handle) =
            plugin
                .code
                .code_change(&mut context, &from_version.to_string(), state, extra);
        Instance::created(plugin, "code_change", status, handle, context.outputs)
            .map(|(instance, _)| instance)
    }

    /// The plugin this instance runs on.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    fn run(
        &mut self,
        callback: &'static str,
        services: &dyn HostServices,
        body: impl FnOnce(&ffi::PluginCode, &mut ffi::InstanceHandle, &mut ffi::CallContext<'_>) -> u32,
    ) -> Result<Outputs, CallbackError> {
        let (status, outputs) = self.run_uninterpreted(callback, services, body)?;
        interpret(&self.plugin, callback, status, outputs)
    }

    /// Runs a callback; its status and outputs, not yet interpreted.
    fn run_uninterpreted(
        &mut self,
        callback: &'static str,
        services: &dyn HostServices,
        body: impl FnOnce(&ffi::PluginCode, &mut ffi::InstanceHandle, &mut ffi::CallContext<'_>) -> u32,
    ) -> Result<(u32, Outputs), CallbackError> {
        // Borrowed, not cloned: an `Arc` clone per callback is two atomic operations on a
        // line every actor of the plugin shares.
        let plugin = &self.plugin;
        let Some(handle) = self.handle.as_mut() else {
            return Err(CallbackError::Protocol {
                plugin: plugin.identity.clone(),
                callback,
                message: "instance already dropped".to_owned(),
            });
        };
        let mut context = ffi::CallContext::new(services, &plugin.identity);
        let status = body(&plugin.code, handle, &mut context);
        Ok((status, context.outputs))
    }

    /// Runs `handle_call`; `reply_token` is what a deferred reply will carry.
    pub fn handle_call(
        &mut self,
        request: &[u8],
        reply_token: u64,
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        self.run("handle_call", services, |code, handle, context| {
            code.handle_call(handle, context, request, reply_token)
        })
    }

    /// Runs `handle_cast`.
    pub fn handle_cast(
        &mut self,
        message: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        self.run("handle_cast", services, |code, handle, context| {
            code.handle_cast(handle, context, message)
        })
    }

    /// Runs `handle_info` with an `INFO_*` kind.
    pub fn handle_info(
        &mut self,
        kind: u32,
        message: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        self.run("handle_info", services, |code, handle, context| {
            code.handle_info(handle, context, kind, message)
        })
    }

    /// Runs `handle_continue`.
    pub fn handle_continue(
        &mut self,
        argument: &[u8],
        services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        self.run("handle_continue", services, |code, handle, context| {
            code.handle_continue(handle, context, argument)
        })
    }

    /// Runs `terminate`.
    pub fn terminate(
        &mut self,
        reason: &StopReason,
        services: &dyn HostServices,
    ) -> Result<(), CallbackError> {
        let reason = reason.to_string();
        self.run("terminate", services, |code, handle, context| {
            code.terminate(handle, context, &reason)
        })
        .map(drop)
    }

    /// The state, encoded.
    pub fn encode_state(&mut self) -> Result<Vec<u8>, CallbackError> {
        let services = Detached::new("");
        let outputs = self.run("encode_state", &services, |code, handle, context| {
            code.encode_state(handle, context)
        })?;
        outputs.into_state(&self.plugin.identity, "encode_state")
    }

    /// The size of the encoded state, measured even when it is over [`MAX_STATE_BYTES`]
    /// (such a state is measured, not copied). An install compares it with the cap to prove,
    /// before its commit, that the way back (a downgrade or a restore from a snapshot, both
    /// starting from this state) can carry it.
    pub fn encoded_state_size(&mut self) -> Result<usize, CallbackError> {
        let services = Detached::new("");
        let (status, outputs) =
            self.run_uninterpreted("encode_state", &services, |code, handle, context| {
                code.encode_state(handle, context)
            })?;
        if status == abi::STATUS_OK
            && let Some((abi::OUTPUT_STATE, size)) = outputs.oversized
        {
            return Ok(size);
        }
        let outputs = interpret(&self.plugin, "encode_state", status, outputs)?;
        outputs
            .into_state(&self.plugin.identity, "encode_state")
            .map(|state| state.len())
    }

    /// The instance's own view of its health (ABI 1.1 `health`); `None` when the plugin
    /// does not implement it (an ABI 1.0 plugin).
    pub fn health(&mut self) -> Option<Result<Health, CallbackError>> {
        if !self.plugin.code.has_health() {
            return None;
        }
        let services = Detached::new("");
        let outputs = self.run("health", &services, |code, handle, context| {
            // Checked above: the entry exists.
            code.health(handle, context).unwrap_or(abi::STATUS_ERROR)
        });
        Some(outputs.and_then(|outputs| {
            let bytes = outputs.reply.ok_or_else(|| CallbackError::Protocol {
                plugin: self.plugin.identity.clone(),
                callback: "health",
                message: "returned success without a health".to_owned(),
            })?;
            graft_plugin::codec::decode::<Health>(&bytes).map_err(|error| CallbackError::Protocol {
                plugin: self.plugin.identity.clone(),
                callback: "health",
                message: format!("the health does not decode: {error}"),
            })
        }))
    }

    /// What operators see of the state (ABI 1.1 `format_status`: secrets redacted),
    /// encoded; `None` when the plugin does not implement it (an ABI 1.0 plugin).
    pub fn format_status(&mut self) -> Option<Result<Vec<u8>, CallbackError>> {
        if !self.plugin.code.has_format_status() {
            return None;
        }
        let services = Detached::new("");
        let outputs = self.run("format_status", &services, |code, handle, context| {
            code.format_status(handle, context)
                .unwrap_or(abi::STATUS_ERROR)
        });
        Some(outputs.and_then(|outputs| outputs.into_state(&self.plugin.identity, "format_status")))
    }

    /// Downgrade: the state converted to the shape of the older version `to_version`.
    pub fn downgrade(
        &mut self,
        to_version: &Version,
        extra: &[u8],
    ) -> Result<Vec<u8>, CallbackError> {
        let services = Detached::new("");
        let to = to_version.to_string();
        let outputs = self.run("downgrade", &services, |code, handle, context| {
            code.downgrade_state(handle, context, &to, extra)
        })?;
        outputs.into_state(&self.plugin.identity, "downgrade")
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take()
            && self.plugin.code.drop_instance(handle) != abi::STATUS_OK
        {
            tracing::warn!(plugin = %self.plugin.identity, "the instance's drop panicked inside the plugin");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_initialize_reports_the_plugins_reason() {
        let error = LoadError::Initialize {
            path: PathBuf::from("/lib/libkv.so"),
            message: initialize_failure(
                abi::STATUS_ERROR,
                Some("host vtable is 24 bytes, this plugin needs at least 72".to_owned()),
            ),
        };
        assert_eq!(
            error.to_string(),
            "plugin /lib/libkv.so failed to initialize: host vtable is 24 bytes, this plugin needs at least 72"
        );
        assert_eq!(
            initialize_failure(abi::STATUS_PANIC, Some("boom".to_owned())),
            "it panicked: boom"
        );
        // A plugin that gives no reason (built before it could) still names its status.
        assert_eq!(
            initialize_failure(abi::STATUS_ERROR, None),
            "initialize returned status 1 and gave no reason"
        );
    }

    #[test]
    fn outputs_record_ignore_and_inactivity_timeouts() {
        let mut outputs = Outputs::default();
        outputs.record(abi::OUTPUT_IGNORE, &[]);
        outputs.record(abi::OUTPUT_TIMEOUT, &1500u64.to_le_bytes());
        assert!(outputs.ignored);
        assert_eq!(
            outputs.inactivity_timeout,
            Some(Duration::from_millis(1500))
        );
        // A timeout that is not 8 bytes is ignored (and logged), not misread.
        let mut outputs = Outputs::default();
        outputs.record(abi::OUTPUT_TIMEOUT, &[1, 2, 3]);
        assert_eq!(outputs.inactivity_timeout, None);
    }
}
