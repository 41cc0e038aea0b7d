//! The actor runtime with real plugin actors (the counter, faulty, egg_timer and ticker
//! `.so` files) and host-native recorders: calls, casts, timeouts and late replies,
//! deferred replies, continuations, stop and terminate, suspend/resume with queued
//! messages, change_code, names, monitors, links, timers, and calls between actors.

use graft::plugin::{Detached, Instance, LoadedPlugin};
use graft::runtime::{
    ActorOptions, ActorRef, Behaviour, CallError, PluginFactory, Runtime, SpawnError, SystemError,
};
use graft_plugin::{StopReason, codec};
use graft_tests::native::{Journal, entries, journal, recorder};
use graft_tests::{eventually, load_plugin as plugin};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

fn encode(value: &Value) -> Vec<u8> {
    codec::encode(value).unwrap()
}

async fn spawn(runtime: &Runtime, package: &str, name: &str, args: Value) -> ActorRef {
    let factory = Arc::new(PluginFactory::new(plugin(package)));
    runtime
        .spawn(ActorOptions::new(factory, encode(&args)).named(name))
        .await
        .unwrap_or_else(|error| panic!("spawning {name}: {error}"))
}

async fn spawn_recorder(runtime: &Runtime, journal: &Journal, name: &str) -> ActorRef {
    runtime
        .spawn(ActorOptions::new(recorder(journal), codec::encode(name).unwrap()).named(name))
        .await
        .unwrap()
}

async fn call(actor: &ActorRef, request: Value) -> Value {
    let reply = actor
        .call(encode(&request), SECOND)
        .await
        .unwrap_or_else(|error| panic!("call {request}: {error}"));
    codec::decode(&reply).unwrap()
}

#[tokio::test]
async fn calls_casts_and_infos_reach_a_plugin_actor() {
    let runtime = Runtime::new();
    let counter = spawn(&runtime, "counter-1-0-0", "counter", json!({"start": 1})).await;
    assert_eq!(call(&counter, json!({"Add": 2})).await, json!(3));
    counter.cast(encode(&json!({"Add": 10})));
    runtime
        .send_info("counter", encode(&json!({"Add": 100})))
        .unwrap();
    assert_eq!(
        call(&counter, json!("Get")).await,
        json!(113),
        "cast and info ran, in order"
    );
    let reply = runtime
        .call("counter", encode(&json!("Get")), SECOND)
        .await
        .unwrap();
    assert_eq!(codec::decode::<i64>(&reply).unwrap(), 113);
}

// Multi-threaded: a callback blocks its worker, and the caller's timer must still fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_errors_are_distinct() {
    let runtime = Runtime::new();
    let error = runtime
        .call("nobody", encode(&json!("Get")), SECOND)
        .await
        .unwrap_err();
    assert_eq!(error, CallError::NotFound("nobody".to_owned()));

    let faulty = spawn(&runtime, "graft-fixture-faulty", "slow", json!({})).await;
    let error = faulty
        .call(
            encode(&json!({"Sleep": {"ms": 300}})),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Timeout { .. }), "{error}");

    let error = faulty.call(vec![0xc1], SECOND).await.unwrap_err();
    assert!(matches!(error, CallError::BadRequest { .. }), "{error}");

    let error = faulty
        .call(encode(&json!({"Fail": "no more"})), SECOND)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CallError::Exited { reason: StopReason::Error(text), .. } if text.contains("no more")),
        "{error}"
    );
    let error = faulty
        .call(encode(&json!("Handled")), SECOND)
        .await
        .unwrap_err();
    assert!(
        matches!(error, CallError::Exited { .. }),
        "a call to a dead actor: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_dropped_not_delivered_to_the_next_call() {
    let runtime = Runtime::new();
    let faulty = spawn(&runtime, "graft-fixture-faulty", "late", json!({})).await;
    let error = faulty
        .call(
            encode(&json!({"Sleep": {"ms": 200}})),
            Duration::from_millis(20),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Timeout { .. }));
    // The slow request still runs (as in OTP); its reply must not answer this call.
    assert_eq!(call(&faulty, json!({"Echo": "mine"})).await, json!("mine"));
    assert_eq!(call(&faulty, json!("Handled")).await, json!("3"));
}

#[tokio::test]
async fn a_deferred_reply_arrives_from_a_timer() {
    let runtime = Runtime::new();
    let counter = spawn(&runtime, "counter-1-0-0", "deferred", json!({"start": 7})).await;
    assert_eq!(
        call(&counter, json!({"GetLater": {"delay_ms": 20}})).await,
        json!(7)
    );
}

