//! A Linux TUN device: IP packets in and out of the kernel's network stack,
//! one packet per `read` / `write`, without the packet-info header
//! (`IFF_TUN | IFF_NO_PI`).
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use ferry_mio::tun::Tun;
//!
//! let tun = Tun::open("")?; // the kernel picks a free name: tun0, tun1, ...
//! tun.set_address(Ipv4Addr::new(10, 250, 0, 1), 24)?;
//! tun.set_mtu(1400)?;
//! tun.up()?; // the kernel now routes 10.250.0.0/24 into the device
//! println!("{} is up", tun.name());
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! The device lives in the network namespace of the thread that opened it, and
//! [`set_address`](Tun::set_address), [`set_mtu`](Tun::set_mtu) and
//! [`up`](Tun::up) configure the device of that name in the namespace of the
//! thread that calls them: call them from the thread (or namespace) that opened
//! it. All of it needs root or `CAP_NET_ADMIN`.
//!
//! The descriptor is non-blocking: [`Tun::read`] returns `WouldBlock` when no
//! packet waits (register it with mio, see
//! [`Driver::attach_tun`](crate::Driver::attach_tun)). For a thread that wants to
//! block, [`Tun::reader`] waits for packets with a timeout. Dropping the last
//! clone of a `Tun` removes the device.
//!
//! The `ioctl`s are the only `unsafe` code of this crate; they sit in the
//! private module `sys` below.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use libc::c_char;

/// Interface names are at most this long, the terminating NUL included.
pub const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// The clone device: every open of it makes (or attaches to) one TUN device.
const CLONE_DEVICE: &str = "/dev/net/tun";

/// An open TUN device (see the [module docs](self)).
pub struct Tun {
    file: File,
    name: String,
    /// Opened with `IFF_VNET_HDR`: see [`Tun::open_with_offload`].
    vnet_hdr: bool,
}

impl fmt::Debug for Tun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("fd", &self.file.as_raw_fd())
            .field("vnet_hdr", &self.vnet_hdr)
            .finish()
    }
}

impl Tun {
    /// Open (creating it if needed) the TUN device `name`, non-blocking.
    /// `""` lets the kernel pick a free `tunN`; [`name`](Self::name) says which.
    ///
    /// A name of [`IFNAMSIZ`] bytes or more, or one the kernel would refuse
    /// (`/`, `:`, whitespace, `.`, `..`), is `InvalidInput` before any system
    /// call. Other errors name the device and say what to do (see [`explain`]).
    pub fn open(name: &str) -> io::Result<Tun> {
        Tun::open_flags(name, false)
    }

    /// Open `name` as [`open`](Self::open) does, but with offloads (VPN-N11):
    /// every [`read`](Self::read) and [`write`](Self::write) carries a 10-byte
    /// `virtio_net_hdr` before the packet (see `ferry_core::vpn::offload`),
    /// and the kernel may hand over TCP/IPv4 super-packets of up to 64 KiB
    /// (`TUN_F_TSO4`) and packets whose checksum is left to complete
    /// (`TUN_F_CSUM`), and accepts both back. A kernel that refuses the
    /// offloads still gets the header, always without offload (a warning says so).
    pub fn open_with_offload(name: &str) -> io::Result<Tun> {
        Tun::open_flags(name, true)
    }

