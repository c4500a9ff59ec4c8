//! `cluster.toml`: parsing and validation (docs/operating.md).
//!
//! serde with `deny_unknown_fields` gives the shape; [`RawConfig::validate`]
//! then checks every value and returns every problem, each as one line naming
//! the file, the key and what was expected.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use orch_actors::protocol::{CapValue, Capabilities, DeviceInfo};
use serde::Deserialize;

/// Largest TOML file read (a configuration or a session file).
pub const MAX_TOML_BYTES: u64 = 4 * 1024 * 1024;
/// Largest secret or token file read.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Read a file named by an operator: only a regular file of at most `cap`
/// bytes (a FIFO, a device such as `/dev/zero`, a directory or a huge file
/// is refused at once). Opened without blocking, then checked, so a path
/// swapped for a FIFO meanwhile cannot hang the read.
pub fn read_capped(path: &Path, cap: u64) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read it: {e}"))?;
    let t = meta.file_type();
    let kind = if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Err(format!("expected a regular file, got {kind}"));
    }
    if meta.len() > cap {
        return Err(format!(
            "too large: expected at most {cap} bytes, the file has {}",
            meta.len()
        ));
    }
    let mut bytes = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > cap {
        return Err(format!(
            "expected at most {cap} bytes, the file grew past it"
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "expected UTF-8 text, found an invalid byte at offset {}",
            e.utf8_error().valid_up_to()
        )
    })
}

/// Largest `count` of one device generator.
pub const MAX_GENERATED_DEVICES: u32 = 100_000;
/// Largest total number of devices on one node.
pub const MAX_DEVICES: usize = 100_000;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{key}` in `{file}`: {expected}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub expected: String,
}

/// Every problem found in one file; `Display` prints one line each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A secret that never shows up in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub worker: WorkerConfig,
    pub devices: Vec<DeviceInfo>,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    pub store: StoreConfig,
    /// Where the node's events are delivered (docs/pipelines.md, webhooks).
    pub webhooks: Vec<WebhookConfig>,
}

/// One `[[webhook]]`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub name: String,
    /// `http://host:port/path` or `https://…`.
    pub url: String,
    /// Event type patterns (`pipeline.*`); empty: every event.
    pub events: Vec<String>,
    /// Signs each delivery (HMAC-SHA256 of the body).
    pub secret: Secret,
    /// For `https://`: trust this CA (a private receiver) instead of the
    /// public roots.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// What a commit of the master's store and the workers' outboxes survives.
    pub durability: crate::store::Durability,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub master: bool,
    pub worker: bool,
    pub listen: SocketAddr,
    pub advertise: String,
    pub data_dir: PathBuf,
    /// The data plane's listener (files and logs between nodes,
    /// docs/collection.md); port 0: any free port, advertised in `Register`.
    pub data_listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub secret: Secret,
    pub peers: Vec<String>,
    pub heartbeat_ms: u64,
    pub missed_heartbeats: u32,
    pub online_window_s: u64,
    pub grace_wait_ms: u64,
    /// Mutual TLS between nodes and on the data plane (`cluster.tls`), loaded and checked.
    pub tls: Option<crate::tls::Tls>,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub max_concurrency: u32,
    /// Cap of each attempt's log (docs/logs.md).
    pub log_max_bytes: u64,
    /// Delete an output once its collector has a verified copy
    /// (docs/collection.md); by default the worker keeps it.
    pub delete_collected: bool,
    pub capabilities: Capabilities,
    pub checks: Vec<NodeCheck>,
    /// Discovery sources (`[[device_source]]`).
    pub sources: Vec<crate::device_sources::DeviceSource>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer tokens (`token_file`, `tokens_file`); none only when
    /// `listen` is a loopback address.
    pub tokens: crate::tokens::Tokens,
    /// Serve HTTPS with the node's certificate (`admin.tls`).
    pub tls: bool,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

// ---- the file's shape ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    node: RawNode,
    cluster: RawCluster,
    #[serde(default)]
    worker: RawWorker,
    #[serde(default, rename = "device")]
    devices: Vec<RawDevice>,
    #[serde(default, rename = "device_source")]
    device_sources: Vec<RawSource>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    store: RawStore,
    #[serde(default, rename = "webhook")]
    webhooks: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    name: Option<String>,
    url: String,
    #[serde(default)]
    events: Vec<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default = "default_durability")]
    durability: String,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            durability: default_durability(),
        }
    }
}

fn default_durability() -> String {
    "process".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    roles: Option<Vec<String>>,
    listen: String,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    data_listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    #[serde(default)]
    peers: Vec<String>,
    #[serde(default = "default_heartbeat_ms")]
    heartbeat_ms: u64,
    #[serde(default = "default_missed")]
    missed_heartbeats: u32,
    #[serde(default = "default_online_window_s")]
    online_window_s: u64,
    #[serde(default = "default_grace_wait_ms")]
    grace_wait_ms: u64,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    #[serde(default = "default_max_concurrency")]
    max_concurrency: u32,
    log_max_bytes: Option<u64>,
    #[serde(default)]
    delete_collected: bool,
    #[serde(default)]
    capabilities: BTreeMap<String, toml::Value>,
    /// Node checks (`[[worker.check]]`).
    #[serde(default)]
    check: Vec<RawCheck>,
}

