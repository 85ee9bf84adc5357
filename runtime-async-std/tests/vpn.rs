//! The P2P VPN on the async-std driver as an embedder runs it (loopback, in-memory TUNs): login (VPN-N1), server then direct (VPN-S1..S14, S23; the VPN-N8 checks), wrong password final (VPN-N2).

#[path = "support/fake_tun.rs"]
mod fake_tun;

use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_std::future::timeout;
use async_std::task;
use fake_tun::FakeReader;
use ferry_async_std::driver::TunIo;
use ferry_async_std::mount_relay::StunResponder;
use ferry_async_std::{Driver, DriverConfig};
use ferry_core::vpn::WallClock;
use ferry_core::vpn::node::{self, Node};
use ferry_core::vpn::peer::PeerState;
use ferry_core::vpn::server::{self, Server};

const PASSWORD: &[u8] = b"async-std vpn password";
const NETWORK: &str = "10.88.0.0/24";
const A: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 3);
/// Every node of a network must use the same; low, to keep the test fast.
const KDF_ITERATIONS: u32 = 1_000;
/// Packets sent direct once the pair is CONNECTED.
const DIRECT_PACKETS: u16 = 200;
/// Packets injected and not yet seen at the far end, at most (loopback UDP
/// drops nothing at this depth, even on a loaded machine).
const IN_FLIGHT: usize = 16;

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn wall() -> WallClock {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis();
    WallClock::new(
        Instant::now(),
        i64::try_from(unix_ms).expect("a clock in range"),
    )
}

/// `what` must end within `limit`.
async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    match timeout(limit, future).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

// ---- IPv4 packets -------------------------------------------------------------------

fn ones_complement_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded to 16 bits")
}

/// A valid IPv4/UDP packet from `src` to `dst` (both checksums right) with
/// `payload` bytes derived from `id`.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, id: u16, payload: usize) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload).expect("a small payload");
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(usize::from(total));
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum below
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let header = fold(ones_complement_sum(0, &p));
    p[10..12].copy_from_slice(&header.to_be_bytes());
    p.extend_from_slice(&40_000u16.to_be_bytes());
    p.extend_from_slice(&9u16.to_be_bytes());
    p.extend_from_slice(&udp_len.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend((0..payload).map(|i| (usize::from(id) * 31 + i * 7) as u8));
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let udp = match fold(ones_complement_sum(
        ones_complement_sum(0, &pseudo),
        &p[20..],
    )) {
        0 => 0xffff,
        sum => sum,
    };
    p[26..28].copy_from_slice(&udp.to_be_bytes());
    assert_eq!(fold(ones_complement_sum(0, &p[..20])), 0, "header checksum");
    p
}

// ---- an in-memory TUN device ----------------------------------------------------------

/// What the node writes to its TUN goes to the test.
struct FakeTunWriter(async_channel::Sender<Vec<u8>>);

