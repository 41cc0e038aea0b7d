//! Process isolation under releases (issue 9 §3): `isolation = "process"` in `release.toml`
//! runs a plugin in its worker process (the real `graft` binary, found by
//! `WorkerProgram::Search`), end to end — boot, calls and casts, upgrades and rollbacks in
//! and across isolation modes, a segfault, a worker that dies during an install, and the
//! `graft start` host with `graft status` and `kill -9`.
//!
//! Each test states what survives: the host, the other actors, the release record, the
//! ability to roll back. The machine running these may be loaded: every wait polls with a
//! generous deadline and no test assumes an order of timing.

use graft::release::handler::{InstallPhase, ReleaseHandler};
use graft::runtime::Runtime;
use graft_plugin::codec;
use graft_tests::version_of;
use graft_tests::{Host, boot, eventually_blocking, graft_binary, kill_9, run_graft, version};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(60);
const CALL: Duration = Duration::from_secs(10);

/// A plugin entry: name, version, crate, extra lines (`isolation = ...`).
type PluginLine<'a> = (&'a str, &'a str, &'a str, &'a str);

/// A child: id, plugin, args (TOML).
type ChildLine<'a> = (&'a str, &'a str, &'a str);

fn release(version: &str, plugins: &[PluginLine], children: &[ChildLine], script: &str) -> String {
    let mut text = format!("[release]\nname = \"isolated\"\nversion = \"{version}\"\n");
    for (name, plugin_version, crate_path, extra) in plugins {
        text.push_str(&format!(
            "\n[plugins.{name}]\nversion = \"{plugin_version}\"\ncrate = \"{crate_path}\"\n{extra}"
        ));
    }
    text.push_str(
        "\n[supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 100\nmax_seconds = 10\n",
    );
    for (id, plugin, args) in children {
        text.push_str(&format!(
            "\n[[supervisor.children]]\nid = \"{id}\"\nplugin = \"{plugin}\"\nargs = {args}\n"
        ));
    }
    text.push_str(script);
    text
}

/// An `[[upgrade]]` from `from` and a `[[downgrade]]` to it, each updating `plugins`
/// (name, extra lines of the instruction).
fn script(from: &str, plugins: &[(&str, &str)]) -> String {
    let mut text = String::new();
    for (section, key) in [("upgrade", "from"), ("downgrade", "to")] {
        text.push_str(&format!("\n[[{section}]]\n{key} = \"{from}\"\n"));
        for (plugin, extra) in plugins {
            text.push_str(&format!(
                "\n[[{section}.instructions]]\nop = \"update\"\nplugin = \"{plugin}\"\n{extra}"
            ));
        }
    }
    text
}

const PROCESS: &str = "isolation = \"process\"\n";
const KV_1_0: (&str, &str, &str) = ("kv", "1.0.0", "plugins/kv/1.0.0");
const KV_1_1: (&str, &str, &str) = ("kv", "1.1.0", "plugins/kv/1.1.0");
const FAULTY_0_3: (&str, &str, &str) = ("faulty", "0.3.0", "tests/fixtures/faulty");
const FAULTY_0_4: (&str, &str, &str) = ("faulty", "0.4.0", "tests/fixtures/faulty-v2");

fn entry<'a>(plugin: (&'a str, &'a str, &'a str), extra: &'a str) -> PluginLine<'a> {
    (plugin.0, plugin.1, plugin.2, extra)
}

/// Writes and assembles `release.toml` texts (version, text) into a fresh root. Builds the
/// `graft` binary first: it is the worker program that `WorkerProgram::Search` finds next
/// to the test binary (`target/debug/graft` from `target/debug/deps`).
fn root_with(releases: &[(&str, String)]) -> tempfile::TempDir {
    let binary = graft_binary();
    let found = graft::isolation::WorkerProgram::Search
        .resolve()
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(
        found.canonicalize().unwrap(),
        binary.canonicalize().unwrap(),
        "the worker program found is the graft binary just built"
    );
    graft_tests::assembled_root(releases)
}

