//! MR-9..MR-16: the relay and listener points, driven by hand.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::codec::stun::Message;
use crate::testing::Harness;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

const TRACKER: &str = "198.51.100.1:7100";
const STUN: &str = "198.51.100.1:3478";
const STUN2: &str = "198.51.100.2:3479";
const LOCAL: &str = "10.0.0.2:40000";
const PUBLIC: &str = "203.0.113.5:40000";

struct Rig {
    h: Harness<Point>,
    socket: SocketId,
}

fn config(role: Role) -> Config {
    Config::new(role, "radio", addr(TRACKER), vec![addr(STUN)])
}

impl Rig {
    fn new(config: Config) -> (Rig, Vec<Action>) {
        let mut h = Harness::with_machine(Point::new(config, [9; 32]));
        let actions = h.command(Command::Start);
        let socket = match actions.as_slice() {
            [Action::BindUdp { socket, addr }] => {
                assert_eq!(*addr, addr_any());
                *socket
            }
            other => panic!("expected one BindUdp, got {other:?}"),
        };
        let actions = h.input(Input::UdpBound {
            socket,
            local: addr(LOCAL),
        });
        (Rig { h, socket }, actions)
    }

    /// A point that has its public address and the tracker's `candidates`.
    fn registered(config: Config, candidates: &[&str]) -> Rig {
        let (mut rig, actions) = Rig::new(config);
        let actions = rig.answer_stun(&actions, STUN, PUBLIC);
        rig.answer_tracker(&actions, candidates);
        rig
    }

    fn datagram(&mut self, from: &str, data: &[u8]) -> Vec<Action> {
        let socket = self.socket;
        self.h.input(Input::Datagram {
            socket,
            from: addr(from),
            data,
        })
    }

    /// Answer the STUN request to `server` found in `actions` with `mapped`.
    fn answer_stun(&mut self, actions: &[Action], server: &str, mapped: &str) -> Vec<Action> {
        let request = stun_request(actions, server).expect("a STUN request to the server");
        let mut out = Vec::new();
        stun::encode(
            &Message::binding_success(request.transaction_id, addr(mapped), None),
            &mut out,
        )
        .expect("encodes");
        self.datagram(server, &out)
    }

    /// Play the tracker for the registration `actions` started; the request text.
    fn answer_tracker(&mut self, actions: &[Action], candidates: &[&str]) -> String {
        let conn = tracker_connect(actions).expect("a tracker connection");
        let sent = self.h.input(Input::Connected {
            conn,
            local: addr("10.0.0.2:50000"),
        });
        let request = String::from_utf8(crate::testing::sent_to(&sent, conn)).expect("text");
        let list: Vec<SocketAddr> = candidates.iter().map(|c| addr(c)).collect();
        let answer = format!(
            "HTTP/1.0 200 OK\r\nServer: ferry/test\r\nAddress: {}\r\n\r\n",
            wire::format_address_list(&list)
        );
        let after = self.h.recv(conn, answer.as_bytes());
        assert!(
            after.contains(&Action::Close { conn }),
            "the point closes the tracker connection once answered: {after:?}"
        );
        request
    }

    /// One tick; STUN answered if asked. Every action of both.
    fn tick(&mut self) -> Vec<Action> {
        let mut actions = self.h.advance(Duration::from_millis(500));
        if stun_request(&actions, STUN).is_some() {
            let more = self.answer_stun(&actions, STUN, PUBLIC);
            actions.extend(more);
        }
        actions
    }

    /// The reason of the `SearchGaveUp` among the pending events.
    fn gave_up_reason(&mut self) -> String {
        self.events()
            .into_iter()
            .find_map(|e| match e {
                Event::SearchGaveUp { reason, .. } => Some(reason),
                _ => None,
            })
            .expect("gave up")
    }

    fn events(&mut self) -> Vec<Event> {
        self.h.events()
    }

    /// Run the handshake with `peer` from the point's side; the actions after it.
    fn handshake(&mut self, peer: &str) -> Vec<Action> {
        let role = self.h.machine.config().role;
        let mut actions = self.datagram(peer, role.peer_hello().as_bytes());
        actions.extend(self.datagram(peer, role.peer_answer().as_bytes()));
        actions
    }
}

fn addr_any() -> SocketAddr {
    addr("0.0.0.0:0")
}

