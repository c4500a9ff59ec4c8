//! `bench-placement`: the pure `Scheduler` (no network, no store) on fleets
//! of growing size, placing by the index and by looking at every device,
//! side by side in one run: the time of the first placement burst of a
//! submission, the completion rate with results fed back in assignment
//! order, and the cost of one placement.

use std::collections::BTreeMap;
use std::time::Instant;

use clap::Parser;
use orch_actors::protocol::{
    AttemptKey, DeviceInfo, ExecutorSpec, FrameRange, SessionSpec, DEFAULT_MAX_LOSSES,
};
use orch_actors::scheduler::{SchedCommand, SchedEvent, Scheduler};
use serde_json::json;

/// Placement cost by fleet size.
#[derive(Parser, Debug)]
struct Args {
    /// Fleets as NODESxDEVICES, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "3x8,10x100,100x100,1000x100"
    )]
    fleets: Vec<String>,
    /// Tasks of the session (one frame each); at most this many complete.
    #[arg(long, default_value_t = 200_000)]
    tasks: u64,
    /// Also place by looking at every device (slow on large fleets).
    #[arg(long)]
    scan: bool,
    /// Skip the scan on fleets above this many devices.
    #[arg(long, default_value_t = 10_000)]
    scan_max_devices: usize,
}

fn spec(tasks: u64) -> SessionSpec {
    SessionSpec {
        name: "bench".into(),
        frames: FrameRange {
            start: 0,
            end: tasks,
        },
        items: None,
        chunk_frames: 1,
        id_chunk_size: 1,
        require: BTreeMap::new(),
        prefer: BTreeMap::new(),
        max_attempts: 3,
        max_losses: DEFAULT_MAX_LOSSES,
        priority: 0,
        max_devices: None,
        backoff_ms: 10,
        backoff_max_ms: 40,
        executor: ExecutorSpec::Noop,
        timeout_ms: 60_000,
        idempotency_key: None,
    }
}

struct Run {
    burst_s: f64,
    burst_tasks: usize,
    completions_per_s: f64,
    completed: u64,
}

fn run(nodes: usize, devices: usize, tasks: u64, scan: bool) -> Run {
    let mut s = Scheduler::new(0);
    if scan {
        s = s.with_scan_placement();
    }
    for n in 0..nodes {
        s.on_event(
            SchedEvent::NodeUp {
                node: format!("n{n:04}"),
                epoch: 1,
                max_concurrency: devices as u32,
                devices: (0..devices)
                    .map(|i| DeviceInfo {
                        id: format!("d{i}"),
                        handle: String::new(),
                        capabilities: BTreeMap::new(),
                    })
                    .collect(),
                held: Vec::new(),
            },
            0,
        );
    }
    let t0 = Instant::now();
    let mut queue = s.on_event(
        SchedEvent::Submit {
            id: "s".into(),
            spec: spec(tasks),
        },
        0,
    );
    let burst_s = t0.elapsed().as_secs_f64();
    let burst_tasks = queue.len();
    let t1 = Instant::now();
    let mut completed = 0u64;
    let mut i = 0;
    while i < queue.len() {
        if let SchedCommand::Assign { node, task, .. } = std::mem::replace(
            &mut queue[i],
            SchedCommand::RejectedStale {
                node: String::new(),
                key: AttemptKey {
                    session: String::new(),
                    task: 0,
                    attempt: 0,
                },
            },
        ) {
            completed += 1;
            let more = s.on_event(orch_benches::completed(node, task), 1);
            queue.extend(more);
        }
        i += 1;
    }
    Run {
        burst_s,
        burst_tasks,
        completions_per_s: completed as f64 / t1.elapsed().as_secs_f64().max(1e-9),
        completed,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut out = Vec::new();
    println!(
        "{:<10} {:>8} {:<6} {:>12} {:>8} {:>14} {:>14}",
        "fleet", "devices", "place", "burst", "tasks", "µs/placement", "completions/s"
    );
    for f in &args.fleets {
        let (n, d) = f
            .split_once('x')
            .and_then(|(n, d)| Some((n.parse::<usize>().ok()?, d.parse::<usize>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--fleets: `{f}` is not NODESxDEVICES"))?;
        let mut modes = vec![false];
        if args.scan && n * d <= args.scan_max_devices {
            modes.push(true);
        }
        for scan in modes {
            let r = run(n, d, args.tasks, scan);
            let per = r.burst_s * 1e6 / r.burst_tasks.max(1) as f64;
            let mode = if scan { "scan" } else { "index" };
            println!(
                "{:<10} {:>8} {:<6} {:>10.1}ms {:>8} {:>14.2} {:>14.0}",
                f,
                n * d,
                mode,
                r.burst_s * 1000.0,
                r.burst_tasks,
                per,
                r.completions_per_s
            );
            out.push(json!({
                "fleet": f, "devices": n * d, "placement": mode,
                "burst_ms": r.burst_s * 1000.0, "burst_tasks": r.burst_tasks,
                "us_per_placement": per, "completions_per_s": r.completions_per_s,
                "completed": r.completed,
            }));
        }
    }
    eprintln!("{}", serde_json::to_string(&out)?);
    Ok(())
}
