//! The mount relay's byte formats (`spec/mount-relay.md`, MR-1..MR-6).
//!
//! - Stream datagrams (MR-1): `-=` (bytes 45 61, decimal in the seed), the
//!   IEEE CRC-32 of the data little-endian, `=-` (61 45), then at most
//!   [`MAX_DATA`] bytes of data: [`MAX_DATAGRAM`] bytes in all. Anything of
//!   [`HEADER_LEN`] bytes or less, or without the marks, is a *general* message
//!   (a handshake string, MR-2); a marked datagram whose CRC does not match is
//!   [`Datagram::BadCrc`].
//! - Handshake strings (MR-2): [`Hello`].
//! - Tracker requests (MR-3, MR-4): `GET /Pi HTTP/1.0` with `Mount`, `MyAddr`,
//!   and for a relay `Latency` and `Flag: relay`; or `Connected: A,B` alone.
//! - The tracker's `Address` list (MR-5): `IP:PORT:IP:PORT…`, IPv6 written as
//!   `[addr]:port` so the list parses back.
//!
//! Parsing is by hand: the formats are a few fixed bytes and colon-separated
//! addresses, and the HTTP head itself goes through [`crate::codec::http1`].

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use thiserror::Error;

use crate::codec::http1::{Request, RequestHead, Version};

/// The largest stream datagram (MR-1).
pub const MAX_DATAGRAM: usize = 512;
/// The marks and the CRC before the data.
pub const HEADER_LEN: usize = 8;
/// The most data one datagram carries.
pub const MAX_DATA: usize = MAX_DATAGRAM - HEADER_LEN;
/// The first mark, `-=`.
pub const HEAD_MARK: [u8; 2] = [45, 61];
/// The second mark, `=-`.
pub const TAIL_MARK: [u8; 2] = [61, 45];

/// Append one stream datagram carrying `data` (at most [`MAX_DATA`] bytes;
/// more is the caller's bug and is cut there, see [`chunks`]).
pub fn encode_data(data: &[u8], out: &mut Vec<u8>) {
    let data = data.get(..MAX_DATA).unwrap_or(data);
    out.extend_from_slice(&HEAD_MARK);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&TAIL_MARK);
    out.extend_from_slice(data);
}

/// A stream cut into datagram-sized pieces, in order.
pub fn chunks(stream: &[u8]) -> impl Iterator<Item = &[u8]> {
    stream.chunks(MAX_DATA)
}

/// What one received datagram is (MR-1, MR-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// Stream data whose CRC matched.
    Data(&'a [u8]),
    /// Marked as stream data, but the CRC does not match: drop it, count it.
    BadCrc {
        /// The CRC the datagram carries.
        carried: u32,
        /// The CRC of its data.
        computed: u32,
    },
    /// Anything else: a handshake string, or noise.
    General(&'a [u8]),
}

/// Tell stream data from general messages.
pub fn classify(datagram: &[u8]) -> Datagram<'_> {
    match datagram {
        [h0, h1, c0, c1, c2, c3, t0, t1, data @ ..]
            if !data.is_empty() && [*h0, *h1] == HEAD_MARK && [*t0, *t1] == TAIL_MARK =>
        {
            let carried = u32::from_le_bytes([*c0, *c1, *c2, *c3]);
            let computed = crc32fast::hash(data);
            if carried == computed {
                Datagram::Data(data)
            } else {
                Datagram::BadCrc { carried, computed }
            }
        }
        _ => Datagram::General(datagram),
    }
}

/// The four handshake strings (MR-2), sent as whole datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hello {
    /// The relay's greeting, repeated until answered.
    HelloListener,
    /// The listener's greeting, repeated until answered.
    HelloRelay,
    /// The relay's answer to `helloRelay`.
    NiceToMeetYouListener,
    /// The listener's answer to `helloListener`.
    NiceToMeetYouRelay,
}

impl Hello {
    /// The bytes on the wire.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Hello::HelloListener => b"helloListener",
            Hello::HelloRelay => b"helloRelay",
            Hello::NiceToMeetYouListener => b"niceToMeetYouListener",
            Hello::NiceToMeetYouRelay => b"niceToMeetYouRelay",
        }
    }

    /// The handshake string a general datagram holds, if any.
    pub fn parse(datagram: &[u8]) -> Option<Hello> {
        [
            Hello::HelloListener,
            Hello::HelloRelay,
            Hello::NiceToMeetYouListener,
            Hello::NiceToMeetYouRelay,
        ]
        .into_iter()
        .find(|h| h.as_bytes() == datagram)
    }
}

/// Why a tracker request or an address list is not acceptable (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// Not `GET /Pi`.
    #[error("not GET /Pi")]
    NotPi,
    /// A required header is missing.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// A header's value does not parse.
    #[error("bad {0} header")]
    Bad(&'static str),
    /// An address in a list does not parse.
    #[error("bad address {0:?}")]
    BadAddress(String),
}

/// The longest mount name accepted.
pub const MAX_MOUNT_LEN: usize = 255;

