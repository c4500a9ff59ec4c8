//! Pipeline files (docs/pipelines.md): TOML, checked like session files,
//! one line per problem naming the file and the key.
//!
//! ```toml
//! name = "nightly"
//! schedule = { cron = "0 3 * * *", tz = "Europe/Paris" }   # or { every = "5m" }
//! catch_up = true                # a slot missed while the master was down fires once
//! trigger = { on = "pipeline.completed", filter = { pipeline = "ingest" } }
//! [params]                       # defaults; `orchctl pipeline run --param k=v` overrides
//! region = "eu"
//!
//! [[stage]]
//! name = "scan"
//! command = ["python3", "{pipeline_dir}/scan.py"]   # one program on one device
//! require = { os = "linux" }     # the device it runs on
//! timeout = "10m"
//! retry = { max_attempts = 3, backoff = "exponential", base_delay = "5s", max_delay = "1m" }
//! circuit_breaker = { failure_threshold = 5, reset_timeout = "60s" }
//! on_failure = "fail"            # or "continue": its dependents run anyway
//! fallback = "scan_cached"       # a stage run instead when this one fails for good
//!
//! [[stage]]
//! name = "render"
//! depends_on = ["scan"]
//! session = "render.toml"        # a session file, relative to this file
//!                                # (or an inline table: [stage.session])
//! ```
//!
//! Durations are `"500ms"`, `"5s"`, `"10m"`, `"2h"`, … or integer
//! milliseconds. `{pipeline_dir}` is replaced, when the file is read, by
//! the folder the file is in.

use std::collections::BTreeMap;
use std::path::Path;

use orch_actors::pipeline::{
    problems, Backoff, BreakerSpec, EventTrigger, OnFailure, PipelineSpec, RetryPolicy, Schedule,
    StageRun, StageSpec, COMMAND_TIMEOUT_MS,
};
use orch_actors::protocol::Capabilities;
use serde::Deserialize;

use crate::config::{ConfigError, ConfigErrors};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    name: String,
    schedule: Option<RawSchedule>,
    catch_up: Option<bool>,
    trigger: Option<RawTrigger>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    stage: Vec<RawStage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: Option<String>,
    tz: Option<String>,
    every: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    on: String,
    #[serde(default)]
    filter: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Ms(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSession {
    File(String),
    Inline(toml::Table),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    #[serde(default)]
    depends_on: Vec<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    require: Option<Capabilities>,
    timeout: Option<RawDuration>,
    session: Option<RawSession>,
    retry: Option<RawRetry>,
    circuit_breaker: Option<RawBreaker>,
    #[serde(default)]
    on_failure: OnFailure,
    fallback: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    #[serde(default)]
    backoff: Backoff,
    base_delay: Option<RawDuration>,
    max_delay: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failure_threshold: u32,
    reset_timeout: RawDuration,
}

/// Milliseconds of a duration value, or what was expected.
fn millis(d: &RawDuration) -> Result<u64, String> {
    match d {
        RawDuration::Ms(ms) => Ok(*ms),
        RawDuration::Text(t) => humantime::parse_duration(t.trim())
            .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
            .map_err(|e| {
                format!(
                    "expected a duration such as `500ms`, `5s`, `10m` or integer milliseconds, got `{}`: {e}",
                    crate::config::shown(t)
                )
            }),
    }
}

/// Read and check a pipeline file; its stages' session files are read too.
pub fn load(path: &Path) -> Result<PipelineSpec, ConfigErrors> {
    let (file, text, dir) = crate::config::read_toml_file(path)?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    parse(&text, &file, Some(&dir))
}

/// The text to send for the pipeline file at `path`: checked, with
/// `{pipeline_dir}` replaced and every stage's session file read into an
/// inline `[stage.session]` table (`{session_dir}` replaced), so the node
/// that receives it needs no file of this machine.
pub fn inline(path: &Path) -> Result<String, ConfigErrors> {
    load(path)?;
    let (file, text, dir) = crate::config::read_toml_file(path)?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let text = text.replace("{pipeline_dir}", &dir.display().to_string());
    let fail = |expected: String| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            key: "(file)".into(),
            expected,
        }])
    };
    let mut doc: toml::Table = toml::from_str(&text).map_err(|e| fail(e.message().to_string()))?;
    if let Some(toml::Value::Array(stages)) = doc.get_mut("stage") {
        for st in stages.iter_mut() {
            let Some(t) = st.as_table_mut() else { continue };
            let Some(toml::Value::String(f)) = t.get("session") else {
                continue;
            };
            let spath = dir.join(f);
            let (sfile, stext, sdir) = crate::config::read_toml_file(&spath)?;
            let sdir = std::fs::canonicalize(&sdir).unwrap_or(sdir);
            let stext = stext.replace("{session_dir}", &sdir.display().to_string());
            let table: toml::Table =
                toml::from_str(&stext).map_err(|e| fail(format!("`{sfile}`: {}", e.message())))?;
            t.insert("session".into(), toml::Value::Table(table));
        }
    }
    toml::to_string(&doc).map_err(|e| fail(e.to_string()))
}

