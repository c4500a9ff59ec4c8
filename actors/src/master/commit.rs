//! Group commit: what waits for the batch holding its cause, writing the
//! batch, and delivering what waited (see [`CommitGate`]).

use super::*;

impl MasterState {
    /// A message to a worker other than an assignment: it waits for the
    /// commit, and so does what follows for that worker.
    pub(super) fn send_to(&mut self, node: &str, msg: ToWorker) {
        self.gate.message(node);
        self.outgoing.push(Outgoing::Send(node.to_string(), msg));
    }

    pub(super) fn reply(&mut self, port: RpcReplyPort<AdminReply>, answer: AdminReply) {
        self.gate.local();
        self.outgoing.push(Outgoing::Reply(port, answer));
    }

    /// Write the events recorded so far, with the ID reservation and epoch
    /// they need (see [`Journal::commit`]).
    pub(super) fn commit_journal(&mut self) -> Result<bool, crate::store::StoreFault> {
        self.journal
            .commit(self.sched.ids().high_water(), self.membership.last_epoch())
    }

    /// After each message: act at once on what waits for nothing; else make
    /// sure a `Commit` comes after everything already in the mailbox, so the
    /// events of all of it share one commit (group commit).
    pub(super) fn settle(&mut self, myself: &ActorRef<MasterMsg>) {
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
        // Nothing to write: the gate forgets what it held for a commit
        // (without a store there is never one, and a session's every task
        // would pile up in it).
        self.gate.committed();
        let (out, acks) = (
            std::mem::take(&mut self.outgoing),
            std::mem::take(&mut self.acks),
        );
        self.deliver(out, acks);
    }

    /// Put a `Commit` at the end of the mailbox; any other one queued is void.
    pub(super) fn queue_commit(&mut self, myself: &ActorRef<MasterMsg>) -> bool {
        self.commit_generation += 1;
        myself
            .cast(MasterMsg::Commit(self.commit_generation))
            .is_ok()
    }

    /// Record, with the batch about to be committed, the tasks this node's
    /// own worker may get before the next commit (see
    /// [`CommitGate::reservation_wanted`]). Placements this causes wait for
    /// the commit.
    pub(super) fn reserve_for_own_node(&mut self) {
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
    pub(super) fn commit(
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
        // Nothing to write: the gate forgets what it held for a commit
        // (without a store there is never one, and a session's every task
        // would pile up in it).
        self.gate.committed();
        let (out, acks) = (
            std::mem::take(&mut self.outgoing),
            std::mem::take(&mut self.acks),
        );
        self.deliver(out, acks);
        Ok(())
    }

    pub(super) fn deliver(&mut self, outgoing: Vec<Outgoing>, acks: HashMap<String, Vec<u64>>) {
        let mut replies = Vec::new();
        let mut events = Vec::new();
        for out in outgoing {
            match out {
                Outgoing::Publish(ev) => events.push(ev),
                Outgoing::Send(node, msg) => self.deliver_to(&node, msg),
                Outgoing::Reply(port, answer) => replies.push((port, answer)),
                Outgoing::Manifest(session) => self.write_manifest(&session),
                Outgoing::AmendOnDisk(session, record) => self.amend_on_disk(&session, record),
            }
        }
        if !events.is_empty() {
            self.publish_events(events);
        }
        // Answers leave last, once the read model holds what they changed:
        // what their asker reads next is current.
        if !replies.is_empty() {
            self.publish_read_model(true);
        }
        for (port, answer) in replies {
            // A cancel is answered once the session's manifest is on disk,
            // as when the master wrote it itself.
            if let AdminReply::Cancelled { id } = &answer {
                if let Some(parked) = self.parked_until_written(id) {
                    parked.push((port, answer));
                    continue;
                }
            }
            let _ = port.send(answer);
        }
        for (node, seqs) in acks {
            self.deliver_to(&node, ToWorker::Ack { seqs });
        }
    }

    /// Answer a request for an evicted session's manifest from disk, off
    /// the master's thread; `remote`: it must fit one cluster frame.
    /// `ledger`: the session's manifest as the ledger holds it, built here
    /// off the master's thread (merged over the one on disk when the
    /// session ran again after its ledger left memory).
    pub(super) fn manifest_from_disk(
        &self,
        id: String,
        reply: RpcReplyPort<AdminReply>,
        remote: bool,
        ledger: Option<crate::scheduler::ManifestSnapshot>,
    ) {
        let io = self.io.clone();
        let node = self.node.clone();
        tokio::spawn(async move {
            let read = {
                let id = id.clone();
                tokio::task::spawn_blocking(move || match ledger {
                    None => io.read_manifest(&id),
                    Some(snap) => {
                        let now = snap.to_manifest();
                        let Some(superseded) = snap.merge_with_disk() else {
                            return Ok(now);
                        };
                        match io.read_manifest(&id) {
                            Ok(disk) => {
                                Ok(crate::scheduler::merge_manifests(disk, now, superseded))
                            }
                            Err(_) if !io.manifest_exists(&id) => Ok(now),
                            Err(e) => Err(e),
                        }
                    }
                })
                .await
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

    /// Read the ranges task `task` of `session` produced from its manifest
    /// on disk, off the master's thread, and record the requeue when they
    /// come back ([`MasterMsg::RequeueRead`]).
    pub(super) fn produced_from_disk(
        &self,
        session: String,
        task: u64,
        reply: RpcReplyPort<AdminReply>,
    ) {
        let (io, node) = (self.io.clone(), self.node.clone());
        let Some(master) = self.myself.clone() else {
            return;
        };
        tokio::spawn(async move {
            let id = session.clone();
            let read = tokio::task::spawn_blocking(move || io.read_manifest(&id)).await;
            let produced = match read {
                Ok(Ok(m)) => Ok(m
                    .ranges
                    .into_iter()
                    .filter(|r| r.task == task)
                    .map(|r| crate::scheduler::ProducedRange {
                        frames: r.frames,
                        attempt: r.attempt,
                        node: r.node,
                        device: r.device,
                    })
                    .collect()),
                Ok(Err(e)) => Err(format!(
                    "cannot read the manifest of `{session}` on node `{node}`: {e}"
                )),
                Err(e) => Err(format!("cannot read the manifest of `{session}`: {e}")),
            };
            let _ = master.cast(MasterMsg::RequeueRead {
                session,
                task,
                produced,
                reply,
            });
        });
    }

    /// Number and keep committed events on this node's bus, and send them
    /// to every other node's events actor.
    fn publish_events(&mut self, events: Vec<crate::events::Event>) {
        let published = self.read_model.bus().publish(events);
        let others: Vec<ActorRef<crate::events::EventsMsg>> =
            pg::get_members(&crate::events::EVENTS_GROUP.to_string())
                .into_iter()
                .filter(|c| !c.get_id().is_local())
                .map(ActorRef::from)
                .collect();
        if others.is_empty() {
            return;
        }
        for chunk in published.chunks(crate::events::EVENTS_PER_MESSAGE) {
            let batch: Vec<crate::events::BusEvent> = chunk.iter().map(|e| (**e).clone()).collect();
            for o in &others {
                let _ = o.cast(crate::events::EventsMsg::Events(batch.clone()));
            }
        }
    }

    pub(super) fn deliver_to(&mut self, node: &str, msg: ToWorker) {
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
}
