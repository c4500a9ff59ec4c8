//! Answers to admin requests.

use super::*;

impl MasterState {
    pub(super) fn answer(&mut self, req: AdminRequest) -> AdminReply {
        let now = self.now_ms();
        let unix_now = self.unix_ms(now);
        match req {
            AdminRequest::Status => {
                let mut s = self.cluster_status(now);
                s.sessions = self.session_views(unix_now);
                AdminReply::Status(s)
            }
            AdminRequest::Devices(filter) => {
                if let Some(n) = &filter {
                    if self.membership.registration(n).is_none() {
                        return AdminReply::NotFound(format!("no worker `{n}`"));
                    }
                }
                let mut views = self.sched.device_views(filter.as_deref());
                // Devices of workers that are not (or no longer) healthy are offline.
                for w in self.membership.views(now) {
                    if filter.as_ref().is_some_and(|f| *f != w.node)
                        || self.sched.has_device(&w.node, None)
                    {
                        continue;
                    }
                    for d in w.devices.iter() {
                        views.push(DeviceView {
                            node: w.node.clone(),
                            device: d.id.clone(),
                            state: DeviceState::Offline,
                            tasks: Vec::new(),
                            tasks_done: 0,
                            last_error: w.reason.map(|r| r.as_str().to_string()),
                            capabilities: d.capabilities.clone(),
                        });
                    }
                }
                AdminReply::Devices(views)
            }
            AdminRequest::Drain(node) | AdminRequest::Undrain(node)
                if self.membership.registration(&node).is_none() =>
            {
                AdminReply::NotFound(format!("no worker `{node}`"))
            }
            AdminRequest::Drain(node) => {
                self.schedule(SchedEvent::Drain {
                    node: node.clone(),
                    drained: true,
                });
                AdminReply::Done(format!(
                    "node `{node}` drained: it finishes the tasks it has and takes no new ones"
                ))
            }
            AdminRequest::Undrain(node) => {
                self.schedule(SchedEvent::Drain {
                    node: node.clone(),
                    drained: false,
                });
                AdminReply::Done(format!("node `{node}` takes work again"))
            }
            AdminRequest::RestartDevice { node, device }
            | AdminRequest::KillDevice { node, device }
                if !self.sched.has_device(&node, Some(&device)) =>
            {
                AdminReply::NotFound(format!("no device `{device}` on a healthy worker `{node}`"))
            }
            AdminRequest::RestartDevice { node, device } => {
                self.schedule(SchedEvent::DeviceDown {
                    node: node.clone(),
                    device: device.clone(),
                    reason: LossReason::DeviceRestart,
                    disable: false,
                });
                self.send_to(
                    &node,
                    ToWorker::RestartDevice {
                        device: device.clone(),
                    },
                );
                AdminReply::Done(format!(
                    "device `{device}` on `{node}` restarted; its tasks were reassigned"
                ))
            }
            AdminRequest::KillDevice { node, device } => {
                self.schedule(SchedEvent::DeviceDown {
                    node: node.clone(),
                    device: device.clone(),
                    reason: LossReason::DeviceKilled,
                    disable: true,
                });
                AdminReply::Done(format!(
                    "device `{device}` on `{node}` quarantined; its tasks were reassigned (restart-device brings it back)"
                ))
            }
            AdminRequest::DeviceGrid => {
                let mut grid = self.sched.device_grid();
                // Devices of workers that are not (or no longer) healthy are offline.
                for w in self.membership.views(now) {
                    if !self.sched.has_device(&w.node, None) {
                        let states =
                            std::iter::repeat_n(DeviceState::Offline.grid_char(), w.devices.len());
                        grid.push(crate::protocol::NodeGrid {
                            node: w.node,
                            states: states.collect(),
                        });
                    }
                }
                AdminReply::DeviceGrid(grid)
            }
            AdminRequest::Workers => AdminReply::Workers(self.membership.views(now)),
            AdminRequest::Submit(mut spec) => {
                // A workflow session runs the version stored now.
                if let crate::protocol::ExecutorSpec::Workflow(w) = &mut spec.executor {
                    let version = (w.version > 0).then_some(w.version);
                    let Some(found) = self.sched.workflow(&w.name, version) else {
                        return AdminReply::Error(match version {
                            Some(v) => format!("no workflow `{}` at version {v} (`orchctl workflow show {}` lists its versions)", w.name, w.name),
                            None => format!("no workflow `{}`; store it first with `orchctl workflow add FILE`", w.name),
                        });
                    };
                    **w = found.clone();
                    // An attempt may take every step's time, and a little.
                    let all = crate::workflow::total_timeout_ms(w).saturating_add(5_000);
                    spec.timeout_ms = spec.timeout_ms.max(all);
                }
                // A retried submission: the session it made the first time.
                if let Some(id) = spec
                    .idempotency_key
                    .as_deref()
                    .and_then(|k| self.sched.session_for_key(k))
                {
                    return AdminReply::Submitted { id: id.to_string() };
                }
                // The ledger's clock (never back across restarts) in
                // milliseconds, and 16 random bits: unique across restarts
                // and across masters.
                let mut id;
                loop {
                    id = format!("{}-{:x}{:04x}", spec.name, unix_now, rand::random::<u16>());
                    // A restarted master must not reuse the id of a session it replayed.
                    if !self.sched.has_session(&id) {
                        break;
                    }
                }
                let correlation = spec.correlation_id.clone().unwrap_or_else(|| id.clone());
                info!(node_id = %self.node, session = %id, frames = spec.frames.len(), executor = spec.executor.name(), correlation_id = %correlation, "session submitted");
                self.publish(
                    crate::events::Event::new(
                        "session.submitted",
                        "master".into(),
                        &correlation,
                        unix_now,
                    )
                    .with("session", id.clone())
                    .with("name", spec.name.clone())
                    .with("frames_total", spec.frames.len().to_string()),
                );
                metrics::counter!(m::SESSIONS_SUBMITTED).increment(1);
                self.schedule(SchedEvent::Submit {
                    id: id.clone(),
                    spec,
                });
                AdminReply::Submitted { id }
            }
            AdminRequest::Unblock { node, device } => {
                if !self.sched.has_device(&node, Some(&device)) {
                    return AdminReply::NotFound(format!(
                        "no device `{device}` on worker `{node}`"
                    ));
                }
                self.schedule(SchedEvent::Unblock {
                    node: node.clone(),
                    device: device.clone(),
                });
                AdminReply::Done(format!("device `{device}` of `{node}` takes work again"))
            }
            AdminRequest::WorkflowAdd(mut w) => {
                let problems = crate::workflow::problems(&w);
                if !problems.is_empty() {
                    let all: Vec<String> = problems
                        .into_iter()
                        .map(|(at, what)| format!("`{at}`: {what}"))
                        .collect();
                    return AdminReply::Error(format!("invalid workflow: {}", all.join("; ")));
                }
                let (names, versions) = self.sched.workflow_counts(&w.name);
                if versions >= crate::workflow::MAX_VERSIONS {
                    return AdminReply::Error(format!(
                        "workflow `{}` has {versions} versions, the most kept",
                        w.name
                    ));
                }
                if versions == 0 && names >= crate::workflow::MAX_WORKFLOWS {
                    return AdminReply::Error(format!(
                        "{names} workflows are stored, the most kept"
                    ));
                }
                w.version = versions as u32 + 1;
                let (name, version) = (w.name.clone(), w.version);
                info!(node_id = %self.node, workflow = %name, version, steps = w.steps.len(), "workflow stored");
                self.schedule(SchedEvent::WorkflowAdded(w));
                AdminReply::WorkflowAdded { name, version }
            }
            AdminRequest::PipelineAdd(mut spec) => {
                let problems = crate::pipeline::problems(&spec);
                if !problems.is_empty() {
                    let all: Vec<String> = problems
                        .into_iter()
                        .map(|(at, what)| format!("`{at}`: {what}"))
                        .collect();
                    return AdminReply::Error(format!("invalid pipeline: {}", all.join("; ")));
                }
                let p = self.sched.pipelines();
                if p.spec(&spec.name).is_none() && p.len() >= crate::pipeline::MAX_PIPELINES {
                    return AdminReply::Error(format!(
                        "{} pipelines are stored, the most kept",
                        p.len()
                    ));
                }
                spec.version = p.spec(&spec.name).map_or(1, |s| s.version + 1);
                let (name, version) = (spec.name.clone(), spec.version);
                info!(node_id = %self.node, pipeline = %name, version, stages = spec.stages.len(), "pipeline stored");
                self.schedule(SchedEvent::PipelineDefined(spec));
                AdminReply::PipelineAdded { name, version }
            }
            AdminRequest::PipelineRun {
                name,
                params,
                correlation_id,
            } => {
                if self.sched.pipelines().spec(&name).is_none() {
                    return AdminReply::NotFound(format!(
                        "no pipeline `{name}`; store it first with `orchctl pipeline add FILE`"
                    ));
                }
                if params.len() > crate::pipeline::MAX_PARAMS {
                    return AdminReply::Error(format!(
                        "at most {} parameters, got {}",
                        crate::pipeline::MAX_PARAMS,
                        params.len()
                    ));
                }
                if let Some((k, _)) = params.iter().find(|(k, v)| {
                    !crate::pipeline::valid_param(k)
                        || v.len() > crate::pipeline::MAX_PARAM_LEN
                        || v.contains('\0')
                }) {
                    return AdminReply::Error(format!(
                        "invalid parameter `{}`: expected a name from `A-Z a-z 0-9 _` and a value of at most {} bytes without NUL",
                        k.chars().take(64).collect::<String>(),
                        crate::pipeline::MAX_PARAM_LEN
                    ));
                }
                if let Some(c) = &correlation_id {
                    if !crate::pipeline::valid_correlation(c) {
                        return AdminReply::Error(
                            "invalid correlation id: expected 1 to 128 characters from `A-Z a-z 0-9 - _ . :`".into(),
                        );
                    }
                }
                self.schedule(SchedEvent::PipelineRun {
                    pipeline: name.clone(),
                    params,
                    correlation_id,
                });
                let p = self.sched.pipelines();
                match p
                    .view(&name)
                    .and_then(|v| v.last_run)
                    .and_then(|r| p.run(&r))
                {
                    Some(run) => {
                        info!(node_id = %self.node, pipeline = %name, run = %run.id, correlation_id = %run.correlation_id, "pipeline run started");
                        AdminReply::PipelineStarted {
                            run: run.id.clone(),
                            correlation_id: run.correlation_id.clone(),
                        }
                    }
                    None => AdminReply::Error(format!("pipeline `{name}` did not start")),
                }
            }
            AdminRequest::Pipelines => AdminReply::Pipelines(self.sched.pipelines().views()),
            AdminRequest::Events { after, limit } => AdminReply::Events(
                self.read_model
                    .bus()
                    .since(
                        after,
                        &crate::events::Filter::default(),
                        (limit as usize).min(crate::events::EVENTS_PER_MESSAGE),
                    )
                    .iter()
                    .map(|e| (**e).clone())
                    .collect(),
            ),
            AdminRequest::Pipeline(name) => {
                let p = self.sched.pipelines();
                match (p.view(&name), p.spec(&name)) {
                    (Some(v), Some(s)) => AdminReply::Pipeline(Box::new((v, s.clone()))),
                    _ => AdminReply::NotFound(format!("no pipeline `{name}`")),
                }
            }
            AdminRequest::PipelineRuns(name) => {
                let p = self.sched.pipelines();
                if p.spec(&name).is_none() {
                    return AdminReply::NotFound(format!("no pipeline `{name}`"));
                }
                AdminReply::PipelineRuns(
                    p.runs_of(&name)
                        .into_iter()
                        .map(|r| {
                            let mut r = r.clone();
                            r.stages.clear();
                            r
                        })
                        .collect(),
                )
            }
            AdminRequest::PipelineShow(run) => match self.sched.pipeline_run_view(&run) {
                Some(r) => AdminReply::PipelineRun(Box::new(r)),
                None => AdminReply::NotFound(format!(
                    "no run `{run}` (finished runs beyond the last {} of a pipeline leave memory)",
                    crate::pipeline::RUNS_KEPT
                )),
            },
            AdminRequest::PipelineCancel(run) | AdminRequest::PipelineRerun(run)
                if self.sched.pipelines().run(&run).is_none() =>
            {
                AdminReply::NotFound(format!("no run `{run}`"))
            }
            AdminRequest::PipelineCancel(run) => {
                if let Some(r) = self
                    .sched
                    .pipelines()
                    .run(&run)
                    .filter(|r| r.state.is_final())
                {
                    return AdminReply::Error(format!(
                        "run `{run}` is {} already",
                        r.state.as_str()
                    ));
                }
                self.schedule(SchedEvent::PipelineCancel { run: run.clone() });
                info!(node_id = %self.node, %run, "pipeline run cancelled by an operator");
                AdminReply::Done(format!(
                    "run `{run}` cancelled; its running sessions were cancelled"
                ))
            }
            AdminRequest::PipelineRerun(run) => {
                let Some(r) = self.sched.pipelines().run(&run) else {
                    return AdminReply::NotFound(format!("no run `{run}`"));
                };
                if !r.state.is_final() {
                    return AdminReply::Error(format!("run `{run}` is still in progress"));
                }
                let again = r
                    .stages
                    .iter()
                    .filter(|s| {
                        matches!(
                            s.state,
                            crate::pipeline::StageState::Failed
                                | crate::pipeline::StageState::Skipped
                                | crate::pipeline::StageState::Cancelled
                        )
                    })
                    .count();
                if again == 0 {
                    return AdminReply::Error(format!("run `{run}` has no failed stage"));
                }
                self.schedule(SchedEvent::PipelineRerun { run: run.clone() });
                info!(node_id = %self.node, %run, stages = again, "failed stages of a pipeline run run again");
                AdminReply::Done(format!("run `{run}`: {again} stages run again"))
            }
            AdminRequest::Workflows => AdminReply::Workflows(self.sched.workflows()),
            AdminRequest::Workflow { name, version } => match self.sched.workflow(&name, version) {
                Some(w) => AdminReply::Workflow(Box::new(w.clone())),
                None => AdminReply::NotFound(match version {
                    Some(v) => format!("no workflow `{name}` at version {v}"),
                    None => format!("no workflow `{name}`"),
                }),
            },
            AdminRequest::Sessions => AdminReply::Sessions(self.session_views(unix_now)),
            AdminRequest::Session(id) => match self.session_view(&id, unix_now) {
                Some(v) => AdminReply::Session(v),
                None => AdminReply::NotFound(format!("no session `{id}`")),
            },
            AdminRequest::Tasks {
                session,
                from,
                limit,
            } => match self.sched.tasks_page(&session, from, limit) {
                Some(t) => AdminReply::Tasks(t),
                None if self.sched.has_session(&session) => AdminReply::Error(format!(
                    "session `{session}` left the master's memory: its tasks are in its manifest"
                )),
                None => AdminReply::NotFound(format!("no session `{session}`")),
            },
            AdminRequest::Manifest(id) => match self.sched.manifest(&id) {
                Some(m) => AdminReply::Manifest(Box::new(m)),
                None => AdminReply::NotFound(format!("no session `{id}`")),
            },
            AdminRequest::Pause { session, .. }
            | AdminRequest::Retry(session)
            | AdminRequest::Requeue { session, .. }
                if !self.sched.has_session(&session) =>
            {
                AdminReply::NotFound(format!("no session `{session}`"))
            }
            AdminRequest::Pause { session, paused } => {
                if let Some(why) = self.sched.pause_refused(&session) {
                    return AdminReply::Error(why);
                }
                self.schedule(SchedEvent::Pause {
                    session: session.clone(),
                    paused,
                });
                info!(node_id = %self.node, %session, paused, "session paused or resumed by an operator");
                let running = self
                    .sched
                    .view(&session, unix_now)
                    .map_or(0, |v| v.tasks_running);
                AdminReply::Done(if paused {
                    format!("session `{session}` paused: it gets no new work, and its {running} attempts in flight finish (`orchctl resume {session}` undoes it)")
                } else {
                    format!("session `{session}` resumed")
                })
            }
            AdminRequest::Retry(session) => {
                if let Some(why) = self.sched.retry_refused(&session) {
                    return AdminReply::Error(why);
                }
                let before = self.sched.view(&session, unix_now);
                self.gate.rerun(&session, self.sched.failed_tasks(&session));
                self.schedule(SchedEvent::Retry {
                    session: session.clone(),
                });
                let (tasks, frames) = before.map_or((0, 0), |v| (v.tasks_failed, v.frames_failed));
                info!(node_id = %self.node, %session, tasks, frames, "failed ranges retried by an operator");
                AdminReply::Done(format!(
                    "session `{session}`: {tasks} failed ranges ({frames} frames) run again with fresh attempts"
                ))
            }
            AdminRequest::Requeue { session, task } => self.requeue(session, task, Vec::new()),
            AdminRequest::Cancel(id) => {
                if self.sched.view(&id, unix_now).is_none() {
                    return AdminReply::NotFound(format!("no session `{id}`"));
                }
                self.schedule(SchedEvent::Cancel {
                    session: id.clone(),
                });
                AdminReply::Cancelled { id }
            }
        }
    }
}

