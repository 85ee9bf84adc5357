//! VPN-N11 against the real kernel: a TUN device opened with offloads
//! (`Tun::open_with_offload`: `IFF_VNET_HDR`, `TUN_F_CSUM | TUN_F_TSO4`), with
//! the test acting as a user-space TCP peer through it, in a fresh network
//! namespace of its own (root only: skipped with a printed reason otherwise,
//! unless `FERRY_REQUIRE_NETNS` is set, as CI does).
//!
//! The kernel's TCP sends TCP/IPv4 super-packets into the device; the test cuts
//! them with `ferry_core::vpn::offload::split` and checks every segment on its
//! own (both checksums, computed here independently, sizes, the byte stream).
//! The other way, the test's segments go through `Coalescer` and the kernel
//! must take the joined super-packet as the segments it stands for.
//!
//! A second test runs the `ferry_mio` driver itself on such a device: the
//! packets a machine writes for the datagrams of one wakeup reach the device
//! joined, across datagrams (VPN-N11's one burst per wakeup), as a packet
//! socket on the device sees.

#![cfg(target_os = "linux")]

#[allow(dead_code)] // shared with tests/tun.rs: this file uses the namespace only
#[path = "support/tun_lab.rs"]
mod tun_lab;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::thread;
use std::time::{Duration, Instant};

use ferry_core::io::{Action, CORE_ID_BIT, Input, Machine, SocketId};
use ferry_core::vpn::offload::{
    Coalescer, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, Split, VNET_HDR_LEN, VnetHdr, split,
};
use ferry_mio::tun::{Tun, TunReader};
use tun_lab::lab;

/// The device's address (a /24) and the user-space peer behind it.
const TUN_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 213, 0, 2), 40_000);
const MTU: usize = 1400;
/// The MSS the peer announces: the MTU less 40 bytes of IPv4 and TCP headers.
const MSS: usize = 1360;
/// The peer's window scale (so the window it announces is about 8 MiB).
const PEER_WSCALE: u8 = 7;
const PEER_ISN: u32 = 0x6f00_0000;

/// Kernel -> peer: this many bytes of [`pattern`].
const DOWN_LEN: usize = 200_000;
/// Peer -> kernel: this many full segments.
const UP_SEGMENTS: usize = 30;

/// How long one read of the device may wait, and each whole phase.
const READ_TIMEOUT: Duration = Duration::from_secs(3);
const PHASE_TIMEOUT: Duration = Duration::from_secs(10);

const TCP: u8 = 6;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// What one run saw, printed at the end (`--nocapture` shows it).
#[derive(Debug, Default)]
struct Report {
    /// Super-packet reads: (IP packet bytes, segments, gso_size).
    super_packets: Vec<(usize, usize, u16)>,
    /// The SYN-ACK's header.
    syn_ack_hdr: VnetHdr,
    /// Super-packet reads that were one segment only.
    one_segment_super_packets: usize,
    /// Reads of the flow that were one packet (`GSO_NONE`).
    single_reads: usize,
    /// Of those, how many had a checksum left to complete (`F_NEEDS_CSUM`).
    left_checksums: usize,
    /// Segments whose data was beyond what had arrived (dropped, resent).
    out_of_order: usize,
    /// Bytes that arrived twice (retransmissions).
    duplicate_bytes: usize,
    /// Reads of anything else (IPv6, ICMP, other flows), skipped: (IP
    /// version, protocol or next header, bytes).
    unrelated: Vec<(u8, u8, usize)>,
    /// Peer -> kernel: the coalescer's writes, (bytes with header, gso_type, gso_size).
    coalesced_writes: Vec<(usize, u8, u16)>,
    /// The kernel's receive window before the peer's burst, in bytes.
    kernel_window: usize,
}

