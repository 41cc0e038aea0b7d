//! Release scripts run in the order written, end to end with the real `counter` and `kv`
//! plugins (1.0.0 → 1.1.0): instructions written before the first `update` run before the
//! suspend, on the old code; those after the last run after the commit, on the new code;
//! one written between two updates is refused at plan check and nothing changes; the same
//! holds for downgrade scripts; `graft install --dry-run` prints the plan in that order
//! against a running host and changes nothing.
//!
//! What tells old code from new: counter 1.1.0 keeps a history of additions (its
//! `code_change` starts it empty) and answers `History`; counter 1.0.0 has no history and
//! fails a `History` call.

use graft::release::handler::{InstallPhase, ReleaseError};
use graft::release::plan::PlanError;
use graft_tests::{
    Host, assembled_root, boot, call_by_name as call, run_graft, stderr_text, stdout_text,
    succeed_graft, version, version_of,
};
use serde_json::json;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A release of counter and kv at `plugins` (`1.0.0` or `1.1.0`), with the extra children
/// and script `extra`.
fn release_text(version: &str, plugins: &str, extra: &str) -> String {
    let directory = |plugin: &str| format!("plugins/{plugin}/{plugins}");
    format!(
        r#"[release]
name = "script-order"
version = "{version}"

[plugins.counter]
version = "{plugins}"
crate = "{counter}"

[plugins.kv]
version = "{plugins}"
crate = "{kv}"

[supervisor]
strategy = "one_for_one"
max_restarts = 5
max_seconds = 10

[[supervisor.children]]
id = "counter"
plugin = "counter"
args = {{ start = 0 }}

[[supervisor.children]]
id = "kv"
plugin = "kv"
{extra}
"#,
        counter = directory("counter"),
        kv = directory("kv"),
    )
}

/// Assembles 1.0.0 (counter and kv 1.0.0) and 2.0.0 (both 1.1.0, with `extra`: more
/// children, its `[[upgrade]]` from 1.0.0 and `[[downgrade]]` to it).
fn root_with(extra: &str) -> tempfile::TempDir {
    assembled_root(&[
        ("1.0.0", release_text("1.0.0", "1.0.0", "")),
        ("2.0.0", release_text("2.0.0", "1.1.0", extra)),
    ])
}

/// `[[<section>.instructions]]` tables, one per instruction text.
fn script(section: &str, instructions: &[&str]) -> String {
    instructions
        .iter()
        .map(|instruction| format!("\n[[{section}.instructions]]\n{instruction}"))
        .collect()
}

fn upgrade(instructions: &[&str]) -> String {
    format!(
        "\n[[upgrade]]\nfrom = \"1.0.0\"\n{}",
        script("upgrade", instructions)
    )
}

fn downgrade(instructions: &[&str]) -> String {
    format!(
        "\n[[downgrade]]\nto = \"1.0.0\"\n{}",
        script("downgrade", instructions)
    )
}

const UPDATE_COUNTER: &str = "op = \"update\"\nplugin = \"counter\"\n";
const UPDATE_KV: &str = "op = \"update\"\nplugin = \"kv\"\nmode = \"soft\"\n";

