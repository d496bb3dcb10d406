//! Connection caps: how many connections the public listener serves at once, in all and per
//! client address, and what happens to one over a cap.
//!
//! Every accepted connection asks [`Admission::admit`] for a [`Slot`]; the slot lives as long
//! as the connection's socket is in use (hyper's IO, then the upgraded WebSocket's) and gives
//! its place back on `Drop`, whatever ends the connection. Two outcomes:
//!
//! - [`Verdict::Serve`]: under both caps, served normally.
//! - [`Verdict::Refuse`]: over a cap. The connection still gets one answer, from a small pool
//!   of refusal slots: the health endpoints answer as usual, anything else gets
//!   `429 too_many_connections` (per-address cap) or `503 at_capacity` (global cap), then the
//!   connection is closed. When the pool is full a refused connection is evicted (closed) to
//!   make room: the oldest one of the address holding the most refusal slots. A client holding
//!   every connection it can and opening more in a loop thus evicts its own refused
//!   connections, not a health probe's from another address (unless it spreads its
//!   connections over as many addresses as there are refusal slots).
//!
//! The global cap is derived from the open-file limit ([`fd_budget`]): a reserve of file
//! descriptors stays free for refusals, health answers, Redis, the database and logs, so that
//! `accept()` keeps succeeding while a client holds every connection it can.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::metrics as m;

/// File descriptors kept out of the global connection cap: an eighth of the limit, 64 to 1024.
pub fn fd_reserve(nofile: u64) -> u64 {
    (nofile / 8).clamp(64, 1024)
}

/// The connection budget for an open-file limit of `nofile`: (global cap, refusal slots).
/// A quarter of the reserve answers refusals and health; the rest covers the process's other
/// descriptors (listeners, Redis, the database, the runtime) and sockets still closing.
pub fn fd_budget(nofile: u64) -> (usize, usize) {
    let reserve = fd_reserve(nofile);
    let cap = nofile.saturating_sub(reserve).max(1);
    (
        usize::try_from(cap).unwrap_or(usize::MAX),
        usize::try_from(reserve / 4).unwrap_or(16),
    )
}

/// Why a connection is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its address holds `--max-connections-per-ip` connections.
    PerAddress,
    /// The server holds `--max-connections` connections.
    Capacity,
}

impl Refused {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refused::PerAddress => "per_ip",
            Refused::Capacity => "capacity",
        }
    }
}

/// What to do with an accepted connection.
#[derive(Debug)]
pub enum Verdict {
    /// Serve it.
    Serve(Slot),
    /// Answer one request (health, or the refusal) and close.
    Refuse(Slot, Refused),
    /// Close it unanswered (no refusal slots configured).
    Drop(Refused),
}

/// The key connections are counted under: an IPv4 address, or the /64 of an IPv6 address
/// (one host usually owns a whole /64). IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressKey(IpAddr);

impl AddressKey {
    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(Ipv6Addr::from(bits)))
                }
            },
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    served: usize,
    /// Served connections per address (entries removed at zero).
    by_address: HashMap<AddressKey, usize>,
    /// Refused connections being answered, oldest first, with their eviction signal.
    refusing: VecDeque<(u64, AddressKey, Arc<Notify>)>,
    /// How many of those each address holds (entries removed at zero).
    refusing_by_address: HashMap<AddressKey, usize>,
    /// Evicted refused connections whose task has not closed them yet (they still hold a
    /// file descriptor).
    evicting: usize,
    next_refusal: u64,
}

impl Counts {
    /// Evicts the oldest refused connection of the address holding the most; false if none.
    fn evict_one(&mut self) -> bool {
        let Some(most) = self.refusing_by_address.values().copied().max() else {
            return false;
        };
        let victim = self
            .refusing
            .iter()
            .position(|(_, key, _)| self.refusing_by_address.get(key) == Some(&most));
        match victim {
            Some(i) => {
                if let Some(evict) = self.remove_refusal(i) {
                    self.evicting += 1;
                    evict.notify_one();
                }
                true
            }
            None => false,
        }
    }

    fn remove_refusal(&mut self, i: usize) -> Option<Arc<Notify>> {
        let (_, key, evict) = self.refusing.remove(i)?;
        if let Some(n) = self.refusing_by_address.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.refusing_by_address.remove(&key);
            }
        }
        Some(evict)
    }
}