fn stun_request(actions: &[Action], server: &str) -> Option<Message> {
    actions.iter().find_map(|a| match a {
        Action::SendTo { to, data, .. } if *to == addr(server) => stun::parse(data).ok(),
        _ => None,
    })
}

fn tracker_connect(actions: &[Action]) -> Option<ConnId> {
    actions.iter().find_map(|a| match a {
        Action::Connect { conn, addr: to } if *to == addr(TRACKER) => Some(*conn),
        _ => None,
    })
}

/// The datagrams sent to `to`, in order.
fn sent(actions: &[Action], to: &str) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendTo { to: t, data, .. } if *t == addr(to) => Some(data.clone()),
            _ => None,
        })
        .collect()
}

fn hellos(actions: &[Action], to: &str) -> Vec<Hello> {
    sent(actions, to)
        .iter()
        .filter_map(|d| Hello::parse(d))
        .collect()
}

fn stream(actions: &[Action], to: &str) -> Vec<Vec<u8>> {
    sent(actions, to)
        .iter()
        .filter_map(|d| match wire::classify(d) {
            Datagram::Data(data) => Some(data.to_vec()),
            _ => None,
        })
        .collect()
}

#[test]
fn mr9_stun_goes_first_on_the_socket_that_is_punched() {
    let (mut rig, actions) = Rig::new(config(Role::Relay));
    let request = stun_request(&actions, STUN).expect("STUN at once");
    assert!(request.is_binding_request());
    assert_eq!(
        tracker_connect(&actions),
        None,
        "no registration before STUN"
    );
    assert!(rig.events().contains(&Event::Bound(addr(LOCAL))));
    // Retransmitted per ST-14 while unanswered, with the same id.
    let again = rig.h.advance(Duration::from_millis(500));
    let retry = stun_request(&again, STUN).expect("retransmission");
    assert_eq!(retry.transaction_id, request.transaction_id);
    let after = rig.answer_stun(&again, STUN, PUBLIC);
    assert!(rig.events().contains(&Event::Mapped(addr(PUBLIC))));
    assert!(
        tracker_connect(&after).is_some(),
        "the answer triggers a registration"
    );
}

#[test]
fn mr10_relay_registration_carries_latency_and_flag() {
    let (mut rig, actions) = Rig::new(config(Role::Relay));
    rig.h.now += Duration::from_millis(30);
    let actions = rig.answer_stun(&actions, STUN, PUBLIC);
    let request = rig.answer_tracker(&actions, &[]);
    assert!(request.starts_with("GET /Pi HTTP/1.0\r\n"), "{request}");
    assert!(request.contains("Mount: radio\r\n"), "{request}");
    assert!(
        request.contains("MyAddr: 203.0.113.5:40000\r\n"),
        "{request}"
    );
    assert!(
        request.contains("Latency: 30\r\n"),
        "the STUN round trip: {request}"
    );
    assert!(request.contains("Flag: relay\r\n"), "{request}");
}

#[test]
fn mr10_listener_registration_has_only_mount_and_myaddr() {
    let (mut rig, actions) = Rig::new(config(Role::Listener));
    let actions = rig.answer_stun(&actions, STUN, PUBLIC);
    let request = rig.answer_tracker(&actions, &[]);
    assert!(request.contains("Mount: radio\r\n"));
    assert!(request.contains("MyAddr: 203.0.113.5:40000\r\n"));
    assert!(!request.contains("Latency"), "{request}");
    assert!(!request.contains("Flag"), "{request}");
}

#[test]
fn mr10_points_reregister_every_tick_until_connected() {
    let mut rig = Rig::registered(config(Role::Listener), &[]);
    let mut registrations = 0;
    for _ in 0..6 {
        let actions = rig.tick();
        assert!(
            stun_request(&actions, STUN).is_some(),
            "a fresh STUN transaction each tick"
        );
        if tracker_connect(&actions).is_some() {
            rig.answer_tracker(&actions, &[]);
            registrations += 1;
        }
    }
    assert!(
        registrations >= 5,
        "registered {registrations} times in 3 s"
    );
    assert_eq!(rig.h.machine.stats().registrations, registrations + 1);
}

