//! ClusterLink: owns the ractor_cluster `NodeServer` (the cluster port), dials
//! every configured peer and redials after any disconnect with capped
//! exponential backoff and jitter (ractor_cluster never reconnects by itself).
//! The NodeSupervisor starts it; the NodeServer reports session events to it.
//!
//! A dead link must be noticed by both ends, or a healed partition waits for
//! TCP's next retransmission (up to two minutes): the master closes the
//! session of a worker it declared `heartbeat_timeout`
//! ([`ClusterLinkMsg::Disconnect`]), and every dialed socket has TCP
//! keepalive and `TCP_USER_TIMEOUT`, so the dialer drops a connection whose
//! data goes unacknowledged and redials.
//!
//! The cluster port is this actor's own listener ([`crate::cluster_port`]
//! sets what an unauthenticated connection may cost); accepted connections
//! go to the NodeServer as external streams. The NodeServer's own listener
//! is bound to an ephemeral loopback port that nothing dials.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage};
use rand::Rng;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::metrics as m;

/// First redial delay.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Largest redial delay: with [`CONNECT_TIMEOUT`], a healed link is tried
/// again within about 2 s.
pub const BACKOFF_CAP: Duration = Duration::from_secs(1);
/// A TCP connect that takes longer than this is abandoned (a cut link).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A connection that does not authenticate within this is dropped and redialed.
const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster port and the peer dialer.
pub struct ClusterLink;

/// Arguments of [`ClusterLink`].
pub struct ClusterLinkArgs {
    pub node: String,
    pub listen: SocketAddr,
    /// The cluster port already bound ([`bind`]), or `None` to bind `listen`.
    pub listener: Option<std::net::TcpListener>,
    pub secret: String,
    pub peers: Vec<String>,
    /// How dead links are detected on the sockets this node dials and accepts.
    pub liveness: Liveness,
    /// What an inbound connection may cost before it authenticates.
    pub limits: crate::cluster_port::Limits,
    /// Mutual TLS (`cluster.tls`): every connection, both ways.
    pub tls: Option<crate::tls::Tls>,
}

/// TCP settings of dialed sockets, from the heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Keepalive probes start after this much silence, and repeat this often ...
    pub keepalive: Duration,
    /// ... this many times.
    pub probes: u32,
    /// Data unacknowledged this long closes the connection (`TCP_USER_TIMEOUT`).
    pub user_timeout: Duration,
}

impl Liveness {
    /// Probes every heartbeat, as many as the heartbeats that may be
    /// missed; unacknowledged data for twice the failure timeout (at least
    /// 5 s), so that a master that stops for a while keeps its sessions.
    pub fn from_heartbeat(heartbeat_ms: u64, missed: u32) -> Self {
        let timeout = heartbeat_ms.saturating_mul(u64::from(missed));
        Self {
            keepalive: Duration::from_millis(heartbeat_ms.max(1000)),
            probes: missed.max(1),
            user_timeout: Duration::from_millis(timeout.saturating_mul(2).max(5000)),
        }
    }

    fn apply(&self, stream: &TcpStream) -> std::io::Result<()> {
        let sock = socket2::SockRef::from(stream);
        sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(self.keepalive)
                .with_interval(self.keepalive)
                .with_retries(self.probes),
        )?;
        sock.set_tcp_user_timeout(Some(self.user_timeout))
    }
}

/// Next delay of a capped exponential backoff, with ±20 % jitter.
pub fn next_backoff(current: Duration) -> (Duration, Duration) {
    let jitter = rand::rng().random_range(0.8..1.2);
    let wait = current.mul_f64(jitter);
    let next = (current * 2).min(BACKOFF_CAP);
    (wait, next)
}

#[derive(Debug)]
struct Peer {
    addr: String,
    backoff: Duration,
    /// Address of the TCP connection we opened and wait to see authenticate.
    dialed: Option<String>,
    /// The authenticated session to this peer.
    session: Option<u64>,
    failures: u32,
    /// The first dial ended: with a session whose groups are synchronised,
    /// or with a failure.
    settled: bool,
}

