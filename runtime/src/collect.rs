//! The collector (docs/collection.md): gathers the outputs of every
//! produced range of the sessions it collects into
//! `{data_dir}/sessions/{id}/output/`, under the program's own names,
//! each verified against the sha256 its manifest records.
//!
//! It runs on every node and takes the sessions whose `collect` names the
//! node (the master's node takes those with the default). It follows the
//! sessions' views (cheap: the master publishes them) and reads a
//! session's manifest only when its view moved; it reconciles the folder
//! with the manifest: an output of a produced range is fetched (from the
//! worker's data plane, or this node's own disk), one of a range no longer
//! produced (an operator requeued it) is moved to `quarantine/`, and a
//! name two ranges wrote is a conflict, never an overwrite. Its state is
//! `sessions/{id}/collection.json`: after a restart it resumes what is
//! missing (a partial transfer from where it stopped).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_actors::master::MasterMsg;
use orch_actors::masters;
use orch_actors::protocol::{
    AdminReply, AdminRequest, CollectState, CollectedFile, Collection, Manifest, MemberState,
    SessionView, WorkerView, COLLECT_MASTER,
};
use orch_actors::read_model::ReadModel;
use ractor::rpc::CallResult;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::metrics as m;

/// How often the collector looks at the sessions.
const TICK: Duration = Duration::from_millis(100);
/// How often a node other than the master's, collecting nothing, asks.
const IDLE_PASS: Duration = Duration::from_secs(1);
/// While transfers run, the state of a session is written at most this often
/// (a file collected but not yet written down is fetched again after a
/// crash, onto the same name).
const PERSIST_EVERY: Duration = Duration::from_secs(1);
/// Transfers at once, in all.
pub const MAX_TRANSFERS: usize = 4;
/// Transfers at once from one node.
pub const MAX_PER_NODE: usize = 2;
/// Tries of a file whose bytes do not match its sha256 (or that its node
/// no longer has) before it is `failed`.
pub const MAX_MISMATCH_TRIES: u32 = 3;
/// Longest wait between two tries of one file.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Buffer of one transfer: what one read from the socket or the disk
/// brings, hashed and written while it is still in the core's cache.
const BUF: usize = 128 * 1024;
/// How long a request to the master may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The collector's file of one session.
pub fn state_path(data_dir: &Path, session: &str) -> Option<PathBuf> {
    crate::outputs::safe_component(session).then(|| {
        data_dir
            .join("sessions")
            .join(session)
            .join("collection.json")
    })
}

/// The collected folder of one session, relative to `data_dir`.
pub fn output_rel(session: &str) -> String {
    format!("sessions/{session}/output")
}

/// The collector's state of `session` on this node, if it collects it.
pub fn read_state(data_dir: &Path, session: &str) -> Result<Option<Collection>, String> {
    let Some(path) = state_path(data_dir, session) else {
        return Err(format!("`{session}` is not a session id"));
    };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read `{}`: {e}", path.display())),
    }
}

/// Write `bytes` to `path` whole, under a temporary name renamed into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Ask the current master, wherever it runs (this node's read model first).
async fn ask(read_model: &ReadModel, node: &str, req: AdminRequest) -> Option<AdminReply> {
    let (claim, master) = masters::current()?;
    if claim.node == node {
        if let Some(r) = read_model.answer(&req, ASK_TIMEOUT) {
            return Some(r);
        }
    }
    let call = master.call(|port| MasterMsg::Admin(req, port), Some(ASK_TIMEOUT * 2));
    match tokio::time::timeout(ASK_TIMEOUT, call).await {
        Ok(Ok(CallResult::Success(r))) => Some(r),
        _ => None,
    }
}

/// Where a file comes from.
#[derive(Debug, Clone)]
enum Source {
    /// This node's own disk.
    Local(PathBuf),
    /// Another node's data plane: `http://{addr}/v1/files/{rel}`.
    Remote { addr: String, rel: String },
}

