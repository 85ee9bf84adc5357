//! The NAT model's tests: RFC 4787 mapping and filtering for every kind, expiry,
//! private realms, and hole punching between every pair of kinds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ferry_core::io::{Action, SocketId};

use crate::puppet::{Do, Puppet, Seen};

use super::{Nat, NatKind, Sim, UdpEndpoint, UdpLink};

use NatKind::{AddressRestricted, FullCone, PortRestricted, Symmetric};

fn any_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

/// The public address of NAT number `n`: `203.0.113.n`.
fn public_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, n))
}

/// A test socket on a new host behind `nat`.
fn natted_with(sim: &mut Sim, nat: Nat) -> UdpEndpoint {
    let ep = sim.udp_bind(any_addr());
    let host = sim.udp_addr(ep).ip();
    sim.set_nat(host, nat);
    ep
}

/// A test socket on a new host behind a NAT of `kind` at `public_ip(n)`.
fn natted(sim: &mut Sim, kind: NatKind, n: u8) -> UdpEndpoint {
    natted_with(sim, Nat::new(kind, public_ip(n)))
}

/// A test socket on a new host with no NAT.
fn public(sim: &mut Sim) -> UdpEndpoint {
    sim.udp_bind(any_addr())
}

/// Let what is in flight arrive (the default link takes 1 ms).
fn settle(sim: &mut Sim) {
    sim.advance(Duration::from_millis(10));
}

/// The senders of what `ep` received since the last call.
fn senders(sim: &mut Sim, ep: UdpEndpoint) -> Vec<SocketAddr> {
    sim.udp_recv(ep).into_iter().map(|(from, _)| from).collect()
}

/// `ep` sends to `to`; the one source `to`'s socket `at` saw.
fn observed(sim: &mut Sim, ep: UdpEndpoint, at: UdpEndpoint) -> SocketAddr {
    let to = sim.udp_addr(at);
    sim.udp_send(ep, to, b"probe");
    settle(sim);
    let seen = senders(sim, at);
    assert_eq!(seen.len(), 1, "one datagram: {seen:?}\n{}", sim.describe());
    seen[0]
}

#[test]
fn a_public_server_sees_the_mapping_and_eim_preserves_the_port() {
    for kind in NatKind::ALL {
        let mut sim = Sim::new(1);
        let a = natted(&mut sim, kind, 1);
        let server = public(&mut sim);
        let (a_addr, s_addr) = (sim.udp_addr(a), sim.udp_addr(server));
        assert_eq!(sim.nat_mapping(a_addr, s_addr), None);
        let seen = observed(&mut sim, a, server);
        assert_eq!(seen.ip(), public_ip(1), "{kind:?}");
        assert_eq!(sim.nat_mapping(a_addr, s_addr), Some(seen), "{kind:?}");
        if kind.endpoint_independent_mapping() {
            assert_eq!(seen.port(), a_addr.port(), "{kind:?} preserves the port");
        } else {
            assert_ne!(seen.port(), a_addr.port(), "{kind:?} never preserves");
        }
        // The mapping is stable while it is used.
        assert_eq!(observed(&mut sim, a, server), seen, "{kind:?}");
    }
}

#[test]
fn a_second_destination_sees_the_same_port_unless_symmetric() {
    for kind in NatKind::ALL {
        let mut sim = Sim::new(2);
        let a = natted(&mut sim, kind, 1);
        let s1 = public(&mut sim);
        let s2 = public(&mut sim);
        // Another port of the first server's host is another destination too.
        let s1_ip = sim.udp_addr(s1).ip();
        let s3 = sim.udp_bind(SocketAddr::new(s1_ip, 0));
        let p1 = observed(&mut sim, a, s1);
        let p2 = observed(&mut sim, a, s2);
        let p3 = observed(&mut sim, a, s3);
        for p in [p1, p2, p3] {
            assert_eq!(p.ip(), public_ip(1), "{kind:?}");
        }
        if kind.endpoint_independent_mapping() {
            assert!(p1 == p2 && p2 == p3, "{kind:?}: {p1} {p2} {p3}");
        } else {
            assert!(p1 != p2 && p2 != p3 && p1 != p3, "{kind:?}: {p1} {p2} {p3}");
        }
        let a_addr = sim.udp_addr(a);
        assert_eq!(sim.nat_mapping(a_addr, sim.udp_addr(s2)), Some(p2));
        assert_eq!(sim.nat_mapping(a_addr, sim.udp_addr(s3)), Some(p3));
    }
}