    fn open_flags(name: &str, vnet_hdr: bool) -> io::Result<Tun> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(CLONE_DEVICE)
            .map_err(|e| explain(Step::Open, name, e))?;
        let mut req = ifreq(name);
        let mut flags = libc::IFF_TUN | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        req.ifr_ifru.ifru_flags = flags as libc::c_short;
        sys::ioctl(file.as_fd(), libc::TUNSETIFF, &mut req)
            .map_err(|e| explain(Step::Attach, name, e))?;
        // The kernel wrote the actual name back (e.g. `tun3` for "" or `ferry%d`).
        let name = name_of(&req);
        if vnet_hdr {
            let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4;
            if let Err(e) = sys::set_offload(file.as_fd(), offloads) {
                tracing::warn!(%name, "TUN offloads refused ({e}): one packet per read");
            }
        }
        tracing::debug!(%name, vnet_hdr, "TUN device open");
        Ok(Tun {
            file,
            name,
            vnet_hdr,
        })
    }

    /// Whether reads and writes carry a `virtio_net_hdr` (opened with
    /// [`open_with_offload`](Self::open_with_offload)).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Write `header` and `packet` in one `writev`: one packet to the device.
    pub fn write_parts(&self, header: &[u8], packet: &[u8]) -> io::Result<usize> {
        (&self.file).write_vectored(&[io::IoSlice::new(header), io::IoSlice::new(packet)])
    }

    /// The device's name, as the kernel knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Give the device `ip` with a `prefix`-bit netmask (`SIOCSIFADDR`,
    /// `SIOCSIFNETMASK`). Once the device is [`up`](Self::up), the kernel routes
    /// the subnet into it.
    pub fn set_address(&self, ip: Ipv4Addr, prefix: u8) -> io::Result<()> {
        if prefix > 32 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("prefix /{prefix} for TUN device {} is over 32", self.name),
            ));
        }
        let mask = match prefix {
            0 => 0,
            p => u32::MAX << (32 - p),
        };
        let socket = self.control_socket()?;
        let mut req = ifreq(&self.name);
        req.ifr_ifru.ifru_addr = sockaddr_v4(ip);
        self.configure(&socket, libc::SIOCSIFADDR, &mut req, "set address")?;
        let mut req = ifreq(&self.name);
        req.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
        self.configure(&socket, libc::SIOCSIFNETMASK, &mut req, "set netmask")
    }

    /// Set the device's MTU (`SIOCSIFMTU`).
    pub fn set_mtu(&self, mtu: u32) -> io::Result<()> {
        let mtu = libc::c_int::try_from(mtu).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MTU {mtu} for TUN device {} is too large", self.name),
            )
        })?;
        let socket = self.control_socket()?;
        let mut req = ifreq(&self.name);
        req.ifr_ifru.ifru_mtu = mtu;
        self.configure(&socket, libc::SIOCSIFMTU, &mut req, "set MTU")
    }

    /// Bring the device up (`IFF_UP | IFF_RUNNING`).
    pub fn up(&self) -> io::Result<()> {
        let socket = self.control_socket()?;
        let mut req = ifreq(&self.name);
        self.configure(&socket, libc::SIOCGIFFLAGS, &mut req, "read flags")?;
        let flags = sys::flags(&req) | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        req.ifr_ifru.ifru_flags = flags;
        self.configure(&socket, libc::SIOCSIFFLAGS, &mut req, "bring up")
    }

    /// Read one packet into `buf` (`WouldBlock` when none waits). A packet
    /// longer than `buf` is truncated: give at least the MTU.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Write one whole IP packet.
    pub fn write(&self, packet: &[u8]) -> io::Result<usize> {
        (&self.file).write(packet)
    }

    /// Another handle on the same device (the descriptor is duplicated; they
    /// share the non-blocking mode).
    pub fn try_clone(&self) -> io::Result<Tun> {
        Ok(Tun {
            file: self.file.try_clone()?,
            name: self.name.clone(),
            vnet_hdr: self.vnet_hdr,
        })
    }

    /// Switch the descriptor (and its clones) between non-blocking, the
    /// default, and blocking mode.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        rustix::io::ioctl_fionbio(&self.file, nonblocking).map_err(io::Error::from)
    }

    /// A blocking reader of this device for a thread of its own: each `read`
    /// returns one packet, or `TimedOut` when none came within `timeout`, so the
    /// thread can look whether it should stop. The device stays non-blocking.
    pub fn reader(&self, timeout: Duration) -> io::Result<TunReader> {
        Ok(TunReader {
            tun: self.try_clone()?,
            timeout,
        })
    }

    /// An `AF_INET` datagram socket of the calling thread's namespace: the
    /// handle `SIOCSIF*` requests go through.
    fn control_socket(&self) -> io::Result<UdpSocket> {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "configuring TUN device {}: no socket for the request: {e}",
                    self.name
                ),
            )
        })
    }

    fn configure(
        &self,
        socket: &UdpSocket,
        request: libc::Ioctl,
        req: &mut libc::ifreq,
        what: &'static str,
    ) -> io::Result<()> {
        sys::ioctl(socket.as_fd(), request, req)
            .map_err(|e| explain(Step::Configure(what), &self.name, e))
    }
}

