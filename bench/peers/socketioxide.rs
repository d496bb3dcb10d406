//! `herald-bench peer socketioxide`: plain socketioxide 0.18 with no gateway logic, to show what Herald adds
//! on top of the library it is built on.
//!
//! Same contract as far as the benchmark goes: handshake `auth {projectId}` (any non-empty
//! string; no project store), `listen {channelName}` joins `{projectId}:{channelName}` and acks
//! `{ok:true}` (no `system_message`, no private channels, no limits),
//! `POST /v1/publishers/events/publish {channelName, payload}` emits
//! `event {id, channelName, payload}` with the payload kept as raw JSON, to the room of the
//! project given by `--project` (no API keys). Same socketioxide settings as Herald where they
//! matter for the benchmark (per-socket queue `--buffer` 1024, TCP_NODELAY, the default
//! multi-thread tokio runtime) and the same axum router. `GET /stats` answers
//! `{"notQueued":N}`: packets socketioxide could not queue (full socket queue).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::{BroadcastError, SocketIo};

/// Plain socketioxide pub/sub server (benchmark peer).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Project whose rooms REST publishes reach.
    #[arg(long, default_value = "bench")]
    project: String,
    /// Packets queued per socket (socketioxide's `max_buffer_size`; Herald runs with 1024).
    #[arg(long, default_value_t = 1024)]
    buffer: usize,
    /// WebSocket read buffer per socket (engineioxide's default: 4096).
    #[arg(long, default_value_t = 4096)]
    ws_read_buffer: usize,
}

#[derive(Clone)]
struct AppState {
    io: SocketIo,
    project: Arc<str>,
    not_queued: Arc<AtomicU64>,
}

#[derive(Deserialize)]
struct PublishBody {
    #[serde(rename = "channelName")]
    channel_name: String,
    payload: Box<RawValue>,
}

#[derive(Serialize)]
struct EventBody<'a> {
    id: &'a str,
    #[serde(rename = "channelName")]
    channel_name: &'a str,
    payload: &'a RawValue,
}

/// Runs the peer until the process is killed, on the default multi-thread tokio runtime (as
/// Herald does).
pub fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(args.buffer)
        .ws_read_buffer_size(args.ws_read_buffer)
        .build_layer();
    // Handlers are registered in a connect middleware, before socketioxide sends the CONNECT
    // packet (as Herald does): registered in the connect handler itself, a `listen` sent the
    // instant the client sees CONNECT can arrive before the handler exists and is dropped.
    io.ns("/", on_connect.with(register));
    let state = AppState {
        io,
        project: args.project.into(),
        not_queued: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/v1/publishers/events/publish", post(publish))
        .route("/stats", get(stats))
        .with_state(state)
        .layer(layer);
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    println!("peer listening on http://{}", listener.local_addr()?);
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

async fn on_connect(_s: SocketRef) {}

async fn register(s: SocketRef, TryData(auth): TryData<Value>) -> Result<(), String> {
    let project = auth
        .ok()
        .and_then(|a| {
            a.get("projectId")
                .and_then(|p| p.as_str())
                .map(str::to_owned)
        })
        .filter(|p| !p.is_empty())
        .ok_or_else(|| "missing_project_id: auth.projectId is required".to_owned())?;
    s.join(project.clone());
    s.on(
        "listen",
        move |s: SocketRef, Data(body): Data<Value>, ack: AckSender| {
            let project = project.clone();
            async move {
                match body.get("channelName").and_then(|c| c.as_str()) {
                    Some(channel) if !channel.is_empty() => {
                        s.join(format!("{project}:{channel}"));
                        ack.send(&serde_json::json!({"ok": true})).ok();
                    }
                    _ => {
                        ack.send(&serde_json::json!({"ok": false, "code": "invalid_body"}))
                            .ok();
                    }
                }
            }
        },
    );
    Ok(())
}

async fn publish(State(state): State<AppState>, Json(body): Json<PublishBody>) -> Json<Value> {
    let id = uuid::Uuid::now_v7().to_string();
    let event = EventBody {
        id: &id,
        channel_name: &body.channel_name,
        payload: &body.payload,
    };
    let room = format!("{}:{}", state.project, body.channel_name);
    if let Err(BroadcastError::Socket(errors)) = state.io.to(room).emit("event", &event).await {
        state
            .not_queued
            .fetch_add(errors.len() as u64, Ordering::Relaxed);
    }
    Json(serde_json::json!({ "id": id }))
}

async fn stats(State(state): State<AppState>) -> Json<Value> {
    Json(serde_json::json!({ "notQueued": state.not_queued.load(Ordering::Relaxed) }))
}
