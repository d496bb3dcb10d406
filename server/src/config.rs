//! `herald serve` settings: every flag is also a `HERALD_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use herald_protocol::limits;

/// Settings of `herald serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on (REST API, Socket.IO and health). Port 0 picks a free port.
    #[arg(long, env = "HERALD_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Address of the Prometheus metrics listener (`GET /metrics`), separate from `--bind`.
    /// Unset: no metrics listener.
    #[arg(long, env = "HERALD_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// Directory for the embedded database and the generated admin token.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    pub data_dir: PathBuf,

    /// Redis URL (`redis://host:port`). When set, Herald runs in Redis mode: projects, keys
    /// and connection tracking live in Redis and events fan out across every instance.
    #[arg(long, env = "HERALD_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key and channel Herald uses.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald")]
    pub redis_prefix: String,

    /// Redis mode: seconds an instance's heartbeat lives. A crashed instance's sockets leave
    /// the connection-tracking indexes at most 1.5 × this after its last heartbeat.
    #[arg(long, env = "HERALD_INSTANCE_TTL_SECS", default_value_t = 10)]
    pub instance_ttl_secs: u64,

    /// Seconds between two reconciliation passes: an instance re-checks its own sockets'
    /// private channels against revoked, deleted and expired keys this often (and right after
    /// its Redis link returns). Bounds how long a missed revocation notice can leave a socket in.
    #[arg(long, env = "HERALD_RECONCILE_INTERVAL_SECS", default_value_t = 5)]
    pub reconcile_interval_secs: u64,

    /// Redis mode: a revocation job its worker stopped touching for this long (crash) is
    /// taken over by another instance.
    #[arg(long, env = "HERALD_REVOCATION_STALE_SECS", default_value_t = 10)]
    pub revocation_stale_secs: u64,

    /// Fault injection for tests: a worker sleeps this long after claiming a revocation job.
    #[arg(
        long,
        env = "HERALD_REVOCATION_JOB_DELAY_MS",
        default_value_t = 0,
        hide = true
    )]
    pub revocation_job_delay_ms: u64,

    /// Admin API token. When unset, one is generated on first start and stored in
    /// `<data-dir>/admin-token` (mode 0600).
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Origins allowed to use the REST API and open sockets (comma-separated, exact match
    /// such as `https://app.example.com`). Empty allows any origin (without credentials).
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Largest event payload in bytes, on REST and on the socket. WebSocket messages and HTTP
    /// bodies may be 1 KiB larger, for the envelope.
    #[arg(long, env = "HERALD_MAX_PAYLOAD_BYTES", default_value_t = limits::DEFAULT_MAX_PAYLOAD_BYTES)]
    pub max_payload_bytes: usize,

    /// How many channels one socket may listen to at once.
    #[arg(long, env = "HERALD_MAX_CHANNELS_PER_SOCKET", default_value_t = limits::DEFAULT_MAX_CHANNELS_PER_SOCKET)]
    pub max_channels_per_socket: usize,

    /// How many members (users, not sockets) one presence channel may have; another user's
    /// `listen` is then refused with `presence_full`. At least 1.
    #[arg(long, env = "HERALD_MAX_PRESENCE_MEMBERS", default_value_t = herald_protocol::presence::DEFAULT_MAX_PRESENCE_MEMBERS)]
    pub max_presence_members: usize,

    /// Seconds a connection may stay without joining the namespace before it is closed.
    #[arg(long, env = "HERALD_CONNECT_TIMEOUT_SECS", default_value_t = limits::DEFAULT_CONNECT_TIMEOUT_SECS)]
    pub connect_timeout_secs: u64,

    /// Seconds a client may take to send a request head (request line and headers), counted
    /// from the accept or, on a kept-alive connection, from the next request's first byte; then
    /// the connection is closed. At least 1.
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT_SECS", default_value_t = limits::DEFAULT_HEADER_READ_TIMEOUT_SECS)]
    pub header_read_timeout_secs: u64,

    /// Seconds a client may take to send a whole request body, counted from the end of its
    /// head; then `408 request_timeout` and the connection is closed. At least 1.
    #[arg(long, env = "HERALD_BODY_READ_TIMEOUT_SECS", default_value_t = limits::DEFAULT_BODY_READ_TIMEOUT_SECS)]
    pub body_read_timeout_secs: u64,

    /// Seconds a kept-alive HTTP connection may wait for its next request (nothing in flight,
    /// nothing received) before it is closed. At least 1.
    #[arg(long, env = "HERALD_IDLE_TIMEOUT_SECS", default_value_t = limits::DEFAULT_IDLE_TIMEOUT_SECS)]
    pub idle_timeout_secs: u64,

    /// Most connections open at once on `--bind` (HTTP, long-polling and WebSocket alike).
    /// Unset: the open-file limit minus a reserve (an eighth of the limit, 64 to 1024) kept for
    /// health answers, refusals, Redis and files; a larger value is lowered to that. Beyond it
    /// a connection gets `503 at_capacity` (the health endpoints still answer) and is closed.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Most connections one client address (an IPv4 address, or an IPv6 /64) may hold open on
    /// `--bind`; beyond it a connection gets `429 too_many_connections` and is closed. 0: no
    /// per-address cap. Behind a proxy every connection comes from the proxy's address: raise
    /// it or set 0 there.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = limits::DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: usize,

    /// Embedded mode: most bytes the in-memory channel history may hold (event ids, payloads
    /// and bookkeeping), all channels together. Beyond it the oldest events of any channel are
    /// evicted (`herald_history_evictions_total`); `herald_history_bytes` reports the size.
    /// Redis mode keeps history in Redis, bounded per channel by the project's retention and
    /// overall by Redis's `maxmemory`.
    #[arg(long, env = "HERALD_HISTORY_MAX_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub history_max_bytes: usize,

    /// How long a disconnected socket.io-client session stays resumable (Socket.IO connection
    /// state recovery, like Socket.IO's `maxDisconnectionDuration`): a reconnect within it, on
    /// any instance, gets its channels back and the events it missed, from history. 0
    /// disables it (the CONNECT reply then carries no `pid`).
    #[arg(long, env = "HERALD_RECOVERY_WINDOW_SECS", default_value_t = 120)]
    pub recovery_window_secs: u64,

    /// Packets buffered per socket (messages per SSE stream) before the socket counts as a
    /// slow consumer.
    #[arg(long, env = "HERALD_SOCKET_BUFFER", default_value_t = 1024)]
    pub socket_buffer: usize,

    /// Seconds an SSE stream may stay silent before Herald sends a heartbeat comment (so
    /// proxies keep the connection open).
    #[arg(long, env = "HERALD_SSE_HEARTBEAT_SECS", default_value_t = herald_protocol::sse::DEFAULT_HEARTBEAT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sse_heartbeat_secs: u64,

    /// `aud` claim of private-channel tokens.
    #[arg(long, env = "HERALD_CHANNEL_AUTH_AUDIENCE", default_value = limits::DEFAULT_CHANNEL_AUTH_AUDIENCE)]
    pub channel_auth_audience: String,

    /// Lifetime of the private-channel tokens this server signs, in seconds. May not exceed
    /// `--max-token-ttl-secs` (Herald refuses to start otherwise).
    #[arg(long, env = "HERALD_CHANNEL_TOKEN_TTL_SECS", default_value_t = limits::DEFAULT_CHANNEL_TOKEN_TTL_SECS)]
    pub channel_token_ttl_secs: u64,

    /// Longest lifetime of a private-channel token `listen` accepts, in seconds: a token whose
    /// `exp - iat` or `exp - now` is longer, or whose `iat` is in the future, is refused with
    /// `token_lifetime_exceeded`, whoever signed it.
    #[arg(long, env = "HERALD_MAX_TOKEN_TTL_SECS", default_value_t = limits::DEFAULT_MAX_CHANNEL_TOKEN_TTL_SECS)]
    pub max_token_ttl_secs: u64,

    /// Milliseconds between turning `/readyz` false and closing sockets on shutdown, so a load
    /// balancer stops sending new clients first.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_MS", default_value_t = 0)]
    pub shutdown_grace_ms: u64,

    /// Seconds to wait for connections to close on shutdown.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Milliseconds a channel must stay without subscribers (on every instance) before the
    /// `channel_vacated` webhook is sent; a subscriber arriving sooner sends neither
    /// `channel_vacated` nor a second `channel_occupied`.
    #[arg(long, env = "HERALD_WEBHOOK_VACATED_DELAY_MS", default_value_t = 3_000)]
    pub webhook_vacated_delay_ms: u64,

    /// Milliseconds one webhook attempt may take, from connecting to the end of the answer.
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub webhook_timeout_ms: u64,

    /// Attempts per webhook delivery before it is failed (listed under the endpoint's
    /// deliveries, retried by hand).
    #[arg(long, env = "HERALD_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=50))]
    pub webhook_max_attempts: u32,

    /// Milliseconds before a failed webhook's first retry; each next delay is 4 times longer,
    /// up to `--webhook-retry-max-ms` (±20 % jitter; a longer `Retry-After` from the receiver
    /// wins). The defaults spread 8 attempts over about an hour.
    #[arg(long, env = "HERALD_WEBHOOK_RETRY_BASE_MS", default_value_t = 4_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub webhook_retry_base_ms: u64,

    /// Longest delay between two attempts of a webhook delivery, in milliseconds.
    #[arg(long, env = "HERALD_WEBHOOK_RETRY_MAX_MS", default_value_t = 1_200_000,
          value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub webhook_retry_max_ms: u64,

    /// Seconds a webhook's secret keeps signing next to the new one after a rotation (each
    /// request then carries both signatures), so receivers can switch without a failure.
    #[arg(
        long,
        env = "HERALD_WEBHOOK_SECRET_OVERLAP_SECS",
        default_value_t = 86_400
    )]
    pub webhook_secret_overlap_secs: u64,

    /// Seconds before an API key's `expiresAt` that the `api_key_expiring` webhook is sent.
    #[arg(
        long,
        env = "HERALD_WEBHOOK_KEY_EXPIRING_SECS",
        default_value_t = 86_400
    )]
    pub webhook_key_expiring_secs: u64,

    /// Pending deliveries one webhook endpoint may have (a receiver that is down collects
    /// them); further events for it are refused and counted
    /// (`herald_webhook_events_refused_total{reason="outbox_full"}`).
    #[arg(long, env = "HERALD_WEBHOOK_MAX_PENDING", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub webhook_max_pending: u64,

    /// Webhook attempts in flight at once on this instance (at most one per endpoint).
    #[arg(long, env = "HERALD_WEBHOOK_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub webhook_concurrency: u64,

    /// Log output format (stderr). `auto`: human-readable lines, coloured only when stderr is
    /// a terminal and `NO_COLOR` is unset; `plain` never colours (files, journald); `color`
    /// always does (a pager with `-R`); `json`: one JSON object per line. Level via
    /// `HERALD_LOG`.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured when stderr is a terminal (and `NO_COLOR` is unset).
    /// `pretty`, the former name, is accepted for it.
    #[value(alias = "pretty")]
    Auto,
    /// Human-readable lines without colour codes.
    Plain,
    /// Human-readable lines with colour codes, wherever stderr goes.
    Color,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// Whether lines of this format carry ANSI colour codes, given whether stderr is a
    /// terminal and whether `NO_COLOR` is set (non-empty).
    pub fn colored(self, stderr_is_terminal: bool, no_color: bool) -> bool {
        match self {
            LogFormat::Auto => stderr_is_terminal && !no_color,
            LogFormat::Color => true,
            LogFormat::Plain | LogFormat::Json => false,
        }
    }
}

