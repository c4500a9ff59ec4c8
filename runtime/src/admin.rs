//! The admin HTTP API (docs/operating.md). Every request becomes a message to the
//! master actor, local or remote (any node forwards to the master).
//! A bearer token is required whenever one is configured; the config refuses a
//! non-loopback listener without one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use orch_actors::master::MasterMsg;
use orch_actors::masters;
use orch_actors::protocol::{AdminReply, AdminRequest};
use orch_actors::read_model::ReadModel;
use ractor::rpc::CallResult;
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics as m;

/// Largest request body (a session file); it must also fit one cluster frame.
const MAX_BODY: usize = 8 * 1024 * 1024;

/// How long an admin request waits for the master.
const MASTER_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct AdminCtx {
    pub(crate) node: String,
    tokens: crate::tokens::Tokens,
    /// What this node's master publishes (read while it is the current master).
    pub(crate) read_model: Arc<ReadModel>,
    /// This node's files, and the token of the other nodes' data planes
    /// (logs and collected outputs are read there).
    pub(crate) data: DataAccess,
}

/// What the admin API needs to read logs and outputs on any node.
#[derive(Clone)]
pub struct DataAccess {
    pub data_dir: std::path::PathBuf,
    pub token: String,
}

/// An error answer: a status code and one clear line.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

/// Longest error message sent.
const MAX_ERROR: usize = 1024;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": crate::config::clip(&self.1, MAX_ERROR),
            "code": self.0.as_u16(),
        });
        (self.0, Json(body)).into_response()
    }
}

/// Every error answer in the API's shape, also those axum makes itself
/// (a body over the limit, a path that does not parse): JSON with the code
/// and one line.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let msg = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("request body too large: at most {MAX_BODY} bytes")
        }
        _ if text.is_empty() => status.canonical_reason().unwrap_or("error").to_lowercase(),
        _ => text.replace('\n', " "),
    };
    ApiError(status, msg).into_response()
}

/// Bind the admin listener (a taken port is one clear error).
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the admin port `{listen}` (`admin.listen`): {e}"))
}

/// The admin router for this node.
pub fn router(
    node: String,
    tokens: crate::tokens::Tokens,
    read_model: Arc<ReadModel>,
    data: DataAccess,
) -> Router {
    let ctx = Arc::new(AdminCtx {
        node,
        tokens,
        read_model,
        data,
    });
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/workers", get(workers))
        .route("/v1/sessions", get(sessions).post(submit))
        .route("/v1/sessions/{id}", get(session))
        .route("/v1/sessions/{id}/manifest", get(manifest))
        .route("/v1/sessions/{id}/tasks", get(crate::admin_data::tasks))
        .route(
            "/v1/sessions/{id}/tasks/{task}/log",
            get(crate::admin_data::log),
        )
        .route("/v1/sessions/{id}/output", get(crate::admin_data::output))
        .route(
            "/v1/sessions/{id}/output/{*name}",
            get(crate::admin_data::output_file),
        )
        .route("/v1/sessions/{id}/cancel", post(cancel))
        .route("/v1/sessions/{id}/pause", post(pause))
        .route("/v1/sessions/{id}/resume", post(resume))
        .route("/v1/sessions/{id}/retry", post(retry))
        .route("/v1/sessions/{id}/tasks/{task}/requeue", post(requeue))
        .route("/v1/workflows", get(workflows).post(add_workflow))
        .route("/v1/workflows/{name}", get(workflow))
        .route(
            "/v1/pipelines",
            get(crate::admin_pipelines::list).post(crate::admin_pipelines::add),
        )
        .route("/v1/pipelines/{name}", get(crate::admin_pipelines::show))
        .route(
            "/v1/pipelines/{name}/runs",
            get(crate::admin_pipelines::runs).post(crate::admin_pipelines::start),
        )
        .route("/v1/runs/{run}", get(crate::admin_pipelines::run))
        .route("/v1/events", get(crate::admin_events::events))
        .route(
            "/v1/runs/{run}/cancel",
            post(crate::admin_pipelines::cancel),
        )
        .route("/v1/runs/{run}/rerun", post(crate::admin_pipelines::rerun))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/grid", get(device_grid))
        .route("/v1/nodes/{node}/drain", post(drain))
        .route("/v1/nodes/{node}/undrain", post(undrain))
        .route(
            "/v1/nodes/{node}/devices/{device}/restart",
            post(restart_device),
        )
        .route("/v1/nodes/{node}/devices/{device}/kill", post(kill_device))
        .route(
            "/v1/nodes/{node}/devices/{device}/unblock",
            post(unblock_device),
        )
        .route("/", get(status_page))
        .route("/sessions/{id}", get(session_page))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctx.clone(), authorize))
        .layer(middleware::map_response(json_errors))
        .with_state(ctx)
}

