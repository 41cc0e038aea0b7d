//! Benchmarks of what crossing into a plugin costs, each measured against a baseline in the
//! same run so the ratios, not the absolute numbers, carry the argument.
//!
//! Groups:
//! - `plugin_call`: one call (and one cast) into the release build of `counter-1-0-0`,
//!   against the same MessagePack work with no crossing and against a native Rust counter.
//! - `plugin_load`: [`Loader::load`] followed by dropping the plugin (read, SHA-256, private
//!   copy, `dlopen`, header checks, `initialize`; then `dlclose` and the `/proc/self/maps`
//!   check), against a bare `dlopen` + `dlclose` of a fresh copy. The summary also times
//!   [`Loader::load`] alone with the expected digest, as a release's manifest gives it,
//!   against the target of 1 ms (OTP loads a module in 1.1–3.6 ms).
//! - `codec`: encode + decode of a typical message and a typical state, MessagePack with
//!   named fields ([`graft_plugin::codec`]) against `serde_json`: the measurement behind
//!   the project's choice of wire format.
//!
//! Tricky parts:
//! - Criterion reports means and intervals but hands no medians back to the program, so
//!   after the groups `main` times every case again itself (31 samples of calibrated
//!   batches, or of single iterations for the millisecond-scale load cases; median per
//!   iteration) and prints one `summary:` block with the ratios. The cases of a ratio are
//!   sampled in interleaved rounds, so load from elsewhere on the machine skews both sides.
//! - `dlopen` of a path that is already loaded returns the loaded object, so the bare
//!   baseline opens a fresh uniquely named copy each time; the copy is written outside the
//!   timed section and removed when criterion drops the routine's output (also untimed).
//!   The baseline uses the loader's own flags (`RTLD_NOW | RTLD_LOCAL`) so the two differ
//!   only in the checks.
//! - Run without `--bench` (as `cargo test --benches` does), criterion runs each case once
//!   and the summary takes a single tiny sample: a smoke test, not a measurement.

use criterion::{BatchSize, Criterion, black_box};
use graft::build::CargoBuild;
use graft::plugin::{
    Detached, Expectations, Instance, LoadedPlugin, Loader, Sha256Digest, UnloadOutcome,
};
use graft_plugin::codec;
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The plugin every plugin benchmark uses.
const PACKAGE: &str = "counter-1-0-0";

/// The target for [`Loader::load`] alone (read, hash, copy, `dlopen`, checks), median.
const LOAD_TARGET: Duration = Duration::from_millis(1);

/// The start arguments of `counter` 1.0.0 (its `Args`).
#[derive(Serialize)]
struct StartArguments {
    start: i64,
}

/// The calls of `counter` 1.0.0 that the benchmark sends, in the same shape as its `Request`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
enum Request {
    Get,
    Add(i64),
}

/// The cast of `counter` 1.0.0 that the benchmark sends, in the same shape as its `Command`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
enum Command {
    Add(i64),
}

/// A typical actor message for the `codec` group: a struct variant with a few fields.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Message {
    Deposit {
        account: String,
        amount: i64,
        reference: u64,
    },
}

/// A typical actor state for the `codec` group.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct State {
    count: i64,
    history: Vec<i64>,
    name: String,
}

fn typical_message() -> Message {
    Message::Deposit {
        account: "savings-0042".to_owned(),
        amount: 12_500,
        reference: 9_007_199_254_740_993,
    }
}

fn typical_state() -> State {
    State {
        count: 1_234_567,
        history: (0..16).map(|index| index * 37 - 200).collect(),
        name: "counter-of-the-north-wing".to_owned(),
    }
}

/// The native twin of `counter`'s state, for the no-plugin baseline.
struct NativeCounter {
    count: i64,
}

/// The native twin of `counter`'s `handle_call` for the requests above.
fn native_handle_call(counter: &mut NativeCounter, request: Request) -> i64 {
    match request {
        Request::Get => counter.count,
        Request::Add(amount) => {
            counter.count += amount;
            counter.count
        }
    }
}

/// Host side of a call: encode the request, cross into the plugin, decode the reply.
fn plugin_call(instance: &mut Instance, services: &Detached, request: Request) -> i64 {
    let bytes = codec::encode(&request).expect("encoding the request");
    let outputs = instance
        .handle_call(&bytes, 1, services)
        .expect("counter handles the call");
    codec::decode(&outputs.reply.expect("counter replies")).expect("decoding the reply")
}

