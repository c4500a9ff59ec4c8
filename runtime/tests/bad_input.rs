//! Bad input from people and from the network: each gets one clear error and
//! never takes a node down.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use orch_tests::{
    all_healthy, bins, free_port, http_post, raise_fd_limit, rss_bytes, wait_until, NodeSpec,
    TestCluster,
};

const GOOD: &str = r#"
[node]
name = "n1"
listen = "127.0.0.1:PORT"
[cluster]
secret = "s3cret"
[[device]]
id = "gpu0"
[admin]
listen = "127.0.0.1:APORT"
[metrics]
listen = "127.0.0.1:MPORT"
"#;

/// Run orch-node on `text`; return (exit code, stderr) and check no port was opened.
fn run_config(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (p, a, m) = (free_port(), free_port(), free_port());
    let text = text
        .replace("APORT", &a.to_string())
        .replace("MPORT", &m.to_string())
        .replace("PORT", &p.to_string());
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    let child = Command::new(bins!().node)
        .arg("--cluster")
        .arg(&path)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs (or right after it exits), none of its ports accepts.
    for port in [p, a, m] {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} must not be opened for a bad config"
        );
    }
    // A config taken for good starts a node: stop it after a while.
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(text: &str, key: &str, expected: &str) {
    let (code, stderr) = run_config(text);
    assert_eq!(
        code,
        Some(2),
        "exit code 2 for a bad config; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    assert!(lines[0].starts_with("error: invalid "), "{stderr}");
    assert!(
        lines[0].contains("cluster.toml`"),
        "names the file: {stderr}"
    );
    assert!(lines[0].contains(key), "names `{key}`: {stderr}");
    assert!(lines[0].contains(expected), "says `{expected}`: {stderr}");
}

#[test]
fn malformed_cluster_toml_is_one_line_exit_2_and_no_port() {
    assert_refused(
        &GOOD.replace("[cluster]", "[cluster]\nturbo = true"),
        "cluster",
        "unknown field `turbo`",
    );
    assert_refused(
        &GOOD.replace("127.0.0.1:PORT", "localhost:PORT"),
        "node.listen",
        "`IP:port`",
    );
    assert_refused(
        &format!("{GOOD}\n[[device]]\nid = \"gpu0\"\n"),
        "device[1].id",
        "used twice",
    );
    assert_refused(
        &GOOD.replace("secret = \"s3cret\"", ""),
        "cluster.secret",
        "missing",
    );
    assert_refused(
        &GOOD.replace("\"s3cret\"", "\"\""),
        "cluster.secret",
        "non-empty",
    );
    assert_refused(
        &GOOD.replace("[cluster]", "[cluster]\nheartbeat_ms = 0"),
        "cluster.heartbeat_ms",
        "got `0`",
    );
    assert_refused(
        &GOOD.replace("name = \"n1\"", "name = \"n1\"\n[node.extra]"),
        "node",
        "unknown field",
    );
}

#[test]
fn secret_and_config_files_that_are_not_small_regular_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let big = dir.path().join("big.secret");
    std::fs::write(&big, vec![b'x'; 70_000]).unwrap();
    for (path, what) in [
        ("/dev/zero".to_string(), "got a device"),
        ("/dev/urandom".to_string(), "got a device"),
        (fifo.display().to_string(), "got a FIFO"),
        (dir.path().display().to_string(), "got a directory"),
        (big.display().to_string(), "at most 65536 bytes"),
    ] {
        let started = Instant::now();
        assert_refused(
            &GOOD.replace("secret = \"s3cret\"", &format!("secret_file = \"{path}\"")),
            "cluster.secret_file",
            what,
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path}: {:?}",
            started.elapsed()
        );
        // The admin token file is read the same way.
        assert_refused(
            &GOOD.replace(
                "listen = \"127.0.0.1:APORT\"",
                &format!("listen = \"127.0.0.1:APORT\"\ntoken_file = \"{path}\""),
            ),
            "admin.token_file",
            what,
        );
    }
    // The configuration file itself.
    for (path, what) in [
        (fifo.as_path(), "got a FIFO"),
        (std::path::Path::new("/dev/zero"), "got a device"),
    ] {
        let started = Instant::now();
        let out = Command::new(bins!().node)
            .arg("--cluster")
            .arg(path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(what), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[test]
fn the_cluster_port_cannot_be_exhausted_without_authenticating() {
    assert!(raise_fd_limit() >= 1200, "this test needs 1,200 open files");
    let mut c = TestCluster::new(bins!());
    let mport = free_port();
    let mut m = NodeSpec::new("node-0").master();
    m.rust_log = None; // the node's own log filter, as an operator runs it
    c.add_with_port(m, mport).unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{mport}").parse().unwrap();
    let pid = c.nodes[0].pid().unwrap();
    let rss_before = rss_bytes(pid).unwrap();
    let log_before = std::fs::read_to_string(&c.nodes[0].log)
        .unwrap()
        .lines()
        .count();
    // 1,000 idle connections and 40 that announce a 16 MiB frame and stall.
    let mut held = Vec::new();
    for _ in 0..1000 {
        held.push(TcpStream::connect(addr).unwrap());
    }
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&(16u64 << 20).to_be_bytes());
        held.push(s);
    }
    // A real worker joins meanwhile.
    c.add(NodeSpec::new("node-1").peer(addr.to_string()))
        .unwrap();
    c.wait_for(
        "node-1 joins during the flood",
        Duration::from_secs(20),
        |ws| all_healthy(ws, &["node-0", "node-1"]),
    )
    .unwrap();
    let rss_flood = rss_bytes(pid).unwrap();
    // Every one of them is closed by the node: at once (over a limit) or
    // at the handshake deadline.
    let started = Instant::now();
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut b = [0u8; 64];
        loop {
            match s.read(&mut b) {
                Ok(0) => break,
                Ok(_) => continue,
                // Closed with the bytes it sent unread.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a connection was not closed by the node: {e}"),
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "closed at the deadline: {:?}",
        started.elapsed()
    );
    drop(held);
    // 20,000 more connection attempts, each closed by this side at once.
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..5_000 {
                    if let Ok(s) = TcpStream::connect(addr) {
                        drop(s);
                    }
                }
            });
        }
    });
    eprintln!("20,000 connections in {:?}", t.elapsed());
    wait_until(
        "the node has closed what it accepted",
        Duration::from_secs(15),
        || c.nodes[0].metric("orch_cluster_unauthenticated_connections") == Some(0.0),
    )
    .unwrap();
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    let lines = log.lines().count() - log_before;
    assert!(lines < 300, "{lines} log lines for 21,040 connections");
    let refused: f64 = [
        "too_many_unauthenticated",
        "too_many_from_source",
        "handshake_timeout",
        "frame_too_large_before_auth",
    ]
    .iter()
    .map(|r| {
        c.nodes[0]
            .metric(&format!(
                "orch_cluster_connections_refused_total{{reason=\"{r}\"}}"
            ))
            .unwrap_or(0.0)
    })
    .sum();
    assert!(refused >= 1000.0, "refusals counted by reason: {refused}");
    let grown = rss_flood.saturating_sub(rss_before);
    eprintln!(
        "RSS {} MB before, {} MB during the flood; {lines} log lines; {refused} refusals",
        rss_before >> 20,
        rss_flood >> 20
    );
    assert!(grown < 50 << 20, "RSS grew by {} MB", grown >> 20);
    // The cluster still works.
    assert!(c.nodes[0].is_running() && c.nodes[1].is_running());
    c.wait_for("node-1 still healthy", Duration::from_secs(5), |ws| {
        all_healthy(ws, &["node-0", "node-1"])
    })
    .unwrap();
}

