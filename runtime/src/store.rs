//! The embedded, crash-safe stores under `data_dir` (docs/design/durability.md), on
//! SQLite in WAL mode:
//!
//! - `master.db`: the master's event log ([`EventLog`]) and its metadata;
//! - `outbox.db`: a worker's unacknowledged reports ([`OutboxLog`]).
//!
//! A file is used only if it is an orch store of this kind, of this format,
//! written by this version of orch, passes SQLite's own check, has a
//! write-ahead log that is whole (see [`check_wal`]) and replays; anything
//! else is refused with an error naming the file, and no byte of the store,
//! its `-wal` or its `-shm` changes. Every check, the replay included, reads
//! a view that cannot write: the file itself opened immutable when it has no
//! write-ahead log, else a copy of it and its log in a folder of its own
//! under `data_dir` (SQLite applies a log by writing). Only a store that
//! passed is opened for writing. A disk too full to copy the store, or to
//! open it, is said to be full, not damaged. A new store is created under a
//! temporary name and renamed into place, so a crash during creation never
//! leaves a half-made store behind.

use std::path::{Path, PathBuf};

use orch_actors::store::{EventLog, OutboxLog, StoreFault, StoreMeta};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// `PRAGMA application_id` of every orch store ("orch").
const APPLICATION_ID: i64 = 0x6f72_6368;
/// `PRAGMA user_version`: the layout of the tables.
const FORMAT: i64 = 1;
/// The orch version that wrote a store: events replay only under the same code.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Page size of a new store (SQLite's default, stated). The master writes a
/// group of a few hundred events (tens of KiB) every 2 ms under load, and
/// SQLite writes each page to the write-ahead log with two system calls:
/// a commit takes 0.34 ms with 1 KiB pages, 0.25 ms with 4 KiB, 0.23 ms with
/// 16 KiB; a small commit writes at least a page, so 16 KiB would write four
/// times more log than 4 KiB under a light load (docs/benchmarks/history.md,
/// "Assignments before their commit").
const PAGE_SIZE: u32 = 4096;
/// How long a write waits for a checkpoint holding the file.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How much a commit survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The process dying at any moment (kill -9, OOM, panic) loses nothing.
    /// A power loss may roll back the last commits, never damages the store,
    /// and never lets an ID be issued twice (ID reservations are synced).
    Process,
    /// Every commit is synced to disk before the master acts on it.
    Power,
    /// No store: a master restart loses every session (benchmarks, throwaway clusters).
    Memory,
}

impl Durability {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "process" => Some(Self::Process),
            "power" => Some(Self::Power),
            "memory" => Some(Self::Memory),
            _ => None,
        }
    }
}

/// A store that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the store `{path}`: {what}")]
pub struct StoreError {
    pub path: PathBuf,
    pub what: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Master,
    Outbox,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Master => "master",
            Kind::Outbox => "outbox",
        }
    }

    fn schema(self) -> &'static str {
        match self {
            Kind::Master => {
                "CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
                 INSERT INTO meta (key, value) VALUES ('id_reserved', 0), ('last_epoch', 0);"
            }
            Kind::Outbox => "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);",
        }
    }
}

fn err(path: &Path, what: impl Into<String>) -> StoreError {
    StoreError {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// A store that passed every check, seen through a connection that cannot
/// change it; [`Checked::writable`] opens it for writing.
struct Checked {
    path: PathBuf,
    view: Connection,
    /// The copy `view` reads, when the store had a write-ahead log.
    _copy: Option<tempfile::TempDir>,
    /// Held (an exclusive `flock` on the file) until the store is dropped.
    lock: std::fs::File,
}

impl Checked {
    /// Open the store itself for writing (the view goes).
    fn writable(self, durability: Durability) -> Result<(Connection, std::fs::File), StoreError> {
        let path = &self.path;
        let dir = path.parent().unwrap_or(Path::new("."));
        let failed =
            |what: &str, e: rusqlite::Error| err(path, full_or(dir, format!("cannot {what}: {e}")));
        drop(self.view);
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .map_err(|e| failed("open it", e))?;
        // A checkpoint running on another connection makes a commit wait, never fail.
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| failed("open it", e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| failed("enable its write-ahead log", e))?;
        conn.pragma_update(None, "synchronous", sync_of(durability))
            .map_err(|e| failed("set `synchronous`", e))?;
        Ok((conn, self.lock))
    }
}

/// `what`, or that the disk holding `dir` is full when it is: a full disk
/// must not read as a damaged store.
fn full_or(dir: &Path, what: String) -> String {
    use std::io::Write;
    let probe = dir.join(".orch-space-probe");
    let full = std::fs::File::create(&probe)
        .and_then(|mut f| f.write_all(&[0u8; 64 * 1024]).and_then(|_| f.sync_all()))
        .err()
        .is_some_and(|e| e.raw_os_error() == Some(libc::ENOSPC));
    let _ = std::fs::remove_file(&probe);
    if full {
        format!(
            "the disk holding `{}` is full ({what}); the store is not damaged: free some space and start again",
            dir.display()
        )
    } else {
        what
    }
}

/// Take the file for this process alone: a second node on the same
/// `data_dir` is refused (SQLite's own locks are per transaction).
fn lock(path: &Path) -> Result<std::fs::File, StoreError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(|e| err(path, format!("cannot read it: {e}")))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(err(
            path,
            "it is in use by another process (another orch node with the same `node.data_dir`?)",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(err(path, format!("cannot lock it: {e}"))),
    }
}

/// Open (or create) the store at `path` and check it without writing to it,
/// refusing anything that is not ours or not whole.
fn open(path: &Path, kind: Kind) -> Result<Checked, StoreError> {
    if !path.exists() {
        create(path, kind)?;
    }
    check_header(path)?;
    let lock = lock(path)?;
    let wal = wal_path(path);
    let has_log = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    if has_log {
        check_wal(&wal).map_err(|what| {
            err(
                path,
                format!(
                    "its write-ahead log `{}` is damaged: {what}; both files are left as they are",
                    wal.display()
                ),
            )
        })?;
    }
    let (view, copy) = if has_log {
        let (conn, copy) = view_of_copy(path)?;
        (conn, Some(copy))
    } else {
        let uri = format!("file:{}?immutable=1", uri_path(path));
        let conn = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| err(path, format!("cannot read it: {e}")))?;
        (conn, None)
    };
    validate(&view, path, kind)?;
    Ok(Checked {
        path: path.to_path_buf(),
        view,
        _copy: copy,
        lock,
    })
}

fn wal_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", path.display()))
}