fn add_to_counter(amount: i64) -> String {
    format!("op = \"apply\"\nactor = \"counter\"\nmessage = {{ Add = {amount} }}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_before_the_update_runs_on_the_old_code_and_one_after_on_the_new() {
    let (before, after) = (add_to_counter(5), add_to_counter(7));
    let root = root_with(&upgrade(&[&before, UPDATE_COUNTER, UPDATE_KV, &after]));
    let (runtime, handler) = boot(root.path()).await;
    handler.install(&version("2.0.0"), None).await.unwrap();
    assert_eq!(version_of(&runtime, "counter").await, "1.1.0");
    assert_eq!(call(&runtime, "counter", json!("Get")).await, json!(12));
    assert_eq!(
        call(&runtime, "counter", json!("History")).await,
        json!([7]),
        "the apply written before the update ran on 1.0.0 (no history), the one after on 1.1.0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_added_before_the_update_starts_on_the_old_code_and_is_migrated_with_the_rest() {
    let second = "\n[[supervisor.children]]\nid = \"second\"\nplugin = \"counter\"\nargs = { start = 100 }\n";
    let add = "op = \"add_child\"\nsupervisor = \"root\"\nid = \"second\"\n";
    let root = root_with(&format!(
        "{second}{}",
        upgrade(&[add, UPDATE_COUNTER, UPDATE_KV])
    ));
    let (runtime, handler) = boot(root.path()).await;
    let phases = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&phases);
    let report = handler
        .install(
            &version("2.0.0"),
            Some(Arc::new(move |phase| recorded.lock().unwrap().push(phase))),
        )
        .await
        .unwrap();
    let phases = phases.lock().unwrap().clone();
    let added = phases
        .iter()
        .position(|phase| *phase == InstallPhase::Instruction { index: 0, total: 3 })
        .unwrap_or_else(|| panic!("no phase for the add_child: {phases:?}"));
    let suspending = phases
        .iter()
        .position(|phase| matches!(phase, InstallPhase::Suspending(_)))
        .unwrap_or_else(|| panic!("no suspend: {phases:?}"));
    assert!(added < suspending, "{phases:?}");
    assert_eq!(
        report.actors_migrated, 3,
        "counter, kv and the child started on counter 1.0.0 before the suspend"
    );
    assert_eq!(version_of(&runtime, "second").await, "1.1.0");
    assert_eq!(call(&runtime, "second", json!("Get")).await, json!(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_script_runs_in_the_order_written() {
    // `History` exists only in counter 1.1.0: written before the downgrade's update it
    // runs on 1.1.0; after it, the `Add` runs on 1.0.0.
    let history = "op = \"apply\"\nactor = \"counter\"\nmessage = \"History\"\n";
    let after = add_to_counter(1);
    let root = root_with(&format!(
        "{}{}",
        upgrade(&[UPDATE_COUNTER, UPDATE_KV]),
        downgrade(&[history, UPDATE_COUNTER, UPDATE_KV, &after])
    ));
    let (runtime, handler) = boot(root.path()).await;
    handler.install(&version("2.0.0"), None).await.unwrap();
    call(&runtime, "counter", json!({"Add": 41})).await;
    let phases = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&phases);
    handler
        .install(
            &version("1.0.0"),
            Some(Arc::new(move |phase| recorded.lock().unwrap().push(phase))),
        )
        .await
        .unwrap_or_else(|error| panic!("the downgrade failed: {error}"));
    assert_eq!(version_of(&runtime, "counter").await, "1.0.0");
    assert_eq!(call(&runtime, "counter", json!("Get")).await, json!(42));
    let phases = phases.lock().unwrap().clone();
    let position = |wanted: &InstallPhase| phases.iter().position(|phase| phase == wanted);
    let resuming = phases
        .iter()
        .position(|phase| matches!(phase, InstallPhase::Resuming(_)))
        .unwrap_or_else(|| panic!("no resume: {phases:?}"));
    assert!(
        position(&InstallPhase::Instruction { index: 3, total: 4 }).unwrap() > resuming,
        "{phases:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instruction_between_two_updates_is_refused_and_nothing_changes() {
    let between = add_to_counter(5);
    let root = root_with(&upgrade(&[UPDATE_COUNTER, &between, UPDATE_KV]));
    let (runtime, handler) = boot(root.path()).await;
    let error = handler.install(&version("2.0.0"), None).await.unwrap_err();
    let ReleaseError::Plan(PlanError::Invalid { field, message, .. }) = &error else {
        panic!("expected a plan error, got {error}");
    };
    assert_eq!(field, "instructions[1].op");
    assert!(
        message.contains("`apply` is written between two updates")
            && message.contains("one atomic batch"),
        "{message}"
    );
    assert_eq!(
        handler.plan(&version("2.0.0")).unwrap_err().to_string(),
        error.to_string(),
        "the plan is refused the same way"
    );
    assert_eq!(handler.current_version().await, version("1.0.0"));
    assert_eq!(version_of(&runtime, "counter").await, "1.0.0");
    assert_eq!(call(&runtime, "counter", json!("Get")).await, json!(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_the_suspend_stops_the_install_with_nothing_migrated() {
    let missing = "op = \"apply\"\nactor = \"nobody\"\nmessage = \"Get\"\n";
    let root = root_with(&upgrade(&[missing, UPDATE_COUNTER, UPDATE_KV]));
    let (runtime, handler) = boot(root.path()).await;
    let error = handler.install(&version("2.0.0"), None).await.unwrap_err();
    assert!(
        matches!(
            &error,
            ReleaseError::BeforeSuspend {
                index: 0,
                instruction: "apply",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("release 1.0.0 is still current"),
        "{error}"
    );
    assert_eq!(handler.current_version().await, version("1.0.0"));
    assert_eq!(version_of(&runtime, "counter").await, "1.0.0");
    assert_eq!(version_of(&runtime, "kv").await, "1.0.0");
}

#[test]
fn install_dry_run_prints_the_plan_in_the_order_it_runs_and_changes_nothing() {
    let (before, after) = (add_to_counter(5), add_to_counter(7));
    let root = root_with(&upgrade(&[&before, UPDATE_COUNTER, UPDATE_KV, &after]));
    let root = root.path();
    let host = Host::start(root, &[]);
    let output = run_graft(root, &["install", "--dry-run", "2.0.0"]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stderr_text(&output),
        host.log()
    );
    let text = stdout_text(&output);
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
    };
    let order = [
        at("upgrade 1.0.0 -> 2.0.0"),
        at("1. before the suspend"),
        at("[0] apply { Add = 5 } to counter"),
        at("2. atomic update batch"),
        at("[1] update counter (advanced"),
        at("[2] update kv (soft"),
        at("3. after the commit"),
        at("[3] apply { Add = 7 } to counter"),
    ];
    assert!(order.is_sorted(), "{order:?}\n{text}");

    let plan: serde_json::Value = serde_json::from_str(&succeed_graft(
        root,
        &["install", "--dry-run", "2.0.0", "--json"],
    ))
    .unwrap();
    assert_eq!(plan["direction"], "upgrade");
    assert_eq!(plan["before_suspend"][0]["index"], 0);
    assert_eq!(plan["updates"][1]["instruction"]["plugin"], "kv");
    assert_eq!(plan["after_commit"][0]["index"], 3);

    // Nothing changed: still 1.0.0, the applies did not run.
    let releases: serde_json::Value =
        serde_json::from_str(&succeed_graft(root, &["releases", "--json"])).unwrap();
    assert_eq!(releases[0]["version"], "1.0.0");
    assert_eq!(releases[0]["running"], true);
    assert_eq!(releases[1]["status"], "unpacked");
    assert_eq!(
        succeed_graft(root, &["call", "counter", r#""Get""#]).trim(),
        "0"
    );

    // A refused plan is refused by the dry run too, with the reason.
    let refused = run_graft(root, &["install", "--dry-run", "3.0.0"]);
    assert!(!refused.status.success());
    assert!(
        stderr_text(&refused).contains("3.0.0"),
        "{}",
        stderr_text(&refused)
    );
    drop(host);
    assert!(Path::new(root).exists());
}
