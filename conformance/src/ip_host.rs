//! # Virtual IP hosts for the simulator, on smoltcp
//!
//! An [`IpHost`] is one IPv4 host with a real TCP/IP stack and no kernel: a
//! [smoltcp] `Interface` (medium IP, so packets are bare IPv4 datagrams with
//! no link header, exactly what a TUN device carries) over an in-memory device.
//! Packets reach it through [`IpHost::deliver`] and leave it through
//! [`IpHost::take_outgoing`]; time moves only when the caller says so
//! ([`IpHost::poll`], [`IpHost::poll_at`]). That makes it a sans-IO machine
//! like ferry's own: the simulator can put one on each side of the p2p VPN
//! overlay (a node's `Action::WriteTun` packets go to [`IpHost::deliver`], the
//! host's outgoing packets go back in as `Input::TunPacket`) and carry a real
//! TCP connection across it, with retransmission, reordering, duplicate
//! suppression and flow control all done by an independent implementation
//! rather than by a test double that shares the VPN's assumptions.
//!
//! Why smoltcp: it is a complete, widely used TCP/IP stack that is sans-IO by
//! design (the application owns the device, the clock and the poll loop), it
//! builds without std-specific IO (`default-features = false`, only `std`,
//! `medium-ip`, `proto-ipv4` and `socket-tcp`), it compiles in a couple of
//! seconds, and with a fixed random seed it is deterministic: the same inputs
//! at the same synthetic instants give the same packets, byte for byte.
//!
//! [`Transfer`] drives a bulk transfer of a seeded pseudo-random byte pattern
//! from one host's socket to another's and checks every received byte in
//! order, with a CRC-32 of each side.
//!
//! ## Limits
//! - IPv4 only, one address per host; every destination outside the prefix
//!   goes out the one device too (a default route), so there is no routing.
//! - TCP only (no UDP, no ICMP echo). Each socket carries one connection: a
//!   listening socket becomes that connection when a SYN arrives, so a host
//!   that should accept N connections calls [`IpHost::listen`] N times.
//! - smoltcp's TCP is simple: no congestion control (these features are off),
//!   no SACK-based recovery (fast retransmit on duplicate ACKs and the RTO
//!   only), a minimum RTO of one second, at most a few out-of-order segments
//!   held for reassembly. Fine for correctness; not a model of Linux's timing.
//! - A known smoltcp 0.14 bug: when the only thing unacknowledged is the FIN
//!   (all data acknowledged) and three duplicate ACKs arrive (for example
//!   challenge ACKs for stale duplicated segments), smoltcp starts a fast
//!   retransmit that sends nothing and idles the retransmit timer, so the FIN
//!   is never sent again and the socket stays in FIN-WAIT-1 (or CLOSING /
//!   LAST-ACK) with [`IpHost::poll_at`] answering `None`. The bytes all
//!   arrive; only the close can hang. A receiver that ignored that FIN (it
//!   came ahead of a missing segment) never sees it. `tests/ip_host.rs` pins
//!   the behaviour so an upgrade that fixes it is noticed. [`Transfer`] closes
//!   only once every byte is acknowledged, which makes it rarer.
//! - No IP fragmentation: packets over the MTU given to [`IpHost::new`] are
//!   never sent (TCP keeps under it through its MSS), and arriving fragments
//!   are dropped.
//! - Time only goes forward: an [`std::time::Instant`] earlier than the
//!   host's epoch (the first instant it is given, or the one passed to
//!   [`IpHost::with_epoch`]) counts as the epoch itself.

use std::collections::VecDeque;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

pub use smoltcp::socket::tcp::State as TcpState;

/// Bytes of each TCP socket's receive buffer and of its send buffer.
pub const TCP_BUFFER: usize = 64 * 1024;

/// First local port [`IpHost::connect`] hands out (the IANA dynamic range).
const EPHEMERAL_FIRST: u16 = 49152;

/// One TCP socket of an [`IpHost`] (only meaningful to the host that made it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TcpHandle(SocketHandle);

/// What an [`IpHost`] has seen so far, for determinism checks and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IpHostStats {
    /// Packets handed to [`IpHost::deliver`].
    pub delivered: u64,
    /// Bytes in them.
    pub delivered_bytes: u64,
    /// Packets the host emitted (returned or still waiting in `take_outgoing`).
    pub emitted: u64,
    /// Bytes in them.
    pub emitted_bytes: u64,
}