#[test]
fn a_missing_config_file_is_exit_2() {
    let out = Command::new(bins!().node)
        .args(["--cluster", "/nonexistent/cluster.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/cluster.toml") && err.contains("readable"),
        "{err}"
    );
}

#[test]
fn a_peer_with_the_wrong_secret_is_refused_and_both_keep_running() {
    let mut c = TestCluster::new(bins!());
    let mport = free_port();
    c.add_with_port(NodeSpec::new("node-0").master(), mport)
        .unwrap();
    let mut bad = NodeSpec::new("intruder").peer(format!("127.0.0.1:{mport}"));
    bad.secret = "not-the-secret".into();
    c.add(bad).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.nodes[0]
        .metric("orch_cluster_auth_failures_total")
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "auth failure counted within 5 s\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The intruder never registers; both processes still run.
    let ws = c.workers().unwrap();
    assert!(ws.iter().all(|w| w["node"] != "intruder"), "{ws:?}");
    assert!(c.nodes[0].is_running() && c.nodes[1].is_running());
    assert!(
        c.nodes[1]
            .metric("orch_cluster_auth_failures_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    // A good peer still joins.
    c.add(NodeSpec::new("node-1").peer(format!("127.0.0.1:{mport}")))
        .unwrap();
    c.wait_for(
        "node-1 joins despite the intruder",
        Duration::from_secs(5),
        |ws| all_healthy(ws, &["node-0", "node-1"]),
    )
    .unwrap();
}

/// Send `bytes` to the cluster port and expect the connection to be dropped.
fn expect_dropped(addr: std::net::SocketAddr, bytes: &[u8], what: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The peer may close while we write: that is the expected outcome too.
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e)
            if e.kind() != std::io::ErrorKind::WouldBlock
                && e.kind() != std::io::ErrorKind::TimedOut => {}
        other => panic!("{what}: connection must be dropped, got {other:?}"),
    }
}

