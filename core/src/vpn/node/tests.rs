//! The node against a scripted server and scripted peers.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use super::packets::decrement_ttl;
use super::*;
use crate::codec::websocket::{MessageReader, Role, accept_key, encode_close, encode_message};
use crate::testing::{Harness, test_epoch};
use crate::vpn::crypto::{Opener, auth_hash, expttun_hash, server_auth_hash, server_expttun_hash};
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
        let (ip, auth_ts) = match (&sent[1], assign) {
            (
                ServerMessage::ExpectedTun {
                    timestamp: request_ts,
                    ..
                },
                Some(cidr),
            ) => {
                let ts = 1_800_000_000;
                let cidr = CidrText::new(cidr).unwrap();
                let hash = server_expttun_hash(PASSWORD, cidr.field(), *request_ts, ts);
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
                        (*ip, *timestamp)
                    }
                    other => panic!("{other:?}"),
                }
            }
            (ServerMessage::Auth { ip, timestamp, .. }, None) => (*ip, *timestamp),
            (other, _) => panic!("{other:?}"),
        };
        let ts = 1_800_000_001;
        self.send(&ServerMessage::Auth {
            ip,
            timestamp: ts,
            hash: server_auth_hash(PASSWORD, ip, auth_ts, ts),
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

/// Whether `actions` close the link and the node is still not logged in.
fn refused_login(s: &mut Script, actions: &[Action]) -> bool {
    let closed = actions.contains(&Action::Close { conn: s.conn });
    let events = s.h.events();
    closed
        && !s.h.machine.status(s.h.now).logged_in
        && !events.iter().any(|e| matches!(e, Event::LoggedIn { .. }))
}

#[test]
fn vpn_n1_the_nodes_own_auth_reflected_is_not_an_echo() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.connect();
    let sent = s.upgrade();
    let ServerMessage::Auth { .. } = sent[1] else {
        panic!("{sent:?}");
    };
    // A fake server that does not know the password sends our AUTH back.
    let actions = s.send(&sent[1]);
    assert!(refused_login(&mut s, &actions), "{actions:?}");
}

#[test]
fn vpn_n1_a_client_expttun_passed_off_as_the_answer_is_refused() {
    // Another node's request (captured), with a client proof, as the answer.
    let (mut s, _) = Script::start(config(None));
    s.connect();
    s.upgrade();
    let ts = 1_800_000_000;
    let cidr = CidrText::new("10.0.0.7/24").unwrap();
    let actions = s.send(&ServerMessage::ExpectedTun {
        timestamp: ts,
        cidr,
        hash: expttun_hash(PASSWORD, cidr.field(), ts),
    });
    assert!(refused_login(&mut s, &actions), "{actions:?}");
    assert_eq!(s.h.machine.status(s.h.now).address, None);
    // Our own request reflected back.
    let (mut s, _) = Script::start(config(None));
    s.connect();
    let sent = s.upgrade();
    let ServerMessage::ExpectedTun { .. } = sent[1] else {
        panic!("{sent:?}");
    };
    let actions = s.send(&sent[1]);
    assert!(refused_login(&mut s, &actions), "{actions:?}");
    assert_eq!(s.h.machine.status(s.h.now).address, None);
}

#[test]
fn vpn_n1_a_stale_server_proof_is_refused() {
    let now_s = 1_800_000_000;
    // An AUTH echo proven for our AUTH, but stamped 31 s ago.
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.connect();
    let sent = s.upgrade();
    let ServerMessage::Auth { timestamp, .. } = sent[1] else {
        panic!("{sent:?}");
    };
    let stale = now_s - 31;
    let actions = s.send(&ServerMessage::Auth {
        ip: ip(3),
        timestamp: stale,
        hash: server_auth_hash(PASSWORD, ip(3), timestamp, stale),
    });
    assert!(refused_login(&mut s, &actions), "{actions:?}");
    // An EXPTTUN answer proven for our request, but stamped 31 s ahead.
    let (mut s, _) = Script::start(config(None));
    s.connect();
    let sent = s.upgrade();
    let ServerMessage::ExpectedTun { timestamp, .. } = sent[1] else {
        panic!("{sent:?}");
    };
    let ahead = now_s + 31;
    let cidr = CidrText::new("10.0.0.7/24").unwrap();
    let actions = s.send(&ServerMessage::ExpectedTun {
        timestamp: ahead,
        cidr,
        hash: server_expttun_hash(PASSWORD, cidr.field(), timestamp, ahead),
    });
    assert!(refused_login(&mut s, &actions), "{actions:?}");
    assert_eq!(s.h.machine.status(s.h.now).address, None);
    // Within ±30 s the same answers are taken.
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.connect();
    let sent = s.upgrade();
    let ServerMessage::Auth { timestamp, .. } = sent[1] else {
        panic!("{sent:?}");
    };
    let edge = now_s - 30;
    s.send(&ServerMessage::Auth {
        ip: ip(3),
        timestamp: edge,
        hash: server_auth_hash(PASSWORD, ip(3), timestamp, edge),
    });
    assert!(s.h.machine.status(s.h.now).logged_in);
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

/// Seals `message` as the peer `vip` would, for us (10.0.0.3).
fn sealed(sealer: &mut Sealer, message: &PeerMessage<'_>) -> Vec<u8> {
    let mut plain = Vec::new();
    message.encode(&mut plain);
    let mut datagram = Vec::new();
    sealer.seal(ip(3), &plain, &mut datagram).unwrap();
    datagram
}

fn heartbeat(vip: Ipv4Addr, ack: bool) -> PeerMessage<'static> {
    PeerMessage::Heartbeat {
        tun: vip,
        ip: Ipv4Addr::UNSPECIFIED,
        port: 0,
        ack,
    }
}

/// Drives a second peer `vip` (heard at `endpoint`) to CONNECTED once our
/// public endpoint is known; the actions of its heartbeat (the probe).
fn punch(
    s: &mut Script,
    sealer: &mut Sealer,
    vip: Ipv4Addr,
    endpoint: SocketAddrV4,
) -> Vec<Action> {
    s.send(&ServerMessage::Udp4Conn {
        src: vip,
        dst: ip(3),
        ip: *endpoint.ip(),
        port: endpoint.port(),
    });
    let actions = s.h.advance(Duration::from_secs(1));
    let id = actions
        .iter()
        .find_map(|a| match a {
            Action::SendTo { to, data, .. } if *to == stun_addr() => {
                Some(stun::parse(data).unwrap().transaction_id)
            }
            _ => None,
        })
        .expect("a STUN request");
    let mut answer = Vec::new();
    stun::encode_with_fingerprint(
        &stun::Message::binding_success(id, "198.51.100.10:4000".parse().unwrap(), None),
        &mut answer,
    )
    .unwrap();
    s.h.input(Input::Datagram {
        socket: s.socket.unwrap(),
        from: stun_addr(),
        data: &answer,
    });
    assert_eq!(s.h.machine.peer_state(vip), Some(PeerState::Connecting));
    let actions = s.h.input(Input::Datagram {
        socket: s.socket.unwrap(),
        from: SocketAddr::V4(endpoint),
        data: &sealed(sealer, &heartbeat(vip, true)),
    });
    assert_eq!(s.h.machine.peer_state(vip), Some(PeerState::Connected));
    actions
}

#[test]
fn vpn_r3_route_updates_go_where_heartbeats_arrive_now() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.login(None);
    let (mut at_4, peer_public, master, _) = connected(&mut s);
    let socket = s.socket.unwrap();
    let mut from_4 = Sealer::new(&master, ip(4), [20; 32]);
    // Peer 4 was heard once on its LAN address, then only on its public one.
    let lan = SocketAddrV4::new(Ipv4Addr::new(192, 168, 7, 4), 7000);
    s.h.input(Input::Datagram {
        socket,
        from: SocketAddr::V4(lan),
        data: &sealed(&mut from_4, &heartbeat(ip(4), true)),
    });
    for _ in 0..5 {
        s.h.input(Input::Datagram {
            socket,
            from: SocketAddr::V4(peer_public),
            data: &sealed(&mut from_4, &heartbeat(ip(4), true)),
        });
        s.h.advance(Duration::from_secs(1));
    }
    assert_eq!(s.h.machine.peer_state(ip(4)), Some(PeerState::Connected));
    // Peer 5 connects and answers our probe: its direct route goes to peer 4.
    let mut from_5 = Sealer::new(&master, ip(5), [21; 32]);
    let at_5_endpoint = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 21), 7001);
    let actions = punch(&mut s, &mut from_5, ip(5), at_5_endpoint);
    let mut at_5 = Opener::new(&master, ip(3), ip(5));
    let probe = actions
        .iter()
        .find_map(|a| match a {
            Action::SendTo { to, data, .. } if *to == SocketAddr::V4(at_5_endpoint) => {
                Some(at_5.open(data).unwrap())
            }
            _ => None,
        })
        .expect("a probe");
    let actions = s.h.input(Input::Datagram {
        socket,
        from: SocketAddr::V4(at_5_endpoint),
        data: &sealed(&mut from_5, &PeerMessage::parse(&probe).unwrap()),
    });
    let routes: Vec<SocketAddr> = actions
        .iter()
        .filter_map(|a| match a {
            Action::SendTo { to, data, .. } => match at_4.open(data) {
                Ok(plain) => matches!(
                    PeerMessage::parse(&plain),
                    Ok(PeerMessage::Route { dst, .. }) if dst == ip(5)
                )
                .then_some(*to),
                Err(_) => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(routes, [SocketAddr::V4(peer_public)], "{actions:?}");
}

#[test]
fn vpn_n4_direct_packets_from_outside_the_network_are_dropped() {
    let (mut s, _) = Script::start(config(Some((ip(3), 24))));
    s.login(None);
    let (_, peer_public, master, _) = connected(&mut s);
    let mut from_4 = Sealer::new(&master, ip(4), [22; 32]);
    let socket = s.socket.unwrap();
    let mut send = |s: &mut Script, p: &[u8]| {
        s.h.input(Input::Datagram {
            socket,
            from: SocketAddr::V4(peer_public),
            data: &sealed(
                &mut from_4,
                &PeerMessage::Forward(Ipv4Packet::new_checked(p).unwrap()),
            ),
        })
    };
    let before = s.h.machine.stats();
    for src in [Ipv4Addr::new(8, 8, 8, 8), ip(0), ip(255)] {
        assert!(send(&mut s, &packet(src, ip(3), 64)).is_empty(), "{src}");
    }
    // A host of the overlay (relayed for another node) is delivered.
    let relayed = packet(ip(9), ip(3), 64);
    assert_eq!(send(&mut s, &relayed), [Action::WriteTun(relayed.clone())]);
    let after = s.h.machine.stats();
    assert_eq!(after.dropped_bad_packet - before.dropped_bad_packet, 3);
    assert_eq!(after.tun_out - before.tun_out, 1);
}

#[test]
fn vpn_c12_forged_datagrams_create_no_state_and_openers_are_bounded() {
    let mut c = config(Some((Ipv4Addr::new(10, 0, 0, 1), 16)));
    c.max_peers = 2;
    let (mut s, _) = Script::start(c);
    s.connect();
    let socket = s.socket.unwrap();
    let from: SocketAddr = "198.51.100.7:9".parse().unwrap();
    for i in 0..5000u32 {
        let mut d = vec![crate::vpn::crypto::VERSION];
        d.extend_from_slice(&Ipv4Addr::from(0x0a00_0002 + i).octets());
        d.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
        d.extend_from_slice(&[0; 16]);
        s.h.input(Input::Datagram {
            socket,
            from,
            data: &d,
        });
    }
    let keys = s.h.machine.keys.as_ref().unwrap();
    assert!(keys.openers.is_empty());
    assert_eq!(keys.openers.stats().auth_failed, 5000);
    assert!(s.h.machine.peers.is_empty());
    // Genuine senders: at most max_peers openers while theirs are live.
    let master = MasterKey::derive(PASSWORD, "10.0.0.0/16", ITERATIONS);
    for (n, seed) in [(4u8, 30u8), (5, 31), (6, 32)] {
        let mut sealer = Sealer::new(&master, ip(n), [seed; 32]);
        s.h.input(Input::Datagram {
            socket,
            from,
            data: &{
                let mut plain = Vec::new();
                heartbeat(ip(n), false).encode(&mut plain);
                let mut d = Vec::new();
                sealer
                    .seal(Ipv4Addr::new(10, 0, 0, 1), &plain, &mut d)
                    .unwrap();
                d
            },
        });
    }
    let keys = s.h.machine.keys.as_ref().unwrap();
    assert_eq!(keys.openers.len(), 2);
    assert!(keys.openers.opener(ip(6)).is_none());
    assert_eq!(keys.openers.stats().no_room, 1);
}

#[test]
fn vpn_n5_a_full_peer_table_evicts_an_idle_init_or_failed_peer() {
    let mut c = config(Some((ip(3), 24)));
    c.p2p = false;
    c.max_peers = 2;
    let (mut s, _) = Script::start(c);
    s.login(None);
    let forward = |s: &mut Script, src: u8| {
        let p = packet(ip(src), ip(3), 64);
        let actions = s.send(&ServerMessage::Forward(
            Ipv4Packet::new_checked(&p).unwrap(),
        ));
        assert!(
            actions.contains(&Action::WriteTun(p)),
            "delivered either way"
        );
    };
    // Spoofed sources fill the table (FAILED: no p2p).
    forward(&mut s, 4);
    forward(&mut s, 5);
    forward(&mut s, 6);
    assert_eq!(s.h.machine.peer_state(ip(6)), None, "full, nobody idle");
    s.h.now += Duration::from_secs(30);
    forward(&mut s, 5);
    s.h.now += Duration::from_secs(31);
    // 4 has been idle for 61 s, 5 for 31 s: 4 makes room.
    forward(&mut s, 6);
    assert_eq!(s.h.machine.peer_state(ip(6)), Some(PeerState::Failed));
    assert_eq!(s.h.machine.peer_state(ip(4)), None);
    assert_eq!(s.h.machine.peer_state(ip(5)), Some(PeerState::Failed));
    forward(&mut s, 7);
    assert_eq!(s.h.machine.peer_state(ip(7)), None, "5 and 6 are not idle");
}
