//! The runs of pipelines, their stages' breakers, and their schedules, as
//! the ledger holds them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::spec::{OnFailure, PipelineSpec, Schedule, StageRun};
use crate::events::Event;
use crate::protocol::{ExecutorSpec, FrameRange, SessionSpec, SessionState};

/// Finished runs kept per pipeline; older ones leave memory.
pub const RUNS_KEPT: usize = 50;
/// A scheduled slot this late (the master was down or stalled) is a missed
/// slot: it fires once if the pipeline catches up, else not at all.
pub const LATE_MS: u64 = 5_000;
/// Runs one tick starts from event triggers, at most.
const TRIGGERED_PER_TICK: usize = 100;
/// Event-triggered runs waiting for a tick, at most (more are dropped, counted).
const TRIGGERED_QUEUE: usize = 10_000;

/// Where a stage of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    /// Waiting for its dependencies.
    Pending,
    /// Waiting for its retry delay to pass.
    Waiting,
    Running,
    Completed,
    Failed,
    /// A dependency failed (or was skipped) and did not continue.
    Skipped,
    Cancelled,
    /// A fallback that has not been needed.
    Standby,
}

impl StageState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Waiting => "waiting",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
            Self::Standby => "standby",
        }
    }

    fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Waiting | Self::Running)
    }
}

/// Where a run stands (the seed's rule: completed when every stage
/// completed, partial when some failed and others completed, failed when
/// none completed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    InProgress,
    Completed,
    Partial,
    Failed,
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        self != Self::InProgress
    }
}

/// A stage's circuit breaker, shared by every run of its pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Breaker {
    /// Failed attempts in a row.
    Closed { failures: u32 },
    /// Since when; a trial runs after the reset timeout.
    Open { since_ms: u64, failures: u32 },
    /// The run whose attempt is the trial.
    HalfOpen { trial: String },
}

impl Breaker {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Closed { .. } => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen { .. } => "half_open",
        }
    }
}

/// What started a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Manual,
    /// The schedule's slot (unix ms).
    Schedule {
        slot_ms: u64,
    },
    /// An event of this type, id and correlation.
    Event {
        kind: String,
        correlation_id: String,
    },
}

impl Cause {
    pub fn label(&self) -> String {
        match self {
            Self::Manual => "manual".into(),
            Self::Schedule { slot_ms } => format!("schedule@{slot_ms}"),
            Self::Event { kind, .. } => format!("event:{kind}"),
        }
    }
}

/// One stage of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub state: StageState,
    /// Attempts in this round (a re-run starts a new round).
    pub attempts: u32,
    /// Sessions it ran in all rounds (its sessions' ids count them).
    #[serde(default)]
    pub sessions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The session of its current (or last) attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When its next attempt starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at_ms: Option<u64>,
    /// The stage this one ran instead of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_for: Option<String>,
    /// Frames of its session done and in all (filled in by the views).
    #[serde(default)]
    pub items_processed: u64,
    #[serde(default)]
    pub items_total: u64,
}

/// One run of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub pipeline: String,
    pub version: u32,
    pub correlation_id: String,
    pub cause: Cause,
    pub params: BTreeMap<String, String>,
    pub state: RunState,
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    pub stages: Vec<StageRecord>,
    #[serde(skip)]
    spec: Option<Arc<PipelineSpec>>,
}

/// What the ledger does for the pipelines.
#[derive(Debug, Clone, PartialEq)]
pub enum PipeAction {
    Submit { id: String, spec: Box<SessionSpec> },
    Cancel { session: String },
    Publish(Event),
}

/// One pipeline as the master keeps it.
#[derive(Debug, Clone)]
struct Def {
    spec: Arc<PipelineSpec>,
    runs_made: u64,
    /// The last slot the schedule fired (or skipped).
    last_slot_ms: Option<u64>,
    /// The next slot it fires.
    next_slot_ms: Option<u64>,
}

/// What an operator or the status page sees of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineView {
    pub name: String,
    pub version: u32,
    pub stages: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// When its schedule fires next (the seed's `next_scheduled_sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_slot_ms: Option<u64>,
    pub runs: u64,
    /// `idle` when it never ran, else its last run's state.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// Each stage with a breaker: its state.
    pub breakers: BTreeMap<String, Breaker>,
}

