//! Yamux frames (hashicorp/yamux `spec.md`), sans-IO: the 12-byte header codec
//! and the header-local validation rules. The session is [`session`].
//!
//! Every frame starts with a fixed 12-byte header, all integers big-endian
//! (network order):
//!
//! ```text
//! | version: u8 | type: u8 | flags: u16 | stream id: u32 | length: u32 |
//! ```
//!
//! Only a [`FrameType::Data`] frame carries a payload (`length` bytes after the
//! header); for the other types `length` is a value: the window delta of a
//! [`FrameType::WindowUpdate`], the opaque value of a [`FrameType::Ping`], the
//! error code ([`GoAwayCode`]) of a [`FrameType::GoAway`].
//!
//! - [`parse_header`] is a streaming parser: [`Parsed::Incomplete`] for fewer
//!   than [`HEADER_LEN`] bytes, whatever they hold; a whole header is judged only
//!   on its version and type (unknown flag bits are kept, not rejected).
//! - [`encode_header`] writes one header; [`data`], [`window_update`], [`ping`]
//!   and [`go_away`] write whole frames of each type.
//! - [`Header::validate`] and [`validate_data_len`] check the rules that need
//!   nothing but the header: Ping and GoAway on stream 0, Data and WindowUpdate
//!   on a non-zero stream, a Data payload within a window.
//!
//! Left to the session, which holds the state they need: the send and receive
//! windows (256 KiB [`INITIAL_WINDOW`] per stream, grown by WindowUpdate deltas,
//! only Data bytes counted), SYN on a stream id already in use, the parity of a
//! new stream's id ([`is_client_stream`] / [`is_server_stream`]), which flags
//! make sense on which frame, and what to do on an unknown GoAway code.
//!
//! Bad bytes from the network are typed errors ([`YamuxError`]), never panics.

pub mod session;

/// The streaming parse result shared with the other ferry codecs.
pub use super::Parsed;

use std::ops::{BitOr, BitOrAssign};

use thiserror::Error;

/// The size of every frame header, in bytes.
pub const HEADER_LEN: usize = 12;

/// The only protocol version: the version field is always 0.
pub const VERSION: u8 = 0;

/// The receive window every stream starts with, on both sides: 256 KiB.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// What a frame is (the header's type field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// 0x0: stream data; `length` payload bytes follow the header (possibly 0).
    Data = 0,
    /// 0x1: grow the sender's receive window of a stream by `length` bytes.
    WindowUpdate = 1,
    /// 0x2: a ping (SYN) or its answer (ACK), carrying an opaque `length`.
    Ping = 2,
    /// 0x3: the session is closing; `length` is a [`GoAwayCode`].
    GoAway = 3,
}

impl FrameType {
    /// The frame type of a type byte, or `None` for an unknown one.
    pub fn from_u8(value: u8) -> Option<FrameType> {
        match value {
            0 => Some(FrameType::Data),
            1 => Some(FrameType::WindowUpdate),
            2 => Some(FrameType::Ping),
            3 => Some(FrameType::GoAway),
            _ => None,
        }
    }

    /// True for Ping and GoAway: frames about the session, sent on stream 0.
    pub fn is_session(self) -> bool {
        matches!(self, FrameType::Ping | FrameType::GoAway)
    }
}

/// The header's flag bits. Bits other than the four named ones are kept as
/// received; the spec gives them no meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Flags(pub u16);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// 0x1: opens a stream (Data or WindowUpdate); marks an outbound Ping.
    pub const SYN: Flags = Flags(0x1);
    /// 0x2: accepts a stream (Data or WindowUpdate); marks a Ping's answer.
    pub const ACK: Flags = Flags(0x2);
    /// 0x4: half-closes a stream: the sender sends no more data.
    pub const FIN: Flags = Flags(0x4);
    /// 0x8: resets (or rejects) a stream immediately.
    pub const RST: Flags = Flags(0x8);

    /// True if every bit of `other` is set in `self`.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw 16 bits.
    pub fn bits(self) -> u16 {
        self.0
    }
}

impl BitOr for Flags {
    type Output = Flags;

    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

/// The error code of a GoAway frame, carried in its `length` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum GoAwayCode {
    /// 0x0: normal termination.
    Normal = 0,
    /// 0x1: the peer broke the protocol.
    ProtocolError = 1,
    /// 0x2: the sender failed internally.
    InternalError = 2,
}

