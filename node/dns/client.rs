//! A minimal DNS client over UDP, for the demo, `murmur` tooling and tests: one
//! question, one reply, a timeout. Apps use their system resolver, not this.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

/// Why a query got no reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The name or the message could not be encoded.
    #[error("cannot encode the query")]
    Encode(#[source] hickory_proto::ProtoError),
    /// The socket failed.
    #[error("cannot ask {server}")]
    Io {
        /// The DNS server.
        server: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Nothing came back in time.
    #[error("no DNS reply from {server} within {timeout:?}")]
    Timeout {
        /// The DNS server.
        server: SocketAddr,
        /// How long it waited.
        timeout: Duration,
    },
}

/// Asks `server` one question; returns the reply.
pub async fn query(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    timeout: Duration,
) -> Result<Message, QueryError> {
    let id: u16 = rand::random();
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).map_err(QueryError::Encode)?, qtype));
    let bytes = msg.to_vec().map_err(QueryError::Encode)?;
    let bind: SocketAddr =
        if server.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { ([0u16, 0, 0, 0, 0, 0, 0, 1], 0).into() };
    let io = |source| QueryError::Io { server, source };
    let socket = UdpSocket::bind(bind).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    socket.send(&bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    let reply = tokio::time::timeout(timeout, async {
        loop {
            let n = socket.recv(&mut buf).await.map_err(io)?;
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                if m.metadata.id == id {
                    return Ok(m);
                }
            }
        }
    })
    .await
    .map_err(|_| QueryError::Timeout { server, timeout })??;
    Ok(reply)
}

/// The A/AAAA addresses of a reply's answer section.
pub fn addresses(reply: &Message) -> Vec<std::net::IpAddr> {
    use hickory_proto::rr::RData;
    reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}
