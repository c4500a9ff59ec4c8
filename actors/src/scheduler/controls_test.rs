//! Operator controls: priority, max_devices, pause and resume, retry, requeue.

use super::test_fixture::*;
use super::*;

const LOW: &str = "low";
const HIGH: &str = "high";

fn with(mut s: SessionSpec, priority: i32, max_devices: Option<u32>) -> SessionSpec {
    s.priority = priority;
    s.max_devices = max_devices;
    s
}

fn sessions_of(cmds: &[SchedCommand]) -> Vec<String> {
    assigned(cmds).into_iter().map(|t| t.session).collect()
}

fn finished_as(cmds: &[SchedCommand], id: &str) -> Option<SessionState> {
    cmds.iter().find_map(|c| match c {
        SchedCommand::SessionFinished { session, state } if session == id => Some(*state),
        _ => None,
    })
}

/// Frames each produced range of the manifest covers, in order; each frame
/// of `0..n` once.
fn assert_exactly_once(m: &Manifest, n: u64) {
    let mut covered = Vec::new();
    for r in &m.ranges {
        covered.extend(r.frames.start..r.frames.end);
    }
    covered.sort_unstable();
    assert_eq!(covered, (0..n).collect::<Vec<_>>(), "{m:?}");
}

#[test]
fn a_higher_priority_session_takes_every_device_that_frees_up() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0"), dev("d1")]);
    let low = assigned(&fx.submit(LOW, with(spec(20, 1), 0, None)));
    assert_eq!(low.len(), 6, "two devices, one running and two queued each");

    let cmds = fx.submit(HIGH, with(spec(4, 1), 5, None));
    assert_eq!(
        cmds,
        vec![],
        "no capacity: nothing is taken from the low session"
    );
    let mut next = Vec::new();
    for t in &low[..4] {
        next.extend(sessions_of(&fx.feed(completed("n1", t))));
    }

    assert_eq!(
        next,
        vec![HIGH; 4],
        "each slot that frees goes to the high session"
    );
    assert!(fx.view(HIGH).waiting.is_none());
    assert_eq!(fx.view(LOW).tasks_pending, 14);
}

#[test]
fn the_low_priority_session_still_finishes() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut inflight = assigned(&fx.submit(LOW, with(spec(5, 1), -1, None)));
    inflight.extend(assigned(&fx.submit(HIGH, with(spec(5, 1), 1, None))));
    let mut done = Vec::new();
    let mut steps = 0;
    while let Some(t) = inflight.first().cloned() {
        inflight.remove(0);
        let cmds = fx.feed(completed("n1", &t));
        done.push(t.session.clone());
        inflight.extend(assigned(&cmds));
        steps += 1;
        assert!(steps < 100, "the sessions do not end");
    }

    assert_eq!(fx.view(LOW).state, SessionState::Completed);
    assert_eq!(fx.view(HIGH).state, SessionState::Completed);
    // The three low attempts queued before the high session came run
    // first; then every high one; then the rest of the low one.
    let order: Vec<&str> = done.iter().map(String::as_str).collect();
    assert_eq!(
        order,
        [LOW, LOW, LOW, HIGH, HIGH, HIGH, HIGH, HIGH, LOW, LOW]
    );
}

#[test]
fn a_session_that_waits_long_enough_outranks_a_higher_one_for_a_device() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut inflight = assigned(&fx.submit(HIGH, with(spec(100, 1), 1, None)));
    fx.submit(LOW, with(spec(3, 1), 0, None));
    // A device frees every 10 s: the high session takes it, until the low
    // one has waited one aging period: then they are equals and share the
    // device round-robin.
    let mut first_low_at = None;
    for step in 1..=30u64 {
        let t = inflight.remove(0);
        let cmds = fx.feed_at(step * 10_000, completed("n1", &t));
        let got = assigned(&cmds);
        if got.iter().any(|t| t.session == LOW) && first_low_at.is_none() {
            first_low_at = Some(step * 10_000);
        }
        inflight.extend(got);
    }

    let at = first_low_at.expect("the low session got a device");
    assert!(
        (PRIORITY_AGING_MS..2 * PRIORITY_AGING_MS).contains(&at),
        "the low session waited from 0 and got its first device at {at} ms"
    );
}

#[test]
fn max_devices_caps_the_attempts_in_flight_and_says_why_it_waits() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0"), dev("d1"), dev("d2")]);

    let t = assigned(&fx.submit(S1, with(spec(10, 1), 0, Some(2))));

    assert_eq!(t.len(), 2);
    let v = fx.view(S1);
    assert_eq!((v.tasks_running, v.max_devices), (2, Some(2)));
    assert!(
        v.waiting.as_deref().unwrap().contains("max_devices = 2"),
        "{v:?}"
    );
    let next = assigned(&fx.feed(completed("n1", &t[0])));
    assert_eq!(next.len(), 1, "one ended, one more starts");
    assert_eq!(fx.view(S1).tasks_running, 2);
}

