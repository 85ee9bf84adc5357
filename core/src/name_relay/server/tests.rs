//! Machine tests of the name relay server: inputs in, actions out, no sockets.
use super::*;
use crate::testing::{Harness, LISTENER as L, assert_listens};

impl Harness<Server> {
    fn new(config: Config) -> Self {
        Self::with_machine(Server::new(config))
    }
    fn named(&mut self, id: u64, name: &str) -> ConnId {
        let conn = self.accept(id);
        assert!(self.recv(conn, format!("{name}|").as_bytes()).is_empty());
        conn
    }
}

fn send(conn: ConnId, data: &[u8]) -> Action {
    Action::Send {
        conn,
        data: data.to_vec(),
    }
}

#[test]
fn nr6_frame_is_delivered_with_the_sender_name() {
    let mut h = Harness::new(Config::default());
    let a = h.named(1, "device_a");
    let b = h.named(2, "device_b");
    assert_eq!(
        h.recv(b, b"device_a|5|hello"),
        vec![send(a, b"device_b|5|hello")]
    );
    assert_eq!(h.machine.stats().frames_delivered, 1);
}

#[test]
fn nr11_frames_split_byte_by_byte_coalesce_per_read() {
    let mut h = Harness::new(Config::default());
    let a = h.named(1, "a");
    let b = h.named(2, "b");
    let mut out = Vec::new();
    for byte in b"a|3|xyza|0|" {
        out.extend(h.recv(b, &[*byte]));
    }
    assert_eq!(out, vec![send(a, b"b|3|xyz"), send(a, b"b|0|")]);
    // Many frames in one read become one write.
    assert_eq!(h.recv(b, b"a|1|1a|1|2"), vec![send(a, b"b|1|1b|1|2")]);
}

#[test]
fn nr7_duplicate_name_closes_the_newcomer_only() {
    let mut h = Harness::new(Config::default());
    let a = h.named(1, "a");
    let dup = h.accept(2);
    assert_eq!(h.recv(dup, b"a|b|1|x"), vec![Action::Close { conn: dup }]);
    assert_eq!(h.machine.holder_of(b"a"), Some(a));
    let events = h.events();
    assert!(events.iter().any(|e| matches!(e, Event::Closed { conn, reason: CloseReason::DuplicateName(_), .. } if *conn == dup)));
}

#[test]
fn nr8_unknown_destination_is_consumed_and_counted() {
    let mut h = Harness::new(Config::default());
    let a = h.named(1, "a");
    let b = h.named(2, "b");
    assert_eq!(h.recv(a, b"nobody|3|xyzb|1|!"), vec![send(b, b"a|1|!")]);
    assert_eq!(h.machine.stats().frames_dropped, 1);
}

#[test]
fn nr10_keepalive_delivers_nothing_and_resets_idle() {
    let mut h = Harness::new(Config::default());
    let a = h.named(1, "a");
    assert!(h.advance(Duration::from_secs(25)).is_empty());
    assert!(h.recv(a, b"a|0|").is_empty());
    assert!(h.advance(Duration::from_secs(25)).is_empty());
    assert_eq!(h.machine.stats().keepalives, 1);
    assert_eq!(
        h.advance(Duration::from_secs(6)),
        vec![Action::Close { conn: a }]
    );
}

#[test]
fn nr3_no_name_in_time_closes() {
    let mut h = Harness::new(Config::default());
    let c = h.accept(1);
    assert!(h.recv(c, b"half").is_empty());
    assert!(h.advance(Duration::from_millis(3_000)).is_empty());
    assert_eq!(
        h.advance(Duration::from_millis(1)),
        vec![Action::Close { conn: c }]
    );
}

#[test]
fn nr9_idle_connection_closes() {
    let mut h = Harness::new(Config::default());
    let a = h.named(1, "a");
    assert!(h.advance(Duration::from_secs(30)).is_empty());
    assert_eq!(
        h.advance(Duration::from_millis(1)),
        vec![Action::Close { conn: a }]
    );
    assert_eq!(h.machine.holder_of(b"a"), None);
}

#[test]
fn nr5_malformed_input_closes_only_that_connection() {
    for bad in [&b"b|x|"[..], b"|3|abc", b"b|99999999999|", &[b'n'; 300]] {
        let mut h = Harness::new(Config::default());
        let a = h.named(1, "a");
        let b = h.named(2, "b");
        let bad_conn = h.named(3, "bad");
        assert_eq!(
            h.recv(bad_conn, bad),
            vec![Action::Close { conn: bad_conn }],
            "{bad:?}"
        );
        assert_eq!(h.recv(a, b"b|2|ok"), vec![send(b, b"a|2|ok")]);
    }
}

