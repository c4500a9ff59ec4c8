//! Metric names of the runtime crate, and the Prometheus exporter (docs/operating.md).

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;
use orch_actors::protocol::{DownReason, MemberState};

/// Counter: cluster connections closed before they authenticated (wrong secret, garbage).
pub const AUTH_FAILURES: &str = "orch_cluster_auth_failures_total";
/// Gauge: configured peers this node holds an authenticated session to.
pub const PEERS_CONNECTED: &str = "orch_cluster_peers_connected";
/// Gauge: authenticated node sessions, incoming and outgoing.
pub const SESSIONS: &str = "orch_cluster_sessions";
/// Counter: failed TCP dials of configured peers.
pub const DIAL_FAILURES: &str = "orch_cluster_dial_failures_total";
/// Counter, label `event` (up / down): node sessions authenticated and lost.
pub const NODE_EVENTS: &str = "orch_cluster_node_events_total";
/// Counter, label `reason`: inbound cluster connections closed before they
/// authenticated because of a limit (see `cluster_port::REFUSAL_REASONS`).
pub const CONNECTIONS_REFUSED: &str = "orch_cluster_connections_refused_total";
/// Gauge: inbound cluster connections not authenticated yet.
pub const UNAUTHENTICATED: &str = "orch_cluster_unauthenticated_connections";
/// Counter: failed `accept` calls on the cluster port (`EMFILE`, ...).
pub const ACCEPT_ERRORS: &str = "orch_cluster_accept_errors_total";
/// Counter, labels `route` and `code`: admin API requests.
pub const ADMIN_REQUESTS: &str = "orch_admin_requests_total";
/// Counter, label `reason` (no_token / wrong_token): data plane requests refused.
pub const DATA_PLANE_REJECTED: &str = "orch_data_plane_rejected_total";
/// Counter, label `direction` (sent / received): bytes of files moved on the data plane.
pub const DATA_PLANE_BYTES: &str = "orch_data_plane_bytes_total";
/// Counter, label `result` (see [`COLLECT_RESULTS`]): outputs the collector handled.
pub const COLLECTED_FILES: &str = "orch_collected_files_total";
/// Values of the `result` label of [`COLLECTED_FILES`].
pub const COLLECT_RESULTS: &[&str] =
    &["collected", "mismatch", "failed", "conflict", "unreachable"];

/// Counter, labels `webhook` and `result` (delivered / retried): webhook deliveries.
pub const WEBHOOK_DELIVERIES: &str = "orch_webhook_deliveries_total";
/// Counter, label `webhook`: events the log no longer held when their webhook got to them.
pub const WEBHOOK_SKIPPED: &str = "orch_webhook_events_skipped_total";

/// Counter, labels `port` (`admin`, `data`) and `reason`: TLS connections
/// refused before HTTP (handshake failed, timed out, too many at once).
pub const TLS_HANDSHAKE_FAILURES: &str = "orch_tls_handshake_failures_total";

/// Every metric of this crate with its help text.
pub const CATALOG: &[(&str, &str)] = &[
    (
        TLS_HANDSHAKE_FAILURES,
        "TLS connections to the admin API or the data plane refused before HTTP, by port and reason",
    ),
    (WEBHOOK_DELIVERIES, "webhook deliveries, by webhook and result (delivered, retried)"),
    (WEBHOOK_SKIPPED, "events older than the event log keeps, never delivered to a webhook"),
    (
        AUTH_FAILURES,
        "cluster connections closed before authentication",
    ),
    (
        PEERS_CONNECTED,
        "configured peers with an authenticated session",
    ),
    (SESSIONS, "authenticated node sessions"),
    (DIAL_FAILURES, "failed dials of configured peers"),
    (
        NODE_EVENTS,
        "node sessions authenticated (up) and lost (down)",
    ),
    (
        ADMIN_REQUESTS,
        "admin API requests by route and status code",
    ),
    (
        CONNECTIONS_REFUSED,
        "inbound cluster connections closed before authentication by a limit, by reason",
    ),
    (
        UNAUTHENTICATED,
        "inbound cluster connections not authenticated yet",
    ),
    (ACCEPT_ERRORS, "failed accepts on the cluster port"),
    (
        DATA_PLANE_REJECTED,
        "data plane requests refused for a missing or wrong token, by reason",
    ),
    (
        DATA_PLANE_BYTES,
        "bytes of output files sent and received on the data plane",
    ),
    (
        COLLECTED_FILES,
        "outputs the collector collected, found mismatched, failed, found in conflict or could not reach",
    ),
];