impl Write for FakeTunWriter {
    fn write(&mut self, packet: &[u8]) -> io::Result<usize> {
        let _ = self.0.try_send(packet.to_vec());
        Ok(packet.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---- the machines on their drivers ------------------------------------------------------

struct VpnServer {
    driver: Driver<Server>,
    addr: SocketAddr,
    events: Vec<server::Event>,
}

impl VpnServer {
    async fn start(wall: WallClock) -> VpnServer {
        let config = server::Config::new(
            loopback(),
            PASSWORD,
            NETWORK.parse().expect("a valid network"),
            wall,
        );
        let machine = Server::new(config).expect("a valid config");
        let driver = Driver::spawn(machine, DriverConfig::default());
        let event = within(
            "the server listens",
            Duration::from_secs(10),
            driver.next_event(),
        )
        .await;
        let Some(server::Event::Listening { addr }) = event else {
            panic!("expected Listening, got {event:?}");
        };
        VpnServer {
            driver,
            addr,
            events: Vec::new(),
        }
    }

    fn drain(&mut self) -> &[server::Event] {
        while let Some(event) = self.driver.try_next_event() {
            self.events.push(event);
        }
        &self.events
    }

    async fn stop(mut self) -> (Server, Vec<server::Event>) {
        within(
            "the server's shutdown command",
            Duration::from_secs(5),
            self.driver.command(server::Command::Shutdown),
        )
        .await
        .expect("the server driver runs");
        self.drain();
        let Self { driver, events, .. } = self;
        let machine = within("the server driver stops", Duration::from_secs(10), async {
            driver.stop().await;
            driver.join().await
        })
        .await;
        (machine, events)
    }
}

struct VpnNode {
    driver: Driver<Node>,
    /// Packets "read from the TUN".
    inject: mpsc::Sender<Vec<u8>>,
    /// Packets the node wrote to its TUN.
    sink: async_channel::Receiver<Vec<u8>>,
    reader_ended: Arc<AtomicBool>,
    /// Every event so far, and how far [`VpnNode::wait_for`] has looked.
    log: Vec<node::Event>,
    cursor: usize,
}

fn node_config(
    server: SocketAddr,
    stun: SocketAddr,
    ip: Ipv4Addr,
    password: &[u8],
    wall: WallClock,
) -> node::Config {
    let mut config = node::Config::new(server, password, wall);
    config.host = server.to_string();
    config.path = "/".to_owned();
    config.address = Some((ip, 24));
    config.vmac = [ip.octets()[3]; 16];
    config.stun = Some(stun);
    config.udp_bind = loopback();
    config.kdf_iterations = KDF_ITERATIONS;
    config
}

impl VpnNode {
    fn start(config: node::Config) -> VpnNode {
        let (inject, packets) = mpsc::channel();
        let (written, sink) = async_channel::unbounded();
        let reader_ended = Arc::new(AtomicBool::new(false));
        let reader = FakeReader {
            packets,
            ended: reader_ended.clone(),
        };
        // A fixed seed per address: fresh within the test, which is all VPN-C5 needs here.
        let seed = [config.vmac[0]; 32];
        let machine = Node::new(config, seed, Instant::now());
        let driver = Driver::spawn_with_tun(
            machine,
            DriverConfig::default(),
            TunIo::new(reader, FakeTunWriter(written)),
        )
        .expect("the driver and its TUN threads");
        VpnNode {
            driver,
            inject,
            sink,
            reader_ended,
            log: Vec::new(),
            cursor: 0,
        }
    }

    fn inject(&self, packet: Vec<u8>) {
        self.inject.send(packet).expect("the TUN reader runs");
    }

    /// The first event after the last one waited for that `matches`, within `limit`.
    async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&node::Event) -> bool,
    ) -> node::Event {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(at) = self.log[self.cursor..].iter().position(&matches) {
                self.cursor += at + 1;
                return self.log[self.cursor - 1].clone();
            }
            self.cursor = self.log.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.driver.next_event()).await {
                Ok(Some(event)) => self.log.push(event),
                Ok(None) => panic!("the node's driver stopped while waiting for {what}"),
                Err(_) => panic!(
                    "timed out after {limit:?} waiting for {what}: {:#?}",
                    self.log
                ),
            }
        }
    }

    fn drain(&mut self) {
        while let Some(event) = self.driver.try_next_event() {
            self.log.push(event);
        }
    }

    async fn status(&mut self) -> node::Status {
        within(
            "the status command",
            Duration::from_secs(5),
            self.driver.command(node::Command::Status),
        )
        .await
        .expect("the node driver runs");
        match self
            .wait_for("the status", Duration::from_secs(5), |e| {
                matches!(e, node::Event::Status(_))
            })
            .await
        {
            node::Event::Status(status) => *status,
            _ => unreachable!("matched above"),
        }
    }

    async fn stats(&mut self) -> node::Stats {
        self.status().await.stats
    }

    /// The next packet written to the TUN, within `limit`.
    async fn received(&self, what: &str, limit: Duration) -> Vec<u8> {
        within(what, limit, self.sink.recv())
            .await
            .expect("the TUN writer runs")
    }

    fn connected_to(&self, vip: Ipv4Addr) -> bool {
        self.log.iter().any(|e| {
            matches!(e, node::Event::Peer { vip: v, to: PeerState::Connected, .. } if *v == vip)
        })
    }

    /// Shut the node and its driver down: the machine, its events, and the
    /// TUN packets dropped; both TUN threads must have ended.
    async fn stop(mut self) -> (Node, Vec<node::Event>, u64) {
        // A node stopped by a fatal refusal still takes the command.
        within(
            "the node's shutdown command",
            Duration::from_secs(5),
            self.driver.command(node::Command::Shutdown),
        )
        .await
        .expect("the node driver runs");
        self.drain();
        let dropped = self.driver.tun_dropped();
        let Self {
            driver,
            inject,
            sink,
            reader_ended,
            log,
            ..
        } = self;
        let machine = within("the node driver stops", Duration::from_secs(10), async {
            driver.stop().await;
            driver.join().await
        })
        .await;
        // The writer thread dropped its end of the sink: it has ended.
        within(
            "the TUN writer thread ends",
            Duration::from_secs(5),
            async { while sink.recv().await.is_ok() {} },
        )
        .await;
        // The reader is still connected (`inject` lives): it ends because the driver did.
        within(
            "the TUN reader thread ends",
            Duration::from_secs(5),
            async {
                while !reader_ended.load(Ordering::Acquire) {
                    task::sleep(Duration::from_millis(5)).await;
                }
            },
        )
        .await;
        drop(inject);
        (machine, log, dropped)
    }
}

