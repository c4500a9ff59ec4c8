//! Every type that crosses a node boundary, and the protocol version.
//!
//! Messages are encoded with rmp-serde (see [`crate::wire`]). A peer that speaks
//! another [`PROTOCOL_VERSION`] is refused at registration with a clear error on
//! both sides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the worker <-> master protocol. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 5;

/// Process group a worker joins, qualified with its node name.
pub fn worker_group(node: &str) -> String {
    format!("orch.worker.{node}")
}

/// A capability value: `gpu = true`, `os = "linux"`, `vram_gb = 24`, `tags = ["nvenc"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CapValue {
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<String>),
}

/// Named capabilities of a worker or a device.
pub type Capabilities = BTreeMap<String, CapValue>;

/// One device as the master sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Stable key, unique on its node.
    pub id: String,
    /// Runtime handle passed to the executor (`cuda:0`, an adb serial, ...).
    pub handle: String,
    /// The worker's capabilities overlaid with the device's own.
    pub capabilities: Capabilities,
}

/// Worker -> master: join the cluster (docs/design/architecture.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    pub protocol_version: u32,
    pub node: String,
    /// Address peers dial to reach this node.
    pub advertise: String,
    pub capabilities: Capabilities,
    pub devices: Vec<DeviceInfo>,
    pub max_concurrency: u32,
    /// Random per worker process: tells a restarted worker from a retransmission.
    pub instance: u64,
    /// Registration cycle of this process; a retransmission repeats it.
    pub attempt: u64,
    /// Attempts this worker still holds: queued, running, or finished with
    /// a result not yet acknowledged. After a master restart these continue;
    /// the master's other attempts on this node are requeued.
    #[serde(default)]
    pub held: Vec<AttemptKey>,
    /// Address of this node's data plane (files and logs, docs/collection.md).
    #[serde(default)]
    pub data: Option<String>,
}

/// Worker health as the worker reports it (docs/design/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Ok,
    /// Alive but must receive no new work (storage unreachable, ...).
    Error,
    /// Finishing current work, taking nothing new.
    Draining,
}

/// Worker -> master, every `heartbeat_ms` (docs/design/architecture.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub epoch: u64,
    /// Sequence number, so that the master can tell reordered or lost heartbeats.
    pub seq: u64,
    pub queue_ratio: f32,
    pub gpu_usage: f32,
    pub active_tasks: u32,
    pub last_frame: Option<u64>,
    pub status: WorkerStatus,
    pub error: Option<String>,
}

/// Every message a worker sends to the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToMaster {
    Register(Register),
    Heartbeat(Heartbeat),
    /// Clean leave (SIGTERM): not a failure.
    Unregister {
        node: String,
        epoch: u64,
    },
    Progress(TaskProgress),
    Result(TaskResult),
    /// This worker also sees `older`, a master that serves since before the
    /// receiver: the receiver must stand down (two masters that do not see
    /// each other meet through a worker that sees both).
    OlderMaster {
        older: crate::masters::Claim,
    },
    /// The worker's devices changed (a discovery source found or lost one,
    /// one went offline or online again): sent at once, and again with
    /// every heartbeat until the master acknowledges `version`.
    Devices(DeviceReport),
}

/// The devices a worker has now, in full: the master compares it with
/// what it knows. A device it knows that is not here is gone (its
/// attempts are requeued with reason `device_gone`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReport {
    pub node: String,
    pub epoch: u64,
    /// One more at every change this worker process makes.
    pub version: u64,
    pub devices: Vec<DeviceInfo>,
    /// Devices present but offline, and why (`last_error`).
    pub offline: Vec<(String, String)>,
}

/// Every message the master sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Registration accepted; `epoch` fences everything this worker sends from now on.
    Registered { epoch: u64, master: String },
    /// Registration refused for good (protocol mismatch, duplicate name, ...).
    Refused { reason: String },
    /// The master no longer knows this epoch (declared dead, or restarted): register again.
    Reregister { reason: String },
    /// The clean leave was recorded.
    Unregistered,
    /// Run this task on `task.device` (queued behind the device's earlier tasks).
    Assign(TaskSpec),
    /// Stop this attempt if it runs, and move its output files, except `keep`,
    /// to quarantine.
    Drop {
        key: AttemptKey,
        device: String,
        keep: Vec<String>,
        reason: LossReason,
    },
    /// Restart a device actor (after its attempts were dropped).
    RestartDevice { device: String },
    /// These outbox entries (progress and results, by `seq`) are recorded in
    /// the master's store: the worker may forget them.
    Ack { seqs: Vec<u64> },
    /// The master has the worker's [`DeviceReport`] of this `version`.
    DevicesAck { version: u64 },
}

