//! Wire format tests, named after the requirement they check (VPN-n).

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

use super::*;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

/// A minimal IPv4 header (UDP, no options) from `src` to `dst`, then `payload`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + payload.len()).unwrap();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn peer_bytes(m: &PeerMessage<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out);
    assert_eq!(out.len(), m.encoded_len());
    out
}

fn server_bytes(m: &ServerMessage<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    m.encode(&mut out);
    assert_eq!(out.len(), m.encoded_len());
    out
}

fn hash(fill: u8) -> AuthHash {
    [fill; 32]
}

fn length(message: &'static str, expected: usize, got: usize) -> WireError {
    WireError::Length {
        message,
        expected,
        got,
    }
}

// ---- VPN-1: kind byte, exact lengths, unknown kinds ----

#[test]
fn vpn1_empty_and_unknown_kinds_are_refused() {
    assert_eq!(PeerMessage::parse(&[]), Err(WireError::Empty));
    assert_eq!(ServerMessage::parse(&[]), Err(WireError::Empty));
    for kind in [3u8, 5, 6, 0x80, 255] {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&[0; 16]);
        assert_eq!(
            PeerMessage::parse(&bytes),
            Err(WireError::UnknownKind(kind))
        );
    }
    for kind in [7u8, 8, 0x80, 254] {
        let mut bytes = vec![kind];
        bytes.extend_from_slice(&[0; 16]);
        assert_eq!(
            ServerMessage::parse(&bytes),
            Err(WireError::UnknownKind(kind))
        );
    }
}

#[test]
fn vpn1_every_fixed_message_one_byte_short_or_long_is_refused() {
    let peers = [
        PeerMessage::Heartbeat {
            tun: A,
            ip: PUBLIC,
            port: 1,
            ack: true,
        },
        PeerMessage::Delay {
            src: A,
            dst: B,
            timestamp: 7,
        },
        PeerMessage::Route {
            dst: A,
            next: B,
            delay: 7,
        },
    ];
    for m in &peers {
        let bytes = peer_bytes(m);
        let n = bytes.len();
        let mut long = bytes.clone();
        long.push(0);
        for bad in [&bytes[..n - 1], &long[..], &bytes[..1]] {
            assert!(
                matches!(
                    PeerMessage::parse(bad),
                    Err(WireError::Length { expected, got, .. }) if expected == n && got == bad.len()
                ),
                "{m:?} as {} bytes",
                bad.len()
            );
        }
    }
    let servers = [
        ServerMessage::Auth {
            ip: A,
            timestamp: 1,
            hash: hash(1),
        },
        ServerMessage::ExpectedTun {
            timestamp: 1,
            cidr: CidrText::new("10.0.0.1/24").unwrap(),
            hash: hash(2),
        },
        ServerMessage::Udp4Conn {
            src: A,
            dst: B,
            ip: PUBLIC,
            port: 9,
        },
        ServerMessage::VirtualMac {
            vmac: [3; 16],
            timestamp: 1,
            hash: hash(3),
        },
        ServerMessage::Discovery { src: A, dst: B },
        ServerMessage::SysRoutes(
            SysRouteTable::new(vec![SysRoute {
                dst: Ipv4Addr::new(192, 168, 1, 0),
                mask: Ipv4Addr::new(255, 255, 255, 0),
                next: A,
            }])
            .unwrap(),
        ),
        ServerMessage::LocalUdp4Conn {
            src: A,
            dst: B,
            ip: Ipv4Addr::new(192, 168, 1, 9),
            port: 9,
        },
    ];
    for m in &servers {
        let bytes = server_bytes(m);
        let n = bytes.len();
        let mut long = bytes.clone();
        long.push(0);
        for bad in [&bytes[..n - 1], &long[..]] {
            assert!(
                matches!(
                    ServerMessage::parse(bad),
                    Err(WireError::Length { expected, got, .. }) if expected == n && got == bad.len()
                ),
                "{m:?} as {} bytes",
                bad.len()
            );
        }
    }
}

// ---- VPN-2: the IPv4 check ----

