//! Workflow recipes on real `orch-node` processes (docs/workflows.md):
//! stored and versioned by the master across a kill -9, run step by step on
//! one device, recorded per range in the manifest; a step that turns its
//! device away sends the task elsewhere without spending an attempt.

use std::time::Duration;

use orch_tests::{assert_exactly_once, bins, TestCluster};
use serde_json::Value;

/// `orchctl ARGS --json` on node 0: exit code, JSON answer, stderr.
fn ctl(c: &TestCluster, args: &[&str]) -> (i32, Value, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = c.orchctl(0, &all);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Write `text` as a recipe file and store it; the version the master gave.
fn add(c: &TestCluster, file: &str, text: &str) -> u64 {
    let path = c.dir.path().join(file);
    std::fs::write(&path, text).unwrap();
    let (code, v, err) = ctl(c, &["workflow", "add", path.to_str().unwrap()]);
    assert_eq!(code, 0, "workflow add: {err}");
    v["version"].as_u64().expect("a version")
}

/// Three steps: `boot` on every device; `login` turns `node-1-dev-1` away;
/// `shot` writes the frame's file (and fails for frame 5 when `fail5`).
fn recipe(fail5: bool) -> String {
    let shot = if fail5 {
        "if [ {start} -eq 5 ]; then echo 'no screen' >&2; exit 7; fi; echo {start} > shot_{start}.png"
    } else {
        "echo {start} > shot_{start}.png"
    };
    format!(
        "name = \"phone\"\n\
         [[step]]\nname = \"boot\"\nargv = [\"sh\", \"-c\", \"true\"]\ntimeout_ms = 5000\n\
         [[step]]\nname = \"login\"\nargv = [\"sh\", \"-c\", \"if [ {{device}} = node-1-dev-1 ]; then echo 'login screen stuck' >&2; exit 3; fi\"]\ntimeout_ms = 5000\non_failure = \"skip_device\"\n\
         [[step]]\nname = \"shot\"\nargv = [\"sh\", \"-c\", \"{shot}\"]\ntimeout_ms = 5000\n"
    )
}

#[test]
fn workflows_are_versioned_run_step_by_step_and_a_device_that_turns_tasks_away_spends_no_attempt() {
    let mut c = TestCluster::master_and_workers(bins!(), 1, 2).unwrap();
    assert_eq!(add(&c, "phone-v1.toml", &recipe(true)), 1);
    assert_eq!(
        add(&c, "phone-v2.toml", &recipe(false)),
        2,
        "the same name again: a new version"
    );
    // The versions are ledger events: a master killed -9 keeps both.
    c.nodes[0].kill9();
    c.restart(0).unwrap();
    c.wait_all_healthy(1).unwrap();
    let (code, v, err) = ctl(&c, &["workflow", "show", "phone@1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(v["version"], 1);
    assert_eq!(v["steps"][2]["name"], "shot");
    let (code, list, _) = ctl(&c, &["workflow", "list"]);
    assert_eq!(code, 0);
    assert_eq!(list[0]["version"], 2, "the list shows the latest: {list}");
    let (code, _, err) = ctl(&c, &["workflow", "show", "phone@9"]);
    assert_eq!(code, 3, "no such version: {err}");

    // The latest version: every frame done, one file each, nothing on the
    // device that turns tasks away, and no attempt spent there.
    let id = c
        .submit(
            "latest",
            "name = \"latest\"\nframes = { start = 0, end = 12 }\nchunk_frames = 1\nid_chunk_size = 10\nmax_attempts = 1\nblocklist_after = 1\nworkflow = \"phone\"\n",
        )
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 12), 12);
    assert_eq!(m["workflow"], "phone@2");
    let ranges = m["ranges"].as_array().unwrap();
    for r in ranges {
        assert_ne!(
            r["device"], "node-1-dev-1",
            "a turned-away device produced {r}"
        );
        assert_eq!(r["workflow"], "phone@2");
        let steps: Vec<(&str, i64)> = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].as_str().unwrap(), s["exit"].as_i64().unwrap()))
            .collect();
        assert_eq!(steps, [("boot", 0), ("login", 0), ("shot", 0)], "{r}");
        let start = r["frames"]["start"].as_u64().unwrap();
        let names: Vec<&str> = r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["path"].as_str().unwrap())
            .collect();
        assert_eq!(names, [format!("shot_{start}.png")], "{r}");
    }
    let away = m["turned_away"]["node-1/node-1-dev-1"]
        .as_u64()
        .unwrap_or(0);
    assert!(away >= 1, "the stuck device turned tasks away: {m}");
    // `blocklist_after = 1`: the first turn-away blocklisted it for the
    // session; only what it held already came back to it (1 + 2 queued).
    let blocked: Vec<&str> = m["blocklisted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["what"].as_str().unwrap())
        .collect();
    assert_eq!(blocked, ["node-1/node-1-dev-1"], "{m}");
    assert!(
        away <= 3,
        "a blocklisted device got more of the session's tasks: {away}"
    );
    assert!(
        m["failed"].as_array().unwrap().is_empty(),
        "with max_attempts = 1, no attempt was spent: {m}"
    );

    // Version 1, named: frame 5's `shot` fails; the failure lists its steps.
    let id = c
        .submit(
            "pinned",
            "name = \"pinned\"\nframes = { start = 0, end = 8 }\nchunk_frames = 1\nid_chunk_size = 10\nmax_attempts = 2\nbackoff_ms = 10\nworkflow = \"phone@1\"\n",
        )
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "partial", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(m["workflow"], "phone@1");
    let failed = m["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{m}");
    assert_eq!(failed[0]["frames"]["start"], 5);
    let steps = failed[0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{failed:?}");
    assert_eq!(steps[2]["exit"], 7);
    assert!(
        steps[2]["error"].as_str().unwrap().contains("no screen"),
        "{steps:?}"
    );
    assert!(
        failed[0]["error"].as_str().unwrap().contains("step `shot`"),
        "{failed:?}"
    );
}

#[test]
fn bad_recipes_and_references_are_one_clear_line_each() {
    let c = TestCluster::master_and_workers(bins!(), 0, 1).unwrap();
    for (text, key) in [
        (
            "name = \"w\"\n[[step]]\nname = \"a\"\nargv = [\"true\"]\non_failure = \"explode\"\n",
            "on_failure",
        ),
        (
            "name = \"w\"\n[[step]]\nname = \"a\"\nargv = [\"true\"]\ntimeout_ms = 0\n",
            "timeout_ms",
        ),
        ("name = \"w\"\n", "step"),
    ] {
        let path = c.dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = c.orchctl(0, &["workflow", "add", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("bad.toml") && err.contains(key), "{err}");
    }
    // A session naming a workflow that is not stored is refused at submit.
    let f = c.dir.path().join("s.toml");
    std::fs::write(
        &f,
        "name = \"s\"\nframes = { start = 0, end = 2 }\nchunk_frames = 1\nworkflow = \"nothing-here\"\n",
    )
    .unwrap();
    let out = c.orchctl(0, &["submit", f.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("no workflow `nothing-here`"), "{err}");
    // The node still serves.
    assert_eq!(ctl(&c, &["status"]).0, 0);
}

#[test]
fn a_device_failing_every_attempt_is_blocklisted_for_all_until_unblocked() {
    let c = TestCluster::master_and_workers(bins!(), 1, 2).unwrap();
    // node-1-dev-0 fails everything; the other devices never fail.
    let id = c
        .submit(
            "flaky",
            "name = \"flaky\"\nframes = { start = 0, end = 30 }\nchunk_frames = 1\nid_chunk_size = 10\nmax_attempts = 20\nbackoff_ms = 10\nbackoff_max_ms = 20\nblocklist_after = 0\n[executor]\nkind = \"command\"\nargv = [\"sh\", \"-c\", \"if [ {device} = node-1-dev-0 ]; then echo 'usb reset' >&2; exit 1; fi\"]\n",
        )
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 30), 30);
    let device = |c: &TestCluster| -> Value {
        let (_, v, _) = ctl(c, &["devices", "node-1"]);
        v.as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == "node-1-dev-0")
            .cloned()
            .unwrap()
    };
    let d = device(&c);
    assert_eq!(d["state"], "blocklisted", "{d}");
    assert!(
        d["last_error"].as_str().unwrap().contains("in a row"),
        "{d}"
    );
    let (code, _, err) = ctl(&c, &["unblock", "node-1", "node-1-dev-0"]);
    assert_eq!(code, 0, "{err}");
    assert_ne!(device(&c)["state"], "blocklisted");
    let (code, _, _) = ctl(&c, &["unblock", "node-1", "no-such-device"]);
    assert_eq!(code, 3);
}

