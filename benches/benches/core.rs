//! criterion benches of the hot paths: the frame ledger, ID allocation, the
//! wire codec, the master's store (one group commit), and dispatch through
//! real Master/Worker/Device actors in one process (no network).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use orch_actors::executor::NullIo;
use orch_actors::ids::IdAllocator;
use orch_actors::master::{Master, MasterArgs, MasterMsg};
use orch_actors::membership::DetectorConfig;
use orch_actors::protocol::{
    AdminReply, AdminRequest, AttemptKey, DeviceInfo, ExecutorSpec, FrameRange, IdRange,
    SessionSpec, TaskOutcome, TaskResult, TaskSpec, ToMaster,
};
use orch_actors::scheduler::{SchedCommand, SchedEvent, Scheduler};
use orch_actors::wire::{decode, encode};
use orch_actors::worker::{Worker, WorkerArgs};
use ractor::Actor;

/// A completed result as a render node would send it.
fn sample_result(task: u64) -> TaskResult {
    TaskResult {
        node: "render-01".into(),
        epoch: 1_795_000_000_000,
        key: AttemptKey {
            session: "render-1a2b3c".into(),
            task,
            attempt: 1,
        },
        device: "gpu0".into(),
        started_ms: 1_795_000_000_000,
        finished_ms: 1_795_000_000_100,
        last_id_used: Some((1 << 40) + 99),
        outputs: vec![],
        outcome: TaskOutcome::Completed,
        seq: 0,
        steps: Vec::new(),
    }
}

fn spec(frames: u64, chunk: u64) -> SessionSpec {
    orch_benches::noop_session("bench", frames, chunk, 100)
}

fn devices(n: usize) -> Vec<DeviceInfo> {
    (0..n)
        .map(|i| DeviceInfo {
            id: format!("d{i}"),
            handle: String::new(),
            capabilities: BTreeMap::new(),
        })
        .collect()
}

/// Submit `tasks` single-frame tasks to a ledger over 3 nodes and complete every one.
fn run_ledger(tasks: u64) -> u64 {
    let mut s = Scheduler::new(0);
    let mut queue = Vec::new();
    for n in 0..3 {
        let cmds = s.on_event(
            SchedEvent::NodeUp {
                node: format!("n{n}"),
                epoch: 1,
                max_concurrency: 8,
                devices: devices(8),
                held: Vec::new(),
            },
            0,
        );
        queue.extend(cmds);
    }
    queue.extend(s.on_event(
        SchedEvent::Submit {
            id: "s".into(),
            spec: spec(tasks, 1),
        },
        0,
    ));
    let mut done = 0;
    while let Some(cmd) = queue.pop() {
        if let SchedCommand::Assign { node, task, .. } = cmd {
            done += 1;
            queue.extend(s.on_event(orch_benches::completed(node, task), 1));
        }
    }
    done
}

fn ledger(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("assign+complete 10k single-frame tasks", |b| {
        b.iter(|| assert_eq!(run_ledger(black_box(10_000)), 10_000))
    });
    g.finish();
}

