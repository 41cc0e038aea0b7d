//! Releases end to end: the example releases under `releases/` assembled from the real
//! plugin crates, booted, upgraded 1.0.0 → 1.1.0 → 1.2.0 and downgraded back with state
//! kept at each step; an upgrade under load loses nothing; a failing migration or a busy
//! actor rolls everything back; a host killed before `make_permanent` boots the permanent
//! release; bad plans are refused with errors naming the manifest and field.

use graft::plugin::LoadError;
use graft::release::handler::{InstallPhase, ReleaseError, ReleaseHandler, ReleaseStatus};
use graft::release::plan::PlanError;
use graft::runtime::{ActorRef, CallError, Runtime};
use graft_plugin::codec;
use graft_tests::{
    boot, call_by_name as call, example_root, faulty_releases, version,
    version_of as status_version,
};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

fn encode(value: &Value) -> Vec<u8> {
    codec::encode(value).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_through_every_release_and_back_down_keeping_state() {
    let root = example_root();
    let (runtime, handler) = boot(root.path()).await;
    assert_eq!(handler.current_version().await, version("1.0.0"));
    let releases = handler.which_releases().await;
    let statuses: Vec<ReleaseStatus> = releases.iter().map(|release| release.status).collect();
    assert_eq!(
        statuses,
        vec![
            ReleaseStatus::Permanent,
            ReleaseStatus::Unpacked,
            ReleaseStatus::Unpacked
        ]
    );

    call(&runtime, "counter", json!({"Add": 40})).await;
    call(&runtime, "counter", json!({"Add": 2})).await;
    call(
        &runtime,
        "kv",
        json!({"Put": {"key": "colour", "value": "blue"}}),
    )
    .await;
    assert_eq!(
        call(&runtime, "kv", json!({"Get": "startup"})).await,
        json!("done"),
        "the startup task ran"
    );

    // 1.0.0 → 1.1.0: counter migrated by its code_change, kv swapped, tally added.
    let phases = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&phases);
    let report = handler
        .install(
            &version("1.1.0"),
            Some(Arc::new(move |phase| recorded.lock().unwrap().push(phase))),
        )
        .await
        .unwrap();
    assert_eq!(report.actors_migrated, 2, "counter and kv");
    assert!(phases.lock().unwrap().contains(&InstallPhase::Migrating(2)));
    assert_eq!(status_version(&runtime, "counter").await, "1.1.0");
    assert_eq!(status_version(&runtime, "kv").await, "1.1.0");
    assert_eq!(call(&runtime, "counter", json!("Get")).await, json!(42));
    call(&runtime, "counter", json!({"Add": 1})).await;
    assert_eq!(
        call(&runtime, "counter", json!("History")).await,
        json!([1])
    );
    assert_eq!(
        call(&runtime, "kv", json!({"Get": "colour"})).await,
        json!("blue")
    );
    assert_eq!(
        call(&runtime, "kv", json!({"Get": "release"})).await,
        json!("1.1.0"),
        "apply ran"
    );
    assert_eq!(
        call(&runtime, "tally", json!("Get")).await,
        json!(100),
        "the added child runs"
    );
    assert_eq!(handler.current_version().await, version("1.1.0"));
    let statuses: Vec<ReleaseStatus> = handler
        .which_releases()
        .await
        .iter()
        .map(|release| release.status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            ReleaseStatus::Permanent,
            ReleaseStatus::Current,
            ReleaseStatus::Unpacked
        ]
    );

    // The old versions are unloaded once no actor uses them.
    let (resident, _) = handler.resident().await;
    let versions: Vec<(String, String)> = resident
        .iter()
        .map(|library| (library.plugin.clone(), library.version.clone()))
        .collect();
    assert!(versions.contains(&("counter".to_owned(), "1.1.0".to_owned())));
    assert!(
        !versions.contains(&("counter".to_owned(), "1.0.0".to_owned())),
        "{versions:?}"
    );

    // 1.1.0 → 1.2.0: the characters become one_for_all, the calculator goes.
    let before = runtime.whereis("hulk").unwrap();
    handler.install(&version("1.2.0"), None).await.unwrap();
    assert!(runtime.whereis("calculator").is_none());
    let storm = runtime.whereis("storm").unwrap();
    let _ = storm.call(encode(&json!("Crash")), SECOND).await;
    let restarted_hulk = wait_for_new(&runtime, "hulk", &before).await;
    assert!(
        restarted_hulk.is_alive(),
        "one_for_all restarted the first character too"
    );
    assert_eq!(call(&runtime, "counter", json!("Get")).await, json!(43));

    // 1.2.0 → 1.1.0 → 1.0.0, state kept at each step.
    handler.install(&version("1.1.0"), None).await.unwrap();
    assert_eq!(
        call(&runtime, "calculator", json!({"Add": 3})).await,
        json!(3),
        "the calculator is back"
    );
    assert_eq!(
        call(&runtime, "counter", json!("History")).await,
        json!([1])
    );
    handler.install(&version("1.0.0"), None).await.unwrap();
    assert_eq!(status_version(&runtime, "counter").await, "1.0.0");
    assert_eq!(
        call(&runtime, "counter", json!("Get")).await,
        json!(43),
        "1.1.0 converted its state down"
    );
    let error = runtime
        .call("counter", encode(&json!("History")), SECOND)
        .await
        .unwrap_err();
    assert!(
        matches!(error, CallError::BadRequest { .. }),
        "1.0.0 has no History: {error}"
    );
    assert!(
        runtime.whereis("tally").is_none(),
        "the added child was removed"
    );
    assert_eq!(
        call(&runtime, "kv", json!({"Get": "colour"})).await,
        json!("blue")
    );
    assert_eq!(
        call(&runtime, "kv", json!({"Get": "release"})).await,
        json!("1.0.0")
    );

    let error = handler.install(&version("1.0.0"), None).await.unwrap_err();
    assert!(matches!(error, ReleaseError::AlreadyCurrent(_)), "{error}");
    let error = handler.install(&version("1.2.0"), None).await.unwrap_err();
    assert!(
        matches!(
            &error,
            ReleaseError::Plan(PlanError::NoPath {
                direction: "upgrade",
                ..
            })
        ),
        "no script leads from 1.0.0 to 1.2.0: {error}"
    );
    assert!(error.to_string().contains("~1.1"), "{error}");
    handler.shutdown().await;
}

