//! Worker membership and failure detection (docs/design/architecture.md), as pure logic.
//!
//! The Master actor feeds [`MemberEvent`]s with the current time in milliseconds
//! and carries out the [`MemberCommand`]s it gets back. No clock, no I/O: tests
//! drive it with a fake clock.

use std::collections::{BTreeMap, VecDeque};

use crate::protocol::{
    ClusterStatus, DeviceInfo, DownReason, FailureRecord, Heartbeat, MemberState, Register,
    ToWorker, WorkerStatus, WorkerView, PROTOCOL_VERSION,
};

/// How many failure records `status` keeps.
const FAILURE_HISTORY: usize = 50;

/// Detection parameters, from `[cluster]` in cluster.toml.
#[derive(Debug, Clone, Copy)]
pub struct DetectorConfig {
    pub heartbeat_ms: u64,
    pub missed_heartbeats: u32,
}

impl DetectorConfig {
    /// Silence after which a healthy worker is declared `heartbeat_timeout`.
    pub fn timeout_ms(&self) -> u64 {
        self.heartbeat_ms * u64::from(self.missed_heartbeats)
    }

    /// How often the master checks heartbeat deadlines.
    pub fn tick_ms(&self) -> u64 {
        (self.heartbeat_ms / 4).clamp(10, 250)
    }

    /// A gap between two ticks longer than one tick by at least this much
    /// means the master itself did not run (stopped, swapped out, a VM
    /// stall, or a handler that blocked): its clock moved, but it read none
    /// of the heartbeats waiting for it.
    pub fn stall_ms(&self) -> u64 {
        self.heartbeat_ms
    }
}

/// Something that happened, fed to [`Membership::on_event`].
#[derive(Debug, Clone)]
pub enum MemberEvent {
    Register(Register),
    Heartbeat(Heartbeat),
    Unregister {
        node: String,
        epoch: u64,
    },
    /// The connection to the worker registered under `epoch` died (monitor termination).
    NodeDown {
        node: String,
        epoch: u64,
    },
    /// Periodic check of heartbeat deadlines, every [`DetectorConfig::tick_ms`].
    Tick,
    /// The same, for a tick its timer queued at `sent_ms` (the master's
    /// clock): everything queued before it has been read, so silence is
    /// judged at `sent_ms`, not when the tick is read. A master whose
    /// mailbox is seconds behind (a flood of results) does not take the
    /// heartbeats still queued for silence.
    QueuedTick {
        sent_ms: u64,
    },
}

/// What the master must do.
// `Send` carries a whole message (an assignment is the largest); commands
// live for one event and are few: boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum MemberCommand {
    /// Send `msg` to the worker actor of `node`.
    Send { node: String, msg: ToWorker },
    /// Watch the worker actor of `node` (monitor its remote stand-in) for `epoch`.
    Watch { node: String, epoch: u64 },
    /// `node` joined (or rejoined) under `epoch`.
    Up { node: String, epoch: u64 },
    /// `node` takes new work or not (its heartbeat status changed).
    Accepting { node: String, accepting: bool },
    /// `node`, registered under `epoch`, left the healthy state: its in-flight work is lost.
    Down {
        node: String,
        epoch: u64,
        reason: DownReason,
    },
    /// The master did not run for `ms` before this tick: every healthy
    /// worker's deadline moved by as much, so that no worker is judged
    /// before the master read what it sent meanwhile. Deadlines measured
    /// on the master's clock elsewhere must move too.
    Stalled { ms: u64 },
}

#[derive(Debug, Clone)]
struct Member {
    /// Its registration, but its devices: they are in `devices`.
    info: Register,
    devices: std::sync::Arc<[DeviceInfo]>,
    epoch: u64,
    state: MemberState,
    reason: Option<DownReason>,
    last_seen_ms: u64,
    last_seq: u64,
    status: WorkerStatus,
    error: Option<String>,
    queue_ratio: f32,
    gpu_usage: f32,
    last_frame: Option<u64>,
    active_tasks: u32,
    registrations: u64,
}

