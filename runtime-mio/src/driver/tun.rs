//! The driver's TUN device: what it reads is fed as `TunPacket`, `WriteTun`
//! is written at once. IP is lossy: a packet the device refuses is dropped and
//! counted, never queued.
//!
//! A device opened with offloads (`Tun::open_with_offload`) reads TCP
//! super-packets, fed segment by segment, and the packets a burst writes
//! (while the sockets are corked) are joined per TCP flow into super-packets
//! at the burst's end (`ferry_core::vpn::offload`, VPN-N11).

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use ferry_core::vpn::offload::{Coalescer, VNET_HDR_LEN};
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::sockets::{Entry, Sockets};
use crate::tun::Tun;

/// At most one warning about dropped packets per this long (the rest is debug).
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// The attached device and its bookkeeping.
pub(super) struct TunPort {
    pub(super) dev: Tun,
    pub(super) token: Token,
    /// Packets `WriteTun` asked for that the device refused.
    dropped: u64,
    last_warning: Option<Instant>,
    /// With offloads: the burst's packets, joined at its end.
    pub(super) coalescer: Coalescer,
    /// With offloads: the read buffer (header and up to 64 KiB of packet) and
    /// the segment cut from it.
    pub(super) read_buf: Vec<u8>,
    pub(super) segment: Vec<u8>,
}

/// A header, then the largest IPv4 packet.
pub(super) const OFFLOAD_READ: usize = VNET_HDR_LEN + 65_535;

impl Sockets {
    /// Read `tun` from now on (edge-triggered, readable only); a device
    /// attached before is detached (and closed).
    pub(super) fn attach_tun(&mut self, tun: Tun) -> io::Result<()> {
        let token = self.token(Entry::Tun);
        let fd = tun.as_raw_fd();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            self.tokens.remove(&token);
            return Err(e);
        }
        let read_buf = if tun.vnet_hdr() {
            vec![0; OFFLOAD_READ]
        } else {
            Vec::new()
        };
        let port = TunPort {
            dev: tun,
            token,
            dropped: 0,
            last_warning: None,
            coalescer: Coalescer::new(),
            read_buf,
            segment: Vec::new(),
        };
        if let Some(old) = self.tun.replace(port) {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&old.dev.as_raw_fd()));
            self.tokens.remove(&old.token);
            self.ready.retain(|t| *t != old.token);
        }
        Ok(())
    }

    /// `WriteTun`: one write, now (with offloads and corked: at the burst's
    /// end, joined). Without a device (or when it refuses the packet:
    /// `WouldBlock`, `ENOBUFS`, a malformed packet) the packet is dropped.
    pub(super) fn write_tun(&mut self, packet: &[u8]) {
        let Some(port) = self.tun.as_mut() else {
            if self.tun_warned {
                tracing::debug!(len = packet.len(), "no TUN device: packet dropped");
            } else {
                self.tun_warned = true;
                tracing::warn!(len = packet.len(), "no TUN device: packet dropped");
            }
            return;
        };
        if port.dev.vnet_hdr() {
            if self.corked {
                port.coalescer.push(packet);
            } else {
                port.write(&[0; VNET_HDR_LEN], packet);
            }
            return;
        }
        port.write(&[], packet);
    }

    /// Write what the burst's packets were joined into.
    pub(super) fn flush_tun(&mut self) {
        let Some(port) = self.tun.as_mut() else {
            return;
        };
        let mut coalescer = std::mem::take(&mut port.coalescer);
        coalescer.drain(|joined| port.write(&[], joined));
        port.coalescer = coalescer;
    }
}

impl TunPort {
    /// One write of `header` and `packet` (which may hold the header itself).
    fn write(&mut self, header: &[u8], packet: &[u8]) {
        let len = header.len() + packet.len();
        loop {
            let written = if header.is_empty() {
                self.dev.write(packet)
            } else {
                self.dev.write_parts(header, packet)
            };
            match written {
                Ok(n) if n == len => return,
                Ok(n) => {
                    tracing::debug!(device = self.dev.name(), n, len, "short TUN write");
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.drop_packet(len, &e),
            }
        }
    }

    fn drop_packet(&mut self, len: usize, error: &io::Error) {
        self.dropped += 1;
        let now = Instant::now();
        let device = self.dev.name();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= DROP_WARNING_EVERY)
        {
            self.last_warning = Some(now);
            tracing::warn!(
                device,
                dropped = self.dropped,
                "TUN device refused a packet ({error}); dropped (IP is lossy)"
            );
        } else {
            tracing::debug!(
                device,
                len,
                dropped = self.dropped,
                "TUN write failed ({error}): packet dropped"
            );
        }
    }
}
