//! The Worker actor: owns this node's Device actors, registers with the master
//! (found through the `orch.master` process group), heartbeats, and leaves
//! cleanly on shutdown (docs/design/architecture.md). The master reaches it through the
//! `orch.worker.{node}` process group. Progress and results go through the
//! [`Outbox`] and stay there until the master acknowledges them (docs/design/durability.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::pg::GroupChangeMessage;
use ractor::{pg, Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{debug, error, info, warn};

use crate::device::{Device, DeviceArgs, DeviceMsg};
use crate::executor::NodeIo;
use crate::master::MasterMsg;
use crate::masters::{self, Claim, MASTERS_SCOPE};
use crate::metrics as m;
use crate::outbox::Outbox;
use crate::protocol::{
    worker_group, AttemptKey, Capabilities, DeviceInfo, DeviceReport, FrameRange, Heartbeat,
    OutputFile, Register, TaskOutcome, TaskProgress, TaskResult, TaskSpec, ToMaster, ToWorker,
    WorkerStatus, PROTOCOL_VERSION,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Messages of [`Worker`].
pub enum WorkerMsg {
    /// A message from the master (remote or local).
    Master(ToWorker),
    /// Bytes from the network that did not decode; counted and logged.
    Malformed(String),
    /// Local: heartbeat timer.
    Tick,
    /// Local: unregister from the master; replies `true` once the master
    /// recorded the leave, `false` at once when not registered.
    Leave(RpcReplyPort<bool>),
    /// Local: where this worker stands with the master.
    Registration(RpcReplyPort<Registration>),
    /// Local: a device's progress or result.
    Device(Box<DeviceEvent>),
    /// Local: the devices of this worker, in configuration order.
    Devices(RpcReplyPort<Vec<ActorRef<DeviceMsg>>>),
    /// Local: write the outbox changes made so far.
    Flush,
    /// Local: the node's checks ([`crate::worker`] docs, `[[worker.check]]`):
    /// `None` when all pass, else the first that fails and why. A failing
    /// check puts the worker in status `error`: it stays registered and
    /// takes no new work until the checks pass.
    NodeCheck(Option<String>),
    /// Local: what a discovery source (`[[device_source]]`) found in one
    /// run, or why the run failed (its devices then stay as they were,
    /// and go offline once none was listed for `online_window_s`).
    Discovered {
        source: String,
        found: Result<Vec<Found>, String>,
    },
}

/// A device a discovery source lists.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub info: DeviceInfo,
    /// Present but not ready to work (adb `unauthorized`, ...), and why.
    pub offline: Option<String>,
    /// Its utilisation, 0 to 1, where the source knows it (GPUs).
    pub gpu_usage: Option<f32>,
}

/// Where a device comes from and how it is, as its worker sees it.
struct Health {
    /// The discovery source that lists it; `None` for a configured device.
    source: Option<String>,
    /// Listed by its source's last good run (configured devices always are).
    present: bool,
    /// When its source last listed it.
    listed_at: Instant,
    /// Its source lists it as not ready, and why.
    listed_offline: Option<String>,
    gpu_usage: Option<f32>,
    /// Shared with its Device actor: why it is offline now.
    offline: crate::device::Offline,
}

impl Health {
    fn new(source: Option<String>, cooldown: Duration) -> Self {
        Self {
            offline: Arc::new(std::sync::Mutex::new(crate::device::Liveness {
                cooldown,
                ..Default::default()
            })),
            source,
            present: true,
            listed_at: Instant::now(),
            listed_offline: None,
            gpu_usage: None,
        }
    }

    fn offline_now(&self) -> Option<String> {
        self.offline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offline
            .clone()
    }
}

/// What a device tells its worker.
#[derive(Debug)]
pub enum DeviceEvent {
    Progress {
        key: AttemptKey,
        frames_done: u64,
        last_id_used: Option<u64>,
        outputs: Vec<OutputFile>,
    },
    Finished {
        key: AttemptKey,
        device: String,
        started_ms: u64,
        finished_ms: u64,
        last_id_used: Option<u64>,
        outputs: Vec<OutputFile>,
        outcome: TaskOutcome,
        /// What each step of a workflow did.
        steps: Vec<crate::workflow::StepRecord>,
    },
}

/// A worker node's agent.
pub struct Worker;

/// Arguments of [`Worker`].
pub struct WorkerArgs {
    pub node: String,
    pub advertise: String,
    pub capabilities: Capabilities,
    pub devices: Vec<DeviceInfo>,
    pub max_concurrency: u32,
    /// Address of this node's data plane, sent in `Register`.
    pub data: Option<String>,
    pub heartbeat_ms: u64,
    /// A discovered device not listed for this long is offline; a device
    /// that gave no sign of life stays offline this long (`online_window_s`).
    pub online_window: Duration,
    pub io: Arc<dyn NodeIo>,
    /// Reports not yet acknowledged, restored from disk after a restart.
    pub outbox: Outbox,
}

/// Where the worker stands with the master it currently sees.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// No master visible in the cluster.
    NoMaster,
    Registering {
        master: ActorId,
    },
    Registered {
        master: ActorId,
        epoch: u64,
    },
    /// This master refused us for good; wait for another master.
    Refused {
        master: ActorId,
        reason: String,
    },
}

