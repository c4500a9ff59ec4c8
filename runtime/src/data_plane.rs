//! The data plane (docs/collection.md): every node's own HTTP listener for
//! files and logs, beside the cluster link, so that a large transfer never
//! waits in front of a heartbeat or a result. Nodes authenticate to each
//! other with a token derived from the cluster secret (HMAC-SHA256 of a
//! fixed label), never a person's admin token.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/files/out/...` | an output file of an attempt (HTTP Range) |
//! | `POST /v1/release/out/...` | the collector has it: the worker may delete its copy |
//! | `GET /v1/logs/{session}/{task}/{attempt}?offset=N` | an attempt's log from byte N |
//! | `GET /v1/collected/{session}` | the collector's state of a session |
//! | `GET /v1/collected/{session}/files/...` | a collected output (HTTP Range) |

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics as m;
use crate::outputs::safe_rel;

/// Files one node serves at once; more wait for a permit (bounded memory
/// and disk bandwidth whatever the number of collectors).
pub const SERVE_CONCURRENCY: usize = 8;
/// Buffer of one file being served.
const CHUNK: usize = 256 * 1024;
/// Most bytes of a log one request returns.
pub const LOG_CHUNK: usize = 1024 * 1024;
/// Header of a log answer: whether the attempt still writes it.
pub const LOG_OPEN_HEADER: &str = "x-orch-log-open";

/// The token nodes present to each other's data plane.
pub fn token(secret: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"orch data plane v1");
    crate::outputs::hex(&mac.finalize().into_bytes())
}

/// What the data plane of one node serves from.
pub struct DataCtx {
    pub node: String,
    pub data_dir: PathBuf,
    pub token: String,
    /// `[worker] delete_collected`: a release deletes the file.
    pub delete_collected: bool,
    permits: Arc<Semaphore>,
}

impl DataCtx {
    pub fn new(
        node: String,
        data_dir: PathBuf,
        token: String,
        delete_collected: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            node,
            data_dir,
            token,
            delete_collected,
            permits: Arc::new(Semaphore::new(SERVE_CONCURRENCY)),
        })
    }
}

/// Bind the data plane's listener (a taken port is one clear error).
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|e| {
        anyhow::anyhow!("cannot open the data plane port `{listen}` (`node.data_listen`): {e}")
    })
}

/// The address peers reach `bound` at: the host of `advertise` with the
/// port actually bound.
pub fn advertised(advertise: &str, bound: SocketAddr) -> String {
    let host = advertise
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(advertise);
    format!("{host}:{}", bound.port())
}

pub fn router(ctx: Arc<DataCtx>) -> Router {
    Router::new()
        .route("/v1/files/{*path}", get(file))
        .route("/v1/release/{*path}", post(release))
        .route("/v1/logs/{session}/{task}/{attempt}", get(log))
        .route("/v1/collected/{session}", get(collected_state))
        .route("/v1/collected/{session}/files/{*path}", get(collected_file))
        .fallback(|| async { err(StatusCode::NOT_FOUND, "no such data plane route") })
        .layer(middleware::from_fn_with_state(ctx.clone(), authorize))
        .with_state(ctx)
}

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    let msg: String = msg.into();
    (
        code,
        Json(json!({ "error": crate::config::clip(&msg, 1024), "code": code.as_u16() })),
    )
        .into_response()
}

async fn authorize(State(ctx): State<Arc<DataCtx>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if crate::admin::constant_time_eq(t.trim().as_bytes(), ctx.token.as_bytes()) => {
            next.run(req).await
        }
        other => {
            let reason = if other.is_none() {
                "no_token"
            } else {
                "wrong_token"
            };
            metrics::counter!(m::DATA_PLANE_REJECTED, "reason" => reason).increment(1);
            err(
                StatusCode::UNAUTHORIZED,
                "the data plane needs the cluster's data token (`Authorization: Bearer`); nodes derive it from `cluster.secret`",
            )
        }
    }
}

/// `data_dir/rel` for a plain relative `rel` under `under/`, refusing
/// anything else and symbolic links on the way.
#[allow(clippy::result_large_err)]
fn confined(ctx: &DataCtx, rel: &str, under: &str) -> Result<PathBuf, Response> {
    if !safe_rel(rel) || !rel.starts_with(under) {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "path `{}` is not a plain relative path under `{under}`",
                crate::config::clip(rel, 200)
            ),
        ));
    }
    let mut p = ctx.data_dir.clone();
    for c in rel.split('/') {
        p.push(c);
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!("`{rel}` passes through a symbolic link"),
            ));
        }
    }
    Ok(p)
}