/// One transfer, run on a blocking thread.
struct Job {
    session: String,
    key: Key,
    node: String,
    source: Source,
    part: PathBuf,
    size: u64,
    sha256: String,
}

/// How a transfer ended.
#[derive(Debug)]
enum Outcome {
    Done,
    /// The node or its data plane cannot be reached.
    Unreachable(String),
    /// The node does not have the file.
    Missing(String),
    /// The bytes do not match the manifest.
    Mismatch(String),
    /// Anything else (this node's disk).
    Other(String),
}

/// (file name, task, attempt).
type Key = (String, u64, u32);

/// A session as the collector follows it.
struct Sess {
    /// The view last seen: the manifest is read again when it moves.
    seen: Option<(String, u64, u64, u64, u64, u64)>,
    files: BTreeMap<Key, CollectedFile>,
    /// When each file is next tried.
    next_try: HashMap<Key, Instant>,
    /// Transfers of each file whose bytes did not match (or that its node did not have).
    mismatches: HashMap<Key, u32>,
    /// Each produced attempt's folder on its node, by (task, attempt).
    out_dirs: HashMap<(u64, u32), String>,
    /// The session is over (final state).
    finished: bool,
    /// The state on disk is behind.
    dirty: bool,
    settled_logged: bool,
    /// When the manifest on disk was last told.
    amended: Option<Instant>,
}

impl Sess {
    fn summary(&self, node: &str, id: &str) -> Collection {
        let mut c = Collection {
            node: node.to_string(),
            dir: output_rel(id),
            ..Collection::default()
        };
        for f in self.files.values() {
            match f.state {
                CollectState::Pending => c.pending += 1,
                CollectState::Collected => c.collected += 1,
                CollectState::Uncollected => c.uncollected += 1,
                CollectState::Failed => c.failed += 1,
                CollectState::Conflict => c.conflicts += 1,
            }
        }
        c.settled = self.finished && c.pending == 0 && c.uncollected == 0;
        c.files = self.files.values().cloned().collect();
        c
    }
}

/// The collector of one node.
pub struct Collector {
    node: String,
    data_dir: PathBuf,
    token: String,
    read_model: Arc<ReadModel>,
    sessions: HashMap<String, Sess>,
    workers: HashMap<String, WorkerView>,
    workers_at: Option<Instant>,
    in_flight: HashMap<Key, String>,
    per_node: HashMap<String, usize>,
}

impl Collector {
    pub fn new(node: String, data_dir: PathBuf, token: String, read_model: Arc<ReadModel>) -> Self {
        Self {
            node,
            data_dir,
            token,
            read_model,
            sessions: HashMap::new(),
            workers: HashMap::new(),
            workers_at: None,
            in_flight: HashMap::new(),
            per_node: HashMap::new(),
        }
    }

