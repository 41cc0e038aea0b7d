//! The install transaction: plan, load and verify every library, run the instructions
//! written before the first update (before the suspend, on the old code), the atomic
//! update batch ([`super::batch`]), the commit's bookkeeping (the table's limits, the
//! workers, the history and the record's *old*), then the instructions written after the
//! last update (on the new code). Also `hot_swap`, the batch for one plugin's fresh build.
//!
//! The libraries load on the blocking pool (reading, hashing, copying and `dlopen` block),
//! before any actor is suspended; meanwhile the install walks the tree for the actors to
//! update, when no instruction runs before the suspend, and the commit reuses that walk
//! unless an actor started since.
//!
//! While metrics are on, an install, rollback or hot swap that began (not one refused at
//! once) is recorded ([`crate::metrics::UpgradeRecorder`]: its phases from the progress
//! reports, its outcome, counters and histograms).
//!
//! Invariants: nothing runs before every library of the target is loaded and verified; a
//! failure before the batch leaves the running release current (the instructions that ran
//! are not undone, as OTP does not undo an `apply`); a failure after the commit leaves the
//! target current and is reported as [`ReleaseError::AfterCommit`].

use super::*;
use crate::metrics::{UpgradeKind, UpgradeRecorder, UpgradeSummary};

/// What an install is for: a named release, or going back (which undoes the last install).
#[derive(Clone, Copy)]
pub(super) enum InstallTarget<'a> {
    Version(&'a Version),
    Previous,
}

/// What a finished install, rollback or hot swap did, for its upgrade record.
fn summary(report: &InstallReport) -> UpgradeSummary {
    UpgradeSummary {
        actors_migrated: report.actors_migrated as u64,
        actors_suspended: report.actors_suspended as u64,
        longest_pause: report.longest_pause,
    }
}

impl ReleaseHandler {
    /// Installs `target` (a version, or the one before the last install): the whole
    /// transaction, in the order the module documentation gives; while metrics are on,
    /// timed and recorded (an [`UpgradeRecord`](crate::metrics::UpgradeRecord), the
    /// upgrade counters and histograms), unless refused before it began.
    pub(super) async fn install_target(
        &self,
        target: InstallTarget<'_>,
        progress: Option<ProgressFn>,
    ) -> Result<InstallReport, ReleaseError> {
        let kind = match target {
            InstallTarget::Version(_) => UpgradeKind::Install,
            InstallTarget::Previous => UpgradeKind::Rollback,
        };
        let Some(recorder) = UpgradeRecorder::begin(kind) else {
            return self.install_steps(target, progress, None).await;
        };
        let result = self.install_steps(target, progress, Some(&recorder)).await;
        match &result {
            Ok(report) => recorder.finish(Some(summary(report)), None, true),
            // Refused before anything began: no upgrade to record.
            Err(
                ReleaseError::InstallInProgress
                | ReleaseError::AlreadyCurrent(_)
                | ReleaseError::NothingToRollBack { .. },
            ) => {}
            Err(error) => recorder.finish(
                None,
                Some(error.to_string()),
                matches!(error, ReleaseError::AfterCommit { .. }),
            ),
        }
        result
    }

