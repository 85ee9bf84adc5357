//! The driver's TUN device: what it reads is fed as `TunPacket`, `WriteTun`
//! is written at once. IP is lossy: a packet the device refuses is dropped and
//! counted, never queued.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

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
}

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
        let port = TunPort {
            dev: tun,
            token,
            dropped: 0,
            last_warning: None,
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

    /// `WriteTun`: one write, now. Without a device (or when it refuses the
    /// packet: `WouldBlock`, `ENOBUFS`, a malformed packet) the packet is dropped.
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
        loop {
            match port.dev.write(packet) {
                Ok(n) if n == packet.len() => return,
                Ok(n) => {
                    tracing::debug!(
                        device = port.dev.name(),
                        n,
                        len = packet.len(),
                        "short TUN write"
                    );
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return port.drop_packet(packet.len(), &e),
            }
        }
    }
}

impl TunPort {
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
