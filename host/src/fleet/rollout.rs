//! The rollout controller (`graft fleet rollout`, `graft fleet rollback`): moves a group
//! to a release wave by wave through the state record, gating each wave on its hosts'
//! health, and rolls every upgraded host back when a gate fails.
//!
//! Responsibility: writing the desired state (the hosts only follow it, see
//! [`super::converge`]) and watching the hosts' heartbeats to decide each gate.
//!
//! Invariants:
//! - Every change of the record is a compare-and-swap ([`modify`] re-reads and retries on
//!   a conflict); progress (`waves_done`) is written after each wave, so a controller that
//!   dies can be resumed from the record alone (`--resume`).
//! - A wave passes only when each of its hosts runs the release, is not installing,
//!   reports no convergence error, and then stays healthy (no unhealthy actor, no new
//!   restart in its tree, still present, still on the release) for the whole health
//!   window. Only then is the release made permanent on those hosts.
//! - A failed gate sets every host of the rollout back to its previous release (and its
//!   previous permanent release), marks the rollout rolled back, and returns
//!   [`FleetError::RolloutFailed`] naming the host and why.
//! - One controller drives a rollout: the record names it, and a controller writes only
//!   while the record still holds its rollout, running, under its name ([`modify_own`]).
//!   `graft fleet rollback` (the operator) and `--resume` (a new controller taking over
//!   from one thought dead) therefore stop the old controller at its next write with
//!   [`FleetError::RolloutStopped`], instead of being overwritten by it.
//! - A rollout starts from fresh heartbeats ([`fresh_hosts`]): each host's previous
//!   release, what a rollback returns it to, is read from a heartbeat written after the
//!   rollout was asked for, while the host was not installing (a heartbeat up to 2 s old
//!   could name a release an operator's install has since undone).
//!
//! Tricky: a heartbeat read as a wave begins can predate it: a host that ran the release
//! for a while before (an operator's install, undone since) would pass the install check
//! at once and then fail its window as "runs the old release". The heartbeat that showed
//! the release at the wave's start therefore does not count; a later one must (seen by
//! `host/benches/fleet.rs`, whose baseline installs precede its rollouts).
//!
//! A host of the current wave that vanishes (killed) is waited for until the
//! install deadline: when it restarts it boots its permanent release and converges to
//! the desired one, so the gate can still pass; after the deadline the gate fails. The
//! NATS server itself going away is not a host failing: readings are retried for up to
//! the install deadline, and past it the controller stops with
//! [`FleetError::RolloutInterrupted`] (naming the last failure and `--resume`) and leaves
//! the rollout running in the record, to be resumed — it never rolls back on an outage.

use super::membership::{HEARTBEAT_TTL, Health, HostStatus, list_hosts};
use super::releases::releases_bucket;
use super::state::{FleetState, Phase, Rollout, StateStore, WaveSize, plan_waves};
use super::{Fleet, FleetError};
use semver::Version;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often the controller looks at the hosts.
const POLL: Duration = Duration::from_millis(500);

/// What to roll out and how.
#[derive(Debug, Clone)]
pub struct RolloutOptions {
    /// The group.
    pub group: String,
    /// The release (ignored with `resume`).
    pub to: Version,
    /// Hosts of the first wave, alone.
    pub canary: usize,
    /// The size of the following waves.
    pub wave: WaveSize,
    /// At most this many hosts upgrade at once (caps the canary and wave sizes).
    pub max_unavailable: Option<usize>,
    /// How long a wave must stay healthy.
    pub health_window: Duration,
    /// How long a wave's hosts may take to install (and a vanished host to come back).
    pub install_deadline: Duration,
    /// Continue the running rollout instead of starting one.
    pub resume: bool,
}

/// Re-reads the record and applies `change` until the write wins; the state written.
pub async fn modify(
    store: &StateStore,
    change: impl Fn(&mut FleetState),
) -> Result<FleetState, FleetError> {
    loop {
        let (mut state, revision) = store.read().await?;
        change(&mut state);
        match store.write(&state, revision).await {
            Ok(_) => return Ok(state),
            Err(FleetError::Conflict) => continue,
            Err(error) => return Err(error),
        }
    }
}

