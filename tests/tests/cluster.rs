//! Clusters end to end (issue 17): real `graft start --fleet … --group cluster` hosts on
//! one real nats-server, each its own process and root.
//!
//! - A global `kv` on host A is called from hosts B and C, by its name and as `kv@host-a`,
//!   and `graft fleet status` shows who holds it; a fourth host whose release also has the
//!   global `kv` refuses to boot with "already started on host host-a".
//! - The NATS server restarted (on its store): the cluster heals; calls work again.
//! - A SIGKILLed A: calls from B fail (host down, then no such name) and its names vanish
//!   within the heartbeat TTL.
//! - A host with the wrong token can neither join nor message.
//!
//! Every wait is a poll with a generous deadline ([`DEADLINE`]): hosts are read every
//! second, names renewed every 2 s and forgotten 10 s after their host's last renewal.

use graft_tests::cluster::{await_reply, call, join_arguments, start_host};
use graft_tests::fleet::{DEADLINE, fleet_status};
use graft_tests::nats::NatsServer;
use graft_tests::{Host, assembled_root, eventually_blocking, kill_9, run_graft, stderr_text};
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// A release with a `counter`, and a global `kv` when `with_kv`.
fn release(with_kv: bool) -> String {
    let mut text = String::from(
        "[release]\nname = \"cluster\"\nversion = \"1.0.0\"\n\n\
         [plugins.kv]\nversion = \"1.0.0\"\ncrate = \"plugins/kv/1.0.0\"\n\n\
         [plugins.counter]\nversion = \"1.0.0\"\ncrate = \"plugins/counter/1.0.0\"\n\n\
         [supervisor]\nstrategy = \"one_for_one\"\nmax_restarts = 3\nmax_seconds = 10\n\n\
         [[supervisor.children]]\nid = \"counter\"\nplugin = \"counter\"\nargs = { start = 0 }\n",
    );
    if with_kv {
        text.push_str("\n[[supervisor.children]]\nid = \"kv\"\nplugin = \"kv\"\nglobal = true\n");
    }
    text
}

/// A host named `name` on its own root with `release`.
fn host(server: &NatsServer, name: &str, release: String) -> (tempfile::TempDir, Host) {
    let root = assembled_root(&[("1.0.0", release)]);
    let host = start_host(server, "cluster", name, root.path());
    (root, host)
}

