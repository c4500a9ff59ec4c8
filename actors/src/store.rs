//! What the master and the workers keep on disk (SPEC §5.8, §9), as traits:
//! the runtime implements them with an embedded database, tests and
//! benchmarks may run without. Records are MessagePack, decoded with the same
//! depth limit as network input: a damaged store is an error, never a panic.
//!
//! - [`EventLog`]: the master's store. Every [`SchedEvent`] with its time, in
//!   order, appended in batches (group commit) before the master acts on
//!   them, plus [`StoreMeta`]. Replaying the events rebuilds the ledger.
//! - [`OutboxLog`]: a worker's outbox. Progress and results not yet
//!   acknowledged by the master, by sequence number.

use serde::{Deserialize, Serialize};

use crate::protocol::ToMaster;
use crate::scheduler::SchedEvent;
use crate::wire::{decode, encode};

/// IDs reserved ahead of the allocator in one durable step: a master restart
/// resumes above the reservation, so no chunk handed out before a crash is
/// issued again, even one the store did not record.
pub const ID_RESERVATION: u64 = 1 << 32;

/// What the master commits alongside each batch of events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMeta {
    /// No ID at or above this was ever handed out.
    pub id_reserved: u64,
    /// Highest worker epoch granted: epochs keep growing across restarts.
    pub last_epoch: u64,
}

/// The master's crash-safe event log.
pub trait EventLog: Send + 'static {
    /// Feed every recorded event to `each`, in order; returns the metadata of
    /// the last commit, `None` for a new store.
    fn replay(
        &mut self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<Option<StoreMeta>, String>;
    /// Append `records` and set `meta`, atomically. With `sync` the commit
    /// also survives a power loss before this returns.
    fn append(&mut self, records: &[Vec<u8>], meta: &StoreMeta, sync: bool) -> Result<(), String>;
}

/// A worker's durable outbox.
pub trait OutboxLog: Send + 'static {
    /// Every entry not yet removed, by sequence number.
    fn load(&mut self) -> Result<Vec<(u64, Vec<u8>)>, String>;
    /// Add and remove entries, atomically.
    fn write(&mut self, add: &[(u64, Vec<u8>)], remove: &[u64]) -> Result<(), String>;
}

/// One event of the master's log, with the scheduler time it happened at.
#[derive(Debug, Serialize, Deserialize)]
struct Record<E> {
    at_ms: u64,
    event: E,
}

/// Encode one event for [`EventLog::append`].
pub fn encode_event(at_ms: u64, event: &SchedEvent) -> Vec<u8> {
    encode(&Record { at_ms, event }).expect("events are plain data and always encode")
}

/// Decode one record of [`EventLog::replay`].
pub fn decode_event(bytes: &[u8]) -> Result<(u64, SchedEvent), String> {
    let r: Record<SchedEvent> = decode(bytes)?;
    Ok((r.at_ms, r.event))
}

/// Encode one outbox entry.
pub fn encode_report(msg: &ToMaster) -> Vec<u8> {
    encode(msg).expect("reports are plain data and always encode")
}

/// Decode one outbox entry.
pub fn decode_report(bytes: &[u8]) -> Result<ToMaster, String> {
    decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{AttemptKey, TaskOutcome, TaskResult};

    #[test]
    fn events_round_trip_with_their_time() {
        let ev = SchedEvent::Resume {
            id_floor: 7 << 32,
            within_ms: 9000,
        };
        let (at, back) = decode_event(&encode_event(42, &ev)).expect("decodes");
        assert_eq!(at, 42);
        assert!(
            matches!(back, SchedEvent::Resume { id_floor, within_ms: 9000 } if id_floor == 7 << 32)
        );
    }

    #[test]
    fn damaged_records_are_errors() {
        let bytes = encode_event(1, &SchedEvent::Tick);
        for cut in 0..bytes.len() {
            assert!(
                decode_event(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes"
            );
        }
        assert!(decode_event(&[0xc1; 16]).is_err());
    }

    #[test]
    fn reports_round_trip() {
        let msg = ToMaster::Result(TaskResult {
            node: "w1".into(),
            epoch: 3,
            key: AttemptKey {
                session: "s".into(),
                task: 4,
                attempt: 2,
            },
            device: "d0".into(),
            started_ms: 1,
            finished_ms: 2,
            last_id_used: Some(9),
            outputs: vec![],
            outcome: TaskOutcome::Completed,
            seq: 17,
        });
        assert_eq!(decode_report(&encode_report(&msg)).expect("decodes"), msg);
    }
}
