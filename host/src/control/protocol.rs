//! The responses of the control protocol, typed: the server builds these, the client
//! parses them, the CLI prints them. One type per request kind ([`super::Request`] is the
//! other half): `status` → [`StatusResponse`], `releases` → `Vec<`[`ReleaseEntry`]`>`,
//! `install` and `rollback` → [`InstallResponse`], `plan` → [`PlanResponse`],
//! `make_permanent` → [`PermanentResponse`], `remove` → [`RemovedResponse`], `cast` →
//! [`CastResponse`], `state --replace` → [`ReplacedResponse`], `suspend` →
//! [`SuspendedResponse`], `resume` → [`ResumedResponse`]; `call` and `state` answer with
//! the plugin's own JSON (a [`serde_json::Value`]).
//!
//! Compatibility between a newer client and an older host (or the reverse): unknown fields
//! are ignored (no `deny_unknown_fields` on responses, so a newer host may add fields), and
//! fields added after the first version carry `#[serde(default)]` so an older host's answer
//! still parses. A field the client needs and the host does not send (a renamed field) is
//! an error naming it, never a placeholder: see [`super::ControlError::Protocol`].
//!
//! Tricky: the wire JSON is what the untyped server sent before. The server turns these
//! values into a `serde_json::Value` before sending (its keys sorted, as before), and the
//! CLI's `--json` prints them the same way. Absent optional facts are left out rather
//! than sent as `null`; readers that index a `Value` see `null` either way.

use semver::Version;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The answer to `status`: the release, the supervision tree with every actor's figures,
/// the resident libraries, the isolated plugins' workers and the releases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusResponse {
    /// The running release (as of the last finished operation).
    pub release: Version,
    /// Whether an install runs now (the release is the one from before it).
    #[serde(default)]
    pub install_in_progress: bool,
    /// The root supervisor and, recursively, its children.
    pub tree: TreeNode,
    /// The plugin versions still loaded.
    pub resident: Vec<ResidentEntry>,
    /// The worker process of each isolated plugin.
    #[serde(default)]
    pub workers: Vec<WorkerEntry>,
    /// Libraries closed but still mapped (`plugin version`, with why when pinned).
    #[serde(default)]
    pub still_mapped_after_close: Vec<String>,
    /// Callbacks that outlived their deadline and still hold their thread.
    #[serde(default)]
    pub stuck_callbacks: Vec<StuckCallbackEntry>,
    /// Every release and its status.
    pub releases: Vec<ReleaseEntry>,
}

/// A node of the supervision tree: a supervisor (with `"supervisor": true` on the wire)
/// or one of its other children.
// A status tree is built once per `status` request and has one node per child: boxing
// the child variant would save little and change what every producer writes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TreeNode {
    /// A supervisor and its children.
    Supervisor(SupervisorNode),
    /// A worker (an actor), or a child without a process.
    Child(ChildNode),
}

impl TreeNode {
    /// The child's id under its supervisor (`root` for the root).
    pub fn id(&self) -> &str {
        match self {
            TreeNode::Supervisor(node) => &node.id,
            TreeNode::Child(node) => &node.id,
        }
    }
}

/// Which kind of node a JSON object is: `"supervisor": true` marks a supervisor. Decided
/// first, so a node that fails to parse is reported against its own kind's fields (an
/// untagged enum would only say that no variant matched).
impl<'de> Deserialize<'de> for TreeNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(deserializer)?;
        let supervisor = value.get("supervisor").and_then(Value::as_bool) == Some(true);
        if supervisor {
            serde_path_to_error::deserialize(value)
                .map(TreeNode::Supervisor)
                .map_err(|error| D::Error::custom(describe_nested(&error, "supervisor")))
        } else {
            serde_path_to_error::deserialize(value)
                .map(TreeNode::Child)
                .map_err(|error| D::Error::custom(describe_nested(&error, "child")))
        }
    }
}

