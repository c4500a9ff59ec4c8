//! `GET /v1/events` (docs/pipelines.md, the event bus): the events this
//! node's bus holds, as JSON, or followed as server-sent events, resumable
//! with `Last-Event-ID`.
//!
//! Query: `type` (comma-separated patterns: `session.*,pipeline.completed`),
//! `correlation`, `since` (an event id: those after it), `limit` (JSON, at
//! most [`MAX_LIMIT`]), `follow=true` (or `Accept: text/event-stream`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use orch_actors::events::{valid_type, BusEvent, Filter};
use tokio::sync::mpsc;

use crate::admin::{json, AdminCtx, ApiError};

/// Most events one JSON answer holds.
pub const MAX_LIMIT: usize = 10_000;
/// A comment line this often keeps a quiet stream open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsQuery {
    #[serde(rename = "type")]
    types: Option<String>,
    correlation: Option<String>,
    since: Option<u64>,
    limit: Option<usize>,
    follow: Option<bool>,
}

fn bad(msg: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg)
}

/// The filter a query asks for, checked.
fn filter(q: &EventsQuery) -> Result<Filter, ApiError> {
    let mut types = Vec::new();
    for t in q
        .types
        .iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let base = t
            .strip_suffix(".*")
            .or_else(|| t.strip_suffix('*'))
            .unwrap_or(t);
        if t != "*" && !valid_type(base) {
            return Err(bad(format!(
                "invalid `type`: expected event types or patterns such as `session.*` or `pipeline.completed`, got `{}`",
                crate::config::shown(t)
            )));
        }
        types.push(t.to_string());
    }
    if types.len() > 64 {
        return Err(bad("invalid `type`: at most 64 patterns".into()));
    }
    if let Some(c) = &q.correlation {
        if c.is_empty() || c.len() > 128 {
            return Err(bad(
                "invalid `correlation`: expected 1 to 128 characters".into()
            ));
        }
    }
    Ok(Filter {
        types,
        correlation_id: q.correlation.clone(),
    })
}

/// One event as a server-sent event.
fn sse(e: &BusEvent) -> Bytes {
    let data = serde_json::to_string(e).unwrap_or_default();
    Bytes::from(format!("id: {}\nevent: {}\ndata: {data}\n\n", e.id, e.kind))
}

struct Rx(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Rx {
    type Item = Result<Bytes, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(Ok))
    }
}

pub(crate) async fn events(
    State(ctx): State<Arc<AdminCtx>>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let f = filter(&q)?;
    let streaming = q.follow == Some(true)
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
    let resume = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(
                    || bad("invalid `Last-Event-ID` header: expected an event id".into()),
                )?,
        ),
    };
    let since = resume.or(q.since).unwrap_or(0);
    if !streaming {
        let limit = q.limit.unwrap_or(1_000).clamp(1, MAX_LIMIT);
        let got: Vec<BusEvent> = ctx
            .read_model
            .bus()
            .since(since, &f, limit)
            .iter()
            .map(|e| (**e).clone())
            .collect();
        return json(got);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let read_model = ctx.read_model.clone();
    tokio::spawn(async move {
        let bus = read_model.bus();
        // Subscribed first: nothing published while the backlog is read is missed.
        let mut live = bus.subscribe();
        let first = bus.first_id();
        if since + 1 < first {
            let note = format!(
                ": events {}..{} are no longer kept; the oldest kept follows\n\n",
                since + 1,
                first - 1
            );
            if tx.send(Bytes::from(note)).await.is_err() {
                return;
            }
        }
        let mut last = since;
        let backfill = |last: &mut u64| -> Vec<Bytes> {
            let mut out = Vec::new();
            loop {
                let batch = bus.since(*last, &f, 1_000);
                let Some(end) = batch.last().map(|e| e.id) else {
                    break;
                };
                out.extend(batch.iter().map(|e| sse(e)));
                *last = end;
                if out.len() >= 10_000 {
                    break;
                }
            }
            out
        };
        loop {
            for b in backfill(&mut last) {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
            if bus.since(last, &f, 1).is_empty() {
                break;
            }
        }
        loop {
            let next = tokio::time::timeout(KEEP_ALIVE, live.recv()).await;
            let out = match next {
                Err(_) => vec![Bytes::from_static(b": keep-alive\n\n")],
                Ok(Ok(e)) if e.id > last => {
                    last = e.id;
                    if f.matches(&e) {
                        vec![sse(&e)]
                    } else {
                        continue;
                    }
                }
                Ok(Ok(_)) => continue,
                // Fell behind the broadcast: read the rest from the bus.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => backfill(&mut last),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
            };
            for b in out {
                if tx.send(b).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut resp = Body::from_stream(Rx(rx)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}
