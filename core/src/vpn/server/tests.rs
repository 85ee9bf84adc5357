//! Machine tests of the VPN server: inputs in, actions out, no sockets. Client
//! frames are built, and the server's output parsed, with the codecs.
use super::*;
use crate::codec::Parsed;
use crate::codec::http1::{Request, ResponseHead, Version, parse_response_head};
use crate::codec::websocket::encode_message;
use crate::testing::{Harness, test_epoch};
use crate::vpn::WallClock;
use crate::vpn::crypto::auth_hash;
use crate::vpn::wire::Ipv4Packet;
use crate::vpn::wire::{SysRoute, WireError};
use quickcheck::{QuickCheck, TestResult};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const PASSWORD: &[u8] = b"hunter2";
const UNIX_MS: i64 = 1_700_000_000_000;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn config() -> Config {
    Config::new(
        "127.0.0.1:0".parse().unwrap(),
        PASSWORD,
        "10.0.0.0/24".parse().unwrap(),
        WallClock::new(test_epoch(), UNIX_MS),
    )
}

/// A valid upgrade request for `target`.
fn request(target: &str) -> Request {
    Request::get(target, Version::Http11)
        .with_header("Host", "vpn.example")
        .with_header("Upgrade", "websocket")
        .with_header("Connection", "Upgrade")
        .with_header("Sec-WebSocket-Key", KEY)
        .with_header("Sec-WebSocket-Version", "13")
}

fn encoded_request(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode(&mut out);
    out
}

/// A masked client frame holding `message`.
fn client(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(message, Some(MASK), &mut out);
    out
}

fn payload(message: &ServerMessage<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    message.encode(&mut out);
    out
}

/// A masked binary frame holding a server message.
fn frame(message: &ServerMessage<'_>) -> Vec<u8> {
    client(&Message::Binary(payload(message)))
}

fn auth(addr: Ipv4Addr, timestamp: i64) -> Vec<u8> {
    frame(&ServerMessage::Auth {
        ip: addr,
        timestamp,
        hash: auth_hash(PASSWORD, addr, timestamp),
    })
}

fn vmac_msg(vmac: [u8; 16], timestamp: i64) -> Vec<u8> {
    frame(&ServerMessage::VirtualMac {
        vmac,
        timestamp,
        hash: vmac_hash(PASSWORD, &vmac, timestamp),
    })
}

fn expttun_msg(text: &str, timestamp: i64) -> Vec<u8> {
    let cidr = CidrText::new(text).unwrap();
    frame(&ServerMessage::ExpectedTun {
        timestamp,
        cidr,
        hash: expttun_hash(PASSWORD, cidr.field(), timestamp),
    })
}

/// A minimal IPv4 header (UDP, no options) from `src` to `dst`, then `body`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, body: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + body.len()).unwrap();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(body);
    p
}

fn forward_payload(src: Ipv4Addr, dst: Ipv4Addr, body: &[u8]) -> Vec<u8> {
    let packet = ipv4(src, dst, body);
    payload(&ServerMessage::Forward(
        Ipv4Packet::new_checked(&packet).unwrap(),
    ))
}

/// The messages the server sent to `conn` in `actions` (the WebSocket part).
fn sent(actions: &[Action], conn: ConnId) -> Vec<Message> {
    let mut reader = MessageReader::new(Role::Client, usize::MAX);
    let mut out = Vec::new();
    for action in actions {
        if let Action::Send { conn: c, data } = action
            && *c == conn
        {
            for message in reader.messages(data) {
                out.push(message.expect("the server sends valid frames"));
            }
        }
    }
    out
}

/// The binary payloads the server sent to `conn`.
fn binaries(actions: &[Action], conn: ConnId) -> Vec<Vec<u8>> {
    sent(actions, conn)
        .into_iter()
        .filter_map(|m| match m {
            Message::Binary(b) => Some(b),
            _ => None,
        })
        .collect()
}

/// The close code and reason sent to `conn`, checking `Close` follows it.
fn closed_with(actions: &[Action], conn: ConnId) -> (u16, String) {
    let at = actions
        .iter()
        .position(|a| *a == Action::Close { conn })
        .unwrap_or_else(|| panic!("{conn} not closed: {actions:?}"));
    let before = sent(&actions[..at], conn);
    match before.last() {
        Some(Message::Close(Some(CloseFrame { code, reason }))) => (*code, reason.clone()),
        other => panic!("no close frame before Close: {other:?}"),
    }
}

fn is_closed(actions: &[Action], conn: ConnId) -> bool {
    actions.contains(&Action::Close { conn })
}

fn http(actions: &[Action]) -> (ResponseHead, Vec<u8>) {
    let Some(Action::Send { data, .. }) = actions.first() else {
        panic!("no answer: {actions:?}");
    };
    match parse_response_head(data, &HeadLimits::default()) {
        Ok(Parsed::Done { value, consumed }) => (value, data[consumed..].to_vec()),
        other => panic!("{other:?}"),
    }
}

impl Harness<Server> {
    fn new(config: Config) -> Self {
        let mut h = Self::with_machine(Server::new(config).unwrap());
        let listen = h.drain();
        assert!(matches!(listen.as_slice(), [Action::Listen { .. }]));
        h
    }
    fn secs(&self) -> i64 {
        self.machine.config.wall.unix_secs(self.now)
    }
    fn flush(&mut self, actions: &[Action]) {
        for action in actions {
            if let Action::Send { conn, data } = action {
                self.input(Input::Flushed {
                    conn: *conn,
                    bytes: data.len(),
                });
            }
        }
    }
    /// Accept `id` and upgrade it (on an arbitrary path), its 101 flushed.
    fn open(&mut self, id: u64) -> ConnId {
        let conn = self.accept(id);
        let actions = self.recv(conn, &encoded_request(&request("/anything?x=1")));
        let (head, _) = http(&actions);
        assert_eq!(head.status, 101);
        assert_eq!(head.header_str("Sec-WebSocket-Accept"), Some(ACCEPT));
        self.flush(&actions);
        conn
    }
    /// Open `id` and authenticate it as `addr`; checks the echo.
    fn login(&mut self, id: u64, addr: Ipv4Addr) -> ConnId {
        let conn = self.open(id);
        let ts = self.secs();
        let actions = self.recv(conn, &auth(addr, ts));
        assert!(!is_closed(&actions, conn), "{actions:?}");
        assert_echo(&actions, conn, addr, ts, ts);
        self.flush(&actions);
        conn
    }
}