// ---- the tests ----------------------------------------------------------------------------

/// Two nodes log in; the first packet crosses the server (the pair has no
/// direct path yet) and wakes the peers, which punch through on loopback
/// (STUN from the async-std responder) and reach CONNECTED; then 200 packets
/// of varied sizes go direct over UDP, byte-exact and in order.
#[test]
fn vpn_on_async_std_packets_cross_through_the_server_then_directly() {
    task::block_on(async {
        let wall = wall();
        let stun = StunResponder::bind(loopback())
            .await
            .expect("a STUN socket");
        let mut server = VpnServer::start(wall).await;
        let mut a = VpnNode::start(node_config(
            server.addr,
            stun.local_addr(),
            A,
            PASSWORD,
            wall,
        ));
        let mut b = VpnNode::start(node_config(
            server.addr,
            stun.local_addr(),
            B,
            PASSWORD,
            wall,
        ));
        for (node, ip) in [(&mut a, A), (&mut b, B)] {
            let event = node
                .wait_for("the login", Duration::from_secs(20), |e| {
                    matches!(e, node::Event::LoggedIn { .. })
                })
                .await;
            assert_eq!(event, node::Event::LoggedIn { ip });
        }
        let joined: Vec<Ipv4Addr> = server
            .drain()
            .iter()
            .filter_map(|e| match e {
                server::Event::Joined { ip, .. } => Some(*ip),
                _ => None,
            })
            .collect();
        assert_eq!(joined.len(), 2, "{:?}", server.events);
        assert!(joined.contains(&A) && joined.contains(&B), "{joined:?}");

        // 1. No direct path yet: through the server (VPN-S23), unchanged.
        let first = udp_packet(A, B, 0, 100);
        a.inject(first.clone());
        let got = b
            .received("the first packet at B", Duration::from_secs(10))
            .await;
        assert_eq!(got, first, "B's TUN gets the packet byte for byte");
        let a_stats = a.stats().await;
        assert_eq!(
            (a_stats.tun_in, a_stats.server_out, a_stats.direct_out),
            (1, 1, 0),
            "{a_stats:?}"
        );
        let b_stats = b.stats().await;
        assert_eq!((b_stats.server_in, b_stats.tun_out), (1, 1), "{b_stats:?}");

        // 2. The server's FORWARD woke B's peer (VPN-S1); both punch through.
        for (node, vip) in [(&mut a, B), (&mut b, A)] {
            let event = node
                .wait_for("the peer CONNECTED", Duration::from_secs(20), |e| {
                    matches!(e, node::Event::Peer { vip: v, to: PeerState::Connected, .. } if *v == vip)
                })
                .await;
            let node::Event::Peer { endpoint, .. } = event else {
                unreachable!("matched above");
            };
            let endpoint = endpoint.expect("a CONNECTED peer has an endpoint");
            assert!(endpoint.ip().is_loopback(), "{endpoint}");
        }

        // 3. Direct both ways, none through the server.
        let a_before = a.stats().await;
        let b_before = b.stats().await;
        let back = udp_packet(B, A, 1, 64);
        b.inject(back.clone());
        assert_eq!(
            a.received("B's packet at A", Duration::from_secs(10)).await,
            back
        );
        let sent: Vec<Vec<u8>> = (0..DIRECT_PACKETS)
            .map(|i| udp_packet(A, B, 100 + i, (usize::from(i) * 97) % 1373))
            .collect();
        let mut got = Vec::with_capacity(sent.len());
        let mut injected = 0;
        let started = Instant::now();
        while got.len() < sent.len() {
            while injected < sent.len() && injected < got.len() + IN_FLIGHT {
                a.inject(sent[injected].clone());
                injected += 1;
            }
            got.push(
                b.received("a direct packet at B", Duration::from_secs(10))
                    .await,
            );
        }
        let took = started.elapsed();
        assert!(
            got == sent,
            "B got {} packets, the first difference at {:?}",
            got.len(),
            got.iter().zip(&sent).position(|(g, s)| g != s)
        );
        let a_after = a.stats().await;
        let b_after = b.stats().await;
        let direct = u64::from(DIRECT_PACKETS);
        assert_eq!(
            a_after.direct_out - a_before.direct_out,
            direct,
            "{a_before:?} {a_after:?}"
        );
        assert_eq!(
            a_after.server_out, a_before.server_out,
            "{a_before:?} {a_after:?}"
        );
        assert_eq!(
            b_after.direct_in - b_before.direct_in,
            direct,
            "{b_before:?} {b_after:?}"
        );
        assert_eq!(
            b_after.server_in, b_before.server_in,
            "{b_before:?} {b_after:?}"
        );
        assert_eq!(b_after.tun_out - b_before.tun_out, direct);
        assert_eq!(a_after.direct_in - a_before.direct_in, 1, "B's packet");
        for stats in [a_after, b_after] {
            assert_eq!(stats.crypto.auth_failed, 0, "{stats:?}");
            assert_eq!(stats.crypto.replayed, 0, "{stats:?}");
            assert_eq!(
                stats.dropped_no_path + stats.dropped_bad_packet + stats.dropped_ttl,
                0,
                "{stats:?}"
            );
        }
        // Nothing more reached either TUN.
        task::sleep(Duration::from_millis(200)).await;
        assert!(a.sink.try_recv().is_err() && b.sink.try_recv().is_err());
        assert!(a.connected_to(B) && b.connected_to(A));
        assert!(took < Duration::from_secs(30), "{took:?}");

        let (a_node, _, a_dropped) = a.stop().await;
        let (b_node, _, b_dropped) = b.stop().await;
        assert_eq!((a_dropped, b_dropped), (0, 0), "TUN packets dropped");
        assert_eq!(a_node.stats().tun_in, u64::from(DIRECT_PACKETS) + 1);
        assert_eq!(b_node.stats().tun_out, u64::from(DIRECT_PACKETS) + 1);
        let (server, _) = server.stop().await;
        assert_eq!(
            server.stats().forwarded_packets,
            1,
            "only the first packet crossed the server: {:?}",
            server.stats()
        );
        let stun = stun.stop().await;
        assert!(stun.answered >= 2, "both nodes asked STUN: {stun:?}");
    });
}