impl GoAwayCode {
    /// The code of a GoAway `length`, or `None` for a code the spec does not define.
    pub fn from_u32(value: u32) -> Option<GoAwayCode> {
        match value {
            0 => Some(GoAwayCode::Normal),
            1 => Some(GoAwayCode::ProtocolError),
            2 => Some(GoAwayCode::InternalError),
            _ => None,
        }
    }
}

/// One frame header. For [`FrameType::Data`] the payload, `length` bytes,
/// follows it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The protocol version; [`VERSION`] for every header that parses.
    pub version: u8,
    /// What the frame is.
    pub frame_type: FrameType,
    /// SYN / ACK / FIN / RST and any other bits received.
    pub flags: Flags,
    /// The stream addressed; 0 is the session itself.
    pub stream_id: u32,
    /// Data: the payload length. WindowUpdate: the window delta. Ping: the
    /// opaque value, echoed back. GoAway: the error code ([`GoAwayCode`]).
    pub length: u32,
}

impl Header {
    /// A version-0 header.
    pub fn new(frame_type: FrameType, flags: Flags, stream_id: u32, length: u32) -> Header {
        Header {
            version: VERSION,
            frame_type,
            flags,
            stream_id,
            length,
        }
    }

    /// The GoAway error code, if this is a GoAway frame with a known code.
    pub fn go_away_code(&self) -> Option<GoAwayCode> {
        match self.frame_type {
            FrameType::GoAway => GoAwayCode::from_u32(self.length),
            _ => None,
        }
    }

    /// The number of payload bytes that follow this header: `length` for Data,
    /// 0 for every other type.
    pub fn payload_len(&self) -> u32 {
        match self.frame_type {
            FrameType::Data => self.length,
            _ => 0,
        }
    }

    /// Check the rules that depend on this header alone: Ping and GoAway use
    /// stream id 0, Data and WindowUpdate a non-zero stream id.
    ///
    /// Not checked here (the session's business, see the module docs): windows
    /// ([`validate_data_len`] given the current window), SYN on an existing
    /// stream, the parity of a new stream id, flag combinations, GoAway codes.
    pub fn validate(&self) -> Result<(), YamuxError> {
        match (self.frame_type.is_session(), self.stream_id) {
            (true, 0) | (false, 1..) => Ok(()),
            (true, stream_id) => Err(YamuxError::SessionFrameOnStream {
                frame_type: self.frame_type,
                stream_id,
            }),
            (false, 0) => Err(YamuxError::StreamFrameOnSession {
                frame_type: self.frame_type,
            }),
        }
    }
}

/// Why bytes or a header break the yamux protocol. Every variant is the peer's
/// fault; the session should answer with a GoAway ([`GoAwayCode::ProtocolError`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum YamuxError {
    /// A version other than [`VERSION`].
    #[error("unsupported yamux version {version}")]
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// A type byte above 3.
    #[error("unknown yamux frame type {frame_type:#x}")]
    UnknownType {
        /// The type byte.
        frame_type: u8,
    },
    /// A Ping or GoAway on a stream id other than 0.
    #[error("{frame_type:?} frame on stream {stream_id}, expected stream 0")]
    SessionFrameOnStream {
        /// Ping or GoAway.
        frame_type: FrameType,
        /// The non-zero stream id.
        stream_id: u32,
    },
    /// A Data or WindowUpdate on stream 0, which is reserved for the session.
    #[error("{frame_type:?} frame on stream 0")]
    StreamFrameOnSession {
        /// Data or WindowUpdate.
        frame_type: FrameType,
    },
    /// A Data frame longer than the receive window allows.
    #[error("data frame of {len} bytes exceeds the window of {max}")]
    DataTooLong {
        /// The frame's payload length.
        len: u32,
        /// The window it had to fit in.
        max: u32,
    },
}