/// `path` for an SQLite URI (`%`, `?` and `#` escaped).
fn uri_path(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23")
}

/// A store and its write-ahead log copied into a new folder of
/// `data_dir`, opened there: SQLite applies the log to the copy, not to the
/// store. The folder goes when the returned guard does.
fn view_of_copy(path: &Path) -> Result<(Connection, tempfile::TempDir), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default();
    let copy = tempfile::Builder::new()
        .prefix(".orch-check-")
        .tempdir_in(dir)
        .map_err(|e| {
            err(
                path,
                full_or(dir, format!("cannot make a folder to check it in: {e}")),
            )
        })?;
    let to = copy.path().join(name);
    std::fs::copy(path, &to)
        .and_then(|_| std::fs::copy(wal_path(path), wal_path(&to)))
        .map_err(|e| {
            err(
                path,
                full_or(dir, format!("cannot copy it to check it: {e}")),
            )
        })?;
    let conn = Connection::open_with_flags(&to, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| err(path, full_or(dir, format!("cannot read it: {e}"))))?;
    Ok((conn, copy))
}

/// Whether `conn` reads an orch store of `kind`, of this format and version,
/// that SQLite finds whole.
fn validate(conn: &Connection, path: &Path, kind: Kind) -> Result<(), StoreError> {
    let app: i64 = pragma(conn, path, "application_id")?;
    if app != APPLICATION_ID {
        return Err(err(
            path,
            format!("it is an SQLite database not written by orch (application_id `{app:#x}`); refusing to touch it, move it away or set another `node.data_dir`"),
        ));
    }
    let format: i64 = pragma(conn, path, "user_version")?;
    if format != FORMAT {
        return Err(err(
            path,
            format!("it has store format `{format}`, this orch reads format `{FORMAT}`"),
        ));
    }
    let check: String = pragma(conn, path, "quick_check")?;
    if check != "ok" {
        return Err(err(path, format!("it is damaged: {check}")));
    }
    let meta = |key: &str| -> Result<Option<String>, StoreError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
            r.get::<_, String>(0)
        })
        .optional()
        .map_err(|e| {
            err(
                path,
                format!("it is damaged: cannot read `meta.{key}`: {e}"),
            )
        })
    };
    let found = meta("kind")?.unwrap_or_default();
    if found != kind.name() {
        return Err(err(
            path,
            format!(
                "it is an orch `{found}` store, expected a `{}` store",
                kind.name()
            ),
        ));
    }
    let version = meta("orch_version")?.unwrap_or_default();
    if version != VERSION {
        return Err(err(
            path,
            format!("it was written by orch `{version}`, this is orch `{VERSION}`: its ledger replays only under the version that wrote it; finish its sessions with orch `{version}` or move the file away"),
        ));
    }
    Ok(())
}

/// One 32-bit word of a write-ahead log, big-endian as SQLite writes them.
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// SQLite's write-ahead-log checksum of `data` (a multiple of 8 bytes),
/// continuing from `s`; `big` is the byte order the log's magic names.
fn wal_checksum(mut s: (u32, u32), data: &[u8], big: bool) -> (u32, u32) {
    for w in data.chunks_exact(8) {
        let (x0, x1) = if big {
            (be32(w, 0), be32(w, 4))
        } else {
            (
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_le_bytes([w[4], w[5], w[6], w[7]]),
            )
        };
        s.0 = s.0.wrapping_add(x0).wrapping_add(s.1);
        s.1 = s.1.wrapping_add(x1).wrapping_add(s.0);
    }
    s
}

