//! Remote messages between hosts of a cluster (issue 17): two in-process hosts, each
//! its own runtime and cluster connection, on a real nats-server. Host-native recorder
//! actors record what reaches them; every wait polls with a generous deadline.
//!
//! Names are not resolved across hosts here (global names are another part's): actors
//! are addressed as `name@host`.

use graft::cluster::Cluster;
use graft::fleet::{Fleet, FleetOptions};
use graft::runtime::{ActorOptions, ActorRef, CallError, Runtime, SendError};
use graft_plugin::{StopReason, codec};
use graft_tests::native::{Journal, entries, journal, recorder};
use graft_tests::nats::NatsServer;
use graft_tests::{eventually, eventually_async};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

struct Host {
    runtime: Runtime,
    cluster: Arc<Cluster>,
}

async fn host(server: &NatsServer, name: &str) -> Host {
    let fleet = Fleet::connect(
        &FleetOptions {
            url: server.url(),
            fleet: "test".to_owned(),
            token: None,
            credentials: None,
        },
        false,
    )
    .await
    .unwrap();
    let runtime = Runtime::new();
    let cluster = Cluster::connect(fleet, "g", name, runtime.clone())
        .await
        .unwrap();
    Host { runtime, cluster }
}

async fn spawn_recorder(runtime: &Runtime, journal: &Journal, name: &str) -> ActorRef {
    runtime
        .spawn(ActorOptions::new(recorder(journal), codec::encode(name).unwrap()).named(name))
        .await
        .unwrap()
}

fn text(value: &str) -> Vec<u8> {
    codec::encode(value).unwrap()
}

async fn call(
    runtime: &Runtime,
    to: &str,
    request: &str,
    timeout: Duration,
) -> Result<String, CallError> {
    runtime
        .call(to, text(request), timeout)
        .await
        .map(|bytes| codec::decode::<String>(&bytes).unwrap())
}

async fn has(journal: &Journal, entry: &str) -> bool {
    eventually(DEADLINE, || {
        entries(journal).iter().any(|line| line == entry)
    })
    .await
}

/// Calls, casts and infos by `name@host`, from the host API and from an actor's callback;
/// an unknown name; a timeout's text; a late reply dropped and counted; a cast to an
/// unknown name refused by the other host and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_casts_and_infos_reach_an_actor_on_another_host() {
    let server = NatsServer::start();
    let a = host(&server, "host-a").await;
    let b = host(&server, "host-b").await;
    let journal = journal();
    spawn_recorder(&b.runtime, &journal, "kv").await;
    spawn_recorder(&a.runtime, &journal, "client").await;

    // The host API.
    assert_eq!(
        call(&a.runtime, "kv@host-b", "ping", DEADLINE).await,
        Ok("pong".to_owned())
    );
    a.runtime.cast("kv@host-b", text("hello")).unwrap();
    assert!(has(&journal, "cast kv hello").await);
    a.runtime.send_info("kv@host-b", text("news")).unwrap();
    assert!(has(&journal, "kv got info news").await);
    // A name qualified with this host is local.
    assert_eq!(
        call(&b.runtime, "kv@host-b", "ping", DEADLINE).await,
        Ok("pong".to_owned())
    );

    // From an actor's callback (ActorServices::call routes it).
    assert_eq!(
        call(&a.runtime, "client", "call:kv@host-b", DEADLINE).await,
        Ok("pong".to_owned())
    );

    // Unknown on a live host: NotFound for a call, a NAK logged and counted for a cast.
    assert_eq!(
        call(&a.runtime, "ghost@host-b", "ping", DEADLINE).await,
        Err(CallError::NotFound("ghost".to_owned()))
    );
    graft::metrics::enable();
    let lost = graft::metrics::history::lost_messages();
    a.runtime.cast("ghost@host-b", text("nobody")).unwrap();
    assert!(eventually(DEADLINE, || graft::metrics::history::lost_messages() > lost).await);

    // A remote timeout reads as a local one.
    let timeout = Duration::from_millis(300);
    let local = call(&b.runtime, "kv", "sleep:900", timeout)
        .await
        .unwrap_err();
    let remote = call(&a.runtime, "kv@host-b", "sleep:900", timeout)
        .await
        .unwrap_err();
    assert!(matches!(remote, CallError::Timeout { .. }), "{remote}");
    assert_eq!(remote.to_string(), local.to_string());
    // Its reply came late: dropped and counted.
    assert!(
        eventually(DEADLINE, || graft::metrics::history::lost_messages()
            > lost + 1)
        .await,
        "the late reply was not counted"
    );
    assert_eq!(
        call(&a.runtime, "kv@host-b", "ping", DEADLINE).await,
        Ok("pong".to_owned())
    );

    a.cluster.leave().await;
    b.cluster.leave().await;
}

