//! Workflow recipe files (docs/workflows.md): TOML, checked like session
//! files, one line per problem naming the file and the key.
//!
//! ```toml
//! name = "login-screenshot"
//!
//! [[step]]
//! name = "login"
//! argv = ["./fake-phone.sh", "login", "{handle}"]
//! timeout_ms = 60000          # default 90000; 30000 for a step named `upload`
//! on_failure = "skip_device"  # fail (default) | skip_device | continue
//!
//! [preflight]                 # the device preflight, before every run
//! argv = ["./fake-phone.sh", "preflight", "{handle}"]
//! timeout_ms = 20000          # default 20000
//!
//! [check]                     # the device health gate, before the steps
//! argv = ["adb", "-s", "{handle}", "get-state"]
//! restart = ["adb", "-s", "{handle}", "reboot"]   # tried once when the check fails
//! timeout_ms = 30000
//! ```

use std::collections::BTreeMap;

use orch_actors::workflow::{default_timeout, problems, OnFailure, Step, Workflow};
use serde::Deserialize;

use crate::config::{ConfigError, ConfigErrors};
use crate::session_file::{unknown_placeholders, PLACEHOLDERS};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    name: String,
    #[serde(default)]
    step: Vec<RawStep>,
    check: Option<RawCheck>,
    preflight: Option<RawPreflight>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPreflight {
    argv: Vec<String>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    argv: Vec<String>,
    restart: Option<Vec<String>>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    argv: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    on_failure: OnFailure,
}

/// The recipe in `text` (from `file`), version 0 (the master numbers it).
pub fn parse(text: &str, file: &str) -> Result<Workflow, ConfigErrors> {
    let raw: RawWorkflow = crate::config::parse_toml(text, file)?;
    let w = Workflow {
        check: raw.check.map(|c| orch_actors::workflow::DeviceCheck {
            argv: c.argv,
            restart: c.restart,
            timeout_ms: c
                .timeout_ms
                .unwrap_or(orch_actors::workflow::CHECK_TIMEOUT_MS),
        }),
        preflight: raw.preflight.map(|p| orch_actors::workflow::Preflight {
            argv: p.argv,
            timeout_ms: p
                .timeout_ms
                .unwrap_or(orch_actors::workflow::PREFLIGHT_TIMEOUT_MS),
        }),
        name: raw.name,
        version: 0,
        steps: raw
            .step
            .into_iter()
            .map(|s| Step {
                timeout_ms: s.timeout_ms.unwrap_or_else(|| default_timeout(&s.name)),
                name: s.name,
                argv: s.argv,
                env: s.env,
                on_failure: s.on_failure,
            })
            .collect(),
    };
    let mut found: Vec<ConfigError> = problems(&w)
        .into_iter()
        .map(|(key, expected)| ConfigError {
            file: file.to_string(),
            key: crate::config::shown(&key),
            expected: crate::config::clip(&expected, 512),
        })
        .collect();
    let gates = [
        w.check
            .iter()
            .flat_map(|c| c.argv.iter().chain(c.restart.iter().flatten()))
            .map(|v| ("check", v))
            .collect::<Vec<_>>(),
        w.preflight
            .iter()
            .flat_map(|p| p.argv.iter())
            .map(|v| ("preflight", v))
            .collect(),
    ];
    for (key, v) in gates.into_iter().flatten() {
        if let Some(p) = unknown_placeholders(v).first() {
            found.push(ConfigError {
                file: file.to_string(),
                key: key.into(),
                expected: format!("unknown placeholder `{p}`"),
            });
        }
    }
    for (i, s) in w.steps.iter().enumerate() {
        let values = s
            .argv
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("step[{i}].argv[{j}]"), a))
            .chain(s.env.iter().map(|(k, v)| (format!("step[{i}].env.{k}"), v)));
        for (key, v) in values {
            if let Some(p) = unknown_placeholders(v).first() {
                let known: Vec<String> = PLACEHOLDERS.iter().map(|p| format!("{{{p}}}")).collect();
                found.push(ConfigError {
                    file: file.to_string(),
                    key,
                    expected: format!("unknown placeholder `{p}`; known: {}", known.join(" ")),
                });
            }
        }
    }
    if found.is_empty() {
        Ok(w)
    } else {
        Err(ConfigErrors(found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipe_parses_with_the_seeds_defaults() {
        let w = parse(
            "name = \"login\"\n[[step]]\nname = \"boot\"\nargv = [\"true\", \"{handle}\"]\n[[step]]\nname = \"upload\"\nargv = [\"true\"]\non_failure = \"continue\"\n",
            "w.toml",
        )
        .unwrap();
        assert_eq!(w.steps[0].timeout_ms, 90_000);
        assert_eq!(w.steps[1].timeout_ms, 30_000);
        assert_eq!(w.steps[1].on_failure, OnFailure::Continue);
        assert_eq!(w.version, 0);
    }

    #[test]
    fn bad_recipes_are_one_line_each_naming_the_key() {
        for (text, key) in [
            ("name = \"w\"\n[[step]]\nname = \"a\"\nargv = [\"x\"]\non_failure = \"explode\"\n", "on_failure"),
            ("name = \"w\"\n[[step]]\nname = \"a\"\nargv = [\"x\"]\ntimeout_ms = 0\n", "step[0].timeout_ms"),
            ("name = \"w\"\n", "step"),
            ("name = \"w\"\n[[step]]\nname = \"a\"\nargv = []\n", "step[0].argv"),
            ("name = \"w\"\n[[step]]\nname = \"a\"\nargv = [\"{nope}\"]\n", "step[0].argv[0]"),
            ("name = \"w w\"\n[[step]]\nname = \"a\"\nargv = [\"x\"]\n", "name"),
            ("name = \"w\"\n[[step]]\nname = \"a\"\nargv = [\"x\"]\nextra = 1\n", "extra"),
            ("name = \"w\"\n[[step]]\nname = \"a\"\nargv = [\"x\"]\n[[step]]\nname = \"a\"\nargv = [\"x\"]\n", "step[1].name"),
            ("\u{0}garbage", ""),
        ] {
            let e = parse(text, "w.toml").expect_err(text).to_string();
            assert!(e.contains("`w.toml`"), "{e}");
            assert!(e.contains(key), "{text:?}: {e}");
            assert_eq!(e.lines().count(), 1, "one problem, one line: {e}");
        }
    }
}
