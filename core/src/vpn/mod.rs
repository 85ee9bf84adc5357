//! Seed 002, the p2p VPN: peers exchange encrypted IPv4 packets over UDP (`spec/vpn.md`).
//!
//! - [`crypto`]: the datagram AEAD (AES-256-GCM under PBKDF2/HKDF keys) with a
//!   sliding replay window, and the WebSocket AUTH hash with its replay guard.
//! - [`wire`]: the plaintext byte layouts: peer messages (heartbeat, forward,
//!   latency probe, route) and the server's WebSocket messages (VPN-1..VPN-15).
//! - [`Network`] and [`WallClock`]: the virtual network's CIDR and the Unix time
//!   the signalling timestamps need (the core has no clock of its own).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::{Duration, Instant};

pub mod crypto;
pub mod node;
pub mod offload;
pub mod peer;
pub mod route;
pub mod server;
pub mod wire;

/// A virtual IPv4 network: a base address and a prefix length (`10.0.0.0/24`).
///
/// The base is always the network address (host bits cleared), whatever text
/// it was parsed from, so `10.0.0.7/24` and `10.0.0.0/24` are the same network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Network {
    base: Ipv4Addr,
    prefix: u8,
}

/// Why a CIDR text is not a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// Not `a.b.c.d/len`.
    #[error("`{0}` is not an IPv4 network such as 10.0.0.0/24")]
    Syntax(String),
    /// The prefix length is not 1..=30 (a VPN needs at least two hosts).
    #[error("prefix /{0} leaves no room for two hosts: use /1 to /30")]
    Prefix(u8),
}

impl Network {
    /// The network holding `addr` with `prefix` bits (1..=30).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Network, NetworkError> {
        if !(1..=30).contains(&prefix) {
            return Err(NetworkError::Prefix(prefix));
        }
        let mask = Self::mask_of(prefix);
        Ok(Network {
            base: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }

    fn mask_of(prefix: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
    }

    /// The network address (host bits zero).
    pub fn base(&self) -> Ipv4Addr {
        self.base
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The netmask (`255.255.255.0` for /24).
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask_of(self.prefix))
    }

    /// The broadcast address (host bits one).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) | !Self::mask_of(self.prefix))
    }

    /// Whether `addr` is inside the network (base and broadcast included).
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & Self::mask_of(self.prefix) == u32::from(self.base)
    }

    /// Whether `addr` may be a node's address: inside, and neither the network
    /// nor the broadcast address.
    pub fn is_host(&self, addr: Ipv4Addr) -> bool {
        self.contains(addr) && addr != self.base && addr != self.broadcast()
    }

    /// Every host address, lowest first.
    pub fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + use<> {
        let first = u32::from(self.base) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last).map(Ipv4Addr::from)
    }

    /// `addr/prefix` as text, the form EXPTTUN carries (`10.0.0.7/24`).
    pub fn host_cidr(&self, addr: Ipv4Addr) -> String {
        format!("{addr}/{}", self.prefix)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// Parses `a.b.c.d/len` into the address as written and the prefix length.
///
/// `10.0.0.7/24` gives `(10.0.0.7, 24)`; use [`Network::new`] for the network.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), NetworkError> {
    let syntax = || NetworkError::Syntax(text.to_owned());
    let (addr, prefix) = text.trim().split_once('/').ok_or_else(syntax)?;
    let addr = Ipv4Addr::from_str(addr).map_err(|_| syntax())?;
    if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(syntax());
    }
    let prefix = prefix.parse::<u8>().map_err(|_| syntax())?;
    if prefix > 32 {
        return Err(syntax());
    }
    Ok((addr, prefix))
}

impl FromStr for Network {
    type Err = NetworkError;

    fn from_str(text: &str) -> Result<Network, NetworkError> {
        let (addr, prefix) = parse_cidr(text)?;
        Network::new(addr, prefix)
    }
}

