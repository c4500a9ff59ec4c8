//! Lost work: a node or device down, an attempt silent past its deadline,
//! a master that stalled.

use super::test_fixture::*;
use super::*;

fn reassigned(tasks: u64, frames: u64, reason: LossReason) -> SchedCommand {
    SchedCommand::Reassigned {
        tasks,
        frames,
        reason,
    }
}

#[test]
fn a_node_down_reassigns_exactly_its_unfinished_frames() {
    let (mut fx, t) = two_nodes(10, 10);
    assert_eq!((t.len(), t[0].device.as_str()), (1, "d0"));
    fx.feed(progress("n1", &t[0], 4, Some(3)));

    let cmds = fx.down("n1", 1, LossReason::NodeDown);

    assert_eq!(
        cmds,
        vec![
            reassigned(1, 6, LossReason::NodeDown),
            assign("n2", "d0", 0, 2, frames(4, 10), ids(10, 20)),
        ]
    );
    let m = fx.manifest(S1);
    let banked: Vec<(FrameRange, u32, &str, Option<u64>)> = m
        .ranges
        .iter()
        .map(|r| (r.frames, r.attempt, r.node.as_str(), r.ids_used))
        .collect();
    // The lost chunk is retired whole: the worker may have used IDs past its report.
    assert_eq!(banked, vec![(frames(0, 4), 1, "n1", Some(10))]);
    assert_eq!(
        m.replay,
        vec![ReplayRecord {
            frames: frames(4, 10),
            task: 0,
            old_attempt: 1,
            new_attempt: 2,
            node: "n1".into(),
            device: "d0".into(),
            reason: LossReason::NodeDown,
        }]
    );
    assert_eq!(fx.view(S1).failovers, 1);
}

#[test]
fn a_node_down_for_another_epoch_is_ignored() {
    let (mut fx, _) = two_nodes(1, 1);

    let cmds = fx.down("n1", 7, LossReason::HeartbeatTimeout);

    assert_eq!(cmds, vec![]);
    assert_eq!(fx.load("n1"), (1, 3, vec![1]));
}

#[test]
fn a_node_that_comes_back_is_told_to_drop_what_it_lost() {
    let (mut fx, _) = two_nodes(1, 1);
    fx.down("n1", 1, LossReason::HeartbeatTimeout);

    let cmds = fx.up_with("n1", 2, 1, vec![dev("d0")], Vec::new());

    assert_eq!(
        cmds,
        vec![drop_cmd("n1", "d0", 0, 1, LossReason::HeartbeatTimeout)]
    );
}

#[test]
fn a_device_restart_requeues_only_its_own_attempts() {
    let (mut fx, t) = one_node(4, 1);
    let on_d0: Vec<u64> = t
        .iter()
        .filter(|t| t.device == "d0")
        .map(|t| t.task)
        .collect();
    assert_eq!(on_d0, vec![0, 2]);

    let cmds = fx.feed(device_restart("n1", "d0"));

    assert_eq!(
        cmds,
        vec![
            drop_cmd("n1", "d0", 0, 1, LossReason::DeviceRestart),
            drop_cmd("n1", "d0", 2, 1, LossReason::DeviceRestart),
            reassigned(2, 2, LossReason::DeviceRestart),
            assign("n1", "d0", 2, 2, frames(2, 3), ids(40, 50)),
            assign("n1", "d0", 0, 2, frames(0, 1), ids(50, 60)),
        ]
    );
    assert_eq!(fx.load("n1"), (4, 6, vec![2, 2]));
}

#[test]
fn a_killed_device_takes_no_work_until_restarted() {
    let (mut fx, _) = one_node(1, 1);

    let cmds = fx.feed(SchedEvent::DeviceDown {
        node: "n1".into(),
        device: "d0".into(),
        reason: LossReason::DeviceKilled,
        disable: true,
    });

    assert_eq!(
        cmds,
        vec![
            drop_cmd("n1", "d0", 0, 1, LossReason::DeviceKilled),
            reassigned(1, 1, LossReason::DeviceKilled),
            assign("n1", "d1", 0, 2, frames(0, 1), ids(10, 20)),
        ]
    );
    let d0 = &fx.sched.device_views(None)[0];
    assert_eq!(
        (d0.state, d0.last_error.as_deref()),
        (DeviceState::Quarantined, Some("device_killed"))
    );
}

#[test]
fn a_device_down_on_an_unknown_device_does_nothing() {
    let (mut fx, _) = one_node(1, 1);

    let cmds = fx.feed(SchedEvent::DeviceDown {
        node: "n1".into(),
        device: "d9".into(),
        reason: LossReason::DeviceKilled,
        disable: true,
    });

    assert_eq!(cmds, vec![]);
    assert_eq!(fx.load("n1"), (1, 6, vec![1, 0]));
}

#[test]
fn an_attempt_silent_past_its_deadline_is_lost_as_no_answer() {
    let (mut fx, _) = one_node(1, 1);
    let at = deadline(0);
    assert!(!fx.sched.tick_due(at - 1));
    assert_eq!(fx.tick_at(at - 1), vec![]);

    let cmds = fx.tick_at(at);

    // Back on its node (the only one), on the device used least recently.
    assert_eq!(
        cmds,
        vec![
            drop_cmd("n1", "d0", 0, 1, LossReason::NoAnswer),
            reassigned(1, 1, LossReason::NoAnswer),
            assign("n1", "d1", 0, 2, frames(0, 1), ids(10, 20)),
        ]
    );
}

#[test]
fn a_master_stall_moves_every_deadline_by_its_length() {
    let (mut fx, _) = one_node(1, 1);

    assert_eq!(fx.feed(SchedEvent::Stalled { ms: 500 }), vec![]);

    assert_eq!(fx.tick_at(deadline(0)), vec![]);
    assert!(fx.sched.tick_due(deadline(0) + 500));
    let cmds = fx.tick_at(deadline(0) + 500);
    assert_eq!(
        cmds[..2],
        [
            drop_cmd("n1", "d0", 0, 1, LossReason::NoAnswer),
            reassigned(1, 1, LossReason::NoAnswer),
        ]
    );
}

#[test]
fn a_range_lost_max_losses_times_fails_for_good() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut s = spec(1, 1);
    s.max_losses = 1;
    fx.submit(S1, s);

    let cmds = fx.down("n1", 1, LossReason::NodeDown);

    // Nothing is reassigned: the range failed instead.
    assert_eq!(
        cmds,
        vec![SchedCommand::SessionFinished {
            session: S1.into(),
            state: SessionState::Failed,
        }]
    );
    let m = fx.manifest(S1);
    assert_eq!(
        m.failed,
        vec![FailedRange {
            node: None,
            device: None,
            log: None,
            frames: frames(0, 1),
            task: 0,
            // The number its next attempt took, not the attempts that ran.
            attempts: 2,
            error: "lost 1 times (`max_losses`), last: node_down".into(),
            steps: Vec::new(),
        }]
    );
    assert_eq!(m.replay.len(), 1);
}
