//! Metrics end to end: the example release booted with metrics on, called and cast to,
//! then upgraded 1.0.0 → 1.1.0 under traffic; `graft::metrics::render` is scraped before
//! and after, `promtool check metrics` accepts both scrapes, and the numbers move as they
//! should (messages counted per plugin version, one more install with its duration and
//! pause observed, the current release changed, actors moved from the old version to the
//! new, libraries loaded; a killed actor's restart and exit recorded). With the `faulty`
//! fixture: an install that rolls back, a panicking callback, a supervisor giving up at its
//! restart intensity, and a callback killed at its deadline are counted.
//!
//! The registry is process-wide and shared by every test of this binary: assertions
//! compare two scrapes (deltas), never absolute values; and the tests take turns
//! ([`SERIAL`]), since the release facts are the last booted handler's.

use graft::metrics::{self, UpgradeKind, UpgradeOutcome};
use graft_plugin::codec;
use graft_tests::scrape::{Scrape, promtool_accepts};
use graft_tests::{boot, eventually, example_root, version};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

/// Held by each test for its whole run.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const DEADLINE: Duration = Duration::from_secs(20);

fn encode(value: &Value) -> Vec<u8> {
    codec::encode(value).unwrap()
}

/// A scrape of this process's metrics.
fn scrape() -> Scrape {
    Scrape::parse(metrics::render())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scrape_during_an_install_shows_the_numbers_move() {
    let _serial = SERIAL.lock().await;
    metrics::enable();
    let root = example_root();
    let (runtime, handler) = boot(root.path()).await;
    let before = scrape();
    promtool_accepts(&before);
    assert_eq!(
        before.release("1.0.0", "current"),
        1.0,
        "the booted release is current:\n{}",
        before.text
    );

    // Calls and casts to kv 1.0.0 are counted for that version.
    for index in 0..20 {
        let put = json!({"Put": {"key": format!("call-{index}"), "value": "x"}});
        runtime.call("kv", encode(&put), SECOND).await.unwrap();
    }
    for index in 0..30 {
        let put = json!({"Put": {"key": format!("cast-{index}"), "value": "x"}});
        runtime.cast("kv", encode(&put)).unwrap();
    }
    assert!(
        eventually(DEADLINE, || {
            let now = scrape();
            now.handled("kv", "1.0.0", "call") - before.handled("kv", "1.0.0", "call") >= 20.0
                && now.handled("kv", "1.0.0", "cast") - before.handled("kv", "1.0.0", "cast")
                    >= 30.0
        })
        .await,
        "kv 1.0.0's calls and casts were counted:\n{}",
        scrape().text
    );
    let kv = runtime.whereis("kv").unwrap();
    let status = kv.status(SECOND).await.unwrap();
    assert!(status.messages_handled >= 50, "{status:?}");
    let during = scrape();
    assert!(during.running("kv", "1.0.0") >= 1.0, "{}", during.text);
    let duration_count = |scrape: &Scrape, kind: &str| {
        scrape.value(
            "graft_plugin_callback_duration_seconds_count",
            &[("plugin", "kv"), ("version", "1.0.0"), ("kind", kind)],
        )
    };
    // Durations are a sample: one message in TIMED_EVERY per actor (its first included).
    let timed = duration_count(&during, "call") - duration_count(&before, "call");
    let calls = during.handled("kv", "1.0.0", "call") - before.handled("kv", "1.0.0", "call");
    assert!(
        timed >= (calls / f64::from(metrics::plugin::TIMED_EVERY)).floor() && timed <= calls,
        "{timed} of {calls} calls timed"
    );

    // Install 1.1.0 while clients keep calling and casting.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..2 {
        let (runtime, stop) = (runtime.clone(), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) || sent < 20 {
                sent += 1;
                let put = json!({"Put": {"key": format!("c{client}"), "value": sent.to_string()}});
                runtime.cast("kv", encode(&put)).unwrap();
                runtime
                    .call("kv", encode(&put), Duration::from_secs(5))
                    .await
                    .unwrap();
            }
        }));
    }
    let upgrades_before = metrics::upgrades().len();
    let report = handler.install(&version("1.1.0"), None).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    // Traffic after the install is counted for the new version.
    for index in 0..10 {
        let get = json!({"Get": format!("call-{index}")});
        runtime.call("kv", encode(&get), SECOND).await.unwrap();
    }
    assert!(
        eventually(DEADLINE, || scrape().handled("kv", "1.1.0", "call")
            - before.handled("kv", "1.1.0", "call")
            >= 10.0)
        .await,
        "kv 1.1.0's calls were counted:\n{}",
        scrape().text
    );
    let after = scrape();
    promtool_accepts(&after);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(
        after.upgrades("install", "completed") - before.upgrades("install", "completed"),
        1.0,
        "{}",
        after.text
    );
    assert_eq!(
        delta(
            "graft_upgrade_duration_seconds_count",
            &[("kind", "install")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "graft_upgrade_longest_pause_seconds_count",
            &[("kind", "install")]
        ),
        1.0
    );
    assert_eq!(after.release("1.1.0", "current"), 1.0, "{}", after.text);
    assert_eq!(
        after.release("1.0.0", "current"),
        0.0,
        "only one release is current"
    );
    // kv moved from 1.0.0 to 1.1.0.
    let left_old = before.running("kv", "1.0.0") - after.running("kv", "1.0.0");
    let joined_new = after.running("kv", "1.1.0") - before.running("kv", "1.1.0");
    assert!(left_old >= 1.0, "{}", after.text);
    assert_eq!(left_old, joined_new, "{}", after.text);
    assert!(
        after.value("graft_libraries_loaded_total", &[])
            > before.value("graft_libraries_loaded_total", &[])
    );
    assert!(
        after.handled("kv", "1.0.0", "cast") - before.handled("kv", "1.0.0", "cast")
            + after.handled("kv", "1.1.0", "cast")
            - before.handled("kv", "1.1.0", "cast")
            >= 30.0 + 40.0,
        "the casts before and during the install were counted"
    );

    // The observer's timeline: this install, its phases, nothing lost.
    let upgrades = metrics::upgrades();
    assert!(upgrades.len() > upgrades_before || upgrades.len() == 32);
    let record = upgrades
        .iter()
        .rev()
        .find(|record| record.from == "1.0.0" && record.to == "1.1.0")
        .expect("the install is recorded");
    assert_eq!(record.kind, UpgradeKind::Install);
    assert_eq!(record.outcome, UpgradeOutcome::Completed);
    assert_eq!(record.actors_migrated, report.actors_migrated as u64);
    assert_eq!(record.lost, 0, "{record:?}");
    let phases: Vec<&str> = record
        .phases
        .iter()
        .map(|phase| phase.name.as_str())
        .collect();
    for phase in ["loading", "suspending", "migrating", "resuming"] {
        assert!(phases.contains(&phase), "{phases:?}");
    }
    assert!(record.total_us >= record.longest_pause_us);

    // A killed actor: its supervisor's restart and its exit are recorded.
    let counter = runtime.whereis("counter").unwrap();
    counter.kill();
    assert!(
        eventually(DEADLINE, || runtime
            .whereis("counter")
            .is_some_and(|restarted| restarted != counter))
        .await
    );
    let restarted = scrape();
    promtool_accepts(&restarted);
    assert!(
        restarted.sum("graft_supervisor_restarts_total")
            > after.sum("graft_supervisor_restarts_total"),
        "{}",
        restarted.text
    );
    assert!(
        !metrics::recent_exits("counter").is_empty(),
        "the kill is among counter's recent exits"
    );
    handler.shutdown().await;
}

