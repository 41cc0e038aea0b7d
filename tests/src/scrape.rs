//! Scrapes of `/metrics` (the Prometheus text format) as the tests read them, and
//! `promtool check metrics` on one.

use std::collections::BTreeMap;
use std::io::Write;

/// One scrape, parsed: each sample by its name and labels (sorted).
pub struct Scrape {
    /// The text as served.
    pub text: String,
    /// Each sample's value by its name and labels.
    pub samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Scrape {
    /// Parses the Prometheus text format (enough of it for these tests: no escapes in
    /// label values).
    pub fn parse(text: String) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                value => value.parse().unwrap_or(f64::NAN),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels: BTreeMap<String, String> = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| pair.split_once("=\""))
                .map(|(key, value)| (key.to_owned(), value.trim_end_matches('"').to_owned()))
                .collect();
            samples.insert((name.to_owned(), labels), value);
        }
        Scrape { text, samples }
    }

    /// The value of `name` with exactly `labels` (0 when absent).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        self.samples
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// The sum of `name` over every label set.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|((sample, _), _)| sample == name)
            .map(|(_, value)| value)
            .sum()
    }

    /// `graft_plugin_messages_handled_total` of one plugin version and kind.
    pub fn handled(&self, plugin: &str, version: &str, kind: &str) -> f64 {
        self.value(
            "graft_plugin_messages_handled_total",
            &[("plugin", plugin), ("version", version), ("kind", kind)],
        )
    }

    /// `graft_plugin_actors_running` of one plugin version.
    pub fn running(&self, plugin: &str, version: &str) -> f64 {
        self.value(
            "graft_plugin_actors_running",
            &[("plugin", plugin), ("version", version)],
        )
    }

    /// `graft_release_info` of `version` with `status` (`current`, `permanent`): 1 or 0.
    pub fn release(&self, version: &str, status: &str) -> f64 {
        self.value(
            "graft_release_info",
            &[("version", version), ("status", status)],
        )
    }

    /// `graft_upgrades_total` of `kind` (`install`, `rollback`, `hot_swap`) that ended
    /// with `outcome` (`completed`, `rolled_back`, `failed`).
    pub fn upgrades(&self, kind: &str, outcome: &str) -> f64 {
        self.value(
            "graft_upgrades_total",
            &[("kind", kind), ("outcome", outcome)],
        )
    }
}

/// `promtool check metrics` on a scrape; fails (with a clear message) when promtool is
/// missing: CI installs Debian's `prometheus` package.
pub fn promtool_accepts(scrape: &Scrape) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(scrape.text.as_bytes()).unwrap();
    let input = std::fs::File::open(file.path()).unwrap();
    let output = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(input)
        .output()
        .unwrap_or_else(|error| {
            panic!("promtool could not run ({error}): install Debian's `prometheus` package")
        });
    assert!(
        output.status.success(),
        "promtool check metrics refused the scrape:\n{}{}\n--- the scrape ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        scrape.text
    );
}
