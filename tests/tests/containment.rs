//! Fault containment of in-process plugins (issue 9 §1–2): plugin code runs on the actor
//! executor, never on the threads that serve the control plane; a callback past its
//! deadline kills its actor (its supervisor restarts it) while its thread is abandoned,
//! and the pool replaces the thread so capacity does not shrink.
//!
//! Each test states what survives: the host, the other actors, the release record, the
//! ability to roll back. Stuck callbacks here sleep in a loop (they burn no core), so the
//! abandoned threads do not slow the rest of the suite.

use graft::runtime::{CallError, executor};
use graft_plugin::codec;
use graft_tests::{Host, boot, eventually, graft_binary};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn root_with(releases: &[(&str, String)]) -> tempfile::TempDir {
    graft_tests::assembled_root(releases)
}

fn header(version: &str, timeout: &str) -> String {
    header_with(version, "0.3.0", "tests/fixtures/faulty", timeout)
}

fn header_with(version: &str, plugin_version: &str, crate_path: &str, timeout: &str) -> String {
    format!(
        "[release]\nname = \"contained\"\nversion = \"{version}\"\n\n[plugins.faulty]\nversion = \"{plugin_version}\"\ncrate = \"{crate_path}\"\ncallback_timeout_ms = {timeout}\n\n[supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 100\nmax_seconds = 10\n"
    )
}

fn child(id: &str, args: &str, extra: &str) -> String {
    format!("\n[[supervisor.children]]\nid = \"{id}\"\nplugin = \"faulty\"\nargs = {args}\n{extra}")
}

/// Release 1.0.0 (faulty 0.3.0) and 2.0.0 (faulty 0.4.0, with `script`), both with
/// `children` and a callback deadline of 1 s.
fn upgradable_root(children: &str, script: &str) -> tempfile::TempDir {
    let releases: Vec<(&str, String)> = [
        ("1.0.0", "0.3.0", "tests/fixtures/faulty", ""),
        ("2.0.0", "0.4.0", "tests/fixtures/faulty-v2", script),
    ]
    .into_iter()
    .map(|(release, plugin_version, crate_path, script)| {
        let header = header_with(release, plugin_version, crate_path, "1000");
        (release, format!("{header}{children}{script}"))
    })
    .collect();
    root_with(&releases)
}

/// Polls until the actor named `name` answers an echo (restarted, say).
async fn answers_again(runtime: &graft::runtime::Runtime, name: &str) -> bool {
    graft_tests::eventually_async(Duration::from_secs(30), || async move {
        call(
            runtime,
            name,
            json!({"Echo": "back"}),
            Duration::from_secs(1),
        )
        .await
        .is_ok()
    })
    .await
}

