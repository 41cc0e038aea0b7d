//! The OTP semantics of actors (issue 11), against the real `otp` fixture plugin, each in
//! process and isolated in a worker process (`isolation = "process"`): `init` may decline
//! to start (`ignore`); a failed start returns only once the name is free and runs no
//! `terminate`; a crash in `terminate` is the exit reason; a cast to a plugin without
//! `handle_cast` stops it; `{shutdown, Info}` crosses the ABI, the wire, monitors and links
//! intact and is a clean exit for transient restarts; an inactivity timeout; and
//! `replace_state` while suspended.
//!
//! The machine running these may be loaded: every wait polls with a generous deadline, and
//! what the actor did is read from its journal file, not by sending it messages.

use graft::isolation::{IsolatedFactory, IsolatedPlugin, Worker, WorkerOptions, WorkerProgram};
use graft::plugin::{CallbackError, Expectations, HostServices, Outputs, PluginIdentity};
use graft::runtime::{
    ActorOptions, ActorRef, Behaviour, BehaviourFactory, NativeFactory, PluginFactory, Runtime,
    SpawnError,
};
use graft::supervisor::{ChildSpec, Restart, Strategy, SupervisorSpec, start_supervisor};
use graft_plugin::{StopReason, codec};
use graft_tests::{eventually, graft_binary, load_plugin, plugin_library};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(30);
const CALL: Duration = Duration::from_secs(10);
const PACKAGE: &str = "graft-fixture-otp";

/// Where the plugin runs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    InProcess,
    Isolated,
}

const MODES: [Mode; 2] = [Mode::InProcess, Mode::Isolated];

/// A factory of `otp` actors in `mode`, and the worker it uses (kept alive by the caller).
fn factory(mode: Mode) -> (Arc<dyn BehaviourFactory>, Option<Worker>) {
    match mode {
        Mode::InProcess => (Arc::new(PluginFactory::new(load_plugin(PACKAGE))), None),
        Mode::Isolated => {
            let worker = Worker::new(
                "otp",
                WorkerOptions {
                    program: WorkerProgram::Path(graft_binary()),
                    memory_limit_mb: None,
                },
            );
            let plugin =
                IsolatedPlugin::load(&worker, &plugin_library(PACKAGE), &Expectations::default())
                    .unwrap_or_else(|error| panic!("loading otp in a worker: {error}"));
            (Arc::new(IsolatedFactory::new(plugin)), Some(worker))
        }
    }
}

fn encode(value: &Value) -> Vec<u8> {
    codec::encode(value).unwrap()
}

fn options(factory: &Arc<dyn BehaviourFactory>, name: &str, args: Value) -> ActorOptions {
    ActorOptions::new(Arc::clone(factory), encode(&args)).named(name)
}

async fn call(actor: &ActorRef, request: Value) -> Value {
    let reply = actor
        .call(encode(&request), CALL)
        .await
        .unwrap_or_else(|error| panic!("call {request}: {error}"));
    codec::decode(&reply).unwrap()
}

/// A journal file in `directory`.
fn journal(directory: &Path, name: &str) -> PathBuf {
    directory.join(format!("{name}.journal"))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `init` returning `Error::ignore()` is OTP's `ignore`: the start answers `Ignored`, the
/// name is free at once, and `terminate` never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_may_decline_to_start_and_leaves_the_name_free() {
    let directory = tempfile::tempdir().unwrap();
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let log = journal(directory.path(), &format!("ignore-{mode:?}"));
        let declined = runtime
            .spawn(options(
                &factory,
                "declines",
                json!({"init": "ignore", "journal": log}),
            ))
            .await;
        match declined {
            Err(SpawnError::Ignored { actor }) => assert_eq!(actor, "declines", "{mode:?}"),
            Err(other) => panic!("{mode:?}: expected Ignored, got {other}"),
            Ok(_) => panic!("{mode:?}: an ignoring init started"),
        }
        assert!(runtime.whereis("declines").is_none(), "{mode:?}");
        let again = runtime
            .spawn(options(&factory, "declines", json!({"journal": log})))
            .await
            .unwrap_or_else(|error| panic!("{mode:?}: the retry: {error}"));
        assert_eq!(call(&again, json!("Ping")).await, json!("pong"));
        assert_eq!(lines(&log), ["init", "init"], "{mode:?}: no terminate");
    }
}

