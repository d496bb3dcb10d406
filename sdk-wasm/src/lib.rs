//! # herald-wasm
//!
//! Herald's browser client, compiled to WebAssembly with wasm-bindgen and published as the
//! npm package `@herald/client` (see `README.md`). The JavaScript API is the hand-written
//! wrapper in `js/client.js` (entry points `js/index.js` for browsers and `js/node.js` for Node,
//! declared in `js/index.d.ts`); this crate is its engine:
//!
//! * the session is [`herald_client_core::Session`], the one the Rust client drives too:
//!   handshake, acknowledgements, reconnection with jittered backoff, re-listening every
//!   channel (calling `authorize` again for private ones), `RemovedFromChannel`;
//! * `task.rs` drives it: a WebSocket of the class the wrapper passes in `options.WebSocket`
//!   (the global one by default; `ws` in Node 20), used through web-sys's `WebSocket`
//!   interface, one `setTimeout` for the session's next timeout, and `authorize` calls;
//! * channel names checked with [`ChannelName::parse`] before anything is sent, so the codes
//!   are the server's (`invalid_channel_name`, `ambiguous_channel_name`).
//!
//! Everything runs on the JavaScript event loop: one task (`spawn_local`) owns the session
//! and reads one mailbox.

mod js;
mod task;

use std::cell::RefCell;
use std::rc::Rc;

use std::time::Duration;

use futures_channel::mpsc::{self, UnboundedSender};
use futures_channel::oneshot;
use herald_client_core::Backoff;
use herald_protocol::{ChannelName, ErrorCode, HandshakeAuth, ProjectId, Refusal};
use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use js::{ClientError, codes};
use task::{Command, Config, Input, Shared, SharedRef, Task};

/// Defaults of the options, in milliseconds.
const RECONNECT_DELAY_MS: f64 = 500.0;
const RECONNECT_DELAY_MAX_MS: f64 = 30_000.0;
const CONNECT_TIMEOUT_MS: f64 = 10_000.0;
const REQUEST_TIMEOUT_MS: f64 = 10_000.0;

/// The engine behind the JavaScript `HeraldClient` (use that class; this one is internal).
#[wasm_bindgen]
pub struct WasmClient {
    tx: UnboundedSender<Input>,
    shared: SharedRef,
}

#[wasm_bindgen]
impl WasmClient {
    /// `url` is the server's absolute base URL; `options` the JavaScript options object;
    /// `emit(kind, a, b)` receives `event`, `system_message`, `state`, `recovery`,
    /// `relisten_failed`, `presence` and `presence_synced`.
    #[wasm_bindgen(constructor)]
    pub fn new(url: &str, options: &JsValue, emit: Function) -> Result<WasmClient, JsValue> {
        let config = Rc::new(config(url, options).map_err(|e| e.to_js())?);
        let shared = Rc::new(RefCell::new(Shared {
            state: "idle",
            channels: Vec::new(),
            members: Vec::new(),
            emit,
        }));
        let (tx, rx) = mpsc::unbounded();
        let task = Task::new(config, Rc::clone(&shared), rx, tx.clone());
        wasm_bindgen_futures::spawn_local(task.run());
        Ok(Self { tx, shared })
    }

