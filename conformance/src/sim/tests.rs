//! The simulator's own tests, with a probe machine that does what it is told
//! and reports every input it gets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_core::io::{Action, ConnId, Input, ListenerId, SocketId};

use crate::puppet::{Do, Puppet, Record};

use super::{Chunking, Sim, SimConfig, UdpLink};

/// What the probe saw, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Listening(SocketAddr),
    Accepted(ConnId),
    Connected(ConnId),
    ConnectFailed(ConnId),
    Received(ConnId, Vec<u8>),
    Flushed(ConnId, usize),
    Closed(ConnId),
    UdpBound(SocketId, SocketAddr),
    Datagram(SocketAddr, Vec<u8>),
    Tun(Vec<u8>),
    Woken,
    Other,
}

impl Record for Seen {
    fn input(input: Input<'_>) -> Option<Self> {
        Some(match input {
            Input::Listening { local, .. } => Seen::Listening(local),
            Input::Accepted { conn, .. } => Seen::Accepted(conn),
            Input::Connected { conn, .. } => Seen::Connected(conn),
            Input::ConnectFailed { conn, .. } => Seen::ConnectFailed(conn),
            Input::Received { conn, data } => Seen::Received(conn, data.to_vec()),
            Input::Flushed { conn, bytes } => Seen::Flushed(conn, bytes),
            Input::Closed { conn } => Seen::Closed(conn),
            Input::UdpBound { socket, local } => Seen::UdpBound(socket, local),
            Input::Datagram { from, data, .. } => Seen::Datagram(from, data.to_vec()),
            Input::TunPacket(p) => Seen::Tun(p.to_vec()),
            _ => Seen::Other,
        })
    }

    fn woken() -> Self {
        Seen::Woken
    }
}

/// A machine that does what it is told and reports every input it gets.
type Probe = Puppet<Seen>;

fn any_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// A probe listening (echoing if `echo`), and its address.
fn listening_probe(sim: &mut Sim, echo: bool) -> (super::NodeId<Probe>, SocketAddr) {
    let node = sim.add_machine(Probe::default());
    let listener = ListenerId(sim.machine_mut(node).next_id());
    sim.command(
        node,
        Do::Act(Action::Listen {
            listener,
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }),
    );
    sim.command(node, Do::Echo(echo));
    sim.run_until_idle();
    let events = sim.events(node);
    let Some(Seen::Listening(addr)) = events.first() else {
        panic!("no Listening: {events:?}");
    };
    assert_eq!(Some(*addr), sim.listen_addr(node));
    (node, *addr)
}

fn received(events: &[Seen]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if let Seen::Received(_, d) = e {
            out.extend_from_slice(d);
        }
    }
    out
}

#[test]
fn echo_roundtrip_whatever_the_chunking_and_same_seed_same_trace() {
    let run = |seed: u64| {
        let mut sim = Sim::new(seed);
        let (_, addr) = listening_probe(&mut sim, true);
        let client = sim.connect_client(addr);
        let data = super::SimRng::new(seed).bytes(300_000);
        for part in data.chunks(70_000) {
            sim.client_send(client, part);
            sim.step();
        }
        sim.run_until_idle();
        assert_eq!(sim.client_received(client), &data[..]);
        (sim.trace_hash(), sim.trace_len())
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5).0, run(6).0);
}

#[test]
fn a_client_that_does_not_read_stops_flushed_and_pause_read_holds_its_bytes() {
    let config = SimConfig {
        tcp_window: 1000,
        ..SimConfig::default()
    };
    let mut sim = Sim::with_config(1, config);
    let (node, addr) = listening_probe(&mut sim, false);
    let client = sim.connect_client(addr);
    sim.client_set_reading(client, false);
    sim.run_until_idle();
    let conn = sim.client_conn(client).expect("accepted");
    sim.command(
        node,
        Do::Act(Action::Send {
            conn,
            data: vec![7; 5000],
        }),
    );
    sim.run_until_idle();
    let flushed: usize = sim
        .events(node)
        .iter()
        .map(|e| if let Seen::Flushed(_, n) = e { *n } else { 0 })
        .sum();
    assert_eq!(flushed, 1000, "only the window is flushed");
    assert_eq!(sim.client_queued(client), 4000);
    assert_eq!(sim.client_peak_queued(client), 5000);
    assert!(sim.client_received(client).is_empty());
    sim.client_set_reading(client, true);
    sim.run_until_idle();
    assert_eq!(sim.client_received(client), &[7; 5000][..]);

    // PauseRead: the client's bytes wait in the simulator.
    sim.command(node, Do::Act(Action::PauseRead { conn }));
    sim.client_send(client, b"held");
    sim.run_until_idle();
    assert!(received(&sim.events(node)).is_empty());
    assert!(sim.client_paused(client));
    assert_eq!(sim.client_unread(client), 4);
    assert_eq!(sim.client_pause_count(client), 1);
    sim.command(node, Do::Act(Action::ResumeRead { conn }));
    sim.run_until_idle();
    assert_eq!(received(&sim.events(node)), b"held");
}