/// The AUTH echo to an AUTH stamped `client_ts`: the address, the server's
/// now, and the server's proof (which is not a client AUTH hash).
fn assert_echo(actions: &[Action], conn: ConnId, addr: Ipv4Addr, client_ts: i64, now_secs: i64) {
    let answers = binaries(actions, conn);
    let Some(first) = answers.first() else {
        panic!("no echo: {actions:?}");
    };
    match ServerMessage::parse(first).unwrap() {
        ServerMessage::Auth {
            ip: echoed,
            timestamp,
            hash,
        } => {
            assert_eq!(echoed, addr);
            assert_eq!(timestamp, now_secs);
            assert_eq!(hash, server_auth_hash(PASSWORD, addr, client_ts, timestamp));
            assert!(!auth_hash_matches(PASSWORD, addr, timestamp, &hash));
        }
        other => panic!("{other:?}"),
    }
}

/// The address an EXPTTUN answer grants, checking its proof, for a request
/// stamped with the server's now.
fn granted(actions: &[Action], conn: ConnId, now_secs: i64) -> Ipv4Addr {
    granted_to(actions, conn, now_secs, now_secs)
}

/// The address an EXPTTUN answer to a request stamped `client_ts` grants,
/// checking its proof.
fn granted_to(actions: &[Action], conn: ConnId, client_ts: i64, now_secs: i64) -> Ipv4Addr {
    let answers = binaries(actions, conn);
    match ServerMessage::parse(answers.first().expect("a grant")).unwrap() {
        ServerMessage::ExpectedTun {
            timestamp,
            cidr,
            hash,
        } => {
            assert_eq!(timestamp, now_secs);
            assert_eq!(
                hash,
                server_expttun_hash(PASSWORD, cidr.field(), client_ts, timestamp)
            );
            assert_ne!(hash, expttun_hash(PASSWORD, cidr.field(), timestamp));
            let (addr, prefix) = parse_cidr(cidr.as_str()).unwrap();
            assert!(prefix == 24 || prefix == 30, "{prefix}");
            addr
        }
        other => panic!("{other:?}"),
    }
}

fn rejected_reasons(h: &mut Harness<Server>) -> Vec<String> {
    h.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Rejected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect()
}

// ---- VPN-V1, VPN-V2: the upgrade ----

#[test]
fn vpn_v1_upgrade_on_any_path_and_listening() {
    let mut h = Harness::new(config());
    let local = "127.0.0.1:4567".parse().unwrap();
    h.input(Input::Listening {
        listener: ListenerId(crate::io::CORE_ID_BIT),
        local,
    });
    assert_eq!(h.events(), [Event::Listening { addr: local }]);
    for (id, path) in [(1, "/"), (2, "/v1?x=y"), (3, "/some/where")] {
        let conn = h.accept(id);
        let actions = h.recv(conn, &encoded_request(&request(path)));
        assert_eq!(http(&actions).0.status, 101, "{path}");
        assert!(!is_closed(&actions, conn));
    }
}

#[test]
fn vpn_v1_bad_upgrades_are_refused() {
    let mut h = Harness::new(config());
    let mut http10 = request("/");
    http10.version = Version::Http10;
    let mut post = request("/");
    post.method = "POST".into();
    let wrong_version = Request::get("/", Version::Http11)
        .with_header("Upgrade", "websocket")
        .with_header("Connection", "Upgrade")
        .with_header("Sec-WebSocket-Key", KEY)
        .with_header("Sec-WebSocket-Version", "8");
    let cases: [(Request, u16); 5] = [
        (
            Request::get("/", Version::Http11).with_header("Host", "x"),
            400,
        ),
        (wrong_version, 426),
        (http10, 400),
        (post, 400),
        (
            Request::get("/", Version::Http11)
                .with_header("Upgrade", "websocket")
                .with_header("Connection", "Upgrade")
                .with_header("Sec-WebSocket-Key", "short")
                .with_header("Sec-WebSocket-Version", "13"),
            400,
        ),
    ];
    for (id, (req, status)) in (1..).zip(cases) {
        let conn = h.accept(id);
        let actions = h.recv(conn, &encoded_request(&req));
        let (head, body) = http(&actions);
        assert_eq!(head.status, status, "case {id}");
        assert!(!body.is_empty());
        if status == 426 {
            assert_eq!(head.header_str("Sec-WebSocket-Version"), Some("13"));
        }
        assert_eq!(actions.last(), Some(&Action::Close { conn }));
    }
    assert_eq!(h.machine.stats().rejected_upgrades, 5);
    assert_eq!(rejected_reasons(&mut h).len(), 5);
    // Garbage is a 400 too.
    let conn = h.accept(9);
    let actions = h.recv(conn, b"\x00\x01 not http\r\n\r\n");
    assert_eq!(http(&actions).0.status, 400);
    assert!(is_closed(&actions, conn));
}

#[test]
fn vpn_v1_too_many_clients_get_503() {
    let mut h = Harness::new(Config {
        max_clients: 2,
        ..config()
    });
    h.open(1);
    h.accept(2);
    let conn = ConnId(3);
    let actions = h.input(Input::Accepted {
        listener: crate::testing::LISTENER,
        conn,
        peer: "127.0.0.1:9".parse().unwrap(),
    });
    assert_eq!(http(&actions).0.status, 503);
    assert!(is_closed(&actions, conn));
    // A slot frees when a connection leaves.
    h.input(Input::Closed { conn: ConnId(2) });
    h.open(4);
}