fn ids(c: &mut Criterion) {
    let mut g = c.benchmark_group("ids");
    g.throughput(Throughput::Elements(1));
    g.bench_function("allocate", |b| {
        let mut a = IdAllocator::new(0);
        b.iter(|| black_box(a.allocate(1000)))
    });
    g.bench_function("allocate from a returned tail", |b| {
        b.iter_batched(
            || {
                let mut a = IdAllocator::new(0);
                let c = a.allocate(1000).unwrap();
                a.release(IdRange {
                    lo: c.lo + 10,
                    hi: c.hi,
                });
                a
            },
            |mut a| black_box(a.allocate(100)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn wire(c: &mut Criterion) {
    let task = TaskSpec {
        session: "render-1a2b3c".into(),
        session_name: "render".into(),
        task: 12345,
        attempt: 1,
        frames: FrameRange {
            start: 1_234_500,
            end: 1_234_600,
        },
        ids: IdRange {
            lo: 1 << 40,
            hi: (1 << 40) + 100_000,
        },
        device: "gpu0".into(),
        executor: ExecutorSpec::Noop,
        timeout_ms: 90_000,
        items: vec![],
        correlation_id: String::new(),
    };
    let result = ToMaster::Result(sample_result(12345));
    let task_bytes = encode(&task).unwrap();
    let result_bytes = encode(&result).unwrap();
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode task", |b| {
        b.iter(|| encode(black_box(&task)).unwrap())
    });
    g.bench_function("decode task", |b| {
        b.iter(|| decode::<TaskSpec>(black_box(&task_bytes)).unwrap())
    });
    g.bench_function("encode result", |b| {
        b.iter(|| encode(black_box(&result)).unwrap())
    });
    g.bench_function("decode result", |b| {
        b.iter(|| decode::<ToMaster>(black_box(&result_bytes)).unwrap())
    });
    g.finish();
}

fn dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let master = rt.block_on(async {
        let (master, _) = Actor::spawn(
            None,
            Master,
            MasterArgs {
                read_model: Default::default(),
                node: "bench".into(),
                detector: DetectorConfig {
                    heartbeat_ms: 1000,
                    missed_heartbeats: 3,
                },
                grace_wait_ms: 15_000,
                io: Arc::new(NullIo),
                store: None,
                recovered: None,
                sync_always: false,
                resume_within_ms: 10_000,
                cluster: None,
            },
        )
        .await
        .unwrap();
        Actor::spawn(
            None,
            Worker,
            WorkerArgs {
                node: "bench".into(),
                advertise: "127.0.0.1:1".into(),
                capabilities: BTreeMap::new(),
                devices: devices(8),
                max_concurrency: 8,
                data: None,
                heartbeat_ms: 1000,
                online_window: std::time::Duration::from_secs(30),
                io: Arc::new(NullIo),
                outbox: orch_actors::outbox::Outbox::open(None).unwrap(),
            },
        )
        .await
        .unwrap();
        // Wait for the local worker to register.
        loop {
            let r = master
                .call(
                    |p| MasterMsg::Admin(AdminRequest::Status, p),
                    Some(Duration::from_secs(5)),
                )
                .await
                .unwrap();
            if let ractor::rpc::CallResult::Success(AdminReply::Status(s)) = r {
                if s.workers_healthy == 1 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        master
    });
    let mut g = c.benchmark_group("dispatch");
    g.sample_size(10);
    g.throughput(Throughput::Elements(2_000));
    g.bench_function(
        "2k single-frame noop tasks through master, worker, 8 devices",
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    let ask = |req| {
                        let m = master.clone();
                        async move {
                            match m
                                .call(|p| MasterMsg::Admin(req, p), Some(Duration::from_secs(60)))
                                .await
                            {
                                Ok(ractor::rpc::CallResult::Success(r)) => r,
                                _ => panic!("master did not answer"),
                            }
                        }
                    };
                    let AdminReply::Submitted { id } =
                        ask(AdminRequest::Submit(spec(2_000, 1))).await
                    else {
                        panic!("not submitted")
                    };
                    loop {
                        if let AdminReply::Session(v) = ask(AdminRequest::Session(id.clone())).await
                        {
                            if v.state.is_final() {
                                break;
                            }
                        }
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                })
            })
        },
    );
    g.finish();
}

/// One group commit of the master's store: a batch of 10 task results, as
/// the master writes under load, with each `[store] durability` that has a store.
fn store(c: &mut Criterion) {
    use orch_actors::store::{encode_event_into, EventLog, StoreMeta};
    use orch_runtime::store::{Durability, SqliteEventLog};
    let mut batch = Vec::new();
    for task in 0..10 {
        encode_event_into(
            &mut batch,
            1_795_000_000_100,
            &SchedEvent::Result(sample_result(task)),
        );
    }
    let meta = StoreMeta {
        id_reserved: 1 << 32,
        last_epoch: 1,
    };
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(10));
    for (name, durability) in [
        ("process", Durability::Process),
        ("power", Durability::Power),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut log = SqliteEventLog::open(dir.path(), durability).expect("a new store");
        g.bench_function(format!("commit of 10 results, durability {name}"), |b| {
            b.iter(|| {
                log.append(black_box(&batch), &meta, false)
                    .expect("written")
            })
        });
    }
    g.finish();
}

/// `GET /v1/status` without HTTP: the answer the admin API takes from the
/// read model, with 100 sessions in it.
fn read_model(c: &mut Criterion) {
    use orch_actors::protocol::{ClusterStatus, SessionState, SessionView};
    use orch_actors::read_model::{Published, ReadModel};
    let rm = ReadModel::new();
    rm.publish(
        Published::Status,
        AdminReply::Status(ClusterStatus::default()),
    );
    for i in 0..100u64 {
        rm.publish_session(
            i,
            i,
            SessionView {
                collect: String::new(),
                id: format!("render-{i:04}"),
                name: format!("render-{i:04}"),
                state: SessionState::Running,
                waiting: None,
                frames_total: 1_000_000,
                frames_done: 1000 * i,
                frames_failed: 0,
                tasks_total: 1_000_000,
                tasks_completed: 1000 * i,
                tasks_running: 12,
                tasks_pending: 1_000_000 - 1000 * i,
                tasks_failed: 0,
                retries: 0,
                failovers: 0,
                stale_rejected: 0,
                elapsed_ms: 1000,
                paused: false,
                priority: 0,
                max_devices: None,
                skipped_offline: Default::default(),
            },
        );
    }
    rm.touch();
    let mut g = c.benchmark_group("read_model");
    g.bench_function("status with 100 sessions", |b| {
        b.iter(|| {
            rm.answer(black_box(&AdminRequest::Status), Duration::from_secs(3600))
                .expect("answered")
        })
    });
    g.finish();
}

criterion_group!(benches, ledger, ids, wire, store, dispatch, read_model);
criterion_main!(benches);
