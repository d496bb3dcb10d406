//! Which Herald instances this one expects on the event bus (Redis mode): the in-memory view
//! behind the bus's delivery check ([`super::bus`]).
//!
//! Every instance subscribes to the bus channel, so the reply to a batch's `SPUBLISH` is the
//! number of instances that took it. The view says how many that must be: this instance plus
//! every peer it believes alive. It is built from the heartbeat registry
//! ([`RedisTracker::live_instances`]), refreshed every [`REFRESH_EVERY`] (and at once when a
//! reply exceeds it), and it does not forget a peer because Redis forgot it (a restart
//! without persistence, a failover): a peer leaves the view only when
//!
//! * it announced a clean shutdown on the bus ([`PeerView::left`]): it is then "leaving",
//!   no longer required but still tolerated until the instance TTL passes, so that a rolling
//!   restart causes no 503; or
//! * its last heartbeat is older than the instance TTL, counted only while this instance
//!   could read the registry: a failed refresh counts as having heard from every peer.
//!
//! So a peer that crashed is required, and publishes answer 503, for at most the instance TTL
//! after its last heartbeat (while Redis answers).
//!
//! Times are passed in (`now`), so the rules are tested without sleeping.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::tracking::redis::RedisTracker;

/// Longest interval between two refreshes of the view.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// How many bus subscribers a batch must reach, this instance included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// Every instance believed alive and not leaving.
    pub min: usize,
    /// … plus the instances that announced they are leaving (still subscribed, perhaps).
    pub max: usize,
}

impl Expected {
    /// Whether `reached` subscribers is a complete delivery. More than `max` is not: a
    /// subscriber Herald does not know of (a new instance not yet in the view, or a foreign
    /// subscription) could hide an instance that did not get the batch.
    pub fn is_met_by(&self, reached: usize) -> bool {
        (self.min..=self.max).contains(&reached)
    }
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    /// When its last heartbeat was (this machine's clock).
    heard: Instant,
    leaving: bool,
}

/// The view. Shared by the bus's sender, its listener and the refresh task.
pub struct PeerView {
    me: String,
    ttl: Duration,
    peers: Mutex<HashMap<String, Peer>>,
    refresh: Notify,
}

impl PeerView {
    /// An empty view for instance `me`, forgetting silent peers after `ttl` (the instance TTL).
    pub fn new(me: String, ttl: Duration) -> Self {
        Self {
            me,
            ttl,
            peers: Mutex::new(HashMap::new()),
            refresh: Notify::new(),
        }
    }

    /// What a batch sent at `now` must reach.
    pub fn expected(&self, now: Instant) -> Expected {
        let mut peers = self.peers.lock();
        let ttl = self.ttl;
        peers.retain(|_, p| now.saturating_duration_since(p.heard) <= ttl);
        let leaving = peers.values().filter(|p| p.leaving).count();
        let min = 1 + peers.len() - leaving;
        Expected {
            min,
            max: min + leaving,
        }
    }

    /// A successful read of the registry at `now`: each live instance with how long ago it
    /// last beat.
    pub fn observe(&self, now: Instant, live: &[(String, Duration)]) {
        let mut peers = self.peers.lock();
        for (id, ago) in live {
            if *id == self.me {
                continue;
            }
            let heard = now.checked_sub(*ago).unwrap_or(now);
            let peer = peers.entry(id.clone()).or_insert(Peer {
                heard,
                leaving: false,
            });
            if !peer.leaving && heard > peer.heard {
                peer.heard = heard;
            }
        }
    }

    /// The registry could not be read at `now`: silence that cannot be observed is not
    /// silence, so every peer not leaving counts as heard from.
    pub fn unobservable(&self, now: Instant) {
        for peer in self.peers.lock().values_mut() {
            if !peer.leaving {
                peer.heard = peer.heard.max(now);
            }
        }
    }

    /// Peer `id` announced a clean shutdown at `now`.
    pub fn left(&self, id: &str, now: Instant) {
        if id == self.me {
            return;
        }
        let mut peers = self.peers.lock();
        let peer = peers.entry(id.to_owned()).or_insert(Peer {
            heard: now,
            leaving: true,
        });
        peer.leaving = true;
    }

