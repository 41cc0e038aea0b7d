//! The newcomer's whole path as the README walks it ("From `graft new` to a live upgrade"),
//! driven through the real `graft` binary as a script: `graft new` → `graft build` →
//! `graft start` → `graft call` → edit (a 2.0.0 of the plugin whose state changes shape,
//! beside 0.1.0, and a release 2.0.0 with an `[[upgrade]]` and a `[[downgrade]]`) →
//! `graft build 2.0.0` → `graft install 2.0.0` under traffic → `graft rollback` under
//! traffic → `graft install` again and `graft make-permanent`.
//!
//! What it asserts: every call two senders make during the installs is answered, in each
//! sender's order, by one of the versions, with the count it should have (nothing lost,
//! nothing applied twice); the state changes shape on the upgrade (`code_change`) and back
//! on the rollback (`downgrade`).
//!
//! Tricky: the test shares the cargo target directory it was built in with the scaffolded
//! workspace (so `graft-plugin` and serde are built once), and other tests (`newcomer`)
//! build their own scaffolds into it, possibly at the same time — so this test's package
//! names (`pathshop`, `pathshop-2-0-0`) are used by no other test. The traffic runs in
//! threads of its own; the test waits for it to have some answers before and after each
//! install instead of sleeping, and asserts nothing about time.

use graft_tests::{
    Host, copy_tree, eventually_blocking as eventually, graft_binary, run_graft as graft,
    stderr_text as stderr, stdout_text as stdout, succeed_graft,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Deadlines for what a loaded 2-core machine may take long to do.
const PATIENCE: Duration = Duration::from_secs(180);

/// The cargo target directory the tests were built in, shared so dependencies are built
/// once.
fn shared_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| graft_tests::workspace_root().join("target"))
}

/// Runs `graft ARGS` in `directory` with the shared target directory and the default root;
/// requires it to succeed and returns its stdout.
fn graft_in(directory: &Path, args: &[&str]) -> String {
    let output = Command::new(graft_binary())
        .args(args)
        .current_dir(directory)
        .env("CARGO_TARGET_DIR", shared_target())
        .env_remove("GRAFT_ROOT")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "graft {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output)
}

/// Version 2.0.0 of the scaffolded plugin, as the README tells the user to write it: the
/// count is renamed `total` and a count of the calls handled since the upgrade joins it.
const VERSION_2_SOURCE: &str = r#"//! The `pathshop` plugin, 2.0.0: the state is `{ total, calls }` (0.1.0's was `{ count }`).

use graft_plugin::{CallResult, Context, EncodedState, Error, Flow, GenServer, Payload, ReplyTo, Version};
use serde::{Deserialize, Serialize};

/// 0.1.0's state, as 0.1.0 encodes it.
#[derive(Serialize, Deserialize)]
struct StateV0 {
    count: i64,
}

/// The actor's state.
#[derive(Serialize, Deserialize)]
pub struct State {
    total: i64,
    calls: u64,
}

/// Calls.
#[derive(Serialize, Deserialize)]
pub enum Request {
    /// The count.
    Get,
    /// Adds and returns the new count.
    Add(i64),
    /// The calls handled since the upgrade (new in 2.0.0).
    Calls,
}

/// Casts.
#[derive(Serialize, Deserialize)]
pub enum Command {
    /// Sets the count to zero.
    Reset,
}

impl GenServer for State {
    type Args = i64;
    type Call = Request;
    type Reply = i64;
    type Cast = Command;
    type Info = ();
    type Continue = ();

    fn init(start: i64, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        Ok(State { total: start, calls: 0 })
    }

    fn handle_call(&mut self, request: Request, _from: ReplyTo, _ctx: &mut Context<'_>) -> Result<CallResult<i64>, Error> {
        self.calls += 1;
        let reply = match request {
            Request::Get => self.total,
            Request::Add(amount) => {
                self.total += amount;
                self.total
            }
            Request::Calls => self.calls as i64,
        };
        Ok(CallResult::Reply(reply))
    }

    fn handle_cast(&mut self, command: Command, _ctx: &mut Context<'_>) -> Result<Flow, Error> {
        match command {
            Command::Reset => self.total = 0,
        }
        Ok(Flow::Run)
    }

    /// Upgrading: 0.1.0's `{ count }` becomes `{ total, calls: 0 }`.
    fn code_change(from: &Version, old: Payload<'_>, _extra: Payload<'_>) -> Result<Self, Error> {
        if from.major != 0 {
            return Err(Error::new(format!("pathshop 2.0.0 cannot upgrade from {from}")));
        }
        let old: StateV0 = old.decode()?;
        Ok(State { total: old.count, calls: 0 })
    }

