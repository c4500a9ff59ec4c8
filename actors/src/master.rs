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

use std::collections::{HashMap, HashSet};
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
    worker_group, AdminReply, AdminRequest, DeviceState, DeviceView, DownReason, FailoverRecord,
    MemberState, SessionState, ToMaster, ToWorker,
};
use crate::scheduler::{SchedCommand, SchedEvent, Scheduler};
use crate::worker::WorkerMsg;

/// Most manifest ranges sent to another node in one answer (a cluster frame
/// over 16 MiB would drop the connection).
const MAX_FORWARDED_RANGES: usize = 20_000;

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
}

/// State of [`Master`].
pub struct MasterState {
    node: String,
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
}

impl MasterState {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn unix_ms(&self, at: u64) -> u64 {
        self.started_unix_ms + at
    }

    fn feed(&mut self, myself: &ActorRef<MasterMsg>, ev: MemberEvent) {
        let now = self.now_ms();
        for cmd in self.membership.on_event(ev, now) {
            self.execute(myself, cmd);
        }
    }

    fn schedule(&mut self, ev: SchedEvent) {
        // The scheduler's clock is unix milliseconds: its timestamps go to the manifest.
        let now = self.unix_ms(self.now_ms());
        self.journal.record(now, &ev);
        for cmd in self.sched.on_event(ev, now) {
            self.carry_out(cmd);
        }
    }

    /// A message to a worker other than an assignment: it waits for the
    /// commit, and so does what follows for that worker.
    fn send_to(&mut self, node: &str, msg: ToWorker) {
        self.gate.message(node);
        self.outgoing.push(Outgoing::Send(node.to_string(), msg));
    }

    fn reply(&mut self, port: RpcReplyPort<AdminReply>, answer: AdminReply) {
        self.gate.local();
        self.outgoing.push(Outgoing::Reply(port, answer));
    }

    /// Write the events recorded so far, with the ID reservation and epoch
    /// they need (see [`Journal::commit`]).
    fn commit_journal(&mut self) -> Result<bool, String> {
        self.journal
            .commit(self.sched.ids().high_water(), self.membership.last_epoch())
    }

    /// After each message: act at once on what waits for nothing; else make
    /// sure a `Commit` comes after everything already in the mailbox, so the
    /// events of all of it share one commit (group commit).
    fn settle(&mut self, myself: &ActorRef<MasterMsg>) {
        let hw = self.sched.ids().high_water();
        if self.commit_queued || self.journal.dirty(hw, self.membership.last_epoch()) {
            if !self.commit_queued {
                self.commit_queued = self.queue_commit(myself);
                self.handled_since_commit_queued = 0;
                self.batch_since = Some(Instant::now());
            } else if self.commit_timed && self.gate.urgent() {
                // Something waits now: do not let it wait for the timer.
                self.commit_timed = !self.queue_commit(myself);
                self.handled_since_commit_queued = 0;
            }
            return;
        }
        let (out, acks) = (
            std::mem::take(&mut self.outgoing),
            std::mem::take(&mut self.acks),
        );
        self.deliver(out, acks);
    }

    /// Put a `Commit` at the end of the mailbox; any other one queued is void.
    fn queue_commit(&mut self, myself: &ActorRef<MasterMsg>) -> bool {
        self.commit_generation += 1;
        myself
            .cast(MasterMsg::Commit(self.commit_generation))
            .is_ok()
    }

    /// Record, with the batch about to be committed, the tasks this node's
    /// own worker may get before the next commit (see
    /// [`CommitGate::reservation_wanted`]). Placements this causes wait for
    /// the commit.
    fn reserve_for_own_node(&mut self) {
        let Some(want) = self.gate.reservation_wanted() else {
            return;
        };
        if let Some(ev) = self.sched.reservation(&self.node, want) {
            self.gate.set_reserving(true);
            self.schedule(ev);
            self.gate.set_reserving(false);
        }
    }

