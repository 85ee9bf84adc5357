//! The decision on a WebSocket upgrade request (WS-1..WS-4), apart from the
//! connection limit, which needs the server's state.

use super::server::Config;
use crate::codec::http1::{RequestHead, Response};
use crate::codec::websocket::validate_upgrade_request;

/// The longest `relayId` or `peerId`, in bytes (WS-2).
pub(super) const MAX_ID_LEN: usize = 256;

/// An accepted upgrade: what the 101 answer carries and who joins where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Upgrade {
    /// The `Sec-WebSocket-Accept` value.
    pub accept: String,
    /// The protocol to echo (the admin secret, WS-3), if any.
    pub protocol: Option<String>,
    pub relay_id: String,
    pub peer_id: String,
}

/// A refused upgrade: the status and the plain-text reason sent with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub status: u16,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
        }
    }

    /// The HTTP answer: `Response::text` with the reason as body; a 426 also
    /// names the version spoken (WS-1).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let phrase = match self.status {
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut response = Response::text(self.status, phrase, format!("{}\n", self.reason));
        if self.status == 426 {
            response = response.with_header("Sec-WebSocket-Version", "13");
        }
        response.encode(out);
    }
}

/// Decide on a complete request head, in the spec's order: path (WS-1), upgrade
/// (WS-1), ids (WS-2), admin secret (WS-3), origin (WS-4).
pub(super) fn decide(head: &RequestHead, config: &Config) -> Result<Upgrade, Refusal> {
    if head.path() != "/v1" {
        return Err(Refusal::new(404, "no such path; WebSockets connect to /v1"));
    }
    let accept =
        validate_upgrade_request(head).map_err(|(status, reason)| Refusal::new(status, reason))?;
    let relay_id = id_param(head, "relayId")?;
    let peer_id = id_param(head, "peerId")?;
    let protocol = match config.admin_secret.as_deref() {
        Some(secret) if !secret.is_empty() => {
            Some(offered_secret(head, secret).ok_or_else(|| {
                Refusal::new(
                    401,
                    "the admin secret must be offered in Sec-WebSocket-Protocol",
                )
            })?)
        }
        _ => None,
    };
    if let Some(allowed) = &config.allowed_origins {
        let origin = head.header_str("Origin").map(str::trim);
        if !origin.is_some_and(|o| allowed.iter().any(|a| a == o)) {
            return Err(Refusal::new(403, "origin not allowed"));
        }
    }
    Ok(Upgrade {
        accept,
        protocol,
        relay_id,
        peer_id,
    })
}

/// A required id from the query string (WS-2).
fn id_param(head: &RequestHead, name: &str) -> Result<String, Refusal> {
    match head.query_param(name) {
        None => Err(Refusal::new(400, format!("missing query parameter {name}"))),
        Some(value) if value.is_empty() => {
            Err(Refusal::new(400, format!("empty query parameter {name}")))
        }
        Some(value) if value.len() > MAX_ID_LEN => Err(Refusal::new(
            400,
            format!("query parameter {name} is longer than {MAX_ID_LEN} bytes"),
        )),
        Some(value) => Ok(value),
    }
}

/// The offered protocol equal to the admin secret, if any (WS-3). Every offered
/// item is compared, and each comparison takes a time that depends on the
/// secret's length only, not on the offered bytes.
fn offered_secret(head: &RequestHead, secret: &str) -> Option<String> {
    let mut found = false;
    for value in head.headers_all("Sec-WebSocket-Protocol") {
        for item in value.split(|&b| b == b',') {
            found |= constant_time_eq(item.trim_ascii(), secret.as_bytes());
        }
    }
    found.then(|| secret.to_owned())
}

fn constant_time_eq(offered: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(offered.len() != secret.len());
    for (i, s) in secret.iter().enumerate() {
        diff |= offered.get(i).copied().unwrap_or(0) ^ s;
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws3_constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret\0", b"s3cret"));
        assert!(!constant_time_eq(b"s3creT", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }
}