/// An error inside a tree node, with the path within the node (the outer path is added by
/// the caller's `serde_path_to_error`): `at tree: children[0]: missing field `state` (in a
/// child node)`.
fn describe_nested(error: &serde_path_to_error::Error<serde_json::Error>, kind: &str) -> String {
    let path = error.path().to_string();
    if path == "." {
        format!("{} (in a {kind} node)", error.inner())
    } else {
        // The inner error already names its own path and kind.
        format!("{path}: {}", error.inner())
    }
}

/// A supervisor in the tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorNode {
    /// Its child id (`root` for the root).
    pub id: String,
    /// Always `true`: marks the node as a supervisor on the wire.
    pub supervisor: bool,
    /// `busy` when it did not answer in time (then `children` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Its `count_children`, when it answered in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<ChildCountsEntry>,
    /// Its children, in start order.
    pub children: Vec<TreeNode>,
}

/// A supervisor's `count_children` (OTP's fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildCountsEntry {
    /// Child specs.
    pub specs: usize,
    /// Running children.
    pub active: usize,
    /// Children that are supervisors.
    pub supervisors: usize,
    /// Children that are workers.
    pub workers: usize,
}

impl From<crate::supervisor::ChildCounts> for ChildCountsEntry {
    fn from(counts: crate::supervisor::ChildCounts) -> Self {
        ChildCountsEntry {
            specs: counts.specs,
            active: counts.active,
            supervisors: counts.supervisors,
            workers: counts.workers,
        }
    }
}

/// A child that is not a supervisor: an actor with its figures (`running`, `suspended`),
/// an actor busy in a callback (`busy`: its plugin unknown, the mailbox figures the
/// senders' own counts), one started after the tree was listed, or a child without a
/// process (`restarting`, `stopped`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChildNode {
    /// Its child id.
    pub id: String,
    /// `running`, `suspended`, `busy`, `restarting`, `stopped`, or `started after the
    /// count`.
    pub state: String,
    /// The actor's registered name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The plugin running it (none for a host-native behaviour).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The plugin's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The code's label, when the actor was busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why the actor did not answer, when busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u64>,
    /// Messages waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<u64>,
    /// The most ever waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_high_water: Option<u64>,
    /// The mailbox's bound, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mailbox: Option<u64>,
    /// Messages refused at the bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_refused: Option<u64>,
    /// Messages dropped because the actor could not decode them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undecodable_messages: Option<u64>,
    /// Calls, casts and info messages handled since the actor started (absent from a host
    /// that does not count them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_handled: Option<u64>,
    /// `healthy`, `degraded`, `unhealthy`, or `not reported…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Why degraded or unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
}

/// A loaded plugin version and how many handles keep it loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidentEntry {
    /// The plugin.
    pub plugin: String,
    /// Its version.
    pub version: String,
    /// Handles keeping it loaded.
    pub users: usize,
}

impl From<&crate::release::handler::ResidentLibrary> for ResidentEntry {
    fn from(library: &crate::release::handler::ResidentLibrary) -> Self {
        ResidentEntry {
            plugin: library.plugin.clone(),
            version: library.version.clone(),
            users: library.users,
        }
    }
}

/// The worker process of an isolated plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerEntry {
    /// The plugin.
    pub plugin: String,
    /// The running process's pid (`null` between a crash and the next start).
    pub pid: Option<u32>,
    /// Processes started in all.
    pub spawned: u64,
    /// The memory limit in force, in MiB.
    #[serde(default)]
    pub memory_limit_mb: Option<u64>,
}

impl From<&crate::release::handler::WorkerInfo> for WorkerEntry {
    fn from(worker: &crate::release::handler::WorkerInfo) -> Self {
        WorkerEntry {
            plugin: worker.plugin.clone(),
            pid: worker.pid,
            spawned: worker.spawned,
            memory_limit_mb: worker.memory_limit_mb,
        }
    }
}

