//! orch-tests: a harness that runs real `orch-node` processes on 127.0.0.1
//! (or in network namespaces), talks to them with `orchctl`, and waits with
//! deadlines that say what they wait for.
//!
//! The binaries' paths come from the caller (`env!("CARGO_BIN_EXE_orch-node")`
//! exists only in `runtime/tests/`).

pub mod netns;
pub mod webdriver;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Paths of the binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    pub node: PathBuf,
    pub ctl: PathBuf,
}

impl Bins {
    /// These binaries, unless `ORCH_TEST_NODE` and `ORCH_TEST_CTL` name
    /// others (to run a suite against another build, say the one before a
    /// fix).
    pub fn or_from_env(node: &str, ctl: &str) -> Self {
        let pick = |var: &str, default: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Self {
            node: pick("ORCH_TEST_NODE", node),
            ctl: pick("ORCH_TEST_CTL", ctl),
        }
    }
}

/// The `orch-node` and `orchctl` of the package whose integration test
/// calls it (or those `ORCH_TEST_NODE` and `ORCH_TEST_CTL` name, see
/// [`Bins::or_from_env`]).
#[macro_export]
macro_rules! bins {
    () => {
        $crate::Bins::or_from_env(
            env!("CARGO_BIN_EXE_orch-node"),
            env!("CARGO_BIN_EXE_orchctl"),
        )
    };
}

/// A free TCP port on 127.0.0.1 (bound, then released), never one this
/// process was given before: the kernel may hand a just-released port out
/// again at once, and two settings of one node would then share it.
///
/// It is taken below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`) when there is room there: a port from
/// that range can be taken as the source port of any outgoing connection
/// between now and the moment a node binds it (a test that opens 20,000
/// connections takes thousands of them), and the node would then fail to
/// start.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const BELOW_FROM: u16 = 10_000;
    if ephemeral_lo > BELOW_FROM + 2_000 {
        let span = u64::from(ephemeral_lo - BELOW_FROM);
        let seed = std::collections::hash_map::RandomState::new();
        for i in 0..1000u64 {
            let mut h = seed.build_hasher();
            h.write_u64(i);
            h.write_u32(std::process::id());
            let port = BELOW_FROM + (h.finish() % span) as u16;
            if given.contains(&port) {
                continue;
            }
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
    }
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no port on 127.0.0.1 that this process was not given before, in 1000 tries");
}

/// How one node is configured.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub master: bool,
    pub worker: bool,
    /// IP the cluster port listens on.
    pub ip: String,
    pub peers: Vec<String>,
    pub secret: String,
    pub heartbeat_ms: u64,
    pub missed_heartbeats: u32,
    pub devices: u32,
    pub admin_token: Option<String>,
    /// Run inside this network namespace.
    pub netns: Option<String>,
    pub max_concurrency: u32,
    /// `[[device]]` tables replacing the generated ones.
    pub devices_toml: Option<String>,
    /// `[store] durability` (default: the node's default, `process`).
    pub durability: Option<String>,
    /// `RUST_LOG` of the node: [`TEST_LOG`] unless changed; `None` runs the
    /// node with its own default filter (what benchmarks measure).
    pub rust_log: Option<String>,
    /// More environment variables of the node (test hooks).
    pub env: Vec<(String, String)>,
    /// TOML appended to the node's `cluster.toml` (`[[worker.check]]`, ...).
    pub extra_toml: String,
    /// More keys of its `[cluster]` table (`grace_wait_ms = 1500`, ...).
    pub cluster_toml: String,
    /// More keys of its `[admin]` table (`tls = true`, `tokens_file = ...`).
    pub admin_toml: String,
}

/// The tests' log filter: the node's default plus every ID chunk a worker
/// receives and uses (`orch::ids`, read by [`id_events`]).
pub const TEST_LOG: &str = "info,ractor=warn,ractor_cluster=error,orch::ids=debug";

