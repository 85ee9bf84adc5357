//! RFC 6455 WebSocket frames and messages (in progress).
