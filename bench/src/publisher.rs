//! The publishing side: `POST /v1/publishers/events/publish` at a target rate over a few
//! keep-alive HTTP/1.1 connections (hyper), and one-off HTTP calls (admin API, `/stats`).
//!
//! Each request carries `{"channelName": …, "payload": {"t": <now_ns>, "p": "<pad>"}}`; `t` is
//! taken just before the request is written, so publish→receive latency includes the REST hop.
//! Request `i` is due at `start + i / rate`; a connection that is behind schedule sends at once
//! (the rate is then what the server allows: the achieved rate is reported).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::client::now_ns;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server address.
    pub addr: SocketAddr,
    /// `Authorization` header value (`Bearer hk_…`), when the server wants one.
    pub auth: Option<String>,
}

/// Which channel request `i` goes to.
#[derive(Debug, Clone)]
pub enum Channels {
    /// Always the same channel.
    One(String),
    /// `{prefix}{k}` with `k` spread over `0..count`.
    Spread {
        /// Name prefix.
        prefix: String,
        /// Number of channels.
        count: usize,
    },
}

impl Channels {
    fn name(&self, i: u64) -> String {
        match self {
            Channels::One(c) => c.clone(),
            Channels::Spread { prefix, count } => {
                // A stride coprime with any count we use visits every channel once per round.
                let k = (i.wrapping_mul(7919)) % (*count as u64).max(1);
                format!("{prefix}{k}")
            }
        }
    }
}

/// A publishing run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Publishes per second (open loop while the server keeps up).
    pub rate: f64,
    /// Number of publishes.
    pub total: u64,
    /// Channel choice.
    pub channels: Channels,
    /// Bytes of padding in the payload's `p` string.
    pub pad: usize,
    /// Keep-alive connections used in parallel.
    pub conns: usize,
    /// Stop starting requests after this long, even if `total` was not reached.
    pub deadline: Option<Duration>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed (status other than 200, or transport error).
    pub errors: u64,
    /// The first few errors.
    pub error_samples: Vec<String>,
    /// `now_ns` of the first request.
    pub start_ns: u64,
    /// `now_ns` when the last answer arrived.
    pub end_ns: u64,
    /// Seconds from the first request to the last answer.
    pub elapsed: f64,
    /// Request round-trip times (ns), one per answered request.
    pub rtt_ns: Vec<u64>,
}

impl Outcome {
    /// Publishes per second achieved.
    pub fn achieved_rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.max(1e-9)
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Conn {
    /// Connects (TCP_NODELAY) and starts the connection task.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Self> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host: addr.to_string(),
        })
    }

    /// One request; returns the status and body.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<(u16, Bytes)> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// A single request on a fresh connection.
pub async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> anyhow::Result<(u16, Bytes)> {
    let mut conn = Conn::open(addr).await?;
    tokio::time::timeout(
        Duration::from_secs(30),
        conn.call(method, path, headers, body),
    )
    .await
    .context("request timed out")?
}

/// The JSON body of a publish request stamped with `t`.
pub fn publish_body(channel: &str, t: u64, pad: &str) -> Vec<u8> {
    format!(r#"{{"channelName":"{channel}","payload":{{"t":{t},"p":"{pad}"}}}}"#).into_bytes()
}

/// Publishes according to `plan`.
pub async fn run(target: &Target, plan: &Plan) -> anyhow::Result<Outcome> {
    let conns = plan.conns.clamp(1, plan.total.max(1) as usize);
    let mut pool = Vec::with_capacity(conns);
    for _ in 0..conns {
        pool.push(Conn::open(target.addr).await?);
    }
    let pad = "x".repeat(plan.pad);
    let next = Cell::new(0u64);
    let out = RefCell::new(Outcome {
        rtt_ns: Vec::with_capacity(plan.total as usize),
        ..Outcome::default()
    });
    let start = Instant::now();
    out.borrow_mut().start_ns = now_ns();
    let auth = target.auth.clone();
    let worker = |mut conn: Conn| {
        let (next, out, pad, auth) = (&next, &out, &pad, &auth);
        async move {
            loop {
                let i = next.get();
                if i >= plan.total || plan.deadline.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
                next.set(i + 1);
                let due = start + Duration::from_secs_f64(i as f64 / plan.rate.max(1e-9));
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                let channel = plan.channels.name(i);
                let t = now_ns();
                let body = publish_body(&channel, t, pad);
                let mut headers = Vec::with_capacity(1);
                if let Some(a) = auth.as_deref() {
                    headers.push(("authorization", a));
                }
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    conn.call(
                        Method::POST,
                        "/v1/publishers/events/publish",
                        &headers,
                        Some(body),
                    ),
                )
                .await;
                let reconnect = {
                    let mut o = out.borrow_mut();
                    let sample = |o: &mut Outcome, e: String| {
                        o.errors += 1;
                        if o.error_samples.len() < 5 {
                            o.error_samples.push(e);
                        }
                    };
                    match answer {
                        Ok(Ok((200, _))) => {
                            o.ok += 1;
                            o.rtt_ns.push(now_ns() - t);
                            false
                        }
                        Ok(Ok((status, body))) => {
                            let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
                            sample(&mut o, format!("HTTP {status}: {text}"));
                            false
                        }
                        Ok(Err(e)) => {
                            sample(&mut o, format!("{e:#}"));
                            true
                        }
                        Err(_) => {
                            sample(&mut o, "publish timed out (10 s)".into());
                            true
                        }
                    }
                };
                if reconnect {
                    match Conn::open(target.addr).await {
                        Ok(c) => conn = c,
                        Err(_) => break,
                    }
                }
            }
        }
    };
    futures_util::future::join_all(pool.into_iter().map(worker)).await;
    let mut o = out.into_inner();
    o.end_ns = now_ns();
    o.elapsed = start.elapsed().as_secs_f64();
    Ok(o)
}
