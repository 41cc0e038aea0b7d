//! The control socket's resource limits, against a real `graft start` host process: the
//! connection cap (`--max-connections`), the per-connection and total budgets of buffered
//! request bytes and the memory returned after a flood, the idle timeout
//! (`--idle-timeout`), the accept loop's backoff at the file-descriptor limit, and the
//! validation of those flags.

use graft_tests::{Host, built_root, eventually_blocking as eventually, graft_binary};
use serde_json::Value;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn socket(root: &Path) -> PathBuf {
    root.join("run").join("control.sock")
}

/// Reads one line (a response) from `stream`.
fn read_response(stream: &UnixStream) -> Value {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line:?}"))
}

/// Sends a `status` request on `stream`; its response.
fn status_on(stream: &mut UnixStream) -> Value {
    stream.write_all(b"{\"command\":\"status\"}\n").unwrap();
    read_response(stream)
}

/// Whether a fresh connection gets a `status` answer.
fn status_answers(root: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket(root)) else {
        return false;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if stream.write_all(b"{\"command\":\"status\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    let _ = BufReader::new(&stream).read_line(&mut line);
    serde_json::from_str::<Value>(&line).is_ok_and(|response| response["ok"] == true)
}

/// The host's resident set size, in KiB.
fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let ticks_per_second = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse::<u64>()
    .unwrap();
    Duration::from_millis(ticks * 1000 / ticks_per_second)
}

/// The limit on open files of this process (and of the hosts it starts), raised towards
/// `wanted` as far as the hard limit allows.
fn open_file_limit(wanted: u64) -> u64 {
    let read = || -> (u64, u64) {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .unwrap();
        let mut fields = line.split_whitespace().skip(3);
        let mut next = || fields.next().unwrap().parse().unwrap_or(u64::MAX);
        (next(), next())
    };
    let (soft, hard) = read();
    if soft < wanted {
        let raised = wanted.min(hard);
        let _ = Command::new("prlimit")
            .arg(format!("--pid={}", std::process::id()))
            .arg(format!("--nofile={raised}:{hard}"))
            .status();
    }
    read().0
}

#[test]
fn a_limit_of_zero_or_not_a_number_is_a_usage_error_naming_the_flag() {
    let root = tempfile::tempdir().unwrap();
    for (flag, value, expected) in [
        ("--max-connections", "0", "must be at least 1"),
        ("--idle-timeout", "0", "must be at least 1"),
        ("--max-connections", "many", "expected a whole number"),
    ] {
        let output = Command::new(graft_binary())
            .env("GRAFT_ROOT", root.path())
            .args(["start", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(&format!("invalid value '{value}' for '{flag}"))
                && stderr.contains(expected),
            "{flag} {value}: {stderr}"
        );
    }
    assert!(!root.path().join("run").exists(), "nothing started");
}

#[test]
fn connections_over_the_cap_get_a_one_line_error_and_new_ones_are_served_once_some_close() {
    let root = built_root();
    let root = root.path();
    let _host = Host::start(root, &["--max-connections", "8"]);
    // Eight clients, each served once (so each surely holds its connection slot).
    let mut clients: Vec<UnixStream> = (0..8)
        .map(|_| {
            let mut stream = UnixStream::connect(socket(root)).unwrap();
            assert_eq!(status_on(&mut stream)["ok"], true);
            stream
        })
        .collect();

    let over = UnixStream::connect(socket(root)).unwrap();
    over.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let response = read_response(&over);
    assert_eq!(response["ok"], false, "{response}");
    let error = response["error"].as_str().unwrap();
    assert!(
        error.starts_with("too many connections")
            && error.contains("at most 8")
            && error.contains("--max-connections"),
        "{error}"
    );
    let mut rest = Vec::new();
    (&over).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "one line, then closed: {rest:?}");

    // The command-line client reads why, every time (the refused socket stays open until
    // the client's request is in, so its write does not fail first).
    for _ in 0..5 {
        let output = Command::new(graft_binary())
            .env("GRAFT_ROOT", root)
            .arg("status")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains("too many connections"), "{stderr}");
    }

    // The eight are still served, two requests in one write too.
    assert_eq!(status_on(&mut clients[0])["ok"], true);
    clients[1]
        .write_all(b"{\"command\":\"releases\"}\n{\"command\":\"status\"}\n")
        .unwrap();
    let mut reader = BufReader::new(&clients[1]);
    for expected in ["releases", "status"] {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let response: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(response["ok"], true, "{expected}: {response}");
        let is_array = response["result"].is_array();
        assert_eq!(is_array, expected == "releases", "{expected}: {response}");
    }

    // Two leave; new clients are served again.
    clients.truncate(6);
    assert!(
        eventually(Duration::from_secs(30), || status_answers(root)),
        "a new client is served once others have left"
    );
}