/// Equal bytes, compared in time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(ctx): State<Arc<AdminCtx>>, req: Request, next: Next) -> Response {
    let route = req.uri().path().to_string();
    let method = req.method().clone();
    let mutating = method != axum::http::Method::GET && method != axum::http::Method::HEAD;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let needs = crate::tokens::required(&method, &route);
    // Who asks, for the audit log: a token's label and role, never the token.
    let mut who = ("none".to_string(), "none");
    let response = if is_page(&route) || !ctx.tokens.required() {
        // The pages themselves hold no data; their API calls carry the token.
        next.run(req).await
    } else {
        match given.as_deref().map(|t| ctx.tokens.caller(t)) {
            None => ApiError(
                StatusCode::UNAUTHORIZED,
                "missing bearer token: this admin endpoint requires `Authorization: Bearer <token>`".into(),
            )
            .into_response(),
            Some(None) => {
                tracing::warn!(node_id = %ctx.node, %route, "admin request with a wrong token");
                who.0 = "unknown".into();
                ApiError(StatusCode::UNAUTHORIZED, "wrong bearer token".into()).into_response()
            }
            Some(Some(caller)) => {
                who = (caller.label.clone(), caller.role.as_str());
                if caller.role < needs {
                    ApiError(
                        StatusCode::FORBIDDEN,
                        format!(
                            "token `{}` has role `{}`; `{method} {route}` needs role `{needs}`",
                            caller.label, caller.role
                        ),
                    )
                    .into_response()
                } else {
                    next.run(req).await
                }
            }
        }
    };
    let status = response.status().as_u16();
    if mutating || status == 403 {
        tracing::info!(target: "orch::audit", node_id = %ctx.node, token = %who.0, role = %who.1, method = %method, action = %route, status, "admin command");
    }
    let known = matches!(
        route.as_str(),
        "/v1/status" | "/v1/workers" | "/v1/sessions" | "/v1/devices" | "/"
    );
    metrics::counter!(m::ADMIN_REQUESTS,
        "route" => if known { route } else { "other".to_string() },
        "code" => status.to_string())
    .increment(1);
    response
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such admin route".into())
}

/// Ask the master (the one [`masters::current`] names), wherever it runs.
pub(crate) async fn ask_master(ctx: &AdminCtx, req: AdminRequest) -> Result<AdminReply, ApiError> {
    let Some((claim, master)) = masters::current() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no master is reachable from node `{}`", ctx.node),
        ));
    };
    // This node's master is the current one and published lately: a read
    // is answered from its copy, without a trip through its mailbox.
    if claim.node == ctx.node {
        if let Some(reply) = ctx.read_model.answer(&req, MASTER_TIMEOUT) {
            return Ok(reply);
        }
    }
    let silent = || {
        ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the master `{}` did not answer within {MASTER_TIMEOUT:?} (stopped, overloaded or cut off from node `{}`)",
                claim.node, ctx.node
            ),
        )
    };
    // The call's own limit is longer than ours: a reply port that times out
    // is dropped, which would read as a master that went away.
    let call = master.call(
        |port| MasterMsg::Admin(req, port),
        Some(MASTER_TIMEOUT + Duration::from_secs(5)),
    );
    match tokio::time::timeout(MASTER_TIMEOUT, call).await {
        Err(_) | Ok(Ok(CallResult::Timeout)) => Err(silent()),
        Ok(Ok(CallResult::Success(AdminReply::Error(e)))) => {
            Err(ApiError(StatusCode::BAD_REQUEST, e))
        }
        Ok(Ok(CallResult::Success(AdminReply::NotFound(e)))) => {
            Err(ApiError(StatusCode::NOT_FOUND, e))
        }
        Ok(Ok(CallResult::Success(reply))) => Ok(reply),
        Ok(Ok(CallResult::SenderError)) | Ok(Err(_)) => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            format!("the master `{}` went away before answering", claim.node),
        )),
    }
}