/// 10 000 sequenced casts from each of two senders on host A reach one actor on host B in
/// each sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casts_from_two_senders_keep_their_order() {
    const COUNT: usize = 10_000;
    let server = NatsServer::start();
    let a = host(&server, "host-a").await;
    let b = host(&server, "host-b").await;
    let journal = journal();
    spawn_recorder(&b.runtime, &journal, "sink").await;
    let senders: Vec<_> = ["s1", "s2"]
        .into_iter()
        .map(|sender| {
            let runtime = a.runtime.clone();
            tokio::spawn(async move {
                for sequence in 0..COUNT {
                    let message = text(&format!("{sender} {sequence}"));
                    // A full outbound queue refuses: wait for room and send again.
                    while let Err(SendError::Remote(_)) =
                        runtime.cast("sink@host-b", message.clone())
                    {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(120), || entries(&journal)
            .iter()
            .filter(|line| line.starts_with("cast sink "))
            .count()
            == 2 * COUNT)
        .await,
        "not every cast arrived"
    );
    for sender in ["s1", "s2"] {
        let received: Vec<usize> = entries(&journal)
            .iter()
            .filter_map(|line| line.strip_prefix(&format!("cast sink {sender} ")))
            .map(|sequence| sequence.parse().unwrap())
            .collect();
        assert_eq!(
            received,
            (0..COUNT).collect::<Vec<_>>(),
            "{sender} out of order"
        );
    }
    a.cluster.leave().await;
    b.cluster.leave().await;
}

/// Remote monitors give `noproc` for an unknown name and the actor's own reason when it
/// exits; a host whose cluster stopped answers a call with HostDown (a 503), not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_monitors_and_a_host_that_left() {
    let server = NatsServer::start();
    let a = host(&server, "host-a").await;
    let b = host(&server, "host-b").await;
    let journal = journal();
    let watcher = spawn_recorder(&a.runtime, &journal, "watcher").await;
    let doomed = spawn_recorder(&b.runtime, &journal, "doomed").await;
    spawn_recorder(&b.runtime, &journal, "kv").await;

    a.runtime.monitor_name(&watcher, "ghost@host-b").unwrap();
    assert!(has(&journal, "watcher got down ghost@host-b noproc").await);

    a.runtime.monitor_name(&watcher, "doomed@host-b").unwrap();
    // A call behind the monitor frame returns once host B has taken the monitor.
    assert_eq!(
        call(&a.runtime, "doomed@host-b", "ping", DEADLINE).await,
        Ok("pong".to_owned())
    );
    let reason = StopReason::Error("boom".to_owned());
    doomed.kill_with(reason.clone());
    assert!(
        has(
            &journal,
            &format!("watcher got down doomed@host-b {reason}")
        )
        .await
    );

    // Host B leaves: its inbox has no subscriber, so a call gets a 503 → HostDown.
    b.cluster.leave().await;
    let answer = call(&a.runtime, "kv@host-b", "ping", Duration::from_secs(120)).await;
    assert_eq!(
        answer,
        Err(CallError::HostDown {
            actor: "kv".to_owned(),
            host: "host-b".to_owned()
        })
    );
    // And a cast to it is lost, logged and counted (the 503 on its NAK subject).
    graft::metrics::enable();
    let lost = graft::metrics::history::lost_messages();
    a.runtime.cast("kv@host-b", text("into the void")).unwrap();
    assert!(
        eventually_async(DEADLINE, || async {
            graft::metrics::history::lost_messages() > lost
        })
        .await
    );
    a.cluster.leave().await;
}
