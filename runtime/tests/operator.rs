//! The operator surface on a live three-node cluster: every orchctl command
//! with --json, drain, restart-device, the metrics catalog during a session,
//! and the status page in headless Chromium.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orch_tests::{assert_exactly_once, bins, sleep_session, TestCluster};
use serde_json::Value;

fn json(c: &TestCluster, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let out = c.orchctl(0, &a);
    assert!(
        out.status.success(),
        "orchctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("orchctl {args:?} --json: {e}"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn every_command_answers_json_and_unknown_names_are_exit_3() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let id = c.submit("ops", &sleep_session("ops", 300, 10, 10)).unwrap();
    // Mid-session: devices show work, status shows the session.
    c.wait_session(&id, "work in flight", Duration::from_secs(20), |v| {
        v["tasks_running"].as_u64().unwrap() > 0
    })
    .unwrap();
    let devices = json(&c, &["devices"]);
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 7);
    assert!(devices
        .iter()
        .any(|d| d["state"] == "busy" && d["tasks"][0]["session"] == id.as_str()));
    let one = json(&c, &["devices", "node-1"]);
    assert!(one
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["node"] == "node-1"));
    let status = json(&c, &["status"]);
    assert_eq!(status["workers_healthy"], 3);
    assert!(status["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == id.as_str()));
    assert!(
        status["workers_active"].as_u64().unwrap() + status["workers_idle"].as_u64().unwrap() == 3
    );
    let watched = c.orchctl(0, &["watch", &id, "--json"]);
    assert!(
        watched.status.success(),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let w: Value = serde_json::from_slice(&watched.stdout).unwrap();
    assert_eq!(w["state"], "completed");
    assert_eq!(w["frames_done"], 300);
    let sessions = json(&c, &["sessions"]);
    assert_eq!(sessions[0]["id"], id.as_str());
    let m = json(&c, &["manifest", &id]);
    assert_exactly_once(&m, 0, 300);
    assert_eq!(json(&c, &["workers"]).as_array().unwrap().len(), 3);
    let d = json(&c, &["drain", "node-2"]);
    assert_eq!(d["ok"], true);
    let d = json(&c, &["undrain", "node-2"]);
    assert_eq!(d["ok"], true);
    let d = json(&c, &["kill-device", "node-2", "node-2-dev-0"]);
    assert_eq!(d["ok"], true);
    let devs = json(&c, &["devices", "node-2"]);
    assert_eq!(devs[0]["state"], "quarantined");
    let d = json(&c, &["restart-device", "node-2", "node-2-dev-0"]);
    assert_eq!(d["ok"], true);
    assert_eq!(json(&c, &["devices", "node-2"])[0]["state"], "online");
    let second = c
        .submit("cancel-me", &sleep_session("cancel-me", 1000, 10, 50))
        .unwrap();
    assert_eq!(json(&c, &["cancel", &second])["state"], "cancelled");
    // Session controls answer JSON too; one refused for the session's state
    // is exit 1 with the reason.
    let r = json(&c, &["requeue", &id, "3"]);
    assert_eq!(r["ok"], true, "{r}");
    c.wait_done(&id, Duration::from_secs(30)).unwrap();
    let out = c.orchctl(0, &["retry", &id, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no failed ranges") || err.contains("only a `partial`"),
        "{err}"
    );
    // Human tables print too.
    for cmd in [
        vec!["status"],
        vec!["devices"],
        vec!["sessions"],
        vec!["manifest", id.as_str()],
    ] {
        let out = c.orchctl(1, &cmd);
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "orchctl {cmd:?}"
        );
    }
    // Unknown names: exit 3 with a clear message.
    for cmd in [
        vec!["session", "nope"],
        vec!["manifest", "nope"],
        vec!["watch", "nope"],
        vec!["cancel", "nope"],
        vec!["pause", "nope"],
        vec!["resume", "nope"],
        vec!["retry", "nope"],
        vec!["requeue", "nope", "0"],
        vec!["devices", "no-node"],
        vec!["drain", "no-node"],
        vec!["restart-device", "node-1", "no-device"],
        vec!["kill-device", "no-node", "x"],
    ] {
        let out = c.orchctl(0, &cmd);
        assert_eq!(out.status.code(), Some(3), "orchctl {cmd:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no ") && err.contains("404"),
            "orchctl {cmd:?}: {err}"
        );
    }
    // Every mutating command was audited with who did it.
    let audit: Vec<_> = c.nodes[0]
        .log_records()
        .into_iter()
        .filter(|r| r["target"] == "orch::audit")
        .collect();
    assert!(
        audit.iter().any(|r| r["fields"]["action"]
            .as_str()
            .is_some_and(|a| a.contains("/v1/nodes/node-2/drain"))
            && r["fields"]["token"] == "none"),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|r| r["fields"]["action"]
            .as_str()
            .is_some_and(|a| a.ends_with("/tasks/3/requeue"))),
        "{audit:?}"
    );
}

