//! STUN services over the codec in [`crate::codec::stun`] (`spec/stun.md`).
//!
//! - [`responder`]: a Binding responder (ST-10..ST-12), `ferry stun`.
//!
//! The client transaction the mount relay's points run on their punched socket
//! (ST-13..ST-15) comes with the points (issue 5).

pub mod responder;
