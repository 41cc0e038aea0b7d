//! Reading a plugin's header from the library file's bytes, before anything is loaded.
//!
//! `dlopen` runs a library's load-time constructors, so every check that can refuse a
//! library must happen on its bytes first: this module finds the entry symbol
//! ([`abi::ENTRY_SYMBOL`]) in the ELF dynamic symbol table, maps its virtual address to a
//! file offset through the program headers, and reads the [`abi::PluginHeader`] fields and
//! the strings they point to. `graft inspect` uses the same reader.
//!
//! What is tricky: in a position-independent library the header's pointers (`name`,
//! `version`, `api_version`, `target`, `vtable`) and the vtable's function pointers are not
//! in the file's bytes; the dynamic linker writes them from the dynamic relocations. So a
//! pointer is resolved from the relocation at its address: a `R_*_RELATIVE` one gives the
//! (load-base relative) address as its addend (explicit in `.rela.dyn`, implicit in the
//! file's bytes for `.rel.dyn`), an absolute one against a defined dynamic symbol gives the
//! symbol's address plus the addend. A pointer with no such relocation is read as stored:
//! that covers packed relative relocations (`.relr.dyn`, `-z pack-relative-relocs`), which
//! keep the address in the file's bytes. Only the relocations at the header and at the
//! vtable are resolved (a library has thousands elsewhere; resolving them all was a
//! sizeable share of a load).
//!
//! Invariants: every read is bounds-checked against the file and the segment that backs
//! the address; strings are capped at [`MAX_HEADER_STRING`]; any inconsistency is a
//! [`HeaderFileError`], never a panic. The reader uses the layout of this host's
//! [`abi::PluginHeader`] (offsets from `offset_of!`), so the caller checks the ELF class
//! and machine first ([`super::check_elf`]).

use graft_plugin::abi::{self, PluginHeader, PluginVtable};
use object::{Object, ObjectSegment, ObjectSymbol, ObjectSymbolTable, RelocationTarget};
use std::collections::HashMap;
use std::mem::{offset_of, size_of};

/// Longest string accepted from a header (the same cap as the in-memory read).
pub const MAX_HEADER_STRING: usize = 1024;

/// The plugin vtable's entries, in field order, with their offsets. Every entry of the
/// `#[repr(C)]` [`PluginVtable`] is one function pointer, so entry `i` starts `i` pointers
/// in; the names come from [`abi::PLUGIN_VTABLE_SIGNATURES`], so an entry a later ABI
/// minor appends is listed with no change here.
pub fn plugin_callbacks() -> impl Iterator<Item = (&'static str, usize)> {
    abi::PLUGIN_VTABLE_SIGNATURES
        .iter()
        .enumerate()
        .map(|(index, entry)| (entry.field, index * size_of::<usize>()))
}

/// The fields of a plugin header the loader checks, as read from the library file
/// ([`read`]) or, after loading, from the mapped image (`ffi::read_header`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFields {
    /// The magic (the other fields are only read when it is [`abi::MAGIC`]).
    pub magic: u64,
    /// Its ABI major version.
    pub abi_major: u16,
    /// Its ABI minor version.
    pub abi_minor: u16,
    /// Its layout fingerprint.
    pub layout_fingerprint: u64,
    /// 1 for `panic = "unwind"`.
    pub panic_unwind: u32,
    /// The vtable size it declares.
    pub vtable_size: u32,
    /// Its name's bytes.
    pub name: Vec<u8>,
    /// Its version's bytes.
    pub version: Vec<u8>,
    /// Its `graft-plugin` version's bytes.
    pub api_version: Vec<u8>,
    /// Its target triple's bytes.
    pub target: Vec<u8>,
}

impl HeaderFields {
    /// A header of which only the magic was read (it is not [`abi::MAGIC`]: the rest is
    /// not a header at all).
    pub(crate) fn only_magic(magic: u64) -> HeaderFields {
        HeaderFields {
            magic,
            abi_major: 0,
            abi_minor: 0,
            layout_fingerprint: 0,
            panic_unwind: 0,
            vtable_size: 0,
            name: Vec::new(),
            version: Vec::new(),
            api_version: Vec::new(),
            target: Vec::new(),
        }
    }
}

