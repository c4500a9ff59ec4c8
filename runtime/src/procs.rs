//! The processes of `command` tasks (docs/sessions.md): each task runs in a process
//! group of its own, and no group outlives its task or its node.
//!
//! - A task's group is killed (SIGKILL) when its main process exits, when
//!   its deadline passes and when it is cancelled; [`TaskGroup::end`] returns
//!   once no process of the group is left.
//! - Its main process gets a parent-death signal (`PR_SET_PDEATHSIG`,
//!   SIGKILL) in case the node dies.
//! - A node's other processes die with it through the *reaper*: a small
//!   helper process forked by `orch-node` at start ([`start_reaper`]), told of
//!   every group as it starts and ends, which kills every group still
//!   running when the node's end of their pipe closes (kill -9 included).
//! - Every task process carries `ORCH_NODE_RUN`, a token of this run of the
//!   node, in its environment (children inherit it). When the node dies the
//!   reaper also kills every process that carries it: one that left its
//!   group (`setsid`, a daemon), and one a task started before the node had
//!   recorded the task's group.
//! - Each running group is also recorded in `{data_dir}/procs/`, with the
//!   run's token in `procs/run`; a node started on the same `data_dir` kills
//!   what an earlier one left there, groups and token carriers
//!   ([`TaskGroups::open`]), before it runs anything.
//!
//! A process that left its group survives its task's end (only its group is
//! killed then) but not its node. Every `unsafe` call of the crate's process
//! handling is in this file.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How long [`TaskGroup::end`] and [`TaskGroups::kill_all`] wait for a killed
/// group to be gone.
pub const GONE_WITHIN: Duration = Duration::from_secs(2);
/// How long a starting node waits for the groups an earlier one left.
const STALE_GONE_WITHIN: Duration = Duration::from_secs(5);

/// The node's end of the reaper's pipe, once [`start_reaper`] ran.
static LIFELINE: OnceLock<File> = OnceLock::new();

/// The environment variable that marks this node run's task processes.
pub const RUN_VAR: &str = "ORCH_NODE_RUN";
/// How long the reaper and a starting node keep killing token carriers.
const CARRIERS_GONE_WITHIN: Duration = Duration::from_secs(2);

static RUN_TOKEN: OnceLock<String> = OnceLock::new();

/// This run's token: the node's process id and its start in nanoseconds,
/// unique on the host.
pub fn run_token() -> &'static str {
    RUN_TOKEN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        format!("{}-{nanos:x}", std::process::id())
    })
}