impl Read for Tun {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Tun::read(self, buf)
    }
}

impl Write for Tun {
    fn write(&mut self, packet: &[u8]) -> io::Result<usize> {
        Tun::write(self, packet)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// See [`Tun::reader`].
#[derive(Debug)]
pub struct TunReader {
    tun: Tun,
    timeout: Duration,
}

impl Read for TunReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.tun.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                done => return done,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no packet from TUN device {} yet", self.tun.name),
                ));
            }
            let timeout = Timespec::try_from(left).ok();
            let mut fds = [PollFd::new(&self.tun.file, PollFlags::IN)];
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// What was being done when a system call failed (see [`explain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Opening `/dev/net/tun`.
    Open,
    /// `TUNSETIFF`: creating or attaching to the named device.
    Attach,
    /// A `SIOCSIF*` request; the text says which (e.g. "set MTU").
    Configure(&'static str),
}

/// The error of a TUN system call as the operator should read it: it names
/// the device and says what to do. The kind stays the system's.
///
/// - `EPERM`/`EACCES`: "opening TUN device X needs root or CAP_NET_ADMIN"
///   (or "configuring ...");
/// - `ENOENT` (or `ENODEV`, `ENXIO`) on `/dev/net/tun`: "no /dev/net/tun:
///   load the tun module (modprobe tun)";
/// - `EBUSY`: "TUN device X is in use";
/// - anything else: what failed, on which device, and the system's words.
pub fn explain(step: Step, device: &str, error: io::Error) -> io::Error {
    let device = if device.is_empty() {
        "(a free tunN)"
    } else {
        device
    };
    let errno = error.raw_os_error();
    let is = |codes: &[i32]| errno.is_some_and(|e| codes.contains(&e));
    let message = if is(&[libc::EPERM, libc::EACCES]) {
        let doing = match step {
            Step::Open | Step::Attach => "opening",
            Step::Configure(_) => "configuring",
        };
        format!("{doing} TUN device {device} needs root or CAP_NET_ADMIN ({error})")
    } else if step == Step::Open && is(&[libc::ENOENT, libc::ENODEV, libc::ENXIO]) {
        format!("no {CLONE_DEVICE}: load the tun module (modprobe tun) ({error})")
    } else if is(&[libc::EBUSY]) {
        format!("TUN device {device} is in use: another process holds it ({error})")
    } else {
        match step {
            Step::Open => format!("opening TUN device {device}: {CLONE_DEVICE}: {error}"),
            Step::Attach if is(&[libc::EINVAL]) => format!(
                "opening TUN device {device}: {error} (is a device of that name \
                 already there that is not a TUN device?)"
            ),
            Step::Attach => format!("opening TUN device {device}: {error}"),
            Step::Configure(what) => format!("TUN device {device}: {what}: {error}"),
        }
    };
    io::Error::new(error.kind(), message)
}

/// Refuse, before any system call, a name the kernel would refuse.
fn check_name(name: &str) -> io::Result<()> {
    let invalid = |why: &str| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid TUN device name: {why}"),
        ))
    };
    if name.len() >= IFNAMSIZ {
        return invalid(&format!("at most {} bytes", IFNAMSIZ - 1));
    }
    if name == "." || name == ".." {
        return invalid("reserved");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        return invalid("no '/', ':', NUL or whitespace");
    }
    Ok(())
}

/// A zeroed `struct ifreq` naming `name` (checked: shorter than `IFNAMSIZ`).
fn ifreq(name: &str) -> libc::ifreq {
    let mut ifr_name = [0 as c_char; IFNAMSIZ];
    for (to, byte) in ifr_name.iter_mut().zip(name.bytes()) {
        *to = byte as c_char;
    }
    libc::ifreq {
        ifr_name,
        // The union's largest member, zeroed: every other member reads as zero.
        ifr_ifru: libc::__c_anonymous_ifr_ifru {
            ifru_map: libc::__c_anonymous_ifru_map {
                mem_start: 0,
                mem_end: 0,
                base_addr: 0,
                irq: 0,
                dma: 0,
                port: 0,
            },
        },
    }
}

