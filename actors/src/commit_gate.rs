//! Which of the master's decisions may leave before the commit of their
//! cause, and when a batch of events is written (group commit), as pure
//! logic: no actor, no clock, no store. The Master asks it about every
//! message it sends and every `Commit` it handles; the property model
//! (`actors/tests/scheduler_model.rs`) drives the same gate.
//!
//! Everything the master decides waits for the commit of the events behind
//! it, except an assignment that a crash before that commit cannot make
//! harmful (see [`CommitGate::assignment`]): a task's round trip would
//! otherwise include a commit, and the rate of small tasks would be set by
//! it. See docs/design/durability.md.

use std::collections::HashSet;
use std::time::Duration;

use crate::protocol::TaskSpec;

/// A batch is written once it holds this many events, ...
pub const GROUP_MAX_EVENTS: usize = 4096;
/// ... or this long after its first event, or when the mailbox is empty and
/// a decision waits for the batch. Assignments do not wait, so under load
/// the master commits about every `GROUP_MAX_WAIT` whatever the rate (each
/// commit costs about as much as tens of events).
pub const GROUP_MAX_WAIT: Duration = Duration::from_millis(2);

/// When a message may leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Now, before the commit of its cause.
    Now,
    /// Once the batch holding its cause is committed.
    AfterCommit,
}

/// What to do with the batch when a `Commit` comes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Write it now.
    Now,
    /// Messages arrived since the `Commit` was queued: queue it again behind
    /// them, so their events share the batch.
    BehindMailbox,
    /// Nothing waits for the batch and the mailbox is empty: write it when
    /// the batch is `GROUP_MAX_WAIT` old, this much later.
    After(Duration),
}

/// The batch being filled, as the gate sees it.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// How long ago its first event was recorded.
    pub age: Duration,
    /// Events recorded in it.
    pub events: usize,
    /// Messages handled since the `Commit` was queued.
    pub handled_since_queued: u32,
}

/// The master's commit policy for one batch at a time.
#[derive(Debug)]
pub struct CommitGate {
    /// This node: its worker dies with the master.
    own_node: String,
    /// Whether events are recorded at all (`false`: memory only, nothing
    /// can be lost by a crash that is not lost anyway).
    durable: bool,
    /// Tasks assigned since the last commit (sent at once or not).
    assigned: HashSet<(String, u64)>,
    /// Nodes with a decision waiting for the next commit: what follows for
    /// them waits too, so each node sees the master's order.
    waiting_nodes: HashSet<String>,
    /// Something other than an assignment waits for the batch (an answer,
    /// a registration, a manifest): write it as soon as the mailbox is empty.
    urgent: bool,
    /// A reservation for this node is being recorded: it is not committed yet.
    reserving: bool,
    /// Assignments to this node since the last commit.
    own_assigned: usize,
}

impl CommitGate {
    pub fn new(own_node: impl Into<String>, durable: bool) -> Self {
        Self {
            own_node: own_node.into(),
            durable,
            assigned: HashSet::new(),
            waiting_nodes: HashSet::new(),
            urgent: false,
            reserving: false,
            own_assigned: 0,
        }
    }

    /// An assignment of `task` to `node` (`reserved`: taken from the tasks
    /// reserved for `node`), with IDs below `id_reserved` recorded in the
    /// store. It may leave before the commit of its cause when a crash
    /// before that commit cannot make it harmful:
    /// - its ID chunk is below the recorded reservation (the restarted
    ///   master issues nothing below it, not even returned tails);
    /// - it is its task's first assignment since the last commit, so its
    ///   number is the one the store has for a pending task, or the next
    ///   one for a running task (the restarted master skips exactly those,
    ///   see `SchedEvent::Resume`; a later assignment in the same batch may
    ///   carry a number the restart would give out again);
    /// - nothing waits for the commit on its node (order per node holds);
    /// - it goes to another node, or it is a task reserved for this node in
    ///   an earlier commit: this node's worker dies with the master and
    ///   names nothing after a restart, which lists every task still
    ///   reserved instead.
    pub fn assignment(
        &mut self,
        node: &str,
        task: &TaskSpec,
        reserved: bool,
        id_reserved: u64,
    ) -> Release {
        if node == self.own_node {
            self.own_assigned += 1;
        }
        let first = self.assigned.insert((task.session.clone(), task.task));
        let early = first
            && self.durable
            && (node != self.own_node || (reserved && !self.reserving))
            && task.ids.hi <= id_reserved
            && !self.waiting_nodes.contains(node);
        if early {
            Release::Now
        } else {
            self.hold(node, false)
        }
    }

