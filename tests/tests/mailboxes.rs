//! Bounded mailboxes (issue 10, "Mailboxes"), end to end with real plugin libraries: a
//! child's `max_mailbox` from `release.toml` refuses casts and calls to the sender at once
//! with an error naming the actor and the limit (in process, in a worker process, and
//! through `graft cast`/`graft call`, which exit non-zero); system messages — suspend,
//! resume, state, status, an install that changes code, a stop — still reach a full
//! mailbox; `status` shows the length, the high-water mark and the bound (also for an
//! actor busy in a long callback); the count is exact under concurrent senders; a bad
//! `max_mailbox` is a manifest error naming the field; and the memory of a drained flood
//! of 300k casts is returned to the OS.
//!
//! The tests of this file run one at a time (one lock): the memory test reads this
//! process's resident size, which the others would disturb.

use graft::release::assemble::assemble;
use graft::runtime::{ActorOptions, ActorRef, CallError, PluginFactory, Runtime, SendError};
use graft_plugin::{StopReason, codec};
use graft_tests::{
    Host, assembled_root, boot, eventually, eventually_blocking, graft_binary, load_plugin,
    run_graft as graft, stderr_text as stderr, succeed_graft, version, workspace_root,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Generous: the machine running these may be loaded.
const PATIENCE: Duration = Duration::from_secs(60);

/// Held by every test of this file.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn encode(value: &Value) -> Vec<u8> {
    codec::encode(value).unwrap()
}

/// A release of counter `counter_version` (child `counter`, bounded at `max_mailbox`) and
/// kv 1.0.0 (child `kv`, unbounded); from 1.1.0 on, an upgrade from 1.0.0 that updates
/// the counter (suspend, change_code, resume).
fn release(release_version: &str, counter_version: &str, max_mailbox: usize) -> String {
    let mut text = format!(
        "[release]\nname = \"mailboxes\"\nversion = \"{release_version}\"\n\n\
         [plugins.counter]\nversion = \"{counter_version}\"\ncrate = \"plugins/counter/{counter_version}\"\n\n\
         [plugins.kv]\nversion = \"1.0.0\"\ncrate = \"plugins/kv/1.0.0\"\n\n\
         [supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 5\nmax_seconds = 10\n\n\
         [[supervisor.children]]\nid = \"counter\"\nplugin = \"counter\"\nargs = {{ start = 0 }}\nmax_mailbox = {max_mailbox}\n\n\
         [[supervisor.children]]\nid = \"kv\"\nplugin = \"kv\"\n"
    );
    if release_version != "1.0.0" {
        text.push_str(
            "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\nplugin = \"counter\"\nmode = \"advanced\"\n\n\
             [[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\nop = \"update\"\nplugin = \"counter\"\nmode = \"advanced\"\n",
        );
    }
    text
}

/// The entry of actor `id` in `status` JSON (children of the root supervisor).
fn entry<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|child| child["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {status}"))
}

/// What status shows of a mailbox, in order.
const MAILBOX_FIGURES: [&str; 5] = [
    "state",
    "mailbox",
    "mailbox_high_water",
    "max_mailbox",
    "mailbox_refused",
];

/// The named fields of actor `id`'s entry in a status report, as one JSON array.
fn figures(status: &Value, id: &str, fields: &[&str]) -> Value {
    let shown = entry(status, id);
    Value::Array(fields.iter().map(|field| shown[*field].clone()).collect())
}

const FULL: &str = "mailbox of actor counter is full (max_mailbox = 3)";

