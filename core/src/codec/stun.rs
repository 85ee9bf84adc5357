//! STUN messages (RFC 8489, a subset), sans-IO: one whole UDP datagram in, an
//! owned [`Message`] out, and back. The requirements are `spec/stun.md` (ST-1…).
//!
//! Every message is a 20-byte header followed by TLV attributes, all integers
//! big-endian (network order):
//!
//! ```text
//! |0 0| message type: 14 bits | length: u16 (attribute bytes, a multiple of 4) |
//! | magic cookie: 0x2112A442                                                   |
//! | transaction id: 96 bits                                                    |
//! | type: u16 | length: u16 | value, padded with 0-3 bytes to a multiple of 4  | ...
//! ```
//!
//! The message type interleaves a 12-bit [`Method`] with the two bits of a
//! [`Class`]: `M11..M7 C1 M6..M4 C0 M3..M0`.
//!
//! - [`parse`] takes one whole datagram (STUN over UDP needs no streaming, so
//!   there is no [`Parsed`](super::Parsed) here) and checks the header, the
//!   length, every attribute's bounds and padding, and FINGERPRINT (last, and
//!   matching). [`is_stun`] is the cheap check that tells STUN datagrams apart
//!   from other traffic on a shared socket.
//! - [`encode`] writes a [`Message`] with zero padding; [`encode_with_fingerprint`]
//!   also appends a FINGERPRINT. A [`Attribute::Fingerprint`] is always written
//!   with a freshly computed value, so the encoder never emits a bad one.
//! - [`Message::binding_request`], [`Message::binding_success`] and
//!   [`Message::binding_error`] build the three messages ferry sends;
//!   [`Message::mapped_address`] reads the answer.
//!
//! Values are owned ([`Message`] holds `String`s and `Vec`s, not borrows of the
//! datagram): STUN messages are small and rare, and an owned message can be kept
//! across `handle_*` calls without tying it to a receive buffer.
//!
//! Decoded attributes: MAPPED-ADDRESS, XOR-MAPPED-ADDRESS, SOFTWARE, FINGERPRINT,
//! ERROR-CODE, CHANGE-REQUEST (RFC 5780) and UNKNOWN-ATTRIBUTES. Every other
//! attribute, MESSAGE-INTEGRITY (0x0008) included, is kept as
//! [`Attribute::Unknown`] with its raw value: ferry holds no credentials and does
//! not verify it. Attributes are kept in wire order, duplicates included.
//!
//! Bad bytes from the network are typed errors ([`StunError`]), never panics; so
//! are messages [`encode`] cannot represent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// The size of the message header, in bytes.
pub const HEADER_LEN: usize = 20;

/// The fixed value at bytes 4..8 of every RFC 5389/8489 message.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// FINGERPRINT is the CRC-32 of the message before it, XORed with this ("STUN").
pub const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// The longest SOFTWARE value and ERROR-CODE reason phrase, in UTF-8 bytes
/// (RFC 8489: fewer than 128 characters, at most 763 bytes).
pub const MAX_TEXT_LEN: usize = 763;

/// The largest method: methods are 12 bits.
pub const MAX_METHOD: u16 = 0x0FFF;

/// Attribute type numbers (IANA "STUN Attributes").
pub mod kind {
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// CHANGE-REQUEST (RFC 5780 §7.2).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// USERNAME (RFC 8489 §14.3); not decoded by ferry.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5); kept raw, never verified by ferry.
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 8489 §14.8).
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6); kept raw, never verified by ferry.
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// SOFTWARE (RFC 8489 §14.14).
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT (RFC 8489 §14.7).
    pub const FINGERPRINT: u16 = 0x8028;

    /// True for the kinds [`Attribute`](super::Attribute) decodes into a named
    /// variant; [`Attribute::Unknown`](super::Attribute::Unknown) never holds one.
    pub fn is_decoded(kind: u16) -> bool {
        matches!(
            kind,
            MAPPED_ADDRESS
                | CHANGE_REQUEST
                | ERROR_CODE
                | UNKNOWN_ATTRIBUTES
                | XOR_MAPPED_ADDRESS
                | SOFTWARE
                | FINGERPRINT
        )
    }

    /// True for a comprehension-required kind (0x0000..=0x7FFF): an agent that
    /// does not understand it must not process the message as if it were absent.
    pub fn is_comprehension_required(kind: u16) -> bool {
        kind < 0x8000
    }
}

