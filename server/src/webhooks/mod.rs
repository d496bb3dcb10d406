//! Webhooks: signed, retried, durable notifications of channel, presence and key events to a
//! project's backend.

pub mod backend;
