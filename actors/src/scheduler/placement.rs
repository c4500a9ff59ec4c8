//! Placement: which pending task goes to which device, by capability,
//! preference and load.

use super::*;

/// How good a device is for a task; higher is better: not on the node that
/// just lost it, not the device that just failed it, preference score, free
/// queue, node load, least recently used.
pub(super) type PlacementKey = (bool, bool, i64, u32, u64, u64);

/// Whether `caps` satisfies every requirement.
pub fn caps_match(require: &Capabilities, caps: &Capabilities) -> bool {
    require.iter().all(|(k, want)| match (want, caps.get(k)) {
        (CapValue::List(want), Some(CapValue::List(have))) => want.iter().all(|w| have.contains(w)),
        (CapValue::Str(want), Some(CapValue::List(have))) => have.contains(want),
        (want, Some(have)) => want == have,
        (_, None) => false,
    })
}

pub(super) fn cap_set(v: Option<&CapValue>) -> bool {
    match v {
        Some(CapValue::Bool(b)) => *b,
        Some(CapValue::Int(i)) => *i != 0,
        Some(CapValue::Str(s)) => !s.is_empty(),
        Some(CapValue::List(l)) => !l.is_empty(),
        None => false,
    }
}

pub(super) fn score(prefer: &BTreeMap<String, i64>, caps: &Capabilities) -> i64 {
    // Saturating: weights from the network must not wrap a good device
    // into the worst one.
    prefer
        .iter()
        .filter(|(k, _)| cap_set(caps.get(*k)))
        .fold(0i64, |acc, (_, w)| acc.saturating_add(*w))
}

pub(super) fn render_cap(v: &CapValue) -> String {
    match v {
        CapValue::Bool(b) => b.to_string(),
        CapValue::Int(i) => i.to_string(),
        CapValue::Str(s) => format!("\"{s}\""),
        CapValue::List(l) => format!("{l:?}"),
    }
}

impl Scheduler {
    pub(super) fn wake(&mut self, now_ms: u64) {
        for &s in &self.active {
            let sess = &mut self.sessions[s];
            while let Some(&(at, t)) = sess.waiting.first() {
                if at > now_ms {
                    break;
                }
                sess.waiting.pop_first();
                sess.tasks.get_mut(t).state = TaskState::Pending;
                sess.pending.push_back(t);
            }
        }
    }

    /// Give pending tasks to devices while there is capacity: sessions of
    /// higher (effective) priority first, round-robin among equals. At most
    /// [`Scheduler::place_budget`] of them: what is left waits for the next
    /// event ([`SchedEvent::Place`]).
    pub(super) fn place(&mut self, now_ms: u64, out: &mut Vec<SchedCommand>) {
        self.place_more = false;
        let n = self.active.len();
        if n == 0 {
            return;
        }
        let mut budget = self.place_budget.unwrap_or(usize::MAX);
        let mut blocked = vec![false; n];
        let mut placed = vec![false; n];
        // Positions in `active` by effective priority, highest first; a
        // stable sort keeps submission order among equals.
        let mut order: Vec<usize> = (0..n).collect();
        let prio: Vec<i64> = self
            .active
            .iter()
            .map(|&s| self.effective_priority(s, now_ms))
            .collect();
        if prio.iter().any(|&p| p != prio[0]) {
            order.sort_by_key(|&i| std::cmp::Reverse(prio[i]));
        }
        let mut level_start = 0;
        while level_start < n && budget > 0 {
            let level = prio[order[level_start]];
            let level_end = order[level_start..]
                .iter()
                .position(|&i| prio[i] != level)
                .map_or(n, |p| level_start + p);
            let members = &order[level_start..level_end];
            self.place_level(members, &mut blocked, &mut placed, &mut budget, now_ms, out);
            level_start = level_end;
        }
        if budget == 0 {
            self.place_more = self.active.iter().any(|&s| {
                let sess = &self.sessions[s];
                !sess.pending.is_empty() || !sess.reserved.is_empty()
            }) && self.index.any_open();
        }
        // Who waited for devices this time ages (`PRIORITY_AGING_MS`); who
        // got one is back to its own priority.
        for (i, &s) in self.active.iter().enumerate() {
            let sess = &mut self.sessions[s];
            let wants = !sess.pending.is_empty() || !sess.reserved.is_empty();
            let capped = sess.paused
                || sess
                    .spec
                    .max_devices
                    .is_some_and(|m| sess.running >= u64::from(m));
            if placed[i] || !wants || capped || sess.state.is_final() {
                sess.starved_since = None;
            } else if budget > 0 {
                // (A slice that ran out of budget says nothing of devices.)
                sess.starved_since.get_or_insert(now_ms);
            }
        }
    }

