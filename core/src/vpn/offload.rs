//! TUN offloads: the kernel's TCP super-packets in, wire-sized IPv4 packets
//! out, and back (VPN-N11).
//!
//! A TUN device opened with `IFF_VNET_HDR` and the `TUN_F_CSUM | TUN_F_TSO4`
//! offloads puts a 10-byte `virtio_net_hdr` ([`VnetHdr`]) before every packet,
//! and the kernel's TCP hands it segments of up to 64 KiB, as it would to a
//! network card that segments by itself. The overlay carries plain IPv4
//! packets no larger than the device's MTU (so they fit one UDP datagram and
//! any peer, the original included, understands them), so:
//!
//! - [`split`] prepares what a read returned: a packet whose checksum the
//!   kernel left to the "card" gets it now; a TCP super-packet becomes a
//!   [`TcpSplit`] that cuts it into the segments the kernel would have sent
//!   ([`TcpSplit::segment`]: each with its own lengths, sequence number, IP id
//!   and both checksums).
//! - [`Coalescer`] does the reverse on the receiving side: consecutive
//!   segments of one TCP flow that arrive in one burst are joined into one
//!   super-packet, written with a header that tells the kernel its segment
//!   size, so the receiving TCP stack handles one packet instead of dozens.
//!   Anything else is written as it came.
//!
//! Both ends save a system call and a trip through the kernel's IP stack per
//! packet: that is the point (the VPN benchmark in `conformance/benches/vpn.rs`
//! measures it). Written by hand because no crate does virtio-net segmentation
//! and coalescing on byte slices without doing the IO itself; the layout is
//! the virtio specification's (5.1.6, "struct virtio_net_hdr"), the rules for
//! which segments may be joined are Linux's TCP GRO rules, kept conservative.
//!
//! Pure: byte slices in, byte slices out; the runtimes do the reads and writes.

use std::fmt;

/// Bytes of the `virtio_net_hdr` before each packet (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
/// `flags`: the checksum at `csum_start + csum_offset` is to be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: not a super-packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: a TCP over IPv4 super-packet.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type` bit: the super-packet's TCP header carries CWR.
pub const GSO_ECN: u8 = 0x80;

/// A joined packet stays within what the IPv4 total length can say.
const MAX_IP_LEN: usize = 65_535;
/// At most this many segments in one joined packet.
const MAX_SEGMENTS: usize = 64;
/// How far back a burst's open runs are searched for a packet's flow.
const RUNS_SEARCHED: usize = 8;

const TCP: u8 = 6;
const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const CWR: u8 = 0x80;

/// The `virtio_net_hdr` of one TUN read or write. The fields are in the
/// host's byte order, as a TUN device without `TUNSETVNETLE/BE` uses them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// [`F_NEEDS_CSUM`] or 0.
    pub flags: u8,
    /// [`GSO_NONE`], [`GSO_TCPV4`] (maybe with [`GSO_ECN`]), ...
    pub gso_type: u8,
    /// Bytes of headers (IP and TCP) before the payload.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed range starts, from the IP header's first byte.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// The header at the start of `bytes`, or `None` when there are fewer
    /// than [`VNET_HDR_LEN`] bytes.
    pub fn parse(bytes: &[u8]) -> Option<VnetHdr> {
        let b = bytes.get(..VNET_HDR_LEN)?;
        let field = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: field(2),
            gso_size: field(4),
            csum_start: field(6),
            csum_offset: field(8),
        })
    }

    /// The header's bytes.
    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// Why a packet read from the device cannot be handed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// The checksum the header asks to complete lies outside the packet.
    ChecksumRange,
    /// A super-packet of a kind this module never asks for (UDP, IPv6).
    GsoType(u8),
    /// A TCPv4 super-packet whose headers do not hold together.
    Malformed,
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffloadError::ChecksumRange => write!(f, "checksum offsets outside the packet"),
            OffloadError::GsoType(t) => write!(f, "unexpected GSO type {t:#x}"),
            OffloadError::Malformed => write!(f, "malformed TCP/IPv4 super-packet"),
        }
    }
}

impl std::error::Error for OffloadError {}

/// What [`split`] made of one read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// One packet, ready as it is (its checksum completed if it was left).
    Whole,
    /// A TCP super-packet: hand on its [`TcpSplit::count`] segments.
    Tcp(TcpSplit),
}

/// How one TCPv4 super-packet is cut (see [`split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSplit {
    ip_len: usize,
    tcp_len: usize,
    mss: usize,
    payload: usize,
}