/// RFC 4787 filtering: who may send to the mapping `a` made by contacting a
/// server, as (unsolicited third party, the server's IP from another port, the
/// server's ip:port itself).
const FILTERING: [(NatKind, [bool; 3]); 4] = [
    (FullCone, [true, true, true]),
    (AddressRestricted, [false, true, true]),
    (PortRestricted, [false, false, true]),
    (Symmetric, [false, false, true]),
];

#[test]
fn filtering_follows_rfc_4787_and_admitted_replies_reach_the_private_socket() {
    for (kind, expected) in FILTERING {
        let mut sim = Sim::new(3);
        let a = natted(&mut sim, kind, 7);
        let server = public(&mut sim);
        let s_ip = sim.udp_addr(server).ip();
        let other_port = sim.udp_bind(SocketAddr::new(s_ip, 0));
        let third = public(&mut sim);
        let mapped = observed(&mut sim, a, server);

        let senders_in_order = [third, other_port, server];
        for (i, &ep) in senders_in_order.iter().enumerate() {
            sim.udp_send(ep, mapped, &[i as u8]);
            settle(&mut sim);
            let got = sim.udp_recv(a);
            let from = sim.udp_addr(ep);
            if expected[i] {
                // Delivered to the private socket, from the sender's own address.
                assert_eq!(got, vec![(from, vec![i as u8])], "{kind:?} sender {i}");
            } else {
                assert!(got.is_empty(), "{kind:?} sender {i} got through: {got:?}");
                let line = format!("nat {}: {from} -> {mapped} filtered", public_ip(7));
                assert!(
                    sim.describe().contains(&line),
                    "{kind:?}: {line} not in the trace"
                );
            }
        }
        // The server's answer goes through both ways, as many times as needed.
        sim.udp_send(server, mapped, b"again");
        settle(&mut sim);
        assert_eq!(senders(&mut sim, a), vec![sim.udp_addr(server)], "{kind:?}");
    }
}

#[test]
fn a_nated_machine_sends_from_the_public_address_and_hears_replies() {
    for kind in NatKind::ALL {
        let mut sim = Sim::new(4);
        let node = sim.add_machine(Puppet::<Seen>::default());
        let socket = SocketId(sim.machine_mut(node).next_id());
        sim.command(
            node,
            Do::Act(Action::BindUdp {
                socket,
                addr: any_addr(),
            }),
        );
        sim.run_until_idle();
        let local = sim.udp_sockets(node)[0].1;
        sim.set_nat(sim.node_ip(node), Nat::new(kind, public_ip(9)));
        let server = public(&mut sim);
        let s_addr = sim.udp_addr(server);
        sim.command(
            node,
            Do::Act(Action::SendTo {
                socket,
                to: s_addr,
                data: b"hello".to_vec(),
            }),
        );
        settle(&mut sim);
        let got = sim.udp_recv(server);
        assert_eq!(got.len(), 1, "{kind:?}");
        let mapped = got[0].0;
        assert_eq!(mapped.ip(), public_ip(9));
        assert_eq!(sim.nat_mapping(local, s_addr), Some(mapped));
        sim.udp_send(server, mapped, b"back");
        settle(&mut sim);
        let events = sim.events(node);
        assert!(
            events.contains(&Seen::Datagram(socket, s_addr, b"back".to_vec())),
            "{kind:?}: {events:?}"
        );
    }
}

#[test]
fn mappings_expire_without_outbound_traffic_and_come_back_fresh() {
    let timeout = Duration::from_secs(10);
    for kind in NatKind::ALL {
        let mut sim = Sim::new(5);
        let a = natted_with(
            &mut sim,
            Nat::new(kind, public_ip(1)).with_mapping_timeout(timeout),
        );
        let server = public(&mut sim);
        let (a_addr, s_addr) = (sim.udp_addr(a), sim.udp_addr(server));
        let mapped = observed(&mut sim, a, server);

        // Outbound traffic keeps the mapping alive past one timeout.
        sim.advance(Duration::from_secs(8));
        assert_eq!(observed(&mut sim, a, server), mapped, "{kind:?}");
        sim.advance(Duration::from_secs(7));
        sim.udp_send(server, mapped, b"still there");
        settle(&mut sim);
        assert_eq!(senders(&mut sim, a), vec![s_addr], "{kind:?}");

        // Inbound traffic does not: 10 s after the last outbound datagram it is gone.
        sim.advance(Duration::from_secs(3));
        assert_eq!(sim.nat_mapping(a_addr, s_addr), None, "{kind:?}");
        sim.udp_send(server, mapped, b"too late");
        settle(&mut sim);
        assert!(sim.udp_recv(a).is_empty(), "{kind:?}");
        let line = format!("nat {}: {s_addr} -> {mapped} filtered", public_ip(1));
        assert!(sim.describe().contains(&line), "{kind:?}");

        // A new outbound datagram makes a fresh mapping: the same port for the
        // endpoint-independent kinds (it is free again), a new one for Symmetric.
        let again = observed(&mut sim, a, server);
        assert_eq!(sim.nat_mapping(a_addr, s_addr), Some(again));
        if kind.endpoint_independent_mapping() {
            assert_eq!(again, mapped, "{kind:?}");
        } else {
            assert_ne!(again, mapped, "{kind:?}");
            sim.udp_send(server, mapped, b"old port");
            settle(&mut sim);
            assert!(sim.udp_recv(a).is_empty(), "the old symmetric port is dead");
        }
        sim.udp_send(server, again, b"fresh");
        settle(&mut sim);
        assert_eq!(senders(&mut sim, a), vec![s_addr], "{kind:?}");
    }
}

