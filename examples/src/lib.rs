//! orch-examples: example configurations, and [`embedded`], a program that
//! embeds orch with an executor of its own (`cargo run -p orch-examples
//! --example embedded`). `runtime/tests/configs.rs` checks that every config
//! under `examples/` parses and validates.

pub mod embedded;
