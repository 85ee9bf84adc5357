//! Relay machine tests, named after the requirement they check (PR-n).

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::testing::{Harness, LISTENER, sent_to};

const PUBLIC_PORT: u16 = 40_000;

fn config() -> Config {
    Config::default()
}

fn relay_with(config: Config) -> Harness<Server> {
    let mut h = Harness::with_machine(Server::new(config, [7; 32]));
    let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let actions = h.command(Command::Listen(addr));
    assert_eq!(actions.len(), 1);
    let Action::Listen { listener, .. } = actions[0] else {
        panic!("{actions:?}")
    };
    // The harness accepts on LISTENER: report the listener under that id.
    h.input(Input::Listening {
        listener: LISTENER,
        local: addr,
    });
    let _ = listener;
    h.events();
    h
}

fn relay() -> Harness<Server> {
    relay_with(config())
}

fn closes(actions: &[Action], conn: ConnId) -> bool {
    actions.contains(&Action::Close { conn })
}

fn the_listen(actions: &[Action]) -> (ListenerId, SocketAddr) {
    let listens: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Listen { listener, addr } => Some((*listener, *addr)),
            _ => None,
        })
        .collect();
    assert_eq!(listens.len(), 1, "{actions:?}");
    listens[0]
}

/// A client on `conn` sends `hello`; the relay binds and answers. Returns the
/// public listener and the reply.
fn open_client(h: &mut Harness<Server>, conn: u64, hello: &[u8]) -> (ListenerId, String) {
    let conn = h.accept(conn);
    let (listener, addr) = the_listen(&h.recv(conn, hello));
    assert_eq!(addr.ip(), "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    let actions = h.input(Input::Listening {
        listener,
        local: SocketAddr::new(addr.ip(), PUBLIC_PORT),
    });
    let reply = String::from_utf8(sent_to(&actions, conn)).unwrap();
    (listener, reply)
}

fn user(h: &mut Harness<Server>, listener: ListenerId, conn: u64) -> Vec<Action> {
    h.input(Input::Accepted {
        listener,
        conn: ConnId(conn),
        peer: "127.0.0.1:5".parse().unwrap(),
    })
}

#[test]
fn pr1_unknown_protocol_gets_an_error_line_and_is_closed() {
    let mut h = relay();
    let c = h.accept(1);
    let actions = h.recv(c, b"telnet\n");
    assert_eq!(sent_to(&actions, c), b"error: unknown protocol\n");
    assert!(closes(&actions, c));
    assert!(matches!(
        h.events()[..],
        [Event::Refused {
            reason: "unknown protocol",
            ..
        }]
    ));
}

#[test]
fn pr1_a_long_line_is_refused_before_its_newline() {
    let mut h = relay();
    let c = h.accept(1);
    let actions = h.recv(c, &[b'x'; 100]);
    assert_eq!(sent_to(&actions, c), b"error: line too long\n");
    assert!(closes(&actions, c));
}

#[test]
fn pr1_an_idle_handshake_times_out() {
    let mut h = relay();
    let c = h.accept(1);
    assert!(h.recv(c, b"pool\n").is_empty());
    assert!(h.advance(Duration::from_secs(9)).is_empty());
    let actions = h.advance(Duration::from_secs(2));
    assert_eq!(sent_to(&actions, c), b"error: handshake timeout\n");
    assert!(closes(&actions, c));
}

#[test]
fn pr1_handshake_lines_may_arrive_byte_by_byte_with_cr() {
    let mut h = relay();
    let c = h.accept(1);
    let mut all = Vec::new();
    for b in b"pool\r\nnew\r\n" {
        all.extend(h.recv(c, &[*b]));
    }
    the_listen(&all);
}

