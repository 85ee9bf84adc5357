//! Small helpers the benchmarks (`conformance/benches/`) share.

/// The `usize` in environment variable `name`, or `default` if unset or not a number.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
