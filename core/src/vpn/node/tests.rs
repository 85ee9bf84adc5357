//! The node against a scripted server and scripted peers.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use super::packets::decrement_ttl;
use super::*;
use crate::codec::websocket::{MessageReader, Role, accept_key, encode_close, encode_message};
use crate::testing::{Harness, test_epoch};
use crate::vpn::crypto::{Opener, auth_hash, expttun_hash};
use crate::vpn::wire::{CidrText, Ipv4Packet, PeerMessage, ServerMessage};

const PASSWORD: &[u8] = b"correct horse";
const ITERATIONS: u32 = 1_000;

fn server_addr() -> SocketAddr {
    "192.0.2.1:8443".parse().unwrap()
}

fn stun_addr() -> SocketAddr {
    "192.0.2.9:3478".parse().unwrap()
}

fn config(address: Option<(Ipv4Addr, u8)>) -> Config {
    let mut config = Config::new(
        server_addr(),
        PASSWORD,
        WallClock::new(test_epoch(), 1_800_000_000_000),
    );
    config.address = address;
    config.kdf_iterations = ITERATIONS;
    config.stun = Some(stun_addr());
    config
}

/// The scripted server end of the node's WebSocket.
struct Script {
    h: Harness<Node>,
    conn: ConnId,
    socket: Option<SocketId>,
    reader: MessageReader,
    key: String,
}

impl Script {
    fn start(config: Config) -> (Script, Vec<Action>) {
        let node = Node::new(config, [7; 32], test_epoch());
        let mut h = Harness::with_machine(node);
        let actions = h.drain();
        let conn = actions
            .iter()
            .find_map(|a| match a {
                Action::Connect { conn, addr } => {
                    assert_eq!(*addr, server_addr());
                    Some(*conn)
                }
                _ => None,
            })
            .expect("connects at once");
        let socket = actions.iter().find_map(|a| match a {
            Action::BindUdp { socket, .. } => Some(*socket),
            _ => None,
        });
        (
            Script {
                h,
                conn,
                socket,
                reader: MessageReader::new(Role::Server, 1 << 20),
                key: String::new(),
            },
            actions,
        )
    }

    /// TCP up and the UDP socket bound; the upgrade request is checked.
    fn connect(&mut self) {
        if let Some(socket) = self.socket {
            self.h.input(Input::UdpBound {
                socket,
                local: "10.9.0.5:4000".parse().unwrap(),
            });
        }
        let actions = self.h.input(Input::Connected {
            conn: self.conn,
            local: "10.9.0.5:50000".parse().unwrap(),
        });
        let request = String::from_utf8(crate::testing::sent_to(&actions, self.conn)).unwrap();
        assert!(request.starts_with("GET / HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("Upgrade: websocket\r\n"));
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        self.key = key.to_owned();
    }

    /// The 101 answer; the messages the node sends right after.
    fn upgrade(&mut self) -> Vec<ServerMessage<'static>> {
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept_key(&self.key)
        );
        let actions = self.h.recv(self.conn, answer.as_bytes());
        self.messages(&actions)
    }

    fn frames(&mut self, actions: &[Action]) -> Vec<Message> {
        let bytes = crate::testing::sent_to(actions, self.conn);
        self.reader.messages(&bytes).map(Result::unwrap).collect()
    }

    fn messages(&mut self, actions: &[Action]) -> Vec<ServerMessage<'static>> {
        self.frames(actions)
            .into_iter()
            .filter_map(|m| match m {
                Message::Binary(bytes) => Some(owned(&bytes)),
                _ => None,
            })
            .collect()
    }

    fn send(&mut self, message: &ServerMessage<'_>) -> Vec<Action> {
        let mut payload = Vec::new();
        message.encode(&mut payload);
        let mut frame = Vec::new();
        encode_message(&Message::Binary(payload), None, &mut frame);
        self.h.recv(self.conn, &frame)
    }

    /// Upgrade, and answer the login as the server would; the node's address.
    fn login(&mut self, assign: Option<&str>) -> Ipv4Addr {
        self.connect();
        let sent = self.upgrade();
        assert!(
            matches!(sent[0], ServerMessage::VirtualMac { .. }),
            "{sent:?}"
        );
        let ip = match (&sent[1], assign) {
            (ServerMessage::ExpectedTun { .. }, Some(cidr)) => {
                let ts = 1_800_000_000;
                let cidr = CidrText::new(cidr).unwrap();
                let hash = expttun_hash(PASSWORD, cidr.field(), ts);
                let actions = self.send(&ServerMessage::ExpectedTun {
                    timestamp: ts,
                    cidr,
                    hash,
                });
                match self.messages(&actions).as_slice() {
                    [
                        ServerMessage::Auth {
                            ip,
                            timestamp,
                            hash,
                        },
                    ] => {
                        assert_eq!(*hash, auth_hash(PASSWORD, *ip, *timestamp));
                        *ip
                    }
                    other => panic!("{other:?}"),
                }
            }
            (ServerMessage::Auth { ip, .. }, None) => *ip,
            (other, _) => panic!("{other:?}"),
        };
        let ts = 1_800_000_001;
        self.send(&ServerMessage::Auth {
            ip,
            timestamp: ts,
            hash: auth_hash(PASSWORD, ip, ts),
        });
        let events = self.h.events();
        assert!(events.contains(&Event::LoggedIn { ip }), "{events:?}");
        ip
    }
}

