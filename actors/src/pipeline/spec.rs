//! What a pipeline is (docs/pipelines.md): named stages, each a session or
//! a command, with the stages it depends on, its retry policy, circuit
//! breaker, failure rule and fallback; and what starts its runs.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::protocol::{Capabilities, SessionSpec};

/// Longest pipeline or stage name.
pub const MAX_NAME: usize = 48;
/// Most stages one pipeline may have.
pub const MAX_STAGES: usize = 2_000;
/// Most attempts a stage may be given.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest delay a retry, breaker or command timeout may be given: a day.
pub const MAX_DELAY_MS: u64 = 86_400_000;
/// Shortest interval schedule.
pub const MIN_EVERY_MS: u64 = 1_000;
/// Most pipelines the master keeps.
pub const MAX_PIPELINES: usize = 20_000;
/// Most parameters of one run, and their longest name and value.
pub const MAX_PARAMS: usize = 64;
pub const MAX_PARAM_LEN: usize = 1024;
/// Default time a command stage may take.
pub const COMMAND_TIMEOUT_MS: u64 = 600_000;

/// How the delay between two attempts grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// `base_delay` every time.
    #[default]
    Fixed,
    /// `base_delay × 2^(attempt-1)`, at most `max_delay`.
    Exponential,
}

/// A stage's retry policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub base_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff: Backoff::Fixed,
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based).
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        match self.backoff {
            Backoff::Fixed => self.base_delay_ms,
            Backoff::Exponential => self
                .base_delay_ms
                .saturating_mul(1u64 << attempt.saturating_sub(1).min(40))
                .min(self.max_delay_ms.max(self.base_delay_ms)),
        }
    }
}

/// A stage's circuit breaker: after `failure_threshold` failed attempts in
/// a row (across runs) it opens and the stage fails at once without
/// running; after `reset_timeout` one trial runs (half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerSpec {
    pub failure_threshold: u32,
    pub reset_timeout_ms: u64,
}

/// What a failed stage means for its dependents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Its dependents are skipped.
    #[default]
    Fail,
    /// Its dependents run as if it had completed (the run ends `partial`).
    Continue,
}

/// What a stage runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageRun {
    /// A session on the cluster, like any other.
    Session(Box<SessionSpec>),
    /// One program on one device matching `require`.
    Command {
        argv: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
        #[serde(default)]
        require: Capabilities,
        timeout_ms: u64,
    },
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    pub name: String,
    #[serde(default)]
    pub depends_on: Vec<String>,
    pub run: StageRun,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub circuit_breaker: Option<BreakerSpec>,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// A stage run instead when this one fails for good.
    #[serde(default)]
    pub fallback: Option<String>,
}

/// When runs start by themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// A five-field cron expression in a time zone (IANA name; `UTC` by default).
    Cron { expr: String, tz: String },
    /// Every `ms` milliseconds, slots counted from the unix epoch.
    Every { ms: u64 },
}

/// A run started by an event: `on` is an event type (`session.completed`,
/// `pipeline.completed`, …); every `filter` key must equal the event's
/// payload field of that name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventTrigger {
    pub on: String,
    #[serde(default)]
    pub filter: BTreeMap<String, String>,
}

/// A pipeline at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub name: String,
    /// Numbered by the master, from 1 (0 in a file).
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// A slot missed while the master was down fires once when it is back
    /// (`false`: not at all).
    #[serde(default = "yes")]
    pub catch_up: bool,
    #[serde(default)]
    pub trigger: Option<EventTrigger>,
    /// Parameter defaults; a run's `--param k=v` overrides them.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    pub stages: Vec<StageSpec>,
}

fn yes() -> bool {
    true
}