#[test]
fn mr11_hello_to_every_candidate_at_once_and_on_every_tick() {
    let (mut rig, actions) = Rig::new(config(Role::Listener));
    let actions = rig.answer_stun(&actions, STUN, PUBLIC);
    let conn = tracker_connect(&actions).expect("registration");
    let sent_req = rig.h.input(Input::Connected {
        conn,
        local: addr("10.0.0.2:1"),
    });
    assert!(!crate::testing::sent_to(&sent_req, conn).is_empty());
    let answer = "HTTP/1.0 200 OK\r\nServer: t\r\nAddress: 192.0.2.1:1000:192.0.2.2:2000\r\n\r\n";
    let actions = rig.h.recv(conn, answer.as_bytes());
    assert_eq!(hellos(&actions, "192.0.2.1:1000"), [Hello::HelloRelay]);
    assert_eq!(hellos(&actions, "192.0.2.2:2000"), [Hello::HelloRelay]);
    assert!(rig.events().contains(&Event::Candidates(vec![
        addr("192.0.2.1:1000"),
        addr("192.0.2.2:2000")
    ])));
    let tick = rig.h.advance(Duration::from_millis(500));
    assert_eq!(hellos(&tick, "192.0.2.1:1000"), [Hello::HelloRelay]);
    assert_eq!(hellos(&tick, "192.0.2.2:2000"), [Hello::HelloRelay]);
}

#[test]
fn mr12_relay_answers_hello_and_is_done_on_the_listeners_answer() {
    let peer = "192.0.2.7:5000";
    let mut rig = Rig::registered(config(Role::Relay), &[peer]);
    let first = rig.h.drain();
    assert!(first.is_empty());
    let answer = rig.datagram(peer, b"helloRelay");
    assert_eq!(hellos(&answer, peer), [Hello::NiceToMeetYouListener]);
    assert!(
        !rig.events()
            .iter()
            .any(|e| matches!(e, Event::Connected(_)))
    );
    let done = rig.datagram(peer, b"niceToMeetYouRelay");
    assert!(rig.events().contains(&Event::Connected(addr(peer))));
    assert_eq!(rig.h.machine.connected_peers(), [addr(peer)]);
    // MR-14: reported to the tracker.
    let conn = tracker_connect(&done).expect("a Connected report");
    let sent = rig.h.input(Input::Connected {
        conn,
        local: addr("10.0.0.2:1"),
    });
    let text = String::from_utf8(crate::testing::sent_to(&sent, conn)).expect("text");
    assert!(
        text.contains("Connected: 203.0.113.5:40000,192.0.2.7:5000\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("Mount"),
        "Connected carries no other header: {text}"
    );
}

#[test]
fn mr12_listener_takes_the_first_relay_that_answers_and_ignores_the_rest() {
    let (a, b) = ("192.0.2.1:1000", "192.0.2.2:2000");
    let mut rig = Rig::registered(config(Role::Listener), &[a, b]);
    let answer = rig.datagram(b, b"helloListener");
    assert_eq!(hellos(&answer, b), [Hello::NiceToMeetYouRelay]);
    let tick = rig.h.advance(Duration::from_millis(500));
    assert!(
        sent(&tick, a).is_empty(),
        "no more hellos to the other candidate"
    );
    assert_eq!(hellos(&tick, b), [Hello::NiceToMeetYouRelay]);
    // A from the other candidate is ignored now.
    let ignored_before = rig.h.machine.stats().ignored;
    assert!(rig.datagram(a, b"helloListener").is_empty());
    assert_eq!(rig.h.machine.stats().ignored, ignored_before + 1);
    rig.datagram(b, b"niceToMeetYouListener");
    assert!(rig.events().contains(&Event::Connected(addr(b))));
}

#[test]
fn mr12_listener_is_done_on_stream_data_after_answering() {
    let relay = "192.0.2.1:1000";
    let mut rig = Rig::registered(config(Role::Listener), &[relay]);
    let mut piece = Vec::new();
    wire::encode_data(b"hello stream", &mut piece);
    // Stream data before the listener answered is not taken.
    rig.datagram(relay, &piece);
    assert!(!rig.events().iter().any(|e| matches!(e, Event::Data(_))));
    rig.datagram(relay, b"helloListener");
    rig.datagram(relay, &piece);
    let events = rig.events();
    assert!(
        events.contains(&Event::Connected(addr(relay))),
        "{events:?}"
    );
    assert!(events.contains(&Event::Data(b"hello stream".to_vec())));
}

#[test]
fn mr16_listener_drops_and_counts_bad_crc_and_ignores_strangers() {
    let relay = "192.0.2.1:1000";
    let mut rig = Rig::registered(config(Role::Listener), &[relay]);
    rig.handshake(relay);
    rig.events();
    let mut piece = Vec::new();
    wire::encode_data(b"0123456789", &mut piece);
    let mut bad = piece.clone();
    bad[12] ^= 0x40;
    rig.datagram(relay, &bad);
    rig.datagram("192.0.2.99:1000", &piece);
    rig.datagram(relay, &piece);
    let data: Vec<Event> = rig
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Data(_)))
        .collect();
    assert_eq!(data, [Event::Data(b"0123456789".to_vec())]);
    let stats = rig.h.machine.stats();
    assert_eq!(stats.bad_crc, 1);
    assert_eq!(stats.datagrams_received, 1);
    assert_eq!(stats.bytes_received, 10);
    assert!(stats.ignored >= 1);
}

