//! Forwarding of names outside the namespace to the upstream resolvers, so the stub can
//! be an app's only nameserver. The query goes out byte for byte as the app sent it;
//! a truncated UDP reply is asked again over TCP, as a stub resolver would.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// Time one upstream gets to answer before the next one is tried.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest reply read from an upstream.
const MAX_REPLY: usize = 65_535;

/// Forwards in flight at once; past this, queries are refused rather than queued, so a
/// flood cannot exhaust sockets and memory.
pub const MAX_IN_FLIGHT: usize = 256;

/// Why a query was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// Too many forwards in flight.
    Busy,
    /// No upstream answered.
    NoAnswer,
}

/// Forwards queries to the upstreams, a bounded number at a time.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    slots: tokio::sync::Semaphore,
}

impl Forwarder {
    /// A forwarder to these upstreams.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self { upstreams, slots: tokio::sync::Semaphore::new(MAX_IN_FLIGHT) }
    }

    /// Sends `query` (wire bytes) to each upstream in turn until one answers with a reply
    /// to the same question; returns it.
    pub async fn forward(
        &self,
        query: &[u8],
        question: &hickory_proto::op::Query,
        id: u16,
    ) -> Result<Message, ForwardError> {
        let _slot = self.slots.try_acquire().map_err(|_| ForwardError::Busy)?;
        let matches = |m: &Message| m.metadata.id == id && m.queries.first() == Some(question);
        for upstream in &self.upstreams {
            let reply = tokio::time::timeout(UPSTREAM_TIMEOUT, ask_udp(*upstream, query, &matches)).await;
            let Ok(Some(reply)) = reply else { continue };
            if reply.metadata.truncation {
                if let Ok(Some(full)) =
                    tokio::time::timeout(UPSTREAM_TIMEOUT, ask_tcp(*upstream, query, &matches)).await
                {
                    return Ok(full);
                }
            }
            return Ok(reply);
        }
        Err(ForwardError::NoAnswer)
    }
}

async fn ask_udp(upstream: SocketAddr, query: &[u8], matches: &(dyn Fn(&Message) -> bool + Sync)) -> Option<Message> {
    let bind: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(bind).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; MAX_REPLY];
    // Skip stray datagrams (a late reply to someone else cannot reach a fresh
    // connected socket, but a spoofed one with the wrong id can).
    loop {
        let n = socket.recv(&mut buf).await.ok()?;
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if matches(&m) {
                return Some(m);
            }
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8], matches: &(dyn Fn(&Message) -> bool + Sync)) -> Option<Message> {
    let mut stream = TcpStream::connect(upstream).await.ok()?;
    let len = u16::try_from(query.len()).ok()?;
    stream.write_all(&len.to_be_bytes()).await.ok()?;
    stream.write_all(query).await.ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.ok()?;
    Message::from_vec(&buf).ok().filter(|m| matches(m))
}
