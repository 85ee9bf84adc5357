use super::*;
use quickcheck::{Arbitrary, Gen, QuickCheck};

/// The RFC 1071 sum, word by word: the reference `ones_sum` must agree with.
fn reference_sum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let hi = pair[0];
        let lo = pair.get(1).copied().unwrap_or(0);
        sum += u32::from(u16::from_be_bytes([hi, lo]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn pseudo(packet: &[u8]) -> Vec<u8> {
    let tcp_len = (packet.len() - 20) as u16;
    let mut p = packet[12..20].to_vec();
    p.extend_from_slice(&[0, 6]);
    p.extend_from_slice(&tcp_len.to_be_bytes());
    p
}

/// Both checksums of a TCP/IPv4 packet without IP options verify.
fn checksums_ok(packet: &[u8]) -> bool {
    let ip = reference_sum(&packet[..20]) == 0xffff;
    let mut all = pseudo(packet);
    all.extend_from_slice(&packet[20..]);
    ip && reference_sum(&all) == 0xffff
}

/// A TCP/IPv4 segment of `flow` (0 or 1) with valid checksums and a
/// timestamp option.
fn segment(flow: u8, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + 32 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[10, 77, 0, 2, 10, 77, 0, 3]);
    p.extend_from_slice(&[0x9c, 0x40 + flow, 0x14, 0x51]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    p.extend_from_slice(&[0x80, flags, 0x01, 0xf5, 0, 0, 0, 0]);
    p.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 7]);
    p.extend_from_slice(payload);
    fill_ip_checksum(&mut p, 20);
    fill_tcp_checksum(&mut p, 20);
    assert!(checksums_ok(&p));
    p
}

fn bytes(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt))
        .collect()
}

fn seq_of(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[24], p[25], p[26], p[27]])
}

/// Expand what the coalescer wrote, as the kernel would: (header, packets).
fn expand(written: &[u8]) -> (VnetHdr, Vec<Vec<u8>>) {
    let hdr = VnetHdr::parse(written).expect("header");
    let mut packet = written[VNET_HDR_LEN..].to_vec();
    match split(&hdr, &mut packet).expect("splits") {
        Split::Whole => (hdr, vec![packet]),
        Split::Tcp(plan) => {
            let segments = (0..plan.count())
                .map(|i| {
                    let mut out = Vec::new();
                    plan.segment(&packet, i, &mut out);
                    out
                })
                .collect();
            (hdr, segments)
        }
    }
}

fn drain(c: &mut Coalescer) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    c.drain(|w| out.push(w.to_vec()));
    out
}

#[test]
fn ones_sum_agrees_with_the_word_by_word_sum() {
    for len in 0..40 {
        let data = bytes(len, 7);
        assert_eq!(fold(ones_sum(&data, 0)), reference_sum(&data), "len {len}");
    }
    let big = vec![0xff; 70_000];
    assert_eq!(fold(ones_sum(&big, 0)), reference_sum(&big));
    // End-around carries: halves 2 x 0xffff_ffff + 1 fold to 2^32, then to 1.
    let mut carries = vec![0xff; 8];
    carries.extend_from_slice(&[1, 0, 0, 0]);
    for len in 8..=carries.len() {
        let data = &carries[..len];
        assert_eq!(fold(ones_sum(data, 0)), reference_sum(data), "len {len}");
        assert_eq!(
            fold(ones_sum(data, 0xffff)),
            fold(u64::from(reference_sum(data)) + 0xffff),
            "len {len}, with a sum carried in"
        );
    }
}

#[test]
fn the_header_round_trips_in_host_order() {
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 52,
        gso_size: 1348,
        csum_start: 20,
        csum_offset: 16,
    };
    let b = hdr.to_bytes();
    assert_eq!(b[4..6], 1348u16.to_ne_bytes());
    assert_eq!(VnetHdr::parse(&b), Some(hdr));
    assert_eq!(VnetHdr::parse(&b[..9]), None);
}