/// Whether `name` may name a pipeline or a stage.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `name` may name a run parameter.
pub fn valid_param(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `c` may be a correlation id a client gives.
pub fn valid_correlation(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 128
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

/// Parse a cron expression and a time zone, as the master evaluates them.
pub fn parse_cron(expr: &str, tz: &str) -> Result<(croner::Cron, chrono_tz::Tz), String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 && !expr.trim_start().starts_with('@') {
        return Err(format!(
            "expected five fields `minute hour day-of-month month day-of-week` (or @hourly, @daily, …), got {fields} in `{expr}`"
        ));
    }
    let cron = croner::parser::CronParser::new()
        .parse(expr)
        .map_err(|e| format!("expected a cron expression, `{expr}`: {e}"))?;
    let tz: chrono_tz::Tz = tz.parse().map_err(|_| {
        format!("expected an IANA time zone such as `UTC` or `Europe/Paris`, got `{tz}`")
    })?;
    Ok((cron, tz))
}

/// Every problem of `p`, as (key, what was expected): empty when it is
/// valid. Cycles name the stages on the cycle.
pub fn problems(p: &PipelineSpec) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |k: String, e: String| out.push((k, e));
    if !valid_name(&p.name) {
        add(
            "name".into(),
            format!(
                "expected 1 to {MAX_NAME} characters from `A-Z a-z 0-9 - _ .`, got `{}`",
                p.name
            ),
        );
    }
    match &p.schedule {
        Some(Schedule::Cron { expr, tz }) => {
            if let Err(e) = parse_cron(expr, tz) {
                add("schedule.cron".into(), e);
            }
        }
        Some(Schedule::Every { ms }) if *ms < MIN_EVERY_MS || *ms > MAX_DELAY_MS * 366 => add(
            "schedule.every".into(),
            format!("expected 1s to 366d, got {ms} ms"),
        ),
        _ => {}
    }
    if let Some(t) = &p.trigger {
        if !crate::events::valid_type(&t.on) {
            add(
                "trigger.on".into(),
                format!(
                    "expected an event type such as `session.completed` or `pipeline.failed`, got `{}`",
                    t.on
                ),
            );
        }
        if t.on == "pipeline.completed" && t.filter.get("pipeline") == Some(&p.name) {
            add(
                "trigger.filter.pipeline".into(),
                "a pipeline cannot be started by its own completion".into(),
            );
        }
    }
    if p.params.len() > MAX_PARAMS {
        add(
            "params".into(),
            format!("expected at most {MAX_PARAMS} parameters"),
        );
    }
    for (k, v) in &p.params {
        if !valid_param(k) || v.len() > MAX_PARAM_LEN || v.contains('\0') {
            add(
                format!("params.{k}"),
                format!("expected a name from `A-Z a-z 0-9 _` and a value of at most {MAX_PARAM_LEN} bytes without NUL"),
            );
        }
    }
    if p.stages.is_empty() || p.stages.len() > MAX_STAGES {
        add(
            "stage".into(),
            format!(
                "expected 1 to {MAX_STAGES} `[[stage]]`s, got {}",
                p.stages.len()
            ),
        );
        return out;
    }
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in p.stages.iter().enumerate() {
        if !valid_name(&s.name) {
            add(
                format!("stage[{i}].name"),
                format!(
                    "expected 1 to {MAX_NAME} characters from `A-Z a-z 0-9 - _ .`, got `{}`",
                    s.name
                ),
            );
        } else if index.insert(&s.name, i).is_some() {
            add(
                format!("stage[{i}].name"),
                format!("a stage named `{}` is declared twice", s.name),
            );
        }
    }
    let fallbacks: BTreeSet<&str> = p
        .stages
        .iter()
        .filter_map(|s| s.fallback.as_deref())
        .collect();
    for (i, s) in p.stages.iter().enumerate() {
        for d in &s.depends_on {
            if !index.contains_key(d.as_str()) {
                add(
                    format!("stage[{i}].depends_on"),
                    format!("`{}` depends on `{d}`, which no stage is named", s.name),
                );
            } else if fallbacks.contains(d.as_str()) {
                add(
                    format!("stage[{i}].depends_on"),
                    format!("`{d}` is a fallback (it runs only instead of another stage); depend on the stage it stands in for"),
                );
            }
            if d == &s.name {
                add(
                    format!("stage[{i}].depends_on"),
                    format!("`{}` depends on itself", s.name),
                );
            }
        }
        if let Some(f) = &s.fallback {
            match index.get(f.as_str()) {
                None => add(
                    format!("stage[{i}].fallback"),
                    format!("`{}` falls back to `{f}`, which no stage is named", s.name),
                ),
                Some(&j) if j == i => add(
                    format!("stage[{i}].fallback"),
                    format!("`{}` cannot be its own fallback", s.name),
                ),
                Some(&j) => {
                    let fb = &p.stages[j];
                    if !fb.depends_on.is_empty() || fb.fallback.is_some() {
                        add(
                            format!("stage[{j}]"),
                            format!("`{f}` is a fallback: it may have neither `depends_on` nor a `fallback` of its own"),
                        );
                    }
                }
            }
        }
        let r = &s.retry;
        if r.max_attempts == 0 || r.max_attempts > MAX_ATTEMPTS {
            add(
                format!("stage[{i}].retry.max_attempts"),
                format!("expected 1 to {MAX_ATTEMPTS}, got {}", r.max_attempts),
            );
        }
        if r.base_delay_ms > MAX_DELAY_MS || r.max_delay_ms > MAX_DELAY_MS {
            add(
                format!("stage[{i}].retry"),
                "expected delays of at most a day".into(),
            );
        } else if r.max_delay_ms < r.base_delay_ms {
            add(
                format!("stage[{i}].retry.max_delay"),
                "expected `max_delay` at least `base_delay`".into(),
            );
        }
        if let Some(b) = &s.circuit_breaker {
            if b.failure_threshold == 0 || b.failure_threshold > 1_000 {
                add(
                    format!("stage[{i}].circuit_breaker.failure_threshold"),
                    format!("expected 1 to 1000, got {}", b.failure_threshold),
                );
            }
            if b.reset_timeout_ms == 0 || b.reset_timeout_ms > MAX_DELAY_MS {
                add(
                    format!("stage[{i}].circuit_breaker.reset_timeout"),
                    "expected more than 0 and at most a day".into(),
                );
            }
        }
        if let StageRun::Command {
            argv, timeout_ms, ..
        } = &s.run
        {
            if argv.is_empty() || argv[0].is_empty() || argv.iter().any(|a| a.contains('\0')) {
                add(
                    format!("stage[{i}].command"),
                    "expected a non-empty list without NUL: the program and its arguments".into(),
                );
            }
            if *timeout_ms == 0 || *timeout_ms > MAX_DELAY_MS {
                add(
                    format!("stage[{i}].timeout"),
                    "expected more than 0 and at most a day".into(),
                );
            }
        }
    }
    if let Some(cycle) = cycle(p, &index) {
        add(
            "stage".into(),
            format!(
                "the stages depend on each other in a cycle: {}",
                cycle.join(" -> ")
            ),
        );
    }
    out
}

