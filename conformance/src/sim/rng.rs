//! The simulator's random numbers: SplitMix64, written out so that a seed replays
//! the same run on every platform and with every version of every dependency.

use std::ops::RangeInclusive;

/// A small seeded generator (SplitMix64). Not for cryptography.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for a named stream of `seed`: two streams of one seed are
    /// independent, so drawing more from one never shifts the other.
    pub fn stream(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, mixed into the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = Self::new(seed ^ h);
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SimRng::below(0)");
        // Multiply-shift: the bias is below 2^-32 for the ranges a simulation uses.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `range` (inclusive).
    pub fn range(&mut self, range: RangeInclusive<u64>) -> u64 {
        let (lo, hi) = (*range.start(), *range.end());
        assert!(lo <= hi, "SimRng::range: empty range");
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// Uniform in `range` (inclusive), as a `usize`.
    pub fn range_usize(&mut self, range: RangeInclusive<usize>) -> usize {
        self.range(*range.start() as u64..=*range.end() as u64) as usize
    }

    /// An index into a collection of `len` items; `len` must not be 0.
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// One item of `items`, or `None` if it is empty.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.index(items.len()))
        }
    }

    /// True with probability `p` (0.0 never, 1.0 always).
    pub fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        if p >= 1.0 {
            return true;
        }
        ((self.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// How many of `available` bytes to move in one step, at most `max`: a mix of
    /// single bytes, everything at once and anything between, so every split of a
    /// stream is reachable.
    pub fn chunk(&mut self, available: usize, max: usize) -> usize {
        let cap = available.min(max.max(1));
        if cap == 0 {
            return 0;
        }
        match self.below(8) {
            0 | 1 => 1 + self.index(cap.min(4)),
            2 | 3 => cap,
            _ => 1 + self.index(cap),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_numbers_and_streams_differ() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        let mut s = SimRng::stream(7, "x");
        let mut t = SimRng::stream(7, "y");
        assert_ne!(s.next_u64(), t.next_u64());
    }

    #[test]
    fn ranges_stay_in_bounds() {
        let mut r = SimRng::new(1);
        for _ in 0..10_000 {
            assert!(r.range(3..=9) <= 9);
            assert!(r.range(3..=9) >= 3);
            let c = r.chunk(10, 4);
            assert!((1..=4).contains(&c));
        }
        assert_eq!(r.chunk(0, 10), 0);
        assert_eq!(r.range(5..=5), 5);
        let _ = r.range(0..=u64::MAX);
    }
}