/// Whether a write-ahead log is whole: SQLite reads a log up to its first
/// frame that fails its checksum and takes that as the end, which is right
/// for a write torn by a crash, whose frames end there. A frame that fails
/// while later frames of the same log carry on from it (their own checksums
/// hold, one after the other, up to a commit) is damage: the commits after
/// it would be dropped without a word. `Err` says where.
pub fn check_wal(wal: &Path) -> Result<(), String> {
    let bytes = std::fs::read(wal).map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() < 32 {
        return Ok(()); // a header never written: an empty log
    }
    let magic = be32(&bytes, 0);
    if magic & !1 != 0x377f_0682 {
        return Err(format!(
            "it does not start like a write-ahead log (magic `{magic:#x}`)"
        ));
    }
    let big = magic & 1 == 1;
    let page = be32(&bytes, 8) as usize;
    if !(512..=65536).contains(&page) || !page.is_power_of_two() {
        return Err(format!("its header names a page size of {page} bytes"));
    }
    let salts = (be32(&bytes, 16), be32(&bytes, 20));
    let mut sum = wal_checksum((0, 0), &bytes[..24], big);
    if sum != (be32(&bytes, 24), be32(&bytes, 28)) {
        return Ok(()); // a header torn by a crash: SQLite ignores the log
    }
    let frame = 24 + page;
    let frames = (bytes.len() - 32) / frame;
    let mut first_bad: Option<usize> = None;
    for k in 0..frames {
        let at = 32 + k * frame;
        let head = &bytes[at..at + 24];
        if (be32(head, 8), be32(head, 12)) != salts {
            // A frame of an earlier pass over the log: it ends here.
            break;
        }
        let stored = (be32(head, 16), be32(head, 20));
        let computed = wal_checksum(
            wal_checksum(sum, &head[..8], big),
            &bytes[at + 24..at + frame],
            big,
        );
        match first_bad {
            None if computed == stored => sum = stored,
            None => {
                first_bad = Some(k);
                sum = stored;
            }
            Some(bad) => {
                if computed != stored {
                    break; // torn after the bad frame too: nothing follows it
                }
                sum = stored;
                if be32(head, 4) != 0 {
                    return Err(format!(
                        "frame {} of {frames} fails its checksum, and the log goes on after it up to a commit at frame {}",
                        bad + 1,
                        k + 1
                    ));
                }
            }
        }
    }
    Ok(())
}

/// SQLite's `synchronous` for a durability: with the write-ahead log,
/// `NORMAL` syncs only at checkpoints (a power loss may roll back the last
/// commits, never damages the file), `FULL` at every commit.
fn sync_of(durability: Durability) -> &'static str {
    if durability == Durability::Power {
        "FULL"
    } else {
        "NORMAL"
    }
}

fn pragma<T: rusqlite::types::FromSql>(
    conn: &Connection,
    path: &Path,
    name: &str,
) -> Result<T, StoreError> {
    conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
        .map_err(|e| err(path, format!("it is damaged (`PRAGMA {name}`: {e})")))
}

/// Refuse a file that does not even start like an SQLite database, before
/// SQLite could treat an empty file as a new database.
fn check_header(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let mut head = [0u8; 16];
    let mut f = std::fs::File::open(path).map_err(|e| err(path, format!("cannot read it: {e}")))?;
    let n = f
        .read(&mut head)
        .map_err(|e| err(path, format!("cannot read it: {e}")))?;
    if n < head.len() || &head != b"SQLite format 3\0" {
        return Err(err(
            path,
            "it is not an orch store (no SQLite header: empty, truncated or another kind of file); refusing to touch it",
        ));
    }
    Ok(())
}