#[test]
fn pr1_a_connection_flood_is_bounded() {
    let mut h = relay_with(Config {
        max_connections: 3,
        ..config()
    });
    let (public, _) = open_client(&mut h, 1, b"event\nnew\n");
    h.accept(2);
    user(&mut h, public, 100);
    assert_eq!(h.machine.connection_count(), 3);
    let actions = h.input(Input::Accepted {
        listener: LISTENER,
        conn: ConnId(3),
        peer: "127.0.0.1:9".parse().unwrap(),
    });
    assert_eq!(actions, vec![Action::Close { conn: ConnId(3) }]);
    assert_eq!(
        user(&mut h, public, 101),
        vec![Action::Close { conn: ConnId(101) }]
    );
    // The handshake that never completes times out and makes room.
    h.advance(Duration::from_secs(11));
    h.accept(4);
}

#[test]
fn pr2_each_client_gets_its_own_listener_closed_with_its_connection() {
    let mut h = relay();
    let (l1, _) = open_client(&mut h, 1, b"event\nnew\n");
    let (l2, _) = open_client(&mut h, 2, b"event\nnew\n");
    assert_ne!(l1, l2);
    assert_eq!(h.machine.client_count(), 2);
    let actions = h.input(Input::Closed { conn: ConnId(1) });
    assert!(actions.contains(&Action::CloseListener { listener: l1 }));
    assert!(!actions.contains(&Action::CloseListener { listener: l2 }));
    assert_eq!(h.machine.client_count(), 1);
}

#[test]
fn pr2_public_listeners_bind_the_configured_ip_or_the_control_ip() {
    let mut h = relay_with(Config {
        public_ip: Some("0.0.0.0".parse().unwrap()),
        ..config()
    });
    let c = h.accept(1);
    let (_, addr) = the_listen(&h.recv(c, b"multiplex\n"));
    assert_eq!(addr, "0.0.0.0:0".parse().unwrap());
    // Without one, the control listener's (127.0.0.1 in `relay`): see open_client.
}

#[test]
fn pr2_a_repeated_listening_leaves_an_open_client_alone() {
    let mut h = relay();
    let (public, _) = open_client(&mut h, 1, b"event\nnew\n");
    let again = h.input(Input::Listening {
        listener: public,
        local: "127.0.0.1:40001".parse().unwrap(),
    });
    assert!(again.is_empty(), "{again:?}");
    let actions = user(&mut h, public, 100);
    assert_eq!(
        sent_to(&actions, ConnId(1)).len(),
        33,
        "still announcing users"
    );
}

#[test]
fn pr2_a_port_range_is_tried_in_order_then_refused() {
    let mut h = relay_with(Config {
        port_range: Some((5000, 5001)),
        ..config()
    });
    let c = h.accept(1);
    let (l1, a1) = the_listen(&h.recv(c, b"event\nnew\n"));
    assert_eq!(a1.port(), 5000);
    let (l2, a2) = the_listen(&h.input(Input::ListenFailed {
        listener: l1,
        error: "in use",
    }));
    assert_eq!(a2.port(), 5001);
    let actions = h.input(Input::ListenFailed {
        listener: l2,
        error: "in use",
    });
    assert_eq!(sent_to(&actions, c), b"error: no port available\n");
    assert!(closes(&actions, c));
    assert_eq!(h.machine.client_count(), 0);
}

#[test]
fn pr13_the_stream_window_is_clamped() {
    use crate::codec::yamux::INITIAL_WINDOW;
    let small = Config {
        window: 1,
        ..config()
    };
    assert_eq!(small.session().receive_window, INITIAL_WINDOW);
    let huge = Config {
        window: u32::MAX,
        ..config()
    };
    assert_eq!(huge.session().receive_window, MAX_WINDOW);
    assert_eq!(config().session().receive_window, DEFAULT_WINDOW);
}

