//! State-machine tests of the frame ledger, ID allocation and placement:
//! random sequences of node up/down, progress, completion, failure, stale and
//! duplicate results, and master restarts (the ledger rebuilt by replaying
//! every event, then workers registering again with what they hold), checked
//! after every step against the manifest's invariants (docs/sessions.md):
//! every frame exactly once, no ID issued twice.

use std::collections::BTreeMap;

use orch_actors::commit_gate::{CommitGate, Release};
use orch_actors::protocol::{
    AttemptKey, CapValue, DeviceInfo, ExecutorSpec, FrameRange, IdRange, LossReason, SessionSpec,
    SessionState, TaskOutcome, TaskProgress, TaskResult, TaskSpec, DEFAULT_MAX_LOSSES,
};
use orch_actors::scheduler::{SchedCommand, SchedEvent, Scheduler, PREFETCH};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Up(usize),
    Down(usize),
    Progress(usize, u8),
    Complete(usize),
    Fail(usize, u8),
    Stale(usize),
    Duplicate(usize),
    Tick(u64),
    /// The master restarts: bit i of the mask says whether node i comes back
    /// at once; `forget` drops one lease per node, as if its assignment was
    /// committed but never delivered.
    Restart(u8, bool),
    /// The master reserves up to this many tasks for node i (its own).
    Reserve(usize, u8),
    /// With batches: the master reserves up to this many tasks for n0 (its
    /// own node), commits, and sends what waited for the commit.
    Commit(u8),
    /// With batches: the master dies and loses everything since its last
    /// commit, and n0's worker dies with it (back at once if the mask's
    /// bit 0 is set); the other nodes outlive it and register again with
    /// what they hold, then deliver their unacknowledged results again.
    /// A node whose bit (1, 2) is set does not reach this master before
    /// it dies too: it registers with a later one.
    Crash(u8),
    /// An operator pauses (`true`) or resumes the session.
    Pause(bool),
    /// An operator requeues the produced task at this index (modulo the
    /// produced ones).
    Requeue(usize),
    /// Node i's worker reports its devices (`SchedEvent::Devices`): bit d
    /// of the first mask says device d is present (a discovery source
    /// lists it), of the second that it is offline. Without batches only.
    Devices(usize, u8, u8),
    /// An attempt comes to a device its worker found offline: it did not run.
    Skip(usize),
    /// An attempt's device gave no sign of life.
    Hang(usize, u8),
}

/// [`op`], plus commits and crashes that lose the last batch.
fn op_batched() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => op(),
        4 => any::<u8>().prop_map(|n| Op::Commit(n % 16)),
        1 => any::<u8>().prop_map(Op::Crash),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..3).prop_map(Op::Up),
        1 => (0usize..3).prop_map(Op::Down),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, f)| Op::Progress(i, f)),
        6 => any::<usize>().prop_map(Op::Complete),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, f)| Op::Fail(i, f)),
        1 => any::<usize>().prop_map(Op::Stale),
        1 => any::<usize>().prop_map(Op::Duplicate),
        1 => (1u64..200).prop_map(Op::Tick),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(m, f)| Op::Restart(m, f)),
        1 => (0usize..3, any::<u8>()).prop_map(|(i, n)| Op::Reserve(i, n % 8)),
        1 => any::<bool>().prop_map(Op::Pause),
        1 => any::<usize>().prop_map(Op::Requeue),
        1 => (0usize..3, any::<u8>(), any::<u8>()).prop_map(|(i, p, o)| Op::Devices(i, p, o)),
        1 => any::<usize>().prop_map(Op::Skip),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, f)| Op::Hang(i, f)),
    ]
}

/// An assignment as the worker side sees it.
#[derive(Debug, Clone)]
struct Lease {
    node: String,
    epoch: u64,
    task: TaskSpec,
    progress: u64,
    /// Taken from the tasks reserved for its node.
    reserved: bool,
}

struct World {
    sched: Scheduler,
    now: u64,
    epochs: [u64; 3],
    up: [bool; 3],
    live: Vec<Lease>,
    /// Leases whose results were delivered or whose node died: their results are stale.
    dead: Vec<Lease>,
    frames: FrameRange,
    session: String,
    /// Every event fed, with its time: what the master's store holds.
    log: Vec<(u64, SchedEvent)>,
    /// Leases of nodes that did not come back after a master restart: still
    /// current for the master until the node returns or `limbo_until`.
    limbo: Vec<Lease>,
    limbo_until: u64,
    /// The node of the last reservation.
    reserved_for: Option<String>,
    /// Model the master's group commit: `false`, every event is committed
    /// at once and every assignment delivered at once.
    batches: bool,
    /// Only `Place` places (`SchedEvent::PlaceInPasses`).
    passes: bool,
    /// How long every attempt reports it ran (from a second on, devices
    /// queue none of the session's attempts behind a running one).
    took_ms: u64,
    /// Events in `log` up to here are committed.
    committed: usize,
    /// Assignments waiting for the next commit (as the master holds them).
    held_out: Vec<Lease>,
    /// The master's commit gate (n0 is the master's node): which
    /// assignment leaves before its commit.
    gate: CommitGate,
    /// Results sent since the last commit (not acknowledged): each node's
    /// outbox delivers them again after a master restart.
    unacked: Vec<(Lease, TaskOutcome)>,
    /// (task, attempt) of every attempt a worker finished.
    produced: Vec<(u64, u32)>,
    /// (node, task, attempt) sent before the commit since the last commit.
    early_now: Vec<(String, u64, u32)>,
    /// Finished attempts nobody can name after a crash: sent early to a
    /// worker that died in the same batch as the master, its result lost
    /// with it (docs/design/durability.md, "Master restarts and the outbox").
    unnameable: Vec<(u64, u32)>,
    /// Nodes alive but not registered with the restarted master (see
    /// [`Op::Crash`]): the leases they hold and the results in their outbox.
    late: [Option<Late>; 3],
    /// The session's `max_devices`.
    max_devices: Option<u32>,
    /// Per node, bit d: device d may take work (present and online).
    usable: [u8; 3],
    /// An operator paused the session.
    paused: bool,
    /// Retries an operator may still ask for once the session ends
    /// `partial` or `failed`.
    retries_left: u32,
    /// A second session competing for the devices (`with_rival`), of its
    /// own priority: frames `RIVAL_FRAMES`, one frame a task.
    rival: Option<String>,
}

/// Frames of the rival session.
const RIVAL_FRAMES: FrameRange = FrameRange { start: 0, end: 12 };

/// What a node that missed a master holds: leases, and results in its outbox.
type Late = (Vec<Lease>, Vec<(Lease, TaskOutcome)>);

fn node_name(i: usize) -> String {
    format!("n{i}")
}

fn devices(i: usize) -> Vec<DeviceInfo> {
    (0..=i)
        .map(|d| DeviceInfo {
            id: format!("d{d}"),
            handle: String::new(),
            capabilities: BTreeMap::from([("gpu".to_string(), CapValue::Bool(d == 0))]),
        })
        .collect()
}

impl World {
    fn new(n_frames: u64, chunk: u64, max_attempts: u32) -> Self {
        Self::new_with(n_frames, chunk, max_attempts, None)
    }

    /// A session with `max_devices`.
    fn new_with(n_frames: u64, chunk: u64, max_attempts: u32, max_devices: Option<u32>) -> Self {
        let mut w = World {
            sched: Scheduler::new(1_000),
            now: 0,
            epochs: [0; 3],
            up: [false; 3],
            live: Vec::new(),
            dead: Vec::new(),
            frames: FrameRange {
                start: 5,
                end: 5 + n_frames,
            },
            session: "s1".into(),
            log: Vec::new(),
            limbo: Vec::new(),
            limbo_until: 0,
            reserved_for: None,
            batches: false,
            passes: false,
            took_ms: 0,
            committed: 0,
            held_out: Vec::new(),
            gate: CommitGate::new("n0", true),
            unacked: Vec::new(),
            produced: Vec::new(),
            early_now: Vec::new(),
            unnameable: Vec::new(),
            late: [None, None, None],
            max_devices,
            usable: [0xff; 3],
            paused: false,
            retries_left: 0,
            rival: None,
        };
        let spec = SessionSpec {
            name: "model".into(),
            frames: w.frames,
            items: None,
            chunk_frames: chunk,
            id_chunk_size: 10,
            require: Default::default(),
            prefer: BTreeMap::from([("gpu".to_string(), 5)]),
            max_attempts,
            max_losses: DEFAULT_MAX_LOSSES,
            priority: 0,
            max_devices,
            backoff_ms: 10,
            backoff_max_ms: 40,
            executor: ExecutorSpec::Noop,
            timeout_ms: 1000,
            idempotency_key: None,
            collect: None,
            correlation_id: None,
            blocklist_after: Some(0),
        };
        w.feed(SchedEvent::Submit {
            id: w.session.clone(),
            spec,
        });
        w
    }

