//! Sessions on real `orch-node` processes: exactly-once manifests through
//! worker kills, hangs and partitions; device discipline; requirements; bad
//! session files and misbehaving commands.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use orch_tests::{
    all_healthy, assert_exactly_once, assert_ids_disjoint, bins, free_port, max_overlap, rss_bytes,
    NodeSpec, TestCluster, THREE,
};
use serde_json::Value;

fn frames(v: &Value) -> (u64, u64) {
    (v["start"].as_u64().unwrap(), v["end"].as_u64().unwrap())
}

#[test]
fn two_hundred_thousand_noop_frames_on_three_nodes_exactly_once() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let id = c
        .submit(
            "big",
            "name = \"big\"\nframes = { start = 0, end = 200000 }\nchunk_frames = 100\nid_chunk_size = 1000\n[executor]\nkind = \"builtin:noop\"\n",
        )
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(120)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 200_000), 200_000);
    assert_ids_disjoint(&m);
    assert_eq!(m["ranges"].as_array().unwrap().len(), 2000);
    let nodes: BTreeSet<&str> = m["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "work spread over every node: {nodes:?}");
    // The manifest file on the master's data_dir is the same document, on
    // disk as soon as the session shows as ended.
    let on_disk = c.manifest_file("node-0", &id).unwrap();
    assert_eq!(on_disk["ranges"], m["ranges"]);
}

/// A command that writes one file per frame, logs every frame it runs to a
/// shared file, and reports progress after each frame.
fn frame_script(dir: &std::path::Path, ms_per_frame: u32) -> std::path::PathBuf {
    let script = dir.join("frames.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\nset -e\nlog=\"$3\"\nfor ((f=$1; f<$2; f++)); do\n  sleep {}\n  echo \"frame $f\" > \".f$f.tmp\"\n  mv \".f$f.tmp\" \"frame_$f.txt\"\n  echo \"$f\" >> \"$log\"\n  echo \"ORCH_PROGRESS $((f-$1+1))\"\ndone\n",
            f64::from(ms_per_frame) / 1000.0
        ),
    )
    .unwrap();
    script
}

fn command_session(
    name: &str,
    script: &std::path::Path,
    log: &std::path::Path,
    n: u64,
    chunk: u64,
) -> String {
    format!(
        "name = \"{name}\"\nframes = {{ start = 0, end = {n} }}\nchunk_frames = {chunk}\nid_chunk_size = 100\nbackoff_ms = 50\n[executor]\nkind = \"command\"\nargv = [\"bash\", \"{}\", \"{{start}}\", \"{{end}}\", \"{}\"]\n",
        script.display(),
        log.display()
    )
}

fn frame_counts(log: &std::path::Path) -> BTreeMap<u64, u32> {
    let mut counts = BTreeMap::new();
    for l in std::fs::read_to_string(log).unwrap_or_default().lines() {
        if let Ok(f) = l.trim().parse::<u64>() {
            *counts.entry(f).or_insert(0) += 1;
        }
    }
    counts
}

