//! `bench-collect`: output collection (docs/collection.md) on real
//! `orch-node` processes on 127.0.0.1, side by side with `curl` fetching
//! the same files from the worker's data plane and `cp` copying them on the
//! same disk.
//!
//! ```sh
//! cargo run --release -p orch-benches --bin bench-collect -- [--quick] [--no-build] [--json FILE]
//! ```
//!
//! Two cases, each on a fresh cluster of two nodes: `master` (master and
//! worker; the session's collector) and `sender` (worker, the only node
//! whose device matches the session's `[require]`). The session is one
//! task whose command hard-links pre-made random files into its output
//! folder, so producing them costs only the worker's hashing of its outputs.
//! One range holds every file: the collector sees them all at once when the
//! range is produced, and production and collection do not overlap.
//!
//! Timed:
//! - orch: from the range's `finished_ms` (the master learnt it was
//!   produced) to the last `collection.files[].collected_ms` (master clock);
//!   the tick of the collector and its manifest read are inside;
//! - orch, overlap included: from the HTTP submit to the harness seeing
//!   `collection.settled` (the worker's production and hashing inside);
//! - curl: one `curl --parallel --parallel-max 2` (the collector's transfers
//!   per node) of every file from `GET /v1/files/out/...` of the worker's
//!   data plane with the data-plane token, to files on the same disk;
//! - cp: one `cp --reflink=never` of every file of the worker's output
//!   folder to a folder on the same disk.
//!
//! The data plane's test hook (`test-hold-data-plane`) is not used to
//! keep the collector waiting: a 503 leaves a file `uncollected` with a
//! backoff of 500 ms x 2^tries (up to 30 s) of its own, so the files would
//! start long after the hold is lifted and the time would be the backoff's.
//!
//! Before each of the three the source files are read (in the page cache,
//! as the worker's hashing leaves them for the collector) and `sync` runs;
//! what one method wrote is deleted before the next. While the files move,
//! the master's `GET /v1/workers` is polled every 50 ms (each worker's
//! `heartbeat_age_ms`) and both nodes' VmRSS sampled; each node's VmHWM is
//! reset (`/proc/PID/clear_refs`) when the range is produced and read when
//! the collection is settled.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use orch_tests::{all_healthy, free_port, Bins, NodeSpec, TestCluster};
use serde_json::{json, Value};

/// Benchmark output collection against curl and cp.
#[derive(Parser, Debug)]
struct Args {
    /// Smaller sizes: 100 files of 1 MiB and 2 files of 256 MiB.
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Do not run `cargo build --release` for the binaries first.
    #[arg(long)]
    no_build: bool,
    /// Folder under which the scratch folder is made (removed at the end).
    #[arg(long, default_value = "/tmp")]
    scratch: PathBuf,
}

/// Heartbeat of both nodes (bench-cluster's: 1000 ms, 3 misses).
const HEARTBEAT_MS: u64 = 1000;
/// Mebibyte.
const MIB: u64 = 1 << 20;
/// How often the workers and the nodes' memory are looked at.
const POLL: Duration = Duration::from_millis(50);
/// The longest a case's session and collection may take.
const CASE_LIMIT: Duration = Duration::from_secs(3600);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM end the run through its error path, so the nodes are
/// stopped and the scratch folder removed.
#[allow(unsafe_code)]
fn catch_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

use orch_benches::{cpu_seconds, memory, release_bins as bins};

/// Set a process's VmHWM back to its VmRSS now.
fn reset_peak(pid: i32) -> Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("reset the peak RSS of process {pid}"))
}

fn node_spec(name: &str) -> NodeSpec {
    let mut s = NodeSpec::new(name);
    s.rust_log = None;
    s
}

/// One case: `files` files of `size` bytes each.
#[derive(Debug, Clone)]
struct Case {
    key: &'static str,
    files: usize,
    size: u64,
}

impl Case {
    fn bytes(&self) -> u64 {
        self.files as u64 * self.size
    }

    fn label(&self) -> String {
        let size = if self.size >= 1 << 30 && self.size.is_multiple_of(1 << 30) {
            format!("{} GiB", self.size >> 30)
        } else {
            format!("{} MiB", self.size / MIB)
        };
        format!("{} x {size}", self.files)
    }
}

