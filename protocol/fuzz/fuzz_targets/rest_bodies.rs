//! Publisher request bodies (`POST /v1/publishers/events/publish`, `/sign`) and the JSON
//! nesting scan. An accepted publish keeps its payload byte for byte, within the size and
//! depth limits.
#![no_main]

use herald_protocol::api::{PublishRequest, SignRequest};
use herald_protocol::depth::{MAX_JSON_DEPTH, nesting_depth};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let depth = nesting_depth(data);
    assert!(depth <= data.len());
    if let Ok(request) = PublishRequest::parse(data, 4096) {
        let payload = request.payload.get();
        assert!(payload.len() <= 4096);
        assert!(nesting_depth(payload.as_bytes()) <= MAX_JSON_DEPTH);
        assert!(serde_json::from_str::<serde_json::Value>(payload).is_ok());
    }
    let _ = SignRequest::parse(data);
});