/// The two class bits of the message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// 0b00: asks for a response.
    Request,
    /// 0b01: no response expected.
    Indication,
    /// 0b10: a successful answer to a request.
    SuccessResponse,
    /// 0b11: a failed answer to a request; carries ERROR-CODE.
    ErrorResponse,
}

impl Class {
    /// The class of its two bits (`C1 C0`); only the low two bits of `bits` count.
    pub fn from_bits(bits: u8) -> Class {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::SuccessResponse,
            _ => Class::ErrorResponse,
        }
    }

    /// The two bits `C1 C0`.
    pub fn bits(self) -> u8 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::SuccessResponse => 0b10,
            Class::ErrorResponse => 0b11,
        }
    }
}

/// The 12-bit method of the message type. Binding ([`Method::BINDING`]) is the
/// only one ferry uses; every other method is kept as its raw number, so there is
/// exactly one value per method (match on `Method::BINDING` like an enum variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Method(pub u16);

impl Method {
    /// 0x001: Binding, the method that reports the sender's mapped address.
    pub const BINDING: Method = Method(0x001);

    /// The raw method number (at most [`MAX_METHOD`] for one that can be encoded).
    pub fn number(self) -> u16 {
        self.0
    }
}

/// The 14-bit message type of a class and a method (the method's low 12 bits).
pub fn message_type(class: Class, method: Method) -> u16 {
    let m = method.0 & MAX_METHOD;
    let c = u16::from(class.bits());
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

/// The class and method of a 14-bit message type (the top two bits are ignored).
pub fn split_message_type(message_type: u16) -> (Class, Method) {
    let t = message_type & 0x3FFF;
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = ((t >> 4) & 0b01) | ((t >> 7) & 0b10);
    // `class` is at most 0b11, so the cast loses nothing.
    (Class::from_bits(class as u8), Method(method))
}

/// One attribute. Kinds ferry does not decode are [`Attribute::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// 0x0001 MAPPED-ADDRESS: the reflexive address in the clear, for RFC 3489
    /// clients that predate XOR-MAPPED-ADDRESS.
    MappedAddress(SocketAddr),
    /// 0x0020 XOR-MAPPED-ADDRESS: the reflexive address, port XORed with the
    /// cookie's top 16 bits, IPv4 with the cookie, IPv6 with cookie ‖ transaction id.
    /// Held here in the clear.
    XorMappedAddress(SocketAddr),
    /// 0x8022 SOFTWARE: a description of the sender, at most [`MAX_TEXT_LEN`]
    /// bytes of UTF-8.
    Software(String),
    /// 0x8028 FINGERPRINT: CRC-32 of the message before it, XOR [`FINGERPRINT_XOR`].
    /// Always last. [`parse`] keeps it once verified; [`encode`] ignores the value
    /// held here and writes the right one.
    Fingerprint(u32),
    /// 0x0009 ERROR-CODE: `code` 300..=699 and a reason phrase of at most
    /// [`MAX_TEXT_LEN`] bytes of UTF-8.
    ErrorCode {
        /// The error code, e.g. 420 (Unknown Attribute).
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// 0x0003 CHANGE-REQUEST (RFC 5780): asks the server to answer from another
    /// IP and/or port. Bits other than these two are ignored on parse, 0 on encode.
    ChangeRequest {
        /// Bit 0x4: answer from the alternate IP address.
        change_ip: bool,
        /// Bit 0x2: answer from the alternate port.
        change_port: bool,
    },
    /// 0x000A UNKNOWN-ATTRIBUTES: the comprehension-required kinds a 420 error
    /// response did not understand.
    UnknownAttributes(Vec<u16>),
    /// Any other kind, with its raw value (padding not included). A `kind` below
    /// 0x8000 is comprehension-required ([`kind::is_comprehension_required`]).
    /// Never one of the decoded kinds ([`kind::is_decoded`]): [`encode`] refuses that.
    Unknown {
        /// The attribute type.
        kind: u16,
        /// The value, as received.
        value: Vec<u8>,
    },
}

impl Attribute {
    /// The attribute type number on the wire.
    pub fn kind(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => kind::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => kind::XOR_MAPPED_ADDRESS,
            Attribute::Software(_) => kind::SOFTWARE,
            Attribute::Fingerprint(_) => kind::FINGERPRINT,
            Attribute::ErrorCode { .. } => kind::ERROR_CODE,
            Attribute::ChangeRequest { .. } => kind::CHANGE_REQUEST,
            Attribute::UnknownAttributes(_) => kind::UNKNOWN_ATTRIBUTES,
            Attribute::Unknown { kind, .. } => *kind,
        }
    }

    /// True for a comprehension-required kind (below 0x8000).
    pub fn is_comprehension_required(&self) -> bool {
        kind::is_comprehension_required(self.kind())
    }
}