const UPGRADE_FAULTY: &str = "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\nplugin = \"faulty\"\nsuspend_timeout_ms = 200\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_install_a_panic_and_a_timeout_are_counted() {
    let _serial = SERIAL.lock().await;
    metrics::enable();
    // f2's code_change panics (the install rolls back); f3's handle_call panics, and with
    // max_restarts = 0 its supervisor then gives up.
    let root = graft_tests::faulty_releases(
        3,
        |index| match index {
            2 => "{ panic_in = [\"code_change\"] }",
            3 => "{ panic_in = [\"handle_call\"] }",
            _ => "{}",
        },
        UPGRADE_FAULTY,
    );
    let (runtime, handler) = boot(root.path()).await;
    let before = scrape();
    let echo = encode(&json!({"Echo": "x"}));
    runtime.call("f1", echo.clone(), SECOND).await.unwrap();

    handler
        .install(&version("2.0.0"), None)
        .await
        .expect_err("f2's code_change panics");
    let rolled_back = scrape();
    promtool_accepts(&rolled_back);
    assert_eq!(
        rolled_back.upgrades("install", "rolled_back") - before.upgrades("install", "rolled_back"),
        1.0,
        "{}",
        rolled_back.text
    );
    let record = metrics::upgrades()
        .into_iter()
        .rev()
        .find(|record| record.to == "2.0.0" && record.from == "1.0.0")
        .expect("the install is recorded");
    assert_eq!(record.outcome, UpgradeOutcome::RolledBack, "{record:?}");
    assert!(record.error.is_some());
    assert!(
        record
            .phases
            .iter()
            .any(|phase| phase.name == "rolling_back"),
        "{record:?}"
    );
    assert_eq!(record.actors_migrated, 0);

    let panics = |scrape: &Scrape| {
        scrape.value(
            "graft_plugin_callback_panics_total",
            &[("plugin", "faulty"), ("version", "0.3.0")],
        )
    };
    runtime
        .call("f3", echo.clone(), SECOND)
        .await
        .expect_err("f3's handle_call panics");
    assert!(
        eventually(DEADLINE, || {
            let now = scrape();
            panics(&now) - panics(&before) >= 1.0
                && now.sum("graft_supervisor_intensity_exits_total")
                    > before.sum("graft_supervisor_intensity_exits_total")
        })
        .await,
        "the panic and the supervisor giving up were counted:\n{}",
        scrape().text
    );
    assert!(
        metrics::recent_exits("f3")
            .iter()
            .any(|exit| exit.reason.contains("panic")),
        "{:?}",
        metrics::recent_exits("f3")
    );
    handler.shutdown().await;

    // A callback past its deadline (5 s by default) is killed and counted.
    let root =
        graft_tests::faulty_releases(1, |_| "{ stuck_in = [\"handle_call\"] }", UPGRADE_FAULTY);
    let (runtime, handler) = boot(root.path()).await;
    let timeouts = |scrape: &Scrape| {
        scrape.value(
            "graft_plugin_callback_timeouts_total",
            &[("plugin", "faulty"), ("version", "0.3.0")],
        )
    };
    let before = scrape();
    runtime
        .call("f1", echo, Duration::from_secs(30))
        .await
        .expect_err("f1 is killed at its deadline");
    let after = scrape();
    assert_eq!(timeouts(&after) - timeouts(&before), 1.0, "{}", after.text);
    promtool_accepts(&after);
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_swap_is_recorded_as_an_upgrade() {
    let _serial = SERIAL.lock().await;
    metrics::enable();
    let root = example_root();
    let (runtime, handler) = boot(root.path()).await;
    let add = encode(&json!({"Add": 5}));
    runtime.call("counter", add.clone(), SECOND).await.unwrap();
    let before = scrape();

    // A fresh build of the running plugin, as `graft dev` swaps in.
    let library = graft_tests::plugin_library("counter-1-0-0");
    let report = handler.hot_swap("counter", &library, 1).await.unwrap();
    assert!(report.actors_migrated >= 1, "{report:?}");
    runtime.call("counter", add, SECOND).await.unwrap();

    let after = scrape();
    promtool_accepts(&after);
    assert_eq!(
        after.upgrades("hot_swap", "completed") - before.upgrades("hot_swap", "completed"),
        1.0,
        "{}",
        after.text
    );
    let upgrades = metrics::upgrades();
    let record = upgrades.last().unwrap();
    assert_eq!(record.kind, UpgradeKind::HotSwap, "{record:?}");
    assert_eq!(record.outcome, UpgradeOutcome::Completed, "{record:?}");
    assert_eq!(record.from, "counter@1.0.0+dev.1", "{record:?}");
    assert_eq!(record.to, "counter@1.0.0", "{record:?}");
    assert_eq!(record.lost, 0, "{record:?}");
    let phases: Vec<&str> = record
        .phases
        .iter()
        .map(|phase| phase.name.as_str())
        .collect();
    assert_eq!(phases.first(), Some(&"loading"), "{phases:?}");
    assert!(
        phases.contains(&"suspending") && phases.contains(&"resuming"),
        "{phases:?}"
    );
    handler.shutdown().await;
}
