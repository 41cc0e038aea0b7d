//! An install's plan, as a plain value: which script runs (the target's `[[upgrade]]`
//! whose `from` matches the running version, or the running release's `[[downgrade]]` to
//! the target), each instruction checked against both releases' manifests, and the order
//! it runs in. Nothing here loads a plugin or touches a running host, so every check is
//! tested on manifest text alone; the release handler runs the plan
//! ([`super::handler::ReleaseHandler::install`]) and shows it
//! ([`super::handler::ReleaseHandler::plan`], `graft install --dry-run`).
//!
//! # The order a script runs in
//!
//! A script runs in the order written, in three phases:
//! 1. **Before the suspend**: the instructions written before the first `update` run one by
//!    one on the running release's code (its plugin table; children they start run the
//!    old versions and are migrated with the rest).
//! 2. **The atomic update batch**: every `update` at once — suspend every affected actor,
//!    migrate them all, then commit (the plugin table switches) or roll every one back.
//! 3. **After the commit**: the instructions written after the last `update` run one by
//!    one on the target release's code.
//!
//! Invariants:
//! - Updates are one batch, so the `update`s of a script are contiguous: any other
//!   instruction written between two of them is refused, naming its index and saying why.
//! - A script with no `update` has no batch: all its instructions run after the commit (the
//!   target's plugin table, so children of plugins new in the target can start).
//! - An instruction before the batch that starts children (`add_child`, `restart_child`,
//!   `update_supervisor`) may only start plugins the running release has: the target's
//!   new plugins are not loaded into the table until the commit.
//! - Every plugin whose version or isolation changes has exactly one `update`.
//!
//! A script that runs but probably does not do what its author meant gets a warning, not a
//! refusal ([`PlanWarning`]): an `update` migrates the running actors of a child whose
//! `args` differ between the releases, but the supervisor keeps the running release's
//! child spec unless the script has `update_supervisor` (or restarts or removes the child),
//! so the child's next restart would start with the older release's `args`.

use super::{Instruction, Isolation, Manifest, UpdateMode};
use semver::Version;
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Which way an install goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// To a newer release: the target's `[[upgrade]]` script.
    Upgrade,
    /// To an older release: the running release's `[[downgrade]]` script.
    Downgrade,
}

impl Direction {
    /// `upgrade` or `downgrade`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Upgrade => "upgrade",
            Direction::Downgrade => "downgrade",
        }
    }
}

/// One instruction of the script, with its index as written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Its index in the script (`instructions[index]`).
    pub index: usize,
    /// The instruction.
    pub instruction: Instruction,
}

/// A checked script, in the order it runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The running release.
    pub from: Version,
    /// The target.
    pub to: Version,
    /// Upgrade or downgrade.
    pub direction: Direction,
    /// The manifest holding the script.
    pub manifest: PathBuf,
    /// Run first, one by one, on the running release's code.
    pub before_suspend: Vec<Step>,
    /// The `update`s: one atomic batch (suspend, migrate, commit or roll back).
    pub updates: Vec<Step>,
    /// Run last, one by one, on the target release's code.
    pub after_commit: Vec<Step>,
    /// What the script does that its author probably did not mean; it runs regardless.
    pub warnings: Vec<PlanWarning>,
}

/// A script that runs but leaves something its author probably did not mean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanWarning {
    /// The child concerned.
    pub child: String,
    /// Its supervisor in the target release.
    pub supervisor: String,
    /// What will happen, and what to write instead.
    pub message: String,
}

impl fmt::Display for PlanWarning {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "warning: {}", self.message)
    }
}

/// A script that cannot run, naming the manifest and the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PlanError {
    /// No script leads from the running version to the target.
    #[error("manifest {manifest}: no {direction} path from {from} to {to} ({expected})")]
    NoPath {
        /// The manifest searched.
        manifest: PathBuf,
        /// `upgrade` or `downgrade`.
        direction: &'static str,
        /// The running version.
        from: String,
        /// The target.
        to: String,
        /// What was looked for.
        expected: String,
    },
    /// The script does not fit the releases.
    #[error("manifest {manifest}: {field}: {message}")]
    Invalid {
        /// The manifest holding the script.
        manifest: PathBuf,
        /// The instruction's field (`instructions[2].op`).
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

/// A release as the plan sees it: its manifest and where that was read from (for
/// messages).
#[derive(Debug, Clone, Copy)]
pub struct PlanRelease<'a> {
    /// The manifest.
    pub manifest: &'a Manifest,
    /// Its path.
    pub path: &'a Path,
}

