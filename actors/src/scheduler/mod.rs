//! The master's frame ledger and placement (docs/design/architecture.md), as pure logic.
//!
//! Sessions are split into tasks of `chunk_frames` frames. Each attempt of a
//! task is a fenced lease on one device with its own ID chunk. The Master actor
//! feeds [`SchedEvent`]s with the time and carries out the [`SchedCommand`]s.
//!
//! Invariants (checked by the state-machine tests after every step):
//! - a frame is in at most one produced range, and a produced frame is never
//!   assigned again;
//! - ID chunks of live attempts and the used parts of ended ones are pairwise
//!   disjoint;
//! - a device holds at most `1 + PREFETCH` attempts, a node at most
//!   `(1 + PREFETCH) x max_concurrency`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ids::IdAllocator;
use crate::protocol::{
    out_dir, AttemptKey, AttemptView, Blocklisting, CapValue, Capabilities, DeviceInfo,
    DeviceState, DeviceView, FailedRange, FrameRange, IdRange, LossReason, Manifest, ManifestRange,
    OutputFile, ReplayRecord, SessionSpec, SessionState, SessionView, TaskOutcome, TaskProgress,
    TaskRef, TaskResult, TaskSpec, TaskView, BLOCKLIST_NODE_AFTER, DEFAULT_BLOCKLIST_AFTER,
    DEVICE_BLOCKLIST_IN_A_ROW, MAX_TASKS_PAGE, PRIORITY_AGING_MS,
};

mod cluster;
mod controls;
mod event;
mod failover;
mod index;
mod pipelines;
mod placement;
mod recovery;
mod reports;
mod session;
mod tasks;
mod views;

#[cfg(test)]
mod index_test;
#[cfg(test)]
mod test_fixture;

#[cfg(test)]
mod cluster_test;
#[cfg(test)]
mod controls_test;
#[cfg(test)]
mod devices_test;
#[cfg(test)]
mod event_test;
#[cfg(test)]
mod failover_test;
#[cfg(test)]
mod placement_test;
#[cfg(test)]
mod recovery_test;
#[cfg(test)]
mod reports_test;
#[cfg(test)]
mod session_test;
#[cfg(test)]
mod tasks_test;
#[cfg(test)]
mod views_test;

use cluster::*;
pub use controls::RequeueNeeds;
pub use event::{ProducedRange, SchedCommand, SchedEvent};
use failover::*;
use index::PlacementIndex;
pub use placement::caps_match;
pub use recovery::MAX_RESERVED;
use session::*;
use tasks::*;
pub use views::{merge_manifests, ManifestSnapshot};

/// Attempts queued on a device beyond the running one (see
/// docs/design/architecture.md). Two keep a device busy while its next
/// assignments wait for the master's commit.
pub const PREFETCH: u32 = 2;

/// A session whose attempts run this long or longer (a moving average of
/// what its results report) gets no attempt queued behind a running one:
/// queuing saves a dispatch round trip (milliseconds), and a queued attempt
/// of a long task would hold its device for seconds from a session of
/// higher priority or from lost work. Shorter ones queue up to
/// [`PREFETCH`], which is what keeps devices busy at high rates.
pub const PREFETCH_UNDER_MS: u64 = 1_000;

/// A session's place in the ledger (an index into `Scheduler::sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SessionIdx(usize);

/// A task's number within its session: task `n` covers frames
/// `start + n * chunk_frames ..` (see `Tasks::range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct TaskIdx(u32);

impl TaskIdx {
    /// The task number on the wire (`AttemptKey::task`, `TaskSpec::task`).
    fn wire(self) -> u64 {
        u64::from(self.0)
    }

    /// The task a wire number names, if it can be one.
    fn from_wire(task: u64) -> Option<Self> {
        u32::try_from(task).ok().map(Self)
    }
}

impl std::ops::Index<SessionIdx> for Vec<Session> {
    type Output = Session;
    fn index(&self, s: SessionIdx) -> &Session {
        &self[s.0]
    }
}

impl std::ops::IndexMut<SessionIdx> for Vec<Session> {
    fn index_mut(&mut self, s: SessionIdx) -> &mut Session {
        &mut self[s.0]
    }
}

