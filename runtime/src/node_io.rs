//! The node's file work: output folders, quarantine and manifests, all
//! confined to `data_dir` (docs/sessions.md, docs/operating.md); and which
//! executor runs a task, the executors a program registers by name
//! ([`Executors`], `kind = "rust:<name>"`) included.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use orch_actors::executor::{
    ExecError, ExecFuture, ExecJob, ExecReport, Executor, NodeIo, Noop, Sleep,
};
use orch_actors::protocol::{
    executor_capability, valid_executor_name, Capabilities, ExecutorSpec, FrameRange, IdRange,
    Manifest, ReplayRecord, MAX_EXECUTOR_NAME,
};
use orch_actors::scheduler::{merge_manifests, ManifestSnapshot};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::command::CommandExecutor;
use crate::outputs::{Changes, Found, OutputWatch, Watched};
use crate::procs::TaskGroups;

/// [`NodeIo`] on the local file system under `data_dir`.
pub struct FsIo {
    data_dir: PathBuf,
    command: Arc<CommandExecutor>,
    /// The registered executors by name, wrapped in [`Registered`].
    registered: BTreeMap<String, Arc<dyn Executor>>,
}

/// Executors that a program embedding orch registers by name, for the
/// sessions of `kind = "rust:<name>"` (docs/sessions.md, embedding orch).
/// A node started with them ([`crate::node::run_node_with`]) gives every
/// device `executor.rust:<name> = "yes"` for each, so that only its devices
/// take those sessions' tasks.
#[derive(Clone, Default)]
pub struct Executors {
    by_name: BTreeMap<String, Arc<dyn Executor>>,
}

/// Why [`Executors::register`] refused a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    #[error("invalid executor name `{name}`: expected 1 to {MAX_EXECUTOR_NAME} characters from `a-z 0-9 _ -`")]
    InvalidName { name: String },
    #[error("executor `rust:{name}` is registered twice")]
    Duplicate { name: String },
}

impl Executors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Run the sessions of `kind = "rust:<name>"` with `executor`.
    pub fn register(
        &mut self,
        name: &str,
        executor: Arc<dyn Executor>,
    ) -> Result<&mut Self, RegisterError> {
        if !valid_executor_name(name) {
            return Err(RegisterError::InvalidName {
                name: crate::config::shown(name),
            });
        }
        if self.by_name.contains_key(name) {
            return Err(RegisterError::Duplicate { name: name.into() });
        }
        self.by_name.insert(name.to_string(), executor);
        Ok(self)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Add the capability of every registered executor to `caps`.
    pub fn advertise(&self, caps: &mut Capabilities) {
        caps.extend(self.names().map(executor_capability));
    }
}

impl std::fmt::Debug for Executors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// One writer of manifests at a time in this process: the master's Session
/// actors and the collector.
static MANIFEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Set the `collection` of the manifest of `session` on disk (if written)
/// to `c`, keeping the rest as it is.
pub fn amend_collection(data_dir: &Path, session: &str, c: &orch_actors::protocol::Collection) {
    let _held = MANIFEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    amend_collection_locked(data_dir, session, c);
}

fn amend_collection_locked(data_dir: &Path, session: &str, c: &orch_actors::protocol::Collection) {
    let Ok(dir) = confine(data_dir, &format!("sessions/{session}")) else {
        return;
    };
    let path = dir.join("manifest.json");
    let Ok(bytes) = std::fs::read(&path) else {
        return;
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return;
    };
    let Ok(now) = serde_json::to_value(c) else {
        return;
    };
    if v.get("collection") == Some(&now) {
        return;
    }
    v["collection"] = now;
    let tmp = dir.join(".manifest.json.collection.tmp");
    let written = serde_json::to_vec_pretty(&v)
        .map_err(std::io::Error::other)
        .and_then(|b| std::fs::write(&tmp, b))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(session, error = %e, "cannot add the collection to the manifest on disk; `orchctl manifest` still shows it");
    }
}

impl FsIo {
    fn manifest_path(&self, session: &str) -> Result<PathBuf, String> {
        self.confined(&format!("sessions/{session}/manifest.json"))
    }