#[test]
fn vpn_v1_oversized_head_is_refused() {
    let mut h = Harness::new(config());
    let conn = h.accept(1);
    let big = request("/").with_header("X-Big", &"a".repeat(20 << 10));
    let actions = h.recv(conn, &encoded_request(&big));
    assert!(matches!(http(&actions).0.status, 431 | 400));
    assert!(is_closed(&actions, conn));
}

#[test]
fn vpn_v2_handshake_timeout_closes_without_answer() {
    let mut h = Harness::new(config());
    let conn = h.accept(1);
    h.recv(conn, b"GET / HTTP/1.1\r\n");
    assert!(h.advance(Duration::from_secs(10)).is_empty());
    let actions = h.advance(Duration::from_millis(1));
    assert_eq!(actions, [Action::Close { conn }]);
    assert_eq!(h.machine.stats().rejected_upgrades, 1);
    assert_eq!(h.machine.poll_timeout(), None);
}

#[test]
fn vpn_v1_bytes_after_the_head_are_the_websocket_stream() {
    let mut h = Harness::new(config());
    let conn = h.accept(1);
    let ts = h.secs();
    let mut bytes = encoded_request(&request("/"));
    bytes.extend_from_slice(&auth(ip(5), ts));
    let actions = h.recv(conn, &bytes);
    assert_eq!(http(&actions).0.status, 101);
    assert_eq!(h.machine.owner(ip(5)), Some(conn));
}

// ---- VPN-V5: AUTH ----

#[test]
fn vpn_v5_auth_ok_is_echoed_with_the_servers_proof() {
    let mut h = Harness::new(config());
    h.now += Duration::from_millis(2_500);
    let conn = h.open(1);
    let ts = h.secs();
    assert_eq!(ts, UNIX_MS / 1000 + 2);
    let actions = h.recv(conn, &auth(ip(7), ts - 3));
    assert_echo(&actions, conn, ip(7), ts - 3, ts);
    assert_eq!(h.machine.owner(ip(7)), Some(conn));
    assert_eq!(h.machine.stats().clients, 1);
    let joined: Vec<Event> = h.events();
    assert!(
        matches!(joined.as_slice(), [Event::Joined { ip: a, conn: c, .. }] if *a == ip(7) && *c == conn),
        "{joined:?}"
    );
}

#[test]
fn vpn_v5_routes_follow_the_echo() {
    let routes = vec![SysRoute {
        dst: Ipv4Addr::new(192, 168, 1, 0),
        mask: Ipv4Addr::new(255, 255, 255, 0),
        next: ip(9),
    }];
    let mut h = Harness::new(Config {
        routes: routes.clone(),
        ..config()
    });
    let conn = h.open(1);
    let ts = h.secs();
    let actions = h.recv(conn, &auth(ip(3), ts));
    let answers = binaries(&actions, conn);
    assert_eq!(answers.len(), 2);
    assert_eq!(
        ServerMessage::parse(&answers[1]).unwrap(),
        ServerMessage::SysRoutes(SysRouteTable::new(routes).unwrap())
    );
    // Without routes, the echo alone.
    let mut h = Harness::new(config());
    let conn = h.open(1);
    let actions = h.recv(conn, &auth(ip(3), ts));
    assert_eq!(binaries(&actions, conn).len(), 1);
}

#[test]
fn vpn_v5_bad_routes_are_a_config_error() {
    let bad = SysRoute {
        dst: Ipv4Addr::new(192, 168, 1, 0),
        mask: Ipv4Addr::new(255, 0, 255, 0),
        next: ip(9),
    };
    assert!(matches!(
        Server::new(Config {
            routes: vec![bad],
            ..config()
        }),
        Err(ConfigError::Routes(WireError::BadMask(_)))
    ));
}

#[test]
fn vpn_v5_wrong_password_closes_1008() {
    let mut h = Harness::new(config());
    let conn = h.open(1);
    let ts = h.secs();
    let bad = frame(&ServerMessage::Auth {
        ip: ip(7),
        timestamp: ts,
        hash: auth_hash(b"wrong", ip(7), ts),
    });
    let actions = h.recv(conn, &bad);
    assert_eq!(closed_with(&actions, conn), (1008, "bad password".into()));
    assert_eq!(h.machine.owner(ip(7)), None);
    assert_eq!(h.machine.stats().rejected_auth, 1);
    assert_eq!(rejected_reasons(&mut h), ["bad password"]);
}

#[test]
fn vpn_v5_replayed_auth_on_a_new_connection_is_refused() {
    let mut h = Harness::new(config());
    let first = h.open(1);
    let ts = h.secs();
    let bytes = auth(ip(7), ts);
    h.recv(first, &bytes);
    assert_eq!(h.machine.owner(ip(7)), Some(first));
    h.input(Input::Closed { conn: first });
    assert_eq!(h.machine.owner(ip(7)), None);
    let second = h.open(2);
    let actions = h.recv(second, &bytes);
    assert_eq!(
        closed_with(&actions, second),
        (1008, "replayed auth".into())
    );
    assert_eq!(h.machine.owner(ip(7)), None);
    // A fresh timestamp works.
    h.now += Duration::from_secs(1);
    h.login(3, ip(7));
}

#[test]
fn vpn_v5_the_echo_replayed_as_an_auth_is_refused() {
    let mut h = Harness::new(config());
    h.now += Duration::from_millis(2_500);
    let first = h.open(1);
    let ts = h.secs();
    // The client's timestamp differs from the echo's, so the (ip, timestamp)
    // replay guard alone would not catch the echo.
    let actions = h.recv(first, &auth(ip(7), ts - 1));
    let echo = binaries(&actions, first).remove(0);
    h.input(Input::Closed { conn: first });
    h.events();
    // An eavesdropper sends the server's echo as its own AUTH.
    let second = h.open(2);
    let actions = h.recv(second, &client(&Message::Binary(echo)));
    assert_eq!(closed_with(&actions, second), (1008, "bad password".into()));
    assert_eq!(h.machine.owner(ip(7)), None);
    assert_eq!(rejected_reasons(&mut h), ["bad password"]);
}

