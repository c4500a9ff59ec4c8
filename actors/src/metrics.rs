//! Metric names of the actors crate (SPEC §12). Labels are bounded: states,
//! reasons and node names, never device ids.

/// Gauge, label `state` (healthy / unhealthy / unregistered): workers known to the master.
pub const CLUSTER_WORKERS: &str = "orch_cluster_workers";
/// Gauge, label `node`: seconds since the master last heard from a worker.
pub const HEARTBEAT_AGE: &str = "orch_worker_heartbeat_age_seconds";
/// Counter, label `reason` (heartbeat_timeout / node_down): workers declared unhealthy.
pub const WORKER_FAILURES: &str = "orch_worker_failures_total";
/// Counter: messages from the network that did not decode.
pub const WIRE_DECODE_ERRORS: &str = "orch_wire_decode_errors_total";
/// Counter: registrations the master refused (protocol mismatch).
pub const REGISTRATIONS_REFUSED: &str = "orch_worker_registrations_refused_total";

/// Every metric of this crate with its help text, for the exporter to describe.
pub const CATALOG: &[(&str, &str)] = &[
    (CLUSTER_WORKERS, "workers known to the master, by state"),
    (
        HEARTBEAT_AGE,
        "seconds since the master last heard from each worker",
    ),
    (WORKER_FAILURES, "workers declared unhealthy, by reason"),
    (
        WIRE_DECODE_ERRORS,
        "cluster messages that did not decode and were dropped",
    ),
    (REGISTRATIONS_REFUSED, "registrations refused by the master"),
];
