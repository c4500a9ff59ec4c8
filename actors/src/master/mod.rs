//! The Master actor: worker membership and failure detection (docs/design/architecture.md), and
//! the sessions' ledger and placement (docs/design/architecture.md). Workers (local or remote)
//! send it [`ToMaster`] messages; admin endpoints on any node ask it
//! [`AdminRequest`]s. It joins the `orch.master` process group.
//!
//! Every ledger event goes to the [`Journal`] first; what the master decides
//! (acknowledgements, answers to submissions, registrations, drops) waits in
//! `outgoing` until the batch holding its cause is committed. The first
//! event of a batch queues a `Commit` message to the master itself; when it
//! comes up, every message queued before it has added its events, and the
//! master writes them all in one transaction on its own thread, then sends
//! what waited (group commit). Which message may leave before its commit,
//! and when a batch is written, is the [`CommitGate`]'s to say. A store
//! that cannot be written stops the master; a restart resumes from the
//! store.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{pg, Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{debug, info, warn};

use crate::commit_gate::{Batch, CommitGate, Release, Write};
use crate::executor::NodeIo;
use crate::journal::{Journal, Recovered};
use crate::masters::{self, Claim};
use crate::membership::{DetectorConfig, MemberCommand, MemberEvent, Membership};
use crate::metrics as m;
use crate::protocol::{
    worker_group, AdminReply, AdminRequest, ClusterStatus, DeviceState, DeviceView, DownReason,
    FailoverRecord, LossReason, MemberState, SessionState, SessionView, ToMaster, ToWorker,
};
use crate::read_model::{Published, ReadModel};
use crate::scheduler::{SchedCommand, SchedEvent, Scheduler};
use crate::worker::WorkerMsg;

mod admin;
mod commit;
mod gauges;
mod ledger;
mod sessions;

use admin::*;
use sessions::SessionActor;

/// Most tasks one message places: a submission of a million tasks to a
/// large fleet is placed in slices, and heartbeats, results and admin
/// requests are handled between two. Only `Place` places
/// ([`SchedEvent::PlaceInPasses`]) and at most one is in the mailbox, so
/// what a message waits behind is at most one slice and the results it
/// brings back: 250 placements and 250 results are 2-3 ms on 2 cores
/// (1,000 made the wait 10 ms at the median and over 20 ms at times, 500
/// about 5 ms; see BENCHMARKS.md).
pub const PLACE_BUDGET: u32 = 250;

/// Messages of [`Master`].
pub enum MasterMsg {
    /// A message from a worker (remote or local).
    Worker(ToMaster),
    /// An admin query from this node's admin endpoint.
    Admin(AdminRequest, RpcReplyPort<AdminReply>),
    /// An admin query forwarded by another node: its answer must fit one cluster frame.
    RemoteAdmin(AdminRequest, RpcReplyPort<AdminReply>),
    /// Bytes from the network that did not decode; counted and logged.
    Malformed(String),
    /// Local: check heartbeat deadlines, wake retries, refresh gauges;
    /// `sent_ms`: when its timer queued it (the master's clock).
    Tick { sent_ms: u64 },
    /// Local: write the events recorded so far to the store, then send the
    /// decisions and acknowledgements that waited for them. Only the one
    /// with the latest generation counts.
    Commit(u64),
    /// Local: place what the last event left for lack of budget (sent to
    /// itself, behind what waits in the mailbox: see [`PLACE_BUDGET`]).
    Place,
    /// Local: the ranges task `task` of `session` produced, read from its
    /// manifest on disk for a requeue (its ledger left memory).
    RequeueRead {
        session: String,
        task: u64,
        produced: Result<Vec<crate::scheduler::ProducedRange>, String>,
        reply: RpcReplyPort<AdminReply>,
    },
    /// Local: a Session actor wrote the manifest of `session` (`amend`: an
    /// amendment of it on disk; `ok`: it is on disk).
    ManifestWritten {
        session: String,
        amend: bool,
        ok: bool,
    },
}