/// Admin queries answered by the master (docs/operating.md). Any node forwards them.
// A submission is the one large request, and requests are few: boxing it
// would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    Status,
    Workers,
    Submit(SessionSpec),
    Sessions,
    Session(String),
    Manifest(String),
    Cancel(String),
    /// Give a session nothing new (`true`) or again (`false`); its running
    /// attempts finish.
    Pause {
        session: String,
        paused: bool,
    },
    /// Run the failed ranges of a `partial` or `failed` session again.
    Retry(String),
    /// Run a produced range again (a bad frame): its outputs are quarantined.
    Requeue {
        session: String,
        task: u64,
    },
    /// Devices, of one node or all.
    Devices(Option<String>),
    /// The state of every device, one character each, per node (the status
    /// page's grid: a byte per device instead of its whole view).
    DeviceGrid,
    Drain(String),
    Undrain(String),
    RestartDevice {
        node: String,
        device: String,
    },
    KillDevice {
        node: String,
        device: String,
    },
    /// Let a device blocklisted for failing attempts in a row take work again.
    Unblock {
        node: String,
        device: String,
    },
    /// Store a workflow recipe as the next version of its name.
    WorkflowAdd(crate::workflow::Workflow),
    /// Every workflow: name, latest version, steps of the latest.
    Workflows,
    /// One workflow at a version (`None`: the latest).
    Workflow {
        name: String,
        version: Option<u32>,
    },
    /// Tasks `from ..` of a session, at most `limit` ([`MAX_TASKS_PAGE`]).
    Tasks {
        session: String,
        from: u64,
        limit: u32,
    },
    /// Store a pipeline as the next version of its name (docs/pipelines.md).
    PipelineAdd(Box<crate::pipeline::PipelineSpec>),
    /// Start a run of a pipeline.
    PipelineRun {
        name: String,
        params: BTreeMap<String, String>,
        correlation_id: Option<String>,
    },
    /// Every pipeline.
    Pipelines,
    /// One pipeline: its view and its latest version.
    Pipeline(String),
    /// The runs of a pipeline kept, oldest first (without their stages).
    PipelineRuns(String),
    /// One run with its stages.
    PipelineShow(String),
    PipelineCancel(String),
    PipelineRerun(String),
    /// Events of the master's bus after `after`, at most `limit` (a node
    /// whose events actor missed some fills the gap).
    Events {
        after: u64,
        limit: u32,
    },
}

/// Most tasks one [`AdminRequest::Tasks`] answers.
pub const MAX_TASKS_PAGE: u32 = 10_000;

/// Where one task stands, as the session page and `orchctl logs` see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub task: u64,
    /// Its whole range.
    pub frames: FrameRange,
    /// `pending`, `running`, `done` or `failed`.
    pub state: String,
    /// Its current (or last) attempt.
    pub attempt: u32,
    /// Produced once after a loss or failure, or requeued.
    pub replayed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every attempt known to have run, oldest first.
    pub attempts: Vec<AttemptView>,
}

/// One attempt of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub node: String,
    pub device: String,
    /// `running`, `produced`, `failed`, or why it moved on (a loss reason).
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
}

/// Answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminReply {
    Status(ClusterStatus),
    Workers(Vec<WorkerView>),
    Submitted {
        id: String,
    },
    Sessions(Vec<SessionView>),
    Session(SessionView),
    Manifest(Box<Manifest>),
    Cancelled {
        id: String,
    },
    Devices(Vec<DeviceView>),
    DeviceGrid(Vec<NodeGrid>),
    /// A mutating command succeeded; what was done.
    Done(String),
    /// A recipe stored, as this version of its name.
    WorkflowAdded {
        name: String,
        version: u32,
    },
    /// The latest version of every workflow.
    Workflows(Vec<crate::workflow::Workflow>),
    Workflow(Box<crate::workflow::Workflow>),
    Tasks(Vec<TaskView>),
    PipelineAdded {
        name: String,
        version: u32,
    },
    PipelineStarted {
        run: String,
        correlation_id: String,
    },
    Pipelines(Vec<crate::pipeline::PipelineView>),
    Pipeline(Box<(crate::pipeline::PipelineView, crate::pipeline::PipelineSpec)>),
    PipelineRuns(Vec<crate::pipeline::Run>),
    PipelineRun(Box<crate::pipeline::Run>),
    Events(Vec<crate::events::BusEvent>),
    NotFound(String),
    Error(String),
}

/// Worker membership state as the master holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    Healthy,
    Unhealthy,
    Unregistered,
}

impl MemberState {
    pub const ALL: [MemberState; 3] = [Self::Healthy, Self::Unhealthy, Self::Unregistered];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Unregistered => "unregistered",
        }
    }
}