/// VPN-N11: a packet whose checksum the kernel left to the card (the field
/// holds the pseudo-header's sum) leaves with its real checksum.
#[test]
fn a_left_checksum_is_completed() {
    let good = segment(0, 1000, ACK | PSH, b"hello");
    let mut partial = good.clone();
    let pseudo_sum = fold(ones_sum(&pseudo(&good), 0));
    partial[36..38].copy_from_slice(&pseudo_sum.to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    assert_eq!(split(&hdr, &mut partial), Ok(Split::Whole));
    assert_eq!(partial, good);

    let mut short = good.clone();
    let hdr = VnetHdr {
        csum_start: 20,
        csum_offset: good.len() as u16,
        ..hdr
    };
    assert_eq!(split(&hdr, &mut short), Err(OffloadError::ChecksumRange));
    let plain = VnetHdr::default();
    assert_eq!(split(&plain, &mut short), Ok(Split::Whole));
    assert_eq!(short, good, "no flag: untouched");
}

/// VPN-N11: a super-packet becomes the segments the kernel would have sent.
#[test]
fn a_super_packet_splits_into_valid_segments() {
    let payload = bytes(5000, 3);
    let mut whole = segment(0, 0xffff_f000, ACK | PSH | FIN | CWR, &payload);
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4 | GSO_ECN,
        hdr_len: 52,
        gso_size: 1348,
        csum_start: 20,
        csum_offset: 16,
    };
    let Ok(Split::Tcp(plan)) = split(&hdr, &mut whole) else {
        panic!("not a TCP split");
    };
    assert_eq!(plan.count(), 4);
    let mut rebuilt = Vec::new();
    for i in 0..4 {
        let mut s = Vec::new();
        plan.segment(&whole, i, &mut s);
        let len = if i < 3 { 1348 } else { 5000 - 3 * 1348 };
        assert_eq!(s.len(), 52 + len);
        assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
        assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16);
        assert_eq!(seq_of(&s), 0xffff_f000u32.wrapping_add((i * 1348) as u32));
        let flags = s[33];
        assert_eq!(flags & (FIN | PSH) != 0, i == 3, "segment {i}");
        assert_eq!(flags & CWR != 0, i == 0, "segment {i}");
        assert_eq!(flags & ACK, ACK);
        assert_eq!(s[40..52], whole[40..52], "options copied");
        assert!(checksums_ok(&s), "segment {i}");
        rebuilt.extend_from_slice(&s[52..]);
    }
    assert_eq!(rebuilt, payload);
}

#[test]
fn other_super_packets_are_refused() {
    let mut p = segment(0, 1, ACK, b"x");
    let udp = VnetHdr {
        gso_type: 5,
        gso_size: 1000,
        ..VnetHdr::default()
    };
    assert_eq!(split(&udp, &mut p), Err(OffloadError::GsoType(5)));
    let tcp = VnetHdr {
        gso_type: GSO_TCPV4,
        gso_size: 0,
        ..VnetHdr::default()
    };
    assert_eq!(split(&tcp, &mut p), Err(OffloadError::Malformed));
    let mut udp_packet = p.clone();
    udp_packet[9] = 17;
    let tcp = VnetHdr {
        gso_size: 100,
        ..tcp
    };
    assert_eq!(split(&tcp, &mut udp_packet), Err(OffloadError::Malformed));
    assert_eq!(
        split(&tcp, &mut p[..30].to_vec()),
        Err(OffloadError::Malformed)
    );
}

/// VPN-N11: consecutive segments of one flow are written as one super-packet
/// the kernel accepts (NEEDS_CSUM, the pseudo-header's sum in the field), and
/// cutting it again gives back every segment.
#[test]
fn consecutive_segments_join_into_one_write() {
    let mut c = Coalescer::new();
    let mut sent = Vec::new();
    for i in 0..10u32 {
        let last = i == 9;
        let len = if last { 700 } else { 1348 };
        let flags = if last { ACK | PSH } else { ACK };
        let p = segment(0, 5000 + i * 1348, flags, &bytes(len, i as u8));
        c.push(&p);
        sent.push(p);
    }
    assert_eq!(c.pending(), 1);
    let written = drain(&mut c);
    assert_eq!(written.len(), 1);
    let (hdr, segments) = expand(&written[0]);
    assert_eq!(hdr.gso_type, GSO_TCPV4);
    assert_eq!(hdr.flags, F_NEEDS_CSUM);
    assert_eq!((hdr.gso_size, hdr.hdr_len), (1348, 52));
    assert_eq!((hdr.csum_start, hdr.csum_offset), (20, 16));
    let p = &written[0][VNET_HDR_LEN..];
    assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
    assert_eq!(reference_sum(&p[..20]), 0xffff, "IP checksum");
    assert_eq!(
        u16::from_be_bytes([p[36], p[37]]),
        fold(ones_sum(&pseudo(p), 0)),
        "the pseudo-header's sum"
    );
    assert_eq!(segments.len(), 10);
    for (s, orig) in segments.iter().zip(&sent) {
        assert_eq!(s[20..], orig[20..], "TCP header and payload");
        assert!(checksums_ok(s));
    }
    assert_eq!(c.pending(), 0);
}

