//! WebSocket frames as the direct transport reads them from a client's bytes: any prefix is
//! "need more" or an error with a close code, never a panic; a parsed frame uses no more bytes
//! than it was given and respects the size limit; re-parsing what is left goes on safely.
#![no_main]

use herald_server::direct::frame;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((f, used))) = frame::parse(rest, MAX) {
        assert!(used > 0 && used <= rest.len());
        assert!(f.payload.len() <= MAX);
        rest = &rest[used..];
    }
});
