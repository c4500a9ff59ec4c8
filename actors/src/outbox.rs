//! A worker's outbox (docs/design/durability.md): every progress report and result goes here
//! first, with a sequence number, and stays until the master acknowledges it
//! (after recording it in its own store). While the master is unreachable the
//! entries accumulate; when it is back they are delivered in order. With an
//! [`OutboxLog`] they also survive a restart of the worker.
//!
//! A report still unacknowledged [`WRITE_AFTER`] after it was sent is written
//! to the log, and so is every report made while no master listens, and every
//! report held when the master goes away. A report the master acknowledges
//! within [`WRITE_AFTER`] (the normal case: it commits in well under a
//! millisecond) never touches the disk. The price: a worker killed within
//! [`WRITE_AFTER`] of a report, with the master also not having recorded it,
//! loses that report, and its attempt is run again like any other attempt of
//! a dead worker (docs/sessions.md), recorded in the manifest's `replay`.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::warn;

use crate::metrics as m;
use crate::protocol::{AttemptKey, ToMaster};
use crate::store::{decode_report, encode_report, OutboxLog, StoreFault};

/// How long a report sent to a listening master may wait for its
/// acknowledgement before it is written to the log.
pub const WRITE_AFTER: Duration = Duration::from_millis(100);

/// After a failed write, wait this long before the next try.
const RETRY_AFTER: Duration = Duration::from_millis(500);

struct Entry {
    msg: ToMaster,
    /// When it was last sent to a master; `None`: never.
    sent: Option<Instant>,
    /// When it is due in the log, while it is not there yet.
    due: Option<Instant>,
}

impl Entry {
    /// The message stamped with `epoch`, marked sent at `now`.
    fn send(&mut self, now: Instant, epoch: u64) -> ToMaster {
        self.sent = Some(now);
        match &mut self.msg {
            ToMaster::Progress(p) => p.epoch = epoch,
            ToMaster::Result(r) => r.epoch = epoch,
            _ => {}
        }
        self.msg.clone()
    }
}

/// Unacknowledged reports, by sequence number.
pub struct Outbox {
    log: Option<Box<dyn OutboxLog>>,
    entries: BTreeMap<u64, Entry>,
    next_seq: u64,
    /// Entries not yet in the log, in the order they are due (entries
    /// acknowledged meanwhile are skipped when met).
    unwritten: VecDeque<u64>,
    /// Entries in the log that the master acknowledged, to delete.
    remove: Vec<u64>,
    /// A report was made while no master listens: write everything now.
    urgent: bool,
    /// Unacknowledged entries that are in the log.
    stored: usize,
    retry_at: Option<Instant>,
}

fn seq_of(msg: &mut ToMaster) -> Option<&mut u64> {
    match msg {
        ToMaster::Progress(p) => Some(&mut p.seq),
        ToMaster::Result(r) => Some(&mut r.seq),
        _ => None,
    }
}

impl Outbox {
    /// An outbox with what `log` kept from before a restart. Damaged entries
    /// are an error: the caller refuses to start rather than lose them.
    pub fn open(mut log: Option<Box<dyn OutboxLog>>) -> Result<Self, StoreFault> {
        let mut entries = BTreeMap::new();
        if let Some(log) = log.as_mut() {
            for (seq, bytes) in log.load()? {
                let msg = decode_report(&bytes)
                    .map_err(|e| StoreFault::Damaged(format!("entry `{seq}` is damaged: {e}")))?;
                entries.insert(
                    seq,
                    Entry {
                        msg,
                        sent: None,
                        due: None,
                    },
                );
            }
        }
        // Sequence numbers grow across restarts even when the outbox is empty,
        // so a late acknowledgement meant for an earlier process matches nothing.
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        let next_seq = entries
            .last_key_value()
            .map_or(1, |(s, _)| s + 1)
            .max(clock);
        let outbox = Self {
            log,
            stored: entries.len(),
            entries,
            next_seq,
            unwritten: VecDeque::new(),
            remove: Vec::new(),
            urgent: false,
            retry_at: None,
        };
        outbox.publish();
        Ok(outbox)
    }

    /// Set the `orch_outbox_pending` gauge (once the metrics recorder is installed).
    pub fn publish(&self) {
        metrics::gauge!(m::OUTBOX_PENDING).set(self.entries.len() as f64);
        metrics::gauge!(m::OUTBOX_STORED).set(self.stored as f64);
    }

    /// Unacknowledged entries that are in the log.
    pub fn stored(&self) -> usize {
        self.stored
    }

    /// Entries waiting for an acknowledgement.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add a report; returns it with its sequence number set, to send now if
    /// `sending` (else it is due in the log at once).
    pub fn push(&mut self, mut msg: ToMaster, sending: bool) -> ToMaster {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(s) = seq_of(&mut msg) {
            *s = seq;
        }
        let now = Instant::now();
        let due = self.log.is_some().then(|| {
            self.unwritten.push_back(seq);
            self.urgent |= !sending;
            now + WRITE_AFTER
        });
        self.entries.insert(
            seq,
            Entry {
                msg: msg.clone(),
                sent: sending.then_some(now),
                due,
            },
        );
        self.publish();
        msg
    }