#[test]
fn vpn2_a_whole_ipv4_packet_is_accepted_and_read() {
    let bytes = ipv4(A, B, b"hi");
    let packet = Ipv4Packet::new_checked(&bytes).unwrap();
    assert_eq!(packet.as_bytes(), &bytes[..]);
    assert_eq!(packet.len(), 22);
    assert!(!packet.is_empty());
    assert_eq!(packet.source(), A);
    assert_eq!(packet.destination(), B);
    // Options: IHL 6 and 24 header bytes.
    let mut with_options = ipv4(A, B, &[1, 2, 3, 4]);
    with_options[0] = 0x46;
    assert!(Ipv4Packet::new_checked(&with_options).is_ok());
    // A bare 20-byte header is a packet.
    assert!(Ipv4Packet::new_checked(&ipv4(A, B, &[])).is_ok());
}

#[test]
fn vpn2_bad_ipv4_headers_are_refused() {
    let good = ipv4(A, B, b"data");
    assert_eq!(
        Ipv4Packet::new_checked(&good[..19]),
        Err(WireError::Ipv4TooShort { got: 19 })
    );
    assert_eq!(
        Ipv4Packet::new_checked(&good[..3]),
        Err(WireError::Ipv4TooShort { got: 3 })
    );
    assert_eq!(
        Ipv4Packet::new_checked(&[]),
        Err(WireError::Ipv4TooShort { got: 0 })
    );

    let mut v6 = good.clone();
    v6[0] = 0x65;
    assert_eq!(
        Ipv4Packet::new_checked(&v6),
        Err(WireError::Ipv4Version { version: 6 })
    );

    let mut ihl4 = good.clone();
    ihl4[0] = 0x44;
    assert_eq!(
        Ipv4Packet::new_checked(&ihl4),
        Err(WireError::Ipv4HeaderLength { ihl: 4, total: 24 })
    );

    // IHL 7 = 28 header bytes, more than the 24-byte total.
    let mut ihl7 = good.clone();
    ihl7[0] = 0x47;
    assert_eq!(
        Ipv4Packet::new_checked(&ihl7),
        Err(WireError::Ipv4HeaderLength { ihl: 7, total: 24 })
    );

    // Total length says more than arrived.
    assert_eq!(
        Ipv4Packet::new_checked(&good[..23]),
        Err(WireError::Ipv4TotalLength { total: 24, got: 23 })
    );
    // Trailing bytes are refused, not trimmed.
    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(
        Ipv4Packet::new_checked(&trailing),
        Err(WireError::Ipv4TotalLength { total: 24, got: 25 })
    );
}

// ---- VPN-3: heartbeat ----

#[test]
fn vpn3_heartbeat_layout_is_exact() {
    let m = PeerMessage::Heartbeat {
        tun: A,
        ip: PUBLIC,
        port: 0x1234,
        ack: true,
    };
    let bytes = [0, 10, 0, 0, 1, 203, 0, 113, 7, 0x12, 0x34, 1];
    assert_eq!(peer_bytes(&m), bytes);
    assert_eq!(PeerMessage::parse(&bytes), Ok(m));
    let no_ack = [0, 10, 0, 0, 1, 203, 0, 113, 7, 0x12, 0x34, 0];
    assert_eq!(
        PeerMessage::parse(&no_ack),
        Ok(PeerMessage::Heartbeat {
            tun: A,
            ip: PUBLIC,
            port: 0x1234,
            ack: false
        })
    );
}

#[test]
fn vpn3_an_ack_other_than_0_or_1_is_refused() {
    for ack in [2u8, 0x80, 255] {
        let bytes = [0, 10, 0, 0, 1, 203, 0, 113, 7, 0, 1, ack];
        assert_eq!(PeerMessage::parse(&bytes), Err(WireError::BadAck(ack)));
    }
}

#[test]
fn vpn3_a_heartbeat_of_11_or_13_bytes_is_refused() {
    let bytes = [0, 10, 0, 0, 1, 203, 0, 113, 7, 0, 1, 1, 0];
    assert_eq!(PeerMessage::parse(&bytes), Err(length("heartbeat", 12, 13)));
    assert_eq!(
        PeerMessage::parse(&bytes[..11]),
        Err(length("heartbeat", 12, 11))
    );
}

// ---- VPN-4: forward ----

#[test]
fn vpn4_forward_is_kind_1_then_the_packet() {
    let packet = ipv4(A, B, b"payload");
    let m = PeerMessage::Forward(Ipv4Packet::new_checked(&packet).unwrap());
    let bytes = peer_bytes(&m);
    assert_eq!(bytes[0], 1);
    assert_eq!(&bytes[1..], &packet[..]);
    assert_eq!(PeerMessage::parse(&bytes), Ok(m));
}