/// Why a worker left the healthy state (docs/design/architecture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownReason {
    HeartbeatTimeout,
    NodeDown,
    Unregistered,
}

impl DownReason {
    pub const ALL: [DownReason; 3] = [Self::HeartbeatTimeout, Self::NodeDown, Self::Unregistered];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::NodeDown => "node_down",
            Self::Unregistered => "unregistered",
        }
    }

    /// `unregistered` is a clean leave, every other reason is a failure.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::Unregistered)
    }
}

/// Why an attempt was lost, stopped or replayed: the `reason` of a
/// [`ReplayRecord`], of [`ToWorker::Drop`] and of the scheduler's failover
/// events and commands. A [`DownReason`] is why a worker left the healthy
/// state; the loss of its attempts carries it on as one of these.
///
/// It reads and writes as the one string earlier versions stored (the
/// manifest's `replay`, the master's store, the `reason` metric label):
/// `node_down`, or `kind: detail` where a reason carries text. A string no
/// variant names reads as [`LossReason::Other`] and writes back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum LossReason {
    /// The worker's connection closed, or the node registered again under
    /// a new epoch (`node_down`).
    NodeDown,
    /// The worker missed its heartbeats (`heartbeat_timeout`).
    HeartbeatTimeout,
    /// The worker left cleanly (`unregistered`).
    Unregistered,
    /// The master restarted: the attempt's node was not back with it, or
    /// the attempt may have run without the ledger knowing
    /// (`master_restart`, or `master_restart: {detail}`).
    MasterRestart { detail: Option<String> },
    /// A node known before a master restart did not register again in
    /// time (`resume_timeout`).
    ResumeTimeout,
    /// The attempt said nothing past its deadline (`no_answer`).
    NoAnswer,
    /// An operator restarted its device (`device_restart`).
    DeviceRestart,
    /// An operator killed its device (`device_killed`).
    DeviceKilled,
    /// Its device left the worker: a discovery source no longer lists it
    /// (`device_gone`).
    DeviceGone,
    /// Its device gave no sign of life for `grace_wait_ms`
    /// (`device_unresponsive: {detail}`).
    DeviceUnresponsive { detail: String },
    /// Its session was cancelled (`cancelled`).
    Cancelled,
    /// An operator asked for a produced range to run again
    /// (`orchctl requeue`, `operator_requeue`).
    OperatorRequeue,
    /// A result came for an attempt that is no longer current (`stale attempt`).
    StaleAttempt,
    /// The attempt reported a failure, `detail` its error
    /// (`attempt failed: {detail}`).
    AttemptFailed { detail: String },
    /// A string no variant names, as it was read. Never built otherwise.
    Other(String),
}

impl LossReason {
    /// The reasons a failover can carry, as the `reason` label values of
    /// `metrics::FAILOVERS` list them.
    pub const FAILOVERS: [LossReason; 10] = [
        Self::NodeDown,
        Self::HeartbeatTimeout,
        Self::Unregistered,
        Self::DeviceRestart,
        Self::DeviceKilled,
        Self::DeviceGone,
        Self::DeviceUnresponsive {
            detail: String::new(),
        },
        Self::NoAnswer,
        Self::MasterRestart { detail: None },
        Self::ResumeTimeout,
    ];

    /// The kind, without detail: the `reason` metric label (`other` for
    /// [`LossReason::Other`], so that labels stay bounded).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NodeDown => "node_down",
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::Unregistered => "unregistered",
            Self::MasterRestart { .. } => "master_restart",
            Self::ResumeTimeout => "resume_timeout",
            Self::NoAnswer => "no_answer",
            Self::DeviceRestart => "device_restart",
            Self::DeviceKilled => "device_killed",
            Self::DeviceGone => "device_gone",
            Self::DeviceUnresponsive { .. } => "device_unresponsive",
            Self::Cancelled => "cancelled",
            Self::OperatorRequeue => "operator_requeue",
            Self::StaleAttempt => "stale attempt",
            Self::AttemptFailed { .. } => "attempt failed",
            Self::Other(_) => "other",
        }
    }

    /// The free text the reason carries, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::MasterRestart { detail } => detail.as_deref(),
            Self::AttemptFailed { detail } | Self::DeviceUnresponsive { detail } => Some(detail),
            _ => None,
        }
    }

    /// The variant without detail whose string is `s`.
    fn plain(s: &str) -> Option<Self> {
        Some(match s {
            "node_down" => Self::NodeDown,
            "heartbeat_timeout" => Self::HeartbeatTimeout,
            "unregistered" => Self::Unregistered,
            "master_restart" => Self::MasterRestart { detail: None },
            "resume_timeout" => Self::ResumeTimeout,
            "no_answer" => Self::NoAnswer,
            "device_restart" => Self::DeviceRestart,
            "device_killed" => Self::DeviceKilled,
            "device_gone" => Self::DeviceGone,
            "cancelled" => Self::Cancelled,
            "operator_requeue" => Self::OperatorRequeue,
            "stale attempt" => Self::StaleAttempt,
            _ => return None,
        })
    }
}