    /// Write a manifest whole and synced, under a temporary name renamed into
    /// place: once this returns, a crash leaves the manifest (the master may
    /// then drop the session's ledger from memory).
    fn write_manifest_json(
        &self,
        session: &str,
        manifest: &impl serde::Serialize,
    ) -> Result<PathBuf, String> {
        use std::io::Write;
        let _held = MANIFEST_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.confined(&format!("sessions/{session}"))?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        let path = dir.join("manifest.json");
        let tmp = dir.join(".manifest.json.tmp");
        let file = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot write `{}`: {e}", tmp.display()))?;
        let mut w = std::io::BufWriter::new(file);
        serde_json::to_writer_pretty(&mut w, manifest).map_err(|e| e.to_string())?;
        w.flush().map_err(|e| e.to_string())?;
        w.get_ref()
            .sync_all()
            .map_err(|e| format!("cannot sync `{}`: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
        let _ = std::fs::File::open(&dir).and_then(|d| d.sync_all());
        // What the collector of this node gathered stays said.
        if let Ok(Some(c)) = crate::collect::read_state(&self.data_dir, session) {
            amend_collection_locked(&self.data_dir, session, &c);
        }
        Ok(path)
    }

    /// A workflow step silent for `ms` shows its device unresponsive
    /// (`cluster.grace_wait_ms`); call before the executors are shared.
    pub fn with_grace(mut self, ms: u64) -> Self {
        if let Some(c) = Arc::get_mut(&mut self.command) {
            c.grace_ms = ms;
        }
        self
    }

    /// Attempts' logs are capped at `bytes` (`[worker] log_max_bytes`);
    /// call before the executors are shared.
    pub fn with_log_max(mut self, bytes: u64) -> Self {
        if let Some(c) = Arc::get_mut(&mut self.command) {
            if let Some(l) = c.logs.as_mut() {
                l.max_bytes = bytes;
            }
        }
        self
    }

    /// File work under `data_dir`; `command` tasks run as `groups`.
    pub fn new(data_dir: PathBuf, groups: Arc<TaskGroups>) -> Self {
        let command = Arc::new(CommandExecutor {
            work_dir: data_dir.join("work"),
            groups,
            watch: Arc::new(OutputWatch::new()),
            grace_ms: 0,
            logs: Some(crate::command::LogSettings {
                data_dir: data_dir.clone(),
                max_bytes: crate::task_log::DEFAULT_LOG_MAX_BYTES,
            }),
        });
        Self {
            data_dir,
            command,
            registered: BTreeMap::new(),
        }
    }

    /// Also run the sessions of `kind = "rust:<name>"` for every `<name>`
    /// in `executors`.
    pub fn with_executors(mut self, executors: &Executors) -> Self {
        for (name, inner) in &executors.by_name {
            let exec = Registered {
                inner: inner.clone(),
                data_dir: self.data_dir.clone(),
                watch: self.command.watch.clone(),
            };
            self.registered.insert(name.clone(), Arc::new(exec));
        }
        self
    }

    /// `data_dir/rel`, refusing anything but plain relative components.
    pub fn confined(&self, rel: &str) -> Result<PathBuf, String> {
        confine(&self.data_dir, rel)
    }
}

/// `data_dir/rel`, refusing anything but plain relative components.
fn confine(data_dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "path `{rel}` is not a plain relative path inside `data_dir`"
        ));
    }
    Ok(data_dir.join(p))
}

/// A registered executor as a device runs it, under the `command`
/// executor's contract (docs/sessions.md): in its attempt's output folder,
/// created first; a report of frames beyond the task's, or of an ID outside
/// its chunk, fails the attempt; the files that appeared in the folder since
/// the previous report are listed with it (size and sha256), and the whole
/// folder once at the end; a symbolic link there fails the attempt.
struct Registered {
    inner: Arc<dyn Executor>,
    data_dir: PathBuf,
    watch: Arc<OutputWatch>,
}

