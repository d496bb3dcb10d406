//! Results: rows of metrics (median and spread of the repetitions), the Markdown tables, the
//! ratios to the peers and the targets, and the JSON document.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::scenarios::{BURST_CASE, REDIS_MODE};
use crate::stats::Summary;

/// One scenario case for one server.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name.
    pub scenario: String,
    /// Case within the scenario.
    pub case: String,
    /// Server (`herald`, `raw`, `socketioxide`, `node`).
    pub peer: String,
    /// Metrics by name (unit in the name).
    pub metrics: BTreeMap<String, Summary>,
    /// Remarks: ramp trails, RSS points, generator warnings.
    pub notes: Vec<String>,
    /// Largest share of its core the load generator used in a window of this row.
    pub generator_max_core: f64,
}

/// A target of the issue and what was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What the issue asks.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// [`MET`], [`NOT_MET`] or [`NOT_MEASURED`]. A target not met is a note about speed on
    /// this machine and run, never a failure: failures are [`Report::failures`].
    pub verdict: &'static str,
}

/// A target met in this run.
pub const MET: &str = "met";
/// A target this run measured but did not reach: slower than the target (a note, not a
/// failure).
pub const NOT_MET: &str = "slower than target (note)";
/// A target this run did not measure (scenario or peer not run, or too small to judge).
pub const NOT_MEASURED: &str = "not measured";

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `date -u` at the start.
    pub date: String,
    /// Machine description (CPU model, cores, kernel).
    pub machine: String,
    /// `uptime` at the start and at the end.
    pub load: Vec<String>,
    /// `--quick` or full.
    pub mode: String,
    /// Wall seconds.
    pub seconds: f64,
    /// Every row.
    pub rows: Vec<Row>,
    /// Targets and verdicts.
    pub targets: Vec<Target>,
    /// Failures (losses and errors that mean a broken server).
    pub failures: Vec<String>,
}

/// A difference in ms with its sign.
fn signed(x: Option<f64>) -> String {
    match x {
        Some(v) if v < 0.0 => format!("−{} ms", num(-v)),
        Some(v) => format!("+{} ms", num(v)),
        None => "–".into(),
    }
}

/// Formats a number for a table.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let a = x.abs();
    if a >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a == 0.0 {
        "0".into()
    } else {
        format!("{x:.2}")
    }
}

fn cell(s: &Summary) -> String {
    if s.reps.len() > 1 && s.max > s.min {
        format!("{} ({}–{})", num(s.median), num(s.min), num(s.max))
    } else {
        num(s.median)
    }
}

const PEERS: [&str; 4] = ["herald", "raw", "socketioxide", "node"];