#[test]
fn private_addresses_are_unreachable_from_outside_and_a_host_talks_to_itself() {
    for kind in NatKind::ALL {
        let mut sim = Sim::new(6);
        let a = natted(&mut sim, kind, 1);
        let b = natted(&mut sim, FullCone, 2);
        let server = public(&mut sim);
        let a_addr = sim.udp_addr(a);
        // Even once a mapping exists, the private address itself is not routable.
        observed(&mut sim, a, server);
        sim.udp_send(server, a_addr, b"direct");
        sim.udp_send(b, a_addr, b"direct from another realm");
        settle(&mut sim);
        assert!(sim.udp_recv(a).is_empty(), "{kind:?}");
        let line = format!(
            "nat {}: {} -> {a_addr} unroutable",
            a_addr.ip(),
            sim.udp_addr(server)
        );
        assert!(sim.describe().contains(&line), "{kind:?}: {line}");

        // A second socket on a's own host: no translation either way.
        let a2 = sim.udp_bind(SocketAddr::new(a_addr.ip(), 0));
        let a2_addr = sim.udp_addr(a2);
        assert_eq!(observed(&mut sim, a, a2), a_addr, "{kind:?}");
        assert_eq!(observed(&mut sim, a2, a), a2_addr, "{kind:?}");
        assert_eq!(sim.nat_mapping(a_addr, a2_addr), None, "{kind:?}");
    }
}

#[test]
fn udp_paths_apply_between_the_real_hosts() {
    let mut sim = Sim::new(7);
    let a = natted(&mut sim, PortRestricted, 1);
    let server = public(&mut sim);
    let (a_addr, s_addr) = (sim.udp_addr(a), sim.udp_addr(server));
    let slow = UdpLink {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(50),
        ..UdpLink::PERFECT
    };
    sim.set_udp_path(a_addr.ip(), s_addr.ip(), slow);
    sim.udp_send(a, s_addr, b"out");
    sim.advance(Duration::from_millis(49));
    assert!(sim.udp_recv(server).is_empty());
    sim.advance(Duration::from_millis(1));
    let mapped = senders(&mut sim, server)[0];
    assert_eq!(mapped.ip(), public_ip(1));
    // Back to the public address: the same slow path to the host behind it.
    sim.udp_send(server, mapped, b"in");
    sim.advance(Duration::from_millis(49));
    assert!(sim.udp_recv(a).is_empty());
    sim.advance(Duration::from_millis(1));
    assert_eq!(senders(&mut sim, a), vec![s_addr]);
}

/// Ask the STUN-like `stun` socket (it echoes the source it saw) for `ep`'s
/// public address.
fn learn_public(sim: &mut Sim, ep: UdpEndpoint, stun: UdpEndpoint) -> SocketAddr {
    let stun_addr = sim.udp_addr(stun);
    sim.udp_send(ep, stun_addr, b"binding request");
    settle(sim);
    for (from, _) in sim.udp_recv(stun) {
        sim.udp_send(stun, from, from.to_string().as_bytes());
    }
    settle(sim);
    let got = sim.udp_recv(ep);
    assert_eq!(got.len(), 1, "a binding response\n{}", sim.describe());
    assert_eq!(got[0].0, stun_addr);
    String::from_utf8(got[0].1.clone())
        .expect("utf-8")
        .parse()
        .expect("an address")
}