/// Where a worker stands with the master, as [`WorkerMsg::Registration`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    NoMaster,
    Registering,
    Registered { epoch: u64 },
    Refused { reason: String },
}

/// State of [`Worker`].
pub struct WorkerState {
    args: WorkerArgs,
    phase: Phase,
    /// Random per process: lets the master tell a restart from a retransmission.
    instance: u64,
    attempt: u64,
    seq: u64,
    devices: Vec<ActorRef<DeviceMsg>>,
    by_id: HashMap<String, usize>,
    /// Per device, in the order of `devices`.
    health: Vec<Health>,
    /// One more at every change of the devices the master must hear of.
    dev_version: u64,
    /// The highest version the master acknowledged.
    dev_acked: u64,
    /// Discovery sources whose last run failed, with the error said.
    source_errors: HashMap<String, String>,
    /// The node's slots, shared by its devices (new ones too).
    slots: Arc<Semaphore>,
    /// The last frame an attempt here reported done.
    last_frame: Option<u64>,
    /// Attempts queued or running here, with their cancel switches,
    /// devices, and frames.
    tasks: HashMap<AttemptKey, (CancellationToken, usize, FrameRange)>,
    leaving: Option<RpcReplyPort<bool>>,
    /// The node check that fails, and why (status `error`).
    node_error: Option<String>,
    outbox: Outbox,
    /// The earliest `Flush` scheduled, if any.
    flush_at: Option<Instant>,
    /// The masters visible when more than one was last reported.
    masters_seen: Vec<Claim>,
    /// The master as [`WorkerState::current_master`] last found it (it runs
    /// on every tick and every change of the masters' groups).
    current: Option<ActorRef<MasterMsg>>,
    /// When the master last acknowledged a report.
    last_ack: Instant,
    /// How long an unacknowledged report waits before the outbox is sent
    /// again; doubles while the master stays silent.
    resend_after: Duration,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut args = args;
        let outbox = std::mem::replace(&mut args.outbox, Outbox::open(None)?);
        outbox.publish();
        if !outbox.is_empty() {
            info!(node_id = %args.node, reports = outbox.len(), "outbox restored; delivered once a master is registered");
        }
        let mut devices = Vec::with_capacity(args.devices.len());
        let slots = Arc::new(Semaphore::new(args.max_concurrency.max(1) as usize));
        let mut health = Vec::with_capacity(args.devices.len());
        for info in &args.devices {
            let h = Health::new(None, args.online_window);
            let dargs = DeviceArgs {
                info: info.clone(),
                node: args.node.clone(),
                worker: myself.clone(),
                slots: slots.clone(),
                io: args.io.clone(),
                offline: h.offline.clone(),
            };
            let (dev, _) = Actor::spawn_linked(None, Device, dargs, myself.get_cell()).await?;
            devices.push(dev);
            health.push(h);
        }
        let by_id = args
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.id.clone(), i))
            .collect();
        pg::join(worker_group(&args.node), vec![myself.get_cell()]);
        masters::monitor(myself.get_cell());
        myself.send_interval(Duration::from_millis(args.heartbeat_ms), || WorkerMsg::Tick);
        info!(node_id = %args.node, devices = devices.len(), "worker started");
        let heartbeat_ms = args.heartbeat_ms;
        let mut state = WorkerState {
            args,
            phase: Phase::NoMaster,
            instance: rand::random(),
            attempt: 0,
            seq: 0,
            devices,
            by_id,
            health,
            dev_version: 0,
            dev_acked: 0,
            source_errors: HashMap::new(),
            slots,
            last_frame: None,
            tasks: HashMap::new(),
            leaving: None,
            node_error: None,
            outbox,
            flush_at: None,
            masters_seen: Vec::new(),
            current: None,
            last_ack: Instant::now(),
            resend_after: Duration::from_millis((heartbeat_ms * 5).max(5000)),
        };
        state.step();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Master(m) => state.on_master(m),
            WorkerMsg::Malformed(what) => {
                metrics::counter!(m::WIRE_DECODE_ERRORS).increment(1);
                warn!(node_id = %state.args.node, error = %what, "dropped an undecodable message");
            }
            WorkerMsg::Tick => {
                state.refresh_online();
                state.step();
                // A report lost on the way while the master answers others:
                // send everything again. A master that answers nothing at all
                // gets nothing more (it has what was sent; a broken
                // connection is noticed, and a new registration delivers
                // the outbox).
                let lost = state
                    .outbox
                    .oldest_sent()
                    .is_some_and(|at| at.elapsed() > state.resend_after && state.last_ack > at);
                if lost {
                    state.deliver_outbox();
                    state.resend_after = (state.resend_after * 2).min(Duration::from_secs(60));
                }
            }
            WorkerMsg::Flush => state.flush(),
            WorkerMsg::NodeCheck(failing) => {
                match (&state.node_error, &failing) {
                    (None, Some(why)) => {
                        warn!(node_id = %state.args.node, error = %why, "a node check fails: status `error`, no new work until it passes")
                    }
                    (Some(_), None) => {
                        info!(node_id = %state.args.node, "the node checks pass again: taking work")
                    }
                    _ => {}
                }
                let changed = state.node_error != failing;
                state.node_error = failing;
                if changed {
                    // Tell the master now, not at the next beat.
                    state.step();
                }
            }
            WorkerMsg::Device(ev) => state.on_device(*ev),
            WorkerMsg::Discovered { source, found } => {
                state.on_discovered(&myself, source, found).await?
            }
            WorkerMsg::Leave(reply) => state.leave(reply),
            WorkerMsg::Registration(reply) => {
                let _ = reply.send(match &state.phase {
                    Phase::NoMaster => Registration::NoMaster,
                    Phase::Registering { .. } => Registration::Registering,
                    Phase::Registered { epoch, .. } => Registration::Registered { epoch: *epoch },
                    Phase::Refused { reason, .. } => Registration::Refused {
                        reason: reason.clone(),
                    },
                });
            }
            WorkerMsg::Devices(reply) => {
                let _ = reply.send(state.devices.clone());
            }
        }
        state.settle(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.outbox.flush(true);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ProcessGroupChanged(change)
                if change.get_scope() == MASTERS_SCOPE =>
            {
                if let GroupChangeMessage::Leave(..) = change {
                    info!(node_id = %state.args.node, "master left the cluster view");
                }
                state.step();
                // Reports the master may not have recorded go to disk now.
                state.flush();
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                return Err(format!("device actor {} failed: {err}", cell.get_id()).into());
            }
            _ => {}
        }
        Ok(())
    }
}

