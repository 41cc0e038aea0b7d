//! Singletons across hosts (issue 17): a `placement = "singleton"` worker (the
//! `cluster-probe` fixture, appending `<tag> <pid> <unix ms> <event>` lines to one shared
//! log) in the same release on several real `graft start --fleet` hosts of one group,
//! against a real nats-server.
//!
//! What is checked is the log: the lines of different host processes (pids) form runs that
//! never interleave (exactly one writer at any time), and a new owner's run starts after
//! the old one's last line. Fail-over times are printed, never asserted beyond a generous
//! bound (speed is the bench's, host/benches/singleton.rs).
//!
//! Tricky: which host wins the lease first is up to the race, so the tests find the owner
//! by the pid in the log; the partition test starts the host behind the forwarder alone
//! first, so it is the owner. The store-loss test restarts the server without its store
//! while that owner is cut off: the new owner must wait out the young bucket's quarantine.

use graft_tests::nats::NatsServer;
use graft_tests::proxy::TcpForwarder;
use graft_tests::{Host, assembled_root};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Generous bound for anything the tests wait for (a loaded 2-core machine).
const DEADLINE: Duration = Duration::from_secs(60);
/// Generous bound for a fail-over after SIGKILL (LEASE_TTL 6 s + poll + restart).
const FAILOVER_BOUND: Duration = Duration::from_secs(30);

/// One line of the shared log.
#[derive(Debug, Clone)]
struct Line {
    pid: u32,
    ms: u64,
    event: String,
}

fn read_log(path: &Path) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _tag = fields.next()?;
            let pid = fields.next()?.parse().ok()?;
            let ms = fields.next()?.parse().ok()?;
            let event = fields.next()?.to_owned();
            Some(Line { pid, ms, event })
        })
        .collect()
}

/// The log's lines as runs of one pid each, in file order: (pid, first line, last line).
fn runs(lines: &[Line]) -> Vec<(u32, Line, Line)> {
    let mut runs: Vec<(u32, Line, Line)> = Vec::new();
    for line in lines {
        match runs.last_mut() {
            Some((pid, _, last)) if *pid == line.pid => *last = line.clone(),
            _ => runs.push((line.pid, line.clone(), line.clone())),
        }
    }
    runs
}

