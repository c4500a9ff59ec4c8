//! Membership and failure detection with real `orch-node` processes on
//! 127.0.0.1 (issue acceptance a-d, and the clean leave on SIGTERM).

use std::time::Duration;

use orch_tests::{all_healthy, bins, has_state, rejoined, TestCluster};

const ALL: [&str; 3] = ["node-0", "node-1", "node-2"];

#[test]
fn three_nodes_form_a_cluster_with_their_devices_within_5s() {
    let c = TestCluster::start_standard(bins!(), 2, 500, 3).unwrap();
    c.wait_for("3 healthy workers", Duration::from_secs(5), |ws| {
        ws.len() == 3 && all_healthy(ws, &ALL)
    })
    .unwrap();
    let ws = c.workers().unwrap();
    for w in &ws {
        let expected = if w["node"] == "node-0" { 3 } else { 2 };
        let devices = w["devices"].as_array().unwrap();
        assert_eq!(devices.len(), expected, "devices of {}", w["node"]);
        let prefix = format!("{}-dev-", w["node"].as_str().unwrap());
        assert!(devices
            .iter()
            .all(|d| d["id"].as_str().unwrap().starts_with(&prefix)));
        assert_eq!(devices[0]["capabilities"]["gpu"], false);
    }
    // Any node forwards admin requests to the master.
    let out = c.orchctl(2, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["master"], "node-0");
    assert_eq!(status["answered_by"], "node-2");
    assert_eq!(status["workers_healthy"], 3);
    assert_eq!(status["devices_total"], 7);
    // And the human table names every worker.
    let out = c.orchctl(1, &["workers"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(ALL.iter().all(|n| table.contains(n)), "{table}");
}

#[test]
fn kill_9_of_a_worker_is_node_down_within_2s() {
    let mut c = TestCluster::start_standard(bins!(), 2, 500, 3).unwrap();
    c.wait_for("3 healthy workers", Duration::from_secs(5), |ws| {
        all_healthy(ws, &ALL)
    })
    .unwrap();
    c.node("node-2").kill9();
    c.wait_for(
        "node-2 unhealthy with reason node_down",
        Duration::from_secs(2),
        |ws| has_state(ws, "node-2", "unhealthy", Some("node_down")),
    )
    .unwrap();
    let ws = c.workers().unwrap();
    assert!(
        all_healthy(&ws, &["node-0", "node-1"]),
        "the others stay healthy"
    );
    assert_eq!(
        c.nodes[0].metric("orch_worker_failures_total{reason=\"node_down\"}"),
        Some(1.0)
    );
}

#[test]
fn sigstop_is_heartbeat_timeout_and_sigcont_rejoins_with_a_higher_epoch() {
    let (hb, missed) = (1000, 3);
    let c = TestCluster::start_standard(bins!(), 2, hb, missed).unwrap();
    c.wait_for("3 healthy workers", Duration::from_secs(5), |ws| {
        all_healthy(ws, &ALL)
    })
    .unwrap();
    let epoch_before = c.worker("node-1").unwrap()["epoch"].as_u64().unwrap();
    c.nodes[1].sigstop();
    let bound = Duration::from_millis(hb * (u64::from(missed) + 1));
    c.wait_for(
        "node-1 unhealthy with reason heartbeat_timeout within (missed + 1) x heartbeat",
        bound,
        |ws| has_state(ws, "node-1", "unhealthy", Some("heartbeat_timeout")),
    )
    .unwrap();
    c.nodes[1].sigcont();
    c.wait_for(
        "node-1 healthy again with a new epoch",
        Duration::from_secs(10),
        |ws| rejoined(ws, "node-1", epoch_before),
    )
    .unwrap();
    assert_eq!(c.worker("node-1").unwrap()["registrations"], 2);
}

#[test]
fn master_kill_9_and_restart_every_worker_reregisters_within_10s() {
    let mut c = TestCluster::start_standard(bins!(), 2, 500, 3).unwrap();
    c.wait_for("3 healthy workers", Duration::from_secs(5), |ws| {
        all_healthy(ws, &ALL)
    })
    .unwrap();
    let worker_pids: Vec<_> = c.nodes[1..].iter().map(|n| n.pid()).collect();
    c.nodes[0].kill9();
    // Let the workers notice and start redialing.
    std::thread::sleep(Duration::from_millis(1500));
    c.restart(0).unwrap();
    c.wait_for(
        "every worker re-registered with the restarted master",
        Duration::from_secs(10),
        |ws| ws.len() == 3 && all_healthy(ws, &ALL),
    )
    .unwrap();
    let after: Vec<_> = c.nodes[1..].iter().map(|n| n.pid()).collect();
    assert_eq!(worker_pids, after, "workers were not restarted");
    for n in &mut c.nodes[1..] {
        assert!(n.is_running(), "{} still runs", n.spec.name);
    }
}

#[test]
fn sigterm_unregisters_cleanly_and_exits_0() {
    let mut c = TestCluster::start_standard(bins!(), 1, 500, 3).unwrap();
    c.wait_for("2 healthy workers", Duration::from_secs(5), |ws| {
        all_healthy(ws, &["node-0", "node-1"])
    })
    .unwrap();
    c.nodes[1].sigterm();
    assert_eq!(
        c.nodes[1].wait_exit(Duration::from_secs(10)).unwrap(),
        Some(0)
    );
    c.wait_for("node-1 unregistered", Duration::from_secs(2), |ws| {
        has_state(ws, "node-1", "unregistered", Some("unregistered"))
    })
    .unwrap();
    let status = c.orchctl(0, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["recent_failures"].as_array().unwrap().len(),
        0,
        "a leave is not a failure"
    );
    assert_eq!(
        c.nodes[0].metric("orch_worker_failures_total{reason=\"node_down\"}"),
        Some(0.0)
    );
    // The master itself also leaves cleanly.
    c.nodes[0].sigterm();
    assert_eq!(
        c.nodes[0].wait_exit(Duration::from_secs(10)).unwrap(),
        Some(0)
    );
}

#[test]
fn a_worker_started_before_its_master_joins_when_the_master_comes_up() {
    let mut c = TestCluster::new(bins!());
    let mport = orch_tests::free_port();
    let worker = orch_tests::NodeSpec::new("early").peer(format!("127.0.0.1:{mport}"));
    c.add(worker).unwrap();
    // The worker redials with backoff while nothing listens.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.nodes[0]
        .metric("orch_cluster_dial_failures_total")
        .unwrap_or(0.0)
        < 2.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker keeps redialing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.add_with_port(orch_tests::NodeSpec::new("late-master").master(), mport)
        .unwrap();
    c.nodes.swap(0, 1);
    c.wait_for(
        "the early worker joined the late master",
        Duration::from_secs(10),
        |ws| all_healthy(ws, &["early", "late-master"]),
    )
    .unwrap();
}
