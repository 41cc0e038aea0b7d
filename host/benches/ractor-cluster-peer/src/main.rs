//! The ractor_cluster peer of `host/benches/cluster.rs`: two ractor_cluster nodes
//! (`NodeServer`) in this process on loopback TCP (no broker in between), node A connected
//! to node B, an echo actor on node B in the `ractor::pg` group [`GROUP`], called and cast
//! to through the `RemoteActor` that node A's session holds for it.
//!
//! `ractor-cluster-peer CALLS CASTS PAYLOAD_HEX` measures what the bench measures for
//! Graft, the same way: `CALLS / 10` warm-up calls, then `CALLS` timed calls (p50, p99)
//! with the payload's bytes as the request; then `CASTS` casts, timed until the echo
//! counted the last. It prints one line the bench parses:
//! `ractor_cluster call_p50_ns=… call_p99_ns=… casts_per_second=…`.
//!
//! Tricky:
//! - Both nodes share this process's `ractor::pg` registry, and every node session
//!   advertises the group members it sees as local, so node B's session also announces the
//!   echo to node A and each side ends up with a `RemoteActor` for it (both sides number
//!   their first peer 0, so the two share an `ActorId` and the group lists one). The peer
//!   waits until the group shows a remote member for the echo, then takes the
//!   `RemoteActor` that is a child of node A's session: a call goes A's session → TCP →
//!   B's session → echo and back, the direction of Graft's figures.
//! - ractor's casts go into unbounded mailboxes (the remote actor's, then the session's),
//!   so the sender never waits; Graft's outbound queue is bounded and its sender yields
//!   when it is full. Both rates end when the last cast is counted at B.

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{NodeServer, NodeServerMessage, NodeSessionMessage, RactorClusterMessage};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The `ractor::pg` group the echo joins on node B.
const GROUP: &str = "graft-bench-echo";
/// How long any wait (nodes connected, a reply, every cast counted) may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait polls.
const POLL: Duration = Duration::from_millis(10);

/// Echoes calls, counts casts, on node B.
struct Echo;

/// Its messages, serializable so that they cross nodes.
#[derive(RactorClusterMessage)]
enum EchoMessage {
    Cast(Vec<u8>),
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

impl Actor for Echo {
    type Msg = EchoMessage;
    type State = Arc<AtomicU64>;
    type Arguments = Arc<AtomicU64>;