#[test]
fn a_flood_of_unterminated_megabyte_requests_is_bounded_and_its_memory_returned() {
    const REQUEST: usize = 1024 * 1024;
    /// The host's total budget (`ControlLimits::max_buffered_bytes`), in KiB.
    const BUDGET_KIB: u64 = 64 * 1024;
    // The test holds one descriptor per client, and so does the host.
    let clients = 2000.min(open_file_limit(2200).saturating_sub(200) as usize);
    assert!(clients >= 200, "the open-file limit allows too few clients");
    let root = built_root();
    let root = root.path();
    let host = Host::start(root, &["--max-connections", "10000"]);
    let pid = host.child.id();
    for _ in 0..5 {
        assert!(status_answers(root));
    }
    let before = resident_kib(pid);

    // Every client sends 1 MiB without a newline, all at once, from one thread.
    let mut streams: Vec<UnixStream> = (0..clients)
        .map(|_| {
            let stream = UnixStream::connect(socket(root)).unwrap();
            stream.set_nonblocking(true).unwrap();
            stream
        })
        .collect();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = vec![0usize; clients];
    let mut refused = vec![false; clients];
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut progress = false;
        let mut pending = 0;
        for (index, stream) in streams.iter_mut().enumerate() {
            if refused[index] || sent[index] == REQUEST {
                continue;
            }
            pending += 1;
            match stream.write(&chunk[..chunk.len().min(REQUEST - sent[index])]) {
                Ok(written) => {
                    sent[index] += written;
                    progress = true;
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    refused[index] = true;
                    progress = true;
                }
            }
        }
        peak = peak.max(resident_kib(pid));
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} clients neither sent their request nor were refused"
        );
        if !progress {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let refused_count = refused.iter().filter(|&&refused| refused).count();
    assert!(
        refused_count > 0,
        "{clients} MiB cannot fit in the 64 MiB budget: some clients are refused"
    );
    // A refused client was told why.
    let told = streams
        .iter()
        .zip(&refused)
        .filter(|(_, refused)| **refused)
        .take(20)
        .any(|(stream, _)| {
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut line = String::new();
            let _ = BufReader::new(stream).read_line(&mut line);
            line.contains("the host's request buffers are full (64 MiB")
        });
    assert!(told, "a refused client reads why it was refused");

    // While the rest still hold their unterminated requests, the host answers.
    assert!(status_answers(root), "the host answers during the flood");
    peak = peak.max(resident_kib(pid));
    // The budget, plus per-connection overhead (8 KiB of unbudgeted buffer, the task, the
    // socket's registration): 32 MiB for 2,000 connections.
    // Without the budget the host held 2,000 MiB.
    assert!(
        peak <= before + BUDGET_KIB + 32 * 1024,
        "RSS went from {before} KiB to {peak} KiB with {clients} clients ({refused_count} refused)"
    );

    drop(streams);
    let mut after = 0;
    assert!(
        eventually(Duration::from_secs(60), || {
            after = resident_kib(pid);
            after <= before + before / 10
        }),
        "RSS is back within 10% of {before} KiB after the clients left: {after} KiB (peak {peak} KiB)"
    );
    assert!(status_answers(root));
    eprintln!(
        "{clients} clients ({refused_count} refused): RSS {before} KiB before, {peak} KiB at the peak, {after} KiB after"
    );
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout_and_an_active_one_is_not() {
    // 2 s rather than 1: the active client below must get a request in within it even on
    // a loaded machine.
    let root = built_root();
    let root = root.path();
    let _host = Host::start(root, &["--idle-timeout", "2"]);
    let idle = UnixStream::connect(socket(root)).unwrap();
    let mut active = UnixStream::connect(socket(root)).unwrap();

    let idle_closed = std::thread::spawn(move || {
        idle.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut text = String::new();
        (&idle).read_to_string(&mut text).unwrap();
        text
    });
    // The active client sends a request every 100 ms until the idle one is closed, and
    // for two more idle timeouts after.
    let mut closed_at = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while closed_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(4)) {
        assert_eq!(status_on(&mut active)["ok"], true);
        if closed_at.is_none() && idle_closed.is_finished() {
            closed_at = Some(Instant::now());
        }
        assert!(Instant::now() < deadline, "the idle connection stays open");
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = idle_closed.join().unwrap();
    let response: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|error| panic!("one line, then closed: {error}: {text:?}"));
    let error = response["error"].as_str().unwrap();
    assert!(
        error.contains("no request for 2 s") && error.contains("--idle-timeout"),
        "{error}"
    );
    assert_eq!(status_on(&mut active)["ok"], true, "the active one is open");
}

#[test]
fn at_the_open_file_limit_the_accept_loop_backs_off_and_serves_again_once_clients_leave() {
    let root = built_root();
    let root = root.path();
    let log = root.join("host.log");
    let child = Command::new("prlimit")
        .arg("--nofile=64:64")
        .arg("--")
        .arg(graft_binary())
        .arg("start")
        .env("GRAFT_ROOT", root)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let host = Host { child, log };
    assert!(
        eventually(Duration::from_secs(30), || status_answers(root)),
        "the host did not start: {}",
        host.log()
    );
    let pid = host.child.id();

    // More clients than the host has descriptors; the host accepts until it has none left.
    let clients: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(socket(root)).unwrap())
        .collect();
    let warnings = |log: &str| log.matches("control socket accept failed").count();
    assert!(
        eventually(Duration::from_secs(30), || warnings(&host.log()) > 0),
        "the host reports the failed accept: {}",
        host.log()
    );
    assert!(
        host.log().contains("open-file limit"),
        "the warning names the limit: {}",
        host.log()
    );

    // Watch it for three seconds at the limit: it does not spin, and warns once per 10 s.
    let log_before = host.log();
    let cpu_before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(3));
    let log_after = host.log();
    let cpu = cpu_time(pid) - cpu_before;
    let new_warnings = warnings(&log_after) - warnings(&log_before);
    assert!(
        new_warnings <= 1,
        "{new_warnings} new warnings in 3 s: {log_after}"
    );
    assert!(
        log_after.len() - log_before.len() < 4096,
        "the log grew by {} bytes in 3 s",
        log_after.len() - log_before.len()
    );
    // Spinning would take a whole core: about 3 s of CPU.
    assert!(
        cpu < Duration::from_millis(1500),
        "the host used {cpu:?} of CPU in 3 s"
    );

    drop(clients);
    assert!(
        eventually(Duration::from_secs(30), || status_answers(root)),
        "the host serves again once clients leave: {}",
        host.log()
    );
}
