//! The Session actors the master supervises: one per session that runs or
//! has a manifest to write. The master sends each its session's view and
//! its manifest; what a Session actor has not confirmed is sent again when
//! it is started again after a failure.

use super::*;

use crate::protocol::ReplayRecord;
use crate::session::{Session, SessionArgs, SessionMsg};

/// What the master knows of one Session actor.
pub(super) struct SessionActor {
    actor: ActorRef<SessionMsg>,
    /// Manifests sent to be written and not confirmed yet.
    manifests_pending: u32,
    /// Amendments sent and not confirmed yet, in order.
    amends_pending: VecDeque<ReplayRecord>,
    /// Answers that leave once the manifest is on disk (a cancel's).
    parked: Vec<(RpcReplyPort<AdminReply>, AdminReply)>,
}

impl MasterState {
    /// The Session actor of `id`, started if it is not running.
    fn session_actor(&mut self, id: &str) -> Option<&mut SessionActor> {
        if !self.session_actors.contains_key(id) {
            let (myself, seq) = (self.myself.clone()?, self.sched.session_order(id)?);
            let name = self.sched.view(id, 0).map(|v| v.name).unwrap_or_default();
            let args = SessionArgs {
                id: id.to_string(),
                name,
                seq,
                node: self.node.clone(),
                io: self.io.clone(),
                read_model: self.read_model.clone(),
                master: myself.clone(),
            };
            match ractor::ActorRuntime::spawn_linked_instant(None, Session, args, myself.get_cell())
            {
                Ok((actor, _)) => {
                    self.session_of.insert(actor.get_id(), id.to_string());
                    self.session_actors.insert(
                        id.to_string(),
                        SessionActor {
                            actor,
                            manifests_pending: 0,
                            amends_pending: VecDeque::new(),
                            parked: Vec::new(),
                        },
                    );
                }
                Err(e) => {
                    warn!(node_id = %self.node, session = %id, error = %e, "cannot start the session's actor");
                    return None;
                }
            }
        }
        self.session_actors.get_mut(id)
    }

    /// Session `id` as readers see it: a finished session whose manifest is
    /// not on disk yet still shows `running`, waiting for it, so that whoever
    /// sees a session end can read its `manifest.json` (as when the master
    /// wrote it on its own thread).
    pub(super) fn session_view(&self, id: &str, unix_now: u64) -> Option<SessionView> {
        let mut v = self.sched.view(id, unix_now)?;
        let writing = self
            .session_actors
            .get(id)
            .is_some_and(|s| s.manifests_pending > 0);
        if writing && v.state.is_final() {
            v.waiting = Some(format!("{}; writing the manifest", v.state.as_str()));
            v.state = SessionState::Running;
        }
        Some(v)
    }

    /// Every session as readers see it ([`Self::session_view`]), in submission order.
    pub(super) fn session_views(&self, unix_now: u64) -> Vec<SessionView> {
        self.sched
            .session_ids_in_order()
            .iter()
            .filter_map(|id| self.session_view(id, unix_now))
            .collect()
    }

    /// Where to keep an answer until the manifest of `session` is on disk;
    /// `None`: it is not being written, answer now.
    pub(super) fn parked_until_written(
        &mut self,
        session: &str,
    ) -> Option<&mut Vec<(RpcReplyPort<AdminReply>, AdminReply)>> {
        self.session_actors
            .get_mut(session)
            .filter(|s| s.manifests_pending > 0)
            .map(|s| &mut s.parked)
    }

    /// The next version of the views the master takes.
    fn next_version(&mut self) -> u64 {
        self.view_version += 1;
        self.view_version
    }

    /// Publish session `id`'s view now, without waiting for its actor (an
    /// answer about it is about to leave).
    pub(super) fn publish_session_now(&mut self, id: &str) {
        let now = self.unix_ms(self.now_ms());
        let (Some(seq), Some(view)) = (self.sched.session_order(id), self.session_view(id, now))
        else {
            return;
        };
        let version = self.next_version();
        self.read_model.publish_session(seq, version, view);
    }

    /// Send each running session's view to its actor, which publishes it.
    pub(super) fn publish_session_views(&mut self) {
        let now = self.unix_ms(self.now_ms());
        for id in self.sched.running_sessions() {
            let Some(view) = self.session_view(&id, now) else {
                continue;
            };
            let version = self.next_version();
            if let Some(s) = self.session_actor(&id) {
                let _ = s.actor.cast(SessionMsg::View { view, version });
            }
        }
    }

