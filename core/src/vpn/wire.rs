//! The VPN's plaintext byte layouts (`spec/vpn.md`, VPN-1..VPN-15).
//!
//! Two families, both "first byte = kind, then fixed fields":
//!
//! - [`PeerMessage`]: what peers say to each other over UDP, *inside* the
//!   datagram AEAD of [`super::crypto`] (VPN-3..VPN-6): heartbeat/handshake,
//!   a forwarded IPv4 packet, a latency probe, a route announcement.
//! - [`ServerMessage`]: binary WebSocket messages between a client node and
//!   the server (VPN-7..VPN-14): AUTH, FORWARD, EXPTTUN, UDP4CONN, VMAC,
//!   DISCOVERY, ROUTE (system routes) and GENERAL (LAN endpoint).
//!
//! Rules shared by every message (VPN-1): multi-byte fields are in network
//! byte order; every kind has an exact length (or, for the variable ones, a
//! length fixed by its own header), and a message that is one byte short or
//! long is a [`WireError`], never truncated or padded. Forwarded packets are
//! checked IPv4 ([`Ipv4Packet`], VPN-2). Parsing is plain slicing on fixed
//! layouts; nothing here allocates except [`SysRouteTable`].
//!
//! What a receiver does with an error is VPN-15: a peer datagram is dropped;
//! on the WebSocket an unknown kind (or GENERAL subtype) is ignored and any
//! other error is a protocol error ([`WireError::is_unknown`] tells them apart).

use std::net::Ipv4Addr;

use thiserror::Error;

/// The peer message kinds (first byte, VPN-3..VPN-6). Kind 3 is unused, as
/// in the original.
pub mod peer_kind {
    /// Heartbeat / handshake (VPN-3).
    pub const HEARTBEAT: u8 = 0;
    /// A raw IPv4 packet (VPN-4).
    pub const FORWARD: u8 = 1;
    /// A latency probe (VPN-5).
    pub const DELAY: u8 = 2;
    /// A route announcement (VPN-6).
    pub const ROUTE: u8 = 4;
}

/// The WebSocket message kinds (first byte, VPN-7..VPN-14).
pub mod server_kind {
    /// Authenticate a client and claim its virtual address (VPN-7).
    pub const AUTH: u8 = 0;
    /// A raw IPv4 packet relayed by the server (VPN-8).
    pub const FORWARD: u8 = 1;
    /// Ask the server for a virtual address (VPN-9).
    pub const EXPTTUN: u8 = 2;
    /// A peer's public UDP endpoint (VPN-10).
    pub const UDP4CONN: u8 = 3;
    /// The client's virtual MAC, which identifies it to the server (VPN-11).
    pub const VMAC: u8 = 4;
    /// `src` tells `dst` it wants a direct connection (VPN-12).
    pub const DISCOVERY: u8 = 5;
    /// The system routes the server pushes (VPN-13).
    pub const ROUTE: u8 = 6;
    /// A message with a subtype (VPN-14).
    pub const GENERAL: u8 = 255;
}

/// GENERAL subtypes (VPN-14).
pub mod general_subtype {
    /// A peer's LAN UDP endpoint (the original's `LOCALUDP4CONN`).
    pub const LOCAL_UDP4_CONN: u8 = 0;
}

