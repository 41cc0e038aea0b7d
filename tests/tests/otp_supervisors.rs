//! Supervisors against OTP's own semantics, where Graft used to differ: a child in a
//! restart loop (`restarting`), `init` declining to start (`ignore`), `one_for_all` and
//! terminated children, the exit reason at the restart intensity, updates
//! (`code_change`) and a panicking supervisor task, child-operation answers, significant
//! children with `auto_shutdown`, and `which_child`/`get_childspec`/`count_children`.
//!
//! The children are host-native recorders behind a "switch" factory whose `init` starts,
//! fails or declines on demand; every wait polls with a generous deadline.

use graft::plugin::{CallbackError, HostServices, PluginIdentity};
use graft::runtime::{ActorOptions, BehaviourFactory, NativeFactory, Runtime, Started};
use graft::supervisor::{
    AutoShutdown, ChildKey, ChildSpec, ChildState, REACHED_MAXIMUM_INTENSITY, Restart, SpecError,
    Strategy, SupervisorError, SupervisorRef, SupervisorSpec, SupervisorUpdate, start_supervisor,
};
use graft_plugin::{StopReason, codec};
use graft_tests::native::{Journal, entries, journal, recorder};
use graft_tests::{assembled_root, boot, eventually, eventually_async};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECOND: Duration = Duration::from_secs(1);
const DEADLINE: Duration = Duration::from_secs(10);

/// What the switch factory's `init` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Start,
    /// Fails (after a short pause, so a restart loop does not spin).
    Fail,
    /// Declines: OTP's `ignore`.
    Ignore,
}

/// A recorder factory whose `init` does what the switch says, counting its calls.
struct Switch {
    mode: Arc<Mutex<Mode>>,
    starts: Arc<AtomicUsize>,
    factory: Arc<dyn BehaviourFactory>,
}

impl Switch {
    fn new(journal: &Journal, mode: Mode) -> Switch {
        let mode = Arc::new(Mutex::new(mode));
        let starts = Arc::new(AtomicUsize::new(0));
        let inner = recorder(journal);
        let factory: Arc<dyn BehaviourFactory> = Arc::new(NativeFactory({
            let (mode, starts) = (Arc::clone(&mode), Arc::clone(&starts));
            move |args: &[u8], services: &dyn HostServices| -> Result<Started, CallbackError> {
                starts.fetch_add(1, Ordering::SeqCst);
                let current = *mode.lock().unwrap();
                match current {
                    Mode::Start => inner.start(args, services),
                    Mode::Fail => {
                        std::thread::sleep(Duration::from_millis(10));
                        Err(CallbackError::Failed {
                            plugin: PluginIdentity {
                                name: "switch".to_owned(),
                                version: semver::Version::new(0, 0, 0),
                            },
                            callback: "init",
                            message: "told to fail".to_owned(),
                        })
                    }
                    Mode::Ignore => Err(CallbackError::Ignored {
                        code: "native code".to_owned(),
                    }),
                }
            }
        }));
        Switch {
            mode,
            starts,
            factory,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn starts(&self) -> usize {
        self.starts.load(Ordering::SeqCst)
    }

    fn child(&self, id: &str) -> ChildSpec {
        ChildSpec::worker(id, Arc::clone(&self.factory), codec::encode(id).unwrap()).named(id)
    }
}

fn recorder_child(journal: &Journal, id: &str) -> ChildSpec {
    ChildSpec::worker(id, recorder(journal), codec::encode(id).unwrap()).named(id)
}

async fn state_of(supervisor: &SupervisorRef, id: &str) -> Option<ChildState> {
    supervisor
        .which_child(ChildKey::Id(id.to_owned()))
        .await
        .ok()
        .map(|child| child.state)
}

async fn ids(supervisor: &SupervisorRef) -> Vec<String> {
    supervisor
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|child| child.id)
        .collect()
}

async fn stop_normally(runtime: &Runtime, name: &str) {
    let actor = runtime.whereis(name).unwrap();
    let _ = actor.call(codec::encode("stop").unwrap(), SECOND).await;
    actor.exited().await;
}

#[tokio::test]
async fn a_child_in_a_restart_loop_is_restarting_and_terminate_child_cancels_its_retries() {
    let runtime = Runtime::new();
    let journal = journal();
    let switch = Switch::new(&journal, Mode::Start);
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![switch.child("looping"), recorder_child(&journal, "steady")],
    )
    .intensity(100_000, 60);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();

