//! orch-examples: example configurations. `tests/configs.rs` checks that every
//! config under `examples/` parses and validates.
