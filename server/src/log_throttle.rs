//! Rate-limited log lines: a warning a client can cause on every message (a socket that never
//! reads makes every publish to its room fail to queue; a client hammering a request while a
//! backend is down) must not turn into a log flood that anyone can trigger.
//!
//! A [`LogThrottle`] lets at most one line per key through per interval; the next line that
//! passes says how many were suppressed in between. It remembers at most `max_keys` keys:
//! when full, keys not seen for an interval are forgotten, and if none is, every further key
//! shares one overflow slot, so a flood of distinct keys still yields at most `max_keys + 1`
//! lines per interval. Suppressed lines are counted in `herald_log_lines_suppressed_total`.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics as m;

/// Default interval between two lines of one key.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Default number of keys remembered.
pub const DEFAULT_MAX_KEYS: usize = 1024;

/// Whether to write a line now, and what it should say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Lines suppressed for this key (or for the overflow slot) since its last line.
    pub suppressed: u64,
    /// The key shared the overflow slot: the line stands for several keys.
    pub overflow: bool,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    last: Instant,
    suppressed: u64,
}

impl Slot {
    /// Lets a line through if the interval passed since the last one.
    fn hit(&mut self, now: Instant, interval: Duration, overflow: bool) -> Option<Pass> {
        if now.saturating_duration_since(self.last) >= interval {
            let pass = Pass {
                suppressed: self.suppressed,
                overflow,
            };
            *self = Slot {
                last: now,
                suppressed: 0,
            };
            Some(pass)
        } else {
            self.suppressed += 1;
            None
        }
    }
}

struct State<K> {
    slots: HashMap<K, Slot>,
    overflow: Option<Slot>,
    last_sweep: Option<Instant>,
}

/// At most one log line per key per interval (see the module docs).
pub struct LogThrottle<K> {
    site: &'static str,
    interval: Duration,
    max_keys: usize,
    state: Mutex<State<K>>,
}

impl<K: Eq + Hash + Clone> LogThrottle<K> {
    /// A throttle for the log line `site` (the metric's label), with the defaults.
    pub fn new(site: &'static str) -> Self {
        Self::with_limits(site, DEFAULT_INTERVAL, DEFAULT_MAX_KEYS)
    }

    /// A throttle with its own interval and key bound (at least 1).
    pub fn with_limits(site: &'static str, interval: Duration, max_keys: usize) -> Self {
        Self {
            site,
            interval,
            max_keys: max_keys.max(1),
            state: Mutex::new(State {
                slots: HashMap::new(),
                overflow: None,
                last_sweep: None,
            }),
        }
    }

    /// Whether a line for `key` may be written now.
    pub fn check(&self, key: &K) -> Option<Pass> {
        self.check_at(key, Instant::now())
    }

    /// [`Self::check`] at a given time (tests drive the clock).
    pub fn check_at(&self, key: &K, now: Instant) -> Option<Pass> {
        let pass = self.decide(key, now);
        if pass.is_none() {
            metrics::counter!(m::LOG_LINES_SUPPRESSED, "site" => self.site).increment(1);
        }
        pass
    }

    fn decide(&self, key: &K, now: Instant) -> Option<Pass> {
        let interval = self.interval;
        let mut state = self.state.lock();
        if let Some(slot) = state.slots.get_mut(key) {
            return slot.hit(now, interval, false);
        }
        if state.slots.len() >= self.max_keys {
            // Forget quiet keys, at most once per interval (a sweep walks the whole map).
            let due = state
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= interval);
            if due {
                state.last_sweep = Some(now);
                state
                    .slots
                    .retain(|_, s| now.saturating_duration_since(s.last) < interval);
            }
        }
        if state.slots.len() >= self.max_keys {
            return match &mut state.overflow {
                Some(slot) => slot.hit(now, interval, true),
                None => {
                    state.overflow = Some(Slot {
                        last: now,
                        suppressed: 0,
                    });
                    Some(Pass {
                        suppressed: 0,
                        overflow: true,
                    })
                }
            };
        }
        state.slots.insert(
            key.clone(),
            Slot {
                last: now,
                suppressed: 0,
            },
        );
        Some(Pass {
            suppressed: 0,
            overflow: false,
        })
    }

    /// Keys remembered now (bounded by `max_keys`).
    pub fn len(&self) -> usize {
        self.state.lock().slots.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The shared throttle of warnings that a client's request can cause while a backend fails
/// (store or tracking errors on handshake, listen, remove, relay; a publish the bus refused),
/// keyed by the line's site: one line per site per interval, with the count.
pub fn backend_faults() -> &'static LogThrottle<&'static str> {
    static T: std::sync::LazyLock<LogThrottle<&'static str>> =
        std::sync::LazyLock::new(|| LogThrottle::new("backend_faults"));
    &T
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn one_line_per_key_per_interval_then_the_count() {
        let t = LogThrottle::with_limits("test", 10 * S, 16);
        let t0 = Instant::now();
        let first = Pass {
            suppressed: 0,
            overflow: false,
        };
        assert_eq!(t.check_at(&"a", t0), Some(first));
        for i in 1..=1000u64 {
            assert_eq!(t.check_at(&"a", t0 + Duration::from_millis(i)), None);
        }
        // Another key is independent.
        assert_eq!(t.check_at(&"b", t0 + S), Some(first));
        assert_eq!(t.check_at(&"a", t0 + 9 * S), None);
        assert_eq!(
            t.check_at(&"a", t0 + 10 * S),
            Some(Pass {
                suppressed: 1001,
                overflow: false
            })
        );
        assert_eq!(t.check_at(&"a", t0 + 11 * S), None);
        assert_eq!(
            t.check_at(&"a", t0 + 25 * S),
            Some(Pass {
                suppressed: 1,
                overflow: false
            })
        );
    }

    #[test]
    fn keys_are_bounded_and_a_flood_of_keys_shares_one_slot() {
        let t = LogThrottle::with_limits("test", 10 * S, 4);
        let t0 = Instant::now();
        let mut lines = 0;
        for k in 0..10_000u32 {
            lines += usize::from(t.check_at(&k, t0).is_some());
            assert!(t.len() <= 4);
        }
        // Four keys and the overflow slot.
        assert_eq!(lines, 5);
        // An interval later the quiet keys are forgotten and new ones get their own slot.
        assert_eq!(
            t.check_at(&20_000, t0 + 10 * S),
            Some(Pass {
                suppressed: 0,
                overflow: false
            })
        );
        assert_eq!(t.len(), 1);
        // Three more keys fit; the next one shares the overflow slot, whose line reports
        // what it held back during the flood.
        let passes: Vec<Pass> = (30_000..30_010u32)
            .filter_map(|k| t.check_at(&k, t0 + 10 * S))
            .collect();
        let own = Pass {
            suppressed: 0,
            overflow: false,
        };
        assert_eq!(
            passes,
            vec![
                own,
                own,
                own,
                Pass {
                    suppressed: 9_995,
                    overflow: true
                }
            ]
        );
        assert_eq!(t.len(), 4);
    }
}