fn owned(bytes: &[u8]) -> ServerMessage<'static> {
    let leaked: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
    ServerMessage::parse(leaked).unwrap()
}

/// A minimal IPv4/UDP packet from `src` to `dst`.
fn packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 28, 0, 0, 0, 0, ttl, 17, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in header.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

#[test]
fn vpn_v_login_with_an_assigned_address() {
    let (mut s, _) = Script::start(config(None));
    let assigned = s.login(Some("10.0.0.7/24"));
    assert_eq!(assigned, ip(7));
    assert!(
        s.h.machine.status(s.h.now).logged_in,
        "the AUTH echo completes the login"
    );
}

#[test]
fn vpn_v_login_with_a_fixed_address_and_events() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    let events = s.h.events();
    assert!(
        events.contains(&Event::Address {
            ip: ip(3),
            prefix: 24
        }),
        "{events:?}"
    );
    assert_eq!(s.login(None), ip(3));
}

#[test]
fn vpn_v_a_forged_address_answer_is_refused() {
    let (mut s, _) = Script::start(config(None));
    s.connect();
    s.upgrade();
    let cidr = CidrText::new("10.0.0.7/24").unwrap();
    let actions = s.send(&ServerMessage::ExpectedTun {
        timestamp: 1_800_000_000,
        cidr,
        hash: [0; 32],
    });
    assert!(actions.iter().any(|a| matches!(a, Action::Close { .. })));
    assert_eq!(s.h.machine.status(s.h.now).address, None);
}

#[test]
fn vpn_v_wrong_accept_key_drops_and_reconnects_with_backoff() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.connect();
    let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: nope\r\n\r\n";
    let actions = s.h.recv(s.conn, answer.as_bytes());
    assert!(actions.contains(&Action::Close { conn: s.conn }));
    let lost = s.h.events();
    assert!(
        lost.iter().any(|e| matches!(e, Event::ServerLost { retry_in, reason } if *retry_in == Duration::from_secs(1) && reason.contains("Accept"))),
        "{lost:?}"
    );
    assert!(
        s.h.advance(Duration::from_millis(999))
            .iter()
            .all(|a| !matches!(a, Action::Connect { .. }))
    );
    assert!(
        s.h.advance(Duration::from_millis(1))
            .iter()
            .any(|a| matches!(a, Action::Connect { .. }))
    );
}

#[test]
fn vpn_v_bad_password_close_is_fatal() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.connect();
    s.upgrade();
    let mut frame = Vec::new();
    encode_close(1008, "bad password", None, &mut frame);
    s.h.recv(s.conn, &frame);
    let events = s.h.events();
    assert!(
        events.iter().any(|e| matches!(e, Event::Fatal { .. })),
        "{events:?}"
    );
    assert_eq!(s.h.machine.poll_timeout(), None);
    assert!(s.h.advance(Duration::from_secs(60)).is_empty());
}

#[test]
fn vpn_s23_packets_go_through_the_server_without_a_direct_path() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.login(None);
    let p = packet(ip(3), ip(4), 64);
    let actions = s.h.input(Input::TunPacket(&p));
    match s.messages(&actions).as_slice() {
        [ServerMessage::Forward(sent)] => assert_eq!(sent.as_bytes(), p.as_slice()),
        other => panic!("{other:?}"),
    }
    // Outside the network, or malformed: dropped.
    assert!(
        s.h.input(Input::TunPacket(&packet(
            ip(3),
            Ipv4Addr::new(8, 8, 8, 8),
            64
        )))
        .is_empty()
    );
    assert!(s.h.input(Input::TunPacket(&p[..10])).is_empty());
    assert_eq!(s.h.machine.stats().dropped_bad_packet, 2);
    assert_eq!(s.h.machine.stats().server_out, 1);
}

