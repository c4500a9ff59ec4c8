//! orch-actors: the behaviour of an orch cluster. Actors, the wire protocol and
//! the pure decision logic they feed. No sockets, no files.

pub mod commit_gate;
pub mod device;
pub mod events;
pub mod executor;
pub mod identity;
pub mod ids;
pub mod journal;
pub mod master;
pub mod masters;
pub mod membership;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod protocol;
pub mod read_model;
pub mod scheduler;
pub mod session;
pub mod store;
#[cfg(test)]
mod test_support;
pub mod wire;
pub mod worker;
pub mod workflow;