/// A header as the library file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// The fields the loader checks.
    pub fields: HeaderFields,
    /// The header size the plugin declares.
    pub header_size: u32,
    /// The callbacks of [`plugin_callbacks`] that lie within its declared vtable and are
    /// not null.
    pub callbacks: Vec<&'static str>,
}

/// Why the header could not be read from the file. The loader turns each into a
/// [`super::LoadError`] naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderFileError {
    /// The ELF structures could not be parsed.
    #[error("malformed ELF object: {0}")]
    Elf(String),
    /// The dynamic symbol table has no defined entry symbol.
    #[error("no `{0}` in the dynamic symbol table")]
    MissingSymbol(String),
    /// The header declares a smaller size than this host's header.
    #[error("header is {0} bytes, expected at least {size}", size = size_of::<PluginHeader>())]
    TooSmall(u32),
    /// A field or what it points to is not in the file.
    #[error("malformed header: {0}")]
    Malformed(String),
}

/// Where a pointer-sized value in the file comes from.
enum Resolved {
    /// An address relative to the load base (or a plain value).
    Address(u64),
    /// Bound by the dynamic linker to a symbol of another object.
    External,
}

struct Image<'data> {
    bytes: &'data [u8],
    /// (virtual address, file offset, file size) of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
    /// The relocation at each address.
    relocations: HashMap<u64, Resolved>,
    big_endian: bool,
    pointer: usize,
}

impl Image<'_> {
    /// The file bytes backing `length` bytes at virtual address `address`.
    fn at(&self, address: u64, length: usize, what: &str) -> Result<&[u8], HeaderFileError> {
        let malformed = || {
            HeaderFileError::Malformed(format!(
                "{what} ({length} bytes at address {address:#x}) is not in the file"
            ))
        };
        let end = address.checked_add(length as u64).ok_or_else(malformed)?;
        let (start, offset, _) = self
            .segments
            .iter()
            .find(|&&(start, _, size)| address >= start && end <= start.saturating_add(size))
            .ok_or_else(malformed)?;
        let offset = offset
            .checked_add(address - start)
            .and_then(|offset| usize::try_from(offset).ok())
            .ok_or_else(malformed)?;
        let stop = offset.checked_add(length).ok_or_else(malformed)?;
        self.bytes.get(offset..stop).ok_or_else(malformed)
    }

    fn unsigned(&self, address: u64, length: usize, what: &str) -> Result<u64, HeaderFileError> {
        let bytes = self.at(address, length, what)?;
        let mut buffer = [0u8; 8];
        if self.big_endian {
            buffer[8 - length..].copy_from_slice(bytes);
            Ok(u64::from_be_bytes(buffer))
        } else {
            buffer[..length].copy_from_slice(bytes);
            Ok(u64::from_le_bytes(buffer))
        }
    }

    /// The value a pointer at `address` has once loaded (relative to the load base).
    fn pointer(&self, address: u64, what: &str) -> Result<Resolved, HeaderFileError> {
        match self.relocations.get(&address) {
            Some(Resolved::Address(value)) => Ok(Resolved::Address(*value)),
            Some(Resolved::External) => Ok(Resolved::External),
            None => Ok(Resolved::Address(self.unsigned(
                address,
                self.pointer,
                what,
            )?)),
        }
    }

    fn string(&self, field_address: u64, what: &str) -> Result<Vec<u8>, HeaderFileError> {
        let length_address = field_address.wrapping_add(offset_of!(abi::Bytes, len) as u64);
        let length = self.unsigned(length_address, self.pointer, what)?;
        if length > MAX_HEADER_STRING as u64 {
            return Err(HeaderFileError::Malformed(format!(
                "`{what}` is {length} bytes long, at most {MAX_HEADER_STRING} are accepted"
            )));
        }
        if length == 0 {
            return Ok(Vec::new());
        }
        match self.pointer(
            field_address.wrapping_add(offset_of!(abi::Bytes, ptr) as u64),
            what,
        )? {
            Resolved::Address(address) => Ok(self.at(address, length as usize, what)?.to_vec()),
            Resolved::External => Err(HeaderFileError::Malformed(format!(
                "`{what}` points into another library"
            ))),
        }
    }
}