/// One STUN message, owning its attributes (in wire order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Message {
    /// Request, indication, success or error response.
    pub class: Class,
    /// The method; [`Method::BINDING`] for everything ferry sends.
    pub method: Method,
    /// The 96-bit transaction id that pairs a response with its request.
    pub transaction_id: [u8; 12],
    /// The attributes, in order; a [`Attribute::Fingerprint`] can only be last.
    pub attributes: Vec<Attribute>,
}

impl Message {
    /// A message without attributes.
    pub fn new(class: Class, method: Method, transaction_id: [u8; 12]) -> Message {
        Message {
            class,
            method,
            transaction_id,
            attributes: Vec::new(),
        }
    }

    /// A Binding request without attributes.
    pub fn binding_request(transaction_id: [u8; 12]) -> Message {
        Message::new(Class::Request, Method::BINDING, transaction_id)
    }

    /// A Binding success response reporting `mapped` (the request's source
    /// address) as XOR-MAPPED-ADDRESS and, for RFC 3489 clients, MAPPED-ADDRESS,
    /// then SOFTWARE if given (longer than [`MAX_TEXT_LEN`] bytes, [`encode`] fails).
    pub fn binding_success(
        transaction_id: [u8; 12],
        mapped: SocketAddr,
        software: Option<&str>,
    ) -> Message {
        let mut message = Message::new(Class::SuccessResponse, Method::BINDING, transaction_id);
        message.attributes.push(Attribute::XorMappedAddress(mapped));
        message.attributes.push(Attribute::MappedAddress(mapped));
        if let Some(software) = software {
            message
                .attributes
                .push(Attribute::Software(software.to_owned()));
        }
        message
    }

    /// A Binding error response with ERROR-CODE `code` (300..=699, or [`encode`]
    /// fails) and `reason`. For a 420, push an [`Attribute::UnknownAttributes`].
    pub fn binding_error(transaction_id: [u8; 12], code: u16, reason: &str) -> Message {
        let mut message = Message::new(Class::ErrorResponse, Method::BINDING, transaction_id);
        message.attributes.push(Attribute::ErrorCode {
            code,
            reason: reason.to_owned(),
        });
        message
    }

    /// True for a Binding request.
    pub fn is_binding_request(&self) -> bool {
        self.class == Class::Request && self.method == Method::BINDING
    }