/// Make a new store under a temporary name, then rename it into place.
fn create(path: &Path, kind: Kind) -> Result<(), StoreError> {
    let tmp = path.with_extension("db.new");
    let _ = std::fs::remove_file(&tmp);
    let conn = Connection::open(&tmp).map_err(|e| err(&tmp, format!("cannot create it: {e}")))?;
    let sql = format!(
        "PRAGMA page_size = {PAGE_SIZE};
         PRAGMA application_id = {APPLICATION_ID};
         PRAGMA user_version = {FORMAT};
         BEGIN;
         CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY NOT NULL) STRICT;
         INSERT INTO meta (key, value) VALUES ('kind', '{}'), ('orch_version', '{VERSION}');
         {}
         COMMIT;",
        kind.name(),
        kind.schema()
    );
    conn.execute_batch(&sql)
        .map_err(|e| err(&tmp, format!("cannot create it: {e}")))?;
    conn.close()
        .map_err(|(_, e)| err(&tmp, format!("cannot create it: {e}")))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| err(&tmp, format!("cannot sync it: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| err(path, format!("cannot create it: {e}")))?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Commits between two nudges of the checkpointer.
const COMMITS_PER_CHECKPOINT: u32 = 512;
/// A write-ahead log longer than this is emptied: the checkpointer copies
/// it into the database, then the writer copies the little written since and
/// starts the log again from its beginning.
const WAL_LIMIT: u64 = 64 << 20;

/// Copies the master's write-ahead log into the database on a thread and
/// connection of its own, so that commits never wait for a checkpoint's
/// syncs. It stops when dropped.
///
/// Under a steady load the writer never finds the log fully copied, so the
/// log would never start again; and a blocking checkpoint from this thread
/// (`TRUNCATE`) makes both connections take turns at SQLite's busy handler,
/// which stalled commits for 180 to 330 ms. Instead, once a copy leaves the
/// log over [`WAL_LIMIT`], this thread raises `restart_due` and copies
/// nothing more until the writer has run a `TRUNCATE` checkpoint itself,
/// between two commits: only the frames written since this thread's copy
/// are left to copy, and nobody else holds the file.
struct Checkpointer {
    nudge: Option<std::sync::mpsc::SyncSender<()>>,
    restart_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path, sync: &str, wal_limit: u64) -> Result<Self, StoreError> {
        use std::sync::atomic::Ordering;
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .and_then(|c| {
                c.busy_timeout(BUSY_TIMEOUT)?;
                // The checkpoint syncs as this connection's `synchronous` says.
                c.pragma_update(None, "synchronous", sync)?;
                Ok(c)
            })
            .map_err(|e| err(path, format!("cannot open it for checkpoints: {e}")))?;
        let wal = PathBuf::from(format!("{}-wal", path.display()));
        let shown = path.display().to_string();
        let restart_due = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let due = restart_due.clone();
        let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("orch-checkpoint".into())
            .spawn(move || {
                while nudged.recv().is_ok() {
                    if due.load(Ordering::Acquire) {
                        // The writer restarts the log first.
                        continue;
                    }
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(store = %shown, error = %e, "checkpoint failed; the write-ahead log keeps the commits");
                    }
                    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > wal_limit) {
                        due.store(true, Ordering::Release);
                    }
                }
            })
            .map_err(|e| err(path, format!("cannot start its checkpoint thread: {e}")))?;
        Ok(Self {
            nudge: Some(nudge),
            restart_due,
            thread: Some(thread),
        })
    }

    fn nudge(&self) {
        if let Some(n) = &self.nudge {
            // Full: a checkpoint is due already.
            let _ = n.try_send(());
        }
    }

    /// Whether the writer should restart the log now (and the thread waits for it).
    fn restart_due(&self) -> bool {
        self.restart_due.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The writer has restarted the log (or tried): copies go on.
    fn restarted(&self) {
        self.restart_due
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.nudge = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The master's event log in `data_dir/master.db`.
pub struct SqliteEventLog {
    /// The checked store, until it is opened for writing.
    checked: Option<Checked>,
    /// The store open for writing, with its checkpoint thread.
    writer: Option<(Connection, Checkpointer)>,
    path: PathBuf,
    durability: Durability,
    wal_limit: u64,
    /// The metadata as last written: rewritten only when it changes.
    meta: Option<StoreMeta>,
    /// Commits since the checkpointer was last nudged.
    commits: u32,
    /// Dropped last: other processes stay out until the store is closed.
    _lock: Option<std::fs::File>,
}

impl SqliteEventLog {
    /// Open and check the store, writing nothing: [`EventLog::replay`]
    /// reads the checked view, and the store is opened for writing by
    /// [`SqliteEventLog::writable`] (or the first append).
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(data_dir, durability, WAL_LIMIT)
    }

    fn open_with(
        data_dir: &Path,
        durability: Durability,
        wal_limit: u64,
    ) -> Result<Self, StoreError> {
        let path = data_dir.join("master.db");
        let checked = open(&path, Kind::Master)?;
        Ok(Self {
            checked: Some(checked),
            writer: None,
            path,
            durability,
            wal_limit,
            meta: None,
            commits: 0,
            _lock: None,
        })
    }

    /// Open the checked store for writing (once the replay found it whole).
    pub fn writable(&mut self) -> Result<(), StoreError> {
        let Some(checked) = self.checked.take() else {
            return Ok(());
        };
        let (conn, lock) = checked.writable(self.durability)?;
        // Checkpoints run on their own thread.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| err(&self.path, format!("cannot set `wal_autocheckpoint`: {e}")))?;
        let checkpointer =
            Checkpointer::start(&self.path, sync_of(self.durability), self.wal_limit)?;
        self.writer = Some((conn, checkpointer));
        self._lock = Some(lock);
        Ok(())
    }

    fn conn(&self) -> &Connection {
        match (&self.writer, &self.checked) {
            (Some((c, _)), _) => c,
            (None, Some(checked)) => &checked.view,
            (None, None) => unreachable!("a store is checked or open for writing"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copy what the checkpointer has not, and start the write-ahead log
    /// again from its beginning (see [`Checkpointer`]). A failure only
    /// leaves the log longer: the commits are in it.
    fn restart_log(&mut self) {
        let Some((conn, checkpointer)) = &self.writer else {
            return;
        };
        let started = std::time::Instant::now();
        let r = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        });
        checkpointer.restarted();
        match r {
            Ok((0, _)) => {
                tracing::debug!(store = %self.path.display(), ms = started.elapsed().as_secs_f64() * 1e3, "write-ahead log restarted")
            }
            Ok((_, frames)) => {
                tracing::warn!(store = %self.path.display(), frames, "write-ahead log not restarted: a checkpoint is busy; the next try follows the next copy")
            }
            Err(e) => {
                tracing::warn!(store = %self.path.display(), error = %e, "write-ahead log not restarted; the log keeps the commits")
            }
        }
    }

    fn append_inner(&mut self, batch: &[u8], meta: &StoreMeta) -> Result<(), rusqlite::Error> {
        let Some((conn, _)) = self.writer.as_mut() else {
            return Err(rusqlite::Error::InvalidQuery);
        };
        if self.meta.as_ref() == Some(meta) {
            // One statement is a transaction of its own: no BEGIN and COMMIT to run.
            if !batch.is_empty() {
                let mut ins = conn.prepare_cached("INSERT INTO events (body) VALUES (?1)")?;
                ins.execute([batch])?;
            }
            return Ok(());
        }
        let tx = conn.transaction()?;
        {
            if !batch.is_empty() {
                let mut ins = tx.prepare_cached("INSERT INTO events (body) VALUES (?1)")?;
                ins.execute([batch])?;
            }
            if self.meta.as_ref() != Some(meta) {
                let mut set = tx.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?;
                set.execute(params!["id_reserved", meta.id_reserved as i64])?;
                set.execute(params!["last_epoch", meta.last_epoch as i64])?;
            }
        }
        tx.commit()?;
        self.meta = Some(*meta);
        Ok(())
    }
}

/// A database error as a store fault.
fn backend(e: impl std::fmt::Display) -> StoreFault {
    StoreFault::Backend(e.to_string())
}

impl EventLog for SqliteEventLog {
    fn replay(
        &mut self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), StoreFault>,
    ) -> Result<Option<StoreMeta>, StoreFault> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT body FROM events ORDER BY seq")
            .map_err(backend)?;
        let mut rows = stmt.query([]).map_err(backend)?;
        let mut any = false;
        while let Some(row) = rows.next().map_err(backend)? {
            let body = row.get_ref(0).map_err(backend)?;
            let bytes = body
                .as_blob()
                .map_err(|_| StoreFault::Damaged("an event is not a blob".into()))?;
            each(bytes)?;
            any = true;
        }
        let get = |key: &str| -> Result<u64, StoreFault> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .map(|v| v as u64)
            .map_err(|e| StoreFault::Damaged(format!("cannot read `meta.{key}`: {e}")))
        };
        let meta = StoreMeta {
            id_reserved: get("id_reserved")?,
            last_epoch: get("last_epoch")?,
        };
        drop(rows);
        drop(stmt);
        self.meta = Some(meta);
        Ok((any || meta != StoreMeta::default()).then_some(meta))
    }

    fn append(&mut self, batch: &[u8], meta: &StoreMeta, sync: bool) -> Result<(), StoreFault> {
        self.writable().map_err(backend)?;
        let full = sync && self.durability != Durability::Power;
        let set_sync = |log: &Self, mode: &str| -> Result<(), StoreFault> {
            log.conn()
                .pragma_update(None, "synchronous", mode)
                .map_err(backend)
        };
        if full {
            set_sync(self, "FULL")?;
        }
        let r = self.append_inner(batch, meta);
        if full {
            let _ = set_sync(self, "NORMAL");
        }
        r.map_err(|e| StoreFault::Backend(format!("`{}`: {e}", self.path.display())))?;
        self.commits += 1;
        let (restart, nudge) = match &self.writer {
            Some((_, cp)) => (cp.restart_due(), self.commits >= COMMITS_PER_CHECKPOINT),
            None => (false, false),
        };
        if restart {
            self.restart_log();
        }
        if nudge {
            self.commits = 0;
            if let Some((_, cp)) = &self.writer {
                cp.nudge();
            }
        }
        Ok(())
    }
}