    /// The master recorded these entries.
    pub fn ack(&mut self, seqs: &[u64]) {
        for s in seqs {
            if let Some(e) = self.entries.remove(s) {
                if self.log.is_some() && e.due.is_none() {
                    self.remove.push(*s);
                    self.stored -= 1;
                }
            }
        }
        self.publish();
    }

    /// Attempts whose result waits in the outbox.
    pub fn held(&self) -> HashSet<AttemptKey> {
        self.entries
            .values()
            .filter_map(|e| match &e.msg {
                ToMaster::Result(r) => Some(r.key.clone()),
                _ => None,
            })
            .collect()
    }

    /// The device of `key`'s result waiting here, if any.
    pub fn device_of(&self, key: &AttemptKey) -> Option<&str> {
        self.entries.values().find_map(|e| match &e.msg {
            ToMaster::Result(r) if r.key == *key => Some(r.device.as_str()),
            _ => None,
        })
    }

    /// Every entry, in order, stamped with `epoch`, to send (again).
    pub fn take_all(&mut self, epoch: u64) -> Vec<ToMaster> {
        let now = Instant::now();
        let mut again = 0u64;
        let out = self
            .entries
            .values_mut()
            .map(|e| {
                if e.sent.is_some() {
                    again += 1;
                }
                e.send(now, epoch)
            })
            .collect();
        metrics::counter!(m::OUTBOX_RESENT).increment(again);
        out
    }

    /// Entries made while they were held back (see the worker's silent
    /// master), in order, stamped with `epoch`, to send now.
    pub fn take_unsent(&mut self, epoch: u64) -> Vec<ToMaster> {
        let now = Instant::now();
        self.entries
            .values_mut()
            .filter(|e| e.sent.is_none())
            .map(|e| e.send(now, epoch))
            .collect()
    }

    /// Whether the oldest entry was sent more than `after` ago without an
    /// acknowledgement.
    pub fn overdue(&self, after: Duration) -> bool {
        self.oldest_sent().is_some_and(|at| at.elapsed() > after)
    }

    /// When the oldest entry was last sent (`None`: nothing waits, or it was
    /// never sent).
    pub fn oldest_sent(&self) -> Option<Instant> {
        self.entries.values().next().and_then(|e| e.sent)
    }

    /// When the next write to the log is due (`None`: nothing to write).
    pub fn next_write(&mut self) -> Option<Instant> {
        self.log.as_ref()?;
        // Drop acknowledged entries from the front of the queue.
        while let Some(seq) = self.unwritten.front() {
            if self.entries.get(seq).is_some_and(|e| e.due.is_some()) {
                break;
            }
            self.unwritten.pop_front();
        }
        let first = self
            .unwritten
            .front()
            .and_then(|s| self.entries.get(s))
            .and_then(|e| e.due);
        let at = match (first, self.remove.is_empty()) {
            (Some(_), _) if self.urgent => Instant::now(),
            (Some(at), _) => at,
            // Deletions alone are not urgent: a stale entry left in the log
            // is sent again after a restart and the master ignores it.
            (None, false) => Instant::now() + WRITE_AFTER,
            (None, true) => return None,
        };
        Some(self.retry_at.map_or(at, |r| at.max(r)))
    }

    /// Write the entries that are due, with the deletions gathered so far, in
    /// one transaction. `all`: every unacknowledged entry is due now (the
    /// master went away, or the worker stops).
    pub fn flush(&mut self, all: bool) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let now = Instant::now();
        let all = all || self.urgent;
        let mut add = Vec::new();
        let mut taken = 0;
        for seq in &self.unwritten {
            match self.entries.get(seq).and_then(|e| e.due) {
                Some(due) if all || due <= now => {
                    add.push((*seq, encode_report(&self.entries[seq].msg)))
                }
                Some(_) => break,
                None => {}
            }
            taken += 1;
        }
        if add.is_empty() && self.remove.is_empty() {
            return;
        }
        match log.write(&add, &self.remove) {
            Ok(()) => {
                for (seq, _) in &add {
                    if let Some(e) = self.entries.get_mut(seq) {
                        e.due = None;
                        self.stored += 1;
                    }
                }
                self.publish();
                self.unwritten.drain(..taken);
                self.remove.clear();
                self.urgent &= !all;
                self.retry_at = None;
            }
            Err(e) => {
                metrics::counter!(m::STORE_ERRORS).increment(1);
                warn!(error = %e, "cannot write the outbox; keeping reports in memory and retrying");
                self.retry_at = Some(now + RETRY_AFTER);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{TaskOutcome, TaskResult};
    use std::sync::{Arc, Mutex};

    #[derive(Default, Clone)]
    struct MemLog(Arc<Mutex<BTreeMap<u64, Vec<u8>>>>);

    impl OutboxLog for MemLog {
        fn load(&mut self) -> Result<Vec<(u64, Vec<u8>)>, StoreFault> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect())
        }
        fn write(&mut self, add: &[(u64, Vec<u8>)], remove: &[u64]) -> Result<(), StoreFault> {
            let mut m = self.0.lock().unwrap();
            for (k, v) in add {
                m.insert(*k, v.clone());
            }
            for k in remove {
                m.remove(k);
            }
            Ok(())
        }
    }

