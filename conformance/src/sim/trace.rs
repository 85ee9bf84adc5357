//! What a simulation did, as a hash (to compare two runs) and as its last lines
//! (to explain a failure). `FERRY_SIM_TRACE=1` echoes every line to stderr.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hasher};
use std::time::Duration;

/// How many recent lines a failure report shows.
const KEEP: usize = 80;

pub(super) struct Trace {
    hasher: DefaultHasher,
    lines: u64,
    recent: VecDeque<String>,
    echo: bool,
}

impl Trace {
    pub(super) fn new() -> Self {
        Self {
            // `DefaultHasher::new()` has fixed keys: equal runs hash equal.
            hasher: DefaultHasher::new(),
            lines: 0,
            recent: VecDeque::with_capacity(KEEP),
            echo: std::env::var_os("FERRY_SIM_TRACE").is_some_and(|v| !v.is_empty() && v != "0"),
        }
    }

    /// Record one line and the bytes it carried.
    pub(super) fn record(&mut self, at: Duration, line: String, bytes: &[u8]) {
        self.hasher.write_u128(at.as_nanos());
        self.hasher.write(line.as_bytes());
        self.hasher.write_usize(bytes.len());
        self.hasher.write(bytes);
        self.lines += 1;
        let line = format!("{:>12.6}s {line}", at.as_secs_f64());
        if self.echo {
            eprintln!("[sim] {line}");
        }
        if self.recent.len() == KEEP {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }

    pub(super) fn hash(&self) -> u64 {
        self.hasher.clone().finish()
    }

    pub(super) fn len(&self) -> u64 {
        self.lines
    }

    pub(super) fn tail(&self, n: usize) -> String {
        let skip = self.recent.len().saturating_sub(n);
        let mut out = String::new();
        for line in self.recent.iter().skip(skip) {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out
    }
}