#[test]
fn mr13_keepalive_every_tick_and_loss_sends_the_listener_back_to_searching() {
    let relay = "192.0.2.1:1000";
    let mut rig = Rig::registered(config(Role::Listener), &[relay]);
    rig.handshake(relay);
    let tick = rig.h.advance(Duration::from_millis(500));
    assert_eq!(
        hellos(&tick, relay),
        [Hello::NiceToMeetYouRelay],
        "keep-alive"
    );
    assert_eq!(stun_request(&tick, STUN), None, "no STUN once connected");
    assert_eq!(
        tracker_connect(&tick),
        None,
        "no registration once connected"
    );
    // Heard from at 4.5 s: still alive at 9 s.
    for _ in 0..8 {
        rig.h.advance(Duration::from_millis(500));
    }
    rig.datagram(relay, b"niceToMeetYouListener");
    for _ in 0..9 {
        rig.h.advance(Duration::from_millis(500));
    }
    assert!(
        !rig.events()
            .iter()
            .any(|e| matches!(e, Event::PeerLost { .. }))
    );
    let mut later = Vec::new();
    for _ in 0..3 {
        later.extend(rig.h.advance(Duration::from_millis(500)));
    }
    let events = rig.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::PeerLost { peer, .. } if *peer == addr(relay))),
        "{events:?}"
    );
    assert!(stun_request(&later, STUN).is_some(), "searching again");
}

#[test]
fn mr13_relay_drops_a_silent_listener_and_keeps_serving() {
    let (a, b) = ("192.0.2.1:1000", "192.0.2.2:2000");
    let mut rig = Rig::registered(config(Role::Relay), &[a, b]);
    rig.handshake(a);
    rig.handshake(b);
    assert_eq!(rig.h.machine.connected_peers().len(), 2);
    for _ in 0..8 {
        rig.h.advance(Duration::from_millis(500));
        rig.datagram(b, b"niceToMeetYouRelay");
    }
    for _ in 0..4 {
        rig.h.advance(Duration::from_millis(500));
        rig.datagram(b, b"niceToMeetYouRelay");
    }
    assert_eq!(rig.h.machine.connected_peers(), [addr(b)]);
    assert!(
        rig.events()
            .iter()
            .any(|e| matches!(e, Event::PeerLost { peer, .. } if *peer == addr(a)))
    );
}

#[test]
fn mr11_listener_gives_up_after_10_s_with_a_reason_and_searches_again() {
    let mut rig = Rig::registered(config(Role::Listener), &[]);
    let mut gave_up = None;
    for i in 0..20 {
        let actions = rig.tick();
        if tracker_connect(&actions).is_some() {
            rig.answer_tracker(&actions, &[]);
        }
        if let Some(Event::SearchGaveUp { attempts, reason }) = rig
            .events()
            .into_iter()
            .find(|e| matches!(e, Event::SearchGaveUp { .. }))
        {
            gave_up = Some((i, attempts, reason));
            break;
        }
    }
    let (i, attempts, reason) = gave_up.expect("gave up");
    assert_eq!(i, 19, "after 10 s of searching");
    assert_eq!(attempts, 1);
    assert!(
        reason.contains("no relay registered on mount \"radio\""),
        "{reason}"
    );
}

