//! The mount relay in the deterministic simulator: a tracker, two STUN servers,
//! relay points and listener points, each point behind a NAT of its own
//! (MR-11 punching and hello, MR-12 handshake, MR-13 keep-alive and loss,
//! MR-15 the stream, MR-16 what a listener accepts).
//!
//! The tracker and the STUN responders run on public hosts (no NAT); every
//! point runs on its own host behind a [`Nat`] whose public address is
//! `198.51.100.n`. Two STUN servers let a point tell a symmetric NAT from an
//! endpoint-independent one. The test plays each relay's source: on
//! `NeedData` it feeds the next 16 KiB of a deterministic pseudo-random stream,
//! then `EndOfSource`. What a listener delivers (`Event::Data`) is compared
//! with the source piece by piece (504-byte pieces, MR-1).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ferry_conformance::sim::{
    Case, Nat, NatKind, NodeId, Property, Sim, SimRng, UdpLink, check, check_case,
};
use ferry_core::mount_relay::point::{self, Point, Role};
use ferry_core::mount_relay::tracker::{self, Tracker};
use ferry_core::mount_relay::wire;
use ferry_core::stun::responder::{self, Responder};

use NatKind::{AddressRestricted, FullCone, PortRestricted, Symmetric};

const MOUNT: &str = "sim-radio";

/// How much source the test feeds per `NeedData`.
const FEED: usize = 16 << 10;

/// The shortest clock jump of the driving loop (events closer together than
/// this are handled together; the relay's partial-piece flush waits 5 ms).
const MIN_STEP: Duration = Duration::from_millis(1);

fn parse(text: &str) -> SocketAddr {
    text.parse().expect("an address")
}

/// The public address of the NAT of point `n`.
fn public_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, n))
}

/// A deterministic pseudo-random source of `len` bytes.
fn source(seed: u64, len: usize) -> Vec<u8> {
    SimRng::stream(seed, "source").bytes(len)
}

/// Whether a relay behind `relay` and a listener behind `listener` can punch a
/// hole: a symmetric NAT gives the path to the peer a port the tracker never
/// listed, which only a peer whose NAT filters by IP at most lets in (and
/// then adopts it as the candidate, MR-11).
fn can_punch(relay: NatKind, listener: NatKind) -> bool {
    !matches!(
        (relay, listener),
        (PortRestricted, Symmetric) | (Symmetric, PortRestricted) | (Symmetric, Symmetric)
    )
}

/// One point and everything it reported.
struct Side {
    node: NodeId<Point>,
    name: String,
    /// Relay: the whole source, fed in `FEED` chunks on `NeedData`.
    source: Vec<u8>,
    fed: usize,
    ended: bool,
    stopped: bool,
    connected: Vec<(Duration, SocketAddr)>,
    lost: Vec<(Duration, SocketAddr, String)>,
    gave_up: Vec<(Duration, u32, String)>,
    nat_mapping: Option<bool>,
    source_done: Option<u64>,
    data: Vec<Vec<u8>>,
    received: usize,
}

impl Side {
    fn stream(&self) -> Vec<u8> {
        self.data.concat()
    }

    fn summary(&self) -> String {
        format!(
            "{}: connected {:?}, lost {:?}, gave up {:?}, NAT independent {:?}, source done {:?}, \
             {} data events ({} bytes)",
            self.name,
            self.connected,
            self.lost,
            self.gave_up,
            self.nat_mapping,
            self.source_done,
            self.data.len(),
            self.received
        )
    }
}

struct World {
    sim: Sim,
    tracker: NodeId<Tracker>,
    tracker_addr: SocketAddr,
    stun: Vec<SocketAddr>,
    sides: Vec<Side>,
    /// The tracker's `Paired` events: (own, peer) as reported.
    paired: Vec<(SocketAddr, SocketAddr)>,
}