impl MasterMsg {
    /// What the message is (the `kind` label of slow messages: bounded).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Worker(ToMaster::Register(_)) => "register",
            Self::Worker(ToMaster::Heartbeat(_)) => "heartbeat",
            Self::Worker(ToMaster::Unregister { .. }) => "unregister",
            Self::Worker(ToMaster::Progress(_)) => "progress",
            Self::Worker(ToMaster::Result(_)) => "result",
            Self::Worker(ToMaster::OlderMaster { .. }) => "older_master",
            Self::Worker(ToMaster::Devices(_)) => "devices",
            Self::Admin(..) | Self::RemoteAdmin(..) => "admin",
            Self::Malformed(_) => "malformed",
            Self::Tick { .. } => "tick",
            Self::Commit(_) => "commit",
            Self::Place => "place",
            Self::RequeueRead { .. } => "requeue_read",
            Self::ManifestWritten { .. } => "manifest_written",
        }
    }
}

/// The master of the cluster; exactly one is active.
pub struct Master;

/// Arguments of [`Master`].
pub struct MasterArgs {
    /// This node's name.
    pub node: String,
    pub detector: DetectorConfig,
    /// An attempt silent this long past its timeouts is declared lost.
    pub grace_wait_ms: u64,
    pub io: Arc<dyn NodeIo>,
    /// Where the ledger is recorded (`None`: memory only, lost on restart).
    pub store: Option<Box<dyn crate::store::EventLog>>,
    /// The ledger replayed from `store`.
    pub recovered: Option<Recovered>,
    /// Sync every commit to disk (survive power loss), not only ID reservations.
    pub sync_always: bool,
    /// After a restart, how long known workers have to register again before
    /// their attempts are requeued.
    pub resume_within_ms: u64,
    /// The node's cluster link, if it has one.
    pub cluster: Option<Arc<dyn ClusterControl>>,
    /// What the master publishes for this node's admin API.
    pub read_model: Arc<ReadModel>,
}

/// What the master asks of its node's cluster link.
pub trait ClusterControl: Send + Sync + 'static {
    /// Close every cluster session with `node`: the master declared it dead
    /// by silence, and a link that died without a word is noticed on the
    /// other end only when something closes it.
    fn disconnect(&self, node: &str);
}

/// Something the master does once the events behind it are committed.
enum Outgoing {
    Send(String, ToWorker),
    Reply(RpcReplyPort<AdminReply>, AdminReply),
    Manifest(String),
    /// Add a `replay` record to an evicted session's manifest on disk.
    AmendOnDisk(String, crate::protocol::ReplayRecord),
    /// An event for the bus: published once its cause is committed.
    Publish(crate::events::Event),
}

/// State of [`Master`].
pub struct MasterState {
    node: String,
    myself: Option<ActorRef<MasterMsg>>,
    read_model: Arc<ReadModel>,
    /// The Session actors, by session.
    session_actors: HashMap<String, SessionActor>,
    session_of: HashMap<ActorId, String>,
    /// The version of the last session view taken.
    view_version: u64,
    /// A [`MasterMsg::Place`] is in the mailbox.
    place_queued: bool,
    /// A worker joined, left or changed whether it takes work since the
    /// read model was last published.
    members_changed: bool,
    started: Instant,
    /// Unix milliseconds at `started`.
    started_unix_ms: u64,
    membership: Membership,
    sched: Scheduler,
    io: Arc<dyn NodeIo>,
    /// Monitored worker stand-ins -> (node, epoch) they were registered under.
    watched: HashMap<ActorId, (String, u64)>,
    /// Worker actors by node, refreshed on registration.
    routes: HashMap<String, Vec<ActorRef<WorkerMsg>>>,
    frames_reported: u64,
    journal: Journal,
    /// Decisions waiting for the commit of their cause.
    outgoing: Vec<Outgoing>,
    /// Outbox entries to acknowledge once committed, per worker.
    acks: HashMap<String, Vec<u64>>,
    /// A `Commit` is in the mailbox.
    commit_queued: bool,
    /// Milliseconds between two ticks.
    tick_ms: u64,
    /// When the gauges and the read model were last refreshed by a tick.
    published_at_ms: u64,
    /// Messages handled since the `Commit` was (re)queued.
    handled_since_commit_queued: u32,
    /// When the first event of the batch being filled was recorded.
    batch_since: Option<Instant>,
    /// The queued `Commit` is a timer's (nothing waited for the batch).
    commit_timed: bool,
    /// Only the last `Commit` queued counts.
    commit_generation: u64,
    /// Which decisions wait for the commit of their cause.
    gate: CommitGate,
    /// What this master serves under (see [`crate::masters`]).
    claim: Claim,
    cluster: Option<Arc<dyn ClusterControl>>,
    /// Younger masters already warned about.
    warned_of: HashSet<String>,
    /// The last device report recorded of each node: (epoch, version).
    device_versions: HashMap<String, (u64, u64)>,
    /// Messages that held the master long ([`gauges::SlowMessages`]).
    slow: gauges::SlowMessages,
}