/// The processes (not zombies, not this one) whose environment holds
/// `RUN_VAR=token`.
pub fn carriers(token: &str) -> Vec<i32> {
    let marker = format!("{RUN_VAR}={token}");
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                .unwrap_or(false)
        })
        .filter(|&pid| stat_of(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X' | 'x')))
        .collect()
}

/// SIGKILL every process carrying `token`, again until none is left (a
/// process may fork meanwhile) or `within` passed; how many were killed and
/// whether none is left.
#[allow(unsafe_code)]
pub fn kill_carriers(token: &str, within: Duration) -> (usize, bool) {
    let deadline = Instant::now() + within;
    let mut killed = std::collections::HashSet::new();
    let mut pause = Duration::from_millis(1);
    loop {
        let live = carriers(token);
        if live.is_empty() {
            return (killed.len(), true);
        }
        for pid in live {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed.insert(pid);
        }
        if Instant::now() >= deadline {
            return (killed.len(), carriers(token).is_empty());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// One record to the reaper: `+` or `-`, then the group id (little endian).
fn reaper_record(op: u8, pgid: i32) -> [u8; 5] {
    let b = pgid.to_le_bytes();
    [op, b[0], b[1], b[2], b[3]]
}

fn tell_reaper(op: u8, pgid: i32) {
    if let Some(mut f) = LIFELINE.get() {
        // One write of 5 bytes: atomic on a pipe. Non-blocking: a reaper
        // that does not read (stopped) costs a record, never a device.
        if let Err(e) = f.write_all(&reaper_record(op, pgid)) {
            warn!(error = %e, "cannot tell the task reaper about a process group; the record in `data_dir/procs` still lets a restart clean it");
        }
    }
}

/// Fork the reaper: a helper process that kills every task group still
/// running when this process dies. Call it once, first thing in `main`,
/// while the process has a single thread (before the async runtime starts).
#[allow(unsafe_code)]
pub fn start_reaper() -> std::io::Result<()> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    let token = run_token().to_string();
    // SAFETY: the caller guarantees a single thread, so the child is a
    // complete copy (allocating is safe); it reads a pipe and `/proc` and
    // sends signals, then exits.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            // SAFETY: closing our copy of the write end; `read_end` is ours.
            unsafe { libc::close(write_end) };
            reaper_main(read_end, &token)
        }
        _ => {
            // SAFETY: the child owns its copy of the read end; we close ours.
            unsafe {
                libc::close(read_end);
                let flags = libc::fcntl(write_end, libc::F_GETFL);
                libc::fcntl(write_end, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
            // SAFETY: `write_end` is an open descriptor that nothing else owns.
            let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(write_end) };
            let _ = LIFELINE.set(file);
            Ok(())
        }
    }
}

/// The reaper's life: follow the groups, kill the rest when the node is gone.
#[allow(unsafe_code)]
fn reaper_main(read_end: i32, token: &str) -> ! {
    // SAFETY: plain system calls on this process; no memory is shared.
    unsafe {
        // Out of the node's session and process group: a Ctrl-C or a
        // signal to the node's group does not reach it first.
        libc::setsid();
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let name = b"orch-reaper\0";
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    let mut groups: Vec<i32> = Vec::new();
    let mut buf = [0u8; 5 * 512];
    let mut have = 0usize;
    loop {
        // SAFETY: reading into the unused tail of `buf`.
        let n = unsafe {
            libc::read(
                read_end,
                buf[have..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - have,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        have += n as usize;
        let whole = have - have % 5;
        for rec in buf[..whole].chunks_exact(5) {
            let pgid = i32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]);
            match rec[0] {
                b'+' => groups.push(pgid),
                b'-' => groups.retain(|g| *g != pgid),
                _ => {}
            }
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
    // The node is gone: so are its tasks.
    for pgid in groups {
        if pgid > 1 {
            // SAFETY: kill(2) on a process group has no memory-safety preconditions.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
    // And every process of its tasks wherever it went: out of its group,
    // or started before its group was recorded.
    kill_carriers(token, CARRIERS_GONE_WITHIN);
    // SAFETY: ending the helper without running the parent's atexit handlers.
    unsafe { libc::_exit(0) }
}

/// Make a command start a task's group: a new process group led by the
/// program, which dies if this node dies (`PR_SET_PDEATHSIG`). tokio spawns
/// on the calling thread, a runtime worker that lives as long as the node.
#[allow(unsafe_code)]
pub fn prepare(cmd: &mut tokio::process::Command) {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    cmd.process_group(0)
        .kill_on_drop(true)
        .env(RUN_VAR, run_token());
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // The node died before the signal was armed.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Send SIGKILL to every process of group `pgid`.
#[allow(unsafe_code)]
pub fn kill_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) on a process group has no memory-safety preconditions.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// One process as `/proc/{pid}/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub pgrp: i32,
    /// Clock ticks after boot.
    pub start_time: u64,
}

/// Parse a `/proc/{pid}/stat` line (the command name may hold spaces and parentheses).
pub fn parse_stat(line: &str) -> Option<ProcStat> {
    let (head, rest) = line.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) ... starttime(19).
    Some(ProcStat {
        pid,
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

fn stat_of(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The live (not zombie) processes of group `pgid`.
pub fn members(pgid: i32) -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat_of)
        .filter(|s| s.pgrp == pgid && !matches!(s.state, 'Z' | 'X' | 'x'))
        .collect()
}

/// Whether any process of group `pgid` is alive (zombies do not count).
#[allow(unsafe_code)]
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    let exists = unsafe { libc::kill(-pgid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !members(pgid).is_empty()
}

/// Kill group `pgid` and wait, polling, until none of its processes is alive
/// or `within` passed; whether it is gone.
pub async fn kill_and_wait(pgid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(1);
    loop {
        kill_group(pgid);
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// What a record under `data_dir/procs` says of a running group.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    pgid: i32,
    leader_start: u64,
    /// `ORCH_SESSION` of the task, found in its processes' environment.
    session: String,
}

impl Record {
    fn render(&self) -> String {
        format!("{} {}\n", self.leader_start, self.session)
    }

    fn parse(pgid: i32, text: &str) -> Option<Self> {
        let (start, session) = text.trim().split_once(' ')?;
        Some(Self {
            pgid,
            leader_start: start.parse().ok()?,
            session: session.to_string(),
        })
    }

    /// Whether a live group with this id is still the task's: its leader
    /// started when recorded, or (leader gone) one of its processes carries
    /// the task's `ORCH_SESSION`. Linux does not give out a process id
    /// while a live process has it as its group, but after the whole group
    /// ended another one may take the number.
    fn still_ours(&self, members: &[ProcStat]) -> bool {
        if let Some(leader) = members.iter().find(|m| m.pid == self.pgid) {
            return leader.start_time == self.leader_start;
        }
        let marker = format!("ORCH_SESSION={}", self.session);
        members.iter().any(|m| {
            std::fs::read(format!("/proc/{}/environ", m.pid))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
                .unwrap_or(false)
        })
    }
}

/// The task groups of one node, recorded under `{data_dir}/procs`.
#[derive(Debug)]
pub struct TaskGroups {
    dir: PathBuf,
    running: Mutex<HashMap<i32, String>>,
    /// An exclusive lock on `procs/lock` while the node runs: a second node
    /// on the same `data_dir` must not take the first one's tasks for
    /// leftovers.
    _lock: Option<File>,
}

impl TaskGroups {
    /// Open the record of `data_dir` and kill every group an earlier node
    /// left running there, waiting until they are gone.
    pub async fn open(data_dir: &Path, node: &str) -> Result<Self, crate::store::StoreError> {
        let dir = data_dir.join("procs");
        let err = |what: String| crate::store::StoreError {
            path: dir.clone(),
            what,
        };
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("cannot create it: {e}")))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| err(format!("cannot open its lock file: {e}")))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(err("it is in use by another process (another orch node with the same `node.data_dir`?)".into()))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(err(format!("cannot lock it: {e}")))
            }
        }
        let groups = Self {
            dir,
            running: Mutex::new(HashMap::new()),
            _lock: Some(lock),
        };
        let (killed, left) = groups.clean_stale().await;
        if killed > 0 {
            info!(node_id = %node, groups = killed, "killed the task process groups an earlier run of this node left running");
        }
        if left > 0 {
            warn!(node_id = %node, groups = left, "task process groups of an earlier run did not die within 5 s of SIGKILL");
        }
        // Processes of the earlier run's tasks outside those groups.
        let run_file = groups.dir.join("run");
        if let Ok(old) = std::fs::read_to_string(&run_file) {
            let old = old.trim().to_string();
            if !old.is_empty() && old != run_token() {
                let (killed, gone) =
                    tokio::task::spawn_blocking(move || kill_carriers(&old, STALE_GONE_WITHIN))
                        .await
                        .unwrap_or((0, false));
                if killed > 0 {
                    info!(node_id = %node, processes = killed, "killed processes an earlier run of this node's tasks left outside their groups");
                }
                if !gone {
                    warn!(node_id = %node, "processes of an earlier run's tasks did not die within 5 s of SIGKILL");
                }
            }
        }
        if let Err(e) = std::fs::write(&run_file, format!("{}\n", run_token())) {
            return Err(crate::store::StoreError {
                path: run_file,
                what: format!("cannot write it: {e}"),
            });
        }
        Ok(groups)
    }

    /// A record directory for tests and tools that start no node.
    pub fn in_dir(dir: PathBuf) -> Self {
        Self {
            dir,
            running: Mutex::new(HashMap::new()),
            _lock: None,
        }
    }

    async fn clean_stale(&self) -> (usize, usize) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return (0, 0);
        };
        let (mut killed, mut left) = (0, 0);
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(pgid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|p| *p > 1)
            else {
                continue;
            };
            let record = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| Record::parse(pgid, &t));
            let live = members(pgid);
            if let Some(r) = record.filter(|r| !live.is_empty() && r.still_ours(&live)) {
                killed += 1;
                if !kill_and_wait(r.pgid, STALE_GONE_WITHIN).await {
                    left += 1;
                    continue;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        (killed, left)
    }

    /// A task's group started, led by `pid`: record it until it ends.
    pub fn started(&self, pid: u32, session: &str) -> TaskGroup<'_> {
        let pgid = pid as i32;
        let record = Record {
            pgid,
            leader_start: stat_of(pgid).map(|s| s.start_time).unwrap_or(0),
            session: session.to_string(),
        };
        let path = self.dir.join(pgid.to_string());
        if let Err(e) = std::fs::write(&path, record.render()) {
            warn!(error = %e, path = %path.display(), "cannot record a task's process group; a restart would not find it");
        }
        tell_reaper(b'+', pgid);
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pgid, session.to_string());
        TaskGroup {
            groups: self,
            pgid,
            ended: false,
        }
    }

    fn forget(&self, pgid: i32) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pgid);
        let _ = std::fs::remove_file(self.dir.join(pgid.to_string()));
        tell_reaper(b'-', pgid);
    }

    /// Groups running now.
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Kill every running group and wait until they are gone (node shutdown).
    pub async fn kill_all(&self) -> usize {
        let all: Vec<i32> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        for &pgid in &all {
            kill_group(pgid);
        }
        for &pgid in &all {
            if kill_and_wait(pgid, GONE_WITHIN).await {
                self.forget(pgid);
            }
        }
        all.len()
    }
}

