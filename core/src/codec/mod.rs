//! Wire codecs shared by several protocols. Each is sans-IO: bytes in, values
//! out, and a streaming parser answers "incomplete" on a valid prefix.
//!
//! - [`http1`]: HTTP/1.x request heads (via `httparse`, with size caps) and responses.
//! - [`websocket`]: RFC 6455 frames and messages, and the upgrade handshake key.

pub mod http1;
pub mod websocket;
