//! The name relay server (`ferry_core::name_relay::server::Server`) in the
//! deterministic simulator, checked against a reference model
//! (spec/name-relay.md, NR-1..NR-16).
//!
//! Every property draws its cases with quickcheck (a seed and a size) and prints,
//! on failure, the seed and the `FERRY_SIM_SEED=... cargo test ...` line that
//! replays it. Each test's name carries the requirement ids it checks.
//!
//! The model: a map name -> client, per receiver the frames it must get
//! (`{sender}|{len}|{payload}`), the relay's counters, and which connections the
//! relay must close and why. Scenarios settle the simulation after every step, so
//! the model knows the order of everything except frames of one burst from several
//! senders, whose per-sender order is checked (NR-6).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a panic

#[macro_use]
#[path = "sim_name_relay/support.rs"]
mod support;
#[path = "sim_name_relay/model.rs"]
mod model;
#[path = "sim_name_relay/scenario.rs"]
mod scenario;
#[path = "sim_name_relay/slow.rs"]
mod slow;
#[path = "sim_name_relay/steps.rs"]
mod steps;
#[path = "sim_name_relay/timeouts.rs"]
mod timeouts;

use std::time::{Duration, Instant};

use ferry_conformance::sim::{self, Case, Chunking, SimConfig};
use ferry_core::name_relay::client::{Client, ClientCommand, ClientConfig, ClientEvent};
use ferry_core::name_relay::server::{CloseReason, Command, Config};

use scenario::{matches_model, run_mix};
use slow::slow_receiver;
use steps::{FRAMES, LIMIT, MALFORMED, MIXED, Mix, NAMES, SPLIT};
use support::{NS, Relay, closed_just_after, frame, parse_stream, property, register};

/// NR-1, NR-4, NR-6, NR-8, NR-10, NR-15: clients register and send frames to
/// holders, to themselves, to nobody, keep-alives, several in one write, several
/// senders at once; every receiver gets exactly the model's frames.
#[test]
fn nr1_nr4_nr6_nr8_nr10_nr15_frames_match_the_reference_model() {
    sim::check(
        property(
            "nr1_nr4_nr6_nr8_nr10_nr15_frames_match_the_reference_model",
            60,
            60,
        ),
        |case| matches_model(case, FRAMES),
    );
}

/// NR-7, NR-14: a name already held closes the newcomer (what it sent after the
/// name is discarded) and the holder keeps it; a closed client's name is free at once.
#[test]
fn nr7_nr14_duplicate_names_are_rejected_and_freed_on_close() {
    sim::check(
        property(
            "nr7_nr14_duplicate_names_are_rejected_and_freed_on_close",
            60,
            60,
        ),
        |case| matches_model(case, NAMES),
    );
    // Not vacuous: with as many names as clients, newcomers do collide.
    let rejected: usize = (1..=5)
        .map(|seed| {
            let s = run_mix(Case { seed, size: 60 }, NAMES, Chunking::Random).expect("passes");
            s.model.rejected_duplicates
        })
        .sum();
    assert!(rejected > 0, "no duplicate registration in five runs");
}

/// NR-2, NR-5: empty or overlong names, non-numeric, empty, oversized or endless
/// lengths close that client, with that error, and only that one.
#[test]
fn nr2_nr5_malformed_input_closes_only_that_connection() {
    sim::check(
        property(
            "nr2_nr5_malformed_input_closes_only_that_connection",
            60,
            60,
        ),
        |case| matches_model(case, MALFORMED),
    );
}

/// NR-13: beyond `max_connections` a new connection is closed at once, and a
/// closed one makes room.
#[test]
fn nr13_connections_beyond_the_limit_are_closed() {
    sim::check(
        property("nr13_connections_beyond_the_limit_are_closed", 40, 60),
        |case| matches_model(case, LIMIT),
    );
}