fn encode(value: &Value) -> Vec<u8> {
    codec::encode(value).unwrap()
}

async fn try_call(runtime: &Runtime, actor: &str, request: &Value) -> Result<Value, String> {
    runtime
        .call(actor, encode(request), CALL)
        .await
        .map(|reply| codec::decode(&reply).unwrap())
        .map_err(|error| error.to_string())
}

async fn call(runtime: &Runtime, actor: &str, request: Value) -> Value {
    try_call(runtime, actor, &request)
        .await
        .unwrap_or_else(|error| panic!("call {actor} {request}: {error}"))
}

/// Calls until the actor answers (it may be restarting).
async fn call_eventually(runtime: &Runtime, actor: &str, request: Value) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match try_call(runtime, actor, &request).await {
            Ok(value) => return value,
            Err(error) if tokio::time::Instant::now() >= deadline => {
                panic!("{actor} never answered {request}: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The worker pid of `plugin`, from the handler.
fn worker_pid(handler: &ReleaseHandler, plugin: &str) -> Option<u32> {
    handler
        .isolated_workers()
        .into_iter()
        .find(|worker| worker.plugin == plugin)
        .and_then(|worker| worker.pid)
}

/// The process a faulty actor runs in.
async fn pid_of(runtime: &Runtime, actor: &str) -> u32 {
    call_eventually(runtime, actor, json!("Pid"))
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

use graft_tests::gone;

fn record(root: &Path) -> String {
    std::fs::read_to_string(root.join("releases").join("RELEASES.json")).unwrap_or_default()
}

/// kv under `isolation = "process"` (with a memory limit) boots in its own worker beside an
/// isolated faulty and an in-process counter: calls and casts reach it, its code runs in
/// the worker (the faulty probe reports the worker's pid, not the host's; killing kv's
/// worker ends kv with `worker crashed`), `status` lists both workers, and only the
/// in-process library is resident in the host.
/// Survives: the host, the in-process counter, the release record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_plugin_under_a_release_boots_and_answers_from_its_worker() {
    let text = release(
        "1.0.0",
        &[
            entry(KV_1_0, "isolation = \"process\"\nmemory_limit_mb = 512\n"),
            entry(FAULTY_0_3, PROCESS),
            ("counter", "1.0.0", "plugins/counter/1.0.0", ""),
        ],
        &[
            ("kv", "kv", "{}"),
            ("probe", "faulty", "{}"),
            ("counter", "counter", "{ start = 0 }"),
        ],
        "",
    );
    let root = root_with(&[("1.0.0", text)]);
    let (runtime, handler) = boot(root.path()).await;
    let record_before = record(root.path());

    call(&runtime, "kv", json!({"Put": {"key": "a", "value": "1"}})).await;
    runtime
        .cast("kv", encode(&json!({"Put": {"key": "b", "value": "2"}})))
        .unwrap();
    assert_eq!(call(&runtime, "kv", json!({"Get": "a"})).await, json!("1"));
    assert_eq!(call(&runtime, "kv", json!("Keys")).await, json!(["a", "b"]));

    let workers = handler.isolated_workers();
    assert_eq!(
        workers
            .iter()
            .map(|w| w.plugin.as_str())
            .collect::<Vec<_>>(),
        ["faulty", "kv"]
    );
    let host = std::process::id();
    for worker in &workers {
        let pid = worker.pid.unwrap();
        assert_ne!(pid, host);
        assert_eq!(worker.spawned, 1);
        assert!(!gone(pid));
    }
    assert_eq!(workers[1].memory_limit_mb, Some(512));
    assert_eq!(workers[0].memory_limit_mb, None);
    assert_eq!(
        pid_of(&runtime, "probe").await,
        worker_pid(&handler, "faulty").unwrap()
    );
    assert_ne!(worker_pid(&handler, "kv"), worker_pid(&handler, "faulty"));

    // The host has only the in-process library loaded; status shows the workers.
    let (resident, _) = handler.resident().await;
    let resident: Vec<&str> = resident.iter().map(|r| r.plugin.as_str()).collect();
    assert_eq!(resident, ["counter"]);
    let status = graft::control::status(&handler).await;
    let kv_pid = worker_pid(&handler, "kv").unwrap();
    assert!(
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|worker| worker["plugin"] == "kv" && worker["pid"] == json!(kv_pid)),
        "{status}"
    );

    // kv's code runs in that worker: killing it ends kv (and only kv) with the crash.
    let kv = runtime.whereis("kv").unwrap();
    kill_9(kv_pid);
    let reason = tokio::time::timeout(PATIENCE, kv.exited()).await.unwrap();
    assert!(
        reason
            .to_string()
            .contains("worker crashed: killed by signal 9 (SIGKILL)"),
        "{reason}"
    );
    assert_eq!(
        call(&runtime, "counter", json!("Get")).await,
        json!(0),
        "the in-process counter is untouched"
    );
    // Restarted fresh, in a fresh worker.
    assert_eq!(
        call_eventually(&runtime, "kv", json!("Keys")).await,
        json!([])
    );
    let again = handler
        .isolated_workers()
        .into_iter()
        .find(|worker| worker.plugin == "kv")
        .unwrap();
    assert_eq!(again.spawned, 2);
    assert_ne!(again.pid, Some(kv_pid));
    assert_eq!(record(root.path()), record_before);
    handler.shutdown().await;
}

/// kv 1.0.0 → 1.1.0, both isolated, with its state migrated in the worker (code_change),
/// then the rollback (the old release installed again) migrates it down: the entries
/// survive both ways, the same worker serves every version, and its memory limit follows
/// the running release.
/// Survives: the host, the state, the worker, the release record (nothing made permanent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_plugin_upgrades_and_rolls_back_with_its_state() {
    let children = [("kv", "kv", "{}")];
    let root = root_with(&[
        (
            "1.0.0",
            release("1.0.0", &[entry(KV_1_0, PROCESS)], &children, ""),
        ),
        (
            "2.0.0",
            release(
                "2.0.0",
                &[entry(
                    KV_1_1,
                    "isolation = \"process\"\nmemory_limit_mb = 1024\n",
                )],
                &children,
                &script("1.0.0", &[("kv", "")]),
            ),
        ),
    ]);
    let (runtime, handler) = boot(root.path()).await;
    let record_before = record(root.path());
    let worker = worker_pid(&handler, "kv").unwrap();
    call(&runtime, "kv", json!({"Put": {"key": "a", "value": "1"}})).await;
    call(&runtime, "kv", json!({"Put": {"key": "b", "value": "2"}})).await;

    let report = handler.install(&version("2.0.0"), None).await.unwrap();
    assert_eq!(report.actors_migrated, 1);
    assert_eq!(version_of(&runtime, "kv").await, "1.1.0");
    assert_eq!(call(&runtime, "kv", json!("Keys")).await, json!(["a", "b"]));
    // 1.1.0's own call: its counter started at zero in code_change.
    assert_eq!(call(&runtime, "kv", json!("Requests")).await, json!(1));
    call(&runtime, "kv", json!({"Put": {"key": "c", "value": "3"}})).await;
    assert_eq!(worker_pid(&handler, "kv"), Some(worker));
    // The running worker took 2.0.0's memory limit at the commit.
    assert_eq!(handler.isolated_workers()[0].memory_limit_mb, Some(1024));

    handler.install(&version("1.0.0"), None).await.unwrap();
    assert_eq!(version_of(&runtime, "kv").await, "1.0.0");
    assert_eq!(
        call(&runtime, "kv", json!("Keys")).await,
        json!(["a", "b", "c"])
    );
    assert_eq!(call(&runtime, "kv", json!({"Get": "c"})).await, json!("3"));
    assert_eq!(worker_pid(&handler, "kv"), Some(worker));
    assert_eq!(handler.isolated_workers()[0].spawned, 1);
    assert_eq!(handler.isolated_workers()[0].memory_limit_mb, None);
    assert_eq!(record(root.path()), record_before);
    handler.shutdown().await;
}

/// A release that moves kv (1.0.0 → 1.1.0) and faulty (0.3.0, same version, a soft update)
/// from the host into worker processes carries their state across, and the rollback moves
/// them back into the host with their state; the workers stop once nothing runs in them.
/// A release that switches a plugin's isolation without an `update` is refused.
/// Survives: the host, every actor's state, the release record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_moves_plugins_between_the_host_and_workers_with_their_state() {
    let children = [("kv", "kv", "{}"), ("probe", "faulty", "{}")];
    let in_host = release(
        "1.0.0",
        &[entry(KV_1_0, ""), entry(FAULTY_0_3, "")],
        &children,
        "",
    );
    let isolated = release(
        "2.0.0",
        &[entry(KV_1_1, PROCESS), entry(FAULTY_0_3, PROCESS)],
        &children,
        &script("1.0.0", &[("kv", ""), ("faulty", "mode = \"soft\"\n")]),
    );
    // Switches faulty's isolation but updates only kv.
    let unscripted = release(
        "1.5.0",
        &[entry(KV_1_1, ""), entry(FAULTY_0_3, PROCESS)],
        &children,
        &script("1.0.0", &[("kv", "")]),
    );
    let root = root_with(&[
        ("1.0.0", in_host),
        ("1.5.0", unscripted),
        ("2.0.0", isolated),
    ]);
    let (runtime, handler) = boot(root.path()).await;
    let record_before = record(root.path());
    let host = std::process::id();
    assert!(handler.isolated_workers().is_empty());
    assert_eq!(pid_of(&runtime, "probe").await, host);
    call(&runtime, "kv", json!({"Put": {"key": "a", "value": "1"}})).await;
    call(&runtime, "probe", json!({"Echo": "x"})).await;

    let refused = handler
        .install(&version("1.5.0"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("\"faulty\" changes from isolation in_process to process")
            && refused.contains("no `update`"),
        "{refused}"
    );

    // Into workers.
    let report = handler.install(&version("2.0.0"), None).await.unwrap();
    assert_eq!(report.actors_migrated, 2);
    let faulty_worker = worker_pid(&handler, "faulty").unwrap();
    let kv_worker = worker_pid(&handler, "kv").unwrap();
    assert_eq!(pid_of(&runtime, "probe").await, faulty_worker);
    assert_ne!(faulty_worker, host);
    // Pid, Echo and Pid (each counts itself), and this call.
    assert_eq!(call(&runtime, "probe", json!("Handled")).await, json!("4"));
    assert_eq!(version_of(&runtime, "kv").await, "1.1.0");
    assert_eq!(call(&runtime, "kv", json!({"Get": "a"})).await, json!("1"));
    call(&runtime, "kv", json!({"Put": {"key": "b", "value": "2"}})).await;
    // Only the libraries in the host are resident there.
    let (resident, _) = handler.resident().await;
    assert!(resident.is_empty(), "{resident:?}");

    // And back into the host.
    handler.install(&version("1.0.0"), None).await.unwrap();
    assert_eq!(pid_of(&runtime, "probe").await, host);
    assert_eq!(call(&runtime, "probe", json!("Handled")).await, json!("6"));
    assert_eq!(version_of(&runtime, "kv").await, "1.0.0");
    assert_eq!(call(&runtime, "kv", json!("Keys")).await, json!(["a", "b"]));
    assert!(handler.isolated_workers().is_empty());
    // Nothing runs in the workers any more: they stop and are reaped.
    assert!(
        eventually_blocking(PATIENCE, || gone(faulty_worker) && gone(kv_worker)),
        "workers {faulty_worker} and {kv_worker} still exist"
    );
    assert_eq!(record(root.path()), record_before);
    handler.shutdown().await;
}

/// An isolated faulty segfaults in `handle_call` under release 2.0.0 (installed, not
/// permanent): the call fails with `worker crashed: killed by signal 11 (SIGSEGV)`, the
/// actors of that worker exit and their supervisor restarts them in a fresh worker, the
/// in-process kv keeps answering, and the rollback to 1.0.0 still works afterwards.
/// Survives: the host, the in-process actor, the release record, rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfault_in_an_isolated_plugin_restarts_its_actors_in_a_fresh_worker() {
    let children = [
        ("victim", "faulty", "{ segfault_in = [\"handle_call\"] }"),
        ("calm", "faulty", "{}"),
        ("kv", "kv", "{}"),
    ];
    let root = root_with(&[
        (
            "1.0.0",
            release(
                "1.0.0",
                &[entry(FAULTY_0_3, PROCESS), entry(KV_1_0, "")],
                &children,
                "",
            ),
        ),
        (
            "2.0.0",
            release(
                "2.0.0",
                &[entry(FAULTY_0_4, PROCESS), entry(KV_1_0, "")],
                &children,
                &script("1.0.0", &[("faulty", "")]),
            ),
        ),
    ]);
    let (runtime, handler) = boot(root.path()).await;
    handler.install(&version("2.0.0"), None).await.unwrap();
    let record_before = record(root.path());
    call(&runtime, "kv", json!({"Put": {"key": "a", "value": "1"}})).await;
    let old_worker = worker_pid(&handler, "faulty").unwrap();
    let victim = runtime.whereis("victim").unwrap();
    let calm = runtime.whereis("calm").unwrap();
    assert_eq!(pid_of(&runtime, "calm").await, old_worker);

    let error = try_call(&runtime, "victim", &json!({"Echo": "x"}))
        .await
        .unwrap_err();
    assert!(
        error.contains("worker crashed: killed by signal 11 (SIGSEGV)"),
        "{error}"
    );
    for actor in [&victim, &calm] {
        let reason = tokio::time::timeout(PATIENCE, actor.exited())
            .await
            .unwrap();
        assert!(reason.to_string().contains("worker crashed"), "{reason}");
    }
    // The in-process kv never noticed.
    assert_eq!(call(&runtime, "kv", json!({"Get": "a"})).await, json!("1"));
    // Restarted, on the current release's code, in a fresh worker.
    let new_worker = pid_of(&runtime, "calm").await;
    assert_ne!(new_worker, old_worker);
    assert_eq!(worker_pid(&handler, "faulty"), Some(new_worker));
    assert!(handler.isolated_workers()[0].spawned >= 2);
    assert_eq!(version_of(&runtime, "calm").await, "0.4.0");
    assert!(
        eventually_blocking(PATIENCE, || gone(old_worker)),
        "the crashed worker is reaped"
    );
    assert_eq!(record(root.path()), record_before);

    // The rollback still works.
    handler.install(&version("1.0.0"), None).await.unwrap();
    assert_eq!(version_of(&runtime, "calm").await, "0.3.0");
    assert_eq!(version_of(&runtime, "victim").await, "0.3.0");
    assert_eq!(
        call(&runtime, "calm", json!({"Echo": "y"})).await,
        json!("y")
    );
    assert_eq!(handler.current_version().await, version("1.0.0"));
    handler.shutdown().await;
}