/// A failed `init` (an error): the start answers `InitFailed` only once the name is free
/// (an immediate retry takes it), and `terminate` does not run, as in OTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_init_frees_the_name_before_it_answers_and_runs_no_terminate() {
    let directory = tempfile::tempdir().unwrap();
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let log = journal(directory.path(), &format!("fail-{mode:?}"));
        for attempt in 0..5 {
            match runtime
                .spawn(options(
                    &factory,
                    "fails",
                    json!({"init": "fail", "journal": log}),
                ))
                .await
            {
                Err(SpawnError::InitFailed { error, .. }) => assert!(
                    error.to_string().contains("init fails on purpose"),
                    "{mode:?}: {error}"
                ),
                Err(other) => panic!("{mode:?} attempt {attempt}: {other}"),
                Ok(_) => panic!("{mode:?}: a failing init started"),
            }
        }
        let started = runtime
            .spawn(options(&factory, "fails", json!({"journal": log})))
            .await
            .unwrap_or_else(|error| panic!("{mode:?}: the retry: {error}"));
        assert!(started.is_alive());
        assert_eq!(lines(&log), vec!["init"; 6], "{mode:?}: no terminate");
    }
}

/// OTP: `init` returning `{ok, State, {continue, C}}` has started (the caller gets the
/// pid); a `handle_continue` that then stops is a running process stopping, so
/// `terminate` runs with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_that_stops_runs_terminate_as_in_otp() {
    let directory = tempfile::tempdir().unwrap();
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let log = journal(directory.path(), &format!("continue-{mode:?}"));
        let args = json!({"continue_then_stop": "shutdown: done early", "journal": log});
        let actor = match runtime.spawn(options(&factory, "brief", args)).await {
            Ok(actor) => actor,
            Err(error) => panic!("{mode:?}: {error}"),
        };
        let reason = tokio::time::timeout(PATIENCE, actor.exited())
            .await
            .unwrap();
        assert_eq!(
            reason,
            StopReason::Shutdown(Some("done early".to_owned())),
            "{mode:?}"
        );
        assert_eq!(
            lines(&log),
            ["init", "terminate: shutdown: done early"],
            "{mode:?}"
        );
        assert!(runtime.whereis("brief").is_none(), "{mode:?}");
    }
}

/// A host-native behaviour whose `init` asks to stop at once: what it journals.
struct StopsAtInit {
    journal: Arc<Mutex<Vec<String>>>,
}

impl Behaviour for StopsAtInit {
    fn identity(&self) -> Option<&PluginIdentity> {
        None
    }

    fn handle_call(
        &mut self,
        _request: &[u8],
        _reply_token: u64,
        _services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        Ok(Outputs::default())
    }

    fn handle_cast(
        &mut self,
        _message: &[u8],
        _services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        Ok(Outputs::default())
    }

    fn handle_info(
        &mut self,
        _kind: u32,
        _message: &[u8],
        _services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        Ok(Outputs::default())
    }

    fn handle_continue(
        &mut self,
        _argument: &[u8],
        _services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        Ok(Outputs::default())
    }

    fn terminate(
        &mut self,
        reason: &StopReason,
        _services: &dyn HostServices,
    ) -> Result<(), CallbackError> {
        self.journal
            .lock()
            .unwrap()
            .push(format!("terminate: {reason}"));
        Ok(())
    }

    fn encode_state(&mut self) -> Result<Vec<u8>, CallbackError> {
        Ok(codec::encode(&()).unwrap())
    }
}

/// An `init` that stops (OTP's `{stop, Reason}`): the start answers `Stopped` only once the
/// name is free, and `terminate` does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_that_stops_frees_the_name_first_and_runs_no_terminate() {
    let journal = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&journal);
    let stops: Arc<dyn BehaviourFactory> = Arc::new(NativeFactory(
        move |_args: &[u8], _services: &dyn HostServices| {
            let behaviour: Box<dyn Behaviour> = Box::new(StopsAtInit {
                journal: Arc::clone(&recorded),
            });
            Ok((
                behaviour,
                Outputs {
                    stop: Some(StopReason::Error("no thanks".to_owned())),
                    ..Outputs::default()
                },
            ))
        },
    ));
    let runtime = Runtime::new();
    for attempt in 0..20 {
        match runtime
            .spawn(ActorOptions::new(Arc::clone(&stops), Vec::new()).named("stops"))
            .await
        {
            Err(SpawnError::Stopped { reason, .. }) => {
                assert_eq!(reason, StopReason::Error("no thanks".to_owned()));
            }
            Err(other) => panic!("attempt {attempt}: {other}"),
            Ok(_) => panic!("attempt {attempt}: started"),
        }
        assert!(runtime.whereis("stops").is_none(), "attempt {attempt}");
    }
    assert!(journal.lock().unwrap().is_empty(), "{:?}", journal);
}

