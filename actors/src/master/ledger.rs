//! The master's two ledgers: membership events in, scheduler events
//! recorded and fed, and what each decides carried out.

use super::*;

impl MasterState {
    pub(super) fn feed(&mut self, myself: &ActorRef<MasterMsg>, ev: MemberEvent) {
        let now = self.now_ms();
        for cmd in self.membership.on_event(ev, now) {
            self.execute(myself, cmd);
        }
    }

    pub(super) fn schedule(&mut self, ev: SchedEvent) {
        // The scheduler's clock is unix milliseconds: its timestamps go to the manifest.
        let now = self.unix_ms(self.now_ms());
        self.journal.record(now, &ev);
        for cmd in self.sched.on_event(ev, now) {
            self.carry_out(cmd);
        }
    }

    pub(super) fn execute(&mut self, myself: &ActorRef<MasterMsg>, cmd: MemberCommand) {
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
                self.members_changed = true;
                info!(node_id = %self.node, worker = %node, epoch, "worker registered");
                self.member_event("worker.registered", &node, epoch, None);
                if let (Some(reg), Some(devices)) = (
                    self.membership.registration(&node),
                    self.membership.devices(&node),
                ) {
                    let ev = SchedEvent::NodeUp {
                        node,
                        epoch,
                        max_concurrency: reg.max_concurrency,
                        devices: devices.to_vec(),
                        held: reg.held.clone(),
                    };
                    self.schedule(ev);
                }
            }
            MemberCommand::Accepting { node, accepting } => {
                self.members_changed = true;
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
                self.members_changed = true;
                let kind = if reason.is_failure() {
                    "worker.unhealthy"
                } else {
                    "worker.unregistered"
                };
                self.member_event(kind, &node, epoch, Some(reason.as_str()));
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
                    reason: reason.into(),
                });
            }
        }
    }

    pub(super) fn carry_out(&mut self, cmd: SchedCommand) {
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
            SchedCommand::Blocklisted {
                what,
                session,
                reason,
            } => {
                let scope = if session.is_some() { "session" } else { "all" };
                let now = self.unix_ms(self.now_ms());
                let mut ev = crate::events::Event::new(
                    "device.blocklisted",
                    "master".into(),
                    session.as_deref().unwrap_or(&what),
                    now,
                )
                .with("what", what.clone())
                .with("reason", reason.clone());
                if let Some(s) = &session {
                    ev = ev.with("session", s.clone());
                }
                self.publish(ev);
                metrics::counter!(m::DEVICES_BLOCKLISTED, "scope" => scope).increment(1);
                match session {
                    Some(session) => {
                        warn!(node_id = %self.node, %session, blocklisted = %what, %reason, "blocklisted for the session")
                    }
                    None => {
                        warn!(node_id = %self.node, blocklisted = %what, %reason, "device blocklisted: it takes no work until restarted or unblocked")
                    }
                }
            }
            SchedCommand::RejectedStale { node, device, key } => {
                metrics::counter!(m::TASKS_REJECTED_STALE).increment(1);
                info!(node_id = %self.node, worker = %node, device_id = %device, session = %key.session, task = key.task, attempt = key.attempt, "stale result rejected");
            }
            SchedCommand::Reassigned {
                tasks,
                frames,
                reason,
            } => {
                metrics::counter!(m::FAILOVERS, "reason" => reason.as_str()).increment(1);
                metrics::counter!(m::TASKS_LOST, "reason" => reason.as_str()).increment(tasks);
                metrics::counter!(m::FRAMES_REASSIGNED).increment(frames);
                let now = self.unix_ms(self.now_ms());
                self.publish(
                    crate::events::Event::new(
                        "tasks.reassigned",
                        "master".into(),
                        reason.as_str(),
                        now,
                    )
                    .with("tasks", tasks.to_string())
                    .with("frames", frames.to_string())
                    .with("reason", reason.as_str()),
                );
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
            SchedCommand::Publish(ev) => self.publish(ev),
            SchedCommand::ManifestAmended { session } => {
                info!(node_id = %self.node, session = %session, "a node named an attempt of a finished session that the store never recorded; its manifest lists it in `replay`");
                self.gate.local();
                self.outgoing.push(Outgoing::Manifest(session));
            }
        }
    }

    /// A worker's membership changed: an event whose correlation id is
    /// the registration's (`node@epoch`).
    fn member_event(&mut self, kind: &str, node: &str, epoch: u64, reason: Option<&str>) {
        let now = self.unix_ms(self.now_ms());
        let mut ev =
            crate::events::Event::new(kind, "master".into(), &format!("{node}@{epoch}"), now)
                .with("node", node)
                .with("epoch", epoch.to_string());
        if let Some(r) = reason {
            ev = ev.with("reason", r);
        }
        self.publish(ev);
    }

    /// An event for the bus: logged with its correlation id.
    pub(super) fn publish(&mut self, ev: crate::events::Event) {
        metrics::counter!(m::EVENTS_PUBLISHED).increment(1);
        let payload: Vec<String> = ev.payload.iter().map(|(k, v)| format!("{k}={v}")).collect();
        info!(node_id = %self.node, event = %ev.kind, correlation_id = %ev.correlation_id, source = %ev.source, at_ms = ev.timestamp_ms, payload = %payload.join(" "), "event");
        self.outgoing.push(Outgoing::Publish(ev));
    }
}