/// Why bytes are not a VPN message (VPN-1, VPN-2, VPN-15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// No bytes at all: not even a kind.
    #[error("empty message")]
    Empty,
    /// A kind byte this version does not know (VPN-1).
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// A GENERAL subtype this version does not know (VPN-14).
    #[error("unknown GENERAL subtype {0}")]
    UnknownSubtype(u8),
    /// The message is not exactly as long as its kind requires (VPN-1).
    #[error("{message} must be {expected} bytes, got {got}")]
    Length {
        /// Which message.
        message: &'static str,
        /// The length its kind (and, if variable, its header) requires.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// A heartbeat's ACK byte is neither 0 nor 1 (VPN-3).
    #[error("heartbeat ACK must be 0 or 1, got {0}")]
    BadAck(u8),
    /// A forwarded packet shorter than an IPv4 header (VPN-2).
    #[error("IPv4 packet of {got} bytes is shorter than a 20-byte header")]
    Ipv4TooShort {
        /// The bytes carried.
        got: usize,
    },
    /// A forwarded packet whose version nibble is not 4 (VPN-2).
    #[error("IP version {version}, not 4")]
    Ipv4Version {
        /// The version nibble.
        version: u8,
    },
    /// IHL below 5, or a header longer than the packet's total length (VPN-2).
    #[error("IPv4 IHL {ihl} does not fit total length {total}")]
    Ipv4HeaderLength {
        /// The IHL nibble (32-bit words).
        ihl: u8,
        /// The total length field.
        total: u16,
    },
    /// The total length field differs from the bytes carried (VPN-2).
    #[error("IPv4 total length {total} but {got} bytes carried")]
    Ipv4TotalLength {
        /// The total length field.
        total: u16,
        /// The bytes carried.
        got: usize,
    },
    /// EXPTTUN's `cidr` is not NUL-terminated printable ASCII (VPN-9).
    #[error("EXPTTUN cidr is not NUL-terminated printable ASCII")]
    BadCidr,
    /// A system route's mask is not contiguous (VPN-13).
    #[error("route mask {0} is not contiguous")]
    BadMask(Ipv4Addr),
    /// More system routes than a ROUTE message carries (VPN-13).
    #[error("{0} system routes, at most 255")]
    TooManyRoutes(usize),
}

impl WireError {
    /// An unknown kind or GENERAL subtype: a newer sender, not a broken one
    /// (VPN-15 ignores these instead of closing).
    pub fn is_unknown(&self) -> bool {
        matches!(
            self,
            WireError::UnknownKind(_) | WireError::UnknownSubtype(_)
        )
    }
}