/// A crash in `terminate` is the exit reason (OTP): stopped with `normal`, an actor whose
/// `terminate` panics exits with that panic, and its monitors and supervisor hear it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_terminate_becomes_the_exit_reason() {
    let directory = tempfile::tempdir().unwrap();
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let log = journal(directory.path(), &format!("terminate-{mode:?}"));
        let actor = runtime
            .spawn(options(
                &factory,
                "fragile",
                json!({"panic_in_terminate": true, "journal": log}),
            ))
            .await
            .unwrap();
        let watcher = runtime
            .spawn(options(&factory, "watcher", json!({})))
            .await
            .unwrap();
        runtime.monitor(&watcher, &actor);
        let reason = actor.stop(StopReason::Normal, Some(PATIENCE)).await;
        let text = reason.to_string();
        assert!(!reason.is_clean(), "{mode:?}: {text}");
        assert!(
            text.contains("terminate panicked: otp panics in terminate on purpose"),
            "{mode:?}: {text}"
        );
        assert_eq!(lines(&log), ["init", "terminate: normal"], "{mode:?}");
        let expected = json!(format!("down: fragile: {text}"));
        let mut last = Value::Null;
        for _ in 0..1000 {
            last = call(&watcher, json!("LastInfo")).await;
            if last == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(last, expected, "{mode:?}");
    }
}

/// A cast to a plugin that does not handle casts stops it with a reason that says so
/// (OTP's `undef` crash, Elixir's default `handle_cast`), instead of dropping the cast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_to_a_plugin_without_handle_cast_stops_it_with_a_clear_reason() {
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let actor = runtime
            .spawn(options(&factory, "no_casts", json!({})))
            .await
            .unwrap();
        actor.cast(encode(&json!("hello")));
        let reason = tokio::time::timeout(PATIENCE, actor.exited())
            .await
            .unwrap_or_else(|_| panic!("{mode:?}: the cast was ignored"));
        assert_eq!(
            reason.to_string(),
            "otp 0.1.0: handle_cast failed: this plugin does not handle casts \
             (GenServer::handle_cast is not implemented)",
            "{mode:?}"
        );
    }
}

/// Polls `watcher`'s `LastInfo` until it is `expected` (each poll is a call: `LastInfo`
/// arms nothing, so polling changes nothing).
async fn await_last_info(watcher: &ActorRef, expected: &str, mode: Mode) {
    let mut last = Value::Null;
    let end = tokio::time::Instant::now() + PATIENCE;
    while tokio::time::Instant::now() < end {
        last = call(watcher, json!("LastInfo")).await;
        if last == json!(expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{mode:?}: {} saw {last}, not {expected}", watcher.label());
}

/// `{shutdown, Info}` crosses the plugin ABI and the worker wire intact: `terminate` gets
/// it, it is the exit reason, a monitor's `down` and a trapping link's `exit` carry it, and
/// a linked actor that does not trap exits goes down with it (OTP: only `normal` leaves a
/// linked actor running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_details_reaches_terminate_monitors_and_links_intact() {
    let directory = tempfile::tempdir().unwrap();
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let log = journal(directory.path(), &format!("shutdown-{mode:?}"));
        let spawn = |name: &'static str, args: Value, trap_exit: bool| {
            let runtime = runtime.clone();
            let mut options = options(&factory, name, args);
            options.trap_exit = trap_exit;
            async move { runtime.spawn(options).await.unwrap() }
        };
        let draining = spawn("draining", json!({"journal": log}), false).await;
        let monitoring = spawn("monitoring", json!({}), false).await;
        let trapping = spawn("trapping", json!({}), true).await;
        let linked = spawn("linked", json!({}), false).await;
        runtime.monitor(&monitoring, &draining);
        runtime.link(&trapping, &draining);
        runtime.link(&linked, &draining);

        assert_eq!(
            call(&draining, json!({"Stop": "shutdown: drained"})).await,
            json!("stopping")
        );
        let drained = StopReason::Shutdown(Some("drained".to_owned()));
        let reason = tokio::time::timeout(PATIENCE, draining.exited())
            .await
            .unwrap();
        assert_eq!(reason, drained, "{mode:?}");
        assert_eq!(
            lines(&log),
            ["init", "terminate: shutdown: drained"],
            "{mode:?}"
        );
        await_last_info(&monitoring, "down: draining: shutdown: drained", mode).await;
        await_last_info(&trapping, "exit: draining: shutdown: drained", mode).await;
        let linked_reason = tokio::time::timeout(PATIENCE, linked.exited())
            .await
            .unwrap_or_else(|_| panic!("{mode:?}: the linked actor ignored the shutdown"));
        assert_eq!(linked_reason, drained, "{mode:?}");
        assert!(trapping.is_alive() && monitoring.is_alive(), "{mode:?}");
    }
}