    /// The reflexive address: the first XOR-MAPPED-ADDRESS, else the first
    /// MAPPED-ADDRESS, else `None`.
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        let xor = self.attributes.iter().find_map(|a| match a {
            Attribute::XorMappedAddress(addr) => Some(*addr),
            _ => None,
        });
        xor.or_else(|| {
            self.attributes.iter().find_map(|a| match a {
                Attribute::MappedAddress(addr) => Some(*addr),
                _ => None,
            })
        })
    }

    /// The first SOFTWARE value.
    pub fn software(&self) -> Option<&str> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Software(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// The first ERROR-CODE: its code and reason phrase.
    pub fn error_code(&self) -> Option<(u16, &str)> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::ErrorCode { code, reason } => Some((*code, reason.as_str())),
            _ => None,
        })
    }

    /// The FINGERPRINT value, if the message has one (a parsed message's has
    /// been verified).
    pub fn fingerprint(&self) -> Option<u32> {
        match self.attributes.last() {
            Some(Attribute::Fingerprint(value)) => Some(*value),
            _ => None,
        }
    }

    /// The kinds of the comprehension-required [`Attribute::Unknown`]s, in order,
    /// without duplicates: what a 420 response lists in UNKNOWN-ATTRIBUTES. The
    /// caller removes the kinds it does understand (e.g. MESSAGE-INTEGRITY).
    pub fn unknown_comprehension_required(&self) -> Vec<u16> {
        let mut kinds: Vec<u16> = Vec::new();
        for attribute in &self.attributes {
            if let Attribute::Unknown { kind, .. } = attribute
                && kind::is_comprehension_required(*kind)
                && !kinds.contains(kind)
            {
                kinds.push(*kind);
            }
        }
        kinds
    }
}

/// Why bytes are not a valid STUN message, or why a [`Message`] cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StunError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("{len} bytes is shorter than a STUN header")]
    TooShort {
        /// The datagram's length.
        len: usize,
    },
    /// One of the two top bits of the message type is set.
    #[error("the top two bits of a STUN message are not zero (first byte {first_byte:#04x})")]
    TopBitsSet {
        /// The first byte.
        first_byte: u8,
    },
    /// Bytes 4..8 are not [`MAGIC_COOKIE`].
    #[error("bad STUN magic cookie {cookie:#010x}")]
    BadCookie {
        /// The value found.
        cookie: u32,
    },
    /// The header's length is not a multiple of 4.
    #[error("STUN message length {length} is not a multiple of 4")]
    UnalignedLength {
        /// The header's length field.
        length: u16,
    },
    /// The header's length does not match the datagram's.
    #[error("STUN header says {declared} bytes but the datagram has {actual}")]
    LengthMismatch {
        /// [`HEADER_LEN`] + the header's length field.
        declared: usize,
        /// The datagram's length.
        actual: usize,
    },
    /// An attribute, with its padding, runs past the end of the message.
    #[error("STUN attribute {kind:#06x} of {len} bytes at offset {offset} runs past the message")]
    TruncatedAttribute {
        /// The attribute type.
        kind: u16,
        /// Its length field (padding not included).
        len: u16,
        /// The offset of its type field in the datagram.
        offset: usize,
    },
    /// A decoded attribute with a length its kind does not allow.
    #[error("STUN attribute {kind:#06x} has a bad length {len}")]
    BadAttributeLength {
        /// The attribute type.
        kind: u16,
        /// The value's length.
        len: usize,
    },
    /// An address family other than 0x01 (IPv4) or 0x02 (IPv6).
    #[error("STUN attribute {kind:#06x} has unknown address family {family:#04x}")]
    BadAddressFamily {
        /// The attribute type.
        kind: u16,
        /// The family byte.
        family: u8,
    },
    /// SOFTWARE or a reason phrase that is not UTF-8.
    #[error("STUN attribute {kind:#06x} is not valid UTF-8")]
    InvalidUtf8 {
        /// The attribute type.
        kind: u16,
    },
    /// SOFTWARE or a reason phrase longer than [`MAX_TEXT_LEN`] bytes.
    #[error("STUN attribute {kind:#06x} text of {len} bytes exceeds {MAX_TEXT_LEN}")]
    TextTooLong {
        /// The attribute type.
        kind: u16,
        /// The text's length in bytes.
        len: usize,
    },
    /// An ERROR-CODE outside 300..=699 (class 3..=6, number 0..=99).
    #[error("STUN error code {code} is outside 300..=699")]
    BadErrorCode {
        /// The code (class × 100 + number, as received).
        code: u16,
    },
    /// An attribute follows FINGERPRINT.
    #[error("STUN FINGERPRINT is not the last attribute")]
    FingerprintNotLast,
    /// FINGERPRINT does not match the message.
    #[error("STUN FINGERPRINT {found:#010x} does not match the computed {expected:#010x}")]
    FingerprintMismatch {
        /// The value computed over the message.
        expected: u32,
        /// The value received.
        found: u32,
    },
    /// Encode: a method above [`MAX_METHOD`].
    #[error("STUN method {method:#x} does not fit 12 bits")]
    MethodOutOfRange {
        /// The method number.
        method: u16,
    },
    /// Encode: an attribute value longer than 65535 bytes.
    #[error("STUN attribute {kind:#06x} of {len} bytes is too long")]
    AttributeTooLong {
        /// The attribute type.
        kind: u16,
        /// The value's length.
        len: usize,
    },
    /// Encode: the attributes take more than 65532 bytes.
    #[error("STUN message attributes of {len} bytes exceed the length field")]
    MessageTooLong {
        /// The attributes' total length.
        len: usize,
    },
    /// Encode: an [`Attribute::Unknown`] with a kind ferry decodes, which would
    /// parse back as another variant.
    #[error("STUN attribute {kind:#06x} must use its own variant, not Unknown")]
    UnknownWithDecodedKind {
        /// The attribute type.
        kind: u16,
    },
}