/// A callback that outlived its deadline and still holds its thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckCallbackEntry {
    /// The actor it belonged to.
    pub actor: String,
    /// The callback.
    pub callback: String,
    /// The plugin and version whose code holds the thread.
    pub code: String,
    /// How long it has run, in milliseconds.
    pub running_ms: u64,
}

impl From<&crate::runtime::executor::StuckCallback> for StuckCallbackEntry {
    fn from(stuck: &crate::runtime::executor::StuckCallback) -> Self {
        StuckCallbackEntry {
            actor: stuck.actor.clone(),
            callback: stuck.callback.clone(),
            code: stuck.code.clone(),
            running_ms: stuck.running_ms,
        }
    }
}

/// One release, as `releases` (and `status`) list them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseEntry {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: Version,
    /// `permanent`, `current`, `old` or `unpacked` (a string, so a newer host's status
    /// still parses).
    pub status: String,
    /// Whether it runs now.
    pub running: bool,
}

impl From<&crate::release::record::ReleaseInfo> for ReleaseEntry {
    fn from(release: &crate::release::record::ReleaseInfo) -> Self {
        ReleaseEntry {
            name: release.name.clone(),
            version: release.version.clone(),
            status: release.status.to_string(),
            running: release.running,
        }
    }
}

/// What an install or a rollback did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallResponse {
    /// The version installed from.
    pub from: Version,
    /// The version installed.
    pub to: Version,
    /// Actors moved to new code.
    pub actors_migrated: u64,
    /// Actors suspended.
    #[serde(default)]
    pub actors_suspended: u64,
    /// The longest time one actor was suspended, in microseconds.
    pub longest_pause_us: u64,
    /// The whole install, in microseconds.
    pub total_us: u64,
    /// Plugin versions loaded after the install.
    #[serde(default)]
    pub resident: Vec<ResidentEntry>,
    /// The plan's warnings (the install ran regardless).
    #[serde(default)]
    pub warnings: Vec<WarningEntry>,
    /// Whether the release was made permanent too.
    #[serde(default)]
    pub permanent: bool,
}

impl InstallResponse {
    /// The report of `report`, made permanent or not.
    pub fn new(report: &crate::release::handler::InstallReport, permanent: bool) -> Self {
        let micros =
            |duration: std::time::Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        InstallResponse {
            from: report.from.clone(),
            to: report.to.clone(),
            actors_migrated: report.actors_migrated as u64,
            actors_suspended: report.actors_suspended as u64,
            longest_pause_us: micros(report.longest_pause),
            total_us: micros(report.total),
            resident: report.resident.iter().map(ResidentEntry::from).collect(),
            warnings: report.warnings.iter().map(WarningEntry::from).collect(),
            permanent,
        }
    }
}

/// A plan's warning: what the script does that its author probably did not mean.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarningEntry {
    /// The child concerned.
    pub child: String,
    /// Its supervisor in the target release.
    pub supervisor: String,
    /// What will happen, and what to write instead.
    pub message: String,
}

impl From<&crate::release::plan::PlanWarning> for WarningEntry {
    fn from(warning: &crate::release::plan::PlanWarning) -> Self {
        WarningEntry {
            child: warning.child.clone(),
            supervisor: warning.supervisor.clone(),
            message: warning.message.clone(),
        }
    }
}

/// The plan an install would run: the checked script as JSON (its instructions are the
/// manifest's own, so they stay JSON here) and as the text `install --dry-run` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanResponse {
    /// The plan (`from`, `to`, `direction`, `manifest`, `before_suspend`, `updates`,
    /// `after_commit`, `warnings`).
    pub plan: Value,
    /// The plan as text.
    pub text: String,
}

/// `make_permanent`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermanentResponse {
    /// The version made permanent.
    pub permanent: Version,
}

/// `remove`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedResponse {
    /// The version removed.
    pub removed: Version,
}

/// `cast`'s answer: the message is queued (not yet handled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CastResponse {
    /// The actor.
    pub cast: String,
}

/// `state` with `replace`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedResponse {
    /// The actor whose state was replaced.
    pub replaced: String,
}