/// The in-memory device: packets in, packets out, no link header.
#[derive(Debug)]
struct MemDevice {
    mtu: usize,
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

impl Device for MemDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: SmolInstant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: SmolInstant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Checksums are computed and verified (the default): the packets are
        // real IPv4 and could be written to a kernel TUN device as they are.
        caps
    }
}

struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        self.0.push(packet);
        result
    }
}

/// One virtual IPv4 host: a smoltcp interface and its TCP sockets.
pub struct IpHost {
    iface: Interface,
    device: MemDevice,
    sockets: SocketSet<'static>,
    /// The instant that is the stack's time zero, once known.
    epoch: Option<Instant>,
    addr: Ipv4Addr,
    prefix: u8,
    next_port: u16,
    /// Counts up to the last `take_outgoing` (the device's tx queue is added).
    stats: IpHostStats,
}

impl fmt::Debug for IpHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpHost")
            .field("addr", &self.addr)
            .field("prefix", &self.prefix)
            .field("mtu", &self.device.mtu)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl IpHost {
    /// A host at `addr/prefix` whose packets are at most `mtu` bytes (the IP
    /// header included). `seed` fixes everything random in the stack (initial
    /// sequence numbers, IP identifiers) and the first ephemeral port. The
    /// stack's time zero is the first instant given to [`IpHost::poll`] or
    /// [`IpHost::poll_at`], so the host never reads a real clock and a
    /// synthetic clock replays exactly.
    pub fn new(addr: Ipv4Addr, prefix: u8, mtu: usize, seed: u64) -> Self {
        Self::build(addr, prefix, mtu, seed, None)
    }

    /// [`IpHost::new`] with the instant that counts as the stack's time zero
    /// given up front (say the simulator's clock base).
    pub fn with_epoch(addr: Ipv4Addr, prefix: u8, mtu: usize, seed: u64, epoch: Instant) -> Self {
        Self::build(addr, prefix, mtu, seed, Some(epoch))
    }

    fn build(addr: Ipv4Addr, prefix: u8, mtu: usize, seed: u64, epoch: Option<Instant>) -> Self {
        assert!(
            prefix <= 32,
            "IpHost: prefix /{prefix} is not an IPv4 prefix"
        );
        // 20 bytes of IPv4 header, 20 of TCP header, and at least one byte.
        assert!(
            mtu >= 41,
            "IpHost: MTU {mtu} leaves no room for a TCP segment"
        );
        let mut device = MemDevice {
            mtu,
            rx: VecDeque::new(),
            tx: Vec::new(),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut device, SmolInstant::ZERO);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(addr), prefix))
                .expect("IpHost: smoltcp has room for one address");
        });
        // With medium IP the gateway is never looked up (there is no neighbour
        // to resolve); the route only makes every destination reachable.
        iface
            .routes_mut()
            .add_default_ipv4_route(addr)
            .expect("IpHost: smoltcp has room for a default route");
        let span = u64::from(u16::MAX - EPHEMERAL_FIRST) + 1;
        IpHost {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            epoch,
            addr,
            prefix,
            next_port: EPHEMERAL_FIRST + (splitmix64(seed) % span) as u16,
            stats: IpHostStats::default(),
        }
    }

    /// The host's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The host's prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The largest packet the host sends.
    pub fn mtu(&self) -> usize {
        self.device.mtu
    }

    /// The instant that is time zero for the stack, once known.
    pub fn epoch(&self) -> Option<Instant> {
        self.epoch
    }

    /// Counts of packets in and out so far.
    pub fn stats(&self) -> IpHostStats {
        let mut stats = self.stats;
        for packet in &self.device.tx {
            stats.emitted += 1;
            stats.emitted_bytes += packet.len() as u64;
        }
        stats
    }

    // ---- packets -----------------------------------------------------------------

    /// A packet arrives from the network (for the VPN: what the node wrote
    /// with `Action::WriteTun`). It is processed at the next [`IpHost::poll`];
    /// one that is malformed, fails its checksum or is for another address is
    /// dropped silently there.
    pub fn deliver(&mut self, packet: &[u8]) {
        self.stats.delivered += 1;
        self.stats.delivered_bytes += packet.len() as u64;
        self.device.rx.push_back(packet.to_vec());
    }

    /// The packets the host sent since the last call, oldest first (for the
    /// VPN: each is an `Input::TunPacket`).
    pub fn take_outgoing(&mut self) -> Vec<Vec<u8>> {
        self.stats = self.stats();
        std::mem::take(&mut self.device.tx)
    }

    // ---- time --------------------------------------------------------------------

    fn smol_instant(&mut self, now: Instant) -> SmolInstant {
        let epoch = *self.epoch.get_or_insert(now);
        let micros = now.saturating_duration_since(epoch).as_micros();
        SmolInstant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }

    fn std_instant(epoch: Instant, at: SmolInstant) -> Instant {
        let micros = u64::try_from(at.total_micros()).unwrap_or(0);
        epoch + Duration::from_micros(micros)
    }

    /// Let the stack run at `now`: process every delivered packet, fire due
    /// timers (retransmissions, delayed ACKs, TIME-WAIT) and send what the
    /// sockets have queued. Returns whether some socket's state may have
    /// changed (data arrived, a connection opened or closed).
    pub fn poll(&mut self, now: Instant) -> bool {
        let at = self.smol_instant(now);
        let result = self.iface.poll(at, &mut self.device, &mut self.sockets);
        result == smoltcp::iface::PollResult::SocketStateChanged
    }

    /// When the stack next needs [`IpHost::poll`] if nothing arrives before:
    /// `None` when only a packet can wake it, never earlier than `now` (an
    /// overdue timer answers `now`). Takes `&mut self` because smoltcp's does.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let at = self.smol_instant(now);
        let wake = self.iface.poll_at(at, &self.sockets)?;
        let epoch = self.epoch.unwrap_or(now);
        Some(Self::std_instant(epoch, wake).max(now))
    }

    // ---- TCP ---------------------------------------------------------------------

    fn new_socket(&mut self) -> tcp::Socket<'static> {
        tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        )
    }

    fn socket(&self, handle: TcpHandle) -> &tcp::Socket<'static> {
        self.sockets.get::<tcp::Socket<'static>>(handle.0)
    }

    fn socket_mut(&mut self, handle: TcpHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'static>>(handle.0)
    }

    /// A new socket listening on `port`; it becomes the connection of the
    /// first SYN that reaches it.
    pub fn listen(&mut self, port: u16) -> TcpHandle {
        let mut socket = self.new_socket();
        if let Err(e) = socket.listen(port) {
            panic!("IpHost {}: listen on port {port}: {e}", self.addr);
        }
        TcpHandle(self.sockets.add(socket))
    }

    /// A new socket connecting from the next ephemeral port to
    /// `remote:port`; the SYN leaves at the next [`IpHost::poll`].
    pub fn connect(&mut self, remote: Ipv4Addr, port: u16) -> TcpHandle {
        let local_port = self.next_port;
        self.next_port = if self.next_port == u16::MAX {
            EPHEMERAL_FIRST
        } else {
            self.next_port + 1
        };
        let mut socket = self.new_socket();
        if let Err(e) = socket.connect(
            self.iface.context(),
            (IpAddress::Ipv4(remote), port),
            local_port,
        ) {
            panic!("IpHost {}: connect to {remote}:{port}: {e}", self.addr);
        }
        TcpHandle(self.sockets.add(socket))
    }

    /// Queue as much of `data` as fits in the send buffer; returns how many
    /// bytes were taken (0 when the buffer is full or the socket cannot send).
    pub fn send(&mut self, handle: TcpHandle, data: &[u8]) -> usize {
        self.socket_mut(handle).send_slice(data).unwrap_or(0)
    }

    /// Everything received in order so far (empty when nothing is waiting,
    /// and after the peer's FIN).
    pub fn recv(&mut self, handle: TcpHandle) -> Vec<u8> {
        let socket = self.socket_mut(handle);
        let mut out = Vec::with_capacity(socket.recv_queue());
        // The receive buffer is a ring: a wrapped queue takes two reads.
        while socket.can_recv() {
            match socket.recv(|bytes| (bytes.len(), bytes.to_vec())) {
                Ok(chunk) if !chunk.is_empty() => out.extend_from_slice(&chunk),
                _ => break,
            }
        }
        out
    }

    /// Whether the connection is established (data can flow both ways).
    pub fn is_established(&self, handle: TcpHandle) -> bool {
        self.socket(handle).state() == TcpState::Established
    }

    /// Whether the local side may still send (it has not closed).
    pub fn may_send(&self, handle: TcpHandle) -> bool {
        self.socket(handle).may_send()
    }

    /// Whether data may still arrive (no FIN from the peer yet).
    pub fn may_recv(&self, handle: TcpHandle) -> bool {
        self.socket(handle).may_recv()
    }

    /// Bytes queued to send that the peer has not acknowledged yet.
    pub fn send_queue(&self, handle: TcpHandle) -> usize {
        self.socket(handle).send_queue()
    }

    /// Bytes [`IpHost::send`] would take now (free space in the send buffer).
    pub fn send_space(&self, handle: TcpHandle) -> usize {
        let socket = self.socket(handle);
        socket.send_capacity() - socket.send_queue()
    }

    /// Bytes received and not yet taken by [`IpHost::recv`].
    pub fn recv_queue(&self, handle: TcpHandle) -> usize {
        self.socket(handle).recv_queue()
    }

    /// Close the sending half: a FIN follows the queued bytes.
    pub fn close(&mut self, handle: TcpHandle) {
        self.socket_mut(handle).close();
    }

    /// Drop the connection with an RST.
    pub fn abort(&mut self, handle: TcpHandle) {
        self.socket_mut(handle).abort();
    }

    /// The socket's TCP state (its `Display` is the RFC 793 name).
    pub fn state(&self, handle: TcpHandle) -> TcpState {
        self.socket(handle).state()
    }

    /// The peer's address and port, once there is one.
    pub fn remote_endpoint(&self, handle: TcpHandle) -> Option<(Ipv4Addr, u16)> {
        let endpoint = self.socket(handle).remote_endpoint()?;
        match std::net::IpAddr::from(endpoint.addr) {
            std::net::IpAddr::V4(addr) => Some((addr, endpoint.port)),
            std::net::IpAddr::V6(_) => None,
        }
    }

    /// The local address and port, once connected.
    pub fn local_endpoint(&self, handle: TcpHandle) -> Option<(Ipv4Addr, u16)> {
        let endpoint = self.socket(handle).local_endpoint()?;
        match std::net::IpAddr::from(endpoint.addr) {
            std::net::IpAddr::V4(addr) => Some((addr, endpoint.port)),
            std::net::IpAddr::V6(_) => None,
        }
    }

    /// Forget a socket (abort it first if the peer should hear of it).
    pub fn remove(&mut self, handle: TcpHandle) {
        self.sockets.remove(handle.0);
    }
}

