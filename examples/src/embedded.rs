//! Embedding orch: a program that is itself an orch node (master + worker,
//! on loopback ports picked free) and runs the sessions of
//! `kind = "rust:mandelbrot"` with [`Mandelbrot`], an executor written in
//! Rust (docs/sessions.md, embedding orch).
//!
//! [`run`] is the whole example (`cargo run -p orch-examples --example
//! embedded [DATA_DIR]`): start the node with the executor registered,
//! submit `examples/sessions/mandelbrot-rows.toml` through the admin API,
//! follow the session to its end, put the rows that the manifest lists
//! together into one image, and stop the node.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_actors::executor::{ExecError, ExecFuture, ExecJob, ExecReport, Executor};
use orch_actors::protocol::{Manifest, MemberState, SessionState, SessionView, WorkerView};
use orch_runtime::Executors;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The name [`Mandelbrot`] is registered under: its sessions say
/// `kind = "rust:mandelbrot"`.
pub const EXECUTOR: &str = "mandelbrot";

/// The session [`run`] submits.
pub const SESSION: &str = include_str!("../sessions/mandelbrot-rows.toml");

/// How long [`Node::start`] waits for its worker to register.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long [`run`] waits for the session to end.
const SESSION_WITHIN: Duration = Duration::from_secs(120);

// ---- the executor ----

/// The `[executor.params]` of a `rust:mandelbrot` session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// Pixels per row (default 128).
    pub width: u32,
    /// Rows in the image: frame `y` is row `y` (required).
    pub height: u64,
    /// Iterations before a point counts as inside the set (default 200).
    pub max_iter: u32,
    /// Frames between two progress reports (default 4).
    pub progress_every: u64,
}

impl Params {
    /// Read the parameters; an unknown or bad one is an error naming it.
    pub fn parse(params: &BTreeMap<String, String>) -> Result<Self, String> {
        fn get<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
            params: &BTreeMap<String, String>,
            key: &str,
            default: Option<T>,
            (lo, hi): (T, T),
        ) -> Result<T, String> {
            let Some(text) = params.get(key) else {
                return default.ok_or(format!("missing `executor.params.{key}`"));
            };
            match text.parse::<T>() {
                Ok(v) if lo <= v && v <= hi => Ok(v),
                _ => Err(format!(
                    "invalid `executor.params.{key}`: expected {lo} to {hi}, got `{text}`"
                )),
            }
        }
        const KNOWN: [&str; 4] = ["width", "height", "max_iter", "progress_every"];
        if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!(
                "unknown `executor.params.{k}`; known: {}",
                KNOWN.join(", ")
            ));
        }
        Ok(Self {
            width: get(params, "width", Some(128), (1, 4096))?,
            height: get(params, "height", None, (1, 1 << 20))?,
            max_iter: get(params, "max_iter", Some(200), (1, 100_000))?,
            progress_every: get(params, "progress_every", Some(4), (1, u64::MAX))?,
        })
    }
}

/// Row `y` of the image, one byte per pixel: 0 inside the set, darker the
/// longer a point takes to escape.
pub fn render_row(p: &Params, y: u64) -> Vec<u8> {
    let ci = -1.2 + 2.4 * (y as f64 + 0.5) / p.height as f64;
    (0..p.width)
        .map(|x| {
            let cr = -2.2 + 3.0 * (f64::from(x) + 0.5) / f64::from(p.width);
            let (mut zr, mut zi, mut n) = (0.0f64, 0.0f64, 0u32);
            while n < p.max_iter && zr * zr + zi * zi <= 4.0 {
                (zr, zi) = (zr * zr - zi * zi + cr, 2.0 * zr * zi + ci);
                n += 1;
            }
            if n == p.max_iter {
                0
            } else {
                (255.0 * (1.0 - (f64::from(n) / f64::from(p.max_iter)).sqrt())) as u8
            }
        })
        .collect()
}

/// The output file of row `y`, relative to its task's output folder.
pub fn row_file(y: u64) -> String {
    format!("row_{y:05}.raw")
}

/// Render row `y` into `dir`: under a temporary name, then renamed, so
/// that the runtime never lists a half-written file.
fn write_row(dir: &Path, y: u64, p: &Params) -> Result<(), String> {
    let name = row_file(y);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, render_row(p, y))
        .and_then(|()| std::fs::rename(&tmp, dir.join(&name)))
        .map_err(|e| format!("cannot write `{}`: {e}", dir.join(&name).display()))
}

/// The `rust:mandelbrot` executor: each frame of a task is one row of the
/// image, written to [`row_file`] in the task's output folder. It reports
/// progress every `progress_every` frames (the runtime lists the files
/// that appeared with each report) and stops between two rows when told to.
pub struct Mandelbrot;

