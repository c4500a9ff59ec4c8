//! `orch-node --cluster cluster.toml`: one orch node (master and/or worker).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use orch_actors::protocol::SessionState;
use orch_runtime::exit;

// mimalloc: glibc's allocator, after a session of a million tasks, spends
// tens of milliseconds at a time consolidating freed blocks inside whatever
// message the master handles next (bench-placement --stalls, bench-fleet).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run one node of an orch cluster.
#[derive(Parser, Debug)]
#[command(name = "orch-node", version, about)]
struct Args {
    /// The node's configuration file.
    #[arg(long, value_name = "FILE", default_value = "cluster.toml")]
    cluster: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Run this session file to the end, print a summary and exit
    /// (0 when every frame was produced).
    #[arg(long, value_name = "SESSION.toml")]
    run: Option<PathBuf>,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match orch_runtime::config::load(&args.cluster) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            return exit::code(exit::USAGE);
        }
    };
    let session = match &args.run {
        Some(path) => match orch_runtime::session_file::load(path) {
            Ok(s) => Some(s),
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
                return exit::code(exit::USAGE);
            }
        },
        None => None,
    };
    orch_runtime::init_tracing(args.log_json, session.is_some());
    // Before any thread exists: the helper that kills this node's task
    // processes if the node dies (kill -9 included).
    if cfg.node.worker {
        if let Err(e) = orch_runtime::procs::start_reaper() {
            tracing::warn!(error = %e, "cannot start the task reaper; tasks' background processes may outlive a killed node until it restarts");
        }
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::code(exit::FAILED);
        }
    };
    let data_dir = cfg.node.data_dir.clone();
    let outcome = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = outcome.clone();
    let stop = async move {
        match session {
            None => shutdown_signal().await,
            Some(spec) => tokio::select! {
                _ = shutdown_signal() => {}
                r = orch_runtime::runner::run_session(spec, &data_dir) => {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            },
        }
    };
    if let Err(e) = rt.block_on(orch_runtime::run_node(cfg, stop)) {
        eprintln!("error: {e:#}");
        // A store that is not ours or is damaged: like a bad config, a usage error.
        if e.downcast_ref::<orch_runtime::store::StoreError>()
            .is_some()
            || e.downcast_ref::<orch_runtime::node::SecondMaster>()
                .is_some()
        {
            return exit::code(exit::USAGE);
        }
        return exit::code(exit::FAILED);
    }
    let outcome = outcome.lock().unwrap_or_else(|p| p.into_inner()).take();
    match outcome {
        None => ExitCode::SUCCESS,
        Some(Ok(SessionState::Completed)) => ExitCode::SUCCESS,
        Some(Ok(_)) => exit::code(exit::FAILED),
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            exit::code(exit::FAILED)
        }
    }
}
