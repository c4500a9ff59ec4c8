//! A worker's outbox (SPEC §5.8): every progress report and result goes here
//! first, with a sequence number, and stays until the master acknowledges it
//! (after recording it in its own store). While the master is unreachable the
//! entries accumulate; when it is back they are delivered in order. With an
//! [`OutboxLog`] they also survive a restart of the worker.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::warn;

use crate::metrics as m;
use crate::protocol::{AttemptKey, ToMaster};
use crate::store::{decode_report, encode_report, OutboxLog};

struct Entry {
    msg: ToMaster,
    /// When it was last sent to a master; `None`: never.
    sent: Option<Instant>,
}

/// Unacknowledged reports, by sequence number.
pub struct Outbox {
    log: Option<Box<dyn OutboxLog>>,
    entries: BTreeMap<u64, Entry>,
    next_seq: u64,
    add: Vec<(u64, Vec<u8>)>,
    remove: Vec<u64>,
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
    pub fn open(mut log: Option<Box<dyn OutboxLog>>) -> Result<Self, String> {
        let mut entries = BTreeMap::new();
        if let Some(log) = log.as_mut() {
            for (seq, bytes) in log.load()? {
                let msg =
                    decode_report(&bytes).map_err(|e| format!("entry `{seq}` is damaged: {e}"))?;
                entries.insert(seq, Entry { msg, sent: None });
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
            entries,
            next_seq,
            add: Vec::new(),
            remove: Vec::new(),
            retry_at: None,
        };
        outbox.publish();
        Ok(outbox)
    }

    /// Set the `orch_outbox_pending` gauge (once the metrics recorder is installed).
    pub fn publish(&self) {
        metrics::gauge!(m::OUTBOX_PENDING).set(self.entries.len() as f64);
    }

    /// Entries waiting for an acknowledgement.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Add a report; returns it with its sequence number set, to send now.
    pub fn push(&mut self, mut msg: ToMaster, sending: bool) -> ToMaster {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(s) = seq_of(&mut msg) {
            *s = seq;
        }
        if self.log.is_some() {
            self.add.push((seq, encode_report(&msg)));
        }
        let sent = sending.then(Instant::now);
        self.entries.insert(
            seq,
            Entry {
                msg: msg.clone(),
                sent,
            },
        );
        self.publish();
        msg
    }

    /// The master recorded these entries.
    pub fn ack(&mut self, seqs: &[u64]) {
        for s in seqs {
            if self.entries.remove(s).is_some() && self.log.is_some() {
                self.remove.push(*s);
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
                e.sent = Some(now);
                match &mut e.msg {
                    ToMaster::Progress(p) => p.epoch = epoch,
                    ToMaster::Result(r) => r.epoch = epoch,
                    _ => {}
                }
                e.msg.clone()
            })
            .collect();
        metrics::counter!(m::OUTBOX_RESENT).increment(again);
        out
    }

    /// Whether the oldest entry was sent more than `after` ago without an
    /// acknowledgement (a message lost on a broken connection).
    pub fn overdue(&self, after: Duration) -> bool {
        self.entries
            .values()
            .next()
            .and_then(|e| e.sent)
            .is_some_and(|at| at.elapsed() > after)
    }

    /// Changes not yet written to the log.
    pub fn dirty(&self) -> bool {
        !self.add.is_empty() || !self.remove.is_empty()
    }

    /// Whether a write may be tried now (not backing off after an error).
    pub fn ready(&self) -> bool {
        self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Write the changes to the log (one transaction).
    pub fn flush(&mut self) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        if self.add.is_empty() && self.remove.is_empty() {
            return;
        }
        // An entry added and acknowledged within one batch never touches the disk.
        let removed: HashSet<u64> = self.remove.iter().copied().collect();
        let added: HashSet<u64> = self.add.iter().map(|(s, _)| *s).collect();
        self.add.retain(|(s, _)| !removed.contains(s));
        self.remove.retain(|s| !added.contains(s));
        match log.write(&self.add, &self.remove) {
            Ok(()) => {
                self.add.clear();
                self.remove.clear();
                self.retry_at = None;
            }
            Err(e) => {
                metrics::counter!(m::STORE_ERRORS).increment(1);
                warn!(error = %e, "cannot write the outbox; keeping reports in memory and retrying");
                self.retry_at = Some(Instant::now() + Duration::from_millis(500));
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
        fn load(&mut self) -> Result<Vec<(u64, Vec<u8>)>, String> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect())
        }
        fn write(&mut self, add: &[(u64, Vec<u8>)], remove: &[u64]) -> Result<(), String> {
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
        })
    }

    fn seq(m: &ToMaster) -> u64 {
        match m {
            ToMaster::Result(r) => r.seq,
            _ => 0,
        }
    }

    #[test]
    fn unacknowledged_entries_survive_a_restart_in_order() {
        let log = MemLog::default();
        let mut ob = Outbox::open(Some(Box::new(log.clone()))).unwrap();
        let a = ob.push(result(1), false);
        let b = ob.push(result(2), false);
        let c = ob.push(result(3), false);
        ob.flush();
        ob.ack(&[seq(&b)]);
        ob.flush();
        let mut again = Outbox::open(Some(Box::new(log))).unwrap();
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
        ob.ack(&[seq(&a)]);
        ob.flush();
        assert!(log.0.lock().unwrap().is_empty());
        assert!(ob.is_empty());
    }

    #[test]
    fn a_damaged_entry_is_an_error() {
        let log = MemLog::default();
        log.0.lock().unwrap().insert(5, vec![0xc1, 0x00]);
        let err = Outbox::open(Some(Box::new(log))).err().expect("refused");
        assert!(err.contains("entry `5` is damaged"), "{err}");
    }
}
