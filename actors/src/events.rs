//! Typed events (docs/pipelines.md, the event bus): what sessions,
//! pipelines and schedules did, each with the correlation id of the
//! trigger that caused it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest event type.
pub const MAX_TYPE: usize = 64;

/// One event as the ledger's decisions make it (the bus numbers it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Dotted, lowercase: `pipeline.completed`, `stage.failed`, …
    pub kind: String,
    pub payload: BTreeMap<String, String>,
    /// Unix milliseconds (the ledger's clock).
    pub timestamp_ms: u64,
    /// What emitted it: `master`, `pipeline:NAME`, `schedule:NAME`.
    pub source: String,
    pub correlation_id: String,
}

impl Event {
    pub fn new(kind: &str, source: String, correlation_id: &str, now_ms: u64) -> Self {
        Self {
            kind: kind.to_string(),
            payload: BTreeMap::new(),
            timestamp_ms: now_ms,
            source,
            correlation_id: correlation_id.to_string(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.payload.insert(key.to_string(), value.into());
        self
    }

    /// Whether every `filter` key names a payload field of that value.
    pub fn matches(&self, filter: &BTreeMap<String, String>) -> bool {
        filter.iter().all(|(k, v)| self.payload.get(k) == Some(v))
    }
}

/// Whether `t` may be an event type: dotted lowercase words (`a-z 0-9 _`).
pub fn valid_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TYPE
        && t.split('.').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
}

/// Whether event type `kind` matches `pattern`: equal, or `pattern` ends in
/// `.*` and `kind` starts with what is before it (`session.*`), or `*`.
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}
