//! Tests of the STUN codec; names cite `spec/stun.md` (ST-n).

use super::*;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

/// The transaction id of the RFC 5769 samples 2.1–2.3.
const RFC5769_TID: [u8; 12] = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 §2.1 "Sample Request": SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
/// MESSAGE-INTEGRITY, FINGERPRINT. Padding is spaces (0x20).
const RFC5769_REQUEST: [u8; 108] = [
    0x00, 0x01, 0x00, 0x58, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x10, 0x53, 0x54, 0x55, 0x4e, 0x20, 0x74, 0x65, 0x73,
    0x74, 0x20, 0x63, 0x6c, 0x69, 0x65, 0x6e, 0x74, 0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x01, 0xff,
    0x80, 0x29, 0x00, 0x08, 0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36, 0x00, 0x06, 0x00, 0x09,
    0x65, 0x76, 0x74, 0x6a, 0x3a, 0x68, 0x36, 0x76, 0x59, 0x20, 0x20, 0x20, 0x00, 0x08, 0x00, 0x14,
    0x9a, 0xea, 0xa7, 0x0c, 0xbf, 0xd8, 0xcb, 0x56, 0x78, 0x1e, 0xf2, 0xb5, 0xb2, 0xd3, 0xf2, 0x49,
    0xc1, 0xb5, 0x71, 0xa2, 0x80, 0x28, 0x00, 0x04, 0xe5, 0x7a, 0x3b, 0xcf,
];

/// RFC 5769 §2.2 "Sample IPv4 Response": SOFTWARE, XOR-MAPPED-ADDRESS,
/// MESSAGE-INTEGRITY, FINGERPRINT.
const RFC5769_IPV4_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];

/// RFC 5769 §2.3 "Sample IPv6 Response": as 2.2 with an IPv6 XOR-MAPPED-ADDRESS.
const RFC5769_IPV6_RESPONSE: [u8; 92] = [
    0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa,
    0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9, 0x00, 0x08, 0x00, 0x14,
    0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9, 0x7c, 0x82, 0x92, 0xc2, 0x75,
    0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb, 0x0b, 0x4c,
];

const TID: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

fn v4() -> SocketAddr {
    "192.0.2.1:32853".parse().unwrap()
}

fn v6() -> SocketAddr {
    "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .unwrap()
}

fn encoded(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode(message, &mut out).unwrap();
    out
}

fn with_attributes(attributes: Vec<Attribute>) -> Message {
    Message {
        attributes,
        ..Message::binding_request(TID)
    }
}

/// A header (Binding request, [`TID`]) followed by `attrs`, length set to match.
fn raw_message(attrs: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00, 0x01];
    out.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&TID);
    out.extend_from_slice(attrs);
    out
}

/// Replace the last 4 bytes (a FINGERPRINT value) with the right one.
fn refingerprint(bytes: &mut [u8]) {
    let at = bytes.len() - 4;
    let value = fingerprint_of(&bytes[..at - 4]);
    bytes[at..].copy_from_slice(&value.to_be_bytes());
}

// ---- RFC 5769 test vectors -------------------------------------------------------

#[test]
fn st7_rfc5769_vectors_fingerprints_verify_independently() {
    // The vectors were transcribed correctly: their FINGERPRINTs (CRC-32 over
    // every byte before them) check out without going through `parse`.
    for (bytes, fingerprint) in [
        (&RFC5769_REQUEST[..], 0xe57a_3bcf),
        (&RFC5769_IPV4_RESPONSE[..], 0xc07d_4c96),
        (&RFC5769_IPV6_RESPONSE[..], 0xc8fb_0b4c),
    ] {
        assert_eq!(fingerprint_of(&bytes[..bytes.len() - 8]), fingerprint);
        assert!(is_stun(bytes));
    }
}

/// HMAC-SHA1 (RFC 2104) of `data` under a key of at most 64 bytes.
fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    let inner: Vec<u8> = block
        .iter()
        .map(|b| b ^ 0x36)
        .chain(data.iter().copied())
        .collect();
    let mut outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    outer.extend_from_slice(&Sha1::digest(&inner));
    Sha1::digest(&outer).into()
}

#[test]
fn st8_rfc5769_vectors_message_integrity_checks_out() {
    // Not something ferry does (ST-8): a second witness that the vectors are the
    // published bytes. MESSAGE-INTEGRITY is HMAC-SHA1 keyed by the RFC's
    // short-term password over the message before it, the header's length
    // counting up to the end of MESSAGE-INTEGRITY (FINGERPRINT excluded).
    let key = b"VOkJxbRl1RmTxUk/WvJxBt";
    for bytes in [
        &RFC5769_REQUEST[..],
        &RFC5769_IPV4_RESPONSE[..],
        &RFC5769_IPV6_RESPONSE[..],
    ] {
        let mi_at = bytes.len() - 8 - 24;
        assert_eq!(&bytes[mi_at..mi_at + 4], &[0x00, 0x08, 0x00, 0x14]);
        let mut covered = bytes[..mi_at].to_vec();
        let length = u16::try_from(bytes.len() - 8 - HEADER_LEN).unwrap();
        covered[2..4].copy_from_slice(&length.to_be_bytes());
        assert_eq!(hmac_sha1(key, &covered)[..], bytes[mi_at + 4..mi_at + 24]);
    }
}

