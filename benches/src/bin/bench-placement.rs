//! `bench-placement`: the pure `Scheduler` (no network, no store) on fleets
//! of growing size, placing by the index and by looking at every device,
//! side by side in one run: the time of the first placement burst of a
//! submission, the completion rate with results fed back in assignment
//! order, and the cost of one placement.

use std::collections::BTreeMap;
use std::time::Instant;

use clap::Parser;
use orch_actors::protocol::{AttemptKey, DeviceInfo, SessionSpec};
use orch_actors::scheduler::{SchedCommand, SchedEvent, Scheduler};
use serde_json::json;

// The allocator orch-node runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Also place as the master does: in `Place` slices of `PLACE_BUDGET`
    /// (`PlaceInPasses`); the burst is the time spent in the slices.
    #[arg(long)]
    sliced: bool,
    /// Skip the scan on fleets above this many devices.
    #[arg(long, default_value_t = 10_000)]
    scan_max_devices: usize,
    /// Instead: the longest single event of the big operations (submit,
    /// failover, resume, finish, manifest snapshot, eviction) on a fleet
    /// of NODESxDEVICES, with the master's placement budget.
    #[arg(long)]
    stalls: Option<String>,
    /// Tasks of the session for --stalls.
    #[arg(long, default_value_t = 1_000_000)]
    stall_tasks: u64,
}

/// The longest `on_event` of a sequence, in ms, and how many there were.
#[derive(Default)]
struct Longest {
    ms: f64,
    events: u64,
}

impl Longest {
    fn feed(&mut self, s: &mut Scheduler, ev: SchedEvent, now: u64) -> Vec<SchedCommand> {
        let t = Instant::now();
        let out = s.on_event(ev, now);
        self.ms = self.ms.max(t.elapsed().as_secs_f64() * 1e3);
        self.events += 1;
        out
    }
}

fn fleet(nodes: usize, devices: usize) -> Scheduler {
    let mut s = Scheduler::new(0);
    s.on_event(
        SchedEvent::PlaceBudget {
            max: orch_actors::master::PLACE_BUDGET,
        },
        0,
    );
    for n in 0..nodes {
        s.on_event(node_up(n, devices, Vec::new()), 0);
    }
    s
}

fn node_up(n: usize, devices: usize, held: Vec<AttemptKey>) -> SchedEvent {
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
        held,
    }
}

/// Feed `Place` while the scheduler wants it; every assignment goes to `queue`.
fn settle(
    s: &mut Scheduler,
    l: &mut Longest,
    queue: &mut Vec<(String, orch_actors::protocol::TaskSpec)>,
    now: u64,
) {
    while s.wants_to_place() {
        take(l.feed(s, SchedEvent::Place, now), queue);
    }
}

fn take(cmds: Vec<SchedCommand>, queue: &mut Vec<(String, orch_actors::protocol::TaskSpec)>) {
    for c in cmds {
        if let SchedCommand::Assign { node, task, .. } = c {
            queue.push((node, task));
        }
    }
}

