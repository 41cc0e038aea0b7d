//! Fleets on a real `nats-server -js` (see `graft_tests::nats`): real `graft start
//! --fleet` hosts, each with its own root, and the `graft fleet` commands against them.
//!
//! Every test starts its own server on a free loopback port with its own store, so tests
//! run in parallel without seeing each other; servers and hosts are killed on drop. Waits
//! are polls with generous deadlines (a loaded 2-core machine), never sleeps.

use graft_tests::fleet::{
    CanaryInWindow, DEADLINE, await_hosts, fleet_of, fleet_status, root_with_only_1_0_0,
};
use graft_tests::nats::NatsServer;
use graft_tests::{
    Host, Traffic, built_root, eventually_blocking, run_graft, stderr_text, stdout_text,
    succeed_graft,
};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The hosts' (name, group, current release) in a status document.
fn hosts_of(status: &Value) -> Vec<(String, String, String)> {
    status["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .map(|host| {
                    (
                        host["host"].as_str().unwrap_or_default().to_owned(),
                        host["group"].as_str().unwrap_or_default().to_owned(),
                        host["current"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn hosts_join_report_their_release_and_expire_when_killed() {
    let server = NatsServer::start_with_token(Some("s3cret-token"));
    let url = server.url();
    let first_root = built_root();
    let second_root = built_root();
    let join = |name: &'static str| {
        [
            "--fleet",
            url.as_str(),
            "--group",
            "web",
            "--host-name",
            name,
            "--fleet-token",
            "s3cret-token",
        ]
    };
    let first = Host::start(first_root.path(), &join("alpha"));
    let mut second = Host::start(second_root.path(), &join("beta"));
    let token = ["--token", "s3cret-token"];

    let mut last = Value::Null;
    let both = eventually_blocking(DEADLINE, || {
        let Some(status) = fleet_status(first_root.path(), &server, &token) else {
            return false;
        };
        last = status;
        hosts_of(&last)
            == vec![
                ("alpha".into(), "web".into(), "1.0.0".into()),
                ("beta".into(), "web".into(), "1.0.0".into()),
            ]
    });
    assert!(
        both,
        "both hosts should be listed on 1.0.0: {last}\nalpha: {}\nbeta: {}",
        first.log(),
        second.log()
    );
    let alpha = &last["hosts"][0];
    assert_eq!(alpha["permanent"], "1.0.0", "{last}");
    assert_eq!(alpha["health"], "healthy", "{last}");
    assert_eq!(last["fleet"], "default", "{last}");

    // Another fleet's namespace on the same server sees none of them.
    let other = fleet_status(
        first_root.path(),
        &server,
        &["--token", "s3cret-token", "--fleet-name", "other"],
    )
    .expect("status of another fleet");
    assert!(hosts_of(&other).is_empty(), "{other}");

    // Without the token the server refuses the connection: a clean failure.
    let output = run_graft(
        first_root.path(),
        &["fleet", "--server", url.as_str(), "status", "--json"],
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr_text(&output));
    let error: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(error["error"]["kind"], "fleet_unreachable", "{error}");

    // A host killed without a word: its heartbeat stops and its entry expires.
    second.signal("KILL");
    second.wait();
    let expired = eventually_blocking(DEADLINE, || {
        fleet_status(first_root.path(), &server, &token).is_some_and(|status| {
            last = status;
            hosts_of(&last) == vec![("alpha".into(), "web".into(), "1.0.0".into())]
        })
    });
    assert!(expired, "beta's entry should expire: {last}");
    drop(first);
}

/// Names left in a root's releases directory (releases and staging directories; not the
/// release record).
fn releases_left(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != "RELEASES.json")
        .collect();
    names.sort();
    names
}

#[test]
fn published_releases_are_fetched_verified_and_tampered_libraries_refused() {
    let server = NatsServer::start();
    let url = server.url();
    let publisher = built_root();
    let published = succeed_graft(
        publisher.path(),
        &["fleet", "--server", &url, "publish", "1.1.0", "--json"],
    );
    let published: Value = serde_json::from_str(&published).unwrap();
    assert_eq!(published["published"], "1.1.0", "{published}");

    // A host with only 1.0.0 gets 1.1.0 byte for byte, and installs it live.
    let receiver = root_with_only_1_0_0();
    let host = Host::start(receiver.path(), &["--fleet", &url, "--host-name", "gamma"]);
    let traffic = Traffic::start(receiver.path());
    let fetched = succeed_graft(
        receiver.path(),
        &["fleet", "--server", &url, "fetch", "1.1.0", "--json"],
    );
    assert!(fetched.contains(r#""unpacked":true"#), "{fetched}");
    let source = publisher.path().join("releases/1.1.0");
    let copy = receiver.path().join("releases/1.1.0");
    let manifest = graft::release::Manifest::read(&source.join("release.toml")).unwrap();
    assert_eq!(
        std::fs::read(source.join("release.toml")).unwrap(),
        std::fs::read(copy.join("release.toml")).unwrap()
    );
    for entry in manifest.plugins.values() {
        let library = entry.library.as_ref().unwrap();
        assert_eq!(
            std::fs::read(source.join(library)).unwrap(),
            std::fs::read(copy.join(library)).unwrap(),
            "{}",
            library.display()
        );
    }
    assert_eq!(releases_left(receiver.path()), ["1.0.0", "1.1.0"]);
    succeed_graft(receiver.path(), &["install", "1.1.0"]);
    drop(traffic);
    let mut last = Value::Null;
    assert!(
        eventually_blocking(DEADLINE, || fleet_status(receiver.path(), &server, &[])
            .is_some_and(|status| {
                last = status;
                hosts_of(&last) == vec![("gamma".into(), "default".into(), "1.1.0".into())]
            })),
        "the host should report 1.1.0: {last}\n{}",
        host.log()
    );
    // Fetching again changes nothing.
    let again = succeed_graft(
        receiver.path(),
        &["fleet", "--server", &url, "fetch", "1.1.0", "--json"],
    );
    assert!(again.contains(r#""unpacked":false"#), "{again}");

    // A library replaced in the store (with the store's own digest updated) is refused
    // by the manifest's digest, and nothing is unpacked.
    let (plugin, entry) = manifest.plugins.iter().next().unwrap();
    let library = entry.library.as_ref().unwrap();
    let mut tampered = std::fs::read(source.join(library)).unwrap();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0xff;
    graft_tests::nats::replace_object(
        &url,
        "graft_default_releases",
        &format!("1.1.0/{}", library.display()),
        &tampered,
    );
    let victim = root_with_only_1_0_0();
    let output = run_graft(
        victim.path(),
        &["fleet", "--server", &url, "fetch", "1.1.0", "--json"],
    );
    assert_eq!(output.status.code(), Some(3), "{}", stdout_text(&output));
    let error: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(error["error"]["kind"], "digest_mismatch", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("plugin {plugin}")) && message.contains("SHA-256"),
        "{message}"
    );
    assert_eq!(releases_left(victim.path()), ["1.0.0"]);
}

#[test]
fn the_state_record_is_compare_and_swap_and_one_rollout_runs_at_a_time() {
    use graft::fleet::state::{Phase, Rollout, StateStore, WaveSize, plan_waves};
    use graft::fleet::{Fleet, FleetError, FleetOptions};
    use std::collections::BTreeMap;
    let server = NatsServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = FleetOptions {
            url: server.url(),
            fleet: "cas".into(),
            token: None,
            credentials: None,
        };
        let first = StateStore::open(&Fleet::connect(&options, false).await.unwrap())
            .await
            .unwrap();
        let second = StateStore::open(&Fleet::connect(&options, false).await.unwrap())
            .await
            .unwrap();
        let hosts: Vec<String> = ["a", "b", "c"].map(str::to_owned).to_vec();
        let rollout = |to: &str| {
            Rollout::new(
                "web",
                semver::Version::parse(to).unwrap(),
                BTreeMap::new(),
                plan_waves(&hosts, 1, WaveSize::Hosts(2)),
                Duration::from_secs(1),
            )
        };
        // Both read the empty record; only one create wins.
        let (empty, revision) = first.read().await.unwrap();
        assert_eq!(revision, 0);
        let won = first.write(&empty, 0).await.unwrap();
        assert!(matches!(
            second.write(&empty, 0).await,
            Err(FleetError::Conflict)
        ));
        // A rollout begins; a second one is refused while it runs.
        let (mut state, revision) = first.begin(rollout("1.1.0")).await.unwrap();
        assert!(revision > won);
        match second.begin(rollout("1.2.0")).await {
            Err(FleetError::RolloutInProgress { group, to }) => {
                assert_eq!((group.as_str(), to.to_string().as_str()), ("web", "1.1.0"));
            }
            other => panic!("a second rollout should be refused: {other:?}"),
        }
        // A write from a stale revision loses; the fresh one wins, and a finished rollout
        // can be replaced.
        state.rollout.as_mut().unwrap().phase = Phase::Succeeded;
        assert!(matches!(
            second.write(&state, won).await,
            Err(FleetError::Conflict)
        ));
        first.write(&state, revision).await.unwrap();
        let (read, _) = second.read().await.unwrap();
        assert_eq!(read, state);
        let (next, _) = second.begin(rollout("1.2.0")).await.unwrap();
        assert_eq!(
            next.rollout.unwrap().waves,
            vec![vec!["a".to_owned()], vec!["b".to_owned(), "c".to_owned()]]
        );
    });
}

/// Writes `change` into the state record of fleet `default` on `server` (re-reading on a
/// conflict).
fn change_state(server: &NatsServer, change: impl Fn(&mut graft::fleet::state::FleetState)) {
    use graft::fleet::state::StateStore;
    use graft::fleet::{Fleet, FleetError, FleetOptions};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = FleetOptions {
            url: server.url(),
            fleet: "default".into(),
            token: None,
            credentials: None,
        };
        let store = StateStore::open(&Fleet::connect(&options, false).await.unwrap())
            .await
            .unwrap();
        loop {
            let (mut state, revision) = store.read().await.unwrap();
            change(&mut state);
            match store.write(&state, revision).await {
                Ok(_) => return,
                Err(FleetError::Conflict) => continue,
                Err(error) => panic!("writing the state: {error}"),
            }
        }
    });
}

#[test]
fn hosts_converge_to_the_desired_release_and_late_joiners_follow() {
    let server = NatsServer::start();
    let url = server.url();
    let publisher = built_root();
    succeed_graft(
        publisher.path(),
        &["fleet", "--server", &url, "publish", "1.1.0"],
    );
    let roots = [root_with_only_1_0_0(), root_with_only_1_0_0()];
    let join = |name: &'static str| {
        [
            "--fleet",
            url.as_str(),
            "--group",
            "web",
            "--host-name",
            name,
        ]
    };
    let hosts = [
        Host::start(roots[0].path(), &join("host-a")),
        Host::start(roots[1].path(), &join("host-b")),
    ];
    for root in &roots {
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#"{"Add": 7}"#]).trim(),
            "7"
        );
    }
    await_hosts(roots[0].path(), &server, "both hosts on 1.0.0", |hosts| {
        hosts.len() == 2 && hosts.iter().all(|host| host["current"] == "1.0.0")
    });

    change_state(&server, |state| {
        state
            .group_release
            .insert("web".into(), semver::Version::new(1, 1, 0));
    });
    let status = await_hosts(roots[0].path(), &server, "both hosts on 1.1.0", |hosts| {
        hosts.len() == 2 && hosts.iter().all(|host| host["current"] == "1.1.0")
    });
    assert!(
        status["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|host| host["permanent"] == "1.0.0" && host["converge_error"].is_null()),
        "{status}"
    );
    // State kept across the live upgrade, nothing lost.
    for root in &roots {
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#""Get""#]).trim(),
            "7"
        );
    }

    change_state(&server, |state| {
        for host in ["host-a", "host-b"] {
            state
                .permanent
                .insert(host.into(), semver::Version::new(1, 1, 0));
        }
    });
    await_hosts(
        roots[0].path(),
        &server,
        "1.1.0 permanent on both",
        |hosts| hosts.len() == 2 && hosts.iter().all(|host| host["permanent"] == "1.1.0"),
    );

    // A host joining afterwards converges too.
    let late = root_with_only_1_0_0();
    let late_host = Host::start(late.path(), &join("host-c"));
    await_hosts(late.path(), &server, "the late host on 1.1.0", |hosts| {
        hosts.len() == 3 && hosts.iter().all(|host| host["current"] == "1.1.0")
    });
    drop((hosts, late_host));
}

