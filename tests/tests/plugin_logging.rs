//! A plugin's `log` and `tracing` records come out of the host's `tracing` subscriber with
//! plugin, version and actor fields, and a plugin's panic is logged with its location.
//! (Its own test binary: it installs the process's global subscriber.)

use graft::plugin::{Detached, Expectations, Instance, Loader};
use graft_plugin::codec;
use graft_tests::plugin_library;
use serde_json::json;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[test]
fn plugin_log_records_reach_the_host_subscriber_with_their_origin() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let loader = Loader::new().unwrap();
    let old = loader
        .load(&plugin_library("counter-1-0-0"), &Expectations::default())
        .unwrap();
    let new = loader
        .load(&plugin_library("counter-1-1-0"), &Expectations::default())
        .unwrap();
    let args = codec::encode(&json!({"start": 5})).unwrap();
    // 1.0.0 logs with the `log` crate, 1.1.0 with `tracing` (with a field).
    let _old = Instance::start(&old, &args, &Detached::new("old-counter")).unwrap();
    let _new = Instance::start(&new, &args, &Detached::new("new-counter")).unwrap();

    let faulty = loader
        .load(
            &plugin_library("graft-fixture-faulty"),
            &Expectations::default(),
        )
        .unwrap();
    let panicking = codec::encode(&json!({"panic_in": ["init"]})).unwrap();
    assert!(Instance::start(&faulty, &panicking, &Detached::new("faulty")).is_err());

    let text = captured.text();
    let line = |needle: &str| {
        text.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    let old_line = line("counter 1.0.0 starting as old-counter at 5");
    assert!(old_line.contains("INFO"), "{old_line}");
    assert!(
        old_line.contains("plugin=\"counter\"") || old_line.contains("plugin=counter"),
        "{old_line}"
    );
    assert!(old_line.contains("version=1.0.0"), "{old_line}");
    assert!(old_line.contains("old-counter"), "{old_line}");

    let new_line = line("counter 1.1.0 starting as new-counter");
    assert!(new_line.contains("version=1.1.0"), "{new_line}");
    assert!(
        new_line.contains("start=5"),
        "tracing fields are kept: {new_line}"
    );

    let panic_line = line("plugin panicked at");
    assert!(panic_line.contains("ERROR"), "{panic_line}");
    assert!(
        panic_line.contains("faulty panics in init on purpose"),
        "{panic_line}"
    );
    assert!(
        panic_line.contains("tests/fixtures/faulty/src/lib.rs"),
        "{panic_line}"
    );
}