#[tokio::test]
async fn stop_runs_terminate_and_frees_the_name_for_reuse() {
    let runtime = Runtime::new();
    let journal = journal();
    let first = spawn_recorder(&runtime, &journal, "reused").await;
    let error = runtime
        .spawn(
            ActorOptions::new(recorder(&journal), codec::encode("reused").unwrap()).named("reused"),
        )
        .await
        .unwrap_err();
    assert_eq!(error, SpawnError::NameTaken("reused".to_owned()));

    assert_eq!(call(&first, json!("stop")).await, json!("bye"));
    assert_eq!(first.exited().await, StopReason::Normal);
    assert!(entries(&journal).contains(&"terminate reused normal".to_owned()));
    assert!(runtime.whereis("reused").is_none());

    let second = spawn_recorder(&runtime, &journal, "reused").await;
    assert_ne!(first.id(), second.id());
    assert_eq!(runtime.whereis("reused"), Some(second.clone()));
    assert_eq!(
        second.stop(StopReason::Shutdown(None), Some(SECOND)).await,
        StopReason::Shutdown(None)
    );
    assert!(entries(&journal).contains(&"terminate reused shutdown".to_owned()));
}

#[tokio::test]
async fn kill_skips_terminate() {
    let runtime = Runtime::new();
    let journal = journal();
    let actor = spawn_recorder(&runtime, &journal, "victim").await;
    actor.kill();
    assert_eq!(actor.exited().await, StopReason::Error("killed".to_owned()));
    assert!(
        !entries(&journal)
            .iter()
            .any(|entry| entry.starts_with("terminate"))
    );
    assert!(runtime.whereis("victim").is_none());
}

#[tokio::test]
async fn handle_continue_runs_before_any_message_and_can_crash_the_actor() {
    let runtime = Runtime::new();
    let faulty = spawn(&runtime, "graft-fixture-faulty", "continues", json!({})).await;
    assert_eq!(call(&faulty, json!("Handled")).await, json!("1"));

    let factory = Arc::new(PluginFactory::new(plugin("graft-fixture-faulty")));
    let args = encode(&json!({"panic_in": ["handle_continue"]}));
    let crashing = runtime
        .spawn(ActorOptions::new(factory, args))
        .await
        .unwrap();
    let reason = crashing.exited().await;
    assert!(
        matches!(&reason, StopReason::Error(text) if text.contains("handle_continue panicked")),
        "{reason}"
    );
}

#[tokio::test]
async fn a_failing_init_is_a_spawn_error_and_frees_the_name() {
    let runtime = Runtime::new();
    let factory = Arc::new(PluginFactory::new(plugin("graft-fixture-faulty")));
    let args = encode(&json!({"panic_in": ["init"]}));
    let error = runtime
        .spawn(ActorOptions::new(factory, args).named("doomed"))
        .await
        .unwrap_err();
    assert!(
        matches!(&error, SpawnError::InitFailed { actor, .. } if actor == "doomed"),
        "{error}"
    );
    assert!(error.to_string().contains("init panicked"), "{error}");
    assert!(runtime.whereis("doomed").is_none());
}

#[tokio::test]
async fn messages_sent_while_suspended_wait_and_run_in_order_after_resume() {
    let runtime = Runtime::new();
    let counter = spawn(
        &runtime,
        "counter-1-1-0",
        "suspended",
        json!({"history_limit": 100}),
    )
    .await;
    counter.suspend(SECOND).await.unwrap();

    for amount in 1..=50 {
        counter.cast(encode(&json!({"Add": amount})));
    }
    let waiting_call = {
        let counter = counter.clone();
        tokio::spawn(async move { call(&counter, json!({"Add": 1000})).await })
    };
    assert!(eventually(SECOND, || counter.mailbox_length() == 51).await);
    for amount in 51..=60 {
        counter.cast(encode(&json!({"Add": amount})));
    }

    // System messages still work while suspended; the others wait.
    assert!(eventually(SECOND, || counter.mailbox_length() == 61).await);
    let status = counter.status(SECOND).await.unwrap();
    assert!(status.suspended);
    assert_eq!(status.mailbox_length, 61);
    assert_eq!(status.plugin.as_deref(), Some("counter"));
    assert_eq!(status.version.as_deref(), Some("1.1.0"));
    assert_eq!(counter.get_state(SECOND).await.unwrap()["count"], json!(0));
    assert!(!waiting_call.is_finished());

    counter.resume(SECOND).await.unwrap();
    let expected_at_call: i64 = (1..=50).sum::<i64>() + 1000;
    assert_eq!(waiting_call.await.unwrap(), json!(expected_at_call));
    let history = call(&counter, json!("History")).await;
    let mut expected: Vec<i64> = (1..=50).collect();
    expected.push(1000);
    expected.extend(51..=60);
    assert_eq!(
        history,
        json!(expected),
        "every message ran once, in the order sent"
    );
    assert!(!counter.status(SECOND).await.unwrap().suspended);
}

