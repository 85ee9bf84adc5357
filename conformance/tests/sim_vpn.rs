//! The p2p VPN in the deterministic simulator, with real TCP/IP on top.
//!
//! One VPN server and one STUN responder on public hosts; each VPN node on a
//! host of its own, optionally behind a [`Nat`] (public address
//! `198.51.100.n`). Each node's TUN is an [`IpHost`] (smoltcp) with the
//! node's virtual address: the node's `WriteTun` packets are delivered to the
//! host, the host's packets go back in as `TunPacket`. A smoltcp TCP
//! connection then carries a checked pseudo-random stream across the overlay
//! (spec/vpn.md VPN-S…, VPN-R…, and the issue's "every byte of the TCP stream
//! arrives, and every peer pair that can connect directly ends CONNECTED").

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ferry_conformance::ip_host::{IpHost, Transfer, TransferReport};
use ferry_conformance::sim::{
    Case, Nat, NatKind, NodeId, Property, Sim, SimRng, UdpLink, check, check_case,
};
use ferry_core::stun::responder::{self, Responder};
use ferry_core::vpn::WallClock;
use ferry_core::vpn::node::{self, Node};
use ferry_core::vpn::peer::PeerState;
use ferry_core::vpn::server::{self, Server};

use NatKind::{AddressRestricted, FullCone, PortRestricted, Symmetric};

const PASSWORD: &[u8] = b"sim password";
const NETWORK: &str = "10.77.0.0/24";
/// TUN MTU of the virtual hosts (the VPN adds 34 bytes in UDP).
const MTU: usize = 1400;
/// One step of the driving loop.
const STEP: Duration = Duration::from_millis(2);

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, 10 + i as u8)
}

fn public_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10 + i as u8))
}

/// Whether nodes behind `a` and `b` (`None`: no NAT) can punch through to
/// each other: a symmetric NAT gives the path to the peer a port nobody was
/// told, which only a NAT filtering by address at most lets in.
fn can_punch(a: Option<NatKind>, b: Option<NatKind>) -> bool {
    !matches!(
        (a, b),
        (Some(PortRestricted), Some(Symmetric))
            | (Some(Symmetric), Some(PortRestricted))
            | (Some(Symmetric), Some(Symmetric))
    )
}

struct Side {
    node: NodeId<Node>,
    host: IpHost,
}

struct World {
    sim: Sim,
    server: NodeId<Server>,
    server_addr: SocketAddr,
    stun_addr: SocketAddr,
    wall: WallClock,
    sides: Vec<Side>,
}

impl World {
    fn new(seed: u64, link: UdpLink) -> World {
        let mut sim = Sim::new(seed);
        sim.set_udp_link(link);
        let wall = WallClock::new(sim.now(), 1_800_000_000_000);
        let config = server::Config::new(
            "0.0.0.0:8080".parse().expect("a valid literal"),
            PASSWORD,
            NETWORK.parse().expect("a valid literal"),
            wall,
        );
        let server = sim.add_machine(Server::new(config).expect("a valid config"));
        let stun = sim.add_machine(Responder::new());
        sim.command(
            stun,
            responder::Command::Listen("0.0.0.0:3478".parse().expect("a valid literal")),
        );
        sim.run_until_idle();
        let server_addr = sim.listen_addr(server).expect("the server listens");
        let stun_addr = sim.udp_sockets(stun).first().expect("STUN is bound").1;
        World {
            sim,
            server,
            server_addr,
            stun_addr,
            wall,
            sides: Vec::new(),
        }
    }

    fn node_config(&self, i: usize, p2p: bool) -> node::Config {
        let mut config = node::Config::new(self.server_addr, PASSWORD, self.wall);
        config.address = Some((vip(i), 24));
        config.stun = Some(self.stun_addr);
        config.p2p = p2p;
        config.kdf_iterations = 1_000;
        config.vmac = [i as u8 + 1; 16];
        config
    }

    fn node_seed(&self, i: usize, generation: u64) -> [u8; 32] {
        let mut seed = [0; 32];
        seed.copy_from_slice(
            &SimRng::stream(self.sim.seed() ^ generation, &format!("node {i}")).bytes(32),
        );
        seed
    }

    /// Node `i` (the i-th added), behind `nat` if any.
    fn add_node(&mut self, nat: Option<NatKind>, p2p: bool) -> usize {
        let i = self.sides.len();
        let config = self.node_config(i, p2p);
        let node = self
            .sim
            .add_machine(Node::new(config, self.node_seed(i, 0), self.sim.now()));
        if let Some(kind) = nat {
            let host = self.sim.node_ip(node);
            self.sim.set_nat(host, Nat::new(kind, public_ip(i)));
        }
        let host = IpHost::with_epoch(vip(i), 24, MTU, self.sim.seed() ^ i as u64, self.sim.now());
        self.sides.push(Side { node, host });
        i
    }