impl Default for RawWorker {
    fn default() -> Self {
        Self {
            max_concurrency: default_max_concurrency(),
            log_max_bytes: None,
            delete_collected: false,
            capabilities: BTreeMap::new(),
            check: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    argv: Vec<String>,
    #[serde(default = "default_check_every")]
    every_s: u64,
    #[serde(default = "default_check_timeout")]
    timeout_ms: u64,
}

fn default_check_every() -> u64 {
    30
}
fn default_check_timeout() -> u64 {
    10_000
}

/// A node check (`[[worker.check]]`, docs/operating.md): a program run at
/// start and every `every_s` seconds; while one exits non-zero (or runs
/// past `timeout_ms`) the worker is in status `error` and takes no new work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCheck {
    pub name: String,
    pub argv: Vec<String>,
    pub every_s: u64,
    pub timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: Option<String>,
    handle: Option<String>,
    count: Option<u32>,
    id_prefix: Option<String>,
    #[serde(default)]
    capabilities: BTreeMap<String, toml::Value>,
}

/// A discovery source (`[[device_source]]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    command: Option<Vec<String>>,
    builtin: Option<String>,
    #[serde(default = "default_source_every")]
    every_s: u64,
    #[serde(default = "default_source_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    capabilities: BTreeMap<String, toml::Value>,
}

fn default_source_every() -> u64 {
    10
}
fn default_source_timeout() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    listen: String,
    token_file: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    #[serde(default)]
    tls: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token_file: None,
            tokens_file: None,
            tls: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_metrics_listen")]
    listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            listen: default_metrics_listen(),
        }
    }
}

fn default_heartbeat_ms() -> u64 {
    1000
}
fn default_missed() -> u32 {
    3
}
fn default_online_window_s() -> u64 {
    30
}
fn default_grace_wait_ms() -> u64 {
    15_000
}
fn default_max_concurrency() -> u32 {
    20
}
fn default_admin_listen() -> String {
    "127.0.0.1:7701".into()
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9100".into()
}

/// Read, parse and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let (file, text, base) = read_toml_file(path)?;
    parse(&text, &file, &base)
}

/// Read a TOML file: its name for messages, its text, and its folder made
/// absolute (relative paths in the file resolve against it).
pub fn read_toml_file(path: &Path) -> Result<(String, String, PathBuf), ConfigErrors> {
    let file = path.display().to_string();
    let text = read_capped(path, MAX_TOML_BYTES).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            expected: format!("a readable TOML file: {e}"),
        }])
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    Ok((file, text, dir))
}

/// Parse and validate configuration text; relative paths resolve against `base`.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = parse_toml(text, file)?;
    raw.validate(file, base)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// Parse TOML into `T`, mapping shape errors to one line with key and position.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
) -> Result<T, ConfigErrors> {
    let shape_error = |key: String, err: &toml::de::Error| {
        let at = err
            .span()
            .map(|s| {
                let (l, c) = line_col(text, s.start);
                format!(" (line {l}, column {c})")
            })
            .unwrap_or_default();
        let msg = clip(&err.message().trim().replace('\n', " "), 512);
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            key: shown(&key),
            expected: format!("{msg}{at}"),
        }])
    };
    let de = toml::de::Deserializer::parse(text).map_err(|e| shape_error("(syntax)".into(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." {
            "(top level)".to_string()
        } else {
            path
        };
        shape_error(key, e.inner())
    })
}

struct Problems<'a> {
    file: &'a str,
    list: Vec<ConfigError>,
}

impl Problems<'_> {
    fn add(&mut self, key: impl Into<String>, expected: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_string(),
            key: shown(&key.into()),
            expected: clip(&expected.into(), 512),
        });
    }

    fn socket_addr(&mut self, key: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.add(
                    key,
                    format!(
                        "expected an `IP:port` address such as `127.0.0.1:7700`, got `{}`",
                        shown(value)
                    ),
                );
                None
            }
        }
    }

    fn host_port(&mut self, key: &str, value: &str) -> bool {
        let ok = match value.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            }
            None => false,
        };
        if !ok {
            self.add(
                key,
                format!(
                    "expected a `host:port` address with a port from 1 to 65535, got `{}`",
                    shown(value)
                ),
            );
        }
        ok
    }

    fn read_secret(&mut self, key: &str, path: &Path) -> Option<Secret> {
        match read_capped(path, MAX_SECRET_BYTES) {
            Ok(s) if s.trim().is_empty() => {
                self.add(
                    key,
                    format!("file `{}` is empty; expected a secret", path.display()),
                );
                None
            }
            Ok(s) => Some(Secret(s.trim().to_string())),
            Err(e) => {
                self.add(key, format!("`{}`: {e}", path.display()));
                None
            }
        }
    }

    fn capabilities(&mut self, key: &str, raw: &BTreeMap<String, toml::Value>) -> Capabilities {
        let mut caps = Capabilities::new();
        for (name, v) in raw {
            let value = match v {
                toml::Value::Boolean(b) => Some(CapValue::Bool(*b)),
                toml::Value::Integer(i) => Some(CapValue::Int(*i)),
                toml::Value::String(s) => Some(CapValue::Str(s.clone())),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .map(CapValue::List),
                _ => None,
            };
            match value {
                Some(value) => {
                    caps.insert(name.clone(), value);
                }
                None => self.add(
                    format!("{key}.{name}"),
                    format!(
                        "expected a boolean, an integer, a string or a list of strings, got a {}",
                        v.type_str()
                    ),
                ),
            }
        }
        caps
    }
}

/// Whether peer `peer` (`host:port`) is this node itself: its `listen` or
/// `advertise` address, `localhost` for a node listening on loopback, or
/// any local address for a node listening on every address.
fn is_self(peer: &str, listen: SocketAddr, advertise: Option<&str>) -> bool {
    if peer.parse::<SocketAddr>().ok() == Some(listen) || Some(peer) == advertise {
        return true;
    }
    let Some((host, port)) = peer.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(listen.port()) {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = listen.ip();
    if host.eq_ignore_ascii_case("localhost") {
        return ip.is_loopback() || ip.is_unspecified();
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|h| h == ip || (ip.is_unspecified() && (h.is_loopback() || h.is_unspecified())))
}

/// A node or session name: 1 to 64 characters from `A-Z a-z 0-9 - _ .`,
/// not `.` or `..` (names become folder names).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// [`valid_name`] as one error message.
pub fn check_node_name(s: &str) -> Result<(), String> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(format!(
            "expected 1 to 64 characters from `A-Z a-z 0-9 - _ .`, not `.` or `..`, got `{}`",
            shown(s)
        ))
    }
}

