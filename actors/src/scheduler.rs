//! The master's frame ledger and placement (SPEC §6-§7), as pure logic.
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
    out_dir, AttemptKey, CapValue, Capabilities, DeviceInfo, DeviceState, DeviceView, FailedRange,
    FrameRange, IdRange, Manifest, ManifestRange, OutputFile, ReplayRecord, SessionSpec,
    SessionState, SessionView, TaskOutcome, TaskProgress, TaskRef, TaskResult, TaskSpec,
};

/// Attempts queued on a device beyond the running one (SPEC §7: prefetch
/// 1-2). Two keep a device busy while its next assignments wait for the
/// master's commit.
pub const PREFETCH: u32 = 2;

/// Something that happened. The master records every event in its store,
/// with its time, before acting on the commands it returns: replaying them
/// in order rebuilds the same ledger (SPEC §9).
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
        reason: String,
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
    /// An operator restarts (`disable = false`) or kills a device: its attempts are requeued.
    DeviceDown {
        node: String,
        device: String,
        reason: String,
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
}

/// Most tasks reserved for the master's node at once.
pub const MAX_RESERVED: usize = 1024;

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
        reason: String,
    },
    /// A result or progress report for an attempt that is no longer current.
    RejectedStale { node: String, key: AttemptKey },
    /// `tasks` attempts were lost and their `frames` reassigned after a failure (`reason`).
    Reassigned {
        tasks: u64,
        frames: u64,
        reason: String,
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
}

#[derive(Debug, Clone)]
struct Running {
    node: Arc<str>,
    device: Arc<str>,
    /// When the attempt is declared lost if it says nothing (`no_answer`).
    deadline: u64,
    ids: IdRange,
    started_ms: u64,
    done: u64,
    last_id: Option<u64>,
    outputs: Vec<OutputFile>,
}

#[derive(Debug, Clone)]
enum TaskState {
    Pending,
    /// Backoff after a failure, until `not_before`.
    Waiting,
    Running(Box<Running>),
    Done,
    Failed,
}

#[derive(Debug, Clone)]
struct Task {
    /// What is left to produce: shrinks as progress is banked.
    frames: FrameRange,
    attempt: u32,
    /// The least number a new attempt may take (see [`SchedEvent::Resume`]).
    attempt_floor: u32,
    /// Bit n: a restart skipped attempt number n (below 64), which a
    /// master may have sent before the crash without recording it.
    skipped: u64,
    failures: u32,
    losses: u32,
    state: TaskState,
    /// The device of the last failed attempt, avoided on retry if possible.
    avoid: Option<(Arc<str>, Arc<str>)>,
    /// The node of the last lost attempt: another capable node goes first.
    lost_on: Option<Arc<str>>,
    last_error: Option<String>,
}

impl Task {
    /// Move on to a new attempt.
    fn next_attempt(&mut self) {
        self.attempt = self.attempt.saturating_add(1).max(self.attempt_floor);
    }

    /// A restart skips `attempt`: see [`SchedEvent::Resume`].
    fn skip(&mut self, attempt: u32) {
        if attempt < 64 {
            self.skipped |= 1 << attempt;
        }
    }

    /// Whether `attempt` is a number a restart skipped, the only numbers
    /// an attempt the ledger never recorded can carry. Above 63 the
    /// numbers are not kept: any the ledger could have reached counts.
    fn was_skipped(&self, attempt: u32) -> bool {
        if attempt < 64 {
            self.skipped & (1 << attempt) != 0
        } else {
            attempt <= self.attempt.max(self.attempt_floor)
        }
    }
}

/// What stays of a done task: the attempt that finished it, and the numbers
/// a restart skipped (a worker may name one of them later).
#[derive(Debug, Clone, Copy)]
struct Done {
    attempt: u32,
    attempt_floor: u32,
    skipped: u64,
}

/// The tasks of a session. A session costs what is in flight, not what it
/// covers: a task never assigned has no record (it is its range, attempt
/// [`Tasks::fresh_attempt`], pending), a task in play has one, and a done
/// task keeps only the number of the attempt that finished it.
#[derive(Debug)]
struct Tasks {
    frames: FrameRange,
    chunk: u64,
    n: u32,
    /// Tasks assigned at least once and not done.
    touched: HashMap<u32, Task>,
    /// Done tasks: what a late report about them needs (see [`Done`]).
    done: HashMap<u32, Done>,
    /// The attempt number of a task never assigned (restarts raise it).
    fresh_attempt: u32,
    /// The numbers restarts skipped for tasks never assigned.
    fresh_skipped: u64,
}

impl Tasks {
    fn new(spec: &SessionSpec) -> Self {
        let chunk = spec.chunk_frames.max(1);
        Self {
            frames: spec.frames,
            chunk,
            n: spec.frames.len().div_ceil(chunk) as u32,
            touched: HashMap::new(),
            done: HashMap::new(),
            fresh_attempt: 1,
            fresh_skipped: 0,
        }
    }

    fn len(&self) -> u32 {
        self.n
    }

    /// The whole range of task `t`.
    fn range(&self, t: u32) -> FrameRange {
        let start = self
            .frames
            .start
            .saturating_add(u64::from(t).saturating_mul(self.chunk));
        FrameRange {
            start,
            end: start.saturating_add(self.chunk).min(self.frames.end),
        }
    }

    fn fresh(&self, t: u32) -> Task {
        Task {
            frames: self.range(t),
            attempt: self.fresh_attempt,
            attempt_floor: 0,
            skipped: self.fresh_skipped,
            failures: 0,
            losses: 0,
            state: TaskState::Pending,
            avoid: None,
            lost_on: None,
            last_error: None,
        }
    }

    /// Task `t` as it stands (`None`: no such task).
    fn get(&self, t: u32) -> Option<std::borrow::Cow<'_, Task>> {
        use std::borrow::Cow;
        if t >= self.n {
            return None;
        }
        if let Some(task) = self.touched.get(&t) {
            return Some(Cow::Borrowed(task));
        }
        let mut task = self.fresh(t);
        if let Some(d) = self.done.get(&t) {
            task.frames.start = task.frames.end;
            task.attempt = d.attempt;
            task.attempt_floor = d.attempt_floor;
            task.skipped = d.skipped;
            task.state = TaskState::Done;
        }
        Some(Cow::Owned(task))
    }

    /// Task `t`, with a record of its own from now on.
    fn get_mut(&mut self, t: u32) -> &mut Task {
        if !self.touched.contains_key(&t) {
            let task = self.get(t).expect("a task of this session").into_owned();
            self.done.remove(&t);
            self.touched.insert(t, task);
        }
        self.touched.get_mut(&t).expect("inserted above")
    }

    /// Task `t` is done: only its attempt number stays.
    fn done(&mut self, t: u32) {
        if let Some(task) = self.touched.remove(&t) {
            self.done.insert(
                t,
                Done {
                    attempt: task.attempt,
                    attempt_floor: task.attempt_floor,
                    skipped: task.skipped,
                },
            );
        }
    }

    /// Tasks with an attempt running.
    fn running(&self) -> impl Iterator<Item = (u32, &Task)> {
        self.touched
            .iter()
            .filter(|(_, t)| matches!(t.state, TaskState::Running(_)))
            .map(|(&i, t)| (i, t))
    }
}

/// A session's pending tasks, in order: tasks put first (lost work,
/// released reservations), then tasks never assigned (a cursor over the
/// session), then tasks put last (retries after their backoff).
#[derive(Debug)]
struct Queue {
    front: VecDeque<u32>,
    /// Tasks never assigned, from here to `end`, except `taken`.
    next: u32,
    end: u32,
    /// Tasks never assigned taken out of order (reserved from ahead of `next`).
    taken: BTreeSet<u32>,
    back: VecDeque<u32>,
}

impl Queue {
    fn new(n: u32) -> Self {
        Self {
            front: VecDeque::new(),
            next: 0,
            end: n,
            taken: BTreeSet::new(),
            back: VecDeque::new(),
        }
    }

    fn fresh_len(&self) -> usize {
        (self.end - self.next) as usize - self.taken.range(self.next..).count()
    }

    fn len(&self) -> usize {
        self.front.len() + self.fresh_len() + self.back.len()
    }

    fn is_empty(&self) -> bool {
        self.front.is_empty() && self.back.is_empty() && self.fresh_len() == 0
    }

    /// Skip taken tasks at the cursor.
    fn settle(&mut self) {
        while self.next < self.end && self.taken.remove(&self.next) {
            self.next += 1;
        }
    }

    fn front(&self) -> Option<u32> {
        self.get(0)
    }