/// The master's worker table.
#[derive(Debug)]
pub struct Membership {
    cfg: DetectorConfig,
    members: BTreeMap<String, Member>,
    last_epoch: u64,
    failures: VecDeque<FailureRecord>,
    /// When the last tick was handled (the master's start before the first).
    last_tick_ms: u64,
}

impl Membership {
    /// `epoch_floor` seeds epochs so that they grow across master restarts
    /// (the master passes its start time in unix milliseconds). The clock of
    /// every event is the master's milliseconds since it started: a stall
    /// before the first tick is measured from 0.
    pub fn new(cfg: DetectorConfig, epoch_floor: u64) -> Self {
        Self {
            cfg,
            members: BTreeMap::new(),
            last_epoch: epoch_floor,
            failures: VecDeque::new(),
            last_tick_ms: 0,
        }
    }

    #[cfg(test)]
    fn config(&self) -> DetectorConfig {
        self.cfg
    }

    pub fn on_event(&mut self, ev: MemberEvent, now_ms: u64) -> Vec<MemberCommand> {
        match ev {
            MemberEvent::Register(reg) => self.on_register(reg, now_ms),
            MemberEvent::Heartbeat(hb) => self.on_heartbeat(hb, now_ms),
            MemberEvent::Unregister { node, epoch } => self.on_unregister(node, epoch, now_ms),
            MemberEvent::NodeDown { node, epoch } => {
                self.mark_down(&node, epoch, DownReason::NodeDown, now_ms)
            }
            MemberEvent::Tick => self.on_tick(now_ms, now_ms),
            MemberEvent::QueuedTick { sent_ms } => self.on_tick(now_ms, sent_ms.min(now_ms)),
        }
    }

    fn on_register(&mut self, mut reg: Register, now_ms: u64) -> Vec<MemberCommand> {
        let node = reg.node.clone();
        if reg.protocol_version != PROTOCOL_VERSION {
            return vec![MemberCommand::Send {
                node,
                msg: ToWorker::Refused {
                    reason: format!(
                        "protocol version mismatch: worker speaks `{}`, master speaks `{}`",
                        reg.protocol_version, PROTOCOL_VERSION
                    ),
                },
            }];
        }
        let mut cmds = Vec::new();
        let mut registrations = 1;
        if let Some(m) = self.members.get(&node) {
            // A retransmission of the registration we already accepted: same answer.
            if m.state == MemberState::Healthy
                && m.info.instance == reg.instance
                && m.info.attempt == reg.attempt
            {
                return vec![MemberCommand::Send {
                    node,
                    msg: ToWorker::Registered {
                        epoch: m.epoch,
                        master: String::new(),
                    },
                }];
            }
            registrations = m.registrations + 1;
            // A new registration while the old one looked healthy: the old
            // incarnation is gone (restart or lost connection).
            let old_epoch = m.epoch;
            cmds.extend(self.mark_down(&node, old_epoch, DownReason::NodeDown, now_ms));
        }
        self.last_epoch += 1;
        let epoch = self.last_epoch;
        self.members.insert(
            node.clone(),
            Member {
                devices: std::mem::take(&mut reg.devices).into(),
                info: reg,
                epoch,
                state: MemberState::Healthy,
                reason: None,
                last_seen_ms: now_ms,
                last_seq: 0,
                status: WorkerStatus::Ok,
                error: None,
                queue_ratio: 0.0,
                gpu_usage: 0.0,
                last_frame: None,
                active_tasks: 0,
                registrations,
            },
        );
        cmds.push(MemberCommand::Watch {
            node: node.clone(),
            epoch,
        });
        cmds.push(MemberCommand::Send {
            node: node.clone(),
            msg: ToWorker::Registered {
                epoch,
                master: String::new(),
            },
        });
        cmds.push(MemberCommand::Up { node, epoch });
        cmds
    }

