//! Machine tests of the WebSocket relay: inputs in, actions out, no sockets.
//! Client frames are built, and the server's output parsed, with the codec.
use super::*;
use crate::codec::Parsed;
use crate::codec::http1::{Request, ResponseHead, Version, parse_response_head};
use crate::codec::websocket::{OpCode, encode_frame};
use crate::testing::{Harness, LISTENER as L, assert_listens};
use quickcheck::{Arbitrary, Gen, QuickCheck};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A valid upgrade request for `target`.
fn request(target: &str) -> Request {
    Request::get(target, Version::Http11)
        .with_header("Host", "relay.example")
        .with_header("Upgrade", "websocket")
        .with_header("Connection", "Upgrade")
        .with_header("Sec-WebSocket-Key", KEY)
        .with_header("Sec-WebSocket-Version", "13")
}

fn encoded(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode(&mut out);
    out
}

fn upgrade(relay: &str, peer: &str) -> Vec<u8> {
    encoded(&request(&format!("/v1?relayId={relay}&peerId={peer}")))
}

/// A masked client frame holding `message`.
fn client(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(message, Some(MASK), &mut out);
    out
}

fn text(s: &str) -> Vec<u8> {
    client(&Message::Text(s.to_owned()))
}

fn binary(b: &[u8]) -> Vec<u8> {
    client(&Message::Binary(b.to_vec()))
}