/// `suspend`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendedResponse {
    /// The actor suspended.
    pub suspended: String,
}

/// `resume`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumedResponse {
    /// The actor resumed.
    pub resumed: String,
}

/// Parses a response's `result` as `T`; the error names the field's path and what serde
/// expected (`tree.children[0]: missing field `state``).
pub fn parse<T: serde::de::DeserializeOwned>(result: Value) -> Result<T, ResponseError> {
    serde_path_to_error::deserialize(result).map_err(|error| ResponseError {
        path: error.path().to_string(),
        source: error.into_inner(),
    })
}

/// `at tree.children[0]`, or `at its top level` for the path `.`.
fn describe_path(path: &str) -> String {
    if path == "." {
        "at its top level".to_owned()
    } else {
        format!("at {path}")
    }
}

/// A response that does not have the shape of its type.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", describe_path(path))]
pub struct ResponseError {
    /// Where in the result (`.` for the top).
    pub path: String,
    /// What serde expected.
    #[source]
    pub source: serde_json::Error,
}

#[cfg(test)]
mod tests {
    //! Each response type round-trips (the server's value → JSON → the client's type), its
    //! JSON is what the untyped server sent, and a renamed field fails naming the field.
    use super::*;
    use crate::release::handler::{InstallReport, ResidentLibrary, WorkerInfo};
    use crate::release::plan::PlanWarning;
    use crate::release::record::{ReleaseInfo, ReleaseStatus};
    use crate::runtime::executor::StuckCallback;
    use crate::supervisor::ChildCounts;
    use serde_json::json;
    use std::time::Duration;

    fn version(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    /// `value` as the server sends it, parsed back as the client does, equals `value`.
    fn round_trip<T>(value: &T) -> Value
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let wire = serde_json::to_value(value).unwrap();
        let line = serde_json::to_string(&wire).unwrap();
        let parsed: T = parse(serde_json::from_str(&line).unwrap()).unwrap();
        assert_eq!(&parsed, value);
        wire
    }

    fn resident() -> ResidentLibrary {
        ResidentLibrary {
            plugin: "kv".to_owned(),
            version: "1.1.0".to_owned(),
            users: 2,
        }
    }

    fn warning() -> PlanWarning {
        PlanWarning {
            child: "cache".to_owned(),
            supervisor: "root".to_owned(),
            message: "cache keeps its old code".to_owned(),
        }
    }

    fn status() -> StatusResponse {
        let actor = ChildNode {
            id: "kv".to_owned(),
            state: "running".to_owned(),
            name: Some("kv".to_owned()),
            plugin: Some("kv".to_owned()),
            version: Some("1.1.0".to_owned()),
            restarts: Some(1),
            mailbox: Some(0),
            mailbox_high_water: Some(3),
            max_mailbox: Some(100),
            mailbox_refused: Some(0),
            undecodable_messages: Some(2),
            messages_handled: Some(42),
            health: Some("degraded".to_owned()),
            health_reason: Some("slow disk".to_owned()),
            ..ChildNode::default()
        };
        let busy = ChildNode {
            id: "counter".to_owned(),
            state: "busy".to_owned(),
            name: Some("counter".to_owned()),
            code: Some("counter 1.0.0".to_owned()),
            error: Some("timed out".to_owned()),
            mailbox: Some(4),
            mailbox_high_water: Some(4),
            mailbox_refused: Some(0),
            undecodable_messages: Some(0),
            ..ChildNode::default()
        };
        let stopped = ChildNode {
            id: "job".to_owned(),
            state: "stopped".to_owned(),
            restarts: Some(3),
            ..ChildNode::default()
        };
        let nested = SupervisorNode {
            id: "workers".to_owned(),
            supervisor: true,
            state: Some("busy".to_owned()),
            counts: None,
            children: Vec::new(),
        };
        StatusResponse {
            release: version("1.1.0"),
            install_in_progress: false,
            tree: TreeNode::Supervisor(SupervisorNode {
                id: "root".to_owned(),
                supervisor: true,
                state: None,
                counts: Some(
                    ChildCounts {
                        specs: 4,
                        active: 3,
                        supervisors: 1,
                        workers: 3,
                    }
                    .into(),
                ),
                children: vec![
                    TreeNode::Child(actor),
                    TreeNode::Child(busy),
                    TreeNode::Child(stopped),
                    TreeNode::Supervisor(nested),
                ],
            }),
            resident: vec![ResidentEntry::from(&resident())],
            workers: vec![WorkerEntry::from(&WorkerInfo {
                plugin: "faulty".to_owned(),
                pid: None,
                spawned: 2,
                memory_limit_mb: Some(64),
            })],
            still_mapped_after_close: vec!["kv 1.0.0".to_owned()],
            stuck_callbacks: vec![StuckCallbackEntry::from(&StuckCallback {
                actor: "slow".to_owned(),
                callback: "handle_call".to_owned(),
                code: "slow 1.0.0".to_owned(),
                running_ms: 1500,
            })],
            releases: vec![ReleaseEntry::from(&ReleaseInfo {
                name: "app".to_owned(),
                version: version("1.1.0"),
                status: ReleaseStatus::Current,
                running: true,
            })],
        }
    }