async fn status(State(ctx): State<Arc<AdminCtx>>) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Status).await? {
        AdminReply::Status(s) => {
            let mut v = serde_json::to_value(s)
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            v["answered_by"] = json!(ctx.node);
            // Every master this node sees: more than one is a misconfiguration.
            v["masters_visible"] = json!(masters::visible()
                .into_iter()
                .map(|(c, _)| c)
                .collect::<Vec<_>>());
            Ok(Json(v).into_response())
        }
        _ => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            "unexpected reply from the master".into(),
        )),
    }
}

#[derive(serde::Deserialize)]
struct WorkersQuery {
    /// Without each worker's device list and capabilities (a count instead).
    #[serde(default)]
    brief: bool,
}

async fn workers(
    State(ctx): State<Arc<AdminCtx>>,
    axum::extract::Query(q): axum::extract::Query<WorkersQuery>,
) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Workers).await? {
        AdminReply::Workers(w) if q.brief => {
            let brief: Vec<serde_json::Value> = w
                .into_iter()
                .map(|w| {
                    let n = w.devices.len();
                    let mut v = serde_json::to_value(w).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("devices");
                        o.remove("capabilities");
                        o.insert("device_count".into(), json!(n));
                    }
                    v
                })
                .collect();
            json(brief)
        }
        AdminReply::Workers(w) => Ok(Json(w).into_response()),
        _ => Err(ApiError(
            StatusCode::BAD_GATEWAY,
            "unexpected reply from the master".into(),
        )),
    }
}

pub(crate) fn unexpected() -> ApiError {
    ApiError(
        StatusCode::BAD_GATEWAY,
        "unexpected reply from the master".into(),
    )
}

pub(crate) fn json<T: serde::Serialize>(v: T) -> Result<Response, ApiError> {
    Ok(Json(v).into_response())
}

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 128;

async fn submit(
    State(ctx): State<Arc<AdminCtx>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().ok().filter(|k| {
                !k.is_empty()
                    && k.len() <= MAX_IDEMPOTENCY_KEY
                    && k.chars().all(|c| c.is_ascii_graphic())
            });
            match k {
                Some(k) => Some(k.to_string()),
                None => {
                    return Err(ApiError(
                        StatusCode::BAD_REQUEST,
                        format!("invalid `Idempotency-Key` header: expected 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                    ))
                }
            }
        }
    };
    let body = std::str::from_utf8(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid `request body`: expected a UTF-8 session file (TOML), found an invalid byte at offset {}",
                e.valid_up_to()
            ),
        )
    })?;
    let mut spec = crate::session_file::parse(body, "request body", None)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    spec.idempotency_key = key;
    if let Some(v) = headers.get("x-correlation-id") {
        match v.to_str().ok().filter(|c| orch_actors::pipeline::valid_correlation(c)) {
            Some(c) => spec.correlation_id = Some(c.to_string()),
            None => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "invalid `X-Correlation-Id` header: expected 1 to 128 characters from `A-Z a-z 0-9 - _ . : @`".into(),
                ))
            }
        }
    }
    match ask_master(&ctx, AdminRequest::Submit(spec)).await? {
        AdminReply::Submitted { id } => json(json!({ "id": id })),
        _ => Err(unexpected()),
    }
}

/// `POST /v1/workflows`: a recipe file (TOML) in the body, stored as the
/// next version of its name.
async fn add_workflow(
    State(ctx): State<Arc<AdminCtx>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = std::str::from_utf8(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid `request body`: expected a UTF-8 workflow file (TOML), found an invalid byte at offset {}",
                e.valid_up_to()
            ),
        )
    })?;
    let w = crate::workflow_file::parse(body, "request body")
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    match ask_master(&ctx, AdminRequest::WorkflowAdd(w)).await? {
        AdminReply::WorkflowAdded { name, version } => {
            json(json!({ "name": name, "version": version, "label": format!("{name}@{version}") }))
        }
        _ => Err(unexpected()),
    }
}

async fn workflows(State(ctx): State<Arc<AdminCtx>>) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Workflows).await? {
        AdminReply::Workflows(v) => json(v),
        _ => Err(unexpected()),
    }
}

/// `GET /v1/workflows/{name}`: `NAME` (the latest) or `NAME@VERSION`.
async fn workflow(
    State(ctx): State<Arc<AdminCtx>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (name, version) = orch_actors::workflow::parse_ref(&name).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("invalid workflow in the path: {e}"),
        )
    })?;
    match ask_master(&ctx, AdminRequest::Workflow { name, version }).await? {
        AdminReply::Workflow(w) => json(w),
        _ => Err(unexpected()),
    }
}

