//! Devices that come and go on real `orch-node` processes
//! (docs/workflows.md, Discovered devices; Online and offline): a discovery
//! script adds and removes devices mid-session, a device that hangs
//! mid-step fails `device_unresponsive` after `grace_wait_ms`, and sources
//! that print garbage, never exit or do not exist are one error line each
//! while the node keeps working.

use std::path::Path;
use std::time::{Duration, Instant};

use orch_tests::{
    assert_exactly_once, bins, free_port, sleep_session, wait_until, NodeSpec, TestCluster,
};
use serde_json::Value;

/// `orchctl ARGS --json` on node 0, as JSON.
fn ctl_json(c: &TestCluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = c.orchctl(0, &all);
    assert!(
        out.status.success(),
        "orchctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from orchctl")
}

/// The devices of `node` as `orchctl devices` shows them: id -> view.
fn devices(c: &TestCluster, node: &str) -> Vec<Value> {
    ctl_json(c, &["devices", node])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn device<'a>(all: &'a [Value], id: &str) -> Option<&'a Value> {
    all.iter().find(|d| d["device"] == id)
}

/// Write the list a fake discovery script prints: one JSON object a line.
fn list(file: &Path, lines: &[&str]) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, lines.join("\n") + "\n").unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

fn phone(id: &str) -> String {
    format!("{{\"id\": \"{id}\", \"handle\": \"serial-{id}\", \"capabilities\": {{\"os\": \"android\"}}}}")
}

/// A phone whose source reports its GPU use.
fn busy_phone(id: &str, gpu: f64) -> String {
    phone(id).replacen('}', &format!("}}, \"gpu_usage\": {gpu}"), 1)
}

