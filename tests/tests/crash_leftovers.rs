//! Crashes leave nothing behind, and every write is atomic (issue 10): the `graft` binary
//! as a real process, killed with SIGKILL, run out of space (a real tmpfs) and over its
//! file-size limit (`prlimit`), with a corrupt release record, and `graft build` killed
//! while it re-assembles a release.
//!
//! Each test states the invariant it checks: the host stays up and answers, nothing
//! half-written remains, and what a dead process left is removed by the next start or
//! build. The machine may be loaded: every wait polls under a generous deadline.

use graft::ownership::libraries_directory;
use graft::release::assemble::read_assembled;
use graft_tests::{
    Host, eventually_blocking, example_root, gone, graft_binary, run_graft, stderr_text,
    succeed_graft, version, workspace_root,
};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(60);

/// The running release, per `graft status --json`.
fn running_release(root: &Path) -> String {
    let status: Value = serde_json::from_str(&succeed_graft(root, &["status", "--json"])).unwrap();
    status["release"].as_str().unwrap_or_default().to_owned()
}

/// The names in `directory` (none if it does not exist), sorted.
fn names(directory: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Every file under `directory`, with its size.
fn files_under(directory: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push((path, entry.metadata().unwrap().len()));
        }
    }
    files.sort();
    files
}

/// A release of two plugins, `counter` in the host and `kv` in its worker process.
fn isolated_root() -> tempfile::TempDir {
    let text = r#"
[release]
name = "leftovers"
version = "1.0.0"

[plugins.counter]
version = "1.0.0"
crate = "plugins/counter/1.0.0"

[plugins.kv]
version = "1.0.0"
crate = "plugins/kv/1.0.0"
isolation = "process"

[supervisor]
strategy = "one_for_one"

[[supervisor.children]]
id = "counter"
plugin = "counter"
args = { start = 0 }

[[supervisor.children]]
id = "kv"
plugin = "kv"
args = {}
"#;
    graft_tests::assembled_root(&[("1.0.0", text.to_owned())])
}

#[test]
fn a_killed_host_leaves_nothing_in_tmpdir_and_the_next_host_removes_its_copies() {
    let root = isolated_root();
    let root = root.path();
    let temporary = tempfile::tempdir().unwrap();
    let libraries = libraries_directory(root);
    // What an earlier build and an earlier record write left when they were killed.
    let releases = root.join("releases");
    std::fs::create_dir_all(releases.join(".assembling-9.9.9-4242").join("lib")).unwrap();
    std::fs::write(releases.join(".RELEASES.json.a1b2c3.writing"), b"{\"perm").unwrap();

    let mut host = Host::start_with_temporary_directory(root, &[], temporary.path());
    let host_pid = host.child.id().to_string();
    assert_eq!(
        names(&releases),
        ["1.0.0", "RELEASES.json"],
        "the start removed the interrupted build and record write"
    );
    // The host's copies and its worker's, each in its own directory under the root, and
    // the worker's socket in the host's `<pid>-socket` directory beside them.
    let own = libraries.join(&host_pid);
    let sockets = format!("{host_pid}-socket");
    let worker_of = |host_pid: &str| {
        names(&libraries)
            .into_iter()
            .find(|name| name != host_pid && !name.contains("-socket"))
            .filter(|worker| {
                names(&libraries.join(worker))
                    .iter()
                    .any(|name| name.starts_with("kv"))
            })
    };
    assert!(
        eventually_blocking(PATIENCE, || worker_of(&host_pid).is_some()
            && names(&own).iter().any(|name| name.starts_with("counter"))),
        "{:?} {:?}",
        names(&libraries),
        names(&own)
    );
    assert_eq!(names(&libraries.join(&sockets)), ["worker.sock"]);
    let first_worker = worker_of(&host_pid).expect("the worker's copies");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&own).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);

    // A worker killed while the host runs: the host removes its directory, and the
    // restarted actor's new worker has its own.
    graft_tests::kill_9(first_worker.parse().unwrap());
    assert!(
        eventually_blocking(PATIENCE, || worker_of(&host_pid)
            .is_some_and(|worker| worker != first_worker)
            && !libraries.join(&first_worker).exists()),
        "{:?}",
        names(&libraries)
    );
    let worker_pid = worker_of(&host_pid).unwrap();

    host.signal("KILL");
    host.wait();
    let worker: u32 = worker_pid.parse().unwrap();
    assert!(
        eventually_blocking(PATIENCE, || gone(worker)),
        "the worker follows its host"
    );
    assert!(own.exists(), "SIGKILL runs no cleanup");

    let _next = Host::start_with_temporary_directory(root, &[], temporary.path());
    let left = names(&libraries);
    assert!(
        left.iter().all(|name| *name != host_pid
            && !name.starts_with(&format!("{host_pid}-"))
            && *name != worker_pid),
        "the predecessor's directories are gone: {left:?}"
    );
    assert_eq!(running_release(root), "1.0.0");
    let in_temporary = names(temporary.path());
    assert!(
        in_temporary.is_empty(),
        "no library copies (graft-plugins-*) nor sockets in TMPDIR: {in_temporary:?}"
    );
}

