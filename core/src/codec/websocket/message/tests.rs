use super::*;
use crate::codec::websocket::{FrameHeader, encode_frame_header};
use quickcheck::{QuickCheck, TestResult};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn read_all(reader: &mut MessageReader, bytes: &[u8]) -> Result<Vec<Message>, WsError> {
    reader.messages(bytes).collect()
}

fn client(bytes: &[u8]) -> Result<Vec<Message>, WsError> {
    read_all(&mut MessageReader::new(Role::Client, 1 << 20), bytes)
}

fn server(bytes: &[u8]) -> Result<Vec<Message>, WsError> {
    read_all(&mut MessageReader::new(Role::Server, 1 << 20), bytes)
}

/// An unmasked frame, as a server sends it.
fn frame(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(opcode, fin, None, payload, &mut out);
    out
}

fn text(s: &str) -> Message {
    Message::Text(s.to_owned())
}

#[test]
fn rfc_5_7_single_frame_unmasked_text() {
    let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    assert_eq!(client(&bytes), Ok(vec![text("Hello")]));
}

#[test]
fn rfc_5_7_single_frame_masked_text() {
    let bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(server(&bytes), Ok(vec![text("Hello")]));
    let mut out = Vec::new();
    encode_message(&text("Hello"), Some(MASK), &mut out);
    assert_eq!(out, bytes);
}

#[test]
fn rfc_5_7_fragmented_unmasked_text() {
    let bytes = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    assert_eq!(client(&bytes), Ok(vec![text("Hello")]));
}

#[test]
fn rfc_5_7_unmasked_ping_and_masked_pong() {
    let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    assert_eq!(client(&ping), Ok(vec![Message::Ping(b"Hello".to_vec())]));
    let pong = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(server(&pong), Ok(vec![Message::Pong(b"Hello".to_vec())]));
}

#[test]
fn rfc_5_7_256_byte_and_64_kib_binary_messages() {
    for (len, header) in [
        (256, &[0x82, 0x7E, 0x01, 0x00][..]),
        (65536, &[0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00]),
    ] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut out = Vec::new();
        encode_message(&Message::Binary(payload.clone()), None, &mut out);
        assert_eq!(&out[..header.len()], header);
        assert_eq!(client(&out), Ok(vec![Message::Binary(payload)]));
    }
}

#[test]
fn control_frames_interleave_between_fragments() {
    let bytes = [
        frame(OpCode::Binary, false, b"ab"),
        frame(OpCode::Ping, true, b"p"),
        frame(OpCode::Continuation, false, b""),
        frame(OpCode::Pong, true, b""),
        frame(OpCode::Close, true, b""),
        frame(OpCode::Continuation, true, b"cd"),
    ]
    .concat();
    assert_eq!(
        client(&bytes),
        Ok(vec![
            Message::Ping(b"p".to_vec()),
            Message::Pong(vec![]),
            Message::Close(None),
            Message::Binary(b"abcd".to_vec()),
        ])
    );
}

#[test]
fn empty_messages_complete_without_payload_bytes() {
    let bytes = [
        frame(OpCode::Text, true, b""),
        frame(OpCode::Binary, true, b""),
    ]
    .concat();
    assert_eq!(client(&bytes), Ok(vec![text(""), Message::Binary(vec![])]));
}

#[test]
fn fragmented_control_frame_is_a_protocol_error() {
    for opcode in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
        let err = client(&frame(opcode, false, b"")).unwrap_err();
        assert_eq!(
            (err.clone(), err.close_code()),
            (WsError::FragmentedControl, 1002)
        );
    }
}

#[test]
fn control_frame_over_125_bytes_is_a_protocol_error() {
    assert_eq!(
        client(&frame(OpCode::Ping, true, &[0; 125])).map(|m| m.len()),
        Ok(1)
    );
    assert_eq!(
        client(&frame(OpCode::Ping, true, &[0; 126])),
        Err(WsError::ControlTooLong { len: 126 })
    );
}

#[test]
fn continuation_without_a_message_is_a_protocol_error() {
    for fin in [true, false] {
        assert_eq!(
            client(&frame(OpCode::Continuation, fin, b"x")),
            Err(WsError::UnexpectedContinuation)
        );
    }
    // Also right after a message ended.
    let bytes = [
        frame(OpCode::Text, true, b"a"),
        frame(OpCode::Continuation, true, b""),
    ]
    .concat();
    let mut reader = MessageReader::new(Role::Client, 100);
    let got: Vec<_> = reader.messages(&bytes).collect();
    assert_eq!(
        got,
        vec![Ok(text("a")), Err(WsError::UnexpectedContinuation)]
    );
}

