//! A session's tasks and its queue of pending ones: a task never assigned
//! has no record, a done task keeps only its attempt numbers.

use super::*;

#[derive(Debug, Clone)]
pub(super) struct Running {
    pub(super) node: Arc<str>,
    pub(super) device: Arc<str>,
    /// When the attempt is declared lost if it says nothing (`no_answer`).
    pub(super) deadline: u64,
    pub(super) ids: IdRange,
    pub(super) started_ms: u64,
    pub(super) done: u64,
    pub(super) last_id: Option<u64>,
    pub(super) outputs: Vec<OutputFile>,
    /// A workflow attempt's steps, from its result.
    pub(super) steps: Vec<crate::workflow::StepRecord>,
}

#[derive(Debug, Clone)]
pub(super) enum TaskState {
    Pending,
    /// Backoff after a failure, until `not_before`.
    Waiting,
    Running(Box<Running>),
    Done,
    Failed,
}

#[derive(Debug, Clone)]
pub(super) struct Task {
    /// What is left to produce: shrinks as progress is banked.
    pub(super) frames: FrameRange,
    pub(super) attempt: u32,
    /// The least number a new attempt may take (see [`SchedEvent::Resume`]).
    pub(super) attempt_floor: u32,
    /// Bit n: a restart skipped attempt number n (below 64), which a
    /// master may have sent before the crash without recording it.
    pub(super) skipped: u64,
    pub(super) failures: u32,
    pub(super) losses: u32,
    pub(super) state: TaskState,
    /// The device of the last failed attempt, avoided on retry if possible.
    pub(super) avoid: Option<(Arc<str>, Arc<str>)>,
    /// The node of the last lost attempt: another capable node goes first.
    pub(super) lost_on: Option<Arc<str>>,
    pub(super) last_error: Option<String>,
}

impl Task {
    /// A task never assigned: its whole range, pending.
    fn pending(frames: FrameRange, attempt: u32, skipped: u64) -> Self {
        Task {
            frames,
            attempt,
            attempt_floor: 0,
            skipped,
            failures: 0,
            losses: 0,
            state: TaskState::Pending,
            avoid: None,
            lost_on: None,
            last_error: None,
        }
    }

    /// Move on to a new attempt.
    pub(super) fn next_attempt(&mut self) {
        self.attempt = self.attempt.saturating_add(1).max(self.attempt_floor);
    }

    /// A restart skips `attempt`: see [`SchedEvent::Resume`].
    pub(super) fn skip(&mut self, attempt: u32) {
        if attempt < 64 {
            self.skipped |= 1 << attempt;
        }
    }