/// The quick test for a socket shared with other traffic: the top two bits are
/// zero, bytes 4..8 are the magic cookie, and the header's length is a multiple
/// of 4 that accounts for the whole datagram. Attributes are not looked at.
pub fn is_stun(input: &[u8]) -> bool {
    let Some(header) = input.first_chunk::<HEADER_LEN>() else {
        return false;
    };
    let [b0, _, l0, l1, c0, c1, c2, c3, ..] = *header;
    let length = usize::from(u16::from_be_bytes([l0, l1]));
    b0 & 0xC0 == 0
        && u32::from_be_bytes([c0, c1, c2, c3]) == MAGIC_COOKIE
        && length % 4 == 0
        && input.len() == HEADER_LEN + length
}

/// Parse one whole datagram as a STUN message.
///
/// Checks, in order: at least [`HEADER_LEN`] bytes, the top two bits zero, the
/// magic cookie, the length a multiple of 4 and equal to the datagram's length
/// minus the header, every attribute (and its padding) inside that length, and
/// each decoded attribute's value. Padding bytes may hold anything (RFC 8489
/// §14). A FINGERPRINT must be the last attribute and match the CRC-32 of the
/// bytes before it; it is then kept as [`Attribute::Fingerprint`].
pub fn parse(input: &[u8]) -> Result<Message, StunError> {
    let Some((header, mut rest)) = input.split_first_chunk::<HEADER_LEN>() else {
        return Err(StunError::TooShort { len: input.len() });
    };
    let [t0, t1, l0, l1, c0, c1, c2, c3, tid @ ..] = *header;
    if t0 & 0xC0 != 0 {
        return Err(StunError::TopBitsSet { first_byte: t0 });
    }
    let cookie = u32::from_be_bytes([c0, c1, c2, c3]);
    if cookie != MAGIC_COOKIE {
        return Err(StunError::BadCookie { cookie });
    }
    let length = u16::from_be_bytes([l0, l1]);
    if length % 4 != 0 {
        return Err(StunError::UnalignedLength { length });
    }
    let declared = HEADER_LEN + usize::from(length);
    if declared != input.len() {
        return Err(StunError::LengthMismatch {
            declared,
            actual: input.len(),
        });
    }
    let (class, method) = split_message_type(u16::from_be_bytes([t0, t1]));
    let transaction_id: [u8; 12] = tid;

    let mut attributes = Vec::new();
    let mut offset = HEADER_LEN;
    while !rest.is_empty() {
        if matches!(attributes.last(), Some(Attribute::Fingerprint(_))) {
            return Err(StunError::FingerprintNotLast);
        }
        // `rest` is a non-empty multiple of 4 bytes, so a 4-byte TLV head is there.
        let Some((&[k0, k1, v0, v1], after)) = rest.split_first_chunk::<4>() else {
            return Err(StunError::TruncatedAttribute {
                kind: 0,
                len: 0,
                offset,
            });
        };
        let kind = u16::from_be_bytes([k0, k1]);
        let len = u16::from_be_bytes([v0, v1]);
        let padded = padded_len(usize::from(len));
        let (Some(value), Some(next)) = (after.get(..usize::from(len)), after.get(padded..)) else {
            return Err(StunError::TruncatedAttribute { kind, len, offset });
        };
        if kind == kind::FINGERPRINT {
            if !next.is_empty() {
                return Err(StunError::FingerprintNotLast);
            }
            let &[f0, f1, f2, f3] = value else {
                return Err(StunError::BadAttributeLength {
                    kind,
                    len: value.len(),
                });
            };
            let found = u32::from_be_bytes([f0, f1, f2, f3]);
            let expected = fingerprint_of(input.get(..offset).unwrap_or_default());
            if found != expected {
                return Err(StunError::FingerprintMismatch { expected, found });
            }
            attributes.push(Attribute::Fingerprint(found));
        } else {
            attributes.push(decode_attribute(kind, value, &transaction_id)?);
        }
        offset += 4 + padded;
        rest = next;
    }
    Ok(Message {
        class,
        method,
        transaction_id,
        attributes,
    })
}