impl NodeSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            master: false,
            worker: true,
            ip: "127.0.0.1".into(),
            peers: Vec::new(),
            secret: "test-secret".into(),
            heartbeat_ms: 500,
            missed_heartbeats: 3,
            devices: 2,
            admin_token: None,
            netns: None,
            max_concurrency: 4,
            devices_toml: None,
            durability: None,
            rust_log: Some(TEST_LOG.into()),
            env: Vec::new(),
            extra_toml: String::new(),
            cluster_toml: String::new(),
            admin_toml: String::new(),
        }
    }

    /// Run the node with `key=value` in its environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn master(mut self) -> Self {
        self.master = true;
        self
    }

    pub fn peer(mut self, addr: impl Into<String>) -> Self {
        self.peers.push(addr.into());
        self
    }

    pub fn heartbeat(mut self, ms: u64, missed: u32) -> Self {
        self.heartbeat_ms = ms;
        self.missed_heartbeats = missed;
        self
    }
}

/// One running (or stopped) `orch-node` process.
#[derive(Debug)]
pub struct TestNode {
    pub spec: NodeSpec,
    pub cluster_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl TestNode {
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            unsafe_kill(pid, sig);
        }
    }

    /// kill -9, and reap the process.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn sigcont(&self) {
        self.signal(libc::SIGCONT);
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Wait for the process to exit; its exit code (`None`: killed by a signal).
    pub fn wait_exit(&mut self, within: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().context("node is not running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("node `{}` did not exit within {within:?}", self.spec.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until the admin port accepts connections (the node is up).
    pub fn wait_admin(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while TcpStream::connect_timeout(&self.admin_addr, Duration::from_millis(200)).is_err() {
            if !self.is_running() {
                bail!(
                    "node `{}` exited during start:\n{}",
                    self.spec.name,
                    self.log_tail(20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node `{}` did not open its admin port within {within:?}",
                    self.spec.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The last `n` lines of this node's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Every record the node logged (its log is JSON, `--log-json`), every
    /// start included, in order. Lines that are not JSON are what the node
    /// printed outside its log (its last `error:` line, a panic's message)
    /// and are left out; a line that looks like a record and does not parse
    /// fails the test, naming it.
    pub fn log_records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with('{'))
            .map(|(i, l)| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!(
                        "{}:{}: a log line that does not parse ({e}): {l}",
                        self.log.display(),
                        i + 1
                    )
                })
            })
            .collect()
    }

    /// The records of [`Self::log_records`] whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        self.log_records()
            .into_iter()
            .filter(|r| r["fields"]["message"] == message)
            .collect()
    }

    /// Scrape `/metrics` and return the value of the first sample whose line starts with `series`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let body = http_get(self.metrics_addr, "/metrics", None).ok()?.1;
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// Raise this process's open-file limit to its hard limit (a test that
/// opens many sockets); the limit it has now.
#[allow(unsafe_code)]
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}