async fn sessions(State(ctx): State<Arc<AdminCtx>>) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Sessions).await? {
        AdminReply::Sessions(v) => json(v),
        _ => Err(unexpected()),
    }
}

async fn session(
    State(ctx): State<Arc<AdminCtx>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Session(id)).await? {
        AdminReply::Session(v) => json(v),
        _ => Err(unexpected()),
    }
}

async fn manifest(
    State(ctx): State<Arc<AdminCtx>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Manifest(id)).await? {
        AdminReply::Manifest(mut m) => {
            m.collection = crate::admin_data::collection_of(&ctx, &m.session, &m.collect).await;
            json(m)
        }
        _ => Err(unexpected()),
    }
}

async fn cancel(
    State(ctx): State<Arc<AdminCtx>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Cancel(id)).await? {
        AdminReply::Cancelled { id } => json(json!({ "id": id, "state": "cancelled" })),
        _ => Err(unexpected()),
    }
}

#[derive(serde::Deserialize)]
struct DeviceQuery {
    node: Option<String>,
}

async fn devices(
    State(ctx): State<Arc<AdminCtx>>,
    axum::extract::Query(q): axum::extract::Query<DeviceQuery>,
) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Devices(q.node)).await? {
        AdminReply::Devices(v) => json(v),
        _ => Err(unexpected()),
    }
}

async fn device_grid(State(ctx): State<Arc<AdminCtx>>) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::DeviceGrid).await? {
        AdminReply::DeviceGrid(v) => json(v),
        _ => Err(unexpected()),
    }
}

async fn done(ctx: &AdminCtx, req: AdminRequest) -> Result<Response, ApiError> {
    match ask_master(ctx, req).await? {
        AdminReply::Done(msg) => json(json!({ "ok": true, "message": msg })),
        _ => Err(unexpected()),
    }
}

async fn pause(
    State(ctx): State<Arc<AdminCtx>>,
    Path(session): Path<String>,
) -> Result<Response, ApiError> {
    let paused = true;
    done(&ctx, AdminRequest::Pause { session, paused }).await
}

async fn resume(
    State(ctx): State<Arc<AdminCtx>>,
    Path(session): Path<String>,
) -> Result<Response, ApiError> {
    let paused = false;
    done(&ctx, AdminRequest::Pause { session, paused }).await
}

async fn retry(
    State(ctx): State<Arc<AdminCtx>>,
    Path(session): Path<String>,
) -> Result<Response, ApiError> {
    done(&ctx, AdminRequest::Retry(session)).await
}

async fn requeue(
    State(ctx): State<Arc<AdminCtx>>,
    Path((session, task)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let task = task.parse::<u64>().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid task `{task}` in the path: expected a task number (the manifest's `task`)"
            ),
        )
    })?;
    done(&ctx, AdminRequest::Requeue { session, task }).await
}

async fn drain(
    State(ctx): State<Arc<AdminCtx>>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    done(&ctx, AdminRequest::Drain(node)).await
}

async fn undrain(
    State(ctx): State<Arc<AdminCtx>>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    done(&ctx, AdminRequest::Undrain(node)).await
}

async fn restart_device(
    State(ctx): State<Arc<AdminCtx>>,
    Path((node, device)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    done(&ctx, AdminRequest::RestartDevice { node, device }).await
}

async fn unblock_device(
    State(ctx): State<Arc<AdminCtx>>,
    Path((node, device)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    done(&ctx, AdminRequest::Unblock { node, device }).await
}

async fn kill_device(
    State(ctx): State<Arc<AdminCtx>>,
    Path((node, device)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    done(&ctx, AdminRequest::KillDevice { node, device }).await
}

/// A static page (`/`, `/sessions/{id}`): no data in it, only HTML and JS
/// that call the JSON API with the token.
fn is_page(route: &str) -> bool {
    route == "/"
        || route
            .strip_prefix("/sessions/")
            .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

/// The live status page: static HTML and JS polling the JSON API.
async fn status_page() -> Response {
    page(include_str!("status.html"))
}

/// One session's page (docs/status-page.md): its tasks as a grid, an
/// attempt's live log, thumbnails of its collected frames.
async fn session_page(Path(_id): Path<String>) -> Response {
    page(include_str!("session.html"))
}
