//! Finding a task's output files (docs/sessions.md): what appeared in its output
//! folder since the last progress line, in time proportional to the new
//! files (inotify), and one full scan when the task ends.
//!
//! Outputs are regular files inside the folder; names starting with `.` or
//! ending in `.tmp` are temporary and skipped (write to one, then rename). A
//! symbolic link is a problem: it fails the attempt, but the regular files
//! found with it are still listed.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use orch_actors::protocol::OutputFile;
use sha2::{Digest, Sha256};
use tracing::warn;

/// Most paths kept for one task between two of its progress lines; past it
/// the task's next progress line scans its whole folder instead.
const MAX_QUEUED: usize = 100_000;

/// What a look at an output folder found.
#[derive(Debug, Default, PartialEq)]
pub struct Found {
    /// New regular files, hashed, sorted by path.
    pub files: Vec<OutputFile>,
    /// One line per entry that is not allowed (a symbolic link), or that
    /// could not be read.
    pub problems: Vec<String>,
}

/// Whether `s` can be one component of a path: not empty, no `/`, not
/// `.` or `..`, no NUL.
pub fn safe_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']) && s.len() <= 255
}

/// Whether `rel` is a plain relative path: components that are each
/// [`safe_component`], separated by single `/`.
pub fn safe_rel(rel: &str) -> bool {
    !rel.is_empty() && rel.len() <= 4096 && rel.split('/').all(safe_component)
}

/// The lowercase hex of a finished sha256.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Size and sha256 (hex) of the file at `path`.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex(&h.finalize())))
}

fn temporary(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.starts_with('.') || name.ends_with(".tmp")
}

fn symlink_problem(rel: &str) -> String {
    format!(
        "output `{rel}` is a symbolic link; outputs must be regular files inside the output folder"
    )
}

/// Look at the entries `rels` of `dir` (relative paths): hash each regular
/// file not in `seen` and add it there; note symbolic links. Folders are
/// left to the caller (a watch lists what is in them).
pub fn check_paths(dir: &Path, rels: Vec<String>, seen: &mut HashSet<String>) -> Found {
    let mut found = Found::default();
    for rel in rels {
        if seen.contains(&rel) {
            continue;
        }
        let path = dir.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // gone again (renamed, deleted): nothing to list
        };
        if meta.file_type().is_symlink() {
            found.problems.push(symlink_problem(&rel));
            continue;
        }
        if !meta.is_file() || temporary(&rel) {
            continue;
        }
        match sha256_file(&path) {
            Ok((size, sha256)) => {
                seen.insert(rel.clone());
                found.files.push(OutputFile {
                    path: rel,
                    size,
                    sha256,
                });
            }
            Err(e) => found
                .problems
                .push(format!("cannot read output `{rel}`: {e}")),
        }
    }
    found.files.sort_by(|a, b| a.path.cmp(&b.path));
    found.problems.sort();
    found.problems.dedup();
    found
}

/// Every entry under `dir`, relative, folders excluded; symbolic links
/// (never followed) included, for [`check_paths`] to refuse.
pub fn list_all(dir: &Path) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| format!("cannot list `{}`: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot list `{}`: {e}", d.display()))?;
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                stack.push(path);
                continue;
            }
            if let Ok(rel) = path.strip_prefix(dir) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(out)
}

/// The files of `changes` under `dir` not in `seen` yet (every file, for
/// [`Changes::Everything`]), checked and hashed on a blocking thread;
/// `seen` gains them.
pub async fn look(dir: &Path, changes: Changes, seen: &mut HashSet<String>) -> Found {
    let dir = dir.to_path_buf();
    let mut taken = std::mem::take(seen);
    let found = match changes {
        Changes::Paths(paths) => {
            let fresh: Vec<String> = paths.into_iter().filter(|p| !taken.contains(p)).collect();
            if fresh.is_empty() {
                *seen = taken;
                return Found::default();
            }
            tokio::task::spawn_blocking(move || {
                let f = check_paths(&dir, fresh, &mut taken);
                (f, taken)
            })
            .await
        }
        Changes::Everything => {
            tokio::task::spawn_blocking(move || {
                let f = scan_all(&dir, &mut taken);
                (f, taken)
            })
            .await
        }
    };
    match found {
        Ok((f, back)) => {
            *seen = back;
            f
        }
        // The set went with the failed thread: files are checked again.
        Err(e) => Found {
            files: Vec::new(),
            problems: vec![format!("cannot look at the output folder: {e}")],
        },
    }
}