/// State of [`ClusterLink`].
pub struct ClusterLinkState {
    node: String,
    liveness: Liveness,
    server: ActorRef<NodeServerMessage>,
    peers: Vec<Peer>,
    /// Sessions opened but not (yet) authenticated: node id -> peer address.
    unauthenticated: HashMap<u64, String>,
    authenticated: HashSet<u64>,
    /// Callers of [`ClusterLinkMsg::WhenSettled`] still waiting.
    settle_waiters: Vec<ractor::RpcReplyPort<()>>,
    /// The accept loop of the cluster port.
    acceptor: tokio::task::JoinHandle<()>,
    /// Connections closed before authenticating since the last warning.
    auth_failures_unsaid: u64,
    /// When that warning was last logged.
    auth_warned_at: Option<std::time::Instant>,
    tls: Option<crate::tls::Tls>,
    /// Certificates of TLS connections not yet opened as sessions, by label.
    certs: Certs,
    /// The certificate name of each session opened over TLS.
    cert_names: HashMap<u64, String>,
}

/// Certificates of TLS connections, by the label (peer address) their
/// stream is handed to the NodeServer with.
type Certs = std::sync::Arc<dashmap::DashMap<String, orch_actors::identity::Identity>>;

impl ClusterLinkState {
    fn schedule_dial(&mut self, myself: &ActorRef<ClusterLinkMsg>, i: usize) {
        let peer = &mut self.peers[i];
        peer.dialed = None;
        let (wait, next) = next_backoff(peer.backoff);
        peer.backoff = next;
        myself.send_after(wait, move || ClusterLinkMsg::Dial(i));
    }

    /// Answer the callers waiting for every peer's first dial to end.
    fn answer_settled(&mut self) {
        if self.peers.iter().all(|p| p.settled) {
            for port in self.settle_waiters.drain(..) {
                let _ = port.send(());
            }
        }
    }

    fn publish(&self) {
        let up = self.peers.iter().filter(|p| p.session.is_some()).count();
        metrics::gauge!(m::PEERS_CONNECTED).set(up as f64);
        metrics::gauge!(m::SESSIONS).set(self.authenticated.len() as f64);
    }
}

/// Session events, as the NodeServer reports them.
#[derive(Debug)]
pub enum SessionEvent {
    Opened,
    Authenticated,
    Ready,
    Disconnected,
}

/// Messages of [`ClusterLink`].
pub enum ClusterLinkMsg {
    /// Dial configured peer `i` unless it is connected.
    Dial(usize),
    /// The TCP connect of peer `i` finished: the connection's peer address, or an error.
    Dialed(usize, Result<String, String>),
    /// A node session changed.
    Session(SessionEvent, NodeServerSessionInformation),
    /// The dialed connection of peer `i` to `addr` did not authenticate in time.
    AuthDeadline(usize, String),
    /// Reply once every configured peer's first dial ended: connected with
    /// its process groups known here, or failed.
    WhenSettled(ractor::RpcReplyPort<()>),
    /// Close every session with node `name` (the master declared it dead:
    /// it redials once it can reach us again).
    Disconnect(String),
}

impl ractor::Message for ClusterLinkMsg {}

struct Subscription(ActorRef<ClusterLinkMsg>, Certs);

impl Subscription {
    fn send(&self, ev: SessionEvent, ses: NodeServerSessionInformation) {
        let _ = self.0.cast(ClusterLinkMsg::Session(ev, ses));
    }
}

impl NodeEventSubscription for Subscription {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        // Bound before the session can carry anything: its actors act under
        // the name of the certificate its peer presented.
        if let Some((_, id)) = self.1.remove(&ses.peer_addr) {
            orch_actors::identity::bind(ses.node_id, id);
        }
        self.send(SessionEvent::Opened, ses)
    }
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEvent::Disconnected, ses)
    }
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEvent::Authenticated, ses)
    }
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        self.send(SessionEvent::Ready, ses)
    }
}

/// Least time between two warnings about connections that did not authenticate.
const AUTH_WARN_EVERY: Duration = Duration::from_secs(10);