#[test]
fn devices_a_discovery_script_adds_get_work_within_a_period_and_removed_ones_are_requeued_device_gone(
) {
    let mut c = TestCluster::new(bins!());
    let dir = c.dir.path().to_path_buf();
    let listing = dir.join("phones.jsonl");
    list(
        &listing,
        &[
            &phone("p1"),
            &phone("p2"),
            "{\"id\": \"p9\", \"state\": \"offline\", \"error\": \"battery low\"}",
        ],
    );
    let mut m = NodeSpec::new("node-0").master().heartbeat(300, 3);
    m.devices_toml = Some(String::new());
    m.max_concurrency = 8;
    m.cluster_toml = "online_window_s = 5\n".into();
    m.extra_toml = format!(
        "[[device_source]]\nname = \"phones\"\ncommand = [\"cat\", \"{}\"]\nevery_s = 1\n",
        listing.display()
    );
    c.add_with_port(m, free_port()).unwrap();
    c.wait_all_healthy(0).unwrap();
    wait_until(
        "p1 and p2 online, p9 offline",
        Duration::from_secs(15),
        || {
            let all = devices(&c, "node-0");
            let state = |id| device(&all, id).map(|d| d["state"].clone());
            state("p1") == Some("online".into())
                && state("p2") == Some("online".into())
                && state("p9") == Some("offline".into())
        },
    )
    .unwrap();
    let p9 = device(&devices(&c, "node-0"), "p9").cloned().unwrap();
    assert_eq!(p9["last_error"], "battery low", "{p9}");

    // 60 one-second tasks on two phones: p1 busy when it is unplugged.
    let id = c
        .submit("phones", &sleep_session("phones", 60, 1, 1000))
        .unwrap();
    wait_until("p1 runs an attempt", Duration::from_secs(15), || {
        device(&devices(&c, "node-0"), "p1").is_some_and(|d| d["state"] == "busy")
    })
    .unwrap();
    list(
        &listing,
        &[
            &busy_phone("p2", 0.2),
            &busy_phone("p3", 0.4),
            &busy_phone("p4", 0.6),
        ],
    );
    let plugged = Instant::now();
    wait_until("p3 and p4 run attempts", Duration::from_secs(15), || {
        let all = devices(&c, "node-0");
        ["p3", "p4"].iter().all(|p| {
            device(&all, p)
                .is_some_and(|d| d["state"] == "busy" || d["tasks_done"].as_u64() > Some(0))
        })
    })
    .unwrap();
    eprintln!(
        "new devices had work {} ms after the listing changed (every_s = 1)",
        plugged.elapsed().as_millis()
    );
    let gone = device(&devices(&c, "node-0"), "p1").cloned().unwrap();
    assert_eq!(gone["state"], "offline", "{gone}");
    assert!(
        gone["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("device_gone")),
        "{gone}"
    );

    // The heartbeat carries the sources' GPU use to the master.
    wait_until("node-0's GPU use is 40 %", Duration::from_secs(10), || {
        let ws = ctl_json(&c, &["workers"]);
        ws[0]["gpu_usage"]
            .as_f64()
            .is_some_and(|g| (g - 0.4).abs() < 0.01)
    })
    .unwrap();

    let v = c.wait_done(&id, Duration::from_secs(120)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let man = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&man, 0, 60), 60);
    wait_until(
        "the master knows node-0's last frame",
        Duration::from_secs(10),
        || {
            ctl_json(&c, &["workers"])[0]["last_frame"]
                .as_u64()
                .is_some_and(|f| f < 60)
        },
    )
    .unwrap();
    let replay = man["replay"].as_array().unwrap();
    assert!(
        replay
            .iter()
            .any(|r| r["reason"] == "device_gone" && r["device"] == "p1"),
        "p1's attempt was requeued with reason device_gone: {replay:?}"
    );
    let on = |dev: &str| {
        man["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["device"] == dev)
            .count()
    };
    assert!(
        on("p3") > 0 && on("p4") > 0,
        "the new phones produced ranges"
    );
    assert_eq!(on("p9"), 0, "the offline phone took nothing");
    // Nothing ran on p1 after it left: its attempts were stopped.
    let left_ms = man["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["device"] == "p1")
        .filter_map(|r| r["finished_ms"].as_u64())
        .max();
    let first_new = man["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["device"] == "p3")
        .filter_map(|r| r["started_ms"].as_u64())
        .min()
        .unwrap();
    if let Some(l) = left_ms {
        assert!(
            l <= first_new + 1_500,
            "p1 finished a range at {l}, well after p3 started at {first_new}"
        );
    }
}

/// A workflow whose only step hangs silently on `node-0-dev-1` after one line.
const HANGING: &str = "name = \"hang\"\n[[step]]\nname = \"login\"\nargv = [\"sh\", \"-c\", \"echo logging in; if [ {device} = node-0-dev-1 ]; then exec sleep 601; fi; echo {start} > shot_{start}.png\"]\ntimeout_ms = 60000\n";

#[test]
fn a_device_that_hangs_mid_step_fails_device_unresponsive_after_grace_and_the_range_runs_elsewhere()
{
    let mut c = TestCluster::new(bins!());
    let mut m = NodeSpec::new("node-0").master().heartbeat(300, 3);
    m.devices = 3;
    m.max_concurrency = 3;
    m.cluster_toml = "grace_wait_ms = 1500\n".into();
    c.add_with_port(m, free_port()).unwrap();
    c.wait_all_healthy(0).unwrap();
    let recipe = c.dir.path().join("hang.toml");
    std::fs::write(&recipe, HANGING).unwrap();
    let out = c.orchctl(0, &["workflow", "add", recipe.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let started = Instant::now();
    let id = c
        .submit(
            "hang",
            "name = \"hang\"\nframes = { start = 0, end = 12 }\nchunk_frames = 1\nid_chunk_size = 10\nworkflow = \"hang\"\n",
        )
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    eprintln!(
        "12 tasks with one hung device took {} ms",
        started.elapsed().as_millis()
    );
    let man = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&man, 0, 12), 12);
    let replay = man["replay"].as_array().unwrap();
    let hung: Vec<&Value> = replay
        .iter()
        .filter(|r| r["device"] == "node-0-dev-1")
        .collect();
    assert_eq!(
        hung.len(),
        1,
        "one attempt hung, then the device was offline: {replay:?}"
    );
    let reason = hung[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("device_unresponsive: step `login`"),
        "{reason}"
    );
    assert!(reason.contains("1500 ms"), "{reason}");
    assert!(
        man["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["device"] != "node-0-dev-1"),
        "nothing was produced on the hung device"
    );
    // What was queued behind the hung attempt went elsewhere, unspent.
    let skipped = man["skipped_offline"]["node-0/node-0-dev-1"]
        .as_u64()
        .unwrap_or(0);
    assert!(skipped >= 1, "{}", man["skipped_offline"]);
    let dev1 = device(&devices(&c, "node-0"), "node-0-dev-1")
        .cloned()
        .unwrap();
    assert_eq!(dev1["state"], "offline", "{dev1}");
    assert!(
        dev1["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("device_unresponsive")),
        "{dev1}"
    );
    // The hung program was killed with its step.
    wait_until("no `sleep 601` left", Duration::from_secs(5), || {
        running("^sleep 601$") == 0
    })
    .unwrap();
}

#[test]
fn sources_that_print_garbage_never_exit_or_are_missing_are_one_error_line_each_and_the_node_works_on(
) {
    let mut c = TestCluster::new(bins!());
    let mut m = NodeSpec::new("node-0").master().heartbeat(300, 3);
    m.devices = 2;
    m.extra_toml = "[[device_source]]\nname = \"garbage\"\ncommand = [\"sh\", \"-c\", \"echo '{\\\"id\\\": \\\"ok-1\\\"}'; echo 'this is not json'\"]\nevery_s = 1\n\
        [[device_source]]\nname = \"stuck\"\ncommand = [\"sleep\", \"602\"]\nevery_s = 1\ntimeout_ms = 300\n\
        [[device_source]]\nname = \"missing\"\ncommand = [\"/nonexistent/discover-phones\"]\nevery_s = 1\n\
        [[device_source]]\nname = \"phones\"\nbuiltin = \"adb\"\nevery_s = 1\n"
        .into();
    c.add_with_port(m, free_port()).unwrap();
    c.wait_all_healthy(0).unwrap();
    for source in ["garbage", "stuck", "missing"] {
        let series = format!("orch_device_source_errors_total{{source=\"{source}\"}}");
        wait_until(
            &format!("3 failed runs of `{source}`"),
            Duration::from_secs(20),
            || c.nodes[0].metric(&series).unwrap_or(0.0) >= 3.0,
        )
        .unwrap();
    }
    let body = orch_tests::http_get(c.nodes[0].metrics_addr, "/metrics", None)
        .unwrap()
        .1;
    assert!(
        body.contains("# HELP orch_device_source_errors_total "),
        "the source error counter has help text:\n{body}"
    );
    // The node still runs sessions on its configured devices meanwhile.
    let id = c
        .submit("still", &sleep_session("still", 8, 1, 20))
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(30)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");

    let failed = c.nodes[0].logged(
        "device source failed; its devices stay as they are and go offline after `online_window_s` without a good run",
    );
    let said = |source: &str| -> Vec<String> {
        failed
            .iter()
            .filter(|r| r["fields"]["source"] == source)
            .map(|r| r["fields"]["error"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let g = said("garbage");
    assert_eq!(g.len(), 1, "said once, not at every run: {g:?}");
    assert!(
        g[0].starts_with("device source `garbage`: line 2: expected a JSON object"),
        "{}",
        g[0]
    );
    assert!(g[0].contains("`this is not json`"), "{}", g[0]);
    assert_eq!(
        said("stuck"),
        ["device source `stuck`: no answer within 300 ms"]
    );
    let missing = said("missing");
    assert_eq!(missing.len(), 1);
    assert!(
        missing[0].contains("`/nonexistent/discover-phones` is not found"),
        "{}",
        missing[0]
    );
    // adb: where it is not installed the error says so; where it is, it
    // lists what it has. Either way, the source is not a crash.
    let adb = said("phones");
    if which("adb") {
        eprintln!("adb is installed here: the `phones` source listed {adb:?}");
    } else {
        assert_eq!(adb.len(), 1, "{adb:?}");
        assert!(
            adb[0].contains("`adb` is not found (install Android platform-tools"),
            "{}",
            adb[0]
        );
    }
    // A garbage run changes nothing: `ok-1`, on the bad run's first line, never joined.
    let all = devices(&c, "node-0");
    assert!(device(&all, "ok-1").is_none(), "{all:?}");
    assert_eq!(all.len(), 2);
    // No run outlives its timeout: at most the current one runs, however
    // many came before.
    assert!(c.nodes[0].is_running());
    for _ in 0..20 {
        let n = running("^sleep 602$");
        assert!(n <= 1, "{n} runs of the stuck source are alive at once");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many processes' command lines match `pattern`.
fn running(pattern: &str) -> usize {
    std::process::Command::new("pgrep")
        .args(["-c", "-f", pattern])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// `node-1-dev-1` hangs silently in `shot`; `node-1-dev-0`'s preflight
/// finds its storage full; every other step takes 300 ms.
const UNWELL: &str = "name = \"unwell\"\n\
    [preflight]\nargv = [\"sh\", \"-c\", \"if [ {device} = node-1-dev-0 ]; then echo 'storage full' >&2; exit 2; fi\"]\ntimeout_ms = 5000\n\
    [[step]]\nname = \"shot\"\nargv = [\"sh\", \"-c\", \"echo shooting; if [ {device} = node-1-dev-1 ]; then exec sleep 603; fi; sleep 0.3; echo {start} > shot_{start}.png\"]\ntimeout_ms = 60000\n";

#[test]
fn preflight_reasons_skip_counts_and_hangs_survive_a_master_kill_mid_session() {
    let mut c = TestCluster::new(bins!());
    let port = free_port();
    let mut m = NodeSpec::new("node-0").master().heartbeat(300, 3);
    m.devices = 2;
    c.add_with_port(m, port).unwrap();
    let mut w = NodeSpec::new("node-1")
        .peer(format!("127.0.0.1:{port}"))
        .heartbeat(300, 3);
    w.devices = 2;
    w.cluster_toml = "grace_wait_ms = 1000\nonline_window_s = 60\n".into();
    c.add(w).unwrap();
    c.wait_all_healthy(1).unwrap();
    let recipe = c.dir.path().join("unwell.toml");
    std::fs::write(&recipe, UNWELL).unwrap();
    let out = c.orchctl(0, &["workflow", "add", recipe.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = c
        .submit(
            "unwell",
            "name = \"unwell\"\nframes = { start = 0, end = 40 }\nchunk_frames = 1\nid_chunk_size = 10\nworkflow = \"unwell\"\n",
        )
        .unwrap();
    let before = c
        .wait_for_manifest(
            &id,
            "a hang recorded, and tasks skipped on the hung device",
            Duration::from_secs(30),
            |m| {
                m["skipped_offline"]["node-1/node-1-dev-1"].as_u64() > Some(0)
                    && m["failure_reasons"]["node-1/node-1-dev-0"].is_string()
            },
        )
        .unwrap();
    assert_eq!(
        before["state"], "running",
        "the kill comes mid-session: {before}"
    );
    c.nodes[0].kill9();
    c.restart(0).unwrap();
    c.wait_all_healthy(1).unwrap();
    let v = c.wait_done(&id, Duration::from_secs(90)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 40), 40);
    let skipped = |m: &Value| {
        m["skipped_offline"]["node-1/node-1-dev-1"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        skipped(&m) >= skipped(&before),
        "{} then {}",
        before["skipped_offline"],
        m["skipped_offline"]
    );
    let reason = m["failure_reasons"]["node-1/node-1-dev-0"]
        .as_str()
        .unwrap();
    assert!(
        reason.starts_with("preflight failed: `sh` exited with code 2: storage full"),
        "{reason}"
    );
    let hung = |m: &Value| {
        m["replay"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["device"] == "node-1-dev-1"
                    && r["reason"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("device_unresponsive"))
            })
            .count()
    };
    assert!(hung(&before) >= 1);
    assert!(hung(&m) >= hung(&before), "replayed as recorded");
    assert!(
        m["ranges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["node"] != "node-1"),
        "neither unwell device produced anything"
    );
    wait_until("no `sleep 603` left", Duration::from_secs(5), || {
        running("^sleep 603$") == 0
    })
    .unwrap();
}
