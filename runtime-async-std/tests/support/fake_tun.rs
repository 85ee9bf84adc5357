//! The read half of an in-memory TUN device for `TunIo`: what a test sends
//! on the channel is read, one packet per `read`; a quiet channel times out
//! every 50 ms (so the driver's reader thread can notice it should end), a
//! closed one is end of file. `ended` turns true when the driver drops it.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

pub struct FakeReader {
    pub packets: Receiver<Vec<u8>>,
    pub ended: Arc<AtomicBool>,
}

impl Read for FakeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.packets.recv_timeout(Duration::from_millis(50)) {
            Ok(packet) => {
                buf[..packet.len()].copy_from_slice(&packet);
                Ok(packet.len())
            }
            Err(RecvTimeoutError::Timeout) => Err(io::ErrorKind::TimedOut.into()),
            Err(RecvTimeoutError::Disconnected) => Ok(0),
        }
    }
}

impl Drop for FakeReader {
    fn drop(&mut self) {
        self.ended.store(true, Ordering::Release);
    }
}
