//! The client-side decoder (`herald_protocol::codec`, shared by the Rust, browser and mobile
//! clients) on any text frame a server, or something pretending to be one, can send.
#![no_main]

use herald_protocol::codec::Decoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Decoder::new().decode(text);
    }
});
