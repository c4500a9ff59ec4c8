//! Placement: which pending task goes to which device.

use super::test_fixture::*;
use super::*;

fn caps(pairs: &[(&str, CapValue)]) -> Capabilities {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn list(items: &[&str]) -> CapValue {
    CapValue::List(items.iter().map(|s| s.to_string()).collect())
}

#[test]
fn caps_match_needs_every_requirement() {
    let have = caps(&[
        ("gpu", CapValue::Bool(true)),
        ("os", list(&["linux", "posix"])),
        ("tags", list(&["nvenc", "av1"])),
        ("vram_gb", CapValue::Int(24)),
    ]);
    assert!(caps_match(&Capabilities::new(), &have));
    assert!(caps_match(
        &caps(&[
            ("gpu", CapValue::Bool(true)),
            ("vram_gb", CapValue::Int(24))
        ]),
        &have
    ));
    // A string wanted is one of a list, a list wanted is within one.
    assert!(caps_match(
        &caps(&[("os", CapValue::Str("linux".into()))]),
        &have
    ));
    assert!(caps_match(&caps(&[("tags", list(&["av1"]))]), &have));
    assert!(!caps_match(
        &caps(&[("tags", list(&["av1", "vp9"]))]),
        &have
    ));
    assert!(!caps_match(&caps(&[("gpu", CapValue::Bool(false))]), &have));
    assert!(!caps_match(&caps(&[("tpu", CapValue::Bool(true))]), &have));
}

#[test]
fn a_session_goes_only_to_devices_matching_its_requirements() {
    let mut fx = Fixture::new();
    fx.up_with("n1", 1, 2, vec![dev("d0"), gpu("d1")], Vec::new());
    let mut s = spec(4, 1);
    s.require = caps(&[("gpu", CapValue::Bool(true))]);

    let cmds = fx.submit(S1, s);

    assert_eq!(
        cmds,
        vec![
            assign("n1", "d1", 0, 1, frames(0, 1), ids(0, 10)),
            assign("n1", "d1", 1, 1, frames(1, 2), ids(10, 20)),
            assign("n1", "d1", 2, 1, frames(2, 3), ids(20, 30)),
        ]
    );
    assert_eq!(fx.load("n1"), (3, 6, vec![0, 3]));
    assert_eq!(
        fx.view(S1).waiting.as_deref(),
        Some("all matching devices are busy")
    );
}

#[test]
fn each_task_goes_to_the_least_loaded_device() {
    let (fx, tasks) = one_node(4, 1);

    let on: Vec<(u64, &str, IdRange)> = tasks
        .iter()
        .map(|t| (t.task, t.device.as_str(), t.ids))
        .collect();
    assert_eq!(
        on,
        vec![
            (0, "d0", ids(0, 10)),
            (1, "d1", ids(10, 20)),
            (2, "d0", ids(20, 30)),
            (3, "d1", ids(30, 40)),
        ]
    );
    assert_eq!(fx.load("n1"), (4, 6, vec![2, 2]));
}

#[test]
fn an_idle_device_goes_first_then_the_less_loaded_node() {
    let mut fx = Fixture::new();
    fx.up_with("n1", 1, 1, vec![dev("d0"), dev("d1")], Vec::new());
    fx.up_with("n2", 1, 3, vec![dev("d0"), dev("d1")], Vec::new());

    let cmds = fx.submit(S1, spec(4, 1));

    let on: Vec<(&str, u64, &str)> = cmds
        .iter()
        .filter_map(|c| match c {
            SchedCommand::Assign { node, task, .. } => {
                Some((node.as_str(), task.task, task.device.as_str()))
            }
            _ => None,
        })
        .collect();
    // n1 has a third of n2's cap: after one task it is the busier node,
    // but its idle device still beats n2's busy ones.
    assert_eq!(
        on,
        vec![
            ("n1", 0, "d0"),
            ("n2", 1, "d0"),
            ("n2", 2, "d1"),
            ("n1", 3, "d1")
        ]
    );
}

#[test]
fn a_preferred_device_outranks_an_idle_one() {
    let mut fx = Fixture::new();
    fx.up_with("n1", 1, 2, vec![dev("d0"), gpu("d1")], Vec::new());
    let mut s = spec(4, 1);
    s.prefer = BTreeMap::from([("gpu".to_string(), 5)]);

    let tasks = assigned(&fx.submit(S1, s));

    let devices: Vec<&str> = tasks.iter().map(|t| t.device.as_str()).collect();
    assert_eq!(devices, vec!["d1", "d1", "d1", "d0"]);
}

#[test]
fn a_device_holds_at_most_one_plus_prefetch_attempts() {
    let mut fx = Fixture::new();
    fx.up_with("n1", 1, 5, vec![dev("d0")], Vec::new());

    let tasks = assigned(&fx.submit(S1, spec(10, 1)));

    assert_eq!(tasks.len(), 1 + PREFETCH as usize);
    assert_eq!(fx.load("n1"), (3, 15, vec![3]));
}

#[test]
fn a_node_holds_at_most_max_concurrency_times_one_plus_prefetch() {
    let mut fx = Fixture::new();
    fx.up_with(
        "n1",
        1,
        1,
        vec![dev("d0"), dev("d1"), dev("d2"), dev("d3")],
        Vec::new(),
    );

    let tasks = assigned(&fx.submit(S1, spec(10, 1)));

    let devices: Vec<&str> = tasks.iter().map(|t| t.device.as_str()).collect();
    assert_eq!(devices, vec!["d0", "d1", "d2"]);
    assert_eq!(fx.load("n1"), (3, 3, vec![1, 1, 1, 0]));
}

#[test]
fn sessions_take_turns() {
    let mut fx = Fixture::new();
    assert_eq!(fx.submit("a", spec(4, 1)), vec![]);
    assert_eq!(fx.submit("b", spec(4, 1)), vec![]);

    let first = assigned(&fx.up("n1", vec![dev("d0")]));
    let order: Vec<(&str, u64)> = first.iter().map(|t| (t.session.as_str(), t.task)).collect();
    assert_eq!(order, vec![("a", 0), ("b", 0), ("b", 1)]);

    // The freed slot goes to the session whose turn it is.
    let next = assigned(&fx.feed(completed("n1", &first[0])));
    let order: Vec<(&str, u64)> = next.iter().map(|t| (t.session.as_str(), t.task)).collect();
    assert_eq!(order, vec![("a", 1)]);
}

#[test]
fn lost_work_avoids_the_node_that_lost_it() {
    let (mut fx, tasks) = two_nodes(1, 1);
    assert_eq!(tasks[0].device, "d0");

    let cmds = fx.feed(device_restart("n1", "d0"));

    // n1's device is free again, but n2 did not just lose the task.
    assert_eq!(
        cmds,
        vec![
            drop_cmd("n1", "d0", 0, 1, LossReason::DeviceRestart),
            SchedCommand::Reassigned {
                tasks: 1,
                frames: 1,
                reason: LossReason::DeviceRestart,
            },
            assign("n2", "d0", 0, 2, frames(0, 1), ids(10, 20)),
        ]
    );
}

#[test]
fn a_list_session_sends_each_task_its_items() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut s = spec(3, 2);
    s.items = Some(vec!["a.png".into(), "b.png".into(), "c.png".into()]);

    let tasks = assigned(&fx.submit(S1, s));

    let items: Vec<Vec<String>> = tasks.into_iter().map(|t| t.items).collect();
    assert_eq!(
        items,
        vec![
            vec!["a.png".to_string(), "b.png".to_string()],
            vec!["c.png".to_string()]
        ]
    );
}

