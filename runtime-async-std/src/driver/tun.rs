//! The TUN device of a driver: two plain threads around blocking IO, so any
//! device (or anything that reads and writes whole IP packets) fits and no
//! executor thread ever blocks.
//!
//! - The **reader** thread reads one packet per `read` and hands it to the
//!   actor's inbox as `TunPacket`, waiting while the inbox is full (the
//!   device's own queue then fills, and the kernel drops: IP is lossy). It
//!   ends when the actor has ended, when the reader ends (`Ok(0)`) or fails.
//!   It can only look whether the actor ended between reads: a reader that
//!   returns `TimedOut` (or `WouldBlock`) now and then lets it end promptly.
//! - The **writer** thread writes each `WriteTun` packet the actor hands it
//!   through a bounded queue; a packet the queue or the device refuses is
//!   dropped and counted. It ends when the actor has ended.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread;
use std::time::{Duration, Instant};

use async_channel::Sender;
use ferry_core::io::OwnedInput;
use tracing::{debug, warn};

use super::tasks::Msg;

/// Large enough for any IP packet.
const PACKET_BUFFER: usize = 64 << 10;
/// At most one warning about dropped packets per this long (the rest is debug).
const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);
/// Pause after a `WouldBlock` from a non-blocking reader, instead of spinning.
const WOULD_BLOCK_PAUSE: Duration = Duration::from_millis(5);

/// A TUN device for [`Driver::spawn_with_tun`](super::Driver::spawn_with_tun):
/// a blocking reader and a writer of whole IP packets, one per call.
///
/// For a Linux TUN device, e.g. `ferry_mio::tun::Tun` (in its own crate):
/// `TunIo::new(tun.reader(Duration::from_millis(100))?, tun)`; the reader's
/// timeout bounds how long its thread outlives the driver.
pub struct TunIo {
    reader: Box<dyn Read + Send>,
    writer: Box<dyn Write + Send>,
}

impl TunIo {
    /// `reader` returns one packet per `read` (blocking; `TimedOut` or
    /// `WouldBlock` when none came for a while); `writer` takes one per `write`.
    pub fn new(reader: impl Read + Send + 'static, writer: impl Write + Send + 'static) -> Self {
        Self {
            reader: Box::new(reader),
            writer: Box::new(writer),
        }
    }
}

impl std::fmt::Debug for TunIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunIo").finish_non_exhaustive()
    }
}

/// Packets dropped on their way to the device, and when it was last said.
#[derive(Debug)]
struct Drops {
    count: Arc<AtomicU64>,
    last_warning: Option<Instant>,
}

impl Drops {
    fn record(&mut self, why: &dyn std::fmt::Display) {
        let dropped = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        if self
            .last_warning
            .is_none_or(|at| now.duration_since(at) >= DROP_WARNING_EVERY)
        {
            self.last_warning = Some(now);
            warn!(dropped, "TUN packet dropped ({why}); IP is lossy");
        } else {
            debug!(dropped, "TUN packet dropped ({why})");
        }
    }
}

/// The actor's end of the device. Dropping it stops both threads.
pub(super) struct TunPort {
    packets: SyncSender<Vec<u8>>,
    stop: Arc<AtomicBool>,
    drops: Drops,
}

impl TunPort {
    /// Start the reader and writer threads; packets read go to `inbox`.
    pub(super) fn start(
        tun: TunIo,
        inbox: Sender<Msg>,
        queue: usize,
        dropped: Arc<AtomicU64>,
    ) -> io::Result<TunPort> {
        let TunIo { reader, writer } = tun;
        let (packets, packets_rx) = mpsc::sync_channel(queue.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let writer_drops = Drops {
            count: dropped.clone(),
            last_warning: None,
        };
        thread::Builder::new()
            .name("ferry-tun-writer".to_owned())
            .spawn(move || write_packets(writer, packets_rx, writer_drops))?;
        let reader_stop = stop.clone();
        thread::Builder::new()
            .name("ferry-tun-reader".to_owned())
            .spawn(move || read_packets(reader, inbox, reader_stop))?;
        Ok(TunPort {
            packets,
            stop,
            drops: Drops {
                count: dropped,
                last_warning: None,
            },
        })
    }

    /// `WriteTun`: queued for the writer thread, or dropped if the queue is full.
    pub(super) fn write(&mut self, packet: Vec<u8>) {
        match self.packets.try_send(packet) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.drops.record(&"the write queue is full"),
            Err(TrySendError::Disconnected(_)) => self.drops.record(&"the writer has ended"),
        }
    }
}

impl Drop for TunPort {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn read_packets(mut reader: Box<dyn Read + Send>, inbox: Sender<Msg>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0; PACKET_BUFFER];
    while !stop.load(Ordering::Acquire) && !inbox.is_closed() {
        match reader.read(&mut buf) {
            Ok(0) => {
                debug!("the TUN reader ended");
                return;
            }
            Ok(n) => {
                let packet = OwnedInput::TunPacket(buf[..n].to_vec());
                // An error: the actor has ended.
                if inbox.send_blocking(packet.into()).is_err() {
                    return;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(WOULD_BLOCK_PAUSE),
            Err(e) => {
                warn!("reading the TUN device failed, no more packets from it: {e}");
                return;
            }
        }
    }
}

fn write_packets(mut writer: Box<dyn Write + Send>, packets: Receiver<Vec<u8>>, mut drops: Drops) {
    // Ends when the actor drops its `TunPort`.
    while let Ok(packet) = packets.recv() {
        loop {
            match writer.write(&packet) {
                Ok(n) if n == packet.len() => {}
                Ok(n) => debug!(n, len = packet.len(), "short TUN write"),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => drops.record(&e),
            }
            break;
        }
    }
}