fn name_of(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn sockaddr_v4(ip: Ipv4Addr) -> libc::sockaddr {
    // `struct sockaddr_in` laid over `struct sockaddr`: port (0), then the address.
    let mut sa_data = [0 as c_char; 14];
    for (to, octet) in sa_data[2..6].iter_mut().zip(ip.octets()) {
        *to = octet as c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

/// The `unsafe` of this crate: `ioctl` on a `struct ifreq`, and reading its union.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    /// `ioctl(fd, request, req)` for the requests that take a `struct ifreq`.
    pub(super) fn ioctl(
        fd: BorrowedFd<'_>,
        request: libc::Ioctl,
        req: &mut libc::ifreq,
    ) -> io::Result<()> {
        // SAFETY: `fd` is open for the whole call (borrowed); every request this
        // module is given (TUNSETIFF, SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFADDR,
        // SIOCSIFNETMASK, SIOCSIFMTU) reads and writes at most one `struct ifreq`
        // through the pointer, and `req` is a valid, initialised, exclusively
        // borrowed `ifreq` that outlives the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(req)) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// `ioctl(fd, TUNSETOFFLOAD, offloads)`: the argument is the value itself.
    pub(super) fn set_offload(fd: BorrowedFd<'_>, offloads: libc::c_uint) -> io::Result<()> {
        // SAFETY: `fd` is open for the whole call (borrowed); TUNSETOFFLOAD
        // takes its argument by value and touches no memory of ours.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(offloads),
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The flags SIOCGIFFLAGS wrote into `req`.
    pub(super) fn flags(req: &libc::ifreq) -> libc::c_short {
        // SAFETY: `ifreq()` initialised every byte of the union and SIOCGIFFLAGS
        // wrote `ifru_flags`; any bit pattern is a valid `c_short`.
        unsafe { req.ifr_ifru.ifru_flags }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn permission_errors_say_root_or_cap_net_admin() {
        for code in [libc::EPERM, libc::EACCES] {
            let e = explain(Step::Attach, "ferry0", errno(code));
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
            assert!(
                e.to_string()
                    .starts_with("opening TUN device ferry0 needs root or CAP_NET_ADMIN"),
                "{e}"
            );
        }
        let e = explain(Step::Open, "", errno(libc::EACCES));
        assert!(e.to_string().contains("needs root or CAP_NET_ADMIN"), "{e}");
        let e = explain(Step::Configure("set MTU"), "ferry0", errno(libc::EPERM));
        assert!(
            e.to_string()
                .starts_with("configuring TUN device ferry0 needs root or CAP_NET_ADMIN"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_clone_device_says_modprobe() {
        let e = explain(Step::Open, "ferry0", errno(libc::ENOENT));
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string()
                .starts_with("no /dev/net/tun: load the tun module (modprobe tun)"),
            "{e}"
        );
    }

    #[test]
    fn busy_and_other_errors_name_the_device() {
        let e = explain(Step::Attach, "ferry0", errno(libc::EBUSY));
        assert!(
            e.to_string().starts_with("TUN device ferry0 is in use"),
            "{e}"
        );
        let e = explain(Step::Attach, "lo", errno(libc::EINVAL));
        assert!(e.to_string().contains("not a TUN device"), "{e}");
        let e = explain(Step::Configure("set MTU"), "ferry0", errno(libc::EINVAL));
        assert!(
            e.to_string().starts_with("TUN device ferry0: set MTU: "),
            "{e}"
        );
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn bad_names_are_refused_before_any_system_call() {
        for name in [
            "a-name-of-16-byt",
            "much-too-long-a-name",
            ".",
            "..",
            "a/b",
            "a:b",
            "a b",
        ] {
            let e = Tun::open(name).expect_err(name);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name}: {e}");
        }
        assert!(check_name("").is_ok());
        assert!(check_name("ferry%d").is_ok());
        assert!(check_name("fifteen-bytes-x").is_ok());
    }

    #[test]
    fn ifreq_carries_the_name_and_the_address() {
        let req = ifreq("tun7");
        assert_eq!(name_of(&req), "tun7");
        let sa = sockaddr_v4(Ipv4Addr::new(10, 250, 0, 1));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        let bytes: Vec<u8> = sa.sa_data[..6].iter().map(|c| *c as u8).collect();
        assert_eq!(bytes, [0, 0, 10, 250, 0, 1]);
    }
}
