//! Workflow recipes (docs/workflows.md): a named, versioned list of steps
//! that one attempt runs on one device, in order. The master stores every
//! version (a ledger event each); a session names one, and its tasks carry
//! the steps of the version it was given at submit time.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default time a step may take (seed 001: 90 s).
pub const STEP_TIMEOUT_MS: u64 = 90_000;
/// Default time of a step named `upload` (seed 001: 30 s).
pub const UPLOAD_TIMEOUT_MS: u64 = 30_000;
/// Longest time a step may be given: a day.
pub const MAX_STEP_TIMEOUT_MS: u64 = 86_400_000;
/// Most steps a recipe may have.
pub const MAX_STEPS: usize = 64;
/// Longest workflow or step name.
pub const MAX_NAME: usize = 64;
/// Most versions the master keeps of one workflow; adding one more is refused.
pub const MAX_VERSIONS: usize = 1_000;
/// Most workflows the master keeps.
pub const MAX_WORKFLOWS: usize = 1_000;

/// What a step's failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The attempt fails (it counts against `max_attempts`).
    #[default]
    Fail,
    /// The device is turned away for this task: the task goes to another
    /// device without spending an attempt.
    SkipDevice,
    /// The next step runs anyway.
    Continue,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::SkipDevice => "skip_device",
            Self::Continue => "continue",
        }
    }
}

/// One step: a program, as the `command` executor runs one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub timeout_ms: u64,
    #[serde(default)]
    pub on_failure: OnFailure,
}

/// A workflow at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workflow {
    pub name: String,
    /// 1 for the first recipe of a name, then one more each time it is
    /// added again; 0 in a recipe not stored yet.
    pub version: u32,
    pub steps: Vec<Step>,
    /// The device health gate, run right before the steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<DeviceCheck>,
    /// The device preflight, run before the steps of every attempt (after
    /// the health gate): when it fails, its error is the attempt's
    /// `failure_reason` and the device turns the task away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<Preflight>,
}

/// A device preflight (seed 001 §2, gate 2): one program, recorded as the
/// step `preflight`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preflight {
    pub argv: Vec<String>,
    pub timeout_ms: u64,
}

/// Default time a preflight may take (seed 001: 10 to 20 s).
pub const PREFLIGHT_TIMEOUT_MS: u64 = 20_000;

/// A device health gate (seed 001 §2): `argv` runs before the steps of
/// every attempt; when it fails, `restart` runs once and `argv` again; if
/// it still fails the device turns the task away (another device takes
/// it, no attempt spent). Both are recorded like steps (`check`,
/// `restart`, `recheck`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCheck {
    pub argv: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<Vec<String>>,
    pub timeout_ms: u64,
}

/// Default time a device check or restart may take.
pub const CHECK_TIMEOUT_MS: u64 = 30_000;

impl Workflow {
    /// `name@version`, as manifests and logs name it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// What one step of one attempt did, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    /// The exit code; `None` when it did not exit by itself (timeout,
    /// cancelled, could not start, killed by a signal), or did not run.
    pub exit: Option<i32>,
    pub duration_ms: u64,
    /// The last error line (stderr's last line, or why it did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether `name` may name a workflow or a step: 1 to [`MAX_NAME`]
/// characters from `A-Z a-z 0-9 - _ .`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `NAME` or `NAME@VERSION` (what a session's `workflow` holds):
/// the name and the version, `None` for the latest.
pub fn parse_ref(s: &str) -> Result<(String, Option<u32>), String> {
    let (name, version) = match s.split_once('@') {
        Some((n, v)) => {
            let v: u32 = v.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
                format!("expected `NAME` or `NAME@VERSION` with a version from 1, got `{s}`")
            })?;
            (n, Some(v))
        }
        None => (s, None),
    };
    if !valid_name(name) {
        return Err(format!(
            "expected a workflow name of 1 to {MAX_NAME} characters from `A-Z a-z 0-9 - _ .`, got `{name}`"
        ));
    }
    Ok((name.to_string(), version))
}