/// A worker's outbox in `data_dir/outbox.db`.
pub struct SqliteOutbox {
    conn: Connection,
    path: PathBuf,
    /// What it held when opened, every entry decoded once (a damaged entry
    /// refuses the outbox before it is opened for writing).
    loaded: Option<Vec<(u64, Vec<u8>)>>,
    /// Dropped last: other processes stay out until the outbox is closed.
    _lock: std::fs::File,
}

impl SqliteOutbox {
    /// Open the outbox: check it and read what it holds without writing,
    /// then open it for writing.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let path = data_dir.join("outbox.db");
        let checked = open(&path, Kind::Outbox)?;
        let loaded =
            load_from(&checked.view).map_err(|e| err(&path, format!("it is damaged: {e}")))?;
        for (seq, bytes) in &loaded {
            orch_actors::store::decode_report(bytes)
                .map_err(|e| err(&path, format!("it is damaged: entry `{seq}`: {e}")))?;
        }
        let (conn, _lock) = checked.writable(durability)?;
        Ok(Self {
            conn,
            path,
            loaded: Some(loaded),
            _lock,
        })
    }

    fn write_inner(&mut self, add: &[(u64, Vec<u8>)], remove: &[u64]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut ins =
                tx.prepare_cached("INSERT OR REPLACE INTO outbox (seq, body) VALUES (?1, ?2)")?;
            for (seq, body) in add {
                ins.execute(params![*seq as i64, body])?;
            }
            let mut del = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for seq in remove {
                del.execute([*seq as i64])?;
            }
        }
        tx.commit()
    }
}