/// Host side of a cast: encode the message and cross into the plugin.
fn plugin_cast(instance: &mut Instance, services: &Detached, command: Command) {
    let bytes = codec::encode(&command).expect("encoding the cast");
    instance
        .handle_cast(&bytes, services)
        .expect("counter handles the cast");
}

/// The host's share of a call's codec work with no crossing: encode the request, decode a
/// reply that is already encoded.
fn codec_host_side(request: Request, reply: &[u8]) -> i64 {
    let bytes = codec::encode(&request).expect("encoding the request");
    black_box(bytes);
    codec::decode(reply).expect("decoding the reply")
}

/// Both sides' codec work of a call with no crossing: the host encodes the request, the
/// "plugin" decodes it, runs the native counter and encodes the reply, the host decodes it.
fn codec_both_sides(counter: &mut NativeCounter, request: Request) -> i64 {
    let bytes = codec::encode(&request).expect("encoding the request");
    let decoded: Request = codec::decode(&bytes).expect("decoding the request");
    let reply = codec::encode(&native_handle_call(counter, decoded)).expect("encoding the reply");
    codec::decode(&reply).expect("decoding the reply")
}

fn msgpack_round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let bytes = codec::encode(value).expect("MessagePack encode");
    codec::decode(&bytes).expect("MessagePack decode")
}

fn json_round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
    let bytes = serde_json::to_vec(value).expect("JSON encode");
    serde_json::from_slice(&bytes).expect("JSON decode")
}

/// A copy of the plugin file for the bare `dlopen` baseline; removed when dropped.
struct ScratchCopy {
    path: PathBuf,
}

impl Drop for ScratchCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Makes fresh, uniquely named copies of one library in one directory.
struct CopyMaker {
    source: PathBuf,
    directory: tempfile::TempDir,
    sequence: AtomicU64,
}

impl CopyMaker {
    fn new(source: &Path) -> CopyMaker {
        CopyMaker {
            source: source.to_owned(),
            directory: tempfile::Builder::new()
                .prefix("graft-bench-bare-")
                .tempdir()
                .expect("creating the scratch directory"),
            sequence: AtomicU64::new(0),
        }
    }

    fn fresh_copy(&self) -> ScratchCopy {
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let path = self.directory.path().join(format!("bare-{sequence}.so"));
        std::fs::copy(&self.source, &path).expect("copying the library");
        ScratchCopy { path }
    }
}

/// The baseline: `dlopen` and `dlclose` with the loader's flags, no checks at all.
fn bare_open_and_close(copy: &ScratchCopy) {
    // SAFETY: the copy is of `counter-1-0-0`, built by this workspace from source a moment
    // ago; loading it runs its constructors, exactly as the loader's `dlopen` does.
    let library = unsafe { Library::open(Some(&copy.path), RTLD_NOW | RTLD_LOCAL) }
        .expect("dlopen of the copy");
    library.close().expect("dlclose of the copy");
}

/// The loader's path, start to finish: load with every check, then unload and verify.
fn checked_load_and_unload(loader: &Loader, library: &Path) {
    let plugin: Arc<LoadedPlugin> = loader
        .load(library, &Expectations::default())
        .expect("loading counter");
    drop(plugin);
}

/// Loads with every check, as a release does (with the expected digest); the time of the
/// load alone, the drop (unload) is not counted.
fn timed_release_load(loader: &Loader, library: &Path, expect: &Expectations) -> Duration {
    let start = Instant::now();
    let plugin = loader.load(library, expect).expect("loading counter");
    let spent = start.elapsed();
    drop(plugin);
    spent
}

/// Everything the benchmarks share: the built library, a loaded plugin and an actor on it.
struct Fixture {
    library: PathBuf,
    /// What a release's manifest says of the library (its digest, name and version).
    release_expectations: Expectations,
    loader: Loader,
    instance: Instance,
    services: Detached,
    copies: CopyMaker,
}

