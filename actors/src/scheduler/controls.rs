//! Operator controls on a session: pause and resume, retry its failed
//! ranges, requeue a produced range. Each is a [`SchedEvent`] recorded in
//! the master's store, so a restart replays it; the checks an operator's
//! request passes before it is recorded are here too, so that what is
//! recorded always applies.

use super::*;

/// Where a requeue finds the ranges it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueNeeds {
    /// The ledger holds them.
    Ledger,
    /// The session's ledger left memory: read them from its manifest on disk
    /// and name them in [`SchedEvent::Requeue`].
    Disk,
}

impl Scheduler {
    /// Session `s` leaves its finished state to run again; after an
    /// eviction its manifest is the one on disk merged with what it does now.
    fn reopen(&mut self, s: SessionIdx) {
        let sess = &mut self.sessions[s];
        if sess.evicted.take().is_some() {
            sess.reopened = true;
        }
        if sess.state.is_final() {
            // Run again means run: a pause does not outlive the session's end.
            sess.paused = false;
            sess.state = SessionState::Running;
            sess.finished_ms = None;
            sess.starved_since = None;
            let at = self.active.partition_point(|&a| a < s);
            if self.active.get(at) != Some(&s) {
                self.active.insert(at, s);
            }
        }
    }

    /// Why session `id` cannot be paused or resumed, if it cannot.
    pub fn pause_refused(&self, id: &str) -> Option<String> {
        let Some(&s) = self.by_id.get(id) else {
            return Some(format!("no session `{id}`"));
        };
        let sess = &self.sessions[s];
        sess.state.is_final().then(|| {
            format!(
                "session `{id}` is {}: only a running session can be paused or resumed",
                sess.state.as_str()
            )
        })
    }

    pub(super) fn pause(&mut self, id: &str, paused: bool) {
        if self.pause_refused(id).is_some() {
            return;
        }
        let sess = &mut self.sessions[self.by_id[id]];
        sess.paused = paused;
        sess.starved_since = None;
        sess.waiting_reason = None;
    }

    /// The tasks [`SchedEvent::Retry`] of session `id` would run again.
    pub fn failed_tasks(&self, id: &str) -> Vec<u64> {
        self.by_id
            .get(id)
            .map(|&s| self.sessions[s].failed.iter().map(|f| f.task).collect())
            .unwrap_or_default()
    }

    /// Why the failed ranges of session `id` cannot run again, if they cannot.
    pub fn retry_refused(&self, id: &str) -> Option<String> {
        let Some(&s) = self.by_id.get(id) else {
            return Some(format!("no session `{id}`"));
        };
        let sess = &self.sessions[s];
        match sess.state {
            SessionState::Partial | SessionState::Failed if !sess.failed.is_empty() => None,
            state => Some(format!(
                "session `{id}` is {}: only a `partial` or `failed` session has failed ranges to retry",
                state.as_str()
            )),
        }
    }

    /// Every failed range of a finished session runs again under a new
    /// attempt number (above any the session gave out) and a fresh ID chunk;
    /// the failures move to `retried`.
    pub(super) fn retry(&mut self, id: &str) {
        if self.retry_refused(id).is_some() {
            return;
        }
        let s = self.by_id[id];
        let from_disk = self.sessions[s].evicted.is_some();
        self.reopen(s);
        let sess = &mut self.sessions[s];
        let failed = std::mem::take(&mut sess.failed);
        let floor = if from_disk { sess.max_attempt } else { 0 };
        for f in &failed {
            let Some(t) = TaskIdx::from_wire(f.task).filter(|t| t.0 < sess.tasks.len()) else {
                continue;
            };
            let task = sess.tasks.get_mut(t);
            task.frames = f.frames;
            task.attempt = task.attempt.max(f.attempts).max(floor);
            task.next_attempt();
            task.failures = 0;
            task.losses = 0;
            task.lost_on = None;
            task.state = TaskState::Pending;
            sess.pending.push_back(t);
        }
        sess.retried.extend(failed);
    }

