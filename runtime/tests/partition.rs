//! A worker in its own network namespace, cut off by `ip link set down` on the
//! host end of its veth link (acceptance e). Needs root and iproute2; where
//! `ip netns` is unavailable the test says so loudly and skips.

use std::time::Duration;

use orch_tests::netns::{Direction, NetNs};
use orch_tests::{
    all_healthy, assert_exactly_once, assert_ids_disjoint, bins, free_port, has_state, rejoined,
    NodeSpec, TestCluster,
};

/// node-0 (master) on the host end of `ns`'s link, node-ns (worker) inside
/// it, both healthy.
fn master_and_worker_in(ns: &NetNs, hb: u64, missed: u32) -> TestCluster {
    let mut c = TestCluster::new(bins!());
    // The master listens on the host end of the link; the worker dials it from the namespace.
    let mport = free_port();
    let mut master = NodeSpec::new("node-0").master().heartbeat(hb, missed);
    master.ip = ns.host_ip.clone();
    c.add_with_port(master, mport).unwrap();
    let mut w = NodeSpec::new("node-ns")
        .peer(format!("{}:{mport}", ns.host_ip))
        .heartbeat(hb, missed);
    w.ip = ns.ns_ip.clone();
    w.netns = Some(ns.name.clone());
    c.add(w).unwrap();
    c.wait_for(
        "node-ns joins from its namespace",
        Duration::from_secs(10),
        |ws| all_healthy(ws, &["node-0", "node-ns"]),
    )
    .unwrap();
    c
}

#[test]
fn a_worker_cut_off_for_10s_is_heartbeat_timeout_and_rejoins_after_healing() {
    let ns = match NetNs::create(1) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("\n!!!!!!!! SKIPPED: network namespaces are unavailable here: {e}\n!!!!!!!! (run as root with iproute2 to test partitions)\n");
            return;
        }
    };
    let (hb, missed) = (500, 3);
    let mut c = master_and_worker_in(&ns, hb, missed);
    let epoch_before = c.worker("node-ns").unwrap()["epoch"].as_u64().unwrap();

    ns.set_link(false).unwrap();
    c.wait_for(
        "node-ns unhealthy with reason heartbeat_timeout while its link is down",
        Duration::from_millis(hb * (u64::from(missed) + 2)),
        |ws| has_state(ws, "node-ns", "unhealthy", Some("heartbeat_timeout")),
    )
    .unwrap();
    // Keep it cut off for 10 s in all; it must stay unhealthy meanwhile.
    let cut_until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < cut_until {
        let ws = c.workers().unwrap();
        assert!(
            has_state(&ws, "node-ns", "unhealthy", Some("heartbeat_timeout")),
            "{ws:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    ns.set_link(true).unwrap();
    c.wait_for(
        "node-ns healthy again with a new epoch after the link is back",
        Duration::from_secs(30),
        |ws| rejoined(ws, "node-ns", epoch_before),
    )
    .unwrap();
    assert!(
        c.node("node-ns").is_running(),
        "the worker was never restarted"
    );
}

#[test]
fn a_worker_cut_off_for_20s_loses_nothing_and_nothing_waits_forever() {
    let ns = match NetNs::create(2) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("\n!!!!!!!! SKIPPED: network namespaces are unavailable here: {e}\n");
            return;
        }
    };
    let mut c = TestCluster::new(bins!());
    let mport = free_port();
    let mut master = NodeSpec::new("node-0").master();
    master.ip = ns.host_ip.clone();
    c.add_with_port(master, mport).unwrap();
    c.add(NodeSpec::new("node-1").peer(format!("{}:{mport}", ns.host_ip)))
        .unwrap();
    let mut w = NodeSpec::new("node-ns").peer(format!("{}:{mport}", ns.host_ip));
    w.ip = ns.ns_ip.clone();
    w.netns = Some(ns.name.clone());
    c.add(w).unwrap();
    c.wait_for("3 workers", Duration::from_secs(10), |ws| {
        all_healthy(ws, &["node-0", "node-1", "node-ns"])
    })
    .unwrap();
    let id = c
        .submit(
            "cut",
            "name = \"cut\"\nframes = { start = 0, end = 600 }\nchunk_frames = 10\nid_chunk_size = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 20\n",
        )
        .unwrap();
    c.wait_session(&id, "some frames done", Duration::from_secs(30), |v| {
        v["frames_done"].as_u64().unwrap() >= 60
    })
    .unwrap();
    ns.set_link(false).unwrap();
    std::thread::sleep(Duration::from_secs(20));
    ns.set_link(true).unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 600), 600);
    assert_ids_disjoint(&m);
    assert!(m["replay"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["node"] == "node-ns"));
    c.wait_for("node-ns rejoins", Duration::from_secs(30), |ws| {
        all_healthy(ws, &["node-ns"])
    })
    .unwrap();
}

/// A worker in its own namespace, cut off one way for `secs` by nftables,
/// then healed: healthy again (with a new epoch) within 3 s of the heal.
fn one_way_partition_heals_within_3s(n: u8, dir: Direction, secs: u64) {
    let ns = match (NetNs::create(n), NetNs::nft_unavailable()) {
        (Ok(ns), None) => ns,
        (Err(e), _) => {
            eprintln!("\n!!!!!!!! SKIPPED: network namespaces are unavailable here: {e}\n");
            return;
        }
        (_, Some(e)) => {
            eprintln!(
                "\n!!!!!!!! SKIPPED: network namespaces or nftables are unavailable here: {e}\n"
            );
            return;
        }
    };
    let (hb, missed) = (500, 3);
    let mut c = master_and_worker_in(&ns, hb, missed);
    let epoch_before = c.worker("node-ns").unwrap()["epoch"].as_u64().unwrap();
    let cut_at = std::time::Instant::now();
    ns.cut(dir).unwrap();
    c.wait_for(
        &format!("node-ns unhealthy (heartbeat_timeout) while cut {dir:?}"),
        Duration::from_millis(hb * (u64::from(missed) + 4)),
        |ws| has_state(ws, "node-ns", "unhealthy", Some("heartbeat_timeout")),
    )
    .unwrap();
    // The fault lasts `secs` in all.
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(cut_at.elapsed()));
    ns.heal().unwrap();
    let took = c
        .wait_for(
            &format!("node-ns healthy again within 3 s of healing a {secs} s cut {dir:?}"),
            Duration::from_secs(3),
            |ws| rejoined(ws, "node-ns", epoch_before),
        )
        .unwrap();
    eprintln!("{dir:?} cut of {secs} s: healthy again {took:?} after the heal");
    assert!(
        c.node("node-ns").is_running(),
        "the worker was never restarted"
    );
}

#[test]
fn a_worker_not_heard_for_15s_rejoins_within_3s_of_the_heal() {
    one_way_partition_heals_within_3s(3, Direction::ToHost, 15);
}

#[test]
fn a_worker_that_hears_nothing_for_15s_rejoins_within_3s_of_the_heal() {
    one_way_partition_heals_within_3s(4, Direction::FromHost, 15);
}

#[test]
fn a_worker_not_heard_for_60s_rejoins_within_3s_of_the_heal() {
    one_way_partition_heals_within_3s(5, Direction::ToHost, 60);
}

#[test]
fn a_worker_that_hears_nothing_for_60s_rejoins_within_3s_of_the_heal() {
    one_way_partition_heals_within_3s(6, Direction::FromHost, 60);
}
