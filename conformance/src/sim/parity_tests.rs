//! The simulator against what both real runtimes (`ferry-mio`, `ferry-async-std`)
//! do where the contract leaves room: when `Closed` is reported, how far read-ahead
//! reaches, what an impossible `Pipe` does, and where a `Send` after `Pipe` goes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use ferry_core::io::{Action, ConnId, IdAllocator, Input, ListenerId, Machine};

use super::{ClientId, NodeId, Sim, SimConfig};

/// What the probe saw: every connection input, and whether it came while actions
/// of the same drain were still waiting to be polled.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Received(Vec<u8>),
    Closed { conn: ConnId, mid_drain: bool },
    Other,
}

/// A machine that emits the actions it is given, all in one drain.
#[derive(Default)]
struct Probe {
    ids: IdAllocator,
    actions: VecDeque<Action>,
    seen: Vec<Seen>,
}

impl Machine for Probe {
    type Command = Vec<Action>;
    type Event = ();

    fn handle_input(&mut self, input: Input<'_>, _now: Instant) {
        self.seen.push(match input {
            Input::Received { data, .. } => Seen::Received(data.to_vec()),
            Input::Closed { conn } => Seen::Closed {
                conn,
                mid_drain: !self.actions.is_empty(),
            },
            _ => Seen::Other,
        });
    }

    fn handle_command(&mut self, actions: Vec<Action>, _now: Instant) {
        self.actions.extend(actions);
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<()> {
        None
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

fn any_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// A listening probe and `clients` accepted test clients with their conn ids.
fn probe_with_clients(sim: &mut Sim, clients: usize) -> (NodeId<Probe>, Vec<(ClientId, ConnId)>) {
    let node = sim.add_machine(Probe::default());
    let listener = ListenerId(sim.machine_mut(node).ids.next_raw());
    sim.command(
        node,
        vec![Action::Listen {
            listener,
            addr: any_addr(),
        }],
    );
    sim.run_until_idle();
    let addr = sim.listen_addr(node).expect("listening");
    let pairs = (0..clients)
        .map(|_| {
            let client = sim.connect_client(addr);
            sim.run_until_idle();
            (client, sim.client_conn(client).expect("accepted"))
        })
        .collect();
    take_seen(sim, node);
    (node, pairs)
}

fn take_seen(sim: &mut Sim, node: NodeId<Probe>) -> Vec<Seen> {
    std::mem::take(&mut sim.machine_mut(node).seen)
}

fn closed(seen: &[Seen]) -> Vec<(ConnId, bool)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Closed { conn, mid_drain } => Some((*conn, *mid_drain)),
            _ => None,
        })
        .collect()
}

fn received_bytes(seen: &[Seen]) -> usize {
    seen.iter()
        .map(|s| match s {
            Seen::Received(data) => data.len(),
            _ => 0,
        })
        .sum()
}

/// (a) `Close` on one side of a pipe: the other side's `Closed` comes after the
/// drain, like every other input (mio: `pending`; async-std: `closed_later`).
#[test]
fn closing_a_piped_side_reports_the_other_after_the_drain() {
    for seed in 0..8 {
        let mut sim = Sim::new(seed);
        let (node, pairs) = probe_with_clients(&mut sim, 3);
        let [(_, a), (client_b, b), (client_x, x)] = pairs[..] else {
            unreachable!()
        };
        sim.command(node, vec![Action::Pipe { a, b }]);
        sim.run_until_idle();
        sim.command(
            node,
            vec![
                Action::Close { conn: a },
                Action::Send {
                    conn: x,
                    data: b"after".to_vec(),
                },
            ],
        );
        sim.run_until_idle();
        assert_eq!(
            closed(&take_seen(&mut sim, node)),
            vec![(b, false)],
            "seed {seed}: one Closed for the other side, after the drain"
        );
        assert!(sim.client_remote_gone(client_b), "seed {seed}");
        assert_eq!(sim.client_received(client_x), b"after", "seed {seed}");
    }
}

/// (a) A machine that closes both sides in one drain hears of neither.
#[test]
fn closing_both_piped_sides_in_one_drain_reports_nothing() {
    let mut sim = Sim::new(3);
    let (node, pairs) = probe_with_clients(&mut sim, 2);
    let [(client_a, a), (client_b, b)] = pairs[..] else {
        unreachable!()
    };
    sim.command(node, vec![Action::Pipe { a, b }]);
    sim.run_until_idle();
    sim.command(
        node,
        vec![Action::Close { conn: a }, Action::Close { conn: b }],
    );
    sim.run_until_idle();
    assert_eq!(closed(&take_seen(&mut sim, node)), vec![]);
    assert!(sim.client_remote_gone(client_a) && sim.client_remote_gone(client_b));
}