    #[test]
    fn status_round_trips_with_the_fields_the_untyped_server_sent() {
        let wire = round_trip(&status());
        assert_eq!(wire["release"], json!("1.1.0"));
        let root = &wire["tree"];
        assert_eq!(root["id"], json!("root"));
        assert_eq!(root["supervisor"], json!(true));
        assert_eq!(
            root["counts"],
            json!({"specs": 4, "active": 3, "supervisors": 1, "workers": 3})
        );
        let actor = &root["children"][0];
        for (field, expected) in [
            ("id", json!("kv")),
            ("state", json!("running")),
            ("plugin", json!("kv")),
            ("version", json!("1.1.0")),
            ("restarts", json!(1)),
            ("mailbox_high_water", json!(3)),
            ("max_mailbox", json!(100)),
            ("undecodable_messages", json!(2)),
            ("messages_handled", json!(42)),
            ("health", json!("degraded")),
            ("health_reason", json!("slow disk")),
        ] {
            assert_eq!(actor[field], expected, "field {field}");
        }
        assert_eq!(root["children"][1]["code"], json!("counter 1.0.0"));
        assert_eq!(
            root["children"][2],
            json!({"id": "job", "state": "stopped", "restarts": 3})
        );
        assert_eq!(
            root["children"][3],
            json!({"id": "workers", "supervisor": true, "state": "busy", "children": []})
        );
        assert_eq!(
            wire["workers"],
            json!([{"plugin": "faulty", "pid": null, "spawned": 2, "memory_limit_mb": 64}])
        );
        assert_eq!(
            wire["stuck_callbacks"][0],
            serde_json::to_value(StuckCallback {
                actor: "slow".to_owned(),
                callback: "handle_call".to_owned(),
                code: "slow 1.0.0".to_owned(),
                running_ms: 1500,
            })
            .unwrap()
        );
        assert_eq!(
            wire["resident"][0],
            serde_json::to_value(resident()).unwrap()
        );
    }

    #[test]
    fn a_status_from_an_older_host_without_the_newer_fields_parses() {
        let older = json!({
            "release": "1.0.0",
            "tree": {"id": "root", "supervisor": true, "counts": null, "children": [
                {"id": "kv", "name": "kv", "state": "running", "restarts": 0, "mailbox": 0,
                 "mailbox_high_water": 0, "max_mailbox": null}
            ]},
            "resident": [],
            "releases": [],
        });
        let status: StatusResponse = parse(older).unwrap();
        assert!(!status.install_in_progress);
        assert!(status.workers.is_empty() && status.stuck_callbacks.is_empty());
        let TreeNode::Supervisor(root) = status.tree else {
            panic!("the root is a supervisor");
        };
        assert_eq!(root.counts, None);
        assert_eq!(root.children[0].id(), "kv");
    }

