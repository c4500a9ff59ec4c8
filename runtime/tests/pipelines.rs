//! Pipelines on real `orch-node` processes (docs/pipelines.md): the
//! example runs its stages in dependency order, in parallel where allowed,
//! under one correlation id; retry delays, circuit breakers and fallbacks
//! as configured; an interval schedule fires every slot once through a
//! kill -9 of the master; bad pipeline files are one line each.

use std::path::{Path, PathBuf};
use std::time::Duration;

use orch_tests::{bins, http_get, wait_until, TestCluster};
use serde_json::Value;

/// `orchctl ARGS --json` on node 0: exit code, JSON answer, stderr.
fn ctl(c: &TestCluster, args: &[&str]) -> (i32, Value, String) {
    let mut all = args.to_vec();
    all.push("--json");
    let out = c.orchctl(0, &all);
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipelines")
}

/// Write a pipeline file into the cluster's folder; its path.
fn file(c: &TestCluster, name: &str, text: &str) -> String {
    let path = c.dir.path().join(name);
    let stage = examples().join("stage.py");
    std::fs::write(&path, text.replace("STAGE", stage.to_str().unwrap())).unwrap();
    path.to_str().unwrap().to_string()
}

fn add(c: &TestCluster, path: &str) {
    let (code, _, err) = ctl(c, &["pipeline", "add", path]);
    assert_eq!(code, 0, "pipeline add {path}: {err}");
}

fn start(c: &TestCluster, name: &str) -> String {
    let (code, v, err) = ctl(c, &["pipeline", "run", name]);
    assert_eq!(code, 0, "pipeline run {name}: {err}");
    v["run"].as_str().expect("a run id").to_string()
}

fn run_view(c: &TestCluster, run: &str) -> Value {
    let (code, v, err) = ctl(c, &["pipeline", "show", run]);
    assert_eq!(code, 0, "pipeline show {run}: {err}");
    v
}

fn wait_run(c: &TestCluster, run: &str, within: Duration) -> Value {
    let mut last = Value::Null;
    let waited = wait_until(&format!("run {run} to end"), within, || {
        last = run_view(c, run);
        last["state"] != "in_progress"
    });
    assert!(waited.is_ok(), "{waited:?}: {last}\n{}", c.logs());
    last
}

fn stage<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name} in {run}"))
}