/// The messages the server sent to `conn` in `actions` (whole frames per Send).
fn sent_to(actions: &[Action], conn: ConnId) -> Vec<Message> {
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

fn closed(actions: &[Action], conn: ConnId) -> bool {
    actions.contains(&Action::Close { conn })
}

/// The close code the server sent to `conn`, checking that `Close` follows it.
fn close_code(actions: &[Action], conn: ConnId) -> Option<u16> {
    let at = actions
        .iter()
        .position(|a| *a == Action::Close { conn })
        .unwrap_or_else(|| panic!("{conn} not closed: {actions:?}"));
    // WS-14: the close frame is the last thing sent before `Close`, and nothing after.
    assert!(
        !actions[at..]
            .iter()
            .any(|a| matches!(a, Action::Send { conn: c, .. } if *c == conn))
    );
    let before = sent_to(&actions[..at], conn);
    assert!(
        matches!(before.last(), Some(Message::Close(_))),
        "{before:?}"
    );
    sent_to(actions, conn).into_iter().find_map(|m| match m {
        Message::Close(Some(frame)) => Some(frame.code),
        _ => None,
    })
}

fn txt(s: &str) -> Message {
    Message::Text(s.to_owned())
}

/// An HTTP answer: `[Send, Close]` for a refusal, `[Send, ..]` for a 101.
fn http(actions: &[Action]) -> (ResponseHead, Vec<u8>) {
    let Some(Action::Send { data, .. }) = actions.first() else {
        panic!("no answer: {actions:?}");
    };
    match parse_response_head(data, &HeadLimits::default()) {
        Ok(Parsed::Done { value, consumed }) => (value, data[consumed..].to_vec()),
        other => panic!("{other:?}"),
    }
}

fn status(actions: &[Action]) -> u16 {
    http(actions).0.status
}

impl Harness<Server> {
    fn new(config: Config) -> Self {
        Self::with_machine(Server::new(config))
    }
    /// Accept `id` and send `head`; the server's answer.
    fn handshake(&mut self, id: u64, head: &[u8]) -> Vec<Action> {
        let conn = self.accept(id);
        self.recv(conn, head)
    }
    /// A peer joined to a room, its 101 already flushed.
    fn join(&mut self, id: u64, relay: &str, peer: &str) -> ConnId {
        let conn = ConnId(id);
        let actions = self.handshake(id, &upgrade(relay, peer));
        let (head, _) = http(&actions);
        assert_eq!(head.status, 101);
        assert_eq!(head.header_str("Sec-WebSocket-Accept"), Some(ACCEPT));
        let Action::Send { data, .. } = &actions[0] else {
            unreachable!()
        };
        let bytes = data.len();
        self.input(Input::Flushed { conn, bytes });
        conn
    }
    fn flush_all(&mut self, actions: &[Action]) {
        for action in actions {
            if let Action::Send { conn, data } = action {
                self.input(Input::Flushed {
                    conn: *conn,
                    bytes: data.len(),
                });
            }
        }
    }
}

// ---- WS-1 path and upgrade ----

#[test]
fn ws1_other_path_gets_404() {
    let mut h = Harness::new(Config::default());
    let actions = h.handshake(1, &encoded(&request("/v2?relayId=r&peerId=p")));
    assert_eq!(actions.len(), 2);
    assert_eq!(status(&actions), 404);
    assert!(closed(&actions, ConnId(1)));
    assert_eq!(h.machine.stats().rejected, 1);
    assert!(matches!(
        h.events().as_slice(),
        [Event::Rejected { status: 404, .. }]
    ));
}

#[test]
fn ws1_not_an_upgrade_gets_400() {
    let mut h = Harness::new(Config::default());
    let plain = encoded(&Request::get("/v1?relayId=r&peerId=p", Version::Http11));
    assert_eq!(status(&h.handshake(1, &plain)), 400);
    let mut post = request("/v1?relayId=r&peerId=p");
    post.method = "POST".into();
    assert_eq!(status(&h.handshake(2, &encoded(&post))), 400);
    let old = request("/v1?relayId=r&peerId=p").with_header("X", "y");
    let old = Request {
        version: Version::Http10,
        ..old
    };
    assert_eq!(status(&h.handshake(3, &encoded(&old))), 400);
    let mut bad_key = request("/v1?relayId=r&peerId=p");
    bad_key.headers[3].1 = "short".into();
    assert_eq!(status(&h.handshake(4, &encoded(&bad_key))), 400);
    assert_eq!(h.machine.peer_count(), 0);
}

#[test]
fn ws1_wrong_version_gets_426_naming_13() {
    let mut h = Harness::new(Config::default());
    let mut req = request("/v1?relayId=r&peerId=p");
    req.headers[4].1 = "8".into();
    let actions = h.handshake(1, &encoded(&req));
    let (head, _) = http(&actions);
    assert_eq!(head.status, 426);
    assert_eq!(head.header_str("Sec-WebSocket-Version"), Some("13"));
    assert!(closed(&actions, ConnId(1)));
}

#[test]
fn ws1_valid_upgrade_gets_101_and_joins() {
    let mut h = Harness::new(Config::default());
    h.join(1, "r", "p");
    assert_eq!(h.machine.peer_count(), 1);
    assert!(matches!(
        h.events().as_slice(),
        [Event::Joined { relay_id, peer_id, .. }] if relay_id == "r" && peer_id == "p"
    ));
}

// ---- WS-2 ids ----

#[test]
fn ws2_missing_or_empty_ids_get_400_naming_them() {
    let mut h = Harness::new(Config::default());
    for (i, (target, name)) in [
        ("/v1?peerId=p", "relayId"),
        ("/v1?relayId=r", "peerId"),
        ("/v1?relayId=&peerId=p", "relayId"),
        ("/v1?relayId=r&peerId", "peerId"),
        ("/v1", "relayId"),
        ("/v1?relayId=%zz&peerId=p", "relayId"),
    ]
    .into_iter()
    .enumerate()
    {
        let actions = h.handshake(i as u64, &encoded(&request(target)));
        let (head, body) = http(&actions);
        assert_eq!(head.status, 400, "{target}");
        assert!(String::from_utf8_lossy(&body).contains(name), "{target}");
    }
}

#[test]
fn ws2_ids_over_256_bytes_get_400() {
    let mut h = Harness::new(Config::default());
    let long = "x".repeat(257);
    assert_eq!(status(&h.handshake(1, &upgrade(&long, "p"))), 400);
    assert_eq!(status(&h.handshake(2, &upgrade("r", &long))), 400);
    h.join(3, &"x".repeat(256), &"y".repeat(256));
}

#[test]
fn ws2_ids_are_form_decoded() {
    let mut h = Harness::new(Config::default());
    h.join(1, "my+room%21", "p%C3%A9");
    assert!(matches!(
        h.events().as_slice(),
        [Event::Joined { relay_id, peer_id, .. }] if relay_id == "my room!" && peer_id == "pé"
    ));
}

// ---- WS-3 admin secret ----

fn with_secret() -> Config {
    Config {
        admin_secret: Some("s3cret".into()),
        ..Config::default()
    }
}

#[test]
fn ws3_admin_secret_must_be_offered_and_is_echoed() {
    let mut h = Harness::new(with_secret());
    assert_eq!(status(&h.handshake(1, &upgrade("r", "p"))), 401);
    let wrong =
        request("/v1?relayId=r&peerId=p").with_header("Sec-WebSocket-Protocol", "chat, s3cre");
    assert_eq!(status(&h.handshake(2, &encoded(&wrong))), 401);
    let right =
        request("/v1?relayId=r&peerId=p").with_header("Sec-WebSocket-Protocol", "chat,  s3cret ");
    let actions = h.handshake(3, &encoded(&right));
    let (head, _) = http(&actions);
    assert_eq!(head.status, 101);
    assert_eq!(head.header_str("Sec-WebSocket-Protocol"), Some("s3cret"));
    assert_eq!(h.machine.stats().rejected, 2);
}

#[test]
fn ws3_without_a_secret_offered_protocols_are_ignored() {
    let mut h = Harness::new(Config::default());
    let req = request("/v1?relayId=r&peerId=p").with_header("Sec-WebSocket-Protocol", "chat");
    let (head, _) = http(&h.handshake(1, &encoded(&req)));
    assert_eq!(head.status, 101);
    assert_eq!(head.header("Sec-WebSocket-Protocol"), None);
}

// ---- WS-4 origins ----

#[test]
fn ws4_origin_must_be_listed_exactly() {
    let mut h = Harness::new(Config {
        allowed_origins: Some(Config::parse_origins(
            " https://app.example , http://localhost:8000,,",
        )),
        ..Config::default()
    });
    assert_eq!(
        h.machine.config().allowed_origins.as_deref(),
        Some(
            &[
                "https://app.example".to_owned(),
                "http://localhost:8000".into()
            ][..]
        )
    );
    assert_eq!(status(&h.handshake(1, &upgrade("r", "p"))), 403);
    let other = request("/v1?relayId=r&peerId=p").with_header("Origin", "https://evil.example");
    assert_eq!(status(&h.handshake(2, &encoded(&other))), 403);
    let ok = request("/v1?relayId=r&peerId=p").with_header("Origin", "http://localhost:8000");
    assert_eq!(status(&h.handshake(3, &encoded(&ok))), 101);
}

#[test]
fn ws4_the_secret_is_checked_before_the_origin() {
    let mut h = Harness::new(Config {
        allowed_origins: Some(vec!["https://app.example".into()]),
        ..with_secret()
    });
    let neither = request("/v1?relayId=r&peerId=p").with_header("Origin", "https://evil");
    assert_eq!(status(&h.handshake(1, &encoded(&neither))), 401);
    let secret_only = neither
        .clone()
        .with_header("Sec-WebSocket-Protocol", "s3cret");
    assert_eq!(status(&h.handshake(2, &encoded(&secret_only))), 403);
}

// ---- WS-5 head limits and the connection cap ----

#[test]
fn ws5_head_over_8k_gets_431() {
    let mut h = Harness::new(Config::default());
    let conn = h.accept(1);
    let big = request("/v1?relayId=r&peerId=p").with_header("X-Pad", &"a".repeat(9000));
    let bytes = encoded(&big);
    let mut actions = Vec::new();
    for chunk in bytes.chunks(1000) {
        actions.extend(h.recv(conn, chunk));
        if !actions.is_empty() {
            break;
        }
    }
    assert_eq!(status(&actions), 431);
    assert!(closed(&actions, conn));
}

#[test]
fn ws5_too_many_headers_or_garbage_is_refused() {
    let mut h = Harness::new(Config::default());
    let mut req = request("/v1?relayId=r&peerId=p");
    for i in 0..70 {
        req = req.with_header(&format!("X-{i}"), "v");
    }
    assert_eq!(status(&h.handshake(1, &encoded(&req))), 431);
    assert_eq!(status(&h.handshake(2, b"\x16\x03\x01garbage\r\n\r\n")), 400);
}

#[test]
fn ws5_incomplete_head_is_closed_after_10s_without_reply() {
    let mut h = Harness::new(Config::default());
    let conn = h.accept(1);
    assert!(
        h.recv(conn, b"GET /v1?relayId=r&peerId=p HTTP/1.1\r\n")
            .is_empty()
    );
    assert!(h.advance(Duration::from_secs(10)).is_empty());
    assert_eq!(
        h.advance(Duration::from_millis(1)),
        vec![Action::Close { conn }]
    );
    assert_eq!(h.machine.stats().rejected, 1);
    assert_eq!(h.machine.poll_timeout(), None);
}

#[test]
fn ws5_bytes_after_the_head_in_one_read_are_websocket_frames() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let b = h.accept(2);
    let mut read = upgrade("r", "b");
    read.extend(text("hello"));
    read.extend(&text("ping")[..3]);
    let actions = h.recv(b, &read);
    assert_eq!(status(&actions), 101);
    assert_eq!(sent_to(&actions, a), vec![txt("hello")]);
    assert_eq!(sent_to(&actions[1..], b), vec![]);
    let actions = h.recv(b, &text("ping")[3..]);
    assert_eq!(sent_to(&actions, b), vec![txt("pong")]);
}