    /// Write the events recorded so far, then carry out what waited for them
    /// (when, see [`CommitGate::write`]).
    fn commit(
        &mut self,
        myself: &ActorRef<MasterMsg>,
        generation: u64,
    ) -> Result<(), ActorProcessingErr> {
        if !self.commit_queued || generation != self.commit_generation {
            // A timer's `Commit`, overtaken by one for something that waited.
            return Ok(());
        }
        let batch = Batch {
            age: self.batch_since.map(|at| at.elapsed()).unwrap_or_default(),
            events: self.journal.events(),
            handled_since_queued: self.handled_since_commit_queued,
        };
        self.handled_since_commit_queued = 0;
        match self.gate.write(batch) {
            Write::Now => {}
            Write::BehindMailbox => {
                if self.queue_commit(myself) {
                    self.commit_timed = false;
                    return Ok(());
                }
            }
            Write::After(wait) => {
                self.commit_generation += 1;
                let generation = self.commit_generation;
                myself.send_after(wait, move || MasterMsg::Commit(generation));
                self.commit_timed = true;
                return Ok(());
            }
        }
        self.reserve_for_own_node();
        self.commit_queued = false;
        self.commit_timed = false;
        self.batch_since = None;
        self.gate.committed();
        self.commit_journal()
            .map_err(|e| format!("cannot write the master's store: {e}; stopping (a restart resumes from the store; assignments sent since the last commit are skipped and listed: docs/design/durability.md, Master restarts and the outbox)"))?;
        let (out, acks) = (
            std::mem::take(&mut self.outgoing),
            std::mem::take(&mut self.acks),
        );
        self.deliver(out, acks);
        Ok(())
    }

    fn deliver(&mut self, outgoing: Vec<Outgoing>, acks: HashMap<String, Vec<u64>>) {
        for out in outgoing {
            match out {
                Outgoing::Send(node, msg) => self.deliver_to(&node, msg),
                Outgoing::Reply(port, answer) => {
                    let _ = port.send(answer);
                }
                Outgoing::Manifest(session) => self.write_manifest(&session),
                Outgoing::AmendOnDisk(session, record) => {
                    match self.io.amend_manifest(&session, &record) {
                        Ok(()) => {
                            info!(node_id = %self.node, session = %session, task = record.task, attempt = record.old_attempt, "an evicted session's manifest lists an attempt the store never recorded")
                        }
                        Err(e) => {
                            warn!(node_id = %self.node, session = %session, error = %e, "cannot amend the manifest on disk")
                        }
                    }
                }
            }
        }
        for (node, seqs) in acks {
            self.deliver_to(&node, ToWorker::Ack { seqs });
        }
    }

    /// Write a session's manifest; a finished session's ledger then leaves
    /// memory (it is read from the manifest from now on).
    fn write_manifest(&mut self, session: &str) {
        let Some(manifest) = self.sched.manifest_stream(session) else {
            if self.sched.is_evicted(session) && !self.io.manifest_exists(session) {
                warn!(node_id = %self.node, session = %session, "the manifest of a finished session is missing from disk, and its ledger left memory");
            }
            return;
        };
        match self.io.write_manifest(&manifest) {
            Ok(path) => {
                info!(node_id = %self.node, session = %session, manifest = %path.display(), "manifest written")
            }
            Err(e) => {
                warn!(node_id = %self.node, session = %session, error = %e, "cannot write the manifest");
                return;
            }
        }
        if self.sched.is_final(session) && self.io.manifest_exists(session) {
            self.schedule(SchedEvent::Evict {
                session: session.to_string(),
            });
        }
    }

    /// Answer a request for an evicted session's manifest from disk, off
    /// the master's thread; `remote`: it must fit one cluster frame.
    fn manifest_from_disk(&self, id: String, reply: RpcReplyPort<AdminReply>, remote: bool) {
        let io = self.io.clone();
        let node = self.node.clone();
        tokio::spawn(async move {
            let read = {
                let id = id.clone();
                tokio::task::spawn_blocking(move || io.read_manifest(&id)).await
            };
            let answer = match read {
                Ok(Ok(m)) if remote && m.ranges.len() > MAX_FORWARDED_RANGES => {
                    AdminReply::Error(too_many_to_forward(&m.session, m.ranges.len(), &node))
                }
                Ok(Ok(m)) => AdminReply::Manifest(Box::new(m)),
                Ok(Err(e)) => AdminReply::Error(format!(
                    "cannot read the manifest of `{id}` on node `{node}`: {e}"
                )),
                Err(e) => AdminReply::Error(format!("cannot read the manifest of `{id}`: {e}")),
            };
            let _ = reply.send(answer);
        });
    }