/// Append `message` to `out`, padding every attribute with zero bytes. A
/// trailing [`Attribute::Fingerprint`] is written with the value computed over
/// the bytes before it (the value held is ignored).
///
/// Errors (and `out` left as it was): a method above [`MAX_METHOD`], a
/// FINGERPRINT that is not last, an attribute its variant cannot hold (text over
/// [`MAX_TEXT_LEN`] bytes, an error code outside 300..=699, a value over 65535
/// bytes, an [`Attribute::Unknown`] with a decoded kind), or attributes over
/// 65532 bytes in all.
pub fn encode(message: &Message, out: &mut Vec<u8>) -> Result<(), StunError> {
    encode_inner(message, false, out)
}

/// [`encode`], then append a FINGERPRINT unless the message already ends with
/// one (which is then written with the right value, once).
pub fn encode_with_fingerprint(message: &Message, out: &mut Vec<u8>) -> Result<(), StunError> {
    encode_inner(message, true, out)
}

/// The FINGERPRINT value of the bytes before it: CRC-32 XOR [`FINGERPRINT_XOR`].
/// The header's length must already count the 8-byte FINGERPRINT attribute.
pub fn fingerprint_of(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes) ^ FINGERPRINT_XOR
}

/// A value length rounded up to a multiple of 4.
fn padded_len(len: usize) -> usize {
    len.div_ceil(4) * 4
}

