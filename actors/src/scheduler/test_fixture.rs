//! What the tests beside each part of the scheduler start from: a
//! scheduler with nodes registered and a session submitted, and the events
//! and commands they feed and expect (openraft's engine tests: a fixture,
//! one event, the exact commands and the state after it).

use super::*;

/// The session most tests submit.
pub(super) const S1: &str = "s1";

/// IDs each attempt of a [`spec`] session reserves.
pub(super) const ID_CHUNK: u64 = 10;

/// Per-task timeout of a [`spec`] session.
pub(super) const TIMEOUT_MS: u64 = 1000;

/// Grace past its timeouts before a silent attempt is lost.
pub(super) const GRACE_MS: u64 = 100;

/// When an attempt assigned at `at` is declared lost if it says nothing.
pub(super) fn deadline(at: u64) -> u64 {
    at + 2 * TIMEOUT_MS + GRACE_MS
}

pub(super) fn frames(start: u64, end: u64) -> FrameRange {
    FrameRange { start, end }
}

pub(super) fn ids(lo: u64, hi: u64) -> IdRange {
    IdRange { lo, hi }
}

/// A device with no capabilities.
pub(super) fn dev(id: &str) -> DeviceInfo {
    DeviceInfo {
        id: id.into(),
        handle: String::new(),
        capabilities: Capabilities::new(),
    }
}

/// A device with `gpu = true`.
pub(super) fn gpu(id: &str) -> DeviceInfo {
    DeviceInfo {
        capabilities: Capabilities::from([("gpu".to_string(), CapValue::Bool(true))]),
        ..dev(id)
    }
}

/// A session of frames `0..n` in tasks of `chunk`: no requirement, no
/// preference, [`ID_CHUNK`] IDs an attempt, 3 attempts, 10 losses, backoff
/// from 10 to 40 ms, the noop executor.
pub(super) fn spec(n: u64, chunk: u64) -> SessionSpec {
    SessionSpec {
        name: "render".into(),
        frames: frames(0, n),
        items: None,
        chunk_frames: chunk,
        id_chunk_size: ID_CHUNK,
        require: Capabilities::new(),
        prefer: BTreeMap::new(),
        max_attempts: 3,
        max_losses: crate::protocol::DEFAULT_MAX_LOSSES,
        priority: 0,
        max_devices: None,
        backoff_ms: 10,
        backoff_max_ms: 40,
        executor: crate::protocol::ExecutorSpec::Noop,
        timeout_ms: TIMEOUT_MS,
        idempotency_key: None,
        collect: None,
        correlation_id: None,
        blocklist_after: None,
    }
}

/// The key of an attempt of session [`S1`].
pub(super) fn key(task: u64, attempt: u32) -> AttemptKey {
    AttemptKey {
        session: S1.into(),
        task,
        attempt,
    }
}

/// The assignment a [`spec`] session of [`S1`] gets (not reserved).
pub(super) fn assign(
    node: &str,
    device: &str,
    task: u64,
    attempt: u32,
    f: FrameRange,
    i: IdRange,
) -> SchedCommand {
    let spec = spec(0, 1);
    SchedCommand::Assign {
        node: node.into(),
        reserved: false,
        task: TaskSpec {
            session: S1.into(),
            session_name: spec.name,
            task,
            attempt,
            frames: f,
            ids: i,
            device: device.into(),
            executor: spec.executor,
            timeout_ms: TIMEOUT_MS,
            items: Vec::new(),
            correlation_id: S1.into(),
        },
    }
}

/// What a node is told when one of its attempts is stopped, keeping nothing.
pub(super) fn drop_cmd(
    node: &str,
    device: &str,
    task: u64,
    attempt: u32,
    reason: LossReason,
) -> SchedCommand {
    SchedCommand::Drop {
        node: node.into(),
        key: key(task, attempt),
        device: device.into(),
        keep: Vec::new(),
        reason,
    }
}

/// The tasks of the assignments among `cmds`, in order.
pub(super) fn assigned(cmds: &[SchedCommand]) -> Vec<TaskSpec> {
    cmds.iter()
        .filter_map(|c| match c {
            SchedCommand::Assign { task, .. } => Some(task.clone()),
            _ => None,
        })
        .collect()
}

/// `device` of `node` restarted by an operator: its attempts are lost.
pub(super) fn device_restart(node: &str, device: &str) -> SchedEvent {
    SchedEvent::DeviceDown {
        node: node.into(),
        device: device.into(),
        reason: LossReason::DeviceRestart,
        disable: false,
    }
}

/// The worker's progress report for `t`: `done` frames, up to ID `last_id`.
pub(super) fn progress(node: &str, t: &TaskSpec, done: u64, last_id: Option<u64>) -> SchedEvent {
    SchedEvent::Progress(TaskProgress {
        node: node.into(),
        epoch: 1,
        key: t.key(),
        frames_done: done,
        last_id_used: last_id,
        outputs: Vec::new(),
        seq: 0,
    })
}