#[test]
fn a_paused_session_gets_nothing_new_until_it_is_resumed() {
    let (mut fx, t) = one_node(10, 1);
    assert_eq!(t.len(), 6);
    let pause = |paused| SchedEvent::Pause {
        session: S1.into(),
        paused,
    };

    assert_eq!(fx.feed(pause(true)), vec![]);
    let after = fx.feed(completed("n1", &t[0]));

    assert_eq!(
        assigned(&after),
        vec![],
        "a paused session gets no new attempt"
    );
    let v = fx.view(S1);
    assert!(v.paused);
    assert_eq!(v.waiting.as_deref(), Some("paused by an operator"));
    assert_eq!(v.tasks_running, 5, "its attempts in flight go on");
    let resumed = assigned(&fx.feed(pause(false)));
    assert_eq!(resumed.len(), 1, "the free slot is used again");
    assert!(!fx.view(S1).paused);
}

#[test]
fn only_a_running_session_can_be_paused() {
    let (mut fx, t) = one_node(1, 1);
    fx.feed(completed("n1", &t[0]));

    let why = fx.sched.pause_refused(S1).expect("refused");

    assert!(why.contains("is completed"), "{why}");
    assert!(fx
        .sched
        .pause_refused("nope")
        .unwrap()
        .contains("no session"));
}

/// Session [`S1`] of 4 single-frame tasks, one attempt each, on one device:
/// task 2 fails, the others complete; the session ends `partial`.
fn partial() -> Fixture {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut s = spec(4, 1);
    s.max_attempts = 1;
    let mut inflight = assigned(&fx.submit(S1, s));
    while let Some(t) = inflight.first().cloned() {
        inflight.remove(0);
        let cmds = if t.task == 2 {
            fx.feed(failed("n1", &t, 0, "boom"))
        } else {
            fx.feed(completed("n1", &t))
        };
        inflight.extend(assigned(&cmds));
    }
    assert_eq!(fx.view(S1).state, SessionState::Partial);
    fx
}

#[test]
fn retry_runs_the_failed_ranges_again_and_the_session_completes() {
    let mut fx = partial();
    assert!(fx.sched.retry_refused(S1).is_none());

    let cmds = fx.feed(SchedEvent::Retry { session: S1.into() });

    let t = assigned(&cmds);
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].task, t[0].frames), (2, frames(2, 3)));
    assert!(t[0].attempt > 1, "a fresh attempt number");
    assert_eq!(t[0].ids, ids(40, 50), "a fresh ID chunk");
    assert_eq!(fx.view(S1).state, SessionState::Running);
    let end = fx.feed(completed("n1", &t[0]));
    assert_eq!(finished_as(&end, S1), Some(SessionState::Completed));
    let m = fx.manifest(S1);
    assert_eq!(m.failed, vec![]);
    assert_eq!(m.retried.len(), 1);
    assert_eq!((m.retried[0].task, &*m.retried[0].error), (2, "boom"));
    assert_exactly_once(&m, 4);
}

#[test]
fn retry_is_refused_for_a_session_without_failures() {
    let (mut fx, t) = one_node(1, 1);
    let running = fx.sched.retry_refused(S1).unwrap();
    fx.feed(completed("n1", &t[0]));

    let completed = fx.sched.retry_refused(S1).unwrap();

    assert!(running.contains("is running"), "{running}");
    assert!(completed.contains("is completed"), "{completed}");
    assert_eq!(fx.feed(SchedEvent::Retry { session: S1.into() }), vec![]);
    assert_eq!(fx.view(S1).state, SessionState::Completed);
}

#[test]
fn retry_after_the_ledger_left_memory_merges_with_the_manifest_on_disk() {
    let mut fx = partial();
    fx.feed(SchedEvent::Evict { session: S1.into() });

    let t = assigned(&fx.feed(SchedEvent::Retry { session: S1.into() }));

    assert_eq!(t.len(), 1);
    assert!(t[0].attempt > 1, "above every attempt the session gave out");
    fx.feed(completed("n1", &t[0]));
    let snap = fx.sched.manifest_snapshot(S1).expect("in memory again");
    assert_eq!(snap.merge_with_disk(), Some(&[][..]));
    let now = snap.to_manifest();
    assert_eq!(now.state, SessionState::Completed);
    assert_eq!(
        now.ranges.len(),
        1,
        "the ledger holds only what it did since"
    );
    assert_eq!(fx.sched.merges_with_disk(S1), Some(Vec::new()));
}

