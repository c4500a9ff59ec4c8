//! A Session actor: one per session, supervised by the Master. The ledger
//! and placement stay in the master's one scheduler (one ordered log, one
//! ledger: that is why a replay is exact); the Session actor owns the
//! session's I/O and its followers, off the master's thread: it publishes
//! the session's live view in the [`ReadModel`] (what `orchctl watch`, the
//! admin API and the status page read), writes its manifest when it ends,
//! and amends a manifest on disk. It keeps nothing the master cannot give
//! it again: a Session actor that fails is started again from the ledger,
//! and what it had not confirmed is sent again (see
//! docs/design/session-actor.md).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use crate::executor::NodeIo;
use crate::master::MasterMsg;
use crate::protocol::{ReplayRecord, SessionView};
use crate::read_model::ReadModel;
use crate::scheduler::ManifestSnapshot;

/// Test hook: the Session actor of the session named in this variable
/// panics once per process: on its first view (`NAME`) or when first asked
/// to write the manifest (`NAME@manifest`). See docs/testing.md.
pub const PANIC_HOOK: &str = "ORCH_TEST_PANIC_SESSION";
static HOOK_FIRED: AtomicBool = AtomicBool::new(false);

/// Where the test hook makes a Session actor panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hook {
    View,
    Manifest,
}

fn hook_for(session_name: &str) -> Option<Hook> {
    let v = std::env::var(PANIC_HOOK).ok()?;
    match v.split_once('@') {
        None if v == session_name => Some(Hook::View),
        Some((name, "manifest")) if name == session_name => Some(Hook::Manifest),
        _ => None,
    }
}

/// Messages of [`Session`].
pub enum SessionMsg {
    /// The session's view as the ledger had it at `version`: publish it.
    View { view: SessionView, version: u64 },
    /// Write the session's manifest; the master hears when it is on disk.
    WriteManifest(Box<ManifestSnapshot>),
    /// Add a `replay` record to the manifest on disk (the session's ledger
    /// left the master's memory); the master hears when it is done.
    AmendOnDisk(ReplayRecord),
}

impl ractor::Message for SessionMsg {}

/// The Session actor.
pub struct Session;

/// Arguments of [`Session`].
pub struct SessionArgs {
    pub id: String,
    /// The session's name (the test hook matches it).
    pub name: String,
    /// Its place in submission order.
    pub seq: u64,
    /// This node's name, for logs.
    pub node: String,
    pub io: Arc<dyn NodeIo>,
    pub read_model: Arc<ReadModel>,
    pub master: ActorRef<MasterMsg>,
}

/// State of [`Session`].
pub struct SessionState {
    args: SessionArgs,
    /// Where this actor panics for the test hook, if it does.
    hook: Option<Hook>,
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let hook = hook_for(&args.name);
        Ok(SessionState { args, hook })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::View { view, version } => state.publish(view, version),
            SessionMsg::WriteManifest(manifest) => state.write_manifest(*manifest).await,
            SessionMsg::AmendOnDisk(record) => state.amend_on_disk(record).await,
        }
        Ok(())
    }
}

impl SessionState {
    fn fire_hook(&self, at: Hook) {
        if self.hook == Some(at) && !HOOK_FIRED.swap(true, Ordering::SeqCst) {
            panic!(
                "test hook `{PANIC_HOOK}`: the Session actor of `{}` fails ({at:?})",
                self.args.id
            );
        }
    }

    fn publish(&mut self, view: SessionView, version: u64) {
        self.fire_hook(Hook::View);
        self.args
            .read_model
            .publish_session(self.args.seq, version, view);
    }

    /// Serialize and write the manifest on a blocking thread, then tell the master.
    async fn write_manifest(&mut self, manifest: ManifestSnapshot) {
        self.fire_hook(Hook::Manifest);
        let io = self.args.io.clone();
        let written = tokio::task::spawn_blocking(move || io.write_manifest(&manifest))
            .await
            .unwrap_or_else(|e| Err(format!("the writer failed: {e}")));
        let ok = match written {
            Ok(path) => {
                info!(node_id = %self.args.node, session = %self.args.id, manifest = %path.display(), "manifest written");
                true
            }
            Err(e) => {
                warn!(node_id = %self.args.node, session = %self.args.id, error = %e, "cannot write the manifest");
                false
            }
        };
        self.tell_master(false, ok);
    }

