//! `orchctl`: the operator's command line, a client of any node's admin API.
//!
//! Exit codes: 0 ok, 1 operation failed, 2 usage, 3 not found, 4 authentication.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use orch_actors::protocol::{ClusterStatus, WorkerView};
use serde_json::Value;

const EXIT_FAILED: u8 = 1;
const EXIT_NOT_FOUND: u8 = 3;
const EXIT_AUTH: u8 = 4;

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
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Cluster summary: master, workers by state, devices, recent failures.
    Status,
    /// Every worker the master knows, with its state and devices.
    Workers,
}

struct Failure(u8, String);

/// Prints one command's answer as a human table.
type Printer = fn(Value) -> Result<(), Failure>;

fn get(cli: &Cli, path: &str) -> Result<Value, Failure> {
    let token = match &cli.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Failure(2, format!("cannot read token file `{}`: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let url = format!("http://{}{path}", cli.node);
    let mut req = ureq::get(&url).timeout(Duration::from_secs(15));
    if let Some(t) = &token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    match req.call() {
        Ok(resp) => resp
            .into_json::<Value>()
            .map_err(|e| Failure(EXIT_FAILED, format!("bad answer from `{url}`: {e}"))),
        Err(ureq::Error::Status(code, resp)) => {
            let msg = resp
                .into_json::<Value>()
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| "no details".into());
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
        Err(e) => Err(Failure(
            EXIT_FAILED,
            format!("cannot reach the admin endpoint `{}`: {e}", cli.node),
        )),
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

fn print_workers(v: Value) -> Result<(), Failure> {
    let ws: Vec<WorkerView> = serde_json::from_value(v)
        .map_err(|e| Failure(EXIT_FAILED, format!("unexpected workers format: {e}")))?;
    println!(
        "{:<20} {:<12} {:<18} {:>8} {:>8} {:>7} {:>6}  ADDRESS",
        "NODE", "STATE", "REASON", "HB AGE", "DEVICES", "ACTIVE", "SLOTS"
    );
    for w in &ws {
        println!(
            "{:<20} {:<12} {:<18} {:>8} {:>8} {:>7} {:>6}  {}",
            w.node,
            w.state.as_str(),
            w.reason.map(|r| r.as_str()).unwrap_or("-"),
            secs(w.heartbeat_age_ms),
            w.devices.len(),
            w.active_tasks,
            w.max_concurrency,
            w.advertise
        );
    }
    if ws.is_empty() {
        println!("(no workers registered)");
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let (path, print): (&str, Printer) = match cli.cmd {
        Cmd::Status => ("/v1/status", print_status),
        Cmd::Workers => ("/v1/workers", print_workers),
    };
    let v = get(cli, path)?;
    if cli.json {
        let text =
            serde_json::to_string_pretty(&v).map_err(|e| Failure(EXIT_FAILED, e.to_string()))?;
        println!("{text}");
        Ok(())
    } else {
        print(v)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}
