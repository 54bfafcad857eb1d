//! The inbound side: the QUIC listener on the advertised address. Each stream starts
//! with an `Open` frame; the caller's certificate (already chained to the cluster CA by
//! the handshake) must name the service it calls as, that service must be allowed by
//! the instance, and the local app must accept a connection; then the stream is
//! acknowledged and spliced. Anything else gets a `Refuse` frame and a counted reason.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use murmur_protocol::{Frame, Open, Refuse, RefuseCode, Transport};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

use super::header::read_frame;
use super::splice::{abort_quic, abort_tcp, splice_quic};
use crate::local::{LocalInstance, Origin};
use crate::metrics::Metrics;
use crate::tls::cert_names_service;

/// QUIC close code for a connection refused at once (over the per-peer cap).
const REFUSED_CONNECTION: u32 = 0x10;
/// Time a caller has to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time the local app has to accept.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle timeout of inbound streams; the caller's side enforces its own, usually shorter.
const INBOUND_IDLE: Duration = Duration::from_secs(3600);
/// UDP flows one sidecar carries at once; more are refused.
const MAX_INBOUND_FLOWS: usize = 4096;
/// Inbound streams one sidecar serves at once, over every peer; more are reset at once,
/// so no peer can make it hold unbounded tasks, app connections and buffers.
pub const MAX_INBOUND_STREAMS: usize = 20_000;
/// Inbound streams one peer (one address) may hold at once: half the whole, so that a
/// peer withholding headers, or idling after the ack, cannot take every stream, while
/// one busy caller still gets 10,000 connections through.
pub const MAX_STREAMS_PER_PEER: u32 = 10_000;
/// QUIC connections one peer may hold at once (a caller's pool opens at most 4).
pub const MAX_CONNECTIONS_PER_PEER: u32 = 16;
/// Idle expiry of inbound UDP flows; callers close theirs sooner by finishing the stream.
const INBOUND_UDP_IDLE: Duration = Duration::from_secs(300);

/// What the inbound side needs to decide.
pub struct InboundContext {
    /// This agent's instances (with their allow lists).
    pub local: watch::Receiver<Arc<Vec<LocalInstance>>>,
    /// Set when the agent drains: new streams are refused.
    pub draining: Arc<AtomicBool>,
    /// Whether peers are authenticated (mutual TLS); when not, callers are not checked.
    pub mutual: bool,
    /// Where inbound streams, refusals and bytes are counted.
    pub metrics: Arc<Metrics>,
    /// UDP flows carried as QUIC datagrams.
    pub flows: Arc<super::udp::FlowTable>,
    /// Permits for inbound streams ([`MAX_INBOUND_STREAMS`]).
    pub streams: Arc<tokio::sync::Semaphore>,
    /// Connections and streams held now by each peer address.
    pub peers: PeerTable,
}

/// What each peer address holds now: connections and streams.
#[derive(Debug, Default)]
pub struct PeerTable(std::sync::Mutex<std::collections::HashMap<IpAddr, (u32, u32)>>);

/// One connection or stream of a peer, given back when dropped.
pub struct PeerSlot {
    ctx: Arc<InboundContext>,
    peer: IpAddr,
    stream: bool,
}

impl PeerTable {
    fn take(ctx: &Arc<InboundContext>, peer: IpAddr, stream: bool) -> Option<PeerSlot> {
        let mut map = ctx.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        let (conns, streams) = map.entry(peer).or_default();
        let (held, cap) = if stream { (streams, MAX_STREAMS_PER_PEER) } else { (conns, MAX_CONNECTIONS_PER_PEER) };
        if *held >= cap {
            return None;
        }
        *held += 1;
        Some(PeerSlot { ctx: ctx.clone(), peer, stream })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.ctx.peers.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = map.get_mut(&self.peer) {
            if self.stream {
                held.1 = held.1.saturating_sub(1);
            } else {
                held.0 = held.0.saturating_sub(1);
            }
            if *held == (0, 0) {
                map.remove(&self.peer);
            }
        }
    }
}

