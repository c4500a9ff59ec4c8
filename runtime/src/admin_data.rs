//! The admin API's reads of files on any node (docs/collection.md,
//! docs/logs.md): a session's tasks, an attempt's log (read on the worker
//! that ran it), and the collected outputs (read on the session's
//! collector). Another node's files come over its data plane, streamed:
//! the admin node holds at most a few chunks of a file at once.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orch_actors::masters;
use orch_actors::protocol::{
    AdminReply, AdminRequest, AttemptView, Collection, Manifest, TaskView, COLLECT_MASTER,
    MAX_TASKS_PAGE,
};
use serde_json::json;

use crate::admin::{ask_master, json, unexpected, AdminCtx, ApiError};
use crate::data_plane::LOG_OPEN_HEADER;

/// The node that collects a session whose view or manifest says `collect`.
fn collector_node(collect: &str) -> Option<String> {
    match collect {
        "" => None,
        COLLECT_MASTER => masters::current().map(|(c, _)| c.node),
        node => Some(node.to_string()),
    }
}

/// The data plane address of `node`.
async fn data_addr(ctx: &AdminCtx, node: &str) -> Result<String, ApiError> {
    match ask_master(ctx, AdminRequest::Workers).await? {
        AdminReply::Workers(ws) => ws
            .into_iter()
            .find(|w| w.node == node)
            .and_then(|w| w.data)
            .ok_or_else(|| {
                ApiError(
                    StatusCode::BAD_GATEWAY,
                    format!("node `{node}` is not registered with a data plane; its files cannot be read now"),
                )
            }),
        _ => Err(unexpected()),
    }
}