impl MasterState {
    /// Record the requeue of task `task` of `session` (its ranges named in
    /// `produced` when they were read from disk), if it still applies.
    pub(super) fn requeue(
        &mut self,
        session: String,
        task: u64,
        produced: Vec<crate::scheduler::ProducedRange>,
    ) -> AdminReply {
        let needs = match self.sched.requeue_check(&session, task) {
            Ok(needs) => needs,
            Err(why) => return AdminReply::Error(why),
        };
        if needs == crate::scheduler::RequeueNeeds::Disk && produced.is_empty() {
            return AdminReply::Error(format!(
                "task {task} of `{session}` has no produced range in its manifest: nothing to run again"
            ));
        }
        let nodes: BTreeSet<String> = produced.iter().map(|p| p.node.clone()).collect();
        let (device, attempt) = produced
            .last()
            .map(|p| (p.device.clone(), p.attempt))
            .unwrap_or_default();
        self.gate.rerun(&session, [task]);
        self.schedule(SchedEvent::Requeue {
            session: session.clone(),
            task,
            produced,
        });
        info!(node_id = %self.node, %session, task, attempt, device_id = %device, "produced range requeued by an operator");
        let on = if nodes.is_empty() {
            String::new()
        } else {
            format!(" on {}", nodes.into_iter().collect::<Vec<_>>().join(", "))
        };
        AdminReply::Done(format!(
            "task {task} of `{session}` runs again; its earlier outputs are quarantined{on} (the manifest's `replay` says `operator_requeue`)"
        ))
    }
}

