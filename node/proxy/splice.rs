//! Copies bytes both ways between two streams until both directions end, keeping
//! half-close: when one side finishes sending, the other side's write half is shut down
//! (FIN, or QUIC stream finish) and the opposite direction goes on. An idle timeout
//! closes a connection on which nothing moved either way for that long.
//!
//! Between an app's TCP connection and a QUIC stream ([`splice_quic`]), bytes toward
//! QUIC are read into a buffer taken when the socket turns readable and handed to
//! quinn without a copy (a read that leaves room ends the burst without another read
//! that would only block); bytes from QUIC are quinn's own buffers, written out many to
//! one `writev`.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};

use crate::metrics::Counter;

/// Size of each copy buffer of [`splice`] (TCP to TCP, toward endpoints without a
/// sidecar): large enough for bulk throughput. Between an app and a QUIC stream,
/// [`splice_quic`] holds no buffer of its own while the connection is idle.
const BUF: usize = 32 * 1024;

/// Bytes moved each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// From the first pair's reader to the second pair's writer.
    pub forward: u64,
    /// The other way.
    pub backward: u64,
}

async fn pump<R, W>(mut r: R, mut w: W, counter: Option<&Counter>, clock: &Activity) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            // Half-close: the peer learns this direction is done; the other goes on.
            w.shutdown().await?;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        if let Some(c) = counter {
            c.add(n as u64);
        }
        clock.touch();
    }
}

/// The first buffer taken when an app's socket turns readable: a request or a reply
/// of a few KB fits, and costs no more than that.
const FIRST_READ: usize = 4 * 1024;
/// The buffers taken once a read has filled one: bulk moves in reads this large.
const BULK_READ: usize = 64 * 1024;
/// A buffer with less room than this left is replaced rather than read into.
const MIN_ROOM: usize = 1024;