/// Over `max_mailbox`, a cast and a call are refused at once, with the actor and the limit;
/// `ActorRef::cast` (which cannot fail) drops and counts; status shows length, high-water
/// mark, bound and refusals. The full mailbox still takes system messages: state, status,
/// and a whole install that suspends, migrates and resumes the counter; afterwards every
/// message that was accepted has run, none that was refused has, and the running actor
/// has the new release's bound.
#[tokio::test]
async fn a_full_mailbox_refuses_casts_and_calls_but_not_system_messages() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let root = assembled_root(&[
        ("1.0.0", release("1.0.0", "1.0.0", 3)),
        ("1.1.0", release("1.1.0", "1.1.0", 5)),
    ]);
    let (runtime, handler) = boot(root.path()).await;
    let counter = runtime.whereis("counter").unwrap();
    assert_eq!(counter.max_mailbox(), Some(3));
    assert_eq!(runtime.whereis("kv").unwrap().max_mailbox(), None);

    counter.suspend(PATIENCE).await.unwrap();
    for _ in 0..3 {
        runtime.cast("counter", encode(&json!({"Add": 1}))).unwrap();
    }
    let refused = runtime
        .cast("counter", encode(&json!({"Add": 100})))
        .unwrap_err();
    assert!(matches!(refused, SendError::Refused(_)), "{refused:?}");
    assert_eq!(refused.to_string(), FULL);
    assert_eq!(
        counter
            .try_cast(encode(&json!({"Add": 100})))
            .unwrap_err()
            .to_string(),
        FULL
    );
    // A call that waited would time out only after a minute: refused, it fails at once.
    let call = runtime
        .call("counter", encode(&json!("Get")), PATIENCE)
        .await
        .unwrap_err();
    assert_eq!(
        call,
        CallError::MailboxFull {
            actor: "counter".to_owned(),
            limit: 3
        }
    );
    assert_eq!(call.to_string(), FULL);
    assert!(
        runtime
            .send_info("counter", encode(&json!({"Add": 100})))
            .is_err()
    );
    // The cast that cannot fail drops the message and counts it.
    counter.cast(encode(&json!({"Add": 100})));
    assert_eq!(counter.mailbox_refused(), 5);
    assert_eq!(counter.mailbox_length(), 3);

    // System messages reach the full mailbox.
    assert_eq!(counter.get_state(PATIENCE).await.unwrap()["count"], 0);
    let status = graft::control::status(&handler).await;
    assert_eq!(
        figures(&status, "counter", &MAILBOX_FIGURES),
        json!(["suspended", 3, 3, 3, 5])
    );
    let kv = entry(&status, "kv");
    assert_eq!(
        (&kv["max_mailbox"], &kv["mailbox"]),
        (&Value::Null, &json!(0))
    );
    // The live report parses back as the client's type, unchanged.
    let typed: graft::control::protocol::StatusResponse =
        graft::control::protocol::parse(status.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), status);

    // An install suspends, migrates and resumes the counter through its full mailbox.
    let report = handler
        .install(&version("1.1.0"), None)
        .await
        .unwrap_or_else(|error| panic!("install on a full mailbox: {error}"));
    assert_eq!(report.to, version("1.1.0"));
    assert!(eventually(PATIENCE, || counter.mailbox_length() == 0).await);
    assert_eq!(counter.get_state(PATIENCE).await.unwrap()["count"], 3);
    assert_eq!(counter.code_label(), "counter 1.1.0");
    // The target release's bound applies to the running actor too.
    assert_eq!(counter.max_mailbox(), Some(5));
    let status = graft::control::status(&handler).await;
    assert_eq!(
        figures(&status, "counter", &MAILBOX_FIGURES[..4]),
        json!(["running", 0, 3, 5])
    );
    // Room again: accepted.
    runtime.cast("counter", encode(&json!({"Add": 1}))).unwrap();
    // A restart after the install takes the target's bound, not the boot spec's.
    counter.kill();
    assert!(
        eventually(PATIENCE, || runtime
            .whereis("counter")
            .is_some_and(|restarted| restarted.id() != counter.id()))
        .await,
        "counter was not restarted"
    );
    assert_eq!(runtime.whereis("counter").unwrap().max_mailbox(), Some(5));
    handler.shutdown().await;
}