#[test]
fn a_single_packet_is_written_as_it_came() {
    let mut c = Coalescer::new();
    let p = segment(0, 1, ACK, &bytes(100, 1));
    let udp = {
        let mut u = p.clone();
        u[9] = 17;
        u
    };
    c.push(&p);
    c.push(&udp);
    c.push(&[0x45]);
    let written = drain(&mut c);
    assert_eq!(written.len(), 3);
    assert_eq!(written[0][..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
    assert_eq!(written[0][VNET_HDR_LEN..], p[..]);
    assert_eq!(written[1][VNET_HDR_LEN..], udp[..]);
    assert_eq!(written[2][VNET_HDR_LEN..], [0x45]);
}

/// What must not join: a gap, a bad checksum, a FIN, other options, a
/// larger segment; and nothing of a flow overtakes the packet that stopped
/// its run.
#[test]
fn what_may_not_join_stops_the_run_and_keeps_the_order() {
    let mss = 1000;
    let data = |i: u32| segment(0, i * mss as u32, ACK, &bytes(mss, i as u8));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("gap", segment(0, 3 * mss as u32, ACK, &bytes(mss, 3))),
        ("fin", segment(0, mss as u32, ACK | FIN, &bytes(mss, 1))),
        ("larger", segment(0, mss as u32, ACK, &bytes(mss + 1, 1))),
        ("bad checksum", {
            let mut p = data(1);
            p[60] ^= 1;
            p
        }),
        ("other options", {
            let mut p = data(1);
            p[51] = 8;
            fill_tcp_checksum(&mut p, 20);
            p
        }),
        ("other window", {
            let mut p = data(1);
            p[34] = 9;
            fill_tcp_checksum(&mut p, 20);
            p
        }),
    ];
    for (what, odd) in cases {
        let mut c = Coalescer::new();
        c.push(&data(0));
        c.push(&odd);
        // Would join the first run, but must not pass `odd`.
        c.push(&data(1));
        let written = drain(&mut c);
        assert_eq!(written.len(), 3, "{what}");
        assert_eq!(written[1][VNET_HDR_LEN..], odd[..], "{what}: as it came");
        assert_eq!(written[0][VNET_HDR_LEN..], data(0)[..], "{what}");
    }
}

#[test]
fn flows_join_apart_and_a_run_stops_at_64_kib() {
    let mut c = Coalescer::new();
    for i in 0..60u32 {
        c.push(&segment(0, i * 1400, ACK, &bytes(1400, 0)));
        c.push(&segment(1, i * 1400, ACK, &bytes(1400, 1)));
    }
    let written = drain(&mut c);
    // 46 segments of 1400 fit in 65,535 bytes with 52 bytes of headers.
    assert_eq!(written.len(), 4);
    for w in &written {
        assert!(w.len() - VNET_HDR_LEN <= MAX_IP_LEN);
    }
    let per_flow = |flow: u8| -> Vec<u32> {
        written
            .iter()
            .flat_map(|w| expand(w).1)
            .filter(|s| s[21] == 0x40 + flow)
            .map(|s| seq_of(&s))
            .collect()
    };
    let expected: Vec<u32> = (0..60).map(|i| i * 1400).collect();
    assert_eq!(per_flow(0), expected);
    assert_eq!(per_flow(1), expected);
}

/// A burst: segments of two flows, interleaved, with sizes, pushes and gaps
/// chosen by quickcheck.
#[derive(Debug, Clone)]
struct Burst(Vec<(u8, u16, bool, bool)>);

impl Arbitrary for Burst {
    fn arbitrary(g: &mut Gen) -> Burst {
        let n = usize::arbitrary(g) % 80;
        Burst(
            (0..n)
                .map(|_| {
                    (
                        u8::arbitrary(g) % 2,
                        1 + u16::arbitrary(g) % 1500,
                        u8::arbitrary(g) % 8 == 0,
                        u8::arbitrary(g) % 16 == 0,
                    )
                })
                .collect(),
        )
    }
}

/// VPN-N11: whatever the burst, the kernel's view after the coalescer (its
/// writes cut again) is the burst itself, flow by flow: the same segments in
/// the same order with valid checksums.
#[test]
fn quickcheck_coalescing_loses_and_reorders_nothing_within_a_flow() {
    fn prop(burst: Burst) -> bool {
        let mut seq = [7u32, 900_000];
        let mut sent: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        let mut c = Coalescer::new();
        for (flow, len, push, gap) in burst.0 {
            let f = usize::from(flow);
            if gap {
                seq[f] = seq[f].wrapping_add(1);
            }
            let flags = if push { ACK | PSH } else { ACK };
            let p = segment(flow, seq[f], flags, &bytes(len.into(), len as u8));
            seq[f] = seq[f].wrapping_add(len.into());
            c.push(&p);
            sent[f].push(p);
        }
        let written = drain(&mut c);
        let mut seen: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for w in &written {
            for s in expand(w).1 {
                if !checksums_ok(&s) {
                    return false;
                }
                seen[usize::from(s[21] - 0x40)].push(s[20..].to_vec());
            }
        }
        (0..2).all(|f| {
            let want: Vec<Vec<u8>> = sent[f].iter().map(|p| p[20..].to_vec()).collect();
            seen[f] == want
        })
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(Burst) -> bool);
}