    /// An operator ran `tasks` of `session` again (a retry or a requeue)
    /// in the batch being filled: their assignments wait for its commit.
    /// The store has them done or failed, which is not the number a
    /// restart skips; a crash before the commit would leave an attempt
    /// that ran and that nothing lists.
    pub fn rerun(&mut self, session: &str, tasks: impl IntoIterator<Item = u64>) {
        for t in tasks {
            self.assigned.insert((session.to_string(), t));
        }
    }

    /// Any other message to `node` (a registration, a drop, an
    /// acknowledgement): it waits for the commit, and so does what follows
    /// for `node`.
    pub fn message(&mut self, node: &str) -> Release {
        self.hold(node, true)
    }

    /// An answer to an admin request that changed the ledger, or a manifest
    /// to write: it waits for the commit, which should not wait for a timer.
    pub fn local(&mut self) -> Release {
        self.urgent = true;
        Release::AfterCommit
    }

    fn hold(&mut self, node: &str, urgent: bool) -> Release {
        if self.durable && !self.waiting_nodes.contains(node) {
            self.waiting_nodes.insert(node.to_string());
        }
        self.urgent |= urgent;
        Release::AfterCommit
    }

    /// Whether something other than an assignment waits for the batch.
    pub fn urgent(&self) -> bool {
        self.urgent
    }

    /// How many tasks to reserve for this node with the batch about to be
    /// committed: twice as many as it got since the last commit (as many
    /// would cap its rate at the last batch's; a task reserved and never
    /// sent costs only a line in `replay` if the master dies). `None` when
    /// nothing is recorded (no store, no reservation).
    pub fn reservation_wanted(&mut self) -> Option<usize> {
        let want = self.own_assigned.saturating_mul(2);
        // What this placed leaves after the commit, not in the next batch.
        self.own_assigned = 0;
        self.durable.then_some(want)
    }

    /// A reservation for this node is being recorded (`true`) or done: what
    /// it places meanwhile waits for the commit.
    pub fn set_reserving(&mut self, reserving: bool) {
        self.reserving = reserving;
    }

    /// What to do with the batch when its `Commit` comes up.
    pub fn write(&self, batch: Batch) -> Write {
        if batch.age >= GROUP_MAX_WAIT || batch.events >= GROUP_MAX_EVENTS {
            return Write::Now;
        }
        if batch.handled_since_queued > 0 {
            return Write::BehindMailbox;
        }
        if self.urgent {
            Write::Now
        } else {
            Write::After(GROUP_MAX_WAIT - batch.age)
        }
    }

    /// The batch is written, or there was nothing to write (the master's
    /// journal is clean: no store, or every event committed): everything
    /// that waited may leave, and a new batch starts. Cheap when nothing
    /// is remembered (it runs after every message of a memory-only master).
    pub fn committed(&mut self) {
        if !self.assigned.is_empty() {
            self.assigned.clear();
        }
        if !self.waiting_nodes.is_empty() {
            self.waiting_nodes.clear();
        }
        self.urgent = false;
    }

    /// Tasks remembered as assigned since the last commit.
    pub fn remembered(&self) -> usize {
        self.assigned.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ExecutorSpec, FrameRange, IdRange};

