//! The DNS stub: answers the namespace from the registry snapshot ([`answer`]) and
//! forwards every other name ([`forward`]). Truncation follows the client's EDNS size
//! (512 bytes without EDNS); TCP carries the rest.
//!
//! UDP is served by a loop of our own per socket ([`serve_udp`]), with hickory-proto for
//! the wire format: hickory-server spawns a task per datagram and parses it before any
//! hook runs, so a flood from one socket cost a task and a parse per query before it
//! could be refused. The loop checks the per-source rate limit ([`limit`]) first, then
//! answers in place. TCP, where a handshake already bounds a client, stays on
//! hickory-server; both share the same answer logic ([`Handler::plan`]).

pub mod answer;
mod cache;
pub mod client;
mod config;
mod forward;
pub mod limit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

pub use answer::{Outcome, Zone};
#[cfg(test)]
pub use config::parse_resolv_conf;
pub use config::Config;

use answer::Arrange;
use cache::{Labels, Lookup, ResponseCache};
use rand::seq::SliceRandom;

use crate::error::TaskError;
use crate::metrics::{Metrics, QType, Rcode};
use crate::registry::{Instance, RegistryReader};

/// How long a TCP client may stay silent before the connection is closed.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Largest UDP reply we send, whatever the client offers (RFC 9715's safe size).
const MAX_UDP_PAYLOAD: u16 = 1232;

struct Handler {
    zone: Zone,
    registry: RegistryReader,
    forwarder: forward::Forwarder,
    metrics: Arc<Metrics>,
    limit: Option<limit::RateLimit>,
}

fn qtype_label(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::SRV => QType::Srv,
        RecordType::SOA => QType::Soa,
        RecordType::ANY => QType::Any,
        _ => QType::Other,
    }
}

fn rcode_label(c: ResponseCode) -> Rcode {
    match c {
        ResponseCode::NoError => Rcode::NoError,
        ResponseCode::NXDomain => Rcode::NxDomain,
        ResponseCode::ServFail => Rcode::ServFail,
        ResponseCode::Refused => Rcode::Refused,
        ResponseCode::FormErr => Rcode::FormErr,
        _ => Rcode::Other,
    }
}

/// What a query gets, whichever transport carries it.
enum Plan {
    /// A response with these header fields and sections.
    Reply { meta: Metadata, answers: Vec<Record>, authorities: Vec<Record>, additionals: Vec<Record> },
    /// A response with this code and no records.
    Error(ResponseCode),
    /// The name is outside the namespace: ask the upstreams.
    Forward,
}

/// Our OPT record for a request that had one: the payload size we accept.
fn response_edns(request: Option<&Edns>) -> Option<Edns> {
    request.map(|req| {
        let mut e = Edns::new();
        e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
        e
    })
}

impl Handler {
    /// The response to a parsed query (`query` is `None` when it has no single
    /// question). `udp`: the reply must fit `edns`'s payload size (512 without).
    fn plan(
        &self,
        req: &Metadata,
        query: Option<&Query>,
        req_edns: Option<&Edns>,
        udp: bool,
        arrange: Arrange<'_>,
    ) -> Plan {
        let Some(query) = query else { return Plan::Error(ResponseCode::FormErr) };
        if req.op_code != OpCode::Query || req.message_type != MessageType::Query {
            return Plan::Error(ResponseCode::NotImp);
        }
        // RFC 6891 §6.1.3: an EDNS version we do not speak gets BADVERS with our OPT.
        if req_edns.is_some_and(|e| e.version() > 0) {
            return Plan::Error(ResponseCode::BADVERS);
        }
        let snapshot = self.registry.snapshot();
        let outcome = self.zone.answer_with(&snapshot, query.name(), query.query_type(), arrange);
        drop(snapshot);
        let mut meta = Metadata::response_from_request(req);
        meta.recursion_available = true;
        meta.authoritative = true;
        match outcome {
            Outcome::Answer { answers, mut additionals } => {
                if udp {
                    let edns = response_edns(req_edns);
                    let limit = edns.as_ref().map(|e| e.max_payload()).unwrap_or(512);
                    trim_additionals(&meta, query, &answers, &mut additionals, edns.as_ref(), limit);
                }
                Plan::Reply { meta, answers, authorities: Vec::new(), additionals }
            }
            Outcome::NoData(soa) => {
                Plan::Reply { meta, answers: Vec::new(), authorities: vec![soa], additionals: Vec::new() }
            }
            Outcome::NxDomain(soa) => {
                meta.response_code = ResponseCode::NXDomain;
                Plan::Reply { meta, answers: Vec::new(), authorities: vec![soa], additionals: Vec::new() }
            }
            Outcome::Forward => Plan::Forward,
        }
    }

