//! The faults a farm meets in its first week, on real `orch-node` processes
//! on 127.0.0.1: a master that stops for a while, two masters, programs that
//! would outlive their worker, programs that wedge their device or lie about
//! their progress, IDs of failed attempts, and `orchctl` against a master or
//! a node that does not answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orch_tests::{
    all_healthy, assert_exactly_once, assert_ids_disjoint, assert_no_id_issued_twice, bins,
    free_port, has_state, id_events, outputs_accounted, process_alive, signal_pid, sleep_session,
    wait_until, NodeSpec, TestCluster, THREE,
};
use serde_json::Value;

/// A `command` session running `bash SCRIPT {start} {end}`, with `PIDS`
/// naming the file its processes write `node pid` lines to.
fn command_session(name: &str, script: &Path, pids: &Path, frames: u64, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nframes = {{ start = 0, end = {frames} }}\nchunk_frames = 4\nid_chunk_size = 100\nbackoff_ms = 50\n{extra}\n[executor]\nkind = \"command\"\nargv = [\"bash\", \"{}\", \"{{start}}\", \"{{end}}\"]\nenv = {{ PIDS = \"{}\" }}\n",
        script.display(),
        pids.display()
    )
}

fn write_script(c: &TestCluster, name: &str, body: &str) -> PathBuf {
    let path = c.dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/bash\n{body}")).unwrap();
    path
}

/// The pids a node's tasks wrote to `pids`.
fn pids_of(pids: &Path, node: &str) -> Vec<i32> {
    std::fs::read_to_string(pids)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(n, _)| *n == node)
        .filter_map(|(_, p)| p.trim().parse().ok())
        .collect()
}

fn metric(c: &TestCluster, i: usize, series: &str) -> f64 {
    c.nodes[i].metric(series).unwrap_or(0.0)
}

fn status(c: &TestCluster, i: usize) -> Value {
    let out = c.orchctl(i, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// SIGSTOP the master for `pause` mid-session, then SIGCONT: nobody is
/// judged, nothing is rejected, every frame is produced once.
fn master_stopped_for(pause: Duration) {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let epochs: BTreeMap<String, u64> = c
        .workers()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["node"].as_str().unwrap().to_string(),
                w["epoch"].as_u64().unwrap(),
            )
        })
        .collect();
    let id = c
        .submit("paused", &sleep_session("paused", 2000, 10, 20))
        .unwrap();
    c.wait_session(&id, "work under way", Duration::from_secs(30), |v| {
        v["frames_done"].as_u64().unwrap() >= 300
    })
    .unwrap();
    c.nodes[0].sigstop();
    std::thread::sleep(pause); // the fault itself: the master does not run
    c.nodes[0].sigcont();
    let v = c.wait_done(&id, Duration::from_secs(90)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(
        v["stale_rejected"], 0,
        "no finished result was rejected: {v}"
    );
    assert_eq!(v["failovers"], 0, "no attempt was lost: {v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 2000), 2000);
    assert_ids_disjoint(&m);
    assert!(
        m["replay"].as_array().unwrap().is_empty(),
        "{}",
        m["replay"]
    );
    let s = status(&c, 0);
    assert!(
        s["recent_failures"].as_array().unwrap().is_empty(),
        "no worker declared unhealthy: {}",
        s["recent_failures"]
    );
    for w in c.workers().unwrap() {
        let node = w["node"].as_str().unwrap();
        assert_eq!(w["state"], "healthy", "{w}");
        assert_eq!(w["registrations"], 1, "{node} never registered again: {w}");
        assert_eq!(w["epoch"].as_u64(), epochs.get(node).copied(), "{w}");
    }
    for reason in ["heartbeat_timeout", "node_down"] {
        assert_eq!(
            metric(
                &c,
                0,
                &format!("orch_worker_failures_total{{reason=\"{reason}\"}}")
            ),
            0.0
        );
    }
    assert!(
        metric(&c, 0, "orch_master_stalls_total") >= 1.0,
        "the master noticed its own pause"
    );
}

#[test]
fn a_master_stopped_for_5s_mid_session_judges_no_worker() {
    master_stopped_for(Duration::from_secs(5));
}

#[test]
fn a_master_stopped_for_20s_mid_session_judges_no_worker() {
    master_stopped_for(Duration::from_secs(20));
}

#[test]
fn a_worker_killed_while_the_master_is_stopped_is_still_detected() {
    let mut c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let id = c
        .submit("paused", &sleep_session("paused", 1000, 10, 20))
        .unwrap();
    c.wait_session(&id, "work under way", Duration::from_secs(30), |v| {
        v["frames_done"].as_u64().unwrap() >= 100
    })
    .unwrap();
    c.nodes[0].sigstop();
    std::thread::sleep(Duration::from_secs(2));
    c.node("node-2").kill9();
    std::thread::sleep(Duration::from_secs(3));
    c.nodes[0].sigcont();
    c.wait_for(
        "node-2 unhealthy (node_down), the others healthy",
        Duration::from_secs(5),
        |ws| {
            has_state(ws, "node-2", "unhealthy", Some("node_down"))
                && all_healthy(ws, &["node-0", "node-1"])
        },
    )
    .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 1000), 1000);
    assert!(c
        .workers()
        .unwrap()
        .iter()
        .all(|w| w["node"] == "node-2" || w["registrations"] == 1));
}