    fn deliver_to(&mut self, node: &str, msg: ToWorker) {
        if self.routes.get(node).is_none_or(Vec::is_empty) {
            let found: Vec<ActorRef<WorkerMsg>> = pg::get_members(&worker_group(node))
                .into_iter()
                .map(ActorRef::from)
                .collect();
            if found.is_empty() {
                debug!(node_id = %self.node, worker = %node, "no route to worker, message dropped");
                return;
            }
            self.routes.insert(node.to_string(), found);
        }
        for worker in &self.routes[node] {
            if let Err(e) = worker.cast(WorkerMsg::Master(msg.clone())) {
                debug!(node_id = %self.node, worker = %node, error = %e, "message to worker failed");
            }
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
                self.send_to(&node, msg);
            }
            MemberCommand::Watch { node, epoch } => {
                self.watched.retain(|_, (n, _)| *n != node);
                let members = pg::get_members(&worker_group(&node));
                for cell in &members {
                    myself.monitor(cell.clone());
                    self.watched.insert(cell.get_id(), (node.clone(), epoch));
                }
                self.routes
                    .insert(node, members.into_iter().map(ActorRef::from).collect());
            }
            MemberCommand::Up { node, epoch } => {
                info!(node_id = %self.node, worker = %node, epoch, "worker registered");
                if let Some(reg) = self.membership.registration(&node) {
                    let ev = SchedEvent::NodeUp {
                        node,
                        epoch,
                        max_concurrency: reg.max_concurrency,
                        devices: reg.devices.clone(),
                        held: reg.held.clone(),
                    };
                    self.schedule(ev);
                }
            }
            MemberCommand::Accepting { node, accepting } => {
                self.schedule(SchedEvent::NodeAccepting { node, accepting })
            }
            MemberCommand::Stalled { ms } => {
                metrics::counter!(m::MASTER_STALLS).increment(1);
                metrics::gauge!(m::MASTER_LAST_STALL).set(ms as f64 / 1000.0);
                warn!(node_id = %self.node, stalled_ms = ms, "the master did not run for a while (stopped, swapped out, or overloaded); heartbeat and attempt deadlines moved by as much");
                self.schedule(SchedEvent::Stalled { ms });
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
                self.routes.remove(&node);
                if let (DownReason::HeartbeatTimeout, Some(link)) = (reason, &self.cluster) {
                    if node != self.node {
                        link.disconnect(&node);
                    }
                }
                self.schedule(SchedEvent::NodeDown {
                    node,
                    epoch,
                    reason: reason.as_str().to_string(),
                });
            }
        }
    }

    fn carry_out(&mut self, cmd: SchedCommand) {
        match cmd {
            SchedCommand::Assign {
                node,
                task,
                reserved,
            } => {
                metrics::counter!(m::TASKS_ASSIGNED).increment(1);
                let id_reserved = self.journal.id_reserved();
                match self.gate.assignment(&node, &task, reserved, id_reserved) {
                    Release::Now => self.deliver_to(&node, ToWorker::Assign(task)),
                    Release::AfterCommit => self
                        .outgoing
                        .push(Outgoing::Send(node, ToWorker::Assign(task))),
                }
            }
            SchedCommand::Drop {
                node,
                key,
                device,
                keep,
                reason,
            } => self.send_to(
                &node,
                ToWorker::Drop {
                    key,
                    device,
                    keep,
                    reason,
                },
            ),
            SchedCommand::RejectedStale { node, key } => {
                metrics::counter!(m::TASKS_REJECTED_STALE).increment(1);
                info!(node_id = %self.node, worker = %node, session = %key.session, task = key.task, attempt = key.attempt, "stale result rejected");
            }
            SchedCommand::Reassigned {
                tasks,
                frames,
                reason,
            } => {
                metrics::counter!(m::FAILOVERS, "reason" => reason.clone()).increment(1);
                metrics::counter!(m::TASKS_LOST, "reason" => reason.clone()).increment(tasks);
                metrics::counter!(m::FRAMES_REASSIGNED).increment(frames);
                warn!(node_id = %self.node, frames, %reason, "frames reassigned");
            }
            SchedCommand::SessionFinished { session, state } => {
                metrics::counter!(m::SESSIONS_FINISHED, "state" => state.as_str()).increment(1);
                info!(node_id = %self.node, session = %session, state = state.as_str(), "session finished");
                self.gate.local();
                self.outgoing.push(Outgoing::Manifest(session));
            }
            SchedCommand::AmendOnDisk { session, record } => {
                self.gate.local();
                self.outgoing.push(Outgoing::AmendOnDisk(session, record));
            }
            SchedCommand::ManifestAmended { session } => {
                info!(node_id = %self.node, session = %session, "a node named an attempt of a finished session that the store never recorded; its manifest lists it in `replay`");
                self.gate.local();
                self.outgoing.push(Outgoing::Manifest(session));
            }
        }
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

    fn publish_gauges(&mut self) {
        let now = self.now_ms();
        for state in MemberState::ALL {
            metrics::gauge!(m::CLUSTER_WORKERS, "state" => state.as_str())
                .set(self.membership.count(state) as f64);
        }
        for w in self.membership.views(now) {
            metrics::gauge!(m::HEARTBEAT_AGE, "node" => w.node.clone())
                .set(w.heartbeat_age_ms as f64 / 1000.0);
            metrics::gauge!(m::WORKER_QUEUE_RATIO, "node" => w.node.clone())
                .set(f64::from(w.queue_ratio));
            metrics::gauge!(m::WORKER_TASKS_QUEUED, "node" => w.node)
                .set(f64::from(w.active_tasks));
        }
        metrics::gauge!(m::TASKS_INFLIGHT).set(self.sched.inflight() as f64);
        let views = self.sched.views(self.unix_ms(now));
        // Saturating: frames are 64-bit, a sum of them may not fit.
        let done = views
            .iter()
            .fold(0u64, |acc, v| acc.saturating_add(v.frames_done));
        if done > self.frames_reported {
            metrics::counter!(m::FRAMES_COMPLETED).increment(done - self.frames_reported);
            self.frames_reported = done;
        }
        let running = views
            .iter()
            .filter(|v| v.state == SessionState::Running)
            .count();
        metrics::gauge!(m::SESSIONS_RUNNING).set(running as f64);
    }

    fn answer(&mut self, req: AdminRequest) -> AdminReply {
        let now = self.now_ms();
        let unix_now = self.unix_ms(now);
        match req {
            AdminRequest::Status => {
                let mut s = self.membership.status(&self.node, now);
                s.sessions = self.sched.views(unix_now);
                s.recent_failovers = self
                    .sched
                    .recent_failovers(20)
                    .into_iter()
                    .map(|(session, replay)| FailoverRecord { session, replay })
                    .collect();
                AdminReply::Status(s)
            }
            AdminRequest::Devices(filter) => {
                if let Some(n) = &filter {
                    if self.membership.registration(n).is_none() {
                        return AdminReply::NotFound(format!("no worker `{n}`"));
                    }
                }
                let mut views = self.sched.device_views(filter.as_deref());
                // Devices of workers that are not (or no longer) healthy are offline.
                for w in self.membership.views(now) {
                    if filter.as_ref().is_some_and(|f| *f != w.node)
                        || self.sched.has_device(&w.node, None)
                    {
                        continue;
                    }
                    for d in w.devices {
                        views.push(DeviceView {
                            node: w.node.clone(),
                            device: d.id,
                            state: DeviceState::Offline,
                            tasks: Vec::new(),
                            tasks_done: 0,
                            last_error: w.reason.map(|r| r.as_str().to_string()),
                            capabilities: d.capabilities,
                        });
                    }
                }
                AdminReply::Devices(views)
            }
            AdminRequest::Drain(node) | AdminRequest::Undrain(node)
                if self.membership.registration(&node).is_none() =>
            {
                AdminReply::NotFound(format!("no worker `{node}`"))
            }
            AdminRequest::Drain(node) => {
                self.schedule(SchedEvent::Drain {
                    node: node.clone(),
                    drained: true,
                });
                AdminReply::Done(format!(
                    "node `{node}` drained: it finishes the tasks it has and takes no new ones"
                ))
            }
            AdminRequest::Undrain(node) => {
                self.schedule(SchedEvent::Drain {
                    node: node.clone(),
                    drained: false,
                });
                AdminReply::Done(format!("node `{node}` takes work again"))
            }
            AdminRequest::RestartDevice { node, device }
            | AdminRequest::KillDevice { node, device }
                if !self.sched.has_device(&node, Some(&device)) =>
            {
                AdminReply::NotFound(format!("no device `{device}` on a healthy worker `{node}`"))
            }
            AdminRequest::RestartDevice { node, device } => {
                self.schedule(SchedEvent::DeviceDown {
                    node: node.clone(),
                    device: device.clone(),
                    reason: "device_restart".into(),
                    disable: false,
                });
                self.send_to(
                    &node,
                    ToWorker::RestartDevice {
                        device: device.clone(),
                    },
                );
                AdminReply::Done(format!(
                    "device `{device}` on `{node}` restarted; its tasks were reassigned"
                ))
            }
            AdminRequest::KillDevice { node, device } => {
                self.schedule(SchedEvent::DeviceDown {
                    node: node.clone(),
                    device: device.clone(),
                    reason: "device_killed".into(),
                    disable: true,
                });
                AdminReply::Done(format!(
                    "device `{device}` on `{node}` quarantined; its tasks were reassigned (restart-device brings it back)"
                ))
            }
            AdminRequest::DeviceGrid => {
                let AdminReply::Devices(views) = self.answer(AdminRequest::Devices(None)) else {
                    return AdminReply::DeviceGrid(Vec::new());
                };
                let mut grid: Vec<crate::protocol::NodeGrid> = Vec::new();
                for d in views {
                    match grid.last_mut() {
                        Some(g) if g.node == d.node => g.states.push(d.state.grid_char()),
                        _ => grid.push(crate::protocol::NodeGrid {
                            node: d.node,
                            states: d.state.grid_char().to_string(),
                        }),
                    }
                }
                AdminReply::DeviceGrid(grid)
            }
            AdminRequest::Workers => AdminReply::Workers(self.membership.views(now)),
            AdminRequest::Submit(spec) => {
                // A retried submission: the session it made the first time.
                if let Some(id) = spec
                    .idempotency_key
                    .as_deref()
                    .and_then(|k| self.sched.session_for_key(k))
                {
                    return AdminReply::Submitted { id: id.to_string() };
                }
                // The ledger's clock (never back across restarts) in
                // milliseconds, and 16 random bits: unique across restarts
                // and across masters.
                let mut id;
                loop {
                    id = format!("{}-{:x}{:04x}", spec.name, unix_now, rand::random::<u16>());
                    // A restarted master must not reuse the id of a session it replayed.
                    if !self.sched.has_session(&id) {
                        break;
                    }
                }
                info!(node_id = %self.node, session = %id, frames = spec.frames.len(), executor = spec.executor.name(), "session submitted");
                metrics::counter!(m::SESSIONS_SUBMITTED).increment(1);
                self.schedule(SchedEvent::Submit {
                    id: id.clone(),
                    spec,
                });
                AdminReply::Submitted { id }
            }
            AdminRequest::Sessions => AdminReply::Sessions(self.sched.views(unix_now)),
            AdminRequest::Session(id) => match self.sched.view(&id, unix_now) {
                Some(v) => AdminReply::Session(v),
                None => AdminReply::NotFound(format!("no session `{id}`")),
            },
            AdminRequest::Manifest(id) => match self.sched.manifest(&id) {
                Some(m) => AdminReply::Manifest(Box::new(m)),
                None => AdminReply::NotFound(format!("no session `{id}`")),
            },
            AdminRequest::Cancel(id) => {
                if self.sched.view(&id, unix_now).is_none() {
                    return AdminReply::NotFound(format!("no session `{id}`"));
                }
                self.schedule(SchedEvent::Cancel {
                    session: id.clone(),
                });
                AdminReply::Cancelled { id }
            }
        }
    }
}

