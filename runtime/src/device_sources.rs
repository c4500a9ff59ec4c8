//! Discovery sources (`[[device_source]]`, docs/workflows.md, Discovered
//! devices): programs the worker runs every `every_s` seconds that list the
//! devices present now. Devices that appear join the worker; devices that
//! disappear are gone, and their attempts are requeued (`device_gone`).
//!
//! A source is a command that prints one JSON object a line
//! (`{"id": "R58M1", "handle": "R58M1", "capabilities": {"os": "android"},
//! "state": "offline", "error": "unauthorized", "gpu_usage": 0.4}`; only
//! `id` is required), or a built-in one: `adb` (`adb devices -l`) or
//! `nvidia` (`nvidia-smi --query-gpu=...`). A run that fails (cannot start,
//! exits non-zero, runs past `timeout_ms`, prints more than
//! [`MAX_OUTPUT`] bytes or a line that does not parse) changes no device:
//! its error is logged once and counted, and the source's devices go
//! offline when none was listed for `online_window_s`.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use orch_actors::protocol::{CapValue, Capabilities, DeviceInfo};
use orch_actors::worker::{Found, WorkerMsg};
use ractor::ActorRef;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Most bytes one run may print.
pub const MAX_OUTPUT: usize = 4 * 1024 * 1024;
/// Most devices one run may list.
pub const MAX_LISTED: usize = 10_000;
/// Longest line of a run's output.
pub const MAX_LINE: usize = 4096;
/// Longest error line kept from a run's stderr.
const ERROR_LINE: usize = 512;

/// What a source runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A program printing one JSON object a line.
    Command(Vec<String>),
    /// `adb devices -l`: Android devices, `state` from adb.
    Adb,
    /// `nvidia-smi`: NVIDIA GPUs, with their utilisation.
    Nvidia,
}

/// A `[[device_source]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSource {
    pub name: String,
    pub kind: SourceKind,
    pub every_s: u64,
    pub timeout_ms: u64,
    /// The worker's capabilities with the source's over them; a device's
    /// own go over these.
    pub capabilities: Capabilities,
}

const NVIDIA_QUERY: &str = "--query-gpu=index,uuid,name,memory.total,utilization.gpu";

impl DeviceSource {
    fn argv(&self) -> Vec<String> {
        match &self.kind {
            SourceKind::Command(argv) => argv.clone(),
            SourceKind::Adb => vec!["adb".into(), "devices".into(), "-l".into()],
            SourceKind::Nvidia => vec![
                "nvidia-smi".into(),
                NVIDIA_QUERY.into(),
                "--format=csv,noheader,nounits".into(),
            ],
        }
    }

    /// What the program's name means when it cannot be found.
    fn missing_hint(&self) -> &'static str {
        match self.kind {
            SourceKind::Command(_) => "check the path in `command`",
            SourceKind::Adb => "install Android platform-tools, or remove the source",
            SourceKind::Nvidia => "install the NVIDIA driver, or remove the source",
        }
    }

    /// One run: the devices present, or why the run failed.
    pub async fn run_once(&self) -> Result<Vec<Found>, String> {
        let out = output_of(
            &self.argv(),
            Duration::from_millis(self.timeout_ms),
            self.missing_hint(),
        )
        .await?;
        let found = match self.kind {
            SourceKind::Command(_) => parse_lines(&out, &self.capabilities)?,
            SourceKind::Adb => parse_adb(&out, &self.capabilities)?,
            SourceKind::Nvidia => parse_nvidia(&out, &self.capabilities)?,
        };
        let mut ids = BTreeSet::new();
        for f in &found {
            if !ids.insert(f.info.id.as_str()) {
                return Err(format!("lists device `{}` twice", f.info.id));
            }
        }
        Ok(found)
    }
}

/// Run every source when it is due, for as long as `worker` lives, and
/// tell it what each run found.
pub async fn run(sources: Vec<DeviceSource>, worker: ActorRef<WorkerMsg>) {
    let mut all = Vec::new();
    for s in sources {
        // Visible at 0 from the first scrape, so an alert on its rate works at once.
        metrics::counter!(orch_actors::metrics::DEVICE_SOURCE_ERRORS, "source" => s.name.clone())
            .increment(0);
        let worker = worker.clone();
        all.push(tokio::spawn(async move {
            loop {
                let found = s
                    .run_once()
                    .await
                    .map_err(|e| format!("device source `{}`: {e}", s.name));
                let msg = WorkerMsg::Discovered {
                    source: s.name.clone(),
                    found,
                };
                if worker.cast(msg).is_err() {
                    return; // the worker is gone
                }
                tokio::time::sleep(Duration::from_secs(s.every_s)).await;
            }
        }));
    }
    for t in all {
        let _ = t.await;
    }
}