    /// Replace node `i` by a fresh process on a new host (same address, new
    /// session): the old one shuts down first.
    fn restart(&mut self, i: usize, generation: u64) {
        let old = self.sides[i].node;
        self.sim.command(old, node::Command::Shutdown);
        let config = self.node_config(i, true);
        let node = self.sim.add_machine(Node::new(
            config,
            self.node_seed(i, generation),
            self.sim.now(),
        ));
        self.sides[i].node = node;
    }

    fn state(&self, i: usize, of: usize) -> Option<PeerState> {
        self.sim.machine(self.sides[i].node).peer_state(vip(of))
    }

    fn logged_in(&self) -> bool {
        let now = self.sim.now();
        self.sides
            .iter()
            .all(|s| self.sim.machine(s.node).status(now).logged_in)
    }

    /// Move TUN packets both ways, let the hosts run, then `STEP` of time.
    fn step(&mut self) {
        let now = self.sim.now();
        for side in &mut self.sides {
            for packet in self.sim.tun_take(side.node) {
                side.host.deliver(&packet);
            }
            side.host.poll(now);
            for packet in side.host.take_outgoing() {
                self.sim.tun_inject(side.node, packet);
            }
        }
        self.sim.advance(STEP);
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut World) -> bool) -> bool {
        let end = self.sim.elapsed() + limit;
        while self.sim.elapsed() < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// `len` bytes over TCP from node `a`'s host to node `b`'s, port `port`.
    fn transfer(
        &mut self,
        a: usize,
        b: usize,
        port: u16,
        len: usize,
        limit: Duration,
    ) -> TransferReport {
        let receiver = self.sides[b].host.listen(port);
        let sender = self.sides[a].host.connect(vip(b), port);
        let mut transfer = Transfer::new(len, self.sim.seed() ^ u64::from(port), sender, receiver);
        self.run_until(limit, |w| {
            let (x, y) = pair(&mut w.sides, a, b);
            transfer.pump(&mut x.host, &mut y.host);
            transfer.is_complete()
        });
        transfer.report()
    }

    /// Small transfers from `a` to `b` every 5 s (so peers that fell back to
    /// INIT are woken by the server's FORWARDs) until both see each other
    /// CONNECTED, or `limit`.
    fn trickle_until_connected(
        &mut self,
        a: usize,
        b: usize,
        first_port: u16,
        limit: Duration,
    ) -> bool {
        let end = self.sim.elapsed() + limit;
        let mut port = first_port;
        while self.sim.elapsed() < end {
            if self.state(a, b) == Some(PeerState::Connected)
                && self.state(b, a) == Some(PeerState::Connected)
            {
                return true;
            }
            let report = self.transfer(a, b, port, 2 << 10, Duration::from_secs(30));
            assert!(report.is_complete(), "{report:?}");
            port += 1;
            self.run_until(Duration::from_secs(5), |_| false);
        }
        false
    }

    fn stats(&self, i: usize) -> node::Stats {
        self.sim.machine(self.sides[i].node).stats()
    }
}

fn pair(sides: &mut [Side], a: usize, b: usize) -> (&mut Side, &mut Side) {
    assert_ne!(a, b);
    if a < b {
        let (left, right) = sides.split_at_mut(b);
        (&mut left[a], &mut right[0])
    } else {
        let (left, right) = sides.split_at_mut(a);
        (&mut right[0], &mut left[b])
    }
}

fn link(loss: f64) -> UdpLink {
    UdpLink {
        loss,
        duplicate: 0.0,
        min_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(6),
    }
}

#[test]
fn vpn_sim_tcp_crosses_the_overlay_and_the_pair_goes_direct() {
    let mut w = World::new(1, link(0.0));
    w.add_node(Some(FullCone), true);
    w.add_node(Some(PortRestricted), true);
    assert!(
        w.run_until(Duration::from_secs(5), |w| w.logged_in()),
        "both log in"
    );
    let report = w.transfer(0, 1, 5001, 256 << 10, Duration::from_secs(120));
    assert!(report.is_complete(), "{report:?}");
    assert!(
        w.run_until(Duration::from_secs(30), |w| {
            w.state(0, 1) == Some(PeerState::Connected)
                && w.state(1, 0) == Some(PeerState::Connected)
        }),
        "states {:?} {:?}",
        w.state(0, 1),
        w.state(1, 0)
    );
    // Once direct, a second stream goes over UDP, not the server.
    let before = w.stats(0);
    let report = w.transfer(0, 1, 5002, 128 << 10, Duration::from_secs(60));
    assert!(report.is_complete(), "{report:?}");
    let after = w.stats(0);
    assert!(
        after.direct_out - before.direct_out > 50,
        "{before:?} {after:?}"
    );
    assert!(
        after.server_out - before.server_out < 5,
        "{before:?} {after:?}"
    );
    assert_eq!(after.crypto.auth_failed, 0);
}