/// A node with the wrong password is refused at its first proof (VMAC), takes
/// the refusal as final (`Event::Fatal`, no reconnect, VPN-N2), and nothing it
/// reads from its TUN reaches anyone.
#[test]
fn vpn_on_async_std_wrong_password_is_refused() {
    task::block_on(async {
        let wall = wall();
        let stun = StunResponder::bind(loopback())
            .await
            .expect("a STUN socket");
        let mut server = VpnServer::start(wall).await;
        let mut b = VpnNode::start(node_config(
            server.addr,
            stun.local_addr(),
            B,
            PASSWORD,
            wall,
        ));
        b.wait_for("B's login", Duration::from_secs(20), |e| {
            matches!(e, node::Event::LoggedIn { .. })
        })
        .await;
        let mut intruder = VpnNode::start(node_config(
            server.addr,
            stun.local_addr(),
            A,
            b"not the password",
            wall,
        ));
        let fatal = intruder
            .wait_for("the refusal", Duration::from_secs(20), |e| {
                matches!(e, node::Event::Fatal { .. })
            })
            .await;
        let node::Event::Fatal { reason } = fatal else {
            unreachable!("matched above");
        };
        assert!(reason.contains("bad password"), "{reason}");

        // The node stopped: what it reads is not sent, and it does not retry
        // (the first reconnect would come after 1 s).
        intruder.inject(udp_packet(A, B, 7, 100));
        task::sleep(Duration::from_millis(1_500)).await;
        intruder.drain();
        let after_fatal = intruder
            .log
            .iter()
            .skip_while(|e| !matches!(e, node::Event::Fatal { .. }))
            .skip(1)
            .collect::<Vec<_>>();
        assert!(after_fatal.is_empty(), "{after_fatal:?}");
        assert!(
            !intruder
                .log
                .iter()
                .any(|e| matches!(e, node::Event::LoggedIn { .. })),
            "{:?}",
            intruder.log
        );
        assert!(b.sink.try_recv().is_err(), "a packet reached B");
        assert!(intruder.sink.try_recv().is_err());

        let events = server.drain().to_vec();
        assert!(
            events.iter().any(|e| matches!(
                e,
                server::Event::Rejected { reason, .. } if reason.starts_with("bad password")
            )),
            "{events:?}"
        );
        let joined: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                server::Event::Joined { ip, .. } => Some(*ip),
                _ => None,
            })
            .collect();
        assert_eq!(joined, [B], "only B logged in: {events:?}");

        let (intruder, _, _) = intruder.stop().await;
        let stats = intruder.stats();
        assert_eq!((stats.server_out, stats.direct_out), (0, 0), "{stats:?}");
        let (b_node, _, _) = b.stop().await;
        assert_eq!(b_node.stats().tun_out, 0);
        let (server, _) = server.stop().await;
        assert_eq!(server.stats().forwarded_packets, 0);
        assert!(server.stats().rejected_auth >= 1, "{:?}", server.stats());
        stun.stop().await;
    });
}