/// Accepts QUIC connections until `cancel`.
pub async fn serve_inbound(
    endpoint: Endpoint,
    ctx: Arc<InboundContext>,
    cancel: CancellationToken,
) -> Result<(), crate::error::TaskError> {
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return if cancel.is_cancelled() { Ok(()) } else { Err(crate::error::TaskError::Stopped) },
            },
        };
        let ctx = ctx.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                match incoming.await {
                    Ok(conn) => {
                        ctx.metrics.proxy.inbound.connections.inc();
                        let Some(slot) = PeerTable::take(&ctx, remote.ip(), false) else {
                            ctx.metrics.proxy.inbound.refuse("peer_connections");
                            conn.close(
                                quinn::VarInt::from_u32(REFUSED_CONNECTION),
                                b"too many connections from this peer",
                            );
                            return;
                        };
                        serve_connection(conn, ctx).await;
                        drop(slot);
                    }
                    Err(e) => {
                        ctx.metrics.proxy.inbound.handshake_failures.inc();
                        debug!(error = %e, "inbound handshake failed");
                    }
                }
            }
            .instrument(info_span!("inbound", peer = %remote)),
        );
    }
}

fn peer_cert(conn: &Connection) -> Option<CertificateDer<'static>> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().cloned()
}

async fn serve_connection(conn: Connection, ctx: Arc<InboundContext>) {
    let cert = peer_cert(&conn);
    let peer = conn.remote_address().ip();
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let Some(peer_slot) = PeerTable::take(&ctx, peer, true) else {
            ctx.metrics.proxy.inbound.refuse("peer_overloaded");
            super::splice::abort_quic(&mut send, &mut recv);
            continue;
        };
        let Ok(permit) = ctx.streams.clone().try_acquire_owned() else {
            ctx.metrics.proxy.inbound.refuse("overloaded");
            super::splice::abort_quic(&mut send, &mut recv);
            continue;
        };
        let ctx = ctx.clone();
        let cert = cert.clone();
        let conn = conn.clone();
        tokio::spawn(
            async move {
                serve_stream(conn, send, recv, cert, ctx).await;
                drop(permit);
                drop(peer_slot);
            }
            .in_current_span(),
        );
    }
}

async fn refuse(mut send: SendStream, ctx: &InboundContext, code: RefuseCode, message: String) {
    ctx.metrics.proxy.inbound.refuse(code.as_str());
    debug!(code = code.as_str(), %message, "stream refused");
    let _ = send.write_all(&Frame::Refuse(Refuse { code, message }).encode()).await;
    let _ = send.finish();
    // Give the frame a moment to leave before the stream is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
}

/// Which local instance serves `open`, or why none may.
fn decide(
    open: &Open,
    cert: Option<&CertificateDer<'_>>,
    ctx: &InboundContext,
) -> Result<LocalInstance, (RefuseCode, String)> {
    if ctx.draining.load(Ordering::Relaxed) {
        return Err((RefuseCode::Draining, "this instance is draining; try another".into()));
    }
    let local = ctx.local.borrow().clone();
    // Two instances may claim one (service, port), one of them through the API: the
    // config's is served, and the caller must pass the allow list of every one of them,
    // so that a second registration can neither repoint nor loosen the first.
    let matching: Vec<&LocalInstance> =
        local.iter().filter(|i| i.record.service == open.service && i.record.port == open.port).collect();
    let inst = matching
        .iter()
        .find(|i| i.origin == Origin::Config)
        .or(matching.first())
        .ok_or_else(|| (RefuseCode::UnknownService, format!("no {}:{} on this node", open.service, open.port)))?;
    if ctx.mutual && !cert.is_some_and(|c| cert_names_service(c, open.caller.as_str())) {
        return Err((
            RefuseCode::NotAllowed,
            format!("the caller's certificate does not name service {}", open.caller),
        ));
    }
    if matching.iter().any(|i| !i.allow.is_empty() && !i.allow.contains(&open.caller)) {
        return Err((RefuseCode::NotAllowed, format!("{} may not call {}", open.caller, open.service)));
    }
    Ok((*inst).clone())
}

