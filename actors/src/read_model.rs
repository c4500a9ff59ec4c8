//! The cluster as the admin API reads it: a copy the master publishes on
//! every tick (status, workers, devices) and each Session actor keeps up to
//! date (its session's view), read by the admin endpoints of the master's
//! node without a round trip through the master's mailbox. `status`,
//! `sessions` and the status page answer in microseconds even while the
//! master is busy.
//!
//! A copy older than the freshness the reader asks for is not used: the
//! reader asks the master, which answers or times out, so a master that
//! stopped is never hidden behind an old copy. Devices and workers, which
//! cost the most to publish, are published only while someone asks for
//! them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::protocol::{AdminReply, AdminRequest, SessionView};

/// What the master publishes whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Published {
    /// The cluster summary, without its sessions (they come from `sessions`).
    Status,
    Workers,
    /// Every device of every worker.
    Devices,
    DeviceGrid,
}

impl Published {
    pub const ALL: [Published; 4] = [
        Published::Status,
        Published::Workers,
        Published::Devices,
        Published::DeviceGrid,
    ];
}

/// How long a published answer keeps being published after it was last
/// asked for.
pub const WANTED_FOR: Duration = Duration::from_secs(10);

/// The published copy; one per master node, shared with its admin API.
#[derive(Debug)]
pub struct ReadModel {
    epoch: Instant,
    /// When the master last published (ms since `epoch`, plus one; 0: never).
    published_at: AtomicU64,
    answers: DashMap<Published, AdminReply>,
    /// When each answer was last asked for (ms since `epoch`).
    asked_at: DashMap<Published, u64>,
    /// Every session's view, with its place in submission order and the
    /// version it was taken at.
    sessions: DashMap<String, (u64, u64, SessionView)>,
    /// The node's event bus (docs/pipelines.md).
    bus: crate::events::Bus,
}

impl Default for ReadModel {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadModel {
    /// The node's event bus.
    pub fn bus(&self) -> &crate::events::Bus {
        &self.bus
    }

    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            published_at: AtomicU64::new(0),
            answers: DashMap::new(),
            asked_at: DashMap::new(),
            sessions: DashMap::new(),
            bus: crate::events::Bus::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The master has just published: what is here is current.
    pub fn touch(&self) {
        self.published_at
            .store(self.now_ms() + 1, Ordering::Release);
    }

    /// Whether the master published within `within`.
    pub fn fresh(&self, within: Duration) -> bool {
        let at = self.published_at.load(Ordering::Acquire);
        at > 0 && self.now_ms().saturating_sub(at - 1) <= within.as_millis() as u64
    }

    /// Whether someone asked for `what` within [`WANTED_FOR`]; the status is
    /// always wanted.
    pub fn wanted(&self, what: Published) -> bool {
        what == Published::Status
            || self.asked_at.get(&what).is_some_and(|at| {
                self.now_ms().saturating_sub(*at) <= WANTED_FOR.as_millis() as u64
            })
    }

    pub fn publish(&self, what: Published, answer: AdminReply) {
        self.answers.insert(what, answer);
    }

    /// Drop `what`: nobody asked for it lately, so it is no longer kept
    /// current (the next reader asks the master, and it is wanted again).
    pub fn forget(&self, what: Published) {
        self.answers.remove(&what);
    }

    /// A session's view taken at `version` (views are taken in increasing
    /// versions; an older one than what is here is dropped); `seq` orders
    /// sessions as they were submitted.
    pub fn publish_session(&self, seq: u64, version: u64, view: SessionView) {
        let mut e = self
            .sessions
            .entry(view.id.clone())
            .or_insert((seq, version, view.clone()));
        if e.1 <= version {
            *e = (seq, version, view);
        }
    }

    /// Every session's view, in submission order.
    pub fn session_views(&self) -> Vec<SessionView> {
        let mut all: Vec<(u64, SessionView)> = self
            .sessions
            .iter()
            .map(|e| (e.value().0, e.value().2.clone()))
            .collect();
        all.sort_by_key(|(seq, _)| *seq);
        all.into_iter().map(|(_, v)| v).collect()
    }

    fn asked(&self, what: Published) -> Option<AdminReply> {
        self.asked_at.insert(what, self.now_ms());
        self.answers.get(&what).map(|a| a.value().clone())
    }