impl World {
    /// A tracker and two STUN servers on public hosts, every UDP path `link`.
    fn new(seed: u64, link: UdpLink) -> World {
        let mut sim = Sim::new(seed);
        sim.set_udp_link(link);
        let tracker = sim.add_machine(Tracker::new(tracker::Config::default()));
        sim.command(tracker, tracker::Command::Listen(parse("0.0.0.0:8000")));
        let mut servers = Vec::new();
        for _ in 0..2 {
            let server = sim.add_machine(Responder::new());
            sim.command(server, responder::Command::Listen(parse("0.0.0.0:3478")));
            servers.push(server);
        }
        sim.run_until_idle();
        let tracker_addr = sim.listen_addr(tracker).expect("the tracker listens");
        let stun = servers
            .iter()
            .map(|&s| sim.udp_sockets(s).first().expect("STUN is bound").1)
            .collect();
        World {
            sim,
            tracker,
            tracker_addr,
            stun,
            sides: Vec::new(),
            paired: Vec::new(),
        }
    }

    /// A point of `role` on a new host behind a NAT of `kind` at
    /// `public_ip(public)`, started. Returns its index in `sides`.
    fn add_point(
        &mut self,
        role: Role,
        kind: NatKind,
        public: u8,
        source: Vec<u8>,
        configure: impl FnOnce(&mut point::Config),
    ) -> usize {
        let mut config = point::Config::new(role, MOUNT, self.tracker_addr, self.stun.clone());
        configure(&mut config);
        let index = self.sides.len();
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.sim.seed().to_le_bytes());
        seed[8] = index as u8;
        let node = self.sim.add_machine(Point::new(config, seed));
        let host = self.sim.node_ip(node);
        self.sim.set_nat(host, Nat::new(kind, public_ip(public)));
        self.sim.command(node, point::Command::Start);
        self.sides.push(Side {
            node,
            name: format!("{role} #{index} behind {kind:?} {}", public_ip(public)),
            source,
            fed: 0,
            ended: false,
            stopped: false,
            connected: Vec::new(),
            lost: Vec::new(),
            gave_up: Vec::new(),
            nat_mapping: None,
            source_done: None,
            data: Vec::new(),
            received: 0,
        });
        index
    }

    fn stop(&mut self, side: usize) {
        self.sides[side].stopped = true;
        self.sim
            .command(self.sides[side].node, point::Command::Stop);
    }

    fn point(&self, side: usize) -> &Point {
        self.sim.machine(self.sides[side].node)
    }

    /// Take every machine's events; answer `NeedData` at once (at the same
    /// virtual instant), until nothing new is reported.
    fn handle_events(&mut self) {
        loop {
            let mut any = false;
            for event in self.sim.events(self.tracker) {
                if let tracker::Event::Paired { a, b } = event {
                    self.paired.push((a, b));
                }
            }
            for i in 0..self.sides.len() {
                let events = self.sim.events(self.sides[i].node);
                let now = self.sim.elapsed();
                let mut need = false;
                let side = &mut self.sides[i];
                for event in events {
                    any = true;
                    match event {
                        point::Event::Connected(peer) => side.connected.push((now, peer)),
                        point::Event::PeerLost { peer, reason } => {
                            side.lost.push((now, peer, reason));
                        }
                        point::Event::SearchGaveUp { attempts, reason } => {
                            side.gave_up.push((now, attempts, reason));
                        }
                        point::Event::NatMapping {
                            endpoint_independent,
                            ..
                        } => side.nat_mapping = Some(endpoint_independent),
                        point::Event::SourceDone { bytes } => side.source_done = Some(bytes),
                        point::Event::Data(bytes) => {
                            side.received += bytes.len();
                            side.data.push(bytes);
                        }
                        point::Event::NeedData => need = true,
                        _ => {}
                    }
                }
                if need && !side.stopped && !side.ended {
                    let node = side.node;
                    if side.fed < side.source.len() {
                        let end = (side.fed + FEED).min(side.source.len());
                        let chunk = side.source[side.fed..end].to_vec();
                        side.fed = end;
                        self.sim.command(node, point::Command::Feed(chunk));
                    } else {
                        side.ended = true;
                        self.sim.command(node, point::Command::EndOfSource);
                    }
                }
            }
            if !any {
                break;
            }
        }
    }

    /// Run, handling events as they come, until `done` holds or `limit` of
    /// virtual time has passed; true if `done` held.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&World) -> bool) -> bool {
        let end = self.sim.elapsed() + limit;
        loop {
            self.sim.run_until_idle();
            self.handle_events();
            if done(self) {
                return true;
            }
            let now = self.sim.elapsed();
            if now >= end {
                return false;
            }
            let left = end - now;
            let step = self
                .sim
                .next_event_in()
                .map_or(left, |d| d.max(MIN_STEP).min(left));
            self.sim.advance(step);
        }
    }

    fn run_for(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    /// Every side's summary and the end of the trace, for failure messages.
    fn describe(&self) -> String {
        let mut out = String::new();
        for side in &self.sides {
            out.push_str(&side.summary());
            out.push('\n');
        }
        out.push_str(&format!("tracker paired {:?}\n", self.paired));
        out.push_str(&self.sim.describe());
        out
    }
}