/// The master's ledger of every session and the cluster's capacity.
#[derive(Debug, Default)]
pub struct Scheduler {
    nodes: BTreeMap<Arc<str>, Node>,
    sessions: Vec<Session>,
    by_id: HashMap<String, SessionIdx>,
    /// Sessions still running, in the order they were submitted.
    active: Vec<SessionIdx>,
    /// Sessions by the idempotency key they were submitted with.
    by_key: HashMap<String, String>,
    ids: IdAllocator,
    /// Round-robin position over sessions.
    rr: usize,
    use_counter: u64,
    orphans: HashMap<Arc<str>, Vec<Orphan>>,
    /// Nodes drained by an operator (kept across re-registration).
    drained: HashSet<Arc<str>>,
    grace_ms: u64,
    /// (deadline, session, task, attempt): an attempt silent past its deadline is lost.
    deadlines: BTreeSet<(u64, SessionIdx, TaskIdx, u32)>,
    /// The node the last [`SchedEvent::Reserve`] was for.
    reserve_node: Option<Arc<str>>,
    /// The devices that can take work, as placement asks for them.
    index: PlacementIndex,
    /// Place by looking at every device instead of the index (benchmarks
    /// compare the two in one run).
    scan_placement: bool,
    /// Most tasks one event places ([`SchedEvent::PlaceBudget`]); `None`: all.
    place_budget: Option<usize>,
    /// The last event used its whole budget with work and capacity left,
    /// or (with `place_in_passes`) left what it freed for a `Place`.
    place_more: bool,
    /// Only [`SchedEvent::Place`] places ([`SchedEvent::PlaceInPasses`]).
    place_in_passes: bool,
    /// Every version of every workflow recipe, by name (version `i + 1` at `i`).
    workflows: BTreeMap<String, Vec<crate::workflow::Workflow>>,
    /// Devices blocklisted for failing attempts in a row, and why (kept
    /// across re-registration, until a restart or an unblock).
    device_blocklist: HashMap<(Arc<str>, Arc<str>), String>,
    /// Pipelines, their runs, breakers and schedules (docs/pipelines.md).
    pipelines: crate::pipeline::Pipelines,
}

impl Scheduler {
    pub fn new(id_high_water: u64) -> Self {
        Self {
            ids: IdAllocator::new(id_high_water),
            grace_ms: 15_000,
            ..Self::default()
        }
    }

    /// Place by looking at every device, as before the index: for
    /// benchmarks that compare the two side by side.
    pub fn with_scan_placement(mut self) -> Self {
        self.scan_placement = true;
        self
    }

    /// How long past its timeouts a silent attempt is given before it is
    /// declared lost (`grace_wait_ms`).
    pub fn with_grace(mut self, grace_ms: u64) -> Self {
        self.grace_ms = grace_ms;
        self
    }

    pub fn ids(&self) -> &IdAllocator {
        &self.ids
    }

