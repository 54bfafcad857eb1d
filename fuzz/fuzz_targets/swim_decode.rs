//! Membership datagrams from a peer (after they opened): decode or fail, never panic;
//! whatever decodes re-encodes to a datagram that decodes to the same message and rumors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use murmur_protocol::swim::{decode, encode_message, encode_rumor};

fuzz_target!(|data: &[u8]| {
    if let Ok((message, rumors)) = decode(data) {
        let mut again = encode_message(&message);
        for r in &rumors {
            again.extend(encode_rumor(r));
        }
        assert_eq!(decode(&again), Ok((message, rumors)));
    }
});