#[test]
fn vpn_v5_skewed_timestamps_are_refused() {
    let mut h = Harness::new(config());
    let ts = h.secs();
    for (id, skew) in [(1, 31), (2, -31)] {
        let conn = h.open(id);
        let actions = h.recv(conn, &auth(ip(7), ts + skew));
        assert_eq!(closed_with(&actions, conn), (1008, "clock skew".into()));
    }
    // ±30 s is fine.
    let conn = h.open(3);
    let actions = h.recv(conn, &auth(ip(7), ts - 30));
    assert!(!is_closed(&actions, conn));
}

#[test]
fn vpn_v5_address_outside_the_network_is_refused() {
    let mut h = Harness::new(config());
    let ts = h.secs();
    for (id, addr) in [(1, Ipv4Addr::new(10, 0, 1, 7)), (2, ip(0)), (3, ip(255))] {
        let conn = h.open(id);
        let actions = h.recv(conn, &auth(addr, ts));
        assert_eq!(
            closed_with(&actions, conn),
            (1008, format!("address {addr} outside 10.0.0.0/24"))
        );
    }
}

#[test]
fn vpn_v5_duplicate_address_refused_while_the_first_stays() {
    let mut h = Harness::new(config());
    let first = h.login(1, ip(7));
    h.events();
    h.now += Duration::from_secs(1);
    let second = h.open(2);
    let ts = h.secs();
    let actions = h.recv(second, &auth(ip(7), ts));
    assert_eq!(
        closed_with(&actions, second),
        (1008, "address 10.0.0.7 in use".into())
    );
    assert!(!is_closed(&actions, first));
    assert_eq!(h.machine.owner(ip(7)), Some(first));
    // No Left for the first: it was never disturbed.
    assert!(h.events().iter().all(|e| !matches!(e, Event::Left { .. })));
}

#[test]
fn vpn_v5_second_auth_on_a_connection_closes_1002() {
    let mut h = Harness::new(config());
    let conn = h.login(1, ip(7));
    h.now += Duration::from_secs(1);
    let ts = h.secs();
    let actions = h.recv(conn, &auth(ip(8), ts));
    assert_eq!(closed_with(&actions, conn).0, 1002);
    assert_eq!(h.machine.owner(ip(7)), None);
    assert_eq!(h.machine.owner(ip(8)), None);
}

// ---- VPN-V3, VPN-V4: VMAC and EXPTTUN ----

#[test]
fn vpn_v4_expttun_assigns_the_lowest_free_host() {
    let mut h = Harness::new(config());
    h.login(1, ip(1));
    h.login(2, ip(3));
    let conn = h.open(3);
    let ts = h.secs();
    let actions = h.recv(conn, &expttun_msg("", ts));
    assert_eq!(granted(&actions, conn, ts), ip(2));
    let answer = binaries(&actions, conn);
    assert_eq!(&answer[0][9..21], b"10.0.0.2/24\0");
    // The grant is then claimed with AUTH.
    let actions = h.recv(conn, &auth(ip(2), ts));
    assert_echo(&actions, conn, ip(2), ts, ts);
    assert_eq!(h.machine.addresses.pending_len(), 0);
}

#[test]
fn vpn_v4_expttun_honours_a_free_requested_address() {
    let mut h = Harness::new(config());
    h.login(1, ip(9));
    let ts = h.secs();
    let cases = [
        ("10.0.0.42/24", ip(42)),
        // Taken, wrong prefix, outside, not a host, not CIDR: the lowest free.
        ("10.0.0.9/24", ip(1)),
        ("10.0.0.43/16", ip(1)),
        ("10.0.1.43/24", ip(1)),
        ("10.0.0.255/24", ip(1)),
        ("nonsense", ip(1)),
    ];
    for (id, (text, expect)) in (2..).zip(cases) {
        let conn = h.open(id);
        let actions = h.recv(conn, &expttun_msg(text, ts));
        assert_eq!(granted(&actions, conn, ts), expect, "{text}");
        h.input(Input::Closed { conn });
    }
}

#[test]
fn vpn_v4_pending_reservation_blocks_a_second_client() {
    let mut h = Harness::new(config());
    let ts = h.secs();
    let a = h.open(1);
    assert_eq!(granted(&h.recv(a, &expttun_msg("", ts)), a, ts), ip(1));
    let b = h.open(2);
    // Neither EXPTTUN nor AUTH may take A's reservation.
    assert_eq!(
        granted(&h.recv(b, &expttun_msg("10.0.0.1/24", ts)), b, ts),
        ip(2)
    );
    let actions = h.recv(b, &auth(ip(1), ts));
    assert_eq!(
        closed_with(&actions, b),
        (1008, "address 10.0.0.1 in use".into())
    );
    // B's reservation died with it; A's holds until A leaves. (Each request
    // is a new one: a replayed EXPTTUN would reserve nothing.)
    let c = h.open(3);
    let actions = h.recv(c, &expttun_msg("", ts - 1));
    assert_eq!(granted_to(&actions, c, ts - 1, ts), ip(2));
    h.input(Input::Closed { conn: a });
    let d = h.open(4);
    let actions = h.recv(d, &expttun_msg("", ts - 2));
    assert_eq!(granted_to(&actions, d, ts - 2, ts), ip(1));
    assert_eq!(h.machine.addresses.pending_len(), 2);
}

#[test]
fn vpn_v4_a_second_expttun_moves_the_reservation() {
    let mut h = Harness::new(config());
    let ts = h.secs();
    let a = h.open(1);
    assert_eq!(
        granted(&h.recv(a, &expttun_msg("10.0.0.5/24", ts)), a, ts),
        ip(5)
    );
    assert_eq!(
        granted(&h.recv(a, &expttun_msg("10.0.0.6/24", ts)), a, ts),
        ip(6)
    );
    assert_eq!(h.machine.addresses.pending_len(), 1);
    // AUTH with another address than the one granted drops the reservation.
    h.recv(a, &auth(ip(8), ts));
    assert_eq!(h.machine.owner(ip(8)), Some(a));
    assert_eq!(h.machine.addresses.pending_len(), 0);
}