/// Parse the frame header at the front of `input`.
///
/// Fewer than [`HEADER_LEN`] bytes are [`Parsed::Incomplete`], whatever they
/// hold; otherwise `consumed` is always [`HEADER_LEN`] (a Data payload is not
/// part of the header: [`Header::payload_len`] bytes follow). A version other
/// than 0 and an unknown type are errors; flags, stream id and length are
/// returned as received ([`Header::validate`] judges the stream id).
pub fn parse_header(input: &[u8]) -> Result<Parsed<Header>, YamuxError> {
    let Some(bytes) = input.first_chunk::<HEADER_LEN>() else {
        return Ok(Parsed::Incomplete);
    };
    let version = bytes[0];
    if version != VERSION {
        return Err(YamuxError::UnsupportedVersion { version });
    }
    let frame_type = FrameType::from_u8(bytes[1]).ok_or(YamuxError::UnknownType {
        frame_type: bytes[1],
    })?;
    Ok(Parsed::Done {
        value: Header {
            version,
            frame_type,
            flags: Flags(u16::from_be_bytes([bytes[2], bytes[3]])),
            stream_id: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            length: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        },
        consumed: HEADER_LEN,
    })
}

/// Append the 12 bytes of `header` to `out`, as given (nothing is validated).
pub fn encode_header(header: &Header, out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN);
    out.push(header.version);
    out.push(header.frame_type as u8);
    out.extend_from_slice(&header.flags.0.to_be_bytes());
    out.extend_from_slice(&header.stream_id.to_be_bytes());
    out.extend_from_slice(&header.length.to_be_bytes());
}

/// Append a whole Data frame: its header (`length` = `payload.len()`) and payload.
///
/// # Panics
///
/// If `payload` is longer than `u32::MAX` bytes; the caller splits data into
/// frames that fit the peer's window, which is far smaller.
pub fn data(stream_id: u32, flags: Flags, payload: &[u8], out: &mut Vec<u8>) {
    let length = u32::try_from(payload.len()).expect("a yamux data frame holds at most 4 GiB");
    out.reserve(HEADER_LEN + payload.len());
    encode_header(&Header::new(FrameType::Data, flags, stream_id, length), out);
    out.extend_from_slice(payload);
}

/// Append a WindowUpdate frame growing `stream_id`'s window by `delta` bytes
/// (with SYN or ACK it also opens or accepts the stream).
pub fn window_update(stream_id: u32, flags: Flags, delta: u32, out: &mut Vec<u8>) {
    encode_header(
        &Header::new(FrameType::WindowUpdate, flags, stream_id, delta),
        out,
    );
}

/// Append a Ping frame on stream 0: [`Flags::SYN`] to ask, [`Flags::ACK`] to
/// answer with the `opaque` value received.
pub fn ping(flags: Flags, opaque: u32, out: &mut Vec<u8>) {
    encode_header(&Header::new(FrameType::Ping, flags, 0, opaque), out);
}

/// Append a GoAway frame on stream 0 with the error `code`.
pub fn go_away(code: GoAwayCode, out: &mut Vec<u8>) {
    encode_header(
        &Header::new(FrameType::GoAway, Flags::NONE, 0, code as u32),
        out,
    );
}

/// Check that a Data frame of `len` bytes fits a receive window of `max` bytes.
pub fn validate_data_len(len: u32, max: u32) -> Result<(), YamuxError> {
    if len > max {
        Err(YamuxError::DataTooLong { len, max })
    } else {
        Ok(())
    }
}

/// True for a stream id a client opens: odd.
pub fn is_client_stream(stream_id: u32) -> bool {
    stream_id % 2 == 1
}