#[test]
fn new_data_frame_during_a_fragmented_message_is_a_protocol_error() {
    for opcode in [OpCode::Text, OpCode::Binary] {
        let bytes = [frame(OpCode::Text, false, b"a"), frame(opcode, true, b"b")].concat();
        assert_eq!(client(&bytes), Err(WsError::MessageInProgress));
    }
}

#[test]
fn nonzero_rsv_bits_are_a_protocol_error() {
    for rsv in 1..=7 {
        let mut bytes = Vec::new();
        let header = FrameHeader {
            fin: true,
            rsv,
            opcode: OpCode::Text,
            mask: None,
            len: 0,
        };
        encode_frame_header(&header, &mut bytes);
        assert_eq!(client(&bytes), Err(WsError::ReservedBits { rsv }));
    }
}

#[test]
fn reserved_opcodes_are_a_protocol_error() {
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        let err = client(&[0x80 | opcode, 0]).unwrap_err();
        assert_eq!(
            (err.clone(), err.close_code()),
            (WsError::UnknownOpcode { opcode }, 1002)
        );
    }
}

#[test]
fn server_rejects_unmasked_frames_and_client_rejects_masked_ones() {
    assert_eq!(
        server(&frame(OpCode::Text, true, b"hi")),
        Err(WsError::UnmaskedFrame)
    );
    let mut masked = Vec::new();
    encode_frame(OpCode::Text, true, Some(MASK), b"hi", &mut masked);
    assert_eq!(client(&masked), Err(WsError::MaskedFrame));
    assert_eq!(server(&masked), Ok(vec![text("hi")]));
}

#[test]
fn too_big_is_detected_from_the_header_before_the_payload() {
    let mut reader = MessageReader::new(Role::Client, 10);
    // Only the header of an 11-byte frame: no payload byte has arrived.
    let header = &frame(OpCode::Binary, true, &[0; 11])[..2];
    let err = reader.read(header).unwrap_err();
    assert_eq!(
        (err.clone(), err.close_code()),
        (WsError::TooBig { max: 10 }, 1009)
    );
    assert_eq!(reader.buffered(), 0);
    // A 64-bit length near 2^63 does not overflow the check.
    let huge = [0x82, 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    assert_eq!(
        MessageReader::new(Role::Client, usize::MAX)
            .read(&huge)
            .map(|r| r.consumed),
        Ok(10)
    );
    assert_eq!(client(&huge), Err(WsError::TooBig { max: 1 << 20 }));
}

#[test]
fn fragments_summing_above_the_cap_are_too_big() {
    let ok = [
        frame(OpCode::Text, false, b"12345"),
        frame(OpCode::Continuation, true, b"67890"),
    ]
    .concat();
    assert_eq!(
        read_all(&mut MessageReader::new(Role::Client, 10), &ok),
        Ok(vec![text("1234567890")])
    );
    let big = [
        frame(OpCode::Text, false, b"12345"),
        frame(OpCode::Continuation, true, b"678901"),
    ]
    .concat();
    assert_eq!(
        read_all(&mut MessageReader::new(Role::Client, 10), &big),
        Err(WsError::TooBig { max: 10 })
    );
}

#[test]
fn invalid_utf8_text_is_invalid_data_but_split_characters_are_fine() {
    let err = client(&frame(OpCode::Text, true, &[0xC3])).unwrap_err();
    assert_eq!(
        (err.clone(), err.close_code()),
        (WsError::InvalidUtf8, 1007)
    );
    // "é" = C3 A9, split across two fragments.
    let split = [
        frame(OpCode::Text, false, &[0xC3]),
        frame(OpCode::Continuation, true, &[0xA9]),
    ]
    .concat();
    assert_eq!(client(&split), Ok(vec![text("é")]));
    // Binary messages are never checked.
    assert_eq!(
        client(&frame(OpCode::Binary, true, &[0xFF])),
        Ok(vec![Message::Binary(vec![0xFF])])
    );
}

#[test]
fn close_payload_is_empty_or_code_and_utf8_reason() {
    assert_eq!(
        client(&frame(OpCode::Close, true, b"")),
        Ok(vec![Message::Close(None)])
    );
    assert_eq!(
        client(&frame(OpCode::Close, true, b"\x03\xe8bye")),
        Ok(vec![Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "bye".into()
        }))])
    );
    assert_eq!(
        client(&frame(OpCode::Close, true, b"\x03")),
        Err(WsError::CloseTooShort)
    );
    assert_eq!(
        client(&frame(OpCode::Close, true, b"\x03\xe8\xff")),
        Err(WsError::InvalidUtf8)
    );
}

