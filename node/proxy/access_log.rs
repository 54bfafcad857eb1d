//! The access log: one JSON line per proxied connection or UDP flow, opt-in with
//! `--access-log PATH|-`. Connections hand their line to a channel and never wait on
//! the disk; one task writes, in batches, and reopens the file when told (SIGHUP, for
//! logrotate). A line that finds the channel full is dropped and counted, not waited for.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::metrics::Metrics;

/// Lines waiting for the writer at most; past that they are dropped (and counted).
const QUEUE: usize = 16 * 1024;

/// One proxied connection or UDP flow, as it is logged.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    /// When the app's connection (or first datagram) arrived, unix ms.
    pub start_unix_ms: u64,
    /// Until it ended, ms.
    pub duration_ms: u64,
    /// `tcp` or `udp`.
    pub transport: &'static str,
    /// The upstream's alias.
    pub upstream: String,
    /// The service it reaches.
    pub service: String,
    /// The instance that served it (none when no attempt connected).
    pub endpoint: Option<String>,
    /// That instance's node.
    pub peer_node: Option<String>,
    /// Bytes from the app to the endpoint (none when a TCP connection ended with an
    /// error: the splice does not report what it moved then).
    pub bytes_sent: Option<u64>,
    /// Bytes from the endpoint to the app (the same).
    pub bytes_received: Option<u64>,
    /// `ok`, `error` (ended with an error after connecting), `failed` (no attempt
    /// connected), `no_endpoints` or `rejected` (circuit breaker).
    pub result: &'static str,
    /// Why, when not `ok`: the last attempt's failure cause, or the error.
    pub cause: Option<String>,
    /// Attempts after the first.
    pub retries: u32,
}

/// Where lines go: a file (appended to) or standard output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `-`.
    Stdout,
    /// A path.
    File(PathBuf),
}

impl Target {
    /// `-` is standard output; anything else a file.
    pub fn from_path(path: &std::path::Path) -> Target {
        if path.as_os_str() == "-" {
            Target::Stdout
        } else {
            Target::File(path.to_owned())
        }
    }
}

/// The sending side; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    metrics: Arc<Metrics>,
    reopen: Arc<Notify>,
}

impl AccessLog {
    /// Queues a line; drops it (counted in `murmur_proxy_access_log_dropped_total`)
    /// when the writer is that far behind.
    pub fn log(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.metrics.proxy.access_log_dropped.inc();
        }
    }

    /// Has the writer reopen its file (after logrotate moved it).
    pub fn reopen(&self) {
        self.reopen.notify_one();
    }
}

enum Sink {
    Stdout(tokio::io::Stdout),
    File(tokio::fs::File),
}

impl Sink {
    async fn open(target: &Target) -> std::io::Result<Sink> {
        match target {
            Target::Stdout => Ok(Sink::Stdout(tokio::io::stdout())),
            Target::File(path) => {
                Ok(Sink::File(tokio::fs::OpenOptions::new().create(true).append(true).open(path).await?))
            }
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Sink::File(f) => {
                f.write_all(bytes).await?;
                f.flush().await
            }
        }
    }
}

/// Opens `target` (so that a path that cannot be written fails at start, naming it) and
/// starts the writer; it ends with `cancel` after writing what is queued.
pub async fn start(
    target: Target,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Result<AccessLog, std::io::Error> {
    let mut sink = Sink::open(&target).await?;
    let (tx, mut rx) = mpsc::channel::<Entry>(QUEUE);
    let reopen = Arc::new(Notify::new());
    let log = AccessLog { tx, metrics, reopen: reopen.clone() };
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    buf.clear();
                    while let Ok(e) = rx.try_recv() {
                        line(&mut buf, &e);
                    }
                    let _ = sink.write(&buf).await;
                    return;
                }
                _ = reopen.notified() => match Sink::open(&target).await {
                    Ok(s) => sink = s,
                    Err(e) => warn!(error = %e, ?target, "access log not reopened; still writing to the old file"),
                },
                first = rx.recv() => {
                    let Some(first) = first else { return };
                    buf.clear();
                    line(&mut buf, &first);
                    // Take what else is queued, so one write carries a burst.
                    while buf.len() < 64 * 1024 {
                        match rx.try_recv() {
                            Ok(e) => line(&mut buf, &e),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = sink.write(&buf).await {
                        warn!(error = %e, ?target, "access log write failed");
                    }
                }
            }
        }
    });
    Ok(log)
}

fn line(buf: &mut Vec<u8>, entry: &Entry) {
    if serde_json::to_writer(&mut *buf, entry).is_ok() {
        buf.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> Entry {
        Entry {
            start_unix_ms: n,
            duration_ms: 1,
            transport: "tcp",
            upstream: "orders".into(),
            service: "orders".into(),
            endpoint: Some("o-1".into()),
            peer_node: Some("n1".into()),
            bytes_sent: Some(10),
            bytes_received: Some(20),
            result: "ok",
            cause: None,
            retries: 0,
        }
    }

    #[tokio::test]
    async fn lines_are_written_and_the_file_is_reopened_after_a_rotation() {
        let dir = std::env::temp_dir().join(format!("murmur-access-{}-{}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("access.log");
        let cancel = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let log = start(Target::File(path.clone()), metrics.clone(), cancel.clone()).await.expect("opens");
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        log.log(entry(1));
        let until = |p: PathBuf, n: usize| async move {
            for _ in 0..200 {
                if read(&p).lines().count() == n {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("{} does not hold {n} lines: {:?}", p.display(), read(&p));
        };
        until(path.clone(), 1).await;
        let first: serde_json::Value = serde_json::from_str(read(&path).trim()).expect("JSON");
        assert_eq!(first["endpoint"], "o-1");
        assert_eq!(first["bytes_received"], 20);
        // logrotate moves the file away, then sends SIGHUP: new lines go to a new file.
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        log.reopen();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        log.log(entry(2));
        until(path.clone(), 1).await;
        assert_eq!(read(&rotated).lines().count(), 1, "the old file keeps its line only");
        assert!(start(Target::File(dir.join("no/such/dir/log")), metrics, cancel.clone()).await.is_err());
        cancel.cancel();
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