#[test]
fn vpn4_forward_with_a_bad_packet_is_refused() {
    assert_eq!(
        PeerMessage::parse(&[1]),
        Err(WireError::Ipv4TooShort { got: 0 })
    );
    let mut bytes = vec![1];
    bytes.extend_from_slice(&ipv4(A, B, b"x"));
    bytes.push(0);
    assert_eq!(
        PeerMessage::parse(&bytes),
        Err(WireError::Ipv4TotalLength { total: 21, got: 22 })
    );
    bytes.pop();
    bytes[1] = 0x60;
    assert_eq!(
        PeerMessage::parse(&bytes),
        Err(WireError::Ipv4Version { version: 6 })
    );
}

// ---- VPN-5: latency probe ----

#[test]
fn vpn5_delay_layout_is_exact() {
    let m = PeerMessage::Delay {
        src: A,
        dst: B,
        timestamp: 0x0102_0304_0506_0708,
    };
    let bytes = [2, 10, 0, 0, 1, 10, 0, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8];
    assert_eq!(peer_bytes(&m), bytes);
    assert_eq!(PeerMessage::parse(&bytes), Ok(m));
}

// ---- VPN-6: route ----

#[test]
fn vpn6_route_layout_has_an_8_byte_delay() {
    let m = PeerMessage::Route {
        dst: B,
        next: A,
        delay: 300,
    };
    let bytes = [4, 10, 0, 0, 2, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 44];
    assert_eq!(peer_bytes(&m), bytes);
    assert_eq!(PeerMessage::parse(&bytes), Ok(m));
    // The original C++ layout (4-byte rtt, 13 bytes) is refused.
    assert_eq!(
        PeerMessage::parse(&bytes[..13]),
        Err(length("route", 17, 13))
    );
    let withdraw = PeerMessage::Route {
        dst: B,
        next: A,
        delay: UNREACHABLE,
    };
    assert_eq!(&peer_bytes(&withdraw)[9..], &[0xff; 8]);
}

// ---- VPN-7: AUTH ----

#[test]
fn vpn7_auth_layout_is_exact() {
    let m = ServerMessage::Auth {
        ip: A,
        timestamp: 1_700_000_000,
        hash: hash(0xab),
    };
    let mut bytes = vec![0, 10, 0, 0, 1];
    bytes.extend_from_slice(&1_700_000_000_i64.to_be_bytes());
    bytes.extend_from_slice(&[0xab; 32]);
    assert_eq!(bytes.len(), AUTH_LEN);
    assert_eq!(server_bytes(&m), bytes);
    assert_eq!(ServerMessage::parse(&bytes), Ok(m));
    // Negative timestamps are carried as signed, two's complement.
    let mut before_1970 = bytes.clone();
    before_1970[5..13].copy_from_slice(&(-1_i64).to_be_bytes());
    assert!(matches!(
        ServerMessage::parse(&before_1970),
        Ok(ServerMessage::Auth { timestamp: -1, .. })
    ));
}

// ---- VPN-8: FORWARD through the server ----

#[test]
fn vpn8_server_forward_is_kind_1_then_the_packet() {
    let packet = ipv4(B, A, b"relayed");
    let m = ServerMessage::Forward(Ipv4Packet::new_checked(&packet).unwrap());
    let bytes = server_bytes(&m);
    assert_eq!(bytes[0], 1);
    assert_eq!(&bytes[1..], &packet[..]);
    assert_eq!(ServerMessage::parse(&bytes), Ok(m));
    assert_eq!(
        ServerMessage::parse(&bytes[..bytes.len() - 1]),
        Err(WireError::Ipv4TotalLength { total: 27, got: 26 })
    );
}

// ---- VPN-9: EXPTTUN ----

