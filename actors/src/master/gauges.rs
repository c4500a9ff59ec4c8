//! Gauges and counters the master refreshes on every tick.

use super::*;

impl MasterState {
    pub(super) fn publish_gauges(&mut self) {
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
}