#[test]
fn the_device_gate_restarts_once_and_turns_tasks_away_from_a_device_that_stays_unhealthy() {
    let c = TestCluster::master_and_workers(bins!(), 1, 2).unwrap();
    let dir = c.dir.path().display().to_string();
    // node-1-dev-0 never passes its check; node-1-dev-1 passes once restarted.
    let recipe = format!(
        "name = \"gated\"\n\
         [check]\n\
         argv = [\"sh\", \"-c\", \"case {{device}} in node-1-dev-0) echo 'no adb' >&2; exit 1;; node-1-dev-1) test -e {dir}/restarted-{{device}};; esac\"]\n\
         restart = [\"sh\", \"-c\", \"touch {dir}/restarted-{{device}}\"]\n\
         timeout_ms = 5000\n\
         [[step]]\nname = \"shot\"\nargv = [\"sh\", \"-c\", \"echo {{start}} > shot_{{start}}.png\"]\n"
    );
    assert_eq!(add(&c, "gated.toml", &recipe), 1);
    let id = c
        .submit(
            "gated",
            "name = \"gated\"\nframes = { start = 0, end = 12 }\nchunk_frames = 1\nid_chunk_size = 10\nmax_attempts = 1\nblocklist_after = 2\nworkflow = \"gated\"\n",
        )
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 12), 12);
    let ranges = m["ranges"].as_array().unwrap();
    assert!(ranges.iter().all(|r| r["device"] != "node-1-dev-0"), "{m}");
    let away = m["turned_away"]["node-1/node-1-dev-0"]
        .as_u64()
        .unwrap_or(0);
    assert!((2..=3).contains(&away), "turned away {away} times: {m}");
    assert!(
        m["blocklisted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["what"] == "node-1/node-1-dev-0"),
        "{m}"
    );
    // node-1-dev-1: its first attempt restarted it, then it worked.
    let on_dev1: Vec<&Value> = ranges
        .iter()
        .filter(|r| r["device"] == "node-1-dev-1")
        .collect();
    assert!(!on_dev1.is_empty(), "{m}");
    let names = |r: &Value| -> Vec<(String, Option<i64>)> {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].as_str().unwrap().to_string(), s["exit"].as_i64()))
            .collect()
    };
    let first = on_dev1
        .iter()
        .min_by_key(|r| r["started_ms"].as_u64().unwrap())
        .unwrap();
    assert_eq!(
        names(first),
        [
            ("check".to_string(), Some(1)),
            ("restart".to_string(), Some(0)),
            ("recheck".to_string(), Some(0)),
            ("shot".to_string(), Some(0))
        ],
        "{first}"
    );
    assert!(
        on_dev1.iter().any(|r| names(r)
            == [
                ("check".to_string(), Some(0)),
                ("shot".to_string(), Some(0))
            ]),
        "later attempts pass the check at once: {on_dev1:?}"
    );
}