    fn pop_front(&mut self) -> Option<u32> {
        if let Some(t) = self.front.pop_front() {
            return Some(t);
        }
        self.settle();
        if self.next < self.end {
            let t = self.next;
            self.next += 1;
            self.settle();
            return Some(t);
        }
        self.back.pop_front()
    }

    fn push_front(&mut self, t: u32) {
        self.front.push_front(t);
    }

    fn push_back(&mut self, t: u32) {
        self.back.push_back(t);
    }

    /// The `i`-th pending task (meant for the first few).
    fn get(&self, i: usize) -> Option<u32> {
        if let Some(&t) = self.front.get(i) {
            return Some(t);
        }
        let mut i = i - self.front.len();
        for t in (self.next..self.end).filter(|t| !self.taken.contains(t)) {
            if i == 0 {
                return Some(t);
            }
            i -= 1;
        }
        self.back.get(i).copied()
    }

    /// Take `t` out, if it is among the first `within` pending tasks.
    fn remove(&mut self, t: u32, within: usize) -> bool {
        if let Some(pos) = self.front.iter().take(within).position(|&p| p == t) {
            self.front.remove(pos);
            return true;
        }
        let within = within.saturating_sub(self.front.len());
        let ahead = (t as usize).saturating_sub(self.next as usize);
        if t >= self.next && t < self.end && ahead < within && !self.taken.contains(&t) {
            self.taken.insert(t);
            self.settle();
            return true;
        }
        if let Some(pos) = self.back.iter().position(|&p| p == t) {
            self.back.remove(pos);
            return true;
        }
        false
    }

    fn clear(&mut self) {
        self.front.clear();
        self.back.clear();
        self.taken.clear();
        self.next = self.end;
    }
}

/// A produced range, kept compact: a million of them must fit in memory.
#[derive(Debug, Clone)]
struct Segment {
    frames: FrameRange,
    task: u32,
    attempt: u32,
    node: Arc<str>,
    device: Arc<str>,
    ids: IdRange,
    ids_used: u64,
    outputs: Box<[OutputFile]>,
    started_ms: u64,
    finished_ms: u64,
}

impl Segment {
    fn to_range(&self, session: &str) -> ManifestRange {
        let key = AttemptKey {
            session: session.to_string(),
            task: u64::from(self.task),
            attempt: self.attempt,
        };
        ManifestRange {
            frames: self.frames,
            task: u64::from(self.task),
            attempt: self.attempt,
            node: self.node.to_string(),
            device: self.device.to_string(),
            ids: self.ids,
            ids_used: Some(self.ids_used),
            outputs: self.outputs.to_vec(),
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            out_dir: out_dir(&key, &self.node, &self.device),
        }
    }
}

#[derive(Debug)]
struct Session {
    id: String,
    spec: SessionSpec,
    submitted_ms: u64,
    finished_ms: Option<u64>,
    state: SessionState,
    tasks: Tasks,
    pending: Queue,
    /// Pending tasks set aside for the reserve node, in order.
    reserved: VecDeque<u32>,
    waiting: BTreeSet<(u64, u32)>,
    ranges: Vec<Segment>,
    /// Frames reported done by running attempts (not yet banked).
    running_done: u64,
    replay: Vec<ReplayRecord>,
    failed: Vec<FailedRange>,
    frames_done: u64,
    tasks_done: u64,
    running: u64,
    retries: u64,
    failovers: u64,
    stale: u64,
    waiting_reason: Option<String>,
    /// The highest attempt number given out (a late report of an evicted
    /// session is checked against it).
    max_attempt: u32,
    /// Finished, its manifest on disk, its ledger gone from memory (see
    /// [`SchedEvent::Evict`]): what its view still needs.
    evicted: Option<Evicted>,
}

/// What stays of an evicted session besides its counters.
#[derive(Debug, Clone, Copy)]
struct Evicted {
    frames_failed: u64,
    tasks_failed: u64,
}

#[derive(Debug)]
struct Device {
    id: Arc<str>,
    caps: Capabilities,
    inflight: u32,
    last_used: u64,
    /// Killed by an operator: takes no work until restarted.
    disabled: bool,
    last_error: Option<String>,
    tasks_done: u64,
}

#[derive(Debug)]
struct Node {
    name: Arc<str>,
    epoch: u64,
    max_concurrency: u32,
    accepting: bool,
    /// Drained by an operator: finishes what it has, takes nothing new.
    drained: bool,
    devices: Vec<Device>,
    by_id: HashMap<Arc<str>, usize>,
    inflight: u32,
    /// (session index, task index) of attempts running here.
    running: HashSet<(usize, u32)>,
    /// Known from before a master restart, not registered again yet: takes
    /// no work, and its attempts are requeued if it is not back by then.
    resume_by: Option<u64>,
}

impl Node {
    fn cap(&self) -> u32 {
        self.max_concurrency.saturating_mul(1 + PREFETCH)
    }
}

impl Orphan {
    /// The command telling `node` to stop this attempt and quarantine its outputs.
    fn into_drop(self, node: &str) -> SchedCommand {
        SchedCommand::Drop {
            node: node.to_string(),
            key: self.key,
            device: self.device,
            keep: self.keep,
            reason: self.reason,
        }
    }
}

/// How good a device is for a task; higher is better: not on the node that
/// just lost it, not the device that just failed it, preference score, free
/// queue, node load, least recently used.
type PlacementKey = (bool, bool, i64, u32, u64, u64);

/// A lost attempt whose node must quarantine its outputs when it returns.
#[derive(Debug, Clone)]
struct Orphan {
    key: AttemptKey,
    device: String,
    keep: Vec<String>,
    reason: String,
}

/// The master's ledger of every session and the cluster's capacity.
#[derive(Debug, Default)]
pub struct Scheduler {
    nodes: BTreeMap<Arc<str>, Node>,
    sessions: Vec<Session>,
    by_id: HashMap<String, usize>,
    /// Sessions still running, in the order they were submitted.
    active: Vec<usize>,
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
    deadlines: BTreeSet<(u64, usize, u32, u32)>,
    /// The node the last [`SchedEvent::Reserve`] was for.
    reserve_node: Option<Arc<str>>,
}

/// Whether `caps` satisfies every requirement.
pub fn caps_match(require: &Capabilities, caps: &Capabilities) -> bool {
    require.iter().all(|(k, want)| match (want, caps.get(k)) {
        (CapValue::List(want), Some(CapValue::List(have))) => want.iter().all(|w| have.contains(w)),
        (CapValue::Str(want), Some(CapValue::List(have))) => have.contains(want),
        (want, Some(have)) => want == have,
        (_, None) => false,
    })
}

fn cap_set(v: Option<&CapValue>) -> bool {
    match v {
        Some(CapValue::Bool(b)) => *b,
        Some(CapValue::Int(i)) => *i != 0,
        Some(CapValue::Str(s)) => !s.is_empty(),
        Some(CapValue::List(l)) => !l.is_empty(),
        None => false,
    }
}

fn score(prefer: &BTreeMap<String, i64>, caps: &Capabilities) -> i64 {
    // Saturating: weights from the network must not wrap a good device
    // into the worst one.
    prefer
        .iter()
        .filter(|(k, _)| cap_set(caps.get(*k)))
        .fold(0i64, |acc, (_, w)| acc.saturating_add(*w))
}

