//! The scenarios. Each one starts its servers, connects clients, runs measurement windows and
//! adds [`Row`]s (one per peer and case) to the report.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};

use hyper::Method;

use crate::client::{self, Clients, ConnectReport, ConnectSpec, Transport};
use crate::publisher::{self, Channels, Outcome, Plan, Target};
use crate::report::{Row, num};
use crate::servers::{self, Env, Kind, Options, Server};
use crate::stats::{CpuUse, CpuWindow, Summary, percentile, rss_bytes};

/// Scenario sizes: `--quick` or the full suite.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Repetitions of each measurement.
    pub reps: usize,
    /// Seconds of one measurement window.
    pub window: f64,
    /// Idle-memory connection counts (first and last give the slope).
    pub memory: Vec<usize>,
    /// Fan-out subscriber counts.
    pub fanout: Vec<usize>,
    /// Deliveries per second offered in the fan-out scenario.
    pub fanout_rate: f64,
    /// Publish rates of the coalescing ramp (×100 subscribers = deliveries/s).
    pub ramp: Vec<f64>,
    /// Seconds per ramp step.
    pub ramp_window: f64,
    /// Sockets in the personal-channel scenario, and its publish rate.
    pub personal: (usize, f64),
    /// Seconds the slow consumer stays stalled.
    pub slow_stall: f64,
    /// Seconds of connection churn.
    pub churn: f64,
    /// Publishes per second offered in the REST-only scenario.
    pub rest_rate: f64,
    /// Pause before reading RSS (lets the server finish and the allocator settle).
    pub settle: Duration,
    /// Memory scenario, Redis mode: publishes per second offered and seconds of the event-bus
    /// burst.
    pub burst: (f64, f64),
    /// How long after the burst its RSS is read again.
    pub burst_after: Duration,
    /// History scenario: events a reconnecting client catches up on (one measurement each).
    pub catch_up: Vec<u64>,
}

impl Sizes {
    /// The full suite.
    pub fn full() -> Self {
        Self {
            reps: 3,
            window: 2.0,
            memory: vec![1000, 5000, 15000],
            fanout: vec![100, 1000, 5000],
            fanout_rate: 20_000.0,
            ramp: vec![
                500.0, 1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0, 10_000.0, 12_000.0,
                15_000.0, 20_000.0, 25_000.0,
            ],
            ramp_window: 1.5,
            personal: (10_000, 2000.0),
            slow_stall: 8.0,
            churn: 4.0,
            rest_rate: 50_000.0,
            settle: Duration::from_millis(700),
            burst: (20_000.0, 3.0),
            burst_after: Duration::from_secs(60),
            // Not beyond Herald's default `--socket-buffer` (1024): a bigger replay is sent
            // at once and closes the socket as a slow consumer (see README, history).
            catch_up: vec![100, 1000],
        }
    }
    /// The smoke test.
    pub fn quick() -> Self {
        Self {
            reps: 1,
            window: 1.0,
            memory: vec![500, 1000],
            fanout: vec![100, 1000],
            fanout_rate: 10_000.0,
            ramp: vec![200.0, 1000.0],
            ramp_window: 1.0,
            personal: (1000, 500.0),
            slow_stall: 2.5,
            churn: 1.5,
            rest_rate: 5_000.0,
            settle: Duration::from_millis(300),
            burst: (5_000.0, 1.0),
            burst_after: Duration::from_secs(10),
            catch_up: vec![100],
        }
    }
}

/// What the scenarios share.
pub struct Ctx {
    /// Binaries and the work directory.
    pub env: Env,
    /// The subscriber engine.
    pub clients: Clients,
    /// Sizes.
    pub sizes: Sizes,
    /// Results so far.
    pub rows: Vec<Row>,
    /// Problems that mean a broken server (losses or errors where none may happen).
    pub failures: Vec<String>,
    /// `Status::server_closed` already accounted for.
    pub server_closed_seen: usize,
    /// `Status::protocol_errors` and `Status::system_errors` already accounted for.
    pub errors_seen: (u64, u64),
    /// The scenario running (and, for repeated server starts, a counter).
    pub scenario: String,
}

/// Payload padding (bytes of the `p` string): the event frame is about 200 bytes.
pub const PAD: usize = 64;

/// One measurement window: publish, wait for every delivery (or give up), collect.
pub struct Window {
    /// Publisher outcome.
    pub out: Outcome,
    /// Deliveries expected (`ok` × subscribers per publish).
    pub expected: u64,
    /// Deliveries received.
    pub received: u64,
    /// Publish→receive latencies (ns), sorted.
    pub latency: Vec<u64>,
    /// First-to-last delivery spread of each publish (ns), sorted.
    pub makespan: Vec<u64>,
    /// CPU use over the window (publishing and draining).
    pub cpu: CpuUse,
}

impl Window {
    /// Deliveries missing.
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.received)
    }
    /// Deliveries per second over the publishing time.
    pub fn deliveries_per_s(&self) -> f64 {
        self.received as f64 / self.out.elapsed.max(1e-9)
    }
    /// Server CPU µs per delivery.
    pub fn cpu_us_per_delivery(&self) -> f64 {
        self.cpu.server * 1e6 / (self.received.max(1) as f64)
    }
    /// Latency percentile in ms.
    pub fn lat_ms(&self, p: f64) -> f64 {
        percentile(&self.latency, p) as f64 / 1e6
    }
    /// Makespan percentile in ms.
    pub fn makespan_ms(&self, p: f64) -> f64 {
        percentile(&self.makespan, p) as f64 / 1e6
    }
}

fn conns_for(rate: f64) -> usize {
    ((rate / 200.0).ceil() as usize).clamp(2, 32)
}

fn plan(rate: f64, seconds: f64, channels: Channels, pad: usize) -> Plan {
    Plan {
        rate,
        total: ((rate * seconds).round() as u64).max(1),
        channels,
        pad,
        conns: conns_for(rate),
        deadline: None,
    }
}

fn target(s: &Server) -> Target {
    Target {
        addr: s.addr,
        auth: s.auth.clone(),
    }
}

