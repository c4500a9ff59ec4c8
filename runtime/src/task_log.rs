//! Per-attempt logs (docs/logs.md): each attempt's stdout and stderr, kept
//! on its worker in `{data_dir}/logs/{session}/{task}-a{attempt}.log`, one
//! line per line the program printed:
//!
//! ```text
//! 2026-12-02T19:40:01.123Z out rendering frame 12
//! 2026-12-02T19:40:01.125Z err warning: low memory
//! ```
//!
//! A log is capped at `[worker] log_max_bytes`: the first half is written
//! as it comes; past it, the newest lines are kept in memory (at most the
//! other half) and written after a line that says how much was left out
//! when the attempt ends. A log being written is *open*: a reader that
//! follows it knows more may come.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use dashmap::DashSet;

/// Default of `[worker] log_max_bytes`.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Smallest cap accepted: room for a head and a tail.
pub const MIN_LOG_MAX_BYTES: u64 = 4096;

/// Logs of this process being written (absolute paths).
static OPEN: LazyLock<DashSet<PathBuf>> = LazyLock::new(DashSet::new);

/// Whether the log at `path` is still being written.
pub fn is_open(path: &Path) -> bool {
    OPEN.contains(path)
}

/// Where the log of one attempt lives, relative to `data_dir`. `None` when
/// the session id cannot be a file name.
pub fn rel_path(session: &str, task: u64, attempt: u32) -> Option<String> {
    crate::outputs::safe_component(session).then(|| format!("logs/{session}/{task}-a{attempt}.log"))
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
    /// A line the node adds (a workflow step starts, the exit status).
    Orch,
}

impl Stream {
    fn mark(self) -> &'static str {
        match self {
            Self::Out => "out",
            Self::Err => "err",
            Self::Orch => "orch",
        }
    }
}

struct State {
    file: Option<std::fs::File>,
    /// Bytes written to the file so far (the head).
    written: u64,
    /// Past the head: the newest lines, at most `tail_cap` bytes.
    tail: VecDeque<Vec<u8>>,
    tail_bytes: u64,
    /// Bytes of lines dropped from the tail.
    skipped: u64,
    error_logged: bool,
}

/// The log of one attempt, shared by the readers of its streams.
pub struct TaskLog {
    path: PathBuf,
    head_cap: u64,
    tail_cap: u64,
    state: Mutex<State>,
}