impl From<DownReason> for LossReason {
    fn from(r: DownReason) -> Self {
        match r {
            DownReason::HeartbeatTimeout => Self::HeartbeatTimeout,
            DownReason::NodeDown => Self::NodeDown,
            DownReason::Unregistered => Self::Unregistered,
        }
    }
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Other(s) => f.write_str(s),
            r => match r.detail() {
                Some(d) => write!(f, "{}: {d}", r.as_str()),
                None => f.write_str(r.as_str()),
            },
        }
    }
}

impl From<LossReason> for String {
    fn from(r: LossReason) -> Self {
        match r {
            LossReason::Other(s) => s,
            r => r.to_string(),
        }
    }
}

/// Reads the string [`LossReason`]'s `Display` writes, or any other (as
/// [`LossReason::Other`]): whatever an earlier version stored decodes.
impl From<String> for LossReason {
    fn from(s: String) -> Self {
        if let Some(r) = Self::plain(&s) {
            return r;
        }
        match s.split_once(": ") {
            Some(("master_restart", d)) => Self::MasterRestart {
                detail: Some(d.to_string()),
            },
            Some(("attempt failed", d)) => Self::AttemptFailed {
                detail: d.to_string(),
            },
            Some(("device_unresponsive", d)) => Self::DeviceUnresponsive {
                detail: d.to_string(),
            },
            _ => Self::Other(s),
        }
    }
}

/// One worker, as `orchctl workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub node: String,
    pub advertise: String,
    pub state: MemberState,
    pub reason: Option<DownReason>,
    pub epoch: u64,
    /// Milliseconds since the last heartbeat (or registration).
    pub heartbeat_age_ms: u64,
    pub status: WorkerStatus,
    pub error: Option<String>,
    pub queue_ratio: f32,
    /// Mean GPU utilisation (0 to 1) its discovery sources reported; 0 without one.
    #[serde(default)]
    pub gpu_usage: f32,
    /// The frame it finished last (any session), from its heartbeat.
    #[serde(default)]
    pub last_frame: Option<u64>,
    pub active_tasks: u32,
    pub max_concurrency: u32,
    pub capabilities: Capabilities,
    /// Shared with the master's membership: a view costs no copy of them.
    pub devices: std::sync::Arc<[DeviceInfo]>,
    /// How many times this node registered with this master.
    pub registrations: u64,
    /// Address of its data plane (files and logs).
    #[serde(default)]
    pub data: Option<String>,
}

/// `orchctl status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub master: String,
    pub protocol_version: u32,
    pub uptime_ms: u64,
    pub workers_total: u32,
    pub workers_healthy: u32,
    pub workers_unhealthy: u32,
    pub workers_unregistered: u32,
    pub devices_total: u32,
    pub queue_depth_summary: f32,
    /// Most recent membership failures, newest last.
    pub recent_failures: Vec<FailureRecord>,
    pub sessions: Vec<SessionView>,
    /// Healthy workers with work in flight / without.
    pub workers_active: u32,
    pub workers_idle: u32,
    /// Most recent reassignments (newest last): session, range, node, reason.
    pub recent_failovers: Vec<FailoverRecord>,
}

/// A reassignment, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub session: String,
    pub replay: ReplayRecord,
}

/// A recorded transition out of `healthy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    pub node: String,
    pub epoch: u64,
    pub reason: DownReason,
    /// Milliseconds since the master started.
    pub at_ms: u64,
}

// ---- sessions and tasks (docs/sessions.md) ----

/// A half-open range of frames `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FrameRange {
    pub start: u64,
    pub end: u64,
}