fn crash_releases(f1_args: &str) -> tempfile::TempDir {
    let children = [
        ("f1", "faulty", f1_args),
        ("f2", "faulty", "{}"),
        ("kv", "kv", "{}"),
    ];
    let faulty = "isolation = \"process\"\ncallback_timeout_ms = 60000\n";
    root_with(&[
        (
            "1.0.0",
            release(
                "1.0.0",
                &[entry(FAULTY_0_3, faulty), entry(KV_1_0, "")],
                &children,
                "",
            ),
        ),
        (
            "2.0.0",
            release(
                "2.0.0",
                &[entry(FAULTY_0_4, faulty), entry(KV_1_0, "")],
                &children,
                &script("1.0.0", &[("faulty", "suspend_timeout_ms = 30000\n")]),
            ),
        ),
    ])
}

/// After an install aborted by a worker's death: the release is unchanged, the worker's
/// actors answer again on the old code in a fresh worker, kv was untouched, the record is
/// as it was, and the dead worker is reaped.
/// Installs 2.0.0, kills the worker with SIGKILL once the install reports a phase that
/// `at` accepts, and checks the install aborts naming the crash.
async fn install_killing_the_worker_at(
    handler: &Arc<ReleaseHandler>,
    worker: u32,
    at: fn(&InstallPhase) -> bool,
) {
    let (reached, mut reached_now) = tokio::sync::mpsc::unbounded_channel();
    let progress: graft::release::handler::ProgressFn = Arc::new(move |phase| {
        if at(&phase) {
            let _ = reached.send(());
        }
    });
    let installing = {
        let handler = Arc::clone(handler);
        tokio::spawn(async move { handler.install(&version("2.0.0"), Some(progress)).await })
    };
    tokio::time::timeout(PATIENCE, reached_now.recv())
        .await
        .expect("the install reaches the phase")
        .unwrap();
    kill_9(worker);
    let error = tokio::time::timeout(PATIENCE, installing)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("upgrade aborted")
            && error.contains("worker crashed: killed by signal 9 (SIGKILL)"),
        "{error}"
    );
}