/// What a point tells the tracker (MR-3, MR-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackerRequest {
    /// A point (re)registers on a mount with its public address.
    Register {
        /// The mount's name.
        mount: String,
        /// The point's public (STUN-mapped) address.
        my_addr: SocketAddr,
        /// The relay's latency estimate in ms (relays only).
        latency: Option<u32>,
        /// `Flag: relay`.
        relay: bool,
    },
    /// Two points found each other: take them off the candidate lists.
    Connected {
        /// The sender's own public address.
        own: SocketAddr,
        /// Its peer's.
        peer: SocketAddr,
    },
}

impl TrackerRequest {
    /// Append the HTTP/1.0 request.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut request = Request::get("/Pi", Version::Http10);
        match self {
            TrackerRequest::Register {
                mount,
                my_addr,
                latency,
                relay,
            } => {
                request.headers.push(("Mount".into(), mount.clone()));
                request
                    .headers
                    .push(("MyAddr".into(), format_addr(*my_addr)));
                if let Some(latency) = latency {
                    request
                        .headers
                        .push(("Latency".into(), latency.to_string()));
                }
                if *relay {
                    request.headers.push(("Flag".into(), "relay".into()));
                }
            }
            TrackerRequest::Connected { own, peer } => {
                let value = format!("{},{}", format_addr(*own), format_addr(*peer));
                request.headers.push(("Connected".into(), value));
            }
        }
        request.encode(out);
    }

    /// Read a tracker request from a parsed head (MR-3, MR-4).
    pub fn from_head(head: &RequestHead) -> Result<TrackerRequest, WireError> {
        if head.method != "GET" || head.path() != "/Pi" {
            return Err(WireError::NotPi);
        }
        if let Some(value) = head.header_str("Connected") {
            let (own, peer) = value.split_once(',').ok_or(WireError::Bad("Connected"))?;
            let own = parse_addr(own.trim()).ok_or(WireError::Bad("Connected"))?;
            let peer = parse_addr(peer.trim()).ok_or(WireError::Bad("Connected"))?;
            return Ok(TrackerRequest::Connected { own, peer });
        }
        let mount = head
            .header_str("Mount")
            .ok_or(WireError::Missing("Mount"))?
            .trim();
        if mount.is_empty() || mount.len() > MAX_MOUNT_LEN {
            return Err(WireError::Bad("Mount"));
        }
        let my_addr = head
            .header_str("MyAddr")
            .ok_or(WireError::Missing("MyAddr"))?;
        let my_addr = parse_addr(my_addr.trim()).ok_or(WireError::Bad("MyAddr"))?;
        let latency = match head.header_str("Latency") {
            None => None,
            Some(v) => Some(v.trim().parse().map_err(|_| WireError::Bad("Latency"))?),
        };
        let relay = head
            .header_str("Flag")
            .is_some_and(|f| f.trim().eq_ignore_ascii_case("relay"));
        Ok(TrackerRequest::Register {
            mount: mount.to_owned(),
            my_addr,
            latency,
            relay,
        })
    }
}

/// One address as the mount relay writes it: `IP:PORT`, IPv6 as `[IP]:PORT`.
pub fn format_addr(addr: SocketAddr) -> String {
    addr.to_string()
}

/// One address, `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_addr(text: &str) -> Option<SocketAddr> {
    text.parse().ok()
}

/// The tracker's `Address` value: every candidate, `:`-separated (MR-5).
pub fn format_address_list(addrs: &[SocketAddr]) -> String {
    let mut out = String::new();
    for (i, addr) in addrs.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{}", format_addr(*addr));
    }
    out
}

/// Parse an `Address` value: `IP:PORT` entries joined by `:`, IPv6 entries
/// bracketed. An empty value is an empty list.
pub fn parse_address_list(text: &str) -> Result<Vec<SocketAddr>, WireError> {
    let mut addrs = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (ip, after_ip): (IpAddr, &str) = if let Some(v6) = rest.strip_prefix('[') {
            let (ip, after) = v6
                .split_once(']')
                .ok_or_else(|| WireError::BadAddress(rest.to_owned()))?;
            let ip = ip
                .parse()
                .map_err(|_| WireError::BadAddress(ip.to_owned()))?;
            (IpAddr::V6(ip), after)
        } else {
            let end = rest
                .find(':')
                .ok_or_else(|| WireError::BadAddress(rest.to_owned()))?;
            let (ip, after) = rest.split_at(end);
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| WireError::BadAddress(ip.to_owned()))?;
            (IpAddr::V4(ip), after)
        };
        let after_colon = after_ip
            .strip_prefix(':')
            .ok_or_else(|| WireError::BadAddress(rest.to_owned()))?;
        let end = after_colon.find(':').unwrap_or(after_colon.len());
        let (port, tail) = after_colon.split_at(end);
        let port: u16 = port
            .trim()
            .parse()
            .map_err(|_| WireError::BadAddress(port.to_owned()))?;
        addrs.push(SocketAddr::new(ip, port));
        rest = tail.strip_prefix(':').unwrap_or(tail);
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests;
