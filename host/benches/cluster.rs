//! Remote messages between two hosts of a cluster (issue 17), hand-timed like the
//! fleet bench: two in-process hosts (each its own `Runtime` and `Cluster` connection) on
//! one local `nats-server` (`$GRAFT_NATS_SERVER`, else on `PATH`, else
//! `/usr/sbin/nats-server`, `/usr/bin/nats-server`; skipped without one).
//!
//! Measures, in the same run:
//! - call round trip p50/p99: host A → `echo@host-b` (NATS, both hosts' transports) vs a
//!   local call of the same actor on host B vs a bare NATS request/reply between two
//!   clients of the same server (the transport's floor) vs a bare tokio oneshot round trip;
//! - cast throughput A → B (every cast received and counted by the actor) vs local casts
//!   to the same actor;
//! - the same two figures for a peer, `ractor_cluster` (the distributed side of the
//!   `ractor` crate that `runtime.rs` compares against locally): two nodes on loopback TCP
//!   (no broker between them), measured the same way (same number of calls and warm-up,
//!   same request bytes, same number of casts, each counted at B) by
//!   `benches/ractor-cluster-peer`, a package of its own that this bench builds (`cargo
//!   build --release`, into `<target>/ractor-cluster-peer`) and runs after Graft's figures.
//!   It stays out of `graft`'s dependencies: ractor_cluster needs ractor's `cluster`
//!   feature, which cargo would otherwise turn on for `runtime.rs`'s local ractor peer too
//!   (measured: its calls 40% slower, its idle actors 50% bigger). Printed beside Graft's
//!   with ratios; skipped, saying why, if it cannot be built.
//!
//! Prints ratios and a `summary:` block. The targets are informational ("met" when a
//! remote call's p50 stays under 1 ms and remote casts reach 100 000/s on this machine);
//! a 2-core machine shared with other work is noisy: run it 2–3 times, quote medians.

#[path = "support/nats.rs"]
mod nats;

use graft::cluster::Cluster;
use graft::fleet::{Fleet, FleetOptions};
use graft::plugin::{CallbackError, HostServices, Outputs, PluginIdentity};
use graft::runtime::{ActorOptions, Behaviour, NativeFactory, Runtime, Started};
use graft_plugin::{StopReason, codec};
use nats::{NatsServer, nats_server_binary};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CALLS: usize = 5_000;
const CASTS: u64 = 200_000;
const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// The measured actor: echoes calls, counts casts.

struct Echo {
    casts: Arc<AtomicU64>,
}

impl Behaviour for Echo {
    fn identity(&self) -> Option<&PluginIdentity> {
        None
    }

    fn handle_call(
        &mut self,
        request: &[u8],
        _reply_token: u64,
        _services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        Ok(Outputs {
            reply: Some(request.to_vec()),
            ..Outputs::default()
        })
    }

    fn handle_cast(
        &mut self,
        _message: &[u8],
        _services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
        self.casts.fetch_add(1, Ordering::Relaxed);
        Ok(Outputs::default())
    }

    fn handle_info(
        &mut self,
        _kind: u32,
        _message: &[u8],
        _services: &dyn HostServices,
    ) -> Result<Outputs, CallbackError> {
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
        _reason: &StopReason,
        _services: &dyn HostServices,
    ) -> Result<(), CallbackError> {
        Ok(())
    }

    fn encode_state(&mut self) -> Result<Vec<u8>, CallbackError> {
        Ok(Vec::new())
    }
}

// ---------------------------------------------------------------------------------------

