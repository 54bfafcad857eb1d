//! Forwarding of names outside the namespace to the upstream resolvers, so the stub can
//! be an app's only nameserver. The query goes out byte for byte as the app sent it;
//! a truncated UDP reply is asked again over TCP, as a stub resolver would. A dead
//! upstream is remembered and asked last for a while, and a slow one is hedged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// Time one upstream gets to answer before it counts as failing.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Time an upstream gets before the next one is asked too (the first answer wins).
pub const HEDGE_AFTER: Duration = Duration::from_millis(400);
/// How long an upstream that failed (no answer in time, or beaten after a hedge) is
/// asked only after the others.
pub const HOLD_DOWN: Duration = Duration::from_secs(30);
/// Largest reply read from an upstream.
const MAX_REPLY: usize = 65_535;

/// Forwards in flight at once; past this, queries are refused rather than queued, so a
/// flood cannot exhaust sockets and memory.
pub const MAX_IN_FLIGHT: usize = 256;
/// Forwards in flight at once for one client socket: one socket cannot take every slot.
pub const MAX_IN_FLIGHT_PER_SOURCE: u32 = 32;

/// Why a query was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardError {
    /// Too many forwards in flight, overall or from this client socket.
    Busy,
    /// No upstream answered.
    NoAnswer,
}

/// Forwards queries to the upstreams, a bounded number at a time. Upstreams are asked in
/// their order, healthy ones first: one that failed lately is asked after the others
/// for [`HOLD_DOWN`], so a dead first upstream costs its timeout once, not on every
/// query. A query whose upstream is silent for [`HEDGE_AFTER`] goes to the next one too.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    slots: tokio::sync::Semaphore,
    failing_until: Mutex<Vec<Option<Instant>>>,
    per_source: Mutex<HashMap<SocketAddr, u32>>,
}

/// A slot of one client socket, given back when dropped.
struct SourceSlot<'a> {
    forwarder: &'a Forwarder,
    from: SocketAddr,
}

impl Drop for SourceSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.forwarder.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.from) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.from);
            }
        }
    }
}

impl Forwarder {
    /// A forwarder to these upstreams.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        let failing_until = Mutex::new(vec![None; upstreams.len()]);
        Self {
            upstreams,
            slots: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            failing_until,
            per_source: Mutex::default(),
        }
    }

    fn source_slot(&self, from: SocketAddr) -> Option<SourceSlot<'_>> {
        let mut map = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(from).or_default();
        if *n >= MAX_IN_FLIGHT_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot { forwarder: self, from })
    }

    /// Upstream indices in the order to ask them now: healthy first, each group in the
    /// configured order.
    fn order(&self, now: Instant) -> Vec<usize> {
        let failing = self.failing_until.lock().unwrap_or_else(|p| p.into_inner());
        let held = |i: &usize| failing[*i].is_some_and(|until| until > now);
        let (mut first, later): (Vec<usize>, Vec<usize>) = (0..self.upstreams.len()).partition(|i| !held(i));
        first.extend(later);
        first
    }

    fn mark(&self, upstream: usize, failed: bool, now: Instant) {
        let mut failing = self.failing_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = failing.get_mut(upstream) {
            *slot = failed.then(|| now + HOLD_DOWN);
        }
    }

    /// Sends `query` (wire bytes, from the client socket `from`) to the upstreams until
    /// one answers with a reply to the same question; returns it.
    pub async fn forward(
        &self,
        query: &[u8],
        question: &hickory_proto::op::Query,
        id: u16,
        from: SocketAddr,
    ) -> Result<Message, ForwardError> {
        let _slot = self.slots.try_acquire().map_err(|_| ForwardError::Busy)?;
        let _source = self.source_slot(from).ok_or(ForwardError::Busy)?;
        let order = self.order(Instant::now());
        let query: Arc<[u8]> = query.into();
        let mut asking: JoinSet<(usize, Option<Message>)> = JoinSet::new();
        let mut started = Vec::new();
        let mut next = 0;
        let mut hedge = tokio::time::Instant::now();
        loop {
            if next < order.len() && (asking.is_empty() || tokio::time::Instant::now() >= hedge) {
                let i = order[next];
                next += 1;
                started.push(i);
                hedge = tokio::time::Instant::now() + HEDGE_AFTER;
                let (upstream, query, question) = (self.upstreams[i], query.clone(), question.clone());
                asking.spawn(async move {
                    let matches = move |m: &Message| m.metadata.id == id && m.queries.first() == Some(&question);
                    (i, ask(upstream, &query, &matches).await)
                });
            }
            tokio::select! {
                done = asking.join_next() => match done {
                    Some(Ok((i, Some(reply)))) => {
                        let now = Instant::now();
                        self.mark(i, false, now);
                        // Those asked before it and still silent lost to it: ask them last
                        // for a while.
                        for earlier in started.iter().take_while(|&&e| e != i) {
                            self.mark(*earlier, true, now);
                        }
                        return Ok(reply);
                    }
                    Some(Ok((i, None))) => self.mark(i, true, Instant::now()),
                    Some(Err(_)) => {}
                    None if next >= order.len() => return Err(ForwardError::NoAnswer),
                    None => {}
                },
                _ = tokio::time::sleep_until(hedge), if next < order.len() => {}
            }
        }
    }
}

/// Asks one upstream over UDP, and again over TCP when the reply is truncated; `None`
/// when it did not answer in time.
async fn ask(upstream: SocketAddr, query: &[u8], matches: &(dyn Fn(&Message) -> bool + Sync)) -> Option<Message> {
    let reply = tokio::time::timeout(UPSTREAM_TIMEOUT, ask_udp(upstream, query, matches)).await.ok().flatten()?;
    if reply.metadata.truncation {
        if let Ok(Some(full)) = tokio::time::timeout(UPSTREAM_TIMEOUT, ask_tcp(upstream, query, matches)).await {
            return Some(full);
        }
    }
    Some(reply)
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

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    #[tokio::test]
    async fn one_client_socket_cannot_take_every_slot() {
        // An upstream that never answers: every forward waits its timeout.
        let blackhole = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let f = Arc::new(Forwarder::new(vec![blackhole.local_addr().expect("addr")]));
        let q = Query::query(Name::from_ascii("example.org.").expect("name"), RecordType::A);
        let greedy: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let mut held = JoinSet::new();
        for i in 0..MAX_IN_FLIGHT_PER_SOURCE {
            let (f, q) = (f.clone(), q.clone());
            held.spawn(async move { f.forward(b"query", &q, i as u16, greedy).await });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(f.forward(b"query", &q, 99, greedy).await.err(), Some(ForwardError::Busy));
        // Another socket is not refused for it: it waits on the upstream like the rest.
        let other: SocketAddr = "127.0.0.1:5001".parse().expect("addr");
        let attempt = tokio::time::timeout(Duration::from_millis(200), f.forward(b"query", &q, 100, other)).await;
        assert!(attempt.is_err(), "still waiting on the upstream, not refused");
        held.abort_all();
        while held.join_next().await.is_some() {}
        assert!(f.per_source.lock().expect("lock").is_empty(), "every slot given back");
    }
}
