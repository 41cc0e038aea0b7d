//! Supervisors with real plugin actors (calculator, super_duper, ticker, faulty) and native
//! recorders: each strategy, restart type and shutdown mode, restart intensity and
//! escalation, start and stop order, and the child operations.

use graft::runtime::{ActorRef, BehaviourFactory, PluginFactory, Runtime};
use graft::supervisor::{
    ChildKey, ChildSpec, REACHED_MAXIMUM_INTENSITY, Restart, Shutdown, Strategy, SupervisorError,
    SupervisorSpec, start_supervisor,
};
use graft_plugin::{StopReason, codec};
use graft_tests::native::{Journal, entries, journal, recorder};
use graft_tests::{eventually, eventually_async, load_plugin as plugin};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);

fn factory(package: &str) -> Arc<dyn BehaviourFactory> {
    Arc::new(PluginFactory::new(plugin(package)))
}

fn encode(value: &Value) -> Vec<u8> {
    codec::encode(value).unwrap()
}

async fn call(actor: &ActorRef, request: Value) -> Value {
    let reply = actor
        .call(encode(&request), SECOND)
        .await
        .unwrap_or_else(|error| panic!("call {request}: {error}"));
    codec::decode(&reply).unwrap()
}

fn calculator(id: &str, start: i64) -> ChildSpec {
    ChildSpec::worker(
        id,
        factory("calculator-1-0-0"),
        encode(&json!({"start": start})),
    )
    .named(id)
}

fn recorder_child(journal: &Journal, id: &str) -> ChildSpec {
    ChildSpec::worker(id, recorder(journal), codec::encode(id).unwrap()).named(id)
}

/// Waits until `name` is registered to a process other than `old`.
async fn restarted(runtime: &Runtime, name: &str, old: &ActorRef) -> ActorRef {
    let mut found = None;
    let ok = eventually(SECOND * 2, || {
        found = runtime.whereis(name).filter(|actor| actor != old);
        found.is_some()
    })
    .await;
    assert!(ok, "{name} was not restarted");
    found.unwrap()
}

async fn crash(actor: &ActorRef) {
    let _ = actor.call(encode(&json!({"Divide": 0})), SECOND).await;
    actor.exited().await;
}

#[tokio::test]
async fn one_for_one_restarts_only_the_failed_child_with_fresh_state() {
    let runtime = Runtime::new();
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            calculator("left", 10),
            calculator("middle", 20),
            calculator("right", 30),
        ],
    )
    .intensity(3, 5);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let left = runtime.whereis("left").unwrap();
    let middle = runtime.whereis("middle").unwrap();
    let right = runtime.whereis("right").unwrap();
    assert_eq!(call(&middle, json!({"Add": 5})).await, json!(25));
    assert_eq!(call(&left, json!({"Add": 1})).await, json!(11));

    // Dividing by zero panics inside the plugin: the actor crashes, the supervisor restarts
    // it from its start arguments.
    let error = middle
        .call(encode(&json!({"Divide": 0})), SECOND)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("panicked"), "{error}");
    let new_middle = restarted(&runtime, "middle", &middle).await;
    assert_eq!(
        call(&new_middle, json!("Get")).await,
        json!(20),
        "fresh state"
    );
    assert_eq!(runtime.whereis("left"), Some(left.clone()));
    assert_eq!(runtime.whereis("right"), Some(right.clone()));
    assert_eq!(
        call(&left, json!("Get")).await,
        json!(11),
        "siblings keep their state"
    );

    let children = supervisor.which_children().await.unwrap();
    let restarts: Vec<u32> = children.iter().map(|child| child.restarts).collect();
    assert_eq!(restarts, vec![0, 1, 0]);
    assert_eq!(new_middle.status(SECOND).await.unwrap().restarts, 1);
    assert_eq!(supervisor.shutdown().await, StopReason::Shutdown(None));
    assert!(!left.is_alive() && !new_middle.is_alive() && !right.is_alive());
}

#[tokio::test]
async fn one_for_all_restarts_every_child() {
    let runtime = Runtime::new();
    let spec = SupervisorSpec::new(
        Strategy::OneForAll,
        vec![
            calculator("a1", 1),
            calculator("a2", 2),
            calculator("a3", 3),
        ],
    );
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let before: Vec<ActorRef> = ["a1", "a2", "a3"]
        .iter()
        .map(|name| runtime.whereis(name).unwrap())
        .collect();
    crash(&before[2]).await;
    for (name, old) in ["a1", "a2", "a3"].iter().zip(&before) {
        let new = restarted(&runtime, name, old).await;
        assert!(!old.is_alive());
        assert!(new.is_alive());
    }
    supervisor.shutdown().await;
}

