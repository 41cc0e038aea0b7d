//! Soak: cycle the example releases 1.0.0 → 1.1.0 → 1.2.0 → 1.0.0 for N rounds while a
//! client sends numbered messages, and check after every round that nothing was lost or
//! duplicated, that the state is what the messages imply, and that resident memory and the
//! number of loaded libraries stay bounded (old versions really unloaded).
//!
//! CI runs a few rounds; by hand: `GRAFT_SOAK_ROUNDS=1000 cargo test --release -p
//! graft-tests --test soak -- --nocapture`.

use graft::plugin::UnloadOutcome;
use graft::runtime::Runtime;
use graft_plugin::codec;
use graft_tests::{boot, example_root};
use semver::Version;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

async fn call(runtime: &Runtime, actor: &str, request: Value) -> Value {
    let reply = runtime
        .call(
            actor,
            codec::encode(&request).unwrap(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|error| panic!("call {actor} {request}: {error}"));
    codec::decode(&reply).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_cycles_releases_under_traffic_and_stays_bounded() {
    let rounds: usize = std::env::var("GRAFT_SOAK_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(3);
    let root = example_root();
    let (runtime, handler) = boot(root.path()).await;

    // The client: numbered casts to counter, numbered calls to kv whose replies prove the
    // order; it pauses when asked so each round can be checked at rest.
    let casts = Arc::new(AtomicU64::new(0));
    let pause = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (runtime, casts, pause, paused, stop) = (
            runtime.clone(),
            casts.clone(),
            pause.clone(),
            paused.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut calls: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                if pause.load(Ordering::Acquire) {
                    paused.store(true, Ordering::Release);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                paused.store(false, Ordering::Release);
                runtime
                    .cast("counter", codec::encode(&json!({"Add": 1})).unwrap())
                    .unwrap();
                casts.fetch_add(1, Ordering::Relaxed);
                calls += 1;
                let put = json!({"Put": {"key": "sequence", "value": calls.to_string()}});
                let previous: Option<String> = codec::decode(
                    &runtime
                        .call("kv", codec::encode(&put).unwrap(), Duration::from_secs(10))
                        .await
                        .unwrap(),
                )
                .unwrap();
                let expected = (calls > 1).then(|| (calls - 1).to_string());
                assert_eq!(
                    previous, expected,
                    "a call was lost, duplicated or reordered"
                );
            }
            calls
        })
    };

    let cycle = ["1.1.0", "1.2.0", "1.0.0"].map(|text| Version::parse(text).unwrap());
    let mut install_times = Vec::new();
    let mut baseline = None;
    let mut most_libraries = 0;
    for round in 1..=rounds {
        for target in &cycle {
            let started = Instant::now();
            handler
                .install(target, None)
                .await
                .unwrap_or_else(|error| panic!("round {round}, install {target}: {error}"));
            install_times.push(started.elapsed());
            let (resident, _) = handler.resident().await;
            most_libraries = most_libraries.max(resident.len());
        }
        // At rest: the counter counted every cast exactly once, across all migrations.
        pause.store(true, Ordering::Release);
        while !paused.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let counted = call(&runtime, "counter", json!("Get"))
            .await
            .as_u64()
            .unwrap();
        assert_eq!(
            counted,
            casts.load(Ordering::Relaxed),
            "round {round}: casts lost or duplicated"
        );
        pause.store(false, Ordering::Release);

        let (resident, _) = handler.resident().await;
        assert!(
            resident.len() <= 6,
            "round {round}: old versions still loaded: {resident:?}"
        );
        let rss = resident_bytes();
        let start = *baseline.get_or_insert(rss);
        if round == rounds || round % 100 == 0 {
            println!(
                "soak: round {round}: rss {:.1} MiB (round 1: {:.1} MiB), {} casts",
                rss as f64 / 1048576.0,
                start as f64 / 1048576.0,
                casts.load(Ordering::Relaxed)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let calls = client.await.unwrap();

    let (_, reports) = handler.resident().await;
    // The loader keeps only its most recent unload reports; the count of closed libraries
    // is its total since boot.
    let closed = handler.closed_libraries();
    let pinned = reports
        .iter()
        .filter(|report| report.outcome == UnloadOutcome::Resident)
        .count();
    let rss_growth = resident_bytes().saturating_sub(baseline.unwrap());
    install_times.sort();
    let median = install_times[install_times.len() / 2];
    println!(
        "soak: {rounds} rounds, {} installs (median {:.1} ms), {} casts and {calls} calls, 0 lost; \
         libraries loaded at once: at most {most_libraries}; closed: {closed}, of the last {} {pinned} still mapped; \
         rss growth since round 1: {:.1} MiB",
        install_times.len(),
        median.as_secs_f64() * 1000.0,
        casts.load(Ordering::Relaxed),
        reports.len(),
        rss_growth as f64 / 1048576.0
    );
    assert_eq!(pinned, 0, "every closed library was unmapped");
    assert!(
        closed >= 2 * rounds as u64,
        "old versions are closed every round ({closed} closed in {rounds} rounds)"
    );
    assert!(
        rss_growth < 64 * 1024 * 1024,
        "resident memory grew by {:.1} MiB",
        rss_growth as f64 / 1048576.0
    );
    handler.shutdown().await;
}