async fn host(url: &str, name: &str) -> (Runtime, Arc<Cluster>) {
    let fleet = Fleet::connect(
        &FleetOptions {
            url: url.to_owned(),
            fleet: "bench".to_owned(),
            token: None,
            credentials: None,
        },
        false,
    )
    .await
    .expect("connecting to nats-server");
    let runtime = Runtime::new();
    let cluster = Cluster::connect(fleet, "g", name, runtime.clone())
        .await
        .expect("joining the cluster");
    (runtime, cluster)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

async fn round_trips<F, Fut>(mut one: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..CALLS / 10 {
        one().await;
    }
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let start = Instant::now();
        one().await;
        samples.push(start.elapsed());
    }
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// Casts `CASTS` messages with `cast` and waits until the actor counted them all.
async fn cast_rate(counter: &AtomicU64, mut cast: impl FnMut() -> bool) -> f64 {
    let before = counter.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut sent = 0;
    while sent < CASTS {
        if cast() {
            sent += 1;
        } else {
            // The outbound queue is full: let the writer drain it.
            tokio::task::yield_now().await;
        }
    }
    let end = Instant::now() + TIMEOUT;
    while counter.load(Ordering::Relaxed) - before < CASTS {
        assert!(
            Instant::now() < end,
            "not every cast arrived: {} of {CASTS} counted; the NATS client reported {} dropped (slow consumer)",
            counter.load(Ordering::Relaxed) - before,
            graft::fleet::dropped_by_client()
        );
        tokio::task::yield_now().await;
    }
    CASTS as f64 / start.elapsed().as_secs_f64()
}

/// The ractor_cluster peer's figures: call p50, call p99, casts per second.
struct Peer {
    p50: Duration,
    p99: Duration,
    rate: f64,
}

/// Builds `benches/ractor-cluster-peer` (before anything is measured); its binary, or why
/// not.
fn build_ractor_cluster_peer() -> Result<PathBuf, String> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("benches")
        .join("ractor-cluster-peer")
        .join("Cargo.toml");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        })
        .join("ractor-cluster-peer");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .map_err(|error| format!("running cargo: {error}"))?;
    if !built.success() {
        return Err(format!("building {} failed ({built})", manifest.display()));
    }
    Ok(target.join("release").join("ractor-cluster-peer"))
}

