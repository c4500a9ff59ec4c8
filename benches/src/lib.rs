//! orch-benches: criterion benches and the side-by-side cluster harness live here.
