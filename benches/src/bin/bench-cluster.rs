//! `bench-cluster`: start real `orch-node` processes on 127.0.0.1 and measure
//! dispatch throughput, single-task latency, failover and scale (and, with
//! `--shapes durability`, the cost of each `[store] durability`); with
//! `--peers`, run the peer scripts in `benches/peers/` in the same run and
//! print orch/peer ratios. Prints a table and, with `--json FILE`, writes JSON.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use orch_benches::DURABILITY_MODES;
use orch_tests::{all_healthy, free_port, Bins, NodeSpec, TestCluster};
use serde_json::{json, Value};

/// Benchmark a real orch cluster on this machine.
#[derive(Parser, Debug)]
struct Args {
    /// Smaller sizes (a smoke run of a minute or two).
    #[arg(long)]
    quick: bool,
    /// Also run the peers (Ray, Dask, Erlang/OTP) and print ratios.
    #[arg(long)]
    peers: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Do not run `cargo build --release` for the binaries first.
    #[arg(long)]
    no_build: bool,
    /// Shapes to run (comma-separated): throughput, latency, failover,
    /// failover-free (the peers' shape: a survivor with a free device),
    /// scale, sessions, durability and admin (the last three not in the
    /// default set).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,latency,failover,failover-free,scale"
    )]
    shapes: Vec<String>,
    /// `[store] durability` modes of the durability shape (comma-separated;
    /// the first is the baseline the others are compared with). `MODE@PATH`
    /// runs MODE with the `orch-node` binary at PATH, to compare two builds
    /// side by side in one run; `MODE+tls` runs MODE with mutual TLS
    /// between the nodes (certificates made with `orchctl tls`).
    #[arg(long, value_delimiter = ',', default_value = "memory,process,power")]
    modes: Vec<String>,
    /// Builds the `admin` shape compares (comma-separated `LABEL@PATH` of an
    /// `orch-node`, or `LABEL` for the one built here), in alternating rounds;
    /// the `scale` shape also measures each `LABEL@PATH` after this build.
    #[arg(long, value_delimiter = ',', default_value = "now")]
    builds: Vec<String>,
    /// Tasks of the `admin` shape's session (one frame each).
    #[arg(long, default_value_t = 1_000_000)]
    admin_tasks: u64,
    /// Devices of each of the `admin` shape's three nodes.
    #[arg(long, default_value_t = 4)]
    admin_devices: u32,
}

use orch_benches::{cpu_seconds, memory, release_bins as bins, root};

fn noop_session(name: &str, frames: u64, chunk: u64) -> String {
    format!(
        "name = \"{name}\"\nframes = {{ start = 0, end = {frames} }}\nchunk_frames = {chunk}\nid_chunk_size = 100\n[executor]\nkind = \"builtin:noop\"\n"
    )
}

/// A node as an operator runs it: the node's own log filter (`info`), not
/// the tests' per-chunk `orch::ids` lines.
fn node_spec(name: &str) -> NodeSpec {
    let mut s = NodeSpec::new(name);
    s.rust_log = None;
    s
}

fn cluster(bins: &Bins, devices: u32, hb: u64) -> Result<TestCluster> {
    cluster_with(bins, devices, hb, None, None)
}