/// Resident memory of process `pid`, in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Send `sig` to process `pid`.
pub fn signal_pid(pid: i32, sig: i32) {
    unsafe_kill(pid, sig)
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Several nodes sharing one temporary directory.
pub struct TestCluster {
    pub bins: Bins,
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    /// Environment of every `orchctl` this cluster runs (`ORCH_CA`, ...).
    pub ctl_env: Vec<(String, String)>,
}

impl TestCluster {
    pub fn new(bins: Bins) -> Self {
        Self {
            bins,
            dir: tempfile::tempdir().expect("a temporary directory"),
            nodes: Vec::new(),
            ctl_env: Vec::new(),
        }
    }

    /// A master+worker and `workers` plain workers, all pointed at the master.
    pub fn start_standard(
        bins: Bins,
        workers: usize,
        heartbeat_ms: u64,
        missed: u32,
    ) -> Result<Self> {
        let mut c = Self::new(bins);
        let master_port = free_port();
        let mut m = NodeSpec::new("node-0")
            .master()
            .heartbeat(heartbeat_ms, missed);
        m.devices = 3;
        c.add_with_port(m, master_port)?;
        for i in 1..=workers {
            let w = NodeSpec::new(&format!("node-{i}"))
                .peer(format!("127.0.0.1:{master_port}"))
                .heartbeat(heartbeat_ms, missed);
            c.add(w)?;
        }
        Ok(c)
    }

    /// A master+worker `node-0` and `workers` workers (`node-1`...), each
    /// with `devices` devices, heartbeat 300 ms × 3, waiting until every
    /// one is healthy (15 s).
    pub fn master_and_workers(bins: Bins, workers: usize, devices: u32) -> Result<Self> {
        let mut c = Self::new(bins);
        let port = free_port();
        let mut m = NodeSpec::new("node-0").master().heartbeat(300, 3);
        m.devices = devices;
        c.add_with_port(m, port)?;
        for i in 1..=workers {
            let mut w = NodeSpec::new(&format!("node-{i}"))
                .peer(format!("127.0.0.1:{port}"))
                .heartbeat(300, 3);
            w.devices = devices;
            c.add(w)?;
        }
        c.wait_all_healthy(workers)?;
        Ok(c)
    }

    /// Wait until `node-0` ... `node-{workers}` are healthy (15 s).
    pub fn wait_all_healthy(&self, workers: usize) -> Result<Duration> {
        let names: Vec<String> = (0..=workers).map(|i| format!("node-{i}")).collect();
        self.wait_for("every worker healthy", Duration::from_secs(15), |ws| {
            all_healthy(ws, &names.iter().map(String::as_str).collect::<Vec<_>>())
        })
    }

    /// `start_standard` with two workers, 3 missed heartbeats, waiting until
    /// node-0, node-1 and node-2 are healthy (10 s).
    pub fn three_healthy(bins: Bins, heartbeat_ms: u64) -> Result<Self> {
        let c = Self::start_standard(bins, 2, heartbeat_ms, 3)?;
        c.wait_for("3 healthy workers", Duration::from_secs(10), |ws| {
            all_healthy(ws, &THREE)
        })?;
        Ok(c)
    }

    pub fn add(&mut self, spec: NodeSpec) -> Result<usize> {
        self.add_with_port(spec, free_port())
    }

    /// Write the node's config and start it; returns its index.
    pub fn add_with_port(&mut self, spec: NodeSpec, cluster_port: u16) -> Result<usize> {
        let i = self.launch(spec, cluster_port)?;
        if self.nodes[i].spec.netns.is_none() {
            self.nodes[i].wait_admin(Duration::from_secs(10))?;
        }
        Ok(i)
    }

    /// Write the node's config and start it, without waiting for it to
    /// open its admin port (a node expected to stop at once); its index.
    pub fn launch(&mut self, spec: NodeSpec, cluster_port: u16) -> Result<usize> {
        let dir = self.dir.path().join(&spec.name);
        std::fs::create_dir_all(&dir)?;
        let cluster_addr: SocketAddr = format!("{}:{cluster_port}", spec.ip).parse()?;
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let config = dir.join("cluster.toml");
        std::fs::write(
            &config,
            render_config(&spec, &dir, cluster_addr, admin_addr, metrics_addr),
        )?;
        let mut node = TestNode {
            spec,
            cluster_addr,
            admin_addr,
            metrics_addr,
            log: dir.join("node.log"),
            config,
            child: None,
            starts: 0,
        };
        self.spawn_process(&mut node)?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// Start a node from configuration text of the caller's: `config` gets
    /// the node's own folder (for `data_dir`) and returns the file's text,
    /// whose ports must be the three given.
    pub fn add_config(
        &mut self,
        name: &str,
        addrs: (SocketAddr, SocketAddr, SocketAddr),
        config: impl FnOnce(&Path) -> String,
    ) -> Result<usize> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("cluster.toml");
        std::fs::write(&path, config(&dir))?;
        let (cluster_addr, admin_addr, metrics_addr) = addrs;
        let mut node = TestNode {
            spec: NodeSpec::new(name),
            cluster_addr,
            admin_addr,
            metrics_addr,
            log: dir.join("node.log"),
            config: path,
            child: None,
            starts: 0,
        };
        self.spawn(&mut node)?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn spawn(&self, node: &mut TestNode) -> Result<()> {
        self.spawn_process(node)?;
        if node.spec.netns.is_none() {
            node.wait_admin(Duration::from_secs(10))?;
        }
        Ok(())
    }

    fn spawn_process(&self, node: &mut TestNode) -> Result<()> {
        node.starts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let mut cmd = match &node.spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bins.node);
                c
            }
            None => Command::new(&self.bins.node),
        };
        cmd.arg("--cluster").arg(&node.config).arg("--log-json");
        match &node.spec.rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        cmd.envs(node.spec.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        node.child = Some(cmd.spawn().context("start orch-node")?);
        Ok(())
    }

    /// Start a node again (after kill9), with the same config.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let mut node = std::mem::replace(&mut self.nodes[i], placeholder());
        let r = self.spawn(&mut node);
        self.nodes[i] = node;
        r
    }

    pub fn node(&mut self, name: &str) -> &mut TestNode {
        self.nodes
            .iter_mut()
            .find(|n| n.spec.name == name)
            .unwrap_or_else(|| panic!("no node `{name}`"))
    }

    /// Run `orchctl --node <admin of node i> ARGS`.
    pub fn orchctl(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bins.ctl);
        cmd.arg("--node").arg(self.nodes[i].admin_addr.to_string());
        cmd.args(args)
            .env_remove("ORCH_NODE")
            .env_remove("ORCH_TOKEN_FILE")
            .env_remove("ORCH_CA")
            .envs(self.ctl_env.iter().map(|(k, v)| (k, v)));
        cmd.output().expect("run orchctl")
    }

    /// `orchctl workers --json` through node 0 (the master), parsed.
    pub fn workers(&self) -> Result<Vec<Value>> {
        let out = self.orchctl(0, &["workers", "--json"]);
        if !out.status.success() {
            bail!(
                "orchctl workers failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice::<Vec<Value>>(&out.stdout)?)
    }

    /// The master's view of one worker.
    pub fn worker(&self, name: &str) -> Option<Value> {
        self.workers().ok()?.into_iter().find(|w| w["node"] == name)
    }

    /// Poll `cond` over the master's worker list every 50 ms until it holds
    /// or `within` passes; on timeout fail with `what`, the last list and logs.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        cond: impl Fn(&[Value]) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last = Vec::new();
        while start.elapsed() < within {
            if let Ok(ws) = self.workers() {
                if cond(&ws) {
                    return Ok(start.elapsed());
                }
                last = ws;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "timed out after {within:?} waiting for: {what}\nlast worker list: {}\n{}",
            serde_json::to_string_pretty(&last).unwrap_or_default(),
            self.logs()
        )
    }

    /// Submit a session (TOML text) through node 0; its id.
    pub fn submit(&self, name: &str, toml: &str) -> Result<String> {
        let f = self.dir.path().join(format!("{name}.session.toml"));
        std::fs::write(&f, toml)?;
        let out = self.orchctl(0, &["submit", f.to_str().context("utf-8 path")?, "--json"]);
        if !out.status.success() {
            bail!(
                "orchctl submit failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v["id"].as_str().context("an id")?.to_string())
    }

    /// `orchctl session ID --json`.
    pub fn session(&self, id: &str) -> Result<Value> {
        let out = self.orchctl(0, &["session", id, "--json"]);
        if !out.status.success() {
            bail!(
                "orchctl session failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `sessions/{id}/manifest.json` in the `data_dir` of node `node`, parsed.
    pub fn manifest_file(&self, node: &str, id: &str) -> Result<Value> {
        let file = self
            .dir
            .path()
            .join(node)
            .join("data/sessions")
            .join(id)
            .join("manifest.json");
        let text =
            std::fs::read_to_string(&file).with_context(|| format!("read `{}`", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse `{}`", file.display()))
    }

    /// `orchctl manifest ID --json`.
    pub fn manifest(&self, id: &str) -> Result<Value> {
        let out = self.orchctl(0, &["manifest", id, "--json"]);
        if !out.status.success() {
            bail!(
                "orchctl manifest failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Poll a session every 100 ms until `cond` holds or `within` passes.
    pub fn wait_session(
        &self,
        id: &str,
        what: &str,
        within: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.poll_json(|| self.session(id), "session view", what, within, cond)
    }

    /// Poll a session's manifest every 100 ms until `cond` holds or `within`
    /// passes; the manifest that satisfied it.
    pub fn wait_for_manifest(
        &self,
        id: &str,
        what: &str,
        within: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.poll_json(|| self.manifest(id), "manifest", what, within, cond)
    }

    /// Read `read` every 100 ms until `cond` holds on it or `within` passes;
    /// the error names `what` and shows the last `kind` read.
    fn poll_json(
        &self,
        read: impl Fn() -> Result<Value>,
        kind: &str,
        what: &str,
        within: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < within {
            if let Ok(v) = read() {
                if cond(&v) {
                    return Ok(v);
                }
                last = v;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "timed out after {within:?} waiting for: {what}\nlast {kind}: {last}\n{}",
            self.logs()
        )
    }

    /// Wait until session `id` ends; its final view.
    pub fn wait_done(&self, id: &str, within: Duration) -> Result<Value> {
        self.wait_session(id, "the session ends", within, |v| v["state"] != "running")
    }

    /// The tail of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let _ = writeln!(s, "---- log of {} ----\n{}", n.spec.name, n.log_tail(30));
        }
        s
    }
}

fn placeholder() -> TestNode {
    TestNode {
        spec: NodeSpec::new("placeholder"),
        cluster_addr: "127.0.0.1:1".parse().unwrap(),
        admin_addr: "127.0.0.1:1".parse().unwrap(),
        metrics_addr: "127.0.0.1:1".parse().unwrap(),
        config: PathBuf::new(),
        log: PathBuf::new(),
        child: None,
        starts: 0,
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.sigcont();
            n.kill9();
        }
        // A failed test keeps its nodes' configs, logs and stores to read.
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "test failed: the nodes' configs, logs and stores are kept in {}",
                self.dir.path().display()
            );
        }
    }
}

/// Whether process `pid` is running (a zombie is not).
pub fn process_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Poll `cond` every 20 ms until it holds or `within` passes; on timeout
/// fail with `what`. Returns how long it took.
pub fn wait_until(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("timed out after {within:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file a node wrote for a session under `{data_dir}/out/` is
/// listed by the manifest for the attempt whose folder holds it (the rest
/// must have been moved to quarantine). `Err` names the first file that is
/// not.
pub fn outputs_accounted(data_dir: &Path, manifest: &Value) -> Result<usize> {
    use std::collections::BTreeSet;
    let session = manifest["session"].as_str().context("session")?;
    let mut listed: BTreeSet<String> = BTreeSet::new();
    for r in manifest["ranges"].as_array().context("ranges")? {
        let dir = r["out_dir"].as_str().context("out_dir")?;
        for o in r["outputs"].as_array().context("outputs")? {
            listed.insert(format!("{dir}/{}", o["path"].as_str().context("path")?));
        }
    }
    let root = data_dir.join("out").join(session);
    let mut stack = vec![root];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(path);
                continue;
            }
            let rel = path
                .strip_prefix(data_dir)
                .context("inside data_dir")?
                .to_string_lossy()
                .into_owned();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".tmp") {
                continue;
            }
            if !listed.contains(&rel) {
                bail!("`{rel}` is in out/ but listed nowhere in the manifest");
            }
            n += 1;
        }
    }
    Ok(n)
}

/// The nodes of `TestCluster::three_healthy`.
pub const THREE: [&str; 3] = ["node-0", "node-1", "node-2"];

/// A session of `frames` frames in chunks of `chunk`, `ms` per frame on the
/// builtin sleep executor, with ID chunks of 10.
pub fn sleep_session(name: &str, frames: u64, chunk: u64, ms: u64) -> String {
    format!(
        "name = \"{name}\"\nframes = {{ start = 0, end = {frames} }}\nchunk_frames = {chunk}\nid_chunk_size = 10\n[executor]\nkind = \"builtin:sleep\"\nms_per_frame = {ms}\n"
    )
}

/// `node` is healthy in `ws` under an epoch newer than `epoch_before`: it
/// came back after being declared unhealthy.
pub fn rejoined(ws: &[Value], node: &str, epoch_before: u64) -> bool {
    ws.iter().any(|w| {
        w["node"] == node
            && w["state"] == "healthy"
            && w["epoch"].as_u64().is_some_and(|e| e > epoch_before)
    })
}

/// Every worker named in `names` is healthy in `ws`.
pub fn all_healthy(ws: &[Value], names: &[&str]) -> bool {
    names.iter().all(|n| {
        ws.iter()
            .any(|w| w["node"] == *n && w["state"] == "healthy")
    })
}

/// `name` is in `state` (and, when given, with `reason`).
pub fn has_state(ws: &[Value], name: &str, state: &str, reason: Option<&str>) -> bool {
    ws.iter().any(|w| {
        w["node"] == name && w["state"] == state && reason.is_none_or(|r| w["reason"] == r)
    })
}

/// Render a node's cluster.toml.
pub fn render_config(
    spec: &NodeSpec,
    dir: &Path,
    cluster: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
) -> String {
    let mut roles = Vec::new();
    if spec.master {
        roles.push("\"master\"");
    }
    if spec.worker {
        roles.push("\"worker\"");
    }
    let peers: Vec<String> = spec.peers.iter().map(|p| format!("\"{p}\"")).collect();
    let token = match &spec.admin_token {
        Some(t) => {
            let f = dir.join("admin.token");
            std::fs::write(&f, t).expect("write token file");
            format!("token_file = \"{}\"\n", f.display())
        }
        None => String::new(),
    };
    let devices = if let Some(d) = &spec.devices_toml {
        d.clone()
    } else if spec.worker {
        format!(
            "[[device]]\ncount = {}\nid_prefix = \"{}-dev-\"\ncapabilities = {{ gpu = false }}\n",
            spec.devices, spec.name
        )
    } else {
        String::new()
    };
    format!(
        r#"[node]
name = "{name}"
roles = [{roles}]
listen = "{cluster}"
data_dir = "{data}"

[cluster]
secret = "{secret}"
peers = [{peers}]
heartbeat_ms = {hb}
missed_heartbeats = {missed}
{cluster_extra}

[worker]
max_concurrency = {max_concurrency}

{devices}
[admin]
listen = "{admin}"
{token}{admin_extra}
[metrics]
listen = "{metrics}"
{store}
{extra}"#,
        name = spec.name,
        roles = roles.join(", "),
        data = dir.join("data").display(),
        secret = spec.secret,
        peers = peers.join(", "),
        hb = spec.heartbeat_ms,
        missed = spec.missed_heartbeats,
        max_concurrency = spec.max_concurrency,
        extra = spec.extra_toml,
        cluster_extra = spec.cluster_toml,
        admin_extra = spec.admin_toml,
        store = spec
            .durability
            .as_ref()
            .map(|d| format!("\n[store]\ndurability = \"{d}\"\n"))
            .unwrap_or_default(),
    )
}

/// A minimal HTTP/1.1 GET: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    http_request(addr, "GET", path, token, None)
}

/// A minimal HTTP/1.1 POST of `body`: (status code, body).
pub fn http_post(addr: SocketAddr, path: &str, body: &[u8]) -> Result<(u16, String)> {
    http_request(addr, "POST", path, None, Some(body))
}

fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let length = body
        .map(|b| format!("Content-Length: {}\r\n", b.len()))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{length}Connection: close\r\n\r\n"
    )?;
    if let Some(b) = body {
        // The server may answer (413) and close before reading it all.
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let buf = String::from_utf8_lossy(&raw).into_owned();
    let code = buf
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("an HTTP status line")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((code, body))
}

fn range(v: &Value) -> (u64, u64) {
    (
        v["start"].as_u64().expect("start"),
        v["end"].as_u64().expect("end"),
    )
}

/// Every frame of `[start, end)` is in exactly one produced range or
/// one failed range. Returns the number of produced frames.
pub fn assert_exactly_once(manifest: &Value, start: u64, end: u64) -> u64 {
    let mut spans: Vec<(u64, u64, &str)> = Vec::new();
    for r in manifest["ranges"].as_array().expect("ranges") {
        let (s, e) = range(&r["frames"]);
        spans.push((s, e, "produced"));
    }
    for r in manifest["failed"].as_array().expect("failed") {
        let (s, e) = range(&r["frames"]);
        spans.push((s, e, "failed"));
    }
    spans.sort();
    let mut at = start;
    let mut produced = 0;
    for (s, e, kind) in &spans {
        assert!(s < e, "empty {kind} range [{s}, {e})");
        assert_eq!(
            *s, at,
            "frames [{at}, {s}) missing or overlapping at a {kind} range [{s}, {e})"
        );
        if *kind == "produced" {
            produced += e - s;
        }
        at = *e;
    }
    assert_eq!(at, end, "frames [{at}, {end}) missing");
    produced
}

/// The ID ranges used by produced ranges never overlap.
pub fn assert_ids_disjoint(manifest: &Value) {
    let mut ids: Vec<(u64, u64)> = manifest["ranges"]
        .as_array()
        .expect("ranges")
        .iter()
        .map(|r| {
            let lo = r["ids"]["lo"].as_u64().expect("lo");
            let used = r["ids_used"].as_u64().unwrap_or(lo);
            (lo, used)
        })
        .filter(|(lo, hi)| hi > lo)
        .collect();
    ids.sort();
    for w in ids.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "ID ranges overlap: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}

/// Most tasks that ran at once, from manifest timestamps, per key (`node` or `device`).
pub fn max_overlap(manifest: &Value, key: &str) -> std::collections::BTreeMap<String, usize> {
    let mut events: std::collections::BTreeMap<String, Vec<(u64, i32)>> = Default::default();
    for r in manifest["ranges"].as_array().expect("ranges") {
        let k = match key {
            "device" => format!(
                "{}/{}",
                r["node"].as_str().unwrap_or(""),
                r["device"].as_str().unwrap_or("")
            ),
            _ => r[key].as_str().unwrap_or("").to_string(),
        };
        let e = events.entry(k).or_default();
        // Ends sort before starts at the same millisecond: [start, end) intervals.
        e.push((r["started_ms"].as_u64().expect("started"), 1));
        e.push((r["finished_ms"].as_u64().expect("finished"), -1));
    }
    events
        .into_iter()
        .map(|(k, mut ev)| {
            ev.sort();
            let (mut cur, mut max) = (0i32, 0i32);
            for (_, d) in ev {
                cur += d;
                max = max.max(cur);
            }
            (k, max as usize)
        })
        .collect()
}

/// One `orch::ids` line of a worker's log: an ID chunk it received, or an
/// attempt it finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdEvent {
    pub node: String,
    pub session: String,
    pub task: u64,
    pub attempt: u64,
    /// `Some((lo, hi))` for "chunk received".
    pub chunk: Option<(u64, u64)>,
    /// `Some(completed)` for "attempt finished".
    pub finished: Option<bool>,
    /// The last ID an attempt reported using ("attempt finished").
    pub last_id: Option<u64>,
}

/// Every `orch::ids` record in the logs of every node, every start
/// included. A record without the fields it must carry fails the test.
pub fn id_events(cluster: &TestCluster) -> Vec<IdEvent> {
    let mut out = Vec::new();
    for n in &cluster.nodes {
        for r in n
            .log_records()
            .into_iter()
            .filter(|r| r["target"] == "orch::ids")
        {
            let f = &r["fields"];
            let text = |k: &str| {
                f[k].as_str()
                    .unwrap_or_else(|| panic!("`orch::ids` record without `{k}`: {r}"))
                    .to_string()
            };
            let num = |k: &str| {
                f[k].as_u64()
                    .unwrap_or_else(|| panic!("`orch::ids` record without a number `{k}`: {r}"))
            };
            let message = text("message");
            let (chunk, finished, last_id) =
                match message.as_str() {
                    "chunk received" => (Some((num("id_lo"), num("id_hi"))), None, None),
                    "attempt finished" => (
                        None,
                        Some(f["completed"].as_bool().unwrap_or_else(|| {
                            panic!("`attempt finished` without `completed`: {r}")
                        })),
                        f["last_id_used"].as_u64(),
                    ),
                    other => panic!("an `orch::ids` record of an unknown kind `{other}`: {r}"),
                };
            out.push(IdEvent {
                node: text("node_id"),
                session: text("session"),
                task: num("task"),
                attempt: num("attempt"),
                chunk,
                finished,
                last_id,
            });
        }
    }
    out
}

/// No ID was issued twice: every attempt any worker received kept one chunk
/// whenever it was received; the chunks workers received are pairwise
/// disjoint (apart from the reported-unused tail of a failed attempt); and
/// each range of the manifest carries the chunk its worker received.
/// Returns how many chunks were checked.
pub fn assert_no_id_issued_twice(events: &[IdEvent], manifest: &Value) -> usize {
    use std::collections::BTreeMap;
    let mut chunks: BTreeMap<(String, u64, u64), (u64, u64)> = BTreeMap::new();
    for e in events {
        if let Some(c) = e.chunk {
            let key = (e.session.clone(), e.task, e.attempt);
            if let Some(prev) = chunks.insert(key.clone(), c) {
                assert_eq!(prev, c, "attempt {key:?} received two different ID chunks");
            }
        }
    }
    // A failed attempt that reported the last ID it used keeps the chunk
    // up to it, and the rest may be issued again; every other chunk a
    // worker received (a failed attempt that reported nothing included)
    // is its own for good.
    let failed: BTreeMap<(String, u64, u64), Option<u64>> = events
        .iter()
        .filter(|e| e.finished == Some(false))
        .map(|e| ((e.session.clone(), e.task, e.attempt), e.last_id))
        .collect();
    let mut held: Vec<(u64, u64, String)> = chunks
        .iter()
        .map(|(k, c)| {
            let hi = match failed.get(k) {
                Some(Some(last)) => (last + 1).clamp(c.0, c.1),
                _ => c.1,
            };
            (c.0, hi, format!("{k:?}"))
        })
        .filter(|(lo, hi, _)| hi > lo)
        .collect();
    held.sort();
    for w in held.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "two attempts received overlapping ID chunks: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
    let session = manifest["session"].as_str().unwrap_or_default().to_string();
    for r in manifest["ranges"].as_array().expect("ranges") {
        let key = (
            session.clone(),
            r["task"].as_u64().expect("task"),
            r["attempt"].as_u64().expect("attempt"),
        );
        let lo = r["ids"]["lo"].as_u64().expect("lo");
        let hi = r["ids"]["hi"].as_u64().expect("hi");
        let got = chunks.get(&key);
        assert_eq!(
            got,
            Some(&(lo, hi)),
            "manifest range of {key:?} has chunk {:?}, the worker received {got:?}",
            (lo, hi)
        );
    }
    assert_ids_disjoint(manifest);
    chunks.len()
}

/// Frames a worker completed more than once, outside every range the
/// manifest's `replay` section lists: should be empty.
pub fn rerun_outside_replay(events: &[IdEvent], manifest: &Value) -> Vec<String> {
    use std::collections::BTreeMap;
    let session = manifest["session"].as_str().unwrap_or_default();
    // Which frames each attempt covered: from the manifest's ranges and replay records.
    let mut runs: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.finished == Some(true) && e.session == session)
    {
        let v = runs.entry(e.task).or_default();
        if !v.contains(&e.attempt) {
            v.push(e.attempt);
        }
    }
    let replayed: Vec<(u64, u64)> = manifest["replay"]
        .as_array()
        .expect("replay")
        .iter()
        .map(|r| {
            (
                r["task"].as_u64().expect("a replay record's task"),
                r["old_attempt"]
                    .as_u64()
                    .expect("a replay record's old_attempt"),
            )
        })
        .collect();
    let mut bad = Vec::new();
    for (task, attempts) in runs {
        if attempts.len() < 2 {
            continue;
        }
        // Every completed attempt but the last must have been replaced with a reason.
        let last = *attempts.iter().max().expect("non-empty");
        for a in attempts.iter().filter(|a| **a != last) {
            if !replayed.contains(&(task, *a)) {
                bad.push(format!("task {task} attempt {a} completed, then ran again as attempt {last} with no replay record"));
            }
        }
    }
    bad
}

/// The sha256 of `bytes`, in lowercase hex (as manifests record it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_given_twice_in_a_process() {
        let mut ports: Vec<u16> = (0..300).map(|_| super::free_port()).collect();
        ports.sort_unstable();
        let n = ports.len();
        ports.dedup();
        assert_eq!(ports.len(), n, "a port was given twice");
    }

    #[test]
    fn free_ports_are_below_the_ephemeral_range_when_there_is_room() {
        let lo: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        if lo < 12_000 {
            eprintln!("!!! the ephemeral range starts at {lo}: nothing to check");
            return;
        }
        for _ in 0..100 {
            let p = super::free_port();
            assert!((10_000..lo).contains(&p), "{p} is not below {lo}");
        }
    }
}
