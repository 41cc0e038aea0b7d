//! The fleet's desired state and rollout progress: one JSON record under the key `state`
//! of the bucket `graft_<fleet>_state`, changed only by compare-and-swap.
//!
//! Responsibility: the record's shape ([`FleetState`], [`Rollout`]), how a rollout is
//! cut into waves ([`plan_waves`], [`WaveSize`]), and the CAS operations on the record
//! ([`StateStore`]): reading it with its revision, starting a rollout (refused while
//! another runs), and writing a new state over the revision it was computed from.
//!
//! Invariants:
//! - Every write names the revision it replaces (`kv.create` for the first, `kv.update`
//!   with the revision after): of two writers racing from the same revision, exactly one
//!   wins; the other gets [`FleetError::Conflict`] and must re-read. This is JetStream's
//!   expected-last-subject-sequence check, not anything of graft's own.
//! - At most one rollout is in progress: [`StateStore::begin`] refuses
//!   ([`FleetError::RolloutInProgress`]) while the record holds a rollout whose phase is
//!   `running`; a finished one (succeeded, rolled back) is replaced.
//! - The record outlives any controller: the bucket has no `max_age`, so a rollout whose
//!   controller died is still there to resume.
//!
//! Tricky: waves are computed once, when the rollout starts, from the group's live hosts
//! sorted by name, and stored in the record: a resumed rollout continues the same waves,
//! whatever hosts joined or left since.

use super::{Fleet, FleetError, now_ms};
use semver::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The key of the state record.
const STATE_KEY: &str = "state";

/// How many old revisions of the record the bucket keeps (for operators' inspection).
const STATE_HISTORY: i64 = 10;

/// How many hosts a wave takes: a count, or a percentage of the group's hosts (at least
/// one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveSize {
    /// This many hosts.
    Hosts(usize),
    /// This percentage (1–100) of the group's hosts, rounded up.
    Percent(u8),
}

impl std::str::FromStr for WaveSize {
    type Err = String;

    fn from_str(text: &str) -> Result<WaveSize, String> {
        let text = text.trim();
        if let Some(percent) = text.strip_suffix('%') {
            match percent.trim().parse::<u8>() {
                Ok(percent) if (1..=100).contains(&percent) => Ok(WaveSize::Percent(percent)),
                _ => Err(format!(
                    "expected a percentage from 1% to 100%, found {text}"
                )),
            }
        } else {
            match text.parse::<usize>() {
                Ok(hosts) if hosts >= 1 => Ok(WaveSize::Hosts(hosts)),
                _ => Err(format!(
                    "expected a number of hosts (at least 1) or a percentage, found {text}"
                )),
            }
        }
    }
}

impl WaveSize {
    /// The number of hosts of a wave in a group of `group` hosts (at least 1).
    pub fn hosts(self, group: usize) -> usize {
        match self {
            WaveSize::Hosts(hosts) => hosts.max(1),
            WaveSize::Percent(percent) => (group * usize::from(percent)).div_ceil(100).max(1),
        }
    }
}

/// Cuts `hosts` (sorted by name here) into waves: the first `canary` hosts alone (none if
/// 0), then waves of `wave` hosts. Every host is in exactly one wave.
pub fn plan_waves(hosts: &[String], canary: usize, wave: WaveSize) -> Vec<Vec<String>> {
    let mut sorted = hosts.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut waves = Vec::new();
    let canary = canary.min(sorted.len());
    if canary > 0 {
        waves.push(sorted[..canary].to_vec());
    }
    let rest = &sorted[canary..];
    let size = wave.hosts(sorted.len());
    waves.extend(rest.chunks(size).map(<[String]>::to_vec));
    waves
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Waves are being installed.
    Running,
    /// Every wave passed its gate and was made permanent.
    Succeeded,
    /// A gate failed; every upgraded host was sent back to the previous release.
    RolledBack {
        /// The host whose gate failed.
        host: String,
        /// Why.
        reason: String,
    },
}

