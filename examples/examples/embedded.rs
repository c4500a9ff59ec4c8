//! A program that embeds orch with an executor of its own: one node in this
//! process (master + worker, on 127.0.0.1 ports picked free) renders a
//! Mandelbrot image one row per frame with a Rust executor, registered as
//! `rust:mandelbrot` (examples/src/embedded.rs, docs/sessions.md).
//!
//! ```sh
//! cargo run -p orch-examples --example embedded            # in a temporary folder
//! cargo run -p orch-examples --example embedded -- DATA_DIR  # keep the node's files
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use orch_actors::protocol::SessionState;

#[tokio::main]
async fn main() -> ExitCode {
    // Warnings only: the summary is the output.
    orch_runtime::init_tracing(false, true);
    let (data_dir, temporary) = match std::env::args_os().nth(1) {
        Some(dir) => (PathBuf::from(dir), None),
        None => match tempfile::tempdir() {
            Ok(t) => (t.path().to_path_buf(), Some(t)),
            Err(e) => {
                eprintln!("error: cannot make a temporary folder: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match orch_examples::embedded::run(&data_dir).await {
        Ok(outcome) => {
            print!("{}", outcome.summary());
            if temporary.is_some() {
                println!(
                    "(the data_dir is a temporary folder, removed now: pass a folder to keep it)"
                );
            }
            if outcome.session.state == SessionState::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
