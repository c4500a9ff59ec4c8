//! The event bus on real `orch-node` processes (docs/pipelines.md): a
//! run's events streamed over server-sent events on a worker's node,
//! resumed with `Last-Event-ID`, kept across a kill -9 of the master with
//! their ids; webhooks signed, delivered at least once through a receiver
//! down for 10 s and a master killed meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_tests::{bins, free_port, http_get, wait_until, NodeSpec, TestCluster};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn sync_pipeline() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/pipelines/sync.toml")
        .to_str()
        .unwrap()
        .to_string()
}

fn start_run(c: &TestCluster) -> String {
    let out = c.orchctl(0, &["pipeline", "run", &sync_pipeline(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["run"].as_str().unwrap().to_string()
}

fn events(addr: SocketAddr, query: &str) -> Vec<Value> {
    let (code, body) = http_get(addr, &format!("/v1/events?{query}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn wait_run(c: &TestCluster, run: &str) {
    wait_until(
        &format!("run {run} to end"),
        Duration::from_secs(60),
        || {
            let out = c.orchctl(0, &["pipeline", "show", run, "--json"]);
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v["state"] != "in_progress")
        },
    )
    .unwrap();
}

/// The first `n` events of an SSE stream of `path` with `Last-Event-ID: last`.
fn sse(addr: SocketAddr, path: &str, last: Option<u64>, n: usize) -> Vec<Value> {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let resume = last
        .map(|l| format!("Last-Event-ID: {l}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{resume}\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.expect("the stream sends within 30 s");
        if let Some(d) = line.strip_prefix("data: ") {
            got.push(serde_json::from_str::<Value>(d).unwrap());
            if got.len() == n {
                break;
            }
        }
    }
    got
}

#[test]
fn a_runs_events_stream_on_every_node_resume_with_last_event_id_and_keep_their_ids_across_a_master_kill(
) {
    let mut c = TestCluster::master_and_workers(bins!(), 1, 2).unwrap();
    // Followed on the worker's node, before the run starts.
    let worker_admin = c.nodes[1].admin_addr;
    let follower = std::thread::spawn(move || {
        sse(
            worker_admin,
            "/v1/events?type=pipeline.*,stage.completed",
            None,
            7,
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    let run = start_run(&c);
    let got = follower.join().unwrap();
    let kinds: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds[0], "pipeline.started", "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "stage.completed").count(),
        5,
        "{kinds:?}"
    );
    assert_eq!(kinds[6], "pipeline.completed", "{kinds:?}");
    assert!(got.iter().all(|e| e["correlation_id"] == run.as_str()));
    wait_run(&c, &run);
    // Every event on the master, ids 1, 2, 3, … with no gap.
    let all = events(c.nodes[0].admin_addr, "since=0");
    let ids: Vec<u64> = all.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    // The worker's node mirrored the same events.
    wait_until(
        "the worker's node to hold every event",
        Duration::from_secs(5),
        || events(worker_admin, "since=0").len() == all.len(),
    )
    .unwrap();
    // Filters: one correlation id, one type pattern.
    let of_run = events(c.nodes[0].admin_addr, &format!("correlation={run}"));
    assert!(of_run.len() >= 12 && of_run.iter().all(|e| e["correlation_id"] == run.as_str()));
    let sessions = events(c.nodes[0].admin_addr, "type=session.*");
    assert!(
        !sessions.is_empty()
            && sessions
                .iter()
                .all(|e| e["type"].as_str().unwrap().starts_with("session."))
    );
    // Resumed: the stream starts after the id given.
    let mid = ids[ids.len() / 2];
    let resumed = sse(c.nodes[0].admin_addr, "/v1/events", Some(mid), 3);
    assert_eq!(
        resumed
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [mid + 1, mid + 2, mid + 3]
    );
    // kill -9 of the master: its events stay, and new ones go on from there.
    let before = *ids.last().unwrap();
    c.nodes[0].kill9();
    c.restart(0).unwrap();
    c.wait_all_healthy(1).unwrap();
    // The same events up to `before` (the workers registering again add more).
    let kept = events(c.nodes[0].admin_addr, "since=0");
    assert_eq!(&kept[..all.len()], &all[..], "the events before the kill");
    assert!(kept[all.len()..]
        .iter()
        .all(|e| e["type"].as_str().unwrap().starts_with("worker.")));
    let run2 = start_run(&c);
    wait_run(&c, &run2);
    let after = events(c.nodes[0].admin_addr, &format!("correlation={run2}"));
    assert!(
        after.iter().all(|e| e["id"].as_u64().unwrap() > before),
        "ids went back: {after:?}"
    );
    // orchctl events: the same, as a table and as JSON lines.
    let out = c.orchctl(
        0,
        &[
            "events",
            "--correlation",
            &run2,
            "--type",
            "pipeline.*",
            "--json",
        ],
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "started and completed: {lines:?}");
    let (code, body) =
        http_get(c.nodes[0].admin_addr, "/v1/events?type=Not..A..Type", None).unwrap();
    assert_eq!(code, 400, "{body}");
}

/// What a receiver got: each request's headers and body.
type Got = Arc<Mutex<Vec<(BTreeMap<String, String>, Vec<u8>)>>>;

/// An HTTP receiver: every request's headers and body, answered 200.
struct Receiver {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(port: u16, got: Got) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                let Ok((mut s, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut headers = BTreeMap::new();
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    line.clear();
                    if r.read_line(&mut line).is_err() || line.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.trim().split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                g.lock().unwrap().push((headers, body));
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// HMAC-SHA256 (RFC 2104), written out here to check the node's.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let ih = Sha256::digest(&inner);
    let outer: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x5c)
        .chain(ih.iter().copied())
        .collect();
    Sha256::digest(&outer)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_webhook_gets_every_event_of_a_run_signed_at_least_once_through_a_receiver_down_10_s_and_a_master_kill(
) {
    let port = free_port();
    let got: Got = Arc::new(Mutex::new(Vec::new()));
    let mut c = TestCluster::new(bins!());
    let cport = free_port();
    let mut m = NodeSpec::new("node-0").master().heartbeat(300, 3);
    m.extra_toml = format!(
        "[[webhook]]\nname = \"ops\"\nurl = \"http://127.0.0.1:{port}/hook\"\nevents = [\"pipeline.*\", \"stage.*\"]\nsecret = \"hook-secret\"\n"
    );
    c.add_with_port(m, cport).unwrap();
    let mut w = NodeSpec::new("node-1")
        .peer(format!("127.0.0.1:{cport}"))
        .heartbeat(300, 3);
    w.devices = 2;
    c.add(w).unwrap();
    c.wait_all_healthy(1).unwrap();
    let mut receiver = Receiver::start(port, got.clone());
    let run1 = start_run(&c);
    wait_run(&c, &run1);
    let want = |c: &TestCluster, run: &str| -> BTreeSet<u64> {
        events(c.nodes[0].admin_addr, &format!("correlation={run}"))
            .iter()
            .filter(|e| {
                let t = e["type"].as_str().unwrap();
                t.starts_with("pipeline.") || t.starts_with("stage.")
            })
            .map(|e| e["id"].as_u64().unwrap())
            .collect()
    };
    let received = |got: &Got| -> BTreeSet<u64> {
        got.lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h["x-orch-event-id"].parse::<u64>().unwrap())
            .collect()
    };
    let w1 = want(&c, &run1);
    wait_until(
        "every event of the first run at the receiver",
        Duration::from_secs(20),
        || received(&got).is_superset(&w1),
    )
    .unwrap();
    // Down for 10 s: a run happens meanwhile, and the master is killed -9 and restarted.
    receiver.stop();
    let run2 = start_run(&c);
    wait_run(&c, &run2);
    let w2 = want(&c, &run2);
    c.nodes[0].kill9();
    c.restart(0).unwrap();
    c.wait_all_healthy(1).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    assert!(received(&got).is_disjoint(&w2), "the receiver was down");
    let _receiver = Receiver::start(port, got.clone());
    wait_until(
        "every event of the second run at the receiver",
        Duration::from_secs(60),
        || received(&got).is_superset(&w2),
    )
    .unwrap();
    // Each delivery is signed with the webhook's secret, and says what it is.
    for (h, body) in got.lock().unwrap().iter() {
        let sig = h["x-orch-signature"].strip_prefix("sha256=").unwrap();
        assert_eq!(sig, hmac_sha256(b"hook-secret", body), "bad signature");
        let e: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(e["id"].to_string(), h["x-orch-event-id"]);
        assert_eq!(
            e["type"].as_str(),
            h.get("x-orch-event-type").map(String::as_str)
        );
        let t = e["type"].as_str().unwrap();
        assert!(
            t.starts_with("pipeline.") || t.starts_with("stage."),
            "{t} is not wanted"
        );
    }
}
