//! Wire format tests, named after the requirement they check (MR-n).

use quickcheck::{QuickCheck, TestResult};

use super::*;
use crate::codec::Parsed;
use crate::codec::http1::{HeadLimits, parse_request_head};

#[test]
fn mr1_a_stream_datagram_is_marks_crc_le_and_data() {
    let mut out = Vec::new();
    encode_data(b"hello", &mut out);
    // The seed's header bytes are decimal: 45 61 = "-=", 61 45 = "=-".
    assert_eq!(&out[..2], b"-=");
    assert_eq!(&out[6..8], b"=-");
    assert_eq!(
        &out[2..6],
        &0x3610_a686_u32.to_le_bytes(),
        "CRC-32/IEEE of hello"
    );
    assert_eq!(&out[8..], b"hello");
    assert_eq!(classify(&out), Datagram::Data(b"hello"));
}

#[test]
fn mr1_a_datagram_is_at_most_512_bytes() {
    let stream: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    let mut total = Vec::new();
    for chunk in chunks(&stream) {
        let mut out = Vec::new();
        encode_data(chunk, &mut out);
        assert!(out.len() <= MAX_DATAGRAM);
        match classify(&out) {
            Datagram::Data(data) => total.extend_from_slice(data),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(total, stream);
    assert_eq!(chunks(&stream).next().map(<[u8]>::len), Some(504));
}

#[test]
fn mr1_a_wrong_crc_is_reported_not_delivered() {
    let mut out = Vec::new();
    encode_data(b"payload", &mut out);
    out[9] ^= 1;
    assert!(matches!(classify(&out), Datagram::BadCrc { .. }));
}

#[test]
fn mr2_short_or_unmarked_datagrams_are_general_messages() {
    assert_eq!(
        classify(b"-=\0\0\0\0=-"),
        Datagram::General(b"-=\0\0\0\0=-")
    );
    assert_eq!(classify(b"helloRelay"), Datagram::General(b"helloRelay"));
    for hello in [
        Hello::HelloListener,
        Hello::HelloRelay,
        Hello::NiceToMeetYouListener,
        Hello::NiceToMeetYouRelay,
    ] {
        assert_eq!(
            classify(hello.as_bytes()),
            Datagram::General(hello.as_bytes())
        );
        assert_eq!(Hello::parse(hello.as_bytes()), Some(hello));
    }
    assert_eq!(Hello::parse(b"hello"), None);
}

fn head(text: &str) -> RequestHead {
    match parse_request_head(text.as_bytes(), &HeadLimits::default()) {
        Ok(Parsed::Done { value, .. }) => value,
        other => panic!("{other:?}"),
    }
}

fn round_trip(request: &TrackerRequest) -> TrackerRequest {
    let mut out = Vec::new();
    request.encode(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("GET /Pi HTTP/1.0\r\n"), "{text}");
    TrackerRequest::from_head(&head(&text)).unwrap()
}

#[test]
fn mr3_relay_and_listener_registrations_round_trip() {
    let relay = TrackerRequest::Register {
        mount: "radio-1".into(),
        my_addr: "203.0.113.7:40000".parse().unwrap(),
        latency: Some(35),
        relay: true,
    };
    assert_eq!(round_trip(&relay), relay);
    let listener = TrackerRequest::Register {
        mount: "radio-1".into(),
        my_addr: "[2001:db8::7]:40001".parse().unwrap(),
        latency: None,
        relay: false,
    };
    assert_eq!(round_trip(&listener), listener);
    let mut out = Vec::new();
    listener.encode(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        !text.contains("Flag") && !text.contains("Latency"),
        "{text}"
    );
}

#[test]
fn mr3_the_seed_request_text_parses() {
    let request = TrackerRequest::from_head(&head(
        "GET /Pi HTTP/1.0\r\nMount: m\r\nMyAddr: 1.2.3.4:5\r\nLatency: 12\r\nFlag: relay\r\n\r\n",
    ));
    assert_eq!(
        request,
        Ok(TrackerRequest::Register {
            mount: "m".into(),
            my_addr: "1.2.3.4:5".parse().unwrap(),
            latency: Some(12),
            relay: true
        })
    );
}

#[test]
fn mr3_bad_requests_say_why() {
    let cases = [
        (
            "GET /x HTTP/1.0\r\nMount: m\r\nMyAddr: 1.2.3.4:5\r\n\r\n",
            WireError::NotPi,
        ),
        (
            "GET /Pi HTTP/1.0\r\nMyAddr: 1.2.3.4:5\r\n\r\n",
            WireError::Missing("Mount"),
        ),
        (
            "GET /Pi HTTP/1.0\r\nMount: m\r\n\r\n",
            WireError::Missing("MyAddr"),
        ),
        (
            "GET /Pi HTTP/1.0\r\nMount: m\r\nMyAddr: 1.2.3.4\r\n\r\n",
            WireError::Bad("MyAddr"),
        ),
        (
            "GET /Pi HTTP/1.0\r\nMount: m\r\nMyAddr: 1.2.3.4:5\r\nLatency: soon\r\n\r\n",
            WireError::Bad("Latency"),
        ),
        (
            "GET /Pi HTTP/1.0\r\nConnected: 1.2.3.4:5\r\n\r\n",
            WireError::Bad("Connected"),
        ),
    ];
    for (text, error) in cases {
        assert_eq!(TrackerRequest::from_head(&head(text)), Err(error), "{text}");
    }
}

#[test]
fn mr4_connected_is_two_addresses_with_or_without_a_space() {
    let connected = TrackerRequest::Connected {
        own: "1.2.3.4:5".parse().unwrap(),
        peer: "[::1]:6".parse().unwrap(),
    };
    assert_eq!(round_trip(&connected), connected);
    let mut out = Vec::new();
    connected.encode(&mut out);
    assert!(
        String::from_utf8(out)
            .unwrap()
            .contains("Connected: 1.2.3.4:5,[::1]:6\r\n")
    );
    let spaced = TrackerRequest::from_head(&head(
        "GET /Pi HTTP/1.0\r\nConnected: 1.2.3.4:5, 6.7.8.9:10\r\n\r\n",
    ));
    assert!(matches!(spaced, Ok(TrackerRequest::Connected { .. })));
}

#[test]
fn mr5_address_lists_round_trip_with_ipv6() {
    let addrs: Vec<SocketAddr> = ["1.2.3.4:5", "[2001:db8::1]:443", "10.0.0.1:65535"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let text = format_address_list(&addrs);
    assert_eq!(text, "1.2.3.4:5:[2001:db8::1]:443:10.0.0.1:65535");
    assert_eq!(parse_address_list(&text), Ok(addrs));
    assert_eq!(parse_address_list(""), Ok(vec![]));
    assert!(parse_address_list("1.2.3.4").is_err());
    assert!(parse_address_list("1.2.3.4:x").is_err());
    assert!(parse_address_list("[::1:5").is_err());
}

#[test]
fn mr5_address_lists_round_trip_for_any_addresses() {
    fn prop(v4: Vec<(u32, u16)>, v6: Vec<(u128, u16)>) -> bool {
        let addrs: Vec<SocketAddr> = v4
            .into_iter()
            .map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port))
            .chain(
                v6.into_iter()
                    .map(|(ip, port)| SocketAddr::new(std::net::Ipv6Addr::from(ip).into(), port)),
            )
            .collect();
        parse_address_list(&format_address_list(&addrs)) == Ok(addrs)
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<(u32, u16)>, Vec<(u128, u16)>) -> bool);
}

#[test]
fn no_panic_on_any_datagram_or_address_text() {
    fn prop(bytes: Vec<u8>) -> TestResult {
        let _ = classify(&bytes);
        let _ = Hello::parse(&bytes);
        let _ = parse_address_list(&String::from_utf8_lossy(&bytes));
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(1000)
        .quickcheck(prop as fn(Vec<u8>) -> TestResult);
}