    fn feed(&mut self, ev: SchedEvent) {
        self.log.push((self.now, ev.clone()));
        match &ev {
            SchedEvent::NodeUp { node, .. } => {
                self.usable[node[1..].parse::<usize>().unwrap()] = 0xff;
            }
            SchedEvent::Devices {
                node,
                devices,
                offline,
                ..
            } => {
                let mut mask = 0u8;
                for d in devices {
                    if !offline.iter().any(|(o, _)| *o == d.id) {
                        mask |= 1 << d.id[1..].parse::<u8>().unwrap();
                    }
                }
                self.usable[node[1..].parse::<usize>().unwrap()] = mask;
            }
            _ => {}
        }
        if let (true, SchedEvent::NodeUp { node, .. }) = (self.batches, &ev) {
            // Its registration waits for the commit, and so does what follows.
            self.gate.message(node);
        }
        for cmd in self.sched.on_event(ev, self.now) {
            if let SchedCommand::Assign {
                node,
                task,
                reserved,
            } = cmd
            {
                let i: usize = node[1..].parse().unwrap();
                let d: u8 = task.device[1..].parse().unwrap();
                assert!(
                    self.usable[i] & (1 << d) != 0,
                    "{task:?} went to {node}/{}, gone or offline",
                    task.device
                );
                assert!(
                    !reserved || self.reserved_for.as_ref() == Some(&node),
                    "a reserved task goes only to the node it was reserved for"
                );
                assert!(
                    !self.paused || task.session != self.session,
                    "a paused session got {task:?}"
                );
                // A new assignment never covers a produced frame.
                let m = self.sched.manifest(&task.session).unwrap();
                for r in &m.ranges {
                    assert!(
                        r.frames.end <= task.frames.start || task.frames.end <= r.frames.start,
                        "assigned {:?} overlaps produced {:?}",
                        task.frames,
                        r.frames
                    );
                }
                let lease = Lease {
                    node,
                    epoch: self.epochs[i],
                    task,
                    progress: 0,
                    reserved,
                };
                // Whether the assignment leaves before its commit is the
                // master's gate's to say. Every ID handed out is below the
                // reservation here: a crash sets the floor above them all.
                let early = !self.batches
                    || self
                        .gate
                        .assignment(&lease.node, &lease.task, reserved, u64::MAX)
                        == Release::Now;
                if early {
                    if self.batches {
                        self.early_now.push((
                            lease.node.clone(),
                            lease.task.task,
                            lease.task.attempt,
                        ));
                    }
                    self.live.push(lease);
                } else {
                    self.held_out.push(lease);
                }
            } else if let (true, SchedCommand::Drop { node, key, .. }) = (self.batches, cmd) {
                // A drop waits for the commit, and so does what follows; the
                // worker then stops the attempt.
                self.gate.message(&node);
                if let Some(k) = self.live.iter().position(|l| {
                    l.node == node && l.task.task == key.task && l.task.attempt == key.attempt
                }) {
                    let l = self.live.remove(k);
                    self.dead.push(l);
                } else if let Some(k) = self.held_out.iter().position(|l| {
                    l.node == node && l.task.task == key.task && l.task.attempt == key.attempt
                }) {
                    let l = self.held_out.remove(k);
                    self.dead.push(l);
                }
            }
        }
    }

    fn result(&self, l: &Lease, outcome: TaskOutcome) -> SchedEvent {
        SchedEvent::Result(TaskResult {
            node: l.node.clone(),
            epoch: l.epoch,
            key: AttemptKey {
                session: l.task.session.clone(),
                task: l.task.task,
                attempt: l.task.attempt,
            },
            device: l.task.device.clone(),
            started_ms: self.now.saturating_sub(self.took_ms),
            finished_ms: self.now,
            // An attempt that made no progress reports no ID either.
            last_id_used: (l.progress > 0)
                .then(|| l.task.ids.lo + l.progress.min(l.task.ids.len() - 1)),
            outputs: vec![],
            outcome,
            seq: 0,
            steps: Vec::new(),
        })
    }

    fn apply(&mut self, op: Op) {
        // The master's continuations of a placement cut short by its budget
        // (in the master, other messages come between; here the next op).
        // Placing in passes, one `Place` comes before each op, as one waits
        // in the master's mailbox behind what came before it.
        if self.passes {
            if self.sched.wants_to_place() {
                self.feed(SchedEvent::Place);
            }
        } else {
            while self.sched.wants_to_place() {
                self.feed(SchedEvent::Place);
            }
        }
        match op {
            Op::Up(i) if !self.up[i] => {
                self.up[i] = true;
                let name = node_name(i);
                let (gone, keep): (Vec<_>, Vec<_>) =
                    self.limbo.drain(..).partition(|l| l.node == name);
                self.limbo = keep;
                self.dead.extend(gone);
                self.epochs[i] += 1;
                self.feed(SchedEvent::NodeUp {
                    node: node_name(i),
                    epoch: self.epochs[i],
                    max_concurrency: 1 + i as u32,
                    devices: devices(i),
                    held: Vec::new(),
                });
            }
            Op::Down(i) if self.up[i] && self.late[i].is_none() => {
                self.up[i] = false;
                let name = node_name(i);
                let (gone, keep): (Vec<_>, Vec<_>) =
                    self.live.drain(..).partition(|l| l.node == name);
                self.live = keep;
                self.dead.extend(gone);
                // What waited for the commit never reaches it.
                self.held_out.retain(|l| l.node != name);
                self.feed(SchedEvent::NodeDown {
                    node: name,
                    epoch: self.epochs[i],
                    reason: LossReason::NodeDown,
                });
            }
            Op::Progress(i, f) if !self.live.is_empty() => {
                let k = i % self.live.len();
                let len = self.live[k].task.frames.len();
                let done = (len * u64::from(f) / 255).max(self.live[k].progress);
                self.live[k].progress = done;
                let l = self.live[k].clone();
                self.feed(SchedEvent::Progress(TaskProgress {
                    node: l.node.clone(),
                    epoch: l.epoch,
                    key: AttemptKey {
                        session: l.task.session.clone(),
                        task: l.task.task,
                        attempt: l.task.attempt,
                    },
                    frames_done: done,
                    last_id_used: Some(l.task.ids.lo + done.min(l.task.ids.len() - 1)),
                    outputs: vec![],
                    seq: 0,
                }));
            }
            Op::Complete(i) if !self.live.is_empty() => {
                let l = self.live.remove(i % self.live.len());
                self.finished(&l, TaskOutcome::Completed);
                let ev = self.result(&l, TaskOutcome::Completed);
                self.feed(ev);
                self.dead.push(l);
            }
            Op::Duplicate(i) if !self.live.is_empty() => {
                let l = self.live.remove(i % self.live.len());
                self.finished(&l, TaskOutcome::Completed);
                let ev = self.result(&l, TaskOutcome::Completed);
                self.feed(ev.clone());
                let before = self.sched.manifest(&self.session).unwrap().ranges.len();
                self.feed(ev);
                let after = self.sched.manifest(&self.session).unwrap().ranges.len();
                assert_eq!(before, after, "a duplicate result adds nothing");
                self.dead.push(l);
            }
            Op::Fail(i, f) if !self.live.is_empty() => {
                let l = self.live.remove(i % self.live.len());
                let done = l.progress.max(l.task.frames.len() * u64::from(f) / 512);
                let outcome = TaskOutcome::Failed {
                    frames_done: done,
                    error: "boom".into(),
                };
                self.finished(&l, outcome.clone());
                let ev = self.result(&l, outcome);
                self.feed(ev);
                self.dead.push(l);
            }
            Op::Devices(i, present, offline)
                if !self.batches && self.up[i] && self.late[i].is_none() =>
            {
                let name = node_name(i);
                let all = devices(i);
                let keep: Vec<DeviceInfo> = all
                    .iter()
                    .enumerate()
                    .filter(|(d, _)| present & (1 << d) != 0)
                    .map(|(_, d)| d.clone())
                    .collect();
                let off: Vec<(String, String)> = keep
                    .iter()
                    .enumerate()
                    .filter(|(d, _)| offline & (1 << d) != 0)
                    .map(|(_, d)| (d.id.clone(), "offline".to_string()))
                    .collect();
                // The worker stops the attempts of the devices it lost.
                let (gone, live): (Vec<_>, Vec<_>) = self
                    .live
                    .drain(..)
                    .partition(|l| l.node == name && !keep.iter().any(|d| d.id == l.task.device));
                self.live = live;
                self.dead.extend(gone);
                self.feed(SchedEvent::Devices {
                    node: name,
                    epoch: self.epochs[i],
                    devices: keep,
                    offline: off,
                });
            }
            Op::Skip(i) if !self.live.is_empty() => {
                let l = self.live.remove(i % self.live.len());
                let outcome = TaskOutcome::SkippedOffline {
                    error: "device offline".into(),
                };
                self.finished(&l, outcome.clone());
                let ev = self.result(&l, outcome);
                self.feed(ev);
                self.dead.push(l);
            }
            Op::Hang(i, f) if !self.live.is_empty() => {
                let l = self.live.remove(i % self.live.len());
                let done = l.progress.max(l.task.frames.len() * u64::from(f) / 512);
                let outcome = TaskOutcome::Unresponsive {
                    frames_done: done,
                    error: "device_unresponsive: silent".into(),
                };
                self.finished(&l, outcome.clone());
                let ev = self.result(&l, outcome);
                self.feed(ev);
                self.dead.push(l);
            }
            Op::Stale(i) if !self.dead.is_empty() => {
                let l = self.dead[i % self.dead.len()].clone();
                // A node sends results only to a master it registered with.
                let n: usize = l.node[1..].parse().unwrap();
                if self.late[n].is_some() {
                    return self.check();
                }
                let before = self.sched.manifest(&self.session).unwrap();
                let ev = self.result(&l, TaskOutcome::Completed);
                self.log.push((self.now, ev.clone()));
                let cmds = self.sched.on_event(ev, self.now);
                let after = self.sched.manifest(&self.session).unwrap();
                assert_eq!(
                    before.ranges, after.ranges,
                    "a stale or redelivered result changes nothing"
                );
                for c in cmds {
                    assert!(!matches!(c, SchedCommand::Assign { .. }));
                }
            }
            Op::Tick(ms) => {
                self.now += ms;
                if self.now >= self.limbo_until {
                    self.dead.append(&mut self.limbo);
                }
                self.feed(SchedEvent::Tick);
            }
            Op::Restart(mask, forget) => {
                if self.batches {
                    self.commit(0);
                }
                self.register_late();
                self.restart(mask, forget)
            }
            Op::Commit(n) if self.batches => self.commit(n),
            Op::Crash(mask) if self.batches => self.crash(mask),
            // With batches, reservations are made only by commits.
            Op::Reserve(i, n) if !self.batches => {
                if let Some(ev) = self.sched.reservation(&node_name(i), n.into()) {
                    self.reserved_for = Some(node_name(i));
                    self.feed(ev);
                }
            }
            Op::Pause(paused) if self.sched.pause_refused(&self.session).is_none() => {
                // Before the event: a resume places at once.
                self.paused = paused;
                self.feed(SchedEvent::Pause {
                    session: self.session.clone(),
                    paused,
                });
            }
            Op::Requeue(i) => {
                let m = self.sched.manifest(&self.session).unwrap();
                let mut tasks: Vec<u64> = m.ranges.iter().map(|r| r.task).collect();
                tasks.dedup();
                if let Some(&task) = tasks.get(i % tasks.len().max(1)) {
                    if self.sched.requeue_check(&self.session, task).is_ok() {
                        self.gate.rerun(&self.session, [task]);
                        self.feed(SchedEvent::Requeue {
                            session: self.session.clone(),
                            task,
                            produced: Vec::new(),
                        });
                    }
                }
            }
            _ => {}
        }
        // A restart or crash rebuilt the ledger from what was committed.
        self.paused = self.sched.view(&self.session, self.now).unwrap().paused;
        self.check();
    }

