//! chitchat's `Transport` seam, filled with our sealed UDP socket. The socket is bound by
//! the agent before anything starts (so "address in use" names its setting) and handed
//! to chitchat when it opens the transport.
//!
//! chitchat 0.13 makes the `Transport` trait public but keeps the envelope's wire codec
//! crate-private, so a transport outside the crate cannot turn an envelope into bytes.
//! Rather than fork chitchat, [`EnvelopeCodec`] runs chitchat's own codec through its own
//! public UDP socket over a private loopback pair: an envelope sent by chitchat's socket
//! to ours arrives as its exact wire bytes, and bytes we send to chitchat's socket come
//! back as an envelope. Only datagrams that opened under the keyring ever reach it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};
use tracing::{debug, warn};

use super::frame::{FrameCodec, Reassembler, Reject, MAX_DATAGRAM};
use crate::clock::unix_ms;
use crate::metrics::Metrics;

/// A transport that hands chitchat one pre-bound, sealed socket.
pub struct SealedTransport {
    socket: Mutex<Option<tokio::net::UdpSocket>>,
    codec: FrameCodec,
    metrics: Arc<Metrics>,
}

impl SealedTransport {
    /// Wraps a bound socket.
    pub fn new(socket: tokio::net::UdpSocket, codec: FrameCodec, metrics: Arc<Metrics>) -> Self {
        Self { socket: Mutex::new(Some(socket)), codec, metrics }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let socket = self
            .socket
            .lock()
            .map_err(|_| anyhow::anyhow!("gossip socket lock poisoned"))?
            .take()
            .context("the gossip socket was already opened")?;
        let socket = Arc::new(socket);
        let (tx, rx) = tokio::sync::mpsc::channel(RECV_QUEUE);
        let receiver = Receiver {
            socket: socket.clone(),
            envelopes: EnvelopeCodec::open().await?,
            codec: self.codec.clone(),
            metrics: self.metrics.clone(),
            reassembler: Reassembler::default(),
        };
        let task = tokio::spawn(receiver.run(tx));
        Ok(Box::new(SealedSocket {
            socket,
            envelopes: EnvelopeCodec::open().await?,
            codec: self.codec.clone(),
            metrics: self.metrics.clone(),
            next_id: AtomicU32::new(rand::random()),
            rx,
            task,
        }))
    }
}

/// Opened messages waiting for chitchat; past this the receiver waits (backpressure).
const RECV_QUEUE: usize = 256;

/// chitchat polls `Socket::recv` inside a `select!` and drops the future whenever its
/// gossip timer fires first, so `recv` must be cancel-safe. Opening and decoding run in
/// this task of their own instead, and `recv` only takes the next result off a channel.
struct Receiver {
    socket: Arc<tokio::net::UdpSocket>,
    envelopes: EnvelopeCodec,
    codec: FrameCodec,
    metrics: Arc<Metrics>,
    reassembler: Reassembler,
}

impl Receiver {
    async fn run(mut self, tx: tokio::sync::mpsc::Sender<anyhow::Result<RecvOutcome>>) {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice();
        loop {
            let result = self.next(&mut buf).await;
            let fatal = result.is_err();
            if tx.send(result).await.is_err() || fatal {
                return;
            }
        }
    }

    async fn next(&mut self, buf: &mut [u8]) -> anyhow::Result<RecvOutcome> {
        loop {
            let (len, from) = match self.socket.recv_from(buf).await {
                Ok(r) => r,
                // ICMP errors from earlier sends surface here on some platforms.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e).context("gossip socket failed"),
            };
            let m = &self.metrics.gossip;
            m.packets_received.inc();
            m.bytes_received.add(len as u64);
            let chunk = match self.codec.open(&buf[..len], unix_ms()) {
                Ok(c) => c,
                Err(reject) => {
                    match reject {
                        Reject::Unsealable => m.undecryptable.inc(),
                        Reject::Malformed => m.malformed.inc(),
                        Reject::Stale => m.stale.inc(),
                    }
                    debug!(%from, ?reject, "dropped gossip datagram");
                    continue;
                }
            };
            let Some(message) = self.reassembler.push(from, chunk, Instant::now()) else {
                continue;
            };
            match self.envelopes.decode(&message).await {
                Ok(Some(envelope)) => {
                    return Ok(RecvOutcome { from_addr: from, envelope, num_bytes_received: len });
                }
                Ok(None) => {
                    m.malformed.inc();
                    debug!(%from, "sealed gossip message did not decode");
                }
                Err(e) => {
                    warn!(error = %e, "envelope codec failed; reopening it");
                    self.envelopes = EnvelopeCodec::open().await?;
                }
            }
        }
    }
}