    /// Whether task `task` of session `id` can run again, and where its
    /// produced ranges are to be found.
    pub fn requeue_check(&self, id: &str, task: u64) -> Result<RequeueNeeds, String> {
        let Some(&s) = self.by_id.get(id) else {
            return Err(format!("no session `{id}`"));
        };
        let sess = &self.sessions[s];
        if sess.state == SessionState::Cancelled {
            return Err(format!(
                "session `{id}` was cancelled: nothing of it runs again"
            ));
        }
        let n = sess.tasks.len();
        let Some(t) = TaskIdx::from_wire(task).filter(|t| t.0 < n) else {
            return Err(format!(
                "session `{id}` has tasks 0..{n}; there is no task {task}"
            ));
        };
        if sess.failed.iter().any(|f| f.task == task) {
            return Err(format!(
                "task {task} of `{id}` failed: `orchctl retry {id}` runs its failed ranges again"
            ));
        }
        // A session run again after its ledger left memory knows only the
        // tasks it ran since; the others are in its manifest on disk.
        let on_disk = sess.reopened
            && !sess.tasks.touched.contains_key(&t)
            && !sess.tasks.done.contains_key(&t);
        if sess.evicted.is_some() || on_disk {
            return Ok(RequeueNeeds::Disk);
        }
        match sess.tasks.get(t).map(|c| c.state.clone()) {
            Some(TaskState::Done) => Ok(RequeueNeeds::Ledger),
            Some(TaskState::Running(_)) => Err(format!(
                "task {task} of `{id}` is running: it can run again once it is produced"
            )),
            _ => Err(format!(
                "task {task} of `{id}` is not produced yet: nothing to run again"
            )),
        }
    }

    /// Task `task` runs again from its first frame under a new attempt:
    /// its produced ranges leave the manifest for its `replay` (reason
    /// `operator_requeue`), and their nodes quarantine their outputs.
    pub(super) fn requeue(
        &mut self,
        id: &str,
        task: u64,
        produced: Vec<ProducedRange>,
        out: &mut Vec<SchedCommand>,
    ) {
        let Ok(needs) = self.requeue_check(id, task) else {
            return;
        };
        let s = self.by_id[id];
        let t = TaskIdx(task as u32);
        let segments = match needs {
            RequeueNeeds::Disk => {
                let gone = &self.sessions[s].superseded;
                produced
                    .into_iter()
                    .filter(|p| !gone.contains(&(task, p.attempt)))
                    .collect()
            }
            RequeueNeeds::Ledger => {
                let sess = &mut self.sessions[s];
                let found: Vec<ProducedRange> = sess
                    .ranges
                    .iter()
                    .filter(|r| r.task == t)
                    .map(|r| ProducedRange {
                        frames: r.frames,
                        attempt: r.attempt,
                        node: r.node.to_string(),
                        device: r.device.to_string(),
                    })
                    .collect();
                sess.ranges.retain(|r| r.task != t);
                found
            }
        };
        if segments.is_empty() {
            return;
        }
        self.reopen(s);
        let sess = &mut self.sessions[s];
        let floor = if needs == RequeueNeeds::Disk {
            sess.max_attempt
        } else {
            0
        };
        let range = sess.tasks.range(t);
        let old = segments.iter().map(|p| p.attempt).max().unwrap_or(0);
        let rec = sess.tasks.get_mut(t);
        rec.frames = range;
        rec.attempt = rec.attempt.max(old).max(floor);
        rec.next_attempt();
        rec.failures = 0;
        rec.losses = 0;
        rec.avoid = None;
        rec.lost_on = None;
        rec.state = TaskState::Pending;
        let new_attempt = rec.attempt;
        let frames: u64 = segments.iter().map(|p| p.frames.len()).sum();
        sess.frames_done = sess.frames_done.saturating_sub(frames);
        sess.tasks_done = sess.tasks_done.saturating_sub(1);
        sess.pending.push_front(t);
        for p in segments {
            sess.superseded.push((task, p.attempt));
            sess.replay.push(ReplayRecord {
                frames: p.frames,
                task,
                old_attempt: p.attempt,
                new_attempt,
                node: p.node.clone(),
                device: p.device.clone(),
                reason: LossReason::OperatorRequeue,
            });
            out.push(SchedCommand::Drop {
                key: AttemptKey {
                    session: id.to_string(),
                    task,
                    attempt: p.attempt,
                },
                node: p.node,
                device: p.device,
                keep: Vec::new(),
                reason: LossReason::OperatorRequeue,
            });
        }
    }
}
