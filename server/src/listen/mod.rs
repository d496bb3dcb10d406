//! The public listener (`--bind`): the accept loop, connection caps, read timeouts and
//! graceful shutdown, serving each connection with hyper's HTTP/1.1 server itself (`axum::serve`
//! exposes none of these settings).
//!
//! - Accept: every socket gets `TCP_NODELAY` and is shared with the direct transport
//!   ([`crate::direct::wire`]). A failed `accept()` (out of file descriptors, say) is counted and
//!   retried after a back-off (10 ms doubling to 1 s), never in a busy loop.
//! - Caps ([`admission`]): a global cap fitted to the open-file limit and a per-address cap;
//!   a connection over a cap still gets its health request answered, anything else a JSON
//!   refusal (`Connection: close`), then it is closed; the oldest refused connection makes
//!   room for a newer one when the pool of refusal slots is full.
//! - Timeouts ([`timeouts`]): header read, idle keep-alive, body read.
//! - WebSocket upgrades: the upgrade request is an ordinary request (header timeout); after the
//!   `101` both transports give the client `--connect-timeout-secs` to join the namespace, then
//!   their heartbeat bounds the connection.
//! - Shutdown: once the stop future resolves, no more accepts; every connection finishes its
//!   request in flight and closes (upgraded connections are closed by [`crate::fanout`]).
//!
//! HTTP/1.1 only: that is what Socket.IO clients, browsers over plain HTTP and load balancers
//! towards their backends speak (HTTP/2 cleartext with prior knowledge is not served).

pub mod admission;
pub mod timeouts;
pub mod unread;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use herald_protocol::{ErrorCode, limits};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use self::admission::{Admission, Refused, Slot, Verdict};
use self::timeouts::{Activity, ConnIo, DeadlineBody, InFlightBody, ReadTimeouts};
use crate::direct::wire::{SharedTcp, Wire};
use crate::metrics as m;
use crate::rest::ApiError;

/// The listener's limits as configured (see [`crate::config::ServeConfig::http_limits`]).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Longest wait for a request head.
    pub header_read_timeout: Duration,
    /// Longest wait for a request body.
    pub body_read_timeout: Duration,
    /// Longest wait between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// Global connection cap; `None`: fitted to the open-file limit.
    pub max_connections: Option<usize>,
    /// Per-address cap; 0: none.
    pub max_connections_per_ip: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(limits::DEFAULT_HEADER_READ_TIMEOUT_SECS),
            body_read_timeout: Duration::from_secs(limits::DEFAULT_BODY_READ_TIMEOUT_SECS),
            idle_timeout: Duration::from_secs(limits::DEFAULT_IDLE_TIMEOUT_SECS),
            max_connections: None,
            max_connections_per_ip: limits::DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

/// Caps used when the open-file limit cannot be read.
const FALLBACK_MAX_CONNECTIONS: usize = 10_000;
const FALLBACK_REFUSAL_SLOTS: usize = 64;

/// Longest a refused connection may take to send its request head.
const REFUSAL_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a refused connection lives, answer included.
const REFUSAL_LIFETIME: Duration = Duration::from_secs(4);

/// Longest the accept loop waits for evicted refused connections to close.
const SETTLE_BOUND: Duration = Duration::from_millis(100);

/// Back-off after a failed `accept()`: first and longest wait.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// At most one warning per this interval about refused connections or accept errors.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// The limits in effect: timeouts and the caps fitted to the open-file limit.
#[derive(Debug, Clone)]
pub struct Limits {
    timeouts: ReadTimeouts,
    body_read_timeout: Duration,
    admission: Admission,
}

impl Limits {
    /// Fits `config` to an open-file limit of `nofile` (`None`: unknown): the global cap is at
    /// most the limit minus its reserve ([`admission::fd_budget`]).
    pub fn new(config: &HttpLimits, nofile: Option<u64>) -> Self {
        let (budget, refusal_slots) = match nofile {
            Some(n) => admission::fd_budget(n),
            None => (
                config.max_connections.unwrap_or(FALLBACK_MAX_CONNECTIONS),
                FALLBACK_REFUSAL_SLOTS,
            ),
        };
        let max = match config.max_connections {
            Some(m) if m > budget => {
                tracing::warn!(
                    configured = m,
                    open_file_limit = nofile,
                    lowered_to = budget,
                    "--max-connections is above what the open-file limit allows; lowered"
                );
                budget
            }
            Some(m) => m,
            None => budget,
        };
        tracing::info!(
            max_connections = max,
            max_connections_per_ip = config.max_connections_per_ip,
            open_file_limit = nofile,
            "connection caps"
        );
        Self {
            timeouts: ReadTimeouts {
                header: config.header_read_timeout,
                idle: config.idle_timeout,
            },
            body_read_timeout: config.body_read_timeout,
            admission: Admission::new(max, config.max_connections_per_ip, refusal_slots),
        }
    }

