//! `bench-fleet`: the real Master actor in one process with a fleet of
//! simulated workers (default 1,000 nodes of 100 devices) that speak the
//! real protocol (`ToMaster` / `ToWorker`) through the same path as remote
//! workers (the `orch.worker.{node}` process group, a monitored actor whose
//! messages are `WorkerMsg`), minus the socket and the wire codec. A
//! simulated worker is one cheap actor per node, no device actors: it
//! registers, heartbeats every `--heartbeat-ms`, and answers each `Assign`
//! at once with a completed `TaskResult` numbered like an outbox entry.
//!
//! The master runs alone on a thread of its own (a current-thread tokio
//! runtime, its Session actors and timers with it); the simulated workers on
//! another runtime (`--worker-threads`), the mailbox probe on a third. CPU is
//! read per thread (`pthread_getcpuclockid` + `clock_gettime`, ns) and for
//! the process (`getrusage(RUSAGE_SELF)`).
//!
//! It measures: the time to register every worker; the master's CPU with
//! every worker heartbeating and no session; workers declared unhealthy and
//! `Reregister`s received; the submit latency of a `--tasks` single-frame
//! no-op session, the placement rate and the session's completion time; the
//! round trip of `AdminRequest::Status` sent by a probe every 5 ms throughout
//! (answered by the master's `handle`, in mailbox order, not by the read
//! model), per phase; RSS before the workers, with the workers alone, with
//! every worker registered, and after the session; the master's CPU with
//! heartbeats only again after the session. `--timeline` prints a line a
//! second (the master thread's CPU, assignments, results handled, the
//! probe's longest wait); `--dashboard` keeps a status page's requests going
//! throughout; `--keep-ledger` leaves the finished session in the master's
//! memory (plain `NullIo`) instead of evicting it.
//!
//! Human-readable lines go to stderr, one JSON object to stdout.

#![allow(unsafe_code)] // libc: per-thread CPU clocks, getrusage, gettid

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use orch_actors::executor::{Executor, NodeIo, NullIo};
use orch_actors::master::{Master, MasterArgs, MasterMsg};
use orch_actors::membership::DetectorConfig;
use orch_actors::protocol::{
    worker_group, AdminReply, AdminRequest, CapValue, Capabilities, ClusterStatus, DeviceInfo,
    ExecutorSpec, Heartbeat, Manifest, MemberState, Register, ReplayRecord, SessionSpec,
    SessionView, TaskOutcome, TaskResult, ToMaster, ToWorker, WorkerStatus, PROTOCOL_VERSION,
};
use orch_actors::read_model::ReadModel;
use orch_actors::scheduler::ManifestSnapshot;
use orch_actors::worker::WorkerMsg;
use ractor::rpc::CallResult;
use ractor::{pg, Actor, ActorProcessingErr, ActorRef};
use serde_json::{json, Value};

// The allocator orch-node runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One master, a fleet of simulated workers, in one process.
#[derive(Parser, Debug)]
struct Args {
    /// Simulated worker nodes (default 1,000; 10 with --quick).
    #[arg(long)]
    workers: Option<usize>,
    /// Devices per worker (default 100; 10 with --quick).
    #[arg(long)]
    devices: Option<usize>,
    /// Single-frame no-op tasks of the submitted session (default
    /// 1,000,000; 10,000 with --quick).
    #[arg(long)]
    tasks: Option<u64>,
    /// Heartbeat period of every worker, and the master's detector.
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// Seconds of each heartbeats-only window (default 10; 3 with --quick).
    #[arg(long)]
    idle_s: Option<u64>,
    /// A smoke run: 10 workers of 10 devices, 10,000 tasks, 3 s windows
    /// (each can still be set on its own).
    #[arg(long)]
    quick: bool,
    /// Threads of the simulated workers' runtime.
    #[arg(long, default_value_t = 1)]
    worker_threads: usize,
    /// Period of the mailbox probe (`AdminRequest::Status`), in ms.
    #[arg(long, default_value_t = 5)]
    probe_ms: u64,
    /// Start every worker's heartbeat at the same instant (a burst of all
    /// of them each period) instead of spread evenly over the period.
    #[arg(long)]
    aligned: bool,
    /// Give up on the session after this many seconds.
    #[arg(long, default_value_t = 900)]
    deadline_s: u64,
    /// Do not install the Prometheus recorder (a real node always has one).
    #[arg(long)]
    no_metrics: bool,
    /// Print a line per second: the master thread's CPU, assignments
    /// received and results acknowledged so far, the probe's longest round
    /// trip (always recorded in the JSON).
    #[arg(long)]
    timeline: bool,
    /// Keep a status page open throughout: every second, what
    /// `status.html` fetches (`/v1/status`, `/v1/workers`,
    /// `/v1/devices/grid`), asked as the admin API asks (the read model,
    /// else the master's mailbox).
    #[arg(long)]
    dashboard: bool,
    /// Keep a finished session's ledger in the master's memory (the master's
    /// `NullIo`, whose manifests never exist) instead of evicting it.
    #[arg(long)]
    keep_ledger: bool,
}

// ---- clocks and memory ----

fn thread_clock() -> libc::clockid_t {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread; `id` is a valid out pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    assert_eq!(rc, 0, "pthread_getcpuclockid");
    id
}

