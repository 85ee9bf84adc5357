//! Linux UDP segmentation offload for the driver's UDP sockets: several
//! equal-sized datagrams to one destination leave in one `sendmsg` with a
//! `UDP_SEGMENT` control message, and the socket receives with `UDP_GRO`, so
//! the kernel may hand over a train of datagrams from one sender in one
//! `recvmsg` (with their segment size). Each datagram stays a datagram on the
//! wire and to the machine; the kernel's per-packet path (routing,
//! forwarding, veth, socket queues) runs once per train instead of once per
//! datagram, which is most of the cost of a VPN's direct path.
//!
//! Written by hand: std has no `sendmsg`/`recvmsg` with control messages, and
//! the crates that do (quinn-udp, nix) bring their own socket layer or a much
//! wider API for two calls. This module is, with `crate::tun`, the only
//! `unsafe` code of the crate: `setsockopt`, `sendmsg` and `recvmsg` on a
//! socket we own, with buffers that outlive each call.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;

use libc::{c_int, c_void, socklen_t};

/// At most this many datagrams in one `UDP_SEGMENT` send (the kernel's
/// `UDP_MAX_SEGMENTS` is 64 on older kernels, 128 on newer ones); also the
/// most parts (iovecs) one train is sent from.
pub(super) const MAX_SEGMENTS: usize = 64;
/// A train's total payload stays below this (one UDP datagram's limit is
/// 65,507 bytes; the kernel checks the train against the same bound).
pub(super) const MAX_TRAIN: usize = 65_000;

/// Control buffer: room for one `cmsghdr` with an `int` (either direction).
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Ask the kernel to coalesce received datagrams (`UDP_GRO`); false where
/// it cannot (older kernels), which only costs speed.
pub(super) fn enable_gro(socket: &impl AsRawFd) -> bool {
    let one: c_int = 1;
    setsockopt_int(socket.as_raw_fd(), libc::SOL_UDP, libc::UDP_GRO, one)
}

/// Socket buffers for trains: the default (about 208 KB) holds three 64 KB
/// trains, so a burst overflows it and IP loses what a slightly slower
/// receiver could have taken.
pub(super) const BUFFER: c_int = 4 << 20;

/// Ask for [`BUFFER`]-byte send and receive buffers: the `FORCE` options
/// where we may (`CAP_NET_ADMIN`, which a VPN node has for its TUN), else the
/// plain ones, which the kernel caps at `net.core.{r,w}mem_max`.
/// Returns the sizes the kernel reports afterwards (receive, send; it
/// counts its bookkeeping too, so they read twice what was granted).
pub(super) fn grow_buffers(socket: &impl AsRawFd) -> (Option<c_int>, Option<c_int>) {
    let fd = socket.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if !setsockopt_int(fd, libc::SOL_SOCKET, force, BUFFER) {
            setsockopt_int(fd, libc::SOL_SOCKET, plain, BUFFER);
        }
    }
    (
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF),
        getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF),
    )
}

#[allow(unsafe_code)]
fn getsockopt_int(fd: RawFd, level: c_int, name: c_int) -> Option<c_int> {
    let mut value: c_int = 0;
    let mut len = socklen_t::try_from(mem::size_of::<c_int>()).unwrap_or(4);
    // SAFETY: `value` and `len` live across the call; `len` is `value`'s size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            ptr::from_mut(&mut value).cast(),
            &raw mut len,
        )
    };
    (rc == 0).then_some(value)
}

#[allow(unsafe_code)]
fn setsockopt_int(fd: RawFd, level: c_int, name: c_int, value: c_int) -> bool {
    let len = socklen_t::try_from(mem::size_of::<c_int>()).unwrap_or(4);
    // SAFETY: `value` lives across the call and `len` is its size.
    let rc = unsafe { libc::setsockopt(fd, level, name, ptr::from_ref(&value).cast(), len) };
    rc == 0
}

/// A socket address in the C layout `sendmsg` wants.
enum RawAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl RawAddr {
    fn new(addr: SocketAddr) -> RawAddr {
        match addr {
            SocketAddr::V4(a) => RawAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            }),
            SocketAddr::V6(a) => RawAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }
    }

    fn as_ptr_len(&mut self) -> (*mut c_void, socklen_t) {
        match self {
            RawAddr::V4(a) => (
                ptr::from_mut(a).cast(),
                socklen_t::try_from(mem::size_of::<libc::sockaddr_in>()).unwrap_or(16),
            ),
            RawAddr::V6(a) => (
                ptr::from_mut(a).cast(),
                socklen_t::try_from(mem::size_of::<libc::sockaddr_in6>()).unwrap_or(28),
            ),
        }
    }
}