impl Scheduler {
    pub fn new(id_high_water: u64) -> Self {
        Self {
            ids: IdAllocator::new(id_high_water),
            grace_ms: 15_000,
            ..Self::default()
        }
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

    pub fn on_event(&mut self, ev: SchedEvent, now_ms: u64) -> Vec<SchedCommand> {
        let mut out = Vec::new();
        match ev {
            SchedEvent::NodeUp {
                node,
                epoch,
                max_concurrency,
                devices,
                held,
            } => self.node_up(
                node,
                epoch,
                max_concurrency,
                devices,
                &held,
                now_ms,
                &mut out,
            ),
            SchedEvent::NodeDown {
                node,
                epoch,
                reason,
            } => self.node_down(&node, epoch, &reason, now_ms, &mut out),
            SchedEvent::NodeAccepting { node, accepting } => {
                if let Some(n) = self.nodes.get_mut(node.as_str()) {
                    n.accepting = accepting;
                }
                if !accepting {
                    self.release_reserved_of(&node);
                }
            }
            SchedEvent::Submit { id, spec } => self.submit(id, spec, now_ms),
            SchedEvent::Drain { node, drained } => {
                let name: Arc<str> = node.into();
                if drained {
                    self.drained.insert(name.clone());
                } else {
                    self.drained.remove(&name);
                }
                if let Some(n) = self.nodes.get_mut(&name) {
                    n.drained = drained;
                }
                if drained {
                    self.release_reserved_of(&name);
                }
            }
            SchedEvent::DeviceDown {
                node,
                device,
                reason,
                disable,
            } => {
                self.device_down(&node, &device, &reason, disable, now_ms, &mut out);
            }
            SchedEvent::Cancel { session } => self.cancel(&session, now_ms, &mut out),
            SchedEvent::Progress(p) => self.progress(p, &mut out),
            SchedEvent::Result(r) => self.result(r, now_ms, &mut out),
            SchedEvent::Reserve { node, tasks } => self.reserve(node, tasks),
            SchedEvent::Stalled { ms } => self.stalled(ms),
            SchedEvent::Evict { session } => self.evict(&session),
            SchedEvent::Tick => {
                self.expire(now_ms, &mut out);
                self.expire_resume(now_ms, &mut out);
                self.wake(now_ms);
            }
            SchedEvent::Resume {
                id_floor,
                within_ms,
            } => {
                // Chunks handed out after the last durable commit are unknown:
                // issue nothing below the reservation, not even returned tails.
                self.ids.resume_above(id_floor);
                // Reserved tasks may have gone to the master's own node
                // since the last commit, and its worker died with the
                // master: nobody can say whether they ran. They run again,
                // listed as possibly produced twice.
                self.release_reserved(true);
                // Attempts are unknown too: the master sends a task's first
                // assignment since a commit before the next commit. So a
                // pending task's number, or the one a running
                // attempt's end would give (the next, or the floor an
                // earlier restart set), may be running somewhere: never give
                // it out again.
                for sess in self.sessions.iter_mut().filter(|s| !s.state.is_final()) {
                    let tasks = &mut sess.tasks;
                    // Never assigned: pending under the number they share.
                    if tasks.fresh_attempt < 64 {
                        tasks.fresh_skipped |= 1 << tasks.fresh_attempt;
                    }
                    tasks.fresh_attempt = tasks.fresh_attempt.saturating_add(1);
                    for task in tasks.touched.values_mut() {
                        match task.state {
                            TaskState::Pending | TaskState::Waiting => {
                                task.skip(task.attempt);
                                task.attempt = task.attempt.saturating_add(1)
                            }
                            TaskState::Running(_) => {
                                let skipped =
                                    task.attempt.saturating_add(1).max(task.attempt_floor);
                                task.skip(skipped);
                                task.attempt_floor = skipped.saturating_add(1)
                            }
                            TaskState::Done | TaskState::Failed => {}
                        }
                    }
                }
                for n in self.nodes.values_mut() {
                    n.resume_by = Some(now_ms + within_ms);
                }
            }
        }
        self.place(now_ms, &mut out);
        self.finish(now_ms, &mut out);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn node_up(
        &mut self,
        name: String,
        epoch: u64,
        max_concurrency: u32,
        devices: Vec<DeviceInfo>,
        held: &[AttemptKey],
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) {
        let mut kept = Vec::new();
        if let Some(old) = self.nodes.get_mut(name.as_str()) {
            // Back after a master restart: what the worker still holds continues.
            if old.resume_by.is_some() {
                let held: HashSet<&AttemptKey> = held.iter().collect();
                let mut keep: Vec<(usize, u32)> = old
                    .running
                    .iter()
                    .copied()
                    .filter(|&(s, t)| {
                        let sess = &self.sessions[s];
                        let Some(task) = sess.tasks.get(t) else {
                            return false;
                        };
                        let on_device = match &task.state {
                            TaskState::Running(r) => devices.iter().any(|d| *d.id == *r.device),
                            _ => false,
                        };
                        on_device
                            && held.contains(&AttemptKey {
                                session: sess.id.clone(),
                                task: u64::from(t),
                                attempt: task.attempt,
                            })
                    })
                    .collect();
                keep.sort_unstable();
                for k in &keep {
                    old.running.remove(k);
                }
                kept = keep;
            }
            let (old_epoch, reason) = (
                old.epoch,
                if old.resume_by.is_some() {
                    "master_restart"
                } else {
                    "node_down"
                },
            );
            self.node_down(&name, old_epoch, reason, now_ms, out);
        }
        let name: Arc<str> = name.into();
        let node_name = name.clone();
        let drained = self.drained.contains(&name);
        let devices: Vec<Device> = devices
            .into_iter()
            .map(|d| Device {
                id: d.id.into(),
                caps: d.capabilities,
                inflight: 0,
                last_used: 0,
                disabled: false,
                last_error: None,
                tasks_done: 0,
            })
            .collect();
        let by_id = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        for o in self.orphans.remove(&name).unwrap_or_default() {
            out.push(o.into_drop(&name));
        }
        self.nodes.insert(
            name.clone(),
            Node {
                name,
                epoch,
                max_concurrency: max_concurrency.max(1),
                accepting: true,
                drained,
                devices,
                by_id,
                inflight: 0,
                running: HashSet::new(),
                resume_by: None,
            },
        );
        for (s, t) in kept {
            self.keep_running(s, t, now_ms);
        }
        self.note_unrecorded(&node_name, held, out);
    }

    /// Attempts a node holds that the ledger never recorded: sent by the
    /// master before a crash lost their cause (see [`SchedEvent::Resume`]).
    /// Their frames may have been produced, and run again under a new
    /// attempt: the manifest's `replay` says so. They are stale: the node
    /// stops them (it knows their device) and quarantines their outputs.
    fn note_unrecorded(&mut self, node: &str, held: &[AttemptKey], out: &mut Vec<SchedCommand>) {
        for key in held {
            if self.current(node, key).is_some() || self.settled(key) {
                continue;
            }
            let (Some(&s), Ok(t)) = (self.by_id.get(&key.session), u32::try_from(key.task)) else {
                continue;
            };
            let sess = &mut self.sessions[s];
            if sess.evicted.is_some() {
                // Its ledger is gone: any number up to the highest it gave
                // out (and one past, the one a restart skipped) may have
                // run. Listing one that did not costs a line.
                if t < sess.tasks.len() && key.attempt <= sess.max_attempt.saturating_add(1) {
                    out.push(SchedCommand::AmendOnDisk {
                        session: sess.id.clone(),
                        record: ReplayRecord {
                            frames: sess.tasks.range(t),
                            task: key.task,
                            old_attempt: key.attempt,
                            new_attempt: sess.max_attempt.saturating_add(1).max(key.attempt + 1),
                            node: node.to_string(),
                            device: String::new(),
                            reason: "master_restart".into(),
                        },
                    });
                    out.push(drop_unrecorded(node, key));
                }
                continue;
            }
            let Some(task) = sess.tasks.get(t).map(|c| c.into_owned()) else {
                continue;
            };
            // Numbers the ledger gave out and replaced have a record already;
            // an unrecorded one is one a restart skipped, however many
            // restarts ago (its node may have missed the masters between).
            // Any other number is not one this ledger could have sent.
            if !task.was_skipped(key.attempt) {
                continue;
            }
            // Listed already: lost with its node (its `Drop` went with the
            // node's orphans), or listed without a device because it was
            // reserved for this node or named in an earlier registration.
            let listed = sess
                .replay
                .iter()
                .rev()
                .find(|r| r.task == key.task && r.old_attempt == key.attempt);
            if listed.is_some_and(|r| !r.device.is_empty()) {
                continue;
            }
            if listed.is_none() {
                let mut record = unrecorded(key.task, &task, key.attempt, node);
                // What the attempt was sent is not in the ledger, and the
                // task may have banked frames since: list its whole range
                // up to what is left.
                record.frames.start = sess.tasks.range(t).start.min(record.frames.start);
                sess.replay.push(record);
                // The session may have ended while this node was away.
                if sess.state.is_final() {
                    out.push(SchedCommand::ManifestAmended {
                        session: sess.id.clone(),
                    });
                }
            }
            out.push(drop_unrecorded(node, key));
        }
    }

    /// The event that tops the tasks reserved for `node` up to `want` (at
    /// most [`MAX_RESERVED`]): pending tasks from the front, one session
    /// after another as [`Self::place`] takes them, from sessions a device
    /// of `node` can serve. `None`: nothing to add.
    ///
    /// The master's own worker dies with the master, so nobody can tell a
    /// restarted master which attempts it had started. The master sends it
    /// before their commit only tasks reserved in an earlier commit; a
    /// restart lists every task still reserved as possibly produced.
    pub fn reservation(&self, node: &str, want: usize) -> Option<SchedEvent> {
        let n = self.nodes.get(node)?;
        if !n.accepting || n.drained || n.resume_by.is_some() {
            return None;
        }
        let have: usize = if self.reserve_node.as_deref() == Some(node) {
            self.sessions.iter().map(|s| s.reserved.len()).sum()
        } else {
            0
        };
        let mut left = want.min(MAX_RESERVED).saturating_sub(have);
        let k = self.active.len();
        let eligible: Vec<usize> = (0..k)
            .map(|i| self.active[(self.rr + i) % k])
            .filter(|&s| {
                let sess = &self.sessions[s];
                !sess.state.is_final()
                    && !sess.pending.is_empty()
                    && n.devices
                        .iter()
                        .any(|d| !d.disabled && caps_match(&sess.spec.require, &d.caps))
            })
            .collect();
        let mut taken: Vec<Vec<u32>> = vec![Vec::new(); eligible.len()];
        let mut depth = 0;
        while left > 0 {
            let mut progressed = false;
            for (i, &s) in eligible.iter().enumerate() {
                if left == 0 {
                    break;
                }
                if let Some(t) = self.sessions[s].pending.get(depth) {
                    taken[i].push(t);
                    left -= 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
            depth += 1;
        }
        let tasks: Vec<(String, Vec<u32>)> = eligible
            .iter()
            .zip(taken)
            .filter(|(_, t)| !t.is_empty())
            .map(|(&s, t)| (self.sessions[s].id.clone(), t))
            .collect();
        (!tasks.is_empty()).then(|| SchedEvent::Reserve {
            node: node.to_string(),
            tasks,
        })
    }

    fn reserve(&mut self, node: String, tasks: Vec<(String, Vec<u32>)>) {
        if self.reserve_node.as_deref().is_some_and(|r| r != node) {
            self.release_reserved(false);
        }
        self.reserve_node = Some(node.into());
        let mut room =
            MAX_RESERVED.saturating_sub(self.sessions.iter().map(|s| s.reserved.len()).sum());
        for (id, ts) in tasks {
            let Some(&s) = self.by_id.get(&id) else {
                continue;
            };
            let sess = &mut self.sessions[s];
            if sess.state.is_final() {
                continue;
            }
            for t in ts {
                if room == 0 {
                    return;
                }
                // Taken from the front: never far in.
                if !sess.pending.remove(t, MAX_RESERVED) {
                    continue;
                }
                sess.reserved.push_back(t);
                room -= 1;
            }
        }
    }

    /// A node that takes no new work keeps no reservation (never sent: this
    /// ledger knows every send).
    fn release_reserved_of(&mut self, node: &str) {
        if self.reserve_node.as_deref() == Some(node) {
            self.release_reserved(false);
        }
    }

    /// Put every reserved task back in front of its session's pending tasks;
    /// with `listed`, the manifest's `replay` lists each as possibly
    /// produced by its current attempt on the reserve node (a master
    /// restart: the next attempt takes the next number).
    fn release_reserved(&mut self, listed: bool) {
        let Some(node) = self.reserve_node.take() else {
            return;
        };
        for sess in &mut self.sessions {
            let reserved: Vec<u32> = sess.reserved.drain(..).collect();
            if listed {
                for &t in &reserved {
                    // Pending: `Resume` moves it to the next number.
                    let Some(task) = sess.tasks.get(t) else {
                        continue;
                    };
                    let mut record = unrecorded(u64::from(t), &task, task.attempt, &node);
                    record.new_attempt = task.attempt.saturating_add(1);
                    sess.replay.push(record);
                }
            }
            for &t in reserved.iter().rev() {
                sess.pending.push_front(t);
            }
        }
    }

    /// Attach an attempt that survived a master restart to its (re-registered)
    /// node, with a fresh deadline.
    fn keep_running(&mut self, s: usize, t: u32, now_ms: u64) {
        let deadline = now_ms + 2 * self.sessions[s].spec.timeout_ms + self.grace_ms;
        let task = self.sessions[s].tasks.get_mut(t);
        let TaskState::Running(run) = &mut task.state else {
            return;
        };
        let Some(n) = self.nodes.get_mut(&run.node) else {
            return;
        };
        let Some(&d) = n.by_id.get(&run.device) else {
            return;
        };
        self.deadlines.remove(&(run.deadline, s, t, task.attempt));
        run.deadline = deadline;
        self.deadlines.insert((deadline, s, t, task.attempt));
        n.running.insert((s, t));
        n.inflight += 1;
        n.devices[d].inflight += 1;
    }

    /// Nodes known from before a master restart that did not register again in time.
    fn expire_resume(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let late: Vec<(Arc<str>, u64)> = self
            .nodes
            .values()
            .filter(|n| n.resume_by.is_some_and(|at| at <= now_ms))
            .map(|n| (n.name.clone(), n.epoch))
            .collect();
        for (node, epoch) in late {
            self.node_down(&node, epoch, "resume_timeout", now_ms, out);
        }
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
    }

    /// The session submitted with idempotency key `key`, if any.
    pub fn session_for_key(&self, key: &str) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// Whether session `id` finished and left memory: its manifest is on disk.
    pub fn is_evicted(&self, id: &str) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|&s| self.sessions[s].evicted.is_some())
    }

    /// Whether session `id` has ended.
    pub fn is_final(&self, id: &str) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|&s| self.sessions[s].state.is_final())
    }