    /// The connection counters.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }
}

/// The soft open-file limit of this process, if it can be read.
pub fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        rustix::process::getrlimit(rustix::process::Resource::Nofile).current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Raises the soft open-file limit to the hard one (as the Go runtime does: the soft default
/// of 1024 is a relic of `select()`), and returns the limit in effect.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
            && maximum > current
        {
            let raised = Rlimit {
                current: Some(maximum),
                maximum: Some(maximum),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => tracing::info!(from = current, to = maximum, "open-file limit raised"),
                Err(e) => tracing::debug!(error = %e, "open-file limit not raised"),
            }
        }
    }
    open_file_limit()
}

/// What every connection task shares.
struct Shared {
    router: Router,
    limits: Limits,
    http: http1::Builder,
    refusals: http1::Builder,
}

/// Serves `router` on `listener` until `stop` resolves; then stops accepting, lets every
/// connection finish the request it is handling, and returns once all have closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        // hyper's own clock (idle wait and head together) only as a backstop behind
        // `Activity`'s, which keeps the two apart.
        .header_read_timeout(limits.timeouts.header + limits.timeouts.idle)
        .keep_alive(true);
    let mut refusals = http1::Builder::new();
    refusals
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_HEADER_TIMEOUT.min(limits.timeouts.header))
        .keep_alive(false);
    let shared = Arc::new(Shared {
        router,
        limits,
        http,
        refusals,
    });
    let (stop_tx, stop_rx) = watch::channel(());
    // Every connection task holds a sender: `recv` returns `None` once all have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut backoff = Backoff::default();
    let mut warnings = Warnings::default();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                if backoff.reset() > 0 {
                    tracing::info!("accepting connections again");
                }
                admit(&shared, tcp, peer, &stop_rx, &alive_tx, &mut warnings);
                shared.limits.admission.settle(SETTLE_BOUND).await;
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                metrics::counter!(m::ACCEPT_ERRORS).increment(1);
                let wait = backoff.next();
                if warnings.due() {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        "accept failed (out of file descriptors?); backing off");
                }
                tokio::select! {
                    biased;
                    () = &mut stop => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(());
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    Ok(())
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Counts an accepted connection in and starts its task.
fn admit(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    stop: &watch::Receiver<()>,
    alive: &mpsc::Sender<()>,
    warnings: &mut Warnings,
) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
    let verdict = shared.limits.admission.admit(peer.ip());
    if let Verdict::Refuse(_, reason) | Verdict::Drop(reason) = &verdict
        && warnings.due()
    {
        let (served, refusing) = shared.limits.admission.open();
        tracing::warn!(
            reason = reason.label(),
            served,
            refusing,
            max_connections = shared.limits.admission.max_connections(),
            "refusing connections over the connection caps"
        );
    }
    match verdict {
        Verdict::Serve(slot) => {
            let task = serve_connection(shared.clone(), tcp, slot, stop.clone());
            let alive = alive.clone();
            tokio::spawn(async move {
                task.await;
                drop(alive);
            });
        }
        Verdict::Refuse(slot, reason) => {
            let task = refuse_connection(shared.clone(), tcp, slot, reason);
            let alive = alive.clone();
            tokio::spawn(async move {
                task.await;
                drop(alive);
            });
        }
        Verdict::Drop(_) => drop(tcp),
    }
}

/// Serves one connection until it closes, upgrades, times out or shutdown finishes it.
async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    slot: Slot,
    mut stop: watch::Receiver<()>,
) {
    let tcp = Arc::new(tcp);
    let activity = Activity::new(Instant::now());
    let io = ConnIo::new(SharedTcp(tcp.clone()), activity.clone(), Arc::new(slot));
    let service = ConnService {
        router: shared.router.clone(),
        wire: Wire(tcp),
        activity: activity.clone(),
        body_read_timeout: shared.limits.body_read_timeout,
    };
    let conn = shared
        .http
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let expired = activity.expired(shared.limits.timeouts);
    tokio::pin!(expired);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                break;
            }
            phase = &mut expired => {
                // Dropping the connection closes the socket.
                metrics::counter!(m::CONNECTION_TIMEOUTS, "phase" => phase.label()).increment(1);
                tracing::debug!(phase = phase.label(), "HTTP connection timed out; closing");
                break;
            }
            _ = stop.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
    activity.done();
}

