//! Two smoltcp [`IpHost`]s back to back through a deterministic lossy link
//! (seeded loss, duplication, reordering and latency), on synthetic time: bulk
//! transfers arrive whole and in order, the same seed gives the same trace,
//! and packets for another address are ignored. One test pins a smoltcp 0.14
//! bug (a FIN that is never retransmitted), so an upgrade that fixes it shows.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ferry_conformance::ip_host::{
    IpHost, IpHostStats, TcpState, Transfer, TransferReport, crc32, pattern,
};
use ferry_conformance::sim::SimRng;
use quickcheck::{QuickCheck, TestResult};

const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PORT: u16 = 5001;
const MIB: usize = 1024 * 1024;

/// What the link does to each packet; probabilities in per mille.
#[derive(Debug, Clone, Copy)]
struct LinkConfig {
    loss: u64,
    duplicate: u64,
    reorder: u64,
    /// Every packet's one-way delay.
    latency: Duration,
    /// Up to this much more, uniformly (which reorders a little too).
    jitter: Duration,
    /// A reordered packet is held back up to this much more.
    reorder_delay: Duration,
}

impl LinkConfig {
    fn clean() -> Self {
        LinkConfig {
            loss: 0,
            duplicate: 0,
            reorder: 0,
            latency: Duration::from_millis(5),
            jitter: Duration::ZERO,
            reorder_delay: Duration::ZERO,
        }
    }