/// Two sockets behind NATs of `kinds` learn their public addresses from a STUN-like
/// server, swap them (the rendezvous), then punch: each round both send to the
/// address they have for the other at the same instant, and each adopts the
/// source of whatever it hears from the other. True if afterwards one more
/// datagram each way gets through.
fn punch(seed: u64, kinds: (NatKind, NatKind)) -> bool {
    let mut sim = Sim::new(seed);
    let stun = public(&mut sim);
    let a = natted(&mut sim, kinds.0, 1);
    let b = natted(&mut sim, kinds.1, 2);
    let a_public = learn_public(&mut sim, a, stun);
    let b_public = learn_public(&mut sim, b, stun);
    assert_eq!(a_public.ip(), public_ip(1));
    assert_eq!(b_public.ip(), public_ip(2));

    let sockets = [a, b];
    let mut peer = [b_public, a_public];
    for _round in 0..3 {
        for i in 0..2 {
            sim.udp_send(sockets[i], peer[i], b"punch");
        }
        settle(&mut sim);
        for i in 0..2 {
            for from in senders(&mut sim, sockets[i]) {
                assert_eq!(from.ip(), public_ip(2 - i as u8), "only the peer talks");
                peer[i] = from;
            }
        }
    }
    let mut through = [false; 2];
    for i in 0..2 {
        sim.udp_send(sockets[i], peer[i], b"hello");
        settle(&mut sim);
        through[i] = sim.udp_recv(sockets[1 - i]) == vec![(peer[1 - i], b"hello".to_vec())];
    }
    through[0] && through[1]
}

/// Which pairs of NAT kinds simultaneous-send hole punching connects (symmetric in
/// the pair). It fails exactly when one side is Symmetric and the other filters on
/// the port: the symmetric side's STUN-learned port is only for the STUN server,
/// and the port it punches from is one the other side never sent to.
const PUNCHING: [(NatKind, NatKind, bool); 10] = [
    (FullCone, FullCone, true),
    (FullCone, AddressRestricted, true),
    (FullCone, PortRestricted, true),
    (FullCone, Symmetric, true),
    (AddressRestricted, AddressRestricted, true),
    (AddressRestricted, PortRestricted, true),
    (AddressRestricted, Symmetric, true),
    (PortRestricted, PortRestricted, true),
    (PortRestricted, Symmetric, false),
    (Symmetric, Symmetric, false),
];

#[test]
fn hole_punching_works_for_every_pair_but_symmetric_with_port_filtering() {
    for a in NatKind::ALL {
        for b in NatKind::ALL {
            let rows = PUNCHING
                .iter()
                .filter(|(x, y, _)| (*x, *y) == (a, b) || (*x, *y) == (b, a))
                .count();
            assert_eq!(rows, 1, "the table has one row for {a:?} and {b:?}");
        }
    }
    for (a, b, works) in PUNCHING {
        assert_eq!(punch(8, (a, b)), works, "{a:?} -> {b:?}");
        assert_eq!(punch(8, (b, a)), works, "{b:?} -> {a:?}");
    }
}

#[test]
fn same_seed_same_trace_through_nats() {
    let run = |seed: u64| {
        let mut sim = Sim::new(seed);
        sim.set_udp_link(UdpLink {
            loss: 0.2,
            duplicate: 0.2,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(30),
        });
        let a = natted(&mut sim, Symmetric, 1);
        let b = natted(&mut sim, AddressRestricted, 2);
        let servers = [public(&mut sim), public(&mut sim)];
        let mut seen = Vec::new();
        for i in 0..100u8 {
            for (j, &s) in servers.iter().enumerate() {
                let to = sim.udp_addr(s);
                sim.udp_send(
                    if (i as usize + j).is_multiple_of(2) {
                        a
                    } else {
                        b
                    },
                    to,
                    &[i],
                );
            }
            sim.advance(Duration::from_millis(5));
            for &s in &servers {
                for (from, data) in sim.udp_recv(s) {
                    sim.udp_send(s, from, &data);
                    seen.push((from, data));
                }
            }
            if i == 50 {
                sim.advance(Duration::from_secs(61));
            }
        }
        sim.advance(Duration::from_secs(1));
        seen.extend(sim.udp_recv(a));
        seen.extend(sim.udp_recv(b));
        (seen, sim.trace_hash())
    };
    let first = run(11);
    assert!(first.0.len() > 100, "{} datagrams", first.0.len());
    assert_eq!(run(11), first);
    assert_ne!(run(12).1, first.1);
}

#[test]
#[should_panic(expected = "already the NAT of")]
fn set_nat_refuses_a_reused_public_ip() {
    let mut sim = Sim::new(9);
    natted(&mut sim, FullCone, 1);
    natted(&mut sim, Symmetric, 1);
}

#[test]
#[should_panic(expected = "is a host's address")]
fn set_nat_refuses_a_hosts_address_as_public_ip() {
    let mut sim = Sim::new(10);
    let server = public(&mut sim);
    let taken = sim.udp_addr(server).ip();
    natted_with(&mut sim, Nat::new(FullCone, taken));
}
