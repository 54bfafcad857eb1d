//! The `--service` and `--upstream` spec parsers and the duration parser: any text is
//! accepted or refused with a message, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use murmur::internals::{parse_duration, parse_vip_range};
use murmur::{parse_service_spec, parse_upstream_spec};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_service_spec(&text);
    let _ = parse_upstream_spec(&text);
    let _ = parse_duration(&text);
    let _ = parse_vip_range(&text);
});
