//! The mount relay (seed 000, `spec/mount-relay.md`): an HTTP/1.0 tracker
//! pairs relay points and listener points of a mount; they punch a UDP hole
//! and the relay streams CRC32-checked data to the listener.
//!
//! So far: [`wire`], the byte formats every part speaks (the stream datagram,
//! the handshake strings, the tracker's requests and its `Address` list), and
//! the [`tracker`] machine. The points and the STUN transaction that shares the
//! punched socket come next (issue 5).

pub mod point;
pub mod tracker;
pub mod wire;