    switch.set(Mode::Fail);
    runtime.whereis("looping").unwrap().kill();
    assert!(
        eventually_async(DEADLINE, || async {
            state_of(&supervisor, "looping").await == Some(ChildState::Restarting)
        })
        .await,
        "the failing restarts show as restarting"
    );
    let info = supervisor
        .which_child(ChildKey::Id("looping".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        (
            info.process,
            serde_json::to_value(&info).unwrap()["state"].clone()
        ),
        (None, serde_json::json!("restarting"))
    );
    assert_eq!(
        supervisor.restart_child("looping").await.unwrap_err(),
        SupervisorError::Restarting("looping".to_owned())
    );
    assert_eq!(
        supervisor.delete_child("looping").await.unwrap_err(),
        SupervisorError::Restarting("looping".to_owned())
    );
    assert_eq!(
        ids(&supervisor).await,
        vec!["looping", "steady"],
        "nothing changed"
    );

    // terminate_child cancels the queued retry: once starts succeed again, the child
    // stays stopped (a retry queued before the terminate runs before the next request).
    supervisor
        .terminate_child(ChildKey::Id("looping".to_owned()))
        .await
        .unwrap();
    switch.set(Mode::Start);
    let attempts = switch.starts();
    for _ in 0..3 {
        supervisor.which_children().await.unwrap();
    }
    assert_eq!(
        state_of(&supervisor, "looping").await,
        Some(ChildState::Stopped)
    );
    assert!(runtime.whereis("looping").is_none());
    assert_eq!(
        switch.starts(),
        attempts,
        "no retry ran after terminate_child"
    );

    // It is an ordinary stopped child now.
    let restarted = supervisor.restart_child("looping").await.unwrap();
    assert!(restarted.is_some());
    assert_eq!(
        state_of(&supervisor, "looping").await,
        Some(ChildState::Running)
    );
    assert_eq!(supervisor.shutdown().await, StopReason::Shutdown(None));
}

#[tokio::test]
async fn an_ignoring_init_keeps_static_specs_without_a_process_and_drops_the_rest() {
    let runtime = Runtime::new();
    let journal = journal();
    let declines = Switch::new(&journal, Mode::Ignore);
    let flips = Switch::new(&journal, Mode::Start);
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            declines.child("permanent"),
            declines.child("temporary").restart(Restart::Temporary),
            flips.child("flip"),
            recorder_child(&journal, "steady"),
        ],
    )
    .intensity(10, 60);
    // A static child that declines does not fail the supervisor's start.
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    assert_eq!(
        ids(&supervisor).await,
        vec!["permanent", "flip", "steady"],
        "the temporary spec is dropped"
    );
    let permanent = supervisor
        .which_child(ChildKey::Id("permanent".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        (permanent.state, permanent.process),
        (ChildState::Stopped, None)
    );

    // start_child: Ok with no process; a transient spec is kept, a temporary one is not.
    assert!(
        supervisor
            .start_child(declines.child("later").restart(Restart::Transient))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        supervisor
            .start_child(declines.child("once").restart(Restart::Temporary))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        ids(&supervisor).await,
        vec!["permanent", "flip", "steady", "later"]
    );

    // A restart that declines leaves the child stopped, is not retried, and the
    // supervisor stays up.
    flips.set(Mode::Ignore);
    runtime.whereis("flip").unwrap().kill();
    assert!(
        eventually(DEADLINE, || flips.starts() == 2).await,
        "the restart was attempted"
    );
    assert!(
        eventually_async(DEADLINE, || async {
            state_of(&supervisor, "flip").await == Some(ChildState::Stopped)
        })
        .await
    );
    for _ in 0..3 {
        supervisor.which_children().await.unwrap();
    }
    assert_eq!(flips.starts(), 2, "an ignored restart is not retried");
    assert!(supervisor.exit_reason().is_none());
    supervisor.shutdown().await;
}