impl Fixture {
    fn new() -> Fixture {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("host/ has a parent");
        let library = CargoBuild::new(workspace)
            .release(true)
            .build(PACKAGE)
            .unwrap_or_else(|error| panic!("building {PACKAGE} in release: {error}"));
        let loader = Loader::new().expect("creating the loader");
        let plugin = loader
            .load(&library, &Expectations::default())
            .expect("loading counter");
        let services = Detached::new("bench");
        let arguments = codec::encode(&StartArguments { start: 0 }).expect("encoding args");
        let (instance, _) =
            Instance::start(&plugin, &arguments, &services).expect("starting counter");
        let copies = CopyMaker::new(&library);
        let release_expectations = Expectations {
            sha256: Some(Sha256Digest::of(
                &std::fs::read(&library).expect("reading the library"),
            )),
            name: Some(plugin.name().to_owned()),
            version: Some(plugin.version().clone()),
        };
        Fixture {
            library,
            release_expectations,
            loader,
            instance,
            services,
            copies,
        }
    }
}

fn bench_plugin_call(criterion: &mut Criterion, fixture: &mut Fixture) {
    let mut group = criterion.benchmark_group("plugin_call");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    let services = fixture.services.clone();
    let instance = &mut fixture.instance;
    group.bench_function("plugin_call_add", |bencher| {
        bencher.iter(|| plugin_call(instance, &services, black_box(Request::Add(1))))
    });
    group.bench_function("plugin_cast_add", |bencher| {
        bencher.iter(|| plugin_cast(instance, &services, black_box(Command::Add(1))))
    });

    let reply = codec::encode(&42_i64).expect("encoding a reply");
    group.bench_function("codec_only_host_side", |bencher| {
        bencher.iter(|| codec_host_side(black_box(Request::Add(1)), black_box(&reply)))
    });
    let mut counter = NativeCounter { count: 0 };
    group.bench_function("codec_only_both_sides", |bencher| {
        bencher.iter(|| codec_both_sides(&mut counter, black_box(Request::Add(1))))
    });
    let handle = black_box(native_handle_call as fn(&mut NativeCounter, Request) -> i64);
    group.bench_function("native_call_add", |bencher| {
        bencher.iter(|| handle(&mut counter, black_box(Request::Add(1))))
    });
    group.finish();
}