    fn on_heartbeat(&mut self, hb: Heartbeat, now_ms: u64) -> Vec<MemberCommand> {
        match self.members.get_mut(&hb.node) {
            Some(m) if m.epoch == hb.epoch && m.state == MemberState::Healthy => {
                let mut cmds = Vec::new();
                if hb.seq >= m.last_seq {
                    let was = m.status == WorkerStatus::Ok;
                    let is = hb.status == WorkerStatus::Ok;
                    if was != is {
                        cmds.push(MemberCommand::Accepting {
                            node: hb.node.clone(),
                            accepting: is,
                        });
                    }
                    m.last_seq = hb.seq;
                    m.last_seen_ms = now_ms;
                    m.status = hb.status;
                    m.error = hb.error;
                    m.queue_ratio = hb.queue_ratio;
                    m.gpu_usage = if hb.gpu_usage.is_finite() {
                        hb.gpu_usage.clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                    m.last_frame = hb.last_frame.or(m.last_frame);
                    m.active_tasks = hb.active_tasks;
                }
                cmds
            }
            Some(m) if hb.epoch < m.epoch || m.state != MemberState::Healthy => {
                // Fenced: the worker was declared dead (or replaced) since it got this epoch.
                vec![MemberCommand::Send {
                    node: hb.node,
                    msg: ToWorker::Reregister {
                        reason: format!("epoch `{}` is no longer current", hb.epoch),
                    },
                }]
            }
            _ => vec![MemberCommand::Send {
                node: hb.node,
                msg: ToWorker::Reregister {
                    reason: "unknown to this master".to_string(),
                },
            }],
        }
    }

    fn on_unregister(&mut self, node: String, epoch: u64, now_ms: u64) -> Vec<MemberCommand> {
        let mut cmds = self.mark_down(&node, epoch, DownReason::Unregistered, now_ms);
        cmds.push(MemberCommand::Send {
            node,
            msg: ToWorker::Unregistered,
        });
        cmds
    }

    /// `judged_ms`: the time up to which every heartbeat sent has been read.
    fn on_tick(&mut self, now_ms: u64, judged_ms: u64) -> Vec<MemberCommand> {
        let mut cmds = Vec::new();
        // Silence counts only while the master runs: after a stall the
        // heartbeats that arrived meanwhile are still in the mailbox, behind
        // this tick.
        let gap = now_ms.saturating_sub(self.last_tick_ms);
        self.last_tick_ms = now_ms;
        let stalled = gap.saturating_sub(self.cfg.tick_ms());
        if stalled >= self.cfg.stall_ms() {
            for m in self.members.values_mut() {
                if m.state == MemberState::Healthy {
                    m.last_seen_ms = m.last_seen_ms.saturating_add(stalled).min(now_ms);
                }
            }
            cmds.push(MemberCommand::Stalled { ms: stalled });
        }
        let timeout = self.cfg.timeout_ms();
        let late: Vec<(String, u64)> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.state == MemberState::Healthy
                    && judged_ms.saturating_sub(m.last_seen_ms) > timeout
            })
            .map(|(n, m)| (n.clone(), m.epoch))
            .collect();
        for (n, e) in late {
            cmds.extend(self.mark_down(&n, e, DownReason::HeartbeatTimeout, now_ms));
        }
        cmds
    }

    fn mark_down(
        &mut self,
        node: &str,
        epoch: u64,
        reason: DownReason,
        now_ms: u64,
    ) -> Vec<MemberCommand> {
        let Some(m) = self.members.get_mut(node) else {
            return Vec::new();
        };
        if m.epoch != epoch || m.state != MemberState::Healthy {
            return Vec::new();
        }
        m.state = if reason == DownReason::Unregistered {
            MemberState::Unregistered
        } else {
            MemberState::Unhealthy
        };
        m.reason = Some(reason);
        if reason.is_failure() {
            if self.failures.len() == FAILURE_HISTORY {
                self.failures.pop_front();
            }
            self.failures.push_back(FailureRecord {
                node: node.to_string(),
                epoch,
                reason,
                at_ms: now_ms,
            });
        }
        vec![MemberCommand::Down {
            node: node.to_string(),
            epoch,
            reason,
        }]
    }

    /// What `node` registered with.
    /// Highest epoch granted so far.
    pub fn last_epoch(&self) -> u64 {
        self.last_epoch
    }

    /// The registration of `node` (its devices apart, see [`Self::devices`]).
    pub fn registration(&self, node: &str) -> Option<&Register> {
        self.members.get(node).map(|m| &m.info)
    }

    /// The devices `node` registered with.
    pub fn devices(&self, node: &str) -> Option<std::sync::Arc<[DeviceInfo]>> {
        self.members.get(node).map(|m| m.devices.clone())
    }

    /// `node`'s devices changed (a [`crate::protocol::DeviceReport`] of
    /// its current `epoch`): `false` when that is not its epoch.
    pub fn set_devices(&mut self, node: &str, epoch: u64, devices: Vec<DeviceInfo>) -> bool {
        match self.members.get_mut(node) {
            Some(m) if m.epoch == epoch && m.state == MemberState::Healthy => {
                m.devices = devices.into();
                true
            }
            _ => false,
        }
    }

    /// State of `node`, if it ever registered.
    pub fn state_of(&self, node: &str) -> Option<(MemberState, Option<DownReason>, u64)> {
        self.members.get(node).map(|m| (m.state, m.reason, m.epoch))
    }

    pub fn count(&self, state: MemberState) -> usize {
        self.members.values().filter(|m| m.state == state).count()
    }

    /// What the per-worker gauges show: (node, heartbeat age, queue ratio,
    /// attempts in its devices' mailboxes), without copying its devices.
    pub fn gauges(&self, now_ms: u64) -> impl Iterator<Item = (&str, u64, f32, u32)> {
        self.members.iter().map(move |(node, m)| {
            (
                node.as_str(),
                now_ms.saturating_sub(m.last_seen_ms),
                m.queue_ratio,
                m.active_tasks,
            )
        })
    }

    pub fn views(&self, now_ms: u64) -> Vec<WorkerView> {
        self.members
            .iter()
            .map(|(node, m)| WorkerView {
                node: node.clone(),
                advertise: m.info.advertise.clone(),
                state: m.state,
                reason: m.reason,
                epoch: m.epoch,
                heartbeat_age_ms: now_ms.saturating_sub(m.last_seen_ms),
                status: m.status,
                error: m.error.clone(),
                queue_ratio: m.queue_ratio,
                gpu_usage: m.gpu_usage,
                last_frame: m.last_frame,
                active_tasks: m.active_tasks,
                max_concurrency: m.info.max_concurrency,
                capabilities: m.info.capabilities.clone(),
                devices: m.devices.clone(),
                registrations: m.registrations,
                data: m.info.data.clone(),
            })
            .collect()
    }

    pub fn status(&self, master: &str, now_ms: u64) -> ClusterStatus {
        let healthy = self
            .members
            .values()
            .filter(|m| m.state == MemberState::Healthy);
        let healthy_active = healthy.clone().filter(|m| m.active_tasks > 0).count() as u32;
        ClusterStatus {
            master: master.to_string(),
            protocol_version: PROTOCOL_VERSION,
            uptime_ms: now_ms,
            workers_total: self.members.len() as u32,
            workers_healthy: self.count(MemberState::Healthy) as u32,
            workers_unhealthy: self.count(MemberState::Unhealthy) as u32,
            workers_unregistered: self.count(MemberState::Unregistered) as u32,
            devices_total: healthy.clone().map(|m| m.devices.len() as u32).sum(),
            queue_depth_summary: healthy.map(|m| m.queue_ratio).fold(0.0, f32::max),
            recent_failures: self.failures.iter().cloned().collect(),
            sessions: Vec::new(),
            workers_active: healthy_active,
            workers_idle: self.count(MemberState::Healthy) as u32 - healthy_active,
            recent_failovers: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DeviceInfo;

    const HB: u64 = 1000;

    fn membership() -> Membership {
        Membership::new(
            DetectorConfig {
                heartbeat_ms: HB,
                missed_heartbeats: 3,
            },
            100,
        )
    }

    fn reg(node: &str, instance: u64, attempt: u64) -> Register {
        Register {
            protocol_version: PROTOCOL_VERSION,
            node: node.into(),
            advertise: "127.0.0.1:1".into(),
            capabilities: Default::default(),
            devices: vec![DeviceInfo {
                id: "d0".into(),
                handle: "h".into(),
                capabilities: Default::default(),
            }],
            max_concurrency: 4,
            instance,
            attempt,
            held: vec![],
            data: None,
        }
    }

    fn hb(node: &str, epoch: u64, seq: u64) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            epoch,
            seq,
            queue_ratio: 0.25,
            gpu_usage: 0.0,
            active_tasks: 0,
            last_frame: None,
            status: WorkerStatus::Ok,
            error: None,
        }
    }

    fn registered_epoch(cmds: &[MemberCommand]) -> u64 {
        cmds.iter()
            .find_map(|c| match c {
                MemberCommand::Send {
                    msg: ToWorker::Registered { epoch, .. },
                    ..
                } => Some(*epoch),
                _ => None,
            })
            .expect("a Registered reply")
    }

    fn downs(cmds: &[MemberCommand]) -> Vec<(String, DownReason)> {
        cmds.iter()
            .filter_map(|c| match c {
                MemberCommand::Down { node, reason, .. } => Some((node.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn registration_is_acknowledged_watched_and_epochs_grow() {
        let mut m = membership();
        let c = m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 0);
        let e1 = registered_epoch(&c);
        assert!(e1 > 100, "epochs start above the floor");
        assert!(c.contains(&MemberCommand::Watch {
            node: "w1".into(),
            epoch: e1
        }));
        let c = m.on_event(MemberEvent::Register(reg("w2", 8, 1)), 0);
        assert!(registered_epoch(&c) > e1);
        assert_eq!(m.count(MemberState::Healthy), 2);
        assert_eq!(m.status("m", 0).devices_total, 2);
    }

    #[test]
    fn protocol_mismatch_is_refused_with_both_versions_named() {
        let mut m = membership();
        let mut r = reg("w1", 1, 1);
        r.protocol_version = PROTOCOL_VERSION + 1;
        let c = m.on_event(MemberEvent::Register(r), 0);
        match &c[..] {
            [MemberCommand::Send {
                msg: ToWorker::Refused { reason },
                ..
            }] => {
                assert!(
                    reason.contains(&format!("`{}`", PROTOCOL_VERSION + 1)),
                    "{reason}"
                );
                assert!(
                    reason.contains(&format!("`{PROTOCOL_VERSION}`")),
                    "{reason}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(m.state_of("w1"), None);
    }

    #[test]
    fn retransmitted_registration_gets_the_same_epoch_and_no_failure() {
        let mut m = membership();
        let e = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 0));
        let c = m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 10);
        assert_eq!(registered_epoch(&c), e);
        assert!(downs(&c).is_empty());
    }

    #[test]
    fn heartbeats_keep_a_worker_healthy() {
        let mut m = membership();
        let e = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 0));
        for t in 1..=20 {
            assert!(m
                .on_event(MemberEvent::Heartbeat(hb("w1", e, t)), t * HB)
                .is_empty());
            assert!(downs(&m.on_event(MemberEvent::Tick, t * HB + HB / 2)).is_empty());
        }
        assert_eq!(m.state_of("w1").unwrap().0, MemberState::Healthy);
    }

    #[test]
    fn silence_past_missed_heartbeats_is_a_heartbeat_timeout() {
        let mut m = membership();
        let e = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 0));
        m.on_event(MemberEvent::Heartbeat(hb("w1", e, 1)), 1000);
        // exactly 3 heartbeats late: not yet (the master ticks all along)
        assert!(downs(&ticks(&mut m, 0, 4000)).is_empty());
        let c = m.on_event(MemberEvent::Tick, 4001);
        assert_eq!(downs(&c), vec![("w1".into(), DownReason::HeartbeatTimeout)]);
        // declared once only
        assert!(downs(&ticks(&mut m, 4001, 9000)).is_empty());
        assert_eq!(m.status("m", 9000).recent_failures.len(), 1);
    }

    /// A master 4.8× slower than its mailbox fills: every message, sent at
    /// `t`, is read at `4.8 t` (two ticks read 1.2 s apart: not a stall). Heartbeats every second until `last_hb`,
    /// ticks every `tick_ms`, in the order they were sent; `queued`: ticks
    /// carry their send time. The downs, with the send time of the tick
    /// that gave each.
    fn behind(queued: bool, last_hb: u64, until: u64) -> Vec<(u64, DownReason)> {
        let read = |sent: u64| sent * 24 / 5;
        let mut m = membership();
        let e = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 0));
        let step = m.config().tick_ms();
        let mut out = Vec::new();
        for sent in (step..=until).step_by(step as usize) {
            if sent % HB == 0 && sent <= last_hb {
                m.on_event(MemberEvent::Heartbeat(hb("w1", e, sent / HB)), read(sent));
            }
            let tick = if queued {
                MemberEvent::QueuedTick { sent_ms: sent }
            } else {
                MemberEvent::Tick
            };
            for (_, r) in downs(&m.on_event(tick, read(sent))) {
                out.push((sent, r));
            }
        }
        out
    }

    #[test]
    fn a_master_behind_its_mailbox_judges_silence_by_when_ticks_were_sent() {
        // Judged when read, a worker that heartbeats every second looks
        // silent for 4.8 s between two of them.
        assert!(!behind(false, u64::MAX, 60_000).is_empty());
        // Judged when sent: never.
        assert_eq!(behind(true, u64::MAX, 60_000), vec![]);
        // One that stops is still declared, once the mailbox has shown
        // that it sent nothing: later by as much as the mailbox is behind.
        let d = behind(true, 10_000, 120_000);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].1, DownReason::HeartbeatTimeout);
        assert!(d[0].0 > 48_000 + 3 * HB, "{d:?}");
    }

    /// Ticks every `tick_ms` from `from` to `to` (inclusive); every command they gave.
    fn ticks(m: &mut Membership, from: u64, to: u64) -> Vec<MemberCommand> {
        let step = m.config().tick_ms();
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            out.extend(m.on_event(MemberEvent::Tick, t));
            t += step;
        }
        out
    }

    #[test]
    fn a_stalled_master_judges_nobody_before_reading_what_they_sent() {
        for pause in [5_000, 20_000] {
            let mut m = membership();
            let e1 = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 1, 1)), 0));
            let e2 = registered_epoch(&m.on_event(MemberEvent::Register(reg("w2", 2, 1)), 0));
            // Both heartbeat every second while the master runs.
            for s in 1..=3 {
                m.on_event(MemberEvent::Heartbeat(hb("w1", e1, s)), s * HB);
                m.on_event(MemberEvent::Heartbeat(hb("w2", e2, s)), s * HB);
                assert!(downs(&ticks(&mut m, s * HB - 750, s * HB)).is_empty());
            }
            // The master stops at 3.1 s; the first thing it handles when it runs
            // again is a tick, before the heartbeats waiting in its mailbox.
            let back = 3_100 + pause;
            let c = m.on_event(MemberEvent::Tick, back);
            assert!(downs(&c).is_empty(), "pause {pause}: {c:?}");
            assert!(
                c.iter()
                    .any(|c| matches!(c, MemberCommand::Stalled { ms } if *ms + 1_000 >= pause)),
                "the stall is reported: {c:?}"
            );
            // Then the waiting heartbeats of w1; w2 really died during the pause.
            m.on_event(MemberEvent::Heartbeat(hb("w1", e1, 4)), back + 1);
            let step = m.config().tick_ms();
            let mut w2_down = None;
            for k in 0..40 {
                let t = back + 1 + k * step;
                if k % 4 == 0 {
                    m.on_event(MemberEvent::Heartbeat(hb("w1", e1, 5 + k)), t);
                }
                let d = downs(&m.on_event(MemberEvent::Tick, t));
                assert!(
                    d.iter().all(|(n, _)| n == "w2"),
                    "only the dead worker: {d:?}"
                );
                if !d.is_empty() && w2_down.is_none() {
                    w2_down = Some(t);
                }
            }
            let at = w2_down.expect("w2, silent since before the pause, is still detected");
            assert!(
                at - back <= 3 * HB + 2 * m.config().tick_ms(),
                "detected within one timeout of running again: {} ms",
                at - back
            );
            assert_eq!(m.state_of("w1").unwrap().0, MemberState::Healthy);
        }
    }

    #[test]
    fn a_stall_before_the_first_tick_is_noticed_too() {
        let mut m = membership();
        let e = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 1, 1)), 40));
        // The master stops 80 ms after it started, before its first tick.
        let c = m.on_event(MemberEvent::Tick, 60_080);
        assert!(downs(&c).is_empty(), "{c:?}");
        assert!(c.iter().any(|c| matches!(c, MemberCommand::Stalled { .. })));
        m.on_event(MemberEvent::Heartbeat(hb("w1", e, 1)), 60_081);
        assert_eq!(m.state_of("w1").unwrap().0, MemberState::Healthy);
    }

    #[test]
    fn ticks_a_little_late_are_not_a_stall() {
        let mut m = membership();
        m.on_event(MemberEvent::Register(reg("w1", 1, 1)), 0);
        let step = m.config().tick_ms();
        let c = ticks(&mut m, 0, 2_000);
        // 40 % late, every time: the silence still counts.
        let mut t = 2_000;
        let mut cmds = c;
        while t < 6_000 {
            t += step * 14 / 10;
            cmds.extend(m.on_event(MemberEvent::Tick, t));
        }
        assert!(!cmds
            .iter()
            .any(|c| matches!(c, MemberCommand::Stalled { .. })));
        assert_eq!(
            downs(&cmds),
            vec![("w1".into(), DownReason::HeartbeatTimeout)]
        );
    }

    #[test]
    fn a_late_heartbeat_after_timeout_is_fenced_and_reregistration_raises_the_epoch() {
        let mut m = membership();
        let e1 = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 0));
        ticks(&mut m, 0, 5000);
        assert_eq!(
            m.state_of("w1").unwrap().1,
            Some(DownReason::HeartbeatTimeout)
        );
        let c = m.on_event(MemberEvent::Heartbeat(hb("w1", e1, 2)), 6000);
        assert!(matches!(
            &c[..],
            [MemberCommand::Send {
                msg: ToWorker::Reregister { .. },
                ..
            }]
        ));
        let c = m.on_event(MemberEvent::Register(reg("w1", 7, 2)), 6001);
        let e2 = registered_epoch(&c);
        assert!(e2 > e1);
        assert!(downs(&c).is_empty(), "already down: no second failure");
        assert_eq!(m.state_of("w1").unwrap(), (MemberState::Healthy, None, e2));
        assert_eq!(m.views(6001)[0].registrations, 2);
    }

    #[test]
    fn node_down_is_immediate_and_only_for_the_current_epoch() {
        let mut m = membership();
        let e1 = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 0));
        let c = m.on_event(
            MemberEvent::NodeDown {
                node: "w1".into(),
                epoch: e1 - 1,
            },
            10,
        );
        assert!(
            downs(&c).is_empty(),
            "a stale monitor must not kill the new epoch"
        );
        let c = m.on_event(
            MemberEvent::NodeDown {
                node: "w1".into(),
                epoch: e1,
            },
            10,
        );
        assert_eq!(downs(&c), vec![("w1".into(), DownReason::NodeDown)]);
    }

    #[test]
    fn a_restarted_worker_replaces_its_healthy_predecessor() {
        let mut m = membership();
        let e1 = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 0));
        let c = m.on_event(MemberEvent::Register(reg("w1", 99, 1)), 50);
        assert_eq!(downs(&c), vec![("w1".into(), DownReason::NodeDown)]);
        assert!(registered_epoch(&c) > e1);
    }

    #[test]
    fn unregister_is_a_clean_leave_not_a_failure() {
        let mut m = membership();
        let e = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 7, 1)), 0));
        let c = m.on_event(
            MemberEvent::Unregister {
                node: "w1".into(),
                epoch: e,
            },
            10,
        );
        assert_eq!(downs(&c), vec![("w1".into(), DownReason::Unregistered)]);
        assert!(c.contains(&MemberCommand::Send {
            node: "w1".into(),
            msg: ToWorker::Unregistered
        }));
        assert_eq!(m.count(MemberState::Unregistered), 1);
        assert!(m.status("m", 10).recent_failures.is_empty());
        // and it is not timed out later
        assert!(downs(&m.on_event(MemberEvent::Tick, 60_000)).is_empty());
    }

    #[test]
    fn heartbeat_from_an_unknown_worker_asks_it_to_register() {
        let mut m = membership();
        let c = m.on_event(MemberEvent::Heartbeat(hb("ghost", 5, 1)), 0);
        assert!(matches!(
            &c[..],
            [MemberCommand::Send {
                msg: ToWorker::Reregister { .. },
                ..
            }]
        ));
    }

    #[test]
    fn queue_depth_summary_is_the_max_over_healthy_workers() {
        let mut m = membership();
        let e1 = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 1, 1)), 0));
        let e2 = registered_epoch(&m.on_event(MemberEvent::Register(reg("w2", 2, 1)), 0));
        let mut h = hb("w1", e1, 1);
        h.queue_ratio = 0.8;
        m.on_event(MemberEvent::Heartbeat(h), 1);
        let mut h = hb("w2", e2, 1);
        h.queue_ratio = 0.3;
        m.on_event(MemberEvent::Heartbeat(h), 1);
        assert!((m.status("m", 2).queue_depth_summary - 0.8).abs() < 1e-6);
    }

    #[test]
    fn heartbeats_carry_gpu_usage_and_the_last_frame_into_the_view() {
        let mut m = membership();
        let e = registered_epoch(&m.on_event(MemberEvent::Register(reg("w1", 1, 1)), 0));
        let view = |m: &Membership| m.views(2).into_iter().next().unwrap();
        assert_eq!((view(&m).gpu_usage, view(&m).last_frame), (0.0, None));
        let mut h = hb("w1", e, 1);
        h.gpu_usage = 0.4;
        h.last_frame = Some(17);
        m.on_event(MemberEvent::Heartbeat(h), 1);
        assert_eq!((view(&m).gpu_usage, view(&m).last_frame), (0.4, Some(17)));
        // A heartbeat with no frame finished keeps the last one; a value from a
        // confused worker is bounded.
        for (seq, bad, want) in [(2, f32::NAN, 0.0), (3, 7.0, 1.0), (4, -1.0, 0.0)] {
            let mut h = hb("w1", e, seq);
            h.gpu_usage = bad;
            h.last_frame = None;
            m.on_event(MemberEvent::Heartbeat(h), 1);
            assert_eq!((view(&m).gpu_usage, view(&m).last_frame), (want, Some(17)));
        }
    }
}
