//! Forwarder machine tests (PR-14..PR-16).

use std::time::Duration;

use super::*;
use crate::testing::{Harness, sent_to as sent};

fn relay_addr() -> SocketAddr {
    "10.0.0.1:7000".parse().unwrap()
}

fn local_addr() -> SocketAddr {
    "127.0.0.1:6379".parse().unwrap()
}

fn forwarder(protocol: Protocol) -> Harness<Forwarder> {
    let mut config = Config::new(relay_addr(), local_addr(), protocol);
    config.pool_size = 3;
    Harness::with_machine(Forwarder::new(config))
}

fn connects(actions: &[Action]) -> Vec<(ConnId, SocketAddr)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Connect { conn, addr } => Some((*conn, *addr)),
            _ => None,
        })
        .collect()
}

fn connected(h: &mut Harness<Forwarder>, conn: ConnId) -> Vec<Action> {
    h.input(Input::Connected {
        conn,
        local: "127.0.0.1:1".parse().unwrap(),
    })
}

/// Start, connect the control connection, check the hello; returns it.
fn start(h: &mut Harness<Forwarder>, hello: &[u8]) -> ConnId {
    let actions = h.command(Command::Start);
    let [(control, addr)] = connects(&actions)[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(addr, relay_addr());
    assert_eq!(sent(&connected(h, control), control), hello);
    control
}

#[test]
fn pr15_pool_joins_up_to_its_size_and_replaces_a_used_connection() {
    let mut h = forwarder(Protocol::Pool);
    let first = start(&mut h, b"pool\nnew\n");
    let actions = h.recv(first, b"4532\nabcd\n");
    assert_eq!(h.events(), vec![Event::PublicPort { port: 4532 }]);
    let joins = connects(&actions);
    assert_eq!(joins.len(), 2, "pool_size 3 with the first one idle");
    for (conn, addr) in &joins {
        assert_eq!(*addr, relay_addr());
        assert_eq!(sent(&connected(&mut h, *conn), *conn), b"pool\nabcd\n");
    }
    // A user takes the first connection: it speaks first.
    let actions = h.recv(first, b"*1\r\n$4\r\nPING\r\n");
    let new = connects(&actions);
    assert_eq!(new.len(), 2, "{actions:?}");
    let (local, _) = *new.iter().find(|(_, a)| *a == local_addr()).unwrap();
    assert!(
        new.iter().any(|(_, a)| *a == relay_addr()),
        "a replacement joins"
    );
    assert!(actions.contains(&Action::PauseRead { conn: first }));
    let actions = connected(&mut h, local);
    assert_eq!(sent(&actions, local), b"*1\r\n$4\r\nPING\r\n");
    assert_eq!(actions.last(), Some(&Action::Pipe { a: first, b: local }));
}

#[test]
fn pr15_a_failed_local_connect_closes_the_user() {
    let mut h = forwarder(Protocol::Pool);
    let first = start(&mut h, b"pool\nnew\n");
    h.recv(first, b"1\nid\n");
    let actions = h.recv(first, b"GET /");
    let (local, _) = *connects(&actions)
        .iter()
        .find(|(_, a)| *a == local_addr())
        .unwrap();
    let actions = h.input(Input::ConnectFailed {
        conn: local,
        error: "refused",
    });
    assert!(actions.contains(&Action::Close { conn: first }));
    assert!(matches!(h.events()[..], [_, Event::LocalFailed { .. }]));
}

#[test]
fn pr15_the_relays_refusal_on_a_pooled_connection_is_not_user_data() {
    let mut h = forwarder(Protocol::Pool);
    let first = start(&mut h, b"pool\nnew\n");
    let joins = connects(&h.recv(first, b"1\nid\n"));
    let (join, _) = joins[0];
    connected(&mut h, join);
    let actions = h.recv(join, b"error: pool full\n");
    assert_eq!(actions, vec![Action::Close { conn: join }]);
    let actions = h.recv(first, b"error: unknown pool\n");
    assert!(
        connects(&actions).is_empty(),
        "no local connect: {actions:?}"
    );
    assert!(matches!(h.events().last(), Some(Event::Lost { .. })));
}

#[test]
fn pr15_event_ids_get_a_relay_and_a_local_connection_spliced_when_both_are_up() {
    let mut h = forwarder(Protocol::Event);
    let control = start(&mut h, b"event\nnew\n");
    assert!(h.recv(control, b"4532\n").is_empty());
    let actions = h.recv(control, b"id1\nid2\n");
    let c = connects(&actions);
    assert_eq!(c.len(), 4);
    let (relay1, _) = c[0];
    let (local1, _) = c[1];
    assert_eq!((c[0].1, c[1].1), (relay_addr(), local_addr()));
    assert!(connected(&mut h, local1).is_empty());
    let actions = connected(&mut h, relay1);
    assert_eq!(
        actions,
        vec![
            Action::Send {
                conn: relay1,
                data: b"event\nid1\n".to_vec()
            },
            Action::Pipe {
                a: relay1,
                b: local1
            }
        ]
    );
    // The relay splices at once: the user's bytes (and FIN) may arrive before
    // the local connection is up; they are kept for it.
    let (relay2, local2) = (c[2].0, c[3].0);
    let actions = connected(&mut h, relay2);
    assert_eq!(sent(&actions, relay2), b"event\nid2\n");
    assert!(h.recv(relay2, b"SET k v\r\n").is_empty());
    assert!(h.input(Input::ReadClosed { conn: relay2 }).is_empty());
    let actions = connected(&mut h, local2);
    assert_eq!(
        actions,
        vec![
            Action::Send {
                conn: local2,
                data: b"SET k v\r\n".to_vec()
            },
            Action::Pipe {
                a: relay2,
                b: local2
            }
        ]
    );
}

#[test]
fn pr15_a_failed_local_connect_closes_the_event_relay_side() {
    let mut h = forwarder(Protocol::Event);
    let control = start(&mut h, b"event\nnew\n");
    h.recv(control, b"4532\n");
    let c = connects(&h.recv(control, b"id1\nid2\n"));
    // A local connect failure closes the relay side (the relay then closes the user).
    let (relay2, local2) = (c[2].0, c[3].0);
    let actions = h.input(Input::ConnectFailed {
        conn: local2,
        error: "refused",
    });
    assert_eq!(actions, vec![Action::Close { conn: relay2 }]);
}

#[test]
fn pr16_refusal_and_silence_retry_with_a_doubling_backoff() {
    let mut h = forwarder(Protocol::Event);
    let control = start(&mut h, b"event\nnew\n");
    let actions = h.recv(control, b"error: too many clients\n");
    assert!(actions.contains(&Action::Close { conn: control }));
    assert!(matches!(
        h.events()[..],
        [Event::Lost { retry_in, .. }] if retry_in == Duration::from_millis(500)
    ));
    assert!(h.advance(Duration::from_millis(499)).is_empty());
    let actions = h.advance(Duration::from_millis(1));
    let [(control, _)] = connects(&actions)[..] else {
        panic!("{actions:?}")
    };
    connected(&mut h, control);
    // No answer within the handshake timeout: lost again, backoff doubled.
    let actions = h.advance(Duration::from_secs(10));
    assert!(actions.contains(&Action::Close { conn: control }));
    assert!(matches!(
        h.events()[..],
        [Event::Lost { retry_in, .. }] if retry_in == Duration::from_secs(1)
    ));
    // Unreachable relay: same path.
    let actions = h.advance(Duration::from_secs(1));
    let [(control, _)] = connects(&actions)[..] else {
        panic!("{actions:?}")
    };
    h.input(Input::ConnectFailed {
        conn: control,
        error: "refused",
    });
    assert!(matches!(
        h.events()[..],
        [Event::Lost { retry_in, .. }] if retry_in == Duration::from_secs(2)
    ));
}

#[test]
fn pr16_a_lost_control_connection_starts_over_and_a_port_resets_the_backoff() {
    let mut h = forwarder(Protocol::Event);
    let control = start(&mut h, b"event\nnew\n");
    h.recv(control, b"4532\n");
    h.events();
    let actions = h.input(Input::ReadClosed { conn: control });
    assert!(actions.contains(&Action::Close { conn: control }));
    let actions = h.advance(Duration::from_millis(500));
    let [(control, _)] = connects(&actions)[..] else {
        panic!("{actions:?}")
    };
    connected(&mut h, control);
    h.recv(control, b"4533\n");
    assert!(matches!(
        h.events()[..],
        [Event::Lost { .. }, Event::PublicPort { port: 4533 }]
    ));
}

#[test]
fn pr15_a_local_server_that_speaks_first_is_heard_and_its_fin_kept() {
    let mut h = forwarder(Protocol::Event);
    let control = start(&mut h, b"event\nnew\n");
    h.recv(control, b"4532\n");
    let c = connects(&h.recv(control, b"abcd\n"));
    let (relay, local) = (c[0].0, c[1].0);
    assert!(connected(&mut h, local).is_empty());
    assert!(h.recv(local, b"220 smtp ready\r\n").is_empty());
    assert!(h.input(Input::ReadClosed { conn: local }).is_empty());
    let actions = connected(&mut h, relay);
    assert_eq!(
        actions,
        vec![
            Action::Send {
                conn: relay,
                data: b"event\nabcd\n".to_vec()
            },
            Action::Send {
                conn: relay,
                data: b"220 smtp ready\r\n".to_vec()
            },
            Action::Pipe { a: relay, b: local }
        ]
    );
}

#[test]
fn pr15_a_relay_announcing_too_many_users_gets_a_bounded_answer() {
    let mut h = forwarder(Protocol::Event);
    let control = start(&mut h, b"event\nnew\n");
    h.recv(control, b"4532\n");
    let lines: String = (0..1000).map(|i| format!("id{i}\n")).collect();
    let actions = h.recv(control, lines.as_bytes());
    assert_eq!(connects(&actions).len(), 2 * MAX_EVENT_PAIRS);
    // Ids that are not plain words are ignored.
    let control_actions = h.recv(control, b"../x\n\x01\n");
    assert!(connects(&control_actions).is_empty());
}

#[test]
fn stop_closes_each_connection_once() {
    let mut h = forwarder(Protocol::Multiplex);
    let control = start(&mut h, b"multiplex\n");
    h.recv(control, b"4532\n");
    let actions = h.command(Command::Stop);
    let closes = actions
        .iter()
        .filter(|a| matches!(a, Action::Close { .. }))
        .count();
    assert_eq!(closes, 1, "{actions:?}");
}

#[test]
fn stop_closes_everything_and_stays_stopped() {
    let mut h = forwarder(Protocol::Pool);
    let first = start(&mut h, b"pool\nnew\n");
    let joins = connects(&h.recv(first, b"1\nid\n"));
    let actions = h.command(Command::Stop);
    assert!(actions.contains(&Action::Close { conn: first }));
    for (conn, _) in joins {
        assert!(actions.contains(&Action::Close { conn }));
    }
    assert_eq!(h.machine.poll_timeout(), None);
    assert!(h.advance(Duration::from_secs(60)).is_empty());
}