/// The one line a node with role `master` gives when another serves.
pub fn second_master(node: &str, other: &Claim) -> String {
    format!(
        "node `{node}` has role `master`, but node `{}` already serves this cluster as its master (since unix ms {}); refusing to be a second master: remove `master` from `node.roles` of `{node}`, or stop `{}` first",
        other.node, other.since_ms, other.node
    )
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
        // Scraped from the start, before the first event.
        metrics::counter!(m::EVENTS_PUBLISHED).increment(0);
        MasterState::start(&myself, args).await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let started = Instant::now();
        let kind = msg.kind();
        let done = state.handle(&myself, msg);
        state.slow.note(&state.node, kind, started.elapsed());
        done
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Commit the last batch and close the store cleanly.
        let _ = state.commit_journal();
        state.journal.close();
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
                if state.on_session_actor_down(&cell.get_id(), false) => {}
            SupervisionEvent::ActorFailed(cell, _)
                if state.on_session_actor_down(&cell.get_id(), true) =>
            {
                state.settle(&myself);
            }
            SupervisionEvent::ActorTerminated(cell, _, _)
            | SupervisionEvent::ActorFailed(cell, _) => {
                if let Some((node, epoch)) = state.watched.remove(&cell.get_id()) {
                    state.feed(&myself, MemberEvent::NodeDown { node, epoch });
                    state.after_message(&myself);
                }
            }
            other => debug!(node_id = %state.node, event = ?other, "supervision event ignored"),
        }
        Ok(())
    }
}