/// Accept inbound cluster connections, admit those the limits allow, and
/// hand them to the NodeServer. `accept` errors back off; they are logged
/// once, then at most every 10 s with a count.
#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: tokio::net::TcpListener,
    server: ActorRef<NodeServerMessage>,
    node: String,
    liveness: Liveness,
    limits: crate::cluster_port::Limits,
    tls: Option<crate::tls::Tls>,
    certs: Certs,
) {
    let pending = std::sync::Arc::new(crate::cluster_port::Pending::default());
    let said = std::sync::Arc::new(crate::cluster_port::Said::default());
    let mut backoff = None;
    let (mut unsaid, mut said_at): (u64, Option<std::time::Instant>) = (0, None);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = None;
                let _ = stream.set_nodelay(true);
                let _ = liveness.apply(&stream);
                let Ok(ticket) = crate::cluster_port::admit(peer, &pending, limits) else {
                    continue; // dropped: closed at once, counted by reason
                };
                if let Some(tls) = &tls {
                    // The TLS handshake runs beside the accept loop, within
                    // the connection's handshake deadline.
                    tokio::spawn(accept_tls(
                        stream,
                        peer,
                        ticket,
                        tls.mutual.clone(),
                        server.clone(),
                        node.clone(),
                        certs.clone(),
                        said.clone(),
                    ));
                    continue;
                }
                let (reader, writer) = stream.into_split();
                let (reader, writer) = ticket.guard(reader, writer);
                let opened = server.cast(NodeServerMessage::ConnectionOpenedExternal {
                    stream: Box::new(Labeled {
                        reader: Box::new(reader),
                        writer: Box::new(writer),
                        peer: peer.to_string(),
                    }),
                    is_server: true,
                });
                if opened.is_err() {
                    return; // the node server is gone: the node is stopping
                }
            }
            Err(e) => {
                metrics::counter!(m::ACCEPT_ERRORS).increment(1);
                unsaid += 1;
                if said_at.is_none_or(|at| at.elapsed() >= AUTH_WARN_EVERY) {
                    warn!(node_id = %node, error = %e, errors = unsaid, "cannot accept on the cluster port; backing off");
                    unsaid = 0;
                    said_at = Some(std::time::Instant::now());
                }
                let wait = crate::cluster_port::accept_backoff(backoff);
                backoff = Some(wait);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Finish the TLS handshake of an inbound connection and hand it to the
/// NodeServer; a peer without a certificate of the cluster's CA (or
/// without TLS) is closed, logged (at most every 10 s) and counted.
#[allow(clippy::too_many_arguments)]
async fn accept_tls(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: crate::cluster_port::Ticket,
    config: std::sync::Arc<rustls::ServerConfig>,
    server: ActorRef<NodeServerMessage>,
    node: String,
    certs: Certs,
    said: std::sync::Arc<crate::cluster_port::Said>,
) {
    use crate::cluster_port::refused;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let failed = |reason: &'static str, why: String| {
        refused(reason);
        if let Some(n) = said.due() {
            warn!(node_id = %node, addr = %peer, connections = n, "cluster connection refused: {why} (see orch_cluster_connections_refused_total{{reason=\"{reason}\"}})");
        }
    };
    let conn = match tokio::time::timeout(ticket.remaining(), acceptor.accept(stream)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            return failed(
                "tls_handshake",
                format!("TLS handshake failed: {e} (no TLS, no client certificate, or one not signed by this cluster's CA)"),
            )
        }
        Err(_) => {
            return failed(
                "handshake_timeout",
                "no TLS handshake within the handshake deadline".into(),
            )
        }
    };
    let identity = match crate::tls::peer_identity(conn.get_ref().1) {
        Ok(id) => id,
        Err(e) => return failed("tls_handshake", e),
    };
    let label = peer.to_string();
    certs.insert(label.clone(), identity);
    let (reader, writer) = tokio::io::split(conn);
    let (reader, writer) = ticket.guard(reader, writer);
    let opened = server.cast(NodeServerMessage::ConnectionOpenedExternal {
        stream: Box::new(Labeled {
            reader: Box::new(reader),
            writer: Box::new(writer),
            peer: label.clone(),
        }),
        is_server: true,
    });
    if opened.is_err() {
        certs.remove(&label);
    }
}