/// The byte range a request asks for: `bytes=N-` or `bytes=N-M`.
#[allow(clippy::result_large_err)]
fn range_of(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, Response> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || {
        let mut r = err(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("expected `Range: bytes=N-` or `bytes=N-M` within {size} bytes"),
        );
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        r
    };
    let spec = v
        .to_str()
        .ok()
        .and_then(|s| s.strip_prefix("bytes="))
        .ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = match b.trim() {
        "" => size,
        e => e
            .parse::<u64>()
            .map_err(|_| bad())?
            .saturating_add(1)
            .min(size),
    };
    // A resume of a file already whole asks for `size-`: an empty answer.
    if start > size || end < start {
        return Err(bad());
    }
    Ok(Some((start, end)))
}

/// Serve the regular file at `path` of this node (for the admin API).
pub async fn serve_local(node: &str, path: &FsPath, headers: &HeaderMap) -> Response {
    serve(node, None, path, headers).await
}

async fn serve_file(ctx: &DataCtx, path: &FsPath, headers: &HeaderMap) -> Response {
    serve(&ctx.node, Some(ctx.permits.clone()), path, headers).await
}

/// Serve the regular file at `path`, whole or the range asked, holding
/// one of `permits` while it is sent.
async fn serve(
    node: &str,
    permits: Option<Arc<Semaphore>>,
    path: &FsPath,
    headers: &HeaderMap,
) -> Response {
    let meta = match tokio::fs::symlink_metadata(path).await {
        Ok(m) if m.is_file() => m,
        Ok(_) => return err(StatusCode::FORBIDDEN, "not a regular file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return err(
                StatusCode::NOT_FOUND,
                format!("no file `{}` on node `{node}`", path.display()),
            )
        }
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let size = meta.len();
    let range = match range_of(headers, size) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let permit = match permits {
        None => None,
        Some(p) => match tokio::time::timeout(Duration::from_secs(30), p.acquire_owned()).await {
            Ok(Ok(p)) => Some(p),
            _ => {
                let mut r = err(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("node `{node}` serves {SERVE_CONCURRENCY} files already; try again"),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        },
    };
    let mut f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let (start, end) = range.unwrap_or((0, size));
    if start > 0 {
        if let Err(e) = f.seek(std::io::SeekFrom::Start(start)).await {
            return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    }
    let len = end - start;
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), CHUNK);
    let sent = metrics::counter!(m::DATA_PLANE_BYTES, "direction" => "sent");
    let stream = futures_util_map(stream, move |n| sent.increment(n));
    // The permit is held until the body is sent.
    let body = Body::from_stream(Permitted {
        inner: stream,
        _permit: permit,
    });
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    if range.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end.saturating_sub(1)))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

/// The type a browser needs to show a thumbnail; anything else is bytes.
pub fn content_type(path: &FsPath) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("txt" | "log") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// A stream that counts the bytes it yields.
fn futures_util_map<S>(inner: S, count: impl Fn(u64) + Send + 'static) -> Counted<S> {
    Counted {
        inner,
        count: Box::new(count),
    }
}

struct Counted<S> {
    inner: S,
    count: Box<dyn Fn(u64) + Send>,
}

impl<S> futures_core::Stream for Counted<S>
where
    S: futures_core::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
{
    type Item = std::io::Result<bytes::Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let p = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(b))) = &p {
            (self.count)(b.len() as u64);
        }
        p
    }
}

struct Permitted<S> {
    inner: S,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl<S: futures_core::Stream + Unpin> futures_core::Stream for Permitted<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Test hook: while this file exists under `data_dir`, the node's data
/// plane answers 503 to every file request (a collector must wait and
/// retry). See docs/testing.md.
pub const HOLD_HOOK_FILE: &str = "test-hold-data-plane";

async fn file(
    State(ctx): State<Arc<DataCtx>>,
    Path(rel): Path<String>,
    headers: HeaderMap,
) -> Response {
    if ctx.data_dir.join(HOLD_HOOK_FILE).exists() {
        return err(StatusCode::SERVICE_UNAVAILABLE, "held by the test hook");
    }
    match confined(&ctx, &rel, "out/") {
        Ok(p) => serve_file(&ctx, &p, &headers).await,
        Err(r) => r,
    }
}

/// The collector has the file: delete this node's copy, and the folders
/// it leaves empty up to the session's.
async fn release(State(ctx): State<Arc<DataCtx>>, Path(rel): Path<String>) -> Response {
    let path = match confined(&ctx, &rel, "out/") {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !ctx.delete_collected {
        return StatusCode::NO_CONTENT.into_response();
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot delete `{rel}`: {e}"),
            )
        }
    }
    let stop = ctx.data_dir.join("out");
    let mut dir = path.parent().map(FsPath::to_path_buf);
    while let Some(d) = dir {
        if d == stop || !d.starts_with(&stop) || std::fs::remove_dir(&d).is_err() {
            break;
        }
        dir = d.parent().map(FsPath::to_path_buf);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Deserialize)]
