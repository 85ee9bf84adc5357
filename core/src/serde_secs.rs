//! (De)serialize a [`Duration`] as a number of seconds (`3`, `0.5`), the form a
//! person writes in a TOML config.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Deserialize seconds (integer or fraction) into a `Duration`.
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let secs = f64::deserialize(deserializer)?;
    Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
}
