//! The simulator's TCP model: a link joins two ends; each direction is a pipe.
//!
//! A pipe holds what its sender wrote in two stages:
//!
//! - `queue`: accepted by the sender's runtime, not yet taken by the socket. For a
//!   machine this is the runtime's per-connection write queue (the memory the
//!   machine must bound); bytes leaving it are reported as `Flushed`.
//! - `socket`: in the kernels and on the wire, at most `window` bytes: the send
//!   buffer plus the receiver's window. A receiver that does not read leaves it
//!   full, so the sender's `queue` stops draining and `Flushed` stops.
//!
//! The receiver reads `socket` in chunks of any size (when it is not paused), then
//! sees end-of-stream once the sender closed or shut its write direction down
//! (`fin`) and everything was read. The two directions end independently: a
//! half-closed link still carries bytes the other way.

use std::collections::VecDeque;

use ferry_core::io::ConnId;

/// Who holds one end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// A machine, which knows the connection as `conn`.
    Node { node: usize, conn: ConnId },
    /// A test-controlled endpoint (index into `Sim::peers`).
    Peer(usize),
}

/// One end of a link.
#[derive(Debug, Clone)]
pub(super) struct End {
    pub(super) owner: Owner,
    /// The owner knows the connection (`Accepted`/`Connected` delivered).
    pub(super) established: bool,
    /// The owner closed it or was told it closed: nothing more reaches it.
    pub(super) closed: bool,
    /// Closed by its owner's decision (`Action::Close`, `client_close`), not by the other side.
    pub(super) closed_by_owner: bool,
    /// Not reading (`PauseRead`, or a test client that stopped reading).
    pub(super) paused: bool,
    /// Bytes that may still be delivered while paused: what a runtime read ahead.
    pub(super) read_ahead: usize,
    /// End-of-stream has been read.
    pub(super) eof: bool,
    /// The owner shut its write direction down (`Action::Shutdown`,
    /// `client_shutdown`, or a pipe carrying a FIN through): nothing more is
    /// written, the other end reads EOF after what was queued.
    pub(super) shutdown: bool,
    /// Spliced (`Action::Pipe`) to this other (link, end): what arrives is forwarded.
    pub(super) splice: Option<(usize, usize)>,
    /// How many `PauseRead`s this end received.
    pub(super) pauses: u64,
}

impl End {
    pub(super) fn new(owner: Owner, established: bool) -> Self {
        Self {
            owner,
            established,
            closed: false,
            closed_by_owner: false,
            paused: false,
            read_ahead: 0,
            eof: false,
            shutdown: false,
            splice: None,
            pauses: 0,
        }
    }

    /// The machine and connection id, if a machine owns this end.
    pub(super) fn node_conn(&self) -> Option<(usize, ConnId)> {
        match self.owner {
            Owner::Node { node, conn } => Some((node, conn)),
            Owner::Peer(_) => None,
        }
    }
}

/// One direction of a link.
#[derive(Debug, Clone, Default)]
pub(super) struct Pipe {
    pub(super) queue: VecDeque<u8>,
    pub(super) socket: VecDeque<u8>,
    pub(super) window: usize,
    /// The sender closed or shut its write direction down: after `queue` and
    /// `socket` drain, the receiver reads EOF.
    pub(super) fin: bool,
    /// The largest `queue` seen: the runtime memory this direction needed.
    pub(super) peak_queue: usize,
    /// Bytes written, moved to the socket (or discarded), and read.
    pub(super) written: u64,
    pub(super) flushed: u64,
    pub(super) read: u64,
}

impl Pipe {
    pub(super) fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            ..Self::default()
        }
    }

    pub(super) fn write(&mut self, data: &[u8]) {
        self.queue.extend(data);
        self.written += data.len() as u64;
        self.peak_queue = self.peak_queue.max(self.queue.len());
    }

    /// Room left in the socket.
    pub(super) fn room(&self) -> usize {
        self.window.saturating_sub(self.socket.len())
    }

    /// Move up to `n` bytes from the queue into the socket; returns how many moved.
    pub(super) fn flush(&mut self, n: usize) -> usize {
        let n = n.min(self.queue.len()).min(self.room());
        self.socket.extend(self.queue.drain(..n));
        self.flushed += n as u64;
        n
    }

    /// Drop up to `n` queued bytes (the receiver is gone); returns how many.
    pub(super) fn discard(&mut self, n: usize) -> usize {
        let n = n.min(self.queue.len());
        self.queue.drain(..n);
        self.flushed += n as u64;
        n
    }

    /// Read up to `n` bytes from the socket.
    pub(super) fn read(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.socket.len());
        self.read += n as u64;
        self.socket.drain(..n).collect()
    }

    /// Everything read and the sender closed.
    pub(super) fn at_eof(&self) -> bool {
        self.fin && self.queue.is_empty() && self.socket.is_empty()
    }
}

/// A TCP connection between two ends. `dirs[i]` carries bytes from `ends[i]`.
#[derive(Debug, Clone)]
pub(super) struct Link {
    pub(super) ends: [End; 2],
    pub(super) dirs: [Pipe; 2],
}

impl Link {
    pub(super) fn new(a: End, b: End, window: usize) -> Self {
        Self {
            ends: [a, b],
            dirs: [Pipe::new(window), Pipe::new(window)],
        }
    }
}
