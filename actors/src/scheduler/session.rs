//! Sessions: submitting, cancelling, finishing and evicting them, and
//! banking what an attempt produced.

use super::*;

/// Ranges above which an evicted session's ledger is freed on another thread.
const FREE_ELSEWHERE_ABOVE: usize = 10_000;

/// Free `garbage` on a thread of its own, not the caller's.
fn free_elsewhere<T: Send + 'static>(garbage: T) {
    // If no thread can be started, it is freed here, as before.
    let _ = std::thread::Builder::new()
        .name("orch-free".into())
        .spawn(move || drop(garbage));
}

/// Ranges per chunk of [`Segments`].
const SEGMENT_CHUNK: usize = 4096;

/// A session's produced ranges, in the order they were produced, in shared
/// chunks: a manifest snapshot copies a pointer per chunk, not the ranges
/// (it is written off the master's thread while the session goes on), and
/// growing never copies more than one chunk.
#[derive(Debug, Clone, Default)]
pub(super) struct Segments {
    chunks: Vec<Arc<Vec<Segment>>>,
    len: usize,
}

impl Segments {
    pub(super) fn push(&mut self, seg: Segment) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < SEGMENT_CHUNK => Arc::make_mut(last).push(seg),
            _ => self.chunks.push(Arc::new(vec![seg])),
        }
        self.len += 1;
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Segment> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    /// Keep the ranges `keep` says (it may be asked twice about one); only
    /// chunks that lose one are copied.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Segment) -> bool) {
        for chunk in &mut self.chunks {
            if chunk.iter().all(&mut keep) {
                continue;
            }
            Arc::make_mut(chunk).retain(&mut keep);
        }
        self.chunks.retain(|c| !c.is_empty());
        self.len = self.chunks.iter().map(|c| c.len()).sum();
    }
}

/// A produced range, kept compact: a million of them must fit in memory.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub(super) frames: FrameRange,
    pub(super) task: TaskIdx,
    pub(super) attempt: u32,
    pub(super) node: Arc<str>,
    pub(super) device: Arc<str>,
    pub(super) ids: IdRange,
    pub(super) ids_used: u64,
    pub(super) outputs: Arc<[OutputFile]>,
    pub(super) started_ms: u64,
    pub(super) finished_ms: u64,
    /// A workflow session's: what each step of the attempt did.
    pub(super) steps: Option<Arc<[crate::workflow::StepRecord]>>,
}