#[test]
fn st1_st3_st8_rfc5769_sample_request() {
    let m = parse(&RFC5769_REQUEST).unwrap();
    assert_eq!((m.class, m.method), (Class::Request, Method::BINDING));
    assert!(m.is_binding_request());
    assert_eq!(m.transaction_id, RFC5769_TID);
    assert_eq!(m.software(), Some("STUN test client"));
    assert_eq!(m.mapped_address(), None);
    assert_eq!(
        m.attributes,
        vec![
            Attribute::Software("STUN test client".into()),
            // PRIORITY and ICE-CONTROLLED (ICE, RFC 8445): not decoded.
            Attribute::Unknown {
                kind: 0x0024,
                value: vec![0x6e, 0x00, 0x01, 0xff],
            },
            Attribute::Unknown {
                kind: 0x8029,
                value: vec![0x93, 0x2f, 0xf9, 0xb1, 0x51, 0x26, 0x3b, 0x36],
            },
            // USERNAME "evtj:h6vY": 9 bytes, its 3 padding spaces dropped.
            Attribute::Unknown {
                kind: kind::USERNAME,
                value: b"evtj:h6vY".to_vec(),
            },
            Attribute::Unknown {
                kind: kind::MESSAGE_INTEGRITY,
                value: RFC5769_REQUEST[80..100].to_vec(),
            },
            Attribute::Fingerprint(0xe57a_3bcf),
        ]
    );
    assert_eq!(m.fingerprint(), Some(0xe57a_3bcf));
    assert_eq!(
        m.unknown_comprehension_required(),
        vec![0x0024, kind::USERNAME, kind::MESSAGE_INTEGRITY]
    );
}

#[test]
fn st4_st5_rfc5769_sample_ipv4_response() {
    let m = parse(&RFC5769_IPV4_RESPONSE).unwrap();
    assert_eq!(
        (m.class, m.method),
        (Class::SuccessResponse, Method::BINDING)
    );
    assert_eq!(m.transaction_id, RFC5769_TID);
    assert_eq!(m.software(), Some("test vector"));
    assert_eq!(m.mapped_address(), Some(v4()));
    assert_eq!(m.attributes[1], Attribute::XorMappedAddress(v4()));
    assert_eq!(
        m.attributes[2],
        Attribute::Unknown {
            kind: kind::MESSAGE_INTEGRITY,
            value: RFC5769_IPV4_RESPONSE[52..72].to_vec(),
        }
    );
    assert_eq!(m.fingerprint(), Some(0xc07d_4c96));
    assert_eq!(m.attributes.len(), 4);
}

#[test]
fn st4_st5_rfc5769_sample_ipv6_response() {
    let m = parse(&RFC5769_IPV6_RESPONSE).unwrap();
    assert_eq!(
        (m.class, m.method),
        (Class::SuccessResponse, Method::BINDING)
    );
    assert_eq!(m.transaction_id, RFC5769_TID);
    assert_eq!(m.software(), Some("test vector"));
    assert_eq!(m.mapped_address(), Some(v6()));
    assert_eq!(m.attributes[1], Attribute::XorMappedAddress(v6()));
    assert!(matches!(
        &m.attributes[2],
        Attribute::Unknown { kind: kind::MESSAGE_INTEGRITY, value } if value.len() == 20
    ));
    assert_eq!(m.fingerprint(), Some(0xc8fb_0b4c));
    assert_eq!(m.attributes.len(), 4);
}

#[test]
fn st4_xor_mapped_address_encodes_like_rfc5769() {
    // The encoder reproduces the samples' XOR-MAPPED-ADDRESS attributes byte for byte.
    let mut m = Message::new(Class::SuccessResponse, Method::BINDING, RFC5769_TID);
    m.attributes.push(Attribute::XorMappedAddress(v4()));
    assert_eq!(encoded(&m)[HEADER_LEN..], RFC5769_IPV4_RESPONSE[36..48]);
    m.attributes = vec![Attribute::XorMappedAddress(v6())];
    assert_eq!(encoded(&m)[HEADER_LEN..], RFC5769_IPV6_RESPONSE[36..60]);
}

#[test]
fn st3_st7_rfc5769_reencode_with_zero_padding() {
    // The samples pad with spaces; ferry pads with zeros, so a re-encoded sample
    // differs in its padding and FINGERPRINT but parses to the same attributes.
    for bytes in [
        &RFC5769_REQUEST[..],
        &RFC5769_IPV4_RESPONSE[..],
        &RFC5769_IPV6_RESPONSE[..],
    ] {
        let m = parse(bytes).unwrap();
        let out = encoded(&m);
        assert_eq!(out.len(), bytes.len());
        let again = parse(&out).unwrap();
        let n = m.attributes.len() - 1;
        assert_eq!(again.attributes[..n], m.attributes[..n]);
        assert_eq!(
            again.fingerprint(),
            Some(fingerprint_of(&out[..out.len() - 8]))
        );
        assert_eq!(encoded(&again), out);
    }
}

// ---- ST-1, ST-2: header and message type ---------------------------------------

