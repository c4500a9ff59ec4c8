use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::protocol::SessionState;

fn stage(name: &str, deps: &[&str]) -> StageSpec {
    StageSpec {
        name: name.into(),
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
        run: StageRun::Command {
            argv: vec!["true".into()],
            env: BTreeMap::new(),
            require: BTreeMap::new(),
            timeout_ms: 60_000,
        },
        retry: RetryPolicy::default(),
        circuit_breaker: None,
        on_failure: OnFailure::Fail,
        fallback: None,
    }
}

fn pipeline(name: &str, stages: Vec<StageSpec>) -> PipelineSpec {
    PipelineSpec {
        name: name.into(),
        version: 0,
        schedule: None,
        catch_up: true,
        trigger: None,
        params: BTreeMap::new(),
        stages,
    }
}

/// The engine, the sessions it asked for and what it published.
#[derive(Default)]
struct Rig {
    p: Pipelines,
    submitted: Vec<String>,
    cancelled: Vec<String>,
    events: Vec<crate::events::Event>,
}

impl Rig {
    fn take(&mut self, out: Vec<PipeAction>) {
        for a in out {
            match a {
                PipeAction::Submit { id, spec } => {
                    assert_eq!(
                        spec.correlation_id.as_deref().map(|c| !c.is_empty()),
                        Some(true)
                    );
                    assert!(
                        !self.submitted.contains(&id),
                        "session {id} submitted twice"
                    );
                    self.submitted.push(id);
                }
                PipeAction::Cancel { session } => self.cancelled.push(session),
                PipeAction::Publish(e) => self.events.push(e),
            }
        }
    }
    fn define(&mut self, spec: PipelineSpec, now: u64) {
        assert!(problems(&spec).is_empty(), "{:?}", problems(&spec));
        self.p.define(spec, now);
    }
    fn run(&mut self, name: &str, now: u64) -> String {
        let mut out = Vec::new();
        let id = self
            .p
            .trigger(name, BTreeMap::new(), None, Cause::Manual, now, &mut out)
            .unwrap();
        self.take(out);
        id
    }
    fn end(&mut self, session: &str, ok: bool, now: u64) {
        let mut out = Vec::new();
        let state = if ok {
            SessionState::Completed
        } else {
            SessionState::Failed
        };
        self.p.session_ended(session, state, None, now, &mut out);
        self.take(out);
    }
    fn tick(&mut self, now: u64) {
        let mut out = Vec::new();
        self.p.tick(now, &mut out);
        self.take(out);
    }
    fn running(&self, run: &str) -> Vec<String> {
        let r = self.p.run(run).unwrap();
        r.stages
            .iter()
            .filter(|s| s.state == StageState::Running)
            .map(|s| s.name.clone())
            .collect()
    }
    fn state(&self, run: &str, stage: &str) -> StageState {
        let r = self.p.run(run).unwrap();
        r.stages.iter().find(|s| s.name == stage).unwrap().state
    }
}

#[test]
fn stages_start_when_their_dependencies_complete_and_independent_ones_run_together() {
    let mut r = Rig::default();
    r.define(
        pipeline(
            "seed",
            vec![
                stage("scan", &[]),
                stage("catalog", &[]),
                stage("sync", &["scan", "catalog"]),
                stage("analysis", &["sync"]),
                stage("cache", &["analysis"]),
            ],
        ),
        0,
    );
    let run = r.run("seed", 10);
    assert_eq!(r.running(&run), ["scan", "catalog"]);
    r.end("seed-1.scan.1", true, 20);
    assert_eq!(r.running(&run), ["catalog"], "sync waits for catalog too");
    r.end("seed-1.catalog.1", true, 30);
    assert_eq!(r.running(&run), ["sync"]);
    r.end("seed-1.sync.1", true, 40);
    r.end("seed-1.analysis.1", true, 50);
    r.end("seed-1.cache.1", true, 60);
    let done = r.p.run(&run).unwrap();
    assert_eq!(done.state, RunState::Completed);
    assert_eq!(done.finished_ms, Some(60));
    assert_eq!(r.submitted.len(), 5);
    let last = r.events.last().unwrap();
    assert_eq!(last.kind, "pipeline.completed");
    assert!(
        r.events.iter().all(|e| e.correlation_id == run),
        "one correlation id for the run"
    );
    assert_eq!(r.p.view("seed").unwrap().status, "completed");
    assert_eq!(r.p.view("seed").unwrap().version, 1);
    let mut again = r.p.spec("seed").unwrap().clone();
    again.version = 0;
    assert_eq!(
        r.p.define(again, 70),
        2,
        "the same name again: the next version"
    );
}

