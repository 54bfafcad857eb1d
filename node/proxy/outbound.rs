//! The outbound side: one listener per upstream (on its VIP or fixed address). Each app
//! connection passes the circuit breaker, then tries endpoints picked by the balancer:
//! a QUIC stream to the endpoint's sidecar (header, wait for the ack) or a plain TCP
//! connect when no sidecar fronts it. A failure before the ack is recorded by outlier
//! detection and retried on another endpoint, within the retry count and the retry
//! budget; after the ack the bytes are spliced.

use super::access_log::{AccessLog, Entry};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use murmur_protocol::{Frame, InstanceId, NodeName, Open, RefuseCode, ServiceName, Transport};
use quinn::{RecvStream, SendStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::balance::{Balancer, Candidate};
use super::ewma::PeakEwma;
use super::header::{read_frame, HeaderError};
use super::outlier::{Outcome, OutlierDetector};
use super::pool::{Opened, Pool};
use super::retry::RetryBudget;
use super::splice::{abort_quic, abort_tcp, splice, splice_quic};
use crate::config::upstream::{DEFAULT_RETRY_FLOOR_PER_SEC, DEFAULT_RETRY_RATIO};
use crate::config::UpstreamSpec;
use crate::metrics::proxy::{EndpointStats, FailureCause, UpstreamStats};
use crate::registry::{Instance, Query, RegistryReader};

/// The EWMA's time constant. Shorter than linkerd's 10 s: between sidecars a connect
/// is a sub-millisecond stream open, and a one-off spike (a scheduling hiccup) should
/// not steer traffic for half a minute.
const EWMA_DECAY: Duration = Duration::from_secs(3);
/// How long retry deposits count.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// Who this sidecar is, for the headers it sends.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The service it calls as.
    pub service: ServiceName,
    /// Its node.
    pub node: NodeName,
    /// Its zone, for same-zone preference.
    pub zone: Option<String>,
}

struct State {
    balancer: Balancer,
    outlier: OutlierDetector<InstanceId>,
    budget: RetryBudget,
    ewma: HashMap<InstanceId, PeakEwma>,
    outstanding: HashMap<InstanceId, u32>,
}

/// One upstream at run time.
pub struct Upstream {
    spec: UpstreamSpec,
    stats: Arc<UpstreamStats>,
    registry: RegistryReader,
    pool: Arc<Pool>,
    caller: Caller,
    /// Whether peers are authenticated (mutual TLS), so their service can be checked.
    verify_identity: bool,
    /// Where each connection is logged, when `--access-log` is on.
    access_log: Option<AccessLog>,
    // Held only for picks and bookkeeping, never across an await.
    state: Mutex<State>,
}

/// What the attempts of one connection came to, for its access-log line.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Attempts {
    /// Connects tried.
    pub tries: u32,
    /// The last one's failure.
    pub last_failure: Option<FailureCause>,
    /// There was nothing to try.
    pub no_endpoints: bool,
}

impl Attempts {
    /// The line's `result` and `cause` when no attempt connected.
    pub fn failed(&self) -> (&'static str, Option<String>) {
        match (self.no_endpoints, self.last_failure) {
            (true, _) => ("no_endpoints", None),
            (_, cause) => ("failed", cause.map(|c| c.as_str().to_owned())),
        }
    }

    /// Attempts after the first.
    pub fn retries(&self) -> u32 {
        self.tries.saturating_sub(1)
    }
}

/// A failed attempt.
struct Failure {
    cause: FailureCause,
    retryable: bool,
    detail: String,
}

/// A connected endpoint, after the ack.
pub(crate) enum Connected {
    Quic {
        conn: quinn::Connection,
        send: SendStream,
        recv: RecvStream,
        early: Vec<u8>,
        /// Time spent making a new QUIC connection for this attempt (zero when pooled).
        handshake: Duration,
    },
    Tcp(TcpStream),
    /// A direct UDP endpoint (no sidecar): datagrams go straight to it.
    Udp(SocketAddr),
}

fn unix_ms_at(at: Instant, now: Instant) -> u64 {
    crate::clock::unix_ms() + at.saturating_duration_since(now).as_millis() as u64
}