/// Every entry of an outbox, in order.
fn load_from(conn: &Connection) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut stmt = conn
        .prepare("SELECT seq, body FROM outbox ORDER BY seq")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
        })
        .map_err(|e| e.to_string())?;
    rows.collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())
}

impl OutboxLog for SqliteOutbox {
    fn load(&mut self) -> Result<Vec<(u64, Vec<u8>)>, StoreFault> {
        match self.loaded.take() {
            Some(entries) => Ok(entries),
            None => load_from(&self.conn)
                .map_err(|e| StoreFault::Backend(format!("`{}`: {e}", self.path.display()))),
        }
    }

    fn write(&mut self, add: &[(u64, Vec<u8>)], remove: &[u64]) -> Result<(), StoreFault> {
        self.write_inner(add, remove)
            .map_err(|e| StoreFault::Backend(format!("`{}`: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(r: u64) -> StoreMeta {
        StoreMeta {
            id_reserved: r,
            last_epoch: 3,
        }
    }

    #[test]
    fn events_come_back_in_order_with_the_last_meta() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SqliteEventLog::open(dir.path(), Durability::Process).unwrap();
        log.append(&[1, 2], &meta(10), false).unwrap();
        log.append(&[3], &meta(20), true).unwrap();
        drop(log);
        let mut log = SqliteEventLog::open(dir.path(), Durability::Process).unwrap();
        let mut seen = Vec::new();
        let m = log
            .replay(&mut |b| {
                seen.push(b.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, vec![vec![1, 2], vec![3]]);
        assert_eq!(m, Some(meta(20)));
    }

    #[test]
    fn a_store_in_use_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let held = SqliteEventLog::open(dir.path(), Durability::Process).unwrap();
        let e = SqliteEventLog::open(dir.path(), Durability::Process)
            .err()
            .expect("refused while held");
        let text = e.to_string();
        assert!(
            text.contains("master.db") && text.contains("in use by another process"),
            "{text}"
        );
        drop(held);
        SqliteEventLog::open(dir.path(), Durability::Process).expect("free again once closed");
        let _outbox = SqliteOutbox::open(dir.path(), Durability::Process).unwrap();
        let e = SqliteOutbox::open(dir.path(), Durability::Process)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("outbox.db"), "{e}");
    }

    /// A 1,000-byte batch that says which it is.
    fn row(i: u32) -> Vec<u8> {
        let mut r = i.to_le_bytes().to_vec();
        r.resize(1000, 0xab);
        r
    }

    /// Every batch of the master store in `dir`, reopened.
    fn replayed(dir: &Path) -> Vec<Vec<u8>> {
        let mut log = SqliteEventLog::open(dir, Durability::Process).unwrap();
        let mut seen = Vec::new();
        log.replay(&mut |b| {
            seen.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        seen
    }

    #[test]
    fn checkpoints_on_their_own_thread_keep_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SqliteEventLog::open(dir.path(), Durability::Process).unwrap();
        let n = COMMITS_PER_CHECKPOINT * 20;
        for i in 0..n {
            log.append(&row(i), &meta(10), false).unwrap();
        }
        // Wait for the checkpointer to have copied the log into the database
        // (the database file grows past its first pages).
        let db = dir.path().join("master.db");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::fs::metadata(&db).unwrap().len() < 1 << 20 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(log);
        assert_eq!(replayed(dir.path()), (0..n).map(row).collect::<Vec<_>>());
    }

    #[test]
    fn the_writer_restarts_a_long_log_once_the_checkpointer_has_copied_it() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 256 << 10;
        let mut log = SqliteEventLog::open_with(dir.path(), Durability::Process, limit).unwrap();
        let wal = dir.path().join("master.db-wal");
        let wal_len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let mut n = 0u32;
        let mut restarts = 0;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // Keep committing until the log has been restarted twice: a commit
        // after the checkpointer flagged a long log leaves it empty.
        while restarts < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log was restarted {restarts} times in 60 s ({n} commits, log {} bytes)",
                wal_len()
            );
            let due = log.writer.as_ref().is_some_and(|(_, cp)| cp.restart_due());
            log.append(&row(n), &meta(10), false).unwrap();
            n += 1;
            if due {
                assert_eq!(
                    wal_len(),
                    0,
                    "a flagged long log is emptied by the next commit"
                );
                restarts += 1;
            }
        }
        assert!(wal_len() < 4 * limit, "the log stays near its limit");
        drop(log);
        assert_eq!(replayed(dir.path()), (0..n).map(row).collect::<Vec<_>>());
    }