#[tokio::test]
async fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    let runtime = Runtime::new();
    let character = |id: &str, power: &str| {
        ChildSpec::worker(
            id,
            factory("super_duper-1-0-0"),
            encode(&json!({"name": id, "power": power})),
        )
        .named(id)
    };
    let spec = SupervisorSpec::new(
        Strategy::RestForOne,
        vec![
            character("hulk", "strength"),
            character("storm", "weather"),
            character("flash", "speed"),
        ],
    );
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let hulk = runtime.whereis("hulk").unwrap();
    let storm = runtime.whereis("storm").unwrap();
    let flash = runtime.whereis("flash").unwrap();
    assert_eq!(
        call(&storm, json!("WhoAreYou")).await["power"],
        json!("weather")
    );

    let _ = storm.call(encode(&json!("Crash")), SECOND).await;
    let new_storm = restarted(&runtime, "storm", &storm).await;
    let new_flash = restarted(&runtime, "flash", &flash).await;
    assert_eq!(
        runtime.whereis("hulk"),
        Some(hulk.clone()),
        "the first keeps running"
    );
    assert!(hulk.is_alive());
    assert_eq!(
        call(&new_storm, json!("WhoAreYou")).await["name"],
        json!("storm")
    );
    assert_eq!(
        call(&new_flash, json!("WhoAreYou")).await["name"],
        json!("flash")
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_dynamic_supervisor_starts_children_at_run_time_and_finds_them_by_name() {
    let runtime = Runtime::new();
    let template = ChildSpec::worker("character", factory("super_duper-1-0-0"), Vec::new());
    let spec = SupervisorSpec::new(Strategy::Dynamic, vec![template])
        .named("heroes")
        .intensity(5, 5);
    start_supervisor(&runtime, spec).await.unwrap();
    let heroes = runtime.supervisor("heroes").expect("registered by name");
    // OTP's count_children: a dynamic supervisor has one spec, its template.
    let counts = heroes.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active, counts.workers), (1, 0, 0));

    for (name, power) in [("batman", "money"), ("robin", "youth"), ("alfred", "tea")] {
        let args = encode(&json!({"name": name, "power": power}));
        heroes
            .start_dynamic_child(args, Some(name.to_owned()))
            .await
            .unwrap();
    }
    let counts = heroes.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active, counts.workers), (1, 3, 3));
    let robin = runtime.whereis("robin").unwrap();
    assert_eq!(
        call(&robin, json!("WhoAreYou")).await["power"],
        json!("youth")
    );

    // A crashed dynamic child restarts with its own arguments and name.
    let _ = robin.call(encode(&json!("Crash")), SECOND).await;
    let new_robin = restarted(&runtime, "robin", &robin).await;
    assert_eq!(
        call(&new_robin, json!("WhoAreYou")).await["power"],
        json!("youth")
    );

    // Name taken: the start fails and nothing is added.
    let error = heroes
        .start_dynamic_child(
            encode(&json!({"name": "x", "power": "y"})),
            Some("batman".to_owned()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, SupervisorError::StartFailed { .. }),
        "{error}"
    );

    heroes
        .terminate_child(ChildKey::Process(new_robin.id()))
        .await
        .unwrap();
    assert_eq!(heroes.count_children().await.unwrap().workers, 2);
    assert!(matches!(
        heroes.delete_child("batman").await.unwrap_err(),
        SupervisorError::Unsupported { .. }
    ));
    assert!(matches!(
        heroes.restart_child("batman").await.unwrap_err(),
        SupervisorError::Unsupported { .. }
    ));
    heroes.shutdown().await;
    assert!(runtime.whereis("batman").is_none());
}