    /// Model the master's group commit from now on (see `batches`).
    fn with_batches(mut self) -> Self {
        self.batches = true;
        self.committed = self.log.len();
        self
    }

    /// A worker finished an attempt: its result waits in its outbox until
    /// the master acknowledges it (after the next commit).
    fn finished(&mut self, l: &Lease, outcome: TaskOutcome) {
        if matches!(outcome, TaskOutcome::Completed) {
            self.produced.push((l.task.task, l.task.attempt));
        }
        if self.batches {
            self.unacked.push((l.clone(), outcome));
        }
    }

    /// The master reserves up to `n` tasks for n0, commits what it recorded,
    /// acknowledges the results and sends what waited.
    fn commit(&mut self, n: u8) {
        if let Some(ev) = self.sched.reservation(&node_name(0), n.into()) {
            self.reserved_for = Some(node_name(0));
            self.gate.set_reserving(true);
            self.feed(ev);
            self.gate.set_reserving(false);
        }
        self.committed = self.log.len();
        self.early_now.clear();
        self.gate.committed();
        self.unacked.clear();
        let held = std::mem::take(&mut self.held_out);
        self.live.extend(held);
    }

    /// The master dies with its last batch, and n0's worker with it.
    fn crash(&mut self, mask: u8) {
        let unacked = std::mem::take(&mut self.unacked);
        for (l, outcome) in &unacked {
            let i: usize = l.node[1..].parse().unwrap();
            let early = self
                .early_now
                .contains(&(l.node.clone(), l.task.task, l.task.attempt));
            if i != 0 && !self.up[i] && early && matches!(outcome, TaskOutcome::Completed) {
                self.unnameable.push((l.task.task, l.task.attempt));
            }
        }
        self.log.truncate(self.committed);
        let mut fresh = Scheduler::new(1_000);
        for (at, ev) in self.log.clone() {
            fresh.on_event(ev, at);
        }
        // Nothing handed out, even lost, is below the recorded reservation.
        let floor = self.sched.ids().high_water() + 50;
        self.sched = fresh;
        // What the rebuilt ledger says, whatever the crash lost.
        self.paused = self.sched.view(&self.session, self.now).unwrap().paused;
        self.held_out.clear();
        self.gate = CommitGate::new("n0", true);
        self.feed(SchedEvent::Resume {
            id_floor: floor,
            within_ms: 100,
        });
        self.commit(0);
        self.limbo_until = self.now + 100;
        // Leases of nodes away whose end the lost batch decided (declared
        // down, a window closed, a result it never recorded) are current
        // again for this master: their node may still report them, so they
        // wait in limbo like the others. (Nodes still up register again
        // below and name what they hold.)
        let current: Vec<(String, u64, u32)> = self
            .sched
            .device_views(None)
            .into_iter()
            .flat_map(|d| {
                let node = d.node.clone();
                d.tasks
                    .into_iter()
                    .map(move |t| (node.clone(), t.task, t.attempt))
            })
            .collect();
        let up = self.up;
        let (back, dead): (Vec<_>, Vec<_>) = self.dead.drain(..).partition(|l| {
            let i: usize = l.node[1..].parse().unwrap();
            !up[i] && current.contains(&(l.node.clone(), l.task.task, l.task.attempt))
        });
        self.dead = dead;
        self.limbo.extend(back);
        // n0's attempts died with it: they report nothing, ever.
        self.live.retain(|l| l.node != "n0");
        self.dead.retain(|l| l.node != "n0");
        self.limbo.retain(|l| l.node != "n0");
        if self.up[0] {
            self.epochs[0] += 1;
            if mask & 1 == 0 {
                self.up[0] = false;
            } else {
                self.feed(SchedEvent::NodeUp {
                    node: node_name(0),
                    epoch: self.epochs[0],
                    max_concurrency: 1,
                    devices: devices(0),
                    held: Vec::new(),
                });
                self.commit(0);
            }
        }
        for i in 1..3 {
            if !self.up[i] {
                continue;
            }
            let name = node_name(i);
            let (mine, others): (Vec<_>, Vec<_>) =
                self.live.drain(..).partition(|l| l.node == name);
            self.live = others;
            let outbox: Vec<(Lease, TaskOutcome)> = unacked
                .iter()
                .filter(|(l, _)| l.node == name)
                .cloned()
                .collect();
            let late = self.late[i].get_or_insert_with(Default::default);
            late.0.extend(mine);
            late.1.extend(outbox);
            if mask & (1 << i) == 0 {
                self.register(i);
            }
        }
    }

    /// Node i, alive all along, registers with the master it now sees,
    /// naming what it holds, then delivers its outbox again.
    fn register(&mut self, i: usize) {
        let Some((leases, outbox)) = self.late[i].take() else {
            return;
        };
        let key = |l: &Lease| AttemptKey {
            session: l.task.session.clone(),
            task: l.task.task,
            attempt: l.task.attempt,
        };
        let name = node_name(i);
        self.epochs[i] += 1;
        let mut held: Vec<AttemptKey> = Vec::new();
        for mut l in leases {
            l.epoch = self.epochs[i];
            held.push(key(&l));
            self.live.push(l);
        }
        held.extend(outbox.iter().map(|(l, _)| key(l)));
        self.feed(SchedEvent::NodeUp {
            node: name,
            epoch: self.epochs[i],
            max_concurrency: 1 + i as u32,
            devices: devices(i),
            held,
        });
        self.commit(0);
        for (mut l, outcome) in outbox {
            l.epoch = self.epochs[i];
            let ev = self.result(&l, outcome);
            self.feed(ev);
        }
    }

    /// Nodes that missed a master register with this one.
    fn register_late(&mut self) {
        for i in 1..3 {
            self.register(i);
        }
    }

