//! # ferry-async-std: ferry's machines as async-std library calls
//!
//! - [`driver`]: one generic actor that executes any [`ferry_core::Machine`]'s IO
//!   vocabulary (TCP, UDP, pipes, timers) over async-std sockets.
//! - [`name_relay`]: the name relay (seed 004) as [`name_relay::serve`] and
//!   [`name_relay::NameClient`].
//! - [`ws_relay`]: the WebSocket relay (seed 003) as [`ws_relay::serve`].
//! - [`mount_relay`]: the mount relay (seed 000) as [`mount_relay::tracker()`],
//!   [`mount_relay::StunResponder`], [`mount_relay::relay`] and [`mount_relay::listen`].
//!
//! Everything specific to async-std (spawn, timers, socket types) sits in one
//! private module, `rt`; the rest is written against `async-channel` and the
//! `futures-io` traits, so moving to smol is a change to that module.

pub mod driver;
pub mod mount_relay;
pub mod name_relay;
pub mod port_relay;
mod race;
mod rt;
mod serve;
pub mod ws_relay;

pub use driver::{Backlog, Driver, DriverConfig, DriverStopped};
pub use rt::{TcpListener, TcpStream, UdpSocket};