    /// Run until the process ends.
    pub async fn run(mut self) {
        let (tx, mut rx) = mpsc::channel::<(Job, Outcome)>(64);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persisted = Instant::now();
        let mut last_pass = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // Off the master's node each pass asks the master: at
                    // most once a second unless this node collects something.
                    let local = masters::current().is_some_and(|(c, _)| c.node == self.node);
                    let busy = self.in_flight.len() + self.sessions.values().filter(|s| !s.finished).count() > 0;
                    if !local && !busy && last_pass.elapsed() < IDLE_PASS {
                        continue;
                    }
                    last_pass = Instant::now();
                    self.pass(&tx).await;
                    if self.in_flight.is_empty() || persisted.elapsed() >= PERSIST_EVERY {
                        self.persist();
                        persisted = Instant::now();
                    }
                }
                Some((job, outcome)) = rx.recv() => {
                    let session = job.session.clone();
                    self.finished_job(job, outcome);
                    // The next file starts now, not at the next tick; the
                    // state is written now when the session has nothing
                    // left in flight, else by a tick.
                    self.start_transfers(&tx);
                    if !self.in_flight.values().any(|s| *s == session) {
                        self.persist();
                        persisted = Instant::now();
                    }
                }
            }
        }
    }

    /// Whether this node collects a session whose view says `collect`.
    fn is_mine(&self, collect: &str, master: Option<&str>) -> bool {
        match collect {
            "" => false,
            COLLECT_MASTER => master == Some(self.node.as_str()),
            node => node == self.node,
        }
    }

    async fn pass(&mut self, tx: &mpsc::Sender<(Job, Outcome)>) {
        let master = masters::current().map(|(c, _)| c.node);
        let views: Vec<SessionView> = if master.as_deref() == Some(self.node.as_str()) {
            self.read_model.session_views()
        } else {
            match ask(&self.read_model, &self.node, AdminRequest::Sessions).await {
                Some(AdminReply::Sessions(v)) => v,
                _ => return,
            }
        };
        let mut moved = Vec::new();
        let mine: Vec<&SessionView> = views
            .iter()
            .filter(|v| self.is_mine(&v.collect, master.as_deref()))
            .collect();
        for v in mine {
            if !self.sessions.contains_key(&v.id) {
                let s = self.load(&v.id);
                self.sessions.insert(v.id.clone(), s);
            }
            let Some(sess) = self.sessions.get(&v.id) else {
                continue;
            };
            let seen = Some((
                v.state.as_str().to_string(),
                v.tasks_completed,
                v.retries,
                v.failovers,
                v.frames_done,
                v.tasks_failed,
            ));
            if sess.seen != seen {
                moved.push((v.id.clone(), seen, v.state.is_final()));
            }
        }
        for (id, seen, finished) in moved {
            let Some(AdminReply::Manifest(manifest)) = ask(
                &self.read_model,
                &self.node,
                AdminRequest::Manifest(id.clone()),
            )
            .await
            else {
                continue;
            };
            self.reconcile(&manifest);
            if let Some(s) = self.sessions.get_mut(&id) {
                s.seen = seen;
                s.finished = finished;
                s.dirty = true;
            }
        }
        let wants = self.sessions.values().any(|s| {
            s.files
                .values()
                .any(|f| matches!(f.state, CollectState::Pending | CollectState::Uncollected))
        });
        if wants {
            self.refresh_workers().await;
            self.start_transfers(tx);
        }
    }

    async fn refresh_workers(&mut self) {
        if self
            .workers_at
            .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
        {
            return;
        }
        if let Some(AdminReply::Workers(ws)) =
            ask(&self.read_model, &self.node, AdminRequest::Workers).await
        {
            self.workers = ws.into_iter().map(|w| (w.node.clone(), w)).collect();
            self.workers_at = Some(Instant::now());
        }
    }

    /// The state on disk of a session met for the first time (after a
    /// restart: what was collected; the rest is fetched again).
    fn load(&self, id: &str) -> Sess {
        let mut files = BTreeMap::new();
        if let Ok(Some(c)) = read_state(&self.data_dir, id) {
            for mut f in c.files {
                // A collected file that is not whole on disk any more is fetched again.
                if f.state == CollectState::Collected {
                    let here = self.data_dir.join(output_rel(id)).join(&f.name);
                    if std::fs::metadata(&here).map(|m| m.len()).ok() != Some(f.size) {
                        f.state = CollectState::Pending;
                    }
                }
                files.insert((f.name.clone(), f.task, f.attempt), f);
            }
        }
        Sess {
            seen: None,
            files,
            next_try: HashMap::new(),
            mismatches: HashMap::new(),
            out_dirs: HashMap::new(),
            finished: false,
            dirty: false,
            settled_logged: false,
            amended: None,
        }
    }

    /// Make the session's files what `manifest` produced.
    fn reconcile(&mut self, manifest: &Manifest) {
        let id = manifest.session.clone();
        let out = self.data_dir.join(output_rel(&id));
        let Some(sess) = self.sessions.get_mut(&id) else {
            return;
        };
        // What the manifest produced, in frame order: the first range to
        // write a name has it; a later one is a conflict.
        let mut wanted: BTreeMap<Key, (CollectedFile, bool)> = BTreeMap::new();
        let mut owner: HashMap<String, (u64, u32)> = HashMap::new();
        for r in &manifest.ranges {
            for o in &r.outputs {
                if !crate::outputs::safe_rel(&o.path) {
                    continue;
                }
                let key = (o.path.clone(), r.task, r.attempt);
                let first = match owner.get(&o.path) {
                    None => {
                        owner.insert(o.path.clone(), (r.task, r.attempt));
                        true
                    }
                    Some(&(t, a)) => t == r.task && a == r.attempt,
                };
                let file = CollectedFile {
                    name: o.path.clone(),
                    task: r.task,
                    attempt: r.attempt,
                    node: r.node.clone(),
                    size: o.size,
                    sha256: o.sha256.clone(),
                    state: CollectState::Pending,
                    tries: 0,
                    collected_ms: None,
                    error: None,
                };
                wanted.insert(key, (file, first));
            }
        }
        // Outputs of ranges no longer produced: out of the folder.
        let gone: Vec<Key> = sess
            .files
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let f = sess.files.remove(&key).unwrap_or_else(|| unreachable!());
            sess.next_try.remove(&key);
            self.in_flight.remove(&key);
            if f.state == CollectState::Collected {
                let from = out.join(&f.name);
                let to = self
                    .data_dir
                    .join("sessions")
                    .join(&id)
                    .join("quarantine")
                    .join(format!("{}-a{}", f.task, f.attempt))
                    .join(&f.name);
                let moved = to
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|_| std::fs::rename(&from, &to));
                match moved {
                    Ok(()) => {
                        info!(node_id = %self.node, session = %id, file = %f.name, task = f.task, attempt = f.attempt, "collected output of a range no longer produced moved to quarantine")
                    }
                    Err(e) => {
                        warn!(node_id = %self.node, session = %id, file = %f.name, error = %e, "cannot move a collected output of a range no longer produced to quarantine")
                    }
                }
            }
            sess.dirty = true;
        }
        for (key, (mut file, first)) in wanted {
            if sess.files.contains_key(&key) {
                continue;
            }
            if !first {
                let (t, a) = owner[&file.name];
                file.state = CollectState::Conflict;
                file.error = Some(format!(
                    "task {t} attempt {a} wrote `{}` first: two ranges wrote the same name, this one is not merged",
                    file.name
                ));
                metrics::counter!(m::COLLECTED_FILES, "result" => "conflict").increment(1);
                warn!(node_id = %self.node, session = %id, file = %file.name, task = file.task, "two ranges wrote one output name; the later is not merged");
            }
            sess.files.insert(key, file);
            sess.dirty = true;
        }
        // Where each attempt's folder is on its node, for the transfers.
        sess.out_dirs = manifest
            .ranges
            .iter()
            .map(|r| ((r.task, r.attempt), r.out_dir.clone()))
            .collect();
    }

    /// Start what may start of the files waiting.
    fn start_transfers(&mut self, tx: &mpsc::Sender<(Job, Outcome)>) {
        let now = Instant::now();
        let mut start = Vec::new();
        for (id, sess) in &mut self.sessions {
            for (key, f) in sess.files.iter_mut() {
                if !matches!(f.state, CollectState::Pending | CollectState::Uncollected)
                    || self.in_flight.contains_key(key)
                    || sess.next_try.get(key).is_some_and(|t| *t > now)
                    || self.in_flight.len() + start.len() >= MAX_TRANSFERS
                {
                    continue;
                }
                let busy = self.per_node.get(&f.node).copied().unwrap_or(0)
                    + start.iter().filter(|j: &&Job| j.node == f.node).count();
                if busy >= MAX_PER_NODE {
                    continue;
                }
                let Some(out_dir) = sess.out_dirs.get(&(key.1, key.2)) else {
                    continue;
                };
                let rel = format!("{out_dir}/{}", f.name);
                let source = if f.node == self.node {
                    Source::Local(self.data_dir.join(&rel))
                } else {
                    match self.workers.get(&f.node) {
                        Some(w) if w.state == MemberState::Healthy && w.data.is_some() => {
                            Source::Remote {
                                addr: w.data.clone().unwrap_or_default(),
                                rel,
                            }
                        }
                        other => {
                            let why = match other {
                                None => format!("node `{}` is not in the cluster", f.node),
                                Some(w) if w.data.is_none() => format!(
                                    "node `{}` has no data plane (an older version)",
                                    f.node
                                ),
                                Some(w) => format!(
                                    "node `{}` is {}{}",
                                    f.node,
                                    w.state.as_str(),
                                    w.reason
                                        .map(|r| format!(" ({})", r.as_str()))
                                        .unwrap_or_default()
                                ),
                            };
                            if f.state != CollectState::Uncollected
                                || f.error.as_deref() != Some(why.as_str())
                            {
                                f.state = CollectState::Uncollected;
                                f.error = Some(why);
                                sess.dirty = true;
                                metrics::counter!(m::COLLECTED_FILES, "result" => "unreachable")
                                    .increment(1);
                            }
                            sess.next_try
                                .insert(key.clone(), now + Duration::from_secs(1));
                            continue;
                        }
                    }
                };
                let part = self
                    .data_dir
                    .join("sessions")
                    .join(id)
                    .join(".partial")
                    .join(format!("{}-a{}", key.1, key.2))
                    .join(&f.name);
                start.push(Job {
                    session: id.clone(),
                    key: key.clone(),
                    node: f.node.clone(),
                    source,
                    part,
                    size: f.size,
                    sha256: f.sha256.clone(),
                });
            }
        }
        for job in start {
            self.in_flight.insert(job.key.clone(), job.session.clone());
            *self.per_node.entry(job.node.clone()).or_insert(0) += 1;
            let tx = tx.clone();
            let token = self.token.clone();
            tokio::task::spawn_blocking(move || {
                let outcome = transfer(&job, &token);
                let _ = tx.blocking_send((job, outcome));
            });
        }
    }

    fn finished_job(&mut self, job: Job, outcome: Outcome) {
        if let Some(n) = self.per_node.get_mut(&job.node) {
            *n = n.saturating_sub(1);
        }
        let still = self.in_flight.remove(&job.key).is_some();
        let Some(sess) = self.sessions.get_mut(&job.session) else {
            return;
        };
        let Some(f) = sess.files.get_mut(&job.key).filter(|_| still) else {
            // The range is no longer produced: what was fetched goes.
            let _ = std::fs::remove_file(&job.part);
            return;
        };
        f.tries += 1;
        sess.dirty = true;
        let backoff = |tries: u32| {
            Duration::from_millis(500u64.saturating_mul(1 << tries.min(10))).min(MAX_BACKOFF)
        };
        match outcome {
            Outcome::Done => {
                let dest = self.data_dir.join(output_rel(&job.session)).join(&f.name);
                let placed = dest
                    .parent()
                    .map_or(Ok(()), std::fs::create_dir_all)
                    .and_then(|_| std::fs::rename(&job.part, &dest));
                match placed {
                    Ok(()) => {
                        f.state = CollectState::Collected;
                        f.collected_ms = Some(unix_ms());
                        // What delayed it stays said.
                        f.error = f.error.take().map(|e| format!("collected after: {e}"));
                        metrics::counter!(m::COLLECTED_FILES, "result" => "collected").increment(1);
                        if let Source::Remote { addr, rel } = &job.source {
                            let (addr, rel, token) =
                                (addr.clone(), rel.clone(), self.token.clone());
                            tokio::task::spawn_blocking(move || {
                                let url =
                                    crate::data_plane::url(&addr, &format!("/v1/release/{rel}"));
                                // Whether the request failed on its way
                                // (no answer at all).
                                let lost = || {
                                    matches!(
                                        crate::data_plane::agent()
                                            .post(&url)
                                            .set("Authorization", &format!("Bearer {token}"))
                                            .call(),
                                        Err(ureq::Error::Transport(_))
                                    )
                                };
                                // A pooled connection the node closed while
                                // idle fails before the request is read: once
                                // more, on a new one (a release is idempotent).
                                if lost() {
                                    lost();
                                }
                            });
                        }
                    }
                    Err(e) => {
                        f.error = Some(format!("cannot place `{}`: {e}", dest.display()));
                        sess.next_try
                            .insert(job.key.clone(), Instant::now() + backoff(f.tries));
                    }
                }
            }
            Outcome::Mismatch(why) | Outcome::Missing(why) => {
                let n = sess.mismatches.entry(job.key.clone()).or_insert(0);
                *n += 1;
                let n = *n;
                let result = if n >= MAX_MISMATCH_TRIES {
                    "failed"
                } else {
                    "mismatch"
                };
                metrics::counter!(m::COLLECTED_FILES, "result" => result).increment(1);
                warn!(node_id = %self.node, session = %job.session, file = %f.name, from = %f.node, tries = n, "{why}");
                if n >= MAX_MISMATCH_TRIES {
                    f.state = CollectState::Failed;
                    f.error = Some(format!("{why} ({n} tries); not merged"));
                } else {
                    f.error = Some(why);
                    sess.next_try
                        .insert(job.key.clone(), Instant::now() + backoff(f.tries));
                }
            }
            Outcome::Unreachable(why) => {
                if f.state != CollectState::Uncollected {
                    metrics::counter!(m::COLLECTED_FILES, "result" => "unreachable").increment(1);
                }
                f.state = CollectState::Uncollected;
                f.error = Some(why);
                sess.next_try
                    .insert(job.key.clone(), Instant::now() + backoff(f.tries));
            }
            Outcome::Other(why) => {
                f.error = Some(why);
                sess.next_try
                    .insert(job.key.clone(), Instant::now() + backoff(f.tries));
            }
        }
    }

    /// Write the state of every session that changed.
    fn persist(&mut self) {
        for (id, sess) in &mut self.sessions {
            if !std::mem::take(&mut sess.dirty) {
                continue;
            }
            let c = sess.summary(&self.node, id);
            if c.settled && !sess.settled_logged {
                sess.settled_logged = true;
                info!(node_id = %self.node, session = %id, collected = c.collected, failed = c.failed, conflicts = c.conflicts, dir = %c.dir, "session outputs collected");
            } else if !c.settled {
                sess.settled_logged = false;
            }
            let Some(path) = state_path(&self.data_dir, id) else {
                continue;
            };
            let bytes = match serde_json::to_vec_pretty(&c) {
                Ok(b) => b,
                Err(_) => continue,
            };
            if let Err(e) = write_atomic(&path, &bytes) {
                warn!(node_id = %self.node, session = %id, error = %e, "cannot write the collection state; tried again");
                sess.dirty = true;
            }
            // The manifest on disk says it too, once the session is over.
            // The manifest on disk says it too once the session is over
            // (at most every few seconds until it is settled).
            if sess.finished
                && (c.settled
                    || sess
                        .amended
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(5)))
            {
                sess.amended = Some(Instant::now());
                crate::node_io::amend_collection(&self.data_dir, id, &c);
            }
        }
    }
}

