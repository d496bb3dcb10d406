//! Glue to the JavaScript host: errors, timers, the WebSocket, JSON values and the
//! `authorize` callback.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_channel::mpsc::UnboundedSender;
use futures_util::future::{Either, select};
use herald_protocol::{ChannelName, Refusal};
use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::task::{Input, WsEvent};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, timeout: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
}

/// Milliseconds since the epoch (`Date.now()`).
pub(crate) fn now() -> f64 {
    js_sys::Date::now()
}

/// A number in `[0, 1)` (`Math.random()`), to seed the backoff jitter.
pub(crate) fn random() -> f64 {
    js_sys::Math::random()
}

/// Codes of errors raised by the client itself (server refusals carry the server's code).
pub(crate) mod codes {
    /// No answer in time (connection attempt, acknowledgement, `authorize`).
    pub(crate) const TIMEOUT: &str = "timeout";
    /// The client was closed.
    pub(crate) const CLOSED: &str = "closed";
    /// The WebSocket could not be opened or broke.
    pub(crate) const TRANSPORT: &str = "transport";
    /// The `authorize` callback threw, rejected or returned no token.
    pub(crate) const AUTHORIZE_FAILED: &str = "authorize_failed";
    /// The server sent something this client does not understand.
    pub(crate) const PROTOCOL: &str = "protocol";
    /// A bad URL or option given to the constructor.
    pub(crate) const INVALID_OPTIONS: &str = "invalid_options";
}

/// An error the client reports to JavaScript as an `Error` with a `code` property.
#[derive(Debug, Clone)]
pub(crate) struct ClientError {
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) cause: Option<JsValue>,
}

impl ClientError {
    pub(crate) fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            cause: None,
        }
    }

    /// A refusal by the server (or by the same rules applied client-side).
    pub(crate) fn refused(r: Refusal) -> Self {
        Self::new(r.code.as_str(), r.message)
    }

    pub(crate) fn closed() -> Self {
        Self::new(codes::CLOSED, "the client is closed")
    }

    /// The JavaScript `Error`: `message`, `code`, and `cause` when there is one.
    pub(crate) fn to_js(&self) -> JsValue {
        let error = js_sys::Error::new(&self.message);
        error.set_name("HeraldError");
        let _ = Reflect::set(&error, &"code".into(), &self.code.as_str().into());
        if let Some(cause) = &self.cause {
            let _ = Reflect::set(&error, &"cause".into(), cause);
        }
        error.into()
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The text of a thrown JavaScript value.
pub(crate) fn describe(value: &JsValue) -> String {
    if let Some(e) = value.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    value.as_string().unwrap_or_else(|| format!("{value:?}"))
}

/// A Rust value as a plain JavaScript value (through JSON, so payloads keep their shape).
pub(crate) fn to_js<T: serde::Serialize>(value: &T) -> JsValue {
    serde_json::to_string(value)
        .ok()
        .and_then(|text| js_sys::JSON::parse(&text).ok())
        .unwrap_or(JsValue::UNDEFINED)
}

/// Resolves after `ms` milliseconds. Dropping it first clears the timer: in Node a pending
/// timer keeps the process alive, so a timeout that lost its race must not outlive it.
pub(crate) struct Sleep {
    promise: JsFuture,
    id: JsValue,
}

pub(crate) fn sleep(ms: f64) -> Sleep {
    let mut id = JsValue::UNDEFINED;
    let promise = Promise::new(&mut |resolve, _reject| {
        id = set_timeout(&resolve, ms.clamp(0.0, i32::MAX as f64) as i32);
    });
    Sleep {
        promise: JsFuture::from(promise),
        id,
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.promise).poll(cx).map(|_| ())
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        clear_timeout(&self.id); // a no-op once it fired
    }
}

