//! The Master actor: worker membership and failure detection (SPEC §5).
//! Workers (local or remote) send it [`ToMaster`] messages; admin endpoints on
//! any node ask it [`AdminRequest`]s. It joins the `orch.master` process group.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{pg, Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{debug, info, warn};

use crate::membership::{DetectorConfig, MemberCommand, MemberEvent, Membership};
use crate::metrics as m;
use crate::protocol::{
    worker_group, AdminReply, AdminRequest, MemberState, ToMaster, ToWorker, MASTER_GROUP,
};
use crate::worker::WorkerMsg;

/// The master of the cluster; exactly one is active.
pub struct Master;

/// Arguments of [`Master`].
pub struct MasterArgs {
    /// This node's name.
    pub node: String,
    pub detector: DetectorConfig,
}

/// State of [`Master`].
pub struct MasterState {
    node: String,
    started: Instant,
    membership: Membership,
    /// Monitored worker stand-ins -> (node, epoch) they were registered under.
    watched: HashMap<ActorId, (String, u64)>,
}

impl MasterState {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn feed(&mut self, myself: &ActorRef<MasterMsg>, ev: MemberEvent) {
        let now = self.now_ms();
        for cmd in self.membership.on_event(ev, now) {
            self.execute(myself, cmd);
        }
    }

    fn execute(&mut self, myself: &ActorRef<MasterMsg>, cmd: MemberCommand) {
        match cmd {
            MemberCommand::Send { node, mut msg } => {
                match &mut msg {
                    ToWorker::Registered { master, .. } => master.clone_from(&self.node),
                    ToWorker::Refused { reason } => {
                        metrics::counter!(m::REGISTRATIONS_REFUSED).increment(1);
                        warn!(node_id = %self.node, worker = %node, %reason, "registration refused");
                    }
                    _ => {}
                }
                let members = pg::get_members(&worker_group(&node));
                if members.is_empty() {
                    debug!(node_id = %self.node, worker = %node, "no route to worker, reply dropped");
                }
                for cell in members {
                    let worker: ActorRef<WorkerMsg> = cell.into();
                    if let Err(e) = worker.cast(WorkerMsg::Master(msg.clone())) {
                        debug!(node_id = %self.node, worker = %node, error = %e, "reply to worker failed");
                    }
                }
            }
            MemberCommand::Watch { node, epoch } => {
                self.watched.retain(|_, (n, _)| *n != node);
                for cell in pg::get_members(&worker_group(&node)) {
                    myself.monitor(cell.clone());
                    self.watched.insert(cell.get_id(), (node.clone(), epoch));
                }
            }
            MemberCommand::Up { node, epoch } => {
                info!(node_id = %self.node, worker = %node, epoch, "worker registered");
            }
            MemberCommand::Down {
                node,
                epoch,
                reason,
            } => {
                if reason.is_failure() {
                    metrics::counter!(m::WORKER_FAILURES, "reason" => reason.as_str()).increment(1);
                    warn!(node_id = %self.node, worker = %node, epoch, reason = reason.as_str(), "worker unhealthy");
                } else {
                    info!(node_id = %self.node, worker = %node, epoch, "worker unregistered");
                }
            }
        }
    }

    fn publish_gauges(&self) {
        let now = self.now_ms();
        for state in MemberState::ALL {
            metrics::gauge!(m::CLUSTER_WORKERS, "state" => state.as_str())
                .set(self.membership.count(state) as f64);
        }
        for (node, age) in self.membership.heartbeat_ages(now) {
            metrics::gauge!(m::HEARTBEAT_AGE, "node" => node.to_string()).set(age as f64 / 1000.0);
        }
    }

    fn answer(&self, req: AdminRequest) -> AdminReply {
        let now = self.now_ms();
        match req {
            AdminRequest::Status => AdminReply::Status(self.membership.status(&self.node, now)),
            AdminRequest::Workers => AdminReply::Workers(self.membership.views(now)),
        }
    }
}

/// Messages of [`Master`].
pub enum MasterMsg {
    /// A message from a worker (remote or local).
    Worker(ToMaster),
    /// An admin query, forwarded from any node's admin endpoint.
    Admin(AdminRequest, RpcReplyPort<AdminReply>),
    /// Bytes from the network that did not decode; counted and logged.
    Malformed(String),
    /// Local: check heartbeat deadlines and refresh gauges.
    Tick,
}

impl Actor for Master {
    type Msg = MasterMsg;
    type State = MasterState;
    type Arguments = MasterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MasterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let epoch_floor = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        pg::join(MASTER_GROUP.to_string(), vec![myself.get_cell()]);
        let tick = Duration::from_millis((args.detector.heartbeat_ms / 4).max(10));
        myself.send_interval(tick, || MasterMsg::Tick);
        info!(node_id = %args.node, "master started");
        Ok(MasterState {
            node: args.node,
            started: Instant::now(),
            membership: Membership::new(args.detector, epoch_floor),
            watched: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MasterMsg::Worker(ToMaster::Register(reg)) => {
                // Only accept a worker we can answer and watch.
                if pg::get_members(&worker_group(&reg.node)).is_empty() {
                    debug!(node_id = %state.node, worker = %reg.node, "worker not visible yet, it will retry");
                } else {
                    state.feed(&myself, MemberEvent::Register(reg));
                }
            }
            MasterMsg::Worker(ToMaster::Heartbeat(hb)) => {
                state.feed(&myself, MemberEvent::Heartbeat(hb))
            }
            MasterMsg::Worker(ToMaster::Unregister { node, epoch }) => {
                state.feed(&myself, MemberEvent::Unregister { node, epoch })
            }
            MasterMsg::Admin(req, reply) => {
                let _ = reply.send(state.answer(req));
            }
            MasterMsg::Malformed(what) => {
                metrics::counter!(m::WIRE_DECODE_ERRORS).increment(1);
                warn!(node_id = %state.node, error = %what, "dropped an undecodable message");
            }
            MasterMsg::Tick => {
                state.feed(&myself, MemberEvent::Tick);
                state.publish_gauges();
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _)
            | SupervisionEvent::ActorFailed(cell, _) => {
                if let Some((node, epoch)) = state.watched.remove(&cell.get_id()) {
                    state.feed(&myself, MemberEvent::NodeDown { node, epoch });
                }
            }
            SupervisionEvent::ActorStarted(_) => {}
            other => debug!(node_id = %state.node, event = ?other, "supervision event ignored"),
        }
        Ok(())
    }
}
