//! `orchctl`: the operator's command line, a client of any node's admin API.
//!
//! Exit codes: 0 ok, 1 operation failed (or refused: a session in the wrong
//! state for it), 2 usage, 3 not found, 4 authentication.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use orch_actors::protocol::{
    ClusterStatus, DeviceView, Manifest, SessionState, SessionView, WorkerView,
};
use serde_json::Value;

use orch_runtime::exit::{
    self, AUTH as EXIT_AUTH, FAILED as EXIT_FAILED, NOT_FOUND as EXIT_NOT_FOUND,
    USAGE as EXIT_USAGE,
};

/// Operate an orch cluster through any node's admin endpoint.
#[derive(Parser, Debug)]
#[command(name = "orchctl", version, about)]
struct Cli {
    /// Admin address of any node (`host:port`).
    #[arg(
        long,
        global = true,
        env = "ORCH_NODE",
        default_value = "127.0.0.1:7701"
    )]
    node: String,
    /// File holding the admin bearer token.
    #[arg(long, global = true, env = "ORCH_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The cluster's CA certificate: speak HTTPS to an admin API with
    /// `admin.tls = true` and check its certificate against this CA.
    #[arg(long, global = true, env = "ORCH_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum WorkflowCmd {
    /// Store a recipe file as the next version of its name (old versions stay).
    Add { file: PathBuf },
    /// The latest version of every workflow.
    List,
    /// One workflow: `NAME` (the latest) or `NAME@VERSION`.
    Show { name: String },
}