impl PlanRelease<'_> {
    fn version(&self) -> &Version {
        &self.manifest.release.version
    }
}

impl Plan {
    /// Finds the script from `current` to `target` and checks it against both.
    pub fn new(current: PlanRelease<'_>, target: PlanRelease<'_>) -> Result<Plan, PlanError> {
        let (direction, manifest, instructions) = find_script(current, target)?;
        check_instructions(current, target, &manifest, &instructions)?;
        let warnings = stale_args_warnings(current, target, &instructions);
        let mut plan = Plan {
            from: current.version().clone(),
            to: target.version().clone(),
            direction,
            manifest,
            before_suspend: Vec::new(),
            updates: Vec::new(),
            after_commit: Vec::new(),
            warnings,
        };
        let first_update = instructions.iter().position(is_update);
        let last_update = instructions.iter().rposition(is_update);
        for (index, instruction) in instructions.into_iter().enumerate() {
            let phase = match (first_update, last_update) {
                (Some(first), _) if index < first => &mut plan.before_suspend,
                (Some(_), Some(last)) if index <= last => &mut plan.updates,
                _ => &mut plan.after_commit,
            };
            phase.push(Step { index, instruction });
        }
        Ok(plan)
    }

    /// How many instructions the script has.
    pub fn len(&self) -> usize {
        self.before_suspend.len() + self.updates.len() + self.after_commit.len()
    }

    /// Whether the script is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Prints the plan in the order it runs, one phase a paragraph.
impl fmt::Display for Plan {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "{} {} -> {} (script in {}); nothing has changed",
            self.direction.name(),
            self.from,
            self.to,
            self.manifest.display()
        )?;
        let phases = [
            (
                "1. before the suspend, one by one on the running code",
                &self.before_suspend,
            ),
            (
                "2. atomic update batch: suspend all, migrate all, then commit or roll back all",
                &self.updates,
            ),
            (
                "3. after the commit, one by one on the new code",
                &self.after_commit,
            ),
        ];
        for (title, steps) in phases {
            writeln!(formatter, "{title}:")?;
            if steps.is_empty() {
                writeln!(formatter, "   (nothing)")?;
            }
            for step in steps {
                writeln!(
                    formatter,
                    "   [{}] {}",
                    step.index,
                    describe(&step.instruction)
                )?;
            }
        }
        for warning in &self.warnings {
            writeln!(formatter, "{warning}")?;
        }
        Ok(())
    }
}

/// Children whose `args` change between the releases, whose plugin the script updates,
/// and whose supervisor keeps the running release's spec: nothing in the script gives the
/// supervisor the target's spec (`update_supervisor`) or replaces the child
/// (`restart_child`, `remove_child`).
fn stale_args_warnings(
    current: PlanRelease<'_>,
    target: PlanRelease<'_>,
    instructions: &[Instruction],
) -> Vec<PlanWarning> {
    fn walk<'a>(
        parent: &'a str,
        children: &'a [super::ChildManifest],
        found: &mut Vec<(&'a str, &'a super::ChildManifest)>,
    ) {
        for child in children {
            found.push((parent, child));
            walk(
                &child.id,
                child.children.as_deref().unwrap_or_default(),
                found,
            );
        }
    }
    let (from, to) = (current.version(), target.version());
    let updated: HashSet<&str> = instructions
        .iter()
        .filter_map(|instruction| match instruction {
            Instruction::Update { plugin, .. } => Some(plugin.as_str()),
            _ => None,
        })
        .collect();
    let covered = |supervisor: &str, child: &str| {
        instructions.iter().any(|instruction| match instruction {
            Instruction::UpdateSupervisor { supervisor: named } => named == supervisor,
            Instruction::RestartChild { id, .. } | Instruction::RemoveChild { id, .. } => {
                id == child
            }
            _ => false,
        })
    };
    let describe_args = |args: &Option<toml::Value>| match args {
        Some(value) => value.to_string(),
        None => "none".to_owned(),
    };
    let mut children = Vec::new();
    walk(
        super::ROOT_SUPERVISOR,
        &target.manifest.supervisor.children,
        &mut children,
    );
    let mut warnings = Vec::new();
    for (supervisor, child) in children {
        let Some(plugin) = child.plugin.as_deref() else {
            continue;
        };
        let Some((_, running)) = current.manifest.find_child(&child.id) else {
            continue;
        };
        if !updated.contains(plugin)
            || running.plugin.as_deref() != Some(plugin)
            || running.args == child.args
            || covered(supervisor, &child.id)
        {
            continue;
        }
        warnings.push(PlanWarning {
            child: child.id.clone(),
            supervisor: supervisor.to_owned(),
            message: format!(
                "child {id:?} (plugin {plugin:?}) has new args in {to} ({new_args}), but the update \
                 only migrates the running actor: supervisor {supervisor:?} keeps {from}'s child spec, \
                 so when the child restarts it starts with {from}'s args ({old_args}); add \
                 `op = \"update_supervisor\", supervisor = \"{supervisor}\"` after the last update \
                 to give it {to}'s spec",
                id = child.id,
                new_args = describe_args(&child.args),
                old_args = describe_args(&running.args),
            ),
        });
    }
    warnings
}

