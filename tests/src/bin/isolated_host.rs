//! A minimal host for the isolation tests: `isolated_host WORKER_PROGRAM LIBRARY` starts
//! one process-isolated `faulty` actor, prints its worker's pid on stdout, and runs until
//! killed. The test kills it with SIGKILL and checks that the worker goes too.

use graft::isolation::{IsolatedFactory, IsolatedPlugin, Worker, WorkerOptions, WorkerProgram};
use graft::plugin::Expectations;
use graft::runtime::{ActorOptions, Runtime};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(program), Some(library)) = (args.next(), args.next()) else {
        eprintln!("usage: isolated_host WORKER_PROGRAM LIBRARY");
        std::process::exit(2);
    };
    let tokio = tokio::runtime::Runtime::new().expect("a tokio runtime");
    tokio.block_on(async move {
        let runtime = Runtime::new();
        let worker = Worker::new(
            "faulty",
            WorkerOptions {
                program: WorkerProgram::Path(PathBuf::from(program)),
                memory_limit_mb: None,
            },
        );
        let plugin =
            IsolatedPlugin::load(&worker, &PathBuf::from(library), &Expectations::default())
                .expect("loading the plugin in a worker");
        let args = graft_plugin::codec::encode(&serde_json::json!({})).expect("encoding");
        let actor = runtime
            .spawn(ActorOptions::new(Arc::new(IsolatedFactory::new(plugin)), args).named("f"))
            .await
            .expect("starting the actor");
        let request = graft_plugin::codec::encode(&serde_json::json!("Pid")).expect("encoding");
        actor
            .call(request, Duration::from_secs(30))
            .await
            .expect("calling the actor");
        let pid = worker.pid().expect("a running worker");
        println!("{pid}");
        std::io::stdout().flush().expect("flushing stdout");
        std::future::pending::<()>().await;
    });
}
