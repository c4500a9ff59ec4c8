//! Master restarts: tasks reserved for the master's own node, attempts
//! the ledger never recorded, nodes that come back.

use super::*;

/// Most tasks reserved for the master's node at once.
pub const MAX_RESERVED: usize = 1024;

/// The `replay` record of an attempt the ledger never recorded (sent before
/// a crash lost its cause): reason `master_restart`, no device; the new
/// attempt is the task's next number.
pub(super) fn unrecorded(index: u64, task: &Task, old_attempt: u32, node: &str) -> ReplayRecord {
    ReplayRecord {
        frames: task.frames,
        task: index,
        old_attempt,
        new_attempt: task.attempt.max(task.attempt_floor),
        node: node.to_string(),
        device: String::new(),
        reason: LossReason::MasterRestart { detail: None },
    }
}

/// Stops an attempt `node` holds that the ledger never recorded (see
/// `Scheduler::note_unrecorded`); the node knows its device.
pub(super) fn drop_unrecorded(node: &str, key: &AttemptKey) -> SchedCommand {
    SchedCommand::Drop {
        node: node.to_string(),
        key: key.clone(),
        device: String::new(),
        keep: Vec::new(),
        reason: LossReason::MasterRestart {
            detail: Some("sent before the crash, never recorded".into()),
        },
    }
}

impl Scheduler {
    /// The master restarted and replayed its store (see [`SchedEvent::Resume`]).
    pub(super) fn resume(&mut self, id_floor: u64, within_ms: u64, now_ms: u64) {
        // Chunks handed out after the last durable commit are unknown:
        // issue nothing below the reservation, not even returned tails.
        self.ids.resume_above(id_floor);
        // Reserved tasks may have gone to the master's own node since the
        // last commit, and its worker died with the master: nobody can say
        // whether they ran. They run again, listed as possibly produced twice.
        self.release_reserved(true);
        // Attempts are unknown too: the master sends a task's first
        // assignment since a commit before the next commit. So a pending
        // task's number, or the one a running attempt's end would give (the
        // next, or the floor an earlier restart set), may be running
        // somewhere: never give it out again.
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
                        let skipped = task.attempt.saturating_add(1).max(task.attempt_floor);
                        task.skip(skipped);
                        task.attempt_floor = skipped.saturating_add(1)
                    }
                    TaskState::Done | TaskState::Failed => {}
                }
            }
        }
        for n in self.nodes.values_mut() {
            n.resume_by = Some(now_ms + within_ms);
            self.index.node(n);
        }
    }

    /// Attempts a node holds that the ledger never recorded: sent by the
    /// master before a crash lost their cause (see [`SchedEvent::Resume`]).
    /// Their frames may have been produced, and run again under a new
    /// attempt: the manifest's `replay` says so. They are stale: the node
    /// stops them (it knows their device) and quarantines their outputs.
    pub(super) fn note_unrecorded(
        &mut self,
        node: &str,
        held: &[AttemptKey],
        out: &mut Vec<SchedCommand>,
    ) {
        for key in held {
            if self.current(node, key).is_some() || self.settled(key) {
                continue;
            }
            let (Some(&s), Some(t)) = (self.by_id.get(&key.session), TaskIdx::from_wire(key.task))
            else {
                continue;
            };
            let sess = &mut self.sessions[s];
            if sess.evicted.is_some() {
                // Its ledger is gone: any number up to the highest it gave
                // out (and one past, the one a restart skipped) may have
                // run. Listing one that did not costs a line; one that
                // produced a range is not listed (the manifest on disk
                // says so). Nothing is dropped here: the attempt may be
                // one that produced a range, whose outputs the manifest
                // lists; its result, delivered again, is answered with a
                // drop that keeps what it reported.
                if t.0 < sess.tasks.len() && key.attempt <= sess.max_attempt.saturating_add(1) {
                    out.push(SchedCommand::AmendOnDisk {
                        session: sess.id.clone(),
                        record: ReplayRecord {
                            frames: sess.tasks.range(t),
                            task: key.task,
                            old_attempt: key.attempt,
                            new_attempt: sess.max_attempt.saturating_add(1).max(key.attempt + 1),
                            node: node.to_string(),
                            device: String::new(),
                            reason: LossReason::MasterRestart { detail: None },
                        },
                    });
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
        let eligible: Vec<SessionIdx> = (0..k)
            .map(|i| self.active[(self.rr + i) % k])
            .filter(|&s| {
                let sess = &self.sessions[s];
                !sess.state.is_final()
                    && !sess.pending.is_empty()
                    && n.devices
                        .iter()
                        .any(|d| d.usable() && caps_match(&sess.spec.require, &d.caps))
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
                    taken[i].push(t.0);
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

    pub(super) fn reserve(&mut self, node: String, tasks: Vec<(String, Vec<u32>)>) {
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
            for t in ts.into_iter().map(TaskIdx) {
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
    pub(super) fn release_reserved_of(&mut self, node: &str) {
        if self.reserve_node.as_deref() == Some(node) {
            self.release_reserved(false);
        }
    }

    /// Put every reserved task back in front of its session's pending tasks;
    /// with `listed`, the manifest's `replay` lists each as possibly
    /// produced by its current attempt on the reserve node (a master
    /// restart: the next attempt takes the next number).
    pub(super) fn release_reserved(&mut self, listed: bool) {
        let Some(node) = self.reserve_node.take() else {
            return;
        };
        for sess in &mut self.sessions {
            let reserved: Vec<TaskIdx> = sess.reserved.drain(..).collect();
            if listed {
                for &t in &reserved {
                    // Pending: `Resume` moves it to the next number.
                    let Some(task) = sess.tasks.get(t) else {
                        continue;
                    };
                    let mut record = unrecorded(t.wire(), &task, task.attempt, &node);
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
    pub(super) fn keep_running(&mut self, s: SessionIdx, t: TaskIdx, now_ms: u64) {
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
        self.index.device(n, d);
    }

    /// Nodes known from before a master restart that did not register again in time.
    pub(super) fn expire_resume(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let late: Vec<(Arc<str>, u64)> = self
            .nodes
            .values()
            .filter(|n| n.resume_by.is_some_and(|at| at <= now_ms))
            .map(|n| (n.name.clone(), n.epoch))
            .collect();
        for (node, epoch) in late {
            self.node_down(&node, epoch, &LossReason::ResumeTimeout, now_ms, out);
        }
    }
}