/// Exactly one writer at any time: `expected` runs of different pids, each starting no
/// earlier than the previous one's last line.
fn assert_one_writer_at_a_time(log: &Path, expected: usize) -> Vec<(u32, Line, Line)> {
    let lines = read_log(log);
    let runs = runs(&lines);
    let summary: Vec<String> = runs
        .iter()
        .map(|(pid, first, last)| format!("{pid}: {}..{} ({})", first.ms, last.ms, last.event))
        .collect();
    assert_eq!(
        runs.len(),
        expected,
        "the writers' runs in the shared log: {summary:?}"
    );
    for pair in runs.windows(2) {
        assert!(
            pair[1].1.ms >= pair[0].2.ms,
            "a new owner wrote before the old one's last line: {summary:?}"
        );
    }
    runs
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A root whose release runs `cluster-probe` as a singleton logging to `log` with `tag`.
fn probe_root(log: &Path, tag: &str) -> tempfile::TempDir {
    let text = format!(
        "[release]\nname = \"singleton\"\nversion = \"1.0.0\"\n\n[plugins.cluster-probe]\nversion = \"0.1.0\"\ncrate = \"tests/fixtures/cluster-probe\"\n\n[supervisor]\nstrategy = \"one_for_one\"\n\n[[supervisor.children]]\nid = \"probe\"\nname = \"probe\"\nplugin = \"cluster-probe\"\nplacement = \"singleton\"\nargs = {{ log = {log:?}, tag = {tag:?} }}\n",
        log = log.display().to_string(),
    );
    assembled_root(&[("1.0.0", text)])
}

struct Member {
    _root: tempfile::TempDir,
    host: Host,
}

fn start_member(url: &str, log: &Path, name: &str) -> Member {
    let root = probe_root(log, name);
    let host = Host::start(
        root.path(),
        &["--fleet", url, "--group", "g", "--host-name", name],
    );
    Member { _root: root, host }
}

/// The pid that writes ticks now (after at least `ticks` ticks of it).
fn current_writer(log: &Path, after: usize) -> u32 {
    let mut writer = 0;
    wait_for("a singleton writing ticks", || {
        let lines = read_log(log);
        let ticks = lines
            .iter()
            .skip(after)
            .filter(|l| l.event == "tick")
            .count();
        if ticks >= 5 {
            writer = lines.last().map(|l| l.pid).unwrap_or_default();
            true
        } else {
            false
        }
    });
    writer
}

/// Waits until a pid other than `old` writes; the time it took from `since`.
fn await_new_writer(log: &Path, old: u32, since: Instant) -> (u32, Duration) {
    let mut new = 0;
    wait_for(
        "another host taking the singleton over",
        || match read_log(log).iter().rev().find(|l| l.pid != old) {
            Some(line) => {
                new = line.pid;
                true
            }
            None => false,
        },
    );
    let took = since.elapsed();
    (new, took)
}

fn log_path(directory: &tempfile::TempDir) -> PathBuf {
    directory.path().join("shared.log")
}

#[test]
fn one_host_of_three_runs_the_singleton_and_another_takes_over_after_sigkill() {
    let server = NatsServer::start();
    let directory = tempfile::tempdir().unwrap();
    let log = log_path(&directory);
    let members: Vec<Member> = ["a", "b", "c"]
        .iter()
        .map(|name| start_member(&server.url(), &log, name))
        .collect();
    let owner = current_writer(&log, 0);
    // Three hosts up, for a while: one writer only.
    let settled = read_log(&log).len();
    wait_for("more ticks", || read_log(&log).len() >= settled + 20);
    assert_one_writer_at_a_time(&log, 1);

    let owner_member = members
        .iter()
        .find(|member| member.host.child.id() == owner)
        .expect("the writer is one of the hosts");
    let killed = Instant::now();
    owner_member.host.signal("KILL");
    let (new, took) = await_new_writer(&log, owner, killed);
    println!("singleton fail-over after SIGKILL of its owner: {took:?}");
    assert!(took < FAILOVER_BOUND, "fail-over took {took:?}");
    assert_ne!(new, owner);
    let before = read_log(&log).len();
    wait_for("the new owner's ticks", || {
        read_log(&log).len() >= before + 20
    });
    let runs = assert_one_writer_at_a_time(&log, 2);
    assert_eq!(runs[1].0, new);
}

#[test]
fn a_graceful_stop_of_the_owner_hands_the_singleton_over() {
    let server = NatsServer::start();
    let directory = tempfile::tempdir().unwrap();
    let log = log_path(&directory);
    let mut members: Vec<Member> = ["a", "b"]
        .iter()
        .map(|name| start_member(&server.url(), &log, name))
        .collect();
    let owner = current_writer(&log, 0);
    let index = members
        .iter()
        .position(|member| member.host.child.id() == owner)
        .expect("the writer is one of the hosts");
    let stopped = Instant::now();
    members[index].host.signal("TERM");
    let (new, took) = await_new_writer(&log, owner, stopped);
    println!("singleton hand-over after a graceful stop of its owner: {took:?}");
    assert_eq!(
        members[index].host.wait(),
        0,
        "{}",
        members[index].host.log()
    );
    assert!(took < FAILOVER_BOUND, "hand-over took {took:?}");
    let before = read_log(&log).len();
    wait_for("the new owner's ticks", || {
        read_log(&log).len() >= before + 10
    });
    let runs = assert_one_writer_at_a_time(&log, 2);
    assert_eq!(
        runs[0].2.event, "terminate",
        "the old owner stopped its copy"
    );
    assert_eq!(runs[1].0, new);
}

/// Two runs in the log: the first owner's ends with its `terminate` (its fence stopped it),
/// strictly before the second owner's first line.
fn assert_stopped_before_the_next_started(log: &Path) -> Vec<(u32, Line, Line)> {
    let runs = assert_one_writer_at_a_time(log, 2);
    assert_eq!(
        runs[0].2.event, "terminate",
        "the old owner stopped its copy: {runs:?}"
    );
    assert!(
        runs[1].1.ms > runs[0].2.ms,
        "the old owner's last line precedes the new owner's first: {runs:?}"
    );
    runs
}

/// Two members: `a` behind a TCP forwarder (started alone first, so it owns the
/// singleton) and `b` connected directly, both settled.
struct Partition {
    forwarder: TcpForwarder,
    _directory: tempfile::TempDir,
    log: PathBuf,
    a: Member,
    b: Member,
    /// `a`'s pid: the writer.
    owner: u32,
}

fn partition_ready(server: &NatsServer) -> Partition {
    let port: u16 = server
        .url()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a port in the server's url");
    let forwarder = TcpForwarder::start(port);
    let directory = tempfile::tempdir().unwrap();
    let log = log_path(&directory);
    let a = start_member(&forwarder.url(), &log, "a");
    let owner = current_writer(&log, 0);
    assert_eq!(owner, a.host.child.id());
    let b = start_member(&server.url(), &log, "b");
    let settled = read_log(&log).len();
    wait_for("more ticks", || read_log(&log).len() >= settled + 10);
    Partition {
        forwarder,
        _directory: directory,
        log,
        a,
        b,
        owner,
    }
}

#[test]
fn a_partitioned_owner_stops_its_copy_before_another_host_starts_one() {
    let server = NatsServer::start();
    let Partition {
        forwarder,
        _directory,
        log,
        a: _a,
        b: _b,
        owner,
    } = partition_ready(&server);

    let cut = Instant::now();
    forwarder.cut();
    let (new, took) = await_new_writer(&log, owner, cut);
    println!("singleton take-over after its owner was cut from NATS: {took:?}");
    assert_stopped_before_the_next_started(&log);

    forwarder.heal();
    // Healed: a standby now; the new owner keeps writing alone.
    let before = read_log(&log).len();
    wait_for("ticks after the heal", || {
        read_log(&log).len() >= before + 80
    });
    let runs = assert_one_writer_at_a_time(&log, 2);
    assert_eq!(runs[1].0, new);
}

#[test]
fn an_owner_cut_off_while_the_server_loses_its_store_stops_before_a_new_owner_starts() {
    let mut server = NatsServer::start();
    let Partition {
        forwarder,
        _directory,
        log,
        a: _a,
        b,
        owner,
    } = partition_ready(&server);

    // A is cut off, and the server restarts without its store: the lease A held is gone
    // with the bucket, so B can take a fresh one at once — and must still not start its
    // copy before A's fence has stopped A's.
    let cut = Instant::now();
    forwarder.cut();
    server.stop();
    std::fs::remove_dir_all(server.store().join("jetstream")).unwrap();
    server.start_again();
    let taken_over = graft_tests::eventually_blocking(DEADLINE, || {
        read_log(&log).iter().any(|line| line.pid != owner)
    });
    assert!(
        taken_over,
        "host b never took the singleton over; its log:\n{}",
        b.host.log()
    );
    let (new, took) = await_new_writer(&log, owner, cut);
    println!("singleton take-over after its owner was cut off and the store lost: {took:?}");
    let runs = assert_stopped_before_the_next_started(&log);
    assert_eq!(runs[1].0, new);
    let before = read_log(&log).len();
    wait_for("the new owner's ticks", || {
        read_log(&log).len() >= before + 20
    });
    assert_one_writer_at_a_time(&log, 2);
}
