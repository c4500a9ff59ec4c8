//! The master's side of its store (SPEC §9): replay at start, and group
//! commit while running. Events are recorded in a batch as they happen; one
//! commit makes the whole batch durable, and only then does the master act on
//! it (send assignments, acknowledge outbox entries, answer submissions).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::metrics as m;
use crate::scheduler::{SchedCommand, SchedEvent, Scheduler};
use crate::store::{decode_event, encode_event, EventLog, StoreMeta, ID_RESERVATION};

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
}

/// Rebuild the ledger by replaying every event of `log`.
pub fn recover(log: &mut dyn EventLog, grace_ms: u64) -> Result<Recovered, String> {
    let mut sched = Scheduler::new(0).with_grace(grace_ms);
    let (mut events, mut last_at_ms) = (0u64, 0u64);
    let mut finished = Vec::new();
    let meta = log.replay(&mut |bytes| {
        let (at, ev) =
            decode_event(bytes).map_err(|e| format!("record {} is damaged: {e}", events + 1))?;
        events += 1;
        last_at_ms = last_at_ms.max(at);
        for cmd in sched.on_event(ev, at) {
            if let SchedCommand::SessionFinished { session, .. } = cmd {
                finished.push(session);
            }
        }
        Ok(())
    })?;
    let meta = meta.unwrap_or_default();
    if sched.ids().high_water() > meta.id_reserved {
        return Err(format!(
            "the replayed ID high-water `{}` is above the recorded reservation `{}`",
            sched.ids().high_water(),
            meta.id_reserved
        ));
    }
    Ok(Recovered {
        sched,
        meta,
        events,
        last_at_ms,
        finished,
    })
}

/// Group commit of scheduler events.
pub struct Journal {
    log: Option<Box<dyn EventLog>>,
    /// Also survive power loss: sync every commit, not only reservations.
    sync_always: bool,
    batch: Vec<Vec<u8>>,
    meta: StoreMeta,
    /// After a failed commit, when to try again.
    retry_at: Option<Instant>,
}

impl Journal {
    pub fn new(log: Option<Box<dyn EventLog>>, meta: StoreMeta, sync_always: bool) -> Self {
        Self {
            log,
            sync_always,
            batch: Vec::new(),
            meta,
            retry_at: None,
        }
    }

    /// Whether events are recorded at all (`false`: in-memory master).
    pub fn durable(&self) -> bool {
        self.log.is_some()
    }

    /// Record an event about to be fed to the scheduler at `at_ms`.
    pub fn record(&mut self, at_ms: u64, ev: &SchedEvent) {
        if self.log.is_some() {
            self.batch.push(encode_event(at_ms, ev));
        }
    }

    /// Events recorded but not committed yet.
    pub fn pending(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Whether a commit may be tried now (not backing off after an error).
    pub fn ready(&self) -> bool {
        self.retry_at.is_none_or(|at| Instant::now() >= at)
    }

    /// Make the batch durable, reserving IDs ahead of the allocator first if
    /// `id_high_water` passed the reservation. On error the batch is kept and
    /// retried after a pause; nothing may be acted on meanwhile.
    pub fn commit(&mut self, id_high_water: u64, last_epoch: u64) -> Result<usize, String> {
        let Some(log) = self.log.as_mut() else {
            return Ok(0);
        };
        let mut meta = self.meta;
        meta.last_epoch = meta.last_epoch.max(last_epoch);
        let reserve = id_high_water > meta.id_reserved;
        if reserve {
            meta.id_reserved = id_high_water.saturating_add(ID_RESERVATION);
        }
        if self.batch.is_empty() && meta == self.meta {
            return Ok(0);
        }
        let started = Instant::now();
        match log.append(&self.batch, &meta, reserve || self.sync_always) {
            Ok(()) => {
                let n = self.batch.len();
                metrics::counter!(m::STORE_COMMITS).increment(1);
                metrics::counter!(m::STORE_EVENTS).increment(n as u64);
                metrics::histogram!(m::STORE_COMMIT_DURATION)
                    .record(started.elapsed().as_secs_f64());
                if reserve {
                    info!(id_reserved = meta.id_reserved, "ID reservation recorded");
                }
                self.batch.clear();
                self.meta = meta;
                self.retry_at = None;
                Ok(n)
            }
            Err(e) => {
                metrics::counter!(m::STORE_ERRORS).increment(1);
                warn!(error = %e, events = self.batch.len(), "cannot write the master's store; holding every decision until it works");
                self.retry_at = Some(Instant::now() + Duration::from_millis(500));
                Err(e)
            }
        }
    }
}