// ---- bulk transfers --------------------------------------------------------------

/// The SplitMix64 finaliser: a good 64-bit mix of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seeded pseudo-random byte pattern a [`Transfer`] sends: `pattern(seed,
/// offset, out)` fills `out` with the bytes at `offset..offset + out.len()`.
/// Random access, so the receiver checks without replaying the sender.
pub fn pattern(seed: u64, offset: usize, out: &mut [u8]) {
    let seed = splitmix64(seed);
    for (i, byte) in out.iter_mut().enumerate() {
        let at = (offset + i) as u64;
        let word = splitmix64(seed ^ (at / 8));
        *byte = word.to_le_bytes()[(at % 8) as usize];
    }
}

/// CRC-32 (IEEE 802.3, the zlib/PNG one), table-driven.
#[derive(Debug, Clone, Copy)]
struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[n] = c;
        n += 1;
    }
    table
};

impl Crc32 {
    fn new() -> Self {
        Crc32(!0)
    }

    fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    fn value(self) -> u32 {
        !self.0
    }
}

/// CRC-32 (IEEE) of `bytes`, as [`TransferReport`] computes it.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(bytes);
    crc.value()
}

/// Where a [`Transfer`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransferReport {
    /// Bytes to send.
    pub len: usize,
    /// Bytes the sender's socket has taken.
    pub sent: usize,
    /// Bytes the receiver has read, the excess past `len` included.
    pub received: usize,
    /// The first offset whose byte differed from the pattern (or the first
    /// offset past `len`, when more than `len` bytes arrived).
    pub first_mismatch: Option<usize>,
    /// CRC-32 of what was sent.
    pub sent_crc: u32,
    /// CRC-32 of what was received.
    pub received_crc: u32,
    /// Whether the receiver has seen the sender's FIN (sent once every byte
    /// was acknowledged; see the module's limits for when it can be lost).
    pub fin_received: bool,
}