/// CPU seconds of the clock `id` (a thread's, while the thread lives).
fn cpu_s(id: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; a dead thread's clock returns an error, read as 0.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// User + system CPU seconds of the whole process.
fn process_cpu_s() -> f64 {
    // SAFETY: zeroed rusage is a valid out value for getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn gettid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// A field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn rss() -> u64 {
    status_bytes("VmRSS:")
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// CPU of the threads that matter, at one instant.
#[derive(Clone, Copy, Debug)]
struct Cpu {
    at: Instant,
    master: f64,
    workers: f64,
    probe: f64,
    process: f64,
}

#[derive(Clone)]
struct Clocks {
    master: libc::clockid_t,
    probe: libc::clockid_t,
    workers: Arc<Mutex<Vec<libc::clockid_t>>>,
}

impl Clocks {
    fn now(&self) -> Cpu {
        Cpu {
            at: Instant::now(),
            master: cpu_s(self.master),
            workers: self.workers.lock().unwrap().iter().map(|&c| cpu_s(c)).sum(),
            probe: cpu_s(self.probe),
            process: process_cpu_s(),
        }
    }
}

/// CPU used between two readings, as % of one core.
#[derive(Clone, Copy, Debug)]
struct CpuUse {
    wall_s: f64,
    master: f64,
    workers: f64,
    probe: f64,
    process: f64,
}

fn cpu_use(a: Cpu, b: Cpu) -> CpuUse {
    let wall = (b.at - a.at).as_secs_f64().max(1e-9);
    let pct = |x: f64, y: f64| (y - x) / wall * 100.0;
    CpuUse {
        wall_s: wall,
        master: pct(a.master, b.master),
        workers: pct(a.workers, b.workers),
        probe: pct(a.probe, b.probe),
        process: pct(a.process, b.process),
    }
}

impl CpuUse {
    fn json(&self) -> Value {
        json!({
            "wall_s": self.wall_s,
            "master_thread_pct": self.master,
            "worker_threads_pct": self.workers,
            "probe_thread_pct": self.probe,
            "process_pct": self.process,
        })
    }
}

// ---- what the simulated workers count ----

#[derive(Default)]
struct Stats {
    registered: AtomicU64,
    heartbeats: AtomicU64,
    assigned: AtomicU64,
    results: AtomicU64,
    acked: AtomicU64,
    ack_msgs: AtomicU64,
    reregister: AtomicU64,
    refused: AtomicU64,
    drops: AtomicU64,
    other: AtomicU64,
    /// Nanoseconds after `base` of the first and the last assignment received.
    first_assign_ns: AtomicU64,
    last_assign_ns: AtomicU64,
    /// Nanoseconds after `base` when the last worker heard `Registered`.
    last_registered_ns: AtomicU64,
    /// The assignment that fills the fleet (one running and `PREFETCH`
    /// queued per device), and when it came.
    burst_n: AtomicU64,
    burst_ns: AtomicU64,
    /// Nanoseconds after `base` of the last `Ack`: with no store the master
    /// acknowledges a result right after handling it.
    last_ack_ns: AtomicU64,
}

// ---- the master's file work ----

/// [`NullIo`] but for manifests: a written manifest "exists" (nothing is
/// serialized or written), so a finished session's ledger leaves the
/// master's memory as on a node with a data_dir (`--keep-ledger`: plain
/// `NullIo`, whose manifests never exist, so the ledger stays).
struct BenchIo {
    written: Mutex<HashSet<String>>,
}

impl NodeIo for BenchIo {
    fn prepare_out_dir(&self, rel: &str) -> Result<PathBuf, String> {
        NullIo.prepare_out_dir(rel)
    }
    fn quarantine(&self, rel: &str, keep: &[String]) -> Result<usize, String> {
        NullIo.quarantine(rel, keep)
    }
    fn write_manifest(&self, manifest: &ManifestSnapshot) -> Result<PathBuf, String> {
        self.written
            .lock()
            .unwrap()
            .insert(manifest.session().to_string());
        NullIo.write_manifest(manifest)
    }
    fn manifest_exists(&self, session: &str) -> bool {
        self.written.lock().unwrap().contains(session)
    }
    fn read_manifest(&self, session: &str) -> Result<Manifest, String> {
        NullIo.read_manifest(session)
    }
    fn amend_manifest(&self, session: &str, record: &ReplayRecord) -> Result<(), String> {
        NullIo.amend_manifest(session, record)
    }
    fn executor(&self, spec: &ExecutorSpec) -> Arc<dyn Executor> {
        NullIo.executor(spec)
    }
}

// ---- the simulated worker ----

struct SimWorker;

struct SimArgs {
    node: String,
    register: Register,
    heartbeat_ms: u64,
    /// When its heartbeat timer starts, after the first `Tick`.
    offset: Duration,
    master: ActorRef<MasterMsg>,
    stats: Arc<Stats>,
    base: Instant,
}

struct SimState {
    a: SimArgs,
    /// 0: not registered.
    epoch: u64,
    hb_seq: u64,
    out_seq: u64,
    started: bool,
}

impl SimState {
    fn send(&self, msg: ToMaster) {
        let _ = self.a.master.cast(MasterMsg::Worker(msg));
    }
}

impl Actor for SimWorker {
    type Msg = WorkerMsg;
    type State = SimState;
    type Arguments = SimArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        a: SimArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Where the master finds it (as it finds a remote worker's stand-in).
        pg::join(worker_group(&a.node), vec![myself.get_cell()]);
        Ok(SimState {
            a,
            epoch: 0,
            hb_seq: 0,
            // An outbox numbers its entries from its clock in µs (so that they
            // grow across restarts); any increasing number above 0 will do.
            out_seq: unix_ms() * 1000,
            started: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // The first `Tick` (from the harness) starts it: register now,
            // heartbeat from `offset` on (the timer starts with `Flush`).
            WorkerMsg::Tick => {
                if !st.started {
                    st.started = true;
                    myself.send_after(st.a.offset, || WorkerMsg::Flush);
                }
                if st.epoch == 0 {
                    // Not acknowledged yet: (re)send the registration, as the real worker does.
                    st.send(ToMaster::Register(st.a.register.clone()));
                } else {
                    st.hb_seq += 1;
                    st.a.stats.heartbeats.fetch_add(1, Relaxed);
                    st.send(ToMaster::Heartbeat(Heartbeat {
                        node: st.a.node.clone(),
                        epoch: st.epoch,
                        seq: st.hb_seq,
                        queue_ratio: 0.0,
                        gpu_usage: 0.0,
                        active_tasks: 0,
                        last_frame: None,
                        status: WorkerStatus::Ok,
                        error: None,
                    }));
                }
            }
            WorkerMsg::Flush => {
                let hb = Duration::from_millis(st.a.heartbeat_ms);
                myself.send_interval(hb, || WorkerMsg::Tick);
            }
            WorkerMsg::Master(m) => on_master(st, m),
            _ => {}
        }
        Ok(())
    }
}

fn on_master(st: &mut SimState, m: ToWorker) {
    let s = &st.a.stats;
    match m {
        ToWorker::Registered { epoch, .. } => {
            if st.epoch == 0 {
                st.epoch = epoch;
                s.registered.fetch_add(1, Relaxed);
                s.last_registered_ns
                    .fetch_max(st.a.base.elapsed().as_nanos() as u64, Relaxed);
            }
        }
        ToWorker::Assign(task) => {
            let at = st.a.base.elapsed().as_nanos() as u64;
            let n = s.assigned.fetch_add(1, Relaxed) + 1;
            if n == 1 {
                s.first_assign_ns.store(at, Relaxed);
            }
            if n == s.burst_n.load(Relaxed) {
                s.burst_ns.store(at, Relaxed);
            }
            s.last_assign_ns.fetch_max(at, Relaxed);
            // A single-frame no-op: done at once.
            st.out_seq += 1;
            let now = unix_ms();
            s.results.fetch_add(1, Relaxed);
            let r = TaskResult {
                node: st.a.node.clone(),
                epoch: st.epoch,
                key: task.key(),
                device: task.device,
                started_ms: now,
                finished_ms: now,
                last_id_used: None,
                outputs: vec![],
                outcome: TaskOutcome::Completed,
                seq: st.out_seq,
                steps: Vec::new(),
            };
            st.send(ToMaster::Result(r));
        }
        ToWorker::Ack { seqs } => {
            s.ack_msgs.fetch_add(1, Relaxed);
            s.acked.fetch_add(seqs.len() as u64, Relaxed);
            s.last_ack_ns
                .fetch_max(st.a.base.elapsed().as_nanos() as u64, Relaxed);
        }
        ToWorker::Reregister { .. } => {
            s.reregister.fetch_add(1, Relaxed);
            st.epoch = 0;
            st.a.register.attempt += 1;
            st.send(ToMaster::Register(st.a.register.clone()));
        }
        ToWorker::Refused { .. } => {
            s.refused.fetch_add(1, Relaxed);
        }
        ToWorker::Drop { .. } => {
            s.drops.fetch_add(1, Relaxed);
        }
        _ => {
            s.other.fetch_add(1, Relaxed);
        }
    }
}

fn register_of(node: &str, devices: usize, instance: u64) -> Register {
    let mut caps = Capabilities::new();
    caps.insert("gpu".into(), CapValue::Bool(true));
    caps.insert("os".into(), CapValue::Str("linux".into()));
    caps.insert("vram_gb".into(), CapValue::Int(24));
    Register {
        protocol_version: PROTOCOL_VERSION,
        node: node.to_string(),
        advertise: format!("10.0.{}.{}:7700", instance / 250, instance % 250),
        capabilities: caps.clone(),
        devices: (0..devices)
            .map(|i| DeviceInfo {
                id: format!("gpu{i}"),
                handle: format!("cuda:{i}"),
                capabilities: caps.clone(),
            })
            .collect(),
        max_concurrency: devices as u32,
        instance: instance + 1,
        attempt: 1,
        held: vec![],
        data: None,
    }
}

/// The session: `tasks` single-frame no-op tasks.
fn spec(tasks: u64) -> SessionSpec {
    orch_benches::noop_session("fleet", tasks, 1, 1)
}

// ---- the mailbox probe ----

const PH_SETUP: u8 = 0;
const PH_REGISTER: u8 = 1;
const PH_IDLE: u8 = 2;
const PH_QUIET: u8 = 3;
const PH_SUBMIT: u8 = 4;
const PH_RUN: u8 = 5;
const PH_AFTER: u8 = 6;
/// `setup`: the master alone, then with the workers spawned but silent;
/// `register`: from the first `Register` to every worker healthy; `idle`:
/// heartbeats only (then `idle-quiet`, the same without the probe); `submit`:
/// until `Submitted` came back; `run`: until the session is final; `after`:
/// the last reports.
const PHASES: [&str; 7] = [
    "setup",
    "register",
    "idle",
    "idle-quiet",
    "submit",
    "run",
    "after",
];

struct Probe {
    phase: AtomicU8,
    stop: AtomicBool,
    /// (phase at send, ms after `base` at send, round trip in µs)
    samples: Mutex<Vec<(u8, f64, u64)>>,
    failed: AtomicU64,
}

async fn probe_loop(master: ActorRef<MasterMsg>, p: Arc<Probe>, period: Duration, base: Instant) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !p.stop.load(Relaxed) {
        tick.tick().await;
        let phase = p.phase.load(Relaxed);
        if phase == PH_QUIET {
            continue;
        }
        let sent = Instant::now();
        let r = master
            .call(
                |port| MasterMsg::Admin(AdminRequest::Status, port),
                Some(Duration::from_secs(120)),
            )
            .await;
        let rtt = sent.elapsed().as_micros() as u64;
        match r {
            Ok(CallResult::Success(AdminReply::Status(_))) => {
                p.samples
                    .lock()
                    .unwrap()
                    .push((phase, (sent - base).as_secs_f64() * 1000.0, rtt))
            }
            _ => {
                p.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Every second until the probe stops: what the master's thread used, what
/// the workers received, the probe's longest round trip.
fn timeline_loop(
    clocks: Clocks,
    stats: Arc<Stats>,
    probe: Arc<Probe>,
    out: Arc<Mutex<Vec<Value>>>,
    print: bool,
    base: Instant,
) {
    let mut prev = clocks.now();
    let mut seen = 0usize;
    let (mut assigned0, mut acked0) = (0u64, 0u64);
    while !probe.stop.load(Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let now = clocks.now();
        let u = cpu_use(prev, now);
        prev = now;
        let (assigned, acked) = (stats.assigned.load(Relaxed), stats.acked.load(Relaxed));
        let (max_rtt, n) = {
            let s = probe.samples.lock().unwrap();
            let new = &s[seen.min(s.len())..];
            let r = (new.iter().map(|x| x.2).max().unwrap_or(0), new.len());
            seen = s.len();
            r
        };
        let phase = PHASES[probe.phase.load(Relaxed) as usize];
        let t = base.elapsed().as_secs_f64();
        if print {
            eprintln!(
                "   t {t:>6.1} s {phase:<10} master {:>5.1} %  workers {:>5.1} %  assigned {:>8} (+{:>6})  results handled {:>8} (+{:>6})  drops {:>7}  reregister {:>5}  probe {n:>4} max {:>9.3} ms",
                u.master,
                u.workers,
                assigned,
                assigned - assigned0,
                acked,
                acked - acked0,
                stats.drops.load(Relaxed),
                stats.reregister.load(Relaxed),
                max_rtt as f64 / 1000.0
            );
        }
        out.lock().unwrap().push(json!({
            "t_s": t, "phase": phase, "master_pct": u.master, "workers_pct": u.workers,
            "process_pct": u.process, "assigned": assigned, "results_handled": acked,
            "drops": stats.drops.load(Relaxed),
            "reregister": stats.reregister.load(Relaxed),
            "probe_samples": n, "probe_max_ms": max_rtt as f64 / 1000.0,
        }));
        (assigned0, acked0) = (assigned, acked);
    }
}

fn fmt_s(t: Option<f64>) -> String {
    t.map_or("never".into(), |t| format!("{t:.3} s"))
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

// ---- asking the master ----

/// An admin request through the master's mailbox. The limits are long: an
/// overloaded master answers late, and how late is what is measured.
async fn ask(
    master: &ActorRef<MasterMsg>,
    req: AdminRequest,
    timeout: Duration,
) -> Result<AdminReply> {
    match master
        .call(|p| MasterMsg::Admin(req, p), Some(timeout))
        .await
    {
        Ok(CallResult::Success(r)) => Ok(r),
        Ok(CallResult::Timeout) => bail!("the master did not answer within {timeout:?}"),
        Ok(CallResult::SenderError) => bail!("the master dropped the request"),
        Err(e) => bail!("the master is gone: {e}"),
    }
}

async fn status(master: &ActorRef<MasterMsg>) -> Result<ClusterStatus> {
    match ask(master, AdminRequest::Status, Duration::from_secs(600)).await? {
        AdminReply::Status(s) => Ok(s),
        other => bail!("unexpected answer to Status: {other:?}"),
    }
}

async fn session(master: &ActorRef<MasterMsg>, id: &str) -> Result<SessionView> {
    match ask(
        master,
        AdminRequest::Session(id.into()),
        Duration::from_secs(600),
    )
    .await?
    {
        AdminReply::Session(v) => Ok(v),
        other => bail!("unexpected answer to Session: {other:?}"),
    }
}

/// A counter or gauge of the Prometheus text, summed over label sets that contain `labels`.
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, val) = l.rsplit_once(' ')?;
            let (n, rest) = match key.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (key, ""),
            };
            (n == name && rest.contains(labels)).then(|| val.parse::<f64>().ok())?
        })
        .sum()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let workers = args.workers.unwrap_or(if args.quick { 10 } else { 1000 });
    let devices = args.devices.unwrap_or(if args.quick { 10 } else { 100 });
    let tasks = args
        .tasks
        .unwrap_or(if args.quick { 10_000 } else { 1_000_000 });
    let idle_s = args.idle_s.unwrap_or(if args.quick { 3 } else { 10 });
    let total_devices = (workers * devices) as u64;
    let hb = args.heartbeat_ms;
    let base = Instant::now();

    eprintln!(
        "bench-fleet: {workers} workers x {devices} devices = {total_devices} devices, heartbeat {hb} ms, {tasks} tasks, idle windows {idle_s} s, {} worker thread(s), {} cores",
        args.worker_threads,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // The recorder of a real node (its HTTP listener on a free port; its
    // exporter runs on a thread of its own, not on the master's).
    let metrics_port = if args.no_metrics {
        None
    } else {
        let port = orch_tests::free_port();
        orch_runtime::metrics::install_exporter(format!("127.0.0.1:{port}").parse()?)?;
        Some(port)
    };

    // The master, alone on its thread.
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_master, stop_master_rx) = tokio::sync::oneshot::channel::<()>();
    let detector = DetectorConfig {
        heartbeat_ms: hb,
        missed_heartbeats: 3,
    };
    let read_model = Arc::new(ReadModel::new());
    let io: Arc<dyn NodeIo> = if args.keep_ledger {
        Arc::new(NullIo)
    } else {
        Arc::new(BenchIo {
            written: Mutex::default(),
        })
    };
    let rm = read_model.clone();
    let master_thread = std::thread::Builder::new()
        .name("master".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the master's runtime");
            rt.block_on(async move {
                let spawned = Actor::spawn(
                    None,
                    Master,
                    MasterArgs {
                        read_model: rm,
                        node: "fleet-master".into(),
                        detector,
                        grace_wait_ms: 15_000,
                        io,
                        store: None,
                        recovered: None,
                        sync_always: false,
                        resume_within_ms: hb * 3,
                        cluster: None,
                    },
                )
                .await;
                match spawned {
                    Ok((m, _)) => {
                        let _ = tx.send(Ok((m, thread_clock(), gettid())));
                        let _ = stop_master_rx.await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(anyhow!("the master did not start: {e}")));
                    }
                }
            });
        })?;
    let (master, master_clock, master_tid) = rx.recv().context("the master's thread")??;
    eprintln!(
        "master thread tid {master_tid} (pid {}): `perf record -t {master_tid}` to profile it alone",
        std::process::id()
    );

    // The simulated workers' runtime.
    let worker_clocks: Arc<Mutex<Vec<libc::clockid_t>>> = Arc::default();
    let wc = worker_clocks.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.max(1))
        .thread_name("sim-worker")
        .on_thread_start(move || wc.lock().unwrap().push(thread_clock()))
        .enable_all()
        .build()?;

    // The probe, on its own thread.
    let probe = Arc::new(Probe {
        phase: AtomicU8::new(PH_SETUP),
        stop: AtomicBool::new(false),
        samples: Mutex::new(Vec::with_capacity(1 << 16)),
        failed: AtomicU64::new(0),
    });
    let (ptx, prx) = std::sync::mpsc::channel();
    let probe_thread = {
        let (m, p, period) = (
            master.clone(),
            probe.clone(),
            Duration::from_millis(args.probe_ms.max(1)),
        );
        std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                let prt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the probe's runtime");
                let _ = ptx.send(thread_clock());
                prt.block_on(probe_loop(m, p, period, base));
            })?
    };
    let clocks = Clocks {
        master: master_clock,
        probe: prx.recv()?,
        workers: worker_clocks,
    };

    let stats = Arc::new(Stats::default());
    let dashboard = Arc::new(AtomicU64::new(0));
    if args.dashboard {
        let (m, rm, n, stop) = (
            master.clone(),
            read_model.clone(),
            dashboard.clone(),
            probe.clone(),
        );
        // On a thread of its own, as the admin API has the node's other threads.
        std::thread::Builder::new()
            .name("dashboard".into())
            .spawn(move || {
                let drt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the dashboard's runtime");
                drt.block_on(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(1));
                    while !stop.stop.load(Relaxed) {
                        tick.tick().await;
                        for req in [
                            AdminRequest::Status,
                            AdminRequest::Workers,
                            AdminRequest::DeviceGrid,
                        ] {
                            if rm.answer(&req, Duration::from_secs(10)).is_none() {
                                let _ = ask(&m, req, Duration::from_secs(15)).await;
                            }
                            n.fetch_add(1, Relaxed);
                        }
                    }
                });
            })?;
    }
    let timeline: Arc<Mutex<Vec<Value>>> = Arc::default();
    let timeline_thread = {
        let (clocks, stats, probe, tl, print) = (
            clocks.clone(),
            stats.clone(),
            probe.clone(),
            timeline.clone(),
            args.timeline,
        );
        std::thread::Builder::new()
            .name("timeline".into())
            .spawn(move || timeline_loop(clocks, stats, probe, tl, print, base))?
    };
    let result = rt.block_on(run(
        &args,
        Fleet {
            workers,
            devices,
            tasks,
            idle_s,
            total_devices,
            base,
            metrics_port,
        },
        &master,
        &clocks,
        &stats,
        &probe,
        &timeline,
    ));
    probe.stop.store(true, Relaxed);
    let _ = probe_thread.join();
    let _ = timeline_thread.join();
    let mut out = result?;
    out["config"]["dashboard_requests"] = json!(dashboard.load(Relaxed));
    out["timeline"] = Value::Array(std::mem::take(&mut *timeline.lock().unwrap()));
    println!("{}", serde_json::to_string(&out)?);
    master.stop(None);
    let _ = stop_master.send(());
    let _ = master_thread.join();
    // The simulated workers' timers would keep the runtime busy: do not wait for them.
    rt.shutdown_background();
    Ok(())
}