    /// Asks the upstreams `raw` (the query as the app sent it); the response carries
    /// their answer under our header, or an error code when none answered.
    async fn forwarded(&self, raw: &[u8], req: &Metadata, query: &Query, from: SocketAddr) -> Plan {
        self.metrics.dns.forwarded.inc();
        match self.forwarder.forward(raw, query, req.id, from).await {
            Ok(reply) => {
                let mut meta = Metadata::response_from_request(req);
                meta.recursion_available = true;
                meta.response_code = reply.metadata.response_code;
                // A reply still truncated after the TCP retry stays marked so: the client
                // must not cache a partial answer as whole.
                meta.truncation = reply.metadata.truncation;
                meta.authentic_data = reply.metadata.authentic_data;
                Plan::Reply {
                    meta,
                    answers: reply.answers,
                    authorities: reply.authorities,
                    additionals: reply.additionals,
                }
            }
            Err(e) => {
                self.metrics.dns.forward_failures.inc();
                debug!(name = %query.name(), error = ?e, "not forwarded");
                Plan::Error(match e {
                    forward::ForwardError::Busy => ResponseCode::Refused,
                    forward::ForwardError::NoAnswer => ResponseCode::ServFail,
                })
            }
        }
    }

    /// Over TCP, through hickory-server.
    async fn respond_tcp<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> Result<ResponseInfo, hickory_server::net::NetError> {
        let query = request.request_info().ok().map(|i| i.query.original().clone());
        let mut shuffle = |instances: &mut [Arc<Instance>]| instances.shuffle(&mut rand::rng());
        let mut plan = self.plan(&request.metadata, query.as_ref(), request.edns.as_ref(), false, &mut shuffle);
        if let (Plan::Forward, Some(q)) = (&plan, &query) {
            plan = self.forwarded(request.as_slice(), &request.metadata, q, request.src()).await;
        }
        let edns = response_edns(request.edns.as_ref());
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns {
            builder.edns(e);
        }
        let sent = match &plan {
            Plan::Reply { meta, answers, authorities, additionals } => {
                let empty: [Record; 0] = [];
                let msg = builder.build(*meta, answers.iter(), authorities.iter(), empty.iter(), additionals.iter());
                response.send_response(msg).await
            }
            Plan::Error(code) => response.send_response(builder.error_msg(&request.metadata, *code)).await,
            // Only when the request had no question to forward, which plan() refuses.
            Plan::Forward => response.send_response(builder.error_msg(&request.metadata, ResponseCode::FormErr)).await,
        };
        sent
    }

    /// Counts one response.
    fn count(&self, labels: Labels) {
        self.metrics.dns.query(labels.qtype, labels.rcode);
    }
}

/// What a response to `query` with `code` is counted as.
fn labels(query: Option<&Query>, code: ResponseCode) -> Labels {
    let qtype = query.map(|q| qtype_label(q.query_type())).unwrap_or(QType::Other);
    Labels { qtype, rcode: rcode_label(code) }
}

/// The wire form of `plan` as a UDP reply to `req`: at most `req_edns`'s payload size
/// (512 without EDNS); a reply that does not fit goes out truncated (TC, no records),
/// so the client asks again over TCP. `Plan::Forward` must have been resolved first.
fn encode_udp(plan: Plan, req: &Metadata, query: Option<&Query>, req_edns: Option<&Edns>) -> Option<Vec<u8>> {
    let edns = response_edns(req_edns);
    let limit = usize::from(edns.as_ref().map(|e| e.max_payload()).unwrap_or(512));
    let mut m = Message::new(req.id, MessageType::Response, req.op_code);
    match plan {
        Plan::Reply { meta, answers, authorities, additionals } => {
            m.metadata = meta;
            m.answers = answers;
            m.authorities = authorities;
            m.additionals = additionals;
        }
        Plan::Error(code) => {
            m.metadata = Metadata::response_from_request(req);
            m.metadata.response_code = code;
        }
        Plan::Forward => return None,
    }
    if let Some(q) = query {
        m.add_query(q.clone());
    }
    if let Some(e) = edns {
        m.set_edns(e);
    }
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    m.truncate().to_vec().ok()
}