/// Calls `authorize(channelName)` and waits (at most `timeout_ms`) for the token: a string, or
/// an object with a `token` string (what `POST /v1/publishers/sign` answers).
pub(crate) async fn authorize(
    callback: &Function,
    channel: &ChannelName,
    timeout_ms: f64,
) -> Result<String, ClientError> {
    let failed = |message: String, cause: Option<JsValue>| ClientError {
        code: codes::AUTHORIZE_FAILED.to_owned(),
        message,
        cause,
    };
    let returned = callback
        .call1(&JsValue::NULL, &JsValue::from_str(channel.as_str()))
        .map_err(|e| {
            failed(
                format!("authorize({channel}) threw: {}", describe(&e)),
                Some(e),
            )
        })?;
    let answer = JsFuture::from(Promise::resolve(&returned));
    let timeout = sleep(timeout_ms);
    let value = match select(Box::pin(answer), Box::pin(timeout)).await {
        Either::Left((Ok(value), _)) => value,
        Either::Left((Err(e), _)) => {
            return Err(failed(
                format!("authorize({channel}) rejected: {}", describe(&e)),
                Some(e),
            ));
        }
        Either::Right(_) => {
            return Err(ClientError::new(
                codes::TIMEOUT,
                format!("authorize({channel}) did not answer within {timeout_ms} ms"),
            ));
        }
    };
    let token = value.as_string().or_else(|| {
        Reflect::get(&value, &"token".into())
            .ok()
            .and_then(|t| t.as_string())
    });
    match token {
        Some(token) if !token.is_empty() => Ok(token),
        _ => Err(failed(
            format!("authorize({channel}) must resolve to a token string (or {{ token }})"),
            None,
        )),
    }
}

/// Sends `Input::Timer` into the task's mailbox once, after `ms` milliseconds; dropping it
/// first clears the timer.
pub(crate) struct Timer {
    id: JsValue,
    _callback: Closure<dyn FnMut()>,
}

impl Timer {
    pub(crate) fn start(tx: UnboundedSender<Input>, ms: f64) -> Self {
        let callback = Closure::<dyn FnMut()>::new(move || {
            let _ = tx.unbounded_send(Input::Timer);
        });
        // Rounded up: firing a millisecond early would find nothing due yet.
        let ms = ms.ceil().clamp(0.0, i32::MAX as f64) as i32;
        let id = set_timeout(callback.as_ref().unchecked_ref(), ms);
        Self {
            id,
            _callback: callback,
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        clear_timeout(&self.id); // a no-op once it fired
    }
}

/// One WebSocket; its frames and its close go to the task's mailbox tagged with `id`, so
/// events of an abandoned socket are told apart. Dropping it detaches the handlers and closes
/// the socket.
pub(crate) struct Conn {
    pub(crate) id: u64,
    ws: WebSocket,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

impl Conn {
    /// Opens `new web_socket(url)`. The class is the caller's (`ws` in Node 20, the global one
    /// elsewhere), so its instances are used through the WebSocket interface without an
    /// `instanceof` check against the global class.
    pub(crate) fn open(
        id: u64,
        web_socket: &Function,
        url: &str,
        tx: UnboundedSender<Input>,
    ) -> Result<Self, ClientError> {
        let args = js_sys::Array::of1(&JsValue::from_str(url));
        let ws: WebSocket = Reflect::construct(web_socket, &args)
            .map_err(|e| {
                ClientError::new(
                    codes::TRANSPORT,
                    format!("cannot open a WebSocket to {url}: {}", describe(&e)),
                )
            })?
            .unchecked_into();
        let frames = tx.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            // Herald sends text frames only; binary ones are ignored.
            if let Some(text) = e.data().as_string() {
                let _ = frames.unbounded_send(Input::Ws {
                    conn: id,
                    event: WsEvent::Text(text),
                });
            }
        });
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            let _ = tx.unbounded_send(Input::Ws {
                conn: id,
                event: WsEvent::Closed {
                    code: e.code(),
                    reason: e.reason(),
                },
            });
        });
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(Self {
            id,
            ws,
            _on_message: on_message,
            _on_close: on_close,
        })
    }

    pub(crate) fn send(&self, frame: &str) -> Result<(), ClientError> {
        self.ws.send_with_str(frame).map_err(|e| {
            ClientError::new(
                codes::TRANSPORT,
                format!("writing to the socket: {}", describe(&e)),
            )
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}