/// An actor busy in a long callback cannot answer `status` in time; its entry still shows
/// the mailbox figures, which the senders count, and the bound still refuses.
#[tokio::test]
async fn a_busy_actor_shows_its_mailbox_in_status() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let text = "[release]\nname = \"busy\"\nversion = \"1.0.0\"\n\n\
                [plugins.faulty]\nversion = \"0.3.0\"\ncrate = \"tests/fixtures/faulty\"\ncallback_timeout_ms = 120000\n\n\
                [supervisor]\nstrategy = \"one_for_one\"\n\n\
                [[supervisor.children]]\nid = \"slow\"\nplugin = \"faulty\"\nargs = {}\nmax_mailbox = 2\n";
    let root = assembled_root(&[("1.0.0", text.to_owned())]);
    let (runtime, handler) = boot(root.path()).await;
    let slow = runtime.whereis("slow").unwrap();
    let sleeping = {
        let slow = slow.clone();
        tokio::spawn(async move {
            slow.call(encode(&json!({"Sleep": {"ms": 10_000}})), PATIENCE)
                .await
        })
    };
    // The call is taken up (the mailbox is empty again) and its callback sleeps.
    assert!(
        eventually(PATIENCE, || slow.mailbox_high_water() == 1
            && slow.mailbox_length() == 0)
        .await
    );
    runtime.cast("slow", encode(&json!("one"))).unwrap();
    runtime.cast("slow", encode(&json!("two"))).unwrap();
    assert_eq!(
        runtime
            .cast("slow", encode(&json!("three")))
            .unwrap_err()
            .to_string(),
        "mailbox of actor slow is full (max_mailbox = 2)"
    );
    let status = graft::control::status(&handler).await;
    assert_eq!(
        figures(&status, "slow", &MAILBOX_FIGURES),
        json!(["busy", 2, 2, 2, 1])
    );
    sleeping.await.unwrap().unwrap();
    assert!(eventually(PATIENCE, || slow.mailbox_length() == 0).await);
    handler.shutdown().await;
}

async fn counter_actor(
    runtime: &Runtime,
    name: &str,
    options: impl Fn(ActorOptions) -> ActorOptions,
) -> ActorRef {
    plugin_actor(runtime, "counter-1-0-0", name, json!({"start": 0}), options).await
}

async fn plugin_actor(
    runtime: &Runtime,
    package: &str,
    name: &str,
    args: Value,
    options: impl Fn(ActorOptions) -> ActorOptions,
) -> ActorRef {
    let factory = Arc::new(PluginFactory::new(load_plugin(package)));
    runtime
        .spawn(options(
            ActorOptions::new(factory, encode(&args)).named(name),
        ))
        .await
        .unwrap()
}

/// A stop is never refused: a full, suspended actor stops with `terminate` when asked.
#[tokio::test]
async fn a_full_mailbox_still_stops() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let runtime = Runtime::new();
    let counter = counter_actor(&runtime, "full", |options| options.max_mailbox(1)).await;
    counter.suspend(PATIENCE).await.unwrap();
    counter.try_cast(encode(&json!({"Add": 1}))).unwrap();
    assert!(counter.try_cast(encode(&json!({"Add": 1}))).is_err());
    let reason = counter
        .stop(StopReason::Shutdown(None), Some(PATIENCE))
        .await;
    assert_eq!(reason, StopReason::Shutdown(None));
}

/// The bound is exact under concurrent senders: four threads each try 600 casts into a
/// suspended actor bounded at 1000; exactly 1000 are accepted, the other 1400 refused,
/// and the length never passes the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_never_pass_the_bound() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let runtime = Runtime::new();
    let counter = counter_actor(&runtime, "contended", |options| options.max_mailbox(1000)).await;
    counter.suspend(PATIENCE).await.unwrap();
    let accepted: usize = std::thread::scope(|scope| {
        let senders: Vec<_> = (0..4)
            .map(|_| {
                let counter = counter.clone();
                scope.spawn(move || {
                    (0..600)
                        .filter(|_| counter.try_cast(encode(&json!({"Add": 1}))).is_ok())
                        .count()
                })
            })
            .collect();
        senders
            .into_iter()
            .map(|sender| sender.join().unwrap())
            .sum()
    });
    assert_eq!(accepted, 1000);
    let status = counter.status(PATIENCE).await.unwrap();
    assert_eq!(
        (
            status.mailbox_length,
            status.mailbox_high_water,
            status.mailbox_refused
        ),
        (1000, 1000, 1400)
    );
    counter.resume(PATIENCE).await.unwrap();
    assert!(eventually(PATIENCE, || counter.mailbox_length() == 0).await);
    assert_eq!(counter.get_state(PATIENCE).await.unwrap()["count"], 1000);
}