#[test]
fn absurd_settings_are_clamped_not_a_panic() {
    let mut h = relay_with(Config {
        port_range: Some((5001, 5000)),
        handshake_timeout: Duration::MAX,
        pool_wait: Duration::MAX,
        keepalive: Duration::MAX,
        ..config()
    });
    let c = h.accept(1);
    let (l1, a1) = the_listen(&h.recv(c, b"pool\nnew\n"));
    assert_eq!(a1.port(), 5000);
    let (_, a2) = the_listen(&h.input(Input::ListenFailed {
        listener: l1,
        error: "in use",
    }));
    assert_eq!(a2.port(), 5001);
    let c = h.accept(2);
    h.recv(c, b"multiplex\n");
    assert!(h.advance(Duration::from_secs(3600)).is_empty());
}

#[test]
fn pr6_a_new_pool_gets_port_and_a_128_bit_id() {
    let mut h = relay();
    let (_, reply) = open_client(&mut h, 1, b"pool\nnew\n");
    let lines: Vec<&str> = reply.lines().collect();
    assert_eq!(lines[0], PUBLIC_PORT.to_string());
    assert_eq!(lines[1].len(), 32);
    assert!(reply.ends_with('\n'));
    let (_, other) = open_client(&mut h, 2, b"pool\nnew\n");
    assert_ne!(other.lines().nth(1), Some(lines[1]), "ids differ");
}

fn pool_id(reply: &str) -> String {
    reply.lines().nth(1).unwrap().to_owned()
}

#[test]
fn pr7_unknown_pool_and_full_pool_are_refused() {
    let mut h = relay_with(Config {
        max_pool: 2,
        ..config()
    });
    let (_, reply) = open_client(&mut h, 1, b"pool\nnew\n");
    let id = pool_id(&reply);
    let c = h.accept(2);
    let actions = h.recv(c, b"pool\n0123\n");
    assert_eq!(sent_to(&actions, c), b"error: unknown pool\n");
    let c = h.accept(3);
    assert!(h.recv(c, format!("pool\n{id}\n").as_bytes()).is_empty());
    let c = h.accept(4);
    let actions = h.recv(c, format!("pool\n{id}\n").as_bytes());
    assert_eq!(sent_to(&actions, c), b"error: pool full\n");
    assert!(closes(&actions, c));
}

#[test]
fn pr8_users_take_the_oldest_idle_connection_and_are_spliced() {
    let mut h = relay();
    let (public, reply) = open_client(&mut h, 1, b"pool\nnew\n");
    let id = pool_id(&reply);
    let c = h.accept(2);
    h.recv(c, format!("pool\n{id}\n").as_bytes());
    let actions = user(&mut h, public, 100);
    assert_eq!(
        actions,
        vec![Action::Pipe {
            a: ConnId(100),
            b: ConnId(1)
        }]
    );
    let actions = user(&mut h, public, 101);
    assert_eq!(
        actions,
        vec![Action::Pipe {
            a: ConnId(101),
            b: ConnId(2)
        }]
    );
}

#[test]
fn pr8_a_waiting_user_keeps_its_bytes_and_gets_the_next_joiner() {
    let mut h = relay();
    let (public, reply) = open_client(&mut h, 1, b"pool\nnew\n");
    let id = pool_id(&reply);
    user(&mut h, public, 100);
    assert!(user(&mut h, public, 101).is_empty(), "waits");
    assert!(h.recv(ConnId(101), b"PING\r\n").is_empty());
    let c = h.accept(2);
    let actions = h.recv(c, format!("pool\n{id}\n").as_bytes());
    assert_eq!(
        actions,
        vec![
            Action::Send {
                conn: ConnId(2),
                data: b"PING\r\n".to_vec()
            },
            Action::Pipe {
                a: ConnId(101),
                b: ConnId(2)
            }
        ]
    );
}

#[test]
fn pr8_waiting_is_bounded_in_time_and_number() {
    let mut h = relay_with(Config {
        max_waiting: 1,
        ..config()
    });
    let (public, _) = open_client(&mut h, 1, b"pool\nnew\n");
    user(&mut h, public, 100); // takes the idle one
    assert!(user(&mut h, public, 101).is_empty());
    assert_eq!(
        user(&mut h, public, 102),
        vec![Action::Close { conn: ConnId(102) }]
    );
    let actions = h.advance(Duration::from_secs(11));
    assert!(closes(&actions, ConnId(101)), "{actions:?}");
}