#[test]
fn vpn_v4_vmac_stickiness_after_reconnect() {
    let mut h = Harness::new(config());
    let vmac = *b"0123456789abcdef";
    let ts = h.secs();
    let a = h.open(1);
    h.recv(a, &vmac_msg(vmac, ts));
    h.recv(a, &auth(ip(77), ts));
    h.input(Input::Closed { conn: a });
    h.login(2, ip(1));
    h.now += Duration::from_secs(2);
    let ts = h.secs();
    let b = h.open(3);
    h.recv(b, &vmac_msg(vmac, ts));
    assert_eq!(granted(&h.recv(b, &expttun_msg("", ts)), b, ts), ip(77));
    // Another VMAC gets the lowest free; a requested address beats the memory.
    let c = h.open(4);
    h.recv(c, &vmac_msg(*b"fedcba9876543210", ts));
    let actions = h.recv(c, &expttun_msg("", ts - 1));
    assert_eq!(granted_to(&actions, c, ts - 1, ts), ip(2));
    h.input(Input::Closed { conn: b });
    let d = h.open(5);
    h.recv(d, &vmac_msg(vmac, ts));
    assert_eq!(
        granted(&h.recv(d, &expttun_msg("10.0.0.50/24", ts)), d, ts),
        ip(50)
    );
}

#[test]
fn vpn_v4_a_replayed_expttun_reserves_nothing() {
    let mut h = Harness::new(config());
    let vmac = *b"0123456789abcdef";
    let ts = h.secs();
    // The victim's login, captured on the wire.
    let captured = [vmac_msg(vmac, ts), expttun_msg("", ts)];
    let victim = h.open(1);
    h.recv(victim, &captured[0]);
    assert_eq!(granted(&h.recv(victim, &captured[1]), victim, ts), ip(1));
    h.recv(victim, &auth(ip(1), ts));
    assert_eq!(h.machine.owner(ip(1)), Some(victim));
    h.input(Input::Closed { conn: victim });
    // Replayed within the skew: answered, but nothing is reserved.
    h.now += Duration::from_secs(1);
    let now = h.secs();
    let replay = h.open(2);
    h.recv(replay, &captured[0]);
    let actions = h.recv(replay, &captured[1]);
    assert_eq!(granted_to(&actions, replay, ts, now), ip(1));
    assert_eq!(h.machine.addresses.pending_len(), 0);
    // So the victim gets its usual address back.
    let back = h.open(3);
    h.recv(back, &vmac_msg(vmac, now));
    assert_eq!(
        granted(&h.recv(back, &expttun_msg("", now)), back, now),
        ip(1)
    );
    let actions = h.recv(back, &auth(ip(1), now));
    assert_echo(&actions, back, ip(1), now, now);
    // Past the skew the replay is refused outright.
    h.now += Duration::from_secs(30);
    let late = h.open(4);
    let actions = h.recv(late, &captured[1]);
    assert_eq!(closed_with(&actions, late), (1008, "clock skew".into()));
}

#[test]
fn vpn_v4_a_reservation_under_a_vmac_does_not_lock_that_vmac_out() {
    let mut h = Harness::new(config());
    let vmac = *b"0123456789abcdef";
    let ts = h.secs();
    // A connection presenting (say, replaying) the VMAC reserves 10.0.0.1.
    let holder = h.open(1);
    h.recv(holder, &vmac_msg(vmac, ts));
    let actions = h.recv(holder, &expttun_msg("10.0.0.1/24", ts));
    assert_eq!(granted(&actions, holder, ts), ip(1));
    // The VMAC's owner with a fixed address still logs in with it...
    h.now += Duration::from_secs(1);
    let now = h.secs();
    let owner = h.open(2);
    h.recv(owner, &vmac_msg(vmac, now));
    let actions = h.recv(owner, &auth(ip(1), now));
    assert_echo(&actions, owner, ip(1), now, now);
    assert_eq!(h.machine.addresses.pending_len(), 0);
    let actions = h.recv(holder, &auth(ip(1), now - 1));
    assert_eq!(
        closed_with(&actions, holder),
        (1008, "address 10.0.0.1 in use".into())
    );
    // ...and with an assigned one gets it granted over such a reservation.
    h.input(Input::Closed { conn: owner });
    let holder = h.open(3);
    h.recv(holder, &vmac_msg(vmac, now));
    let actions = h.recv(holder, &expttun_msg("10.0.0.1/24", now));
    assert_eq!(granted(&actions, holder, now), ip(1));
    let owner = h.open(4);
    h.recv(owner, &vmac_msg(vmac, now));
    let actions = h.recv(owner, &expttun_msg("", now));
    assert_eq!(granted(&actions, owner, now), ip(1));
    // Another VMAC, none, or the all-zero one does not take a reservation.
    let others = [
        (5, Some(*b"fedcba9876543210"), now - 5),
        (6, None, now - 6),
        (7, Some([0; 16]), now - 7),
    ];
    for (id, vmac, auth_ts) in others {
        let other = h.open(id);
        if let Some(vmac) = vmac {
            h.recv(other, &vmac_msg(vmac, now));
        }
        let actions = h.recv(other, &auth(ip(1), auth_ts));
        assert_eq!(
            closed_with(&actions, other),
            (1008, "address 10.0.0.1 in use".into()),
            "{id}"
        );
    }
    let zero = h.open(8);
    h.recv(zero, &vmac_msg([0; 16], now));
    let actions = h.recv(zero, &expttun_msg("10.0.0.2/24", now));
    assert_eq!(granted(&actions, zero, now), ip(2));
    let other = h.open(9);
    h.recv(other, &vmac_msg([0; 16], now));
    let actions = h.recv(other, &auth(ip(2), now - 2));
    assert_eq!(
        closed_with(&actions, other),
        (1008, "address 10.0.0.2 in use".into())
    );
}