#[derive(Subcommand, Debug)]
enum PipelineCmd {
    /// Check a pipeline file (and its session files) without a node; exit 2 on a problem.
    Check { file: PathBuf },
    /// Store a pipeline file as the next version of its name.
    Add { file: PathBuf },
    /// Start a run of pipeline NAME (or of FILE, stored first); with --wait,
    /// follow it to the end (exit 0 only if completed).
    Run {
        #[arg(value_name = "NAME|FILE")]
        name: String,
        /// A run parameter, `KEY=VALUE` (repeatable); stages see `ORCH_PARAM_KEY`.
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
    /// Every pipeline: version, schedule, next run, last run's state.
    List,
    /// One pipeline: its schedule, next run, breakers and last run.
    Status { name: String },
    /// The runs of a pipeline kept (the last 50 finished and those in progress).
    Runs { name: String },
    /// One run: each stage's state, attempts, items, times and last error.
    Show { run: String },
    /// Cancel a run in progress: its running sessions are cancelled.
    Cancel { run: String },
    /// Run the failed, skipped and cancelled stages of a finished run again.
    Rerun { run: String },
}

#[derive(Subcommand, Debug)]
enum TlsCmd {
    /// Make the cluster's CA in DIR (`ca.crt`, `ca.key` with mode 0600).
    Init {
        dir: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Make the certificate of node NAME in DIR (`NAME.crt`, `NAME.key`
    /// with mode 0600), signed by the CA there.
    Node {
        dir: PathBuf,
        name: String,
        /// The node may serve as master (`roles` with `master`).
        #[arg(long)]
        master: bool,
        /// Another host name or IP address the node is reached at (for the
        /// admin API's host name check); repeatable. `NAME`, `localhost`
        /// and `127.0.0.1` are always in.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Make an admin token: print it once, and append its label, role and
    /// sha256 (never the token) to FILE, the node's `admin.tokens_file`.
    New {
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        #[arg(long)]
        label: String,
        /// `read`, `operate` or `admin`.
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Certificates for mutual TLS between nodes (docs/security.md); no node needed.
    Tls {
        #[command(subcommand)]
        cmd: TlsCmd,
    },
    /// Admin tokens with roles (docs/security.md); no node needed.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Cluster summary: master, workers by state, devices, recent failures.
    Status,
    /// Every worker the master knows, with its state and devices.
    Workers,
    /// Submit a session file; with --wait, follow it to the end (exit 0 only if completed).
    Submit {
        file: PathBuf,
        #[arg(long)]
        wait: bool,
    },
    /// Every session with its progress.
    Sessions,
    /// One session's progress.
    Session { id: String },
    /// A session's manifest: every range with its task, attempt, node, device, outputs.
    Manifest { id: String },
    /// Cancel a running session.
    Cancel { id: String },
    /// Give a running session no new work; its attempts in flight finish.
    Pause { id: String },
    /// Give a paused session work again.
    Resume { id: String },
    /// Run the failed ranges of a `partial` or `failed` session again (fresh attempts and IDs).
    Retry { id: String },
    /// Run one produced range again (a bad frame): its outputs are quarantined,
    /// the manifest's `replay` says `operator_requeue`.
    Requeue {
        id: String,
        /// The task number, as the manifest lists it.
        task: u64,
    },
    /// Follow a session with a live progress bar until it ends (exit 0 only if completed).
    Watch { id: String },
    /// Download a session's collected outputs into DIR, each verified by its
    /// sha256 (exit 0 only if every produced output was collected).
    Fetch { id: String, dir: PathBuf },
    /// An attempt's stdout and stderr (its last attempt unless --attempt).
    Logs {
        id: String,
        task: u64,
        #[arg(long)]
        attempt: Option<u32>,
        /// Follow a running attempt until it ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Workflow recipes the master stores (docs/workflows.md).
    Workflow {
        #[command(subcommand)]
        cmd: WorkflowCmd,
    },
    /// The cluster's events (sessions, pipelines, stages, schedules, breakers),
    /// oldest first; with --follow, as they happen.
    Events {
        /// Follow new events until interrupted (reconnecting where it left off).
        #[arg(short = 'f', long)]
        follow: bool,
        /// Event types or patterns (`session.*`); repeatable.
        #[arg(long = "type", value_name = "TYPE")]
        types: Vec<String>,
        /// Only the events of this correlation id (a run's, a submission's).
        #[arg(long)]
        correlation: Option<String>,
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Pipelines: DAGs of stages, their runs and schedules (docs/pipelines.md).
    Pipeline {
        #[command(subcommand)]
        cmd: PipelineCmd,
    },
    /// Devices of every worker, or of NODE: state, current task, last error.
    Devices {
        #[arg(value_name = "NODE")]
        worker: Option<String>,
    },
    /// Let NODE finish the tasks it has and give it no new ones.
    Drain {
        #[arg(value_name = "NODE")]
        worker: String,
    },
    /// Give work to a drained NODE again.
    Undrain {
        #[arg(value_name = "NODE")]
        worker: String,
    },
    /// Restart a device: its tasks are reassigned (reason `device_restart`).
    RestartDevice {
        #[arg(value_name = "NODE")]
        worker: String,
        device: String,
    },
    /// Take a device out of service: its tasks are reassigned, it gets no new ones.
    KillDevice {
        #[arg(value_name = "NODE")]
        worker: String,
        device: String,
    },
    /// Let a device blocklisted for failing attempts in a row take work again.
    Unblock {
        #[arg(value_name = "NODE")]
        worker: String,
        device: String,
    },
}

struct Failure(u8, String);

fn get(cli: &Cli, path: &str) -> Result<Value, Failure> {
    request(cli, "GET", path, None)
}

fn request(cli: &Cli, method: &str, path: &str, body: Option<&str>) -> Result<Value, Failure> {
    request_with(cli, method, path, body, None)
}

fn token(cli: &Cli) -> Result<Option<String>, Failure> {
    Ok(match &cli.token_file {
        Some(f) => Some(
            orch_runtime::config::read_capped(f, orch_runtime::config::MAX_SECRET_BYTES)
                .map_err(|e| Failure(2, format!("token file `{}`: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    })
}

fn endpoint(cli: &Cli) -> Result<orch_runtime::fetch::Endpoint, Failure> {
    Ok(orch_runtime::fetch::Endpoint {
        node: cli.node.clone(),
        token: token(cli)?,
        tls: client_tls(cli)?,
    })
}

/// The TLS client configuration of `--ca`, if given.
fn client_tls(cli: &Cli) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, Failure> {
    match &cli.ca {
        Some(ca) => orch_runtime::tls::admin_client(ca)
            .map(Some)
            .map_err(|e| Failure(EXIT_USAGE, format!("--ca: {e}"))),
        None if cli.node.starts_with("https://") => Err(Failure(
            EXIT_USAGE,
            format!(
                "`{}` is HTTPS: pass the cluster's CA certificate with --ca FILE (or ORCH_CA)",
                cli.node
            ),
        )),
        None => Ok(None),
    }
}

/// The URL of `path` on the admin endpoint of `cli`.
fn url(cli: &Cli, path: &str) -> Result<String, Failure> {
    let tls = client_tls(cli)?.is_some();
    Ok(orch_runtime::fetch::admin_url(&cli.node, tls, path))
}

fn fetch(cli: &Cli, id: &str, dir: &std::path::Path) -> Result<(), Failure> {
    let ep = endpoint(cli)?;
    let progress = !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let done =
        orch_runtime::fetch::fetch(&ep, id, dir, progress).map_err(|(c, m)| Failure(c, m))?;
    if cli.json {
        print_json(&serde_json::json!({
            "dir": dir, "fetched": done.files, "bytes": done.bytes,
            "kept": done.kept, "missing": done.missing,
        }))?;
    } else {
        println!(
            "fetched {} files ({} bytes) into {}, {} already there; every one matched its sha256",
            done.files,
            done.bytes,
            dir.display(),
            done.kept
        );
        for m in &done.missing {
            println!("not collected: {m}");
        }
    }
    if done.missing.is_empty() {
        Ok(())
    } else {
        Err(Failure(
            EXIT_FAILED,
            format!(
                "{} outputs are not collected (see `orchctl manifest {id}`)",
                done.missing.len()
            ),
        ))
    }
}

fn request_with(
    cli: &Cli,
    method: &str,
    path: &str,
    body: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<Value, Failure> {
    let token = token(cli)?;
    let tls = client_tls(cli)?;
    let url = orch_runtime::fetch::admin_url(&cli.node, tls.is_some(), path);
    // A large manifest may take a while to stream: bound each read, not the
    // whole. The node answers within its own 5 s limit for the master, so a
    // read that waits longer means the node itself does not run.
    let agent = orch_runtime::fetch::admin_agent(tls.as_ref(), CONNECT_TIMEOUT, READ_TIMEOUT);
    let mut req = agent.request(method, &url);
    if let Some(t) = &token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    if let Some(k) = idempotency_key {
        req = req.set("Idempotency-Key", k);
    }
    let sent = match body {
        Some(b) => req.set("Content-Type", "application/toml").send_string(b),
        None => req.call(),
    };
    match sent {
        Ok(resp) => resp
            .into_json::<Value>()
            .map_err(|e| Failure(EXIT_FAILED, format!("bad answer from `{url}`: {e}"))),
        Err(ureq::Error::Status(code, resp)) => {
            let msg = resp
                .into_json::<Value>()
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| "no details".into());
            if code == 413 {
                return Err(Failure(
                    EXIT_USAGE,
                    format!("`{}` refused the request: {msg}", cli.node),
                ));
            }
            let exit = match code {
                401 | 403 => {
                    let hint = if token.is_none() {
                        " (pass --token-file or set ORCH_TOKEN_FILE)"
                    } else {
                        ""
                    };
                    return Err(Failure(
                        EXIT_AUTH,
                        format!("not authorized by `{}`: {msg}{hint}", cli.node),
                    ));
                }
                404 => EXIT_NOT_FOUND,
                _ => EXIT_FAILED,
            };
            Err(Failure(
                exit,
                format!("`{}` answered {code}: {msg}", cli.node),
            ))
        }
        Err(ureq::Error::Transport(t)) => Err(Failure(EXIT_FAILED, transport_error(&cli.node, &t))),
    }
}

/// Whether a failed request may have reached the master (it timed out, or
/// the connection broke) and may be sent again under its idempotency key.
fn retryable(msg: &str) -> bool {
    msg.contains("answered 504")
        || msg.contains("answered 502")
        || msg.contains("no answer within")
        || msg.contains("cannot reach")
}

/// How long `orchctl` waits for a node to accept the connection ...
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// ... and for each read of its answer.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One line for a request that got no HTTP answer.
fn transport_error(node: &str, t: &ureq::Transport) -> String {
    let io = std::error::Error::source(t).and_then(|e| e.downcast_ref::<std::io::Error>());
    let timed_out = io.is_some_and(|e| {
        matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        )
    });
    match (t.kind(), timed_out) {
        (ureq::ErrorKind::ConnectionFailed, true) => format!(
            "cannot reach the admin endpoint `{node}`: no answer to the connection within {CONNECT_TIMEOUT:?} (host down or cut off?)"
        ),
        (ureq::ErrorKind::ConnectionFailed, false) => format!(
            "cannot reach the admin endpoint `{node}`: {} (is the node running, with `admin.listen` there?)",
            io.map(|e| e.to_string()).unwrap_or_else(|| t.to_string())
        ),
        (_, true) => format!(
            "the admin endpoint `{node}` accepted the connection but sent no answer within {READ_TIMEOUT:?} (is the node stopped or overloaded?)"
        ),
        // A TLS record where an HTTP header was expected.
        _ if t.to_string().contains("Header field") || t.to_string().contains("[21, 3") => format!(
            "the admin endpoint `{node}` speaks TLS (`admin.tls = true`): pass the cluster's CA certificate with --ca FILE (or ORCH_CA)"
        ),
        _ => format!("cannot reach the admin endpoint `{node}`: {t}"),
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn print_status(v: Value) -> Result<(), Failure> {
    let s: ClusterStatus = serde_json::from_value(v)
        .map_err(|e| Failure(EXIT_FAILED, format!("unexpected status format: {e}")))?;
    println!(
        "master       {} (protocol {}, up {})",
        s.master,
        s.protocol_version,
        secs(s.uptime_ms)
    );
    println!(
        "workers      {} total: {} healthy, {} unhealthy, {} unregistered",
        s.workers_total, s.workers_healthy, s.workers_unhealthy, s.workers_unregistered
    );
    println!("devices      {} on healthy workers", s.devices_total);
    println!("queue depth  {:.2}", s.queue_depth_summary);
    println!(
        "activity     {} active, {} idle",
        s.workers_active, s.workers_idle
    );
    if !s.sessions.is_empty() {
        println!("sessions     (ranges: total / completed / in progress / pending / failed)");
        for v in &s.sessions {
            println!(
                "  {:<32} {:<10} {} / {} / {} / {} / {}  frames {}/{}",
                v.id,
                v.state.as_str(),
                v.tasks_total,
                v.tasks_completed,
                v.tasks_running,
                v.tasks_pending,
                v.tasks_failed,
                v.frames_done,
                v.frames_total
            );
        }
    }
    if !s.recent_failovers.is_empty() {
        println!("failovers    (most recent last)");
        for f in &s.recent_failovers {
            println!(
                "  {:<32} [{}, {}) task {} a{}->a{} from {}/{}: {}",
                f.session,
                f.replay.frames.start,
                f.replay.frames.end,
                f.replay.task,
                f.replay.old_attempt,
                f.replay.new_attempt,
                f.replay.node,
                f.replay.device,
                f.replay.reason
            );
        }
    }
    if s.recent_failures.is_empty() {
        println!("failures     none");
    } else {
        println!("failures     (most recent last)");
        for f in &s.recent_failures {
            println!(
                "  {:<20} {:<18} epoch {} at {}",
                f.node,
                f.reason.as_str(),
                f.epoch,
                secs(f.at_ms)
            );
        }
    }
    Ok(())
}

/// More than one master visible from the node asked: say so on stderr.
fn warn_of_masters(status: &Value) {
    let Some(all) = status["masters_visible"].as_array().filter(|a| a.len() > 1) else {
        return;
    };
    let names: Vec<String> = all
        .iter()
        .map(|m| format!("`{}`", m["node"].as_str().unwrap_or("?")))
        .collect();
    eprintln!(
        "warning: node `{}` sees {} masters: {}; only the oldest, {}, should serve (a node with role `master` that sees an older one stops)",
        status["answered_by"].as_str().unwrap_or("?"),
        all.len(),
        names.join(", "),
        names[0]
    );
}

fn print_workers(v: Value) -> Result<(), Failure> {
    let ws: Vec<WorkerView> = serde_json::from_value(v)
        .map_err(|e| Failure(EXIT_FAILED, format!("unexpected workers format: {e}")))?;
    println!(
        "{:<20} {:<12} {:<18} {:>8} {:>8} {:>7} {:>6} {:>5} {:>10}  ADDRESS",
        "NODE", "STATE", "REASON", "HB AGE", "DEVICES", "ACTIVE", "SLOTS", "GPU", "LAST FRAME"
    );
    for w in &ws {
        println!(
            "{:<20} {:<12} {:<18} {:>8} {:>8} {:>7} {:>6} {:>4}% {:>10}  {}",
            w.node,
            w.state.as_str(),
            w.reason.map(|r| r.as_str()).unwrap_or("-"),
            secs(w.heartbeat_age_ms),
            w.devices.len(),
            w.active_tasks,
            w.max_concurrency,
            (w.gpu_usage * 100.0).round() as u32,
            w.last_frame.map_or("-".to_string(), |f| f.to_string()),
            w.advertise
        );
    }
    if ws.is_empty() {
        println!("(no workers registered)");
    }
    Ok(())
}

fn print_json(v: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Failure(EXIT_FAILED, e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn session_line(v: &SessionView) -> String {
    let pct = if v.frames_total == 0 {
        100.0
    } else {
        v.frames_done as f64 * 100.0 / v.frames_total as f64
    };
    format!(
        "{:<32} {:<10} {:>6.1}% {:>10}/{:<10} {:>6} {:>6} {:>8} {:>7}  {}",
        v.id,
        if v.paused && !v.state.is_final() {
            "paused"
        } else {
            v.state.as_str()
        },
        pct,
        v.frames_done,
        v.frames_total,
        v.frames_failed,
        v.retries,
        v.failovers,
        format!("{:.1}s", v.elapsed_ms as f64 / 1000.0),
        v.waiting.as_deref().unwrap_or("")
    )
}

const SESSION_HEADER: &str = "ID                               STATE        DONE      FRAMES/TOTAL     FAILED  RETRY FAILOVER    TIME  WAITING";

fn parse_view(v: Value) -> Result<SessionView, Failure> {
    serde_json::from_value(v)
        .map_err(|e| Failure(EXIT_FAILED, format!("unexpected session format: {e}")))
}

/// A TOML file (at most `MAX_TOML_BYTES`) with `placeholder` replaced by
/// the absolute path of the file's folder.
fn read_in_place(file: &std::path::Path, placeholder: &str) -> Result<String, Failure> {
    let text = orch_runtime::config::read_capped(file, orch_runtime::config::MAX_TOML_BYTES)
        .map_err(|e| Failure(2, format!("`{}`: {e}", file.display())))?;
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    Ok(text.replace(placeholder, &dir.display().to_string()))
}

fn submit(cli: &Cli, file: &std::path::Path, wait: bool) -> Result<(), Failure> {
    // Validate here too, so that mistakes are reported with the file's name.
    orch_runtime::session_file::load(file).map_err(|e| Failure(2, e.to_string()))?;
    let text = read_in_place(file, "{session_dir}")?;
    // One key for this submission: sent again after a timeout or a broken
    // connection, it returns the session the first try made, never a second.
    let key = format!("orchctl-{:032x}", rand::random::<u128>());
    let mut tries = 0;
    let v = loop {
        tries += 1;
        match request_with(cli, "POST", "/v1/sessions", Some(&text), Some(&key)) {
            Err(Failure(EXIT_FAILED, msg)) if tries < 3 && retryable(&msg) => {
                eprintln!("{msg}; trying again with the same idempotency key");
                std::thread::sleep(Duration::from_secs(1));
            }
            other => break other?,
        }
    };
    let id = v["id"].as_str().unwrap_or_default().to_string();
    if !wait {
        return if cli.json {
            print_json(&v)
        } else {
            println!("{id}");
            Ok(())
        };
    }
    follow(cli, &id)
}

/// Show a live progress bar for session `id` until it ends.
fn follow(cli: &Cli, id: &str) -> Result<(), Failure> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} frames {per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let view = loop {
        let v = parse_view(get(cli, &format!("/v1/sessions/{id}"))?)?;
        bar.set_length(v.frames_total);
        bar.set_position(v.frames_done);
        bar.set_message(match &v.waiting {
            Some(w) if v.tasks_running == 0 => format!("waiting: {w}"),
            _ => format!(
                "failed {} retries {} failovers {}",
                v.frames_failed, v.retries, v.failovers
            ),
        });
        if v.state.is_final() {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    bar.finish_and_clear();
    if cli.json {
        print_json(&serde_json::to_value(&view).unwrap_or_default())?;
    } else {
        println!("{SESSION_HEADER}");
        println!("{}", session_line(&view));
    }
    if view.state == SessionState::Completed {
        Ok(())
    } else {
        Err(Failure(
            EXIT_FAILED,
            format!("session `{id}` ended {}", view.state.as_str()),
        ))
    }
}

fn tls(cli: &Cli, cmd: &TlsCmd) -> Result<(), Failure> {
    let made = match cmd {
        TlsCmd::Init { dir, days } => orch_runtime::tls::init_ca(dir, *days),
        TlsCmd::Node {
            dir,
            name,
            master,
            hosts,
            days,
        } => orch_runtime::tls::issue_node(
            dir,
            &orch_runtime::tls::NodeCert {
                name: name.clone(),
                master: *master,
                hosts: hosts.clone(),
                days: *days,
            },
        ),
    }
    .map_err(|e| Failure(EXIT_FAILED, e))?;
    if cli.json {
        print_json(&serde_json::json!({ "files": made }))
    } else {
        for f in &made {
            println!("wrote {}", f.display());
        }
        Ok(())
    }
}

fn token_cmd(cli: &Cli, cmd: &TokenCmd) -> Result<(), Failure> {
    let TokenCmd::New { file, label, role } = cmd;
    let role = orch_runtime::tokens::Role::parse(role).ok_or_else(|| {
        Failure(
            EXIT_USAGE,
            format!("--role: expected `read`, `operate` or `admin`, got `{role}`"),
        )
    })?;
    let token =
        orch_runtime::tokens::add(file, label, role).map_err(|e| Failure(EXIT_FAILED, e))?;
    if cli.json {
        print_json(
            &serde_json::json!({ "label": label, "role": role, "token": token, "file": file }),
        )
    } else {
        eprintln!(
            "added `{label}` (role `{role}`) to {}; the token is shown once, keep it in a file of mode 0600:",
            file.display()
        );
        println!("{token}");
        Ok(())
    }
}

fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.cmd {
        Cmd::Tls { cmd } => return tls(cli, cmd),
        Cmd::Token { cmd } => return token_cmd(cli, cmd),
        Cmd::Submit { file, wait } => return submit(cli, file, *wait),
        Cmd::Cancel { id } => {
            let v = request(cli, "POST", &format!("/v1/sessions/{id}/cancel"), Some(""))?;
            return if cli.json {
                print_json(&v)
            } else {
                println!("cancelled {id}");
                Ok(())
            };
        }
        Cmd::Watch { id } => return follow(cli, id),
        Cmd::Fetch { id, dir } => return fetch(cli, id, dir),
        Cmd::Logs {
            id,
            task,
            attempt,
            follow,
        } => {
            let ep = endpoint(cli)?;
            return orch_runtime::fetch::logs(
                &ep,
                id,
                *task,
                *attempt,
                *follow,
                &mut std::io::stdout().lock(),
            )
            .map_err(|(c, m)| Failure(c, m));
        }
        Cmd::Workflow { cmd } => return workflow(cli, cmd),
        Cmd::Pipeline { cmd } => return pipeline(cli, cmd),
        Cmd::Events {
            follow,
            types,
            correlation,
            since,
        } => return events(cli, *follow, types, correlation.as_deref(), *since),
        Cmd::Pause { id } => return mutate(cli, &format!("/v1/sessions/{id}/pause")),
        Cmd::Resume { id } => return mutate(cli, &format!("/v1/sessions/{id}/resume")),
        Cmd::Retry { id } => return mutate(cli, &format!("/v1/sessions/{id}/retry")),
        Cmd::Requeue { id, task } => {
            return mutate(cli, &format!("/v1/sessions/{id}/tasks/{task}/requeue"))
        }
        Cmd::Drain { worker } => return mutate(cli, &format!("/v1/nodes/{worker}/drain")),
        Cmd::Undrain { worker } => return mutate(cli, &format!("/v1/nodes/{worker}/undrain")),
        Cmd::RestartDevice { worker, device } => {
            return mutate(cli, &format!("/v1/nodes/{worker}/devices/{device}/restart"))
        }
        Cmd::KillDevice { worker, device } => {
            return mutate(cli, &format!("/v1/nodes/{worker}/devices/{device}/kill"))
        }
        Cmd::Unblock { worker, device } => {
            return mutate(cli, &format!("/v1/nodes/{worker}/devices/{device}/unblock"))
        }
        _ => {}
    }
    let path = match &cli.cmd {
        Cmd::Status => "/v1/status".to_string(),
        Cmd::Workers => "/v1/workers".to_string(),
        Cmd::Sessions => "/v1/sessions".to_string(),
        Cmd::Session { id } => format!("/v1/sessions/{id}"),
        Cmd::Manifest { id } => format!("/v1/sessions/{id}/manifest"),
        Cmd::Devices { worker: Some(n) } => format!("/v1/devices?node={n}"),
        Cmd::Devices { worker: None } => "/v1/devices".to_string(),
        _ => unreachable!("handled above"),
    };
    let v = get(cli, &path)?;
    if cli.json {
        if let Cmd::Status = cli.cmd {
            warn_of_masters(&v);
        }
        return print_json(&v);
    }
    if let Cmd::Status = cli.cmd {
        warn_of_masters(&v);
    }
    match &cli.cmd {
        Cmd::Status => print_status(v),
        Cmd::Workers => print_workers(v),
        Cmd::Sessions => {
            let list: Vec<SessionView> = serde_json::from_value(v)
                .map_err(|e| Failure(EXIT_FAILED, format!("unexpected sessions format: {e}")))?;
            println!("{SESSION_HEADER}");
            for s in &list {
                println!("{}", session_line(s));
            }
            Ok(())
        }
        Cmd::Session { .. } => {
            println!("{SESSION_HEADER}");
            println!("{}", session_line(&parse_view(v)?));
            Ok(())
        }
        Cmd::Manifest { .. } => {
            let m: Manifest = serde_json::from_value(v)
                .map_err(|e| Failure(EXIT_FAILED, format!("unexpected manifest format: {e}")))?;
            println!(
                "session {} ({}) {}: frames [{}, {})",
                m.session,
                m.name,
                m.state.as_str(),
                m.frames.start,
                m.frames.end
            );
            println!(
                "{:<22} {:>8} {:>7} {:<16} {:<16} {:>7}",
                "FRAMES", "TASK", "ATTEMPT", "NODE", "DEVICE", "OUTPUTS"
            );
            for r in &m.ranges {
                println!(
                    "{:<22} {:>8} {:>7} {:<16} {:<16} {:>7}",
                    format!("[{}, {})", r.frames.start, r.frames.end),
                    r.task,
                    r.attempt,
                    r.node,
                    r.device,
                    r.outputs.len()
                );
            }
            for r in &m.replay {
                println!(
                    "replay  [{}, {}) task {} attempt {} -> {} from {}/{}: {}",
                    r.frames.start,
                    r.frames.end,
                    r.task,
                    r.old_attempt,
                    r.new_attempt,
                    r.node,
                    r.device,
                    r.reason
                );
            }
            for f in &m.failed {
                println!(
                    "failed  [{}, {}) task {} after {} attempts: {}",
                    f.frames.start, f.frames.end, f.task, f.attempts, f.error
                );
            }
            for f in &m.retried {
                println!(
                    "retried [{}, {}) task {} had failed after {} attempts: {}",
                    f.frames.start, f.frames.end, f.task, f.attempts, f.error
                );
            }
            print_collection(&m);
            Ok(())
        }
        Cmd::Devices { .. } => {
            let list: Vec<DeviceView> = serde_json::from_value(v)
                .map_err(|e| Failure(EXIT_FAILED, format!("unexpected devices format: {e}")))?;
            println!(
                "{:<20} {:<20} {:<12} {:<40} {:>6}  LAST ERROR",
                "NODE", "DEVICE", "STATE", "TASK", "DONE"
            );
            for d in &list {
                let task = d
                    .tasks
                    .first()
                    .map(|t| {
                        format!(
                            "{} #{} a{} [{}, {})",
                            t.session, t.task, t.attempt, t.frames.start, t.frames.end
                        )
                    })
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<20} {:<20} {:<12} {:<40} {:>6}  {}",
                    d.node,
                    d.device,
                    d.state.as_str(),
                    task,
                    d.tasks_done,
                    d.last_error.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        _ => unreachable!("handled above"),
    }
}

fn workflow(cli: &Cli, cmd: &WorkflowCmd) -> Result<(), Failure> {
    use orch_actors::workflow::Workflow;
    let v = match cmd {
        WorkflowCmd::Add { file } => {
            let text = read_in_place(file, "{workflow_dir}")?;
            // Checked here too, so that mistakes name the file.
            orch_runtime::workflow_file::parse(&text, &file.display().to_string())
                .map_err(|e| Failure(2, e.to_string()))?;
            let v = request(cli, "POST", "/v1/workflows", Some(&text))?;
            if !cli.json {
                println!("stored workflow {}", v["label"].as_str().unwrap_or("?"));
                return Ok(());
            }
            v
        }
        WorkflowCmd::List => get(cli, "/v1/workflows")?,
        WorkflowCmd::Show { name } => get(cli, &format!("/v1/workflows/{name}"))?,
    };
    if cli.json {
        return print_json(&v);
    }
    let list: Vec<Workflow> = match v {
        serde_json::Value::Array(_) => serde_json::from_value(v),
        other => serde_json::from_value(other).map(|w| vec![w]),
    }
    .map_err(|e| Failure(EXIT_FAILED, format!("unexpected workflow format: {e}")))?;
    if matches!(cmd, WorkflowCmd::List) {
        println!("{:<32} {:>7} {:>5}  STEPS", "WORKFLOW", "VERSION", "STEPS");
        for w in &list {
            let names: Vec<&str> = w.steps.iter().map(|s| s.name.as_str()).collect();
            println!(
                "{:<32} {:>7} {:>5}  {}",
                w.name,
                w.version,
                w.steps.len(),
                names.join(" → ")
            );
        }
        return Ok(());
    }
    for w in &list {
        println!("workflow {}", w.label());
        for (i, s) in w.steps.iter().enumerate() {
            println!(
                "  {}. {:<16} timeout {} ms, on failure {}: {}",
                i + 1,
                s.name,
                s.timeout_ms,
                s.on_failure.as_str(),
                s.argv.join(" ")
            );
        }
    }
    Ok(())
}

/// `s` for a URL query.
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_event(cli: &Cli, e: &orch_actors::events::BusEvent) -> Result<(), Failure> {
    if cli.json {
        println!("{}", serde_json::to_string(e).unwrap_or_default());
        return Ok(());
    }
    let payload: Vec<String> = e.payload.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{:>8}  {}  {:<22} {:<24} {}",
        e.id,
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(e.timestamp_ms)
        ),
        e.kind,
        e.correlation_id,
        payload.join(" ")
    );
    Ok(())
}

fn events(
    cli: &Cli,
    follow: bool,
    types: &[String],
    correlation: Option<&str>,
    since: u64,
) -> Result<(), Failure> {
    use orch_actors::events::BusEvent;
    let mut q = Vec::new();
    if !types.is_empty() {
        q.push(format!("type={}", query_value(&types.join(","))));
    }
    if let Some(c) = correlation {
        q.push(format!("correlation={}", query_value(c)));
    }
    if !follow {
        q.push(format!("since={since}"));
        q.push("limit=10000".into());
        let v = get(cli, &format!("/v1/events?{}", q.join("&")))?;
        let list: Vec<BusEvent> = serde_json::from_value(v)
            .map_err(|e| Failure(EXIT_FAILED, format!("unexpected event format: {e}")))?;
        for e in &list {
            print_event(cli, e)?;
        }
        return Ok(());
    }
    q.push("follow=true".into());
    let token = token(cli)?;
    let mut last = since;
    let mut failures = 0u32;
    loop {
        let url = url(cli, &format!("/v1/events?{}", q.join("&")))?;
        // The node sends a keep-alive line every 15 s.
        let agent = orch_runtime::fetch::admin_agent(
            client_tls(cli)?.as_ref(),
            CONNECT_TIMEOUT,
            Duration::from_secs(45),
        );
        let mut req = agent.get(&url).set("Last-Event-ID", &last.to_string());
        if let Some(t) = &token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(resp) => {
                failures = 0;
                let reader = std::io::BufReader::new(resp.into_reader());
                for line in std::io::BufRead::lines(reader) {
                    let Ok(line) = line else { break };
                    if let Some(data) = line.strip_prefix("data: ") {
                        if let Ok(e) = serde_json::from_str::<BusEvent>(data) {
                            last = e.id;
                            print_event(cli, &e)?;
                        }
                    }
                }
            }
            Err(ureq::Error::Status(code, resp)) => {
                let msg = resp
                    .into_json::<Value>()
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let exit = match code {
                    401 | 403 => EXIT_AUTH,
                    400 => EXIT_USAGE,
                    _ => EXIT_FAILED,
                };
                return Err(Failure(
                    exit,
                    format!("`{}` answered {code}: {msg}", cli.node),
                ));
            }
            Err(ureq::Error::Transport(t)) => {
                failures += 1;
                if failures >= 5 {
                    return Err(Failure(EXIT_FAILED, transport_error(&cli.node, &t)));
                }
            }
        }
        // The stream ended (the node restarted?): again, from the last event seen.
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A time of the ledger's clock (unix ms), to the second, UTC.
fn when(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
    }
}

fn pipeline(cli: &Cli, cmd: &PipelineCmd) -> Result<(), Failure> {
    use orch_actors::pipeline::{PipelineView, Run, Schedule};
    let add = |file: &std::path::Path| -> Result<Value, Failure> {
        let text = orch_runtime::pipeline_file::inline(file)
            .map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
        request(cli, "POST", "/v1/pipelines", Some(&text))
    };
    let schedule = |s: &Option<Schedule>| match s {
        None => "-".to_string(),
        Some(Schedule::Every { ms }) => format!(
            "every {}",
            humantime::format_duration(Duration::from_millis(*ms))
        ),
        Some(Schedule::Cron { expr, tz }) => format!("cron {expr} {tz}"),
    };
    let v = match cmd {
        PipelineCmd::Check { file } => {
            let p = orch_runtime::pipeline_file::load(file)
                .map_err(|e| Failure(EXIT_USAGE, e.to_string()))?;
            println!(
                "{}: pipeline `{}`, {} stages, ok",
                file.display(),
                p.name,
                p.stages.len()
            );
            return Ok(());
        }
        PipelineCmd::Add { file } => {
            let v = add(file)?;
            if !cli.json {
                println!(
                    "stored pipeline {}@{}",
                    v["name"].as_str().unwrap_or("?"),
                    v["version"]
                );
                return Ok(());
            }
            v
        }
        PipelineCmd::Run { name, params, wait } => {
            let mut map = serde_json::Map::new();
            for p in params {
                let Some((k, val)) = p.split_once('=') else {
                    return Err(Failure(
                        EXIT_USAGE,
                        format!("--param `{p}`: expected KEY=VALUE"),
                    ));
                };
                map.insert(k.to_string(), Value::String(val.to_string()));
            }
            let path = std::path::Path::new(name);
            let name = if path.is_file() {
                let v = add(path)?;
                v["name"].as_str().unwrap_or_default().to_string()
            } else {
                name.clone()
            };
            let body = serde_json::json!({ "params": map }).to_string();
            let v = request(
                cli,
                "POST",
                &format!("/v1/pipelines/{name}/runs"),
                Some(&body),
            )?;
            let run = v["run"].as_str().unwrap_or_default().to_string();
            if !*wait {
                if cli.json {
                    return print_json(&v);
                }
                println!(
                    "started run {run} of pipeline {name} (correlation id {})",
                    v["correlation_id"].as_str().unwrap_or("?")
                );
                return Ok(());
            }
            if !cli.json {
                println!("started run {run} of pipeline {name}");
            }
            let mut seen: std::collections::HashMap<String, String> = Default::default();
            loop {
                let v = get(cli, &format!("/v1/runs/{run}"))?;
                let r: Run = serde_json::from_value(v.clone())
                    .map_err(|e| Failure(EXIT_FAILED, format!("unexpected run format: {e}")))?;
                if !cli.json {
                    for s in &r.stages {
                        let state = s.state.as_str().to_string();
                        if seen.get(&s.name) != Some(&state)
                            && s.state != orch_actors::pipeline::StageState::Pending
                            && s.state != orch_actors::pipeline::StageState::Standby
                        {
                            println!(
                                "  {:<24} {:<10} attempt {}{}",
                                s.name,
                                state,
                                s.attempts,
                                s.last_error
                                    .as_deref()
                                    .filter(|_| matches!(
                                        s.state,
                                        orch_actors::pipeline::StageState::Failed
                                            | orch_actors::pipeline::StageState::Waiting
                                            | orch_actors::pipeline::StageState::Skipped
                                    ))
                                    .map(|e| format!(": {e}"))
                                    .unwrap_or_default()
                            );
                            seen.insert(s.name.clone(), state);
                        }
                    }
                }
                if r.state.is_final() {
                    if cli.json {
                        print_json(&v)?;
                    } else {
                        println!("run {run} {}", r.state.as_str());
                    }
                    return if r.state == orch_actors::pipeline::RunState::Completed {
                        Ok(())
                    } else {
                        Err(Failure(
                            EXIT_FAILED,
                            format!("run {run} ended {}", r.state.as_str()),
                        ))
                    };
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        PipelineCmd::List => {
            let v = get(cli, "/v1/pipelines")?;
            if cli.json {
                return print_json(&v);
            }
            let list: Vec<PipelineView> = serde_json::from_value(v)
                .map_err(|e| Failure(EXIT_FAILED, format!("unexpected pipeline format: {e}")))?;
            println!(
                "{:<28} {:>7} {:>6}  {:<26} {:<20} {:<11} LAST RUN",
                "PIPELINE", "VERSION", "STAGES", "SCHEDULE", "NEXT RUN", "STATUS"
            );
            for p in &list {
                println!(
                    "{:<28} {:>7} {:>6}  {:<26} {:<20} {:<11} {}",
                    p.name,
                    p.version,
                    p.stages,
                    schedule(&p.schedule),
                    when(p.next_run_ms),
                    p.status,
                    p.last_run.as_deref().unwrap_or("-")
                );
            }
            return Ok(());
        }
        PipelineCmd::Status { name } => {
            let v = get(cli, &format!("/v1/pipelines/{name}"))?;
            if cli.json {
                return print_json(&v);
            }
            let p: PipelineView = serde_json::from_value(v["pipeline"].clone())
                .map_err(|e| Failure(EXIT_FAILED, format!("unexpected pipeline format: {e}")))?;
            println!(
                "pipeline     {}@{} ({} stages)",
                p.name, p.version, p.stages
            );
            println!("status       {}", p.status);
            println!("schedule     {}", schedule(&p.schedule));
            println!("next run     {}", when(p.next_run_ms));
            println!("last slot    {}", when(p.last_slot_ms));
            println!(
                "runs         {} (last: {})",
                p.runs,
                p.last_run.as_deref().unwrap_or("-")
            );
            for (stage, b) in &p.breakers {
                let detail = match b {
                    orch_actors::pipeline::Breaker::Closed { failures } => {
                        format!("{failures} failures in a row")
                    }
                    orch_actors::pipeline::Breaker::Open { since_ms, failures } => {
                        format!("since {} after {failures} failures", when(Some(*since_ms)))
                    }
                    orch_actors::pipeline::Breaker::HalfOpen { trial } => {
                        format!("trial in run {trial}")
                    }
                };
                println!("breaker      {stage}: {} ({detail})", b.as_str());
            }
            return Ok(());
        }
        PipelineCmd::Runs { name } => {
            let v = get(cli, &format!("/v1/pipelines/{name}/runs"))?;
            if cli.json {
                return print_json(&v);
            }
            let runs: Vec<Run> = serde_json::from_value(v)
                .map_err(|e| Failure(EXIT_FAILED, format!("unexpected run format: {e}")))?;
            println!(
                "{:<36} {:<11} {:<22} {:<20} {:>9}",
                "RUN", "STATE", "CAUSE", "STARTED", "TOOK"
            );
            for r in &runs {
                let took = r
                    .finished_ms
                    .map(|f| secs(f.saturating_sub(r.started_ms)))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<36} {:<11} {:<22} {:<20} {:>9}",
                    r.id,
                    r.state.as_str(),
                    r.cause.label(),
                    when(Some(r.started_ms)),
                    took
                );
            }
            return Ok(());
        }
        PipelineCmd::Show { run } => {
            let v = get(cli, &format!("/v1/runs/{run}"))?;
            if cli.json {
                return print_json(&v);
            }
            let r: Run = serde_json::from_value(v)
                .map_err(|e| Failure(EXIT_FAILED, format!("unexpected run format: {e}")))?;
            println!(
                "run {} of {}@{}: {} (cause {}, correlation id {})",
                r.id,
                r.pipeline,
                r.version,
                r.state.as_str(),
                r.cause.label(),
                r.correlation_id
            );
            println!(
                "{:<24} {:<10} {:>8} {:>13} {:<20} {:>9}  LAST ERROR",
                "STAGE", "STATE", "ATTEMPTS", "ITEMS", "STARTED", "TOOK"
            );
            for s in &r.stages {
                let took = match (s.started_ms, s.finished_ms) {
                    (Some(a), Some(b)) => secs(b.saturating_sub(a)),
                    _ => "-".into(),
                };
                let items = if s.items_total > 0 {
                    format!("{}/{}", s.items_processed, s.items_total)
                } else {
                    "-".into()
                };
                let mut err = s.last_error.clone().unwrap_or_else(|| "-".into());
                if let Some(f) = &s.fallback_for {
                    err = format!("(fallback for {f}) {err}");
                }
                println!(
                    "{:<24} {:<10} {:>8} {:>13} {:<20} {:>9}  {}",
                    s.name,
                    s.state.as_str(),
                    s.attempts,
                    items,
                    when(s.started_ms),
                    took,
                    err
                );
            }
            return Ok(());
        }
        PipelineCmd::Cancel { run } => return mutate(cli, &format!("/v1/runs/{run}/cancel")),
        PipelineCmd::Rerun { run } => return mutate(cli, &format!("/v1/runs/{run}/rerun")),
    };
    print_json(&v)
}

/// A mutating command: POST, then print what was done.
fn mutate(cli: &Cli, path: &str) -> Result<(), Failure> {
    let v = request(cli, "POST", path, Some(""))?;
    if cli.json {
        print_json(&v)
    } else {
        println!("{}", v["message"].as_str().unwrap_or("done"));
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("error: {msg}");
            exit::code(code)
        }
    }
}

/// The collection part of `orchctl manifest`.
fn print_collection(m: &Manifest) {
    use orch_actors::protocol::CollectState;
    let Some(c) = &m.collection else {
        if m.collect.is_empty() {
            println!(
                "outputs not collected (`collect = \"none\"`, or the executor writes no files)"
            );
        }
        return;
    };
    println!(
        "collection on node `{}` in {}: {} collected, {} pending, {} uncollected, {} failed, {} conflicts{}",
        c.node,
        c.dir,
        c.collected,
        c.pending,
        c.uncollected,
        c.failed,
        c.conflicts,
        if c.settled { " (settled)" } else { "" }
    );
    for f in c
        .files
        .iter()
        .filter(|f| f.state != CollectState::Collected || f.error.is_some())
    {
        println!(
            "  {:<12} {} task {} attempt {} from {}: {}",
            format!("{:?}", f.state).to_lowercase(),
            f.name,
            f.task,
            f.attempt,
            f.node,
            f.error.as_deref().unwrap_or("")
        );
    }
}