/// Fetch one file into its `.part`, verified (blocking).
fn transfer(job: &Job, token: &str) -> Outcome {
    if let Some(dir) = job.part.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Outcome::Other(format!("cannot create `{}`: {e}", dir.display()));
        }
    }
    let got = match &job.source {
        Source::Local(path) => copy_local(path, &job.part),
        Source::Remote { addr, rel } => fetch_remote(addr, rel, token, &job.part, job.size),
    };
    let (size, sha) = match got {
        Ok(v) => v,
        Err(o) => return o,
    };
    if size != job.size || sha != job.sha256 {
        let _ = std::fs::remove_file(&job.part);
        let what = job.part.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        return Outcome::Mismatch(format!(
            "`{what}` from node `{}` does not match the manifest: expected {} bytes with sha256 {}, got {size} bytes with sha256 {sha}",
            job.node, job.size, job.sha256
        ));
    }
    Outcome::Done
}

/// Hash what `r` yields into `h`, writing it to `w` too.
fn pump(r: &mut impl Read, w: &mut impl Write, h: &mut Sha256) -> std::io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut n = 0u64;
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

/// A file of this node: a hard link where the disk allows (no second
/// copy), else a copy; hashed either way.
fn copy_local(src: &Path, part: &Path) -> Result<(u64, String), Outcome> {
    let _ = std::fs::remove_file(part);
    match std::fs::symlink_metadata(src) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(Outcome::Missing(format!(
                "`{}` is not a regular file",
                src.display()
            )))
        }
        Err(e) => {
            return Err(Outcome::Missing(format!(
                "cannot read `{}`: {e}",
                src.display()
            )))
        }
    }
    if std::fs::hard_link(src, part).is_ok() {
        return crate::outputs::sha256_file(part).map_err(|e| Outcome::Other(e.to_string()));
    }
    let mut r = std::fs::File::open(src)
        .map_err(|e| Outcome::Missing(format!("cannot read `{}`: {e}", src.display())))?;
    let mut w = std::fs::File::create(part)
        .map_err(|e| Outcome::Other(format!("cannot write `{}`: {e}", part.display())))?;
    let mut h = Sha256::new();
    let n = pump(&mut r, &mut w, &mut h).map_err(|e| Outcome::Other(e.to_string()))?;
    Ok((n, crate::outputs::hex(&h.finalize())))
}