#[tokio::test]
async fn a_dynamic_child_that_declines_is_not_kept_even_on_restart() {
    let runtime = Runtime::new();
    let journal = journal();
    let switch = Switch::new(&journal, Mode::Ignore);
    let template = ChildSpec::worker("worker", Arc::clone(&switch.factory), Vec::new());
    // Intensity 1: a crash-looping restart would take the supervisor down at once.
    let spec = SupervisorSpec::new(Strategy::Dynamic, vec![template]).intensity(1, 60);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();

    let started = supervisor
        .start_dynamic_child(codec::encode("declined").unwrap(), Some("declined".into()))
        .await
        .unwrap();
    assert!(started.is_none(), "OTP's {{ok, undefined}}");
    assert_eq!(supervisor.count_children().await.unwrap().workers, 0);

    switch.set(Mode::Start);
    let child = supervisor
        .start_dynamic_child(codec::encode("d1").unwrap(), Some("d1".into()))
        .await
        .unwrap()
        .expect("started");
    assert_eq!(supervisor.count_children().await.unwrap().workers, 1);
    switch.set(Mode::Ignore);
    child.actor().unwrap().kill();
    assert!(
        eventually_async(DEADLINE, || async {
            supervisor.count_children().await.unwrap().workers == 0
        })
        .await,
        "the child whose restart declined is removed"
    );
    assert!(
        supervisor.exit_reason().is_none(),
        "the supervisor stays up"
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn one_for_all_restarts_terminated_children_too_but_not_temporary_ones() {
    let runtime = Runtime::new();
    let journal = journal();
    let spec = SupervisorSpec::new(
        Strategy::OneForAll,
        vec![
            recorder_child(&journal, "first"),
            recorder_child(&journal, "parked"),
            recorder_child(&journal, "passing").restart(Restart::Temporary),
            recorder_child(&journal, "last"),
        ],
    )
    .intensity(10, 60);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    supervisor
        .terminate_child(ChildKey::Id("parked".to_owned()))
        .await
        .unwrap();
    assert!(runtime.whereis("parked").is_none());

    let first = runtime.whereis("first").unwrap();
    first.kill();
    assert!(
        eventually(DEADLINE, || runtime.whereis("parked").is_some()).await,
        "one_for_all restarts the terminated child as OTP does"
    );
    assert!(
        eventually(DEADLINE, || runtime
            .whereis("first")
            .is_some_and(|actor| actor != first))
        .await
    );
    assert_eq!(
        ids(&supervisor).await,
        vec!["first", "parked", "last"],
        "the temporary child was stopped and its spec dropped"
    );
    assert!(runtime.whereis("passing").is_none());
    let starts = entries(&journal)
        .iter()
        .filter(|entry| *entry == "start passing")
        .count();
    assert_eq!(starts, 1, "the temporary child is not restarted");
    supervisor.shutdown().await;
}

/// A parent with one nested supervisor (`inner`, intensity 0) of restart type `restart`.
async fn parent_of_a_fragile_supervisor(
    runtime: &Runtime,
    journal: &Journal,
    restart: Restart,
) -> (SupervisorRef, SupervisorRef) {
    let inner = SupervisorSpec::new(Strategy::OneForOne, vec![recorder_child(journal, "leaf")])
        .named("inner")
        .intensity(0, 60);
    let parent = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![ChildSpec::supervisor("inner", inner).restart(restart)],
    )
    .intensity(5, 60);
    let parent = start_supervisor(runtime, parent).await.unwrap();
    let inner = runtime.supervisor("inner").unwrap();
    (parent, inner)
}

#[tokio::test]
async fn reaching_the_restart_intensity_exits_with_shutdown_so_only_a_permanent_parent_restarts() {
    // Transient parent entry: a shutdown is a clean exit, not restarted.
    let runtime = Runtime::new();
    let journal = journal();
    let (parent, inner) =
        parent_of_a_fragile_supervisor(&runtime, &journal, Restart::Transient).await;
    runtime.whereis("leaf").unwrap().kill();
    assert_eq!(
        inner.exited().await,
        StopReason::Shutdown(Some(REACHED_MAXIMUM_INTENSITY.to_owned()))
    );
    assert!(
        eventually_async(DEADLINE, || async {
            state_of(&parent, "inner").await == Some(ChildState::Stopped)
        })
        .await
    );
    assert!(runtime.supervisor("inner").is_none());
    assert!(
        runtime.whereis("leaf").is_none(),
        "its children were stopped"
    );
    assert!(parent.exit_reason().is_none());
    parent.shutdown().await;

    // Permanent parent entry: restarted.
    let runtime = Runtime::new();
    let (parent, inner) =
        parent_of_a_fragile_supervisor(&runtime, &journal, Restart::Permanent).await;
    runtime.whereis("leaf").unwrap().kill();
    assert!(inner.exited().await.is_clean());
    assert!(
        eventually(DEADLINE, || runtime
            .supervisor("inner")
            .is_some_and(|again| again.id() != inner.id()))
        .await,
        "a permanent parent restarts it"
    );
    assert!(eventually(DEADLINE, || runtime.whereis("leaf").is_some()).await);
    parent.shutdown().await;
}

#[tokio::test]
async fn an_update_with_duplicate_ids_or_without_one_template_is_refused_and_changes_nothing() {
    let runtime = Runtime::new();
    let journal = journal();
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![recorder_child(&journal, "a"), recorder_child(&journal, "b")],
    );
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let duplicate = SupervisorSpec::new(
        Strategy::OneForAll,
        vec![
            recorder_child(&journal, "a"),
            recorder_child(&journal, "new"),
            recorder_child(&journal, "new"),
        ],
    );
    assert_eq!(
        supervisor
            .update(SupervisorUpdate::from(duplicate))
            .await
            .unwrap_err(),
        SupervisorError::InvalidSpec(SpecError::DuplicateChildId("new".to_owned()))
    );
    assert_eq!(ids(&supervisor).await, vec!["a", "b"]);
    supervisor.shutdown().await;

    let template = ChildSpec::worker("worker", recorder(&journal), Vec::new());
    let dynamic = SupervisorSpec::new(Strategy::Dynamic, vec![template.clone()]);
    let supervisor = start_supervisor(&runtime, dynamic).await.unwrap();
    for children in [vec![], vec![template.clone(), template.clone()]] {
        let found = children.len();
        let update = SupervisorUpdate::from(SupervisorSpec::new(Strategy::Dynamic, children));
        assert_eq!(
            supervisor.update(update).await.unwrap_err(),
            SupervisorError::InvalidSpec(SpecError::TemplateCount { found })
        );
    }
    // The template is still there: starting a child works, the task did not panic.
    let child = supervisor
        .start_dynamic_child(codec::encode("w").unwrap(), None)
        .await
        .unwrap();
    assert!(child.is_some());
    assert!(supervisor.exit_reason().is_none());
    supervisor.shutdown().await;
}