#[test]
fn close_codes_are_valid_per_rfc_7_4() {
    for code in 0..=u16::MAX {
        let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
        assert_eq!(is_valid_close_code(code), valid, "{code}");
    }
    for code in [0, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000, u16::MAX] {
        let mut bytes = Vec::new();
        encode_close(code, "", None, &mut bytes);
        let err = client(&bytes).unwrap_err();
        assert_eq!(
            (err.clone(), err.close_code()),
            (WsError::InvalidCloseCode { code }, 1002)
        );
    }
    for code in [1000, 1003, 1007, 1011, 3000, 4999] {
        let mut bytes = Vec::new();
        encode_close(code, "r", None, &mut bytes);
        assert!(client(&bytes).is_ok(), "{code}");
    }
}

#[test]
fn encode_close_cuts_the_reason_at_a_char_boundary() {
    let reason = "é".repeat(100); // 200 bytes
    let mut out = Vec::new();
    encode_close(1000, &reason, None, &mut out);
    let Ok(messages) = client(&out) else {
        panic!("invalid close")
    };
    let [Message::Close(Some(frame))] = &messages[..] else {
        panic!("{messages:?}")
    };
    assert_eq!(frame.reason, "é".repeat(61)); // 122 bytes: 123 would split a character
}

#[test]
fn encode_message_cuts_ping_and_pong_to_125_bytes() {
    let mut out = Vec::new();
    encode_message(&Message::Ping(vec![1; 200]), None, &mut out);
    assert_eq!(client(&out), Ok(vec![Message::Ping(vec![1; 125])]));
}

#[test]
fn errors_are_sticky() {
    let mut reader = MessageReader::new(Role::Server, 100);
    assert_eq!(
        reader.read(&frame(OpCode::Text, true, b"")),
        Err(WsError::UnmaskedFrame)
    );
    let mut good = Vec::new();
    encode_frame(OpCode::Text, true, Some(MASK), b"hi", &mut good);
    assert_eq!(reader.read(&good), Err(WsError::UnmaskedFrame));
}

#[test]
fn read_stops_after_each_message_and_reports_what_it_took() {
    let bytes = [
        frame(OpCode::Text, true, b"a"),
        frame(OpCode::Text, true, b"bc"),
    ]
    .concat();
    let mut reader = MessageReader::new(Role::Client, 100);
    assert_eq!(
        reader.read(&bytes),
        Ok(Read {
            consumed: 3,
            message: Some(text("a"))
        })
    );
    assert_eq!(
        reader.read(&bytes[3..6]),
        Ok(Read {
            consumed: 3,
            message: None
        })
    );
    assert_eq!(reader.buffered(), 1);
    assert_eq!(
        reader.read(&bytes[6..]),
        Ok(Read {
            consumed: 1,
            message: Some(text("bc"))
        })
    );
}

// ---- properties ----

/// A deterministic generator for the properties' choices (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn mask(&mut self, masked: bool) -> Option<[u8; 4]> {
        masked.then(|| (self.next() as u32).to_be_bytes())
    }
}