/// Everything at once: every kind of step, every requirement above.
#[test]
fn all_steps_mixed_match_the_reference_model() {
    sim::check(
        property("all_steps_mixed_match_the_reference_model", 40, 100),
        |case| {
            let limit = case.seed.is_multiple_of(3);
            matches_model(case, Mix { limit, ..MIXED })
        },
    );
}

/// NR-11: the same steps with streams cut at random and delivered whole give
/// byte-identical results for every client.
#[test]
fn nr11_any_split_is_handled_as_one_read() {
    fn scenario(case: Case) -> Result<(), String> {
        let random = run_mix(case, SPLIT, Chunking::Random)?.outcome();
        let whole = run_mix(case, SPLIT, Chunking::Whole)?.outcome();
        for (c, (a, b)) in random.0.iter().zip(&whole.0).enumerate() {
            ensure!(
                a == b,
                "client {c}: {} bytes when split, {} when whole",
                a.len(),
                b.len()
            );
        }
        ensure!(
            random.1 == whole.1,
            "stats: split {:?}, whole {:?}",
            random.1,
            whole.1
        );
        Ok(())
    }
    sim::check(
        property("nr11_any_split_is_handled_as_one_read", 40, 60),
        scenario,
    );
}

/// Determinism: the same seed gives the same trace (every action, input and byte)
/// and the same bytes at every client; another seed cuts streams differently.
#[test]
fn determinism_same_seed_same_trace_and_bytes() {
    fn scenario(case: Case) -> Result<(), String> {
        let first = run_mix(case, MIXED, Chunking::Random)?.outcome();
        let second = run_mix(case, MIXED, Chunking::Random)?.outcome();
        ensure!(
            first.2 == second.2,
            "trace hashes differ: {:x} vs {:x}",
            first.2,
            second.2
        );
        ensure!(first == second, "same trace hash, different bytes or stats");
        Ok(())
    }
    sim::check(
        property("determinism_same_seed_same_trace_and_bytes", 20, 40),
        scenario,
    );
    // Another seed: another interleaving (a fixed pair, so this cannot flake).
    let a = run_mix(Case { seed: 1, size: 30 }, FRAMES, Chunking::Random).expect("seed 1");
    let b = run_mix(Case { seed: 2, size: 30 }, FRAMES, Chunking::Random).expect("seed 2");
    assert_ne!(a.outcome().2, b.outcome().2);
}

/// NR-12: a receiver that does not read makes the relay pause the sender (its
/// bytes wait in the network), the relay's queue to the receiver stays within the
/// cap plus one frame, a bystander pair is unaffected, and once the receiver reads
/// every frame arrives in order.
#[test]
fn nr12_slow_receiver_pauses_sender_and_loses_nothing() {
    // One sender: another client, or (one case in five) the receiver itself
    // (NR-15), which then may only end by reading.
    sim::check(
        property("nr12_slow_receiver_pauses_sender_and_loses_nothing", 50, 80),
        |case| {
            if case.seed.is_multiple_of(5) {
                slow_receiver(case, 0, true)
            } else {
                slow_receiver(case, 1, false)
            }
        },
    );
}

/// NR-12 with several senders to one slow receiver: the spec bounds the relay's
/// memory per receiver by the cap plus one frame, whatever the number of senders.
#[test]
fn nr12_many_senders_to_one_slow_receiver_stay_within_cap_plus_one_frame() {
    sim::check(
        property(
            "nr12_many_senders_to_one_slow_receiver_stay_within_cap_plus_one_frame",
            50,
            80,
        ),
        |case| {
            let others = 1 + (case.seed % 3) as usize;
            slow_receiver(case, others, others == 1 || case.seed.is_multiple_of(2))
        },
    );
}