    /// Every attempt a worker finished and the manifest does not hold is
    /// listed in `replay`.
    fn check_reruns_listed(&self) {
        let m = self.sched.manifest(&self.session).unwrap();
        for &(task, attempt) in &self.produced {
            if self.unnameable.contains(&(task, attempt)) {
                continue;
            }
            let banked = m
                .ranges
                .iter()
                .any(|r| r.task == task && r.attempt == attempt);
            let listed = m
                .replay
                .iter()
                .any(|r| r.task == task && r.old_attempt == attempt);
            assert!(
                banked || listed,
                "task {task} attempt {attempt} finished on a worker, is not in the manifest and not in replay: {:?}",
                m.replay
            );
        }
    }

    /// Crash the master: rebuild the ledger from the log alone, resume, and
    /// let the nodes in `mask` register again with the leases they hold.
    fn restart(&mut self, mask: u8, forget: bool) {
        let mut fresh = Scheduler::new(1_000);
        for (at, ev) in self.log.clone() {
            fresh.on_event(ev, at);
        }
        let (a, b) = (
            self.sched.manifest(&self.session).unwrap(),
            fresh.manifest(&self.session).unwrap(),
        );
        assert_eq!(a.ranges, b.ranges, "replay rebuilds the same ledger");
        if let Some(r) = &self.rival {
            assert_eq!(
                self.sched.manifest(r).unwrap().ranges,
                fresh.manifest(r).unwrap().ranges,
                "replay rebuilds the rival's ledger"
            );
        }
        assert_eq!(a.replay, b.replay);
        assert_eq!(a.retried, b.retried);
        assert_eq!(
            self.sched.view(&self.session, 0),
            fresh.view(&self.session, 0),
            "replay rebuilds the same view (paused, counters)"
        );
        assert_eq!(
            self.sched.running_ranges(&self.session),
            fresh.running_ranges(&self.session)
        );
        assert_eq!(self.sched.issued_ids(), fresh.issued_ids());
        assert_eq!(self.sched.ids().high_water(), fresh.ids().high_water());
        // The reservation is above anything handed out.
        let floor = self.sched.ids().high_water() + 50;
        self.sched = fresh;
        // What the rebuilt ledger says, whatever the crash lost.
        self.paused = self.sched.view(&self.session, self.now).unwrap().paused;
        self.feed(SchedEvent::Resume {
            id_floor: floor,
            within_ms: 100,
        });
        // Every node still away gets a new window.
        self.limbo_until = self.now + 100;
        for i in 0..3 {
            if !self.up[i] {
                continue;
            }
            let name = node_name(i);
            let (mine, others): (Vec<_>, Vec<_>) =
                self.live.drain(..).partition(|l| l.node == name);
            self.live = others;
            if mask & (1 << i) == 0 {
                // Not back yet: its leases are dead once the window closes.
                self.up[i] = false;
                self.limbo.extend(mine);
                self.limbo_until = self.now + 100;
                continue;
            }
            let mut held = mine;
            if forget && !held.is_empty() {
                self.dead.push(held.remove(0));
            }
            self.epochs[i] += 1;
            let keys = held
                .iter()
                .map(|l| AttemptKey {
                    session: l.task.session.clone(),
                    task: l.task.task,
                    attempt: l.task.attempt,
                })
                .collect();
            for l in &mut held {
                l.epoch = self.epochs[i];
            }
            self.live.extend(held);
            self.feed(SchedEvent::NodeUp {
                node: name,
                epoch: self.epochs[i],
                max_concurrency: 1 + i as u32,
                devices: devices(i),
                held: keys,
            });
        }
    }

    fn check(&self) {
        // Placement: the index picks what looking at every device picks.
        if let Err(e) = self.sched.check_placement_index() {
            panic!("{e}");
        }
        let m = self.sched.manifest(&self.session).unwrap();
        // Produced and running ranges: inside the session, pairwise disjoint.
        let mut spans: Vec<FrameRange> = m.ranges.iter().map(|r| r.frames).collect();
        spans.extend(self.sched.running_ranges(&self.session));
        spans.extend(m.failed.iter().map(|f| f.frames));
        spans.sort();
        for r in &spans {
            assert!(
                r.start >= self.frames.start && r.end <= self.frames.end && r.start < r.end,
                "{r:?}"
            );
        }
        for w in spans.windows(2) {
            assert!(w[0].end <= w[1].start, "overlap: {:?} and {:?}", w[0], w[1]);
        }
        if let Some(r) = &self.rival {
            let m = self.sched.manifest(r).unwrap();
            let mut spans: Vec<FrameRange> = m.ranges.iter().map(|r| r.frames).collect();
            spans.extend(self.sched.running_ranges(r));
            spans.extend(m.failed.iter().map(|f| f.frames));
            spans.sort();
            for w in spans.windows(2) {
                assert!(
                    w[0].end <= w[1].start,
                    "rival overlap: {:?} and {:?}",
                    w[0],
                    w[1]
                );
            }
        }
        // IDs: every issued range disjoint from every other and from the free list.
        let mut ids: Vec<IdRange> = self.sched.issued_ids();
        ids.extend(self.sched.ids().free_ranges().iter().copied());
        ids.retain(|r| !r.is_empty());
        ids.sort();
        for w in ids.windows(2) {
            assert!(w[0].hi <= w[1].lo, "ID overlap: {:?} and {:?}", w[0], w[1]);
        }
        for r in &ids {
            assert!(r.lo >= 1_000 && r.hi <= self.sched.ids().high_water());
        }
        if let Some(max) = self.max_devices {
            let running = self.sched.running_ranges(&self.session).len();
            assert!(
                running <= max as usize,
                "{running} attempts in flight, max_devices = {max}"
            );
        }
        // Capacity: per device and per node.
        for (node, inflight, cap, devs) in self.sched.capacity() {
            assert!(inflight <= cap, "{node}: {inflight} > {cap}");
            assert_eq!(inflight, devs.iter().sum::<u32>(), "{node}");
            assert!(devs.iter().all(|d| *d <= 1 + PREFETCH), "{node}: {devs:?}");
        }
    }

    /// Heal everything and run to the end.
    fn drain(&mut self) {
        self.register_late();
        if !self.up.iter().any(|u| *u) {
            self.apply(Op::Up(2));
        }
        if self.paused {
            self.apply(Op::Pause(false));
        }
        // Devices that left or went offline are back.
        for i in 0..3 {
            if self.up[i] && self.late[i].is_none() && self.usable[i] != 0xff {
                self.apply(Op::Devices(i, 0xff, 0));
            }
        }
        // An operator unblocks the devices that failed attempts in a row.
        for d in self.sched.device_views(None) {
            if d.state == orch_actors::protocol::DeviceState::Blocklisted {
                self.feed(SchedEvent::Unblock {
                    node: d.node,
                    device: d.device,
                });
            }
        }
        for _ in 0..10_000 {
            let state = self.sched.view(&self.session, self.now).unwrap().state;
            if state.is_final()
                && self.retries_left > 0
                && self.sched.retry_refused(&self.session).is_none()
            {
                self.retries_left -= 1;
                let failed = self.sched.failed_tasks(&self.session);
                self.gate.rerun(&self.session, failed);
                self.feed(SchedEvent::Retry {
                    session: self.session.clone(),
                });
                continue;
            }
            let rival_final = self
                .rival
                .as_ref()
                .is_none_or(|r| self.sched.view(r, self.now).unwrap().state.is_final());
            if state.is_final() && rival_final {
                return;
            }
            if self.batches {
                self.apply(Op::Commit(4));
            }
            if self.live.is_empty() {
                self.apply(Op::Tick(50));
            } else {
                self.apply(Op::Complete(0));
            }
        }
        panic!("a session did not finish (a starved rival?)");
    }
}

impl World {
    /// A second session, submitted now with `priority` (the first has 0):
    /// both compete for the devices, and both must end.
    fn with_rival(mut self, priority: Option<i32>) -> Self {
        let Some(priority) = priority else {
            return self;
        };
        let id = "s0".to_string();
        let spec = SessionSpec {
            name: "rival".into(),
            frames: RIVAL_FRAMES,
            items: None,
            chunk_frames: 1,
            id_chunk_size: 10,
            require: Default::default(),
            prefer: Default::default(),
            max_attempts: 3,
            max_losses: DEFAULT_MAX_LOSSES,
            priority,
            max_devices: None,
            backoff_ms: 10,
            backoff_max_ms: 40,
            executor: ExecutorSpec::Noop,
            timeout_ms: 1000,
            idempotency_key: None,
            collect: None,
            correlation_id: None,
            blocklist_after: Some(0),
        };
        self.feed(SchedEvent::Submit {
            id: id.clone(),
            spec,
        });
        self.rival = Some(id);
        self
    }

    /// Once the session ends `partial` or `failed`, an operator retries
    /// it, up to `n` times.
    fn retrying(mut self, n: u32) -> Self {
        self.retries_left = n;
        self
    }

