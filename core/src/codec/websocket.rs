//! RFC 6455 WebSocket: frames, messages and the opening handshake's key, sans-IO.
//!
//! Three layers, each usable on its own:
//!
//! - **Frames** (this module): [`parse_frame_header`] is a streaming parser (it
//!   answers [`Parsed::Incomplete`] on a valid prefix, so a header split across any
//!   number of reads parses the same as one read); [`encode_frame`] writes a whole
//!   frame with the shortest length encoding, and [`frame_len`] is its exact size.
//!   [`apply_mask`] (un)masks a payload, also one read at a time.
//! - **Messages** ([`MessageReader`], [`encode_message`], [`encode_close`]): the
//!   rules of RFC 6455 §5 (fragmentation, control frames, masking by role,
//!   reserved bits, UTF-8 text, close codes of §7.4) and a size cap checked from
//!   each frame header before any payload is buffered (ARCHITECTURE.md rule 5).
//! - **Handshake** ([`accept_key`], [`validate_upgrade`]): the server side of the
//!   opening handshake (§4.2), decoupled from any HTTP type: the caller passes a
//!   header lookup; [`validate_upgrade_request`] does the same for a parsed
//!   [`RequestHead`](super::http1::RequestHead), method and version included.
//!
//! Bad bytes from the network are typed errors ([`WsError`]), never panics; each
//! maps to the close code the endpoint should send ([`WsError::close_code`]).

mod handshake;
mod message;

pub use handshake::{ACCEPT_GUID, UpgradeError, accept_key, validate_upgrade};
pub use message::{
    CloseFrame, MAX_CONTROL_PAYLOAD, Message, MessageReader, Messages, Read, Role, encode_close,
    encode_message, is_valid_close_code,
};

/// The streaming parse result shared with the other ferry codecs.
pub use super::Parsed;

/// Check a parsed request head is an RFC 6455 opening handshake (a `GET` in
/// HTTP/1.1 with valid upgrade fields, §4.2.1); the `Sec-WebSocket-Accept`
/// value to answer with, or the HTTP status and reason to refuse with (400, or
/// 426 for a version other than 13). Repeated fields are joined with `,`.
pub fn validate_upgrade_request(head: &super::http1::RequestHead) -> Result<String, (u16, String)> {
    if head.method != "GET" || head.version != super::http1::Version::Http11 {
        return Err((
            400,
            "a WebSocket upgrade is a GET request in HTTP/1.1".into(),
        ));
    }
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

use nom::Parser;
use nom::bytes::streaming::take;
use nom::number::streaming::{be_u16, be_u64};
use thiserror::Error;

/// The longest frame header: 2 bytes, an 8-byte length and a 4-byte masking key.
pub const MAX_HEADER_LEN: usize = 14;

/// A frame's opcode (RFC 6455 §5.2). Opcodes 0x3-0x7 and 0xB-0xF are reserved
/// and never parse: no extension that defines them is ever negotiated here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// 0x0: a later fragment of a text or binary message.
    Continuation = 0x0,
    /// 0x1: the first (or only) frame of a UTF-8 text message.
    Text = 0x1,
    /// 0x2: the first (or only) frame of a binary message.
    Binary = 0x2,
    /// 0x8: the closing handshake.
    Close = 0x8,
    /// 0x9: a ping; the peer answers with a pong of the same payload.
    Ping = 0x9,
    /// 0xA: a pong.
    Pong = 0xA,
}

impl OpCode {
    /// The opcode of a 4-bit value, or `None` for a reserved one.
    pub fn from_u4(value: u8) -> Option<OpCode> {
        match value {
            0x0 => Some(OpCode::Continuation),
            0x1 => Some(OpCode::Text),
            0x2 => Some(OpCode::Binary),
            0x8 => Some(OpCode::Close),
            0x9 => Some(OpCode::Ping),
            0xA => Some(OpCode::Pong),
            _ => None,
        }
    }

    /// True for close, ping and pong: frames that must not be fragmented and
    /// carry at most 125 bytes (§5.5).
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// The header of one frame (RFC 6455 §5.2). The payload, `len` bytes, follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The final fragment of a message.
    pub fin: bool,
    /// The three reserved bits RSV1..RSV3, as the low bits (RSV1 = `0b100`).
    /// Nonzero only with an extension, and none is ever negotiated here.
    pub rsv: u8,
    /// What the frame carries.
    pub opcode: OpCode,
    /// The masking key; frames from a client are masked, frames from a server not.
    pub mask: Option<[u8; 4]>,
    /// The payload length in bytes; below 2^63.
    pub len: u64,
}

