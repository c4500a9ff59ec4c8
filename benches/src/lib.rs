//! orch-benches: criterion benches and the side-by-side cluster harness live here.

/// The `[store] durability` modes of a node's `cluster.toml`, in the order the
/// `durability` shape of `bench-cluster` runs them: no store, the default,
/// fsync on every commit.
pub const DURABILITY_MODES: [&str; 3] = ["memory", "process", "power"];

use orch_actors::protocol::{
    AttemptKey, ExecutorSpec, FrameRange, SessionSpec, TaskOutcome, TaskResult, TaskSpec,
    DEFAULT_MAX_LOSSES,
};
use orch_actors::scheduler::SchedEvent;

/// The result of `task`, completed on `node` (epoch 1), as the ledger
/// benches feed back.
pub fn completed(node: String, task: TaskSpec) -> SchedEvent {
    SchedEvent::Result(TaskResult {
        node,
        epoch: 1,
        key: AttemptKey {
            session: task.session,
            task: task.task,
            attempt: task.attempt,
        },
        device: task.device,
        started_ms: 0,
        finished_ms: 1,
        last_id_used: None,
        outputs: vec![],
        outcome: TaskOutcome::Completed,
        seq: 0,
        steps: Vec::new(),
    })
}

/// A `builtin:noop` session named `name` of `frames` frames in tasks of
/// `chunk`, IDs `id_chunk` an attempt, no requirement, the defaults of a
/// session file otherwise (3 attempts, priority 0, no device limit).
pub fn noop_session(name: &str, frames: u64, chunk: u64, id_chunk: u64) -> SessionSpec {
    SessionSpec {
        name: name.into(),
        frames: FrameRange {
            start: 0,
            end: frames,
        },
        items: None,
        chunk_frames: chunk,
        id_chunk_size: id_chunk,
        require: Default::default(),
        prefer: Default::default(),
        max_attempts: 3,
        max_losses: DEFAULT_MAX_LOSSES,
        priority: 0,
        max_devices: None,
        backoff_ms: 10,
        backoff_max_ms: 100,
        executor: ExecutorSpec::Noop,
        timeout_ms: 600_000,
        idempotency_key: None,
        collect: None,
        correlation_id: None,
        blocklist_after: None,
    }
}