    #[test]
    fn a_new_store_replays_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = SqliteEventLog::open(dir.path(), Durability::Power).unwrap();
        assert_eq!(log.replay(&mut |_| Ok(())).unwrap(), None);
    }

    #[test]
    fn foreign_and_damaged_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.db");
        for (bytes, says) in [
            (b"".to_vec(), "no SQLite header"),
            (
                b"hello, this is a text file\n".repeat(10),
                "no SQLite header",
            ),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let e = SqliteEventLog::open(dir.path(), Durability::Process)
                .err()
                .expect("refused");
            assert!(e.to_string().contains(says), "{e}");
            assert!(e.to_string().contains("master.db"), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "file left as it was");
        }
        // Another program's SQLite database.
        std::fs::remove_file(&path).unwrap();
        let c = Connection::open(&path).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        let before = std::fs::read(&path).unwrap();
        let e = SqliteEventLog::open(dir.path(), Durability::Process)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("not written by orch"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // An outbox is not a master store.
        std::fs::remove_file(&path).unwrap();
        drop(SqliteOutbox::open(dir.path(), Durability::Process).unwrap());
        std::fs::rename(dir.path().join("outbox.db"), &path).unwrap();
        let e = SqliteEventLog::open(dir.path(), Durability::Process)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("expected a `master` store"), "{e}");
    }

    /// The sha256 of a store, its log and its index (`None`: no such file).
    fn files(path: &Path) -> [Option<String>; 3] {
        use sha2::{Digest, Sha256};
        let f = |p: PathBuf| {
            std::fs::read(p)
                .ok()
                .map(|b| format!("{:x}", Sha256::digest(&b)))
        };
        [
            f(path.to_path_buf()),
            f(wal_path(path)),
            f(PathBuf::from(format!("{}-shm", path.display()))),
        ]
    }

    /// A master store in `dir` with `n` events, left as kill -9 leaves it:
    /// its last commits in the write-ahead log, which is never copied back.
    fn crashed_store(dir: &Path, n: u32) {
        let mut log = SqliteEventLog::open(dir, Durability::Process).unwrap();
        log.writable().unwrap();
        for i in 0..n {
            log.append(&row(i), &meta(10), false).unwrap();
        }
        // As if killed: the lock goes (the kernel drops it with the
        // process), no connection is closed, so nothing is checkpointed.
        drop(log._lock.take());
        std::mem::forget(log);
    }

    /// Change a crashed store with SQL, the change in its log only.
    fn change_in_log(path: &Path, sql: &str) {
        let c = Connection::open(path).unwrap();
        c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        c.execute_batch(sql).unwrap();
        std::mem::forget(c);
    }

    #[test]
    fn a_refused_store_with_a_log_is_left_byte_for_byte() {
        type Damage<'a> = &'a dyn Fn(&Path);
        let cases: [(&str, Damage, &str); 4] = [
            (
                "newer version",
                &|p| {
                    change_in_log(
                        p,
                        "UPDATE meta SET value = '99.0.0' WHERE key = 'orch_version'",
                    )
                },
                "written by orch `99.0.0`",
            ),
            (
                "newer format",
                &|p| change_in_log(p, "PRAGMA user_version = 7"),
                "store format `7`",
            ),
            (
                "truncated database",
                &|p| {
                    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
                    f.set_len(4096 * 2).unwrap();
                },
                "master.db",
            ),
            (
                "damaged log",
                &|p| {
                    // A byte of the first frames' pages flipped: the frames
                    // after it still chain on from it, up to their commits.
                    let wal = wal_path(p);
                    let mut b = std::fs::read(&wal).unwrap();
                    let page = 4096;
                    b[32 + 3 * (24 + page) + 24 + 100] ^= 0xff;
                    std::fs::write(&wal, b).unwrap();
                },
                "write-ahead log",
            ),
        ];
        for (what, damage, says) in cases {
            let dir = tempfile::tempdir().unwrap();
            crashed_store(dir.path(), 40);
            let path = dir.path().join("master.db");
            assert!(
                std::fs::metadata(wal_path(&path)).unwrap().len() > 0,
                "{what}: the commits are in the log"
            );
            damage(&path);
            let before = files(&path);
            let refused: Result<(), StoreError> =
                SqliteEventLog::open(dir.path(), Durability::Process).and_then(|mut log| {
                    let mut n = 0;
                    log.replay(&mut |_| {
                        n += 1;
                        Ok(())
                    })
                    .map_err(|e| err(&path, e.to_string()))?;
                    Err(err(&path, format!("opened with {n} events")))
                });
            let e = refused.err().unwrap().to_string();
            assert!(e.contains("master.db") && e.contains(says), "{what}: {e}");
            assert!(!e.contains("opened with"), "{what}: {e}");
            assert_eq!(files(&path), before, "{what}: every file left as it was");
            let leftovers: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().starts_with(".orch-check"))
                .collect();
            assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
        }
    }

    #[test]
    fn a_refused_outbox_with_a_log_is_left_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = SqliteOutbox::open(dir.path(), Durability::Process).unwrap();
        let report =
            orch_actors::store::encode_report(&orch_actors::protocol::ToMaster::Unregister {
                node: "n".into(),
                epoch: 1,
            });
        for seq in 0..50 {
            ob.write(&[(seq, report.clone())], &[]).unwrap();
        }
        drop(std::mem::replace(
            &mut ob._lock,
            std::fs::File::open("/dev/null").unwrap(),
        ));
        std::mem::forget(ob);
        let path = dir.path().join("outbox.db");
        change_in_log(
            &path,
            "UPDATE meta SET value = '0.0.1' WHERE key = 'orch_version'",
        );
        let before = files(&path);
        let e = SqliteOutbox::open(dir.path(), Durability::Process)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("outbox.db") && e.contains("written by orch `0.0.1`"),
            "{e}"
        );
        assert_eq!(files(&path), before);
    }

    #[test]
    fn a_crashed_store_with_a_whole_log_replays_every_event() {
        let dir = tempfile::tempdir().unwrap();
        crashed_store(dir.path(), 300);
        let path = dir.path().join("master.db");
        let before = files(&path);
        let mut log = SqliteEventLog::open(dir.path(), Durability::Process).unwrap();
        let mut seen = Vec::new();
        log.replay(&mut |b| {
            seen.push(b.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..300).map(row).collect::<Vec<_>>());
        assert_eq!(files(&path), before, "checking and replaying wrote nothing");
        log.writable().unwrap();
        log.append(&row(300), &meta(10), false).unwrap();
        drop(log);
        assert_eq!(replayed(dir.path()).len(), 301);
    }

    #[test]
    fn a_log_torn_at_its_end_is_no_damage() {
        let dir = tempfile::tempdir().unwrap();
        crashed_store(dir.path(), 40);
        let wal = wal_path(&dir.path().join("master.db"));
        let mut b = std::fs::read(&wal).unwrap();
        // The last frame half written, as a crash mid-write leaves it.
        let len = b.len() - 2000;
        b.truncate(len);
        std::fs::write(&wal, &b).unwrap();
        assert_eq!(check_wal(&wal), Ok(()));
        // Its last frame's page garbled: torn, nothing chains on after it.
        let n = b.len();
        b[n - 100] ^= 0xff;
        std::fs::write(&wal, &b).unwrap();
        assert_eq!(check_wal(&wal), Ok(()));
        assert!(replayed(dir.path()).len() < 40);
    }

    #[test]
    fn a_full_disk_is_called_full() {
        // A tiny file system of its own (root only; skipped elsewhere).
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("small");
        std::fs::create_dir(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("\n!!!!!!!! SKIPPED: cannot mount a small tmpfs here\n");
            return;
        }
        let r = std::panic::catch_unwind(|| {
            crashed_store(&mnt, 200);
            // Fill what is left.
            let mut i = 0;
            while std::fs::write(mnt.join(format!("fill{i}")), vec![0u8; 64 * 1024]).is_ok() {
                i += 1;
            }
            let _ = std::fs::write(mnt.join("last"), vec![0u8; 4096]);
            let e = SqliteEventLog::open(&mnt, Durability::Process)
                .and_then(|mut l| l.writable().map(|_| l))
                .err()
                .expect("refused on a full disk")
                .to_string();
            assert!(e.contains("is full") && e.contains("not damaged"), "{e}");
        });
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .status();
        if let Err(p) = r {
            std::panic::resume_unwind(p);
        }
    }

    #[test]
    fn outbox_entries_are_added_and_removed_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = SqliteOutbox::open(dir.path(), Durability::Process).unwrap();
        let report = |seq: u64| {
            orch_actors::store::encode_report(&orch_actors::protocol::ToMaster::Unregister {
                node: format!("n{seq}"),
                epoch: seq,
            })
        };
        ob.write(&[(5, report(5)), (6, report(6)), (7, report(7))], &[])
            .unwrap();
        ob.write(&[(8, report(8))], &[6]).unwrap();
        drop(ob);
        let mut ob = SqliteOutbox::open(dir.path(), Durability::Process).unwrap();
        let keys: Vec<u64> = ob.load().unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![5, 7, 8]);
    }
}