fn encode_inner(message: &Message, fingerprint: bool, out: &mut Vec<u8>) -> Result<(), StunError> {
    let start = out.len();
    let result = encode_unchecked(message, fingerprint, start, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_unchecked(
    message: &Message,
    mut fingerprint: bool,
    start: usize,
    out: &mut Vec<u8>,
) -> Result<(), StunError> {
    if message.method.0 > MAX_METHOD {
        return Err(StunError::MethodOutOfRange {
            method: message.method.0,
        });
    }
    out.extend_from_slice(&message_type(message.class, message.method).to_be_bytes());
    out.extend_from_slice(&[0, 0]); // length, set below
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&message.transaction_id);

    let count = message.attributes.len();
    for (i, attribute) in message.attributes.iter().enumerate() {
        if let Attribute::Fingerprint(_) = attribute {
            if i + 1 != count {
                return Err(StunError::FingerprintNotLast);
            }
            fingerprint = true;
        } else {
            encode_attribute(attribute, &message.transaction_id, out)?;
        }
    }

    let attrs_len = out.len() - start - HEADER_LEN + if fingerprint { 8 } else { 0 };
    // Every attribute is padded, so a length that fits 16 bits is at most 65532.
    let length =
        u16::try_from(attrs_len).map_err(|_| StunError::MessageTooLong { len: attrs_len })?;
    if let Some(slot) = out.get_mut(start + 2..start + 4) {
        slot.copy_from_slice(&length.to_be_bytes());
    }
    if fingerprint {
        let value = fingerprint_of(out.get(start..).unwrap_or_default());
        out.extend_from_slice(&kind::FINGERPRINT.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
    Ok(())
}

/// Append one TLV (not FINGERPRINT) with zero padding.
fn encode_attribute(
    attribute: &Attribute,
    transaction_id: &[u8; 12],
    out: &mut Vec<u8>,
) -> Result<(), StunError> {
    let kind = attribute.kind();
    let head = out.len();
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // length, set below
    match attribute {
        Attribute::MappedAddress(addr) => encode_address(*addr, None, out),
        Attribute::XorMappedAddress(addr) => encode_address(*addr, Some(transaction_id), out),
        Attribute::Software(text) => {
            check_text(kind, text)?;
            out.extend_from_slice(text.as_bytes());
        }
        Attribute::ErrorCode { code, reason } => {
            if !(300..=699).contains(code) {
                return Err(StunError::BadErrorCode { code: *code });
            }
            check_text(kind, reason)?;
            // 300..=699: the class is 3..=6 and the number 0..=99, both fit a byte.
            let class = u8::try_from(code / 100).unwrap_or_default();
            let number = u8::try_from(code % 100).unwrap_or_default();
            out.extend_from_slice(&[0, 0, class, number]);
            out.extend_from_slice(reason.as_bytes());
        }
        Attribute::ChangeRequest {
            change_ip,
            change_port,
        } => {
            let bits = if *change_ip { 0x4 } else { 0 } | if *change_port { 0x2 } else { 0 };
            out.extend_from_slice(&[0, 0, 0, bits]);
        }
        Attribute::UnknownAttributes(kinds) => {
            for k in kinds {
                out.extend_from_slice(&k.to_be_bytes());
            }
        }
        Attribute::Unknown { kind, value } => {
            if kind::is_decoded(*kind) {
                return Err(StunError::UnknownWithDecodedKind { kind: *kind });
            }
            out.extend_from_slice(value);
        }
        Attribute::Fingerprint(_) => {
            // Written by `encode_unchecked`, never here.
            return Err(StunError::FingerprintNotLast);
        }
    }
    let len = out.len() - head - 4;
    let len16 = u16::try_from(len).map_err(|_| StunError::AttributeTooLong { kind, len })?;
    if let Some(slot) = out.get_mut(head + 2..head + 4) {
        slot.copy_from_slice(&len16.to_be_bytes());
    }
    out.resize(out.len() + padded_len(len) - len, 0);
    Ok(())
}

fn check_text(kind: u16, text: &str) -> Result<(), StunError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(StunError::TextTooLong {
            kind,
            len: text.len(),
        });
    }
    Ok(())
}

/// The value of an address attribute, XORed if `xor` holds the transaction id.
fn encode_address(addr: SocketAddr, xor: Option<&[u8; 12]>, out: &mut Vec<u8>) {
    // No XOR: a zero mask.
    let mask = xor.map(xor_mask).unwrap_or_default();
    let [p0, p1] = (addr.port() ^ port_mask(xor.is_some())).to_be_bytes();
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0, 0x01, p0, p1]);
            let mut octets = ip.octets();
            octets.iter_mut().zip(mask).for_each(|(b, m)| *b ^= m);
            out.extend_from_slice(&octets);
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0, 0x02, p0, p1]);
            let mut octets = ip.octets();
            octets.iter_mut().zip(mask).for_each(|(b, m)| *b ^= m);
            out.extend_from_slice(&octets);
        }
    }
}