/// (b) `MAX_READ_AHEAD` bounds everything delivered from the first `PauseRead` to
/// the `ResumeRead`: a repeated `PauseRead` grants no new allowance (both
/// runtimes ignore a pause of a paused connection).
#[test]
fn a_repeated_pause_read_grants_no_fresh_read_ahead() {
    const AHEAD: usize = 100;
    let config = SimConfig {
        read_ahead: 1.0,
        max_read_ahead: AHEAD,
        ..SimConfig::default()
    };
    for seed in 0..8 {
        let mut sim = Sim::with_config(seed, config.clone());
        let (node, pairs) = probe_with_clients(&mut sim, 1);
        let (client, conn) = pairs[0];
        sim.command(node, vec![Action::PauseRead { conn }]);
        let mut early = 0;
        for _ in 0..20 {
            sim.client_send(client, &[7; 100]);
            sim.run_until_idle();
            sim.command(node, vec![Action::PauseRead { conn }]);
            sim.run_until_idle();
            early += received_bytes(&take_seen(&mut sim, node));
        }
        assert!(
            (1..=AHEAD).contains(&early),
            "seed {seed}: {early} bytes delivered while paused"
        );
        assert_eq!(sim.client_pause_count(client), 21);
        sim.command(node, vec![Action::ResumeRead { conn }]);
        sim.run_until_idle();
        assert_eq!(received_bytes(&take_seen(&mut sim, node)), 2000 - early);
    }
}

/// (c) A `Pipe` naming an unknown, closed or identical connection closes the
/// sides that exist and reports `Closed` for them, after the drain.
#[test]
fn an_impossible_pipe_closes_the_sides_that_exist() {
    let mut sim = Sim::new(5);
    let (node, pairs) = probe_with_clients(&mut sim, 4);
    let [(client_a, a), (client_b, b), (client_c, c), (client_d, _)] = pairs[..] else {
        unreachable!()
    };
    let unknown = ConnId(999);

    // Unknown partner.
    sim.command(node, vec![Action::Pipe { a, b: unknown }]);
    sim.run_until_idle();
    assert_eq!(closed(&take_seen(&mut sim, node)), vec![(a, false)]);
    assert!(sim.client_remote_gone(client_a) && sim.client_eof(client_a));

    // Closed partner (the machine closed `a` above: it is gone).
    sim.command(node, vec![Action::Pipe { a: b, b: a }]);
    sim.run_until_idle();
    assert_eq!(closed(&take_seen(&mut sim, node)), vec![(b, false)]);
    assert!(sim.client_remote_gone(client_b));

    // Identical sides.
    sim.command(node, vec![Action::Pipe { a: c, b: c }]);
    sim.run_until_idle();
    assert_eq!(closed(&take_seen(&mut sim, node)), vec![(c, false)]);
    assert!(sim.client_remote_gone(client_c));

    // Nothing exists: nothing to report.
    sim.command(
        node,
        vec![Action::Pipe {
            a: unknown,
            b: ConnId(1000),
        }],
    );
    sim.run_until_idle();
    assert_eq!(closed(&take_seen(&mut sim, node)), vec![]);
    assert!(!sim.client_remote_gone(client_d));
}

/// (c) Piping a connection that is already piped ends the old pipe too.
#[test]
fn piping_a_piped_connection_again_ends_both_pipes_sides() {
    let mut sim = Sim::new(6);
    let (node, pairs) = probe_with_clients(&mut sim, 3);
    let [(client_a, a), (client_b, b), (client_c, c)] = pairs[..] else {
        unreachable!()
    };
    sim.command(node, vec![Action::Pipe { a, b }]);
    sim.run_until_idle();
    sim.command(node, vec![Action::Pipe { a, b: c }]);
    sim.run_until_idle();
    let mut reported = closed(&take_seen(&mut sim, node));
    reported.sort();
    assert_eq!(reported, vec![(a, false), (b, false), (c, false)]);
    for client in [client_a, client_b, client_c] {
        assert!(sim.client_remote_gone(client));
    }
}

/// (d) A `Send` to a piped connection goes into the spliced stream, in order:
/// after what was sent before the `Pipe` and what the pipe forwarded so far.
#[test]
fn a_send_after_pipe_is_written_into_the_spliced_stream_in_order() {
    for seed in 0..8 {
        let mut sim = Sim::new(seed);
        let (node, pairs) = probe_with_clients(&mut sim, 2);
        let [(client_a, a), (client_b, b)] = pairs[..] else {
            unreachable!()
        };
        let send = |conn, data: &[u8]| Action::Send {
            conn,
            data: data.to_vec(),
        };
        sim.command(
            node,
            vec![send(a, b"1-"), Action::Pipe { a, b }, send(a, b"2-")],
        );
        sim.client_send(client_b, b"3-");
        sim.run_until_idle();
        sim.command(node, vec![send(a, b"4")]);
        sim.run_until_idle();
        assert_eq!(sim.client_received(client_a), b"1-2-3-4", "seed {seed}");
        assert_eq!(received_bytes(&take_seen(&mut sim, node)), 0);
        assert!(!sim.client_remote_gone(client_a), "seed {seed}");
    }
}
