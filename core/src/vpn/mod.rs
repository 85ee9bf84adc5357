//! Seed 002, the p2p VPN: peers exchange encrypted IPv4 packets over UDP (`spec/vpn.md`).
//!
//! - [`crypto`]: the datagram AEAD (ChaCha20-Poly1305 under PBKDF2/HKDF keys) with a
//!   sliding replay window, and the WebSocket AUTH hash with its replay guard.
//! - [`wire`]: the plaintext byte layouts: peer messages (heartbeat, forward,
//!   latency probe, route) and the server's WebSocket messages (VPN-1..VPN-15).

pub mod crypto;
pub mod wire;
