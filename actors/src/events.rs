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

/// An event on the bus: numbered by the master, strictly increasing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusEvent {
    pub id: u64,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: BTreeMap<String, String>,
    pub timestamp_ms: u64,
    pub source: String,
    pub correlation_id: String,
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Type patterns (see [`type_matches`]); empty: every type.
    pub types: Vec<String>,
    pub correlation_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &BusEvent) -> bool {
        (self.types.is_empty() || self.types.iter().any(|t| type_matches(t, &e.kind)))
            && self
                .correlation_id
                .as_ref()
                .is_none_or(|c| *c == e.correlation_id)
    }
}

/// Where a node keeps its events across restarts (a file the runtime owns).
pub trait EventSink: Send + Sync + 'static {
    /// Append `events`, in order. An error is logged by the caller; the
    /// events stay on the bus in memory.
    fn append(&self, events: &[std::sync::Arc<BusEvent>]) -> Result<(), String>;
}

/// Events kept in memory by a node's bus.
pub const BUS_KEPT: usize = 50_000;

struct BusInner {
    ring: std::collections::VecDeque<std::sync::Arc<BusEvent>>,
    last_id: u64,
}

/// A node's event bus: the events of the cluster, newest [`BUS_KEPT`] in
/// memory (all of what the sink kept on disk readable after a restart),
/// and a broadcast of each as it comes. On the master's node the master
/// publishes into it; on the others it mirrors what the master sends.
pub struct Bus {
    inner: std::sync::Mutex<BusInner>,
    tx: tokio::sync::broadcast::Sender<std::sync::Arc<BusEvent>>,
    sink: std::sync::Mutex<Option<Box<dyn EventSink>>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("last_id", &self.last_id())
            .finish()
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self {
            inner: std::sync::Mutex::new(BusInner {
                ring: std::collections::VecDeque::new(),
                last_id: 0,
            }),
            tx: tokio::sync::broadcast::channel(4096).0,
            sink: std::sync::Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BusInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a sink kept (oldest first), and the sink for what follows.
    pub fn restore(&self, kept: Vec<BusEvent>, sink: Option<Box<dyn EventSink>>) {
        let mut g = self.lock();
        for e in kept {
            if e.id > g.last_id {
                g.last_id = e.id;
                g.ring.push_back(std::sync::Arc::new(e));
                if g.ring.len() > BUS_KEPT {
                    g.ring.pop_front();
                }
            }
        }
        drop(g);
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }

    /// The id of the newest event.
    pub fn last_id(&self) -> u64 {
        self.lock().last_id
    }

    /// The id of the oldest event still kept (0: none).
    pub fn first_id(&self) -> u64 {
        self.lock().ring.front().map_or(0, |e| e.id)
    }

    /// Number and keep `events` (the master's): what was published.
    pub fn publish(&self, events: Vec<Event>) -> Vec<std::sync::Arc<BusEvent>> {
        let mut g = self.lock();
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            g.last_id += 1;
            out.push(std::sync::Arc::new(BusEvent {
                id: g.last_id,
                kind: e.kind,
                payload: e.payload,
                timestamp_ms: e.timestamp_ms,
                source: e.source,
                correlation_id: e.correlation_id,
            }));
        }
        self.keep(g, &out);
        out
    }

    /// Keep events numbered elsewhere (the master's, on another node):
    /// those not newer than the newest kept are left out.
    pub fn mirror(&self, events: Vec<BusEvent>) -> usize {
        let g = self.lock();
        let fresh: Vec<std::sync::Arc<BusEvent>> = events
            .into_iter()
            .filter(|e| e.id > g.last_id)
            .map(std::sync::Arc::new)
            .collect();
        let n = fresh.len();
        self.keep(g, &fresh);
        n
    }