#[test]
fn mr11_unanswered_candidates_and_a_symmetric_nat_are_named_in_the_reason() {
    let mut cfg = config(Role::Listener);
    cfg.stun = vec![addr(STUN), addr(STUN2)];
    let (mut rig, actions) = Rig::new(cfg);
    let after_first = rig.answer_stun(&actions, STUN, PUBLIC);
    rig.answer_stun(&actions, STUN2, "203.0.113.5:40001");
    let events = rig.events();
    assert!(
        events.contains(&Event::NatMapping {
            endpoint_independent: false,
            seen: vec![
                (addr(STUN), addr(PUBLIC)),
                (addr(STUN2), addr("203.0.113.5:40001"))
            ],
        }),
        "{events:?}"
    );
    rig.answer_tracker(&after_first, &["192.0.2.1:1000"]);
    rig.h.advance(Duration::from_secs(10));
    let reason = rig.gave_up_reason();
    assert!(
        reason.contains("from 1 relay candidate(s) (192.0.2.1:1000)"),
        "{reason}"
    );
    assert!(reason.contains("symmetric"), "{reason}");
    assert!(reason.contains("hole punching cannot work"), "{reason}");
}

#[test]
fn mr11_a_hello_from_a_candidates_ip_on_another_port_is_adopted() {
    let mut rig = Rig::registered(config(Role::Relay), &["192.0.2.1:1000"]);
    let answer = rig.datagram("192.0.2.1:1777", b"helloRelay");
    assert_eq!(
        hellos(&answer, "192.0.2.1:1777"),
        [Hello::NiceToMeetYouListener]
    );
    rig.datagram("192.0.2.1:1777", b"niceToMeetYouRelay");
    assert!(
        rig.events()
            .contains(&Event::Connected(addr("192.0.2.1:1777")))
    );
    let tick = rig.h.advance(Duration::from_millis(500));
    assert!(
        sent(&tick, "192.0.2.1:1000").is_empty(),
        "the listed address is replaced"
    );
    // Stream data or noise never adopts; two candidates on one IP are ambiguous.
    let mut rig = Rig::registered(
        config(Role::Listener),
        &["192.0.2.1:1000", "192.0.2.1:2000"],
    );
    assert!(rig.datagram("192.0.2.1:1777", b"helloListener").is_empty());
    let mut rig = Rig::registered(config(Role::Listener), &["192.0.2.1:1000"]);
    let mut piece = Vec::new();
    wire::encode_data(b"x", &mut piece);
    assert!(rig.datagram("192.0.2.1:1777", &piece).is_empty());
}

#[test]
fn mr11_a_stranger_on_a_candidates_ip_hints_at_its_nat() {
    let mut rig = Rig::registered(config(Role::Listener), &["192.0.2.1:1000"]);
    let mut piece = Vec::new();
    wire::encode_data(b"x", &mut piece);
    assert!(rig.datagram("192.0.2.1:1777", &piece).is_empty());
    rig.h.advance(Duration::from_secs(10));
    let reason = rig.gave_up_reason();
    assert!(
        reason.contains("heard from 192.0.2.1:1777 although the tracker listed 192.0.2.1:1000"),
        "{reason}"
    );
}

#[test]
fn mr15_relay_streams_crc_checked_pieces_to_every_listener() {
    let (a, b) = ("192.0.2.1:1000", "192.0.2.2:2000");
    let mut cfg = config(Role::Relay);
    cfg.min_listeners = 2;
    let mut rig = Rig::registered(cfg, &[a, b]);
    rig.handshake(a);
    assert!(
        !rig.events().contains(&Event::NeedData),
        "waits for 2 listeners"
    );
    rig.handshake(b);
    assert!(rig.events().contains(&Event::NeedData));
    let source: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 251) as u8).collect();
    let actions = rig.h.command(Command::Feed(source.clone()));
    for to in [a, b] {
        let pieces = stream(&actions, to);
        assert_eq!(pieces.len(), 3, "three full pieces at once");
        assert!(pieces.iter().all(|p| p.len() == MAX_DATA));
        assert!(
            sent(&actions, to)
                .iter()
                .all(|d| d.len() <= wire::MAX_DATAGRAM)
        );
    }
    // The tail waits briefly for more, then goes.
    let later = rig.h.advance(FLUSH_DELAY);
    for to in [a, b] {
        let mut got: Vec<u8> = stream(&actions, to).concat();
        got.extend(stream(&later, to).concat());
        assert_eq!(got, source, "{to} gets the source, byte for byte");
    }
    assert!(rig.events().contains(&Event::NeedData), "asks for more");
    let stats = rig.h.machine.stats();
    assert_eq!(stats.source_bytes_sent, 2000);
    assert_eq!(stats.datagrams_sent, 8);
}

