//! Config files: any text is a config or an error naming a field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(layer) = murmur::from_toml(&text) {
        let _ = murmur::Config::from_layer(layer, "nameserver 127.0.0.53\n");
    }
});