    /// The install transaction itself; `recorder` hears of its phases and endpoints.
    async fn install_steps(
        &self,
        target: InstallTarget<'_>,
        progress: Option<ProgressFn>,
        recorder: Option<&UpgradeRecorder>,
    ) -> Result<InstallReport, ReleaseError> {
        let started = Instant::now();
        let report = |phase: InstallPhase| {
            if let Some(recorder) = recorder {
                recorder.phase(&phase);
            }
            if let Some(progress) = &progress {
                progress(phase);
            }
        };
        let _installing = Installing::begin(&self.installing)?;
        let mut state = self.lock_state().await;
        let from = state.current.version.clone();
        let install_target = target;
        let target =
            &match target {
                InstallTarget::Version(version) => version.clone(),
                InstallTarget::Previous => state.history.last().cloned().ok_or_else(|| {
                    ReleaseError::NothingToRollBack {
                        current: from.clone(),
                    }
                })?,
            };
        if *target == from {
            return Err(ReleaseError::AlreadyCurrent(from));
        }
        if let Some(recorder) = recorder {
            recorder.set_endpoints(from.to_string(), target.to_string());
        }
        let target_release = Self::read_release(&self.root, target)?;
        let plan = plan_between(&state.current, &target_release)?;
        let direction = plan.direction;

        // Phase 1: load and verify every library of the target. Reading, hashing, copying
        // and `dlopen` block, so they run on the blocking pool, before any actor is
        // suspended; meanwhile this task finds the actors to update, unless instructions
        // run before the suspend (they may start or stop some, and must not run before
        // every library is loaded).
        let current_plugins = lock(&self.table.current).clone();
        report(InstallPhase::Loading(target_release.manifest.plugins.len()));
        let loading = {
            let (loader, workers) = (Arc::clone(&self.loader), Arc::clone(&self.workers));
            let (release, current) = (target_release.clone(), current_plugins.clone());
            tokio::task::spawn_blocking(move || {
                Self::load_plugins(&loader, &workers, &release, &current)
            })
        };
        let walked = if plan.before_suspend.is_empty() {
            Some(Walk::of(&self.runtime, &state.root_supervisor).await)
        } else {
            None
        };
        let target_plugins = loading
            .await
            .unwrap_or_else(|error| match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Err(ReleaseError::LoadAbandoned),
            })
            .inspect_err(|_| settle_workers(&self.workers, &state.current))?;

        let updates: Vec<PlannedUpdate> = plan
            .updates
            .iter()
            .filter_map(|step| match &step.instruction {
                Instruction::Update {
                    plugin,
                    mode,
                    extra,
                    suspend_timeout_ms,
                    purge,
                    ..
                } => Some(PlannedUpdate {
                    plugin: plugin.clone(),
                    target: target_plugins[plugin].clone(),
                    switches_isolation: current_plugins
                        .get(plugin)
                        .is_some_and(|old| old.isolation() != target_plugins[plugin].isolation()),
                    mode: *mode,
                    extra: encode_value(extra.as_ref()).unwrap_or_default(),
                    suspend_timeout: Duration::from_millis(*suspend_timeout_ms),
                    purge: *purge,
                    code_change_from: None,
                }),
                _ => None,
            })
            .collect();
        let companions: HashSet<String> = plan
            .updates
            .iter()
            .flat_map(|step| match &step.instruction {
                Instruction::Update { suspend_with, .. } => suspend_with.clone(),
                _ => Vec::new(),
            })
            .collect();

        // Before the suspend: the instructions written before the first update, on the
        // running release's code (children they start run the old versions and are
        // migrated with the rest).
        let total_instructions = plan.len();
        for step in &plan.before_suspend {
            report(InstallPhase::Instruction {
                index: step.index,
                total: total_instructions,
            });
            if let Err(message) = self
                .run_instruction(&target_release.manifest, &step.instruction)
                .await
            {
                settle_workers(&self.workers, &state.current);
                return Err(ReleaseError::BeforeSuspend {
                    current: from.clone(),
                    index: step.index,
                    instruction: instruction_name(&step.instruction),
                    message,
                });
            }
        }