/// A file of another node, resumed from what `part` holds already.
fn fetch_remote(
    addr: &str,
    rel: &str,
    token: &str,
    part: &Path,
    size: u64,
) -> Result<(u64, String), Outcome> {
    let io = |e: std::io::Error| Outcome::Other(format!("`{}`: {e}", part.display()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(part)
        .map_err(io)?;
    let mut have = f.metadata().map_err(io)?.len();
    if have > size {
        f.set_len(0).map_err(io)?;
        have = 0;
    }
    // What is there already counts: hash it, then ask for the rest.
    let mut h = Sha256::new();
    f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    pump(&mut (&mut f).take(have), &mut std::io::sink(), &mut h).map_err(io)?;
    let url = crate::data_plane::url(addr, &format!("/v1/files/{rel}"));
    let resp = crate::data_plane::agent()
        .get(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .set("Range", &format!("bytes={have}-"))
        .call();
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(404, r)) => {
            return Err(Outcome::Missing(format!(
                "node's data plane at `{addr}` does not have `{rel}`: {}",
                r.into_string().unwrap_or_default().trim()
            )))
        }
        Err(ureq::Error::Status(code, r)) => {
            return Err(Outcome::Unreachable(format!(
                "data plane at `{addr}` answered {code}: {}",
                crate::config::clip(r.into_string().unwrap_or_default().trim(), 300)
            )))
        }
        Err(e) => return Err(Outcome::Unreachable(format!("data plane at `{addr}`: {e}"))),
    };
    if resp.status() == 200 && have > 0 {
        // The whole file came back: start over.
        f.set_len(0).map_err(io)?;
        h = Sha256::new();
        have = 0;
    }
    f.seek(std::io::SeekFrom::Start(have)).map_err(io)?;
    let received = metrics::counter!(m::DATA_PLANE_BYTES, "direction" => "received");
    let mut reader = resp.into_reader().take(size - have + 1);
    match pump(&mut reader, &mut f, &mut h) {
        Ok(n) => {
            received.increment(n);
            Ok((have + n, crate::outputs::hex(&h.finalize())))
        }
        // Cut off mid-way: what arrived stays in `part` for the next try.
        Err(e) => Err(Outcome::Unreachable(format!(
            "transfer from `{addr}` cut off: {e}"
        ))),
    }
}