    fn task(t: u64, hi: u64) -> TaskSpec {
        TaskSpec {
            session: "s".into(),
            session_name: "s".into(),
            task: t,
            attempt: 1,
            frames: FrameRange { start: 0, end: 1 },
            ids: IdRange { lo: hi - 10, hi },
            device: "d0".into(),
            executor: ExecutorSpec::Noop,
            timeout_ms: 1000,
            items: Vec::new(),
            correlation_id: String::new(),
        }
    }

    #[test]
    fn a_first_assignment_to_another_node_below_the_reservation_leaves_now() {
        let mut g = CommitGate::new("m", true);
        assert_eq!(g.assignment("w", &task(0, 100), false, 100), Release::Now);
        assert!(!g.urgent(), "an assignment does not hurry the commit");
    }

    #[test]
    fn a_second_assignment_of_a_task_in_one_batch_waits() {
        let mut g = CommitGate::new("m", true);
        assert_eq!(g.assignment("w", &task(0, 100), false, 100), Release::Now);
        assert_eq!(
            g.assignment("w", &task(0, 100), false, 100),
            Release::AfterCommit
        );
        // ... and what follows for that node waits too.
        assert_eq!(
            g.assignment("w", &task(1, 100), false, 100),
            Release::AfterCommit
        );
        assert_eq!(g.assignment("v", &task(2, 100), false, 100), Release::Now);
        g.committed();
        assert_eq!(g.assignment("w", &task(0, 100), false, 100), Release::Now);
    }

    #[test]
    fn ids_above_the_reservation_wait() {
        let mut g = CommitGate::new("m", true);
        assert_eq!(
            g.assignment("w", &task(0, 101), false, 100),
            Release::AfterCommit
        );
    }

    #[test]
    fn the_own_node_gets_early_only_what_an_earlier_commit_reserved() {
        let mut g = CommitGate::new("m", true);
        assert_eq!(
            g.assignment("m", &task(0, 100), false, 100),
            Release::AfterCommit
        );
        g.committed();
        assert_eq!(g.assignment("m", &task(1, 100), true, 100), Release::Now);
        g.set_reserving(true);
        assert_eq!(
            g.assignment("m", &task(2, 100), true, 100),
            Release::AfterCommit,
            "placed by a reservation not committed yet"
        );
        g.set_reserving(false);
        assert_eq!(g.reservation_wanted(), Some(6), "twice the 3 it got");
        assert_eq!(g.reservation_wanted(), Some(0));
    }

    #[test]
    fn a_message_holds_what_follows_for_its_node() {
        let mut g = CommitGate::new("m", true);
        assert_eq!(g.message("w"), Release::AfterCommit);
        assert!(g.urgent());
        assert_eq!(
            g.assignment("w", &task(0, 100), false, 100),
            Release::AfterCommit
        );
        assert_eq!(g.assignment("v", &task(1, 100), false, 100), Release::Now);
    }

    #[test]
    fn without_a_store_nothing_leaves_early() {
        let mut g = CommitGate::new("m", false);
        assert_eq!(
            g.assignment("w", &task(0, 100), false, u64::MAX),
            Release::AfterCommit
        );
        assert_eq!(g.reservation_wanted(), None);
    }

    #[test]
    fn a_batch_is_written_when_old_full_or_waited_for() {
        let mut g = CommitGate::new("m", true);
        let young = Batch {
            age: Duration::from_micros(500),
            events: 10,
            handled_since_queued: 0,
        };
        assert_eq!(
            g.write(young),
            Write::After(GROUP_MAX_WAIT - Duration::from_micros(500))
        );
        let busy = Batch {
            handled_since_queued: 3,
            ..young
        };
        assert_eq!(g.write(busy), Write::BehindMailbox);
        let full = Batch {
            events: GROUP_MAX_EVENTS,
            ..busy
        };
        assert_eq!(g.write(full), Write::Now);
        let old = Batch {
            age: GROUP_MAX_WAIT,
            ..busy
        };
        assert_eq!(g.write(old), Write::Now);
        g.local();
        assert_eq!(g.write(young), Write::Now, "an answer waits for it");
        assert_eq!(g.write(busy), Write::BehindMailbox);
    }
}