#[test]
fn vpn9_expttun_layout_is_exact_and_nul_padded() {
    let cidr = CidrText::new("10.0.0.7/24").unwrap();
    assert_eq!(cidr.as_str(), "10.0.0.7/24");
    let m = ServerMessage::ExpectedTun {
        timestamp: 1_700_000_000,
        cidr,
        hash: hash(0xcd),
    };
    let mut bytes = vec![2];
    bytes.extend_from_slice(&1_700_000_000_i64.to_be_bytes());
    let mut field = [0u8; 32];
    field[..11].copy_from_slice(b"10.0.0.7/24");
    bytes.extend_from_slice(&field);
    bytes.extend_from_slice(&[0xcd; 32]);
    assert_eq!(bytes.len(), EXPTTUN_LEN);
    assert_eq!(server_bytes(&m), bytes);
    assert_eq!(ServerMessage::parse(&bytes), Ok(m.clone()));

    // Bytes after the first NUL are ignored (the original leaves them unset).
    let mut garbage = bytes.clone();
    garbage[9 + 20] = 0x99;
    assert_eq!(ServerMessage::parse(&garbage), Ok(m));

    // Empty text: "any address".
    let empty = CidrText::new("").unwrap();
    assert_eq!(empty.as_str(), "");
    assert_eq!(empty.field(), &[0; 32]);
}

#[test]
fn vpn9_a_cidr_without_nul_or_not_ascii_is_refused() {
    let mut bytes = vec![2];
    bytes.extend_from_slice(&0_i64.to_be_bytes());
    bytes.extend_from_slice(&[b'1'; 32]);
    bytes.extend_from_slice(&[0; 32]);
    assert_eq!(ServerMessage::parse(&bytes), Err(WireError::BadCidr));
    bytes[9..41].copy_from_slice(&[0; 32]);
    bytes[9] = 0xc3;
    bytes[10] = 0xa9;
    assert_eq!(ServerMessage::parse(&bytes), Err(WireError::BadCidr));
    bytes[9] = b' ';
    assert_eq!(ServerMessage::parse(&bytes), Err(WireError::BadCidr));

    assert!(CidrText::new(&"1".repeat(31)).is_ok());
    assert_eq!(CidrText::new(&"1".repeat(32)), Err(WireError::BadCidr));
    assert_eq!(CidrText::new("10.0.0.1 /24"), Err(WireError::BadCidr));
    assert_eq!(CidrText::new("a\0b"), Err(WireError::BadCidr));
}

// ---- VPN-10: UDP4CONN ----

#[test]
fn vpn10_udp4conn_layout_is_exact() {
    let m = ServerMessage::Udp4Conn {
        src: A,
        dst: B,
        ip: PUBLIC,
        port: 40000,
    };
    let bytes = [3, 10, 0, 0, 1, 10, 0, 0, 2, 203, 0, 113, 7, 0x9c, 0x40];
    assert_eq!(server_bytes(&m), bytes);
    assert_eq!(ServerMessage::parse(&bytes), Ok(m));
}

// ---- VPN-11: VMAC ----

#[test]
fn vpn11_vmac_layout_is_exact() {
    let vmac = *b"0123456789abcdef";
    let m = ServerMessage::VirtualMac {
        vmac,
        timestamp: 5,
        hash: hash(0xef),
    };
    let mut bytes = vec![4];
    bytes.extend_from_slice(&vmac);
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 5]);
    bytes.extend_from_slice(&[0xef; 32]);
    assert_eq!(bytes.len(), VMAC_LEN);
    assert_eq!(server_bytes(&m), bytes);
    assert_eq!(ServerMessage::parse(&bytes), Ok(m));
}

// ---- VPN-12: DISCOVERY ----

#[test]
fn vpn12_discovery_layout_is_exact() {
    let m = ServerMessage::Discovery { src: A, dst: B };
    let bytes = [5, 10, 0, 0, 1, 10, 0, 0, 2];
    assert_eq!(server_bytes(&m), bytes);
    assert_eq!(ServerMessage::parse(&bytes), Ok(m));
}

// ---- VPN-13: ROUTE (system routes) ----

