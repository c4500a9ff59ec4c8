//! `bench-pipelines`: what pipelines and the event bus cost, on real
//! `orch-node` processes on 127.0.0.1 (docs/pipelines.md).
//!
//! ```sh
//! cargo run --release -p orch-benches --bin bench-pipelines -- [--quick] [--no-build] [--json FILE]
//! ```
//!
//! One master + worker node (8 devices) and one worker (8 devices),
//! heartbeat 1 s × 3, the node's default store (`process`).
//! - **Chain**: a 100-stage chain of no-op command stages (`true`): for each
//!   stage after the first, from the master's `finished_ms` of the range
//!   before (its result arrived) to the `started_ms` of the next stage's
//!   range (assigned to a device): the overhead between two blocks.
//! - **Events**: while the chain runs, a server-sent events subscriber on
//!   the worker's node (the events cross the cluster link) and one on the
//!   master's node: from each event's `timestamp_ms` (the master's clock when
//!   it decided) to its arrival here (same machine, same clock).
//! - **Wide DAG**: a 1,000-stage DAG (ten layers of 100) run once: time to
//!   the end, master RSS.
//! - **Schedules**: 10,000 pipelines with interval schedules of 1 hour
//!   (none fires during the run): the master's RSS and CPU over 30 s idle.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use orch_tests::{all_healthy, free_port, NodeSpec, TestCluster};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
struct Args {
    /// Smaller: a 30-stage chain, a 200-stage DAG, 1,000 schedules.
    #[arg(long)]
    quick: bool,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Do not run `cargo build --release` for the binaries first.
    #[arg(long)]
    no_build: bool,
}