/// Fixed-size reads from a message whose length was checked first.
struct Reader<'a> {
    rest: &'a [u8],
    message: &'static str,
    expected: usize,
    got: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`, which must be exactly `expected` long.
    fn exact(bytes: &'a [u8], expected: usize, message: &'static str) -> Result<Self, WireError> {
        let reader = Reader {
            rest: bytes,
            message,
            expected,
            got: bytes.len(),
        };
        if bytes.len() == expected {
            Ok(reader)
        } else {
            Err(reader.length_error())
        }
    }

    fn length_error(&self) -> WireError {
        WireError::Length {
            message: self.message,
            expected: self.expected,
            got: self.got,
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.length_error())?;
        self.rest = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }

    fn i64(&mut self) -> Result<i64, WireError> {
        self.array().map(i64::from_be_bytes)
    }

    fn ip(&mut self) -> Result<Ipv4Addr, WireError> {
        self.array::<4>().map(Ipv4Addr::from)
    }
}

/// The smallest IPv4 header.
pub const IPV4_MIN_HEADER: usize = 20;

/// A checked view of one whole IPv4 packet (VPN-2): at least 20 bytes,
/// version 4, IHL ≥ 5, IHL × 4 ≤ total length, and total length equal to the
/// bytes carried. Trailing bytes are refused, not trimmed: a TUN read is
/// exactly one packet, so extra bytes mean a broken sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<'a>(&'a [u8]);

impl<'a> Ipv4Packet<'a> {
    /// Check `bytes` as one IPv4 packet (VPN-2).
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, WireError> {
        let [version_ihl, _tos, t0, t1, ..] = *bytes else {
            return Err(WireError::Ipv4TooShort { got: bytes.len() });
        };
        if bytes.len() < IPV4_MIN_HEADER {
            return Err(WireError::Ipv4TooShort { got: bytes.len() });
        }
        let version = version_ihl >> 4;
        if version != 4 {
            return Err(WireError::Ipv4Version { version });
        }
        let ihl = version_ihl & 0x0f;
        let total = u16::from_be_bytes([t0, t1]);
        if ihl < 5 || usize::from(ihl) * 4 > usize::from(total) {
            return Err(WireError::Ipv4HeaderLength { ihl, total });
        }
        if usize::from(total) != bytes.len() {
            return Err(WireError::Ipv4TotalLength {
                total,
                got: bytes.len(),
            });
        }
        Ok(Ipv4Packet(bytes))
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The packet's length in bytes (its total length field).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a checked packet holds at least a header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The source address (bytes 12..16).
    pub fn source(&self) -> Ipv4Addr {
        self.addr_at(12)
    }

    /// The destination address (bytes 16..20).
    pub fn destination(&self) -> Ipv4Addr {
        self.addr_at(16)
    }

    fn addr_at(&self, at: usize) -> Ipv4Addr {
        self.0
            .get(at..)
            .and_then(<[u8]>::first_chunk::<4>)
            .map_or(Ipv4Addr::UNSPECIFIED, |a| Ipv4Addr::from(*a))
    }
}

/// A peer message, the plaintext of one UDP datagram (VPN-3..VPN-6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage<'a> {
    /// Heartbeat and handshake, one format (VPN-3): 12 bytes.
    Heartbeat {
        /// The sender's virtual (TUN) address.
        tun: Ipv4Addr,
        /// The sender's public address for this peer connection.
        ip: Ipv4Addr,
        /// The sender's public UDP port.
        port: u16,
        /// Whether the sender has heard the receiver's heartbeat.
        ack: bool,
    },
    /// A raw IPv4 packet (VPN-4): 1 + n bytes.
    Forward(Ipv4Packet<'a>),
    /// A latency probe, echoed back unprocessed (VPN-5): 17 bytes.
    Delay {
        /// The virtual address of the prober.
        src: Ipv4Addr,
        /// The virtual address of the probed peer.
        dst: Ipv4Addr,
        /// The prober's clock in ms since it started; opaque to the echoer.
        timestamp: u64,
    },
    /// A route announcement (VPN-6): 17 bytes; the delay is 8 bytes as in
    /// the seed (the original C++ sends 4).
    Route {
        /// The virtual destination.
        dst: Ipv4Addr,
        /// The next hop the sender uses for `dst`.
        next: Ipv4Addr,
        /// The sender's delay to `dst` in ms; [`UNREACHABLE`] withdraws it.
        delay: u64,
    },
}

/// The delay that withdraws a route (VPN-6, VPN-R5).
pub const UNREACHABLE: u64 = u64::MAX;

/// Heartbeat length, kind included (VPN-3).
pub const HEARTBEAT_LEN: usize = 12;
/// Delay probe length, kind included (VPN-5).
pub const DELAY_LEN: usize = 17;
/// Route announcement length, kind included (VPN-6).
pub const ROUTE_LEN: usize = 17;

impl<'a> PeerMessage<'a> {
    /// The encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            PeerMessage::Heartbeat { .. } => HEARTBEAT_LEN,
            PeerMessage::Forward(packet) => 1 + packet.len(),
            PeerMessage::Delay { .. } => DELAY_LEN,
            PeerMessage::Route { .. } => ROUTE_LEN,
        }
    }

    /// Append the message (VPN-3..VPN-6).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match self {
            PeerMessage::Heartbeat { tun, ip, port, ack } => {
                out.push(peer_kind::HEARTBEAT);
                out.extend_from_slice(&tun.octets());
                out.extend_from_slice(&ip.octets());
                out.extend_from_slice(&port.to_be_bytes());
                out.push(u8::from(*ack));
            }
            PeerMessage::Forward(packet) => {
                out.push(peer_kind::FORWARD);
                out.extend_from_slice(packet.as_bytes());
            }
            PeerMessage::Delay {
                src,
                dst,
                timestamp,
            } => {
                out.push(peer_kind::DELAY);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(&timestamp.to_be_bytes());
            }
            PeerMessage::Route { dst, next, delay } => {
                out.push(peer_kind::ROUTE);
                out.extend_from_slice(&dst.octets());
                out.extend_from_slice(&next.octets());
                out.extend_from_slice(&delay.to_be_bytes());
            }
        }
    }

    /// Parse one whole decrypted datagram (VPN-1..VPN-6).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let (&kind, body) = bytes.split_first().ok_or(WireError::Empty)?;
        match kind {
            peer_kind::HEARTBEAT => {
                let mut r = Reader::exact(bytes, HEARTBEAT_LEN, "heartbeat")?;
                r.u8()?;
                let tun = r.ip()?;
                let ip = r.ip()?;
                let port = r.u16()?;
                let ack = match r.u8()? {
                    0 => false,
                    1 => true,
                    other => return Err(WireError::BadAck(other)),
                };
                Ok(PeerMessage::Heartbeat { tun, ip, port, ack })
            }
            peer_kind::FORWARD => Ipv4Packet::new_checked(body).map(PeerMessage::Forward),
            peer_kind::DELAY => {
                let mut r = Reader::exact(bytes, DELAY_LEN, "delay probe")?;
                r.u8()?;
                Ok(PeerMessage::Delay {
                    src: r.ip()?,
                    dst: r.ip()?,
                    timestamp: r.u64()?,
                })
            }
            peer_kind::ROUTE => {
                let mut r = Reader::exact(bytes, ROUTE_LEN, "route")?;
                r.u8()?;
                Ok(PeerMessage::Route {
                    dst: r.ip()?,
                    next: r.ip()?,
                    delay: r.u64()?,
                })
            }
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// The SHA-256 proof in AUTH, EXPTTUN and VMAC (computed by [`super::crypto`]).
pub type AuthHash = [u8; 32];

/// EXPTTUN's `cidr[32]`: the address the client asks for, as text such as
/// `10.0.0.7/24`, NUL-padded (VPN-9). At most 31 printable ASCII bytes, so
/// the field always holds the NUL the original's `strcpy` writes; empty means
/// "any address".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrText {
    bytes: [u8; CidrText::FIELD_LEN],
    len: u8,
}

impl CidrText {
    /// The field's width on the wire.
    pub const FIELD_LEN: usize = 32;
    /// The longest text that fits with its NUL.
    pub const MAX_LEN: usize = Self::FIELD_LEN - 1;

    /// Check `text`: at most [`Self::MAX_LEN`] bytes of printable ASCII.
    pub fn new(text: &str) -> Result<Self, WireError> {
        Self::from_text_bytes(text.as_bytes())
    }

    fn from_text_bytes(text: &[u8]) -> Result<Self, WireError> {
        if text.len() > Self::MAX_LEN || !text.iter().all(u8::is_ascii_graphic) {
            return Err(WireError::BadCidr);
        }
        let mut bytes = [0; Self::FIELD_LEN];
        bytes
            .get_mut(..text.len())
            .ok_or(WireError::BadCidr)?
            .copy_from_slice(text);
        let len = u8::try_from(text.len()).map_err(|_| WireError::BadCidr)?;
        Ok(CidrText { bytes, len })
    }

    /// Read the field: the text ends at the first NUL; whatever follows it
    /// is ignored (the original does not clear it).
    fn from_field(field: &[u8; Self::FIELD_LEN]) -> Result<Self, WireError> {
        let end = field
            .iter()
            .position(|&b| b == 0)
            .ok_or(WireError::BadCidr)?;
        Self::from_text_bytes(field.get(..end).ok_or(WireError::BadCidr)?)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        let text = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        std::str::from_utf8(text).unwrap_or_default()
    }

    /// The NUL-padded field.
    pub fn field(&self) -> &[u8; Self::FIELD_LEN] {
        &self.bytes
    }
}

/// One system route the server pushes (VPN-13): packets for `dst/mask` go
/// through the virtual address `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SysRoute {
    /// The destination network.
    pub dst: Ipv4Addr,
    /// Its mask; contiguous (checked on parse).
    pub mask: Ipv4Addr,
    /// The virtual address of the node that reaches it.
    pub next: Ipv4Addr,
}