#[test]
fn st2_message_type_interleaves_class_and_method() {
    assert_eq!(message_type(Class::Request, Method::BINDING), 0x0001);
    assert_eq!(message_type(Class::Indication, Method::BINDING), 0x0011);
    assert_eq!(
        message_type(Class::SuccessResponse, Method::BINDING),
        0x0101
    );
    assert_eq!(message_type(Class::ErrorResponse, Method::BINDING), 0x0111);
    // Allocate (0x003) error response and ChannelBind (0x009) success (RFC 8656).
    assert_eq!(message_type(Class::ErrorResponse, Method(0x003)), 0x0113);
    assert_eq!(message_type(Class::SuccessResponse, Method(0x009)), 0x0109);
    assert_eq!(
        message_type(Class::ErrorResponse, Method(MAX_METHOD)),
        0x3FFF
    );
    assert_eq!(message_type(Class::Request, Method(0x0080)), 0x0200);
    for method in 0..=MAX_METHOD {
        for class in [
            Class::Request,
            Class::Indication,
            Class::SuccessResponse,
            Class::ErrorResponse,
        ] {
            let t = message_type(class, Method(method));
            assert!(t <= 0x3FFF);
            assert_eq!(split_message_type(t), (class, Method(method)));
        }
    }
}

#[test]
fn st1_binding_request_layout_by_hand() {
    let expect = [
        0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];
    assert_eq!(encoded(&Message::binding_request(TID)), expect);
    assert_eq!(parse(&expect), Ok(Message::binding_request(TID)));
    assert!(is_stun(&expect));
}

#[test]
fn st1_encode_appends_to_out() {
    let mut out = vec![0xAA, 0xBB];
    encode(&Message::binding_request(TID), &mut out).unwrap();
    assert_eq!(out.len(), 2 + HEADER_LEN);
    assert_eq!(&out[..2], &[0xAA, 0xBB]);
    assert_eq!(parse(&out[2..]), Ok(Message::binding_request(TID)));
}

#[test]
fn st1_short_input_is_an_error() {
    for len in 0..HEADER_LEN {
        let bytes = &encoded(&Message::binding_request(TID))[..len];
        assert_eq!(parse(bytes), Err(StunError::TooShort { len }));
        assert!(!is_stun(bytes));
    }
}

#[test]
fn st1_top_bits_are_an_error() {
    for first_byte in [0x40, 0x80, 0xC0, 0x41] {
        let mut bytes = encoded(&Message::binding_request(TID));
        bytes[0] = first_byte;
        assert_eq!(parse(&bytes), Err(StunError::TopBitsSet { first_byte }));
        assert!(!is_stun(&bytes));
    }
}

#[test]
fn st1_bad_cookie_is_an_error() {
    let mut bytes = encoded(&Message::binding_request(TID));
    bytes[7] = 0x43;
    assert_eq!(
        parse(&bytes),
        Err(StunError::BadCookie {
            cookie: 0x2112_A443
        })
    );
    assert!(!is_stun(&bytes));
    // An RFC 3489 message (no cookie: a 128-bit transaction id) is not STUN here.
    bytes[4..8].copy_from_slice(&[0xb7, 0xe7, 0xa7, 0x01]);
    assert!(matches!(parse(&bytes), Err(StunError::BadCookie { .. })));
}

#[test]
fn st1_bad_length_is_an_error() {
    let m = Message::binding_success(TID, v4(), Some("ferry"));
    let good = encoded(&m);
    assert_eq!(good.len(), HEADER_LEN + 12 + 12 + 12);

    // Not a multiple of 4.
    let mut bytes = good.clone();
    bytes[3] = 31;
    assert_eq!(
        parse(&bytes),
        Err(StunError::UnalignedLength { length: 31 })
    );
    assert!(!is_stun(&bytes));

    // Datagram longer than the header says.
    let mut bytes = good.clone();
    bytes.extend_from_slice(&[0; 4]);
    assert_eq!(
        parse(&bytes),
        Err(StunError::LengthMismatch {
            declared: 56,
            actual: 60
        })
    );
    assert!(!is_stun(&bytes));

    // Datagram shorter than the header says (truncated in transit).
    let bytes = &good[..good.len() - 4];
    assert_eq!(
        parse(bytes),
        Err(StunError::LengthMismatch {
            declared: 56,
            actual: 52
        })
    );
    assert!(!is_stun(bytes));
}

// ---- ST-3: attributes, padding ----------------------------------------------------

#[test]
fn st3_truncated_attribute_is_an_error() {
    // XOR-MAPPED-ADDRESS claiming 64 bytes with 4 in the message.
    let bytes = raw_message(&[0x00, 0x20, 0x00, 0x40, 0x00, 0x01, 0x00, 0x00]);
    assert_eq!(
        parse(&bytes),
        Err(StunError::TruncatedAttribute {
            kind: 0x0020,
            len: 64,
            offset: 20
        })
    );
    assert!(is_stun(&bytes), "the header alone looks right");

    // A value that fits but whose padding does not: 5 bytes need 8.
    let bytes = raw_message(&[0x80, 0x22, 0x00, 0x05, b'a', b'b', b'c', b'd']);
    assert_eq!(
        parse(&bytes),
        Err(StunError::TruncatedAttribute {
            kind: kind::SOFTWARE,
            len: 5,
            offset: 20
        })
    );

    // The second attribute is the one cut short.
    let bytes = raw_message(&[0x80, 0x22, 0x00, 0x00, 0x7F, 0xFF, 0xFF, 0xFF]);
    assert_eq!(
        parse(&bytes),
        Err(StunError::TruncatedAttribute {
            kind: 0x7FFF,
            len: 0xFFFF,
            offset: 24
        })
    );
}