/// The port's XOR mask: the cookie's top 16 bits, or 0 without XOR.
fn port_mask(xor: bool) -> u16 {
    if xor { 0x2112 } else { 0 }
}

/// Magic cookie ‖ transaction id: the XOR mask of an address (IPv4 uses the
/// first 4 bytes).
fn xor_mask(transaction_id: &[u8; 12]) -> [u8; 16] {
    let mut mask = [0u8; 16];
    let (cookie, tid) = mask.split_at_mut(4);
    cookie.copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    tid.copy_from_slice(transaction_id);
    mask
}

fn decode_attribute(
    kind: u16,
    value: &[u8],
    transaction_id: &[u8; 12],
) -> Result<Attribute, StunError> {
    let bad_len = || StunError::BadAttributeLength {
        kind,
        len: value.len(),
    };
    Ok(match kind {
        kind::MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(kind, value, None)?),
        kind::XOR_MAPPED_ADDRESS => {
            Attribute::XorMappedAddress(decode_address(kind, value, Some(transaction_id))?)
        }
        kind::SOFTWARE => Attribute::Software(decode_text(kind, value)?),
        kind::ERROR_CODE => {
            let [_, _, class, number, reason @ ..] = value else {
                return Err(bad_len());
            };
            let code = u16::from(class & 0x07) * 100 + u16::from(*number);
            if !(3..=6).contains(&(class & 0x07)) || *number > 99 {
                return Err(StunError::BadErrorCode { code });
            }
            Attribute::ErrorCode {
                code,
                reason: decode_text(kind, reason)?,
            }
        }
        kind::CHANGE_REQUEST => {
            let &[_, _, _, bits] = value else {
                return Err(bad_len());
            };
            Attribute::ChangeRequest {
                change_ip: bits & 0x4 != 0,
                change_port: bits & 0x2 != 0,
            }
        }
        kind::UNKNOWN_ATTRIBUTES => {
            let (pairs, []) = value.as_chunks::<2>() else {
                return Err(bad_len());
            };
            Attribute::UnknownAttributes(pairs.iter().map(|p| u16::from_be_bytes(*p)).collect())
        }
        _ => Attribute::Unknown {
            kind,
            value: value.to_vec(),
        },
    })
}

fn decode_text(kind: u16, bytes: &[u8]) -> Result<String, StunError> {
    if bytes.len() > MAX_TEXT_LEN {
        return Err(StunError::TextTooLong {
            kind,
            len: bytes.len(),
        });
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| StunError::InvalidUtf8 { kind })
}

/// An address attribute's value: reserved byte (ignored), family, port, address.
fn decode_address(
    kind: u16,
    value: &[u8],
    xor: Option<&[u8; 12]>,
) -> Result<SocketAddr, StunError> {
    let bad_len = || StunError::BadAttributeLength {
        kind,
        len: value.len(),
    };
    let [_, family, p0, p1, address @ ..] = value else {
        return Err(bad_len());
    };
    let mask = xor.map(xor_mask).unwrap_or_default();
    let port = u16::from_be_bytes([*p0, *p1]) ^ port_mask(xor.is_some());
    let ip = match *family {
        0x01 => {
            let mut octets: [u8; 4] = address.try_into().map_err(|_| bad_len())?;
            octets.iter_mut().zip(mask).for_each(|(b, m)| *b ^= m);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        0x02 => {
            let mut octets: [u8; 16] = address.try_into().map_err(|_| bad_len())?;
            octets.iter_mut().zip(mask).for_each(|(b, m)| *b ^= m);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        family => return Err(StunError::BadAddressFamily { kind, family }),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests;