    /// From now on place in slices of `max`, as the master does in slices
    /// of `PLACE_BUDGET` (recorded, so a replay slices the same).
    fn sliced(mut self, max: Option<u32>) -> Self {
        if let Some(max) = max {
            self.feed(SchedEvent::PlaceBudget { max });
        }
        self
    }

    /// Every attempt reports it ran `ms`.
    fn attempts_of(mut self, ms: u64) -> Self {
        self.took_ms = ms;
        self
    }

    /// From now on only `Place` places, as in the master
    /// (`SchedEvent::PlaceInPasses`).
    fn in_passes(mut self, passes: bool) -> Self {
        if passes {
            self.feed(SchedEvent::PlaceInPasses);
            self.passes = true;
        }
        self
    }
}

/// Apply `ops`, then heal and run to the end.
fn run(mut w: World, ops: Vec<Op>) -> World {
    for o in ops {
        w.apply(o);
    }
    w.drain();
    w
}

/// After a run healed and drained: every frame produced exactly once or
/// listed as failed, the right final state, replay records moving forward.
fn check_final(w: &World) -> Result<(), TestCaseError> {
    let m = w.sched.manifest(&w.session).unwrap();
    // Every frame is produced exactly once, or listed as failed.
    let mut covered: Vec<FrameRange> = m.ranges.iter().map(|r| r.frames).collect();
    covered.extend(m.failed.iter().map(|f| f.frames));
    covered.sort();
    let mut at = w.frames.start;
    for r in &covered {
        prop_assert_eq!(r.start, at, "gap or overlap at {}", at);
        at = r.end;
    }
    prop_assert_eq!(at, w.frames.end);
    let expected = if m.failed.is_empty() {
        SessionState::Completed
    } else if m.ranges.is_empty() {
        SessionState::Failed
    } else {
        SessionState::Partial
    };
    prop_assert_eq!(m.state, expected);
    // Each replay record names a range that was produced again or failed.
    for r in &m.replay {
        prop_assert!(r.new_attempt > r.old_attempt, "{:?}", r);
    }
    if let Some(r) = &w.rival {
        let m = w.sched.manifest(r).unwrap();
        let mut covered: Vec<FrameRange> = m.ranges.iter().map(|r| r.frames).collect();
        covered.extend(m.failed.iter().map(|f| f.frames));
        covered.sort();
        let mut at = RIVAL_FRAMES.start;
        for r in &covered {
            prop_assert_eq!(r.start, at, "rival: gap or overlap at {}", at);
            at = r.end;
        }
        prop_assert_eq!(at, RIVAL_FRAMES.end);
    }
    Ok(())
}

/// `n` cases, or `PROPTEST_CASES` for a deeper run.
fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    #[test]
    fn every_frame_exactly_once_whatever_happens(
        n_frames in 1u64..80,
        chunk in 1u64..12,
        max_attempts in 1u32..4,
        budget in proptest::option::of(1u32..4),
        max_devices in proptest::option::of(1u32..4),
        retries in 0u32..3,
        rival in proptest::option::of(-2i32..=2),
        passes in any::<bool>(),
        took_ms in prop_oneof![Just(0u64), Just(1_500u64)],
        ops in proptest::collection::vec(op(), 0..120),
    ) {
        let w = World::new_with(n_frames, chunk, max_attempts, max_devices);
        let w = w.sliced(budget).in_passes(passes).attempts_of(took_ms);
        let w = run(w.retrying(retries).with_rival(rival), ops);
        check_final(&w)?;
    }
}

proptest! {
    // Crashes that matter need a commit, an assignment and a result in one
    // batch: more cases than above.
    #![proptest_config(ProptestConfig { cases: cases(1500), ..ProptestConfig::default() })]

    /// The same with the master's group commit: assignments leave before
    /// their commit (to n0, the master's node, only reserved tasks), and a
    /// crash loses everything since the last commit, n0's worker with it.
    /// Every attempt a worker finished is in the manifest or in `replay`.
    #[test]
    fn every_rerun_is_listed_when_a_crash_loses_the_last_batch(
        n_frames in 1u64..80,
        chunk in 1u64..12,
        max_attempts in 1u32..4,
        budget in proptest::option::of(1u32..4),
        max_devices in proptest::option::of(1u32..4),
        retries in 0u32..3,
        passes in any::<bool>(),
        ops in proptest::collection::vec(op_batched(), 0..150),
    ) {
        let w = World::new_with(n_frames, chunk, max_attempts, max_devices).with_batches();
        let w = run(w.sliced(budget).in_passes(passes).retrying(retries), ops);
        check_final(&w)?;
        w.check_reruns_listed();
    }
}

#[test]
fn lost_work_keeps_reported_frames_and_replays_the_rest() {
    let mut w = World::new(10, 10, 3);
    w.apply(Op::Up(0));
    assert_eq!(w.live.len(), 1);
    w.apply(Op::Progress(0, 102)); // 4 of 10 frames
    assert_eq!(w.live[0].progress, 4);
    let old = w.live[0].task.clone();
    w.apply(Op::Up(1));
    w.apply(Op::Down(0));
    let m = w.sched.manifest(&w.session).unwrap();
    assert_eq!(m.ranges.len(), 1);
    assert_eq!(m.ranges[0].frames, FrameRange { start: 5, end: 9 });
    assert_eq!(m.replay.len(), 1);
    assert_eq!(m.replay[0].frames, FrameRange { start: 9, end: 15 });
    assert_eq!(m.replay[0].reason, LossReason::NodeDown);
    let new = &w.live[0].task;
    assert_eq!(new.frames, FrameRange { start: 9, end: 15 });
    assert_eq!(new.attempt, old.attempt + 1);
    assert!(
        !new.ids.overlaps(&IdRange {
            lo: old.ids.lo,
            hi: old.ids.lo + 5
        }),
        "used IDs are retired"
    );
    // The lost chunk is retired whole: the dead worker may have used IDs
    // past its last report.
    assert!(w.sched.ids().free_ranges().is_empty());
    assert!(!new.ids.overlaps(&old.ids));
}

#[test]
fn a_failing_task_retries_on_another_device_then_fails_the_range() {
    let mut w = World::new(3, 3, 2);
    w.apply(Op::Up(1)); // devices d0 (gpu, preferred) and d1
    let first = w.live[0].task.device.clone();
    assert_eq!(first, "d0", "preference weight picks the gpu device");
    w.apply(Op::Fail(0, 0));
    w.apply(Op::Tick(20));
    assert_eq!(w.live.len(), 1);
    assert_ne!(
        w.live[0].task.device, first,
        "the retry avoids the failed device"
    );
    w.apply(Op::Fail(0, 0));
    let v = w.sched.view(&w.session, w.now).unwrap();
    assert_eq!(v.state, SessionState::Failed);
    assert_eq!(v.retries, 1);
    let m = w.sched.manifest(&w.session).unwrap();
    assert_eq!(m.failed[0].error, "boom");
}

#[test]
fn a_failed_attempt_that_reports_no_id_retires_its_whole_chunk() {
    let mut w = World::new(3, 3, 3);
    w.apply(Op::Up(0));
    let first = w.live[0].task.clone();
    assert_eq!(w.live[0].progress, 0);
    w.apply(Op::Fail(0, 0));
    assert!(
        w.sched.ids().free_ranges().is_empty(),
        "nothing of the chunk comes back: {:?}",
        w.sched.ids().free_ranges()
    );
    w.apply(Op::Tick(20));
    let retry = &w.live[0].task;
    assert_eq!(retry.attempt, first.attempt + 1);
    assert!(
        !retry.ids.overlaps(&first.ids),
        "{:?} overlaps the failed attempt's {:?}",
        retry.ids,
        first.ids
    );
    // One that reports what it used gets the rest back.
    w.apply(Op::Progress(0, 255));
    let used = w.live[0].progress;
    let chunk = w.live[0].task.ids;
    w.apply(Op::Fail(0, 0));
    assert_eq!(
        w.sched.ids().free_ranges(),
        &[IdRange {
            lo: chunk.lo + used + 1,
            hi: chunk.hi
        }]
    );
}

#[test]
fn a_session_no_device_can_serve_waits_and_says_why() {
    let mut s = Scheduler::new(0);
    s.on_event(
        SchedEvent::NodeUp {
            node: "n".into(),
            epoch: 1,
            max_concurrency: 2,
            devices: devices(0),
            held: Vec::new(),
        },
        0,
    );
    let spec = SessionSpec {
        name: "needs-tpu".into(),
        frames: FrameRange { start: 0, end: 4 },
        items: None,
        chunk_frames: 2,
        id_chunk_size: 1,
        require: BTreeMap::from([("tpu".to_string(), CapValue::Bool(true))]),
        prefer: BTreeMap::new(),
        max_attempts: 3,
        max_losses: DEFAULT_MAX_LOSSES,
        priority: 0,
        max_devices: None,
        backoff_ms: 1,
        backoff_max_ms: 1,
        executor: ExecutorSpec::Noop,
        timeout_ms: 1,
        idempotency_key: None,
        collect: None,
        correlation_id: None,
        blocklist_after: Some(0),
    };
    let cmds = s.on_event(
        SchedEvent::Submit {
            id: "x".into(),
            spec,
        },
        0,
    );
    assert!(cmds.is_empty());
    let v = s.view("x", 0).unwrap();
    assert_eq!(
        v.waiting.as_deref(),
        Some("no healthy device matches `tpu = true`")
    );
}