/// Why a manifest is not forwarded to another node.
fn too_many_to_forward(session: &str, ranges: usize, node: &str) -> String {
    format!(
        "the manifest of `{session}` has {ranges} ranges, too many to forward across the cluster; ask the master node `{node}` directly, or read `sessions/{session}/manifest.json` in its data_dir"
    )
}

/// The one line a node with role `master` gives when another serves.
pub fn second_master(node: &str, other: &Claim) -> String {
    format!(
        "node `{node}` has role `master`, but node `{}` already serves this cluster as its master (since unix ms {}); refusing to be a second master: remove `master` from `node.roles` of `{node}`, or stop `{}` first",
        other.node, other.since_ms, other.node
    )
}

/// Whether an admin request changes the ledger: its answer waits for the commit.
fn mutates(req: &AdminRequest) -> bool {
    matches!(
        req,
        AdminRequest::Submit(_)
            | AdminRequest::Cancel(_)
            | AdminRequest::Drain(_)
            | AdminRequest::Undrain(_)
            | AdminRequest::RestartDevice { .. }
            | AdminRequest::KillDevice { .. }
    )
}

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
    /// Local: check heartbeat deadlines, wake retries, refresh gauges.
    Tick,
    /// Local: write the events recorded so far to the store, then send the
    /// decisions and acknowledgements that waited for them. Only the one
    /// with the latest generation counts.
    Commit(u64),
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
            cluster: args.cluster,
        };
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
        state.settle(&myself);
        state.frames_reported = state
            .sched
            .views(started_unix_ms)
            .iter()
            .fold(0u64, |acc, v| acc.saturating_add(v.frames_done));
        masters::join(&state.claim, myself.get_cell());
        let tick = Duration::from_millis(args.detector.tick_ms());
        myself.send_interval(tick, || MasterMsg::Tick);
        info!(node_id = %state.node, durable, "master started");
        Ok(state)
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
            MasterMsg::Worker(ToMaster::OlderMaster { older }) => {
                if older < state.claim && older.node != state.node {
                    masters::leave(&state.claim, myself.get_cell());
                    let msg = second_master(&state.node, &older);
                    tracing::error!(node_id = %state.node, other = %older.node, "{msg} (a worker sees both)");
                    return Err(msg.into());
                }
            }
            MasterMsg::Worker(ToMaster::Heartbeat(hb)) => {
                state.feed(&myself, MemberEvent::Heartbeat(hb))
            }
            MasterMsg::Worker(ToMaster::Unregister { node, epoch }) => {
                state.feed(&myself, MemberEvent::Unregister { node, epoch })
            }
            MasterMsg::Worker(ToMaster::Progress(p)) => {
                if p.seq > 0 {
                    state.acks.entry(p.node.clone()).or_default().push(p.seq);
                }
                state.schedule(SchedEvent::Progress(p))
            }
            MasterMsg::Worker(ToMaster::Result(r)) => {
                if r.seq > 0 {
                    state.acks.entry(r.node.clone()).or_default().push(r.seq);
                }
                metrics::histogram!(m::TASK_DURATION)
                    .record(r.finished_ms.saturating_sub(r.started_ms) as f64 / 1000.0);
                if matches!(r.outcome, crate::protocol::TaskOutcome::Completed) {
                    metrics::counter!(m::TASKS_COMPLETED).increment(1);
                } else {
                    metrics::counter!(m::TASKS_FAILED).increment(1);
                }
                state.schedule(SchedEvent::Result(r))
            }
            MasterMsg::Admin(AdminRequest::Manifest(id), reply) if state.sched.is_evicted(&id) => {
                state.manifest_from_disk(id, reply, false)
            }
            MasterMsg::Admin(req, reply) => {
                let mutates = mutates(&req);
                let answer = state.answer(req);
                if mutates {
                    state.reply(reply, answer);
                } else {
                    let _ = reply.send(answer);
                }
            }
            MasterMsg::RemoteAdmin(AdminRequest::Manifest(id), reply)
                if state.sched.is_evicted(&id) =>
            {
                state.manifest_from_disk(id, reply, true)
            }
            MasterMsg::RemoteAdmin(req, reply) => {
                let answer = match state.answer(req) {
                    AdminReply::Manifest(m) if m.ranges.len() > MAX_FORWARDED_RANGES => {
                        AdminReply::Error(too_many_to_forward(
                            &m.session,
                            m.ranges.len(),
                            &state.node,
                        ))
                    }
                    other => other,
                };
                state.reply(reply, answer);
            }
            MasterMsg::Malformed(what) => {
                metrics::counter!(m::WIRE_DECODE_ERRORS).increment(1);
                warn!(node_id = %state.node, error = %what, "dropped an undecodable message");
            }
            MasterMsg::Tick => {
                state.check_alone(&myself)?;
                state.feed(&myself, MemberEvent::Tick);
                if state.sched.tick_due(state.unix_ms(state.now_ms())) {
                    state.schedule(SchedEvent::Tick);
                }
                state.publish_gauges();
            }
            MasterMsg::Commit(generation) => {
                state.commit(&myself, generation)?;
                return Ok(());
            }
        }
        state.handled_since_commit_queued += 1;
        state.settle(&myself);
        Ok(())
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
            | SupervisionEvent::ActorFailed(cell, _) => {
                if let Some((node, epoch)) = state.watched.remove(&cell.get_id()) {
                    state.feed(&myself, MemberEvent::NodeDown { node, epoch });
                    state.settle(&myself);
                }
            }
            other => debug!(node_id = %state.node, event = ?other, "supervision event ignored"),
        }
        Ok(())
    }
}