/// The source's 504-byte pieces (MR-1), each with its position.
fn pieces(source: &[u8]) -> BTreeMap<Vec<u8>, usize> {
    wire::chunks(source)
        .enumerate()
        .map(|(i, piece)| (piece.to_vec(), i))
        .collect()
}

/// Which piece of `source` each data event is, or why one is not.
fn piece_indices(source: &[u8], data: &[Vec<u8>]) -> Result<Vec<usize>, String> {
    let known = pieces(source);
    data.iter()
        .enumerate()
        .map(|(n, chunk)| {
            known.get(chunk).copied().ok_or_else(|| {
                format!(
                    "data event {n} ({} bytes) is no piece the relay sent",
                    chunk.len()
                )
            })
        })
        .collect()
}

// ---- 1. every NAT pair -------------------------------------------------------

/// A ✓ pair: both sides connect, the listener gets the source byte for byte,
/// and the tracker took the listener off its lists.
fn punching_pair(
    w: &mut World,
    relay: usize,
    listener: usize,
    src: &[u8],
    kinds: (NatKind, NatKind),
) -> Result<(), String> {
    let len = src.len();
    let done = w.run_until(Duration::from_secs(25), |w| {
        w.sides[listener].received >= len && w.sides[relay].source_done.is_some()
    });
    // Let trailing datagrams and the tracker reports land.
    w.run_for(Duration::from_secs(1));
    let (r, l) = (&w.sides[relay], &w.sides[listener]);
    if !done || r.connected.is_empty() || l.connected.is_empty() {
        return Err(format!("{kinds:?}: should connect and stream within 25 s"));
    }
    if r.connected.len() != 1 || l.connected.len() != 1 {
        return Err(format!("{kinds:?}: connected more than once"));
    }
    if l.connected[0].1.ip() != public_ip(10) || r.connected[0].1.ip() != public_ip(20) {
        return Err(format!(
            "{kinds:?}: peers are the other side's NAT: relay {:?}, listener {:?}",
            r.connected, l.connected
        ));
    }
    if !l.gave_up.is_empty() || !l.lost.is_empty() || !r.lost.is_empty() {
        return Err(format!("{kinds:?}: a search gave up or a peer was lost"));
    }
    if r.source_done != Some(len as u64) {
        return Err(format!(
            "{kinds:?}: relay's SourceDone is {:?}",
            r.source_done
        ));
    }
    let got = l.stream();
    if got != src {
        let first = got.iter().zip(src).position(|(a, b)| a != b);
        return Err(format!(
            "{kinds:?}: the listener got {} bytes, the source has {len}; first difference at {first:?}",
            got.len()
        ));
    }
    piece_indices(src, &l.data).map_err(|e| format!("{kinds:?}: {e}"))?;
    // The tracker heard both reports (MR-4, MR-7): each names the reporter's
    // STUN address and the peer's NAT.
    let (rp, lp) = (
        w.point(relay).public_addr(),
        w.point(listener).public_addr(),
    );
    for (own, peer_ip) in [(rp, public_ip(20)), (lp, public_ip(10))] {
        if !w
            .paired
            .iter()
            .any(|&(a, b)| Some(a) == own && b.ip() == peer_ip)
        {
            return Err(format!(
                "{kinds:?}: the tracker saw no Connected from {own:?} naming {peer_ip}"
            ));
        }
    }
    // The pair is off the lists, and a relay whose source is over stops
    // registering (MR-10): nobody is listed any more.
    let registrations = w.sim.machine(w.tracker).registrations();
    if registrations != 0 {
        return Err(format!(
            "{kinds:?}: the tracker holds {registrations} registrations, expected none"
        ));
    }
    Ok(())
}

