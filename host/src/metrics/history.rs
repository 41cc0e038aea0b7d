//! What the observer shows as history: the last upgrades (with their phases) and the last
//! actor exits, in bounded rings; and the process-wide count of lost messages an
//! upgrade's `lost` is measured with.
//!
//! Invariants:
//! - The rings never hold more than [`KEPT_UPGRADES`] upgrades and [`KEPT_EXITS`] exits;
//!   the oldest goes first.
//! - A message is *lost* when it was still queued for an actor as that actor exited, or
//!   when a full mailbox refused it. An upgrade's `lost` is the growth of that count from
//!   its start to its end (so a loss elsewhere in the process during it counts too: the
//!   point is that it stays 0).
//!
//! What is tricky: an upgrade reports its phases through the install's progress callback,
//! which only says what begins; a phase ends when the next begins (or the upgrade ends),
//! and an instruction is "before_suspend" until the batch has begun, "after_commit"
//! after.

use super::{
    ExitRecord, PhaseRecord, UpgradeKind, UpgradeOutcome, UpgradeRecord, is_enabled, lock,
};
use crate::release::handler::InstallPhase;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How many upgrades the ring keeps.
pub const KEPT_UPGRADES: usize = 32;

/// How many actor exits the ring keeps (all actors together).
pub const KEPT_EXITS: usize = 256;

static UPGRADES: Mutex<VecDeque<UpgradeRecord>> = Mutex::new(VecDeque::new());
static EXITS: Mutex<VecDeque<ExitRecord>> = Mutex::new(VecDeque::new());

/// Messages lost so far (see the module documentation).
static LOST: AtomicU64 = AtomicU64::new(0);