    /// A session's priority, raised one level per [`PRIORITY_AGING_MS`] it
    /// has waited for devices.
    pub(super) fn effective_priority(&self, s: SessionIdx, now_ms: u64) -> i64 {
        let sess = &self.sessions[s];
        let aged = sess
            .starved_since
            .map_or(0, |since| now_ms.saturating_sub(since) / PRIORITY_AGING_MS);
        i64::from(sess.spec.priority).saturating_add(aged as i64)
    }

    /// Round-robin over the sessions at `members` (positions in `active`,
    /// all of one priority) while they place.
    fn place_level(
        &mut self,
        members: &[usize],
        blocked: &mut [bool],
        placed: &mut [bool],
        budget: &mut usize,
        now_ms: u64,
        out: &mut Vec<SchedCommand>,
    ) {
        let m = members.len();
        loop {
            if !self.index.any_open() || *budget == 0 {
                return;
            }
            let mut progressed = false;
            for k in 0..m {
                let i = members[self.rr.wrapping_add(k) % m];
                let s = self.active[i];
                if blocked[i] || self.sessions[s].state.is_final() {
                    continue;
                }
                let sess = &mut self.sessions[s];
                if sess.pending.is_empty() && sess.reserved.is_empty() {
                    blocked[i] = true;
                    continue;
                }
                if sess.paused {
                    blocked[i] = true;
                    sess.waiting_reason = Some("paused by an operator".into());
                    continue;
                }
                if let Some(max) = sess.spec.max_devices {
                    if sess.running >= u64::from(max) {
                        blocked[i] = true;
                        sess.waiting_reason =
                            Some(format!("max_devices = {max}: that many attempts in flight"));
                        continue;
                    }
                }
                match self.next_placement(s) {
                    Some((t, node, d, from_reserved)) => {
                        let sess = &mut self.sessions[s];
                        if from_reserved {
                            sess.reserved.pop_front();
                        } else {
                            sess.pending.pop_front();
                        }
                        sess.waiting_reason = None;
                        let reserved = from_reserved && self.reserve_node.as_ref() == Some(&node);
                        if let Some(cmd) = self.assign(s, t, &node, d, reserved, now_ms) {
                            out.push(cmd);
                        }
                        placed[i] = true;
                        progressed = true;
                        *budget -= 1;
                        if *budget == 0 {
                            break;
                        }
                    }
                    None => {
                        blocked[i] = true;
                        self.sessions[s].waiting_reason = Some(self.why_waiting(s));
                    }
                }
            }
            self.rr = self.rr.wrapping_add(1);
            if !progressed {
                return;
            }
        }
    }

    pub(super) fn why_waiting(&self, s: SessionIdx) -> String {
        let spec = &self.sessions[s].spec;
        let matching = self.index.any_matches(&spec.require);
        let sess = &self.sessions[s];
        if matching && !(sess.blocked_devices.is_empty() && sess.blocked_nodes.is_empty()) {
            format!(
                "all matching devices are busy or blocklisted for this session ({} blocklisted: see the manifest's `blocklisted`)",
                sess.blocklisted.len()
            )
        } else if matching {
            "all matching devices are busy".into()
        } else if spec.require.is_empty() {
            "no healthy worker with devices".into()
        } else {
            let req: Vec<String> = spec
                .require
                .iter()
                .map(|(k, v)| format!("{k} = {}", render_cap(v)))
                .collect();
            format!("no healthy device matches `{}`", req.join(", "))
        }
    }

