//! Read-only views of the ledger: sessions, devices, manifests, and what
//! the invariant checks read.

use super::*;

/// A session's manifest as it stands, owned (its ranges share their
/// strings and outputs with the ledger, so taking it copies no file list),
/// that serializes exactly like [`Manifest`]: for writing a manifest to
/// disk off the master's thread.
#[derive(Debug, Clone)]
pub struct ManifestSnapshot {
    session: String,
    name: String,
    state: SessionState,
    frames: FrameRange,
    executor: String,
    workflow: Option<String>,
    turned_away: BTreeMap<String, u64>,
    skipped_offline: BTreeMap<String, u64>,
    failure_reasons: BTreeMap<String, String>,
    blocklisted: Vec<Blocklisting>,
    collect: String,
    submitted_ms: u64,
    finished_ms: Option<u64>,
    /// The session's, shared: in the order they were produced (see
    /// [`ManifestSnapshot::in_frame_order`]).
    ranges: Segments,
    replay: Vec<ReplayRecord>,
    failed: Vec<FailedRange>,
    retried: Vec<FailedRange>,
    /// The session ran again after its ledger left memory: the manifest on
    /// disk holds its earlier ranges, less these (task, attempt) an
    /// operator requeued (see [`merge_manifests`]).
    merge_with_disk: Option<Vec<(u64, u32)>>,
}

impl ManifestSnapshot {
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Produced ranges in it.
    pub fn ranges(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the manifest on disk holds part of this one: write
    /// [`merge_manifests`] of the two (the ranges an operator requeued are
    /// named here).
    pub fn merge_with_disk(&self) -> Option<&[(u64, u32)]> {
        self.merge_with_disk.as_deref()
    }

    /// Its ranges sorted by frame (sorted here, off the master's thread).
    fn in_frame_order(&self) -> impl Iterator<Item = &Segment> {
        let mut order: Vec<&Segment> = self.ranges.iter().collect();
        order.sort_unstable_by_key(|r| r.frames.start);
        order.into_iter()
    }

    /// The manifest it serializes as.
    pub fn to_manifest(&self) -> Manifest {
        Manifest {
            session: self.session.clone(),
            name: self.name.clone(),
            state: self.state,
            frames: self.frames,
            executor: self.executor.clone(),
            submitted_ms: self.submitted_ms,
            finished_ms: self.finished_ms,
            ranges: self
                .in_frame_order()
                .map(|r| r.to_range(&self.session, self.workflow.as_deref()))
                .collect(),
            replay: self.replay.clone(),
            failed: self.failed.clone(),
            retried: self.retried.clone(),
            workflow: self.workflow.clone(),
            turned_away: self.turned_away.clone(),
            skipped_offline: self.skipped_offline.clone(),
            failure_reasons: self.failure_reasons.clone(),
            blocklisted: self.blocklisted.clone(),
            collect: self.collect.clone(),
            collection: None,
        }
    }
}

/// The manifest of a session run again after its ledger left memory:
/// `now` (what the ledger holds since) over `disk` (what was written
/// before). A range of `disk` stays unless `now` holds the same one or an
/// operator requeued it (`superseded`, by task and attempt); `replay` and
/// `retried` are the union of both; `failed` and the state are `now`'s.
pub fn merge_manifests(disk: Manifest, mut now: Manifest, superseded: &[(u64, u32)]) -> Manifest {
    let gone: HashSet<(u64, u32)> = superseded.iter().copied().collect();
    let have: HashSet<(u64, u32, u64)> = now
        .ranges
        .iter()
        .map(|r| (r.task, r.attempt, r.frames.start))
        .collect();
    now.ranges.extend(disk.ranges.into_iter().filter(|r| {
        !gone.contains(&(r.task, r.attempt)) && !have.contains(&(r.task, r.attempt, r.frames.start))
    }));
    now.ranges.sort_by_key(|r| r.frames.start);
    let mut replay = disk.replay;
    for r in now.replay {
        if !replay.contains(&r) {
            replay.push(r);
        }
    }
    now.replay = replay;
    let mut retried = disk.retried;
    for f in now.retried {
        if !retried.contains(&f) {
            retried.push(f);
        }
    }
    now.retried = retried;
    now.submitted_ms = disk.submitted_ms.min(now.submitted_ms);
    now
}

struct RangesOf<'a>(&'a ManifestSnapshot);

