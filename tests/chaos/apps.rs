//! The apps of the scenarios in tests/chaos/: an echo server; a client that resolves
//! its upstream with the standard resolver (getaddrinfo, through the host's
//! /etc/resolv.conf, which `ip netns exec` replaces with /etc/netns/NAME/resolv.conf)
//! and checks every transfer byte for byte; one that holds a connection open; and one
//! HTTP GET, for reading a tool's API inside a host.
//!
//! They run as processes in a host's namespace: the test binary starts itself there
//! with `MURMUR_CHAOS_APP` set (see `Net::start_app`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::{Duration, Instant};

/// The port the echo app listens on and the client calls.
pub const PORT: u16 = 9000;

/// Runs the app named by `MURMUR_CHAOS_APP`; false when none is named.
pub fn run_from_env() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    match std::env::var("MURMUR_CHAOS_APP").as_deref() {
        Ok("echo") => echo(&var("MURMUR_CHAOS_BIND")),
        Ok("client") => {
            client(&var("MURMUR_CHAOS_NAME"), Path::new(&var("MURMUR_CHAOS_STOP")), &var("MURMUR_CHAOS_OUT"))
        }
        Ok("hold") => hold(&var("MURMUR_CHAOS_NAME"), &var("MURMUR_CHAOS_OUT")),
        Ok("get") => get(&var("MURMUR_CHAOS_ADDR"), &var("MURMUR_CHAOS_PATH"), &var("MURMUR_CHAOS_OUT")),
        Ok(other) => panic!("unknown MURMUR_CHAOS_APP {other:?}"),
        Err(_) => return false,
    }
    true
}

/// Echoes every connection to `ip`:PORT until its writer closes, then closes.
fn echo(ip: &str) {
    let listener = TcpListener::bind((ip, PORT)).expect("the echo app binds its port");
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let Ok(mut reader) = conn.try_clone() else { return };
            let mut writer = conn;
            if std::io::copy(&mut reader, &mut writer).is_ok() {
                let _ = writer.shutdown(Shutdown::Write);
            }
        });
    }
}

/// What one client did.
#[derive(Debug, Default)]
pub struct Report {
    /// Transfers that came back byte-exact.
    pub ok: u64,
    /// Transfers that failed in any way (lookup, connect, reset, short or wrong bytes).
    pub failed: u64,
    /// Bytes sent and received back byte-exact.
    pub bytes: u64,
    /// One line per failure: when (since the client started) and why.
    pub failures: Vec<String>,
}

impl Report {
    fn write(&self, path: &str) {
        let mut text = format!("ok {}\nfailed {}\nbytes {}\n", self.ok, self.failed, self.bytes);
        for f in &self.failures {
            text.push_str(&format!("failure {f}\n"));
        }
        std::fs::write(path, text).expect("the client writes its report");
    }

    /// Reads a report written by a client.
    pub fn read(path: &std::path::Path) -> Option<Report> {
        let text = std::fs::read_to_string(path).ok()?;
        let mut r = Report::default();
        for line in text.lines() {
            let (k, v) = line.split_once(' ')?;
            match k {
                "ok" => r.ok = v.parse().ok()?,
                "failed" => r.failed = v.parse().ok()?,
                "bytes" => r.bytes = v.parse().ok()?,
                "failure" => r.failures.push(v.to_owned()),
                _ => return None,
            }
        }
        Some(r)
    }
}

/// Calls `name`:PORT back to back until the file `stop` exists, then writes its report
/// to `out`. Every call looks the name up again, as a short-lived client would.
fn client(name: &str, stop: &Path, out: &str) {
    let start = Instant::now();
    let mut report = Report::default();
    let mut rng = u64::from(std::process::id()) | 1;
    while !stop.exists() {
        // 1 KB to 256 KB, each byte random.
        let len = 1024 + (next(&mut rng) % (255 * 1024)) as usize;
        let payload: Vec<u8> = (0..len.div_ceil(8)).flat_map(|_| next(&mut rng).to_le_bytes()).take(len).collect();
        match transfer(name, &payload) {
            Ok(()) => {
                report.ok += 1;
                report.bytes += len as u64;
            }
            Err(e) => {
                report.failed += 1;
                report.failures.push(format!("{:.3}s {e}", start.elapsed().as_secs_f64()));
            }
        }
    }
    report.write(out);
}

/// One call: look up, connect, send `payload`, read the echo, compare SHA-256.
fn transfer(name: &str, payload: &[u8]) -> Result<(), String> {
    let addr = (name, PORT)
        .to_socket_addrs()
        .map_err(|e| format!("getaddrinfo {name}: {e}"))?
        .next()
        .ok_or_else(|| format!("getaddrinfo {name}: no address"))?;
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect {addr}: {e}"))?;
    let timeout = Some(Duration::from_secs(10));
    stream.set_read_timeout(timeout).and_then(|()| stream.set_write_timeout(timeout)).map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sent = payload.to_vec();
    // Written from another thread, so that neither side's buffers can stall the echo.
    let send = std::thread::spawn(move || writer.write_all(&sent).and_then(|()| writer.shutdown(Shutdown::Write)));
    let mut got = Vec::with_capacity(payload.len());
    let read = (&stream).read_to_end(&mut got);
    let sent = send.join().map_err(|_| "the writer panicked".to_owned())?;
    sent.map_err(|e| format!("send to {addr}: {e}"))?;
    read.map_err(|e| format!("receive from {addr}: {e} after {} bytes", got.len()))?;
    let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
    if got.len() != payload.len() || digest(&got).as_ref() != digest(payload).as_ref() {
        return Err(format!("echo from {addr}: {} bytes back of {}, hashes differ", got.len(), payload.len()));
    }
    Ok(())
}

/// Opens one connection to `name`:PORT, checks one echo, writes `held` to `out`, then
/// waits (up to 60 s) for the connection to end and appends `ended UNIX_MS HOW`.
fn hold(name: &str, out: &str) {
    let line = |text: String| {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(out).expect("open the report");
        f.write_all(text.as_bytes()).expect("write the report");
    };
    let addr = (name, PORT).to_socket_addrs().expect("getaddrinfo").next().expect("an address");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(b"ping").expect("send");
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"ping");
    line("held\n".into());
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let how = match stream.read(&mut echo) {
        Ok(0) => "eof".to_owned(),
        Ok(_) => "data".to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => "timeout".to_owned(),
        Err(e) => format!("{:?}", e.kind()),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
    line(format!("ended {now} {how}\n"));
}

/// One HTTP/1.0 GET of `path` from `addr` (a tool's API in the host, which the test
/// cannot reach from outside the namespace); writes the body to `out`, or nothing when
/// the tool does not answer (yet).
fn get(addr: &str, path: &str, out: &str) {
    let Ok(mut stream) = TcpStream::connect(addr) else { return };
    let timeout = Some(Duration::from_secs(5));
    let _ = stream.set_read_timeout(timeout);
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut reply = Vec::new();
    if stream.write_all(request.as_bytes()).and_then(|()| stream.read_to_end(&mut reply)).is_err() {
        return;
    }
    let reply = String::from_utf8_lossy(&reply);
    if let Some((head, body)) = reply.split_once("\r\n\r\n") {
        if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
            std::fs::write(out, body).expect("write the body");
        }
    }
}

/// xorshift64: enough randomness for payloads.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