    fn keep(
        &self,
        mut g: std::sync::MutexGuard<'_, BusInner>,
        events: &[std::sync::Arc<BusEvent>],
    ) {
        if events.is_empty() {
            return;
        }
        for e in events {
            g.last_id = g.last_id.max(e.id);
            g.ring.push_back(e.clone());
        }
        while g.ring.len() > BUS_KEPT {
            g.ring.pop_front();
        }
        // Appended in id order: the lock is held until the sink has them.
        if let Some(sink) = self.sink.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            if let Err(e) = sink.append(events) {
                tracing::warn!(error = %e, "cannot write events to the event log; they stay in memory");
            }
        }
        drop(g);
        for e in events {
            let _ = self.tx.send(e.clone());
        }
    }

    /// Events after `after` that `filter` wants, at most `limit`, oldest first.
    pub fn since(
        &self,
        after: u64,
        filter: &Filter,
        limit: usize,
    ) -> Vec<std::sync::Arc<BusEvent>> {
        let g = self.lock();
        let start = g.ring.partition_point(|e| e.id <= after);
        g.ring
            .range(start..)
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Every event from now on, as it comes (a reader that falls 4,096
    /// behind is told it lagged and reads the rest with [`Bus::since`]).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<BusEvent>> {
        self.tx.subscribe()
    }
}

/// The process group of every node's [`EventsActor`]: the master sends
/// what it publishes there.
pub const EVENTS_GROUP: &str = "orch.events";

/// Most events in one message between nodes (a frame stays far below the
/// cluster link's 16 MiB).
pub const EVENTS_PER_MESSAGE: usize = 500;

/// Messages of [`EventsActor`].
pub enum EventsMsg {
    /// Events the master published, in id order.
    Events(Vec<BusEvent>),
    /// Bytes from the network that did not decode; counted and logged.
    Malformed(String),
}

/// Events before `first` that this node's bus misses (it joined late, or a
/// message was lost), asked of the master.
async fn fill_gap(bus: &Bus, first: u64) {
    use crate::protocol::{AdminReply, AdminRequest};
    let timeout = std::time::Duration::from_secs(2);
    while bus.last_id() + 1 < first {
        let Some((_, master)) = crate::masters::current() else {
            return;
        };
        let after = bus.last_id();
        let req = AdminRequest::Events {
            after,
            limit: EVENTS_PER_MESSAGE as u32,
        };
        let call = master.call(
            |port| crate::master::MasterMsg::Admin(req, port),
            Some(timeout),
        );
        let got = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(ractor::rpc::CallResult::Success(AdminReply::Events(e)))) => e,
            _ => return,
        };
        let wanted: Vec<BusEvent> = got.into_iter().filter(|e| e.id < first).collect();
        if wanted.is_empty() || bus.mirror(wanted) == 0 {
            return;
        }
    }
}

/// A node's receiver of the master's events: it keeps them on the node's
/// bus, so that `GET /v1/events` on any node streams the cluster's events.
pub struct EventsActor;

impl ractor::Actor for EventsActor {
    type Msg = EventsMsg;
    type State = std::sync::Arc<crate::read_model::ReadModel>;
    type Arguments = std::sync::Arc<crate::read_model::ReadModel>;

    async fn pre_start(
        &self,
        myself: ractor::ActorRef<Self::Msg>,
        read_model: Self::Arguments,
    ) -> Result<Self::State, ractor::ActorProcessingErr> {
        ractor::pg::join(EVENTS_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(read_model)
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<Self::Msg>,
        msg: Self::Msg,
        read_model: &mut Self::State,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            EventsMsg::Events(events) => {
                let first = events.first().map_or(0, |e| e.id);
                fill_gap(read_model.bus(), first).await;
                read_model.bus().mirror(events);
            }
            EventsMsg::Malformed(what) => {
                metrics::counter!(crate::metrics::WIRE_DECODE_ERRORS).increment(1);
                tracing::warn!(error = %what, "dropped an undecodable events message");
            }
        }
        Ok(())
    }
}