/// Certificates for `node-0` (master) .. `node-2` made with `orchctl tls`
/// in a folder of `c`'s; the `[cluster] tls` line of each node.
fn make_certs(bins: &Bins, dir: &std::path::Path) -> Result<Vec<String>> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(&bins.ctl).args(args).output()?;
        if !out.status.success() {
            bail!("orchctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let d = dir.to_str().context("utf-8 path")?;
    run(&["tls", "init", d])?;
    let mut lines = Vec::new();
    for i in 0..3 {
        let n = format!("node-{i}");
        if i == 0 {
            run(&["tls", "node", d, &n, "--master"])?;
        } else {
            run(&["tls", "node", d, &n])?;
        }
        lines.push(format!(
            "tls = {{ cert = \"{d}/{n}.crt\", key = \"{d}/{n}.key\", ca = \"{d}/ca.crt\" }}\n"
        ));
    }
    Ok(lines)
}

/// Three nodes (node-0 master + worker) with `devices` devices each;
/// `durability`, when given, is written as each node's `[store] durability`.
fn cluster_with(
    bins: &Bins,
    devices: u32,
    hb: u64,
    durability: Option<&str>,
    tls: Option<&[String]>,
) -> Result<TestCluster> {
    let mut c = TestCluster::new(bins.clone());
    let mport = free_port();
    let mut m = node_spec("node-0").master().heartbeat(hb, 3);
    m.devices = devices;
    m.max_concurrency = devices;
    m.durability = durability.map(str::to_string);
    if let Some(t) = tls {
        m.cluster_toml = t[0].clone();
    }
    c.add_with_port(m, mport)?;
    for i in 1..=2 {
        let mut w = node_spec(&format!("node-{i}"))
            .peer(format!("127.0.0.1:{mport}"))
            .heartbeat(hb, 3);
        w.devices = devices;
        w.max_concurrency = devices;
        w.durability = durability.map(str::to_string);
        if let Some(t) = tls {
            w.cluster_toml = t[i].clone();
        }
        c.add(w)?;
    }
    c.wait_for("3 healthy workers", Duration::from_secs(20), |ws| {
        all_healthy(ws, &["node-0", "node-1", "node-2"])
    })?;
    Ok(c)
}

fn run_session(
    c: &TestCluster,
    name: &str,
    frames: u64,
    chunk: u64,
    on_done: impl FnOnce(),
) -> Result<Value> {
    let started = Instant::now();
    let id = c.submit(name, &noop_session(name, frames, chunk))?;
    c.wait_session(&id, "the session ends", Duration::from_secs(1800), |v| {
        v["state"] != "running"
    })?;
    on_done();
    let wall = started.elapsed().as_secs_f64();
    // The session's own clock, submission to the last frame (no manifest export).
    let m = c.session(&id)?;
    let secs = m["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    let tasks = frames.div_ceil(chunk);
    Ok(json!({
        "frames": frames, "chunk_frames": chunk, "tasks": tasks,
        "seconds": secs, "wall_seconds": wall,
        "frames_per_s": frames as f64 / secs.max(1e-3),
        "tasks_per_s": tasks as f64 / secs.max(1e-3),
        "state": m["state"],
    }))
}

/// Master memory over many sessions: `n` sessions of 1,000 no-op tasks one
/// after the other; the master's RSS after every tenth of them (a finished
/// session leaves memory once its manifest is on disk).
fn sessions_shape(bins: &Bins, quick: bool) -> Result<Value> {
    let n = if quick { 200 } else { 1000 };
    let c = cluster(bins, 4, 1000)?;
    let pid = c.nodes[0].pid().context("the master's pid")?;
    let mut rss_mb = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let id = c.submit(&format!("s{i}"), &noop_session(&format!("s{i}"), 1000, 1))?;
        c.wait_session(&id, "the session ends", Duration::from_secs(120), |v| {
            v["state"] != "running"
        })?;
        if (i + 1) % (n / 10) == 0 {
            let mb = memory(pid)
                .map(|(rss, _)| rss as f64 / (1 << 20) as f64)
                .unwrap_or(0.0);
            eprintln!("   {:>5} sessions  master RSS {mb:.1} MiB", i + 1);
            rss_mb.push(mb);
        }
    }
    let first = rss_mb[0];
    let last = *rss_mb.last().unwrap_or(&first);
    Ok(json!({
        "sessions": n, "tasks_per_session": 1000,
        "seconds": started.elapsed().as_secs_f64(),
        "master_rss_mib_every_tenth": rss_mb,
        "growth_after_first_tenth": (last - first) / first.max(1e-9),
    }))
}

fn throughput(bins: &Bins, quick: bool) -> Result<Value> {
    let c = cluster(bins, 4, 1000)?;
    let frames = if quick { 100_000 } else { 1_000_000 };
    // Sample the master's RSS while the session runs (not while its manifest is exported).
    let pid = c.nodes[0].pid().context("master pid")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some((rss, _)) = memory(pid) {
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let single = run_session(&c, "tp-1", frames, 1, || {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    })?;
    let _ = sampler.join();
    let (_, hwm) = memory(pid).unwrap_or((0, 0));
    let hundred = run_session(&c, "tp-100", frames, 100, || {})?;
    Ok(json!({ "chunk_1": single, "chunk_100": hundred,
               "master_peak_rss_in_flight_bytes": peak.load(std::sync::atomic::Ordering::Relaxed),
               "master_peak_rss_with_manifest_export_bytes": hwm }))
}

/// Frames of each durability session.
const DURABILITY_FRAMES: u64 = 200_000;

/// One durability session on a fresh cluster (fresh data directories).
struct DurabilityRun {
    /// Harness clock: HTTP submit until the session is seen completed.
    wall: f64,
    /// The master's clock: submission to the last frame (`elapsed_ms`).
    session: f64,
    /// The master's `orch_store_commits_total` / `_events_total` after the session.
    commits: f64,
    events: f64,
    /// Sum of `orch_store_commit_duration_seconds` (seconds inside commits).
    commit_seconds: f64,
    /// Commits that took over 50 ms (the master stalled that long).
    slow_commits: f64,
    /// CPU seconds each node process used during the session (node-0 first).
    cpu: Vec<f64>,
}

/// A `--modes` entry: the durability, and the `orch-node` to run it with.
fn mode_and_bins(entry: &str, bins: &Bins) -> (String, Bins) {
    match entry.split_once('@') {
        Some((mode, node)) => (
            mode.to_string(),
            Bins {
                node: PathBuf::from(node),
                ctl: bins.ctl.clone(),
            },
        ),
        None => (entry.to_string(), bins.clone()),
    }
}

/// A `--modes` entry's durability, and whether it runs with mutual TLS (`MODE+tls`).
fn mode_and_tls(mode: &str) -> (&str, bool) {
    match mode.strip_suffix("+tls") {
        Some(m) => (m, true),
        None => (mode, false),
    }
}

fn durability_run(
    bins: &Bins,
    entry: &str,
    chunk: u64,
    name: &str,
    certs: &[String],
) -> Result<DurabilityRun> {
    let (mode, bins) = mode_and_bins(entry, bins);
    let (mode, tls) = mode_and_tls(&mode);
    let mode = mode.to_string();
    let c = cluster_with(&bins, 4, 1000, Some(&mode), tls.then_some(certs))?;
    if tls {
        for n in &c.nodes {
            let log = std::fs::read_to_string(&n.log)?;
            if !log.contains("mutual TLS on the cluster link") {
                bail!("{entry}: node `{}` does not run mutual TLS", n.spec.name);
            }
        }
    }
    let admin = c.nodes[0].admin_addr;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let body = noop_session(name, DURABILITY_FRAMES, chunk);
    let cpu_now = || -> Vec<f64> {
        c.nodes
            .iter()
            .map(|n| n.pid().and_then(cpu_seconds).unwrap_or(0.0))
            .collect()
    };
    let cpu0 = cpu_now();
    let t0 = Instant::now();
    let v: Value = agent
        .post(&format!("http://{admin}/v1/sessions"))
        .send_string(&body)?
        .into_json()?;
    let id = v["id"].as_str().context("an id")?.to_string();
    // Poll every 2 ms: the tasks-of-100 sessions take tens of milliseconds.
    let view = loop {
        let s: Value = agent
            .get(&format!("http://{admin}/v1/sessions/{id}"))
            .call()?
            .into_json()?;
        if s["state"] != "running" {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!(
                "durability {mode}: `{name}` still running after 600 s: {s}\n{}",
                c.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_now().iter().zip(&cpu0).map(|(b, a)| b - a).collect();
    if view["state"] != "completed" || view["frames_done"].as_u64() != Some(DURABILITY_FRAMES) {
        bail!("durability {mode}: `{name}` ended as {view}\n{}", c.logs());
    }
    // Let the last group commit land before reading the master's counters.
    std::thread::sleep(Duration::from_millis(300));
    let metric = |s: &str| c.nodes[0].metric(s).unwrap_or(0.0);
    let run = DurabilityRun {
        wall,
        session: view["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
        commits: metric("orch_store_commits_total"),
        events: metric("orch_store_events_total"),
        commit_seconds: metric("orch_store_commit_duration_seconds_sum"),
        slow_commits: metric("orch_store_commit_duration_seconds_count")
            - metric("orch_store_commit_duration_seconds_bucket{le=\"0.05\"}"),
        cpu,
    };
    // The `[store]` table took effect: a store commits, memory has none.
    if (mode == "memory") != (run.commits == 0.0) {
        bail!(
            "durability {mode}: the master made {} store commits; is `[store]` read?",
            run.commits
        );
    }
    Ok(run)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

/// A 200,000-frame no-op session on three nodes with each `[store]`
/// durability, alternating memory, process, power, memory, ... on a fresh
/// cluster each time, in tasks of 100 frames and of 1 frame: the medians,
/// and the slowdown of each mode against memory.
fn durability(bins: &Bins, quick: bool, modes: &[String]) -> Result<Value> {
    let reps = if quick { 1 } else { 5 };
    let cert_dir = tempfile::tempdir()?;
    let certs = make_certs(bins, cert_dir.path())?;
    let mut out = json!({
        "frames": DURABILITY_FRAMES,
        "repetitions": reps,
        "cluster": "3 orch-node processes on 127.0.0.1, 4 devices each, heartbeat 1000 ms x 3",
        "wall_means": "HTTP submit until the session is seen completed (polled every 2 ms)",
        "modes": modes,
    });
    for chunk in [100u64, 1] {
        let mut runs: Vec<Vec<DurabilityRun>> = modes.iter().map(|_| Vec::new()).collect();
        for rep in 0..reps {
            for (k, mode) in modes.iter().enumerate() {
                let r =
                    durability_run(bins, mode, chunk, &format!("dur-{k}-{chunk}-{rep}"), &certs)?;
                eprintln!(
                    "   tasks of {chunk:>3}  {mode:<7}  wall {:.3} s  session {:.3} s  {:.0} commits  {:.0} events  {:.3} s in commits  {:.0} over 50 ms  cpu s per node {:.2?}",
                    r.wall, r.session, r.commits, r.events, r.commit_seconds, r.slow_commits, r.cpu
                );
                runs[k].push(r);
            }
        }
        let col = |k: usize, f: fn(&DurabilityRun) -> f64| -> Vec<f64> {
            runs[k].iter().map(f).collect()
        };
        let base_wall = median(&col(0, |r| r.wall));
        let base_session = median(&col(0, |r| r.session));
        let tasks = DURABILITY_FRAMES.div_ceil(chunk);
        let mut row = json!({ "frames": DURABILITY_FRAMES, "chunk_frames": chunk, "tasks": tasks });
        for (k, mode) in modes.iter().enumerate() {
            let wall = median(&col(k, |r| r.wall));
            let session = median(&col(k, |r| r.session));
            let commits = median(&col(k, |r| r.commits));
            let commit_seconds = median(&col(k, |r| r.commit_seconds));
            let slow_commits = col(k, |r| r.slow_commits).iter().sum::<f64>();
            row[mode.as_str()] = json!({
                "median_wall_seconds": wall,
                "frames_per_s": DURABILITY_FRAMES as f64 / wall.max(1e-6),
                "tasks_per_s": tasks as f64 / wall.max(1e-6),
                "slowdown_vs_memory": wall / base_wall.max(1e-6) - 1.0,
                "median_session_seconds": session,
                "session_slowdown_vs_memory": session / base_session.max(1e-6) - 1.0,
                "median_store_commits": commits,
                "median_store_events": median(&col(k, |r| r.events)),
                "median_seconds_in_commits": commit_seconds,
                "commits_over_50ms_all_runs": slow_commits,
                "mean_commit_ms": if commits > 0.0 { commit_seconds / commits * 1000.0 } else { 0.0 },
                "runs_wall_seconds": col(k, |r| r.wall),
                "runs_session_seconds": col(k, |r| r.session),
                "median_cpu_seconds_master": median(&col(k, |r| r.cpu.first().copied().unwrap_or(0.0))),
                "median_cpu_seconds_all_nodes": median(&col(k, |r| r.cpu.iter().sum())),
            });
        }
        out[format!("chunk_{chunk}")] = row;
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latency(bins: &Bins, quick: bool) -> Result<Value> {
    let c = cluster(bins, 2, 1000)?;
    let n = if quick { 200 } else { 1000 };
    let admin = c.nodes[0].admin_addr;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let body = noop_session("lat", 1, 1);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let v: Value = agent
            .post(&format!("http://{admin}/v1/sessions"))
            .send_string(&body)?
            .into_json()?;
        let id = v["id"].as_str().context("an id")?.to_string();
        loop {
            let s: Value = agent
                .get(&format!("http://{admin}/v1/sessions/{id}"))
                .call()?
                .into_json()?;
            if s["state"] == "completed" {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("a single-frame session did not complete in 10 s");
            }
        }
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(
        json!({ "samples": n, "p50_ms": percentile(&samples, 0.5), "p99_ms": percentile(&samples, 0.99),
               "method": "HTTP submit, then poll the session until completed" }),
    )
}

/// `GET /v1/status` on the master's node every 10 ms while a session of
/// `tasks` single-frame no-op tasks runs on three nodes; latencies in ms.
fn admin_run(bins: &Bins, tasks: u64, devices: u32) -> Result<(Vec<f64>, f64)> {
    let c = cluster(bins, devices, 1000)?;
    let admin = c.nodes[0].admin_addr;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(30))
        .build();
    let id = c.submit("admin", &noop_session("admin", tasks, 1))?;
    let started = Instant::now();
    let mut samples = Vec::new();
    loop {
        let t0 = Instant::now();
        let v: Value = agent
            .get(&format!("http://{admin}/v1/status"))
            .call()?
            .into_json()?;
        samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        let running = v["sessions"]
            .as_array()
            .context("sessions in the status")?
            .iter()
            .any(|s| s["id"] == id.as_str() && s["state"] == "running");
        if !running {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("the session did not end within 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(10).saturating_sub(t0.elapsed()));
    }
    let v = c.session(&id)?;
    if v["state"] != "completed" {
        bail!("the admin shape's session ended {}", v["state"]);
    }
    Ok((samples, started.elapsed().as_secs_f64()))
}

/// The admin API's latency under load, for each of `builds` in alternating
/// rounds (two each): p50, p99 and max of `GET /v1/status`.
fn admin_shape(
    bins: &Bins,
    quick: bool,
    builds: &[String],
    tasks: u64,
    devices: u32,
) -> Result<Value> {
    let tasks = if quick { tasks.min(100_000) } else { tasks };
    let mut all: Vec<(String, Vec<f64>, Vec<f64>)> = builds
        .iter()
        .map(|b| (b.clone(), Vec::new(), Vec::new()))
        .collect();
    for round in 0..2 {
        for (entry, samples, secs) in all.iter_mut() {
            let (label, b) = mode_and_bins(entry, bins);
            eprintln!("   round {}: {label}, {tasks} tasks", round + 1);
            let (mut s, wall) = admin_run(&b, tasks, devices)?;
            samples.append(&mut s);
            secs.push(wall);
        }
    }
    let mut out = json!({ "tasks": tasks, "devices_per_node": devices, "method": "GET /v1/status every 10 ms on the master's node while the session runs; two rounds per build, alternating" });
    for (entry, mut samples, secs) in all {
        let (label, _) = mode_and_bins(&entry, bins);
        samples.sort_by(f64::total_cmp);
        out[label] = json!({
            "samples": samples.len(),
            "p50_ms": percentile(&samples, 0.5),
            "p99_ms": percentile(&samples, 0.99),
            "max_ms": samples.last().copied().unwrap_or(0.0),
            "session_seconds": secs,
        });
    }
    Ok(out)
}

/// Whether the admin API at `admin` lists `node` as unhealthy.
fn shown_unhealthy(agent: &ureq::Agent, admin: std::net::SocketAddr, node: &str) -> Result<bool> {
    let ws: Value = agent
        .get(&format!("http://{admin}/v1/workers"))
        .call()?
        .into_json()?;
    Ok(ws
        .as_array()
        .into_iter()
        .flatten()
        .any(|w| w["node"] == node && w["state"] == "unhealthy"))
}

/// Unix nanoseconds now.
fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The failover shape of the peers' scripts (benches/peers/README.md): two
/// nodes with one device each, a long task on the victim (a soft
/// preference), the survivor's device free; kill -9 of the victim; the lost
/// task's start on the survivor is a timestamp the task itself writes.
fn failover_free(bins: &Bins) -> Result<Value> {
    let mut c = TestCluster::new(bins.clone());
    let mport = free_port();
    let mut m = node_spec("node-0").master().heartbeat(1000, 3);
    m.devices = 1;
    m.max_concurrency = 1;
    c.add_with_port(m, mport)?;
    let mut v = node_spec("node-1")
        .peer(format!("127.0.0.1:{mport}"))
        .heartbeat(1000, 3);
    v.devices_toml = Some(
        "[[device]]\ncount = 1\nid_prefix = \"node-1-dev-\"\ncapabilities = { victim = true }\n"
            .into(),
    );
    v.max_concurrency = 1;
    c.add(v)?;
    c.wait_for("2 healthy workers", Duration::from_secs(20), |ws| {
        all_healthy(ws, &["node-0", "node-1"])
    })?;
    let marker = c.dir.path().join("starts");
    let id = c.submit(
        "fofree",
        &format!(
            "name = \"fofree\"\nframes = {{ start = 0, end = 1 }}\nchunk_frames = 1\ntimeout_ms = 600000\n[prefer]\nvictim = 100\n[executor]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"echo $(date +%s%N) {{device}} >> {}; exec sleep 60\"]\n",
            marker.display()
        ),
    )?;
    let starts = |n: usize| -> Vec<(u128, String)> {
        std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (ns, dev) = l.split_once(' ')?;
                Some((ns.parse().ok()?, dev.to_string()))
            })
            .take(n)
            .collect()
    };
    orch_tests::wait_until(
        "the task started on the victim",
        Duration::from_secs(20),
        || starts(1).len() == 1,
    )?;
    let first = starts(1).remove(0);
    if !first.1.starts_with("node-1") {
        bail!("the long task started on `{}`, not on the victim", first.1);
    }
    let kill_ns = unix_ns();
    c.node("node-1").kill9();
    let admin = c.nodes[0].admin_addr;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let t0 = Instant::now();
    let mut detect = None;
    while detect.is_none() && t0.elapsed() < Duration::from_secs(30) {
        if shown_unhealthy(&agent, admin, "node-1")? {
            detect = Some((unix_ns() - kill_ns) as f64 / 1e6);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    orch_tests::wait_until("the task started again", Duration::from_secs(30), || {
        starts(2).len() == 2
    })?;
    let again = starts(2).remove(1);
    let rerun_ms = (again.0.saturating_sub(kill_ns)) as f64 / 1e6;
    let _ = c.orchctl(0, &["cancel", &id]);
    Ok(json!({
        "detect_ms": detect,
        "rerun_ms": rerun_ms,
        "rerun_on": again.1,
        "heartbeat_ms": 1000, "missed_heartbeats": 3,
        "rerun_means": "from the kill to the lost task's own start timestamp on the survivor (the peers' definition)",
    }))
}

fn failover(bins: &Bins) -> Result<Value> {
    let mut c = cluster(bins, 4, 1000)?;
    let id = c.submit(
        "fo",
        "name = \"fo\"\nframes = { start = 0, end = 1200 }\nchunk_frames = 10\nid_chunk_size = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 50\n",
    )?;
    c.wait_session(&id, "30% done", Duration::from_secs(120), |v| {
        v["frames_done"].as_u64().unwrap_or(0) >= 360
    })?;
    let t0 = Instant::now();
    c.node("node-2").kill9();
    let mut detect = None;
    let mut rerun = None;
    let admin = c.nodes[0].admin_addr;
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    while rerun.is_none() && t0.elapsed() < Duration::from_secs(60) {
        if detect.is_none() {
            if shown_unhealthy(&agent, admin, "node-2")? {
                detect = Some(t0.elapsed());
            }
        } else {
            // Every replayed range is running again (or done) on a survivor.
            let m: Value = agent
                .get(&format!("http://{admin}/v1/sessions/{id}/manifest"))
                .call()?
                .into_json()?;
            let devs: Value = agent
                .get(&format!("http://{admin}/v1/devices"))
                .call()?
                .into_json()?;
            let replay = m["replay"].as_array().cloned().unwrap_or_default();
            let running_or_done = |task: &Value, attempt: &Value| {
                devs.as_array().into_iter().flatten().any(|d| {
                    d["tasks"].as_array().into_iter().flatten().any(|t| {
                        t["task"] == *task
                            && t["attempt"] == *attempt
                            && t["frames_done"].as_u64().unwrap_or(0) > 0
                    })
                }) || m["ranges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|r| r["task"] == *task && r["attempt"] == *attempt)
            };
            if !replay.is_empty()
                && replay
                    .iter()
                    .all(|r| running_or_done(&r["task"], &r["new_attempt"]))
            {
                rerun = Some(t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let v = c.wait_done(&id, Duration::from_secs(300))?;
    let complete = t0.elapsed();
    Ok(json!({
        "detect_ms": detect.map(|d| d.as_secs_f64() * 1000.0),
        "rerun_ms": rerun.map(|d| d.as_secs_f64() * 1000.0),
        "complete_ms": complete.as_secs_f64() * 1000.0,
        "state": v["state"],
        "heartbeat_ms": 1000, "missed_heartbeats": 3,
        "rerun_means": "every replayed range has reported a frame on a surviving device",
    }))
}

fn scale(bins: &Bins, quick: bool) -> Result<Value> {
    let n = if quick { 2_000 } else { 10_000 };
    let base = {
        let mut c = TestCluster::new(bins.clone());
        let mut s = node_spec("small").master();
        s.devices = 1;
        c.add(s)?;
        c.wait_for("registered", Duration::from_secs(20), |ws| {
            all_healthy(ws, &["small"])
        })?;
        std::thread::sleep(Duration::from_millis(500));
        rss(&c.nodes[0])
    };
    let mut c = TestCluster::new(bins.clone());
    let mut s = node_spec("big").master();
    s.devices = n;
    s.max_concurrency = 100;
    let t0 = Instant::now();
    c.add(s)?;
    c.wait_for(
        "10,000 devices registered",
        Duration::from_secs(120),
        |ws| all_healthy(ws, &["big"]),
    )?;
    let register = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let big = rss(&c.nodes[0]);
    drop(c);
    // The same on two nodes: what the master keeps per device, and what the
    // worker that hosts the device actors keeps.
    let (m1, w1) = split_rss(bins, 1)?;
    let (mn, wn) = split_rss(bins, n)?;
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / f64::from(n - 1);
    Ok(json!({
        "devices": n,
        "seconds_to_register": register.as_secs_f64(),
        "rss_1_device_bytes": base, "rss_n_devices_bytes": big,
        "bytes_per_device": per(base, big),
        "master_only_bytes_per_device": per(m1, mn),
        "worker_only_bytes_per_device": per(w1, wn),
        "note": "RSS of one node (master + worker) with N devices minus with 1, over N - 1; then the same for a master-only node and a worker-only node",
    }))
}

/// RSS of a master-only node and of a worker-only node with `devices`
/// devices, once the worker is registered and healthy.
fn split_rss(bins: &Bins, devices: u32) -> Result<(u64, u64)> {
    let mut c = TestCluster::new(bins.clone());
    let port = orch_tests::free_port();
    let mut m = node_spec("master").master();
    m.worker = false;
    c.add_with_port(m, port)?;
    let mut w = node_spec("worker").peer(format!("127.0.0.1:{port}"));
    w.devices = devices;
    w.max_concurrency = devices.min(100);
    c.add(w)?;
    c.wait_for("the worker registered", Duration::from_secs(120), |ws| {
        all_healthy(ws, &["worker"])
    })?;
    std::thread::sleep(Duration::from_millis(500));
    Ok((rss(&c.nodes[0]), rss(&c.nodes[1])))
}

/// A node's resident memory now, in bytes (0 if it cannot be read).
fn rss(node: &orch_tests::TestNode) -> u64 {
    node.pid().and_then(memory).map(|m| m.0).unwrap_or(0)
}

fn peer(script: &str, quick: bool) -> Value {
    let path = root().join("benches/peers").join(script);
    if !path.exists() {
        return json!({ "error": format!("no `{}`", path.display()) });
    }
    let mut cmd = Command::new("python3");
    cmd.arg(&path);
    if quick {
        cmd.arg("--quick");
    }
    match cmd.output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            text.lines()
                .rev()
                .find_map(|l| serde_json::from_str::<Value>(l).ok())
                .unwrap_or_else(|| json!({ "error": format!("no JSON from {script}: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")) }))
        }
        Err(e) => json!({ "error": format!("cannot run {script}: {e}") }),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => json!((a / b * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bins = bins(args.no_build)?;
    let mut out = json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "quick": args.quick,
    });
    let want = |s: &str| args.shapes.iter().any(|x| x == s);
    if want("throughput") {
        eprintln!("== throughput");
        out["throughput"] = throughput(&bins, args.quick)?;
    }
    if want("latency") {
        eprintln!("== latency");
        out["latency"] = latency(&bins, args.quick)?;
    }
    if want("failover") {
        eprintln!("== failover");
        out["failover"] = failover(&bins)?;
    }
    if want("failover-free") {
        eprintln!("== failover-free");
        out["failover_free"] = failover_free(&bins)?;
    }
    if want("scale") {
        eprintln!("== scale");
        out["scale"] = scale(&bins, args.quick)?;
        // Other builds named with `--builds LABEL@PATH`, in the same run.
        for entry in args.builds.iter().filter(|b| b.contains('@')) {
            let (label, b) = mode_and_bins(entry, &bins);
            eprintln!("   scale of {label}");
            out["scale_of"][label] = scale(&b, args.quick)?;
        }
    }
    if want("sessions") {
        eprintln!("== sessions");
        out["sessions"] = sessions_shape(&bins, args.quick)?;
    }
    if want("admin") {
        eprintln!("== admin");
        for b in &args.builds {
            let (_, b) = mode_and_bins(b, &bins);
            if !b.node.exists() {
                bail!("--builds: no `orch-node` at `{}`", b.node.display());
            }
        }
        out["admin"] = admin_shape(
            &bins,
            args.quick,
            &args.builds,
            args.admin_tasks,
            args.admin_devices,
        )?;
    }
    if want("durability") {
        eprintln!("== durability");
        for m in &args.modes {
            let (m, b) = mode_and_bins(m, &bins);
            if !b.node.exists() {
                bail!("--modes: no `orch-node` at `{}`", b.node.display());
            }
            let (m, _) = mode_and_tls(&m);
            if !DURABILITY_MODES.contains(&m) {
                bail!("--modes: unknown durability `{m}`, expected one of {DURABILITY_MODES:?}");
            }
        }
        out["durability"] = durability(&bins, args.quick, &args.modes)?;
    }
    if args.peers {
        let mut ratios = serde_json::Map::new();
        for (name, script) in [
            ("ray", "ray_bench.py"),
            ("dask", "dask_bench.py"),
            ("erlang", "erlang_bench.py"),
        ] {
            eprintln!("== peer {name}");
            let p = peer(script, args.quick);
            let orch_tp = out["throughput"]["chunk_1"]["tasks_per_s"].as_f64();
            // Where a peer reports a cross-node figure (Erlang's remote spawn),
            // that is the shape comparable to a task sent to another process.
            let peer_tp = p["throughput"]["remote"]["tasks_per_s"]
                .as_f64()
                .or(p["throughput"]["tasks_per_s"].as_f64());
            let peer_p50 = p["latency"]["remote"]["p50_ms"]
                .as_f64()
                .or(p["latency"]["p50_ms"].as_f64());
            ratios.insert(name.into(), json!({
                "throughput_orch_over_peer": ratio(orch_tp, peer_tp),
                "latency_p50_peer_over_orch": ratio(peer_p50, out["latency"]["p50_ms"].as_f64()),
                "failover_rerun_peer_over_orch": ratio(p["failover"]["rerun_ms"].as_f64(), out["failover"]["rerun_ms"].as_f64()),
                "failover_free_rerun_peer_over_orch": ratio(p["failover"]["rerun_ms"].as_f64(), out["failover_free"]["rerun_ms"].as_f64()),
            }));
            out["peers"][name] = p;
        }
        out["ratios"] = Value::Object(ratios);
    }
    println!("orch on {} cores", out["machine"]["cores"]);
    if let Some(t) = out.get("throughput") {
        for k in ["chunk_1", "chunk_100"] {
            println!(
                "throughput {:<10} {:>9} frames {:>9} tasks  {:>8.2} s  {:>12.0} frames/s  {:>10.0} tasks/s",
                k, t[k]["frames"], t[k]["tasks"], t[k]["seconds"].as_f64().unwrap_or(0.0),
                t[k]["frames_per_s"].as_f64().unwrap_or(0.0), t[k]["tasks_per_s"].as_f64().unwrap_or(0.0)
            );
        }
        println!(
            "master peak RSS      {:.1} MiB while 1,000,000 single-frame tasks run",
            t["master_peak_rss_in_flight_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
        );
    }
    if let Some(l) = out.get("latency") {
        println!(
            "latency              p50 {:.2} ms  p99 {:.2} ms ({} samples)",
            l["p50_ms"].as_f64().unwrap_or(0.0),
            l["p99_ms"].as_f64().unwrap_or(0.0),
            l["samples"]
        );
    }
    if let Some(f) = out.get("failover") {
        println!(
            "failover             detect {:?} ms  rerun {:?} ms  complete {:.0} ms",
            f["detect_ms"].as_f64().map(|x| x.round()),
            f["rerun_ms"].as_f64().map(|x| x.round()),
            f["complete_ms"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(f) = out.get("failover_free") {
        println!(
            "failover (peers' shape, a free survivor) detect {:?} ms  rerun {:?} ms (the task's own start on {})",
            f["detect_ms"].as_f64().map(|x| x.round()),
            f["rerun_ms"].as_f64().map(|x| x.round()),
            f["rerun_on"]
        );
    }
    let scales = out
        .get("scale")
        .map(|s| ("this build".to_string(), s.clone()));
    let others = out["scale_of"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for (label, s) in scales.into_iter().chain(others) {
        println!(
            "scale ({label}) {} devices registered in {:.2} s, {:.0} bytes per device (apart: master {:.0}, worker {:.0})",
            s["devices"],
            s["seconds_to_register"].as_f64().unwrap_or(0.0),
            s["bytes_per_device"].as_f64().unwrap_or(0.0),
            s["master_only_bytes_per_device"].as_f64().unwrap_or(0.0),
            s["worker_only_bytes_per_device"].as_f64().unwrap_or(0.0)
        );
    }
    if let Some(a) = out.get("admin") {
        println!(
            "admin                GET /v1/status every 10 ms during {} single-frame tasks on 3 nodes of {} devices",
            a["tasks"], a["devices_per_node"]
        );
        for b in &args.builds {
            let (label, _) = mode_and_bins(b, &bins);
            let r = &a[&label];
            println!(
                "  {:<10} p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.1} ms  ({} samples; session {} s)",
                label,
                r["p50_ms"].as_f64().unwrap_or(0.0),
                r["p99_ms"].as_f64().unwrap_or(0.0),
                r["max_ms"].as_f64().unwrap_or(0.0),
                r["samples"],
                r["session_seconds"]
            );
        }
    }
    if let Some(d) = out.get("durability") {
        println!(
            "durability           {} frames of builtin:noop, 3 nodes, median of {} (wall: submit to completed)",
            d["frames"], d["repetitions"]
        );
        println!(
            "  {:<14} {:<8} {:>9} {:>12} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "tasks",
            "store",
            "wall s",
            "frames/s",
            "vs mem",
            "session s",
            "vs mem",
            "commits",
            "ms/commit",
            "cpu s",
            "master"
        );
        for k in ["chunk_100", "chunk_1"] {
            for mode in d["modes"].as_array().into_iter().flatten() {
                let mode = mode.as_str().unwrap_or("?");
                let r = &d[k][mode];
                let f = |key: &str| r[key].as_f64().unwrap_or(0.0);
                println!(
                    "  {:<14} {:<8} {:>9.3} {:>12.0} {:>+8.1}% {:>10.3} {:>+8.1}% {:>9.0} {:>9.3} {:>9.2} {:>9.2}",
                    format!("{} x {}", d[k]["tasks"], d[k]["chunk_frames"]),
                    mode,
                    f("median_wall_seconds"),
                    f("frames_per_s"),
                    f("slowdown_vs_memory") * 100.0,
                    f("median_session_seconds"),
                    f("session_slowdown_vs_memory") * 100.0,
                    f("median_store_commits"),
                    f("mean_commit_ms"),
                    f("median_cpu_seconds_all_nodes"),
                    f("median_cpu_seconds_master"),
                );
            }
        }
    }
    if let Some(r) = out.get("ratios") {
        println!("ratios               {}", serde_json::to_string(r)?);
    }
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(f) = &args.json {
        std::fs::write(f, &text)?;
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
