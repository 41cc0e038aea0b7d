//! What process isolation costs: the same plugin actor (the release build of
//! `counter-1-0-0`) run in-process and in a worker process (`isolation = "process"`), side
//! by side in one run.
//!
//! What it measures:
//! - `isolation_call`: one call `{"Add": 1}` and its reply, the caller a task on the actor
//!   executor (beside the actor, as another actor's task would be). An isolated call adds
//!   a round trip over a Unix socket to the worker and back, and the worker's thread
//!   wake-up.
//! - `isolation_cast`: [`CASTS`] casts, then one call that returns once all of them have
//!   been handled, sent from a thread outside the pool; elements per second. Each isolated
//!   cast is its own request to the worker (one callback each), so this is also the
//!   worker's callback rate.
//! - A `summary:` block: medians of [`SAMPLES`] timed batches, the ratios, and the targets
//!   of issue 9 (isolated call ≤ 10 µs, isolated casts ≥ 500k/s per worker).
//!
//! Tricky parts: the worker is the `graft` binary's hidden `worker` subcommand, so the
//! benchmark builds the binary (release) first and points the worker at it. Run without
//! `--bench` (as `cargo test --benches` does), it takes one tiny sample: a smoke test.

use criterion::{Criterion, SamplingMode, Throughput};
use graft::build::CargoBuild;
use graft::isolation::{IsolatedFactory, IsolatedPlugin, Worker, WorkerOptions, WorkerProgram};
use graft::plugin::{Expectations, Loader};
use graft::runtime::{ActorOptions, ActorRef, BehaviourFactory, PluginFactory, Runtime, executor};
use graft_plugin::codec;
use serde::Serialize;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PACKAGE: &str = "counter-1-0-0";

/// Casts per `isolation_cast` iteration.
const CASTS: u64 = 20_000;

/// Timed batches per figure in the summary.
const SAMPLES: usize = 21;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize)]
struct StartArguments {
    start: i64,
}

#[derive(Serialize)]
enum Request {
    Add(i64),
    Get,
}

#[derive(Serialize)]
enum Command {
    Add(i64),
}

async fn call(counter: &ActorRef, request: Request) -> i64 {
    let reply = counter
        .call(codec::encode(&request).expect("encoding"), CALL_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("calling counter: {error}"));
    codec::decode(&reply).expect("decoding the reply")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    InProcess,
    Isolated,
}

impl Mode {
    const ALL: [Mode; 2] = [Mode::InProcess, Mode::Isolated];

    fn name(self) -> &'static str {
        match self {
            Mode::InProcess => "in_process",
            Mode::Isolated => "isolated",
        }
    }
}

struct Fixture {
    tokio: tokio::runtime::Runtime,
    in_process: ActorRef,
    isolated: ActorRef,
    _loader: Loader,
    _worker: Worker,
}

impl Fixture {
    fn new() -> Fixture {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("host/ has a parent");
        let build = CargoBuild::new(workspace).release(true);
        let library = build
            .build(PACKAGE)
            .unwrap_or_else(|error| panic!("building {PACKAGE}: {error}"));
        let program = build
            .build_binary("graft", "graft")
            .unwrap_or_else(|error| panic!("building the graft binary: {error}"));
        let loader = Loader::new().expect("creating the loader");
        let plugin = loader
            .load(&library, &Expectations::default())
            .unwrap_or_else(|error| panic!("loading {PACKAGE}: {error}"));
        let worker = Worker::new(
            "counter",
            WorkerOptions {
                program: WorkerProgram::Path(program),
                memory_limit_mb: None,
            },
        );
        let isolated_plugin = IsolatedPlugin::load(&worker, &library, &Expectations::default())
            .unwrap_or_else(|error| panic!("loading {PACKAGE} in a worker: {error}"));
        let start = codec::encode(&StartArguments { start: 0 }).expect("encoding");
        let tokio = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the tokio runtime");
        let runtime = Runtime::new();
        let (in_process, isolated) = tokio.block_on(async {
            let factories: [Arc<dyn BehaviourFactory>; 2] = [
                Arc::new(PluginFactory::new(plugin)),
                Arc::new(IsolatedFactory::new(isolated_plugin)),
            ];
            let mut actors = Vec::new();
            for factory in factories {
                actors.push(
                    runtime
                        .spawn(ActorOptions::new(factory, start.clone()))
                        .await
                        .unwrap_or_else(|error| panic!("spawning a counter: {error}")),
                );
            }
            (actors.remove(0), actors.remove(0))
        });
        Fixture {
            tokio,
            in_process,
            isolated,
            _loader: loader,
            _worker: worker,
        }
    }