impl serde::Serialize for RangesOf<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = ser.serialize_seq(Some(self.0.ranges.len()))?;
        for r in self.0.in_frame_order() {
            seq.serialize_element(&r.to_range(&self.0.session, self.0.workflow.as_deref()))?;
        }
        seq.end()
    }
}

impl serde::Serialize for ManifestSnapshot {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = ser.serialize_struct("Manifest", 16)?;
        st.serialize_field("session", &self.session)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("frames", &self.frames)?;
        st.serialize_field("executor", &self.executor)?;
        st.serialize_field("submitted_ms", &self.submitted_ms)?;
        st.serialize_field("finished_ms", &self.finished_ms)?;
        st.serialize_field("ranges", &RangesOf(self))?;
        st.serialize_field("replay", &self.replay)?;
        st.serialize_field("failed", &self.failed)?;
        st.serialize_field("retried", &self.retried)?;
        if let Some(w) = &self.workflow {
            st.serialize_field("workflow", w)?;
        } else {
            st.skip_field("workflow")?;
        }
        if self.turned_away.is_empty() {
            st.skip_field("turned_away")?;
        } else {
            st.serialize_field("turned_away", &self.turned_away)?;
        }
        if self.skipped_offline.is_empty() {
            st.skip_field("skipped_offline")?;
        } else {
            st.serialize_field("skipped_offline", &self.skipped_offline)?;
        }
        if self.failure_reasons.is_empty() {
            st.skip_field("failure_reasons")?;
        } else {
            st.serialize_field("failure_reasons", &self.failure_reasons)?;
        }
        if self.blocklisted.is_empty() {
            st.skip_field("blocklisted")?;
        } else {
            st.serialize_field("blocklisted", &self.blocklisted)?;
        }
        st.serialize_field("collect", &self.collect)?;
        st.skip_field("collection")?;
        st.end()
    }
}

impl Scheduler {
    /// The session submitted with idempotency key `key`, if any.
    pub fn session_for_key(&self, key: &str) -> Option<&str> {
        self.by_key.get(key).map(String::as_str)
    }