impl FrameHeader {
    /// The exact number of bytes [`encode_frame_header`] writes for this header.
    pub fn encoded_len(&self) -> usize {
        let ext = match self.len {
            0..=125 => 0,
            126..=0xFFFF => 2,
            _ => 8,
        };
        2 + ext + if self.mask.is_some() { 4 } else { 0 }
    }
}

/// Why bytes are not a valid WebSocket stream. Every variant is the peer's
/// fault; the connection must be closed with [`close_code`](WsError::close_code).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WsError {
    /// A reserved opcode (0x3-0x7, 0xB-0xF).
    #[error("reserved opcode {opcode:#x}")]
    UnknownOpcode {
        /// The 4-bit opcode.
        opcode: u8,
    },
    /// A 64-bit payload length with its most significant bit set (§5.2).
    #[error("64-bit payload length with the top bit set")]
    LengthTopBitSet,
    /// A reserved bit set although no extension was negotiated.
    #[error("reserved bits {rsv:#05b} set without an extension")]
    ReservedBits {
        /// The RSV1..RSV3 bits, as in [`FrameHeader::rsv`].
        rsv: u8,
    },
    /// A server received an unmasked frame (§5.1).
    #[error("unmasked frame from a client")]
    UnmaskedFrame,
    /// A client received a masked frame (§5.1).
    #[error("masked frame from a server")]
    MaskedFrame,
    /// A control frame with FIN clear (§5.5).
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload (§5.5).
    #[error("control frame of {len} bytes, above 125")]
    ControlTooLong {
        /// The announced payload length.
        len: u64,
    },
    /// A continuation frame with no fragmented message in progress (§5.4).
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message is in progress (§5.4).
    #[error("new data frame while a fragmented message is in progress")]
    MessageInProgress,
    /// A close frame whose payload is a single byte (§5.5.1).
    #[error("close payload of one byte")]
    CloseTooShort,
    /// A close code that may not be sent on the wire (§7.4).
    #[error("invalid close code {code}")]
    InvalidCloseCode {
        /// The code received.
        code: u16,
    },
    /// A text message or a close reason that is not UTF-8 (§8.1).
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    /// A message (the sum of its fragments) above the reader's cap.
    #[error("message above the cap of {max} bytes")]
    TooBig {
        /// The cap.
        max: usize,
    },
}

impl WsError {
    /// The status code to close the connection with (§7.4.1): 1009 for a message
    /// too big, 1007 for invalid UTF-8, 1002 for every other protocol error.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooBig { .. } => 1009,
            WsError::InvalidUtf8 => 1007,
            _ => 1002,
        }
    }
}

/// Parse the frame header at the front of `input` (RFC 6455 §5.2).
///
/// The payload need not be present: `consumed` is the header length and
/// `value.len` the payload length. Non-minimal length encodings are accepted;
/// reserved opcodes and a 64-bit length with the top bit set are errors, found
/// as soon as the byte that holds them arrives. Reserved bits and masking are
/// returned, not judged: that depends on the role ([`MessageReader`] checks them).
pub fn parse_frame_header(input: &[u8]) -> Result<Parsed<FrameHeader>, WsError> {
    let Some(&b0) = input.first() else {
        return Ok(Parsed::Incomplete);
    };
    let opcode = OpCode::from_u4(b0 & 0x0F).ok_or(WsError::UnknownOpcode { opcode: b0 & 0x0F })?;
    let Some(&b1) = input.get(1) else {
        return Ok(Parsed::Incomplete);
    };
    let rest = &input[2..];
    let lengths: nom::IResult<&[u8], u64> = match b1 & 0x7F {
        126 => be_u16.map(u64::from).parse(rest),
        127 => {
            if rest.first().is_some_and(|b| b & 0x80 != 0) {
                return Err(WsError::LengthTopBitSet);
            }
            be_u64(rest)
        }
        short => Ok((rest, u64::from(short))),
    };
    let masked = b1 & 0x80 != 0;
    let parsed = lengths.and_then(|(rest, len)| {
        if masked {
            take(4usize)
                .map(|key: &[u8]| Some([key[0], key[1], key[2], key[3]]))
                .parse(rest)
                .map(|(rest, mask)| (rest, (len, mask)))
        } else {
            Ok((rest, (len, None)))
        }
    });
    match parsed {
        Ok((rest, (len, mask))) => Ok(Parsed::Done {
            value: FrameHeader {
                fin: b0 & 0x80 != 0,
                rsv: (b0 >> 4) & 0x7,
                opcode,
                mask,
                len,
            },
            consumed: input.len() - rest.len(),
        }),
        // The streaming number and `take` parsers fail only for want of bytes.
        Err(_) => Ok(Parsed::Incomplete),
    }
}