/// A recorder factory whose `max_mailbox` (asked by the supervisor, in its own task,
/// before each start) panics once when armed: third-party code the task cannot vouch for.
struct Panicky {
    armed: AtomicBool,
    inner: Arc<dyn BehaviourFactory>,
}

impl BehaviourFactory for Panicky {
    fn start(&self, args: &[u8], services: &dyn HostServices) -> Result<Started, CallbackError> {
        self.inner.start(args, services)
    }

    fn identity(&self) -> Option<PluginIdentity> {
        None
    }

    fn max_mailbox(&self, from_spec: Option<usize>) -> Option<usize> {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("the factory exploded");
        }
        from_spec
    }
}

#[tokio::test]
async fn a_panicking_supervisor_task_stops_its_children_and_tells_its_parent() {
    let runtime = Runtime::new();
    let journal = journal();
    let panicky = Arc::new(Panicky {
        armed: AtomicBool::new(false),
        inner: recorder(&journal),
    });
    let fragile = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            recorder_child(&journal, "bystander"),
            ChildSpec::worker(
                "bomb",
                Arc::clone(&panicky) as Arc<dyn BehaviourFactory>,
                codec::encode("bomb").unwrap(),
            )
            .named("bomb"),
        ],
    )
    .named("fragile")
    .intensity(5, 60);
    let parent = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![ChildSpec::supervisor("fragile", fragile)],
    )
    .intensity(5, 60);
    let parent = start_supervisor(&runtime, parent).await.unwrap();
    let first = runtime.supervisor("fragile").unwrap();

    panicky.armed.store(true, Ordering::SeqCst);
    runtime.whereis("bomb").unwrap().kill();
    let reason = tokio::time::timeout(DEADLINE, first.exited())
        .await
        .expect("the panicked supervisor finished");
    assert_eq!(
        reason,
        StopReason::Error("supervisor panicked: the factory exploded".to_owned())
    );
    assert_eq!(
        first.which_children().await.unwrap_err(),
        SupervisorError::Exited(reason.clone())
    );
    assert!(
        entries(&journal).contains(&"terminate bystander shutdown".to_owned()),
        "the children it left were stopped: {:?}",
        entries(&journal)
    );
    // The parent heard (an abnormal exit) and restarted it.
    assert!(
        eventually(DEADLINE, || runtime
            .supervisor("fragile")
            .is_some_and(|again| again.id() != first.id()))
        .await
    );
    assert!(eventually(DEADLINE, || runtime.whereis("bomb").is_some()).await);
    let restarts = parent
        .which_child(ChildKey::Id("fragile".to_owned()))
        .await
        .unwrap()
        .restarts;
    assert_eq!(restarts, 1);
    parent.shutdown().await;
}

