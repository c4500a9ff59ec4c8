//! The master's side of its store (docs/design/durability.md): replay at start, and group
//! commit while running. Events are recorded in a batch as they happen; one
//! commit makes the whole batch durable, and only then does the master act on
//! it (send assignments, acknowledge outbox entries, answer submissions).

use std::time::Instant;

use tracing::{info, warn};

use crate::metrics as m;
use crate::scheduler::{SchedCommand, SchedEvent, Scheduler};
use crate::store::{
    decode_events, encode_event_into, EventLog, StoreFault, StoreMeta, ID_RESERVATION,
};

/// The ledger rebuilt from a store.
pub struct Recovered {
    pub sched: Scheduler,
    pub meta: StoreMeta,
    /// Events replayed.
    pub events: u64,
    /// Scheduler time of the last event.
    pub last_at_ms: u64,
    /// Sessions whose end was replayed: their manifests must exist.
    pub finished: Vec<String>,
    /// Finished sessions whose `replay` grew after their end: their
    /// manifests are written again.
    pub amended: Vec<String>,
    /// Records to add to evicted sessions' manifests on disk (again: adding
    /// one that is there already changes nothing).
    pub on_disk: Vec<(String, crate::protocol::ReplayRecord)>,
}

/// Rebuild the ledger by replaying every event of `log`.
pub fn recover(log: &mut dyn EventLog, grace_ms: u64) -> Result<Recovered, StoreFault> {
    let mut sched = Scheduler::new(0).with_grace(grace_ms);
    let (mut events, mut last_at_ms) = (0u64, 0u64);
    let (mut finished, mut amended, mut on_disk) = (Vec::new(), Vec::new(), Vec::new());
    let mut batches = 0u64;
    let meta = log.replay(&mut |bytes| {
        batches += 1;
        let n = decode_events(bytes, |at, ev| {
            last_at_ms = last_at_ms.max(at);
            for cmd in sched.on_event(ev, at) {
                match cmd {
                    SchedCommand::SessionFinished { session, .. } => finished.push(session),
                    SchedCommand::ManifestAmended { session } if !amended.contains(&session) => {
                        amended.push(session)
                    }
                    SchedCommand::AmendOnDisk { session, record } => {
                        on_disk.push((session, record))
                    }
                    _ => {}
                }
            }
        })
        .map_err(|e| StoreFault::Damaged(format!("batch {batches} is damaged: {e}")))?;
        events += n as u64;
        Ok(())
    })?;
    let meta = meta.unwrap_or_default();
    if sched.ids().high_water() > meta.id_reserved {
        return Err(StoreFault::Damaged(format!(
            "the replayed ID high-water `{}` is above the recorded reservation `{}`",
            sched.ids().high_water(),
            meta.id_reserved
        )));
    }
    Ok(Recovered {
        sched,
        meta,
        events,
        last_at_ms,
        finished,
        amended,
        on_disk,
    })
}

/// Group commit of scheduler events. Events are encoded into a batch as they
/// are recorded; [`Journal::commit`] writes the whole batch as one
/// transaction, on the caller's thread. The master commits when a message it
/// sent itself comes up in its mailbox, so everything that arrived before it
/// shares one commit.
pub struct Journal {
    log: Option<Box<dyn EventLog>>,
    /// Also survive power loss: sync every commit, not only reservations.
    sync_always: bool,
    /// Records of the batch being filled, one after the other.
    batch: Vec<u8>,
    /// Events in `batch`.
    count: usize,
    /// Metadata as of the last commit.
    meta: StoreMeta,
}

impl Journal {
    /// A journal writing to `log` (`None`: memory only).
    pub fn new(log: Option<Box<dyn EventLog>>, meta: StoreMeta, sync_always: bool) -> Self {
        Self {
            log,
            sync_always,
            batch: Vec::new(),
            count: 0,
            meta,
        }
    }

    /// Close the store (after the last commit, on a clean stop).
    pub fn close(&mut self) {
        self.log = None;
    }

    /// Whether events are recorded at all (`false`: in-memory master).
    pub fn durable(&self) -> bool {
        self.log.is_some()
    }

    /// IDs below this are reserved in the store (as of the last commit).
    pub fn id_reserved(&self) -> u64 {
        self.meta.id_reserved
    }

    /// Record an event about to be fed to the scheduler at `at_ms`.
    pub fn record(&mut self, at_ms: u64, ev: &SchedEvent) {
        if self.log.is_some() {
            encode_event_into(&mut self.batch, at_ms, ev);
            self.count += 1;
        }
    }

    /// Events recorded since the last commit.
    pub fn events(&self) -> usize {
        self.count
    }

    /// The metadata the next commit writes.
    fn next_meta(&self, id_high_water: u64, last_epoch: u64) -> StoreMeta {
        let mut meta = self.meta;
        meta.last_epoch = meta.last_epoch.max(last_epoch);
        // Stay half a reservation ahead of the allocator, so the synced write
        // of the next one rarely holds up a commit (and never the first
        // session after a start: the master reserves before it serves).
        if id_high_water.saturating_add(ID_RESERVATION / 2) > meta.id_reserved {
            meta.id_reserved = id_high_water.saturating_add(ID_RESERVATION);
        }
        meta
    }

    /// Whether anything waits to be written: events, an epoch, or IDs above
    /// the reservation.
    pub fn dirty(&self, id_high_water: u64, last_epoch: u64) -> bool {
        self.log.is_some()
            && (!self.batch.is_empty() || self.next_meta(id_high_water, last_epoch) != self.meta)
    }

    /// Write the batch as one transaction, reserving IDs ahead of the
    /// allocator first if `id_high_water` passed the reservation (a synced
    /// write). `Ok(false)`: nothing to write; `Err`: the store's error (the
    /// caller must stop: later events depend on it).
    pub fn commit(&mut self, id_high_water: u64, last_epoch: u64) -> Result<bool, StoreFault> {
        let meta = self.next_meta(id_high_water, last_epoch);
        if self.batch.is_empty() && meta == self.meta {
            return Ok(false);
        }
        let Some(log) = self.log.as_mut() else {
            return Ok(false);
        };
        let reserve = meta.id_reserved != self.meta.id_reserved;
        let started = Instant::now();
        match log.append(&self.batch, &meta, reserve || self.sync_always) {
            Ok(()) => {
                metrics::histogram!(m::STORE_COMMIT_DURATION)
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!(m::STORE_COMMITS).increment(1);
                metrics::counter!(m::STORE_EVENTS).increment(self.count as u64);
                if reserve {
                    info!(id_reserved = meta.id_reserved, "ID reservation recorded");
                }
                self.meta = meta;
                self.batch.clear();
                self.count = 0;
                Ok(true)
            }
            Err(e) => {
                metrics::counter!(m::STORE_ERRORS).increment(1);
                warn!(error = %e, events = self.count, "cannot write the master's store");
                // Write nothing after a failed commit.
                self.log = None;
                Err(e)
            }
        }
    }
}