impl TcpSplit {
    /// How many segments the super-packet makes (at least one).
    pub fn count(&self) -> usize {
        self.payload.div_ceil(self.mss).max(1)
    }

    /// Write segment `i` (0-based, below [`count`](Self::count)) of `packet`
    /// (the super-packet [`split`] was given) into `out`, replacing what `out`
    /// held: the headers copied with the segment's total length, IP id, IP
    /// checksum, sequence number and TCP checksum, FIN and PSH only on the
    /// last segment and CWR only on the first, as the kernel segments.
    pub fn segment(&self, packet: &[u8], i: usize, out: &mut Vec<u8>) {
        let headers = self.ip_len + self.tcp_len;
        let start = headers + i * self.mss;
        let end = (start + self.mss).min(headers + self.payload);
        out.clear();
        out.extend_from_slice(&packet[..headers]);
        out.extend_from_slice(&packet[start.min(end)..end]);
        let total = out.len();
        let ip = self.ip_len;
        out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let id = u16::from_be_bytes([out[4], out[5]]).wrapping_add(i as u16);
        out[4..6].copy_from_slice(&id.to_be_bytes());
        let seq = u32::from_be_bytes([out[ip + 4], out[ip + 5], out[ip + 6], out[ip + 7]])
            .wrapping_add((i * self.mss) as u32);
        out[ip + 4..ip + 8].copy_from_slice(&seq.to_be_bytes());
        if i + 1 < self.count() {
            out[ip + 13] &= !(FIN | PSH);
        }
        if i > 0 {
            out[ip + 13] &= !CWR;
        }
        fill_ip_checksum(out, ip);
        fill_tcp_checksum(out, ip);
    }
}

/// Prepare `packet`, read after `hdr`: complete a checksum the kernel left
/// (in place) or say how to cut a TCP super-packet.
pub fn split(hdr: &VnetHdr, packet: &mut [u8]) -> Result<Split, OffloadError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => {
            if hdr.flags & F_NEEDS_CSUM != 0 {
                complete_checksum(packet, hdr.csum_start.into(), hdr.csum_offset.into())?;
            }
            Ok(Split::Whole)
        }
        GSO_TCPV4 => {
            let (ip_len, tcp_len) = tcp_headers(packet).ok_or(OffloadError::Malformed)?;
            let mss = usize::from(hdr.gso_size);
            if mss == 0 {
                return Err(OffloadError::Malformed);
            }
            Ok(Split::Tcp(TcpSplit {
                ip_len,
                tcp_len,
                mss,
                payload: packet.len() - ip_len - tcp_len,
            }))
        }
        other => Err(OffloadError::GsoType(other)),
    }
}

/// The IP and TCP header lengths of a TCP/IPv4 packet whose headers fit.
fn tcp_headers(packet: &[u8]) -> Option<(usize, usize)> {
    let first = *packet.first()?;
    if first >> 4 != 4 || packet.len() < 20 || packet[9] != TCP {
        return None;
    }
    let ip_len = usize::from(first & 0x0f) * 4;
    let tcp_len = usize::from(*packet.get(ip_len + 12)? >> 4) * 4;
    (ip_len >= 20 && tcp_len >= 20 && packet.len() >= ip_len + tcp_len).then_some((ip_len, tcp_len))
}

/// Store the checksum of `packet[start..]` at `start + offset`; the field
/// holds the pseudo-header's sum, as the kernel leaves it.
fn complete_checksum(packet: &mut [u8], start: usize, offset: usize) -> Result<(), OffloadError> {
    let at = start + offset;
    if at + 2 > packet.len() || start > packet.len() {
        return Err(OffloadError::ChecksumRange);
    }
    let sum = fold(ones_sum(&packet[start..], 0));
    packet[at..at + 2].copy_from_slice(&(!sum).to_be_bytes());
    Ok(())
}

/// The one's-complement sum of `bytes` (as big-endian 16-bit words, an odd
/// last byte padded with zero) added to `sum`, not yet folded.
///
/// Eight bytes at a time, little-endian, in two 32-bit halves, then folded to
/// 32 bits and byte-swapped: a one's-complement sum does not depend on the
/// byte order it is taken in, only the result's bytes swap (RFC 1071,
/// section 2(B)). About twice as fast as big-endian 32-bit words here.
pub fn ones_sum(bytes: &[u8], sum: u64) -> u64 {
    let half_sums = |v: u64| (v & 0xffff_ffff) + (v >> 32);
    let mut words = bytes.chunks_exact(8);
    let mut acc = 0u64;
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        acc += half_sums(u64::from_le_bytes(word));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    acc += half_sums(u64::from_le_bytes(tail));
    // Three folds: < 2^33, then <= 2^32, then < 2^32 (the end-around
    // carries). Its little-endian 16-bit words, swapped, are the big-endian
    // words' sum.
    let acc = half_sums(half_sums(half_sums(acc)));
    sum + u64::from((acc as u32).swap_bytes())
}