#[test]
fn every_log_line_about_a_task_names_its_session_node_device_task_and_attempt() {
    let c = TestCluster::master_and_workers(bins!(), 1, 2).unwrap();
    assert_eq!(add(&c, "phone.toml", &recipe(true)), 1);
    // Failures, turn-aways, retries, stale results: every kind of task line.
    let id = c
        .submit(
            "logged",
            "name = \"logged\"\nframes = { start = 0, end = 8 }\nchunk_frames = 1\nid_chunk_size = 10\nmax_attempts = 2\nbackoff_ms = 10\nworkflow = \"phone\"\n",
        )
        .unwrap();
    c.wait_done(&id, Duration::from_secs(60)).unwrap();
    let mut about_tasks = 0;
    for node in &c.nodes {
        for r in node.log_records() {
            let f = &r["fields"];
            if f.get("task").is_none() {
                continue;
            }
            about_tasks += 1;
            for k in ["session", "node_id", "device_id", "attempt"] {
                assert!(
                    f.get(k).is_some(),
                    "`{k}` missing from a line about a task: {r}"
                );
            }
        }
    }
    assert!(about_tasks > 10, "{about_tasks} lines about tasks");
}

#[test]
fn blocklists_and_turn_away_counts_survive_a_master_kill() {
    let mut c = TestCluster::master_and_workers(bins!(), 1, 2).unwrap();
    // `login` turns node-1-dev-1 away; `shot` takes 300 ms.
    let slow = recipe(false).replace(
        "echo {start} > shot_{start}.png",
        "sleep 0.3; echo {start} > shot_{start}.png",
    );
    assert_eq!(add(&c, "slow.toml", &slow), 1);
    let id = c
        .submit(
            "survives",
            "name = \"survives\"\nframes = { start = 0, end = 20 }\nchunk_frames = 1\nid_chunk_size = 10\nmax_attempts = 1\nblocklist_after = 1\nworkflow = \"phone\"\n",
        )
        .unwrap();
    let before = c
        .wait_for_manifest(
            &id,
            "the stuck device blocklisted",
            Duration::from_secs(30),
            |m| m["blocklisted"].as_array().is_some_and(|b| !b.is_empty()),
        )
        .unwrap();
    let away_before = before["turned_away"]["node-1/node-1-dev-1"]
        .as_u64()
        .unwrap();
    assert_eq!(before["state"], "running", "the kill comes mid-session");
    c.nodes[0].kill9();
    c.restart(0).unwrap();
    c.wait_all_healthy(1).unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 20), 20);
    assert_eq!(
        m["blocklisted"], before["blocklisted"],
        "replayed as recorded"
    );
    assert!(m["turned_away"]["node-1/node-1-dev-1"].as_u64().unwrap() >= away_before);
    assert!(
        m["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["device"] != "node-1-dev-1"),
        "the blocklisted device got the session's work after the restart: {m}"
    );
    assert!(m["failed"].as_array().unwrap().is_empty(), "{m}");
}
