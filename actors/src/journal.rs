//! The master's side of its store (SPEC §9): replay at start, and group
//! commit while running. Events are recorded in a batch as they happen; one
//! commit makes the whole batch durable, and only then does the master act on
//! it (send assignments, acknowledge outbox entries, answer submissions).

use std::time::Instant;

use tracing::{info, warn};

use crate::metrics as m;
use crate::scheduler::{SchedCommand, SchedEvent, Scheduler};
use crate::store::{decode_events, encode_event_into, EventLog, StoreMeta, ID_RESERVATION};

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
    let mut batches = 0u64;
    let meta = log.replay(&mut |bytes| {
        batches += 1;
        let n = decode_events(bytes, |at, ev| {
            last_at_ms = last_at_ms.max(at);
            for cmd in sched.on_event(ev, at) {
                if let SchedCommand::SessionFinished { session, .. } = cmd {
                    finished.push(session);
                }
            }
        })
        .map_err(|e| format!("batch {batches} is damaged: {e}"))?;
        events += n as u64;
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

/// One batch on its way to the store.
pub struct Commit {
    batch: Vec<u8>,
    count: usize,
    meta: StoreMeta,
    sync: bool,
    reserve: bool,
    /// `Ok(seconds)` once written, or why it failed.
    pub result: Result<f64, String>,
}

/// Group commit of scheduler events, pipelined. Batches go to the store's own
/// thread as they close; the thread writes everything queued for it in one
/// transaction, so commits grow with the load while the master keeps working.
/// Finished commits come back in order through [`Journal::finished`]; the
/// `wake` callback given to [`Journal::new`] tells the owner to look.
pub struct Journal {
    tx: Option<std::sync::mpsc::Sender<Commit>>,
    done: Option<std::sync::mpsc::Receiver<Commit>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Also survive power loss: sync every commit, not only reservations.
    sync_always: bool,
    /// Records of the batch being filled, one after the other.
    batch: Vec<u8>,
    /// Events in `batch`.
    count: usize,
    /// Metadata as of the last commit sent.
    meta: StoreMeta,
    in_flight: usize,
}

/// Write `jobs` as one transaction; every job gets the result.
fn write_all(log: &mut dyn EventLog, jobs: &mut [Commit]) {
    let started = Instant::now();
    let result = if jobs.len() == 1 {
        log.append(&jobs[0].batch, &jobs[0].meta, jobs[0].sync)
    } else {
        // A batch is records one after the other: batches concatenate.
        let mut all = Vec::with_capacity(jobs.iter().map(|j| j.batch.len()).sum());
        for j in jobs.iter() {
            all.extend_from_slice(&j.batch);
        }
        let last = jobs.last().expect("at least one job");
        log.append(&all, &last.meta, jobs.iter().any(|j| j.sync))
    };
    let secs = started.elapsed().as_secs_f64();
    for j in jobs.iter_mut() {
        j.result = result.clone().map(|()| secs);
    }
}

impl Journal {
    /// A journal writing to `log` on a thread of its own (`None`: memory only).
    pub fn new(
        log: Option<Box<dyn EventLog>>,
        meta: StoreMeta,
        sync_always: bool,
        wake: impl Fn() + Send + 'static,
    ) -> Self {
        let (tx, done, thread) = match log {
            None => (None, None, None),
            Some(mut log) => {
                let (tx, rx) = std::sync::mpsc::channel::<Commit>();
                let (done_tx, done_rx) = std::sync::mpsc::channel::<Commit>();
                let thread = std::thread::Builder::new()
                    .name("orch-store".into())
                    .spawn(move || {
                        while let Ok(first) = rx.recv() {
                            let mut jobs = vec![first];
                            jobs.extend(rx.try_iter());
                            write_all(log.as_mut(), &mut jobs);
                            let failed = jobs.iter().any(|j| j.result.is_err());
                            for j in jobs {
                                if done_tx.send(j).is_err() {
                                    return;
                                }
                            }
                            wake();
                            if failed {
                                // The master stops on a failed commit; write nothing after it.
                                return;
                            }
                        }
                    })
                    .expect("a thread for the store");
                (Some(tx), Some(done_rx), Some(thread))
            }
        };
        Self {
            tx,
            done,
            thread,
            sync_always,
            batch: Vec::new(),
            count: 0,
            meta,
            in_flight: 0,
        }
    }

    /// Write what was sent to the store and close it (on a clean stop).
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Whether events are recorded at all (`false`: in-memory master).
    pub fn durable(&self) -> bool {
        self.tx.is_some()
    }

    /// Record an event about to be fed to the scheduler at `at_ms`.
    pub fn record(&mut self, at_ms: u64, ev: &SchedEvent) {
        if self.tx.is_some() {
            encode_event_into(&mut self.batch, at_ms, ev);
            self.count += 1;
        }
    }

    /// Events recorded and not yet sent to the store.
    pub fn pending(&self) -> bool {
        !self.batch.is_empty()
    }

    /// Commits sent to the store and not finished yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Close the batch and send it to the store, reserving IDs ahead of the
    /// allocator first if `id_high_water` passed the reservation. Returns
    /// `false` when there was nothing to write.
    pub fn begin(&mut self, id_high_water: u64, last_epoch: u64) -> bool {
        let Some(tx) = self.tx.as_ref() else {
            return false;
        };
        let mut meta = self.meta;
        meta.last_epoch = meta.last_epoch.max(last_epoch);
        let reserve = id_high_water > meta.id_reserved;
        if reserve {
            meta.id_reserved = id_high_water.saturating_add(ID_RESERVATION);
        }
        if self.batch.is_empty() && meta == self.meta {
            return false;
        }
        let c = Commit {
            batch: std::mem::take(&mut self.batch),
            count: std::mem::take(&mut self.count),
            meta,
            sync: reserve || self.sync_always,
            reserve,
            result: Ok(0.0),
        };
        self.meta = meta;
        if tx.send(c).is_ok() {
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// The next finished commit, in order: `Ok` once durable, `Err` with
    /// the store's error (the caller must stop: later events depend on it).
    pub fn finished(&mut self) -> Option<Result<(), String>> {
        let c = self.done.as_ref()?.try_recv().ok()?;
        self.in_flight -= 1;
        Some(match c.result {
            Ok(secs) => {
                metrics::counter!(m::STORE_COMMITS).increment(1);
                metrics::counter!(m::STORE_EVENTS).increment(c.count as u64);
                metrics::histogram!(m::STORE_COMMIT_DURATION).record(secs);
                if c.reserve {
                    info!(id_reserved = c.meta.id_reserved, "ID reservation recorded");
                }
                Ok(())
            }
            Err(e) => {
                metrics::counter!(m::STORE_ERRORS).increment(1);
                warn!(error = %e, events = c.count, "cannot write the master's store");
                Err(e)
            }
        })
    }
}