#[test]
fn over_max_connections_gets_503() {
    let mut h = Harness::new(Config {
        max_connections: 2,
        ..Config::default()
    });
    h.join(1, "r", "a");
    h.join(2, "s", "b");
    assert_eq!(status(&h.handshake(3, &upgrade("r", "c"))), 503);
    // Pending handshakes are capped too.
    h.accept(4);
    h.accept(5);
    let peer = "127.0.0.1:1".parse().unwrap();
    let actions = h.input(Input::Accepted {
        listener: L,
        conn: ConnId(6),
        peer,
    });
    assert_eq!(status(&actions), 503);
    assert!(closed(&actions, ConnId(6)));
}

// ---- WS-6 broadcast ----

#[test]
fn ws6_broadcast_reaches_every_other_peer_of_the_room_only() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    let c = h.join(3, "r", "c");
    let x = h.join(4, "other", "a");
    let actions = h.recv(a, &[text("hi"), binary(&[0, 1, 2])].concat());
    for peer in [b, c] {
        assert_eq!(
            sent_to(&actions, peer),
            vec![txt("hi"), Message::Binary(vec![0, 1, 2])]
        );
    }
    assert!(sent_to(&actions, a).is_empty());
    assert!(sent_to(&actions, x).is_empty());
    // One Send per receiver per message, in peerId order.
    assert_eq!(actions.len(), 4);
    assert!(matches!(&actions[0], Action::Send { conn, .. } if *conn == b));
    let stats = h.machine.stats();
    assert_eq!((stats.messages_in, stats.deliveries), (2, 4));
}

