//! `herald-bench`: Herald's load generator and benchmark suite.
//!
//! Runs Herald and its peers (a raw WebSocket broadcast server, plain socketioxide, and Node
//! socket.io with the Redis adapter) through the same scenarios with the same clients and
//! payloads, and prints a Markdown report (tables, ratios, targets) and a JSON document.
//!
//! ```sh
//! cargo build --release -p herald-server
//! cargo run -p herald-bench --release -- --quick      # smoke: Herald + raw peer, < 60 s
//! cargo run -p herald-bench --release                 # full suite, every peer, < 10 min
//! ```
//!
//! Servers run on core 0 (`taskset -c 0`), the generator re-executes itself on core 1. See
//! `bench/README.md` for the method and the latest results.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod client;
#[path = "../peers/raw.rs"]
mod peer_raw;
#[path = "../peers/socketioxide.rs"]
mod peer_socketioxide;
mod publisher;
mod report;
mod scenarios;
mod servers;
mod stats;

use servers::Kind;

const PINNED_ENV: &str = "HERALD_BENCH_PINNED";

/// Herald's benchmark suite and load generator.
#[derive(Debug, Parser)]
#[command(name = "herald-bench", about)]
struct Cli {
    #[command(subcommand)]
    peer: Option<PeerCommand>,
    /// Smoke test: small sizes, one repetition, Herald and the raw peer only, under 60 s.
    /// Fails (exit 1) on losses or errors that indicate a broken server, never on slowness.
    #[arg(long)]
    quick: bool,
    /// Servers to run (comma-separated): herald, raw, socketioxide, node.
    /// Default: all four (full suite), herald,raw (--quick).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Scenarios to run (comma-separated): memory, fanout, sse, coalescing, personal, rest,
    /// redis, slow, churn, history. Default: all (--quick: all but sse).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Repetitions of each measurement (default 3, or 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// The herald binary (default: target/release/herald).
    #[arg(long, env = "HERALD_BIN")]
    herald: Option<PathBuf>,
    /// Where results.md and results.json go (default: target/herald-bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Do not pin servers to core 0 and the generator to core 1.
    #[arg(long)]
    no_pin: bool,
    /// Keep the work directory (server logs, data dirs).
    #[arg(long)]
    keep: bool,
    /// Profile: attach `perf record -e cpu-clock -g` to every server process and write the
    /// data files to this directory (`perf report -i DIR/<scenario>-<server>.data`).
    #[arg(long)]
    perf: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Run one of the Rust peer servers (the suite starts them itself).
    Peer {
        #[command(subcommand)]
        which: Peer,
    },
}

