//! Arbitrary bytes where a library's header is must give an error, never a crash: the real
//! counter library with its header's plain fields (magic, sizes, versions, fingerprint,
//! panic strategy, vtable size, and the lengths of its strings) overwritten at random, and
//! arbitrary files. The same for the reader of headers from a file's bytes (used before
//! `dlopen` and by `graft inspect`): random bytes in the ELF structures it walks (headers,
//! dynamic symbols, relocations) or in the header, and truncations at any length, give a
//! header or an error, never a panic. (The `fuzz/` targets run the same checks under
//! libFuzzer.)

use graft::plugin::{Expectations, Loader, header, inspect};
use graft_plugin::abi;
use graft_tests::{find_unique, plugin_library};
use proptest::prelude::*;
use std::mem::offset_of;
use std::sync::OnceLock;

fn counter_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(plugin_library("counter-1-0-0")).unwrap())
}

fn header_offset(bytes: &[u8]) -> usize {
    let mut needle = abi::MAGIC.to_le_bytes().to_vec();
    needle.extend_from_slice(&(size_of::<abi::PluginHeader>() as u32).to_le_bytes());
    find_unique(bytes, &needle)
}

/// The header's bytes that are plain data in the file (pointers are relocated at load).
fn plain_ranges() -> Vec<(usize, usize)> {
    let length = |offset: usize| (offset + size_of::<*const u8>(), size_of::<usize>());
    vec![
        (0, offset_of!(abi::PluginHeader, name)),
        length(offset_of!(abi::PluginHeader, name)),
        length(offset_of!(abi::PluginHeader, version)),
        length(offset_of!(abi::PluginHeader, api_version)),
        length(offset_of!(abi::PluginHeader, target)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn a_header_of_random_plain_fields_is_refused_or_loaded_never_a_crash(
        noise in proptest::collection::vec(any::<u8>(), 200),
        keep_magic in any::<bool>(),
    ) {
        let mut bytes = counter_bytes().to_vec();
        let start = header_offset(&bytes);
        let mut cursor = 0;
        for (offset, length) in plain_ranges() {
            for index in 0..length {
                if keep_magic && offset + index < 8 {
                    continue;
                }
                bytes[start + offset + index] = noise[cursor % noise.len()];
                cursor += 1;
            }
        }
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("noise.so");
        std::fs::write(&path, &bytes).unwrap();
        let loader = Loader::new().unwrap();
        match loader.load(&path, &Expectations::default()) {
            Ok(plugin) => prop_assert_eq!(plugin.name(), "counter"),
            Err(error) => prop_assert!(error.to_string().contains("noise.so"), "{}", error),
        }
    }

    #[test]
    fn arbitrary_files_are_refused_with_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("arbitrary.so");
        std::fs::write(&path, &bytes).unwrap();
        let error = Loader::new().unwrap().load(&path, &Expectations::default()).unwrap_err();
        prop_assert!(error.to_string().contains("arbitrary.so"), "{}", error);
    }
}

/// How far into the library the ELF structures the file reader walks lie (ELF and program
/// headers, dynamic symbols and strings, dynamic relocations come first in the file).
const FRONT: usize = 64 * 1024;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_in_the_elf_structures_or_the_header_never_crash_the_file_reader(
        changes in proptest::collection::vec((any::<bool>(), any::<u16>(), any::<u8>()), 1..16),
    ) {
        let mut bytes = counter_bytes().to_vec();
        let header = header_offset(&bytes);
        for (in_header, position, value) in changes {
            let index = if in_header {
                header + usize::from(position) % size_of::<abi::PluginHeader>()
            } else {
                usize::from(position) % FRONT.min(bytes.len())
            };
            bytes[index] = value;
        }
        // Any outcome but a panic: a header, or an error.
        let _ = header::read(&bytes);
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("mutated.so");
        std::fs::write(&path, &bytes).unwrap();
        let inspection = inspect::inspect(&path).unwrap();
        prop_assert!(inspection.loadable || inspection.refusal.as_deref().is_some_and(|reason| reason.contains("mutated.so")));
    }

    #[test]
    fn a_library_truncated_anywhere_gives_an_error_naming_the_file(cut in 0usize..FRONT * 2) {
        let bytes = &counter_bytes()[..cut.min(counter_bytes().len())];
        prop_assert!(header::read(bytes).is_err());
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("cut.so");
        std::fs::write(&path, bytes).unwrap();
        let inspection = inspect::inspect(&path).unwrap();
        prop_assert!(!inspection.loadable);
        let refusal = inspection.refusal.unwrap_or_default();
        prop_assert!(refusal.contains("cut.so"), "{}", refusal);
    }
}

#[test]
fn the_file_reader_reads_what_the_loader_reads_in_memory() {
    let from_file = header::read(counter_bytes()).unwrap();
    let loaded = Loader::new()
        .unwrap()
        .load(&plugin_library("counter-1-0-0"), &Expectations::default())
        .unwrap();
    assert_eq!(from_file.fields.magic, abi::MAGIC);
    assert_eq!(
        String::from_utf8_lossy(&from_file.fields.name),
        loaded.name()
    );
    assert_eq!(
        String::from_utf8_lossy(&from_file.fields.version),
        loaded.version().to_string()
    );
    assert_eq!(
        String::from_utf8_lossy(&from_file.fields.target),
        abi::TARGET
    );
    assert_eq!(
        String::from_utf8_lossy(&from_file.fields.api_version),
        abi::API_VERSION
    );
    assert_eq!(from_file.fields.layout_fingerprint, abi::LAYOUT_FINGERPRINT);
    assert_eq!(
        from_file.callbacks.len(),
        header::plugin_callbacks().count()
    );
}