impl ServeConfig {
    /// Revocation tunables for the worker named `consumer`.
    pub fn revocation_settings(&self, consumer: &str) -> crate::revocation::RevocationSettings {
        let mut s = crate::revocation::RevocationSettings::new(consumer);
        s.reconcile_interval = Duration::from_secs(self.reconcile_interval_secs.max(1));
        s.job_delay = Duration::from_millis(self.revocation_job_delay_ms);
        s
    }

    /// Webhook tunables.
    pub fn webhook_settings(&self) -> crate::webhooks::WebhookSettings {
        crate::webhooks::WebhookSettings {
            vacated_delay: Duration::from_millis(self.webhook_vacated_delay_ms),
            attempt_timeout: Duration::from_millis(self.webhook_timeout_ms),
            max_attempts: self.webhook_max_attempts,
            retry_base: Duration::from_millis(self.webhook_retry_base_ms),
            retry_max: Duration::from_millis(
                self.webhook_retry_max_ms.max(self.webhook_retry_base_ms),
            ),
            secret_overlap: Duration::from_secs(self.webhook_secret_overlap_secs),
            key_expiring: Duration::from_secs(self.webhook_key_expiring_secs),
            max_pending: self.webhook_max_pending as usize,
            concurrency: self.webhook_concurrency as usize,
        }
    }