/// `files` files of random bytes (splitmix64) of `size` bytes in `dir`.
fn make_sources(dir: &Path, files: usize, size: u64) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ size;
    let mut buf = vec![0u8; MIB as usize];
    let mut out = Vec::with_capacity(files);
    for i in 0..files {
        interrupted()?;
        let path = dir.join(format!("f{i:05}.bin"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut left = size;
        while left > 0 {
            for w in buf.chunks_exact_mut(8) {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                w.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            let n = left.min(buf.len() as u64) as usize;
            f.write_all(&buf[..n])?;
            left -= n as u64;
        }
        f.flush()?;
        out.push(path);
    }
    Ok(out)
}

/// Read every file (into the page cache), then `sync`.
fn warm_and_sync(files: &[PathBuf]) -> Result<()> {
    let mut buf = vec![0u8; MIB as usize];
    for p in files {
        interrupted()?;
        let mut f = std::fs::File::open(p)?;
        while f.read(&mut buf)? > 0 {}
    }
    sync()
}

fn sync() -> Result<()> {
    let st = Command::new("sync").status().context("run sync")?;
    if !st.success() {
        bail!("sync failed");
    }
    Ok(())
}

/// Every file of `dir` has the size of a case's file; how many there are.
fn check_copies(dir: &Path, case: &Case) -> Result<usize> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("read `{}`", dir.display()))? {
        let e = e?;
        let len = e.metadata()?.len();
        if len != case.size {
            bail!(
                "`{}` has {len} bytes, expected {}",
                e.path().display(),
                case.size
            );
        }
        n += 1;
    }
    if n != case.files {
        bail!(
            "`{}` holds {n} files, expected {}",
            dir.display(),
            case.files
        );
    }
    Ok(n)
}

fn remove(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("remove `{}`", dir.display()))?;
    }
    sync()
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

/// What the monitor saw in one phase.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Largest `heartbeat_age_ms` of each worker.
    max_age_ms: BTreeMap<String, u64>,
    /// `GET /v1/workers` answers read.
    samples: u64,
    /// Slowest `GET /v1/workers` answer.
    slowest_ms: f64,
    /// Largest VmRSS of (sender, receiver).
    max_rss: (u64, u64),
}

/// Poll the master's worker list and both nodes' memory every 50 ms until
/// `phase` is 2; phase 0 (production) and 1 (collection) apart.
fn monitor(admin: std::net::SocketAddr, pids: (i32, i32), phase: &AtomicU8) -> [Seen; 2] {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let mut seen = [Seen::default(), Seen::default()];
    loop {
        let p = phase.load(Ordering::SeqCst);
        if p >= 2 || INTERRUPTED.load(Ordering::SeqCst) {
            return seen;
        }
        let s = &mut seen[usize::from(p)];
        let t0 = Instant::now();
        let ws: Option<Value> = agent
            .get(&format!("http://{admin}/v1/workers"))
            .call()
            .ok()
            .and_then(|r| r.into_json().ok());
        let took = t0.elapsed();
        if let Some(ws) = ws {
            s.samples += 1;
            s.slowest_ms = s.slowest_ms.max(took.as_secs_f64() * 1000.0);
            for w in ws.as_array().into_iter().flatten() {
                let node = w["node"].as_str().unwrap_or("?").to_string();
                let age = w["heartbeat_age_ms"].as_u64().unwrap_or(0);
                let e = s.max_age_ms.entry(node).or_insert(0);
                *e = (*e).max(age);
            }
        }
        let rss = |pid| memory(pid).map(|m| m.0).unwrap_or(0);
        s.max_rss.0 = s.max_rss.0.max(rss(pids.0));
        s.max_rss.1 = s.max_rss.1.max(rss(pids.1));
        std::thread::sleep(POLL.saturating_sub(t0.elapsed()));
    }
}

/// The cluster of a case: `master` (master + worker, the collector) and
/// `sender` (worker, the only device with `sender = true`).
fn cluster(bins: &Bins, scratch: &Path) -> Result<TestCluster> {
    let mut c = TestCluster {
        bins: bins.clone(),
        dir: tempfile::Builder::new()
            .prefix("cluster-")
            .tempdir_in(scratch)?,
        nodes: Vec::new(),
        ctl_env: Vec::new(),
    };
    let mport = free_port();
    let mut m = node_spec("master").master().heartbeat(HEARTBEAT_MS, 3);
    m.devices = 1;
    m.max_concurrency = 1;
    c.add_with_port(m, mport)?;
    let mut s = node_spec("sender")
        .peer(format!("127.0.0.1:{mport}"))
        .heartbeat(HEARTBEAT_MS, 3);
    s.devices_toml = Some(
        "[[device]]\ncount = 1\nid_prefix = \"sender-dev-\"\ncapabilities = { sender = true }\n"
            .into(),
    );
    s.max_concurrency = 1;
    c.add(s)?;
    c.wait_for("2 healthy workers", Duration::from_secs(30), |ws| {
        all_healthy(ws, &["master", "sender"])
    })?;
    Ok(c)
}

