//! Webhooks (docs/pipelines.md): every event of this node's bus that a
//! `[[webhook]]` wants is POSTed to its URL as JSON, signed with
//! HMAC-SHA256 of the body (`X-Orch-Signature: sha256=HEX`), with its id
//! (`X-Orch-Event-Id`) for the receiver to drop what it saw already.
//!
//! A delivery is tried until the endpoint answers 2xx, with a backoff of
//! 500 ms doubling to 30 s; what was delivered is written down
//! (`{data_dir}/events/webhook-{name}.cursor`) after each delivery, and the
//! events wait in the node's event log, so a restart of the node, or an
//! endpoint down for a while, loses none (at least once). Each webhook is
//! its own task on a blocking thread: a dead endpoint never slows the
//! master. Events older than the log keeps (about 64 MiB) are skipped,
//! counted in `orch_webhook_events_skipped_total`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use orch_actors::events::{BusEvent, Filter};
use orch_actors::read_model::ReadModel;
use sha2::Sha256;
use tracing::{info, warn};

use crate::config::WebhookConfig;
use crate::metrics as m;

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The signature header's value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    format!(
        "sha256={}",
        crate::outputs::hex(&mac.finalize().into_bytes())
    )
}

fn cursor_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir
        .join("events")
        .join(format!("webhook-{name}.cursor"))
}

fn read_cursor(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn write_cursor(path: &Path, id: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("cursor.tmp");
    std::fs::write(&tmp, id.to_string())?;
    std::fs::rename(&tmp, path)
}

/// Start a delivery task for each webhook.
pub fn start(node: &str, data_dir: &Path, hooks: &[WebhookConfig], read_model: Arc<ReadModel>) {
    for hook in hooks {
        let (node, data_dir, hook, rm) = (
            node.to_string(),
            data_dir.to_path_buf(),
            hook.clone(),
            read_model.clone(),
        );
        let name = hook.name.clone();
        if let Err(e) = std::thread::Builder::new()
            .name(format!("webhook-{name}"))
            .spawn(move || deliver_forever(&node, &data_dir, &hook, &rm))
        {
            warn!(webhook = %name, error = %e, "cannot start the webhook's thread");
        }
    }
}

fn deliver_forever(node: &str, data_dir: &Path, hook: &WebhookConfig, rm: &ReadModel) {
    let bus = rm.bus();
    let path = cursor_path(data_dir, &hook.name);
    // A new webhook starts with what comes next, not the whole history.
    let mut cursor = match read_cursor(&path) {
        Some(c) => c,
        None => {
            let now = bus.last_id();
            let _ = write_cursor(&path, now);
            now
        }
    };
    info!(node_id = %node, webhook = %hook.name, url = %hook.url, from = cursor, "webhook delivering events");
    let filter = Filter {
        types: hook.events.clone(),
        correlation_id: None,
    };
    let mut agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .timeout(TIMEOUT);
    if let Some(tls) = &hook.tls {
        agent = agent.tls_config(tls.clone());
    }
    let agent = agent.build();
    let mut live = bus.subscribe();
    loop {
        let first = bus.first_id();
        if first > cursor + 1 {
            let skipped = first - cursor - 1;
            metrics::counter!(m::WEBHOOK_SKIPPED, "webhook" => hook.name.clone())
                .increment(skipped);
            warn!(node_id = %node, webhook = %hook.name, skipped, "events older than the log keeps were never delivered");
            cursor = first - 1;
        }
        let batch = bus.since(cursor, &filter, 100);
        if batch.is_empty() {
            // Nothing wanted up to the newest: the cursor moves past what was not.
            let newest = bus.last_id();
            if newest > cursor {
                cursor = newest;
                let _ = write_cursor(&path, cursor);
            }
            // Wait for the next event.
            let rt = live.blocking_recv();
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = rt {
                return;
            }
            continue;
        }
        for e in batch {
            deliver(node, hook, &agent, &e);
            cursor = e.id;
            if let Err(err) = write_cursor(&path, cursor) {
                warn!(node_id = %node, webhook = %hook.name, error = %err, "cannot write the webhook's cursor");
            }
        }
    }
}

/// POST `e` until the endpoint takes it.
fn deliver(node: &str, hook: &WebhookConfig, agent: &ureq::Agent, e: &BusEvent) {
    let body = serde_json::to_vec(e).unwrap_or_default();
    let sig = signature(hook.secret.expose(), &body);
    let mut wait = BACKOFF_FIRST;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let sent = agent
            .post(&hook.url)
            .set("Content-Type", "application/json")
            .set("X-Orch-Event-Id", &e.id.to_string())
            .set("X-Orch-Event-Type", &e.kind)
            .set("X-Orch-Delivery-Attempt", &attempt.to_string())
            .set("X-Orch-Signature", &sig)
            .send_bytes(&body);
        let why = match sent {
            Ok(_) => {
                metrics::counter!(m::WEBHOOK_DELIVERIES, "webhook" => hook.name.clone(), "result" => "delivered").increment(1);
                return;
            }
            Err(ureq::Error::Status(code, _)) => format!("answered {code}"),
            Err(ureq::Error::Transport(t)) => t.to_string(),
        };
        metrics::counter!(m::WEBHOOK_DELIVERIES, "webhook" => hook.name.clone(), "result" => "retried").increment(1);
        if attempt == 1 || attempt.is_multiple_of(20) {
            warn!(node_id = %node, webhook = %hook.name, event = e.id, attempt, error = %why, "webhook delivery failed; trying again");
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(BACKOFF_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