    /// Connects (one attempt; reconnection starts once connected). Resolves when the server
    /// accepted the handshake; rejects with its code (e.g. `unknown_project`) otherwise.
    pub fn connect(&self) -> Promise {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Command::Connect { reply });
        future_to_promise(async move {
            sent?;
            answer_of(answer).await
        })
    }

    /// Listens to a channel (the session asks `authorize` for a token first when it is
    /// private).
    pub fn listen(&self, channel_name: String) -> Promise {
        let tx = self.tx.clone();
        future_to_promise(async move {
            let channel = ChannelName::parse(&channel_name)
                .map_err(|e| ClientError::refused(Refusal::from(e)).to_js())?;
            let (reply, answer) = oneshot::channel();
            send(&tx, Command::Listen { channel, reply })?;
            answer_of(answer).await
        })
    }

    /// Stops listening to a channel (idempotent).
    pub fn remove(&self, channel_name: String) -> Promise {
        let tx = self.tx.clone();
        future_to_promise(async move {
            let channel = ChannelName::parse(&channel_name)
                .map_err(|e| ClientError::refused(Refusal::from(e)).to_js())?;
            let (reply, answer) = oneshot::channel();
            send(&tx, Command::Remove { channel, reply })?;
            answer_of(answer).await
        })
    }

    /// Closes the connection for good.
    pub fn close(&self) -> Promise {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Command::Close { reply });
        future_to_promise(async move {
            if sent.is_err() {
                return Ok(JsValue::UNDEFINED); // closed already
            }
            let _ = answer.await;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// `idle`, `connecting`, `connected`, `reconnecting` or `closed`.
    #[wasm_bindgen(getter)]
    pub fn state(&self) -> String {
        self.shared.borrow().state.to_owned()
    }

    /// The channels listened to (re-listened after a reconnection), sorted.
    #[wasm_bindgen(getter)]
    pub fn channels(&self) -> Vec<String> {
        self.shared
            .borrow()
            .channels
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect()
    }

    /// The members of a presence channel listened to (`[{ userId, info }]`, by user id; an
    /// empty array for any other channel). Each call returns a fresh copy: the array is the
    /// caller's.
    pub fn members(&self, channel_name: &str) -> JsValue {
        let shared = self.shared.borrow();
        let members = shared
            .members
            .iter()
            .find(|(c, _)| c.as_str() == channel_name)
            .map_or(&[][..], |(_, m)| m.as_slice());
        task::members_to_js(members)
    }

    fn send(&self, command: Command) -> Result<(), JsValue> {
        send(&self.tx, command)
    }
}

/// Checks a channel name with Herald's rules: `{ name, private }`, or throws an `Error` whose
/// `code` is `invalid_channel_name` or `ambiguous_channel_name`.
#[wasm_bindgen(js_name = parseChannelName)]
pub fn parse_channel_name(name: &str) -> Result<JsValue, JsValue> {
    let channel =
        ChannelName::parse(name).map_err(|e| ClientError::refused(Refusal::from(e)).to_js())?;
    Ok(task::detail(&[
        ("name", JsValue::from_str(channel.as_str())),
        ("private", JsValue::from_bool(channel.is_private())),
    ]))
}

fn send(tx: &UnboundedSender<Input>, command: Command) -> Result<(), JsValue> {
    tx.unbounded_send(Input::Command(command))
        .map_err(|_| ClientError::closed().to_js())
}

async fn answer_of(answer: oneshot::Receiver<Result<(), ClientError>>) -> Result<JsValue, JsValue> {
    match answer.await {
        Ok(Ok(())) => Ok(JsValue::UNDEFINED),
        Ok(Err(e)) => Err(e.to_js()),
        Err(_) => Err(ClientError::closed().to_js()),
    }
}

/// Reads the options object.
fn config(url: &str, options: &JsValue) -> Result<Config, ClientError> {
    let invalid = |message: String| ClientError::new(codes::INVALID_OPTIONS, message);
    if !options.is_object() {
        return Err(invalid("options must be an object with a projectId".into()));
    }
    let get = |key: &str| Reflect::get(options, &JsValue::from_str(key)).unwrap_or_default();
    let project_id = get("projectId").as_string().ok_or_else(|| {
        ClientError::new(
            ErrorCode::MissingProjectId.as_str(),
            "options.projectId must be a string",
        )
    })?;
    let project_id =
        ProjectId::parse(&project_id).map_err(|e| ClientError::refused(Refusal::from(e)))?;
    let authorize = match get("authorize") {
        v if v.is_undefined() || v.is_null() => None,
        v => Some(
            v.dyn_into::<Function>()
                .map_err(|_| invalid("options.authorize must be a function".into()))?,
        ),
    };
    // The wrapper (js/client.js) fills it in: the option, else the global class.
    let web_socket = get("WebSocket").dyn_into::<Function>().map_err(|_| {
        invalid(
            "no WebSocket class: pass one as options.WebSocket (in Node 20: `WebSocket` of the ws package)"
                .into(),
        )
    })?;
    let number = |key: &str, default: f64| -> Result<f64, ClientError> {
        match get(key) {
            v if v.is_undefined() || v.is_null() => Ok(default),
            v => v
                .as_f64()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| invalid(format!("options.{key} must be a non-negative number"))),
        }
    };
    let max_reconnect_attempts = match get("maxReconnectAttempts") {
        v if v.is_undefined() || v.is_null() => None,
        v => Some(
            v.as_f64()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map(|n| n.min(f64::from(u32::MAX)) as u32)
                .ok_or_else(|| {
                    invalid("options.maxReconnectAttempts must be a non-negative number".into())
                })?,
        ),
    };
    let ms = |value: f64| Duration::from_secs_f64(value / 1000.0);
    let request_timeout_ms = number("requestTimeoutMs", REQUEST_TIMEOUT_MS)?;
    Ok(Config {
        url: herald_client_core::socket_url(url).map_err(invalid)?,
        session: herald_client_core::Config {
            auth: HandshakeAuth { project_id },
            has_token_provider: authorize.is_some(),
            backoff: Backoff::new(
                ms(number("reconnectDelayMs", RECONNECT_DELAY_MS)?),
                ms(number("reconnectDelayMaxMs", RECONNECT_DELAY_MAX_MS)?),
            ),
            max_reconnect_attempts,
            connect_timeout: ms(number("connectTimeoutMs", CONNECT_TIMEOUT_MS)?),
            request_timeout: ms(request_timeout_ms),
            seed: (js::random() * 9_007_199_254_740_992.0) as u64,
        },
        authorize,
        web_socket,
        request_timeout_ms,
    })
}