    /// Whether a session with this id exists.
    pub fn has_session(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    fn node_down(
        &mut self,
        name: &str,
        epoch: u64,
        reason: &str,
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) {
        let Some(node) = self.nodes.get(name) else {
            return;
        };
        if node.epoch != epoch {
            return;
        }
        let node = self.nodes.remove(name).expect("checked above");
        self.release_reserved_of(name);
        let mut lost: Vec<(usize, u32)> = node.running.into_iter().collect();
        lost.sort_unstable();
        let (mut reassigned, mut tasks) = (0, 0);
        for (s, t) in lost {
            let (frames, orphan) = self.lose(s, t, reason, now_ms);
            reassigned += frames;
            tasks += 1;
            if let Some((node, o)) = orphan {
                self.orphans.entry(node).or_default().push(o);
            }
        }
        if reassigned > 0 {
            out.push(SchedCommand::Reassigned {
                tasks,
                frames: reassigned,
                reason: reason.to_string(),
            });
        }
    }

    /// Take the running attempt of task `t` off its device and node.
    fn take_running(&mut self, s: usize, t: u32) -> Option<Box<Running>> {
        let sess = &mut self.sessions[s];
        let task = sess.tasks.get_mut(t);
        if !matches!(task.state, TaskState::Running(_)) {
            return None;
        }
        let TaskState::Running(run) = std::mem::replace(&mut task.state, TaskState::Pending) else {
            return None;
        };
        let attempt = task.attempt;
        sess.running -= 1;
        self.deadlines.remove(&(run.deadline, s, t, attempt));
        sess.running_done -= run.done;
        if let Some(n) = self.nodes.get_mut(&run.node) {
            if n.running.remove(&(s, t)) {
                n.inflight -= 1;
                if let Some(&d) = n.by_id.get(&run.device) {
                    n.devices[d].inflight -= 1;
                }
            }
        }
        Some(run)
    }

    /// Output paths the manifest holds for one attempt: a node keeps them.
    fn keep_for(&self, s: usize, t: u32, attempt: u32) -> Vec<String> {
        self.sessions[s]
            .ranges
            .iter()
            .filter(|r| r.task == t && r.attempt == attempt)
            .flat_map(|r| r.outputs.iter().map(|o| o.path.clone()))
            .collect()
    }

    /// The running attempt of task `t` is lost: bank its reported frames,
    /// requeue the rest with a new attempt. Returns the frames requeued and
    /// what the attempt's node must quarantine.
    fn lose(
        &mut self,
        s: usize,
        t: u32,
        reason: &str,
        now_ms: u64,
    ) -> (u64, Option<(Arc<str>, Orphan)>) {
        let Some(run) = self.take_running(s, t) else {
            return (0, None);
        };
        let sess = &mut self.sessions[s];
        let task = sess.tasks.get_mut(t);
        let key = AttemptKey {
            session: sess.id.clone(),
            task: u64::from(t),
            attempt: task.attempt,
        };
        let keep: Vec<String> = run.outputs.iter().map(|o| o.path.clone()).collect();
        bank(sess, t, &run, run.done, run.ids.hi, now_ms);
        let task = sess.tasks.get_mut(t);
        let rest = task.frames;
        // The whole chunk is retired: a worker that vanished (or a master
        // that restarted) may have used IDs past its last report.
        let orphan = Orphan {
            key: key.clone(),
            device: run.device.to_string(),
            keep,
            reason: reason.to_string(),
        };
        let orphan = Some((run.node.clone(), orphan));
        if let Some(n) = self.nodes.get_mut(&run.node) {
            if let Some(&d) = n.by_id.get(&run.device) {
                n.devices[d].last_error = Some(reason.to_string());
            }
        }
        let sess = &mut self.sessions[s];
        let task = sess.tasks.get_mut(t);
        if rest.is_empty() {
            task.state = TaskState::Done;
            sess.tasks_done += 1;
            sess.tasks.done(t);
            return (0, orphan);
        }
        task.losses += 1;
        task.lost_on = Some(run.node.clone());
        task.next_attempt();
        sess.failovers += 1;
        sess.replay.push(ReplayRecord {
            frames: rest,
            task: u64::from(t),
            old_attempt: key.attempt,
            new_attempt: task.attempt,
            node: run.node.to_string(),
            device: run.device.to_string(),
            reason: reason.to_string(),
        });
        if task.losses >= sess.spec.max_losses {
            let n = task.losses;
            fail_task(
                sess,
                t,
                format!("lost {n} times (`max_losses`), last: {reason}"),
            );
            return (0, orphan);
        }
        // Lost work goes first: it is what the session waits for.
        task.state = TaskState::Pending;
        sess.pending.push_front(t);
        (rest.len(), orphan)
    }

    /// Take the attempts of one device back (restart or kill), requeueing them.
    fn device_down(
        &mut self,
        node: &str,
        device: &str,
        reason: &str,
        disable: bool,
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) -> bool {
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        let Some(&d) = n.by_id.get(device) else {
            return false;
        };
        n.devices[d].disabled = disable;
        let mut on_device: Vec<(usize, u32)> = n
            .running
            .iter()
            .copied()
            .filter(
                |&(s, t)| match self.sessions[s].tasks.touched.get(&t).map(|t| &t.state) {
                    Some(TaskState::Running(r)) => &*r.device == device,
                    _ => false,
                },
            )
            .collect();
        on_device.sort_unstable();
        let (mut reassigned, mut tasks) = (0, 0);
        for (s, t) in on_device {
            let (frames, orphan) = self.lose(s, t, reason, now_ms);
            reassigned += frames;
            tasks += 1;
            if let Some((node, o)) = orphan {
                out.push(o.into_drop(&node));
            }
        }
        if reassigned > 0 {
            out.push(SchedCommand::Reassigned {
                tasks,
                frames: reassigned,
                reason: reason.to_string(),
            });
        }
        true
    }

    fn submit(&mut self, id: String, spec: SessionSpec, now_ms: u64) {
        if self.by_id.contains_key(&id) {
            return;
        }
        // Nothing per task: a task gets a record when it is first assigned.
        let tasks = Tasks::new(&spec);
        let n = tasks.len();
        if let Some(k) = &spec.idempotency_key {
            if self.by_key.contains_key(k) {
                return;
            }
            self.by_key.insert(k.clone(), id.clone());
        }
        self.by_id.insert(id.clone(), self.sessions.len());
        self.active.push(self.sessions.len());
        self.sessions.push(Session {
            id,
            spec,
            submitted_ms: now_ms,
            finished_ms: None,
            state: SessionState::Running,
            tasks,
            pending: Queue::new(n),
            reserved: VecDeque::new(),
            waiting: BTreeSet::new(),
            ranges: Vec::new(),
            replay: Vec::new(),
            failed: Vec::new(),
            running_done: 0,
            frames_done: 0,
            tasks_done: 0,
            running: 0,
            retries: 0,
            failovers: 0,
            stale: 0,
            waiting_reason: None,
            max_attempt: 0,
            evicted: None,
        });
    }

    fn cancel(&mut self, id: &str, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let Some(&s) = self.by_id.get(id) else {
            return;
        };
        if self.sessions[s].state.is_final() {
            return;
        }
        let mut running: Vec<u32> = self.sessions[s].tasks.running().map(|(t, _)| t).collect();
        running.sort_unstable();
        for t in running {
            let attempt = self.sessions[s].tasks.get_mut(t).attempt;
            let Some(run) = self.take_running(s, t) else {
                continue;
            };
            let sess = &mut self.sessions[s];
            bank(sess, t, &run, run.done, run.ids.hi, now_ms);
            // Retired whole: the attempt may still run until it gets the Drop.
            let keep = run.outputs.iter().map(|o| o.path.clone()).collect();
            self.sessions[s].tasks.get_mut(t).state = TaskState::Failed;
            out.push(SchedCommand::Drop {
                node: run.node.to_string(),
                key: AttemptKey {
                    session: id.to_string(),
                    task: u64::from(t),
                    attempt,
                },
                device: run.device.to_string(),
                keep,
                reason: "cancelled".into(),
            });
        }
        let sess = &mut self.sessions[s];
        sess.pending.clear();
        sess.reserved.clear();
        sess.waiting.clear();
        sess.state = SessionState::Cancelled;
        sess.finished_ms = Some(now_ms);
        out.push(SchedCommand::SessionFinished {
            session: id.to_string(),
            state: SessionState::Cancelled,
        });
    }

    /// Find the running attempt a report is about; `None` if it is stale.
    fn current(&self, node: &str, key: &AttemptKey) -> Option<(usize, u32)> {
        let s = *self.by_id.get(&key.session)?;
        let t = u32::try_from(key.task).ok()?;
        // A running task has a record: the others cannot be current.
        let task = self.sessions[s].tasks.touched.get(&t)?;
        match &task.state {
            TaskState::Running(r) if task.attempt == key.attempt && &*r.node == node => {
                Some((s, t))
            }
            _ => None,
        }
    }

    /// Whether `key` is the attempt that finished its task: a report about
    /// it again is a redelivery from the worker's outbox, not a stale attempt.
    fn settled(&self, key: &AttemptKey) -> bool {
        let Some(&s) = self.by_id.get(&key.session) else {
            return false;
        };
        let Ok(t) = u32::try_from(key.task) else {
            return false;
        };
        let tasks = &self.sessions[s].tasks;
        match tasks.touched.get(&t) {
            Some(task) => task.attempt == key.attempt && matches!(task.state, TaskState::Done),
            None => tasks.done.get(&t).is_some_and(|d| d.attempt == key.attempt),
        }
    }

    fn progress(&mut self, p: TaskProgress, out: &mut Vec<SchedCommand>) {
        let Some((s, t)) = self.current(&p.node, &p.key) else {
            if !self.settled(&p.key) {
                self.reject(&p.node, p.key, out);
            }
            return;
        };
        let sess = &mut self.sessions[s];
        let task = sess.tasks.get_mut(t);
        let len = task.frames.len();
        if let TaskState::Running(r) = &mut task.state {
            let before = r.done;
            r.done = r.done.max(p.frames_done.min(len));
            sess.running_done += r.done - before;
            if let Some(l) = p.last_id_used.filter(|l| *l >= r.ids.lo && *l < r.ids.hi) {
                r.last_id = Some(r.last_id.map_or(l, |x| x.max(l)));
            }
            add_outputs(&mut r.outputs, p.outputs);
        }
    }

    fn reject(&mut self, node: &str, key: AttemptKey, out: &mut Vec<SchedCommand>) {
        if let Some(&s) = self.by_id.get(&key.session) {
            self.sessions[s].stale += 1;
        }
        out.push(SchedCommand::RejectedStale {
            node: node.to_string(),
            key,
        });
    }

    fn result(&mut self, r: TaskResult, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let Some((s, t)) = self.current(&r.node, &r.key) else {
            let device = r.device.clone();
            let key = r.key.clone();
            let keep = match (self.by_id.get(&key.session), u32::try_from(key.task)) {
                (Some(&s), Ok(t)) => self.keep_for(s, t, key.attempt),
                _ => Vec::new(),
            };
            if self.settled(&key) {
                // Delivered again from the outbox: already in the ledger.
                return;
            }
            self.reject(&r.node, r.key, out);
            out.push(SchedCommand::Drop {
                node: r.node,
                key,
                device,
                keep,
                reason: "stale attempt".into(),
            });
            return;
        };
        let Some(mut run) = self.take_running(s, t) else {
            return;
        };
        let (node, device) = (run.node.clone(), run.device.clone());
        if let Some(n) = self.nodes.get_mut(&node) {
            if let Some(&d) = n.by_id.get(&device) {
                let dev = &mut n.devices[d];
                dev.tasks_done += 1;
                if let TaskOutcome::Failed { error, .. } = &r.outcome {
                    dev.last_error = Some(error.clone());
                }
            }
        }
        let sess = &mut self.sessions[s];
        let task = sess.tasks.get_mut(t);
        if let Some(l) = r
            .last_id_used
            .filter(|l| *l >= run.ids.lo && *l < run.ids.hi)
        {
            run.last_id = Some(run.last_id.map_or(l, |x| x.max(l)));
        }
        run.started_ms = r.started_ms;
        add_outputs(&mut run.outputs, r.outputs);
        match r.outcome {
            TaskOutcome::Completed => {
                let len = task.frames.len();
                bank(
                    sess,
                    t,
                    &run,
                    len,
                    run.ids.hi,
                    r.finished_ms.max(run.started_ms),
                );
                sess.tasks.get_mut(t).state = TaskState::Done;
                sess.tasks_done += 1;
                sess.tasks.done(t);
            }
            TaskOutcome::Failed { frames_done, error } => {
                let done = run.done.max(frames_done.min(task.frames.len()));
                let keep: Vec<String> = run.outputs.iter().map(|o| o.path.clone()).collect();
                // Only what the attempt reported using is retired: the rest
                // comes back. One that reported nothing retires its whole chunk.
                let retired = retired_hi(&run);
                bank(
                    sess,
                    t,
                    &run,
                    done,
                    retired,
                    r.finished_ms.max(run.started_ms),
                );
                self.ids.release(IdRange {
                    lo: retired,
                    hi: run.ids.hi,
                });
                let sess = &mut self.sessions[s];
                let key = AttemptKey {
                    session: sess.id.clone(),
                    task: u64::from(t),
                    attempt: sess.tasks.get_mut(t).attempt,
                };
                if matches!(
                    sess.spec.executor,
                    crate::protocol::ExecutorSpec::Command { .. }
                ) {
                    out.push(SchedCommand::Drop {
                        node: node.to_string(),
                        key,
                        device: device.to_string(),
                        keep,
                        reason: format!("attempt failed: {error}"),
                    });
                }
                let task = sess.tasks.get_mut(t);
                task.last_error = Some(error.clone());
                if task.frames.is_empty() {
                    task.state = TaskState::Done;
                    sess.tasks_done += 1;
                    sess.tasks.done(t);
                    return;
                }
                task.failures += 1;
                if task.failures >= sess.spec.max_attempts {
                    fail_task(sess, t, error);
                    return;
                }
                task.next_attempt();
                task.avoid = Some((node, device));
                sess.retries += 1;
                let exp = (task.failures - 1).min(20);
                let delay = sess
                    .spec
                    .backoff_ms
                    .saturating_mul(1 << exp)
                    .min(sess.spec.backoff_max_ms);
                task.state = TaskState::Waiting;
                sess.waiting.insert((now_ms + delay, t));
            }
        }
    }

    /// The master did not run for `ms`: no attempt is judged on that time.
    fn stalled(&mut self, ms: u64) {
        let deadlines = std::mem::take(&mut self.deadlines);
        for (at, s, t, attempt) in deadlines {
            let at = at.saturating_add(ms);
            let task = self.sessions[s].tasks.get_mut(t);
            if let (TaskState::Running(run), true) = (&mut task.state, task.attempt == attempt) {
                run.deadline = at;
            }
            self.deadlines.insert((at, s, t, attempt));
        }
        for n in self.nodes.values_mut() {
            if let Some(at) = &mut n.resume_by {
                *at = at.saturating_add(ms);
            }
        }
    }

    /// Attempts that said nothing past their deadline are lost (`no_answer`).
    fn expire(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let (mut frames, mut tasks) = (0, 0);
        while let Some(&(at, s, t, attempt)) = self.deadlines.first() {
            if at > now_ms {
                break;
            }
            self.deadlines.pop_first();
            let Some(task) = self.sessions[s].tasks.touched.get(&t) else {
                continue;
            };
            if task.attempt != attempt || !matches!(task.state, TaskState::Running(_)) {
                continue;
            }
            let (f, orphan) = self.lose(s, t, "no_answer", now_ms);
            frames += f;
            tasks += 1;
            if let Some((node, o)) = orphan {
                out.push(o.into_drop(&node));
            }
        }
        if tasks > 0 {
            out.push(SchedCommand::Reassigned {
                tasks,
                frames,
                reason: "no_answer".into(),
            });
        }
    }

    fn wake(&mut self, now_ms: u64) {
        for &s in &self.active {
            let sess = &mut self.sessions[s];
            while let Some(&(at, t)) = sess.waiting.first() {
                if at > now_ms {
                    break;
                }
                sess.waiting.pop_first();
                sess.tasks.get_mut(t).state = TaskState::Pending;
                sess.pending.push_back(t);
            }
        }
    }

    /// Give pending tasks to devices while there is capacity.
    fn place(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let n = self.active.len();
        if n == 0 {
            return;
        }
        let mut blocked = vec![false; n];
        loop {
            if self
                .nodes
                .values()
                .all(|nd| !nd.accepting || nd.inflight >= nd.cap())
            {
                break;
            }
            let mut progressed = false;
            for k in 0..n {
                let i = (self.rr + k) % n;
                let s = self.active[i];
                if blocked[i] || self.sessions[s].state.is_final() {
                    continue;
                }
                let sess = &self.sessions[s];
                if sess.pending.is_empty() && sess.reserved.is_empty() {
                    blocked[i] = true;
                    continue;
                }
                match self.next_placement(s) {
                    Some((t, node, d, from_reserved)) => {
                        let sess = &mut self.sessions[s];
                        if from_reserved {
                            sess.reserved.pop_front();
                        } else {
                            sess.pending.pop_front();
                        }
                        sess.waiting_reason = None;
                        let reserved = from_reserved && self.reserve_node.as_ref() == Some(&node);
                        if let Some(cmd) = self.assign(s, t, &node, d, reserved, now_ms) {
                            out.push(cmd);
                        }
                        progressed = true;
                    }
                    None => {
                        blocked[i] = true;
                        self.sessions[s].waiting_reason = Some(self.why_waiting(s));
                    }
                }
            }
            self.rr = (self.rr + 1) % n;
            if !progressed {
                break;
            }
        }
    }

    fn why_waiting(&self, s: usize) -> String {
        let spec = &self.sessions[s].spec;
        let matching = self
            .nodes
            .values()
            .flat_map(|n| n.devices.iter())
            .any(|d| caps_match(&spec.require, &d.caps));
        if matching {
            "all matching devices are busy".into()
        } else if spec.require.is_empty() {
            "no healthy worker with devices".into()
        } else {
            let req: Vec<String> = spec
                .require
                .iter()
                .map(|(k, v)| format!("{k} = {}", render_cap(v)))
                .collect();
            format!("no healthy device matches `{}`", req.join(", "))
        }
    }

    /// The next task of session `s` to place, where, and whether it was
    /// reserved: lost work first, anywhere (the session waits for it); then
    /// a reserved task on the reserve node; then the first pending task
    /// anywhere; then (nothing else pending) a reserved task anywhere.
    fn next_placement(&self, s: usize) -> Option<(u32, Arc<str>, usize, bool)> {
        let sess = &self.sessions[s];
        if let Some(t) = sess.pending.front() {
            if sess.tasks.touched.get(&t).is_some_and(|t| t.losses > 0) {
                return self.pick(s, t).map(|(n, d)| (t, n, d, false));
            }
        }
        if let (Some(&t), Some(node)) = (
            sess.reserved.front(),
            self.reserve_node.as_ref().and_then(|r| self.nodes.get(r)),
        ) {
            let mut best = None;
            self.best_on(s, t, node, &mut best);
            if let Some((_, n, d)) = best {
                return Some((t, n, d, true));
            }
        }
        if let Some(t) = sess.pending.front() {
            return self.pick(s, t).map(|(n, d)| (t, n, d, false));
        }
        let &t = sess.reserved.front()?;
        self.pick(s, t).map(|(n, d)| (t, n, d, true))
    }

    /// The best device for task `t` of session `s`.
    fn pick(&self, s: usize, t: u32) -> Option<(Arc<str>, usize)> {
        let mut best = None;
        for node in self.nodes.values() {
            self.best_on(s, t, node, &mut best);
        }
        best.map(|(_, n, i)| (n, i))
    }

    /// Replace `best` with a device of `node` that is better for task `t`
    /// of session `s`, if there is one.
    fn best_on(
        &self,
        s: usize,
        t: u32,
        node: &Node,
        best: &mut Option<(PlacementKey, Arc<str>, usize)>,
    ) {
        let sess = &self.sessions[s];
        // Only a task in play has a failed device or a lost node to avoid.
        let task = sess.tasks.touched.get(&t);
        if !node.accepting
            || node.drained
            || node.resume_by.is_some()
            || node.inflight >= node.cap()
        {
            return;
        }
        let load = u64::from(node.inflight) * 1000 / u64::from(node.cap().max(1));
        let lost_here = task.is_some_and(|t| t.lost_on.as_ref() == Some(&node.name));
        for (i, d) in node.devices.iter().enumerate() {
            if d.disabled || d.inflight > PREFETCH || !caps_match(&sess.spec.require, &d.caps) {
                continue;
            }
            let avoided = task
                .and_then(|t| t.avoid.as_ref())
                .is_some_and(|(an, ad)| *an == node.name && *ad == d.id);
            // Higher is better: not the node that lost it, not the failed
            // device, preference, idle, less load, least recently used.
            let key = (
                !lost_here,
                !avoided,
                score(&sess.spec.prefer, &d.caps),
                u32::MAX - d.inflight,
                u64::MAX - load,
                u64::MAX - d.last_used,
            );
            if best.as_ref().is_none_or(|(b, _, _)| key > *b) {
                *best = Some((key, node.name.clone(), i));
            }
        }
    }

    fn assign(
        &mut self,
        s: usize,
        t: u32,
        node: &Arc<str>,
        d: usize,
        reserved: bool,
        now_ms: u64,
    ) -> Option<SchedCommand> {
        let size = self.sessions[s].spec.id_chunk_size;
        let Some(ids) = self.ids.allocate(size) else {
            fail_task(
                &mut self.sessions[s],
                t,
                "the 64-bit ID space is exhausted".into(),
            );
            return None;
        };
        self.use_counter += 1;
        let n = self.nodes.get_mut(node).expect("picked from nodes");
        n.inflight += 1;
        n.running.insert((s, t));
        let dev = &mut n.devices[d];
        dev.inflight += 1;
        dev.last_used = self.use_counter;
        let device = dev.id.clone();
        let sess = &mut self.sessions[s];
        sess.running += 1;
        sess.max_attempt = sess.max_attempt.max(sess.tasks.get_mut(t).attempt);
        let task = sess.tasks.get_mut(t);
        // Queued behind one attempt at most, then its own timeout, then grace.
        let deadline = now_ms + 2 * sess.spec.timeout_ms + self.grace_ms;
        self.deadlines.insert((deadline, s, t, task.attempt));
        task.state = TaskState::Running(Box::new(Running {
            node: node.clone(),
            device: device.clone(),
            deadline,
            ids,
            started_ms: now_ms,
            done: 0,
            last_id: None,
            outputs: Vec::new(),
        }));
        let items = match &sess.spec.items {
            Some(items) => {
                let base = sess.spec.frames.start;
                let lo = (task.frames.start - base) as usize;
                let hi = (task.frames.end - base) as usize;
                items
                    .get(lo..hi)
                    .map(<[String]>::to_vec)
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        Some(SchedCommand::Assign {
            node: node.to_string(),
            reserved,
            task: TaskSpec {
                session: sess.id.clone(),
                session_name: sess.spec.name.clone(),
                task: u64::from(t),
                attempt: task.attempt,
                frames: task.frames,
                ids,
                device: device.to_string(),
                executor: sess.spec.executor.clone(),
                timeout_ms: sess.spec.timeout_ms,
                items,
            },
        })
    }

    fn finish(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let sessions = &mut self.sessions;
        self.active.retain(|&s| !sessions[s].state.is_final());
        for &s in &self.active {
            let sess = &mut self.sessions[s];
            if sess.state.is_final()
                || !sess.pending.is_empty()
                || !sess.reserved.is_empty()
                || !sess.waiting.is_empty()
                || sess.running > 0
            {
                continue;
            }
            sess.state = if sess.failed.is_empty() {
                SessionState::Completed
            } else if sess.frames_done == 0 {
                SessionState::Failed
            } else {
                SessionState::Partial
            };
            sess.finished_ms = Some(now_ms);
            out.push(SchedCommand::SessionFinished {
                session: sess.id.clone(),
                state: sess.state,
            });
        }
        let sessions = &self.sessions;
        self.active.retain(|&s| !sessions[s].state.is_final());
    }

    /// A finished session leaves memory but for what its view needs.
    fn evict(&mut self, id: &str) {
        let Some(&s) = self.by_id.get(id) else {
            return;
        };
        let sess = &mut self.sessions[s];
        if !sess.state.is_final() || sess.evicted.is_some() {
            return;
        }
        sess.evicted = Some(Evicted {
            frames_failed: sess
                .failed
                .iter()
                .fold(0u64, |acc, f| acc.saturating_add(f.frames.len())),
            tasks_failed: sess.failed.len() as u64,
        });
        sess.tasks = Tasks::new(&sess.spec);
        sess.pending = Queue::new(0);
        sess.reserved = VecDeque::new();
        sess.waiting = BTreeSet::new();
        sess.ranges = Vec::new();
        sess.replay = Vec::new();
        sess.failed = Vec::new();
        sess.waiting_reason = None;
        if let crate::protocol::ExecutorSpec::Command { argv, env } = &mut sess.spec.executor {
            *argv = Vec::new();
            *env = BTreeMap::new();
        }
        sess.spec.items = None;
        sess.spec.require = Capabilities::new();
        sess.spec.prefer = BTreeMap::new();
    }

    // ---- views ----

    pub fn session_ids(&self) -> impl Iterator<Item = &str> {
        self.sessions.iter().map(|s| s.id.as_str())
    }

    pub fn view(&self, id: &str, now_ms: u64) -> Option<SessionView> {
        let s = &self.sessions[*self.by_id.get(id)?];
        let (failed_frames, tasks_failed) = match s.evicted {
            Some(e) => (e.frames_failed, e.tasks_failed),
            None => (
                s.failed
                    .iter()
                    .fold(0u64, |acc, f| acc.saturating_add(f.frames.len())),
                s.failed.len() as u64,
            ),
        };
        let banked_running = s.running_done;
        Some(SessionView {
            id: s.id.clone(),
            name: s.spec.name.clone(),
            state: s.state,
            waiting: if s.state.is_final() {
                None
            } else {
                s.waiting_reason.clone()
            },
            frames_total: s.spec.frames.len(),
            frames_done: s.frames_done + banked_running,
            frames_failed: failed_frames,
            tasks_total: s.tasks.len() as u64,
            tasks_completed: s.tasks_done,
            tasks_running: s.running,
            tasks_pending: (s.pending.len() + s.reserved.len() + s.waiting.len()) as u64,
            tasks_failed,
            retries: s.retries,
            failovers: s.failovers,
            stale_rejected: s.stale,
            elapsed_ms: s
                .finished_ms
                .unwrap_or(now_ms)
                .saturating_sub(s.submitted_ms),
        })
    }

    pub fn views(&self, now_ms: u64) -> Vec<SessionView> {
        self.sessions
            .iter()
            .filter_map(|s| self.view(&s.id, now_ms))
            .collect()
    }

    /// Whether `node` is registered and, if so, `device` exists on it.
    pub fn has_device(&self, node: &str, device: Option<&str>) -> bool {
        match (self.nodes.get(node), device) {
            (Some(n), Some(d)) => n.by_id.contains_key(d),
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    pub fn is_drained(&self, node: &str) -> bool {
        self.drained.contains(node)
    }

    /// Devices of registered nodes, with what each is doing.
    pub fn device_views(&self, node: Option<&str>) -> Vec<DeviceView> {
        let mut out = Vec::new();
        for n in self
            .nodes
            .values()
            .filter(|n| node.is_none_or(|f| *n.name == *f))
        {
            let mut current: HashMap<&str, Vec<TaskRef>> = HashMap::new();
            let mut running: Vec<&(usize, u32)> = n.running.iter().collect();
            running.sort_unstable();
            for &(s, t) in running {
                let Some(task) = self.sessions[s].tasks.touched.get(&t) else {
                    continue;
                };
                if let TaskState::Running(r) = &task.state {
                    current.entry(&r.device).or_default().push(TaskRef {
                        session: self.sessions[s].id.clone(),
                        task: u64::from(t),
                        attempt: task.attempt,
                        frames: task.frames,
                        frames_done: r.done,
                    });
                }
            }
            for d in &n.devices {
                let tasks = current.remove(&*d.id).unwrap_or_default();
                let state = if d.disabled {
                    DeviceState::Quarantined
                } else if tasks.is_empty() {
                    DeviceState::Idle
                } else {
                    DeviceState::Busy
                };
                out.push(DeviceView {
                    node: n.name.to_string(),
                    device: d.id.to_string(),
                    state,
                    tasks,
                    tasks_done: d.tasks_done,
                    last_error: d.last_error.clone(),
                    capabilities: d.caps.clone(),
                });
            }
        }
        out
    }

    /// Tasks in flight on the whole cluster.
    pub fn inflight(&self) -> u64 {
        self.nodes.values().map(|n| u64::from(n.inflight)).sum()
    }

    /// The manifest of a session; `submitted_ms`/`finished_ms` are on the caller's clock.
    pub fn manifest(&self, id: &str) -> Option<Manifest> {
        let s = &self.sessions[*self.by_id.get(id)?];
        if s.evicted.is_some() {
            return None;
        }
        let mut ranges: Vec<ManifestRange> = s.ranges.iter().map(|r| r.to_range(&s.id)).collect();
        ranges.sort_by_key(|r| r.frames.start);
        let mut failed = s.failed.clone();
        failed.sort_by_key(|f| f.frames.start);
        Some(Manifest {
            session: s.id.clone(),
            name: s.spec.name.clone(),
            state: s.state,
            frames: s.spec.frames,
            executor: s.spec.executor.name().to_string(),
            submitted_ms: s.submitted_ms,
            finished_ms: s.finished_ms,
            ranges,
            replay: s.replay.clone(),
            failed,
        })
    }

    /// A session's manifest, serialized straight from the ledger (no copy of
    /// its ranges): for writing large manifests to disk.
    pub fn manifest_stream(&self, id: &str) -> Option<ManifestStream<'_>> {
        let sess = &self.sessions[*self.by_id.get(id)?];
        if sess.evicted.is_some() {
            return None;
        }
        let mut order: Vec<u32> = (0..sess.ranges.len() as u32).collect();
        order.sort_by_key(|&i| sess.ranges[i as usize].frames.start);
        Some(ManifestStream { sess, order })
    }

    /// Every ID range handed out and not returned: live chunks whole, ended
    /// attempts' used parts. For invariant checks.
    pub fn issued_ids(&self) -> Vec<IdRange> {
        let mut v = Vec::new();
        for s in &self.sessions {
            for r in &s.ranges {
                v.push(IdRange {
                    lo: r.ids.lo,
                    hi: r.ids_used,
                });
            }
            for (_, t) in s.tasks.running() {
                if let TaskState::Running(r) = &t.state {
                    v.push(r.ids);
                }
            }
        }
        v.sort();
        v
    }

    /// (node, in flight, cap, [device in flight]) for invariant checks.
    pub fn capacity(&self) -> Vec<(String, u32, u32, Vec<u32>)> {
        self.nodes
            .values()
            .map(|n| {
                (
                    n.name.to_string(),
                    n.inflight,
                    n.cap(),
                    n.devices.iter().map(|d| d.inflight).collect(),
                )
            })
            .collect()
    }

    /// The most recent reassignments over every session, newest last.
    pub fn recent_failovers(&self, n: usize) -> Vec<(String, ReplayRecord)> {
        let mut all: Vec<(String, ReplayRecord)> = self
            .sessions
            .iter()
            .rev()
            .flat_map(|s| {
                s.replay
                    .iter()
                    .rev()
                    .take(n)
                    .map(|r| (s.id.clone(), r.clone()))
            })
            .take(n)
            .collect();
        all.reverse();
        all
    }

    /// Frame ranges currently assigned (running) in a session.
    pub fn running_ranges(&self, id: &str) -> Vec<FrameRange> {
        let Some(&s) = self.by_id.get(id) else {
            return Vec::new();
        };
        let mut v: Vec<FrameRange> = self.sessions[s]
            .tasks
            .running()
            .map(|(_, t)| t.frames)
            .collect();
        v.sort();
        v
    }
}

/// The `replay` record of an attempt the ledger never recorded (sent before
/// a crash lost its cause): reason `master_restart`, no device; the new
/// attempt is the task's next number.
fn unrecorded(index: u64, task: &Task, old_attempt: u32, node: &str) -> ReplayRecord {
    ReplayRecord {
        frames: task.frames,
        task: index,
        old_attempt,
        new_attempt: task.attempt.max(task.attempt_floor),
        node: node.to_string(),
        device: String::new(),
        reason: "master_restart".into(),
    }
}

fn render_cap(v: &CapValue) -> String {
    match v {
        CapValue::Bool(b) => b.to_string(),
        CapValue::Int(i) => i.to_string(),
        CapValue::Str(s) => format!("\"{s}\""),
        CapValue::List(l) => format!("{l:?}"),
    }
}

/// Add newly reported outputs; a report delivered twice adds nothing.
fn add_outputs(have: &mut Vec<OutputFile>, new: Vec<OutputFile>) {
    for o in new {
        if !have.iter().any(|h| h.path == o.path) {
            have.push(o);
        }
    }
}

/// The end of the part of a failed attempt's ID chunk that is retired for
/// good: up to the last ID it reported using, or the whole chunk when it
/// reported none (its program may have numbered entities from `id_lo`
/// without saying so).
fn retired_hi(run: &Running) -> u64 {
    run.last_id
        .map(|l| (l + 1).clamp(run.ids.lo, run.ids.hi))
        .unwrap_or(run.ids.hi)
}

/// Record the first `done` frames of the task's current range as produced by
/// this attempt, with its ID chunk retired up to `retired_hi`, and shrink the
/// task to what is left. A completed or lost attempt retires its whole
/// chunk; a failed one what it reported using (the caller returns the rest).
fn bank(sess: &mut Session, t: u32, run: &Running, done: u64, retired_hi: u64, now_ms: u64) {
    let task = sess.tasks.get_mut(t);
    let done = done.min(task.frames.len());
    if done == 0 {
        return;
    }
    let frames = FrameRange {
        start: task.frames.start,
        end: task.frames.start + done,
    };
    sess.ranges.push(Segment {
        frames,
        task: t,
        attempt: task.attempt,
        node: run.node.clone(),
        device: run.device.clone(),
        ids: run.ids,
        ids_used: retired_hi,
        outputs: run.outputs.clone().into_boxed_slice(),
        started_ms: run.started_ms,
        finished_ms: now_ms,
    });
    sess.frames_done += done;
    task.frames.start += done;
}

fn fail_task(sess: &mut Session, t: u32, error: String) {
    let task = sess.tasks.get_mut(t);
    sess.failed.push(FailedRange {
        frames: task.frames,
        task: u64::from(t),
        attempts: task.attempt,
        error: error.clone(),
    });
    task.last_error = Some(error);
    task.state = TaskState::Failed;
}

/// A session's manifest that serializes exactly like [`Manifest`], reading
/// the ledger as it goes.
pub struct ManifestStream<'a> {
    sess: &'a Session,
    order: Vec<u32>,
}

impl ManifestStream<'_> {
    pub fn session(&self) -> &str {
        &self.sess.id
    }
}

struct RangesInOrder<'a>(&'a Session, &'a [u32]);

impl serde::Serialize for RangesInOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = ser.serialize_seq(Some(self.1.len()))?;
        for &i in self.1 {
            seq.serialize_element(&self.0.ranges[i as usize].to_range(&self.0.id))?;
        }
        seq.end()
    }
}