#[tokio::test]
async fn restart_types_decide_what_comes_back() {
    let runtime = Runtime::new();
    let journal = journal();
    let startup = ChildSpec::worker(
        "startup",
        factory("ticker-1-0-0"),
        encode(&json!({"role": "startup", "notify": "permanent"})),
    )
    .restart(Restart::Transient);
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            recorder_child(&journal, "permanent"),
            recorder_child(&journal, "transient").restart(Restart::Transient),
            recorder_child(&journal, "temporary").restart(Restart::Temporary),
            startup,
        ],
    )
    .intensity(10, 5);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();

    // The startup task ran once, notified `permanent`, exited normally: not restarted.
    assert!(
        eventually(SECOND, || entries(&journal)
            .iter()
            .any(|entry| entry.starts_with("cast permanent")))
        .await
    );
    assert!(
        eventually_async(SECOND * 2, || async {
            let children = supervisor.which_children().await.unwrap();
            children
                .iter()
                .any(|child| child.id == "startup" && child.process.is_none())
        })
        .await
    );

    // Transient: a normal exit is final, a crash is restarted.
    let transient = runtime.whereis("transient").unwrap();
    call(&transient, json!("stop")).await;
    transient.exited().await;
    let temporary = runtime.whereis("temporary").unwrap();
    let _ = temporary.call(encode(&json!("crash")), SECOND).await;
    temporary.exited().await;
    let permanent = runtime.whereis("permanent").unwrap();
    call(&permanent, json!("stop")).await;
    let new_permanent = restarted(&runtime, "permanent", &permanent).await;
    assert!(
        new_permanent.is_alive(),
        "permanent comes back even after a normal exit"
    );

    let children = supervisor.which_children().await.unwrap();
    let ids: Vec<&str> = children.iter().map(|child| child.id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["permanent", "transient", "startup"],
        "the temporary spec is gone"
    );
    assert!(children[1].process.is_none() && children[2].process.is_none());
    assert_eq!(supervisor.count_children().await.unwrap().active, 1);

    // restart_child brings a stopped child back; delete_child removes a stopped spec.
    let transient = supervisor.restart_child("transient").await.unwrap();
    let transient = transient.expect("started").actor().unwrap().clone();
    let _ = transient.call(encode(&json!("crash")), SECOND).await;
    let transient = restarted(&runtime, "transient", &transient).await;
    assert!(
        transient.is_alive(),
        "a crashed transient child is restarted"
    );
    assert_eq!(
        supervisor.delete_child("transient").await.unwrap_err(),
        SupervisorError::Running("transient".to_owned())
    );
    supervisor.delete_child("startup").await.unwrap();
    assert_eq!(supervisor.count_children().await.unwrap().specs, 2);
    supervisor.shutdown().await;
}

#[tokio::test]
async fn children_start_in_order_and_stop_in_reverse_with_terminate() {
    let runtime = Runtime::new();
    let journal = journal();
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            recorder_child(&journal, "first"),
            recorder_child(&journal, "second"),
            recorder_child(&journal, "third"),
        ],
    );
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    supervisor.shutdown().await;
    assert_eq!(
        entries(&journal),
        vec![
            "start first",
            "start second",
            "start third",
            "terminate third shutdown",
            "terminate second shutdown",
            "terminate first shutdown",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_modes_brutal_kill_timeout_and_infinity() {
    let runtime = Runtime::new();
    let journal = journal();
    let stuck = ChildSpec::worker("stuck", factory("graft-fixture-faulty"), encode(&json!({})))
        .named("stuck")
        .shutdown(Shutdown::Timeout(Duration::from_millis(50)));
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            recorder_child(&journal, "graceful").shutdown(Shutdown::Timeout(SECOND)),
            recorder_child(&journal, "patient").shutdown(Shutdown::Infinity),
            recorder_child(&journal, "brutal").shutdown(Shutdown::BrutalKill),
            stuck,
        ],
    );
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    // Busy in a long callback: the shutdown request waits behind it, then the timeout kills.
    let stuck = runtime.whereis("stuck").unwrap();
    let mut busy = {
        let stuck = stuck.clone();
        Box::pin(async move {
            stuck
                .call(encode(&json!({"Sleep": {"ms": 400}})), SECOND)
                .await
        })
    };
    // Poll the call once, so its request is in the mailbox, then let it finish on its own.
    tokio::select! {
        biased;
        _ = &mut busy => panic!("the sleep cannot be over yet"),
        _ = std::future::ready(()) => {}
    }
    let busy = tokio::spawn(busy);
    // Busy means: a system request gets no answer, because a callback is running.
    assert!(
        eventually_async(SECOND, || async {
            stuck.status(Duration::from_millis(20)).await.is_err()
        })
        .await,
        "the callback began"
    );
    let started = std::time::Instant::now();
    supervisor.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_millis(390),
        "the stuck child was killed at its timeout"
    );
    assert_eq!(
        stuck.exit_reason(),
        Some(StopReason::Error("killed".to_owned()))
    );
    let _ = busy.await;
    let log = entries(&journal);
    assert!(log.contains(&"terminate graceful shutdown".to_owned()));
    assert!(log.contains(&"terminate patient shutdown".to_owned()));
    assert!(
        !log.iter()
            .any(|entry| entry.starts_with("terminate brutal")),
        "{log:?}"
    );
}