/// A plugin's `ctx.cast` to a full mailbox is refused (`ContextError::Refused` naming the
/// actor; the plugin ABI carries no reason text): the `startup` ticker, whose notice to a
/// full kv is refused, stops with that error, and kv counts the refusal.
#[tokio::test]
async fn a_plugin_casting_to_a_full_mailbox_is_told() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let runtime = Runtime::new();
    let sink = plugin_actor(&runtime, "kv-1-0-0", "sink", Value::Null, |options| {
        options.max_mailbox(1)
    })
    .await;
    sink.suspend(PATIENCE).await.unwrap();
    sink.try_cast(encode(&json!({"Put": {"key": "a", "value": "1"}})))
        .unwrap();
    let factory = Arc::new(PluginFactory::new(load_plugin("ticker-1-0-0")));
    // Its one-time work runs as a continuation, after it has started.
    let startup = runtime
        .spawn(
            ActorOptions::new(
                factory,
                encode(&json!({"role": "startup", "notify": "sink"})),
            )
            .named("startup"),
        )
        .await
        .unwrap();
    let error = tokio::time::timeout(PATIENCE, startup.exited())
        .await
        .expect("the startup task ends")
        .to_string();
    assert!(error.contains("message refused: sink"), "{error}");
    assert_eq!((sink.mailbox_length(), sink.mailbox_refused()), (1, 1));
}

/// The high-water mark is the longest the mailbox has been since the actor started: it
/// stays after the mailbox drains.
#[tokio::test]
async fn the_high_water_mark_is_the_longest_the_mailbox_has_been() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let runtime = Runtime::new();
    let counter = counter_actor(&runtime, "marked", |options| options).await;
    assert_eq!(counter.max_mailbox(), None);
    counter.suspend(PATIENCE).await.unwrap();
    for _ in 0..100 {
        counter.cast(encode(&json!({"Add": 1})));
    }
    let status = counter.status(PATIENCE).await.unwrap();
    assert_eq!(
        (
            status.mailbox_length,
            status.mailbox_high_water,
            status.max_mailbox
        ),
        (100, 100, None)
    );
    counter.resume(PATIENCE).await.unwrap();
    assert!(eventually(PATIENCE, || counter.mailbox_length() == 0).await);
    for _ in 0..10 {
        counter.cast(encode(&json!({"Add": 1})));
    }
    assert!(eventually(PATIENCE, || counter.mailbox_length() == 0).await);
    let status = counter.status(PATIENCE).await.unwrap();
    assert_eq!(
        (
            status.mailbox_length,
            status.mailbox_high_water,
            status.mailbox_refused
        ),
        (0, 100, 0)
    );
    assert_eq!(counter.get_state(PATIENCE).await.unwrap()["count"], 110);
}