impl WorkerState {
    /// The master to work for: the one rule of [`masters::current`]. More
    /// than one visible is said once per change, naming them.
    fn current_master(&mut self) -> Option<ActorRef<MasterMsg>> {
        let all = masters::visible();
        let claims: Vec<Claim> = all.iter().map(|(c, _)| c.clone()).collect();
        if claims.len() > 1 && claims != self.masters_seen {
            let names: Vec<String> = claims
                .iter()
                .map(|c| format!("`{}` (since unix ms {})", c.node, c.since_ms))
                .collect();
            warn!(node_id = %self.args.node, masters = claims.len(), "more than one master visible: {}; working for the oldest, `{}`, and telling the others to stand down", names.join(", "), claims[0].node);
        }
        // Until they do (a message may be lost with its connection).
        for (_, younger) in all.iter().skip(1) {
            self.send(
                younger,
                ToMaster::OlderMaster {
                    older: claims[0].clone(),
                },
            );
        }
        self.masters_seen = if claims.len() > 1 { claims } else { Vec::new() };
        self.current = all.into_iter().next().map(|(_, m)| m);
        self.current.clone()
    }

    fn register_msg(&self) -> ToMaster {
        let mut held: Vec<AttemptKey> = self.tasks.keys().cloned().collect();
        held.extend(self.outbox.held());
        held.sort();
        held.dedup();
        ToMaster::Register(Register {
            held,
            protocol_version: PROTOCOL_VERSION,
            node: self.args.node.clone(),
            advertise: self.args.advertise.clone(),
            capabilities: self.args.capabilities.clone(),
            devices: self.present_devices(),
            max_concurrency: self.args.max_concurrency,
            instance: self.instance,
            attempt: self.attempt,
            data: self.args.data.clone(),
        })
    }

    fn send(&self, master: &ActorRef<MasterMsg>, msg: ToMaster) {
        if let Err(e) = master.cast(MasterMsg::Worker(msg)) {
            warn!(node_id = %self.args.node, error = %e, "message to master failed");
        }
    }

    /// Drive registration and heartbeats toward the master currently visible.
    fn step(&mut self) {
        let Some(master) = self.current_master() else {
            if self.phase != Phase::NoMaster {
                warn!(node_id = %self.args.node, "master unreachable; waiting for it to come back");
                self.phase = Phase::NoMaster;
            }
            return;
        };
        let id = master.get_id();
        match self.phase.clone() {
            Phase::Registered { master: m, epoch } if m == id => {
                self.seq += 1;
                self.send(
                    &master,
                    ToMaster::Heartbeat(Heartbeat {
                        node: self.args.node.clone(),
                        epoch,
                        seq: self.seq,
                        queue_ratio: queue_ratio(
                            self.tasks.len(),
                            self.health.iter().filter(|h| h.present).count(),
                            self.args.max_concurrency,
                        ),
                        gpu_usage: self.gpu_usage(),
                        active_tasks: self.tasks.len() as u32,
                        last_frame: self.last_frame,
                        status: if self.leaving.is_some() {
                            WorkerStatus::Draining
                        } else if self.node_error.is_some() {
                            WorkerStatus::Error
                        } else {
                            WorkerStatus::Ok
                        },
                        error: self.node_error.clone(),
                    }),
                );
                if self.dev_acked < self.dev_version {
                    self.send_devices();
                }
            }
            // Not acknowledged yet: retransmit the same registration.
            Phase::Registering { master: m } if m == id => self.send(&master, self.register_msg()),
            Phase::Refused { master: m, .. } if m == id => {}
            _ => self.start_registration(&master),
        }
    }

    fn start_registration(&mut self, master: &ActorRef<MasterMsg>) {
        self.attempt += 1;
        self.phase = Phase::Registering {
            master: master.get_id(),
        };
        info!(node_id = %self.args.node, attempt = self.attempt, "registering with master");
        self.send(master, self.register_msg());
    }

