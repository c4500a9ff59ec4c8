//! Metric names of the actors crate (docs/operating.md). Labels are bounded: states,
//! reasons and node names, never device ids.

/// Gauge, label `state` (healthy / unhealthy / unregistered): workers known to the master.
pub const CLUSTER_WORKERS: &str = "orch_cluster_workers";
/// Gauge, label `node`: seconds since the master last heard from a worker.
pub const HEARTBEAT_AGE: &str = "orch_worker_heartbeat_age_seconds";
/// Counter, label `reason` (heartbeat_timeout / node_down): workers declared unhealthy.
pub const WORKER_FAILURES: &str = "orch_worker_failures_total";
/// Counter: events published on the bus (docs/pipelines.md).
pub const EVENTS_PUBLISHED: &str = "orch_events_published_total";
/// Counter: messages from the network that did not decode.
pub const WIRE_DECODE_ERRORS: &str = "orch_wire_decode_errors_total";
/// Counter: times the master found it had not run for longer than a heartbeat.
pub const MASTER_STALLS: &str = "orch_master_stalls_total";
/// Gauge: seconds the master did not run in its latest stall.
pub const MASTER_LAST_STALL: &str = "orch_master_last_stall_seconds";
/// Counter, label `kind` (result, heartbeat, admin, place, commit, …):
/// messages that held the master 20 ms or more.
pub const MASTER_SLOW_MESSAGES: &str = "orch_master_slow_messages_total";
/// Counter: registrations the master refused (protocol mismatch).
pub const REGISTRATIONS_REFUSED: &str = "orch_worker_registrations_refused_total";
/// Counter: master claims ignored because the claiming node's certificate
/// does not name it or does not allow the master role (mutual TLS).
pub const MASTER_CLAIMS_REFUSED: &str = "orch_master_claims_refused_total";

/// Counter, label `scope` (`session`: for one session; `all`: for every
/// session, after failing in a row): devices and nodes blocklisted.
pub const DEVICES_BLOCKLISTED: &str = "orch_devices_blocklisted_total";
/// Counter: runs of a discovery source (`[[device_source]]`) that failed, by `source`.
pub const DEVICE_SOURCE_ERRORS: &str = "orch_device_source_errors_total";
/// Counter: attempts that came to a device its worker found offline.
pub const TASKS_SKIPPED_OFFLINE: &str = "orch_tasks_skipped_offline_total";
/// Counter: task attempts handed to devices.
pub const TASKS_ASSIGNED: &str = "orch_tasks_assigned_total";
/// Counter: task attempts that reported completion.
pub const TASKS_COMPLETED: &str = "orch_tasks_completed_total";
/// Counter: task attempts that reported a failure.
pub const TASKS_FAILED: &str = "orch_tasks_failed_total";
/// Counter: results or progress for an attempt that was no longer current (fenced).
pub const TASKS_REJECTED_STALE: &str = "orch_tasks_rejected_stale_total";
/// Gauge: task attempts in flight on the cluster.
pub const TASKS_INFLIGHT: &str = "orch_tasks_inflight";
/// Counter, label `reason`: failovers (a worker's running attempts reassigned).
pub const FAILOVERS: &str = "orch_failovers_total";
/// Values of the `reason` label of [`FAILOVERS`].
pub const FAILOVER_REASONS: &[&str] = &[
    "node_down",
    "heartbeat_timeout",
    "unregistered",
    "device_restart",
    "device_killed",
    "device_gone",
    "device_unresponsive",
    "no_answer",
    "master_restart",
    "resume_timeout",
];
/// Counter, label `reason`: task attempts lost with their worker or device.
pub const TASKS_LOST: &str = "orch_tasks_lost_total";
/// Histogram: seconds from a task's start on its device to its result.
pub const TASK_DURATION: &str = "orch_task_duration_seconds";
/// Gauge, label `node`: a worker's queued and running attempts over its device capacity.
pub const WORKER_QUEUE_RATIO: &str = "orch_worker_queue_ratio";
/// Gauge, label `node`: attempts queued or running in a worker's device mailboxes.
pub const WORKER_TASKS_QUEUED: &str = "orch_worker_tasks_queued";
/// Counter: frames reassigned after a failure.
pub const FRAMES_REASSIGNED: &str = "orch_frames_reassigned_total";
/// Counter: frames produced.
pub const FRAMES_COMPLETED: &str = "orch_frames_completed_total";
/// Counter: sessions submitted.
pub const SESSIONS_SUBMITTED: &str = "orch_sessions_submitted_total";
/// Counter, label `state`: sessions finished.
pub const SESSIONS_FINISHED: &str = "orch_sessions_finished_total";
/// Gauge: sessions running.
pub const SESSIONS_RUNNING: &str = "orch_sessions_running";
/// Counter: session actors (one per running session, writing its manifest)
/// that stopped by panic and were started again.
pub const SESSION_ACTOR_RESTARTS: &str = "orch_session_actor_restarts_total";