/// TCP → QUIC. No buffer is held while the socket is idle: one is taken when it turns
/// readable (small first, large once reads fill it) and dropped when the socket has
/// nothing more. Every read goes to quinn in the buffer it was read into, without a
/// copy (quinn keeps it until the peer acknowledges it).
async fn tcp_to_quic(
    r: &tokio::net::tcp::OwnedReadHalf,
    w: &mut quinn::SendStream,
    counter: Option<&Counter>,
    clock: &Activity,
) -> io::Result<u64> {
    let mut total = 0;
    loop {
        let ready = r.as_ref().ready(Interest::READABLE).await?;
        // Once the peer's FIN is in, no new readiness will come: read until 0.
        let eof_pending = ready.is_read_closed();
        let (mut buf, mut size) = (bytes::BytesMut::new(), FIRST_READ);
        loop {
            if buf.capacity() - buf.len() < MIN_ROOM {
                buf = bytes::BytesMut::with_capacity(size);
            }
            let room = buf.capacity() - buf.len();
            let (n, drained) = match read_noting_drained(r, &mut buf, room, eof_pending) {
                Ok((0, _)) => {
                    // Half-close: the peer learns this direction is done.
                    w.finish()?;
                    return Ok(total);
                }
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            if n == room {
                size = BULK_READ;
            }
            w.write_chunk(buf.split_to(n).freeze()).await?;
            total += n as u64;
            if let Some(c) = counter {
                c.add(n as u64);
            }
            clock.touch();
            if drained {
                break;
            }
        }
    }
}

/// One read into `buf` (`room` bytes free). A read that leaves room found the socket's
/// queue empty, so the socket is marked not readable at once (as nginx does), saving
/// the read that would only say "would block" — one system call per request on a
/// keep-alive connection. Data that arrives meanwhile makes it readable again (tokio
/// clears only the readiness this read saw). Not when `eof_pending`: the FIN's
/// readiness was the last, and the 0 must still be read. Returns (bytes, drained).
fn read_noting_drained(
    r: &tokio::net::tcp::OwnedReadHalf,
    buf: &mut bytes::BytesMut,
    room: usize,
    eof_pending: bool,
) -> io::Result<(usize, bool)> {
    let mut short = None;
    let read = r.as_ref().try_io(Interest::READABLE, || match r.try_read_buf(buf) {
        Ok(n) if n > 0 && n < room && !eof_pending => {
            short = Some(n);
            // Makes try_io clear the readiness this read used.
            Err(io::ErrorKind::WouldBlock.into())
        }
        other => other,
    });
    match (read, short) {
        (_, Some(n)) => Ok((n, true)),
        (Ok(n), None) => Ok((n, false)),
        (Err(e), None) => Err(e),
    }
}

/// Chunks taken from quinn at once, and written to the socket in one `writev`.
const CHUNKS: usize = 32;

/// QUIC → TCP: `early` (read from the stream with its header) first, then quinn's own
/// buffers (a packet's worth each) as they are, many to one `writev`, with no copy into
/// a buffer of ours.
async fn quic_to_tcp(
    r: &mut quinn::RecvStream,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    early: &[u8],
    counter: Option<&Counter>,
    clock: &Activity,
) -> io::Result<u64> {
    w.write_all(early).await?;
    let mut total = early.len() as u64;
    if let Some(c) = counter {
        c.add(total);
    }
    let mut chunks: [bytes::Bytes; CHUNKS] = std::array::from_fn(|_| bytes::Bytes::new());
    while let Some(n) = r.read_chunks(&mut chunks).await? {
        let moved: usize = chunks[..n].iter().map(bytes::Bytes::len).sum();
        write_all_chunks(w, &mut chunks[..n]).await?;
        total += moved as u64;
        if let Some(c) = counter {
            c.add(moved as u64);
        }
        clock.touch();
    }
    w.shutdown().await?;
    Ok(total)
}

/// Writes every byte of `chunks` with vectored writes, emptying them.
async fn write_all_chunks(w: &mut tokio::net::tcp::OwnedWriteHalf, chunks: &mut [bytes::Bytes]) -> io::Result<()> {
    use bytes::Buf;
    let mut first = 0;
    loop {
        while chunks.get(first).is_some_and(bytes::Bytes::is_empty) {
            first += 1;
        }
        if first == chunks.len() {
            return Ok(());
        }
        let mut written = {
            let mut slices = [io::IoSlice::new(&[]); CHUNKS];
            let count = (chunks.len() - first).min(CHUNKS);
            for (slice, chunk) in slices.iter_mut().zip(&chunks[first..]) {
                *slice = io::IoSlice::new(chunk);
            }
            w.write_vectored(&slices[..count]).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        for chunk in &mut chunks[first..] {
            let take = written.min(chunk.len());
            chunk.advance(take);
            written -= take;
            if written == 0 {
                break;
            }
        }
    }
}

/// [`splice`] between an app's TCP connection and a QUIC stream, without copy buffers
/// of its own (see [`tcp_to_quic`] and [`quic_to_tcp`]). `early` is what was read from
/// the stream together with its header (the peer's app spoke first): it goes to the app
/// before the rest and counts as moved. `Moved::forward` is TCP → QUIC.
pub async fn splice_quic(
    tcp: (&tokio::net::tcp::OwnedReadHalf, &mut tokio::net::tcp::OwnedWriteHalf),
    quic: (&mut quinn::RecvStream, &mut quinn::SendStream),
    early: &[u8],
    idle: Duration,
    to_quic: Option<&Counter>,
    from_quic: Option<&Counter>,
) -> io::Result<Moved> {
    let (tcp_r, tcp_w) = tcp;
    let (quic_r, quic_w) = quic;
    let clock = Activity::new();
    let forward = tcp_to_quic(tcp_r, quic_w, to_quic, &clock);
    let backward = quic_to_tcp(quic_r, tcp_w, early, from_quic, &clock);
    both_until_idle(forward, backward, &clock, idle).await
}

/// Both directions to their end, or a timeout once nothing moved for `idle`.
async fn both_until_idle(
    forward: impl std::future::Future<Output = io::Result<u64>>,
    backward: impl std::future::Future<Output = io::Result<u64>>,
    clock: &Activity,
    idle: Duration,
) -> io::Result<Moved> {
    let both = async { tokio::try_join!(forward, backward) };
    tokio::select! {
        r = both => r.map(|(forward, backward)| Moved { forward, backward }),
        _ = clock.idle(idle) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("idle for {idle:?}"))),
    }
}

/// The last time bytes moved, shared by both directions.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
    /// Returns once nothing has moved for `idle`.
    async fn idle(&self, idle: Duration) {
        loop {
            let left = idle.saturating_sub(self.idle_for());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    }
}

/// Splices `(a_read, a_write)` with `(b_read, b_write)`. Returns when both directions
/// have ended, when either fails, or after `idle` without a byte either way.
#[allow(clippy::too_many_arguments)]
pub async fn splice<AR, AW, BR, BW>(
    a_read: AR,
    a_write: AW,
    b_read: BR,
    b_write: BW,
    idle: Duration,
    forward_counter: Option<&Counter>,
    backward_counter: Option<&Counter>,
) -> io::Result<Moved>
where
    AR: AsyncRead + Unpin,
    AW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    let clock = Activity::new();
    let forward = pump(a_read, b_write, forward_counter, &clock);
    let backward = pump(b_read, a_write, backward_counter, &clock);
    both_until_idle(forward, backward, &clock, idle).await
}

/// The QUIC error code sent when a proxied connection breaks.
pub const RESET_CODE: u32 = 1;

/// Breaks a TCP connection with a reset rather than a FIN, so the app sees a failure
/// rather than a clean end of a possibly cut-off reply.
// tokio deprecates `set_linger` because a positive linger blocks the thread on drop; a
// zero linger never blocks (the kernel sends RST at once), which is the intent here.
#[allow(deprecated)]
pub fn abort_tcp(read: tokio::net::tcp::OwnedReadHalf, write: tokio::net::tcp::OwnedWriteHalf) {
    if let Ok(stream) = read.reunite(write) {
        let _ = stream.set_linger(Some(Duration::ZERO));
    }
}