/// A dependency cycle among the stages, as the names along it (the first
/// repeated at the end), if there is one.
fn cycle(p: &PipelineSpec, index: &BTreeMap<&str, usize>) -> Option<Vec<String>> {
    // Iterative depth-first search: 0 unseen, 1 on the path, 2 done.
    let n = p.stages.len();
    let mut mark = vec![0u8; n];
    for root in 0..n {
        if mark[root] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        mark[root] = 1;
        while let Some(&mut (at, ref mut next)) = path.last_mut() {
            let deps = &p.stages[at].depends_on;
            if *next < deps.len() {
                let d = &deps[*next];
                *next += 1;
                let Some(&j) = index.get(d.as_str()) else {
                    continue;
                };
                match mark[j] {
                    0 => {
                        mark[j] = 1;
                        path.push((j, 0));
                    }
                    1 => {
                        let from = path.iter().position(|&(k, _)| k == j).unwrap_or(0);
                        let mut names: Vec<String> = path[from..]
                            .iter()
                            .map(|&(k, _)| p.stages[k].name.clone())
                            .collect();
                        names.push(p.stages[j].name.clone());
                        return Some(names);
                    }
                    _ => {}
                }
            } else {
                mark[at] = 2;
                path.pop();
            }
        }
    }
    None
}
