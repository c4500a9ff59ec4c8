//! Every type that crosses a node boundary, and the protocol version.
//!
//! Messages are encoded with rmp-serde (see [`crate::wire`]). A peer that speaks
//! another [`PROTOCOL_VERSION`] is refused at registration with a clear error on
//! both sides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the worker <-> master protocol. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 3;

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
        reason: String,
    },
    /// Restart a device actor (after its attempts were dropped).
    RestartDevice { device: String },
    /// These outbox entries (progress and results, by `seq`) are recorded in
    /// the master's store: the worker may forget them.
    Ack { seqs: Vec<u64> },
}

/// Admin queries answered by the master (docs/operating.md). Any node forwards them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    Status,
    Workers,
    Submit(SessionSpec),
    Sessions,
    Session(String),
    Manifest(String),
    Cancel(String),
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
    pub active_tasks: u32,
    pub max_concurrency: u32,
    pub capabilities: Capabilities,
    pub devices: Vec<DeviceInfo>,
    /// How many times this node registered with this master.
    pub registrations: u64,
}

/// `orchctl status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl ExecutorSpec {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Noop => "builtin:noop",
            Self::Sleep { .. } => "builtin:sleep",
            Self::Command { .. } => "command",
        }
    }
}

/// Default of [`SessionSpec::max_losses`].
pub const DEFAULT_MAX_LOSSES: u32 = 10;

fn default_max_losses() -> u32 {
    DEFAULT_MAX_LOSSES
}

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
    /// The client's name for this submission (HTTP `Idempotency-Key`):
    /// the same key submitted again returns the session it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

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
    pub reason: String,
}

/// A range that failed for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedRange {
    pub frames: FrameRange,
    pub task: u64,
    pub attempts: u32,
    pub error: String,
}

/// Output folder of an attempt, relative to `data_dir` (docs/sessions.md).
pub fn out_dir(key: &AttemptKey, node: &str, device: &str) -> String {
    format!(
        "out/{}/{node}/{device}/{}-a{}",
        key.session, key.task, key.attempt
    )
}

/// What a device is doing, as the master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Idle,
    Busy,
    /// Its node is unhealthy or gone.
    Offline,
    /// Killed by an operator; takes no work until restarted.
    Quarantined,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Offline => "offline",
            Self::Quarantined => "quarantined",
        }
    }
}

/// One node's devices for the status page: `states` has one character per
/// device, in the order of `GET /v1/devices?node=…`: `i` idle, `b` busy,
/// `o` offline, `q` quarantined.
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