/// Decrements a gauge when dropped, so every exit path keeps the gauges true.
struct GaugeGuard<'a>(&'a crate::metrics::Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Upstream {
    /// An upstream runtime.
    pub fn new(
        spec: UpstreamSpec,
        stats: Arc<UpstreamStats>,
        registry: RegistryReader,
        pool: Arc<Pool>,
        caller: Caller,
        verify_identity: bool,
    ) -> Self {
        let now = Instant::now();
        let state = State {
            balancer: Balancer::new(spec.policy),
            outlier: OutlierDetector::new(spec.outlier.clone()),
            budget: RetryBudget::new(DEFAULT_RETRY_RATIO, DEFAULT_RETRY_FLOOR_PER_SEC, BUDGET_WINDOW, now),
            ewma: HashMap::new(),
            outstanding: HashMap::new(),
        };
        Self { spec, stats, registry, pool, caller, verify_identity, access_log: None, state: Mutex::new(state) }
    }

    /// Logs every connection to `log`.
    pub fn with_access_log(mut self, log: Option<AccessLog>) -> Self {
        self.access_log = log;
        self
    }

    /// Writes the access-log line of a connection or flow that started at `started`
    /// (and `started_ms`, unix), when the log is on.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn log_access(
        &self,
        transport: &'static str,
        started: (Instant, u64),
        endpoint: Option<&Instance>,
        bytes: Option<(u64, u64)>,
        result: &'static str,
        cause: Option<String>,
        attempts: &Attempts,
    ) {
        let Some(log) = &self.access_log else { return };
        log.log(Entry {
            start_unix_ms: started.1,
            duration_ms: started.0.elapsed().as_millis() as u64,
            transport,
            upstream: self.spec.alias.to_string(),
            service: self.spec.service.to_string(),
            endpoint: endpoint.map(|e| e.id.to_string()),
            peer_node: endpoint.map(|e| e.host.node.to_string()),
            bytes_sent: bytes.map(|b| b.0),
            bytes_received: bytes.map(|b| b.1),
            result,
            cause,
            retries: attempts.retries(),
        });
    }

    /// The start of a connection, as its access-log line needs it (no clock read when
    /// the log is off).
    pub(crate) fn started(&self) -> (Instant, u64) {
        let now = Instant::now();
        (now, if self.access_log.is_some() { crate::clock::unix_ms() } else { 0 })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain bookkeeping; a panic mid-update leaves it usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts app connections on `listener` until `cancel`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> Result<(), crate::error::TaskError> {
        loop {
            let (client, _) = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, go on.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let this = self.clone();
            tokio::spawn(async move { this.handle(client).await });
        }
    }

    /// Carries one app connection.
    pub async fn handle(&self, client: TcpStream) {
        let stats = &self.stats;
        stats.accepted.inc();
        let began = self.started();
        let mut attempts = Attempts::default();
        // Circuit breaking: fail fast past the caps rather than queue.
        // Count first, then check: concurrent accepts cannot all slip under the caps.
        let _active = GaugeGuard(&stats.active);
        let pending = GaugeGuard(&stats.pending);
        let active_now = stats.active.inc_get();
        let pending_now = stats.pending.inc_get();
        if active_now > u64::from(self.spec.max_connections) || pending_now > u64::from(self.spec.max_pending) {
            stats.breaker_rejections.inc();
            reset(client);
            self.log_access("tcp", began, None, None, "rejected", Some("circuit breaker".into()), &attempts);
            return;
        }
        let _ = client.set_nodelay(true);

        let connected = self.establish(Transport::Tcp, &mut attempts).await;
        drop(pending);
        let Some((conn, ep, ep_stats)) = connected else {
            stats.failed.inc();
            reset(client);
            let (result, cause) = attempts.failed();
            self.log_access("tcp", began, None, None, result, cause, &attempts);
            return;
        };
        ep_stats.connections.inc();
        ep_stats.active.inc();
        let started = Instant::now();
        let (mut cr, mut cw) = client.into_split();
        let idle = self.spec.idle_timeout;
        let (up, down) = (Some(&ep_stats.bytes_sent), Some(&ep_stats.bytes_received));
        // On any failure both sides are reset, never closed cleanly: a clean close would
        // tell the app that a cut-off reply was whole.
        let result = match conn {
            Connected::Udp(_) => Ok(Default::default()),
            Connected::Quic { mut send, mut recv, early, .. } => {
                let r = splice_quic((&cr, &mut cw), (&mut recv, &mut send), &early, idle, up, down).await;
                if r.is_err() {
                    abort_quic(&mut send, &mut recv);
                    abort_tcp(cr, cw);
                }
                r
            }
            Connected::Tcp(s) => {
                let (mut sr, mut sw) = s.into_split();
                let r = splice(&mut cr, &mut cw, &mut sr, &mut sw, idle, up, down).await;
                if r.is_err() {
                    abort_tcp(sr, sw);
                    abort_tcp(cr, cw);
                }
                r
            }
        };
        match &result {
            Ok(moved) => {
                self.log_access("tcp", began, Some(&ep), Some((moved.forward, moved.backward)), "ok", None, &attempts)
            }
            Err(e) => {
                if e.kind() != std::io::ErrorKind::TimedOut {
                    ep_stats.failure(FailureCause::Reset);
                }
                debug!(upstream = %self.spec.alias, endpoint = %ep.id, error = %e, "connection ended with an error");
                let cause = if e.kind() == std::io::ErrorKind::TimedOut { "idle timeout" } else { "reset" };
                self.log_access("tcp", began, Some(&ep), None, "error", Some(cause.into()), &attempts);
            }
        }
        ep_stats.duration.record(started.elapsed());
        ep_stats.active.dec();
        self.release(&ep.id);
    }

    /// Picks endpoints and connects until one acks or the retries and budget run out.
    pub(crate) async fn establish(
        &self,
        transport: Transport,
        attempts: &mut Attempts,
    ) -> Option<(Connected, Arc<Instance>, Arc<EndpointStats>)> {
        let endpoints = self.candidates(attempts)?;
        let mut tried = vec![false; endpoints.len()];
        for attempt in 0..=self.spec.retries {
            if tried.iter().all(|&t| t) || !self.may_attempt(attempt) {
                break;
            }
            let Some(i) = self.pick(&endpoints, &tried) else { break };
            tried[i] = true;
            attempts.tries += 1;
            let ep = &endpoints[i];
            let ep_stats = self.stats.endpoint(ep.id.as_str());
            note_via(&ep_stats, ep, transport);
            let start = Instant::now();
            let result = tokio::time::timeout(self.spec.connect_timeout, self.connect(ep, transport))
                .await
                .unwrap_or_else(|_| {
                    Err(Failure {
                        cause: FailureCause::ConnectTimeout,
                        retryable: true,
                        detail: "connect timeout".into(),
                    })
                });
            match result {
                Ok(c) => {
                    self.connected(ep, &c, endpoints.len(), start.elapsed(), &ep_stats);
                    return Some((c, ep.clone(), ep_stats));
                }
                Err(f) => {
                    let retryable = f.retryable;
                    self.attempt_failed(ep, f, endpoints.len(), attempts, &ep_stats);
                    if !retryable {
                        break;
                    }
                }
            }
        }
        None
    }

    /// The endpoints an attempt may pick from: the service's healthy instances, with
    /// mutual TLS only those behind a sidecar (its certificate must name the service;
    /// an endpoint without one is whatever address a key holder or a local process
    /// registered, and would get the app's bytes in the clear). `None`, counted, when
    /// there are none.
    fn candidates(&self, attempts: &mut Attempts) -> Option<Vec<Arc<Instance>>> {
        let mut endpoints = self.registry.snapshot().lookup(&self.spec.service, &Query::default());
        if self.verify_identity && !self.spec.plaintext {
            let before = endpoints.len();
            endpoints.retain(|e| e.sidecar && e.host.proxy.is_some());
            self.stats.plaintext_skipped.add((before - endpoints.len()) as u64);
        }
        if endpoints.is_empty() {
            self.stats.no_endpoints.inc();
            attempts.no_endpoints = true;
            return None;
        }
        Some(endpoints)
    }

    /// Whether attempt number `attempt` may go: the first always (it pays into the
    /// retry budget), a retry while the budget lasts.
    fn may_attempt(&self, attempt: u32) -> bool {
        let now = Instant::now();
        if attempt == 0 {
            self.lock().budget.deposit(now);
        } else if !self.lock().budget.try_withdraw(now) {
            self.stats.budget_exhausted.inc();
            return false;
        } else {
            self.stats.retries.inc();
        }
        true
    }

    /// Records a connection that reached its ack after `elapsed`.
    fn connected(&self, ep: &Instance, c: &Connected, endpoints: usize, elapsed: Duration, ep_stats: &EndpointStats) {
        // The balancer's estimate leaves out a one-off QUIC handshake: it would make a
        // freshly dialled endpoint look slow for the EWMA's whole decay.
        let handshake = match c {
            Connected::Quic { handshake, .. } => *handshake,
            _ => Duration::ZERO,
        };
        self.record(ep, Outcome::Success, endpoints, Some(elapsed.saturating_sub(handshake)), ep_stats);
        ep_stats.connect_latency.record(elapsed);
    }

    /// Records a failed attempt.
    fn attempt_failed(
        &self,
        ep: &Instance,
        f: Failure,
        endpoints: usize,
        attempts: &mut Attempts,
        ep_stats: &EndpointStats,
    ) {
        ep_stats.failure(f.cause);
        attempts.last_failure = Some(f.cause);
        self.release(&ep.id);
        debug!(upstream = %self.spec.alias, endpoint = %ep.id, cause = f.cause.as_str(), detail = %f.detail, "attempt failed");
        // Only local-origin failures count against the endpoint: a refusal (draining,
        // unknown service, not allowed) says nothing of its health, and must not use up
        // the ejection share during a rolling deploy.
        if f.cause != FailureCause::Refused {
            self.record(ep, Outcome::Failure, endpoints, None, ep_stats);
        }
    }

    fn pick(&self, endpoints: &[Arc<Instance>], tried: &[bool]) -> Option<usize> {
        let now = Instant::now();
        let mut st = self.lock();
        let cands: Vec<Candidate> = endpoints
            .iter()
            .zip(tried)
            .map(|(e, &tried)| Candidate {
                weight: e.weight,
                same_zone: self.caller.zone.is_some() && e.host.zone == self.caller.zone,
                latency_ns: st
                    .ewma
                    .get(&e.id)
                    .map(|w| w.get(now).as_nanos() as f64)
                    // An endpoint never measured is tried first (optimistic), so it gets a
                    // real estimate instead of losing every comparison to a guess.
                    .unwrap_or(0.0),
                outstanding: st.outstanding.get(&e.id).copied().unwrap_or(0),
                ejected: st.outlier.is_ejected(&e.id, now),
                tried,
            })
            .collect();
        let i = st.balancer.pick(&cands, &mut rand::rng())?;
        *st.outstanding.entry(endpoints[i].id.clone()).or_default() += 1;
        Some(i)
    }

    fn release(&self, id: &InstanceId) {
        let mut st = self.lock();
        if let Some(n) = st.outstanding.get_mut(id) {
            *n = n.saturating_sub(1);
        }
    }

    fn record(
        &self,
        ep: &Instance,
        outcome: Outcome,
        pool: usize,
        latency: Option<Duration>,
        ep_stats: &EndpointStats,
    ) {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(l) = latency {
            let w = st.ewma.entry(ep.id.clone()).or_insert_with(|| PeakEwma::new(l, EWMA_DECAY, now));
            w.observe(l, now);
            ep_stats.ewma_us.set(w.get(now).as_micros() as u64);
        }
        if let Some(ej) = st.outlier.record(&ep.id, outcome, pool, now) {
            ep_stats.ejections.inc();
            ep_stats.ejected_until_unix_ms.set(unix_ms_at(ej.until, now));
            info!(upstream = %self.spec.alias, endpoint = %ep.id, reason = ej.reason, times = ej.times,
                  seconds = ej.until.saturating_duration_since(now).as_secs(), "endpoint ejected");
        }
    }

    async fn connect(&self, ep: &Instance, transport: Transport) -> Result<Connected, Failure> {
        let fail = |cause, retryable, detail: String| Failure { cause, retryable, detail };
        match (ep.sidecar, ep.host.proxy) {
            (true, Some(peer)) => {
                let node = ep.host.node.as_str();
                let Opened { conn, mut send, mut recv, handshake } = self
                    .pool
                    .open(peer, node, ep.host.generation)
                    .await
                    .map_err(|e| fail(FailureCause::QuicConnect, true, crate::error::chain(&e)))?;
                // The peer proved it is that node; it must also be allowed to serve the
                // service, or any member could register a service and take its traffic.
                if self.verify_identity && !peer_serves(&conn, self.spec.service.as_str()) {
                    abort_quic(&mut send, &mut recv);
                    return Err(fail(
                        FailureCause::Identity,
                        true,
                        format!("the certificate of {} does not name service {}", ep.host.node, self.spec.service),
                    ));
                }
                let open = Open {
                    service: self.spec.service.clone(),
                    port: ep.port,
                    caller: self.caller.service.clone(),
                    caller_node: self.caller.node.clone(),
                    transport,
                };
                send.write_all(&Frame::Open(open).encode())
                    .await
                    .map_err(|e| fail(FailureCause::QuicConnect, true, e.to_string()))?;
                let failed = match read_frame(&mut recv, self.spec.connect_timeout).await {
                    Ok((Frame::Ack, early)) => return Ok(Connected::Quic { conn, send, recv, early, handshake }),
                    Ok((Frame::Refuse(r), _)) => {
                        let cause = if r.code == RefuseCode::AppUnreachable {
                            FailureCause::AppUnreachable
                        } else {
                            FailureCause::Refused
                        };
                        Err(fail(cause, r.code.is_retryable(), format!("{}: {}", r.code.as_str(), r.message)))
                    }
                    Ok((other, _)) => Err(fail(FailureCause::Other, true, format!("unexpected frame {other:?}"))),
                    Err(HeaderError::Timeout(_)) => Err(fail(FailureCause::ConnectTimeout, true, "no ack".into())),
                    Err(e) => {
                        if conn.close_reason().is_some() {
                            self.pool.evict(peer, node, &conn);
                        }
                        Err(fail(FailureCause::QuicConnect, true, e.to_string()))
                    }
                };
                // The attempt is abandoned: reset the stream so the inbound side drops
                // whatever it opened rather than seeing a clean, empty connection.
                abort_quic(&mut send, &mut recv);
                failed
            }
            _ if transport == Transport::Udp => Ok(Connected::Udp(SocketAddr::new(ep.address, ep.port))),
            _ => {
                let target = SocketAddr::new(ep.address, ep.port);
                match TcpStream::connect(target).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        Ok(Connected::Tcp(s))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        Err(fail(FailureCause::ConnectRefused, true, e.to_string()))
                    }
                    Err(e) => Err(fail(FailureCause::Other, true, e.to_string())),
                }
            }
        }
    }

    /// The upstream's settings.
    pub fn spec(&self) -> &UpstreamSpec {
        &self.spec
    }

    /// The upstream's counters.
    pub fn stats(&self) -> &Arc<UpstreamStats> {
        &self.stats
    }

    /// Bookkeeping when a flow or connection to `id` ends.
    pub(crate) fn finished(&self, id: &InstanceId) {
        self.release(id);
    }

    /// Once a second: clears the ejected-until gauge of endpoints whose ejection has
    /// ended, and forgets every piece of state of endpoints that left the registry (so
    /// task churn does not grow memory or metric labels).
    pub fn refresh(&self) {
        let now = Instant::now();
        let all = Query { health: crate::registry::HealthFilter::All, ..Default::default() };
        let current: Vec<InstanceId> =
            self.registry.snapshot().lookup(&self.spec.service, &all).iter().map(|i| i.id.clone()).collect();
        let mut st = self.lock();
        st.outlier.retain(&current);
        st.ewma.retain(|id, _| current.contains(id));
        st.outstanding.retain(|id, n| *n > 0 || current.contains(id));
        let keep: Vec<String> = current.iter().map(|i| i.to_string()).collect();
        self.stats.retain_endpoints(|id, ep| keep.iter().any(|k| k == id) || ep.active.get() > 0);
        for (id, ep) in self.stats.endpoints() {
            let Ok(id) = InstanceId::new(&id) else { continue };
            if !st.outlier.is_ejected(&id, now) {
                ep.ejected_until_unix_ms.set(0);
            }
        }
    }
}

