//! Channel tokens as a client presents them in `listen`: the unverified peek at the project
//! and the full verification with a project secret refuse with a fixed message, never panic,
//! and never echo the token.
#![no_main]

use std::time::Duration;

use herald_server::channel_token::{ChannelTokens, peek_project};
use herald_server::store::SigningSecret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(tokens) = ChannelTokens::new(
        "herald-channel",
        Duration::from_secs(600),
        Duration::from_secs(3600),
    ) else {
        return;
    };
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    for refusal in [
        peek_project(token).err(),
        tokens.verify(token, &SigningSecret([7; 32]), now).err(),
    ]
    .into_iter()
    .flatten()
    {
        let message = refusal.to_string();
        assert!(token.len() < 8 || !message.contains(token), "{message}");
        assert!(!message.contains("Error("), "{message}");
    }
});