    #[test]
    fn releases_round_trip_as_the_release_records_serialize() {
        let info = ReleaseInfo {
            name: "app".to_owned(),
            version: version("2.0.0"),
            status: ReleaseStatus::Permanent,
            running: false,
        };
        let wire = round_trip(&vec![ReleaseEntry::from(&info)]);
        assert_eq!(wire, json!([serde_json::to_value(&info).unwrap()]));
    }

    #[test]
    fn an_install_report_round_trips_as_the_untyped_server_sent_it() {
        let report = InstallReport {
            from: version("1.0.0"),
            to: version("1.1.0"),
            actors_migrated: 2,
            actors_suspended: 3,
            longest_pause: Duration::from_micros(1234),
            total: Duration::from_millis(56),
            resident: vec![resident()],
            warnings: vec![warning()],
        };
        let wire = round_trip(&InstallResponse::new(&report, true));
        let mut untyped = serde_json::to_value(&report).unwrap();
        untyped["permanent"] = json!(true);
        assert_eq!(wire, untyped);
    }

    #[test]
    fn the_small_answers_round_trip_under_their_field_names() {
        assert_eq!(
            round_trip(&PlanResponse {
                plan: json!({"from": "1.0.0", "to": "1.1.0", "updates": []}),
                text: "upgrade 1.0.0 → 1.1.0\n".to_owned(),
            })["text"],
            json!("upgrade 1.0.0 → 1.1.0\n")
        );
        assert_eq!(
            round_trip(&PermanentResponse {
                permanent: version("1.1.0")
            }),
            json!({"permanent": "1.1.0"})
        );
        assert_eq!(
            round_trip(&RemovedResponse {
                removed: version("1.0.0")
            }),
            json!({"removed": "1.0.0"})
        );
        assert_eq!(
            round_trip(&CastResponse {
                cast: "kv".to_owned()
            }),
            json!({"cast": "kv"})
        );
        assert_eq!(
            round_trip(&ReplacedResponse {
                replaced: "kv".to_owned()
            }),
            json!({"replaced": "kv"})
        );
        assert_eq!(
            round_trip(&SuspendedResponse {
                suspended: "kv".to_owned()
            }),
            json!({"suspended": "kv"})
        );
        assert_eq!(
            round_trip(&ResumedResponse {
                resumed: "kv".to_owned()
            }),
            json!({"resumed": "kv"})
        );
        assert_eq!(
            round_trip(&WarningEntry::from(&warning())),
            serde_json::to_value(warning()).unwrap()
        );
    }

    #[test]
    fn a_renamed_field_fails_naming_the_field_and_its_path() {
        let mut wire = serde_json::to_value(status()).unwrap();
        let actor = wire["tree"]["children"][0].as_object_mut().unwrap();
        let state = actor.remove("state").unwrap();
        actor.insert("status".to_owned(), state);
        let error = parse::<StatusResponse>(wire).unwrap_err().to_string();
        assert!(
            error.contains("at tree: children[0]: missing field `state` (in a child node)"),
            "{error}"
        );

        let error = parse::<InstallResponse>(json!({
            "from": "1.0.0", "to": "1.1.0", "actors_migrated": 1,
            "longest_pause_ms": 2, "total_us": 3,
        }))
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("missing field `longest_pause_us`"),
            "{error}"
        );

        let error = parse::<Vec<ReleaseEntry>>(json!([
            {"name": "app", "version": "1.0.0", "status": "current", "running": true},
            {"name": "app", "version": "1.1.0", "state": "old", "running": false},
        ]))
        .unwrap_err();
        assert_eq!(error.path, "[1]");
        assert!(
            error.to_string().contains("missing field `status`"),
            "{error}"
        );

        let error = parse::<StatusResponse>(json!({"release": 1})).unwrap_err();
        assert_eq!(error.path, "release");
    }
}