/// Messages lost so far in this process, while metrics were on.
pub fn lost_messages() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// Counts `count` messages lost.
pub(crate) fn count_lost(count: u64) {
    if count > 0 {
        LOST.fetch_add(count, Ordering::Relaxed);
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

fn push_bounded<T>(ring: &Mutex<VecDeque<T>>, kept: usize, item: T) {
    let mut ring = lock(ring);
    while ring.len() >= kept {
        ring.pop_front();
    }
    ring.push_back(item);
}

/// Records the exit of `actor` with `reason` and the `queued` messages it left unhandled.
pub(crate) fn actor_exited(actor: &str, reason: &graft_plugin::StopReason, queued: usize) {
    count_lost(queued as u64);
    super::host::count_exit(reason);
    push_bounded(
        &EXITS,
        KEPT_EXITS,
        ExitRecord {
            at_unix_ms: unix_ms(),
            actor: actor.to_owned(),
            reason: reason.to_string(),
        },
    );
}

/// The last exits of `actor`, oldest first.
pub(crate) fn exits_of(actor: &str) -> Vec<ExitRecord> {
    lock(&EXITS)
        .iter()
        .filter(|exit| exit.actor == actor)
        .cloned()
        .collect()
}

/// The last upgrades, oldest first.
pub(crate) fn upgrades() -> Vec<UpgradeRecord> {
    lock(&UPGRADES).iter().cloned().collect()
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// The phases seen so far of one upgrade, and what they said.
#[derive(Debug, Default)]
struct Phases {
    /// Each begun phase: its name and when, since the start.
    begun: Vec<(&'static str, Duration)>,
    batch_begun: bool,
    rolled_back: bool,
    /// Actors the batch suspended (from its `suspending` report).
    suspended: u64,
    /// The release it goes from and to, once the handler knows them.
    from: String,
    to: String,
}

/// Times one install or rollback and records it (its [`UpgradeRecord`], its counters and
/// histograms) when finished. Does nothing when metrics are off at its start.
#[derive(Debug)]
pub struct UpgradeRecorder {
    kind: UpgradeKind,
    started: Instant,
    started_unix_ms: u64,
    lost_before: u64,
    phases: Mutex<Phases>,
}

/// What a finished upgrade did, as the handler reports it.
#[derive(Debug, Clone, Default)]
pub struct UpgradeSummary {
    /// Actors moved to new code.
    pub actors_migrated: u64,
    /// Actors suspended.
    pub actors_suspended: u64,
    /// The longest one actor was suspended.
    pub longest_pause: Duration,
}

impl UpgradeRecorder {
    /// Starts timing an upgrade of `kind`; `None` when metrics are off.
    pub fn begin(kind: UpgradeKind) -> Option<UpgradeRecorder> {
        is_enabled().then(|| UpgradeRecorder {
            kind,
            started: Instant::now(),
            started_unix_ms: unix_ms(),
            lost_before: lost_messages(),
            phases: Mutex::new(Phases::default()),
        })
    }

    /// A phase begins (from the install's progress report).
    pub fn phase(&self, phase: &InstallPhase) {
        let at = self.started.elapsed();
        let mut phases = lock(&self.phases);
        let name = match phase {
            InstallPhase::Loading(_) => "loading",
            InstallPhase::Suspending(actors) => {
                phases.batch_begun = true;
                phases.suspended = *actors as u64;
                "suspending"
            }
            InstallPhase::Migrating(_) => "migrating",
            InstallPhase::Resuming(_) => "resuming",
            InstallPhase::RolledBack => {
                phases.rolled_back = true;
                "rolling_back"
            }
            InstallPhase::Instruction { .. } if phases.batch_begun => "after_commit",
            InstallPhase::Instruction { .. } => "before_suspend",
        };
        // Instructions in a row are one phase.
        if phases.begun.last().map(|(last, _)| *last) != Some(name) {
            phases.begun.push((name, at));
        }
    }

    /// The handler knows which release the upgrade goes `from` and `to`.
    pub fn set_endpoints(&self, from: String, to: String) {
        let mut phases = lock(&self.phases);
        phases.from = from;
        phases.to = to;
    }

    /// The upgrade ended: `summary` of what it did (`None` when it reported nothing: it
    /// failed; then the actors suspended are those its batch said it suspended), and the
    /// error when it did not complete (`completed` says whether the target is current
    /// anyway, as after a failure past the commit).
    pub fn finish(self, summary: Option<UpgradeSummary>, error: Option<String>, completed: bool) {
        let total = self.started.elapsed();
        let phases = self
            .phases
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner());
        let outcome = if completed {
            UpgradeOutcome::Completed
        } else if phases.rolled_back {
            UpgradeOutcome::RolledBack
        } else {
            UpgradeOutcome::Failed
        };
        let mut records = Vec::with_capacity(phases.begun.len());
        for (index, (name, start)) in phases.begun.iter().enumerate() {
            let end = phases.begun.get(index + 1).map_or(total, |(_, next)| *next);
            records.push(PhaseRecord {
                name: (*name).to_owned(),
                start_us: micros(*start),
                duration_us: micros(end.saturating_sub(*start)),
            });
        }
        let summary = summary.unwrap_or(UpgradeSummary {
            actors_suspended: phases.suspended,
            ..UpgradeSummary::default()
        });
        super::host::count_upgrade(self.kind, outcome, total, summary.longest_pause);
        push_bounded(
            &UPGRADES,
            KEPT_UPGRADES,
            UpgradeRecord {
                kind: self.kind,
                from: phases.from,
                to: phases.to,
                started_unix_ms: self.started_unix_ms,
                outcome,
                error,
                phases: records,
                actors_migrated: summary.actors_migrated,
                actors_suspended: summary.actors_suspended,
                longest_pause_us: micros(summary.longest_pause),
                total_us: micros(total),
                lost: lost_messages().saturating_sub(self.lost_before),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_keeps_the_newest() {
        let ring = Mutex::new(VecDeque::new());
        for item in 0..10 {
            push_bounded(&ring, 4, item);
        }
        assert_eq!(
            lock(&ring).iter().copied().collect::<Vec<_>>(),
            [6, 7, 8, 9]
        );
    }

    #[test]
    fn the_exit_ring_is_bounded_and_filtered_by_actor() {
        let reason = graft_plugin::StopReason::Normal;
        for _ in 0..KEPT_EXITS + 10 {
            actor_exited("unit-ring-flood", &reason, 0);
        }
        actor_exited("unit-ring-other", &reason, 0);
        assert!(lock(&EXITS).len() <= KEPT_EXITS);
        let other = exits_of("unit-ring-other");
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].reason, "normal");
        assert!(exits_of("unit-ring-flood").len() < KEPT_EXITS);
    }

    #[test]
    fn phases_follow_the_progress_reports() {
        let recorder = UpgradeRecorder {
            kind: UpgradeKind::Install,
            started: Instant::now(),
            started_unix_ms: 0,
            lost_before: 0,
            phases: Mutex::new(Phases::default()),
        };
        for phase in [
            InstallPhase::Loading(1),
            InstallPhase::Instruction { index: 0, total: 3 },
            InstallPhase::Suspending(2),
            InstallPhase::Migrating(2),
            InstallPhase::Resuming(2),
            InstallPhase::Instruction { index: 2, total: 3 },
        ] {
            recorder.phase(&phase);
        }
        let names: Vec<&str> = lock(&recorder.phases)
            .begun
            .iter()
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(
            names,
            [
                "loading",
                "before_suspend",
                "suspending",
                "migrating",
                "resuming",
                "after_commit"
            ]
        );
    }
}
