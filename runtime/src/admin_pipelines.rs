//! The admin API of pipelines (docs/pipelines.md).
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/pipelines` | a pipeline file (TOML, sessions inline) stored as the next version |
//! | `GET /v1/pipelines` | every pipeline, with `next_run_ms` and its last run's state |
//! | `GET /v1/pipelines/{name}` | one pipeline: its view and its latest version |
//! | `GET /v1/pipelines/{name}/runs` | its runs kept, oldest first |
//! | `POST /v1/pipelines/{name}/runs` | start a run: `{"params": {...}}`, header `X-Correlation-Id` |
//! | `GET /v1/runs/{run}` | one run with its stages |
//! | `POST /v1/runs/{run}/cancel`, `/rerun` | cancel it; run its failed stages again |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use orch_actors::protocol::{AdminReply, AdminRequest};
use serde_json::json;

use crate::admin::{ask_master, json, unexpected, AdminCtx, ApiError};

fn utf8<'a>(body: &'a [u8], what: &str) -> Result<&'a str, ApiError> {
    std::str::from_utf8(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid `request body`: expected UTF-8 {what}, found an invalid byte at offset {}",
                e.valid_up_to()
            ),
        )
    })
}

/// `POST /v1/pipelines`.
pub(crate) async fn add(
    State(ctx): State<Arc<AdminCtx>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let text = utf8(&body, "a pipeline file (TOML)")?;
    let spec = crate::pipeline_file::parse(text, "request body", None)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    match ask_master(&ctx, AdminRequest::PipelineAdd(Box::new(spec))).await? {
        AdminReply::PipelineAdded { name, version } => {
            json(json!({ "name": name, "version": version }))
        }
        _ => Err(unexpected()),
    }
}

pub(crate) async fn list(State(ctx): State<Arc<AdminCtx>>) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Pipelines).await? {
        AdminReply::Pipelines(v) => json(v),
        _ => Err(unexpected()),
    }
}

pub(crate) async fn show(
    State(ctx): State<Arc<AdminCtx>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::Pipeline(name)).await? {
        AdminReply::Pipeline(b) => {
            let (view, spec) = *b;
            json(json!({ "pipeline": view, "spec": spec }))
        }
        _ => Err(unexpected()),
    }
}

pub(crate) async fn runs(
    State(ctx): State<Arc<AdminCtx>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::PipelineRuns(name)).await? {
        AdminReply::PipelineRuns(v) => json(v),
        _ => Err(unexpected()),
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RunBody {
    #[serde(default)]
    params: BTreeMap<String, String>,
}

/// `POST /v1/pipelines/{name}/runs`.
pub(crate) async fn start(
    State(ctx): State<Arc<AdminCtx>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        RunBody::default()
    } else {
        let text = utf8(&body, "JSON")?;
        serde_json::from_str(text).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("invalid `request body`: expected `{{\"params\": {{\"NAME\": \"VALUE\"}}}}`: {e}"),
            )
        })?
    };
    let correlation_id = match headers.get("x-correlation-id") {
        None => None,
        Some(v) => match v.to_str().ok().filter(|c| orch_actors::pipeline::valid_correlation(c)) {
            Some(c) => Some(c.to_string()),
            None => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    "invalid `X-Correlation-Id` header: expected 1 to 128 characters from `A-Z a-z 0-9 - _ . : @`".into(),
                ))
            }
        },
    };
    let req = AdminRequest::PipelineRun {
        name,
        params: body.params,
        correlation_id,
    };
    match ask_master(&ctx, req).await? {
        AdminReply::PipelineStarted {
            run,
            correlation_id,
        } => json(json!({ "run": run, "correlation_id": correlation_id })),
        _ => Err(unexpected()),
    }
}

pub(crate) async fn run(
    State(ctx): State<Arc<AdminCtx>>,
    Path(run): Path<String>,
) -> Result<Response, ApiError> {
    match ask_master(&ctx, AdminRequest::PipelineShow(run)).await? {
        AdminReply::PipelineRun(r) => json(r),
        _ => Err(unexpected()),
    }
}

async fn done(ctx: &AdminCtx, req: AdminRequest) -> Result<Response, ApiError> {
    match ask_master(ctx, req).await? {
        AdminReply::Done(msg) => json(json!({ "ok": true, "message": msg })),
        _ => Err(unexpected()),
    }
}

pub(crate) async fn cancel(
    State(ctx): State<Arc<AdminCtx>>,
    Path(run): Path<String>,
) -> Result<Response, ApiError> {
    done(&ctx, AdminRequest::PipelineCancel(run)).await
}

pub(crate) async fn rerun(
    State(ctx): State<Arc<AdminCtx>>,
    Path(run): Path<String>,
) -> Result<Response, ApiError> {
    done(&ctx, AdminRequest::PipelineRerun(run)).await
}