fn stalls(fleet_arg: &str, tasks: u64) -> anyhow::Result<serde_json::Value> {
    let (nodes, devices) = fleet_arg
        .split_once('x')
        .and_then(|(n, d)| Some((n.parse::<usize>().ok()?, d.parse::<usize>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--stalls: `{fleet_arg}` is not NODESxDEVICES"))?;
    let mut s = fleet(nodes, devices);
    let mut queue = Vec::new();
    let mut submit = Longest::default();
    take(
        submit.feed(
            &mut s,
            SchedEvent::Submit {
                id: "s".into(),
                spec: spec(tasks),
            },
            1,
        ),
        &mut queue,
    );
    settle(&mut s, &mut submit, &mut queue, 1);
    let placed = queue.len();
    // Half the session, results in assignment order.
    let mut run = Longest::default();
    let mut i = 0;
    while (i as u64) < tasks / 2 && i < queue.len() {
        let (node, task) = queue[i].clone();
        take(
            run.feed(&mut s, orch_benches::completed(node, task), 2),
            &mut queue,
        );
        settle(&mut s, &mut run, &mut queue, 2);
        i += 1;
    }
    // A node with every device busy dies.
    let held_by_n0 = queue[i..].iter().filter(|(n, _)| n == "n0000").count();
    let mut failover = Longest::default();
    take(
        failover.feed(
            &mut s,
            SchedEvent::NodeDown {
                node: "n0000".into(),
                epoch: 1,
                reason: orch_actors::protocol::LossReason::NodeDown,
            },
            3,
        ),
        &mut queue,
    );
    settle(&mut s, &mut failover, &mut queue, 3);
    queue.retain(|(n, _)| n != "n0000");
    // The master restarts: a resume, then every node registers again with
    // what it holds.
    let mut resume_ev = Longest::default();
    let id_floor = s.ids().high_water() + 1;
    take(
        resume_ev.feed(
            &mut s,
            SchedEvent::Resume {
                id_floor,
                within_ms: 10_000,
            },
            4,
        ),
        &mut queue,
    );
    let mut resume = Longest::default();
    for n in 1..nodes {
        let name = format!("n{n:04}");
        let held = queue[i..]
            .iter()
            .filter(|(node, _)| *node == name)
            .map(|(_, t)| t.key())
            .collect();
        take(
            resume.feed(&mut s, node_up(n, devices, held), 5),
            &mut queue,
        );
        settle(&mut s, &mut resume, &mut queue, 5);
    }
    let mut rest = Longest::default();
    let mut last_ms = 0.0f64;
    while i < queue.len() {
        let (node, task) = queue[i].clone();
        let t = Instant::now();
        take(
            rest.feed(&mut s, orch_benches::completed(node, task), 6),
            &mut queue,
        );
        last_ms = t.elapsed().as_secs_f64() * 1e3;
        settle(&mut s, &mut rest, &mut queue, 6);
        i += 1;
    }
    let view = s.view("s", 7).expect("the session");
    anyhow::ensure!(view.state.is_final(), "the session did not end: {view:?}");
    let t = Instant::now();
    let snap = s.manifest_snapshot("s").expect("a snapshot");
    let snapshot_ms = t.elapsed().as_secs_f64() * 1e3;
    let ranges = snap.ranges();
    drop(snap);
    let mut evict = Longest::default();
    evict.feed(
        &mut s,
        SchedEvent::Evict {
            session: "s".into(),
        },
        8,
    );
    let rows = [
        (
            "submit and its placement slices",
            &submit,
            format!("{placed} placed"),
        ),
        ("half the results", &run, String::new()),
        (
            "failover of one node",
            &failover,
            format!("{held_by_n0} attempts lost"),
        ),
        ("resume: the Resume event", &resume_ev, String::new()),
        (
            "resume: every node again, with what it holds",
            &resume,
            String::new(),
        ),
        (
            "the other results",
            &rest,
            format!("last result (the session ends): {last_ms:.2} ms"),
        ),
        (
            "evict the finished session",
            &evict,
            format!("{ranges} ranges"),
        ),
    ];
    println!(
        "{:<38} {:>10} {:>12}  note",
        "operation", "events", "longest ms"
    );
    let mut out = serde_json::Map::new();
    for (what, l, note) in rows {
        println!("{what:<38} {:>10} {:>12.2}  {note}", l.events, l.ms);
        out.insert(
            what.into(),
            json!({ "events": l.events, "longest_ms": l.ms, "note": note }),
        );
    }
    println!(
        "{:<38} {:>10} {:>12.3}  {ranges} ranges",
        "manifest snapshot", 1, snapshot_ms
    );
    out.insert(
        "manifest snapshot".into(),
        json!({ "longest_ms": snapshot_ms, "ranges": ranges }),
    );
    Ok(json!({ "fleet": fleet_arg, "tasks": tasks, "stalls": out }))
}

fn spec(tasks: u64) -> SessionSpec {
    orch_benches::noop_session("bench", tasks, 1, 1)
}

struct Run {
    burst_s: f64,
    burst_tasks: usize,
    completions_per_s: f64,
    completed: u64,
    /// With `sliced`: the time spent in the `Place` events that followed
    /// results (one placement each, into the device a result freed), and
    /// the assignments they made.
    steady_s: f64,
    steady_placements: usize,
}

fn run(nodes: usize, devices: usize, tasks: u64, scan: bool, sliced: bool) -> Run {
    let mut s = Scheduler::new(0);
    if scan {
        s = s.with_scan_placement();
    }
    if sliced {
        let max = orch_actors::master::PLACE_BUDGET;
        s.on_event(SchedEvent::PlaceBudget { max }, 0);
        s.on_event(SchedEvent::PlaceInPasses, 0);
    }
    for n in 0..nodes {
        s.on_event(node_up(n, devices, Vec::new()), 0);
    }
    let t0 = Instant::now();
    let mut queue = s.on_event(
        SchedEvent::Submit {
            id: "s".into(),
            spec: spec(tasks),
        },
        0,
    );
    let mut burst_s = t0.elapsed().as_secs_f64();
    // The master sends each slice's assignments as it goes; here they are
    // kept to be answered, outside the time measured.
    while sliced && s.wants_to_place() {
        let t = Instant::now();
        let slice = s.on_event(SchedEvent::Place, 0);
        burst_s += t.elapsed().as_secs_f64();
        queue.extend(slice);
    }
    let burst_tasks = queue.len();
    let t1 = Instant::now();
    let mut completed = 0u64;
    let (mut steady_s, mut steady_placements) = (0.0, 0);
    let mut i = 0;
    while i < queue.len() {
        if let SchedCommand::Assign { node, task, .. } = std::mem::replace(
            &mut queue[i],
            SchedCommand::RejectedStale {
                node: String::new(),
                device: String::new(),
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
            while sliced && s.wants_to_place() {
                let t = Instant::now();
                let slice = s.on_event(SchedEvent::Place, 1);
                steady_s += t.elapsed().as_secs_f64();
                steady_placements += slice
                    .iter()
                    .filter(|c| matches!(c, SchedCommand::Assign { .. }))
                    .count();
                queue.extend(slice);
            }
        }
        i += 1;
    }
    Run {
        burst_s,
        burst_tasks,
        completions_per_s: completed as f64 / t1.elapsed().as_secs_f64().max(1e-9),
        completed,
        steady_s,
        steady_placements,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(f) = &args.stalls {
        let out = stalls(f, args.stall_tasks)?;
        eprintln!("{}", serde_json::to_string(&out)?);
        return Ok(());
    }
    let mut out = Vec::new();
    println!(
        "{:<10} {:>8} {:<6} {:>12} {:>8} {:>14} {:>14} {:>16}",
        "fleet",
        "devices",
        "place",
        "burst",
        "tasks",
        "µs/placement",
        "completions/s",
        "steady µs/place"
    );
    for f in &args.fleets {
        let (n, d) = f
            .split_once('x')
            .and_then(|(n, d)| Some((n.parse::<usize>().ok()?, d.parse::<usize>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--fleets: `{f}` is not NODESxDEVICES"))?;
        let mut modes = vec![(false, false)];
        if args.scan && n * d <= args.scan_max_devices {
            modes.push((true, false));
        }
        if args.sliced {
            modes.push((false, true));
        }
        for (scan, sliced) in modes {
            let r = run(n, d, args.tasks, scan, sliced);
            let per = r.burst_s * 1e6 / r.burst_tasks.max(1) as f64;
            let steady =
                (r.steady_placements > 0).then(|| r.steady_s * 1e6 / r.steady_placements as f64);
            let mode = match (scan, sliced) {
                (true, _) => "scan",
                (false, true) => "sliced",
                _ => "index",
            };
            println!(
                "{:<10} {:>8} {:<6} {:>10.1}ms {:>8} {:>14.2} {:>14.0} {:>16}",
                f,
                n * d,
                mode,
                r.burst_s * 1000.0,
                r.burst_tasks,
                per,
                r.completions_per_s,
                steady.map_or("-".to_string(), |s| format!("{s:.2}"))
            );
            out.push(json!({
                "fleet": f, "devices": n * d, "placement": mode,
                "burst_ms": r.burst_s * 1000.0, "burst_tasks": r.burst_tasks,
                "us_per_placement": per, "completions_per_s": r.completions_per_s,
                "completed": r.completed,
                "steady_us_per_placement": steady, "steady_placements": r.steady_placements,
            }));
        }
    }
    eprintln!("{}", serde_json::to_string(&out)?);
    Ok(())
}