#[test]
fn st3_odd_length_strings_are_padded_with_zeros() {
    for (text, pad) in [
        ("", 0),
        ("a", 3),
        ("ab", 2),
        ("abc", 1),
        ("abcd", 0),
        ("abcde", 3),
    ] {
        let m = with_attributes(vec![Attribute::Software(text.into())]);
        let out = encoded(&m);
        let len = text.len();
        assert_eq!(out.len(), HEADER_LEN + 4 + len + pad);
        assert_eq!(
            usize::from(u16::from_be_bytes([out[2], out[3]])),
            4 + len + pad
        );
        assert_eq!(
            &out[HEADER_LEN..HEADER_LEN + 4],
            &[0x80, 0x22, 0, len as u8]
        );
        assert!(out[HEADER_LEN + 4 + len..].iter().all(|b| *b == 0));
        assert_eq!(parse(&out), Ok(m));
    }
}

#[test]
fn st3_padding_may_hold_anything() {
    // USERNAME "abcde" (kept raw) padded with 0xFF, then SOFTWARE "x" padded with 'y'.
    let bytes = raw_message(&[
        0x00, 0x06, 0x00, 0x05, b'a', b'b', b'c', b'd', b'e', 0xFF, 0xFF, 0xFF, 0x80, 0x22, 0x00,
        0x01, b'x', b'y', b'y', b'y',
    ]);
    let m = parse(&bytes).unwrap();
    assert_eq!(
        m.attributes,
        vec![
            Attribute::Unknown {
                kind: kind::USERNAME,
                value: b"abcde".to_vec()
            },
            Attribute::Software("x".into()),
        ]
    );
}

#[test]
fn st3_order_and_duplicates_are_kept() {
    let attributes = vec![
        Attribute::Software("one".into()),
        Attribute::MappedAddress(v4()),
        Attribute::Software("two".into()),
        Attribute::MappedAddress(v6()),
    ];
    let m = with_attributes(attributes);
    assert_eq!(parse(&encoded(&m)), Ok(m.clone()));
    assert_eq!(m.software(), Some("one"));
    assert_eq!(m.mapped_address(), Some(v4()));
}

#[test]
fn st3_unknown_attributes_roundtrip_and_comprehension() {
    let attributes = vec![
        Attribute::Unknown {
            kind: 0x7FFF,
            value: vec![],
        },
        Attribute::Unknown {
            kind: 0x8000,
            value: vec![1, 2, 3],
        },
        Attribute::Unknown {
            kind: 0x0024,
            value: vec![9; 7],
        },
        Attribute::Unknown {
            kind: 0x7FFF,
            value: vec![5],
        },
    ];
    let m = with_attributes(attributes.clone());
    assert_eq!(parse(&encoded(&m)), Ok(m.clone()));
    assert_eq!(m.unknown_comprehension_required(), vec![0x7FFF, 0x0024]);
    let required: Vec<bool> = attributes
        .iter()
        .map(Attribute::is_comprehension_required)
        .collect();
    assert_eq!(required, [true, false, true, true]);
    assert!(!Attribute::Software(String::new()).is_comprehension_required());
    assert!(Attribute::XorMappedAddress(v4()).is_comprehension_required());
}

// ---- ST-4 … ST-6: decoded attributes ------------------------------------------------

#[test]
fn st4_address_attributes_roundtrip_v4_and_v6() {
    let addrs = [
        v4(),
        v6(),
        "0.0.0.0:0".parse().unwrap(),
        "255.255.255.255:65535".parse().unwrap(),
        "[::]:1".parse().unwrap(),
        "[::ffff:192.0.2.1]:443".parse().unwrap(),
    ];
    for addr in addrs {
        for attribute in [
            Attribute::MappedAddress(addr),
            Attribute::XorMappedAddress(addr),
        ] {
            let m = with_attributes(vec![attribute.clone()]);
            let out = encoded(&m);
            let len = if addr.is_ipv4() { 8 } else { 20 };
            assert_eq!(out.len(), HEADER_LEN + 4 + len);
            assert_eq!(out[HEADER_LEN + 5], if addr.is_ipv4() { 1 } else { 2 });
            assert_eq!(parse(&out), Ok(m));
        }
    }
}

#[test]
fn st4_mapped_address_is_in_the_clear_and_xor_is_not() {
    let m = with_attributes(vec![
        Attribute::MappedAddress(v4()),
        Attribute::XorMappedAddress(v4()),
    ]);
    let out = encoded(&m);
    assert_eq!(
        &out[20..32],
        &[0x00, 0x01, 0x00, 0x08, 0x00, 0x01, 0x80, 0x55, 192, 0, 2, 1]
    );
    assert_eq!(
        &out[32..44],
        &[
            0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43
        ]
    );
    // IPv6 XOR uses the transaction id too: with another id, other bytes.
    let a = encoded(&with_attributes(vec![Attribute::XorMappedAddress(v6())]));
    let mut other = with_attributes(vec![Attribute::XorMappedAddress(v6())]);
    other.transaction_id = [0; 12];
    let b = encoded(&other);
    assert_eq!(a[24..32], b[24..32], "port, family and the cookie part");
    assert_ne!(a[32..44], b[32..44]);
}

