//! Read timeouts of one HTTP connection: header, idle keep-alive and body.
//!
//! hyper 1.x has one knob, `header_read_timeout`, which runs from the moment it starts waiting
//! for a request head to the end of that head: on a kept-alive connection it bounds the idle
//! wait and the head together, with one value. Herald keeps the two apart, like Go's
//! `ReadHeaderTimeout`/`IdleTimeout` (an idle pooled connection from a load balancer may wait
//! far longer than a head may take to arrive), with a per-connection [`Activity`]:
//!
//! | phase | from | ends | deadline |
//! |---|---|---|---|
//! | `Head` | the accept, or the first byte after `Idle` | the service is called | header timeout |
//! | `InFlight` | the service is called | the response body is dropped (sent) | none here; the body has its own ([`DeadlineBody`]) |
//! | `Idle` | the response is sent | a byte arrives | idle timeout |
//!
//! The IO wrapper ([`ConnIo`]) moves `Idle` to `Head` on the first byte read; the service moves
//! `Head` to `InFlight` ([`Activity::begin_request`]); the response body's guard moves it back to
//! `Idle` on drop ([`InFlightBody`]). [`Activity::expired`] resolves when a deadline passes;
//! the connection's task then drops the connection, which closes the socket.
//!
//! The request body gets one deadline for the whole body ([`DeadlineBody`], not a gap between
//! frames: a byte every few hundred milliseconds must not keep it open); when it passes the
//! body yields [`BodyTimeout`], which the REST handlers answer `408 request_timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::admission::Slot;
use crate::direct::wire::SharedTcp;
use crate::metrics as m;

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being handled or its response sent.
    InFlight,
    /// Kept alive between requests, nothing received yet.
    Idle,
    /// No longer an HTTP connection (closed, or upgraded to a WebSocket).
    Done,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Head,
            1 => Phase::InFlight,
            2 => Phase::Idle,
            _ => Phase::Done,
        }
    }
    /// The metric label of a timeout in this phase.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Head => "header",
            Phase::Idle => "idle",
            Phase::InFlight | Phase::Done => "other",
        }
    }
}

/// The two timeouts [`Activity`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct ReadTimeouts {
    /// Longest `Head` phase.
    pub header: Duration,
    /// Longest `Idle` phase.
    pub idle: Duration,
}

/// One connection's phase and when it began; shared by its IO, its service and its watchdog.
#[derive(Debug)]
pub struct Activity {
    /// The phase, readable without the lock (the IO checks it on every read).
    phase: AtomicU8,
    /// When the phase began, and a count of phase changes.
    since: Mutex<(Instant, u64)>,
    /// Wakes the watchdog on every phase change.
    changed: Notify,
}

impl Activity {
    /// A new connection: in `Head` since `now`.
    pub fn new(now: Instant) -> Arc<Self> {
        Arc::new(Self {
            phase: AtomicU8::new(Phase::Head as u8),
            since: Mutex::new((now, 0)),
            changed: Notify::new(),
        })
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    fn set(&self, phase: Phase, now: Instant) {
        let mut since = self.since.lock();
        self.phase.store(phase as u8, Ordering::Release);
        *since = (now, since.1.wrapping_add(1));
        drop(since);
        self.changed.notify_one();
    }

    /// A request head arrived: the service is called.
    pub fn begin_request(&self) {
        self.set(Phase::InFlight, Instant::now());
    }

    /// The response was sent (or abandoned).
    pub fn end_request(&self) {
        if self.phase() == Phase::InFlight {
            self.set(Phase::Idle, Instant::now());
        }
    }

    /// The connection stopped being HTTP.
    pub fn done(&self) {
        self.set(Phase::Done, Instant::now());
    }

    /// Bytes arrived: a kept-alive connection starts its next request head.
    fn on_read(&self) {
        if self.phase() == Phase::Idle {
            self.set(Phase::Head, Instant::now());
        }
    }

    /// Resolves with the phase whose deadline passed. Never resolves while a request is in
    /// flight or after [`Activity::done`].
    pub async fn expired(&self, timeouts: ReadTimeouts) -> Phase {
        loop {
            let (started, generation) = *self.since.lock();
            let phase = self.phase();
            let deadline = match phase {
                Phase::Head => Some(started + timeouts.header),
                Phase::Idle => Some(started + timeouts.idle),
                Phase::InFlight | Phase::Done => None,
            };
            let changed = self.changed.notified();
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {
                            if self.since.lock().1 == generation {
                                return phase;
                            }
                        }
                        _ = changed => {}
                    }
                }
                // Every phase change notifies (a stored permit if it came before this wait).
                None => changed.await,
            }
        }
    }
}

