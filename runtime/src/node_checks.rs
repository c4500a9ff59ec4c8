//! Node checks (`[[worker.check]]`, docs/operating.md): programs the worker
//! runs at start and every `every_s` seconds, such as "the NAS is mounted"
//! or "the vendor's socket answers". While one fails (non-zero exit, no exit
//! within `timeout_ms`, cannot start) the worker reports status `error` with
//! the check's name and last error line, stays registered, and takes no new
//! work; its running attempts finish.

use std::process::Stdio;
use std::time::Duration;

use orch_actors::worker::WorkerMsg;
use ractor::ActorRef;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::time::Instant;

use crate::config::NodeCheck;

/// Longest error line kept from a check.
const ERROR_LINE: usize = 512;

/// Run `check` once: `Err` says why it failed.
pub async fn run_once(check: &NodeCheck) -> Result<(), String> {
    let Some((program, args)) = check.argv.split_first() else {
        return Err("no program".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::procs::prepare(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{program}`: {e}"))?;
    let mut stderr = child.stderr.take();
    let run = async {
        let mut buf = Vec::new();
        if let Some(e) = stderr.as_mut() {
            // At most 64 KiB of its stderr: the last line is what is kept.
            let _ = e.take(64 * 1024).read_to_end(&mut buf).await;
        }
        (child.wait().await, buf)
    };
    match tokio::time::timeout(Duration::from_millis(check.timeout_ms), run).await {
        Err(_) => Err(format!("no answer within {} ms", check.timeout_ms)),
        Ok((Err(e), _)) => Err(format!("`{program}`: {e}")),
        Ok((Ok(status), buf)) if !status.success() => {
            let text = String::from_utf8_lossy(&buf);
            let last = text
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim();
            let last: String = last.chars().take(ERROR_LINE).collect();
            let how = match status.code() {
                Some(c) => format!("exited with code {c}"),
                None => "was killed by a signal".into(),
            };
            Err(if last.is_empty() {
                format!("`{program}` {how}")
            } else {
                format!("`{program}` {how}: {last}")
            })
        }
        Ok(_) => Ok(()),
    }
}

/// Run every check when it is due, for as long as `worker` lives, and tell
/// it the first failing check (in configuration order) after each round.
pub async fn run(checks: Vec<NodeCheck>, worker: ActorRef<WorkerMsg>) {
    if checks.is_empty() {
        return;
    }
    let mut due: Vec<Instant> = vec![Instant::now(); checks.len()];
    let mut failing: Vec<Option<String>> = vec![None; checks.len()];
    loop {
        let now = Instant::now();
        for (i, c) in checks.iter().enumerate() {
            if due[i] <= now {
                failing[i] = run_once(c)
                    .await
                    .err()
                    .map(|e| format!("check `{}`: {e}", c.name));
                due[i] = Instant::now() + Duration::from_secs(c.every_s);
            }
        }
        let first = failing.iter().flatten().next().cloned();
        if worker.cast(WorkerMsg::NodeCheck(first)).is_err() {
            return; // the worker is gone
        }
        let next = due.iter().min().copied().unwrap_or_else(Instant::now);
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(argv: &[&str], timeout_ms: u64) -> NodeCheck {
        NodeCheck {
            name: "c".into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            every_s: 1,
            timeout_ms,
        }
    }

    #[tokio::test]
    async fn a_check_passes_fails_with_its_last_line_or_times_out() {
        assert_eq!(run_once(&check(&["true"], 5_000)).await, Ok(()));
        let e = run_once(&check(
            &[
                "sh",
                "-c",
                "echo one >&2; echo 'NAS unreachable' >&2; exit 4",
            ],
            5_000,
        ))
        .await
        .unwrap_err();
        assert_eq!(e, "`sh` exited with code 4: NAS unreachable");
        let e = run_once(&check(&["sleep", "10"], 200)).await.unwrap_err();
        assert_eq!(e, "no answer within 200 ms");
        let e = run_once(&check(&["/nonexistent/check"], 1_000))
            .await
            .unwrap_err();
        assert!(e.starts_with("cannot start `/nonexistent/check`"), "{e}");
    }
}
