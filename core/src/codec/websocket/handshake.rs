//! The server side of the opening handshake (RFC 6455 §4.2), without any HTTP type.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};
use thiserror::Error;

/// The GUID a server appends to the client's key (§1.3).
pub const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`: the base64 of the
/// SHA-1 of the key followed by [`ACCEPT_GUID`] (§4.2.2).
pub fn accept_key(sec_websocket_key: &str) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(sec_websocket_key.as_bytes());
    sha1.update(ACCEPT_GUID.as_bytes());
    STANDARD.encode(sha1.finalize())
}

/// Why a request is not a WebSocket upgrade this server accepts (§4.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// No `Upgrade` header naming `websocket`.
    #[error("no `Upgrade: websocket` header")]
    NotWebSocket,
    /// No `Connection` header with the `upgrade` token.
    #[error("no `upgrade` token in the `Connection` header")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Version` is missing or not 13.
    #[error("`Sec-WebSocket-Version` missing or not 13")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing.
    #[error("no `Sec-WebSocket-Key` header")]
    MissingKey,
    /// `Sec-WebSocket-Key` is not the base64 of 16 bytes.
    #[error("`Sec-WebSocket-Key` is not the base64 of 16 bytes")]
    InvalidKey,
}

impl UpgradeError {
    /// The HTTP status to answer with: 426 (Upgrade Required, with a
    /// `Sec-WebSocket-Version: 13` header) for a version we do not speak, else 400.
    pub fn status(&self) -> u16 {
        match self {
            UpgradeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }
}

/// True if the comma-separated `list` holds `token`, ignoring ASCII case and spaces.
fn has_token(list: &[u8], token: &str) -> bool {
    list.split(|&b| b == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Check the headers of a client's opening handshake and return the
/// `Sec-WebSocket-Accept` value to answer with (§4.2.1, §4.2.2).
///
/// `header(name)` returns the value of the header field `name` (the names asked
/// for are `Upgrade`, `Connection`, `Sec-WebSocket-Version` and
/// `Sec-WebSocket-Key`; match them case-insensitively). For a field sent several
/// times, return the values joined with `,`. The request method (`GET`) and
/// version (HTTP/1.1) are the HTTP layer's to check.
pub fn validate_upgrade<'h>(
    header: impl Fn(&str) -> Option<&'h [u8]>,
) -> Result<String, UpgradeError> {
    if !header("Upgrade").is_some_and(|v| has_token(v, "websocket")) {
        return Err(UpgradeError::NotWebSocket);
    }
    if !header("Connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err(UpgradeError::NoConnectionUpgrade);
    }
    if header("Sec-WebSocket-Version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(UpgradeError::UnsupportedVersion);
    }
    let key = header("Sec-WebSocket-Key")
        .ok_or(UpgradeError::MissingKey)?
        .trim_ascii();
    let decoded = STANDARD.decode(key).map_err(|_| UpgradeError::InvalidKey)?;
    if decoded.len() != 16 {
        return Err(UpgradeError::InvalidKey);
    }
    // The key is valid base64, hence ASCII.
    let key = std::str::from_utf8(key).map_err(|_| UpgradeError::InvalidKey)?;
    Ok(accept_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn rfc_example(name: &str) -> Option<&'static [u8]> {
        let headers: [(&str, &[u8]); 6] = [
            ("host", b"server.example.com"),
            ("upgrade", b"websocket"),
            ("connection", b"Upgrade"),
            ("sec-websocket-key", KEY.as_bytes()),
            ("origin", b"http://example.com"),
            ("sec-websocket-version", b"13"),
        ];
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// The RFC example with one header replaced (`None` removes it).
    fn with<'h>(name: &'h str, value: Option<&'h [u8]>) -> impl Fn(&str) -> Option<&'h [u8]> {
        move |n: &str| {
            if n.eq_ignore_ascii_case(name) {
                value
            } else {
                rfc_example(n)
            }
        }
    }

    #[test]
    fn accept_key_matches_the_rfc_test_vector() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn upgrade_accepts_the_rfc_example() {
        assert_eq!(
            validate_upgrade(rfc_example).as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }

    #[test]
    fn upgrade_headers_are_case_insensitive_lists() {
        let h = with("Connection", Some(b"keep-alive, UPGRADE"));
        assert!(validate_upgrade(h).is_ok());
        let h = with("Upgrade", Some(b"WebSocket"));
        assert!(validate_upgrade(h).is_ok());
        let h = with("Sec-WebSocket-Key", Some(b"  dGhlIHNhbXBsZSBub25jZQ== "));
        assert_eq!(
            validate_upgrade(h).as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }

    #[test]
    fn upgrade_without_websocket_is_rejected() {
        assert_eq!(
            validate_upgrade(with("Upgrade", None)),
            Err(UpgradeError::NotWebSocket)
        );
        assert_eq!(
            validate_upgrade(with("Upgrade", Some(b"h2c"))),
            Err(UpgradeError::NotWebSocket)
        );
    }

    #[test]
    fn upgrade_without_connection_upgrade_token_is_rejected() {
        assert_eq!(
            validate_upgrade(with("Connection", None)),
            Err(UpgradeError::NoConnectionUpgrade)
        );
        assert_eq!(
            validate_upgrade(with("Connection", Some(b"keep-alive, upgraded"))),
            Err(UpgradeError::NoConnectionUpgrade)
        );
    }

    #[test]
    fn upgrade_with_a_version_other_than_13_is_rejected_with_426() {
        for version in [None, Some(&b"8"[..]), Some(b"13, 8")] {
            let err = validate_upgrade(with("Sec-WebSocket-Version", version)).unwrap_err();
            assert_eq!(
                (err.clone(), err.status()),
                (UpgradeError::UnsupportedVersion, 426)
            );
        }
    }

    #[test]
    fn upgrade_with_a_missing_or_bad_key_is_rejected_with_400() {
        let err = validate_upgrade(with("Sec-WebSocket-Key", None)).unwrap_err();
        assert_eq!((err.clone(), err.status()), (UpgradeError::MissingKey, 400));
        // Valid base64, but of 15 and 17 bytes; and not base64 at all.
        for key in [
            &b"AAAAAAAAAAAAAAAAAAAA"[..],
            b"AAAAAAAAAAAAAAAAAAAAAAA=",
            b"not base64 at all!!!!!==",
        ] {
            assert_eq!(
                validate_upgrade(with("Sec-WebSocket-Key", Some(key))),
                Err(UpgradeError::InvalidKey),
                "{key:?}"
            );
        }
    }
}
