//! Arbitrary bytes where a library's header is must give an error, never a crash: the real
//! counter library with its header's plain fields (magic, sizes, versions, fingerprint,
//! panic strategy, vtable size, and the lengths of its strings) overwritten at random, and
//! arbitrary files. (The `fuzz/` targets run the same checks under libFuzzer.)

use graft::plugin::{Expectations, Loader};
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