#[test]
fn vpn_v4_vmac_memory_is_bounded() {
    let mut addresses = Addresses::new("10.0.0.0/16".parse().unwrap());
    for i in 0..(VMAC_MEMORY + 10) {
        let mut vmac = [0u8; 16];
        vmac[..8].copy_from_slice(&(i as u64).to_be_bytes());
        addresses.remember(vmac, ip(1));
    }
    assert_eq!(addresses.memories(), VMAC_MEMORY);
    assert_eq!(addresses.remembered(&[0; 16]), None);
    let mut last = [0u8; 16];
    last[..8].copy_from_slice(&((VMAC_MEMORY + 9) as u64).to_be_bytes());
    assert_eq!(addresses.remembered(&last), Some(ip(1)));
}

#[test]
fn vpn_v4_network_full_closes_1008() {
    let mut h = Harness::new(Config {
        network: "10.0.0.0/30".parse().unwrap(),
        ..config()
    });
    let ts = h.secs();
    let a = h.open(1);
    assert_eq!(granted(&h.recv(a, &expttun_msg("", ts)), a, ts), ip(1));
    h.login(2, ip(2));
    let c = h.open(3);
    let actions = h.recv(c, &expttun_msg("", ts - 1));
    assert_eq!(closed_with(&actions, c), (1008, "network full".into()));
}

#[test]
fn vpn_v3_v4_bad_proofs_and_skew_close_1008() {
    let mut h = Harness::new(config());
    let ts = h.secs();
    let cidr = CidrText::new("").unwrap();
    let cases: [(Vec<u8>, &str); 4] = [
        (
            frame(&ServerMessage::VirtualMac {
                vmac: [1; 16],
                timestamp: ts,
                hash: vmac_hash(b"wrong", &[1; 16], ts),
            }),
            "bad password",
        ),
        (vmac_msg([1; 16], ts + 31), "clock skew"),
        (
            frame(&ServerMessage::ExpectedTun {
                timestamp: ts,
                cidr,
                hash: expttun_hash(b"wrong", cidr.field(), ts),
            }),
            "bad password",
        ),
        (expttun_msg("", ts - 31), "clock skew"),
    ];
    for (id, (bytes, reason)) in (1..).zip(cases) {
        let conn = h.open(id);
        let actions = h.recv(conn, &bytes);
        assert_eq!(closed_with(&actions, conn), (1008, reason.into()), "{id}");
    }
    assert_eq!(h.machine.stats().rejected_auth, 4);
    assert_eq!(h.machine.addresses.pending_len(), 0);
}

#[test]
fn vpn_v6_vmac_and_expttun_after_auth_are_ignored() {
    let mut h = Harness::new(config());
    let conn = h.login(1, ip(4));
    let ts = h.secs();
    let mut actions = h.recv(conn, &vmac_msg([3; 16], ts));
    actions.extend(h.recv(conn, &expttun_msg("", ts)));
    // Even one with a bad proof: it is not looked at.
    actions.extend(h.recv(conn, &vmac_msg([3; 16], ts + 100)));
    assert!(actions.is_empty(), "{actions:?}");
    assert_eq!(h.machine.owner(ip(4)), Some(conn));
}

// ---- VPN-V6: order ----

#[test]
fn vpn_v6_messages_before_auth_close_1008() {
    let mut h = Harness::new(config());
    let packets = [
        forward_payload(ip(1), ip(2), b"x"),
        payload(&ServerMessage::Udp4Conn {
            src: ip(1),
            dst: ip(2),
            ip: Ipv4Addr::new(1, 2, 3, 4),
            port: 5,
        }),
        payload(&ServerMessage::Discovery {
            src: ip(1),
            dst: ip(2),
        }),
        payload(&ServerMessage::LocalUdp4Conn {
            src: ip(1),
            dst: ip(2),
            ip: Ipv4Addr::new(192, 168, 0, 4),
            port: 5,
        }),
    ];
    for (id, bytes) in (1..).zip(packets) {
        let conn = h.open(id);
        let actions = h.recv(conn, &client(&Message::Binary(bytes)));
        assert_eq!(
            closed_with(&actions, conn),
            (1008, "not authenticated".into())
        );
    }
}

#[test]
fn vpn_v6_auth_timeout() {
    let mut h = Harness::new(config());
    let conn = h.open(1);
    let other = h.login(2, ip(2));
    // Activity does not extend the AUTH deadline.
    h.now += Duration::from_secs(5);
    let ts = h.secs();
    h.recv(conn, &vmac_msg([1; 16], ts));
    h.recv(other, &client(&Message::Ping(vec![])));
    assert!(h.advance(Duration::from_secs(5)).is_empty());
    let actions = h.advance(Duration::from_millis(1));
    assert_eq!(
        closed_with(&actions, conn),
        (1008, "authentication timeout".into())
    );
    assert!(!is_closed(&actions, other));
}

// ---- VPN-V7, VPN-V8: FORWARD ----

#[test]
fn vpn_v7_forward_routed_by_destination_byte_for_byte() {
    let mut h = Harness::new(config());
    let a = h.login(1, ip(1));
    let b = h.login(2, ip(2));
    let c = h.login(3, ip(3));
    let bytes = forward_payload(ip(1), ip(2), b"hello over the vpn");
    let actions = h.recv(a, &client(&Message::Binary(bytes.clone())));
    assert_eq!(binaries(&actions, b), std::slice::from_ref(&bytes));
    assert!(sent(&actions, a).is_empty());
    assert!(sent(&actions, c).is_empty());
    let stats = h.machine.stats();
    assert_eq!(stats.forwarded_packets, 1);
    assert_eq!(stats.forwarded_bytes, (bytes.len() - 1) as u64);
}

#[test]
fn vpn_v7_unroutable_and_spoofed_are_dropped_and_counted() {
    let mut h = Harness::new(config());
    let a = h.login(1, ip(1));
    let b = h.login(2, ip(2));
    let cases = [
        forward_payload(ip(1), ip(99), b"nobody"),
        forward_payload(ip(1), ip(1), b"self"),
        forward_payload(ip(1), Ipv4Addr::new(8, 8, 8, 8), b"outside"),
    ];
    for bytes in cases {
        let actions = h.recv(a, &client(&Message::Binary(bytes)));
        assert!(actions.is_empty(), "{actions:?}");
    }
    let spoofed = forward_payload(Ipv4Addr::new(8, 8, 8, 8), ip(2), b"spoof");
    let actions = h.recv(a, &client(&Message::Binary(spoofed)));
    assert!(sent(&actions, b).is_empty());
    let stats = h.machine.stats();
    assert_eq!((stats.unroutable, stats.spoofed), (3, 1));
    assert_eq!(stats.forwarded_packets, 0);
}