fn bench_plugin_load(criterion: &mut Criterion, fixture: &Fixture) {
    let mut group = criterion.benchmark_group("plugin_load");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.sample_size(30);

    group.bench_function("loader_load_and_drop", |bencher| {
        bencher.iter(|| checked_load_and_unload(&fixture.loader, &fixture.library))
    });
    group.bench_function("bare_dlopen_and_close", |bencher| {
        bencher.iter_batched(
            || fixture.copies.fresh_copy(),
            |copy| {
                bare_open_and_close(&copy);
                copy
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn bench_codec(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("codec");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));

    let message = typical_message();
    let state = typical_state();
    group.bench_function("message_msgpack", |bencher| {
        bencher.iter(|| msgpack_round_trip(black_box(&message)))
    });
    group.bench_function("message_json", |bencher| {
        bencher.iter(|| json_round_trip(black_box(&message)))
    });
    group.bench_function("state_msgpack", |bencher| {
        bencher.iter(|| msgpack_round_trip(black_box(&state)))
    });
    group.bench_function("state_json", |bencher| {
        bencher.iter(|| json_round_trip(black_box(&state)))
    });
    group.finish();
}

/// How thoroughly the summary measures.
#[derive(Debug, Clone, Copy)]
struct Sampling {
    /// Samples per case; the median is reported.
    samples: usize,
    /// Each sample runs enough iterations to take at least this long.
    batch_target: Duration,
}

impl Sampling {
    const MEASURE: Sampling = Sampling {
        samples: 31,
        batch_target: Duration::from_millis(5),
    };
    const SMOKE: Sampling = Sampling {
        samples: 1,
        batch_target: Duration::ZERO,
    };

    /// One iteration per sample, for cases that take far longer than reading the clock
    /// (and whose setup, a 5 MB copy, should not run thousands of times).
    fn single_iterations(self) -> Sampling {
        Sampling {
            batch_target: Duration::ZERO,
            ..self
        }
    }
}

/// One case of the summary: `measure(iterations)` runs the case that many times and
/// returns the time spent in the part that counts.
type Measure<'a> = &'a mut dyn FnMut(u64) -> Duration;

/// Median time of one iteration of each case, in nanoseconds. Each case first finds its
/// batch size; then the samples are taken in rounds, one of every case per round, so a load
/// spike from elsewhere on the machine hits all of them alike instead of skewing a ratio.
fn interleaved_medians<const CASES: usize>(
    sampling: Sampling,
    mut cases: [Measure<'_>; CASES],
) -> [f64; CASES] {
    let batch_sizes = cases.each_mut().map(|measure| {
        let mut iterations = 1_u64;
        while measure(iterations) < sampling.batch_target && iterations < 1 << 30 {
            iterations *= 2;
        }
        iterations
    });
    let mut samples: [Vec<f64>; CASES] = std::array::from_fn(|_| Vec::new());
    for _ in 0..sampling.samples {
        for (index, measure) in cases.iter_mut().enumerate() {
            let iterations = batch_sizes[index];
            samples[index].push(measure(iterations).as_nanos() as f64 / iterations as f64);
        }
    }
    samples.map(|mut per_iteration| {
        per_iteration.sort_by(f64::total_cmp);
        per_iteration[per_iteration.len() / 2]
    })
}

/// Times `routine` over whole batches.
fn batched(mut routine: impl FnMut()) -> impl FnMut(u64) -> Duration {
    move |iterations| {
        let start = Instant::now();
        for _ in 0..iterations {
            routine();
        }
        start.elapsed()
    }
}

/// Shows a duration in nanoseconds with a readable unit.
fn human(nanoseconds: f64) -> String {
    if nanoseconds >= 1_000_000.0 {
        format!("{:.2} ms", nanoseconds / 1_000_000.0)
    } else if nanoseconds >= 1_000.0 {
        format!("{:.1} µs", nanoseconds / 1_000.0)
    } else {
        format!("{nanoseconds:.1} ns")
    }
}

fn print_summary(fixture: &mut Fixture, sampling: Sampling) {
    let services = fixture.services.clone();
    let instance = RefCell::new(&mut fixture.instance);
    let reply = codec::encode(&42_i64).expect("encoding a reply");
    let counter = RefCell::new(NativeCounter { count: 0 });
    let handle = black_box(native_handle_call as fn(&mut NativeCounter, Request) -> i64);
    let [call, cast, host_side, both_sides, native] = interleaved_medians(
        sampling,
        [
            &mut batched(|| {
                let instance = &mut **instance.borrow_mut();
                black_box(plugin_call(instance, &services, black_box(Request::Add(1))));
            }),
            &mut batched(|| {
                let instance = &mut **instance.borrow_mut();
                plugin_cast(instance, &services, black_box(Command::Add(1)));
            }),
            &mut batched(|| {
                black_box(codec_host_side(
                    black_box(Request::Add(1)),
                    black_box(&reply),
                ));
            }),
            &mut batched(|| {
                let counter = &mut *counter.borrow_mut();
                black_box(codec_both_sides(counter, black_box(Request::Add(1))));
            }),
            &mut batched(|| {
                let counter = &mut *counter.borrow_mut();
                black_box(handle(counter, black_box(Request::Add(1))));
            }),
        ],
    );

    let closed_before = fixture.loader.closed_count();
    let copies = &fixture.copies;
    let [release_load, load, bare] = interleaved_medians(
        sampling.single_iterations(),
        [
            &mut |iterations| {
                (0..iterations)
                    .map(|_| {
                        timed_release_load(
                            &fixture.loader,
                            &fixture.library,
                            &fixture.release_expectations,
                        )
                    })
                    .sum()
            },
            &mut batched(|| checked_load_and_unload(&fixture.loader, &fixture.library)),
            &mut |iterations| {
                let mut spent = Duration::ZERO;
                for _ in 0..iterations {
                    let copy = copies.fresh_copy();
                    let start = Instant::now();
                    bare_open_and_close(&copy);
                    spent += start.elapsed();
                }
                spent
            },
        ],
    );
    // The loader keeps only its most recent reports: count the closes, check the last ones.
    let loads = (fixture.loader.closed_count() - closed_before) as usize;
    let reports = fixture.loader.unload_reports();
    let checked = loads.min(reports.len());
    let unloaded = reports[reports.len() - checked..]
        .iter()
        .filter(|report| report.outcome == UnloadOutcome::Unloaded)
        .count();
    let library_size = std::fs::metadata(&fixture.library)
        .map(|metadata| metadata.len())
        .unwrap_or(0);

    let message = typical_message();
    let state = typical_state();
    let [message_msgpack, message_json, state_msgpack, state_json] = interleaved_medians(
        sampling,
        [
            &mut batched(|| {
                black_box(msgpack_round_trip(black_box(&message)));
            }),
            &mut batched(|| {
                black_box(json_round_trip(black_box(&message)));
            }),
            &mut batched(|| {
                black_box(msgpack_round_trip(black_box(&state)));
            }),
            &mut batched(|| {
                black_box(json_round_trip(black_box(&state)));
            }),
        ],
    );
    let size = |bytes: Vec<u8>| bytes.len();
    let message_sizes = (
        size(codec::encode(&message).expect("MessagePack encode")),
        size(serde_json::to_vec(&message).expect("JSON encode")),
    );
    let state_sizes = (
        size(codec::encode(&state).expect("MessagePack encode")),
        size(serde_json::to_vec(&state).expect("JSON encode")),
    );

    println!();
    println!(
        "summary: medians of {} samples per case{}",
        sampling.samples,
        if sampling.samples == 1 {
            " (smoke run, not a measurement: pass --bench)"
        } else {
            ""
        }
    );
    println!(
        "summary: plugin call median {} = {:.1}x codec-only (host side), {:.1}x codec-only (both sides), {:.0}x native",
        human(call),
        call / host_side,
        call / both_sides,
        call / native
    );
    println!(
        "summary: plugin cast median {} = {:.1}x codec-only (host side)",
        human(cast),
        cast / host_side
    );
    println!(
        "summary: codec-only median {} host side (encode request + decode reply), {} both sides; native call median {}",
        human(host_side),
        human(both_sides),
        human(native)
    );
    let met = |median: f64, target: Duration| {
        if median <= target.as_nanos() as f64 {
            "met"
        } else {
            "NOT met"
        }
    };
    println!(
        "summary: plugin load median {} (read, SHA-256, checks, copy, dlopen, initialize; expected digest as a release gives it; library {} bytes) = {:.1}x bare dlopen+dlclose: target <= {} {}",
        human(release_load),
        library_size,
        release_load / bare,
        human(LOAD_TARGET.as_nanos() as f64),
        met(release_load, LOAD_TARGET)
    );
    println!(
        "summary: load+unload median {} = {:.1}x bare dlopen+dlclose median {} (library {} bytes; {unloaded}/{checked} of the last loads verified unloaded)",
        human(load),
        load / bare,
        human(bare),
        library_size
    );
    println!(
        "summary: message encode+decode msgpack {} ({} bytes) vs json {} ({} bytes): json/msgpack = {:.2}x time, {:.2}x size",
        human(message_msgpack),
        message_sizes.0,
        human(message_json),
        message_sizes.1,
        message_json / message_msgpack,
        message_sizes.1 as f64 / message_sizes.0 as f64
    );
    println!(
        "summary: state encode+decode msgpack {} ({} bytes) vs json {} ({} bytes): json/msgpack = {:.2}x time, {:.2}x size",
        human(state_msgpack),
        state_sizes.0,
        human(state_json),
        state_sizes.1,
        state_json / state_msgpack,
        state_sizes.1 as f64 / state_sizes.0 as f64
    );
}

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let has = |flag: &str| arguments.iter().any(|argument| argument == flag);
    let mut fixture = Fixture::new();
    // Check the message shapes once, so a mismatch fails loudly instead of being timed.
    assert_eq!(
        plugin_call(&mut fixture.instance, &fixture.services, Request::Get),
        0
    );
    assert_eq!(
        msgpack_round_trip(&typical_state()),
        json_round_trip(&typical_state())
    );

    // Plots are off: drawing them took about ten seconds per case, more than measuring it.
    let mut criterion = Criterion::default().without_plots().configure_from_args();
    bench_plugin_call(&mut criterion, &mut fixture);
    bench_plugin_load(&mut criterion, &fixture);
    bench_codec(&mut criterion);
    criterion.final_summary();

    if has("--list") {
        return;
    }
    let sampling = if has("--bench") {
        Sampling::MEASURE
    } else {
        Sampling::SMOKE
    };
    print_summary(&mut fixture, sampling);
}