/// A transient child that exits with `{shutdown, Info}` is not restarted (a clean exit);
/// its sibling that exits with an error is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_child_stopping_with_shutdown_details_is_not_restarted() {
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let child = |id: &str| {
            ChildSpec::worker(id, Arc::clone(&factory), encode(&json!({})))
                .named(id)
                .restart(Restart::Transient)
        };
        let supervisor = start_supervisor(
            &runtime,
            SupervisorSpec::new(Strategy::OneForOne, vec![child("clean"), child("crashing")])
                .intensity(10, 60),
        )
        .await
        .unwrap();
        let clean = runtime.whereis("clean").unwrap();
        call(&clean, json!({"Stop": "shutdown: done"})).await;
        assert_eq!(
            tokio::time::timeout(PATIENCE, clean.exited())
                .await
                .unwrap(),
            StopReason::Shutdown(Some("done".to_owned()))
        );
        // The supervisor handles exits in order: once the later crash is restarted, the
        // clean exit has been handled too.
        let crashing = runtime.whereis("crashing").unwrap();
        call(&crashing, json!({"Stop": "boom"})).await;
        let restarted = eventually(PATIENCE, || {
            runtime
                .whereis("crashing")
                .is_some_and(|actor| actor != crashing)
        })
        .await;
        assert!(
            restarted,
            "{mode:?}: the crashed transient child was not restarted"
        );
        let children = supervisor.which_children().await.unwrap();
        let clean_info = children.iter().find(|info| info.id == "clean").unwrap();
        assert_eq!(
            (clean_info.process, clean_info.restarts),
            (None, 0),
            "{mode:?}"
        );
        assert!(runtime.whereis("clean").is_none(), "{mode:?}");
        supervisor.shutdown().await;
    }
}

fn count(path: &Path, line: &str) -> usize {
    lines(path).iter().filter(|seen| *seen == line).count()
}

/// An inactivity timeout (OTP's `timeout` in a callback's return): after a callback that
/// asked for one, no message within the time brings `handle_timeout`; a callback that asks
/// again keeps it going (three in a row), and one that does not ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactivity_timeout_fires_when_no_message_comes_and_lasts_one_callback() {
    let directory = tempfile::tempdir().unwrap();
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let log = journal(directory.path(), &format!("timeout-{mode:?}"));
        let actor = runtime
            .spawn(options(&factory, "idle", json!({"journal": log})))
            .await
            .unwrap();
        assert_eq!(
            call(&actor, json!({"Arm": {"ms": 50, "times": 3}})).await,
            json!("armed")
        );
        assert!(
            eventually(PATIENCE, || count(&log, "timeout") == 3).await,
            "{mode:?}: {:?}",
            lines(&log)
        );
        // `handle_timeout` asked for no fourth: none comes (a loaded machine only delays
        // timeouts: it could hide a wrong fourth, never invent one).
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(count(&log, "timeout"), 3, "{mode:?}");
        assert_eq!(call(&actor, json!("Ping")).await, json!("pong"));
    }
}

/// Any message cancels an armed inactivity timeout, and a callback that does not ask again
/// leaves none: a `Ping` right behind the `Arm` means no timeout ever fires. System
/// messages (`status`, `get_state`) cancel nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cancels_the_inactivity_timeout() {
    let directory = tempfile::tempdir().unwrap();
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let log = journal(directory.path(), &format!("cancel-{mode:?}"));
        let actor = runtime
            .spawn(options(&factory, "busy", json!({"journal": log})))
            .await
            .unwrap();
        // Both are in the mailbox within microseconds of each other.
        let (armed, pinged) = tokio::join!(
            actor.call(encode(&json!({"Arm": {"ms": 1000, "times": 1}})), CALL),
            actor.call(encode(&json!("Ping")), CALL),
        );
        assert_eq!(codec::decode::<Value>(&armed.unwrap()).unwrap(), "armed");
        assert_eq!(codec::decode::<Value>(&pinged.unwrap()).unwrap(), "pong");
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(count(&log, "timeout"), 0, "{mode:?}: {:?}", lines(&log));

        // System messages are not messages to the behaviour: they cancel nothing.
        assert_eq!(
            call(&actor, json!({"Arm": {"ms": 200, "times": 1}})).await,
            json!("armed")
        );
        for _ in 0..3 {
            actor.status(CALL).await.unwrap();
            actor.get_state(CALL).await.unwrap();
        }
        assert!(
            eventually(PATIENCE, || count(&log, "timeout") == 1).await,
            "{mode:?}: {:?}",
            lines(&log)
        );
    }
}

