//! Operator controls on real `orch-node` processes: priority, max_devices,
//! pause and resume, retry and requeue, across a kill -9 of the master.

use std::time::{Duration, Instant};

use orch_tests::{
    assert_exactly_once, assert_no_id_issued_twice, bins, id_events, max_overlap, TestCluster,
};
use serde_json::Value;

/// A master+worker `node-0` and `workers` workers, each with `devices` devices.
fn cluster(workers: usize, devices: u32) -> TestCluster {
    TestCluster::master_and_workers(bins!(), workers, devices).unwrap()
}

/// `orchctl ARGS --json` on node-0: exit status and the JSON answer (or stderr).
fn ctl(c: &TestCluster, args: &[&str]) -> (i32, Value, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = c.orchctl(0, &all);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn ok(c: &TestCluster, args: &[&str]) -> Value {
    let (code, v, err) = ctl(c, args);
    assert_eq!(code, 0, "orchctl {args:?}: {err}\n{}", c.logs());
    v
}

/// Kill the master with -9, start it again, and wait until every worker is
/// registered with it again.
fn kill_master(c: &mut TestCluster, workers: usize) {
    c.nodes[0].kill9();
    c.restart(0).unwrap();
    c.wait_all_healthy(workers).unwrap();
}

/// Every attempt's start, high and low sessions together, in order; their
/// names in that order; where the first high one is.
fn start_order(hm: &Value, lm: &Value) -> (Vec<(u64, &'static str)>, Vec<&'static str>, usize) {
    let mut starts: Vec<(u64, &'static str)> = ranges(hm)
        .iter()
        .map(|r| (r["started_ms"].as_u64().unwrap(), "high"))
        .chain(
            ranges(lm)
                .iter()
                .map(|r| (r["started_ms"].as_u64().unwrap(), "low")),
        )
        .collect();
    starts.sort();
    let order: Vec<&str> = starts.iter().map(|s| s.1).collect();
    let first = order
        .iter()
        .position(|&s| s == "high")
        .expect("a high attempt");
    (starts, order, first)
}

fn ranges(m: &Value) -> &Vec<Value> {
    m["ranges"].as_array().expect("ranges")
}

#[test]
fn pause_resume_and_requeue_hold_across_master_kills_and_max_devices_is_never_exceeded() {
    let c = &mut cluster(2, 2);
    // Six devices; two at most for this session.
    let id = c
        .submit(
            "capped",
            "name = \"capped\"\nframes = { start = 0, end = 30 }\nchunk_frames = 1\nid_chunk_size = 10\nmax_devices = 2\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 150\n",
        )
        .unwrap();
    c.wait_session(&id, "4 frames done", Duration::from_secs(30), |v| {
        v["frames_done"].as_u64().unwrap_or(0) >= 4
    })
    .unwrap();

    // Pause: what runs finishes, nothing new starts, and a master restart
    // keeps it so.
    let v = ok(c, &["pause", &id]);
    assert!(v["message"].as_str().unwrap().contains("paused"), "{v}");
    let s = c
        .wait_session(
            &id,
            "nothing running while paused",
            Duration::from_secs(20),
            |v| v["tasks_running"] == 0,
        )
        .unwrap();
    assert_eq!(s["paused"], true, "{s}");
    let done_paused = s["frames_done"].as_u64().unwrap();
    assert!(done_paused < 30, "paused before the end: {s}");
    kill_master(c, 2);
    let s = c.session(&id).unwrap();
    assert_eq!(
        (&s["paused"], &s["state"]),
        (&Value::Bool(true), &Value::from("running")),
        "{s}"
    );
    // Every worker is back and heartbeating: for two heartbeat timeouts
    // nothing is given to the paused session.
    let watch_until = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < watch_until {
        let s = c.session(&id).unwrap();
        assert_eq!(s["tasks_running"], 0, "a paused session got work: {s}");
        assert_eq!(s["frames_done"].as_u64().unwrap(), done_paused, "{s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = ctl(c, &["pause", "nope-123"]);
    assert_eq!(code, 3, "no such session: exit 3 ({err})");

    ok(c, &["resume", &id]);
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let (code, _, err) = ctl(c, &["pause", &id]);
    assert_eq!(code, 1, "a finished session cannot be paused: {err}");
    assert!(err.contains("only a running session"), "{err}");

    // Requeue a produced range, and kill the master right after.
    let before = c.manifest(&id).unwrap();
    let old = ranges(&before)
        .iter()
        .find(|r| r["task"] == 7)
        .cloned()
        .expect("task 7 produced");
    let v = ok(c, &["requeue", &id, "7"]);
    assert!(v["message"].as_str().unwrap().contains("runs again"), "{v}");
    kill_master(c, 2);
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 30), 30);
    let new = ranges(&m).iter().find(|r| r["task"] == 7).unwrap();
    assert!(
        new["attempt"].as_u64() > old["attempt"].as_u64(),
        "task 7 ran again under a new attempt: {old} then {new}"
    );
    let requeued: Vec<&Value> = m["replay"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reason"] == "operator_requeue")
        .collect();
    assert_eq!(requeued.len(), 1, "{m}");
    assert_eq!(
        (&requeued[0]["task"], &requeued[0]["old_attempt"]),
        (&Value::from(7), &old["attempt"])
    );
    // At most two attempts of the session at once, by the manifest's own
    // timestamps (assignment to the master learning the frames were done).
    let overlap = max_overlap(&m, "session")[""];
    assert!(
        overlap <= 2,
        "max_devices = 2, yet {overlap} ranges overlap"
    );
    assert!(overlap >= 1);
    let events = id_events(c);
    assert!(assert_no_id_issued_twice(&events, &m) >= 30);
}

#[test]
fn retry_runs_the_failed_ranges_again_after_a_master_kill_and_requeue_quarantines_outputs() {
    let c = &mut cluster(1, 2);
    let flag = c.dir.path().join("fixed");
    // Frames 3 and 5 fail until the flag file exists; every frame writes a file.
    let session = format!(
        "name = \"flaky\"\nframes = {{ start = 0, end = 8 }}\nchunk_frames = 1\nid_chunk_size = 10\nmax_attempts = 1\n[executor]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"if [ {{start}} -eq 3 -o {{start}} -eq 5 ] && [ ! -e {} ]; then echo broken >&2; exit 1; fi; echo {{start}} > {{out_dir}}/frame_{{start}}.txt\"]\n",
        flag.display()
    );
    let id = c.submit("flaky", &session).unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "partial", "{v}");
    let (code, _, err) = ctl(c, &["requeue", &id, "3"]);
    assert_eq!(code, 1, "a failed task is retried, not requeued: {err}");
    assert!(err.contains("orchctl retry"), "{err}");

    std::fs::write(&flag, "").unwrap();
    kill_master(c, 1);
    let v = ok(c, &["retry", &id]);
    assert!(
        v["message"].as_str().unwrap().contains("2 failed ranges"),
        "{v}"
    );
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 8), 8);
    assert_eq!(m["failed"].as_array().unwrap().len(), 0, "{m}");
    let mut retried: Vec<u64> = m["retried"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["task"].as_u64().unwrap())
        .collect();
    retried.sort_unstable();
    assert_eq!(retried, vec![3, 5], "{m}");
    let (code, _, err) = ctl(c, &["retry", &id]);
    assert_eq!(code, 1, "nothing left to retry: {err}");

    // The manifest on disk after a restart is the whole session.
    kill_master(c, 1);
    let disk = c.manifest_file("node-0", &id).unwrap();
    assert_eq!(assert_exactly_once(&disk, 0, 8), 8);

    // Requeue frame 2: its file goes to quarantine, a new attempt writes it again.
    let old = ranges(&m).iter().find(|r| r["task"] == 2).unwrap().clone();
    let node = old["node"].as_str().unwrap().to_string();
    let data = c.dir.path().join(&node).join("data");
    let old_file = data
        .join(old["out_dir"].as_str().unwrap())
        .join("frame_2.txt");
    assert!(old_file.is_file(), "{}", old_file.display());
    ok(c, &["requeue", &id, "2"]);
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 8), 8);
    let new = ranges(&m).iter().find(|r| r["task"] == 2).unwrap();
    assert!(new["attempt"].as_u64() > old["attempt"].as_u64(), "{new}");
    let new_data = c
        .dir
        .path()
        .join(new["node"].as_str().unwrap())
        .join("data");
    assert!(new_data
        .join(new["out_dir"].as_str().unwrap())
        .join("frame_2.txt")
        .is_file());
    orch_tests::wait_until(
        "the old output quarantined",
        Duration::from_secs(10),
        || !old_file.exists(),
    )
    .unwrap();
    let tail = old["out_dir"].as_str().unwrap().trim_start_matches("out/");
    assert!(data
        .join("quarantine")
        .join(tail)
        .join("frame_2.txt")
        .is_file());
}