#[test]
fn mr15_end_of_source_flushes_and_reports() {
    let peer = "192.0.2.1:1000";
    let mut rig = Rig::registered(config(Role::Relay), &[peer]);
    rig.handshake(peer);
    rig.h.command(Command::Feed(vec![1; 10]));
    let actions = rig.h.command(Command::EndOfSource);
    assert_eq!(stream(&actions, peer), [vec![1; 10]]);
    assert!(rig.events().contains(&Event::SourceDone { bytes: 10 }));
}

#[test]
fn mr15_the_rate_limit_paces_the_stream() {
    let peer = "192.0.2.1:1000";
    let mut cfg = config(Role::Relay);
    cfg.rate = Some(50_400); // 100 pieces per second
    let mut rig = Rig::registered(cfg, &[peer]);
    rig.handshake(peer);
    let mut sent_bytes = 0;
    let actions = rig.h.command(Command::Feed(vec![0; 200 * MAX_DATA]));
    sent_bytes += stream(&actions, peer).concat().len();
    let burst = sent_bytes;
    assert!(burst <= 2 * MAX_DATA, "a small burst first: {burst}");
    // One second: about rate bytes more, driven by poll_timeout.
    let end = rig.h.now + Duration::from_secs(1);
    while let Some(at) = rig.h.machine.poll_timeout() {
        if at > end {
            break;
        }
        rig.h.now = at;
        rig.h.machine.handle_timeout(at);
        let actions = rig.h.drain();
        sent_bytes += stream(&actions, peer).concat().len();
    }
    let paced = sent_bytes - burst;
    assert!(
        (49_896..=50_904).contains(&paced),
        "{paced} bytes in 1 s at 50400 B/s"
    );
}

#[test]
fn tracker_errors_are_reported_with_their_reason() {
    let (mut rig, actions) = Rig::new(config(Role::Listener));
    let actions = rig.answer_stun(&actions, STUN, PUBLIC);
    let conn = tracker_connect(&actions).expect("registration");
    rig.h.input(Input::Connected {
        conn,
        local: addr("10.0.0.2:1"),
    });
    rig.h.recv(
        conn,
        b"HTTP/1.0 400 Bad Request\r\nServer: t\r\n\r\nMount is missing\n",
    );
    rig.h.input(Input::Closed { conn });
    let events = rig.events();
    assert!(
        events.iter().any(|e| matches!(e, Event::TrackerFailed(r)
            if r.contains("400") && r.contains("Mount is missing"))),
        "{events:?}"
    );
    // Refused connection, then a silent tracker.
    let tick = rig.tick();
    let conn = tracker_connect(&tick).expect("retried next tick");
    rig.h.input(Input::ConnectFailed {
        conn,
        error: "connection refused",
    });
    assert!(
        rig.events()
            .iter()
            .any(|e| matches!(e, Event::TrackerFailed(r) if r.contains("refused")))
    );
    let tick = rig.tick();
    let conn = tracker_connect(&tick).expect("retried next tick");
    let late = rig.h.advance(Duration::from_secs(5));
    assert!(late.contains(&Action::Close { conn }), "{late:?}");
    assert!(
        rig.events()
            .iter()
            .any(|e| matches!(e, Event::TrackerFailed(r) if r.contains("no tracker answer")))
    );
}

#[test]
fn stop_closes_the_socket_and_the_tracker_connection() {
    let (mut rig, actions) = Rig::new(config(Role::Relay));
    let actions = rig.answer_stun(&actions, STUN, PUBLIC);
    let conn = tracker_connect(&actions).expect("registration");
    let socket = rig.socket;
    let stop = rig.h.command(Command::Stop);
    assert!(stop.contains(&Action::Close { conn }));
    assert!(stop.contains(&Action::CloseUdp { socket }));
    assert!(rig.events().contains(&Event::Stopped));
    assert_eq!(rig.h.machine.poll_timeout(), None);
    assert!(rig.datagram("192.0.2.1:1", b"helloRelay").is_empty());
}