/// NR-12, the smallest case of the property above: `a` crosses the cap of a
/// receiver that does not read and is paused; then `b`, not paused, sends one frame
/// to the same receiver: the relay must not queue it on top of the cap and `a`'s
/// frame (it should pause `b` before queueing).
#[test]
fn nr12_two_senders_to_a_full_receiver_stay_within_cap_plus_one_frame() {
    fn scenario(case: Case) -> Result<(), String> {
        let cap = 1000;
        let config = Config {
            max_queued_bytes: cap,
            ..Config::default()
        };
        let mut relay = Relay::start(case.seed, config, SimConfig::default());
        let r = register(&mut relay, b"r");
        relay.sim.client_set_reading(r, false);
        relay.sim.client_set_window(r, 1);
        let a = register(&mut relay, b"a");
        let b = register(&mut relay, b"b");
        let payload = [b'x'; 500];
        let one_frame = frame(b"a", &payload).len(); // 506
        let two = [frame(b"r", &payload), frame(b"r", &payload)].concat();
        relay.sim.client_send(a, &two);
        relay.sim.run_until_idle();
        ensure!(
            relay.sim.client_paused(a),
            "a crossed the cap and is paused"
        );
        relay.sim.client_send(b, &frame(b"r", &payload));
        relay.sim.run_until_idle();
        let peak = relay.sim.client_peak_queued(r);
        ensure!(
            peak <= cap + one_frame,
            "NR-12: {peak} bytes queued to r, above the cap plus one frame ({}); b paused: {}",
            cap + one_frame,
            relay.sim.client_paused(b)
        );
        relay.sim.client_set_reading(r, true);
        relay.sim.run_until_idle();
        let got = parse_stream(relay.sim.client_received(r))?;
        ensure!(
            got.len() == 3,
            "NR-12: nothing lost: {} frames of 3",
            got.len()
        );
        Ok(())
    }
    sim::check_case(
        property(
            "nr12_two_senders_to_a_full_receiver_stay_within_cap_plus_one_frame",
            1,
            1,
        ),
        Case { seed: 12, size: 1 },
        scenario,
    );
}

/// NR-12 with NR-9 and NR-8: a paused sender is not idle however long it waits;
/// when the receiver goes (idle timeout), the sender resumes, its frames for the
/// gone name are dropped and counted, and its idle clock restarts at the resume.
#[test]
fn nr12_nr9_paused_sender_is_not_idle_and_a_gone_receiver_resumes_it() {
    fn scenario(case: Case) -> Result<(), String> {
        let wall = Instant::now();
        let config = Config {
            max_queued_bytes: 4096,
            ..Config::default()
        };
        let sim_config = SimConfig {
            read_ahead: 0.5,
            max_read_ahead: 8 << 10, // less than the sender sends: some must wait
            ..SimConfig::default()
        };
        let mut relay = Relay::start(case.seed, config, sim_config);
        let receiver = register(&mut relay, b"r");
        relay.sim.client_set_reading(receiver, false);
        relay.sim.client_set_window(receiver, 1000);
        let sender = register(&mut relay, b"s");
        let frames = 40;
        for _ in 0..frames {
            relay.sim.client_send(sender, &frame(b"r", &[b'p'; 1000]));
        }
        relay.sim.run_until_idle();
        ensure!(relay.sim.client_paused(sender), "the sender is paused");
        ensure!(
            relay.sim.client_unread(sender) > 0,
            "its bytes wait in the network"
        );

        // 100 s paused; the receiver keeps itself alive, the sender sends nothing.
        for _ in 0..10 {
            relay.sim.advance(Duration::from_secs(10));
            relay.sim.client_send(receiver, &frame(b"r", b""));
            relay.sim.run_until_idle();
        }
        ensure!(
            !relay.sim.client_closed_by_remote(sender),
            "NR-12: a paused sender is not idle"
        );
        ensure!(relay.sim.client_paused(sender), "still paused");

        // The receiver goes quiet: closed when idle *more than* 30 s.
        closed_just_after(
            &mut relay,
            receiver,
            Duration::from_secs(30),
            ("NR-9: not at 30 s", "NR-9: closed after 30 s"),
        )?;
        let closes = relay.closes();
        ensure!(
            closes
                .iter()
                .any(|(c, r)| Some(*c) == relay.sim.client_conn(receiver)
                    && *r == CloseReason::IdleTimeout(Duration::from_secs(30))),
            "the receiver's close: {closes:?}"
        );
        ensure!(
            !relay.sim.client_paused(sender),
            "NR-12: the sender resumes"
        );
        ensure!(relay.sim.client_unread(sender) == 0, "its frames were read");
        let stats = relay.stats();
        ensure!(
            stats.frames_delivered + stats.frames_dropped == frames,
            "NR-8: every frame delivered or dropped: {stats:?}"
        );
        ensure!(
            stats.frames_dropped > 0,
            "NR-8: frames for the gone receiver dropped: {stats:?}"
        );
        ensure!(
            !relay.sim.client_closed_by_remote(sender),
            "the sender stays"
        );

        // The sender's idle clock restarted when it resumed, just now.
        closed_just_after(
            &mut relay,
            sender,
            Duration::from_secs(30),
            (
                "NR-12: idle counts from the resume",
                "NR-9: idle 30 s after the resume",
            ),
        )?;
        ensure!(
            wall.elapsed() < Duration::from_secs(2),
            "{:?} of virtual time took {:?}",
            relay.sim.elapsed(),
            wall.elapsed()
        );
        Ok(())
    }
    sim::check(
        property(
            "nr12_nr9_paused_sender_is_not_idle_and_a_gone_receiver_resumes_it",
            10,
            1,
        ),
        scenario,
    );
}