impl Executor for Registered {
    fn run(
        &self,
        job: ExecJob,
        progress: UnboundedSender<ExecReport>,
        cancel: CancellationToken,
    ) -> ExecFuture {
        // The device hands builtin-like executors their folder unmade and
        // relative to `data_dir`.
        let dir = if job.out_dir.is_absolute() {
            Ok(job.out_dir.clone())
        } else {
            confine(&self.data_dir, &job.out_dir.to_string_lossy())
        };
        let (inner, watch) = (self.inner.clone(), self.watch.clone());
        Box::pin(async move {
            let fail = |message: String| ExecError {
                message,
                ..ExecError::default()
            };
            let dir = dir.map_err(fail)?;
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| fail(format!("cannot create `{}`: {e}", dir.display())))?;
            run_registered(inner, job, dir, &watch, progress, cancel).await
        })
    }
}

async fn run_registered(
    inner: Arc<dyn Executor>,
    mut job: ExecJob,
    dir: PathBuf,
    watch: &OutputWatch,
    progress: UnboundedSender<ExecReport>,
    cancel: CancellationToken,
) -> Result<ExecReport, ExecError> {
    job.out_dir = dir.clone();
    let mut look = Look {
        frames: job.task.frames,
        ids: job.task.ids,
        dir,
        watched: watch.watch(&job.out_dir),
        seen: HashSet::new(),
        so_far: ExecReport::default(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut run = inner.run(job, tx, cancel);
    // A report that breaks the contract ends the attempt: dropping `run`
    // stops the executor.
    let ended = loop {
        tokio::select! {
            r = &mut run => break r,
            Some(r) = rx.recv() => {
                let r = look.at(r, false).await.map_err(|why| look.fail(why))?;
                let _ = progress.send(r);
            }
        }
    };
    while let Ok(r) = rx.try_recv() {
        let r = look.at(r, false).await.map_err(|why| look.fail(why))?;
        let _ = progress.send(r);
    }
    match ended {
        Ok(r) => {
            let mut r = look.at(r, true).await.map_err(|why| look.fail(why))?;
            r.frames_done = look.frames.len();
            Ok(r)
        }
        // What it reported with the error counts like a last report.
        Err(e) => Err(match look.at(e.report, false).await {
            Ok(report) => ExecError {
                message: e.message,
                report,
                ..e
            },
            Err(why) => look.fail(why),
        }),
    }
}

/// What a registered executor reported so far, checked, and its folder.
struct Look<'a> {
    frames: FrameRange,
    ids: IdRange,
    dir: PathBuf,
    watched: Watched<'a>,
    seen: HashSet<String>,
    /// Cumulative; `outputs` holds only files not sent when a look failed.
    so_far: ExecReport,
}

impl Look<'_> {
    /// Check `r` and list the files new since the last look (`all`: the
    /// whole folder); the cumulative report with those files.
    async fn at(&mut self, r: ExecReport, all: bool) -> Result<ExecReport, String> {
        let len = self.frames.len();
        if r.frames_done > len {
            return Err(format!(
                "the executor reported {} frames done, beyond the task's {len}",
                r.frames_done
            ));
        }
        if let Some(l) = r
            .last_id_used
            .filter(|l| *l < self.ids.lo || *l >= self.ids.hi)
        {
            return Err(format!(
                "the executor reported last ID `{l}`, outside its chunk [{}, {})",
                self.ids.lo, self.ids.hi
            ));
        }
        // Files it listed itself are not listed twice.
        let mut outputs: Vec<_> = r
            .outputs
            .into_iter()
            .filter(|o| self.seen.insert(o.path.clone()))
            .collect();
        let found = self.new_files(all).await;
        self.so_far.frames_done = self.so_far.frames_done.max(r.frames_done);
        self.so_far.last_id_used = self.so_far.last_id_used.max(r.last_id_used);
        outputs.extend(found.files);
        match found.problems.into_iter().next() {
            Some(p) => {
                // The regular files found with the problem stay listed.
                self.so_far.outputs = outputs;
                Err(p)
            }
            None => Ok(ExecReport {
                outputs,
                ..self.so_far.clone()
            }),
        }
    }

    /// The error that ends the attempt, with what was reported validly
    /// before (and files not yet sent).
    fn fail(&mut self, message: String) -> ExecError {
        ExecError {
            message,
            report: ExecReport {
                outputs: std::mem::take(&mut self.so_far.outputs),
                ..self.so_far.clone()
            },
            ..ExecError::default()
        }
    }

    /// The files that appeared since the last look, hashed off the async threads.
    async fn new_files(&mut self, all: bool) -> Found {
        let changes = match self.watched.changes() {
            _ if all => Changes::Everything,
            c => c,
        };
        crate::outputs::look(&self.dir, changes, &mut self.seen).await
    }
}

