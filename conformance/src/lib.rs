//! # ferry-conformance: what every ferry executor must do
//!
//! - [`scenarios`]: black-box scenario bodies over real loopback sockets, run
//!   against the mio daemon, the async-std runtime and third-party clients.
//! - `sim`: the deterministic simulator that executes the IO vocabulary over
//!   virtual hosts with a virtual clock (seeded; a failing seed replays exactly).
//! - [`netns`]: a Linux network-namespace lab with two sites behind nftables NAT
//!   routers (endpoint-independent or symmetric) and a public segment, plus a
//!   coturn STUN-only launcher (root only; skipped elsewhere).
//!
//! This crate is test infrastructure: a failed expectation is a panic with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test infrastructure: failing loudly is the point

pub mod bench;
pub mod clients;
pub mod daemon;
pub mod ip_host;
pub mod netns;
pub mod puppet;
pub mod scenarios;
pub mod served;
pub mod sim;