#[tokio::test]
async fn change_code_is_accepted_only_while_suspended_and_keeps_state() {
    let runtime = Runtime::new();
    let old = plugin("counter-1-0-0");
    let new = plugin("counter-1-1-0");
    let counter = spawn(&runtime, "counter-1-0-0", "upgraded", json!({"start": 41})).await;

    let upgrade = |new: Arc<LoadedPlugin>| -> graft::runtime::Migration {
        Box::new(move |current: &mut Box<dyn Behaviour>| {
            let state = current.encode_state().map_err(|error| error.to_string())?;
            let from = current.identity().expect("a plugin").version.clone();
            let instance =
                Instance::code_change(&new, &from, &state, &[], &Detached::new("upgraded"))
                    .map_err(|error| error.to_string())?;
            Ok(Some(Box::new(instance) as Box<dyn Behaviour>))
        })
    };

    let error = counter
        .change_code(upgrade(new.clone()), SECOND)
        .await
        .unwrap_err();
    assert_eq!(error, SystemError::NotSuspended("upgraded".to_owned()));

    counter.suspend(SECOND).await.unwrap();
    counter.cast(encode(&json!({"Add": 1})));
    let failing: graft::runtime::Migration = Box::new(|_| Err("refused on purpose".to_owned()));
    let error = counter.change_code(failing, SECOND).await.unwrap_err();
    assert!(
        matches!(error, SystemError::ChangeCodeFailed { .. }),
        "{error}"
    );
    assert_eq!(
        counter.status(SECOND).await.unwrap().version.as_deref(),
        Some("1.0.0")
    );

    counter.change_code(upgrade(new), SECOND).await.unwrap();
    counter.resume(SECOND).await.unwrap();
    assert_eq!(
        call(&counter, json!("Get")).await,
        json!(42),
        "the queued cast ran on the new code"
    );
    assert_eq!(call(&counter, json!("History")).await, json!([1]));
    assert_eq!(
        counter.status(SECOND).await.unwrap().version.as_deref(),
        Some("1.1.0")
    );
    drop(old);
}

#[tokio::test]
async fn a_monitor_delivers_down_with_the_exit_reason() {
    let runtime = Runtime::new();
    let journal = journal();
    let watcher = spawn_recorder(&runtime, &journal, "watcher").await;
    let target = spawn(&runtime, "graft-fixture-faulty", "watched", json!({})).await;
    runtime.monitor(&watcher, &target);
    let _ = target.call(encode(&json!({"Fail": "gone"})), SECOND).await;
    assert!(
        eventually(SECOND, || {
            entries(&journal).iter().any(|entry| {
                entry.starts_with("watcher got down watched") && entry.contains("gone")
            })
        })
        .await,
        "{:?}",
        entries(&journal)
    );

    // Monitoring an actor that already exited delivers down at once (OTP's noproc).
    runtime.monitor(&watcher, &target);
    assert!(
        eventually(SECOND, || {
            entries(&journal)
                .iter()
                .filter(|entry| entry.starts_with("watcher got down watched"))
                .count()
                == 2
        })
        .await
    );
}

#[tokio::test]
async fn links_propagate_crashes_unless_the_actor_traps_exits() {
    let runtime = Runtime::new();
    let journal = journal();
    let plain = spawn_recorder(&runtime, &journal, "plain").await;
    let trapping = runtime
        .spawn(ActorOptions {
            trap_exit: true,
            ..ActorOptions::new(recorder(&journal), codec::encode("trapping").unwrap())
                .named("trapping")
        })
        .await
        .unwrap();
    let crasher = spawn_recorder(&runtime, &journal, "crasher").await;
    runtime.link(&crasher, &plain);
    runtime.link(&crasher, &trapping);

    let _ = crasher.call(encode(&json!("crash")), SECOND).await;
    let reason = plain.exited().await;
    assert!(
        matches!(&reason, StopReason::Error(text) if text.contains("crasher crashed on purpose")),
        "{reason}"
    );
    assert!(
        eventually(SECOND, || entries(&journal)
            .iter()
            .any(|entry| entry.starts_with("trapping got exit crasher")))
        .await
    );
    assert!(trapping.is_alive());
    assert_eq!(call(&trapping, json!("ping")).await, json!("pong"));

    // A normal exit does not take linked actors down.
    let calm = spawn_recorder(&runtime, &journal, "calm").await;
    runtime.link(&trapping, &calm);
    let other = spawn_recorder(&runtime, &journal, "other").await;
    runtime.link(&other, &calm);
    call(&other, json!("stop")).await;
    other.exited().await;
    assert_eq!(call(&calm, json!("ping")).await, json!("pong"));
}