/// Fold a sum from [`ones_sum`] into 16 bits (not inverted).
pub fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The pseudo-header's sum for TCP over IPv4 with `tcp_bytes` of segment.
fn pseudo_sum(ip: &[u8], tcp_bytes: usize) -> u64 {
    ones_sum(&ip[12..20], u64::from(TCP) + tcp_bytes as u64)
}

fn fill_ip_checksum(packet: &mut [u8], ip_len: usize) {
    packet[10..12].fill(0);
    let sum = !fold(ones_sum(&packet[..ip_len], 0));
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
}

fn fill_tcp_checksum(packet: &mut [u8], ip_len: usize) {
    packet[ip_len + 16..ip_len + 18].fill(0);
    let sum = ones_sum(&packet[ip_len..], pseudo_sum(packet, packet.len() - ip_len));
    packet[ip_len + 16..ip_len + 18].copy_from_slice(&(!fold(sum)).to_be_bytes());
}

/// Whether a TCP/IPv4 packet's TCP checksum is right.
fn tcp_checksum_ok(packet: &[u8], ip_len: usize) -> bool {
    let sum = ones_sum(&packet[ip_len..], pseudo_sum(packet, packet.len() - ip_len));
    fold(sum) == 0xffff
}

/// Joins the packets of one burst for the device (see the [module docs](self)).
///
/// [`push`](Self::push) every packet of the burst in order, then
/// [`drain`](Self::drain): each write is a [`VnetHdr`] and one packet, joined
/// or not. Packets of one flow keep their order; a packet that cannot join
/// (not TCP/IPv4 without IP options, flags other than ACK and a last PSH, a
/// sequence gap, other headers, a bad checksum) closes its flow's run and is
/// written as it came.
#[derive(Debug, Default)]
pub struct Coalescer {
    runs: Vec<Run>,
    /// Buffers of drained runs, kept for the next burst.
    spare: Vec<Vec<u8>>,
}

#[derive(Debug)]
struct Run {
    /// Header room, then the (growing) packet.
    buf: Vec<u8>,
    /// The sizes of a run that began with a joinable TCP segment.
    join: Option<Join>,
    /// Whether more segments may still join.
    open: bool,
    /// The 4-tuple of a TCP/IPv4 packet (addresses, ports).
    flow: Option<[u8; 12]>,
}

#[derive(Debug, Clone, Copy)]
struct Join {
    ip_len: usize,
    tcp_len: usize,
    /// The first segment's payload: the segment size.
    mss: usize,
    segments: usize,
    next_seq: u32,
}

impl Coalescer {
    /// An empty burst.
    pub fn new() -> Coalescer {
        Coalescer::default()
    }

    /// Writes waiting for [`drain`](Self::drain) (joined packets count once).
    pub fn pending(&self) -> usize {
        self.runs.len()
    }

    /// Take `packet` (an IPv4 packet, as the machine wrote it) into the burst.
    pub fn push(&mut self, packet: &[u8]) {
        let flow = flow_of(packet);
        let parsed = flow.and_then(|_| joinable(packet));
        if let Some(flow) = flow {
            let searched = self.runs.len().saturating_sub(RUNS_SEARCHED);
            let latest = self.runs[searched..]
                .iter_mut()
                .rev()
                .find(|run| run.flow == Some(flow));
            if let (Some(run), Some(p)) = (latest, parsed.as_ref())
                && run.try_join(packet, p)
            {
                return;
            }
            // Whatever comes next of this flow must not overtake this packet.
            for run in self.runs.iter_mut().filter(|run| run.flow == Some(flow)) {
                run.open = false;
            }
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&[0; VNET_HDR_LEN]);
        buf.extend_from_slice(packet);
        let join = parsed.map(|p| Join {
            ip_len: p.ip_len,
            tcp_len: p.tcp_len,
            mss: p.payload,
            segments: 1,
            next_seq: p.seq.wrapping_add(p.payload as u32),
        });
        let open = parsed.is_some_and(|p| !p.last);
        self.runs.push(Run {
            buf,
            join,
            open,
            flow,
        });
    }

