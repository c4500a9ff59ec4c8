//! `orch-node --run SESSION.toml`: submit a session to the cluster's master,
//! show a progress bar until it ends, and print a summary.

use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use orch_actors::master::MasterMsg;
use orch_actors::masters;
use orch_actors::protocol::{AdminReply, AdminRequest, SessionSpec, SessionState, SessionView};
use ractor::rpc::CallResult;
use ractor::ActorRef;

/// How long `--run` waits for a master to appear.
const MASTER_WAIT: Duration = Duration::from_secs(30);

async fn ask(req: AdminRequest) -> anyhow::Result<AdminReply> {
    let deadline = Instant::now() + MASTER_WAIT;
    let master: ActorRef<MasterMsg> = loop {
        if let Some((_, master)) = masters::current() {
            break master;
        }
        if Instant::now() > deadline {
            anyhow::bail!("no master is reachable after {MASTER_WAIT:?}; is a node with role `master` running?");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    match master
        .call(
            |port| MasterMsg::Admin(req, port),
            Some(Duration::from_secs(10)),
        )
        .await
    {
        Ok(CallResult::Success(r)) => Ok(r),
        _ => anyhow::bail!("the master did not answer"),
    }
}

async fn view(id: &str) -> anyhow::Result<SessionView> {
    match ask(AdminRequest::Session(id.to_string())).await? {
        AdminReply::Session(v) => Ok(v),
        other => anyhow::bail!("unexpected answer from the master: {other:?}"),
    }
}

/// Submit `spec`, follow it to the end, print a summary; the session's final state.
pub async fn run_session(spec: SessionSpec, data_dir: &Path) -> anyhow::Result<SessionState> {
    let started = Instant::now();
    let id = match ask(AdminRequest::Submit(spec.clone())).await? {
        AdminReply::Submitted { id } => id,
        AdminReply::Error(e) => anyhow::bail!("session refused: {e}"),
        other => anyhow::bail!("unexpected answer from the master: {other:?}"),
    };
    eprintln!(
        "session `{id}`: {} frames in tasks of {}, executor {}",
        spec.frames.len(),
        spec.chunk_frames,
        spec.executor.name()
    );
    let bar = ProgressBar::new(spec.frames.len());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} frames {per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let plain = bar.is_hidden();
    let mut last_plain = Instant::now();
    let v = loop {
        let v = view(&id).await?;
        bar.set_position(v.frames_done);
        let mut msg = format!(
            "in flight {} failed {} retries {}",
            v.tasks_running, v.frames_failed, v.retries
        );
        if let Some(w) = &v.waiting {
            if v.tasks_running == 0 {
                msg = format!("waiting: {w}");
            }
        }
        bar.set_message(msg.clone());
        if plain && last_plain.elapsed() > Duration::from_secs(2) {
            eprintln!("{}/{} frames, {msg}", v.frames_done, v.frames_total);
            last_plain = Instant::now();
        }
        if v.state.is_final() {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    bar.finish_and_clear();
    let data_dir = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    println!(
        "session {} {} in {:.1}s",
        v.id,
        v.state.as_str(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "  frames    {}/{} done, {} failed",
        v.frames_done, v.frames_total, v.frames_failed
    );
    println!(
        "  tasks     {} ({} retries, {} failovers, {} stale results rejected)",
        v.tasks_total, v.retries, v.failovers, v.stale_rejected
    );
    println!(
        "  manifest  {}",
        data_dir
            .join("sessions")
            .join(&v.id)
            .join("manifest.json")
            .display()
    );
    print_outputs(&v, &data_dir).await;
    if let AdminReply::Manifest(m) = ask(AdminRequest::Manifest(id.clone())).await? {
        for f in &m.failed {
            println!(
                "  failed    frames [{}, {}) after {} attempts: {}",
                f.frames.start, f.frames.end, f.attempts, f.error
            );
        }
    }
    Ok(v.state)
}

/// How long `--run` waits, after the session ended, for its outputs to be collected.
const COLLECT_WAIT: Duration = Duration::from_secs(120);

/// Where the outputs are: the collected folder, once this node's collector
/// has them all (waiting for it with a line of progress), or the workers'.
async fn print_outputs(v: &SessionView, data_dir: &Path) {
    let here = masters::current().map(|(c, _)| c.node);
    let collector = match v.collect.as_str() {
        "" => None,
        orch_actors::protocol::COLLECT_MASTER => here.clone(),
        node => Some(node.to_string()),
    };
    let Some(collector) = collector else {
        println!(
            "  outputs   {} (not collected)",
            data_dir.join("out").join(&v.id).display()
        );
        return;
    };
    let dir = data_dir.join(crate::collect::output_rel(&v.id));
    let deadline = Instant::now() + COLLECT_WAIT;
    let mut said = Instant::now();
    let state = loop {
        let state = crate::collect::read_state(data_dir, &v.id).ok().flatten();
        match &state {
            Some(c) if c.settled => break state,
            None if v.frames_done == 0 => break state,
            _ if Instant::now() > deadline => break state,
            Some(c) if said.elapsed() > Duration::from_secs(2) => {
                eprintln!(
                    "collecting outputs: {}/{} files",
                    c.collected,
                    c.files.len()
                );
                said = Instant::now();
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    match state {
        Some(c) if Some(&collector) == here.as_ref() => {
            let mut line = format!("  outputs   {} ({} files collected, sha256 verified", dir.display(), c.collected);
            for (n, what) in [(c.pending, "pending"), (c.uncollected, "uncollected"), (c.failed, "failed"), (c.conflicts, "in conflict")] {
                if n > 0 {
                    line.push_str(&format!(", {n} {what}"));
                }
            }
            println!("{line})");
        }
        _ => println!(
            "  outputs   collected on node `{collector}` in {} (`orchctl fetch {} DIR` downloads them)",
            crate::collect::output_rel(&v.id),
            v.id
        ),
    }
}