#[test]
fn vpn_v8_queue_full_drops_without_closing() {
    let mut h = Harness::new(Config {
        max_queued_bytes: 300,
        ..config()
    });
    let a = h.login(1, ip(1));
    let b = h.login(2, ip(2));
    let bytes = forward_payload(ip(1), ip(2), &[7; 100]);
    let framed = client(&Message::Binary(bytes.clone()));
    let mut delivered = 0;
    for _ in 0..5 {
        let actions = h.recv(a, &framed);
        assert!(!is_closed(&actions, a) && !is_closed(&actions, b));
        assert!(
            !actions
                .iter()
                .any(|x| matches!(x, Action::PauseRead { .. }))
        );
        delivered += binaries(&actions, b).len();
    }
    // Each frame is 2 + 2 + 121 = 125 bytes: two fit in 300.
    assert_eq!(delivered, 2);
    assert_eq!(h.machine.stats().dropped_queue_full, 3);
    // Flushed bytes make room again.
    h.input(Input::Flushed {
        conn: b,
        bytes: 250,
    });
    let actions = h.recv(a, &framed);
    assert_eq!(binaries(&actions, b), [bytes]);
}

// ---- VPN-V9: signalling ----

#[test]
fn vpn_v9_signalling_relayed_unchanged() {
    let mut h = Harness::new(config());
    let a = h.login(1, ip(1));
    let b = h.login(2, ip(2));
    let messages = [
        payload(&ServerMessage::Udp4Conn {
            src: ip(1),
            dst: ip(2),
            ip: Ipv4Addr::new(203, 0, 113, 5),
            port: 40_000,
        }),
        payload(&ServerMessage::Discovery {
            src: ip(1),
            dst: ip(2),
        }),
        payload(&ServerMessage::LocalUdp4Conn {
            src: ip(1),
            dst: ip(2),
            ip: Ipv4Addr::new(192, 168, 1, 20),
            port: 40_001,
        }),
    ];
    for bytes in &messages {
        let actions = h.recv(a, &client(&Message::Binary(bytes.clone())));
        assert_eq!(binaries(&actions, b), std::slice::from_ref(bytes));
        h.flush(&actions);
    }
    assert_eq!(h.machine.stats().relayed, 3);
}

#[test]
fn vpn_v9_spoofed_and_unroutable_signalling_dropped() {
    let mut h = Harness::new(config());
    let a = h.login(1, ip(1));
    let b = h.login(2, ip(2));
    let spoofed = [
        payload(&ServerMessage::Udp4Conn {
            src: ip(3),
            dst: ip(2),
            ip: Ipv4Addr::new(203, 0, 113, 5),
            port: 1,
        }),
        payload(&ServerMessage::Discovery {
            src: ip(2),
            dst: ip(2),
        }),
        payload(&ServerMessage::LocalUdp4Conn {
            src: ip(9),
            dst: ip(2),
            ip: Ipv4Addr::new(192, 168, 1, 20),
            port: 1,
        }),
    ];
    for bytes in spoofed {
        let actions = h.recv(a, &client(&Message::Binary(bytes)));
        assert!(sent(&actions, b).is_empty());
    }
    let unroutable = payload(&ServerMessage::Discovery {
        src: ip(1),
        dst: ip(50),
    });
    assert!(h.recv(a, &client(&Message::Binary(unroutable))).is_empty());
    let stats = h.machine.stats();
    assert_eq!((stats.spoofed, stats.unroutable, stats.relayed), (3, 1, 0));
}

// ---- VPN-V10: message errors and control frames ----

#[test]
fn vpn_v10_text_closes_1003() {
    let mut h = Harness::new(config());
    let conn = h.login(1, ip(1));
    let actions = h.recv(conn, &client(&Message::Text("hello".into())));
    assert_eq!(closed_with(&actions, conn).0, 1003);
    let left: Vec<Event> = h.events();
    assert!(
        matches!(left.as_slice(), [.., Event::Left { ip: a, .. }] if *a == ip(1)),
        "{left:?}"
    );
    assert_eq!(h.machine.owner(ip(1)), None);
    assert_eq!(h.machine.stats().clients, 0);
}

#[test]
fn vpn_v10_malformed_closes_1002() {
    let mut h = Harness::new(config());
    let malformed = [
        vec![0u8; 10],               // AUTH too short
        vec![1, 0x45, 0, 0],         // FORWARD, not a whole packet
        vec![],                      // empty
        vec![5, 10, 0, 0, 1, 10, 0], // DISCOVERY too short
    ];
    for (id, bytes) in (1..).zip(malformed) {
        let conn = h.login(id, ip(id as u8));
        let actions = h.recv(conn, &client(&Message::Binary(bytes)));
        assert_eq!(closed_with(&actions, conn).0, 1002, "{id}");
    }
    // Before AUTH too.
    let conn = h.open(9);
    let actions = h.recv(conn, &client(&Message::Binary(vec![0; 3])));
    assert_eq!(closed_with(&actions, conn).0, 1002);
    // And a WebSocket protocol error (an unmasked frame).
    let conn = h.open(10);
    let mut unmasked = Vec::new();
    encode_message(&Message::Binary(vec![1, 2]), None, &mut unmasked);
    let actions = h.recv(conn, &unmasked);
    assert_eq!(closed_with(&actions, conn).0, 1002);
}