    /// Hand every run to `write` (header and packet in one slice), in the
    /// order the runs began, and forget them.
    pub fn drain(&mut self, mut write: impl FnMut(&[u8])) {
        for mut run in self.runs.drain(..) {
            run.finish();
            write(&run.buf);
            if self.spare.len() < RUNS_SEARCHED {
                self.spare.push(run.buf);
            }
        }
    }
}

impl Run {
    /// Append `packet`'s payload if it continues this run's segments.
    fn try_join(&mut self, packet: &[u8], p: &Parsed) -> bool {
        let Some(join) = self.join.as_mut().filter(|_| self.open) else {
            return false;
        };
        let head = &self.buf[VNET_HDR_LEN..];
        let (ip, tcp) = (join.ip_len, join.tcp_len);
        let fits = p.ip_len == ip
            && p.tcp_len == tcp
            && p.seq == join.next_seq
            && p.payload <= join.mss
            && head.len() + p.payload <= MAX_IP_LEN
            && join.segments < MAX_SEGMENTS
            // version, IHL, TOS; flags, fragment offset, TTL, protocol
            && head[..2] == packet[..2]
            && head[6..10] == packet[6..10]
            // ack, data offset; window; options
            && head[ip + 8..ip + 13] == packet[ip + 8..ip + 13]
            && head[ip + 14..ip + 16] == packet[ip + 14..ip + 16]
            && head[ip + 20..ip + tcp] == packet[ip + 20..ip + tcp];
        if !fits {
            return false;
        }
        self.buf.extend_from_slice(&packet[ip + tcp..]);
        join.segments += 1;
        join.next_seq = join.next_seq.wrapping_add(p.payload as u32);
        if p.last || p.payload < join.mss {
            self.open = false;
            if p.last {
                self.buf[VNET_HDR_LEN + ip + 13] |= PSH;
            }
        }
        true
    }

    /// Write the header (and, when joined, the new lengths and checksums).
    fn finish(&mut self) {
        let Some(join) = self.join.filter(|j| j.segments > 1) else {
            return;
        };
        let (ip, tcp) = (join.ip_len, join.tcp_len);
        let packet = &mut self.buf[VNET_HDR_LEN..];
        let total = packet.len();
        packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        fill_ip_checksum(packet, ip);
        // The pseudo-header's sum over the whole length, not inverted: the
        // kernel (or its segmentation) completes it per segment.
        let pseudo = fold(pseudo_sum(packet, total - ip));
        packet[ip + 16..ip + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (ip + tcp) as u16,
            gso_size: join.mss as u16,
            csum_start: ip as u16,
            csum_offset: 16,
        };
        self.buf[..VNET_HDR_LEN].copy_from_slice(&hdr.to_bytes());
    }
}

/// What [`Coalescer::push`] needs of a packet that may join a run.
#[derive(Debug, Clone, Copy)]
struct Parsed {
    ip_len: usize,
    tcp_len: usize,
    payload: usize,
    seq: u32,
    /// PSH: nothing may follow it in a run.
    last: bool,
}

/// The 4-tuple of any TCP/IPv4 packet whose headers are whole.
fn flow_of(packet: &[u8]) -> Option<[u8; 12]> {
    let (ip, _) = tcp_headers(packet)?;
    let mut flow = [0; 12];
    flow[..8].copy_from_slice(&packet[12..20]);
    flow[8..].copy_from_slice(&packet[ip..ip + 4]);
    Some(flow)
}

/// `packet` parsed if it may be part of a joined run: TCP/IPv4 without IP
/// options or fragmentation, the total length exact, ACK (and maybe PSH) its
/// only flags, some payload, and a right checksum.
fn joinable(packet: &[u8]) -> Option<Parsed> {
    let (ip_len, tcp_len) = tcp_headers(packet)?;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff;
    let flags = packet[ip_len + 13];
    let payload = packet.len() - ip_len - tcp_len;
    if ip_len != 20
        || total != packet.len()
        || fragment != 0
        || flags & !PSH != ACK
        || payload == 0
        || !tcp_checksum_ok(packet, ip_len)
    {
        return None;
    }
    let at = ip_len + 4;
    Some(Parsed {
        ip_len,
        tcp_len,
        payload,
        seq: u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]]),
        last: flags & PSH != 0,
    })
}

#[cfg(test)]
mod tests;
