//! The placement index against the brute force, on random fleets: every
//! placement the scheduler makes while random events run is checked by
//! `pick` itself in tests (it asserts the index picks what looking at every
//! device picks), and after every event each session's next task is
//! checked once more ([`Scheduler::check_placement_index`]).

use proptest::prelude::*;

use super::test_fixture::*;
use super::*;

/// A device's capabilities: one of a few classes, as a fleet has.
fn caps(class: u8) -> Capabilities {
    let mut c = Capabilities::new();
    if class & 1 != 0 {
        c.insert("gpu".into(), CapValue::Bool(true));
    }
    if class & 2 != 0 {
        c.insert("os".into(), CapValue::Str("android".into()));
    }
    if class & 4 != 0 {
        c.insert("ram".into(), CapValue::Int(16));
    }
    c
}

#[derive(Debug, Clone)]
enum Op {
    Up {
        node: u8,
        devices: Vec<u8>,
        max_concurrency: u32,
    },
    Down {
        node: u8,
    },
    Accepting {
        node: u8,
        accepting: bool,
    },
    Drain {
        node: u8,
        drained: bool,
    },
    DeviceDown {
        node: u8,
        device: u8,
        disable: bool,
    },
    Submit {
        require: u8,
        prefer_gpu: i64,
        prefer_os: i64,
        tasks: u64,
    },
    Complete {
        pick: usize,
        /// How long the attempt ran (a session's attempts of a second or
        /// more are not queued behind a running one).
        took: u64,
    },
    Fail {
        pick: usize,
        took: u64,
    },
    Tick {
        ms: u64,
    },
}

fn took() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0u64..3_000]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..12, prop::collection::vec(0u8..8, 1..8), 1u32..4).prop_map(
            |(node, devices, max_concurrency)| Op::Up { node, devices, max_concurrency }
        ),
        1 => (0u8..12).prop_map(|node| Op::Down { node }),
        1 => (0u8..12, any::<bool>()).prop_map(|(node, accepting)| Op::Accepting { node, accepting }),
        1 => (0u8..12, any::<bool>()).prop_map(|(node, drained)| Op::Drain { node, drained }),
        1 => (0u8..12, 0u8..8, any::<bool>())
            .prop_map(|(node, device, disable)| Op::DeviceDown { node, device, disable }),
        2 => (0u8..8, -3i64..4, -3i64..4, 1u64..40).prop_map(|(require, prefer_gpu, prefer_os, tasks)| Op::Submit {
            require, prefer_gpu, prefer_os, tasks
        }),
        6 => (any::<usize>(), took()).prop_map(|(pick, took)| Op::Complete { pick, took }),
        3 => (any::<usize>(), took()).prop_map(|(pick, took)| Op::Fail { pick, took }),
        1 => (1u64..5000).prop_map(|ms| Op::Tick { ms }),
    ]
}

/// Apply `op`; the attempts running (node, task spec) are kept in `running`.
fn apply(
    sched: &mut Scheduler,
    now: &mut u64,
    sessions: &mut u32,
    running: &mut Vec<(String, TaskSpec)>,
    op: Op,
) {
    let name = |n: u8| format!("n{n:02}");
    let mut out = match op {
        Op::Up {
            node,
            devices,
            max_concurrency,
        } => sched.on_event(
            SchedEvent::NodeUp {
                node: name(node),
                epoch: *now + 1,
                max_concurrency,
                devices: devices
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| DeviceInfo {
                        id: format!("d{i}"),
                        handle: String::new(),
                        capabilities: caps(c),
                    })
                    .collect(),
                held: Vec::new(),
            },
            *now,
        ),
        Op::Down { node } => {
            let epoch = sched.nodes.get(name(node).as_str()).map(|n| n.epoch);
            match epoch {
                Some(epoch) => sched.on_event(
                    SchedEvent::NodeDown {
                        node: name(node),
                        epoch,
                        reason: LossReason::NodeDown,
                    },
                    *now,
                ),
                None => Vec::new(),
            }
        }
        Op::Accepting { node, accepting } => sched.on_event(
            SchedEvent::NodeAccepting {
                node: name(node),
                accepting,
            },
            *now,
        ),
        Op::Drain { node, drained } => sched.on_event(
            SchedEvent::Drain {
                node: name(node),
                drained,
            },
            *now,
        ),
        Op::DeviceDown {
            node,
            device,
            disable,
        } => sched.on_event(
            SchedEvent::DeviceDown {
                node: name(node),
                device: format!("d{device}"),
                reason: LossReason::DeviceRestart,
                disable,
            },
            *now,
        ),
        Op::Submit {
            require,
            prefer_gpu,
            prefer_os,
            tasks,
        } => {
            *sessions += 1;
            let mut s = spec(tasks, 1);
            s.require = caps(require);
            s.prefer = BTreeMap::from([
                ("gpu".to_string(), prefer_gpu),
                ("os".to_string(), prefer_os),
            ]);
            s.max_attempts = 5;
            sched.on_event(
                SchedEvent::Submit {
                    id: format!("s{sessions}"),
                    spec: s,
                },
                *now,
            )
        }
        Op::Complete { pick, took } | Op::Fail { pick, took } if !running.is_empty() => {
            let (node, t) = running.swap_remove(pick % running.len());
            let outcome = if matches!(op, Op::Complete { .. }) {
                TaskOutcome::Completed
            } else {
                TaskOutcome::Failed {
                    frames_done: 0,
                    error: "boom".into(),
                }
            };
            let mut r = result(&node, &t, outcome);
            r.epoch = sched.nodes.get(node.as_str()).map_or(0, |n| n.epoch);
            r.started_ms = now.saturating_sub(took);
            r.finished_ms = *now;
            sched.on_event(SchedEvent::Result(r), *now)
        }
        Op::Complete { .. } | Op::Fail { .. } => Vec::new(),
        Op::Tick { ms } => {
            *now += ms;
            sched.on_event(SchedEvent::Tick, *now)
        }
    };
    *now += 1;
    for cmd in out.drain(..) {
        match cmd {
            SchedCommand::Assign { node, task, .. } => running.push((node, task)),
            SchedCommand::Drop { node, key, .. } => {
                running.retain(|(n, t)| !(*n == node && t.key() == key))
            }
            _ => {}
        }
    }
    // Attempts of nodes that left are gone with them.
    running.retain(|(n, _)| sched.nodes.contains_key(n.as_str()));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_index_places_as_looking_at_every_device_does(ops in prop::collection::vec(op(), 1..80)) {
        let mut sched = Scheduler::new(0).with_grace(GRACE_MS);
        let (mut now, mut sessions, mut running) = (1_000u64, 0u32, Vec::new());
        for op in ops {
            apply(&mut sched, &mut now, &mut sessions, &mut running, op);
            prop_assert_eq!(sched.check_placement_index(), Ok(()));
        }
    }
}