    async fn pre_start(
        &self,
        myself: ActorRef<EchoMessage>,
        casts: Arc<AtomicU64>,
    ) -> Result<Arc<AtomicU64>, ActorProcessingErr> {
        ractor::pg::join(GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(casts)
    }

    async fn handle(
        &self,
        _myself: ActorRef<EchoMessage>,
        message: EchoMessage,
        casts: &mut Arc<AtomicU64>,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EchoMessage::Call(request, reply) => {
                let _ = reply.send(request);
            }
            EchoMessage::Cast(_message) => {
                casts.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Polls `condition` every [`POLL`] until it gives a value; panics with `what` after
/// [`TIMEOUT`].
async fn wait_for<T, F, Fut>(what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + TIMEOUT;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A free loopback port (the kernel's pick).
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A node listening on a free loopback port.
async fn node(
    name: &str,
) -> (
    ActorRef<NodeServerMessage>,
    tokio::task::JoinHandle<()>,
    u16,
) {
    let port = free_port();
    let server = NodeServer::new(
        port,
        "graft-bench".to_owned(),
        name.to_owned(),
        "127.0.0.1".to_owned(),
        None,
        None,
    )
    .with_listen_addr(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let (node, handle) = Actor::spawn(None, server, ())
        .await
        .unwrap_or_else(|error| panic!("starting ractor_cluster node {name}: {error}"));
    (node, handle, port)
}

/// The one session of `node` once it has authenticated and exchanged its initial state.
async fn ready_session(node: &ActorRef<NodeServerMessage>) -> Option<ActorRef<NodeSessionMessage>> {
    let sessions = ractor::call_t!(node, NodeServerMessage::GetSessions, 1_000).ok()?;
    for session in sessions.into_values().map(|session| session.actor) {
        if let Ok(true) = ractor::call_t!(session, NodeSessionMessage::GetReadyState, 1_000) {
            return Some(session);
        }
    }
    None
}

async fn call(echo: &ActorRef<EchoMessage>, request: Vec<u8>) {
    match echo
        .call(|reply| EchoMessage::Call(request, reply), Some(TIMEOUT))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(_reply)) => {}
        Ok(_) => panic!("the echo did not reply in time"),
        Err(error) => panic!("calling the echo: {error}"),
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction).round() as usize]
}

fn parse_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).expect("PAYLOAD_HEX is hex"))
        .collect()
}

fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let [calls, casts, payload] = arguments.as_slice() else {
        eprintln!("usage: ractor-cluster-peer CALLS CASTS PAYLOAD_HEX");
        std::process::exit(2);
    };
    let calls: usize = calls.parse().expect("CALLS is a number");
    let casts: u64 = casts.parse().expect("CASTS is a number");
    let request = parse_hex(payload);
    // Two workers, as the bench's own runtime.
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    tokio.block_on(async move {
        let (node_a, node_a_handle, _port_a) = node("node-a").await;
        let (node_b, node_b_handle, port_b) = node("node-b").await;
        let counted = Arc::new(AtomicU64::new(0));
        let (echo, echo_handle) = Actor::spawn(None, Echo, Arc::clone(&counted))
            .await
            .unwrap_or_else(|error| panic!("spawning the echo: {error}"));
        ractor_cluster::client_connect(&node_a, ("127.0.0.1", port_b))
            .await
            .unwrap_or_else(|error| panic!("connecting node A to node B: {error}"));
        let session_a = wait_for("node A's session to node B", || ready_session(&node_a)).await;
        wait_for("node B's session to node A", || ready_session(&node_b)).await;
        let echo_pid = echo.get_id().pid();
        let remote = wait_for("the echo on node B as a remote member at node A", || {
            let in_group = ractor::pg::get_members(&GROUP.to_owned())
                .iter()
                .any(|member| !member.get_id().is_local() && member.get_id().pid() == echo_pid);
            let remote = session_a
                .get_cell()
                .get_children()
                .into_iter()
                .find(|child| !child.get_id().is_local() && child.get_id().pid() == echo_pid);
            async move {
                remote
                    .filter(|_| in_group)
                    .map(ActorRef::<EchoMessage>::from)
            }
        })
        .await;

        for _ in 0..calls / 10 {
            call(&remote, request.clone()).await;
        }
        let mut samples = Vec::with_capacity(calls);
        for _ in 0..calls {
            let start = Instant::now();
            call(&remote, request.clone()).await;
            samples.push(start.elapsed());
        }
        samples.sort();

        let message = vec![0xa1, b'x'];
        let before = counted.load(Ordering::Relaxed);
        let start = Instant::now();
        for _ in 0..casts {
            remote
                .cast(EchoMessage::Cast(message.clone()))
                .unwrap_or_else(|error| panic!("casting to the echo: {error}"));
        }
        let end = Instant::now() + TIMEOUT;
        while counted.load(Ordering::Relaxed) - before < casts {
            assert!(
                Instant::now() < end,
                "not every cast arrived: {} of {casts} counted",
                counted.load(Ordering::Relaxed) - before
            );
            tokio::task::yield_now().await;
        }
        let rate = casts as f64 / start.elapsed().as_secs_f64();
        println!(
            "ractor_cluster call_p50_ns={} call_p99_ns={} casts_per_second={rate:.0}",
            percentile(&samples, 0.5).as_nanos(),
            percentile(&samples, 0.99).as_nanos()
        );

        echo.stop(None);
        node_a.stop(None);
        node_b.stop(None);
        for handle in [echo_handle, node_a_handle, node_b_handle] {
            let _ = tokio::time::timeout(TIMEOUT, handle).await;
        }
    });
}
