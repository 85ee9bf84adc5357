//! # ferry-core: every ferry protocol as a pure, deterministic machine
//!
//! This crate has no sockets, no clock, no threads and no OS randomness
//! (`core/clippy.toml` forbids them). Each protocol is a [`Machine`]:
//!
//! ```text
//!            handle_input(Input, now) ┐            ┌ poll_action()  -> Action   (runtime executes)
//! runtime ─▶ handle_command(cmd, now) ├─ machine ──┤ poll_event()   -> Event    (application reads)
//!            handle_timeout(now)      ┘            └ poll_timeout() -> Instant  (runtime sleeps until)
//! ```
//!
//! ## The drive loop (what every runtime does)
//!
//! 1. Wait for IO or for the instant `poll_timeout()` returned, whichever is first.
//! 2. Report what happened with `handle_input` (one call per event, in order), or
//!    call `handle_timeout(now)` once the deadline has passed.
//! 3. After each `handle_*`, drain `poll_action()` to `None` and carry out every
//!    action in order; drain `poll_event()` to `None`. Carrying out an action may
//!    produce inputs (e.g. `Flushed`): feed them back and drain again.
//! 4. Go to 1.
//!
//! The runtime allocates ids for what it accepts; the machine allocates ids
//! (with [`io::CORE_ID_BIT`] set) for what it asks to open. Back-pressure is the
//! machine's job: the runtime accepts every `Send` and reports `Flushed`; the
//! machine pauses the readers that feed a full queue. See [`io::Machine`] for the
//! full contract.
//!
//! ## Protocols
//!
//! - [`mount_relay`]: seed 000, a tracker pairs relay and listener points over UDP (wire formats so far).
//! - [`name_relay`]: seed 004, a TCP relay addressed by registered names.
//! - [`port_relay`]: seed 001, a public port per client over yamux, a pool or events.
//! - [`stun`]: a STUN Binding responder (RFC 8489), for the points of seed 000.
//! - [`ws_relay`]: seed 003, WebSocket rooms (relayId/peerId) with targeted messages.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
pub mod io;
pub mod mount_relay;
pub mod name_relay;
pub mod port_relay;
pub mod stun;
pub mod timer;
pub mod vpn;
pub mod ws_relay;

#[doc(hidden)]
pub mod serde_secs;

#[cfg(test)]
pub(crate) mod testing;

pub use io::{Action, ConnId, Input, ListenerId, Machine, SocketId};
