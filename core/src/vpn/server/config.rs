//! The server's tunables.

use std::net::SocketAddr;
use std::time::Duration;

use crate::vpn::wire::{SysRoute, WireError};
use crate::vpn::{Network, WallClock};

/// Tunables of the server. Every interval and cap the spec names is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Where to listen (the server asks for it from [`Server::new`](super::Server::new)).
    pub listen: SocketAddr,
    /// The network's password: every AUTH, EXPTTUN and VMAC proves it.
    pub password: Vec<u8>,
    /// The virtual network; client addresses are its hosts.
    pub network: Network,
    /// A reading of the wall clock, for the signalling timestamps.
    pub wall: WallClock,
    /// The request head must be complete within this time (VPN-V2). Default 10 s.
    pub handshake_timeout: Duration,
    /// AUTH must succeed within this time of the upgrade (VPN-V6). Default 10 s.
    pub auth_timeout: Duration,
    /// A connection that sends nothing for this long is closed (VPN-V11). Default 60 s.
    pub idle_timeout: Duration,
    /// The most connections at once, handshakes included (VPN-V1). Default 1024.
    pub max_clients: usize,
    /// The most unflushed bytes queued to one connection (VPN-V8). Default 4 MiB.
    pub max_queued_bytes: usize,
    /// The largest WebSocket message accepted (VPN-V14). Default 65 536 + 64.
    pub max_message: usize,
    /// System routes pushed after each AUTH (VPN-V5); at most 255, contiguous masks.
    pub routes: Vec<SysRoute>,
}

impl Config {
    /// A configuration with the defaults of every tunable.
    pub fn new(
        listen: SocketAddr,
        password: impl Into<Vec<u8>>,
        network: Network,
        wall: WallClock,
    ) -> Config {
        Config {
            listen,
            password: password.into(),
            network,
            wall,
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_clients: 1024,
            max_queued_bytes: 4 << 20,
            max_message: 65_536 + 64,
            routes: Vec::new(),
        }
    }
}

/// A configuration the server cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The system routes do not fit one ROUTE message.
    #[error("system routes: {0}")]
    Routes(WireError),
}