/// Breaks a QUIC stream both ways (a dropped `SendStream` would finish it cleanly).
pub fn abort_quic(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    let _ = send.reset(quinn::VarInt::from_u32(RESET_CODE));
    let _ = recv.stop(quinn::VarInt::from_u32(RESET_CODE));
}

#[cfg(test)]
mod tests {
    use tokio::io::duplex;

    use super::*;

    #[tokio::test]
    async fn a_short_read_marks_the_socket_drained_and_new_data_or_a_fin_still_wake_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut app = tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (sidecar, _) = listener.accept().await.expect("accept");
        let (r, _w) = sidecar.into_split();
        async fn ready(
            r: &tokio::net::tcp::OwnedReadHalf,
        ) -> Result<io::Result<tokio::io::Ready>, tokio::time::error::Elapsed> {
            let stream: &tokio::net::TcpStream = r.as_ref();
            tokio::time::timeout(Duration::from_millis(200), stream.ready(Interest::READABLE)).await
        }
        let mut buf = bytes::BytesMut::with_capacity(4096);
        app.write_all(b"abc").await.expect("write");
        ready(&r).await.expect("readable").expect("ready");
        assert_eq!(read_noting_drained(&r, &mut buf, 4096, false).expect("read"), (3, true));
        // No read that would block was made, and none is needed: not readable any more.
        assert!(ready(&r).await.is_err(), "readiness was left set after a short read");
        // New data wakes it again.
        app.write_all(b"de").await.expect("write");
        let seen = ready(&r).await.expect("readable after new data").expect("ready");
        assert_eq!(read_noting_drained(&r, &mut buf, 4096, seen.is_read_closed()).expect("read").0, 2);
        // Data with the FIN behind it: the readiness is kept, so the 0 is read too.
        app.write_all(b"fg").await.expect("write");
        app.shutdown().await.expect("half-close");
        // Until the reactor has seen the FIN as well as the bytes before it.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !ready(&r).await.expect("readable").expect("ready").is_read_closed() {
            assert!(Instant::now() < deadline, "the FIN never showed in the readiness");
            tokio::task::yield_now().await;
        }
        assert_eq!(read_noting_drained(&r, &mut buf, 4096, true).expect("read"), (2, false));
        assert_eq!(read_noting_drained(&r, &mut buf, 4096, true).expect("read"), (0, false));
        assert_eq!(&buf[..], b"abcdefg");
    }

    #[tokio::test]
    async fn bytes_flow_both_ways_with_half_close() {
        let (app, app_side) = duplex(1024);
        let (peer, peer_side) = duplex(1024);
        let (ar, aw) = tokio::io::split(app_side);
        let (br, bw) = tokio::io::split(peer_side);
        let task = tokio::spawn(async move { splice(ar, aw, br, bw, Duration::from_secs(5), None, None).await });
        let (mut app_r, mut app_w) = tokio::io::split(app);
        let (mut peer_r, mut peer_w) = tokio::io::split(peer);
        app_w.write_all(b"request").await.expect("write");
        app_w.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        peer_r.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"request", "the peer sees EOF after the request");
        // The other direction still works after the half-close.
        peer_w.write_all(b"response").await.expect("write");
        peer_w.shutdown().await.expect("close");
        let mut back = Vec::new();
        app_r.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"response");
        let moved = task.await.expect("join").expect("splice");
        assert_eq!(moved, Moved { forward: 7, backward: 8 });
    }

    #[tokio::test]
    async fn chunks_larger_than_the_socket_takes_at_once_are_written_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got
        });
        let (_r, mut w) = tokio::net::TcpStream::connect(addr).await.expect("connect").into_split();
        // 32 chunks of 100 KB: far more than one writev moves, so most calls are partial.
        let want: Vec<u8> = (0..CHUNKS * 100_000).map(|i| (i % 251) as u8).collect();
        let mut chunks: Vec<bytes::Bytes> = want.chunks(100_000).map(bytes::Bytes::copy_from_slice).collect();
        chunks.insert(3, bytes::Bytes::new());
        write_all_chunks(&mut w, &mut chunks[..CHUNKS]).await.expect("write");
        write_all_chunks(&mut w, &mut chunks[CHUNKS..]).await.expect("write the rest");
        assert!(chunks.iter().all(bytes::Bytes::is_empty), "every chunk emptied");
        w.shutdown().await.expect("close");
        let got = reader.await.expect("join");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes arrive in order");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (_app, app_side) = duplex(64);
        let (_peer, peer_side) = duplex(64);
        let (ar, aw) = tokio::io::split(app_side);
        let (br, bw) = tokio::io::split(peer_side);
        let err = splice(ar, aw, br, bw, Duration::from_secs(30), None, None).await.expect_err("idle");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