/// Serves one UDP socket until `cancel`. Each datagram over its source's rate limit is
/// dropped before it is even parsed; a query asked before gets its reply from the
/// socket's [`cache`]; other names in the namespace are answered in this task (a few
/// microseconds, no task per query); forwarded ones get a task each, since they wait on
/// an upstream. Responses and datagrams shorter than a header get nothing.
async fn serve_udp(socket: UdpSocket, handler: Arc<Handler>, cancel: CancellationToken) -> Result<(), TaskError> {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_QUERY];
    let mut out = Vec::with_capacity(usize::from(MAX_UDP_PAYLOAD));
    let mut cache = ResponseCache::new(handler.registry.changes());
    // One future for the whole loop: making it anew per datagram costs a lock each time.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let (len, src) = tokio::select! {
            biased;
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // Not expected on a bound UDP socket; a pause keeps a lasting error
                    // from spinning a core.
                    debug!(error = %e, "DNS receive failed");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
            _ = &mut cancelled => return Ok(()),
        };
        if let Some(limit) = &handler.limit {
            if !limit.allow(src, std::time::Instant::now()) {
                handler.metrics.dns.rate_limited.inc();
                continue;
            }
        }
        let raw = &buf[..len];
        let order = match cache.lookup(raw, &mut out) {
            Lookup::Hit(labels) => {
                send_udp(&handler, &socket, src, &out, labels).await;
                continue;
            }
            Lookup::Miss(order) => order,
        };
        let mut instances = 0;
        let mut arrange = |list: &mut [Arc<Instance>]| instances = order.apply(list);
        let (req, query, edns, plan, parsed) = match Message::from_vec(raw) {
            Ok(m) if m.metadata.message_type == MessageType::Response => continue,
            Ok(Message { metadata, mut queries, edns, .. }) => {
                let query = (queries.len() == 1).then(|| queries.swap_remove(0));
                let plan = handler.plan(&metadata, query.as_ref(), edns.as_ref(), true, &mut arrange);
                (metadata, query, edns, plan, true)
            }
            Err(_) => {
                // A header we can read gets FORMERR, as hickory-server answers; a
                // response or anything shorter gets nothing (no reflection).
                let Ok(header) = Header::read(&mut BinDecoder::new(raw)) else { continue };
                if header.metadata.message_type == MessageType::Response {
                    continue;
                }
                (header.metadata, None, None, Plan::Error(ResponseCode::FormErr), false)
            }
        };
        if let (Plan::Forward, Some(q)) = (&plan, &query) {
            let (handler, socket, raw) = (handler.clone(), socket.clone(), raw.to_vec());
            let q = q.clone();
            tokio::spawn(async move {
                let plan = handler.forwarded(&raw, &req, &q, src).await;
                let (reply, labels) = udp_reply(plan, &req, Some(&q), edns.as_ref());
                send_udp(&handler, &socket, src, &reply, labels).await;
            });
            continue;
        }
        let (reply, labels) = udp_reply(plan, &req, query.as_ref(), edns.as_ref());
        if parsed && !reply.is_empty() {
            cache.store(raw, order, instances, &reply, labels);
        }
        send_udp(&handler, &socket, src, &reply, labels).await;
    }
}

/// The bytes of `plan` as a UDP reply (empty when it could not be encoded: nothing is
/// sent, and it counts as SERVFAIL), and what it counts as.
fn udp_reply(plan: Plan, req: &Metadata, query: Option<&Query>, edns: Option<&Edns>) -> (Vec<u8>, Labels) {
    let code = match &plan {
        Plan::Reply { meta, .. } => meta.response_code,
        Plan::Error(code) => *code,
        Plan::Forward => ResponseCode::ServFail,
    };
    match encode_udp(plan, req, query, edns) {
        Some(bytes) => (bytes, labels(query, code)),
        None => (Vec::new(), labels(query, ResponseCode::ServFail)),
    }
}

/// Sends `reply` (unless empty) and counts it.
async fn send_udp(handler: &Handler, socket: &UdpSocket, to: SocketAddr, reply: &[u8], labels: Labels) {
    handler.count(labels);
    if reply.is_empty() {
        return;
    }
    if let Err(e) = socket.send_to(reply, to).await {
        debug!(error = %e, %to, "could not send a DNS response");
    }
}

/// RFC 2181 §9: when only additional records do not fit a UDP reply, they are left out
/// rather than the reply being marked truncated (the client can ask for the addresses).
fn trim_additionals(
    meta: &Metadata,
    query: &hickory_proto::op::Query,
    answers: &[Record],
    additionals: &mut Vec<Record>,
    edns: Option<&Edns>,
    limit: u16,
) {
    let size = |extra: &[Record]| {
        let mut m = hickory_proto::op::Message::new(meta.id, MessageType::Response, OpCode::Query);
        m.add_query(query.clone());
        m.answers = answers.to_vec();
        m.additionals = extra.to_vec();
        m.edns = edns.cloned();
        m.to_vec().map(|v| v.len()).unwrap_or(usize::MAX)
    };
    while !additionals.is_empty() && size(additionals) > usize::from(limit) {
        additionals.pop();
    }
}