    fn lossy(loss: u64, duplicate: u64, reorder: u64) -> Self {
        LinkConfig {
            loss,
            duplicate,
            reorder,
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(2),
            reorder_delay: Duration::from_millis(6),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LinkStats {
    sent: u64,
    dropped: u64,
    duplicated: u64,
    reordered: u64,
    delivered: u64,
    /// A running CRC over every packet the link was given, in order.
    trace: u32,
}

/// A packet on the link. Ordered by due time, then by when it was sent.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    due: Instant,
    seq: u64,
    to: usize,
    packet: Vec<u8>,
}

/// A one-packet-at-a-time link between host 0 and host 1.
struct Link {
    config: LinkConfig,
    rng: SimRng,
    mtu: usize,
    queue: BinaryHeap<Reverse<InFlight>>,
    seq: u64,
    stats: LinkStats,
}

impl Link {
    fn new(seed: u64, config: LinkConfig, mtu: usize) -> Self {
        Link {
            config,
            rng: SimRng::stream(seed, "link"),
            mtu,
            queue: BinaryHeap::new(),
            seq: 0,
            stats: LinkStats::default(),
        }
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        per_mille > 0 && self.rng.below(1000) < per_mille
    }

    fn delay(&mut self) -> Duration {
        let jitter = self.config.jitter.as_micros() as u64;
        let mut delay = self.config.latency + Duration::from_micros(self.rng.range(0..=jitter));
        if self.chance(self.config.reorder) {
            self.stats.reordered += 1;
            let extra = self.config.reorder_delay.as_micros() as u64;
            delay += Duration::from_micros(self.rng.range(1..=extra.max(1)));
        }
        delay
    }

    fn send(&mut self, now: Instant, to: usize, packet: Vec<u8>) {
        assert!(
            packet.len() <= self.mtu,
            "a host sent {} bytes over an MTU of {}",
            packet.len(),
            self.mtu
        );
        self.stats.sent += 1;
        self.stats.trace = crc32(&[&self.stats.trace.to_le_bytes()[..], &packet].concat());
        if self.chance(self.config.loss) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.chance(self.config.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let due = now + self.delay();
            self.seq += 1;
            self.queue.push(Reverse(InFlight {
                due,
                seq: self.seq,
                to,
                packet: packet.clone(),
            }));
        }
    }

    fn next_at(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(flight)| flight.due)
    }

    /// The packets due by `now`, in order.
    fn due(&mut self, now: Instant) -> Vec<(usize, Vec<u8>)> {
        let mut out = Vec::new();
        while self.next_at().is_some_and(|due| due <= now) {
            let Some(Reverse(flight)) = self.queue.pop() else {
                break;
            };
            self.stats.delivered += 1;
            out.push((flight.to, flight.packet));
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    report: TransferReport,
    elapsed: Duration,
    steps: usize,
    a: IpHostStats,
    b: IpHostStats,
    link: LinkStats,
    sender_state: TcpState,
    receiver_state: TcpState,
    /// The run ended because neither host nor the link had anything left to do.
    quiet: bool,
}

impl Outcome {
    /// The sender hangs on smoltcp 0.14's lost-FIN bug (see `ip_host`'s limits):
    /// every byte acknowledged, the FIN unacknowledged, no timer left.
    fn fin_lost_to_known_bug(&self) -> bool {
        self.quiet
            && self.report.is_complete()
            && !self.report.fin_received
            && matches!(self.sender_state, TcpState::FinWait1 | TcpState::Closing)
    }
}

/// Send `len` bytes from A to B through a link, stepping synthetic time from
/// one event (a host timer or a packet's arrival) to the next, until the
/// transfer completes and closes, nothing is left to happen, or a bound runs
/// out.
fn run_transfer(
    seed: u64,
    len: usize,
    config: LinkConfig,
    mtu: usize,
    max_steps: usize,
    max_time: Duration,
) -> Outcome {
    let epoch = Instant::now();
    let mut hosts = [
        // The epoch is the first instant each host is polled at.
        IpHost::new(A, 24, mtu, seed ^ 0xA),
        IpHost::new(B, 24, mtu, seed ^ 0xB),
    ];
    let receiver = hosts[1].listen(PORT);
    let sender = hosts[0].connect(B, PORT);
    let mut transfer = Transfer::new(len, seed, sender, receiver);
    let mut link = Link::new(seed, config, mtu);
    let mut now = epoch;
    let mut steps = 0;
    let mut idle_at_now = 0;
    let mut quiet = false;
    loop {
        steps += 1;
        let arrivals = link.due(now);
        let arrived = !arrivals.is_empty();
        for (to, packet) in arrivals {
            hosts[to].deliver(&packet);
        }
        for host in &mut hosts {
            host.poll(now);
        }
        let [a, b] = &mut hosts;
        let moved = transfer.pump(a, b);
        for host in &mut hosts {
            host.poll(now);
        }
        let mut emitted = false;
        for (from, host) in hosts.iter_mut().enumerate() {
            for packet in host.take_outgoing() {
                emitted = true;
                link.send(now, 1 - from, packet);
            }
        }
        if transfer.is_closed() || steps >= max_steps || now - epoch >= max_time {
            break;
        }
        let next = [hosts[0].poll_at(now), hosts[1].poll_at(now), link.next_at()]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else {
            quiet = true; // nothing will ever happen again
            break;
        };
        if next > now {
            now = next;
            idle_at_now = 0;
        } else if arrived || moved || emitted {
            idle_at_now = 0; // more to do at this instant
        } else {
            // A host asks for "now" again without doing anything: let time go
            // on rather than spin.
            idle_at_now += 1;
            if idle_at_now > 2 {
                now += Duration::from_millis(1);
                idle_at_now = 0;
            }
        }
    }
    Outcome {
        report: transfer.report(),
        elapsed: now - epoch,
        steps,
        a: hosts[0].stats(),
        b: hosts[1].stats(),
        link: link.stats,
        sender_state: hosts[0].state(sender),
        receiver_state: hosts[1].state(receiver),
        quiet,
    }
}

fn expected_crc(seed: u64, len: usize) -> u32 {
    let mut bytes = vec![0; len];
    pattern(seed, 0, &mut bytes);
    crc32(&bytes)
}

fn assert_complete(outcome: &Outcome, seed: u64, len: usize) {
    let report = &outcome.report;
    assert!(report.is_complete(), "transfer incomplete: {outcome:#?}");
    assert_eq!(report.received, len);
    assert_eq!(report.first_mismatch, None);
    assert_eq!(report.received_crc, expected_crc(seed, len), "{outcome:#?}");
    assert_eq!(report.sent_crc, report.received_crc);
}

/// [`assert_complete`], and the close arrived too (or, for the one known
/// smoltcp bug, the sender hangs in exactly its way).
fn assert_closed_or_known_bug(outcome: &Outcome, seed: u64, len: usize) {
    assert_complete(outcome, seed, len);
    if !outcome.fin_lost_to_known_bug() {
        assert!(outcome.report.fin_received, "no FIN: {outcome:#?}");
        assert_eq!(outcome.receiver_state, TcpState::CloseWait, "{outcome:#?}");
    }
}

#[test]
fn one_mebibyte_over_a_clean_link() {
    let seed = 1;
    let outcome = run_transfer(
        seed,
        MIB,
        LinkConfig::clean(),
        1500,
        200_000,
        Duration::from_secs(600),
    );
    assert_complete(&outcome, seed, MIB);
    assert!(outcome.report.is_closed(), "{outcome:#?}");
    assert_eq!(outcome.receiver_state, TcpState::CloseWait);
    assert_eq!(outcome.link.dropped, 0);
    // Nothing was lost, so nothing was sent twice: about one segment per MSS
    // (1460 bytes) plus the handshake, the FIN and the ACKs.
    let segments = MIB.div_ceil(1460) as u64;
    assert!(
        outcome.a.emitted >= segments && outcome.a.emitted <= segments + 8,
        "{outcome:#?}"
    );
    // 64 KiB windows over a 10 ms round trip: well under a virtual second.
    assert!(outcome.elapsed < Duration::from_secs(1), "{outcome:#?}");
}

#[test]
fn one_mebibyte_over_a_lossy_duplicating_reordering_link() {
    let seed = 2;
    let config = LinkConfig::lossy(50, 20, 100);
    let outcome = run_transfer(seed, MIB, config, 1280, 400_000, Duration::from_secs(3600));
    assert_closed_or_known_bug(&outcome, seed, MIB);
    assert!(outcome.link.dropped > 0, "{outcome:#?}");
    assert!(outcome.link.duplicated > 0, "{outcome:#?}");
    assert!(outcome.link.reordered > 0, "{outcome:#?}");
    // Losses were repaired by retransmissions.
    let segments = MIB.div_ceil(1280 - 40) as u64;
    assert!(outcome.a.emitted > segments, "{outcome:#?}");
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let config = LinkConfig::lossy(50, 20, 100);
    let run = |seed| {
        run_transfer(
            seed,
            256 * 1024,
            config,
            1400,
            200_000,
            Duration::from_secs(3600),
        )
    };
    let first = run(3);
    let second = run(3);
    assert_closed_or_known_bug(&first, 3, 256 * 1024);
    assert_eq!(first, second);
    // Another seed changes the ISNs, the ports and the link's choices.
    let other = run(4);
    assert_closed_or_known_bug(&other, 4, 256 * 1024);
    assert_ne!(first.link.trace, other.link.trace);
}

#[test]
fn transfers_complete_under_random_loss() {
    fn prop(seed: u64, loss: u8, duplicate: u8, reorder: u8, kib: u8) -> TestResult {
        let loss = u64::from(loss) % 101; // 0..=10 %
        let duplicate = u64::from(duplicate) % 51;
        let reorder = u64::from(reorder) % 201;
        let len = (usize::from(kib) % 128 + 1) * 1024;
        let config = LinkConfig::lossy(loss, duplicate, reorder);
        let outcome = run_transfer(seed, len, config, 1400, 100_000, Duration::from_secs(3600));
        let closed = outcome.report.fin_received && outcome.receiver_state == TcpState::CloseWait;
        if outcome.report.is_complete()
            && outcome.report.received_crc == expected_crc(seed, len)
            && (closed || outcome.fin_lost_to_known_bug())
        {
            TestResult::passed()
        } else {
            TestResult::error(format!(
                "seed {seed} loss {loss}‰ dup {duplicate}‰ reorder {reorder}‰ len {len}: {outcome:#?}"
            ))
        }
    }
    QuickCheck::new()
        .tests(48)
        .quickcheck(prop as fn(u64, u8, u8, u8, u8) -> TestResult);
}

/// The TCP flags of an IPv4 packet carrying TCP.
fn tcp_flags(packet: &[u8]) -> u8 {
    assert_eq!(packet[0] >> 4, 4, "not IPv4");
    assert_eq!(packet[9], 6, "not TCP");
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    packet[ihl + 13]
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

fn syn_from(host: &mut IpHost, now: Instant, to: Ipv4Addr, port: u16) -> Vec<u8> {
    host.connect(to, port);
    host.poll(now);
    let mut out = host.take_outgoing();
    assert_eq!(out.len(), 1, "one SYN");
    let syn = out.remove(0);
    assert_eq!(tcp_flags(&syn), SYN);
    syn
}

#[test]
fn packets_for_other_addresses_and_garbage_are_ignored() {
    let now = Instant::now();
    let mut a = IpHost::new(A, 24, 1500, 5);
    let mut b = IpHost::new(B, 24, 1500, 6);
    let listener = b.listen(80);

    // A SYN for another address, in B's prefix or outside it: silence.
    for other in [Ipv4Addr::new(10, 77, 0, 99), Ipv4Addr::new(192, 0, 2, 1)] {
        let syn = syn_from(&mut a, now, other, 80);
        b.deliver(&syn);
        b.poll(now);
        assert!(
            b.take_outgoing().is_empty(),
            "B answered a packet for {other}"
        );
        assert_eq!(b.state(listener), TcpState::Listen);
    }

    // Garbage, a truncated SYN and a SYN with a broken checksum: silence.
    let syn = syn_from(&mut a, now, B, 80);
    let mut corrupt = syn.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x55;
    for junk in [
        vec![0xde, 0xad, 0xbe, 0xef],
        syn[..30].to_vec(),
        corrupt,
        Vec::new(),
    ] {
        b.deliver(&junk);
        b.poll(now);
        assert!(b.take_outgoing().is_empty(), "B answered junk {junk:02x?}");
        assert_eq!(b.state(listener), TcpState::Listen);
    }
    assert_eq!(b.stats().delivered, 6);
    assert_eq!(b.stats().emitted, 0);

    // A SYN for B's address on a closed port: a reset.
    let closed = syn_from(&mut a, now, B, 81);
    b.deliver(&closed);
    b.poll(now);
    let out = b.take_outgoing();
    assert_eq!(out.len(), 1);
    assert_eq!(tcp_flags(&out[0]) & RST, RST);

    // And the intact SYN for the listening port: a SYN-ACK.
    b.deliver(&syn);
    b.poll(now);
    let out = b.take_outgoing();
    assert_eq!(out.len(), 1);
    assert_eq!(tcp_flags(&out[0]), SYN | ACK);
    assert_eq!(b.state(listener), TcpState::SynReceived);
    assert_eq!(b.stats().emitted, 2);
}

#[test]
fn a_conversation_both_ways_and_a_clean_close() {
    let epoch = Instant::now();
    let mut a = IpHost::with_epoch(A, 24, 1500, 7, epoch);
    let mut b = IpHost::with_epoch(B, 24, 1500, 8, epoch);
    let server = b.listen(7);
    let client = a.connect(B, 7);
    assert_eq!(a.state(client), TcpState::SynSent);
    let mut now = epoch;
    // A perfect wire with no delay: swap packets until both are quiet.
    let exchange = |a: &mut IpHost, b: &mut IpHost, now: Instant| {
        for _ in 0..20 {
            a.poll(now);
            b.poll(now);
            let (to_b, to_a) = (a.take_outgoing(), b.take_outgoing());
            if to_b.is_empty() && to_a.is_empty() {
                return;
            }
            to_b.iter().for_each(|p| b.deliver(p));
            to_a.iter().for_each(|p| a.deliver(p));
        }
        panic!("the hosts never went quiet");
    };
    exchange(&mut a, &mut b, now);
    assert!(a.is_established(client) && b.is_established(server));
    assert_eq!(b.remote_endpoint(server), a.local_endpoint(client));
    assert_eq!(a.remote_endpoint(client), Some((B, 7)));

    assert_eq!(a.send(client, b"ping"), 4);
    exchange(&mut a, &mut b, now);
    assert_eq!(b.recv(server), b"ping");
    assert_eq!(b.send(server, b"pong"), 4);
    exchange(&mut a, &mut b, now);
    assert_eq!(a.recv(client), b"pong");
    assert!(a.recv(client).is_empty());

    // A full send buffer takes only what fits.
    let big = vec![7u8; 100 * 1024];
    assert_eq!(a.send(client, &big), 64 * 1024);
    assert_eq!(a.send(client, &big), 0);
    let mut got = 0;
    while got < 64 * 1024 {
        exchange(&mut a, &mut b, now);
        got += b.recv(server).len();
        now += Duration::from_millis(20); // delayed ACKs and window updates
    }
    exchange(&mut a, &mut b, now);
    assert_eq!(a.send_queue(client), 0);

    a.close(client);
    exchange(&mut a, &mut b, now);
    assert!(!a.may_send(client));
    assert!(!b.may_recv(server));
    assert_eq!(a.state(client), TcpState::FinWait2);
    assert_eq!(b.state(server), TcpState::CloseWait);
    b.close(server);
    exchange(&mut a, &mut b, now);
    assert_eq!(a.state(client), TcpState::TimeWait);
    assert_eq!(b.state(server), TcpState::Closed);
    // TIME-WAIT ends on a timer the host reports.
    let wake = a.poll_at(now).expect("TIME-WAIT has a timer");
    assert!(wake > now);
    a.poll(wake);
    assert_eq!(a.state(client), TcpState::Closed);
    assert_eq!(a.state(client).to_string(), "CLOSED");
}

/// smoltcp 0.14 bug, pinned: the sender closes once all its data is
/// acknowledged, the FIN is lost, and three duplicate ACKs of the data then
/// arrive. smoltcp starts a fast retransmit, finds no data to resend, sends
/// nothing and idles its retransmit timer: the FIN is never sent again and
/// the socket has no wake-up left. If this test fails after a smoltcp
/// upgrade, the bug is fixed: drop the caveat from `ip_host`'s module doc and
/// `Outcome::fin_lost_to_known_bug` here.
#[test]
fn smoltcp_0_14_never_resends_a_fin_after_three_duplicate_acks() {
    let epoch = Instant::now();
    let mut a = IpHost::with_epoch(A, 24, 1500, 9, epoch);
    let mut b = IpHost::with_epoch(B, 24, 1500, 10, epoch);
    let server = b.listen(7);
    let client = a.connect(B, 7);
    let mut now = epoch;
    let swap = |a: &mut IpHost, b: &mut IpHost, now: Instant| {
        a.poll(now);
        for p in a.take_outgoing() {
            b.deliver(&p);
        }
        b.poll(now);
        let to_a = b.take_outgoing();
        for p in &to_a {
            a.deliver(p);
        }
        a.poll(now);
        to_a
    };
    swap(&mut a, &mut b, now); // SYN, SYN-ACK
    swap(&mut a, &mut b, now); // ACK
    assert!(a.is_established(client) && b.is_established(server));
    a.send(client, b"hello");
    swap(&mut a, &mut b, now); // data; B delays its ACK
    now += Duration::from_millis(50);
    let acks = swap(&mut a, &mut b, now);
    assert_eq!(acks.len(), 1, "B's delayed ACK");
    let ack = acks[0].clone();
    assert_eq!(b.recv(server), b"hello");
    assert_eq!(a.send_queue(client), 0);

    a.close(client);
    a.poll(now);
    let fin = a.take_outgoing();
    assert_eq!(fin.len(), 1);
    assert_eq!(tcp_flags(&fin[0]) & 0x01, 0x01, "FIN"); // and the link loses it
    let rto = a.poll_at(now).expect("the FIN's retransmit timer");
    assert!(rto > now);

    for _ in 0..3 {
        a.deliver(&ack);
    }
    a.poll(now);
    // The bug: nothing is sent and no timer is left, however long we wait.
    assert!(a.take_outgoing().is_empty());
    assert_eq!(a.poll_at(now), None);
    a.poll(now + Duration::from_secs(600));
    assert!(a.take_outgoing().is_empty());
    assert_eq!(a.state(client), TcpState::FinWait1);
    assert!(b.may_recv(server), "B never hears of the close");
}