/// `max_mailbox` of 0, negative, a string or a fraction, or on a supervisor, is refused
/// when the release is built, naming the manifest and the field.
#[test]
fn a_bad_max_mailbox_is_a_manifest_error_naming_the_field() {
    let _serial = ONE_AT_A_TIME.blocking_lock();
    let good = release("1.0.0", "1.0.0", 3);
    let cases = [
        (
            good.replace("max_mailbox = 3", "max_mailbox = 0"),
            "supervisor.children[0].max_mailbox: expected a positive number of messages, found 0",
        ),
        (
            good.replace("max_mailbox = 3", "max_mailbox = -5"),
            "supervisor.children[0].max_mailbox: expected a positive number of messages, found -5",
        ),
        (
            good.replace("max_mailbox = 3", "max_mailbox = \"many\""),
            "max_mailbox as a positive whole number of messages",
        ),
        (
            good.replace("max_mailbox = 3", "max_mailbox = 2.5"),
            "max_mailbox as a positive whole number of messages",
        ),
        (
            good.replace(
                "[[supervisor.children]]\nid = \"kv\"",
                "[[supervisor.children]]\nid = \"group\"\nstrategy = \"one_for_one\"\nmax_mailbox = 10\n\n\
                 [[supervisor.children.children]]\nid = \"inner\"\nplugin = \"kv\"\n\n\
                 [[supervisor.children]]\nid = \"kv\"",
            ),
            "supervisor.children[1].max_mailbox: a supervisor (with `strategy`) has no mailbox",
        ),
    ];
    for (text, expected) in cases {
        let sources = tempfile::tempdir().unwrap();
        let manifest = sources.path().join("release.toml");
        std::fs::write(&manifest, &text).unwrap();
        let root = tempfile::tempdir().unwrap();
        let error = assemble(&manifest, &workspace_root(), root.path(), false)
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
            .to_string();
        assert!(
            error.contains(expected) && error.contains(&manifest.display().to_string()),
            "expected {expected:?} and the manifest's path in: {error}"
        );
        if expected.starts_with("max_mailbox") {
            let line = 1 + text
                .lines()
                .position(|line| line.starts_with("max_mailbox"))
                .unwrap();
            assert!(
                error.contains(&format!("line {line}")),
                "the line is named: {error}"
            );
        }
    }
}

/// This process's resident set, in bytes.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kibibytes: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|number| number.parse().ok())
        .unwrap();
    kibibytes * 1024
}

const MIB: u64 = 1024 * 1024;

/// 300k casts (of 256 bytes each) to a suspended kv raise the resident size by far over
/// 64 MiB; once it is resumed and its mailbox has drained (every `Put` overwrites one
/// key, so kv itself keeps nothing), the memory is returned: the resident size falls back
/// to within 10% or 20 MiB of where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_of_a_drained_flood_is_returned() {
    let _serial = ONE_AT_A_TIME.lock().await;
    const CASTS: usize = 300_000;
    let runtime = Runtime::new();
    let kv = plugin_actor(&runtime, "kv-1-0-0", "flooded", Value::Null, |options| {
        options
    })
    .await;
    let put =
        |index: usize| encode(&json!({"Put": {"key": "k", "value": format!("{index:0>256}")}}));
    kv.cast(put(0));
    assert!(eventually(PATIENCE, || kv.mailbox_length() == 0).await);
    graft::process::return_free_memory();
    let before = resident_bytes();

    kv.suspend(PATIENCE).await.unwrap();
    for index in 1..=CASTS {
        kv.cast(put(index));
    }
    assert_eq!(kv.mailbox_length(), CASTS);
    // The actor moves what waits to its side queue while suspended; it holds all of it.
    let status = kv.status(PATIENCE).await.unwrap();
    assert_eq!(
        (status.mailbox_length, status.mailbox_high_water),
        (CASTS, CASTS)
    );
    let flooded = resident_bytes();
    assert!(
        flooded > before + 64 * MIB,
        "the flood was expected to take memory: {} MiB before, {} MiB flooded",
        before / MIB,
        flooded / MIB
    );

    kv.resume(PATIENCE).await.unwrap();
    assert!(
        eventually(PATIENCE, || kv.mailbox_length() == 0).await,
        "the mailbox drains: {} left",
        kv.mailbox_length()
    );
    let last = kv
        .call(encode(&json!({"Get": "k"})), PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        codec::decode::<Value>(&last).unwrap(),
        json!(format!("{CASTS:0>256}")),
        "every cast ran, in order"
    );
    let margin = (before / 10).max(20 * MIB);
    let returned = eventually(PATIENCE, || resident_bytes() <= before + margin).await;
    let after = resident_bytes();
    eprintln!(
        "resident: {} MiB before, {} MiB with {CASTS} casts waiting, {} MiB drained",
        before / MIB,
        flooded / MIB,
        after / MIB
    );
    assert!(
        returned,
        "memory not returned: {} MiB before, {} MiB flooded, {} MiB after draining",
        before / MIB,
        flooded / MIB,
        after / MIB
    );
}