impl FrameRange {
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A half-open range of global IDs `[lo, hi)` reserved for one task attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdRange {
    pub lo: u64,
    pub hi: u64,
}

impl IdRange {
    pub fn len(&self) -> u64 {
        self.hi.saturating_sub(self.lo)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn overlaps(&self, other: &IdRange) -> bool {
        self.lo < other.hi && other.lo < self.hi
    }
}

/// What runs a task on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ExecutorSpec {
    /// Does nothing; completes at once (tests, benchmarks).
    Noop,
    /// Sleeps `ms_per_frame` for every frame.
    Sleep { ms_per_frame: u64 },
    /// An external program; `argv` and `env` values may hold placeholders
    /// such as `{start}` (docs/sessions.md, the command executor).
    Command {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// An executor that a program embedding orch registered under `name`
    /// (`kind = "rust:<name>"`, docs/sessions.md, embedding orch). Only the
    /// devices of a node that registered it take its tasks: the session
    /// requires [`ExecutorSpec::requirement`].
    Rust {
        name: String,
        /// The session's `[executor.params]`, for the executor to read.
        #[serde(default)]
        params: BTreeMap<String, String>,
    },
    /// A workflow recipe (docs/workflows.md): its steps run in order on one
    /// device. A session file names it (`version` 0: the latest, with no
    /// steps); the master fills in the version it stores at submit time.
    Workflow(Box<crate::workflow::Workflow>),
}

/// The `kind` of a registered executor is this prefix and its name.
pub const RUST_EXECUTOR_PREFIX: &str = "rust:";

/// Longest name of a registered executor.
pub const MAX_EXECUTOR_NAME: usize = 64;

/// Whether `name` may name a registered executor: 1 to
/// [`MAX_EXECUTOR_NAME`] characters from `a-z 0-9 _ -`.
pub fn valid_executor_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EXECUTOR_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The capability that says a device can run registered executor `name`:
/// `executor.rust:<name> = "yes"`. A node gives it to every device when
/// the program registered `name`; a session of kind `rust:<name>` requires it.
pub fn executor_capability(name: &str) -> (String, CapValue) {
    (
        format!("executor.{RUST_EXECUTOR_PREFIX}{name}"),
        CapValue::Str("yes".into()),
    )
}

/// The name in a session file's `kind = "rust:<name>"`: `None` when `kind`
/// is not of that form, `Err` saying what is wrong with an invalid name.
pub fn rust_executor_name(kind: &str) -> Option<Result<&str, String>> {
    let name = kind.strip_prefix(RUST_EXECUTOR_PREFIX)?;
    Some(if valid_executor_name(name) {
        Ok(name)
    } else {
        Err(format!(
            "invalid executor name `{name}` in `{kind}`: expected 1 to {MAX_EXECUTOR_NAME} characters from `a-z 0-9 _ -`"
        ))
    })
}

impl ExecutorSpec {
    /// Whether its tasks write files into their output folder (the folder
    /// is created for them, and a failed attempt's files are quarantined).
    pub fn writes_files(&self) -> bool {
        matches!(
            self,
            Self::Command { .. } | Self::Rust { .. } | Self::Workflow(_)
        )
    }

    /// `name@version` of a workflow session.
    pub fn workflow_label(&self) -> Option<String> {
        match self {
            Self::Workflow(w) => Some(w.label()),
            _ => None,
        }
    }

    /// The executor's family, as manifests and logs name it: `builtin:noop`,
    /// `builtin:sleep`, `command`, or `rust` for every registered executor
    /// ([`ExecutorSpec::kind`] has the whole `rust:<name>`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Noop => "builtin:noop",
            Self::Sleep { .. } => "builtin:sleep",
            Self::Command { .. } => "command",
            Self::Rust { .. } => "rust",
            Self::Workflow(_) => "workflow",
        }
    }

    /// The `kind` of the session file: [`ExecutorSpec::name`], or `rust:<name>`.
    pub fn kind(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Self::Rust { name, .. } => format!("{RUST_EXECUTOR_PREFIX}{name}").into(),
            other => other.name().into(),
        }
    }

    /// What a device must have to run this executor, on top of the
    /// session's `[require]`: [`executor_capability`] for a registered one.
    pub fn requirement(&self) -> Option<(String, CapValue)> {
        match self {
            Self::Rust { name, .. } => Some(executor_capability(name)),
            _ => None,
        }
    }

    /// The session's `[executor.params]` (registered executors only).
    pub fn params(&self) -> Option<&BTreeMap<String, String>> {
        match self {
            Self::Rust { params, .. } => Some(params),
            _ => None,
        }
    }
}

/// Default of [`SessionSpec::blocklist_after`] (as Flamenco's).
pub const DEFAULT_BLOCKLIST_AFTER: u32 = 3;
/// Devices blocklisted for a session after which their whole node is.
pub const BLOCKLIST_NODE_AFTER: usize = 3;
/// Attempts in a row, of any sessions, that failed on a device after which
/// it takes no work at all until an operator restarts or unblocks it.
pub const DEVICE_BLOCKLIST_IN_A_ROW: u32 = 5;

/// Default of [`SessionSpec::max_losses`].
pub const DEFAULT_MAX_LOSSES: u32 = 10;

fn default_max_losses() -> u32 {
    DEFAULT_MAX_LOSSES
}