#[test]
fn ws6_fragmented_message_is_relayed_whole() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    let mut read = Vec::new();
    encode_frame(OpCode::Text, false, Some(MASK), b"hel", &mut read);
    encode_frame(OpCode::Ping, true, Some(MASK), b"!", &mut read);
    encode_frame(OpCode::Continuation, true, Some(MASK), b"lo", &mut read);
    let actions = h.recv(a, &read);
    assert_eq!(sent_to(&actions, b), vec![txt("hello")]);
    assert_eq!(sent_to(&actions, a), vec![Message::Pong(b"!".to_vec())]);
}

// ---- WS-7 targeted ----

#[test]
fn ws7_targeted_message_goes_to_that_peer_only_unchanged() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    let c = h.join(3, "r", "c");
    let msg = r#"  {"targetPeerId":"c","data":[1,2]}"#;
    let actions = h.recv(a, &text(msg));
    assert_eq!(sent_to(&actions, c), vec![txt(msg)]);
    assert!(sent_to(&actions, b).is_empty());
    assert_eq!(h.machine.stats().deliveries, 1);
}

#[test]
fn ws7_unknown_target_is_dropped_and_counted() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    h.join(2, "r", "b");
    h.join(3, "s", "c");
    h.events();
    for msg in [
        r#"{"targetPeerId":"nobody"}"#,
        r#"{"targetPeerId":"c"}"#, // another room
        r#"{"targetPeerId":"a"}"#, // the sender
    ] {
        assert!(h.recv(a, &text(msg)).is_empty(), "{msg}");
    }
    assert_eq!(h.machine.stats().targeted_dropped, 3);
    let events = h.events();
    assert_eq!(events.len(), 3);
    assert!(
        events
            .iter()
            .all(|e| matches!(e, Event::Dropped { conn, .. } if *conn == a))
    );
}

#[test]
fn ws7_non_string_target_or_invalid_json_is_dropped() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    h.join(2, "r", "b");
    for msg in [
        r#"{"targetPeerId":7}"#,
        r#"{"targetPeerId":null}"#,
        r#"{"targetPeerId":"b""#,
        "{\"targetPeerId\" oops",
    ] {
        assert!(h.recv(a, &text(msg)).is_empty(), "{msg}");
    }
    assert_eq!(h.machine.stats().targeted_dropped, 4);
}

#[test]
fn ws7_other_text_and_json_is_broadcast() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    let msgs = [
        r#"{"to":"b"}"#,
        r#"{"nested":{"targetPeerId":"a"}}"#,
        r#"x {"targetPeerId":"a"}"#,
        "{not json",
        r#"["targetPeerId"]"#,
    ];
    let read: Vec<u8> = msgs.iter().flat_map(|m| text(m)).collect();
    let actions = h.recv(a, &read);
    assert_eq!(
        sent_to(&actions, b),
        msgs.iter().map(|m| txt(m)).collect::<Vec<_>>()
    );
    assert_eq!(h.machine.stats().targeted_dropped, 0);
}

// ---- WS-8 ping/pong ----

#[test]
fn ws8_text_ping_gets_pong_and_neither_is_relayed() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    let actions = h.recv(a, &[text("ping"), text("pong")].concat());
    assert_eq!(actions.len(), 1);
    assert_eq!(sent_to(&actions, a), vec![txt("pong")]);
    assert!(sent_to(&actions, b).is_empty());
}

#[test]
fn ws8_ping_frame_gets_pong_frame_with_its_payload() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let actions = h.recv(a, &client(&Message::Ping(b"abc".to_vec())));
    assert_eq!(sent_to(&actions, a), vec![Message::Pong(b"abc".to_vec())]);
    assert!(h.recv(a, &client(&Message::Pong(vec![]))).is_empty());
}