/// One line saying what an instruction does.
pub fn describe(instruction: &Instruction) -> String {
    match instruction {
        Instruction::Update {
            plugin,
            mode,
            extra,
            suspend_timeout_ms,
            purge,
            suspend_with,
        } => {
            let mode = match mode {
                UpdateMode::Soft => "soft",
                UpdateMode::Advanced => "advanced",
            };
            let mut line = format!(
                "update {plugin} ({mode}, suspend timeout {suspend_timeout_ms} ms, purge {})",
                match purge {
                    super::PurgePolicy::Soft => "soft",
                    super::PurgePolicy::Brutal => "brutal",
                }
            );
            if let Some(extra) = extra {
                line.push_str(&format!(", extra {extra}"));
            }
            if !suspend_with.is_empty() {
                line.push_str(&format!(", suspended with {}", suspend_with.join(", ")));
            }
            line
        }
        Instruction::AddChild { supervisor, id } => {
            format!("add_child {id} under {supervisor}")
        }
        Instruction::RemoveChild { supervisor, id } => {
            format!("remove_child {id} under {supervisor}")
        }
        Instruction::RestartChild { supervisor, id } => {
            format!("restart_child {id} under {supervisor}")
        }
        Instruction::UpdateSupervisor { supervisor } => {
            format!("update_supervisor {supervisor}")
        }
        Instruction::Apply {
            actor,
            message,
            timeout_ms,
        } => format!("apply {message} to {actor} (timeout {timeout_ms} ms)"),
    }
}

/// The instruction's `op`, as written.
pub fn instruction_name(instruction: &Instruction) -> &'static str {
    match instruction {
        Instruction::Update { .. } => "update",
        Instruction::AddChild { .. } => "add_child",
        Instruction::RemoveChild { .. } => "remove_child",
        Instruction::RestartChild { .. } => "restart_child",
        Instruction::UpdateSupervisor { .. } => "update_supervisor",
        Instruction::Apply { .. } => "apply",
    }
}

fn is_update(instruction: &Instruction) -> bool {
    matches!(instruction, Instruction::Update { .. })
}

/// `in_process` or `process`, as in `release.toml`.
pub fn isolation_name(isolation: Isolation) -> &'static str {
    match isolation {
        Isolation::InProcess => "in_process",
        Isolation::Process => "process",
    }
}