#[test]
fn requeue_replaces_a_produced_range_and_quarantines_its_outputs() {
    let (mut fx, t) = one_node(2, 1);
    fx.feed(completed("n1", &t[0]));
    fx.feed(completed("n1", &t[1]));
    assert_eq!(fx.sched.requeue_check(S1, 0), Ok(RequeueNeeds::Ledger));

    let cmds = fx.feed(SchedEvent::Requeue {
        session: S1.into(),
        task: 0,
        produced: Vec::new(),
    });

    assert!(cmds.contains(&drop_cmd(
        "n1",
        &t[0].device,
        0,
        1,
        LossReason::OperatorRequeue
    )));
    let again = assigned(&cmds);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].task, again[0].attempt), (0, 2));
    let v = fx.view(S1);
    assert_eq!(
        (v.state, v.frames_done, v.tasks_completed),
        (SessionState::Running, 1, 1)
    );
    let end = fx.feed(completed("n1", &again[0]));
    assert_eq!(finished_as(&end, S1), Some(SessionState::Completed));
    let m = fx.manifest(S1);
    assert_exactly_once(&m, 2);
    assert_eq!(m.ranges[0].attempt, 2);
    assert_eq!(m.replay.len(), 1);
    assert_eq!(
        (
            m.replay[0].old_attempt,
            m.replay[0].new_attempt,
            &m.replay[0].reason
        ),
        (1, 2, &LossReason::OperatorRequeue)
    );
}

#[test]
fn requeue_is_refused_for_what_is_not_produced() {
    let mut fx = partial();
    let failed = fx.sched.requeue_check(S1, 2).unwrap_err();
    let missing = fx.sched.requeue_check(S1, 9).unwrap_err();
    let (mut fx2, _) = one_node(10, 1);
    let running = fx2.sched.requeue_check(S1, 0).unwrap_err();
    let pending = fx2.sched.requeue_check(S1, 9).unwrap_err();
    fx2.feed(SchedEvent::Cancel { session: S1.into() });
    let cancelled = fx2.sched.requeue_check(S1, 9).unwrap_err();

    assert!(failed.contains("orchctl retry"), "{failed}");
    assert!(missing.contains("tasks 0..4"), "{missing}");
    assert!(running.contains("is running"), "{running}");
    assert!(pending.contains("not produced"), "{pending}");
    assert!(cancelled.contains("cancelled"), "{cancelled}");
    assert_eq!(
        fx.feed(SchedEvent::Requeue {
            session: S1.into(),
            task: 2,
            produced: Vec::new()
        }),
        vec![]
    );
}

#[test]
fn requeue_after_the_ledger_left_memory_uses_the_ranges_read_from_disk() {
    let (mut fx, t) = one_node(2, 1);
    fx.feed(completed("n1", &t[0]));
    fx.feed(completed("n1", &t[1]));
    fx.feed(SchedEvent::Evict { session: S1.into() });
    assert_eq!(fx.sched.requeue_check(S1, 1), Ok(RequeueNeeds::Disk));
    let produced = vec![ProducedRange {
        frames: frames(1, 2),
        attempt: 1,
        node: "n1".into(),
        device: t[1].device.clone(),
    }];

    let cmds = fx.feed(SchedEvent::Requeue {
        session: S1.into(),
        task: 1,
        produced,
    });

    assert!(cmds.contains(&drop_cmd(
        "n1",
        &t[1].device,
        1,
        1,
        LossReason::OperatorRequeue
    )));
    let again = assigned(&cmds);
    assert_eq!((again[0].task, again[0].frames), (1, frames(1, 2)));
    assert!(again[0].attempt >= 2);
    assert_eq!(fx.sched.merges_with_disk(S1), Some(vec![(1, 1)]));
    // Another task of the reopened session is still only on disk.
    assert_eq!(fx.sched.requeue_check(S1, 0), Ok(RequeueNeeds::Disk));
}

fn range(task: u64, attempt: u32, start: u64, end: u64) -> ManifestRange {
    ManifestRange {
        frames: frames(start, end),
        task,
        attempt,
        node: "n1".into(),
        device: "d0".into(),
        ids: ids(0, 0),
        ids_used: None,
        outputs: Vec::new(),
        started_ms: 0,
        finished_ms: 0,
        out_dir: String::new(),
        workflow: None,
        steps: Vec::new(),
    }
}

fn manifest_of(ranges: Vec<ManifestRange>) -> Manifest {
    Manifest {
        collect: String::new(),
        collection: None,
        session: S1.into(),
        name: "render".into(),
        state: SessionState::Completed,
        frames: frames(0, 3),
        executor: "builtin:noop".into(),
        submitted_ms: 5,
        finished_ms: Some(9),
        ranges,
        replay: Vec::new(),
        failed: Vec::new(),
        retried: Vec::new(),
        workflow: None,
        turned_away: Default::default(),
        blocklisted: Vec::new(),
        skipped_offline: Default::default(),
        failure_reasons: Default::default(),
    }
}

#[test]
fn a_merged_manifest_keeps_the_disk_ranges_not_replaced_and_none_twice() {
    let disk = manifest_of(vec![
        range(0, 1, 0, 1),
        range(1, 1, 1, 2),
        range(2, 4, 2, 3),
    ]);
    // The ledger redid task 1 (attempt 2, requeued) and holds task 2's range again.
    let now = manifest_of(vec![range(1, 2, 1, 2), range(2, 4, 2, 3)]);

    let merged = merge_manifests(disk, now, &[(1, 1)]);

    let got: Vec<(u64, u32)> = merged.ranges.iter().map(|r| (r.task, r.attempt)).collect();
    assert_eq!(got, vec![(0, 1), (1, 2), (2, 4)]);
    assert_exactly_once(&merged, 3);
}
