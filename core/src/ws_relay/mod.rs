//! Seed 003, the WebSocket relay: peers open a WebSocket to
//! `/v1?relayId=R&peerId=P`; peers with the same relayId form a room, and a
//! message from one goes to every other peer of the room, or to one peer when it
//! names a `targetPeerId` (spec/ws-relay.md).
//!
//! - [`server`]: the relay machine (rooms, relaying, health, limits).
//! - `handshake` (private): the decision on an upgrade request (WS-1..WS-4).

mod handshake;
pub mod server;

pub use server::{Command, Config, Event, Server, Stats};
