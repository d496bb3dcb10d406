//! Batches on the Redis event bus between instances (`fanout::decode_batch`): bytes from
//! Redis are trusted no more than a client's. Decoding refuses or splits, never panics, and
//! what it splits re-encodes to the same bytes.
#![no_main]

use herald_server::fanout::{decode_batch, encode_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((origin, messages)) = decode_batch(data) {
        let owned: Vec<Vec<u8>> = messages.iter().map(|m| m.to_vec()).collect();
        assert_eq!(encode_batch(origin, &owned), data);
    }
});
