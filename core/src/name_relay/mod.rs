//! Seed 004, the name relay: TCP clients register a name, then send
//! `dest|len|bytes` to each other through the relay (spec/name-relay.md).
//!
//! - [`wire`]: parsers and encoders of registrations and frames.
//! - [`server`]: the relay machine.
//! - [`client`]: a client machine (registration, keep-alive, framing).

pub mod client;
pub mod server;
pub mod wire;