impl Executor for Mandelbrot {
    fn run(
        &self,
        job: ExecJob,
        progress: UnboundedSender<ExecReport>,
        cancel: CancellationToken,
    ) -> ExecFuture {
        Box::pin(async move {
            let failed = |message: String, frames_done: u64| ExecError {
                message,
                report: ExecReport {
                    frames_done,
                    ..ExecReport::default()
                },
                ..ExecError::default()
            };
            let none = BTreeMap::new();
            let p = Params::parse(job.task.executor.params().unwrap_or(&none))
                .map_err(|m| failed(m, 0))?;
            let frames = job.task.frames;
            if frames.end > p.height {
                return Err(failed(
                    format!(
                        "frames [{}, {}) go past the image's last row: `executor.params.height` is {}",
                        frames.start, frames.end, p.height
                    ),
                    0,
                ));
            }
            let mut done = 0;
            for y in frames.start..frames.end {
                if cancel.is_cancelled() {
                    return Err(failed("cancelled".into(), done));
                }
                // Computing and writing a row is blocking work: off the
                // device's async thread.
                let dir = job.out_dir.clone();
                tokio::task::spawn_blocking(move || write_row(&dir, y, &p))
                    .await
                    .map_err(|e| failed(e.to_string(), done))?
                    .map_err(|e| failed(e, done))?;
                done += 1;
                if done % p.progress_every == 0 && done < frames.len() {
                    let _ = progress.send(ExecReport {
                        frames_done: done,
                        ..ExecReport::default()
                    });
                }
            }
            Ok(ExecReport {
                frames_done: done,
                ..ExecReport::default()
            })
        })
    }
}

// ---- the admin API ----

/// An admin API request that did not get the answer it wanted.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("cannot reach the admin API at `{base}`: {detail}")]
    Unreachable { base: String, detail: String },
    #[error("unexpected answer from the admin API: {0}")]
    Unexpected(String),
}

/// A client of a node's admin API (docs/operating.md), over HTTP.
#[derive(Debug, Clone)]
pub struct Admin {
    base: String,
    agent: ureq::Agent,
}