/// `n1` with devices d0, d1 and session S1 of 20 one-frame tasks: every
/// result of `took` ms; what each device holds after each of 12 results,
/// and who got them (the first attempt of each device completes).
fn loads_with_attempts_of(took: u64) -> Vec<Vec<u32>> {
    let (mut fx, first) = one_node(20, 1);
    assert_eq!(
        first.len(),
        2 * (1 + PREFETCH as usize),
        "unmeasured: queued"
    );
    let mut running: Vec<TaskSpec> = first;
    let mut loads = Vec::new();
    for _ in 0..12 {
        fx.now += took;
        let t = running.remove(0);
        let mut r = result("n1", &t, TaskOutcome::Completed);
        r.started_ms = fx.now - took;
        r.finished_ms = fx.now;
        running.extend(assigned(&fx.feed(SchedEvent::Result(r))));
        // Attempts on a device run in the order they were given.
        running.sort_by_key(|t| t.task);
        loads.push(fx.load("n1").2);
    }
    loads
}

#[test]
fn devices_queue_no_attempt_of_a_session_whose_attempts_run_a_second_or_more() {
    let long = loads_with_attempts_of(PREFETCH_UNDER_MS);
    // The queue of the first placement drains and is not refilled.
    assert_eq!(long.last().unwrap(), &vec![1, 1], "{long:?}");
    assert!(
        long.windows(2)
            .all(|w| w[1].iter().sum::<u32>() <= w[0].iter().sum()),
        "nothing is queued again: {long:?}"
    );
    let short = loads_with_attempts_of(PREFETCH_UNDER_MS - 1);
    assert!(
        short
            .iter()
            .all(|l| l.iter().sum::<u32>() == 2 * (1 + PREFETCH)),
        "short attempts keep every queue full: {short:?}"
    );
}