/// A ✗ pair: nobody connects, and the listener's give-up says symmetric.
fn blocked_pair(
    w: &mut World,
    relay: usize,
    listener: usize,
    kinds: (NatKind, NatKind),
) -> Result<(), String> {
    w.run_for(Duration::from_secs(25));
    let (r, l) = (&w.sides[relay], &w.sides[listener]);
    if !r.connected.is_empty() || !l.connected.is_empty() || !l.data.is_empty() {
        return Err(format!(
            "{kinds:?}: connected although the pair cannot punch"
        ));
    }
    if l.gave_up.is_empty() {
        return Err(format!("{kinds:?}: the listener never gave up a search"));
    }
    for (at, attempts, reason) in &l.gave_up {
        if !reason.contains("symmetric") {
            return Err(format!(
                "{kinds:?}: give-up {attempts} at {at:?} does not name the symmetric NAT: {reason}"
            ));
        }
        if !reason.contains("relay candidate") {
            return Err(format!(
                "{kinds:?}: give-up {attempts} at {at:?} does not say the candidate never answered: {reason}"
            ));
        }
    }
    if l.gave_up.len() < 2 {
        return Err(format!(
            "{kinds:?}: one give-up in 25 s, a new search should give up at 20 s too"
        ));
    }
    // The listener knows its own NAT when it is the symmetric one.
    let listener_symmetric = kinds.1 == Symmetric;
    if l.nat_mapping != Some(!listener_symmetric) {
        return Err(format!(
            "{kinds:?}: listener's NatMapping endpoint_independent = {:?}",
            l.nat_mapping
        ));
    }
    Ok(())
}

fn nat_pair(seed: u64, relay_kind: NatKind, listener_kind: NatKind) -> Result<(), String> {
    let src = source(seed, 200_000);
    let mut w = World::new(seed, UdpLink::PERFECT);
    let relay = w.add_point(Role::Relay, relay_kind, 10, src.clone(), |_| {});
    let listener = w.add_point(Role::Listener, listener_kind, 20, Vec::new(), |_| {});
    let kinds = (relay_kind, listener_kind);
    let result = if can_punch(relay_kind, listener_kind) {
        punching_pair(&mut w, relay, listener, &src, kinds)
    } else {
        blocked_pair(&mut w, relay, listener, kinds)
    };
    result.map_err(|e| format!("{e}\n{}", w.describe()))
}