/// The relocation type that means "load base plus addend" on `architecture`.
fn relative_type(architecture: object::Architecture) -> Option<object::elf::RelocationType> {
    use object::Architecture as A;
    use object::elf;
    Some(match architecture {
        A::X86_64 | A::X86_64_X32 => elf::R_X86_64_RELATIVE,
        A::Aarch64 | A::Aarch64_Ilp32 => elf::R_AARCH64_RELATIVE,
        A::I386 => elf::R_386_RELATIVE,
        A::Arm => elf::R_ARM_RELATIVE,
        A::Riscv32 | A::Riscv64 => elf::R_RISCV_RELATIVE,
        A::PowerPc64 => elf::R_PPC64_RELATIVE,
        A::LoongArch64 => elf::R_LARCH_RELATIVE,
        A::S390x => elf::R_390_RELATIVE,
        A::PowerPc => elf::R_PPC_RELATIVE,
        A::Sparc64 => elf::R_SPARC_RELATIVE,
        A::LoongArch32 => elf::R_LARCH_RELATIVE,
        _ => return None,
    })
}

/// The dynamic relocations of `file` at the `length` bytes from `start` (a virtual address),
/// resolved: the header's and the vtable's pointers are all a read needs, and a library has
/// thousands of relocations elsewhere, so only these are resolved and kept.
fn relocations_in(
    file: &object::File<'_>,
    image: &Image<'_>,
    relative: Option<object::elf::RelocationType>,
    start: u64,
    length: usize,
) -> HashMap<u64, Resolved> {
    let end = start.saturating_add(length as u64);
    let pointer = image.pointer;
    let symbols = file.dynamic_symbol_table();
    let mut relocations = HashMap::new();
    for (address, relocation) in file.dynamic_relocations().into_iter().flatten() {
        if address < start || address >= end {
            continue;
        }
        let object::RelocationFlags::Elf { r_type } = relocation.flags() else {
            continue;
        };
        let addend = |image: &Image<'_>| -> Result<u64, HeaderFileError> {
            if relocation.has_implicit_addend() {
                image.unsigned(address, pointer, "a relocated pointer")
            } else {
                Ok(relocation.addend() as u64)
            }
        };
        let resolved = if Some(r_type) == relative {
            match addend(image) {
                Ok(value) => Resolved::Address(value),
                Err(_) => continue,
            }
        } else if relocation.kind() == object::RelocationKind::Absolute
            && usize::from(relocation.size()) == pointer * 8
        {
            let target = match relocation.target() {
                RelocationTarget::Symbol(index) => symbols
                    .as_ref()
                    .and_then(|table| table.symbol_by_index(index).ok()),
                _ => None,
            };
            match (target, addend(image)) {
                (Some(target), Ok(value)) if target.is_definition() => {
                    Resolved::Address(target.address().wrapping_add(value))
                }
                _ => Resolved::External,
            }
        } else {
            continue;
        };
        relocations.insert(address, resolved);
    }
    relocations
}