/// What `argv` prints on stdout, within `timeout` and [`MAX_OUTPUT`] bytes;
/// every process it started is killed when it overruns either.
async fn output_of(argv: &[String], timeout: Duration, hint: &str) -> Result<String, String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("no program".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    crate::procs::prepare(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("`{program}` is not found ({hint})"),
        _ => format!("cannot start `{program}`: {e}"),
    })?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        crate::procs::kill_group(pgid);
        return Err("no pipes to the program".into());
    };
    let err_tail = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
        buf
    });
    let run = async {
        let mut buf = Vec::new();
        let read = (&mut stdout)
            .take(MAX_OUTPUT as u64 + 1)
            .read_to_end(&mut buf)
            .await;
        if buf.len() > MAX_OUTPUT {
            return Err(format!("printed more than {MAX_OUTPUT} bytes"));
        }
        read.map_err(|e| format!("cannot read its output: {e}"))?;
        let status = child
            .wait()
            .await
            .map_err(|e| format!("`{program}`: {e}"))?;
        Ok((buf, status))
    };
    let ended = tokio::time::timeout(timeout, run).await;
    // Whatever happened, nothing it started outlives the run.
    crate::procs::kill_group(pgid);
    let (buf, status) = match ended {
        Err(_) => {
            err_tail.abort();
            return Err(format!("no answer within {} ms", timeout.as_millis()));
        }
        Ok(Err(e)) => {
            err_tail.abort();
            return Err(e);
        }
        Ok(Ok(r)) => r,
    };
    if !status.success() {
        let tail = tokio::time::timeout(Duration::from_millis(500), err_tail)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&tail);
        let last: String = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .chars()
            .take(ERROR_LINE)
            .collect();
        let how = match status.code() {
            Some(c) => format!("exited with code {c}"),
            None => "was killed by a signal".into(),
        };
        return Err(if last.is_empty() {
            format!("`{program}` {how}")
        } else {
            format!("`{program}` {how}: {last}")
        });
    }
    err_tail.abort();
    String::from_utf8(buf).map_err(|_| "printed bytes that are not UTF-8".to_string())
}

/// A line as an error shows it: its first 80 characters, control
/// characters escaped.
fn shown(line: &str) -> String {
    let cut: String = line.chars().take(80).collect();
    let more = if line.chars().count() > 80 { "…" } else { "" };
    format!("{}{more}", cut.escape_debug())
}

/// The lines worth reading: not blank, not `#` comments; each numbered
/// from 1, within [`MAX_LINE`] and [`MAX_LISTED`].
fn lines(out: &str) -> Result<Vec<(usize, &str)>, String> {
    let mut kept = Vec::new();
    for (i, line) in out.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() > MAX_LINE {
            return Err(format!("line {}: longer than {MAX_LINE} bytes", i + 1));
        }
        kept.push((i + 1, line));
        if kept.len() > MAX_LISTED {
            return Err(format!("lists more than {MAX_LISTED} devices"));
        }
    }
    Ok(kept)
}

/// Whether `id` may name a device (as in `cluster.toml`).
fn check_id(n: usize, id: &str) -> Result<(), String> {
    if crate::config::valid_device_id(id) {
        Ok(())
    } else {
        Err(format!(
            "line {n}: device id `{}`: expected 1 to 128 characters from `A-Z a-z 0-9 - _ . :`, not `.` or `..`",
            shown(id)
        ))
    }
}