#[test]
fn stun_servers_answering_late_or_twice_change_nothing() {
    let (mut rig, actions) = Rig::new(config(Role::Relay));
    let request = stun_request(&actions, STUN).expect("request");
    rig.answer_stun(&actions, STUN, PUBLIC);
    rig.events();
    // A duplicate answer to a finished transaction is ignored.
    let mut out = Vec::new();
    stun::encode(
        &Message::binding_success(request.transaction_id, addr("203.0.113.66:1"), None),
        &mut out,
    )
    .expect("encodes");
    rig.datagram(STUN, &out);
    assert_eq!(rig.h.machine.public_addr(), Some(addr(PUBLIC)));
    assert!(!rig.events().iter().any(|e| matches!(e, Event::Mapped(_))));
}

#[test]
fn mr15_a_high_rate_holds_when_the_runtime_wakes_only_every_millisecond() {
    let peer = "192.0.2.1:1000";
    let mut cfg = config(Role::Relay);
    cfg.rate = Some(50_000_000);
    let mut rig = Rig::registered(cfg, &[peer]);
    rig.handshake(peer);
    let mut sent_bytes = 0;
    let feed = |rig: &mut Rig| {
        if rig.events().contains(&Event::NeedData) {
            rig.h.command(Command::Feed(vec![7; 128 * MAX_DATA]))
        } else {
            Vec::new()
        }
    };
    sent_bytes += stream(&feed(&mut rig), peer).concat().len();
    let start = rig.h.now;
    let end = start + Duration::from_millis(200);
    while rig.h.now < end {
        // A runtime whose timer has a 1 ms granularity, plus scheduling slack.
        // The runtime hands NeedData over at once; the reader answers it.
        sent_bytes += stream(&feed(&mut rig), peer).concat().len();
        let at = rig.h.machine.poll_timeout().expect("pacing deadline");
        rig.h.now = at.max(rig.h.now + Duration::from_micros(1100));
        rig.h.machine.handle_timeout(rig.h.now);
        let actions = rig.h.drain();
        sent_bytes += stream(&actions, peer).concat().len();
    }
    let rate = sent_bytes as f64 / (rig.h.now - start).as_secs_f64();
    assert!(
        (47_000_000.0..=52_000_000.0).contains(&rate),
        "{rate:.0} B/s at 50 MB/s"
    );
}

// ---- found in review: each of these failed before its fix ------------------------

#[test]
fn mr15_a_short_piece_waiting_for_tokens_does_not_busy_loop() {
    let peer = "192.0.2.1:1000";
    let mut cfg = config(Role::Relay);
    cfg.rate = Some(10_000);
    let mut rig = Rig::registered(cfg, &[peer]);
    rig.handshake(peer);
    // Two full pieces eat the burst; 92 bytes wait as a short piece.
    rig.h.command(Command::Feed(vec![0; 2 * MAX_DATA + 92]));
    let t0 = rig.h.now;
    let (mut past, mut got) = (0, 0);
    while let Some(at) = rig.h.machine.poll_timeout() {
        if rig.h.now > t0 + Duration::from_millis(300) || got >= 92 {
            break;
        }
        if at <= rig.h.now {
            // A real clock moves on a little between two wakes.
            past += 1;
            rig.h.now += Duration::from_micros(1);
        } else {
            rig.h.now = at;
        }
        rig.h.machine.handle_timeout(rig.h.now);
        got += stream(&rig.h.drain(), peer).concat().len();
    }
    assert_eq!(got, 92, "the short piece goes once its tokens are there");
    assert!(past < 10, "{past} wakes at a deadline already past");
}

#[test]
fn mr15_a_rate_that_does_not_divide_a_second_still_advances() {
    let peer = "192.0.2.1:1000";
    let mut cfg = config(Role::Relay);
    cfg.rate = Some(3_000);
    let mut rig = Rig::registered(cfg, &[peer]);
    rig.handshake(peer);
    rig.h.command(Command::Feed(vec![0; 2 * MAX_DATA + 7]));
    rig.h.command(Command::EndOfSource);
    let (mut same, mut got, mut last) = (0, 0, None);
    for _ in 0..1000 {
        let Some(at) = rig.h.machine.poll_timeout() else {
            break;
        };
        if Some(at) == last {
            same += 1;
        }
        last = Some(at);
        rig.h.now = rig.h.now.max(at);
        rig.h.machine.handle_timeout(rig.h.now);
        got += stream(&rig.h.drain(), peer).concat().len();
        if got >= 7 {
            break;
        }
    }
    assert_eq!(got, 7);
    assert!(same < 2, "{same} wakes at the same deadline");
}