async fn serve_stream(
    conn: Connection,
    send: SendStream,
    mut recv: RecvStream,
    cert: Option<CertificateDer<'static>>,
    ctx: Arc<InboundContext>,
) {
    let (frame, early) = match read_open(&mut recv, &ctx).await {
        Ok(open) => open,
        Err(Some((code, msg))) => return refuse(send, &ctx, code, msg).await,
        Err(None) => return,
    };
    let inst = match decide(&frame, cert.as_ref(), &ctx) {
        Ok(i) => i,
        Err((code, msg)) => return refuse(send, &ctx, code, msg).await,
    };
    let target = std::net::SocketAddr::new(inst.record.address, inst.record.port);
    match frame.transport {
        Transport::Udp => serve_udp_stream(conn, send, recv, target, &ctx).await,
        Transport::Tcp => serve_tcp_stream(send, recv, &early, target, &ctx).await,
    }
}

/// The stream's open frame and the bytes that came after it; else the refusal to send
/// (`None`: no header arrived, the stream is dropped).
async fn read_open(
    recv: &mut RecvStream,
    ctx: &InboundContext,
) -> Result<(Open, Vec<u8>), Option<(RefuseCode, String)>> {
    match read_frame(recv, HEADER_TIMEOUT).await {
        Ok((Frame::Open(open), early)) => Ok((open, early)),
        Ok((other, _)) => Err(Some((RefuseCode::BadHeader, format!("expected an open frame, got {other:?}")))),
        Err(super::header::HeaderError::Frame(e)) => Err(Some((e.refuse_code(), e.to_string()))),
        Err(e) => {
            ctx.metrics.proxy.inbound.refuse("no_header");
            debug!(error = %e, "no header");
            Err(None)
        }
    }
}

/// A UDP flow: a socket connected to the app, registered before the ack so that the
/// caller's first datagram finds it, then datagrams both ways until idle.
async fn serve_udp_stream(
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    target: std::net::SocketAddr,
    ctx: &Arc<InboundContext>,
) {
    let bind: std::net::SocketAddr = if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let app = match tokio::net::UdpSocket::bind(bind).await {
        Ok(a) if a.connect(target).await.is_ok() => a,
        _ => return refuse(send, ctx, RefuseCode::AppUnreachable, format!("{target}: cannot reach it over UDP")).await,
    };
    if ctx.flows.inbound_len() >= MAX_INBOUND_FLOWS {
        return refuse(send, ctx, RefuseCode::AppUnreachable, "too many UDP flows on this sidecar".into()).await;
    }
    let from_caller = ctx.flows.register(&conn, u64::from(recv.id()), true);
    let mut send = send;
    if send.write_all(&Frame::Ack.encode()).await.is_err() {
        return;
    }
    let stats = &ctx.metrics.proxy.inbound;
    stats.streams.inc();
    stats.active.inc();
    super::udp::serve_inbound_flow(
        conn,
        recv,
        send,
        app,
        ctx.flows.clone(),
        from_caller,
        INBOUND_UDP_IDLE,
        &stats.dropped_datagrams,
    )
    .await;
    stats.active.dec();
}

/// A TCP connection to the app, acked, then spliced to the stream; a failure resets
/// both sides.
async fn serve_tcp_stream(
    send: SendStream,
    recv: RecvStream,
    early: &[u8],
    target: std::net::SocketAddr,
    ctx: &InboundContext,
) {
    let app = match tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(send, ctx, RefuseCode::AppUnreachable, format!("{target}: {e}")).await,
        Err(_) => {
            let why = format!("{target}: no accept in {APP_CONNECT_TIMEOUT:?}");
            return refuse(send, ctx, RefuseCode::AppUnreachable, why).await;
        }
    };
    let _ = app.set_nodelay(true);
    let mut send = send;
    if send.write_all(&Frame::Ack.encode()).await.is_err() {
        return;
    }
    let (app_r, mut app_w) = app.into_split();
    let stats = &ctx.metrics.proxy.inbound;
    stats.streams.inc();
    stats.active.inc();
    let mut recv = recv;
    let result = splice_quic((&app_r, &mut app_w), (&mut recv, &mut send), early, INBOUND_IDLE, None, None).await;
    stats.active.dec();
    if let Err(e) = result {
        // Reset both sides: a clean close would pass a cut-off reply off as whole.
        abort_quic(&mut send, &mut recv);
        abort_tcp(app_r, app_w);
        debug!(error = %e, "inbound stream ended with an error");
    }
}
