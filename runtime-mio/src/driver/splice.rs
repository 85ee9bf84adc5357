//! A pipe direction moved by the kernel: `splice(2)` from the source socket
//! into a kernel pipe, and from that pipe into the destination socket, so the
//! relayed bytes never cross into user space (but for a small first read per
//! wakeup, see `SPLICE_MIN`). Linux only; elsewhere every pipe direction
//! copies through the read buffer.
//!
//! The kernel pipe is the direction's bounded buffer: a full one stops the
//! source from being read, an empty one has nothing to write. It counts the
//! bytes it holds, so the driver knows when it is empty (a `FIN` is carried
//! through only then) without asking the kernel.

#[cfg(target_os = "linux")]
pub(super) use linux::KernelPipe;
#[cfg(not(target_os = "linux"))]
pub(super) use other::KernelPipe;

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::io::{self, Read};
    use std::os::fd::{AsFd, OwnedFd};

    use rustix::pipe::{
        PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice,
    };

    use super::super::write_queue::WriteQueue;

    /// What the kernel pipe of one direction is grown to, if the system lets it
    /// (`/proc/sys/fs/pipe-max-size`, 1 MiB by default; the default pipe is 64 KiB).
    const PIPE_SIZE: usize = 1024 * 1024;
    /// A smaller pipe (the system's pipe buffers are used up) is not used.
    const MIN_PIPE_SIZE: usize = 64 * 1024;

    const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

    /// The kernel pipe of one direction, and how many bytes it holds.
    pub(in super::super) struct KernelPipe {
        read: File,
        write: OwnedFd,
        len: usize,
    }

    impl KernelPipe {
        /// A non-blocking, close-on-exec pipe, grown if possible.
        pub(in super::super) fn new() -> io::Result<Self> {
            let (read, write) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
            let size = match fcntl_setpipe_size(&write, PIPE_SIZE) {
                Ok(size) => size,
                // E.g. over the user's `pipe-user-pages-soft`: the pipe keeps its size.
                Err(_) => fcntl_getpipe_size(&write)?,
            };
            if size < MIN_PIPE_SIZE {
                // Over that limit a new pipe gets 2 pages: copying does better.
                return Err(io::Error::other(format!("a splice pipe of {size} bytes")));
            }
            Ok(Self {
                read: File::from(read),
                write,
                len: 0,
            })
        }

        pub(in super::super) fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// The bytes the pipe holds.
        pub(in super::super) fn len(&self) -> usize {
            self.len
        }

        /// One `splice` of at most `max` bytes from `src` into the pipe. `Ok(0)`
        /// is the source's end-of-stream; `WouldBlock` means the source is empty
        /// *or* the pipe is full (the kernel does not say which).
        pub(in super::super) fn fill_from(
            &mut self,
            src: &impl AsFd,
            max: usize,
        ) -> io::Result<usize> {
            debug_assert!(max > 0, "a splice of 0 bytes reads as end-of-stream");
            let n = splice(src, None, &self.write, None, max, FLAGS)?;
            self.len += n;
            Ok(n)
        }

        /// Move what the pipe holds into `dst` until it is empty or `dst` would
        /// block. Returns the bytes moved; an error means `dst` is unusable.
        pub(in super::super) fn drain_to(&mut self, dst: &impl AsFd) -> io::Result<usize> {
            let mut total = 0;
            while self.len > 0 {
                match splice(&self.read, None, dst, None, self.len, FLAGS) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.len -= n;
                        total += n;
                    }
                    Err(e) => match io::Error::from(e) {
                        e if e.kind() == io::ErrorKind::WouldBlock => break,
                        e if e.kind() == io::ErrorKind::Interrupted => {}
                        e => return Err(e),
                    },
                }
            }
            Ok(total)
        }

        /// Read what the pipe holds into the end of `out` (a copy: for the rare
        /// `Send` to a piped connection, and for a pipe that ends).
        pub(in super::super) fn take_into(&mut self, out: &mut WriteQueue) -> io::Result<()> {
            let mut data = vec![0; self.len];
            let mut got = 0;
            while got < data.len() {
                match self.read.read(&mut data[got..]) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        data.truncate(got);
                        out.push(data);
                        self.len = 0;
                        return Err(e);
                    }
                }
            }
            data.truncate(got);
            out.push(data);
            self.len = 0;
            Ok(())
        }
    }
}

/// No `splice(2)`: no kernel pipe is ever made, every direction copies.
#[cfg(not(target_os = "linux"))]
mod other {
    use std::io;

    use super::super::write_queue::WriteQueue;

    pub(in super::super) enum KernelPipe {}

    impl KernelPipe {
        pub(in super::super) fn new() -> io::Result<Self> {
            Err(io::ErrorKind::Unsupported.into())
        }

        pub(in super::super) fn is_empty(&self) -> bool {
            match *self {}
        }

        pub(in super::super) fn len(&self) -> usize {
            match *self {}
        }

        pub(in super::super) fn fill_from<S>(
            &mut self,
            _src: &S,
            _max: usize,
        ) -> io::Result<usize> {
            match *self {}
        }

        pub(in super::super) fn drain_to<D>(&mut self, _dst: &D) -> io::Result<usize> {
            match *self {}
        }

        pub(in super::super) fn take_into(&mut self, _out: &mut WriteQueue) -> io::Result<()> {
            match *self {}
        }
    }
}