#[test]
fn pr8_an_empty_pool_closes_after_its_grace() {
    let mut h = relay();
    let (public, reply) = open_client(&mut h, 1, b"pool\nnew\n");
    user(&mut h, public, 100);
    assert!(h.advance(Duration::from_secs(29)).is_empty());
    // A join within the grace keeps it.
    let c = h.accept(2);
    h.recv(c, format!("pool\n{}\n", pool_id(&reply)).as_bytes());
    assert!(h.advance(Duration::from_secs(5)).is_empty());
    h.input(Input::Closed { conn: c });
    let actions = h.advance(Duration::from_secs(31));
    assert!(actions.contains(&Action::CloseListener { listener: public }));
    let c = h.accept(3);
    let actions = h.recv(c, format!("pool\n{}\n", pool_id(&reply)).as_bytes());
    assert_eq!(sent_to(&actions, c), b"error: unknown pool\n");
}

#[test]
fn pr9_pr10_users_are_announced_by_id_and_spliced_to_the_answer() {
    let mut h = relay();
    let (public, reply) = open_client(&mut h, 1, b"event\nnew\n");
    assert_eq!(reply, format!("{PUBLIC_PORT}\n"));
    let actions = user(&mut h, public, 100);
    let line = String::from_utf8(sent_to(&actions, ConnId(1))).unwrap();
    let id = line.strip_suffix('\n').unwrap();
    assert_eq!(id.len(), 32);
    h.recv(ConnId(100), b"hello");
    let c = h.accept(2);
    let actions = h.recv(c, format!("event\n{id}\n").as_bytes());
    assert_eq!(
        actions,
        vec![
            Action::Send {
                conn: c,
                data: b"hello".to_vec()
            },
            Action::Pipe {
                a: ConnId(100),
                b: c
            }
        ]
    );
    // Used once.
    let c = h.accept(3);
    let actions = h.recv(c, format!("event\n{id}\n").as_bytes());
    assert_eq!(sent_to(&actions, c), b"error: unknown event\n");
}

#[test]
fn pr10_an_unanswered_event_expires_and_its_user_is_closed() {
    let mut h = relay();
    let (public, _) = open_client(&mut h, 1, b"event\nnew\n");
    let actions = user(&mut h, public, 100);
    let line = String::from_utf8(sent_to(&actions, ConnId(1))).unwrap();
    let actions = h.advance(Duration::from_secs(11));
    assert!(closes(&actions, ConnId(100)));
    let c = h.accept(2);
    let actions = h.recv(c, format!("event\n{line}").as_bytes());
    assert_eq!(sent_to(&actions, c), b"error: unknown event\n");
}

#[test]
fn pr10_an_event_client_that_does_not_read_its_ids_gets_no_more_users() {
    let mut h = relay_with(Config {
        max_waiting: 100_000,
        ..config()
    });
    let (public, _) = open_client(&mut h, 1, b"event\nnew\n");
    let mut refused = None;
    for user_id in 0..10_000 {
        let actions = user(&mut h, public, 100 + user_id);
        if actions
            == vec![Action::Close {
                conn: ConnId(100 + user_id),
            }]
        {
            refused = Some(user_id);
            break;
        }
    }
    // 33 bytes an id: refused past 64 KiB unread.
    assert_eq!(refused, Some(EARLY_LIMIT as u64 / 33 + 1));
    h.input(Input::Flushed {
        conn: ConnId(1),
        bytes: 40_000,
    });
    let actions = user(&mut h, public, 99_999);
    assert_eq!(sent_to(&actions, ConnId(1)).len(), 33, "announced again");
}

