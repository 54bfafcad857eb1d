//! Reading the first frame of a proxied stream off an async stream, bounded in size and
//! time. Bytes that arrive behind the frame (an app that speaks first) are handed back so
//! the splice can forward them.

use std::time::Duration;

use murmur_protocol::frame::MAX_FRAME_BODY;
use murmur_protocol::{Frame, FrameError};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why no frame was read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The bytes are not a frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The stream ended before a whole frame.
    #[error("stream ended before a whole frame")]
    Eof,
    /// Nothing whole arrived in time.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// The stream failed.
    #[error("stream failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame; returns it and any bytes read past it.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, timeout: Duration) -> Result<(Frame, Vec<u8>), HeaderError> {
    let read = async {
        let mut buf = Vec::with_capacity(64);
        let mut chunk = [0u8; 2048];
        loop {
            if let Some((frame, used)) = Frame::decode(&buf)? {
                return Ok((frame, buf.split_off(used)));
            }
            if buf.len() > 4 + MAX_FRAME_BODY {
                return Err(HeaderError::Frame(FrameError::TooLarge(buf.len())));
            }
            let n = r.read(&mut chunk).await?;
            if n == 0 {
                return Err(HeaderError::Eof);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| HeaderError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use murmur_protocol::{Refuse, RefuseCode};

    use super::*;

    #[tokio::test]
    async fn frames_and_trailing_bytes() {
        let mut bytes = Frame::Ack.encode();
        bytes.extend_from_slice(b"220 hello");
        let (frame, rest) = read_frame(&mut bytes.as_slice(), Duration::from_secs(1)).await.expect("frame");
        assert_eq!((frame, rest.as_slice()), (Frame::Ack, &b"220 hello"[..]));
        let refuse = Frame::Refuse(Refuse { code: RefuseCode::Draining, message: "bye".into() }).encode();
        assert!(matches!(read_frame(&mut &refuse[..3], Duration::from_secs(1)).await, Err(HeaderError::Eof)));
        assert!(matches!(
            read_frame(&mut &b"\x09\x01\x00\x00"[..], Duration::from_secs(1)).await,
            Err(HeaderError::Frame(_))
        ));
    }
}