/// A rollout of a group to a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The group.
    pub group: String,
    /// The release rolled out.
    pub to: Version,
    /// The release each host ran when the rollout started (what a rollback goes back to).
    pub previous: BTreeMap<String, Version>,
    /// The waves, canaries first.
    pub waves: Vec<Vec<String>>,
    /// How many waves passed their gate.
    pub waves_done: usize,
    /// How long a wave's hosts must stay healthy before it passes.
    pub health_window_ms: u64,
    /// Where it is.
    #[serde(flatten)]
    pub phase: Phase,
    /// When it started (milliseconds since the Unix epoch, the controller's clock).
    pub started_ms: u64,
    /// The controller driving it (see [`Rollout::controller_id`]): only that controller's
    /// writes are accepted, so a `--resume` takes the rollout over from a controller
    /// thought dead, and the old one stops at its next write.
    #[serde(default)]
    pub controller: String,
}

impl Rollout {
    /// A new rollout of `group` to `to` over `waves`, from the hosts' `previous` releases.
    pub fn new(
        group: &str,
        to: Version,
        previous: BTreeMap<String, Version>,
        waves: Vec<Vec<String>>,
        health_window: Duration,
    ) -> Rollout {
        Rollout {
            group: group.to_owned(),
            to,
            previous,
            waves,
            waves_done: 0,
            health_window_ms: u64::try_from(health_window.as_millis()).unwrap_or(u64::MAX),
            phase: Phase::Running,
            started_ms: now_ms(),
            controller: Rollout::controller_id(),
        }
    }

    /// A name for this controller process, unique across hosts and runs: the host name,
    /// the process id and the time it was asked for.
    pub fn controller_id() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        format!("{host}:{}:{}", std::process::id(), now_ms())
    }

    /// Whether `other` is the same rollout (the same group, release and start), whoever
    /// drives it.
    pub fn same_rollout(&self, other: &Rollout) -> bool {
        self.group == other.group && self.to == other.to && self.started_ms == other.started_ms
    }

    /// Whether it is still in progress.
    pub fn running(&self) -> bool {
        self.phase == Phase::Running
    }
}

/// The fleet's desired state: the release each host should run (set host by host as a
/// rollout reaches it), and the rollout, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    /// The release each host should run, by host name; a host not named keeps its own.
    #[serde(default)]
    pub desired: BTreeMap<String, Version>,
    /// The release each group converges to, for hosts that join it later.
    #[serde(default)]
    pub group_release: BTreeMap<String, Version>,
    /// The release each host should make permanent once it runs it, by host name.
    #[serde(default)]
    pub permanent: BTreeMap<String, Version>,
    /// The current or last rollout.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

/// The state record and where to read and write it.
#[derive(Clone)]
pub struct StateStore {
    store: async_nats::jetstream::kv::Store,
    bucket: String,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("StateStore")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens (creating if needed) the fleet's state bucket.
    pub async fn open(fleet: &Fleet) -> Result<StateStore, FleetError> {
        let bucket = fleet.namespace.state_bucket();
        let store = fleet
            .bucket(
                &bucket,
                "graft: the fleet's desired state and rollout (compare-and-swap)",
                STATE_HISTORY,
                Duration::ZERO,
            )
            .await?;
        Ok(StateStore { store, bucket })
    }

    /// The state and its revision (0: never written).
    pub async fn read(&self) -> Result<(FleetState, u64), FleetError> {
        let entry =
            self.store.entry(STATE_KEY).await.map_err(|error| {
                FleetError::jetstream(format!("reading {}", self.bucket), error)
            })?;
        match entry {
            Some(entry) if !entry.value.is_empty() => {
                let state =
                    serde_json::from_slice(&entry.value).map_err(|source| FleetError::Decode {
                        bucket: self.bucket.clone(),
                        key: STATE_KEY.to_owned(),
                        source,
                    })?;
                Ok((state, entry.revision))
            }
            _ => Ok((FleetState::default(), 0)),
        }
    }

