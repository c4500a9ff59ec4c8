//! orch-runtime: I/O and wiring of an orch node. Configuration, the cluster
//! link, the admin API, the metrics exporter, and the `orch-node` and `orchctl`
//! binaries.

pub mod admin;
pub mod cluster_link;
pub mod config;
pub mod metrics;
pub mod node;

pub use node::run_node;

/// Exit code for bad input: a bad configuration file, bad arguments.
pub const EXIT_USAGE: i32 = 2;

/// Set up `tracing` to stderr; `RUST_LOG` overrides the default filter.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,ractor=warn,ractor_cluster=warn"));
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