// ---- timeouts (NR-3, NR-9) ----------------------------------------------------------------

/// NR-3, NR-9: clients that never register, register late or partly, go quiet,
/// keep alive or talk, under random clock jumps: each is closed exactly when the
/// model says, for the model's reason; hours of virtual time take milliseconds.
#[test]
fn nr3_nr9_registration_and_idle_timeouts_by_clock_jumps() {
    sim::check(
        property(
            "nr3_nr9_registration_and_idle_timeouts_by_clock_jumps",
            60,
            80,
        ),
        timeouts::registration_and_idle_timeouts,
    );
}

/// NR-3, NR-9 by hand: closed *more than* 3 s after the accept without a name and
/// more than 30 s after the last byte, to the nanosecond, and no wall time.
#[test]
fn nr3_nr9_deadlines_to_the_nanosecond_without_waiting() {
    fn scenario(case: Case) -> Result<(), String> {
        let wall = Instant::now();
        let mut relay = Relay::start_default(case.seed);
        let silent = relay.connect(b"");
        let quiet = register(&mut relay, b"quiet");
        closed_just_after(
            &mut relay,
            silent,
            Duration::from_secs(3),
            ("NR-3: not at 3 s", "NR-3: closed after 3 s"),
        )?;
        ensure!(relay.sim.client_eof(silent), "the client reads EOF");
        closed_just_after(
            &mut relay,
            quiet,
            Duration::from_secs(27) - NS,
            ("NR-9: not at 30 s", "NR-9: closed after 30 s"),
        )?;
        let took = wall.elapsed();
        ensure!(
            took < Duration::from_millis(500),
            "30 s of virtual time took {took:?}"
        );
        Ok(())
    }
    sim::check_case(
        property("nr3_nr9_deadlines_to_the_nanosecond_without_waiting", 1, 1),
        Case { seed: 3, size: 1 },
        scenario,
    );
}

// ---- the client machine (NR-16) ------------------------------------------------------------