/// Open the TLS session of a dialed connection: the stream to hand to the
/// NodeServer, its label, and the peer's certificate name kept in `certs`.
async fn connect_tls(
    stream: TcpStream,
    config: std::sync::Arc<rustls::ClientConfig>,
    certs: &Certs,
) -> Result<(Labeled, String), String> {
    let peer_addr = stream.peer_addr().map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(crate::tls::dial_name(), stream))
        .await
        .map_err(|_| format!("no TLS handshake within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("TLS handshake failed: {e} (is `cluster.tls` set on the peer, with a certificate of the same CA?)"))?;
    let identity = crate::tls::peer_identity(conn.get_ref().1)?;
    let label = peer_addr.to_string();
    certs.insert(label.clone(), identity);
    let (reader, writer) = tokio::io::split(conn);
    Ok((
        Labeled {
            reader: Box::new(reader),
            writer: Box::new(writer),
            peer: label.clone(),
        },
        label,
    ))
}

/// A stream handed to the NodeServer under a label: the peer's address,
/// which the session's events then carry.
struct Labeled {
    reader: ractor_cluster::BoxRead,
    writer: ractor_cluster::BoxWrite,
    peer: String,
}

impl ractor_cluster::ClusterBidiStream for Labeled {
    fn split(self: Box<Self>) -> (ractor_cluster::BoxRead, ractor_cluster::BoxWrite) {
        (self.reader, self.writer)
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.clone())
    }
}

/// Bind the cluster port (non-blocking, for tokio).
pub fn bind(listen: SocketAddr) -> Result<std::net::TcpListener, String> {
    let open = || -> std::io::Result<std::net::TcpListener> {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&listen.into())?;
        // As tokio binds: a burst of connects waits in the queue.
        s.listen(1024)?;
        Ok(s.into())
    };
    open().map_err(|e| format!("cannot open the cluster port `{listen}`: {e}"))
}

async fn dial(addr: &str, liveness: Liveness) -> Result<TcpStream, String> {
    let connect = TcpStream::connect(addr);
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    liveness
        .apply(&stream)
        .map_err(|e| format!("cannot set keepalive and TCP_USER_TIMEOUT: {e}"))?;
    Ok(stream)
}