#[test]
fn a_drained_node_finishes_its_tasks_and_takes_no_new_ones() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let id = c
        .submit("drain", &sleep_session("drain", 600, 10, 20))
        .unwrap();
    c.wait_session(&id, "some frames done", Duration::from_secs(20), |v| {
        v["frames_done"].as_u64().unwrap() >= 60
    })
    .unwrap();
    let drained_at = unix_ms();
    json(&c, &["drain", "node-1"]);
    let held = json(&c, &["devices", "node-1"])
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["tasks"].as_array().unwrap().len())
        .sum::<usize>();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed");
    let m = c.manifest(&id).unwrap();
    assert_exactly_once(&m, 0, 600);
    let started_after: usize = m["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["node"] == "node-1" && r["started_ms"].as_u64().unwrap() > drained_at + 50)
        .count();
    assert!(
        started_after <= held,
        "node-1 started {started_after} tasks after the drain but held only {held}"
    );
    // Undrained, it takes work again.
    json(&c, &["undrain", "node-1"]);
    let id2 = c
        .submit("after", &sleep_session("after", 300, 5, 5))
        .unwrap();
    c.wait_done(&id2, Duration::from_secs(60)).unwrap();
    let m = c.manifest(&id2).unwrap();
    assert!(m["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["node"] == "node-1"));
}

#[test]
fn restarting_a_busy_device_reassigns_its_task_exactly_once() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let id = c
        .submit("restart", &sleep_session("restart", 300, 10, 50))
        .unwrap();
    let busy = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let devs = json(&c, &["devices"]);
            if let Some(d) = devs
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["state"] == "busy")
            {
                break d.clone();
            }
            assert!(Instant::now() < deadline, "a busy device within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (node, device) = (
        busy["node"].as_str().unwrap(),
        busy["device"].as_str().unwrap(),
    );
    json(&c, &["restart-device", node, device]);
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed");
    let m = c.manifest(&id).unwrap();
    assert_exactly_once(&m, 0, 300);
    let replay = m["replay"].as_array().unwrap();
    assert!(
        replay
            .iter()
            .any(|r| r["reason"] == "device_restart" && r["node"] == node && r["device"] == device),
        "{replay:?}"
    );
}

fn scrape(c: &TestCluster) -> String {
    orch_tests::http_get(c.nodes[0].metrics_addr, "/metrics", None)
        .unwrap()
        .1
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample `{series}`"))
}

