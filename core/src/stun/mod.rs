//! STUN services over the codec in [`crate::codec::stun`] (`spec/stun.md`).
//!
//! - [`responder`]: a Binding responder (ST-10..ST-12), `ferry stun`.
//! - [`client`]: the Binding client transaction (ST-13..ST-15) that machines
//!   run on a socket they share with their own traffic (the mount relay's points).
//! - [`probe`]: a one-shot machine around it, `ferry stun --probe SERVER`.

pub mod client;
pub mod probe;
pub mod responder;
