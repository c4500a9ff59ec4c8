//! orch-runtime: I/O and wiring of an orch node. Configuration, the cluster
//! link, the admin API, the metrics exporter, and the `orch-node` and `orchctl`
//! binaries.

pub mod admin;
mod admin_data;
mod admin_events;
mod admin_pipelines;
pub mod cluster_link;
pub mod cluster_port;
pub mod collect;
pub mod command;
pub mod config;
pub mod data_plane;
pub mod device_sources;
pub mod events_file;
pub mod exit;
pub mod fetch;
pub mod metrics;
pub mod node;
pub mod node_checks;
pub mod node_io;
pub mod outputs;
pub mod pipeline_file;
pub mod procs;
pub mod runner;
pub mod session_file;
pub mod store;
pub mod task_log;
pub mod tls;
pub mod tokens;
pub mod webhooks;
pub mod workflow_file;

pub use node::{run_node, run_node_with};
pub use node_io::{Executors, RegisterError};

/// Set up `tracing` to stderr; `RUST_LOG` overrides the default filter.
/// `quiet` (a foreground `--run`) keeps only warnings, so the progress bar stays readable.
pub fn init_tracing(json: bool, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    // ractor_cluster warns once per closed session, authenticated or not:
    // a flood of connections would flood the log. The cluster link logs
    // what matters of them itself, rate-limited.
    let default = if quiet {
        "warn,ractor=error,ractor_cluster=error"
    } else {
        "info,ractor=warn,ractor_cluster=error"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
