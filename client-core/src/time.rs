//! Time as the session sees it: an instant on the driver's monotonic clock.

use std::ops::Add;
use std::time::Duration;

/// A point on the driver's monotonic clock, measured from any origin the driver picks (the
/// Rust driver: its start; the browser driver: `Date.now()`). Only differences matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(Duration);

impl Instant {
    /// The instant `since_origin` after the driver's origin.
    pub const fn from_duration(since_origin: Duration) -> Self {
        Self(since_origin)
    }

    /// The instant `ms` milliseconds after the origin (negative or NaN counts as 0).
    pub fn from_millis_f64(ms: f64) -> Self {
        Self(Duration::from_secs_f64((ms / 1000.0).max(0.0)))
    }

    /// The time since the origin.
    pub const fn since_origin(self) -> Duration {
        self.0
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(rhs))
    }
}