#[test]
fn vpn_s1_a_forward_from_the_server_reaches_the_tun_and_wakes_the_peer() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.login(None);
    let p = packet(ip(4), ip(3), 64);
    let actions = s.send(&ServerMessage::Forward(
        Ipv4Packet::new_checked(&p).unwrap(),
    ));
    assert!(actions.contains(&Action::WriteTun(p.clone())));
    assert_eq!(s.h.machine.peer_state(ip(4)), Some(PeerState::Preparing));
    // The next tick asks STUN.
    let actions = s.h.advance(Duration::from_secs(1));
    assert!(
        actions.iter().any(|a| matches!(a, Action::SendTo { to, data, .. } if *to == stun_addr() && stun::is_stun(data))),
        "{actions:?}"
    );
}

#[test]
fn vpn_s2_without_p2p_peers_fail_and_no_socket_is_bound() {
    let mut c = config(Some((ip(3), 24)));
    c.p2p = false;
    let (mut s, actions) = Script::start(c);
    assert!(!actions.iter().any(|a| matches!(a, Action::BindUdp { .. })));
    s.login(None);
    let p = packet(ip(4), ip(3), 64);
    s.send(&ServerMessage::Forward(
        Ipv4Packet::new_checked(&p).unwrap(),
    ));
    assert_eq!(s.h.machine.peer_state(ip(4)), Some(PeerState::Failed));
}

/// Drives a node to CONNECTED with peer 10.0.0.4, playing the peer by hand:
/// returns the peer's opener of our datagrams and the peer's public endpoint.
fn connected(s: &mut Script) -> (Opener, SocketAddrV4, MasterKey, u64) {
    let master = MasterKey::derive(PASSWORD, "10.0.0.0/24", ITERATIONS);
    let peer_public = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 20), 7000);
    s.send(&ServerMessage::Udp4Conn {
        src: ip(4),
        dst: ip(3),
        ip: *peer_public.ip(),
        port: peer_public.port(),
    });
    assert_eq!(s.h.machine.peer_state(ip(4)), Some(PeerState::Preparing));
    let actions = s.h.advance(Duration::from_secs(1));
    let (id, request) = actions
        .iter()
        .find_map(|a| match a {
            Action::SendTo { to, data, .. } if *to == stun_addr() => {
                Some((stun::parse(data).unwrap().transaction_id, data.clone()))
            }
            _ => None,
        })
        .expect("a STUN request");
    let _ = request;
    let mut answer = Vec::new();
    stun::encode_with_fingerprint(
        &stun::Message::binding_success(id, "198.51.100.10:4000".parse().unwrap(), None),
        &mut answer,
    )
    .unwrap();
    let actions = s.h.input(Input::Datagram {
        socket: s.socket.unwrap(),
        from: stun_addr(),
        data: &answer,
    });
    match s.messages(&actions).as_slice() {
        [
            ServerMessage::Udp4Conn {
                src,
                dst,
                ip: pip,
                port,
            },
        ] => {
            assert_eq!((*src, *dst), (ip(3), ip(4)));
            assert_eq!(
                SocketAddrV4::new(*pip, *port),
                "198.51.100.10:4000".parse().unwrap()
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.h.machine.peer_state(ip(4)), Some(PeerState::Connecting));
    // The peer's heartbeat with ACK.
    let mut sealer = Sealer::new(&master, ip(4), [9; 32]);
    let mut plain = Vec::new();
    PeerMessage::Heartbeat {
        tun: ip(4),
        ip: *peer_public.ip(),
        port: peer_public.port(),
        ack: true,
    }
    .encode(&mut plain);
    let mut datagram = Vec::new();
    sealer.seal(ip(3), &plain, &mut datagram).unwrap();
    let actions = s.h.input(Input::Datagram {
        socket: s.socket.unwrap(),
        from: SocketAddr::V4(peer_public),
        data: &datagram,
    });
    assert_eq!(s.h.machine.peer_state(ip(4)), Some(PeerState::Connected));
    let mut opener = Opener::new(&master, ip(3), ip(4));
    // The probe VPN-S14 asks for.
    let probe = actions
        .iter()
        .find_map(|a| match a {
            Action::SendTo { to, data, .. } if *to == SocketAddr::V4(peer_public) => {
                Some(data.clone())
            }
            _ => None,
        })
        .expect("a probe");
    let plain = opener.open(&probe).unwrap();
    let Ok(PeerMessage::Delay {
        src,
        dst,
        timestamp: probe_ts,
    }) = PeerMessage::parse(&plain)
    else {
        panic!("not a probe");
    };
    assert_eq!((src, dst), (ip(3), ip(4)));
    let events = s.h.events();
    assert!(
        events.iter().any(|e| matches!(e, Event::Peer { vip, to: PeerState::Connected, endpoint: Some(ep), .. } if *vip == ip(4) && *ep == peer_public)),
        "{events:?}"
    );
    (opener, peer_public, master, probe_ts)
}

#[test]
fn vpn_s14_a_scripted_peer_connects_and_packets_go_direct_sealed() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.login(None);
    let (mut opener, peer_public, _, _) = connected(&mut s);
    let p = packet(ip(3), ip(4), 64);
    let actions = s.h.input(Input::TunPacket(&p));
    let datagram = actions
        .iter()
        .find_map(|a| match a {
            Action::SendTo { to, data, .. } if *to == SocketAddr::V4(peer_public) => {
                Some(data.clone())
            }
            _ => None,
        })
        .expect("sent direct");
    assert!(s.messages(&actions).is_empty(), "not through the server");
    let plain = opener.open(&datagram).unwrap();
    assert_eq!(plain[0], crate::vpn::wire::peer_kind::FORWARD);
    assert_eq!(&plain[1..], p.as_slice());
    // Heartbeats stop: back to INIT after 3 s, and packets go through the server again.
    s.h.advance(Duration::from_secs(3));
    s.h.advance(Duration::from_secs(1));
    assert_eq!(s.h.machine.peer_state(ip(4)), Some(PeerState::Init));
    let actions = s.h.input(Input::TunPacket(&p));
    assert_eq!(s.messages(&actions).len(), 1);
}