#[test]
fn a_stage_failing_twice_then_succeeding_under_three_attempts_completes_with_its_delays() {
    let mut r = Rig::default();
    let mut s = stage("flaky", &[]);
    s.retry = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff::Exponential,
        base_delay_ms: 100,
        max_delay_ms: 10_000,
    };
    r.define(pipeline("p", vec![s, stage("after", &["flaky"])]), 0);
    let run = r.run("p", 0);
    r.end("p-1.flaky.1", false, 1_000);
    assert_eq!(r.state(&run, "flaky"), StageState::Waiting);
    assert!(!r.p.due(1_099));
    r.tick(1_099);
    assert_eq!(r.submitted.len(), 1, "nothing before the delay");
    assert!(r.p.due(1_100));
    r.tick(1_100);
    assert_eq!(r.submitted.last().unwrap(), "p-1.flaky.2");
    r.end("p-1.flaky.2", false, 2_000);
    r.tick(2_199);
    assert_eq!(r.submitted.len(), 2, "the second delay doubles: 200 ms");
    r.tick(2_200);
    assert_eq!(r.submitted.last().unwrap(), "p-1.flaky.3");
    r.end("p-1.flaky.3", true, 3_000);
    let s = &r.p.run(&run).unwrap().stages[0];
    assert_eq!((s.state, s.attempts), (StageState::Completed, 3));
    assert_eq!(r.running(&run), ["after"]);
}