#[test]
fn per_device_fifo_depth_and_round_robin_over_many_devices() {
    let mut s = Scheduler::new(0);
    let devs: Vec<DeviceInfo> = (0..100)
        .map(|d| DeviceInfo {
            id: format!("d{d}"),
            handle: String::new(),
            capabilities: Default::default(),
        })
        .collect();
    s.on_event(
        SchedEvent::NodeUp {
            node: "n".into(),
            epoch: 1,
            max_concurrency: 20,
            devices: devs,
            held: Vec::new(),
        },
        0,
    );
    let spec = SessionSpec {
        name: "many".into(),
        frames: FrameRange {
            start: 0,
            end: 1000,
        },
        items: None,
        chunk_frames: 1,
        id_chunk_size: 1,
        require: Default::default(),
        prefer: BTreeMap::new(),
        max_attempts: 3,
        max_losses: DEFAULT_MAX_LOSSES,
        priority: 0,
        max_devices: None,
        backoff_ms: 1,
        backoff_max_ms: 1,
        executor: ExecutorSpec::Noop,
        timeout_ms: 1,
        idempotency_key: None,
        collect: None,
        correlation_id: None,
        blocklist_after: Some(0),
    };
    let mut leases: Vec<TaskSpec> = s
        .on_event(
            SchedEvent::Submit {
                id: "m".into(),
                spec,
            },
            0,
        )
        .into_iter()
        .filter_map(|c| match c {
            SchedCommand::Assign { task, .. } => Some(task),
            _ => None,
        })
        .collect();
    assert_eq!(
        leases.len(),
        20 * (1 + PREFETCH as usize),
        "(1 + PREFETCH) x max_concurrency in flight"
    );
    let mut used = std::collections::BTreeSet::new();
    while let Some(t) = leases.pop() {
        used.insert(t.device.clone());
        let r = TaskResult {
            node: "n".into(),
            epoch: 1,
            key: AttemptKey {
                session: "m".into(),
                task: t.task,
                attempt: t.attempt,
            },
            device: t.device,
            started_ms: 0,
            finished_ms: 0,
            last_id_used: None,
            outputs: vec![],
            outcome: TaskOutcome::Completed,
            seq: 0,
            steps: Vec::new(),
        };
        for c in s.on_event(SchedEvent::Result(r), 0) {
            if let SchedCommand::Assign { task, .. } = c {
                leases.insert(0, task);
            }
        }
    }
    assert_eq!(used.len(), 100, "every device got work");
    assert_eq!(s.view("m", 0).unwrap().state, SessionState::Completed);
}

fn dev(id: &str) -> DeviceInfo {
    DeviceInfo {
        id: id.into(),
        handle: String::new(),
        capabilities: Default::default(),
    }
}

fn one_task(name: &str) -> SessionSpec {
    SessionSpec {
        name: name.into(),
        frames: FrameRange { start: 0, end: 1 },
        items: None,
        chunk_frames: 1,
        id_chunk_size: 1,
        require: Default::default(),
        prefer: BTreeMap::new(),
        max_attempts: 3,
        max_losses: 2,
        priority: 0,
        max_devices: None,
        backoff_ms: 1,
        backoff_max_ms: 1,
        executor: ExecutorSpec::Noop,
        timeout_ms: 1,
        idempotency_key: None,
        collect: None,
        correlation_id: None,
        blocklist_after: Some(0),
    }
}

fn assigned(cmds: Vec<SchedCommand>) -> Vec<(String, TaskSpec)> {
    cmds.into_iter()
        .filter_map(|c| match c {
            SchedCommand::Assign { node, task, .. } => Some((node, task)),
            _ => None,
        })
        .collect()
}

/// Submit a one-task session `id`; what it assigned.
fn submit_one(s: &mut Scheduler, id: &str) -> Vec<(String, TaskSpec)> {
    assigned(s.on_event(
        SchedEvent::Submit {
            id: id.into(),
            spec: one_task(id),
        },
        0,
    ))
}

fn up(s: &mut Scheduler, node: &str, devices: Vec<DeviceInfo>) -> Vec<SchedCommand> {
    s.on_event(
        SchedEvent::NodeUp {
            node: node.into(),
            epoch: 1,
            max_concurrency: devices.len() as u32,
            devices,
            held: Vec::new(),
        },
        0,
    )
}

fn completed(node: &str, t: &TaskSpec) -> SchedEvent {
    SchedEvent::Result(TaskResult {
        node: node.into(),
        epoch: 1,
        key: AttemptKey {
            session: t.session.clone(),
            task: t.task,
            attempt: t.attempt,
        },
        device: t.device.clone(),
        started_ms: 0,
        finished_ms: 0,
        last_id_used: None,
        outputs: vec![],
        outcome: TaskOutcome::Completed,
        seq: 0,
        steps: Vec::new(),
    })
}

#[test]
fn lost_work_goes_to_another_capable_node_first_and_fails_after_max_losses() {
    let mut s = Scheduler::new(0);
    up(&mut s, "y", vec![dev("y0")]);
    // y's one device has run a task; x's second device never ran one, so
    // least-recently-used alone would send lost work back to x.
    let warm = submit_one(&mut s, "warm");
    s.on_event(completed("y", &warm[0].1), 0);
    up(&mut s, "x", vec![dev("x0"), dev("x1")]);
    let first = submit_one(&mut s, "s");
    assert_eq!(
        (first[0].0.as_str(), first[0].1.device.as_str()),
        ("x", "x0")
    );
    // Silent past its deadline (2 x 1 ms + 15 s grace): lost on x.
    let again = assigned(s.on_event(SchedEvent::Tick, 20_000));
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, "y", "lost work prefers another capable node");
    // Lost again, on y: `max_losses = 2` fails the range.
    s.on_event(SchedEvent::Tick, 40_000);
    let m = s.manifest("s").unwrap();
    assert_eq!(m.failed.len(), 1, "{m:?}");
    assert!(
        m.failed[0].error.contains("lost 2 times"),
        "{}",
        m.failed[0].error
    );
    assert_eq!(m.state, SessionState::Failed);
}

#[test]
fn a_submission_with_a_key_already_used_makes_no_second_session() {
    let mut s = Scheduler::new(0);
    let mut spec = one_task("once");
    spec.idempotency_key = Some("k1".into());
    s.on_event(
        SchedEvent::Submit {
            id: "a".into(),
            spec: spec.clone(),
        },
        0,
    );
    s.on_event(
        SchedEvent::Submit {
            id: "b".into(),
            spec,
        },
        0,
    );
    assert!(s.has_session("a") && !s.has_session("b"));
    assert_eq!(s.session_for_key("k1"), Some("a"));
}

#[test]
fn lost_work_goes_back_to_its_node_when_no_other_can_take_it() {
    let mut s = Scheduler::new(0);
    up(&mut s, "x", vec![dev("x0")]);
    let first = submit_one(&mut s, "s");
    assert_eq!(first[0].0, "x");
    let again = assigned(s.on_event(SchedEvent::Tick, 20_000));
    assert_eq!(again.len(), 1, "a preference, not an exclusion");
    assert_eq!(again[0].0, "x");
}

#[test]
fn an_attempt_silent_past_its_deadline_is_reassigned_as_no_answer() {
    let mut w = World::new(4, 4, 3);
    w.apply(Op::Up(0));
    let first = w.live[0].task.clone();
    // timeout 1000 ms, queued behind one more, grace 15000 ms: 17 s of silence.
    w.apply(Op::Tick(16_999));
    assert!(w.sched.manifest(&w.session).unwrap().replay.is_empty());
    w.apply(Op::Tick(2));
    let m = w.sched.manifest(&w.session).unwrap();
    assert_eq!(m.replay.len(), 1);
    assert_eq!(m.replay[0].reason, LossReason::NoAnswer);
    let again = &w.live.last().unwrap().task;
    assert_eq!(again.frames, first.frames);
    assert_eq!(again.attempt, first.attempt + 1);
    // The silent attempt's late result is stale.
    let silent = w.live.remove(0);
    w.dead.push(silent);
    w.apply(Op::Stale(w.dead.len() - 1));
}