    /// Largest accepted HTTP body or WebSocket message: payload limit plus the envelope.
    pub fn max_message_bytes(&self) -> usize {
        self.max_payload_bytes
            .saturating_add(limits::ENVELOPE_ALLOWANCE_BYTES)
    }

    /// The channel token signer and checker. Fails when `--channel-token-ttl-secs` exceeds
    /// `--max-token-ttl-secs`: Herald would sign tokens it refuses.
    pub fn channel_tokens(
        &self,
    ) -> Result<crate::channel_token::ChannelTokens, crate::channel_token::TtlOverCap> {
        crate::channel_token::ChannelTokens::new(
            self.channel_auth_audience.clone(),
            Duration::from_secs(self.channel_token_ttl_secs),
            Duration::from_secs(self.max_token_ttl_secs),
        )
    }

    /// Refuses settings Herald cannot run with, before anything starts.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.channel_tokens()?;
        Ok(())
    }

    /// The HTTP listener's timeouts and connection caps (the global cap still to be fitted to
    /// the open-file limit by [`crate::listen::Limits::new`]).
    pub fn http_limits(&self) -> crate::listen::HttpLimits {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        crate::listen::HttpLimits {
            header_read_timeout: secs(self.header_read_timeout_secs),
            body_read_timeout: secs(self.body_read_timeout_secs),
            idle_timeout: secs(self.idle_timeout_secs),
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
        }
    }

    /// Connect timeout as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

