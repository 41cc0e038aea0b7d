//! Process isolation against real plugin libraries and the real `graft` binary as the
//! worker program: isolated actors answer calls and casts, use timers and call in-host
//! actors (and are called by them); an abort, a segfault or a SIGKILL of the worker ends
//! only that worker's actors, with `worker crashed: ...`, and their supervisor restarts
//! them in a fresh worker; code changes move state between isolated and in-process
//! versions in both directions; a worker over its memory limit is killed; workers die
//! with their host.
//!
//! The machine running these may be loaded: every wait polls with a generous deadline.

use graft::isolation::{IsolatedFactory, IsolatedPlugin, Worker, WorkerOptions, WorkerProgram};
use graft::plugin::Expectations;
use graft::runtime::{ActorOptions, ActorRef, Behaviour, PluginFactory, Runtime};
use graft::supervisor::{ChildSpec, Strategy, SupervisorSpec, start_supervisor};
use graft_plugin::codec;
use graft_tests::{eventually, graft_binary, kill_9, load_plugin, plugin_library, version};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(10);

fn worker(plugin: &str) -> Worker {
    worker_with_limit(plugin, None)
}

fn worker_with_limit(plugin: &str, memory_limit_mb: Option<u64>) -> Worker {
    Worker::new(
        plugin,
        WorkerOptions {
            program: WorkerProgram::Path(graft_binary()),
            memory_limit_mb,
        },
    )
}

fn isolated(worker: &Worker, package: &str) -> Arc<IsolatedPlugin> {
    IsolatedPlugin::load(worker, &plugin_library(package), &Expectations::default())
        .unwrap_or_else(|error| panic!("loading {package} in a worker: {error}"))
}

/// A factory of actors of `package`, isolated in `worker`.
fn isolated_factory(worker: &Worker, package: &str) -> Arc<IsolatedFactory> {
    Arc::new(IsolatedFactory::new(isolated(worker, package)))
}

fn encode(value: &Value) -> Vec<u8> {
    codec::encode(value).unwrap()
}

async fn call(actor: &ActorRef, request: Value) -> Value {
    let reply = actor
        .call(encode(&request), CALL)
        .await
        .unwrap_or_else(|error| panic!("call {request}: {error}"));
    codec::decode(&reply).unwrap()
}

async fn spawn(
    runtime: &Runtime,
    factory: Arc<dyn graft::runtime::BehaviourFactory>,
    name: &str,
    args: Value,
) -> ActorRef {
    runtime
        .spawn(ActorOptions::new(factory, encode(&args)).named(name))
        .await
        .unwrap_or_else(|error| panic!("spawning {name}: {error}"))
}

/// Spawns `name` from an isolated `plugin` with start `args`.
async fn spawn_isolated(
    runtime: &Runtime,
    plugin: Arc<IsolatedPlugin>,
    name: &str,
    args: Value,
) -> ActorRef {
    spawn(runtime, Arc::new(IsolatedFactory::new(plugin)), name, args).await
}

async fn pid_of(actor: &ActorRef) -> u32 {
    call(actor, json!("Pid"))
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

use graft_tests::gone;

fn state_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("State:"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "gone".to_owned())
}