/// Install the global recorder and serve `/metrics` on `listen`.
pub fn install_exporter(listen: SocketAddr) -> anyhow::Result<()> {
    // Bind first so that a taken port is one clear error, not a background log line.
    drop(std::net::TcpListener::bind(listen).map_err(|e| {
        anyhow::anyhow!("cannot open the metrics port `{listen}` (`metrics.listen`): {e}")
    })?);
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(orch_actors::metrics::TASK_DURATION.into()),
            &[
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0,
            ],
        )
        .map_err(|e| anyhow::anyhow!("cannot configure the metrics exporter: {e}"))?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                orch_actors::metrics::STORE_COMMIT_DURATION.into(),
            ),
            &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
        )
        .map_err(|e| anyhow::anyhow!("cannot configure the metrics exporter: {e}"))?
        .install()
        .map_err(|e| anyhow::anyhow!("cannot start the metrics exporter on `{listen}`: {e}"))?;
    for (name, help) in CATALOG.iter().chain(orch_actors::metrics::CATALOG) {
        if *name == orch_actors::metrics::TASK_DURATION
            || *name == orch_actors::metrics::STORE_COMMIT_DURATION
        {
            metrics::describe_histogram!(*name, metrics::Unit::Seconds, *help);
        } else {
            metrics::describe_counter!(*name, *help);
        }
    }
    // Make every series visible from the first scrape.
    use orch_actors::metrics as am;
    for name in [
        AUTH_FAILURES,
        DIAL_FAILURES,
        ACCEPT_ERRORS,
        am::WIRE_DECODE_ERRORS,
        am::REGISTRATIONS_REFUSED,
        am::MASTER_CLAIMS_REFUSED,
        am::TASKS_ASSIGNED,
        am::TASKS_COMPLETED,
        am::TASKS_FAILED,
        am::TASKS_REJECTED_STALE,
        am::FRAMES_REASSIGNED,
        am::FRAMES_COMPLETED,
        am::SESSIONS_SUBMITTED,
        am::STORE_COMMITS,
        am::STORE_EVENTS,
        am::STORE_ERRORS,
        am::OUTBOX_RESENT,
        am::MASTER_STALLS,
        am::SESSION_ACTOR_RESTARTS,
        am::TASKS_SKIPPED_OFFLINE,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [
        PEERS_CONNECTED,
        SESSIONS,
        UNAUTHENTICATED,
        am::TASKS_INFLIGHT,
        am::SESSIONS_RUNNING,
        am::OUTBOX_PENDING,
        am::MASTER_LAST_STALL,
    ] {
        metrics::gauge!(name).set(0.0);
    }
    for reason in crate::cluster_port::REFUSAL_REASONS {
        metrics::counter!(CONNECTIONS_REFUSED, "reason" => *reason).increment(0);
    }
    for port in ["admin", "data"] {
        for reason in ["handshake", "timeout", "too_many"] {
            metrics::counter!(TLS_HANDSHAKE_FAILURES, "port" => port, "reason" => reason)
                .increment(0);
        }
    }
    for reason in ["no_token", "wrong_token"] {
        metrics::counter!(DATA_PLANE_REJECTED, "reason" => reason).increment(0);
    }
    for direction in ["sent", "received"] {
        metrics::counter!(DATA_PLANE_BYTES, "direction" => direction).increment(0);
    }
    for result in COLLECT_RESULTS {
        metrics::counter!(COLLECTED_FILES, "result" => *result).increment(0);
    }
    for event in ["up", "down"] {
        metrics::counter!(NODE_EVENTS, "event" => event).increment(0);
    }
    for reason in am::FAILOVER_REASONS {
        metrics::counter!(am::FAILOVERS, "reason" => *reason).increment(0);
        metrics::counter!(am::TASKS_LOST, "reason" => *reason).increment(0);
    }
    metrics::histogram!(am::TASK_DURATION).record(0.0);
    metrics::histogram!(am::STORE_COMMIT_DURATION).record(0.0);
    for state in ["completed", "partial", "failed", "cancelled"] {
        metrics::counter!(am::SESSIONS_FINISHED, "state" => state).increment(0);
    }
    for reason in DownReason::ALL.iter().filter(|r| r.is_failure()) {
        metrics::counter!(orch_actors::metrics::WORKER_FAILURES, "reason" => reason.as_str())
            .increment(0);
    }
    for state in MemberState::ALL {
        metrics::gauge!(orch_actors::metrics::CLUSTER_WORKERS, "state" => state.as_str()).set(0.0);
    }
    Ok(())
}