/// The whole folder: every regular file not in `seen`, and every problem.
pub fn scan_all(dir: &Path, seen: &mut HashSet<String>) -> Found {
    match list_all(dir) {
        Ok(rels) => check_paths(dir, rels, seen),
        Err(e) => Found {
            files: Vec::new(),
            problems: vec![e],
        },
    }
}

/// What changed in one watched folder since it was last asked.
#[derive(Debug, Default)]
struct Queue {
    /// Relative paths to look at.
    paths: Vec<String>,
    /// Events were lost: look at the whole folder.
    rescan: bool,
}

#[derive(Debug)]
struct Shared {
    inotify: Inotify,
    /// Watch -> (its task, the folder relative to the task's root).
    by_wd: HashMap<WatchDescriptor, (u64, PathBuf)>,
    /// Task -> its root folder, its watches and what changed.
    tasks: HashMap<u64, (PathBuf, Vec<WatchDescriptor>, Queue)>,
    next: u64,
    buf: Vec<u8>,
}

const MASK: WatchMask = WatchMask::CLOSE_WRITE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::CREATE)
    .union(WatchMask::DONT_FOLLOW)
    .union(WatchMask::EXCL_UNLINK);

impl Shared {
    /// Watch `rel` (a folder of task `task`) and queue what is already in it.
    fn watch_dir(&mut self, task: u64, rel: PathBuf) {
        let Some((root, wds, queue)) = self.tasks.get_mut(&task) else {
            return;
        };
        let abs = root.join(&rel);
        match self.inotify.watches().add(&abs, MASK | WatchMask::ONLYDIR) {
            Ok(wd) => {
                wds.push(wd.clone());
                self.by_wd.insert(wd, (task, rel.clone()));
            }
            Err(_) => queue.rescan = true,
        }
        // Whatever was written before the watch took hold.
        if !rel.as_os_str().is_empty() {
            match list_all(&abs) {
                Ok(rels) => queue.paths.extend(
                    rels.into_iter()
                        .map(|r| rel.join(r).to_string_lossy().into_owned()),
                ),
                Err(_) => queue.rescan = true,
            }
        }
    }

    /// Read every pending event and queue it for its task.
    fn drain(&mut self) {
        let mut new_dirs = Vec::new();
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let events = match self.inotify.read_events(&mut buf) {
                Ok(ev) => ev,
                Err(_) => {
                    self.buf = buf;
                    break; // WouldBlock: nothing more
                }
            };
            let mut any = false;
            for ev in events {
                any = true;
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    for (_, _, q) in self.tasks.values_mut() {
                        q.rescan = true;
                    }
                    continue;
                }
                let (Some((task, dir)), Some(name)) = (self.by_wd.get(&ev.wd), ev.name) else {
                    continue;
                };
                let rel = dir.join(name);
                let task = *task;
                let Some((_, _, q)) = self.tasks.get_mut(&task) else {
                    continue;
                };
                if ev.mask.contains(EventMask::ISDIR) {
                    new_dirs.push((task, rel));
                } else if q.paths.len() < MAX_QUEUED {
                    q.paths.push(rel.to_string_lossy().into_owned());
                } else {
                    q.paths.clear();
                    q.rescan = true;
                }
            }
            self.buf = buf;
            if !any {
                break;
            }
        }
        for (task, rel) in new_dirs {
            self.watch_dir(task, rel);
        }
    }
}

/// One inotify instance for all of a node's running tasks (an instance per
/// task would meet the per-user limit, 128 by default, on a large host).
/// Without inotify every progress line scans the task's whole folder.
#[derive(Debug)]
pub struct OutputWatch {
    shared: Option<Mutex<Shared>>,
}

impl Default for OutputWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl OutputWatch {
    pub fn new() -> Self {
        let shared = match Inotify::init() {
            Ok(inotify) => Some(Mutex::new(Shared {
                inotify,
                by_wd: HashMap::new(),
                tasks: HashMap::new(),
                next: 0,
                buf: vec![0u8; 64 * 1024],
            })),
            Err(e) => {
                warn!(error = %e, "inotify is unavailable; every progress line of a command task scans its whole output folder");
                None
            }
        };
        Self { shared }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Shared>> {
        self.shared
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Watch a task's output folder (before its program starts).
    pub fn watch(&self, root: &Path) -> Watched<'_> {
        let id = self.lock().map(|mut s| {
            let id = s.next;
            s.next += 1;
            s.tasks
                .insert(id, (root.to_path_buf(), Vec::new(), Queue::default()));
            s.watch_dir(id, PathBuf::new());
            id
        });
        Watched { watch: self, id }
    }
}

/// A task's folder under watch; stops watching when dropped.
#[derive(Debug)]
pub struct Watched<'a> {
    watch: &'a OutputWatch,
    id: Option<u64>,
}

