//! What the master publishes on every tick: gauges and counters, and the
//! read model the admin API answers from.

use super::*;

impl MasterState {
    pub(super) fn publish_gauges(&mut self) {
        let now = self.now_ms();
        for state in MemberState::ALL {
            metrics::gauge!(m::CLUSTER_WORKERS, "state" => state.as_str())
                .set(self.membership.count(state) as f64);
        }
        // Four numbers a worker: no copy of its devices (at 100,000 devices
        // that copy was most of an idle master's time).
        for (node, age_ms, queue_ratio, active) in self.membership.gauges(now) {
            let node = node.to_string();
            metrics::gauge!(m::HEARTBEAT_AGE, "node" => node.clone()).set(age_ms as f64 / 1000.0);
            metrics::gauge!(m::WORKER_QUEUE_RATIO, "node" => node.clone())
                .set(f64::from(queue_ratio));
            metrics::gauge!(m::WORKER_TASKS_QUEUED, "node" => node).set(f64::from(active));
        }
        metrics::gauge!(m::TASKS_INFLIGHT).set(self.sched.inflight() as f64);
        let (done, running) = self.sched.frames_done_and_running();
        if done > self.frames_reported {
            metrics::counter!(m::FRAMES_COMPLETED).increment(done - self.frames_reported);
            self.frames_reported = done;
        }
        metrics::gauge!(m::SESSIONS_RUNNING).set(running as f64);
    }

    /// The cluster summary with the latest failovers, without the sessions
    /// (the admin answer adds them; the read model keeps them apart).
    pub(super) fn cluster_status(&self, now: u64) -> ClusterStatus {
        let mut status = self.membership.status(&self.node, now);
        status.recent_failovers = self
            .sched
            .recent_failovers(20)
            .into_iter()
            .map(|(session, replay)| FailoverRecord { session, replay })
            .collect();
        status
    }

    /// The cluster summary and, if asked for lately, the workers: after
    /// every change of membership, so that what a reader sees of the
    /// workers is never older than what the master decided about them.
    pub(super) fn publish_members(&mut self) {
        let now = self.now_ms();
        let rm = self.read_model.clone();
        rm.publish(
            Published::Status,
            AdminReply::Status(self.cluster_status(now)),
        );
        if rm.wanted(Published::Workers) {
            rm.publish(
                Published::Workers,
                AdminReply::Workers(self.membership.views(now)),
            );
        } else {
            rm.forget(Published::Workers);
        }
    }

    /// Publish the read model: the cluster summary, what was asked for
    /// lately (workers, devices), and the sessions' views (`sessions_now`:
    /// at once, else through their actors).
    pub(super) fn publish_read_model(&mut self, sessions_now: bool) {
        self.publish_members();
        let rm = self.read_model.clone();
        for (what, req) in [
            (Published::Devices, AdminRequest::Devices(None)),
            (Published::DeviceGrid, AdminRequest::DeviceGrid),
        ] {
            if rm.wanted(what) {
                let answer = self.answer(req);
                rm.publish(what, answer);
            } else {
                rm.forget(what);
            }
        }
        if sessions_now {
            // The running ones, and the finished ones whose actor is still
            // writing (their last view is published when it is done).
            let mut ids = self.sched.running_sessions();
            ids.extend(
                self.session_actors
                    .keys()
                    .filter(|id| self.sched.is_final(id))
                    .cloned(),
            );
            for id in ids {
                self.publish_session_now(&id);
            }
        } else {
            self.publish_session_views();
        }
        rm.touch();
    }
}

/// A message that holds the master this long is slow: everything behind it
/// in the mailbox waited as long (the target for one message is a few ms).
pub const SLOW_MESSAGE: Duration = Duration::from_millis(20);

/// Least time between two warnings about slow messages.
const SLOW_WARN_EVERY: Duration = Duration::from_secs(10);

/// Slow messages: counted by kind (`orch_master_slow_messages_total`), and
/// logged at most every 10 s with the longest of them and a count.
#[derive(Debug, Default)]
pub(super) struct SlowMessages {
    said_at: Option<Instant>,
    unsaid: u64,
    longest: Option<(Duration, &'static str)>,
}

impl SlowMessages {
    pub(super) fn note(&mut self, node: &str, kind: &'static str, took: Duration) {
        if took < SLOW_MESSAGE {
            return;
        }
        metrics::counter!(m::MASTER_SLOW_MESSAGES, "kind" => kind).increment(1);
        self.unsaid += 1;
        if self.longest.is_none_or(|(d, _)| took > d) {
            self.longest = Some((took, kind));
        }
        if self
            .said_at
            .is_none_or(|at| at.elapsed() >= SLOW_WARN_EVERY)
        {
            let (d, k) = self.longest.take().unwrap_or((took, kind));
            warn!(node_id = %node, kind = k, took_ms = d.as_millis() as u64, slow_messages = self.unsaid, "the master took long to handle a message; what waited behind it in its mailbox waited as long (see orch_master_slow_messages_total)");
            self.unsaid = 0;
            self.said_at = Some(Instant::now());
        }
    }
}
