//! The `command` executor (SPEC §8): runs an external program for a task.
//!
//! - `argv` and `env` values may hold `{start} {end} {frames} {id_lo} {id_hi}
//!   {device} {handle} {session} {task} {attempt} {out_dir} {items_file}`; the
//!   same values are also in `ORCH_*` environment variables.
//! - The program runs in its output folder, in its own process group, which is
//!   killed on timeout or cancellation.
//! - A stdout line `ORCH_PROGRESS <frames_done> [<last_id_used>]` reports the
//!   first `frames_done` frames of the task finished; files then present in the
//!   output folder are reported with their size and sha256.
//! - Exit code 0 completes the task; anything else fails it with the exit code
//!   and the last line of stderr. Outputs must be regular files inside the
//!   output folder: a symbolic link fails the task.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use orch_actors::executor::{ExecError, ExecFuture, ExecJob, ExecReport, Executor};
use orch_actors::protocol::{ExecutorSpec, OutputFile};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// Bytes of stderr kept for the error message.
const STDERR_TAIL: usize = 4096;
/// Longest stdout line read (longer ones are cut).
const MAX_LINE: usize = 64 * 1024;

/// Runs `command` tasks; `work_dir` holds per-task item lists.
pub struct CommandExecutor {
    pub work_dir: PathBuf,
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

fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
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
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((size, hex))
}