/// MR-11, MR-12, MR-15: every ordered pair of NAT kinds (relay, listener) on
/// a perfect link. Pairs that can punch connect and stream 200 KB exactly;
/// the others never connect and the listener's give-up names the symmetric
/// NAT.
#[test]
fn mr_sim_every_nat_pair_that_can_punch_streams_the_source() {
    let mut failures = Vec::new();
    for (r, &relay_kind) in NatKind::ALL.iter().enumerate() {
        for (l, &listener_kind) in NatKind::ALL.iter().enumerate() {
            let seed = 100 + (r * 4 + l) as u64;
            if let Err(e) = nat_pair(seed, relay_kind, listener_kind) {
                failures.push(format!(
                    "relay {relay_kind:?} / listener {listener_kind:?} (seed {seed}): {e}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 16 pairs failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ---- 2. loss, duplication, reordering ------------------------------------------

/// One lossy case: random NAT kinds that can punch, a random link. Returns the
/// trace hash (for the determinism test).
fn lossy(case: Case) -> Result<u64, String> {
    let mut rng = case.rng("scenario");
    let eim = [FullCone, AddressRestricted, PortRestricted];
    let (relay_kind, listener_kind) = match rng.below(6) {
        0 => (Symmetric, FullCone),
        1 => (AddressRestricted, Symmetric),
        _ => (eim[rng.index(eim.len())], eim[rng.index(eim.len())]),
    };
    // A clean link now and then, so exact equality is checked too.
    let link = if rng.chance(0.25) {
        UdpLink::PERFECT
    } else {
        let min = rng.range(1..=40);
        let max = if rng.chance(0.3) {
            min
        } else {
            rng.range(min..=40)
        };
        UdpLink {
            loss: rng.below(101) as f64 / 1000.0,
            duplicate: rng.below(51) as f64 / 1000.0,
            min_delay: Duration::from_millis(min),
            max_delay: Duration::from_millis(max),
        }
    };
    let len = 1000 * case.size + rng.range_usize(0..=503);
    let src = source(case.seed, len);
    // Half the cases pace the stream, so it lasts long enough for keep-alives
    // and losses to interleave with it.
    let rate = rng.chance(0.5).then(|| rng.range(40_000..=400_000));
    let mut w = World::new(case.seed, link);
    let relay = w.add_point(Role::Relay, relay_kind, 10, src.clone(), |c| c.rate = rate);
    let listener = w.add_point(Role::Listener, listener_kind, 20, Vec::new(), |_| {});
    let what = format!(
        "relay {relay_kind:?}, listener {listener_kind:?}, {len} bytes, rate {rate:?}, {link:?}"
    );
    let fail = |w: &World, e: String| format!("{what}: {e}\n{}", w.describe());

    let connected = w.run_until(Duration::from_secs(30), |w| {
        !w.sides[relay].connected.is_empty() && !w.sides[listener].connected.is_empty()
    });
    if !connected {
        return Err(fail(&w, "the pair did not connect within 30 s".into()));
    }
    w.run_until(Duration::from_secs(10), |w| {
        w.sides[relay].source_done.is_some()
    });
    w.run_for(Duration::from_millis(500));
    let (r, l) = (&w.sides[relay], &w.sides[listener]);
    if r.source_done != Some(len as u64) {
        return Err(fail(
            &w,
            format!("relay's SourceDone is {:?}", r.source_done),
        ));
    }
    if !r.lost.is_empty() || !l.lost.is_empty() {
        return Err(fail(
            &w,
            "a peer was lost on a link that loses at most 10%".into(),
        ));
    }
    // MR-15/MR-16: every delivered datagram is a whole piece of the source.
    let indices = piece_indices(&src, &l.data).map_err(|e| fail(&w, e))?;
    let total = wire::chunks(&src).count();
    let distinct = indices
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if distinct * 2 < total {
        return Err(fail(
            &w,
            format!("only {distinct} of {total} pieces arrived"),
        ));
    }
    if link.min_delay == link.max_delay && indices.windows(2).any(|p| p[0] > p[1]) {
        return Err(fail(
            &w,
            "pieces out of order on a link that keeps order".into(),
        ));
    }
    if link.loss == 0.0 && link.duplicate == 0.0 && link.min_delay == link.max_delay {
        let got = l.stream();
        if got != src {
            return Err(fail(
                &w,
                format!(
                    "a clean link delivered {} of {len} bytes, not the source",
                    got.len()
                ),
            ));
        }
    }
    Ok(w.sim.trace_hash())
}

/// MR-13, MR-15, MR-16: on a link that loses, duplicates and reorders, the
/// pair still connects and the listener delivers only whole pieces of the
/// source; on a clean link, exactly the source.
#[test]
fn mr_sim_loss_duplication_and_reordering() {
    check(
        Property {
            test: env!("CARGO_CRATE_NAME"),
            name: "mr_sim_loss_duplication_and_reordering",
            cases: 16,
            max_size: 100,
        },
        |case| lossy(case).map(drop),
    );
}

// ---- 3. one relay, two listeners --------------------------------------------------

fn two_listeners(case: Case) -> Result<(), String> {
    let src = source(case.seed, 120_000);
    let mut w = World::new(case.seed, UdpLink::PERFECT);
    let relay = w.add_point(Role::Relay, PortRestricted, 10, src.clone(), |c| {
        c.min_listeners = 2;
    });
    let a = w.add_point(Role::Listener, FullCone, 20, Vec::new(), |_| {});
    // The second listener joins a little later: the relay must wait for it.
    w.run_for(Duration::from_secs(2));
    if w.sides[a].connected.len() != 1 || w.sides[a].received > 0 {
        return Err(format!(
            "the first listener should be connected and get nothing before min_listeners joined\n{}",
            w.describe()
        ));
    }
    let b = w.add_point(Role::Listener, AddressRestricted, 30, Vec::new(), |_| {});
    let len = src.len();
    let done = w.run_until(Duration::from_secs(25), |w| {
        w.sides[a].received >= len && w.sides[b].received >= len
    });
    w.run_for(Duration::from_secs(1));
    let fail = |e: &str| format!("{e}\n{}", w.describe());
    if !done {
        return Err(fail(
            "both listeners should get the whole source within 25 s",
        ));
    }
    let peers: Vec<IpAddr> = w.sides[relay].connected.iter().map(|c| c.1.ip()).collect();
    if peers.len() != 2 || !peers.contains(&public_ip(20)) || !peers.contains(&public_ip(30)) {
        return Err(fail("the relay should connect to both listeners once each"));
    }
    for side in [a, b] {
        if w.sides[side].stream() != src {
            return Err(fail(&format!(
                "{} did not get the source exactly",
                w.sides[side].name
            )));
        }
    }
    let stats = w.point(relay).stats();
    let pieces = wire::chunks(&src).count() as u64;
    if stats.datagrams_sent != 2 * pieces || stats.source_bytes_sent != len as u64 {
        return Err(fail(&format!("relay stats {stats:?}, {pieces} pieces")));
    }
    Ok(())
}

/// MR-12, MR-15: a relay with `min_listeners = 2` waits for the second
/// listener, then streams every byte to both.
#[test]
fn mr_sim_one_relay_serves_two_listeners() {
    check_case(
        Property {
            test: env!("CARGO_CRATE_NAME"),
            name: "mr_sim_one_relay_serves_two_listeners",
            cases: 1,
            max_size: 1,
        },
        Case { seed: 3, size: 1 },
        two_listeners,
    );
}

// ---- 4. the relay goes away --------------------------------------------------------

fn relay_restart(case: Case) -> Result<(), String> {
    let first = source(case.seed, 30_000);
    let second = source(case.seed ^ 0x5eed, 40_000);
    let mut w = World::new(case.seed, UdpLink::PERFECT);
    let old = w.add_point(Role::Relay, AddressRestricted, 10, first.clone(), |_| {});
    let listener = w.add_point(Role::Listener, PortRestricted, 20, Vec::new(), |_| {});
    let got_first = w.run_until(Duration::from_secs(15), |w| {
        w.sides[listener].received >= first.len()
    });
    if !got_first || w.sides[listener].stream() != first {
        return Err(format!(
            "the first relay's source did not arrive exactly\n{}",
            w.describe()
        ));
    }
    // Keep-alives flow while nothing is streamed.
    w.run_for(Duration::from_secs(8));
    if !w.sides[listener].lost.is_empty() {
        return Err(format!("an idle but live relay was lost\n{}", w.describe()));
    }
    let stopped_at = w.sim.elapsed();
    w.stop(old);
    let lost = w.run_until(Duration::from_secs(7), |w| {
        !w.sides[listener].lost.is_empty()
    });
    let fail = |w: &World, e: String| format!("{e}\n{}", w.describe());
    if !lost {
        return Err(fail(
            &w,
            "no PeerLost within 7 s of the relay's stop".into(),
        ));
    }
    let (at, peer, _) = w.sides[listener].lost[0].clone();
    let after = at - stopped_at;
    if after < Duration::from_secs(4) || after > Duration::from_secs(6) {
        return Err(fail(
            &w,
            format!("PeerLost {after:?} after the stop, expected about 5 s"),
        ));
    }
    if peer.ip() != public_ip(10) {
        return Err(fail(&w, format!("lost {peer}, not the relay")));
    }
    if w.point(listener).connected_peers() != Vec::<SocketAddr>::new() {
        return Err(fail(
            &w,
            "the listener still counts a peer as connected".into(),
        ));
    }
    let before = w.sides[listener].data.len();
    w.run_for(Duration::from_secs(1));
    let new = w.add_point(Role::Relay, FullCone, 40, second.clone(), |_| {});
    let done = w.run_until(Duration::from_secs(20), |w| {
        w.sides[listener].received >= first.len() + second.len()
    });
    if !done {
        return Err(fail(
            &w,
            "the listener did not get the new relay's source within 20 s".into(),
        ));
    }
    let l = &w.sides[listener];
    if l.connected.len() != 2 || l.connected[1].1.ip() != public_ip(40) {
        return Err(fail(
            &w,
            "the listener should connect to the new relay".into(),
        ));
    }
    if w.sides[new].connected.len() != 1 {
        return Err(fail(&w, "the new relay should connect once".into()));
    }
    if l.data[before..].concat() != second {
        return Err(fail(
            &w,
            "the new relay's source did not arrive exactly".into(),
        ));
    }
    Ok(())
}

/// MR-13: a relay that stops is lost by its listener after the peer timeout
/// (5 s); the listener searches again and connects to a new relay on the
/// mount, whose stream it then delivers.
#[test]
fn mr_sim_listener_recovers_when_the_relay_restarts() {
    check_case(
        Property {
            test: env!("CARGO_CRATE_NAME"),
            name: "mr_sim_listener_recovers_when_the_relay_restarts",
            cases: 1,
            max_size: 1,
        },
        Case { seed: 4, size: 1 },
        relay_restart,
    );
}

// ---- 5. MR-16: strangers ---------------------------------------------------------

fn strangers(case: Case) -> Result<(), String> {
    let src = source(case.seed, 60_000);
    let mut w = World::new(case.seed, UdpLink::PERFECT);
    // Paced, so the stream lasts while the stranger sends (50 KB/s).
    let relay = w.add_point(Role::Relay, AddressRestricted, 10, src.clone(), |c| {
        c.rate = Some(50_000);
    });
    // A full-cone listener: anyone who knows its public address reaches it.
    let listener = w.add_point(Role::Listener, FullCone, 20, Vec::new(), |_| {});
    let connected = w.run_until(Duration::from_secs(15), |w| {
        !w.sides[listener].connected.is_empty() && !w.sides[relay].connected.is_empty()
    });
    let fail = |w: &World, e: &str| format!("{e}\n{}", w.describe());
    if !connected {
        return Err(fail(&w, "the pair did not connect"));
    }
    let target = w.point(listener).public_addr().expect("a public address");
    let stranger = w.sim.udp_bind(parse("0.0.0.0:0"));
    let mut forged = Vec::new();
    wire::encode_data(b"foreign bytes with a good CRC", &mut forged);
    let mut bad = Vec::new();
    wire::encode_data(b"bytes with a bad CRC", &mut bad);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let ignored_before = w.point(listener).stats().ignored;
    // The stranger's datagrams interleave with the relay's stream.
    for round in 0..20 {
        for data in [
            &forged[..],
            &bad[..],
            b"helloListener",
            b"niceToMeetYouListener",
        ] {
            w.sim.udp_send(stranger, target, data);
        }
        w.run_for(Duration::from_millis(if round % 2 == 0 { 3 } else { 40 }));
    }
    let len = src.len();
    let done = w.run_until(Duration::from_secs(10), |w| {
        w.sides[listener].received >= len
    });
    if !done || w.sides[listener].stream() != src {
        return Err(fail(
            &w,
            "the listener should deliver the relay's source and nothing else",
        ));
    }
    if w.sides[listener].connected.len() != 1 {
        return Err(fail(&w, "a stranger's hello changed the listener's relay"));
    }
    let ignored = w.point(listener).stats().ignored - ignored_before;
    if ignored < 80 {
        return Err(fail(
            &w,
            &format!("only {ignored} of the stranger's 80 datagrams counted ignored"),
        ));
    }
    Ok(())
}

/// MR-16: once connected, a listener delivers only its relay's data: a
/// stranger's stream datagrams (good CRC or bad) and handshake strings are
/// ignored and counted.
#[test]
fn mr_sim_listener_ignores_strangers() {
    check_case(
        Property {
            test: env!("CARGO_CRATE_NAME"),
            name: "mr_sim_listener_ignores_strangers",
            cases: 1,
            max_size: 1,
        },
        Case { seed: 5, size: 1 },
        strangers,
    );
}

// ---- 6. determinism ----------------------------------------------------------------

/// The same seed gives the same trace; another seed another one.
#[test]
fn mr_sim_the_same_seed_gives_the_same_trace() {
    let case = Case {
        seed: 0x000d_e7e4,
        size: 40,
    };
    let a = lossy(case).unwrap_or_else(|e| panic!("{e}"));
    let b = lossy(case).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a, b, "same seed, same trace");
    let c = lossy(Case {
        seed: 0x000d_e7e5,
        ..case
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(a, c, "another seed, another trace");
}
