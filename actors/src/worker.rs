//! The Worker actor: owns this node's Device actors, registers with the master
//! (found through the `orch.master` process group), heartbeats, and leaves
//! cleanly on shutdown (SPEC §5). The master reaches it through the
//! `orch.worker.{node}` process group.

use std::time::Duration;

use ractor::pg::GroupChangeMessage;
use ractor::{pg, Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use crate::device::{Device, DeviceMsg};
use crate::master::MasterMsg;
use crate::metrics as m;
use crate::protocol::{
    worker_group, Capabilities, DeviceInfo, Heartbeat, Register, ToMaster, ToWorker, WorkerStatus,
    MASTER_GROUP, PROTOCOL_VERSION,
};

/// A worker node's agent.
pub struct Worker;

/// Arguments of [`Worker`].
pub struct WorkerArgs {
    pub node: String,
    pub advertise: String,
    pub capabilities: Capabilities,
    pub devices: Vec<DeviceInfo>,
    pub max_concurrency: u32,
    pub heartbeat_ms: u64,
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
    leaving: Option<RpcReplyPort<bool>>,
}

impl WorkerState {
    fn current_master(&self) -> Option<ActorRef<MasterMsg>> {
        let mut members = pg::get_members(&MASTER_GROUP.to_string());
        if members.len() > 1 {
            warn!(node_id = %self.args.node, masters = members.len(), "more than one master visible; using the local one or the first");
        }
        members.sort_by_key(|c| (!c.get_id().is_local(), c.get_id().pid()));
        members.into_iter().next().map(ActorRef::from)
    }

    fn register_msg(&self) -> ToMaster {
        ToMaster::Register(Register {
            protocol_version: PROTOCOL_VERSION,
            node: self.args.node.clone(),
            advertise: self.args.advertise.clone(),
            capabilities: self.args.capabilities.clone(),
            devices: self.args.devices.clone(),
            max_concurrency: self.args.max_concurrency,
            instance: self.instance,
            attempt: self.attempt,
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
                        queue_ratio: 0.0,
                        gpu_usage: 0.0,
                        active_tasks: 0,
                        last_frame: None,
                        status: if self.leaving.is_some() {
                            WorkerStatus::Draining
                        } else {
                            WorkerStatus::Ok
                        },
                        error: None,
                    }),
                );
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
                    info!(node_id = %self.args.node, epoch, master = %master, devices = self.devices.len(), "registered");
                    self.phase = Phase::Registered { master: id, epoch };
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
        }
    }

    fn leave(&mut self, reply: RpcReplyPort<bool>) {
        let registered = match (&self.phase, self.current_master()) {
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
    /// Local: the devices of this worker, in configuration order.
    Devices(RpcReplyPort<Vec<ActorRef<DeviceMsg>>>),
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
        let mut devices = Vec::with_capacity(args.devices.len());
        for info in &args.devices {
            let (dev, _) =
                Actor::spawn_linked(None, Device, info.clone(), myself.get_cell()).await?;
            devices.push(dev);
        }
        pg::join(worker_group(&args.node), vec![myself.get_cell()]);
        pg::monitor(MASTER_GROUP.to_string(), myself.get_cell());
        myself.send_interval(Duration::from_millis(args.heartbeat_ms), || WorkerMsg::Tick);
        info!(node_id = %args.node, devices = devices.len(), "worker started");
        let mut state = WorkerState {
            args,
            phase: Phase::NoMaster,
            instance: rand::random(),
            attempt: 0,
            seq: 0,
            devices,
            leaving: None,
        };
        state.step();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Master(m) => state.on_master(m),
            WorkerMsg::Malformed(what) => {
                metrics::counter!(m::WIRE_DECODE_ERRORS).increment(1);
                warn!(node_id = %state.args.node, error = %what, "dropped an undecodable message");
            }
            WorkerMsg::Tick => state.step(),
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
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ProcessGroupChanged(change) if change.get_group() == MASTER_GROUP => {
                if let GroupChangeMessage::Leave(..) = change {
                    info!(node_id = %state.args.node, "master left the cluster view");
                }
                state.step();
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                return Err(format!("device actor {} failed: {err}", cell.get_id()).into());
            }
            _ => {}
        }
        Ok(())
    }
}
