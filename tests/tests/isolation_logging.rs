//! A process-isolated plugin's `log` and `tracing` records come out of the *host's*
//! `tracing` subscriber with plugin, version and actor fields, forwarded from the worker
//! process over the actor's connection; so does a plugin's panic message. (Its own test
//! binary: it installs the process's global subscriber.)

use graft::isolation::{IsolatedPlugin, Worker, WorkerOptions, WorkerProgram};
use graft::plugin::{Detached, Expectations};
use graft_plugin::codec;
use graft_tests::{graft_binary, plugin_library};
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

#[test]
fn isolated_plugin_log_records_reach_the_host_subscriber_with_their_origin() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let options = WorkerOptions {
        program: WorkerProgram::Path(graft_binary()),
        memory_limit_mb: None,
    };
    let counter = Worker::new("counter", options.clone());
    let old = IsolatedPlugin::load(
        &counter,
        &plugin_library("counter-1-0-0"),
        &Expectations::default(),
    )
    .unwrap();
    let new = IsolatedPlugin::load(
        &counter,
        &plugin_library("counter-1-1-0"),
        &Expectations::default(),
    )
    .unwrap();
    let args = codec::encode(&json!({"start": 5})).unwrap();
    // 1.0.0 logs with the `log` crate, 1.1.0 with `tracing` (with a field).
    let _old = old.start(&args, &Detached::new("old-counter")).unwrap();
    let _new = new.start(&args, &Detached::new("new-counter")).unwrap();
    let faulty = Worker::new("faulty", options);
    let faulty = IsolatedPlugin::load(
        &faulty,
        &plugin_library("graft-fixture-faulty"),
        &Expectations::default(),
    )
    .unwrap();
    let panicking = codec::encode(&json!({"panic_in": ["init"]})).unwrap();
    assert!(faulty.start(&panicking, &Detached::new("faulty")).is_err());

    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let line = |needle: &str| {
        text.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    let old_line = line("counter 1.0.0 starting as old-counter at 5");
    assert!(old_line.contains("INFO"), "{old_line}");
    assert!(old_line.contains("graft::plugin"), "{old_line}");
    assert!(
        old_line.contains("plugin=\"counter\"") || old_line.contains("plugin=counter"),
        "{old_line}"
    );
    assert!(old_line.contains("version=1.0.0"), "{old_line}");
    assert!(old_line.contains("old-counter"), "{old_line}");
    let new_line = line("counter 1.1.0 starting as new-counter");
    assert!(new_line.contains("version=1.1.0"), "{new_line}");
    assert!(new_line.contains("start=5"), "{new_line}");
    let panic_line = line("plugin panicked at");
    assert!(panic_line.contains("ERROR"), "{panic_line}");
    assert!(
        panic_line.contains("faulty panics in init on purpose"),
        "{panic_line}"
    );
}
