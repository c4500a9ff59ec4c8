//! Every type that crosses a node boundary, and the protocol version.
//!
//! Messages are encoded with rmp-serde (see [`crate::wire`]). A peer that speaks
//! another [`PROTOCOL_VERSION`] is refused at registration with a clear error on
//! both sides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the worker <-> master protocol. Bump on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Process group every master joins (cluster edge; see SPEC §3).
pub const MASTER_GROUP: &str = "orch.master";

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

/// Worker -> master: join the cluster (SPEC §5.1).
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
}

/// Worker health as the worker reports it (SPEC §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    Ok,
    /// Alive but must receive no new work (storage unreachable, ...).
    Error,
    /// Finishing current work, taking nothing new.
    Draining,
}

/// Worker -> master, every `heartbeat_ms` (SPEC §5.2).
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
}

/// Admin queries answered by the master (SPEC §11). Any node forwards them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminRequest {
    Status,
    Workers,
}

/// Answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AdminReply {
    Status(ClusterStatus),
    Workers(Vec<WorkerView>),
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

/// Why a worker left the healthy state (SPEC §5.3).
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
