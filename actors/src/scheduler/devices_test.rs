//! Devices that come and go at run time ([`SchedEvent::Devices`]): gone
//! ones' attempts are requeued (`device_gone`), new ones take work, offline
//! ones take none, and what a worker says of an attempt that met an offline
//! or unresponsive device.

use super::test_fixture::*;
use super::*;

fn devices(node: &str, epoch: u64, present: &[&str], offline: &[(&str, &str)]) -> SchedEvent {
    SchedEvent::Devices {
        node: node.into(),
        epoch,
        devices: present.iter().map(|d| dev(d)).collect(),
        offline: offline
            .iter()
            .map(|(d, w)| (d.to_string(), w.to_string()))
            .collect(),
    }
}

fn state_of(fx: &Fixture, node: &str, device: &str) -> (DeviceState, Option<String>) {
    let v = fx
        .sched
        .device_views(Some(node))
        .into_iter()
        .find(|v| v.device == device)
        .expect("the device is listed");
    (v.state, v.last_error)
}

#[test]
fn a_gone_device_has_its_attempts_requeued_and_takes_work_again_when_back() {
    // One slot per device; 6 single-frame tasks: d0 and d1 hold 3 each.
    let (mut fx, first) = one_node(6, 1);
    assert_eq!(first.len(), 6);
    let on_d1: Vec<&TaskSpec> = first.iter().filter(|t| t.device == "d1").collect();
    assert_eq!(on_d1.len(), 3);

    let cmds = fx.feed(devices("n1", 1, &["d0"], &[]));

    let reassigned = cmds
        .iter()
        .find_map(|c| match c {
            SchedCommand::Reassigned { tasks, reason, .. } => Some((*tasks, reason.clone())),
            _ => None,
        })
        .expect("d1's attempts are reassigned");
    assert_eq!(reassigned, (3, LossReason::DeviceGone));
    assert!(
        assigned(&cmds).is_empty(),
        "d0 is full and d1 takes nothing: {cmds:?}"
    );
    let replay = fx.manifest(S1).replay;
    assert_eq!(replay.len(), 3);
    assert!(replay
        .iter()
        .all(|r| r.reason == LossReason::DeviceGone && r.device == "d1"));
    assert_eq!(state_of(&fx, "n1", "d1").0, DeviceState::Offline);
    assert!(state_of(&fx, "n1", "d1")
        .1
        .is_some_and(|e| e.starts_with("device_gone")));

    // d1 is listed again: the requeued tasks go to it.
    let cmds = fx.feed(devices("n1", 1, &["d0", "d1"], &[]));
    let again = assigned(&cmds);
    assert_eq!(again.len(), 3, "{cmds:?}");
    assert!(again.iter().all(|t| t.device == "d1" && t.attempt == 2));
    assert_eq!(state_of(&fx, "n1", "d1"), (DeviceState::Busy, None));
}

#[test]
fn a_device_that_joins_takes_pending_work_at_once() {
    let mut fx = Fixture::new();
    fx.up_with("n1", 1, 4, vec![dev("d0")], Vec::new());
    let cmds = fx.submit(S1, spec(6, 1));
    assert_eq!(assigned(&cmds).len(), 3, "one device holds three");

    let cmds = fx.feed(devices("n1", 1, &["d0", "new"], &[]));

    let got = assigned(&cmds);
    assert_eq!(got.len(), 3, "{cmds:?}");
    assert!(got.iter().all(|t| t.device == "new"));
    assert_eq!(fx.load("n1").2, vec![3, 3]);
}

#[test]
fn an_offline_device_takes_no_work_until_it_is_online_and_a_report_of_an_old_epoch_changes_nothing()
{
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0"), dev("d1")]);
    fx.feed(devices(
        "n1",
        1,
        &["d0", "d1"],
        &[("d1", "adb reports it `unauthorized`")],
    ));
    // A report of another epoch is not this registration's.
    fx.feed(devices("n1", 7, &["d0"], &[]));
    assert_eq!(
        state_of(&fx, "n1", "d1"),
        (
            DeviceState::Offline,
            Some("adb reports it `unauthorized`".into())
        )
    );

    let cmds = fx.submit(S1, spec(6, 1));
    let got = assigned(&cmds);
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|t| t.device == "d0"), "{got:?}");

    let cmds = fx.feed(devices("n1", 1, &["d0", "d1"], &[]));
    let got = assigned(&cmds);
    assert_eq!(got.len(), 3, "{cmds:?}");
    assert!(got.iter().all(|t| t.device == "d1"));
}

