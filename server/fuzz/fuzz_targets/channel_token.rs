//! Channel tokens as a client presents them in `listen` (and in an SSE stream's `token`
//! parameters): the unverified peeks at the project and the channel, and the full verification with a project secret refuse with a fixed message, never panic,
//! and never echo the token.
//!
//! "Never echo" is checked as "the message is one of the fixed sentences below": a test that
//! looked for the token inside the message would fire on a token that happens to be a piece
//! of a fixed sentence (the fuzzer finds those), and would miss an echo of part of a token.
//! A new refusal sentence in `channel_token.rs` belongs in this list.
#![no_main]

use std::time::Duration;

use herald_server::channel_token::{ChannelTokens, peek_channel, peek_project};
use herald_server::store::SigningSecret;
use libfuzzer_sys::fuzz_target;

const MAX_TTL_SECS: u64 = 3600;

const FIXED_MESSAGES: &[&str] = &[
    "authToken is not a channel token: expected three dot-separated base64url parts",
    "authToken is not a channel token: its header or claims are not base64url-encoded JSON objects",
    "authToken is not a channel token: its header or claims lack a required field (aud, iat, exp, channelName, projectId, apiKeyId) or have one of the wrong type",
    "token algorithm is not accepted: channel tokens are HS256",
    "token signature does not verify with the project's current secret",
    "token audience is not this server's channel audience",
    "token has expired",
    "token is not valid yet",
    "token lifetime is over this server's cap of 3600 s (or it was issued in the future)",
];

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(tokens) = ChannelTokens::new(
        "herald-channel",
        Duration::from_secs(600),
        Duration::from_secs(MAX_TTL_SECS),
    ) else {
        return;
    };
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    for refusal in [
        peek_project(token).err(),
        peek_channel(token).err(),
        tokens.verify(token, &SigningSecret([7; 32]), now).err(),
    ]
    .into_iter()
    .flatten()
    {
        assert!(
            FIXED_MESSAGES.contains(&refusal.message.as_str()),
            "not a fixed refusal sentence: {}",
            refusal.message
        );
    }
});