impl SysRoute {
    /// The mask as a prefix length, if it is contiguous.
    pub fn prefix_len(&self) -> Option<u8> {
        let mask = u32::from(self.mask);
        if mask.leading_ones() + mask.trailing_zeros() == 32 {
            u8::try_from(mask.leading_ones()).ok()
        } else {
            None
        }
    }
}

/// The system routes of one ROUTE message: at most [`SysRouteTable::MAX`]
/// entries, each with a contiguous mask (VPN-13).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysRouteTable(Vec<SysRoute>);

impl SysRouteTable {
    /// The most entries a ROUTE message carries (its count is one byte).
    pub const MAX: usize = 255;

    /// Check a table: at most [`Self::MAX`] routes, contiguous masks.
    pub fn new(routes: Vec<SysRoute>) -> Result<Self, WireError> {
        if routes.len() > Self::MAX {
            return Err(WireError::TooManyRoutes(routes.len()));
        }
        if let Some(bad) = routes.iter().find(|r| r.prefix_len().is_none()) {
            return Err(WireError::BadMask(bad.mask));
        }
        Ok(SysRouteTable(routes))
    }

    /// The routes, in the order sent.
    pub fn routes(&self) -> &[SysRoute] {
        &self.0
    }
}

/// AUTH length, kind included (VPN-7).
pub const AUTH_LEN: usize = 45;
/// EXPTTUN length, kind included (VPN-9).
pub const EXPTTUN_LEN: usize = 73;
/// UDP4CONN length, kind included (VPN-10).
pub const UDP4CONN_LEN: usize = 15;
/// VMAC length, kind included (VPN-11).
pub const VMAC_LEN: usize = 57;
/// DISCOVERY length, kind included (VPN-12).
pub const DISCOVERY_LEN: usize = 9;
/// ROUTE header length (kind, count, reserved); each entry adds 12 (VPN-13).
pub const SYS_ROUTE_HEADER_LEN: usize = 4;
/// One ROUTE entry: dst, mask, next (VPN-13).
pub const SYS_ROUTE_ENTRY_LEN: usize = 12;
/// GENERAL header length: kind, subtype, extra, src, dst (VPN-14).
pub const GENERAL_HEADER_LEN: usize = 12;
/// GENERAL subtype 0 length: the header, then ip and port (VPN-14).
pub const LOCAL_UDP4_CONN_LEN: usize = 18;