/// Files under `dir` not in `seen`, hashed; temporary names (`.*`, `*.tmp`) are skipped.
pub fn scan_outputs(dir: &Path, seen: &mut HashSet<String>) -> Result<Vec<OutputFile>, String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries =
            std::fs::read_dir(&d).map_err(|e| format!("cannot list `{}`: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = path
                .strip_prefix(dir)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or(name.clone());
            let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
            if meta.file_type().is_symlink() {
                return Err(format!(
                    "output `{rel}` is a symbolic link; outputs must be regular files inside the output folder"
                ));
            }
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if name.starts_with('.')
                || name.ends_with(".tmp")
                || seen.contains(&rel)
                || !meta.is_file()
            {
                continue;
            }
            let (size, sha256) =
                sha256_file(&path).map_err(|e| format!("cannot read output `{rel}`: {e}"))?;
            seen.insert(rel.clone());
            found.push(OutputFile {
                path: rel,
                size,
                sha256,
            });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Lines of a child's stdout, each cut at [`MAX_LINE`] bytes: a program that
/// never prints a newline cannot make the node allocate without bound.
struct BoundedLines<R> {
    inner: R,
    buf: Vec<u8>,
    /// Skipping the rest of an over-long line.
    skipping: bool,
    eof: bool,
}

impl<R: AsyncRead + Unpin> BoundedLines<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            skipping: false,
            eof: false,
        }
    }

    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if std::mem::take(&mut self.skipping) {
                    continue;
                }
                return Ok(Some(
                    String::from_utf8_lossy(&line[..line.len() - 1]).into_owned(),
                ));
            }
            if self.buf.len() > MAX_LINE {
                self.buf.clear();
                self.skipping = true;
            }
            if self.eof {
                if self.buf.is_empty() || self.skipping {
                    return Ok(None);
                }
                let line = String::from_utf8_lossy(&self.buf).into_owned();
                self.buf.clear();
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

#[allow(unsafe_code)]
fn kill_group(pid: u32) {
    // SAFETY: kill(2) on a process group id has no memory-safety preconditions.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

impl Executor for CommandExecutor {
    fn run(
        &self,
        job: ExecJob,
        progress: UnboundedSender<ExecReport>,
        cancel: CancellationToken,
    ) -> ExecFuture {
        let work_dir = self.work_dir.clone();
        Box::pin(async move { run_command(job, work_dir, progress, cancel).await })
    }
}

fn fail(message: String, report: &ExecReport) -> ExecError {
    ExecError {
        message,
        report: report.clone(),
    }
}

async fn run_command(
    job: ExecJob,
    work_dir: PathBuf,
    progress: UnboundedSender<ExecReport>,
    cancel: CancellationToken,
) -> Result<ExecReport, ExecError> {
    let mut report = ExecReport::default();
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
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, v) in &vars {
        cmd.env(format!("ORCH_{}", k.to_uppercase()), v);
    }
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.clone(), expand(v, &vars)))
        .collect();
    cmd.envs(&env);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start `{program}`: {e}"), &report))?;
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_task = tokio::spawn(async move {
        let mut tail: VecDeque<u8> = VecDeque::with_capacity(STDERR_TAIL);
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            for &b in &buf[..n] {
                if tail.len() == STDERR_TAIL {
                    tail.pop_front();
                }
                tail.push_back(b);
            }
        }
        String::from_utf8_lossy(&tail.into_iter().collect::<Vec<u8>>()).into_owned()
    });
    let mut lines = BoundedLines::new(stdout);
    let mut seen = HashSet::new();
    let len = job.task.frames.len();
    let mut cancelled = false;
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if let Some((done, last)) = parse_progress(&line) {
                        report.frames_done = report.frames_done.max(done.min(len));
                        if let Some(l) = last.filter(|l| *l >= job.task.ids.lo && *l < job.task.ids.hi) {
                            report.last_id_used = Some(l);
                        }
                        let dir = job.out_dir.clone();
                        let mut s = std::mem::take(&mut seen);
                        let scanned = tokio::task::spawn_blocking(move || {
                            let r = scan_outputs(&dir, &mut s);
                            (r, s)
                        })
                        .await;
                        let (outputs, s) = scanned.map_err(|e| fail(e.to_string(), &report))?;
                        seen = s;
                        match outputs {
                            Ok(outputs) => {
                                let _ = progress.send(ExecReport {
                                    frames_done: report.frames_done,
                                    last_id_used: report.last_id_used,
                                    outputs,
                                });
                            }
                            Err(e) => {
                                if let Some(pid) = pid {
                                    kill_group(pid);
                                }
                                return Err(fail(e, &report));
                            }
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            },
            _ = cancel.cancelled() => {
                cancelled = true;
                break;
            }
        }
    }
    if cancelled {
        if let Some(pid) = pid {
            kill_group(pid);
        }
        let _ = child.wait().await;
        return Err(fail("cancelled".into(), &report));
    }
    let status = tokio::select! {
        s = child.wait() => s.map_err(|e| fail(e.to_string(), &report))?,
        _ = cancel.cancelled() => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            let _ = child.wait().await;
            return Err(fail("cancelled".into(), &report));
        }
    };
    let stderr_tail = stderr_task.await.unwrap_or_default();
    // Whatever appeared after the last progress line.
    let dir = job.out_dir.clone();
    let rest = tokio::task::spawn_blocking(move || scan_outputs(&dir, &mut seen))
        .await
        .map_err(|e| fail(e.to_string(), &report))?;
    let rest = rest.map_err(|e| fail(e, &report))?;
    if status.success() {
        report.frames_done = len;
        report.outputs = rest;
        Ok(report)
    } else {
        report.outputs = rest;
        let last = stderr_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        let how = match status.code() {
            Some(c) => format!("exited with code {c}"),
            None => "was killed by a signal".to_string(),
        };
        let msg = if last.is_empty() {
            format!("`{program}` {how}")
        } else {
            format!("`{program}` {how}: {last}")
        };
        Err(fail(msg, &report))
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

    #[test]
    fn scan_reports_new_files_once_and_refuses_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"abc").unwrap();
        std::fs::write(dir.path().join(".a.png.tmp"), b"x").unwrap();
        let mut seen = HashSet::new();
        let out = scan_outputs(dir.path(), &mut seen).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].size, 3);
        assert_eq!(
            out[0].sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(scan_outputs(dir.path(), &mut seen).unwrap().is_empty());
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("escape")).unwrap();
        let err = scan_outputs(dir.path(), &mut seen).unwrap_err();
        assert!(err.contains("`escape` is a symbolic link"), "{err}");
    }
}