impl MasterState {
    /// One message; what follows every message ([`MasterState::after_message`]).
    fn handle(
        &mut self,
        myself: &ActorRef<MasterMsg>,
        msg: MasterMsg,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MasterMsg::Worker(m) => self.on_worker(myself, m)?,
            MasterMsg::Admin(req, reply) => self.on_admin(req, reply, false),
            MasterMsg::RemoteAdmin(req, reply) => self.on_admin(req, reply, true),
            MasterMsg::Malformed(what) => self.on_malformed(&what),
            MasterMsg::Tick { sent_ms } => self.on_tick(myself, sent_ms)?,
            MasterMsg::Commit(generation) => return self.commit(myself, generation),
            MasterMsg::Place => {
                self.place_queued = false;
                self.schedule(SchedEvent::Place);
            }
            MasterMsg::ManifestWritten { session, amend, ok } => {
                self.on_manifest_written(&session, amend, ok)
            }
            MasterMsg::RequeueRead {
                session,
                task,
                produced,
                reply,
            } => {
                let answer = match produced {
                    Ok(produced) => self.requeue(session, task, produced),
                    Err(e) => AdminReply::Error(e),
                };
                self.reply(reply, answer);
            }
        }
        self.handled_since_commit_queued += 1;
        self.after_message(myself);
        Ok(())
    }

    /// What follows every message: placement left for lack of budget is
    /// queued, the read model learns of workers that came or went (a worker
    /// declared down shows at once, not at the next tick), and what waited
    /// for the commit is settled.
    fn after_message(&mut self, myself: &ActorRef<MasterMsg>) {
        if self.sched.wants_to_place() && !self.place_queued {
            self.place_queued = true;
            let _ = myself.cast(MasterMsg::Place);
        }
        if std::mem::take(&mut self.members_changed) {
            self.publish_members();
        }
        self.settle(myself);
    }

    /// The master's state at start: the ledger replayed from the store (if
    /// any), IDs reserved and the resume recorded before anyone is served.
    async fn start(
        myself: &ActorRef<MasterMsg>,
        args: MasterArgs,
    ) -> Result<Self, ActorProcessingErr> {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (sched, meta, last_at, finished, amended, on_disk, replayed) = match args.recovered {
            Some(r) => (
                r.sched,
                r.meta,
                r.last_at_ms,
                r.finished,
                r.amended,
                r.on_disk,
                r.events,
            ),
            None => (
                Scheduler::new(0).with_grace(args.grace_wait_ms),
                Default::default(),
                0,
                Vec::new(),
                Vec::new(),
                Vec::new(),
                0,
            ),
        };
        // The ledger's clock never runs backwards across a restart.
        let started_unix_ms = wall.max(last_at + 1);
        let journal = Journal::new(args.store, meta, args.sync_always);
        let durable = journal.durable();
        let mut state = MasterState {
            node: args.node.clone(),
            myself: Some(myself.clone()),
            read_model: args.read_model,
            session_actors: HashMap::new(),
            session_of: HashMap::new(),
            view_version: 0,
            members_changed: false,
            place_queued: false,
            started: Instant::now(),
            started_unix_ms,
            // Epochs grow across restarts: fencing holds for workers of the old master.
            membership: Membership::new(args.detector, started_unix_ms.max(meta.last_epoch + 1)),
            sched: sched.with_grace(args.grace_wait_ms),
            io: args.io,
            watched: HashMap::new(),
            routes: HashMap::new(),
            frames_reported: 0,
            journal,
            outgoing: Vec::new(),
            acks: HashMap::new(),
            commit_queued: false,
            tick_ms: args.detector.tick_ms(),
            published_at_ms: 0,
            handled_since_commit_queued: 0,
            batch_since: None,
            commit_timed: false,
            commit_generation: 0,
            gate: CommitGate::new(args.node.clone(), durable),
            claim: Claim {
                since_ms: wall,
                node: args.node.clone(),
            },
            warned_of: HashSet::new(),
            device_versions: HashMap::new(),
            cluster: args.cluster,
            slow: gauges::SlowMessages::default(),
        };
        // Events from here on place in slices; the record makes a replay
        // place exactly as this run does (older events placed all at once).
        state.schedule(SchedEvent::PlaceBudget { max: PLACE_BUDGET });
        // And only `Place` places, once a pass through the mailbox: what a
        // flood of results frees is placed in one slice behind them, so the
        // answers to it never pile up in front of a heartbeat.
        state.schedule(SchedEvent::PlaceInPasses);
        if replayed > 0 {
            let running = state
                .sched
                .views(started_unix_ms)
                .iter()
                .filter(|v| !v.state.is_final())
                .count();
            info!(node_id = %state.node, events = replayed, sessions_running = running, id_reserved = meta.id_reserved, "ledger replayed from the store; waiting for workers to register again");
            state.schedule(SchedEvent::Resume {
                id_floor: meta.id_reserved,
                within_ms: args.resume_within_ms,
            });
            // A crash between a session's end and its manifest: write it now.
            for session in finished {
                if !state.io.manifest_exists(&session) && !amended.contains(&session) {
                    state.outgoing.push(Outgoing::Manifest(session));
                }
            }
            // Or between an amendment and the manifest written again.
            for session in amended {
                state.outgoing.push(Outgoing::Manifest(session));
            }
            for (session, record) in on_disk {
                state.outgoing.push(Outgoing::AmendOnDisk(session, record));
            }
        }
        // Reserve IDs (a synced write) and record the resume before serving anyone.
        state
            .commit_journal()
            .map_err(|e| format!("cannot write the master's store: {e}"))?;
        state.settle(myself);
        state.frames_reported = state
            .sched
            .views(started_unix_ms)
            .iter()
            .fold(0u64, |acc, v| acc.saturating_add(v.frames_done));
        // Every session the ledger holds, finished ones included, is readable at once.
        for id in state.sched.session_ids_in_order() {
            state.publish_session_now(&id);
        }
        state.publish_read_model(true);
        masters::join(&state.claim, myself.get_cell());
        let tick = Duration::from_millis(args.detector.tick_ms());
        let started = state.started;
        myself.send_interval(tick, move || MasterMsg::Tick {
            sent_ms: started.elapsed().as_millis() as u64,
        });
        info!(node_id = %state.node, durable, "master started");
        Ok(state)
    }

    fn on_worker(
        &mut self,
        myself: &ActorRef<MasterMsg>,
        msg: ToMaster,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ToMaster::Register(reg) => {
                // Only accept a worker we can answer and watch.
                let members = pg::get_members(&worker_group(&reg.node));
                if members.is_empty() {
                    debug!(node_id = %self.node, worker = %reg.node, "worker not visible yet, it will retry");
                } else if let Some(other) = members
                    .iter()
                    .find(|m| !crate::identity::may_be(m, &reg.node))
                {
                    // With mutual TLS: only the node the certificate names.
                    let cert = crate::identity::of(other).map(|i| i.name);
                    metrics::counter!(crate::metrics::REGISTRATIONS_REFUSED).increment(1);
                    tracing::warn!(node_id = %self.node, worker = %reg.node, certificate = ?cert, "registration refused: a node whose certificate does not name `{}` acts as it", reg.node);
                } else {
                    self.feed(myself, MemberEvent::Register(reg));
                }
            }
            ToMaster::OlderMaster { older } => {
                if older < self.claim && older.node != self.node {
                    masters::leave(&self.claim, myself.get_cell());
                    let msg = second_master(&self.node, &older);
                    tracing::error!(node_id = %self.node, other = %older.node, "{msg} (a worker sees both)");
                    return Err(msg.into());
                }
            }
            ToMaster::Heartbeat(hb) => self.feed(myself, MemberEvent::Heartbeat(hb)),
            ToMaster::Devices(rep) => self.on_devices(rep),
            ToMaster::Unregister { node, epoch } => {
                self.feed(myself, MemberEvent::Unregister { node, epoch })
            }
            ToMaster::Progress(p) => {
                if p.seq > 0 {
                    self.acks.entry(p.node.clone()).or_default().push(p.seq);
                }
                self.schedule(SchedEvent::Progress(p))
            }
            ToMaster::Result(r) => {
                if r.seq > 0 {
                    self.acks.entry(r.node.clone()).or_default().push(r.seq);
                }
                metrics::histogram!(m::TASK_DURATION)
                    .record(r.finished_ms.saturating_sub(r.started_ms) as f64 / 1000.0);
                if matches!(r.outcome, crate::protocol::TaskOutcome::Completed) {
                    metrics::counter!(m::TASKS_COMPLETED).increment(1);
                } else if matches!(
                    r.outcome,
                    crate::protocol::TaskOutcome::SkippedOffline { .. }
                ) {
                    metrics::counter!(m::TASKS_SKIPPED_OFFLINE).increment(1);
                } else {
                    metrics::counter!(m::TASKS_FAILED).increment(1);
                }
                self.schedule(SchedEvent::Result(r))
            }
        }
        Ok(())
    }

    /// A worker's devices changed: recorded once per version (a worker
    /// sends it again until acknowledged), for the epoch it is registered under.
    fn on_devices(&mut self, rep: crate::protocol::DeviceReport) {
        let crate::protocol::DeviceReport {
            node,
            epoch,
            version,
            devices,
            offline,
        } = rep;
        if self.device_versions.get(&node) == Some(&(epoch, version)) {
            self.send_to(&node, ToWorker::DevicesAck { version });
            return;
        }
        if !self.membership.set_devices(&node, epoch, devices.clone()) {
            debug!(node_id = %self.node, worker = %node, epoch, "a device report of an epoch not current: ignored");
            return;
        }
        info!(node_id = %self.node, worker = %node, devices = devices.len(), offline = offline.len(), version, "the worker's devices changed");
        self.device_versions.insert(node.clone(), (epoch, version));
        self.members_changed = true;
        self.schedule(SchedEvent::Devices {
            node: node.clone(),
            epoch,
            devices,
            offline,
        });
        self.send_to(&node, ToWorker::DevicesAck { version });
    }

    /// An admin request; `remote`: forwarded by another node, so its answer
    /// must fit one cluster frame. An answer to a request that changed the
    /// ledger waits for the commit.
    fn on_admin(&mut self, req: AdminRequest, reply: RpcReplyPort<AdminReply>, remote: bool) {
        match &req {
            AdminRequest::Manifest(id) if self.sched.is_evicted(id) => {
                return self.manifest_from_disk(id.clone(), reply, remote, None);
            }
            // Built off the master's thread from a snapshot that shares the
            // ledger's ranges: a million of them cost no pause here.
            AdminRequest::Manifest(id) if !remote || self.sched.merges_with_disk(id).is_some() => {
                if let Some(snap) = self.sched.manifest_snapshot(id) {
                    return self.manifest_from_disk(id.clone(), reply, remote, Some(snap));
                }
            }
            AdminRequest::Requeue { session, task }
                if self.sched.requeue_check(session, *task)
                    == Ok(crate::scheduler::RequeueNeeds::Disk) =>
            {
                return self.produced_from_disk(session.clone(), *task, reply);
            }
            _ => {}
        }
        let mutates = mutates(&req);
        let answer = match self.answer(req) {
            AdminReply::Manifest(m) if remote && m.ranges.len() > MAX_FORWARDED_RANGES => {
                AdminReply::Error(too_many_to_forward(&m.session, m.ranges.len(), &self.node))
            }
            other => other,
        };
        if mutates || remote {
            self.reply(reply, answer);
        } else {
            let _ = reply.send(answer);
        }
    }

    fn on_malformed(&mut self, what: &str) {
        metrics::counter!(m::WIRE_DECODE_ERRORS).increment(1);
        warn!(node_id = %self.node, error = %what, "dropped an undecodable message");
    }

    fn on_tick(
        &mut self,
        myself: &ActorRef<MasterMsg>,
        sent_ms: u64,
    ) -> Result<(), ActorProcessingErr> {
        self.check_alone(myself)?;
        self.feed(myself, MemberEvent::QueuedTick { sent_ms });
        let now = self.now_ms();
        if self.sched.tick_due(self.unix_ms(now)) {
            self.schedule(SchedEvent::Tick);
        }
        // Ticks that queued up behind a flood refresh the gauges and the
        // read model once a tick period, not once each.
        let period = self.tick_ms;
        if now.saturating_sub(self.published_at_ms) >= period
            || now.saturating_sub(sent_ms) < period
        {
            self.published_at_ms = now;
            self.publish_gauges();
            self.publish_read_model(false);
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn unix_ms(&self, at: u64) -> u64 {
        self.started_unix_ms + at
    }

    /// At most one master serves: one that sees an older claim than its
    /// own stops (the node exits, naming the other); one that sees a
    /// younger claim says so once and keeps serving.
    fn check_alone(&mut self, myself: &ActorRef<MasterMsg>) -> Result<(), ActorProcessingErr> {
        for (claim, _) in masters::visible() {
            if claim == self.claim {
                continue;
            }
            if claim < self.claim {
                masters::leave(&self.claim, myself.get_cell());
                let msg = second_master(&self.node, &claim);
                tracing::error!(node_id = %self.node, other = %claim.node, "{msg}");
                return Err(msg.into());
            }
            if self.warned_of.insert(claim.node.clone()) {
                warn!(node_id = %self.node, other = %claim.node, "node `{}` also serves as a master, since later than this one: it must stand down", claim.node);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The Master in one process, a probe standing in for a worker. Each
    //! test runs in its own process under nextest (the claim and the
    //! process groups are process-wide).
    use super::*;
    use crate::executor::NullIo;
    use crate::protocol::{
        CapValue, Capabilities, DeviceInfo, ExecutorSpec, FrameRange, Register, SessionSpec,
        PROTOCOL_VERSION,
    };

    async fn master(node: &str) -> (ActorRef<MasterMsg>, Arc<ReadModel>) {
        let read_model = Arc::new(ReadModel::new());
        let args = MasterArgs {
            node: node.into(),
            detector: DetectorConfig {
                heartbeat_ms: 60_000,
                missed_heartbeats: 3,
            },
            grace_wait_ms: 1000,
            io: Arc::new(NullIo),
            store: None,
            recovered: None,
            sync_always: false,
            resume_within_ms: 5000,
            cluster: None,
            read_model: read_model.clone(),
        };
        let (m, _) = Actor::spawn(None, Master, args)
            .await
            .expect("the master starts");
        (m, read_model)
    }

    async fn admin(m: &ActorRef<MasterMsg>, req: AdminRequest) -> AdminReply {
        ractor::call_t!(m, |port| MasterMsg::Admin(req, port), 5000).expect("the master answers")
    }

    fn spec(name: &str) -> SessionSpec {
        SessionSpec {
            name: name.into(),
            frames: FrameRange { start: 0, end: 10 },
            items: None,
            chunk_frames: 1,
            id_chunk_size: 10,
            require: Default::default(),
            prefer: Default::default(),
            max_attempts: 3,
            max_losses: crate::protocol::DEFAULT_MAX_LOSSES,
            priority: 0,
            max_devices: None,
            backoff_ms: 10,
            backoff_max_ms: 40,
            executor: ExecutorSpec::Noop,
            timeout_ms: 60_000,
            idempotency_key: None,
            collect: None,
            correlation_id: None,
            blocklist_after: None,
        }
    }

    const WITHIN: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn what_a_write_changed_is_readable_when_its_answer_arrives() {
        let (m, rm) = master("m-rw").await;
        let AdminReply::Submitted { id } = admin(&m, AdminRequest::Submit(spec("rw"))).await else {
            panic!("the submission is accepted");
        };
        // No worker: the session waits. The read model has it already.
        match rm.answer(&AdminRequest::Session(id.clone()), WITHIN) {
            Some(AdminReply::Session(v)) => assert_eq!(v.state, SessionState::Running),
            other => panic!("the submitted session in the read model: {other:?}"),
        }
        assert!(matches!(
            admin(&m, AdminRequest::Cancel(id.clone())).await,
            AdminReply::Cancelled { .. }
        ));
        // The cancel is answered once the manifest is written (by the
        // Session actor): the read model says cancelled at once.
        match rm.answer(&AdminRequest::Session(id.clone()), WITHIN) {
            Some(AdminReply::Session(v)) => assert_eq!(v.state, SessionState::Cancelled, "{v:?}"),
            other => panic!("the cancelled session in the read model: {other:?}"),
        }
        m.stop(None);
    }

    #[tokio::test]
    async fn a_worker_registered_is_in_the_read_model_when_it_hears_so() {
        let (m, rm) = master("m-reg").await;
        // Stands in for a worker: what the master tells it.
        let (probe, mut rx) = crate::test_support::probe(|m| match m {
            WorkerMsg::Master(m) => Some(m),
            _ => None,
        })
        .await;
        pg::join(worker_group("w-reg"), vec![probe.get_cell()]);
        let mut caps = Capabilities::new();
        caps.insert("gpu".into(), CapValue::Bool(false));
        m.cast(MasterMsg::Worker(ToMaster::Register(Register {
            protocol_version: PROTOCOL_VERSION,
            node: "w-reg".into(),
            advertise: "127.0.0.1:1".into(),
            capabilities: caps.clone(),
            devices: vec![DeviceInfo {
                id: "d0".into(),
                handle: "d0".into(),
                capabilities: caps,
            }],
            max_concurrency: 1,
            instance: 1,
            attempt: 1,
            held: vec![],
            data: None,
        })))
        .expect("the master takes messages");
        let reply = tokio::time::timeout(WITHIN, rx.recv())
            .await
            .expect("the master answers the registration within 5 s")
            .expect("an answer");
        assert!(matches!(reply, ToWorker::Registered { .. }), "{reply:?}");
        match rm.answer(&AdminRequest::Status, WITHIN) {
            Some(AdminReply::Status(s)) => {
                assert_eq!((s.workers_total, s.workers_healthy), (1, 1), "{s:?}");
                assert_eq!(s.master, "m-reg");
            }
            other => panic!("the status in the read model: {other:?}"),
        }
        m.stop(None);
    }
}