/// One binary WebSocket message between a client node and the server
/// (VPN-7..VPN-14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// AUTH 0 (VPN-7): the client's virtual address, proven with the password.
    Auth {
        /// The virtual address the client claims.
        ip: Ipv4Addr,
        /// Unix time in seconds, so a replay is detectable.
        timestamp: i64,
        /// SHA-256 over password, ip and timestamp.
        hash: AuthHash,
    },
    /// FORWARD 1 (VPN-8): an IPv4 packet relayed through the server.
    Forward(Ipv4Packet<'a>),
    /// EXPTTUN 2 (VPN-9): ask the server for an address.
    ExpectedTun {
        /// Unix time in seconds.
        timestamp: i64,
        /// The address wanted, as CIDR text.
        cidr: CidrText,
        /// SHA-256 over password and timestamp.
        hash: AuthHash,
    },
    /// UDP4CONN 3 (VPN-10): `src`'s public UDP endpoint, for `dst`.
    Udp4Conn {
        /// The virtual address whose endpoint this is.
        src: Ipv4Addr,
        /// The virtual address it is for.
        dst: Ipv4Addr,
        /// The public IPv4 address.
        ip: Ipv4Addr,
        /// The public UDP port.
        port: u16,
    },
    /// VMAC 4 (VPN-11): the client's virtual MAC.
    VirtualMac {
        /// Sixteen opaque bytes identifying the client across restarts.
        vmac: [u8; 16],
        /// Unix time in seconds.
        timestamp: i64,
        /// SHA-256 over password, vmac and timestamp.
        hash: AuthHash,
    },
    /// DISCOVERY 5 (VPN-12): `src` tells `dst` it wants a direct connection.
    Discovery {
        /// The asking node.
        src: Ipv4Addr,
        /// The asked node.
        dst: Ipv4Addr,
    },
    /// ROUTE 6 (VPN-13): the server's system routes.
    SysRoutes(SysRouteTable),
    /// GENERAL 255 subtype 0 (VPN-14): `src`'s LAN UDP endpoint, for `dst`.
    LocalUdp4Conn {
        /// The virtual address whose endpoint this is.
        src: Ipv4Addr,
        /// The virtual address it is for.
        dst: Ipv4Addr,
        /// The LAN IPv4 address.
        ip: Ipv4Addr,
        /// The LAN UDP port.
        port: u16,
    },
}