        let swapped = self
            .swap(
                &mut state,
                &updates,
                &companions,
                direction,
                &target_plugins,
                walked,
                &report,
            )
            .await
            .inspect_err(|error| {
                tracing::warn!(from = %from, to = %target, "install rolled back: {error}");
                settle_workers(&self.workers, &state.current);
            })?;
        // Plugins the target release does not have leave the table.
        lock(&self.table.current).retain(|name, _| target_plugins.contains_key(name));
        // Workers follow the target: its memory limits; none for plugins it runs in the
        // host (a worker stops when its last version is let go).
        settle_workers(&self.workers, &target_release);
        // The target's callback deadlines and mailbox bounds apply to new actors (restarts
        // included: their factory reads the table) and running ones alike.
        self.table.set_limits(&target_release);
        // The batch's walk still lists every worker unless an actor started since.
        let walk = if swapped.walk.outdated(&self.runtime) {
            Walk::of(&self.runtime, &state.root_supervisor).await
        } else {
            swapped.walk
        };
        self.table.apply_limits(&walk.workers);
        let previous = std::mem::replace(&mut state.current, target_release);
        match install_target {
            InstallTarget::Version(_) => state.history.push(previous.version.clone()),
            InstallTarget::Previous => {
                state.history.pop();
            }
        }
        if state.record.permanent.as_ref() != Some(&previous.version) {
            state.record.old.insert(previous.version.clone());
        }
        state.record.old.remove(target);
        // After the commit: the instructions written after the last update, on the new code.
        for step in &plan.after_commit {
            report(InstallPhase::Instruction {
                index: step.index,
                total: total_instructions,
            });
            self.run_instruction(&state.current.manifest, &step.instruction)
                .await
                .map_err(|message| ReleaseError::AfterCommit {
                    version: target.clone(),
                    index: step.index,
                    instruction: instruction_name(&step.instruction),
                    message,
                })?;
        }
        // Let go of the old versions (the old table holds them) before reporting what
        // stays resident.
        drop(current_plugins);
        let report = InstallReport {
            from: from.clone(),
            to: target.clone(),
            actors_migrated: swapped.migrated,
            actors_suspended: swapped.suspended,
            longest_pause: swapped.longest_pause,
            total: started.elapsed(),
            resident: Self::resident_with(&state.loaded),
            warnings: plan.warnings.clone(),
        };
        for warning in &report.warnings {
            tracing::warn!(child = %warning.child, "{}", warning.message);
        }
        tracing::info!(
            from = %from,
            to = %target,
            migrated = report.actors_migrated,
            longest_pause_us = report.longest_pause.as_micros() as u64,
            "release installed"
        );
        Ok(report)
    }

    /// Hot-swaps every actor of `plugin` to the library at `path` (a fresh build of the
    /// same plugin: `graft dev`), keeping their state through the plugin's `code_change`
    /// (by default: decode the old bytes). A build that fails to load or migrate is
    /// rejected and the old code keeps running.
    ///
    /// `code_change` is told it upgrades from the running version with the build metadata
    /// `dev.<running_build>` (`0.1.0+dev.1` for the build a dev host booted), so a plugin
    /// can tell a dev rebuild from a real upgrade: `from.build.starts_with("dev.")`. Build
    /// metadata, not a pre-release, so `from < Version::new(0, 1, 0)` stays false.
    ///
    /// While metrics are on, a swap that began is recorded as an upgrade of kind
    /// [`UpgradeKind::HotSwap`] (its phases, pause, and messages lost).
    pub async fn hot_swap(
        &self,
        plugin: &str,
        path: &Path,
        running_build: u64,
    ) -> Result<InstallReport, ReleaseError> {
        let Some(recorder) = UpgradeRecorder::begin(UpgradeKind::HotSwap) else {
            return self.hot_swap_steps(plugin, path, running_build, None).await;
        };
        let result = self
            .hot_swap_steps(plugin, path, running_build, Some(&recorder))
            .await;
        match &result {
            Ok(report) => recorder.finish(Some(summary(report)), None, true),
            // Refused before anything began: no swap to record.
            Err(ReleaseError::InstallInProgress) => {}
            Err(error) => recorder.finish(None, Some(error.to_string()), false),
        }
        result
    }

    /// The hot swap itself; `recorder` hears of its phases and endpoints.
    async fn hot_swap_steps(
        &self,
        plugin: &str,
        path: &Path,
        running_build: u64,
        recorder: Option<&UpgradeRecorder>,
    ) -> Result<InstallReport, ReleaseError> {
        let started = Instant::now();
        let _installing = Installing::begin(&self.installing)?;
        let mut state = self.lock_state().await;
        if let Some(recorder) = recorder {
            recorder.phase(&InstallPhase::Loading(1));
        }
        let manifest = state.current.directory.join("release.toml");
        let expect = Expectations {
            name: Some(plugin.to_owned()),
            ..Expectations::default()
        };
        let current = self.table.get(plugin);
        // The new build runs where the current version runs.
        let loaded = match &current {
            Some(PluginVersion::Isolated(running)) => PluginVersion::Isolated(
                IsolatedPlugin::load(running.worker(), path, &expect).map_err(|source| {
                    ReleaseError::Isolation {
                        manifest,
                        plugin: plugin.to_owned(),
                        source: Box::new(source),
                    }
                })?,
            ),
            _ => PluginVersion::InProcess(self.loader.load(path, &expect).map_err(|source| {
                ReleaseError::Load {
                    manifest,
                    plugin: plugin.to_owned(),
                    source: Box::new(source),
                }
            })?),
        };
        let mut from = current
            .map(|current| current.version().clone())
            .unwrap_or_else(|| loaded.version().clone());
        // `dev.N` is valid build metadata for every N.
        from.build = semver::BuildMetadata::new(&format!("dev.{running_build}"))
            .unwrap_or(semver::BuildMetadata::EMPTY);
        if let Some(recorder) = recorder {
            recorder.set_endpoints(
                format!("{plugin}@{from}"),
                format!("{plugin}@{}", loaded.version()),
            );
        }
        let update = PlannedUpdate {
            plugin: plugin.to_owned(),
            target: loaded.clone(),
            switches_isolation: false,
            mode: UpdateMode::Advanced,
            extra: encode_value(None).unwrap_or_default(),
            suspend_timeout: Duration::from_secs(5),
            purge: PurgePolicy::Soft,
            code_change_from: Some(from.clone()),
        };
        let targets = HashMap::from([(plugin.to_owned(), loaded.clone())]);
        let swapped = self
            .swap(
                &mut state,
                &[update],
                &HashSet::new(),
                Direction::Upgrade,
                &targets,
                None,
                &|phase| {
                    if let Some(recorder) = recorder {
                        recorder.phase(&phase);
                    }
                },
            )
            .await?;
        drop(targets);
        Ok(InstallReport {
            from,
            to: loaded.version().clone(),
            actors_migrated: swapped.migrated,
            actors_suspended: swapped.suspended,
            longest_pause: swapped.longest_pause,
            total: started.elapsed(),
            resident: Self::resident_with(&state.loaded),
            warnings: Vec::new(),
        })
    }

    /// Runs one instruction other than `update`; children and supervisor specs come from
    /// the target release's `manifest`.
    pub(super) async fn run_instruction(
        &self,
        manifest: &Manifest,
        instruction: &Instruction,
    ) -> Result<(), String> {
        let supervisor_of = |id: &str| {
            self.runtime
                .supervisor(id)
                .ok_or_else(|| format!("supervisor {id:?} is not running"))
        };
        match instruction {
            Instruction::Update { .. } => Ok(()),
            Instruction::AddChild { supervisor, id } => {
                let (_, child) = manifest
                    .find_child(id)
                    .ok_or_else(|| format!("no child {id:?}"))?;
                let spec = child_spec(child, &self.table)?;
                supervisor_of(supervisor)?
                    .start_child(spec)
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
            Instruction::RemoveChild { supervisor, id } => {
                let supervisor = supervisor_of(supervisor)?;
                supervisor
                    .terminate_child(ChildKey::Id(id.clone()))
                    .await
                    .map_err(|error| error.to_string())?;
                match supervisor.delete_child(id).await {
                    Ok(()) | Err(SupervisorError::NotFound(_)) => Ok(()),
                    Err(error) => Err(error.to_string()),
                }
            }
            Instruction::RestartChild { supervisor, id } => {
                let supervisor = supervisor_of(supervisor)?;
                let (_, child) = manifest
                    .find_child(id)
                    .ok_or_else(|| format!("no child {id:?}"))?;
                let spec = child_spec(child, &self.table)?;
                supervisor
                    .terminate_child(ChildKey::Id(id.clone()))
                    .await
                    .map_err(|error| error.to_string())?;
                let _ = supervisor.delete_child(id).await;
                supervisor
                    .start_child(spec)
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
            Instruction::UpdateSupervisor { supervisor } => {
                let target = manifest
                    .find_supervisor(supervisor)
                    .ok_or_else(|| format!("no supervisor {supervisor:?}"))?;
                let spec = supervisor_spec(&target, supervisor, &self.table)?;
                supervisor_of(supervisor)?
                    .update(tree::supervisor_update(spec))
                    .await
                    .map_err(|error| error.to_string())
            }
            Instruction::Apply {
                actor,
                message,
                timeout_ms,
            } => {
                let request = encode_value(Some(message))?;
                self.runtime
                    .call(actor, request, Duration::from_millis(*timeout_ms))
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            }
        }
    }
}