#[test]
fn a_master_stall_moves_attempt_deadlines_by_its_length() {
    let mut w = World::new(4, 4, 3);
    w.apply(Op::Up(0));
    // 17 s of silence would be `no_answer`; 16 s of it the master did not run.
    w.apply(Op::Tick(10_000));
    w.feed(SchedEvent::Stalled { ms: 16_000 });
    w.apply(Op::Tick(6_999 + 16_000));
    assert!(
        w.sched.manifest(&w.session).unwrap().replay.is_empty(),
        "the stall does not count as silence"
    );
    w.apply(Op::Tick(2));
    let m = w.sched.manifest(&w.session).unwrap();
    assert_eq!(m.replay.len(), 1, "the running time still counts");
    assert_eq!(m.replay[0].reason, LossReason::NoAnswer);
}

/// The master restarted: a new ledger replays the first `committed` events of
/// `w` and resumes above everything issued. Returns it and its ID floor.
fn restarted(w: &World, committed: usize) -> (Scheduler, u64) {
    let mut sched = Scheduler::new(1_000);
    for (at, ev) in w.log[..committed].iter().cloned() {
        sched.on_event(ev, at);
    }
    let floor = w.sched.ids().high_water() + 50;
    sched.on_event(
        SchedEvent::Resume {
            id_floor: floor,
            within_ms: 100,
        },
        w.now,
    );
    (sched, floor)
}

/// `n0` registers with the restarted master, naming the attempts it holds.
fn n0_back(sched: &mut Scheduler, now: u64, held: Vec<AttemptKey>) -> Vec<SchedCommand> {
    sched.on_event(
        SchedEvent::NodeUp {
            node: node_name(0),
            epoch: 2,
            max_concurrency: 1,
            devices: devices(0),
            held,
        },
        now,
    )
}

/// The master sends an assignment before its cause is committed. If it dies
/// first, the restarted master has never heard of that attempt: it must not
/// give the attempt's number or chunk out again, and when the worker names
/// the attempt on registering again, `replay` lists it.
#[test]
fn an_assignment_whose_cause_was_lost_is_never_reissued_and_is_listed() {
    let mut w = World::new(50, 10, 3);
    w.apply(Op::Up(0));
    assert_eq!(w.live.len(), 3, "one device, itself and its prefetch");
    let committed = w.log.len();
    // Not committed: the result of task 0, and the assignment it freed
    // (sent at once).
    let done = w.live.remove(0);
    let ev = w.result(&done, TaskOutcome::Completed);
    w.feed(ev);
    let early = w.live.last().unwrap().task.clone();
    assert_eq!((early.task, early.attempt), (3, 1));

    // The crash: the restarted master replays what was committed.
    let (mut sched, floor) = restarted(&w, committed);
    let key = |t: &TaskSpec| AttemptKey {
        session: t.session.clone(),
        task: t.task,
        attempt: t.attempt,
    };
    // The worker holds the unacknowledged result, its two queued
    // attempts, and the one the store never recorded.
    let mut held: Vec<AttemptKey> = w.live.iter().map(|l| key(&l.task)).collect();
    held.push(key(&done.task));
    let out = n0_back(&mut sched, w.now, held);
    // The node stops it at once (it knows the device), rather than let it
    // hold the device until it ends.
    assert!(
        out.iter().any(
            |c| matches!(c, SchedCommand::Drop { key, .. } if key.task == 3 && key.attempt == 1)
        ),
        "{out:?}"
    );
    let m = sched.manifest(&w.session).unwrap();
    assert_eq!(m.replay.len(), 1, "{:?}", m.replay);
    let r = &m.replay[0];
    assert_eq!(
        (r.task, r.old_attempt, &r.reason),
        (3, 1, &LossReason::MasterRestart { detail: None })
    );
    assert_eq!(r.node, "n0");

    // The outbox delivers task 0's result again: its slot goes to task 3,
    // under a new number and a chunk above the reservation.
    let mut again = done.clone();
    again.epoch = 2;
    let out = sched.on_event(w.result(&again, TaskOutcome::Completed), w.now);
    let next = out
        .iter()
        .find_map(|c| match c {
            SchedCommand::Assign { task, .. } if task.task == 3 => Some(task.clone()),
            _ => None,
        })
        .expect("task 3 assigned again");
    assert_eq!(next.attempt, 2);
    assert!(next.ids.lo >= floor && !next.ids.overlaps(&early.ids));
    // The attempt that was never recorded reports: stale, dropped.
    let stale = Lease {
        node: node_name(0),
        epoch: 2,
        task: early,
        progress: 0,
        reserved: false,
    };
    let out = sched.on_event(w.result(&stale, TaskOutcome::Completed), w.now);
    assert!(
        out.iter().any(
            |c| matches!(c, SchedCommand::Drop { key, .. } if key.task == 3 && key.attempt == 1)
        ),
        "{out:?}"
    );
    let m = sched.manifest(&w.session).unwrap();
    assert!(
        m.ranges.iter().all(|r| r.task != 3),
        "the stale result is not banked"
    );
}

/// After a restart, unfinished tasks skip one attempt number (a running
/// one, two: its next attempt may have been sent before the crash).
#[test]
fn a_restart_skips_the_attempt_numbers_a_lost_commit_may_have_used() {
    let mut w = World::new(50, 10, 3);
    w.apply(Op::Up(0));
    let running: Vec<TaskSpec> = w.live.iter().map(|l| l.task.clone()).collect();
    w.apply(Op::Restart(0, false)); // n0 does not come back at once
    w.apply(Op::Up(1));
    // Pending tasks start at attempt 2; n0's running ones come back at 3.
    let mut attempts: BTreeMap<u64, u32> = BTreeMap::new();
    for l in &w.live {
        attempts.insert(l.task.task, l.task.attempt);
    }
    w.apply(Op::Tick(1_000)); // n0's window closes: its attempts are requeued
    for _ in 0..20 {
        w.apply(Op::Complete(0));
    }
    w.apply(Op::Tick(1_000));
    for _ in 0..20 {
        w.apply(Op::Complete(0));
    }
    let m = w.sched.manifest(&w.session).unwrap();
    assert_eq!(m.state, SessionState::Completed, "{m:?}");
    for r in &m.ranges {
        let was_running = running.iter().any(|t| t.task == r.task);
        let least = if was_running { 3 } else { 2 };
        assert!(
            r.attempt >= least,
            "task {} finished as attempt {}",
            r.task,
            r.attempt
        );
    }
    assert!(attempts.values().all(|a| *a >= 2), "{attempts:?}");
}

/// A worker naming attempts this ledger could not have sent (a bug, or a
/// forged registration) changes nothing: no replay record, no panic.
#[test]
fn held_attempts_no_master_could_have_sent_are_ignored() {
    let mut w = World::new(50, 10, 3);
    w.apply(Op::Up(0));
    let (mut sched, _) = restarted(&w, w.log.len());
    let held: Vec<AttemptKey> = [u32::MAX, 1_000, 0]
        .iter()
        .flat_map(|&attempt| {
            (0..5u64).map(move |task| AttemptKey {
                session: "s1".into(),
                task,
                attempt,
            })
        })
        .chain([AttemptKey {
            session: "no-such-session".into(),
            task: 0,
            attempt: 1,
        }])
        .collect();
    n0_back(&mut sched, w.now, held);
    let m = sched.manifest(&w.session).unwrap();
    assert!(
        m.replay
            .iter()
            .all(|r| r.reason != LossReason::MasterRestart { detail: None } || !r.device.is_empty()),
        "{:?}",
        m.replay
    );
}

/// The master's own worker dies with it and names nothing when it comes
/// back. So the master sends it early only tasks reserved for it in an
/// earlier commit, and a restart lists every task still reserved (some may
/// never have been sent): nothing it produced runs again unlisted.
#[test]
fn tasks_reserved_for_the_masters_node_are_listed_after_a_crash() {
    let mut w = World::new(100, 10, 3);
    w.apply(Op::Up(0));
    assert_eq!(w.live.len(), 3);
    w.apply(Op::Reserve(0, 2));
    let committed = w.log.len();
    // Not committed: task 0's result, and the reserved task it frees room for.
    let done = w.live.remove(0);
    let ev = w.result(&done, TaskOutcome::Completed);
    w.feed(ev);
    let early = w.live.last().unwrap().clone();
    assert_eq!((early.task.task, early.task.attempt), (3, 1));
    assert!(
        early.reserved,
        "the first reserved task, marked for early sending"
    );

    // The crash kills n0's worker with the master: it comes back holding nothing.
    let (mut sched, _) = restarted(&w, committed);
    n0_back(&mut sched, w.now, Vec::new());
    let m = sched.manifest(&w.session).unwrap();
    let listed: Vec<(u64, u32, &str, &LossReason)> = m
        .replay
        .iter()
        .filter(|r| r.device.is_empty())
        .map(|r| (r.task, r.old_attempt, r.node.as_str(), &r.reason))
        .collect();
    let restart = LossReason::MasterRestart { detail: None };
    assert_eq!(
        listed,
        vec![(3, 1, "n0", &restart), (4, 1, "n0", &restart)],
        "both reserved tasks, sent or not: {:?}",
        m.replay
    );
    // Task 3 runs again under the next number.
    assert!(m
        .replay
        .iter()
        .any(|r| r.task == 3 && r.device.is_empty() && r.new_attempt == 2));
}

