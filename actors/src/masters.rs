//! Who is the master: the one rule every caller uses (the worker, the admin
//! API, `orch-node --run`), at the cluster edge.
//!
//! A master that serves joins, in the process-group scope [`MASTERS_SCOPE`],
//! a group named after its claim: when it began to serve and its node name.
//! Groups are shared with every connected node, so any node can list the
//! masters it sees and their claims without asking them. The master is the
//! oldest claim visible; a master that sees an older claim than its own must
//! stop serving (see the Master actor), so that at most one serves a
//! cluster whose nodes see each other.

use ractor::{pg, ActorCell, ActorRef};

use crate::master::MasterMsg;

/// The process-group scope of master claims.
pub const MASTERS_SCOPE: &str = "orch.masters";

/// A master's claim: since when it serves, and its node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    /// Unix milliseconds at which it began to serve.
    pub since_ms: u64,
    pub node: String,
}

impl Claim {
    /// Its group name: zero-padded, so that names sort as claims do.
    pub fn group(&self) -> String {
        format!("{:020}.{}", self.since_ms, self.node)
    }

    pub fn parse(group: &str) -> Option<Self> {
        let (since, node) = group.split_once('.')?;
        if since.len() != 20 || node.is_empty() {
            return None;
        }
        Some(Self {
            since_ms: since.parse().ok()?,
            node: node.to_string(),
        })
    }
}

/// Begin to serve under `claim`.
pub fn join(claim: &Claim, master: ActorCell) {
    pg::join_scoped(MASTERS_SCOPE.to_string(), claim.group(), vec![master]);
}

/// Stop serving under `claim`.
pub fn leave(claim: &Claim, master: ActorCell) {
    pg::leave_scoped(MASTERS_SCOPE.to_string(), claim.group(), vec![master]);
}

/// Be told (as `SupervisionEvent::ProcessGroupChanged` in scope
/// [`MASTERS_SCOPE`]) when a master appears or goes.
pub fn monitor(actor: ActorCell) {
    pg::monitor_scope(MASTERS_SCOPE.to_string(), actor);
}

/// Every master visible from this process, oldest claim first.
pub fn visible() -> Vec<(Claim, ActorRef<MasterMsg>)> {
    let scope = MASTERS_SCOPE.to_string();
    let mut all: Vec<(Claim, ActorRef<MasterMsg>)> = pg::which_scoped_groups(&scope)
        .into_iter()
        .filter_map(|g| {
            let claim = Claim::parse(&g)?;
            let cell = pg::get_scoped_members(&scope, &g).into_iter().next()?;
            // With mutual TLS, a claim counts only from the node its
            // certificate names, and only if that allows the master role.
            if !crate::identity::may_be_master(&cell, &claim.node) {
                refused_claim(&claim, &cell);
                return None;
            }
            Some((claim, ActorRef::from(cell)))
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Say (once per claim) that a claim was ignored for its certificate.
fn refused_claim(claim: &Claim, cell: &ActorCell) {
    use std::sync::{LazyLock, Mutex};
    static SAID: LazyLock<Mutex<std::collections::HashSet<String>>> =
        LazyLock::new(Default::default);
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if said.len() < 1024 && said.insert(claim.group()) {
        let cert = crate::identity::of(cell);
        metrics::counter!(crate::metrics::MASTER_CLAIMS_REFUSED).increment(1);
        tracing::error!(
            claimed = %claim.node,
            certificate = ?cert.as_ref().map(|c| c.name.as_str()),
            master_role = cert.as_ref().is_some_and(|c| c.master),
            "ignoring a master claim: the claiming node's certificate does not name it or does not allow the master role"
        );
    }
}

/// The master: the oldest claim visible.
pub fn current() -> Option<(Claim, ActorRef<MasterMsg>)> {
    visible().into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_sort_by_age_then_name_and_round_trip() {
        let a = Claim {
            since_ms: 9_000,
            node: "zeta".into(),
        };
        let b = Claim {
            since_ms: 10_000,
            node: "alpha.one".into(),
        };
        assert!(a.group() < b.group(), "the group names sort as the claims");
        assert!(a < b);
        assert_eq!(Claim::parse(&b.group()), Some(b));
        assert_eq!(Claim::parse("orch.master"), None);
        assert_eq!(Claim::parse("12.x"), None);
    }
}
