//! HTTP/1.x request heads and responses (in progress).