#[test]
fn the_metrics_catalog_is_complete_and_moves_during_a_session() {
    let mut c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let id = c
        .submit("metrics", &sleep_session("metrics", 600, 10, 20))
        .unwrap();
    c.wait_session(&id, "work under way", Duration::from_secs(20), |v| {
        v["frames_done"].as_u64().unwrap() >= 50
    })
    .unwrap();
    let _ = c.orchctl(0, &["status"]);
    let first = scrape(&c);
    for (name, _) in orch_actors::metrics::CATALOG
        .iter()
        .chain(orch_runtime::metrics::CATALOG)
    {
        // One series per configured `[[device_source]]`: this cluster has none;
        // tests/discovery.rs checks it on nodes that do.
        // Likewise one series per `[[webhook]]` (tests/events.rs has one).
        if *name == orch_actors::metrics::DEVICE_SOURCE_ERRORS
            || *name == orch_runtime::metrics::WEBHOOK_DELIVERIES
            || *name == orch_runtime::metrics::WEBHOOK_SKIPPED
        {
            continue;
        }
        assert!(
            first.lines().any(|l| l.starts_with(name)),
            "metric `{name}` missing from /metrics"
        );
        assert!(
            first.contains(&format!("# HELP {name} ")),
            "metric `{name}` has no help text"
        );
    }
    assert!(sample(&first, "orch_tasks_inflight") > 0.0);
    let failovers_before = sample(&first, "orch_failovers_total{reason=\"node_down\"}");
    c.node("node-2").kill9();
    c.wait_done(&id, Duration::from_secs(60)).unwrap();
    // Gauges and the frame counter are published on the master's tick: poll.
    let deadline = Instant::now() + Duration::from_secs(5);
    let last = loop {
        let text = scrape(&c);
        if sample(&text, "orch_frames_completed_total") == 600.0
            && sample(&text, "orch_tasks_inflight") == 0.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "frames completed reaches 600 and in-flight falls to 0 within 5 s of the end:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        sample(&last, "orch_frames_completed_total")
            > sample(&first, "orch_frames_completed_total")
    );
    assert_eq!(sample(&last, "orch_frames_completed_total"), 600.0);
    assert_eq!(sample(&last, "orch_tasks_inflight"), 0.0);
    assert!(
        sample(&last, "orch_tasks_completed_total") > sample(&first, "orch_tasks_completed_total")
    );
    assert!(sample(&last, "orch_worker_failures_total{reason=\"node_down\"}") >= 1.0);
    // Only a kill while node-2 held work makes a failover; it held work at 50 frames in.
    assert!(
        sample(&last, "orch_failovers_total{reason=\"node_down\"}") > failovers_before,
        "the failover counter rises after a kill"
    );
}

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_string)
}

#[test]
fn the_status_page_shows_live_progress_in_headless_chromium() {
    let Some(browser) = chromium() else {
        eprintln!("\n!!!!!!!! SKIPPED: no Chromium here (`apt-get install chromium`; .ci/run installs it)\n");
        return;
    };
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let id = c
        .submit("page", &sleep_session("page", 2000, 10, 20))
        .unwrap();
    c.wait_session(&id, "some frames done", Duration::from_secs(20), |v| {
        v["frames_done"].as_u64().unwrap() >= 100
    })
    .unwrap();
    let profile = c.dir.path().join("chromium-profile");
    let url = format!("http://{}/", c.nodes[0].admin_addr);
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1280,1000",
        "--virtual-time-budget=4000",
    ];
    let out = Command::new(&browser)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    let row = dom
        .lines()
        .flat_map(|l| l.split("<tr"))
        .find(|r| r.contains("class=\"session\"") && r.contains(&format!("data-id=\"{id}\"")))
        .unwrap_or_else(|| {
            panic!(
                "the page shows session {id}:\n{dom}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let attr = |name: &str| -> u64 {
        let start = row.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        row[start..].split('"').next().unwrap().parse().unwrap()
    };
    let (done, total) = (attr("data-done"), attr("data-total"));
    assert_eq!(total, 2000);
    assert!(done >= 100, "progress shown: {done}");
    assert!(row.contains(&format!("{done} / 2000")), "{row}");
    assert!(
        row.contains("data-act=\"pause\"") && row.contains("data-act=\"cancel\""),
        "a running session has its pause and cancel buttons: {row}"
    );
    assert!(
        dom.contains("node-1") && dom.contains("class=\"dev "),
        "workers and the device grid are shown"
    );
    // A screenshot, for people.
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let out = Command::new(&browser)
        .args(common)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}