#[test]
fn a_second_master_refuses_to_start_naming_the_one_that_serves() {
    let mut c = TestCluster::start_standard(bins!(), 1, 500, 3).unwrap();
    c.wait_for("2 healthy workers", Duration::from_secs(10), |ws| {
        all_healthy(ws, &["node-0", "node-1"])
    })
    .unwrap();
    let m0 = c.nodes[0].cluster_addr;
    let i = c
        .launch(
            NodeSpec::new("node-m2").master().peer(m0.to_string()),
            free_port(),
        )
        .unwrap();
    let code = c.nodes[i].wait_exit(Duration::from_secs(20)).unwrap();
    assert_eq!(code, Some(2), "{}", c.nodes[i].log_tail(10));
    let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("one error line:\n{log}"));
    assert!(
        line.contains("node `node-0` already serves this cluster as its master")
            && line.contains("node-m2"),
        "{line}"
    );
    // The cluster carries on with its one master.
    let s = status(&c, 0);
    assert_eq!(s["master"], "node-0");
    assert_eq!(s["workers_healthy"], 2);
    assert_eq!(s["masters_visible"].as_array().unwrap().len(), 1, "{s}");
    let id = c.submit("one", &sleep_session("one", 40, 4, 1)).unwrap();
    assert_eq!(
        c.wait_done(&id, Duration::from_secs(30)).unwrap()["state"],
        "completed"
    );
}