    /// Writes `state` over `revision` (0: the record must not exist yet); its new
    /// revision, or [`FleetError::Conflict`] if another writer got there first.
    pub async fn write(&self, state: &FleetState, revision: u64) -> Result<u64, FleetError> {
        use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
        let value = serde_json::to_vec(state).expect("a fleet state serializes");
        if revision == 0 {
            self.store
                .create(STATE_KEY, value.into())
                .await
                .map_err(|error| match error.kind() {
                    CreateErrorKind::AlreadyExists => FleetError::Conflict,
                    _ => FleetError::jetstream(format!("writing {}", self.bucket), error),
                })
        } else {
            self.store
                .update(STATE_KEY, value.into(), revision)
                .await
                .map_err(|error| match error.kind() {
                    UpdateErrorKind::WrongLastRevision => FleetError::Conflict,
                    _ => FleetError::jetstream(format!("writing {}", self.bucket), error),
                })
        }
    }

    /// Starts `rollout`: refused with [`FleetError::RolloutInProgress`] while another is
    /// running, and with [`FleetError::Conflict`] if the record changed under us. Returns
    /// the state written and its revision.
    pub async fn begin(&self, rollout: Rollout) -> Result<(FleetState, u64), FleetError> {
        let (mut state, revision) = self.read().await?;
        if let Some(running) = state.rollout.as_ref().filter(|rollout| rollout.running()) {
            return Err(FleetError::RolloutInProgress {
                group: running.group.clone(),
                to: running.to.clone(),
            });
        }
        state.rollout = Some(rollout);
        let revision = self.write(&state, revision).await?;
        Ok((state, revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(count: usize) -> Vec<String> {
        (0..count).map(|index| format!("host-{index}")).collect()
    }

    #[test]
    fn wave_sizes_parse_counts_and_percentages() {
        assert_eq!("2".parse::<WaveSize>(), Ok(WaveSize::Hosts(2)));
        assert_eq!("25%".parse::<WaveSize>(), Ok(WaveSize::Percent(25)));
        assert!("0".parse::<WaveSize>().is_err());
        assert!("0%".parse::<WaveSize>().is_err());
        assert!("101%".parse::<WaveSize>().is_err());
        assert!("x".parse::<WaveSize>().is_err());
        assert_eq!(WaveSize::Percent(25).hosts(5), 2);
        assert_eq!(WaveSize::Percent(1).hosts(5), 1);
        assert_eq!(WaveSize::Percent(100).hosts(5), 5);
    }

    #[test]
    fn waves_put_canaries_first_and_every_host_once() {
        let hosts = names(5);
        let waves = plan_waves(&hosts, 1, WaveSize::Hosts(2));
        assert_eq!(waves.len(), 3);
        assert_eq!(waves[0], vec!["host-0".to_owned()]);
        let mut all: Vec<String> = waves.concat();
        all.sort();
        assert_eq!(all, hosts);
        assert_eq!(plan_waves(&hosts, 0, WaveSize::Percent(100)).len(), 1);
        assert_eq!(
            plan_waves(&hosts, 9, WaveSize::Hosts(1)),
            vec![hosts.clone()]
        );
        assert!(plan_waves(&[], 1, WaveSize::Hosts(1)).is_empty());
    }

    #[test]
    fn states_round_trip_with_the_phase_inline() {
        let mut state = FleetState::default();
        let mut rollout = Rollout::new(
            "web",
            Version::new(1, 1, 0),
            BTreeMap::from([("host-0".to_owned(), Version::new(1, 0, 0))]),
            vec![vec!["host-0".to_owned()]],
            Duration::from_secs(5),
        );
        rollout.phase = Phase::RolledBack {
            host: "host-0".into(),
            reason: "counter: unhealthy".into(),
        };
        state.rollout = Some(rollout);
        let text = serde_json::to_string(&state).unwrap();
        assert!(text.contains(r#""phase":"rolled_back""#), "{text}");
        assert_eq!(serde_json::from_str::<FleetState>(&text).unwrap(), state);
        assert!(!state.rollout.unwrap().running());
    }
}