async fn check_after_crashed_install(
    root: &Path,
    runtime: &Runtime,
    handler: &ReleaseHandler,
    old_worker: u32,
    record_before: &str,
) {
    assert_eq!(handler.current_version().await, version("1.0.0"));
    for actor in ["f1", "f2"] {
        let pid = pid_of(runtime, actor).await;
        assert_ne!(pid, old_worker, "{actor} runs in a fresh worker");
        assert_eq!(version_of(runtime, actor).await, "0.3.0");
    }
    assert_eq!(call(runtime, "kv", json!({"Get": "a"})).await, json!("1"));
    assert_eq!(record(root), record_before);
    assert!(
        eventually_blocking(PATIENCE, || gone(old_worker)),
        "the dead worker is reaped"
    );
}

/// A `code_change` that aborts the worker during an install: the install aborts (the
/// error names the crash), every actor of the worker restarts on the old code in a fresh
/// worker, the in-process kv is untouched.
/// Survives: the host, the release (1.0.0 stays current), the record, kv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_change_that_aborts_the_worker_aborts_the_install() {
    let root = crash_releases("{ abort_in = [\"code_change\"] }");
    let (runtime, handler) = boot(root.path()).await;
    let record_before = record(root.path());
    call(&runtime, "kv", json!({"Put": {"key": "a", "value": "1"}})).await;
    let old_worker = worker_pid(&handler, "faulty").unwrap();

    let error = handler
        .install(&version("2.0.0"), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("upgrade aborted")
            && error.contains("worker crashed: killed by signal 6 (SIGABRT)"),
        "{error}"
    );
    check_after_crashed_install(root.path(), &runtime, &handler, old_worker, &record_before).await;
    handler.shutdown().await;
}