fn check_handle(n: usize, handle: &str) -> Result<(), String> {
    if handle.is_empty() || handle.len() > 256 || handle.chars().any(char::is_control) {
        Err(format!(
            "line {n}: handle `{}`: expected 1 to 256 characters, no control characters",
            shown(handle)
        ))
    } else {
        Ok(())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFound {
    id: String,
    handle: Option<String>,
    #[serde(default)]
    capabilities: std::collections::BTreeMap<String, serde_json::Value>,
    state: Option<String>,
    error: Option<String>,
    gpu_usage: Option<f64>,
}

/// A command source's output: one JSON object a line.
pub fn parse_lines(out: &str, base: &Capabilities) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (n, line) in lines(out)? {
        let raw: RawFound = serde_json::from_str(line).map_err(|e| {
            format!(
                "line {n}: expected a JSON object such as {{\"id\": \"phone-1\", \"handle\": \"R58M1\"}}, got `{}` ({e})",
                shown(line)
            )
        })?;
        check_id(n, &raw.id)?;
        let handle = raw.handle.unwrap_or_else(|| raw.id.clone());
        check_handle(n, &handle)?;
        let mut capabilities = base.clone();
        for (k, v) in raw.capabilities {
            let value = match &v {
                serde_json::Value::Bool(b) => Some(CapValue::Bool(*b)),
                serde_json::Value::Number(x) => x.as_i64().map(CapValue::Int),
                serde_json::Value::String(s) => Some(CapValue::Str(s.clone())),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .map(CapValue::List),
                _ => None,
            };
            let Some(value) = value else {
                return Err(format!(
                    "line {n}: capability `{}`: expected a boolean, an integer, a string or a list of strings",
                    shown(&k)
                ));
            };
            if k.is_empty() || k.len() > 64 {
                return Err(format!(
                    "line {n}: capability name `{}`: expected 1 to 64 characters",
                    shown(&k)
                ));
            }
            capabilities.insert(k, value);
        }
        let offline = match raw.state.as_deref() {
            None | Some("online") => None,
            Some("offline") => Some(
                raw.error
                    .map(|e| e.chars().take(ERROR_LINE).collect())
                    .unwrap_or_else(|| "its device source lists it offline".into()),
            ),
            Some(other) => {
                return Err(format!(
                    "line {n}: `state`: expected `online` or `offline`, got `{}`",
                    shown(other)
                ))
            }
        };
        let gpu_usage = match raw.gpu_usage {
            None => None,
            Some(u) if (0.0..=1.0).contains(&u) => Some(u as f32),
            Some(u) => return Err(format!("line {n}: `gpu_usage`: expected 0 to 1, got `{u}`")),
        };
        found.push(Found {
            info: DeviceInfo {
                id: raw.id,
                handle,
                capabilities,
            },
            offline,
            gpu_usage,
        });
    }
    Ok(found)
}

/// `adb devices -l`: a header, then `SERIAL STATE key:value...` a line.
/// Only state `device` is online; `unauthorized`, `offline` and the others
/// are present but offline, with adb's word for why.
pub fn parse_adb(out: &str, base: &Capabilities) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (n, line) in lines(out)? {
        if line.starts_with("List of devices") || line.starts_with('*') {
            continue; // the header, and the daemon's own messages
        }
        let mut words = line.split_whitespace();
        let (Some(serial), Some(state)) = (words.next(), words.next()) else {
            return Err(format!(
                "line {n}: expected `SERIAL STATE ...` as `adb devices -l` prints, got `{}`",
                shown(line)
            ));
        };
        check_id(n, serial)?;
        let mut capabilities = base.clone();
        capabilities.insert("os".into(), CapValue::Str("android".into()));
        for w in words {
            if let Some(model) = w.strip_prefix("model:") {
                capabilities.insert("model".into(), CapValue::Str(model.into()));
            }
        }
        let offline = (state != "device").then(|| format!("adb reports it `{state}`"));
        found.push(Found {
            info: DeviceInfo {
                id: serial.into(),
                handle: serial.into(),
                capabilities,
            },
            offline,
            gpu_usage: None,
        });
    }
    Ok(found)
}