/// `replace_state` (OTP's `sys:replace_state`): refused while running, with a typed error;
/// while suspended the plugin's `restore_state` builds the new state; a state that does not
/// decode is refused and the old one stays; messages sent meanwhile run on the new state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_state_is_accepted_only_while_suspended() {
    use graft::runtime::SystemError;
    for mode in MODES {
        let (factory, _worker) = factory(mode);
        let runtime = Runtime::new();
        let actor = runtime
            .spawn(options(&factory, "replaced", json!({})))
            .await
            .unwrap();
        actor.send_info(encode(&json!("before")));
        let new_state = encode(&json!({"last_info": "after"}));
        match actor.replace_state(new_state.clone(), CALL).await {
            Err(SystemError::NotSuspendedFor { actor, request }) => {
                assert_eq!((actor.as_str(), request), ("replaced", "replace_state"));
            }
            other => panic!("{mode:?}: replaced while running: {other:?}"),
        }
        assert_eq!(call(&actor, json!("LastInfo")).await, json!("before"));

        actor.suspend(CALL).await.unwrap();
        match actor.replace_state(encode(&json!(42)), CALL).await {
            Err(SystemError::ReplaceStateFailed { message, .. }) => {
                assert!(message.contains("restore_state"), "{mode:?}: {message}");
            }
            other => panic!("{mode:?}: a bad state was taken: {other:?}"),
        }
        assert_eq!(
            actor.get_state(CALL).await.unwrap()["last_info"],
            json!("before"),
            "{mode:?}"
        );
        actor.replace_state(new_state, CALL).await.unwrap();
        let waiting = tokio::spawn({
            let actor = actor.clone();
            async move { call(&actor, json!("LastInfo")).await }
        });
        actor.resume(CALL).await.unwrap();
        assert_eq!(waiting.await.unwrap(), json!("after"), "{mode:?}");
        assert!(actor.is_alive());
    }
}

/// `graft state NAME --replace JSON_OR_FILE`: refused unless the actor is suspended, then
/// replaces its state with the JSON (encoded as `graft call` encodes messages) or with the
/// JSON in a file; a state the plugin cannot decode is refused and the old one stays.
#[test]
fn graft_state_replace_works_only_while_suspended() {
    use graft_tests::{Host, built_root, run_graft, stderr_text, succeed_graft};
    let root = built_root();
    let root = root.path();
    let _host = Host::start(root, &[]);
    succeed_graft(root, &["call", "counter", r#"{"Add": 2}"#]);

    let refused = run_graft(root, &["state", "counter", "--replace", r#"{"count": 41}"#]);
    assert!(!refused.status.success());
    assert!(
        stderr_text(&refused)
            .contains("counter is not suspended; replace_state is only accepted while suspended"),
        "{}",
        stderr_text(&refused)
    );

    succeed_graft(root, &["suspend", "counter"]);
    let bad = run_graft(root, &["state", "counter", "--replace", r#""nonsense""#]);
    assert!(!bad.status.success());
    assert!(
        stderr_text(&bad).contains("replace_state of counter failed"),
        "{}",
        stderr_text(&bad)
    );
    assert_eq!(
        succeed_graft(root, &["state", "counter", "--replace", r#"{"count": 41}"#]).trim(),
        "state of counter replaced"
    );
    assert_eq!(
        succeed_graft(root, &["state", "counter", "--json"]).trim(),
        r#"{"count":41}"#
    );
    let file = root.join("new-state.json");
    std::fs::write(&file, r#"{"count": 40}"#).unwrap();
    succeed_graft(
        root,
        &["state", "counter", "--replace", file.to_str().unwrap()],
    );
    succeed_graft(root, &["resume", "counter"]);
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#""Get""#]).trim(),
        "40"
    );
}