#[test]
fn st4_bad_address_attributes_are_errors() {
    // Family 3.
    let bytes = raw_message(&[0x00, 0x01, 0x00, 0x08, 0x00, 0x03, 0x00, 0x50, 1, 2, 3, 4]);
    assert_eq!(
        parse(&bytes),
        Err(StunError::BadAddressFamily {
            kind: kind::MAPPED_ADDRESS,
            family: 3
        })
    );
    // IPv4 with 16 address bytes, IPv6 with 4, and a 3-byte value.
    let mut v4_long = vec![0x00, 0x20, 0x00, 0x14, 0x00, 0x01, 0x00, 0x50];
    v4_long.extend_from_slice(&[0; 16]);
    let v6_short = [0x00, 0x20, 0x00, 0x08, 0x00, 0x02, 0x00, 0x50, 1, 2, 3, 4];
    let tiny = [0x00, 0x20, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00];
    for (attrs, len) in [(&v4_long[..], 20), (&v6_short[..], 8), (&tiny[..], 3)] {
        assert_eq!(
            parse(&raw_message(attrs)),
            Err(StunError::BadAttributeLength {
                kind: kind::XOR_MAPPED_ADDRESS,
                len
            })
        );
    }
}

#[test]
fn st5_software_roundtrip_and_limits() {
    let longest = "é".repeat(MAX_TEXT_LEN / 2) + "x"; // 763 bytes, 382 characters
    assert_eq!(longest.len(), MAX_TEXT_LEN);
    for text in ["", "ferry/0.1.0", "日本語", longest.as_str()] {
        let m = with_attributes(vec![Attribute::Software(text.into())]);
        assert_eq!(parse(&encoded(&m)), Ok(m));
    }

    let too_long = with_attributes(vec![Attribute::Software("a".repeat(764))]);
    let mut out = vec![7];
    assert_eq!(
        encode(&too_long, &mut out),
        Err(StunError::TextTooLong {
            kind: kind::SOFTWARE,
            len: 764
        })
    );
    assert_eq!(out, [7], "out is left as it was");

    let mut attr = vec![0x80, 0x22, 0x02, 0xFC];
    attr.extend_from_slice(&[b'a'; 764]);
    assert_eq!(
        parse(&raw_message(&attr)),
        Err(StunError::TextTooLong {
            kind: kind::SOFTWARE,
            len: 764
        })
    );
    let bad_utf8 = raw_message(&[0x80, 0x22, 0x00, 0x02, 0xC3, 0x28, 0, 0]);
    assert_eq!(
        parse(&bad_utf8),
        Err(StunError::InvalidUtf8 {
            kind: kind::SOFTWARE
        })
    );
}

#[test]
fn st5_error_code_roundtrip_and_layout() {
    for (code, reason) in [
        (300, ""),
        (400, "Bad Request"),
        (420, "Unknown Attribute"),
        (487, "Role Conflict"),
        (699, "z"),
    ] {
        let m = Message::binding_error(TID, code, reason);
        assert_eq!(m.error_code(), Some((code, reason)));
        let out = encoded(&m);
        assert_eq!(parse(&out), Ok(m));
        assert_eq!(
            &out[HEADER_LEN + 4..HEADER_LEN + 8],
            &[0, 0, (code / 100) as u8, (code % 100) as u8]
        );
    }
    let out = encoded(&Message::binding_error(TID, 420, "Unknown Attribute"));
    assert_eq!(&out[..2], &[0x01, 0x11]);
    assert_eq!(&out[HEADER_LEN..HEADER_LEN + 4], &[0x00, 0x09, 0x00, 21]);
}

#[test]
fn st5_bad_error_codes_are_errors() {
    for code in [0, 299, 700, 999, u16::MAX] {
        let mut out = Vec::new();
        assert_eq!(
            encode(&Message::binding_error(TID, code, "x"), &mut out),
            Err(StunError::BadErrorCode { code })
        );
        assert!(out.is_empty());
    }
    // Class 2, class 7, number 100 on the wire.
    for (class, number, code) in [(2, 0, 200), (7, 0, 700), (4, 100, 500)] {
        let bytes = raw_message(&[0x00, 0x09, 0x00, 0x04, 0, 0, class, number]);
        assert_eq!(parse(&bytes), Err(StunError::BadErrorCode { code }));
    }
    // The reserved bits above the class are ignored.
    let bytes = raw_message(&[0x00, 0x09, 0x00, 0x04, 0xFF, 0xFF, 0xFC, 20]);
    assert_eq!(
        parse(&bytes).unwrap().error_code(),
        Some((420, "")),
        "class 4 under reserved bits"
    );
    // Shorter than 4 bytes.
    let bytes = raw_message(&[0x00, 0x09, 0x00, 0x03, 0, 0, 4, 0]);
    assert_eq!(
        parse(&bytes),
        Err(StunError::BadAttributeLength {
            kind: kind::ERROR_CODE,
            len: 3
        })
    );
}

