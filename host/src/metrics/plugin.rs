//! Per plugin version: messages handled by kind, callback durations, callback panics and
//! timeouts, actors running.
//!
//! Invariants:
//! - One [`VersionMetrics`] per plugin name and version (interned here, process-wide); an
//!   actor caches its version's `Arc` while it runs that version, so the hot path does no
//!   lookup.
//! - Messages handled and durations are sharded by thread: a fixed number of
//!   cache-line-aligned shards, each thread picking one once (round robin), so two runner
//!   threads never write the same cache line; a scrape sums the shards.
//! - Counts are exact; durations are a sample: an actor times one message in
//!   [`TIMED_EVERY`] by its count of messages handled (its first, then every
//!   [`TIMED_EVERY`]th), because the clock reads cost more than the rest of the
//!   bookkeeping together (about 25 ns each here: two per call would be 4% of a 1.2 µs
//!   round trip, and the budget is 5%; one per cast 10% of a cast at 2.9 M/s). Averages
//!   and quantiles of a uniform sample are those of the whole; the histogram's `_count` is
//!   the number of timed messages.
//! - "Actors running" is a gauge moved by [`Running`]: created when an actor starts on (or
//!   changes to) a version while metrics are on, dropped when it leaves it (exit, code
//!   change, a killed actor's task dropped), so it never drifts.
//! - Bounded: at most [`MAX_VERSIONS`] versions are kept; past that, versions no actor
//!   runs any more are forgotten, oldest first.
//!
//! What is tricky: shards are picked per thread, not per core, so a thread replaced by the
//! executor (a blocked runner) takes a new shard index; two threads may share a shard
//! (the adds are atomic, so nothing is lost, only a cache line is shared).

use super::lock;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An actor times one message in this many (see the module documentation).
pub const TIMED_EVERY: u32 = 16;

/// How many shards each version's counters have (a power of two).
pub const SHARDS: usize = 16;

/// The most plugin versions kept; past it, versions no actor runs are forgotten.
pub const MAX_VERSIONS: usize = 64;

/// Upper bounds of the callback-duration buckets, in nanoseconds (then `+Inf`).
pub(crate) const DURATION_BOUNDS_NS: [u64; 22] = [
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Buckets of a duration histogram: one per bound, and `+Inf`.
pub(crate) const BUCKETS: usize = DURATION_BOUNDS_NS.len() + 1;

/// Which callback handled a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// `handle_call`.
    Call = 0,
    /// `handle_cast`.
    Cast = 1,
    /// `handle_info` (timeouts, exit signals, monitors' `down` and the plugin's own).
    Info = 2,
}

impl MessageKind {
    /// Every kind, in index order.
    pub const ALL: [MessageKind; 3] = [MessageKind::Call, MessageKind::Cast, MessageKind::Info];

    /// The `kind` label.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Call => "call",
            MessageKind::Cast => "cast",
            MessageKind::Info => "info",
        }
    }
}

/// One thread's share of a version's counters: messages handled, and the timed ones'
/// non-cumulative bucket counts and sum of durations, per kind. Aligned so that no two
/// shards share a cache line (128 bytes: the adjacent-line prefetcher pairs lines).
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    handled: [AtomicU64; 3],
    buckets: [[AtomicU64; BUCKETS]; 3],
    sum_ns: [AtomicU64; 3],
}

/// The shard the current thread writes.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|index| *index)
}

/// The bucket a duration of `nanoseconds` falls in (`le` semantics: the first bound it does
/// not exceed).
pub(crate) fn bucket_of(nanoseconds: u64) -> usize {
    DURATION_BOUNDS_NS.partition_point(|bound| *bound < nanoseconds)
}

/// A duration histogram summed over the shards: cumulative counts per bound, the count
/// and the sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// Non-cumulative count per bucket (the last is `+Inf`).
    pub(crate) buckets: [u64; BUCKETS],
    /// The sum, in nanoseconds.
    pub(crate) sum_ns: u64,
}