impl Actor for ClusterLink {
    type Msg = ClusterLinkMsg;
    type State = ClusterLinkState;
    type Arguments = ClusterLinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ClusterLinkArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let listener = match args.listener {
            Some(l) => l,
            None => bind(args.listen)?,
        };
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| format!("cannot open the cluster port `{}`: {e}", args.listen))?;
        let server = NodeServer::new(
            0,
            args.secret,
            args.node.clone(),
            args.listen.ip().to_string(),
            None,
            Some(NodeConnectionMode::Isolated),
        )
        .with_listen_addr(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let (server, _) = Actor::spawn_linked(None, server, (), myself.get_cell())
            .await
            .map_err(|e| format!("cannot start the cluster node server: {e}"))?;
        let certs = Certs::default();
        let acceptor = tokio::spawn(accept_loop(
            listener,
            server.clone(),
            args.node.clone(),
            args.liveness,
            args.limits,
            args.tls.clone(),
            certs.clone(),
        ));
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: format!("orch.cluster_link.{}", args.node),
            subscription: Box::new(Subscription(myself.clone(), certs.clone())),
        })?;
        info!(node_id = %args.node, listen = %args.listen, peers = args.peers.len(), tls = args.tls.is_some(), "cluster port open");
        let peers: Vec<Peer> = args
            .peers
            .into_iter()
            .map(|addr| Peer {
                addr,
                backoff: BACKOFF_START,
                dialed: None,
                session: None,
                failures: 0,
                settled: false,
            })
            .collect();
        for i in 0..peers.len() {
            myself.cast(ClusterLinkMsg::Dial(i))?;
        }
        Ok(ClusterLinkState {
            node: args.node,
            liveness: args.liveness,
            server,
            peers,
            unauthenticated: HashMap::new(),
            authenticated: HashSet::new(),
            settle_waiters: Vec::new(),
            acceptor,
            auth_failures_unsaid: 0,
            auth_warned_at: None,
            tls: args.tls,
            certs,
            cert_names: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClusterLinkMsg::Dial(i) => {
                let peer = &state.peers[i];
                if peer.session.is_some() || peer.dialed.is_some() {
                    return Ok(());
                }
                let addr = peer.addr.clone();
                let server = state.server.clone();
                let me = myself.clone();
                let liveness = state.liveness;
                let tls = state.tls.as_ref().map(|t| t.client.clone());
                let certs = state.certs.clone();
                tokio::spawn(async move {
                    let result = match (dial(&addr, liveness).await, tls) {
                        (Ok(stream), Some(tls)) => match connect_tls(stream, tls, &certs).await {
                            Ok((stream, label)) => server
                                .cast(NodeServerMessage::ConnectionOpenedExternal {
                                    stream: Box::new(stream),
                                    is_server: false,
                                })
                                .map(|_| label)
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e),
                        },
                        (Ok(stream), None) => match (stream.peer_addr(), stream.local_addr()) {
                            (Ok(peer_addr), Ok(local_addr)) => {
                                let opened = server.cast(NodeServerMessage::ConnectionOpened {
                                    stream: Box::new(NetworkStream::Raw {
                                        peer_addr,
                                        local_addr,
                                        stream,
                                    }),
                                    is_server: false,
                                });
                                opened
                                    .map(|_| peer_addr.to_string())
                                    .map_err(|e| e.to_string())
                            }
                            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
                        },
                        (Err(e), _) => Err(e),
                    };
                    let _ = me.cast(ClusterLinkMsg::Dialed(i, result));
                });
                // Mark as in flight so that a second Dial does not race this one.
                state.peers[i].dialed = Some(String::new());
            }
            ClusterLinkMsg::Dialed(i, Ok(conn)) => {
                debug!(node_id = %state.node, peer = %state.peers[i].addr, "tcp connected, authenticating");
                state.peers[i].dialed = Some(conn.clone());
                myself.send_after(AUTH_TIMEOUT, move || ClusterLinkMsg::AuthDeadline(i, conn));
            }
            ClusterLinkMsg::Dialed(i, Err(e)) => {
                let peer = &mut state.peers[i];
                peer.failures += 1;
                peer.settled = true;
                metrics::counter!(m::DIAL_FAILURES).increment(1);
                // Say it once, then every 10th failure, so a long outage does not flood the log.
                if peer.failures == 1 || peer.failures % 10 == 0 {
                    warn!(node_id = %state.node, peer = %peer.addr, failures = peer.failures, error = %e, "cannot reach peer; retrying with backoff");
                }
                state.schedule_dial(&myself, i);
            }
            ClusterLinkMsg::AuthDeadline(i, conn) => {
                let peer = &state.peers[i];
                if peer.session.is_none() && peer.dialed.as_deref() == Some(conn.as_str()) {
                    warn!(node_id = %state.node, peer = %peer.addr, "peer did not authenticate in time; redialing");
                    state.peers[i].settled = true;
                    let sessions = ractor::call!(state.server, NodeServerMessage::GetSessions)?;
                    for s in sessions.values() {
                        if !s.is_server && s.peer_addr == conn {
                            s.actor.stop(Some("auth_timeout".into()));
                        }
                    }
                    state.schedule_dial(&myself, i);
                }
            }
            ClusterLinkMsg::Session(ev, ses) => on_session(&myself, state, ev, ses),
            ClusterLinkMsg::WhenSettled(port) => state.settle_waiters.push(port),
            ClusterLinkMsg::Disconnect(name) => {
                let sessions = ractor::call!(state.server, NodeServerMessage::GetSessions)?;
                for s in sessions.values() {
                    // ractor_cluster names a peer `{node}@{host}`.
                    let peer = s.peer_name.as_ref().map(|p| p.name.as_str());
                    if peer.is_some_and(|p| p.split('@').next() == Some(name.as_str())) {
                        info!(node_id = %state.node, peer = %name, addr = %s.peer_addr, "closing the cluster session of a worker declared dead");
                        s.actor.stop(Some("heartbeat_timeout".into()));
                    }
                }
            }
        }
        state.answer_settled();
        state.publish();
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.acceptor.abort();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        evt: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, reason)
                if cell.get_id() == state.server.get_id() =>
            {
                Err(format!("cluster node server stopped: {reason:?}").into())
            }
            SupervisionEvent::ActorFailed(cell, err) if cell.get_id() == state.server.get_id() => {
                Err(format!("cluster node server failed: {err}").into())
            }
            _ => Ok(()),
        }
    }
}