#[tokio::test]
async fn child_operations_answer_as_otp_does() {
    let runtime = Runtime::new();
    let journal = journal();
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![recorder_child(&journal, "a"), recorder_child(&journal, "b")],
    );
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let a = runtime.whereis("a").unwrap();

    // A static supervisor names children by id: a process id is not found.
    assert!(matches!(
        supervisor
            .terminate_child(ChildKey::Process(a.id()))
            .await
            .unwrap_err(),
        SupervisorError::NotFound(_)
    ));
    assert!(a.is_alive(), "the child keeps running");

    assert_eq!(
        supervisor
            .start_child(recorder_child(&journal, "a"))
            .await
            .unwrap_err(),
        SupervisorError::AlreadyStarted("a".to_owned())
    );
    supervisor
        .terminate_child(ChildKey::Id("b".to_owned()))
        .await
        .unwrap();
    assert_eq!(
        supervisor
            .start_child(recorder_child(&journal, "b"))
            .await
            .unwrap_err(),
        SupervisorError::AlreadyPresent("b".to_owned())
    );

    // Stopping an actor that is already gone: no such process.
    let b = {
        supervisor.restart_child("b").await.unwrap();
        runtime.whereis("b").unwrap()
    };
    supervisor
        .terminate_child(ChildKey::Id("b".to_owned()))
        .await
        .unwrap();
    let error = b
        .try_stop(StopReason::Normal, Some(SECOND))
        .await
        .unwrap_err();
    assert_eq!(error.reason, StopReason::Shutdown(None));
    assert!(error.to_string().contains("no such process"), "{error}");
    assert_eq!(
        a.try_stop(StopReason::Normal, Some(SECOND)).await,
        Ok(StopReason::Normal)
    );
    supervisor.shutdown().await;
}

#[tokio::test]
async fn significant_children_are_checked_as_otp_checks_them() {
    let runtime = Runtime::new();
    let journal = journal();
    let significant = || {
        recorder_child(&journal, "s")
            .restart(Restart::Transient)
            .significant(true)
    };
    let never = SupervisorSpec::new(Strategy::OneForOne, vec![significant()]);
    assert_eq!(
        start_supervisor(&runtime, never).await.unwrap_err(),
        SupervisorError::InvalidSpec(SpecError::SignificantWithoutAutoShutdown("s".into()))
    );
    let permanent = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![significant().restart(Restart::Permanent)],
    )
    .auto_shutdown(AutoShutdown::AnySignificant);
    assert_eq!(
        start_supervisor(&runtime, permanent).await.unwrap_err(),
        SupervisorError::InvalidSpec(SpecError::SignificantPermanent("s".into()))
    );
    assert!(runtime.whereis("s").is_none(), "nothing was started");

    let plain = start_supervisor(&runtime, SupervisorSpec::new(Strategy::OneForOne, vec![]))
        .await
        .unwrap();
    assert_eq!(
        plain.start_child(significant()).await.unwrap_err(),
        SupervisorError::InvalidSpec(SpecError::SignificantWithoutAutoShutdown("s".into()))
    );
    // An update to `never` that keeps a significant child is refused.
    let any = start_supervisor(
        &runtime,
        SupervisorSpec::new(Strategy::OneForOne, vec![significant()])
            .auto_shutdown(AutoShutdown::AnySignificant),
    )
    .await
    .unwrap();
    let error = any
        .update(SupervisorUpdate::from(SupervisorSpec::new(
            Strategy::OneForOne,
            vec![],
        )))
        .await
        .unwrap_err();
    assert_eq!(
        error,
        SupervisorError::InvalidSpec(SpecError::SignificantWithoutAutoShutdown("s".into()))
    );
    let spec = any.get_childspec(ChildKey::Id("s".into())).await.unwrap();
    assert!(spec.significant && spec.restart == Restart::Transient);
    any.shutdown().await;
    plain.shutdown().await;
}

