//! `actor-memory`: what one device actor costs in memory, and where it goes.
//!
//! In one process and one run, spawns N (default 10,000) of each of:
//!  1. a plain tokio task parked on an unbounded mpsc receiver (baseline);
//!  2. a minimal ractor actor (`()` state, does nothing), `Actor::spawn`;
//!  3. the same, `spawn_linked` under one supervisor;
//!  4. orch's Device actor, spawned linked under a worker-shaped actor, with
//!     the arguments the Worker gives it;
//!  5. the same Device with its handler's future boxed (a one-line change);
//!  6. orch's real Worker with N devices (the worker side of a node);
//!
//! and, for comparison, the data of the alternatives: N devices as plain
//! structs with an empty FIFO queue each (with the capabilities cloned, as
//! now, and shared), N `DeviceInfo`s alone, and a
//! `HashMap<ActorId, ActorCell>` of N entries (the shape of ractor's PID
//! registry and of a supervisor's child map).
//!
//! Every unit stays alive until the end, so each row's memory is fresh. Two
//! measures per row: live heap bytes from a counting `#[global_allocator]`
//! (requested sizes, and `malloc_usable_size`, which includes glibc's
//! rounding) and VmRSS from /proc/self/status. Then it records the
//! allocations that survive one spawn of each actor kind (size, alignment) and
//! labels those it can match to a channel, a oneshot or a task.
//!
//! Prints a table, then JSON (also written to `--json FILE`).
#![allow(unsafe_code)] // the counting global allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use orch_actors::device::{Device, DeviceActorState, DeviceArgs, DeviceMsg};
use orch_actors::executor::{NodeIo, NullIo};
use orch_actors::outbox::Outbox;
use orch_actors::protocol::{CapValue, Capabilities, DeviceInfo, DeviceState};
use orch_actors::worker::{Worker, WorkerArgs, WorkerMsg};
use ractor::message::BoxedMessage;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, ActorStatus};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

// ---------------------------------------------------------------------------
// Counting allocator, with a log of the allocations made in a window.

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_USABLE: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

const LOG_CAP: usize = 16_384;