/// Whether the peer's certificate (verified against the CA in the handshake) names
/// `service`.
fn peer_serves(conn: &quinn::Connection, service: &str) -> bool {
    conn.peer_identity()
        .and_then(|any| any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().cloned())
        .is_some_and(|cert| crate::tls::cert_names_service(&cert, service))
}

/// Closes an app connection with a reset, so the app sees a failure rather than an
/// empty but clean reply.
// tokio deprecates `set_linger` because a positive linger blocks the thread on drop; a
// zero linger never blocks (the kernel sends RST at once), which is exactly the intent.
#[allow(deprecated)]
fn reset(client: TcpStream) {
    let _ = client.set_linger(Some(Duration::ZERO));
    drop(client);
}
/// Writes how `ep` is reached into its stats, once per endpoint (an instance id keeps
/// its address), not on every attempt.
fn note_via(ep_stats: &EndpointStats, ep: &Instance, transport: Transport) {
    if let Ok(mut via) = ep_stats.via.lock() {
        if via.is_empty() {
            *via = match (ep.sidecar, ep.host.proxy, transport) {
                (true, Some(p), _) => format!("quic {p}"),
                (_, _, Transport::Udp) => format!("udp {}:{}", ep.address, ep.port),
                _ => format!("tcp {}:{}", ep.address, ep.port),
            };
        }
    }
}