/// `nvidia-smi --query-gpu=index,uuid,name,memory.total,utilization.gpu
/// --format=csv,noheader,nounits`: one GPU a line. Its UUID is the device
/// id (stable when indexes change), `cuda:INDEX` its handle.
pub fn parse_nvidia(out: &str, base: &Capabilities) -> Result<Vec<Found>, String> {
    let mut found = Vec::new();
    for (n, line) in lines(out)? {
        let bad = || {
            format!(
                "line {n}: expected `index, uuid, name, memory.total, utilization.gpu` as nvidia-smi prints them, got `{}`",
                shown(line)
            )
        };
        let mut head = line.splitn(3, ',').map(str::trim);
        let (Some(index), Some(uuid), Some(rest)) = (head.next(), head.next(), head.next()) else {
            return Err(bad());
        };
        let mut tail = rest.rsplitn(3, ',').map(str::trim);
        let (Some(util), Some(memory), Some(name)) = (tail.next(), tail.next(), tail.next()) else {
            return Err(bad());
        };
        let index: u32 = index.parse().map_err(|_| bad())?;
        check_id(n, uuid)?;
        let mut capabilities = base.clone();
        capabilities.insert("gpu".into(), CapValue::Bool(true));
        capabilities.insert("gpu_model".into(), CapValue::Str(name.into()));
        if let Ok(mb) = memory.parse::<i64>() {
            capabilities.insert("vram_mb".into(), CapValue::Int(mb));
        }
        // `[N/A]` where the driver does not know it.
        let gpu_usage = util
            .parse::<f32>()
            .ok()
            .filter(|u| (0.0..=100.0).contains(u))
            .map(|u| u / 100.0);
        found.push(Found {
            info: DeviceInfo {
                id: uuid.into(),
                handle: format!("cuda:{index}"),
                capabilities,
            },
            offline: None,
            gpu_usage,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        [("site".to_string(), CapValue::Str("lab".into()))].into()
    }

    #[test]
    fn json_lines_list_devices_with_their_capabilities_and_state() {
        let out = "# a comment\n\n{\"id\": \"p1\", \"handle\": \"R58M1\", \"capabilities\": {\"os\": \"android\", \"api\": 34, \"tags\": [\"fast\"]}}\n{\"id\": \"p2\", \"state\": \"offline\", \"error\": \"battery low\", \"gpu_usage\": 0.5}\n";
        let found = parse_lines(out, &caps()).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].info.handle, "R58M1");
        assert_eq!(
            found[0].info.capabilities.get("api"),
            Some(&CapValue::Int(34))
        );
        assert_eq!(
            found[0].info.capabilities.get("site"),
            Some(&CapValue::Str("lab".into())),
            "the source's capabilities are under the device's"
        );
        assert_eq!(found[0].offline, None);
        assert_eq!(found[1].info.handle, "p2", "the handle defaults to the id");
        assert_eq!(found[1].offline.as_deref(), Some("battery low"));
        assert_eq!(found[1].gpu_usage, Some(0.5));
    }

    #[test]
    fn garbage_and_bad_values_are_one_error_naming_the_line() {
        let cases: &[(&str, &str)] = &[
            ("not json at all", "line 1: expected a JSON object"),
            ("{\"id\": \"a\"}\n[1,2,3]", "line 2: expected a JSON object"),
            ("{\"handle\": \"x\"}", "line 1: expected a JSON object"),
            (
                "{\"id\": \"a\", \"colour\": 1}",
                "line 1: expected a JSON object",
            ),
            ("{\"id\": \"../etc\"}", "line 1: device id `../etc`"),
            ("{\"id\": \"\"}", "line 1: device id ``"),
            ("{\"id\": \"a\", \"state\": \"asleep\"}", "line 1: `state`"),
            ("{\"id\": \"a\", \"gpu_usage\": 7}", "line 1: `gpu_usage`"),
            (
                "{\"id\": \"a\", \"capabilities\": {\"x\": {\"y\": 1}}}",
                "line 1: capability `x`",
            ),
            ("{\"id\": \"a\", \"handle\": \"\"}", "line 1: handle ``"),
        ];
        for (out, want) in cases {
            let e = parse_lines(out, &caps()).unwrap_err();
            assert!(e.starts_with(want), "{out:?}: got `{e}`, want `{want}`");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        // Deep nesting is refused by the decoder's own limit, not a crash.
        let deep = format!(
            "{{\"id\": \"a\", \"capabilities\": {{\"x\": {}{}}}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(parse_lines(&deep, &caps()).is_err());
        let long = format!("{{\"id\": \"{}\"}}", "a".repeat(MAX_LINE));
        assert!(parse_lines(&long, &caps())
            .unwrap_err()
            .contains("longer than"));
        let many: String = (0..=MAX_LISTED)
            .map(|i| format!("{{\"id\": \"d{i}\"}}\n"))
            .collect();
        assert!(parse_lines(&many, &caps())
            .unwrap_err()
            .contains("more than"));
    }

    #[test]
    fn adb_lists_ready_devices_online_and_the_others_offline_with_adbs_word() {
        let out = "List of devices attached\n\
            * daemon started successfully\n\
            emulator-5554          device product:sdk_gphone64 model:Pixel_7 device:emu64x transport_id:1\n\
            R58M123ABC             unauthorized usb:1-1 transport_id:2\n\
            192.168.1.7:5555       offline transport_id:3\n\n";
        let found = parse_adb(out, &caps()).unwrap();
        let ids: Vec<&str> = found.iter().map(|f| f.info.id.as_str()).collect();
        assert_eq!(ids, ["emulator-5554", "R58M123ABC", "192.168.1.7:5555"]);
        assert_eq!(found[0].offline, None);
        assert_eq!(
            found[0].info.capabilities.get("model"),
            Some(&CapValue::Str("Pixel_7".into()))
        );
        assert_eq!(
            found[1].offline.as_deref(),
            Some("adb reports it `unauthorized`")
        );
        assert_eq!(
            found[2].offline.as_deref(),
            Some("adb reports it `offline`")
        );
        assert!(parse_adb("List of devices attached\nlonely\n", &caps())
            .unwrap_err()
            .starts_with("line 2: expected `SERIAL STATE"));
    }

    #[test]
    fn nvidia_smi_lists_gpus_by_uuid_with_their_utilisation() {
        // The documented `--format=csv,noheader,nounits` output.
        let out = "0, GPU-5d5b0c3e-2a34-8f1c-1e0f-63c2a1b0d9e1, NVIDIA H200, 143771, 37\n\
                   1, GPU-0c1d2e3f-aaaa-bbbb-cccc-000000000001, NVIDIA GeForce RTX 4090, 24564, [N/A]\n";
        let found = parse_nvidia(out, &caps()).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].info.id, "GPU-5d5b0c3e-2a34-8f1c-1e0f-63c2a1b0d9e1");
        assert_eq!(found[0].info.handle, "cuda:0");
        assert_eq!(found[0].gpu_usage, Some(0.37));
        assert_eq!(
            found[1].info.capabilities.get("gpu_model"),
            Some(&CapValue::Str("NVIDIA GeForce RTX 4090".into()))
        );
        assert_eq!(
            found[1].info.capabilities.get("vram_mb"),
            Some(&CapValue::Int(24564))
        );
        assert_eq!(found[1].gpu_usage, None);
        assert!(parse_nvidia("garbage\n", &caps())
            .unwrap_err()
            .starts_with("line 1: expected `index, uuid"));
    }

    fn source(argv: &[&str], timeout_ms: u64) -> DeviceSource {
        DeviceSource {
            name: "s".into(),
            kind: SourceKind::Command(argv.iter().map(|s| s.to_string()).collect()),
            every_s: 1,
            timeout_ms,
            capabilities: Capabilities::new(),
        }
    }

    #[tokio::test]
    async fn a_run_that_fails_says_why_in_one_line_and_leaves_nothing_running() {
        let ok = source(
            &["sh", "-c", "echo '{\"id\": \"a\"}'; echo '{\"id\": \"b\"}'"],
            5_000,
        );
        let found = ok.run_once().await.unwrap();
        assert_eq!(found.len(), 2);
        let twice = source(
            &["sh", "-c", "echo '{\"id\": \"a\"}'; echo '{\"id\": \"a\"}'"],
            5_000,
        );
        assert_eq!(
            twice.run_once().await.unwrap_err(),
            "lists device `a` twice"
        );
        let failing = source(&["sh", "-c", "echo 'adb server down' >&2; exit 3"], 5_000);
        assert_eq!(
            failing.run_once().await.unwrap_err(),
            "`sh` exited with code 3: adb server down"
        );
        let missing = source(&["/nonexistent/discover"], 5_000);
        assert!(missing
            .run_once()
            .await
            .unwrap_err()
            .starts_with("`/nonexistent/discover` is not found"));
        // Never exits, and its child holds the pipe: killed at the timeout.
        let marker = format!("orch-discover-hang-{}", std::process::id());
        let hang = source(
            &[
                "bash",
                "-c",
                &format!("(exec -a {marker}-child sleep 300) & exec -a {marker} sleep 300"),
            ],
            300,
        );
        let e = hang.run_once().await.unwrap_err();
        assert_eq!(e, "no answer within 300 ms");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let alive = std::process::Command::new("pgrep")
                .args(["-f", &marker])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !alive {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the hung source's processes still run 5 s after its timeout"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Endless output is cut at the limit.
        let flood = source(&["sh", "-c", "yes '{\"id\": \"a\"}'"], 10_000);
        assert_eq!(
            flood.run_once().await.unwrap_err(),
            format!("printed more than {MAX_OUTPUT} bytes")
        );
        let binary = source(&["printf", "\\377\\376\\n"], 5_000);
        assert_eq!(
            binary.run_once().await.unwrap_err(),
            "printed bytes that are not UTF-8"
        );
    }
}
