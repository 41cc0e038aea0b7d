//! A process-isolated plugin's `log` and `tracing` records come out of the *host's*
//! `tracing` subscriber with plugin, version and actor fields, forwarded from the worker
//! process over the actor's connection; so does a plugin's panic message. (Its own test
//! binary: it installs the process's global subscriber.)

use graft::isolation::{IsolatedPlugin, Worker, WorkerOptions, WorkerProgram};
use graft::plugin::{Detached, Expectations};
use graft_plugin::codec;
use graft_tests::{graft_binary, plugin_library};
use serde_json::json;

#[test]
fn isolated_plugin_log_records_reach_the_host_subscriber_with_their_origin() {
    let captured = graft_tests::capture_logs();
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

    graft_tests::assert_plugin_log_lines(&captured.text());
}