/// A running task's group; kill it with [`TaskGroup::end`]. Dropped without
/// that (the task's future was dropped), it is killed at once and left in
/// the record for a restart to check.
#[derive(Debug)]
pub struct TaskGroup<'a> {
    groups: &'a TaskGroups,
    pgid: i32,
    ended: bool,
}

impl TaskGroup<'_> {
    pub fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Kill what is left of the group and wait until it is gone; whether it
    /// is (`false`: a process survived [`GONE_WITHIN`] after SIGKILL, stuck
    /// in the kernel).
    pub async fn end(mut self) -> bool {
        let gone = kill_and_wait(self.pgid, GONE_WITHIN).await;
        if gone {
            self.groups.forget(self.pgid);
        }
        self.ended = true;
        gone
    }
}

impl Drop for TaskGroup<'_> {
    fn drop(&mut self) {
        if !self.ended {
            kill_group(self.pgid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let line = "4242 (my (odd) prog) S 1 4240 4240 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 4242,
                state: 'S',
                pgrp: 4240,
                start_time: 987654
            }
        );
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 0").is_none());
    }

    #[test]
    fn records_round_trip() {
        let r = Record {
            pgid: 77,
            leader_start: 12345,
            session: "render-1a2b".into(),
        };
        assert_eq!(Record::parse(77, &r.render()), Some(r));
        assert_eq!(Record::parse(77, "nonsense"), None);
    }

    #[test]
    fn reaper_records_are_five_bytes() {
        assert_eq!(reaper_record(b'+', 0x0102_0304), [b'+', 4, 3, 2, 1]);
    }

    #[tokio::test]
    async fn the_carriers_of_the_run_token_are_found_and_killed_out_of_their_group() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(format!(
            "setsid sleep 30 & echo $! > {p}; sleep 30 & wait",
            p = pids.display()
        ));
        prepare(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let leader = child.id().unwrap() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let escaped = loop {
            if let Some(p) = std::fs::read_to_string(&pids)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            {
                break p;
            }
            assert!(Instant::now() < deadline, "the child wrote its pid");
            std::thread::sleep(Duration::from_millis(10));
        };
        // Out of the task's group, yet found by its token.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stat_of(escaped).map(|s| s.pgrp) != Some(escaped) {
            assert!(Instant::now() < deadline, "the child left its group");
            std::thread::sleep(Duration::from_millis(10));
        }
        let found = carriers(run_token());
        assert!(
            found.contains(&leader) && found.contains(&escaped),
            "{found:?}"
        );
        assert!(!carriers("some-other-run").contains(&leader));
        let (killed, gone) = kill_carriers(run_token(), Duration::from_secs(5));
        assert!(gone && killed >= 3, "killed {killed}");
        let _ = child.wait().await;
        assert!(stat_of(escaped).is_none_or(|s| matches!(s.state, 'Z' | 'X' | 'x')));
    }

    #[tokio::test]
    async fn a_group_with_a_background_child_is_gone_after_end() {
        let dir = tempfile::tempdir().unwrap();
        let groups = TaskGroups::in_dir(dir.path().to_path_buf());
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30 & wait"]);
        prepare(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let group = groups.started(child.id().unwrap(), "s");
        let pgid = group.pgid();
        assert!(dir.path().join(pgid.to_string()).exists(), "recorded");
        // Wait for the shell to start both children.
        let deadline = Instant::now() + Duration::from_secs(5);
        while members(pgid).len() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(members(pgid).len(), 3, "the shell and its two children");
        let reap = tokio::spawn(async move { child.wait().await });
        assert!(group.end().await, "every process of the group is gone");
        assert!(!group_alive(pgid));
        assert!(!dir.path().join(pgid.to_string()).exists(), "forgotten");
        assert_eq!(groups.running(), 0);
        let _ = reap.await;
    }

    #[tokio::test]
    async fn a_restart_kills_the_groups_an_earlier_run_left() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let pgid = {
            let groups = TaskGroups::in_dir(data.join("procs"));
            std::fs::create_dir_all(data.join("procs")).unwrap();
            let mut cmd = tokio::process::Command::new("sh");
            cmd.args(["-c", "sleep 30 & sleep 30"])
                .env("ORCH_SESSION", "left-behind");
            prepare(&mut cmd);
            cmd.kill_on_drop(false);
            let child = cmd.spawn().unwrap();
            let group = groups.started(child.id().unwrap(), "left-behind");
            let pgid = group.pgid();
            // As if the node died: the record stays, nothing is killed.
            std::mem::forget(group);
            std::mem::forget(child);
            pgid
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while members(pgid).len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(group_alive(pgid));
        // A record of a group that is long gone, and one that is not a number.
        std::fs::write(data.join("procs/999999"), "1 gone\n").unwrap();
        std::fs::write(data.join("procs/notes.txt"), "x").unwrap();
        let groups = TaskGroups::open(&data, "n").await.unwrap();
        assert!(!group_alive(pgid), "the earlier run's group is killed");
        assert!(!data.join(format!("procs/{pgid}")).exists());
        assert!(!data.join("procs/999999").exists());
        assert_eq!(groups.running(), 0);
        let second = TaskGroups::open(&data, "n").await.unwrap_err();
        assert!(
            second.to_string().contains("in use by another process"),
            "{second}"
        );
    }

    #[test]
    fn a_reused_group_id_of_another_program_is_not_ours() {
        let r = Record {
            pgid: 500,
            leader_start: 10,
            session: "s".into(),
        };
        let other_leader = [ProcStat {
            pid: 500,
            state: 'S',
            pgrp: 500,
            start_time: 99,
        }];
        assert!(
            !r.still_ours(&other_leader),
            "another leader took the number"
        );
        let same_leader = [ProcStat {
            start_time: 10,
            ..other_leader[0]
        }];
        assert!(r.still_ours(&same_leader));
    }
}