#[tokio::test]
async fn any_significant_shuts_down_when_a_significant_child_exits_for_good() {
    let runtime = Runtime::new();
    let journal = journal();
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            recorder_child(&journal, "other"),
            recorder_child(&journal, "main")
                .restart(Restart::Transient)
                .significant(true),
        ],
    )
    .auto_shutdown(AutoShutdown::AnySignificant)
    .intensity(5, 60);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();

    // A crash is restarted (transient): no shutdown.
    let main = runtime.whereis("main").unwrap();
    let _ = main.call(codec::encode("crash").unwrap(), SECOND).await;
    assert!(
        eventually(DEADLINE, || runtime
            .whereis("main")
            .is_some_and(|again| again != main))
        .await
    );
    assert!(supervisor.exit_reason().is_none());

    // A normal exit is for good: the supervisor stops its children and itself.
    stop_normally(&runtime, "main").await;
    let reason = tokio::time::timeout(DEADLINE, supervisor.exited())
        .await
        .unwrap();
    assert!(
        matches!(&reason, StopReason::Shutdown(Some(info)) if info.contains("main")),
        "{reason:?}"
    );
    assert!(entries(&journal).contains(&"terminate other shutdown".to_owned()));
    assert!(runtime.whereis("other").is_none());
}

#[tokio::test]
async fn all_significant_shuts_down_when_the_last_significant_child_is_gone() {
    let runtime = Runtime::new();
    let journal = journal();
    let temporary = |id: &str| {
        recorder_child(&journal, id)
            .restart(Restart::Temporary)
            .significant(true)
    };
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            recorder_child(&journal, "other"),
            temporary("s1"),
            temporary("s2"),
        ],
    )
    .auto_shutdown(AutoShutdown::AllSignificant);
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    stop_normally(&runtime, "s1").await;
    assert!(
        eventually_async(DEADLINE, || async {
            ids(&supervisor).await == vec!["other", "s2"]
        })
        .await
    );
    assert!(supervisor.exit_reason().is_none(), "s2 is still running");
    // A temporary child's crash is an exit for good too.
    let s2 = runtime.whereis("s2").unwrap();
    let _ = s2.call(codec::encode("crash").unwrap(), SECOND).await;
    let reason = tokio::time::timeout(DEADLINE, supervisor.exited())
        .await
        .unwrap();
    assert!(reason.is_clean(), "{reason:?}");
    assert!(runtime.whereis("other").is_none());

    // A dynamic supervisor: when its last (significant) child is gone.
    let template = ChildSpec::worker("worker", recorder(&journal), Vec::new())
        .restart(Restart::Temporary)
        .significant(true);
    let dynamic = SupervisorSpec::new(Strategy::Dynamic, vec![template])
        .auto_shutdown(AutoShutdown::AllSignificant);
    let supervisor = start_supervisor(&runtime, dynamic).await.unwrap();
    for name in ["d1", "d2"] {
        supervisor
            .start_dynamic_child(codec::encode(name).unwrap(), Some(name.to_owned()))
            .await
            .unwrap();
    }
    stop_normally(&runtime, "d1").await;
    assert!(
        eventually_async(DEADLINE, || async {
            supervisor.count_children().await.unwrap().workers == 1
        })
        .await
    );
    assert!(supervisor.exit_reason().is_none());
    stop_normally(&runtime, "d2").await;
    let reason = tokio::time::timeout(DEADLINE, supervisor.exited())
        .await
        .unwrap();
    assert!(reason.is_clean(), "{reason:?}");
}

