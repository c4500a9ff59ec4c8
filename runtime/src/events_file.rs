//! The node's event log on disk (docs/pipelines.md, the event bus):
//! `{data_dir}/events/events-{n}.jsonl`, one event per line, in segments of
//! [`SEGMENT_BYTES`]; the oldest segments beyond [`SEGMENTS_KEPT`] are
//! removed, so the log stays under about 64 MiB. A line cut by a crash (the
//! last of its segment) is left out when the log is read again.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use orch_actors::events::{BusEvent, EventSink};

/// A segment is closed once it holds this much.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Segments kept.
pub const SEGMENTS_KEPT: usize = 4;

struct Open {
    n: u64,
    file: std::fs::File,
    len: u64,
}

/// The log's writer.
pub struct EventsFile {
    dir: PathBuf,
    open: Mutex<Open>,
}

fn segment(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("events-{n:08}.jsonl"))
}

/// The segment numbers in `dir`, oldest first.
fn segments(dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("events-")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Read what the log under `data_dir` holds (oldest first) and open it
/// for what follows.
pub fn open(data_dir: &Path) -> std::io::Result<(Vec<BusEvent>, EventsFile)> {
    let dir = data_dir.join("events");
    std::fs::create_dir_all(&dir)?;
    let mut kept = Vec::new();
    let mut last = 0u64;
    let all = segments(&dir);
    for &n in &all {
        let f = std::fs::File::open(segment(&dir, n))?;
        for line in std::io::BufReader::new(f).lines() {
            let Ok(line) = line else { break };
            // A line that does not parse (cut by a crash) is skipped.
            if let Ok(e) = serde_json::from_str::<BusEvent>(&line) {
                if e.id > last {
                    last = e.id;
                    kept.push(e);
                }
            }
        }
    }
    // Keep the newest in memory only as many as the bus keeps.
    let skip = kept.len().saturating_sub(orch_actors::events::BUS_KEPT);
    kept.drain(..skip);
    // A new segment after a restart: a cut line never precedes a whole one.
    let n = all.last().map_or(0, |n| n + 1);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment(&dir, n))?;
    let w = EventsFile {
        dir,
        open: Mutex::new(Open { n, file, len: 0 }),
    };
    w.trim();
    Ok((kept, w))
}

impl EventsFile {
    fn trim(&self) {
        let all = segments(&self.dir);
        for n in all.iter().take(all.len().saturating_sub(SEGMENTS_KEPT)) {
            let _ = std::fs::remove_file(segment(&self.dir, *n));
        }
    }
}

impl EventSink for EventsFile {
    fn append(&self, events: &[Arc<BusEvent>]) -> Result<(), String> {
        let mut buf = Vec::with_capacity(events.len() * 256);
        for e in events {
            serde_json::to_writer(&mut buf, &**e).map_err(|e| e.to_string())?;
            buf.push(b'\n');
        }
        let mut o = self.open.lock().unwrap_or_else(|p| p.into_inner());
        o.file
            .write_all(&buf)
            .map_err(|e| format!("`{}`: {e}", segment(&self.dir, o.n).display()))?;
        o.len += buf.len() as u64;
        if o.len >= SEGMENT_BYTES {
            let n = o.n + 1;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment(&self.dir, n))
                .map_err(|e| format!("`{}`: {e}", segment(&self.dir, n).display()))?;
            *o = Open { n, file, len: 0 };
            drop(o);
            self.trim();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_actors::events::{Bus, Event, Filter};

    fn ev(i: u64) -> Event {
        Event::new(
            "session.completed",
            "master".into(),
            &format!("c{}", i % 3),
            i,
        )
        .with("i", i.to_string())
    }

    #[test]
    fn events_survive_a_restart_with_their_ids_and_a_cut_last_line_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, sink) = open(dir.path()).unwrap();
        assert!(kept.is_empty());
        let bus = Bus::new();
        bus.restore(kept, Some(Box::new(sink)));
        for i in 0..10 {
            bus.publish(vec![ev(i)]);
        }
        drop(bus);
        // A crash in the middle of a line.
        let seg = segment(&dir.path().join("events"), 0);
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"id\":11,\"ty").unwrap();
        let (kept, sink) = open(dir.path()).unwrap();
        assert_eq!(
            kept.iter().map(|e| e.id).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        let bus = Bus::new();
        bus.restore(kept, Some(Box::new(sink)));
        let more = bus.publish(vec![ev(10)]);
        assert_eq!(more[0].id, 11, "ids go on from the last one kept");
        let only = Filter {
            types: vec!["session.*".into()],
            correlation_id: Some("c1".into()),
        };
        let got: Vec<u64> = bus.since(3, &only, 100).iter().map(|e| e.id).collect();
        assert_eq!(got, [5, 8, 11]);
        drop(bus);
        let (kept, _) = open(dir.path()).unwrap();
        assert_eq!(kept.len(), 11);
    }

    #[test]
    fn the_log_keeps_its_newest_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        let (_, sink) = open(dir.path()).unwrap();
        let bus = Bus::new();
        bus.restore(Vec::new(), Some(Box::new(sink)));
        let big = "x".repeat(64 * 1024);
        // About 6 segments' worth.
        for i in 0..(6 * SEGMENT_BYTES / (64 * 1024)) {
            bus.publish(vec![ev(i).with("pad", big.clone())]);
        }
        let n = segments(&dir.path().join("events")).len();
        assert!(n <= SEGMENTS_KEPT, "{n} segments");
        let (kept, _) = open(dir.path()).unwrap();
        assert!(!kept.is_empty());
        assert_eq!(kept.last().unwrap().id, bus.last_id());
        let ids: Vec<u64> = kept.iter().map(|e| e.id).collect();
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "contiguous newest events"
        );
    }
}