#[test]
fn vpn_v10_unknown_kind_ignored_and_counted() {
    let mut h = Harness::new(config());
    let conn = h.login(1, ip(1));
    let unknown_kind = client(&Message::Binary(vec![77, 1, 2, 3]));
    let unknown_subtype = client(&Message::Binary(vec![255, 9, 0, 0]));
    assert!(h.recv(conn, &unknown_kind).is_empty());
    assert!(h.recv(conn, &unknown_subtype).is_empty());
    // Before AUTH too; a client ROUTE is ignored as well.
    let other = h.open(2);
    assert!(h.recv(other, &unknown_kind).is_empty());
    let route = payload(&ServerMessage::SysRoutes(SysRouteTable::default()));
    assert!(h.recv(other, &client(&Message::Binary(route))).is_empty());
    assert_eq!(h.machine.stats().unknown_messages, 3);
}

#[test]
fn vpn_v10_ping_pong_and_close_echo() {
    let mut h = Harness::new(config());
    let conn = h.login(1, ip(1));
    let actions = h.recv(conn, &client(&Message::Ping(b"abc".to_vec())));
    assert_eq!(sent(&actions, conn), [Message::Pong(b"abc".to_vec())]);
    assert!(h.recv(conn, &client(&Message::Pong(vec![]))).is_empty());
    h.events();
    let actions = h.recv(
        conn,
        &client(&Message::Close(Some(CloseFrame {
            code: 1000,
            reason: "bye".into(),
        }))),
    );
    assert_eq!(closed_with(&actions, conn).0, 1000);
    assert!(matches!(h.events().as_slice(), [Event::Left { .. }]));
    assert_eq!(h.machine.owner(ip(1)), None);
    assert_eq!(h.machine.poll_timeout(), None);
}

// ---- VPN-V11, VPN-V12, VPN-V13 ----

#[test]
fn vpn_v11_idle_timeout() {
    let mut h = Harness::new(config());
    let quiet = h.login(1, ip(1));
    let chatty = h.login(2, ip(2));
    let mut closes = Vec::new();
    for step in 1..=5 {
        h.now += Duration::from_secs(20);
        h.recv(chatty, &client(&Message::Ping(vec![])));
        h.machine.handle_timeout(h.now);
        let actions = h.drain();
        if is_closed(&actions, quiet) {
            assert_eq!(closed_with(&actions, quiet), (1001, "idle".into()));
            closes.push(step);
        }
    }
    // Silent since 0 s: still open at 60 s, closed at 80 s, once.
    assert_eq!(closes, [4]);
    assert_eq!(h.machine.owner(ip(1)), None);
    assert_eq!(h.machine.owner(ip(2)), Some(chatty));
}

#[test]
fn vpn_v11_idle_deadline_is_exact() {
    let mut h = Harness::new(config());
    let conn = h.login(1, ip(1));
    assert!(h.advance(Duration::from_secs(60)).is_empty());
    let actions = h.advance(Duration::from_millis(1));
    assert_eq!(closed_with(&actions, conn), (1001, "idle".into()));
}

#[test]
fn vpn_v12_leaving_frees_the_address() {
    let mut h = Harness::new(config());
    let a = h.login(1, ip(5));
    h.events();
    h.input(Input::Closed { conn: a });
    assert_eq!(
        h.events(),
        [Event::Left {
            conn: a,
            ip: ip(5),
            reason: "connection closed".into()
        }]
    );
    h.now += Duration::from_secs(1);
    h.login(2, ip(5));
    // Inputs for a forgotten connection are ignored.
    assert!(h.recv(a, b"anything").is_empty());
}

#[test]
fn vpn_v13_shutdown_closes_everything() {
    let mut h = Harness::new(config());
    let a = h.login(1, ip(1));
    let pending = h.accept(2);
    let actions = h.command(Command::Shutdown);
    assert!(matches!(actions[0], Action::CloseListener { .. }));
    assert_eq!(
        closed_with(&actions, a),
        (1001, "server shutting down".into())
    );
    assert!(is_closed(&actions, pending));
    assert_eq!(h.machine.poll_timeout(), None);
    assert_eq!(h.machine.stats().clients, 0);
}

// ---- VPN-V14: bounded memory, no panic ----

#[test]
fn vpn_v14_oversized_message_closes_1009() {
    let mut h = Harness::new(config());
    let conn = h.login(1, ip(1));
    let actions = h.recv(conn, &client(&Message::Binary(vec![1; 70_000])));
    assert_eq!(closed_with(&actions, conn).0, 1009);
}

#[test]
fn vpn_v14_random_messages_never_panic() {
    fn prop(messages: Vec<Vec<u8>>, authenticated: bool, raw: bool) -> TestResult {
        let mut h = Harness::new(Config {
            max_queued_bytes: 4096,
            ..config()
        });
        let a = if authenticated {
            h.login(1, ip(1))
        } else {
            h.open(1)
        };
        let b = h.login(2, ip(2));
        for bytes in &messages {
            let data = if raw {
                bytes.clone()
            } else {
                client(&Message::Binary(bytes.clone()))
            };
            h.recv(a, &data);
            h.recv(b, &client(&Message::Binary(bytes.clone())));
        }
        h.advance(Duration::from_secs(100));
        let bounded = h.machine.conns.values().all(|c| c.queued <= 4096 + 256);
        TestResult::from_bool(bounded && h.machine.addresses.owned() <= 2)
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Vec<Vec<u8>>, bool, bool) -> TestResult);
}

#[test]
fn vpn_v14_random_valid_kinds_never_panic() {
    // Random bodies behind every known kind byte, so the parser's paths are hit.
    fn prop(kind: u8, body: Vec<u8>) -> bool {
        let kinds = [0u8, 1, 2, 3, 4, 5, 6, 255];
        let mut h = Harness::new(config());
        let a = h.login(1, ip(1));
        let mut bytes = vec![kinds[usize::from(kind) % kinds.len()]];
        bytes.extend_from_slice(&body);
        h.recv(a, &client(&Message::Binary(bytes)));
        let b = h.open(2);
        let mut bytes = vec![kinds[usize::from(kind / 8) % kinds.len()]];
        bytes.extend_from_slice(&body);
        h.recv(b, &client(&Message::Binary(bytes)));
        true
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(u8, Vec<u8>) -> bool);
}