#[test]
fn st6_change_request_roundtrip_and_layout() {
    for (change_ip, change_port, bits) in [
        (false, false, 0),
        (false, true, 2),
        (true, false, 4),
        (true, true, 6),
    ] {
        let m = with_attributes(vec![Attribute::ChangeRequest {
            change_ip,
            change_port,
        }]);
        let out = encoded(&m);
        assert_eq!(&out[HEADER_LEN..], &[0x00, 0x03, 0x00, 0x04, 0, 0, 0, bits]);
        assert_eq!(parse(&out), Ok(m));
    }
    // Other bits are ignored; a length other than 4 is an error.
    let bytes = raw_message(&[0x00, 0x03, 0x00, 0x04, 0xFF, 0xFF, 0xFF, 0xF9]);
    assert_eq!(
        parse(&bytes).unwrap().attributes,
        [Attribute::ChangeRequest {
            change_ip: false,
            change_port: false
        }]
    );
    let bytes = raw_message(&[0x00, 0x03, 0x00, 0x08, 0, 0, 0, 6, 0, 0, 0, 0]);
    assert_eq!(
        parse(&bytes),
        Err(StunError::BadAttributeLength {
            kind: kind::CHANGE_REQUEST,
            len: 8
        })
    );
}

#[test]
fn st6_unknown_attributes_roundtrip_and_padding() {
    for kinds in [vec![], vec![0x0024], vec![0x0024, 0x0003, 0x7FFF]] {
        let mut m = Message::binding_error(TID, 420, "Unknown Attribute");
        m.attributes
            .push(Attribute::UnknownAttributes(kinds.clone()));
        let out = encoded(&m);
        assert_eq!(parse(&out), Ok(m));
        assert_eq!(out.len() % 4, 0);
    }
    let out = encoded(&with_attributes(vec![Attribute::UnknownAttributes(vec![
        0x0024,
    ])]));
    assert_eq!(
        &out[HEADER_LEN..],
        &[0x00, 0x0A, 0x00, 0x02, 0x00, 0x24, 0, 0]
    );
    // An odd value length cannot hold whole kinds.
    let bytes = raw_message(&[0x00, 0x0A, 0x00, 0x03, 0x00, 0x24, 0x00, 0]);
    assert_eq!(
        parse(&bytes),
        Err(StunError::BadAttributeLength {
            kind: kind::UNKNOWN_ATTRIBUTES,
            len: 3
        })
    );
}

// ---- ST-7: FINGERPRINT --------------------------------------------------------------

#[test]
fn st7_encode_with_fingerprint_verifies() {
    let m = Message::binding_success(TID, v6(), Some("ferry/0.1.0"));
    let mut out = Vec::new();
    encode_with_fingerprint(&m, &mut out).unwrap();
    let parsed = parse(&out).unwrap();
    let (last, rest) = parsed.attributes.split_last().unwrap();
    assert_eq!(rest, &m.attributes[..]);
    assert_eq!(
        *last,
        Attribute::Fingerprint(fingerprint_of(&out[..out.len() - 8]))
    );
    assert_eq!(
        &out[out.len() - 8..out.len() - 4],
        &[0x80, 0x28, 0x00, 0x04]
    );
    // Re-encoding the parsed message gives the same bytes, with or without the flag.
    assert_eq!(encoded(&parsed), out);
    let mut again = Vec::new();
    encode_with_fingerprint(&parsed, &mut again).unwrap();
    assert_eq!(again, out);
}

#[test]
fn st7_encode_recomputes_a_fingerprint_attribute() {
    let mut m = Message::binding_request(TID);
    m.attributes.push(Attribute::Fingerprint(0xDEAD_BEEF));
    let out = encoded(&m);
    assert_eq!(out.len(), HEADER_LEN + 8);
    assert_eq!(&out[2..4], &[0, 8], "length counts the fingerprint");
    let parsed = parse(&out).unwrap();
    assert_eq!(
        parsed.fingerprint(),
        Some(fingerprint_of(&out[..HEADER_LEN]))
    );
    assert_ne!(parsed.fingerprint(), Some(0xDEAD_BEEF));
}

#[test]
fn st7_bad_fingerprint_is_an_error() {
    // A flipped bit in the FINGERPRINT value, and in a byte it covers.
    let mut bytes = RFC5769_IPV4_RESPONSE;
    bytes[79] ^= 0x01;
    assert_eq!(
        parse(&bytes),
        Err(StunError::FingerprintMismatch {
            expected: 0xc07d_4c96,
            found: 0xc07d_4c97
        })
    );
    let mut bytes = RFC5769_IPV4_RESPONSE;
    bytes[25] = b'E'; // "tEst vector"
    assert!(matches!(
        parse(&bytes),
        Err(StunError::FingerprintMismatch {
            found: 0xc07d_4c96,
            ..
        })
    ));
    // A FINGERPRINT of 3 bytes (padded to 4).
    let bytes = raw_message(&[0x80, 0x28, 0x00, 0x03, 1, 2, 3, 0]);
    assert_eq!(
        parse(&bytes),
        Err(StunError::BadAttributeLength {
            kind: kind::FINGERPRINT,
            len: 3
        })
    );
}