#[test]
fn nr12_full_receiver_pauses_sender_until_flushed() {
    let mut h = Harness::new(Config {
        max_queued_bytes: 100,
        ..Config::default()
    });
    let a = h.named(1, "a");
    let b = h.named(2, "b");
    let frame = [b"a|60|".as_slice(), &[7u8; 60]].concat();
    let two = [frame.clone(), frame.clone(), frame.clone()].concat();
    let actions = h.recv(b, &two);
    // Two frames reach a (130 bytes > 100), then b is paused; the third waits.
    assert_eq!(actions.len(), 2);
    assert!(matches!(&actions[0], Action::Send { conn, data } if *conn == a && data.len() == 130));
    assert_eq!(actions[1], Action::PauseRead { conn: b });
    // Paused time is not idle time: b stays silent for 50 s (a keeps itself alive).
    assert!(h.advance(Duration::from_secs(25)).is_empty());
    assert!(h.recv(a, b"a|0|").is_empty());
    assert!(h.advance(Duration::from_secs(25)).is_empty());
    let actions = h.input(Input::Flushed {
        conn: a,
        bytes: 130,
    });
    assert_eq!(actions.len(), 2);
    assert!(matches!(&actions[0], Action::Send { conn, data } if *conn == a && data.len() == 65));
    assert_eq!(actions[1], Action::ResumeRead { conn: b });
}

#[test]
fn nr12_receiver_leaving_releases_its_senders() {
    let mut h = Harness::new(Config {
        max_queued_bytes: 10,
        ..Config::default()
    });
    let a = h.named(1, "a");
    let b = h.named(2, "b");
    let actions = h.recv(b, b"a|20|aaaaaaaaaaaaaaaaaaaaa|1|x");
    assert_eq!(actions.last(), Some(&Action::PauseRead { conn: b }));
    assert_eq!(
        h.input(Input::Closed { conn: a }),
        vec![Action::ResumeRead { conn: b }]
    );
    assert_eq!(h.machine.stats().frames_dropped, 1);
}

#[test]
fn nr12_alternating_destinations_allocate_what_they_send() {
    let mut h = Harness::new(Config::default());
    let _a = h.named(1, "a");
    let _b = h.named(2, "b");
    let s = h.named(3, "s");
    let read: Vec<u8> = b"a|1|xb|1|y".repeat(20_000);
    let sent: usize = h
        .recv(s, &read)
        .iter()
        .map(|a| match a {
            Action::Send { data, .. } => data.capacity(),
            _ => 0,
        })
        .sum();
    assert!(
        sent <= 2 * read.len(),
        "{sent} bytes allocated for {} read",
        read.len()
    );
}

#[test]
fn nr12_a_split_frame_is_held_in_one_exact_buffer() {
    let mut h = Harness::new(Config::default());
    let _a = h.named(1, "a");
    let b = h.named(2, "b");
    let frame = [b"a|100000|".as_slice(), &[1u8; 100_000]].concat();
    let (last, rest) = frame.split_last().unwrap();
    for chunk in rest.chunks(997) {
        assert!(h.recv(b, chunk).is_empty());
        assert!(
            h.machine.held_input_bytes() <= 100_000 + 300,
            "{}",
            h.machine.held_input_bytes()
        );
    }
    assert_eq!(h.recv(b, &[*last]).len(), 1);
    assert_eq!(
        h.machine.held_input_bytes(),
        0,
        "the big buffer is freed once empty"
    );
}

#[test]
fn nr12_an_announced_length_reserves_nothing_up_front() {
    let mut h = Harness::new(Config::default());
    let _a = h.named(1, "a");
    let b = h.named(2, "b");
    assert!(h.recv(b, b"a|16000000|x").is_empty());
    assert!(h.recv(b, b"yz").is_empty());
    assert!(
        h.machine.held_input_bytes() < 4096,
        "{}",
        h.machine.held_input_bytes()
    );
}

#[test]
fn absurd_config_values_are_clamped_not_a_panic() {
    let mut h = Harness::new(Config {
        registration_timeout: Duration::MAX,
        idle_timeout: Duration::MAX,
        max_frame_len: usize::MAX,
        ..Config::default()
    });
    let a = h.named(1, "a");
    assert!(h.advance(Duration::from_secs(3600)).is_empty());
    assert_eq!(
        h.recv(a, b"a|18446744073709551615|"),
        vec![Action::Close { conn: a }]
    );
    let c = h.accept(2);
    assert!(h.advance(MAX_TIMEOUT).is_empty());
    assert_eq!(
        h.advance(Duration::from_secs(1)),
        vec![Action::Close { conn: c }]
    );
}

#[test]
fn nr13_connections_over_the_limit_are_closed() {
    let mut h = Harness::new(Config {
        max_connections: 1,
        ..Config::default()
    });
    h.accept(1);
    let extra = ConnId(2);
    let peer = "127.0.0.1:2".parse().unwrap();
    assert_eq!(
        h.input(Input::Accepted {
            listener: L,
            conn: extra,
            peer
        }),
        vec![Action::Close { conn: extra }]
    );
}

#[test]
fn nr14_a_name_is_free_again_after_its_holder_leaves() {
    let mut h = Harness::new(Config::default());
    let a = h.named(1, "a");
    assert!(h.input(Input::Closed { conn: a }).is_empty());
    let again = h.named(2, "a");
    assert_eq!(h.machine.holder_of(b"a"), Some(again));
}

#[test]
fn nr15_a_frame_to_oneself_with_payload_comes_back() {
    let mut h = Harness::new(Config::default());
    let a = h.named(1, "a");
    assert_eq!(h.recv(a, b"a|2|hi"), vec![send(a, b"a|2|hi")]);
}

#[test]
fn listen_command_asks_for_a_core_allocated_listener() {
    let mut h = Harness::new(Config::default());
    let addr = "127.0.0.1:8080".parse().unwrap();
    assert_listens(&h.command(Command::Listen(addr)), addr);
}
