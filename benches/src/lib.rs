//! orch-benches: criterion benches and the side-by-side cluster harness live here.

/// The `[store] durability` modes of a node's `cluster.toml`, in the order the
/// `durability` shape of `bench-cluster` runs them: no store, the default,
/// fsync on every commit.
pub const DURABILITY_MODES: [&str; 3] = ["memory", "process", "power"];