#[tokio::test]
async fn exceeding_the_restart_intensity_stops_the_children_in_reverse_and_the_supervisor() {
    let runtime = Runtime::new();
    let journal = journal();
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            recorder_child(&journal, "steady"),
            calculator("fragile", 0),
            recorder_child(&journal, "last"),
        ],
    )
    .intensity(2, 60);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let mut fragile = runtime.whereis("fragile").unwrap();
    for _ in 0..2 {
        crash(&fragile).await;
        fragile = restarted(&runtime, "fragile", &fragile).await;
    }
    crash(&fragile).await;
    let reason = supervisor.exited().await;
    assert_eq!(
        reason,
        StopReason::Shutdown(Some(REACHED_MAXIMUM_INTENSITY.to_owned()))
    );
    let log = entries(&journal);
    let stops: Vec<&String> = log
        .iter()
        .filter(|entry| entry.starts_with("terminate"))
        .collect();
    assert_eq!(
        stops,
        vec!["terminate last shutdown", "terminate steady shutdown"]
    );
    assert!(runtime.whereis("steady").is_none() && runtime.whereis("fragile").is_none());
}

#[tokio::test]
async fn a_child_that_cannot_restart_burns_the_intensity_and_takes_the_supervisor_down() {
    let runtime = Runtime::new();
    let journal = journal();
    // The child's name is taken by an outsider once it crashes: every restart attempt fails.
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![recorder_child(&journal, "contested")],
    )
    .intensity(3, 60);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let contested = runtime.whereis("contested").unwrap();
    contested.kill();
    // Register the name before the supervisor can (it may win the race: then crash again).
    let squatter = runtime
        .spawn(
            graft::runtime::ActorOptions::new(
                recorder(&journal),
                codec::encode("squatter").unwrap(),
            )
            .named("contested"),
        )
        .await;
    if squatter.is_err() {
        let restarted = runtime.whereis("contested").unwrap();
        restarted.kill();
        runtime
            .spawn(
                graft::runtime::ActorOptions::new(
                    recorder(&journal),
                    codec::encode("squatter").unwrap(),
                )
                .named("contested"),
            )
            .await
            .unwrap();
    }
    let reason = tokio::time::timeout(SECOND * 5, supervisor.exited())
        .await
        .expect("gave up in time");
    assert_eq!(
        reason,
        StopReason::Shutdown(Some(REACHED_MAXIMUM_INTENSITY.to_owned()))
    );
}

#[tokio::test]
async fn escalation_goes_up_the_tree_and_past_the_root() {
    let runtime = Runtime::new();
    let inner = SupervisorSpec::new(Strategy::OneForOne, vec![calculator("leaf", 1)])
        .named("inner")
        .intensity(0, 5);
    let root = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            ChildSpec::supervisor("inner", inner),
            calculator("sibling", 2),
        ],
    )
    .named("root")
    .intensity(1, 60);
    let root = start_supervisor(&runtime, root).await.unwrap();
    let first_inner = runtime.supervisor("inner").unwrap();
    assert_eq!(root.count_children().await.unwrap().supervisors, 1);

    // The leaf crashes; the inner supervisor (intensity 0) gives up; the root restarts it.
    let old_leaf = runtime.whereis("leaf").unwrap();
    crash(&old_leaf).await;
    assert!(
        first_inner
            .exited()
            .await
            .to_string()
            .contains("maximum restart intensity")
    );
    assert!(
        eventually(SECOND, || runtime
            .supervisor("inner")
            .is_some_and(|inner| inner.id() != first_inner.id()))
        .await
    );
    let leaf = restarted(&runtime, "leaf", &old_leaf).await;
    assert_eq!(call(&leaf, json!("Get")).await, json!(1));

    // Again: the root's own intensity (1) is exceeded, and it exits with reason shutdown.
    crash(&leaf).await;
    let reason = tokio::time::timeout(SECOND * 2, root.exited())
        .await
        .unwrap();
    assert_eq!(
        reason,
        StopReason::Shutdown(Some(REACHED_MAXIMUM_INTENSITY.to_owned()))
    );
    assert!(runtime.whereis("sibling").is_none());
    assert!(runtime.supervisor("root").is_none());
}