#[test]
fn two_masters_that_meet_through_a_worker_leave_one_serving() {
    let mut c = TestCluster::new(bins!());
    // Two masters that do not list each other: both serve, unaware.
    let (p0, p1) = (free_port(), free_port());
    let mut m0 = NodeSpec::new("node-0").master();
    m0.devices = 1;
    c.add_with_port(m0, p0).unwrap();
    let mut m1 = NodeSpec::new("node-m1").master();
    m1.devices = 1;
    c.add_with_port(m1, p1).unwrap();
    // A worker that lists both sees both: it works for the older and tells
    // the younger, which stops.
    let w = c
        .add(
            NodeSpec::new("node-w")
                .peer(format!("127.0.0.1:{p0}"))
                .peer(format!("127.0.0.1:{p1}")),
        )
        .unwrap();
    let code = c.nodes[1].wait_exit(Duration::from_secs(15)).unwrap();
    assert_ne!(code, Some(0));
    let log = std::fs::read_to_string(&c.nodes[1].log).unwrap();
    assert!(
        log.contains("node `node-0` already serves this cluster"),
        "{}",
        c.nodes[1].log_tail(10)
    );
    c.wait_for("node-w works for node-0", Duration::from_secs(10), |ws| {
        all_healthy(ws, &["node-0", "node-w"])
    })
    .unwrap();
    let s = status(&c, w);
    assert_eq!(s["master"], "node-0");
    assert_eq!(s["masters_visible"].as_array().unwrap().len(), 1, "{s}");
    // The same session submitted to both runs once: the second is refused.
    let f = c.dir.path().join("s.toml");
    std::fs::write(&f, sleep_session("twice", 40, 4, 1)).unwrap();
    let ok = c.orchctl(0, &["submit", f.to_str().unwrap(), "--wait"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = c.orchctl(1, &["submit", f.to_str().unwrap()]);
    assert!(!refused.status.success());
    let sessions: Vec<Value> =
        serde_json::from_slice(&c.orchctl(w, &["sessions", "--json"]).stdout).unwrap();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
}

#[test]
fn a_host_added_the_documented_way_is_a_worker() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml");
    let default = std::fs::read_to_string(root).unwrap();
    let mut c = TestCluster::new(bins!());
    // As the file's own comment says: the first host gets reachable ports,
    // the second a copy with its own name and `listen`, and the first in `peers`.
    let addrs = |_: ()| {
        (
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        )
    };
    let host = |text: &str,
                name: &str,
                a: (
        std::net::SocketAddr,
        std::net::SocketAddr,
        std::net::SocketAddr,
    ),
                dir: &Path,
                peers: &str| {
        text.replace("name = \"local\"", &format!("name = \"{name}\""))
            .replace(
                "listen = \"127.0.0.1:7700\"",
                &format!("listen = \"{}\"", a.0),
            )
            .replace(
                "listen = \"127.0.0.1:7701\"",
                &format!("listen = \"{}\"", a.1),
            )
            .replace(
                "listen = \"127.0.0.1:9100\"",
                &format!("listen = \"{}\"", a.2),
            )
            .replace(
                "data_dir = \"orch-data\"",
                &format!("data_dir = \"{}\"", dir.join("data").display()),
            )
            .replace("peers = []", &format!("peers = [{peers}]"))
    };
    let a0 = addrs(());
    c.add_config("host-a", a0, |dir| host(&default, "host-a", a0, dir, ""))
        .unwrap();
    let a1 = addrs(());
    let peer = format!("\"{}\"", a0.0);
    c.add_config("host-b", a1, |dir| host(&default, "host-b", a1, dir, &peer))
        .unwrap();
    c.wait_for("host-b joins host-a", Duration::from_secs(10), |ws| {
        all_healthy(ws, &["host-a", "host-b"])
    })
    .unwrap();
    let s = status(&c, 1);
    assert_eq!(s["master"], "host-a");
    assert_eq!(s["masters_visible"].as_array().unwrap().len(), 1, "{s}");
    let started = c.nodes[1].logged("node started");
    assert!(
        !started.is_empty() && started.iter().all(|r| r["fields"]["master"] == false),
        "host-b runs no master: {started:?}"
    );
}

/// A task script: every process writes `node pid` to `$PIDS`, a background
/// child sleeps and another writes a file after a while; then one file per
/// frame, with progress, then `$TAIL`.
const TASK: &str = r#"echo "$ORCH_NODE $$" >> "$PIDS"
( sleep 60 & echo "$ORCH_NODE $!" >> "$PIDS"; wait ) &
echo "$ORCH_NODE $!" >> "$PIDS"
( sleep 1.5; echo late > "late_$1.txt" ) &
echo "$ORCH_NODE $!" >> "$PIDS"
for ((f=$1; f<$2; f++)); do
  sleep 0.1
  echo "frame $f" > ".f.tmp"; mv .f.tmp "frame_$f.txt"
  echo "ORCH_PROGRESS $((f-$1+1))"
done
"#;

/// A three-node cluster running a session of `script` tasks, once node-2
/// runs some: the cluster, the session, and the file of the tasks' pids.
fn node_2_running_tasks(name: &str, script: &str, extra: &str) -> (TestCluster, String, PathBuf) {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let script = write_script(&c, "task.sh", script);
    let pids = c.dir.path().join("pids");
    let id = c
        .submit(name, &command_session(name, &script, &pids, 400, extra))
        .unwrap();
    wait_until(
        "node-2 runs tasks with background children",
        Duration::from_secs(30),
        || pids_of(&pids, "node-2").len() >= 8,
    )
    .unwrap();
    (c, id, pids)
}

#[test]
fn kill_9_of_a_worker_leaves_no_task_process_and_nothing_unlisted_in_out() {
    let (mut c, id, pids) = node_2_running_tasks("orphans", TASK, "");
    c.node("node-2").kill9();
    let mine = pids_of(&pids, "node-2");
    wait_until(
        "every process of node-2's tasks gone",
        Duration::from_secs(1),
        || mine.iter().all(|p| !process_alive(*p)),
    )
    .unwrap_or_else(|e| {
        let alive: Vec<_> = mine.iter().filter(|p| process_alive(**p)).collect();
        panic!("{e}: still alive {alive:?}")
    });
    std::thread::sleep(Duration::from_secs(1)); // the fault: restart 1 s later
    let i = index_of(&c, "node-2");
    c.restart(i).unwrap();
    let v = c.wait_done(&id, Duration::from_secs(90)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 400), 400);
    // Nothing of the old attempts stays in out/ unlisted, now or a little
    // later (no process of them is left to write).
    let data = c.dir.path().join("node-2/data");
    wait_until(
        "node-2's out/ holds only what the manifest lists",
        Duration::from_secs(15),
        || outputs_accounted(&data, &m).is_ok(),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", outputs_accounted(&data, &m)));
    std::thread::sleep(Duration::from_secs(2));
    outputs_accounted(&data, &m).unwrap();
    for n in ["node-0", "node-1"] {
        let data = c.dir.path().join(n).join("data");
        outputs_accounted(&data, &m).unwrap();
    }
    // Every task process of the whole session has ended.
    for n in THREE {
        for p in pids_of(&pids, n) {
            assert!(
                !process_alive(p),
                "process {p} of a task on {n} is still running"
            );
        }
    }
}

/// `TASK` after a child that leaves the task's process group.
fn escaping_task() -> String {
    format!("setsid sleep 60 &\necho \"$ORCH_NODE $!\" >> \"$PIDS\"\n{TASK}")
}

/// The live children of `parent` named `comm`.
fn children_named(parent: i32, comm: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                let Some((head, rest)) = st.rsplit_once(')') else {
                    return false;
                };
                let ppid = rest.split_whitespace().nth(1);
                head.ends_with(&format!("({comm}")) && ppid == Some(&parent.to_string())
            })
        })
        .collect()
}