#[derive(Debug, Subcommand)]
enum Peer {
    /// Raw WebSocket broadcast server: the practical limit.
    Raw(peer_raw::Args),
    /// Plain socketioxide, no gateway logic.
    Socketioxide(peer_socketioxide::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(PeerCommand::Peer { which }) = cli.peer {
        let r = match which {
            Peer::Raw(a) => peer_raw::run(a),
            Peer::Socketioxide(a) => peer_socketioxide::run(a),
        };
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("peer: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let machine = machine();
    if !cli.no_pin
        && std::env::var_os(PINNED_ENV).is_none()
        && let Some(code) = reexec_pinned(&machine)
    {
        return code;
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(suite(cli, machine)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Machine {
    description: String,
    cores: usize,
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown CPU")
        .to_owned();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_gb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    Machine {
        description: format!(
            "{model}, {cores} cores, {mem_gb:.0} GiB, Linux {}",
            kernel.trim()
        ),
        cores,
    }
}

/// Re-runs this command under `taskset -c 1`; `None` when pinning is not possible.
fn reexec_pinned(machine: &Machine) -> Option<ExitCode> {
    if machine.cores < 2 {
        eprintln!("herald-bench: one core only: not pinning (numbers will be pessimistic)");
        return None;
    }
    let me = std::env::current_exe().ok()?;
    let status = std::process::Command::new("taskset")
        .args(["-c", "1"])
        .arg(me)
        .args(std::env::args_os().skip(1))
        .env(PINNED_ENV, "1")
        .status();
    match status {
        Ok(s) => Some(match s.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
            None => ExitCode::FAILURE,
        }),
        Err(e) => {
            eprintln!("herald-bench: taskset unavailable ({e}): not pinning");
            None
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn shell(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn has(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn suite(cli: Cli, machine: Machine) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut sizes = if cli.quick {
        scenarios::Sizes::quick()
    } else {
        scenarios::Sizes::full()
    };
    if let Some(r) = cli.reps {
        sizes.reps = r.max(1);
    }
    let peer_names = if cli.peers.is_empty() {
        if cli.quick {
            vec!["herald".to_owned(), "raw".to_owned()]
        } else {
            ["herald", "raw", "socketioxide", "node"]
                .map(str::to_owned)
                .to_vec()
        }
    } else {
        cli.peers.clone()
    };
    let mut peers = Vec::new();
    for p in &peer_names {
        peers.push(Kind::parse(p).with_context(|| format!("unknown peer {p}"))?);
    }
    let names: Vec<String> = if cli.scenarios.is_empty() {
        scenarios::ALL
            .iter()
            .filter(|s| !(cli.quick && scenarios::FULL_ONLY.contains(s)))
            .map(|s| (*s).to_owned())
            .collect()
    } else {
        cli.scenarios.clone()
    };
    for n in &names {
        anyhow::ensure!(scenarios::ALL.contains(&n.as_str()), "unknown scenario {n}");
    }
    let herald = cli
        .herald
        .clone()
        .unwrap_or_else(|| target_dir().join("release").join("herald"));
    if peers.contains(&Kind::Herald) {
        anyhow::ensure!(
            herald.exists(),
            "{} not found: run `cargo build --release -p herald-server` first (or pass --herald)",
            herald.display()
        );
    }
    let node_dir = workspace_root().join("bench/peers/node-socketio");
    if peers.contains(&Kind::Node) && !node_dir.join("node_modules/socket.io").exists() {
        if has("npm") {
            eprintln!("==> npm ci in {}", node_dir.display());
            let ok = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&node_dir)
                .status()
                .is_ok_and(|s| s.success());
            anyhow::ensure!(ok, "npm ci failed in {}", node_dir.display());
        } else {
            eprintln!("herald-bench: npm not found: skipping the Node peer");
            peers.retain(|k| *k != Kind::Node);
        }
    }
    let redis_ok = has("redis-server");
    let out = cli
        .out
        .clone()
        .unwrap_or_else(|| target_dir().join("herald-bench"));
    let work = out.join(format!("work-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let env = servers::Env {
        herald,
        me: std::env::current_exe()?,
        node_dir,
        work: work.clone(),
        pin: !cli.no_pin && machine.cores >= 2,
        perf: cli.perf.clone(),
    };
    if let Some(dir) = &cli.perf {
        std::fs::create_dir_all(dir)?;
    }
    let mode = if cli.quick { "--quick" } else { "full suite" };
    let load_start = shell("uptime", &[]);
    eprintln!(
        "herald-bench {mode}: peers {peer_names:?}, scenarios {names:?}\nmachine: {}\nload: {load_start}",
        machine.description
    );
    let mut ctx = scenarios::Ctx {
        env,
        clients: client::Clients::start()?,
        sizes,
        rows: Vec::new(),
        failures: Vec::new(),
        server_closed_seen: 0,
        errors_seen: (0, 0),
        scenario: String::new(),
    };
    for name in &names {
        for &kind in &peers {
            if name == "redis" && !(kind == Kind::Herald || kind == Kind::Node) {
                continue;
            }
            if (name == "redis" || kind == Kind::Node) && !redis_ok {
                eprintln!("-- {name}/{}: skipped (no redis-server)", kind.name());
                continue;
            }
            let t = Instant::now();
            eprintln!("-- {name} / {}", kind.name());
            if let Err(e) = scenarios::run(&mut ctx, name, kind).await {
                let msg = format!("{name}/{}: {e:#}", kind.name());
                eprintln!("  !! {msg}");
                ctx.failures.push(msg);
                ctx.clients.close_all().await;
            }
            eprintln!("   {:.1} s", t.elapsed().as_secs_f64());
        }
    }
    let mut report = report::Report {
        date: shell("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        machine: machine.description,
        load: vec![
            format!("start: {load_start}"),
            format!("end: {}", shell("uptime", &[])),
        ],
        mode: mode.to_owned(),
        seconds: started.elapsed().as_secs_f64(),
        rows: std::mem::take(&mut ctx.rows),
        targets: Vec::new(),
        failures: std::mem::take(&mut ctx.failures),
    };
    report.evaluate();
    let md = report.markdown();
    println!("{md}");
    std::fs::write(out.join("results.md"), &md)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    eprintln!(
        "results: {} and results.json ({:.0} s)",
        out.join("results.md").display(),
        report.seconds
    );
    drop(ctx);
    if !cli.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    if !report.failures.is_empty() {
        eprintln!("herald-bench: {} failure(s):", report.failures.len());
        for f in &report.failures {
            eprintln!("  - {f}");
        }
        return Ok(!cli.quick);
    }
    Ok(true)
}
