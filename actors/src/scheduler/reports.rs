//! Progress and results from the workers, and stale attempts.

use super::*;

/// Add newly reported outputs; a report delivered twice adds nothing.
pub(super) fn add_outputs(have: &mut Vec<OutputFile>, new: Vec<OutputFile>) {
    for o in new {
        if !have.iter().any(|h| h.path == o.path) {
            have.push(o);
        }
    }
}

impl Scheduler {
    /// Find the running attempt a report is about; `None` if it is stale.
    pub(super) fn current(&self, node: &str, key: &AttemptKey) -> Option<(SessionIdx, TaskIdx)> {
        let s = *self.by_id.get(&key.session)?;
        let t = TaskIdx::from_wire(key.task)?;
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
    pub(super) fn settled(&self, key: &AttemptKey) -> bool {
        let Some(&s) = self.by_id.get(&key.session) else {
            return false;
        };
        let Some(t) = TaskIdx::from_wire(key.task) else {
            return false;
        };
        let tasks = &self.sessions[s].tasks;
        match tasks.touched.get(&t) {
            Some(task) => task.attempt == key.attempt && matches!(task.state, TaskState::Done),
            None => tasks.done.get(&t).is_some_and(|d| d.attempt == key.attempt),
        }
    }

    pub(super) fn progress(&mut self, p: TaskProgress, out: &mut Vec<SchedCommand>) {
        let Some((s, t)) = self.current(&p.node, &p.key) else {
            if !self.settled(&p.key) {
                // (A progress report does not name its device.)
                self.reject(&p.node, "unknown", p.key, out);
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

    pub(super) fn reject(
        &mut self,
        node: &str,
        device: &str,
        key: AttemptKey,
        out: &mut Vec<SchedCommand>,
    ) {
        if let Some(&s) = self.by_id.get(&key.session) {
            self.sessions[s].stale += 1;
        }
        out.push(SchedCommand::RejectedStale {
            node: node.to_string(),
            device: device.to_string(),
            key,
        });
    }

    pub(super) fn result(&mut self, r: TaskResult, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let Some((s, t)) = self.current(&r.node, &r.key) else {
            let device = r.device.clone();
            let key = r.key.clone();
            if self.settled(&key) {
                // Delivered again from the outbox: already in the ledger.
                return;
            }
            let keep = match (self.by_id.get(&key.session), TaskIdx::from_wire(key.task)) {
                (Some(&s), Some(t)) => {
                    let mut keep = self.keep_for(s, t, key.attempt);
                    let sess = &self.sessions[s];
                    if sess.evicted.is_some() || sess.reopened {
                        // Its ranges may be on disk only (a worker that
                        // missed the acknowledgement of a finished attempt
                        // delivers it again): what it reported stays.
                        keep.extend(r.outputs.iter().map(|o| o.path.clone()));
                        keep.sort_unstable();
                        keep.dedup();
                    }
                    keep
                }
                _ => Vec::new(),
            };
            self.reject(&r.node, &r.device, r.key, out);
            out.push(SchedCommand::Drop {
                node: r.node,
                key,
                device,
                keep,
                reason: LossReason::StaleAttempt,
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
                match &r.outcome {
                    TaskOutcome::Completed => dev.fails_in_row = 0,
                    // Not the device's failure: it was offline, and says why.
                    TaskOutcome::SkippedOffline { error } => {
                        if !dev.blocklisted {
                            dev.last_error = Some(error.clone());
                        }
                    }
                    TaskOutcome::Failed { error, .. }
                    | TaskOutcome::TurnedAway { error, .. }
                    | TaskOutcome::Unresponsive { error, .. } => {
                        // A blocklisted device keeps saying why it is.
                        if !dev.blocklisted {
                            dev.last_error = Some(error.clone());
                        }
                        dev.fails_in_row += 1;
                    }
                }
            }
        }
        let skipped = matches!(r.outcome, TaskOutcome::SkippedOffline { .. });
        if let (Some(error), false) = (r.outcome.error(), skipped) {
            let error = error.to_string();
            self.count_failure(s, &node, &device, &error, now_ms, out);
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
        let took = r.finished_ms.saturating_sub(r.started_ms);
        if !skipped {
            sess.attempt_ms = Some(sess.attempt_ms.map_or(took, |ms| (3 * ms + took) / 4));
        }
        add_outputs(&mut run.outputs, r.outputs);
        run.steps = r.steps;
        let turned_away = matches!(
            r.outcome,
            TaskOutcome::TurnedAway { .. } | TaskOutcome::SkippedOffline { .. }
        );
        let unresponsive = matches!(r.outcome, TaskOutcome::Unresponsive { .. });
        let (frames_done, error) = match r.outcome {
            TaskOutcome::Completed => (None, String::new()),
            TaskOutcome::SkippedOffline { error } => (Some(0), error),
            TaskOutcome::Failed { frames_done, error }
            | TaskOutcome::TurnedAway { frames_done, error }
            | TaskOutcome::Unresponsive { frames_done, error } => (Some(frames_done), error),
        };
        match frames_done {
            None => {
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
            Some(frames_done) => {
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
                    task: t.wire(),
                    attempt: sess.tasks.get_mut(t).attempt,
                };
                if sess.spec.executor.writes_files() {
                    out.push(SchedCommand::Drop {
                        node: node.to_string(),
                        key,
                        device: device.to_string(),
                        keep,
                        reason: LossReason::AttemptFailed {
                            detail: error.clone(),
                        },
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
                if turned_away {
                    // Not the task's failure: another device takes it at
                    // once, and it counts against `max_losses` only.
                    let counts = if skipped {
                        &mut sess.skipped_offline
                    } else {
                        &mut sess.turned_away
                    };
                    *counts.entry(format!("{node}/{device}")).or_insert(0) += 1;
                    sess.failure_reasons
                        .insert(format!("{node}/{device}"), error.clone());
                    let task = sess.tasks.get_mut(t);
                    task.losses += 1;
                    if task.losses >= sess.spec.max_losses {
                        let n = task.losses;
                        let error = format!("turned away {n} times (`max_losses`), last: {error}");
                        let task = sess.tasks.get_mut(t);
                        task.avoid = Some((node.clone(), device.clone()));
                        fail_task_with(sess, t, error, std::mem::take(&mut run.steps));
                        return;
                    }
                    task.next_attempt();
                    task.avoid = Some((node, device));
                    task.state = TaskState::Waiting;
                    sess.waiting.insert((now_ms, t));
                    return;
                }
                let task = sess.tasks.get_mut(t);
                task.failures += 1;
                if task.failures >= sess.spec.max_attempts {
                    task.avoid = Some((node.clone(), device.clone()));
                    fail_task_with(sess, t, error, std::mem::take(&mut run.steps));
                    return;
                }
                let old_attempt = task.attempt;
                task.next_attempt();
                if unresponsive {
                    // Its range moves on for the device's sake, as a failover's does.
                    sess.replay.push(ReplayRecord {
                        frames: task.frames,
                        task: t.wire(),
                        old_attempt,
                        new_attempt: task.attempt,
                        node: node.to_string(),
                        device: device.to_string(),
                        reason: LossReason::DeviceUnresponsive {
                            detail: error
                                .strip_prefix("device_unresponsive: ")
                                .unwrap_or(&error)
                                .to_string(),
                        },
                    });
                }
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

    /// An attempt of session `s` failed (or was turned away) on `device` of
    /// `node`: blocklist the device for the session after `blocklist_after`
    /// of them, its node after [`BLOCKLIST_NODE_AFTER`] such devices, and
    /// the device for everyone after [`DEVICE_BLOCKLIST_IN_A_ROW`] failures
    /// in a row of any sessions.
    pub(super) fn count_failure(
        &mut self,
        s: SessionIdx,
        node: &Arc<str>,
        device: &Arc<str>,
        error: &str,
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) {
        let sess = &mut self.sessions[s];
        let limit = sess.spec.blocklist_after.unwrap_or(DEFAULT_BLOCKLIST_AFTER);
        let key = (node.clone(), device.clone());
        let n = sess.device_failures.entry(key.clone()).or_insert(0);
        *n += 1;
        if limit > 0 && *n >= limit && sess.blocked_devices.insert(key) {
            let mut blocklist = |sess: &mut Session, what: String, reason: String| {
                sess.blocklisted.push(Blocklisting {
                    what: what.clone(),
                    reason: reason.clone(),
                    at_ms: now_ms,
                });
                out.push(SchedCommand::Blocklisted {
                    what,
                    session: Some(sess.id.clone()),
                    reason,
                });
            };
            let reason = format!("{limit} of the session's attempts failed here, last: {error}");
            blocklist(sess, format!("{node}/{device}"), reason);
            let on_node = sess
                .blocked_devices
                .iter()
                .filter(|(n, _)| n == node)
                .count();
            if on_node >= BLOCKLIST_NODE_AFTER && sess.blocked_nodes.insert(node.clone()) {
                let reason = format!("{on_node} of its devices are blocklisted for the session");
                blocklist(sess, node.to_string(), reason);
            }
        }
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let Some(&d) = n.by_id.get(device) else {
            return;
        };
        let dev = &mut n.devices[d];
        if dev.fails_in_row >= DEVICE_BLOCKLIST_IN_A_ROW && !dev.blocklisted {
            let reason = format!(
                "{} attempts in a row failed here, last: {error}; `orchctl unblock {node} {device}` or `restart-device` lets it work again",
                dev.fails_in_row
            );
            dev.blocklisted = true;
            dev.last_error = Some(reason.clone());
            self.device_blocklist
                .insert((node.clone(), device.clone()), reason.clone());
            self.index.device(n, d);
            out.push(SchedCommand::Blocklisted {
                what: format!("{node}/{device}"),
                session: None,
                reason,
            });
        }
    }

    /// Let a device blocklisted for failing in a row take work again.
    pub(super) fn unblock(&mut self, node: &str, device: &str) {
        self.device_blocklist
            .retain(|(n, d), _| !(&**n == node && &**d == device));
        if let Some(n) = self.nodes.get_mut(node) {
            if let Some(&d) = n.by_id.get(device) {
                let dev = &mut n.devices[d];
                dev.blocklisted = false;
                dev.fails_in_row = 0;
                self.index.device(n, d);
            }
        }
    }
}
