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

/// Messages of [`Device`].
pub enum DeviceMsg {
    /// Run a task (after the ones queued before it) unless `cancel` fired.
    Run(Box<TaskSpec>, CancellationToken),
    /// Quarantine an attempt's outputs except `keep` (runs after the attempt stopped).
    Quarantine(AttemptKey, Vec<String>),
    /// Start afresh (after its attempts were dropped).
    Restart,
    /// A discovery source lists it with another handle or capabilities.
    Info(DeviceInfo),
}

impl ractor::Message for DeviceMsg {}

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
    /// Why its worker finds it offline (`None`: online). An attempt that
    /// comes to start while it is offline does not run: it is reported
    /// [`TaskOutcome::SkippedOffline`].
    pub offline: Offline,
}

/// Shared between a device and its worker: why the device is offline.
pub type Offline = Arc<std::sync::Mutex<Liveness>>;

/// Whether a device is offline, and since when it was unresponsive.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Why it is offline now (`None`: online); its worker keeps it current.
    pub offline: Option<String>,
    /// It gave no sign of life in a step: offline until then, and why. The
    /// device sets it itself, before it takes its next task, so that no
    /// attempt queued behind the hung one runs on it.
    pub unresponsive: Option<(Instant, String)>,
    /// How long an unresponsive device stays offline (`online_window_s`).
    pub cooldown: Duration,
}

impl Liveness {
    /// Why it is offline now, if it is.
    pub fn why(&self) -> Option<String> {
        match &self.unresponsive {
            Some((until, why)) if *until > Instant::now() => Some(why.clone()),
            _ => self.offline.clone(),
        }
    }
}

/// State of [`Device`].
pub struct DeviceActorState {
    args: DeviceArgs,
    state: DeviceState,
    tasks_run: u64,
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
            DeviceMsg::Info(info) => state.args.info = info,
            DeviceMsg::Restart => {
                state.state = DeviceState::Idle;
                state.tasks_run = 0;
                info!(node_id = %state.args.node, device_id = %state.args.info.id, "device restarted");
            }
        }
        Ok(())
    }
}

impl DeviceActorState {
    fn send(&self, ev: DeviceEvent) {
        let _ = self.args.worker.cast(WorkerMsg::Device(Box::new(ev)));
    }