impl serde::Serialize for ManifestStream<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let s = self.sess;
        let mut failed = s.failed.clone();
        failed.sort_by_key(|f| f.frames.start);
        let mut st = ser.serialize_struct("Manifest", 10)?;
        st.serialize_field("session", &s.id)?;
        st.serialize_field("name", &s.spec.name)?;
        st.serialize_field("state", &s.state)?;
        st.serialize_field("frames", &s.spec.frames)?;
        st.serialize_field("executor", s.spec.executor.name())?;
        st.serialize_field("submitted_ms", &s.submitted_ms)?;
        st.serialize_field("finished_ms", &s.finished_ms)?;
        st.serialize_field("ranges", &RangesInOrder(s, &self.order))?;
        st.serialize_field("replay", &s.replay)?;
        st.serialize_field("failed", &failed)?;
        st.end()
    }
}

/// Stops an attempt `node` holds that the ledger never recorded (see
/// `Scheduler::note_unrecorded`); the node knows its device.
fn drop_unrecorded(node: &str, key: &AttemptKey) -> SchedCommand {
    SchedCommand::Drop {
        node: node.to_string(),
        key: key.clone(),
        device: String::new(),
        keep: Vec::new(),
        reason: "master_restart: sent before the crash, never recorded".into(),
    }
}