    fn on_master(&mut self, msg: ToWorker) {
        match msg {
            ToWorker::Registered { epoch, master } => {
                if let Phase::Registering { master: id } = self.phase {
                    info!(node_id = %self.args.node, epoch, master = %master, devices = self.devices.len(), outbox = self.outbox.len(), "registered");
                    self.phase = Phase::Registered { master: id, epoch };
                    self.last_ack = Instant::now();
                    self.deliver_outbox();
                    // The registration named the devices present; the
                    // master hears which are offline now.
                    if self.dev_version > 0 {
                        self.dev_acked = 0;
                        self.send_devices();
                    }
                }
            }
            ToWorker::DevicesAck { version } => {
                self.dev_acked = self.dev_acked.max(version);
            }
            ToWorker::Ack { seqs } => {
                self.outbox.ack(&seqs);
                self.last_ack = Instant::now();
                self.resend_after = self.patience();
                // It answers again: what waited for it goes now, in order.
                if let Some(master) = self.registered_master() {
                    let epoch = self.epoch();
                    for msg in self.outbox.take_unsent(epoch) {
                        self.send(&master, msg);
                    }
                }
            }
            ToWorker::Refused { reason } => {
                if let Phase::Registering { master } = self.phase {
                    error!(node_id = %self.args.node, %reason, "master refused registration; waiting for another master");
                    self.phase = Phase::Refused { master, reason };
                }
            }
            ToWorker::Reregister { reason } => {
                if let Phase::Registered { .. } = self.phase {
                    warn!(node_id = %self.args.node, %reason, "master asked for a new registration");
                    if let Some(master) = self.current_master() {
                        self.start_registration(&master);
                    }
                }
            }
            ToWorker::Unregistered => {
                if let Some(port) = self.leaving.take() {
                    let _ = port.send(true);
                }
            }
            ToWorker::Assign(task) => self.assign(task),
            ToWorker::Drop {
                key,
                device,
                keep,
                reason,
            } => {
                // The master may not know the device (an attempt it sent just
                // before a crash): the one it was queued on is quarantined,
                // or, if it finished, the one its waiting result names.
                let mut on = self.by_id.get(&device).copied();
                if let Some((token, d, _)) = self.tasks.remove(&key) {
                    info!(node_id = %self.args.node, device_id = %self.args.devices[d].id, session = %key.session, task = key.task, attempt = key.attempt, %reason, "dropping attempt");
                    token.cancel();
                    on = on.or(Some(d));
                }
                on = on.or_else(|| {
                    let d = self.by_id.get(self.outbox.device_of(&key)?).copied()?;
                    info!(node_id = %self.args.node, device_id = %self.args.devices[d].id, session = %key.session, task = key.task, attempt = key.attempt, %reason, "quarantining a finished attempt");
                    Some(d)
                });
                if let Some(d) = on {
                    let _ = self.devices[d].cast(DeviceMsg::Quarantine(key, keep));
                }
            }
            ToWorker::RestartDevice { device } => {
                if let Some(&d) = self.by_id.get(&device) {
                    info!(node_id = %self.args.node, device_id = %device, "restarting device");
                    let _ = self.devices[d].cast(DeviceMsg::Restart);
                }
            }
        }
    }

    fn assign(&mut self, task: TaskSpec) {
        let key = task.key();
        debug!(target: "orch::ids", node_id = %self.args.node, device_id = %task.device, session = %key.session, task = key.task, attempt = key.attempt, id_lo = task.ids.lo, id_hi = task.ids.hi, "chunk received");
        if self.tasks.contains_key(&key) {
            // The same assignment twice (a resent message): it is queued already.
            return;
        }
        if let Some(&d) = self
            .by_id
            .get(&task.device)
            .filter(|&&d| !self.health[d].present)
        {
            // Gone since the master placed it: it goes elsewhere.
            let error = format!(
                "device offline: `{}` is gone (device source `{}` no longer lists it)",
                task.device,
                self.health[d].source.as_deref().unwrap_or("?")
            );
            self.report(ToMaster::Result(TaskResult {
                node: self.args.node.clone(),
                epoch: self.epoch(),
                key,
                device: task.device.clone(),
                started_ms: 0,
                finished_ms: 0,
                last_id_used: None,
                outputs: vec![],
                outcome: TaskOutcome::SkippedOffline { error },
                seq: 0,
                steps: Vec::new(),
            }));
            return;
        }
        let Some(&d) = self.by_id.get(&task.device) else {
            warn!(node_id = %self.args.node, device_id = %task.device, "assignment for an unknown device");
            self.report(ToMaster::Result(TaskResult {
                node: self.args.node.clone(),
                epoch: self.epoch(),
                key,
                device: task.device.clone(),
                started_ms: 0,
                finished_ms: 0,
                last_id_used: None,
                outputs: vec![],
                outcome: TaskOutcome::Failed {
                    frames_done: 0,
                    error: format!("no device `{}` on node `{}`", task.device, self.args.node),
                },
                seq: 0,
                steps: Vec::new(),
            }));
            return;
        };
        let token = CancellationToken::new();
        self.tasks.insert(key, (token.clone(), d, task.frames));
        let _ = self.devices[d].cast(DeviceMsg::Run(Box::new(task), token));
    }