#[test]
fn an_install_over_the_file_size_limit_fails_cleanly_and_the_host_keeps_answering() {
    let root = example_root();
    let root = root.path();
    let host = Host::start(root, &[]);
    let own = libraries_directory(root).join(host.child.id().to_string());
    let before = files_under(&own);
    assert!(!before.is_empty());
    let limit = 64 * 1024;
    let limited = Command::new("prlimit")
        .arg("--pid")
        .arg(host.child.id().to_string())
        // The soft limit is the one writes hit; the hard one stays, so it can be raised back.
        .arg(format!("--fsize={limit}:unlimited"))
        .status()
        .unwrap();
    assert!(limited.success(), "prlimit");

    let install = run_graft(root, &["install", "1.1.0"]);
    assert_eq!(install.status.code(), Some(1), "{}", stderr_text(&install));
    let message = stderr_text(&install);
    assert!(message.contains("File too large"), "{message}");
    assert!(
        message.contains(&own.display().to_string()),
        "the error names the file: {message}"
    );
    assert_eq!(
        running_release(root),
        "1.0.0",
        "the host is up and unchanged"
    );
    assert_eq!(files_under(&own), before, "no partial copy remains");

    let unlimited = Command::new("prlimit")
        .arg("--pid")
        .arg(host.child.id().to_string())
        .arg("--fsize=unlimited:unlimited")
        .status()
        .unwrap();
    assert!(unlimited.success());
    succeed_graft(root, &["install", "1.1.0"]);
    assert_eq!(running_release(root), "1.1.0");
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    mount_point: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes`, or says why it cannot.
    fn mount(bytes: u64) -> Result<Tmpfs, String> {
        let mount_point = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(mount_point.path())
            .output()
            .map_err(|error| format!("cannot run mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                stderr_text(&output).trim()
            ));
        }
        Ok(Tmpfs { mount_point })
    }

    fn path(&self) -> &Path {
        self.mount_point.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(self.mount_point.path())
            .status();
    }
}

/// Fills the file system holding `path` until a write fails for lack of space.
fn fill(path: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    loop {
        match filler.write_all(&chunk) {
            Ok(()) => {}
            Err(error) => {
                assert_eq!(
                    error.raw_os_error(),
                    Some(28),
                    "filling stopped with ENOSPC: {error}"
                );
                break;
            }
        }
    }
}

/// Sum of the sizes of every file under `directory`.
fn total_size(directory: &Path) -> u64 {
    files_under(directory).iter().map(|(_, size)| size).sum()
}

#[test]
fn out_of_space_fails_build_install_and_make_permanent_cleanly() {
    let source = example_root();
    let size = total_size(source.path());
    let tmpfs = match Tmpfs::mount(2 * size + 32 * 1024 * 1024) {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            println!("skipped: a real out-of-space test needs a tmpfs mount: {reason}");
            return;
        }
    };
    let root = tmpfs.path().join("root");
    graft_tests::copy_tree(source.path(), &root);
    let releases = root.join("releases");
    let host = Host::start(&root, &[]);
    let own = libraries_directory(&root).join(host.child.id().to_string());
    let copies = files_under(&own);
    let filler = tmpfs.path().join("filler");

    // Install: the new libraries cannot be copied.
    fill(&filler);
    let install = run_graft(&root, &["install", "1.1.0"]);
    assert_eq!(install.status.code(), Some(1), "{}", stderr_text(&install));
    let message = stderr_text(&install);
    assert!(message.contains("No space left on device"), "{message}");
    assert!(message.contains(&own.display().to_string()), "{message}");
    assert_eq!(running_release(&root), "1.0.0");
    assert_eq!(files_under(&own), copies, "no partial copy remains");

    // Make-permanent: the record cannot be written; it stays as it was, whole.
    std::fs::remove_file(&filler).unwrap();
    succeed_graft(&root, &["install", "1.1.0"]);
    let record = std::fs::read(releases.join("RELEASES.json")).unwrap();
    let before = names(&releases);
    fill(&filler);
    let permanent = run_graft(&root, &["make-permanent", "1.1.0"]);
    assert_eq!(
        permanent.status.code(),
        Some(1),
        "{}",
        stderr_text(&permanent)
    );
    let message = stderr_text(&permanent);
    assert!(message.contains("No space left on device"), "{message}");
    assert!(message.contains("RELEASES.json"), "{message}");
    assert_eq!(
        std::fs::read(releases.join("RELEASES.json")).unwrap(),
        record
    );
    assert_eq!(names(&releases), before, "no temporary file remains");
    assert_eq!(running_release(&root), "1.1.0", "the host keeps answering");

    // Build: re-assembling 1.2.0 cannot be written; the assembled 1.2.0 stays whole.
    let assembled = files_under(&releases.join("1.2.0"));
    let build = Command::new(graft_binary())
        .args(["build", "1.2.0", "--debug", "--workspace"])
        .arg(workspace_root())
        .arg("--root")
        .arg(&root)
        .output()
        .unwrap();
    assert_eq!(build.status.code(), Some(1), "{}", stderr_text(&build));
    let message = stderr_text(&build);
    assert!(message.contains("No space left on device"), "{message}");
    assert!(message.contains("1.2.0"), "{message}");
    assert_eq!(names(&releases), before, "no staging directory remains");
    assert_eq!(files_under(&releases.join("1.2.0")), assembled);
    read_assembled(&root, &version("1.2.0")).unwrap();
    drop(host);
}

#[test]
fn a_corrupt_record_boots_from_the_previous_copy_or_names_the_command_that_repairs_it() {
    let root = example_root();
    let root = root.path();
    let record = root.join("releases").join("RELEASES.json");
    let previous = root.join("releases").join("RELEASES.json.previous");
    let mut host = Host::start(root, &[]);
    succeed_graft(root, &["install", "1.1.0"]);
    succeed_graft(root, &["make-permanent", "1.1.0"]);
    host.signal("TERM");
    assert_eq!(host.wait(), 0);
    assert!(previous.exists(), "the record replaced was kept");

    // Torn: the previous good copy boots, loudly.
    let text = std::fs::read(&record).unwrap();
    std::fs::write(&record, &text[..text.len() / 2]).unwrap();
    let mut host = Host::start(root, &[]);
    assert_eq!(
        running_release(root),
        "1.0.0",
        "the previous copy's permanent"
    );
    let log = host.log();
    assert!(
        log.contains("ERROR") && log.contains("THE RELEASE RECORD IS CORRUPT"),
        "{log}"
    );
    assert!(log.contains(&record.display().to_string()), "{log}");
    host.signal("TERM");
    assert_eq!(host.wait(), 0);

    // Both corrupt: refused, naming the file and the command that repairs the root.
    std::fs::write(&previous, b"\x00\x01").unwrap();
    let refused = run_graft(root, &["start"]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr_text(&refused);
    let command = format!("rm '{}'", record.display());
    assert!(message.contains(&command), "{message}");
    assert!(
        message.contains(&previous.display().to_string()),
        "{message}"
    );
    let repaired = Command::new("sh").arg("-c").arg(&command).status().unwrap();
    assert!(repaired.success());
    let _host = Host::start(root, &[]);
    assert_eq!(
        running_release(root),
        "1.0.0",
        "the oldest assembled release"
    );
}

/// Checks that `root` holds release `wanted` whole: its manifest validates and every
/// library has the SHA-256 the manifest records.
fn assert_complete(root: &Path, wanted: &str, moment: &str) {
    let release = read_assembled(root, &version(wanted))
        .unwrap_or_else(|error| panic!("{moment}: release {wanted} is not whole: {error}"));
    assert!(!release.manifest.plugins.is_empty());
    for (name, entry) in &release.manifest.plugins {
        let library = release.directory.join(entry.library.as_ref().unwrap());
        let bytes = std::fs::read(&library)
            .unwrap_or_else(|error| panic!("{moment}: {}: {error}", library.display()));
        let digest = format!("{:x}", Sha256::digest(&bytes));
        assert_eq!(
            Some(digest.as_str()),
            entry.sha256.as_deref(),
            "{moment}: plugin {name}"
        );
    }
}

fn build_command(root: &Path) -> Command {
    let mut command = Command::new(graft_binary());
    command
        .args(["build", "1.0.0", "--debug", "--workspace"])
        .arg(workspace_root())
        .arg("--root")
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

#[test]
fn graft_build_killed_at_any_instant_leaves_the_old_or_the_new_complete_release() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let started = Instant::now();
    assert!(build_command(root).status().unwrap().success());
    assert_complete(root, "1.0.0", "after the first build");
    // One full re-assembly (cargo has nothing to do) takes this long; kills land across it.
    let started_again = Instant::now();
    assert!(build_command(root).status().unwrap().success());
    let duration = started_again.elapsed().max(Duration::from_millis(50));
    println!(
        "first build {:?}, re-assembly {duration:?}",
        started.elapsed() - duration
    );
    let kills = 12u32;
    let mut interrupted = 0;
    for kill in 0..kills {
        // Spread over the run, the last ones past its end (a kill after it finished).
        let delay = duration * (kill + 1) / (kills - 2);
        let mut child = build_command(root).spawn().unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        interrupted += u32::from(!status.success());
        assert_complete(root, "1.0.0", &format!("killed after {delay:?}"));
        let releases = root.join("releases");
        assert!(
            names(&releases)
                .iter()
                .all(|name| name == "1.0.0" || name.starts_with(".assembling-")),
            "{:?}",
            names(&releases)
        );
    }
    println!("{interrupted} of {kills} builds were killed before they finished");
    // The next build removes what the killed ones left.
    assert!(build_command(root).status().unwrap().success());
    assert_eq!(names(&root.join("releases")), ["1.0.0"]);
    assert_complete(root, "1.0.0", "after a complete build");
}

#[test]
fn a_symbolic_link_where_the_copies_go_is_refused_and_not_followed() {
    let root = example_root();
    let root = root.path();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.join("run")).unwrap();
    let link = libraries_directory(root);
    std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
    let refused = run_graft(root, &["start"]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr_text(&refused);
    assert!(
        message.contains(&format!("{} is a symbolic link", link.display())),
        "{message}"
    );
    assert!(
        names(elsewhere.path()).is_empty(),
        "nothing was written through it"
    );
}