/// True for a stream id a server opens: even and non-zero (0 is the session).
pub fn is_server_stream(stream_id: u32) -> bool {
    stream_id != 0 && stream_id.is_multiple_of(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

    fn done(p: Parsed<Header>) -> Header {
        match p {
            Parsed::Done { value, consumed } => {
                assert_eq!(consumed, HEADER_LEN);
                value
            }
            Parsed::Incomplete => panic!("incomplete"),
        }
    }

    impl Arbitrary for Header {
        fn arbitrary(g: &mut Gen) -> Header {
            let frame_type = *g
                .choose(&[
                    FrameType::Data,
                    FrameType::WindowUpdate,
                    FrameType::Ping,
                    FrameType::GoAway,
                ])
                .expect("non-empty");
            Header::new(
                frame_type,
                Flags(u16::arbitrary(g)),
                u32::arbitrary(g),
                u32::arbitrary(g),
            )
        }
    }

    #[test]
    fn data_frame_layout_by_hand() {
        // version 0, type 0, flags SYN (0x0001), stream 1, length 5, "hello".
        let expect = [
            0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, b'h', b'e',
            b'l', b'l', b'o',
        ];
        let mut out = Vec::new();
        data(1, Flags::SYN, b"hello", &mut out);
        assert_eq!(out, expect);
        let h = done(parse_header(&out).unwrap());
        assert_eq!(h, Header::new(FrameType::Data, Flags::SYN, 1, 5));
        assert_eq!(h.payload_len(), 5);
    }

    #[test]
    fn window_update_layout_by_hand() {
        // type 1, flags ACK|FIN (0x0006), stream 0x01020304, delta 0x00040000.
        let expect = [
            0x00, 0x01, 0x00, 0x06, 0x01, 0x02, 0x03, 0x04, 0x00, 0x04, 0x00, 0x00,
        ];
        let mut out = Vec::new();
        window_update(
            0x0102_0304,
            Flags::ACK | Flags::FIN,
            INITIAL_WINDOW,
            &mut out,
        );
        assert_eq!(out, expect);
        let h = done(parse_header(&out).unwrap());
        assert_eq!(h.length, 256 * 1024);
        assert!(h.flags.contains(Flags::ACK) && h.flags.contains(Flags::FIN));
        assert!(!h.flags.contains(Flags::RST));
        assert_eq!(h.payload_len(), 0);
    }

    #[test]
    fn ping_layout_by_hand() {
        // type 2, flags SYN, stream 0, opaque 0xDEADBEEF.
        let expect = [
            0x00, 0x02, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0xDE, 0xAD, 0xBE, 0xEF,
        ];
        let mut out = Vec::new();
        ping(Flags::SYN, 0xDEAD_BEEF, &mut out);
        assert_eq!(out, expect);
        assert_eq!(
            done(parse_header(&out).unwrap()),
            Header::new(FrameType::Ping, Flags::SYN, 0, 0xDEAD_BEEF)
        );
    }

    #[test]
    fn go_away_layout_by_hand() {
        // type 3, no flags, stream 0, code 1 (protocol error).
        let expect = [
            0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
        ];
        let mut out = Vec::new();
        go_away(GoAwayCode::ProtocolError, &mut out);
        assert_eq!(out, expect);
        let h = done(parse_header(&out).unwrap());
        assert_eq!(h.go_away_code(), Some(GoAwayCode::ProtocolError));
        assert_eq!(h.payload_len(), 0);
    }

    #[test]
    fn flags_and_constants() {
        assert_eq!(
            [Flags::SYN, Flags::ACK, Flags::FIN, Flags::RST].map(Flags::bits),
            [1, 2, 4, 8]
        );
        let mut f = Flags::NONE;
        f |= Flags::RST;
        assert!(f.contains(Flags::RST) && f.contains(Flags::NONE) && !f.contains(Flags::SYN));
        assert_eq!((HEADER_LEN, VERSION, INITIAL_WINDOW), (12, 0, 262_144));
        assert_eq!(GoAwayCode::from_u32(3), None);
        assert_eq!(GoAwayCode::from_u32(2), Some(GoAwayCode::InternalError));
    }

    #[test]
    fn unsupported_version_is_an_error() {
        for version in [1, 2, 0xFF] {
            let mut bytes = [0u8; HEADER_LEN];
            bytes[0] = version;
            assert_eq!(
                parse_header(&bytes),
                Err(YamuxError::UnsupportedVersion { version })
            );
        }
    }

    #[test]
    fn unknown_type_is_an_error() {
        for frame_type in [4, 5, 0x80, 0xFF] {
            let mut bytes = [0u8; HEADER_LEN];
            bytes[1] = frame_type;
            assert_eq!(
                parse_header(&bytes),
                Err(YamuxError::UnknownType { frame_type })
            );
        }
    }

    #[test]
    fn short_input_is_incomplete_even_if_bad() {
        assert_eq!(parse_header(&[]), Ok(Parsed::Incomplete));
        assert_eq!(parse_header(&[9, 9, 9]), Ok(Parsed::Incomplete));
    }

    #[test]
    fn parse_ignores_bytes_after_the_header() {
        let mut out = Vec::new();
        data(2, Flags::NONE, &[1, 2, 3], &mut out);
        assert_eq!(
            parse_header(&out[..HEADER_LEN + 1]),
            Ok(Parsed::Done {
                value: Header::new(FrameType::Data, Flags::NONE, 2, 3),
                consumed: HEADER_LEN,
            })
        );
    }

    #[test]
    fn validate_stream_id_rules() {
        for t in [FrameType::Ping, FrameType::GoAway] {
            assert_eq!(Header::new(t, Flags::NONE, 0, 0).validate(), Ok(()));
            assert_eq!(
                Header::new(t, Flags::NONE, 3, 0).validate(),
                Err(YamuxError::SessionFrameOnStream {
                    frame_type: t,
                    stream_id: 3
                })
            );
        }
        for t in [FrameType::Data, FrameType::WindowUpdate] {
            assert_eq!(Header::new(t, Flags::SYN, 1, 0).validate(), Ok(()));
            assert_eq!(Header::new(t, Flags::SYN, 2, 0).validate(), Ok(()));
            assert_eq!(Header::new(t, Flags::SYN, u32::MAX, 0).validate(), Ok(()));
            assert_eq!(
                Header::new(t, Flags::SYN, 0, 0).validate(),
                Err(YamuxError::StreamFrameOnSession { frame_type: t })
            );
        }
    }

    #[test]
    fn validate_data_len_against_a_window() {
        assert_eq!(validate_data_len(0, 0), Ok(()));
        assert_eq!(validate_data_len(INITIAL_WINDOW, INITIAL_WINDOW), Ok(()));
        assert_eq!(
            validate_data_len(INITIAL_WINDOW + 1, INITIAL_WINDOW),
            Err(YamuxError::DataTooLong {
                len: INITIAL_WINDOW + 1,
                max: INITIAL_WINDOW
            })
        );
    }

    #[test]
    fn stream_id_parity() {
        assert!(!is_client_stream(0) && !is_server_stream(0));
        assert!(is_client_stream(1) && !is_server_stream(1));
        assert!(is_server_stream(2) && !is_client_stream(2));
        assert!(is_client_stream(u32::MAX) && is_server_stream(u32::MAX - 1));
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        fn prop(header: Header) -> bool {
            let mut out = Vec::new();
            encode_header(&header, &mut out);
            out.len() == HEADER_LEN
                && (0..out.len()).all(|cut| parse_header(&out[..cut]) == Ok(Parsed::Incomplete))
        }
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(Header) -> bool);
    }

    #[test]
    fn encode_parse_roundtrip() {
        fn prop(header: Header, tail: Vec<u8>) -> bool {
            let mut out = Vec::new();
            encode_header(&header, &mut out);
            out.extend_from_slice(&tail);
            parse_header(&out)
                == Ok(Parsed::Done {
                    value: header,
                    consumed: HEADER_LEN,
                })
        }
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(Header, Vec<u8>) -> bool);
    }

    #[test]
    fn never_panics_on_any_bytes() {
        fn prop(head: [u8; 12], version_zero: bool, tail: Vec<u8>) -> TestResult {
            let mut bytes = head.to_vec();
            // Half the cases get past the version check, so types are exercised too.
            if version_zero {
                bytes[0] = 0;
            }
            bytes.extend_from_slice(&tail);
            match parse_header(&bytes) {
                Ok(Parsed::Done { value, consumed }) => TestResult::from_bool(
                    consumed == HEADER_LEN
                        && value.version == VERSION
                        && bytes[1] == value.frame_type as u8,
                ),
                Ok(Parsed::Incomplete) => TestResult::failed(),
                Err(YamuxError::UnsupportedVersion { version }) => {
                    TestResult::from_bool(version == bytes[0] && version != 0)
                }
                Err(YamuxError::UnknownType { frame_type }) => {
                    TestResult::from_bool(bytes[0] == 0 && frame_type == bytes[1] && frame_type > 3)
                }
                Err(_) => TestResult::failed(),
            }
        }
        QuickCheck::new()
            .tests(1000)
            .quickcheck(prop as fn([u8; 12], bool, Vec<u8>) -> TestResult);
    }
}