    /// Asks the refresh task to read the registry now.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Keeps the view fresh from the registry, forever (spawn it).
    pub async fn run(self: Arc<Self>, tracker: Arc<RedisTracker>) {
        loop {
            match tracker.live_instances().await {
                Ok(live) => self.observe(Instant::now(), &live),
                Err(e) => {
                    tracing::debug!(error = %e, "instance registry unreadable; keeping every peer");
                    self.unobservable(Instant::now());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = self.refresh.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(5);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn view() -> PeerView {
        PeerView::new("me".into(), TTL)
    }

    fn exp(min: usize, max: usize) -> Expected {
        Expected { min, max }
    }

    #[test]
    fn alone_an_instance_expects_only_itself() {
        let v = view();
        let now = Instant::now();
        v.observe(now, &[("me".into(), secs(0))]);
        assert_eq!(v.expected(now), exp(1, 1));
        assert!(v.expected(now).is_met_by(1));
        assert!(!v.expected(now).is_met_by(0));
        assert!(
            !v.expected(now).is_met_by(2),
            "a subscriber nobody knows of"
        );
    }

    #[test]
    fn a_peer_is_expected_until_it_has_been_silent_longer_than_the_ttl() {
        let v = view();
        let t0 = Instant::now();
        // Its last heartbeat was 1 s before the read.
        v.observe(t0, &[("me".into(), secs(0)), ("b".into(), secs(1))]);
        assert_eq!(v.expected(t0), exp(2, 2));
        // Redis no longer lists it (it crashed and its key expired, or Redis lost its keys).
        v.observe(t0 + secs(2), &[]);
        assert_eq!(v.expected(t0 + secs(4)), exp(2, 2));
        assert_eq!(
            v.expected(t0 + secs(5)),
            exp(1, 1),
            "TTL after its last heartbeat"
        );
    }

    #[test]
    fn a_registry_that_cannot_be_read_forgets_nobody() {
        let v = view();
        let t0 = Instant::now();
        v.observe(t0, &[("b".into(), secs(0))]);
        // Redis down for 20 s: every refresh fails.
        for s in 1..=20 {
            v.unobservable(t0 + secs(s));
        }
        assert_eq!(v.expected(t0 + secs(20)), exp(2, 2));
        // Back, but empty (no persistence): b is still expected until it beats again.
        v.observe(t0 + secs(21), &[]);
        assert_eq!(v.expected(t0 + secs(24)), exp(2, 2));
        v.observe(t0 + secs(24), &[("b".into(), secs(0))]);
        assert_eq!(v.expected(t0 + secs(28)), exp(2, 2));
    }

    #[test]
    fn a_peer_that_left_is_tolerated_but_no_longer_required() {
        let v = view();
        let t0 = Instant::now();
        v.observe(t0, &[("b".into(), secs(0)), ("c".into(), secs(0))]);
        v.left("b", t0 + secs(1));
        let e = v.expected(t0 + secs(1));
        assert_eq!(e, exp(2, 3));
        assert!(e.is_met_by(3), "b still subscribed for a moment");
        assert!(e.is_met_by(2), "b gone");
        // A heartbeat read before it left does not bring it back.
        v.observe(
            t0 + secs(2),
            &[("b".into(), secs(0)), ("c".into(), secs(0))],
        );
        assert_eq!(v.expected(t0 + secs(2)), exp(2, 3));
        v.unobservable(t0 + secs(3));
        assert_eq!(v.expected(t0 + secs(6)), exp(2, 2), "forgotten TTL later");
    }

    #[test]
    fn an_older_heartbeat_never_moves_a_peer_back() {
        let v = view();
        let t0 = Instant::now();
        v.observe(t0 + secs(3), &[("b".into(), secs(0))]);
        v.observe(t0 + secs(4), &[("b".into(), secs(4))]);
        assert_eq!(v.expected(t0 + secs(8)), exp(2, 2));
        assert_eq!(v.expected(t0 + secs(9)), exp(1, 1));
    }
}
