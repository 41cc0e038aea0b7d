//! Fuzz target: arbitrary bytes as a release manifest are parsed and validated (source and
//! assembled rules) and searched; any outcome but a panic is fine.
#![no_main]

use graft::release::Manifest;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(manifest) = Manifest::parse(Path::new("fuzz.toml"), &text) {
        let _ = manifest.validate(Path::new("fuzz.toml"), false);
        let _ = manifest.validate(Path::new("fuzz.toml"), true);
        let _ = manifest.find_child("counter");
        let _ = manifest.find_supervisor("root");
        let _ = manifest.to_toml();
    }
});