fn on_session(
    myself: &ActorRef<ClusterLinkMsg>,
    state: &mut ClusterLinkState,
    ev: SessionEvent,
    ses: NodeServerSessionInformation,
) {
    let peer_name = ses
        .peer_name
        .as_ref()
        .map(|n| n.name.clone())
        .unwrap_or_default();
    match ev {
        SessionEvent::Opened => {
            state
                .unauthenticated
                .insert(ses.node_id, ses.peer_addr.clone());
            if let Some(id) = orch_actors::identity::of_session(ses.node_id) {
                state.cert_names.insert(ses.node_id, id.name);
            }
        }
        SessionEvent::Authenticated if state.tls.is_some() && !cert_fits(state, &ses) => {
            // The peer calls itself another node than its certificate names.
            state.unauthenticated.remove(&ses.node_id);
            crate::cluster_port::refused("certificate_name");
            let cert = state
                .cert_names
                .get(&ses.node_id)
                .map(String::as_str)
                .unwrap_or("none");
            warn!(node_id = %state.node, peer = %peer_name, certificate = %cert, addr = %ses.peer_addr, "cluster session refused: the peer calls itself `{}` but its certificate names `{cert}` (see orch_cluster_connections_refused_total{{reason=\"certificate_name\"}})", peer_node(&peer_name));
            ses.actor.stop(Some("certificate_name".into()));
        }
        SessionEvent::Authenticated => {
            state.unauthenticated.remove(&ses.node_id);
            state.authenticated.insert(ses.node_id);
            metrics::counter!(m::NODE_EVENTS, "event" => "up").increment(1);
            info!(node_id = %state.node, peer = %peer_name, addr = %ses.peer_addr, incoming = ses.is_server, "peer connected");
            if !ses.is_server {
                if let Some(p) = state
                    .peers
                    .iter_mut()
                    .find(|p| p.dialed.as_deref() == Some(ses.peer_addr.as_str()))
                {
                    p.session = Some(ses.node_id);
                    p.dialed = None;
                    p.backoff = BACKOFF_START;
                    p.failures = 0;
                }
            }
        }
        SessionEvent::Ready => {
            debug!(node_id = %state.node, peer = %peer_name, "peer session ready");
            for p in state
                .peers
                .iter_mut()
                .filter(|p| p.session == Some(ses.node_id))
            {
                p.settled = true;
            }
        }
        SessionEvent::Disconnected => {
            state.cert_names.remove(&ses.node_id);
            orch_actors::identity::unbind(ses.node_id);
            if let Some(addr) = state.unauthenticated.remove(&ses.node_id) {
                metrics::counter!(m::AUTH_FAILURES).increment(1);
                // Once, then at most every 10 s with a count: a flood of
                // connections must not flood the log.
                state.auth_failures_unsaid += 1;
                let due = state
                    .auth_warned_at
                    .is_none_or(|at| at.elapsed() >= AUTH_WARN_EVERY);
                if due {
                    let n = std::mem::take(&mut state.auth_failures_unsaid);
                    state.auth_warned_at = Some(std::time::Instant::now());
                    warn!(node_id = %state.node, addr = %addr, incoming = ses.is_server, connections = n, "cluster connections closed before authentication (wrong secret, not an orch node, or a limit of the cluster port; see orch_cluster_connections_refused_total)");
                }
            }
            if state.authenticated.remove(&ses.node_id) {
                metrics::counter!(m::NODE_EVENTS, "event" => "down").increment(1);
                info!(node_id = %state.node, peer = %peer_name, addr = %ses.peer_addr, "peer disconnected");
            }
            let lost: Vec<usize> = state
                .peers
                .iter()
                .enumerate()
                .filter(|(_, p)| {
                    p.session == Some(ses.node_id)
                        || (!ses.is_server && p.dialed.as_deref() == Some(ses.peer_addr.as_str()))
                })
                .map(|(i, _)| i)
                .collect();
            for i in lost {
                state.peers[i].session = None;
                state.peers[i].settled = true;
                state.schedule_dial(myself, i);
            }
        }
    }
}

/// The node part of a ractor_cluster peer name (`{node}@{host}`).
fn peer_node(name: &str) -> &str {
    name.split('@').next().unwrap_or(name)
}

/// Whether session `ses` comes from the node its certificate names.
fn cert_fits(state: &ClusterLinkState, ses: &NodeServerSessionInformation) -> bool {
    let named = ses.peer_name.as_ref().map(|n| peer_node(&n.name));
    named.is_some() && state.cert_names.get(&ses.node_id).map(String::as_str) == named
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut cur = BACKOFF_START;
        let mut waits = Vec::new();
        for _ in 0..12 {
            let (wait, next) = next_backoff(cur);
            assert!(
                wait >= cur.mul_f64(0.79) && wait <= cur.mul_f64(1.21),
                "{wait:?} around {cur:?}"
            );
            waits.push(next);
            cur = next;
        }
        assert_eq!(waits[0], Duration::from_millis(200));
        assert_eq!(*waits.last().unwrap(), BACKOFF_CAP);
    }
}