    /// For a session run again after its ledger left memory: the ranges
    /// an operator requeued, which [`merge_manifests`] leaves out of the
    /// manifest on disk. `None`: the ledger's manifest is whole.
    pub fn merges_with_disk(&self, id: &str) -> Option<Vec<(u64, u32)>> {
        let sess = &self.sessions[*self.by_id.get(id)?];
        (sess.reopened && sess.evicted.is_none()).then(|| sess.superseded.clone())
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
            paused: s.paused && !s.state.is_final(),
            priority: s.spec.priority,
            max_devices: s.spec.max_devices,
            skipped_offline: s.skipped_offline.clone(),
            collect: crate::protocol::collector_of(&s.spec),
        })
    }

    /// Frames done in every session (saturating: a sum of 64-bit counts
    /// may not fit), and how many sessions run: what the gauges show,
    /// without building every session's view.
    pub fn frames_done_and_running(&self) -> (u64, usize) {
        let done = self.sessions.iter().fold(0u64, |acc, s| {
            acc.saturating_add(s.frames_done.saturating_add(s.running_done))
        });
        (done, self.active.len())
    }

    /// Session `id`'s place in submission order.
    pub fn session_order(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).map(|s| s.0 as u64)
    }

    /// Ids of every session the ledger holds, in submission order.
    pub fn session_ids_in_order(&self) -> Vec<String> {
        self.sessions.iter().map(|s| s.id.clone()).collect()
    }

    /// Ids of the sessions still running, in submission order.
    pub fn running_sessions(&self) -> Vec<String> {
        self.active
            .iter()
            .map(|&s| self.sessions[s].id.clone())
            .collect()
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

    /// One character per device of every registered node (the status
    /// page's grid), as [`Self::device_views`] would say, without building
    /// a view per device.
    pub fn device_grid(&self) -> Vec<crate::protocol::NodeGrid> {
        self.nodes
            .values()
            .map(|n| crate::protocol::NodeGrid {
                node: n.name.to_string(),
                states: n.devices.iter().map(|d| d.state().grid_char()).collect(),
            })
            .collect()
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
            let mut running: Vec<&(SessionIdx, TaskIdx)> = n.running.iter().collect();
            running.sort_unstable();
            for &(s, t) in running {
                let Some(task) = self.sessions[s].tasks.touched.get(&t) else {
                    continue;
                };
                if let TaskState::Running(r) = &task.state {
                    current.entry(&r.device).or_default().push(TaskRef {
                        session: self.sessions[s].id.clone(),
                        task: t.wire(),
                        attempt: task.attempt,
                        frames: task.frames,
                        frames_done: r.done,
                    });
                }
            }
            for d in &n.devices {
                let tasks = current.remove(&*d.id).unwrap_or_default();
                let state = d.state();
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
        let workflow = s.spec.executor.workflow_label();
        let mut ranges: Vec<ManifestRange> = s
            .ranges
            .iter()
            .map(|r| r.to_range(&s.id, workflow.as_deref()))
            .collect();
        ranges.sort_by_key(|r| r.frames.start);
        let mut failed = s.failed.clone();
        failed.sort_by_key(|f| f.frames.start);
        Some(Manifest {
            session: s.id.clone(),
            name: s.spec.name.clone(),
            state: s.state,
            frames: s.spec.frames,
            executor: s.spec.executor.kind().into_owned(),
            submitted_ms: s.submitted_ms,
            finished_ms: s.finished_ms,
            ranges,
            replay: s.replay.clone(),
            failed,
            retried: s.retried.clone(),
            workflow,
            turned_away: s.turned_away.clone(),
            skipped_offline: s.skipped_offline.clone(),
            failure_reasons: s.failure_reasons.clone(),
            blocklisted: s.blocklisted.clone(),
            collect: crate::protocol::collector_of(&s.spec),
            collection: None,
        })
    }

    /// A session's manifest as it stands, to serialize elsewhere (see
    /// [`ManifestSnapshot`]); `None` for an evicted session (its manifest
    /// is on disk).
    pub fn manifest_snapshot(&self, id: &str) -> Option<ManifestSnapshot> {
        let sess = &self.sessions[*self.by_id.get(id)?];
        if sess.evicted.is_some() {
            return None;
        }
        let ranges = sess.ranges.clone();
        let mut failed = sess.failed.clone();
        failed.sort_by_key(|f| f.frames.start);
        Some(ManifestSnapshot {
            session: sess.id.clone(),
            name: sess.spec.name.clone(),
            state: sess.state,
            frames: sess.spec.frames,
            executor: sess.spec.executor.kind().into_owned(),
            workflow: sess.spec.executor.workflow_label(),
            turned_away: sess.turned_away.clone(),
            skipped_offline: sess.skipped_offline.clone(),
            failure_reasons: sess.failure_reasons.clone(),
            blocklisted: sess.blocklisted.clone(),
            collect: crate::protocol::collector_of(&sess.spec),
            submitted_ms: sess.submitted_ms,
            finished_ms: sess.finished_ms,
            ranges,
            replay: sess.replay.clone(),
            failed,
            retried: sess.retried.clone(),
            merge_with_disk: sess.reopened.then(|| sess.superseded.clone()),
        })
    }

    /// An empty manifest of a completed session, for tests of what writes it.
    #[cfg(test)]
    pub(crate) fn empty_manifest(id: &str) -> ManifestSnapshot {
        ManifestSnapshot {
            session: id.to_string(),
            name: id.to_string(),
            state: SessionState::Completed,
            frames: FrameRange { start: 0, end: 0 },
            executor: "builtin:noop".into(),
            workflow: None,
            turned_away: BTreeMap::new(),
            skipped_offline: BTreeMap::new(),
            failure_reasons: BTreeMap::new(),
            blocklisted: Vec::new(),
            collect: String::new(),
            submitted_ms: 0,
            finished_ms: Some(0),
            ranges: Segments::default(),
            replay: Vec::new(),
            failed: Vec::new(),
            retried: Vec::new(),
            merge_with_disk: None,
        }
    }

    /// Every ID range handed out and not returned: live chunks whole, ended
    /// attempts' used parts. For invariant checks.
    pub fn issued_ids(&self) -> Vec<IdRange> {
        let mut v = Vec::new();
        for s in &self.sessions {
            for r in s.ranges.iter() {
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

impl Scheduler {
    /// Tasks `from ..` of session `id`, at most `limit`: their state and
    /// every attempt known to have run (`None`: no such session in memory;
    /// an evicted one's tasks are read from its manifest).
    pub fn tasks_page(&self, id: &str, from: u64, limit: u32) -> Option<Vec<TaskView>> {
        let s = &self.sessions[*self.by_id.get(id)?];
        if s.evicted.is_some() {
            return None;
        }
        let n = u64::from(s.tasks.len());
        let end = from
            .saturating_add(u64::from(limit.min(MAX_TASKS_PAGE)))
            .min(n);
        if from >= end {
            return Some(Vec::new());
        }
        let mut views: Vec<TaskView> = (from..end)
            .map(|t| {
                let idx = TaskIdx(t as u32);
                let task = s.tasks.get(idx);
                let (state, attempt, error) = match task.as_deref() {
                    Some(task) => (
                        match task.state {
                            TaskState::Pending | TaskState::Waiting => "pending",
                            TaskState::Running(_) => "running",
                            TaskState::Done => "done",
                            TaskState::Failed => "failed",
                        },
                        task.attempt,
                        task.last_error.clone(),
                    ),
                    None => ("pending", 0, None),
                };
                TaskView {
                    task: t,
                    frames: s.tasks.range(idx),
                    state: state.to_string(),
                    attempt,
                    replayed: false,
                    error,
                    attempts: Vec::new(),
                }
            })
            .collect();
        let at = |t: u64| (t >= from && t < end).then(|| (t - from) as usize);
        for r in &s.replay {
            if let Some(i) = at(r.task) {
                views[i].replayed = true;
                views[i].attempts.push(AttemptView {
                    attempt: r.old_attempt,
                    node: r.node.clone(),
                    device: r.device.clone(),
                    outcome: r.reason.as_str().to_string(),
                    started_ms: None,
                    finished_ms: None,
                });
            }
        }
        for seg in s.ranges.iter() {
            if let Some(i) = at(seg.task.wire()) {
                let v = &mut views[i];
                if !v
                    .attempts
                    .iter()
                    .any(|a| a.attempt == seg.attempt && a.outcome == "produced")
                {
                    v.attempts.push(AttemptView {
                        attempt: seg.attempt,
                        node: seg.node.to_string(),
                        device: seg.device.to_string(),
                        outcome: "produced".into(),
                        started_ms: Some(seg.started_ms),
                        finished_ms: Some(seg.finished_ms),
                    });
                }
            }
        }
        for f in &s.failed {
            if let (Some(i), Some(node), Some(device)) = (at(f.task), &f.node, &f.device) {
                views[i].attempts.push(AttemptView {
                    attempt: f.attempts,
                    node: node.clone(),
                    device: device.clone(),
                    outcome: "failed".into(),
                    started_ms: None,
                    finished_ms: None,
                });
            }
        }
        for v in &mut views {
            if let Some(task) = s.tasks.get(TaskIdx(v.task as u32)) {
                if let TaskState::Running(run) = &task.state {
                    v.attempts.push(AttemptView {
                        attempt: task.attempt,
                        node: run.node.to_string(),
                        device: run.device.to_string(),
                        outcome: "running".into(),
                        started_ms: Some(run.started_ms),
                        finished_ms: None,
                    });
                }
            }
            v.attempts.sort_by_key(|a| a.attempt);
        }
        Some(views)
    }
}
