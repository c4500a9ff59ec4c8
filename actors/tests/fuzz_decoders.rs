//! Fuzzing of the cluster wire decoder (docs/fuzzing.md): arbitrary bytes,
//! mutations of real encoded messages, deep nesting and huge length headers
//! through `wire::decode` and the ractor `Message::deserialize` of every
//! remotable actor. Each must return a value or an error, never panic, and
//! never allocate much more than it was given: a counting allocator measures
//! the peak of every decode on its thread.
//!
//! Cases per property: `ORCH_FUZZ_CASES` (default 256).

#![allow(unsafe_code)] // the counting allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use orch_actors::events::BusEvent;
use orch_actors::protocol::{
    AdminReply, AdminRequest, AttemptKey, Heartbeat, OutputFile, Register, TaskOutcome,
    TaskProgress, TaskResult, ToMaster, ToWorker, WorkerStatus,
};
use orch_actors::wire::decode;
use proptest::prelude::*;
use ractor::message::SerializedMessage;
use ractor::Message;

// ---- a per-thread allocation meter ----

struct Counting;

thread_local! {
    static NOW: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    let _ = NOW.try_with(|now| {
        let v = now.get() + n;
        now.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        add(l.size() as isize);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add(-(l.size() as isize));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        add(new as isize - l.size() as isize);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Most bytes a decode of `input` bytes may hold at once: a fixed allowance
/// plus a multiple of what it was given (a vector reserves its declared
/// length times its element's size, at most the bytes left; the largest
/// element of the protocol is a few hundred bytes).
fn budget(input: usize) -> isize {
    (64 * 1024 + 1024 * input) as isize
}

/// Run `f`, returning the most bytes it held at once beyond what was held before.
fn peak_of(f: impl FnOnce()) -> isize {
    let base = NOW.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    PEAK.with(Cell::get) - base
}

fn cases() -> u32 {
    std::env::var("ORCH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Decode `bytes` as every message type the network delivers, and through
/// each remotable actor's `deserialize`; check the allocation bound.
fn decode_everything(bytes: &[u8]) {
    let peak = peak_of(|| {
        let _ = decode::<ToMaster>(bytes);
        let _ = decode::<ToWorker>(bytes);
        let _ = decode::<AdminRequest>(bytes);
        let _ = decode::<AdminReply>(bytes);
        let _ = decode::<Vec<BusEvent>>(bytes);
        for variant in [
            "orch.to_master",
            "orch.to_worker",
            "orch.admin",
            "orch.events",
            "x",
        ] {
            let cast = || SerializedMessage::Cast {
                variant: variant.into(),
                args: bytes.to_vec(),
                metadata: None,
            };
            let _ = orch_actors::master::MasterMsg::deserialize(cast());
            let _ = orch_actors::worker::WorkerMsg::deserialize(cast());
            let _ = orch_actors::events::EventsMsg::deserialize(cast());
        }
    });
    assert!(
        peak <= budget(bytes.len()),
        "decoding {} bytes held {peak} bytes at once (bound {})",
        bytes.len(),
        budget(bytes.len())
    );
}

/// Real messages of every kind a worker and a master exchange, encoded.
fn samples() -> Vec<Vec<u8>> {
    use orch_actors::wire::encode;
    let key = AttemptKey {
        session: "render-1".into(),
        task: 7,
        attempt: 2,
    };
    let out = OutputFile {
        path: "frame_00012.png".into(),
        size: 12_000,
        sha256: "ab".repeat(32),
    };
    let to_master = [
        ToMaster::Register(Register {
            protocol_version: orch_actors::protocol::PROTOCOL_VERSION,
            node: "node-1".into(),
            advertise: "10.0.0.6:7700".into(),
            capabilities: Default::default(),
            devices: Vec::new(),
            max_concurrency: 4,
            instance: 99,
            attempt: 1,
            held: vec![key.clone()],
            data: Some("10.0.0.6:7702".into()),
        }),
        ToMaster::Heartbeat(Heartbeat {
            node: "node-1".into(),
            epoch: 3,
            seq: 10,
            queue_ratio: 0.5,
            gpu_usage: 0.1,
            active_tasks: 2,
            last_frame: Some(11),
            status: WorkerStatus::Ok,
            error: None,
        }),
        ToMaster::Progress(TaskProgress {
            node: "node-1".into(),
            epoch: 3,
            key: key.clone(),
            frames_done: 3,
            last_id_used: Some(1003),
            outputs: vec![out.clone()],
            seq: 4,
        }),
        ToMaster::Result(TaskResult {
            node: "node-1".into(),
            epoch: 3,
            key: key.clone(),
            device: "gpu0".into(),
            started_ms: 1,
            finished_ms: 2,
            last_id_used: Some(1004),
            outputs: vec![out],
            outcome: TaskOutcome::Failed {
                frames_done: 1,
                error: "exit 1".into(),
            },
            seq: 5,
            steps: Vec::new(),
        }),
        ToMaster::Unregister {
            node: "node-1".into(),
            epoch: 3,
        },
    ];
    let mut all: Vec<Vec<u8>> = to_master.iter().map(|m| encode(m).unwrap()).collect();
    for m in [
        ToWorker::Registered {
            epoch: 3,
            master: "node-0".into(),
        },
        ToWorker::Refused {
            reason: "protocol".into(),
        },
        ToWorker::Ack {
            seqs: vec![1, 2, 3],
        },
    ] {
        all.push(encode(&m).unwrap());
    }
    for r in [
        AdminRequest::Status,
        AdminRequest::Manifest("render-1".into()),
        AdminRequest::Cancel("render-1".into()),
    ] {
        all.push(encode(&r).unwrap());
    }
    all
}

/// A mutation of `bytes`: flip, set, insert, delete, truncate or splice.
fn mutate(mut bytes: Vec<u8>, ops: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(op, at, v) in ops {
        let n = bytes.len();
        let i = if n == 0 { 0 } else { at % n };
        match op % 6 {
            0 if n > 0 => bytes[i] ^= 1 << (v % 8),
            1 if n > 0 => bytes[i] = v,
            2 => bytes.insert(i.min(n), v),
            3 if n > 0 => {
                bytes.remove(i);
            }
            4 => bytes.truncate(i),
            // A length header claiming 2^32-1 of something.
            _ => {
                let header = [0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xc6][v as usize % 6];
                let at = i.min(bytes.len());
                bytes.splice(at..at, [header, 0xff, 0xff, 0xff, 0xff]);
            }
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_decode_to_a_message_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_real_messages_decode_to_a_message_or_an_error(
        which in any::<usize>(),
        ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
    ) {
        let all = samples();
        let bytes = mutate(all[which % all.len()].clone(), &ops);
        decode_everything(&bytes);
    }

    #[test]
    fn deep_nesting_is_refused(depth in 33usize..20_000, kind in 0u8..3) {
        // Arrays, maps or a mix, nested `depth` deep.
        let mut bytes = Vec::with_capacity(depth * 2 + 1);
        for i in 0..depth {
            match (kind, i % 2) {
                (0, _) | (2, 0) => bytes.push(0x91),
                _ => bytes.extend([0x81, 0xa1, b'k']),
            }
        }
        bytes.push(0xc0);
        prop_assert!(decode::<serde_json::Value>(&bytes).is_err());
        decode_everything(&bytes);
    }

    #[test]
    fn huge_length_headers_are_refused_without_allocating_them(
        header in prop::sample::select(vec![0xc6u8, 0xc7, 0xc8, 0xc9, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf]),
        len in any::<u32>(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        prefix in prop::sample::select(vec![vec![], vec![0x81, 0xa8], vec![0x92, 0x01]]),
    ) {
        let mut bytes = prefix;
        bytes.push(header);
        match header {
            0xc7 | 0xd9 => bytes.push(len as u8),
            0xc8 | 0xda | 0xdc | 0xde => bytes.extend((len as u16).to_be_bytes()),
            _ => bytes.extend(len.to_be_bytes()),
        }
        bytes.extend(tail);
        decode_everything(&bytes);
    }
}

#[test]
fn the_meter_sees_allocations() {
    // The bound is real: a decode that keeps a 1 MiB string is over it
    // for a 16-byte input.
    let peak = peak_of(|| {
        let v = vec![0u8; 1 << 20];
        std::hint::black_box(&v);
    });
    assert!(peak >= 1 << 20 && peak > budget(16), "{peak}");
}