impl TransferReport {
    /// Every byte arrived, equal and in order (the FIN is not required: see
    /// [`TransferReport::is_closed`]).
    pub fn is_complete(&self) -> bool {
        self.sent == self.len
            && self.received == self.len
            && self.first_mismatch.is_none()
            && self.sent_crc == self.received_crc
    }

    /// [`TransferReport::is_complete`], and the FIN arrived after the bytes.
    pub fn is_closed(&self) -> bool {
        self.is_complete() && self.fin_received
    }
}

/// A one-way bulk transfer of `len` bytes of [`pattern`]`(seed)` from a
/// socket of host A to a socket of host B, checked byte by byte. Call
/// [`Transfer::pump`] whenever the hosts have been polled; the sender closes
/// (sends its FIN) once the receiver has acknowledged the last byte.
#[derive(Debug, Clone)]
pub struct Transfer {
    len: usize,
    seed: u64,
    sender: TcpHandle,
    receiver: TcpHandle,
    sent: usize,
    received: usize,
    first_mismatch: Option<usize>,
    sent_crc: Crc32,
    received_crc: Crc32,
    closed: bool,
    fin_received: bool,
    chunk: Vec<u8>,
}

impl Transfer {
    /// A transfer from `sender` (a socket of the host passed as `a` to
    /// [`Transfer::pump`]) to `receiver` (one of `b`'s).
    pub fn new(len: usize, seed: u64, sender: TcpHandle, receiver: TcpHandle) -> Self {
        Transfer {
            len,
            seed,
            sender,
            receiver,
            sent: 0,
            received: 0,
            first_mismatch: None,
            sent_crc: Crc32::new(),
            received_crc: Crc32::new(),
            closed: false,
            fin_received: false,
            chunk: Vec::new(),
        }
    }