pub fn valid_device_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// `text` cut to `max` characters, with `…` where it was cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max).collect();
    format!("{head}…")
}

/// A value for an error message: at most 64 characters, then `…` and the length.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        return value.to_string();
    }
    let head: String = value.chars().take(MAX).collect();
    format!("{head}… ({} bytes)", value.len())
}

impl RawConfig {
    /// Check every value; return the validated config or every problem found.
    pub fn validate(self, file: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let mut p = Problems {
            file,
            list: Vec::new(),
        };
        let resolve = |path: &Path| {
            if path.is_absolute() {
                path.to_path_buf()
            } else {
                base.join(path)
            }
        };

        // [node]
        let n = &self.node;
        if !valid_name(&n.name) {
            p.add(
                "node.name",
                format!(
                    "expected 1 to 64 characters from `A-Z a-z 0-9 - _ .`, not `.` or `..`, got `{}`",
                    shown(&n.name)
                ),
            );
        }
        // Unset roles: a node alone is a whole cluster; a node that lists
        // peers joins one, as a worker (adding a host never adds a master).
        let roles = n.roles.clone().unwrap_or_else(|| {
            if self.cluster.peers.is_empty() {
                vec!["master".into(), "worker".into()]
            } else {
                vec!["worker".into()]
            }
        });
        let mut seen = BTreeSet::new();
        for r in &roles {
            if r != "master" && r != "worker" {
                p.add(
                    "node.roles",
                    format!("expected `master` and/or `worker`, got `{}`", shown(r)),
                );
            } else if !seen.insert(r.as_str()) {
                p.add("node.roles", format!("role `{r}` is listed twice"));
            }
        }
        if roles.is_empty() {
            p.add(
                "node.roles",
                "expected at least one of `master`, `worker`, got none",
            );
        }
        let listen = p.socket_addr("node.listen", &n.listen);
        let advertise = match &n.advertise {
            Some(a) => {
                p.host_port("node.advertise", a);
                a.clone()
            }
            None => match listen {
                Some(l) if l.ip().is_unspecified() => format!("127.0.0.1:{}", l.port()),
                _ => n.listen.clone(),
            },
        };
        let data_dir = resolve(n.data_dir.as_deref().unwrap_or(Path::new("orch-data")));
        // The data plane listens where the cluster port does, on any free
        // port unless set.
        let data_listen = match &n.data_listen {
            Some(d) => p.socket_addr("node.data_listen", d),
            None => listen.map(|l| SocketAddr::new(l.ip(), 0)),
        };

        // [cluster]
        let c = &self.cluster;
        let secret = match (&c.secret, &c.secret_file) {
            (Some(_), Some(_)) => {
                p.add(
                    "cluster.secret",
                    "set either `secret` or `secret_file`, not both",
                );
                None
            }
            (Some(s), None) if s.trim().is_empty() => {
                p.add(
                    "cluster.secret",
                    "expected a non-empty secret, got an empty string",
                );
                None
            }
            (Some(s), None) => Some(Secret(s.clone())),
            (None, Some(f)) => p.read_secret("cluster.secret_file", &resolve(f)),
            (None, None) => {
                p.add(
                    "cluster.secret",
                    "missing; expected `secret` or `secret_file`",
                );
                None
            }
        };
        let mut peers = BTreeSet::new();
        for (i, peer) in c.peers.iter().enumerate() {
            let key = format!("cluster.peers[{i}]");
            if p.host_port(&key, peer) && !peers.insert(peer.clone()) {
                p.add(key, format!("peer `{}` is listed twice", shown(peer)));
            } else if listen.is_some_and(|l| is_self(peer, l, n.advertise.as_deref())) {
                p.add(
                    key,
                    format!("peer `{peer}` is this node's own `node.listen` address"),
                );
            }
        }
        if c.heartbeat_ms == 0 || c.heartbeat_ms > 600_000 {
            p.add(
                "cluster.heartbeat_ms",
                format!(
                    "expected 1 to 600000 milliseconds, got `{}`",
                    c.heartbeat_ms
                ),
            );
        }
        if c.missed_heartbeats == 0 || c.missed_heartbeats > 1000 {
            p.add(
                "cluster.missed_heartbeats",
                format!("expected 1 to 1000, got `{}`", c.missed_heartbeats),
            );
        }
        if c.online_window_s == 0 {
            p.add(
                "cluster.online_window_s",
                "expected more than 0 seconds, got `0`",
            );
        }
        if c.grace_wait_ms == 0 {
            p.add(
                "cluster.grace_wait_ms",
                "expected more than 0 milliseconds, got `0`",
            );
        }
        let tls = c.tls.as_ref().and_then(|t| {
            let paths = crate::tls::TlsPaths {
                cert: resolve(&t.cert),
                key: resolve(&t.key),
                ca: resolve(&t.ca),
            };
            match crate::tls::load(&paths, &n.name) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    p.add("cluster.tls", e);
                    None
                }
            }
        });
        if let Some(t) = &tls {
            if roles.iter().any(|r| r == "master") && !t.identity.master {
                p.add(
                    "cluster.tls",
                    format!(
                        "this node has role `master` but its certificate does not allow it; make one with `orchctl tls node DIR {} --master`",
                        n.name
                    ),
                );
            }
        }

        // [worker] and [[device]]
        let max_concurrency = self.worker.max_concurrency;
        let log_max_bytes = self
            .worker
            .log_max_bytes
            .unwrap_or(crate::task_log::DEFAULT_LOG_MAX_BYTES);
        if !(crate::task_log::MIN_LOG_MAX_BYTES..=1 << 40).contains(&log_max_bytes) {
            p.add(
                "worker.log_max_bytes",
                format!(
                    "expected {} to {} bytes, got `{log_max_bytes}`",
                    crate::task_log::MIN_LOG_MAX_BYTES,
                    1u64 << 40
                ),
            );
        }
        if max_concurrency == 0 || max_concurrency > 100_000 {
            p.add(
                "worker.max_concurrency",
                format!("expected 1 to 100000, got `{max_concurrency}`"),
            );
        }
        let worker_caps = p.capabilities("worker.capabilities", &self.worker.capabilities);
        let mut checks = Vec::new();
        let mut check_names = BTreeSet::new();
        for (i, c) in self.worker.check.iter().enumerate() {
            let key = format!("worker.check[{i}]");
            if !valid_name(&c.name) {
                p.add(
                    format!("{key}.name"),
                    format!(
                        "expected 1 to 64 characters from `A-Z a-z 0-9 - _ .`, got `{}`",
                        shown(&c.name)
                    ),
                );
            } else if !check_names.insert(c.name.clone()) {
                p.add(
                    format!("{key}.name"),
                    format!("`{}` names two checks", c.name),
                );
            }
            if c.argv.is_empty() || c.argv[0].is_empty() || c.argv.iter().any(|a| a.contains('\0'))
            {
                p.add(
                    format!("{key}.argv"),
                    "expected a non-empty list without NUL: the program and its arguments",
                );
            }
            if c.every_s == 0 || c.every_s > 86_400 {
                p.add(
                    format!("{key}.every_s"),
                    format!("expected 1 to 86400, got `{}`", c.every_s),
                );
            }
            if c.timeout_ms == 0 || c.timeout_ms > 600_000 {
                p.add(
                    format!("{key}.timeout_ms"),
                    format!("expected 1 to 600000, got `{}`", c.timeout_ms),
                );
            }
            checks.push(NodeCheck {
                name: c.name.clone(),
                argv: c.argv.clone(),
                every_s: c.every_s,
                timeout_ms: c.timeout_ms,
            });
        }
        let mut devices: Vec<DeviceInfo> = Vec::new();
        let mut ids = BTreeSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let key = format!("device[{i}]");
            let mut caps = worker_caps.clone();
            caps.extend(p.capabilities(&format!("{key}.capabilities"), &d.capabilities));
            let generated: Vec<(String, String)> = match (&d.id, d.count, &d.id_prefix) {
                (Some(id), None, None) => {
                    vec![(id.clone(), d.handle.clone().unwrap_or_else(|| id.clone()))]
                }
                (None, Some(count), Some(prefix)) => {
                    if count == 0 || count > MAX_GENERATED_DEVICES {
                        p.add(
                            format!("{key}.count"),
                            format!("expected 1 to {MAX_GENERATED_DEVICES}, got `{count}`"),
                        );
                        Vec::new()
                    } else {
                        (0..count)
                            .map(|n| {
                                let id = format!("{prefix}{n}");
                                let handle = d
                                    .handle
                                    .as_ref()
                                    .map(|h| h.replace("{n}", &n.to_string()))
                                    .unwrap_or_else(|| id.clone());
                                (id, handle)
                            })
                            .collect()
                    }
                }
                _ => {
                    p.add(
                        key.clone(),
                        "expected either `id` (one device) or both `count` and `id_prefix` (a generator)",
                    );
                    Vec::new()
                }
            };
            for (id, handle) in generated {
                if !valid_device_id(&id) {
                    p.add(
                        format!("{key}.id"),
                        format!(
                            "expected 1 to 128 characters from `A-Z a-z 0-9 - _ . :`, not `.` or `..`, got `{}`",
                            shown(&id)
                        ),
                    );
                } else if !ids.insert(id.clone()) {
                    p.add(
                        format!("{key}.id"),
                        format!("device id `{id}` is used twice"),
                    );
                } else {
                    devices.push(DeviceInfo {
                        id,
                        handle,
                        capabilities: caps.clone(),
                    });
                }
            }
        }
        if devices.len() > MAX_DEVICES {
            p.add(
                "device",
                format!(
                    "expected at most {MAX_DEVICES} devices, got {}",
                    devices.len()
                ),
            );
        }
        let mut sources = Vec::new();
        let mut source_names = BTreeSet::new();
        for (i, s) in self.device_sources.iter().enumerate() {
            use crate::device_sources::{DeviceSource, SourceKind};
            let key = format!("device_source[{i}]");
            if !valid_name(&s.name) {
                p.add(
                    format!("{key}.name"),
                    format!(
                        "expected 1 to 64 characters from `A-Z a-z 0-9 - _ .`, got `{}`",
                        shown(&s.name)
                    ),
                );
            } else if !source_names.insert(s.name.clone()) {
                p.add(
                    format!("{key}.name"),
                    format!("`{}` names two device sources", s.name),
                );
            }
            let kind = match (&s.command, s.builtin.as_deref()) {
                (Some(argv), None) => {
                    if argv.is_empty()
                        || argv[0].is_empty()
                        || argv.iter().any(|a| a.contains('\0'))
                    {
                        p.add(
                            format!("{key}.command"),
                            "expected a non-empty list without NUL: the program and its arguments",
                        );
                    }
                    Some(SourceKind::Command(argv.clone()))
                }
                (None, Some("adb")) => Some(SourceKind::Adb),
                (None, Some("nvidia")) => Some(SourceKind::Nvidia),
                (None, Some(other)) => {
                    p.add(
                        format!("{key}.builtin"),
                        format!("expected `adb` or `nvidia`, got `{}`", shown(other)),
                    );
                    None
                }
                _ => {
                    p.add(
                        key.clone(),
                        "expected either `command` (a program printing one JSON object a line) or `builtin` (`adb` or `nvidia`)",
                    );
                    None
                }
            };
            if s.every_s == 0 || s.every_s > 86_400 {
                p.add(
                    format!("{key}.every_s"),
                    format!("expected 1 to 86400, got `{}`", s.every_s),
                );
            }
            if s.timeout_ms == 0 || s.timeout_ms > 600_000 {
                p.add(
                    format!("{key}.timeout_ms"),
                    format!("expected 1 to 600000, got `{}`", s.timeout_ms),
                );
            }
            let mut caps = worker_caps.clone();
            caps.extend(p.capabilities(&format!("{key}.capabilities"), &s.capabilities));
            if let Some(kind) = kind {
                sources.push(DeviceSource {
                    name: s.name.clone(),
                    kind,
                    every_s: s.every_s,
                    timeout_ms: s.timeout_ms,
                    capabilities: caps,
                });
            }
        }
        let is_worker = roles.iter().any(|r| r == "worker");
        if is_worker && self.devices.is_empty() && self.device_sources.is_empty() {
            p.add(
                "device",
                "a node with role `worker` needs at least one `[[device]]` or `[[device_source]]`",
            );
        }

        // [admin] and [metrics]
        let admin_listen = p.socket_addr("admin.listen", &self.admin.listen);
        let token = self
            .admin
            .token_file
            .as_ref()
            .and_then(|f| p.read_secret("admin.token_file", &resolve(f)));
        let entries = match &self.admin.tokens_file {
            None => Vec::new(),
            Some(f) => {
                let path = resolve(f);
                match crate::tokens::load(&path) {
                    Ok(e) if e.is_empty() => {
                        p.add(
                            "admin.tokens_file",
                            format!(
                                "`{}` holds no `[[token]]`; add one with `orchctl token new`",
                                path.display()
                            ),
                        );
                        e
                    }
                    Ok(e) => e,
                    Err(problems) => {
                        for problem in problems {
                            p.add(
                                "admin.tokens_file",
                                format!("`{}`: {problem}", path.display()),
                            );
                        }
                        Vec::new()
                    }
                }
            }
        };
        if let Some(a) = admin_listen {
            if !a.ip().is_loopback()
                && self.admin.token_file.is_none()
                && self.admin.tokens_file.is_none()
            {
                p.add(
                    "admin.token_file",
                    format!("`admin.listen` `{a}` is not a loopback address, so a token file (`token_file` or `tokens_file`) is required"),
                );
            }
        }
        if self.admin.tls && c.tls.is_none() {
            p.add(
                "admin.tls",
                "the admin API serves TLS with the node's certificate: set `cluster.tls` too",
            );
        }
        let metrics_listen = p.socket_addr("metrics.listen", &self.metrics.listen);
        let durability = crate::store::Durability::parse(&self.store.durability);
        if durability.is_none() {
            p.add(
                "store.durability",
                format!(
                    "expected `process`, `power` or `memory`, got `{}`",
                    shown(&self.store.durability)
                ),
            );
        }
        let mut webhooks = Vec::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = |k: &str| format!("webhook[{i}].{k}");
            let name = w.name.clone().unwrap_or_else(|| format!("webhook-{i}"));
            if !valid_name(&name) || webhooks.iter().any(|o: &WebhookConfig| o.name == name) {
                p.add(
                    at("name"),
                    format!("expected a unique name of 1 to 64 characters from `A-Z a-z 0-9 - _ .`, got `{}`", shown(&name)),
                );
            }
            let https = w.url.starts_with("https://");
            let url_ok = w
                .url
                .strip_prefix("http://")
                .or_else(|| w.url.strip_prefix("https://"))
                .and_then(|rest| rest.split('/').next())
                .is_some_and(|host_port| !host_port.is_empty());
            if !url_ok
                || w.url.len() > 2048
                || w.url.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                p.add(
                    at("url"),
                    format!(
                        "expected `http://HOST[:PORT]/PATH` or `https://HOST[:PORT]/PATH`, got `{}`",
                        shown(&w.url)
                    ),
                );
            }
            for (j, t) in w.events.iter().enumerate() {
                let base = t
                    .strip_suffix(".*")
                    .or_else(|| t.strip_suffix('*'))
                    .unwrap_or(t);
                if t != "*" && !orch_actors::events::valid_type(base) {
                    p.add(
                        format!("webhook[{i}].events[{j}]"),
                        format!(
                            "expected an event type or a pattern such as `pipeline.*`, got `{}`",
                            shown(t)
                        ),
                    );
                }
            }
            let secret = match (&w.secret, &w.secret_file) {
                (Some(s), None) if !s.trim().is_empty() => Some(Secret(s.clone())),
                (None, Some(f)) => p.read_secret(&at("secret_file"), &resolve(f)),
                _ => {
                    p.add(
                        at("secret"),
                        "expected exactly one of a non-empty `secret` and `secret_file`: it signs every delivery",
                    );
                    None
                }
            };
            if let Some(secret) = secret {
                let tls = match (&w.ca, https) {
                    (Some(_), false) => {
                        p.add(at("ca"), "a CA is for an `https://` URL");
                        None
                    }
                    (Some(ca), true) => match crate::tls::admin_client(&resolve(ca)) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            p.add(at("ca"), e);
                            None
                        }
                    },
                    (None, _) => None,
                };
                webhooks.push(WebhookConfig {
                    name,
                    url: w.url.clone(),
                    events: w.events.clone(),
                    secret,
                    tls,
                });
            }
        }
        let mut ports = BTreeMap::new();
        for (key, addr) in [
            ("node.listen", listen),
            ("admin.listen", admin_listen),
            ("metrics.listen", metrics_listen),
            ("node.data_listen", data_listen),
        ] {
            if let Some(a) = addr.filter(|a| a.port() != 0) {
                if let Some(other) = ports.insert(a.port(), key) {
                    p.add(
                        key,
                        format!("port `{}` is already used by `{other}`", a.port()),
                    );
                }
            }
        }

        if !p.list.is_empty() {
            return Err(ConfigErrors(p.list));
        }
        let unwrap = |a: Option<SocketAddr>| a.unwrap_or_else(|| unreachable!("checked above"));
        Ok(Config {
            path: PathBuf::from(file),
            node: NodeConfig {
                name: n.name.clone(),
                master: roles.iter().any(|r| r == "master"),
                worker: is_worker,
                listen: unwrap(listen),
                advertise,
                data_dir,
                data_listen: unwrap(data_listen),
            },
            cluster: ClusterConfig {
                secret: secret.unwrap_or_else(|| unreachable!("checked above")),
                peers: c.peers.clone(),
                heartbeat_ms: c.heartbeat_ms,
                missed_heartbeats: c.missed_heartbeats,
                online_window_s: c.online_window_s,
                grace_wait_ms: c.grace_wait_ms,
                tls,
            },
            worker: WorkerConfig {
                max_concurrency,
                log_max_bytes,
                delete_collected: self.worker.delete_collected,
                capabilities: worker_caps,
                checks,
                sources,
            },
            devices,
            admin: AdminConfig {
                listen: unwrap(admin_listen),
                tokens: crate::tokens::Tokens {
                    single: token,
                    entries,
                },
                tls: self.admin.tls,
            },
            metrics: MetricsConfig {
                listen: unwrap(metrics_listen),
            },
            store: StoreConfig {
                durability: durability.unwrap_or_else(|| unreachable!("checked above")),
            },
            webhooks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "n1"
listen = "127.0.0.1:7700"

[cluster]
secret = "s3cret"
peers = ["127.0.0.1:7800"]

[[device]]
id = "gpu0"
handle = "cuda:0"
capabilities = { gpu = true }
"#;

    fn errs(text: &str) -> Vec<ConfigError> {
        match parse(text, "c.toml", Path::new("/tmp")) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.0,
        }
    }

    fn one_error(text: &str) -> String {
        let e = errs(text);
        assert_eq!(e.len(), 1, "expected exactly one problem, got {e:?}");
        let line = e[0].to_string();
        assert!(!line.contains('\n'), "one line: {line}");
        assert!(line.contains("`c.toml`"), "names the file: {line}");
        line
    }

    #[test]
    fn roles_default_to_both_alone_and_to_worker_with_peers() {
        let alone = GOOD.replace("peers = [\"127.0.0.1:7800\"]", "");
        let c = parse(&alone, "c.toml", Path::new("/tmp")).unwrap();
        assert!(
            c.node.master && c.node.worker,
            "a node alone is a whole cluster"
        );
        let c = parse(GOOD, "c.toml", Path::new("/tmp")).unwrap();
        assert!(
            !c.node.master && c.node.worker,
            "a node with peers joins as a worker"
        );
        let both = GOOD.replace(
            "name = \"n1\"",
            "name = \"n1\"\nroles = [\"master\", \"worker\"]",
        );
        let c = parse(&both, "c.toml", Path::new("/tmp")).unwrap();
        assert!(c.node.master && c.node.worker, "explicit roles win");
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = parse(GOOD, "c.toml", Path::new("/tmp")).unwrap();
        assert!(c.node.worker);
        assert_eq!(c.cluster.heartbeat_ms, 1000);
        assert_eq!(c.cluster.missed_heartbeats, 3);
        assert_eq!(c.devices.len(), 1);
        assert_eq!(c.devices[0].capabilities["gpu"], CapValue::Bool(true));
        assert_eq!(c.node.data_dir, Path::new("/tmp/orch-data"));
        assert_eq!(c.admin.listen.port(), 7701);
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "secret must not be printed"
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let line = one_error(&GOOD.replace("[cluster]", "[cluster]\nheartbeat = 5"));
        assert!(
            line.contains("`cluster`") || line.contains("cluster"),
            "{line}"
        );
        assert!(line.contains("unknown field `heartbeat`"), "{line}");
        assert!(line.contains("line"), "{line}");
    }

    #[test]
    fn bad_addresses_are_named() {
        let line = one_error(&GOOD.replace("127.0.0.1:7700", "localhost"));
        assert!(line.contains("invalid `node.listen`"), "{line}");
        assert!(line.contains("got `localhost`"), "{line}");
        let line = one_error(&GOOD.replace("127.0.0.1:7800", "nohost"));
        assert!(line.contains("`cluster.peers[0]`"), "{line}");
        let line = one_error(&GOOD.replace("127.0.0.1:7800", "h:99999"));
        assert!(line.contains("port from 1 to 65535"), "{line}");
    }

    #[test]
    fn duplicate_device_ids_are_refused_even_when_generated() {
        let text = format!("{GOOD}\n[[device]]\nid = \"gpu0\"\n");
        let line = one_error(&text);
        assert!(line.contains("device id `gpu0` is used twice"), "{line}");
        let text = format!(
            "{GOOD}\n[[device]]\ncount = 3\nid_prefix = \"s-\"\n[[device]]\nid = \"s-2\"\n"
        );
        assert!(one_error(&text).contains("`s-2` is used twice"));
    }

    #[test]
    fn a_generator_makes_hundreds_of_devices() {
        let text = format!(
            "{GOOD}\n[[device]]\ncount = 300\nid_prefix = \"slot-\"\nhandle = \"cpu:{{n}}\"\n"
        );
        let c = parse(&text, "c.toml", Path::new("/tmp")).unwrap();
        assert_eq!(c.devices.len(), 301);
        assert_eq!(c.devices[300].id, "slot-299");
        assert_eq!(c.devices[300].handle, "cpu:299");
    }

    #[test]
    fn missing_or_empty_secret_is_refused() {
        let line = one_error(&GOOD.replace("secret = \"s3cret\"", ""));
        assert!(
            line.contains("invalid `cluster.secret`") && line.contains("missing"),
            "{line}"
        );
        let line = one_error(&GOOD.replace("\"s3cret\"", "\"  \""));
        assert!(line.contains("non-empty secret"), "{line}");
        let line =
            one_error(&GOOD.replace("secret = \"s3cret\"", "secret_file = \"/nonexistent/x\""));
        assert!(
            line.contains("`cluster.secret_file`") && line.contains("cannot read"),
            "{line}"
        );
    }

    #[test]
    fn secret_files_must_be_small_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'x'; MAX_SECRET_BYTES as usize + 1]).unwrap();
        for (path, needle) in [
            (Path::new("/dev/zero"), "got a device"),
            (fifo.as_path(), "got a FIFO"),
            (dir.path(), "got a directory"),
            (big.as_path(), "at most 65536 bytes"),
        ] {
            let started = std::time::Instant::now();
            let text = GOOD.replace(
                "secret = \"s3cret\"",
                &format!("secret_file = \"{}\"", path.display()),
            );
            let line = one_error(&text);
            assert!(
                line.contains("`cluster.secret_file`") && line.contains(needle),
                "{line}"
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
        // The configuration file itself.
        let e = load(&fifo).unwrap_err().to_string();
        assert!(e.contains("got a FIFO"), "{e}");
        let e = load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("got a device"), "{e}");
    }

    #[test]
    fn heartbeat_zero_is_refused() {
        let line = one_error(&GOOD.replace("[cluster]", "[cluster]\nheartbeat_ms = 0"));
        assert!(line.contains("invalid `cluster.heartbeat_ms`"), "{line}");
        assert!(line.contains("got `0`"), "{line}");
        let line = one_error(&GOOD.replace("[cluster]", "[cluster]\nmissed_heartbeats = 0"));
        assert!(line.contains("`cluster.missed_heartbeats`"), "{line}");
    }

    #[test]
    fn wrong_types_name_the_key_and_line() {
        let line = one_error(&GOOD.replace("[cluster]", "[cluster]\nheartbeat_ms = \"fast\""));
        assert!(line.contains("cluster.heartbeat_ms"), "{line}");
        assert!(line.contains("line 7, column 16"), "{line}");
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let line = one_error("[node\nname=1");
        assert!(line.contains("(syntax)"), "{line}");
    }

    #[test]
    fn bad_capability_types_are_named() {
        let line = one_error(&GOOD.replace("gpu = true", "vram = 2.5"));
        assert!(line.contains("`device[0].capabilities.vram`"), "{line}");
        assert!(line.contains("got a float"), "{line}");
    }

    fn with_tls(dir: &Path, cert: &str, extra: &str) -> String {
        let d = dir.display();
        GOOD.replace(
            "peers = [\"127.0.0.1:7800\"]",
            &format!("peers = [\"127.0.0.1:7800\"]\ntls = {{ cert = \"{d}/{cert}.crt\", key = \"{d}/{cert}.key\", ca = \"{d}/ca.crt\" }}"),
        ) + extra
    }

    #[test]
    fn tls_files_are_checked_at_load_one_line_each() {
        let dir = tempfile::tempdir().unwrap();
        // Missing files.
        let e = one_error(&with_tls(dir.path(), "n1", ""));
        assert!(e.contains("cluster.tls") && e.contains("n1.crt"), "{e}");
        crate::tls::init_ca(dir.path(), 30).unwrap();
        let node = |name: &str, master: bool| {
            crate::tls::issue_node(
                dir.path(),
                &crate::tls::NodeCert {
                    name: name.into(),
                    master,
                    hosts: vec![],
                    days: 30,
                },
            )
            .unwrap();
        };
        node("n1", false);
        node("n2", false);
        parse(&with_tls(dir.path(), "n1", ""), "c.toml", Path::new("/tmp")).unwrap();
        // Another node's certificate.
        let e = one_error(&with_tls(dir.path(), "n2", ""));
        assert!(e.contains("names node `n2`, but this node is `n1`"), "{e}");
        // A master without the master role in its certificate.
        let text = with_tls(dir.path(), "n1", "").replace(
            "name = \"n1\"",
            "name = \"n1\"\nroles = [\"master\", \"worker\"]",
        );
        let e = one_error(&text);
        assert!(e.contains("--master"), "{e}");
        // Garbage in place of the key.
        std::fs::write(dir.path().join("n1.key"), "not a key").unwrap();
        let e = one_error(&with_tls(dir.path(), "n1", ""));
        assert!(e.contains("n1.key"), "{e}");
        // admin.tls needs cluster.tls.
        let e = one_error(&format!("{GOOD}\n[admin]\ntls = true\n"));
        assert!(e.contains("admin.tls"), "{e}");
    }

    #[test]
    fn a_tokens_file_is_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens.toml");
        let text = format!(
            "{GOOD}\n[admin]\nlisten = \"0.0.0.0:7701\"\ntokens_file = \"{}\"\n",
            f.display()
        );
        let e = one_error(&text);
        assert!(e.contains("admin.tokens_file"), "{e}");
        std::fs::write(
            &f,
            "[[token]]\nlabel = \"x\"\nrole = \"root\"\nsha256 = \"00\"\n",
        )
        .unwrap();
        let e = errs(&text);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().all(|e| e.key == "admin.tokens_file"), "{e:?}");
        crate::tokens::add(&dir.path().join("ok.toml"), "ci", crate::tokens::Role::Read).unwrap();
        let ok = text.replace("tokens.toml", "ok.toml");
        let cfg = parse(&ok, "c.toml", Path::new("/tmp")).unwrap();
        assert_eq!(cfg.admin.tokens.entries.len(), 1);
    }

    #[test]
    fn a_public_admin_listener_needs_a_token() {
        let text = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:7701\"\n");
        assert!(
            one_error(&text).contains("a token file (`token_file` or `tokens_file`) is required")
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let text = GOOD
            .replace(
                "[cluster]",
                "[cluster]\nheartbeat_ms = 0\nmissed_heartbeats = 0",
            )
            .replace("n1", "bad name!");
        assert_eq!(errs(&text).len(), 3);
    }

    #[test]
    fn a_worker_needs_devices_and_roles_must_be_known() {
        let text = GOOD.split("[[device]]").next().unwrap().to_string();
        assert!(one_error(&text).contains("needs at least one `[[device]]`"));
        let text = text.replace("name = \"n1\"", "name = \"n1\"\nroles = [\"master\"]");
        assert!(parse(&text, "c.toml", Path::new("/tmp")).is_ok());
        let text = GOOD.replace("name = \"n1\"", "name = \"n1\"\nroles = [\"boss\"]");
        assert!(one_error(&text).contains("got `boss`"));
    }

    #[test]
    fn a_node_cannot_list_itself_as_a_peer() {
        let line = one_error(&GOOD.replace("127.0.0.1:7800", "127.0.0.1:7700"));
        assert!(
            line.contains("`cluster.peers[0]`") && line.contains("own `node.listen`"),
            "{line}"
        );
    }

    #[test]
    fn a_node_cannot_list_itself_by_another_name_either() {
        for own in ["localhost:7700", "LOCALHOST:7700"] {
            let line = one_error(&GOOD.replace("127.0.0.1:7800", own));
            assert!(line.contains("own `node.listen`"), "{own}: {line}");
        }
        // Another port, or a host that is not this one, is a real peer.
        assert!(parse(
            &GOOD.replace("127.0.0.1:7800", "localhost:7800"),
            "c.toml",
            Path::new("/tmp")
        )
        .is_ok());
        for other in ["10.0.0.9:7700", "127.0.0.2:7700"] {
            assert!(parse(
                &GOOD.replace("127.0.0.1:7800", other),
                "c.toml",
                Path::new("/tmp")
            )
            .is_ok());
        }
        // Listening everywhere, every loopback address is this node.
        let any = GOOD.replace("listen = \"127.0.0.1:7700\"", "listen = \"0.0.0.0:7700\"");
        for own in ["127.0.0.2:7700", "[::1]:7700", "localhost:7700"] {
            assert!(one_error(&any.replace("127.0.0.1:7800", own)).contains("own `node.listen`"));
        }
        let text = GOOD.replace("127.0.0.1:7800", "render-01:7700").replace(
            "listen = \"127.0.0.1:7700\"",
            "listen = \"0.0.0.0:7700\"\nadvertise = \"render-01:7700\"",
        );
        assert!(one_error(&text).contains("own `node.listen`"));
        let line = one_error(&GOOD.replace("name = \"n1\"", "name = \"..\""));
        assert!(line.contains("not `.` or `..`"), "{line}");
        let line = one_error(&GOOD.replace("id = \"gpu0\"", "id = \".\""));
        assert!(
            line.contains("`device[0].id`") && line.contains("not `.` or `..`"),
            "{line}"
        );
    }

    #[test]
    fn ports_must_not_collide() {
        let text = format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:7700\"\n");
        assert!(one_error(&text).contains("already used by `node.listen`"));
    }

    #[test]
    fn bad_device_sources_are_one_line_each() {
        let src = |body: &str| format!("{GOOD}\n[[device_source]]\nname = \"phones\"\n{body}\n");
        for (body, key, expect) in [
            (
                "builtin = \"bogus\"",
                "`device_source[0].builtin`",
                "expected `adb` or `nvidia`",
            ),
            (
                "command = []",
                "`device_source[0].command`",
                "non-empty list",
            ),
            (
                "builtin = \"adb\"\nevery_s = 0",
                "`device_source[0].every_s`",
                "expected 1 to 86400",
            ),
            (
                "builtin = \"adb\"\ntimeout_ms = 0",
                "`device_source[0].timeout_ms`",
                "expected 1 to 600000",
            ),
            (
                "builtin = \"adb\"\ncommand = [\"x\"]",
                "`device_source[0]`",
                "either `command`",
            ),
            ("", "`device_source[0]`", "either `command`"),
            (
                "builtin = \"adb\"\nevery = 5",
                "device_source",
                "unknown field `every`",
            ),
            (
                "builtin = \"adb\"\ncapabilities = { os = 1.5 }",
                "device_source[0].capabilities.os",
                "expected a boolean",
            ),
        ] {
            let line = one_error(&src(body));
            assert!(
                line.contains(key) && line.contains(expect),
                "{body}: {line}"
            );
        }
        let two = format!(
            "{GOOD}\n[[device_source]]\nname = \"a\"\nbuiltin = \"adb\"\n[[device_source]]\nname = \"a\"\nbuiltin = \"nvidia\"\n"
        );
        let line = one_error(&two);
        assert!(
            line.contains("`device_source[1].name`") && line.contains("names two"),
            "{line}"
        );
        // Several problems in one source: one line for each.
        let e = errs(&src("builtin = \"bogus\"\nevery_s = 0\ntimeout_ms = 0"));
        assert_eq!(e.len(), 3, "{e:?}");
        // A worker with only a source and no `[[device]]` is valid.
        let only = GOOD.replace(
            "[[device]]\nid = \"gpu0\"\nhandle = \"cuda:0\"\ncapabilities = { gpu = true }\n",
            "",
        );
        assert!(parse(&only, "c.toml", Path::new("/tmp")).is_err());
        let c = parse(
            &format!("{only}\n[[device_source]]\nname = \"gpus\"\nbuiltin = \"nvidia\"\n"),
            "c.toml",
            Path::new("/tmp"),
        )
        .unwrap();
        assert_eq!(c.worker.sources.len(), 1);
        assert_eq!(c.worker.sources[0].every_s, 10);
    }
}