/// Parse and check pipeline text from `file`; `dir` is the folder session
/// files are relative to and `{pipeline_dir}` names (`None`: text from the
/// API, where a stage's session must be inline).
pub fn parse(text: &str, file: &str, dir: Option<&Path>) -> Result<PipelineSpec, ConfigErrors> {
    let raw: RawPipeline = crate::config::parse_toml(text, file)?;
    let mut found: Vec<ConfigError> = Vec::new();
    let add = |found: &mut Vec<ConfigError>, key: &str, expected: String| {
        found.push(ConfigError {
            file: file.to_string(),
            key: crate::config::shown(key),
            expected: crate::config::clip(&expected, 512),
        })
    };
    let sub = |s: &str| match dir {
        Some(d) => s.replace("{pipeline_dir}", &d.display().to_string()),
        None => s.to_string(),
    };
    let schedule = match raw.schedule {
        None => None,
        Some(RawSchedule {
            cron: Some(expr),
            tz,
            every: None,
        }) => Some(Schedule::Cron {
            expr,
            tz: tz.unwrap_or_else(|| "UTC".into()),
        }),
        Some(RawSchedule {
            cron: None,
            tz: None,
            every: Some(e),
        }) => match millis(&e) {
            Ok(ms) => Some(Schedule::Every { ms }),
            Err(e) => {
                add(&mut found, "schedule.every", e);
                None
            }
        },
        Some(_) => {
            add(&mut found, "schedule",
                "expected exactly one of `cron = \"MIN HOUR DOM MON DOW\"` (with an optional `tz`) and `every = \"5m\"`".into(),
            );
            None
        }
    };
    let mut stages = Vec::with_capacity(raw.stage.len());
    for (i, s) in raw.stage.into_iter().enumerate() {
        let at = |k: &str| format!("stage[{i}].{k}");
        let run = match (s.command, s.session) {
            (Some(argv), None) => {
                let timeout_ms = match s.timeout.as_ref().map(millis) {
                    None => COMMAND_TIMEOUT_MS,
                    Some(Ok(ms)) => ms,
                    Some(Err(e)) => {
                        add(&mut found, &at("timeout"), e);
                        COMMAND_TIMEOUT_MS
                    }
                };
                let argv: Vec<String> = argv.iter().map(|a| sub(a)).collect();
                for (j, a) in argv.iter().enumerate() {
                    if let Some(p) = crate::session_file::unknown_placeholders(a).first() {
                        add(&mut found, &format!("stage[{i}].command[{j}]"),
                            format!("unknown placeholder `{p}`; a command stage knows `{{pipeline_dir}}` and the task placeholders of docs/sessions.md"),
                        );
                    }
                }
                StageRun::Command {
                    argv,
                    env: s.env.iter().map(|(k, v)| (k.clone(), sub(v))).collect(),
                    require: s.require.unwrap_or_default(),
                    timeout_ms,
                }
            }
            (None, Some(session)) => {
                if s.require.is_some() || s.timeout.is_some() || !s.env.is_empty() {
                    add(&mut found, &at("session"),
                        "`require`, `timeout` and `env` belong to a command stage; a session stage sets them in its session".into(),
                    );
                }
                let parsed = match (session, dir) {
                    (RawSession::File(f), Some(d)) => {
                        let path = d.join(&f);
                        if path.is_file() {
                            crate::session_file::load(&path)
                        } else {
                            Err(ConfigErrors(vec![ConfigError {
                                file: file.to_string(),
                                key: at("session"),
                                expected: format!(
                                    "a session file, relative to this file: no file `{}`",
                                    path.display()
                                ),
                            }]))
                        }
                    }
                    (RawSession::File(f), None) => Err(ConfigErrors(vec![ConfigError {
                        file: file.to_string(),
                        key: at("session"),
                        expected: format!(
                            "an inline `[stage.session]` table: `{}` names a file, which only `orchctl pipeline add` can read",
                            crate::config::shown(&f)
                        ),
                    }])),
                    (RawSession::Inline(t), _) => {
                        let text = toml::to_string(&t).unwrap_or_default();
                        crate::session_file::parse(&text, &format!("{file} {}", at("session")), dir)
                    }
                };
                match parsed {
                    Ok(spec) => StageRun::Session(Box::new(spec)),
                    Err(ConfigErrors(es)) => {
                        found.extend(es);
                        continue;
                    }
                }
            }
            _ => {
                add(&mut found, &format!("stage[{i}]"),
                    "expected exactly one of `command = [...]` and `session = \"FILE\"` (or a `[stage.session]` table)".into(),
                );
                continue;
            }
        };
        let mut retry = RetryPolicy::default();
        if let Some(r) = s.retry {
            if let Some(n) = r.max_attempts {
                retry.max_attempts = n;
            }
            retry.backoff = r.backoff;
            let max_set = r.max_delay.is_some();
            for (key, v, slot) in [
                ("retry.base_delay", r.base_delay, &mut retry.base_delay_ms),
                ("retry.max_delay", r.max_delay, &mut retry.max_delay_ms),
            ] {
                if let Some(v) = v {
                    match millis(&v) {
                        Ok(ms) => *slot = ms,
                        Err(e) => add(&mut found, &at(key), e),
                    }
                }
            }
            // Without its own `max_delay`, a long `base_delay` is its own cap.
            if !max_set {
                retry.max_delay_ms = retry.max_delay_ms.max(retry.base_delay_ms);
            }
        }
        let circuit_breaker = match s.circuit_breaker {
            None => None,
            Some(b) => match millis(&b.reset_timeout) {
                Ok(ms) => Some(BreakerSpec {
                    failure_threshold: b.failure_threshold,
                    reset_timeout_ms: ms,
                }),
                Err(e) => {
                    add(&mut found, &at("circuit_breaker.reset_timeout"), e);
                    None
                }
            },
        };
        stages.push(StageSpec {
            name: s.name,
            depends_on: s.depends_on,
            run,
            retry,
            circuit_breaker,
            on_failure: s.on_failure,
            fallback: s.fallback,
        });
    }
    let spec = PipelineSpec {
        name: raw.name,
        version: 0,
        schedule,
        catch_up: raw.catch_up.unwrap_or(true),
        trigger: raw.trigger.map(|t| EventTrigger {
            on: t.on,
            filter: t.filter,
        }),
        params: raw.params,
        stages,
    };
    if found.is_empty() {
        for (key, expected) in problems(&spec) {
            add(&mut found, &key, expected);
        }
    }
    if found.is_empty() {
        Ok(spec)
    } else {
        Err(ConfigErrors(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "nightly"
schedule = { cron = "0 3 * * *", tz = "Europe/Paris" }
[params]
region = "eu"
[[stage]]
name = "scan"
command = ["sh", "-c", "echo scan"]
timeout = "10m"
retry = { max_attempts = 3, backoff = "exponential", base_delay = "5s", max_delay = "1m" }
circuit_breaker = { failure_threshold = 5, reset_timeout = "60s" }
fallback = "cached"
[[stage]]
name = "cached"
command = ["true"]
[[stage]]
name = "render"
depends_on = ["scan"]
[stage.session]
name = "render"
frames = { start = 0, end = 8 }
chunk_frames = 2
id_chunk_size = 10
max_attempts = 1
backoff_ms = 100
timeout_ms = 10000
[stage.session.executor]
kind = "builtin:noop"
"#;

    #[test]
    fn a_pipeline_parses_with_its_durations_and_inline_session() {
        let p = parse(GOOD, "p.toml", None).unwrap();
        assert_eq!(p.stages.len(), 3);
        let s = &p.stages[0];
        assert_eq!(s.retry.max_attempts, 3);
        assert_eq!(
            (s.retry.base_delay_ms, s.retry.max_delay_ms),
            (5_000, 60_000)
        );
        assert_eq!(s.circuit_breaker.unwrap().reset_timeout_ms, 60_000);
        assert!(matches!(
            &s.run,
            StageRun::Command {
                timeout_ms: 600_000,
                ..
            }
        ));
        assert!(matches!(&p.stages[2].run, StageRun::Session(x) if x.frames.len() == 8));
        assert_eq!(
            p.schedule,
            Some(Schedule::Cron {
                expr: "0 3 * * *".into(),
                tz: "Europe/Paris".into()
            })
        );
        let every = parse("name = \"e\"\nschedule = { every = \"5m\" }\n[[stage]]\nname = \"a\"\ncommand = [\"true\"]\n", "e.toml", None).unwrap();
        assert_eq!(every.schedule, Some(Schedule::Every { ms: 300_000 }));
    }

    #[test]
    fn bad_pipelines_are_one_line_each_naming_the_key() {
        let stage = |extra: &str| {
            format!("name = \"p\"\n[[stage]]\nname = \"a\"\ncommand = [\"true\"]\n{extra}")
        };
        for (text, key, what) in [
            ("name = \"p\"\n[[stage]]\nname = \"a\"\ncommand = [\"true\"]\ndepends_on = [\"b\"]\n[[stage]]\nname = \"b\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n".to_string(), "stage", "cycle: a -> b -> a"),
            (stage("depends_on = [\"ghost\"]\n"), "stage[0].depends_on", "`ghost`"),
            (format!("schedule = {{ cron = \"0 25 * * *\" }}\n{}", stage("")).replacen("name = \"p\"\n", "", 1).replacen("schedule", "name = \"p\"\nschedule", 1), "schedule.cron", "cron"),
            (stage("colour = \"red\"\n"), "colour", "unknown field"),
            (stage("timeout = \"soon\"\n"), "stage[0].timeout", "duration"),
            (stage("retry = { max_attempts = 0 }\n"), "stage[0].retry.max_attempts", "1 to 100"),
            (stage("session = \"x.toml\"\n"), "stage[0]", "exactly one of"),
            (stage("fallback = \"a\"\n"), "stage[0].fallback", "own fallback"),
            ("name = \"p\"\n".to_string(), "stage", "1 to"),
            ("name = \"p q\"\n[[stage]]\nname = \"a\"\ncommand = [\"true\"]\n".to_string(), "name", "characters"),
            ("\u{0}garbage".to_string(), "", ""),
        ] {
            let e = parse(&text, "p.toml", None).expect_err(&text).to_string();
            assert!(e.contains("`p.toml`"), "{e}");
            assert!(e.contains(key), "{text:?}: {e}");
            assert!(e.contains(what), "{text:?}: {e}");
            assert_eq!(e.lines().count(), 1, "one problem, one line: {e}");
        }
    }

    #[test]
    fn a_session_file_is_read_relative_to_the_pipeline_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.toml"),
            "name = \"s\"\nframes = { start = 0, end = 4 }\nchunk_frames = 2\nid_chunk_size = 10\nmax_attempts = 1\nbackoff_ms = 100\ntimeout_ms = 10000\n[executor]\nkind = \"command\"\nargv = [\"{session_dir}/run.sh\", \"{start}\"]\n",
        )
        .unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, "name = \"p\"\n[[stage]]\nname = \"a\"\nsession = \"s.toml\"\n[[stage]]\nname = \"b\"\ncommand = [\"{pipeline_dir}/b.sh\"]\n").unwrap();
        let spec = load(&p).unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        match &spec.stages[0].run {
            StageRun::Session(s) => match &s.executor {
                orch_actors::protocol::ExecutorSpec::Command { argv, .. } => {
                    assert_eq!(argv[0], format!("{}/run.sh", real.display()))
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&spec.stages[1].run, StageRun::Command { argv, .. } if argv[0] == format!("{}/b.sh", real.display()))
        );
        std::fs::write(
            &p,
            "name = \"p\"\n[[stage]]\nname = \"a\"\nsession = \"missing.toml\"\n",
        )
        .unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}
