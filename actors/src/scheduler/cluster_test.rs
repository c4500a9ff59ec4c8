//! Nodes and devices: registration, draining, and the in-flight accounting
//! of attempts on them.

use super::test_fixture::*;
use super::*;

fn drain(node: &str, drained: bool) -> SchedEvent {
    SchedEvent::Drain {
        node: node.into(),
        drained,
    }
}

fn accepting(node: &str, accepting: bool) -> SchedEvent {
    SchedEvent::NodeAccepting {
        node: node.into(),
        accepting,
    }
}

#[test]
fn a_node_offers_one_plus_prefetch_attempts_per_slot() {
    let mut fx = Fixture::new();

    let cmds = fx.up_with(
        "n1",
        1,
        2,
        vec![dev("d0"), dev("d1"), dev("d2")],
        Vec::new(),
    );

    assert_eq!(cmds, vec![]);
    assert_eq!(
        fx.sched.capacity(),
        vec![("n1".to_string(), 0, 6, vec![0, 0, 0])]
    );
    assert!(fx.sched.has_device("n1", Some("d2")));
    assert!(!fx.sched.has_device("n1", Some("d9")));
    assert!(!fx.sched.has_device("n2", None));
}

#[test]
fn a_node_with_no_slot_counts_as_one() {
    let mut fx = Fixture::new();

    fx.up_with("n1", 1, 0, vec![dev("d0")], Vec::new());

    assert_eq!(fx.load("n1"), (0, 3, vec![0]));
}

#[test]
fn a_node_registering_under_a_new_epoch_loses_its_old_attempts() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    fx.submit(S1, spec(1, 1));

    let cmds = fx.up_with("n1", 2, 1, vec![dev("d0")], Vec::new());

    assert_eq!(
        cmds,
        vec![
            SchedCommand::Reassigned {
                tasks: 1,
                frames: 1,
                reason: LossReason::NodeDown,
            },
            drop_cmd("n1", "d0", 0, 1, LossReason::NodeDown),
            assign("n1", "d0", 0, 2, frames(0, 1), ids(10, 20)),
        ]
    );
    assert_eq!(fx.load("n1"), (1, 3, vec![1]));
}

#[test]
fn a_node_down_takes_its_capacity_and_attempts_away() {
    let (mut fx, _) = one_node(4, 1);

    let cmds = fx.down("n1", 1, LossReason::NodeDown);

    assert_eq!(
        cmds,
        vec![SchedCommand::Reassigned {
            tasks: 4,
            frames: 4,
            reason: LossReason::NodeDown,
        }]
    );
    assert!(fx.sched.capacity().is_empty());
    assert_eq!(fx.sched.inflight(), 0);
    let v = fx.view(S1);
    assert_eq!((v.tasks_running, v.tasks_pending), (0, 4));
}

#[test]
fn a_drained_node_finishes_its_work_and_takes_no_new_work() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let t = assigned(&fx.submit(S1, spec(4, 1)));
    assert_eq!(fx.feed(drain("n1", true)), vec![]);

    assert_eq!(fx.feed(completed("n1", &t[0])), vec![]);
    assert!(fx.sched.is_drained("n1"));

    assert_eq!(
        fx.feed(drain("n1", false)),
        vec![assign("n1", "d0", 3, 1, frames(3, 4), ids(30, 40))]
    );
}

#[test]
fn a_drain_outlives_a_registration() {
    let mut fx = Fixture::new();
    fx.submit(S1, spec(1, 1));
    fx.feed(drain("n1", true));

    let cmds = fx.up("n1", vec![dev("d0")]);

    assert_eq!(cmds, vec![]);
    assert!(fx.sched.is_drained("n1"));
}

#[test]
fn a_node_not_accepting_takes_no_work_until_it_accepts_again() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    fx.feed(accepting("n1", false));
    assert_eq!(fx.submit(S1, spec(1, 1)), vec![]);

    let cmds = fx.feed(accepting("n1", true));

    assert_eq!(
        cmds,
        vec![assign("n1", "d0", 0, 1, frames(0, 1), ids(0, 10))]
    );
}
