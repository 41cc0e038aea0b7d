//! The ABI evolves for real (issue 12): a plugin built against the frozen ABI 1.0
//! `graft-plugin` (`tests/fixtures/graft-plugin-abi-1.0`, never edited) loads and runs in
//! this host (ABI 1.2), upgrades to a 1.1 build of the same plugin with state migration, and
//! downgrades back with its state intact — in process and process-isolated. ABI 1.1's
//! `health` and `format_status` work on the 1.1 build and are "not implemented" on 1.0.
//! The host reads only the vtable prefix a plugin declares, refuses a plugin of a newer
//! minor with a typed error, and the watch mode's health gate rolls back a release whose
//! actors report themselves unhealthy. The "1.1 build" is built with today's crate, so it
//! declares the current minor (1.2: the host vtable grew, the plugin vtable did not); the
//! same build with a 1.1 header stands for a plugin built with the 1.1 crate, and loads.
//!
//! Fixtures: `tests/fixtures/abi-counter/1.0.0` (state `{ count, secret }`, ABI 1.0) and
//! `tests/fixtures/abi-counter/1.1.0` (state `{ total, additions, secret, unhealthy }`,
//! `health`, `format_status` redacting the secret, `code_change`/`downgrade`).

use graft::plugin::{Detached, Expectations, Instance, LoadError, Loader};
use graft::runtime::Runtime;
use graft::watch::{ReleaseWatch, WatchEvent};
use graft_plugin::{Health, abi, codec};
use graft_tests::{
    assembled_root, boot, call_by_name as call, eventually_async, find_unique, graft_binary,
    plugin_library, version, version_of,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const ABI_1_0: &str = "graft-fixture-abi-counter-1-0-0";
const ABI_1_1: &str = "graft-fixture-abi-counter-1-1-0";
const SYSTEM: Duration = Duration::from_secs(10);
const PATIENCE: Duration = Duration::from_secs(30);
const SECRET: &str = "hunter2";

fn encode(value: &Value) -> Vec<u8> {
    codec::encode(value).unwrap()
}

/// A release of `abi-counter` `plugin_version` (from its fixture crate) with one child,
/// `counter`; `plugin_extra` goes into the plugin's table (`isolation = ...`).
fn release(version: &str, plugin_version: &str, plugin_extra: &str, script: &str) -> String {
    format!(
        "[release]\nname = \"abi\"\nversion = \"{version}\"\n\n\
         [plugins.abi-counter]\nversion = \"{plugin_version}\"\n\
         crate = \"tests/fixtures/abi-counter/{plugin_version}\"\n{plugin_extra}\n\
         [supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 0\n\n\
         [[supervisor.children]]\nid = \"counter\"\nplugin = \"abi-counter\"\n\
         args = {{ start = 40, secret = \"{SECRET}\" }}\n{script}"
    )
}

/// Upgrade from 1.0.0 (1.1.0's `code_change`, with `extra`) and downgrade back to it (1.1.0's
/// `downgrade`).
fn script(extra: &str) -> String {
    format!(
        "\n[[upgrade]]\nfrom = \"1.0.0\"\n\n[[upgrade.instructions]]\nop = \"update\"\n\
         plugin = \"abi-counter\"\nmode = \"advanced\"\n{extra}\n\
         [[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\nop = \"update\"\n\
         plugin = \"abi-counter\"\nmode = \"advanced\"\n"
    )
}

async fn health(runtime: &Runtime) -> Option<Result<Health, String>> {
    let actor = runtime.whereis("counter").expect("counter runs");
    actor.status(SYSTEM).await.unwrap().health
}

async fn shown_state(runtime: &Runtime) -> Value {
    let actor = runtime.whereis("counter").expect("counter runs");
    actor.format_status(SYSTEM).await.unwrap()
}

async fn raw_state(runtime: &Runtime) -> Value {
    let actor = runtime.whereis("counter").expect("counter runs");
    actor.get_state(SYSTEM).await.unwrap()
}

/// Load 1.0.0 → run → upgrade to 1.1.0 (state migrated) → health and format_status →
/// downgrade to 1.0.0 (state intact), with the plugin in process or in a worker.
async fn evolve(plugin_extra: &str) {
    let root = assembled_root(&[
        ("1.0.0", release("1.0.0", "1.0.0", plugin_extra, "")),
        (
            "1.1.0",
            release("1.1.0", "1.1.0", plugin_extra, &script("")),
        ),
    ]);
    let (runtime, handler) = boot(root.path()).await;

    // ABI 1.0 runs: calls and casts.
    assert_eq!(version_of(&runtime, "counter").await, "1.0.0");
    assert_eq!(
        call(&runtime, "counter", json!("Version")).await,
        json!("1.0.0")
    );
    assert_eq!(
        call(&runtime, "counter", json!({"Add": 1})).await,
        json!(41)
    );
    runtime
        .whereis("counter")
        .unwrap()
        .try_cast(encode(&json!({"Add": 1})))
        .unwrap();
    assert_eq!(call(&runtime, "counter", json!("Get")).await, json!(42));
    // ABI 1.0 has neither callback: no health, and the state itself is what is shown.
    assert_eq!(
        health(&runtime).await,
        None,
        "not reported by an ABI 1.0 plugin"
    );
    let state = json!({"count": 42, "secret": SECRET});
    assert_eq!(shown_state(&runtime).await, state);
    assert_eq!(raw_state(&runtime).await, state);

    // Upgrade to the ABI 1.1 build: its code_change migrates the 1.0 state's shape.
    let report = handler.install(&version("1.1.0"), None).await.unwrap();
    assert_eq!(report.actors_migrated, 1);
    assert_eq!(version_of(&runtime, "counter").await, "1.1.0");
    assert_eq!(
        call(&runtime, "counter", json!("Version")).await,
        json!("1.1.0")
    );
    assert_eq!(call(&runtime, "counter", json!("Get")).await, json!(42));
    assert_eq!(
        raw_state(&runtime).await,
        json!({"total": 42, "additions": 0, "secret": SECRET, "unhealthy": null}),
        "the state was migrated to the new shape, secret kept"
    );
    // health: degraded before the first addition, healthy after, unhealthy when told.
    assert_eq!(
        health(&runtime).await,
        Some(Ok(Health::Degraded("no additions yet".to_owned())))
    );
    assert_eq!(
        call(&runtime, "counter", json!({"Add": 3})).await,
        json!(45)
    );
    assert_eq!(health(&runtime).await, Some(Ok(Health::Healthy)));
    call(&runtime, "counter", json!({"SetUnhealthy": "disk full"})).await;
    assert_eq!(
        health(&runtime).await,
        Some(Ok(Health::Unhealthy("disk full".to_owned())))
    );
    // A health check that fails is reported as such (and counts as unhealthy); the actor
    // keeps running.
    call(&runtime, "counter", json!({"SetUnhealthy": "panic"})).await;
    let failed = health(&runtime).await;
    assert!(
        matches!(&failed, Some(Err(message)) if message.contains("the health check itself broke")),
        "{failed:?}"
    );
    let status = graft::control::status(&handler).await;
    let child = &status["tree"]["children"][0];
    assert_eq!(child["health"], json!("unhealthy"), "{status}");
    assert!(
        child["health_reason"]
            .as_str()
            .unwrap()
            .starts_with("the health check failed"),
        "{status}"
    );
    call(&runtime, "counter", json!({"SetUnhealthy": null})).await;
    // format_status redacts the secret; the raw state keeps it.
    assert_eq!(
        shown_state(&runtime).await,
        json!({"total": 45, "additions": 1, "secret": "<redacted>", "unhealthy": null})
    );
    assert_eq!(raw_state(&runtime).await["secret"], json!(SECRET));
    // `graft status` shows the health.
    let status = graft::control::status(&handler).await;
    let child = &status["tree"]["children"][0];
    assert_eq!(child["health"], json!("healthy"), "{status}");

    // Downgrade back to the ABI 1.0 build: 1.1.0's downgrade converts the state back.
    handler.install(&version("1.0.0"), None).await.unwrap();
    assert_eq!(version_of(&runtime, "counter").await, "1.0.0");
    assert_eq!(
        call(&runtime, "counter", json!("Version")).await,
        json!("1.0.0")
    );
    assert_eq!(call(&runtime, "counter", json!("Get")).await, json!(45));
    assert_eq!(
        raw_state(&runtime).await,
        json!({"count": 45, "secret": SECRET}),
        "state intact after the downgrade"
    );
    assert_eq!(health(&runtime).await, None);
    let status = graft::control::status(&handler).await;
    let child = &status["tree"]["children"][0];
    assert_eq!(child["health"], json!("not reported (ABI 1.0)"), "{status}");
    handler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abi_1_0_plugin_runs_upgrades_to_its_1_1_build_and_downgrades_back() {
    evolve("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_evolution_works_with_the_plugin_in_a_worker_process() {
    // The worker program is the `graft` binary next to the test binary.
    graft_binary();
    evolve("isolation = \"process\"\n").await;
}

#[test]
fn the_host_sees_which_callbacks_each_minor_implements() {
    let loader = Loader::new().unwrap();
    let old = loader
        .load(&plugin_library(ABI_1_0), &Expectations::default())
        .unwrap();
    let new = loader
        .load(&plugin_library(ABI_1_1), &Expectations::default())
        .unwrap();
    assert_eq!((old.abi_minor(), new.abi_minor()), (0, abi::ABI_MINOR));
    assert!(!old.has_health() && !old.has_format_status());
    assert!(new.has_health() && new.has_format_status());
    let args = encode(&json!({"start": 1, "secret": SECRET}));
    let services = Detached::new("counter");
    let (mut instance, _) = Instance::start(&old, &args, &services).unwrap();
    assert!(instance.health().is_none());
    assert!(instance.format_status().is_none());
    let (mut instance, _) = Instance::start(&new, &args, &services).unwrap();
    assert_eq!(
        instance.health().unwrap().unwrap(),
        Health::Degraded("no additions yet".to_owned())
    );
    let shown: Value = codec::decode(&instance.format_status().unwrap().unwrap()).unwrap();
    assert_eq!(shown["secret"], json!("<redacted>"));
}

/// The header's file offset: the magic followed by the header size.
fn header_offset(bytes: &[u8]) -> usize {
    let mut needle = abi::MAGIC.to_le_bytes().to_vec();
    needle.extend_from_slice(&(size_of::<abi::PluginHeader>() as u32).to_le_bytes());
    find_unique(bytes, &needle)
}

/// A copy of the ABI 1.1 build with header fields patched (offset in the header, bytes).
fn patched_1_1(directory: &Path, name: &str, patches: &[(usize, Vec<u8>)]) -> PathBuf {
    let mut bytes = std::fs::read(plugin_library(ABI_1_1)).unwrap();
    let header = header_offset(&bytes);
    for (offset, value) in patches {
        bytes[header + offset..header + offset + value.len()].copy_from_slice(value);
    }
    let path = directory.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A library built against a newer minor than the host's: the 1.1 build whose header says
/// 1.2 (the header is static data in the file; patching it is what a newer crate would
/// have written there).
#[test]
fn a_plugin_of_a_newer_minor_is_refused_with_a_typed_error() {
    let directory = tempfile::tempdir().unwrap();
    let newer = abi::ABI_MINOR + 1;
    let path = patched_1_1(
        directory.path(),
        "newer-minor.so",
        &[(
            std::mem::offset_of!(abi::PluginHeader, abi_minor),
            newer.to_le_bytes().to_vec(),
        )],
    );
    let loader = Loader::new().unwrap();
    let error = loader
        .load(&path, &Expectations::default())
        .expect_err("a newer minor is refused");
    assert!(
        matches!(
            error,
            LoadError::AbiMinorTooNew { found, supported, .. }
                if found == newer && supported == abi::ABI_MINOR
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("newer than this host"),
        "{error}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(loader.directory()).unwrap().collect();
    assert!(leftovers.is_empty(), "nothing stays behind: {leftovers:?}");
}

/// The fingerprint is checked against the plugin's own minor: a 1.1 library that claims to
/// be 1.0 still carries the 1.1 fingerprint and is refused.
#[test]
fn a_fingerprint_of_another_minor_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let path = patched_1_1(
        directory.path(),
        "claims-1-0.so",
        &[(
            std::mem::offset_of!(abi::PluginHeader, abi_minor),
            0u16.to_le_bytes().to_vec(),
        )],
    );
    let error = Loader::new()
        .unwrap()
        .load(&path, &Expectations::default())
        .expect_err("refused");
    assert!(
        matches!(
            error,
            LoadError::LayoutMismatch { found, expected, .. }
                if found == abi::LAYOUT_FINGERPRINT && expected == abi::LAYOUT_FINGERPRINT_1_0
        ),
        "{error}"
    );
}

/// The host reads only the vtable prefix a plugin declares: the 1.1 build with a 1.0 header
/// (minor, fingerprint and vtable size of ABI 1.0) loads, and its `health` and
/// `format_status` entries, past the declared end, are not implemented.
#[test]
fn entries_past_the_declared_vtable_size_are_not_implemented() {
    let directory = tempfile::tempdir().unwrap();
    let path = patched_1_1(
        directory.path(),
        "declares-1-0.so",
        &[
            (
                std::mem::offset_of!(abi::PluginHeader, abi_minor),
                0u16.to_le_bytes().to_vec(),
            ),
            (
                std::mem::offset_of!(abi::PluginHeader, layout_fingerprint),
                abi::LAYOUT_FINGERPRINT_1_0.to_le_bytes().to_vec(),
            ),
            (
                std::mem::offset_of!(abi::PluginHeader, vtable_size),
                (abi::PLUGIN_VTABLE_SIZE_1_0 as u32).to_le_bytes().to_vec(),
            ),
        ],
    );
    let plugin = Loader::new()
        .unwrap()
        .load(&path, &Expectations::default())
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(!plugin.has_health() && !plugin.has_format_status());
    let services = Detached::new("counter");
    let (mut instance, _) =
        Instance::start(&plugin, &encode(&json!({"start": 2})), &services).unwrap();
    assert!(instance.health().is_none());
    assert!(instance.format_status().is_none());
    let outputs = instance
        .handle_call(&encode(&json!({"Add": 1})), 1, &services)
        .unwrap();
    assert_eq!(
        codec::decode::<Value>(&outputs.reply.unwrap()).unwrap(),
        json!(3)
    );
}

/// A plugin built with the ABI 1.1 crate (the current build with a 1.1 header: ABI 1.2 only
/// grew the host's vtable) loads, runs, and keeps its 1.1 callbacks.
#[test]
fn an_abi_1_1_plugin_loads_in_this_abi_1_2_host() {
    let directory = tempfile::tempdir().unwrap();
    let path = patched_1_1(
        directory.path(),
        "declares-1-1.so",
        &[
            (
                std::mem::offset_of!(abi::PluginHeader, abi_minor),
                1u16.to_le_bytes().to_vec(),
            ),
            (
                std::mem::offset_of!(abi::PluginHeader, layout_fingerprint),
                abi::layout_fingerprint(1).unwrap().to_le_bytes().to_vec(),
            ),
        ],
    );
    let plugin = Loader::new()
        .unwrap()
        .load(&path, &Expectations::default())
        .unwrap_or_else(|error| panic!("{error}"));
    assert_eq!(plugin.abi_minor(), 1);
    assert!(plugin.has_health() && plugin.has_format_status());
    let services = Detached::new("counter");
    let (mut instance, _) =
        Instance::start(&plugin, &encode(&json!({"start": 2})), &services).unwrap();
    let outputs = instance
        .handle_call(&encode(&json!({"Add": 1})), 1, &services)
        .unwrap();
    assert_eq!(
        codec::decode::<Value>(&outputs.reply.unwrap()).unwrap(),
        json!(3)
    );
}

/// A plugin that declares the current ABI with a vtable too short for it is malformed.
#[test]
fn a_vtable_shorter_than_its_minor_needs_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let path = patched_1_1(
        directory.path(),
        "short-vtable.so",
        &[(
            std::mem::offset_of!(abi::PluginHeader, vtable_size),
            (abi::PLUGIN_VTABLE_SIZE_1_0 as u32).to_le_bytes().to_vec(),
        )],
    );
    let error = Loader::new()
        .unwrap()
        .load(&path, &Expectations::default())
        .expect_err("refused");
    assert!(
        matches!(&error, LoadError::MalformedHeader { detail, .. }
            if detail.contains(&format!("ABI 1.{} needs", abi::ABI_MINOR))),
        "{error}"
    );
}

/// A host on release 1.0.0 in watch mode (a 500 ms health window) after release 1.1.0,
/// whose `update` carries `update_fields`, was dropped into its root: the watch's events
/// up to its decision (1.1.0 made permanent, or rolled back). The root, the runtime and the
/// handler are returned alive, with the watch still running.
struct WatchedUpgrade {
    _root: tempfile::TempDir,
    runtime: Runtime,
    handler: Arc<graft::release::handler::ReleaseHandler>,
    watching: tokio::task::JoinHandle<Result<(), graft::watch::WatchError>>,
    seen: Vec<WatchEvent>,
}

async fn watch_an_upgrade(update_fields: &str) -> WatchedUpgrade {
    let root = assembled_root(&[("1.0.0", release("1.0.0", "1.0.0", "", ""))]);
    let (runtime, handler) = boot(root.path()).await;
    let handler = Arc::new(handler);
    let watch = ReleaseWatch::start(Arc::clone(&handler)).unwrap();
    let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
    let watching = tokio::spawn(watch.run(Some(Duration::from_millis(500)), Some(events)));
    let sources = root.path().join("sources").join("1.1.0");
    std::fs::create_dir_all(&sources).unwrap();
    let manifest = sources.join("release.toml");
    std::fs::write(
        &manifest,
        release("1.1.0", "1.1.0", "", &script(update_fields)),
    )
    .unwrap();
    graft::release::assemble::assemble(
        &manifest,
        &graft_tests::workspace_root(),
        root.path(),
        false,
    )
    .unwrap();
    let mut seen = Vec::new();
    let decided = eventually_async(Duration::from_secs(60), || {
        while let Ok(event) = received.try_recv() {
            seen.push(event);
        }
        let done = seen.iter().any(|event| {
            matches!(
                event,
                WatchEvent::MadePermanent(_) | WatchEvent::RolledBack { .. }
            )
        });
        async move { done }
    })
    .await;
    assert!(decided, "no decision: {seen:?}");
    WatchedUpgrade {
        _root: root,
        runtime,
        handler,
        watching,
        seen,
    }
}

/// The watch mode's health gate: a release whose actor reports itself unhealthy at the end
/// of the window is rolled back, though nothing crashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_rolls_back_a_release_whose_actor_is_unhealthy() {
    // 1.1.0's code_change marks the actor unhealthy (from the release's `extra`).
    let upgrade = watch_an_upgrade("extra = { unhealthy = \"cannot reach the ledger\" }\n").await;
    let seen = &upgrade.seen;
    assert!(
        seen.contains(&WatchEvent::Installed(version("1.1.0"))),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|event| matches!(event, WatchEvent::MadePermanent(_))),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter()
            .find(|event| matches!(event, WatchEvent::RolledBack { .. })),
        Some(&WatchEvent::RolledBack {
            from: version("1.1.0"),
            to: version("1.0.0")
        })
    );
    assert!(
        eventually_async(PATIENCE, || async {
            version_of(&upgrade.runtime, "counter").await == "1.0.0"
        })
        .await
    );
    assert_eq!(
        call(&upgrade.runtime, "counter", json!("Get")).await,
        json!(40)
    );
    upgrade.watching.abort();
    upgrade.handler.shutdown().await;
}

/// The same gate makes a healthy ABI 1.1 release permanent (a degraded actor does not hold
/// it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_gate_makes_a_degraded_but_not_unhealthy_release_permanent() {
    let upgrade = watch_an_upgrade("").await;
    assert!(
        upgrade
            .seen
            .contains(&WatchEvent::MadePermanent(version("1.1.0"))),
        "{:?}",
        upgrade.seen
    );
    upgrade.watching.abort();
    upgrade.handler.shutdown().await;
}

/// The operator's view through the `graft` binary: `graft state` shows what
/// `format_status` shows (the secret redacted), `graft state --raw` the raw state, and
/// `graft status` each actor's health.
#[test]
fn graft_state_shows_the_formatted_state_and_status_shows_health() {
    let root = assembled_root(&[("1.1.0", release("1.1.0", "1.1.0", "", ""))]);
    let root = root.path();
    let host = graft_tests::Host::start(root, &[]);
    let state = |args: &[&str]| -> Value {
        serde_json::from_str(&graft_tests::succeed_graft(root, args)).unwrap()
    };
    assert_eq!(
        state(&["state", "counter", "--json"]),
        json!({"total": 40, "additions": 0, "secret": "<redacted>", "unhealthy": null}),
        "{}",
        host.log()
    );
    assert_eq!(
        state(&["state", "counter", "--json", "--raw"])["secret"],
        json!(SECRET)
    );
    let status = state(&["status", "--json"]);
    let child = &status["tree"]["children"][0];
    assert_eq!(child["health"], json!("degraded"), "{status}");
    assert_eq!(
        child["health_reason"],
        json!("no additions yet"),
        "{status}"
    );
    let text = graft_tests::succeed_graft(root, &["status"]);
    assert!(text.contains("health degraded: no additions yet"), "{text}");
}