/// A session that waits for devices while sessions of higher priority
/// take them rises one priority level per this many milliseconds of
/// waiting (back to its own once it gets a device): a low-priority session
/// is never starved for good.
pub const PRIORITY_AGING_MS: u64 = 60_000;

/// A validated session, as submitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSpec {
    pub name: String,
    pub frames: FrameRange,
    /// Work items, when the session is a list: frame `i` is `items[i]`.
    pub items: Option<Vec<String>>,
    pub chunk_frames: u64,
    pub id_chunk_size: u64,
    /// Hard requirements: a device must have every capability with this value.
    pub require: Capabilities,
    /// Preference weights: a device whose capability is set scores the weight.
    pub prefer: BTreeMap<String, i64>,
    pub max_attempts: u32,
    /// Losses (its worker died, hung or was cut off, its device was
    /// restarted) after which a range fails for good; losses do not count
    /// against `max_attempts`.
    #[serde(default = "default_max_losses")]
    pub max_losses: u32,
    pub backoff_ms: u64,
    pub backoff_max_ms: u64,
    pub executor: ExecutorSpec,
    /// Per-task timeout.
    pub timeout_ms: u64,
    /// Higher runs first; equal priorities share devices round-robin (see
    /// [`PRIORITY_AGING_MS`]).
    #[serde(default)]
    pub priority: i32,
    /// At most this many attempts of the session in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_devices: Option<u32>,
    /// A device on which this many of the session's attempts failed (or
    /// were turned away) takes none of its tasks any more; `None`:
    /// [`DEFAULT_BLOCKLIST_AFTER`], 0: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocklist_after: Option<u32>,
    /// The client's name for this submission (HTTP `Idempotency-Key`):
    /// the same key submitted again returns the session it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Where the outputs are gathered (docs/collection.md): `None`, the
    /// master's node; `"none"`, nowhere (shared storage); else a node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collect: Option<String>,
    /// The trigger's correlation id (a pipeline run's, or the submitter's
    /// `X-Correlation-Id`): it follows the session into its events and logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// What [`SessionSpec::collect`] means for a session's view: `""`, its
/// outputs are not gathered (`collect = "none"`, or its executor writes
/// no files); [`COLLECT_MASTER`], on the master's node; else a node.
pub fn collector_of(spec: &SessionSpec) -> String {
    match spec.collect.as_deref() {
        _ if !spec.executor.writes_files() => String::new(),
        Some("none") => String::new(),
        None => COLLECT_MASTER.to_string(),
        Some(node) => node.to_string(),
    }
}

/// The collector of a session gathered on the master's node.
pub const COLLECT_MASTER: &str = "@master";

/// One assignment, master -> worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub session: String,
    pub session_name: String,
    pub task: u64,
    pub attempt: u32,
    pub frames: FrameRange,
    pub ids: IdRange,
    pub device: String,
    pub executor: ExecutorSpec,
    pub timeout_ms: u64,
    /// The work items of `frames`, when the session is a list.
    pub items: Vec<String>,
    /// The session's correlation id (its own id when it has none).
    #[serde(default)]
    pub correlation_id: String,
}

impl TaskSpec {
    /// The attempt this assignment is.
    pub fn key(&self) -> AttemptKey {
        AttemptKey {
            session: self.session.clone(),
            task: self.task,
            attempt: self.attempt,
        }
    }
}

/// Identifies one attempt of one task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptKey {
    pub session: String,
    pub task: u64,
    pub attempt: u32,
}

/// An output file, relative to its attempt's output folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Worker -> master: frames finished so far in one attempt (docs/design/architecture.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskProgress {
    pub node: String,
    pub epoch: u64,
    pub key: AttemptKey,
    /// Frames finished from the start of the attempt's range.
    pub frames_done: u64,
    pub last_id_used: Option<u64>,
    /// Output files that appeared since the previous report.
    pub outputs: Vec<OutputFile>,
    /// Position in the worker's outbox; the master acknowledges it with [`ToWorker::Ack`].
    #[serde(default)]
    pub seq: u64,
}