impl Admin {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
        }
    }

    /// `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One request (blocking HTTP, on a blocking thread), its JSON answer.
    async fn request<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<String>,
    ) -> Result<T, AdminError> {
        let (agent, base) = (self.agent.clone(), self.base.clone());
        let url = format!("{base}{path}");
        tokio::task::spawn_blocking(move || {
            let req = agent.request(method, &url);
            let answer = match body {
                Some(b) => req.set("content-type", "application/toml").send_string(&b),
                None => req.call(),
            };
            match answer {
                Ok(resp) => resp
                    .into_json::<T>()
                    .map_err(|e| AdminError::Unexpected(format!("{method} {url}: {e}"))),
                Err(ureq::Error::Status(status, resp)) => {
                    let v: serde_json::Value = resp.into_json().unwrap_or_default();
                    Err(AdminError::Refused {
                        status,
                        message: v["error"].as_str().unwrap_or_default().to_string(),
                    })
                }
                Err(ureq::Error::Transport(t)) => Err(AdminError::Unreachable {
                    base,
                    detail: t.to_string(),
                }),
            }
        })
        .await
        .map_err(|e| AdminError::Unexpected(e.to_string()))?
    }

    /// `POST /v1/sessions`: submit a session file's text; the session's id.
    pub async fn submit(&self, session: &str) -> Result<String, AdminError> {
        let v: serde_json::Value = self
            .request("POST", "/v1/sessions", Some(session.to_string()))
            .await?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| AdminError::Unexpected(format!("no `id` in {v}")))
    }

    pub async fn workers(&self) -> Result<Vec<WorkerView>, AdminError> {
        self.request("GET", "/v1/workers", None).await
    }

    pub async fn session(&self, id: &str) -> Result<SessionView, AdminError> {
        self.request("GET", &format!("/v1/sessions/{id}"), None)
            .await
    }

    pub async fn manifest(&self, id: &str) -> Result<Manifest, AdminError> {
        self.request("GET", &format!("/v1/sessions/{id}/manifest"), None)
            .await
    }

    pub async fn cancel(&self, id: &str) -> Result<(), AdminError> {
        self.request::<serde_json::Value>("POST", &format!("/v1/sessions/{id}/cancel"), None)
            .await
            .map(drop)
    }

    /// Poll session `id` until `done` holds, for at most `within`; `what`
    /// says what is awaited, for the error.
    pub async fn wait_for(
        &self,
        id: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&SessionView) -> bool,
    ) -> anyhow::Result<SessionView> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.session(id).await?;
            if done(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                anyhow::bail!("waited {within:?} for {what}; session `{id}` is at {v:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---- the node ----

/// An orch node in this process: master and worker, [`Node::DEVICES`]
/// devices, every port on 127.0.0.1 and picked free. Stopped by
/// [`Node::stop`], or when dropped (then without waiting for it).
pub struct Node {
    pub name: String,
    pub admin: Admin,
    /// The node's `data_dir`, absolute.
    pub data_dir: PathBuf,
    /// What the node was started with.
    pub executors: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Ports on 127.0.0.1 that are free now: bound at once so that they differ.
fn free_ports<const N: usize>() -> std::io::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// The node's `cluster.toml` (docs/operating.md).
fn node_config(name: &str, data_dir: &Path, [cluster, admin, metrics]: [u16; 3]) -> String {
    let data_dir = toml::Value::String(data_dir.display().to_string());
    format!(
        r#"[node]
name = "{name}"
listen = "127.0.0.1:{cluster}"
data_dir = {data_dir}

[cluster]
secret = "embedded-example-loopback-only"

[worker]
max_concurrency = {devices}

[[device]]
count = {devices}
id_prefix = "cpu-"
handle = "cpu:{{n}}"

[admin]
listen = "127.0.0.1:{admin}"

[metrics]
listen = "127.0.0.1:{metrics}"
"#,
        devices = Node::DEVICES,
    )
}

impl Node {
    pub const DEVICES: usize = 4;

    /// Start the node on `data_dir` (created) with `executors` registered,
    /// and wait until its worker is registered with its devices. One node
    /// per process: the metrics exporter and the master's registry are
    /// process-wide.
    pub async fn start(data_dir: &Path, executors: Executors) -> anyhow::Result<Self> {
        let name = "embedded".to_string();
        std::fs::create_dir_all(data_dir)?;
        let data_dir = std::fs::canonicalize(data_dir)?;
        let ports = free_ports::<3>()?;
        let cfg = orch_runtime::config::parse(
            &node_config(&name, &data_dir, ports),
            "the embedded node's config",
            &data_dir,
        )?;
        let names = executors.names().map(|n| format!("rust:{n}")).collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            // Sent, or the Node dropped.
            let _ = stopped.await;
        };
        let task = tokio::spawn(orch_runtime::run_node_with(cfg, executors, shutdown));
        let node = Self {
            name,
            admin: Admin::new(SocketAddr::from(([127, 0, 0, 1], ports[1]))),
            data_dir,
            executors: names,
            stop: Some(stop),
            task,
        };
        node.ready().await?;
        Ok(node)
    }

    /// Wait until the master lists this node's worker healthy with every device.
    async fn ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if self.task.is_finished() {
                anyhow::bail!("node `{}` stopped while starting", self.name);
            }
            let ready = self.admin.workers().await.is_ok_and(|ws| {
                ws.iter().any(|w| {
                    w.node == self.name
                        && w.state == MemberState::Healthy
                        && w.devices.len() == Self::DEVICES
                })
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "node `{}` has no healthy worker after {READY_WITHIN:?}",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Leave cleanly and wait for the node to stop; its error, if it failed.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(30), &mut self.task).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => Err(e.into()),
            Err(_) => anyhow::bail!("node `{}` did not stop within 30 s", self.name),
        }
    }
}

// ---- the example ----

/// What [`run`] did.
#[derive(Debug)]
pub struct Outcome {
    pub node: String,
    pub admin: String,
    pub executors: Vec<String>,
    pub session: SessionView,
    pub manifest: Manifest,
    pub params: Params,
    /// The node's `data_dir`, absolute: manifests name folders relative to it.
    pub data_dir: PathBuf,
    /// The rows put together, a PGM file.
    pub image: PathBuf,
    pub elapsed: Duration,
}

/// The whole example: a node on `data_dir` with [`Mandelbrot`] registered
/// runs [`SESSION`] to its end; the rows it lists make `mandelbrot.pgm`.
pub async fn run(data_dir: &Path) -> anyhow::Result<Outcome> {
    let mut executors = Executors::new();
    executors.register(EXECUTOR, Arc::new(Mandelbrot))?;
    let node = Node::start(data_dir, executors).await?;
    let outcome = follow_session(&node).await;
    node.stop().await?;
    outcome
}

async fn follow_session(node: &Node) -> anyhow::Result<Outcome> {
    let spec = orch_runtime::session_file::parse(SESSION, "mandelbrot-rows.toml", None)?;
    let params = Params::parse(spec.executor.params().unwrap_or(&BTreeMap::new()))
        .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let id = node.admin.submit(SESSION).await?;
    let session = node
        .admin
        .wait_for(&id, "the session to end", SESSION_WITHIN, |v| {
            v.state.is_final()
        })
        .await?;
    let elapsed = started.elapsed();
    let manifest = node.admin.manifest(&id).await?;
    let image = node.data_dir.join("mandelbrot.pgm");
    if session.state == SessionState::Completed {
        let (m, dir, img) = (manifest.clone(), node.data_dir.clone(), image.clone());
        tokio::task::spawn_blocking(move || assemble(&m, &dir, &params, &img)).await??;
    }
    Ok(Outcome {
        node: node.name.clone(),
        admin: node.admin.base().to_string(),
        executors: node.executors.clone(),
        session,
        manifest,
        params,
        data_dir: node.data_dir.clone(),
        image,
        elapsed,
    })
}

/// Write the rows that `manifest` lists, in frame order, as one PGM image.
fn assemble(manifest: &Manifest, data_dir: &Path, p: &Params, to: &Path) -> anyhow::Result<()> {
    let mut pixels = Vec::with_capacity(p.width as usize * p.height as usize);
    for r in &manifest.ranges {
        for y in r.frames.start..r.frames.end {
            let rel = row_file(y);
            anyhow::ensure!(
                r.outputs.iter().any(|o| o.path == rel),
                "the manifest lists no `{rel}` for frames [{}, {})",
                r.frames.start,
                r.frames.end
            );
            let path = data_dir.join(&r.out_dir).join(&rel);
            let row = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", path.display()))?;
            anyhow::ensure!(
                row.len() == p.width as usize,
                "`{}` is not one row",
                path.display()
            );
            pixels.extend(row);
        }
    }
    let mut pgm = format!("P5\n{} {}\n255\n", p.width, p.height).into_bytes();
    pgm.extend(pixels);
    std::fs::write(to, pgm).map_err(|e| anyhow::anyhow!("cannot write `{}`: {e}", to.display()))
}

impl Outcome {
    /// What the example prints: the node, the session's summary as
    /// `orch-node --run` prints it, the manifest in short, and the image.
    pub fn summary(&self) -> String {
        let (v, m) = (&self.session, &self.manifest);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "node `{}` in this process: master + worker, {} devices, admin {}, executors {}",
            self.node,
            Node::DEVICES,
            self.admin,
            self.executors.join(", ")
        );
        let _ = writeln!(
            s,
            "session {} {} in {:.1}s",
            v.id,
            v.state.as_str(),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "  frames    {}/{} done, {} failed",
            v.frames_done, v.frames_total, v.frames_failed
        );
        let _ = writeln!(
            s,
            "  tasks     {} ({} retries, {} failovers, {} stale results rejected)",
            v.tasks_total, v.retries, v.failovers, v.stale_rejected
        );
        let mut per_device: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &m.ranges {
            *per_device.entry(&r.device).or_default() += 1;
        }
        let devices: Vec<String> = per_device.iter().map(|(d, n)| format!("{d} {n}")).collect();
        let _ = writeln!(
            s,
            "  manifest  executor `{}`, {} ranges (per device: {}), {} failed, {} replayed",
            m.executor,
            m.ranges.len(),
            devices.join(", "),
            m.failed.len(),
            m.replay.len()
        );
        let files = m.ranges.iter().map(|r| r.outputs.len()).sum::<usize>();
        let bytes = m
            .ranges
            .iter()
            .flat_map(|r| &r.outputs)
            .map(|o| o.size)
            .sum::<u64>();
        let _ = writeln!(
            s,
            "  outputs   {files} files, {bytes} bytes, under {}",
            self.data_dir.join("out").join(&v.id).display()
        );
        let _ = writeln!(
            s,
            "  manifest  {}",
            self.data_dir
                .join("sessions")
                .join(&v.id)
                .join("manifest.json")
                .display()
        );
        if v.state == SessionState::Completed {
            let _ = writeln!(
                s,
                "  image     {} ({} x {})",
                self.image.display(),
                self.params.width,
                self.params.height
            );
            s.push_str(&self.preview(64, 24));
        }
        for f in &m.failed {
            let _ = writeln!(
                s,
                "  failed    frames [{}, {}) after {} attempts: {}",
                f.frames.start, f.frames.end, f.attempts, f.error
            );
        }
        s
    }

    /// The image in `cols` x `rows` characters, from the file written.
    fn preview(&self, cols: u32, rows: u64) -> String {
        let Ok(pgm) = std::fs::read(&self.image) else {
            return String::new();
        };
        let (w, h) = (self.params.width, self.params.height);
        let header = format!("P5\n{w} {h}\n255\n").len();
        let shades = b" .:-=+*#%@";
        let mut s = String::new();
        for r in 0..rows.min(h) {
            let y = r * h / rows.min(h);
            s.push_str("    ");
            for c in 0..cols.min(w) {
                let x = u64::from(c * w / cols.min(w));
                let px = pgm.get(header + (y * u64::from(w) + x) as usize).copied();
                // Inside the set (0) is darkest, shown densest.
                let i = px.map_or(0, |v| (255 - v as usize) * (shades.len() - 1) / 255);
                s.push(shades[i] as char);
            }
            s.push('\n');
        }
        s
    }
}
