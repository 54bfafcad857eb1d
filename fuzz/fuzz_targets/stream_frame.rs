//! Proxy stream frames from a peer sidecar: decode or fail, never panic; whatever
//! decodes re-encodes to bytes that decode to the same frame (names fold case, so the
//! bytes themselves may differ).
#![no_main]

use libfuzzer_sys::fuzz_target;
use murmur_protocol::Frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((frame, used))) = Frame::decode(data) {
        assert!(used <= data.len());
        let again = frame.encode();
        assert_eq!(Frame::decode(&again), Ok(Some((frame, again.len()))));
    }
});