/// A session of `kind = "rust:<name>"` on a node that did not register
/// `<name>`: placement keeps its tasks off such nodes, so only a device
/// that claims the capability in `cluster.toml` gets here.
struct Unregistered(String);

impl Executor for Unregistered {
    fn run(
        &self,
        job: ExecJob,
        _: UnboundedSender<ExecReport>,
        _: CancellationToken,
    ) -> ExecFuture {
        let message = format!(
            "executor `rust:{}` is not registered on node `{}`: the program running the node registers it (`run_node_with`)",
            self.0, job.node
        );
        Box::pin(async move {
            Err(ExecError {
                message,
                ..ExecError::default()
            })
        })
    }
}

fn files_under(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            files_under(&path, base, out)?;
        } else if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

impl NodeIo for FsIo {
    fn prepare_out_dir(&self, rel: &str) -> Result<PathBuf, String> {
        let dir = self.confined(rel)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        Ok(dir)
    }

    fn quarantine(&self, rel: &str, keep: &[String]) -> Result<usize, String> {
        let src = self.confined(rel)?;
        if !src.exists() {
            return Ok(0);
        }
        let tail = rel.strip_prefix("out/").unwrap_or(rel);
        let dst = self.confined(&format!("quarantine/{tail}"))?;
        let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
        let mut files = Vec::new();
        files_under(&src, &src, &mut files)
            .map_err(|e| format!("cannot list `{}`: {e}", src.display()))?;
        let mut moved = 0;
        for f in files {
            if keep.contains(f.to_string_lossy().as_ref()) {
                continue;
            }
            let to = dst.join(&f);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("cannot create `{}`: {e}", parent.display()))?;
            }
            std::fs::rename(src.join(&f), &to)
                .map_err(|e| format!("cannot move `{}` to quarantine: {e}", f.display()))?;
            moved += 1;
        }
        Ok(moved)
    }

    fn manifest_exists(&self, session: &str) -> bool {
        self.confined(&format!("sessions/{session}/manifest.json"))
            .is_ok_and(|p| p.is_file())
    }

    fn write_manifest(&self, manifest: &ManifestSnapshot) -> Result<PathBuf, String> {
        let Some(superseded) = manifest.merge_with_disk() else {
            return self.write_manifest_json(manifest.session(), manifest);
        };
        // Run again after its ledger left memory: its earlier ranges are
        // in the manifest on disk.
        let now = manifest.to_manifest();
        let merged = if self.manifest_exists(manifest.session()) {
            merge_manifests(self.read_manifest(manifest.session())?, now, superseded)
        } else {
            now
        };
        self.write_manifest_json(manifest.session(), &merged)
    }

    fn read_manifest(&self, session: &str) -> Result<Manifest, String> {
        let path = self.manifest_path(session)?;
        let file = std::fs::File::open(&path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        serde_json::from_reader(std::io::BufReader::new(file))
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))
    }

    fn amend_manifest(&self, session: &str, record: &ReplayRecord) -> Result<(), String> {
        let mut m = self.read_manifest(session)?;
        // Listed already, or it is the attempt that produced the range (a
        // worker names a finished attempt whose acknowledgement it missed).
        if m.replay
            .iter()
            .any(|r| r.task == record.task && r.old_attempt == record.old_attempt)
            || m.ranges
                .iter()
                .any(|r| r.task == record.task && r.attempt == record.old_attempt)
        {
            return Ok(());
        }
        m.replay.push(record.clone());
        self.write_manifest_json(session, &m).map(|_| ())
    }

    fn executor(&self, spec: &ExecutorSpec) -> Arc<dyn Executor> {
        match spec {
            ExecutorSpec::Noop => Arc::new(Noop),
            ExecutorSpec::Sleep { .. } => Arc::new(Sleep),
            ExecutorSpec::Command { .. } => self.command.clone(),
            ExecutorSpec::Workflow(_) => {
                Arc::new(crate::command::WorkflowExecutor(self.command.clone()))
            }
            ExecutorSpec::Rust { name, .. } => match self.registered.get(name) {
                Some(exec) => exec.clone(),
                None => Arc::new(Unregistered(name.clone())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(dir: &Path) -> Arc<TaskGroups> {
        Arc::new(TaskGroups::in_dir(dir.join("procs")))
    }

    /// Writes `frames_done + extra` files, one per report, then returns.
    struct Writes {
        extra: u64,
    }

    impl Executor for Writes {
        fn run(
            &self,
            job: ExecJob,
            progress: UnboundedSender<ExecReport>,
            _: CancellationToken,
        ) -> ExecFuture {
            let n = job.task.frames.len() + self.extra;
            Box::pin(async move {
                for i in 1..=n {
                    std::fs::write(job.out_dir.join(format!("f{i}.txt")), b"x").unwrap();
                    let _ = progress.send(ExecReport {
                        frames_done: i,
                        ..ExecReport::default()
                    });
                }
                Ok(ExecReport::default())
            })
        }
    }

    fn job(name: &str) -> ExecJob {
        ExecJob {
            task: orch_actors::protocol::TaskSpec {
                session: "s".into(),
                session_name: "s".into(),
                task: 0,
                attempt: 1,
                frames: FrameRange { start: 10, end: 14 },
                ids: IdRange { lo: 0, hi: 10 },
                device: "d".into(),
                executor: ExecutorSpec::Rust {
                    name: name.into(),
                    params: BTreeMap::new(),
                },
                timeout_ms: 1000,
                items: Vec::new(),
                correlation_id: String::new(),
            },
            node: "n".into(),
            handle: "h".into(),
            // As the device hands it to every executor but `command`.
            out_dir: PathBuf::from("out/s/n/d/0-a1"),
        }
    }

    async fn run(io: &FsIo, job: ExecJob) -> (Result<ExecReport, ExecError>, Vec<ExecReport>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let exec = io.executor(&job.task.executor);
        let r = exec.run(job, tx, CancellationToken::new()).await;
        let mut reports = Vec::new();
        while let Ok(p) = rx.try_recv() {
            reports.push(p);
        }
        (r, reports)
    }

    #[tokio::test]
    async fn a_registered_executor_runs_in_its_folder_with_its_files_listed_once() {
        let d = tempfile::tempdir().unwrap();
        let mut execs = Executors::new();
        execs
            .register("writes", Arc::new(Writes { extra: 0 }))
            .unwrap()
            .register("lies", Arc::new(Writes { extra: 1 }))
            .unwrap();
        let io = FsIo::new(d.path().to_path_buf(), groups(d.path())).with_executors(&execs);
        let (r, reports) = run(&io, job("writes")).await;
        let r = r.unwrap();
        assert_eq!(r.frames_done, 4);
        let mut listed: Vec<String> = reports
            .iter()
            .chain([&r])
            .flat_map(|p| p.outputs.iter().map(|o| o.path.clone()))
            .collect();
        listed.sort();
        assert_eq!(listed, ["f1.txt", "f2.txt", "f3.txt", "f4.txt"]);
        assert!(d.path().join("out/s/n/d/0-a1/f4.txt").is_file());
        assert_eq!(reports.last().map(|p| p.frames_done), Some(4));

        // A report beyond the task's frames ends the attempt, keeping what came before.
        let (r, _) = run(&io, job("lies")).await;
        let e = r.unwrap_err();
        assert!(
            e.message.contains("5 frames done, beyond the task's 4"),
            "{}",
            e.message
        );
        assert_eq!(e.report.frames_done, 4);
    }

    #[tokio::test]
    async fn an_unregistered_executor_fails_saying_so() {
        let d = tempfile::tempdir().unwrap();
        let io = FsIo::new(d.path().to_path_buf(), groups(d.path()));
        let (r, _) = run(&io, job("missing")).await;
        let e = r.unwrap_err();
        assert!(
            e.message
                .contains("executor `rust:missing` is not registered on node `n`"),
            "{}",
            e.message
        );
    }

    #[test]
    fn bad_and_twice_registered_names_are_refused() {
        let mut execs = Executors::new();
        for bad in ["", "Big", "a b", "a:b"] {
            let e = execs.register(bad, Arc::new(Noop)).unwrap_err();
            assert!(e.to_string().contains("invalid executor name"), "{e}");
        }
        execs.register("a", Arc::new(Noop)).unwrap();
        let e = execs.register("a", Arc::new(Noop)).unwrap_err();
        assert_eq!(e.to_string(), "executor `rust:a` is registered twice");
        let mut caps = Capabilities::new();
        execs.advertise(&mut caps);
        assert_eq!(
            caps.get("executor.rust:a"),
            Some(&orch_actors::protocol::CapValue::Str("yes".into()))
        );
        assert_eq!(format!("{execs:?}"), r#"{"a"}"#);
    }

    #[test]
    fn paths_stay_inside_data_dir() {
        let io = FsIo::new(PathBuf::from("/data"), groups(Path::new("/tmp")));
        assert!(io.confined("out/s/n/d/1-a1").is_ok());
        assert!(io.confined("../etc").is_err());
        assert!(io.confined("/etc/passwd").is_err());
        assert!(io.confined("out/../../x").is_err());
        assert!(io.confined("").is_err());
    }

    #[test]
    fn quarantine_moves_all_but_kept_files() {
        let d = tempfile::tempdir().unwrap();
        let io = FsIo::new(d.path().to_path_buf(), groups(d.path()));
        let out = io.prepare_out_dir("out/s/n/dev/3-a1").unwrap();
        std::fs::write(out.join("frame_0.png"), b"ok").unwrap();
        std::fs::write(out.join("frame_1.png"), b"partial").unwrap();
        let moved = io
            .quarantine("out/s/n/dev/3-a1", &["frame_0.png".into()])
            .unwrap();
        assert_eq!(moved, 1);
        assert!(out.join("frame_0.png").exists());
        assert!(d
            .path()
            .join("quarantine/s/n/dev/3-a1/frame_1.png")
            .exists());
    }

    #[test]
    fn an_amendment_skips_what_the_manifest_lists_already() {
        use orch_actors::protocol::{IdRange, LossReason, ManifestRange, SessionState};
        let d = tempfile::tempdir().unwrap();
        let io = FsIo::new(d.path().to_path_buf(), groups(d.path()));
        let frames = FrameRange { start: 70, end: 80 };
        let m = Manifest {
            collect: String::new(),
            collection: None,
            session: "s".into(),
            name: "s".into(),
            state: SessionState::Completed,
            frames,
            executor: "builtin:noop".into(),
            submitted_ms: 0,
            finished_ms: Some(1),
            ranges: vec![ManifestRange {
                frames,
                task: 7,
                attempt: 1,
                node: "n1".into(),
                device: "d0".into(),
                ids: IdRange { lo: 0, hi: 10 },
                ids_used: Some(10),
                outputs: Vec::new(),
                started_ms: 0,
                finished_ms: 1,
                out_dir: String::new(),
                workflow: None,
                steps: Vec::new(),
            }],
            replay: Vec::new(),
            failed: Vec::new(),
            retried: Vec::new(),
            workflow: None,
            turned_away: Default::default(),
            blocklisted: Vec::new(),
            skipped_offline: Default::default(),
            failure_reasons: Default::default(),
        };
        io.write_manifest_json("s", &m).unwrap();
        let record = |old_attempt| ReplayRecord {
            frames,
            task: 7,
            old_attempt,
            new_attempt: old_attempt + 1,
            node: "n1".into(),
            device: String::new(),
            reason: LossReason::MasterRestart { detail: None },
        };

        // The attempt that produced the range, named again by its worker.
        io.amend_manifest("s", &record(1)).unwrap();
        assert_eq!(io.read_manifest("s").unwrap().replay, vec![]);
        // Another one is listed, once.
        io.amend_manifest("s", &record(2)).unwrap();
        io.amend_manifest("s", &record(2)).unwrap();
        assert_eq!(io.read_manifest("s").unwrap().replay, vec![record(2)]);
    }
}