    async fn amend_on_disk(&mut self, record: ReplayRecord) {
        let io = self.args.io.clone();
        let id = self.args.id.clone();
        let (task, attempt, device) = (record.task, record.old_attempt, record.device.clone());
        let amended = tokio::task::spawn_blocking(move || io.amend_manifest(&id, &record))
            .await
            .unwrap_or_else(|e| Err(format!("the writer failed: {e}")));
        let ok = match amended {
            Ok(()) => {
                info!(node_id = %self.args.node, session = %self.args.id, device_id = %device, task, attempt, "an evicted session's manifest lists an attempt the store never recorded");
                true
            }
            Err(e) => {
                warn!(node_id = %self.args.node, session = %self.args.id, error = %e, "cannot amend the manifest on disk");
                false
            }
        };
        self.tell_master(true, ok);
    }

    fn tell_master(&self, amend: bool, ok: bool) {
        let _ = self.args.master.cast(MasterMsg::ManifestWritten {
            session: self.args.id.clone(),
            amend,
            ok,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::NullIo;
    use crate::protocol::SessionState as State;
    use crate::scheduler::Scheduler;
    use tokio::sync::mpsc;

    fn view(id: &str, state: State) -> SessionView {
        SessionView {
            collect: String::new(),
            id: id.into(),
            name: id.into(),
            state,
            waiting: None,
            frames_total: 4,
            frames_done: 4,
            frames_failed: 0,
            tasks_total: 1,
            tasks_completed: 1,
            tasks_running: 0,
            tasks_pending: 0,
            tasks_failed: 0,
            retries: 0,
            failovers: 0,
            stale_rejected: 0,
            elapsed_ms: 5,
            paused: false,
            priority: 0,
            max_devices: None,
            skipped_offline: Default::default(),
        }
    }

    async fn session(
        id: &str,
    ) -> (
        ActorRef<SessionMsg>,
        Arc<ReadModel>,
        mpsc::UnboundedReceiver<(String, bool, bool)>,
    ) {
        // Stands in for the master: what the Session actor tells it.
        let (probe, rx) = crate::test_support::probe(|m| match m {
            MasterMsg::ManifestWritten { session, amend, ok } => Some((session, amend, ok)),
            _ => None,
        })
        .await;
        let read_model = Arc::new(ReadModel::new());
        let args = SessionArgs {
            id: id.into(),
            name: id.into(),
            seq: 3,
            node: "n0".into(),
            io: Arc::new(NullIo),
            read_model: read_model.clone(),
            master: probe,
        };
        let (actor, _) = Actor::spawn(None, Session, args).await.expect("session");
        (actor, read_model, rx)
    }

    #[tokio::test]
    async fn a_view_is_published_and_an_older_one_never_replaces_it() {
        let (actor, rm, mut rx) = session("s1").await;
        actor
            .cast(SessionMsg::View {
                view: view("s1", State::Completed),
                version: 9,
            })
            .unwrap();
        actor
            .cast(SessionMsg::View {
                view: view("s1", State::Running),
                version: 4,
            })
            .unwrap();
        // The manifest's confirmation comes after both views were handled.
        actor
            .cast(SessionMsg::WriteManifest(Box::new(
                Scheduler::empty_manifest("s1"),
            )))
            .unwrap();
        assert_eq!(rx.recv().await, Some(("s1".into(), false, true)));
        let views = rm.session_views();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].state, State::Completed);
    }

    #[tokio::test]
    async fn a_write_and_an_amendment_are_each_confirmed_in_order() {
        let (actor, _, mut rx) = session("s2").await;
        actor
            .cast(SessionMsg::WriteManifest(Box::new(
                Scheduler::empty_manifest("s2"),
            )))
            .unwrap();
        actor
            .cast(SessionMsg::AmendOnDisk(ReplayRecord {
                task: 1,
                old_attempt: 1,
                new_attempt: 2,
                node: "n1".into(),
                device: "d0".into(),
                reason: crate::protocol::LossReason::NodeDown,
                frames: crate::protocol::FrameRange { start: 0, end: 4 },
            }))
            .unwrap();
        assert_eq!(rx.recv().await, Some(("s2".into(), false, true)));
        assert_eq!(rx.recv().await, Some(("s2".into(), true, true)));
    }
}
