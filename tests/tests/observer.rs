//! `graft start --http`, end to end: the observer page in a real headless Chromium (driven
//! through chromedriver over WebDriver) shows the tree of a running host, installs a
//! release from its button, and draws the upgrade in its timeline (then makes it
//! permanent and rolls back, from their buttons too); and, without a browser,
//! what the server refuses (no token, another token, another origin, a rebound `Host`),
//! its answers' headers, its errors, and `/metrics` checked by `promtool`.
//!
//! Needs `/usr/bin/chromium`, `/usr/bin/chromedriver` and `/usr/bin/promtool` (CI installs
//! them); a missing one fails the test with what to install, it is never skipped.
//!
//! Every process started here (the host, chromedriver, Chromium) is killed when its guard
//! drops, a failed assertion included. `GRAFT_SAVE_SCREENSHOT=PATH` keeps the browser
//! test's screenshot of the observer (the README's docs/observer.png comes from it).

use fantoccini::{Client, ClientBuilder, Locator};
use graft_tests::scrape::{Scrape, promtool_accepts};
use graft_tests::{
    Host, Traffic, built_root, eventually_blocking, free_port, graft_binary, http_info,
    http_request, succeed_graft,
};
use serde_json::{Value, json};
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the page gets to show something: generous, for a loaded 2-core machine where
/// Chromium starts slowly.
const DEADLINE: Duration = Duration::from_secs(120);

fn require(binary: &str, package: &str) {
    assert!(
        Path::new(binary).exists(),
        "{binary} is missing: install Debian's {package} (CI's .ci/run does)"
    );
}

/// chromedriver on a free loopback port, in a process group of its own; the Chromium it
/// starts uses a profile directory of ours. Dropped: the group is killed, then whatever
/// still names the profile directory.
struct Chromedriver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        require("/usr/bin/chromedriver", "chromium-driver");
        require("/usr/bin/chromium", "chromium");
        let profile = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                profile.path().join("chromedriver.log").display()
            ))
            // Chromium's crash handlers leave the process group; with its configuration
            // under our directory their command lines name it (see `drop`).
            .env("XDG_CONFIG_HOME", profile.path().join("config"))
            .env("XDG_CACHE_HOME", profile.path().join("cache"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("starting chromedriver");
        let driver = Chromedriver {
            child,
            port,
            profile,
        };
        assert!(
            eventually_blocking(Duration::from_secs(60), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "chromedriver did not listen on {port} within 60 s: {}",
            driver.log()
        );
        driver
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.profile.path().join("chromedriver.log")).unwrap_or_default()
    }

    /// A WebDriver session: headless Chromium, its profile under ours, 1440×1000.
    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--hide-scrollbars",
                    "--window-size=1440,1000",
                    format!("--user-data-dir={}", self.profile.path().join("chromium").display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "no WebDriver session from chromedriver: {error}\n{}",
                    self.log()
                )
            })
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        // What left the group (Chromium's crash handlers) still names our directory.
        kill_processes_naming(&self.profile.path().to_string_lossy());
    }
}