impl Report {
    fn get(&self, scenario: &str, case_prefix: &str, peer: &str, metric: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.case.starts_with(case_prefix) && r.peer == peer)
            .and_then(|r| r.metrics.get(metric))
            .map(|s| s.median)
            .filter(|x| x.is_finite())
    }

    /// Herald's memory-scenario metric, embedded or in Redis mode.
    fn memory(&self, redis: bool, metric: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| {
                r.scenario == "memory"
                    && r.peer == "herald"
                    && r.case != BURST_CASE
                    && r.case.starts_with(REDIS_MODE) == redis
            })
            .and_then(|r| r.metrics.get(metric))
            .map(|s| s.median)
            .filter(|x| x.is_finite())
    }

    /// Computes the targets from the rows.
    pub fn evaluate(&mut self) {
        let mut t = Vec::new();
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let verdict = |ok: Option<bool>| match ok {
            Some(true) => MET,
            Some(false) => NOT_MET,
            None => NOT_MEASURED,
        };
        let show =
            |x: Option<f64>, unit: &str| x.map_or("–".into(), |v| format!("{}{unit}", num(v)));

        let h = self.get("fanout", "1000 ", "herald", "cpu_us_per_delivery");
        let r = self.get("fanout", "1000 ", "raw", "cpu_us_per_delivery");
        let q = ratio(h, r);
        t.push(Target {
            target: "CPU per delivery at 1k subscribers ≤ 1.15× raw".into(),
            measured: format!(
                "{} (Herald {} µs, raw {} µs)",
                show(q, "×"),
                show(h, ""),
                show(r, "")
            ),
            verdict: verdict(q.map(|q| q <= 1.15)),
        });

        let sse_q = self.get(
            "sse",
            "1000 subscribers, SSE",
            "herald",
            "cpu_ratio_vs_websocket",
        );
        let sse_cpu = self.get(
            "sse",
            "1000 subscribers, SSE",
            "herald",
            "cpu_us_per_delivery",
        );
        let ws_cpu = self.get(
            "sse",
            "1000 subscribers, WebSocket",
            "herald",
            "cpu_us_per_delivery",
        );
        t.push(Target {
            target: "SSE: server CPU per delivery at 1k subscribers ≤ 1.5× WebSocket's (same server, alternating windows)".into(),
            measured: format!(
                "{} (SSE {} µs, WebSocket {} µs)",
                show(sse_q, "×"),
                show(sse_cpu, ""),
                show(ws_cpu, "")
            ),
            verdict: verdict(sse_q.map(|q| q <= 1.5)),
        });

        let hm = self.get("coalescing", "", "herald", "max_deliveries_per_s");
        let hp = self.get("coalescing", "", "herald", "p99_ms");
        let hc = self.get("coalescing", "", "herald", "deliveries_per_core_s");
        let nc = self.get("coalescing", "", "node", "deliveries_per_core_s");
        t.push(Target {
            target: "coalescing ≥ 1M deliveries/s on one core at 100 subscribers, p99 < 10 ms"
                .into(),
            measured: format!(
                "{} deliveries/s at p99 {} ({} per server-core second)",
                show(hm, ""),
                show(hp, " ms"),
                show(hc, "")
            ),
            verdict: verdict(hm.zip(hp).map(|(m, p)| m >= 1e6 && p < 10.0)),
        });
        let q = ratio(hc, nc);
        t.push(Target {
            target: "coalescing ≥ 10× the Node peer's deliveries per core".into(),
            measured: format!("{} (Node {} per core-second)", show(q, "×"), show(nc, "")),
            verdict: verdict(q.map(|q| q >= 10.0)),
        });

        let idle = self.memory(false, "rss_kb_per_conn_idle");
        let traffic = self.memory(false, "rss_kb_per_conn_traffic");
        t.push(Target {
            target: "memory ≤ 12 KB RSS per idle connection".into(),
            measured: show(idle, " KB"),
            verdict: verdict(idle.map(|v| v <= 12.0)),
        });
        t.push(Target {
            target: "memory ≤ 15 KB RSS per connection after traffic".into(),
            measured: show(traffic, " KB"),
            verdict: verdict(traffic.map(|v| v <= 15.0)),
        });

        let e0 = self.memory(false, "rss_mb_no_connection");
        let r0 = self.memory(true, "rss_mb_no_connection");
        t.push(Target {
            target: "Redis mode: idle RSS (no connection) ≤ 2× embedded + 10 MB".into(),
            measured: format!(
                "Redis mode {}, embedded {} (limit {})",
                show(r0, " MB"),
                show(e0, " MB"),
                show(e0.map(|e| 2.0 * e + 10.0), " MB")
            ),
            verdict: verdict(r0.zip(e0).map(|(r, e)| r <= 2.0 * e + 10.0)),
        });
        let ri = self.memory(true, "rss_kb_per_conn_idle");
        let rt = self.memory(true, "rss_kb_per_conn_traffic");
        let (qi, qt) = (ratio(ri, idle), ratio(rt, traffic));
        t.push(Target {
            target: "Redis mode: KB RSS per connection ≤ 1.2× embedded (idle and after traffic)"
                .into(),
            measured: format!(
                "idle {} ({} vs {}), after traffic {} ({} vs {})",
                show(qi, "×"),
                show(ri, " KB"),
                show(idle, " KB"),
                show(qt, "×"),
                show(rt, " KB"),
                show(traffic, " KB")
            ),
            verdict: verdict(qi.zip(qt).map(|(i, t)| i <= 1.2 && t <= 1.2)),
        });
        let burst = |m: &str| self.get("memory", BURST_CASE, "herald", m);
        let falls_back = |who: &str| {
            let before = burst(&format!("{who}_rss_mb_before"))?;
            let peak = burst(&format!("{who}_rss_mb_peak"))?;
            let after = burst(&format!("{who}_rss_mb_after"))?;
            Some((
                format!("{who}: {} → {} → {}", num(before), num(peak), num(after)),
                after - before <= (0.2 * (peak - before)).max(2.0),
            ))
        };
        let (fa, fb) = (falls_back("a"), falls_back("b"));
        let after_s = burst("after_s");
        t.push(Target {
            target: "Redis mode: after an event-bus burst, RSS falls back within 60 s \
                     (to within 20% of the rise or 2 MB; before → peak → after, MB)"
                .into(),
            measured: format!(
                "{}; {}; read {} after",
                fa.as_ref().map_or("–".into(), |f| f.0.clone()),
                fb.as_ref().map_or("–".into(), |f| f.0.clone()),
                show(after_s, " s")
            ),
            verdict: verdict(
                fa.zip(fb)
                    .filter(|_| after_s.is_some_and(|s| s >= 60.0))
                    .map(|(a, b)| a.1 && b.1),
            ),
        });

        let h = self.get("fanout", "1000 ", "herald", "p99_ms");
        let r = self.get("fanout", "1000 ", "raw", "p99_ms");
        let q = ratio(h, r);
        t.push(Target {
            target: "p99 publish→receive at 1k subscribers ≤ 1.2× raw".into(),
            measured: format!(
                "{} (Herald {} ms, raw {} ms)",
                show(q, "×"),
                show(h, ""),
                show(r, "")
            ),
            verdict: verdict(q.map(|q| q <= 1.2)),
        });

        let lost: Option<f64> = {
            let v: Vec<f64> = self
                .rows
                .iter()
                .filter(|r| {
                    r.peer == "herald"
                        && ["fanout", "personal", "memory", "sse"].contains(&r.scenario.as_str())
                })
                .filter_map(|r| r.metrics.get("lost").map(|s| s.reps.iter().sum::<f64>()))
                .collect();
            (!v.is_empty()).then(|| v.iter().sum())
        };
        t.push(Target {
            target:
                "zero loss below 80% of saturation (fan-out, personal channels, memory traffic, SSE)"
                    .into(),
            measured: show(lost, " deliveries lost"),
            verdict: verdict(lost.map(|l| l == 0.0)),
        });

        let base50 = self.get("fanout", "1000 ", "herald", "p50_ms");
        let base99 = self.get("fanout", "1000 ", "herald", "p99_ms");
        let x50 = self
            .get("redis", "1000 subscribers, cross", "herald", "p50_ms")
            .or_else(|| self.get("redis", "", "herald", "p50_ms"));
        let x99 = self.get("redis", "1000 subscribers, cross", "herald", "p99_ms");
        let add50 = x50.zip(base50).map(|(a, b)| a - b);
        let add99 = x99.zip(base99).map(|(a, b)| a - b);
        t.push(Target {
            target: "Redis mode: added latency ≤ 1 ms p50 / 3 ms p99 (cross-instance vs embedded, 1k subscribers)".into(),
            measured: format!("{} p50 / {} p99", signed(add50), signed(add99)),
            verdict: verdict(add50.zip(add99).map(|(a, b)| a <= 1.0 && b <= 3.0)),
        });
        let xt = self.get(
            "redis",
            "100 subscribers on B",
            "herald",
            "max_deliveries_per_s",
        );
        let q = ratio(xt, hm);
        t.push(Target {
            target: "Redis mode: cross-instance throughput ≥ 0.5× local".into(),
            measured: format!(
                "{} ({} vs {} deliveries/s)",
                show(q, "×"),
                show(xt, ""),
                show(hm, "")
            ),
            verdict: verdict(q.map(|q| q >= 0.5)),
        });

        let before = self.get("slow-consumer", "", "herald", "p99_ms_before");
        let stalled = self.get("slow-consumer", "", "herald", "p99_ms_stalled");
        let growth = self.get("slow-consumer", "", "herald", "rss_growth_mb");
        // A stall that did not fill the socket's buffers cannot judge the disconnect.
        let disc = self
            .get("slow-consumer", "", "herald", "slow_disconnected")
            .filter(|_| {
                self.get("slow-consumer", "", "herald", "stall_mb_over_capacity")
                    .is_some_and(|over| over > 0.0)
            });
        let note = self
            .rows
            .iter()
            .find(|r| r.scenario == "slow-consumer" && r.peer == "herald")
            .and_then(|r| r.notes.first().cloned())
            .unwrap_or_default();
        t.push(Target {
            target: "slow consumer: bounded memory, others' p99 unaffected, slow socket disconnected with a reason".into(),
            measured: format!(
                "others' p99 {} → {}; RSS +{}; {note}",
                show(before, " ms"),
                show(stalled, " ms"),
                show(growth, " MB")
            ),
            verdict: verdict(disc.map(|d| d == 1.0 && stalled.zip(before).is_some_and(|(s, b)| s <= 2.0 * b.max(1.0)))),
        });
        self.targets = t;
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "Run: {} ({}), {:.0} s. Machine: {}.",
            self.date, self.mode, self.seconds, self.machine
        );
        for l in &self.load {
            let _ = writeln!(md, "Load: `{l}`");
        }
        let _ = writeln!(md);
        md.push_str(&self.verdict_line());
        let _ = writeln!(md);
        md.push_str(&self.summary_table());
        let _ = writeln!(
            md,
            "\n#### Targets\n\n| target | measured | verdict |\n|---|---|---|"
        );
        for t in &self.targets {
            let _ = writeln!(md, "| {} | {} | {} |", t.target, t.measured, t.verdict);
        }
        let scenarios: Vec<&str> = {
            let mut seen = Vec::new();
            for r in &self.rows {
                if !seen.contains(&r.scenario.as_str()) {
                    seen.push(r.scenario.as_str());
                }
            }
            seen
        };
        for s in scenarios {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.scenario == s).collect();
            let metrics: BTreeSet<&str> = rows
                .iter()
                .flat_map(|r| r.metrics.keys().map(String::as_str))
                .collect();
            let _ = writeln!(md, "\n#### {s}\n");
            let _ = write!(md, "| case | server |");
            for m in &metrics {
                let _ = write!(md, " {m} |");
            }
            let _ = write!(md, "\n|---|---|");
            for _ in &metrics {
                let _ = write!(md, "---|");
            }
            let _ = writeln!(md);
            for r in &rows {
                let _ = write!(md, "| {} | {} |", r.case, r.peer);
                for m in &metrics {
                    let _ = write!(md, " {} |", r.metrics.get(*m).map(cell).unwrap_or_default());
                }
                let _ = writeln!(md);
            }
            let notes: Vec<String> = rows
                .iter()
                .flat_map(|r| {
                    r.notes
                        .iter()
                        .map(move |n| format!("- {} / {}: {n}", r.peer, r.case))
                })
                .collect();
            if !notes.is_empty() {
                let _ = writeln!(md, "\n<details><summary>notes</summary>\n");
                for n in notes {
                    let _ = writeln!(md, "{n}");
                }
                let _ = writeln!(md, "\n</details>");
            }
        }
        if !self.failures.is_empty() {
            let _ = writeln!(md, "\n#### Failures\n");
            for f in &self.failures {
                let _ = writeln!(md, "- {f}");
            }
        }
        md
    }

    /// Two separate verdicts: broken (losses and errors where none may happen: the run fails)
    /// and slower than a target (a note about this machine and run: it never fails the run).
    pub fn verdict_line(&self) -> String {
        let count = |v: &str| self.targets.iter().filter(|t| t.verdict == v).count();
        let broken = if self.failures.is_empty() {
            "**Broken: nothing** (no loss, no error where none may happen).".to_owned()
        } else {
            format!(
                "**Broken: {} failure(s)**, listed under Failures: the run fails.",
                self.failures.len()
            )
        };
        format!(
            "{broken} Speed targets: {} met, {} slower than target, {} not measured \
             (a note about this machine and run, never a failure{}).\n",
            count(MET),
            count(NOT_MET),
            count(NOT_MEASURED),
            if self.mode == "--quick" {
                "; --quick sizes are too small to judge most of them"
            } else {
                ""
            }
        )
    }

    /// Key metrics side by side with Herald's ratio to each peer.
    fn summary_table(&self) -> String {
        let keys: &[(&str, &str, &str, &str)] = &[
            (
                "fanout",
                "100 ",
                "cpu_us_per_delivery",
                "fan-out 100 subs: server µs/delivery",
            ),
            (
                "fanout",
                "1000 ",
                "cpu_us_per_delivery",
                "fan-out 1k subs: server µs/delivery",
            ),
            (
                "fanout",
                "5000 ",
                "cpu_us_per_delivery",
                "fan-out 5k subs: server µs/delivery",
            ),
            ("fanout", "100 ", "p99_ms", "fan-out 100 subs: p99 ms"),
            ("fanout", "1000 ", "p50_ms", "fan-out 1k subs: p50 ms"),
            ("fanout", "1000 ", "p99_ms", "fan-out 1k subs: p99 ms"),
            ("fanout", "1000 ", "p999_ms", "fan-out 1k subs: p99.9 ms"),
            (
                "fanout",
                "1000 ",
                "makespan_p50_ms",
                "fan-out 1k subs: makespan p50 ms",
            ),
            ("fanout", "5000 ", "p99_ms", "fan-out 5k subs: p99 ms"),
            (
                "fanout",
                "5000 ",
                "makespan_p50_ms",
                "fan-out 5k subs: makespan p50 ms",
            ),
            (
                "coalescing",
                "",
                "max_deliveries_per_s",
                "coalescing: max deliveries/s (p99<50 ms, no loss)",
            ),
            (
                "coalescing",
                "",
                "deliveries_per_core_s",
                "coalescing: deliveries per server-core second",
            ),
            ("coalescing", "", "p99_ms", "coalescing: p99 ms at max"),
            (
                "memory",
                "",
                "rss_kb_per_conn_idle",
                "memory: KB RSS per idle connection",
            ),
            (
                "memory",
                "",
                "rss_kb_per_conn_traffic",
                "memory: KB RSS per connection after traffic",
            ),
            (
                "memory",
                "",
                "rss_mb_no_connection",
                "memory: MB RSS with no connection",
            ),
            (
                "memory",
                REDIS_MODE,
                "rss_mb_no_connection",
                "memory, Redis mode: MB RSS with no connection",
            ),
            (
                "memory",
                REDIS_MODE,
                "rss_kb_per_conn_idle",
                "memory, Redis mode: KB RSS per idle connection",
            ),
            (
                "memory",
                REDIS_MODE,
                "rss_kb_per_conn_traffic",
                "memory, Redis mode: KB RSS per connection after traffic",
            ),
            (
                "personal",
                "",
                "cpu_us_per_delivery",
                "personal channels (10k sockets): server µs/publish",
            ),
            (
                "personal",
                "",
                "p99_ms",
                "personal channels (10k sockets): p99 ms",
            ),
            (
                "rest",
                "",
                "publishes_per_core_s",
                "REST publish alone: publishes per server-core second",
            ),
            (
                "rest",
                "",
                "cpu_us_per_publish",
                "REST publish alone: server µs/publish",
            ),
            ("churn", "", "connects_per_s", "churn: connects/s"),
            (
                "churn",
                "",
                "cpu_us_per_connect",
                "churn: server µs/connect",
            ),
            (
                "slow-consumer",
                "",
                "p99_ms_stalled",
                "slow consumer: others' p99 ms while one is stalled",
            ),
            (
                "redis",
                "1000 subscribers, cross",
                "p50_ms",
                "Redis, 2 instances, cross: p50 ms",
            ),
            (
                "redis",
                "1000 subscribers, cross",
                "p99_ms",
                "Redis, 2 instances, cross: p99 ms",
            ),
            (
                "redis",
                "100 subscribers on B",
                "max_deliveries_per_s",
                "Redis cross-instance: max deliveries/s",
            ),
        ];
        let mut md = String::from(
            "| metric | Herald | raw limit | socketioxide | Node + Redis | Herald/raw | Herald/socketioxide | Herald/Node |\n|---|---|---|---|---|---|---|---|\n",
        );
        for (scenario, case, metric, label) in keys {
            let vals: Vec<Option<f64>> = PEERS
                .iter()
                .map(|p| self.get(scenario, case, p, metric))
                .collect();
            if vals.iter().all(Option::is_none) {
                continue;
            }
            let _ = write!(md, "| {label} |");
            for v in &vals {
                let _ = write!(md, " {} |", v.map(num).unwrap_or_else(|| "–".into()));
            }
            for v in &vals[1..] {
                let r = match (vals[0], v) {
                    (Some(h), Some(p)) if *p > 0.0 => format!("{:.2}×", h / p),
                    _ => "–".into(),
                };
                let _ = write!(md, " {r} |");
            }
            let _ = writeln!(md);
        }
        md
    }
}