    async fn run(&mut self, task: TaskSpec, cancel: CancellationToken) {
        let key = task.key();
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
        let started_ms = unix_ms();
        let offline = self
            .args
            .offline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .why();
        if let Some(why) = offline {
            info!(node_id = %self.args.node, device_id = %self.args.info.id, session = %key.session, task = key.task, attempt = key.attempt, reason = %why, "device offline: the attempt goes elsewhere");
            self.send(DeviceEvent::Finished {
                key,
                device: self.args.info.id.clone(),
                started_ms,
                finished_ms: started_ms,
                last_id_used: None,
                outputs: Vec::new(),
                outcome: TaskOutcome::SkippedOffline {
                    error: format!("device offline: {why}"),
                },
                steps: Vec::new(),
            });
            return;
        }
        self.state = DeviceState::Busy;
        let correlation_id = task.correlation_id.clone();
        tracing::debug!(node_id = %self.args.node, device_id = %self.args.info.id, session = %key.session, task = key.task, attempt = key.attempt, %correlation_id, "task started");
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
                ..ExecError::default()
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
                warn!(node_id = %self.args.node, device_id = %self.args.info.id, session = %key.session, task = key.task, attempt = key.attempt, %correlation_id, error = %e.message, "task failed");
                let done = e.report.frames_done;
                let outcome = if e.unresponsive {
                    let mut l = self.args.offline.lock().unwrap_or_else(|p| p.into_inner());
                    l.unresponsive = Some((Instant::now() + l.cooldown, e.message.clone()));
                    drop(l);
                    TaskOutcome::Unresponsive {
                        frames_done: done,
                        error: e.message,
                    }
                } else if e.turn_away {
                    TaskOutcome::TurnedAway {
                        frames_done: done,
                        error: e.message,
                    }
                } else {
                    TaskOutcome::Failed {
                        frames_done: done,
                        error: e.message,
                    }
                };
                (e.report, outcome)
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
            steps: report.steps,
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
                        ..ExecError::default()
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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::NullIo;
    use crate::protocol::{ExecutorSpec, OutputFile};
    use tokio::sync::mpsc;

    /// The longest a test waits for what it expects before it fails.
    const WAIT: Duration = Duration::from_secs(5);

    /// A [`DeviceEvent::Finished`] without its times.
    #[derive(Debug, PartialEq)]
    struct Done {
        key: AttemptKey,
        device: String,
        last_id_used: Option<u64>,
        outputs: Vec<OutputFile>,
        outcome: TaskOutcome,
    }

    /// A finished attempt with its unix-ms start and end.
    struct Timed {
        done: Done,
        started_ms: u64,
        finished_ms: u64,
    }

    fn sleep(ms_per_frame: u64) -> ExecutorSpec {
        ExecutorSpec::Sleep { ms_per_frame }
    }

    use crate::test_support::task_spec as task;

    fn completed(t: &TaskSpec) -> Done {
        Done {
            key: t.key(),
            device: t.device.clone(),
            last_id_used: None,
            outputs: vec![],
            outcome: TaskOutcome::Completed,
        }
    }

    /// Stands in for the worker: what a Device actor tells it.
    async fn probe() -> (ActorRef<WorkerMsg>, mpsc::UnboundedReceiver<DeviceEvent>) {
        crate::test_support::probe(|m| match m {
            WorkerMsg::Device(ev) => Some(*ev),
            _ => None,
        })
        .await
    }

    fn args(id: &str, worker: &ActorRef<WorkerMsg>, slots: &Arc<Semaphore>) -> DeviceArgs {
        DeviceArgs {
            info: DeviceInfo {
                id: id.into(),
                handle: format!("test:{id}"),
                capabilities: Default::default(),
            },
            node: "n1".into(),
            worker: worker.clone(),
            slots: slots.clone(),
            io: Arc::new(NullIo),
            offline: Default::default(),
        }
    }

    async fn device(
        id: &str,
        worker: &ActorRef<WorkerMsg>,
        slots: &Arc<Semaphore>,
    ) -> ActorRef<DeviceMsg> {
        let (dev, _) = Actor::spawn(None, Device, args(id, worker, slots))
            .await
            .expect("device");
        dev
    }

    /// A device's own state, to drive directly (its counters are private),
    /// with a running actor's reference for the calls that take one.
    async fn state_of(
        worker: &ActorRef<WorkerMsg>,
        slots: &Arc<Semaphore>,
    ) -> (ActorRef<DeviceMsg>, DeviceActorState) {
        let me = device("d0", worker, slots).await;
        let st = Device
            .pre_start(me.clone(), args("d0", worker, slots))
            .await
            .expect("pre_start");
        (me, st)
    }

    fn run(dev: &ActorRef<DeviceMsg>, t: &TaskSpec) -> CancellationToken {
        let token = CancellationToken::new();
        dev.cast(DeviceMsg::Run(Box::new(t.clone()), token.clone()))
            .expect("the device is alive");
        token
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<DeviceEvent>, what: &str) -> DeviceEvent {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no event within {WAIT:?}: waited for {what}"))
            .expect("the probe is alive")
    }

    /// The next result, skipping progress reports; all within [`WAIT`].
    async fn finished(rx: &mut mpsc::UnboundedReceiver<DeviceEvent>, what: &str) -> Timed {
        let result = async {
            while let Some(ev) = rx.recv().await {
                if let DeviceEvent::Finished {
                    key,
                    device,
                    started_ms,
                    finished_ms,
                    last_id_used,
                    outputs,
                    outcome,
                    ..
                } = ev
                {
                    return Timed {
                        done: Done {
                            key,
                            device,
                            last_id_used,
                            outputs,
                            outcome,
                        },
                        started_ms,
                        finished_ms,
                    };
                }
            }
            panic!("the probe stopped: waited for {what}")
        };
        tokio::time::timeout(WAIT, result)
            .await
            .unwrap_or_else(|_| panic!("no result within {WAIT:?}: waited for {what}"))
    }

    #[tokio::test]
    async fn a_task_runs_and_its_result_reaches_the_worker_under_its_attempt_key() {
        let (worker, mut rx) = probe().await;
        let dev = device("d0", &worker, &Arc::new(Semaphore::new(1))).await;
        let mut t = task("dev-run", 3, "d0", 5, ExecutorSpec::Noop);
        t.attempt = 2;
        run(&dev, &t);
        // The first thing the worker hears is the result: noop reports no progress.
        match next(&mut rx, "the noop task's result").await {
            DeviceEvent::Finished {
                key,
                device,
                started_ms,
                finished_ms,
                last_id_used,
                outputs,
                outcome,
                ..
            } => {
                assert_eq!(
                    Done {
                        key,
                        device,
                        last_id_used,
                        outputs,
                        outcome
                    },
                    completed(&t)
                );
                assert!(
                    started_ms > 0 && started_ms <= finished_ms,
                    "{started_ms} .. {finished_ms}"
                );
            }
            other => panic!("expected the result, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_task_past_its_timeout_fails_with_the_frames_it_finished() {
        let (worker, mut rx) = probe().await;
        let dev = device("d0", &worker, &Arc::new(Semaphore::new(1))).await;
        // Frames end at 1 s, 2 s, …; the timeout falls half-way between the
        // first two (wide margins: a loaded machine delays timers).
        let mut t = task("dev-timeout", 1, "d0", 10, sleep(1000));
        t.timeout_ms = 1500;
        run(&dev, &t);
        match next(&mut rx, "the progress after the first frame").await {
            DeviceEvent::Progress {
                key: k,
                frames_done,
                last_id_used,
                outputs,
            } => {
                assert_eq!(k, t.key());
                assert_eq!((frames_done, last_id_used, outputs), (1, None, vec![]));
            }
            other => panic!("expected progress, got {other:?}"),
        }
        let r = finished(&mut rx, "the timed-out task's result").await;
        assert_eq!(
            r.done.outcome,
            TaskOutcome::Failed {
                frames_done: 1,
                error: "timed out after 1500 ms".into(),
            }
        );
        assert_eq!(r.done.key, t.key());
    }

    #[tokio::test]
    async fn tasks_queued_on_one_device_run_one_after_the_other() {
        let (worker, mut rx) = probe().await;
        // Slots to spare: only the device's own queue keeps them apart.
        let dev = device("d0", &worker, &Arc::new(Semaphore::new(4))).await;
        let first = task("dev-fifo", 1, "d0", 3, sleep(40));
        let second = task("dev-fifo", 2, "d0", 3, sleep(40));
        run(&dev, &first);
        run(&dev, &second);
        let a = finished(&mut rx, "the first task's result").await;
        let b = finished(&mut rx, "the second task's result").await;
        assert_eq!(a.done, completed(&first));
        assert_eq!(b.done, completed(&second));
        assert!(
            b.started_ms >= a.finished_ms,
            "the second started at {} before the first ended at {}",
            b.started_ms,
            a.finished_ms
        );
    }

    #[tokio::test]
    async fn devices_of_a_node_with_one_slot_never_run_at_once() {
        let (worker, mut rx) = probe().await;
        let slots = Arc::new(Semaphore::new(1));
        let d0 = device("d0", &worker, &slots).await;
        let d1 = device("d1", &worker, &slots).await;
        let a = task("dev-slots", 1, "d0", 3, sleep(40));
        let b = task("dev-slots", 2, "d1", 3, sleep(40));
        run(&d0, &a);
        run(&d1, &b);
        let x = finished(&mut rx, "the first result").await;
        let y = finished(&mut rx, "the second result").await;
        let mut both = [x.done.key.task, y.done.key.task];
        both.sort();
        assert_eq!(both, [1, 2], "both tasks complete");
        assert_eq!(x.done.outcome, TaskOutcome::Completed);
        assert_eq!(y.done.outcome, TaskOutcome::Completed);
        assert!(
            y.started_ms >= x.finished_ms,
            "task {} started at {} while task {} held the only slot until {}",
            y.done.key.task,
            y.started_ms,
            x.done.key.task,
            x.finished_ms
        );
    }

    #[tokio::test]
    async fn a_cancelled_attempt_stops_and_reports_nothing() {
        let (worker, mut rx) = probe().await;
        let dev = device("d0", &worker, &Arc::new(Semaphore::new(1))).await;
        // 100 s of work unless it stops.
        let stale = task("dev-cancel", 1, "d0", 1000, sleep(100));
        let next_one = task("dev-cancel", 2, "d0", 1, ExecutorSpec::Noop);
        let token = run(&dev, &stale);
        match next(&mut rx, "progress of the long task").await {
            DeviceEvent::Progress { key: k, .. } => assert_eq!(k, stale.key()),
            other => panic!("expected progress, got {other:?}"),
        }
        token.cancel();
        run(&dev, &next_one);
        // The device's events keep their order: a result of the cancelled
        // attempt would come before the next task's.
        let r = finished(
            &mut rx,
            "the next task's result, once the cancelled one stopped",
        )
        .await;
        assert_eq!(r.done, completed(&next_one));
    }

    #[tokio::test]
    async fn a_task_cancelled_while_it_waits_for_a_slot_never_runs() {
        let (worker, mut rx) = probe().await;
        // No slot free: the task waits for one.
        let slots = Arc::new(Semaphore::new(0));
        let (_, mut st) = state_of(&worker, &slots).await;
        let waiting = task("dev-wait", 1, "d0", 1, ExecutorSpec::Noop);
        let token = CancellationToken::new();
        let cancel = async {
            tokio::task::yield_now().await;
            token.cancel();
        };
        tokio::time::timeout(WAIT, async {
            tokio::join!(st.run(waiting.clone(), token.clone()), cancel)
        })
        .await
        .expect("a cancelled task stops waiting for a slot");
        assert_eq!(st.tasks_run, 0, "it never ran");
        assert_eq!(st.state, DeviceState::Idle);
        // A slot frees: the next task is the first the worker hears of.
        slots.add_permits(1);
        let after = task("dev-wait", 2, "d0", 1, ExecutorSpec::Noop);
        st.run(after.clone(), CancellationToken::new()).await;
        assert_eq!(st.tasks_run, 1);
        let r = finished(&mut rx, "the task after the cancelled one").await;
        assert_eq!(r.done, completed(&after));
    }

    #[tokio::test]
    async fn a_restart_leaves_the_device_idle_with_nothing_counted() {
        let (worker, mut rx) = probe().await;
        let slots = Arc::new(Semaphore::new(1));
        let (me, mut st) = state_of(&worker, &slots).await;
        for n in 1..=2 {
            st.run(
                task("dev-restart", n, "d0", 1, ExecutorSpec::Noop),
                CancellationToken::new(),
            )
            .await;
        }
        assert_eq!((st.tasks_run, st.state), (2, DeviceState::Idle));
        // Whatever it was doing, it comes back idle.
        st.state = DeviceState::Busy;
        Device
            .handle(me, DeviceMsg::Restart, &mut st)
            .await
            .expect("restart");
        assert_eq!((st.tasks_run, st.state), (0, DeviceState::Idle));
        // And it takes work again.
        let after = task("dev-restart", 3, "d0", 1, ExecutorSpec::Noop);
        st.run(after.clone(), CancellationToken::new()).await;
        assert_eq!(st.tasks_run, 1);
        for n in 1..=2 {
            let r = finished(&mut rx, "a result from before the restart").await;
            assert_eq!(r.done.key.task, n);
        }
        let r = finished(&mut rx, "the result after the restart").await;
        assert_eq!(r.done, completed(&after));
    }
}
