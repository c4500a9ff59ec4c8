//! Pipelines in the ledger (docs/pipelines.md): their events fed to the
//! [`Pipelines`] engine, the sessions it asks for submitted and cancelled
//! here, and the end of every session told to it.

use super::*;
use crate::events::Event;
use crate::pipeline::{PipeAction, Pipelines};

impl Scheduler {
    /// Every pipeline, run, breaker and schedule.
    pub fn pipelines(&self) -> &Pipelines {
        &self.pipelines
    }

    /// A pipeline event: what the engine asks for is done now.
    pub(super) fn pipeline_event(
        &mut self,
        ev: SchedEvent,
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) {
        let mut acts = Vec::new();
        match ev {
            SchedEvent::PipelineDefined(spec) => {
                self.pipelines.define(*spec, now_ms);
            }
            SchedEvent::PipelineRun {
                pipeline,
                params,
                correlation_id,
            } => {
                self.pipelines.trigger(
                    &pipeline,
                    params,
                    correlation_id,
                    crate::pipeline::Cause::Manual,
                    now_ms,
                    &mut acts,
                );
            }
            SchedEvent::PipelineCancel { run } => {
                let _ = self.pipelines.cancel(&run, now_ms, &mut acts);
            }
            SchedEvent::PipelineRerun { run } => {
                let _ = self.pipelines.rerun(&run, now_ms, &mut acts);
            }
            _ => {}
        }
        self.pipe_actions(acts, now_ms, out);
    }

    /// Retries, schedules and event-triggered runs that are due.
    pub(super) fn pipelines_tick(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
        if !self.pipelines.due(now_ms) {
            return;
        }
        let mut acts = Vec::new();
        self.pipelines.tick(now_ms, &mut acts);
        self.pipe_actions(acts, now_ms, out);
    }

    /// Sessions that ended in `out[from..]`: a `session.*` event each, and
    /// the stages they are attempts of move on.
    pub(super) fn pipelines_after(
        &mut self,
        from: usize,
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) {
        let mut at = from;
        // What a stage's end starts may end at once (a submit refused): the
        // loop takes the sessions that end while it runs too.
        while at < out.len() {
            let ended = match &out[at] {
                SchedCommand::SessionFinished { session, state } => Some((session.clone(), *state)),
                _ => None,
            };
            at += 1;
            let Some((session, state)) = ended else {
                continue;
            };
            let (error, correlation, name, frames) = match self.by_id.get(&session) {
                Some(&s) => {
                    let sess = &self.sessions[s];
                    (
                        sess.failed.first().map(|f| f.error.clone()),
                        sess.spec
                            .correlation_id
                            .clone()
                            .unwrap_or_else(|| session.clone()),
                        sess.spec.name.clone(),
                        (sess.frames_done, sess.spec.frames.len()),
                    )
                }
                None => (None, session.clone(), String::new(), (0, 0)),
            };
            let mut ev = Event::new(
                &format!("session.{}", state.as_str()),
                "master".into(),
                &correlation,
                now_ms,
            )
            .with("session", session.clone())
            .with("name", name)
            .with("frames_done", frames.0.to_string())
            .with("frames_total", frames.1.to_string());
            if let Some((run, stage)) = self.pipelines.stage_of(&session) {
                ev = ev.with("run", run).with("stage", stage);
            }
            if let Some(e) = &error {
                ev = ev.with("error", e.chars().take(500).collect::<String>());
            }
            self.pipelines.on_event(&ev);
            out.push(SchedCommand::Publish(ev));
            let mut acts = Vec::new();
            self.pipelines
                .session_ended(&session, state, error, now_ms, &mut acts);
            self.pipe_actions(acts, now_ms, out);
        }
    }

    fn pipe_actions(&mut self, acts: Vec<PipeAction>, now_ms: u64, out: &mut Vec<SchedCommand>) {
        let mut submitted = false;
        for a in acts {
            match a {
                PipeAction::Submit { id, mut spec } => {
                    // A workflow stage runs the version stored now.
                    if let crate::protocol::ExecutorSpec::Workflow(w) = &mut spec.executor {
                        let version = (w.version > 0).then_some(w.version);
                        match self.workflow(&w.name, version) {
                            Some(found) => **w = found.clone(),
                            None => {
                                let why = format!("no workflow `{}` is stored", w.name);
                                let mut more = Vec::new();
                                self.pipelines.session_ended(
                                    &id,
                                    SessionState::Failed,
                                    Some(why),
                                    now_ms,
                                    &mut more,
                                );
                                self.pipe_actions(more, now_ms, out);
                                continue;
                            }
                        }
                    }
                    self.submit(id, *spec, now_ms);
                    submitted = true;
                }
                PipeAction::Cancel { session } => self.cancel(&session, now_ms, out),
                PipeAction::Publish(ev) => out.push(SchedCommand::Publish(ev)),
            }
        }
        if submitted {
            if self.place_in_passes {
                self.place_more = true;
            } else {
                self.place(now_ms, out);
            }
        }
    }

    /// The frames done and in all of each stage's session, for the views.
    pub fn pipeline_run_view(&self, run: &str) -> Option<crate::pipeline::Run> {
        let mut r = self.pipelines.run(run)?.clone();
        for st in &mut r.stages {
            if let Some(&s) = st.session.as_ref().and_then(|id| self.by_id.get(id)) {
                let sess = &self.sessions[s];
                st.items_processed = sess.frames_done;
                st.items_total = sess.spec.frames.len();
            }
        }
        Some(r)
    }
}