/// Every pipeline, run, breaker and schedule.
#[derive(Debug, Default, Clone)]
pub struct Pipelines {
    defs: BTreeMap<String, Def>,
    /// Runs by id, in progress and the last [`RUNS_KEPT`] finished per pipeline.
    runs: HashMap<String, Run>,
    /// Run ids per pipeline, oldest first.
    order: HashMap<String, Vec<String>>,
    breakers: HashMap<(String, String), Breaker>,
    /// Session -> (run, stage index).
    by_session: HashMap<String, (String, usize)>,
    /// Runs an event asked for, started at the next tick.
    triggered: Vec<(String, Cause)>,
    /// Event-triggered runs dropped because the queue was full.
    pub dropped_triggers: u64,
}

fn session_id(run: &str, stage: &str, attempt: u32) -> String {
    format!("{run}.{stage}.{attempt}")
}

/// The session a stage's attempt runs.
fn stage_session(run: &Run, spec: &PipelineSpec, i: usize) -> SessionSpec {
    let stage = &spec.stages[i];
    let mut env: BTreeMap<String, String> = run
        .params
        .iter()
        .map(|(k, v)| (format!("ORCH_PARAM_{}", k.to_ascii_uppercase()), v.clone()))
        .collect();
    env.insert("ORCH_PIPELINE".into(), run.pipeline.clone());
    env.insert("ORCH_RUN".into(), run.id.clone());
    env.insert("ORCH_STAGE".into(), stage.name.clone());
    env.insert(
        "ORCH_STAGE_ATTEMPT".into(),
        run.stages[i].attempts.to_string(),
    );
    env.insert("ORCH_CORRELATION_ID".into(), run.correlation_id.clone());
    let mut s = match &stage.run {
        StageRun::Session(s) => {
            let mut s = (**s).clone();
            if let ExecutorSpec::Command { env: e, .. } = &mut s.executor {
                for (k, v) in env {
                    e.entry(k).or_insert(v);
                }
            }
            s
        }
        StageRun::Command {
            argv,
            env: own,
            require,
            timeout_ms,
        } => {
            let mut all = env;
            all.extend(own.clone());
            SessionSpec {
                name: stage.name.clone(),
                frames: FrameRange { start: 0, end: 1 },
                items: None,
                chunk_frames: 1,
                id_chunk_size: 1,
                require: require.clone(),
                prefer: BTreeMap::new(),
                // The stage's retry policy retries, not the session.
                max_attempts: 1,
                max_losses: crate::protocol::DEFAULT_MAX_LOSSES,
                backoff_ms: 500,
                backoff_max_ms: 30_000,
                executor: ExecutorSpec::Command {
                    argv: argv.clone(),
                    env: all,
                },
                timeout_ms: *timeout_ms,
                priority: 0,
                max_devices: None,
                blocklist_after: Some(0),
                idempotency_key: None,
                collect: Some("none".into()),
                correlation_id: None,
            }
        }
    };
    s.correlation_id = Some(run.correlation_id.clone());
    s
}

/// The first slot of `schedule` after `after_ms`.
pub fn next_slot(schedule: &Schedule, after_ms: u64) -> Option<u64> {
    match schedule {
        Schedule::Every { ms } => {
            let ms = (*ms).max(1);
            Some((after_ms / ms + 1).saturating_mul(ms))
        }
        Schedule::Cron { expr, tz } => {
            use chrono::TimeZone;
            let (cron, tz) = super::spec::parse_cron(expr, tz).ok()?;
            // Whole seconds: a slot is a second, whatever the millis of `after_ms`.
            let at = tz.timestamp_opt((after_ms / 1000) as i64, 0).single()?;
            let next = cron.find_next_occurrence(&at, false).ok()?;
            u64::try_from(next.timestamp()).ok().map(|s| s * 1000)
        }
    }
}