impl TaskLog {
    /// Open (truncate) the log at `path`, capped at `max_bytes`.
    pub fn create(path: PathBuf, max_bytes: u64) -> std::io::Result<Arc<Self>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(&path)?;
        let max = max_bytes.max(MIN_LOG_MAX_BYTES);
        OPEN.insert(path.clone());
        Ok(Arc::new(Self {
            path,
            head_cap: max / 2,
            tail_cap: max - max / 2,
            state: Mutex::new(State {
                file: Some(file),
                written: 0,
                tail: VecDeque::new(),
                tail_bytes: 0,
                skipped: 0,
                error_logged: false,
            }),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Add one line (without its newline) from `stream`.
    pub fn line(&self, stream: Stream, text: &str) {
        let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
        let mut bytes = Vec::with_capacity(text.len() + 32);
        let _ = write!(bytes, "{now} {} ", stream.mark());
        // One line in the log per line printed: no control bytes of the
        // program's can break the format.
        let text = text.trim_end_matches('\r');
        // Most lines hold no control character: copied whole. (0xC2 starts
        // every C1 control, U+0080 to U+009F, in UTF-8.)
        let plain = !text
            .as_bytes()
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f || b == 0xc2);
        if plain {
            bytes.extend_from_slice(text.as_bytes());
        } else {
            bytes.extend(
                text.chars()
                    .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                    .collect::<String>()
                    .as_bytes(),
            );
        }
        bytes.push(b'\n');
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.tail.is_empty() && s.written + bytes.len() as u64 <= self.head_cap {
            s.written += bytes.len() as u64;
            self.write(&mut s, &bytes);
            return;
        }
        s.tail_bytes += bytes.len() as u64;
        s.tail.push_back(bytes);
        while s.tail_bytes > self.tail_cap {
            let Some(old) = s.tail.pop_front() else { break };
            s.tail_bytes -= old.len() as u64;
            s.skipped += old.len() as u64;
        }
    }

    fn write(&self, s: &mut State, bytes: &[u8]) {
        let Some(f) = s.file.as_mut() else { return };
        if let Err(e) = f.write_all(bytes) {
            if !std::mem::replace(&mut s.error_logged, true) {
                tracing::warn!(log = %self.path.display(), error = %e, "cannot write a task log; the rest of it is lost");
            }
            s.file = None;
        }
    }

    /// The attempt ended: write what the tail holds and close the log.
    pub fn finish(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.skipped > 0 {
            let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
            let note = format!(
                "{now} orch … {} bytes of output left out here (log capped at {} bytes: `log_max_bytes`) …\n",
                s.skipped,
                self.head_cap + self.tail_cap
            );
            self.write(&mut s, note.as_bytes());
        }
        let tail: Vec<Vec<u8>> = s.tail.drain(..).collect();
        for line in tail {
            self.write(&mut s, &line);
        }
        if let Some(f) = s.file.as_mut() {
            let _ = f.flush();
        }
        s.file = None;
        OPEN.remove(&self.path);
    }
}

impl Drop for TaskLog {
    fn drop(&mut self) {
        let open = self.state.lock().map(|s| s.file.is_some()).unwrap_or(false);
        if open {
            self.finish();
        }
    }
}

/// At most `max` bytes of the log at `path` from byte `offset`, and
/// whether it is still being written.
pub fn read_from(path: &Path, offset: u64, max: usize) -> std::io::Result<(Vec<u8>, bool)> {
    use std::io::{Read, Seek, SeekFrom};
    let open = is_open(path);
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(max as u64).read_to_end(&mut buf)?;
    Ok((buf, open))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn lines_carry_a_timestamp_and_their_stream() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/s/0-a1.log");
        let log = TaskLog::create(path.clone(), DEFAULT_LOG_MAX_BYTES).unwrap();
        assert!(is_open(&path));
        log.line(Stream::Out, "hello");
        log.line(Stream::Err, "bad\x1b[31m thing\r");
        log.finish();
        assert!(!is_open(&path));
        let l = lines(&path);
        assert_eq!(l.len(), 2);
        let (ts, rest) = l[0].split_once(' ').unwrap();
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert_eq!(rest, "out hello");
        assert!(l[1].ends_with(" err bad [31m thing"), "{}", l[1]);
    }

    #[test]
    fn a_capped_log_keeps_its_head_and_its_tail_and_says_what_it_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let log = TaskLog::create(path.clone(), 8192).unwrap();
        for i in 0..10_000 {
            log.line(Stream::Out, &format!("line {i:05}"));
        }
        log.finish();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 8192 + 200, "{size}");
        let l = lines(&path);
        assert!(l[0].ends_with("out line 00000"));
        assert!(l.last().unwrap().ends_with("out line 09999"));
        let note = l.iter().find(|l| l.contains(" orch … ")).expect("a note");
        assert!(note.contains("bytes of output left out"), "{note}");
        // Nothing between head and tail is duplicated or reordered.
        let nums: Vec<u32> = l
            .iter()
            .filter_map(|l| l.rsplit_once("line ").and_then(|(_, n)| n.parse().ok()))
            .collect();
        assert!(nums.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_reader_gets_what_follows_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let log = TaskLog::create(path.clone(), DEFAULT_LOG_MAX_BYTES).unwrap();
        log.line(Stream::Out, "one");
        let (first, open) = read_from(&path, 0, 1 << 20).unwrap();
        assert!(open);
        log.line(Stream::Out, "two");
        drop(log);
        let (rest, open) = read_from(&path, first.len() as u64, 1 << 20).unwrap();
        assert!(!open);
        assert!(String::from_utf8(rest).unwrap().ends_with(" out two\n"));
    }
}
