//! orch-benches: criterion benches and the side-by-side cluster harness live here.

/// The `[store] durability` modes of a node's `cluster.toml`, in the order the
/// `durability` shape of `bench-cluster` runs them: no store, the default,
/// fsync on every commit.
pub const DURABILITY_MODES: [&str; 3] = ["memory", "process", "power"];

use orch_actors::protocol::{
    AttemptKey, ExecutorSpec, FrameRange, SessionSpec, TaskOutcome, TaskResult, TaskSpec,
    DEFAULT_MAX_LOSSES,
};
use orch_actors::scheduler::SchedEvent;

/// The result of `task`, completed on `node` (epoch 1), as the ledger
/// benches feed back.
pub fn completed(node: String, task: TaskSpec) -> SchedEvent {
    SchedEvent::Result(TaskResult {
        node,
        epoch: 1,
        key: AttemptKey {
            session: task.session,
            task: task.task,
            attempt: task.attempt,
        },
        device: task.device,
        started_ms: 0,
        finished_ms: 1,
        last_id_used: None,
        outputs: vec![],
        outcome: TaskOutcome::Completed,
        seq: 0,
        steps: Vec::new(),
    })
}

/// A `builtin:noop` session named `name` of `frames` frames in tasks of
/// `chunk`, IDs `id_chunk` an attempt, no requirement, the defaults of a
/// session file otherwise (3 attempts, priority 0, no device limit).
pub fn noop_session(name: &str, frames: u64, chunk: u64, id_chunk: u64) -> SessionSpec {
    SessionSpec {
        name: name.into(),
        frames: FrameRange {
            start: 0,
            end: frames,
        },
        items: None,
        chunk_frames: chunk,
        id_chunk_size: id_chunk,
        require: Default::default(),
        prefer: Default::default(),
        max_attempts: 3,
        max_losses: DEFAULT_MAX_LOSSES,
        priority: 0,
        max_devices: None,
        backoff_ms: 10,
        backoff_max_ms: 100,
        executor: ExecutorSpec::Noop,
        timeout_ms: 600_000,
        idempotency_key: None,
        collect: None,
        correlation_id: None,
        blocklist_after: None,
    }
}

/// The workspace root.
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The release `orch-node` and `orchctl`, built first unless `no_build`.
pub fn release_bins(no_build: bool) -> anyhow::Result<orch_tests::Bins> {
    use anyhow::{bail, Context};
    if !no_build {
        let st = std::process::Command::new("cargo")
            .args(["build", "--release", "-p", "orch-runtime", "--bins"])
            .current_dir(root())
            .status()
            .context("run cargo build")?;
        if !st.success() {
            bail!("cargo build --release failed");
        }
    }
    let dir = root().join("target/release");
    let b = orch_tests::Bins {
        node: dir.join("orch-node"),
        ctl: dir.join("orchctl"),
    };
    if !b.node.exists() {
        bail!(
            "no `{}`; build it with cargo build --release",
            b.node.display()
        );
    }
    Ok(b)
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: i32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with `)`.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after `)`.
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ: /proc reports in hundredths of a second on every Linux.
    Some(ticks / 100.0)
}

/// (VmRSS, VmHWM) of a process, in bytes.
pub fn memory(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