/// Most manifest ranges sent to another node in one answer (a cluster frame
/// over 16 MiB would drop the connection).
pub(super) const MAX_FORWARDED_RANGES: usize = 20_000;

/// Why a manifest is not forwarded to another node.
pub(super) fn too_many_to_forward(session: &str, ranges: usize, node: &str) -> String {
    format!(
        "the manifest of `{session}` has {ranges} ranges, too many to forward across the cluster; ask the master node `{node}` directly, or read `sessions/{session}/manifest.json` in its data_dir"
    )
}

/// Whether an admin request changes the ledger: its answer waits for the commit.
pub(super) fn mutates(req: &AdminRequest) -> bool {
    matches!(
        req,
        AdminRequest::Submit(_)
            | AdminRequest::Cancel(_)
            | AdminRequest::Pause { .. }
            | AdminRequest::Retry(_)
            | AdminRequest::Requeue { .. }
            | AdminRequest::Drain(_)
            | AdminRequest::Undrain(_)
            | AdminRequest::RestartDevice { .. }
            | AdminRequest::KillDevice { .. }
            | AdminRequest::WorkflowAdd(_)
            | AdminRequest::Unblock { .. }
            | AdminRequest::PipelineAdd(_)
            | AdminRequest::PipelineRun { .. }
            | AdminRequest::PipelineCancel(_)
            | AdminRequest::PipelineRerun(_)
    )
}
