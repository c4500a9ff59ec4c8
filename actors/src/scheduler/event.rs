//! What the scheduler is told ([`SchedEvent`], recorded in the master's
//! store before it is acted on) and what it asks the master to do
//! ([`SchedCommand`]).

use super::*;

/// Something that happened. The master records every event in its store,
/// with its time, before acting on the commands it returns: replaying them
/// in order rebuilds the same ledger (docs/design/durability.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SchedEvent {
    NodeUp {
        node: String,
        epoch: u64,
        max_concurrency: u32,
        devices: Vec<DeviceInfo>,
        /// Attempts the worker still holds: after a master restart they
        /// continue; the node's other attempts are requeued.
        #[serde(default)]
        held: Vec<AttemptKey>,
    },
    NodeDown {
        node: String,
        epoch: u64,
        reason: LossReason,
    },
    /// The node takes new work (`true`) or not (error status, draining).
    NodeAccepting {
        node: String,
        accepting: bool,
    },
    Submit {
        id: String,
        spec: SessionSpec,
    },
    /// An operator drains (`true`) or undrains a node.
    Drain {
        node: String,
        drained: bool,
    },
    /// A worker's devices now (its [`crate::protocol::DeviceReport`]):
    /// devices it no longer lists are gone (their attempts requeued with
    /// reason `device_gone`), new ones join, and those `offline` take no
    /// work until a later report has them online.
    Devices {
        node: String,
        epoch: u64,
        devices: Vec<DeviceInfo>,
        offline: Vec<(String, String)>,
    },
    /// An operator restarts (`disable = false`) or kills a device: its attempts are requeued.
    DeviceDown {
        node: String,
        device: String,
        reason: LossReason,
        disable: bool,
    },
    Cancel {
        session: String,
    },
    Progress(TaskProgress),
    Result(TaskResult),
    Tick,
    /// A finished session's manifest is on disk: its ledger leaves memory.
    /// Its view stays (from counters); its manifest is read from disk.
    Evict {
        session: String,
    },
    /// The master did not run for `ms` (see `MemberCommand::Stalled`):
    /// every attempt's deadline, and every resume deadline, moves by as much.
    Stalled {
        ms: u64,
    },
    /// The master restarted and replayed its store: no ID below `id_floor`
    /// is issued again, and the nodes it knew have `within_ms` to register
    /// again before their attempts are requeued.
    Resume {
        id_floor: u64,
        within_ms: u64,
    },
    /// Pending tasks set aside for `node`, the master's own: the master may
    /// send them there before the commit of their cause, because this event
    /// is committed first (see [`Scheduler::reservation`]). Other nodes take
    /// them only when nothing else is pending.
    Reserve {
        node: String,
        /// By session: task indexes, in the order they were pending.
        tasks: Vec<(String, Vec<u32>)>,
    },
    /// From now on one event places at most `max` tasks; what is left is
    /// placed by the [`SchedEvent::Place`] events that follow (the master
    /// records this when it starts, so a replay places exactly as it did).
    PlaceBudget {
        max: u32,
    },
    /// An operator lets a device blocklisted for failing attempts in a row
    /// take work again (a restart of the device does too).
    Unblock {
        node: String,
        device: String,
    },
    /// An operator stored a workflow recipe as this version of its name
    /// (the master checked it and numbered it: the next after the latest).
    WorkflowAdded(crate::workflow::Workflow),
    /// From now on only [`SchedEvent::Place`] places: any other event leaves
    /// what it frees or adds for the next `Place`, which the master queues
    /// behind what waits in its mailbox. A flood of results then costs one
    /// placement slice per pass through the mailbox, and what arrives waits
    /// behind at most one slice's worth of new work and its answers
    /// (recorded at start like `PlaceBudget`).
    PlaceInPasses,
    /// Place what the last event left for lack of budget
    /// ([`Scheduler::wants_to_place`]).
    Place,
    /// An operator pauses (`true`) or resumes a session: a paused one gets
    /// nothing new; its attempts in flight finish.
    Pause {
        session: String,
        paused: bool,
    },
    /// An operator runs the failed ranges of a `partial` or `failed`
    /// session again, with fresh attempts and ID chunks.
    Retry {
        session: String,
    },
    /// An operator runs a produced range again: its ranges are replaced,
    /// their outputs quarantined. `produced` names them when the session's
    /// ledger left memory (read from its manifest on disk); otherwise the
    /// ledger knows them and it is empty.
    Requeue {
        session: String,
        task: u64,
        #[serde(default)]
        produced: Vec<ProducedRange>,
    },
    /// An operator stored a pipeline as this version of its name (the
    /// master checked it and numbered it).
    PipelineDefined(Box<crate::pipeline::PipelineSpec>),
    /// Start a run of a pipeline (manually; schedules and events start
    /// theirs from `Tick`). The run's id follows from the ledger.
    PipelineRun {
        pipeline: String,
        params: BTreeMap<String, String>,
        correlation_id: Option<String>,
    },
    /// Cancel a run: its running sessions are cancelled.
    PipelineCancel {
        run: String,
    },
    /// Run the failed, skipped and cancelled stages of a finished run again.
    PipelineRerun {
        run: String,
    },
}

/// A range an attempt produced, as a requeue needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducedRange {
    pub frames: FrameRange,
    pub attempt: u32,
    pub node: String,
    pub device: String,
}

/// What the master must do.
#[derive(Debug, Clone, PartialEq)]
pub enum SchedCommand {
    Assign {
        node: String,
        task: TaskSpec,
        /// Taken from the tasks reserved for `node` ([`SchedEvent::Reserve`]).
        reserved: bool,
    },
    /// Tell `node` to stop an attempt and quarantine its outputs but `keep`.
    Drop {
        node: String,
        key: AttemptKey,
        device: String,
        keep: Vec<String>,
        reason: LossReason,
    },
    /// A result or progress report for an attempt that is no longer current.
    RejectedStale {
        node: String,
        device: String,
        key: AttemptKey,
    },
    /// A device or a node no longer takes a session's tasks (`session`), or
    /// a device takes no work at all (`session` is `None`), and why: for
    /// the log and the metrics; the manifest and the device views have it.
    Blocklisted {
        what: String,
        session: Option<String>,
        reason: String,
    },
    /// `tasks` attempts were lost and their `frames` reassigned after a failure (`reason`).
    Reassigned {
        tasks: u64,
        frames: u64,
        reason: LossReason,
    },
    SessionFinished {
        session: String,
        state: SessionState,
    },
    /// A finished session's `replay` gained a record: its manifest must be
    /// written again (see [`Scheduler::note_unrecorded`]).
    ManifestAmended { session: String },
    /// The same for an evicted session, whose manifest is only on disk:
    /// add `record` to the `replay` of the manifest there (unless it holds
    /// it already).
    AmendOnDisk {
        session: String,
        record: ReplayRecord,
    },
    /// An event for the bus (docs/pipelines.md).
    Publish(crate::events::Event),
}