    fn result(task: u64) -> ToMaster {
        ToMaster::Result(TaskResult {
            node: "w".into(),
            epoch: 1,
            key: AttemptKey {
                session: "s".into(),
                task,
                attempt: 1,
            },
            device: "d".into(),
            started_ms: 0,
            finished_ms: 0,
            last_id_used: None,
            outputs: vec![],
            outcome: TaskOutcome::Completed,
            seq: 0,
            steps: Vec::new(),
        })
    }

    fn seq(m: &ToMaster) -> u64 {
        match m {
            ToMaster::Result(r) => r.seq,
            _ => 0,
        }
    }

    #[test]
    fn a_waiting_result_names_its_device() {
        let mut ob = Outbox::open(None).unwrap();
        ob.push(result(1), false);
        let key = |task| AttemptKey {
            session: "s".into(),
            task,
            attempt: 1,
        };
        assert_eq!(ob.device_of(&key(1)), Some("d"));
        assert_eq!(ob.device_of(&key(2)), None);
    }

    #[test]
    fn unacknowledged_entries_survive_a_restart_in_order() {
        let log = MemLog::default();
        let mut ob = Outbox::open(Some(Box::new(log.clone()))).unwrap();
        let a = ob.push(result(1), false);
        let b = ob.push(result(2), false);
        let c = ob.push(result(3), false);
        assert!(ob.next_write().is_some_and(|t| t <= Instant::now()));
        ob.flush(false);
        assert_eq!(
            log.0.lock().unwrap().len(),
            3,
            "reports made with no master are written at once"
        );
        ob.ack(&[seq(&b)]);
        ob.flush(false);
        let mut again = Outbox::open(Some(Box::new(log))).unwrap();
        assert_eq!(again.stored(), 2);
        let keys: Vec<u64> = again.take_all(9).iter().map(seq).collect();
        assert_eq!(keys, vec![seq(&a), seq(&c)]);
        assert_eq!(again.held().len(), 2);
        let d = again.push(result(4), true);
        assert!(seq(&d) > seq(&c), "sequence numbers grow across restarts");
    }

    #[test]
    fn entries_acknowledged_before_a_write_never_reach_the_log() {
        let log = MemLog::default();
        let mut ob = Outbox::open(Some(Box::new(log.clone()))).unwrap();
        let a = ob.push(result(1), true);
        ob.flush(false);
        assert!(log.0.lock().unwrap().is_empty(), "not due yet");
        ob.ack(&[seq(&a)]);
        assert_eq!(ob.next_write(), None);
        ob.flush(true);
        assert!(log.0.lock().unwrap().is_empty());
        assert!(ob.is_empty());
    }

    #[test]
    fn an_entry_unacknowledged_after_write_after_reaches_the_log() {
        let log = MemLog::default();
        let mut ob = Outbox::open(Some(Box::new(log.clone()))).unwrap();
        let sent = Instant::now();
        let a = ob.push(result(1), true);
        let due = ob.next_write().expect("a write is due");
        assert!(due >= sent + WRITE_AFTER, "due only after WRITE_AFTER");
        ob.flush(false);
        assert!(log.0.lock().unwrap().is_empty(), "not due yet");
        // Wait for the instant it is due, then write.
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        ob.flush(false);
        assert_eq!(
            log.0.lock().unwrap().keys().copied().collect::<Vec<_>>(),
            vec![seq(&a)]
        );
        assert_eq!(ob.next_write(), None);
        // Its acknowledgement deletes it from the log.
        ob.ack(&[seq(&a)]);
        assert!(ob.next_write().is_some());
        ob.flush(true);
        assert!(log.0.lock().unwrap().is_empty());
    }

    #[test]
    fn flush_all_writes_every_unacknowledged_entry_at_once() {
        let log = MemLog::default();
        let mut ob = Outbox::open(Some(Box::new(log.clone()))).unwrap();
        ob.push(result(1), true);
        ob.push(result(2), true);
        ob.flush(true);
        assert_eq!(log.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_damaged_entry_is_an_error() {
        let log = MemLog::default();
        log.0.lock().unwrap().insert(5, vec![0xc1, 0x00]);
        let err = Outbox::open(Some(Box::new(log))).err().expect("refused");
        assert!(matches!(err, StoreFault::Damaged(_)), "{err:?}");
        assert!(err.to_string().contains("entry `5` is damaged"), "{err}");
    }
}
