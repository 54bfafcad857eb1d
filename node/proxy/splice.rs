//! Copies bytes both ways between two streams until both directions end, keeping
//! half-close: when one side finishes sending, the other side's write half is shut down
//! (FIN, or QUIC stream finish) and the opposite direction goes on. An idle timeout
//! closes a connection on which nothing moved either way for that long.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::metrics::Counter;

/// Size of each copy buffer: large enough for bulk throughput, small enough for 10,000
/// connections (two buffers each).
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

/// The last time bytes moved, shared by both directions.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
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
    let clock = Arc::new(Activity { start: Instant::now(), last_ms: AtomicU64::new(0) });
    let forward = pump(a_read, b_write, forward_counter, &clock);
    let backward = pump(b_read, a_write, backward_counter, &clock);
    let both = async { tokio::try_join!(forward, backward) };
    let watchdog = async {
        loop {
            let left = idle.saturating_sub(clock.idle_for());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    };
    tokio::select! {
        r = both => r.map(|(forward, backward)| Moved { forward, backward }),
        _ = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, format!("idle for {idle:?}"))),
    }
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