#[test]
fn close_gives_eof_after_the_bytes_and_client_close_gives_closed() {
    let mut sim = Sim::new(2);
    let (node, addr) = listening_probe(&mut sim, false);
    let a = sim.connect_client(addr);
    let b = sim.connect_client(addr);
    sim.run_until_idle();
    let conn_a = sim.client_conn(a).expect("a");
    sim.command(
        node,
        Do::Act(Action::Send {
            conn: conn_a,
            data: b"bye".to_vec(),
        }),
    );
    sim.command(node, Do::Act(Action::Close { conn: conn_a }));
    sim.client_send(a, b"lost");
    sim.run_until_idle();
    assert_eq!(sim.client_received(a), b"bye");
    assert!(sim.client_eof(a) && sim.client_closed_by_remote(a));
    let events = sim.events(node);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Seen::Closed(c) | Seen::Received(c, _) if *c == conn_a))
    );

    sim.client_send(b, b"last words");
    sim.client_close(b);
    sim.run_until_idle();
    let events = sim.events(node);
    assert_eq!(received(&events), b"last words");
    assert_eq!(
        events.last(),
        Some(&Seen::Closed(sim.client_conn(b).expect("b")))
    );
    assert!(!sim.client_closed_by_remote(b));

    let refused = sim.connect_client(SocketAddr::from(([10, 9, 9, 9], 1)));
    assert!(sim.client_refused(refused));
}

#[test]
fn machines_connect_to_machines_and_test_listeners_and_pipe_splices() {
    let mut sim = Sim::new(3);
    let (_, echo_addr) = listening_probe(&mut sim, true);
    let relay = sim.add_machine(Probe::default());
    let outside = sim.listen(any_addr());
    let outside_addr = sim.listener_addr(outside);
    let to_echo = ConnId(sim.machine_mut(relay).next_id());
    let to_test = ConnId(sim.machine_mut(relay).next_id());
    let nowhere = ConnId(sim.machine_mut(relay).next_id());
    for (conn, addr) in [
        (to_echo, echo_addr),
        (to_test, outside_addr),
        (nowhere, SocketAddr::from(([10, 0, 0, 99], 9))),
    ] {
        sim.command(relay, Do::Act(Action::Connect { conn, addr }));
    }
    sim.run_until_idle();
    let events = sim.events(relay);
    assert!(events.contains(&Seen::Connected(to_echo)));
    assert!(events.contains(&Seen::Connected(to_test)));
    assert!(events.contains(&Seen::ConnectFailed(nowhere)));
    let remote = sim.accept(outside).expect("the relay connected");

    // Splice the test's connection to the echo server: the test talks to the echo.
    sim.command(
        relay,
        Do::Act(Action::Pipe {
            a: to_echo,
            b: to_test,
        }),
    );
    sim.client_send(remote, b"through the pipe");
    sim.run_until_idle();
    assert_eq!(sim.client_received(remote), b"through the pipe");
    assert!(received(&sim.events(relay)).is_empty());
    sim.client_close(remote);
    sim.run_until_idle();
    let events = sim.events(relay);
    assert!(events.contains(&Seen::Closed(to_echo)) && events.contains(&Seen::Closed(to_test)));
}

#[test]
fn udp_datagrams_are_delayed_lost_duplicated_and_reordered_by_the_seed() {
    let run = |seed: u64| {
        let mut sim = Sim::new(seed);
        sim.set_udp_link(UdpLink {
            loss: 0.2,
            duplicate: 0.1,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(40),
        });
        let node = sim.add_machine(Probe::default());
        let socket = SocketId(sim.machine_mut(node).next_id());
        sim.command(
            node,
            Do::Act(Action::BindUdp {
                socket,
                addr: any_addr(),
            }),
        );
        sim.command(node, Do::Echo(true));
        sim.run_until_idle();
        let bound = sim.udp_sockets(node)[0].1;
        let ep = sim.udp_bind(any_addr());
        for i in 0..200u8 {
            sim.udp_send(ep, bound, &[i]);
            sim.advance(Duration::from_millis(1));
        }
        sim.advance(Duration::from_secs(1));
        let back: Vec<u8> = sim.udp_recv(ep).into_iter().map(|(_, d)| d[0]).collect();
        (back, sim.trace_hash())
    };
    let (back, hash) = run(9);
    assert!(
        back.len() > 80 && back.len() < 200,
        "{} came back",
        back.len()
    );
    assert!(back.windows(2).any(|w| w[0] > w[1]), "some reordering");
    assert_eq!(run(9), (back, hash));
}

