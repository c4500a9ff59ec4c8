//! Read-only views of the ledger: sessions, devices, manifests, failovers.

use super::test_fixture::*;
use super::*;

#[test]
fn a_view_counts_tasks_by_state() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let t = assigned(&fx.submit(S1, spec(10, 2)));
    fx.feed(progress("n1", &t[0], 1, None));
    fx.feed(completed("n1", &t[1]));
    fx.now = 50;

    assert_eq!(
        fx.view(S1),
        SessionView {
            collect: String::new(),
            id: S1.into(),
            name: "render".into(),
            state: SessionState::Running,
            waiting: None,
            frames_total: 10,
            frames_done: 3,
            frames_failed: 0,
            tasks_total: 5,
            tasks_completed: 1,
            tasks_running: 3,
            tasks_pending: 1,
            tasks_failed: 0,
            retries: 0,
            failovers: 0,
            stale_rejected: 0,
            elapsed_ms: 50,
            paused: false,
            priority: 0,
            max_devices: None,
            skipped_offline: Default::default(),
        }
    );
    assert_eq!(fx.sched.inflight(), 3);
    assert_eq!(
        fx.sched.running_ranges(S1),
        vec![frames(0, 2), frames(4, 6), frames(6, 8)]
    );
}

#[test]
fn a_manifest_lists_its_ranges_in_frame_order() {
    let (mut fx, t) = one_node(4, 2);
    fx.feed(completed("n1", &t[1]));
    fx.feed(completed("n1", &t[0]));

    let m = fx.manifest(S1);

    let order: Vec<(u64, FrameRange)> = m.ranges.iter().map(|r| (r.task, r.frames)).collect();
    assert_eq!(order, vec![(0, frames(0, 2)), (1, frames(2, 4))]);
    assert_eq!(m.state, SessionState::Completed);
}

#[test]
fn a_manifest_snapshot_serializes_exactly_as_the_manifest() {
    let (mut fx, t) = one_node(6, 2);
    fx.feed(completed("n1", &t[2]));
    fx.feed(device_restart("n1", "d1"));
    fx.feed(completed("n1", &t[0]));

    let snap = fx.sched.manifest_snapshot(S1).expect("in memory");

    let m = fx.manifest(S1);
    assert_eq!((snap.session(), snap.ranges()), (S1, 2));
    assert_eq!(m.replay.len(), 1);
    assert_eq!(
        serde_json::to_string(&snap).unwrap(),
        serde_json::to_string(&m).unwrap()
    );
}

#[test]
fn device_views_show_what_each_device_runs() {
    let (mut fx, t) = one_node(3, 1);
    fx.feed(completed("n1", &t[1]));

    let views = fx.sched.device_views(None);

    let task_ref = |task: u64| TaskRef {
        session: S1.into(),
        task,
        attempt: 1,
        frames: frames(task, task + 1),
        frames_done: 0,
    };
    assert_eq!(
        views,
        vec![
            DeviceView {
                node: "n1".into(),
                device: "d0".into(),
                state: DeviceState::Busy,
                tasks: vec![task_ref(0), task_ref(2)],
                tasks_done: 0,
                last_error: None,
                capabilities: Capabilities::new(),
            },
            DeviceView {
                node: "n1".into(),
                device: "d1".into(),
                state: DeviceState::Idle,
                tasks: vec![],
                tasks_done: 1,
                last_error: None,
                capabilities: Capabilities::new(),
            },
        ]
    );
    assert!(fx.sched.device_views(Some("n2")).is_empty());
}

#[test]
fn recent_failovers_are_the_newest_reassignments_newest_last() {
    let (mut fx, _) = two_nodes(2, 1);
    fx.down("n1", 1, LossReason::NodeDown);
    fx.down("n2", 1, LossReason::HeartbeatTimeout);

    let recent: Vec<(u64, u32, u32, String, LossReason)> = fx
        .sched
        .recent_failovers(2)
        .into_iter()
        .map(|(s, r)| {
            assert_eq!(s, S1);
            (r.task, r.old_attempt, r.new_attempt, r.node, r.reason)
        })
        .collect();

    assert_eq!(
        recent,
        vec![
            (0, 2, 3, "n2".into(), LossReason::HeartbeatTimeout),
            (1, 1, 2, "n2".into(), LossReason::HeartbeatTimeout),
        ]
    );
    assert_eq!(fx.manifest(S1).replay.len(), 3);
}

#[test]
fn the_device_grid_says_what_the_device_views_say() {
    let (mut fx, t) = one_node(3, 1);
    fx.up("n2", vec![dev("d0"), dev("d1"), dev("d2")]);
    fx.feed(completed("n1", &t[0]));
    fx.feed(device_restart("n2", "d1"));
    fx.feed(SchedEvent::DeviceDown {
        node: "n2".into(),
        device: "d2".into(),
        reason: LossReason::DeviceKilled,
        disable: true,
    });

    let grid = fx.sched.device_grid();

    let views = fx.sched.device_views(None);
    let from_views: Vec<(String, char)> = views
        .iter()
        .map(|v| (v.node.clone(), v.state.grid_char()))
        .collect();
    let from_grid: Vec<(String, char)> = grid
        .iter()
        .flat_map(|g| g.states.chars().map(|c| (g.node.clone(), c)))
        .collect();
    assert_eq!(from_grid, from_views);
    assert!(from_grid.iter().any(|(_, c)| *c == 'b'));
    assert!(from_grid.iter().any(|(_, c)| *c == 'q'));
    assert!(from_grid.iter().any(|(_, c)| *c == 'i'));
}
