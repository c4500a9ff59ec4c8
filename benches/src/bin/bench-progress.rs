//! What one `ORCH_PROGRESS` line of a `command` task costs the node, by
//! how many files the task's output folder already holds.
//!
//! ```sh
//! cargo run --release -p orch-benches --bin bench-progress -- [--lines N] [--files 0,2000,10000]
//! ```
//!
//! Two tables, one row per folder size:
//! - the look at the folder one progress line costs, alone: one new file,
//!   then what the executor does for a line (read the folder's watch, hash
//!   the new file), against a full scan of the folder (what it did for
//!   every line before it watched folders; by then the folder also holds
//!   the `--lines` files the first column wrote);
//! - a whole task: it starts with that many files in its folder, then
//!   writes one new file and prints one progress line, `--lines` times (a
//!   bash loop of builtins), against a task that prints as many plain
//!   lines (`baseline`).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use orch_actors::executor::{ExecJob, Executor};
use orch_actors::protocol::{ExecutorSpec, FrameRange, IdRange, TaskSpec};
use orch_runtime::command::CommandExecutor;
use orch_runtime::outputs::{check_paths, scan_all, Changes, OutputWatch};
use orch_runtime::procs::TaskGroups;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
struct Args {
    /// Progress lines per task.
    #[arg(long, default_value_t = 2000)]
    lines: u64,
    /// Files already in the folder, one row each.
    #[arg(long, value_delimiter = ',', default_value = "0,2000,10000")]
    files: Vec<u64>,
    /// Runs per row (the median is shown).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

fn job(dir: &Path, lines: u64, script: String) -> ExecJob {
    ExecJob {
        task: TaskSpec {
            session: "bench".into(),
            session_name: "bench".into(),
            task: 0,
            attempt: 1,
            frames: FrameRange {
                start: 0,
                end: lines,
            },
            ids: IdRange { lo: 0, hi: 1 },
            device: "d0".into(),
            executor: ExecutorSpec::Command {
                argv: vec!["bash".into(), "-c".into(), script],
                env: BTreeMap::new(),
            },
            timeout_ms: 600_000,
            items: vec![],
            correlation_id: String::new(),
        },
        node: "bench".into(),
        handle: "h".into(),
        out_dir: dir.to_path_buf(),
    }
}

async fn run_task(exec: &CommandExecutor, dir: &Path, lines: u64, progress: bool) -> Duration {
    let script = if progress {
        format!("for ((i=0; i<{lines}; i++)); do echo x > new_$i.png; echo ORCH_PROGRESS $((i+1)); done")
    } else {
        format!("for ((i=0; i<{lines}; i++)); do echo x > new_$i.png; echo line $i; done")
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let started = Instant::now();
    let r = exec
        .run(job(dir, lines, script), tx, CancellationToken::new())
        .await;
    let took = started.elapsed();
    let _ = drain.await;
    if let Err(e) = r {
        panic!("the task failed: {}", e.message);
    }
    took
}

fn fill(dir: &Path, n: u64) {
    for i in 0..n {
        std::fs::write(dir.join(format!("old_{i:06}.png")), b"old frame").unwrap();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Per line: (watch and hash the new file, rescan the whole folder), in µs.
fn look_cost(root: &Path, n: u64, lines: u64) -> (f64, f64) {
    let watch = OutputWatch::new();
    let dir = root.join(format!("look-{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    fill(&dir, n);
    let watched = watch.watch(&dir);
    let mut seen = HashSet::new();
    let t = Instant::now();
    for i in 0..lines {
        std::fs::write(dir.join(format!("new_{i}.png")), b"new frame").unwrap();
        let paths = match watched.changes() {
            Changes::Paths(p) => p,
            Changes::Everything => panic!("events were lost"),
        };
        let found = check_paths(&dir, paths, &mut seen);
        assert_eq!(found.files.len(), 1);
    }
    let watched_us = t.elapsed().as_secs_f64() * 1e6 / lines as f64;
    drop(watched);
    // The same lines with a full scan each (fewer: it is slow).
    let scans = lines.min(50);
    let mut seen: HashSet<String> = HashSet::new();
    scan_all(&dir, &mut seen);
    let t = Instant::now();
    for i in 0..scans {
        std::fs::write(dir.join(format!("again_{i}.png")), b"new frame").unwrap();
        let found = scan_all(&dir, &mut seen);
        assert_eq!(found.files.len(), 1);
    }
    let scan_us = t.elapsed().as_secs_f64() * 1e6 / scans as f64;
    std::fs::remove_dir_all(&dir).unwrap();
    (watched_us, scan_us)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let tmp = tempfile::tempdir().unwrap();
    println!("The look one progress line costs, by files already in the folder (µs per line)");
    println!(
        "{:>14} {:>16} {:>16} {:>8}",
        "files before", "watch + hash", "full rescan", "ratio"
    );
    for &n in &args.files {
        let (w, s) = look_cost(tmp.path(), n, args.lines);
        println!("{n:>14} {w:>16.1} {s:>16.0} {:>7.0}x", s / w);
    }
    println!();
    let exec = CommandExecutor {
        work_dir: tmp.path().join("work"),
        groups: Arc::new(TaskGroups::in_dir(tmp.path().join("procs"))),
        watch: Arc::new(OutputWatch::new()),
        grace_ms: 0,
        logs: None,
    };
    std::fs::create_dir_all(tmp.path().join("procs")).unwrap();
    println!(
        "{} progress lines per task, one new file per line; median of {} runs",
        args.lines, args.runs
    );
    println!(
        "{:>14} {:>12} {:>12} {:>16} {:>18}",
        "files before", "task (ms)", "baseline", "per line (µs)", "end scan (µs)"
    );
    for &n in &args.files {
        let (mut with, mut without, mut scans) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.runs {
            for progress in [true, false] {
                let dir = tmp.path().join(format!("f{n}-r{run}-{progress}"));
                std::fs::create_dir_all(&dir).unwrap();
                fill(&dir, n);
                let took = run_task(&exec, &dir, args.lines, progress).await;
                if progress {
                    with.push(took);
                    let t = Instant::now();
                    let found = scan_all(&dir, &mut HashSet::new());
                    scans.push(t.elapsed());
                    assert_eq!(found.files.len() as u64, n + args.lines);
                } else {
                    without.push(took);
                }
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
        let (w, b, s) = (median(with), median(without), median(scans));
        let per_line = w.saturating_sub(b).as_secs_f64() * 1e6 / args.lines as f64;
        println!(
            "{:>14} {:>12.1} {:>12.1} {:>16.1} {:>18.0}",
            n,
            w.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            per_line,
            s.as_secs_f64() * 1e6
        );
    }
}
