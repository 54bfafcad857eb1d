//! Proxy stream frames: what two sidecars say at the start of each proxied stream.
//!
//! ```text
//! frame = [version: u8][kind: u8][body length: u16 BE][body: bincode]
//! kind 1 Open   caller → inbound: which service and port, who calls
//! kind 2 Ack    inbound → caller: the app accepted; app bytes follow both ways
//! kind 3 Refuse inbound → caller: why not; the stream is then closed
//! ```
//!
//! Decoding is incremental (a frame may arrive in pieces) and bounded by
//! [`MAX_FRAME_BODY`]; it never panics on any input.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::{NodeName, ServiceName};

/// The frame version this build speaks.
pub const FRAME_VERSION: u8 = 1;
/// Largest frame body accepted, in bytes; a header is far smaller.
pub const MAX_FRAME_BODY: usize = 1024;
/// Longest refusal message kept, in bytes.
pub const MAX_REFUSE_MESSAGE: usize = 256;
const HEADER_LEN: usize = 4;
const KIND_OPEN: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_REFUSE: u8 = 3;

/// The transport an upstream uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// A TCP byte stream carried on the QUIC stream.
    Tcp,
    /// UDP datagrams carried as QUIC datagrams tagged with the stream's flow id.
    Udp,
}

/// The first frame of a proxied stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// The service the caller wants.
    pub service: ServiceName,
    /// The port of the instance it picked.
    pub port: u16,
    /// The caller's service (checked against its certificate and the allow list).
    pub caller: ServiceName,
    /// The caller's node, for logs.
    pub caller_node: NodeName,
    /// TCP or UDP.
    pub transport: Transport,
}

/// Why an inbound sidecar refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefuseCode {
    /// No such service (or port) registered on this node.
    UnknownService,
    /// The caller is not in the service's allowed callers, or its certificate does not
    /// name the service it claims.
    NotAllowed,
    /// The local app did not accept the connection.
    AppUnreachable,
    /// The instance is draining.
    Draining,
    /// The header did not decode or was too large.
    BadHeader,
    /// The header's version is not spoken here.
    BadVersion,
}

impl RefuseCode {
    /// Whether trying another endpoint can help.
    pub fn is_retryable(self) -> bool {
        matches!(self, RefuseCode::UnknownService | RefuseCode::AppUnreachable | RefuseCode::Draining)
    }

    /// A short label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseCode::UnknownService => "unknown_service",
            RefuseCode::NotAllowed => "not_allowed",
            RefuseCode::AppUnreachable => "app_unreachable",
            RefuseCode::Draining => "draining",
            RefuseCode::BadHeader => "bad_header",
            RefuseCode::BadVersion => "bad_version",
        }
    }
}

/// A refusal with a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refuse {
    /// Why.
    pub code: RefuseCode,
    /// What to do about it.
    pub message: String,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Open a stream.
    Open(Open),
    /// The stream is accepted.
    Ack,
    /// The stream is refused.
    Refuse(Refuse),
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The version byte is not [`FRAME_VERSION`].
    #[error("frame version {0} is not spoken here (this agent speaks {FRAME_VERSION})")]
    Version(u8),
    /// The kind byte is unknown.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// The body is longer than [`MAX_FRAME_BODY`].
    #[error("frame body of {0} bytes is over the {MAX_FRAME_BODY}-byte limit")]
    TooLarge(usize),
    /// The body does not decode.
    #[error("frame body does not decode: {0}")]
    Malformed(String),
}

impl FrameError {
    /// The refusal an inbound sidecar answers this error with.
    pub fn refuse_code(&self) -> RefuseCode {
        match self {
            FrameError::Version(_) => RefuseCode::BadVersion,
            _ => RefuseCode::BadHeader,
        }
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BODY>()
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(FRAME_VERSION);
    out.push(kind);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn body<T: Serialize>(value: &T) -> Vec<u8> {
    // Our own frames are built from validated names and a capped message; they fit.
    bincode::serde::encode_to_vec(value, config()).unwrap_or_default()
}

impl Frame {
    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Frame::Open(open) => frame(KIND_OPEN, &body(open)),
            Frame::Ack => frame(KIND_ACK, &[]),
            Frame::Refuse(r) => {
                let mut r = r.clone();
                let mut end = r.message.len().min(MAX_REFUSE_MESSAGE);
                while !r.message.is_char_boundary(end) {
                    end -= 1;
                }
                r.message.truncate(end);
                frame(KIND_REFUSE, &body(&r))
            }
        }
    }