    /// Have the manifest of `session` written by its actor; a finished
    /// session's ledger then leaves memory (see [`Self::on_manifest_written`]).
    pub(super) fn write_manifest(&mut self, session: &str) {
        let Some(manifest) = self.sched.manifest_snapshot(session) else {
            if self.sched.is_evicted(session) && !self.io.manifest_exists(session) {
                warn!(node_id = %self.node, session = %session, "the manifest of a finished session is missing from disk, and its ledger left memory");
            }
            return;
        };
        let now = self.unix_ms(self.now_ms());
        let version = self.next_version();
        let Some(s) = self.session_actor(session) else {
            return;
        };
        s.manifests_pending += 1;
        let actor = s.actor.clone();
        if let Some(view) = self.session_view(session, now) {
            let _ = actor.cast(SessionMsg::View { view, version });
        }
        let _ = actor.cast(SessionMsg::WriteManifest(Box::new(manifest)));
    }

    /// Have `record` added to the manifest of `session` on disk.
    pub(super) fn amend_on_disk(&mut self, session: &str, record: ReplayRecord) {
        if let Some(s) = self.session_actor(session) {
            s.amends_pending.push_back(record.clone());
            let _ = s.actor.cast(SessionMsg::AmendOnDisk(record));
        }
    }

    /// A Session actor finished a write of the manifest (`amend`: an
    /// amendment of it on disk; `ok`: it is on disk). A finished session
    /// whose manifest is on disk leaves memory; an actor with nothing left
    /// to do stops.
    pub(super) fn on_manifest_written(&mut self, session: &str, amend: bool, ok: bool) {
        let Some(s) = self.session_actors.get_mut(session) else {
            return;
        };
        if amend {
            s.amends_pending.pop_front();
        } else {
            s.manifests_pending = s.manifests_pending.saturating_sub(1);
        }
        if ok
            && self.sched.is_final(session)
            && !self.sched.is_evicted(session)
            && self.io.manifest_exists(session)
        {
            self.schedule(SchedEvent::Evict {
                session: session.to_string(),
            });
        }
        let s = &self.session_actors[session];
        let idle = s.manifests_pending == 0 && s.amends_pending.is_empty();
        let written = s.manifests_pending == 0;
        if idle && self.sched.is_final(session) {
            self.publish_session_now(session);
            if let Some(s) = self.session_actors.remove(session) {
                self.session_of.remove(&s.actor.get_id());
                s.actor.stop(None);
                for (port, answer) in s.parked {
                    let _ = port.send(answer);
                }
            }
        } else if written {
            self.publish_session_now(session);
            if let Some(s) = self.session_actors.get_mut(session) {
                for (port, answer) in std::mem::take(&mut s.parked) {
                    let _ = port.send(answer);
                }
            }
        }
    }

    /// Whether `cell` was a Session actor; if so, it failed or stopped.
    /// One that failed is started again from the ledger, and what it had
    /// not confirmed is sent again: nothing of the session is lost.
    pub(super) fn on_session_actor_down(&mut self, id: &ActorId, failed: bool) -> bool {
        let Some(session) = self.session_of.remove(id) else {
            return false;
        };
        let Some(old) = self.session_actors.remove(&session) else {
            return true;
        };
        if !failed {
            return true;
        }
        metrics::counter!(m::SESSION_ACTOR_RESTARTS).increment(1);
        warn!(node_id = %self.node, session = %session, "the session's actor failed; started again from the ledger");
        if old.manifests_pending > 0 {
            self.write_manifest(&session);
        }
        // What waited for the manifest waits for the new actor's write.
        match self.parked_until_written(&session) {
            Some(parked) => parked.extend(old.parked),
            None => {
                for (port, answer) in old.parked {
                    let _ = port.send(answer);
                }
            }
        }
        for record in old.amends_pending {
            self.amend_on_disk(&session, record);
        }
        if !self.sched.is_final(&session) {
            // Running: its actor publishes its views again from the next tick.
            self.session_actor(&session);
        }
        // After the new actor holds what is pending: a session whose
        // manifest is not written yet does not show as ended.
        self.publish_session_now(&session);
        true
    }
}