#[test]
fn vpn_sim_without_p2p_everything_goes_through_the_server() {
    let mut w = World::new(2, link(0.0));
    w.add_node(None, false);
    w.add_node(None, false);
    assert!(w.run_until(Duration::from_secs(5), |w| w.logged_in()));
    let report = w.transfer(0, 1, 5001, 128 << 10, Duration::from_secs(120));
    assert!(report.is_complete(), "{report:?}");
    w.run_until(Duration::from_secs(15), |_| false);
    assert_eq!(w.state(0, 1), Some(PeerState::Failed));
    assert_eq!(w.state(1, 0), Some(PeerState::Failed));
    assert_eq!(w.stats(0).direct_out, 0);
    assert!(w.sim.machine(w.server).stats().forwarded_packets > 50);
}

#[test]
fn vpn_sim_symmetric_nats_fall_back_to_the_server_and_back_off() {
    let mut w = World::new(3, link(0.0));
    w.add_node(Some(Symmetric), true);
    w.add_node(Some(Symmetric), true);
    assert!(w.run_until(Duration::from_secs(5), |w| w.logged_in()));
    let report = w.transfer(0, 1, 5001, 128 << 10, Duration::from_secs(120));
    assert!(report.is_complete(), "{report:?}");
    // Keep traffic flowing so the peers keep trying, and watch them never connect.
    let mut seen = Vec::new();
    w.run_until(Duration::from_secs(40), |w| {
        let s = w.state(0, 1);
        if seen.last() != Some(&s) {
            seen.push(s);
        }
        false
    });
    assert!(!seen.contains(&Some(PeerState::Connected)), "{seen:?}");
    assert!(
        seen.contains(&Some(PeerState::Waiting)) || seen.contains(&Some(PeerState::Failed)),
        "{seen:?}"
    );
}

#[test]
fn vpn_sim_a_third_node_relays_for_a_pair_that_cannot_punch() {
    let mut w = World::new(4, link(0.0));
    w.add_node(Some(Symmetric), true); // 0
    w.add_node(Some(Symmetric), true); // 1
    w.add_node(None, true); // 2: public, everyone reaches it
    assert!(w.run_until(Duration::from_secs(5), |w| w.logged_in()));
    // Traffic from 2 to both makes both pairs connect directly.
    for (to, port) in [(0, 6000), (1, 6001)] {
        let report = w.transfer(2, to, port, 32 << 10, Duration::from_secs(60));
        assert!(report.is_complete(), "{report:?}");
    }
    assert!(
        w.run_until(Duration::from_secs(30), |w| {
            [(0, 2), (2, 0), (1, 2), (2, 1)]
                .iter()
                .all(|&(a, b)| w.state(a, b) == Some(PeerState::Connected))
        }),
        "0-2 {:?} 1-2 {:?}",
        w.state(0, 2),
        w.state(1, 2)
    );
    // Let the latency probes and route announcements go round.
    w.run_until(Duration::from_secs(3), |_| false);
    let report = w.transfer(0, 1, 5001, 128 << 10, Duration::from_secs(120));
    assert!(report.is_complete(), "{report:?}");
    assert!(w.stats(2).relayed > 50, "node 2 relays: {:?}", w.stats(2));
    assert_ne!(w.state(0, 1), Some(PeerState::Connected));
}

#[test]
fn vpn_sim_a_partition_falls_back_to_the_server_and_heals() {
    let mut w = World::new(5, link(0.0));
    w.add_node(None, true);
    w.add_node(None, true);
    assert!(w.run_until(Duration::from_secs(5), |w| w.logged_in()));
    let report = w.transfer(0, 1, 5001, 64 << 10, Duration::from_secs(60));
    assert!(report.is_complete(), "{report:?}");
    assert!(w.run_until(Duration::from_secs(30), |w| w.state(0, 1)
        == Some(PeerState::Connected)));
    let (a, b) = (
        w.sim.node_ip(w.sides[0].node),
        w.sim.node_ip(w.sides[1].node),
    );
    w.sim.set_udp_path(
        a,
        b,
        UdpLink {
            loss: 1.0,
            ..link(0.0)
        },
    );
    // The stream goes on through the server while the direct path is cut.
    let report = w.transfer(0, 1, 5002, 128 << 10, Duration::from_secs(120));
    assert!(report.is_complete(), "{report:?}");
    assert_ne!(w.state(0, 1), Some(PeerState::Connected));
    w.sim.set_udp_path(a, b, link(0.0));
    // Healed: the peers find each other again (WAITING backs off 30 s first).
    assert!(
        w.trickle_until_connected(0, 1, 5003, Duration::from_secs(120)),
        "{:?} {:?}",
        w.state(0, 1),
        w.state(1, 0)
    );
}