/// Fail `t` on its device and run the backoff out; what that assigned.
fn fail_and_wait(fx: &mut Fixture, node: &str, t: &TaskSpec) -> Vec<TaskSpec> {
    let mut got = assigned(&fx.feed(failed(node, t, 0, "boom")));
    // Past the longest backoff (40 ms), well within every deadline.
    fx.now += 50;
    got.extend(assigned(&fx.tick_at(fx.now)));
    got
}

#[test]
fn a_device_that_fails_a_sessions_attempts_is_blocklisted_for_it_and_one_failing_every_session_for_all(
) {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0"), dev("d1")]);
    let mut s = spec(40, 1);
    s.max_attempts = 100;
    let mut running = assigned(&fx.submit(S1, s));
    // d0 fails three of S1's attempts: blocklisted for S1.
    for _ in 0..3 {
        let i = running
            .iter()
            .position(|t| t.device == "d0")
            .expect("an attempt on d0");
        let t = running.remove(i);
        running.extend(fail_and_wait(&mut fx, "n1", &t));
    }
    let m = fx.manifest(S1);
    assert_eq!(m.blocklisted.len(), 1, "{:?}", m.blocklisted);
    assert_eq!(m.blocklisted[0].what, "n1/d0");
    // What d0 still holds runs out; S1 gives it nothing new.
    for _ in 0..20 {
        let t = running.remove(0);
        let cmds = fx.feed(completed("n1", &t));
        let new = assigned(&cmds);
        assert!(
            new.iter().all(|t| t.device != "d0"),
            "S1 after its blocklisting: {new:?}"
        );
        running.extend(new);
    }
    // Another session still uses d0.
    let other = assigned(&fx.submit("s2", spec(2, 1)));
    let views = fx.sched.device_views(None);
    assert!(
        other.iter().any(|t| t.device == "d0")
            || views
                .iter()
                .any(|v| v.device == "d0" && v.state == DeviceState::Idle),
        "d0 takes other sessions' work: {other:?}"
    );
}

#[test]
fn failing_in_a_row_blocklists_a_device_for_every_session_until_it_is_unblocked_even_across_registrations(
) {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut s = spec(40, 1);
    s.max_attempts = 100;
    s.blocklist_after = Some(0);
    let mut running = assigned(&fx.submit(S1, s));
    for _ in 0..crate::protocol::DEVICE_BLOCKLIST_IN_A_ROW {
        let t = running.remove(0);
        running.extend(fail_and_wait(&mut fx, "n1", &t));
    }
    let state = |fx: &Fixture| fx.sched.device_views(None)[0].state;
    assert_eq!(
        state(&fx),
        DeviceState::Blocklisted,
        "{:?}",
        fx.sched.device_views(None)
    );
    // The node registers again: still blocklisted.
    fx.up_with("n1", 2, 1, vec![dev("d0")], Vec::new());
    assert_eq!(state(&fx), DeviceState::Blocklisted);
    let placed = assigned(&fx.tick_at(fx.now + 50));
    assert!(placed.is_empty(), "a blocklisted device got {placed:?}");
    // An operator unblocks it: it takes work again.
    let placed = assigned(&fx.feed(SchedEvent::Unblock {
        node: "n1".into(),
        device: "d0".into(),
    }));
    assert!(!placed.is_empty());
    assert_ne!(state(&fx), DeviceState::Blocklisted);
}

#[test]
fn a_session_whose_only_device_is_blocklisted_for_it_waits_and_says_why() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0")]);
    let mut s = spec(5, 1);
    s.max_attempts = 10;
    s.blocklist_after = Some(1);
    let mut running = assigned(&fx.submit(S1, s));
    let t = running.remove(0);
    fail_and_wait(&mut fx, "n1", &t);
    // What d0 held already runs out; then nothing more comes to it.
    for t in running {
        fx.feed(completed("n1", &t));
    }
    let v = fx.view(S1);
    let why = v.waiting.unwrap_or_default();
    assert!(why.contains("blocklisted for this session"), "{why}");
    assert_eq!(
        fx.load("n1").0,
        0,
        "nothing in flight on the blocklisted device"
    );
}