async fn wait_for_new(runtime: &Runtime, name: &str, old: &ActorRef) -> ActorRef {
    for _ in 0..400 {
        if let Some(actor) = runtime.whereis(name).filter(|actor| actor != old) {
            return actor;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{name} was not restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_permanent_remove_and_boot_follow_the_release_record() {
    let root = example_root();
    let (_runtime, handler) = boot(root.path()).await;
    handler.install(&version("1.1.0"), None).await.unwrap();

    let error = handler.make_permanent(&version("1.2.0")).await.unwrap_err();
    assert!(
        matches!(
            error,
            ReleaseError::BadStatus {
                status: ReleaseStatus::Unpacked,
                ..
            }
        ),
        "{error}"
    );
    let error = handler.remove(&version("1.1.0")).await.unwrap_err();
    assert!(
        matches!(
            error,
            ReleaseError::InUse {
                status: "current",
                ..
            }
        ),
        "{error}"
    );
    let error = handler.remove(&version("1.0.0")).await.unwrap_err();
    assert!(
        matches!(
            error,
            ReleaseError::InUse {
                status: "permanent",
                ..
            }
        ),
        "{error}"
    );

    handler.make_permanent(&version("1.1.0")).await.unwrap();
    let statuses: Vec<ReleaseStatus> = handler
        .which_releases()
        .await
        .iter()
        .map(|release| release.status)
        .collect();
    assert_eq!(
        statuses,
        vec![
            ReleaseStatus::Old,
            ReleaseStatus::Permanent,
            ReleaseStatus::Unpacked
        ]
    );
    handler.remove(&version("1.2.0")).await.unwrap();
    assert_eq!(handler.which_releases().await.len(), 2);
    assert_eq!(
        handler.shutdown().await,
        graft_plugin::StopReason::Shutdown(None)
    );

    // A restart boots the permanent release.
    let runtime = Runtime::new();
    let rebooted = ReleaseHandler::boot(root.path(), runtime.clone())
        .await
        .unwrap();
    assert_eq!(rebooted.current_version().await, version("1.1.0"));
    assert_eq!(status_version(&runtime, "counter").await, "1.1.0");
    rebooted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_loses_nothing_and_keeps_per_sender_order() {
    let root = example_root();
    let (runtime, handler) = boot(root.path()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (runtime, stop) = (runtime.clone(), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || sent < 50 {
                sent += 1;
                // A numbered cast, then a call whose reply proves the order: the previous
                // value of this client's key is the previous number.
                let cast = json!({"Put": {"key": format!("cast-{client}-{sent}"), "value": sent.to_string()}});
                runtime.cast("kv", encode(&cast)).unwrap();
                let put = json!({"Put": {"key": format!("client-{client}"), "value": sent.to_string()}});
                let reply = runtime.call("kv", encode(&put), Duration::from_secs(5)).await.unwrap();
                let previous: Option<String> = codec::decode(&reply).unwrap();
                let expected = (sent > 1).then(|| (sent - 1).to_string());
                assert_eq!(previous, expected, "client {client}: a message was lost or reordered");
            }
            sent
        }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    handler.install(&version("1.1.0"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        total += client.await.unwrap();
    }
    // Every cast arrived exactly once: keys cast-* plus client-*, startup and release.
    let keys: Vec<String> = codec::decode(
        &runtime
            .call("kv", encode(&json!("Keys")), SECOND)
            .await
            .unwrap(),
    )
    .unwrap();
    let casts = keys.iter().filter(|key| key.starts_with("cast-")).count() as u64;
    assert_eq!(casts, total, "every numbered cast was handled");
    assert_eq!(status_version(&runtime, "kv").await, "1.1.0");
    handler.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Releases written by the tests: the faulty fixture in many actors.

const UPGRADE_FAULTY: &str = "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\nplugin = \"faulty\"\nsuspend_timeout_ms = 200\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_change_failing_on_the_57th_of_100_actors_leaves_all_on_the_old_version() {
    let root = faulty_releases(
        100,
        |index| {
            if index == 57 {
                "{ panic_in = [\"code_change\"] }"
            } else {
                "{}"
            }
        },
        UPGRADE_FAULTY,
    );
    let (runtime, handler) = boot(root.path()).await;
    for index in 1..=100 {
        call(&runtime, &format!("f{index}"), json!({"Echo": "x"})).await;
    }
    let error = handler.install(&version("2.0.0"), None).await.unwrap_err();
    let ReleaseError::Migration {
        actor,
        plugin,
        reason,
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!((actor.as_str(), plugin.as_str()), ("f57", "faulty"));
    assert!(
        reason.contains("code_change panicked") && reason.contains("on purpose"),
        "{reason}"
    );
    assert_eq!(handler.current_version().await, version("1.0.0"));
    for index in 1..=100 {
        let name = format!("f{index}");
        assert_eq!(
            status_version(&runtime, &name).await,
            "0.3.0",
            "{name} is on its old code"
        );
        assert_eq!(
            call(&runtime, &name, json!("Handled")).await,
            json!("2"),
            "{name} kept its state"
        );
    }
    // The new version was never adopted, so it is unloaded again.
    let (resident, _) = handler.resident().await;
    assert!(
        resident.iter().all(|library| library.version == "0.3.0"),
        "{resident:?}"
    );
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_actor_makes_the_upgrade_time_out_cleanly() {
    let root = faulty_releases(5, |_| "{}", UPGRADE_FAULTY);
    let (runtime, handler) = boot(root.path()).await;
    let busy = runtime.whereis("f3").unwrap();
    let mut sleeping = Box::pin(async move {
        busy.call(
            encode(&json!({"Sleep": {"ms": 1500}})),
            Duration::from_secs(5),
        )
        .await
    });
    // Poll the call once so its request is in the mailbox, then let it run on its own.
    tokio::select! {
        biased;
        _ = &mut sleeping => panic!("the sleep cannot be over yet"),
        _ = std::future::ready(()) => {}
    }
    let sleeping = tokio::spawn(sleeping);
    // Busy means: a system request gets no answer, because a callback is running.
    let f3 = runtime.whereis("f3").unwrap();
    let mut busy = false;
    for _ in 0..100 {
        if f3.status(Duration::from_millis(20)).await.is_err() {
            busy = true;
            break;
        }
    }
    assert!(busy, "f3 is inside its long callback");
    let started = std::time::Instant::now();
    let error = handler.install(&version("2.0.0"), None).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "aborted at the suspend timeout, not after the callback"
    );
    assert!(
        matches!(&error, ReleaseError::Suspend { actor, plugin, .. } if actor == "f3" && plugin == "faulty"),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("did not answer suspend within 200ms"),
        "{error}"
    );
    for index in [1, 2, 4, 5] {
        let name = format!("f{index}");
        assert_eq!(
            call(&runtime, &name, json!({"Echo": "up"})).await,
            json!("up"),
            "{name} was resumed"
        );
        assert_eq!(status_version(&runtime, &name).await, "0.3.0");
    }
    assert_eq!(
        sleeping.await.unwrap().unwrap(),
        codec::encode("1").unwrap()
    );
    // The late suspend was undone by the defensive resume.
    assert_eq!(
        call(&runtime, "f3", json!({"Echo": "back"})).await,
        json!("back")
    );
    assert_eq!(status_version(&runtime, "f3").await, "0.3.0");
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plans_are_refused_before_anything_runs() {
    let cases: [(&str, &str); 4] = [
        (
            "\n[[upgrade]]\nfrom = \"1.0.0\"\n[[upgrade.instructions]]\nop = \"update\"\nplugin = \"nosuch\"\n",
            "unknown plugin \"nosuch\"",
        ),
        (
            "\n[[upgrade]]\nfrom = \"1.0.0\"\n[[upgrade.instructions]]\nop = \"update\"\nplugin = \"faulty\"\n[[upgrade.instructions]]\nop = \"add_child\"\nsupervisor = \"root\"\nid = \"ghost\"\n",
            "unknown child \"ghost\"",
        ),
        (
            "\n[[upgrade]]\nfrom = \"1.0.0\"\n",
            "has no `update` for it",
        ),
        (
            "\n[[upgrade]]\nfrom = \"0.9\"\n",
            "no upgrade path from 1.0.0 to 2.0.0",
        ),
    ];
    for (script, expected) in cases {
        let root = faulty_releases(2, |_| "{}", script);
        let (runtime, handler) = boot(root.path()).await;
        let error = handler.install(&version("2.0.0"), None).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains(expected), "expected {expected:?} in: {text}");
        assert!(
            text.contains("release.toml"),
            "the error names the manifest: {text}"
        );
        assert_eq!(status_version(&runtime, "f1").await, "0.3.0");
        handler.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_a_plugin_whose_version_does_not_change_is_refused() {
    let root = example_root();
    // Claim 1.2.0 updates calculator, which is 1.0.0 in both 1.1.0 and 1.2.0.
    let manifest = root.path().join("releases/1.2.0/release.toml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "[[upgrade.instructions]]\nop = \"update_supervisor\"",
        "[[upgrade.instructions]]\nop = \"update\"\nplugin = \"calculator\"\n\n[[upgrade.instructions]]\nop = \"update_supervisor\"",
    );
    std::fs::write(&manifest, text).unwrap();
    let (_runtime, handler) = boot(root.path()).await;
    handler.install(&version("1.1.0"), None).await.unwrap();
    let error = handler.install(&version("1.2.0"), None).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("1.2.0/release.toml") && text.contains("instructions[0].plugin"),
        "{text}"
    );
    assert!(
        text.contains("\"calculator\" is 1.0.0 in both releases"),
        "{text}"
    );
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_swapped_or_mislabelled_after_assembly_is_refused() {
    let root = example_root();
    let (runtime, handler) = boot(root.path()).await;

    // Swapped on disk: the digest no longer matches.
    let library = root.path().join("releases/1.1.0/lib/counter-1.1.0.so");
    let mut bytes = std::fs::read(&library).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&library, &bytes).unwrap();
    let error = handler.install(&version("1.1.0"), None).await.unwrap_err();
    assert!(
        matches!(&error, ReleaseError::Load { plugin, source, .. }
            if plugin == "counter" && matches!(**source, LoadError::DigestMismatch { .. })),
        "{error}"
    );
    assert_eq!(status_version(&runtime, "counter").await, "1.0.0");

    // Mislabelled: the manifest says the kv library is the counter plugin.
    let manifest = root.path().join("releases/1.2.0/release.toml");
    let release = graft::release::Manifest::read(&manifest).unwrap();
    let mut tampered = release.clone();
    let kv = release.plugins["kv"].clone();
    tampered.plugins.get_mut("counter").unwrap().library = kv.library;
    tampered.plugins.get_mut("counter").unwrap().sha256 = kv.sha256;
    std::fs::write(&manifest, tampered.to_toml()).unwrap();
    // (1.2.0 is unreachable from 1.0.0 anyway; load errors come after the path check, so
    // go through 1.1.0 — repaired — first.)
    bytes[last] ^= 0xff;
    std::fs::write(&library, &bytes).unwrap();
    handler.install(&version("1.1.0"), None).await.unwrap();
    let error = handler.install(&version("1.2.0"), None).await.unwrap_err();
    assert!(
        matches!(&error, ReleaseError::Load { source, .. } if matches!(**source, LoadError::NameMismatch { .. })),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("is named \"kv\", expected \"counter\""),
        "{error}"
    );
    handler.shutdown().await;
}

/// Not a test on its own: the host process that `a_host_killed_before_make_permanent_…`
/// starts and kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by a_host_killed_before_make_permanent_boots_the_permanent_release"]
async fn host_process_for_the_kill_test() {
    let Ok(root) = std::env::var("GRAFT_KILL_TEST_ROOT") else {
        return;
    };
    let runtime = Runtime::new();
    let handler = ReleaseHandler::boot(Path::new(&root), runtime.clone())
        .await
        .unwrap();
    call(&runtime, "counter", json!({"Add": 7})).await;
    handler.install(&version("1.1.0"), None).await.unwrap();
    println!("installed");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_before_make_permanent_boots_the_permanent_release() {
    use std::io::BufRead;
    let root = example_root();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "host_process_for_the_kill_test",
            "--nocapture",
        ])
        .env("GRAFT_KILL_TEST_ROOT", root.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let installed = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("installed"))
    })
    .await
    .unwrap();
    assert!(installed, "the child host installed 1.1.0");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (runtime, handler) = boot(root.path()).await;
    assert_eq!(handler.current_version().await, version("1.0.0"));
    assert_eq!(status_version(&runtime, "counter").await, "1.0.0");
    let statuses: Vec<ReleaseStatus> = handler
        .which_releases()
        .await
        .iter()
        .map(|release| release.status)
        .collect();
    assert_eq!(
        statuses[..2],
        [ReleaseStatus::Permanent, ReleaseStatus::Unpacked]
    );
    let record = std::fs::read_to_string(root.path().join("releases/RELEASES.json")).unwrap();
    assert!(
        record.contains("\"permanent\": \"1.0.0\""),
        "the record is whole: {record}"
    );
    handler.shutdown().await;
}