/// Answers one request on a connection over a cap: health as usual, anything else the
/// refusal; then closes.
async fn refuse_connection(shared: Arc<Shared>, tcp: TcpStream, slot: Slot, reason: Refused) {
    let tcp = Arc::new(tcp);
    let slot = Arc::new(slot);
    let evicted = {
        let slot = slot.clone();
        async move { slot.evicted().await }
    };
    let activity = Activity::new(Instant::now());
    let io = ConnIo::new(SharedTcp(tcp.clone()), activity, slot);
    let service = RefusalService {
        router: shared.router.clone(),
        wire: Wire(tcp),
        reason,
    };
    let conn = shared.refusals.serve_connection(TokioIo::new(io), service);
    tokio::select! {
        r = tokio::time::timeout(REFUSAL_LIFETIME, conn) => match r {
            Ok(Err(e)) => tracing::debug!(error = %e, "refused connection ended with an error"),
            Ok(Ok(())) => {}
            Err(_) => tracing::debug!("refused connection timed out"),
        },
        () = evicted => tracing::debug!("refused connection evicted for a newer one"),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One connection's service: the router, with the socket as `ConnectInfo` (for the direct
/// transport), the body deadline and the phase tracking.
#[derive(Clone)]
struct ConnService {
    router: Router,
    wire: Wire,
    activity: Arc<Activity>,
    body_read_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<InFlightBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.begin_request();
        let deadline = Instant::now() + self.body_read_timeout;
        let (head, incoming) = req.into_parts();
        let (body, rest) = unread::share(DeadlineBody::new(incoming, deadline));
        let mut req = Request::from_parts(head, Body::new(body));
        req.extensions_mut().insert(ConnectInfo(self.wire.clone()));
        let response = tower::Service::call(&mut self.router.clone(), req);
        let activity = self.activity.clone();
        Box::pin(async move {
            let Ok(mut res) = response.await;
            // The rest of a timed-out body may still be on its way: do not read it, close.
            let close = res.status() == axum::http::StatusCode::REQUEST_TIMEOUT
                || unread::finish(rest).await == unread::Finished::Abandoned;
            if close {
                res.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            Ok(res.map(|body| InFlightBody::new(body, activity)))
        })
    }
}

/// The service of a connection over a cap.
#[derive(Clone)]
struct RefusalService {
    router: Router,
    wire: Wire,
    reason: Refused,
}

/// Paths a refused connection still gets answered.
const HEALTH_PATHS: &[&str] = &["/livez", "/healthz", "/readyz"];

impl hyper::service::Service<Request<Incoming>> for RefusalService {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if HEALTH_PATHS.contains(&req.uri().path()) {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(self.wire.clone()));
            let response = tower::Service::call(&mut self.router.clone(), req);
            return Box::pin(async move {
                let Ok(res) = response.await;
                Ok(res)
            });
        }
        let refusal = match self.reason {
            Refused::PerAddress => ApiError::new(
                ErrorCode::TooManyConnections,
                "this address holds as many connections to this server as it may; \
                 close some or retry later",
            ),
            Refused::Capacity => ApiError::new(
                ErrorCode::AtCapacity,
                "this server holds as many connections as it may; retry later",
            ),
        };
        Box::pin(std::future::ready(Ok(refusal.into_response())))
    }
}

/// Exponential back-off for `accept()` errors.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The wait after one more failure.
    fn next(&mut self) -> Duration {
        let wait = ACCEPT_BACKOFF_MIN
            .saturating_mul(1 << self.failures.min(16))
            .min(ACCEPT_BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        wait
    }
    /// A success: returns the failures before it.
    fn reset(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }
}

/// Rate limit of the accept loop's warnings.
#[derive(Debug, Default)]
struct Warnings {
    last: Option<Instant>,
}

impl Warnings {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < WARN_INTERVAL => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u128> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.reset(), 9);
        assert_eq!(b.next(), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn an_explicit_cap_above_the_fd_budget_is_lowered() {
        let config = HttpLimits {
            max_connections: Some(5000),
            ..HttpLimits::default()
        };
        assert_eq!(
            Limits::new(&config, Some(1024)).admission.max_connections(),
            896
        );
        let config = HttpLimits {
            max_connections: Some(100),
            ..HttpLimits::default()
        };
        assert_eq!(
            Limits::new(&config, Some(1024)).admission.max_connections(),
            100
        );
    }
}
