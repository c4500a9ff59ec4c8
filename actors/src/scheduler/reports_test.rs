//! Progress and results from the workers, and stale attempts.

use super::test_fixture::*;
use super::*;
use crate::protocol::ExecutorSpec;

fn output(path: &str) -> OutputFile {
    OutputFile {
        path: path.into(),
        size: 1,
        sha256: "00".into(),
    }
}

#[test]
fn progress_counts_frames_done_without_banking_them() {
    let (mut fx, t) = one_node(10, 10);

    let cmds = fx.feed(progress("n1", &t[0], 4, Some(3)));

    assert_eq!(cmds, vec![]);
    assert_eq!(fx.view(S1).frames_done, 4);
    assert_eq!(fx.manifest(S1).ranges, vec![]);
    let on_d0 = &fx.sched.device_views(Some("n1"))[0].tasks;
    assert_eq!(on_d0[0].frames_done, 4);
}

#[test]
fn progress_never_goes_back_and_stops_at_the_range() {
    let (mut fx, t) = one_node(10, 10);

    fx.feed(progress("n1", &t[0], 6, None));
    fx.feed(progress("n1", &t[0], 2, None));
    assert_eq!(fx.view(S1).frames_done, 6);

    fx.feed(progress("n1", &t[0], 99, None));
    assert_eq!(fx.view(S1).frames_done, 10);
}

#[test]
fn progress_for_an_attempt_that_is_not_current_is_rejected() {
    let (mut fx, t) = one_node(10, 10);
    let mut later = t[0].clone();
    later.attempt = 2;

    let cmds = fx.feed(progress("n1", &later, 1, None));
    assert_eq!(
        cmds,
        vec![SchedCommand::RejectedStale {
            node: "n1".into(),
            device: "unknown".into(),
            key: key(0, 2),
        }]
    );

    // From another node than the one running it: stale too.
    let cmds = fx.feed(progress("n9", &t[0], 1, None));
    assert_eq!(
        cmds,
        vec![SchedCommand::RejectedStale {
            node: "n9".into(),
            device: "unknown".into(),
            key: key(0, 1),
        }]
    );
    let v = fx.view(S1);
    assert_eq!((v.stale_rejected, v.frames_done), (2, 0));
}

#[test]
fn a_completed_result_banks_the_range_and_finishes_the_session() {
    let (mut fx, t) = one_node(2, 2);

    let cmds = fx.feed(completed("n1", &t[0]));

    assert_eq!(
        cmds,
        vec![SchedCommand::SessionFinished {
            session: S1.into(),
            state: SessionState::Completed,
        }]
    );
    assert_eq!(
        fx.manifest(S1).ranges,
        vec![ManifestRange {
            frames: frames(0, 2),
            task: 0,
            attempt: 1,
            node: "n1".into(),
            device: "d0".into(),
            ids: ids(0, 10),
            ids_used: Some(10),
            outputs: vec![],
            started_ms: 0,
            finished_ms: 0,
            out_dir: "out/s1/n1/d0/0-a1".into(),
            workflow: None,
            steps: Vec::new(),
        }]
    );
    assert_eq!(fx.load("n1"), (0, 6, vec![0, 0]));
}

#[test]
fn a_completed_result_frees_a_slot_for_the_next_task() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let t = assigned(&fx.submit(S1, spec(4, 1)));
    assert_eq!(t.len(), 3);

    let cmds = fx.feed(completed("n1", &t[0]));

    assert_eq!(
        cmds,
        vec![assign("n1", "d0", 3, 1, frames(3, 4), ids(30, 40))]
    );
    assert_eq!(fx.view(S1).tasks_completed, 1);
}