#[tokio::test]
async fn static_child_operations() {
    let runtime = Runtime::new();
    let journal = journal();
    let spec = SupervisorSpec::new(Strategy::OneForOne, vec![recorder_child(&journal, "base")]);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();

    supervisor
        .start_child(recorder_child(&journal, "added"))
        .await
        .unwrap();
    assert_eq!(
        supervisor
            .start_child(recorder_child(&journal, "added"))
            .await
            .unwrap_err(),
        SupervisorError::AlreadyStarted("added".to_owned())
    );
    let ids: Vec<String> = supervisor
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|child| child.id)
        .collect();
    assert_eq!(ids, vec!["base", "added"]);

    supervisor
        .terminate_child(ChildKey::Id("added".to_owned()))
        .await
        .unwrap();
    assert!(runtime.whereis("added").is_none());
    assert_eq!(
        supervisor.count_children().await.unwrap(),
        graft::supervisor::ChildCounts {
            specs: 2,
            active: 1,
            supervisors: 0,
            workers: 2
        }
    );
    assert_eq!(
        supervisor.restart_child("base").await.unwrap_err(),
        SupervisorError::Running("base".to_owned())
    );
    supervisor.restart_child("added").await.unwrap();
    assert!(runtime.whereis("added").is_some());
    supervisor
        .terminate_child(ChildKey::Id("added".to_owned()))
        .await
        .unwrap();
    supervisor.delete_child("added").await.unwrap();
    assert!(matches!(
        supervisor
            .terminate_child(ChildKey::Id("nope".to_owned()))
            .await
            .unwrap_err(),
        SupervisorError::NotFound(_)
    ));
    assert!(matches!(
        supervisor
            .start_dynamic_child(Vec::new(), None)
            .await
            .unwrap_err(),
        SupervisorError::Unsupported { .. }
    ));
    supervisor.shutdown().await;
    assert!(matches!(
        supervisor.which_children().await.unwrap_err(),
        SupervisorError::Exited(StopReason::Shutdown(None))
    ));
}

#[tokio::test]
async fn a_failing_child_start_fails_the_supervisor_start_and_stops_the_started_ones() {
    let runtime = Runtime::new();
    let journal = journal();
    let broken = ChildSpec::worker(
        "broken",
        factory("graft-fixture-faulty"),
        encode(&json!({"panic_in": ["init"]})),
    );
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![recorder_child(&journal, "early"), broken],
    );
    let error = start_supervisor(&runtime, spec).await.unwrap_err();
    assert!(
        matches!(&error, SupervisorError::StartFailed { id, .. } if id == "broken"),
        "{error}"
    );
    assert!(error.to_string().contains("init panicked"), "{error}");
    assert_eq!(
        entries(&journal),
        vec!["start early", "terminate early shutdown"]
    );

    let duplicate = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            recorder_child(&journal, "twin"),
            recorder_child(&journal, "twin"),
        ],
    );
    assert!(matches!(
        start_supervisor(&runtime, duplicate).await.unwrap_err(),
        SupervisorError::InvalidSpec(_)
    ));
}

#[tokio::test]
async fn a_dynamic_supervisor_keeps_track_of_many_children_exiting_in_any_order() {
    let runtime = Runtime::new();
    let journal = journal();
    let template =
        ChildSpec::worker("worker", recorder(&journal), Vec::new()).restart(Restart::Temporary);
    let spec = SupervisorSpec::new(Strategy::Dynamic, vec![template]).intensity(0, 5);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let mut children = Vec::new();
    for index in 0..300 {
        let child = supervisor
            .start_dynamic_child(codec::encode(&format!("w{index}")).unwrap(), None)
            .await
            .unwrap()
            .expect("started");
        children.push(child.actor().unwrap().clone());
    }
    // Every third exits on its own (temporary: removed), in a scrambled order.
    let mut leaving: Vec<ActorRef> = children.iter().step_by(3).cloned().collect();
    leaving.reverse();
    leaving.swap(0, 50);
    for actor in &leaving {
        call(actor, json!("stop")).await;
        actor.exited().await;
    }
    let remaining = 300 - leaving.len();
    assert!(
        eventually_async(SECOND, || async {
            supervisor.count_children().await.unwrap().workers == remaining
        })
        .await
    );
    // Every remaining child is still found by its process.
    for actor in children.iter().filter(|actor| !leaving.contains(actor)) {
        supervisor
            .terminate_child(ChildKey::Process(actor.id()))
            .await
            .unwrap();
        assert!(!actor.is_alive());
    }
    assert_eq!(supervisor.count_children().await.unwrap().workers, 0);
    supervisor.shutdown().await;
}
