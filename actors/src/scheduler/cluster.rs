//! Nodes and devices: registration, and the in-flight accounting of
//! attempts on them.

use super::*;

/// A node registering: [`SchedEvent::NodeUp`] but for the attempts it holds.
#[derive(Debug)]
pub(super) struct Registration {
    pub(super) node: String,
    pub(super) epoch: u64,
    pub(super) max_concurrency: u32,
    pub(super) devices: Vec<DeviceInfo>,
}

#[derive(Debug)]
pub(super) struct Device {
    pub(super) id: Arc<str>,
    pub(super) caps: Capabilities,
    pub(super) inflight: u32,
    pub(super) last_used: u64,
    /// Killed by an operator: takes no work until restarted.
    pub(super) disabled: bool,
    pub(super) last_error: Option<String>,
    pub(super) tasks_done: u64,
    /// Attempts that failed here in a row, of any sessions.
    pub(super) fails_in_row: u32,
    /// Blocklisted for failing [`DEVICE_BLOCKLIST_IN_A_ROW`] in a row:
    /// takes no work until restarted or unblocked.
    pub(super) blocklisted: bool,
    /// Its worker finds it offline, and why: takes no work until online.
    pub(super) offline: Option<String>,
    /// A discovery source no longer lists it: takes no work until it is
    /// back (kept, so that its counters and indexes stay).
    pub(super) gone: bool,
}

impl Device {
    fn new(id: Arc<str>, caps: Capabilities, blocked: Option<&String>) -> Self {
        Self {
            id,
            caps,
            inflight: 0,
            last_used: 0,
            disabled: false,
            last_error: blocked.cloned(),
            tasks_done: 0,
            fails_in_row: 0,
            blocklisted: blocked.is_some(),
            offline: None,
            gone: false,
        }
    }

    /// What it is doing, as views show it.
    pub(super) fn state(&self) -> DeviceState {
        if self.disabled {
            DeviceState::Quarantined
        } else if self.blocklisted {
            DeviceState::Blocklisted
        } else if self.gone || self.offline.is_some() {
            DeviceState::Offline
        } else if self.inflight > 0 {
            DeviceState::Busy
        } else {
            DeviceState::Idle
        }
    }

    /// Whether it may take new work, whatever it holds.
    pub(super) fn usable(&self) -> bool {
        !self.disabled && !self.blocklisted && !self.gone && self.offline.is_none()
    }
}

#[derive(Debug)]
pub(super) struct Node {
    pub(super) name: Arc<str>,
    pub(super) epoch: u64,
    pub(super) max_concurrency: u32,
    pub(super) accepting: bool,
    /// Drained by an operator: finishes what it has, takes nothing new.
    pub(super) drained: bool,
    pub(super) devices: Vec<Device>,
    pub(super) by_id: HashMap<Arc<str>, usize>,
    pub(super) inflight: u32,
    /// (session index, task index) of attempts running here.
    pub(super) running: HashSet<(SessionIdx, TaskIdx)>,
    /// Known from before a master restart, not registered again yet: takes
    /// no work, and its attempts are requeued if it is not back by then.
    pub(super) resume_by: Option<u64>,
}

impl Node {
    pub(super) fn cap(&self) -> u32 {
        self.max_concurrency.saturating_mul(1 + PREFETCH)
    }
}

impl Scheduler {
    /// The node takes new work or not (error status, draining).
    pub(super) fn accepting(&mut self, node: &str, accepting: bool) {
        if let Some(n) = self.nodes.get_mut(node) {
            n.accepting = accepting;
            self.index.node(n);
        }
        if !accepting {
            self.release_reserved_of(node);
        }
    }

    /// An operator drains or undrains a node (kept across re-registration).
    pub(super) fn drain(&mut self, node: String, drained: bool) {
        let name: Arc<str> = node.into();
        if drained {
            self.drained.insert(name.clone());
        } else {
            self.drained.remove(&name);
        }
        if let Some(n) = self.nodes.get_mut(&name) {
            n.drained = drained;
            self.index.node(n);
        }
        if drained {
            self.release_reserved_of(&name);
        }
    }