#[test]
fn st7_fingerprint_not_last_is_an_error() {
    // A FINGERPRINT that is right for the bytes before it, then SOFTWARE.
    let mut bytes = raw_message(&[
        0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0, 0x80, 0x22, 0x00, 0x01, b'x', 0, 0, 0,
    ]);
    let value = fingerprint_of(&bytes[..HEADER_LEN]);
    bytes[24..28].copy_from_slice(&value.to_be_bytes());
    assert_eq!(parse(&bytes), Err(StunError::FingerprintNotLast));
    // Two FINGERPRINTs.
    let mut bytes = raw_message(&[
        0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0, 0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0,
    ]);
    refingerprint(&mut bytes);
    assert_eq!(parse(&bytes), Err(StunError::FingerprintNotLast));
    // And the encoder refuses to write one.
    let mut m = with_attributes(vec![
        Attribute::Fingerprint(0),
        Attribute::Software("x".into()),
    ]);
    let mut out = Vec::new();
    assert_eq!(encode(&m, &mut out), Err(StunError::FingerprintNotLast));
    assert_eq!(
        encode_with_fingerprint(&m, &mut out),
        Err(StunError::FingerprintNotLast)
    );
    assert!(out.is_empty());
    m.attributes.reverse();
    assert!(encode(&m, &mut out).is_ok());
}

// ---- ST-9: encoder limits -------------------------------------------------------------

#[test]
fn st9_unencodable_messages_are_errors_and_leave_out_alone() {
    let cases = [
        (
            Message::new(Class::Request, Method(0x1000), TID),
            StunError::MethodOutOfRange { method: 0x1000 },
        ),
        (
            with_attributes(vec![Attribute::Unknown {
                kind: kind::XOR_MAPPED_ADDRESS,
                value: vec![0; 8],
            }]),
            StunError::UnknownWithDecodedKind {
                kind: kind::XOR_MAPPED_ADDRESS,
            },
        ),
        (
            with_attributes(vec![Attribute::Unknown {
                kind: 0x7000,
                value: vec![0; 65536],
            }]),
            StunError::AttributeTooLong {
                kind: 0x7000,
                len: 65536,
            },
        ),
        (
            with_attributes(vec![
                Attribute::Unknown {
                    kind: 0x7000,
                    value: vec![0; 65532],
                },
                Attribute::Software(String::new()),
            ]),
            StunError::MessageTooLong { len: 65540 },
        ),
    ];
    for (m, err) in cases {
        let mut out = vec![1, 2, 3];
        assert_eq!(encode(&m, &mut out), Err(err));
        assert!(encode_with_fingerprint(&m, &mut out).is_err());
        assert_eq!(out, [1, 2, 3]);
    }
    // The largest message fits: 65532 bytes of attributes.
    let m = with_attributes(vec![Attribute::Unknown {
        kind: 0x7000,
        value: vec![0; 65528],
    }]);
    let out = encoded(&m);
    assert_eq!(out.len(), HEADER_LEN + 65532);
    assert_eq!(parse(&out), Ok(m.clone()));
    // With a fingerprint it does not.
    assert_eq!(
        encode_with_fingerprint(&m, &mut Vec::new()),
        Err(StunError::MessageTooLong { len: 65540 })
    );
}

// ---- ST-10: constructors and accessors --------------------------------------------------

#[test]
fn st10_binding_success_carries_both_addresses_and_software() {
    let m = Message::binding_success(TID, v4(), Some("ferry/0.1.0"));
    assert_eq!(
        (m.class, m.method),
        (Class::SuccessResponse, Method::BINDING)
    );
    assert_eq!(
        m.attributes,
        vec![
            Attribute::XorMappedAddress(v4()),
            Attribute::MappedAddress(v4()),
            Attribute::Software("ferry/0.1.0".into()),
        ]
    );
    let out = encoded(&m);
    assert_eq!(&out[..2], &[0x01, 0x01]);
    assert_eq!(parse(&out), Ok(m));
    let bare = Message::binding_success(TID, v6(), None);
    assert_eq!(bare.attributes.len(), 2);
    assert_eq!(bare.software(), None);
    assert_eq!(parse(&encoded(&bare)), Ok(bare));
}

#[test]
fn st15_mapped_address_prefers_xor() {
    let other: SocketAddr = "198.51.100.7:9".parse().unwrap();
    let both = with_attributes(vec![
        Attribute::MappedAddress(other),
        Attribute::XorMappedAddress(v4()),
    ]);
    assert_eq!(both.mapped_address(), Some(v4()));
    let plain = with_attributes(vec![Attribute::MappedAddress(other)]);
    assert_eq!(plain.mapped_address(), Some(other));
    assert_eq!(Message::binding_request(TID).mapped_address(), None);
}

#[test]
fn st1_is_stun_tells_other_traffic_apart() {
    assert!(is_stun(&encoded(&Message::binding_request(TID))));
    // TURN ChannelData (0x4000..), DTLS (20..63), RTP (128..191), a short datagram.
    assert!(!is_stun(&[0x40, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]));
    // A DTLS 1.2 record header (content type 22, version 0xFEFD): no cookie.
    let mut dtls = vec![22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12];
    dtls.extend_from_slice(&[0; 12]);
    assert!(!is_stun(&dtls));
    let mut rtp = encoded(&Message::binding_request(TID));
    rtp[0] = 0x80;
    assert!(!is_stun(&rtp));
    assert!(!is_stun(b"GET / HTTP/1.1\r\n\r\n"));
}

// ---- Properties ----------------------------------------------------------------------------