#[test]
fn vpn13_route_is_count_reserved_and_entries() {
    let table = SysRouteTable::new(vec![
        SysRoute {
            dst: Ipv4Addr::new(192, 168, 1, 0),
            mask: Ipv4Addr::new(255, 255, 255, 0),
            next: A,
        },
        SysRoute {
            dst: Ipv4Addr::UNSPECIFIED,
            mask: Ipv4Addr::UNSPECIFIED,
            next: B,
        },
    ])
    .unwrap();
    assert_eq!(table.routes()[0].prefix_len(), Some(24));
    assert_eq!(table.routes()[1].prefix_len(), Some(0));
    let m = ServerMessage::SysRoutes(table);
    let bytes = [
        6, 2, 0, 0, //
        192, 168, 1, 0, 255, 255, 255, 0, 10, 0, 0, 1, //
        0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2,
    ];
    assert_eq!(server_bytes(&m), bytes);
    assert_eq!(ServerMessage::parse(&bytes), Ok(m.clone()));
    // The reserved bytes are ignored on receipt.
    let mut reserved = bytes;
    reserved[2] = 0xff;
    reserved[3] = 0x01;
    assert_eq!(ServerMessage::parse(&reserved), Ok(m));
    // An empty table is four bytes.
    let empty = ServerMessage::SysRoutes(SysRouteTable::default());
    assert_eq!(server_bytes(&empty), [6, 0, 0, 0]);
    assert_eq!(ServerMessage::parse(&[6, 0, 0, 0]), Ok(empty));
}

#[test]
fn vpn13_a_count_that_does_not_match_the_entries_is_refused() {
    let mut bytes = vec![6, 2, 0, 0];
    bytes.extend_from_slice(&[192, 168, 1, 0, 255, 255, 255, 0, 10, 0, 0, 1]);
    assert_eq!(ServerMessage::parse(&bytes), Err(length("ROUTE", 28, 16)));
    bytes[1] = 0;
    assert_eq!(ServerMessage::parse(&bytes), Err(length("ROUTE", 4, 16)));
    assert_eq!(ServerMessage::parse(&[6]), Err(length("ROUTE", 4, 1)));
    assert_eq!(
        ServerMessage::parse(&[6, 1, 0]),
        Err(length("ROUTE", 16, 3))
    );
}

#[test]
fn vpn13_a_non_contiguous_mask_or_too_many_routes_is_refused() {
    let bytes = [
        6, 1, 0, 0, 10, 1, 0, 0, 255, 0, 255, 0, 10, 0, 0, 1, //
    ];
    assert_eq!(
        ServerMessage::parse(&bytes),
        Err(WireError::BadMask(Ipv4Addr::new(255, 0, 255, 0)))
    );
    let route = SysRoute {
        dst: Ipv4Addr::new(10, 1, 0, 0),
        mask: Ipv4Addr::new(255, 255, 0, 0),
        next: A,
    };
    assert!(SysRouteTable::new(vec![route; 255]).is_ok());
    assert_eq!(
        SysRouteTable::new(vec![route; 256]),
        Err(WireError::TooManyRoutes(256))
    );
    let bad = SysRoute {
        mask: Ipv4Addr::new(0, 255, 255, 255),
        ..route
    };
    assert_eq!(
        SysRouteTable::new(vec![route, bad]),
        Err(WireError::BadMask(bad.mask))
    );
}

#[test]
fn vpn13_a_full_table_round_trips() {
    let routes: Vec<SysRoute> = (0..=254u8)
        .map(|i| SysRoute {
            dst: Ipv4Addr::new(172, 16, i, 0),
            mask: Ipv4Addr::new(255, 255, 255, 0),
            next: A,
        })
        .collect();
    let m = ServerMessage::SysRoutes(SysRouteTable::new(routes).unwrap());
    let bytes = server_bytes(&m);
    assert_eq!(bytes.len(), 4 + 12 * 255);
    assert_eq!(bytes[1], 255);
    assert_eq!(ServerMessage::parse(&bytes), Ok(m));
}

// ---- VPN-14: GENERAL ----

#[test]
fn vpn14_local_udp4_conn_is_general_subtype_0_then_ip_and_port() {
    let m = ServerMessage::LocalUdp4Conn {
        src: A,
        dst: B,
        ip: Ipv4Addr::new(192, 168, 1, 9),
        port: 0x0102,
    };
    let bytes = [255, 0, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 192, 168, 1, 9, 1, 2];
    assert_eq!(server_bytes(&m), bytes);
    assert_eq!(ServerMessage::parse(&bytes), Ok(m.clone()));
    // `extra` is ignored on receipt.
    let mut extra = bytes;
    extra[2] = 7;
    extra[3] = 9;
    assert_eq!(ServerMessage::parse(&extra), Ok(m));
}