/// `graft cast` and `graft call` to a full mailbox of a `graft start` host exit non-zero
/// and say whose mailbox is full and its limit; `graft status` shows the mailbox, its
/// high-water mark, the bound and the refusals; the host carries on.
#[tokio::test]
async fn graft_cast_and_call_to_a_full_mailbox_exit_non_zero() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let root = assembled_root(&[("1.0.0", release("1.0.0", "1.0.0", 3))]);
    let root = root.path();
    let _host = Host::start(root, &[]);

    assert!(succeed_graft(root, &["suspend", "counter"]).contains("counter suspended"));
    for _ in 0..3 {
        succeed_graft(root, &["cast", "counter", r#"{"Add": 1}"#]);
    }
    for args in [
        &["cast", "counter", r#"{"Add": 1}"#][..],
        &["call", "counter", r#""Get""#, "--timeout", "60000"][..],
    ] {
        let output = graft(root, args);
        assert_eq!(output.status.code(), Some(1), "graft {args:?}");
        assert!(
            stderr(&output).contains(FULL),
            "graft {args:?}: {}",
            stderr(&output)
        );
    }

    let text = succeed_graft(root, &["status"]);
    assert!(
        text.contains("mailbox 3 (high-water 3, max 3, 2 refused)"),
        "{text}"
    );
    let status: Value = serde_json::from_str(&succeed_graft(root, &["status", "--json"])).unwrap();
    assert_eq!(
        figures(&status, "counter", &MAILBOX_FIGURES[1..4]),
        json!([3, 3, 3])
    );

    succeed_graft(root, &["resume", "counter"]);
    assert!(
        eventually_blocking(PATIENCE, || succeed_graft(
            root,
            &["call", "counter", r#""Get""#]
        )
        .trim()
            == "3"),
        "the accepted casts ran, the refused one did not"
    );
}

/// Actors of a plugin with `isolation = "process"` keep their mailbox in the host: the
/// bound applies to them as to any other.
#[tokio::test]
async fn the_bound_applies_to_isolated_actors() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // The worker program is the graft binary, found next to the test binary.
    graft_binary();
    let text = release("1.0.0", "1.0.0", 3).replace(
        "[plugins.kv]\nversion = \"1.0.0\"\ncrate = \"plugins/kv/1.0.0\"\n",
        "[plugins.kv]\nversion = \"1.0.0\"\ncrate = \"plugins/kv/1.0.0\"\nisolation = \"process\"\n",
    )
    .replace(
        "id = \"kv\"\nplugin = \"kv\"\n",
        "id = \"kv\"\nplugin = \"kv\"\nmax_mailbox = 2\n",
    );
    let root = assembled_root(&[("1.0.0", text)]);
    let (runtime, handler) = boot(root.path()).await;
    let kv = runtime.whereis("kv").unwrap();
    assert!(
        handler
            .isolated_workers()
            .iter()
            .any(|worker| worker.plugin == "kv"),
        "kv runs in a worker"
    );
    kv.suspend(PATIENCE).await.unwrap();
    let put = |key: &str| encode(&json!({"Put": {"key": key, "value": "v"}}));
    runtime.cast("kv", put("a")).unwrap();
    runtime.cast("kv", put("b")).unwrap();
    assert_eq!(
        runtime.cast("kv", put("c")).unwrap_err().to_string(),
        "mailbox of actor kv is full (max_mailbox = 2)"
    );
    kv.resume(PATIENCE).await.unwrap();
    assert!(eventually(PATIENCE, || kv.mailbox_length() == 0).await);
    let reply = runtime
        .call("kv", encode(&json!("Keys")), PATIENCE)
        .await
        .unwrap();
    assert_eq!(codec::decode::<Value>(&reply).unwrap(), json!(["a", "b"]));
    handler.shutdown().await;
}