/// Worker -> master: an attempt ended (docs/design/architecture.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub node: String,
    pub epoch: u64,
    pub key: AttemptKey,
    pub device: String,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub finished_ms: u64,
    pub last_id_used: Option<u64>,
    /// Output files not reported by progress.
    pub outputs: Vec<OutputFile>,
    pub outcome: TaskOutcome,
    /// Position in the worker's outbox; the master acknowledges it with [`ToWorker::Ack`].
    #[serde(default)]
    pub seq: u64,
    /// What each step of a workflow did (empty for other executors).
    #[serde(default)]
    pub steps: Vec<crate::workflow::StepRecord>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum TaskOutcome {
    Completed,
    Failed {
        /// Frames finished before the failure.
        frames_done: u64,
        error: String,
    },
    /// The device turned the task away (a workflow step with
    /// `on_failure = "skip_device"`): it goes to another device without
    /// spending one of its `max_attempts` (it counts against `max_losses`).
    TurnedAway {
        /// Frames finished before (kept, as for a failure).
        frames_done: u64,
        error: String,
    },
    /// The device was offline when the attempt came to start (its worker
    /// found it so: see docs/workflows.md, Online and offline): it did not
    /// run, it goes to another device without spending an attempt, and it
    /// is counted `skipped_offline` for the device.
    SkippedOffline {
        error: String,
    },
    /// The device gave no sign of life for `grace_wait_ms` in a workflow
    /// step: the attempt failed there (it spends an attempt, and the
    /// manifest's `replay` records its range moving on with reason
    /// `device_unresponsive`).
    Unresponsive {
        /// Frames finished before (kept, as for a failure).
        frames_done: u64,
        error: String,
    },
}

impl TaskOutcome {
    /// The error of an attempt that did not complete.
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Completed => None,
            Self::Failed { error, .. }
            | Self::TurnedAway { error, .. }
            | Self::SkippedOffline { error }
            | Self::Unresponsive { error, .. } => Some(error),
        }
    }
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    Running,
    Completed,
    Partial,
    Failed,
    Cancelled,
}

impl SessionState {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Running)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A session's progress, as `orchctl sessions` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: String,
    pub name: String,
    pub state: SessionState,
    /// Why nothing runs, when the session waits (no matching device, ...).
    pub waiting: Option<String>,
    pub frames_total: u64,
    pub frames_done: u64,
    pub frames_failed: u64,
    pub tasks_total: u64,
    pub tasks_completed: u64,
    pub tasks_running: u64,
    pub tasks_pending: u64,
    pub tasks_failed: u64,
    pub retries: u64,
    pub failovers: u64,
    pub stale_rejected: u64,
    /// Milliseconds since submission (to the end, once final).
    pub elapsed_ms: u64,
    /// An operator paused it: it gets nothing new.
    #[serde(default)]
    pub paused: bool,
    #[serde(default)]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_devices: Option<u32>,
    /// Tasks that came to a device (`node/device`) its worker found
    /// offline, so they ran elsewhere.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_offline: BTreeMap<String, u64>,
    /// Where its outputs are gathered ([`collector_of`]).
    #[serde(default)]
    pub collect: String,
}

/// The result of a session (docs/sessions.md, the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub session: String,
    pub name: String,
    pub state: SessionState,
    pub frames: FrameRange,
    pub executor: String,
    /// Unix milliseconds.
    pub submitted_ms: u64,
    pub finished_ms: Option<u64>,
    /// Produced ranges, sorted by frame; together they cover each done frame once.
    pub ranges: Vec<ManifestRange>,
    /// Ranges produced again after a failure, and why.
    pub replay: Vec<ReplayRecord>,
    /// Ranges that exhausted their attempts, with the last error.
    pub failed: Vec<FailedRange>,
    /// Failed ranges an operator ran again (`orchctl retry`), as they had
    /// failed: the history of `failed`.
    #[serde(default)]
    pub retried: Vec<FailedRange>,
    /// The workflow and version a workflow session ran (`name@version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Tasks each device turned away (`device` is `node/device`): by a
    /// workflow step with `on_failure = "skip_device"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub turned_away: BTreeMap<String, u64>,
    /// Tasks that came to a device (`node/device`) its worker found
    /// offline, so they ran elsewhere (no attempt spent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped_offline: BTreeMap<String, u64>,
    /// Why each device (`node/device`) last turned a task away or skipped
    /// one: a failed preflight or health gate, offline.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failure_reasons: BTreeMap<String, String>,
    /// Devices (`node/device`) and nodes (`node`) that take none of the
    /// session's tasks any more, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocklisted: Vec<Blocklisting>,
    /// Where the outputs are gathered ([`collector_of`]).
    #[serde(default)]
    pub collect: String,
    /// What the collector gathered, file by file (docs/collection.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<Collection>,
}

/// A session's collected outputs, as its collector has them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    /// The node that gathers them.
    pub node: String,
    /// Its folder, relative to that node's `data_dir`.
    pub dir: String,
    /// Every produced output is `collected`, `failed` or `conflict`, and
    /// the session is over.
    pub settled: bool,
    pub collected: u64,
    pub pending: u64,
    pub failed: u64,
    pub uncollected: u64,
    pub conflicts: u64,
    /// One entry per output of a produced range, by file name.
    pub files: Vec<CollectedFile>,
}

