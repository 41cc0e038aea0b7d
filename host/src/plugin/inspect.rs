//! `graft inspect FILE.so`: what a library is and whether this host would load it, read
//! from its bytes alone.
//!
//! Invariant: nothing here opens the library with `dlopen`, so none of its code runs (not
//! even load-time constructors). The checks are the loader's own pre-`dlopen` checks
//! ([`super::check_elf`], [`super::header::read`], [`super::check_header`] with no
//! expectations), so "loadable" here means the loader accepts it up to `dlopen` and its
//! `initialize`, which only running the code can tell.

use super::{
    DEFAULT_MAX_PLUGIN_SIZE, Expectations, LoadError, Sha256Digest, check_elf, check_header,
    read_file_header,
};
use graft_plugin::abi;
use serde::Serialize;
use std::fmt;
use std::path::Path;

/// What `graft inspect` found in a library.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file inspected.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// The SHA-256 of its bytes (64 hex digits).
    pub sha256: String,
    /// What its ELF header says it is built for, when it is an ELF object.
    pub machine: Option<String>,
    /// Its header, when one could be read.
    pub header: Option<HeaderReport>,
    /// What this host is.
    pub host: HostReport,
    /// Whether this host would load it.
    pub loadable: bool,
    /// Why not, when it would not.
    pub refusal: Option<String>,
}

/// The plugin header's contents.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderReport {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its ABI version, `major.minor`.
    pub abi: String,
    /// Its layout fingerprint (hex).
    pub fingerprint: String,
    /// Whether it is the fingerprint this host expects of a plugin of its ABI minor (each
    /// minor has its own: see `graft_plugin::abi::layout_fingerprint`).
    pub fingerprint_matches: bool,
    /// The `graft-plugin` version it was built with.
    pub api_version: String,
    /// The target triple it was built for.
    pub target: String,
    /// `unwind` or `abort`.
    pub panic_strategy: String,
    /// The vtable size it declares, in bytes.
    pub vtable_size: u32,
    /// The callbacks its vtable provides (within its declared size, not null).
    pub callbacks: Vec<String>,
}

/// This host's side of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Its ABI version, `major.minor`.
    pub abi: String,
    /// Its layout fingerprint (hex).
    pub fingerprint: String,
    /// Its target triple.
    pub target: String,
    /// Its machine.
    pub machine: String,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Inspects the library at `path` without loading it. `Err` only when the file cannot be
/// read at all (missing, not a regular file, over the default size cap); every other
/// problem is a refusal in the report.
pub fn inspect(path: &Path) -> Result<Inspection, LoadError> {
    let bytes = super::read_library(path, DEFAULT_MAX_PLUGIN_SIZE)?;
    let mut inspection = Inspection {
        path: path.display().to_string(),
        size: bytes.len() as u64,
        sha256: Sha256Digest::of(&bytes).to_string(),
        machine: None,
        header: None,
        host: HostReport {
            abi: format!("{}.{}", abi::ABI_MAJOR, abi::ABI_MINOR),
            fingerprint: format!("{:#018x}", abi::LAYOUT_FINGERPRINT),
            target: abi::TARGET.to_owned(),
            machine: super::ElfKind::host().to_string(),
        },
        loadable: false,
        refusal: None,
    };
    let outcome = (|| {
        let kind = check_elf(path, &bytes)?;
        inspection.machine = Some(kind.to_string());
        let file_header = read_file_header(path, &bytes)?;
        let header = &file_header.fields;
        if header.magic == abi::MAGIC {
            inspection.header = Some(HeaderReport {
                name: text(&header.name),
                version: text(&header.version),
                abi: format!("{}.{}", header.abi_major, header.abi_minor),
                fingerprint: format!("{:#018x}", header.layout_fingerprint),
                fingerprint_matches: abi::layout_fingerprint(header.abi_minor)
                    == Some(header.layout_fingerprint),
                api_version: text(&header.api_version),
                target: text(&header.target),
                panic_strategy: if header.panic_unwind == 1 {
                    "unwind".to_owned()
                } else {
                    "abort".to_owned()
                },
                vtable_size: header.vtable_size,
                callbacks: file_header
                    .callbacks
                    .iter()
                    .map(|&name| name.to_owned())
                    .collect(),
            });
        }
        check_header(path, header, &Expectations::default()).map(drop)
    })();
    match outcome {
        Ok(()) => inspection.loadable = true,
        Err(error) => {
            if inspection.machine.is_none()
                && let LoadError::WrongMachine { found, .. } = &error
            {
                inspection.machine = Some(found.clone());
            }
            inspection.refusal = Some(error.to_string());
        }
    }
    Ok(inspection)
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file:           {}", self.path)?;
        writeln!(f, "size:           {} bytes", self.size)?;
        writeln!(f, "sha256:         {}", self.sha256)?;
        if let Some(machine) = &self.machine {
            writeln!(f, "machine:        {machine}")?;
        }
        if let Some(header) = &self.header {
            let matches = if header.fingerprint_matches {
                format!("as this host expects of ABI {}", header.abi)
            } else {
                format!("NOT what this host expects of ABI {}", header.abi)
            };
            writeln!(f, "plugin:         {} {}", header.name, header.version)?;
            writeln!(
                f,
                "abi:            {} (this host: {})",
                header.abi, self.host.abi
            )?;
            writeln!(f, "fingerprint:    {} ({matches})", header.fingerprint)?;
            writeln!(f, "graft-plugin:   {}", header.api_version)?;
            writeln!(
                f,
                "target:         {} (this host: {})",
                header.target, self.host.target
            )?;
            writeln!(f, "panic strategy: {}", header.panic_strategy)?;
            writeln!(
                f,
                "callbacks:      {} ({} vtable bytes)",
                header.callbacks.join(", "),
                header.vtable_size
            )?;
        }
        match &self.refusal {
            None => write!(f, "loadable:       yes"),
            Some(reason) => write!(f, "loadable:       no: {reason}"),
        }
    }
}