fn find_script(
    current: PlanRelease<'_>,
    target: PlanRelease<'_>,
) -> Result<(Direction, PathBuf, Vec<Instruction>), PlanError> {
    let (from, to) = (current.version(), target.version());
    if to > from {
        let manifest = target.path.to_owned();
        let section = target
            .manifest
            .upgrade
            .iter()
            .find(|section| section.from.matches(from))
            .ok_or_else(|| PlanError::NoPath {
                manifest: manifest.clone(),
                direction: "upgrade",
                from: from.to_string(),
                to: to.to_string(),
                expected: format!(
                    "expected an [[upgrade]] whose `from` matches {from}; found {}",
                    describe_list(
                        target
                            .manifest
                            .upgrade
                            .iter()
                            .map(|section| section.from.to_string())
                    )
                ),
            })?;
        Ok((Direction::Upgrade, manifest, section.instructions.clone()))
    } else {
        let manifest = current.path.to_owned();
        let section = current
            .manifest
            .downgrade
            .iter()
            .find(|section| section.to == *to)
            .ok_or_else(|| PlanError::NoPath {
                manifest: manifest.clone(),
                direction: "downgrade",
                from: from.to_string(),
                to: to.to_string(),
                expected: format!(
                    "expected a [[downgrade]] with `to = \"{to}\"`; found {}",
                    describe_list(
                        current
                            .manifest
                            .downgrade
                            .iter()
                            .map(|section| section.to.to_string())
                    )
                ),
            })?;
        Ok((Direction::Downgrade, manifest, section.instructions.clone()))
    }
}

