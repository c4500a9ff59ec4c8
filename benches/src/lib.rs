//! orch-benches: criterion benches and the side-by-side cluster harness live here.

/// The `[store] durability` modes of a node's `cluster.toml`, in the order the
/// `durability` shape of `bench-cluster` runs them: no store, the default,
/// fsync on every commit.
pub const DURABILITY_MODES: [&str; 3] = ["memory", "process", "power"];

use orch_actors::protocol::{AttemptKey, TaskOutcome, TaskResult, TaskSpec};
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
    })
}
