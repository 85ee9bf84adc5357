//! A small deadline table: one deadline per key, earliest first.
//!
//! Machines keep one `Timers` keyed by an enum of their timer kinds (or by a
//! connection id) and report [`Timers::next`] from `poll_timeout`. Ordering ties
//! are broken by the key, so expiry order is deterministic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The longest timeout a machine accepts (a year): an `Instant` can always be
/// moved that far, whatever a config file says.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// One deadline per key.
#[derive(Debug, Clone)]
pub struct Timers<K: Ord + Copy> {
    by_key: BTreeMap<K, Instant>,
    by_time: BTreeSet<(Instant, K)>,
}

impl<K: Ord + Copy> Default for Timers<K> {
    fn default() -> Self {
        Self {
            by_key: BTreeMap::new(),
            by_time: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Copy> Timers<K> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set (or move) the deadline of `key`.
    pub fn set(&mut self, key: K, at: Instant) {
        if let Some(old) = self.by_key.insert(key, at) {
            self.by_time.remove(&(old, key));
        }
        self.by_time.insert((at, key));
    }

    /// Forget the deadline of `key`, if any.
    pub fn cancel(&mut self, key: K) {
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key));
        }
    }

    /// The deadline of `key`, if set.
    pub fn get(&self, key: K) -> Option<Instant> {
        self.by_key.get(&key).copied()
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Remove and return one key whose deadline is `<= now`, earliest first.
    pub fn pop_expired(&mut self, now: Instant) -> Option<K> {
        let &(at, key) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.remove(&(at, key));
        self.by_key.remove(&key);
        Some(key)
    }

    /// How many deadlines are set.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True if no deadline is set.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expires_in_deadline_order_and_moves_on_reset() {
        let t0 = crate::testing::test_epoch();
        let mut timers = Timers::new();
        timers.set(1u32, t0 + Duration::from_secs(3));
        timers.set(2u32, t0 + Duration::from_secs(1));
        timers.set(1u32, t0 + Duration::from_secs(2)); // moved earlier
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.pop_expired(t0), None);
        let late = t0 + Duration::from_secs(5);
        assert_eq!(timers.pop_expired(late), Some(2));
        assert_eq!(timers.pop_expired(late), Some(1));
        assert_eq!(timers.pop_expired(late), None);
        assert!(timers.is_empty());
    }

    #[test]
    fn cancel_forgets() {
        let t0 = crate::testing::test_epoch();
        let mut timers = Timers::new();
        timers.set(7u8, t0);
        timers.cancel(7);
        assert_eq!(timers.next(), None);
        assert_eq!(timers.pop_expired(t0 + Duration::from_secs(1)), None);
    }
}