/// The configuration reference (`docs/configuration.md`), generated from the flag definitions
/// above so it cannot drift: `herald config-docs > docs/configuration.md`.
pub fn reference_markdown() -> String {
    use clap::CommandFactory;
    #[derive(clap::Parser)]
    #[command(name = "herald serve")]
    struct Serve {
        #[command(flatten)]
        config: ServeConfig,
    }
    let cmd = Serve::command();
    let mut out = String::from(
        "# Configuration reference\n\n\
         Every setting of `herald serve` is a flag and an environment variable; the flag wins.\n\
         Generated from the flag definitions by `herald config-docs` (a test checks that this\n\
         file is current).\n\n\
         | flag | environment | default | description |\n|---|---|---|---|\n",
    );
    for arg in cmd.get_arguments() {
        if arg.is_hide_set() {
            continue;
        }
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let default = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(",");
        let default = if default.is_empty() {
            "(unset)".to_owned()
        } else {
            format!("`{default}`")
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string().replace('\n', " "))
            .unwrap_or_default();
        let values = arg
            .get_possible_values()
            .iter()
            .map(|v| format!("`{}`", v.get_name()))
            .collect::<Vec<_>>();
        let help = if values.is_empty() {
            help
        } else {
            let stop = if help.ends_with('.') { "" } else { "." };
            format!("{help}{stop} One of {}.", values.join(", "))
        };
        out.push_str(&format!("| `--{long}` | {env} | {default} | {help} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn colour_only_on_a_terminal_unless_asked() {
        assert!(LogFormat::Auto.colored(true, false));
        assert!(!LogFormat::Auto.colored(false, false), "a file or pipe");
        assert!(!LogFormat::Auto.colored(true, true), "NO_COLOR");
        assert!(LogFormat::Color.colored(false, true));
        assert!(!LogFormat::Plain.colored(true, false));
        assert!(!LogFormat::Json.colored(true, false));
    }

    #[test]
    fn configuration_reference_is_current() {
        let committed = include_str!("../../docs/configuration.md");
        let generated = super::reference_markdown();
        assert!(
            committed == generated,
            "docs/configuration.md is stale: run `cargo run -p herald-server -- config-docs > docs/configuration.md`\n--- generated ---\n{generated}"
        );
    }
}