/// hickory-server's entry point, for TCP only (UDP is served by [`serve_udp`]).
struct TcpHandler(Arc<Handler>);

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, response: R) -> ResponseInfo {
        let query = request.request_info().ok().map(|i| i.query.original().clone());
        match self.0.respond_tcp(request, response).await {
            Ok(info) => {
                self.0.count(labels(query.as_ref(), info.response_code));
                info
            }
            Err(e) => {
                debug!(error = %e, "could not send a DNS response");
                self.0.count(labels(query.as_ref(), ResponseCode::ServFail));
                let mut meta = Metadata::response_from_request(&request.metadata);
                meta.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header { metadata: meta, counts: Default::default() })
            }
        }
    }
}

/// The bound sockets of the stub, so start-up can fail on "address in use" before
/// anything runs.
pub struct DnsSockets {
    /// [`UDP_SOCKETS`] UDP sockets on the same address (`SO_REUSEPORT`), each read by
    /// one task. The kernel spreads clients over them by a hash of their address and
    /// port, which does two things: the stub uses every core (one socket capped it at
    /// one), and a flood from a few sockets fills only the queues it hashes to, while
    /// other clients' lookups mostly land on queues that drain.
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
}

/// UDP sockets of the stub, whatever the core count.
const UDP_SOCKETS: usize = 16;
/// Largest query read; a longer datagram is cut and gets FORMERR.
const MAX_QUERY: usize = 4096;

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

impl DnsSockets {
    /// Binds UDP and TCP on `listen`. With port 0, the other sockets take the port the
    /// first UDP socket got. A port another agent already serves fails here all the same:
    /// the UDP sockets could share it (same user, `SO_REUSEPORT`), but the TCP listener,
    /// bound without port sharing, cannot.
    pub async fn bind(listen: SocketAddr) -> std::io::Result<DnsSockets> {
        let first = reuseport_udp(listen)?;
        let addr = first.local_addr()?;
        let mut udp = vec![first];
        for _ in 1..UDP_SOCKETS {
            udp.push(reuseport_udp(addr)?);
        }
        let tcp = TcpListener::bind(addr).await?;
        Ok(DnsSockets { udp, tcp })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Starts the stub on its bound sockets; it stops with `cancel` or the handle's
/// `shutdown()`.
pub fn spawn_dns(
    sockets: DnsSockets,
    config: Config,
    registry: RegistryReader,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> crate::task::Tasks {
    let mut tasks = crate::task::Tasks::new(cancel);
    let listen = sockets.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let serve = serve_dns(sockets, config, registry, metrics, tasks.token());
    tasks.spawn("dns", serve.instrument(tracing::info_span!("dns", %listen)));
    tasks
}

/// Serves DNS until `cancel`.
async fn serve_dns(
    sockets: DnsSockets,
    config: Config,
    registry: RegistryReader,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<(), TaskError> {
    let start = (crate::clock::unix_ms() / 1000) as u32;
    let zone = Zone::new(&config.namespace, config.ttl, config.max_answers, start)
        .map_err(TaskError::failed)?
        .with_aliases(&config.aliases);
    let forwarder = forward::Forwarder::new(config.upstreams);
    let limit = limit::RateLimit::new(config.rate_limit);
    let handler = Arc::new(Handler { zone, registry, forwarder, metrics, limit });
    let mut udp = tokio::task::JoinSet::new();
    for socket in sockets.udp {
        udp.spawn(serve_udp(socket, handler.clone(), cancel.clone()));
    }
    let mut server = Server::new(TcpHandler(handler));
    server.register_listener(sockets.tcp, TCP_IDLE, 64);
    tokio::select! {
        _ = cancel.cancelled() => {
            server.shutdown_gracefully().await.map_err(TaskError::failed)?;
            Ok(())
        }
        Some(r) = udp.join_next() => {
            r.map_err(TaskError::Panicked)??;
            if cancel.is_cancelled() { Ok(()) } else { Err(TaskError::Stopped) }
        }
        r = server.block_until_done() => {
            r.map_err(TaskError::failed)?;
            if cancel.is_cancelled() { Ok(()) } else { Err(TaskError::Stopped) }
        }
    }
}