#[test]
fn ws13_a_ping_flood_is_answered_in_one_send_per_read() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let flood = client(&Message::Ping(vec![])).repeat(1000);
    let actions = h.recv(a, &flood);
    let sends = actions
        .iter()
        .filter(|x| matches!(x, Action::Send { conn, .. } if *conn == a))
        .count();
    assert_eq!(sends, 1, "one write for a read's worth of pongs");
    assert_eq!(sent_to(&actions, a), vec![Message::Pong(vec![]); 1000]);
}

// ---- WS-9 health ----

#[test]
fn ws9_every_peer_gets_a_text_ping_every_interval() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let b = h.join(2, "s", "b");
    assert!(h.advance(Duration::from_millis(29_999)).is_empty());
    let actions = h.advance(Duration::from_millis(1));
    assert_eq!(sent_to(&actions, a), vec![txt("ping")]);
    assert_eq!(sent_to(&actions, b), vec![txt("ping")]);
    assert_eq!(actions.len(), 2);
    h.flush_all(&actions);
    assert_eq!(h.advance(Duration::from_secs(30)).len(), 2);
}

#[test]
fn ws9_silent_peer_is_closed_1001_stale() {
    let mut h = Harness::new(Config {
        ping_interval: Duration::from_secs(1000),
        ..Config::default()
    });
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    assert!(h.advance(Duration::from_secs(60)).is_empty());
    assert!(h.recv(b, &text("pong")).is_empty());
    assert!(h.advance(Duration::from_secs(30)).is_empty());
    let actions = h.advance(Duration::from_millis(1));
    assert_eq!(close_code(&actions, a), Some(1001));
    assert!(!closed(&actions, b));
    assert!(h.events().iter().any(
        |e| matches!(e, Event::Left { conn, code: Some(1001), reason, .. } if *conn == a && reason == "stale")
    ));
    // Any frame counts, a WebSocket pong included.
    assert!(h.recv(b, &client(&Message::Pong(vec![]))).is_empty());
    assert!(h.advance(Duration::from_secs(89)).is_empty());
    assert_eq!(
        close_code(&h.advance(Duration::from_secs(2)), b),
        Some(1001)
    );
    assert_eq!(h.machine.poll_timeout(), None, "no peer, no tick");
}

// ---- WS-10 duplicate peerId ----

