//! The node's WebSocket connection to the server, client side (RFC 6455):
//! the upgrade request, the 101 check, then frames in and masked frames out.
//!
//! Pure bookkeeping: the node sends what [`Link`] returns and feeds it what
//! arrives. Signalling (AUTH, EXPTTUN, …) is the node's business.

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::codec::Parsed;
use crate::codec::http1::{self, HeadLimits, Request, Version};
use crate::codec::websocket::{
    Message, MessageReader, Role, accept_key, encode_close, encode_message,
};
use crate::io::ConnId;

/// Where the link is.
#[derive(Debug)]
enum Phase {
    /// TCP connect in flight.
    Connecting,
    /// Upgrade request sent; collecting the response head.
    Upgrading {
        expected_accept: String,
        head: Vec<u8>,
    },
    /// WebSocket open.
    Open(MessageReader),
}

/// What the received bytes amounted to.
#[derive(Debug, Default)]
pub(super) struct Arrived {
    /// The upgrade completed with these bytes.
    pub opened: bool,
    /// Messages, in order.
    pub messages: Vec<Message>,
    /// The link is broken: why. Messages before the break are still in `messages`.
    pub error: Option<String>,
}

/// One WebSocket connection to the server.
#[derive(Debug)]
pub(super) struct Link {
    pub conn: ConnId,
    phase: Phase,
    /// Our end of the TCP connection (its IP is our LAN address).
    pub local: Option<SocketAddr>,
    /// Bytes sent and not yet reported flushed.
    pub unflushed: usize,
    max_message: usize,
}

impl Link {
    pub fn new(conn: ConnId, max_message: usize) -> Link {
        Link {
            conn,
            phase: Phase::Connecting,
            local: None,
            unflushed: 0,
            max_message,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// TCP is up: the upgrade request to send, with the 16-byte `nonce` as key.
    pub fn connected(
        &mut self,
        local: SocketAddr,
        host: &str,
        path: &str,
        nonce: [u8; 16],
    ) -> Vec<u8> {
        self.local = Some(local);
        let key = STANDARD.encode(nonce);
        let mut request = Request::get(path, Version::Http11);
        for (name, value) in [
            ("Host", host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key.as_str()),
            ("Sec-WebSocket-Version", "13"),
            ("User-Agent", "ferry-vpn"),
        ] {
            request.headers.push((name.to_owned(), value.to_owned()));
        }
        self.phase = Phase::Upgrading {
            expected_accept: accept_key(&key),
            head: Vec::new(),
        };
        let mut out = Vec::new();
        request.encode(&mut out);
        out
    }

    /// Bytes from the server.
    pub fn received(&mut self, data: &[u8]) -> Arrived {
        let mut arrived = Arrived::default();
        let mut leftover = None;
        if let Phase::Upgrading {
            expected_accept,
            head,
        } = &mut self.phase
        {
            head.extend_from_slice(data);
            match http1::parse_response_head(head, &HeadLimits::default()) {
                Ok(Parsed::Incomplete) => return arrived,
                Err(e) => {
                    arrived.error = Some(format!("bad upgrade response from the server: {e}"));
                    return arrived;
                }
                Ok(Parsed::Done { value, consumed }) => {
                    if value.status != 101 {
                        arrived.error = Some(format!(
                            "the server refused the WebSocket upgrade: {} {}",
                            value.status, value.reason
                        ));
                        return arrived;
                    }
                    if value.header_str("Sec-WebSocket-Accept") != Some(expected_accept.as_str()) {
                        arrived.error =
                            Some("the server's Sec-WebSocket-Accept does not match our key".into());
                        return arrived;
                    }
                    // Frames that came with the head.
                    leftover = Some(head[consumed..].to_vec());
                    arrived.opened = true;
                    self.phase = Phase::Open(MessageReader::new(Role::Client, self.max_message));
                }
            }
        }
        let rest = leftover.as_deref().unwrap_or(data);
        if let Phase::Open(reader) = &mut self.phase {
            for message in reader.messages(rest) {
                match message {
                    Ok(message) => arrived.messages.push(message),
                    Err(e) => {
                        arrived.error = Some(format!("bad WebSocket data from the server: {e}"));
                        break;
                    }
                }
            }
        }
        arrived
    }

    /// One message, masked with `mask` (clients always mask, RFC 6455 §5.3).
    pub fn encode(message: &Message, mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_message(message, Some(mask), &mut out);
        out
    }

    /// A close frame.
    pub fn encode_close(code: u16, reason: &str, mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_close(code, reason, Some(mask), &mut out);
        out
    }
}
