//! The `command` executor (docs/sessions.md): runs an external program for a task.
//!
//! - `argv` and `env` values may hold `{start} {end} {frames} {id_lo} {id_hi}
//!   {device} {handle} {session} {task} {attempt} {out_dir} {items_file}`; the
//!   same values are also in `ORCH_*` environment variables.
//! - The program runs in its output folder, in a process group of its own
//!   ([`crate::procs`]). The task ends when the program exits or its deadline
//!   passes, whatever its pipes do; then the whole group is killed, and the
//!   device is free once no process of it is left.
//! - A stdout line `ORCH_PROGRESS <frames_done> [<last_id_used>]` reports the
//!   first `frames_done` frames of the task finished, with their files in
//!   place; the files that appeared in the output folder since the previous
//!   line are listed with their size and sha256. A count beyond the task's
//!   frames, or an ID outside its chunk, fails the attempt.
//! - Exit code 0 completes the task; anything else fails it with the exit code
//!   and the last line of stderr, keeping the frames reported before (and
//!   the files listed with them). Outputs must be regular files inside the
//!   output folder: a symbolic link fails the task.
//! - IDs: a failed attempt that reported a `last_id_used` gives the IDs above
//!   it back; one that reported none (or was lost) retires its whole chunk.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_actors::executor::{ExecError, ExecFuture, ExecJob, ExecReport, Executor};
use orch_actors::protocol::ExecutorSpec;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::outputs::{scan_all, Found, OutputWatch, Watched};
use crate::procs::TaskGroups;
use crate::task_log::{Stream, TaskLog};

/// Bytes of stderr kept for the error message.
const STDERR_TAIL: usize = 4096;
/// Longest stdout line read (longer ones are cut).
const MAX_LINE: usize = 64 * 1024;
/// After the program's group is gone, how long its pipes may take to
/// deliver what they still hold (a process that left the group may keep
/// them open for ever).
const PIPE_DRAIN: Duration = Duration::from_millis(500);

/// Runs `command` tasks; `work_dir` holds per-task item lists.
pub struct CommandExecutor {
    pub work_dir: PathBuf,
    /// The node's running process groups.
    pub groups: Arc<TaskGroups>,
    /// New output files, found without rescanning folders.
    pub watch: Arc<OutputWatch>,
    /// A workflow step (or device check) that writes nothing on stdout or
    /// stderr for this long shows no sign of life: its device is
    /// unresponsive (`grace_wait_ms`; 0: never judged so).
    pub grace_ms: u64,
    /// Where each attempt's log goes (`{data_dir}/logs/...`), and its cap;
    /// `None`: no logs are kept.
    pub logs: Option<LogSettings>,
}

/// Where attempts' logs go (see [`crate::task_log`]).
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub data_dir: PathBuf,
    pub max_bytes: u64,
}

impl CommandExecutor {
    /// Open the log of `job`'s attempt; `None` (with a warning) when it
    /// cannot be made: the attempt runs without one.
    pub fn open_log(&self, job: &ExecJob) -> Option<Arc<TaskLog>> {
        let settings = self.logs.as_ref()?;
        let rel = crate::task_log::rel_path(&job.task.session, job.task.task, job.task.attempt)?;
        match TaskLog::create(settings.data_dir.join(rel), settings.max_bytes) {
            Ok(log) => Some(log),
            Err(e) => {
                warn!(node_id = %job.node, session = %job.task.session, task = job.task.task, attempt = job.task.attempt, error = %e, "cannot open the attempt's log; it runs without one");
                None
            }
        }
    }
}

/// The end of an attempt in its log, and the log closed.
fn close_log(log: Option<Arc<TaskLog>>, ran: &Result<ExecReport, ExecError>) {
    let Some(log) = log else { return };
    match ran {
        Ok(r) => log.line(
            Stream::Orch,
            &format!("attempt completed: {} frames", r.frames_done),
        ),
        Err(e) => log.line(Stream::Orch, &format!("attempt failed: {}", e.message)),
    }
    log.finish();
}

/// Counts what a program writes: a sign of life.
type Alive = Arc<std::sync::atomic::AtomicU64>;

