//! The cluster port: orch accepts inbound cluster connections itself and
//! hands each to ractor_cluster as an external stream, so that a peer that
//! has not authenticated costs little and not for long (docs/operating.md):
//!
//! - at most [`Limits::unauthenticated`] such connections at once, and
//!   [`Limits::per_source`] from one address; more are closed at once;
//! - a handshake deadline: a connection that has not authenticated within
//!   [`Limits::handshake`] is closed;
//! - until it has authenticated, a frame may announce at most
//!   [`Limits::pre_auth_frame`] bytes (ractor_cluster would allocate the
//!   announced length, up to 16 MiB, before reading it);
//! - `accept` errors (a full file table, `EMFILE`) back off, with one log
//!   line per burst.
//!
//! ractor_cluster frames are a u64 big-endian length and a protobuf
//! `NetworkMessage` whose first field says its kind: `auth` (1), `node` (2)
//! or `control` (3). A node sends nothing but `auth` frames until it has
//! authenticated its peer, so the first other frame this node writes on a
//! connection marks it authenticated.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::metrics as m;

/// What an unauthenticated connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub unauthenticated: usize,
    pub per_source: usize,
    pub handshake: Duration,
    pub pre_auth_frame: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            unauthenticated: 64,
            per_source: 16,
            handshake: Duration::from_secs(5),
            pre_auth_frame: 64 * 1024,
        }
    }
}

/// Why a connection was closed before it authenticated (the `reason` label
/// of `orch_cluster_connections_refused_total`).
pub const REFUSAL_REASONS: &[&str] = &[
    "too_many_unauthenticated",
    "too_many_from_source",
    "handshake_timeout",
    "frame_too_large_before_auth",
    // With `cluster.tls`: no TLS, a certificate not of the cluster's CA,
    // or none ...
    "tls_handshake",
    // ... or one that names another node than the peer says it is.
    "certificate_name",
];

pub(crate) fn refused(reason: &'static str) {
    metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// A warning said once, then at most every 10 s with a count.
#[derive(Debug, Default)]
pub struct Said {
    state: Mutex<(u64, Option<std::time::Instant>)>,
}

impl Said {
    /// Count one more; `Some(count)` when a line is due.
    pub fn due(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        if s.1.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            s.1 = Some(std::time::Instant::now());
            return Some(std::mem::take(&mut s.0));
        }
        None
    }
}

/// The unauthenticated connections of one port, by source address.
#[derive(Debug, Default)]
pub struct Pending {
    by_source: Mutex<HashMap<IpAddr, usize>>,
}

impl Pending {
    /// Count a new connection from `ip` if the limits allow it.
    fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits) -> Result<Slot, &'static str> {
        let mut map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = map.values().sum();
        if total >= limits.unauthenticated {
            return Err("too_many_unauthenticated");
        }
        let n = map.entry(ip).or_insert(0);
        if *n >= limits.per_source {
            return Err("too_many_from_source");
        }
        *n += 1;
        metrics::gauge!(m::UNAUTHENTICATED).set((total + 1) as f64);
        Ok(Slot {
            pending: self.clone(),
            ip,
            held: AtomicBool::new(true),
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut map = self.by_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
        metrics::gauge!(m::UNAUTHENTICATED).set(map.values().sum::<usize>() as f64);
    }

    /// Connections not yet authenticated.
    pub fn count(&self) -> usize {
        self.by_source
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }
}

/// One connection's place among the unauthenticated; given back when it
/// authenticates or closes.
#[derive(Debug)]
struct Slot {
    pending: Arc<Pending>,
    ip: IpAddr,
    held: AtomicBool,
}

impl Slot {
    fn give_back(&self) {
        if self.held.swap(false, Ordering::AcqRel) {
            self.pending.release(self.ip);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// What the two halves of one connection share.
#[derive(Debug)]
struct Shared {
    authenticated: AtomicBool,
    slot: Slot,
    limits: Limits,
}

/// Frames seen so far in one direction: where the next length prefix starts.
#[derive(Debug, Default)]
struct Framing {
    header: [u8; 8],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    left: u64,
    /// The first payload byte of the current frame is next.
    at_payload_start: bool,
}

impl Framing {
    /// Walk `bytes`; call `frame(len)` at each complete length prefix and
    /// `first(byte)` at each payload's first byte. Stops at the first `Err`.
    fn walk(
        &mut self,
        bytes: &[u8],
        mut frame: impl FnMut(u64) -> Result<(), ()>,
        mut first: impl FnMut(u8),
    ) -> Result<(), ()> {
        let mut i = 0;
        while i < bytes.len() {
            if self.left > 0 {
                if self.at_payload_start {
                    first(bytes[i]);
                    self.at_payload_start = false;
                }
                let take = (self.left).min((bytes.len() - i) as u64) as usize;
                self.left -= take as u64;
                i += take;
                continue;
            }
            self.header[self.have] = bytes[i];
            self.have += 1;
            i += 1;
            if self.have == 8 {
                self.have = 0;
                let len = u64::from_be_bytes(self.header);
                frame(len)?;
                self.left = len;
                self.at_payload_start = len > 0;
            }
        }
        Ok(())
    }
}

/// The read half of an inbound connection: enforces the handshake
/// deadline and the frame limit before authentication.
pub struct GuardedRead<R = OwnedReadHalf> {
    inner: R,
    shared: Arc<Shared>,
    framing: Framing,
    deadline: Pin<Box<tokio::time::Sleep>>,
    peer: SocketAddr,
}

impl<R: AsyncRead + Unpin> AsyncRead for GuardedRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let authenticated = this.shared.authenticated.load(Ordering::Acquire);
        if !authenticated && this.deadline.as_mut().poll(cx).is_ready() {
            refused("handshake_timeout");
            tracing::debug!(peer = %this.peer, "cluster connection closed: no authentication within the handshake deadline");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no authentication within the handshake deadline",
            )));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if authenticated {
            return Poll::Ready(Ok(()));
        }
        let limit = this.shared.limits.pre_auth_frame;
        let fresh = &buf.filled()[before..];
        let ok = this.framing.walk(
            fresh,
            |len| if len > limit { Err(()) } else { Ok(()) },
            |_| {},
        );
        if ok.is_err() {
            refused("frame_too_large_before_auth");
            tracing::debug!(peer = %this.peer, limit, "cluster connection closed: a frame over the limit before authentication");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame over {limit} bytes before authentication"),
            )));
        }
        Poll::Ready(Ok(()))
    }
}