    /// The next task of session `s` to place, where, and whether it was
    /// reserved: lost work first, anywhere (the session waits for it); then
    /// a reserved task on the reserve node; then the first pending task
    /// anywhere; then (nothing else pending) a reserved task anywhere.
    pub(super) fn next_placement(&self, s: SessionIdx) -> Option<(TaskIdx, Arc<str>, usize, bool)> {
        let sess = &self.sessions[s];
        if let Some(t) = sess.pending.front() {
            if sess.tasks.touched.get(&t).is_some_and(|t| t.losses > 0) {
                return self.pick(s, t).map(|(n, d)| (t, n, d, false));
            }
        }
        if let (Some(&t), Some(node)) = (
            sess.reserved.front(),
            self.reserve_node.as_ref().and_then(|r| self.nodes.get(r)),
        ) {
            let mut best = None;
            self.best_on(s, t, node, &mut best);
            if let Some((_, n, d)) = best {
                return Some((t, n, d, true));
            }
        }
        if let Some(t) = sess.pending.front() {
            return self.pick(s, t).map(|(n, d)| (t, n, d, false));
        }
        let &t = sess.reserved.front()?;
        self.pick(s, t).map(|(n, d)| (t, n, d, true))
    }

    /// The best device for task `t` of session `s`, from the index; in
    /// unit tests checked against [`Self::pick_by_scan`].
    pub(super) fn pick(&self, s: SessionIdx, t: TaskIdx) -> Option<(Arc<str>, usize)> {
        if self.scan_placement {
            return self.pick_by_scan(s, t);
        }
        let picked = self.pick_indexed(s, t);
        #[cfg(test)]
        assert_eq!(
            picked,
            self.pick_by_scan(s, t),
            "the index and the brute force disagree"
        );
        picked
    }

    fn pick_indexed(&self, s: SessionIdx, t: TaskIdx) -> Option<(Arc<str>, usize)> {
        let sess = &self.sessions[s];
        let task = sess.tasks.touched.get(&t);
        let lost = task.and_then(|t| t.lost_on.as_deref());
        let avoid = task.and_then(|t| t.avoid.as_ref()).and_then(|(n, d)| {
            let i = *self.nodes.get(n)?.by_id.get(d)?;
            Some((&**n, i))
        });
        let skip = |name: &str, d: Option<usize>| {
            (!sess.blocked_nodes.is_empty() || !sess.blocked_devices.is_empty())
                && self.nodes.get(name).is_some_and(|n| sess.blocks(n, d))
        };
        if let Some(found) = self.index.best(
            &sess.spec.require,
            &sess.spec.prefer,
            lost,
            avoid,
            sess.depth(),
            &skip,
        ) {
            return Some(found);
        }
        // Whatever is left is on the node that lost the task or is the
        // device that failed it: at most two nodes, looked at in full.
        let mut names: Vec<&str> = lost.into_iter().chain(avoid.map(|(n, _)| n)).collect();
        names.sort_unstable();
        names.dedup();
        let mut best = None;
        for name in names {
            if let Some(node) = self.nodes.get(name) {
                self.best_on(s, t, node, &mut best);
            }
        }
        best.map(|(_, n, i)| (n, i))
    }