/// XOR `data` with the masking key (RFC 6455 §5.3); masking and unmasking are the
/// same operation. `offset` is the position of `data[0]` within the frame's
/// payload, so a payload that arrives in several reads unmasks the same as one.
pub fn apply_mask(key: [u8; 4], offset: usize, data: &mut [u8]) {
    let rotated = u32::from_be_bytes(key).rotate_left(8 * (offset % 4) as u32);
    let key = rotated.to_be_bytes();
    let mut chunks = data.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let word =
            u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ u32::from_ne_bytes(key);
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// Append a frame header to `out`, with the shortest length encoding.
pub fn encode_frame_header(header: &FrameHeader, out: &mut Vec<u8>) {
    out.push(u8::from(header.fin) << 7 | (header.rsv & 0x7) << 4 | header.opcode as u8);
    let mask_bit = if header.mask.is_some() { 0x80 } else { 0 };
    match header.len {
        // The match arm bounds the value, so the casts cannot truncate.
        len @ 0..=125 => out.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
    if let Some(key) = header.mask {
        out.extend_from_slice(&key);
    }
}

/// Append a whole frame to `out`: header, then `payload`, masked with `mask` if given.
/// Its length is exactly [`frame_len`]`(payload.len(), mask.is_some())`.
pub fn encode_frame(
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let header = FrameHeader {
        fin,
        rsv: 0,
        opcode,
        mask,
        len: payload.len() as u64,
    };
    out.reserve(header.encoded_len() + payload.len());
    encode_frame_header(&header, out);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(key, 0, &mut out[start..]);
    }
}

/// The exact encoded length of a frame with `payload_len` bytes of payload.
pub fn frame_len(payload_len: usize, masked: bool) -> usize {
    FrameHeader {
        fin: true,
        rsv: 0,
        opcode: OpCode::Binary,
        mask: masked.then_some([0; 4]),
        len: payload_len as u64,
    }
    .encoded_len()
        + payload_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    fn done(p: Parsed<FrameHeader>) -> (FrameHeader, usize) {
        match p {
            Parsed::Done { value, consumed } => (value, consumed),
            Parsed::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn rfc_5_7_unmasked_text_header() {
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let (h, n) = done(parse_frame_header(&bytes).unwrap());
        assert_eq!(n, 2);
        assert_eq!(
            h,
            FrameHeader {
                fin: true,
                rsv: 0,
                opcode: OpCode::Text,
                mask: None,
                len: 5
            }
        );
        let mut out = Vec::new();
        encode_frame(OpCode::Text, true, None, b"Hello", &mut out);
        assert_eq!(out, bytes);
    }

    #[test]
    fn rfc_5_7_masked_text_header_and_unmasking() {
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = done(parse_frame_header(&bytes).unwrap());
        assert_eq!((n, h.len, h.mask), (6, 5, Some([0x37, 0xfa, 0x21, 0x3d])));
        let mut payload = bytes[6..].to_vec();
        apply_mask([0x37, 0xfa, 0x21, 0x3d], 0, &mut payload);
        assert_eq!(payload, b"Hello");
        let mut out = Vec::new();
        encode_frame(
            OpCode::Text,
            true,
            Some([0x37, 0xfa, 0x21, 0x3d]),
            b"Hello",
            &mut out,
        );
        assert_eq!(out, bytes);
    }

    #[test]
    fn rfc_5_7_256_bytes_use_the_16_bit_length() {
        let mut out = Vec::new();
        encode_frame(OpCode::Binary, true, None, &[0; 256], &mut out);
        assert_eq!(out[..4], [0x82, 0x7E, 0x01, 0x00]);
        assert_eq!(out.len(), 4 + 256);
        let (h, n) = done(parse_frame_header(&out).unwrap());
        assert_eq!((h.len, n), (256, 4));
    }

    #[test]
    fn rfc_5_7_64_kib_use_the_64_bit_length() {
        let mut out = Vec::new();
        encode_frame(OpCode::Binary, true, None, &[0; 65536], &mut out);
        assert_eq!(
            out[..10],
            [0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]
        );
        let (h, n) = done(parse_frame_header(&out).unwrap());
        assert_eq!((h.len, n), (65536, 10));
    }

    #[test]
    fn header_accepts_non_minimal_lengths() {
        let (h, n) = done(parse_frame_header(&[0x82, 126, 0, 5]).unwrap());
        assert_eq!((h.len, n), (5, 4));
        let (h, n) = done(parse_frame_header(&[0x82, 127, 0, 0, 0, 0, 0, 0, 0, 5]).unwrap());
        assert_eq!((h.len, n), (5, 10));
    }

    #[test]
    fn header_rejects_a_64_bit_length_with_the_top_bit_set() {
        assert_eq!(
            parse_frame_header(&[0x82, 127, 0x80]),
            Err(WsError::LengthTopBitSet)
        );
        let max = [0x82, 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(done(parse_frame_header(&max).unwrap()).0.len, u64::MAX >> 1);
    }

    #[test]
    fn header_rejects_reserved_opcodes_from_the_first_byte() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(
                parse_frame_header(&[0x80 | opcode]),
                Err(WsError::UnknownOpcode { opcode })
            );
        }
    }

    #[test]
    fn header_returns_rsv_bits_and_fin() {
        let (h, _) = done(parse_frame_header(&[0x70 | 0x2, 0]).unwrap());
        assert_eq!((h.fin, h.rsv), (false, 0b111));
    }

    #[test]
    fn error_close_codes() {
        assert_eq!(WsError::TooBig { max: 1 }.close_code(), 1009);
        assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
        assert_eq!(WsError::UnmaskedFrame.close_code(), 1002);
        assert_eq!(WsError::LengthTopBitSet.close_code(), 1002);
        assert_eq!(WsError::InvalidCloseCode { code: 5 }.close_code(), 1002);
    }

    #[test]
    fn apply_mask_at_an_offset_matches_masking_the_whole_payload() {
        let key = [1, 2, 3, 0xF0];
        let plain: Vec<u8> = (0..=40).collect();
        let mut whole = plain.clone();
        apply_mask(key, 0, &mut whole);
        for cut in 0..plain.len() {
            let mut split = plain.clone();
            let (a, b) = split.split_at_mut(cut);
            apply_mask(key, 0, a);
            apply_mask(key, cut, b);
            assert_eq!(split, whole, "cut at {cut}");
        }
        assert_eq!(whole[5], 5 ^ key[1]);
    }

    #[test]
    fn header_every_strict_prefix_is_incomplete() {
        fn prop(len: u64, mask: Option<[u8; 4]>, fin: bool) -> bool {
            let header = FrameHeader {
                fin,
                rsv: 0,
                opcode: OpCode::Binary,
                mask,
                len: len >> 1,
            };
            let mut out = Vec::new();
            encode_frame_header(&header, &mut out);
            (0..out.len()).all(|cut| parse_frame_header(&out[..cut]) == Ok(Parsed::Incomplete))
                && parse_frame_header(&out)
                    == Ok(Parsed::Done {
                        value: header,
                        consumed: out.len(),
                    })
                && out.len() == header.encoded_len()
        }
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(u64, Option<[u8; 4]>, bool) -> bool);
    }

    #[test]
    fn frame_len_is_exact() {
        fn prop(len: u16, big: bool, masked: bool, key: [u8; 4]) -> bool {
            // Cover all three length encodings without huge allocations.
            let len = if big {
                65_530 + usize::from(len % 20)
            } else {
                usize::from(len % 300)
            };
            let mut out = Vec::new();
            encode_frame(
                OpCode::Binary,
                true,
                masked.then_some(key),
                &vec![7; len],
                &mut out,
            );
            out.len() == frame_len(len, masked)
        }
        QuickCheck::new()
            .tests(200)
            .quickcheck(prop as fn(u16, bool, bool, [u8; 4]) -> bool);
        for (len, expect) in [
            (0, 2),
            (125, 127),
            (126, 130),
            (65535, 65539),
            (65536, 65546),
        ] {
            assert_eq!(frame_len(len, false), expect);
            assert_eq!(frame_len(len, true), expect + 4);
        }
    }

    #[test]
    fn header_never_panics_on_any_bytes() {
        fn prop(bytes: Vec<u8>) -> TestResult {
            match parse_frame_header(&bytes) {
                Ok(Parsed::Done { consumed, value }) => TestResult::from_bool(
                    consumed <= bytes.len().min(MAX_HEADER_LEN) && value.len < 1 << 63,
                ),
                Ok(Parsed::Incomplete) => TestResult::from_bool(bytes.len() < MAX_HEADER_LEN),
                Err(_) => TestResult::passed(),
            }
        }
        QuickCheck::new()
            .tests(1000)
            .quickcheck(prop as fn(Vec<u8>) -> TestResult);
    }
}