#[test]
fn a_breaker_opens_after_its_threshold_fails_the_next_run_at_once_and_tries_half_open_after_its_timeout(
) {
    let mut r = Rig::default();
    let mut s = stage("broken", &[]);
    s.circuit_breaker = Some(BreakerSpec {
        failure_threshold: 2,
        reset_timeout_ms: 10_000,
    });
    r.define(pipeline("b", vec![s, stage("next", &["broken"])]), 0);
    let r1 = r.run("b", 0);
    r.end("b-1.broken.1", false, 100);
    assert_eq!(
        r.p.view("b").unwrap().breakers["broken"],
        Breaker::Closed { failures: 1 }
    );
    let _r2 = r.run("b", 200);
    r.end("b-2.broken.1", false, 300);
    assert_eq!(
        r.p.view("b").unwrap().breakers["broken"],
        Breaker::Open {
            since_ms: 300,
            failures: 2
        }
    );
    let before = r.submitted.len();
    let r3 = r.run("b", 400);
    assert_eq!(r.submitted.len(), before, "an open breaker runs nothing");
    let run3 = r.p.run(&r3).unwrap();
    assert_eq!(run3.state, RunState::Failed);
    assert_eq!(run3.stages[1].state, StageState::Skipped);
    assert!(run3.stages[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("circuit breaker open"));
    assert_eq!(r.p.run(&r1).unwrap().state, RunState::Failed);
    // After the reset timeout: one trial, and a second run meanwhile fails fast.
    let r4 = r.run("b", 10_300);
    assert_eq!(r.submitted.last().unwrap(), "b-4.broken.1");
    assert!(matches!(
        r.p.view("b").unwrap().breakers["broken"],
        Breaker::HalfOpen { .. }
    ));
    let r5 = r.run("b", 10_400);
    assert_eq!(r.p.run(&r5).unwrap().state, RunState::Failed);
    r.end("b-4.broken.1", true, 10_500);
    assert_eq!(
        r.p.view("b").unwrap().breakers["broken"],
        Breaker::Closed { failures: 0 }
    );
    assert_eq!(r.running(&r4), ["next"]);
}

#[test]
fn a_failed_half_open_trial_opens_the_breaker_again() {
    let mut r = Rig::default();
    let mut s = stage("x", &[]);
    s.circuit_breaker = Some(BreakerSpec {
        failure_threshold: 1,
        reset_timeout_ms: 1_000,
    });
    r.define(pipeline("h", vec![s]), 0);
    r.run("h", 0);
    r.end("h-1.x.1", false, 10);
    r.run("h", 2_000);
    r.end("h-2.x.1", false, 2_010);
    assert!(matches!(
        r.p.view("h").unwrap().breakers["x"],
        Breaker::Open {
            since_ms: 2_010,
            ..
        }
    ));
}

#[test]
fn a_failed_stage_runs_its_fallback_skips_its_dependents_and_the_run_ends_partial() {
    let mut r = Rig::default();
    let mut main = stage("main", &["first"]);
    main.fallback = Some("plan_b".into());
    r.define(
        pipeline(
            "f",
            vec![
                stage("first", &[]),
                main,
                stage("plan_b", &[]),
                stage("after", &["main"]),
                stage("after_after", &["after"]),
                stage("side", &["first"]),
            ],
        ),
        0,
    );
    let run = r.run("f", 0);
    assert_eq!(
        r.running(&run),
        ["first"],
        "a fallback does not run by itself"
    );
    r.end("f-1.first.1", true, 10);
    assert_eq!(r.running(&run), ["main", "side"]);
    r.end("f-1.main.1", false, 20);
    assert_eq!(r.running(&run), ["plan_b", "side"]);
    assert_eq!(r.state(&run, "after"), StageState::Skipped);
    assert_eq!(r.state(&run, "after_after"), StageState::Skipped);
    let failed = r.events.iter().find(|e| e.kind == "stage.failed").unwrap();
    assert_eq!(failed.payload["dependents"], "after");
    r.end("f-1.plan_b.1", true, 30);
    r.end("f-1.side.1", true, 40);
    let done = r.p.run(&run).unwrap();
    assert_eq!(done.state, RunState::Partial);
    assert_eq!(done.stages[2].fallback_for.as_deref(), Some("main"));
}

#[test]
fn on_failure_continue_lets_dependents_run() {
    let mut r = Rig::default();
    let mut a = stage("a", &[]);
    a.on_failure = OnFailure::Continue;
    r.define(pipeline("c", vec![a, stage("b", &["a"])]), 0);
    let run = r.run("c", 0);
    r.end("c-1.a.1", false, 5);
    assert_eq!(r.running(&run), ["b"]);
    r.end("c-1.b.1", true, 6);
    assert_eq!(r.p.run(&run).unwrap().state, RunState::Partial);
}

#[test]
fn every_stage_failing_ends_the_run_failed() {
    let mut r = Rig::default();
    r.define(pipeline("all", vec![stage("a", &[]), stage("b", &[])]), 0);
    let run = r.run("all", 0);
    r.end("all-1.a.1", false, 1);
    r.end("all-1.b.1", false, 2);
    assert_eq!(r.p.run(&run).unwrap().state, RunState::Failed);
}

#[test]
fn a_cancelled_run_cancels_its_sessions_and_rerun_runs_only_what_failed() {
    let mut r = Rig::default();
    r.define(
        pipeline(
            "k",
            vec![stage("a", &[]), stage("b", &[]), stage("c", &["a", "b"])],
        ),
        0,
    );
    let run = r.run("k", 0);
    r.end("k-1.a.1", true, 1);
    let mut out = Vec::new();
    r.p.cancel(&run, 2, &mut out).unwrap();
    r.take(out);
    assert_eq!(r.cancelled, ["k-1.b.1"]);
    assert_eq!(r.p.run(&run).unwrap().state, RunState::Cancelled);
    // The cancelled session's end changes nothing.
    r.end("k-1.b.1", false, 3);
    assert_eq!(r.p.run(&run).unwrap().state, RunState::Cancelled);
    let mut out = Vec::new();
    assert_eq!(r.p.rerun(&run, 4, &mut out), Ok(2));
    r.take(out);
    assert_eq!(r.running(&run), ["b"], "a completed stage is not run again");
    r.end("k-1.b.2", true, 5);
    r.end("k-1.c.1", true, 6);
    assert_eq!(r.p.run(&run).unwrap().state, RunState::Completed);
    let mut out = Vec::new();
    assert!(r
        .p
        .rerun(&run, 7, &mut out)
        .unwrap_err()
        .contains("no failed stage"));
}

fn ticks(r: &mut Rig, from: u64, to: u64, every: u64) {
    let mut t = from;
    while t <= to {
        if r.p.due(t) {
            r.tick(t);
        }
        t += every;
    }
}

fn fired(r: &Rig) -> Vec<u64> {
    r.events
        .iter()
        .filter(|e| e.kind == "schedule.fired")
        .map(|e| e.payload["slot_ms"].parse().unwrap())
        .collect()
}

#[test]
fn an_interval_schedule_fires_every_slot_once_and_a_missed_slot_once_or_not_at_all() {
    for catch_up in [true, false] {
        let mut r = Rig::default();
        let mut p = pipeline("every2", vec![stage("a", &[])]);
        p.schedule = Some(Schedule::Every { ms: 2_000 });
        p.catch_up = catch_up;
        r.define(p, 100);
        assert_eq!(r.p.view("every2").unwrap().next_run_ms, Some(2_000));
        ticks(&mut r, 100, 60_000, 100);
        let slots = fired(&r);
        assert_eq!(slots, (1..=30).map(|i| i * 2_000).collect::<Vec<_>>());
        // The master is down from 60.1 s to 70.05 s: slots 62..68 s were
        // missed, 70 s is on time.
        ticks(&mut r, 70_050, 71_000, 100);
        let after = fired(&r);
        if catch_up {
            assert_eq!(
                &after[30..],
                [68_000, 70_000],
                "the missed slots fire once (as the latest missed), then the slot on time"
            );
        } else {
            assert_eq!(
                &after[30..],
                [70_000],
                "catch_up = false: the missed slots do not fire"
            );
            assert!(r.events.iter().any(|e| e.kind == "schedule.skipped"));
        }
        ticks(&mut r, 71_100, 72_000, 100);
        assert_eq!(*fired(&r).last().unwrap(), 72_000, "on time again after");
        assert_eq!(r.p.view("every2").unwrap().next_run_ms, Some(74_000));
        // Down from 72 s to 80.5 s: 74..78 s fire as 78 s, then 80 s on time.
        let n = fired(&r).len();
        ticks(&mut r, 80_500, 80_500, 100);
        let want: &[u64] = if catch_up {
            &[78_000, 80_000]
        } else {
            &[80_000]
        };
        assert_eq!(&fired(&r)[n..], want);
        // Back more than LATE_MS after the last slot: it is missed too.
        let mut r = Rig::default();
        let mut p = pipeline("every10", vec![stage("a", &[])]);
        p.schedule = Some(Schedule::Every { ms: 10_000 });
        p.catch_up = catch_up;
        r.define(p, 95_000);
        ticks(&mut r, 100_000, 100_000, 100);
        ticks(&mut r, 117_000, 117_000, 100);
        let want: &[u64] = if catch_up {
            &[100_000, 110_000]
        } else {
            &[100_000]
        };
        assert_eq!(fired(&r), want, "110 s is 7 s late: missed");
    }
}

#[test]
fn a_cron_schedule_fires_at_its_times_in_its_zone() {
    // 03:00 every day in Europe/Paris, from 2026-06-01T00:00Z (CEST, UTC+2).
    let from = 1_780_272_000_000u64;
    let s = Schedule::Cron {
        expr: "0 3 * * *".into(),
        tz: "Europe/Paris".into(),
    };
    let first = next_slot(&s, from).unwrap();
    assert_eq!(first, from + 3_600_000, "03:00 CEST is 01:00 UTC");
    assert_eq!(next_slot(&s, first).unwrap(), first + 86_400_000);
    let utc = Schedule::Cron {
        expr: "*/5 * * * *".into(),
        tz: "UTC".into(),
    };
    assert_eq!(next_slot(&utc, from + 1).unwrap(), from + 300_000);
}

#[test]
fn a_pipeline_follows_another_through_its_completion_event() {
    let mut r = Rig::default();
    r.define(pipeline("first", vec![stage("a", &[])]), 0);
    let mut then = pipeline("then", vec![stage("b", &[])]);
    then.trigger = Some(EventTrigger {
        on: "pipeline.completed".into(),
        filter: [("pipeline".to_string(), "first".to_string())].into(),
    });
    r.define(then, 0);
    r.run("first", 0);
    r.end("first-1.a.1", true, 10);
    assert!(r.p.due(10));
    r.tick(11);
    let t = r.p.run("then-1").expect("the completion started `then`");
    assert!(
        matches!(&t.cause, Cause::Event { kind, correlation_id } if kind == "pipeline.completed" && correlation_id == "first-1")
    );
    // A failed `first` does not.
    r.run("first", 20);
    r.end("first-2.a.1", false, 30);
    r.tick(31);
    assert!(r.p.run("then-2").is_none());
}

#[test]
fn finished_runs_beyond_what_is_kept_leave_memory() {
    let mut r = Rig::default();
    r.define(pipeline("many", vec![stage("a", &[])]), 0);
    for i in 0..(RUNS_KEPT as u64 + 10) {
        let run = r.run("many", i * 10);
        r.end(&format!("{run}.a.1"), true, i * 10 + 1);
    }
    r.tick(100_000);
    assert_eq!(r.p.runs_of("many").len(), RUNS_KEPT);
    assert!(r.p.run("many-1").is_none());
    assert_eq!(r.p.view("many").unwrap().runs, RUNS_KEPT as u64 + 10);
}

#[test]
fn bad_pipelines_are_named_problems() {
    let cyc = pipeline(
        "c",
        vec![stage("a", &["c"]), stage("b", &["a"]), stage("c", &["b"])],
    );
    let p = problems(&cyc);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].1.contains("cycle: a -> c -> b -> a"), "{p:?}");
    let unknown = pipeline("u", vec![stage("a", &["nope"])]);
    assert!(problems(&unknown)[0].1.contains("`nope`"));
    let mut bad_cron = pipeline("k", vec![stage("a", &[])]);
    bad_cron.schedule = Some(Schedule::Cron {
        expr: "61 * * * *".into(),
        tz: "UTC".into(),
    });
    assert_eq!(problems(&bad_cron)[0].0, "schedule.cron");
    bad_cron.schedule = Some(Schedule::Cron {
        expr: "0 3 * * *".into(),
        tz: "Mars/Olympus".into(),
    });
    assert!(problems(&bad_cron)[0].1.contains("time zone"));
    let mut fb = pipeline("fb", vec![stage("a", &[]), stage("b", &["a"])]);
    fb.stages[0].fallback = Some("b".into());
    assert!(
        problems(&fb)
            .iter()
            .any(|(_, e)| e.contains("is a fallback")),
        "{:?}",
        problems(&fb)
    );
    let dup = pipeline("d", vec![stage("a", &[]), stage("a", &[])]);
    assert_eq!(problems(&dup)[0].0, "stage[1].name");
}

