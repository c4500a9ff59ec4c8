//! A Device actor: one single-tenant executor slot on a worker (docs/design/architecture.md). Its
//! mailbox is the device's FIFO queue: it runs one task at a time, in order,
//! each after taking one of the node's `max_concurrency` slots. Only its Worker
//! talks to it; it is never remotable.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::executor::{ExecError, ExecJob, ExecReport, NodeIo};
use crate::protocol::{out_dir, AttemptKey, DeviceInfo, DeviceState, TaskOutcome, TaskSpec};
use crate::worker::{DeviceEvent, WorkerMsg};

/// Least time between two progress reports of one task.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// How long an executor has to stop once its task is cancelled or timed
/// out; then the device stops waiting for it and takes its next task.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// A device slot.
pub struct Device;

/// Arguments of [`Device`].
pub struct DeviceArgs {
    pub info: DeviceInfo,
    pub node: String,
    pub worker: ActorRef<WorkerMsg>,
    /// The node's `max_concurrency` slots.
    pub slots: Arc<Semaphore>,
    pub io: Arc<dyn NodeIo>,
}

/// State of [`Device`].
pub struct DeviceActorState {
    args: DeviceArgs,
    state: DeviceState,
    tasks_run: u64,
}

/// Messages of [`Device`].
pub enum DeviceMsg {
    /// Run a task (after the ones queued before it) unless `cancel` fired.
    Run(Box<TaskSpec>, CancellationToken),
    /// Quarantine an attempt's outputs except `keep` (runs after the attempt stopped).
    Quarantine(AttemptKey, Vec<String>),
    /// Start afresh (after its attempts were dropped).
    Restart,
}

impl ractor::Message for DeviceMsg {}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DeviceActorState {
    fn send(&self, ev: DeviceEvent) {
        let _ = self.args.worker.cast(WorkerMsg::Device(Box::new(ev)));
    }

    async fn run(&mut self, task: TaskSpec, cancel: CancellationToken) {
        let key = AttemptKey {
            session: task.session.clone(),
            task: task.task,
            attempt: task.attempt,
        };
        if cancel.is_cancelled() {
            return;
        }
        // One of the node's slots; FIFO-fair, so no device starves.
        let _permit = tokio::select! {
            p = self.args.slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = cancel.cancelled() => return,
        };
        self.state = DeviceState::Busy;
        let started_ms = unix_ms();
        let rel = out_dir(&key, &self.args.node, &self.args.info.id);
        // Builtin executors write nothing: no folder for them.
        let prepared = if task.executor.writes_files() {
            self.args.io.prepare_out_dir(&rel)
        } else {
            Ok(std::path::PathBuf::from(&rel))
        };
        let outcome = match prepared {
            Ok(dir) => {
                let job = ExecJob {
                    task: task.clone(),
                    node: self.args.node.clone(),
                    handle: self.args.info.handle.clone(),
                    out_dir: dir,
                };
                self.execute(job, &key, cancel.clone()).await
            }
            Err(e) => Err(ExecError {
                message: e,
                report: ExecReport::default(),
            }),
        };
        self.state = DeviceState::Idle;
        self.tasks_run += 1;
        if cancel.is_cancelled() {
            // Stale or cancelled: the master no longer wants this result.
            return;
        }
        let (report, outcome) = match outcome {
            Ok(r) => (r, TaskOutcome::Completed),
            Err(e) => {
                warn!(node_id = %self.args.node, device_id = %self.args.info.id, session = %key.session, task = key.task, attempt = key.attempt, error = %e.message, "task failed");
                let done = e.report.frames_done;
                (
                    e.report,
                    TaskOutcome::Failed {
                        frames_done: done,
                        error: e.message,
                    },
                )
            }
        };
        self.send(DeviceEvent::Finished {
            key,
            device: self.args.info.id.clone(),
            started_ms,
            finished_ms: unix_ms(),
            last_id_used: report.last_id_used,
            outputs: report.outputs,
            outcome,
        });
    }