/// Turn quickcheck's raw values into messages, encode them with random
/// fragmentation, random masks (if `masked`) and pings between fragments, and
/// return the stream and the messages a reader must yield, in order.
fn script(raw: Vec<(u8, Vec<u8>, String)>, seed: u64, masked: bool) -> (Vec<u8>, Vec<Message>) {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut expect = Vec::new();
    for (kind, bytes, string) in raw {
        let control = bytes[..bytes.len().min(MAX_CONTROL_PAYLOAD)].to_vec();
        let (opcode, payload, message) = match kind % 6 {
            0 | 1 => (
                OpCode::Text,
                string.clone().into_bytes(),
                Message::Text(string),
            ),
            2 | 3 => (OpCode::Binary, bytes.clone(), Message::Binary(bytes)),
            4 => {
                let message = if (kind / 6) % 2 == 0 {
                    Message::Ping(control)
                } else {
                    Message::Pong(control)
                };
                encode_message(&message, rng.mask(masked), &mut out);
                expect.push(message);
                continue;
            }
            _ => {
                let code = [1000, 1001, 1011, 3000, 4999][rng.below(5)];
                let mut reason: String = string.chars().take(20).collect();
                while reason.len() > 123 {
                    reason.pop();
                }
                let message = Message::Close(Some(CloseFrame { code, reason }));
                encode_message(&message, rng.mask(masked), &mut out);
                expect.push(message);
                continue;
            }
        };
        // Cut points anywhere, even inside a UTF-8 character.
        let mut cuts: Vec<usize> = (0..rng.below(4))
            .map(|_| rng.below(payload.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(payload.len());
        let mut start = 0;
        for (i, &end) in cuts.iter().enumerate() {
            let fin = i + 1 == cuts.len();
            let op = if i == 0 { opcode } else { OpCode::Continuation };
            encode_frame(op, fin, rng.mask(masked), &payload[start..end], &mut out);
            start = end;
            if !fin && rng.below(3) == 0 {
                let ping = Message::Ping(vec![i as u8; rng.below(4)]);
                encode_message(&ping, rng.mask(masked), &mut out);
                expect.push(ping);
            }
        }
        expect.push(message);
    }
    (out, expect)
}

/// Feed `bytes` in chunks of 1..=`max_chunk` bytes (random sizes), checking the
/// memory bound after every read.
fn feed_chunked(
    reader: &mut MessageReader,
    bytes: &[u8],
    max_chunk: usize,
    rng: &mut Rng,
) -> Result<Vec<Message>, WsError> {
    let mut got = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let chunk = 1 + rng.below(max_chunk.min(rest.len()));
        for message in reader.messages(&rest[..chunk]) {
            got.push(message?);
        }
        assert!(reader.buffered() <= reader.max_message + MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD);
        assert!(reader.data.capacity() <= reader.max_message.max(1));
        rest = &rest[chunk..];
    }
    Ok(got)
}

#[test]
fn roundtrip_random_messages_with_fragments_and_pings_for_both_roles() {
    fn prop(raw: Vec<(u8, Vec<u8>, String)>, seed: u64, as_server: bool) -> bool {
        let (role, masked) = if as_server {
            (Role::Server, true)
        } else {
            (Role::Client, false)
        };
        let (bytes, expect) = script(raw, seed, masked);
        read_all(&mut MessageReader::new(role, 1 << 16), &bytes) == Ok(expect)
    }
    QuickCheck::new()
        .tests(200)
        .quickcheck(prop as fn(Vec<(u8, Vec<u8>, String)>, u64, bool) -> bool);
}

#[test]
fn any_split_of_the_stream_yields_the_same_messages() {
    fn prop(raw: Vec<(u8, Vec<u8>, String)>, seed: u64, as_server: bool, max_chunk: u8) -> bool {
        let (role, masked) = if as_server {
            (Role::Server, true)
        } else {
            (Role::Client, false)
        };
        let (bytes, expect) = script(raw, seed, masked);
        let mut reader = MessageReader::new(role, 1 << 16);
        let mut rng = Rng(seed ^ 0xA5A5);
        feed_chunked(&mut reader, &bytes, usize::from(max_chunk) + 1, &mut rng) == Ok(expect)
    }
    QuickCheck::new()
        .tests(200)
        .quickcheck(prop as fn(Vec<(u8, Vec<u8>, String)>, u64, bool, u8) -> bool);
}

/// Every message respects the caps, and the reader's memory stays bounded
/// (checked inside `feed_chunked`); errors are fine, panics are not.
fn within_caps(result: &Result<Vec<Message>, WsError>, max: usize) -> bool {
    result.as_ref().map_or(true, |messages| {
        messages.iter().all(|m| match m {
            Message::Text(t) => t.len() <= max,
            Message::Binary(b) => b.len() <= max,
            Message::Ping(p) | Message::Pong(p) => p.len() <= MAX_CONTROL_PAYLOAD,
            Message::Close(c) => c.as_ref().is_none_or(|c| c.reason.len() <= 123),
        })
    })
}

#[test]
fn arbitrary_bytes_never_panic_nor_exceed_the_cap() {
    fn prop(bytes: Vec<u8>, as_server: bool, seed: u64) -> TestResult {
        const MAX: usize = 40;
        let role = if as_server {
            Role::Server
        } else {
            Role::Client
        };
        let mut reader = MessageReader::new(role, MAX);
        let result = feed_chunked(&mut reader, &bytes, 16, &mut Rng(seed));
        TestResult::from_bool(within_caps(&result, MAX))
    }
    QuickCheck::new()
        .tests(1000)
        .quickcheck(prop as fn(Vec<u8>, bool, u64) -> TestResult);
}

#[test]
fn corrupted_valid_streams_never_panic_nor_exceed_the_cap() {
    fn prop(
        raw: Vec<(u8, Vec<u8>, String)>,
        seed: u64,
        as_server: bool,
        flips: Vec<(u16, u8)>,
    ) -> TestResult {
        const MAX: usize = 40;
        let (role, masked) = if as_server {
            (Role::Server, true)
        } else {
            (Role::Client, false)
        };
        let (mut bytes, _) = script(raw, seed, masked);
        if bytes.is_empty() {
            return TestResult::discard();
        }
        for (at, xor) in flips {
            let at = usize::from(at) % bytes.len();
            bytes[at] ^= xor;
        }
        let mut reader = MessageReader::new(role, MAX);
        let result = feed_chunked(&mut reader, &bytes, 32, &mut Rng(seed));
        TestResult::from_bool(within_caps(&result, MAX))
    }
    QuickCheck::new().tests(300).quickcheck(
        prop as fn(Vec<(u8, Vec<u8>, String)>, u64, bool, Vec<(u16, u8)>) -> TestResult,
    );
}