struct Rec {
    ptr: AtomicUsize,
    size: AtomicUsize,
    usable: AtomicUsize,
    align: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const REC0: Rec = Rec {
    ptr: AtomicUsize::new(0),
    size: AtomicUsize::new(0),
    usable: AtomicUsize::new(0),
    align: AtomicUsize::new(0),
};
static LOG: [Rec; LOG_CAP] = [REC0; LOG_CAP];
static LOG_LEN: AtomicUsize = AtomicUsize::new(0);
static RECORDING: AtomicBool = AtomicBool::new(false);

fn usable(p: *mut u8) -> usize {
    // SAFETY: `p` is a live pointer from the system allocator (malloc,
    // posix_memalign or realloc), which is what malloc_usable_size takes.
    unsafe { libc::malloc_usable_size(p.cast()) }
}

fn on_alloc(p: *mut u8, l: Layout) {
    let u = usable(p);
    LIVE_BYTES.fetch_add(l.size() as isize, Ordering::Relaxed);
    LIVE_USABLE.fetch_add(u as isize, Ordering::Relaxed);
    LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
    if RECORDING.load(Ordering::Acquire) {
        let i = LOG_LEN.fetch_add(1, Ordering::AcqRel);
        if i < LOG_CAP {
            LOG[i].size.store(l.size(), Ordering::Relaxed);
            LOG[i].usable.store(u, Ordering::Relaxed);
            LOG[i].align.store(l.align(), Ordering::Relaxed);
            LOG[i].ptr.store(p as usize, Ordering::Release);
        }
    }
}

fn on_free(p: *mut u8, l: Layout) {
    let u = usable(p);
    LIVE_BYTES.fetch_sub(l.size() as isize, Ordering::Relaxed);
    LIVE_USABLE.fetch_sub(u as isize, Ordering::Relaxed);
    LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
    if RECORDING.load(Ordering::Acquire) {
        let n = LOG_LEN.load(Ordering::Acquire).min(LOG_CAP);
        for r in &LOG[..n] {
            if r.ptr
                .compare_exchange(p as usize, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged; the bookkeeping
// only reads the pointers it is given and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            on_alloc(p, l);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            on_alloc(p, l);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        on_free(p, l);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new_size: usize) -> *mut u8 {
        on_free(p, l);
        let q = System.realloc(p, l, new_size);
        if q.is_null() {
            on_alloc(p, l);
        } else {
            on_alloc(q, Layout::from_size_align_unchecked(new_size, l.align()));
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One allocation that outlived a recording window.
#[derive(Debug, Clone, Copy)]
struct Alloc {
    size: usize,
    usable: usize,
    align: usize,
}

fn start_recording() {
    let n = LOG_LEN.load(Ordering::Acquire).min(LOG_CAP);
    for r in &LOG[..n] {
        r.ptr.store(0, Ordering::Relaxed);
    }
    LOG_LEN.store(0, Ordering::Release);
    RECORDING.store(true, Ordering::Release);
}

/// Stop recording; the allocations made since `start_recording` still live.
fn stop_recording() -> Vec<Alloc> {
    RECORDING.store(false, Ordering::Release);
    let n = LOG_LEN.load(Ordering::Acquire);
    if n > LOG_CAP {
        eprintln!("allocation log overflowed ({n} > {LOG_CAP}); the attribution is partial");
    }
    let mut out: Vec<Alloc> = Vec::with_capacity(64);
    for r in &LOG[..n.min(LOG_CAP)] {
        if r.ptr.load(Ordering::Acquire) != 0 {
            out.push(Alloc {
                size: r.size.load(Ordering::Relaxed),
                usable: r.usable.load(Ordering::Relaxed),
                align: r.align.load(Ordering::Relaxed),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Snapshots.

#[derive(Debug, Clone, Copy)]
struct Snap {
    bytes: isize,
    usable: isize,
    allocs: isize,
    rss: u64,
}

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

async fn snap() -> Snap {
    // Let the runtime's workers go idle (tasks parked, channels drained).
    tokio::time::sleep(Duration::from_millis(300)).await;
    Snap {
        bytes: LIVE_BYTES.load(Ordering::Relaxed),
        usable: LIVE_USABLE.load(Ordering::Relaxed),
        allocs: LIVE_ALLOCS.load(Ordering::Relaxed),
        rss: rss(),
    }
}

struct Row {
    name: &'static str,
    n: usize,
    before: Snap,
    after: Snap,
}

impl Row {
    fn per(&self, a: isize, b: isize) -> f64 {
        (b - a) as f64 / self.n as f64
    }
    fn heap(&self) -> f64 {
        self.per(self.before.bytes, self.after.bytes)
    }
    fn usable(&self) -> f64 {
        self.per(self.before.usable, self.after.usable)
    }
    fn allocs(&self) -> f64 {
        self.per(self.before.allocs, self.after.allocs)
    }
    fn rss(&self) -> f64 {
        (self.after.rss as f64 - self.before.rss as f64) / self.n as f64
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "n": self.n,
            "heap_bytes_per_unit": self.heap(),
            "heap_usable_bytes_per_unit": self.usable(),
            "allocations_per_unit": self.allocs(),
            "rss_bytes_per_unit": self.rss(),
            "rss_before": self.before.rss,
            "rss_after": self.after.rss,
        })
    }
}

// ---------------------------------------------------------------------------
// Actors.

/// A ractor actor with `()` state that does nothing.
struct Idle;

enum IdleMsg {
    #[allow(dead_code)]
    Ping,
}
impl ractor::Message for IdleMsg {}

impl Actor for Idle {
    type Msg = IdleMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Stands in for the Worker as the devices' supervisor and event sink.
struct FakeWorker;

impl Actor for FakeWorker {
    type Msg = WorkerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// orch's Device with one change: its handler's future is boxed, so the
/// actor's processing-loop future holds a pointer to it instead of the whole
/// state machine (allocated only while a message is handled).
struct BoxedDevice;

impl Actor for BoxedDevice {
    type Msg = DeviceMsg;
    type State = DeviceActorState;
    type Arguments = DeviceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: DeviceArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Device.pre_start(myself, args).await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        Box::pin(Device.handle(myself, msg, state)).await
    }
}

/// The private `MuxedMessage` ractor puts in an actor's message channel has
/// this shape (`enum { Drain, Message(BoxedMessage) }`).
#[allow(dead_code)]
enum MuxedReplica {
    Drain,
    Message(BoxedMessage),
}

/// A device as the Worker configures one from `[[device]] count = N
/// id_prefix = "big-dev-" capabilities = { gpu = false }` (the scale bench).
fn device_info(i: usize) -> DeviceInfo {
    let id = format!("big-dev-{i}");
    DeviceInfo {
        handle: id.clone(),
        id,
        capabilities: BTreeMap::from([("gpu".to_string(), CapValue::Bool(false))]),
    }
}

const NODE: &str = "big";

fn device_args(
    i: usize,
    worker: &ActorRef<WorkerMsg>,
    slots: &Arc<Semaphore>,
    io: &Arc<dyn NodeIo>,
) -> DeviceArgs {
    DeviceArgs {
        info: device_info(i),
        node: NODE.to_string(),
        worker: worker.clone(),
        slots: slots.clone(),
        io: io.clone(),
        offline: Default::default(),
    }
}

async fn wait_running<M: ractor::Message>(refs: &[ActorRef<M>]) -> Result<()> {
    for _ in 0..2_000 {
        if refs.iter().all(|r| r.get_status() == ActorStatus::Running) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("actors did not reach Running in 20 s")
}

/// The same with the (identical) capabilities shared instead of cloned.
#[allow(dead_code)]
struct SharedSlot {
    id: String,
    handle: String,
    capabilities: Arc<Capabilities>,
    state: DeviceState,
    tasks_run: u64,
    queue: VecDeque<DeviceMsg>,
}

/// A device as a plain struct inside one actor: what the alternative keeps.
#[allow(dead_code)]
struct DeviceSlot {
    info: DeviceInfo,
    state: DeviceState,
    tasks_run: u64,
    queue: VecDeque<DeviceMsg>,
}

// ---------------------------------------------------------------------------

/// Measure ractor's per-actor memory against a tokio task and an Erlang process.
#[derive(Parser, Debug)]
struct Args {
    /// Units of each kind.
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    /// Also write the JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let n = args.n.max(1);
    let mut rows: Vec<Row> = Vec::new();

    // Everything shared is made before the first snapshot.
    let io: Arc<dyn NodeIo> = Arc::new(NullIo);
    let slots = Arc::new(Semaphore::new(100));
    let (supervisor, _sh) = Actor::spawn(None, Idle, ())
        .await
        .context("spawn supervisor")?;
    let (fake_worker, _fh) = Actor::spawn(None, FakeWorker, ())
        .await
        .context("spawn worker stand-in")?;
    let mut tasks: Vec<(mpsc::UnboundedSender<u64>, tokio::task::JoinHandle<()>)> =
        Vec::with_capacity(n);
    let mut idle: Vec<ActorRef<IdleMsg>> = Vec::with_capacity(n);
    let mut linked: Vec<ActorRef<IdleMsg>> = Vec::with_capacity(n);
    let mut devices: Vec<ActorRef<DeviceMsg>> = Vec::with_capacity(n);
    let mut boxed_devices: Vec<ActorRef<DeviceMsg>> = Vec::with_capacity(n);
    let mut handles: Vec<tokio::task::JoinHandle<()>> = Vec::with_capacity(4 * n + 8);

    // 1. tokio task parked on an unbounded mpsc receiver.
    let before = snap().await;
    for _ in 0..n {
        let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
        let h = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        tasks.push((tx, h));
    }
    let after = snap().await;
    rows.push(Row {
        name: "tokio task + unbounded mpsc<u64> (baseline)",
        n,
        before,
        after,
    });

    // 2. minimal ractor actor.
    let before = snap().await;
    for _ in 0..n {
        let (r, h) = Actor::spawn(None, Idle, ()).await?;
        idle.push(r);
        handles.push(h);
    }
    wait_running(&idle).await?;
    let after = snap().await;
    rows.push(Row {
        name: "ractor actor, () state, Actor::spawn",
        n,
        before,
        after,
    });

    // 3. the same, linked under one supervisor.
    let before = snap().await;
    for _ in 0..n {
        let (r, h) = Actor::spawn_linked(None, Idle, (), supervisor.get_cell()).await?;
        linked.push(r);
        handles.push(h);
    }
    wait_running(&linked).await?;
    let after = snap().await;
    rows.push(Row {
        name: "ractor actor, () state, spawn_linked under 1 supervisor",
        n,
        before,
        after,
    });

    // 4. orch's Device actor, spawned as the Worker does.
    let before = snap().await;
    for i in 0..n {
        let a = device_args(i, &fake_worker, &slots, &io);
        let (r, h) = Actor::spawn_linked(None, Device, a, fake_worker.get_cell()).await?;
        devices.push(r);
        handles.push(h);
    }
    wait_running(&devices).await?;
    let after = snap().await;
    rows.push(Row {
        name: "orch Device actor, spawn_linked under a worker-shaped actor",
        n,
        before,
        after,
    });

    // 5. the same with the handler's future boxed.
    let before = snap().await;
    for i in 0..n {
        let a = device_args(i, &fake_worker, &slots, &io);
        let (r, h) = Actor::spawn_linked(None, BoxedDevice, a, fake_worker.get_cell()).await?;
        boxed_devices.push(r);
        handles.push(h);
    }
    wait_running(&boxed_devices).await?;
    let after = snap().await;
    rows.push(Row {
        name: "same, with Device::handle's future boxed (BoxedDevice variant)",
        n,
        before,
        after,
    });

    // 6. the real Worker with N devices (no master).
    let before = snap().await;
    let wargs = WorkerArgs {
        node: NODE.to_string(),
        advertise: "127.0.0.1:1".to_string(),
        capabilities: BTreeMap::from([("gpu".to_string(), CapValue::Bool(false))]),
        devices: (0..n).map(device_info).collect(),
        max_concurrency: 100,
        data: None,
        heartbeat_ms: 1000,
        online_window: std::time::Duration::from_secs(30),
        io: io.clone(),
        outbox: Outbox::open(None).map_err(anyhow::Error::msg)?,
    };
    let (worker, wh) = Actor::spawn(None, Worker, wargs)
        .await
        .context("spawn Worker")?;
    handles.push(wh);
    let wdevs = ractor::call_t!(worker, WorkerMsg::Devices, 10_000)
        .map_err(|e| anyhow::anyhow!("ask the Worker for its devices: {e}"))?;
    wait_running(&wdevs).await?;
    drop(wdevs);
    let after = snap().await;
    rows.push(Row {
        name: "orch Worker with N devices (worker side of a node, no master)",
        n,
        before,
        after,
    });

    // Data only, no actor: what the alternatives and the tables keep.
    let before = snap().await;
    let infos: Vec<DeviceInfo> = (0..n).map(device_info).collect();
    let after = snap().await;
    rows.push(Row {
        name: "data: DeviceInfo alone (id, handle, capabilities {gpu=false})",
        n,
        before,
        after,
    });

    let before = snap().await;
    let slots_vec: Vec<DeviceSlot> = (0..n)
        .map(|i| DeviceSlot {
            info: device_info(i),
            state: DeviceState::Idle,
            tasks_run: 0,
            queue: VecDeque::new(),
        })
        .collect();
    let after = snap().await;
    rows.push(Row {
        name: "data: device as a plain struct (DeviceInfo + state + empty VecDeque<DeviceMsg>) in a Vec",
        n,
        before,
        after,
    });

    let before = snap().await;
    let shared_caps: Arc<Capabilities> =
        Arc::new(BTreeMap::from([("gpu".to_string(), CapValue::Bool(false))]));
    let shared_vec: Vec<SharedSlot> = (0..n)
        .map(|i| {
            let id = format!("big-dev-{i}");
            SharedSlot {
                handle: id.clone(),
                id,
                capabilities: shared_caps.clone(),
                state: DeviceState::Idle,
                tasks_run: 0,
                queue: VecDeque::new(),
            }
        })
        .collect();
    let after = snap().await;
    rows.push(Row {
        name: "data: the same plain struct with the capabilities shared (Arc) instead of cloned",
        n,
        before,
        after,
    });

    let before = snap().await;
    let cells: HashMap<ActorId, ActorCell> =
        idle.iter().map(|r| (r.get_id(), r.get_cell())).collect();
    let after = snap().await;
    rows.push(Row {
        name: "data: HashMap<ActorId, ActorCell>, N entries (PID registry / child map shape)",
        n,
        before,
        after,
    });

    // Sizes of what sits in ractor's channels (a tokio unbounded mpsc block
    // holds 32 slots of the message type, after a 32-byte header).
    let block = |slot: usize| 32 + 32 * slot;
    let sizes = vec![
        (
            "ractor::message::BoxedMessage",
            std::mem::size_of::<BoxedMessage>(),
        ),
        (
            "MuxedMessage (ractor-private; replica enum { Drain, Message(BoxedMessage) })",
            std::mem::size_of::<MuxedReplica>(),
        ),
        (
            "Option<ractor::message::SerializedMessage> (in BoxedMessage, cluster feature)",
            std::mem::size_of::<Option<ractor::message::SerializedMessage>>(),
        ),
        (
            "ractor::SupervisionEvent",
            std::mem::size_of::<ractor::SupervisionEvent>(),
        ),
        ("ractor::Signal", std::mem::size_of::<ractor::Signal>()),
        (
            "ractor::actor::messages::StopMessage",
            std::mem::size_of::<ractor::actor::messages::StopMessage>(),
        ),
        (
            "orch_actors::device::DeviceMsg",
            std::mem::size_of::<DeviceMsg>(),
        ),
        (
            "orch_actors::worker::WorkerMsg",
            std::mem::size_of::<WorkerMsg>(),
        ),
        ("ractor::ActorId", std::mem::size_of::<ActorId>()),
        (
            "orch_actors::device::DeviceArgs",
            std::mem::size_of::<DeviceArgs>(),
        ),
        (
            "orch_actors::device::DeviceActorState",
            std::mem::size_of::<DeviceActorState>(),
        ),
        (
            "orch_actors::protocol::DeviceInfo",
            std::mem::size_of::<DeviceInfo>(),
        ),
    ];

    // Future sizes of the handlers, which sit inside each actor's boxed loop future.
    let probe = &devices[0];
    let mut dstate = Device
        .pre_start(probe.clone(), device_args(0, &fake_worker, &slots, &io))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let device_handle_future = {
        let f = Device.handle(probe.clone(), DeviceMsg::Restart, &mut dstate);
        std::mem::size_of_val(&f)
    };
    drop(dstate);
    let mut unit = ();
    let idle_handle_future = {
        let f = Idle.handle(idle[0].clone(), IdleMsg::Ping, &mut unit);
        std::mem::size_of_val(&f)
    };

    // Allocations of single components, recorded in isolation.
    let chan_supervision = {
        start_recording();
        let c = mpsc::unbounded_channel::<ractor::SupervisionEvent>();
        let a = stop_recording();
        drop(c);
        a
    };
    let chan_muxed = {
        start_recording();
        let c = mpsc::unbounded_channel::<MuxedReplica>();
        let a = stop_recording();
        drop(c);
        a
    };
    let chan_boxed = {
        start_recording();
        let c = mpsc::unbounded_channel::<Box<MuxedReplica>>();
        let a = stop_recording();
        drop(c);
        a
    };
    let oneshot_signal = {
        start_recording();
        let c = oneshot::channel::<ractor::Signal>();
        let a = stop_recording();
        drop(c);
        a
    };
    let oneshot_stop = {
        start_recording();
        let c = oneshot::channel::<ractor::actor::messages::StopMessage>();
        let a = stop_recording();
        drop(c);
        a
    };
    let sup_block = block(std::mem::size_of::<ractor::SupervisionEvent>());
    let msg_block = block(std::mem::size_of::<MuxedReplica>());
    let chan_arc = chan_supervision
        .iter()
        .find(|a| a.size != sup_block)
        .map(|a| (a.size, a.align));
    let label = |a: &Alloc| -> String {
        if a.size == sup_block && a.align == 8 {
            "mpsc block: 32 x SupervisionEvent + header".into()
        } else if a.size == msg_block && a.align == 8 {
            "mpsc block: 32 x MuxedMessage + header".into()
        } else if a.size == block(8) && a.align == 8 {
            "mpsc block: 32 x 8-byte slots + header".into()
        } else if Some((a.size, a.align)) == chan_arc {
            "mpsc Chan (Arc, 128-aligned)".into()
        } else if oneshot_signal
            .iter()
            .chain(oneshot_stop.iter())
            .any(|o| o.size == a.size && o.align == a.align)
        {
            "oneshot Inner (Signal or StopMessage)".into()
        } else if a.align == 128 {
            "tokio task cell (header + future + trailer, 128-aligned)".into()
        } else {
            String::new()
        }
    };

    // One more spawn of each kind, recorded.
    start_recording();
    let (one_idle, h) = Actor::spawn(None, Idle, ()).await?;
    wait_running(std::slice::from_ref(&one_idle)).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec_idle = stop_recording();
    handles.push(h);

    start_recording();
    let (one_linked, h) = Actor::spawn_linked(None, Idle, (), supervisor.get_cell()).await?;
    wait_running(std::slice::from_ref(&one_linked)).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec_linked = stop_recording();
    handles.push(h);

    start_recording();
    let a = device_args(n, &fake_worker, &slots, &io);
    let (one_dev, h) = Actor::spawn_linked(None, Device, a, fake_worker.get_cell()).await?;
    wait_running(std::slice::from_ref(&one_dev)).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec_device = stop_recording();
    handles.push(h);

    start_recording();
    let a = device_args(n, &fake_worker, &slots, &io);
    let (one_bdev, h) = Actor::spawn_linked(None, BoxedDevice, a, fake_worker.get_cell()).await?;
    wait_running(std::slice::from_ref(&one_bdev)).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec_bdevice = stop_recording();
    handles.push(h);

    start_recording();
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let h = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rec_task = stop_recording();
    tasks.push((tx, h));

    // ----- print
    println!("actor-memory: N = {n} of each, one process, every unit alive to the end");
    println!();
    println!(
        "| unit | heap B/unit (requested) | heap B/unit (malloc usable) | allocations/unit | RSS B/unit |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.0} |",
            r.name,
            r.heap(),
            r.usable(),
            r.allocs(),
            r.rss()
        );
    }
    println!();
    println!("| type | size_of (bytes) | tokio mpsc block of 32 (bytes) |");
    println!("|---|---:|---:|");
    for (name, s) in &sizes {
        println!("| {name} | {s} | {} |", block(*s));
    }
    println!("| future of Device::handle | {device_handle_future} | |");
    println!("| future of a () actor's default handle | {idle_handle_future} | |");
    println!();
    let show = |title: &str, v: &[Alloc]| {
        let total: usize = v.iter().map(|a| a.size).sum();
        let total_u: usize = v.iter().map(|a| a.usable).sum();
        println!(
            "{title}: {} allocations, {total} B requested, {total_u} B usable",
            v.len()
        );
        let mut v = v.to_vec();
        v.sort_by_key(|a| std::cmp::Reverse(a.size));
        for a in &v {
            println!(
                "  {:>6} B (usable {:>6}, align {:>3})  {}",
                a.size,
                a.usable,
                a.align,
                label(a)
            );
        }
    };
    show(
        "isolated unbounded_channel::<SupervisionEvent>()",
        &chan_supervision,
    );
    show(
        "isolated unbounded_channel::<MuxedMessage replica>()",
        &chan_muxed,
    );
    show(
        "isolated unbounded_channel::<Box<MuxedMessage replica>>() (8-byte slots)",
        &chan_boxed,
    );
    show("isolated oneshot::channel::<Signal>()", &oneshot_signal);
    show("isolated oneshot::channel::<StopMessage>()", &oneshot_stop);
    println!();
    show(
        "one more tokio task + unbounded mpsc<u64>, live allocations",
        &rec_task,
    );
    show(
        "one more () actor, Actor::spawn, live allocations",
        &rec_idle,
    );
    show(
        "one more () actor, spawn_linked, live allocations",
        &rec_linked,
    );
    show(
        "one more Device actor, spawn_linked, live allocations",
        &rec_device,
    );
    show(
        "one more BoxedDevice actor, spawn_linked, live allocations",
        &rec_bdevice,
    );

    let allocs_json = |v: &[Alloc]| -> Value {
        v.iter()
            .map(|a| json!({"size": a.size, "usable": a.usable, "align": a.align, "label": label(a)}))
            .collect()
    };
    let out = json!({
        "n": n,
        "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        "sizes": sizes.iter().map(|(k, v)| json!({"type": k, "size": v, "mpsc_block_bytes": block(*v)})).collect::<Vec<_>>(),
        "future_sizes": {
            "device_handle": device_handle_future,
            "idle_handle": idle_handle_future,
        },
        "isolated": {
            "unbounded_channel_supervision_event": allocs_json(&chan_supervision),
            "unbounded_channel_muxed_message": allocs_json(&chan_muxed),
            "unbounded_channel_boxed_muxed_message": allocs_json(&chan_boxed),
            "oneshot_signal": allocs_json(&oneshot_signal),
            "oneshot_stop": allocs_json(&oneshot_stop),
        },
        "one_spawn_live_allocations": {
            "tokio_task_mpsc": allocs_json(&rec_task),
            "actor_spawn": allocs_json(&rec_idle),
            "actor_spawn_linked": allocs_json(&rec_linked),
            "device_spawn_linked": allocs_json(&rec_device),
            "boxed_device_spawn_linked": allocs_json(&rec_bdevice),
        },
    });
    println!();
    println!("{}", serde_json::to_string_pretty(&out)?);
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("write {}", p.display()))?;
    }

    // Keep everything alive until here.
    drop((infos, slots_vec, shared_vec, cells));
    drop((tasks, idle, linked, devices, boxed_devices));
    drop((one_idle, one_linked, one_dev, one_bdev));
    drop((worker, supervisor, fake_worker, handles));
    Ok(())
}