/// GET `path` of `node`'s data plane, streamed through, status and
/// headers (those that matter) kept.
async fn proxy(
    ctx: &AdminCtx,
    node: &str,
    path: String,
    range: Option<String>,
) -> Result<Response, ApiError> {
    let addr = data_addr(ctx, node).await?;
    let token = ctx.data.token.clone();
    let url = crate::data_plane::url(&addr, &path);
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let mut req = crate::data_plane::agent()
            .get(&url)
            .set("Authorization", &format!("Bearer {token}"));
        if let Some(r) = &range {
            req = req.set("Range", r);
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => {
                let _ = head_tx.send(Err(format!(
                    "cannot reach node's data plane at `{addr}`: {e}"
                )));
                return;
            }
        };
        let keep = [
            header::CONTENT_TYPE.as_str(),
            header::CONTENT_LENGTH.as_str(),
            header::CONTENT_RANGE.as_str(),
            header::ACCEPT_RANGES.as_str(),
            LOG_OPEN_HEADER,
        ];
        let headers: Vec<(String, String)> = keep
            .iter()
            .filter_map(|h| resp.header(h).map(|v| (h.to_string(), v.to_string())))
            .collect();
        let _ = head_tx.send(Ok((resp.status(), headers)));
        let mut reader = resp.into_reader();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match std::io::Read::read(&mut reader, &mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if tx
                        .blocking_send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let (status, headers) = head_rx
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::BAD_GATEWAY,
                "the data plane request failed".into(),
            )
        })?
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e))?;
    let stream = Stream(rx);
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (header::HeaderName::try_from(k), HeaderValue::from_str(&v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}

struct Stream(tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>);

impl futures_core::Stream for Stream {
    type Item = std::io::Result<bytes::Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The collector's state of a session, wherever it runs (`None`: not
/// collected, or the collector cannot be read now).
pub(crate) async fn collection_of(
    ctx: &AdminCtx,
    session: &str,
    collect: &str,
) -> Option<Collection> {
    let node = collector_node(collect)?;
    if node == ctx.node {
        return crate::collect::read_state(&ctx.data.data_dir, session)
            .ok()
            .flatten();
    }
    let resp = proxy(ctx, &node, format!("/v1/collected/{session}"), None)
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 256 * 1024 * 1024)
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[derive(serde::Deserialize)]
pub(crate) struct TasksQuery {
    #[serde(default)]
    from: u64,
    limit: Option<u32>,
}

/// The tasks of a session whose ledger left memory, from its manifest.
fn tasks_from_manifest(m: &Manifest, from: u64, limit: u32) -> Vec<TaskView> {
    let mut by_task: std::collections::BTreeMap<u64, TaskView> = Default::default();
    let end = from.saturating_add(u64::from(limit));
    fn entry(
        by_task: &mut std::collections::BTreeMap<u64, TaskView>,
        task: u64,
        frames: orch_actors::protocol::FrameRange,
    ) -> &mut TaskView {
        by_task.entry(task).or_insert_with(|| TaskView {
            task,
            frames,
            state: "done".into(),
            attempt: 0,
            replayed: false,
            error: None,
            attempts: Vec::new(),
        })
    }
    for r in m.ranges.iter().filter(|r| (from..end).contains(&r.task)) {
        let v = entry(&mut by_task, r.task, r.frames);
        v.attempt = v.attempt.max(r.attempt);
        v.attempts.push(AttemptView {
            attempt: r.attempt,
            node: r.node.clone(),
            device: r.device.clone(),
            outcome: "produced".into(),
            started_ms: Some(r.started_ms),
            finished_ms: Some(r.finished_ms),
        });
    }
    for f in m.failed.iter().filter(|f| (from..end).contains(&f.task)) {
        let v = entry(&mut by_task, f.task, f.frames);
        v.state = "failed".into();
        v.attempt = v.attempt.max(f.attempts);
        v.error = Some(f.error.clone());
        if let (Some(node), Some(device)) = (&f.node, &f.device) {
            v.attempts.push(AttemptView {
                attempt: f.attempts,
                node: node.clone(),
                device: device.clone(),
                outcome: "failed".into(),
                started_ms: None,
                finished_ms: None,
            });
        }
    }
    for r in m.replay.iter().filter(|r| (from..end).contains(&r.task)) {
        let v = entry(&mut by_task, r.task, r.frames);
        v.replayed = true;
        v.attempts.push(AttemptView {
            attempt: r.old_attempt,
            node: r.node.clone(),
            device: r.device.clone(),
            outcome: r.reason.as_str().to_string(),
            started_ms: None,
            finished_ms: None,
        });
    }
    let mut out: Vec<TaskView> = by_task.into_values().collect();
    for v in &mut out {
        v.attempts.sort_by_key(|a| a.attempt);
    }
    out
}

async fn tasks_of(
    ctx: &AdminCtx,
    id: &str,
    from: u64,
    limit: u32,
) -> Result<Vec<TaskView>, ApiError> {
    let req = AdminRequest::Tasks {
        session: id.to_string(),
        from,
        limit,
    };
    match ask_master(ctx, req).await {
        Ok(AdminReply::Tasks(t)) => Ok(t),
        Ok(_) => Err(unexpected()),
        // Left the master's memory: its manifest has what it did.
        Err(ApiError(StatusCode::BAD_REQUEST, _)) => {
            match ask_master(ctx, AdminRequest::Manifest(id.to_string())).await? {
                AdminReply::Manifest(m) => Ok(tasks_from_manifest(&m, from, limit)),
                _ => Err(unexpected()),
            }
        }
        Err(e) => Err(e),
    }
}

pub(crate) async fn tasks(
    State(ctx): State<Arc<AdminCtx>>,
    Path(id): Path<String>,
    Query(q): Query<TasksQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(1000).min(MAX_TASKS_PAGE);
    json(tasks_of(&ctx, &id, q.from, limit).await?)
}

#[derive(serde::Deserialize)]
pub(crate) struct LogQuery {
    attempt: Option<u32>,
    #[serde(default)]
    offset: u64,
}

pub(crate) async fn log(
    State(ctx): State<Arc<AdminCtx>>,
    Path((id, task)): Path<(String, u64)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let views = tasks_of(&ctx, &id, task, 1).await?;
    let Some(view) = views.into_iter().find(|v| v.task == task) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("session `{id}` has no task {task}"),
        ));
    };
    let attempt = q
        .attempt
        .or_else(|| view.attempts.last().map(|a| a.attempt));
    let Some(a) = attempt.and_then(|n| view.attempts.iter().rev().find(|a| a.attempt == n)) else {
        let what = match attempt {
            Some(n) => format!("attempt {n} of task {task} of `{id}` is not known to have run (attempts that ran: {})", list(&view.attempts)),
            None => format!("task {task} of `{id}` has not run yet"),
        };
        return Err(ApiError(StatusCode::NOT_FOUND, what));
    };
    let path = format!("/v1/logs/{id}/{task}/{}?offset={}", a.attempt, q.offset);
    let mut resp = if a.node == ctx.node {
        let Some(rel) = crate::task_log::rel_path(&id, task, a.attempt) else {
            return Err(ApiError(StatusCode::BAD_REQUEST, "not a session id".into()));
        };
        let file = ctx.data.data_dir.join(rel);
        let offset = q.offset;
        let read = tokio::task::spawn_blocking(move || {
            crate::task_log::read_from(&file, offset, crate::data_plane::LOG_CHUNK)
        })
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        match read {
            Ok((bytes, open)) => {
                let mut r = (StatusCode::OK, bytes).into_response();
                r.headers_mut().insert(LOG_OPEN_HEADER, HeaderValue::from_static(if open { "true" } else { "false" }));
                r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                r
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ApiError(StatusCode::NOT_FOUND, format!("node `{}` has no log of task {task} attempt {} of `{id}` (it wrote nothing, or its executor keeps none)", a.node, a.attempt)))
            }
            Err(e) => return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    } else {
        proxy(&ctx, &a.node, path, None).await?
    };
    // Still running as far as the master knows: more may come.
    let running = a.outcome == "running";
    let open = resp
        .headers()
        .get(LOG_OPEN_HEADER)
        .is_some_and(|v| v == "true");
    resp.headers_mut().insert(
        LOG_OPEN_HEADER,
        HeaderValue::from_static(if open || running { "true" } else { "false" }),
    );
    if let (Ok(n), Ok(d)) = (
        HeaderValue::from_str(&a.node),
        HeaderValue::from_str(&a.device),
    ) {
        resp.headers_mut().insert("x-orch-node", n);
        resp.headers_mut().insert("x-orch-device", d);
    }
    resp.headers_mut()
        .insert("x-orch-attempt", HeaderValue::from(a.attempt));
    Ok(resp)
}