#[test]
fn ws10_a_newer_connection_replaces_the_older() {
    let mut h = Harness::new(Config::default());
    let old = h.join(1, "r", "p");
    let other = h.join(2, "r", "q");
    let actions = h.handshake(3, &upgrade("r", "p"));
    assert_eq!(status(&actions), 101);
    assert_eq!(close_code(&actions, old), Some(4001));
    let new = ConnId(3);
    assert_eq!(h.machine.peer_count(), 2);
    let actions = h.recv(other, &text(r#"{"targetPeerId":"p"}"#));
    assert!(sent_to(&actions, new).len() == 1 && sent_to(&actions, old).is_empty());
    // The older one's late Closed changes nothing.
    h.input(Input::Closed { conn: old });
    assert_eq!(sent_to(&h.recv(other, &text("x")), new), vec![txt("x")]);
    assert!(h.events().iter().any(|e| matches!(e, Event::Left { conn, code: Some(4001), reason, .. } if *conn == old && reason == "replaced by a newer connection")));
}

// ---- WS-11 / WS-12 limits and protocol errors ----

#[test]
fn ws11_message_above_max_is_closed_1009_from_its_header() {
    let mut h = Harness::new(Config {
        max_message: 100,
        ..Config::default()
    });
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    assert_eq!(sent_to(&h.recv(a, &binary(&[1; 100])), b).len(), 1);
    let frame = binary(&[1; 101]);
    let actions = h.recv(a, &frame[..8]); // the header alone
    assert_eq!(close_code(&actions, a), Some(1009));
    assert!(!closed(&actions, b));
    assert_eq!(h.machine.peer_count(), 1);
}

#[test]
fn ws12_protocol_errors_close_1002_or_1007_only_that_connection() {
    let mut unmasked = Vec::new();
    encode_frame(OpCode::Text, true, None, b"hi", &mut unmasked);
    let mut rsv = text("hi");
    rsv[0] |= 0x40;
    let mut opcode = text("hi");
    opcode[0] = 0x83;
    let mut continuation = Vec::new();
    encode_frame(
        OpCode::Continuation,
        true,
        Some(MASK),
        b"x",
        &mut continuation,
    );
    let mut fragmented_ping = Vec::new();
    encode_frame(OpCode::Ping, false, Some(MASK), b"x", &mut fragmented_ping);
    let mut long_ping = Vec::new();
    encode_frame(OpCode::Ping, true, Some(MASK), &[0; 126], &mut long_ping);
    let mut bad_utf8 = Vec::new();
    encode_frame(OpCode::Text, true, Some(MASK), &[0xff, 0xfe], &mut bad_utf8);
    for (bad, code) in [
        (unmasked, 1002),
        (rsv, 1002),
        (opcode, 1002),
        (continuation, 1002),
        (fragmented_ping, 1002),
        (long_ping, 1002),
        (bad_utf8, 1007),
    ] {
        let mut h = Harness::new(Config::default());
        let a = h.join(1, "r", "a");
        let b = h.join(2, "r", "b");
        let actions = h.recv(b, &bad);
        assert_eq!(close_code(&actions, b), Some(code), "{bad:?}");
        assert_eq!(sent_to(&h.recv(a, &text("ok")), b), vec![], "b is gone");
        assert_eq!(h.machine.peer_count(), 1);
    }
}

// ---- WS-13 slow consumers ----

#[test]
fn ws13_slow_consumer_is_closed_1008_and_the_room_goes_on() {
    let mut h = Harness::new(Config {
        max_queued_bytes: 1000,
        ..Config::default()
    });
    let a = h.join(1, "r", "a");
    let fast = h.join(2, "r", "b");
    let slow = h.join(3, "r", "c");
    let msg = binary(&[9; 400]); // 404 bytes out
    let mut slow_closed = None;
    for _ in 0..3 {
        let actions = h.recv(a, &msg);
        assert_eq!(sent_to(&actions, fast).len(), 1, "the fast peer gets all");
        for action in &actions {
            if let Action::Send { conn, data } = action
                && *conn == fast
            {
                h.input(Input::Flushed {
                    conn: fast,
                    bytes: data.len(),
                });
            }
        }
        if closed(&actions, slow) {
            slow_closed = close_code(&actions, slow);
        }
    }
    assert_eq!(slow_closed, Some(1008));
    let stats = h.machine.stats();
    assert_eq!((stats.slow_consumers_closed, stats.deliveries), (1, 5));
    assert!(h.events().iter().any(
        |e| matches!(e, Event::Left { conn, code: Some(1008), reason, .. } if *conn == slow && reason == "slow consumer")
    ));
    assert!(
        !closed(&h.recv(a, &msg), a),
        "the sender is never paused nor closed"
    );
}

#[test]
fn ws13_flushed_bytes_make_room_again() {
    let mut h = Harness::new(Config {
        max_queued_bytes: 500,
        ..Config::default()
    });
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    for _ in 0..10 {
        let actions = h.recv(a, &binary(&[1; 400]));
        assert_eq!(sent_to(&actions, b).len(), 1);
        h.flush_all(&actions);
    }
    assert_eq!(h.machine.stats().slow_consumers_closed, 0);
}

// ---- WS-14 close handshake ----

#[test]
fn ws14_a_close_frame_is_answered_with_the_same_code() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    let close = client(&Message::Close(Some(CloseFrame {
        code: 4321,
        reason: "bye".into(),
    })));
    // Bytes after the close frame are ignored.
    let actions = h.recv(a, &[close, text("late")].concat());
    assert_eq!(close_code(&actions, a), Some(4321));
    assert_eq!(actions.len(), 2, "close frame then Close: {actions:?}");
    assert!(sent_to(&actions, b).is_empty());
    assert!(h.events().iter().any(
        |e| matches!(e, Event::Left { conn, code: Some(4321), reason, .. } if *conn == a && reason == "bye")
    ));
    let actions = h.recv(b, &client(&Message::Close(None)));
    assert_eq!(close_code(&actions, b), Some(1000));
}

// ---- WS-15 leaving ----

#[test]
fn ws15_leaving_removes_the_peer_and_forgets_an_empty_room() {
    let mut h = Harness::new(Config::default());
    let a = h.join(1, "r", "a");
    let b = h.join(2, "r", "b");
    h.events();
    assert!(h.input(Input::Closed { conn: a }).is_empty());
    assert!(matches!(
        h.events().as_slice(),
        [Event::Left { code: None, reason, .. }] if reason == "closed by peer"
    ));
    assert!(h.recv(b, &text("alone")).is_empty());
    assert_eq!(h.machine.rooms.len(), 1);
    h.input(Input::Closed { conn: b });
    assert!(h.machine.rooms.is_empty());
    assert_eq!(h.machine.peer_count(), 0);
    assert_eq!(h.machine.poll_timeout(), None);
    // The ids are free again.
    h.join(3, "r", "a");
}

#[test]
fn shutdown_closes_every_peer_with_1001_and_the_listeners() {
    let mut h = Harness::new(Config::default());
    let listener = ListenerId(9);
    h.input(Input::Listening {
        listener,
        local: "127.0.0.1:42102".parse().unwrap(),
    });
    let a = h.join(1, "r", "a");
    let pending = h.accept(2);
    let actions = h.command(Command::Shutdown);
    assert_eq!(actions[0], Action::CloseListener { listener });
    assert_eq!(close_code(&actions, a), Some(1001));
    assert!(closed(&actions, pending));
    assert_eq!(h.machine.peer_count(), 0);
    assert_eq!(h.machine.poll_timeout(), None);
}

#[test]
fn listen_command_asks_for_a_core_allocated_listener() {
    let mut h = Harness::new(Config::default());
    let addr = "127.0.0.1:42102".parse().unwrap();
    assert_listens(&h.command(Command::Listen(addr)), addr);
}

#[test]
fn config_deserializes_with_defaults_and_seconds() {
    let config: Config =
        serde_json::from_str(r#"{"ping_interval": 0.5, "admin_secret": "x"}"#).unwrap();
    assert_eq!(config.ping_interval, Duration::from_millis(500));
    assert_eq!(config.admin_secret.as_deref(), Some("x"));
    assert_eq!(config.stale_timeout, Duration::from_secs(90));
    assert!(serde_json::from_str::<Config>(r#"{"nope": 1}"#).is_err());
}

// ---- properties ----

/// One message a peer sends in the property.
#[derive(Clone, Debug)]
enum Outgoing {
    Text(usize),
    Binary(usize),
    /// A targeted text to the peer named `p{0}` (which may not be in the room).
    Targeted(u8),
    Ping,
    PingFrame,
}

#[derive(Clone, Debug)]
struct Scenario {
    /// The room (0..3) of each peer; a peer's name is `p{its index in the room}`.
    rooms: Vec<u8>,
    /// (sender, what), in each sender's order.
    sends: Vec<(usize, Outgoing)>,
    /// Cut points of each connection's byte streams, and the interleaving.
    cuts: Vec<usize>,
    order: Vec<u8>,
}

impl Arbitrary for Scenario {
    fn arbitrary(g: &mut Gen) -> Self {
        let peers = 2 + usize::from(u8::arbitrary(g) % 5);
        let rooms = (0..peers).map(|_| u8::arbitrary(g) % 3).collect();
        let count = usize::from(u8::arbitrary(g) % 24);
        let sends = (0..count)
            .map(|_| {
                let sender = usize::from(u8::arbitrary(g)) % peers;
                let pad = usize::from(u8::arbitrary(g)) * usize::from(u8::arbitrary(g) % 3);
                let what = match u8::arbitrary(g) % 6 {
                    0 | 1 => Outgoing::Text(pad),
                    2 => Outgoing::Binary(pad),
                    3 => Outgoing::Targeted(u8::arbitrary(g) % 4),
                    4 => Outgoing::Ping,
                    _ => Outgoing::PingFrame,
                };
                (sender, what)
            })
            .collect();
        Scenario {
            rooms,
            sends,
            cuts: Vec::arbitrary(g),
            order: Vec::arbitrary(g),
        }
    }
}

fn split(bytes: &[u8], cuts: &mut impl Iterator<Item = usize>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = 1 + cuts.next().unwrap_or(usize::MAX - 1) % rest.len();
        out.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    out
}

/// Who sent a relayed message, from its content.
fn origin(message: &Message) -> Option<usize> {
    match message {
        Message::Text(t) if t.starts_with('m') => t[1..].split(':').next()?.parse().ok(),
        Message::Text(t) => serde_json::from_str::<serde_json::Value>(t).ok()?["from"]
            .as_u64()
            .map(|n| n as usize),
        Message::Binary(b) => b.first().map(|&s| usize::from(s)),
        _ => None,
    }
}

fn run_scenario(s: Scenario) -> bool {
    let n = s.rooms.len();
    let mut names = Vec::new();
    for i in 0..n {
        let index = s.rooms[..i].iter().filter(|&&r| r == s.rooms[i]).count();
        names.push(format!("p{index}"));
    }
    // The reference model: what each peer receives from each sender, in order.
    let mut expected: Vec<BTreeMap<usize, Vec<Message>>> = vec![BTreeMap::new(); n];
    let mut pongs = vec![(0usize, 0usize); n]; // (text pongs, pong frames)
    let mut streams: Vec<Vec<u8>> = vec![Vec::new(); n];
    let mut dropped = 0;
    for (seq, (sender, what)) in s.sends.iter().enumerate() {
        let room = s.rooms[*sender];
        let others: Vec<usize> = (0..n)
            .filter(|&i| i != *sender && s.rooms[i] == room)
            .collect();
        let (message, to): (Message, Vec<usize>) = match what {
            Outgoing::Text(pad) => (
                txt(&format!("m{sender}:{seq}:{}", "z".repeat(*pad))),
                others,
            ),
            Outgoing::Binary(pad) => {
                let mut b = vec![*sender as u8];
                b.extend(std::iter::repeat_n(seq as u8, *pad));
                (Message::Binary(b), others)
            }
            Outgoing::Targeted(t) => {
                let target = format!("p{t}");
                let to: Vec<usize> = others.into_iter().filter(|&i| names[i] == target).collect();
                dropped += usize::from(to.is_empty());
                (
                    txt(&format!(
                        r#"{{"targetPeerId":"{target}","from":{sender},"n":{seq}}}"#
                    )),
                    to,
                )
            }
            Outgoing::Ping => {
                pongs[*sender].0 += 1;
                (txt("ping"), vec![])
            }
            Outgoing::PingFrame => {
                pongs[*sender].1 += 1;
                (Message::Ping(vec![seq as u8]), vec![])
            }
        };
        let mut mask = MASK;
        mask[0] = seq as u8;
        encode_message(&message, Some(mask), &mut streams[*sender]);
        for receiver in to {
            expected[receiver]
                .entry(*sender)
                .or_default()
                .push(message.clone());
        }
    }

    let mut h = Harness::new(Config::default());
    let mut cuts = s.cuts.iter().copied().cycle();
    let mut actions = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let conn = h.accept(i as u64);
        let head = upgrade(&format!("room{}", s.rooms[i]), name);
        for chunk in split(&head, &mut cuts) {
            actions.extend(h.recv(conn, &chunk));
        }
    }
    // Each connection's frames, cut at random, interleaved at random.
    let mut chunks: Vec<VecDeque<Vec<u8>>> = streams
        .iter()
        .map(|bytes| split(bytes, &mut cuts).into())
        .collect();
    let mut order = s.order.iter().copied().cycle();
    loop {
        let live: Vec<usize> = (0..n).filter(|&i| !chunks[i].is_empty()).collect();
        if live.is_empty() {
            break;
        }
        let pick = live[usize::from(order.next().unwrap_or(0)) % live.len()];
        let chunk = chunks[pick].pop_front().unwrap_or_default();
        actions.extend(h.recv(ConnId(pick as u64), &chunk));
    }

    for (i, expected) in expected.iter().enumerate() {
        let conn = ConnId(i as u64);
        if closed(&actions, conn) {
            return false;
        }
        // Skip the 101, then read every frame sent to this peer.
        let mut bytes = Vec::new();
        for action in &actions {
            if let Action::Send { conn: c, data } = action
                && *c == conn
            {
                bytes.extend_from_slice(data);
            }
        }
        let Ok(Parsed::Done { consumed, .. }) = parse_response_head(&bytes, &HeadLimits::default())
        else {
            return false;
        };
        let mut reader = MessageReader::new(Role::Client, usize::MAX);
        let mut got: BTreeMap<usize, Vec<Message>> = BTreeMap::new();
        let mut got_pongs = (0, 0);
        for message in reader.messages(&bytes[consumed..]) {
            let Ok(message) = message else { return false };
            match &message {
                Message::Text(t) if t == "pong" => got_pongs.0 += 1,
                Message::Pong(_) => got_pongs.1 += 1,
                _ => match origin(&message) {
                    Some(sender) if sender != i => got.entry(sender).or_default().push(message),
                    _ => return false,
                },
            }
        }
        if &got != expected || got_pongs != pongs[i] {
            return false;
        }
    }
    h.machine.stats().targeted_dropped == dropped as u64 && h.machine.peer_count() == n
}

#[test]
fn property_every_peer_gets_what_the_reference_model_says() {
    QuickCheck::new()
        .tests(150)
        .quickcheck(run_scenario as fn(Scenario) -> bool);
}

#[test]
fn property_arbitrary_bytes_never_panic_and_stay_bounded() {
    fn prop(head: bool, chunks: Vec<Vec<u8>>) -> bool {
        let mut h = Harness::new(Config {
            max_message: 64,
            max_queued_bytes: 256,
            ..Config::default()
        });
        let a = h.join(1, "r", "a");
        let b = h.join(2, "r", "b");
        let target = if head { h.accept(3) } else { b };
        for chunk in &chunks {
            h.recv(target, chunk);
            h.recv(a, &binary(&[1; 60]));
        }
        h.advance(Duration::from_secs(100));
        h.machine
            .conns
            .values()
            .all(|c| c.queued <= 256 + 2 * frame_len_bound())
    }
    fn frame_len_bound() -> usize {
        crate::codec::websocket::frame_len(125, false)
    }
    QuickCheck::new()
        .tests(200)
        .quickcheck(prop as fn(bool, Vec<Vec<u8>>) -> bool);
}
