//! Percentiles, repetition summaries, and the process counters read from `/proc`.

use std::time::Instant;

use serde::Serialize;

/// The `p`-th percentile (0..=100) of sorted values (nearest rank); 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median and spread of one metric over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Median of the repetitions.
    pub median: f64,
    /// Smallest repetition.
    pub min: f64,
    /// Largest repetition.
    pub max: f64,
    /// Every repetition, in run order.
    pub reps: Vec<f64>,
}

impl Summary {
    /// Summarises `reps` (NaN values are kept in `reps` but ignored for the statistics).
    pub fn of(reps: &[f64]) -> Self {
        let mut v: Vec<f64> = reps.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.is_empty() {
            f64::NAN
        } else if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            reps: reps.to_vec(),
        }
    }
}

/// Clock ticks per second of `/proc/<pid>/stat` times (Linux: `USER_HZ`, 100 everywhere
/// this tool runs; `getconf CLK_TCK` tells).
pub const CLK_TCK: f64 = 100.0;

/// CPU seconds a process used so far, with nanosecond resolution: the sum of its threads'
/// `/proc/<pid>/task/*/schedstat` run times, or the tick-resolution `stat` times when
/// schedstat is unavailable; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    schedstat_seconds(pid).or_else(|| stat_seconds(pid))
}

fn schedstat_seconds(pid: u32) -> Option<f64> {
    let mut total = 0u64;
    let mut any = false;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(path)
            && let Some(ns) = s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
            any = true;
        }
    }
    any.then(|| total as f64 / 1e9)
}

fn stat_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// Resident set size of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU used by a set of processes and by this one over an interval.
pub struct CpuWindow {
    pids: Vec<u32>,
    server_start: f64,
    self_start: f64,
    start: Instant,
}

/// What a [`CpuWindow`] measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// Wall-clock seconds.
    pub wall: f64,
    /// CPU seconds of the server processes.
    pub server: f64,
    /// CPU seconds of the load generator (this process, all threads).
    pub generator: f64,
}

impl CpuUse {
    /// Server CPU as a fraction of one core.
    pub fn server_core(&self) -> f64 {
        self.server / self.wall.max(1e-9)
    }
    /// Generator CPU as a fraction of one core.
    pub fn generator_core(&self) -> f64 {
        self.generator / self.wall.max(1e-9)
    }
}

impl CpuWindow {
    /// Starts measuring `pids` and this process.
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            server_start: pids.iter().filter_map(|p| cpu_seconds(*p)).sum(),
            self_start: cpu_seconds(std::process::id()).unwrap_or(0.0),
            start: Instant::now(),
        }
    }
    /// What was used since [`CpuWindow::start`].
    pub fn stop(&self) -> CpuUse {
        let server: f64 = self.pids.iter().filter_map(|p| cpu_seconds(*p)).sum();
        let me = cpu_seconds(std::process::id()).unwrap_or(0.0);
        CpuUse {
            wall: self.start.elapsed().as_secs_f64(),
            server: (server - self.server_start).max(0.0),
            generator: (me - self.self_start).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 99.9), 100);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn summary_takes_median_and_range() {
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!(s.median, 2.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 3.0);
    }

    #[test]
    fn own_process_counters_are_readable() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(stat_seconds(pid).is_some());
        assert!(rss_bytes(pid).unwrap_or(0) > 0);
    }
}