#[test]
fn vpn_c6_forged_and_replayed_datagrams_change_nothing() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.login(None);
    let (_, peer_public, master, _) = connected(&mut s);
    let mut sealer = Sealer::new(&master, ip(4), [10; 32]);
    let p = packet(ip(4), ip(3), 64);
    let mut plain = vec![crate::vpn::wire::peer_kind::FORWARD];
    plain.extend_from_slice(&p);
    let mut datagram = Vec::new();
    sealer.seal(ip(3), &plain, &mut datagram).unwrap();
    let from = SocketAddr::V4(peer_public);
    let socket = s.socket.unwrap();
    let actions = s.h.input(Input::Datagram {
        socket,
        from,
        data: &datagram,
    });
    assert_eq!(actions, [Action::WriteTun(p.clone())]);
    // Replayed: dropped and counted.
    assert!(
        s.h.input(Input::Datagram {
            socket,
            from,
            data: &datagram
        })
        .is_empty()
    );
    // A fresh datagram with one bit flipped: dropped and counted.
    let mut forged = Vec::new();
    sealer.seal(ip(3), &plain, &mut forged).unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(
        s.h.input(Input::Datagram {
            socket,
            from,
            data: &forged
        })
        .is_empty()
    );
    let crypto = s.h.machine.stats().crypto;
    assert_eq!(crypto.replayed, 1, "{crypto:?}");
    assert_eq!(s.h.machine.stats().tun_out, 1);
    assert_eq!(crypto.auth_failed, 1, "{crypto:?}");
}

#[test]
fn vpn_r1_probes_are_echoed_and_measured() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.login(None);
    let (mut opener, peer_public, master, probe_ts) = connected(&mut s);
    let mut sealer = Sealer::new(&master, ip(4), [11; 32]);
    let from = SocketAddr::V4(peer_public);
    let socket = s.socket.unwrap();
    // The peer probes us: we echo the same bytes back.
    let mut plain = Vec::new();
    PeerMessage::Delay {
        src: ip(4),
        dst: ip(3),
        timestamp: 77,
    }
    .encode(&mut plain);
    let mut datagram = Vec::new();
    sealer.seal(ip(3), &plain, &mut datagram).unwrap();
    let actions = s.h.input(Input::Datagram {
        socket,
        from,
        data: &datagram,
    });
    let echo = match actions.as_slice() {
        [Action::SendTo { to, data, .. }] if *to == from => opener.open(data).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(echo, plain);
    // Our probe comes back 25 ms later: the direct delay.
    s.h.now += Duration::from_millis(25);
    let mut plain = Vec::new();
    PeerMessage::Delay {
        src: ip(3),
        dst: ip(4),
        timestamp: probe_ts,
    }
    .encode(&mut plain);
    sealer.seal(ip(3), &plain, &mut datagram).unwrap();
    s.h.input(Input::Datagram {
        socket,
        from,
        data: &datagram,
    });
    let status = s.h.machine.status(s.h.now);
    assert_eq!(status.peers[0].delay_ms, Some(25));
}

#[test]
fn ttl_decrement_keeps_the_checksum_valid() {
    for ttl in [2u8, 64, 255] {
        let mut p = packet(ip(1), ip(2), ttl);
        decrement_ttl(&mut p);
        assert_eq!(p[8], ttl - 1);
        assert_eq!(checksum(&p[..20]), 0, "ttl {ttl}");
    }
}
