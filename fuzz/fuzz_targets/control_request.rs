//! Fuzz target: arbitrary bytes as a control-socket request line decode to a request or an
//! error, never a panic.
#![no_main]

use graft::control::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let _ = serde_json::to_string(&request);
    }
});