/// Reserved tasks wait for their node only while other work is pending:
/// at the end of a session, any node takes them (not marked reserved).
/// A reservation whose node goes down is released unlisted: this ledger
/// knows none of them was sent.
#[test]
fn reserved_tasks_go_elsewhere_when_nothing_else_is_pending() {
    let mut w = World::new(50, 10, 3);
    w.apply(Op::Up(0)); // tasks 0-2 on n0's single device
    w.apply(Op::Reserve(0, 5)); // 3 and 4: all that is pending
    assert_eq!(w.live.len(), 3);
    w.apply(Op::Up(1));
    let on_n1: Vec<(u64, bool)> = w
        .live
        .iter()
        .filter(|l| l.node == "n1")
        .map(|l| (l.task.task, l.reserved))
        .collect();
    assert_eq!(on_n1, vec![(3, false), (4, false)]);

    let mut w = World::new(50, 10, 3);
    w.apply(Op::Up(0));
    w.apply(Op::Reserve(0, 5));
    w.apply(Op::Down(0));
    let m = w.sched.manifest(&w.session).unwrap();
    assert!(
        m.replay.iter().all(|r| !r.device.is_empty()),
        "{:?}",
        m.replay
    );
    w.apply(Op::Up(1));
    w.drain();
    let m = w.sched.manifest(&w.session).unwrap();
    assert_eq!(m.state, SessionState::Completed);
}

/// Lost work goes first, even before the tasks reserved for the master's
/// node: the session waits for it, and it waits for a slot.
#[test]
fn lost_work_goes_before_reserved_tasks() {
    let mut w = World::new(100, 10, 3);
    w.apply(Op::Up(0)); // tasks 0-2 on n0
    w.apply(Op::Up(1)); // tasks 3-8 on n1
    w.apply(Op::Reserve(0, 1)); // task 9
    w.apply(Op::Down(1)); // 3-8 lost
    w.apply(Op::Complete(0)); // a slot frees on n0
    let l = w.live.last().unwrap();
    assert_eq!(l.node, "n0");
    assert!(
        (3..=8).contains(&l.task.task) && !l.reserved,
        "a lost task, not the reserved one: task {} (reserved: {})",
        l.task.task,
        l.reserved
    );
}

/// Two restarts: the first sets a floor on n2's running attempts; n2 comes
/// back empty, so they are requeued at that floor (attempt 3, skipping 2)
/// and one goes early to n1; the master dies before committing that. The
/// second restart must skip 3 as well, not just the number after the
/// running attempt's (found by the property test above).
#[test]
fn a_second_restart_skips_the_number_an_earlier_floor_gave() {
    let mut w = World::new(31, 2, 1).with_batches();
    for o in [
        Op::Up(2),
        Op::Restart(0b0110_0000, false), // n2 does not come back at once
        Op::Up(1),
        Op::Commit(0),
        Op::Complete(0),
        Op::Complete(0),
        Op::Up(2), // back empty: its attempts requeued as attempt 3
        Op::Crash(0),
    ] {
        w.apply(o);
    }
    let m = w.sched.manifest(&w.session).unwrap();
    assert!(
        m.replay.iter().all(|r| r.new_attempt > r.old_attempt),
        "{:?}",
        m.replay
    );
    w.drain();
    w.check_reruns_listed();
}

/// A drained reserve node keeps no reservation: its reserved tasks go back
/// in front, for any node, instead of waiting for the end of the session.
#[test]
fn draining_the_reserve_node_releases_its_reservation() {
    let mut w = World::new(100, 10, 3);
    w.apply(Op::Up(0)); // tasks 0-2 on n0
    w.apply(Op::Reserve(0, 2)); // 3 and 4
    w.feed(SchedEvent::Drain {
        node: node_name(0),
        drained: true,
    });
    w.apply(Op::Up(1)); // six slots
    let mut on_n1: Vec<u64> = w
        .live
        .iter()
        .filter(|l| l.node == "n1")
        .map(|l| l.task.task)
        .collect();
    on_n1.sort_unstable();
    assert_eq!(on_n1, vec![3, 4, 5, 6, 7, 8]);
    let m = w.sched.manifest(&w.session).unwrap();
    assert!(m.replay.is_empty(), "{:?}", m.replay);
}

/// A node that misses a restarted master (it dies before the node
/// registers) names its unrecorded attempt to the next one, two restarts
/// later: `replay` lists it though the task's number moved on twice.
#[test]
fn an_attempt_named_two_restarts_later_is_listed() {
    let mut w = World::new(10, 1, 1).with_batches();
    w.apply(Op::Up(1));
    w.apply(Op::Commit(0)); // n1 gets tasks 0..=5
    w.apply(Op::Complete(0)); // task 0 done; task 6 leaves before the commit
    let early = w
        .live
        .iter()
        .find(|l| l.task.task == 6)
        .map(|l| l.task.attempt)
        .expect("task 6 sent before its commit");
    w.apply(Op::Complete(
        w.live.iter().position(|l| l.task.task == 6).unwrap(),
    ));
    w.apply(Op::Crash(2)); // n1 does not reach this master
    assert!(w.late[1].is_some());
    w.apply(Op::Crash(0)); // n1 registers with the next one
    let w = run(w, vec![]);
    let m = w.sched.manifest(&w.session).unwrap();
    let r = m
        .replay
        .iter()
        .find(|r| r.task == 6 && r.old_attempt == early)
        .unwrap_or_else(|| panic!("task 6 attempt {early} is not listed: {:?}", m.replay));
    assert_eq!(
        (r.node.as_str(), &r.reason),
        ("n1", &LossReason::MasterRestart { detail: None })
    );
    assert!(r.new_attempt >= early + 2, "{r:?}");
    assert_eq!(r.frames, FrameRange { start: 11, end: 12 });
    w.check_reruns_listed();
}

/// A node away while the session finishes names, when it registers at
/// last, attempts the store never recorded: the finished session's
/// `replay` lists them and the scheduler asks for its manifest again.
#[test]
fn a_finished_session_lists_an_unrecorded_attempt_named_late() {
    let mut w = World::new(9, 1, 1).with_batches();
    w.apply(Op::Up(2));
    w.apply(Op::Restart(0, false)); // n2 does not come back at once
    w.apply(Op::Up(1));
    w.apply(Op::Commit(0));
    w.apply(Op::Tick(100)); // n2's window closes: its tasks go to n1, early
    let early: Vec<(u64, u32)> = w
        .live
        .iter()
        .filter(|l| l.node == "n1")
        .map(|l| (l.task.task, l.task.attempt))
        .collect();
    assert!(!early.is_empty());
    // n1 finishes one of them, then misses the restarted master.
    let (t, a) = early[0];
    let k = w.live.iter().position(|l| l.task.task == t).unwrap();
    w.apply(Op::Complete(k));
    w.apply(Op::Crash(2));
    // n2 comes back and runs the whole session.
    w.apply(Op::Up(2));
    w.apply(Op::Commit(0));
    while !w.live.is_empty() {
        w.apply(Op::Complete(0));
    }
    w.apply(Op::Commit(0));
    let m = w.sched.manifest(&w.session).unwrap();
    assert_eq!(m.state, SessionState::Completed);
    assert!(!m.replay.iter().any(|r| r.task == t && r.old_attempt == a));
    // n1 registers at last, with the result in its outbox.
    let mut cmds = Vec::new();
    let (leases, outbox) = w.late[1].take().unwrap();
    let held = leases
        .iter()
        .chain(outbox.iter().map(|(l, _)| l))
        .map(|l| AttemptKey {
            session: l.task.session.clone(),
            task: l.task.task,
            attempt: l.task.attempt,
        })
        .collect();
    cmds.extend(w.sched.on_event(
        SchedEvent::NodeUp {
            node: "n1".into(),
            epoch: 9,
            max_concurrency: 2,
            devices: devices(1),
            held,
        },
        w.now,
    ));
    let m = w.sched.manifest(&w.session).unwrap();
    let r = m
        .replay
        .iter()
        .find(|r| r.task == t && r.old_attempt == a)
        .unwrap_or_else(|| panic!("task {t} attempt {a} is not listed: {:?}", m.replay));
    assert_eq!((r.node.as_str(), r.device.as_str()), ("n1", ""));
    assert!(cmds
        .iter()
        .any(|c| matches!(c, SchedCommand::ManifestAmended { session } if *session == w.session)));
    // Each attempt n1 holds is stopped.
    for l in &leases {
        assert!(cmds.iter().any(|c| matches!(c, SchedCommand::Drop { key, .. } if key.task == l.task.task && key.attempt == l.task.attempt)), "{:?} not dropped", l.task.task);
    }
}
