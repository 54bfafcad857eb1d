//! Gossip values from the network: every record type must decode or fail, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use murmur_protocol::{decode_value, HealthRecord, InstanceRecord, KeyringRecord, NodeRecord};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = decode_value::<InstanceRecord>(&text);
    let _ = decode_value::<NodeRecord>(&text);
    let _ = decode_value::<HealthRecord>(&text);
    let _ = decode_value::<KeyringRecord>(&text);
    let _ = murmur_protocol::Key::parse(&text);
});