/// Checks a script against both releases before anything runs.
fn check_instructions(
    current: PlanRelease<'_>,
    target: PlanRelease<'_>,
    manifest: &Path,
    instructions: &[Instruction],
) -> Result<(), PlanError> {
    let plan_error = |index: usize, field: &str, message: String| PlanError::Invalid {
        manifest: manifest.to_owned(),
        field: format!("instructions[{index}].{field}"),
        message,
    };
    let (old, new) = (current.manifest, target.manifest);
    let (from, to) = (current.version(), target.version());
    let first_update = instructions.iter().position(is_update);
    let last_update = instructions.iter().rposition(is_update);
    let mut updated = HashSet::new();
    for (index, instruction) in instructions.iter().enumerate() {
        if let (Some(first), Some(last)) = (first_update, last_update)
            && index > first
            && index < last
            && !is_update(instruction)
        {
            return Err(plan_error(
                index,
                "op",
                format!(
                    "`{}` is written between two updates (instructions[{first}] and instructions[{last}]); \
                     the updates run as one atomic batch (every affected actor suspended, all migrated, \
                     then committed or all rolled back), so nothing can run between them: \
                     move it before the first update (it then runs on the old code, before the suspend) \
                     or after the last (on the new code, after the commit)",
                    instruction_name(instruction)
                ),
            ));
        }
        let before_batch = first_update.is_some_and(|first| index < first);
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
                            "unknown plugin {plugin:?}: expected a plugin of both {from} and {to}"
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
                            format!("unknown plugin {companion:?} in release {from}"),
                        ));
                    }
                }
            }
            Instruction::AddChild { supervisor, id } => {
                check_child(new, supervisor, id, to)
                    .map_err(|message| plan_error(index, "id", message))?;
                if old.find_child(id).is_some() {
                    return Err(plan_error(
                        index,
                        "id",
                        format!("child {id:?} already exists in {from}"),
                    ));
                }
            }
            Instruction::RemoveChild { supervisor, id } => {
                check_child(old, supervisor, id, from)
                    .map_err(|message| plan_error(index, "id", message))?;
            }
            Instruction::RestartChild { supervisor, id } => {
                check_child(old, supervisor, id, from)
                    .map_err(|message| plan_error(index, "id", message))?;
                check_child(new, supervisor, id, to)
                    .map_err(|message| plan_error(index, "id", message))?;
            }
            Instruction::UpdateSupervisor { supervisor } => {
                for (manifest, version) in [(old, from), (new, to)] {
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
        if before_batch {
            check_runs_on_old_code(old, new, instruction, from)
                .map_err(|(field, message)| plan_error(index, field, message))?;
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
            return Err(PlanError::Invalid {
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

/// An instruction before the update batch runs on the running release's plugin table: the
/// children it starts (from the target's specs) must run plugins the running release has.
fn check_runs_on_old_code(
    old: &Manifest,
    new: &Manifest,
    instruction: &Instruction,
    from: &Version,
) -> Result<(), (&'static str, String)> {
    let (field, started) = match instruction {
        Instruction::AddChild { id, .. } | Instruction::RestartChild { id, .. } => (
            "id",
            new.find_child(id)
                .map(|(_, child)| plugins_started(std::slice::from_ref(child)))
                .unwrap_or_default(),
        ),
        Instruction::UpdateSupervisor { supervisor } => (
            "supervisor",
            new.find_supervisor(supervisor)
                .map(|spec| plugins_started(&spec.children))
                .unwrap_or_default(),
        ),
        _ => return Ok(()),
    };
    for (child, plugin) in started {
        if !old.plugins.contains_key(&plugin) {
            return Err((
                field,
                format!(
                    "child {child:?} runs plugin {plugin:?}, which release {from} does not have; \
                     instructions before the first update run on the running release's plugins \
                     (the target's are switched in at the commit): move it after the last update"
                ),
            ));
        }
    }
    Ok(())
}

/// Every worker under these children (nested supervisors included): its id and plugin.
fn plugins_started(children: &[super::ChildManifest]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for child in children {
        if let Some(plugin) = &child.plugin {
            found.push((child.id.clone(), plugin.clone()));
        }
        found.extend(plugins_started(
            child.children.as_deref().unwrap_or_default(),
        ));
    }
    found
}

fn describe_list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn check_child(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A release with counter `counter_version` (child `counter`), kv 1.0.0 (child `kv`),
    /// and `extra` appended (children, plugins, scripts).
    fn release(version: &str, counter_version: &str, extra: &str) -> Manifest {
        let text = format!(
            r#"
[release]
name = "demo"
version = "{version}"

[plugins.counter]
version = "{counter_version}"
crate = "plugins/counter"

[plugins.kv]
version = "1.0.0"
crate = "plugins/kv"

[supervisor]
strategy = "one_for_one"

[[supervisor.children]]
id = "counter"
plugin = "counter"

[[supervisor.children]]
id = "kv"
plugin = "kv"
{extra}
"#
        );
        let manifest = Manifest::parse(Path::new("release.toml"), &text).unwrap();
        manifest.validate(Path::new("release.toml"), false).unwrap();
        manifest
    }

    fn plan(current: &Manifest, target: &Manifest) -> Result<Plan, PlanError> {
        Plan::new(
            PlanRelease {
                manifest: current,
                path: Path::new("current/release.toml"),
            },
            PlanRelease {
                manifest: target,
                path: Path::new("target/release.toml"),
            },
        )
    }

    fn indices(steps: &[Step]) -> Vec<usize> {
        steps.iter().map(|step| step.index).collect()
    }

    const APPLY: &str = "op = \"apply\"\nactor = \"kv\"\nmessage = \"Get\"\n";
    const UPDATE_COUNTER: &str = "op = \"update\"\nplugin = \"counter\"\n";

    fn upgrade(script: &[&str]) -> String {
        let mut text = "\n[[upgrade]]\nfrom = \"1.0.0\"\n".to_owned();
        for instruction in script {
            text.push_str(&format!("\n[[upgrade.instructions]]\n{instruction}"));
        }
        text
    }

    #[test]
    fn instructions_are_split_into_phases_in_the_order_written() {
        let old = release("1.0.0", "1.0.0", "");
        let new = release(
            "2.0.0",
            "2.0.0",
            &upgrade(&[APPLY, APPLY, UPDATE_COUNTER, APPLY]),
        );
        let plan = plan(&old, &new).unwrap();
        assert_eq!(plan.direction, Direction::Upgrade);
        assert_eq!(indices(&plan.before_suspend), [0, 1]);
        assert_eq!(indices(&plan.updates), [2]);
        assert_eq!(indices(&plan.after_commit), [3]);
        assert_eq!(plan.manifest, Path::new("target/release.toml"));
        let text = plan.to_string();
        let before = text.find("1. before the suspend").unwrap();
        let batch = text.find("2. atomic update batch").unwrap();
        let after = text.find("3. after the commit").unwrap();
        let update = text.find("[2] update counter").unwrap();
        assert!(before < batch && batch < update && update < after, "{text}");
        assert!(text.contains("[3] apply \"Get\" to kv"), "{text}");
    }

    /// Gives child `counter` these `args` (TOML inline table text).
    fn with_counter_args(mut manifest: Manifest, args: &str) -> Manifest {
        let table: toml::Table = toml::from_str(&format!("args = {args}")).unwrap();
        manifest.supervisor.children[0].args = table.get("args").cloned();
        manifest
    }

    #[test]
    fn an_update_that_leaves_a_child_on_the_older_args_is_warned_about() {
        let old = with_counter_args(release("1.0.0", "1.0.0", ""), "{ start = 0 }");
        let new = with_counter_args(
            release("2.0.0", "2.0.0", &upgrade(&[UPDATE_COUNTER])),
            "{ start = 100 }",
        );
        let plan = plan(&old, &new).unwrap();
        assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
        let warning = &plan.warnings[0];
        assert_eq!(
            (warning.child.as_str(), warning.supervisor.as_str()),
            ("counter", "root")
        );
        for expected in [
            "child \"counter\"",
            "1.0.0's args ({ start = 0 })",
            "new args in 2.0.0 ({ start = 100 })",
            "update_supervisor",
        ] {
            assert!(
                warning.message.contains(expected),
                "{expected}: {}",
                warning.message
            );
        }
        // `graft install --dry-run` prints it with the plan.
        assert!(
            plan.to_string()
                .contains(&format!("warning: {}", warning.message)),
            "{plan}"
        );
    }

    #[test]
    fn no_warning_when_the_script_gives_the_supervisor_the_new_spec_or_the_args_stay() {
        let old = with_counter_args(release("1.0.0", "1.0.0", ""), "{ start = 0 }");
        let update_root = "op = \"update_supervisor\"\nsupervisor = \"root\"\n";
        let restart = "op = \"restart_child\"\nsupervisor = \"root\"\nid = \"counter\"\n";
        for script in [
            &[UPDATE_COUNTER, update_root][..],
            &[UPDATE_COUNTER, restart][..],
        ] {
            let new = with_counter_args(
                release("2.0.0", "2.0.0", &upgrade(script)),
                "{ start = 100 }",
            );
            assert_eq!(plan(&old, &new).unwrap().warnings, [], "{script:?}");
        }
        // The same args in both releases, or a child whose plugin is not updated.
        let same = with_counter_args(
            release("2.0.0", "2.0.0", &upgrade(&[UPDATE_COUNTER])),
            "{ start = 0 }",
        );
        assert_eq!(plan(&old, &same).unwrap().warnings, []);
        let not_updated = with_counter_args(
            release("1.1.0", "1.0.0", &upgrade(&[APPLY])),
            "{ start = 100 }",
        );
        assert_eq!(plan(&old, &not_updated).unwrap().warnings, []);
    }

    #[test]
    fn a_script_without_updates_runs_after_the_commit() {
        let old = release("1.0.0", "1.0.0", "");
        let new = release("1.1.0", "1.0.0", &upgrade(&[APPLY]));
        let plan = plan(&old, &new).unwrap();
        assert!(plan.before_suspend.is_empty() && plan.updates.is_empty());
        assert_eq!(indices(&plan.after_commit), [0]);
    }

    #[test]
    fn an_instruction_between_two_updates_is_refused_with_the_reason() {
        let old = release("1.0.0", "1.0.0", "");
        let update_kv = "op = \"update\"\nplugin = \"kv\"\n";
        let mut new = release(
            "2.0.0",
            "2.0.0",
            &upgrade(&[UPDATE_COUNTER, APPLY, update_kv]),
        );
        new.plugins.get_mut("kv").unwrap().version = Version::new(2, 0, 0);
        let error = plan(&old, &new).unwrap_err();
        let PlanError::Invalid { field, message, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(field, "instructions[1].op");
        assert!(
            message.contains("`apply` is written between two updates"),
            "{message}"
        );
        assert!(message.contains("one atomic batch"), "{message}");
        assert!(
            message.contains("move it before the first update"),
            "{message}"
        );
        // The same instructions, the apply moved before or after the batch, are fine.
        new.upgrade = release(
            "2.0.0",
            "2.0.0",
            &upgrade(&[APPLY, UPDATE_COUNTER, update_kv]),
        )
        .upgrade;
        assert_eq!(indices(&plan(&old, &new).unwrap().before_suspend), [0]);
        new.upgrade = release(
            "2.0.0",
            "2.0.0",
            &upgrade(&[UPDATE_COUNTER, update_kv, APPLY]),
        )
        .upgrade;
        assert_eq!(indices(&plan(&old, &new).unwrap().after_commit), [2]);
    }

    #[test]
    fn a_child_of_a_new_plugin_cannot_start_before_the_updates() {
        let old = release("1.0.0", "1.0.0", "");
        let added = "\n[plugins.tally]\nversion = \"1.0.0\"\ncrate = \"plugins/tally\"\n\n[[supervisor.children]]\nid = \"tally\"\nplugin = \"tally\"\n";
        let add = "op = \"add_child\"\nsupervisor = \"root\"\nid = \"tally\"\n";
        let text_before = format!("{added}{}", upgrade(&[add, UPDATE_COUNTER]));
        let new = release("2.0.0", "2.0.0", &text_before);
        let error = plan(&old, &new).unwrap_err();
        let PlanError::Invalid { field, message, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(field, "instructions[0].id");
        assert!(
            message.contains("plugin \"tally\", which release 1.0.0 does not have"),
            "{message}"
        );
        let text_after = format!("{added}{}", upgrade(&[UPDATE_COUNTER, add]));
        let new = release("2.0.0", "2.0.0", &text_after);
        let plan = plan(&old, &new).unwrap();
        assert_eq!(indices(&plan.after_commit), [1]);
    }

    #[test]
    fn a_child_of_a_running_plugin_may_start_before_the_updates() {
        let old = release("1.0.0", "1.0.0", "");
        let tree = "\n[[supervisor.children]]\nid = \"second\"\nplugin = \"counter\"\n";
        let add = "op = \"add_child\"\nsupervisor = \"root\"\nid = \"second\"\n";
        let new = release(
            "2.0.0",
            "2.0.0",
            &format!("{tree}{}", upgrade(&[add, UPDATE_COUNTER])),
        );
        let plan = plan(&old, &new).unwrap();
        assert_eq!(indices(&plan.before_suspend), [0]);
    }

    #[test]
    fn downgrade_scripts_come_from_the_running_release_and_keep_their_order() {
        let old = release("1.0.0", "1.0.0", "");
        let downgrade = format!(
            "\n[[downgrade]]\nto = \"1.0.0\"\n\n[[downgrade.instructions]]\n{APPLY}\n[[downgrade.instructions]]\n{UPDATE_COUNTER}\n[[downgrade.instructions]]\n{APPLY}"
        );
        let running = release("2.0.0", "2.0.0", &downgrade);
        let plan = plan(&running, &old).unwrap();
        assert_eq!(plan.direction, Direction::Downgrade);
        assert_eq!(plan.manifest, Path::new("current/release.toml"));
        assert_eq!(indices(&plan.before_suspend), [0]);
        assert_eq!(indices(&plan.updates), [1]);
        assert_eq!(indices(&plan.after_commit), [2]);
        assert!(plan.to_string().starts_with("downgrade 2.0.0 -> 1.0.0"));
    }

    #[test]
    fn missing_scripts_and_missing_updates_are_refused() {
        let old = release("1.0.0", "1.0.0", "");
        let new = release("2.0.0", "2.0.0", "");
        let error = plan(&old, &new).unwrap_err();
        assert!(
            matches!(
                &error,
                PlanError::NoPath {
                    direction: "upgrade",
                    ..
                }
            ),
            "{error}"
        );
        let error = plan(&new, &old).unwrap_err();
        assert!(
            matches!(
                &error,
                PlanError::NoPath {
                    direction: "downgrade",
                    ..
                }
            ),
            "{error}"
        );
        let new = release("2.0.0", "2.0.0", &upgrade(&[APPLY]));
        let error = plan(&old, &new).unwrap_err().to_string();
        assert!(
            error.contains("plugin \"counter\" changes from 1.0.0 to 2.0.0 but the script has no `update` for it"),
            "{error}"
        );
    }

    #[test]
    fn updates_of_unchanged_plugins_and_unknown_children_are_refused() {
        let old = release("1.0.0", "1.0.0", "");
        let new = release(
            "1.1.0",
            "1.0.0",
            &upgrade(&["op = \"update\"\nplugin = \"kv\"\n"]),
        );
        let error = plan(&old, &new).unwrap_err().to_string();
        assert!(
            error.contains("instructions[0].plugin") && error.contains("in both releases"),
            "{error}"
        );
        let new = release(
            "1.1.0",
            "1.0.0",
            &upgrade(&["op = \"remove_child\"\nsupervisor = \"root\"\nid = \"nobody\"\n"]),
        );
        let error = plan(&old, &new).unwrap_err().to_string();
        assert!(
            error.contains("instructions[0].id") && error.contains("unknown child \"nobody\""),
            "{error}"
        );
    }
}
