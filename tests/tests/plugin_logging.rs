//! A plugin's `log` and `tracing` records come out of the host's `tracing` subscriber with
//! plugin, version and actor fields, and a plugin's panic is logged with its location.
//! (Its own test binary: it installs the process's global subscriber.)

use graft::plugin::{Detached, Expectations, Instance, Loader};
use graft_plugin::codec;
use graft_tests::plugin_library;
use serde_json::json;

#[test]
fn plugin_log_records_reach_the_host_subscriber_with_their_origin() {
    let captured = graft_tests::capture_logs();

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

    graft_tests::assert_plugin_log_lines(&captured.text());
}
