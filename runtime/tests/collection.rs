//! Output collection and per-attempt logs with real `orch-node` processes
//! (docs/collection.md, docs/logs.md): three nodes, outputs gathered into
//! the master's `sessions/{id}/output/`, verified by sha256; a worker
//! killed before its files were collected; a file corrupted on a worker's
//! disk; `orchctl fetch` and `orchctl logs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use orch_tests::{assert_exactly_once, sha256_hex, Bins, NodeSpec, TestCluster};
use serde_json::Value;

fn bins() -> Bins {
    Bins::or_from_env(
        env!("CARGO_BIN_EXE_orch-node"),
        env!("CARGO_BIN_EXE_orchctl"),
    )
}

/// 24 one-frame tasks, each writing `frame_NNNNN.txt` and a log line on
/// both streams; `sleep` seconds per task so that all nodes get some.
fn session(name: &str, sleep: &str) -> String {
    format!(
        "name = \"{name}\"\nframes = {{ start = 0, end = 24 }}\nchunk_frames = 1\nid_chunk_size = 10\n\
         [executor]\nkind = \"command\"\n\
         argv = [\"sh\", \"-c\", \"echo rendering {{start}}; echo warn {{start}} >&2; sleep {sleep}; printf 'frame %s on %s\\\\n' {{start}} $ORCH_NODE > $(printf frame_%05d.txt {{start}})\"]\n"
    )
}

