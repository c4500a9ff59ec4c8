//! Read-only views of the ledger: sessions, devices, manifests, and what
//! the invariant checks read.

use super::*;

/// A session's manifest that serializes exactly like [`Manifest`], reading
/// the ledger as it goes.
pub struct ManifestStream<'a> {
    pub(super) sess: &'a Session,
    pub(super) order: Vec<u32>,
}

impl ManifestStream<'_> {
    pub fn session(&self) -> &str {
        &self.sess.id
    }
}

pub(super) struct RangesInOrder<'a>(&'a Session, &'a [u32]);

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

impl Scheduler {
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