fn get_json(agent: &ureq::Agent, url: &str) -> Result<Value> {
    agent
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .into_json()
        .with_context(|| format!("GET {url}: JSON"))
}

/// Run `cmd`, timed; fail with its stderr unless it exits 0.
fn timed(cmd: &mut Command, what: &str) -> Result<f64> {
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("run {what}"))?;
    let secs = t0.elapsed().as_secs_f64();
    interrupted()?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    Ok(secs)
}

fn run_case(bins: &Bins, scratch: &Path, case: &Case) -> Result<Value> {
    let bytes = case.bytes();
    eprintln!("== {}: making the source files", case.label());
    let src_dir = scratch.join(format!("src-{}", case.key));
    let sources = make_sources(&src_dir, case.files, case.size)?;
    sync()?;
    let c = cluster(bins, scratch)?;
    let admin = c.nodes[0].admin_addr;
    let (receiver, sender) = (
        c.nodes[0].pid().context("the master's pid")?,
        c.nodes[1].pid().context("the sender's pid")?,
    );
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let workers = get_json(&agent, &format!("http://{admin}/v1/workers"))?;
    let data = workers
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["node"] == "sender")
        .and_then(|w| w["data"].as_str())
        .context("the sender's data plane address in /v1/workers")?
        .to_string();
    let rss_idle = (
        memory(sender).map(|m| m.0).unwrap_or(0),
        memory(receiver).map(|m| m.0).unwrap_or(0),
    );
    warm_and_sync(&sources)?;

    // orch: one task hard-links every file into its output folder.
    let name = format!("collect-{}", case.key);
    let session = format!(
        "name = \"{name}\"\nframes = {{ start = 0, end = 1 }}\nchunk_frames = 1\ntimeout_ms = 3600000\nmax_attempts = 1\n[require]\nsender = true\n[executor]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"ln {}/* .\"]\n",
        src_dir.display()
    );
    eprintln!("   orch: the session produces the files, the collector gathers them");
    let phase = AtomicU8::new(0);
    let started = Instant::now();
    let (run, seen) = std::thread::scope(|scope| -> Result<(Value, [Seen; 2])> {
        let mon = scope.spawn(|| monitor(admin, (sender, receiver), &phase));
        let run = (|| -> Result<Value> {
            let v: Value = agent
                .post(&format!("http://{admin}/v1/sessions"))
                .send_string(&session)?
                .into_json()?;
            let id = v["id"].as_str().context("a session id")?.to_string();
            let view = loop {
                interrupted()?;
                let v = get_json(&agent, &format!("http://{admin}/v1/sessions/{id}"))?;
                if v["state"] != "running" {
                    break v;
                }
                if started.elapsed() > CASE_LIMIT {
                    bail!("the session still runs after {CASE_LIMIT:?}: {v}");
                }
                std::thread::sleep(POLL);
            };
            let produced = started.elapsed();
            // Collection only from here on.
            reset_peak(sender)?;
            reset_peak(receiver)?;
            phase.store(1, Ordering::SeqCst);
            let cpu0 = (cpu_seconds(sender), cpu_seconds(receiver));
            if view["state"] != "completed" {
                bail!("the session ended {}: {view}\n{}", view["state"], c.logs());
            }
            let out = loop {
                interrupted()?;
                let o = get_json(&agent, &format!("http://{admin}/v1/sessions/{id}/output"))?;
                if o["settled"] == true {
                    break o;
                }
                if started.elapsed() > CASE_LIMIT {
                    bail!(
                        "the collection is not settled after {CASE_LIMIT:?}\n{}",
                        c.logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let settled = started.elapsed();
            phase.store(2, Ordering::SeqCst);
            let cpu1 = (cpu_seconds(sender), cpu_seconds(receiver));
            let hwm = (
                memory(sender).map(|m| m.1).unwrap_or(0),
                memory(receiver).map(|m| m.1).unwrap_or(0),
            );
            if out["collected"].as_u64() != Some(case.files as u64) {
                bail!(
                    "{} of {} files collected: {}",
                    out["collected"],
                    case.files,
                    json!({ "failed": out["failed"], "uncollected": out["uncollected"], "conflicts": out["conflicts"] })
                );
            }
            let m = get_json(&agent, &format!("http://{admin}/v1/sessions/{id}/manifest"))?;
            let ranges = m["ranges"].as_array().context("ranges")?;
            if ranges.len() != 1 {
                bail!("{} produced ranges, expected 1", ranges.len());
            }
            let r = &ranges[0];
            let finished_ms = r["finished_ms"].as_u64().context("finished_ms")?;
            let files = m["collection"]["files"]
                .as_array()
                .context("collection.files")?;
            let collected: Vec<u64> = files
                .iter()
                .filter_map(|f| f["collected_ms"].as_u64())
                .collect();
            let (first, last) = (
                collected.iter().copied().min().unwrap_or(0),
                collected.iter().copied().max().unwrap_or(0),
            );
            let tries: u64 = files.iter().filter_map(|f| f["tries"].as_u64()).sum();
            let secs = last.saturating_sub(finished_ms) as f64 / 1000.0;
            let e2e = settled.as_secs_f64();
            Ok(json!({
                "session": id,
                "out_dir": r["out_dir"],
                "submitted_ms": m["submitted_ms"],
                "range_started_ms": r["started_ms"],
                "range_finished_ms": finished_ms,
                "first_collected_ms": first,
                "last_collected_ms": last,
                "transfers_tried": tries,
                "collection_seconds": secs,
                "mb_per_s": mb_per_s(bytes, secs),
                "files_per_s": case.files as f64 / secs.max(1e-9),
                "first_file_after_range_ms": first.saturating_sub(finished_ms),
                "production_seconds": finished_ms.saturating_sub(m["submitted_ms"].as_u64().unwrap_or(finished_ms)) as f64 / 1000.0,
                "harness_produced_seconds": produced.as_secs_f64(),
                "harness_settled_after_produced_seconds": (settled - produced).as_secs_f64(),
                "overlap_included_seconds": e2e,
                "overlap_included_mb_per_s": mb_per_s(bytes, e2e),
                "cpu_seconds_in_collection": {
                    "sender": cpu1.0.zip(cpu0.0).map(|(b, a)| b - a),
                    "receiver": cpu1.1.zip(cpu0.1).map(|(b, a)| b - a),
                },
                "peak_rss_in_collection_bytes": { "sender": hwm.0, "receiver": hwm.1 },
            }))
        })();
        phase.store(2, Ordering::SeqCst);
        let seen = mon
            .join()
            .map_err(|_| anyhow::anyhow!("the monitor thread panicked"))?;
        Ok((run?, seen))
    })?;
    let collected_dir = c.nodes[0]
        .config
        .parent()
        .context("the master's folder")?
        .join("data/sessions")
        .join(run["session"].as_str().unwrap_or_default())
        .join("output");
    check_copies(&collected_dir, case)?;
    let life_hwm = (
        memory(sender).map(|m| m.1).unwrap_or(0),
        memory(receiver).map(|m| m.1).unwrap_or(0),
    );
    remove(&collected_dir)?;
    let orch_mb = run["mb_per_s"].as_f64().unwrap_or(0.0);
    eprintln!(
        "   orch: {:.3} s, {orch_mb:.1} MB/s (range produced to the last file collected)",
        run["collection_seconds"].as_f64().unwrap_or(0.0)
    );

    // The worker's copies, as the collector fetched them.
    let out_dir = run["out_dir"].as_str().context("out_dir")?.to_string();
    let worker_out = c.nodes[1]
        .config
        .parent()
        .context("the sender's folder")?
        .join("data")
        .join(&out_dir);
    let names: Vec<String> = sources
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .collect();
    let worker_files: Vec<PathBuf> = names.iter().map(|n| worker_out.join(n)).collect();

    // curl from the worker's data plane.
    eprintln!("   curl");
    let token = orch_runtime::data_plane::token(&c.nodes[1].spec.secret);
    let curl_dir = scratch.join(format!("curl-{}", case.key));
    std::fs::create_dir_all(&curl_dir)?;
    let config = scratch.join(format!("curl-{}.config", case.key));
    let mut text = String::new();
    for n in &names {
        text.push_str(&format!(
            "url = \"http://{data}/v1/files/{out_dir}/{n}\"\noutput = \"{}\"\n",
            curl_dir.join(n).display()
        ));
    }
    std::fs::write(&config, text)?;
    warm_and_sync(&worker_files)?;
    let curl_secs = timed(
        Command::new("curl")
            .args(["-sS", "--fail", "--parallel", "--parallel-max", "2", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg("-K")
            .arg(&config),
        "curl",
    )?;
    check_copies(&curl_dir, case)?;
    remove(&curl_dir)?;
    let _ = std::fs::remove_file(&config);
    eprintln!(
        "   curl: {curl_secs:.3} s, {:.1} MB/s",
        mb_per_s(bytes, curl_secs)
    );

    // cp on the same disk.
    eprintln!("   cp");
    let cp_dir = scratch.join(format!("cp-{}", case.key));
    std::fs::create_dir_all(&cp_dir)?;
    warm_and_sync(&worker_files)?;
    let cp_secs = timed(
        Command::new("cp")
            .arg("--reflink=never")
            .arg("-t")
            .arg(&cp_dir)
            .args(&worker_files),
        "cp",
    )?;
    check_copies(&cp_dir, case)?;
    remove(&cp_dir)?;
    eprintln!(
        "   cp: {cp_secs:.3} s, {:.1} MB/s",
        mb_per_s(bytes, cp_secs)
    );

    drop(c);
    remove(&src_dir)?;
    let curl_mb = mb_per_s(bytes, curl_secs);
    let cp_mb = mb_per_s(bytes, cp_secs);
    let best = curl_mb.max(cp_mb);
    let phase_json = |s: &Seen| {
        json!({
            "max_heartbeat_age_ms": s.max_age_ms,
            "workers_samples": s.samples,
            "slowest_workers_answer_ms": s.slowest_ms,
            "max_rss_bytes": { "sender": s.max_rss.0, "receiver": s.max_rss.1 },
        })
    };
    Ok(json!({
        "files": case.files,
        "file_bytes": case.size,
        "bytes": bytes,
        "orch": run,
        "curl": { "seconds": curl_secs, "mb_per_s": curl_mb },
        "cp": { "seconds": cp_secs, "mb_per_s": cp_mb },
        "orch_over_best": orch_mb / best.max(1e-9),
        "production": phase_json(&seen[0]),
        "collection": phase_json(&seen[1]),
        "rss_idle_bytes": { "sender": rss_idle.0, "receiver": rss_idle.1 },
        "peak_rss_process_life_bytes": { "sender": life_hwm.0, "receiver": life_hwm.1 },
    }))
}

fn mib(b: &Value) -> f64 {
    b.as_f64().unwrap_or(0.0) / MIB as f64
}

fn main() -> Result<()> {
    let args = Args::parse();
    catch_signals();
    let bins = bins(args.no_build)?;
    for tool in ["curl", "cp"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("`{tool}` is not on PATH");
        }
    }
    let scratch = tempfile::Builder::new()
        .prefix("bench-collect-")
        .tempdir_in(&args.scratch)
        .with_context(|| format!("a scratch folder in `{}`", args.scratch.display()))?;
    let cases = if args.quick {
        [
            Case {
                key: "small",
                files: 100,
                size: MIB,
            },
            Case {
                key: "large",
                files: 2,
                size: 256 * MIB,
            },
        ]
    } else {
        [
            Case {
                key: "small",
                files: 1000,
                size: MIB,
            },
            Case {
                key: "large",
                files: 10,
                size: 1 << 30,
            },
        ]
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mut out = json!({
        "machine": { "cores": cores },
        "quick": args.quick,
        "heartbeat_ms": HEARTBEAT_MS,
        "cluster": "2 orch-node processes on 127.0.0.1: `master` (master + worker, the collector) and `sender` (worker; the only device the session's [require] matches); heartbeat 1000 ms x 3; [store] the node default (process), as bench-cluster",
        "timed": {
            "orch": "the range's finished_ms (the master learnt it produced; one range holds every file) to the last collection.files[].collected_ms, master clock",
            "orch_overlap_included": "HTTP submit to the harness seeing collection.settled (polled every 100 ms): production (hard links, the worker hashing every output) and collection",
            "curl": "one `curl --parallel --parallel-max 2` of every file from the worker's data plane (GET /v1/files/out/...), to the same disk",
            "cp": "one `cp --reflink=never` of every file of the worker's output folder, on the same disk",
            "before_each": "the source files read into the page cache, then sync; the previous method's copies deleted",
        },
    });
    for case in &cases {
        let r = run_case(&bins, scratch.path(), case)?;
        out[case.key] = r;
    }
    let hb_limit = HEARTBEAT_MS as f64 * 1.5;
    println!(
        "output collection on {cores} cores: worker `sender` to the master's node (the collector) over the data plane on 127.0.0.1"
    );
    for (k, v) in out["timed"].as_object().into_iter().flatten() {
        println!("  timed, {k}: {}", v.as_str().unwrap_or(""));
    }
    println!(
        "  {:<14} {:>10} {:>10} {:>10} {:>10} {:>13} {:>14}",
        "files", "orch MB/s", "curl MB/s", "cp MB/s", "orch/best", "target 0.80", "with overlap"
    );
    for case in &cases {
        let r = &out[case.key];
        let ratio = r["orch_over_best"].as_f64().unwrap_or(0.0);
        println!(
            "  {:<14} {:>10.1} {:>10.1} {:>10.1} {:>10.2} {:>13} {:>9.1} MB/s",
            case.label(),
            r["orch"]["mb_per_s"].as_f64().unwrap_or(0.0),
            r["curl"]["mb_per_s"].as_f64().unwrap_or(0.0),
            r["cp"]["mb_per_s"].as_f64().unwrap_or(0.0),
            ratio,
            if ratio >= 0.8 { "met" } else { "missed" },
            r["orch"]["overlap_included_mb_per_s"]
                .as_f64()
                .unwrap_or(0.0),
        );
    }
    for case in &cases {
        let o = &out[case.key]["orch"];
        let f = |k: &str| o[k].as_f64().unwrap_or(0.0);
        println!(
            "  {:<14} orch {:.3} s, {:.1} files/s (range produced to last file collected; first file {} ms after the range), settled seen {:.3} s after the harness saw the session completed; overlap included {:.3} s (production {:.3} s); curl {:.3} s; cp {:.3} s; {} transfers for {} files; CPU s in collection: sender {:.2}, receiver {:.2}",
            case.label(),
            f("collection_seconds"),
            f("files_per_s"),
            o["first_file_after_range_ms"],
            f("harness_settled_after_produced_seconds"),
            f("overlap_included_seconds"),
            f("production_seconds"),
            out[case.key]["curl"]["seconds"].as_f64().unwrap_or(0.0),
            out[case.key]["cp"]["seconds"].as_f64().unwrap_or(0.0),
            o["transfers_tried"],
            case.files,
            o["cpu_seconds_in_collection"]["sender"].as_f64().unwrap_or(0.0),
            o["cpu_seconds_in_collection"]["receiver"].as_f64().unwrap_or(0.0),
        );
    }
    let large = &out[cases[1].key]["collection"];
    println!(
        "heartbeat age while the {} move (GET /v1/workers every 50 ms, {} answers, slowest {:.1} ms; limit 1.5 x {} ms = {:.0} ms):",
        cases[1].label(),
        large["workers_samples"],
        large["slowest_workers_answer_ms"].as_f64().unwrap_or(0.0),
        HEARTBEAT_MS,
        hb_limit
    );
    for (node, age) in large["max_heartbeat_age_ms"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let age = age.as_f64().unwrap_or(0.0);
        println!(
            "  {node:<8} max {age:>6.0} ms  {}",
            if age <= hb_limit { "within" } else { "OVER" }
        );
    }
    println!("peak RSS (VmHWM, reset when the range is produced, read when settled; process life in brackets), MiB:");
    for case in &cases {
        let r = &out[case.key];
        let p = &r["orch"]["peak_rss_in_collection_bytes"];
        let l = &r["peak_rss_process_life_bytes"];
        println!(
            "  {:<14} sender {:>7.1} ({:.1})  receiver {:>7.1} ({:.1})",
            case.label(),
            mib(&p["sender"]),
            mib(&l["sender"]),
            mib(&p["receiver"]),
            mib(&l["receiver"]),
        );
    }
    if let Some(f) = &args.json {
        std::fs::write(f, serde_json::to_string_pretty(&out)?)?;
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