/// A connection's IO as hyper sees it: the shared socket, with the phase tracking on reads and
/// the connection's [`Slot`] under the caps (given back when hyper, or the upgraded WebSocket,
/// drops the IO).
#[derive(Debug)]
pub struct ConnIo {
    tcp: SharedTcp,
    activity: Arc<Activity>,
    _slot: Arc<Slot>,
}

impl ConnIo {
    /// Wraps an accepted socket.
    pub fn new(tcp: SharedTcp, activity: Arc<Activity>, slot: Arc<Slot>) -> Self {
        Self {
            tcp,
            activity,
            _slot: slot,
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.tcp).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// The error a request body yields once its deadline passed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within the body read timeout")]
pub struct BodyTimeout;

impl BodyTimeout {
    /// Whether `err` or one of its sources is a [`BodyTimeout`].
    pub fn is_in(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(err);
        while let Some(e) = next {
            if e.is::<BodyTimeout>() {
                return true;
            }
            next = e.source();
        }
        false
    }
}

/// A request body that must be complete by a deadline.
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Instant,
    /// Armed the first time the body has nothing ready (most bodies never need it).
    sleep: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

impl<B> DeadlineBody<B> {
    /// `inner`, complete by `deadline`.
    pub fn new(inner: B, deadline: Instant) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
            timed_out: false,
        }
    }
}

impl<B> hyper::body::Body for DeadlineBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.timed_out {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(axum::Error::new)));
        }
        let deadline = self.deadline;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(sleep.as_mut().poll(cx));
        self.timed_out = true;
        metrics::counter!(m::CONNECTION_TIMEOUTS, "phase" => "body").increment(1);
        Poll::Ready(Some(Err(axum::Error::new(BodyTimeout))))
    }

    fn is_end_stream(&self) -> bool {
        !self.timed_out && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks its request finished when dropped (hyper drops it once the last
/// byte is written, or when the connection ends).
pub struct InFlightBody {
    inner: Body,
    activity: Arc<Activity>,
}

impl InFlightBody {
    /// Wraps a response body of a request on `activity`'s connection.
    pub fn new(inner: Body, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl Drop for InFlightBody {
    fn drop(&mut self) {
        self.activity.end_request();
    }
}

impl hyper::body::Body for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: ReadTimeouts = ReadTimeouts {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(75),
    };

    #[tokio::test(start_paused = true)]
    async fn a_fresh_connection_gets_the_header_timeout() {
        let started = Instant::now();
        let a = Activity::new(started);
        assert_eq!(a.expired(T).await, Phase::Head);
        assert_eq!(started.elapsed(), T.header);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_never_expires_then_idle_then_first_byte_restarts_the_header_clock() {
        let a = Activity::new(Instant::now());
        a.begin_request();
        let watchdog = {
            let a = a.clone();
            tokio::spawn(async move { (a.expired(T).await, Instant::now()) })
        };
        tokio::time::sleep(Duration::from_secs(500)).await;
        assert!(
            !watchdog.is_finished(),
            "a request in flight is not timed here"
        );
        a.end_request();
        let idle_from = Instant::now();
        tokio::time::sleep(Duration::from_secs(70)).await;
        assert!(
            !watchdog.is_finished(),
            "idle for less than the idle timeout"
        );
        a.on_read();
        let head_from = Instant::now();
        let (phase, at) = watchdog.await.expect("watchdog");
        assert_eq!(phase, Phase::Head);
        assert_eq!(at - head_from, T.header, "header clock from the first byte");
        assert!(at - idle_from < T.idle + T.header);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_the_idle_timeout() {
        let a = Activity::new(Instant::now());
        a.begin_request();
        a.end_request();
        let idle_from = Instant::now();
        assert_eq!(a.expired(T).await, Phase::Idle);
        assert_eq!(idle_from.elapsed(), T.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_past_its_deadline_yields_body_timeout() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, io::Error>(b), rx))
        });
        let body = DeadlineBody::new(
            Body::from_stream(stream),
            Instant::now() + Duration::from_secs(30),
        );
        let reader = tokio::spawn(axum::body::to_bytes(Body::new(body), usize::MAX));
        for _ in 0..5 {
            tx.try_send(Bytes::from_static(b"x")).expect("queued");
            tokio::time::sleep(Duration::from_secs(7)).await;
        }
        let err = reader.await.expect("task").expect_err("timed out");
        assert!(BodyTimeout::is_in(&err), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_in_time_is_untouched() {
        let body = DeadlineBody::new(Body::from("hello"), Instant::now());
        let bytes = axum::body::to_bytes(Body::new(body), usize::MAX).await;
        assert_eq!(bytes.expect("complete").as_ref(), b"hello");
    }
}
