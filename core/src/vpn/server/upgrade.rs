//! The decision on an upgrade request and the answer to a refused one (VPN-V1).

use crate::codec::http1::{RequestHead, Response, Version};
use crate::codec::websocket::validate_upgrade;

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

/// The `Sec-WebSocket-Accept` value for an upgrade request, or the refusal.
pub(super) fn decide(head: &RequestHead) -> Result<String, (u16, String)> {
    if head.method != "GET" || head.version != Version::Http11 {
        return Err((
            400,
            "a WebSocket upgrade is a GET request in HTTP/1.1".into(),
        ));
    }
    // validate_upgrade wants repeated fields joined with `,`.
    let fields: Vec<(&str, Vec<u8>)> = [
        "Upgrade",
        "Connection",
        "Sec-WebSocket-Version",
        "Sec-WebSocket-Key",
    ]
    .into_iter()
    .filter_map(|name| {
        let values: Vec<&[u8]> = head.headers_all(name).collect();
        (!values.is_empty()).then(|| (name, values.join(&b","[..])))
    })
    .collect();
    validate_upgrade(|name: &str| {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    })
    .map_err(|e| (e.status(), e.to_string()))
}