/// The worker is killed with SIGKILL while a `code_change` (3 s long) runs in it: the
/// install aborts naming the crash, and the worker's actors restart on the old code.
/// Survives: the host, the release (1.0.0 stays current), the record, kv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_an_install_aborts_it_and_its_actors_restart_on_the_old_code() {
    let root = crash_releases("{ hang_in = [\"code_change\"] }");
    let (runtime, handler) = boot(root.path()).await;
    let handler = Arc::new(handler);
    let record_before = record(root.path());
    call(&runtime, "kv", json!({"Put": {"key": "a", "value": "1"}})).await;
    let old_worker = worker_pid(&handler, "faulty").unwrap();

    // f1's code_change sleeps 3 s in the worker; kill the worker meanwhile (or, on a very
    // slow machine, right after: either way the worker dies inside the install window,
    // since the suspend timeout is 30 s and the hang keeps the migration going).
    install_killing_the_worker_at(&handler, old_worker, |phase| {
        matches!(phase, InstallPhase::Migrating(_))
    })
    .await;
    check_after_crashed_install(root.path(), &runtime, &handler, old_worker, &record_before).await;
    handler.shutdown().await;
}

/// The worker is killed with SIGKILL while the install waits for its actors to suspend
/// (f1 is in a 3 s `handle_call`): the actors exit rather than fail, so no migration
/// reports the crash — the install sees the worker's death itself and aborts, and the
/// actors restart on the old code.
/// Survives: the host, the release (1.0.0 stays current), the record, kv.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_its_actors_suspend_aborts_the_install() {
    let root = crash_releases("{ hang_in = [\"handle_call\"] }");
    let (runtime, handler) = boot(root.path()).await;
    let handler = Arc::new(handler);
    let record_before = record(root.path());
    call(&runtime, "kv", json!({"Put": {"key": "a", "value": "1"}})).await;
    let old_worker = worker_pid(&handler, "faulty").unwrap();

    // f1 is busy for 3 s; the suspend queues behind this call.
    let busy = {
        let runtime = runtime.clone();
        tokio::spawn(async move { try_call(&runtime, "f1", &json!({"Echo": "x"})).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    install_killing_the_worker_at(&handler, old_worker, |phase| {
        matches!(phase, InstallPhase::Suspending(_))
    })
    .await;
    let _ = busy.await;
    check_after_crashed_install(root.path(), &runtime, &handler, old_worker, &record_before).await;
    handler.shutdown().await;
}

/// `graft start` with an isolated kv: the binary finds itself as the worker program,
/// `graft call` reaches kv in its worker, `graft status` lists the worker with its pid,
/// and a host killed with SIGKILL takes the worker with it.
/// Survives: nothing of the host (that is the point); the worker does not outlive it.
#[test]
fn graft_start_runs_an_isolated_plugin_in_a_worker_that_dies_with_the_host() {
    let root = root_with(&[(
        "1.0.0",
        release(
            "1.0.0",
            &[entry(KV_1_0, PROCESS)],
            &[("kv", "kv", "{}")],
            "",
        ),
    )]);
    let root = root.path();
    let mut host = Host::start(root, &[]);

    let put = run_graft(
        root,
        &[
            "call",
            "kv",
            r#"{"Put":{"key":"a","value":"1"}}"#,
            "--timeout",
            "10000",
        ],
    );
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let get = run_graft(
        root,
        &["call", "kv", r#"{"Get":"a"}"#, "--timeout", "10000"],
    );
    assert!(
        get.status.success(),
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert!(String::from_utf8_lossy(&get.stdout).contains("\"1\""));

    let status = run_graft(root, &["status", "--json"]);
    assert!(status.status.success());
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let worker = &status["workers"][0];
    assert_eq!(worker["plugin"], "kv", "{status}");
    assert_eq!(worker["spawned"], 1, "{status}");
    let pid = worker["pid"].as_u64().unwrap() as u32;
    assert_ne!(pid, host.child.id());
    let command_line = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&command_line).contains("worker"),
        "pid {pid} is a graft worker"
    );
    let human = run_graft(root, &["status"]);
    assert!(
        String::from_utf8_lossy(&human.stdout)
            .contains(&format!("worker of kv: pid {pid}, started 1 time(s)")),
        "{}",
        String::from_utf8_lossy(&human.stdout)
    );

    host.signal("KILL");
    host.wait();
    assert!(
        eventually_blocking(PATIENCE, || gone(pid)),
        "the worker {pid} outlived its host"
    );
}