#[test]
fn pr11_the_control_connection_ending_closes_listener_and_waiting_users() {
    let mut h = relay();
    let (public, _) = open_client(&mut h, 1, b"event\nnew\n");
    user(&mut h, public, 100);
    user(&mut h, public, 101);
    let actions = h.input(Input::ReadClosed { conn: ConnId(1) });
    assert!(actions.contains(&Action::CloseListener { listener: public }));
    assert!(closes(&actions, ConnId(100)));
    assert!(closes(&actions, ConnId(101)));
    assert!(closes(&actions, ConnId(1)));
    assert_eq!(h.machine.client_count(), 0);
}

#[test]
fn pr12_a_waiting_users_fin_is_left_for_the_splice() {
    let mut h = relay();
    let (public, reply) = open_client(&mut h, 1, b"pool\nnew\n");
    user(&mut h, public, 100);
    user(&mut h, public, 101);
    h.recv(ConnId(101), b"last words");
    assert!(h.input(Input::ReadClosed { conn: ConnId(101) }).is_empty());
    let c = h.accept(2);
    let actions = h.recv(c, format!("pool\n{}\n", pool_id(&reply)).as_bytes());
    assert_eq!(sent_to(&actions, c), b"last words");
    assert!(actions.contains(&Action::Pipe {
        a: ConnId(101),
        b: c
    }));
}

#[test]
fn shutdown_closes_every_listener_and_connection() {
    let mut h = relay();
    let (public, _) = open_client(&mut h, 1, b"event\nnew\n");
    let pending = h.accept(2);
    let actions = h.command(Command::Shutdown);
    assert!(actions.contains(&Action::CloseListener { listener: LISTENER }));
    assert!(actions.contains(&Action::CloseListener { listener: public }));
    assert!(closes(&actions, ConnId(1)));
    assert!(closes(&actions, pending));
    assert_eq!(h.machine.poll_timeout(), None);
}

mod multiplex {
    //! PR-3..PR-5, with a yamux session in the test playing the relay client.

    use super::*;
    use crate::codec::yamux::INITIAL_WINDOW;
    use crate::codec::yamux::session::{
        Config as SessionConfig, Session, SessionEvent, StreamError,
    };

    const CONTROL: ConnId = ConnId(1);

    struct Mux {
        h: Harness<Server>,
        public: ListenerId,
        client: Session,
    }

    impl Mux {
        fn new() -> Mux {
            let mut h = relay();
            let (public, reply) = open_client(&mut h, 1, b"multiplex\n");
            assert_eq!(reply, format!("{PUBLIC_PORT}\n"));
            let client = Session::new(
                Mode::Server,
                SessionConfig {
                    keepalive_interval: None,
                    ..SessionConfig::default()
                },
                h.now,
            );
            Mux { h, public, client }
        }

        /// Feed the relay's control bytes in `actions` to the client session;
        /// the other actions.
        fn deliver(&mut self, actions: Vec<Action>) -> Vec<Action> {
            let mut rest = Vec::new();
            for action in actions {
                match action {
                    Action::Send { conn, data } if conn == CONTROL => {
                        self.client.receive(&data, self.h.now).expect("valid yamux");
                    }
                    other => rest.push(other),
                }
            }
            rest
        }

        /// Client session output to the relay; the relay's non-control actions.
        fn push(&mut self) -> Vec<Action> {
            let bytes = self.client.take_output();
            let actions = self.h.recv(CONTROL, &bytes);
            self.deliver(actions)
        }

        fn events(&mut self) -> Vec<SessionEvent> {
            std::iter::from_fn(|| self.client.poll_event()).collect()
        }