/// VPN-N11: the kernel's TCP hands an offloading TUN device super-packets
/// that `split` cuts into valid wire-sized segments carrying exactly the
/// stream the socket sent, and takes a `Coalescer` super-packet from it as the
/// stream the peer sent.
#[test]
fn tcp_through_an_offloading_tun_device_splits_and_coalesces() {
    let Some(ns) = lab(
        "tcp_through_an_offloading_tun_device_splits_and_coalesces",
        &[],
    ) else {
        return;
    };
    // The body runs on a thread inside the namespace; `ns` deletes it on drop,
    // a panic included (`run_inside` re-raises it here, then `ns` drops).
    let report = ns.run_inside(talk_tcp_through_the_device);
    eprintln!("VPN-N11 offload run: {report:?}");
}

fn talk_tcp_through_the_device() -> Report {
    let tun = Tun::open_with_offload("").expect("a TUN device with offloads");
    assert!(tun.vnet_hdr(), "open_with_offload: reads carry a header");
    tun.set_address(TUN_IP, 24).expect("an address");
    tun.set_mtu(MTU as u32).expect("an MTU");
    tun.up().expect("the device up");
    let listener = TcpListener::bind((TUN_IP, 0)).expect("a listener on the device's address");
    let port = listener.local_addr().expect("the listener's port").port();
    let mut peer = Peer::new(tun, SocketAddrV4::new(TUN_IP, port));
    let mut report = Report::default();

    // 1. The handshake, the peer's half by hand.
    // Options: MSS 1360, NOP, window scale 7 (no timestamps, no SACK).
    let options = [2, 4, (MSS >> 8) as u8, MSS as u8, 1, 3, 3, PEER_WSCALE];
    peer.send(&Tcp {
        seq: PEER_ISN,
        ack: 0,
        flags: SYN,
        window: u16::MAX,
        options: &options,
        payload: &[],
    });
    let deadline = Instant::now() + PHASE_TIMEOUT;
    let syn_ack_packet = loop {
        let (hdr, mut packet) = peer.recv(deadline, &mut report, "the SYN-ACK");
        let plan = split(&hdr, &mut packet).expect("the SYN-ACK prepared");
        assert_eq!(plan, Split::Whole, "the SYN-ACK is one packet");
        check_wire_packet(&packet);
        let seen = Seen::parse(&packet);
        assert_eq!(seen.flags & RST, 0, "the kernel reset the connection");
        if seen.flags & (SYN | ACK) == SYN | ACK {
            report.syn_ack_hdr = hdr;
            break packet;
        }
    };
    let syn_ack = Seen::parse(&syn_ack_packet);
    assert_eq!(
        syn_ack.ack,
        PEER_ISN.wrapping_add(1),
        "the SYN-ACK acks the SYN"
    );
    let kernel_wscale = window_scale(syn_ack.options).expect("the kernel scales its window too");
    let data_start = syn_ack.seq.wrapping_add(1);
    let mut snd_nxt = PEER_ISN.wrapping_add(1);
    peer.ack(snd_nxt, data_start);
    let accepted = accept_within(&listener, deadline);

    // 2. Kernel -> peer: the socket writes, the peer reads and acks.
    let down = pattern(DOWN_LEN, 0);
    let writer = {
        let mut socket = accepted.try_clone().expect("a second handle on the socket");
        let down = down.clone();
        socket
            .set_write_timeout(Some(PHASE_TIMEOUT))
            .expect("a write timeout");
        thread::spawn(move || socket.write_all(&down))
    };
    let mut received = Vec::with_capacity(DOWN_LEN);
    let mut segment = Vec::new();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while received.len() < DOWN_LEN {
        let (hdr, mut packet) = peer.recv(deadline, &mut report, "the socket's data");
        let segments = match split(&hdr, &mut packet).expect("a read split") {
            Split::Whole => {
                assert_eq!(hdr.gso_type, GSO_NONE, "a whole packet is no super-packet");
                report.single_reads += 1;
                report.left_checksums += usize::from(hdr.flags & F_NEEDS_CSUM != 0);
                vec![packet]
            }
            Split::Tcp(plan) => {
                assert_eq!(hdr.gso_type & !GSO_ECN, GSO_TCPV4, "a TCPv4 super-packet");
                if plan.count() > 1 {
                    report
                        .super_packets
                        .push((packet.len(), plan.count(), hdr.gso_size));
                } else {
                    report.one_segment_super_packets += 1;
                }
                (0..plan.count())
                    .map(|i| {
                        plan.segment(&packet, i, &mut segment);
                        segment.clone()
                    })
                    .collect()
            }
        };
        for segment in &segments {
            check_wire_packet(segment);
            let seen = Seen::parse(segment);
            assert_eq!(seen.flags & (SYN | RST | FIN), 0, "data, not {seen:?}");
            report.kernel_window = usize::from(seen.window) << kernel_wscale;
            take_data(&mut received, &down, data_start, &seen, &mut report);
        }
        peer.ack(snd_nxt, data_start.wrapping_add(received.len() as u32));
    }
    assert_eq!(received.len(), DOWN_LEN);
    if let Some(at) = received.iter().zip(&down).position(|(a, b)| a != b) {
        panic!("the stream differs from what the socket wrote at byte {at}");
    }
    writer
        .join()
        .expect("the writer thread")
        .expect("the socket wrote everything");
    assert!(
        !report.super_packets.is_empty(),
        "no read was a TCPv4 super-packet of more than one segment: {report:?}"
    );

    // 3. Peer -> kernel: 30 full segments, joined by the coalescer.
    let up = pattern(UP_SEGMENTS * MSS, 1);
    assert!(
        report.kernel_window >= up.len(),
        "precondition: the kernel's window ({} bytes) takes the whole burst",
        report.kernel_window
    );
    let kernel_nxt = data_start.wrapping_add(DOWN_LEN as u32);
    let mut coalescer = Coalescer::new();
    for (i, chunk) in up.chunks(MSS).enumerate() {
        let last = i + 1 == UP_SEGMENTS;
        let packet = peer.packet(&Tcp {
            seq: snd_nxt,
            ack: kernel_nxt,
            flags: if last { ACK | PSH } else { ACK },
            window: u16::MAX,
            options: &[],
            payload: chunk,
        });
        check_wire_packet(&packet);
        coalescer.push(&packet);
        snd_nxt = snd_nxt.wrapping_add(chunk.len() as u32);
    }
    let mut written = Vec::new();
    coalescer.drain(|write| {
        let hdr = VnetHdr::parse(write).expect("a drained write starts with a header");
        report
            .coalesced_writes
            .push((write.len(), hdr.gso_type, hdr.gso_size));
        written.push((write.len(), peer.tun.write(write)));
    });
    for (len, result) in &written {
        let n = result.as_ref().expect("the device took the write");
        assert_eq!(*n, *len, "the whole write went to the device");
    }
    assert!(
        !written.is_empty() && written.len() <= 2 && written.len() < UP_SEGMENTS,
        "{UP_SEGMENTS} segments made {} writes",
        written.len()
    );
    let mut got = vec![0; up.len()];
    let mut reading = accepted;
    reading
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("a read timeout");
    reading
        .read_exact(&mut got)
        .expect("the socket reads the peer's 40_800 bytes");
    if let Some(at) = got.iter().zip(&up).position(|(a, b)| a != b) {
        panic!("the socket read something else than the peer sent at byte {at}");
    }
    reading.set_nonblocking(true).expect("non-blocking");
    let more = reading.read(&mut [0; 1]);
    assert!(
        matches!(&more, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "nothing beyond the burst: {more:?}"
    );
    // And the kernel acks it all (it took the super-packet for 30 segments).
    let deadline = Instant::now() + READ_TIMEOUT;
    loop {
        let (hdr, mut packet) = peer.recv(deadline, &mut report, "the ack of the burst");
        if let Split::Whole = split(&hdr, &mut packet).expect("a read split") {
            check_wire_packet(&packet);
            if Seen::parse(&packet).ack == snd_nxt {
                break;
            }
        }
    }
    report
}

/// Datagrams the driver's test machine is sent after [`STALL_DATAGRAM`].
const JOINED_SEGMENTS: usize = 24;
/// The datagram that makes the test machine sleep [`STALL`] inside
/// `handle_input`, so the next ones wait in the socket for the same wakeup.
const STALL_DATAGRAM: &[u8] = b"stall";
const STALL: Duration = Duration::from_millis(500);

/// VPN-N11, one burst per wakeup: the driver feeds the datagrams a wakeup
/// reads (up to 16 reads) with its sockets corked, so the `WriteTun`s they
/// cause are joined per TCP flow across datagrams and reach the device as
/// a few super-packets, in order, rather than one write per datagram.
#[test]
fn a_wakeups_datagrams_reach_an_offloading_device_joined() {
    let Some(ns) = lab("a_wakeups_datagrams_reach_an_offloading_device_joined", &[]) else {
        return;
    };
    let writes = ns.run_inside(drive_datagrams_to_the_device);
    eprintln!("VPN-N11 joined writes (IP bytes each): {writes:?}");
}

fn drive_datagrams_to_the_device() -> Vec<usize> {
    let tun = Tun::open_with_offload("").expect("a TUN device with offloads");
    tun.set_address(TUN_IP, 24).expect("an address");
    tun.set_mtu(MTU as u32).expect("an MTU");
    tun.up().expect("the device up");
    let tap = PacketTap::open();
    let (bound_tx, bound) = std::sync::mpsc::channel();
    let handle = ferry_mio::driver::spawn_with_tun(TunWriter::new(), tun, move |local| {
        let _ = bound_tx.send(local);
    })
    .expect("the driver");
    let driver_addr: SocketAddr = bound
        .recv_timeout(READ_TIMEOUT)
        .expect("the machine's UDP socket bound");

    // One flow's segments, contiguous, each its own datagram.
    let remote = SocketAddrV4::new(TUN_IP, 9);
    let stream = pattern(JOINED_SEGMENTS * MSS, 2);
    let segments: Vec<Vec<u8>> = stream
        .chunks(MSS)
        .enumerate()
        .map(|(i, chunk)| {
            let tcp = Tcp {
                seq: PEER_ISN.wrapping_add((i * MSS) as u32),
                ack: 1,
                flags: ACK,
                window: u16::MAX,
                options: &[],
                payload: chunk,
            };
            tcp_ipv4(PEER, remote, 100 + i as u16, &tcp)
        })
        .collect();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    sender.send_to(STALL_DATAGRAM, driver_addr).expect("sent");
    // The driver is now asleep in the machine; these wait for its next reads.
    thread::sleep(Duration::from_millis(50));
    for segment in &segments {
        sender.send_to(segment, driver_addr).expect("sent");
    }

    // What the device took, as the kernel's packet tap sees it.
    let mut writes = Vec::new();
    let mut received = Vec::new();
    let deadline = Instant::now() + PHASE_TIMEOUT;
    while received.len() < stream.len() {
        assert!(
            Instant::now() < deadline,
            "the device took {} of {} bytes in writes {writes:?}",
            received.len(),
            stream.len()
        );
        let Some(packet) = tap.recv() else {
            continue;
        };
        if !is_flow(&packet, PEER, remote) {
            continue;
        }
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        assert_eq!(total, packet.len(), "a joined packet's IP total length");
        let seen = Seen::parse(&packet);
        assert_eq!(
            seen.seq,
            PEER_ISN.wrapping_add(received.len() as u32),
            "writes in order, nothing lost or doubled (after {writes:?})"
        );
        received.extend_from_slice(seen.payload);
        writes.push(packet.len());
    }
    assert!(
        received == stream,
        "the device took another byte stream than was sent"
    );
    // 1 + 15 datagrams in the first wakeup, 9 in the next: two writes.
    // One write per datagram (24) would mean no joining across datagrams.
    assert!(
        writes.len() <= 3,
        "{JOINED_SEGMENTS} datagrams read in two wakeups made {} device writes: {writes:?}",
        writes.len()
    );
    handle.shutdown();
    handle.join().expect("the driver ends cleanly");
    writes
}

/// The driver test's machine: binds one UDP socket (reported as its event),
/// writes each datagram to the TUN device, and sleeps on [`STALL_DATAGRAM`].
struct TunWriter {
    actions: VecDeque<Action>,
    bound: Option<SocketAddr>,
}

impl TunWriter {
    fn new() -> TunWriter {
        TunWriter {
            actions: VecDeque::from([Action::BindUdp {
                socket: SocketId(CORE_ID_BIT | 1),
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            }]),
            bound: None,
        }
    }
}

impl Machine for TunWriter {
    type Command = ();
    type Event = SocketAddr;

    fn handle_input(&mut self, input: Input<'_>, _now: Instant) {
        match input {
            Input::UdpBound { local, .. } => self.bound = Some(local),
            Input::Datagram { data, .. } if data == STALL_DATAGRAM => thread::sleep(STALL),
            Input::Datagram { data, .. } => self.actions.push_back(Action::WriteTun(data.to_vec())),
            _ => {}
        }
    }

    fn handle_command(&mut self, (): (), _now: Instant) {}

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<SocketAddr> {
        self.bound.take()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// An `AF_PACKET` socket: every IPv4 packet the namespace's devices hand
/// the kernel, whole (a super-packet as one), as the kernel's taps see it.
/// (It is not bound to the TUN device: callers pick their flow, which only
/// the device carries.)
struct PacketTap {
    fd: OwnedFd,
}

impl PacketTap {
    fn open() -> PacketTap {
        use rustix::net::{AddressFamily, SocketType, eth, sockopt};
        let fd = rustix::net::socket(AddressFamily::PACKET, SocketType::DGRAM, Some(eth::IP))
            .expect("a packet socket");
        sockopt::set_socket_timeout(
            &fd,
            sockopt::Timeout::Recv,
            Some(Duration::from_millis(200)),
        )
        .expect("a receive timeout");
        PacketTap { fd }
    }

    /// The next packet, or `None` after the receive timeout.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        match rustix::net::recv(&self.fd, &mut buf, rustix::net::RecvFlags::empty()) {
            Ok((n, _)) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::INTR => None,
            Err(e) => panic!("reading the packet socket: {e}"),
        }
    }
}

/// The user-space TCP peer: one flow, [`PEER`] <-> `remote`, through the device.
struct Peer {
    tun: Tun,
    reader: TunReader,
    remote: SocketAddrV4,
    buf: Vec<u8>,
    ip_id: u16,
}

impl Peer {
    fn new(tun: Tun, remote: SocketAddrV4) -> Peer {
        let reader = tun.reader(READ_TIMEOUT).expect("a reader of the device");
        Peer {
            tun,
            reader,
            remote,
            buf: vec![0; VNET_HDR_LEN + 65_535],
            ip_id: 1,
        }
    }

    /// A packet from the peer to the kernel, both checksums filled.
    fn packet(&mut self, tcp: &Tcp<'_>) -> Vec<u8> {
        self.ip_id = self.ip_id.wrapping_add(1);
        tcp_ipv4(PEER, self.remote, self.ip_id, tcp)
    }

    /// Write one packet with an all-zero header (nothing to offload).
    fn send(&mut self, tcp: &Tcp<'_>) {
        let packet = self.packet(tcp);
        let n = self
            .tun
            .write_parts(&VnetHdr::default().to_bytes(), &packet)
            .expect("the device took the packet");
        assert_eq!(n, VNET_HDR_LEN + packet.len());
    }

    /// A cumulative ACK of everything before `ack`, with the largest window.
    fn ack(&mut self, seq: u32, ack: u32) {
        self.send(&Tcp {
            seq,
            ack,
            flags: ACK,
            window: u16::MAX,
            options: &[],
            payload: &[],
        });
    }

    /// The next read of this flow (kernel -> peer): its header and packet.
    /// Anything else is counted and skipped. Panics at `deadline`.
    fn recv(&mut self, deadline: Instant, report: &mut Report, what: &str) -> (VnetHdr, Vec<u8>) {
        loop {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            let n = self
                .reader
                .read(&mut self.buf)
                .unwrap_or_else(|e| panic!("reading the device for {what}: {e}"));
            let hdr = VnetHdr::parse(&self.buf[..n]).expect("a read starts with a header");
            let packet = &self.buf[VNET_HDR_LEN..n];
            if is_flow(packet, self.remote, PEER) {
                return (hdr, packet.to_vec());
            }
            let what = match packet.first().map(|b| b >> 4) {
                Some(4) if packet.len() >= 20 => (4, packet[9], packet.len()),
                Some(6) if packet.len() >= 40 => (6, packet[6], packet.len()),
                _ => (0, 0, packet.len()),
            };
            report.unrelated.push(what);
        }
    }
}

/// Append what `seen` carries at the end of `received`, checking any part
/// already there; data past a gap is dropped (the kernel sends it again).
fn take_data(
    received: &mut Vec<u8>,
    expected: &[u8],
    data_start: u32,
    seen: &Seen<'_>,
    report: &mut Report,
) {
    if seen.payload.is_empty() {
        return;
    }
    let offset = seen.seq.wrapping_sub(data_start) as usize;
    if offset > received.len() {
        report.out_of_order += 1;
        return;
    }
    let end = offset + seen.payload.len();
    assert!(
        end <= expected.len(),
        "data beyond the stream: {offset}..{end}"
    );
    let again = received.len().min(end) - offset;
    assert_eq!(
        &received[offset..offset + again],
        &seen.payload[..again],
        "resent bytes at {offset} differ"
    );
    report.duplicate_bytes += again;
    received.extend_from_slice(&seen.payload[again..]);
}

/// Accept the connection the handshake made, waiting until `deadline`.
fn accept_within(listener: &TcpListener, deadline: Instant) -> TcpStream {
    listener.set_nonblocking(true).expect("non-blocking");
    loop {
        match listener.accept() {
            Ok((socket, from)) => {
                assert_eq!(from, SocketAddr::V4(PEER), "the connection is the peer's");
                socket.set_nonblocking(false).expect("blocking");
                return socket;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no connection to accept");
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// `len` bytes that say where they are (a multiplicative hash of the index),
/// so a lost, doubled or misplaced segment shows.
fn pattern(len: usize, salt: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(salt).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// A TCP segment to build.
#[derive(Debug, Clone, Copy)]
struct Tcp<'a> {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    /// A multiple of 4 bytes.
    options: &'a [u8],
    payload: &'a [u8],
}

/// A TCP/IPv4 packet (no IP options, DF, TTL 64) with both checksums.
fn tcp_ipv4(from: SocketAddrV4, to: SocketAddrV4, ip_id: u16, tcp: &Tcp<'_>) -> Vec<u8> {
    assert_eq!(tcp.options.len() % 4, 0, "options are padded");
    let tcp_len = 20 + tcp.options.len();
    let total = 20 + tcp_len + tcp.payload.len();
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&ip_id.to_be_bytes());
    p.extend_from_slice(&[0x40, 0, 64, TCP, 0, 0]);
    p.extend_from_slice(&from.ip().octets());
    p.extend_from_slice(&to.ip().octets());
    p.extend_from_slice(&from.port().to_be_bytes());
    p.extend_from_slice(&to.port().to_be_bytes());
    p.extend_from_slice(&tcp.seq.to_be_bytes());
    p.extend_from_slice(&tcp.ack.to_be_bytes());
    p.extend_from_slice(&[(tcp_len as u8 / 4) << 4, tcp.flags]);
    p.extend_from_slice(&tcp.window.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    p.extend_from_slice(tcp.options);
    p.extend_from_slice(tcp.payload);
    let sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    let sum = checksum(&p[20..], pseudo_header(&p));
    p[36..38].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071) of `bytes`, starting from `sum`: what
/// goes in the field; over a range whose field is right, 0.
fn checksum(bytes: &[u8], mut sum: u64) -> u16 {
    for pair in bytes.chunks(2) {
        sum += u64::from(u16::from_be_bytes([
            pair[0],
            pair.get(1).copied().unwrap_or(0),
        ]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP pseudo-header's sum of an IPv4 packet without options.
fn pseudo_header(packet: &[u8]) -> u64 {
    let words = packet[12..20]
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])));
    words.sum::<u64>() + u64::from(TCP) + (packet.len() - 20) as u64
}

/// What may go on the wire: TCP/IPv4 without IP options, no larger than the
/// MTU, its total length exact, both checksums right.
fn check_wire_packet(packet: &[u8]) {
    assert!(
        packet.len() >= 40,
        "a TCP/IPv4 packet: {} bytes",
        packet.len()
    );
    assert_eq!(packet[0], 0x45, "IPv4 without options");
    assert_eq!(packet[9], TCP);
    assert!(packet.len() <= MTU, "{} bytes, over the MTU", packet.len());
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    assert_eq!(total, packet.len(), "the IP total length");
    assert_eq!(checksum(&packet[..20], 0), 0, "the IP header checksum");
    assert_eq!(
        checksum(&packet[20..], pseudo_header(packet)),
        0,
        "the TCP checksum of {:?}",
        Seen::parse(packet)
    );
}

/// Whether `packet` is TCP/IPv4 from `from` to `to`.
fn is_flow(packet: &[u8], from: SocketAddrV4, to: SocketAddrV4) -> bool {
    let ihl = usize::from(packet.first().map_or(0, |b| b & 0x0f)) * 4;
    packet.len() >= ihl + 20
        && packet[0] >> 4 == 4
        && packet[9] == TCP
        && packet[12..16] == from.ip().octets()
        && packet[16..20] == to.ip().octets()
        && packet[ihl..ihl + 2] == from.port().to_be_bytes()
        && packet[ihl + 2..ihl + 4] == to.port().to_be_bytes()
}

/// The TCP fields of a TCP/IPv4 packet without IP options.
struct Seen<'a> {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    options: &'a [u8],
    payload: &'a [u8],
}

impl fmt::Debug for Seen<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TCP seq {} ack {} flags {:#04x} window {}, {} bytes of payload",
            self.seq,
            self.ack,
            self.flags,
            self.window,
            self.payload.len()
        )
    }
}

impl Seen<'_> {
    fn parse(packet: &[u8]) -> Seen<'_> {
        let tcp = &packet[20..];
        let word = |at: usize| u32::from_be_bytes([tcp[at], tcp[at + 1], tcp[at + 2], tcp[at + 3]]);
        let tcp_len = usize::from(tcp[12] >> 4) * 4;
        Seen {
            seq: word(4),
            ack: word(8),
            flags: tcp[13],
            window: u16::from_be_bytes([tcp[14], tcp[15]]),
            options: &tcp[20..tcp_len],
            payload: &tcp[tcp_len..],
        }
    }
}

/// The shift of a window-scale option among TCP `options`.
fn window_scale(mut options: &[u8]) -> Option<u8> {
    while let [kind, rest @ ..] = options {
        match kind {
            0 => return None,
            1 => options = rest,
            _ => {
                let len = usize::from(*rest.first()?);
                if *kind == 3 && len == 3 {
                    return rest.get(1).copied();
                }
                options = options.get(len.max(2)..)?;
            }
        }
    }
    None
}