/// Output name -> sha256, as the manifest's produced ranges list them.
fn listed(manifest: &Value) -> BTreeMap<String, String> {
    manifest["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["outputs"].as_array().unwrap().iter())
        .map(|o| {
            (
                o["path"].as_str().unwrap().to_string(),
                o["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The files of `dir` (not hidden) with their sha256.
fn folder(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                sha256_hex(&std::fs::read(e.path()).unwrap()),
            )
        })
        .collect()
}

fn settled(m: &Value) -> bool {
    m["collection"]["settled"] == true
}

#[test]
fn three_nodes_gather_every_frame_once_into_the_masters_folder_and_fetch_copies_it() {
    let c = TestCluster::three_healthy(bins(), 300).unwrap();
    let id = c.submit("spread", &session("spread", "0.2")).unwrap();
    let m = c
        .wait_for_manifest(
            &id,
            "completed and every output collected",
            Duration::from_secs(60),
            |m| m["state"] == "completed" && settled(m),
        )
        .unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 24), 24);
    let nodes: std::collections::BTreeSet<&str> = m["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "the session ran on all three nodes: {nodes:?}"
    );
    let want = listed(&m);
    assert_eq!(want.len(), 24);
    let out = c
        .dir
        .path()
        .join("node-0/data/sessions")
        .join(&id)
        .join("output");
    assert_eq!(
        folder(&out),
        want,
        "the master's folder holds exactly the frames, byte-identical"
    );
    assert_eq!(m["collection"]["collected"], 24, "{}", m["collection"]);
    // The same folder on another machine.
    let elsewhere = tempfile::tempdir().unwrap();
    let got = c.orchctl(1, &["fetch", &id, elsewhere.path().to_str().unwrap()]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(folder(elsewhere.path()), want);
    // Each attempt's log, read through any node, from the worker that ran it.
    let r = m["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "node-2")
        .unwrap();
    let task = r["task"].as_u64().unwrap().to_string();
    let log = c.orchctl(0, &["logs", &id, &task]);
    assert!(
        log.status.success(),
        "{}",
        String::from_utf8_lossy(&log.stderr)
    );
    let text = String::from_utf8_lossy(&log.stdout);
    let start = r["frames"]["start"].as_u64().unwrap();
    assert!(
        text.contains(&format!(" out rendering {start}\n")),
        "{text}"
    );
    assert!(text.contains(&format!(" err warn {start}\n")), "{text}");
    assert!(text.contains(" orch attempt completed"), "{text}");
    // A task that never ran there has no log: one clear line, exit 3.
    let none = c.orchctl(0, &["logs", &id, "999"]);
    assert_eq!(
        none.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
}

#[test]
fn a_worker_gone_before_collection_is_collected_when_it_returns_and_a_corrupted_file_is_not_merged()
{
    let mut c = TestCluster::three_healthy(bins(), 300).unwrap();
    // node-1's data plane holds every transfer back: its files stay uncollected.
    let hold = c
        .dir
        .path()
        .join("node-1/data")
        .join("test-hold-data-plane");
    std::fs::write(&hold, "").unwrap();
    let id = c.submit("gone", &session("gone", "0.2")).unwrap();
    let m = c
        .wait_for_manifest(&id, "completed", Duration::from_secs(60), |m| {
            m["state"] == "completed"
        })
        .unwrap();
    let on1: Vec<&Value> = m["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["node"] == "node-1")
        .collect();
    assert!(
        on1.len() >= 2,
        "node-1 produced at least two ranges: {}",
        on1.len()
    );
    c.node("node-1").kill9();
    // One of its files changes on its disk after it was produced.
    let victim = on1[0];
    let name = victim["outputs"][0]["path"].as_str().unwrap().to_string();
    let file = c
        .dir
        .path()
        .join("node-1/data")
        .join(victim["out_dir"].as_str().unwrap())
        .join(&name);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();
    let m = c
        .wait_for_manifest(
            &id,
            "node-1's outputs listed uncollected",
            Duration::from_secs(30),
            |m| {
                m["collection"]["uncollected"].as_u64().unwrap_or(0)
                    + m["collection"]["pending"].as_u64().unwrap_or(0)
                    >= 1
                    && !settled(m)
            },
        )
        .unwrap();
    assert!(!settled(&m));
    std::fs::remove_file(&hold).unwrap();
    c.restart(1).unwrap();
    let m = c
        .wait_for_manifest(
            &id,
            "every output collected or failed",
            Duration::from_secs(90),
            settled,
        )
        .unwrap();
    let files = m["collection"]["files"].as_array().unwrap();
    let bad: Vec<&Value> = files.iter().filter(|f| f["state"] == "failed").collect();
    assert_eq!(bad.len(), 1, "{}", m["collection"]);
    assert_eq!(bad[0]["name"], name.as_str());
    assert!(
        bad[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not match the manifest"),
        "{}",
        bad[0]
    );
    // The others of node-1 were collected after it came back, and say so.
    let late: Vec<&Value> = files
        .iter()
        .filter(|f| f["node"] == "node-1" && f["state"] == "collected")
        .collect();
    assert_eq!(late.len(), on1.len() - 1, "{}", m["collection"]);
    // Those tried while it was held or down say what delayed them (one
    // first tried after it came back has nothing to say).
    assert!(
        late.iter().any(|f| f["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("collected after:"))),
        "{}",
        m["collection"]
    );
    // The folder: every frame but the corrupted one, each matching.
    let out = c
        .dir
        .path()
        .join("node-0/data/sessions")
        .join(&id)
        .join("output");
    let mut want = listed(&m);
    want.remove(&name);
    assert_eq!(folder(&out), want);
    // orchctl fetch says what is missing and exits non-zero.
    let elsewhere = tempfile::tempdir().unwrap();
    let got = c.orchctl(0, &["fetch", &id, elsewhere.path().to_str().unwrap()]);
    assert_eq!(
        got.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(String::from_utf8_lossy(&got.stdout).contains(&name));
    assert_eq!(folder(elsewhere.path()), want);
}

#[test]
fn logs_follow_a_running_attempt_to_its_end() {
    let c = TestCluster::three_healthy(bins(), 300).unwrap();
    let toml = "name = \"follow\"\nframes = { start = 0, end = 1 }\nchunk_frames = 1\nid_chunk_size = 10\n\
        [executor]\nkind = \"command\"\n\
        argv = [\"sh\", \"-c\", \"for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.4; done; echo done > out.txt\"]\n";
    let id = c.submit("follow", toml).unwrap();
    c.wait_session(&id, "its task running", Duration::from_secs(20), |v| {
        v["tasks_running"] == 1
    })
    .unwrap();
    // Follows from while it runs: every line, then it returns at the end.
    let out = c.orchctl(0, &["logs", &id, "0", "-f"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let ticks: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(" out ").map(|(_, t)| t))
        .collect();
    assert_eq!(
        ticks,
        ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5", "tick 6"],
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .unwrap()
            .contains(" orch attempt completed"),
        "{text}"
    );
    let v = c.session(&id).unwrap();
    assert_eq!(
        v["state"], "completed",
        "the log ended with the attempt: {v}"
    );
}

/// A raw HTTP/1.1 GET to `addr` with `headers`; the status line.
fn raw_get(addr: &str, path: &str, headers: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.lines().next().unwrap_or("").to_string()
}

#[test]
fn the_data_plane_refuses_requests_without_the_cluster_token_and_paths_outside_its_folders() {
    let c = TestCluster::three_healthy(bins(), 300).unwrap();
    // Nothing is collected for a session that says `collect = "none"`.
    let toml = session("none", "0").replace(
        "chunk_frames = 1\n",
        "chunk_frames = 1\ncollect = \"none\"\n",
    );
    let id = c.submit("none", &toml).unwrap();
    let m = c
        .wait_for_manifest(&id, "completed", Duration::from_secs(60), |m| {
            m["state"] == "completed"
        })
        .unwrap();
    assert_eq!(m["collect"], "");
    assert!(m.get("collection").is_none(), "{m}");
    assert!(!c
        .dir
        .path()
        .join("node-0/data/sessions")
        .join(&id)
        .join("output")
        .exists());
    let w = c.worker("node-1").unwrap();
    let addr = w["data"]
        .as_str()
        .expect("a data plane address in the worker view")
        .to_string();
    let r = &m["ranges"][0];
    let file = format!(
        "/v1/files/{}/{}",
        r["out_dir"].as_str().unwrap(),
        r["outputs"][0]["path"].as_str().unwrap()
    );
    for headers in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Basic eDp5\r\n",
    ] {
        let status = raw_get(&addr, &file, headers);
        assert!(status.contains(" 401 "), "{headers:?}: {status}");
    }
    let node1 = c.nodes.iter().find(|n| n.spec.name == "node-1").unwrap();
    let rejected = node1
        .metric("orch_data_plane_rejected_total{reason=\"no_token\"}")
        .unwrap_or(0.0)
        + node1
            .metric("orch_data_plane_rejected_total{reason=\"wrong_token\"}")
            .unwrap_or(0.0);
    assert!(rejected >= 3.0, "rejections counted: {rejected}");
    // With the token (derived from the secret), paths outside `out/` are refused.
    let token = orch_runtime::data_plane::token(&node1.spec.secret);
    let auth = format!("Authorization: Bearer {token}\r\n");
    for bad in [
        "/v1/files/out/../cluster.toml",
        "/v1/files/cluster.toml",
        "/v1/files/out/%2e%2e/cluster.toml",
    ] {
        let status = raw_get(&addr, bad, &auth);
        assert!(
            status.contains(" 400 ") || status.contains(" 404 "),
            "{bad}: {status}"
        );
    }
}

/// Every collected file is the one of the range the manifest lists as
/// produced for its task: its attempt and node.
fn collected_from_produced_attempts(m: &Value) {
    let produced: BTreeMap<u64, (u64, String)> = m["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["task"].as_u64().unwrap(),
                (
                    r["attempt"].as_u64().unwrap(),
                    r["node"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect();
    for f in m["collection"]["files"].as_array().unwrap() {
        let (attempt, node) = &produced[&f["task"].as_u64().unwrap()];
        assert_eq!(f["attempt"].as_u64().unwrap(), *attempt, "{f}");
        assert_eq!(f["node"].as_str().unwrap(), node, "{f}");
    }
}

/// Every entry of `dir`, hidden ones too (a transfer's leftovers).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_worker_killed_mid_session_leaves_one_file_per_frame_and_none_from_its_lost_attempts() {
    let mut c = TestCluster::three_healthy(bins(), 300).unwrap();
    let id = c.submit("midkill", &session("midkill", "0.6")).unwrap();
    c.wait_session(
        &id,
        "a few frames done, node-1 busy",
        Duration::from_secs(30),
        |v| v["frames_done"].as_u64().unwrap() >= 3,
    )
    .unwrap();
    c.wait_for("node-1 running a task", Duration::from_secs(20), |ws| {
        ws.iter()
            .any(|w| w["node"] == "node-1" && w["active_tasks"].as_u64().unwrap_or(0) > 0)
    })
    .unwrap();
    c.node("node-1").kill9();
    let m = c
        .wait_for_manifest(
            &id,
            "completed without node-1",
            Duration::from_secs(60),
            |m| m["state"] == "completed",
        )
        .unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 24), 24);
    let lost: Vec<&Value> = m["replay"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["node"] == "node-1")
        .collect();
    assert!(
        !lost.is_empty(),
        "node-1's running attempts were lost and replayed: {}",
        m["replay"]
    );
    // What node-1 produced before it died waits for it; it comes back.
    c.restart(1).unwrap();
    let m = c
        .wait_for_manifest(
            &id,
            "every output collected",
            Duration::from_secs(60),
            settled,
        )
        .unwrap();
    assert_eq!(m["collection"]["collected"], 24, "{}", m["collection"]);
    collected_from_produced_attempts(&m);
    let out = c
        .dir
        .path()
        .join("node-0/data/sessions")
        .join(&id)
        .join("output");
    assert_eq!(
        folder(&out),
        listed(&m),
        "one file per frame, each the produced one"
    );
    assert_eq!(entries(&out).len(), 24, "nothing else: {:?}", entries(&out));
}

#[test]
fn a_collector_restarted_mid_collection_finishes_it_without_duplicates() {
    let mut c = TestCluster::three_healthy(bins(), 300).unwrap();
    // node-2's files wait while the collector goes down and comes back.
    let hold = c
        .dir
        .path()
        .join("node-2/data")
        .join("test-hold-data-plane");
    std::fs::write(&hold, "").unwrap();
    let id = c.submit("restart", &session("restart", "0.2")).unwrap();
    let m = c
        .wait_for_manifest(
            &id,
            "completed, the others' files collected, node-2's not",
            Duration::from_secs(60),
            |m| {
                m["state"] == "completed"
                    && m["collection"]["collected"].as_u64().unwrap_or(0) >= 1
                    && !settled(m)
            },
        )
        .unwrap();
    let before = m["collection"]["collected"].as_u64().unwrap();
    assert!(before < 24);
    c.node("node-0").kill9();
    std::fs::remove_file(&hold).unwrap();
    c.restart(0).unwrap();
    c.wait_all_healthy(2).unwrap();
    let m = c
        .wait_for_manifest(
            &id,
            "every output collected after the restart",
            Duration::from_secs(90),
            settled,
        )
        .unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 24), 24);
    assert_eq!(m["collection"]["collected"], 24, "{}", m["collection"]);
    collected_from_produced_attempts(&m);
    let out = c
        .dir
        .path()
        .join("node-0/data/sessions")
        .join(&id)
        .join("output");
    assert_eq!(folder(&out), listed(&m));
    assert_eq!(
        entries(&out).len(),
        24,
        "no duplicates or leftovers: {:?}",
        entries(&out)
    );
}

#[test]
fn a_task_printing_a_gibibyte_leaves_a_log_no_larger_than_its_cap() {
    let mut c = TestCluster::new(bins());
    let mut m = NodeSpec::new("node-0").master();
    m.devices = 1;
    c.add(m).unwrap();
    c.wait_all_healthy(0).unwrap();
    let toml = "name = \"loud\"\nframes = { start = 0, end = 1 }\nchunk_frames = 1\nid_chunk_size = 10\ntimeout_ms = 600000\n\
         [executor]\nkind = \"command\"\n\
         argv = [\"sh\", \"-c\", \"echo first line; python3 -c 'import sys; l = b\\\"x\\\" * 4095 + b\\\"\\\\n\\\"; w = sys.stdout.buffer.write; [w(l) for _ in range(262144)]'; echo last line >&2\"]\n";
    let id = c.submit("loud", toml).unwrap();
    let m = c
        // A debug build's worker handles about 12 MB/s of output; under a
        // loaded CI machine the gibibyte takes minutes.
        .wait_for_manifest(&id, "completed", Duration::from_secs(280), |m| {
            m["state"] == "completed"
        })
        .unwrap();
    let task = m["ranges"][0]["task"].as_u64().unwrap();
    let log = c
        .dir
        .path()
        .join("node-0/data/logs")
        .join(&id)
        .join(format!("{task}-a1.log"));
    let size = std::fs::metadata(&log).unwrap().len();
    // The default cap (16 MiB), give or take the note and one cut line.
    let cap = 16 * 1024 * 1024;
    assert!(size <= cap + 8 * 1024, "1 GiB printed, {size} bytes kept");
    assert!(size >= cap / 2, "head and tail kept: {size}");
    // orchctl shows the whole (capped) log: its head, the note, its tail.
    let out = c.orchctl(0, &["logs", &id, &task.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap();
    assert!(first.ends_with(" out first line"), "{first}");
    assert!(text.contains("bytes of output left out"));
    let last_line = text.lines().rev().find(|l| l.contains(" err ")).unwrap();
    assert!(last_line.ends_with(" err last line"), "{last_line}");
}
