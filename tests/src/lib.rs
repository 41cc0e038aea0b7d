//! Helpers shared by the end-to-end tests: building the real plugin crates with cargo (once
//! per test process) and making altered copies of their libraries.
//!
//! Tests never load cargo's artifact paths themselves; the loader copies every library to
//! a private file first, and altered copies are written to the test's own temp directory.

pub mod cluster;
pub mod fleet;
pub mod nats;
pub mod proxy;
pub mod scrape;

use graft::build::CargoBuild;
use graft::release::assemble::assemble;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The workspace root (where the top `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn cache() -> &'static Mutex<HashMap<String, PathBuf>> {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Builds a plugin package (once per process) and returns its `cdylib` path.
pub fn plugin_library(package: &str) -> PathBuf {
    let mut cache = cache().lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(path) = cache.get(package) {
        return path.clone();
    }
    let path = CargoBuild::new(workspace_root())
        .build(package)
        .unwrap_or_else(|error| panic!("building {package}: {error}"));
    cache.insert(package.to_owned(), path.clone());
    path
}

/// Builds `graft-fixture-abort` with `-C panic=abort` and returns a stable copy of it (the
/// same artifact path is rebuilt with unwinding by a normal workspace build).
pub fn abort_plugin_library() -> PathBuf {
    let key = "graft-fixture-abort (panic=abort)";
    let mut cache = cache().lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(path) = cache.get(key) {
        return path.clone();
    }
    let built = CargoBuild::new(workspace_root())
        .rustc_flags(&["-C", "panic=abort"])
        .build("graft-fixture-abort")
        .unwrap_or_else(|error| panic!("building the abort fixture: {error}"));
    let directory = artifact_directory();
    let copy = directory.join(format!("abort-{}.so", std::process::id()));
    std::fs::copy(&built, &copy).expect("copying the abort fixture");
    cache.insert(key.to_owned(), copy.clone());
    copy
}

/// `target/graft-test-artifacts`, where each test process keeps what it builds under a name
/// ending in its pid. The first call in a process removes what processes no longer running
/// left there (otherwise every test run would leave hundreds of megabytes behind).
pub fn artifact_directory() -> PathBuf {
    static SWEPT: OnceLock<PathBuf> = OnceLock::new();
    SWEPT
        .get_or_init(|| {
            let directory = workspace_root().join("target").join("graft-test-artifacts");
            std::fs::create_dir_all(&directory).expect("creating target/graft-test-artifacts");
            for entry in std::fs::read_dir(&directory)
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let stem = name.strip_suffix(".so").unwrap_or(&name);
                let Some(pid) = stem
                    .rsplit('-')
                    .next()
                    .and_then(|pid| pid.parse::<u32>().ok())
                else {
                    continue;
                };
                if Path::new(&format!("/proc/{pid}")).exists() {
                    continue;
                }
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
            directory
        })
        .clone()
}

/// Finds `needle` in `haystack`; panics when it is absent or not unique.
pub fn find_unique(haystack: &[u8], needle: &[u8]) -> usize {
    let positions: Vec<usize> = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(position, _)| position)
        .collect();
    assert_eq!(
        positions.len(),
        1,
        "expected exactly one occurrence of {needle:?}"
    );
    positions[0]
}

/// Host-native behaviours for runtime tests: they go through the same `Behaviour` trait
/// as plugins and write what happens to them into a shared journal.
pub mod native {
    use graft::plugin::{CallbackError, HostServices, Outputs, PluginIdentity};
    use graft::runtime::{Behaviour, BehaviourFactory, NativeFactory, Started};
    use graft_plugin::{Down, Exit, StopReason, abi, codec};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// What happened, in order.
    pub type Journal = Arc<Mutex<Vec<String>>>;

    /// A new, empty journal.
    pub fn journal() -> Journal {
        Arc::new(Mutex::new(Vec::new()))
    }

    /// A copy of the journal's entries.
    pub fn entries(journal: &Journal) -> Vec<String> {
        journal.lock().unwrap().clone()
    }

    fn identity() -> PluginIdentity {
        PluginIdentity {
            name: "recorder".to_owned(),
            version: semver::Version::new(0, 0, 0),
        }
    }

    fn failed(callback: &'static str, message: impl Into<String>) -> CallbackError {
        CallbackError::Failed {
            plugin: identity(),
            callback,
            message: message.into(),
        }
    }

    /// Records starts, terminates, casts and infos. Calls (encoded strings): `ping` →
    /// `pong`, `crash` → an error, `stop` → stops normally replying `bye`, `sleep:<ms>` →
    /// sleeps in the callback, `call:<name>` → calls that actor with `ping`.
    pub struct Recorder {
        label: String,
        journal: Journal,
    }

    impl Recorder {
        fn write(&self, entry: String) {
            self.journal.lock().unwrap().push(entry);
        }
    }

    fn reply(text: &str) -> Outputs {
        Outputs {
            reply: Some(codec::encode(text).unwrap()),
            ..Outputs::default()
        }
    }

    impl Behaviour for Recorder {
        fn identity(&self) -> Option<&PluginIdentity> {
            None
        }

        fn handle_call(
            &mut self,
            request: &[u8],
            _reply_token: u64,
            services: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            let request: String =
                codec::decode(request).map_err(|error| CallbackError::BadInput {
                    plugin: identity(),
                    callback: "handle_call",
                    message: error.to_string(),
                })?;
            match request.as_str() {
                "ping" => Ok(reply("pong")),
                "crash" => Err(failed(
                    "handle_call",
                    format!("{} crashed on purpose", self.label),
                )),
                "stop" => Ok(Outputs {
                    stop: Some(StopReason::Normal),
                    ..reply("bye")
                }),
                other if other.starts_with("sleep:") => {
                    let millis: u64 = other[6..].parse().unwrap();
                    std::thread::sleep(Duration::from_millis(millis));
                    Ok(reply("slept"))
                }
                other if other.starts_with("call:") => {
                    let answer = services.call(
                        &other[5..],
                        codec::encode("ping").unwrap(),
                        Duration::from_secs(1),
                    );
                    match answer {
                        Ok(bytes) => Ok(reply(&codec::decode::<String>(&bytes).unwrap())),
                        Err(error) => Ok(reply(&format!("error: {error}"))),
                    }
                }
                other => Err(failed("handle_call", format!("unknown request {other}"))),
            }
        }

        fn handle_cast(
            &mut self,
            message: &[u8],
            _services: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            let message: String = codec::decode(message).unwrap_or_default();
            self.write(format!("cast {} {message}", self.label));
            Ok(Outputs::default())
        }

        fn handle_info(
            &mut self,
            kind: u32,
            message: &[u8],
            _services: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            let entry = match kind {
                abi::INFO_DOWN => {
                    let down: Down = codec::decode(message).unwrap();
                    format!("down {} {}", down.actor, down.reason)
                }
                abi::INFO_EXIT => {
                    let exit: Exit = codec::decode(message).unwrap();
                    format!("exit {} {}", exit.actor, exit.reason)
                }
                _ => format!(
                    "info {}",
                    codec::decode::<String>(message).unwrap_or_default()
                ),
            };
            self.write(format!("{} got {entry}", self.label));
            Ok(Outputs::default())
        }

        fn handle_continue(
            &mut self,
            _argument: &[u8],
            _services: &dyn HostServices,
        ) -> Result<Outputs, CallbackError> {
            Ok(Outputs::default())
        }

        fn terminate(
            &mut self,
            reason: &StopReason,
            _services: &dyn HostServices,
        ) -> Result<(), CallbackError> {
            self.write(format!("terminate {} {reason}", self.label));
            Ok(())
        }

        fn encode_state(&mut self) -> Result<Vec<u8>, CallbackError> {
            Ok(codec::encode(&self.label).unwrap())
        }
    }

    /// A factory of recorders; the start argument (an encoded string) is the label.
    pub fn recorder(journal: &Journal) -> Arc<dyn BehaviourFactory> {
        let journal = Arc::clone(journal);
        Arc::new(NativeFactory(
            move |args: &[u8], _services: &dyn HostServices| -> Result<Started, CallbackError> {
                let label: String =
                    codec::decode(args).map_err(|error| failed("init", error.to_string()))?;
                journal.lock().unwrap().push(format!("start {label}"));
                let recorder = Recorder {
                    label,
                    journal: Arc::clone(&journal),
                };
                Ok((Box::new(recorder), Outputs::default()))
            },
        ))
    }
}

/// Polls `condition` every 5 ms until it holds or `deadline` passes; returns whether it held.
pub async fn eventually(
    deadline: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Like [`eventually`], for a condition that has to await (a call, a supervisor query).
pub async fn eventually_async<F, Fut>(deadline: std::time::Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Builds the `graft` binary (once per process) and returns its path.
pub fn graft_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            CargoBuild::new(workspace_root())
                .build_binary("graft", "graft")
                .unwrap_or_else(|error| panic!("building graft: {error}"))
        })
        .clone()
}

/// Copies a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The example releases, assembled once per test process; each test gets its own copy.
pub fn example_root() -> tempfile::TempDir {
    static ASSEMBLED: OnceLock<PathBuf> = OnceLock::new();
    let assembled = ASSEMBLED.get_or_init(|| {
        let workspace = workspace_root();
        let root = artifact_directory().join(format!("releases-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for release in ["1.0.0", "1.1.0", "1.2.0"] {
            let manifest = workspace
                .join("releases")
                .join(release)
                .join("release.toml");
            assemble(&manifest, &workspace, &root, false)
                .unwrap_or_else(|error| panic!("assembling {release}: {error}"));
        }
        root
    });
    let root = tempfile::tempdir().unwrap();
    copy_tree(assembled, root.path());
    root
}

/// Writes and assembles releases of `faulty` 0.3.0 and 0.4.0 with `actors` children; the
/// child `f{index}` gets `args_for(index)`; `upgrade` is the 0.4.0 release's script.
pub fn faulty_releases(
    actors: usize,
    args_for: impl Fn(usize) -> &'static str,
    upgrade: &str,
) -> tempfile::TempDir {
    let mut releases = Vec::new();
    for (release, plugin_version, crate_path, script) in [
        ("1.0.0", "0.3.0", "tests/fixtures/faulty", ""),
        ("2.0.0", "0.4.0", "tests/fixtures/faulty-v2", upgrade),
    ] {
        let mut text = format!(
            "[release]\nname = \"faulty-fleet\"\nversion = \"{release}\"\n\n[plugins.faulty]\nversion = \"{plugin_version}\"\ncrate = \"{crate_path}\"\n\n[supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 0\n"
        );
        for index in 1..=actors {
            text.push_str(&format!(
                "\n[[supervisor.children]]\nid = \"f{index}\"\nplugin = \"faulty\"\nargs = {}\n",
                args_for(index)
            ));
        }
        text.push_str(script);
        releases.push((release, text));
    }
    assembled_root(&releases)
}

/// A loader shared by the tests of one process.
pub fn shared_loader() -> &'static graft::plugin::Loader {
    static LOADER: OnceLock<graft::plugin::Loader> = OnceLock::new();
    LOADER.get_or_init(|| {
        graft::plugin::Loader::new().expect("a private directory for plugin copies")
    })
}

/// Builds (once) and loads a plugin package with the shared loader.
pub fn load_plugin(package: &str) -> std::sync::Arc<graft::plugin::LoadedPlugin> {
    shared_loader()
        .load(
            &plugin_library(package),
            &graft::plugin::Expectations::default(),
        )
        .unwrap_or_else(|error| panic!("{error}"))
}

/// A semver version from text.
pub fn version(text: &str) -> semver::Version {
    semver::Version::parse(text).unwrap()
}

/// Calls the actor registered as `actor` with a JSON request; the reply as JSON.
pub async fn call_by_name(
    runtime: &graft::runtime::Runtime,
    actor: &str,
    request: serde_json::Value,
) -> serde_json::Value {
    let reply = runtime
        .call(
            actor,
            graft_plugin::codec::encode(&request).unwrap(),
            std::time::Duration::from_secs(1),
        )
        .await
        .unwrap_or_else(|error| panic!("call {actor} {request}: {error}"));
    graft_plugin::codec::decode(&reply).unwrap()
}

/// The plugin version the actor registered as `actor` runs.
pub async fn version_of(runtime: &graft::runtime::Runtime, actor: &str) -> String {
    let status = runtime
        .whereis(actor)
        .unwrap_or_else(|| panic!("no actor {actor}"))
        .status(std::time::Duration::from_secs(1))
        .await
        .unwrap();
    status.version.unwrap_or_default()
}

/// Boots the permanent release under `root` on a fresh runtime.
pub async fn boot(
    root: &Path,
) -> (
    graft::runtime::Runtime,
    graft::release::handler::ReleaseHandler,
) {
    let runtime = graft::runtime::Runtime::new();
    let handler = graft::release::handler::ReleaseHandler::boot(root, runtime.clone())
        .await
        .unwrap_or_else(|error| panic!("booting {}: {error}", root.display()));
    (runtime, handler)
}

/// Polls `condition` every 20 ms until it holds or `deadline` passes.
pub fn eventually_blocking(
    deadline: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        if condition() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    condition()
}

/// A `graft start` host run as a child process, killed when dropped.
pub struct Host {
    /// The host process.
    pub child: std::process::Child,
    /// Where its stderr goes.
    pub log: PathBuf,
}

impl Host {
    /// Starts a host on `root` with extra arguments; waits until its socket answers.
    pub fn start(root: &Path, extra: &[&str]) -> Host {
        Host::start_with_environment(root, extra, &[])
    }

    /// Like [`Host::start`], with extra environment variables.
    pub fn start_with_environment(
        root: &Path,
        extra: &[&str],
        environment: &[(&str, &std::ffi::OsStr)],
    ) -> Host {
        let log = root.join("host.log");
        let child = std::process::Command::new(graft_binary())
            .env("GRAFT_ROOT", root)
            // `GRAFT_TEST_HOST_LOG` (e.g. `graft=debug`) to see more of a failing test's hosts.
            .env(
                "RUST_LOG",
                std::env::var("GRAFT_TEST_HOST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(environment.iter().copied())
            .arg("start")
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let socket = root.join("run").join("control.sock");
        let host = Host { child, log };
        assert!(
            eventually_blocking(std::time::Duration::from_secs(20), || socket.exists()
                && std::os::unix::net::UnixStream::connect(&socket).is_ok()),
            "the host did not start: {}",
            host.log()
        );
        host
    }

    /// What the host logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `KILL`, …) to the host.
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.id(), signal);
    }

    /// Waits for the host to exit; its exit code.
    pub fn wait(&mut self) -> i32 {
        self.child.wait().unwrap().code().unwrap_or(-1)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `release.toml` texts (version, text) under `sources/` of a fresh root and
/// assembles each into it.
pub fn assembled_root(releases: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (version, text) in releases {
        let directory = root.path().join("sources").join(version);
        std::fs::create_dir_all(&directory).unwrap();
        std::fs::write(directory.join("release.toml"), text).unwrap();
        assemble(
            &directory.join("release.toml"),
            &workspace_root(),
            root.path(),
            false,
        )
        .unwrap_or_else(|error| panic!("assembling {version}: {error}"));
    }
    root
}

/// Whether process `pid` is gone (not even a zombie).
pub fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// A factory whose actors' callbacks have `deadline` (the release handler sets it from
/// `callback_timeout_ms`; tests of the runtime alone set it here).
pub struct WithCallbackTimeout<F>(pub F, pub std::time::Duration);

impl<F: graft::runtime::BehaviourFactory> graft::runtime::BehaviourFactory
    for WithCallbackTimeout<F>
{
    fn start(
        &self,
        args: &[u8],
        services: &dyn graft::plugin::HostServices,
    ) -> Result<graft::runtime::Started, graft::plugin::CallbackError> {
        self.0.start(args, services)
    }

    fn identity(&self) -> Option<graft::plugin::PluginIdentity> {
        self.0.identity()
    }

    fn callback_timeout(&self) -> Option<std::time::Duration> {
        Some(self.1)
    }
}

/// Log lines written by the process's global `tracing` subscriber, as
/// [`capture_logs`] installs it (once per test binary).
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Installs a global subscriber (debug and up, no colours) that writes into the returned
/// capture. A test binary can do this once.
pub fn capture_logs() -> CapturedLogs {
    let captured = CapturedLogs::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    captured
}

/// Checks the log lines of counter 1.0.0 (`log`) and 1.1.0 (`tracing`, with a field)
/// started with `{"start": 5}` as `old-counter` and `new-counter`, and of faulty panicking
/// in `init`: each came out of the host's subscriber with plugin, version and actor.
pub fn assert_plugin_log_lines(text: &str) {
    let line = |needle: &str| {
        text.lines()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    let old_line = line("counter 1.0.0 starting as old-counter at 5");
    assert!(old_line.contains("INFO"), "{old_line}");
    assert!(old_line.contains("graft::plugin"), "{old_line}");
    assert!(
        old_line.contains("plugin=\"counter\"") || old_line.contains("plugin=counter"),
        "{old_line}"
    );
    assert!(old_line.contains("version=1.0.0"), "{old_line}");
    assert!(old_line.contains("old-counter"), "{old_line}");
    let new_line = line("counter 1.1.0 starting as new-counter");
    assert!(new_line.contains("version=1.1.0"), "{new_line}");
    assert!(
        new_line.contains("start=5"),
        "tracing fields are kept: {new_line}"
    );
    let panic_line = line("plugin panicked at");
    assert!(panic_line.contains("ERROR"), "{panic_line}");
    assert!(
        panic_line.contains("faulty panics in init on purpose"),
        "{panic_line}"
    );
}

impl Host {
    /// Like [`Host::start`], with the host's `TMPDIR` set to `temporary` (to see what it
    /// leaves there).
    pub fn start_with_temporary_directory(root: &Path, extra: &[&str], temporary: &Path) -> Host {
        Host::start_with_environment(root, extra, &[("TMPDIR", temporary.as_os_str())])
    }
}

/// Runs the `graft` binary with `GRAFT_ROOT=root` and `args`; waits for it.
pub fn run_graft(root: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(graft_binary())
        .env("GRAFT_ROOT", root)
        .args(args)
        .output()
        .unwrap()
}

/// A finished command's stdout as text.
pub fn stdout_text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A finished command's stderr as text.
pub fn stderr_text(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `graft` and requires it to succeed; its stdout.
pub fn succeed_graft(root: &Path, args: &[&str]) -> String {
    let output = run_graft(root, args);
    assert!(
        output.status.success(),
        "graft {args:?} failed: {}",
        stderr_text(&output)
    );
    stdout_text(&output)
}

/// The example releases assembled once per test process by the real `graft build`.
pub fn built_releases() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = artifact_directory().join(format!("built-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let output = std::process::Command::new(graft_binary())
            .args(["build", "--debug", "--workspace"])
            .arg(workspace_root())
            .arg("--root")
            .arg(&root)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "graft build: {}",
            stderr_text(&output)
        );
        let stdout = stdout_text(&output);
        assert!(stdout.contains("assembled graft-demo 1.0.0"), "{stdout}");
        root
    })
}

/// A fresh root holding a copy of [`built_releases`].
pub fn built_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    copy_tree(
        &built_releases().join("releases"),
        &root.path().join("releases"),
    );
    root
}

/// Sends `signal` (`TERM`, `KILL`, …) to process `pid`, which must exist.
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -s {signal} {pid}");
}

/// Kills process `pid` with SIGKILL.
pub fn kill_9(pid: u32) {
    send_signal(pid, "KILL");
}

/// Where a host started with `--http` serves, from its `<root>/run/http.json` (`url`,
/// `address`, `token`); waits up to 60 s for the file.
pub fn http_info(root: &Path) -> serde_json::Value {
    let path = root.join("run").join("http.json");
    assert!(
        eventually_blocking(std::time::Duration::from_secs(60), || path.is_file()),
        "the host wrote no {}",
        path.display()
    );
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{}: {error}: {text}", path.display()))
}

/// An HTTP response, as [`http_request`] read it.
#[derive(Debug)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// One HTTP/1.1 request to `address` (`HOST:PORT`) over a plain socket, `Connection:
/// close`; `Host` is `address` unless `headers` names one. Bodies in `Content-Length` or
/// chunked encoding are read whole.
pub fn http_request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address)
        .unwrap_or_else(|error| panic!("connecting to {address}: {error}"));
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = find_bytes(&raw, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut body = &raw[end + 4..];
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        let mut decoded = Vec::new();
        while let Some(line_end) = find_bytes(body, b"\r\n") {
            let size = std::str::from_utf8(&body[..line_end])
                .ok()
                .and_then(|size| usize::from_str_radix(size.trim(), 16).ok())
                .unwrap_or(0);
            let data = &body[line_end + 2..];
            if size == 0 || data.len() < size {
                break;
            }
            decoded.extend_from_slice(&data[..size]);
            body = data[size..].strip_prefix(b"\r\n").unwrap_or(&data[size..]);
        }
        String::from_utf8_lossy(&decoded).into_owned()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A TCP port free on loopback now (the OS's pick; free again once returned).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Casts `{"Add": 1}` to counter over the control socket, about 200 a second, until
/// dropped: figures for the page's message rates.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// Starts casting to the host of `root` (its control socket must answer).
    pub fn start(root: &Path) -> Traffic {
        use std::io::Write as _;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let socket = root.join("run").join("control.sock");
        let thread = std::thread::spawn({
            let stop = std::sync::Arc::clone(&stop);
            move || {
                let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
                let mut answers = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut answer = String::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let cast = r#"{"command": "cast", "actor": "counter", "message": {"Add": 1}}"#;
                    if writeln!(stream, "{cast}").is_err() {
                        return;
                    }
                    answer.clear();
                    if std::io::BufRead::read_line(&mut answers, &mut answer).unwrap_or(0) == 0 {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
