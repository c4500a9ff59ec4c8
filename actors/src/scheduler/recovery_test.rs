//! Master restarts: the ID floor, nodes that come back (or not), attempts
//! the ledger never recorded, tasks reserved for the master's own node.

use super::test_fixture::*;
use super::*;

const FLOOR: u64 = 1000;
const WITHIN_MS: u64 = 500;

fn resume() -> SchedEvent {
    SchedEvent::Resume {
        id_floor: FLOOR,
        within_ms: WITHIN_MS,
    }
}

fn restart() -> LossReason {
    LossReason::MasterRestart { detail: None }
}

/// A `replay` record of an attempt that may have run unrecorded.
fn listed(task: u64, old_attempt: u32, new_attempt: u32) -> ReplayRecord {
    ReplayRecord {
        frames: frames(task, task + 1),
        task,
        old_attempt,
        new_attempt,
        node: "n1".into(),
        device: String::new(),
        reason: restart(),
    }
}

/// Node `n1` with one device and one slot, running tasks 0 to 2 of a
/// session of `n` one-frame tasks.
fn three_running(n: u64) -> (Fixture, Vec<TaskSpec>) {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let t = assigned(&fx.submit(S1, spec(n, 1)));
    assert_eq!(t.len(), 3);
    (fx, t)
}

#[test]
fn after_a_resume_ids_start_at_the_floor_and_attempt_numbers_skip_one() {
    let mut fx = Fixture::new();
    fx.submit(S1, spec(1, 1));

    assert_eq!(fx.feed(resume()), vec![]);
    let cmds = fx.up("n1", vec![dev("d0")]);

    assert_eq!(
        cmds,
        vec![assign(
            "n1",
            "d0",
            0,
            2,
            frames(0, 1),
            ids(FLOOR, FLOOR + 10)
        )]
    );
}

#[test]
fn a_node_not_back_in_time_is_down_as_resume_timeout() {
    let (mut fx, _) = one_node(1, 1);
    fx.feed(resume());
    assert_eq!(fx.tick_at(WITHIN_MS - 1), vec![]);

    let cmds = fx.tick_at(WITHIN_MS);

    assert_eq!(
        cmds,
        vec![SchedCommand::Reassigned {
            tasks: 1,
            frames: 1,
            reason: LossReason::ResumeTimeout,
        }]
    );
    assert!(fx.sched.capacity().is_empty());
    // Attempt 2 may have been sent before the crash: the next is 3.
    let r = &fx.manifest(S1).replay[0];
    assert_eq!(
        (r.old_attempt, r.new_attempt, &r.reason),
        (1, 3, &LossReason::ResumeTimeout)
    );
}

#[test]
fn a_node_back_with_the_attempts_it_holds_keeps_running_them() {
    let (mut fx, t) = one_node(1, 1);
    fx.feed(resume());

    let cmds = fx.up_with("n1", 2, 2, vec![dev("d0"), dev("d1")], vec![key(0, 1)]);

    assert_eq!(cmds, vec![]);
    assert_eq!(fx.load("n1"), (1, 6, vec![1, 0]));
    assert_eq!(
        fx.feed(completed("n1", &t[0])),
        vec![SchedCommand::SessionFinished {
            session: S1.into(),
            state: SessionState::Completed,
        }]
    );
}

#[test]
fn a_node_back_without_an_attempt_loses_it_as_master_restart() {
    let (mut fx, _) = one_node(1, 1);
    fx.feed(resume());

    let cmds = fx.up_with("n1", 2, 2, vec![dev("d0"), dev("d1")], Vec::new());

    assert_eq!(
        cmds,
        vec![
            SchedCommand::Reassigned {
                tasks: 1,
                frames: 1,
                reason: restart(),
            },
            drop_cmd("n1", "d0", 0, 1, restart()),
            assign("n1", "d0", 0, 3, frames(0, 1), ids(FLOOR, FLOOR + 10)),
        ]
    );
}

#[test]
fn an_attempt_sent_before_a_crash_and_never_recorded_is_listed_and_dropped() {
    let (mut fx, _) = three_running(4);
    fx.feed(resume());

    let held = (0..4).map(|t| key(t, 1)).collect();
    let cmds = fx.up_with("n1", 2, 1, vec![dev("d0")], held);

    assert_eq!(
        cmds,
        vec![drop_cmd(
            "n1",
            "",
            3,
            1,
            LossReason::MasterRestart {
                detail: Some("sent before the crash, never recorded".into()),
            },
        )]
    );
    assert_eq!(fx.manifest(S1).replay, vec![listed(3, 1, 2)]);
    assert_eq!(fx.load("n1"), (3, 3, vec![3]));
}

#[test]
fn a_held_attempt_no_master_could_have_sent_is_ignored() {
    let (mut fx, _) = three_running(4);
    fx.feed(resume());

    let held = vec![key(0, 1), key(1, 1), key(2, 1), key(3, 5)];
    let cmds = fx.up_with("n1", 2, 1, vec![dev("d0")], held);

    assert_eq!(cmds, vec![]);
    assert_eq!(fx.manifest(S1).replay, vec![]);
}

#[test]
fn a_reservation_takes_pending_tasks_and_they_go_to_their_node_marked() {
    let (mut fx, t) = three_running(6);

    let ev = fx.sched.reservation("n1", 2);
    assert!(
        matches!(&ev, Some(SchedEvent::Reserve { node, tasks }) if node == "n1" && *tasks == vec![(S1.to_string(), vec![3, 4])]),
        "{ev:?}"
    );
    assert_eq!(fx.feed(ev.unwrap()), vec![]);
    assert!(fx.sched.reservation("n1", 2).is_none(), "topped up already");

    let cmds = fx.feed(completed("n1", &t[0]));

    let SchedCommand::Assign { task, .. } = assign("n1", "d0", 3, 1, frames(3, 4), ids(30, 40))
    else {
        unreachable!()
    };
    assert_eq!(
        cmds,
        vec![SchedCommand::Assign {
            node: "n1".into(),
            task,
            reserved: true,
        }]
    );
}

#[test]
fn a_resume_lists_every_reserved_task_as_possibly_produced() {
    let (mut fx, _) = three_running(6);
    let ev = fx.sched.reservation("n1", 2).expect("pending tasks");
    fx.feed(ev);

    fx.feed(resume());

    assert_eq!(
        fx.manifest(S1).replay,
        vec![listed(3, 1, 2), listed(4, 1, 2)]
    );
}

#[test]
fn draining_the_reserve_node_releases_its_reservation() {
    let (mut fx, t) = three_running(6);
    let ev = fx.sched.reservation("n1", 2).expect("pending tasks");
    fx.feed(ev);

    fx.feed(SchedEvent::Drain {
        node: "n1".into(),
        drained: true,
    });
    assert!(fx.sched.reservation("n1", 2).is_none());
    fx.feed(SchedEvent::Drain {
        node: "n1".into(),
        drained: false,
    });

    // Task 3 is pending again, no longer reserved.
    assert_eq!(
        fx.feed(completed("n1", &t[0])),
        vec![assign("n1", "d0", 3, 1, frames(3, 4), ids(30, 40))]
    );
}