    /// Whether `attempt` is a number a restart skipped, the only numbers
    /// an attempt the ledger never recorded can carry. Above 63 the
    /// numbers are not kept: any the ledger could have reached counts.
    pub(super) fn was_skipped(&self, attempt: u32) -> bool {
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
pub(super) struct Done {
    pub(super) attempt: u32,
    pub(super) attempt_floor: u32,
    pub(super) skipped: u64,
}

impl Done {
    /// `task`, fresh, as the done task it is.
    fn apply(&self, task: &mut Task) {
        task.frames.start = task.frames.end;
        task.attempt = self.attempt;
        task.attempt_floor = self.attempt_floor;
        task.skipped = self.skipped;
        task.state = TaskState::Done;
    }
}

/// Task `t`'s whole range, in a session of `frames` cut every `chunk`.
fn range_in(frames: FrameRange, chunk: u64, t: TaskIdx) -> FrameRange {
    let start = frames.start.saturating_add(t.wire().saturating_mul(chunk));
    FrameRange {
        start,
        end: start.saturating_add(chunk).min(frames.end),
    }
}

/// The tasks of a session. A session costs what is in flight, not what it
/// covers: a task never assigned has no record (it is its range, attempt
/// [`Tasks::fresh_attempt`], pending), a task in play has one, and a done
/// task keeps only the number of the attempt that finished it.
#[derive(Debug)]
pub(super) struct Tasks {
    pub(super) frames: FrameRange,
    pub(super) chunk: u64,
    pub(super) n: u32,
    /// Tasks assigned at least once and not done.
    pub(super) touched: BTreeMap<TaskIdx, Task>,
    /// Done tasks: what a late report about them needs (see [`Done`]).
    pub(super) done: BTreeMap<TaskIdx, Done>,
    /// The attempt number of a task never assigned (restarts raise it).
    pub(super) fresh_attempt: u32,
    /// The numbers restarts skipped for tasks never assigned.
    pub(super) fresh_skipped: u64,
}

impl Tasks {
    pub(super) fn new(spec: &SessionSpec) -> Self {
        let chunk = spec.chunk_frames.max(1);
        Self {
            frames: spec.frames,
            chunk,
            n: spec.frames.len().div_ceil(chunk) as u32,
            touched: BTreeMap::new(),
            done: BTreeMap::new(),
            fresh_attempt: 1,
            fresh_skipped: 0,
        }
    }

    pub(super) fn len(&self) -> u32 {
        self.n
    }

    /// The whole range of task `t`.
    pub(super) fn range(&self, t: TaskIdx) -> FrameRange {
        range_in(self.frames, self.chunk, t)
    }

    pub(super) fn fresh(&self, t: TaskIdx) -> Task {
        Task::pending(self.range(t), self.fresh_attempt, self.fresh_skipped)
    }

    /// Task `t` as it stands (`None`: no such task).
    pub(super) fn get(&self, t: TaskIdx) -> Option<std::borrow::Cow<'_, Task>> {
        use std::borrow::Cow;
        if t.0 >= self.n {
            return None;
        }
        if let Some(task) = self.touched.get(&t) {
            return Some(Cow::Borrowed(task));
        }
        let mut task = self.fresh(t);
        if let Some(d) = self.done.get(&t) {
            d.apply(&mut task);
        }
        Some(Cow::Owned(task))
    }

    /// Task `t`, with a record of its own from now on.
    pub(super) fn get_mut(&mut self, t: TaskIdx) -> &mut Task {
        use std::collections::btree_map::Entry;
        let (frames, chunk, n) = (self.frames, self.chunk, self.n);
        let (attempt, skipped) = (self.fresh_attempt, self.fresh_skipped);
        // One search of the tasks in play, whether `t` is one or not.
        match self.touched.entry(t) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                assert!(t.0 < n, "a task of this session");
                let mut task = Task::pending(range_in(frames, chunk, t), attempt, skipped);
                if let Some(d) = self.done.remove(&t) {
                    d.apply(&mut task);
                }
                v.insert(task)
            }
        }
    }

    /// Task `t` is done: only its attempt number stays.
    pub(super) fn done(&mut self, t: TaskIdx) {
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
    pub(super) fn running(&self) -> impl Iterator<Item = (TaskIdx, &Task)> {
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
pub(super) struct Queue {
    pub(super) front: VecDeque<TaskIdx>,
    /// Tasks never assigned, from here to `end`, except `taken`.
    pub(super) next: u32,
    pub(super) end: u32,
    /// Tasks never assigned taken out of order (reserved from ahead of `next`).
    pub(super) taken: BTreeSet<u32>,
    pub(super) back: VecDeque<TaskIdx>,
}

impl Queue {
    pub(super) fn new(n: u32) -> Self {
        Self {
            front: VecDeque::new(),
            next: 0,
            end: n,
            taken: BTreeSet::new(),
            back: VecDeque::new(),
        }
    }

    pub(super) fn fresh_len(&self) -> usize {
        (self.end - self.next) as usize - self.taken.range(self.next..).count()
    }

    pub(super) fn len(&self) -> usize {
        self.front.len() + self.fresh_len() + self.back.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.front.is_empty() && self.back.is_empty() && self.fresh_len() == 0
    }

    /// Skip taken tasks at the cursor.
    pub(super) fn settle(&mut self) {
        while self.next < self.end && self.taken.remove(&self.next) {
            self.next += 1;
        }
    }

    pub(super) fn front(&self) -> Option<TaskIdx> {
        self.get(0)
    }

    pub(super) fn pop_front(&mut self) -> Option<TaskIdx> {
        if let Some(t) = self.front.pop_front() {
            return Some(t);
        }
        self.settle();
        if self.next < self.end {
            let t = self.next;
            self.next += 1;
            self.settle();
            return Some(TaskIdx(t));
        }
        self.back.pop_front()
    }

    pub(super) fn push_front(&mut self, t: TaskIdx) {
        self.front.push_front(t);
    }

    pub(super) fn push_back(&mut self, t: TaskIdx) {
        self.back.push_back(t);
    }

    /// The `i`-th pending task (meant for the first few).
    pub(super) fn get(&self, i: usize) -> Option<TaskIdx> {
        if let Some(&t) = self.front.get(i) {
            return Some(t);
        }
        let mut i = i - self.front.len();
        for t in (self.next..self.end).filter(|t| !self.taken.contains(t)) {
            if i == 0 {
                return Some(TaskIdx(t));
            }
            i -= 1;
        }
        self.back.get(i).copied()
    }

    /// Take `t` out, if it is among the first `within` pending tasks.
    pub(super) fn remove(&mut self, t: TaskIdx, within: usize) -> bool {
        if let Some(pos) = self.front.iter().take(within).position(|&p| p == t) {
            self.front.remove(pos);
            return true;
        }
        let within = within.saturating_sub(self.front.len());
        let (at, ahead) = (t.0, (t.0 as usize).saturating_sub(self.next as usize));
        if at >= self.next && at < self.end && ahead < within && !self.taken.contains(&at) {
            self.taken.insert(at);
            self.settle();
            return true;
        }
        if let Some(pos) = self.back.iter().position(|&p| p == t) {
            self.back.remove(pos);
            return true;
        }
        false
    }

    pub(super) fn clear(&mut self) {
        self.front.clear();
        self.back.clear();
        self.taken.clear();
        self.next = self.end;
    }
}
