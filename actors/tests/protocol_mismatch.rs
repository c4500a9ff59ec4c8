//! A protocol version mismatch is refused with a clear error on both sides.
//! One test in its own binary: process groups are process-wide.

use std::time::{Duration, Instant};

use orch_actors::master::{Master, MasterArgs, MasterMsg};
use orch_actors::membership::DetectorConfig;
use orch_actors::protocol::{worker_group, Register, ToMaster, ToWorker, PROTOCOL_VERSION};
use orch_actors::worker::{Registration, Worker, WorkerArgs, WorkerMsg};
use ractor::{pg, Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// Stands in for a worker: forwards what the master sends it.
struct WorkerProbe;

impl Actor for WorkerProbe {
    type Msg = WorkerMsg;
    type State = UnboundedSender<ToWorker>;
    type Arguments = UnboundedSender<ToWorker>;
    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }
    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let WorkerMsg::Master(m) = msg {
            let _ = tx.send(m);
        }
        Ok(())
    }
}

/// Stands in for a master of another version: refuses every registration.
struct OldMaster;

impl Actor for OldMaster {
    type Msg = MasterMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<MasterMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        _: ActorRef<MasterMsg>,
        msg: MasterMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let MasterMsg::Worker(ToMaster::Register(r)) = msg {
            for cell in pg::get_members(&worker_group(&r.node)) {
                let w: ActorRef<WorkerMsg> = cell.into();
                w.cast(WorkerMsg::Master(ToWorker::Refused {
                    reason: format!(
                        "protocol version mismatch: worker speaks `{}`, master speaks `0`",
                        r.protocol_version
                    ),
                }))?;
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_protocol_mismatch_is_refused_on_both_sides() {
    // Master side: a registration in another version gets a refusal naming both versions.
    let detector = DetectorConfig {
        heartbeat_ms: 100,
        missed_heartbeats: 3,
    };
    let (master, master_handle) = Actor::spawn(
        None,
        Master,
        MasterArgs {
            read_model: Default::default(),
            io: std::sync::Arc::new(orch_actors::executor::NullIo),
            grace_wait_ms: 1000,
            node: "m".into(),
            detector,
            store: None,
            recovered: None,
            sync_always: false,
            resume_within_ms: 5000,
            cluster: None,
        },
    )
    .await
    .unwrap();
    let (tx, mut rx) = unbounded_channel();
    let (probe, _) = Actor::spawn(None, WorkerProbe, tx).await.unwrap();
    pg::join(worker_group("w-new"), vec![probe.get_cell()]);
    master
        .cast(MasterMsg::Worker(ToMaster::Register(Register {
            protocol_version: PROTOCOL_VERSION + 1,
            node: "w-new".into(),
            advertise: "127.0.0.1:1".into(),
            capabilities: Default::default(),
            devices: vec![],
            max_concurrency: 1,
            instance: 1,
            attempt: 1,
            held: vec![],
            data: None,
        })))
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("the master answers within 5 s")
        .unwrap();
    match reply {
        ToWorker::Refused { reason } => {
            assert!(reason.contains("protocol version mismatch"), "{reason}");
            assert!(
                reason.contains(&format!("`{}`", PROTOCOL_VERSION + 1)),
                "{reason}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    master.stop(None);
    master_handle.await.unwrap();

    // Worker side: a refused worker stops registering and says why.
    let (old, _) = Actor::spawn(None, OldMaster, ()).await.unwrap();
    orch_actors::masters::join(
        &orch_actors::masters::Claim {
            since_ms: 1,
            node: "old-master".into(),
        },
        old.get_cell(),
    );
    let (worker, _) = Actor::spawn(
        None,
        Worker,
        WorkerArgs {
            io: std::sync::Arc::new(orch_actors::executor::NullIo),
            node: "w-old".into(),
            advertise: "127.0.0.1:2".into(),
            capabilities: Default::default(),
            devices: vec![],
            max_concurrency: 1,
            data: None,
            heartbeat_ms: 50,
            online_window: Duration::from_secs(30),
            outbox: orch_actors::outbox::Outbox::open(None).unwrap(),
        },
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = ractor::call!(worker, WorkerMsg::Registration).unwrap();
        if let Registration::Refused { reason } = r {
            assert!(reason.contains("protocol version mismatch"), "{reason}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker refused within 5 s, still {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