/// The write half of an inbound connection: notices the first frame this
/// node sends that is not an `auth` message.
pub struct WatchedWrite<W = OwnedWriteHalf> {
    inner: W,
    shared: Arc<Shared>,
    framing: Framing,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WatchedWrite<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if !this.shared.authenticated.load(Ordering::Acquire) {
            let shared = &this.shared;
            let _ = this.framing.walk(
                &buf[..n],
                |_| Ok(()),
                |tag| {
                    // Field 1 (`auth`, tag byte 0x0a) or anything else.
                    if tag != 0x0a && !shared.authenticated.swap(true, Ordering::AcqRel) {
                        shared.slot.give_back();
                    }
                },
            );
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An admitted connection's place among the unauthenticated, and its
/// handshake deadline (which a TLS handshake spends too).
pub struct Ticket {
    shared: Arc<Shared>,
    deadline: tokio::time::Instant,
    peer: SocketAddr,
}

impl Ticket {
    /// Time left before the handshake deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now())
    }

    /// The guarded halves of the connection's stream.
    pub fn guard<R, W>(self, reader: R, writer: W) -> (GuardedRead<R>, WatchedWrite<W>) {
        (
            GuardedRead {
                inner: reader,
                shared: self.shared.clone(),
                framing: Framing::default(),
                deadline: Box::pin(tokio::time::sleep_until(self.deadline)),
                peer: self.peer,
            },
            WatchedWrite {
                inner: writer,
                shared: self.shared,
                framing: Framing::default(),
            },
        )
    }
}

/// Admit an accepted connection from `peer`: its ticket, or the reason it
/// is closed at once.
pub fn admit(
    peer: SocketAddr,
    pending: &Arc<Pending>,
    limits: Limits,
) -> Result<Ticket, &'static str> {
    let slot = match pending.admit(peer.ip(), &limits) {
        Ok(s) => s,
        Err(reason) => {
            refused(reason);
            return Err(reason);
        }
    };
    Ok(Ticket {
        shared: Arc::new(Shared {
            authenticated: AtomicBool::new(false),
            slot,
            limits,
        }),
        deadline: tokio::time::Instant::now() + limits.handshake,
        peer,
    })
}

/// Admit a plain TCP connection: its two guarded halves.
pub fn admit_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    pending: &Arc<Pending>,
    limits: Limits,
) -> Result<(GuardedRead<OwnedReadHalf>, WatchedWrite<OwnedWriteHalf>), &'static str> {
    let ticket = admit(peer, pending, limits)?;
    let (r, w) = stream.into_split();
    Ok(ticket.guard(r, w))
}

/// How long to wait after an `accept` error before the next try.
pub fn accept_backoff(previous: Option<Duration>) -> Duration {
    match previous {
        None => Duration::from_millis(10),
        Some(d) => (d * 2).min(Duration::from_secs(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload_len: usize) -> Vec<u8> {
        let mut f = (payload_len as u64).to_be_bytes().to_vec();
        let mut p = vec![0u8; payload_len];
        if payload_len > 0 {
            p[0] = kind;
        }
        f.extend(p);
        f
    }

    #[test]
    fn framing_finds_every_length_and_first_byte_across_splits() {
        let mut bytes = frame(0x0a, 5);
        bytes.extend(frame(0x1a, 300));
        bytes.extend(frame(0x12, 1));
        for cut in [1, 3, 8, 9, 13, 100, bytes.len()] {
            let mut f = Framing::default();
            let (mut lens, mut firsts) = (Vec::new(), Vec::new());
            for chunk in bytes.chunks(cut) {
                f.walk(
                    chunk,
                    |l| {
                        lens.push(l);
                        Ok(())
                    },
                    |b| firsts.push(b),
                )
                .unwrap();
            }
            assert_eq!(lens, vec![5, 300, 1], "cut {cut}");
            assert_eq!(firsts, vec![0x0a, 0x1a, 0x12], "cut {cut}");
        }
    }

    #[test]
    fn the_limits_count_per_source_and_in_all() {
        let pending = Arc::new(Pending::default());
        let limits = Limits {
            unauthenticated: 3,
            per_source: 2,
            ..Limits::default()
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = pending.admit(a, &limits).unwrap();
        let _s2 = pending.admit(a, &limits).unwrap();
        assert_eq!(
            pending.admit(a, &limits).unwrap_err(),
            "too_many_from_source"
        );
        let _s3 = pending.admit(b, &limits).unwrap();
        assert_eq!(
            pending.admit(b, &limits).unwrap_err(),
            "too_many_unauthenticated"
        );
        s1.give_back();
        assert_eq!(pending.count(), 2);
        drop(s1);
        assert_eq!(pending.count(), 2, "given back once only");
        pending.admit(b, &limits).unwrap();
    }

    #[test]
    fn accept_errors_back_off_to_a_second() {
        let mut d = None;
        for _ in 0..20 {
            d = Some(accept_backoff(d));
        }
        assert_eq!(d, Some(Duration::from_secs(1)));
    }
}