use orch_benches::{cpu_seconds, memory, release_bins as bins};

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rss(pid: i32) -> u64 {
    memory(pid).map_or(0, |m| m.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn post(addr: SocketAddr, path: &str, body: &str) -> Result<Value> {
    let r = ureq::post(&format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(60))
        .send_string(body);
    match r {
        Ok(r) => Ok(r.into_json()?),
        Err(ureq::Error::Status(c, r)) => {
            bail!("POST {path}: {c} {}", r.into_string().unwrap_or_default())
        }
        Err(e) => bail!("POST {path}: {e}"),
    }
}

fn get(addr: SocketAddr, path: &str) -> Result<Value> {
    Ok(ureq::get(&format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(60))
        .call()?
        .into_json()?)
}

fn wait_run(addr: SocketAddr, run: &str, within: Duration) -> Result<Value> {
    let t0 = Instant::now();
    loop {
        let v = get(addr, &format!("/v1/runs/{run}"))?;
        if v["state"] != "in_progress" {
            return Ok(v);
        }
        if t0.elapsed() > within {
            bail!("run {run} still in progress after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Collect (event, arrival unix ms) from an SSE stream until `stop`.
fn subscribe(addr: SocketAddr, after: u64, got: Arc<Mutex<Vec<(Value, u64)>>>) {
    std::thread::spawn(move || {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return;
        };
        let _ = write!(s, "GET /v1/events?follow=true HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nLast-Event-ID: {after}\r\n\r\n");
        for line in BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            if let Some(d) = line.strip_prefix("data: ") {
                let at = unix_ms();
                if let Ok(v) = serde_json::from_str::<Value>(d) {
                    got.lock().unwrap().push((v, at));
                }
            }
        }
    });
}

fn chain(n: usize) -> String {
    let mut t = "name = \"chain\"\n".to_string();
    for i in 0..n {
        t.push_str(&format!(
            "[[stage]]\nname = \"s{i}\"\ncommand = [\"true\"]\ntimeout = \"1m\"\n"
        ));
        if i > 0 {
            t.push_str(&format!("depends_on = [\"s{}\"]\n", i - 1));
        }
    }
    t
}

fn wide(layers: usize, width: usize) -> String {
    let mut t = "name = \"wide\"\n".to_string();
    for l in 0..layers {
        for w in 0..width {
            t.push_str(&format!(
                "[[stage]]\nname = \"l{l}w{w}\"\ncommand = [\"true\"]\n"
            ));
            if l > 0 {
                t.push_str(&format!(
                    "depends_on = [\"l{}w{w}\", \"l{}w{}\"]\n",
                    l - 1,
                    l - 1,
                    (w + 1) % width
                ));
            }
        }
    }
    t
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bins = bins(args.no_build)?;
    let (chain_n, layers, width, schedules) = if args.quick {
        (30, 2, 100, 1_000)
    } else {
        (100, 10, 100, 10_000)
    };
    let mut c = TestCluster::new(bins);
    let port = free_port();
    let mut m = NodeSpec::new("master").master().heartbeat(1000, 3);
    m.rust_log = Some("warn".into());
    m.devices = 8;
    m.max_concurrency = 8;
    c.add_with_port(m, port)?;
    let mut w = NodeSpec::new("worker")
        .peer(format!("127.0.0.1:{port}"))
        .heartbeat(1000, 3);
    w.rust_log = Some("warn".into());
    w.devices = 8;
    w.max_concurrency = 8;
    c.add(w)?;
    c.wait_for("2 healthy workers", Duration::from_secs(30), |ws| {
        all_healthy(ws, &["master", "worker"])
    })?;
    let (madmin, wadmin) = (c.nodes[0].admin_addr, c.nodes[1].admin_addr);
    let mpid = c.nodes[0].pid().context("master pid")?;

    // Chain, with subscribers on both nodes.
    let on_master = Arc::new(Mutex::new(Vec::new()));
    let on_worker = Arc::new(Mutex::new(Vec::new()));
    // From the newest event on: what comes is timed as it comes.
    let newest = get(madmin, "/v1/events?since=0&limit=10000")?
        .as_array()
        .and_then(|a| a.last().and_then(|e| e["id"].as_u64()))
        .unwrap_or(0);
    subscribe(madmin, newest, on_master.clone());
    subscribe(wadmin, newest, on_worker.clone());
    std::thread::sleep(Duration::from_millis(500));
    post(madmin, "/v1/pipelines", &chain(chain_n))?;
    let t0 = Instant::now();
    let run = post(madmin, "/v1/pipelines/chain/runs", "")?["run"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let v = wait_run(madmin, &run, Duration::from_secs(600))?;
    let chain_secs = t0.elapsed().as_secs_f64();
    if v["state"] != "completed" {
        bail!("the chain ended {}: {v}", v["state"]);
    }
    let mut gaps = Vec::new();
    let mut prev_finished: Option<u64> = None;
    for st in v["stages"].as_array().context("stages")? {
        let session = st["session"].as_str().context("session")?;
        let m = get(madmin, &format!("/v1/sessions/{session}/manifest"))?;
        let r = &m["ranges"][0];
        let (s, f) = (
            r["started_ms"].as_u64().unwrap_or(0),
            r["finished_ms"].as_u64().unwrap_or(0),
        );
        if let Some(p) = prev_finished {
            gaps.push(s.saturating_sub(p) as f64);
        }
        prev_finished = Some(f);
    }
    std::thread::sleep(Duration::from_secs(1));
    let lat = |got: &Arc<Mutex<Vec<(Value, u64)>>>| -> (usize, f64, f64, f64) {
        let g = got.lock().unwrap();
        let mut l: Vec<f64> = g
            .iter()
            .map(|(e, at)| at.saturating_sub(e["timestamp_ms"].as_u64().unwrap_or(*at)) as f64)
            .collect();
        let n = l.len();
        (n, pct(&mut l, 0.5), pct(&mut l, 0.99), pct(&mut l, 1.0))
    };
    let (me, mp50, mp99, mmax) = lat(&on_master);
    let (we, wp50, wp99, wmax) = lat(&on_worker);
    let (g50, g99, gmax) = {
        let mut g = gaps.clone();
        (pct(&mut g, 0.5), pct(&mut g, 0.99), pct(&mut g, 1.0))
    };

    // The wide DAG.
    let rss0 = rss(mpid);
    post(madmin, "/v1/pipelines", &wide(layers, width))?;
    let t0 = Instant::now();
    let run = post(madmin, "/v1/pipelines/wide/runs", "")?["run"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut peak = rss(mpid);
    let v = loop {
        let v = get(madmin, &format!("/v1/runs/{run}"))?;
        peak = peak.max(rss(mpid));
        if v["state"] != "in_progress" {
            break v;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("the wide DAG did not end");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let wide_secs = t0.elapsed().as_secs_f64();
    if v["state"] != "completed" {
        bail!("the wide DAG ended {}", v["state"]);
    }

    // Schedules.
    let t0 = Instant::now();
    for i in 0..schedules {
        post(
            madmin,
            "/v1/pipelines",
            &format!("name = \"sched{i}\"\nschedule = {{ every = \"1h\" }}\n[[stage]]\nname = \"a\"\ncommand = [\"true\"]\n"),
        )?;
    }
    let add_secs = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (cpu0, t1) = (cpu_seconds(mpid).unwrap_or(0.0), Instant::now());
    std::thread::sleep(Duration::from_secs(30));
    let idle_cpu = (cpu_seconds(mpid).unwrap_or(0.0) - cpu0) / t1.elapsed().as_secs_f64();
    let sched_rss = rss(mpid);
    let t = Instant::now();
    let list = get(madmin, "/v1/pipelines")?;
    let list_ms = t.elapsed().as_secs_f64() * 1000.0;
    let listed = list.as_array().map_or(0, Vec::len);

    let mib = |b: u64| b as f64 / 1048576.0;
    println!(
        "pipelines on 2 orch-node processes (8 + 8 devices), {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("chain of {chain_n} no-op command stages: {chain_secs:.2} s in all");
    println!("  range finished -> next stage's range started: p50 {g50:.0} ms, p99 {g99:.0} ms, max {gmax:.0} ms ({} gaps)", gaps.len());
    println!("event decided -> SSE subscriber, master's node: p50 {mp50:.0} ms, p99 {mp99:.0} ms, max {mmax:.0} ms ({me} events)");
    println!("event decided -> SSE subscriber, worker's node: p50 {wp50:.0} ms, p99 {wp99:.0} ms, max {wmax:.0} ms ({we} events)");
    println!("DAG of {} stages ({layers} layers of {width}): {wide_secs:.1} s; master RSS {:.1} MiB before, peak {:.1} MiB", layers * width, mib(rss0), mib(peak));
    println!("{schedules} scheduled pipelines: stored in {add_secs:.1} s; master RSS {:.1} MiB, CPU {:.2} % of a core idle over 30 s; GET /v1/pipelines {list_ms:.0} ms ({listed} listed)", mib(sched_rss), idle_cpu * 100.0);
    let out = json!({
        "chain": { "stages": chain_n, "seconds": chain_secs, "gap_ms": { "p50": g50, "p99": g99, "max": gmax } },
        "events_master": { "n": me, "p50_ms": mp50, "p99_ms": mp99, "max_ms": mmax },
        "events_worker": { "n": we, "p50_ms": wp50, "p99_ms": wp99, "max_ms": wmax },
        "wide": { "stages": layers * width, "seconds": wide_secs, "rss_before": rss0, "rss_peak": peak },
        "schedules": { "n": schedules, "add_seconds": add_secs, "rss": sched_rss, "idle_cpu_fraction": idle_cpu, "list_ms": list_ms },
    });
    if let Some(f) = &args.json {
        std::fs::write(f, serde_json::to_string_pretty(&out)?)?;
    }
    println!("{out}");
    Ok(())
}