    /// A node registers (again): a new epoch replaces the old one, whose
    /// attempts are lost unless the node is back after a master restart and
    /// still `held`s them.
    pub(super) fn node_up(
        &mut self,
        reg: Registration,
        held: &[AttemptKey],
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) {
        let Registration {
            node: name,
            epoch,
            max_concurrency,
            devices,
        } = reg;
        let mut kept = Vec::new();
        if let Some(old) = self.nodes.get_mut(name.as_str()) {
            // Back after a master restart: what the worker still holds continues.
            if old.resume_by.is_some() {
                let held: HashSet<&AttemptKey> = held.iter().collect();
                let ids: HashSet<&str> = devices.iter().map(|d| &*d.id).collect();
                let mut keep: Vec<(SessionIdx, TaskIdx)> = old
                    .running
                    .iter()
                    .copied()
                    .filter(|&(s, t)| {
                        let sess = &self.sessions[s];
                        let Some(task) = sess.tasks.get(t) else {
                            return false;
                        };
                        let on_device = match &task.state {
                            TaskState::Running(r) => ids.contains(&*r.device),
                            _ => false,
                        };
                        on_device
                            && held.contains(&AttemptKey {
                                session: sess.id.clone(),
                                task: t.wire(),
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
                    LossReason::MasterRestart { detail: None }
                } else {
                    LossReason::NodeDown
                },
            );
            self.node_down(&name, old_epoch, &reason, now_ms, out);
        }
        let name: Arc<str> = name.into();
        let node_name = name.clone();
        let drained = self.drained.contains(&name);
        let devices: Vec<Device> = devices
            .into_iter()
            .map(|d| {
                let id: Arc<str> = d.id.into();
                // Blocklisted before: still, until an operator says otherwise.
                let blocked = self.device_blocklist.get(&(name.clone(), id.clone()));
                Device::new(id, d.capabilities, blocked)
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
        self.index.set_node(&self.nodes[&node_name]);
        for (s, t) in kept {
            self.keep_running(s, t, now_ms);
        }
        self.note_unrecorded(&node_name, held, out);
    }

    /// A worker's devices now ([`SchedEvent::Devices`]): devices it no
    /// longer has are gone and their attempts requeued (`device_gone`), new
    /// ones join, and `offline` ones take no work until they are online.
    pub(super) fn devices_changed(
        &mut self,
        node: &str,
        epoch: u64,
        devices: Vec<DeviceInfo>,
        offline: &[(String, String)],
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if n.epoch != epoch {
            return;
        }
        let present: HashMap<&str, &DeviceInfo> =
            devices.iter().map(|d| (d.id.as_str(), d)).collect();
        let offline: HashMap<&str, &str> = offline
            .iter()
            .map(|(d, why)| (d.as_str(), why.as_str()))
            .collect();
        let mut reindex = false;
        let mut gone = Vec::new();
        for d in n.devices.iter_mut() {
            match present.get(&*d.id) {
                None if !d.gone => {
                    d.gone = true;
                    d.last_error = Some("device_gone: its worker no longer lists it".into());
                    gone.push(d.id.clone());
                }
                None => {}
                Some(info) => {
                    if d.gone {
                        d.gone = false;
                        d.last_error = None;
                    }
                    if d.caps != info.capabilities {
                        d.caps = info.capabilities.clone();
                        reindex = true;
                    }
                }
            }
            let why = present
                .contains_key(&*d.id)
                .then(|| offline.get(&*d.id))
                .flatten();
            let now_offline = why.map(|w| w.to_string());
            if d.offline != now_offline {
                if let Some(w) = &now_offline {
                    d.last_error = Some(w.clone());
                }
                d.offline = now_offline;
            }
        }
        for info in &devices {
            if n.by_id.contains_key(info.id.as_str()) {
                continue;
            }
            let id: Arc<str> = info.id.as_str().into();
            let blocked = self.device_blocklist.get(&(n.name.clone(), id.clone()));
            let mut dev = Device::new(id.clone(), info.capabilities.clone(), blocked);
            dev.offline = offline.get(info.id.as_str()).map(|w| w.to_string());
            n.by_id.insert(id, n.devices.len());
            n.devices.push(dev);
            reindex = true;
        }
        if reindex {
            self.index.set_node(n);
        } else {
            for d in 0..n.devices.len() {
                self.index.device(n, d);
            }
        }
        for device in gone {
            self.take_back(node, &device, &LossReason::DeviceGone, now_ms, out);
        }
    }

    /// Take the running attempt of task `t` off its device and node.
    pub(super) fn take_running(&mut self, s: SessionIdx, t: TaskIdx) -> Option<Box<Running>> {
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
                match n.by_id.get(&run.device) {
                    Some(&d) => {
                        n.devices[d].inflight -= 1;
                        self.index.device(n, d);
                    }
                    None => self.index.node(n),
                }
            }
        }
        Some(run)
    }

    /// Output paths the manifest holds for one attempt: a node keeps them.
    pub(super) fn keep_for(&self, s: SessionIdx, t: TaskIdx, attempt: u32) -> Vec<String> {
        self.sessions[s]
            .ranges
            .iter()
            .filter(|r| r.task == t && r.attempt == attempt)
            .flat_map(|r| r.outputs.iter().map(|o| o.path.clone()))
            .collect()
    }
}