/// Reads the header of the ELF shared object `bytes` without loading it.
pub fn read(bytes: &[u8]) -> Result<FileHeader, HeaderFileError> {
    let file =
        object::File::parse(bytes).map_err(|error| HeaderFileError::Elf(error.to_string()))?;
    let symbol_name = &abi::ENTRY_SYMBOL[..abi::ENTRY_SYMBOL.len() - 1];
    let missing =
        || HeaderFileError::MissingSymbol(String::from_utf8_lossy(symbol_name).into_owned());
    let symbol = file
        .dynamic_symbols()
        .find(|symbol| symbol.is_definition() && symbol.name_bytes().ok() == Some(symbol_name))
        .ok_or_else(missing)?;
    let big_endian = file.endianness() == object::Endianness::Big;
    let pointer = if file.is_64() { 8 } else { 4 };
    let segments = file
        .segments()
        .map(|segment| {
            let (offset, size) = segment.file_range();
            (segment.address(), offset, size)
        })
        .collect();
    let relative = relative_type(file.architecture());
    let mut image = Image {
        bytes,
        segments,
        relocations: HashMap::new(),
        big_endian,
        pointer,
    };
    let header = symbol.address();
    image.relocations = relocations_in(&file, &image, relative, header, size_of::<PluginHeader>());

    // Wrapping: a corrupt address is refused by the bounds checks of every read, not here.
    let field = |offset: usize| header.wrapping_add(offset as u64);
    let magic = image.unsigned(
        field(offset_of!(PluginHeader, magic)),
        8,
        "the header's magic",
    )?;
    let header_size = image.unsigned(
        field(offset_of!(PluginHeader, header_size)),
        4,
        "the header size",
    )? as u32;
    let mut result = FileHeader {
        fields: HeaderFields::only_magic(magic),
        header_size,
        callbacks: Vec::new(),
    };
    if magic != abi::MAGIC {
        // The rest is not a header at all: report the magic first.
        return Ok(result);
    }
    if (header_size as usize) < size_of::<PluginHeader>() {
        return Err(HeaderFileError::TooSmall(header_size));
    }
    image.at(header, size_of::<PluginHeader>(), "the header")?;
    result.fields.abi_major =
        image.unsigned(field(offset_of!(PluginHeader, abi_major)), 2, "abi_major")? as u16;
    result.fields.abi_minor =
        image.unsigned(field(offset_of!(PluginHeader, abi_minor)), 2, "abi_minor")? as u16;
    result.fields.layout_fingerprint = image.unsigned(
        field(offset_of!(PluginHeader, layout_fingerprint)),
        8,
        "layout_fingerprint",
    )?;
    result.fields.panic_unwind = image.unsigned(
        field(offset_of!(PluginHeader, panic_unwind)),
        4,
        "panic_unwind",
    )? as u32;
    result.fields.vtable_size = image.unsigned(
        field(offset_of!(PluginHeader, vtable_size)),
        4,
        "vtable_size",
    )? as u32;
    result.fields.name = image.string(field(offset_of!(PluginHeader, name)), "name")?;
    result.fields.version = image.string(field(offset_of!(PluginHeader, version)), "version")?;
    result.fields.api_version =
        image.string(field(offset_of!(PluginHeader, api_version)), "api_version")?;
    result.fields.target = image.string(field(offset_of!(PluginHeader, target)), "target")?;
    let vtable = match image.pointer(field(offset_of!(PluginHeader, vtable)), "vtable")? {
        Resolved::Address(address) if address != 0 => address,
        Resolved::Address(_) => {
            return Err(HeaderFileError::Malformed("`vtable` is null".to_owned()));
        }
        Resolved::External => {
            return Err(HeaderFileError::Malformed(
                "`vtable` points into another library".to_owned(),
            ));
        }
    };
    let vtable_length = (result.fields.vtable_size as usize).min(size_of::<PluginVtable>());
    image.at(vtable, vtable_length, "vtable")?;
    let vtable_relocations = relocations_in(&file, &image, relative, vtable, vtable_length);
    image.relocations.extend(vtable_relocations);
    for (callback, offset) in plugin_callbacks() {
        if offset + pointer > result.fields.vtable_size as usize {
            continue;
        }
        let present = match image.pointer(vtable.wrapping_add(offset as u64), callback)? {
            Resolved::Address(address) => address != 0,
            Resolved::External => true,
        };
        if present {
            result.callbacks.push(callback);
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived offsets are the struct's own: the first entry, the last ABI 1.0 entry,
    /// the ABI 1.1 entries, and the whole vtable.
    #[test]
    fn each_callback_sits_at_its_fields_offset() {
        let offsets: HashMap<&str, usize> = plugin_callbacks().collect();
        assert_eq!(offsets["initialize"], offset_of!(PluginVtable, initialize));
        assert_eq!(
            offsets["drop_instance"],
            offset_of!(PluginVtable, drop_instance)
        );
        assert_eq!(offsets["health"], offset_of!(PluginVtable, health));
        assert_eq!(
            offsets["format_status"],
            offset_of!(PluginVtable, format_status)
        );
        assert_eq!(
            plugin_callbacks().count() * size_of::<usize>(),
            size_of::<PluginVtable>()
        );
    }
}