/// Send `train` to `to` as datagrams of `segment` bytes each (the last may be
/// shorter) in one `sendmsg`. Errors as `sendmsg`'s: `EINVAL` when a segment
/// does not fit the path MTU, `EIO` when the route's device cannot offload.
#[allow(unsafe_code)]
pub(super) fn send_train<'a>(
    socket: &impl AsRawFd,
    to: SocketAddr,
    parts: impl IntoIterator<Item = &'a [u8]>,
    segment: u16,
) -> io::Result<usize> {
    let mut addr = RawAddr::new(to);
    let (name, namelen) = addr.as_ptr_len();
    let mut iovs = [libc::iovec {
        iov_base: ptr::null_mut(),
        iov_len: 0,
    }; MAX_SEGMENTS];
    let mut count = 0;
    for part in parts {
        let Some(iov) = iovs.get_mut(count) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a UDP train of more than MAX_SEGMENTS parts",
            ));
        };
        *iov = libc::iovec {
            iov_base: part.as_ptr().cast_mut().cast(),
            iov_len: part.len(),
        };
        count += 1;
    }
    let mut control = Control([0; 64]);
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = name;
    msg.msg_namelen = namelen;
    msg.msg_iov = iovs.as_mut_ptr();
    msg.msg_iovlen = count as _;
    msg.msg_control = control.0.as_mut_ptr().cast();
    let data_len = u32::try_from(mem::size_of::<u16>()).unwrap_or(2);
    // SAFETY: CMSG_SPACE is arithmetic; 64 bytes hold one header and a u16.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as _;
    // SAFETY: msg_control points at `control`, 8-aligned and at least
    // msg_controllen bytes, so the first header is inside it and non-null;
    // CMSG_DATA of that header has room for the u16 (CMSG_SPACE above).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
    }
    // SAFETY: every pointer in msg refers to a live local, or (the first
    // `count` iovecs) to a part borrowed for the whole call; the kernel only
    // reads them.
    let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &raw const msg, 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One `recvmsg` into `buf`: the bytes, the sender, and the segment size when
/// the kernel coalesced a train (`UDP_GRO`): then `buf[..n]` holds datagrams
/// of that size back to back, the last possibly shorter.
#[allow(unsafe_code)]
pub(super) fn recv_train(
    socket: &impl AsRawFd,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<usize>)> {
    // SAFETY: an all-zero sockaddr_storage is a valid (AF_UNSPEC) address.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = Control([0; 64]);
    // SAFETY: as in send_train.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = ptr::from_mut(&mut storage).cast();
    msg.msg_namelen = socklen_t::try_from(mem::size_of::<libc::sockaddr_storage>()).unwrap_or(128);
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: every pointer in msg refers to a live local or to `buf`, with
    // the lengths given.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut msg, 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    let from = sender(&storage)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram without a sender"))?;
    let mut segment = None;
    // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG
    // macros stay inside it, and a UDP_GRO header carries an int.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                let size = ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>());
                segment = usize::try_from(size).ok().filter(|&s| s > 0);
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok((n, from, segment))
}

#[allow(unsafe_code)]
fn sender(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: ss_family says the storage holds a sockaddr_in, and
            // sockaddr_storage is large and aligned enough for it.
            let a = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn a_train_arrives_as_its_datagrams_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let gro = enable_gro(&rx);
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        // 10 datagrams of 1000 bytes and a last one of 300: byte i of
        // datagram k is k.
        let mut train = Vec::new();
        for k in 0..11u8 {
            let len = if k == 10 { 300 } else { 1000 };
            train.extend(std::iter::repeat_n(k, len));
        }
        // Sent from parts cut elsewhere than the segments: the kernel reads
        // them as one stream.
        let sent = send_train(&tx, to, train.chunks(1500), 1000).expect("sendmsg with UDP_SEGMENT");
        assert_eq!(sent, train.len());
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut buf = vec![0; 1 << 16];
        while got.len() < 11 {
            let (n, from, segment) = recv_train(&rx, &mut buf).expect("recvmsg");
            assert_eq!(from, tx.local_addr().expect("addr"));
            if !gro {
                assert_eq!(segment, None);
            }
            got.extend(buf[..n].chunks(segment.unwrap_or(n)).map(<[u8]>::to_vec));
        }
        assert_eq!(got.len(), 11);
        for (k, datagram) in got.iter().enumerate() {
            let expected_len = if k == 10 { 300 } else { 1000 };
            assert_eq!(datagram.len(), expected_len, "datagram {k}");
            assert!(
                datagram.iter().all(|&b| usize::from(b) == k),
                "datagram {k}"
            );
        }
    }

    #[test]
    fn a_train_over_one_datagrams_limit_is_refused() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // 66 segments of 1000 bytes: more than one IP datagram may carry, so
        // the driver keeps its trains under MAX_TRAIN.
        let train = vec![0u8; 66_000];
        let result = send_train(&tx, rx.local_addr().expect("addr"), [&train[..]], 1000);
        assert!(result.is_err(), "{result:?}");
        assert!(train.len() > MAX_TRAIN);
    }

    #[test]
    fn buffers_grow_for_trains() {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (rcv, snd) = grow_buffers(&socket);
        let (rcv, snd) = (rcv.expect("SO_RCVBUF"), snd.expect("SO_SNDBUF"));
        // Root (effective uid 0) may force any size.
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        });
        if root {
            assert!(rcv >= BUFFER && snd >= BUFFER, "{rcv} {snd}");
        } else {
            // Capped at the sysctl, but never below the default it started at.
            assert!(rcv > 0 && snd > 0, "{rcv} {snd}");
        }
    }

    #[test]
    fn plain_datagrams_come_back_with_their_sender() {
        let rx = UdpSocket::bind("[::1]:0").or_else(|_| UdpSocket::bind("127.0.0.1:0"));
        let rx = rx.expect("bind");
        let tx =
            UdpSocket::bind(rx.local_addr().expect("addr").ip().to_string() + ":0").expect("bind");
        tx.send_to(b"hello", rx.local_addr().expect("addr"))
            .expect("send");
        let mut buf = [0; 64];
        let (n, from, segment) = recv_train(&rx, &mut buf).expect("recvmsg");
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, tx.local_addr().expect("addr"));
        assert_eq!(segment, None);
    }
}