fn ms(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// The master's `event` log records of `run` (its payload names it).
fn events_of(c: &TestCluster, run: &str) -> Vec<Value> {
    c.nodes[0]
        .logged("event")
        .into_iter()
        .filter(|r| {
            r["fields"]["payload"]
                .as_str()
                .is_some_and(|p| p.split(' ').any(|kv| kv == format!("run={run}")))
        })
        .collect()
}

#[test]
fn the_example_pipeline_runs_its_stages_in_dependency_order_in_parallel_under_one_correlation_id() {
    let c = TestCluster::master_and_workers(bins!(), 1, 2).unwrap();
    let sync = examples().join("sync.toml");
    let out = c.orchctl(0, &["pipeline", "run", sync.to_str().unwrap(), "--wait"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    assert!(text.contains("run sync-1 completed"), "{text}");
    let run = run_view(&c, "sync-1");
    assert_eq!(run["state"], "completed", "{run}");
    let (scan, catalog, sheets, analysis, cache) = (
        stage(&run, "scan"),
        stage(&run, "catalog"),
        stage(&run, "sheets_sync"),
        stage(&run, "analysis"),
        stage(&run, "cache_refresh"),
    );
    // scan and catalog have no path between them: they overlapped.
    assert!(
        ms(scan, "started_ms") < ms(catalog, "finished_ms")
            && ms(catalog, "started_ms") < ms(scan, "finished_ms"),
        "scan and catalog ran one after the other: {run}"
    );
    // Each dependent started after what it depends on finished.
    assert!(ms(sheets, "started_ms") >= ms(scan, "finished_ms").max(ms(catalog, "finished_ms")));
    assert!(ms(analysis, "started_ms") >= ms(sheets, "finished_ms"));
    assert!(ms(cache, "started_ms") >= ms(analysis, "finished_ms"));
    // The flaky analysis: two failures absorbed by its three attempts.
    assert_eq!(analysis["attempts"], 3, "{analysis}");
    assert_eq!(
        (
            scan["items_processed"].as_u64(),
            scan["items_total"].as_u64()
        ),
        (Some(1), Some(1))
    );
    // One correlation id on every event of the run and in every stage's program.
    let cid = run["correlation_id"].as_str().unwrap().to_string();
    let events = events_of(&c, "sync-1");
    assert!(events.len() >= 12, "events of the run: {events:?}");
    for e in &events {
        assert_eq!(e["fields"]["correlation_id"], cid.as_str(), "{e}");
    }
    for kind in [
        "pipeline.started",
        "stage.started",
        "stage.attempt_failed",
        "stage.completed",
        "session.completed",
        "pipeline.completed",
    ] {
        assert!(
            events.iter().any(|e| e["fields"]["event"] == kind),
            "no {kind} event: {events:?}"
        );
    }
    // The workers' lines of the run's failed attempts carry it too.
    let failed: Vec<Value> = c
        .nodes
        .iter()
        .flat_map(|n| n.logged("task failed"))
        .filter(|r| {
            r["fields"]["session"]
                .as_str()
                .is_some_and(|s| s.starts_with("sync-1.analysis."))
        })
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    for r in &failed {
        assert_eq!(r["fields"]["correlation_id"], cid.as_str(), "{r}");
    }
    for s in ["scan", "catalog", "sheets_sync", "cache_refresh"] {
        let session = stage(&run, s)["session"].as_str().unwrap().to_string();
        let out = c.orchctl(0, &["logs", &session, "0"]);
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(
            log.contains(&format!("correlation id {cid}")),
            "the log of {s} ({session}) does not show the run's correlation id: {log}"
        );
    }
}

#[test]
fn retries_wait_their_delays_a_broken_stage_opens_its_breaker_fails_fast_then_tries_half_open_and_a_fallback_runs(
) {
    let c = TestCluster::master_and_workers(bins!(), 1, 2).unwrap();
    let flaky = file(
        &c,
        "flaky.toml",
        "name = \"flaky\"\n[[stage]]\nname = \"f\"\ncommand = [\"python3\", \"STAGE\", \"f\", \"--fail-first\", \"2\", \"--items\", \"1\"]\nretry = { max_attempts = 3, backoff = \"exponential\", base_delay = \"700ms\", max_delay = \"5s\" }\n",
    );
    add(&c, &flaky);
    let run = start(&c, "flaky");
    let v = wait_run(&c, &run, Duration::from_secs(60));
    assert_eq!(v["state"], "completed", "{v}");
    assert_eq!(stage(&v, "f")["attempts"], 3);
    // The delays between attempts, from the master's events: 700 ms, then 1,400 ms.
    let evs = events_of(&c, &run);
    let at = |kind: &str| -> Vec<u64> {
        evs.iter()
            .filter(|e| e["fields"]["event"] == kind)
            .map(|e| e["fields"]["at_ms"].as_u64().unwrap())
            .collect()
    };
    let (failed, started) = (at("stage.attempt_failed"), at("stage.started"));
    assert_eq!((failed.len(), started.len()), (2, 3), "{evs:?}");
    assert!(
        started[1] - failed[0] >= 700,
        "first delay {} ms",
        started[1] - failed[0]
    );
    assert!(
        started[2] - failed[1] >= 1_400,
        "second delay {} ms",
        started[2] - failed[1]
    );

    let broken = file(
        &c,
        "broken.toml",
        "name = \"broken\"\n[[stage]]\nname = \"call\"\ncommand = [\"python3\", \"STAGE\", \"call\", \"--fail\"]\ncircuit_breaker = { failure_threshold = 2, reset_timeout = \"4s\" }\nfallback = \"log\"\n[[stage]]\nname = \"log\"\ncommand = [\"python3\", \"STAGE\", \"log\", \"--items\", \"1\"]\n[[stage]]\nname = \"after\"\ndepends_on = [\"call\"]\ncommand = [\"true\"]\n",
    );
    add(&c, &broken);
    for i in 1..=2 {
        let run = start(&c, "broken");
        assert_eq!(run, format!("broken-{i}"));
        let v = wait_run(&c, &run, Duration::from_secs(30));
        // The failed stage's fallback ran, its dependent was skipped: partial.
        assert_eq!(v["state"], "partial", "{v}");
        assert_eq!(stage(&v, "call")["state"], "failed");
        assert_eq!(stage(&v, "log")["state"], "completed");
        assert_eq!(stage(&v, "log")["fallback_for"], "call");
        assert_eq!(stage(&v, "after")["state"], "skipped");
    }
    let (_, status, _) = ctl(&c, &["pipeline", "status", "broken"]);
    assert_eq!(
        status["pipeline"]["breakers"]["call"]["state"], "open",
        "{status}"
    );
    // Open: the next run fails the stage at once, without a session.
    let run3 = start(&c, "broken");
    let v = wait_run(&c, &run3, Duration::from_secs(30));
    let call = stage(&v, "call");
    assert_eq!(call["state"], "failed");
    assert_eq!(call["attempts"], 0, "{call}");
    assert!(
        call["last_error"]
            .as_str()
            .unwrap()
            .contains("circuit breaker open"),
        "{call}"
    );
    let (code, _) = http_get(
        c.nodes[0].admin_addr,
        &format!("/v1/sessions/{run3}.call.1"),
        None,
    )
    .unwrap();
    assert_eq!(code, 404, "an open breaker ran the stage");
    // After the reset timeout a half-open trial runs (and fails: open again).
    std::thread::sleep(Duration::from_millis(4_100));
    let run4 = start(&c, "broken");
    let v = wait_run(&c, &run4, Duration::from_secs(30));
    assert_eq!(stage(&v, "call")["attempts"], 1, "the trial ran: {v}");
    let (code, _) = http_get(
        c.nodes[0].admin_addr,
        &format!("/v1/sessions/{run4}.call.1"),
        None,
    )
    .unwrap();
    assert_eq!(code, 200);
    let (_, status, _) = ctl(&c, &["pipeline", "status", "broken"]);
    assert_eq!(
        status["pipeline"]["breakers"]["call"]["state"], "open",
        "{status}"
    );
    let kinds: Vec<String> = c.nodes[0]
        .logged("event")
        .iter()
        .map(|e| e["fields"]["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        kinds.contains(&"breaker.opened".to_string())
            && kinds.contains(&"breaker.half_open".to_string()),
        "{kinds:?}"
    );
}

#[test]
fn an_interval_schedule_fires_every_slot_once_through_a_master_kill_and_a_missed_slot_fires_once() {
    let mut c = TestCluster::master_and_workers(bins!(), 1, 2).unwrap();
    let every = file(
        &c,
        "every.toml",
        "name = \"tick\"\nschedule = { every = \"2s\" }\n[[stage]]\nname = \"work\"\ncommand = [\"python3\", \"STAGE\", \"work\", \"--items\", \"6\", \"--sleep\", \"0.5\"]\n[[stage]]\nname = \"then\"\ndepends_on = [\"work\"]\ncommand = [\"true\"]\n",
    );
    add(&c, &every);
    let runs = |c: &TestCluster| -> Vec<Value> {
        let (code, v, err) = ctl(c, &["pipeline", "runs", "tick"]);
        assert_eq!(code, 0, "{err}");
        v.as_array().unwrap().clone()
    };
    // A minute of slots, every one on time.
    std::thread::sleep(Duration::from_secs(60));
    let before = runs(&c);
    assert!(
        before.len() >= 29,
        "{} runs in 60 s: {before:?}",
        before.len()
    );
    for r in &before {
        let slot = r["cause"]["schedule"]["slot_ms"].as_u64().unwrap();
        let late = ms(r, "started_ms") - slot;
        assert!(
            late < 1_000,
            "run {} started {late} ms after its slot",
            r["id"]
        );
    }
    // kill -9 mid-run: a run is in progress (each takes about 3 s).
    let running = before
        .iter()
        .rev()
        .find(|r| r["state"] == "in_progress")
        .cloned();
    let running = running.expect("a run in progress at the kill");
    c.nodes[0].kill9();
    std::thread::sleep(Duration::from_secs(9));
    c.restart(0).unwrap();
    c.wait_all_healthy(1).unwrap();
    let id = running["id"].as_str().unwrap().to_string();
    let v = wait_run(&c, &id, Duration::from_secs(60));
    assert_eq!(
        v["state"], "completed",
        "the run in progress at the kill continued: {v}"
    );
    std::thread::sleep(Duration::from_secs(6));
    let after = runs(&c);
    let mut slots: Vec<u64> = after
        .iter()
        .map(|r| r["cause"]["schedule"]["slot_ms"].as_u64().unwrap())
        .collect();
    let n = slots.len();
    slots.dedup();
    assert_eq!(slots.len(), n, "a slot fired twice: {slots:?}");
    // Slots are 2 s apart but for one gap: the slots missed while the
    // master was down (about 9 s) fired once, as the latest of them.
    let gaps: Vec<u64> = slots
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g != 2_000)
        .collect();
    assert_eq!(gaps.len(), 1, "slots: {slots:?}");
    assert!(gaps[0] >= 4_000, "gap {gaps:?}");
    // The master's events: one catch-up firing for the slots it missed.
    let catch_up: Vec<Value> = c.nodes[0]
        .logged("event")
        .into_iter()
        .filter(|e| {
            e["fields"]["event"] == "schedule.fired"
                && e["fields"]["payload"]
                    .as_str()
                    .is_some_and(|p| p.contains("catch_up=true"))
        })
        .collect();
    assert_eq!(catch_up.len(), 1, "{catch_up:?}");
}

#[test]
fn bad_pipeline_files_are_one_clear_line_each_and_exit_2() {
    let c = TestCluster::master_and_workers(bins!(), 0, 1).unwrap();
    let ok_stage = "[[stage]]\nname = \"a\"\ncommand = [\"true\"]\n";
    for (name, text, says) in [
        ("cycle", "name = \"c\"\n[[stage]]\nname = \"a\"\ncommand = [\"true\"]\ndepends_on = [\"b\"]\n[[stage]]\nname = \"b\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n".to_string(), "cycle: a -> b -> a"),
        ("unknown", format!("name = \"u\"\n{ok_stage}depends_on = [\"ghost\"]\n"), "`ghost`"),
        ("cron", format!("name = \"k\"\nschedule = {{ cron = \"0 3 * *\" }}\n{ok_stage}"), "schedule.cron"),
        ("tz", format!("name = \"k\"\nschedule = {{ cron = \"0 3 * * *\", tz = \"Moon/Base\" }}\n{ok_stage}"), "time zone"),
        ("key", format!("name = \"k\"\n{ok_stage}colour = \"red\"\n"), "colour"),
        ("session", "name = \"s\"\n[[stage]]\nname = \"a\"\nsession = \"missing.toml\"\n".to_string(), "missing.toml"),
    ] {
        let path = file(&c, &format!("{name}.toml"), &text);
        for cmd in ["check", "add"] {
            let out = c.orchctl(0, &["pipeline", cmd, &path]);
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            assert_eq!(out.status.code(), Some(2), "{name} {cmd}: {err}");
            assert!(err.contains(says), "{name} {cmd}: {err}");
            assert!(err.contains(&format!("{name}.toml")), "names the file: {err}");
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        }
    }
    let (code, v, _) = ctl(&c, &["pipeline", "list"]);
    assert_eq!((code, v), (0, Value::Array(vec![])), "nothing was stored");
    // And through the API: 400 with the same line.
    let (code, body) = orch_tests::http_post(
        c.nodes[0].admin_addr,
        "/v1/pipelines",
        b"name = \"x\"\n[[stage]]\nname = \"a\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n",
    )
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("depends on itself"), "{body}");
    let (code, body) =
        orch_tests::http_post(c.nodes[0].admin_addr, "/v1/pipelines/nope/runs", b"").unwrap();
    assert_eq!(code, 404, "{body}");
}