    /// Decodes one frame from the front of `buf`: `Ok(None)` when more bytes are
    /// needed, else the frame and how many bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(&version) = buf.first() else { return Ok(None) };
        if version != FRAME_VERSION {
            return Err(FrameError::Version(version));
        }
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let kind = buf[1];
        let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        if len > MAX_FRAME_BODY {
            return Err(FrameError::TooLarge(len));
        }
        if !matches!(kind, KIND_OPEN | KIND_ACK | KIND_REFUSE) {
            return Err(FrameError::Kind(kind));
        }
        let Some(raw) = buf.get(HEADER_LEN..HEADER_LEN + len) else { return Ok(None) };
        let frame = match kind {
            KIND_ACK if len == 0 => Frame::Ack,
            KIND_ACK => return Err(FrameError::Malformed("an ack has no body".into())),
            KIND_OPEN => Frame::Open(decode_body(raw)?),
            _ => {
                let r: Refuse = decode_body(raw)?;
                if r.message.len() > MAX_REFUSE_MESSAGE {
                    return Err(FrameError::Malformed("refusal message too long".into()));
                }
                Frame::Refuse(r)
            }
        };
        Ok(Some((frame, HEADER_LEN + len)))
    }
}

fn decode_body<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, FrameError> {
    let (value, used): (T, usize) =
        bincode::serde::decode_from_slice(raw, config()).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != raw.len() {
        return Err(FrameError::Malformed(format!("{} trailing bytes", raw.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Frame {
        Frame::Open(Open {
            service: ServiceName::new("orders").expect("valid"),
            port: 8080,
            caller: ServiceName::new("web").expect("valid"),
            caller_node: NodeName::new("node-1").expect("valid"),
            transport: Transport::Tcp,
        })
    }

    #[test]
    fn frames_round_trip_even_in_pieces() {
        let refuse = Frame::Refuse(Refuse { code: RefuseCode::NotAllowed, message: "web may not call orders".into() });
        for f in [open(), Frame::Ack, refuse] {
            let bytes = f.encode();
            for cut in 0..bytes.len() {
                assert_eq!(Frame::decode(&bytes[..cut]), Ok(None), "cut at {cut}");
            }
            let mut more = bytes.clone();
            more.extend_from_slice(b"app bytes");
            assert_eq!(Frame::decode(&more), Ok(Some((f, bytes.len()))));
        }
    }

    #[test]
    fn garbage_is_refused_with_the_right_code() {
        assert_eq!(Frame::decode(&[9, 1, 0, 0]).map_err(|e| e.refuse_code()), Err(RefuseCode::BadVersion));
        assert!(matches!(Frame::decode(&[1, 9, 0, 0]), Err(FrameError::Kind(9))));
        assert!(matches!(Frame::decode(&[1, 1, 0xff, 0xff]), Err(FrameError::TooLarge(_))));
        assert!(matches!(Frame::decode(&[1, 1, 0, 2, 0xff, 0xff]), Err(FrameError::Malformed(_))));
        assert!(matches!(Frame::decode(&[1, 2, 0, 1, 0]), Err(FrameError::Malformed(_))));
        let mut bad_name = open().encode();
        // A space in the service name is not a valid label.
        bad_name[5] = b' ';
        assert!(matches!(Frame::decode(&bad_name), Err(FrameError::Malformed(_))));
    }

    #[test]
    fn long_refusals_are_cut_on_encode() {
        let f = Frame::Refuse(Refuse { code: RefuseCode::Draining, message: "é".repeat(500) });
        let Ok(Some((Frame::Refuse(r), _))) = Frame::decode(&f.encode()) else { panic!("decodes") };
        assert!(r.message.len() <= MAX_REFUSE_MESSAGE);
        assert!(!RefuseCode::NotAllowed.is_retryable());
        assert!(RefuseCode::AppUnreachable.is_retryable());
    }

    #[test]
    fn every_mutation_decodes_or_fails_cleanly() {
        let bytes = open().encode();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut m = bytes.clone();
                m[i] ^= 1 << bit;
                let _ = Frame::decode(&m);
            }
        }
    }
}
