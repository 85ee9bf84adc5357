//! A connection's write queue: owned buffers written with `writev`, no copy.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use super::MAX_IO_SLICES;

/// Buffers are merged while the result stays this small.
const MERGE_LIMIT: usize = 4096;

/// Bytes waiting for a socket: whole buffers, the first one partly written.
#[derive(Default)]
pub(super) struct WriteQueue {
    pub(super) bufs: VecDeque<Vec<u8>>,
    /// Bytes of `bufs[0]` already written.
    pub(super) head: usize,
    /// Bytes not yet written, in all buffers.
    pub(super) len: usize,
}

impl WriteQueue {
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue `data`. A small buffer joins a small last one, so a flood of tiny
    /// `Send`s costs bytes, not one allocation each (the machine bounds bytes).
    pub(super) fn push(&mut self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if let Some(last) = self.bufs.back_mut()
            && last.len() + data.len() <= MERGE_LIMIT
        {
            last.extend_from_slice(&data);
        } else {
            self.bufs.push_back(data);
        }
    }

    pub(super) fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let Some(front) = self.bufs.front() else {
                return;
            };
            let left = front.len() - self.head;
            if n < left {
                self.head += n;
                return;
            }
            n -= left;
            self.head = 0;
            self.bufs.pop_front();
        }
    }

    /// Write until the queue is empty or the socket is full. Returns the bytes
    /// written; an error means the socket is unusable.
    pub(super) fn write_to(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            let (result, wanted) = if self.bufs.len() == 1 {
                let chunk = &self.bufs[0][self.head..];
                (w.write(chunk), chunk.len())
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
                let mut wanted = 0;
                let mut count = 0;
                for (i, buf) in self.bufs.iter().take(MAX_IO_SLICES).enumerate() {
                    let chunk = if i == 0 { &buf[self.head..] } else { &buf[..] };
                    slices[i] = IoSlice::new(chunk);
                    wanted += chunk.len();
                    count += 1;
                }
                (w.write_vectored(&slices[..count]), wanted)
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.consume(n);
                    total += n;
                    if n < wanted {
                        // The socket is full; its next writable edge resumes us.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Write `data` after what is queued, straight from the slice if nothing is;
    /// keep a copy of what the socket does not take.
    pub(super) fn write_slice(&mut self, w: &mut impl Write, data: &[u8]) -> io::Result<usize> {
        let mut written = 0;
        if self.is_empty() {
            while written < data.len() {
                match w.write(&data[written..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.push(data[written..].to_vec());
        Ok(written)
    }
}