fn bump(alive: &Alive) {
    alive.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

fn placeholders(job: &ExecJob, items_file: &Path) -> Vec<(&'static str, String)> {
    let t = &job.task;
    vec![
        ("start", t.frames.start.to_string()),
        ("end", t.frames.end.to_string()),
        ("frames", t.frames.len().to_string()),
        ("id_lo", t.ids.lo.to_string()),
        ("id_hi", t.ids.hi.to_string()),
        ("device", t.device.clone()),
        ("handle", job.handle.clone()),
        ("session", t.session.clone()),
        ("task", t.task.to_string()),
        ("attempt", t.attempt.to_string()),
        ("out_dir", job.out_dir.display().to_string()),
        ("items_file", items_file.display().to_string()),
        ("node", job.node.clone()),
    ]
}

/// Replace every `{name}` of `vars` in `s`.
pub fn expand(s: &str, vars: &[(&'static str, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// Parse `ORCH_PROGRESS <frames_done> [<last_id_used>]`.
pub fn parse_progress(line: &str) -> Option<(u64, Option<u64>)> {
    let mut parts = line.split_whitespace();
    if parts.next()? != "ORCH_PROGRESS" {
        return None;
    }
    let done = parts.next()?.parse().ok()?;
    let last = match parts.next() {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((done, last))
}

/// Lines of a child's stdout, each cut at [`MAX_LINE`] bytes: a program that
/// never prints a newline cannot make the node allocate without bound.
struct BoundedLines<R> {
    inner: R,
    buf: Vec<u8>,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
    /// Skipping the rest of an over-long line.
    skipping: bool,
    eof: bool,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            scanned: 0,
            skipping: false,
            eof: false,
        }
    }

    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(at) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let i = self.scanned + at;
                self.scanned = 0;
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                // Dropped, not iterated: one move of what follows.
                self.buf.drain(..=i);
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                return Ok(Some(line));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.scanned = 0;
                self.skipping = true;
            }
            if self.eof {
                if self.buf.is_empty() || self.skipping {
                    return Ok(None);
                }
                let line = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
                self.scanned = 0;
                return Ok(Some(line));
            }
            let mut chunk = [0u8; 8192];
            let n = self.inner.read(&mut chunk).await?;
            if n == 0 {
                self.eof = true;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Forward the progress lines of `stdout` (others are ignored) until it
/// closes. A bounded channel: a node that falls behind slows the program's
/// writes instead of buffering without bound.
async fn read_progress(
    stdout: impl AsyncRead + Unpin,
    lines: mpsc::Sender<(u64, Option<u64>)>,
    alive: Alive,
    log: Option<Arc<TaskLog>>,
) {
    let mut reader = BoundedLines::new(stdout);
    while let Ok(Some(line)) = reader.next_line().await {
        bump(&alive);
        if let Some(log) = &log {
            log.line(Stream::Out, &line);
        }
        if let Some(p) = parse_progress(&line) {
            if lines.send(p).await.is_err() {
                return;
            }
        }
    }
}

/// Keep the last [`STDERR_TAIL`] bytes of `stderr` in `tail` until it
/// closes, and each line in the attempt's log.
async fn keep_tail(
    stderr: impl AsyncRead + Unpin,
    tail: Arc<Mutex<VecDeque<u8>>>,
    alive: Alive,
    log: Option<Arc<TaskLog>>,
) {
    let mut reader = BoundedLines::new(stderr);
    while let Ok(Some(line)) = reader.next_line().await {
        bump(&alive);
        if let Some(log) = &log {
            log.line(Stream::Err, &line);
        }
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        for &b in line.as_bytes().iter().chain(b"\n") {
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(b);
        }
    }
}

/// The last non-empty line of a stderr tail.
fn last_line(tail: &Mutex<VecDeque<u8>>) -> String {
    let bytes: Vec<u8> = tail
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .copied()
        .collect();
    String::from_utf8_lossy(&bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

impl Executor for CommandExecutor {
    fn run(
        &self,
        job: ExecJob,
        progress: UnboundedSender<ExecReport>,
        cancel: CancellationToken,
    ) -> ExecFuture {
        let work_dir = self.work_dir.clone();
        let groups = self.groups.clone();
        let watch = self.watch.clone();
        let log = self.open_log(&job);
        Box::pin(async move {
            let ran = run_command(
                job,
                work_dir,
                &groups,
                &watch,
                progress,
                cancel,
                Alive::default(),
                log.clone(),
            )
            .await;
            close_log(log, &ran);
            ran
        })
    }
}

/// Runs `workflow` tasks (docs/workflows.md): each step as the `command`
/// executor runs a program, in the attempt's output folder, one after the
/// other, each with its own timeout. A step that fails ends the attempt
/// (`on_failure = "fail"`), turns the device away (`"skip_device"`), or
/// lets the next step run (`"continue"`); the result lists every step.
pub struct WorkflowExecutor(pub Arc<CommandExecutor>);

impl Executor for WorkflowExecutor {
    fn run(
        &self,
        job: ExecJob,
        progress: UnboundedSender<ExecReport>,
        cancel: CancellationToken,
    ) -> ExecFuture {
        let c = self.0.clone();
        let log = c.open_log(&job);
        Box::pin(async move {
            let ran = run_workflow(job, &c, progress, cancel, log.clone()).await;
            close_log(log, &ran);
            ran
        })
    }
}

/// Run one workflow step (or gate command) to its end: whether it passed,
/// and its record.
async fn run_step(
    job: &ExecJob,
    c: &CommandExecutor,
    step: &orch_actors::workflow::Step,
    progress: &UnboundedSender<ExecReport>,
    cancel: &CancellationToken,
    log: Option<&Arc<TaskLog>>,
) -> (Ran, orch_actors::workflow::StepRecord, ExecReport) {
    if let Some(log) = log {
        log.line(
            Stream::Orch,
            &format!("step `{}` starts: {}", step.name, step.argv.join(" ")),
        );
    }
    let mut one = job.clone();
    one.task.executor = ExecutorSpec::Command {
        argv: step.argv.clone(),
        env: step.env.clone(),
    };
    let step_cancel = cancel.child_token();
    let started = std::time::Instant::now();
    let timer = {
        let c = step_cancel.clone();
        let ms = step.timeout_ms;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            c.cancel();
        })
    };
    // No sign of life (nothing on stdout or stderr) for `grace_ms`: the
    // device is unresponsive, and the step stops there.
    let alive = Alive::default();
    let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = (c.grace_ms > 0).then(|| {
        let (alive, silent, stop) = (alive.clone(), silent.clone(), step_cancel.clone());
        let grace = Duration::from_millis(c.grace_ms);
        let poll = (grace / 10).clamp(Duration::from_millis(10), Duration::from_millis(200));
        tokio::spawn(async move {
            let mut seen = alive.load(std::sync::atomic::Ordering::Relaxed);
            let mut since = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(poll).await;
                let now = alive.load(std::sync::atomic::Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, tokio::time::Instant::now());
                } else if since.elapsed() >= grace {
                    silent.store(true, std::sync::atomic::Ordering::Relaxed);
                    stop.cancel();
                    return;
                }
            }
        })
    });
    let ran = run_command(
        one,
        c.work_dir.clone(),
        &c.groups,
        &c.watch,
        progress.clone(),
        step_cancel.clone(),
        alive,
        log.cloned(),
    )
    .await;
    timer.abort();
    if let Some(w) = watchdog {
        w.abort();
    }
    let unresponsive = silent.load(std::sync::atomic::Ordering::Relaxed) && ran.is_err();
    let timed_out = step_cancel.is_cancelled() && !cancel.is_cancelled();
    let duration_ms = started.elapsed().as_millis() as u64;
    match ran {
        Ok(r) => (
            Ran::Passed,
            orch_actors::workflow::StepRecord {
                name: step.name.clone(),
                exit: Some(0),
                duration_ms,
                error: None,
            },
            r,
        ),
        Err(e) => (
            if unresponsive {
                Ran::Unresponsive
            } else {
                Ran::Failed
            },
            orch_actors::workflow::StepRecord {
                name: step.name.clone(),
                exit: e.exit,
                duration_ms,
                error: Some(if unresponsive {
                    format!(
                        "no sign of life (nothing on stdout or stderr) for {} ms (`grace_wait_ms`)",
                        c.grace_ms
                    )
                } else if timed_out {
                    format!("timed out after {} ms", step.timeout_ms)
                } else {
                    e.message
                }),
            },
            e.report,
        ),
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Passed,
    Failed,
    /// It showed no sign of life for `grace_ms`.
    Unresponsive,
}

/// Why a workflow attempt stopped.
struct Stopped {
    message: String,
    turn_away: bool,
    unresponsive: bool,
    exit: Option<i32>,
}

impl Stopped {
    fn new(message: String, turn_away: bool, exit: Option<i32>) -> Self {
        Self {
            message,
            turn_away,
            unresponsive: false,
            exit,
        }
    }
}

async fn run_workflow(
    job: ExecJob,
    c: &CommandExecutor,
    progress: UnboundedSender<ExecReport>,
    cancel: CancellationToken,
    log: Option<Arc<TaskLog>>,
) -> Result<ExecReport, ExecError> {
    use orch_actors::workflow::{OnFailure, Step, StepRecord};
    let mut report = ExecReport::default();
    let ExecutorSpec::Workflow(w) = &job.task.executor else {
        return Err(fail("not a workflow task".into(), &report));
    };
    let mut steps: Vec<StepRecord> = Vec::with_capacity(w.steps.len() + 4);
    let mut failure: Option<Stopped> = None;
    let as_step = |name: &str, argv: &Vec<String>, timeout_ms, on_failure| Step {
        name: name.into(),
        argv: argv.clone(),
        env: Default::default(),
        timeout_ms,
        on_failure,
    };
    // The device health gate: check, else restart once and check again;
    // still failing, the device turns the task away.
    let mut gate: Vec<Step> = Vec::new();
    if let Some(check) = &w.check {
        let first = as_step(
            "check",
            &check.argv,
            check.timeout_ms,
            OnFailure::SkipDevice,
        );
        let (ran, record, _) = run_step(&job, c, &first, &progress, &cancel, log.as_ref()).await;
        let first_error = record.error.clone().unwrap_or_default();
        steps.push(record);
        match (ran, &check.restart) {
            (Ran::Passed, _) => {}
            (Ran::Unresponsive, _) => {
                failure = Some(Stopped {
                    unresponsive: true,
                    ..Stopped::new(
                        format!("device_unresponsive: step `check`: {first_error}"),
                        false,
                        None,
                    )
                })
            }
            (Ran::Failed, Some(restart)) => {
                gate.push(as_step(
                    "restart",
                    restart,
                    check.timeout_ms,
                    OnFailure::Continue,
                ));
                gate.push(as_step(
                    "recheck",
                    &check.argv,
                    check.timeout_ms,
                    OnFailure::SkipDevice,
                ));
            }
            (Ran::Failed, None) => {
                failure = Some(Stopped::new(
                    format!("device check failed: {first_error}"),
                    true,
                    None,
                ));
            }
        }
    }
    // The device preflight, before every run: failing, it says why
    // (`failure_reason`) and the device turns the task away.
    if let Some(pre) = &w.preflight {
        gate.push(as_step(
            "preflight",
            &pre.argv,
            pre.timeout_ms,
            OnFailure::SkipDevice,
        ));
    }
    let all: Vec<&Step> = if failure.is_some() {
        Vec::new()
    } else {
        gate.iter().chain(w.steps.iter()).collect()
    };
    for step in all {
        if cancel.is_cancelled() {
            failure = Some(Stopped::new("cancelled".into(), false, None));
            break;
        }
        let (ran, record, got) = run_step(&job, c, step, &progress, &cancel, log.as_ref()).await;
        // A step that exits 0 reports all frames done as a command would:
        // only what a step reported (`ORCH_PROGRESS`) counts before the end.
        if ran != Ran::Passed {
            report.frames_done = report.frames_done.max(got.frames_done);
        }
        report.last_id_used = got.last_id_used.max(report.last_id_used);
        report.outputs.extend(got.outputs);
        let (exit, why) = (record.exit, record.error.clone().unwrap_or_default());
        steps.push(record);
        if ran == Ran::Passed {
            continue;
        }
        if cancel.is_cancelled() {
            failure = Some(Stopped::new(why, false, exit));
            break;
        }
        if ran == Ran::Unresponsive {
            // Whatever the step's `on_failure`: the device itself is stuck.
            failure = Some(Stopped {
                unresponsive: true,
                ..Stopped::new(
                    format!("device_unresponsive: step `{}`: {why}", step.name),
                    false,
                    exit,
                )
            });
            break;
        }
        match step.on_failure {
            OnFailure::Continue => {}
            OnFailure::Fail => {
                failure = Some(Stopped::new(
                    format!("step `{}`: {why}", step.name),
                    false,
                    exit,
                ));
                break;
            }
            OnFailure::SkipDevice
                if step.name == "preflight" && gate.iter().any(|g| std::ptr::eq(g, step)) =>
            {
                failure = Some(Stopped::new(format!("preflight failed: {why}"), true, exit));
                break;
            }
            OnFailure::SkipDevice => {
                failure = Some(Stopped::new(
                    format!("step `{}` turned the device away: {why}", step.name),
                    true,
                    exit,
                ));
                break;
            }
        }
    }
    report.steps = steps;
    match failure {
        None => {
            report.frames_done = job.task.frames.len();
            Ok(report)
        }
        // Frames a step reported done stay done, as for a command.
        Some(s) => Err(ExecError {
            message: s.message,
            report,
            turn_away: s.turn_away,
            unresponsive: s.unresponsive,
            exit: s.exit,
        }),
    }
}

fn fail(message: String, report: &ExecReport) -> ExecError {
    ExecError {
        message,
        report: report.clone(),
        ..ExecError::default()
    }
}

/// How the program's run ended.
enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    Cancelled,
    /// It broke the progress protocol, or wrote something it may not.
    Refused(String),
}

/// The running program's progress: what it reported, checked.
struct Tracker<'a> {
    job: &'a ExecJob,
    program: &'a str,
    watched: Watched<'a>,
    seen: HashSet<String>,
    report: ExecReport,
    progress: &'a UnboundedSender<ExecReport>,
}

impl Tracker<'_> {
    /// The files that appeared since the last look, hashed off the async threads.
    async fn new_files(&mut self) -> Found {
        let changes = self.watched.changes();
        crate::outputs::look(&self.job.out_dir, changes, &mut self.seen).await
    }

    /// One progress line: check it, list the new files, forward it. An
    /// error ends the attempt; what was valid before it stays reported.
    async fn line(&mut self, done: u64, last: Option<u64>) -> Result<(), String> {
        let (len, ids) = (self.job.task.frames.len(), self.job.task.ids);
        if done > len {
            return Err(format!(
                "`{}` reported `ORCH_PROGRESS {done}`, beyond the task's {len} frames",
                self.program
            ));
        }
        if let Some(l) = last.filter(|l| *l < ids.lo || *l >= ids.hi) {
            return Err(format!(
                "`{}` reported last ID `{l}`, outside its chunk [{}, {})",
                self.program, ids.lo, ids.hi
            ));
        }
        let found = self.new_files().await;
        self.report.frames_done = self.report.frames_done.max(done);
        if let Some(l) = last {
            self.report.last_id_used = Some(self.report.last_id_used.map_or(l, |x| x.max(l)));
        }
        let _ = self.progress.send(ExecReport {
            frames_done: self.report.frames_done,
            last_id_used: self.report.last_id_used,
            outputs: found.files,
            steps: Vec::new(),
        });
        match found.problems.into_iter().next() {
            Some(p) => Err(p),
            None => Ok(()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_command(
    job: ExecJob,
    work_dir: PathBuf,
    groups: &TaskGroups,
    watch: &OutputWatch,
    progress: UnboundedSender<ExecReport>,
    cancel: CancellationToken,
    alive: Alive,
    log: Option<Arc<TaskLog>>,
) -> Result<ExecReport, ExecError> {
    let report = ExecReport::default();
    let ExecutorSpec::Command { argv, env } = &job.task.executor else {
        return Err(fail("not a command task".into(), &report));
    };
    let items_file = work_dir.join(format!(
        "{}-{}-a{}.items",
        job.task.session, job.task.task, job.task.attempt
    ));
    if !job.task.items.is_empty() {
        let text = job.task.items.join("\n") + "\n";
        std::fs::create_dir_all(&work_dir)
            .and_then(|_| std::fs::write(&items_file, text))
            .map_err(|e| {
                fail(
                    format!("cannot write `{}`: {e}", items_file.display()),
                    &report,
                )
            })?;
    }
    let vars = placeholders(&job, &items_file);
    let argv: Vec<String> = argv.iter().map(|a| expand(a, &vars)).collect();
    let Some((program, args)) = argv.split_first() else {
        return Err(fail("empty `argv`".into(), &report));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&job.out_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::procs::prepare(&mut cmd);
    for (k, v) in &vars {
        cmd.env(format!("ORCH_{}", k.to_uppercase()), v);
    }
    if !job.task.correlation_id.is_empty() {
        cmd.env("ORCH_CORRELATION_ID", &job.task.correlation_id);
    }
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.clone(), expand(v, &vars)))
        .collect();
    cmd.envs(&env);
    // Watch before the program can write anything.
    let watched = watch.watch(&job.out_dir);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start `{program}`: {e}"), &report))?;
    let group = match child.id() {
        Some(pid) => Some(groups.started(pid, &job.task.session)),
        None => None,
    };
    let (line_tx, mut lines) = mpsc::channel(64);
    let stdout = child
        .stdout
        .take()
        .map(|o| tokio::spawn(read_progress(o, line_tx, alive.clone(), log.clone())));
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let stderr = child
        .stderr
        .take()
        .map(|e| tokio::spawn(keep_tail(e, tail.clone(), alive.clone(), log)));
    let mut t = Tracker {
        job: &job,
        program,
        watched,
        seen: HashSet::new(),
        report,
        progress: &progress,
    };
    let mut stdout_open = true;
    let ended = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break Ended::Cancelled,
            line = lines.recv(), if stdout_open => match line {
                Some((done, last)) => {
                    if let Err(why) = t.line(done, last).await {
                        break Ended::Refused(why);
                    }
                }
                None => stdout_open = false,
            },
            status = child.wait() => break Ended::Exited(status),
        }
    };
    // The main process is gone (or must go): so is every process it started.
    if let Some(group) = group {
        let pgid = group.pgid();
        if !group.end().await {
            warn!(node_id = %job.node, device_id = %job.task.device, session = %job.task.session, task = job.task.task, attempt = job.task.attempt, pgid, "processes of a task's group survived SIGKILL; the device runs its next task anyway");
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    // What the pipes still hold, written before the group died.
    let mut refused = None;
    if let Ended::Exited(_) = ended {
        let drain = tokio::time::sleep(PIPE_DRAIN);
        tokio::pin!(drain);
        while stdout_open {
            tokio::select! {
                line = lines.recv() => match line {
                    Some((done, last)) => {
                        if let Err(why) = t.line(done, last).await {
                            refused = Some(why);
                            break;
                        }
                    }
                    None => stdout_open = false,
                },
                _ = &mut drain => break,
            }
        }
        if let Some(e) = stderr.as_ref() {
            let _ = tokio::time::timeout(PIPE_DRAIN, async {
                while !e.is_finished() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
        }
    }
    for task in stdout.into_iter().chain(stderr) {
        task.abort();
    }
    let Tracker {
        mut report,
        mut seen,
        ..
    } = t;
    let status = match ended {
        Ended::Cancelled => return Err(fail("cancelled".into(), &report)),
        Ended::Refused(why) => return Err(fail(why, &report)),
        Ended::Exited(status) => status.map_err(|e| fail(e.to_string(), &report))?,
    };
    if let Some(why) = refused {
        return Err(fail(why, &report));
    }
    if !status.success() {
        // The frames it reported, with the files listed then; what it
        // wrote after its last report is quarantined.
        let how = match status.code() {
            Some(c) => format!("exited with code {c}"),
            None => "was killed by a signal".to_string(),
        };
        let last = last_line(&tail);
        let msg = if last.is_empty() {
            format!("`{program}` {how}")
        } else {
            format!("`{program}` {how}: {last}")
        };
        let mut e = fail(msg, &report);
        e.exit = status.code();
        return Err(e);
    }
    // Whatever appeared after the last progress line: one full scan.
    let dir = job.out_dir.clone();
    let found = tokio::task::spawn_blocking(move || scan_all(&dir, &mut seen))
        .await
        .map_err(|e| fail(e.to_string(), &report))?;
    report.outputs = found.files;
    match found.problems.into_iter().next() {
        Some(p) => Err(fail(p, &report)),
        None => {
            report.frames_done = job.task.frames.len();
            Ok(report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_parse() {
        assert_eq!(parse_progress("ORCH_PROGRESS 3"), Some((3, None)));
        assert_eq!(
            parse_progress("ORCH_PROGRESS 3 1007"),
            Some((3, Some(1007)))
        );
        assert_eq!(parse_progress("ORCH_PROGRESS x"), None);
        assert_eq!(parse_progress("progress 3"), None);
        assert_eq!(parse_progress("ORCH_PROGRESS 3 y"), None);
    }

    #[test]
    fn placeholders_expand() {
        let vars = vec![("start", "10".to_string()), ("out_dir", "/o".to_string())];
        assert_eq!(expand("{start}-{out_dir}/{end}", &vars), "10-/o/{end}");
    }

    use orch_actors::protocol::{FrameRange, IdRange, TaskSpec};
    use std::time::Instant;

    /// A command task of `frames` frames running `script` with `sh -c`.
    fn job(dir: &Path, frames: u64, script: &str) -> ExecJob {
        let out_dir = dir.join("out");
        std::fs::create_dir_all(&out_dir).unwrap();
        ExecJob {
            task: TaskSpec {
                session: "s-1".into(),
                session_name: "s".into(),
                task: 0,
                attempt: 1,
                frames: FrameRange {
                    start: 0,
                    end: frames,
                },
                ids: IdRange { lo: 100, hi: 200 },
                device: "d0".into(),
                executor: ExecutorSpec::Command {
                    argv: vec!["sh".into(), "-c".into(), script.into()],
                    env: BTreeMap::new(),
                },
                timeout_ms: 60_000,
                items: vec![],
                correlation_id: String::new(),
            },
            node: "n".into(),
            handle: "h".into(),
            out_dir,
        }
    }

    struct Run {
        result: Result<ExecReport, ExecError>,
        reports: Vec<ExecReport>,
        took: Duration,
    }

    /// Run `script`; cancel it after `cancel_after` if given.
    async fn run(dir: &Path, frames: u64, script: &str, cancel_after: Option<Duration>) -> Run {
        let exec = CommandExecutor {
            work_dir: dir.join("work"),
            groups: Arc::new(TaskGroups::in_dir(dir.join("procs"))),
            watch: Arc::new(OutputWatch::new()),
            grace_ms: 0,
            logs: Some(LogSettings {
                data_dir: dir.to_path_buf(),
                max_bytes: crate::task_log::DEFAULT_LOG_MAX_BYTES,
            }),
        };
        std::fs::create_dir_all(dir.join("procs")).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        if let Some(after) = cancel_after {
            let c = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                c.cancel();
            });
        }
        let started = Instant::now();
        let result = exec.run(job(dir, frames, script), tx, cancel).await;
        let took = started.elapsed();
        let mut reports = Vec::new();
        while let Ok(r) = rx.try_recv() {
            reports.push(r);
        }
        assert_eq!(exec.groups.running(), 0, "no group is left recorded");
        Run {
            result,
            reports,
            took,
        }
    }

    /// Pids written by a script to `pids` in its folder are all gone.
    fn none_alive(dir: &Path) {
        let text = std::fs::read_to_string(dir.join("out/pids")).unwrap_or_default();
        for pid in text
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let alive = crate::procs::parse_stat(
                &std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default(),
            )
            .is_some_and(|s| s.state != 'Z');
            assert!(!alive, "process {pid} of the task is still running");
        }
    }

    #[tokio::test]
    async fn a_background_child_holding_a_pipe_does_not_hold_the_task() {
        for (pipe, exit) in [("2", 0), ("1", 0), ("2", 3), ("1", 3)] {
            let dir = tempfile::tempdir().unwrap();
            // The child keeps stdout or stderr open for 30 s; the program exits at once.
            let script = format!(
                "sleep 30 >&{pipe} & echo $! >> pids; echo $$ >> pids; echo ORCH_PROGRESS 1; exit {exit}"
            );
            let r = run(dir.path(), 2, &script, None).await;
            assert!(
                r.took < Duration::from_secs(5),
                "pipe {pipe}, exit {exit}: took {:?}",
                r.took
            );
            match (exit, &r.result) {
                (0, Ok(rep)) => assert_eq!(rep.frames_done, 2),
                (3, Err(e)) => {
                    assert!(e.message.contains("exited with code 3"), "{}", e.message);
                    assert_eq!(e.report.frames_done, 1, "the reported frame stays");
                }
                (_, other) => panic!("pipe {pipe}, exit {exit}: {other:?}"),
            }
            none_alive(dir.path());
        }
    }

    #[tokio::test]
    async fn a_cancelled_task_ends_at_once_with_every_process_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let script = "sleep 30 2>&1 & echo $! >> pids; (sleep 30 & echo $! >> pids; wait) & echo $$ >> pids; wait";
        let r = run(dir.path(), 1, script, Some(Duration::from_millis(300))).await;
        assert!(r.took < Duration::from_secs(3), "took {:?}", r.took);
        assert_eq!(r.result.unwrap_err().message, "cancelled");
        none_alive(dir.path());
    }

    #[tokio::test]
    async fn progress_beyond_the_range_fails_the_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(
            dir.path(),
            4,
            "echo ORCH_PROGRESS 2; echo ORCH_PROGRESS 999999; exit 3",
            None,
        )
        .await;
        let e = r.result.unwrap_err();
        assert!(
            e.message.contains("beyond the task's 4 frames"),
            "{}",
            e.message
        );
        assert_eq!(e.report.frames_done, 2, "only the valid report counts");
        // The same claim with exit 0 fails too.
        let dir = tempfile::tempdir().unwrap();
        let r = run(dir.path(), 4, "echo ORCH_PROGRESS 5", None).await;
        assert!(r.result.unwrap_err().message.contains("beyond"));
        // An ID outside the chunk [100, 200) is refused.
        let dir = tempfile::tempdir().unwrap();
        let r = run(dir.path(), 4, "echo ORCH_PROGRESS 1 200", None).await;
        let e = r.result.unwrap_err();
        assert!(e.message.contains("outside its chunk"), "{}", e.message);
    }

    #[tokio::test]
    async fn a_symlink_fails_the_attempt_and_keeps_the_regular_files_listed() {
        for when in ["progress", "exit"] {
            let dir = tempfile::tempdir().unwrap();
            let script = match when {
                "progress" => "echo a > f0.png; echo b > f1.png; ln -s /etc/passwd x; echo ORCH_PROGRESS 2; sleep 5",
                _ => "echo a > f0.png; echo ORCH_PROGRESS 1; echo b > f1.png; ln -s /etc/passwd x",
            };
            let r = run(dir.path(), 2, script, None).await;
            let e = r.result.unwrap_err();
            assert!(
                e.message.contains("`x` is a symbolic link"),
                "{when}: {}",
                e.message
            );
            let mut listed: Vec<String> = r
                .reports
                .iter()
                .flat_map(|p| p.outputs.iter().map(|o| o.path.clone()))
                .chain(e.report.outputs.iter().map(|o| o.path.clone()))
                .collect();
            listed.sort();
            assert_eq!(listed, vec!["f0.png", "f1.png"], "{when}");
            assert!(r.took < Duration::from_secs(4), "{when}: {:?}", r.took);
        }
    }

    #[tokio::test]
    async fn each_progress_line_lists_only_the_files_new_since_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let script = "for i in 0 1 2 3 4 5; do echo $i > .t.tmp; mv .t.tmp frame_$i.png; echo ORCH_PROGRESS $((i+1)); done";
        let r = run(dir.path(), 6, script, None).await;
        let rep = r.result.unwrap();
        // A line lists what is there when it is read (the program may be a
        // frame ahead by then), each file once over the whole task.
        let mut listed: Vec<String> = r
            .reports
            .iter()
            .chain(std::iter::once(&rep))
            .flat_map(|p| p.outputs.iter().map(|o| o.path.clone()))
            .collect();
        listed.sort();
        let expected: Vec<String> = (0..6).map(|i| format!("frame_{i}.png")).collect();
        assert_eq!(listed, expected);
        assert!(
            r.reports.iter().any(|p| !p.outputs.is_empty()),
            "files are listed as progress comes, not only at the end"
        );
        assert_eq!(rep.frames_done, 6);
    }

    #[tokio::test]
    async fn both_streams_land_in_the_attempts_log_in_order_with_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(
            dir.path(),
            1,
            "echo one; echo two >&2; printf 'no newline'; echo three >&2; exit 3",
            None,
        )
        .await;
        assert!(r.result.is_err());
        let log = std::fs::read_to_string(dir.path().join("logs/s-1/0-a1.log")).unwrap();
        let rest: Vec<&str> = log.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        // The streams are read concurrently: each keeps its own order.
        let outs: Vec<&str> = rest
            .iter()
            .filter(|l| l.starts_with("out "))
            .copied()
            .collect();
        let errs: Vec<&str> = rest
            .iter()
            .filter(|l| l.starts_with("err "))
            .copied()
            .collect();
        assert_eq!(outs, ["out one", "out no newline"]);
        assert_eq!(errs, ["err two", "err three"]);
        assert!(
            rest.last().unwrap().starts_with("orch attempt failed: "),
            "{log}"
        );
        assert!(
            rest.last().unwrap().contains("exited with code 3: three"),
            "{log}"
        );
        assert!(!crate::task_log::is_open(
            &dir.path().join("logs/s-1/0-a1.log")
        ));
    }
}