impl<'a> ServerMessage<'a> {
    /// The encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            ServerMessage::Auth { .. } => AUTH_LEN,
            ServerMessage::Forward(packet) => 1 + packet.len(),
            ServerMessage::ExpectedTun { .. } => EXPTTUN_LEN,
            ServerMessage::Udp4Conn { .. } => UDP4CONN_LEN,
            ServerMessage::VirtualMac { .. } => VMAC_LEN,
            ServerMessage::Discovery { .. } => DISCOVERY_LEN,
            ServerMessage::SysRoutes(table) => {
                SYS_ROUTE_HEADER_LEN + SYS_ROUTE_ENTRY_LEN * table.routes().len()
            }
            ServerMessage::LocalUdp4Conn { .. } => LOCAL_UDP4_CONN_LEN,
        }
    }

    /// Append the message (VPN-7..VPN-14).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        match self {
            ServerMessage::Auth {
                ip,
                timestamp,
                hash,
            } => {
                out.push(server_kind::AUTH);
                out.extend_from_slice(&ip.octets());
                out.extend_from_slice(&timestamp.to_be_bytes());
                out.extend_from_slice(hash);
            }
            ServerMessage::Forward(packet) => {
                out.push(server_kind::FORWARD);
                out.extend_from_slice(packet.as_bytes());
            }
            ServerMessage::ExpectedTun {
                timestamp,
                cidr,
                hash,
            } => {
                out.push(server_kind::EXPTTUN);
                out.extend_from_slice(&timestamp.to_be_bytes());
                out.extend_from_slice(cidr.field());
                out.extend_from_slice(hash);
            }
            ServerMessage::Udp4Conn { src, dst, ip, port } => {
                out.push(server_kind::UDP4CONN);
                for addr in [src, dst, ip] {
                    out.extend_from_slice(&addr.octets());
                }
                out.extend_from_slice(&port.to_be_bytes());
            }
            ServerMessage::VirtualMac {
                vmac,
                timestamp,
                hash,
            } => {
                out.push(server_kind::VMAC);
                out.extend_from_slice(vmac);
                out.extend_from_slice(&timestamp.to_be_bytes());
                out.extend_from_slice(hash);
            }
            ServerMessage::Discovery { src, dst } => {
                out.push(server_kind::DISCOVERY);
                out.extend_from_slice(&src.octets());
                out.extend_from_slice(&dst.octets());
            }
            ServerMessage::SysRoutes(table) => {
                out.push(server_kind::ROUTE);
                // SysRouteTable holds at most 255 entries.
                out.push(u8::try_from(table.routes().len()).unwrap_or(u8::MAX));
                out.extend_from_slice(&[0, 0]);
                for route in table.routes() {
                    for addr in [route.dst, route.mask, route.next] {
                        out.extend_from_slice(&addr.octets());
                    }
                }
            }
            ServerMessage::LocalUdp4Conn { src, dst, ip, port } => {
                out.push(server_kind::GENERAL);
                out.push(general_subtype::LOCAL_UDP4_CONN);
                out.extend_from_slice(&[0, 0]);
                for addr in [src, dst, ip] {
                    out.extend_from_slice(&addr.octets());
                }
                out.extend_from_slice(&port.to_be_bytes());
            }
        }
    }

    /// Parse one whole binary WebSocket message (VPN-1, VPN-2, VPN-7..VPN-14).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let (&kind, body) = bytes.split_first().ok_or(WireError::Empty)?;
        match kind {
            server_kind::AUTH => {
                let mut r = Reader::exact(bytes, AUTH_LEN, "AUTH")?;
                r.u8()?;
                Ok(ServerMessage::Auth {
                    ip: r.ip()?,
                    timestamp: r.i64()?,
                    hash: r.array()?,
                })
            }
            server_kind::FORWARD => Ipv4Packet::new_checked(body).map(ServerMessage::Forward),
            server_kind::EXPTTUN => {
                let mut r = Reader::exact(bytes, EXPTTUN_LEN, "EXPTTUN")?;
                r.u8()?;
                let timestamp = r.i64()?;
                let cidr = CidrText::from_field(&r.array()?)?;
                Ok(ServerMessage::ExpectedTun {
                    timestamp,
                    cidr,
                    hash: r.array()?,
                })
            }
            server_kind::UDP4CONN => {
                let mut r = Reader::exact(bytes, UDP4CONN_LEN, "UDP4CONN")?;
                r.u8()?;
                Ok(ServerMessage::Udp4Conn {
                    src: r.ip()?,
                    dst: r.ip()?,
                    ip: r.ip()?,
                    port: r.u16()?,
                })
            }
            server_kind::VMAC => {
                let mut r = Reader::exact(bytes, VMAC_LEN, "VMAC")?;
                r.u8()?;
                Ok(ServerMessage::VirtualMac {
                    vmac: r.array()?,
                    timestamp: r.i64()?,
                    hash: r.array()?,
                })
            }
            server_kind::DISCOVERY => {
                let mut r = Reader::exact(bytes, DISCOVERY_LEN, "DISCOVERY")?;
                r.u8()?;
                Ok(ServerMessage::Discovery {
                    src: r.ip()?,
                    dst: r.ip()?,
                })
            }
            server_kind::ROUTE => parse_sys_routes(bytes),
            server_kind::GENERAL => {
                let Some(&subtype) = body.first() else {
                    return Err(WireError::Length {
                        message: "GENERAL",
                        expected: GENERAL_HEADER_LEN,
                        got: bytes.len(),
                    });
                };
                if subtype != general_subtype::LOCAL_UDP4_CONN {
                    return Err(WireError::UnknownSubtype(subtype));
                }
                let mut r = Reader::exact(bytes, LOCAL_UDP4_CONN_LEN, "GENERAL LOCALUDP4CONN")?;
                r.u8()?;
                r.u8()?;
                // `extra` is sent as 0 and ignored (VPN-14).
                r.u16()?;
                Ok(ServerMessage::LocalUdp4Conn {
                    src: r.ip()?,
                    dst: r.ip()?,
                    ip: r.ip()?,
                    port: r.u16()?,
                })
            }
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

/// ROUTE 6: kind, count (1), reserved (2, ignored), then `count` entries.
fn parse_sys_routes(bytes: &[u8]) -> Result<ServerMessage<'_>, WireError> {
    let count = bytes.get(1).copied().map_or(0, usize::from);
    let expected = SYS_ROUTE_HEADER_LEN + SYS_ROUTE_ENTRY_LEN * count;
    let mut r = Reader::exact(bytes, expected, "ROUTE")?;
    r.u8()?;
    r.u8()?;
    r.u16()?;
    let mut routes = Vec::with_capacity(count);
    for _ in 0..count {
        let route = SysRoute {
            dst: r.ip()?,
            mask: r.ip()?,
            next: r.ip()?,
        };
        if route.prefix_len().is_none() {
            return Err(WireError::BadMask(route.mask));
        }
        routes.push(route);
    }
    SysRouteTable::new(routes).map(ServerMessage::SysRoutes)
}

#[cfg(test)]
mod tests;
