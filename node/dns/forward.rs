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

/// Sends `query` (wire bytes) to each upstream in turn until one answers; returns the
/// parsed reply.
pub async fn forward(upstreams: &[SocketAddr], query: &[u8], id: u16) -> Option<Message> {
    for upstream in upstreams {
        let reply = tokio::time::timeout(UPSTREAM_TIMEOUT, ask_udp(*upstream, query, id)).await;
        let Ok(Some(reply)) = reply else { continue };
        if reply.metadata.truncation {
            if let Ok(Some(full)) = tokio::time::timeout(UPSTREAM_TIMEOUT, ask_tcp(*upstream, query, id)).await {
                return Some(full);
            }
        }
        return Some(reply);
    }
    None
}

async fn ask_udp(upstream: SocketAddr, query: &[u8], id: u16) -> Option<Message> {
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
            if m.metadata.id == id {
                return Some(m);
            }
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8], id: u16) -> Option<Message> {
    let mut stream = TcpStream::connect(upstream).await.ok()?;
    let len = u16::try_from(query.len()).ok()?;
    stream.write_all(&len.to_be_bytes()).await.ok()?;
    stream.write_all(query).await.ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.ok()?;
    Message::from_vec(&buf).ok().filter(|m| m.metadata.id == id)
}
