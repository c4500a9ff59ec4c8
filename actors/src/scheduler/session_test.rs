//! Sessions: submitting, cancelling, finishing and evicting them.

use super::test_fixture::*;
use super::*;

fn finished(state: SessionState) -> SchedCommand {
    SchedCommand::SessionFinished {
        session: S1.into(),
        state,
    }
}

#[test]
fn a_session_submitted_before_any_node_waits_with_every_task_pending() {
    let mut fx = Fixture::new();

    let cmds = fx.submit(S1, spec(10, 4));

    assert_eq!(cmds, vec![]);
    let v = fx.view(S1);
    assert_eq!(
        (v.state, v.tasks_total, v.tasks_pending, v.frames_total),
        (SessionState::Running, 3, 3, 10)
    );
    assert_eq!(fx.sched.running_sessions(), vec![S1.to_string()]);
}

#[test]
fn a_session_id_submitted_again_is_the_same_session() {
    let (mut fx, _) = one_node(3, 1);

    let cmds = fx.submit(S1, spec(100, 1));

    assert_eq!(cmds, vec![]);
    assert_eq!(fx.view(S1).tasks_total, 3);
    assert_eq!(fx.sched.session_ids_in_order(), vec![S1.to_string()]);
}

#[test]
fn an_idempotency_key_used_again_makes_no_second_session() {
    let mut fx = Fixture::new();
    let mut s = spec(1, 1);
    s.idempotency_key = Some("k".into());
    fx.submit(S1, s.clone());

    let cmds = fx.submit("s2", s);

    assert_eq!(cmds, vec![]);
    assert!(!fx.sched.has_session("s2"));
    assert_eq!(fx.sched.session_for_key("k"), Some(S1));
}

#[test]
fn cancel_drops_every_running_attempt_and_finishes_the_session() {
    let (mut fx, t) = one_node(4, 2);
    assert_eq!(t.len(), 2);
    fx.feed(progress("n1", &t[0], 1, None));

    let cmds = fx.feed(SchedEvent::Cancel { session: S1.into() });

    assert_eq!(
        cmds,
        vec![
            drop_cmd("n1", "d0", 0, 1, LossReason::Cancelled),
            drop_cmd("n1", "d1", 1, 1, LossReason::Cancelled),
            finished(SessionState::Cancelled),
        ]
    );
    // What was reported is kept; nothing is left in flight.
    let banked: Vec<FrameRange> = fx.manifest(S1).ranges.iter().map(|r| r.frames).collect();
    assert_eq!(banked, vec![frames(0, 1)]);
    assert_eq!(fx.load("n1"), (0, 6, vec![0, 0]));
    let v = fx.view(S1);
    assert_eq!(
        (v.state, v.tasks_running, v.tasks_pending),
        (SessionState::Cancelled, 0, 0)
    );
    assert!(fx.sched.running_sessions().is_empty());
}