fn index_of(c: &TestCluster, name: &str) -> usize {
    c.nodes.iter().position(|n| n.spec.name == name).unwrap()
}

#[test]
fn processes_that_leave_their_group_die_with_their_node() {
    for kill in ["kill -9", "SIGTERM"] {
        let (mut c, _id, pids) = node_2_running_tasks("escape", &escaping_task(), "");
        if kill == "kill -9" {
            c.node("node-2").kill9();
        } else {
            c.node("node-2").sigterm();
            c.node("node-2").wait_exit(Duration::from_secs(10)).unwrap();
        }
        let mine = pids_of(&pids, "node-2");
        wait_until(
            &format!("every process of node-2's tasks gone after {kill}, in their group or not"),
            Duration::from_secs(1),
            || mine.iter().all(|p| !process_alive(*p)),
        )
        .unwrap_or_else(|e| {
            let alive: Vec<_> = mine.iter().filter(|p| process_alive(**p)).collect();
            panic!("{e}: still alive {alive:?}")
        });
    }
}

#[test]
fn a_node_restarted_after_its_reaper_died_kills_what_the_tasks_left() {
    let (mut c, _id, pids) = node_2_running_tasks("reaperless", &escaping_task(), "");
    // The reaper dies first (the OOM killer, say), then the node.
    let node = c.node("node-2").pid().unwrap();
    let reapers = children_named(node, "orch-reaper");
    assert_eq!(reapers.len(), 1, "node-2 has its reaper");
    signal_pid(reapers[0], libc::SIGKILL);
    wait_until("the reaper gone", Duration::from_secs(5), || {
        !process_alive(reapers[0])
    })
    .unwrap();
    c.node("node-2").kill9();
    let mine = pids_of(&pids, "node-2");
    // The leaders die of their parent-death signal; the rest stays.
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<i32> = mine.iter().copied().filter(|p| process_alive(*p)).collect();
    assert!(
        left.len() >= 4,
        "children outside and inside the groups outlive a node without its reaper: {left:?} of {mine:?}"
    );
    let i = index_of(&c, "node-2");
    c.restart(i).unwrap();
    wait_until(
        "the restarted node-2 has killed every process the first run's tasks left",
        Duration::from_secs(10),
        || left.iter().all(|p| !process_alive(*p)),
    )
    .unwrap_or_else(|e| {
        let alive: Vec<_> = left.iter().filter(|p| process_alive(**p)).collect();
        panic!("{e}: still alive {alive:?}")
    });
}

#[test]
fn sigterm_of_a_node_leaves_no_task_process() {
    let (mut c, _id, pids) =
        node_2_running_tasks("term", &format!("{TASK}sleep 60\n"), "timeout_ms = 120000");
    c.node("node-2").sigterm();
    assert_eq!(
        c.node("node-2").wait_exit(Duration::from_secs(10)).unwrap(),
        Some(0)
    );
    let mine = pids_of(&pids, "node-2");
    wait_until(
        "every process of node-2's tasks gone once it exited",
        Duration::from_secs(1),
        || mine.iter().all(|p| !process_alive(*p)),
    )
    .unwrap();
}

