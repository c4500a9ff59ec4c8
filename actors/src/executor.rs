//! How a device runs a task (docs/sessions.md): the [`Executor`] trait, the builtin
//! `noop` and `sleep` executors, and [`NodeIo`], the file work a node's actors
//! ask of the runtime (output folders, quarantine, manifests).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::protocol::{ExecutorSpec, OutputFile, TaskSpec};
use crate::scheduler::ManifestSnapshot;

/// One task on one device, as an executor sees it.
#[derive(Debug, Clone)]
pub struct ExecJob {
    pub task: TaskSpec,
    pub node: String,
    /// The device's runtime handle (`cuda:0`, an adb serial, ...).
    pub handle: String,
    /// The attempt's output folder (absolute; created by the runtime).
    pub out_dir: PathBuf,
}

/// Cumulative progress of a running task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecReport {
    /// Frames finished from the start of the task's range.
    pub frames_done: u64,
    pub last_id_used: Option<u64>,
    /// Output files that appeared since the previous report.
    pub outputs: Vec<OutputFile>,
    /// A workflow's: what each step did (in the final report only).
    pub steps: Vec<crate::workflow::StepRecord>,
}

/// Why a task did not complete, with what it got done first. `message` is
/// the one line the manifest's `failed` entry and the logs show.
#[derive(Debug, Clone, Default, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    pub message: String,
    pub report: ExecReport,
    /// The device turns the task away (a workflow step with `on_failure =
    /// "skip_device"`): another device should take it.
    pub turn_away: bool,
    /// The device gave no sign of life for `grace_wait_ms` (a workflow
    /// step that wrote nothing): the attempt fails `device_unresponsive`.
    pub unresponsive: bool,
    /// The program's exit code, when it exited by itself with one.
    pub exit: Option<i32>,
}

pub type ExecFuture = Pin<Box<dyn Future<Output = Result<ExecReport, ExecError>> + Send>>;

/// Runs tasks. `run` reports progress on `progress` and stops promptly when
/// `cancel` fires (timeout, stale attempt, cancelled session).
pub trait Executor: Send + Sync + 'static {
    fn run(
        &self,
        job: ExecJob,
        progress: UnboundedSender<ExecReport>,
        cancel: CancellationToken,
    ) -> ExecFuture;
}

/// File work the actors need from the runtime. Implementations must confine
/// every path to the node's `data_dir`.
pub trait NodeIo: Send + Sync + 'static {
    /// The absolute output folder for `rel` (from [`crate::protocol::out_dir`]), created.
    fn prepare_out_dir(&self, rel: &str) -> Result<PathBuf, String>;
    /// Move every file under `rel` except `keep` to quarantine; returns how many moved.
    fn quarantine(&self, rel: &str, keep: &[String]) -> Result<usize, String>;
    /// Persist a finished session's manifest.
    fn write_manifest(&self, manifest: &ManifestSnapshot) -> Result<PathBuf, String>;
    /// Whether the manifest of `session` was written.
    fn manifest_exists(&self, session: &str) -> bool;
    /// The manifest of `session` as written (an evicted session's).
    fn read_manifest(&self, session: &str) -> Result<crate::protocol::Manifest, String>;
    /// Add `record` to the `replay` of the manifest of `session` on disk,
    /// unless a record of that task and old attempt is there already, or
    /// that attempt produced one of its ranges.
    fn amend_manifest(
        &self,
        session: &str,
        record: &crate::protocol::ReplayRecord,
    ) -> Result<(), String>;
    /// The executor for a spec.
    fn executor(&self, spec: &ExecutorSpec) -> Arc<dyn Executor>;
}

/// Least time between two progress reports of `builtin:sleep`: fast frames
/// must not flood the master (and its store) with one report each.
pub const PROGRESS_EVERY_MS: u64 = 100;

/// `builtin:noop`: completes every frame at once.
pub struct Noop;

impl Executor for Noop {
    fn run(
        &self,
        job: ExecJob,
        _: UnboundedSender<ExecReport>,
        _: CancellationToken,
    ) -> ExecFuture {
        let n = job.task.frames.len();
        Box::pin(async move {
            Ok(ExecReport {
                frames_done: n,
                ..ExecReport::default()
            })
        })
    }
}

/// `builtin:sleep`: sleeps `ms_per_frame` per frame, reporting progress after
/// each frame, at most every [`PROGRESS_EVERY_MS`].
pub struct Sleep;

impl Executor for Sleep {
    fn run(
        &self,
        job: ExecJob,
        progress: UnboundedSender<ExecReport>,
        cancel: CancellationToken,
    ) -> ExecFuture {
        let ms = match job.task.executor {
            ExecutorSpec::Sleep { ms_per_frame } => ms_per_frame,
            _ => 0,
        };
        let n = job.task.frames.len();
        Box::pin(async move {
            let mut last_report = tokio::time::Instant::now();
            for done in 1..=n {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    _ = cancel.cancelled() => {
                        return Err(ExecError {
                            message: "cancelled".into(),
                            report: ExecReport { frames_done: done - 1, ..ExecReport::default() },
                            ..ExecError::default()
                        });
                    }
                }
                if last_report.elapsed() >= Duration::from_millis(PROGRESS_EVERY_MS) {
                    last_report = tokio::time::Instant::now();
                    let _ = progress.send(ExecReport {
                        frames_done: done,
                        ..ExecReport::default()
                    });
                }
            }
            Ok(ExecReport {
                frames_done: n,
                ..ExecReport::default()
            })
        })
    }
}

/// A [`NodeIo`] that touches no file, for tests and benchmarks of builtin
/// executors: output folders are not created, manifests are not written.
pub struct NullIo;

impl NodeIo for NullIo {
    fn prepare_out_dir(&self, rel: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(rel))
    }
    fn quarantine(&self, _rel: &str, _keep: &[String]) -> Result<usize, String> {
        Ok(0)
    }
    fn write_manifest(&self, manifest: &ManifestSnapshot) -> Result<PathBuf, String> {
        Ok(PathBuf::from(format!(
            "(not written) {}",
            manifest.session()
        )))
    }
    fn manifest_exists(&self, _session: &str) -> bool {
        false
    }
    fn read_manifest(&self, session: &str) -> Result<crate::protocol::Manifest, String> {
        Err(format!(
            "the manifest of `{session}` is not kept by this node"
        ))
    }
    fn amend_manifest(
        &self,
        _session: &str,
        _record: &crate::protocol::ReplayRecord,
    ) -> Result<(), String> {
        Ok(())
    }
    fn executor(&self, spec: &ExecutorSpec) -> Arc<dyn Executor> {
        match spec {
            ExecutorSpec::Sleep { .. } => Arc::new(Sleep),
            _ => Arc::new(Noop),
        }
    }
}
