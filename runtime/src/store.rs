//! The embedded, crash-safe stores under `data_dir` (SPEC §9, §5.8), on
//! SQLite in WAL mode:
//!
//! - `master.db`: the master's event log ([`EventLog`]) and its metadata;
//! - `outbox.db`: a worker's unacknowledged reports ([`OutboxLog`]).
//!
//! A file is used only if it is an orch store of this kind, of this format,
//! written by this version of orch, and passes SQLite's own check; anything
//! else is refused with an error naming the file, and nothing is written to
//! it. A new store is created under a temporary name and renamed into place,
//! so a crash during creation never leaves a half-made store behind.

use std::path::{Path, PathBuf};

use orch_actors::store::{EventLog, OutboxLog, StoreMeta};
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
/// times more log than 4 KiB under a light load (BENCHMARKS.md,
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

/// An open store: the connection, and the lock that keeps other processes out.
struct Opened {
    conn: Connection,
    /// Held (an exclusive `flock` on the file) until the store is dropped.
    _lock: std::fs::File,
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

/// Open (or create) the store at `path`, refusing anything that is not ours.
fn open(path: &Path, kind: Kind, durability: Durability) -> Result<Opened, StoreError> {
    if !path.exists() {
        create(path, kind)?;
    }
    check_header(path)?;
    let lock = lock(path)?;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| err(path, format!("cannot open it: {e}")))?;
    // A checkpoint running on another connection makes a commit wait, never fail.
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| err(path, format!("cannot open it: {e}")))?;
    let app: i64 = pragma(&conn, path, "application_id")?;
    if app != APPLICATION_ID {
        return Err(err(
            path,
            format!("it is an SQLite database not written by orch (application_id `{app:#x}`); refusing to touch it, move it away or set another `node.data_dir`"),
        ));
    }
    let format: i64 = pragma(&conn, path, "user_version")?;
    if format != FORMAT {
        return Err(err(
            path,
            format!("it has store format `{format}`, this orch reads format `{FORMAT}`"),
        ));
    }
    let check: String = pragma(&conn, path, "quick_check")?;
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
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(|e| err(path, format!("cannot enable its write-ahead log: {e}")))?;
    conn.pragma_update(None, "synchronous", sync_of(durability))
        .map_err(|e| err(path, format!("cannot set `synchronous`: {e}")))?;
    Ok(Opened { conn, _lock: lock })
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
    conn: Connection,
    path: PathBuf,
    power: bool,
    /// The metadata as last written: rewritten only when it changes.
    meta: Option<StoreMeta>,
    checkpointer: Checkpointer,
    /// Commits since the checkpointer was last nudged.
    commits: u32,
    /// Dropped last: other processes stay out until the store is closed.
    _lock: std::fs::File,
}

impl SqliteEventLog {
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        Self::open_with(data_dir, durability, WAL_LIMIT)
    }

    fn open_with(
        data_dir: &Path,
        durability: Durability,
        wal_limit: u64,
    ) -> Result<Self, StoreError> {
        let path = data_dir.join("master.db");
        let Opened { conn, _lock } = open(&path, Kind::Master, durability)?;
        // Checkpoints run on their own thread.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| err(&path, format!("cannot set `wal_autocheckpoint`: {e}")))?;
        let checkpointer = Checkpointer::start(&path, sync_of(durability), wal_limit)?;
        Ok(Self {
            conn,
            path,
            power: durability == Durability::Power,
            meta: None,
            checkpointer,
            commits: 0,
            _lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copy what the checkpointer has not, and start the write-ahead log
    /// again from its beginning (see [`Checkpointer`]). A failure only
    /// leaves the log longer: the commits are in it.
    fn restart_log(&mut self) {
        let started = std::time::Instant::now();
        let r = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
            });
        self.checkpointer.restarted();
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
        if self.meta.as_ref() == Some(meta) {
            // One statement is a transaction of its own: no BEGIN and COMMIT to run.
            if !batch.is_empty() {
                let mut ins = self
                    .conn
                    .prepare_cached("INSERT INTO events (body) VALUES (?1)")?;
                ins.execute([batch])?;
            }
            return Ok(());
        }
        let tx = self.conn.transaction()?;
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

impl EventLog for SqliteEventLog {
    fn replay(
        &mut self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<Option<StoreMeta>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM events ORDER BY seq")
            .map_err(|e| e.to_string())?;
        let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
        let mut any = false;
        while let Some(row) = rows.next().map_err(|e| e.to_string())? {
            let body = row.get_ref(0).map_err(|e| e.to_string())?;
            let bytes = body
                .as_blob()
                .map_err(|_| "an event is not a blob".to_string())?;
            each(bytes)?;
            any = true;
        }
        let get = |key: &str| -> Result<u64, String> {
            self.conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|v| v as u64)
                .map_err(|e| format!("cannot read `meta.{key}`: {e}"))
        };
        let meta = StoreMeta {
            id_reserved: get("id_reserved")?,
            last_epoch: get("last_epoch")?,
        };
        self.meta = Some(meta);
        Ok((any || meta != StoreMeta::default()).then_some(meta))
    }

    fn append(&mut self, batch: &[u8], meta: &StoreMeta, sync: bool) -> Result<(), String> {
        let full = sync && !self.power;
        if full {
            self.conn
                .pragma_update(None, "synchronous", "FULL")
                .map_err(|e| e.to_string())?;
        }
        let r = self.append_inner(batch, meta);
        if full {
            let _ = self.conn.pragma_update(None, "synchronous", "NORMAL");
        }
        r.map_err(|e| format!("`{}`: {e}", self.path.display()))?;
        self.commits += 1;
        if self.checkpointer.restart_due() {
            self.restart_log();
        }
        if self.commits >= COMMITS_PER_CHECKPOINT {
            self.commits = 0;
            self.checkpointer.nudge();
        }
        Ok(())
    }
}

/// A worker's outbox in `data_dir/outbox.db`.
pub struct SqliteOutbox {
    conn: Connection,
    path: PathBuf,
    /// Dropped last: other processes stay out until the outbox is closed.
    _lock: std::fs::File,
}

impl SqliteOutbox {
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let path = data_dir.join("outbox.db");
        let Opened { conn, _lock } = open(&path, Kind::Outbox, durability)?;
        Ok(Self { conn, path, _lock })
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

impl OutboxLog for SqliteOutbox {
    fn load(&mut self) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, body FROM outbox ORDER BY seq")
            .map_err(|e| e.to_string())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| e.to_string())?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("`{}`: {e}", self.path.display()))
    }

    fn write(&mut self, add: &[(u64, Vec<u8>)], remove: &[u64]) -> Result<(), String> {
        self.write_inner(add, remove)
            .map_err(|e| format!("`{}`: {e}", self.path.display()))
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
            let due = log.checkpointer.restart_due();
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

    #[test]
    fn outbox_entries_are_added_and_removed_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = SqliteOutbox::open(dir.path(), Durability::Process).unwrap();
        ob.write(&[(5, vec![5]), (6, vec![6]), (7, vec![7])], &[])
            .unwrap();
        ob.write(&[(8, vec![8])], &[6]).unwrap();
        drop(ob);
        let mut ob = SqliteOutbox::open(dir.path(), Durability::Process).unwrap();
        let keys: Vec<u64> = ob.load().unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![5, 7, 8]);
    }
}
