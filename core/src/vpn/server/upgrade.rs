//! The decision on an upgrade request and the answer to a refused one (VPN-V1).

use crate::codec::http1::{RequestHead, Response};
use crate::codec::websocket::validate_upgrade_request;

/// A refused upgrade: a plain-text HTTP answer (VPN-V1).
pub(super) fn refusal(status: u16, reason: &str) -> Vec<u8> {
    let phrase = match status {
        400 => "Bad Request",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut response = Response::text(status, phrase, format!("{reason}\n"));
    if status == 426 {
        response = response.with_header("Sec-WebSocket-Version", "13");
    }
    let mut out = Vec::new();
    response.encode(&mut out);
    out
}

/// The `Sec-WebSocket-Accept` value for an upgrade request (any path), or
/// the refusal's status and reason.
pub(super) fn decide(head: &RequestHead) -> Result<String, (u16, String)> {
    validate_upgrade_request(head)
}