impl Ctx {
    /// Runs one window against `publish_to`, with `per_publish` subscribers per event,
    /// counting CPU of `pids`.
    pub async fn window(
        &self,
        pids: &[u32],
        publish_to: &Target,
        plan: &Plan,
        per_publish: u64,
    ) -> anyhow::Result<Window> {
        let _ = self.clients.records().await;
        let before = self.clients.status().await.events;
        self.clients
            .reserve((plan.total.min(5_000_000) * per_publish) as usize);
        let cpu = CpuWindow::start(pids);
        let out = publisher::run(publish_to, plan).await?;
        let expected = out.ok * per_publish;
        // Drain: wait until everything arrived, or nothing new came for a second.
        let mut last = before;
        let mut still = 0;
        loop {
            let now = self.clients.status().await.events;
            if now - before >= expected {
                break;
            }
            if now == last {
                still += 1;
                if still >= 100 {
                    break;
                }
            } else {
                still = 0;
                last = now;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cpu = cpu.stop();
        let mut recs = self.clients.records().await;
        recs.retain(|(t, _)| *t >= out.start_ns && *t <= out.end_ns);
        let mut latency: Vec<u64> = recs.iter().map(|(t, r)| r.saturating_sub(*t)).collect();
        latency.sort_unstable();
        recs.sort_unstable();
        let mut makespan = Vec::new();
        let mut i = 0;
        while i < recs.len() {
            let t = recs[i].0;
            let (mut lo, mut hi, mut j) = (u64::MAX, 0, i);
            while j < recs.len() && recs[j].0 == t {
                lo = lo.min(recs[j].1);
                hi = hi.max(recs[j].1);
                j += 1;
            }
            if j - i > 1 {
                makespan.push(hi - lo);
            }
            i = j;
        }
        makespan.sort_unstable();
        Ok(Window {
            out,
            expected,
            received: recs.len() as u64,
            latency,
            makespan,
            cpu,
        })
    }

    /// Connects `channels.len()` WebSocket clients to `server`.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        channels: Vec<String>,
        rcvbuf: Option<usize>,
    ) -> ConnectReport {
        self.connect_spec(addr, channels, rcvbuf, Transport::WebSocket)
            .await
    }

    /// Connects `channels.len()` clients over `transport` to `server`.
    pub async fn connect_over(
        &self,
        addr: std::net::SocketAddr,
        channels: Vec<String>,
        transport: Transport,
    ) -> ConnectReport {
        self.connect_spec(addr, channels, None, transport).await
    }

    async fn connect_spec(
        &self,
        addr: std::net::SocketAddr,
        channels: Vec<String>,
        rcvbuf: Option<usize>,
        transport: Transport,
    ) -> ConnectReport {
        let n = channels.len();
        self.clients
            .connect(ConnectSpec {
                addr,
                project: servers::PROJECT.to_owned(),
                channels,
                concurrency: 128,
                timeout: Duration::from_secs(10 + n as u64 / 1000),
                rcvbuf,
                since: None,
                transport,
            })
            .await
    }

    fn fail(&mut self, what: String) {
        eprintln!("  !! {what}");
        self.failures.push(what);
    }

    /// Records connect failures as failures.
    fn check_connect(&mut self, peer: Kind, scenario: &str, r: &ConnectReport) -> bool {
        if r.failed > 0 {
            self.fail(format!(
                "{scenario}/{}: {} of {} clients failed to connect and listen: {:?}",
                peer.name(),
                r.failed,
                r.failed + r.ok,
                r.errors
            ));
            return false;
        }
        true
    }

    /// Records publish errors and losses of a window that should have none.
    fn check_window(&mut self, peer: Kind, scenario: &str, w: &Window) {
        if w.out.errors > 0 {
            self.fail(format!(
                "{scenario}/{}: {} publish errors: {:?}",
                peer.name(),
                w.out.errors,
                w.out.error_samples
            ));
        }
        if w.lost() > 0 {
            self.fail(format!(
                "{scenario}/{}: {} of {} deliveries lost",
                peer.name(),
                w.lost(),
                w.expected
            ));
        }
    }

    async fn start(&mut self, kind: Kind, opts: &Options) -> anyhow::Result<Server> {
        let mut opts = opts.clone();
        opts.scenario = self.scenario.clone();
        servers::start(kind, &self.env, &opts)
            .await
            .with_context(|| format!("starting {}", kind.name()))
    }

    async fn finish(&mut self, mut server: Server, scenario: &str) {
        let status = self.clients.status().await;
        let closed = status.server_closed - self.server_closed_seen;
        self.server_closed_seen = status.server_closed;
        // The slow consumer may legitimately be closed by the server.
        if closed > 0 && !(scenario == "slow-consumer" && closed == 1) {
            self.fail(format!(
                "{scenario}/{}: the server closed {closed} listening clients: {:?}",
                server.kind.name(),
                status.close_reasons
            ));
        }
        let protocol_errors = status.protocol_errors - self.errors_seen.0;
        let system_errors = status.system_errors - self.errors_seen.1;
        self.errors_seen = (status.protocol_errors, status.system_errors);
        // The slow consumer may be told why it is closed (`slow_consumer`).
        let told = scenario == "slow-consumer" && system_errors <= 1;
        if protocol_errors > 0 || (system_errors > 0 && !told) {
            self.fail(format!(
                "{scenario}/{}: {protocol_errors} unreadable frames, {system_errors} system_message errors",
                server.kind.name(),
            ));
        }
        self.clients.close_all().await;
        if !server.alive() {
            self.fail(format!(
                "{scenario}/{}: the server exited during the scenario",
                server.kind.name()
            ));
        }
        server.stop().await;
    }

    fn row(&mut self, scenario: &str, case: &str, peer: &str) -> usize {
        self.rows.push(Row {
            scenario: scenario.to_owned(),
            case: case.to_owned(),
            peer: peer.to_owned(),
            metrics: BTreeMap::new(),
            notes: Vec::new(),
            generator_max_core: 0.0,
        });
        self.rows.len() - 1
    }
}

/// Adds repetitions of window metrics to a row.
fn put_windows(row: &mut Row, ws: &[Window], with_makespan: bool) {
    let m = |f: &dyn Fn(&Window) -> f64| Summary::of(&ws.iter().map(f).collect::<Vec<_>>());
    row.metrics
        .insert("deliveries_per_s".into(), m(&|w| w.deliveries_per_s()));
    row.metrics.insert(
        "cpu_us_per_delivery".into(),
        m(&|w| w.cpu_us_per_delivery()),
    );
    row.metrics.insert("p50_ms".into(), m(&|w| w.lat_ms(50.0)));
    row.metrics.insert("p99_ms".into(), m(&|w| w.lat_ms(99.0)));
    row.metrics.insert("p999_ms".into(), m(&|w| w.lat_ms(99.9)));
    if with_makespan {
        row.metrics
            .insert("makespan_p50_ms".into(), m(&|w| w.makespan_ms(50.0)));
        row.metrics
            .insert("makespan_p99_ms".into(), m(&|w| w.makespan_ms(99.0)));
    }
    row.metrics.insert("lost".into(), m(&|w| w.lost() as f64));
    row.metrics
        .insert("publish_errors".into(), m(&|w| w.out.errors as f64));
    row.metrics
        .insert("server_core".into(), m(&|w| w.cpu.server_core()));
    row.metrics
        .insert("generator_core".into(), m(&|w| w.cpu.generator_core()));
    note_generator(row, ws.iter().map(|w| w.cpu.generator_core()));
}

fn note_generator(row: &mut Row, cores: impl Iterator<Item = f64>) {
    for g in cores {
        row.generator_max_core = row.generator_max_core.max(g);
    }
    if row.generator_max_core > 0.8 {
        row.notes.push(format!(
            "generator used {:.0}% of its core (> 80%): this measurement may be generator-bound",
            row.generator_max_core * 100.0
        ));
    }
}

async fn settle_rss(settle: Duration, pid: u32) -> f64 {
    tokio::time::sleep(settle).await;
    rss_bytes(pid).unwrap_or(0) as f64
}

/// Idle memory: RSS with no connection, and RSS per connection from the slope between the
/// first and last count, idle and after traffic. Herald runs it twice, embedded and in Redis
/// mode (one instance on a redis-server of its own), and in Redis mode then bursts the event
/// bus ([`memory_burst`]).
pub async fn memory(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    memory_mode(ctx, kind, None).await?;
    if kind != Kind::Herald {
        return Ok(());
    }
    let redis = match servers::start_redis(&ctx.env).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("-- memory / herald in Redis mode: skipped ({e:#})");
            return Ok(());
        }
    };
    let url = redis.url();
    let r = memory_mode(ctx, kind, Some(&url)).await;
    let b = match r {
        Ok(()) => memory_burst(ctx, &url).await,
        Err(e) => Err(e),
    };
    redis.stop().await;
    b
}

/// The case name of the memory rows: `{first}..{last} sockets`, prefixed with
/// [`REDIS_MODE`] in Redis mode.
pub const REDIS_MODE: &str = "Redis mode, ";

async fn memory_mode(ctx: &mut Ctx, kind: Kind, redis_url: Option<&str>) -> anyhow::Result<()> {
    const S: &str = "memory";
    let ns = ctx.sizes.memory.clone();
    let (first, last) = (ns[0], *ns.last().context("no sizes")?);
    let mode = if redis_url.is_some() { REDIS_MODE } else { "" };
    let r = ctx.row(S, &format!("{mode}{first}..{last} sockets"), kind.name());
    let opts = Options {
        redis_url: redis_url.map(str::to_owned),
        tag: if redis_url.is_some() { "-redis" } else { "" }.into(),
        ..Options::default()
    };
    let mut slopes = Vec::new();
    for rep in 0..ctx.sizes.reps {
        slopes.push(rss_slope(ctx, kind, &opts, Transport::WebSocket, S, rep).await?);
    }
    put_slopes(&mut ctx.rows[r], slopes);
    Ok(())
}