        fn user(&mut self, conn: u64) -> u32 {
            let actions = user(&mut self.h, self.public, conn);
            assert!(self.deliver(actions).is_empty());
            match self.events()[..] {
                [SessionEvent::Inbound(stream)] => stream,
                ref other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn pr3_pr4_each_user_is_a_stream_the_relay_opens_with_an_odd_id() {
        let mut m = Mux::new();
        assert_eq!(m.user(100), 1);
        assert_eq!(m.user(101), 3);
        let actions = m.h.recv(ConnId(100), b"hello");
        assert!(m.deliver(actions).is_empty());
        assert_eq!(
            m.events(),
            vec![SessionEvent::Data {
                stream: 1,
                data: b"hello".to_vec()
            }]
        );
        m.client.send(3, b"to 101").expect("open stream");
        let actions = m.push();
        assert_eq!(
            actions,
            vec![Action::Send {
                conn: ConnId(101),
                data: b"to 101".to_vec()
            }]
        );
    }

    #[test]
    fn pr4_fin_travels_both_ways_and_reset_closes_the_user() {
        let mut m = Mux::new();
        let s = m.user(100);
        let actions = m.h.input(Input::ReadClosed { conn: ConnId(100) });
        assert!(m.deliver(actions).is_empty());
        assert_eq!(m.events(), vec![SessionEvent::Finished(s)]);
        m.client.send(s, b"last").expect("still writable");
        m.client.finish(s).expect("fin");
        let actions = m.push();
        assert_eq!(
            actions,
            vec![
                Action::Send {
                    conn: ConnId(100),
                    data: b"last".to_vec()
                },
                Action::Shutdown { conn: ConnId(100) },
            ]
        );
        assert_eq!(m.events(), vec![SessionEvent::Closed(s)]);
        // The stream is over, but "last" may still sit in the runtime's queue: a
        // Close now could drop it. The relay closes once it was flushed.
        let held = m.h.machine.connection_count();
        let actions = m.h.input(Input::Flushed {
            conn: ConnId(100),
            bytes: 4,
        });
        assert_eq!(actions, vec![Action::Close { conn: ConnId(100) }]);
        assert_eq!(m.h.machine.connection_count(), held - 1, "forgotten");
        let s = m.user(101);
        m.client.reset(s);
        assert_eq!(m.push(), vec![Action::Close { conn: ConnId(101) }]);
        // The user resetting is an RST on its stream.
        let s = m.user(102);
        let actions = m.h.input(Input::Closed { conn: ConnId(102) });
        assert!(m.deliver(actions).is_empty());
        assert_eq!(m.events(), vec![SessionEvent::Reset(s)]);
    }

    #[test]
    fn pr13_credit_returns_only_as_the_user_takes_the_bytes() {
        let mut m = Mux::new();
        let s = m.user(100);
        // The relay announces its configured window on the stream's SYN.
        let window = DEFAULT_WINDOW as usize;
        let data = vec![7u8; window + 1000];
        assert_eq!(
            m.client.send(s, &data),
            Ok(window),
            "the window is the limit"
        );
        let sent: usize = m
            .push()
            .iter()
            .map(|a| match a {
                Action::Send { conn, data } if *conn == ConnId(100) => data.len(),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(sent, window);
        assert_eq!(m.client.send(s, &data[window..]), Ok(0), "no credit yet");
        // The user's socket takes half: the relay credits it back.
        let actions = m.h.input(Input::Flushed {
            conn: ConnId(100),
            bytes: window / 2,
        });
        assert!(m.deliver(actions).is_empty());
        assert_eq!(m.events(), vec![SessionEvent::Writable(s)]);
        assert_eq!(m.client.send(s, &data[window..]), Ok(1000));
    }

    #[test]
    fn pr13_a_closed_window_pauses_the_user_until_writable() {
        let mut m = Mux::new();
        let s = m.user(100);
        let window = INITIAL_WINDOW as usize;
        let actions = m.h.recv(ConnId(100), &vec![1u8; window + 10]);
        let rest = m.deliver(actions);
        assert_eq!(rest, vec![Action::PauseRead { conn: ConnId(100) }]);
        let got: usize = m
            .events()
            .iter()
            .map(|e| match e {
                SessionEvent::Data { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(got, window);
        m.client.consumed(s, window);
        let actions = m.push();
        assert_eq!(actions, vec![Action::ResumeRead { conn: ConnId(100) }]);
    }

    #[test]
    fn pr5_the_session_ends_with_the_control_connection_or_a_protocol_error() {
        let mut m = Mux::new();
        m.user(100);
        let actions = m.h.input(Input::Closed { conn: CONTROL });
        assert!(actions.contains(&Action::Close { conn: ConnId(100) }));
        assert!(actions.contains(&Action::CloseListener { listener: m.public }));

        let mut m = Mux::new();
        m.user(100);
        let actions = m.h.recv(CONTROL, &[9; 12]);
        // GoAway (type 3, protocol error 1) goes out before the close.
        let goaway = sent_to(&actions, CONTROL);
        assert_eq!(&goaway[..4], &[0, 3, 0, 0]);
        assert_eq!(&goaway[8..12], &[0, 0, 0, 1]);
        assert!(closes(&actions, CONTROL));
        assert!(closes(&actions, ConnId(100)));
        assert_eq!(m.h.machine.client_count(), 0);
    }

    #[test]
    fn pr5_unanswered_keepalives_end_the_session() {
        let mut m = Mux::new();
        let actions = m.h.advance(Duration::from_secs(30));
        assert!(!sent_to(&actions, CONTROL).is_empty(), "a ping");
        let actions = m.h.advance(Duration::from_secs(31));
        assert!(closes(&actions, CONTROL), "{actions:?}");
        assert_eq!(m.h.machine.client_count(), 0);
    }

    #[test]
    fn pr4_finished_streams_leave_no_state_behind() {
        let mut m = Mux::new();
        let before = m.h.machine.connection_count();
        for user in 0..50 {
            let conn = ConnId(100 + user);
            let s = m.user(100 + user);
            let actions = m.h.input(Input::ReadClosed { conn });
            assert!(m.deliver(actions).is_empty());
            m.client.finish(s).expect("fin");
            let actions = m.push();
            assert_eq!(
                actions,
                vec![Action::Shutdown { conn }, Action::Close { conn }]
            );
            m.events();
        }
        for user in 50..60 {
            let s = m.user(100 + user);
            m.client.reset(s);
            m.push();
        }
        assert_eq!(m.h.machine.connection_count(), before);
    }

    #[test]
    fn pr13_a_ping_flood_that_is_never_read_pauses_the_control_connection() {
        let mut m = Mux::new();
        let mut flood = Vec::new();
        for i in 0..100_000u32 {
            crate::codec::yamux::ping(crate::codec::yamux::Flags::SYN, i, &mut flood);
        }
        let mut paused = false;
        for _ in 0..8 {
            let actions = m.h.recv(CONTROL, &flood);
            paused |= actions.contains(&Action::PauseRead { conn: CONTROL });
        }
        assert!(
            paused,
            "8 MiB of answers queued and the control connection still read"
        );
    }

    #[test]
    fn pr5_a_client_goaway_ends_it_once_its_streams_are_done() {
        let mut m = Mux::new();
        let s = m.user(100);
        m.client.go_away(crate::codec::yamux::GoAwayCode::Normal);
        m.push();
        assert_eq!(m.h.machine.client_count(), 1, "the open stream goes on");
        m.client.reset(s);
        let bytes = m.client.take_output();
        let actions = m.h.recv(CONTROL, &bytes);
        assert!(actions.contains(&Action::CloseListener { listener: m.public }));
        assert_eq!(m.h.machine.client_count(), 0);
    }

    #[test]
    fn pr5_an_inbound_stream_from_the_client_is_refused() {
        let mut m = Mux::new();
        let s = m.client.open().expect("open");
        assert!(m.push().is_empty());
        // The session acknowledges the SYN; the relay then resets the stream.
        assert_eq!(m.events().last(), Some(&SessionEvent::Reset(s)));
        assert_eq!(m.client.send(s, b"x"), Err(StreamError::Unknown(s)));
    }
}