/// The worker's result for `t`.
pub(super) fn result(node: &str, t: &TaskSpec, outcome: TaskOutcome) -> TaskResult {
    TaskResult {
        node: node.into(),
        epoch: 1,
        key: t.key(),
        device: t.device.clone(),
        started_ms: 0,
        finished_ms: 0,
        last_id_used: None,
        outputs: Vec::new(),
        outcome,
        seq: 0,
        steps: Vec::new(),
    }
}

/// `t` completed on `node`.
pub(super) fn completed(node: &str, t: &TaskSpec) -> SchedEvent {
    SchedEvent::Result(result(node, t, TaskOutcome::Completed))
}

/// `t` failed on `node` after `done` frames with `error`.
pub(super) fn failed(node: &str, t: &TaskSpec, done: u64, error: &str) -> SchedEvent {
    SchedEvent::Result(result(
        node,
        t,
        TaskOutcome::Failed {
            frames_done: done,
            error: error.into(),
        },
    ))
}

/// A scheduler and its clock.
pub(super) struct Fixture {
    pub(super) sched: Scheduler,
    pub(super) now: u64,
}

impl Fixture {
    /// No node, no session: IDs from 0, [`GRACE_MS`] of grace, time 0.
    pub(super) fn new() -> Self {
        Self {
            sched: Scheduler::new(0).with_grace(GRACE_MS),
            now: 0,
        }
    }

    /// Feed one event at the fixture's time; what it publishes on the
    /// event bus is left out (see [`Fixture::feed_with_events`]).
    pub(super) fn feed(&mut self, ev: SchedEvent) -> Vec<SchedCommand> {
        let mut out = self.feed_with_events(ev);
        out.retain(|c| !matches!(c, SchedCommand::Publish(_)));
        out
    }

    /// Feed one event at the fixture's time: every command.
    pub(super) fn feed_with_events(&mut self, ev: SchedEvent) -> Vec<SchedCommand> {
        self.sched.on_event(ev, self.now)
    }

    /// Feed one event at `now` (the clock moves there).
    pub(super) fn feed_at(&mut self, now: u64, ev: SchedEvent) -> Vec<SchedCommand> {
        self.now = now;
        self.feed(ev)
    }

    /// `node` registers under `epoch` with `devices` and `max_concurrency`.
    pub(super) fn up_with(
        &mut self,
        node: &str,
        epoch: u64,
        max_concurrency: u32,
        devices: Vec<DeviceInfo>,
        held: Vec<AttemptKey>,
    ) -> Vec<SchedCommand> {
        self.feed(SchedEvent::NodeUp {
            node: node.into(),
            epoch,
            max_concurrency,
            devices,
            held,
        })
    }

    /// `node` registers (epoch 1) with `devices`, one slot per device.
    pub(super) fn up(&mut self, node: &str, devices: Vec<DeviceInfo>) -> Vec<SchedCommand> {
        let n = devices.len() as u32;
        self.up_with(node, 1, n, devices, Vec::new())
    }

    pub(super) fn submit(&mut self, id: &str, spec: SessionSpec) -> Vec<SchedCommand> {
        self.feed(SchedEvent::Submit {
            id: id.into(),
            spec,
        })
    }

    pub(super) fn down(&mut self, node: &str, epoch: u64, reason: LossReason) -> Vec<SchedCommand> {
        self.feed(SchedEvent::NodeDown {
            node: node.into(),
            epoch,
            reason,
        })
    }

    pub(super) fn tick_at(&mut self, now: u64) -> Vec<SchedCommand> {
        self.feed_at(now, SchedEvent::Tick)
    }

    pub(super) fn view(&self, id: &str) -> SessionView {
        self.sched
            .view(id, self.now)
            .expect("a session of the fixture")
    }

    pub(super) fn manifest(&self, id: &str) -> Manifest {
        self.sched.manifest(id).expect("a session in memory")
    }

    /// (in flight, cap, in flight per device) of `node`.
    pub(super) fn load(&self, node: &str) -> (u32, u32, Vec<u32>) {
        let (_, inflight, cap, devices) = self
            .sched
            .capacity()
            .into_iter()
            .find(|c| c.0 == node)
            .expect("a registered node");
        (inflight, cap, devices)
    }
}

/// Node `n1` with devices `d0` and `d1` (two slots, a cap of six) and
/// session [`S1`] of `n` frames in tasks of `chunk` submitted; what the
/// submission assigned.
pub(super) fn one_node(n: u64, chunk: u64) -> (Fixture, Vec<TaskSpec>) {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0"), dev("d1")]);
    let cmds = fx.submit(S1, spec(n, chunk));
    (fx, assigned(&cmds))
}

/// Nodes `n1` and `n2` with one device `d0` each and a slot each, and
/// session [`S1`] of `n` frames in tasks of `chunk` submitted; what the
/// submission assigned.
pub(super) fn two_nodes(n: u64, chunk: u64) -> (Fixture, Vec<TaskSpec>) {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    fx.up("n2", vec![dev("d0")]);
    let cmds = fx.submit(S1, spec(n, chunk));
    (fx, assigned(&cmds))
}