/// Kills the processes whose command line contains `needle` (a directory of this test's).
fn kill_processes_naming(needle: &str) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(command_line) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&command_line).contains(needle) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `script` in the page until `check` accepts its result; the result. Panics with the
/// last result seen after [`DEADLINE`].
async fn wait_for(
    client: &Client,
    what: &str,
    script: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        let last = match client.execute(script, Vec::new()).await {
            Ok(value) if check(&value) => return value,
            Ok(value) => value,
            Err(error) => json!(format!("the script failed: {error}")),
        };
        if Instant::now() >= end {
            let page = client
                .execute("return document.body.innerText", Vec::new())
                .await
                .unwrap_or_default();
            panic!("{what}: not within {DEADLINE:?}; last seen {last}\npage:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Clicks the element `css` finds once it is enabled, with a real WebDriver click (again,
/// within a deadline, when the page redrew it in between).
async fn click(client: &Client, what: &str, css: &str) {
    let query = format!(
        "const element = document.querySelector({}); return element !== null && !element.disabled;",
        json!(css)
    );
    wait_for(
        client,
        &format!("{what} is there and enabled"),
        &query,
        |value| value == &json!(true),
    )
    .await;
    // The page redraws the tree when its figures change (every snapshot, under traffic): an
    // element found just before a redraw is stale by the click. Find it again and retry.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let clicked = match client.find(Locator::Css(css)).await {
            Ok(element) => element.click().await,
            Err(error) => Err(error),
        };
        match clicked {
            Ok(()) => return,
            Err(error) if Instant::now() < deadline => {
                eprintln!("clicking {what} again: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("clicking {what}: {error}"),
        }
    }
}

/// The attributes of every actor row: `[actor, state, version]`.
const ACTORS: &str = "return [...document.querySelectorAll('#tree li.actor')].map(row => [row.dataset.actor, row.dataset.state, row.dataset.version || '']);";

fn has_actor(rows: &Value, actor: &str, state: &str, version: &str) -> bool {
    rows.as_array()
        .is_some_and(|rows| rows.contains(&json!([actor, state, version])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_shows_the_tree_installs_from_the_page_and_draws_the_upgrade() {
    let began = Instant::now();
    let mut timings = Vec::new();
    let mut lap =
        |what: &str| timings.push(format!("{what}: {:.1} s", began.elapsed().as_secs_f64()));
    let root = built_root();
    let root = root.path();
    let host = Host::start(root, &["--http", "127.0.0.1:0"]);
    let info = http_info(root);
    let (url, token) = (
        info["url"].as_str().unwrap().to_owned(),
        info["token"].as_str().unwrap().to_owned(),
    );
    let address = info["address"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // Some state to show: the counter's count, and messages to count.
    succeed_graft(root, &["cast", "counter", r#"{"Add": 42}"#]);
    let traffic = Traffic::start(root);
    lap("host up");

    let driver = Chromedriver::start();
    let client = driver.browser().await;
    lap("browser up");
    client
        .goto(&format!("{url}#token={token}"))
        .await
        .expect("opening the observer");

    let rows = wait_for(
        &client,
        "the tree shows the running actors",
        ACTORS,
        |rows| {
            has_actor(rows, "counter", "running", "1.0.0")
                && has_actor(rows, "kv", "running", "1.0.0")
        },
    )
    .await;
    assert!(
        rows.as_array().unwrap().len() >= 4,
        "every actor of the demo release: {rows}"
    );
    wait_for(
        &client,
        "the page took the token from the fragment and dropped the fragment",
        "return [document.getElementById('token-state').dataset.state, location.hash]",
        |value| value == &json!(["set", ""]),
    )
    .await;
    wait_for(
        &client,
        "the event stream is live",
        "return document.getElementById('connection').dataset.state",
        |value| value == "live",
    )
    .await;
    lap("tree shown");
    // The message rate, from successive snapshots of each actor's messages handled.
    let snapshot = http_request(&address, "GET", "/api/snapshot", &[]).json();
    assert!(
        snapshot["status"]["tree"]["children"][0]["messages_handled"].is_u64(),
        "the status reports messages handled: {}",
        snapshot["status"]["tree"]["children"][0]
    );
    wait_for(
        &client,
        "the counter's message rate shows",
        r#"return document.querySelector('#tree li.actor[data-actor="counter"] .rate').textContent"#,
        |rate| rate.as_str().and_then(|rate| rate.parse::<f64>().ok()).is_some_and(|rate| rate > 0.0),
    )
    .await;

    // An actor's state, through its format_status.
    // Under traffic the count grows: what the panel shows is at least 42.
    click(
        &client,
        "the counter's row",
        r#"#tree li.actor[data-actor="counter"] .row"#,
    )
    .await;
    wait_for(
        &client,
        "the side panel shows the counter's state",
        "return document.getElementById('actor-state').textContent",
        |text| {
            text.as_str()
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .and_then(|state| state["count"].as_i64())
                .is_some_and(|count| count >= 42)
        },
    )
    .await;

    // An actor's recent exits: hulk crashes on request, its supervisor restarts it, and its
    // panel (refreshed every 2 s) lists the exit with its reason.
    let crashed = graft_tests::run_graft(root, &["call", "hulk", "\"Crash\""]);
    assert!(
        !crashed.status.success(),
        "the Crash call answers with the exit"
    );
    click(
        &client,
        "hulk's row",
        r#"#tree li.actor[data-actor="hulk"] .row"#,
    )
    .await;
    let exits = wait_for(
        &client,
        "hulk's panel lists its exit",
        "return [...document.querySelectorAll('#actor-exits li[data-reason]')].map(exit => exit.dataset.reason)",
        |reasons| reasons.as_array().is_some_and(|reasons| !reasons.is_empty()),
    )
    .await;
    assert!(
        exits[0]
            .as_str()
            .is_some_and(|reason| reason.contains("Hulk was defeated")),
        "{exits}"
    );
    lap("an exit shown");

    // An install from the page.
    click(
        &client,
        "the Install button of 1.1.0",
        r#"tr[data-release="1.1.0"] button[data-action="install"]"#,
    )
    .await;
    let upgrade = wait_for(
        &client,
        "the timeline shows the install of 1.1.0, completed",
        r#"const upgrade = document.querySelector('#timeline .upgrade[data-to="1.1.0"]');
           return upgrade === null ? null : Object.assign({}, upgrade.dataset, {
             phases: upgrade.querySelectorAll('.phase').length,
             facts: upgrade.querySelector('.facts').textContent });"#,
        |upgrade| upgrade["outcome"] == "completed",
    )
    .await;
    assert_eq!(upgrade["from"], "1.0.0", "{upgrade}");
    assert!(upgrade["phases"].as_u64().unwrap() >= 3, "{upgrade}");
    let facts = upgrade["facts"].as_str().unwrap();
    assert!(
        facts.contains("longest pause") && facts.contains("actors migrated"),
        "{facts}"
    );
    // `lost` is the metrics' count of messages lost while it ran (metrics are on with
    // `--http`).
    assert_eq!(upgrade["lost"], "0", "{upgrade}");
    wait_for(
        &client,
        "1.1.0 is current and the counter runs 1.1.0",
        &format!(
            "{ACTORS_BODY} return [document.querySelector('tr[data-release=\"1.1.0\"]').dataset.status, rows];",
            ACTORS_BODY = "const rows = [...document.querySelectorAll('#tree li.actor')].map(row => [row.dataset.actor, row.dataset.state, row.dataset.version || '']);"
        ),
        |value| value[0] == "current" && has_actor(&value[1], "counter", "running", "1.1.0"),
    )
    .await;
    let message = wait_for(
        &client,
        "the page reports the install",
        "return [document.getElementById('message').dataset.outcome, document.getElementById('message').textContent]",
        |value| value[0] != "",
    )
    .await;
    assert_eq!(message[0], "ok", "{message}");
    lap("installed from the page");

    let screenshot = client.screenshot().await.expect("a screenshot");
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG");
    if let Some(path) = std::env::var_os("GRAFT_SAVE_SCREENSHOT") {
        std::fs::write(&path, &screenshot).expect("saving the screenshot");
        eprintln!(
            "observer screenshot saved to {}",
            Path::new(&path).display()
        );
    }

    // Make it permanent from the page too.
    click(
        &client,
        "the Make permanent button of 1.1.0",
        r#"tr[data-release="1.1.0"] button[data-action="make-permanent"]"#,
    )
    .await;
    wait_for(
        &client,
        "1.1.0 is permanent",
        r#"return document.querySelector('tr[data-release="1.1.0"]').dataset.status"#,
        |status| status == "permanent",
    )
    .await;
    let releases: Value =
        serde_json::from_str(&succeed_graft(root, &["releases", "--json"])).unwrap();
    assert!(
        releases
            .as_array()
            .unwrap()
            .iter()
            .any(|release| release["version"] == "1.1.0" && release["status"] == "permanent"),
        "{releases}"
    );
    lap("made permanent");

    // Roll back from the page: back to 1.0.0 (1.1.0 stays permanent), drawn in the timeline.
    click(&client, "the Roll back button", "#rollback").await;
    wait_for(
        &client,
        "1.0.0 is current and the counter runs 1.0.0",
        &format!(
            "{ACTORS_BODY} return [document.body.dataset.release, rows];",
            ACTORS_BODY = "const rows = [...document.querySelectorAll('#tree li.actor')].map(row => [row.dataset.actor, row.dataset.state, row.dataset.version || '']);"
        ),
        |value| value[0] == "1.0.0" && has_actor(&value[1], "counter", "running", "1.0.0"),
    )
    .await;
    let rollback = wait_for(
        &client,
        "the timeline shows the rollback to 1.0.0, completed",
        r#"const upgrade = document.querySelector('#timeline .upgrade[data-kind="rollback"][data-to="1.0.0"]');
           return upgrade ? [upgrade.dataset.outcome, upgrade.dataset.lost] : null;"#,
        |value| !value.is_null(),
    )
    .await;
    assert_eq!(rollback, json!(["completed", "0"]), "{rollback}");
    lap("rolled back from the page");
    drop(traffic);
    client.close().await.expect("closing the browser");
    drop(driver);
    drop(host);
    eprintln!("timings: {}", timings.join(", "));
}

/// A host started by hand (for its stdout), killed when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn error_kind(response: &graft_tests::HttpResponse) -> Value {
    response.json()["error"]["kind"].clone()
}

#[test]
fn the_http_server_refuses_what_it_must_and_serves_metrics_promtool_accepts() {
    require("/usr/bin/promtool", "prometheus (promtool)");
    let root = built_root();
    let root = root.path();
    let mut child = Command::new(graft_binary())
        .env("GRAFT_ROOT", root)
        .env("RUST_LOG", "info")
        .args(["--json", "start", "--http", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(root.join("host.log")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let host = Started(child);
    let info = http_info(root);
    // With --json, the first line on stdout says the same.
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let printed: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(printed["observer"]["url"], info["url"], "{first}");
    assert_eq!(printed["observer"]["token"], info["token"], "{first}");
    let mode = std::fs::metadata(root.join("run").join("http.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let address = info["address"].as_str().unwrap().to_owned();
    let token = info["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let own_origin = format!("http://{address}");
    let get = |path: &str| http_request(&address, "GET", path, &[]);
    let post = |path: &str, headers: &[(&str, &str)]| http_request(&address, "POST", path, headers);
    let release = || get("/api/snapshot").json()["status"]["release"].clone();

    // The page and its assets: types, no caching, a strict policy, no CORS.
    for (path, content_type) in [
        ("/", "text/html"),
        ("/observer.js", "text/javascript"),
        ("/observer.css", "text/css"),
    ] {
        let response = get(path);
        assert_eq!(response.status, 200, "{path}");
        assert!(
            response
                .header("content-type")
                .is_some_and(|value| value.starts_with(content_type)),
            "{path}: {response:?}"
        );
        assert_eq!(response.header("cache-control"), Some("no-store"), "{path}");
        assert!(
            response
                .header("content-security-policy")
                .is_some_and(|policy| policy.contains("default-src 'none'")),
            "{path}"
        );
        assert_eq!(response.header("access-control-allow-origin"), None);
    }
    assert_eq!(release(), "1.0.0");

    // Refused: no token, another token, another origin, a rebound Host name.
    let response = post("/api/rollback", &[]);
    assert_eq!(
        (response.status, error_kind(&response)),
        (401, json!("missing_token"))
    );
    let response = post("/api/install/1.1.0", &[("Authorization", "Bearer 00")]);
    assert_eq!(
        (response.status, error_kind(&response)),
        (401, json!("wrong_token"))
    );
    let response = post(
        "/api/install/1.1.0",
        &[
            ("Authorization", &bearer),
            ("Origin", "http://evil.example"),
        ],
    );
    assert_eq!(
        (response.status, error_kind(&response)),
        (403, json!("foreign_origin"))
    );
    assert!(response.body.contains("evil.example"), "{}", response.body);
    let response = http_request(
        &address,
        "GET",
        "/api/snapshot",
        &[(
            "Host",
            &format!("rebound.example:{}", address.rsplit(':').next().unwrap()),
        )],
    );
    assert_eq!(
        (response.status, error_kind(&response)),
        (403, json!("unexpected_host"))
    );
    // A GET never mutates.
    assert_eq!(get("/api/install/1.1.0").status, 405);
    assert_eq!(release(), "1.0.0", "nothing was installed");

    // Bad input gets a clear error.
    let response = post("/api/install/banana", &[("X-Graft-Token", &token)]);
    assert_eq!(
        (response.status, error_kind(&response)),
        (422, json!("bad_version"))
    );
    let response = post("/api/install/9.9.9", &[("X-Graft-Token", &token)]);
    assert_eq!(
        (response.status, error_kind(&response)),
        (404, json!("unknown_release"))
    );
    let response = get("/api/nothing");
    assert_eq!(
        (response.status, error_kind(&response)),
        (404, json!("not_found"))
    );
    let response = get("/api/actors/nobody");
    assert_eq!(
        (response.status, error_kind(&response)),
        (404, json!("no_actor"))
    );

    // With the token and its own origin: installed; again: a conflict.
    let response = post(
        "/api/install/1.1.0",
        &[("Authorization", &bearer), ("Origin", &own_origin)],
    );
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["to"], "1.1.0");
    assert_eq!(release(), "1.1.0");
    let response = post("/api/install/1.1.0", &[("Authorization", &bearer)]);
    assert_eq!(
        (response.status, error_kind(&response)),
        (409, json!("already_current"))
    );
    // Rolled back from the API; the timeline has both.
    let response = post("/api/rollback", &[("X-Graft-Token", &token)]);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["to"], "1.0.0");
    assert_eq!(release(), "1.0.0");
    let upgrades = get("/api/snapshot").json()["upgrades"].clone();
    let kinds: Vec<(Value, Value)> = upgrades
        .as_array()
        .unwrap()
        .iter()
        .map(|upgrade| (upgrade["kind"].clone(), upgrade["to"].clone()))
        .collect();
    assert!(
        kinds.ends_with(&[
            (json!("install"), json!("1.1.0")),
            (json!("rollback"), json!("1.0.0"))
        ]),
        "{upgrades}"
    );
    let actor = get("/api/actors/counter");
    assert_eq!(actor.status, 200, "{}", actor.body);
    assert!(actor.json()["state"].is_object(), "{}", actor.body);

    // /metrics: Prometheus text that promtool accepts.
    let metrics = get("/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    promtool_accepts(&Scrape::parse(metrics.body.clone()));

    // An address in use stops another host before it boots anything.
    let other = tempfile::tempdir().unwrap();
    let refused = graft_tests::run_graft(other.path(), &["start", "--http", &address]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = graft_tests::stderr_text(&refused);
    assert!(
        stderr.contains(&format!("binding the HTTP server to {address}")),
        "{stderr}"
    );

    // An orderly stop takes the server and its file away.
    let mut host = host;
    graft_tests::send_signal(host.0.id(), "TERM");
    let status = host.0.wait().unwrap();
    assert!(status.success(), "the host's exit: {status}");
    assert!(!root.join("run").join("http.json").exists());
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "the HTTP server outlived the host"
    );
    // A file left by a host that died is removed by the next one, which (without --http)
    // serves no HTTP.
    std::fs::write(root.join("run").join("http.json"), "{}").unwrap();
    let _plain = Host::start(root, &[]);
    assert!(
        !root.join("run").join("http.json").exists(),
        "a host without --http left a stale http.json"
    );
}

/// Opens `GET /api/events` on `address` and reads its status line; the connection stays
/// open (the stream with it) as long as the returned socket lives.
fn open_event_stream(address: &str) -> (u16, std::net::TcpStream) {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut status_line = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut status_line)
        .unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
    (status, stream)
}

#[test]
fn event_streams_are_capped_and_a_closed_one_frees_its_place() {
    let root = built_root();
    let root = root.path();
    let host = Host::start(root, &["--http", "127.0.0.1:0"]);
    let info = http_info(root);
    let address = info["address"].as_str().unwrap().to_owned();
    let limit = graft::http::MAX_EVENT_STREAMS;
    let began = Instant::now();
    let mut open: Vec<std::net::TcpStream> = (0..limit)
        .map(|index| {
            let (status, stream) = open_event_stream(&address);
            assert_eq!(status, 200, "stream {index}: {}", host.log());
            stream
        })
        .collect();
    // One more is refused, with a reason; the page and the API still answer.
    let refused = http_request(&address, "GET", "/api/events", &[]);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(error_kind(&refused), "too_many_streams", "{}", refused.body);
    assert!(
        refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&limit.to_string())
    );
    assert_eq!(
        http_request(&address, "GET", "/api/snapshot", &[]).status,
        200
    );
    eprintln!("{limit} streams open after {:?}", began.elapsed());
    // A closed stream gives its place back (once the server notices, at its next event).
    drop(open.pop());
    let mut reopened = None;
    assert!(
        eventually_blocking(Duration::from_secs(60), || {
            let (status, stream) = open_event_stream(&address);
            if status == 200 {
                reopened = Some(stream);
            }
            status == 200
        }),
        "no stream could open after one closed: {}",
        host.log()
    );
    eprintln!("reopened after {:?}", began.elapsed());
    drop(open);
    drop(reopened);
    drop(host);
}