struct SealedSocket {
    socket: Arc<tokio::net::UdpSocket>,
    envelopes: EnvelopeCodec,
    codec: FrameCodec,
    metrics: Arc<Metrics>,
    next_id: AtomicU32,
    rx: tokio::sync::mpsc::Receiver<anyhow::Result<RecvOutcome>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.socket.local_addr().context("gossip socket has no local address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        // A seed name may resolve to both families; the other family is unreachable from
        // this socket and is skipped quietly rather than logged every round.
        let local_v4 = self.socket.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
        if local_v4 != to.is_ipv4() {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let message = match self.envelopes.encode(envelope).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "envelope codec failed; reopening it");
                self.envelopes = EnvelopeCodec::open().await?;
                return Err(e);
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut sent = 0;
        for datagram in self.codec.seal(&message, id, unix_ms()) {
            // A send error (peer unreachable) is the failure detector's business, not a
            // reason to stop gossiping: report it to chitchat, which logs and goes on.
            sent += self.socket.send_to(&datagram, to).await.context("gossip send failed")?;
            self.metrics.gossip.packets_sent.inc();
            self.metrics.gossip.bytes_sent.add(datagram.len() as u64);
        }
        Ok(SendOutcome { num_bytes_sent: sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        match self.rx.recv().await {
            Some(result) => result,
            None => Err(anyhow::anyhow!("gossip receiver stopped")),
        }
    }
}

/// How long one trip through the loopback codec may take before it is rebuilt.
const CODEC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// chitchat's envelope codec, reached through chitchat's public UDP socket (see the
/// module docs). Used by one task at a time (the socket methods take `&mut self`), so
/// at most two datagrams are ever in flight on the pair and they cannot be reordered.
struct EnvelopeCodec {
    chitchat: Box<dyn Socket>,
    chitchat_addr: SocketAddr,
    raw: tokio::net::UdpSocket,
    raw_addr: SocketAddr,
    /// The wire bytes of a valid envelope, sent after every candidate so that a
    /// candidate chitchat rejects (it skips invalid datagrams silently) cannot leave
    /// `decode` waiting forever.
    sentinel: Vec<u8>,
    nonce: u64,
    buf: Box<[u8]>,
}

/// A Syn for a cluster id no real cluster has (random per codec), so no peer can
/// produce an envelope equal to it.
fn sentinel_envelope(nonce: u64) -> ChitchatEnvelope {
    ChitchatEnvelope {
        version: ProtocolVersion::V0,
        message: ChitchatMessage::Syn {
            cluster_id: format!("murmur-codec-sentinel-{nonce:016x}"),
            digest: Default::default(),
        },
    }
}

impl EnvelopeCodec {
    async fn open() -> anyhow::Result<Self> {
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let chitchat = UdpTransport.open(loopback).await.context("gossip codec socket")?;
        let chitchat_addr = chitchat.local_addr()?;
        let raw = tokio::net::UdpSocket::bind(loopback).await.context("gossip codec socket")?;
        let raw_addr = raw.local_addr()?;
        let nonce = rand::random();
        let buf = vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice();
        let mut codec = Self { chitchat, chitchat_addr, raw, raw_addr, sentinel: Vec::new(), nonce, buf };
        codec.sentinel = codec.encode(sentinel_envelope(nonce)).await?;
        Ok(codec)
    }

    /// An envelope's wire bytes.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        // Drop anything a cancelled earlier call left behind, so the reply read below is
        // this envelope's and nobody else's.
        while self.raw.try_recv_from(&mut self.buf).is_ok() {}
        self.chitchat.send(self.raw_addr, envelope).await?;
        tokio::time::timeout(CODEC_TIMEOUT, async {
            loop {
                let (n, from) = self.raw.recv_from(&mut self.buf).await?;
                // Anyone on this host can send to a loopback port; only chitchat's
                // socket is listened to.
                if from == self.chitchat_addr {
                    return Ok(self.buf[..n].to_vec());
                }
            }
        })
        .await
        .context("gossip codec timed out")?
    }

    /// The envelope in `bytes`, or `None` when chitchat does not accept them.
    async fn decode(&mut self, bytes: &[u8]) -> anyhow::Result<Option<ChitchatEnvelope>> {
        self.raw.send_to(bytes, self.chitchat_addr).await?;
        self.raw.send_to(&self.sentinel, self.chitchat_addr).await?;
        let raw_addr = self.raw_addr;
        let chitchat = &mut self.chitchat;
        let sentinel = sentinel_envelope(self.nonce);
        tokio::time::timeout(CODEC_TIMEOUT, async {
            let mut candidate = None;
            // The sentinel closes every exchange: whatever came before it is the
            // candidate; if the sentinel comes first, chitchat rejected the candidate.
            loop {
                let got = chitchat.recv().await?;
                if got.from_addr != raw_addr {
                    continue;
                }
                if got.envelope == sentinel {
                    return Ok(candidate);
                }
                candidate.get_or_insert(got.envelope);
            }
        })
        .await
        .context("gossip codec timed out")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_loopback_codec_round_trips_and_rejects_garbage() {
        let mut codec = EnvelopeCodec::open().await.expect("codec opens");
        let env = ChitchatEnvelope { version: ProtocolVersion::V1, message: ChitchatMessage::BadCluster };
        let bytes = codec.encode(env).await.expect("encodes");
        assert!(!bytes.is_empty());
        for garbage in [&b"junk"[..], &[], &bytes[..bytes.len() - 1]] {
            assert_eq!(codec.decode(garbage).await.expect("no codec failure"), None, "{garbage:?}");
        }
        let back = codec.decode(&bytes).await.expect("decodes");
        assert_eq!(back, Some(ChitchatEnvelope { version: ProtocolVersion::V1, message: ChitchatMessage::BadCluster }));
        // The codec is still in step after all of that.
        assert_eq!(codec.decode(b"x").await.expect("no failure"), None);
        assert!(codec.decode(&bytes).await.expect("decodes").is_some());
    }
}