/// One repetition of the idle-memory measurement on a fresh server.
struct RssSlope {
    /// RSS with no connection, MB.
    no_conn_mb: f64,
    /// KB RSS per idle connection (slope from the first to the last count).
    idle_kb: f64,
    /// KB RSS per connection after ten events to everyone.
    traffic_kb: f64,
    /// Connections per second of each batch.
    connect_rates: Vec<f64>,
    /// The RSS points, for the notes.
    line: String,
}

/// Starts a server, connects [`Sizes::memory`]'s counts of idle clients over `transport` to
/// one channel, and reads the RSS slope between the first and last count, idle and after ten
/// events to everyone (the baseline is taken after ten events at the first count).
async fn rss_slope(
    ctx: &mut Ctx,
    kind: Kind,
    opts: &Options,
    transport: Transport,
    scenario: &str,
    rep: usize,
) -> anyhow::Result<RssSlope> {
    let ns = ctx.sizes.memory.clone();
    let (first, last) = (ns[0], *ns.last().context("no sizes")?);
    let server = ctx.start(kind, opts).await?;
    let t = target(&server);
    let pids = server.pids();
    let pid = server.pid;
    let mut connect_rates = Vec::new();
    let r_empty = settle_rss(ctx.sizes.settle, pid).await;
    let c = ctx
        .connect_over(server.addr, vec!["idle".into(); first], transport)
        .await;
    ctx.check_connect(kind, scenario, &c);
    connect_rates.push(c.ok as f64 / c.elapsed.as_secs_f64().max(1e-9));
    let mut listening = c.ok as u64;
    let r_first_idle = settle_rss(ctx.sizes.settle, pid).await;
    // Ten events to everyone, then the baseline both slopes start from.
    let w = ctx
        .window(
            &pids,
            &t,
            &plan(50.0, 0.2, Channels::One("idle".into()), PAD),
            listening,
        )
        .await?;
    ctx.check_window(kind, scenario, &w);
    let base = settle_rss(ctx.sizes.settle, pid).await;
    let mut have = first;
    let mut line = format!(
        "rep {}: no connection {:.1} MB; {}k idle {:.0} MB, after traffic {:.0} MB",
        rep + 1,
        r_empty / 1e6,
        first / 1000,
        r_first_idle / 1e6,
        base / 1e6
    );
    let mut r_last_idle = base;
    for &n in &ns[1..] {
        let c = ctx
            .connect_over(server.addr, vec!["idle".into(); n - have], transport)
            .await;
        ctx.check_connect(kind, scenario, &c);
        connect_rates.push(c.ok as f64 / c.elapsed.as_secs_f64().max(1e-9));
        listening += c.ok as u64;
        have = n;
        r_last_idle = settle_rss(ctx.sizes.settle, pid).await;
        line.push_str(&format!("; {}k {:.0} MB", n / 1000, r_last_idle / 1e6));
    }
    let w = ctx
        .window(
            &pids,
            &t,
            &plan(50.0, 0.2, Channels::One("idle".into()), PAD),
            listening,
        )
        .await?;
    ctx.check_window(kind, scenario, &w);
    let r_last_traffic = settle_rss(ctx.sizes.settle, pid).await;
    line.push_str(&format!("; after traffic {:.0} MB", r_last_traffic / 1e6));
    let span = (last - first) as f64;
    ctx.finish(server, scenario).await;
    Ok(RssSlope {
        no_conn_mb: r_empty / 1e6,
        idle_kb: (r_last_idle - base) / span / 1024.0,
        traffic_kb: (r_last_traffic - base) / span / 1024.0,
        connect_rates,
        line,
    })
}

/// The idle-memory metrics of a row from its repetitions.
fn put_slopes(row: &mut Row, slopes: Vec<RssSlope>) {
    let of = |f: &dyn Fn(&RssSlope) -> f64| Summary::of(&slopes.iter().map(f).collect::<Vec<_>>());
    row.metrics
        .insert("rss_mb_no_connection".into(), of(&|s| s.no_conn_mb));
    row.metrics
        .insert("rss_kb_per_conn_idle".into(), of(&|s| s.idle_kb));
    row.metrics
        .insert("rss_kb_per_conn_traffic".into(), of(&|s| s.traffic_kb));
    let rates: Vec<f64> = slopes
        .iter()
        .flat_map(|s| s.connect_rates.clone())
        .collect();
    row.metrics
        .insert("connects_per_s".into(), Summary::of(&rates));
    row.notes.extend(slopes.into_iter().map(|s| s.line));
}

/// Case name of the burst row.
pub const BURST_CASE: &str = "Redis mode, event-bus burst";

