//! Node checks on real `orch-node` processes (`[[worker.check]]`): a failing
//! check puts its worker in status `error`, which takes no new work while
//! its running attempts finish, and takes work again once the check passes.

use std::time::Duration;

use orch_tests::{assert_exactly_once, bins, free_port, NodeSpec, TestCluster};
use serde_json::Value;

fn ranges_on<'a>(m: &'a Value, node: &str) -> Vec<&'a Value> {
    m["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["node"] == node)
        .collect()
}

fn status_of(ws: &[Value], node: &str) -> (String, String) {
    ws.iter()
        .find(|w| w["node"] == node)
        .map(|w| {
            (
                w["status"].as_str().unwrap_or("").to_string(),
                w["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

#[test]
fn a_failing_node_check_stops_new_work_until_it_passes_and_running_attempts_finish() {
    let mut c = TestCluster::new(bins!());
    let port = free_port();
    let mut m = NodeSpec::new("node-0").master().heartbeat(300, 3);
    m.worker = false;
    c.add_with_port(m, port).unwrap();
    let flag = c.dir.path().join("nas-mounted");
    std::fs::write(&flag, "").unwrap();
    let mut checked = NodeSpec::new("node-1")
        .peer(format!("127.0.0.1:{port}"))
        .heartbeat(300, 3);
    checked.extra_toml = format!(
        "[[worker.check]]\nname = \"nas\"\nargv = [\"sh\", \"-c\", \"test -e {} || {{ echo 'NAS unreachable' >&2; exit 1; }}\"]\nevery_s = 1\ntimeout_ms = 2000\n",
        flag.display()
    );
    c.add(checked).unwrap();
    c.add(
        NodeSpec::new("node-2")
            .peer(format!("127.0.0.1:{port}"))
            .heartbeat(300, 3),
    )
    .unwrap();
    c.wait_for("both workers healthy", Duration::from_secs(15), |ws| {
        ["node-1", "node-2"].iter().all(|n| {
            ws.iter()
                .any(|w| w["node"] == *n && w["state"] == "healthy")
        })
    })
    .unwrap();

    // Attempts running on node-1 when its check starts failing finish there.
    let a = c
        .submit(
            "running",
            "name = \"running\"\nframes = { start = 0, end = 4 }\nchunk_frames = 1\nid_chunk_size = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 1500\n",
        )
        .unwrap();
    c.wait_session(
        &a,
        "attempts running on both workers",
        Duration::from_secs(10),
        |v| v["tasks_running"].as_u64().unwrap_or(0) >= 4,
    )
    .unwrap();
    std::fs::remove_file(&flag).unwrap();
    c.wait_for("node-1 in status error", Duration::from_secs(10), |ws| {
        let (status, error) = status_of(ws, "node-1");
        status == "error" && error.contains("check `nas`") && error.contains("NAS unreachable")
    })
    .unwrap();
    let done = c.wait_done(&a, Duration::from_secs(30)).unwrap();
    assert_eq!(done["state"], "completed", "{done}");
    let ma = c.manifest(&a).unwrap();
    assert_eq!(assert_exactly_once(&ma, 0, 4), 4);
    assert!(
        !ranges_on(&ma, "node-1").is_empty(),
        "node-1's attempts finished there: {ma}"
    );
    assert!(
        ma["replay"].as_array().unwrap().is_empty(),
        "nothing was lost: {ma}"
    );

    // While it fails: nothing new for node-1, which stays registered.
    let b = c
        .submit(
            "while-failing",
            "name = \"while-failing\"\nframes = { start = 0, end = 12 }\nchunk_frames = 1\nid_chunk_size = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 50\n",
        )
        .unwrap();
    assert_eq!(
        c.wait_done(&b, Duration::from_secs(30)).unwrap()["state"],
        "completed"
    );
    let mb = c.manifest(&b).unwrap();
    assert_eq!(assert_exactly_once(&mb, 0, 12), 12);
    assert!(
        ranges_on(&mb, "node-1").is_empty(),
        "node-1 got work while its check failed: {mb}"
    );
    let ws = c.workers().unwrap();
    assert!(
        ws.iter()
            .any(|w| w["node"] == "node-1" && w["state"] == "healthy"),
        "{ws:?}"
    );

    // The check passes again: node-1 takes work.
    std::fs::write(&flag, "").unwrap();
    c.wait_for("node-1 ok again", Duration::from_secs(10), |ws| {
        status_of(ws, "node-1").0 == "ok"
    })
    .unwrap();
    let d = c
        .submit(
            "after",
            "name = \"after\"\nframes = { start = 0, end = 16 }\nchunk_frames = 1\nid_chunk_size = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = 100\n",
        )
        .unwrap();
    assert_eq!(
        c.wait_done(&d, Duration::from_secs(30)).unwrap()["state"],
        "completed"
    );
    let md = c.manifest(&d).unwrap();
    assert_eq!(assert_exactly_once(&md, 0, 16), 16);
    assert!(
        !ranges_on(&md, "node-1").is_empty(),
        "node-1 takes work again: {md}"
    );
}

#[test]
fn bad_node_checks_are_refused_at_start_naming_the_key() {
    let c = TestCluster::new(bins!());
    for (check, key) in [
        ("name = \"c\"\nargv = []\n", "worker.check[0].argv"),
        (
            "name = \"c\"\nargv = [\"true\"]\nevery_s = 0\n",
            "worker.check[0].every_s",
        ),
        (
            "name = \"c\"\nargv = [\"true\"]\ntimeout_ms = 0\n",
            "worker.check[0].timeout_ms",
        ),
        (
            "name = \"c d\"\nargv = [\"true\"]\n",
            "worker.check[0].name",
        ),
        ("name = \"c\"\nargv = [\"true\"]\nbogus = 1\n", "bogus"),
    ] {
        let dir = c.dir.path().join("bad");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cluster.toml");
        std::fs::write(
            &file,
            format!("[node]\nname = \"n\"\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\n[cluster]\nsecret = \"s3cret-s3cret\"\n[[worker.check]]\n{check}", free_port(), dir.join("data").display()),
        )
        .unwrap();
        let out = std::process::Command::new(bins!().node)
            .args(["--cluster", file.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{check}: {err}");
        assert!(err.contains(key), "{check}: {err}");
    }
}