#[tokio::test]
async fn egg_timer_alarms_ring_and_cancel() {
    let runtime = Runtime::new();
    let timer = spawn(&runtime, "egg_timer-1-0-0", "eggs", json!({})).await;
    call(
        &timer,
        json!({"Schedule": {"name": "soft", "after_ms": 30}}),
    )
    .await;
    call(
        &timer,
        json!({"Schedule": {"name": "hard", "after_ms": 60_000}}),
    )
    .await;
    let status = call(&timer, json!("Status")).await;
    let remaining = status[0]["remaining_ms"].as_u64().unwrap();
    assert_eq!(status[0]["name"], json!("hard"));
    assert!(remaining > 50_000 && remaining <= 60_000, "{status}");

    let mut rang = json!([]);
    for _ in 0..200 {
        rang = call(&timer, json!("Rang")).await;
        if rang == json!(["soft"]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(rang, json!(["soft"]));
    assert_eq!(call(&timer, json!({"Cancel": "hard"})).await, json!(true));
    assert_eq!(
        call(&timer, json!({"Cancel": "unknown"})).await,
        json!(false)
    );
    assert_eq!(call(&timer, json!("Status")).await, json!([]));
}

#[tokio::test]
async fn ticker_counts_interval_ticks_until_stopped() {
    let runtime = Runtime::new();
    let ticker = spawn(
        &runtime,
        "ticker-1-0-0",
        "ticker",
        json!({"role": "ticker", "period_ms": 5}),
    )
    .await;
    let mut ticks = 0;
    for _ in 0..400 {
        ticks = call(&ticker, json!("Ticks")).await.as_u64().unwrap();
        if ticks >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ticks >= 3, "ticks: {ticks}");
    assert_eq!(call(&ticker, json!("StopTicking")).await, json!(true));
    let stopped_at = call(&ticker, json!("Ticks")).await.as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(call(&ticker, json!("Ticks")).await.as_u64().unwrap() <= stopped_at + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_calls_another_actor_without_starving_the_runtime() {
    let runtime = Runtime::new();
    for name in ["a", "b", "c"] {
        spawn(&runtime, "graft-fixture-faulty", name, json!({})).await;
    }
    let a = runtime.whereis("a").unwrap();
    let reply = call(
        &a,
        json!({"Relay": {"path": ["b", "c"], "text": "hello", "timeout_ms": 1000}}),
    )
    .await;
    assert_eq!(reply, json!("hello"));

    // Many concurrent relays on two workers: each blocks a worker while it waits.
    let mut calls = Vec::new();
    for index in 0..16 {
        let a = a.clone();
        calls.push(tokio::spawn(async move {
            let request =
                json!({"Relay": {"path": ["b"], "text": index.to_string(), "timeout_ms": 2000}});
            call(&a, request).await
        }));
    }
    for (index, handle) in calls.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), json!(index.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cycle_ends_in_a_timeout_not_a_hang() {
    let runtime = Runtime::new();
    spawn(&runtime, "graft-fixture-faulty", "ping", json!({})).await;
    spawn(&runtime, "graft-fixture-faulty", "pong", json!({})).await;
    let ping = runtime.whereis("ping").unwrap();
    let request = json!({"Relay": {"path": ["pong", "ping"], "text": "loop", "timeout_ms": 100}});
    let reply = ping
        .call(encode(&request), Duration::from_secs(2))
        .await
        .unwrap();
    let reply: String = codec::decode(&reply).unwrap();
    assert!(reply.starts_with("error: call timed out"), "{reply}");
    // Both are still alive and answer.
    assert_eq!(call(&ping, json!({"Echo": "alive"})).await, json!("alive"));

    let journal = journal();
    let selfish = spawn_recorder(&runtime, &journal, "selfish").await;
    assert!(
        call(&selfish, json!("call:selfish"))
            .await
            .as_str()
            .unwrap()
            .contains("cannot call itself")
    );
}