#[test]
fn a_background_child_holding_a_pipe_does_not_wedge_devices() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let pids = c.dir.path().join("pids");
    // Each program leaves a child that holds stderr (or stdout) for a
    // minute, and exits at once.
    let mut ids = Vec::new();
    for (name, redirect) in [("stderr", ">&2"), ("stdout", "")] {
        let script = write_script(
            &c,
            &format!("{name}.sh"),
            &format!(
                "sleep 60 {redirect} &\necho \"$ORCH_NODE $!\" >> \"$PIDS\"\necho \"ORCH_PROGRESS $(($2-$1))\"\n"
            ),
        );
        ids.push(
            c.submit(
                name,
                &command_session(name, &script, &pids, 120, "timeout_ms = 3000"),
            )
            .unwrap(),
        );
    }
    // A program that runs past its deadline holds its device no longer.
    let hang = write_script(
        &c,
        "hang.sh",
        "echo \"$ORCH_NODE $$\" >> \"$PIDS\"\nsleep 60 2>&1\n",
    );
    let hangs = c
        .submit(
            "hangs",
            &command_session(
                "hangs",
                &hang,
                &pids,
                28,
                "timeout_ms = 1000\nmax_attempts = 1",
            ),
        )
        .unwrap();
    let started = Instant::now();
    for id in &ids {
        let v = c.wait_done(id, Duration::from_secs(60)).unwrap();
        assert_eq!(v["state"], "completed", "{v}");
        assert_eq!(v["retries"], 0, "no attempt timed out: {v}");
        let m = c.manifest(id).unwrap();
        assert_eq!(assert_exactly_once(&m, 0, 120), 120);
    }
    let v = c.wait_done(&hangs, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    for f in c.manifest(&hangs).unwrap()["failed"].as_array().unwrap() {
        assert!(
            f["error"]
                .as_str()
                .unwrap()
                .contains("timed out after 1000 ms"),
            "{f}"
        );
    }
    // 7 devices: 60 quick tasks and 7 rounds of 1 s deadlines, not minutes.
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "took {:?}",
        started.elapsed()
    );
    let all: Vec<i32> = THREE.iter().flat_map(|n| pids_of(&pids, n)).collect();
    assert_eq!(all.len(), 30 + 30 + 7, "one process recorded per task");
    wait_until(
        "no background child outlives its task",
        Duration::from_secs(2),
        || all.iter().all(|p| !process_alive(*p)),
    )
    .unwrap();
}

#[test]
fn a_program_that_lies_about_progress_fails_and_a_symlink_keeps_the_files() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let pids = c.dir.path().join("pids");
    let liar = write_script(&c, "liar.sh", "echo ORCH_PROGRESS 999999\nexit 3\n");
    let lies = c
        .submit(
            "lies",
            &command_session("lies", &liar, &pids, 16, "max_attempts = 2"),
        )
        .unwrap();
    // Half the frames with their files, a symbolic link, then "done".
    let linker = write_script(
        &c,
        "link.sh",
        "echo a > \"frame_$1.txt\"; echo b > \"frame_$(($1+1)).txt\"\nln -s /etc/passwd link\necho ORCH_PROGRESS 2\n",
    );
    let links = c
        .submit("links", &command_session("links", &linker, &pids, 16, ""))
        .unwrap();
    let v = c.wait_done(&lies, Duration::from_secs(30)).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    let m = c.manifest(&lies).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 16), 0, "no frame credited");
    for f in m["failed"].as_array().unwrap() {
        assert!(
            f["error"]
                .as_str()
                .unwrap()
                .contains("beyond the task's 4 frames"),
            "{f}"
        );
    }
    let v = c.wait_done(&links, Duration::from_secs(30)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&links).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 16), 16);
    for r in m["ranges"].as_array().unwrap() {
        let s = r["frames"]["start"].as_u64().unwrap();
        let e = r["frames"]["end"].as_u64().unwrap();
        let mut listed: Vec<&str> = r["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["path"].as_str().unwrap())
            .collect();
        listed.sort();
        let expected: Vec<String> = (s..e).map(|f| format!("frame_{f}.txt")).collect();
        assert_eq!(listed, expected, "range {r}");
    }
    for n in THREE {
        let data = c.dir.path().join(n).join("data");
        wait_until(
            &format!("{n}: every credited frame's file in place, the links quarantined"),
            Duration::from_secs(10),
            || outputs_accounted(&data, &m).is_ok(),
        )
        .unwrap_or_else(|e| panic!("{e}: {:?}", outputs_accounted(&data, &m)));
        for r in m["ranges"].as_array().unwrap() {
            if r["node"] == n {
                for o in r["outputs"].as_array().unwrap() {
                    let p = data
                        .join(r["out_dir"].as_str().unwrap())
                        .join(o["path"].as_str().unwrap());
                    assert!(p.is_file(), "{} is listed but gone", p.display());
                }
            }
        }
    }
}

