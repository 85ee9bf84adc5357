//! Wire codecs shared by several protocols. Each is sans-IO: bytes in, values
//! out, and a streaming parser answers "incomplete" on a valid prefix.
//!
//! - [`http1`]: HTTP/1.x request heads (via `httparse`, with size caps) and responses.
//! - [`websocket`]: RFC 6455 frames and messages, and the upgrade handshake key.
//! - [`yamux`]: yamux frame headers (hashicorp `spec.md`) and their header-local rules.

pub mod http1;
pub mod stun;
pub mod websocket;
pub mod yamux;

/// A streaming parse: a whole value, or "call again with more bytes".
///
/// Every streaming parser in ferry answers `Incomplete` on a valid prefix and
/// reports how many bytes a whole value took, so a message split across any
/// number of reads parses the same as one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A whole value, and how many input bytes it took.
    Done {
        /// The value.
        value: T,
        /// Bytes consumed from the input.
        consumed: usize,
    },
    /// A valid prefix: call again with more bytes.
    Incomplete,
}
