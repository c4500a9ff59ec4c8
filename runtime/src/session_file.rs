//! Session files (TOML): parsing and validation into a [`SessionSpec`].
//!
//! ```toml
//! name = "quickstart"
//! frames = { start = 0, end = 48 }     # or: items = ["a.mp4", "b.mp4"]
//! chunk_frames = 4
//! id_chunk_size = 1000                 # global IDs reserved per task
//! max_attempts = 3                     # failures per range before it fails for good
//! max_losses = 10                      # losses (worker or device gone) before it fails for good
//! backoff_ms = 500                     # doubles per retry, up to backoff_max_ms
//! timeout_ms = 90000                   # per task
//! priority = 0                         # higher first (-1000 to 1000); equals share devices
//! max_devices = 8                      # at most this many attempts in flight at once
//! blocklist_after = 3                  # failures on one device before it gets none (0: never)
//! collect = "none"                     # where outputs are gathered: the master's node (default),
//!                                      # a node's name, or "none" (shared storage)
//! [require]                            # hard match on device capabilities
//! gpu = true
//! [prefer]                             # weights for devices with the capability
//! hw_accel = 10
//! [executor]
//! kind = "command"                     # or "builtin:noop", "builtin:sleep", "rust:<name>"
//! argv = ["python3", "{session_dir}/render.py", "{start}", "{end}", "{out_dir}"]
//! ```
//!
//! `kind = "rust:<name>"` names an executor that the program embedding the
//! node registered ([`crate::node::run_node_with`]); its `[executor.params]`
//! (strings) reach the executor in the task's [`ExecutorSpec::Rust`]. Such
//! a session requires `executor.rust:<name> = "yes"`
//! ([`orch_actors::protocol::executor_capability`]), which only the devices
//! of a node that registered `<name>` have.
//!
//! `{session_dir}` is replaced, when the file is read, by the folder the file is in.

use std::collections::BTreeMap;
use std::path::Path;

use orch_actors::protocol::{
    rust_executor_name, CapValue, Capabilities, ExecutorSpec, FrameRange, SessionSpec,
    DEFAULT_MAX_LOSSES, RUST_EXECUTOR_PREFIX,
};
use serde::Deserialize;

use crate::config::{ConfigError, ConfigErrors};

/// Most tasks one session may have (the ledger keeps one record each).
pub const MAX_TASKS: u64 = 10_000_000;
/// Most work items in one session.
pub const MAX_ITEMS: usize = 100_000;
/// Longest work item.
pub const MAX_ITEM_LEN: usize = 4096;
/// Largest `[prefer]` weight, either way.
pub const MAX_WEIGHT: i64 = 1_000_000;
/// Highest `priority`, either way.
pub const MAX_PRIORITY: i64 = 1000;
/// Largest `max_devices`.
pub const MAX_DEVICES: u64 = 1_000_000;
/// Longest name in `[executor.params]`.
pub const MAX_PARAM_KEY: usize = 128;

/// The placeholders of `argv` and `env` values, replaced per task.
pub const PLACEHOLDERS: &[&str] = &[
    "start",
    "end",
    "frames",
    "id_lo",
    "id_hi",
    "device",
    "handle",
    "session",
    "task",
    "attempt",
    "out_dir",
    "items_file",
    "node",
];