#[test]
fn vpn_sim_a_peer_restart_keeps_the_stream_and_reconnects() {
    let mut w = World::new(6, link(0.0));
    w.add_node(Some(FullCone), true);
    w.add_node(Some(AddressRestricted), true);
    assert!(w.run_until(Duration::from_secs(5), |w| w.logged_in()));
    let report = w.transfer(0, 1, 5001, 64 << 10, Duration::from_secs(60));
    assert!(report.is_complete(), "{report:?}");
    assert!(w.run_until(Duration::from_secs(30), |w| w.state(0, 1)
        == Some(PeerState::Connected)));
    w.restart(1, 1);
    let report = w.transfer(0, 1, 5002, 128 << 10, Duration::from_secs(180));
    assert!(report.is_complete(), "{report:?}");
    assert!(
        w.trickle_until_connected(0, 1, 5003, Duration::from_secs(120)),
        "{:?} {:?}",
        w.state(0, 1),
        w.state(1, 0)
    );
    assert_eq!(w.stats(0).crypto.auth_failed, 0);
}

/// Random NATs, loss, a partition or a restart, and seeds: every stream
/// arrives whole, and a pair that can punch ends CONNECTED.
fn random_world(case: Case) -> Result<(), String> {
    let mut rng = case.rng("world");
    let kinds = [
        None,
        Some(FullCone),
        Some(AddressRestricted),
        Some(PortRestricted),
        Some(Symmetric),
    ];
    let a = kinds[rng.below(kinds.len() as u64) as usize];
    let b = kinds[rng.below(kinds.len() as u64) as usize];
    let loss = rng.below(4) as f64 / 100.0;
    let mut w = World::new(case.seed, link(loss));
    w.add_node(a, true);
    w.add_node(b, true);
    if !w.run_until(Duration::from_secs(20), |w| w.logged_in()) {
        return Err("the nodes did not log in".into());
    }
    let len = (16 << 10) + case.size * 1_000;
    let report = w.transfer(0, 1, 5001, len, Duration::from_secs(300));
    if !report.is_complete() {
        return Err(format!("{a:?}/{b:?} loss {loss}: {report:?}"));
    }
    // Then a partition of the direct path, a restart of node 1, or nothing,
    // and a second stream across it.
    let event = rng.below(3);
    let (ip0, ip1) = (
        w.sim.node_ip(w.sides[0].node),
        w.sim.node_ip(w.sides[1].node),
    );
    match event {
        1 => w.sim.set_udp_path(
            ip0,
            ip1,
            UdpLink {
                loss: 1.0,
                ..link(0.0)
            },
        ),
        2 => w.restart(1, 1),
        _ => {}
    }
    let report = w.transfer(0, 1, 4001, 32 << 10, Duration::from_secs(300));
    if !report.is_complete() {
        return Err(format!("{a:?}/{b:?} loss {loss} event {event}: {report:?}"));
    }
    if event == 1 {
        w.run_until(Duration::from_secs(rng.below(20) + 1), |_| false);
        w.sim.set_udp_path(ip0, ip1, link(loss));
    }
    if can_punch(a, b) {
        // Keep a trickle of traffic so INIT peers are woken again.
        if !w.trickle_until_connected(0, 1, 5002, Duration::from_secs(240)) {
            return Err(format!(
                "{a:?}/{b:?} loss {loss} event {event}: never both CONNECTED: {:?} {:?}",
                w.state(0, 1),
                w.state(1, 0)
            ));
        }
    }
    Ok(())
}

const RANDOM: Property = Property {
    test: env!("CARGO_CRATE_NAME"),
    name: "vpn_sim_random_nats_and_loss",
    cases: 24,
    max_size: 16,
};

#[test]
fn vpn_sim_random_nats_and_loss() {
    check(RANDOM, random_world);
}

#[test]
fn vpn_sim_same_seed_same_trace() {
    let run = |seed| {
        let mut w = World::new(seed, link(0.01));
        w.add_node(Some(FullCone), true);
        w.add_node(Some(PortRestricted), true);
        w.run_until(Duration::from_secs(5), |w| w.logged_in());
        let report = w.transfer(0, 1, 5001, 32 << 10, Duration::from_secs(60));
        (report.is_complete(), w.sim.trace_hash(), w.sim.trace_len())
    };
    let first = run(7);
    assert!(first.0);
    assert_eq!(first, run(7));
    let _ = check_case;
}