#[test]
fn a_failed_attempt_that_reports_no_id_never_shares_its_chunk() {
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let pids = c.dir.path().join("pids");
    // The first attempt of every task numbers entities from ORCH_ID_LO and
    // fails without saying how many it used; the second reports its use.
    let script = write_script(
        &c,
        "ids.sh",
        "if [ \"$ORCH_ATTEMPT\" = 1 ]; then echo \"$ORCH_ID_LO\" > used; exit 1; fi\necho \"ORCH_PROGRESS $(($2-$1)) $ORCH_ID_LO\"\n",
    );
    let id = c
        .submit("ids", &command_session("ids", &script, &pids, 80, ""))
        .unwrap();
    let v = c.wait_done(&id, Duration::from_secs(60)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 80), 80);
    let events = id_events(&c);
    let chunks = assert_no_id_issued_twice(&events, &m);
    assert_eq!(chunks, 40, "two attempts of each of the 20 tasks");
    // Directly: no second attempt's chunk overlaps any first attempt's.
    let firsts: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e.session == id && e.attempt == 1)
        .filter_map(|e| e.chunk)
        .collect();
    for e in events.iter().filter(|e| e.session == id && e.attempt == 2) {
        let (lo, hi) = e.chunk.unwrap_or((0, 0));
        for (flo, fhi) in &firsts {
            assert!(
                hi <= *flo || *fhi <= lo,
                "task {} attempt 2 got [{lo}, {hi}), overlapping a failed attempt's [{flo}, {fhi})",
                e.task
            );
        }
    }
}

#[test]
fn orchctl_says_when_the_master_or_the_node_does_not_answer() {
    let mut c = TestCluster::three_healthy(bins!(), 500).unwrap();
    c.nodes[0].sigstop();
    // Through a worker: the node answers that its master did not.
    let t = Instant::now();
    let out = c.orchctl(1, &["status"]);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the master `node-0` did not answer within 5s"),
        "{err}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");
    // The stopped node itself accepts the connection and says nothing.
    let t = Instant::now();
    let out = c.orchctl(0, &["status"]);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("sent no answer within 10s"), "{err}");
    assert!(took < Duration::from_secs(14), "took {took:?}");
    c.nodes[0].sigcont();
    // A node that is not running: at once.
    c.node("node-2").kill9();
    let t = Instant::now();
    let out = c.orchctl(2, &["status"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot reach the admin endpoint") && err.contains("is the node running"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_master_stopped_for_60s_while_programs_report_keeps_every_worker() {
    // Programs that report progress 20 times a second for 10 s each: while
    // the master is stopped its workers must not fill the connections it
    // does not read (their TCP_USER_TIMEOUT would close them).
    let c = TestCluster::three_healthy(bins!(), 500).unwrap();
    let pids = c.dir.path().join("pids");
    let script = write_script(
        &c,
        "chatty.sh",
        "for ((i=1; i<=200; i++)); do sleep 0.05; echo x > \"f_$1_$i.txt\"; echo ORCH_PROGRESS 0; done\necho \"ORCH_PROGRESS $(($2-$1))\"\n",
    );
    let id = c
        .submit(
            "chatty",
            &command_session("chatty", &script, &pids, 140, "timeout_ms = 600000"),
        )
        .unwrap();
    c.wait_session(&id, "programs running", Duration::from_secs(20), |v| {
        v["tasks_running"].as_u64().unwrap() >= 7
    })
    .unwrap();
    c.nodes[0].sigstop();
    std::thread::sleep(Duration::from_secs(60)); // the fault: the master does not run
    c.nodes[0].sigcont();
    let v = c.wait_done(&id, Duration::from_secs(120)).unwrap();
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(v["failovers"], 0, "{v}");
    assert_eq!(v["stale_rejected"], 0, "{v}");
    let m = c.manifest(&id).unwrap();
    assert_eq!(assert_exactly_once(&m, 0, 140), 140);
    let s = status(&c, 0);
    assert!(
        s["recent_failures"].as_array().unwrap().is_empty(),
        "{}",
        s["recent_failures"]
    );
    for w in c.workers().unwrap() {
        assert_eq!(w["registrations"], 1, "{w}");
    }
}