/// A valid datagram's SocketAddr (any v4 or v6 address and port).
fn arbitrary_addr(g: &mut Gen) -> SocketAddr {
    if bool::arbitrary(g) {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(u32::arbitrary(g))),
            u16::arbitrary(g),
        )
    } else {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(u128::arbitrary(g))),
            u16::arbitrary(g),
        )
    }
}

fn arbitrary_text(g: &mut Gen) -> String {
    let mut s = String::arbitrary(g);
    while s.len() > MAX_TEXT_LEN {
        s.pop();
    }
    s
}

impl Arbitrary for Attribute {
    fn arbitrary(g: &mut Gen) -> Attribute {
        match u8::arbitrary(g) % 7 {
            0 => Attribute::MappedAddress(arbitrary_addr(g)),
            1 => Attribute::XorMappedAddress(arbitrary_addr(g)),
            2 => Attribute::Software(arbitrary_text(g)),
            3 => Attribute::ErrorCode {
                code: 300 + u16::arbitrary(g) % 400,
                reason: arbitrary_text(g),
            },
            4 => Attribute::ChangeRequest {
                change_ip: bool::arbitrary(g),
                change_port: bool::arbitrary(g),
            },
            5 => Attribute::UnknownAttributes(Vec::arbitrary(g)),
            _ => {
                let mut kind = u16::arbitrary(g);
                while kind::is_decoded(kind) {
                    kind = kind.wrapping_add(1);
                }
                Attribute::Unknown {
                    kind,
                    value: Vec::arbitrary(g),
                }
            }
        }
    }
}

impl Arbitrary for Message {
    fn arbitrary(g: &mut Gen) -> Message {
        let class = Class::from_bits(u8::arbitrary(g));
        let method = if bool::arbitrary(g) {
            Method::BINDING
        } else {
            Method(u16::arbitrary(g) & MAX_METHOD)
        };
        let mut transaction_id = [0u8; 12];
        transaction_id
            .iter_mut()
            .for_each(|b| *b = u8::arbitrary(g));
        let count = usize::arbitrary(g) % 6;
        Message {
            class,
            method,
            transaction_id,
            attributes: (0..count).map(|_| Attribute::arbitrary(g)).collect(),
        }
    }
}

#[test]
fn st1_st3_st7_encode_parse_roundtrip() {
    fn prop(m: Message) -> bool {
        let mut out = Vec::new();
        let plain_ok = encode(&m, &mut out).is_ok()
            && out.len() % 4 == 0
            && is_stun(&out)
            && parse(&out).as_ref() == Ok(&m);
        let mut fp = Vec::new();
        let fp_ok = encode_with_fingerprint(&m, &mut fp).is_ok()
            && is_stun(&fp)
            && match parse(&fp) {
                Ok(parsed) => {
                    parsed.attributes.split_last()
                        == Some((
                            &Attribute::Fingerprint(fingerprint_of(&fp[..fp.len() - 8])),
                            &m.attributes[..],
                        ))
                        && encoded(&parsed) == fp
                }
                Err(_) => false,
            };
        plain_ok && fp_ok
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Message) -> bool);
}

#[test]
fn st9_never_panics_on_any_bytes() {
    // Half the cases get a valid header (top bits, cookie, length), so attribute
    // parsing is exercised too; some of those get a right FINGERPRINT at the end.
    fn prop(head: [u8; 20], valid_header: bool, fingerprint: bool, body: Vec<u8>) -> TestResult {
        let mut bytes = head.to_vec();
        let mut body = body;
        if valid_header {
            body.truncate(body.len() / 4 * 4);
            if fingerprint {
                body.extend_from_slice(&[0x80, 0x28, 0x00, 0x04, 0, 0, 0, 0]);
            }
            bytes[0] &= 0x3F;
            bytes[2..4].copy_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
            bytes[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        }
        bytes.extend_from_slice(&body);
        if valid_header && fingerprint {
            refingerprint(&mut bytes);
        }
        match parse(&bytes) {
            // Whatever parses looks like STUN, and re-encodes to something that
            // parses back the same (modulo a recomputed FINGERPRINT value).
            Ok(m) => {
                let mut out = Vec::new();
                if !is_stun(&bytes) || encode(&m, &mut out).is_err() {
                    return TestResult::failed();
                }
                TestResult::from_bool(parse(&out).is_ok_and(|again| {
                    again.attributes.len() == m.attributes.len()
                        && again.transaction_id == m.transaction_id
                        && (again.class, again.method) == (m.class, m.method)
                }))
            }
            Err(
                StunError::TooShort { .. }
                | StunError::TopBitsSet { .. }
                | StunError::BadCookie { .. }
                | StunError::UnalignedLength { .. }
                | StunError::LengthMismatch { .. },
            ) => TestResult::from_bool(!is_stun(&bytes)),
            Err(_) => TestResult::from_bool(is_stun(&bytes)),
        }
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn([u8; 20], bool, bool, Vec<u8>) -> TestResult);
}

#[test]
fn st9_every_truncation_of_a_vector_is_an_error() {
    for bytes in [
        &RFC5769_REQUEST[..],
        &RFC5769_IPV4_RESPONSE[..],
        &RFC5769_IPV6_RESPONSE[..],
    ] {
        for cut in 0..bytes.len() {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