    /// Run the executor with the task's timeout, forwarding throttled progress.
    async fn execute(
        &self,
        job: ExecJob,
        key: &AttemptKey,
        cancel: CancellationToken,
    ) -> Result<ExecReport, ExecError> {
        let timeout = Duration::from_millis(job.task.timeout_ms.max(1));
        let exec = self.args.io.executor(&job.task.executor);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let run_cancel = cancel.child_token();
        let mut fut = exec.run(job, tx, run_cancel.clone());
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        // Armed once the executor is told to stop: it must within STOP_GRACE.
        let stop_by = tokio::time::sleep(timeout + STOP_GRACE);
        tokio::pin!(stop_by);
        let mut stopping = false;
        let mut pending = ExecReport::default();
        let mut last_sent = Instant::now() - PROGRESS_EVERY;
        let mut timed_out = false;
        let result = loop {
            tokio::select! {
                r = &mut fut => break r,
                _ = run_cancel.cancelled(), if !stopping => {
                    stopping = true;
                    stop_by.as_mut().reset(tokio::time::Instant::now() + STOP_GRACE);
                }
                _ = &mut stop_by, if stopping => {
                    warn!(node_id = %self.args.node, device_id = %self.args.info.id, session = %key.session, task = key.task, attempt = key.attempt, "the executor did not stop within {STOP_GRACE:?}; the device no longer waits for it");
                    break Err(ExecError {
                        message: format!("did not stop within {} ms of being told to", STOP_GRACE.as_millis()),
                        report: ExecReport::default(),
                    });
                }
                Some(p) = rx.recv() => {
                    pending.frames_done = pending.frames_done.max(p.frames_done);
                    pending.last_id_used = p.last_id_used.or(pending.last_id_used);
                    pending.outputs.extend(p.outputs);
                    if last_sent.elapsed() >= PROGRESS_EVERY {
                        self.progress(key, &mut pending);
                        last_sent = Instant::now();
                    }
                }
                _ = &mut deadline, if !timed_out => {
                    timed_out = true;
                    run_cancel.cancel();
                }
            }
        };
        // Outputs reported but not yet forwarded travel with the result.
        while let Ok(p) = rx.try_recv() {
            pending.frames_done = pending.frames_done.max(p.frames_done);
            pending.last_id_used = p.last_id_used.or(pending.last_id_used);
            pending.outputs.extend(p.outputs);
        }
        let merge = |mut r: ExecReport, pending: ExecReport| {
            r.frames_done = r.frames_done.max(pending.frames_done);
            r.last_id_used = r.last_id_used.or(pending.last_id_used);
            let mut outputs = pending.outputs;
            outputs.extend(r.outputs);
            r.outputs = outputs;
            r
        };
        match result {
            Ok(r) => Ok(merge(r, pending)),
            Err(mut e) => {
                if timed_out {
                    e.message = format!("timed out after {} ms", timeout.as_millis());
                }
                e.report = merge(e.report, pending);
                Err(e)
            }
        }
    }

    fn progress(&self, key: &AttemptKey, pending: &mut ExecReport) {
        self.send(DeviceEvent::Progress {
            key: key.clone(),
            frames_done: pending.frames_done,
            last_id_used: pending.last_id_used,
            outputs: std::mem::take(&mut pending.outputs),
        });
    }
}

impl Actor for Device {
    type Msg = DeviceMsg;
    type State = DeviceActorState;
    type Arguments = DeviceArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: DeviceArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(DeviceActorState {
            args,
            state: DeviceState::Idle,
            tasks_run: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // Boxed: the running task's future lives on the heap only while
            // it runs, instead of inside every idle device's actor loop
            // (3 KB per device; docs/benchmarks/history.md, "Memory per device actor").
            DeviceMsg::Run(task, cancel) => Box::pin(state.run(*task, cancel)).await,
            DeviceMsg::Quarantine(key, keep) => {
                let rel = out_dir(&key, &state.args.node, &state.args.info.id);
                match state.args.io.quarantine(&rel, &keep) {
                    Ok(0) => {}
                    Ok(n) => {
                        info!(node_id = %state.args.node, device_id = %state.args.info.id, session = %key.session, task = key.task, attempt = key.attempt, files = n, "partial outputs quarantined")
                    }
                    Err(e) => {
                        warn!(node_id = %state.args.node, device_id = %state.args.info.id, error = %e, "quarantine failed")
                    }
                }
            }
            DeviceMsg::Restart => {
                state.state = DeviceState::Idle;
                state.tasks_run = 0;
                info!(node_id = %state.args.node, device_id = %state.args.info.id, "device restarted");
            }
        }
        Ok(())
    }
}