/// A burst through the event bus: instance B is stopped (`SIGSTOP`) while publishes go
/// through instance A, so Redis holds B's share; B is then resumed and takes the whole backlog
/// at once, through its hand-over queue, bus listener and sockets. RSS of both instances
/// before, at the peak (`VmHWM`, the process's high-water mark) and [`Sizes::burst_after`]
/// after.
async fn memory_burst(ctx: &mut Ctx, url: &str) -> anyhow::Result<()> {
    const S: &str = "memory";
    let kind = Kind::Herald;
    let r = ctx.row(S, BURST_CASE, kind.name());
    let a = ctx
        .start(
            kind,
            &Options {
                redis_url: Some(url.to_owned()),
                tag: "-burst-a".into(),
                ..Options::default()
            },
        )
        .await?;
    let b = ctx
        .start(
            kind,
            &Options {
                redis_url: Some(url.to_owned()),
                skip_setup: true,
                tag: "-burst-b".into(),
                ..Options::default()
            },
        )
        .await?;
    wait_both_instances_take_events(&a).await?;
    // One listener on B for the end marker: events on the bus arrive in order, so once it
    // has the marker B has taken the whole backlog. Nobody listens to the burst's channel:
    // what is measured is the bus, not socket queues.
    let c = ctx.connect(b.addr, vec!["burst-end".into()], None).await;
    ctx.check_connect(kind, S, &c);
    let (a0, b0) = (
        settle_rss(ctx.sizes.settle, a.pid).await,
        rss_bytes(b.pid).unwrap_or(0) as f64,
    );
    let (a_hwm0, b_hwm0) = (hwm_bytes(a.pid), hwm_bytes(b.pid));
    signal(b.pid, "-STOP");
    let (rate, seconds) = ctx.sizes.burst;
    let p = Plan {
        rate,
        total: (rate * seconds) as u64,
        channels: Channels::One("burst".into()),
        pad: PAD,
        conns: 32,
        deadline: Some(Duration::from_secs_f64(seconds * 2.0)),
    };
    let out = publisher::run(&target(&a), &p).await;
    signal(b.pid, "-CONT");
    let out = out?;
    let before = ctx.clients.status().await.events;
    let marker = Plan {
        rate: 10.0,
        total: 1,
        channels: Channels::One("burst-end".into()),
        pad: PAD,
        conns: 1,
        deadline: None,
    };
    // Right after B resumes, A may answer 503 until B's subscription is confirmed again.
    let mut got_marker = false;
    for _ in 0..100 {
        if publisher::run(&target(&a), &marker).await?.ok == 1 {
            for _ in 0..3000 {
                if ctx.clients.status().await.events > before {
                    got_marker = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !got_marker {
        ctx.fail(format!(
            "{S}/herald: B did not get the end marker after the event-bus burst"
        ));
    }
    let (a_peak, b_peak) = (hwm_bytes(a.pid), hwm_bytes(b.pid));
    let after = ctx.sizes.burst_after;
    tokio::time::sleep(after).await;
    let (a1, b1) = (
        rss_bytes(a.pid).unwrap_or(0) as f64,
        rss_bytes(b.pid).unwrap_or(0) as f64,
    );
    let row = &mut ctx.rows[r];
    let mb = |x: f64| Summary::of(&[x / 1e6]);
    row.metrics.insert("a_rss_mb_before".into(), mb(a0));
    row.metrics.insert("a_rss_mb_peak".into(), mb(a_peak));
    row.metrics.insert("a_rss_mb_after".into(), mb(a1));
    row.metrics.insert("b_rss_mb_before".into(), mb(b0));
    row.metrics.insert("b_rss_mb_peak".into(), mb(b_peak));
    row.metrics.insert("b_rss_mb_after".into(), mb(b1));
    row.metrics
        .insert("burst_events".into(), Summary::of(&[out.ok as f64]));
    row.metrics
        .insert("burst_refused".into(), Summary::of(&[out.errors as f64]));
    row.metrics
        .insert("after_s".into(), Summary::of(&[after.as_secs_f64()]));
    row.notes.push(format!(
        "B stopped while A took {} publishes ({} refused, {:?}); B took the backlog after \
         resuming (end marker received: {got_marker}). A: {:.1} MB before, {:.1} MB peak, \
         {:.1} MB {:.0} s after; B: {:.1} → {:.1} → {:.1} MB (peaks are VmHWM; before the \
         burst VmHWM was A {:.1}, B {:.1} MB)",
        out.ok,
        out.errors,
        out.error_samples.first(),
        a0 / 1e6,
        a_peak / 1e6,
        a1 / 1e6,
        after.as_secs_f64(),
        b0 / 1e6,
        b_peak / 1e6,
        b1 / 1e6,
        a_hwm0 / 1e6,
        b_hwm0 / 1e6,
    ));
    ctx.finish(b, S).await;
    ctx.finish(a, S).await;
    Ok(())
}

/// `VmHWM` (peak RSS) of a process in bytes, 0 when unreadable.
fn hwm_bytes(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0)
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// Fan-out to one channel at each subscriber count, at a fixed offered delivery rate.
pub async fn fanout(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    const S: &str = "fanout";
    for subs in ctx.sizes.fanout.clone() {
        let rate = ctx.sizes.fanout_rate / subs as f64;
        let r = ctx.row(S, &format!("{subs} subscribers"), kind.name());
        let opts = Options {
            tag: format!("-{subs}"),
            ..Options::default()
        };
        let server = ctx.start(kind, &opts).await?;
        let t = target(&server);
        let pids = server.pids();
        let c = ctx
            .connect(server.addr, vec!["fan".into(); subs], None)
            .await;
        if !ctx.check_connect(kind, S, &c) {
            ctx.finish(server, S).await;
            continue;
        }
        let ch = || Channels::One("fan".into());
        let warm = ctx
            .window(&pids, &t, &plan(rate, 0.5, ch(), PAD), subs as u64)
            .await?;
        ctx.check_window(kind, S, &warm);
        let mut ws = Vec::new();
        for _ in 0..ctx.sizes.reps {
            let w = ctx
                .window(
                    &pids,
                    &t,
                    &plan(rate, ctx.sizes.window, ch(), PAD),
                    subs as u64,
                )
                .await?;
            ctx.check_window(kind, S, &w);
            ws.push(w);
        }
        put_windows(&mut ctx.rows[r], &ws, true);
        ctx.rows[r]
            .notes
            .push(format!("{rate:.1} publishes/s × {subs} subscribers"));
        ctx.finish(server, S).await;
    }
    Ok(())
}

/// Herald's Server-Sent Events transport next to its WebSocket transport, in one run (Herald
/// only: the peers have no SSE). Memory: for each repetition a fresh server per transport,
/// [`Sizes::memory`]'s counts of idle clients ([`rss_slope`], as in `memory`). Fan-out: for
/// each of [`Sizes::fanout`]'s counts one server with that many WebSocket subscribers on one
/// channel and as many SSE subscribers on another, and windows at `fanout`'s rate that
/// alternate between the two channels, so each pair ran on the same server within seconds.
/// The SSE rows note the ratio SSE/WebSocket; `cpu_ratio_vs_websocket` is that of each pair
/// of windows.
pub async fn sse(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    const S: &str = "sse";
    if kind != Kind::Herald {
        return Ok(());
    }
    let ns = ctx.sizes.memory.clone();
    let (first, last) = (ns[0], *ns.last().context("no sizes")?);
    let transports = [Transport::WebSocket, Transport::Sse];
    let rows = transports.map(|tr| {
        ctx.row(
            S,
            &format!("{first}..{last} idle clients, {}", tr.name()),
            kind.name(),
        )
    });
    let mut slopes: [Vec<RssSlope>; 2] = [Vec::new(), Vec::new()];
    for rep in 0..ctx.sizes.reps {
        for (i, tr) in transports.into_iter().enumerate() {
            let opts = Options {
                tag: format!("-memory-{}", tr.name().to_lowercase()),
                ..Options::default()
            };
            slopes[i].push(rss_slope(ctx, kind, &opts, tr, S, rep).await?);
        }
    }
    let [ws_slopes, sse_slopes] = slopes;
    put_slopes(&mut ctx.rows[rows[0]], ws_slopes);
    put_slopes(&mut ctx.rows[rows[1]], sse_slopes);
    let (ws_idle, sse_idle) = (
        median(&ctx.rows[rows[0]], "rss_kb_per_conn_idle"),
        median(&ctx.rows[rows[1]], "rss_kb_per_conn_idle"),
    );
    let (ws_traffic, sse_traffic) = (
        median(&ctx.rows[rows[0]], "rss_kb_per_conn_traffic"),
        median(&ctx.rows[rows[1]], "rss_kb_per_conn_traffic"),
    );
    ctx.rows[rows[1]].notes.insert(
        0,
        format!(
            "SSE/WebSocket: KB RSS per idle client {} / {} = {}; after traffic {} / {} = {}",
            num(sse_idle),
            num(ws_idle),
            times(sse_idle, ws_idle),
            num(sse_traffic),
            num(ws_traffic),
            times(sse_traffic, ws_traffic)
        ),
    );

    for subs in ctx.sizes.fanout.clone() {
        let rate = ctx.sizes.fanout_rate / subs as f64;
        let rows = transports.map(|tr| {
            ctx.row(
                S,
                &format!("{subs} subscribers, {}", tr.name()),
                kind.name(),
            )
        });
        let opts = Options {
            tag: format!("-fanout-{subs}"),
            ..Options::default()
        };
        let server = ctx.start(kind, &opts).await?;
        let t = target(&server);
        let pids = server.pids();
        let channel = |tr: Transport| format!("fan-{}", tr.name().to_lowercase());
        let mut connected = true;
        for tr in transports {
            let c = ctx
                .connect_over(server.addr, vec![channel(tr); subs], tr)
                .await;
            connected &= ctx.check_connect(kind, S, &c);
        }
        if !connected {
            ctx.finish(server, S).await;
            continue;
        }
        for tr in transports {
            let warm = ctx
                .window(
                    &pids,
                    &t,
                    &plan(rate, 0.5, Channels::One(channel(tr)), PAD),
                    subs as u64,
                )
                .await?;
            ctx.check_window(kind, S, &warm);
        }
        let mut ws: [Vec<Window>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..ctx.sizes.reps {
            for (i, tr) in transports.into_iter().enumerate() {
                let w = ctx
                    .window(
                        &pids,
                        &t,
                        &plan(rate, ctx.sizes.window, Channels::One(channel(tr)), PAD),
                        subs as u64,
                    )
                    .await?;
                ctx.check_window(kind, S, &w);
                ws[i].push(w);
            }
        }
        let ratios: Vec<f64> = ws[1]
            .iter()
            .zip(&ws[0])
            .map(|(s, w)| s.cpu_us_per_delivery() / w.cpu_us_per_delivery().max(1e-9))
            .collect();
        for (i, tr) in transports.into_iter().enumerate() {
            let row = &mut ctx.rows[rows[i]];
            put_windows(row, &ws[i], true);
            row.notes.push(format!(
                "{rate:.1} publishes/s × {subs} {} subscribers; windows alternate with the other transport's on the same server",
                tr.name()
            ));
        }
        ctx.rows[rows[1]]
            .metrics
            .insert("cpu_ratio_vs_websocket".into(), Summary::of(&ratios));
        let m = |i: usize, metric: &str| median(&ctx.rows[rows[i]], metric);
        let note = format!(
            "SSE/WebSocket: server µs/delivery {} / {} = {} (pairs of windows: {}); p50 {} / {} ms = {}; p99 {} / {} ms = {}",
            num(m(1, "cpu_us_per_delivery")),
            num(m(0, "cpu_us_per_delivery")),
            times(m(1, "cpu_us_per_delivery"), m(0, "cpu_us_per_delivery")),
            ratios
                .iter()
                .map(|q| format!("{q:.2}×"))
                .collect::<Vec<_>>()
                .join(", "),
            num(m(1, "p50_ms")),
            num(m(0, "p50_ms")),
            times(m(1, "p50_ms"), m(0, "p50_ms")),
            num(m(1, "p99_ms")),
            num(m(0, "p99_ms")),
            times(m(1, "p99_ms"), m(0, "p99_ms")),
        );
        ctx.rows[rows[1]].notes.insert(0, note);
        ctx.finish(server, S).await;
    }
    Ok(())
}

/// A row's median of `metric` (NaN when it has none).
fn median(row: &Row, metric: &str) -> f64 {
    row.metrics.get(metric).map_or(f64::NAN, |s| s.median)
}

/// `a / b` as `1.23×`, `–` when it cannot be computed.
fn times(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// One step of a ramp passes with no loss, no publish error, p99 < 50 ms and the offered rate
/// achieved (within 10%).
fn step_passes(w: &Window, rate: f64) -> bool {
    w.lost() == 0
        && w.out.errors == 0
        && w.lat_ms(99.0) < 50.0
        && w.out.achieved_rate() >= 0.9 * rate
}

/// Ramps the publish rate to `subs` subscribers until a step fails; returns the trail and the
/// windows at the best passing rate (re-measured to `reps`).
async fn ramp(
    ctx: &mut Ctx,
    pids: &[u32],
    publish_to: &Target,
    subs: usize,
) -> anyhow::Result<(Vec<String>, f64, Vec<Window>)> {
    let mut trail = Vec::new();
    let mut best: Option<(f64, Window)> = None;
    for rate in ctx.sizes.ramp.clone() {
        let w = ctx
            .window(
                pids,
                publish_to,
                &plan(
                    rate,
                    ctx.sizes.ramp_window,
                    Channels::One("ramp".into()),
                    PAD,
                ),
                subs as u64,
            )
            .await?;
        let ok = step_passes(&w, rate);
        trail.push(format!(
            "{}k/s offered: {:.0}k/s, p99 {:.1} ms, lost {}, server {:.0}%, generator {:.0}%{}",
            rate * subs as f64 / 1000.0,
            w.deliveries_per_s() / 1000.0,
            w.lat_ms(99.0),
            w.lost(),
            w.cpu.server_core() * 100.0,
            w.cpu.generator_core() * 100.0,
            if ok { "" } else { " ✗" }
        ));
        if !ok {
            // Let queues empty before anything else runs.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = ctx.clients.records().await;
            break;
        }
        best = Some((rate, w));
    }
    let Some((rate, w)) = best else {
        return Ok((trail, 0.0, Vec::new()));
    };
    let mut ws = vec![w];
    while ws.len() < ctx.sizes.reps {
        ws.push(
            ctx.window(
                pids,
                publish_to,
                &plan(
                    rate,
                    ctx.sizes.ramp_window,
                    Channels::One("ramp".into()),
                    PAD,
                ),
                subs as u64,
            )
            .await?,
        );
    }
    Ok((trail, rate, ws))
}

fn put_ramp(row: &mut Row, trail: Vec<String>, rate: f64, subs: usize, ws: &[Window], top: bool) {
    if ws.is_empty() {
        row.notes.push("no step passed".into());
        row.metrics
            .insert("max_deliveries_per_s".into(), Summary::of(&[0.0]));
    } else {
        let m = |f: &dyn Fn(&Window) -> f64| Summary::of(&ws.iter().map(f).collect::<Vec<_>>());
        row.metrics
            .insert("max_deliveries_per_s".into(), m(&|w| w.deliveries_per_s()));
        row.metrics.insert(
            "deliveries_per_core_s".into(),
            m(&|w| w.deliveries_per_s() / w.cpu.server_core().max(1e-9)),
        );
        row.metrics.insert("p50_ms".into(), m(&|w| w.lat_ms(50.0)));
        row.metrics.insert("p99_ms".into(), m(&|w| w.lat_ms(99.0)));
        row.metrics.insert(
            "cpu_us_per_delivery".into(),
            m(&|w| w.cpu_us_per_delivery()),
        );
        row.metrics
            .insert("server_core".into(), m(&|w| w.cpu.server_core()));
        row.metrics
            .insert("generator_core".into(), m(&|w| w.cpu.generator_core()));
        row.metrics.insert("lost".into(), m(&|w| w.lost() as f64));
        note_generator(row, ws.iter().map(|w| w.cpu.generator_core()));
        row.notes.push(format!(
            "best step: {rate:.0} publishes/s × {subs} subscribers (p99 < 50 ms, no loss){}",
            if top {
                "; the top of the ramp: the server's limit is higher (the generator's is near)"
            } else {
                ""
            }
        ));
    }
    row.notes.extend(trail);
}

/// Coalescing ramp at 100 subscribers.
pub async fn coalescing(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    const S: &str = "coalescing";
    let subs = 100;
    let r = ctx.row(S, "100 subscribers, ramp", kind.name());
    let server = ctx.start(kind, &Options::default()).await?;
    let t = target(&server);
    let pids = server.pids();
    let c = ctx
        .connect(server.addr, vec!["ramp".into(); subs], None)
        .await;
    if ctx.check_connect(kind, S, &c) {
        let (trail, rate, ws) = ramp(ctx, &pids, &t, subs).await?;
        if ws.is_empty() {
            ctx.fail(format!(
                "{S}/{}: not even the first ramp step passed",
                kind.name()
            ));
        }
        let top = ctx.sizes.ramp.last() == Some(&rate);
        put_ramp(&mut ctx.rows[r], trail, rate, subs, &ws, top);
    }
    ctx.finish(server, S).await;
    Ok(())
}

/// Many sockets, each on its own channel; publishes spread over them.
pub async fn personal(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    const S: &str = "personal";
    let (n, rate) = ctx.sizes.personal;
    let r = ctx.row(S, &format!("{n} sockets, own channel each"), kind.name());
    let server = ctx.start(kind, &Options::default()).await?;
    let t = target(&server);
    let pids = server.pids();
    let c = ctx
        .connect(server.addr, (0..n).map(|i| format!("u{i}")).collect(), None)
        .await;
    if ctx.check_connect(kind, S, &c) {
        let ch = || Channels::Spread {
            prefix: "u".into(),
            count: n,
        };
        let mut ws = Vec::new();
        for _ in 0..ctx.sizes.reps {
            let w = ctx
                .window(&pids, &t, &plan(rate, ctx.sizes.window, ch(), PAD), 1)
                .await?;
            ctx.check_window(kind, S, &w);
            ws.push(w);
        }
        put_windows(&mut ctx.rows[r], &ws, false);
        ctx.rows[r].metrics.insert(
            "connects_per_s".into(),
            Summary::of(&[c.ok as f64 / c.elapsed.as_secs_f64().max(1e-9)]),
        );
        ctx.rows[r]
            .notes
            .push(format!("{rate:.0} publishes/s, each to one random socket"));
    }
    ctx.finish(server, S).await;
    Ok(())
}

/// The REST publish path alone: a channel nobody listens to, 16 connections, closed loop.
pub async fn rest(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    const S: &str = "rest";
    let rate = ctx.sizes.rest_rate;
    let r = ctx.row(
        S,
        &format!(
            "{}k publishes/s offered to a channel without listeners",
            rate / 1000.0
        ),
        kind.name(),
    );
    let server = ctx.start(kind, &Options::default()).await?;
    let t = target(&server);
    let pids = server.pids();
    let mut ws = Vec::new();
    for _ in 0..ctx.sizes.reps {
        let p = Plan {
            rate,
            total: (rate * ctx.sizes.window) as u64,
            channels: Channels::One("nobody".into()),
            pad: PAD,
            conns: 16,
            deadline: None,
        };
        let w = ctx.window(&pids, &t, &p, 0).await?;
        ctx.check_window(kind, S, &w);
        ws.push(w);
    }
    let row = &mut ctx.rows[r];
    let m = |f: &dyn Fn(&Window) -> f64| Summary::of(&ws.iter().map(f).collect::<Vec<_>>());
    row.metrics
        .insert("publishes_per_s".into(), m(&|w| w.out.achieved_rate()));
    row.metrics.insert(
        "publishes_per_core_s".into(),
        m(&|w| w.out.achieved_rate() / w.cpu.server_core().max(1e-9)),
    );
    row.metrics.insert(
        "cpu_us_per_publish".into(),
        m(&|w| w.cpu.server * 1e6 / w.out.ok.max(1) as f64),
    );
    let rtt = |w: &Window, p: f64| {
        let mut v = w.out.rtt_ns.clone();
        v.sort_unstable();
        percentile(&v, p) as f64 / 1e6
    };
    row.metrics
        .insert("rtt_p50_ms".into(), m(&|w| rtt(w, 50.0)));
    row.metrics
        .insert("rtt_p99_ms".into(), m(&|w| rtt(w, 99.0)));
    row.metrics
        .insert("server_core".into(), m(&|w| w.cpu.server_core()));
    row.metrics
        .insert("generator_core".into(), m(&|w| w.cpu.generator_core()));
    note_generator(row, ws.iter().map(|w| w.cpu.generator_core()));
    row.notes.push(
        "16 keep-alive connections; publishes_per_core_s = achieved rate / server core share \
         (the capacity of one core, when the server is not saturated)"
            .into(),
    );
    ctx.finish(server, S).await;
    Ok(())
}

/// Two Herald instances over Redis: latency with subscribers on the publishing instance and
/// on the other one, and the cross-instance throughput ramp.
/// Herald answers a publish 200 only once every live instance takes its events: right after B
/// starts, A may not know it yet (or B may not be subscribed yet) and answers 503. The
/// measurement starts once a publish through A is answered 200.
async fn wait_both_instances_take_events(a: &Server) -> anyhow::Result<()> {
    let auth = a.auth.clone().unwrap_or_default();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    for _ in 0..100 {
        let body = publisher::publish_body("warm-up", 0, "");
        let (status, _) = publisher::call(
            a.addr,
            Method::POST,
            "/v1/publishers/events/publish",
            &headers,
            Some(body),
        )
        .await?;
        if status == 200 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("publishes through A were not answered 200 within 10 s of B starting")
}

pub async fn redis(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    const S: &str = "redis";
    if kind != Kind::Herald && kind != Kind::Node {
        return Ok(());
    }
    let redis = servers::start_redis(&ctx.env).await?;
    let opts_a = Options {
        redis_url: Some(redis.url()),
        tag: "-a".into(),
        ..Options::default()
    };
    let opts_b = Options {
        redis_url: Some(redis.url()),
        skip_setup: true,
        tag: "-b".into(),
        ..Options::default()
    };
    let a = ctx.start(kind, &opts_a).await?;
    let b = ctx.start(kind, &opts_b).await?;
    if kind == Kind::Herald {
        wait_both_instances_take_events(&a).await?;
    }
    let mut pids = vec![a.pid, b.pid, redis.pid];
    pids.dedup();
    let t = target(&a);
    let subs = ctx.sizes.fanout.get(1).copied().unwrap_or(1000);
    let rate = ctx.sizes.fanout_rate / subs as f64;
    for (case, addr) in [("local", a.addr), ("cross", b.addr)] {
        let r = ctx.row(
            S,
            &format!(
                "{subs} subscribers, {case} (publish to A, subscribers on {})",
                if case == "local" { "A" } else { "B" }
            ),
            kind.name(),
        );
        let c = ctx.connect(addr, vec!["fan".into(); subs], None).await;
        if ctx.check_connect(kind, S, &c) {
            let ch = || Channels::One("fan".into());
            let warm = ctx
                .window(&pids, &t, &plan(rate, 0.5, ch(), PAD), subs as u64)
                .await?;
            ctx.check_window(kind, S, &warm);
            let mut ws = Vec::new();
            for _ in 0..ctx.sizes.reps {
                let w = ctx
                    .window(
                        &pids,
                        &t,
                        &plan(rate, ctx.sizes.window, ch(), PAD),
                        subs as u64,
                    )
                    .await?;
                ctx.check_window(kind, S, &w);
                ws.push(w);
            }
            put_windows(&mut ctx.rows[r], &ws, true);
            ctx.rows[r].notes.push(format!(
                "{rate:.1} publishes/s; CPU = both instances + redis-server, all on the server core"
            ));
        }
        ctx.clients.close_all().await;
    }
    // Cross-instance throughput: the coalescing ramp with subscribers on B.
    let r = ctx.row(S, "100 subscribers on B, ramp (publish to A)", kind.name());
    let c = ctx.connect(b.addr, vec!["ramp".into(); 100], None).await;
    if ctx.check_connect(kind, S, &c) {
        let (trail, best, ws) = ramp(ctx, &pids, &t, 100).await?;
        let top = ctx.sizes.ramp.last() == Some(&best);
        put_ramp(&mut ctx.rows[r], trail, best, 100, &ws, top);
    }
    ctx.finish(b, S).await;
    ctx.finish(a, S).await;
    redis.stop().await;
    Ok(())
}

/// Packets Herald queues per socket in the slow-consumer scenario (`--socket-buffer`).
const HERALD_SOCKET_BUFFER: usize = 1024;

/// The largest kernel send buffer of a TCP socket (the last field of `tcp_wmem`), or 4 MiB
/// (Linux's default) where it cannot be read.
fn tcp_wmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().last()?.parse().ok())
        .unwrap_or(4 << 20)
}

/// One subscriber stops reading while 100 others keep up.
pub async fn slow(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    const S: &str = "slow-consumer";
    let subs = 100;
    let rate = 500.0;
    let pad = 4096;
    let r = ctx.row(S, "100 readers + 1 stalled, 4 KiB payloads", kind.name());
    // The stall must publish more than the stalled socket can hold, or "never told" means
    // nothing: Herald's queue (`--socket-buffer` packets, set here so the bench knows it), the
    // server's kernel send buffer (at most `tcp_wmem`'s maximum) and the client's 16 KiB
    // receive buffer. A quarter more than that, and at least `slow_stall` seconds.
    let rcvbuf = 16 * 1024;
    let capacity = (HERALD_SOCKET_BUFFER * (pad + 64) + tcp_wmem_max() + rcvbuf) as f64;
    let stall_s = (capacity * 1.25 / (rate * pad as f64)).clamp(ctx.sizes.slow_stall, 20.0);
    let opts = Options {
        extra: if kind == Kind::Herald {
            vec!["--socket-buffer".into(), HERALD_SOCKET_BUFFER.to_string()]
        } else {
            Vec::new()
        },
        ..Options::default()
    };
    let server = ctx.start(kind, &opts).await?;
    let t = target(&server);
    let pids = server.pids();
    let c = ctx
        .connect(server.addr, vec!["slow".into(); subs], None)
        .await;
    let slow = ctx
        .connect(server.addr, vec!["slow".into()], Some(rcvbuf))
        .await;
    if !ctx.check_connect(kind, S, &c) || !ctx.check_connect(kind, S, &slow) {
        ctx.finish(server, S).await;
        return Ok(());
    }
    let slow_id = slow.first_id;
    let ch = || Channels::One("slow".into());
    let base = ctx
        .window(
            &pids,
            &t,
            &plan(rate, ctx.sizes.window, ch(), pad),
            subs as u64 + 1,
        )
        .await?;
    ctx.check_window(kind, S, &base);
    ctx.clients.set_reading(vec![slow_id], false).await;
    let rss_before = rss_bytes(server.pid).unwrap_or(0) as f64;
    // Sample RSS while the stalled window runs.
    let pid = server.pid;
    let sampler = tokio::spawn(async move {
        let mut max = 0u64;
        for _ in 0..600 {
            max = max.max(rss_bytes(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        max
    });
    let stalled = ctx
        .window(&pids, &t, &plan(rate, stall_s, ch(), pad), subs as u64)
        .await?;
    sampler.abort();
    let rss_after = rss_bytes(server.pid).unwrap_or(0) as f64;
    // The stalled window expected deliveries only to the readers; anything beyond is the
    // slow client's, which it cannot have read.
    ctx.check_window(kind, S, &stalled);
    let published = base.out.ok + stalled.out.ok;
    ctx.clients.set_reading(vec![slow_id], true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let info = ctx.clients.info(slow_id).await;
    let not_queued = server.not_queued().await;
    let row = &mut ctx.rows[r];
    row.metrics
        .insert("p99_ms_before".into(), Summary::of(&[base.lat_ms(99.0)]));
    row.metrics.insert(
        "p99_ms_stalled".into(),
        Summary::of(&[stalled.lat_ms(99.0)]),
    );
    row.metrics.insert(
        "others_lost".into(),
        Summary::of(&[stalled.lost() as f64 + base.lost() as f64]),
    );
    row.metrics.insert(
        "rss_growth_mb".into(),
        Summary::of(&[(rss_after - rss_before) / 1e6]),
    );
    row.metrics.insert(
        "slow_missed".into(),
        Summary::of(&[published.saturating_sub(info.events) as f64]),
    );
    row.metrics.insert(
        "slow_disconnected".into(),
        Summary::of(&[if info.open { 0.0 } else { 1.0 }]),
    );
    if let Some(n) = not_queued {
        row.metrics
            .insert("not_queued".into(), Summary::of(&[n as f64]));
    }
    let stalled_bytes = (stalled.out.ok as usize * pad) as f64;
    let filled = stalled_bytes > capacity;
    row.metrics.insert(
        "stall_mb_over_capacity".into(),
        Summary::of(&[(stalled_bytes - capacity) / 1e6]),
    );
    row.notes.push(format!(
        "stalled {stall_s:.1} s at {rate:.0} publishes/s: {:.1} MB against {:.1} MB the slow socket can hold; slow socket {}; it got {} of {published} events",
        stalled_bytes / 1e6,
        capacity / 1e6,
        match (&info.open, &info.closed, filled) {
            (true, _, false) => "still connected (the stall did not fill its buffers: not judged)".to_owned(),
            (true, _, true) => "still connected, never told".to_owned(),
            (false, Some(reason), _) => format!("closed: {reason}"),
            (false, None, _) => "closed".to_owned(),
        },
        info.events
    ));
    let never_told = (kind == Kind::Herald && filled && info.open).then(|| {
        format!(
            "{S}/herald: the stalled socket was sent {:.1} MB, more than the {:.1} MB it can hold, and was neither told nor closed",
            stalled_bytes / 1e6,
            capacity / 1e6
        )
    });
    note_generator(
        row,
        [base.cpu.generator_core(), stalled.cpu.generator_core()].into_iter(),
    );
    if let Some(failure) = never_told {
        ctx.fail(failure);
    }
    ctx.finish(server, S).await;
    Ok(())
}

/// Connection churn: batches of 200 clients connect, listen and close, back to back.
pub async fn churn(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    const S: &str = "churn";
    let r = ctx.row(S, "connect + listen + close, 200 at a time", kind.name());
    let server = ctx.start(kind, &Options::default()).await?;
    let pids = server.pids();
    // Warm-up so the allocator has its working set, then the RSS baseline.
    let c = ctx
        .connect(server.addr, vec!["churn".into(); 200], None)
        .await;
    ctx.check_connect(kind, S, &c);
    ctx.clients.close_all().await;
    let rss0 = settle_rss(ctx.sizes.settle, server.pid).await;
    let cpu = CpuWindow::start(&pids);
    let start = std::time::Instant::now();
    let mut done = 0usize;
    let mut failed = 0usize;
    let mut errors = Vec::new();
    while start.elapsed().as_secs_f64() < ctx.sizes.churn {
        let c = ctx
            .connect(server.addr, vec!["churn".into(); 200], None)
            .await;
        done += c.ok;
        failed += c.failed;
        errors.extend(c.errors);
        ctx.clients.close_all().await;
    }
    let use_ = cpu.stop();
    let rss1 = settle_rss(ctx.sizes.settle, server.pid).await;
    if failed > 0 {
        errors.truncate(5);
        ctx.fail(format!(
            "{S}/{}: {failed} of {} churned clients failed: {errors:?}",
            kind.name(),
            failed + done
        ));
    }
    let row = &mut ctx.rows[r];
    row.metrics.insert(
        "connects_per_s".into(),
        Summary::of(&[done as f64 / use_.wall.max(1e-9)]),
    );
    row.metrics.insert(
        "cpu_us_per_connect".into(),
        Summary::of(&[use_.server * 1e6 / done.max(1) as f64]),
    );
    row.metrics.insert(
        "rss_growth_kb_per_1k".into(),
        Summary::of(&[(rss1 - rss0) / 1024.0 / (done.max(1) as f64 / 1000.0)]),
    );
    row.metrics
        .insert("server_core".into(), Summary::of(&[use_.server_core()]));
    row.metrics.insert(
        "generator_core".into(),
        Summary::of(&[use_.generator_core()]),
    );
    note_generator(row, [use_.generator_core()].into_iter());
    row.notes.push(format!(
        "{done} connections in {:.1} s; RSS {:.0} → {:.0} MB",
        use_.wall,
        rss0 / 1e6,
        rss1 / 1e6
    ));
    ctx.finish(server, S).await;
    Ok(())
}

/// Every scenario name, in run order.
pub const ALL: &[&str] = &[
    "memory",
    "fanout",
    "sse",
    "coalescing",
    "personal",
    "rest",
    "redis",
    "slow",
    "churn",
    "history",
];

/// Scenarios a `--quick` run leaves out unless named: `sse` takes about 10 s at quick sizes,
/// more than the smoke test may grow by.
pub const FULL_ONLY: &[&str] = &["sse"];

/// Runs scenario `name` for `kind`.
pub async fn run(ctx: &mut Ctx, name: &str, kind: Kind) -> anyhow::Result<()> {
    ctx.scenario = name.to_owned();
    match name {
        "memory" => memory(ctx, kind).await,
        "fanout" => fanout(ctx, kind).await,
        "sse" => sse(ctx, kind).await,
        "coalescing" => coalescing(ctx, kind).await,
        "personal" => personal(ctx, kind).await,
        "rest" => rest(ctx, kind).await,
        "redis" => redis(ctx, kind).await,
        "slow" => slow(ctx, kind).await,
        "churn" => churn(ctx, kind).await,
        "history" => history(ctx, kind).await,
        other => bail!("unknown scenario {other}"),
    }
}

/// `PATCH /v1/admin/projects/bench` with `{"history": history}`, then waits out the settings
/// cache (1 s) so every publish after it sees the new settings.
async fn patch_history(server: &Server, history: serde_json::Value) -> anyhow::Result<()> {
    let admin = format!("Bearer {}", servers::ADMIN_TOKEN);
    let headers = [("authorization", admin.as_str())];
    let body = serde_json::json!({ "history": history }).to_string();
    let (status, answer) = publisher::call(
        server.addr,
        Method::PATCH,
        &format!("/v1/admin/projects/{}", servers::PROJECT),
        &headers,
        Some(body.into_bytes()),
    )
    .await?;
    if status != 200 {
        bail!(
            "PATCH history: HTTP {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    Ok(())
}

/// One publish to `channel`; its `(offset, epoch)`.
async fn publish_positioned(server: &Server, channel: &str) -> anyhow::Result<(u64, String)> {
    let auth = server.auth.clone().unwrap_or_default();
    let headers = [("authorization", auth.as_str())];
    let body = publisher::publish_body(channel, client::now_ns(), "");
    let (status, answer) = publisher::call(
        server.addr,
        Method::POST,
        "/v1/publishers/events/publish",
        &headers,
        Some(body),
    )
    .await?;
    if status != 200 {
        bail!(
            "publish: HTTP {status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&answer)?;
    let offset = v["offset"].as_u64().context("no offset: history off?")?;
    let epoch = v["epoch"].as_str().context("no epoch")?.to_owned();
    Ok((offset, epoch))
}

/// Channels the history scenario's publishes spread over (each keeps up to `size` events,
/// so with history on the store fills to `channels × size` events).
const HISTORY_CHANNELS: usize = 1000;

/// History (issue 17): the cost of publishing with history on vs off in one run (same
/// server, same load; the project's `history.size` PATCHed to 0 and back), the RSS the
/// retained events take, and the time a reconnecting client takes to catch up on N missed
/// events (`listen` with `since`). Embedded and Redis mode (one instance; the redis-server's
/// CPU counts, not its memory).
pub async fn history(ctx: &mut Ctx, kind: Kind) -> anyhow::Result<()> {
    const S: &str = "history";
    if kind != Kind::Herald {
        return Ok(());
    }
    for mode in ["embedded", "redis"] {
        let redis = if mode == "redis" {
            Some(servers::start_redis(&ctx.env).await?)
        } else {
            None
        };
        let opts = Options {
            redis_url: redis.as_ref().map(|r| r.url()),
            ..Options::default()
        };
        let server = ctx.start(kind, &opts).await?;
        let mut pids = server.pids();
        if let Some(r) = &redis {
            pids.push(r.pid);
        }
        let t = target(&server);
        let rate = ctx.sizes.rest_rate;
        let r = ctx.row(
            S,
            &format!(
                "{mode}: {}k publishes/s offered over {HISTORY_CHANNELS} channels without listeners",
                rate / 1000.0
            ),
            kind.name(),
        );
        let mut on = Vec::new();
        let mut off = Vec::new();
        let mut rss_off = Vec::new();
        let mut rss_on = Vec::new();
        // Off first, so the RSS after the first "on" window adds what the retained events take.
        for rep in 0..ctx.sizes.reps {
            for (history, ws, rss) in [
                (serde_json::json!({ "size": 0 }), &mut off, &mut rss_off),
                (serde_json::json!({ "size": 100 }), &mut on, &mut rss_on),
            ] {
                patch_history(&server, history).await?;
                let p = Plan {
                    rate,
                    total: (rate * ctx.sizes.window) as u64,
                    channels: Channels::Spread {
                        prefix: "h".into(),
                        count: HISTORY_CHANNELS,
                    },
                    pad: PAD,
                    conns: 16,
                    deadline: None,
                };
                let w = ctx.window(&pids, &t, &p, 0).await?;
                ctx.check_window(kind, S, &w);
                ws.push(w);
                // Retained events stay (`ttlSecs`): only the first "off" RSS has none.
                if rep == 0 {
                    rss.push(settle_rss(ctx.sizes.settle, server.pid).await / 1_048_576.0);
                }
            }
        }
        let row = &mut ctx.rows[r];
        let cpu = |w: &Window| w.cpu.server * 1e6 / w.out.ok.max(1) as f64;
        let per_core = |w: &Window| w.out.achieved_rate() / w.cpu.server_core().max(1e-9);
        let rtt99 = |w: &Window| {
            let mut v = w.out.rtt_ns.clone();
            v.sort_unstable();
            percentile(&v, 99.0) as f64 / 1e6
        };
        let sum = |ws: &[Window], f: &dyn Fn(&Window) -> f64| {
            Summary::of(&ws.iter().map(f).collect::<Vec<_>>())
        };
        row.metrics
            .insert("cpu_us_per_publish_off".into(), sum(&off, &cpu));
        row.metrics
            .insert("cpu_us_per_publish_on".into(), sum(&on, &cpu));
        let ratios: Vec<f64> = on
            .iter()
            .zip(&off)
            .map(|(a, b)| cpu(a) / cpu(b).max(1e-9))
            .collect();
        row.metrics
            .insert("cpu_ratio_on_off".into(), Summary::of(&ratios));
        row.metrics
            .insert("publishes_per_core_s_off".into(), sum(&off, &per_core));
        row.metrics
            .insert("publishes_per_core_s_on".into(), sum(&on, &per_core));
        row.metrics
            .insert("rtt_p99_ms_off".into(), sum(&off, &rtt99));
        row.metrics.insert("rtt_p99_ms_on".into(), sum(&on, &rtt99));
        row.metrics
            .insert("rss_mb_off".into(), Summary::of(&rss_off));
        row.metrics.insert("rss_mb_on".into(), Summary::of(&rss_on));
        row.notes.push(format!(
            "same server, project history.size PATCHed 0 / 100 between windows; CPU = Herald{}; \
             RSS is Herald's (the retained events of {HISTORY_CHANNELS} channels × 100 in \
             embedded mode live in its memory, in Redis mode in redis-server's)",
            if mode == "redis" {
                " + redis-server"
            } else {
                ""
            }
        ));
        note_generator(row, on.iter().chain(&off).map(|w| w.cpu.generator_core()));

        // Catch-up: N events published while nobody listens, then a client that listens with
        // `since` the position before them.
        for &n in &ctx.sizes.catch_up.clone() {
            let r = ctx.row(
                S,
                &format!("{mode}: catch up {n} missed events (listen with since)"),
                kind.name(),
            );
            patch_history(&server, serde_json::json!({ "size": n.max(100) })).await?;
            let channel = format!("catchup-{n}");
            let (offset, epoch) = publish_positioned(&server, &channel).await?;
            let since = format!(r#"{{"offset":{},"epoch":"{epoch}"}}"#, offset - 1);
            let p = Plan {
                rate: rate.min(20_000.0),
                total: n - 1,
                channels: Channels::One(channel.clone()),
                pad: PAD,
                conns: 16,
                deadline: None,
            };
            if n > 1 {
                let out = publisher::run(&t, &p).await?;
                if out.errors > 0 {
                    ctx.fail(format!(
                        "{S}/{}: {} publish errors: {:?}",
                        kind.name(),
                        out.errors,
                        out.error_samples
                    ));
                }
            }
            // A first connection warms the server's and the generator's paths up.
            let c = ctx.connect(server.addr, vec![channel.clone()], None).await;
            ctx.check_connect(kind, S, &c);
            ctx.clients.close_all().await;
            let mut plain = Vec::new();
            let mut caught = Vec::new();
            for _ in 0..ctx.sizes.reps.max(3) {
                // Without `since`: the connect + listen time alone.
                let started = std::time::Instant::now();
                let c = ctx.connect(server.addr, vec![channel.clone()], None).await;
                if !ctx.check_connect(kind, S, &c) {
                    break;
                }
                plain.push(started.elapsed().as_secs_f64() * 1e3);
                ctx.clients.close_all().await;
                let before = ctx.clients.status().await.events;
                let started = std::time::Instant::now();
                let c = ctx
                    .clients
                    .connect(ConnectSpec {
                        addr: server.addr,
                        project: servers::PROJECT.to_owned(),
                        channels: vec![channel.clone()],
                        concurrency: 1,
                        timeout: Duration::from_secs(30),
                        rcvbuf: None,
                        since: Some(since.clone()),
                        transport: Transport::WebSocket,
                    })
                    .await;
                if !ctx.check_connect(kind, S, &c) {
                    break;
                }
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while ctx.clients.status().await.events - before < n
                    && std::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let got = ctx.clients.status().await.events - before;
                if got != n {
                    ctx.fail(format!(
                        "{S}/{}: a listen with since got {got} of {n} missed events",
                        kind.name()
                    ));
                }
                caught.push(started.elapsed().as_secs_f64() * 1e3);
                ctx.clients.close_all().await;
            }
            let row = &mut ctx.rows[r];
            row.metrics
                .insert("connect_listen_ms".into(), Summary::of(&plain));
            row.metrics
                .insert("catch_up_ms".into(), Summary::of(&caught));
            let per_event: Vec<f64> = caught
                .iter()
                .zip(&plain)
                .map(|(c, p)| (c - p).max(0.0) * 1e3 / n as f64)
                .collect();
            row.metrics
                .insert("us_per_event".into(), Summary::of(&per_event));
            row.notes.push(
                "catch_up_ms: connect, listen with since, until every missed event arrived; \
                 connect_listen_ms: the same without since; us_per_event = the difference / N (1 ms polling)"
                    .into(),
            );
        }
        ctx.finish(server, S).await;
        if let Some(r) = redis {
            r.stop().await;
        }
    }
    Ok(())
}