    fn epoch(&self) -> u64 {
        match self.phase {
            Phase::Registered { epoch, .. } => epoch,
            _ => 0,
        }
    }

    /// The master this worker is registered with, if it is still the one visible.
    fn registered_master(&self) -> Option<ActorRef<MasterMsg>> {
        let Phase::Registered { master: id, .. } = &self.phase else {
            return None;
        };
        self.current.clone().filter(|m| m.get_id() == *id)
    }

    /// How long a report waits for its acknowledgement before the outbox
    /// is sent again (a message lost on a connection that broke).
    fn patience(&self) -> Duration {
        Duration::from_millis((self.args.heartbeat_ms * 5).max(5000))
    }

    /// Whether the master leaves reports unacknowledged (it is stopped,
    /// overloaded or cut off while its session looks alive): new reports
    /// then wait in the outbox until it acknowledges one, instead of
    /// filling a connection nobody reads (a full TCP window for longer
    /// than `TCP_USER_TIMEOUT` would close it).
    fn master_silent(&self) -> bool {
        let after = Duration::from_millis(self.args.heartbeat_ms.max(1000));
        self.last_ack.elapsed() > after && self.outbox.overdue(after)
    }

    /// Put a report in the outbox, and send it if a master listens.
    fn report(&mut self, msg: ToMaster) {
        let master = self.registered_master().filter(|_| !self.master_silent());
        let msg = self.outbox.push(msg, master.is_some());
        if let Some(master) = master {
            self.send(&master, msg);
        }
    }

    /// Send every unacknowledged report, in order.
    fn deliver_outbox(&mut self) {
        let Some(master) = self.registered_master() else {
            return;
        };
        let epoch = self.epoch();
        let all = self.outbox.take_all(epoch);
        if !all.is_empty() {
            info!(node_id = %self.args.node, reports = all.len(), "delivering the outbox");
        }
        for msg in all {
            self.send(&master, msg);
        }
    }

    /// After each message: make sure a `Flush` comes when the next outbox
    /// write is due. (Reports acknowledged before then never touch the disk.)
    fn settle(&mut self, myself: &ActorRef<WorkerMsg>) {
        let Some(at) = self.outbox.next_write() else {
            return;
        };
        if self.flush_at.is_some_and(|f| f <= at) {
            return;
        }
        let now = Instant::now();
        self.flush_at = Some(at);
        if at <= now {
            if myself.cast(WorkerMsg::Flush).is_err() {
                self.flush_at = None;
            }
        } else {
            myself.send_after(at - now, || WorkerMsg::Flush);
        }
    }

    /// Write what the outbox has due; everything when no master listens.
    fn flush(&mut self) {
        if self.flush_at.is_some_and(|f| f <= Instant::now()) {
            self.flush_at = None;
        }
        let all = self.registered_master().is_none();
        self.outbox.flush(all);
    }

    fn on_device(&mut self, ev: DeviceEvent) {
        let epoch = self.epoch();
        let node = self.args.node.clone();
        match ev {
            DeviceEvent::Progress {
                key,
                frames_done,
                last_id_used,
                outputs,
            } => {
                if let Some(&(_, _, frames)) = self.tasks.get(&key) {
                    if frames_done > 0 {
                        self.last_frame = Some(frames.start + frames_done - 1);
                    }
                    self.report(ToMaster::Progress(TaskProgress {
                        node,
                        epoch,
                        key,
                        frames_done,
                        last_id_used,
                        outputs,
                        seq: 0,
                    }));
                }
            }
            DeviceEvent::Finished {
                key,
                device,
                started_ms,
                finished_ms,
                last_id_used,
                outputs,
                outcome,
                steps,
            } => {
                if let Some((_, _, frames)) = self.tasks.remove(&key) {
                    if matches!(outcome, TaskOutcome::Completed) && !frames.is_empty() {
                        self.last_frame = Some(frames.end - 1);
                    }
                    if let TaskOutcome::Unresponsive { error, .. } = &outcome {
                        warn!(node_id = %node, device_id = %device, session = %key.session, task = key.task, attempt = key.attempt, error = %error, window_s = self.args.online_window.as_secs(), "device unresponsive: offline for `online_window_s`, then tried again");
                        self.refresh_online();
                    }
                    debug!(target: "orch::ids", node_id = %node, device_id = %device, session = %key.session, task = key.task, attempt = key.attempt, last_id_used, completed = matches!(outcome, TaskOutcome::Completed), "attempt finished");
                    self.report(ToMaster::Result(TaskResult {
                        node,
                        epoch,
                        key,
                        device,
                        started_ms,
                        finished_ms,
                        last_id_used,
                        outputs,
                        outcome,
                        seq: 0,
                        steps,
                    }));
                }
            }
        }
    }