/// Counter: group commits of the master's store.
pub const STORE_COMMITS: &str = "orch_store_commits_total";
/// Counter: events recorded in the master's store.
pub const STORE_EVENTS: &str = "orch_store_events_total";
/// Histogram: seconds one group commit of the master's store took.
pub const STORE_COMMIT_DURATION: &str = "orch_store_commit_duration_seconds";
/// Counter: failed writes to the master's store or a worker's outbox (retried).
pub const STORE_ERRORS: &str = "orch_store_errors_total";
/// Gauge: a worker's progress reports and results not yet acknowledged by the master.
pub const OUTBOX_PENDING: &str = "orch_outbox_pending";
/// Gauge: the unacknowledged reports that are in the worker's `outbox.db`
/// (those written after `outbox::WRITE_AFTER`, or at once with no master).
pub const OUTBOX_STORED: &str = "orch_outbox_stored";
/// Counter: outbox entries sent again (after a master restart or reconnection).
pub const OUTBOX_RESENT: &str = "orch_outbox_resent_total";

/// Every metric of this crate with its help text, for the exporter to describe.
pub const CATALOG: &[(&str, &str)] = &[
    (CLUSTER_WORKERS, "workers known to the master, by state"),
    (
        HEARTBEAT_AGE,
        "seconds since the master last heard from each worker",
    ),
    (WORKER_FAILURES, "workers declared unhealthy, by reason"),
    (EVENTS_PUBLISHED, "events published on the bus"),
    (
        WIRE_DECODE_ERRORS,
        "cluster messages that did not decode and were dropped",
    ),
    (REGISTRATIONS_REFUSED, "registrations refused by the master"),
    (
        MASTER_CLAIMS_REFUSED,
        "master claims ignored for a certificate that does not name the claiming node as master",
    ),
    (
        DEVICE_SOURCE_ERRORS,
        "runs of a discovery source that failed, by source",
    ),
    (
        TASKS_SKIPPED_OFFLINE,
        "task attempts that came to a device its worker found offline",
    ),
    (
        MASTER_STALLS,
        "times the master found it had not run for longer than a heartbeat",
    ),
    (
        MASTER_LAST_STALL,
        "seconds the master did not run in its latest stall",
    ),
    (TASKS_ASSIGNED, "task attempts handed to devices"),
    (TASKS_COMPLETED, "task attempts that reported completion"),
    (TASKS_FAILED, "task attempts that reported a failure"),
    (
        TASKS_REJECTED_STALE,
        "results for attempts that were no longer current",
    ),
    (TASKS_INFLIGHT, "task attempts in flight"),
    (FAILOVERS, "failovers by reason"),
    (
        TASKS_LOST,
        "task attempts lost with their worker or device, by reason",
    ),
    (
        TASK_DURATION,
        "seconds from a task's start on its device to its result",
    ),
    (
        WORKER_QUEUE_RATIO,
        "queued and running attempts over device capacity, per worker",
    ),
    (
        WORKER_TASKS_QUEUED,
        "attempts in a worker's device mailboxes",
    ),
    (FRAMES_REASSIGNED, "frames reassigned after a failure"),
    (FRAMES_COMPLETED, "frames produced"),
    (SESSIONS_SUBMITTED, "sessions submitted"),
    (SESSIONS_FINISHED, "sessions finished by state"),
    (SESSIONS_RUNNING, "sessions running"),
    (
        SESSION_ACTOR_RESTARTS,
        "session actors restarted after a panic",
    ),
    (STORE_COMMITS, "group commits of the master's store"),
    (STORE_EVENTS, "ledger events recorded in the master's store"),
    (
        STORE_COMMIT_DURATION,
        "seconds one group commit of the master's store took",
    ),
    (
        STORE_ERRORS,
        "failed writes to the master's store or a worker's outbox",
    ),
    (
        OUTBOX_PENDING,
        "progress reports and results waiting for the master's acknowledgement",
    ),
    (
        OUTBOX_STORED,
        "unacknowledged progress reports and results written to the worker's outbox.db",
    ),
    (OUTBOX_RESENT, "outbox entries sent to the master again"),
];