fn files_under(dir: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn kill_9_of_a_worker_mid_session_replays_only_unreported_frames() {
    let mut c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let script = frame_script(c.dir.path(), 20);
    let log = c.dir.path().join("frames.log");
    let id = c
        .submit(
            "failover",
            &command_session("failover", &script, &log, 600, 20),
        )
        .unwrap();
    c.wait_session(&id, "half the frames done", Duration::from_secs(60), |v| {
        v["frames_done"].as_u64().unwrap() >= 300
    })
    .unwrap();
    c.node("node-2").kill9();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 600), 600);
    assert_ids_disjoint(&m);
    let replay = m["replay"].as_array().unwrap();
    assert!(!replay.is_empty(), "the dead worker's ranges were replayed");
    for r in replay {
        assert_eq!(r["node"], "node-2");
        assert_eq!(r["reason"], "node_down");
        assert_eq!(
            r["new_attempt"].as_u64(),
            r["old_attempt"].as_u64().map(|a| a + 1)
        );
    }
    // A frame ran twice only if the dead worker ran it after its last report:
    // such frames lie in a replayed range. Frames it had reported never ran again.
    let replayed: Vec<(u64, u64)> = replay.iter().map(|r| frames(&r["frames"])).collect();
    for (f, n) in frame_counts(&log) {
        if n > 1 {
            assert!(
                replayed.iter().any(|(s, e)| (*s..*e).contains(&f)),
                "frame {f} ran {n} times outside every replayed range"
            );
        }
    }
    // Every produced frame's file is in its attempt's folder and listed with its checksum.
    for r in m["ranges"].as_array().unwrap() {
        let (s, e) = frames(&r["frames"]);
        let outputs: BTreeSet<String> = r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["path"].as_str().unwrap().to_string())
            .collect();
        for f in s..e {
            assert!(
                outputs.contains(&format!("frame_{f}.txt")),
                "frame {f} listed in the manifest"
            );
        }
    }
    // The dead worker comes back: the partial outputs of its lost attempts go
    // to quarantine, the reported ones stay.
    let i = c
        .nodes
        .iter()
        .position(|n| n.spec.name == "node-2")
        .unwrap();
    c.restart(i).unwrap();
    let data = c.dir.path().join("node-2/data");
    for r in replay {
        let task = r["task"].as_u64().unwrap();
        let old = r["old_attempt"].as_u64().unwrap();
        let device = r["device"].as_str().unwrap();
        let rel = format!("{id}/node-2/{device}/{task}-a{old}");
        let kept: BTreeSet<String> = m["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["task"].as_u64() == Some(task) && x["attempt"].as_u64() == Some(old))
            .flat_map(|x| {
                x["outputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["path"].as_str().unwrap().to_string())
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let left = files_under(&data.join("out").join(&rel));
            if left == kept {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{rel}: expected only {kept:?} left in out/, found {left:?}\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let quarantined = files_under(&data.join("quarantine").join(&rel));
        assert!(quarantined.is_disjoint(&kept));
        let (s, e) = frames(&r["frames"]);
        for q in &quarantined {
            let f: u64 = q
                .trim_start_matches("frame_")
                .trim_end_matches(".txt")
                .parse()
                .unwrap();
            assert!(
                (s..e).contains(&f),
                "quarantined {q} belongs to the replayed range [{s}, {e})"
            );
        }
    }
}

#[test]
fn a_stopped_worker_s_late_results_are_rejected_as_stale() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let id = c
        .submit(
            "stop",
            "name = \"stop\"\nframes = { start = 0, end = 600 }\nchunk_frames = 10\nid_chunk_size = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 20\n",
        )
        .unwrap();
    c.wait_session(&id, "some frames done", Duration::from_secs(30), |v| {
        v["frames_done"].as_u64().unwrap() >= 100
    })
    .unwrap();
    c.nodes[1].sigstop();
    std::thread::sleep(Duration::from_secs(10));
    c.nodes[1].sigcont();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    c.wait_session(
        &id,
        "the stopped worker's late reports rejected as stale",
        Duration::from_secs(10),
        |v| v["stale_rejected"].as_u64().unwrap() >= 1,
    )
    .unwrap();
    assert!(
        c.nodes[0]
            .metric("orch_tasks_rejected_stale_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 600), 600);
    assert_ids_disjoint(&m);
    let replay = m["replay"].as_array().unwrap();
    assert!(
        replay
            .iter()
            .all(|r| r["node"] == "node-1" && r["reason"] == "heartbeat_timeout"),
        "{replay:?}"
    );
}

#[test]
fn devices_run_one_task_at_a_time_and_nodes_respect_max_concurrency() {
    let mut c = TestCluster::new(bins!());
    let mut spec = NodeSpec::new("node-0").master();
    spec.devices = 100;
    spec.max_concurrency = 20;
    c.add(spec).unwrap();
    c.wait_for("the master's worker", Duration::from_secs(10), |ws| {
        all_healthy(ws, &["node-0"])
    })
    .unwrap();
    let id = c
        .submit(
            "discipline",
            "name = \"discipline\"\nframes = { start = 0, end = 1000 }\nchunk_frames = 1\nid_chunk_size = 1\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 15\n",
        )
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 1000), 1000);
    for (device, n) in max_overlap(&m, "device") {
        assert_eq!(n, 1, "device {device} ran {n} tasks at once");
    }
    let per_node = max_overlap(&m, "node");
    assert!(
        per_node["node-0"] <= 20,
        "node-0 ran {} tasks at once",
        per_node["node-0"]
    );
    assert!(
        per_node["node-0"] >= 10,
        "slots were used in parallel: {}",
        per_node["node-0"]
    );
    let devices: BTreeSet<&str> = m["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices.len(), 100, "every device got work");
}

#[test]
fn requirements_are_hard_and_an_unservable_session_says_why() {
    let mut c = TestCluster::new(bins!());
    let mport = free_port();
    let mut m = NodeSpec::new("node-0").master();
    m.devices_toml = Some("[[device]]\ncount = 3\nid_prefix = \"cpu-\"\n".into());
    c.add_with_port(m, mport).unwrap();
    let mut g = NodeSpec::new("node-1").peer(format!("127.0.0.1:{mport}"));
    g.devices_toml = Some(
        "[[device]]\nid = \"gpu0\"\nhandle = \"cuda:0\"\ncapabilities = { gpu = true }\n[[device]]\nid = \"cpu-x\"\n".into(),
    );
    c.add(g).unwrap();
    c.wait_for("2 workers", Duration::from_secs(10), |ws| {
        all_healthy(ws, &["node-0", "node-1"])
    })
    .unwrap();
    let tpu = c
        .submit("tpu", "name = \"tpu\"\nframes = { start = 0, end = 10 }\nchunk_frames = 5\n[require]\ntpu = true\n[executor]\nkind = \"builtin:noop\"\n")
        .unwrap();
    let gpu = c
        .submit("gpu", "name = \"gpu\"\nframes = { start = 0, end = 200 }\nchunk_frames = 5\n[require]\ngpu = true\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 1\n")
        .unwrap();
    let v = c.wait_done(&gpu, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&gpu).unwrap();
    assert_exactly_once(&m, 0, 200);
    for r in m["ranges"].as_array().unwrap() {
        assert_eq!(
            (r["node"].as_str(), r["device"].as_str()),
            (Some("node-1"), Some("gpu0"))
        );
    }
    let v = c.session(&tpu).unwrap();
    assert_eq!(v["state"], "running");
    assert_eq!(v["waiting"], "no healthy device matches `tpu = true`");
    assert_eq!(v["frames_done"], 0);
    let out = c.orchctl(0, &["cancel", &tpu]);
    assert!(out.status.success());
    assert_eq!(c.session(&tpu).unwrap()["state"], "cancelled");
}

#[test]
fn bad_sessions_and_misbehaving_commands_fail_clearly_and_others_carry_on() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let dir = c.dir.path();
    // Bad session files: exit 2 and the key, nothing submitted.
    let bad = dir.join("bad.toml");
    for (text, needle) in [
        ("name = \"b\"\nframes = { start = 0, end = 10 }\nchunk_frames = 0\n[executor]\nkind = \"builtin:noop\"\n", "`chunk_frames`"),
        ("name = \"b\"\nframes = { start = 5, end = 5 }\nchunk_frames = 1\n[executor]\nkind = \"builtin:noop\"\n", "`end` > `start`"),
        ("name = \"b\"\nframes = { start = 0, end = 10 }\nchunk_frames = 1\n[executor]\nkind = \"gpu:magic\"\n", "unknown executor"),
        ("name = \"b\"\nframes = { start = 0, end = 10 }\nchunk_frames = 1\n[require]\nram = 1.5\n[executor]\nkind = \"builtin:noop\"\n", "unknown capability type"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = c.orchctl(0, &["submit", bad.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle) && err.contains("bad.toml"), "{err}");
    }
    // The API refuses the same with 400 (bad input from the network).
    // A failing command retries max_attempts times, then its ranges fail with the error.
    let fails = c
        .submit("fails", "name = \"fails\"\nframes = { start = 0, end = 4 }\nchunk_frames = 2\nmax_attempts = 2\nbackoff_ms = 50\n[executor]\nkind = \"command\"\nargv = [\"bash\", \"-c\", \"echo disk on fire >&2; exit 3\"]\n")
        .unwrap();
    // A hanging command is killed at its timeout.
    let hangs = c
        .submit("hangs", "name = \"hangs\"\nframes = { start = 0, end = 1 }\nchunk_frames = 1\nmax_attempts = 1\ntimeout_ms = 500\n[executor]\nkind = \"command\"\nargv = [\"sleep\", \"30\"]\n")
        .unwrap();
    // A command that plants a link out of its output folder fails.
    let escapes = c
        .submit("escapes", "name = \"escapes\"\nframes = { start = 0, end = 1 }\nchunk_frames = 1\nmax_attempts = 1\n[executor]\nkind = \"command\"\nargv = [\"ln\", \"-s\", \"/etc/passwd\", \"stolen\"]\n")
        .unwrap();
    // Meanwhile a good session completes.
    let good = c
        .submit("good", "name = \"good\"\nframes = { start = 0, end = 1000 }\nchunk_frames = 10\n[executor]\nkind = \"builtin:noop\"\n")
        .unwrap();
    assert_eq!(
        c.wait_done(&good, Duration::from_secs(30)).unwrap()["state"],
        "completed"
    );

    let v = c.wait_done(&fails, Duration::from_secs(30)).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["retries"], 2, "one retry per range");
    let m = c.manifest(&fails).unwrap();
    assert_exactly_once(&m, 0, 4);
    for f in m["failed"].as_array().unwrap() {
        assert_eq!(f["attempts"], 2);
        let e = f["error"].as_str().unwrap();
        assert!(
            e.contains("exited with code 3") && e.contains("disk on fire"),
            "{e}"
        );
    }
    let v = c.wait_done(&hangs, Duration::from_secs(30)).unwrap();
    assert_eq!(v["state"], "failed");
    let e = c.manifest(&hangs).unwrap()["failed"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(e.contains("timed out after 500 ms"), "{e}");
    let v = c.wait_done(&escapes, Duration::from_secs(30)).unwrap();
    assert_eq!(v["state"], "failed");
    let e = c.manifest(&escapes).unwrap()["failed"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(e.contains("symbolic link"), "{e}");
    // The master still serves.
    let out = c.orchctl(0, &["status"]);
    assert!(out.status.success());
    // Unknown sessions are exit 3.
    let out = c.orchctl(0, &["manifest", "no-such-session"]);
    assert_eq!(out.status.code(), Some(3));
}

/// POST a session body with headers through node 0's admin port; (status, body).
fn post(c: &TestCluster, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(c.nodes[0].admin_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split(' ').nth(1).unwrap().parse().unwrap();
    let json = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    (code, serde_json::from_str(json).unwrap_or(Value::Null))
}

#[test]
fn a_submission_sent_again_with_its_idempotency_key_makes_one_session() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let body = "name = \"once\"\nframes = { start = 0, end = 40 }\nchunk_frames = 4\n[executor]\nkind = \"builtin:noop\"\n";
    let (code, first) = post(&c, body, &[("Idempotency-Key", "retry-me-1")]);
    assert_eq!(code, 200, "{first}");
    let (code, again) = post(&c, body, &[("Idempotency-Key", "retry-me-1")]);
    assert_eq!(code, 200, "{again}");
    assert_eq!(first["id"], again["id"], "the same session");
    let (_, other) = post(&c, body, &[("Idempotency-Key", "retry-me-2")]);
    assert_ne!(first["id"], other["id"], "another key, another session");
    let (_, unkeyed) = post(&c, body, &[]);
    assert_ne!(first["id"], unkeyed["id"]);
    let list: Vec<Value> =
        serde_json::from_slice(&c.orchctl(0, &["sessions", "--json"]).stdout).unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let (code, bad) = post(&c, body, &[("Idempotency-Key", &"k".repeat(200))]);
    assert_eq!(code, 400, "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("Idempotency-Key"),
        "{bad}"
    );
    // After a master restart, the key still names its session.
    let mut c = c;
    c.nodes[0].kill9();
    c.restart(0).unwrap();
    c.wait_for("the workers are back", Duration::from_secs(20), |ws| {
        all_healthy(ws, &THREE)
    })
    .unwrap();
    let (_, after) = post(&c, body, &[("Idempotency-Key", "retry-me-1")]);
    assert_eq!(first["id"], after["id"]);
}

#[test]
fn submitting_ten_million_tasks_costs_kilobytes_and_the_master_keeps_answering() {
    // No worker can serve it: the session stays submitted, its tasks untouched.
    let mut c = TestCluster::new(bins!());
    c.add(NodeSpec::new("node-0").master().heartbeat(500, 3))
        .unwrap();
    c.wait_for("the master's own worker", Duration::from_secs(10), |ws| {
        all_healthy(ws, &["node-0"])
    })
    .unwrap();
    let pid = c.nodes[0].pid().unwrap();
    let before = rss_bytes(pid).unwrap();
    let started = std::time::Instant::now();
    let id = c
        .submit(
            "huge",
            "name = \"huge\"\nframes = { start = 0, end = 10000000 }\nchunk_frames = 1\n[require]\ntpu = true\n[executor]\nkind = \"builtin:noop\"\n",
        )
        .unwrap();
    let took = started.elapsed();
    let v = c.session(&id).unwrap();
    assert_eq!(v["tasks_total"], 10_000_000);
    assert_eq!(v["tasks_pending"], 10_000_000);
    // Heartbeats and admin requests go on.
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let out = c.orchctl(0, &["status", "--json"]);
        assert!(out.status.success());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "status took {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ws = c.workers().unwrap();
    assert!(
        all_healthy(&ws, &["node-0"]) && ws[0]["registrations"] == 1,
        "{ws:?}"
    );
    let grown = rss_bytes(pid).unwrap().saturating_sub(before);
    eprintln!("submit took {took:?}; RSS grew by {} KiB", grown >> 10);
    assert!(grown < 10 << 20, "RSS grew by {} MB", grown >> 20);
}

/// The Session actor of a session fails by panic (test hook, at `point`):
/// the master starts it again from the ledger, the session completes once,
/// its manifest reaches the disk, and the restart is counted.
fn a_session_actor_that_panics_is_restarted(point: &str) {
    let mut c = TestCluster::new(bins!());
    let master_port = free_port();
    let mut m = NodeSpec::new("node-0")
        .master()
        .env("ORCH_TEST_PANIC_SESSION", point);
    m.devices = 3;
    c.add_with_port(m, master_port).unwrap();
    for i in 1..=2 {
        c.add(NodeSpec::new(&format!("node-{i}")).peer(format!("127.0.0.1:{master_port}")))
            .unwrap();
    }
    c.wait_for("3 healthy workers", Duration::from_secs(10), |ws| {
        all_healthy(ws, &THREE)
    })
    .unwrap();
    let id = c
        .submit("hooked", &orch_tests::sleep_session("hooked", 120, 5, 10))
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["frames_done"], 120, "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 120), 120);
    assert_ids_disjoint(&m);
    let sessions = c.orchctl(0, &["sessions", "--json"]);
    let all: Value = serde_json::from_slice(&sessions.stdout).unwrap();
    let named: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == "hooked")
        .collect();
    assert_eq!(named.len(), 1, "one session, not two: {all}");
    // The manifest on disk is whole as soon as the session shows as ended,
    // though the first actor died.
    let on_disk = c.manifest_file("node-0", &id).unwrap();
    assert_eq!(on_disk["ranges"], m["ranges"]);
    let mut restarts = None;
    orch_tests::wait_until("the restart counted", Duration::from_secs(10), || {
        restarts = c.nodes[0].metric("orch_session_actor_restarts_total");
        restarts.is_some_and(|r| r >= 1.0)
    })
    .unwrap();
    let restarts = restarts.unwrap();
    assert_eq!(
        restarts, 1.0,
        "the hook fires once, the actor restarts once"
    );
}

#[test]
fn a_session_actor_that_panics_on_a_view_is_restarted_and_the_session_completes_once() {
    a_session_actor_that_panics_is_restarted("hooked");
}

#[test]
fn a_session_actor_that_panics_writing_the_manifest_is_restarted_and_the_manifest_written() {
    a_session_actor_that_panics_is_restarted("hooked@manifest");
}
