//! Batches on the Redis event bus between instances (`fanout::decode_batch`): bytes from
//! Redis are trusted no more than a client's. Decoding refuses or splits, never panics, and
//! what it splits re-encodes to a batch that decodes the same.
#![no_main]

use herald_server::fanout::{Batch, BatchBody, decode_batch, encode_batch, encode_leave};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(Batch { origin, body }) = decode_batch(data) else {
        return;
    };
    match body {
        BatchBody::Messages {
            seq: Some(seq),
            messages,
        } => {
            let owned: Vec<Vec<u8>> = messages.iter().map(|m| m.to_vec()).collect();
            let again = encode_batch(origin, seq, &owned);
            assert_eq!(
                decode_batch(&again),
                Some(Batch {
                    origin,
                    body: BatchBody::Messages {
                        seq: Some(seq),
                        messages,
                    },
                })
            );
        }
        BatchBody::Messages { seq: None, .. } => {}
        BatchBody::Leave => {
            let again = encode_leave(origin);
            assert!(matches!(
                decode_batch(&again),
                Some(Batch {
                    body: BatchBody::Leave,
                    ..
                })
            ));
        }
    }
});