    /// Move bytes: fill `a`'s send buffer from the pattern (closing once the
    /// last byte is acknowledged) and drain and check `b`'s receive buffer. Returns whether
    /// any byte moved or the transfer's state changed. Poll the hosts after
    /// it so the new bytes leave.
    pub fn pump(&mut self, a: &mut IpHost, b: &mut IpHost) -> bool {
        let mut progress = false;
        while self.sent < self.len && a.may_send(self.sender) {
            let want = (self.len - self.sent).min(a.send_space(self.sender));
            if want == 0 {
                break;
            }
            self.chunk.resize(want, 0);
            pattern(self.seed, self.sent, &mut self.chunk);
            let n = a.send(self.sender, &self.chunk);
            if n == 0 {
                break;
            }
            self.sent_crc.update(&self.chunk[..n]);
            self.sent += n;
            progress = true;
        }
        if self.sent == self.len
            && !self.closed
            && a.may_send(self.sender)
            && a.send_queue(self.sender) == 0
        {
            a.close(self.sender);
            self.closed = true;
            progress = true;
        }
        let got = b.recv(self.receiver);
        if !got.is_empty() {
            self.check(&got);
            progress = true;
        }
        // The states a socket reaches only through the peer's FIN (a reset
        // leads to CLOSED instead, and the byte count shows the failure).
        let after_fin = matches!(
            b.state(self.receiver),
            TcpState::CloseWait | TcpState::LastAck | TcpState::Closing | TcpState::TimeWait
        );
        if !self.fin_received && after_fin && b.recv_queue(self.receiver) == 0 {
            self.fin_received = true;
            progress = true;
        }
        progress
    }

    fn check(&mut self, got: &[u8]) {
        self.received_crc.update(got);
        if self.first_mismatch.is_none() {
            let expected_len = self.len.saturating_sub(self.received).min(got.len());
            let mut expected = vec![0; expected_len];
            pattern(self.seed, self.received, &mut expected);
            if let Some(i) = expected.iter().zip(got).position(|(e, g)| e != g) {
                self.first_mismatch = Some(self.received + i);
            } else if got.len() > expected_len {
                self.first_mismatch = Some(self.received + expected_len);
            }
        }
        self.received += got.len();
    }

    /// Where the transfer stands.
    pub fn report(&self) -> TransferReport {
        TransferReport {
            len: self.len,
            sent: self.sent,
            received: self.received,
            first_mismatch: self.first_mismatch,
            sent_crc: self.sent_crc.value(),
            received_crc: self.received_crc.value(),
            fin_received: self.fin_received,
        }
    }

    /// [`TransferReport::is_complete`] of [`Transfer::report`].
    pub fn is_complete(&self) -> bool {
        self.report().is_complete()
    }

    /// [`TransferReport::is_closed`] of [`Transfer::report`].
    pub fn is_closed(&self) -> bool {
        self.report().is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn pattern_is_random_access() {
        let mut whole = vec![0; 100];
        pattern(7, 0, &mut whole);
        let mut part = vec![0; 37];
        pattern(7, 13, &mut part);
        assert_eq!(&whole[13..50], &part[..]);
        let mut other = vec![0; 100];
        pattern(8, 0, &mut other);
        assert_ne!(whole, other);
    }
}