#[tokio::test]
async fn which_child_get_childspec_and_count_children() {
    let runtime = Runtime::new();
    let journal = journal();
    let nested = SupervisorSpec::new(Strategy::OneForOne, vec![]);
    let spec = SupervisorSpec::new(
        Strategy::OneForOne,
        vec![
            recorder_child(&journal, "a").restart(Restart::Transient),
            ChildSpec::supervisor("nested", nested),
        ],
    );
    let supervisor = start_supervisor(&runtime, spec).await.unwrap();
    let a = supervisor
        .which_child(ChildKey::Id("a".into()))
        .await
        .unwrap();
    assert_eq!(
        (a.state, a.restart, a.supervisor, a.name.as_deref()),
        (ChildState::Running, Restart::Transient, false, Some("a"))
    );
    assert_eq!(
        a.process,
        Some(runtime.whereis("a").unwrap().id().0),
        "its process"
    );
    assert!(matches!(
        supervisor
            .which_child(ChildKey::Id("nope".into()))
            .await
            .unwrap_err(),
        SupervisorError::NotFound(_)
    ));
    let spec = supervisor
        .get_childspec(ChildKey::Id("a".into()))
        .await
        .unwrap();
    assert_eq!((spec.id.as_str(), spec.restart), ("a", Restart::Transient));
    assert!(matches!(
        supervisor
            .get_childspec(ChildKey::Id("nope".into()))
            .await
            .unwrap_err(),
        SupervisorError::NotFound(_)
    ));
    let counts = supervisor.count_children().await.unwrap();
    assert_eq!(
        (
            counts.specs,
            counts.active,
            counts.supervisors,
            counts.workers
        ),
        (2, 2, 1, 1)
    );
    supervisor.shutdown().await;

    // A dynamic child: found by process, its spec carries its own arguments and name.
    let template = ChildSpec::worker("worker", recorder(&journal), Vec::new());
    let dynamic = start_supervisor(
        &runtime,
        SupervisorSpec::new(Strategy::Dynamic, vec![template]),
    )
    .await
    .unwrap();
    let child = dynamic
        .start_dynamic_child(codec::encode("d").unwrap(), Some("d".into()))
        .await
        .unwrap()
        .unwrap();
    let spec = dynamic
        .get_childspec(ChildKey::Process(child.id()))
        .await
        .unwrap();
    assert_eq!(spec.id, "d");
    let info = dynamic
        .which_child(ChildKey::Process(child.id()))
        .await
        .unwrap();
    assert_eq!(
        (info.state, info.process),
        (ChildState::Running, Some(child.id().0))
    );
    dynamic.shutdown().await;
}

/// `graft status` (the control plane's report): a child in a restart loop shows as
/// `restarting`, and each supervisor carries its `count_children`.
#[tokio::test]
async fn status_shows_restarting_children_and_each_supervisors_counts() {
    let text = "[release]\nname = \"otp-supervisors\"\nversion = \"1.0.0\"\n\n\
                [plugins.counter]\nversion = \"1.0.0\"\ncrate = \"plugins/counter/1.0.0\"\n\n\
                [supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 4000000000\nmax_seconds = 60\n\n\
                [[supervisor.children]]\nid = \"contested\"\nplugin = \"counter\"\nargs = { start = 0 }\n\n\
                [[supervisor.children]]\nid = \"steady\"\nplugin = \"counter\"\nargs = { start = 0 }\n";
    let root = assembled_root(&[("1.0.0", text.to_owned())]);
    let (runtime, handler) = boot(root.path()).await;
    // An outsider takes the child's name once it is killed: every restart fails until the
    // outsider goes. (The supervisor may win a race for the name: then kill it again.)
    let journal = journal();
    let squatter = loop {
        if let Some(actor) = runtime.whereis("contested") {
            actor.kill();
        }
        let options = ActorOptions::new(recorder(&journal), codec::encode("squatter").unwrap())
            .named("contested");
        if let Ok(actor) = runtime.spawn(options).await {
            break actor;
        }
    };
    let contested = |status: &serde_json::Value| {
        status["tree"]["children"]
            .as_array()
            .and_then(|children| children.iter().find(|child| child["id"] == "contested"))
            .map(|child| child["state"].clone())
    };
    let mut status = serde_json::Value::Null;
    let deadline = std::time::Instant::now() + DEADLINE;
    while contested(&status) != Some(serde_json::json!("restarting")) {
        assert!(
            std::time::Instant::now() < deadline,
            "never restarting: {status}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        status = graft::control::status(&handler).await;
    }
    assert_eq!(
        status["tree"]["counts"],
        serde_json::json!({"specs": 2, "active": 1, "supervisors": 0, "workers": 2}),
        "{status}"
    );
    squatter.kill();
    assert!(
        eventually_async(DEADLINE, || async {
            contested(&graft::control::status(&handler).await) == Some(serde_json::json!("running"))
        })
        .await
    );
    handler.shutdown().await;
}