    /// The answer to `req` from the published copy, if `req` only reads,
    /// the copy is no older than `within` and holds the answer; `None`:
    /// ask the master.
    pub fn answer(&self, req: &AdminRequest, within: Duration) -> Option<AdminReply> {
        if !self.fresh(within) {
            return None;
        }
        match req {
            AdminRequest::Status => match self.asked(Published::Status)? {
                AdminReply::Status(mut s) => {
                    s.sessions = self.session_views();
                    Some(AdminReply::Status(s))
                }
                _ => None,
            },
            AdminRequest::Workers => self.asked(Published::Workers),
            AdminRequest::Sessions => Some(AdminReply::Sessions(self.session_views())),
            AdminRequest::Session(id) => self
                .sessions
                .get(id)
                .map(|e| AdminReply::Session(e.value().2.clone())),
            AdminRequest::Devices(None) => self.asked(Published::Devices),
            AdminRequest::Devices(Some(node)) => match self.asked(Published::Devices)? {
                AdminReply::Devices(all) => {
                    let mine: Vec<_> = all.into_iter().filter(|d| d.node == *node).collect();
                    // A node with no device here: the master says whether it exists.
                    (!mine.is_empty()).then_some(AdminReply::Devices(mine))
                }
                _ => None,
            },
            AdminRequest::DeviceGrid => self.asked(Published::DeviceGrid),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClusterStatus, SessionState};

    fn view(id: &str) -> SessionView {
        SessionView {
            collect: String::new(),
            id: id.into(),
            name: id.into(),
            state: SessionState::Running,
            waiting: None,
            frames_total: 10,
            frames_done: 0,
            frames_failed: 0,
            tasks_total: 1,
            tasks_completed: 0,
            tasks_running: 0,
            tasks_pending: 1,
            tasks_failed: 0,
            retries: 0,
            failovers: 0,
            stale_rejected: 0,
            elapsed_ms: 0,
            paused: false,
            priority: 0,
            max_devices: None,
            skipped_offline: Default::default(),
        }
    }

    #[test]
    fn nothing_is_answered_before_the_master_published() {
        let rm = ReadModel::new();
        rm.publish_session(0, 1, view("a"));
        assert_eq!(
            rm.answer(&AdminRequest::Sessions, Duration::from_secs(5)),
            None
        );
        rm.touch();
        assert!(rm
            .answer(&AdminRequest::Sessions, Duration::from_secs(5))
            .is_some());
    }

    #[test]
    fn sessions_come_in_submission_order_and_the_status_holds_them() {
        let rm = ReadModel::new();
        rm.touch();
        rm.publish_session(2, 1, view("c"));
        rm.publish_session(0, 2, view("a"));
        rm.publish_session(1, 3, view("b"));
        let ids = |v: Vec<SessionView>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(rm.session_views()), ["a", "b", "c"]);
        assert_eq!(
            rm.answer(&AdminRequest::Status, Duration::from_secs(5)),
            None,
            "no status yet"
        );
        rm.publish(
            Published::Status,
            AdminReply::Status(ClusterStatus::default()),
        );
        match rm.answer(&AdminRequest::Status, Duration::from_secs(5)) {
            Some(AdminReply::Status(s)) => assert_eq!(ids(s.sessions), ["a", "b", "c"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rm.answer(&AdminRequest::Session("zz".into()), Duration::from_secs(5)),
            None,
            "an unknown session is the master's to answer"
        );
    }

    #[test]
    fn an_older_view_never_replaces_a_newer_one() {
        let rm = ReadModel::new();
        rm.touch();
        let mut done = view("a");
        done.state = SessionState::Completed;
        rm.publish_session(0, 7, done);
        rm.publish_session(0, 5, view("a"));
        assert_eq!(rm.session_views()[0].state, SessionState::Completed);
        rm.publish_session(0, 8, view("a"));
        assert_eq!(rm.session_views()[0].state, SessionState::Running);
    }

    #[test]
    fn devices_are_wanted_once_asked_for_and_filtered_by_node() {
        let rm = ReadModel::new();
        rm.touch();
        assert!(!rm.wanted(Published::Devices));
        assert_eq!(
            rm.answer(&AdminRequest::Devices(None), Duration::from_secs(5)),
            None
        );
        assert!(
            rm.wanted(Published::Devices),
            "asking makes the master publish it"
        );
        rm.publish(Published::Devices, AdminReply::Devices(Vec::new()));
        assert_eq!(
            rm.answer(&AdminRequest::Devices(None), Duration::from_secs(5)),
            Some(AdminReply::Devices(Vec::new()))
        );
        assert_eq!(
            rm.answer(
                &AdminRequest::Devices(Some("n9".into())),
                Duration::from_secs(5)
            ),
            None
        );
        rm.forget(Published::Devices);
        assert_eq!(
            rm.answer(&AdminRequest::Devices(None), Duration::from_secs(5)),
            None,
            "an answer no longer kept current is the master's to give"
        );
    }

    #[test]
    fn a_copy_older_than_asked_for_is_not_used() {
        let rm = ReadModel::new();
        rm.touch();
        std::thread::sleep(Duration::from_millis(30));
        assert!(rm.fresh(Duration::from_secs(5)));
        assert!(!rm.fresh(Duration::from_millis(5)));
        assert_eq!(
            rm.answer(&AdminRequest::Sessions, Duration::from_millis(5)),
            None
        );
    }

    #[test]
    fn writes_never_go_through_it() {
        let rm = ReadModel::new();
        rm.touch();
        assert_eq!(
            rm.answer(&AdminRequest::Cancel("a".into()), Duration::from_secs(5)),
            None
        );
    }
}
