//! Tracker tests, named after the requirement they check (MR-n).

use std::time::Duration;

use super::*;
use crate::mount_relay::wire::parse_address_list;
use crate::testing::{Harness, sent_to};

fn tracker_with(config: Config) -> Harness<Tracker> {
    Harness::with_machine(Tracker::new(config))
}

fn tracker() -> Harness<Tracker> {
    tracker_with(Config::default())
}

/// One request on a fresh connection; the whole answer (the tracker closes).
fn ask(h: &mut Harness<Tracker>, conn: u64, request: &str) -> String {
    let conn = h.accept(conn);
    let actions = h.recv(conn, request.as_bytes());
    assert!(actions.contains(&Action::Close { conn }), "{actions:?}");
    String::from_utf8(sent_to(&actions, conn)).unwrap()
}

/// Register a relay point (`relay_latency: Some(ms)`) or a listener point
/// (`None`); the candidates it is answered with.
fn register(
    h: &mut Harness<Tracker>,
    conn: u64,
    mount: &str,
    addr: &str,
    relay_latency: Option<u32>,
) -> Vec<SocketAddr> {
    let request = TrackerRequest::Register {
        mount: mount.into(),
        my_addr: addr.parse().unwrap(),
        latency: relay_latency,
        relay: relay_latency.is_some(),
    };
    let mut bytes = Vec::new();
    request.encode(&mut bytes);
    let answer = ask(h, conn, std::str::from_utf8(&bytes).unwrap());
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains(&format!("\r\nServer: {SERVER}\r\n")),
        "{answer}"
    );
    let list = answer
        .lines()
        .find_map(|l| l.strip_prefix("Address:"))
        .expect("an Address header");
    parse_address_list(list.trim()).unwrap()
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn mr5_each_role_gets_the_other_roles_candidates_on_its_mount() {
    let mut h = tracker();
    assert_eq!(register(&mut h, 1, "m", "1.1.1.1:1", Some(50)), vec![]);
    assert_eq!(register(&mut h, 2, "m", "2.2.2.2:2", Some(10)), vec![]);
    assert_eq!(register(&mut h, 3, "other", "3.3.3.3:3", Some(1)), vec![]);
    // A listener gets the relays of its mount, best latency first.
    assert_eq!(
        register(&mut h, 4, "m", "[2001:db8::4]:4", None),
        addrs(&["2.2.2.2:2", "1.1.1.1:1"])
    );
    // A relay gets the listeners.
    assert_eq!(
        register(&mut h, 5, "m", "5.5.5.5:5", Some(20)),
        addrs(&["[2001:db8::4]:4"])
    );
    assert_eq!(h.machine.registrations(), 5);
}

#[test]
fn mr6_registrations_expire_unless_refreshed() {
    let mut h = tracker();
    register(&mut h, 1, "m", "1.1.1.1:1", Some(5));
    register(&mut h, 2, "m", "2.2.2.2:2", Some(5));
    h.advance(Duration::from_secs(6));
    register(&mut h, 3, "m", "1.1.1.1:1", Some(5)); // refreshed
    h.advance(Duration::from_secs(6));
    assert_eq!(
        register(&mut h, 4, "m", "9.9.9.9:9", None),
        addrs(&["1.1.1.1:1"]),
        "2.2.2.2 expired, 1.1.1.1 was refreshed"
    );
    h.advance(Duration::from_secs(30));
    assert_eq!(h.machine.registrations(), 0, "purged");
}

#[test]
fn mr7_connected_takes_both_points_off_the_lists() {
    let mut h = tracker();
    register(&mut h, 1, "m", "1.1.1.1:1", Some(5));
    register(&mut h, 2, "m", "2.2.2.2:2", Some(6));
    register(&mut h, 3, "m", "9.9.9.9:9", None);
    let answer = ask(
        &mut h,
        4,
        "GET /Pi HTTP/1.0\r\nConnected: 9.9.9.9:9,1.1.1.1:1\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
    assert_eq!(
        register(&mut h, 5, "m", "8.8.8.8:8", None),
        addrs(&["2.2.2.2:2"])
    );
    assert_eq!(
        register(&mut h, 6, "m", "7.7.7.7:7", Some(1)),
        addrs(&["8.8.8.8:8"]),
        "the paired listener is gone too"
    );
}

#[test]
fn mr3_bad_requests_get_400_with_the_reason() {
    let mut h = tracker();
    let answer = ask(&mut h, 1, "GET /Pi HTTP/1.0\r\nMyAddr: 1.2.3.4:5\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.0 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("missing Mount header\n"), "{answer}");
    let answer = ask(&mut h, 2, "HELLO\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.0 400 "), "{answer}");
}

#[test]
fn mr8_limits_head_size_time_and_registrations() {
    let mut h = tracker_with(Config {
        max_head_bytes: 200,
        max_registrations: 2,
        ..Config::default()
    });
    let big = format!("GET /Pi HTTP/1.0\r\nMount: {}\r\n", "m".repeat(300));
    let answer = ask(&mut h, 1, &big);
    assert!(answer.starts_with("HTTP/1.0 431 "), "{answer}");
    // A silent connection is answered 408 and closed.
    let conn = h.accept(2);
    assert!(h.recv(conn, b"GET /Pi").is_empty());
    let actions = h.advance(Duration::from_secs(5));
    assert!(
        String::from_utf8(sent_to(&actions, conn))
            .unwrap()
            .starts_with("HTTP/1.0 408 ")
    );
    assert!(actions.contains(&Action::Close { conn }));
    register(&mut h, 3, "m", "1.1.1.1:1", None);
    register(&mut h, 4, "m", "2.2.2.2:2", None);
    let answer = ask(
        &mut h,
        5,
        "GET /Pi HTTP/1.0\r\nMount: m\r\nMyAddr: 3.3.3.3:3\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.0 503 "), "{answer}");
    // A refresh of a known point still works when full.
    register(&mut h, 6, "m", "1.1.1.1:1", None);
}

#[test]
fn mr8_a_request_may_arrive_byte_by_byte() {
    let mut h = tracker();
    let conn = h.accept(1);
    let request = b"GET /Pi HTTP/1.0\r\nMount: m\r\nMyAddr: 1.2.3.4:5\r\n\r\n";
    let mut all = Vec::new();
    for b in request {
        all.extend(h.recv(conn, &[*b]));
    }
    assert!(
        String::from_utf8(sent_to(&all, conn))
            .unwrap()
            .starts_with("HTTP/1.0 200 OK")
    );
}