#[test]
fn a_high_priority_session_takes_the_devices_a_low_one_held_and_the_low_one_finishes() {
    // One device: the order attempts start in is the order they were given.
    let c = &mut cluster(0, 1);
    let low = c
        .submit(
            "low",
            "name = \"low\"\nframes = { start = 0, end = 20 }\nchunk_frames = 1\nid_chunk_size = 10\npriority = -5\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 100\n",
        )
        .unwrap();
    c.wait_session(
        &low,
        "the low session holds the device",
        Duration::from_secs(20),
        |v| {
            v["tasks_running"].as_u64().unwrap_or(0) >= 3
                && v["frames_done"].as_u64().unwrap_or(0) >= 1
        },
    )
    .unwrap();
    let high = c
        .submit(
            "high",
            "name = \"high\"\nframes = { start = 0, end = 6 }\nchunk_frames = 1\nid_chunk_size = 10\npriority = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 100\n",
        )
        .unwrap();
    let h = c.wait_done(&high, Duration::from_secs(60)).unwrap();
    assert_eq!(h["state"], "completed", "{h}");
    let l = c.wait_done(&low, Duration::from_secs(60)).unwrap();
    assert_eq!(
        l["state"], "completed",
        "the low session still finishes: {l}"
    );
    let (hm, lm) = (c.manifest(&high).unwrap(), c.manifest(&low).unwrap());
    assert_eq!(assert_exactly_once(&hm, 0, 6), 6);
    assert_eq!(assert_exactly_once(&lm, 0, 20), 20);
    // The device's queue is not reordered: the low attempts queued when the
    // high session came (at most PREFETCH behind the running one) run
    // first; then every high attempt, one after the other; then the rest
    // of the low one. Shared round-robin would alternate them.
    let (starts, order, first) = start_order(&hm, &lm);
    assert_eq!(
        &order[first..first + 6],
        &["high"; 6],
        "every high attempt ran back to back: {order:?}"
    );
    let submitted = hm["submitted_ms"].as_u64().unwrap();
    let low_after = starts[..first].iter().filter(|s| s.0 > submitted).count();
    assert!(
        low_after <= orch_actors::scheduler::PREFETCH as usize,
        "{low_after} low attempts started after the high session came: {order:?}"
    );
}