/// Runs the peer built by [`build_ractor_cluster_peer`] with this bench's numbers and
/// request.
fn run_ractor_cluster_peer(peer: &std::path::Path, request: &[u8]) -> Result<Peer, String> {
    let payload: String = request.iter().map(|byte| format!("{byte:02x}")).collect();
    let output = std::process::Command::new(peer)
        .args([CALLS.to_string(), CASTS.to_string(), payload])
        .output()
        .map_err(|error| format!("running the peer: {error}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| -> Option<f64> {
        stdout
            .split_whitespace()
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
    };
    match (
        field("call_p50_ns"),
        field("call_p99_ns"),
        field("casts_per_second"),
    ) {
        (Some(p50), Some(p99), Some(rate)) => Ok(Peer {
            p50: Duration::from_nanos(p50 as u64),
            p99: Duration::from_nanos(p99 as u64),
            rate,
        }),
        _ => Err(format!(
            "the peer printed no figures ({}): {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )),
    }
}

/// Polls `condition` until it holds; panics with `what` after [`TIMEOUT`].
async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + TIMEOUT;
    while !condition().await {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn main() {
    let Some(binary) = nats_server_binary() else {
        println!(
            "summary: skipped: no nats-server (apt-get install nats-server, or set GRAFT_NATS_SERVER)"
        );
        return;
    };
    let peer = build_ractor_cluster_peer();
    let server = NatsServer::start(&binary);
    let url = server.url();
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    tokio.block_on(async move {
        let (host_a, cluster_a) = host(&url, "host-a").await;
        let (host_b, cluster_b) = host(&url, "host-b").await;
        let casts = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&casts);
        let factory = Arc::new(NativeFactory(
            move |_args: &[u8], _services: &dyn HostServices| -> Result<Started, CallbackError> {
                let echo = Echo {
                    casts: Arc::clone(&counter),
                };
                Ok((Box::new(echo), Outputs::default()))
            },
        ));
        let echo = host_b
            .spawn(ActorOptions::new(factory, Vec::new()).named("echo"))
            .await
            .expect("spawning echo");
        let request = codec::encode("ping").unwrap();
        // Host A learns that host B is up from B's heartbeats: until then a call to
        // echo@host-b fails with HostDown. Nothing is timed before a call gets through.
        wait_for("host A to reach echo@host-b", || {
            let (request, host_a) = (request.clone(), host_a.clone());
            async move { host_a.call("echo@host-b", request, TIMEOUT).await.is_ok() }
        })
        .await;

        let (remote_p50, remote_p99) = round_trips(|| {
            let request = request.clone();
            let host_a = host_a.clone();
            async move {
                host_a.call("echo@host-b", request, TIMEOUT).await.unwrap();
            }
        })
        .await;
        let (local_p50, local_p99) = round_trips(|| {
            let request = request.clone();
            let echo = echo.clone();
            async move {
                echo.call(request, TIMEOUT).await.unwrap();
            }
        })
        .await;
        // The transport's own floor: a bare NATS request/reply between two clients of the
        // same server (A → server → B → server → A), what every remote call crosses.
        let nats_b = async_nats::connect(&url).await.expect("a bare NATS client");
        let mut requests = nats_b
            .subscribe("bench.bare-echo")
            .await
            .expect("subscribing");
        let bare_echo = tokio::spawn(async move {
            use futures_util::StreamExt;
            while let Some(message) = requests.next().await {
                if let Some(reply) = message.reply {
                    let _ = nats_b.publish(reply, message.payload).await;
                }
            }
        });
        let nats_a = async_nats::connect(&url).await.expect("a bare NATS client");
        let (bare_p50, bare_p99) = round_trips(|| {
            let (nats_a, request) = (nats_a.clone(), request.clone());
            async move {
                nats_a
                    .request("bench.bare-echo", request.into())
                    .await
                    .expect("a bare NATS request");
            }
        })
        .await;
        bare_echo.abort();
        let (oneshot_p50, oneshot_p99) = round_trips(|| async {
            let (sender, receiver) = tokio::sync::oneshot::channel::<Vec<u8>>();
            tokio::spawn(async move { sender.send(Vec::new()) });
            receiver.await.unwrap();
        })
        .await;

        let message = codec::encode("x").unwrap();
        let remote_rate = cast_rate(&casts, || {
            host_a.cast("echo@host-b", message.clone()).is_ok()
        })
        .await;
        let local_rate = cast_rate(&casts, || {
            echo.cast(message.clone());
            true
        })
        .await;

        println!(
            "call round trip ({CALLS} calls): remote p50 {} p99 {}; local p50 {} p99 {}; tokio oneshot p50 {} p99 {}",
            micros(remote_p50),
            micros(remote_p99),
            micros(local_p50),
            micros(local_p99),
            micros(oneshot_p50),
            micros(oneshot_p99)
        );
        println!(
            "bare NATS request/reply between two clients: p50 {} p99 {}",
            micros(bare_p50),
            micros(bare_p99)
        );
        println!(
            "casts ({CASTS}, all received and counted): remote A→B {:.0}/s, local {:.0}/s",
            remote_rate, local_rate
        );
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        println!("summary: cluster messages, two in-process hosts on one local nats-server");
        println!(
            "summary: remote call p50 {} = {:.1}x local ({}), {:.1}x a tokio oneshot ({}); p99 {} = {:.1}x local",
            micros(remote_p50),
            ratio(remote_p50, local_p50),
            micros(local_p50),
            ratio(remote_p50, oneshot_p50),
            micros(oneshot_p50),
            micros(remote_p99),
            ratio(remote_p99, local_p99)
        );
        println!(
            "summary: remote call p50 {} = {:.1}x a bare NATS request/reply ({}, the transport's floor); p99 {:.1}x ({})",
            micros(remote_p50),
            ratio(remote_p50, bare_p50),
            micros(bare_p50),
            ratio(remote_p99, bare_p99),
            micros(bare_p99)
        );
        println!(
            "summary: remote casts {:.0}/s = {:.2}x local ({:.0}/s)",
            remote_rate,
            remote_rate / local_rate,
            local_rate
        );
        println!(
            "summary: target remote call p50 < 1 ms: {}",
            if remote_p50 < Duration::from_millis(1) { "met" } else { "NOT met" }
        );
        println!(
            "summary: target remote casts >= 100000/s: {}",
            if remote_rate >= 100_000.0 { "met" } else { "NOT met" }
        );
        match peer.and_then(|peer| run_ractor_cluster_peer(&peer, &request)) {
            Ok(peer) => {
                println!(
                    "ractor_cluster (two nodes on loopback TCP): call round trip p50 {} p99 {}; casts A→B {:.0}/s",
                    micros(peer.p50),
                    micros(peer.p99),
                    peer.rate
                );
                println!(
                    "summary: graft / ractor_cluster: call p50 {:.2}x ({} vs {}), p99 {:.2}x ({} vs {}), cast rate {:.2}x ({:.0}/s vs {:.0}/s) [times: lower is better for graft; rate: higher is]",
                    ratio(remote_p50, peer.p50),
                    micros(remote_p50),
                    micros(peer.p50),
                    ratio(remote_p99, peer.p99),
                    micros(remote_p99),
                    micros(peer.p99),
                    remote_rate / peer.rate,
                    remote_rate,
                    peer.rate
                );
            }
            Err(why) => println!("summary: ractor_cluster peer skipped: {why}"),
        }
        cluster_a.leave().await;
        cluster_b.leave().await;
    });
}