impl Segment {
    pub(super) fn to_range(&self, session: &str, workflow: Option<&str>) -> ManifestRange {
        let key = AttemptKey {
            session: session.to_string(),
            task: self.task.wire(),
            attempt: self.attempt,
        };
        ManifestRange {
            frames: self.frames,
            task: self.task.wire(),
            attempt: self.attempt,
            node: self.node.to_string(),
            device: self.device.to_string(),
            ids: self.ids,
            ids_used: Some(self.ids_used),
            outputs: self.outputs.to_vec(),
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            out_dir: out_dir(&key, &self.node, &self.device),
            workflow: workflow.map(str::to_string),
            steps: self.steps.as_deref().map(<[_]>::to_vec).unwrap_or_default(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: String,
    pub(super) spec: SessionSpec,
    pub(super) submitted_ms: u64,
    pub(super) finished_ms: Option<u64>,
    pub(super) state: SessionState,
    pub(super) tasks: Tasks,
    pub(super) pending: Queue,
    /// Pending tasks set aside for the reserve node, in order.
    pub(super) reserved: VecDeque<TaskIdx>,
    pub(super) waiting: BTreeSet<(u64, TaskIdx)>,
    pub(super) ranges: Segments,
    /// Frames reported done by running attempts (not yet banked).
    pub(super) running_done: u64,
    pub(super) replay: Vec<ReplayRecord>,
    pub(super) failed: Vec<FailedRange>,
    pub(super) frames_done: u64,
    pub(super) tasks_done: u64,
    pub(super) running: u64,
    pub(super) retries: u64,
    pub(super) failovers: u64,
    pub(super) stale: u64,
    pub(super) waiting_reason: Option<String>,
    /// The highest attempt number given out (a late report of an evicted
    /// session is checked against it).
    pub(super) max_attempt: u32,
    /// Finished, its manifest on disk, its ledger gone from memory (see
    /// [`SchedEvent::Evict`]): what its view still needs.
    pub(super) evicted: Option<Evicted>,
    /// An operator paused it: it gets nothing new.
    pub(super) paused: bool,
    /// Failed ranges an operator ran again, as they had failed.
    pub(super) retried: Vec<FailedRange>,
    /// (task, attempt) of produced ranges an operator requeued: a manifest
    /// merged with the one on disk leaves them out.
    pub(super) superseded: Vec<(u64, u32)>,
    /// Run again after its ledger left memory: its manifest is the one on
    /// disk merged with what it did since (see [`ManifestSnapshot`]).
    pub(super) reopened: bool,
    /// Since when it has had work to place and got no device (see
    /// [`crate::protocol::PRIORITY_AGING_MS`]).
    pub(super) starved_since: Option<u64>,
    /// How long its attempts run, a moving average of what results report
    /// (their own start and end): whether devices queue its attempts
    /// ([`PREFETCH_UNDER_MS`]).
    pub(super) attempt_ms: Option<u64>,
    /// Tasks each device turned away (`node/device`).
    pub(super) turned_away: BTreeMap<String, u64>,
    /// Tasks that came to a device its worker found offline (`node/device`).
    pub(super) skipped_offline: BTreeMap<String, u64>,
    /// Why each device last turned a task away or skipped one.
    pub(super) failure_reasons: BTreeMap<String, String>,
    /// Failed or turned-away attempts per (node, device) (`blocklist_after`).
    pub(super) device_failures: HashMap<(Arc<str>, Arc<str>), u32>,
    /// Devices and nodes that take none of its tasks any more.
    pub(super) blocked_devices: HashSet<(Arc<str>, Arc<str>)>,
    pub(super) blocked_nodes: HashSet<Arc<str>>,
    pub(super) blocklisted: Vec<crate::protocol::Blocklisting>,
}

impl Session {
    /// Whether device `d` of `node` (or, with `None`, the whole node) is
    /// blocklisted for this session.
    pub(super) fn blocks(&self, node: &Node, d: Option<usize>) -> bool {
        if self.blocked_nodes.contains(&node.name) {
            return true;
        }
        match d {
            Some(d) if !self.blocked_devices.is_empty() => self
                .blocked_devices
                .contains(&(node.name.clone(), node.devices[d].id.clone())),
            _ => false,
        }
    }

    /// How many of its attempts a device may hold queued behind the one it
    /// runs: [`PREFETCH`] while they are short (or not measured yet), none
    /// once they run [`PREFETCH_UNDER_MS`] or longer.
    pub(super) fn depth(&self) -> u32 {
        if self.attempt_ms.is_some_and(|ms| ms >= PREFETCH_UNDER_MS) {
            0
        } else {
            PREFETCH
        }
    }
}

/// What stays of an evicted session besides its counters.
#[derive(Debug, Clone, Copy)]
pub(super) struct Evicted {
    pub(super) frames_failed: u64,
    pub(super) tasks_failed: u64,
}

/// The end of the part of a failed attempt's ID chunk that is retired for
/// good: up to the last ID it reported using, or the whole chunk when it
/// reported none (its program may have numbered entities from `id_lo`
/// without saying so).
pub(super) fn retired_hi(run: &Running) -> u64 {
    run.last_id
        .map(|l| (l + 1).clamp(run.ids.lo, run.ids.hi))
        .unwrap_or(run.ids.hi)
}

/// Record the first `done` frames of the task's current range as produced by
/// this attempt, with its ID chunk retired up to `retired_hi`, and shrink the
/// task to what is left. A completed or lost attempt retires its whole
/// chunk; a failed one what it reported using (the caller returns the rest).
pub(super) fn bank(
    sess: &mut Session,
    t: TaskIdx,
    run: &Running,
    done: u64,
    retired_hi: u64,
    now_ms: u64,
) {
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
        outputs: run.outputs.clone().into(),
        started_ms: run.started_ms,
        finished_ms: now_ms,
        steps: (!run.steps.is_empty()).then(|| run.steps.clone().into()),
    });
    sess.frames_done += done;
    task.frames.start += done;
}

pub(super) fn fail_task(sess: &mut Session, t: TaskIdx, error: String) {
    fail_task_with(sess, t, error, Vec::new());
}

/// [`fail_task`] with what the steps of its last attempt did.
pub(super) fn fail_task_with(
    sess: &mut Session,
    t: TaskIdx,
    error: String,
    steps: Vec<crate::workflow::StepRecord>,
) {
    let id = sess.id.clone();
    let task = sess.tasks.get_mut(t);
    // The device of its last attempt, when one ran and failed there.
    let ran_on = task
        .avoid
        .clone()
        .filter(|_| task.failures > 0 || task.losses > 0);
    sess.failed.push(FailedRange {
        frames: task.frames,
        task: t.wire(),
        attempts: task.attempt,
        error: error.clone(),
        steps,
        log: ran_on
            .as_ref()
            .map(|_| crate::protocol::log_route(&id, t.wire(), task.attempt)),
        node: ran_on.as_ref().map(|(n, _)| n.to_string()),
        device: ran_on.map(|(_, d)| d.to_string()),
    });
    task.last_error = Some(error);
    task.state = TaskState::Failed;
}

impl Scheduler {
    pub(super) fn submit(&mut self, id: String, spec: SessionSpec, now_ms: u64) {
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
        let s = SessionIdx(self.sessions.len());
        self.by_id.insert(id.clone(), s);
        self.active.push(s);
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
            ranges: Segments::default(),
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
            paused: false,
            retried: Vec::new(),
            superseded: Vec::new(),
            reopened: false,
            starved_since: None,
            attempt_ms: None,
            turned_away: BTreeMap::new(),
            skipped_offline: BTreeMap::new(),
            failure_reasons: BTreeMap::new(),
            device_failures: HashMap::new(),
            blocked_devices: HashSet::new(),
            blocked_nodes: HashSet::new(),
            blocklisted: Vec::new(),
        });
    }

    pub(super) fn cancel(&mut self, id: &str, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let Some(&s) = self.by_id.get(id) else {
            return;
        };
        if self.sessions[s].state.is_final() {
            return;
        }
        let mut running: Vec<TaskIdx> = self.sessions[s].tasks.running().map(|(t, _)| t).collect();
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
                    task: t.wire(),
                    attempt,
                },
                device: run.device.to_string(),
                keep,
                reason: LossReason::Cancelled,
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

    pub(super) fn finish(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
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

    /// A finished session leaves memory but for what its view needs and
    /// what running it again needs (its spec and failed ranges).
    pub(super) fn evict(&mut self, id: &str) {
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
        let tasks = std::mem::replace(&mut sess.tasks, Tasks::new(&sess.spec));
        sess.pending = Queue::new(0);
        sess.reserved = VecDeque::new();
        sess.waiting = BTreeSet::new();
        let ranges = std::mem::take(&mut sess.ranges);
        if ranges.len() > FREE_ELSEWHERE_ABOVE {
            // A million ranges take the master ~100 ms to free.
            free_elsewhere((tasks, ranges));
        }
        sess.replay = Vec::new();
        sess.retried = Vec::new();
        sess.superseded = Vec::new();
        sess.reopened = false;
        sess.waiting_reason = None;
        // The spec and the failed ranges stay: `orchctl retry` and
        // `requeue` run them again.
    }
}