/// As [`modify`], but only while the record still holds `rollout`, running and driven by
/// this controller; otherwise nothing is written and the answer is
/// [`FleetError::RolloutStopped`] saying what happened to it. The check and the write are
/// one compare-and-swap, so an operator's rollback or another controller's `--resume`
/// is never overwritten.
async fn modify_own(
    store: &StateStore,
    rollout: &Rollout,
    change: impl Fn(&mut FleetState),
) -> Result<FleetState, FleetError> {
    loop {
        let (mut state, revision) = store.read().await?;
        if let Some(error) = no_longer_own(rollout, &state) {
            return Err(error);
        }
        change(&mut state);
        match store.write(&state, revision).await {
            Ok(_) => return Ok(state),
            Err(FleetError::Conflict) => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Why `state` no longer lets this controller drive `rollout`, if it does not.
fn no_longer_own(rollout: &Rollout, state: &FleetState) -> Option<FleetError> {
    let why = match &state.rollout {
        None => "the fleet's record no longer holds it".to_owned(),
        Some(recorded) if !recorded.same_rollout(rollout) => format!(
            "the fleet's record holds another rollout (group {} to {})",
            recorded.group, recorded.to
        ),
        Some(recorded) if recorded.controller != rollout.controller => format!(
            "another controller ({}) took it over with --resume",
            recorded.controller
        ),
        Some(Rollout {
            phase: Phase::RolledBack { reason, .. },
            ..
        }) => format!("it was rolled back ({reason})"),
        Some(Rollout {
            phase: Phase::Succeeded,
            ..
        }) => "it already succeeded".to_owned(),
        Some(_) => return None,
    };
    Some(FleetError::RolloutStopped {
        group: rollout.group.clone(),
        to: rollout.to.clone(),
        why,
    })
}

/// Makes this controller the one driving the running rollout (`--resume`): the
/// rollout as recorded, with this controller's name.
async fn take_over(store: &StateStore) -> Result<Rollout, FleetError> {
    loop {
        let (mut state, revision) = store.read().await?;
        let Some(rollout) = state.rollout.as_mut().filter(|rollout| rollout.running()) else {
            return Err(FleetError::NothingToResume);
        };
        rollout.controller = Rollout::controller_id();
        let rollout = rollout.clone();
        match store.write(&state, revision).await {
            Ok(_) => return Ok(rollout),
            Err(FleetError::Conflict) => continue,
            Err(error) => return Err(error),
        }
    }
}

/// The live hosts by name.
async fn hosts_by_name(fleet: &Fleet) -> Result<BTreeMap<String, HostStatus>, FleetError> {
    Ok(list_hosts(fleet)
        .await?
        .into_iter()
        .map(|host| (host.host.clone(), host))
        .collect())
}

/// Runs (or resumes) a rollout to its end; `progress` hears each step.
pub async fn rollout(
    fleet: &Fleet,
    options: &RolloutOptions,
    progress: &(dyn Fn(String) + Send + Sync),
) -> Result<Rollout, FleetError> {
    let store = StateStore::open(fleet).await?;
    let mut rollout = if options.resume {
        take_over(&store).await?
    } else {
        let store_of_releases = releases_bucket(fleet).await?;
        if store_of_releases
            .info(format!("{}/release.toml", options.to))
            .await
            .is_err()
        {
            return Err(FleetError::NotPublished(options.to.clone()));
        }
        let hosts = fresh_hosts(fleet, &options.group).await?;
        if hosts.is_empty() {
            return Err(FleetError::NoHosts(options.group.clone()));
        }
        let names: Vec<String> = hosts.keys().cloned().collect();
        let previous = hosts
            .iter()
            .map(|(name, host)| (name.clone(), host.current.clone()))
            .collect();
        let rollout = Rollout::new(
            &options.group,
            options.to.clone(),
            previous,
            plan_waves(
                &names,
                options
                    .max_unavailable
                    .map_or(options.canary, |most| options.canary.min(most.max(1))),
                match options.max_unavailable {
                    Some(most) => WaveSize::Hosts(options.wave.hosts(names.len()).min(most.max(1))),
                    None => options.wave,
                },
            ),
            options.health_window,
        );
        store.begin(rollout.clone()).await?;
        progress(format!(
            "rollout of group {} to {} started: {} wave(s) {:?}",
            rollout.group,
            rollout.to,
            rollout.waves.len(),
            rollout.waves
        ));
        rollout
    };
    let window = Duration::from_millis(rollout.health_window_ms);
    while rollout.waves_done < rollout.waves.len() {
        let index = rollout.waves_done;
        let wave = rollout.waves[index].clone();
        let to = rollout.to.clone();
        modify_own(&store, &rollout, |state| {
            for host in &wave {
                state.desired.insert(host.clone(), to.clone());
            }
        })
        .await?;
        progress(format!(
            "wave {}: installing {to} on {}",
            index + 1,
            wave.join(", ")
        ));
        match gate(fleet, &wave, &to, window, options.install_deadline).await {
            Ok(()) => {}
            Err(GateFailure::Host(host, reason)) => {
                progress(format!(
                    "wave {}: {host} failed its gate: {reason}",
                    index + 1
                ));
                return Err(roll_back(
                    fleet,
                    &store,
                    &rollout,
                    &host,
                    &reason,
                    options.install_deadline,
                    progress,
                )
                .await);
            }
            Err(GateFailure::Unreachable(error)) => {
                return Err(FleetError::RolloutInterrupted {
                    group: rollout.group.clone(),
                    to: to.clone(),
                    patience_seconds: options.install_deadline.as_secs(),
                    source: Box::new(error),
                });
            }
        }
        let passed = index + 1;
        let state = modify_own(&store, &rollout, |state| {
            for host in &wave {
                state.permanent.insert(host.clone(), to.clone());
            }
            if let Some(running) = state.rollout.as_mut() {
                running.waves_done = passed;
            }
        })
        .await?;
        progress(format!(
            "wave {passed}: healthy; {to} made permanent on {}",
            wave.join(", ")
        ));
        rollout = state.rollout.unwrap_or(rollout);
    }
    let group = rollout.group.clone();
    let to = rollout.to.clone();
    let state = modify_own(&store, &rollout, |state| {
        state.group_release.insert(group.clone(), to.clone());
        if let Some(running) = state.rollout.as_mut() {
            running.phase = Phase::Succeeded;
        }
    })
    .await?;
    progress(format!("rollout of group {group} to {to} succeeded"));
    Ok(state.rollout.unwrap_or(rollout))
}

/// The live hosts of `group`, each from a heartbeat written after this call began and
/// while it was not installing, so the release recorded as a host's previous one (what a
/// rollback returns it to) is what it runs now, not what a heartbeat up to
/// [`super::membership::HEARTBEAT_INTERVAL`] old said. A host that sends no such heartbeat within
/// [`HEARTBEAT_TTL`] (it is dying; its entry is about to expire) keeps its last reading.
async fn fresh_hosts(
    fleet: &Fleet,
    group: &str,
) -> Result<BTreeMap<String, HostStatus>, FleetError> {
    let of_group = |hosts: BTreeMap<String, HostStatus>| -> BTreeMap<String, HostStatus> {
        hosts
            .into_iter()
            .filter(|(_, host)| host.group == group)
            .collect()
    };
    let first = of_group(hosts_by_name(fleet).await?);
    let deadline = Instant::now() + HEARTBEAT_TTL;
    let mut latest = first.clone();
    loop {
        let fresh = |name: &String, host: &HostStatus| {
            !host.installing
                && first
                    .get(name)
                    .is_none_or(|before| before.updated_ms != host.updated_ms)
        };
        if latest.iter().all(|(name, host)| fresh(name, host)) || Instant::now() > deadline {
            return Ok(latest);
        }
        tokio::time::sleep(POLL).await;
        let now = of_group(hosts_by_name(fleet).await?);
        // Hosts that joined meanwhile are taken as they are; hosts that left are dropped.
        latest = now;
    }
}

/// Why a gate did not pass.
enum GateFailure {
    /// A host failed it: (host, why).
    Host(String, String),
    /// The fleet could not be read for longer than the install deadline: nothing is
    /// decided, the rollout stays running (resumable).
    Unreachable(FleetError),
}

/// The live hosts by name, retried through a server outage of up to `patience`.
async fn hosts_patiently(
    fleet: &Fleet,
    patience: Duration,
) -> Result<BTreeMap<String, HostStatus>, GateFailure> {
    let end = Instant::now() + patience;
    loop {
        match hosts_by_name(fleet).await {
            Ok(hosts) => return Ok(hosts),
            Err(error) if Instant::now() > end => return Err(GateFailure::Unreachable(error)),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// The wave's hosts whose heartbeat, read as the wave began, already showed `to`: by
/// name, that heartbeat's `updated_ms`. Such a heartbeat may predate the wave (the host
/// ran `to` for a while before, and may have left it since), so it does not count.
fn stale_reports(
    hosts: &BTreeMap<String, HostStatus>,
    wave: &[String],
    to: &Version,
) -> BTreeMap<String, u64> {
    hosts
        .iter()
        .filter(|(name, host)| wave.contains(name) && host.current == *to)
        .map(|(name, host)| (name.clone(), host.updated_ms))
        .collect()
}

/// Whether `host`'s heartbeat shows it installed `to` for this wave: it runs `to`, is not
/// installing, and is not the heartbeat `stale` (its `updated_ms`, from
/// [`stale_reports`]) read as the wave began.
fn has_installed(host: &HostStatus, to: &Version, stale: Option<u64>) -> bool {
    host.current == *to && !host.installing && stale != Some(host.updated_ms)
}

/// The health gate of one wave.
async fn gate(
    fleet: &Fleet,
    wave: &[String],
    to: &Version,
    window: Duration,
    install_deadline: Duration,
) -> Result<(), GateFailure> {
    let failed = |name: &String, why: String| Err(GateFailure::Host(name.clone(), why));
    // Installed everywhere.
    let deadline = Instant::now() + install_deadline;
    let mut at_wave_start: Option<BTreeMap<String, u64>> = None;
    let baseline = loop {
        let hosts = hosts_patiently(fleet, install_deadline).await?;
        let at_wave_start = at_wave_start.get_or_insert_with(|| stale_reports(&hosts, wave, to));
        let mut waiting = None;
        let mut refused = Vec::new();
        for name in wave {
            match hosts.get(name) {
                Some(host) => {
                    if let Some(error) = &host.converge_error
                        && error.starts_with(&format!("{to}:"))
                    {
                        refused.push((name.clone(), error.clone()));
                    } else if !has_installed(host, to, at_wave_start.get(name).copied()) {
                        waiting = Some((name.clone(), format!("runs {}", host.current)));
                    }
                }
                None => waiting = Some((name.clone(), "has no heartbeat".to_owned())),
            }
        }
        // A wave fails on a refusal once every host has either installed or refused (so
        // each host's verdict is in before the fleet is rolled back), or at the deadline.
        if let Some((name, error)) = refused.first()
            && (waiting.is_none() || Instant::now() > deadline)
        {
            let others = if refused.len() > 1 {
                format!(" (and {} more host(s) refused it)", refused.len() - 1)
            } else {
                String::new()
            };
            return failed(name, format!("could not install: {error}{others}"));
        }
        let Some((name, why)) = waiting else {
            break hosts
                .into_iter()
                .filter(|(name, _)| wave.contains(name))
                // The count when the host began running the release: a crash between
                // the install and this reading counts too.
                .map(|(name, host)| {
                    let since = host.restarts_since_release.unwrap_or(0);
                    (name, host.restarts.saturating_sub(since))
                })
                .collect::<BTreeMap<String, u64>>();
        };
        if Instant::now() > deadline {
            return failed(
                &name,
                format!("did not install {to} within {install_deadline:?}: it {why}"),
            );
        }
        tokio::time::sleep(POLL).await;
    };
    // Healthy for the window: decided by a reading taken after the window's end.
    let end = Instant::now() + window;
    // A host whose entry is missing is waited for (its heartbeat may have lapsed while the
    // NATS server restarted), up to the install deadline; the window does not end while
    // one is missing. A host that was killed comes back on its permanent release and
    // fails the release check below.
    let mut missing_since: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let hosts = hosts_patiently(fleet, install_deadline).await?;
        for name in wave {
            let Some(host) = hosts.get(name) else {
                let since = *missing_since
                    .entry(name.clone())
                    .or_insert_with(Instant::now);
                if since.elapsed() > install_deadline {
                    return failed(
                        name,
                        format!(
                            "left the fleet during its health window (no heartbeat for {install_deadline:?})"
                        ),
                    );
                }
                continue;
            };
            missing_since.remove(name);
            if host.current != *to {
                return failed(name, format!("runs {} instead of {to}", host.current));
            }
            if host.health == Health::Unhealthy {
                return failed(name, format!("unhealthy: {}", host.unhealthy.join("; ")));
            }
            let before = baseline.get(name).copied().unwrap_or(host.restarts);
            if host.restarts > before {
                return failed(
                    name,
                    format!(
                        "{} restart(s) since it installed the release, in its health window",
                        host.restarts - before
                    ),
                );
            }
        }
        if Instant::now() >= end && missing_since.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sets every host of `rollout` back to its previous release and marks the rollout
/// rolled back; the error to return.
async fn roll_back(
    fleet: &Fleet,
    store: &StateStore,
    rollout: &Rollout,
    host: &str,
    reason: &str,
    deadline: Duration,
    progress: &(dyn Fn(String) + Send + Sync),
) -> FleetError {
    let result = set_back(
        store,
        rollout,
        Phase::RolledBack {
            host: host.to_owned(),
            reason: reason.to_owned(),
        },
        Guard::OwnRollout,
    )
    .await;
    let rolled_back: Vec<String> = rollout.previous.keys().cloned().collect();
    if let Err(error) = result {
        return error;
    }
    let settled = await_releases(fleet, &rollout.previous, deadline).await;
    progress(if settled {
        format!(
            "rolled back: {} on their previous release",
            rolled_back.join(", ")
        )
    } else {
        "rolled back in the desired state; not every host reports its previous release yet"
            .to_owned()
    });
    FleetError::RolloutFailed {
        group: rollout.group.clone(),
        to: rollout.to.clone(),
        host: host.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Who may set a rollout back.
enum Guard {
    /// Its controller, while it still drives it ([`modify_own`]).
    OwnRollout,
    /// The operator (`graft fleet rollback`), whatever the record says.
    Operator,
}

/// Writes every host of `rollout` back to its previous release (and permanent release).
async fn set_back(
    store: &StateStore,
    rollout: &Rollout,
    phase: Phase,
    guard: Guard,
) -> Result<FleetState, FleetError> {
    let change = |state: &mut FleetState| {
        for (host, previous) in &rollout.previous {
            state.desired.insert(host.clone(), previous.clone());
            state.permanent.insert(host.clone(), previous.clone());
        }
        state.group_release.remove(&rollout.group);
        if let Some(recorded) = state.rollout.as_mut() {
            recorded.phase = phase.clone();
        }
    };
    match guard {
        Guard::OwnRollout => modify_own(store, rollout, change).await,
        Guard::Operator => modify(store, change).await,
    }
}

/// Whether every live host named in `releases` reports its release within `deadline`.
async fn await_releases(
    fleet: &Fleet,
    releases: &BTreeMap<String, Version>,
    deadline: Duration,
) -> bool {
    let end = Instant::now() + deadline;
    loop {
        let hosts = hosts_by_name(fleet).await.unwrap_or_default();
        let settled = releases.iter().all(|(name, release)| {
            hosts
                .get(name)
                .is_none_or(|host| host.current == *release && !host.installing)
        });
        if settled {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `graft fleet rollback`: every host of the last rollout back to its previous release;
/// waits up to `deadline` for the live ones. The rollout rolled back.
pub async fn rollback(fleet: &Fleet, deadline: Duration) -> Result<(Rollout, bool), FleetError> {
    let store = StateStore::open(fleet).await?;
    let (state, _) = store.read().await?;
    let Some(rollout) = state.rollout else {
        return Err(FleetError::NothingToRollBack);
    };
    set_back(
        &store,
        &rollout,
        Phase::RolledBack {
            host: "-".to_owned(),
            reason: "rolled back by the operator".to_owned(),
        },
        Guard::Operator,
    )
    .await?;
    let settled = await_releases(fleet, &rollout.previous, deadline).await;
    Ok((rollout, settled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Rollout {
        Rollout::new(
            "web",
            Version::new(1, 1, 0),
            BTreeMap::from([("host-a".to_owned(), Version::new(1, 0, 0))]),
            vec![vec!["host-a".to_owned()]],
            Duration::from_secs(1),
        )
    }

    fn holding(rollout: Option<Rollout>) -> FleetState {
        FleetState {
            rollout,
            ..FleetState::default()
        }
    }

    fn why(rollout: &Rollout, state: &FleetState) -> Option<String> {
        no_longer_own(rollout, state).map(|error| error.to_string())
    }

    #[test]
    fn a_controller_drives_only_its_own_running_rollout() {
        let mine = running();
        assert_eq!(why(&mine, &holding(Some(mine.clone()))), None);

        let mut taken = mine.clone();
        taken.controller = "elsewhere:1:2".to_owned();
        let text = why(&mine, &holding(Some(taken))).unwrap();
        assert!(
            text.contains("elsewhere:1:2") && text.contains("--resume"),
            "{text}"
        );

        let mut rolled_back = mine.clone();
        rolled_back.phase = Phase::RolledBack {
            host: "-".to_owned(),
            reason: "rolled back by the operator".to_owned(),
        };
        let text = why(&mine, &holding(Some(rolled_back))).unwrap();
        assert!(text.contains("rolled back by the operator"), "{text}");

        let mut other = mine.clone();
        other.to = Version::new(2, 0, 0);
        let text = why(&mine, &holding(Some(other))).unwrap();
        assert!(text.contains("another rollout"), "{text}");

        assert!(why(&mine, &holding(None)).is_some());
    }

    #[test]
    fn controllers_have_distinct_names() {
        let first = Rollout::controller_id();
        std::thread::sleep(Duration::from_millis(2));
        assert_ne!(first, Rollout::controller_id());
        assert!(first.contains(&std::process::id().to_string()), "{first}");
    }

    use crate::fleet::membership::Health;

    fn status(current: Version, installing: bool, updated_ms: u64) -> HostStatus {
        HostStatus {
            host: "a".into(),
            group: "web".into(),
            current,
            permanent: None,
            releases: Vec::new(),
            health: Health::Healthy,
            unhealthy: Vec::new(),
            restarts: 0,
            restarts_since_release: None,
            installing,
            converge_error: None,
            updated_ms,
            globals: Vec::new(),
            singletons: Vec::new(),
        }
    }

    #[test]
    fn a_heartbeat_that_showed_the_release_as_the_wave_began_does_not_count() {
        let to = Version::new(1, 1, 0);
        let old = Version::new(1, 0, 0);
        let wave = vec!["a".to_owned(), "b".to_owned()];
        // At the wave's start, a still shows 1.1.0 from an earlier install; b runs 1.0.0.
        let start = BTreeMap::from([
            ("a".to_owned(), status(to.clone(), false, 10)),
            ("b".to_owned(), status(old.clone(), false, 11)),
            ("c".to_owned(), status(to.clone(), false, 12)),
        ]);
        let stale = stale_reports(&start, &wave, &to);
        assert_eq!(stale, BTreeMap::from([("a".to_owned(), 10)]));
        // That same heartbeat of a does not count; a newer one that shows 1.1.0 does.
        assert!(!has_installed(&start["a"], &to, stale.get("a").copied()));
        assert!(has_installed(
            &status(to.clone(), false, 20),
            &to,
            stale.get("a").copied()
        ));
        // A newer one that shows it back on 1.0.0 (its earlier install undone) does not.
        assert!(!has_installed(
            &status(old.clone(), false, 20),
            &to,
            stale.get("a").copied()
        ));
        // b counts once it runs 1.1.0 and is no longer installing.
        assert!(!has_installed(&status(to.clone(), true, 21), &to, None));
        assert!(has_installed(&status(to.clone(), false, 22), &to, None));
    }
}