/// A random DAG (stage `i` depends only on stages before it) with random
/// retry policies, breakers, `on_failure` and fallbacks.
fn arb_pipeline() -> impl Strategy<Value = PipelineSpec> {
    (2usize..12)
        .prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n),
                proptest::collection::vec((1u32..4, any::<bool>(), 0u32..3, any::<bool>()), n),
            )
        })
        .prop_map(|(n, deps, knobs)| {
            let mut stages: Vec<StageSpec> = (0..n)
                .map(|i| {
                    let d: Vec<String> = (0..i)
                        .filter(|&j| deps[i][j] && (i + j) % 3 != 0)
                        .map(|j| format!("s{j}"))
                        .collect();
                    let mut s = stage(&format!("s{i}"), &[]);
                    s.depends_on = d;
                    let (attempts, cont, breaker, _) = knobs[i];
                    s.retry.max_attempts = attempts;
                    s.retry.base_delay_ms = 10;
                    if cont {
                        s.on_failure = OnFailure::Continue;
                    }
                    if breaker > 0 {
                        s.circuit_breaker = Some(BreakerSpec {
                            failure_threshold: breaker,
                            reset_timeout_ms: 50,
                        });
                    }
                    s
                })
                .collect();
            // The last stage is a fallback of the first one that wants one.
            if let Some(i) = (0..n - 1).find(|&i| knobs[i].3) {
                let last = format!("s{}", n - 1);
                let depended = stages.iter().any(|s| s.depends_on.contains(&last));
                if !depended {
                    stages[n - 1].depends_on.clear();
                    stages[n - 1].fallback = None;
                    stages[i].fallback = Some(last);
                }
            }
            pipeline("prop", stages)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the DAG and the outcomes: a stage starts only when every
    /// dependency completed (or failed with `continue`), no session is
    /// submitted twice, every run ends, its state follows the seed's rule,
    /// and a skipped stage has a dependency that failed or was skipped.
    #[test]
    fn runs_follow_their_dags(spec in arb_pipeline(), outcomes in proptest::collection::vec(any::<bool>(), 200), runs in 1usize..4) {
        prop_assert!(problems(&spec).is_empty(), "{:?}", problems(&spec));
        let mut r = Rig::default();
        r.define(spec.clone(), 0);
        let mut now = 0u64;
        let mut k = 0usize;
        for _ in 0..runs {
            let run = r.run("prop", now);
            let mut guard = 0;
            while r.p.run(&run).unwrap().state == RunState::InProgress {
                guard += 1;
                prop_assert!(guard < 10_000, "the run never ends");
                now += 5;
                let running: Vec<(String, String)> = r.p.run(&run).unwrap().stages.iter()
                    .filter(|s| s.state == StageState::Running)
                    .map(|s| (s.name.clone(), s.session.clone().unwrap()))
                    .collect();
                // Every running stage's dependencies are done.
                for (name, _) in &running {
                    let st = spec.stages.iter().find(|s| &s.name == name).unwrap();
                    for d in &st.depends_on {
                        let dep = r.state(&run, d);
                        let cont = spec.stages.iter().find(|s| &s.name == d).unwrap().on_failure == OnFailure::Continue;
                        prop_assert!(dep == StageState::Completed || (dep == StageState::Failed && cont), "{name} runs while {d} is {dep:?}");
                    }
                }
                if let Some((_, session)) = running.first() {
                    let ok = outcomes[k % outcomes.len()];
                    k += 1;
                    r.end(session, ok, now);
                } else {
                    r.tick(now + 100);
                    now += 100;
                }
            }
            let done = r.p.run(&run).unwrap();
            let ran: Vec<StageState> = done.stages.iter().filter(|s| s.state != StageState::Standby).map(|s| s.state).collect();
            let expect = if ran.iter().all(|s| *s == StageState::Completed) {
                RunState::Completed
            } else if ran.contains(&StageState::Completed) {
                RunState::Partial
            } else {
                RunState::Failed
            };
            prop_assert_eq!(done.state, expect);
            for (i, s) in done.stages.iter().enumerate() {
                if s.state == StageState::Skipped {
                    let blocked = spec.stages[i].depends_on.iter().any(|d| {
                        let st = r.state(&run, d);
                        let cont = spec.stages.iter().find(|x| &x.name == d).unwrap().on_failure == OnFailure::Continue;
                        st == StageState::Skipped || (st == StageState::Failed && !cont)
                    });
                    prop_assert!(blocked, "{} skipped with no failed dependency", s.name);
                }
                prop_assert!(s.attempts <= spec.stages[i].retry.max_attempts);
            }
            now += 1_000;
        }
    }
}