/// Waits until `name` is registered to a process other than `old`.
async fn restarted(runtime: &Runtime, name: &str, old: &ActorRef) -> ActorRef {
    let mut found = None;
    let ok = eventually(PATIENCE, || {
        found = runtime.whereis(name).filter(|actor| actor != old);
        found.is_some()
    })
    .await;
    assert!(ok, "{name} was not restarted");
    found.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_kv_answers_calls_and_casts_in_another_process() {
    let runtime = Runtime::new();
    let kv_worker = worker("kv");
    let plugin = isolated(&kv_worker, "kv-1-0-0");
    assert_eq!(plugin.identity().to_string(), "kv 1.0.0");
    let kv = spawn_isolated(&runtime, plugin, "kv", json!({})).await;
    assert!(kv_worker.pid().is_some_and(|pid| pid != std::process::id()));
    assert_eq!(
        call(&kv, json!({"Put": {"key": "a", "value": "1"}})).await,
        json!(null)
    );
    kv.cast(encode(&json!({"Put": {"key": "b", "value": "2"}})));
    assert_eq!(call(&kv, json!({"Get": "a"})).await, json!("1"));
    assert_eq!(call(&kv, json!({"Get": "b"})).await, json!("2"));
    assert_eq!(call(&kv, json!("Keys")).await, json!(["a", "b"]));
    // The state comes out of the worker for `get_state` too.
    let state = kv.get_state(CALL).await.unwrap();
    assert_eq!(state["entries"]["a"], json!("1"));
    let status = kv.status(CALL).await.unwrap();
    assert_eq!(
        (status.plugin.as_deref(), status.version.as_deref()),
        (Some("kv"), Some("1.0.0"))
    );
    // A request the plugin cannot decode is refused, and the actor lives on.
    assert!(kv.call(encode(&json!("Nonsense")), CALL).await.is_err());
    assert_eq!(call(&kv, json!("Len")).await, json!(2));
    kv.stop(graft_plugin::StopReason::Normal, Some(CALL)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_actor_uses_timers_and_calls_actors_in_the_host_and_in_its_worker() {
    let runtime = Runtime::new();
    let faulty_worker = worker("faulty");
    let factory = isolated_factory(&faulty_worker, "graft-fixture-faulty");
    let iso = spawn(&runtime, factory.clone(), "iso", json!({})).await;
    let iso2 = spawn(&runtime, factory, "iso2", json!({})).await;
    let local = spawn(
        &runtime,
        Arc::new(PluginFactory::new(load_plugin("graft-fixture-faulty"))),
        "local",
        json!({}),
    )
    .await;
    let worker_pid = faulty_worker.pid().unwrap();
    assert_eq!(pid_of(&iso).await, worker_pid);
    assert_eq!(pid_of(&iso2).await, worker_pid);
    assert_eq!(pid_of(&local).await, std::process::id());

    // A timer started in the worker fires in the host and comes back as an info message.
    assert_eq!(
        call(&iso, json!({"After": {"ms": 20, "text": "tick"}})).await,
        json!("ok")
    );
    let mut last = Value::Null;
    for _ in 0..600 {
        last = call(&iso, json!("LastInfo")).await;
        if last == json!("tick") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last, json!("tick"));

    let relay =
        |path: &[&str]| json!({"Relay": {"path": path, "text": "hello", "timeout_ms": 10000}});
    // isolated → in-host, in-host → isolated, isolated → isolated in the same worker (its
    // own connection and thread), and a chain through both.
    assert_eq!(call(&iso, relay(&["local"])).await, json!("hello"));
    assert_eq!(call(&local, relay(&["iso"])).await, json!("hello"));
    assert_eq!(call(&iso, relay(&["iso2"])).await, json!("hello"));
    assert_eq!(call(&iso, relay(&["local", "iso2"])).await, json!("hello"));
    // Service errors reach the plugin as they would in process.
    let missing = call(&iso, relay(&["nobody"])).await;
    assert!(missing.as_str().unwrap().contains("nobody"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_segfault_in_callbacks_end_only_the_workers_actors_which_restart_in_a_fresh_worker()
 {
    let runtime = Runtime::new();
    let crashing_worker = worker("faulty");
    let crashing = isolated_factory(&crashing_worker, "graft-fixture-faulty");
    let other_worker = worker("faulty");
    let other = isolated_factory(&other_worker, "graft-fixture-faulty");
    let args = json!({"abort_in": ["handle_cast"], "segfault_in": ["handle_info"]});
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            ChildSpec::worker("victim", crashing.clone(), encode(&args)).named("victim"),
            ChildSpec::worker("sibling", crashing, encode(&json!({}))).named("sibling"),
            ChildSpec::worker("bystander", other, encode(&json!({}))).named("bystander"),
            ChildSpec::worker(
                "local",
                Arc::new(PluginFactory::new(load_plugin("graft-fixture-faulty"))),
                encode(&json!({})),
            )
            .named("local"),
        ],
    )
    .intensity(20, 60);
    let _supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let bystander = runtime.whereis("bystander").unwrap();
    let bystander_pid = pid_of(&bystander).await;

    for (trigger, signal) in [
        ("cast", "signal 6 (SIGABRT)"),
        ("info", "signal 11 (SIGSEGV)"),
    ] {
        let victim = runtime.whereis("victim").unwrap();
        let sibling = runtime.whereis("sibling").unwrap();
        let old_pid = pid_of(&victim).await;
        assert_eq!(pid_of(&sibling).await, old_pid);
        match trigger {
            "cast" => victim.cast(encode(&json!("boom"))),
            _ => victim.send_info(encode(&json!("boom"))),
        }
        let reason = tokio::time::timeout(PATIENCE, victim.exited())
            .await
            .unwrap();
        assert!(
            reason
                .to_string()
                .contains(&format!("worker crashed: killed by {signal}")),
            "{reason}"
        );
        // The sibling shared the worker, so it went with it.
        let reason = tokio::time::timeout(PATIENCE, sibling.exited())
            .await
            .unwrap();
        assert!(reason.to_string().contains("worker crashed"), "{reason}");
        assert!(
            eventually(PATIENCE, || gone(old_pid)).await,
            "{}",
            state_of(old_pid)
        );

        let victim = restarted(&runtime, "victim", &victim).await;
        let sibling = restarted(&runtime, "sibling", &sibling).await;
        let new_pid = pid_of(&victim).await;
        assert_ne!(new_pid, old_pid);
        assert_eq!(pid_of(&sibling).await, new_pid);
        assert_eq!(crashing_worker.pid(), Some(new_pid));
        // Everything else kept running, in its own worker and in the host.
        assert_eq!(pid_of(&bystander).await, bystander_pid);
        assert_eq!(
            call(
                &runtime.whereis("local").unwrap(),
                json!({"Echo": "still here"})
            )
            .await,
            json!("still here")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_progress_when_the_worker_aborts_fails_with_the_crash() {
    let runtime = Runtime::new();
    let crashing_worker = worker("faulty");
    let factory = isolated_factory(&crashing_worker, "graft-fixture-faulty");
    let actor = spawn(
        &runtime,
        factory,
        "doomed",
        json!({"abort_in": ["handle_call"]}),
    )
    .await;
    let error = actor
        .call(encode(&json!({"Echo": "x"})), CALL)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("worker crashed: killed by signal 6 (SIGABRT)"),
        "{error}"
    );
    let reason = tokio::time::timeout(PATIENCE, actor.exited())
        .await
        .unwrap();
    assert!(reason.to_string().contains("worker crashed"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_under_traffic_restarts_its_actors_and_leaves_no_zombie() {
    let runtime = Runtime::new();
    let faulty_worker = worker("faulty");
    let factory = isolated_factory(&faulty_worker, "graft-fixture-faulty");
    let names = ["w1", "w2", "w3"];
    let children = names
        .iter()
        .map(|name| ChildSpec::worker(*name, factory.clone(), encode(&json!({}))).named(*name))
        .collect();
    let _supervisor = start_supervisor(
        &runtime,
        SupervisorSpec::new(Strategy::OneForOne, children).intensity(20, 60),
    )
    .await
    .unwrap();
    let old_pid = faulty_worker.pid().unwrap();
    let old: Vec<ActorRef> = names
        .iter()
        .map(|name| runtime.whereis(name).unwrap())
        .collect();

    // Traffic: every name called over and over while the worker is killed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut traffic = Vec::new();
    for name in names {
        let runtime = runtime.clone();
        let stop = Arc::clone(&stop);
        traffic.push(tokio::spawn(async move {
            let mut answered = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = encode(&json!({"Echo": name}));
                if runtime.call(name, request, CALL).await.is_ok() {
                    answered += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill_9(old_pid);
    for (name, actor) in names.iter().zip(&old) {
        let reason = tokio::time::timeout(PATIENCE, actor.exited())
            .await
            .unwrap();
        assert!(
            reason
                .to_string()
                .contains("worker crashed: killed by signal 9 (SIGKILL)"),
            "{name}: {reason}"
        );
    }
    // Reaped: not even a zombie.
    assert!(
        eventually(PATIENCE, || gone(old_pid)).await,
        "{}",
        state_of(old_pid)
    );
    for (name, actor) in names.iter().zip(&old) {
        let actor = restarted(&runtime, name, actor).await;
        let new_pid = pid_of(&actor).await;
        assert_ne!(new_pid, old_pid);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in traffic {
        assert!(task.await.unwrap() > 0);
    }
    assert_eq!(faulty_worker.spawned(), 2);
}

/// Moves an actor to another behaviour the way the release handler does: suspend, encode
/// the state, build the new behaviour from it, resume.
async fn change(
    actor: &ActorRef,
    build: impl FnOnce(&mut Box<dyn Behaviour>) -> Result<Box<dyn Behaviour>, String> + Send + 'static,
) {
    actor.suspend(CALL).await.unwrap();
    actor
        .change_code(Box::new(move |current| build(current).map(Some)), CALL)
        .await
        .unwrap();
    actor.resume(CALL).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_migrates_up_and_down_between_isolated_and_in_process_versions() {
    let runtime = Runtime::new();
    let kv_worker = worker("kv");
    let isolated_old = isolated(&kv_worker, "kv-1-0-0");
    let isolated_new = isolated(&kv_worker, "kv-1-1-0");
    let in_process_old = load_plugin("kv-1-0-0");
    let in_process_new = load_plugin("kv-1-1-0");
    let kv = spawn_isolated(&runtime, Arc::clone(&isolated_old), "kv", json!({})).await;
    call(&kv, json!({"Put": {"key": "a", "value": "1"}})).await;
    let services = graft::plugin::Detached::new("kv");

    // Isolated 1.0.0 → isolated 1.1.0 (code_change in the worker).
    let (target, detached) = (Arc::clone(&isolated_new), services.clone());
    change(&kv, move |current| {
        let state = current.encode_state().map_err(|error| error.to_string())?;
        target
            .code_change(&version("1.0.0"), &state, &encode(&Value::Null), &detached)
            .map_err(|error| error.to_string())
    })
    .await;
    assert_eq!(call(&kv, json!({"Get": "a"})).await, json!("1"));
    assert_eq!(call(&kv, json!("Requests")).await, json!(1));
    assert_eq!(pid_of_worker(&kv_worker), kv_worker.pid());

    // Isolated 1.1.0 → in-process 1.0.0 (downgrade in the worker, restore in the host).
    let (target, detached) = (Arc::clone(&in_process_old), services.clone());
    change(&kv, move |current| {
        let state = current
            .downgrade(&version("1.0.0"), &encode(&Value::Null))
            .map_err(|error| error.to_string())?;
        graft::plugin::Instance::restore(&target, &state, &detached)
            .map(|instance| Box::new(instance) as Box<dyn Behaviour>)
            .map_err(|error| error.to_string())
    })
    .await;
    assert_eq!(call(&kv, json!({"Get": "a"})).await, json!("1"));
    assert_eq!(
        kv.status(CALL).await.unwrap().version.as_deref(),
        Some("1.0.0")
    );

    // In-process 1.0.0 → in-process 1.1.0 → isolated 1.0.0 (downgrade in the host, restore
    // in the worker): across isolation modes both ways.
    let (target, detached) = (Arc::clone(&in_process_new), services.clone());
    change(&kv, move |current| {
        let state = current.encode_state().map_err(|error| error.to_string())?;
        graft::plugin::Instance::code_change(
            &target,
            &version("1.0.0"),
            &state,
            &encode(&Value::Null),
            &detached,
        )
        .map(|instance| Box::new(instance) as Box<dyn Behaviour>)
        .map_err(|error| error.to_string())
    })
    .await;
    call(&kv, json!({"Put": {"key": "b", "value": "2"}})).await;
    let (target, detached) = (Arc::clone(&isolated_old), services.clone());
    change(&kv, move |current| {
        let state = current
            .downgrade(&version("1.0.0"), &encode(&Value::Null))
            .map_err(|error| error.to_string())?;
        target
            .restore(&state, &detached)
            .map_err(|error| error.to_string())
    })
    .await;
    assert_eq!(call(&kv, json!("Keys")).await, json!(["a", "b"]));
    assert_eq!(
        kv.status(CALL).await.unwrap().version.as_deref(),
        Some("1.0.0")
    );

    // A failing migration keeps the old behaviour, in the worker.
    kv.suspend(CALL).await.unwrap();
    let target = Arc::clone(&isolated_new);
    let failed = kv
        .change_code(
            Box::new(move |_current| {
                target
                    .restore(b"not a state", &graft::plugin::Detached::new("kv"))
                    .map(Some)
                    .map_err(|error| error.to_string())
            }),
            CALL,
        )
        .await;
    assert!(failed.is_err());
    kv.resume(CALL).await.unwrap();
    assert_eq!(call(&kv, json!("Keys")).await, json!(["a", "b"]));

    // After a crash the worker is started again and loads both versions again.
    kill_9(kv_worker.pid().unwrap());
    let reason = tokio::time::timeout(PATIENCE, kv.exited()).await.unwrap();
    assert!(reason.to_string().contains("worker crashed"), "{reason}");
    let again = spawn_isolated(&runtime, isolated_new, "kv", json!({})).await;
    assert_eq!(call(&again, json!("Requests")).await, json!(0));
}

fn pid_of_worker(worker: &Worker) -> Option<u32> {
    worker.pid()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_memory_limit_is_killed_and_its_actor_exits_saying_so() {
    let runtime = Runtime::new();
    let limited = worker_with_limit("faulty", Some(64));
    let factory = isolated_factory(&limited, "graft-fixture-faulty");
    let actor = spawn(&runtime, factory, "hog", json!({})).await;
    // 256 MiB allocated, touched and kept: the monitor sees the worker's resident memory
    // over the limit and kills it (the call may or may not have been answered first).
    let _ = actor
        .call(encode(&json!({"Hold": {"mb": 256}})), CALL)
        .await;
    let reason = tokio::time::timeout(PATIENCE, actor.exited())
        .await
        .unwrap();
    assert!(
        reason
            .to_string()
            .contains("worker crashed: killed for exceeding its memory limit"),
        "{reason}"
    );
}

#[test]
fn a_missing_worker_program_is_a_clear_error() {
    let missing = Worker::new(
        "kv",
        WorkerOptions {
            program: WorkerProgram::Path("/nonexistent/graft".into()),
            memory_limit_mb: None,
        },
    );
    let error = IsolatedPlugin::load(
        &missing,
        &plugin_library("kv-1-0-0"),
        &Expectations::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("/nonexistent/graft"), "{error}");
}

#[test]
fn a_library_the_worker_refuses_is_a_load_error_naming_the_check() {
    let kv_worker = worker("kv");
    let expect = Expectations {
        name: Some("counter".to_owned()),
        ..Expectations::default()
    };
    let error = IsolatedPlugin::load(&kv_worker, &plugin_library("kv-1-0-0"), &expect)
        .unwrap_err()
        .to_string();
    assert!(error.contains("expected \"counter\""), "{error}");
}

#[test]
fn a_worker_dies_with_its_host_even_when_the_host_is_killed_with_sigkill() {
    let host_binary = graft::build::CargoBuild::new(graft_tests::workspace_root())
        .build_binary("graft-tests", "isolated_host")
        .unwrap();
    let mut host = std::process::Command::new(host_binary)
        .arg(graft_binary())
        .arg(plugin_library("graft-fixture-faulty"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(host.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let worker_pid: u32 = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    assert!(!gone(worker_pid));
    kill_9(host.id());
    host.wait().unwrap();
    // The kernel kills the orphaned worker (parent-death signal); init reaps it.
    let deadline = std::time::Instant::now() + PATIENCE;
    while !gone(worker_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gone(worker_pid), "{}", state_of(worker_pid));
}

/// Casts to an isolated actor travel to its worker in batches (one round trip for many):
/// a flood keeps its order, and a cast that stops the actor in the middle of a batch ends
/// it there, with the casts behind it never handled. Survives: the host, order, the stop
/// reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_to_an_isolated_actor_keep_their_order_and_a_stop_ends_the_batch() {
    let kv_worker = worker("kv");
    let plugin = isolated(&kv_worker, "kv-1-0-0");
    let runtime = Runtime::new();
    let kv = spawn_isolated(&runtime, plugin, "kv", json!(null)).await;
    for value in 0..5_000 {
        kv.cast(encode(
            &json!({"Put": {"key": "k", "value": value.to_string()}}),
        ));
    }
    assert_eq!(
        call(&kv, json!({"Get": "k"})).await,
        json!("4999"),
        "the last cast wins: the flood kept its order"
    );

    let faulty_worker = worker("faulty");
    let faulty = isolated(&faulty_worker, "graft-fixture-faulty");
    let actor = spawn_isolated(&runtime, faulty, "stopper", json!({})).await;
    for _ in 0..100 {
        actor.cast(encode(&json!("before")));
    }
    actor.cast(encode(&json!("stop")));
    for _ in 0..100 {
        actor.cast(encode(&json!("after")));
    }
    let reason = tokio::time::timeout(PATIENCE, actor.exited())
        .await
        .unwrap();
    assert_eq!(reason.to_string(), "asked to stop");
}

/// A raw thread left running by an isolated plugin when its last actor is gone: the worker
/// keeps the library mapped (it imports pthread_create, so it is pinned, and a worker never
/// unmaps what it loaded), the thread runs on, and the worker keeps serving new actors.
/// Survives: the host, the worker process, new actors in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_thread_left_running_in_a_worker_does_not_crash_it() {
    let threads_worker = worker("threader");
    let plugin = isolated(&threads_worker, "graft-fixture-threader");
    let runtime = Runtime::new();
    let factory: Arc<dyn graft::runtime::BehaviourFactory> =
        Arc::new(IsolatedFactory::new(Arc::clone(&plugin)));
    let first = spawn(&runtime, Arc::clone(&factory), "threader-1", json!(null)).await;
    call(&first, json!("spawn")).await;
    let pid = threads_worker.pid().expect("the worker runs");
    first
        .stop(graft_plugin::StopReason::Normal, Some(CALL))
        .await;
    drop(first);
    // The thread keeps ticking inside the worker, and the worker serves a new actor.
    let second = spawn(&runtime, factory, "threader-2", json!(null)).await;
    let before = call(&second, json!("ticks")).await.as_u64().unwrap();
    // Reads the same static the stray thread increments.
    let ticking = graft_tests::eventually_async(PATIENCE, || {
        let second = second.clone();
        async move { call(&second, json!("ticks")).await.as_u64().unwrap() > before + 10 }
    })
    .await;
    assert!(ticking, "the stray thread stopped");
    assert_eq!(threads_worker.pid(), Some(pid), "the worker did not crash");
    assert!(!gone(pid));
}

/// A worker runs with no more privilege than its host: the same user and group, and
/// `no_new_privs` set, so nothing it executes can gain any. Survives: n/a (a property).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_with_no_more_privilege_than_its_host() {
    let faulty_worker = worker("faulty");
    let runtime = Runtime::new();
    let actor = spawn(
        &runtime,
        isolated_factory(&faulty_worker, "graft-fixture-faulty"),
        "privileges",
        json!({}),
    )
    .await;
    let pid = pid_of(&actor).await;
    let status = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |status: &str, name: &str| {
        status
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .to_owned()
    };
    let worker_status = status(&pid.to_string());
    let host_status = status("self");
    assert_eq!(field(&worker_status, "NoNewPrivs:"), "NoNewPrivs:\t1");
    for name in ["Uid:", "Gid:"] {
        assert_eq!(field(&worker_status, name), field(&host_status, name));
    }
    assert_eq!(
        field(&worker_status, "CapEff:"),
        field(&host_status, "CapEff:")
    );
}
