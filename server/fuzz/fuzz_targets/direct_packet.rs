//! Engine.IO / Socket.IO packets in a client's text message on the direct transport. Any text
//! is a packet or an error; an event parsed from it survives re-encoding.
#![no_main]

use herald_server::direct::packet::{self, ClientPacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientPacket::Event {
        namespace: _,
        ack,
        name,
        data,
    }) = packet::parse(text)
    {
        let mut args = vec![serde_json::Value::String(name.clone())];
        args.extend(data.clone());
        let ack = ack.map(|a| a.to_string()).unwrap_or_default();
        let again = format!("42{ack}{}", serde_json::Value::Array(args));
        match packet::parse(&again) {
            Ok(ClientPacket::Event {
                name: n, data: d, ..
            }) => {
                assert_eq!(n, name);
                assert_eq!(d, data);
            }
            other => panic!("re-encoded event did not parse back: {other:?}"),
        }
    }
});