/// NR-16: two client machines connect to the relay machine (machine to machine in
/// the simulator), exchange frames, and their keep-alives hold their connections
/// open for minutes; a client whose keep-alive comes too late is closed (NR-9).
#[test]
fn nr16_client_machines_exchange_frames_and_keep_alive() {
    fn scenario(case: Case) -> Result<(), String> {
        let mut rng = case.rng("scenario");
        let mut relay = Relay::start_default(case.seed);
        let addr = relay.addr;
        let new_client = |name: &[u8], keepalive: Duration| {
            let config = ClientConfig {
                keepalive_interval: keepalive,
                ..ClientConfig::default()
            };
            Client::new(name, addr, config).expect("valid name")
        };
        let sim = &mut relay.sim;
        let alice = sim.add_machine(new_client(b"alice", Duration::from_secs(10)));
        let bob = sim.add_machine(new_client(b"bob", Duration::from_secs(10)));
        let late = sim.add_machine(new_client(b"late", Duration::from_secs(31)));
        sim.run_until_idle();
        for node in [alice, bob, late] {
            let events = sim.events(node);
            ensure!(events == vec![ClientEvent::Registered], "{events:?}");
        }
        let mut to_bob = Vec::new();
        let mut to_alice = Vec::new();
        for _ in 0..case.size {
            let len = rng.range_usize(0..=3000);
            let data = rng.bytes(len);
            let (from, dest, log) = if rng.chance(0.5) {
                (alice, &b"bob"[..], &mut to_bob)
            } else {
                (bob, &b"alice"[..], &mut to_alice)
            };
            sim.command(
                from,
                ClientCommand::Send {
                    dest: dest.to_vec(),
                    data: data.clone(),
                },
            );
            log.push(data);
            if rng.chance(0.3) {
                sim.advance(Duration::from_millis(rng.range(0..=20_000)));
            }
        }
        sim.run_until_idle();
        let messages = |events: Vec<ClientEvent>, from: &[u8]| -> Result<Vec<Vec<u8>>, String> {
            events
                .into_iter()
                .map(|e| match e {
                    ClientEvent::Message { from: f, data } if f == from => Ok(data),
                    other => Err(format!("unexpected {other:?}")),
                })
                .collect()
        };
        ensure!(
            messages(sim.events(bob), b"alice")? == to_bob,
            "bob's messages"
        );
        ensure!(
            messages(sim.events(alice), b"bob")? == to_alice,
            "alice's messages"
        );

        sim.advance(Duration::from_secs(300));
        ensure!(
            sim.machine(alice).is_open() && sim.machine(bob).is_open(),
            "NR-16: keep-alives hold the connections"
        );
        let events = sim.events(late);
        ensure!(
            matches!(events.as_slice(), [ClientEvent::Closed { .. }]),
            "NR-9: a keep-alive after 31 s is too late: {events:?}"
        );
        let stats = relay.stats();
        ensure!(
            stats.keepalives >= 2 * 25,
            "NR-10: keep-alives counted: {stats:?}"
        );
        ensure!(
            relay.server().connection_count() == 2,
            "alice and bob remain"
        );
        Ok(())
    }
    sim::check(
        property(
            "nr16_client_machines_exchange_frames_and_keep_alive",
            20,
            40,
        ),
        scenario,
    );
}

/// `Command::Shutdown`: every connection is closed (its client reads EOF after
/// what was already delivered), the listener is closed, a new client is refused.
#[test]
fn shutdown_closes_every_connection_and_the_listener() {
    fn scenario(case: Case) -> Result<(), String> {
        let mut relay = Relay::start_default(case.seed);
        let a = register(&mut relay, b"a");
        let b = register(&mut relay, b"b");
        let silent = relay.connect(b"");
        relay.sim.client_send(a, &frame(b"b", b"before"));
        relay.sim.run_until_idle();
        relay.sim.command(relay.node, Command::Shutdown);
        relay.sim.run_until_idle();
        for (c, name) in [(a, "a"), (b, "b"), (silent, "silent")] {
            ensure!(relay.sim.client_eof(c), "{name} reads EOF");
        }
        ensure!(
            parse_stream(relay.sim.client_received(b))?
                == vec![(b"a".to_vec(), b"before".to_vec())],
            "b got what was sent before the shutdown"
        );
        ensure!(relay.server().connection_count() == 0, "no connection left");
        ensure!(
            relay.sim.listen_addr(relay.node).is_none(),
            "the listener is closed"
        );
        let late = relay.sim.connect_client(relay.addr);
        ensure!(relay.sim.client_refused(late), "a new client is refused");
        Ok(())
    }
    sim::check(
        property("shutdown_closes_every_connection_and_the_listener", 20, 1),
        scenario,
    );
}
