//! End-to-end tests against the real `herald` binary (one test binary for the crate, so it
//! links once). Socket.IO behaviour with the official JS client lives in `tests/js/`.

mod cli;
mod conformance;
mod direct;
mod hardening;
mod http_limits;
mod ops;
mod persistence;
mod redis_memory;
mod rest_errors;
mod sdk;