#[test]
fn garbage_http_and_huge_length_prefix_drop_the_connection_only() {
    let mut c = TestCluster::new(bins!());
    let mport = free_port();
    c.add_with_port(NodeSpec::new("node-0").master(), mport)
        .unwrap();
    c.wait_for(
        "the master registered itself",
        Duration::from_secs(5),
        |ws| all_healthy(ws, &["node-0"]),
    )
    .unwrap();
    let addr = c.nodes[0].cluster_addr;
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    expect_dropped(addr, &garbage, "garbage bytes");
    expect_dropped(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "an HTTP request",
    );
    let mut huge = u64::MAX.to_be_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 32]);
    expect_dropped(addr, &huge, "a huge length prefix");
    // A length that fits the limit but a payload that is not protobuf.
    let mut bad = 16u64.to_be_bytes().to_vec();
    bad.extend_from_slice(&[0xffu8; 16]);
    expect_dropped(addr, &bad, "an undecodable frame");
    assert!(c.nodes[0].is_running(), "the node survives");
    // Still serving, and a good peer still joins.
    c.add(NodeSpec::new("node-1").peer(format!("127.0.0.1:{mport}")))
        .unwrap();
    c.wait_for(
        "node-1 joins after the garbage",
        Duration::from_secs(5),
        |ws| all_healthy(ws, &["node-0", "node-1"]),
    )
    .unwrap();
}

