//! The simulator against what both real runtimes (`ferry-mio`, `ferry-async-std`)
//! do where the contract leaves room: when `Closed` is reported, how far read-ahead
//! reaches, what an impossible `Pipe` does, where a `Send` after `Pipe` goes, and
//! half-close (`ReadClosed`, `Shutdown`, a `Pipe` carrying FINs: the cases of the
//! runtimes' driver suites of the same names).

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

// ---- half-close: the same cases as the runtimes' driver suites ----------------

mod half_close {
    use std::net::SocketAddr;

    use ferry_core::io::{Action, CORE_ID_BIT, ConnId, ListenerId, Machine};

    use crate::puppet::{Do, HalfClosePuppet, Puppet, Seen};
    use crate::sim::{ClientId, NodeId, Sim};

    /// A listening puppet (`HALF_CLOSE` as `M` says) and `clients` accepted clients.
    fn puppet_with_clients<M>(
        sim: &mut Sim,
        machine: M,
        clients: usize,
    ) -> (NodeId<M>, Vec<(ClientId, ConnId)>)
    where
        M: Machine<Command = Do<Seen>, Event = Seen> + 'static,
    {
        let node = sim.add_machine(machine);
        let listener = ListenerId(CORE_ID_BIT | 1);
        sim.command(
            node,
            Do::Act(Action::Listen {
                listener,
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            }),
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
        sim.events(node);
        (node, pairs)
    }

    fn act<M>(sim: &mut Sim, node: NodeId<M>, actions: Vec<Action>)
    where
        M: Machine<Command = Do<Seen>, Event = Seen> + 'static,
    {
        for action in actions {
            sim.command(node, Do::Act(action));
        }
    }

    fn received(events: &[Seen], conn: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            if let Seen::Received(c, d) = e
                && *c == conn
            {
                out.extend_from_slice(d);
            }
        }
        out
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// (a) A half-closing machine gets `Received`, then `ReadClosed`; it may still
    /// write; its `Shutdown` comes after its `Send`s; a `Send` after it is dropped.
    #[test]
    fn half_close_machine_gets_read_closed_and_replies_before_its_shutdown() {
        for seed in 0..8 {
            let mut sim = Sim::new(seed);
            let (node, pairs) =
                puppet_with_clients(&mut sim, HalfClosePuppet::<Seen>::new(false), 1);
            let (client, conn) = pairs[0];
            sim.client_send(client, b"request");
            sim.client_shutdown(client);
            sim.run_until_idle();
            let events = sim.events(node);
            assert_eq!(received(&events, conn), b"request", "seed {seed}");
            assert_eq!(events.last(), Some(&Seen::ReadClosed(conn)), "seed {seed}");

            act(
                &mut sim,
                node,
                vec![
                    Action::Send {
                        conn,
                        data: b"reply".to_vec(),
                    },
                    Action::Shutdown { conn },
                    Action::Send {
                        conn,
                        data: b"dropped".to_vec(),
                    },
                    Action::Shutdown {
                        conn: ConnId(CORE_ID_BIT | 77),
                    },
                ],
            );
            sim.run_until_idle();
            assert_eq!(sim.client_received(client), b"reply", "seed {seed}");
            assert!(sim.client_eof(client), "seed {seed}");
            let events = sim.events(node);
            assert!(
                !events.contains(&Seen::Closed(conn)),
                "seed {seed}: {events:?}"
            );
            let flushed: usize = events
                .iter()
                .map(|s| match s {
                    Seen::Flushed(c, n) if *c == conn => *n,
                    _ => 0,
                })
                .sum();
            assert_eq!(flushed, 5, "seed {seed}: the dropped Send is never Flushed");
            act(&mut sim, node, vec![Action::Close { conn }]);
            sim.run_until_idle();
            assert_eq!(sim.events(node), vec![], "seed {seed}");
        }
    }

    /// (d) A machine without `HALF_CLOSE` gets `Closed` for a FIN; `Shutdown`
    /// works for it too, and reading goes on after it.
    #[test]
    fn shutdown_keeps_reading_for_a_machine_without_half_close() {
        for seed in 0..8 {
            let mut sim = Sim::new(seed);
            let (node, pairs) = puppet_with_clients(&mut sim, Puppet::<Seen>::new(false), 1);
            let (client, conn) = pairs[0];
            act(
                &mut sim,
                node,
                vec![
                    Action::Send {
                        conn,
                        data: b"bye".to_vec(),
                    },
                    Action::Shutdown { conn },
                ],
            );
            sim.run_until_idle();
            assert_eq!(sim.client_received(client), b"bye", "seed {seed}");
            assert!(sim.client_eof(client), "seed {seed}");
            sim.client_send(client, b"still read");
            sim.run_until_idle();
            assert_eq!(received(&sim.events(node), conn), b"still read");
            sim.client_shutdown(client);
            sim.run_until_idle();
            let events = sim.events(node);
            assert_eq!(events, vec![Seen::Closed(conn)], "seed {seed}");
        }
    }

    /// `from` sends `data` and half-closes; the other client reads it, then EOF.
    fn transfer(sim: &mut Sim, from: ClientId, to: ClientId, data: &[u8]) {
        sim.client_send(from, data);
        sim.client_shutdown(from);
        sim.run_until_idle();
        assert!(sim.client_received(to) == data, "{}", sim.describe());
        assert!(sim.client_eof(to), "{}", sim.describe());
        sim.client_take(to);
    }

    fn pipe_half_close<M>(seed: u64, machine: M, len: usize)
    where
        M: Machine<Command = Do<Seen>, Event = Seen> + 'static,
    {
        let mut sim = Sim::new(seed);
        let (node, pairs) = puppet_with_clients(&mut sim, machine, 2);
        let [(x, a), (y, b)] = pairs[..] else {
            unreachable!()
        };
        act(&mut sim, node, vec![Action::Pipe { a, b }]);
        sim.run_until_idle();
        let request = pattern(len);
        let response: Vec<u8> = request.iter().rev().copied().collect();
        transfer(&mut sim, x, y, &request);
        assert_eq!(sim.events(node), vec![], "seed {seed}: one direction ended");
        assert!(!sim.client_remote_gone(y), "seed {seed}");
        transfer(&mut sim, y, x, &response);
        let mut events = sim.events(node);
        events.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(
            events,
            vec![Seen::Closed(a), Seen::Closed(b)],
            "seed {seed}"
        );
        assert!(sim.client_remote_gone(x) && sim.client_remote_gone(y));
    }

    /// (b) A pipe carries each FIN through; it ends when both directions did.
    #[test]
    fn pipe_carries_half_close_both_ways() {
        for seed in 0..8 {
            pipe_half_close(seed, HalfClosePuppet::<Seen>::new(false), 7);
            pipe_half_close(seed, Puppet::<Seen>::new(false), 7);
            pipe_half_close(seed, Puppet::<Seen>::new(false), 100_000);
        }
    }

    /// (c) Nothing is lost at the FIN of a large transfer.
    #[test]
    fn pipe_carries_half_close_after_large_transfers() {
        pipe_half_close(1, HalfClosePuppet::<Seen>::new(false), 8 << 20);
    }

    /// (c) A FIN the half-closing machine heard of before the `Pipe` is carried
    /// through at once, but after the bytes the runtime still holds.
    #[test]
    fn pipe_carries_an_earlier_fin_after_the_bytes_still_queued() {
        const LEN: usize = 8 << 20;
        for seed in 0..4 {
            let mut sim = Sim::new(seed);
            let (node, pairs) =
                puppet_with_clients(&mut sim, HalfClosePuppet::<Seen>::new(false), 2);
            let [(x, a), (y, b)] = pairs[..] else {
                unreachable!()
            };
            sim.client_send(x, b"request");
            sim.client_shutdown(x);
            sim.run_until_idle();
            assert_eq!(sim.events(node).last(), Some(&Seen::ReadClosed(a)));
            let queued = pattern(LEN);
            act(
                &mut sim,
                node,
                vec![
                    Action::Send {
                        conn: b,
                        data: queued.clone(),
                    },
                    Action::Pipe { a, b },
                ],
            );
            assert!(
                sim.client_queued(y) > LEN / 2,
                "seed {seed}: held by the runtime"
            );
            sim.run_until_idle();
            assert!(sim.client_received(y) == &queued[..], "seed {seed}");
            assert!(sim.client_eof(y), "seed {seed}");
            transfer(&mut sim, y, x, b"response");
            let mut events = sim.events(node);
            events.retain(|s| !matches!(s, Seen::Flushed(..)));
            events.sort_by_key(|s| format!("{s:?}"));
            assert_eq!(
                events,
                vec![Seen::Closed(a), Seen::Closed(b)],
                "seed {seed}"
            );
        }
    }

    /// A pipe side whose peer is gone fails the pipe at once: both are `Closed`.
    #[test]
    fn a_pipe_write_to_a_closed_peer_ends_the_pipe() {
        for seed in 0..8 {
            let mut sim = Sim::new(seed);
            let (node, pairs) = puppet_with_clients(&mut sim, Puppet::<Seen>::new(false), 2);
            let [(x, a), (y, b)] = pairs[..] else {
                unreachable!()
            };
            act(&mut sim, node, vec![Action::Pipe { a, b }]);
            sim.client_close(x);
            sim.run_until_idle();
            assert!(sim.client_eof(y), "seed {seed}: the FIN is carried through");
            assert_eq!(sim.events(node), vec![], "seed {seed}");
            sim.client_send(y, b"to nobody");
            sim.run_until_idle();
            let mut events = sim.events(node);
            events.sort_by_key(|s| format!("{s:?}"));
            assert_eq!(
                events,
                vec![Seen::Closed(a), Seen::Closed(b)],
                "seed {seed}"
            );
            assert!(sim.client_remote_gone(y), "seed {seed}");
        }
    }
}
