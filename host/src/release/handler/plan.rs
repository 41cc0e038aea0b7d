//! Finding and checking an install's plan before anything runs: the script (the target's
//! `[[upgrade]]` from the running version, or the running release's `[[downgrade]]` to the
//! target) and each instruction against both releases' trees and plugins.

use super::*;

impl ReleaseHandler {
    pub(super) fn find_script(
        &self,
        current: &AssembledRelease,
        target: &AssembledRelease,
    ) -> Result<(Direction, PathBuf, Vec<Instruction>), ReleaseError> {
        if target.version > current.version {
            let manifest = target.directory.join("release.toml");
            let section = target
                .manifest
                .upgrade
                .iter()
                .find(|section| section.from.matches(&current.version))
                .ok_or_else(|| ReleaseError::NoPath {
                    manifest: manifest.clone(),
                    direction: "upgrade",
                    from: current.version.to_string(),
                    to: target.version.to_string(),
                    expected: format!(
                        "expected an [[upgrade]] whose `from` matches {}; found {}",
                        current.version,
                        describe_list(
                            target
                                .manifest
                                .upgrade
                                .iter()
                                .map(|section| section.from.to_string())
                        )
                    ),
                })?;
            Ok((Direction::Up, manifest, section.instructions.clone()))
        } else {
            let manifest = current.directory.join("release.toml");
            let section = current
                .manifest
                .downgrade
                .iter()
                .find(|section| section.to == target.version)
                .ok_or_else(|| ReleaseError::NoPath {
                    manifest: manifest.clone(),
                    direction: "downgrade",
                    from: current.version.to_string(),
                    to: target.version.to_string(),
                    expected: format!(
                        "expected a [[downgrade]] with `to = \"{}\"`; found {}",
                        target.version,
                        describe_list(
                            current
                                .manifest
                                .downgrade
                                .iter()
                                .map(|section| section.to.to_string())
                        )
                    ),
                })?;
            Ok((Direction::Down, manifest, section.instructions.clone()))
        }
    }

    /// Checks a script against both releases before anything runs.
    pub(super) fn check_plan(
        &self,
        current: &AssembledRelease,
        target: &AssembledRelease,
        manifest: &Path,
        instructions: &[Instruction],
    ) -> Result<(), ReleaseError> {
        let plan_error = |index: usize, field: &str, message: String| ReleaseError::Plan {
            manifest: manifest.to_owned(),
            field: format!("instructions[{index}].{field}"),
            message,
        };
        let (old, new) = (&current.manifest, &target.manifest);
        let mut updated = HashSet::new();
        for (index, instruction) in instructions.iter().enumerate() {
            match instruction {
                Instruction::Update {
                    plugin,
                    suspend_with,
                    ..
                } => {
                    let (Some(before), Some(after)) =
                        (old.plugins.get(plugin), new.plugins.get(plugin))
                    else {
                        return Err(plan_error(
                            index,
                            "plugin",
                            format!(
                                "unknown plugin {plugin:?}: expected a plugin of both {} and {}",
                                current.version, target.version
                            ),
                        ));
                    };
                    if before.version == after.version && before.isolation() == after.isolation() {
                        return Err(plan_error(
                            index,
                            "plugin",
                            format!(
                                "plugin {plugin:?} is {} in both releases (isolation {} in both); expected a version change or an isolation change to update",
                                after.version,
                                isolation_name(after.isolation())
                            ),
                        ));
                    }
                    if !updated.insert(plugin.clone()) {
                        return Err(plan_error(
                            index,
                            "plugin",
                            format!("plugin {plugin:?} is updated twice"),
                        ));
                    }
                    for companion in suspend_with {
                        if !old.plugins.contains_key(companion) {
                            return Err(plan_error(
                                index,
                                "suspend_with",
                                format!(
                                    "unknown plugin {companion:?} in release {}",
                                    current.version
                                ),
                            ));
                        }
                    }
                }
                Instruction::AddChild { supervisor, id } => {
                    check_child(new, supervisor, id, &target.version)
                        .map_err(|message| plan_error(index, "id", message))?;
                    if old.find_child(id).is_some() {
                        return Err(plan_error(
                            index,
                            "id",
                            format!("child {id:?} already exists in {}", current.version),
                        ));
                    }
                }
                Instruction::RemoveChild { supervisor, id } => {
                    check_child(old, supervisor, id, &current.version)
                        .map_err(|message| plan_error(index, "id", message))?;
                }
                Instruction::RestartChild { supervisor, id } => {
                    check_child(old, supervisor, id, &current.version)
                        .map_err(|message| plan_error(index, "id", message))?;
                    check_child(new, supervisor, id, &target.version)
                        .map_err(|message| plan_error(index, "id", message))?;
                }
                Instruction::UpdateSupervisor { supervisor } => {
                    for (manifest, version) in [(old, &current.version), (new, &target.version)] {
                        if manifest.find_supervisor(supervisor).is_none() {
                            return Err(plan_error(
                                index,
                                "supervisor",
                                format!("unknown supervisor {supervisor:?} in release {version}"),
                            ));
                        }
                    }
                }
                Instruction::Apply { .. } => {}
            }
        }
        for (plugin, entry) in &new.plugins {
            if let Some(before) = old.plugins.get(plugin)
                && (before.version != entry.version || before.isolation() != entry.isolation())
                && !updated.contains(plugin)
            {
                let change = if before.version != entry.version {
                    format!("from {} to {}", before.version, entry.version)
                } else {
                    format!(
                        "from isolation {} to {}",
                        isolation_name(before.isolation()),
                        isolation_name(entry.isolation())
                    )
                };
                return Err(ReleaseError::Plan {
                    manifest: manifest.to_owned(),
                    field: "instructions".to_owned(),
                    message: format!(
                        "plugin {plugin:?} changes {change} but the script has no `update` for it"
                    ),
                });
            }
        }
        Ok(())
    }
}

pub(super) fn instruction_name(instruction: &Instruction) -> &'static str {
    match instruction {
        Instruction::Update { .. } => "update",
        Instruction::AddChild { .. } => "add_child",
        Instruction::RemoveChild { .. } => "remove_child",
        Instruction::RestartChild { .. } => "restart_child",
        Instruction::UpdateSupervisor { .. } => "update_supervisor",
        Instruction::Apply { .. } => "apply",
    }
}

pub(super) fn describe_list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

pub(super) fn check_child(
    manifest: &Manifest,
    supervisor: &str,
    id: &str,
    version: &Version,
) -> Result<(), String> {
    match manifest.find_child(id) {
        Some((parent, _)) if parent == supervisor => Ok(()),
        Some((parent, _)) => Err(format!(
            "child {id:?} of release {version} is under supervisor {parent:?}, not {supervisor:?}"
        )),
        None => Err(format!(
            "unknown child {id:?}: release {version} has no such child"
        )),
    }
}
