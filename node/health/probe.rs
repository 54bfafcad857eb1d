//! The probes: TCP connect, HTTP GET (2xx/3xx passes), and a command (exit 0 passes).
//! Each is bounded by the check's timeout and returns a short output for gossip.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::CheckKind;

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// Whether it passed.
    pub passed: bool,
    /// A short description (status code, error).
    pub output: String,
}

impl ProbeResult {
    fn pass(output: impl Into<String>) -> Self {
        Self { passed: true, output: output.into() }
    }
    fn fail(output: impl Into<String>) -> Self {
        Self { passed: false, output: output.into() }
    }
}

/// Bytes of an exec check's stderr kept for its output; the rest is not read.
const MAX_EXEC_OUTPUT: u64 = 512;

/// Runs one probe of `kind` against `target`, giving up after `timeout`.
pub async fn probe(kind: &CheckKind, target: SocketAddr, timeout: Duration) -> ProbeResult {
    // An exec check keeps its own timeout, so that it can kill what it started.
    if matches!(kind, CheckKind::Exec { .. }) {
        return run(kind, target, timeout).await;
    }
    match tokio::time::timeout(timeout, run(kind, target, timeout)).await {
        Ok(r) => r,
        Err(_) => ProbeResult::fail(format!("timed out after {timeout:?}")),
    }
}

async fn run(kind: &CheckKind, target: SocketAddr, timeout: Duration) -> ProbeResult {
    match kind {
        CheckKind::None => ProbeResult::pass("no check"),
        CheckKind::Ttl { .. } => ProbeResult::fail("a TTL check is reported by its app, not probed"),
        CheckKind::Tcp => match TcpStream::connect(target).await {
            Ok(_) => ProbeResult::pass(format!("tcp connect to {target} ok")),
            Err(e) => ProbeResult::fail(format!("tcp connect to {target}: {e}")),
        },
        CheckKind::Http { path } => http_get(target, path).await,
        CheckKind::Exec { command } => exec(command, timeout).await,
    }
}

/// An exec check: `sh -c command` in a process group of its own, so that a timeout kills
/// whatever it started, not only the shell; at most [`MAX_EXEC_OUTPUT`] bytes of its
/// stderr are read (its stdout is discarded).
async fn exec(command: &str, timeout: Duration) -> ProbeResult {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(command).process_group(0).kill_on_drop(true);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return ProbeResult::fail(format!("cannot run `{command}`: {e}")),
    };
    let group = child.id();
    let stderr = child.stderr.take();
    let work = async {
        let mut out = Vec::new();
        if let Some(stderr) = stderr {
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stderr.take(MAX_EXEC_OUTPUT), &mut out).await;
            // Dropped here: a command that writes on gets a broken pipe, not a reader.
        }
        (child.wait().await, out)
    };
    let result = tokio::time::timeout(timeout, work).await;
    if result.is_err() {
        if let Some(pgid) = group {
            // No signal call without unsafe code here: `kill` (procps, util-linux) sends
            // it to the whole group.
            let _ = tokio::process::Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status().await;
        }
    }
    match result {
        Ok((Ok(status), _)) if status.success() => ProbeResult::pass("exit 0"),
        Ok((Ok(status), out)) => ProbeResult::fail(format!("{status}: {}", String::from_utf8_lossy(&out).trim())),
        Ok((Err(e), _)) => ProbeResult::fail(format!("cannot wait for `{command}`: {e}")),
        Err(_) => ProbeResult::fail(format!("timed out after {timeout:?}; its process group was killed")),
    }
}

/// A bare HTTP/1.1 GET that reads only the status line: a health probe needs the code,
/// not a client stack.
async fn http_get(target: SocketAddr, path: &str) -> ProbeResult {
    let mut stream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => return ProbeResult::fail(format!("http connect to {target}: {e}")),
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: murmur-health\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return ProbeResult::fail(format!("http write: {e}"));
    }
    let mut buf = [0u8; 64];
    let mut len = 0;
    while len < buf.len() {
        match stream.read(&mut buf[len..]).await {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return ProbeResult::fail(format!("http read: {e}")),
        }
        if buf[..len].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&buf[..len]);
    let code = line.strip_prefix("HTTP/1.").and_then(|rest| rest.get(2..5)).and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..400).contains(&c) => ProbeResult::pass(format!("HTTP {c}")),
        Some(c) => ProbeResult::fail(format!("HTTP {c}")),
        None => ProbeResult::fail("not an HTTP response"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    async fn http_server(status: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn probes_pass_and_fail_for_the_right_reasons() {
        let t = Duration::from_secs(2);
        let ok = http_server("204 No Content").await;
        let bad = http_server("503 Unavailable").await;
        let http = CheckKind::Http { path: "/health".into() };
        assert!(probe(&http, ok, t).await.passed);
        let r = probe(&http, bad, t).await;
        assert!(!r.passed && r.output.contains("503"), "{r:?}");
        assert!(probe(&CheckKind::Tcp, ok, t).await.passed);
        // A port held (bound, never listening) for the whole check: connecting is
        // refused, and no other test can take the port meanwhile, as one could take a
        // port a dropped listener had just freed.
        let held = tokio::net::TcpSocket::new_v4().expect("socket");
        held.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let closed = held.local_addr().expect("addr");
        assert!(!probe(&CheckKind::Tcp, closed, t).await.passed);
        drop(held);
        assert!(probe(&CheckKind::Exec { command: "true".into() }, ok, t).await.passed);
        assert!(!probe(&CheckKind::Exec { command: "exit 3".into() }, ok, t).await.passed);
        let slow = probe(&CheckKind::Exec { command: "sleep 5".into() }, ok, Duration::from_millis(100)).await;
        assert!(!slow.passed && slow.output.contains("timed out"));
    }

    #[tokio::test]
    async fn an_exec_check_that_times_out_takes_what_it_started_with_it() {
        let ok: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let file = std::env::temp_dir().join(format!("murmur-exec-{}-{}", std::process::id(), rand::random::<u32>()));
        // The shell starts a child of its own and waits: the old check killed only sh.
        let command = format!("sleep 30 & echo $! > {}; wait", file.display());
        let r = probe(&CheckKind::Exec { command }, ok, Duration::from_millis(300)).await;
        assert!(!r.passed && r.output.contains("timed out"), "{r:?}");
        let pid = std::fs::read_to_string(&file).expect("the child's pid").trim().to_owned();
        let _ = std::fs::remove_file(&file);
        let start = std::time::Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Gone, or a zombie waiting for its reaper (init, here), which holds nothing.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.split_whitespace().nth(2) == Some("Z") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "the check's child {pid} outlived its timeout");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Output is read up to its bound, however much the command writes.
        let loud = "head -c 10000000 /dev/zero | tr '\\0' x >&2; exit 1".to_owned();
        let r = probe(&CheckKind::Exec { command: loud }, ok, Duration::from_secs(5)).await;
        assert!(!r.passed && r.output.len() < 1_000, "{} bytes of output kept", r.output.len());
    }
}
