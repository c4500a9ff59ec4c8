//! Who a peer is, as its certificate says (docs/security.md).
//!
//! With mutual TLS on the cluster link, the cluster edge binds every
//! authenticated ractor_cluster session to the identity of the certificate
//! its peer presented ([`bind`]), and the actors check names against it:
//! a worker registers only under the name its certificate carries, and a
//! master claim counts only from a node whose certificate names that node
//! and allows the master role. Without TLS nothing is enforced.
//!
//! Like ractor's registry and process groups, this is process-wide.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, RwLock};

use dashmap::DashMap;
use ractor::{ActorCell, ActorId};

/// What a node certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    /// It may serve as master.
    pub master: bool,
}

static ENFORCED: AtomicBool = AtomicBool::new(false);
static OWN: RwLock<Option<Identity>> = RwLock::new(None);
static SESSIONS: LazyLock<DashMap<u64, Identity>> = LazyLock::new(DashMap::new);

/// Enforce identities from now on; `own`: this node's certificate.
pub fn enforce(own: Identity) {
    *OWN.write().unwrap_or_else(|p| p.into_inner()) = Some(own);
    ENFORCED.store(true, Ordering::Release);
}

/// Whether identities are enforced (the cluster link runs mutual TLS).
pub fn enforced() -> bool {
    ENFORCED.load(Ordering::Acquire)
}

/// The peer of cluster session `node_id` presented `identity`.
pub fn bind(node_id: u64, identity: Identity) {
    SESSIONS.insert(node_id, identity);
}

/// Session `node_id` ended.
pub fn unbind(node_id: u64) {
    SESSIONS.remove(&node_id);
}

/// The identity bound to cluster session `node_id`.
pub fn of_session(node_id: u64) -> Option<Identity> {
    SESSIONS.get(&node_id).map(|i| i.clone())
}

/// Who runs `actor`: this node for a local actor, its session's
/// certificate for a remote one (`None`: not known).
pub fn of(actor: &ActorCell) -> Option<Identity> {
    match actor.get_id() {
        ActorId::Local(_) => OWN.read().unwrap_or_else(|p| p.into_inner()).clone(),
        ActorId::Remote { node_id, .. } => SESSIONS.get(&node_id).map(|i| i.clone()),
    }
}

/// Whether `actor` may act as node `name` (always, unless enforced).
pub fn may_be(actor: &ActorCell, name: &str) -> bool {
    !enforced() || of(actor).is_some_and(|i| i.name == name)
}

/// Whether `actor` may serve as master `name` (always, unless enforced).
pub fn may_be_master(actor: &ActorCell, name: &str) -> bool {
    !enforced() || of(actor).is_some_and(|i| i.name == name && i.master)
}
