//! orch-actors: the behaviour of an orch cluster. Actors, the wire protocol and
//! the pure decision logic they feed. No sockets, no files.

pub mod commit_gate;
pub mod device;
pub mod executor;
pub mod ids;
pub mod journal;
pub mod master;
pub mod masters;
pub mod membership;
pub mod metrics;
pub mod outbox;
#[cfg(test)]
mod probe;
pub mod protocol;
pub mod read_model;
pub mod scheduler;
pub mod session;
pub mod store;
pub mod wire;
pub mod worker;
