//! Reasons read and write as the strings earlier versions stored: events
//! in the master's store, `replay` records in manifests, metric labels.

use proptest::prelude::*;

use super::test_fixture::*;
use super::*;
use crate::protocol::DownReason;
use crate::store::{decode_events, encode_event_into};

/// Records as the version before [`LossReason`] wrote them (a `String`
/// reason), at time 42: `NodeDown { node: "n1", epoch: 3, reason:
/// "heartbeat_timeout" }` and `DeviceDown { node: "n1", device: "d0",
/// reason: "device_killed", disable: true }`.
const OLD_NODE_DOWN: &str = "82a561745f6d732aa56576656e7481a84e6f6465446f776e83a46e6f6465a26e31a565706f636803a6726561736f6eb16865617274626561745f74696d656f7574";
const OLD_DEVICE_DOWN: &str = "82a561745f6d732aa56576656e7481aa446576696365446f776e84a46e6f6465a26e31a6646576696365a26430a6726561736f6ead6465766963655f6b696c6c6564a764697361626c65c3";

/// A `replay` record as the version before [`LossReason`] wrote it.
const OLD_REPLAY_JSON: &str = r#"{"frames":{"start":9,"end":15},"task":0,"old_attempt":1,"new_attempt":2,"node":"n0","device":"d0","reason":"node_down"}"#;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn decode_one(bytes: &[u8]) -> (u64, SchedEvent) {
    let mut got = Vec::new();
    assert_eq!(decode_events(bytes, |at, ev| got.push((at, ev))), Ok(1));
    got.pop().expect("one event")
}

#[test]
fn an_event_stored_with_a_string_reason_decodes_and_encodes_back_the_same() {
    for (hex, want) in [
        (OLD_NODE_DOWN, LossReason::HeartbeatTimeout),
        (OLD_DEVICE_DOWN, LossReason::DeviceKilled),
    ] {
        let old = unhex(hex);
        let (at, ev) = decode_one(&old);
        assert_eq!(at, 42);
        match &ev {
            SchedEvent::NodeDown {
                node,
                epoch,
                reason,
            } => assert_eq!((node.as_str(), *epoch, reason), ("n1", 3, &want)),
            SchedEvent::DeviceDown {
                node,
                device,
                reason,
                disable,
            } => assert_eq!(
                (node.as_str(), device.as_str(), reason, *disable),
                ("n1", "d0", &want, true)
            ),
            other => panic!("decoded {other:?}"),
        }
        let mut again = Vec::new();
        encode_event_into(&mut again, at, &ev);
        assert_eq!(again, old, "written byte for byte as before");
    }
}

#[test]
fn a_replay_record_reads_and_writes_the_json_it_always_had() {
    let r: ReplayRecord = serde_json::from_str(OLD_REPLAY_JSON).expect("an old manifest's record");
    assert_eq!(
        r,
        ReplayRecord {
            frames: frames(9, 15),
            task: 0,
            old_attempt: 1,
            new_attempt: 2,
            node: "n0".into(),
            device: "d0".into(),
            reason: LossReason::NodeDown,
        }
    );
    assert_eq!(serde_json::to_string(&r).unwrap(), OLD_REPLAY_JSON);
}

#[test]
fn every_string_produced_today_reads_as_its_variant() {
    let detail = |d: &str| Some(d.to_string());
    for (s, want) in [
        ("node_down", LossReason::NodeDown),
        ("heartbeat_timeout", LossReason::HeartbeatTimeout),
        ("unregistered", LossReason::Unregistered),
        ("master_restart", LossReason::MasterRestart { detail: None }),
        (
            "master_restart: sent before the crash, never recorded",
            LossReason::MasterRestart {
                detail: detail("sent before the crash, never recorded"),
            },
        ),
        ("resume_timeout", LossReason::ResumeTimeout),
        ("no_answer", LossReason::NoAnswer),
        ("device_restart", LossReason::DeviceRestart),
        ("device_killed", LossReason::DeviceKilled),
        ("cancelled", LossReason::Cancelled),
        ("stale attempt", LossReason::StaleAttempt),
        (
            "attempt failed: exit status 1: no such file",
            LossReason::AttemptFailed {
                detail: "exit status 1: no such file".into(),
            },
        ),
        ("gone fishing", LossReason::Other("gone fishing".into())),
    ] {
        let r = LossReason::from(s.to_string());
        assert_eq!(r, want, "{s}");
        assert_eq!(r.to_string(), s);
        assert_eq!(String::from(r), s);
    }
    assert_eq!(
        super::recovery::drop_unrecorded("n1", &key(0, 1)),
        drop_cmd(
            "n1",
            "",
            0,
            1,
            LossReason::from("master_restart: sent before the crash, never recorded".to_string())
        )
    );
}

#[test]
fn failover_reasons_are_the_metric_labels_and_carry_down_reasons() {
    let labels: Vec<&str> = LossReason::FAILOVERS.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels, crate::metrics::FAILOVER_REASONS);
    for down in DownReason::ALL {
        let r = LossReason::from(down);
        assert_eq!(r.as_str(), down.as_str());
        assert!(LossReason::FAILOVERS.contains(&r), "{r}");
    }
    let failed = LossReason::AttemptFailed {
        detail: "exit 1".into(),
    };
    assert_eq!(
        (failed.as_str(), failed.detail()),
        ("attempt failed", Some("exit 1"))
    );
    assert_eq!(LossReason::Other("x: y".into()).as_str(), "other");
}

proptest! {
    #[test]
    fn any_string_reads_and_writes_back_unchanged(s in ".*", kind in 0usize..4) {
        // Prefixed with the kinds that carry text, to reach their parsers.
        let s = match kind {
            0 => s,
            1 => format!("attempt failed: {s}"),
            2 => format!("master_restart: {s}"),
            _ => format!("{s}: {s}"),
        };
        let r = LossReason::from(s.clone());
        prop_assert_eq!(String::from(r.clone()), s.clone());
        let json = serde_json::to_string(&r).unwrap();
        prop_assert_eq!(&json, &serde_json::to_string(&s).unwrap());
        prop_assert_eq!(serde_json::from_str::<LossReason>(&json).unwrap(), r);
    }
}