    /// Rolling back: 0.1.0 decodes `{ count }` as its own.
    fn downgrade(&self, to: &Version, _extra: Payload<'_>) -> Result<EncodedState, Error> {
        if to.major != 0 {
            return Err(Error::new(format!("pathshop 2.0.0 cannot downgrade to {to}")));
        }
        EncodedState::encode(&StateV0 { count: self.total })
    }
}

graft_plugin::export_plugin!(State, name = "pathshop");
"#;

/// Release 2.0.0: the same tree on the plugin's 2.0.0, how to get there from 0.1.0 and
/// how to go back.
const RELEASE_2: &str = r#"[release]
name = "pathshop"
version = "2.0.0"

[plugins.pathshop]
version = "2.0.0"
crate = "plugins/pathshop/2.0.0"

[supervisor]
strategy = "one_for_one"

[[supervisor.children]]
id = "pathshop"
plugin = "pathshop"
args = 0

[[upgrade]]
from = "0.1.0"
[[upgrade.instructions]]
op = "update"
plugin = "pathshop"
mode = "advanced"

[[downgrade]]
to = "0.1.0"
[[downgrade.instructions]]
op = "update"
plugin = "pathshop"
"#;

/// Senders calling at once.
const SENDERS: usize = 2;

/// [`SENDERS`] threads calling `{"Add": 1}` through `graft call` until stopped; each
/// sender's answers, in the order it got them.
struct Traffic {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Vec<i64>>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    fn start(root: &Path) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(vec![Vec::new(); SENDERS]));
        let threads = (0..SENDERS)
            .map(|sender| {
                let (stop, answers, root) = (stop.clone(), answers.clone(), root.to_owned());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        // A generous timeout: a call sent while the actor is suspended
                        // waits for the install to finish, however slowly it runs.
                        let output = graft(
                            &root,
                            &["call", "pathshop", r#"{"Add": 1}"#, "--timeout", "120000"],
                        );
                        assert!(
                            output.status.success(),
                            "a call during the traffic failed: {}",
                            stderr(&output)
                        );
                        let answer: i64 = stdout(&output).trim().parse().unwrap();
                        answers.lock().unwrap()[sender].push(answer);
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            answers,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.answers.lock().unwrap().iter().map(Vec::len).sum()
    }

    /// Waits for `more` answers than there are now (or a sender to have failed).
    fn wait_for_more(&self, more: usize) {
        let target = self.count() + more;
        assert!(
            eventually(PATIENCE, || self.count() >= target
                || self.threads.iter().any(|thread| thread.is_finished())),
            "the traffic stalled at {} answers",
            self.count()
        );
    }

    /// Stops the traffic; each sender's answers.
    fn finish(self) -> Vec<Vec<i64>> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            if let Err(panic) = thread.join() {
                std::panic::resume_unwind(panic);
            }
        }
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

/// Asserts every call was applied exactly once: the answers, all senders' together, are
/// the counts from `after + 1` up, each once, and each sender's rise in the order it sent
/// them. The last count.
fn assert_counts_up(after: i64, answers: &[Vec<i64>]) -> i64 {
    for (sender, sent) in answers.iter().enumerate() {
        assert!(
            sent.windows(2).all(|pair| pair[0] < pair[1]),
            "sender {sender}'s calls were applied out of order: {sent:?}"
        );
    }
    let mut all: Vec<i64> = answers.iter().flatten().copied().collect();
    all.sort_unstable();
    assert!(!all.is_empty(), "no call was answered");
    let expected: Vec<i64> = (after + 1..=after + all.len() as i64).collect();
    assert_eq!(all, expected, "each call applied once: {answers:?}");
    after + all.len() as i64
}

/// The actor's state as `graft state` shows it.
fn state(root: &Path) -> Value {
    serde_json::from_str(&succeed_graft(root, &["state", "pathshop"])).unwrap()
}

/// The version the `pathshop` actor runs, from `graft status --json`; also required to be
/// the host's current release.
fn running_version(root: &Path) -> String {
    let status: Value = serde_json::from_str(&succeed_graft(root, &["status", "--json"])).unwrap();
    let actor = status["tree"]["children"]
        .as_array()
        .and_then(|children| children.iter().find(|child| child["id"] == "pathshop"))
        .unwrap_or_else(|| panic!("no pathshop in {status}"));
    assert_eq!(actor["version"], status["release"], "{status}");
    actor["version"].as_str().unwrap().to_owned()
}

#[test]
fn the_newcomer_path_from_graft_new_to_a_live_upgrade_and_back() {
    let directory = tempfile::tempdir().unwrap();
    let app = directory.path().join("pathshop");

    // graft new pathshop
    let created = Command::new(graft_binary())
        .args(["new", "pathshop", "--path"])
        .arg(&app)
        .output()
        .unwrap();
    assert!(created.status.success(), "{}", stderr(&created));

    // graft build; graft start; graft call
    graft_in(&app, &["build", "--debug"]);
    let root = app.join("target/graft");
    let mut host = Host::start(&root, &[]);
    assert_eq!(
        succeed_graft(&root, &["call", "pathshop", r#"{"Add": 2}"#]).trim(),
        "2"
    );
    assert_eq!(state(&root), serde_json::json!({ "count": 2 }));

    // The edit: plugins/pathshop/2.0.0 beside 0.1.0, under a package name of its own, and
    // releases/2.0.0/release.toml.
    let version_1 = app.join("plugins/pathshop/0.1.0");
    let version_2 = app.join("plugins/pathshop/2.0.0");
    copy_tree(&version_1, &version_2);
    let manifest = std::fs::read_to_string(version_2.join("Cargo.toml")).unwrap();
    let manifest = manifest
        .replace("name = \"pathshop\"\n", "name = \"pathshop-2-0-0\"\n")
        .replace("version = \"0.1.0\"\n", "version = \"2.0.0\"\n");
    assert!(manifest.contains("pathshop-2-0-0") && manifest.contains("\"2.0.0\""));
    std::fs::write(version_2.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(version_2.join("src/lib.rs"), VERSION_2_SOURCE).unwrap();
    std::fs::create_dir_all(app.join("releases/2.0.0")).unwrap();
    std::fs::write(app.join("releases/2.0.0/release.toml"), RELEASE_2).unwrap();

    // graft build 2.0.0, while the host runs 0.1.0.
    let built = graft_in(&app, &["build", "2.0.0", "--debug"]);
    assert!(built.contains("2.0.0"), "{built}");
    assert_eq!(running_version(&root), "0.1.0");

    // graft install 2.0.0, under traffic.
    let traffic = Traffic::start(&root);
    traffic.wait_for_more(3);
    let installed = succeed_graft(&root, &["install", "2.0.0"]);
    assert!(installed.contains("2.0.0"), "{installed}");
    traffic.wait_for_more(3);
    let answers = traffic.finish();
    let last = assert_counts_up(2, &answers);
    assert_eq!(running_version(&root), "2.0.0");
    assert_eq!(
        succeed_graft(&root, &["call", "pathshop", r#""Get""#]).trim(),
        last.to_string(),
        "the count kept across the upgrade"
    );
    let migrated = state(&root);
    assert_eq!(migrated["total"], serde_json::json!(last), "{migrated}");
    assert!(
        migrated["calls"].as_u64().is_some() && migrated.get("count").is_none(),
        "the state took 2.0.0's shape: {migrated}"
    );
    assert!(
        succeed_graft(&root, &["call", "pathshop", r#""Calls""#])
            .trim()
            .parse::<i64>()
            .unwrap()
            >= 1,
        "2.0.0's new call answers"
    );

    // graft rollback, under traffic: back to 0.1.0 and its shape.
    let traffic = Traffic::start(&root);
    traffic.wait_for_more(3);
    succeed_graft(&root, &["rollback"]);
    traffic.wait_for_more(3);
    let answers = traffic.finish();
    let last = assert_counts_up(last, &answers);
    assert_eq!(running_version(&root), "0.1.0");
    assert_eq!(
        state(&root),
        serde_json::json!({ "count": last }),
        "the state went back to 0.1.0's shape with every call counted"
    );
    assert!(
        !graft(&root, &["call", "pathshop", r#""Calls""#])
            .status
            .success(),
        "0.1.0 does not know 2.0.0's call"
    );

    // Forward again, for good: install 2.0.0 and make it permanent.
    succeed_graft(&root, &["install", "2.0.0"]);
    succeed_graft(&root, &["make-permanent", "2.0.0"]);
    let releases: Value =
        serde_json::from_str(&succeed_graft(&root, &["releases", "--json"])).unwrap();
    let permanent = releases
        .as_array()
        .and_then(|releases| {
            releases
                .iter()
                .find(|release| release["status"] == "permanent")
        })
        .unwrap_or_else(|| panic!("no permanent release in {releases}"));
    assert_eq!(permanent["version"], "2.0.0", "{releases}");
    assert_eq!(state(&root)["total"], serde_json::json!(last));

    host.signal("TERM");
    assert_eq!(host.wait(), 0, "{}", host.log());
}