    fn actor(&self, mode: Mode) -> ActorRef {
        match mode {
            Mode::InProcess => self.in_process.clone(),
            Mode::Isolated => self.isolated.clone(),
        }
    }

    fn check(&self) {
        for mode in Mode::ALL {
            let actor = self.actor(mode);
            self.tokio.block_on(async {
                let before = call(&actor, Request::Get).await;
                actor.cast(codec::encode(&Command::Add(3)).expect("encoding"));
                assert_eq!(call(&actor, Request::Add(2)).await, before + 5, "{mode:?}");
            });
        }
    }

    /// `iterations` calls, one after the other, from a task on the actor executor.
    fn time_calls(&self, mode: Mode, iterations: u64) -> Duration {
        let actor = self.actor(mode);
        self.tokio.block_on(executor::spawn(async move {
            let start = Instant::now();
            for _ in 0..iterations {
                black_box(call(&actor, black_box(Request::Add(1))).await);
            }
            start.elapsed()
        }))
    }

    /// `batches` × ([`CASTS`] casts, then a call that waits for them), from `block_on`.
    fn time_casts(&self, mode: Mode, batches: u64) -> Duration {
        let actor = self.actor(mode);
        self.tokio.block_on(async move {
            let start = Instant::now();
            for _ in 0..batches {
                for _ in 0..CASTS {
                    actor.cast(codec::encode(&Command::Add(1)).expect("encoding"));
                }
                black_box(call(&actor, Request::Get).await);
            }
            start.elapsed()
        })
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn human_time(nanoseconds: f64) -> String {
    if nanoseconds >= 1_000.0 {
        format!("{:.2} µs", nanoseconds / 1_000.0)
    } else {
        format!("{nanoseconds:.0} ns")
    }
}

fn main() {
    let measuring = std::env::args().any(|argument| argument == "--bench");
    let fixture = Fixture::new();
    fixture.check();

    let mut criterion = Criterion::default().without_plots().configure_from_args();
    let mut group = criterion.benchmark_group("isolation_call");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    for mode in Mode::ALL {
        group.bench_function(mode.name(), |bencher| {
            bencher.iter_custom(|iterations| fixture.time_calls(mode, iterations))
        });
    }
    group.finish();
    let mut group = criterion.benchmark_group("isolation_cast");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(CASTS));
    for mode in Mode::ALL {
        group.bench_function(mode.name(), |bencher| {
            bencher.iter_custom(|batches| fixture.time_casts(mode, batches))
        });
    }
    group.finish();
    criterion.final_summary();

    let (samples, calls_per_sample) = if measuring { (SAMPLES, 2_000) } else { (1, 10) };
    let mut call_medians = Vec::new();
    let mut cast_medians = Vec::new();
    for mode in Mode::ALL {
        fixture.time_calls(mode, calls_per_sample);
        call_medians.push(median(
            (0..samples)
                .map(|_| {
                    fixture.time_calls(mode, calls_per_sample).as_nanos() as f64
                        / calls_per_sample as f64
                })
                .collect(),
        ));
        cast_medians.push(median(
            (0..samples)
                .map(|_| CASTS as f64 / fixture.time_casts(mode, 1).as_secs_f64())
                .collect(),
        ));
    }
    println!();
    println!(
        "summary: medians of {samples} samples, counter 1.0.0 (release) in-process and in a worker process"
    );
    println!(
        "summary: call (caller on the actor executor): in-process {}, isolated {} ({:.1}x)",
        human_time(call_medians[0]),
        human_time(call_medians[1]),
        call_medians[1] / call_medians[0]
    );
    println!(
        "summary: casts (sender outside the pool): in-process {:.2} M/s, isolated {:.0} k/s ({:.2}x)",
        cast_medians[0] / 1e6,
        cast_medians[1] / 1e3,
        cast_medians[1] / cast_medians[0]
    );
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "summary: target isolated call <= 10 µs: {}, {}",
        human_time(call_medians[1]),
        verdict(call_medians[1] <= 10_000.0)
    );
    println!(
        "summary: target isolated casts >= 500k/s per worker: {:.0} k/s, {}",
        cast_medians[1] / 1e3,
        verdict(cast_medians[1] >= 500_000.0)
    );
}