#[test]
fn mr11_unanswering_candidates_cannot_starve_the_others() {
    let (dead, good) = ("192.0.2.1:1000", "192.0.2.9:9000");
    let mut cfg = config(Role::Relay);
    cfg.max_listeners = 1;
    cfg.max_candidates = 1;
    let mut rig = Rig::registered(cfg, &[dead, good]);
    for _ in 0..60 {
        // The tracker keeps listing the dead one first (older registration).
        let actions = rig.tick();
        if tracker_connect(&actions).is_some() {
            rig.answer_tracker(&actions, &[dead, good]);
        }
        rig.datagram(good, b"helloRelay");
        rig.datagram(good, b"niceToMeetYouRelay");
        if !rig.h.machine.connected_peers().is_empty() {
            break;
        }
    }
    assert_eq!(rig.h.machine.connected_peers(), [addr(good)]);
}

#[test]
fn mr11_an_adopted_candidate_is_not_greeted_again_at_its_listed_address() {
    let mut rig = Rig::registered(config(Role::Relay), &["192.0.2.1:1000"]);
    rig.datagram("192.0.2.1:1777", b"helloRelay");
    let actions = rig.tick();
    rig.answer_tracker(&actions, &["192.0.2.1:1000"]);
    let tick = rig.tick();
    assert!(hellos(&tick, "192.0.2.1:1000").is_empty());
    assert_eq!(
        hellos(&tick, "192.0.2.1:1777"),
        [Hello::NiceToMeetYouListener]
    );
}

#[test]
fn mr11_a_later_search_names_the_tracker_failure_not_the_mount() {
    let mut rig = Rig::registered(config(Role::Listener), &[]);
    let mut last = None;
    for _ in 0..50 {
        let actions = rig.tick();
        if let Some(conn) = tracker_connect(&actions) {
            rig.h.input(Input::ConnectFailed {
                conn,
                error: "connection refused",
            });
        }
        for e in rig.events() {
            if let Event::SearchGaveUp { reason, .. } = e {
                last = Some(reason);
            }
        }
    }
    let reason = last.expect("gave up");
    assert!(reason.contains("refused"), "{reason}");
    assert!(!reason.contains("no relay registered"), "{reason}");
}

#[test]
fn mr10_a_relay_whose_source_is_over_stops_registering() {
    let peer = "192.0.2.1:1000";
    let mut rig = Rig::registered(config(Role::Relay), &[peer]);
    let done = rig.handshake(peer);
    // The Connected report: the tracker takes it and closes.
    let conn = tracker_connect(&done).expect("report");
    rig.h.input(Input::Closed { conn });
    rig.h.command(Command::Feed(vec![1; 100]));
    rig.h.command(Command::EndOfSource);
    assert!(rig.events().contains(&Event::SourceDone { bytes: 100 }));
    let mut registrations = 0;
    for _ in 0..4 {
        let actions = rig.tick();
        if let Some(conn) = tracker_connect(&actions) {
            // Only the pending Connected report may still go out.
            let sent = rig.h.input(Input::Connected {
                conn,
                local: addr("10.0.0.2:1"),
            });
            let text = String::from_utf8(crate::testing::sent_to(&sent, conn)).expect("text");
            if text.contains("Mount:") {
                registrations += 1;
            }
            rig.h.input(Input::Closed { conn });
        }
        rig.datagram(peer, b"niceToMeetYouRelay");
    }
    assert_eq!(registrations, 0);
}

#[test]
fn mr9_a_dead_second_stun_server_does_not_stop_the_first_from_refreshing() {
    let mut cfg = config(Role::Listener);
    cfg.stun = vec![addr(STUN), addr(STUN2)];
    let (mut rig, actions) = Rig::new(cfg);
    rig.answer_stun(&actions, STUN, PUBLIC);
    let mut asked = 0;
    for _ in 0..4 {
        let actions = rig.h.advance(Duration::from_millis(500));
        if let Some(request) = stun_request(&actions, STUN)
            && request.is_binding_request()
        {
            asked += 1;
            rig.answer_stun(&actions, STUN, PUBLIC);
        }
    }
    assert_eq!(asked, 4, "a fresh request to the live server every tick");
}

#[test]
fn end_of_source_after_stop_reports_nothing() {
    let mut rig = Rig::registered(config(Role::Relay), &[]);
    rig.h.command(Command::Stop);
    rig.events();
    rig.h.command(Command::EndOfSource);
    assert!(rig.events().is_empty());
}
