//! The scrape: the families computed when `/metrics` is read (per plugin version, from the
//! summed shards; mailboxes, from a walk of every runtime's named actors; lost messages),
//! as a `prometheus` [`Collector`] registered beside the rare-event families of
//! [`super::host`], and the whole registry encoded in the Prometheus text format (0.0.4)
//! by the crate's `TextEncoder`.
//!
//! Invariants:
//! - Label cardinality is bounded: per plugin version (at most
//!   [`super::plugin::MAX_VERSIONS`]) and per actor only for the top
//!   [`super::MetricsOptions::top_actors`] by mailbox length (every named actor only when
//!   [`super::MetricsOptions::per_actor`] asks); the totals carry no label.
//! - The mailbox walk sees registered (named) actors only: that is the registry the
//!   runtime keeps; an unnamed actor's mailbox is not in the totals.

use super::plugin::{BUCKETS, DURATION_BOUNDS_NS, MessageKind, VersionMetrics};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use std::collections::HashMap;

/// One scrape-time family: its name, help, type and label names.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    labels: &'static [&'static str],
}

const MESSAGES: Family = Family {
    name: "graft_plugin_messages_handled_total",
    help: "Messages handled by actors running each plugin version, by callback (call, cast, info).",
    kind: MetricType::COUNTER,
    labels: &["plugin", "version", "kind"],
};
const DURATION: Family = Family {
    name: "graft_plugin_callback_duration_seconds",
    help: "How long callbacks ran, per plugin version and callback: a sample, one message in 16 per actor (each batch to a worker process) is timed.",
    kind: MetricType::HISTOGRAM,
    labels: &["plugin", "version", "kind"],
};
const PANICS: Family = Family {
    name: "graft_plugin_callback_panics_total",
    help: "Callbacks that panicked (their actor exited), per plugin version.",
    kind: MetricType::COUNTER,
    labels: &["plugin", "version"],
};
const TIMEOUTS: Family = Family {
    name: "graft_plugin_callback_timeouts_total",
    help: "Callbacks killed at their deadline (their actor exited), per plugin version.",
    kind: MetricType::COUNTER,
    labels: &["plugin", "version"],
};
const RUNNING: Family = Family {
    name: "graft_plugin_actors_running",
    help: "Actors running each plugin version (those started or migrated while metrics were on).",
    kind: MetricType::GAUGE,
    labels: &["plugin", "version"],
};
const MAILBOX: Family = Family {
    name: "graft_actor_mailbox_length",
    help: "Messages waiting in the mailbox of the named actors with the longest mailboxes (top N).",
    kind: MetricType::GAUGE,
    labels: &["actor"],
};
const MAILBOX_HIGH_WATER: Family = Family {
    name: "graft_actor_mailbox_high_water",
    help: "The longest the mailbox has been, for the same actors as graft_actor_mailbox_length.",
    kind: MetricType::GAUGE,
    labels: &["actor"],
};
const MAILBOX_TOTAL: Family = Family {
    name: "graft_mailbox_messages",
    help: "Messages waiting in the mailboxes of all named actors.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const MAILBOX_HIGH_WATER_MAX: Family = Family {
    name: "graft_mailbox_high_water_max",
    help: "The longest any named actor's mailbox has been.",
    kind: MetricType::GAUGE,
    labels: &[],
};
const ACTORS_NAMED: Family = Family {
    name: "graft_actors_named",
    help: "Named actors alive (the ones the mailbox families walk).",
    kind: MetricType::GAUGE,
    labels: &[],
};
const LOST: Family = Family {
    name: "graft_messages_lost_total",
    help: "Messages lost: still queued when their actor exited, or refused by a full mailbox.",
    kind: MetricType::COUNTER,
    labels: &[],
};

const FAMILIES: [&Family; 11] = [
    &MESSAGES,
    &DURATION,
    &PANICS,
    &TIMEOUTS,
    &RUNNING,
    &MAILBOX,
    &MAILBOX_HIGH_WATER,
    &MAILBOX_TOTAL,
    &MAILBOX_HIGH_WATER_MAX,
    &ACTORS_NAMED,
    &LOST,
];

/// The families computed at scrape.
pub(crate) struct ScrapeCollector {
    descs: Vec<Desc>,
}

impl ScrapeCollector {
    pub(crate) fn new() -> Result<ScrapeCollector, prometheus::Error> {
        let descs = FAMILIES
            .iter()
            .map(|family| {
                Desc::new(
                    family.name.to_owned(),
                    family.help.to_owned(),
                    family
                        .labels
                        .iter()
                        .map(|label| (*label).to_owned())
                        .collect(),
                    HashMap::new(),
                )
            })
            .collect::<Result<Vec<Desc>, prometheus::Error>>()?;
        Ok(ScrapeCollector { descs })
    }
}

fn family(definition: &Family, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(definition.name.to_owned());
    family.set_help(definition.help.to_owned());
    family.set_field_type(definition.kind);
    family.set_metric(metrics);
    family
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(
        labels
            .iter()
            .map(|(name, value)| {
                let mut pair = LabelPair::default();
                pair.set_name((*name).to_owned());
                pair.set_value((*value).to_owned());
                pair
            })
            .collect(),
    );
    metric
}

fn counter(labels: &[(&str, &str)], value: u64) -> Metric {
    let mut metric = labelled(labels);
    let mut counter = Counter::default();
    counter.set_value(value as f64);
    metric.set_counter(counter);
    metric
}

fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut metric = labelled(labels);
    let mut gauge = Gauge::default();
    gauge.set_value(value);
    metric.set_gauge(gauge);
    metric
}