#[test]
fn vpn14_unknown_subtypes_and_short_generals_are_refused() {
    let mut bytes = vec![255, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
    assert_eq!(
        ServerMessage::parse(&bytes),
        Err(WireError::UnknownSubtype(1))
    );
    bytes[1] = 0;
    assert_eq!(
        ServerMessage::parse(&bytes),
        Err(length("GENERAL LOCALUDP4CONN", 18, 12))
    );
    assert_eq!(ServerMessage::parse(&[255]), Err(length("GENERAL", 12, 1)));
}

// ---- VPN-15: what a receiver does with errors ----

#[test]
fn vpn15_unknown_kinds_are_told_from_broken_messages() {
    assert!(WireError::UnknownKind(9).is_unknown());
    assert!(WireError::UnknownSubtype(9).is_unknown());
    assert!(ServerMessage::parse(&[200]).unwrap_err().is_unknown());
    assert!(!ServerMessage::parse(&[5, 1]).unwrap_err().is_unknown());
    assert!(!PeerMessage::parse(&[0; 12][..11]).unwrap_err().is_unknown());
    assert!(!WireError::BadAck(2).is_unknown());
    assert!(!WireError::Empty.is_unknown());
}

// ---- properties ----

/// A valid IPv4 packet: any IHL 5..=15, up to 64 payload bytes, random
/// contents otherwise.
#[derive(Clone, Debug)]
struct AnyPacket(Vec<u8>);

impl Arbitrary for AnyPacket {
    fn arbitrary(g: &mut Gen) -> Self {
        let ihl = 5 + u8::arbitrary(g) % 11;
        let total = usize::from(ihl) * 4 + usize::from(u8::arbitrary(g) % 65);
        let mut bytes: Vec<u8> = (0..total).map(|_| u8::arbitrary(g)).collect();
        bytes[0] = 0x40 | ihl;
        bytes[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        AnyPacket(bytes)
    }
}

/// Any peer message; the packet of a forward lives beside it.
#[derive(Clone, Debug)]
enum AnyPeer {
    Fixed(PeerMessage<'static>),
    Forward(AnyPacket),
}

impl AnyPeer {
    fn message(&self) -> PeerMessage<'_> {
        match self {
            AnyPeer::Fixed(m) => m.clone(),
            AnyPeer::Forward(p) => PeerMessage::Forward(Ipv4Packet::new_checked(&p.0).unwrap()),
        }
    }
}

impl Arbitrary for AnyPeer {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 4 {
            0 => AnyPeer::Fixed(PeerMessage::Heartbeat {
                tun: Ipv4Addr::arbitrary(g),
                ip: Ipv4Addr::arbitrary(g),
                port: u16::arbitrary(g),
                ack: bool::arbitrary(g),
            }),
            1 => AnyPeer::Forward(AnyPacket::arbitrary(g)),
            2 => AnyPeer::Fixed(PeerMessage::Delay {
                src: Ipv4Addr::arbitrary(g),
                dst: Ipv4Addr::arbitrary(g),
                timestamp: u64::arbitrary(g),
            }),
            _ => AnyPeer::Fixed(PeerMessage::Route {
                dst: Ipv4Addr::arbitrary(g),
                next: Ipv4Addr::arbitrary(g),
                delay: u64::arbitrary(g),
            }),
        }
    }
}

fn any_cidr(g: &mut Gen) -> CidrText {
    let len = usize::from(u8::arbitrary(g)) % (CidrText::MAX_LEN + 1);
    let text: String = (0..len)
        .map(|_| char::from(0x21 + u8::arbitrary(g) % 94))
        .collect();
    CidrText::new(&text).unwrap()
}

fn any_mask(g: &mut Gen) -> Ipv4Addr {
    let prefix = u32::from(u8::arbitrary(g) % 33);
    Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0))
}

/// Any server message; the packet of a forward lives beside it.
#[derive(Clone, Debug)]
enum AnyServer {
    Fixed(ServerMessage<'static>),
    Forward(AnyPacket),
}

impl AnyServer {
    fn message(&self) -> ServerMessage<'_> {
        match self {
            AnyServer::Fixed(m) => m.clone(),
            AnyServer::Forward(p) => ServerMessage::Forward(Ipv4Packet::new_checked(&p.0).unwrap()),
        }
    }
}