/// The last slot of `schedule` at or before `now_ms`, not before `from_ms`.
fn latest_slot(schedule: &Schedule, from_ms: u64, now_ms: u64) -> Option<u64> {
    match schedule {
        Schedule::Every { ms } => {
            let ms = (*ms).max(1);
            let slot = now_ms / ms * ms;
            (slot >= from_ms).then_some(slot)
        }
        Schedule::Cron { expr, tz } => {
            use chrono::TimeZone;
            let (cron, tz) = super::spec::parse_cron(expr, tz).ok()?;
            let at = tz.timestamp_opt((now_ms / 1000) as i64, 0).single()?;
            let prev = cron.find_previous_occurrence(&at, true).ok()?;
            let slot = u64::try_from(prev.timestamp()).ok()? * 1000;
            (slot >= from_ms).then_some(slot)
        }
    }
}

impl Pipelines {
    /// The stored pipeline `name`.
    pub fn spec(&self, name: &str) -> Option<&PipelineSpec> {
        self.defs.get(name).map(|d| &*d.spec)
    }

    pub fn len(&self) -> usize {
        self.defs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// The run `id`.
    pub fn run(&self, id: &str) -> Option<&Run> {
        self.runs.get(id)
    }

    /// The runs of `pipeline` kept, oldest first.
    pub fn runs_of(&self, pipeline: &str) -> Vec<&Run> {
        self.order
            .get(pipeline)
            .into_iter()
            .flatten()
            .filter_map(|id| self.runs.get(id))
            .collect()
    }

    /// The run and stage a session is an attempt of.
    pub fn stage_of(&self, session: &str) -> Option<(&str, &str)> {
        let (run, i) = self.by_session.get(session)?;
        let r = self.runs.get(run)?;
        Some((&r.id, &r.stages.get(*i)?.name))
    }

    pub fn views(&self) -> Vec<PipelineView> {
        self.defs.keys().filter_map(|n| self.view(n)).collect()
    }

    pub fn view(&self, name: &str) -> Option<PipelineView> {
        let d = self.defs.get(name)?;
        let last = self.order.get(name).and_then(|o| o.last());
        let breakers = d
            .spec
            .stages
            .iter()
            .filter(|s| s.circuit_breaker.is_some())
            .map(|s| {
                let b = self
                    .breakers
                    .get(&(name.to_string(), s.name.clone()))
                    .cloned()
                    .unwrap_or(Breaker::Closed { failures: 0 });
                (s.name.clone(), b)
            })
            .collect();
        Some(PipelineView {
            name: name.to_string(),
            version: d.spec.version,
            stages: d.spec.stages.len(),
            schedule: d.spec.schedule.clone(),
            next_run_ms: d.next_slot_ms,
            last_slot_ms: d.last_slot_ms,
            runs: d.runs_made,
            status: last
                .and_then(|id| self.runs.get(id))
                .map_or("idle", |r| r.state.as_str())
                .to_string(),
            last_run: last.cloned(),
            breakers,
        })
    }

    /// Store `spec` (checked by the caller) as its version, or as the next
    /// version of its name when it has none (0).
    pub fn define(&mut self, mut spec: PipelineSpec, now_ms: u64) -> u32 {
        let prev = self.defs.get(&spec.name).map_or(0, |d| d.spec.version);
        if spec.version == 0 {
            spec.version = prev + 1;
        }
        let version = spec.version;
        let d = self.defs.entry(spec.name.clone()).or_insert_with(|| Def {
            spec: Arc::new(spec.clone()),
            runs_made: 0,
            last_slot_ms: None,
            next_slot_ms: None,
        });
        d.next_slot_ms = spec
            .schedule
            .as_ref()
            .and_then(|s| next_slot(s, d.last_slot_ms.unwrap_or(now_ms).max(now_ms)));
        d.spec = Arc::new(spec);
        version
    }

    /// Whether a tick at `now_ms` would start anything.
    pub fn due(&self, now_ms: u64) -> bool {
        !self.triggered.is_empty()
            || self
                .defs
                .values()
                .any(|d| d.next_slot_ms.is_some_and(|t| t <= now_ms))
            || self.runs.values().any(|r| {
                r.state == RunState::InProgress
                    && r.stages.iter().any(|s| {
                        s.state == StageState::Waiting && s.retry_at_ms.is_some_and(|t| t <= now_ms)
                    })
            })
    }

    /// Start a run of `pipeline` now; its id.
    pub fn trigger(
        &mut self,
        pipeline: &str,
        params: BTreeMap<String, String>,
        correlation_id: Option<String>,
        cause: Cause,
        now_ms: u64,
        out: &mut Vec<PipeAction>,
    ) -> Option<String> {
        let d = self.defs.get_mut(pipeline)?;
        d.runs_made += 1;
        let spec = d.spec.clone();
        let id = format!("{pipeline}-{}", d.runs_made);
        let mut all = spec.params.clone();
        all.extend(params);
        let fallbacks: Vec<&str> = spec
            .stages
            .iter()
            .filter_map(|s| s.fallback.as_deref())
            .collect();
        let run = Run {
            id: id.clone(),
            pipeline: pipeline.to_string(),
            version: spec.version,
            correlation_id: correlation_id.unwrap_or_else(|| id.clone()),
            cause,
            params: all,
            state: RunState::InProgress,
            started_ms: now_ms,
            finished_ms: None,
            stages: spec
                .stages
                .iter()
                .map(|s| StageRecord {
                    name: s.name.clone(),
                    state: if fallbacks.contains(&s.name.as_str()) {
                        StageState::Standby
                    } else {
                        StageState::Pending
                    },
                    attempts: 0,
                    sessions: 0,
                    last_error: None,
                    started_ms: None,
                    finished_ms: None,
                    session: None,
                    retry_at_ms: None,
                    fallback_for: None,
                    items_processed: 0,
                    items_total: 0,
                })
                .collect(),
            spec: Some(spec),
        };
        out.push(PipeAction::Publish(
            Event::new(
                "pipeline.started",
                format!("pipeline:{pipeline}"),
                &run.correlation_id,
                now_ms,
            )
            .with("pipeline", pipeline)
            .with("run", id.clone())
            .with("cause", run.cause.label()),
        ));
        self.runs.insert(id.clone(), run);
        self.order
            .entry(pipeline.to_string())
            .or_default()
            .push(id.clone());
        self.advance(&id, now_ms, out);
        Some(id)
    }

    /// A session ended: the stage it is an attempt of moves on.
    pub fn session_ended(
        &mut self,
        session: &str,
        state: SessionState,
        error: Option<String>,
        now_ms: u64,
        out: &mut Vec<PipeAction>,
    ) {
        let Some((run_id, i)) = self.by_session.remove(session) else {
            return;
        };
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        let Some(spec) = run.spec.clone() else {
            return;
        };
        let st = &mut run.stages[i];
        if st.state != StageState::Running || st.session.as_deref() != Some(session) {
            return;
        }
        let key = (run.pipeline.clone(), st.name.clone());
        let stage = &spec.stages[i];
        let source = format!("pipeline:{}", run.pipeline);
        if state == SessionState::Completed {
            st.state = StageState::Completed;
            st.finished_ms = Some(now_ms);
            st.last_error = None;
            if stage.circuit_breaker.is_some() {
                self.breakers.insert(key, Breaker::Closed { failures: 0 });
            }
            out.push(PipeAction::Publish(
                Event::new("stage.completed", source, &run.correlation_id, now_ms)
                    .with("pipeline", run.pipeline.clone())
                    .with("run", run_id.clone())
                    .with("stage", st.name.clone())
                    .with("attempts", st.attempts.to_string()),
            ));
        } else {
            let why = error
                .unwrap_or_else(|| format!("its session `{session}` ended {}", state.as_str()));
            st.last_error = Some(why.clone());
            let mut open = false;
            if let Some(b) = stage.circuit_breaker {
                let failures = match self.breakers.get(&key) {
                    None => 1,
                    Some(Breaker::Closed { failures }) | Some(Breaker::Open { failures, .. }) => {
                        failures + 1
                    }
                    Some(Breaker::HalfOpen { .. }) => b.failure_threshold,
                };
                let half_open = matches!(self.breakers.get(&key), Some(Breaker::HalfOpen { .. }));
                if half_open || failures >= b.failure_threshold {
                    open = true;
                    self.breakers.insert(
                        key.clone(),
                        Breaker::Open {
                            since_ms: now_ms,
                            failures,
                        },
                    );
                    out.push(PipeAction::Publish(
                        Event::new(
                            "breaker.opened",
                            source.clone(),
                            &run.correlation_id,
                            now_ms,
                        )
                        .with("pipeline", run.pipeline.clone())
                        .with("stage", st.name.clone())
                        .with("failures", failures.to_string()),
                    ));
                } else {
                    self.breakers
                        .insert(key.clone(), Breaker::Closed { failures });
                }
            }
            out.push(PipeAction::Publish(
                Event::new("stage.attempt_failed", source, &run.correlation_id, now_ms)
                    .with("pipeline", run.pipeline.clone())
                    .with("run", run_id.clone())
                    .with("stage", st.name.clone())
                    .with("attempt", st.attempts.to_string())
                    .with("error", why),
            ));
            if st.attempts < stage.retry.max_attempts && !open {
                st.state = StageState::Waiting;
                st.retry_at_ms = Some(now_ms.saturating_add(stage.retry.delay_ms(st.attempts)));
            } else {
                self.failed_for_good(&run_id, i, now_ms, out);
            }
        }
        self.advance(&run_id, now_ms, out);
    }

    /// Retries whose delay passed, scheduled slots, event-triggered runs.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<PipeAction>) {
        let due: Vec<(String, usize)> = self
            .runs
            .values()
            .filter(|r| r.state == RunState::InProgress)
            .flat_map(|r| {
                r.stages
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| {
                        s.state == StageState::Waiting && s.retry_at_ms.is_some_and(|t| t <= now_ms)
                    })
                    .map(|(i, _)| (r.id.clone(), i))
            })
            .collect();
        for (run, i) in due {
            self.start_stage(&run, i, now_ms, out);
            self.advance(&run, now_ms, out);
        }
        let fire: Vec<String> = self
            .defs
            .iter()
            .filter(|(_, d)| d.next_slot_ms.is_some_and(|t| t <= now_ms))
            .map(|(n, _)| n.clone())
            .collect();
        for name in fire {
            let Some(d) = self.defs.get_mut(&name) else {
                continue;
            };
            let Some(schedule) = d.spec.schedule.clone() else {
                d.next_slot_ms = None;
                continue;
            };
            let from = d.next_slot_ms.unwrap_or(now_ms);
            let latest = latest_slot(&schedule, from, now_ms).unwrap_or(from);
            let on_time = now_ms.saturating_sub(latest) <= LATE_MS;
            // The slots missed (the master was down or stalled): every one
            // before the latest, and the latest too if it is late. They
            // fire once, as the latest of them, or not at all.
            let missed = if on_time {
                latest_slot(&schedule, from, latest.saturating_sub(1))
            } else {
                Some(latest)
            };
            d.last_slot_ms = Some(latest);
            d.next_slot_ms = next_slot(&schedule, latest.max(now_ms));
            let catch_up = d.spec.catch_up;
            let source = format!("schedule:{name}");
            let mut fire = Vec::new();
            if let Some(slot) = missed {
                if catch_up {
                    fire.push((slot, true));
                } else {
                    out.push(PipeAction::Publish(
                        Event::new(
                            "schedule.skipped",
                            source.clone(),
                            &format!("{name}@{slot}"),
                            now_ms,
                        )
                        .with("pipeline", name.clone())
                        .with("slot_ms", slot.to_string())
                        .with("from_ms", from.to_string()),
                    ));
                }
            }
            if on_time {
                fire.push((latest, false));
            }
            for (slot, late) in fire {
                out.push(PipeAction::Publish(
                    Event::new(
                        "schedule.fired",
                        source.clone(),
                        &format!("{name}@{slot}"),
                        now_ms,
                    )
                    .with("pipeline", name.clone())
                    .with("slot_ms", slot.to_string())
                    .with("late_ms", now_ms.saturating_sub(slot).to_string())
                    .with("catch_up", late.to_string()),
                ));
                self.trigger(
                    &name,
                    BTreeMap::new(),
                    None,
                    Cause::Schedule { slot_ms: slot },
                    now_ms,
                    out,
                );
            }
        }
        let n = self.triggered.len().min(TRIGGERED_PER_TICK);
        for (name, cause) in self.triggered.drain(..n).collect::<Vec<_>>() {
            self.trigger(&name, BTreeMap::new(), None, cause, now_ms, out);
        }
        self.trim();
    }

    /// An event happened: pipelines triggered by it start at the next tick.
    pub fn on_event(&mut self, ev: &Event) {
        for (name, d) in &self.defs {
            let Some(t) = &d.spec.trigger else {
                continue;
            };
            if crate::events::type_matches(&t.on, &ev.kind) && ev.matches(&t.filter) {
                if self.triggered.len() >= TRIGGERED_QUEUE {
                    self.dropped_triggers += 1;
                    continue;
                }
                self.triggered.push((
                    name.clone(),
                    Cause::Event {
                        kind: ev.kind.clone(),
                        correlation_id: ev.correlation_id.clone(),
                    },
                ));
            }
        }
    }

    /// Cancel run `id`: its running sessions are cancelled.
    pub fn cancel(
        &mut self,
        id: &str,
        now_ms: u64,
        out: &mut Vec<PipeAction>,
    ) -> Result<(), String> {
        let Some(run) = self.runs.get_mut(id) else {
            return Err(format!("no run `{id}`"));
        };
        if run.state.is_final() {
            return Err(format!("run `{id}` is {} already", run.state.as_str()));
        }
        for st in &mut run.stages {
            if st.state == StageState::Running {
                if let Some(s) = &st.session {
                    self.by_session.remove(s);
                    out.push(PipeAction::Cancel { session: s.clone() });
                }
            }
            if st.state.is_open() {
                st.state = StageState::Cancelled;
                st.finished_ms = Some(now_ms);
                st.retry_at_ms = None;
            }
        }
        self.finish(id, RunState::Cancelled, now_ms, out);
        Ok(())
    }

    /// Run the failed, skipped and cancelled stages of finished run `id`
    /// again; its completed stages stay.
    pub fn rerun(
        &mut self,
        id: &str,
        now_ms: u64,
        out: &mut Vec<PipeAction>,
    ) -> Result<usize, String> {
        let Some(run) = self.runs.get_mut(id) else {
            return Err(format!("no run `{id}`"));
        };
        if !run.state.is_final() {
            return Err(format!("run `{id}` is still in progress"));
        }
        if run.spec.is_none() {
            return Err(format!(
                "run `{id}` is from an older master and cannot run again"
            ));
        }
        let mut again = 0;
        for st in &mut run.stages {
            let was_fallback = st.fallback_for.take().is_some();
            match st.state {
                StageState::Failed | StageState::Skipped | StageState::Cancelled => {
                    st.state = if was_fallback {
                        StageState::Standby
                    } else {
                        StageState::Pending
                    };
                    st.attempts = 0;
                    st.last_error = None;
                    st.finished_ms = None;
                    st.retry_at_ms = None;
                    again += 1;
                }
                StageState::Completed if was_fallback => {
                    st.state = StageState::Standby;
                }
                _ => {}
            }
        }
        if again == 0 {
            return Err(format!("run `{id}` has no failed stage"));
        }
        run.state = RunState::InProgress;
        run.finished_ms = None;
        out.push(PipeAction::Publish(
            Event::new(
                "pipeline.rerun",
                format!("pipeline:{}", run.pipeline),
                &run.correlation_id,
                now_ms,
            )
            .with("pipeline", run.pipeline.clone())
            .with("run", id.to_string())
            .with("stages", again.to_string()),
        ));
        self.advance(id, now_ms, out);
        Ok(again)
    }

    /// Start attempt `attempts + 1` of stage `i` (or fail it at once if its
    /// breaker is open).
    fn start_stage(&mut self, run_id: &str, i: usize, now_ms: u64, out: &mut Vec<PipeAction>) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let Some(spec) = run.spec.clone() else {
            return;
        };
        let stage = &spec.stages[i];
        let key = (run.pipeline.clone(), stage.name.clone());
        if let Some(b) = stage.circuit_breaker {
            match self.breakers.get(&key).cloned() {
                Some(Breaker::Open { since_ms, .. })
                    if now_ms < since_ms.saturating_add(b.reset_timeout_ms) =>
                {
                    let st = &mut run.stages[i];
                    st.last_error = Some(format!(
                        "circuit breaker open since {since_ms} (unix ms): not run; a trial runs from {}",
                        since_ms.saturating_add(b.reset_timeout_ms)
                    ));
                    st.started_ms.get_or_insert(now_ms);
                    self.failed_for_good(run_id, i, now_ms, out);
                    return;
                }
                Some(Breaker::Open { .. }) => {
                    self.breakers.insert(
                        key.clone(),
                        Breaker::HalfOpen {
                            trial: run_id.to_string(),
                        },
                    );
                    out.push(PipeAction::Publish(
                        Event::new(
                            "breaker.half_open",
                            format!("pipeline:{}", run.pipeline),
                            &run.correlation_id,
                            now_ms,
                        )
                        .with("pipeline", run.pipeline.clone())
                        .with("stage", stage.name.clone())
                        .with("run", run_id.to_string()),
                    ));
                }
                Some(Breaker::HalfOpen { trial }) if trial != run_id => {
                    let st = &mut run.stages[i];
                    st.last_error = Some(format!(
                        "circuit breaker half-open: run `{trial}` holds the trial; not run"
                    ));
                    st.started_ms.get_or_insert(now_ms);
                    self.failed_for_good(run_id, i, now_ms, out);
                    return;
                }
                _ => {}
            }
        }
        let st = &mut run.stages[i];
        st.attempts += 1;
        st.sessions += 1;
        st.state = StageState::Running;
        st.retry_at_ms = None;
        st.started_ms.get_or_insert(now_ms);
        let session = session_id(run_id, &st.name, st.sessions);
        st.session = Some(session.clone());
        self.by_session
            .insert(session.clone(), (run_id.to_string(), i));
        out.push(PipeAction::Publish(
            Event::new(
                "stage.started",
                format!("pipeline:{}", run.pipeline),
                &run.correlation_id,
                now_ms,
            )
            .with("pipeline", run.pipeline.clone())
            .with("run", run_id.to_string())
            .with("stage", stage.name.clone())
            .with("attempt", st.attempts.to_string())
            .with("session", session.clone()),
        ));
        let spec = stage_session(run, &spec, i);
        out.push(PipeAction::Submit {
            id: session,
            spec: Box::new(spec),
        });
    }

    /// Stage `i` failed with no attempt left: an error event, its fallback.
    fn failed_for_good(&mut self, run_id: &str, i: usize, now_ms: u64, out: &mut Vec<PipeAction>) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        let Some(spec) = run.spec.clone() else {
            return;
        };
        let st = &mut run.stages[i];
        st.state = StageState::Failed;
        st.finished_ms = Some(now_ms);
        st.retry_at_ms = None;
        let dependents: Vec<&str> = spec
            .stages
            .iter()
            .filter(|s| s.depends_on.contains(&st.name))
            .map(|s| s.name.as_str())
            .collect();
        out.push(PipeAction::Publish(
            Event::new(
                "stage.failed",
                format!("pipeline:{}", run.pipeline),
                &run.correlation_id,
                now_ms,
            )
            .with("pipeline", run.pipeline.clone())
            .with("run", run_id.to_string())
            .with("stage", st.name.clone())
            .with("attempts", st.attempts.to_string())
            .with("error", st.last_error.clone().unwrap_or_default())
            .with("dependents", dependents.join(",")),
        ));
        let name = st.name.clone();
        if let Some(f) = &spec.stages[i].fallback {
            if let Some(j) = spec.stages.iter().position(|s| &s.name == f) {
                if run.stages[j].state == StageState::Standby {
                    run.stages[j].state = StageState::Pending;
                    run.stages[j].fallback_for = Some(name);
                    self.start_stage(run_id, j, now_ms, out);
                }
            }
        }
    }

    /// Start every stage whose dependencies are done, skip those whose
    /// dependencies failed, and end the run when nothing is left.
    fn advance(&mut self, run_id: &str, now_ms: u64, out: &mut Vec<PipeAction>) {
        loop {
            let Some(run) = self.runs.get_mut(run_id) else {
                return;
            };
            if run.state.is_final() {
                return;
            }
            let Some(spec) = run.spec.clone() else {
                return;
            };
            let state_of = |name: &str| {
                spec.stages
                    .iter()
                    .position(|s| s.name == name)
                    .map(|j| (run.stages[j].state, spec.stages[j].on_failure))
            };
            let mut start = None;
            let mut skip = None;
            for (i, st) in run.stages.iter().enumerate() {
                if st.state != StageState::Pending || st.fallback_for.is_some() {
                    continue;
                }
                let deps: Vec<_> = spec.stages[i]
                    .depends_on
                    .iter()
                    .filter_map(|d| state_of(d))
                    .collect();
                let blocked = deps.iter().any(|(s, f)| {
                    matches!(s, StageState::Skipped | StageState::Cancelled)
                        || (*s == StageState::Failed && *f == OnFailure::Fail)
                });
                if blocked {
                    skip = Some(i);
                    break;
                }
                let ready = deps.iter().all(|(s, f)| {
                    *s == StageState::Completed
                        || (*s == StageState::Failed && *f == OnFailure::Continue)
                });
                if ready {
                    start = Some(i);
                    break;
                }
            }
            if let Some(i) = skip {
                let st = &mut run.stages[i];
                st.state = StageState::Skipped;
                st.finished_ms = Some(now_ms);
                st.last_error = Some("a stage it depends on failed".into());
                out.push(PipeAction::Publish(
                    Event::new(
                        "stage.skipped",
                        format!("pipeline:{}", run.pipeline),
                        &run.correlation_id,
                        now_ms,
                    )
                    .with("pipeline", run.pipeline.clone())
                    .with("run", run_id.to_string())
                    .with("stage", st.name.clone()),
                ));
                continue;
            }
            if let Some(i) = start {
                self.start_stage(run_id, i, now_ms, out);
                continue;
            }
            break;
        }
        let Some(run) = self.runs.get(run_id) else {
            return;
        };
        if run.stages.iter().any(|s| s.state.is_open()) {
            return;
        }
        let ran: Vec<StageState> = run
            .stages
            .iter()
            .filter(|s| s.state != StageState::Standby)
            .map(|s| s.state)
            .collect();
        let state = if ran.iter().all(|s| *s == StageState::Completed) {
            RunState::Completed
        } else if ran.contains(&StageState::Completed) {
            RunState::Partial
        } else {
            RunState::Failed
        };
        self.finish(run_id, state, now_ms, out);
    }

    fn finish(&mut self, run_id: &str, state: RunState, now_ms: u64, out: &mut Vec<PipeAction>) {
        let Some(run) = self.runs.get_mut(run_id) else {
            return;
        };
        run.state = state;
        run.finished_ms = Some(now_ms);
        let failed: Vec<&str> = run
            .stages
            .iter()
            .filter(|s| s.state == StageState::Failed)
            .map(|s| s.name.as_str())
            .collect();
        let ev = Event::new(
            &format!("pipeline.{}", state.as_str()),
            format!("pipeline:{}", run.pipeline),
            &run.correlation_id,
            now_ms,
        )
        .with("pipeline", run.pipeline.clone())
        .with("run", run_id.to_string())
        .with("failed_stages", failed.join(","))
        .with("took_ms", now_ms.saturating_sub(run.started_ms).to_string());
        self.on_event(&ev);
        out.push(PipeAction::Publish(ev));
    }

    /// Finished runs beyond [`RUNS_KEPT`] per pipeline leave memory.
    fn trim(&mut self) {
        for ids in self.order.values_mut() {
            let finished = ids
                .iter()
                .filter(|id| self.runs.get(*id).is_some_and(|r| r.state.is_final()))
                .count();
            if finished <= RUNS_KEPT {
                continue;
            }
            let mut drop = finished - RUNS_KEPT;
            ids.retain(|id| {
                let old = drop > 0 && self.runs.get(id).is_some_and(|r| r.state.is_final());
                if old {
                    drop -= 1;
                    self.runs.remove(id);
                }
                !old
            });
        }
    }
}
