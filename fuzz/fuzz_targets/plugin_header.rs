//! Fuzz target: arbitrary bytes as a library's header. The real counter library (path in
//! `GRAFT_FUZZ_LIBRARY`, default `../target/debug/libcounter_1_0_0.so`) with the header's
//! plain fields — magic, sizes, ABI versions, fingerprint, panic strategy, vtable size, and
//! the lengths of its strings — replaced by the input; loading must give an error (or a
//! checked plugin), never a crash.
#![no_main]

use graft::plugin::{Expectations, Loader};
use graft_plugin::abi;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Fixture {
    bytes: Vec<u8>,
    header: usize,
    loader: Loader,
    directory: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = std::env::var("GRAFT_FUZZ_LIBRARY")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/libcounter_1_0_0.so").to_owned());
        let bytes = std::fs::read(&path).unwrap_or_else(|error| panic!("{path}: {error} (build counter-1-0-0 first)"));
        let mut needle = abi::MAGIC.to_le_bytes().to_vec();
        needle.extend_from_slice(&(size_of::<abi::PluginHeader>() as u32).to_le_bytes());
        let header = bytes
            .windows(needle.len())
            .position(|window| window == needle.as_slice())
            .expect("the library has a header");
        Fixture {
            bytes,
            header,
            loader: Loader::new().unwrap(),
            directory: tempfile::tempdir().unwrap(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let mut bytes = fixture.bytes.clone();
    let pointer = size_of::<*const u8>();
    let ranges = [
        (0, std::mem::offset_of!(abi::PluginHeader, name)),
        (std::mem::offset_of!(abi::PluginHeader, name) + pointer, size_of::<usize>()),
        (std::mem::offset_of!(abi::PluginHeader, version) + pointer, size_of::<usize>()),
        (std::mem::offset_of!(abi::PluginHeader, api_version) + pointer, size_of::<usize>()),
        (std::mem::offset_of!(abi::PluginHeader, target) + pointer, size_of::<usize>()),
    ];
    let mut input = data.iter().copied();
    for (offset, length) in ranges {
        for index in 0..length {
            if let Some(byte) = input.next() {
                bytes[fixture.header + offset + index] = byte;
            }
        }
    }
    let path = fixture.directory.path().join("fuzzed.so");
    std::fs::write(&path, &bytes).unwrap();
    if let Ok(plugin) = fixture.loader.load(&path, &Expectations::default()) {
        assert_eq!(plugin.name(), "counter");
    }
});
