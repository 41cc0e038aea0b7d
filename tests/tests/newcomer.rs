//! A newcomer's path through the real `graft` binary: `graft new` gives an application
//! workspace that `graft build` and `graft start` run as created and `graft call` reaches;
//! `graft new --plugin` adds a plugin; `graft dev` runs it on a root of its own, hot-swaps
//! every rebuild (however slowly it is written), shows a rejected build on its terminal,
//! tells `code_change` it is a dev rebuild, and refuses and leaves alone an operator's root.
//!
//! Each test scaffolds its own package names: the tests share one cargo target directory
//! (so the dependencies are built once) and run at the same time.

use graft_tests::{
    Host, eventually_blocking as eventually, graft_binary, run_graft as graft,
    stderr_text as stderr, stdout_text as stdout, succeed_graft,
};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The cargo target directory the tests were built in, shared so dependencies are built
/// once.
fn shared_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| graft_tests::workspace_root().join("target"))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// Runs `graft ARGS` in `directory` with the shared target directory.
fn graft_in(directory: &Path, args: &[&str]) -> std::process::Output {
    Command::new(graft_binary())
        .args(args)
        .current_dir(directory)
        .env("CARGO_TARGET_DIR", shared_target())
        .env_remove("GRAFT_ROOT")
        .output()
        .unwrap()
}

/// `graft new APP --path <directory>/APP`; the workspace's path.
fn new_application(directory: &Path, app: &str) -> PathBuf {
    let workspace = directory.join(app);
    let output = Command::new(graft_binary())
        .args(["new", app, "--path"])
        .arg(&workspace)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("graft build"),
        "the next commands: {}",
        stdout(&output)
    );
    workspace
}