struct LogQuery {
    #[serde(default)]
    offset: u64,
}

async fn log(
    State(ctx): State<Arc<DataCtx>>,
    Path((session, task, attempt)): Path<(String, u64, u32)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let Some(rel) = crate::task_log::rel_path(&session, task, attempt) else {
        return err(StatusCode::BAD_REQUEST, "not a session id");
    };
    let path = ctx.data_dir.join(rel);
    let read =
        tokio::task::spawn_blocking(move || crate::task_log::read_from(&path, q.offset, LOG_CHUNK))
            .await;
    match read {
        Ok(Ok((bytes, open))) => {
            let mut r = (StatusCode::OK, bytes).into_response();
            r.headers_mut().insert(LOG_OPEN_HEADER, HeaderValue::from_static(if open { "true" } else { "false" }));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
            r
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => err(
            StatusCode::NOT_FOUND,
            format!("node `{}` has no log of task {task} attempt {attempt} of `{session}` (not run there, or it wrote nothing)", ctx.node),
        ),
        Ok(Err(e)) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn collected_state(State(ctx): State<Arc<DataCtx>>, Path(session): Path<String>) -> Response {
    match crate::collect::read_state(&ctx.data_dir, &session) {
        Ok(Some(c)) => Json(c).into_response(),
        Ok(None) => err(
            StatusCode::NOT_FOUND,
            format!("node `{}` collects nothing of `{session}`", ctx.node),
        ),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn collected_file(
    State(ctx): State<Arc<DataCtx>>,
    Path((session, rel)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !crate::outputs::safe_component(&session) {
        return err(StatusCode::BAD_REQUEST, "not a session id");
    }
    match confined(
        &ctx,
        &format!("sessions/{session}/output/{rel}"),
        "sessions/",
    ) {
        Ok(p) => serve_file(&ctx, &p, &headers).await,
        Err(r) => r,
    }
}

/// The client side of the data plane's mutual TLS, set once at node start.
static CLIENT_TLS: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();

/// Speak to every data plane over mutual TLS with `config` (`cluster.tls`).
pub fn use_tls(config: Arc<rustls::ClientConfig>) {
    let _ = CLIENT_TLS.set(config);
}

/// The URL of `path` on the data plane at `addr`.
pub fn url(addr: &str, path: &str) -> String {
    let scheme = if CLIENT_TLS.get().is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}{path}")
}

/// A blocking client of other nodes' data planes (run it off the async
/// threads), short timeouts to connect. One agent per process (per scheme),
/// shared by every caller, so that transfers to a node reuse their
/// connections (and TLS sessions) instead of opening one per file.
pub fn agent() -> ureq::Agent {
    static PLAIN: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    static TLS: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    let build = |tls: Option<&Arc<rustls::ClientConfig>>| {
        let mut b = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout_read(Duration::from_secs(30))
            .max_idle_connections_per_host(8);
        if let Some(tls) = tls {
            b = b.tls_config(tls.clone());
        }
        b.build()
    };
    match CLIENT_TLS.get() {
        Some(tls) => TLS.get_or_init(|| build(Some(tls))).clone(),
        None => PLAIN.get_or_init(|| build(None)).clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_depends_on_the_secret_only() {
        assert_eq!(token("a"), token("a"));
        assert_ne!(token("a"), token("b"));
        assert_eq!(token("a").len(), 64);
        assert!(!token("a").contains('a') || token("a") != "a");
    }

    #[test]
    fn ranges_parse_or_are_refused() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(range_of(&HeaderMap::new(), 10).ok(), Some(None));
        assert_eq!(range_of(&h("bytes=3-"), 10).ok(), Some(Some((3, 10))));
        assert_eq!(range_of(&h("bytes=3-4"), 10).ok(), Some(Some((3, 5))));
        assert_eq!(range_of(&h("bytes=10-"), 10).ok(), Some(Some((10, 10))));
        for bad in ["bytes=11-", "bytes=-5", "items=0-", "bytes=a-", "bytes=5-2"] {
            assert!(range_of(&h(bad), 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_advertised_address_keeps_the_host_and_takes_the_bound_port() {
        let bound: SocketAddr = "0.0.0.0:4567".parse().unwrap();
        assert_eq!(advertised("render-01:7700", bound), "render-01:4567");
        assert_eq!(advertised("[::1]:7700", bound), "[::1]:4567");
    }
}