/// Where one output stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectState {
    /// Not yet here; being fetched or waiting to be.
    Pending,
    /// Here, and its sha256 matched the manifest's.
    Collected,
    /// Its source cannot be reached (its node is down or gone); tried again.
    Uncollected,
    /// It did not match its sha256 after every try: not merged.
    Failed,
    /// Another range wrote the same name first: not merged.
    Conflict,
}

/// One output of a produced range at the collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectedFile {
    /// The program's own name for it (relative, as in `outputs`).
    pub name: String,
    pub task: u64,
    pub attempt: u32,
    /// The node that produced it.
    pub node: String,
    pub size: u64,
    pub sha256: String,
    pub state: CollectState,
    /// Transfers tried.
    pub tries: u32,
    /// Unix milliseconds, once collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected_ms: Option<u64>,
    /// Why it is not collected, or what delayed it (a node that was down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A device or node blocklisted for a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocklisting {
    /// `node/device`, or `node` for a whole node.
    pub what: String,
    pub reason: String,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// One produced range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRange {
    pub frames: FrameRange,
    pub task: u64,
    pub attempt: u32,
    pub node: String,
    pub device: String,
    /// The attempt's ID chunk, and the part of it that was used (retired).
    pub ids: IdRange,
    pub ids_used: Option<u64>,
    pub outputs: Vec<OutputFile>,
    /// Unix milliseconds; `finished_ms` is when the master learnt the frames were done.
    pub started_ms: u64,
    pub finished_ms: u64,
    /// The output folder, relative to the node's `data_dir`.
    pub out_dir: String,
    /// A workflow session's: the workflow and version that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// A workflow session's: what each step of the attempt did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::workflow::StepRecord>,
}

/// A range reassigned after a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayRecord {
    pub frames: FrameRange,
    pub task: u64,
    pub old_attempt: u32,
    pub new_attempt: u32,
    pub node: String,
    pub device: String,
    pub reason: LossReason,
}

/// A range that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedRange {
    pub frames: FrameRange,
    pub task: u64,
    pub attempts: u32,
    pub error: String,
    /// A workflow session's: what each step of the last attempt did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<crate::workflow::StepRecord>,
    /// Where its last attempt (number `attempts`) ran, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Its last attempt's log on the admin API, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

/// The admin API path of one attempt's log (docs/logs.md).
pub fn log_route(session: &str, task: u64, attempt: u32) -> String {
    format!("/v1/sessions/{session}/tasks/{task}/log?attempt={attempt}")
}

/// Output folder of an attempt, relative to `data_dir` (docs/sessions.md).
pub fn out_dir(key: &AttemptKey, node: &str, device: &str) -> String {
    format!(
        "out/{}/{node}/{device}/{}-a{}",
        key.session, key.task, key.attempt
    )
}

/// What a device is doing, as the master sees it: online (and idle) or
/// offline, or busy, blocklisted, quarantined; the detail is the device
/// view's `last_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// Online and running nothing.
    #[serde(rename = "online", alias = "idle")]
    Idle,
    Busy,
    /// Its node is unhealthy or gone, its worker finds it offline, or a
    /// discovery source no longer lists it.
    Offline,
    /// Killed by an operator; takes no work until restarted.
    Quarantined,
    /// Failed [`DEVICE_BLOCKLIST_IN_A_ROW`] attempts in a row: takes no
    /// work until an operator restarts or unblocks it.
    Blocklisted,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "online",
            Self::Busy => "busy",
            Self::Offline => "offline",
            Self::Quarantined => "quarantined",
            Self::Blocklisted => "blocklisted",
        }
    }
}

/// One node's devices for the status page: `states` has one character per
/// device, in the order of `GET /v1/devices?node=…`: `i` online and idle,
/// `b` busy, `o` offline, `q` quarantined, `x` blocklisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeGrid {
    pub node: String,
    pub states: String,
}

impl DeviceState {
    /// Its character in a [`NodeGrid`].
    pub fn grid_char(self) -> char {
        match self {
            Self::Idle => 'i',
            Self::Busy => 'b',
            Self::Offline => 'o',
            Self::Quarantined => 'q',
            Self::Blocklisted => 'x',
        }
    }
}

/// An attempt on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRef {
    pub session: String,
    pub task: u64,
    pub attempt: u32,
    pub frames: FrameRange,
    pub frames_done: u64,
}

/// One device, as `orchctl devices` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    pub node: String,
    pub device: String,
    pub state: DeviceState,
    /// The running attempt first, then the queued one.
    pub tasks: Vec<TaskRef>,
    pub tasks_done: u64,
    pub last_error: Option<String>,
    pub capabilities: Capabilities,
}