/// The hosts of `graft fleet status --json`, by name → their entry.
fn hosts(root: &Path, server: &NatsServer) -> Vec<Value> {
    fleet_status(root, server, &[])
        .and_then(|status| status["hosts"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_global_kv_is_reached_from_every_host_and_vanishes_with_its_host() {
    let server = NatsServer::start();
    let (root_a, mut host_a) = host(&server, "host-a", release(true));
    let (root_b, _host_b) = host(&server, "host-b", release(false));
    let (root_c, _host_c) = host(&server, "host-c", release(false));

    // B writes through the global name, C reads by name and by name@host.
    await_reply(
        root_b.path(),
        "kv",
        r#"{"Put": {"key": "colour", "value": "green"}}"#,
        "null",
    );
    assert_eq!(
        call(root_c.path(), "kv", r#"{"Get": "colour"}"#).unwrap(),
        r#""green""#
    );
    assert_eq!(
        call(root_c.path(), "kv@host-a", r#"{"Get": "colour"}"#).unwrap(),
        r#""green""#
    );
    // A local name is still local: each host's own counter.
    assert_eq!(
        call(root_b.path(), "counter", r#"{"Add": 2}"#).unwrap(),
        "2"
    );
    assert_eq!(call(root_c.path(), "counter", r#""Get""#).unwrap(), "0");
    // Casts go across too, and in order behind the call that follows them.
    let cast = run_graft(
        root_c.path(),
        &[
            "cast",
            "kv",
            r#"{"Put": {"key": "shape", "value": "round"}}"#,
        ],
    );
    assert!(cast.status.success(), "{}", stderr_text(&cast));
    assert_eq!(
        call(root_c.path(), "kv", r#"{"Get": "shape"}"#).unwrap(),
        r#""round""#
    );
    // A name no host holds is reported, not dropped.
    let unknown = call(root_b.path(), "nobody", r#""Get""#).unwrap_err();
    assert!(unknown.contains("nobody"), "{unknown}");

    // The fleet's status shows who holds the name.
    let mut listed = Vec::new();
    assert!(
        eventually_blocking(DEADLINE, || {
            listed = hosts(root_b.path(), &server);
            listed.len() == 3
                && listed
                    .iter()
                    .any(|entry| entry["host"] == "host-a" && entry["globals"][0] == "kv")
        }),
        "{listed:?}"
    );

    // A fourth host whose release also has the global kv refuses to boot, naming the holder.
    let root_d = assembled_root(&[("1.0.0", release(true))]);
    let url = server.url();
    let refused = run_graft(root_d.path(), &{
        let mut arguments = vec!["start"];
        arguments.extend(join_arguments(&url, "cluster", "host-d"));
        arguments
    });
    assert!(!refused.status.success());
    let text = stderr_text(&refused);
    assert!(
        text.contains(r#"global name "kv" is already started on host host-a"#),
        "{text}"
    );

    // The NATS server restarts on its store: calls work again, the name is still A's.
    let mut server = server;
    server.restart();
    await_reply(root_b.path(), "kv", r#"{"Get": "colour"}"#, r#""green""#);
    await_reply(root_c.path(), "kv", r#"{"Get": "shape"}"#, r#""round""#);

    // A dies without a word: B's calls fail (host down, then no such name), and the
    // name is gone from the fleet within the heartbeat TTL.
    kill_9(host_a.child.id());
    let _ = host_a.child.wait();
    let killed = Instant::now();
    let mut last = Ok(String::new());
    assert!(
        eventually_blocking(DEADLINE, || {
            last = call(root_b.path(), "kv", r#"{"Get": "colour"}"#);
            last.as_ref()
                .is_err_and(|error| error.contains("no actor named"))
        }),
        "kv should vanish: {last:?}"
    );
    println!(
        "the name vanished {:.1} s after its host was killed",
        killed.elapsed().as_secs_f64()
    );
    assert!(
        eventually_blocking(DEADLINE, || {
            listed = hosts(root_b.path(), &server);
            listed.len() == 2 && listed.iter().all(|entry| entry["host"] != "host-a")
        }),
        "{listed:?}"
    );
    drop(root_a);
}

#[test]
fn a_host_without_the_clusters_token_can_neither_join_nor_message() {
    let server = NatsServer::start_with_token(Some("cluster-s3cret"));
    let url = server.url();
    let root_a = assembled_root(&[("1.0.0", release(true))]);
    let _host_a = Host::start(
        root_a.path(),
        &[
            join_arguments(&url, "cluster", "host-a"),
            vec!["--fleet-token", "cluster-s3cret"],
        ]
        .concat(),
    );
    for token in [None, Some("wrong")] {
        let root = assembled_root(&[("1.0.0", release(false))]);
        let mut arguments = vec!["start"];
        arguments.extend(join_arguments(&url, "cluster", "intruder"));
        if let Some(token) = token {
            arguments.extend(["--fleet-token", token]);
        }
        let output = run_graft(root.path(), &arguments);
        assert_eq!(output.status.code(), Some(2), "{}", stderr_text(&output));
        let text = stderr_text(&output);
        assert!(
            text.contains("cannot connect to the fleet's NATS server")
                && text.contains("authorization violation"),
            "{text}"
        );
    }
    // The rightful host's kv answers its own calls; nobody else joined.
    assert_eq!(call(root_a.path(), "kv", r#""Len""#).unwrap(), "0");
    let status = fleet_status(root_a.path(), &server, &["--token", "cluster-s3cret"]).unwrap();
    let listed = status["hosts"].as_array().cloned().unwrap_or_default();
    assert!(
        listed.iter().all(|entry| entry["host"] == "host-a"),
        "{status}"
    );
}