/// Calls `actor` with an echo of `text` and returns the reply.
async fn echo(actor: &graft::runtime::ActorRef, text: &str) -> String {
    let reply = actor
        .call(
            codec::encode(&json!({"Echo": text})).unwrap(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    codec::decode(&reply).unwrap()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

fn graft_timed(root: &Path, args: &[&str]) -> (Duration, std::process::Output) {
    let began = Instant::now();
    let output = Command::new(graft_binary())
        .env("GRAFT_ROOT", root)
        .args(args)
        .output()
        .unwrap();
    (began.elapsed(), output)
}

/// With 2 × cores actors stuck forever in `handle_call` (no deadline), the control plane
/// and the other actors answer at once: `graft status`, `graft releases`, a call to another
/// actor, `graft rollback` each within 1 s, and SIGTERM ends the host within 1 s.
/// Survives: the host (until SIGTERM), the other actor, the release record, rollback.
#[test]
fn actors_stuck_in_every_worker_thread_leave_the_control_plane_and_other_actors_answering() {
    let stuck = 2 * cores();
    let mut first = header("1.0.0", "\"infinity\"");
    for index in 1..=stuck {
        first.push_str(&child(
            &format!("stuck{index}"),
            "{ stuck_in = [\"handle_call\"] }",
            "shutdown = \"brutal_kill\"\n",
        ));
    }
    first.push_str(&child("healthy", "{}", ""));
    let mut second = first.replace("version = \"1.0.0\"", "version = \"2.0.0\"");
    second.push_str(
        "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"add_child\"\nsupervisor = \"root\"\nid = \"late\"\n\n[[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\nop = \"remove_child\"\nsupervisor = \"root\"\nid = \"late\"\n",
    );
    second.push_str(&child("late", "{}", ""));
    let root = root_with(&[("1.0.0", first), ("2.0.0", second)]);
    let root = root.path();
    let mut host = Host::start(root, &[]);
    let (_, installed) = graft_timed(root, &["install", "2.0.0"]);
    assert!(
        installed.status.success(),
        "{}",
        String::from_utf8_lossy(&installed.stderr)
    );

    // Every stuck actor gets a call it never answers (each client gives up after 1 s).
    let callers: Vec<std::process::Child> = (1..=stuck)
        .map(|index| {
            Command::new(graft_binary())
                .env("GRAFT_ROOT", root)
                .args(["call", &format!("stuck{index}"), "{\"Echo\":\"x\"}"])
                .args(["--timeout", "1000"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut caller in callers {
        caller.wait().unwrap();
    }

    // They are stuck (busy), not merely slow to start.
    let (took, status) = graft_timed(root, &["status", "--json"]);
    assert!(took < Duration::from_secs(1), "status took {took:?}");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert_eq!(status.matches("\"busy\"").count(), stuck, "{status}");
    for args in [
        vec!["status"],
        vec!["releases"],
        vec!["call", "healthy", "{\"Echo\":\"still here\"}"],
        vec!["rollback"],
    ] {
        let (took, output) = graft_timed(root, &args);
        assert!(
            output.status.success(),
            "graft {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            host.log()
        );
        assert!(
            took < Duration::from_secs(1),
            "graft {args:?} took {took:?} with {stuck} actors stuck"
        );
        if args[0] == "call" {
            assert!(String::from_utf8_lossy(&output.stdout).contains("still here"));
        }
    }
    // The rollback reached the permanent release.
    let (_, releases) = graft_timed(root, &["releases", "--json"]);
    let releases: Value = serde_json::from_slice(&releases.stdout).unwrap();
    let current = releases
        .as_array()
        .unwrap()
        .iter()
        .find(|release| release["running"] == json!(true))
        .unwrap()
        .clone();
    assert_eq!(current["version"], json!("1.0.0"), "{releases}");

    let signalled = Instant::now();
    host.signal("TERM");
    let exited = graft_tests::eventually_blocking(Duration::from_secs(10), || {
        matches!(host.child.try_wait(), Ok(Some(_)))
    });
    assert!(exited, "SIGTERM did not end the host: {}", host.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(1),
        "SIGTERM took {:?}",
        signalled.elapsed()
    );
}

async fn call(
    runtime: &graft::runtime::Runtime,
    name: &str,
    request: Value,
    timeout: Duration,
) -> Result<String, CallError> {
    runtime
        .call(name, codec::encode(&request).unwrap(), timeout)
        .await
        .map(|reply| codec::decode::<String>(&reply).unwrap())
}

/// A `handle_call` past its 300 ms deadline: the caller hears at once that the actor
/// exited with `callback timeout: handle_call of faulty 0.3.0 after 300 ms`, the
/// supervisor restarts it, the abandoned thread keeps the library loaded, and the pool
/// keeps its capacity. Survives: the runtime, the other actor, the ability to call the
/// restarted actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_past_its_deadline_kills_its_actor_and_its_supervisor_restarts_it() {
    let mut text = header("1.0.0", "300");
    text.push_str(&child("slow", "{}", ""));
    text.push_str(&child("other", "{}", ""));
    let root = root_with(&[("1.0.0", text)]);
    let (runtime, handler) = boot(root.path()).await;
    let before = runtime.whereis("slow").unwrap();
    let runners = executor::runner_count();

    let began = Instant::now();
    let error = call(
        &runtime,
        "slow",
        json!({"Sleep": {"ms": 600_000}}),
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(20),
        "the caller waited {:?}",
        began.elapsed()
    );
    match &error {
        CallError::Exited { reason, .. } => assert_eq!(
            reason.to_string(),
            "callback timeout: handle_call of faulty 0.3.0 after 300 ms"
        ),
        other => panic!("expected an exit, got {other}"),
    }
    // Restarted by its supervisor, with a new process, answering.
    assert!(
        eventually(Duration::from_secs(20), || runtime
            .whereis("slow")
            .is_some_and(|actor| actor != before))
        .await
    );
    assert_eq!(
        call(
            &runtime,
            "slow",
            json!({"Echo": "back"}),
            Duration::from_secs(5)
        )
        .await
        .unwrap(),
        "back"
    );
    assert_eq!(
        call(
            &runtime,
            "other",
            json!({"Echo": "fine"}),
            Duration::from_secs(5)
        )
        .await
        .unwrap(),
        "fine"
    );
    // The thread is abandoned inside the plugin: reported, and its library stays loaded.
    let stuck = executor::stuck_callbacks();
    assert!(
        stuck
            .iter()
            .any(|entry| entry.callback == "handle_call" && entry.code == "faulty 0.3.0"),
        "{stuck:?}"
    );
    let (resident, _) = handler.resident().await;
    assert!(!resident.is_empty());
    // Capacity did not shrink: a runner replaced the abandoned one.
    assert!(
        executor::runner_count() >= runners,
        "{runners} runners before"
    );
}

/// Every callback has a deadline: a never-returning `init`, `handle_cast`, `handle_info`,
/// `handle_continue` and `terminate` each end in `callback timeout: <callback> of …`, and
/// other actors keep answering. Survives: the runtime, the other actors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_returning_callback_of_any_kind_ends_in_a_callback_timeout() {
    use graft::runtime::{ActorOptions, PluginFactory, Runtime, SpawnError};
    use std::sync::Arc;

    let plugin = graft_tests::load_plugin("graft-fixture-faulty");
    let factory: Arc<dyn graft::runtime::BehaviourFactory> = Arc::new(
        graft_tests::WithCallbackTimeout(PluginFactory::new(plugin), Duration::from_millis(200)),
    );
    let runtime = Runtime::new();
    let options = |name: &str, callback: &str| {
        ActorOptions::new(
            Arc::clone(&factory),
            codec::encode(&json!({"stuck_in": [callback]})).unwrap(),
        )
        .named(name)
    };
    let healthy = runtime.spawn(options("healthy", "none")).await.unwrap();

    // init never returns: the start fails with the deadline's reason.
    match runtime.spawn(options("in_init", "init")).await {
        Err(SpawnError::Stopped { reason, .. }) => assert_eq!(
            reason.to_string(),
            "callback timeout: init of faulty 0.3.0 after 200 ms"
        ),
        Err(other) => panic!("expected a stop, got {other}"),
        Ok(_) => panic!("a stuck init started"),
    }

    for callback in ["handle_cast", "handle_info", "handle_continue", "terminate"] {
        let actor = runtime.spawn(options(callback, callback)).await;
        let actor = match (callback, actor) {
            // handle_continue runs right after init, inside the start.
            ("handle_continue", Err(SpawnError::Stopped { reason, .. })) => {
                assert_eq!(
                    reason.to_string(),
                    "callback timeout: handle_continue of faulty 0.3.0 after 200 ms"
                );
                continue;
            }
            (_, Ok(actor)) => actor,
            (_, Err(error)) => panic!("{callback}: {error}"),
        };
        match callback {
            "handle_cast" => actor.cast(codec::encode(&"go").unwrap()),
            "handle_info" => actor.send_info(codec::encode(&"go").unwrap()),
            _ => {
                actor
                    .stop(
                        graft_plugin::StopReason::Normal,
                        Some(Duration::from_secs(30)),
                    )
                    .await;
            }
        }
        let Ok(reason) = tokio::time::timeout(Duration::from_secs(30), actor.exited()).await else {
            panic!(
                "{callback}: no exit; mailbox {}, runners {}, stuck {:?}, status {:?}",
                actor.mailbox_length(),
                graft::runtime::executor::runner_count(),
                graft::runtime::executor::stuck_callbacks(),
                actor.status(Duration::from_secs(1)).await
            );
        };
        assert_eq!(
            reason.to_string(),
            format!("callback timeout: {callback} of faulty 0.3.0 after 200 ms")
        );
    }
    assert_eq!(echo(&healthy, "alive").await, "alive");
}

/// An install whose `code_change` never returns in 2 × cores actors (every runner the pool
/// started with): the install aborts at its deadline and restores the others; meanwhile
/// the control plane and the other actor answer within 1 s each; at their callback
/// deadline the stuck actors are killed and restarted on the old code. Survives: the
/// runtime, the other actor, the release record (still 1.0.0), the old code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_change_that_never_returns_in_every_runner_aborts_the_install_and_nothing_freezes() {
    let stuck = 2 * cores();
    let mut children: String = (1..=stuck)
        .map(|index| child(&format!("f{index}"), "{ stuck_in = [\"code_change\"] }", ""))
        .collect();
    children.push_str(&child("healthy", "{}", ""));
    let root = upgradable_root(
        &children,
        "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\nplugin = \"faulty\"\nsuspend_timeout_ms = 500\n",
    );
    let (runtime, handler) = boot(root.path()).await;
    let handler = std::sync::Arc::new(handler);
    let installing = tokio::spawn({
        let handler = std::sync::Arc::clone(&handler);
        async move { handler.install(&semver::Version::new(2, 0, 0), None).await }
    });
    // While the migrations are stuck (and after), everything else answers within 1 s.
    for _ in 0..3 {
        let began = Instant::now();
        let status = graft::control::status(&handler).await;
        assert!(
            began.elapsed() < Duration::from_secs(1),
            "status took {:?}",
            began.elapsed()
        );
        assert!(status["tree"].is_object());
        let began = Instant::now();
        assert_eq!(
            call(
                &runtime,
                "healthy",
                json!({"Echo": "up"}),
                Duration::from_secs(1)
            )
            .await
            .unwrap(),
            "up"
        );
        assert!(began.elapsed() < Duration::from_secs(1));
        let began = Instant::now();
        assert!(!handler.which_releases().await.is_empty());
        assert!(began.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let error = tokio::time::timeout(Duration::from_secs(60), installing)
        .await
        .expect("the install returns")
        .unwrap()
        .unwrap_err();
    assert!(error.to_string().contains("change_code"), "{error}");
    assert_eq!(
        handler.current_version().await,
        semver::Version::new(1, 0, 0)
    );
    // Killed at their callback deadline and restarted on the old code.
    for index in 1..=stuck {
        let name = format!("f{index}");
        assert!(
            answers_again(&runtime, &name).await,
            "{name} never came back"
        );
        assert_eq!(graft_tests::version_of(&runtime, &name).await, "0.3.0");
    }
    handler.shutdown().await;
}

/// A plugin that starts a raw pthread running its own code, left running when the last
/// actor using the library is gone: the loader saw `pthread_create` among the library's
/// imports and loaded it with `RTLD_NODELETE`, so closing it leaves it mapped (reported as
/// pinned) and the thread runs on; plugins that cannot start threads are not pinned.
/// Survives: the host process (an unmapped library under that thread would crash it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_thread_left_running_at_unload_keeps_its_library_mapped_and_the_host_alive() {
    use graft::plugin::{Expectations, Loader, UnloadOutcome, is_mapped};
    use graft::runtime::{ActorOptions, PluginFactory, Runtime};
    use std::sync::Arc;

    let loader = Loader::new().unwrap();
    let plain = loader
        .load(
            &graft_tests::plugin_library("counter-1-0-0"),
            &Expectations::default(),
        )
        .unwrap();
    assert_eq!(plain.pinned(), None);
    let plugin = loader
        .load(
            &graft_tests::plugin_library("graft-fixture-threader"),
            &Expectations::default(),
        )
        .unwrap();
    assert!(
        plugin
            .pinned()
            .is_some_and(|reason| reason.contains("pthread_create")),
        "{:?}",
        plugin.pinned()
    );
    let copy = plugin.copy_path().to_owned();
    let runtime = Runtime::new();
    let actor = runtime
        .spawn(ActorOptions::new(
            Arc::new(PluginFactory::new(plugin)),
            codec::encode(&()).unwrap(),
        ))
        .await
        .unwrap();
    actor
        .call(codec::encode(&"spawn").unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    // The thread is running the library's code.
    let ticking = graft_tests::eventually_async(Duration::from_secs(20), || {
        let actor = actor.clone();
        async move {
            let reply = actor
                .call(codec::encode(&"ticks").unwrap(), Duration::from_secs(5))
                .await
                .unwrap();
            codec::decode::<u64>(&reply).unwrap() > 10
        }
    })
    .await;
    assert!(ticking);
    actor
        .stop(
            graft_plugin::StopReason::Normal,
            Some(Duration::from_secs(5)),
        )
        .await;
    drop(actor);
    let closed = eventually(Duration::from_secs(20), || {
        loader.unload_reports().iter().any(|report| {
            report.copy == copy && matches!(&report.outcome, UnloadOutcome::Pinned(reason) if reason.contains("pthread_create"))
        })
    })
    .await;
    assert!(closed, "{:?}", loader.unload_reports());
    assert!(is_mapped(&copy), "the pinned library stays mapped");
    // The thread keeps running its code after the close: the process lives on while
    // other work happens.
    let other = runtime
        .spawn(ActorOptions::new(
            Arc::new(PluginFactory::new(plain)),
            codec::encode(&json!({"start": 0})).unwrap(),
        ))
        .await
        .unwrap();
    for _ in 0..50 {
        other
            .call(
                codec::encode(&json!({"Add": 1})).unwrap(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(is_mapped(&copy));
}

/// An isolated callback past its deadline: the actor is killed as in-process, and the
/// host's thread is freed at once (its connection to the worker is closed; the worker
/// keeps the stuck thread), so no stuck callback is left in the host and the worker's
/// other actors keep answering. Survives: the host, the worker, the other isolated actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_callback_past_its_deadline_frees_its_host_thread() {
    use graft::isolation::{IsolatedFactory, IsolatedPlugin, Worker, WorkerOptions, WorkerProgram};
    use graft::plugin::Expectations;
    use graft::runtime::{ActorOptions, Runtime};
    use std::sync::Arc;

    let worker = Worker::new(
        "faulty",
        WorkerOptions {
            program: WorkerProgram::Path(graft_binary()),
            memory_limit_mb: None,
        },
    );
    let plugin = IsolatedPlugin::load(
        &worker,
        &graft_tests::plugin_library("graft-fixture-faulty"),
        &Expectations::default(),
    )
    .unwrap();
    let factory: Arc<dyn graft::runtime::BehaviourFactory> = Arc::new(
        graft_tests::WithCallbackTimeout(IsolatedFactory::new(plugin), Duration::from_millis(300)),
    );
    let runtime = Runtime::new();
    let stuck = runtime
        .spawn(ActorOptions::new(
            Arc::clone(&factory),
            codec::encode(&json!({})).unwrap(),
        ))
        .await
        .unwrap();
    let other = runtime
        .spawn(ActorOptions::new(
            factory,
            codec::encode(&json!({})).unwrap(),
        ))
        .await
        .unwrap();
    let error = stuck
        .call(
            codec::encode(&json!({"Sleep": {"ms": 600_000}})).unwrap(),
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("callback timeout: handle_call of faulty 0.3.0 after 300 ms"),
        "{error}"
    );
    // The host thread came back: no stuck callback of this actor is left in the host.
    let label = stuck.label();
    assert!(
        eventually(Duration::from_secs(20), || !executor::stuck_callbacks()
            .iter()
            .any(|entry| entry.actor == label))
        .await,
        "{:?}",
        executor::stuck_callbacks()
    );
    assert_eq!(echo(&other, "still here").await, "still here");
}

/// A downgrade whose conversion never returns: the rollback install aborts at its deadline
/// and every other actor stays on the newer code; the stuck actor is killed at its callback
/// deadline and restarted on the newer code (the release still current). Survives: the
/// runtime, the other actors, the release record (2.0.0 current), a later rollback of the
/// others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_that_never_returns_aborts_the_rollback_and_nothing_freezes() {
    let children = child("stuck", "{ stuck_in = [\"downgrade\"] }", "") + &child("fine", "{}", "");
    let root = upgradable_root(
        &children,
        "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\nplugin = \"faulty\"\n\n[[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\nop = \"update\"\nplugin = \"faulty\"\nsuspend_timeout_ms = 500\n",
    );
    let (runtime, handler) = boot(root.path()).await;
    handler
        .install(&semver::Version::new(2, 0, 0), None)
        .await
        .unwrap();
    let error = handler
        .install(&semver::Version::new(1, 0, 0), None)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("change_code"), "{error}");
    assert_eq!(
        handler.current_version().await,
        semver::Version::new(2, 0, 0)
    );
    assert_eq!(
        call(
            &runtime,
            "fine",
            json!({"Echo": "up"}),
            Duration::from_secs(5)
        )
        .await
        .unwrap(),
        "up"
    );
    assert_eq!(graft_tests::version_of(&runtime, "fine").await, "0.4.0");
    assert!(
        answers_again(&runtime, "stuck").await,
        "the stuck actor never came back"
    );
    assert_eq!(graft_tests::version_of(&runtime, "stuck").await, "0.4.0");
    handler.shutdown().await;
}
