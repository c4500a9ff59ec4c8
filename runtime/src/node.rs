//! NodeSupervisor, the root of one orch-node's actor tree (docs/design/architecture.md), and
//! [`run_node`], which opens the node's ports and runs it until shutdown
//! ([`run_node_with`] also runs the executors a program registers).
//!
//! ```text
//! NodeSupervisor
//! ├── ClusterLink      cluster port, peer dialer
//! ├── Master           (role master)
//! └── Worker           (role worker)
//!     └── Device ×M
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use orch_actors::executor::NodeIo;

use orch_actors::master::{Master, MasterArgs, MasterMsg};
use orch_actors::membership::DetectorConfig;
use orch_actors::worker::{Worker, WorkerArgs, WorkerMsg};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use crate::cluster_link::{ClusterLink, ClusterLinkArgs, ClusterLinkMsg};
use crate::config::Config;
use crate::node_io::{Executors, FsIo};
use crate::procs::TaskGroups;
use crate::store::{Durability, SqliteEventLog, SqliteOutbox, StoreError};
use orch_actors::journal::{recover, Recovered};
use orch_actors::outbox::Outbox;
use orch_actors::read_model::ReadModel;
use orch_actors::store::EventLog;

/// How long a leaving worker waits for the master to record the leave.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a node with role `master` waits for its peers' first dial
/// before it decides whether another master already serves.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// A node with role `master` found another master serving its cluster.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecondMaster(pub String);

/// The root actor of a node.
pub struct NodeSupervisor;

/// What the master asks of this node's cluster link.
struct LinkControl(ActorRef<ClusterLinkMsg>);

impl orch_actors::master::ClusterControl for LinkControl {
    fn disconnect(&self, node: &str) {
        let _ = self.0.cast(ClusterLinkMsg::Disconnect(node.to_string()));
    }
}

/// State of [`NodeSupervisor`].
pub struct NodeState {
    node: String,
    /// Why an actor of the node failed, for `run_node` to report.
    fatal: Arc<std::sync::Mutex<Option<String>>>,
    link: ActorRef<ClusterLinkMsg>,
    master: Option<ActorRef<MasterMsg>>,
    worker: Option<ActorRef<WorkerMsg>>,
    stopping: bool,
}

/// Messages of [`NodeSupervisor`].
pub enum NodeMsg {
    /// Leave the cluster cleanly (the worker unregisters) and stop.
    Shutdown(RpcReplyPort<()>),
}

impl ractor::Message for NodeMsg {}

/// Arguments of [`NodeSupervisor`]: the configuration and the opened stores.
pub struct NodeArgs {
    pub cfg: Config,
    /// The process groups of this node's `command` tasks.
    pub groups: Arc<TaskGroups>,
    /// Where the node records why an actor of it failed.
    pub fatal: Arc<std::sync::Mutex<Option<String>>>,
    pub store: Option<Box<dyn EventLog>>,
    pub recovered: Option<Recovered>,
    pub outbox: Option<Outbox>,
    /// What the master publishes for this node's admin API.
    pub read_model: Arc<ReadModel>,
    /// The executors the program registered (`kind = "rust:<name>"`).
    pub executors: Executors,
    /// Where peers reach this node's data plane.
    pub data: Option<String>,
    /// The cluster port, bound before the admin port opens (a node whose
    /// admin port answers accepts cluster connections); bound by the
    /// cluster link itself when absent.
    pub cluster_listener: Option<std::net::TcpListener>,
}