#[test]
fn a_budget_places_in_slices_that_replay_the_same() {
    let mut log: Vec<(u64, SchedEvent)> = Vec::new();
    let mut sched = Scheduler::new(0).with_grace(GRACE_MS);
    let feed = |sched: &mut Scheduler, log: &mut Vec<(u64, SchedEvent)>, ev: SchedEvent| {
        log.push((10, ev.clone()));
        assigned(&sched.on_event(ev, 10)).len()
    };
    feed(&mut sched, &mut log, SchedEvent::PlaceBudget { max: 5 });
    let devices: Vec<DeviceInfo> = (0..20).map(|i| dev(&format!("d{i}"))).collect();
    let up = SchedEvent::NodeUp {
        node: "n1".into(),
        epoch: 1,
        max_concurrency: 20,
        devices,
        held: Vec::new(),
    };
    feed(&mut sched, &mut log, up);
    assert_eq!(
        feed(
            &mut sched,
            &mut log,
            SchedEvent::Submit {
                id: S1.into(),
                spec: spec(50, 1)
            }
        ),
        5,
        "the submission places its budget"
    );
    let mut slices = vec![5];
    while sched.wants_to_place() {
        slices.push(feed(&mut sched, &mut log, SchedEvent::Place));
    }
    assert_eq!(
        slices,
        vec![5; 10],
        "50 tasks in slices of 5, then nothing is left"
    );
    assert_eq!(sched.inflight(), 50);
    let mut again = Scheduler::new(0).with_grace(GRACE_MS);
    for (at, ev) in log {
        again.on_event(ev, at);
    }
    assert_eq!(again.inflight(), 50);
    assert_eq!(
        again.running_ranges(S1),
        sched.running_ranges(S1),
        "a replay slices the same"
    );
    assert!(!again.wants_to_place());
}

#[test]
fn in_passes_only_place_places_and_a_replay_places_the_same() {
    let mut log: Vec<(u64, SchedEvent)> = Vec::new();
    let mut sched = Scheduler::new(0).with_grace(GRACE_MS);
    let mut feed = |sched: &mut Scheduler, ev: SchedEvent| {
        log.push((10, ev.clone()));
        assigned(&sched.on_event(ev, 10))
    };
    feed(&mut sched, SchedEvent::PlaceBudget { max: 4 });
    feed(&mut sched, SchedEvent::PlaceInPasses);
    let devices: Vec<DeviceInfo> = (0..2).map(|i| dev(&format!("d{i}"))).collect();
    let up = SchedEvent::NodeUp {
        node: "n1".into(),
        epoch: 1,
        max_concurrency: 20,
        devices,
        held: Vec::new(),
    };
    assert!(feed(&mut sched, up).is_empty());
    let submit = SchedEvent::Submit {
        id: S1.into(),
        spec: spec(20, 1),
    };
    assert!(
        feed(&mut sched, submit).is_empty(),
        "a submission places nothing"
    );
    assert!(sched.wants_to_place(), "it leaves its work for a Place");
    let first = feed(&mut sched, SchedEvent::Place);
    assert_eq!(first.len(), 4, "a Place places its budget");
    let second = feed(&mut sched, SchedEvent::Place);
    assert_eq!(
        second.len(),
        2,
        "then what the two devices hold (1 + PREFETCH each)"
    );
    assert!(!sched.wants_to_place(), "the fleet is full");
    // A result frees a slot; only the next Place fills it.
    let done = completed("n1", &first[0]);
    assert!(feed(&mut sched, done).is_empty(), "a result places nothing");
    assert!(sched.wants_to_place());
    assert_eq!(feed(&mut sched, SchedEvent::Place).len(), 1);
    assert_eq!(sched.inflight(), 6);
    let mut again = Scheduler::new(0).with_grace(GRACE_MS);
    for (at, ev) in log {
        again.on_event(ev, at);
    }
    assert_eq!(
        again.running_ranges(S1),
        sched.running_ranges(S1),
        "a replay places the same"
    );
}