#[test]
fn an_attempt_skipped_offline_spends_no_attempt_is_counted_and_blocklists_nothing() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0"), dev("d1")]);
    let mut one = spec(1, 1);
    one.blocklist_after = Some(1);
    one.max_attempts = 1;
    let cmds = fx.submit(S1, one);
    let t = assigned(&cmds).remove(0);
    let other = if t.device == "d0" { "d1" } else { "d0" };

    let cmds = fx.feed(SchedEvent::Result(result(
        "n1",
        &t,
        TaskOutcome::SkippedOffline {
            error: "device offline: battery low".into(),
        },
    )));
    // It waits out no backoff: the next placement takes it, elsewhere.
    let cmds = if assigned(&cmds).is_empty() {
        fx.tick_at(fx.now + 1)
    } else {
        cmds
    };
    let again = assigned(&cmds);
    assert_eq!(again.len(), 1, "{cmds:?}");
    assert_eq!((again[0].device.as_str(), again[0].attempt), (other, 2));
    fx.feed(completed("n1", &again[0]));

    let v = fx.view(S1);
    assert_eq!(
        v.state,
        SessionState::Completed,
        "one attempt allowed, none spent"
    );
    let key = format!("n1/{}", t.device);
    assert_eq!(v.skipped_offline.get(&key), Some(&1));
    let m = fx.manifest(S1);
    assert_eq!(m.skipped_offline.get(&key), Some(&1));
    assert_eq!(
        m.failure_reasons.get(&key).map(String::as_str),
        Some("device offline: battery low")
    );
    assert!(m.turned_away.is_empty());
    assert!(
        m.blocklisted.is_empty(),
        "offline is not a failure: {:?}",
        m.blocklisted
    );
}

#[test]
fn an_unresponsive_device_fails_its_attempt_and_the_replay_says_so() {
    let mut fx = Fixture::new();
    fx.up("n1", vec![dev("d0"), dev("d1")]);
    let cmds = fx.submit(S1, spec(4, 4));
    let t = assigned(&cmds).remove(0);

    fx.feed(progress("n1", &t, 1, None));
    let cmds = fx.feed(SchedEvent::Result(result(
        "n1",
        &t,
        TaskOutcome::Unresponsive {
            frames_done: 1,
            error: "step `login`: device_unresponsive: no sign of life for 500 ms".into(),
        },
    )));
    let cmds = if assigned(&cmds).is_empty() {
        fx.tick_at(fx.now + 1_000)
    } else {
        cmds
    };
    let again = assigned(&cmds);
    assert_eq!(again.len(), 1, "{cmds:?}");
    assert_ne!(
        again[0].device, t.device,
        "the range moves to another device"
    );
    assert_eq!(again[0].frames, frames(1, 4), "the frame done stays done");
    fx.feed(completed("n1", &again[0]));

    let m = fx.manifest(S1);
    assert_eq!(m.state, SessionState::Completed);
    assert_eq!(m.replay.len(), 1);
    let r = &m.replay[0];
    assert_eq!(
        (r.frames, r.old_attempt, r.new_attempt),
        (frames(1, 4), 1, 2)
    );
    assert_eq!(r.reason.as_str(), "device_unresponsive");
    assert!(r
        .reason
        .to_string()
        .starts_with("device_unresponsive: step `login`"));
    let covered: u64 = m.ranges.iter().map(|r| r.frames.len()).sum();
    assert_eq!(covered, 4, "every frame once: {:?}", m.ranges);
    assert_eq!(fx.view(S1).retries, 1, "an attempt was spent");
}