#[test]
fn admin_requests_need_the_right_token() {
    let mut c = TestCluster::new(bins!());
    let mut spec = NodeSpec::new("node-0").master();
    spec.admin_token = Some("tok-123".into());
    c.add(spec).unwrap();
    let admin = c.nodes[0].admin_addr;
    // Raw HTTP: 401 with a clear message.
    let (code, body) = orch_tests::http_get(admin, "/v1/workers", None).unwrap();
    assert_eq!(code, 401);
    assert!(body.contains("missing bearer token"), "{body}");
    let (code, body) = orch_tests::http_get(admin, "/v1/workers", Some("nope")).unwrap();
    assert_eq!(code, 401);
    assert!(body.contains("wrong bearer token"), "{body}");
    // orchctl: exit 4 and a clear message.
    let out = c.orchctl(0, &["workers"]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not authorized") && err.contains("--token-file"),
        "{err}"
    );
    let wrong = c.dir.path().join("wrong.token");
    std::fs::write(&wrong, "nope\n").unwrap();
    let out = c.orchctl(0, &["--token-file", wrong.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong bearer token"));
    // The right token works, from the file or the environment.
    let right = c.dir.path().join("node-0").join("admin.token");
    let out = c.orchctl(
        0,
        &["--token-file", right.to_str().unwrap(), "workers", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_orchctl"))
        .args(["status", "--json"])
        .env("ORCH_NODE", admin.to_string())
        .env("ORCH_TOKEN_FILE", &right)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn orchctl_reports_an_unreachable_node_and_unknown_commands() {
    let port = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_orchctl"))
        .args(["--node", &format!("127.0.0.1:{port}"), "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin endpoint"));
    let out = Command::new(env!("CARGO_BIN_EXE_orchctl"))
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn what_would_break_at_run_time_is_refused_at_start_naming_the_key() {
    let port = free_port();
    let own = |peer: &str| {
        GOOD.replace(
            "secret = \"s3cret\"",
            &format!("secret = \"s3cret\"\npeers = [\"{peer}\"]"),
        )
        .replace("127.0.0.1:PORT", &format!("127.0.0.1:{port}"))
    };
    for (text, key, expected) in [
        (
            GOOD.replace("name = \"n1\"", "name = \"..\""),
            "node.name",
            "not `.` or `..`",
        ),
        (
            GOOD.replace("name = \"n1\"", "name = \".\""),
            "node.name",
            "not `.` or `..`",
        ),
        (
            GOOD.replace("id = \"gpu0\"", "id = \"..\""),
            "device[0].id",
            "not `.` or `..`",
        ),
        (
            own(&format!("localhost:{port}")),
            "cluster.peers[0]",
            "this node's own",
        ),
        (
            own(&format!("127.0.0.1:{port}")),
            "cluster.peers[0]",
            "this node's own",
        ),
    ] {
        assert_refused(&text, key, expected);
    }
}

#[test]
fn what_would_break_at_run_time_is_refused_at_submit_as_json_naming_the_key() {
    let mut c = TestCluster::new(bins!());
    c.add(NodeSpec::new("node-0").master()).unwrap();
    let admin = c.nodes[0].admin_addr;
    let head = "name = \"s\"\nframes = { start = 0, end = 4 }\nchunk_frames = 1\n";
    let command = |rest: &str| format!("{head}[executor]\nkind = \"command\"\n{rest}");
    let long_name = "x".repeat(7_000_000);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            command("argv = [\"render\", \"{fram}\"]\n"),
            "executor.argv[1]",
            "unknown placeholder `{fram}`; known: {start}",
        ),
        (
            command("argv = [\"a\\u0000b\"]\n"),
            "executor.argv[0]",
            "no NUL",
        ),
        (
            command("argv = [\"x\"]\nenv = { \"A=B\" = \"x\" }\n"),
            "executor.env.A=B",
            "without `=`",
        ),
        (
            command("argv = [\"{session_dir}/r.sh\"]\n"),
            "executor.argv[0]",
            "give an absolute path",
        ),
        (
            format!(
                "{head}[prefer]\ngpu = 9223372036854775807\n[executor]\nkind = \"builtin:noop\"\n"
            ),
            "prefer.gpu",
            "-1000000 to 1000000",
        ),
        (
            format!("{head}[executor]\nkind = \"builtin:noop\"\n").replace("\"s\"", "\"..\""),
            "`name`",
            "not `.` or `..`",
        ),
        (
            format!("{head}[executor]\nkind = \"builtin:noop\"\n")
                .replace("\"s\"", &format!("\"{long_name}\"")),
            "`name`",
            "(7000000 bytes)",
        ),
    ];
    for (body, key, expected) in &cases {
        let (code, answer) = http_post(admin, "/v1/sessions", body.as_bytes()).unwrap();
        assert_eq!(code, 400, "{key}: {}", clip(&answer));
        let v: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{key}: not JSON ({e}): {}", clip(&answer)));
        assert_eq!(v["code"], 400);
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains(key) && error.contains(expected),
            "{key}: {error}"
        );
        assert!(error.len() <= 1100, "{key}: a {} byte error", error.len());
    }
    // A body over the limit and one that is not UTF-8: JSON too.
    let (code, answer) = http_post(admin, "/v1/sessions", &vec![b'x'; 9 << 20]).unwrap();
    assert_eq!(code, 413, "{}", clip(&answer));
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("at most 8388608 bytes"),
        "{v}"
    );
    let (code, answer) = http_post(admin, "/v1/sessions", b"name = \"\xff\"").unwrap();
    assert_eq!(code, 400);
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(v["error"].as_str().unwrap().contains("UTF-8"), "{v}");
    // Nothing of it was submitted, and the node still serves.
    let out = c.orchctl(0, &["sessions", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().map(|a| a.len()), Some(0), "{v}");
}

fn clip(s: &str) -> &str {
    &s[..s.len().min(300)]
}