#[test]
fn the_clock_jumps_to_the_next_deadline_without_sleeping() {
    let wall = Instant::now();
    let mut sim = Sim::new(4);
    let node = sim.add_machine(Probe::default());
    sim.command(node, Do::WakeIn(Duration::from_secs(3600)));
    assert_eq!(sim.next_event_in(), Some(Duration::from_secs(3600)));
    sim.advance(Duration::from_secs(3599));
    assert!(sim.events(node).is_empty());
    sim.advance(Duration::from_secs(1));
    assert_eq!(sim.events(node), vec![Seen::Woken]);
    assert_eq!(sim.elapsed(), Duration::from_secs(3600));
    assert!(wall.elapsed() < Duration::from_secs(1));

    sim.tun_inject(node, vec![0x45, 0, 0, 20]);
    sim.command(node, Do::Echo(true));
    sim.run_until_idle();
    assert_eq!(sim.tun_take(node), vec![vec![0x45, 0, 0, 20]]);
}

#[test]
fn whole_chunking_delivers_each_send_as_one_read() {
    let config = SimConfig {
        chunking: Chunking::Whole,
        ..SimConfig::default()
    };
    let mut sim = Sim::with_config(8, config);
    let (node, addr) = listening_probe(&mut sim, false);
    let client = sim.connect_client(addr);
    sim.run_until_idle();
    sim.client_send(client, b"one read");
    sim.run_until_idle();
    let reads: Vec<_> = sim
        .events(node)
        .into_iter()
        .filter(|e| matches!(e, Seen::Received(..)))
        .collect();
    assert_eq!(reads.len(), 1);
}

#[test]
fn nothing_comes_for_what_a_machine_closed_before_the_answer() {
    let mut sim = Sim::new(10);
    let (_, addr) = listening_probe(&mut sim, false);
    let node = sim.add_machine(Probe::default());
    let up = ConnId(sim.machine_mut(node).next_id());
    let refused = ConnId(sim.machine_mut(node).next_id());
    let listener = ListenerId(sim.machine_mut(node).next_id());
    let socket = SocketId(sim.machine_mut(node).next_id());
    let nowhere = SocketAddr::from(([10, 9, 9, 9], 1));
    for action in [
        Action::Connect { conn: up, addr },
        Action::Connect {
            conn: refused,
            addr: nowhere,
        },
        Action::Listen {
            listener,
            addr: any_addr(),
        },
        Action::BindUdp {
            socket,
            addr: any_addr(),
        },
        Action::Close { conn: up },
        Action::Close { conn: refused },
        Action::CloseListener { listener },
        Action::CloseUdp { socket },
    ] {
        sim.command(node, Do::Act(action));
    }
    sim.run_until_idle();
    assert_eq!(sim.events(node), vec![]);

    // An adopted listener is announced before its first connection.
    let (adopted, local) = sim.adopt_listener(node, any_addr());
    assert!(!adopted.is_core_allocated());
    let client = sim.connect_client(local);
    sim.run_until_idle();
    let conn = sim.client_conn(client).expect("accepted");
    assert_eq!(
        sim.events(node),
        vec![Seen::Listening(local), Seen::Accepted(conn)]
    );
}

#[test]
fn close_writes_what_fits_or_lingers() {
    let run = |linger: Duration, read_after: Duration| {
        let config = SimConfig {
            tcp_window: 1000,
            close_linger: linger,
            ..SimConfig::default()
        };
        let mut sim = Sim::with_config(11, config);
        let (node, addr) = listening_probe(&mut sim, false);
        let client = sim.connect_client(addr);
        sim.client_set_reading(client, false);
        sim.run_until_idle();
        let conn = sim.client_conn(client).expect("accepted");
        let data = vec![1; 5000];
        sim.command(node, Do::Act(Action::Send { conn, data }));
        sim.command(node, Do::Act(Action::Close { conn }));
        sim.advance(read_after);
        sim.client_set_reading(client, true);
        sim.advance(Duration::from_secs(10));
        assert!(sim.client_eof(client));
        sim.client_received(client).len()
    };
    assert_eq!(
        run(Duration::ZERO, Duration::ZERO),
        1000,
        "one attempt: a window"
    );
    let linger = Duration::from_secs(2);
    assert_eq!(
        run(linger, Duration::from_secs(1)),
        5000,
        "read within the linger"
    );
    assert_eq!(
        run(linger, Duration::from_secs(3)),
        1000,
        "read after the linger"
    );
}

#[test]
fn read_ahead_delivers_a_bounded_amount_after_pause_read() {
    let config = SimConfig {
        read_ahead: 1.0,
        max_read_ahead: 100,
        ..SimConfig::default()
    };
    let mut sim = Sim::with_config(12, config);
    let (node, addr) = listening_probe(&mut sim, false);
    let client = sim.connect_client(addr);
    sim.run_until_idle();
    let conn = sim.client_conn(client).expect("accepted");
    sim.command(node, Do::Act(Action::PauseRead { conn }));
    sim.client_send(client, &[5; 1000]);
    sim.run_until_idle();
    let early = received(&sim.events(node)).len();
    assert!((1..=100).contains(&early), "{early} bytes after PauseRead");
    assert_eq!(sim.client_unread(client), 1000 - early);
    sim.command(node, Do::Act(Action::ResumeRead { conn }));
    sim.run_until_idle();
    assert_eq!(received(&sim.events(node)).len(), 1000 - early);
}