    /// The devices present, as the master must know them.
    fn present_devices(&self) -> Vec<DeviceInfo> {
        self.args
            .devices
            .iter()
            .zip(&self.health)
            .filter(|(_, h)| h.present)
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// The mean utilisation of the devices whose source reports one.
    fn gpu_usage(&self) -> f32 {
        let known: Vec<f32> = self
            .health
            .iter()
            .filter(|h| h.present)
            .filter_map(|h| h.gpu_usage)
            .collect();
        if known.is_empty() {
            0.0
        } else {
            known.iter().sum::<f32>() / known.len() as f32
        }
    }

    /// Tell the master the devices as they are now (again until acknowledged).
    fn send_devices(&mut self) {
        let Some(master) = self.registered_master() else {
            return;
        };
        let offline = self
            .args
            .devices
            .iter()
            .zip(&self.health)
            .filter(|(_, h)| h.present)
            .filter_map(|(d, h)| Some((d.id.clone(), h.offline_now()?)))
            .collect();
        let report = DeviceReport {
            node: self.args.node.clone(),
            epoch: self.epoch(),
            version: self.dev_version,
            devices: self.present_devices(),
            offline,
        };
        self.send(&master, ToMaster::Devices(report));
    }

    /// Something the master must hear of changed in the devices.
    fn devices_changed(&mut self) {
        self.dev_version += 1;
        self.send_devices();
    }

    /// Work out which devices are offline now: unresponsive lately, listed
    /// as not ready, or not listed by their source for `online_window_s`.
    fn refresh_online(&mut self) {
        let now = Instant::now();
        let window = self.args.online_window;
        let mut changed = false;
        for (i, h) in self.health.iter_mut().enumerate() {
            let mut shared = h.offline.lock().unwrap_or_else(|p| p.into_inner());
            if shared
                .unresponsive
                .as_ref()
                .is_some_and(|(until, _)| *until <= now)
            {
                shared.unresponsive = None;
            }
            let why = if !h.present {
                None
            } else if let Some((_, why)) = &shared.unresponsive {
                Some(why.clone())
            } else if let Some(why) = &h.listed_offline {
                Some(why.clone())
            } else if h.source.is_some() && now.duration_since(h.listed_at) > window {
                Some(format!(
                    "device source `{}` has not listed it for {} s (`online_window_s` {})",
                    h.source.as_deref().unwrap_or("?"),
                    now.duration_since(h.listed_at).as_secs(),
                    window.as_secs()
                ))
            } else {
                None
            };
            // Only whether it is offline matters to the master; a new
            // reason for the same state is not a change.
            if shared.offline.is_some() != why.is_some() {
                let id = &self.args.devices[i].id;
                match &why {
                    Some(w) => {
                        warn!(node_id = %self.args.node, device_id = %id, reason = %w, "device offline")
                    }
                    None => {
                        info!(node_id = %self.args.node, device_id = %id, "device online again")
                    }
                }
                changed = true;
            }
            shared.offline = why;
        }
        if changed {
            self.devices_changed();
        }
    }

    /// One run of discovery source `source`: devices it lists join (or
    /// come back), those of it it no longer lists are gone: their attempts
    /// here stop, and the master requeues them (`device_gone`).
    async fn on_discovered(
        &mut self,
        myself: &ActorRef<WorkerMsg>,
        source: String,
        found: Result<Vec<Found>, String>,
    ) -> Result<(), ActorProcessingErr> {
        let list = match found {
            Err(e) => {
                metrics::counter!(m::DEVICE_SOURCE_ERRORS, "source" => source.clone()).increment(1);
                // Said once per new error, not at every run.
                if self.source_errors.get(&source) != Some(&e) {
                    warn!(node_id = %self.args.node, source = %source, error = %e, "device source failed; its devices stay as they are and go offline after `online_window_s` without a good run");
                    self.source_errors.insert(source, e);
                }
                self.refresh_online();
                return Ok(());
            }
            Ok(list) => list,
        };
        if self.source_errors.remove(&source).is_some() {
            info!(node_id = %self.args.node, source = %source, devices = list.len(), "device source works again");
        }
        let now = Instant::now();
        let mut changed = false;
        let mut listed = std::collections::HashSet::new();
        for f in list {
            let id = f.info.id.clone();
            match self.by_id.get(&id).copied() {
                Some(d) if self.health[d].source.as_deref() != Some(source.as_str()) => {
                    let owner = match &self.health[d].source {
                        Some(s) => format!("device source `{s}`"),
                        None => "the configuration".to_string(),
                    };
                    let e = format!("lists device `{id}`, which {owner} has already");
                    if self.source_errors.get(&source) != Some(&e) {
                        warn!(node_id = %self.args.node, source = %source, error = %e, "device source: a device skipped");
                        self.source_errors.insert(source.clone(), e);
                    }
                }
                Some(d) => {
                    listed.insert(d);
                    let h = &mut self.health[d];
                    h.listed_at = now;
                    h.listed_offline = f.offline;
                    h.gpu_usage = f.gpu_usage;
                    if !h.present {
                        h.present = true;
                        changed = true;
                        info!(node_id = %self.args.node, device_id = %id, source = %source, "device back");
                    }
                    if self.args.devices[d] != f.info {
                        self.args.devices[d] = f.info.clone();
                        let _ = self.devices[d].cast(DeviceMsg::Info(f.info));
                        changed = true;
                    }
                }
                None => {
                    let mut h = Health::new(Some(source.clone()), self.args.online_window);
                    h.listed_offline = f.offline;
                    h.gpu_usage = f.gpu_usage;
                    let dargs = DeviceArgs {
                        info: f.info.clone(),
                        node: self.args.node.clone(),
                        worker: myself.clone(),
                        slots: self.slots.clone(),
                        io: self.args.io.clone(),
                        offline: h.offline.clone(),
                    };
                    let (dev, _) =
                        Actor::spawn_linked(None, Device, dargs, myself.get_cell()).await?;
                    let d = self.devices.len();
                    self.devices.push(dev);
                    self.health.push(h);
                    self.args.devices.push(f.info);
                    self.by_id.insert(id.clone(), d);
                    listed.insert(d);
                    changed = true;
                    info!(node_id = %self.args.node, device_id = %id, source = %source, "device joined");
                }
            }
        }
        for d in 0..self.health.len() {
            let h = &mut self.health[d];
            if h.source.as_deref() != Some(source.as_str()) || !h.present || listed.contains(&d) {
                continue;
            }
            h.present = false;
            changed = true;
            let id = self.args.devices[d].id.clone();
            let mut stopped = 0;
            self.tasks.retain(|_, (token, on, _)| {
                if *on == d {
                    token.cancel();
                    stopped += 1;
                }
                *on != d
            });
            warn!(node_id = %self.args.node, device_id = %id, source = %source, attempts = stopped, "device gone: its attempts stop and are requeued (`device_gone`)");
        }
        if changed {
            self.devices_changed();
        }
        self.refresh_online();
        Ok(())
    }

    fn leave(&mut self, reply: RpcReplyPort<bool>) {
        let current = self.current_master();
        let registered = match (&self.phase, current) {
            (Phase::Registered { master: id, epoch }, Some(master)) if *id == master.get_id() => {
                self.send(
                    &master,
                    ToMaster::Unregister {
                        node: self.args.node.clone(),
                        epoch: *epoch,
                    },
                );
                true
            }
            _ => false,
        };
        if registered {
            self.leaving = Some(reply);
        } else {
            let _ = reply.send(false);
        }
    }
}

/// Attempts a worker holds over what the master may give it: a device
/// holds one running and `PREFETCH` queued, a node `max_concurrency` times
/// that (the lower of the two). 1.0 is full; it never exceeds 1 unless the
/// master gave more than that.
pub fn queue_ratio(tasks: usize, devices: usize, max_concurrency: u32) -> f32 {
    let per = 1 + crate::scheduler::PREFETCH as usize;
    let cap = (devices * per)
        .min(max_concurrency.max(1) as usize * per)
        .max(1);
    tasks as f32 / cap as f32
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_queue_ratio_is_one_when_every_slot_the_master_may_fill_is_full() {
        use super::queue_ratio;
        // 4 devices, all of them may run: 4 x 3 attempts.
        assert_eq!(queue_ratio(12, 4, 8), 1.0);
        assert_eq!(queue_ratio(6, 4, 8), 0.5);
        // 100 devices, 20 at once: 20 x 3.
        assert_eq!(queue_ratio(60, 100, 20), 1.0);
        assert_eq!(queue_ratio(0, 0, 0), 0.0);
    }

    use super::*;
    use crate::executor::NullIo;
    use crate::protocol::{CapValue, ExecutorSpec, LossReason};
    use tokio::sync::mpsc;

    /// The longest a test waits for what it expects before it fails.
    const WAIT: Duration = Duration::from_secs(5);

    fn device(id: &str) -> DeviceInfo {
        DeviceInfo {
            id: id.into(),
            handle: format!("test:{id}"),
            capabilities: Default::default(),
        }
    }

    fn task(task: u64, device: &str, frames: u64, executor: ExecutorSpec) -> TaskSpec {
        crate::test_support::task_spec("wt-session", task, device, frames, executor)
    }

    /// The next message the master gets that `pick` takes; the others are
    /// skipped. All within [`WAIT`].
    async fn next_of<T>(
        rx: &mut mpsc::UnboundedReceiver<ToMaster>,
        what: &str,
        mut pick: impl FnMut(ToMaster) -> Option<T>,
    ) -> T {
        let found = async {
            while let Some(m) = rx.recv().await {
                if let Some(t) = pick(m) {
                    return t;
                }
            }
            panic!("the probe stopped: waited for {what}")
        };
        tokio::time::timeout(WAIT, found)
            .await
            .unwrap_or_else(|_| panic!("nothing within {WAIT:?}: waited for {what}"))
    }

    async fn next_result(rx: &mut mpsc::UnboundedReceiver<ToMaster>, what: &str) -> TaskResult {
        next_of(rx, what, |m| match m {
            ToMaster::Result(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn registration(worker: &ActorRef<WorkerMsg>) -> Registration {
        ractor::call!(worker, WorkerMsg::Registration).expect("the worker answers")
    }

    fn tell(worker: &ActorRef<WorkerMsg>, msg: ToWorker) {
        worker
            .cast(WorkerMsg::Master(msg))
            .expect("the worker is alive");
    }

    /// The one test of this binary that makes a master visible: process
    /// groups are process-wide, and a worker works for the oldest master it
    /// sees, so a second test with its own probe master could take the
    /// other's messages when both run in one process (`cargo test`).
    #[tokio::test]
    async fn a_worker_registers_with_the_master_it_finds_and_reports_through_its_outbox() {
        let node = "wt-node";
        // Stands in for the master: what the Worker tells it.
        let (master, mut rx) = crate::test_support::probe(|m| match m {
            MasterMsg::Worker(m) => Some(m),
            _ => None,
        })
        .await;
        let claim = Claim {
            since_ms: 1,
            node: "wt-probe-master".into(),
        };
        masters::join(&claim, master.get_cell());
        let capabilities: Capabilities = [("gpu".to_string(), CapValue::Bool(true))].into();
        let devices = vec![device("d0"), device("d1")];
        let (worker, _) = Actor::spawn(
            None,
            Worker,
            WorkerArgs {
                data: None,
                node: node.into(),
                advertise: "127.0.0.1:7001".into(),
                capabilities: capabilities.clone(),
                devices: devices.clone(),
                max_concurrency: 2,
                // No heartbeat or retransmission during the test.
                heartbeat_ms: 60_000,
                io: Arc::new(NullIo),
                outbox: Outbox::open(None).expect("an outbox in memory"),
                online_window: Duration::from_secs(30),
            },
        )
        .await
        .expect("worker");

        // It registers at once with the master it sees, naming its devices.
        let first = next_of(&mut rx, "the registration", Some).await;
        let ToMaster::Register(reg) = first else {
            panic!("expected a registration first, got {first:?}");
        };
        let instance = reg.instance;
        assert_eq!(
            reg,
            Register {
                protocol_version: PROTOCOL_VERSION,
                node: node.into(),
                advertise: "127.0.0.1:7001".into(),
                capabilities,
                devices,
                max_concurrency: 2,
                instance,
                attempt: 1,
                held: vec![],
                data: None,
            }
        );
        assert_eq!(registration(&worker).await, Registration::Registering);
        tell(
            &worker,
            ToWorker::Registered {
                epoch: 7,
                master: claim.node.clone(),
            },
        );
        assert_eq!(
            registration(&worker).await,
            Registration::Registered { epoch: 7 }
        );

        // An assignment runs on its device; its result reaches the master
        // under the worker's epoch, with an outbox sequence number.
        let t1 = task(1, "d0", 4, ExecutorSpec::Noop);
        tell(&worker, ToWorker::Assign(t1.clone()));
        let r1 = next_result(&mut rx, "the result of task 1").await;
        assert_eq!(
            r1,
            TaskResult {
                node: node.into(),
                epoch: 7,
                key: t1.key(),
                device: "d0".into(),
                started_ms: r1.started_ms,
                finished_ms: r1.finished_ms,
                last_id_used: None,
                outputs: vec![],
                outcome: TaskOutcome::Completed,
                seq: r1.seq,
                steps: Vec::new(),
            }
        );
        assert!(r1.started_ms > 0 && r1.started_ms <= r1.finished_ms);
        assert!(r1.seq > 0, "the outbox numbers its reports");

        // A dropped attempt stops: the task queued behind it on its device
        // runs next, and its result is the next the master gets.
        let t2 = task(2, "d1", 1000, ExecutorSpec::Sleep { ms_per_frame: 100 });
        tell(&worker, ToWorker::Assign(t2.clone()));
        next_of(&mut rx, "progress of task 2", |m| match m {
            ToMaster::Progress(p) if p.key == t2.key() => Some(()),
            _ => None,
        })
        .await;
        tell(
            &worker,
            ToWorker::Drop {
                key: t2.key(),
                device: "d1".into(),
                keep: vec![],
                reason: LossReason::StaleAttempt,
            },
        );
        let t3 = task(3, "d1", 1, ExecutorSpec::Noop);
        tell(&worker, ToWorker::Assign(t3.clone()));
        let r3 = next_result(&mut rx, "the result of task 3, after task 2 was dropped").await;
        assert_eq!((r3.key, r3.outcome), (t3.key(), TaskOutcome::Completed));
        assert!(r3.seq > r1.seq, "reports are numbered in order");

        // An assignment for a device the worker does not have fails at once.
        let t4 = task(4, "d9", 1, ExecutorSpec::Noop);
        tell(&worker, ToWorker::Assign(t4.clone()));
        let r4 = next_result(&mut rx, "the refusal of task 4").await;
        assert_eq!(
            (r4.epoch, r4.key, r4.device, r4.outcome),
            (
                7,
                t4.key(),
                "d9".into(),
                TaskOutcome::Failed {
                    frames_done: 0,
                    error: "no device `d9` on node `wt-node`".into(),
                }
            )
        );

        // The outbox keeps every result until the master acknowledges it: a
        // new registration names those still held, not the acknowledged one.
        tell(&worker, ToWorker::Ack { seqs: vec![r1.seq] });
        tell(
            &worker,
            ToWorker::Reregister {
                reason: "test".into(),
            },
        );
        let again = next_of(&mut rx, "the new registration", |m| match m {
            ToMaster::Register(r) => Some(r),
            _ => None,
        })
        .await;
        assert_eq!(
            (again.instance, again.attempt, again.held),
            (instance, 2, vec![t3.key(), t4.key()])
        );

        worker.stop(None);
        masters::leave(&claim, master.get_cell());
        master.stop(None);
    }
}