/// What to look at after a progress line.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// These paths appeared (or changed) since the last call.
    Paths(Vec<String>),
    /// Look at the whole folder (no inotify, or events were lost).
    Everything,
}

impl Watched<'_> {
    /// What appeared since the last call.
    pub fn changes(&self) -> Changes {
        let (Some(id), Some(mut s)) = (self.id, self.watch.lock()) else {
            return Changes::Everything;
        };
        s.drain();
        match s.tasks.get_mut(&id) {
            Some((_, _, q)) if q.rescan => {
                *q = Queue::default();
                Changes::Everything
            }
            Some((_, _, q)) => {
                let mut paths = std::mem::take(&mut q.paths);
                paths.sort();
                paths.dedup();
                Changes::Paths(paths)
            }
            None => Changes::Everything,
        }
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        let (Some(id), Some(mut s)) = (self.id, self.watch.lock()) else {
            return;
        };
        // Events still queued for these watches are read first, so that a
        // watch number the kernel gives out again starts clean.
        s.drain();
        if let Some((_, wds, _)) = s.tasks.remove(&id) {
            for wd in wds {
                s.by_wd.remove(&wd);
                let _ = s.inotify.watches().remove(wd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(c: Changes) -> Vec<String> {
        match c {
            Changes::Paths(p) => p,
            Changes::Everything => panic!("expected paths"),
        }
    }

    #[test]
    fn a_scan_lists_regular_files_once_and_names_symlinks_without_losing_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"abc").unwrap();
        std::fs::write(dir.path().join(".a.png.tmp"), b"x").unwrap();
        let mut seen = HashSet::new();
        let found = scan_all(dir.path(), &mut seen);
        assert_eq!(found.files.len(), 1);
        assert_eq!(found.files[0].size, 3);
        assert_eq!(
            found.files[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(scan_all(dir.path(), &mut seen).files.is_empty());
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("escape")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.png"), b"b").unwrap();
        let found = scan_all(dir.path(), &mut seen);
        assert_eq!(found.problems.len(), 1);
        assert!(
            found.problems[0].contains("`escape` is a symbolic link"),
            "{:?}",
            found.problems
        );
        assert_eq!(
            found.files.len(),
            1,
            "the regular file found with it is kept"
        );
        assert_eq!(found.files[0].path, "sub/b.png");
    }

    #[test]
    fn a_watch_reports_only_what_appeared_since_it_was_last_asked() {
        let watch = OutputWatch::new();
        assert!(watch.shared.is_some(), "inotify works here");
        let dir = tempfile::tempdir().unwrap();
        let w = watch.watch(dir.path());
        for i in 0..50 {
            std::fs::write(dir.path().join(format!("old_{i}")), b"x").unwrap();
        }
        assert_eq!(paths(w.changes()).len(), 50);
        // Written to a temporary name, then renamed; and a new folder.
        std::fs::write(dir.path().join(".f.tmp"), b"y").unwrap();
        std::fs::rename(dir.path().join(".f.tmp"), dir.path().join("f.png")).unwrap();
        std::fs::create_dir(dir.path().join("deep")).unwrap();
        std::fs::write(dir.path().join("deep/g.png"), b"z").unwrap();
        let got = paths(w.changes());
        assert!(got.contains(&"f.png".to_string()), "{got:?}");
        assert!(got.contains(&"deep/g.png".to_string()), "{got:?}");
        assert!(!got.iter().any(|p| p.starts_with("old_")), "{got:?}");
        let mut seen = HashSet::new();
        let found = check_paths(dir.path(), got, &mut seen);
        let names: Vec<&str> = found.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, vec!["deep/g.png", "f.png"]);
        // A symbolic link is named.
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let found = check_paths(dir.path(), paths(w.changes()), &mut seen);
        assert_eq!(found.problems.len(), 1, "{found:?}");
        // Two tasks share the instance without seeing each other's files.
        let other = tempfile::tempdir().unwrap();
        let w2 = watch.watch(other.path());
        std::fs::write(other.path().join("mine"), b"1").unwrap();
        assert!(paths(w.changes()).is_empty());
        assert_eq!(paths(w2.changes()), vec!["mine".to_string()]);
        drop(w2);
        drop(w);
        assert!(watch.lock().unwrap().by_wd.is_empty());
    }
}
