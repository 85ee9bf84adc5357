//! The name relay (seed 004, spec/name-relay.md) over async-std.
//!
//! - [`serve`] / [`serve_until`]: run the relay machine
//!   ([`ferry_core::name_relay::server::Server`]) on a listener the caller bound.
//! - [`NameClient`]: register a name at a relay, send to and receive from other names.

mod client;
mod server;

pub use client::NameClient;
pub use server::{serve, serve_until};