/// The caps and the connections counted against them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admission(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    max_connections: usize,
    max_per_address: usize,
    refusal_slots: usize,
    counts: Mutex<Counts>,
    /// Signalled when an evicted connection is gone.
    evicted_gone: Notify,
}

impl Admission {
    /// Caps: `max_connections` in all, `max_per_address` per address (0: none), and
    /// `refusal_slots` connections answered with a refusal at once.
    pub fn new(max_connections: usize, max_per_address: usize, refusal_slots: usize) -> Self {
        Self(Arc::new(Inner {
            max_connections: max_connections.max(1),
            max_per_address,
            refusal_slots,
            counts: Mutex::default(),
            evicted_gone: Notify::new(),
        }))
    }

    /// The global cap.
    pub fn max_connections(&self) -> usize {
        self.0.max_connections
    }

    /// Counts a connection from `ip` in, or says why not.
    pub fn admit(&self, ip: IpAddr) -> Verdict {
        let key = AddressKey::of(ip);
        let inner = &self.0;
        let mut counts = inner.counts.lock();
        let of_address = counts.by_address.get(&key).copied().unwrap_or(0);
        let reason = if inner.max_per_address != 0 && of_address >= inner.max_per_address {
            Refused::PerAddress
        } else if counts.served >= inner.max_connections {
            Refused::Capacity
        } else {
            *counts.by_address.entry(key).or_default() += 1;
            counts.served += 1;
            metrics::gauge!(m::CONNECTIONS_OPEN).set(counts.served as f64);
            return Verdict::Serve(Slot {
                admission: self.clone(),
                kind: SlotKind::Served(key),
            });
        };
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason.label()).increment(1);
        if inner.refusal_slots == 0 {
            return Verdict::Drop(reason);
        }
        while counts.refusing.len() >= inner.refusal_slots && counts.evict_one() {}
        let id = counts.next_refusal;
        counts.next_refusal = id.wrapping_add(1);
        let evict = Arc::new(Notify::new());
        counts.refusing.push_back((id, key, evict.clone()));
        *counts.refusing_by_address.entry(key).or_default() += 1;
        Verdict::Refuse(
            Slot {
                admission: self.clone(),
                kind: SlotKind::Refusing(id, evict),
            },
            reason,
        )
    }

    /// Waits (up to `bound`) until every evicted connection is closed, so that evictions free
    /// file descriptors before more are accepted: the accept loop calls it after each
    /// admission, which holds the descriptors in use to the caps plus the refusal pool even
    /// when refused connections arrive faster than their tasks run.
    pub async fn settle(&self, bound: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let gone = self.0.evicted_gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.0.counts.lock().evicting == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, gone).await.is_err() {
                return;
            }
        }
    }

    /// Connections served and answered with a refusal right now.
    pub fn open(&self) -> (usize, usize) {
        let counts = self.0.counts.lock();
        (counts.served, counts.refusing.len())
    }

    fn release(&self, kind: &SlotKind) {
        let mut counts = self.0.counts.lock();
        match kind {
            SlotKind::Served(key) => {
                counts.served = counts.served.saturating_sub(1);
                metrics::gauge!(m::CONNECTIONS_OPEN).set(counts.served as f64);
                if let Some(n) = counts.by_address.get_mut(key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.by_address.remove(key);
                    }
                }
            }
            SlotKind::Refusing(id, _) => {
                match counts.refusing.iter().position(|(i, _, _)| i == id) {
                    Some(i) => {
                        counts.remove_refusal(i);
                    }
                    None => {
                        // It was evicted.
                        counts.evicting = counts.evicting.saturating_sub(1);
                        drop(counts);
                        self.0.evicted_gone.notify_waiters();
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
enum SlotKind {
    Served(AddressKey),
    Refusing(u64, Arc<Notify>),
}

/// One connection's place under the caps, given back on `Drop`.
#[derive(Debug)]
pub struct Slot {
    admission: Admission,
    kind: SlotKind,
}

impl Slot {
    /// Resolves when a refused connection must make room for a newer one (never for a served
    /// connection).
    pub async fn evicted(&self) {
        match &self.kind {
            SlotKind::Refusing(_, evict) => evict.notified().await,
            SlotKind::Served(_) => std::future::pending().await,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(&self.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn per_address_cap_refuses_and_slots_come_back() {
        let a = Admission::new(100, 2, 10);
        let s1 = a.admit(ip("10.0.0.1"));
        let s2 = a.admit(ip("10.0.0.1"));
        assert!(matches!(s1, Verdict::Serve(_)) && matches!(s2, Verdict::Serve(_)));
        let refused = a.admit(ip("10.0.0.1"));
        assert!(matches!(refused, Verdict::Refuse(_, Refused::PerAddress)));
        // Another address is not affected.
        let other = a.admit(ip("10.0.0.2"));
        assert!(matches!(other, Verdict::Serve(_)));
        assert_eq!(a.open(), (3, 1));
        drop(refused);
        drop(s1);
        let again = a.admit(ip("10.0.0.1"));
        assert!(
            matches!(again, Verdict::Serve(_)),
            "a closed connection's place is free"
        );
        drop((s2, other, again));
        assert_eq!(a.open(), (0, 0), "every slot given back");
        assert!(a.0.counts.lock().by_address.is_empty(), "no entry left");
    }

    #[tokio::test]
    async fn a_full_refusal_pool_evicts_its_oldest() {
        let a = Admission::new(1, 0, 2);
        let _served = a.admit(ip("10.0.1.1"));
        let refused: Vec<Slot> = (1..=3)
            .filter_map(|i| match a.admit(ip(&format!("10.0.2.{i}"))) {
                Verdict::Refuse(slot, Refused::Capacity) => Some(slot),
                _ => None,
            })
            .collect();
        assert_eq!(refused.len(), 3, "every refused connection is answered");
        assert_eq!(a.open(), (1, 2), "the pool stays at its size");
        tokio::time::timeout(std::time::Duration::from_secs(1), refused[0].evicted())
            .await
            .expect("the oldest is told to make room");
        let newest =
            tokio::time::timeout(std::time::Duration::from_millis(50), refused[2].evicted());
        assert!(newest.await.is_err(), "the newest is not evicted");
        assert_eq!(a.0.counts.lock().evicting, 1);
        let settled = {
            let a = a.clone();
            tokio::spawn(async move { a.settle(std::time::Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        assert!(
            !settled.is_finished(),
            "waits while the evicted one is open"
        );
        drop(refused);
        tokio::time::timeout(std::time::Duration::from_secs(1), settled)
            .await
            .expect("settles once it is closed")
            .expect("task");
        assert_eq!(a.open(), (1, 0));
        assert!(a.0.counts.lock().refusing_by_address.is_empty());
        assert!(matches!(
            Admission::new(1, 0, 0).admit(ip("10.0.3.1")),
            Verdict::Serve(_)
        ));
    }

    #[tokio::test]
    async fn eviction_hits_the_address_holding_the_most_refusals() {
        let a = Admission::new(1, 0, 4);
        let _served = a.admit(ip("10.0.1.1"));
        let refuse = |addr: &str| match a.admit(ip(addr)) {
            Verdict::Refuse(slot, _) => slot,
            other => panic!("{other:?}"),
        };
        let probe = refuse("10.0.9.9"); // oldest, alone on its address
        let flood: Vec<Slot> = (0..20).map(|_| refuse("10.0.2.1")).collect();
        async fn quick(slot: &Slot) -> bool {
            tokio::time::timeout(std::time::Duration::from_millis(20), slot.evicted())
                .await
                .is_ok()
        }
        assert!(
            !quick(&probe).await,
            "the probe survives a flood from one address"
        );
        let evicted = futures_util::future::join_all(flood.iter().map(quick)).await;
        assert_eq!(
            evicted.iter().filter(|e| **e).count(),
            17,
            "the flood evicts itself"
        );
        assert_eq!(a.open(), (1, 4));
    }

    #[test]
    fn ipv6_counts_per_slash_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            AddressKey::of(ip("2001:db8:1:2::1")),
            AddressKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            AddressKey::of(ip("2001:db8:1:2::1")),
            AddressKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            AddressKey::of(ip("::ffff:192.0.2.7")),
            AddressKey::of(ip("192.0.2.7"))
        );
    }

    #[test]
    fn the_fd_budget_keeps_a_reserve() {
        assert_eq!(fd_budget(1024), (896, 32));
        assert_eq!(fd_budget(200), (136, 16));
        assert_eq!(fd_budget(1 << 20), ((1 << 20) - 1024, 256));
        assert_eq!(fd_budget(10).0, 1, "never zero");
    }
}