/// Unix time for a machine without a clock: the embedder reads the wall clock
/// once, next to an `Instant`, and the machine adds the monotonic time since.
///
/// Signalling timestamps (AUTH, EXPTTUN, VMAC) are Unix seconds (VPN-7); the
/// monotonic offset keeps them moving forward even if the wall clock is set back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// The monotonic instant the reading was taken at.
    pub at: Instant,
    /// Milliseconds since the Unix epoch at `at`.
    pub unix_ms: i64,
}

impl WallClock {
    /// A reading: `unix_ms` milliseconds since the Unix epoch at `at`.
    pub fn new(at: Instant, unix_ms: i64) -> WallClock {
        WallClock { at, unix_ms }
    }

    /// Milliseconds since the Unix epoch at `now` (never before the reading).
    pub fn unix_ms(&self, now: Instant) -> i64 {
        let since = now.saturating_duration_since(self.at);
        self.unix_ms
            .saturating_add(i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
    }

    /// Whole seconds since the Unix epoch at `now`.
    pub fn unix_secs(&self, now: Instant) -> i64 {
        self.unix_ms(now).div_euclid(1000)
    }

    /// The reading moved by `offset` (for tests of clock skew).
    pub fn skewed(&self, offset: Duration, ahead: bool) -> WallClock {
        let ms = i64::try_from(offset.as_millis()).unwrap_or(i64::MAX);
        WallClock {
            at: self.at,
            unix_ms: if ahead {
                self.unix_ms.saturating_add(ms)
            } else {
                self.unix_ms.saturating_sub(ms)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_parses_and_normalises() {
        let net: Network = "10.0.0.7/24".parse().unwrap();
        assert_eq!(net.base(), Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(net.prefix(), 24);
        assert_eq!(net.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(net.broadcast(), Ipv4Addr::new(10, 0, 0, 255));
        assert_eq!(net.to_string(), "10.0.0.0/24");
        assert!(net.is_host(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!net.is_host(Ipv4Addr::new(10, 0, 0, 0)));
        assert!(!net.is_host(Ipv4Addr::new(10, 0, 0, 255)));
        assert!(!net.contains(Ipv4Addr::new(10, 0, 1, 1)));
        assert_eq!(net.hosts().count(), 254);
        assert_eq!(net.host_cidr(Ipv4Addr::new(10, 0, 0, 9)), "10.0.0.9/24");
        let small: Network = "192.168.5.4/30".parse().unwrap();
        assert_eq!(
            small.hosts().collect::<Vec<_>>(),
            [Ipv4Addr::new(192, 168, 5, 5), Ipv4Addr::new(192, 168, 5, 6)]
        );
    }

    #[test]
    fn network_refuses_bad_text() {
        for bad in [
            "",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0/24",
            "10.0.0.0/33",
            "10.0.0.0/+4",
            "x/24",
        ] {
            assert!(
                matches!(bad.parse::<Network>(), Err(NetworkError::Syntax(_))),
                "{bad}"
            );
        }
        assert_eq!(
            "10.0.0.0/31".parse::<Network>(),
            Err(NetworkError::Prefix(31))
        );
        assert_eq!(
            "10.0.0.0/0".parse::<Network>(),
            Err(NetworkError::Prefix(0))
        );
        assert_eq!(
            parse_cidr("10.0.0.7/32"),
            Ok((Ipv4Addr::new(10, 0, 0, 7), 32))
        );
    }

    #[test]
    fn wall_clock_moves_with_the_monotonic_clock() {
        let at = crate::testing::test_epoch();
        let clock = WallClock::new(at, 1_700_000_000_500);
        assert_eq!(clock.unix_secs(at), 1_700_000_000);
        assert_eq!(
            clock.unix_ms(at + Duration::from_millis(1_600)),
            1_700_000_002_100
        );
        assert_eq!(
            clock.unix_secs(at + Duration::from_millis(1_600)),
            1_700_000_002
        );
        assert_eq!(
            clock.skewed(Duration::from_secs(40), false).unix_secs(at),
            1_699_999_960
        );
    }
}
