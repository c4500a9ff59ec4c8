//! Pipelines (docs/pipelines.md): DAGs of stages run on the cluster.
//!
//! [`Pipelines`] is part of the ledger: the scheduler feeds it the
//! pipeline events it records (definitions, manual runs, cancels, re-runs,
//! ticks) and the end of every session; it answers with sessions to submit
//! or cancel and events to publish. It decides from the event and the
//! ledger's clock alone, so a replay after a master restart rebuilds every
//! run, breaker and schedule as it was, and a slot that fired before the
//! restart does not fire again.

mod engine;
pub mod spec;

#[cfg(test)]
mod engine_test;

pub use engine::*;
pub use spec::*;