#[test]
fn a_finished_session_publishes_its_end_on_the_event_bus() {
    let (mut fx, t) = one_node(4, 2);
    fx.feed(completed("n1", &t[0]));

    let cmds = fx.feed_with_events(SchedEvent::Cancel { session: S1.into() });

    let events: Vec<&crate::events::Event> = cmds
        .iter()
        .filter_map(|c| match c {
            SchedCommand::Publish(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 1, "{cmds:?}");
    let e = events[0];
    assert_eq!(e.kind, "session.cancelled");
    assert_eq!(e.payload["session"], S1);
    assert_eq!(
        e.payload["frames_done"],
        fx.view(S1).frames_done.to_string()
    );
    assert_eq!(
        e.payload["frames_total"],
        fx.view(S1).frames_total.to_string()
    );
    assert_eq!(
        e.correlation_id, S1,
        "a session without one is its own correlation"
    );
    assert_eq!(e.timestamp_ms, fx.now);
}

#[test]
fn cancelling_a_finished_session_does_nothing() {
    let (mut fx, t) = one_node(1, 1);
    fx.feed(completed("n1", &t[0]));

    let cmds = fx.feed(SchedEvent::Cancel { session: S1.into() });

    assert_eq!(cmds, vec![]);
    assert_eq!(fx.view(S1).state, SessionState::Completed);
}

#[test]
fn a_session_with_produced_and_failed_ranges_finishes_partial() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut s = spec(2, 1);
    s.max_attempts = 1;
    let t = assigned(&fx.submit(S1, s));
    assert_eq!(fx.feed(completed("n1", &t[0])), vec![]);

    let cmds = fx.feed(failed("n1", &t[1], 0, "boom"));

    assert_eq!(cmds, vec![finished(SessionState::Partial)]);
    let v = fx.view(S1);
    assert_eq!((v.frames_done, v.frames_failed, v.tasks_failed), (1, 1, 1));
}

#[test]
fn an_evicted_session_keeps_its_view_and_drops_its_ledger() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut s = spec(2, 1);
    s.max_attempts = 1;
    let t = assigned(&fx.submit(S1, s));
    fx.feed(completed("n1", &t[0]));
    fx.feed(failed("n1", &t[1], 0, "boom"));
    let before = fx.view(S1);

    let cmds = fx.feed(SchedEvent::Evict { session: S1.into() });

    assert_eq!(cmds, vec![]);
    assert!(fx.sched.is_evicted(S1));
    assert_eq!(fx.sched.manifest(S1), None);
    assert!(fx.sched.manifest_snapshot(S1).is_none());
    assert_eq!(fx.view(S1), before);
}

#[test]
fn a_running_session_is_not_evicted() {
    let (mut fx, _) = one_node(1, 1);

    fx.feed(SchedEvent::Evict { session: S1.into() });

    assert!(!fx.sched.is_evicted(S1));
    assert_eq!(fx.manifest(S1).state, SessionState::Running);
}

fn segment(task: u32) -> Segment {
    Segment {
        frames: frames(u64::from(task), u64::from(task) + 1),
        task: TaskIdx(task),
        attempt: 1,
        node: "n1".into(),
        device: "d0".into(),
        ids: ids(0, 0),
        ids_used: 0,
        outputs: Vec::new().into(),
        started_ms: 0,
        finished_ms: 0,
        steps: None,
    }
}

#[test]
fn produced_ranges_are_chunked_and_a_copy_does_not_see_later_changes() {
    let mut segs = Segments::default();
    for t in 0..10_000 {
        segs.push(segment(t));
    }
    let copy = segs.clone();

    segs.push(segment(10_000));
    segs.retain(|s| s.task.0 % 3 != 0);

    assert_eq!(copy.len(), 10_000);
    assert!(copy.iter().map(|s| s.task.0).eq(0..10_000));
    assert_eq!(segs.len(), 6_667);
    assert!(segs.iter().all(|s| s.task.0 % 3 != 0));
    assert_eq!(segs.iter().count(), segs.len());
}

#[test]
fn a_finished_attempt_named_again_after_eviction_keeps_its_outputs() {
    let (mut fx, t) = one_node(1, 1);
    let mut done = result("n1", &t[0], TaskOutcome::Completed);
    done.outputs = vec![OutputFile {
        path: "frame_0.png".into(),
        size: 2,
        sha256: "ab".into(),
    }];
    fx.feed(SchedEvent::Result(done.clone()));
    fx.feed(SchedEvent::Evict { session: S1.into() });

    // The worker missed the acknowledgement: it registers again holding
    // the attempt, then delivers its result again.
    let up = fx.up_with("n1", 2, 2, vec![dev("d0"), dev("d1")], vec![t[0].key()]);
    done.epoch = 2;
    let again = fx.feed(SchedEvent::Result(done));

    assert!(
        !up.iter().any(|c| matches!(c, SchedCommand::Drop { .. })),
        "nothing is dropped on registration: {up:?}"
    );
    let keep: Vec<&Vec<String>> = again
        .iter()
        .filter_map(|c| match c {
            SchedCommand::Drop { keep, .. } => Some(keep),
            _ => None,
        })
        .collect();
    assert_eq!(keep, vec![&vec!["frame_0.png".to_string()]], "{again:?}");
}