struct Fleet {
    workers: usize,
    devices: usize,
    tasks: u64,
    idle_s: u64,
    total_devices: u64,
    base: Instant,
    metrics_port: Option<u16>,
}

/// Everything the fleet's status says about workers that left the healthy state.
fn unhealthy_of(s: &ClusterStatus) -> (u32, usize) {
    (
        s.workers_unhealthy + s.workers_unregistered,
        s.recent_failures.len(),
    )
}

async fn run(
    args: &Args,
    f: Fleet,
    master: &ActorRef<MasterMsg>,
    clocks: &Clocks,
    stats: &Arc<Stats>,
    probe: &Arc<Probe>,
    timeline: &Arc<Mutex<Vec<Value>>>,
) -> Result<Value> {
    let hb = args.heartbeat_ms;
    let n = f.workers;
    let mut worst_unhealthy = (0u32, 0usize);
    let mut note_unhealthy = |s: &ClusterStatus| {
        let u = unhealthy_of(s);
        worst_unhealthy = (worst_unhealthy.0.max(u.0), worst_unhealthy.1.max(u.1));
    };

    // -- memory before the workers
    let rss_master_only = rss();

    // -- the workers, joined to their groups, not yet known to the master
    let t_spawn = Instant::now();
    let mut sims = Vec::with_capacity(n);
    for i in 0..n {
        let node = format!("sim-{i:04}");
        let offset = if args.aligned {
            Duration::ZERO
        } else {
            Duration::from_micros(hb * 1000 * i as u64 / n.max(1) as u64)
        };
        let a = SimArgs {
            register: register_of(&node, f.devices, i as u64),
            node,
            heartbeat_ms: hb,
            offset,
            master: master.clone(),
            stats: stats.clone(),
            base: f.base,
        };
        let (w, _) = Actor::spawn(None, SimWorker, a).await?;
        sims.push(w);
    }
    let spawn_s = t_spawn.elapsed().as_secs_f64();
    // Let the allocator settle the spawn's transient buffers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_workers = rss();
    eprintln!(
        "{n} simulated workers spawned in {:.2} s; RSS {:.1} MiB before them, {:.1} MiB with them ({:.0} B per device of the workers' own)",
        spawn_s,
        mib(rss_master_only),
        mib(rss_workers),
        rss_workers.saturating_sub(rss_master_only) as f64 / f.total_devices.max(1) as f64
    );

    // -- 1. registration
    probe.phase.store(PH_REGISTER, Relaxed);
    let reg_start_ns = f.base.elapsed().as_nanos() as u64;
    let t_reg = Instant::now();
    let cpu_reg0 = clocks.now();
    for w in &sims {
        w.cast(WorkerMsg::Tick)?;
    }
    let reg_deadline = Duration::from_secs(120.max(n as u64 / 10));
    let mut polls = 0u64;
    let registered_s = loop {
        let s = status(master).await?;
        polls += 1;
        note_unhealthy(&s);
        if s.workers_healthy as usize == n {
            break t_reg.elapsed().as_secs_f64();
        }
        if t_reg.elapsed() > reg_deadline {
            bail!(
                "only {} of {n} workers healthy after {reg_deadline:?} ({} heard Registered)",
                s.workers_healthy,
                stats.registered.load(Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu_reg = cpu_use(cpu_reg0, clocks.now());
    probe.phase.store(PH_IDLE, Relaxed);
    let last_heard_s = (stats
        .last_registered_ns
        .load(Relaxed)
        .saturating_sub(reg_start_ns)) as f64
        * 1e-9;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_registered = rss();
    let master_per_device =
        rss_registered.saturating_sub(rss_workers) as f64 / f.total_devices.max(1) as f64;
    eprintln!(
        "1. registered {n} workers in {:.3} s (master status all healthy, {polls} polls; the last worker heard `Registered` at {:.3} s); master thread {:.0} % of a core meanwhile",
        registered_s, last_heard_s, cpu_reg.master
    );
    eprintln!(
        "7. RSS {:.1} MiB with every worker registered: master +{:.1} MiB = {:.0} B per device",
        mib(rss_registered),
        mib(rss_registered.saturating_sub(rss_workers)),
        master_per_device
    );

    // -- 2. heartbeats only: with the probe, then without it
    // Wait one period so that every worker's heartbeat timer runs.
    tokio::time::sleep(Duration::from_millis(hb + 100)).await;
    let mut windows = Vec::new();
    for phase in [PH_IDLE, PH_QUIET] {
        probe.phase.store(phase, Relaxed);
        let hb0 = stats.heartbeats.load(Relaxed);
        let c0 = clocks.now();
        tokio::time::sleep(Duration::from_secs(f.idle_s)).await;
        let c1 = clocks.now();
        let beats = stats.heartbeats.load(Relaxed) - hb0;
        let u = cpu_use(c0, c1);
        let per_s = beats as f64 / u.wall_s;
        let master_us_per_hb = u.master / 100.0 * u.wall_s * 1e6 / beats.max(1) as f64;
        let process_us_per_hb = u.process / 100.0 * u.wall_s * 1e6 / beats.max(1) as f64;
        eprintln!(
            "2. {:<10} {:.0} heartbeats/s: master thread {:.2} % of a core ({:.2} µs per heartbeat), process {:.2} % ({:.2} µs per heartbeat), sim workers {:.2} %, probe {:.2} %",
            PHASES[phase as usize],
            per_s,
            u.master,
            master_us_per_hb,
            u.process,
            process_us_per_hb,
            u.workers,
            u.probe
        );
        windows.push(json!({
            "phase": PHASES[phase as usize],
            "probe": phase != PH_QUIET,
            "heartbeats": beats,
            "heartbeats_per_s": per_s,
            "cpu": u.json(),
            "master_us_per_heartbeat": master_us_per_hb,
            "process_us_per_heartbeat": process_us_per_hb,
        }));
        note_unhealthy(&status(master).await?);
    }
    probe.phase.store(PH_IDLE, Relaxed);
    let rss_idle = rss();

    // -- 4. submit
    let burst = f.tasks.min(f.total_devices * 3);
    stats.burst_n.store(burst, Relaxed);
    probe.phase.store(PH_SUBMIT, Relaxed);
    let cpu_s0 = clocks.now();
    let t_submit = Instant::now();
    let submit_ns = f.base.elapsed().as_nanos() as u64;
    let id = match ask(
        master,
        AdminRequest::Submit(spec(f.tasks)),
        Duration::from_secs(300),
    )
    .await?
    {
        AdminReply::Submitted { id } => id,
        other => bail!("the session was not submitted: {other:?}"),
    };
    let submit_s = t_submit.elapsed().as_secs_f64();
    probe.phase.store(PH_RUN, Relaxed);
    let assigned_at_reply = stats.assigned.load(Relaxed);
    eprintln!(
        "4. submitted {} tasks in {:.1} ms ({assigned_at_reply} assignments received by then)",
        f.tasks,
        submit_s * 1000.0
    );

    // -- 5. the run
    let deadline = Duration::from_secs(args.deadline_s);
    let mut all_done_s = None;
    let mut last_view;
    let mut polls = 0u64;
    let mut status_polls = 0u64;
    loop {
        let v = session(master, &id).await?;
        polls += 1;
        if polls.is_multiple_of(20) {
            note_unhealthy(&status(master).await?);
            status_polls += 1;
        }
        if all_done_s.is_none() && v.tasks_completed >= v.tasks_total {
            all_done_s = Some(t_submit.elapsed().as_secs_f64());
        }
        let fin = v.state.is_final();
        last_view = v;
        if fin {
            break;
        }
        if t_submit.elapsed() > deadline {
            eprintln!(
                "   the session did not end within {deadline:?}: {} of {} tasks completed",
                last_view.tasks_completed, last_view.tasks_total
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let completed_s = t_submit.elapsed().as_secs_f64();
    eprintln!(
        "   the session's view: {} completed, {} failed, {} retries, {} failovers, {} stale results rejected",
        last_view.tasks_completed,
        last_view.tasks_failed,
        last_view.retries,
        last_view.failovers,
        last_view.stale_rejected
    );
    probe.phase.store(PH_AFTER, Relaxed);
    let cpu_run = cpu_use(cpu_s0, clocks.now());
    let assigned = stats.assigned.load(Relaxed);
    let first_ns = stats.first_assign_ns.load(Relaxed);
    let last_ns = stats.last_assign_ns.load(Relaxed);
    let assign_span_s = (last_ns.saturating_sub(first_ns)) as f64 * 1e-9;
    let first_assign_ms = first_ns.saturating_sub(submit_ns) as f64 * 1e-6;
    let rate = assigned as f64 / completed_s.max(1e-9);
    let rate_span = assigned as f64 / assign_span_s.max(1e-9);
    let since_submit = |ns: u64| (ns > 0).then(|| ns.saturating_sub(submit_ns) as f64 * 1e-9);
    let fleet_full_s = since_submit(stats.burst_ns.load(Relaxed));
    let last_assign_s = since_submit(last_ns);
    let last_result_s = since_submit(stats.last_ack_ns.load(Relaxed));
    // The best second of the timeline (one line a second).
    let (mut peak, mut peak_results) = (0.0f64, 0.0f64);
    {
        let tl = timeline.lock().unwrap();
        for w in tl.windows(2) {
            let dt = w[1]["t_s"].as_f64().unwrap_or(0.0) - w[0]["t_s"].as_f64().unwrap_or(0.0);
            let d = |k: &str| w[1][k].as_u64().unwrap_or(0) - w[0][k].as_u64().unwrap_or(0);
            if dt > 0.5 {
                peak = peak.max(d("assigned") as f64 / dt);
                peak_results = peak_results.max(d("results_handled") as f64 / dt);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss();
    let hwm = status_bytes("VmHWM:");
    eprintln!(
        "5. session {} ({}): {assigned} assignments received, the first {:.1} ms after the submit, the fleet full ({burst}) at {}, the last at {}; the master handled the last result at {}; polls saw every task completed at {}, the session final at {:.3} s (a poll waits in the mailbox like any message)",
        last_view.state.as_str(),
        id,
        first_assign_ms,
        fmt_s(fleet_full_s),
        fmt_s(last_assign_s),
        fmt_s(last_result_s),
        fmt_s(all_done_s),
        completed_s
    );
    eprintln!(
        "   placement {:.0} assignments/s first to last ({:.0}/s over the session to final; best second {:.0} assignments/s, {:.0} results handled/s); master thread {:.0} %, sim workers {:.0} %, process {:.0} % of a core",
        rate_span, rate, peak, peak_results, cpu_run.master, cpu_run.workers, cpu_run.process
    );
    eprintln!(
        "7. RSS {:.1} MiB after the session (peak {:.1} MiB)",
        mib(rss_after),
        mib(hwm)
    );

    // -- 2b. heartbeats only again, after the session (the probe on)
    let hb0 = stats.heartbeats.load(Relaxed);
    let c0 = clocks.now();
    tokio::time::sleep(Duration::from_secs(f.idle_s)).await;
    let after_use = cpu_use(c0, clocks.now());
    let beats = stats.heartbeats.load(Relaxed) - hb0;
    let after_us_per_hb = after_use.master / 100.0 * after_use.wall_s * 1e6 / beats.max(1) as f64;
    eprintln!(
        "2. after the session, {:.0} heartbeats/s: master thread {:.2} % of a core ({:.2} µs per heartbeat), process {:.2} %",
        beats as f64 / after_use.wall_s,
        after_use.master,
        after_us_per_hb,
        after_use.process
    );
    let after_window = json!({
        "phase": "after", "probe": true, "heartbeats": beats,
        "heartbeats_per_s": beats as f64 / after_use.wall_s,
        "cpu": after_use.json(), "master_us_per_heartbeat": after_us_per_hb,
    });

    // -- 3. who was declared unhealthy
    let metrics_text = match f.metrics_port {
        Some(port) => ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok()),
        None => None,
    };
    // Every failover, worker failure and slow message (20 ms or more) by
    // reason or kind, as the exporter has them.
    let by_reason: BTreeMap<String, f64> = metrics_text
        .as_deref()
        .unwrap_or("")
        .lines()
        .filter(|l| {
            [
                "orch_failovers_total{",
                "orch_tasks_lost_total{",
                "orch_worker_failures_total{",
                "orch_master_slow_messages_total{",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let v = v.parse::<f64>().ok()?;
            (v > 0.0).then(|| (k.to_string(), v))
        })
        .collect();
    for (k, v) in &by_reason {
        eprintln!("   {k} {v}");
    }
    let end_status = status(master).await?;
    note_unhealthy(&end_status);
    let ws = match ask(master, AdminRequest::Workers, Duration::from_secs(600)).await? {
        AdminReply::Workers(ws) => ws,
        other => bail!("unexpected answer to Workers: {other:?}"),
    };
    let not_healthy = ws
        .iter()
        .filter(|w| w.state != MemberState::Healthy)
        .count();
    let reregistered = ws.iter().filter(|w| w.registrations > 1).count();
    let m = |name: &str, labels: &str| metrics_text.as_deref().map(|t| metric(t, name, labels));
    let hb_timeouts = m("orch_worker_failures_total", "reason=\"heartbeat_timeout\"");
    let node_downs = m("orch_worker_failures_total", "reason=\"node_down\"");
    let stalls = m("orch_master_stalls_total", "");
    let reregister = stats.reregister.load(Relaxed);
    eprintln!(
        "3. workers not healthy at the end {not_healthy}, registered more than once {reregistered}, most unhealthy seen at once {} (recent failures {}); heartbeat_timeout {}, node_down {}, master stalls {}; Reregister received {reregister}, Refused {}, Drop {}",
        worst_unhealthy.0,
        worst_unhealthy.1,
        hb_timeouts.map_or("-".into(), |v| v.to_string()),
        node_downs.map_or("-".into(), |v| v.to_string()),
        stalls.map_or("-".into(), |v| v.to_string()),
        stats.refused.load(Relaxed),
        stats.drops.load(Relaxed),
    );

    // -- 6. the mailbox probe
    let samples = probe.samples.lock().unwrap().clone();
    let mut per_phase = Vec::new();
    for (i, name) in PHASES.iter().enumerate() {
        let mut v: Vec<u64> = samples
            .iter()
            .filter(|s| s.0 as usize == i)
            .map(|s| s.2)
            .collect();
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        let (p50, p99, max) = (
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            *v.last().unwrap(),
        );
        let over = v.iter().filter(|&&x| x > 20_000).count();
        eprintln!(
            "6. {:<10} {:>6} round trips: p50 {:>8.3} ms  p99 {:>8.3} ms  max {:>9.3} ms  over 20 ms {}",
            name,
            v.len(),
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            max as f64 / 1000.0,
            over
        );
        per_phase.push(json!({
            "phase": name, "samples": v.len(),
            "p50_ms": p50 as f64 / 1000.0, "p99_ms": p99 as f64 / 1000.0,
            "max_ms": max as f64 / 1000.0, "over_20ms": over,
        }));
    }
    let mut worst: Vec<(u8, f64, u64)> = samples.clone();
    worst.sort_by_key(|s| std::cmp::Reverse(s.2));
    worst.truncate(5);
    for (ph, at, rtt) in &worst {
        eprintln!(
            "   longest: {:.3} ms sent {:.3} s into the run, phase {}",
            *rtt as f64 / 1000.0,
            at / 1000.0,
            PHASES[*ph as usize]
        );
    }
    let quiet = &windows[1];
    let quiet_pct = quiet["cpu"]["master_thread_pct"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let run_max = samples
        .iter()
        .filter(|s| s.0 == PH_SUBMIT || s.0 == PH_RUN)
        .map(|s| s.2)
        .max()
        .unwrap_or(0) as f64
        / 1000.0;
    eprintln!(
        "targets: master CPU with {n} workers heartbeating {quiet_pct:.2} % of a core (< 25 %: {}); false heartbeat_timeout {} (0: {}); longest mailbox round trip while the session was submitted and ran {run_max:.3} ms (< 20 ms: {})",
        if quiet_pct < 25.0 { "met" } else { "MISSED" },
        hb_timeouts.map_or("-".into(), |v| v.to_string()),
        if hb_timeouts.unwrap_or(0.0) == 0.0 && worst_unhealthy.0 == 0 && reregister == 0 {
            "met"
        } else {
            "MISSED"
        },
        if run_max < 20.0 { "met" } else { "MISSED" },
    );

    Ok(json!({
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "config": {
            "workers": n, "devices_per_worker": f.devices, "devices": f.total_devices,
            "tasks": f.tasks, "heartbeat_ms": hb, "idle_s": f.idle_s,
            "worker_threads": args.worker_threads, "probe_ms": args.probe_ms,
            "aligned_heartbeats": args.aligned, "metrics_recorder": f.metrics_port.is_some(),
            "dashboard": args.dashboard,
            "finished_ledger": if args.keep_ledger { "kept (NullIo)" } else { "evicted (manifest counted as written, not serialized)" },
            "store": "none (memory)",
        },
        "registration": {
            "all_healthy_s": registered_s, "last_registered_heard_s": last_heard_s,
            "spawn_s": spawn_s, "cpu": cpu_reg.json(),
        },
        "idle": windows,
        "idle_after_session": after_window,
        "unhealthy": {
            "not_healthy_at_end": not_healthy, "registered_more_than_once": reregistered,
            "max_unhealthy_seen": worst_unhealthy.0, "max_recent_failures_seen": worst_unhealthy.1,
            "heartbeat_timeouts": hb_timeouts, "node_downs": node_downs, "master_stalls": stalls,
            "reregister_received": reregister,
            "refused_received": stats.refused.load(Relaxed),
            "drops_received": stats.drops.load(Relaxed),
            "metrics_by_reason": by_reason,
        },
        "session": {
            "id": id, "state": last_view.state.as_str(),
            "tasks_total": last_view.tasks_total, "tasks_completed": last_view.tasks_completed,
            "retries": last_view.retries, "failovers": last_view.failovers,
            "tasks_failed": last_view.tasks_failed, "stale_rejected": last_view.stale_rejected,
            "submit_ms": submit_s * 1000.0,
            "assigned_at_submit_reply": assigned_at_reply,
            "first_assignment_ms": first_assign_ms,
            "fleet_full_s": fleet_full_s, "last_assignment_s": last_assign_s,
            "last_result_handled_s": last_result_s,
            "all_tasks_completed_polled_s": all_done_s,
            "final_s": completed_s,
            "assignments": assigned, "results_sent": stats.results.load(Relaxed),
            "acks": stats.acked.load(Relaxed), "ack_messages": stats.ack_msgs.load(Relaxed),
            "assignments_per_s": rate, "assignments_per_s_first_to_last": rate_span,
            "assignments_per_s_best_1s": peak,
            "results_handled_per_s_best_1s": peak_results,
            "cpu": cpu_run.json(),
        },
        "mailbox_probe": {
            "request": "AdminRequest::Status through MasterMsg::Admin (the master's handle, mailbox order)",
            "phases": per_phase, "failed": probe.failed.load(Relaxed),
            "longest": worst.iter().map(|(ph, at, rtt)| json!({
                "phase": PHASES[*ph as usize], "sent_at_s": at / 1000.0, "ms": *rtt as f64 / 1000.0,
            })).collect::<Vec<_>>(),
        },
        "memory": {
            "rss_master_only_mib": mib(rss_master_only),
            "rss_with_workers_mib": mib(rss_workers),
            "rss_registered_mib": mib(rss_registered),
            "rss_after_idle_mib": mib(rss_idle),
            "rss_after_session_mib": mib(rss_after),
            "rss_peak_mib": mib(hwm),
            "workers_bytes_per_device": rss_workers.saturating_sub(rss_master_only) as f64 / f.total_devices.max(1) as f64,
            "master_bytes_per_device_registered": master_per_device,
            "master_bytes_per_device_after_session": rss_after.saturating_sub(rss_workers) as f64 / f.total_devices.max(1) as f64,
        },
        "polls_of_status_during_run": status_polls,
    }))
}
