//! The DNS stub: hickory-server on UDP and TCP, answering the namespace from the
//! registry snapshot ([`answer`]) and forwarding every other name ([`forward`]).
//! Truncation follows the client's EDNS size (512 bytes without EDNS); TCP carries the
//! rest.

pub mod answer;
pub mod client;
mod forward;
pub mod limit;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub use answer::{Outcome, Zone};

use crate::config::DnsConfig;
use crate::metrics::{Metrics, QType, Rcode};
use crate::registry::RegistryReader;

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

impl Handler {
    async fn respond<R: ResponseHandler>(&self, request: &Request, mut response: R) -> Result<ResponseInfo, String> {
        let edns = request.edns.as_ref().map(|req| {
            let mut e = Edns::new();
            e.set_max_payload(req.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            e
        });
        let builder = || {
            let mut b = MessageResponseBuilder::from_message_request(request);
            if let Some(e) = &edns {
                b.edns(e);
            }
            b
        };
        let info = match request.request_info() {
            Ok(info) => info,
            Err(_) => {
                let msg = builder().error_msg(&request.metadata, ResponseCode::FormErr);
                return response.send_response(msg).await.map_err(|e| e.to_string());
            }
        };
        let qtype = info.query.query_type();
        if request.metadata.op_code != OpCode::Query || request.metadata.message_type != MessageType::Query {
            let msg = builder().error_msg(&request.metadata, ResponseCode::NotImp);
            return response.send_response(msg).await.map_err(|e| e.to_string());
        }
        // RFC 6891 §6.1.3: an EDNS version we do not speak gets BADVERS with our OPT.
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            let msg = builder().error_msg(&request.metadata, ResponseCode::BADVERS);
            return response.send_response(msg).await.map_err(|e| e.to_string());
        }
        let qname = info.query.name().clone().into();
        let snapshot = self.registry.snapshot();
        let outcome = self.zone.answer(&snapshot, &qname, qtype, &mut rand::rng());
        drop(snapshot);
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        let empty: [Record; 0] = [];
        let result = match outcome {
            Outcome::Answer { answers, mut additionals } => {
                meta.authoritative = true;
                if request.protocol() == hickory_server::net::xfer::Protocol::Udp {
                    let limit = edns.as_ref().map(|e| e.max_payload()).unwrap_or(512);
                    trim_additionals(&meta, info.query.original(), &answers, &mut additionals, edns.as_ref(), limit);
                }
                let msg = builder().build(meta, answers.iter(), empty.iter(), empty.iter(), additionals.iter());
                response.send_response(msg).await
            }
            Outcome::NoData(soa) => {
                meta.authoritative = true;
                let msg = builder().build(meta, empty.iter(), empty.iter(), std::iter::once(&soa), empty.iter());
                response.send_response(msg).await
            }
            Outcome::NxDomain(soa) => {
                meta.authoritative = true;
                meta.response_code = ResponseCode::NXDomain;
                let msg = builder().build(meta, empty.iter(), empty.iter(), std::iter::once(&soa), empty.iter());
                response.send_response(msg).await
            }
            Outcome::Forward => {
                self.metrics.dns.forwarded.inc();
                match self.forwarder.forward(request.as_slice(), info.query.original(), request.metadata.id).await {
                    Ok(reply) => {
                        meta.response_code = reply.metadata.response_code;
                        // A reply still truncated after the TCP retry stays marked so:
                        // the client must not cache a partial answer as whole.
                        meta.truncation = reply.metadata.truncation;
                        meta.authoritative = false;
                        meta.authentic_data = reply.metadata.authentic_data;
                        let msg = builder().build(
                            meta,
                            reply.answers.iter(),
                            reply.authorities.iter(),
                            empty.iter(),
                            reply.additionals.iter(),
                        );
                        response.send_response(msg).await
                    }
                    Err(e) => {
                        self.metrics.dns.forward_failures.inc();
                        debug!(name = %info.query.name(), error = ?e, "not forwarded");
                        let code = match e {
                            forward::ForwardError::Busy => ResponseCode::Refused,
                            forward::ForwardError::NoAnswer => ResponseCode::ServFail,
                        };
                        let msg = builder().error_msg(&request.metadata, code);
                        response.send_response(msg).await
                    }
                }
            }
        };
        result.map_err(|e| e.to_string())
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

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, response: R) -> ResponseInfo {
        // Over its source's rate, a UDP query is dropped before any work: no answer to
        // build or send (a flood from one socket costs the stub as little as possible).
        // TCP needs a handshake, so it is not limited.
        if let Some(limit) = &self.limit {
            let udp = request.protocol() == hickory_server::net::xfer::Protocol::Udp;
            if udp && !limit.allow(request.src(), std::time::Instant::now()) {
                self.metrics.dns.rate_limited.inc();
                let mut meta = Metadata::response_from_request(&request.metadata);
                meta.response_code = ResponseCode::Refused;
                return ResponseInfo::from(hickory_proto::op::Header { metadata: meta, counts: Default::default() });
            }
        }
        let qtype = request.request_info().map(|i| qtype_label(i.query.query_type())).unwrap_or(QType::Other);
        match self.respond(request, response).await {
            Ok(info) => {
                self.metrics.dns.query(qtype, rcode_label(info.response_code));
                info
            }
            Err(e) => {
                debug!(error = %e, "could not send a DNS response");
                self.metrics.dns.query(qtype, Rcode::ServFail);
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
    /// One UDP socket per core on the same address (`SO_REUSEPORT`): hickory reads and
    /// answers each socket in one task, so one socket caps the stub at one core. The
    /// kernel spreads clients over the sockets by their address and port.
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
}

/// At most this many UDP sockets, whatever the core count.
const MAX_UDP_SOCKETS: usize = 4;

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
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_UDP_SOCKETS);
        for _ in 1..cores {
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

/// Serves DNS until `cancel`.
pub async fn serve_dns(
    sockets: DnsSockets,
    config: DnsConfig,
    registry: RegistryReader,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let start = (crate::clock::unix_ms() / 1000) as u32;
    let zone = Zone::new(&config.namespace, config.ttl, config.max_answers, start)
        .map_err(anyhow::Error::msg)?
        .with_aliases(&config.aliases);
    let forwarder = forward::Forwarder::new(config.upstreams);
    let handler = Handler { zone, registry, forwarder, metrics, limit: limit::RateLimit::new(config.rate_limit) };
    let mut server = Server::new(handler);
    for udp in sockets.udp {
        server.register_socket(udp);
    }
    server.register_listener(sockets.tcp, TCP_IDLE, 64);
    tokio::select! {
        _ = cancel.cancelled() => {
            server.shutdown_gracefully().await.map_err(|e| anyhow::anyhow!("dns shutdown: {e}"))?;
            Ok(())
        }
        r = server.block_until_done() => {
            r.map_err(|e| anyhow::anyhow!("dns server stopped: {e}"))?;
            if cancel.is_cancelled() { Ok(()) } else { Err(anyhow::anyhow!("dns server stopped unexpectedly")) }
        }
    }
}