impl HistogramSnapshot {
    /// How many observations.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// The counters of one plugin version.
pub struct VersionMetrics {
    plugin: String,
    version: String,
    /// "plugin version", as the runtime labels the code an actor runs.
    code_label: String,
    shards: Box<[Shard; SHARDS]>,
    panics: AtomicU64,
    timeouts: AtomicU64,
    running: AtomicI64,
}

impl std::fmt::Debug for VersionMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionMetrics")
            .field("plugin", &self.plugin)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl VersionMetrics {
    /// A version kept nowhere (for tests).
    #[cfg(test)]
    pub(crate) fn for_test() -> VersionMetrics {
        VersionMetrics::new("unit", "0.0.0", "unit 0.0.0")
    }

    fn new(plugin: &str, version: &str, code_label: &str) -> VersionMetrics {
        VersionMetrics {
            plugin: plugin.to_owned(),
            version: version.to_owned(),
            code_label: code_label.to_owned(),
            shards: Box::default(),
            panics: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            running: AtomicI64::new(0),
        }
    }

    /// The plugin's name (`native` for host-native code).
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The plugin's version (`none` for host-native code).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Counts `messages` of `kind` handled.
    #[inline]
    pub fn count(&self, kind: MessageKind, messages: u64) {
        self.shards[shard_index()].handled[kind as usize].fetch_add(messages, Ordering::Relaxed);
    }

    /// Observes one timed message of `kind` whose callback took `took` (in the duration
    /// histogram; counting it is [`VersionMetrics::count`]'s).
    #[inline]
    pub fn observe(&self, kind: MessageKind, took: Duration) {
        let nanoseconds = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[shard_index()];
        let kind = kind as usize;
        shard.buckets[kind][bucket_of(nanoseconds)].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns[kind].fetch_add(nanoseconds, Ordering::Relaxed);
    }

    /// Counts and observes one message (tests and one-off callers).
    pub fn record(&self, kind: MessageKind, took: Duration) {
        self.count(kind, 1);
        self.observe(kind, took);
    }

    /// Counts a callback that panicked.
    pub fn count_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a callback killed at its deadline.
    pub fn count_timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Callbacks that panicked.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Callbacks killed at their deadline.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Actors running this version now (those started or migrated while metrics were on).
    pub fn running(&self) -> i64 {
        self.running.load(Ordering::Relaxed)
    }

    /// Messages of `kind` handled so far.
    pub fn handled(&self, kind: MessageKind) -> u64 {
        self.shards
            .iter()
            .map(|shard| shard.handled[kind as usize].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// The duration histogram of `kind`, summed over the shards.
    pub(crate) fn histogram(&self, kind: MessageKind) -> HistogramSnapshot {
        let mut snapshot = HistogramSnapshot {
            buckets: [0; BUCKETS],
            sum_ns: 0,
        };
        let kind = kind as usize;
        for shard in self.shards.iter() {
            for (total, bucket) in snapshot.buckets.iter_mut().zip(&shard.buckets[kind]) {
                *total += bucket.load(Ordering::Relaxed);
            }
            snapshot.sum_ns = snapshot
                .sum_ns
                .wrapping_add(shard.sum_ns[kind].load(Ordering::Relaxed));
        }
        snapshot
    }
}

/// An actor running a version: counted in its "actors running" until dropped.
#[derive(Debug)]
pub struct Running(Arc<VersionMetrics>);

impl Running {
    /// Counts one more actor running `metrics`.
    pub fn start(metrics: Arc<VersionMetrics>) -> Running {
        metrics.running.fetch_add(1, Ordering::Relaxed);
        Running(metrics)
    }

    /// The version's metrics.
    #[inline]
    pub fn metrics(&self) -> &VersionMetrics {
        &self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every version seen, oldest first.
static VERSIONS: Mutex<Vec<Arc<VersionMetrics>>> = Mutex::new(Vec::new());

/// The metrics of `plugin` at `version` (created on first use); `code_label` is the
/// runtime's label for that code ("plugin version").
pub fn for_version(plugin: &str, version: &str, code_label: &str) -> Arc<VersionMetrics> {
    let mut versions = lock(&VERSIONS);
    if let Some(found) = versions
        .iter()
        .find(|metrics| metrics.plugin == plugin && metrics.version == version)
    {
        return Arc::clone(found);
    }
    if versions.len() >= MAX_VERSIONS
        && let Some(unused) = versions
            .iter()
            .position(|metrics| Arc::strong_count(metrics) == 1 && metrics.running() == 0)
    {
        versions.remove(unused);
    }
    let created = Arc::new(VersionMetrics::new(plugin, version, code_label));
    versions.push(Arc::clone(&created));
    created
}

/// The metrics of the code an identity names (`None`: host-native code).
pub fn for_identity(identity: Option<&crate::plugin::PluginIdentity>) -> Arc<VersionMetrics> {
    match identity {
        Some(identity) => for_version(
            &identity.name,
            &identity.version.to_string(),
            &identity.to_string(),
        ),
        None => for_version("native", "none", "native code"),
    }
}

/// The metrics of the code the runtime labels `code_label` ("plugin version", or
/// `native code`): found among the versions seen, else made from the label.
pub fn for_code_label(code_label: &str) -> Arc<VersionMetrics> {
    if let Some(found) = lock(&VERSIONS)
        .iter()
        .find(|metrics| metrics.code_label == code_label)
    {
        return Arc::clone(found);
    }
    match code_label.rsplit_once(' ') {
        Some(("native", "code")) | None => for_version("native", "none", code_label),
        Some((plugin, version)) => for_version(plugin, version, code_label),
    }
}

/// Every version kept, oldest first.
pub(crate) fn all() -> Vec<Arc<VersionMetrics>> {
    lock(&VERSIONS).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_falls_in_the_first_bucket_it_does_not_exceed() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(500), 0);
        assert_eq!(bucket_of(501), 1);
        assert_eq!(bucket_of(1_000), 1);
        assert_eq!(bucket_of(5_000_000_000), DURATION_BOUNDS_NS.len() - 1);
        assert_eq!(bucket_of(5_000_000_001), BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn a_shard_is_alone_on_its_cache_lines() {
        assert_eq!(std::mem::align_of::<Shard>(), 128);
        assert_eq!(std::mem::size_of::<Shard>() % 128, 0);
    }

    #[test]
    fn the_shards_of_many_threads_sum_up() {
        let metrics = Arc::new(VersionMetrics::new(
            "unit-shards",
            "1.0.0",
            "unit-shards 1.0.0",
        ));
        let threads: Vec<_> = (0..SHARDS + 3)
            .map(|_| {
                let metrics = Arc::clone(&metrics);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        metrics.record(MessageKind::Cast, Duration::from_nanos(700));
                    }
                    metrics.record(MessageKind::Call, Duration::from_secs(10));
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("a recording thread panicked");
        }
        let threads = (SHARDS + 3) as u64;
        assert_eq!(metrics.handled(MessageKind::Cast), 1000 * threads);
        assert_eq!(metrics.handled(MessageKind::Call), threads);
        assert_eq!(metrics.handled(MessageKind::Info), 0);
        let casts = metrics.histogram(MessageKind::Cast);
        assert_eq!(casts.buckets[1], 1000 * threads);
        assert_eq!(casts.sum_ns, 700 * 1000 * threads);
        assert_eq!(
            metrics.histogram(MessageKind::Call).buckets[BUCKETS - 1],
            threads
        );
    }

    #[test]
    fn counts_and_observations_are_apart() {
        let metrics = VersionMetrics::new("unit-batch", "1.0.0", "unit-batch 1.0.0");
        metrics.count(MessageKind::Cast, 64);
        metrics.observe(MessageKind::Cast, Duration::from_micros(2));
        assert_eq!(metrics.handled(MessageKind::Cast), 64);
        let casts = metrics.histogram(MessageKind::Cast);
        assert_eq!(casts.count(), 1);
        assert_eq!(casts.buckets[bucket_of(2_000)], 1);
    }

    #[test]
    fn running_follows_the_guards() {
        let metrics = for_version("unit-running", "1.0.0", "unit-running 1.0.0");
        let first = Running::start(Arc::clone(&metrics));
        let second = Running::start(Arc::clone(&metrics));
        assert_eq!(metrics.running(), 2);
        drop(first);
        assert_eq!(metrics.running(), 1);
        drop(second);
        assert_eq!(metrics.running(), 0);
    }

    #[test]
    fn a_code_label_finds_its_version() {
        let by_version = for_version("unit-label", "2.1.0", "unit-label 2.1.0");
        assert!(Arc::ptr_eq(
            &by_version,
            &for_code_label("unit-label 2.1.0")
        ));
        let made = for_code_label("unit-made 0.3.0");
        assert_eq!((made.plugin(), made.version()), ("unit-made", "0.3.0"));
        let native = for_code_label("native code");
        assert_eq!((native.plugin(), native.version()), ("native", "none"));
    }
}