/// Every problem of a recipe: `(where, what was expected)`, in order.
pub fn problems(w: &Workflow) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !valid_name(&w.name) {
        out.push((
            "name".to_string(),
            format!(
                "expected 1 to {MAX_NAME} characters from `A-Z a-z 0-9 - _ .`, got `{}`",
                w.name
            ),
        ));
    }
    if w.steps.is_empty() || w.steps.len() > MAX_STEPS {
        out.push((
            "step".to_string(),
            format!(
                "expected 1 to {MAX_STEPS} `[[step]]`s, got {}",
                w.steps.len()
            ),
        ));
    }
    if let Some(c) = &w.check {
        if c.argv.is_empty() || c.argv[0].is_empty() || c.argv.iter().any(|a| a.contains('\0')) {
            out.push((
                "check.argv".to_string(),
                "expected a non-empty list without NUL: the program and its arguments".into(),
            ));
        }
        if let Some(r) = &c.restart {
            if r.is_empty() || r[0].is_empty() || r.iter().any(|a| a.contains('\0')) {
                out.push((
                    "check.restart".to_string(),
                    "expected a non-empty list without NUL: the program and its arguments".into(),
                ));
            }
        }
        if c.timeout_ms == 0 || c.timeout_ms > MAX_STEP_TIMEOUT_MS {
            out.push((
                "check.timeout_ms".to_string(),
                format!("expected 1 to {MAX_STEP_TIMEOUT_MS}, got {}", c.timeout_ms),
            ));
        }
    }
    if let Some(pre) = &w.preflight {
        if pre.argv.is_empty()
            || pre.argv[0].is_empty()
            || pre.argv.iter().any(|a| a.contains('\0'))
        {
            out.push((
                "preflight.argv".to_string(),
                "expected a non-empty list without NUL: the program and its arguments".into(),
            ));
        }
        if pre.timeout_ms == 0 || pre.timeout_ms > MAX_STEP_TIMEOUT_MS {
            out.push((
                "preflight.timeout_ms".to_string(),
                format!(
                    "expected 1 to {MAX_STEP_TIMEOUT_MS}, got {}",
                    pre.timeout_ms
                ),
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, s) in w.steps.iter().enumerate() {
        let at = |k: &str| format!("step[{i}].{k}");
        if !valid_name(&s.name) {
            out.push((
                at("name"),
                format!(
                    "expected 1 to {MAX_NAME} characters from `A-Z a-z 0-9 - _ .`, got `{}`",
                    s.name
                ),
            ));
        } else if !seen.insert(s.name.as_str()) {
            out.push((at("name"), format!("`{}` names two steps", s.name)));
        }
        if s.argv.is_empty() || s.argv[0].is_empty() {
            out.push((
                at("argv"),
                "expected a non-empty list: the program and its arguments".into(),
            ));
        }
        for (j, a) in s.argv.iter().enumerate() {
            if a.contains('\0') {
                out.push((
                    format!("step[{i}].argv[{j}]"),
                    "expected no NUL character".into(),
                ));
            }
        }
        for (k, v) in &s.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                out.push((
                    format!("step[{i}].env.{k}"),
                    "expected a variable name without `=` or NUL, and a value without NUL".into(),
                ));
            }
        }
        if s.timeout_ms == 0 || s.timeout_ms > MAX_STEP_TIMEOUT_MS {
            out.push((
                at("timeout_ms"),
                format!("expected 1 to {MAX_STEP_TIMEOUT_MS}, got {}", s.timeout_ms),
            ));
        }
    }
    out
}

/// The default timeout of a step named `name`.
pub fn default_timeout(name: &str) -> u64 {
    if name == "upload" {
        UPLOAD_TIMEOUT_MS
    } else {
        STEP_TIMEOUT_MS
    }
}

/// The time an attempt of `w` may take in all: every step's timeout.
pub fn total_timeout_ms(w: &Workflow) -> u64 {
    // A check may run three times (check, restart, check again).
    let gate = w
        .check
        .as_ref()
        .map_or(0, |c| c.timeout_ms.saturating_mul(3))
        .saturating_add(w.preflight.as_ref().map_or(0, |p| p.timeout_ms));
    w.steps
        .iter()
        .map(|s| s.timeout_ms)
        .fold(gate, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, timeout_ms: u64) -> Step {
        Step {
            name: name.into(),
            argv: vec!["true".into()],
            env: BTreeMap::new(),
            timeout_ms,
            on_failure: OnFailure::Fail,
        }
    }

    #[test]
    fn references_name_a_workflow_and_maybe_a_version() {
        assert_eq!(parse_ref("login").unwrap(), ("login".into(), None));
        assert_eq!(parse_ref("login@3").unwrap(), ("login".into(), Some(3)));
        for bad in [
            "",
            "@3",
            "login@",
            "login@0",
            "login@x",
            "a b",
            "login@3@4",
            "../x",
        ] {
            assert!(parse_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_problem_of_a_recipe_is_named_where_it_is() {
        let ok = Workflow {
            name: "w".into(),
            version: 0,
            steps: vec![step("a", 10), step("upload", 10)],
            check: None,
            preflight: None,
        };
        assert!(problems(&ok).is_empty());
        let bad = Workflow {
            name: "bad name".into(),
            version: 0,
            steps: vec![step("a", 0), step("a", MAX_STEP_TIMEOUT_MS + 1), {
                let mut s = step("c", 5);
                s.argv.clear();
                s
            }],
            check: None,
            preflight: None,
        };
        let got: Vec<String> = problems(&bad).into_iter().map(|p| p.0).collect();
        assert_eq!(
            got,
            [
                "name",
                "step[0].timeout_ms",
                "step[1].name",
                "step[1].timeout_ms",
                "step[2].argv"
            ]
        );
        let empty = Workflow {
            name: "w".into(),
            version: 0,
            steps: vec![],
            check: None,
            preflight: None,
        };
        assert_eq!(problems(&empty)[0].0, "step");
    }

    #[test]
    fn upload_steps_default_to_30_s_and_others_to_90_s() {
        assert_eq!(default_timeout("upload"), 30_000);
        assert_eq!(default_timeout("login"), 90_000);
    }
}
