//! Lost work: a node or device down, an attempt silent past its deadline,
//! a master that stalled.

use super::*;

impl Orphan {
    /// The command telling `node` to stop this attempt and quarantine its outputs.
    pub(super) fn into_drop(self, node: &str) -> SchedCommand {
        SchedCommand::Drop {
            node: node.to_string(),
            key: self.key,
            device: self.device,
            keep: self.keep,
            reason: self.reason,
        }
    }
}

/// A lost attempt whose node must quarantine its outputs when it returns.
#[derive(Debug, Clone)]
pub(super) struct Orphan {
    pub(super) key: AttemptKey,
    pub(super) device: String,
    pub(super) keep: Vec<String>,
    pub(super) reason: LossReason,
}

impl Scheduler {
    /// Time passed: silent attempts are lost, late nodes are down, backoffs end.
    pub(super) fn tick(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
        self.expire(now_ms, out);
        self.expire_resume(now_ms, out);
        self.wake(now_ms);
    }

    pub(super) fn node_down(
        &mut self,
        name: &str,
        epoch: u64,
        reason: &LossReason,
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
        self.index.remove_node(name);
        self.release_reserved_of(name);
        let mut lost: Vec<(SessionIdx, TaskIdx)> = node.running.into_iter().collect();
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
                reason: reason.clone(),
            });
        }
    }

    /// The running attempt of task `t` is lost: bank its reported frames,
    /// requeue the rest with a new attempt. Returns the frames requeued and
    /// what the attempt's node must quarantine.
    pub(super) fn lose(
        &mut self,
        s: SessionIdx,
        t: TaskIdx,
        reason: &LossReason,
        now_ms: u64,
    ) -> (u64, Option<(Arc<str>, Orphan)>) {
        let Some(run) = self.take_running(s, t) else {
            return (0, None);
        };
        let sess = &mut self.sessions[s];
        let task = sess.tasks.get_mut(t);
        let key = AttemptKey {
            session: sess.id.clone(),
            task: t.wire(),
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
            reason: reason.clone(),
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
            task: t.wire(),
            old_attempt: key.attempt,
            new_attempt: task.attempt,
            node: run.node.to_string(),
            device: run.device.to_string(),
            reason: reason.clone(),
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
    pub(super) fn device_down(
        &mut self,
        node: &str,
        device: &str,
        reason: &LossReason,
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
        if !disable {
            // A restart gives a blocklisted device another chance.
            n.devices[d].blocklisted = false;
            n.devices[d].fails_in_row = 0;
            let key = (n.name.clone(), n.devices[d].id.clone());
            self.device_blocklist.remove(&key);
        }
        self.index.device(n, d);
        self.take_back(node, device, reason, now_ms, out);
        true
    }

    /// Requeue the attempts running or queued on one device (`reason`).
    pub(super) fn take_back(
        &mut self,
        node: &str,
        device: &str,
        reason: &LossReason,
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) {
        let Some(n) = self.nodes.get(node) else {
            return;
        };
        let mut on_device: Vec<(SessionIdx, TaskIdx)> = n
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
                reason: reason.clone(),
            });
        }
    }

    /// The master did not run for `ms`: no attempt is judged on that time.
    pub(super) fn stalled(&mut self, ms: u64) {
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
    pub(super) fn expire(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
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
            let (f, orphan) = self.lose(s, t, &LossReason::NoAnswer, now_ms);
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
                reason: LossReason::NoAnswer,
            });
        }
    }
}