fn list(attempts: &[AttemptView]) -> String {
    if attempts.is_empty() {
        return "none".into();
    }
    attempts
        .iter()
        .map(|a| a.attempt.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The collector of session `id`, from its view.
async fn collector_of_session(ctx: &AdminCtx, id: &str) -> Result<String, ApiError> {
    let collect = match ask_master(ctx, AdminRequest::Session(id.to_string())).await? {
        AdminReply::Session(v) => v.collect,
        _ => return Err(unexpected()),
    };
    collector_node(&collect).ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("session `{id}` collects no outputs (`collect = \"none\"`, or its executor writes no files)"),
        )
    })
}

pub(crate) async fn output(
    State(ctx): State<Arc<AdminCtx>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let node = collector_of_session(&ctx, &id).await?;
    match collection_of(&ctx, &id, &node).await {
        Some(c) => json(c),
        None => json(json!({
            "node": node,
            "dir": crate::collect::output_rel(&id),
            "settled": false,
            "collected": 0, "pending": 0, "failed": 0, "uncollected": 0, "conflicts": 0,
            "files": [],
        })),
    }
}

pub(crate) async fn output_file(
    State(ctx): State<Arc<AdminCtx>>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !crate::outputs::safe_rel(&name) || !crate::outputs::safe_component(&id) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "`{}` is not a plain relative file name",
                crate::config::clip(&name, 200)
            ),
        ));
    }
    let node = collector_of_session(&ctx, &id).await?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if node == ctx.node {
        // This node's own data plane code serves it, Range and all.
        let path = ctx
            .data
            .data_dir
            .join(crate::collect::output_rel(&id))
            .join(&name);
        return Ok(crate::data_plane::serve_local(&ctx.node, &path, &headers).await);
    }
    proxy(
        &ctx,
        &node,
        format!("/v1/collected/{id}/files/{name}"),
        range,
    )
    .await
}
