//! The sealed gossip transport's opener: anything from the network is refused or opened,
//! never a panic; and nothing opens without the key.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use murmur::internals::FrameCodec;
use murmur::Keyring;

const NOW: u64 = 1_800_000_000_000;

fn codecs() -> &'static (FrameCodec, FrameCodec) {
    static CODECS: OnceLock<(FrameCodec, FrameCodec)> = OnceLock::new();
    CODECS.get_or_init(|| {
        let keyring = Keyring::new(&[[7u8; 32]]).expect("a constant 32-byte key is valid");
        (FrameCodec::new(Some(keyring)), FrameCodec::new(None))
    })
}

fuzz_target!(|data: &[u8]| {
    let (sealed, plain) = codecs();
    // Forging a tag under an unknown key is not something a fuzzer can do: anything
    // that opens under the sealed codec would be a break.
    assert!(sealed.open(data, NOW).is_err(), "a datagram opened without the key");
    let _ = plain.open(data, NOW);
});