#[test]
fn graft_new_gives_an_application_that_builds_starts_and_answers_calls() {
    let directory = tempfile::tempdir().unwrap();
    let app = new_application(directory.path(), "newcomerapp");
    for file in [
        "Cargo.toml",
        "README.md",
        "releases/0.1.0/release.toml",
        "plugins/newcomerapp/0.1.0/Cargo.toml",
        "plugins/newcomerapp/0.1.0/src/lib.rs",
    ] {
        assert!(app.join(file).is_file(), "{file} is missing");
    }
    let workspace_manifest = std::fs::read_to_string(app.join("Cargo.toml")).unwrap();
    assert!(workspace_manifest.contains("[workspace]"));
    assert!(
        workspace_manifest.contains("[patch.crates-io]\ngraft-plugin = { path = "),
        "{workspace_manifest}"
    );
    // Release builds strip plugin libraries: every load reads and hashes every byte.
    assert!(
        workspace_manifest.contains("[profile.release]\nstrip = \"symbols\""),
        "{workspace_manifest}"
    );
    let plugin_manifest =
        std::fs::read_to_string(app.join("plugins/newcomerapp/0.1.0/Cargo.toml")).unwrap();
    assert!(
        plugin_manifest.contains("name = \"newcomerapp\"\n"),
        "a plain package name: {plugin_manifest}"
    );
    assert!(
        plugin_manifest.contains("graft-plugin = \"0.2\"\n"),
        "a crates.io requirement: {plugin_manifest}"
    );
    assert!(!plugin_manifest.contains("path"), "{plugin_manifest}");
    let readme = std::fs::read_to_string(app.join("README.md")).unwrap();
    assert!(readme.contains("graft build") && readme.contains("graft start"));

    // Names that are no package name, an existing directory, and nothing to create.
    let invalid = graft_in(directory.path(), &["new", "9lives"]);
    assert_eq!(invalid.status.code(), Some(1));
    assert!(stderr(&invalid).contains("invalid application name"));
    let existing = graft_in(directory.path(), &["new", "newcomerapp"]);
    assert_eq!(existing.status.code(), Some(1));
    assert!(stderr(&existing).contains("already exists"));
    let nothing = graft_in(directory.path(), &["new"]);
    assert_eq!(nothing.status.code(), Some(2), "{}", stderr(&nothing));

    // A second plugin, added from inside the workspace.
    let added = graft_in(&app, &["new", "--plugin", "newcomerextra"]);
    assert!(added.status.success(), "{}", stderr(&added));
    assert!(app.join("plugins/newcomerextra/0.1.0/src/lib.rs").is_file());
    let outside = graft_in(directory.path(), &["new", "--plugin", "stray"]);
    assert_eq!(outside.status.code(), Some(1));
    assert!(
        stderr(&outside).contains("not an application workspace"),
        "{}",
        stderr(&outside)
    );

    // The plugins pass their own tests.
    let test = Command::new(cargo())
        .args(["test", "--quiet"])
        .current_dir(&app)
        .env("CARGO_TARGET_DIR", shared_target())
        .output()
        .unwrap();
    assert!(test.status.success(), "cargo test: {}", stderr(&test));

    // build → start → call → stop, with no edits, on the default root.
    let build = graft_in(&app, &["build", "--debug"]);
    assert!(build.status.success(), "graft build: {}", stderr(&build));
    assert!(
        stdout(&build).contains("assembled newcomerapp 0.1.0"),
        "{}",
        stdout(&build)
    );
    let root = app.join("target/graft");
    let mut host = Host::start(&root, &[]);
    assert_eq!(
        succeed_graft(&root, &["call", "newcomerapp", r#"{"Add": 2}"#]).trim(),
        "2"
    );
    assert_eq!(
        succeed_graft(&root, &["call", "newcomerapp", r#""Get""#]).trim(),
        "2"
    );
    host.signal("TERM");
    assert_eq!(host.wait(), 0, "{}", host.log());
}

/// Writes `bytes` over `path` in place (same inode), in small pieces with pauses: a slow
/// writer, like a linker writing through cargo's other link to the artifact.
fn write_slowly(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap();
    let pieces = 8;
    let piece = bytes.len().div_ceil(pieces);
    for chunk in bytes.chunks(piece) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    file.sync_all().unwrap();
}

#[test]
fn graft_dev_runs_on_its_own_root_hot_swaps_every_rebuild_and_shows_a_rejected_one() {
    let directory = tempfile::tempdir().unwrap();
    // Its own package name: the other test builds into the same target directory at the
    // same time, and the dev host must see only this test's builds.
    let app = new_application(directory.path(), "devhello");
    let target = shared_target();

    // An operator's root where `graft build` and `graft start` put it.
    let operator = app.join("target/graft");
    std::fs::create_dir_all(operator.join("releases/0.1.0")).unwrap();
    std::fs::write(operator.join("releases/RELEASES.json"), "operator's record").unwrap();
    std::fs::write(operator.join("releases/0.1.0/release.toml"), "operator's").unwrap();
    let untouched = |what: &str| {
        assert_eq!(
            std::fs::read_to_string(operator.join("releases/RELEASES.json")).unwrap(),
            "operator's record",
            "{what}"
        );
        assert_eq!(
            std::fs::read_to_string(operator.join("releases/0.1.0/release.toml")).unwrap(),
            "operator's",
            "{what}"
        );
    };

    // Pointed at it, graft dev refuses for safety and touches nothing.
    let refused = Command::new(graft_binary())
        .args(["dev", "--workspace"])
        .arg(&app)
        .arg("--root")
        .arg(&operator)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&operator.display().to_string())
            && stderr(&refused).contains("target/graft-dev"),
        "names the root and the way out: {}",
        stderr(&refused)
    );
    untouched("after the refusal");

    let start_dev = |log: &Path| {
        let child = Command::new(graft_binary())
            .args(["dev", "--workspace"])
            .arg(&app)
            .env("CARGO_TARGET_DIR", &target)
            .env_remove("GRAFT_ROOT")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let host = Host {
            child,
            log: log.to_owned(),
        };
        let socket = app.join("target/graft-dev/run/control.sock");
        assert!(
            eventually(Duration::from_secs(180), || UnixStream::connect(&socket)
                .is_ok()),
            "graft dev did not start: {}",
            host.log()
        );
        host
    };
    let root = app.join("target/graft-dev");
    let mut host = start_dev(&directory.path().join("dev.log"));
    assert!(root.join("GRAFT_DEV").is_file(), "the dev root is marked");
    untouched("with the dev host running");
    assert_eq!(
        succeed_graft(&root, &["call", "devhello", r#"{"Add": 4}"#]).trim(),
        "4"
    );
    let artifact = target.join("debug/libdevhello.so");
    let first_build = std::fs::read(&artifact).unwrap();

    let source_path = app.join("plugins/devhello/0.1.0/src/lib.rs");
    let rebuild = |edit: &dyn Fn(String) -> String| {
        let source = std::fs::read_to_string(&source_path).unwrap();
        std::fs::write(&source_path, edit(source)).unwrap();
        let build = Command::new(cargo())
            .args(["build", "--quiet"])
            .current_dir(&app)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(build.status.success(), "{}", stderr(&build));
    };

    // A new request variant, and a code_change that logs the version it upgrades from: the
    // running actor takes it on, its count kept, told it is a dev rebuild.
    rebuild(&|source| {
        source
            .replace("    /// Adds and returns the new count.\n    Add(i64),", "    /// Adds and returns the new count.\n    Add(i64),\n    /// Doubles.\n    Double,")
            .replace("            Request::Get => self.count,", "            Request::Get => self.count,\n            Request::Double => {\n                self.count *= 2;\n                self.count\n            }")
            .replace(
                "    fn init(start: i64,",
                "    fn code_change(from: &graft_plugin::Version, old: graft_plugin::Payload<'_>, _extra: graft_plugin::Payload<'_>) -> Result<Self, Error> {\n        graft_plugin::log::info!(\"code_change from {from}\");\n        old.decode()\n    }\n\n    fn init(start: i64,",
            )
    });
    assert!(
        eventually(Duration::from_secs(60), || {
            graft(&root, &["call", "devhello", r#""Double""#])
                .status
                .success()
        }),
        "the new build was not swapped in: {}",
        host.log()
    );
    assert_eq!(
        succeed_graft(&root, &["call", "devhello", r#""Get""#]).trim(),
        "8",
        "state kept across the swap"
    );
    assert!(
        host.log().contains("code_change from 0.1.0+dev.1"),
        "code_change told it is a dev rebuild: {}",
        host.log()
    );

    // A build written slowly, in place: the first build again, without `Double`.
    write_slowly(&artifact, &first_build);
    assert!(
        eventually(Duration::from_secs(60), || host
            .log()
            .matches("hot-swapped to the new build")
            .count()
            == 2),
        "the slowly written build was missed: {}",
        host.log()
    );
    assert!(
        !graft(&root, &["call", "devhello", r#""Double""#])
            .status
            .success(),
        "the first build is back: {}",
        host.log()
    );
    assert_eq!(
        succeed_graft(&root, &["call", "devhello", r#""Get""#]).trim(),
        "8"
    );

    // A state field without a default: the default migration cannot decode the old state.
    rebuild(&|source| {
        source
            .replace(
                "pub struct State {\n    count: i64,\n}",
                "pub struct State {\n    count: i64,\n    label: String,\n}",
            )
            .replace(
                "Ok(State { count: start })",
                "Ok(State { count: start, label: String::new() })",
            )
            .replace(
                "State { count: 1 }",
                "State { count: 1, label: String::new() }",
            )
            .replace(
                "State { count: 7 }",
                "State { count: 7, label: String::new() }",
            )
    });
    assert!(
        eventually(Duration::from_secs(60), || host
            .log()
            .contains("missing field `label`")),
        "the broken build was not rejected: {}",
        host.log()
    );
    let log = host.log();
    let block = &log[log.rfind("plugin devhello was REJECTED").unwrap()..];
    assert!(
        block.contains("error: ") && block.contains("missing field `label`"),
        "the block has the error: {log}"
    );
    // The previous rebuild (the first build written back, which has `Get` but not
    // `Double`) keeps running.
    assert_eq!(
        succeed_graft(&root, &["call", "devhello", r#""Get""#]).trim(),
        "8",
        "the old code keeps running"
    );
    host.signal("INT");
    assert_eq!(host.wait(), 0);
    untouched("after the dev host stopped");

    // The marked root is graft dev's: a second run starts on it again.
    let mut again = start_dev(&directory.path().join("dev-again.log"));
    again.signal("INT");
    assert_eq!(again.wait(), 0, "{}", again.log());
    untouched("after a second dev run");
}