fn histogram(labels: &[(&str, &str)], snapshot: &super::plugin::HistogramSnapshot) -> Metric {
    let mut metric = labelled(labels);
    let mut histogram = Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(BUCKETS - 1);
    // The encoder adds `+Inf` (the count) itself.
    for (bound, count) in DURATION_BOUNDS_NS.iter().zip(snapshot.buckets) {
        cumulative += count;
        let mut bucket = Bucket::default();
        bucket.set_upper_bound(*bound as f64 / 1e9);
        bucket.set_cumulative_count(cumulative);
        buckets.push(bucket);
    }
    histogram.set_bucket(buckets);
    histogram.set_sample_count(snapshot.count());
    histogram.set_sample_sum(snapshot.sum_ns as f64 / 1e9);
    metric.set_histogram(histogram);
    metric
}

fn version_families(versions: &[std::sync::Arc<VersionMetrics>]) -> Vec<MetricFamily> {
    let (mut messages, mut durations, mut panics, mut timeouts, mut running) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for version in versions {
        let labels = [("plugin", version.plugin()), ("version", version.version())];
        for kind in MessageKind::ALL {
            let snapshot = version.histogram(kind);
            let labels = [labels[0], labels[1], ("kind", kind.name())];
            messages.push(counter(&labels, version.handled(kind)));
            durations.push(histogram(&labels, &snapshot));
        }
        panics.push(counter(&labels, version.panics()));
        timeouts.push(counter(&labels, version.timeouts()));
        running.push(gauge(&labels, version.running() as f64));
    }
    vec![
        family(&MESSAGES, messages),
        family(&DURATION, durations),
        family(&PANICS, panics),
        family(&TIMEOUTS, timeouts),
        family(&RUNNING, running),
    ]
}

/// One named actor's mailbox, as the walk saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailboxSample {
    pub(crate) actor: String,
    pub(crate) length: usize,
    pub(crate) high_water: usize,
}

/// The samples labelled per actor: the `top` longest mailboxes (ties: the higher high-water
/// mark, then the name), or all of them when `per_actor`.
pub(crate) fn top_mailboxes(
    mut samples: Vec<MailboxSample>,
    top: usize,
    per_actor: bool,
) -> Vec<MailboxSample> {
    samples.sort_by(|a, b| {
        (b.length, b.high_water)
            .cmp(&(a.length, a.high_water))
            .then_with(|| a.actor.cmp(&b.actor))
    });
    if !per_actor {
        samples.truncate(top);
    }
    samples
}

fn mailbox_families() -> Vec<MetricFamily> {
    let samples: Vec<MailboxSample> = crate::runtime::named_actors_everywhere()
        .iter()
        .filter(|actor| actor.is_alive())
        .map(|actor| MailboxSample {
            actor: actor.label(),
            length: actor.mailbox_length(),
            high_water: actor.mailbox_high_water(),
        })
        .collect();
    let total: usize = samples.iter().map(|sample| sample.length).sum();
    let high_water = samples
        .iter()
        .map(|sample| sample.high_water)
        .max()
        .unwrap_or(0);
    let named = samples.len();
    let options = super::options();
    let top = top_mailboxes(samples, options.top_actors, options.per_actor);
    vec![
        family(
            &MAILBOX,
            top.iter()
                .map(|sample| gauge(&[("actor", &sample.actor)], sample.length as f64))
                .collect(),
        ),
        family(
            &MAILBOX_HIGH_WATER,
            top.iter()
                .map(|sample| gauge(&[("actor", &sample.actor)], sample.high_water as f64))
                .collect(),
        ),
        family(&MAILBOX_TOTAL, vec![gauge(&[], total as f64)]),
        family(&MAILBOX_HIGH_WATER_MAX, vec![gauge(&[], high_water as f64)]),
        family(&ACTORS_NAMED, vec![gauge(&[], named as f64)]),
    ]
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = version_families(&super::plugin::all());
        families.extend(mailbox_families());
        families.push(family(
            &LOST,
            vec![counter(&[], super::history::lost_messages())],
        ));
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(actor: &str, length: usize, high_water: usize) -> MailboxSample {
        MailboxSample {
            actor: actor.to_owned(),
            length,
            high_water,
        }
    }

    #[test]
    fn the_top_mailboxes_are_the_longest() {
        let samples = vec![
            sample("a", 1, 1),
            sample("b", 5, 5),
            sample("c", 0, 9),
            sample("d", 5, 7),
        ];
        let top = top_mailboxes(samples.clone(), 2, false);
        assert_eq!(top, [sample("d", 5, 7), sample("b", 5, 5)]);
        assert_eq!(top_mailboxes(samples, 2, true).len(), 4);
    }

    #[test]
    fn a_histogram_is_cumulative_in_seconds() {
        let metrics = VersionMetrics::for_test();
        metrics.record(MessageKind::Call, std::time::Duration::from_nanos(400));
        metrics.record(MessageKind::Call, std::time::Duration::from_micros(3));
        let metric = histogram(&[], &metrics.histogram(MessageKind::Call));
        let histogram = metric.get_histogram();
        assert_eq!(histogram.get_sample_count(), 2);
        let buckets = histogram.get_bucket();
        assert_eq!(buckets.len(), DURATION_BOUNDS_NS.len());
        assert_eq!(buckets[0].upper_bound(), 5e-7);
        assert_eq!(buckets[0].cumulative_count(), 1);
        assert_eq!(buckets[2].cumulative_count(), 1);
        assert_eq!(buckets[3].cumulative_count(), 2);
        assert_eq!(buckets[DURATION_BOUNDS_NS.len() - 1].cumulative_count(), 2);
    }
}