    /// Apply one event at `now_ms`; what the master must do. Each event has
    /// its handler in the part it concerns; after any event, pending work is
    /// placed and finished sessions are closed.
    pub fn on_event(&mut self, ev: SchedEvent, now_ms: u64) -> Vec<SchedCommand> {
        let mut out = Vec::new();
        let places = !self.place_in_passes || matches!(ev, SchedEvent::Place);
        // Events that may leave a task placeable (capacity freed, work added).
        let may_free = !matches!(
            ev,
            SchedEvent::Place
                | SchedEvent::PlaceBudget { .. }
                | SchedEvent::PlaceInPasses
                | SchedEvent::Progress(_)
                | SchedEvent::Stalled { .. }
                | SchedEvent::Evict { .. }
                | SchedEvent::WorkflowAdded(_)
        );
        match ev {
            SchedEvent::NodeUp {
                node,
                epoch,
                max_concurrency,
                devices,
                held,
            } => {
                let reg = Registration {
                    node,
                    epoch,
                    max_concurrency,
                    devices,
                };
                self.node_up(reg, &held, now_ms, &mut out)
            }
            SchedEvent::NodeDown {
                node,
                epoch,
                reason,
            } => self.node_down(&node, epoch, &reason, now_ms, &mut out),
            SchedEvent::NodeAccepting { node, accepting } => self.accepting(&node, accepting),
            SchedEvent::Submit { id, spec } => self.submit(id, spec, now_ms),
            SchedEvent::Drain { node, drained } => self.drain(node, drained),
            SchedEvent::DeviceDown {
                node,
                device,
                reason,
                disable,
            } => {
                self.device_down(&node, &device, &reason, disable, now_ms, &mut out);
            }
            SchedEvent::Devices {
                node,
                epoch,
                devices,
                offline,
            } => self.devices_changed(&node, epoch, devices, &offline, now_ms, &mut out),
            SchedEvent::Cancel { session } => self.cancel(&session, now_ms, &mut out),
            SchedEvent::Progress(p) => self.progress(p, &mut out),
            SchedEvent::Result(r) => self.result(r, now_ms, &mut out),
            SchedEvent::Reserve { node, tasks } => self.reserve(node, tasks),
            SchedEvent::Stalled { ms } => self.stalled(ms),
            SchedEvent::Evict { session } => self.evict(&session),
            SchedEvent::Tick => {
                self.tick(now_ms, &mut out);
                self.pipelines_tick(now_ms, &mut out);
            }
            SchedEvent::Resume {
                id_floor,
                within_ms,
            } => self.resume(id_floor, within_ms, now_ms),
            SchedEvent::PlaceBudget { max } => self.place_budget = Some(max.max(1) as usize),
            SchedEvent::PlaceInPasses => self.place_in_passes = true,
            SchedEvent::Unblock { node, device } => self.unblock(&node, &device),
            SchedEvent::WorkflowAdded(w) => {
                let versions = self.workflows.entry(w.name.clone()).or_default();
                // Versions come in order; one seen already is a replay's.
                if w.version as usize == versions.len() + 1 {
                    versions.push(w);
                }
            }
            SchedEvent::Place => {}
            SchedEvent::Pause { session, paused } => self.pause(&session, paused),
            SchedEvent::Retry { session } => self.retry(&session),
            SchedEvent::Requeue {
                session,
                task,
                produced,
            } => self.requeue(&session, task, produced, &mut out),
            ev @ (SchedEvent::PipelineDefined(_)
            | SchedEvent::PipelineRun { .. }
            | SchedEvent::PipelineCancel { .. }
            | SchedEvent::PipelineRerun { .. }) => self.pipeline_event(ev, now_ms, &mut out),
        }
        if places {
            self.place(now_ms, &mut out);
        } else if may_free && !self.active.is_empty() {
            self.place_more = true;
        }
        self.finish(now_ms, &mut out);
        self.pipelines_after(0, now_ms, &mut out);
        out
    }

    /// Workflow `name` at `version` (`None`: the latest).
    pub fn workflow(&self, name: &str, version: Option<u32>) -> Option<&crate::workflow::Workflow> {
        let versions = self.workflows.get(name)?;
        match version {
            None => versions.last(),
            Some(v) => versions.get((v as usize).checked_sub(1)?),
        }
    }

    /// The latest version of every workflow, by name.
    pub fn workflows(&self) -> Vec<crate::workflow::Workflow> {
        self.workflows
            .values()
            .filter_map(|v| v.last().cloned())
            .collect()
    }

    /// How many workflows are stored, and how many versions `name` has.
    pub fn workflow_counts(&self, name: &str) -> (usize, usize) {
        (
            self.workflows.len(),
            self.workflows.get(name).map_or(0, Vec::len),
        )
    }

    /// Whether the last event left tasks to place, for lack of budget or
    /// because only `Place` places: the master sends a [`SchedEvent::Place`]
    /// after what waits in its mailbox.
    pub fn wants_to_place(&self) -> bool {
        self.place_more
    }

    /// Whether a [`SchedEvent::Tick`] at `now_ms` would change anything: a
    /// deadline passed, a backoff ended, or a resume window closed.
    pub fn tick_due(&self, now_ms: u64) -> bool {
        self.deadlines.first().is_some_and(|d| d.0 <= now_ms)
            || self
                .sessions
                .iter()
                .any(|s| s.waiting.first().is_some_and(|w| w.0 <= now_ms))
            || self
                .nodes
                .values()
                .any(|n| n.resume_by.is_some_and(|at| at <= now_ms))
            || self.pipelines.due(now_ms)
    }
}
