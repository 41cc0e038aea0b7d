//! Fuzz target: arbitrary bytes as a library file for the reader of headers from a file's
//! bytes (what the loader checks before `dlopen`, and what `graft inspect` shows). The
//! input is tried as a whole file, and as byte changes to the real counter library (path in
//! `GRAFT_FUZZ_LIBRARY`, default `../target/debug/libcounter_1_0_0.so`) within its first
//! 64 KiB, where the ELF and program headers, dynamic symbols and relocations lie: a header
//! or an error, never a crash.
#![no_main]

use graft::plugin::header;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn counter() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let path = std::env::var("GRAFT_FUZZ_LIBRARY").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/debug/libcounter_1_0_0.so"
            )
            .to_owned()
        });
        std::fs::read(&path)
            .unwrap_or_else(|error| panic!("{path}: {error} (build counter-1-0-0 first)"))
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = header::read(data);
    let mut bytes = counter().to_vec();
    let front = bytes.len().min(64 * 1024);
    for change in data.chunks_exact(3) {
        let position = usize::from(u16::from_le_bytes([change[0], change[1]])) % front;
        bytes[position] = change[2];
    }
    let _ = header::read(&bytes);
});