#[test]
fn a_result_for_a_replaced_attempt_is_rejected_and_dropped_keeping_its_banked_outputs() {
    let (mut fx, t) = two_nodes(2, 2);
    let mut p = progress("n1", &t[0], 1, None);
    if let SchedEvent::Progress(p) = &mut p {
        p.outputs = vec![output("f0.png")];
    }
    fx.feed(p);
    let replaced = fx.down("n1", 1, LossReason::NodeDown);
    assert_eq!(
        replaced,
        vec![
            SchedCommand::Reassigned {
                tasks: 1,
                frames: 1,
                reason: LossReason::NodeDown,
            },
            assign("n2", "d0", 0, 2, frames(1, 2), ids(10, 20)),
        ]
    );

    let cmds = fx.feed(completed("n1", &t[0]));

    assert_eq!(
        cmds,
        vec![
            SchedCommand::RejectedStale {
                node: "n1".into(),
                device: t[0].device.clone(),
                key: key(0, 1),
            },
            SchedCommand::Drop {
                node: "n1".into(),
                key: key(0, 1),
                device: "d0".into(),
                keep: vec!["f0.png".into()],
                reason: LossReason::StaleAttempt,
            },
        ]
    );
    assert_eq!(fx.view(S1).stale_rejected, 1);
}

#[test]
fn a_result_delivered_twice_is_ignored() {
    let (mut fx, t) = one_node(4, 1);
    fx.feed(completed("n1", &t[0]));

    let cmds = fx.feed(completed("n1", &t[0]));

    assert_eq!(cmds, vec![]);
    let v = fx.view(S1);
    assert_eq!((v.tasks_completed, v.stale_rejected), (1, 0));
}

#[test]
fn a_failed_attempt_waits_its_backoff_then_retries_on_another_device() {
    let (mut fx, t) = one_node(2, 1);
    assert_eq!(t[1].device, "d1");

    let cmds = fx.feed(failed("n1", &t[1], 0, "boom"));
    assert_eq!(cmds, vec![]);
    assert!(!fx.sched.tick_due(9));
    assert_eq!(fx.tick_at(9), vec![]);

    // d1 is idle and d0 busy, but d1 just failed the task.
    assert!(fx.sched.tick_due(10));
    assert_eq!(
        fx.tick_at(10),
        vec![assign("n1", "d0", 1, 2, frames(1, 2), ids(20, 30))]
    );
    assert_eq!(fx.view(S1).retries, 1);
}

#[test]
fn a_failed_command_attempt_is_dropped_with_its_error() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut s = spec(1, 1);
    s.executor = ExecutorSpec::Command {
        argv: vec!["render".into()],
        env: BTreeMap::new(),
    };
    let t = assigned(&fx.submit(S1, s));

    let cmds = fx.feed(failed("n1", &t[0], 0, "exit status 1"));

    assert_eq!(
        cmds,
        vec![drop_cmd(
            "n1",
            "d0",
            0,
            1,
            LossReason::AttemptFailed {
                detail: "exit status 1".into(),
            },
        )]
    );
    assert_eq!(
        fx.sched.device_views(None)[0].last_error.as_deref(),
        Some("exit status 1")
    );
}

#[test]
fn a_range_that_fails_max_attempts_times_fails_for_good() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut s = spec(1, 1);
    s.max_attempts = 1;
    let t = assigned(&fx.submit(S1, s));

    let cmds = fx.feed(failed("n1", &t[0], 0, "boom"));

    assert_eq!(
        cmds,
        vec![SchedCommand::SessionFinished {
            session: S1.into(),
            state: SessionState::Failed,
        }]
    );
    assert_eq!(
        fx.manifest(S1).failed,
        vec![FailedRange {
            // Where its last attempt ran, and that attempt's log.
            node: Some("n1".into()),
            device: Some("d0".into()),
            log: Some(format!("/v1/sessions/{S1}/tasks/0/log?attempt=1")),
            frames: frames(0, 1),
            task: 0,
            attempts: 1,
            error: "boom".into(),
            steps: Vec::new(),
        }]
    );
}

#[test]
fn a_failed_attempt_banks_its_frames_and_gives_back_the_ids_it_did_not_use() {
    let (mut fx, t) = one_node(4, 4);
    let mut r = result(
        "n1",
        &t[0],
        TaskOutcome::Failed {
            frames_done: 2,
            error: "boom".into(),
        },
    );
    r.last_id_used = Some(3);

    fx.feed(SchedEvent::Result(r));

    let ranges: Vec<(FrameRange, Option<u64>)> = fx
        .manifest(S1)
        .ranges
        .iter()
        .map(|r| (r.frames, r.ids_used))
        .collect();
    assert_eq!(ranges, vec![(frames(0, 2), Some(4))]);
    assert_eq!(fx.sched.ids().free_ranges(), &[ids(4, 10)]);
}
