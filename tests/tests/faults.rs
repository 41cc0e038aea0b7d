//! The fault matrix: each test names what it injects and asserts what survives. Panics and
//! errors in callbacks during upgrades, a `code_change` that does not return, an actor that
//! dies mid-upgrade, a second install while one runs, replies over the cap, migrated states
//! of half a GiB (committed, rolled back) and over the 1 GiB state cap (refused before the
//! commit), a terminate that panics, and the host killed with SIGKILL at each phase of an install and during
//! `make_permanent`. (Bad libraries, bad manifests and the control socket have their rows
//! in `loader.rs`, `releases.rs`, `cli.rs` and the unit tests of `graft::release`.)

use graft::plugin::MAX_STATE_BYTES;
use graft::release::handler::{
    InstallPhase, InstallReport, RECORD_FILE, ReleaseError, ReleaseHandler, ReleaseStatus,
};
use graft::runtime::{CallError, Runtime};
use graft_plugin::codec;
use graft_tests::{boot, call_by_name as call, example_root, faulty_releases, version, version_of};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECOND: Duration = Duration::from_secs(1);

/// Start arguments: `special` for the actor `f{index}`, `{}` for the others.
fn only(index: usize, special: &'static str) -> impl Fn(usize) -> &'static str {
    move |candidate| if candidate == index { special } else { "{}" }
}

const UPGRADE: &str = "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\nplugin = \"faulty\"\nsuspend_timeout_ms = 300\n\n[[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\nop = \"update\"\nplugin = \"faulty\"\nsuspend_timeout_ms = 300\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_a_panic_in_the_downgrade_conversion_the_downgrade_aborts() {
    let root = faulty_releases(3, only(2, "{ panic_in = [\"downgrade\"] }"), UPGRADE);
    let (runtime, handler) = boot(root.path()).await;
    handler.install(&version("2.0.0"), None).await.unwrap();
    assert_eq!(version_of(&runtime, "f2").await, "0.4.0");
    let error = handler.install(&version("1.0.0"), None).await.unwrap_err();
    assert!(
        matches!(&error, ReleaseError::Migration { actor, reason, .. } if actor == "f2" && reason.contains("downgrade panicked")),
        "{error}"
    );
    for name in ["f1", "f2", "f3"] {
        assert_eq!(
            version_of(&runtime, name).await,
            "0.4.0",
            "{name} stays on the newer code"
        );
        assert_eq!(call(&runtime, name, json!("Handled")).await, json!("1"));
    }
    assert_eq!(handler.current_version().await, version("2.0.0"));
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_a_code_change_that_does_not_return_the_upgrade_aborts_at_its_deadline() {
    let root = faulty_releases(4, only(3, "{ hang_in = [\"code_change\"] }"), UPGRADE);
    let (runtime, handler) = boot(root.path()).await;
    let error = handler.install(&version("2.0.0"), None).await.unwrap_err();
    // Aborted at its 300 ms deadline, not after the 3 s the code_change takes: the error
    // says the actor did not answer (had it waited, the migration would have succeeded).
    // No bound on the elapsed time: on a loaded machine it proves nothing.
    assert!(
        matches!(&error, ReleaseError::Migration { actor, reason, .. } if actor == "f3" && reason.contains("did not answer change_code")),
        "{error}"
    );
    for name in ["f1", "f2", "f4"] {
        assert_eq!(
            version_of(&runtime, name).await,
            "0.3.0",
            "{name} is back on its old code"
        );
        assert_eq!(
            call(&runtime, name, json!({"Echo": "ok"})).await,
            json!("ok")
        );
    }
    // The stuck one finishes its migration later; the restoration queued behind it puts it
    // back on the old code with its old state.
    let f3 = runtime.whereis("f3").unwrap();
    let reply = f3
        .call(
            codec::encode(&json!("Handled")).unwrap(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(codec::decode::<String>(&reply).unwrap(), "1");
    assert_eq!(version_of(&runtime, "f3").await, "0.3.0");
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_a_second_install_while_one_runs_it_is_refused() {
    let root = faulty_releases(2, only(1, "{ hang_in = [\"code_change\"] }"), UPGRADE);
    let runtime = Runtime::new();
    let handler = Arc::new(
        ReleaseHandler::boot(root.path(), runtime.clone())
            .await
            .unwrap(),
    );
    let (started, mut migrating) = tokio::sync::mpsc::unbounded_channel();
    let first = {
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let progress = Arc::new(move |phase: InstallPhase| {
                if matches!(phase, InstallPhase::Migrating(_)) {
                    let _ = started.send(());
                }
            });
            handler.install(&version("2.0.0"), Some(progress)).await
        })
    };
    migrating.recv().await.unwrap();
    let error = handler.install(&version("2.0.0"), None).await.unwrap_err();
    assert!(matches!(error, ReleaseError::InstallInProgress), "{error}");
    assert!(
        first.await.unwrap().is_err(),
        "the first one hits its deadline"
    );
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_an_actor_exit_between_suspend_and_change_code_the_upgrade_goes_on() {
    // The example releases: the root supervisor tolerates 5 restarts in 10 s.
    let root = example_root();
    let (runtime, handler) = boot(root.path()).await;
    call(&runtime, "counter", json!({"Add": 3})).await;
    let victim = runtime.whereis("counter").unwrap();
    let killer = victim.clone();
    let progress = Arc::new(move |phase: InstallPhase| {
        if matches!(phase, InstallPhase::Migrating(_)) {
            killer.kill();
        }
    });
    let report = handler
        .install(&version("1.1.0"), Some(progress))
        .await
        .unwrap();
    assert_eq!(handler.current_version().await, version("1.1.0"));
    assert!(!victim.is_alive());
    // Restarted by its supervisor and moved to the new code after the commit.
    let mut restarted_version = String::new();
    for _ in 0..200 {
        if let Some(counter) = runtime.whereis("counter")
            && counter != victim
            && let Ok(status) = counter.status(SECOND).await
        {
            restarted_version = status.version.unwrap_or_default();
            if restarted_version == "1.1.0" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(restarted_version, "1.1.0", "report: {report:?}");
    assert_eq!(version_of(&runtime, "kv").await, "1.1.0");
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_a_reply_over_the_cap_the_actor_crashes_and_the_host_runs_on() {
    let root = faulty_releases(1, |_| "{}", UPGRADE);
    let (runtime, handler) = boot(root.path()).await;
    let f1 = runtime.whereis("f1").unwrap();
    let error = f1
        .call(
            codec::encode(&json!({"Big": 17 * 1024 * 1024})).unwrap(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&error, CallError::Exited { reason, .. } if reason.to_string().contains("exceeds the cap of 16777216 bytes")),
        "{error}"
    );
    // A reply under the cap is fine (on the restarted actor, if any; here intensity 0 took
    // the root down, so check on a fresh host).
    handler.shutdown().await;
    let (runtime, handler) = boot(root.path()).await;
    let reply = call(&runtime, "f1", json!({"Big": 1024})).await;
    assert_eq!(reply.as_str().unwrap().len(), 1024);
    handler.shutdown().await;
}

/// How far the half-GiB row grows the migrated state, in MiB.
const GROWN_MB: usize = 500;

/// `suspend_timeout_ms` and `callback_timeout_ms` of the state-cap rows: moving a GiB of
/// state through an unoptimised plugin takes seconds, more on a loaded machine.
const SLOW_MS: u64 = 120_000;

/// Writes and assembles, under a fresh root, release 1.0.0 (faulty 0.3.0 as the actor `big`,
/// counter 1.0.0 as the bystander `counter`) and, per `(version, extra)`, a release with
/// faulty 0.4.0 whose upgrade from 1.0.0 passes `extra` to `code_change` and whose
/// downgrade goes back to 1.0.0. The root tolerates no restart: a crash takes the tree down.
fn state_cap_releases(targets: &[(&str, &str)]) -> tempfile::TempDir {
    let update = |extra: &str| {
        format!("op = \"update\"\nplugin = \"faulty\"\nsuspend_timeout_ms = {SLOW_MS}\n{extra}\n")
    };
    let mut releases = vec![("1.0.0", "0.3.0", "tests/fixtures/faulty", String::new())];
    for (release, extra) in targets {
        let script = format!(
            "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\n{}\n[[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\n{}",
            update(extra),
            update("")
        );
        releases.push((release, "0.4.0", "tests/fixtures/faulty-v2", script));
    }
    let texts: Vec<(&str, String)> = releases
        .into_iter()
        .map(|(release, faulty_version, crate_path, script)| {
            let text = format!(
            "[release]\nname = \"state-cap\"\nversion = \"{release}\"\n\n\
             [plugins.faulty]\nversion = \"{faulty_version}\"\ncrate = \"{crate_path}\"\ncallback_timeout_ms = {SLOW_MS}\n\n\
             [plugins.counter]\nversion = \"1.0.0\"\ncrate = \"plugins/counter/1.0.0\"\n\n\
             [supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 0\n\n\
             [[supervisor.children]]\nid = \"big\"\nplugin = \"faulty\"\nargs = {{}}\n\n\
             [[supervisor.children]]\nid = \"counter\"\nplugin = \"counter\"\nargs = {{ start = 40 }}\n{script}"
        );
            (release, text)
        })
        .collect();
    graft_tests::assembled_root(&texts)
}

/// The release record's bytes.
fn record_bytes(root: &Path) -> Vec<u8> {
    std::fs::read(root.join("releases").join(RECORD_FILE)).unwrap()
}

/// Boots a state-cap root; `big` and the bystander `counter` answer. The record's bytes
/// as booted.
async fn boot_answering(root: &Path) -> (Runtime, Arc<ReleaseHandler>, Vec<u8>) {
    let (runtime, handler) = boot(root).await;
    let record = record_bytes(root);
    assert_eq!(
        call_slowly(&runtime, "big", json!({"Echo": "before"})).await,
        json!("before")
    );
    assert_eq!(
        call_slowly(&runtime, "counter", json!({"Add": 2})).await,
        json!(42)
    );
    (runtime, Arc::new(handler), record)
}

/// Calls `actor` under a generous deadline (a loaded machine, a GiB moving next door).
async fn call_slowly(runtime: &Runtime, actor: &str, request: Value) -> Value {
    let reply = runtime
        .call(
            actor,
            codec::encode(&request).unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|error| panic!("call {actor} {request}: {error}"));
    codec::decode(&reply).unwrap()
}

/// The plugin version `actor` runs, asked under a generous deadline.
async fn version_slowly(runtime: &Runtime, actor: &str) -> String {
    let actor = runtime
        .whereis(actor)
        .unwrap_or_else(|| panic!("no actor {actor}"));
    let status = actor.status(Duration::from_secs(60)).await.unwrap();
    status.version.unwrap_or_default()
}

/// Installs `target` in a task and calls the bystander `counter` until it is done: it
/// answers, with its count of 42, all along.
async fn install_while_calling(
    handler: &Arc<ReleaseHandler>,
    runtime: &Runtime,
    target: &str,
) -> Result<InstallReport, ReleaseError> {
    let started = Instant::now();
    let installing = {
        let handler = Arc::clone(handler);
        let target = version(target);
        tokio::spawn(async move { handler.install(&target, None).await })
    };
    let mut answered = 0;
    while !installing.is_finished() {
        assert_eq!(
            call_slowly(runtime, "counter", json!("Get")).await,
            json!(42)
        );
        answered += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let result = installing.await.unwrap();
    eprintln!(
        "install {target}: {:?}, the bystander answered {answered} calls meanwhile",
        started.elapsed()
    );
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_a_migrated_state_of_half_a_gib_the_upgrade_commits_and_rolls_back() {
    // Injected: a `code_change` that grows the state to 500 MiB (under the 1 GiB state cap,
    // far over the 16 MiB reply cap). Survives: the host process; the bystander `counter`,
    // answering all along; the release record, untouched; the ability to roll back: the
    // downgrade carries the whole state back to 0.3.0.
    let root = state_cap_releases(&[("2.0.0", "extra = { grow_state_mb = 500 }")]);
    let (runtime, handler, record) = boot_answering(root.path()).await;
    let grown = json!((GROWN_MB << 20).to_string());

    install_while_calling(&handler, &runtime, "2.0.0")
        .await
        .unwrap();
    assert_eq!(version_slowly(&runtime, "big").await, "0.4.0");
    assert_eq!(call_slowly(&runtime, "big", json!("Grown")).await, grown);

    install_while_calling(&handler, &runtime, "1.0.0")
        .await
        .unwrap();
    assert_eq!(handler.current_version().await, version("1.0.0"));
    assert_eq!(version_slowly(&runtime, "big").await, "0.3.0");
    assert_eq!(call_slowly(&runtime, "big", json!("Grown")).await, grown);
    // Echo, Grown, Grown and this one: the count came down with the state.
    assert_eq!(
        call_slowly(&runtime, "big", json!("Handled")).await,
        json!("4")
    );
    assert_eq!(
        call_slowly(&runtime, "counter", json!("Get")).await,
        json!(42)
    );
    assert_eq!(record_bytes(root.path()), record);
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_a_migrated_state_over_the_state_cap_the_install_is_refused_before_its_commit() {
    // Injected: a `code_change` that grows the state to 1025 MiB, just over the 1 GiB state
    // cap, so no downgrade or restore could carry it back. Survives: the host process; the
    // bystander `counter`, answering all along; the release record, byte for byte; `big`,
    // on its old code with its old state; the ability to upgrade and roll back: a later
    // valid release installs, and rolls back.
    let over = (MAX_STATE_BYTES >> 20) + 1;
    let extra = format!("extra = {{ grow_state_mb = {over} }}");
    let root = state_cap_releases(&[("2.0.0", &extra), ("3.0.0", "")]);
    let (runtime, handler, record) = boot_answering(root.path()).await;

    let error = install_while_calling(&handler, &runtime, "2.0.0")
        .await
        .unwrap_err();
    eprintln!("refused: {error}");
    let ReleaseError::NoWayBack {
        actor, size, cap, ..
    } = &error
    else {
        panic!("expected a refusal before the commit, got: {error}");
    };
    assert_eq!((actor.as_str(), *cap), ("big", MAX_STATE_BYTES));
    assert!(
        (over << 20..(over << 20) + 4096).contains(size),
        "the size of the encoded state: {error}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "install refused before its commit: actor big: the migrated state is {size} bytes, over the 1073741824-byte cap a rollback could carry"
        )
    );
    assert_eq!(record_bytes(root.path()), record);
    assert_eq!(handler.current_version().await, version("1.0.0"));
    let refused = handler
        .which_releases()
        .await
        .into_iter()
        .find(|release| release.version == version("2.0.0"))
        .unwrap();
    assert_eq!(refused.status, ReleaseStatus::Unpacked);
    assert_eq!(version_slowly(&runtime, "big").await, "0.3.0");
    assert_eq!(
        call_slowly(&runtime, "big", json!("Grown")).await,
        json!("0")
    );
    // Echo, Grown and this one: the old state, as it was.
    assert_eq!(
        call_slowly(&runtime, "big", json!("Handled")).await,
        json!("3")
    );

    // A later valid release installs, and rolls back; the state goes on.
    for (release, code, handled) in [("3.0.0", "0.4.0", "4"), ("1.0.0", "0.3.0", "5")] {
        install_while_calling(&handler, &runtime, release)
            .await
            .unwrap();
        assert_eq!(version_slowly(&runtime, "big").await, code);
        assert_eq!(
            call_slowly(&runtime, "big", json!("Handled")).await,
            json!(handled)
        );
    }
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_a_panic_in_terminate_the_stop_completes_with_the_reason() {
    let root = faulty_releases(2, only(1, "{ panic_in = [\"terminate\"] }"), UPGRADE);
    let (runtime, handler) = boot(root.path()).await;
    let f1 = runtime.whereis("f1").unwrap();
    let f2 = runtime.whereis("f2").unwrap();
    assert_eq!(
        handler.shutdown().await,
        graft_plugin::StopReason::Shutdown(None)
    );
    // OTP: a crash in `terminate` is the exit reason; the supervisor still shuts down.
    let f1_reason = f1.exit_reason().unwrap().to_string();
    assert!(
        f1_reason.contains("terminate panicked: faulty panics in terminate on purpose"),
        "{f1_reason}"
    );
    assert_eq!(
        f2.exit_reason(),
        Some(graft_plugin::StopReason::Shutdown(None))
    );
}

/// Not a test on its own: the host process the SIGKILL rows start and kill. It prints each
/// phase of its installs as it reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by injected_sigkill_at_each_phase_the_restart_boots_a_consistent_release"]
async fn host_process_for_the_sigkill_rows() {
    use std::io::Write;
    let Ok(root) = std::env::var("GRAFT_FAULT_ROOT") else {
        return;
    };
    let runtime = Runtime::new();
    let handler = ReleaseHandler::boot(Path::new(&root), runtime.clone())
        .await
        .unwrap();
    let print = |line: String| {
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    };
    let progress = Arc::new(move |phase: InstallPhase| print(format!("{phase:?}")));
    loop {
        handler
            .install(&version("1.1.0"), Some(progress.clone()))
            .await
            .unwrap();
        println!("committed");
        handler.make_permanent(&version("1.1.0")).await.unwrap();
        println!("permanent 1.1.0");
        handler
            .install(&version("1.0.0"), Some(progress.clone()))
            .await
            .unwrap();
        handler.make_permanent(&version("1.0.0")).await.unwrap();
        println!("permanent 1.0.0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_sigkill_at_each_phase_the_restart_boots_a_consistent_release() {
    use std::io::BufRead;
    for (phase, skip) in [
        ("Loading", 0),
        ("Suspending", 0),
        ("committed", 0),
        ("permanent 1.1.0", 0),
        ("Migrating", 3),
        ("permanent 1.0.0", 2),
    ] {
        let root = example_root();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "host_process_for_the_sigkill_rows",
                "--nocapture",
            ])
            .env("GRAFT_FAULT_ROOT", root.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let wanted = phase.to_owned();
        let reached = tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter(|line| line.starts_with(&wanted))
                .nth(skip)
                .is_some()
        })
        .await
        .unwrap();
        assert!(reached, "the child reached {phase}");
        child.kill().unwrap();
        child.wait().unwrap();

        let record_path = root.path().join("releases/RELEASES.json");
        let record: Value = serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap())
            .unwrap_or_else(|error| panic!("killed at {phase}: the record is torn: {error}"));
        let permanent = record["permanent"].as_str().unwrap().to_owned();
        assert!(["1.0.0", "1.1.0"].contains(&permanent.as_str()), "{record}");
        let (runtime, handler) = boot(root.path()).await;
        assert_eq!(
            handler.current_version().await.to_string(),
            permanent,
            "killed at {phase}"
        );
        assert_eq!(
            version_of(&runtime, "counter").await,
            permanent,
            "killed at {phase}"
        );
        handler.shutdown().await;
    }
}