/// Casts `{"Add": 1}` to counter over a root's control socket until stopped, counting
/// the casts the host accepted.
struct CountedCasts {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl CountedCasts {
    fn start(root: &Path) -> CountedCasts {
        use std::io::{BufRead as _, Write as _};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let socket = root.join("run").join("control.sock");
        let thread = std::thread::spawn({
            let stop = std::sync::Arc::clone(&stop);
            move || {
                let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                let mut answers = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut accepted = 0;
                let mut answer = String::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let cast = r#"{"command": "cast", "actor": "counter", "message": {"Add": 1}}"#;
                    writeln!(stream, "{cast}").unwrap();
                    answer.clear();
                    assert!(answers.read_line(&mut answer).unwrap() > 0, "socket closed");
                    if answer.contains(r#""cast""#) && !answer.contains(r#""error""#) {
                        accepted += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                accepted
            }
        });
        CountedCasts {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops casting; how many casts were accepted.
    fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for CountedCasts {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn a_rollout_goes_canary_first_wave_by_wave_makes_the_release_permanent_and_rolls_back() {
    let server = NatsServer::start();
    let url = server.url();
    let publisher = built_root();
    succeed_graft(
        publisher.path(),
        &["fleet", "--server", &url, "publish", "1.1.0"],
    );
    let hosts = fleet_of(&server, &["host-a", "host-b", "host-c"]);
    let root = hosts[0].0.path();
    let traffic = CountedCasts::start(hosts[1].0.path());
    let output = run_graft(
        root,
        &[
            "fleet",
            "--server",
            &url,
            "rollout",
            "1.1.0",
            "--group",
            "web",
            "--canary",
            "1",
            "--wave",
            "2",
            "--health-window",
            "2",
            "--json",
        ],
    );
    let accepted = traffic.stop();
    assert!(output.status.success(), "{}", stderr_text(&output));
    let result: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(result["rollout"]["phase"], "succeeded", "{result}");
    // Every cast accepted during the rollout was counted by host-b's counter, across
    // its live upgrade: nothing lost, state kept.
    assert!(accepted > 0, "no cast was accepted during the rollout");
    let expected = (7 + accepted).to_string();
    let mut counted = String::new();
    assert!(
        eventually_blocking(DEADLINE, || {
            counted = succeed_graft(hosts[1].0.path(), &["call", "counter", r#""Get""#])
                .trim()
                .to_owned();
            counted == expected
        }),
        "host-b counted {counted}, expected {expected} (7 + {accepted} casts accepted)"
    );
    assert_eq!(
        result["rollout"]["waves"],
        serde_json::json!([["host-a"], ["host-b", "host-c"]]),
        "{result}"
    );
    let status = await_hosts(root, &server, "1.1.0 permanent everywhere", |listed| {
        listed.len() == 3
            && listed
                .iter()
                .all(|host| host["current"] == "1.1.0" && host["permanent"] == "1.1.0")
    });
    assert_eq!(status["rollout"]["phase"], "succeeded", "{status}");
    for (root, _) in [&hosts[0], &hosts[2]] {
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#""Get""#]).trim(),
            "7",
            "state kept"
        );
    }

    // An explicit fleet rollback sends every host back to 1.0.0, permanent, live.
    let rolled = succeed_graft(root, &["fleet", "--server", &url, "rollback", "--json"]);
    let rolled: Value = serde_json::from_str(&rolled).unwrap();
    assert_eq!(rolled["settled"], true, "{rolled}");
    let status = await_hosts(root, &server, "1.0.0 permanent everywhere", |listed| {
        listed.len() == 3
            && listed
                .iter()
                .all(|host| host["current"] == "1.0.0" && host["permanent"] == "1.0.0")
    });
    assert_eq!(status["rollout"]["phase"], "rolled_back", "{status}");
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#""Get""#]).trim(),
        "7",
        "state kept across the rollback"
    );
}

#[test]
fn a_canary_that_crashes_in_its_health_window_rolls_the_fleet_back() {
    let server = NatsServer::start();
    // The hosts are bound (not `_`) so they live, and are killed, with the test.
    let CanaryInWindow {
        hosts: _hosts,
        root,
        mut controller,
    } = CanaryInWindow::start(&server, "60", &[]);
    // Crash an actor of the canary inside its (long) health window.
    let crash = run_graft(&root, &["call", "calculator", r#"{"Divide": 0}"#]);
    assert_eq!(crash.status.code(), Some(1));
    let output = controller.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stdout_text(&output));
    let error: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(error["error"]["kind"], "rollout_failed", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("host host-a") && message.contains("restart"),
        "{message}"
    );
    let status = await_hosts(&root, &server, "every host back on 1.0.0", |listed| {
        listed.len() == 2
            && listed
                .iter()
                .all(|host| host["current"] == "1.0.0" && host["permanent"] == "1.0.0")
    });
    assert_eq!(status["rollout"]["phase"], "rolled_back", "{status}");
    assert_eq!(status["rollout"]["host"], "host-a", "{status}");
}

#[test]
fn a_rollout_survives_its_controller_a_killed_host_and_a_nats_restart_and_late_joiners_follow() {
    let mut server = NatsServer::start();
    let url = server.url();
    let publisher = built_root();
    succeed_graft(
        publisher.path(),
        &["fleet", "--server", &url, "publish", "1.1.0"],
    );
    let mut hosts = fleet_of(&server, &["host-a", "host-b", "host-c"]);
    let root = hosts[0].0.path().to_path_buf();
    let mut controller = std::process::Command::new(graft_tests::graft_binary())
        .env("GRAFT_ROOT", &root)
        .args([
            "fleet",
            "--server",
            &url,
            "rollout",
            "1.1.0",
            "--group",
            "web",
            "--canary",
            "1",
            "--wave",
            "1",
            "--health-window",
            "20",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    await_hosts(&root, &server, "the canary on 1.1.0", |listed| {
        listed
            .iter()
            .any(|host| host["host"] == "host-a" && host["current"] == "1.1.0")
    });
    // The controller dies inside the canary's health window; the rollout stays running.
    let _ = controller.kill();
    let _ = controller.wait();
    let status = fleet_status(&root, &server, &[]).expect("fleet status");
    assert_eq!(status["rollout"]["phase"], "running", "{status}");

    // A host dies, the NATS server restarts (same store), the host comes back.
    let (root_b, mut host_b) = hosts.remove(1);
    host_b.signal("KILL");
    host_b.wait();
    drop(host_b);
    server.restart();
    let host_b = Host::start(
        root_b.path(),
        &["--fleet", &url, "--group", "web", "--host-name", "host-b"],
    );
    hosts.push((root_b, host_b));
    await_hosts(
        &root,
        &server,
        "all three back after the restart",
        |listed| listed.len() == 3,
    );

    // A second rollout is refused while this one runs; --resume finishes it.
    let refused = run_graft(
        &root,
        &[
            "fleet", "--server", &url, "rollout", "1.1.0", "--group", "web", "--json",
        ],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stdout_text(&refused));
    assert!(
        stdout_text(&refused).contains("rollout_in_progress"),
        "{}",
        stdout_text(&refused)
    );
    let resumed = run_graft(
        &root,
        &["fleet", "--server", &url, "rollout", "--resume", "--json"],
    );
    assert!(
        resumed.status.success(),
        "{}{}",
        stdout_text(&resumed),
        stderr_text(&resumed)
    );
    await_hosts(&root, &server, "1.1.0 permanent on all three", |listed| {
        listed.len() == 3
            && listed
                .iter()
                .all(|host| host["current"] == "1.1.0" && host["permanent"] == "1.1.0")
    });
    // State kept on the hosts that were never restarted.
    for (root, _) in [&hosts[0], &hosts[1]] {
        assert_eq!(
            succeed_graft(root.path(), &["call", "counter", r#""Get""#]).trim(),
            "7"
        );
    }

    // A host joining after the rollout converges to the group's release.
    let late = root_with_only_1_0_0();
    let _late_host = Host::start(
        late.path(),
        &["--fleet", &url, "--group", "web", "--host-name", "host-d"],
    );
    await_hosts(&root, &server, "the late host on 1.1.0", |listed| {
        listed.len() == 4 && listed.iter().all(|host| host["current"] == "1.1.0")
    });
}

#[test]
fn a_rollout_of_a_tampered_release_is_refused_by_digest_on_every_host() {
    let server = NatsServer::start();
    let url = server.url();
    let publisher = built_root();
    succeed_graft(
        publisher.path(),
        &["fleet", "--server", &url, "publish", "1.1.0"],
    );
    let source = publisher.path().join("releases/1.1.0");
    let manifest = graft::release::Manifest::read(&source.join("release.toml")).unwrap();
    let library = manifest
        .plugins
        .values()
        .next()
        .unwrap()
        .library
        .clone()
        .unwrap();
    let mut tampered = std::fs::read(source.join(&library)).unwrap();
    tampered[100] ^= 0x01;
    graft_tests::nats::replace_object(
        &url,
        "graft_default_releases",
        &format!("1.1.0/{}", library.display()),
        &tampered,
    );
    let hosts = fleet_of(&server, &["host-a", "host-b", "host-c"]);
    let root = hosts[0].0.path();
    // Every host at once (no canary, one wave of all, at most 3 upgrading).
    let output = run_graft(
        root,
        &[
            "fleet",
            "--server",
            &url,
            "rollout",
            "1.1.0",
            "--group",
            "web",
            "--canary",
            "0",
            "--wave",
            "100%",
            "--max-unavailable",
            "3",
            "--health-window",
            "1",
            "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stdout_text(&output));
    let error: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(error["error"]["kind"], "rollout_failed", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("SHA-256"), "{message}");
    // Every host refused it by the digest, unpacked nothing, and stays on 1.0.0.
    for (root, host) in &hosts {
        assert!(
            eventually_blocking(DEADLINE, || host.log().contains("refused release 1.1.0")),
            "{}",
            host.log()
        );
        assert_eq!(releases_left(root.path()), ["1.0.0"]);
    }
    await_hosts(root, &server, "every host on 1.0.0", |listed| {
        listed.len() == 3 && listed.iter().all(|host| host["current"] == "1.0.0")
    });
}

#[test]
fn an_operator_rollback_stops_the_running_controller_instead_of_being_overwritten() {
    let server = NatsServer::start();
    let url = server.url();
    // A controller whose canary's health window outlasts the test's steps.
    // The hosts are bound (not `_`) so they live, and are killed, with the test.
    let CanaryInWindow {
        hosts: _hosts,
        root,
        mut controller,
    } = CanaryInWindow::start(&server, "20", &[]);

    // The operator rolls the fleet back while the controller still gates its canary.
    let rolled = succeed_graft(&root, &["fleet", "--server", &url, "rollback", "--json"]);
    let rolled: Value = serde_json::from_str(&rolled).unwrap();
    assert_eq!(rolled["settled"], true, "{rolled}");

    // The controller stops without writing: it neither re-sends host-a to 1.1.0 nor
    // starts the next wave on host-b.
    let output = controller.0.take().unwrap().wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}{}",
        stdout_text(&output),
        stderr_text(&output)
    );
    let error: Value = serde_json::from_str(&stdout_text(&output)).unwrap();
    assert_eq!(error["error"]["kind"], "rollout_stopped", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("rolled back by the operator"), "{message}");
    let status = await_hosts(&root, &server, "both hosts on 1.0.0", |listed| {
        listed.len() == 2
            && listed
                .iter()
                .all(|host| host["current"] == "1.0.0" && host["permanent"] == "1.0.0")
    });
    assert_eq!(status["rollout"]["phase"], "rolled_back", "{status}");
    assert_eq!(status["desired"]["host-a"], "1.0.0", "{status}");
    assert_eq!(status["desired"]["host-b"], "1.0.0", "{status}");
    assert_eq!(
        succeed_graft(&root, &["call", "counter", r#""Get""#]).trim(),
        "7",
        "state kept across the upgrade and the rollback"
    );
}