    /// For invariant checks: for the next task of every running session
    /// (lost work, reserved or pending), the index picks what looking at
    /// every device picks. `Err` names the first disagreement.
    pub fn check_placement_index(&self) -> Result<(), String> {
        for &s in &self.active {
            let sess = &self.sessions[s];
            for t in sess
                .pending
                .front()
                .into_iter()
                .chain(sess.reserved.front().copied())
            {
                let (indexed, scanned) = (self.pick_indexed(s, t), self.pick_by_scan(s, t));
                if indexed != scanned {
                    return Err(format!(
                        "session `{}` task {}: the index picks {indexed:?}, every device looked at picks {scanned:?}",
                        sess.id,
                        t.wire()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The best device for task `t` of session `s`, by looking at every
    /// device: the reference the index must agree with.
    pub(super) fn pick_by_scan(&self, s: SessionIdx, t: TaskIdx) -> Option<(Arc<str>, usize)> {
        let mut best = None;
        for node in self.nodes.values() {
            self.best_on(s, t, node, &mut best);
        }
        best.map(|(_, n, i)| (n, i))
    }

    /// Replace `best` with a device of `node` that is better for task `t`
    /// of session `s`, if there is one.
    pub(super) fn best_on(
        &self,
        s: SessionIdx,
        t: TaskIdx,
        node: &Node,
        best: &mut Option<(PlacementKey, Arc<str>, usize)>,
    ) {
        let sess = &self.sessions[s];
        // Only a task in play has a failed device or a lost node to avoid.
        let task = sess.tasks.touched.get(&t);
        if !node.accepting
            || node.drained
            || node.resume_by.is_some()
            || node.inflight >= node.cap()
        {
            return;
        }
        let load = u64::from(node.inflight) * 1000 / u64::from(node.cap().max(1));
        let lost_here = task.is_some_and(|t| t.lost_on.as_ref() == Some(&node.name));
        let depth = sess.depth();
        if sess.blocks(node, None) {
            return;
        }
        for (i, d) in node.devices.iter().enumerate() {
            if !d.usable()
                || d.inflight > depth
                || !caps_match(&sess.spec.require, &d.caps)
                || sess.blocks(node, Some(i))
            {
                continue;
            }
            let avoided = task
                .and_then(|t| t.avoid.as_ref())
                .is_some_and(|(an, ad)| *an == node.name && *ad == d.id);
            // Higher is better: not the node that lost it, not the failed
            // device, preference, idle, less load, least recently used.
            let key = (
                !lost_here,
                !avoided,
                score(&sess.spec.prefer, &d.caps),
                u32::MAX - d.inflight,
                u64::MAX - load,
                u64::MAX - d.last_used,
            );
            if best.as_ref().is_none_or(|(b, _, _)| key > *b) {
                *best = Some((key, node.name.clone(), i));
            }
        }
    }

    pub(super) fn assign(
        &mut self,
        s: SessionIdx,
        t: TaskIdx,
        node: &Arc<str>,
        d: usize,
        reserved: bool,
        now_ms: u64,
    ) -> Option<SchedCommand> {
        let size = self.sessions[s].spec.id_chunk_size;
        let Some(ids) = self.ids.allocate(size) else {
            fail_task(
                &mut self.sessions[s],
                t,
                "the 64-bit ID space is exhausted".into(),
            );
            return None;
        };
        self.use_counter += 1;
        let n = self.nodes.get_mut(node).expect("picked from nodes");
        n.inflight += 1;
        n.running.insert((s, t));
        let dev = &mut n.devices[d];
        dev.inflight += 1;
        dev.last_used = self.use_counter;
        let device = dev.id.clone();
        self.index.device(n, d);
        let sess = &mut self.sessions[s];
        sess.running += 1;
        let task = sess.tasks.get_mut(t);
        sess.max_attempt = sess.max_attempt.max(task.attempt);
        // Queued behind one attempt at most, then its own timeout, then grace.
        let deadline = now_ms + 2 * sess.spec.timeout_ms + self.grace_ms;
        self.deadlines.insert((deadline, s, t, task.attempt));
        task.state = TaskState::Running(Box::new(Running {
            node: node.clone(),
            device: device.clone(),
            deadline,
            ids,
            started_ms: now_ms,
            done: 0,
            last_id: None,
            outputs: Vec::new(),
            steps: Vec::new(),
        }));
        let items = match &sess.spec.items {
            Some(items) => {
                let base = sess.spec.frames.start;
                let lo = (task.frames.start - base) as usize;
                let hi = (task.frames.end - base) as usize;
                items
                    .get(lo..hi)
                    .map(<[String]>::to_vec)
                    .unwrap_or_default()
            }
            None => Vec::new(),
        };
        Some(SchedCommand::Assign {
            node: node.to_string(),
            reserved,
            task: TaskSpec {
                session: sess.id.clone(),
                session_name: sess.spec.name.clone(),
                task: t.wire(),
                attempt: task.attempt,
                frames: task.frames,
                ids,
                device: device.to_string(),
                executor: sess.spec.executor.clone(),
                timeout_ms: sess.spec.timeout_ms,
                items,
                correlation_id: sess
                    .spec
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| sess.id.clone()),
            },
        })
    }
}