/// Open the node's stores under `data_dir` and replay the master's ledger.
/// A store that is not ours, of another version, or damaged is an error.
pub fn open_stores(cfg: &Config, groups: Arc<TaskGroups>) -> Result<NodeArgs, StoreError> {
    let dir = &cfg.node.data_dir;
    let durability = cfg.store.durability;
    let durable = durability != Durability::Memory;
    let (mut store, mut recovered) = (None, None);
    if cfg.node.master && durable {
        let mut log = SqliteEventLog::open(dir, durability)?;
        let path = log.path().to_path_buf();
        let started = std::time::Instant::now();
        let r = recover(&mut log, cfg.cluster.grace_wait_ms).map_err(|what| StoreError {
            path: path.clone(),
            what: format!("it is damaged: {what}"),
        })?;
        if r.events > 0 {
            info!(node_id = %cfg.node.name, store = %path.display(), events = r.events, ms = started.elapsed().as_millis() as u64, "master store opened, ledger replayed");
        }
        // Whole and replayed: only now is it opened for writing.
        log.writable()?;
        store = Some(Box::new(log) as Box<dyn EventLog>);
        recovered = Some(r);
    }
    let outbox = if cfg.node.worker {
        let log = if durable {
            Some(Box::new(SqliteOutbox::open(dir, durability)?)
                as Box<dyn orch_actors::store::OutboxLog>)
        } else {
            None
        };
        Some(Outbox::open(log).map_err(|what| StoreError {
            path: dir.join("outbox.db"),
            what: format!("it is damaged: {what}"),
        })?)
    } else {
        None
    };
    Ok(NodeArgs {
        cfg: cfg.clone(),
        groups,
        fatal: Default::default(),
        store,
        recovered,
        outbox,
        read_model: Arc::new(ReadModel::new()),
        executors: Executors::new(),
        data: None,
        cluster_listener: None,
    })
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NodeArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let NodeArgs {
            cfg,
            groups,
            fatal,
            store,
            recovered,
            outbox,
            read_model,
            executors,
            data,
            cluster_listener,
        } = args;
        let node = cfg.node.name.clone();
        let io: Arc<dyn NodeIo> = Arc::new(
            FsIo::new(cfg.node.data_dir.clone(), groups)
                .with_grace(cfg.cluster.grace_wait_ms)
                .with_log_max(cfg.worker.log_max_bytes)
                .with_executors(&executors),
        );
        let (link, _) = Actor::spawn_linked(
            None,
            ClusterLink,
            ClusterLinkArgs {
                node: node.clone(),
                listen: cfg.node.listen,
                listener: cluster_listener,
                secret: cfg.cluster.secret.expose().to_string(),
                peers: cfg.cluster.peers.clone(),
                liveness: crate::cluster_link::Liveness::from_heartbeat(
                    cfg.cluster.heartbeat_ms,
                    cfg.cluster.missed_heartbeats,
                ),
                limits: crate::cluster_port::Limits::default(),
                tls: cfg.cluster.tls.clone(),
            },
            myself.get_cell(),
        )
        .await
        .map_err(|e| format!("{e}"))?;
        if cfg.node.master && !cfg.cluster.peers.is_empty() {
            // Exactly one master: first see what the peers say.
            let _ = ractor::call_t!(
                link,
                ClusterLinkMsg::WhenSettled,
                SETTLE_TIMEOUT.as_millis() as u64
            );
            if let Some((other, _)) = orch_actors::masters::current() {
                let msg = orch_actors::master::second_master(&node, &other);
                error!(node_id = %node, other = %other.node, "{msg}");
                link.stop(Some("second master".into()));
                return Err(Box::new(SecondMaster(msg)));
            }
        }
        let master = if cfg.node.master {
            let args = MasterArgs {
                node: node.clone(),
                detector: DetectorConfig {
                    heartbeat_ms: cfg.cluster.heartbeat_ms,
                    missed_heartbeats: cfg.cluster.missed_heartbeats,
                },
                grace_wait_ms: cfg.cluster.grace_wait_ms,
                io: io.clone(),
                store,
                recovered,
                sync_always: cfg.store.durability == Durability::Power,
                cluster: Some(Arc::new(LinkControl(link.clone()))),
                read_model: read_model.clone(),
                // Long enough for every worker to notice the new master and dial it.
                resume_within_ms: cfg.cluster.heartbeat_ms
                    * u64::from(cfg.cluster.missed_heartbeats)
                    * 2
                    + 6000,
            };
            Some(
                Actor::spawn_linked(None, Master, args, myself.get_cell())
                    .await?
                    .0,
            )
        } else {
            None
        };
        let worker = if cfg.node.worker {
            let args = WorkerArgs {
                node: node.clone(),
                advertise: cfg.node.advertise.clone(),
                capabilities: cfg.worker.capabilities.clone(),
                devices: cfg.devices.clone(),
                max_concurrency: cfg.worker.max_concurrency,
                data,
                heartbeat_ms: cfg.cluster.heartbeat_ms,
                online_window: std::time::Duration::from_secs(cfg.cluster.online_window_s),
                io,
                outbox: match outbox {
                    Some(o) => o,
                    None => Outbox::open(None)?,
                },
            };
            let worker = Actor::spawn_linked(None, Worker, args, myself.get_cell())
                .await?
                .0;
            tokio::spawn(crate::node_checks::run(
                cfg.worker.checks.clone(),
                worker.clone(),
            ));
            tokio::spawn(crate::device_sources::run(
                cfg.worker.sources.clone(),
                worker.clone(),
            ));
            Some(worker)
        } else {
            None
        };
        info!(node_id = %node, master = master.is_some(), worker = worker.is_some(), "node started");
        Ok(NodeState {
            node,
            fatal,
            link,
            master,
            worker,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Shutdown(reply) => {
                state.stopping = true;
                if let Some(worker) = &state.worker {
                    match worker.call(WorkerMsg::Leave, Some(LEAVE_TIMEOUT)).await {
                        Ok(ractor::rpc::CallResult::Success(true)) => {
                            info!(node_id = %state.node, "unregistered from the master")
                        }
                        Ok(ractor::rpc::CallResult::Success(false)) => {
                            info!(node_id = %state.node, "not registered; leaving")
                        }
                        _ => {
                            warn!(node_id = %state.node, "the master did not confirm the leave in time")
                        }
                    }
                }
                if let Some(worker) = &state.worker {
                    worker.stop(Some("shutdown".into()));
                }
                if let Some(master) = &state.master {
                    master.stop(Some("shutdown".into()));
                }
                state.link.stop(Some("shutdown".into()));
                myself.stop(Some("shutdown".into()));
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if state.stopping {
            return Ok(());
        }
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                error!(node_id = %state.node, actor = %cell.get_id(), error = %err, "a node actor failed; stopping the node");
                state
                    .fatal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| err.to_string());
                myself.stop(Some(format!("actor failed: {err}")));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                error!(node_id = %state.node, actor = %cell.get_id(), ?reason, "a node actor stopped; stopping the node");
                myself.stop(Some(format!("actor stopped: {reason:?}")));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Run a node until `shutdown` resolves: open the metrics, cluster and admin
/// ports, start the actor tree, then leave cleanly.
pub async fn run_node(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_node_with(cfg, Executors::new(), shutdown).await
}

/// [`run_node`] for a program that embeds orch: the node also runs the
/// sessions of `kind = "rust:<name>"` for every executor in `executors`
/// (docs/sessions.md, embedding orch). Each of its devices gets the
/// capability `executor.rust:<name> = "yes"` for every `<name>`, which
/// such sessions require: their tasks go to the devices of nodes that
/// registered the executor, and wait, saying why, while there is none.
///
/// One node per process: the metrics exporter and the master's registry
/// are process-wide.
pub async fn run_node_with(
    mut cfg: Config,
    executors: Executors,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = cfg.node.name.clone();
    if !executors.is_empty() {
        if !cfg.node.worker {
            warn!(node_id = %node, executors = ?executors, "executors registered on a node without role `worker` run nothing");
        }
        executors.advertise(&mut cfg.worker.capabilities);
        for device in &mut cfg.devices {
            executors.advertise(&mut device.capabilities);
        }
        info!(node_id = %node, executors = ?executors, "registered executors");
    }
    std::fs::create_dir_all(&cfg.node.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create `node.data_dir` `{}`: {e}",
            cfg.node.data_dir.display()
        )
    })?;
    // Commands run in their output folders: every path handed out must be absolute.
    cfg.node.data_dir = std::fs::canonicalize(&cfg.node.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot resolve `node.data_dir` `{}`: {e}",
            cfg.node.data_dir.display()
        )
    })?;
    // What an earlier run left running on this data_dir dies before
    // anything runs (its outputs are quarantined once nothing writes them).
    let groups = Arc::new(TaskGroups::open(&cfg.node.data_dir, &node).await?);
    let mut args = open_stores(&cfg, groups.clone())?;
    args.executors = executors;
    let fatal = args.fatal.clone();
    crate::metrics::install_exporter(cfg.metrics.listen)?;
    if let Some(tls) = &cfg.cluster.tls {
        // Peers are who their certificates say; files move over mutual TLS.
        orch_actors::identity::enforce(tls.identity.clone());
        crate::data_plane::use_tls(tls.client.clone());
        info!(node_id = %node, master_role = tls.identity.master, "mutual TLS on the cluster link and the data plane");
    }
    args.cluster_listener =
        Some(crate::cluster_link::bind(cfg.node.listen).map_err(anyhow::Error::msg)?);
    let admin_listener = crate::admin::bind(cfg.admin.listen).await?;
    let read_model = args.read_model.clone();
    // The event log: what an earlier run kept, and the file for what follows.
    match crate::events_file::open(&cfg.node.data_dir) {
        Ok((kept, sink)) => read_model.bus().restore(kept, Some(Box::new(sink))),
        Err(e) => {
            warn!(node_id = %node, error = %e, "cannot open the event log under `events/`; events are kept in memory only")
        }
    }
    let data_listener = crate::data_plane::bind(cfg.node.data_listen).await?;
    let data_addr = crate::data_plane::advertised(&cfg.node.advertise, data_listener.local_addr()?);
    args.data = Some(data_addr.clone());
    let data_token = crate::data_plane::token(cfg.cluster.secret.expose());
    let data_plane = crate::data_plane::router(crate::data_plane::DataCtx::new(
        node.clone(),
        cfg.node.data_dir.clone(),
        data_token.clone(),
        cfg.worker.delete_collected,
    ));
    info!(node_id = %node, data = %data_addr, "data plane listening");
    let admin = crate::admin::router(
        node.clone(),
        cfg.admin.tokens.clone(),
        args.read_model.clone(),
        crate::admin::DataAccess {
            data_dir: cfg.node.data_dir.clone(),
            token: data_token.clone(),
        },
    );
    let (sup, sup_handle) = match Actor::spawn(None, NodeSupervisor, args).await {
        Ok(started) => started,
        Err(ractor::SpawnErr::StartupFailed(e)) if e.downcast_ref::<SecondMaster>().is_some() => {
            return Err(anyhow::anyhow!(SecondMaster(e.to_string())));
        }
        Err(e) => anyhow::bail!("node `{node}` failed to start: {}", root_cause(&e)),
    };
    let data_tls = cfg
        .cluster
        .tls
        .as_ref()
        .map(|t| (t.mutual.clone(), "data", node.clone()));
    let data_task = tokio::spawn(crate::tls::serve(
        data_listener,
        data_tls,
        data_plane,
        std::future::pending(),
    ));
    let (events_actor, _) =
        Actor::spawn(None, orch_actors::events::EventsActor, read_model.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the events actor: {e}"))?;
    crate::webhooks::start(&node, &cfg.node.data_dir, &cfg.webhooks, read_model.clone());
    let collector = tokio::spawn(
        crate::collect::Collector::new(
            node.clone(),
            cfg.node.data_dir.clone(),
            data_token,
            read_model.clone(),
        )
        .run(),
    );
    let (stop_admin_tx, stop_admin_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_tls = match (&cfg.cluster.tls, cfg.admin.tls) {
        (Some(t), true) => Some((t.admin.clone(), "admin", node.clone())),
        _ => None,
    };
    let admin_task = tokio::spawn(crate::tls::serve(admin_listener, admin_tls, admin, async {
        let _ = stop_admin_rx.await;
    }));

    let mut sup_handle = sup_handle;
    let outcome = tokio::select! {
        _ = shutdown => {
            info!(node_id = %node, "shutting down");
            let _ = ractor::call_t!(sup, NodeMsg::Shutdown, 10_000);
            // The worker has left: its running programs stop now, which
            // also lets their device actors finish and stop.
            let killed = groups.kill_all().await;
            if killed > 0 {
                info!(node_id = %node, groups = killed, "stopped the running tasks' process groups");
            }
            let _ = (&mut sup_handle).await;
            Ok(())
        }
        _ = &mut sup_handle => {
            let why = fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
            Err(match why {
                Some(why) => anyhow::anyhow!("node `{node}` stopped: {why}"),
                None => anyhow::anyhow!("node `{node}` stopped unexpectedly; see the log above"),
            })
        }
    };
    collector.abort();
    data_task.abort();
    events_actor.stop(None);
    let _ = stop_admin_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    // Anything still running (the node stopped on a failure) dies with it.
    groups.kill_all().await;
    outcome
}

fn root_cause(e: &ractor::SpawnErr) -> String {
    match e {
        ractor::SpawnErr::StartupFailed(inner) => inner.to_string(),
        other => other.to_string(),
    }
}