#[test]
fn attempts_of_a_second_or_more_are_not_queued_so_a_high_priority_session_waits_for_one_attempt_only(
) {
    // One device, attempts of 1.1 s: once the first result says so, the
    // device gets the next attempt only when it is free.
    let c = &mut cluster(0, 1);
    let low = c
        .submit(
            "low-long",
            "name = \"low-long\"\nframes = { start = 0, end = 8 }\nchunk_frames = 1\nid_chunk_size = 10\npriority = -5\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 1100\n",
        )
        .unwrap();
    // The three attempts placed before any result drained (five pending).
    c.wait_session(
        &low,
        "three low attempts done",
        Duration::from_secs(30),
        |v| v["frames_done"].as_u64().unwrap_or(0) >= 3,
    )
    .unwrap();
    let high = c
        .submit(
            "high-long",
            "name = \"high-long\"\nframes = { start = 0, end = 2 }\nchunk_frames = 1\nid_chunk_size = 10\npriority = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 1100\n",
        )
        .unwrap();
    let h = c.wait_done(&high, Duration::from_secs(60)).unwrap();
    assert_eq!(h["state"], "completed", "{h}");
    let l = c.wait_done(&low, Duration::from_secs(60)).unwrap();
    assert_eq!(l["state"], "completed", "{l}");
    let (hm, lm) = (c.manifest(&high).unwrap(), c.manifest(&low).unwrap());
    assert_eq!(assert_exactly_once(&hm, 0, 2), 2);
    assert_eq!(assert_exactly_once(&lm, 0, 8), 8);
    let submitted = hm["submitted_ms"].as_u64().unwrap();
    let (starts, order, first) = start_order(&hm, &lm);
    assert_eq!(&order[first..first + 2], &["high"; 2], "{order:?}");
    // No low attempt was waiting on the device: the high session's first
    // attempt is the next one to start after its submission.
    let low_after = starts[..first].iter().filter(|s| s.0 > submitted).count();
    assert_eq!(
        low_after, 0,
        "low attempts started after the high session came: {order:?} (submitted at {submitted}, starts {starts:?})"
    );
}