/// The `{name}` tokens of `s` that no placeholder (or `{session_dir}`)
/// names. A `${name}` (a shell variable) is not a placeholder.
pub(crate) fn unknown_placeholders(s: &str) -> Vec<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'{' && (i == 0 || b[i - 1] != b'$') {
            let name: String = s[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let end = i + 1 + name.len();
            if !name.is_empty()
                && b.get(end) == Some(&b'}')
                && name != "session_dir"
                && !PLACEHOLDERS.contains(&name.as_str())
            {
                out.push(format!("{{{name}}}"));
            }
        }
        i += 1;
    }
    out
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    name: String,
    frames: Option<RawFrames>,
    items: Option<Vec<String>>,
    chunk_frames: u64,
    #[serde(default = "default_id_chunk")]
    id_chunk_size: u64,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default = "default_losses")]
    max_losses: u32,
    #[serde(default = "default_backoff")]
    backoff_ms: u64,
    #[serde(default = "default_backoff_max")]
    backoff_max_ms: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    priority: i64,
    max_devices: Option<u64>,
    /// Failed or turned-away attempts on one device after which it takes
    /// none of the session's tasks (default 3; 0: never).
    blocklist_after: Option<u64>,
    /// Where the outputs are gathered (docs/collection.md).
    collect: Option<String>,
    #[serde(default)]
    require: BTreeMap<String, toml::Value>,
    #[serde(default)]
    prefer: BTreeMap<String, i64>,
    executor: Option<RawExecutor>,
    /// `NAME` or `NAME@VERSION` of a stored workflow recipe, instead of an
    /// `[executor]` (docs/workflows.md).
    workflow: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrames {
    start: u64,
    end: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecutor {
    kind: String,
    argv: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    ms_per_frame: Option<u64>,
    /// Strings for a registered executor (`kind = "rust:<name>"`).
    params: Option<BTreeMap<String, String>>,
}

fn default_id_chunk() -> u64 {
    1_000_000
}
fn default_attempts() -> u32 {
    3
}
fn default_losses() -> u32 {
    DEFAULT_MAX_LOSSES
}
fn default_backoff() -> u64 {
    500
}
fn default_backoff_max() -> u64 {
    30_000
}
fn default_timeout() -> u64 {
    90_000
}

/// The [`ExecutorSpec::Rust`] of `kind = "rust:<name>"`, or `None` after
/// adding what is wrong to `add`.
fn rust_executor(e: &RawExecutor, add: &mut impl FnMut(&str, String)) -> Option<ExecutorSpec> {
    let name = match rust_executor_name(&e.kind)? {
        Ok(name) => name,
        Err(why) => {
            add("executor.kind", why);
            return None;
        }
    };
    let unused = [
        ("executor.argv", e.argv.is_some()),
        ("executor.env", !e.env.is_empty()),
        ("executor.ms_per_frame", e.ms_per_frame.is_some()),
    ];
    let mut ok = true;
    for (key, _) in unused.iter().filter(|(_, set)| *set) {
        add(
            key,
            format!(
                "not used by registered executors (`{}`): give it in `executor.params`",
                e.kind
            ),
        );
        ok = false;
    }
    let params = e.params.clone().unwrap_or_default();
    for (k, v) in &params {
        if k.is_empty() || k.len() > MAX_PARAM_KEY {
            add(
                &format!("executor.params.{k}"),
                format!("expected a name of 1 to {MAX_PARAM_KEY} bytes"),
            );
            ok = false;
        }
        if v.contains('\0') {
            add(
                &format!("executor.params.{k}"),
                "expected no NUL character".into(),
            );
            ok = false;
        }
    }
    ok.then(|| ExecutorSpec::Rust {
        name: name.to_string(),
        params,
    })
}

/// Read and validate a session file.
pub fn load(path: &Path) -> Result<SessionSpec, ConfigErrors> {
    let (file, text, dir) = crate::config::read_toml_file(path)?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    parse(&text, &file, Some(&dir))
}

/// Parse and validate session text; `session_dir` replaces `{session_dir}`.
pub fn parse(
    text: &str,
    file: &str,
    session_dir: Option<&Path>,
) -> Result<SessionSpec, ConfigErrors> {
    let raw: RawSession = crate::config::parse_toml(text, file)?;
    let mut problems = Vec::new();
    let mut add = |key: &str, expected: String| {
        problems.push(ConfigError {
            file: file.to_string(),
            key: crate::config::shown(key),
            expected: crate::config::clip(&expected, 512),
        })
    };
    if !crate::config::valid_name(&raw.name) {
        add(
            "name",
            format!(
                "expected 1 to 64 characters from `A-Z a-z 0-9 - _ .`, not `.` or `..`, got `{}`",
                crate::config::shown(&raw.name)
            ),
        );
    }
    let frames = match (&raw.frames, &raw.items) {
        (Some(f), None) => {
            if f.end <= f.start {
                add(
                    "frames",
                    format!(
                        "expected `end` > `start`, got start `{}` and end `{}`",
                        f.start, f.end
                    ),
                );
            }
            FrameRange {
                start: f.start,
                end: f.end,
            }
        }
        (None, Some(items)) => {
            if items.is_empty() || items.len() > MAX_ITEMS {
                add(
                    "items",
                    format!("expected 1 to {MAX_ITEMS} items, got {}", items.len()),
                );
            }
            if let Some((i, _)) = items
                .iter()
                .enumerate()
                .find(|(_, s)| s.len() > MAX_ITEM_LEN || s.contains('\n'))
            {
                add(
                    &format!("items[{i}]"),
                    format!("expected at most {MAX_ITEM_LEN} bytes on one line"),
                );
            }
            FrameRange {
                start: 0,
                end: items.len() as u64,
            }
        }
        _ => {
            add(
                "frames",
                "set exactly one of `frames = { start, end }` and `items = [...]`".into(),
            );
            FrameRange { start: 0, end: 1 }
        }
    };
    if raw.chunk_frames == 0 {
        add("chunk_frames", "expected at least 1, got `0`".into());
    } else if frames.end > frames.start && frames.len().div_ceil(raw.chunk_frames) > MAX_TASKS {
        add(
            "chunk_frames",
            format!(
                "{} frames in chunks of {} make {} tasks; at most {MAX_TASKS}: raise `chunk_frames`",
                frames.len(),
                raw.chunk_frames,
                frames.len().div_ceil(raw.chunk_frames)
            ),
        );
    }
    if raw.id_chunk_size == 0 || raw.id_chunk_size > 1 << 40 {
        add(
            "id_chunk_size",
            format!("expected 1 to {}, got `{}`", 1u64 << 40, raw.id_chunk_size),
        );
    }
    if raw.max_attempts == 0 || raw.max_attempts > 100 {
        add(
            "max_attempts",
            format!("expected 1 to 100, got `{}`", raw.max_attempts),
        );
    }
    if raw.max_losses == 0 || raw.max_losses > 1000 {
        add(
            "max_losses",
            format!("expected 1 to 1000, got `{}`", raw.max_losses),
        );
    }
    if !(-MAX_PRIORITY..=MAX_PRIORITY).contains(&raw.priority) {
        add(
            "priority",
            format!(
                "expected -{MAX_PRIORITY} to {MAX_PRIORITY}, got `{}`",
                raw.priority
            ),
        );
    }
    if let Some(b) = raw.blocklist_after {
        if b > 1_000 {
            add(
                "blocklist_after",
                format!("expected 0 (never) to 1000, got `{b}`"),
            );
        }
    }
    if let Some(c) = &raw.collect {
        if c != "none" && !crate::config::valid_name(c) {
            add(
                "collect",
                format!(
                    "expected `none` or a node's name (1 to 64 characters from `A-Z a-z 0-9 - _ .`), got `{}`",
                    crate::config::shown(c)
                ),
            );
        }
    }
    if let Some(m) = raw.max_devices {
        if m == 0 || m > MAX_DEVICES {
            add(
                "max_devices",
                format!("expected 1 to {MAX_DEVICES}, got `{m}` (leave it out for no limit)"),
            );
        }
    }
    if raw.backoff_ms > 3_600_000 {
        add(
            "backoff_ms",
            format!("expected at most 3600000, got `{}`", raw.backoff_ms),
        );
    }
    if raw.backoff_max_ms < raw.backoff_ms {
        add(
            "backoff_max_ms",
            format!(
                "expected at least `backoff_ms` ({}), got `{}`",
                raw.backoff_ms, raw.backoff_max_ms
            ),
        );
    }
    if raw.timeout_ms == 0 || raw.timeout_ms > 7 * 24 * 3_600_000 {
        add(
            "timeout_ms",
            format!("expected 1 to 604800000, got `{}`", raw.timeout_ms),
        );
    }
    let mut require = Capabilities::new();
    for (k, v) in &raw.require {
        let value = match v {
            toml::Value::Boolean(b) => Some(CapValue::Bool(*b)),
            toml::Value::Integer(i) => Some(CapValue::Int(*i)),
            toml::Value::String(s) => Some(CapValue::Str(s.clone())),
            toml::Value::Array(a) => a
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .map(CapValue::List),
            _ => None,
        };
        match value {
            Some(v) => {
                require.insert(k.clone(), v);
            }
            None => add(
                &format!("require.{k}"),
                format!(
                    "unknown capability type `{}`: expected a boolean, an integer, a string or a list of strings",
                    v.type_str()
                ),
            ),
        }
    }
    for (k, w) in &raw.prefer {
        if w.unsigned_abs() > MAX_WEIGHT as u64 {
            add(
                &format!("prefer.{k}"),
                format!("expected a weight from -{MAX_WEIGHT} to {MAX_WEIGHT}, got `{w}`"),
            );
        }
    }
    let sub = |s: &str| match session_dir {
        Some(d) => s.replace("{session_dir}", &d.display().to_string()),
        None => s.to_string(),
    };
    let none = RawExecutor {
        kind: "builtin:noop".into(),
        argv: None,
        env: BTreeMap::new(),
        ms_per_frame: None,
        params: None,
    };
    let workflow = match (&raw.executor, &raw.workflow) {
        (Some(_), Some(_)) => {
            add(
                "workflow",
                "a session runs either an `[executor]` or a `workflow`, not both".into(),
            );
            None
        }
        (None, None) => {
            add(
                "executor",
                "missing: give an `[executor]` table or `workflow = \"NAME\"`".into(),
            );
            None
        }
        (None, Some(w)) => match orch_actors::workflow::parse_ref(w) {
            Ok((name, version)) => Some(ExecutorSpec::Workflow(Box::new(
                orch_actors::workflow::Workflow {
                    name,
                    version: version.unwrap_or(0),
                    steps: Vec::new(),
                    check: None,
                    preflight: None,
                },
            ))),
            Err(why) => {
                add("workflow", why);
                None
            }
        },
        (Some(_), None) => None,
    };
    let e = raw.executor.as_ref().unwrap_or(&none);
    if e.params.is_some() && rust_executor_name(&e.kind).is_none() {
        add(
            "executor.params",
            format!(
                "only registered executors (`kind = \"rust:<name>\"`) take `params`; `{}` does not",
                crate::config::shown(&e.kind)
            ),
        );
    }
    let executor = match e.kind.as_str() {
        kind if kind.starts_with(RUST_EXECUTOR_PREFIX) => {
            rust_executor(e, &mut add).unwrap_or(ExecutorSpec::Noop)
        }
        "builtin:noop" => ExecutorSpec::Noop,
        "builtin:sleep" => match e.ms_per_frame {
            Some(ms) if ms <= 600_000 => ExecutorSpec::Sleep { ms_per_frame: ms },
            Some(ms) => {
                add(
                    "executor.ms_per_frame",
                    format!("expected at most 600000, got `{ms}`"),
                );
                ExecutorSpec::Noop
            }
            None => {
                add(
                    "executor.ms_per_frame",
                    "missing; `builtin:sleep` needs it".into(),
                );
                ExecutorSpec::Noop
            }
        },
        "command" => match &e.argv {
            Some(argv) if !argv.is_empty() && !argv[0].is_empty() => {
                let known = || {
                    PLACEHOLDERS
                        .iter()
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let values = argv
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (format!("executor.argv[{i}]"), a))
                    .chain(e.env.iter().map(|(k, v)| (format!("executor.env.{k}"), v)));
                for (key, v) in values {
                    if v.contains('\0') {
                        add(&key, "expected no NUL character".into());
                    }
                    if let Some(p) = unknown_placeholders(v).first() {
                        add(
                            &key,
                            format!(
                                "unknown placeholder `{p}`; known: {} {{session_dir}}",
                                known()
                            ),
                        );
                    }
                    if session_dir.is_none() && v.contains("{session_dir}") {
                        add(&key, "`{session_dir}` is the folder of a session file, and a session sent to the API has none: give an absolute path (`orchctl submit FILE` and `orch-node --run FILE` fill it in)".into());
                    }
                }
                for k in e.env.keys() {
                    if k.is_empty() || k.contains('=') || k.contains('\0') {
                        add(
                            &format!("executor.env.{k}"),
                            "expected a variable name without `=` or NUL".into(),
                        );
                    }
                }
                ExecutorSpec::Command {
                    argv: argv.iter().map(|a| sub(a)).collect(),
                    env: e.env.iter().map(|(k, v)| (k.clone(), sub(v))).collect(),
                }
            }
            _ => {
                add(
                    "executor.argv",
                    "expected a non-empty list: the program and its arguments".into(),
                );
                ExecutorSpec::Noop
            }
        },
        other => {
            add(
                "executor.kind",
                format!("unknown executor `{}`; expected `command`, `builtin:noop`, `builtin:sleep` or `rust:<name>`", crate::config::shown(other)),
            );
            ExecutorSpec::Noop
        }
    };
    let executor = workflow.unwrap_or(executor);
    // A registered executor runs only where it is registered: the session
    // requires the capability such nodes give their devices, and waits,
    // saying so, while no device has it.
    if let Some((key, value)) = executor.requirement() {
        match require.get(&key) {
            Some(v) if *v != value => add(
                &format!("require.{key}"),
                format!(
                    "set by `executor.kind`: a `{}` session requires `{key} = \"yes\"`; leave it out",
                    executor.kind()
                ),
            ),
            _ => {
                require.insert(key, value);
            }
        }
    }
    if !problems.is_empty() {
        return Err(ConfigErrors(problems));
    }
    Ok(SessionSpec {
        name: raw.name,
        frames,
        items: raw.items,
        chunk_frames: raw.chunk_frames,
        id_chunk_size: raw.id_chunk_size,
        require,
        prefer: raw.prefer,
        max_attempts: raw.max_attempts,
        max_losses: raw.max_losses,
        backoff_ms: raw.backoff_ms,
        backoff_max_ms: raw.backoff_max_ms,
        executor,
        timeout_ms: raw.timeout_ms,
        priority: raw.priority as i32,
        max_devices: raw.max_devices.map(|m| m as u32),
        idempotency_key: None,
        collect: raw.collect,
        correlation_id: None,
        blocklist_after: raw.blocklist_after.map(|b| b.min(1_000) as u32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "s1"
frames = { start = 0, end = 100 }
chunk_frames = 10
[executor]
kind = "builtin:noop"
"#;

    fn err(text: &str) -> String {
        let e = parse(text, "s.toml", None).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        e.to_string()
    }

    #[test]
    fn collect_is_none_or_a_node_name() {
        assert_eq!(
            parse(&format!("collect = \"none\"\n{GOOD}"), "s.toml", None)
                .unwrap()
                .collect
                .as_deref(),
            Some("none")
        );
        assert_eq!(
            parse(&format!("collect = \"render-01\"\n{GOOD}"), "s.toml", None)
                .unwrap()
                .collect
                .as_deref(),
            Some("render-01")
        );
        assert_eq!(parse(GOOD, "s.toml", None).unwrap().collect, None);
        for bad in ["", "a/b", "../x", "two words"] {
            let e = err(&format!("collect = \"{bad}\"\n{GOOD}"));
            assert!(
                e.contains("`collect`") && e.contains("node's name"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_good_session_parses_with_defaults() {
        let s = parse(GOOD, "s.toml", None).unwrap();
        assert_eq!(s.frames, FrameRange { start: 0, end: 100 });
        assert_eq!(s.max_attempts, 3);
        assert_eq!(s.max_losses, DEFAULT_MAX_LOSSES);
        assert_eq!(s.executor, ExecutorSpec::Noop);
    }

    #[test]
    fn bad_sessions_name_the_key() {
        assert!(
            err(&GOOD.replace("chunk_frames = 10", "chunk_frames = 0")).contains("`chunk_frames`")
        );
        assert!(err(&GOOD.replace("end = 100", "end = 0")).contains("`end` > `start`"));
        let e = err(&GOOD
            .replace("chunk_frames = 10", "chunk_frames = 1")
            .replace("end = 100", "end = 100000000000"));
        assert!(e.contains("raise `chunk_frames`"), "{e}");
        assert!(err(&GOOD.replace("builtin:noop", "builtin:teleport"))
            .contains("unknown executor `builtin:teleport`"));
        assert!(
            err(&GOOD.replace("kind = \"builtin:noop\"", "kind = \"command\""))
                .contains("executor.argv")
        );
        assert!(
            err(&GOOD.replace("kind = \"builtin:noop\"", "kind = \"builtin:sleep\""))
                .contains("ms_per_frame")
        );
        assert!(err(&format!("extra = 1\n{GOOD}")).contains("unknown field `extra`"));
        assert!(err(&format!("max_losses = 0\n{GOOD}")).contains("invalid `max_losses`"));
        for bad in [
            "priority = 1001",
            "priority = -1001",
            "priority = 9223372036854775807",
        ] {
            let e = err(&format!("{bad}\n{GOOD}"));
            assert!(
                e.contains("`priority`") && e.contains("-1000 to 1000"),
                "{bad}: {e}"
            );
        }
        for bad in ["max_devices = 0", "max_devices = 1000001"] {
            let e = err(&format!("{bad}\n{GOOD}"));
            assert!(
                e.contains("`max_devices`") && e.contains("1 to 1000000"),
                "{bad}: {e}"
            );
        }
        let e = err(&format!("max_devices = -1\n{GOOD}"));
        assert!(e.contains("max_devices"), "{e}");
        let e = err(&format!("priority = \"high\"\n{GOOD}"));
        assert!(e.contains("priority"), "{e}");
    }

    #[test]
    fn priority_and_max_devices_reach_the_spec() {
        let s = parse(
            &format!("priority = -7\nmax_devices = 3\n{GOOD}"),
            "s.toml",
            None,
        )
        .unwrap();
        assert_eq!((s.priority, s.max_devices), (-7, Some(3)));
        let d = parse(GOOD, "s.toml", None).unwrap();
        assert_eq!((d.priority, d.max_devices), (0, None));
    }

    #[test]
    fn what_would_break_at_run_time_is_refused_at_submit() {
        let cmd = |argv: &str, env: &str| {
            format!("name = \"c\"\nframes = {{ start = 0, end = 4 }}\nchunk_frames = 1\n[executor]\nkind = \"command\"\nargv = {argv}\nenv = {env}\n")
        };
        let e = err(&cmd(r#"["render", "{start}", "{frame}"]"#, "{}"));
        assert!(
            e.contains("`executor.argv[2]`")
                && e.contains("unknown placeholder `{frame}`")
                && e.contains("{start}"),
            "{e}"
        );
        let e = err(&cmd(r#"["render"]"#, r#"{ OUT = "{outdir}" }"#));
        assert!(
            e.contains("`executor.env.OUT`") && e.contains("`{outdir}`"),
            "{e}"
        );
        let e = err(&cmd(r#"["ren\u0000der"]"#, "{}"));
        assert!(e.contains("NUL"), "{e}");
        let e = err(&cmd(r#"["render"]"#, r#"{ "A=B" = "x" }"#));
        assert!(e.contains("without `=`"), "{e}");
        let e = err(&cmd(r#"["{session_dir}/render.sh"]"#, "{}"));
        assert!(
            e.contains("`{session_dir}` is the folder of a session file"),
            "{e}"
        );
        // In a file it is the file's folder; a shell's `${var}` is no placeholder.
        let ok = parse(
            &cmd(
                r#"["bash", "-c", "x=1; echo ${x} {start}", "{session_dir}/r.sh"]"#,
                "{}",
            ),
            "s.toml",
            Some(Path::new("/jobs")),
        )
        .unwrap();
        match ok.executor {
            ExecutorSpec::Command { argv, .. } => assert_eq!(argv[3], "/jobs/r.sh"),
            other => panic!("{other:?}"),
        }
        let e = err(&format!("{GOOD}[prefer]\ngpu = 9223372036854775807\n"));
        assert!(
            e.contains("`prefer.gpu`") && e.contains("-1000000 to 1000000"),
            "{e}"
        );
        for bad in [".", ".."] {
            let e = err(&GOOD.replace("name = \"s1\"", &format!("name = \"{bad}\"")));
            assert!(e.contains("not `.` or `..`"), "{e}");
        }
        // A huge value is not echoed whole.
        let long = "x".repeat(100_000);
        let e = err(&GOOD.replace("name = \"s1\"", &format!("name = \"{long}\"")));
        assert!(e.len() < 1000, "{} bytes", e.len());
        assert!(e.contains("(100000 bytes)"), "{e}");
    }

    #[test]
    fn unknown_capability_types_are_refused() {
        let text = "name = \"s\"\nframes = { start = 0, end = 4 }\nchunk_frames = 1\n[require]\nvram = 1.5\n[executor]\nkind = \"builtin:noop\"\n";
        let e = err(text);
        assert!(
            e.contains("`require.vram`") && e.contains("unknown capability type `float`"),
            "{e}"
        );
    }

    #[test]
    fn items_make_frames_and_session_dir_is_substituted() {
        let text = "name = \"t\"\nitems = [\"a\", \"b\", \"c\"]\nchunk_frames = 2\n[executor]\nkind = \"command\"\nargv = [\"{session_dir}/x.sh\", \"{start}\"]\n";
        let s = parse(text, "s.toml", Some(Path::new("/srv/jobs"))).unwrap();
        assert_eq!(s.frames, FrameRange { start: 0, end: 3 });
        match s.executor {
            ExecutorSpec::Command { argv, .. } => {
                assert_eq!(argv, vec!["/srv/jobs/x.sh", "{start}"])
            }
            other => panic!("{other:?}"),
        }
    }

    const RUST: &str = r#"
name = "m"
frames = { start = 0, end = 8 }
chunk_frames = 2
[require]
os = "linux"
[executor]
kind = "rust:mandelbrot"
params = { width = "64", max_iter = "100" }
"#;

    #[test]
    fn a_registered_executor_session_requires_its_capability_and_carries_params() {
        let s = parse(RUST, "s.toml", None).unwrap();
        let params: BTreeMap<String, String> = [("max_iter", "100"), ("width", "64")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            s.executor,
            ExecutorSpec::Rust {
                name: "mandelbrot".into(),
                params: params.clone(),
            }
        );
        assert_eq!(s.executor.kind(), "rust:mandelbrot");
        assert_eq!(s.executor.params(), Some(&params));
        assert_eq!(
            s.require.get("executor.rust:mandelbrot"),
            Some(&CapValue::Str("yes".into()))
        );
        assert_eq!(s.require.get("os"), Some(&CapValue::Str("linux".into())));
        // Saying it again changes nothing; saying otherwise is refused.
        let again = RUST.replace(
            "[require]",
            "[require]\n\"executor.rust:mandelbrot\" = \"yes\"",
        );
        assert_eq!(parse(&again, "s.toml", None).unwrap(), s);
        let e = err(&RUST.replace(
            "[require]",
            "[require]\n\"executor.rust:mandelbrot\" = false",
        ));
        assert!(
            e.contains("`require.executor.rust:mandelbrot`")
                && e.contains("set by `executor.kind`"),
            "{e}"
        );
        // Other kinds require nothing more than before.
        assert!(parse(GOOD, "s.toml", None).unwrap().require.is_empty());
        // It crosses the cluster link whole.
        let bytes = orch_actors::wire::encode(&s).unwrap();
        assert_eq!(orch_actors::wire::decode::<SessionSpec>(&bytes).unwrap(), s);
        let no_params = GOOD.replace("builtin:noop", "rust:x");
        let s = parse(&no_params, "s.toml", None).unwrap();
        assert_eq!(s.executor.params(), Some(&BTreeMap::new()));
    }

    #[test]
    fn a_bad_registered_executor_is_one_error_naming_the_key() {
        for bad in [
            "rust:",
            "rust:Mandel",
            "rust:a b",
            "rust:a.b",
            "rust:é",
            &format!("rust:{}", "a".repeat(65)),
        ] {
            let e = err(&RUST.replace("rust:mandelbrot", bad));
            assert!(
                e.contains("`executor.kind`")
                    && e.contains("invalid executor name")
                    && e.contains("`a-z 0-9 _ -`"),
                "{bad}: {e}"
            );
        }
        for good in [
            "rust:a",
            "rust:mandel_brot-2",
            &format!("rust:{}", "a".repeat(64)),
        ] {
            parse(&RUST.replace("rust:mandelbrot", good), "s.toml", None).unwrap();
        }
        let e = err(&RUST.replace("rust:mandelbrot", "builtin:noop"));
        assert!(
            e.contains("`executor.params`") && e.contains("only registered executors"),
            "{e}"
        );
        let e = err(&RUST.replace("params =", "argv = [\"x\"]\nparams ="));
        assert!(
            e.contains("`executor.argv`") && e.contains("not used by registered executors"),
            "{e}"
        );
        let e = err(&RUST.replace("width", "\"\""));
        assert!(e.contains("`executor.params.`"), "{e}");
        let e = parse(&RUST.replace("\"64\"", "64"), "s.toml", None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("executor.params.width"), "{e}");
    }
}
