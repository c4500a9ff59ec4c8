//! What the master and the workers keep on disk (docs/design/durability.md), as traits:
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

/// Why a store could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreFault {
    /// The database refused a read or a write (I/O, a full disk,
    /// permissions, a lock held by another process).
    #[error("{0}")]
    Backend(String),
    /// What was read does not decode, or contradicts itself: the store is
    /// damaged (a node refuses to start on it rather than lose it).
    #[error("{0}")]
    Damaged(String),
}

/// The master's crash-safe event log.
pub trait EventLog: Send + 'static {
    /// Feed every recorded batch (see [`encode_event_into`]) to `each`, in
    /// order; returns the metadata of the last commit, `None` for a new store.
    fn replay(
        &mut self,
        each: &mut dyn FnMut(&[u8]) -> Result<(), StoreFault>,
    ) -> Result<Option<StoreMeta>, StoreFault>;
    /// Append one batch of records and set `meta`, atomically. With `sync`
    /// the commit also survives a power loss before this returns.
    fn append(&mut self, batch: &[u8], meta: &StoreMeta, sync: bool) -> Result<(), StoreFault>;
}

/// A worker's durable outbox.
pub trait OutboxLog: Send + 'static {
    /// Every entry not yet removed, by sequence number.
    fn load(&mut self) -> Result<Vec<(u64, Vec<u8>)>, StoreFault>;
    /// Add and remove entries, atomically.
    fn write(&mut self, add: &[(u64, Vec<u8>)], remove: &[u64]) -> Result<(), StoreFault>;
}

/// One event of the master's log, with the scheduler time it happened at.
#[derive(Debug, Serialize, Deserialize)]
struct Record<E> {
    at_ms: u64,
    event: E,
}

/// Append one event to a batch for [`EventLog::append`]: a batch is records
/// one after the other.
pub fn encode_event_into(batch: &mut Vec<u8>, at_ms: u64, event: &SchedEvent) {
    rmp_serde::encode::write_named(batch, &Record { at_ms, event })
        .expect("events are plain data and always encode")
}

/// Decode a batch of [`EventLog::replay`], feeding each event to `each`;
/// returns how many there were.
pub fn decode_events(
    batch: &[u8],
    mut each: impl FnMut(u64, SchedEvent),
) -> Result<usize, StoreFault> {
    use serde::Deserialize as _;
    let mut rest = batch;
    let mut n = 0;
    while !rest.is_empty() {
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        de.set_max_depth(crate::wire::MAX_DEPTH);
        let r = Record::<SchedEvent>::deserialize(&mut de).map_err(|e| {
            StoreFault::Damaged(format!(
                "record {} of a batch of {} bytes: {e}",
                n + 1,
                batch.len()
            ))
        })?;
        each(r.at_ms, r.event);
        n += 1;
    }
    Ok(n)
}

/// Encode one outbox entry.
pub fn encode_report(msg: &ToMaster) -> Vec<u8> {
    encode(msg).expect("reports are plain data and always encode")
}

/// Decode one outbox entry.
pub fn decode_report(bytes: &[u8]) -> Result<ToMaster, StoreFault> {
    decode(bytes).map_err(StoreFault::Damaged)
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
        let mut batch = Vec::new();
        encode_event_into(&mut batch, 42, &ev);
        let mut back = Vec::new();
        decode_events(&batch, |at, e| back.push((at, e))).expect("decodes");
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, 42);
        assert!(
            matches!(back[0].1, SchedEvent::Resume { id_floor, within_ms: 9000 } if id_floor == 7 << 32)
        );
    }

    #[test]
    fn a_batch_decodes_record_by_record_and_a_cut_batch_is_an_error() {
        let mut batch = Vec::new();
        for i in 0..5 {
            encode_event_into(&mut batch, i, &SchedEvent::Tick);
        }
        let mut times = Vec::new();
        assert_eq!(decode_events(&batch, |at, _| times.push(at)), Ok(5));
        assert_eq!(times, vec![0, 1, 2, 3, 4]);
        for cut in 1..batch.len() {
            if decode_events(&batch[..cut], |_, _| {}).is_ok() {
                // Only a cut between two records decodes, to fewer of them.
                let n = decode_events(&batch[..cut], |_, _| {}).unwrap();
                assert!(n < 5);
            }
        }
        assert!(decode_events(&[0xc1, 0x00], |_, _| {}).is_err());
    }

    #[test]
    fn damaged_records_are_errors() {
        let mut bytes = Vec::new();
        encode_event_into(&mut bytes, 1, &SchedEvent::Tick);
        for cut in 1..bytes.len() {
            assert!(
                decode_events(&bytes[..cut], |_, _| {}).is_err(),
                "prefix of {cut} bytes"
            );
        }
        assert!(decode_events(&[0xc1; 16], |_, _| {}).is_err());
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
            steps: Vec::new(),
        });
        assert_eq!(decode_report(&encode_report(&msg)).expect("decodes"), msg);
    }
}