impl Arbitrary for AnyServer {
    fn arbitrary(g: &mut Gen) -> Self {
        let m = match u8::arbitrary(g) % 8 {
            0 => ServerMessage::Auth {
                ip: Ipv4Addr::arbitrary(g),
                timestamp: i64::arbitrary(g),
                hash: <[u8; 32]>::arbitrary(g),
            },
            1 => return AnyServer::Forward(AnyPacket::arbitrary(g)),
            2 => ServerMessage::ExpectedTun {
                timestamp: i64::arbitrary(g),
                cidr: any_cidr(g),
                hash: <[u8; 32]>::arbitrary(g),
            },
            3 => ServerMessage::Udp4Conn {
                src: Ipv4Addr::arbitrary(g),
                dst: Ipv4Addr::arbitrary(g),
                ip: Ipv4Addr::arbitrary(g),
                port: u16::arbitrary(g),
            },
            4 => ServerMessage::VirtualMac {
                vmac: <[u8; 16]>::arbitrary(g),
                timestamp: i64::arbitrary(g),
                hash: <[u8; 32]>::arbitrary(g),
            },
            5 => ServerMessage::Discovery {
                src: Ipv4Addr::arbitrary(g),
                dst: Ipv4Addr::arbitrary(g),
            },
            6 => {
                let count = usize::from(u8::arbitrary(g));
                let routes = (0..count)
                    .map(|_| SysRoute {
                        dst: Ipv4Addr::arbitrary(g),
                        mask: any_mask(g),
                        next: Ipv4Addr::arbitrary(g),
                    })
                    .collect();
                ServerMessage::SysRoutes(SysRouteTable::new(routes).unwrap())
            }
            _ => ServerMessage::LocalUdp4Conn {
                src: Ipv4Addr::arbitrary(g),
                dst: Ipv4Addr::arbitrary(g),
                ip: Ipv4Addr::arbitrary(g),
                port: u16::arbitrary(g),
            },
        };
        AnyServer::Fixed(m)
    }
}

#[test]
fn vpn1_every_peer_message_round_trips_at_its_encoded_length() {
    fn prop(any: AnyPeer) -> bool {
        let m = any.message();
        let mut out = vec![0xaa];
        m.encode(&mut out);
        out.len() == 1 + m.encoded_len() && PeerMessage::parse(&out[1..]) == Ok(m)
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(AnyPeer) -> bool);
}

#[test]
fn vpn1_every_server_message_round_trips_at_its_encoded_length() {
    fn prop(any: AnyServer) -> bool {
        let m = any.message();
        let mut out = vec![0xaa];
        m.encode(&mut out);
        out.len() == 1 + m.encoded_len() && ServerMessage::parse(&out[1..]) == Ok(m)
    }
    QuickCheck::new()
        .tests(2000)
        .quickcheck(prop as fn(AnyServer) -> bool);
}

#[test]
fn vpn2_forwarded_packets_keep_their_addresses() {
    fn prop(p: AnyPacket) -> bool {
        let packet = Ipv4Packet::new_checked(&p.0).unwrap();
        packet.source() == Ipv4Addr::new(p.0[12], p.0[13], p.0[14], p.0[15])
            && packet.destination() == Ipv4Addr::new(p.0[16], p.0[17], p.0[18], p.0[19])
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(AnyPacket) -> bool);
}

#[test]
fn vpn15_no_panic_on_any_bytes() {
    fn prop(bytes: Vec<u8>, kind: u8) -> TestResult {
        let _ = PeerMessage::parse(&bytes);
        let _ = ServerMessage::parse(&bytes);
        let _ = Ipv4Packet::new_checked(&bytes);
        // Again with a chosen kind byte, so every parser sees noise.
        let mut kinded = vec![kind % 8];
        kinded.extend_from_slice(&bytes);
        let _ = PeerMessage::parse(&kinded);
        let _ = ServerMessage::parse(&kinded);
        kinded[0] = 255;
        let _ = ServerMessage::parse(&kinded);
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(3000)
        .quickcheck(prop as fn(Vec<u8>, u8) -> TestResult);
}

#[test]
fn vpn15_truncations_of_valid_messages_are_errors_not_panics() {
    fn prop(peer: AnyPeer, server: AnyServer) -> bool {
        let p = peer_bytes(&peer.message());
        let s = server_bytes(&server.message());
        (0..p.len()).all(|n| PeerMessage::parse(&p[..n]).is_err())
            && (0..s.len()).all(|n| ServerMessage::parse(&s[..n]).is_err())
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(AnyPeer, AnyServer) -> bool);
}
