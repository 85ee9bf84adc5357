//! The sockets of one driver and everything done to them that does not need
//! the machine: executing actions, writing queues, pipes, lingering closes.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use ferry_core::io::{Action, ConnId, ListenerId, OwnedInput, SocketId};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Poll, Token};

use super::splice::KernelPipe;
use super::write_queue::WriteQueue;
use super::{
    LINGER, PIPE_BUFFER_SIZE, READ_BUDGET, READ_BUFFER_SIZE, SPLICE_MIN, UDP_QUEUE, WAKER, earliest,
};

// `io::ErrorKind::InProgress` is not stable yet; mio's docs name the errno.
#[cfg(any(target_os = "linux", target_os = "android"))]
const EINPROGRESS: i32 = 115;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const EINPROGRESS: i32 = 36; // macOS and the BSDs

/// `None` while a non-blocking connect is still in progress.
pub(super) fn connect_result(stream: &TcpStream) -> Option<io::Result<SocketAddr>> {
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => Some(Err(e)),
        Ok(None) => match stream.peer_addr() {
            Ok(_) => Some(stream.local_addr()),
            Err(e)
                if e.kind() == io::ErrorKind::NotConnected
                    || e.raw_os_error() == Some(EINPROGRESS) =>
            {
                None
            }
            Err(e) => Some(Err(e)),
        },
    }
}

/// What a token stands for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Entry {
    Listener(ListenerId),
    Conn(ConnId),
    Udp(SocketId),
    /// A pipe side that ended, still writing what was queued for it.
    Lingering,
    /// The TUN device.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    Tun,
}

/// The connection an input produced while executing an action is about, if any.
fn report_conn(report: &OwnedInput) -> Option<ConnId> {
    match report {
        OwnedInput::ConnectFailed { conn, .. } | OwnedInput::Closed { conn } => Some(*conn),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnState {
    Connecting,
    Open,
    /// Spliced to the other connection.
    Piped(ConnId),
}

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) token: Token,
    pub(super) state: ConnState,
    pub(super) out: WriteQueue,
    /// Bytes of the machine's `Send`s still in `out` (pipe bytes are not reported;
    /// zero once piped: a piped connection gets no `Flushed`).
    pub(super) unflushed: usize,
    /// Bytes written and not yet reported as `Flushed`.
    pub(super) flushed: usize,
    /// Reading stopped by `PauseRead`.
    pub(super) paused: bool,
    /// Reading stopped because the pipe peer's queue is full.
    pub(super) pipe_blocked: bool,
    /// Spliced: the last read found the kernel pipe toward the peer maybe full
    /// (the kernel does not say whether the pipe is full or the socket empty):
    /// read again once the peer took some. Still registered for reading: new
    /// bytes bring their edge, and a `FIN` behind a full pipe is read then.
    pub(super) pipe_full: bool,
    /// Registered with `READABLE` (`WRITABLE` always is: mio wants one interest
    /// and edges make an idle `WRITABLE` free).
    pub(super) reading: bool,
    /// The peer's FIN was read: nothing more is read (`ReadClosed` for a
    /// half-closing machine; for a piped side, its peer is shut down).
    pub(super) read_closed: bool,
    /// `Shutdown` asked for (by the machine, or by a pipe carrying a FIN): the
    /// write direction is shut down once `out` is empty; later `Send`s are dropped.
    pub(super) shutdown: bool,
    /// The write direction is shut down.
    pub(super) write_closed: bool,
    /// Piped: the kernel pipe that carries the pipe peer's bytes to this side
    /// (`splice(2)`, Linux), written after `out`. `None`: that direction copies.
    pub(super) inbound: Option<KernelPipe>,
}

impl Conn {
    /// Nothing is waiting to be written to this side.
    fn drained(&self) -> bool {
        self.out.is_empty() && self.inbound.as_ref().is_none_or(KernelPipe::is_empty)
    }
}

pub(super) struct Listener {
    pub(super) socket: TcpListener,
    pub(super) token: Token,
}

pub(super) struct Udp {
    pub(super) socket: UdpSocket,
    pub(super) token: Token,
    pub(super) queue: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Registered for writability: only while datagrams wait for buffer space,
    /// so an idle or keeping-up socket is not woken by every freed buffer.
    pub(super) want_write: bool,
    /// The largest datagram sent in trains (`UDP_SEGMENT`); 0 once the
    /// kernel refused a train for another reason than its size.
    pub(super) train_max: usize,
}

pub(super) struct Lingering {
    pub(super) stream: TcpStream,
    pub(super) out: WriteQueue,
    pub(super) deadline: Instant,
}

/// Every socket, and the bookkeeping that does not need the machine.
pub(super) struct Sockets {
    pub(super) poll: Poll,
    pub(super) tokens: HashMap<Token, Entry>,
    pub(super) next_token: usize,
    pub(super) next_conn: u64,
    pub(super) listeners: HashMap<ListenerId, Listener>,
    pub(super) conns: HashMap<ConnId, Conn>,
    pub(super) udps: HashMap<SocketId, Udp>,
    pub(super) lingering: HashMap<Token, Lingering>,
    pub(super) buf: Vec<u8>,
    /// Inputs produced by actions, fed after the machine is drained.
    pub(super) pending: VecDeque<OwnedInput>,
    /// Connections with written bytes not yet reported as `Flushed`.
    pub(super) dirty: Vec<ConnId>,
    /// Connections given bytes by this drain's `Send`s, written once it ends:
    /// one `writev` per connection per drain, not one `write` per `Send`.
    pub(super) unsent: Vec<ConnId>,
    /// Tokens to serve without waiting for an edge.
    pub(super) ready: VecDeque<Token>,
    pub(super) retry_accept: Vec<(Instant, Token)>,
    pub(super) tun_warned: bool,
    /// The attached TUN device, if any.
    #[cfg(target_os = "linux")]
    pub(super) tun: Option<super::tun::TunPort>,
    /// Pipe directions go through a kernel pipe where the system has one
    /// (false: every direction copies, as on other systems; for tests).
    pub(super) splice: bool,
    /// While set, `SendTo` only queues (see [`Sockets::cork`]).
    pub(super) corked: bool,
    /// UDP sockets given datagrams while corked.
    corked_udps: Vec<SocketId>,
}

impl Sockets {
    pub(super) fn new(poll: Poll) -> Self {
        Self {
            poll,
            tokens: HashMap::new(),
            next_token: WAKER.0 + 1,
            next_conn: 1,
            listeners: HashMap::new(),
            conns: HashMap::new(),
            udps: HashMap::new(),
            lingering: HashMap::new(),
            buf: vec![0; READ_BUFFER_SIZE],
            pending: VecDeque::new(),
            dirty: Vec::new(),
            unsent: Vec::new(),
            ready: VecDeque::new(),
            retry_accept: Vec::new(),
            tun_warned: false,
            #[cfg(target_os = "linux")]
            tun: None,
            splice: true,
            corked: false,
            corked_udps: Vec::new(),
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        #[cfg(target_os = "linux")]
        if self.tun.is_some() {
            return false;
        }
        self.listeners.is_empty()
            && self.conns.is_empty()
            && self.udps.is_empty()
            && self.lingering.is_empty()
            && self.ready.is_empty()
    }

    /// Tokens are never reused, so a stale event can only miss, never hit another socket.
    pub(super) fn token(&mut self, entry: Entry) -> Token {
        let token = Token(self.next_token);
        self.next_token += 1;
        self.tokens.insert(token, entry);
        token
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let linger = self.lingering.values().map(|l| l.deadline).min();
        let retry = self.retry_accept.iter().map(|(at, _)| *at).min();
        earliest(linger, retry)
    }

    pub(super) fn expire(&mut self, now: Instant) {
        if !self.retry_accept.is_empty() {
            let (due, later): (Vec<_>, Vec<_>) =
                self.retry_accept.drain(..).partition(|(at, _)| *at <= now);
            self.retry_accept = later;
            self.ready.extend(due.into_iter().map(|(_, token)| token));
        }
        if self.lingering.values().any(|l| l.deadline <= now) {
            let expired: Vec<Token> = self
                .lingering
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(token, _)| *token)
                .collect();
            for token in expired {
                tracing::debug!("dropping a pipe side that did not drain in {LINGER:?}");
                self.drop_lingering(token);
            }
        }
    }

    pub(super) fn execute(&mut self, action: Action) {
        match action {
            Action::Listen { listener, addr } => self.listen(listener, addr),
            Action::CloseListener { listener } => {
                if let Some(mut entry) = self.listeners.remove(&listener) {
                    let _ = self.poll.registry().deregister(&mut entry.socket);
                    self.tokens.remove(&entry.token);
                    self.retry_accept.retain(|(_, t)| *t != entry.token);
                }
            }
            Action::Connect { conn, addr } => self.connect(conn, addr),
            Action::Send { conn, data } => self.send(conn, data),
            Action::Close { conn } => self.close(conn),
            Action::Shutdown { conn } => self.shutdown(conn),
            Action::PauseRead { conn } => self.set_paused(conn, true),
            Action::ResumeRead { conn } => self.set_paused(conn, false),
            Action::Pipe { a, b } => self.pipe(a, b),
            Action::BindUdp { socket, addr } => self.bind_udp(socket, addr),
            Action::CloseUdp { socket } => {
                if let Some(mut udp) = self.udps.remove(&socket) {
                    let _ = self.poll.registry().deregister(&mut udp.socket);
                    self.tokens.remove(&udp.token);
                }
            }
            Action::SendTo { socket, to, data } => self.send_to(socket, to, data),
            #[cfg(target_os = "linux")]
            Action::WriteTun(packet) => self.write_tun(&packet),
            #[cfg(not(target_os = "linux"))]
            Action::WriteTun(packet) => {
                if self.tun_warned {
                    tracing::debug!(len = packet.len(), "no TUN device: packet dropped");
                } else {
                    self.tun_warned = true;
                    tracing::warn!(len = packet.len(), "no TUN device: packet dropped");
                }
            }
        }
    }

    pub(super) fn listen(&mut self, listener: ListenerId, addr: SocketAddr) {
        let bound = TcpListener::bind(addr).and_then(|socket| {
            let local = socket.local_addr()?;
            Ok((socket, local))
        });
        match bound {
            Ok((mut socket, local)) => {
                let token = self.token(Entry::Listener(listener));
                if let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut socket, token, Interest::READABLE)
                {
                    self.tokens.remove(&token);
                    self.pending.push_back(OwnedInput::ListenFailed {
                        listener,
                        error: e.to_string(),
                    });
                    return;
                }
                tracing::debug!(%listener, %local, "listening");
                self.listeners.insert(listener, Listener { socket, token });
                self.pending
                    .push_back(OwnedInput::Listening { listener, local });
            }
            Err(e) => self.pending.push_back(OwnedInput::ListenFailed {
                listener,
                error: format!("cannot listen on {addr}: {e}"),
            }),
        }
    }

    pub(super) fn register_conn(
        &mut self,
        id: ConnId,
        mut stream: TcpStream,
        state: ConnState,
    ) -> io::Result<()> {
        let token = self.token(Entry::Conn(id));
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.tokens.remove(&token);
            return Err(e);
        }
        self.conns.insert(
            id,
            Conn {
                stream,
                token,
                state,
                out: WriteQueue::default(),
                unflushed: 0,
                flushed: 0,
                paused: false,
                pipe_blocked: false,
                pipe_full: false,
                reading: true,
                read_closed: false,
                shutdown: false,
                write_closed: false,
                inbound: None,
            },
        );
        Ok(())
    }

    /// Take an accepted stream; its id has the core bit clear.
    pub(super) fn adopt(&mut self, stream: TcpStream) -> io::Result<ConnId> {
        let _ = stream.set_nodelay(true);
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.register_conn(id, stream, ConnState::Open)?;
        Ok(id)
    }

    pub(super) fn connect(&mut self, conn: ConnId, addr: SocketAddr) {
        let result = TcpStream::connect(addr)
            .and_then(|s| self.register_conn(conn, s, ConnState::Connecting));
        if let Err(e) = result {
            self.pending.push_back(OwnedInput::ConnectFailed {
                conn,
                error: format!("cannot connect to {addr}: {e}"),
            });
        }
    }

    pub(super) fn send(&mut self, id: ConnId, data: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            tracing::trace!(%id, "send to an unknown connection ignored");
            return;
        };
        if conn.shutdown {
            tracing::debug!(%id, len = data.len(), "send after shutdown dropped");
            return;
        }
        // A piped connection gets no `Flushed`: its bytes join the spliced stream.
        if !matches!(conn.state, ConnState::Piped(_)) {
            conn.unflushed += data.len();
        }
        // An empty queue means no writable edge is awaited: write after the drain.
        // A queue that holds bytes is already listed, or waits for that edge.
        if conn.out.is_empty() && conn.state != ConnState::Connecting {
            self.unsent.push(id);
        }
        // Bytes the pipe already read for `id` go first: `out` is written
        // before the kernel pipe, so they move to `out` (a rare copy).
        let (moved, failed) = match conn.inbound.as_mut() {
            Some(pipe) if !pipe.is_empty() => (true, pipe.take_into(&mut conn.out).err()),
            _ => (false, None),
        };
        conn.out.push(data);
        if let Some(e) = failed {
            tracing::debug!(%id, "reading a splice pipe failed: {e}");
            self.end_pipe(id, true);
        } else if moved && let ConnState::Piped(source) = conn.state {
            // The kernel pipe is empty now; `out` bounds the source as in a
            // copied direction (resumed once it holds less than that).
            if conn.out.len >= PIPE_BUFFER_SIZE {
                if let Some(source) = self.conns.get_mut(&source) {
                    source.pipe_blocked = true;
                }
                self.update_interest(source);
            } else {
                self.resume(source);
            }
        }
    }

    /// Write what this drain's `Send`s queued (see `unsent`).
    pub(super) fn flush_unsent(&mut self) {
        for id in std::mem::take(&mut self.unsent) {
            self.flush(id);
        }
    }

    /// Write what is queued for `id`; note it for `Flushed`; unblock a pipe source;
    /// shut the write direction down once a pending `Shutdown` has nothing before it.
    pub(super) fn flush(&mut self, id: ConnId) {
        self.write_queued(id);
        self.finish_shutdown(id);
    }

    fn write_queued(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.state == ConnState::Connecting {
            return;
        }
        if conn.out.is_empty() {
            self.write_spliced(id);
            return;
        }
        match conn.out.write_to(&mut conn.stream) {
            Ok(n) => {
                let machine_bytes = n.min(conn.unflushed);
                if machine_bytes > 0 {
                    conn.unflushed -= machine_bytes;
                    if conn.flushed == 0 {
                        self.dirty.push(id);
                    }
                    conn.flushed += machine_bytes;
                }
                let empty = conn.out.is_empty();
                if let ConnState::Piped(source) = conn.state
                    && conn.out.len < PIPE_BUFFER_SIZE
                {
                    self.resume(source);
                }
                if empty {
                    self.write_spliced(id);
                }
            }
            Err(e) => {
                tracing::debug!(%id, "write failed: {e}");
                self.lose(id);
            }
        }
    }

    /// Move what the kernel pipe holds for `id` into its socket (`out` is
    /// empty); a source that found the pipe full is read again.
    fn write_spliced(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let ConnState::Piped(source) = conn.state else {
            return;
        };
        let Some(pipe) = conn.inbound.as_mut().filter(|p| !p.is_empty()) else {
            return;
        };
        match pipe.drain_to(&conn.stream) {
            Ok(0) => {}
            Ok(_) => self.resume(source),
            Err(e) => {
                tracing::debug!(%id, "pipe splice out failed: {e}");
                self.lose(id);
            }
        }
    }

    /// `Action::Shutdown`: shut the write direction down after what is queued.
    pub(super) fn shutdown(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            tracing::trace!(%id, "shutdown of an unknown connection ignored");
            return;
        };
        conn.shutdown = true;
        // Bytes this drain queued go out after the drain (`unsent`), and so does
        // the FIN then; with nothing queued it goes now.
        self.finish_shutdown(id);
    }

    /// Shut `id`'s write direction down if a shutdown is pending and nothing is
    /// queued before it; a pipe whose both directions are so ended ends.
    fn finish_shutdown(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.shutdown
            || conn.write_closed
            || !conn.drained()
            || conn.state == ConnState::Connecting
        {
            return;
        }
        conn.write_closed = true;
        if let Err(e) = conn.stream.shutdown(Shutdown::Write) {
            // The peer is gone: the next read or write reports it.
            tracing::debug!(%id, "shutdown failed: {e}");
        }
        if let ConnState::Piped(peer) = conn.state {
            self.end_pipe_if_done(id, peer);
        }
    }

    /// Both directions of the pipe `a`-`b` carried their FIN through: close both
    /// and report `Closed` for each.
    fn end_pipe_if_done(&mut self, a: ConnId, b: ConnId) {
        let done = |c: Option<&Conn>| c.is_some_and(|c| c.read_closed && c.write_closed);
        if !done(self.conns.get(&a)) || !done(self.conns.get(&b)) {
            return;
        }
        for side in [a, b] {
            if let Some(conn) = self.forget(side) {
                self.pending.retain(|r| report_conn(r) != Some(side));
                self.pending.push_back(OwnedInput::Closed { conn: side });
                finish(conn.stream, conn.out, &mut self.buf);
            }
        }
    }

    /// The peer's FIN was read on `id`: stop reading it.
    pub(super) fn set_read_closed(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.read_closed = true;
            self.update_interest(id);
        }
    }

    pub(super) fn take_flushed(&mut self) -> Option<(ConnId, usize)> {
        while let Some(id) = self.dirty.pop() {
            if let Some(conn) = self.conns.get_mut(&id) {
                let bytes = std::mem::take(&mut conn.flushed);
                if bytes > 0 {
                    return Some((id, bytes));
                }
            }
        }
        None
    }

    pub(super) fn update_interest(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let reading = !conn.paused && !conn.pipe_blocked && !conn.read_closed;
        if reading == conn.reading {
            return;
        }
        let interest = if reading {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::WRITABLE
        };
        match self
            .poll
            .registry()
            .reregister(&mut conn.stream, conn.token, interest)
        {
            Ok(()) => {
                conn.reading = reading;
                if reading {
                    // Bytes that came while paused brought their edge already.
                    self.ready.push_back(conn.token);
                }
            }
            Err(e) => {
                tracing::warn!(%id, "reregister failed: {e}");
                self.lose(id);
            }
        }
    }

    pub(super) fn set_paused(&mut self, id: ConnId, paused: bool) {
        if let Some(conn) = self.conns.get_mut(&id)
            && conn.paused != paused
        {
            conn.paused = paused;
            self.update_interest(id);
        }
    }

    /// The pipe peer of `id` took some of what waits for it: read `id` again if
    /// it stopped for that.
    fn resume(&mut self, id: ConnId) {
        self.unblock(id);
        if let Some(conn) = self.conns.get_mut(&id)
            && std::mem::take(&mut conn.pipe_full)
        {
            self.ready.push_back(conn.token);
        }
    }

    pub(super) fn unblock(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id)
            && conn.pipe_blocked
        {
            conn.pipe_blocked = false;
            self.update_interest(id);
        }
    }

    /// Remove `id` from the tables; the caller decides what becomes of the socket.
    /// What the kernel pipe held for it is in `out` then.
    pub(super) fn forget(&mut self, id: ConnId) -> Option<Conn> {
        let mut conn = self.conns.remove(&id)?;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.tokens.remove(&conn.token);
        if let Some(mut pipe) = conn.inbound.take()
            && !pipe.is_empty()
            && let Err(e) = pipe.take_into(&mut conn.out)
        {
            tracing::debug!(%id, "reading a splice pipe failed: {e}");
        }
        Some(conn)
    }

    /// The machine closes `id`: one write attempt, then close; no input after.
    pub(super) fn close(&mut self, id: ConnId) {
        self.pending.retain(|r| report_conn(r) != Some(id));
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let peer = match conn.state {
            ConnState::Piped(peer) => Some(peer),
            _ => None,
        };
        if let Some(conn) = self.forget(id) {
            finish(conn.stream, conn.out, &mut self.buf);
        }
        // The other side of a pipe cannot go on alone; it is reported, `id` is not.
        if let Some(peer) = peer.and_then(|peer| self.forget(peer).map(|c| (peer, c))) {
            let (peer, conn) = peer;
            self.pending.retain(|r| report_conn(r) != Some(peer));
            self.pending.push_back(OwnedInput::Closed { conn: peer });
            self.linger(conn);
        }
    }

    /// `id` ended (EOF or error) without the machine asking: report `Closed`.
    pub(super) fn lose(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if let ConnState::Piped(_) = conn.state {
            self.end_pipe(id, true);
            return;
        }
        if let Some(conn) = self.forget(id) {
            finish(conn.stream, conn.out, &mut self.buf);
            self.pending.push_back(OwnedInput::Closed { conn: id });
        }
    }

    pub(super) fn pipe(&mut self, a: ConnId, b: ConnId) {
        let usable = |conn: Option<&Conn>| conn.is_some_and(|c| c.state == ConnState::Open);
        if a == b || !usable(self.conns.get(&a)) || !usable(self.conns.get(&b)) {
            tracing::warn!(%a, %b, "cannot pipe: both must be distinct open connections");
            self.lose(a);
            self.lose(b);
            return;
        }
        for (this, other) in [(a, b), (b, a)] {
            // The kernel pipe that carries `other`'s bytes to `this`, unless that
            // direction already ended or `this` was shut down (its bytes are dropped).
            let spliced = self.splice
                && !self.conns.get(&other).is_some_and(|c| c.read_closed)
                && self.conns.get(&this).is_some_and(|c| !c.shutdown);
            let inbound = if spliced {
                KernelPipe::new()
                    .inspect_err(|e| tracing::debug!(%a, %b, "no splice pipe, copying: {e}"))
                    .ok()
            } else {
                None
            };
            if let Some(conn) = self.conns.get_mut(&this) {
                conn.inbound = inbound;
                conn.state = ConnState::Piped(other);
                conn.paused = false;
                // No `Flushed` from now on, not even for what was queued before.
                conn.unflushed = 0;
                conn.flushed = 0;
                let token = conn.token;
                self.update_interest(this);
                // Bytes may wait in the socket whose edge the machine already took.
                self.ready.push_back(token);
            }
        }
        // A FIN a half-closing machine was told of before the pipe is carried
        // through at once.
        for (this, other) in [(a, b), (b, a)] {
            if self.conns.get(&this).is_some_and(|c| c.read_closed)
                && let Some(conn) = self.conns.get_mut(&other)
            {
                conn.shutdown = true;
                self.finish_shutdown(other);
            }
        }
        // Both directions may have ended before the pipe (the machine shut both down).
        self.end_pipe_if_done(a, b);
    }

    /// Move bytes from piped `id` to its peer until the socket is empty, the
    /// peer's queue (or kernel pipe) is full, or this wakeup's share is used.
    pub(super) fn pump(&mut self, id: ConnId, short_read_drains: bool) {
        if let Some(ConnState::Piped(peer)) = self.conns.get(&id).map(|c| c.state)
            && self
                .conns
                .get(&peer)
                .is_some_and(|p| p.inbound.is_some() && !p.shutdown)
        {
            self.splice(id, peer, short_read_drains);
        } else {
            self.copy(id, short_read_drains);
        }
    }

    /// `pump` through the peer's kernel pipe: the bytes stay in the kernel.
    fn splice(&mut self, id: ConnId, peer_id: ConnId, short_read_drains: bool) {
        let mut budget = READ_BUDGET;
        // A few bytes (a request, a reply) cost less copied: two syscalls, and
        // a short read tells that the socket is empty, which a splice does not
        // (a short splice may have filled the pipe). Only with nothing queued
        // for the peer, so the copied bytes cannot overtake any.
        let [Some(conn), Some(peer)] = self.conns.get_disjoint_mut([&id, &peer_id]) else {
            return;
        };
        if conn.read_closed {
            return;
        }
        conn.pipe_full = false;
        if peer.drained() {
            let n = match conn.stream.read(&mut self.buf[..SPLICE_MIN]) {
                Ok(0) => {
                    self.read_eof(id, peer_id);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.ready.push_back(conn.token);
                    return;
                }
                Err(e) => {
                    tracing::debug!(%id, "pipe read failed: {e}");
                    self.end_pipe(id, true);
                    return;
                }
            };
            if let Err(e) = peer.out.write_slice(&mut peer.stream, &self.buf[..n]) {
                tracing::debug!(id = %peer_id, "pipe write failed: {e}");
                self.end_pipe(peer_id, true);
                return;
            }
            if short_read_drains && n < SPLICE_MIN {
                return;
            }
            budget -= n;
        }
        while budget > 0 {
            let [Some(conn), Some(peer)] = self.conns.get_disjoint_mut([&id, &peer_id]) else {
                return;
            };
            if conn.read_closed || peer.shutdown || conn.state != ConnState::Piped(peer_id) {
                return;
            }
            let Some(pipe) = peer.inbound.as_mut() else {
                return;
            };
            match pipe.fill_from(&conn.stream, budget) {
                Ok(0) => {
                    // Half-close carried through, once the kernel pipe is empty.
                    self.read_eof(id, peer_id);
                    return;
                }
                Ok(n) => budget = budget.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The socket is empty, or the kernel pipe is full.
                    if pipe.is_empty() {
                        return;
                    }
                    if !self.pipe_room(peer_id) {
                        // Read again once the peer took some (`write_spliced`).
                        if let Some(conn) = self.conns.get_mut(&id) {
                            conn.pipe_full = true;
                        }
                        return;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(%id, "pipe splice in failed: {e}");
                    self.end_pipe(id, true);
                    return;
                }
            }
            self.write_queued(peer_id);
        }
        if let Some(conn) = self.conns.get(&id) {
            self.ready.push_back(conn.token);
        }
    }

    /// Write what waits for `id`; true if its kernel pipe got emptier (or the
    /// pipe ended: then there is nothing left to wait for either).
    fn pipe_room(&mut self, id: ConnId) -> bool {
        let held = |s: &Self| {
            s.conns
                .get(&id)
                .and_then(|c| c.inbound.as_ref().map(|p| p.len()))
        };
        let before = held(self);
        self.write_queued(id);
        match (before, held(self)) {
            (Some(before), Some(after)) => after < before,
            _ => true,
        }
    }

    /// Piped `id` read end-of-stream: stop reading it; its peer's write direction
    /// is shut down after everything read from `id`; the other direction goes on.
    fn read_eof(&mut self, id: ConnId, peer_id: ConnId) {
        self.set_read_closed(id);
        if let Some(peer) = self.conns.get_mut(&peer_id) {
            peer.shutdown = true;
        }
        self.finish_shutdown(peer_id);
    }

    /// `pump` through the read buffer: every byte is copied through user space.
    fn copy(&mut self, id: ConnId, short_read_drains: bool) {
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let Some((ConnState::Piped(peer_id), false)) =
                self.conns.get(&id).map(|c| (c.state, c.read_closed))
            else {
                return;
            };
            let queued = self.conns.get(&peer_id).map_or(0, |p| p.out.len);
            // Read no more than the peer's queue can take: the bound is exact.
            let room = PIPE_BUFFER_SIZE.saturating_sub(queued).min(self.buf.len());
            if room == 0 {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.pipe_blocked = true;
                }
                self.update_interest(id);
                return;
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            let n = match conn.stream.read(&mut self.buf[..room]) {
                Ok(0) => {
                    self.read_eof(id, peer_id);
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(%id, "pipe read failed: {e}");
                    self.end_pipe(id, true);
                    return;
                }
            };
            let Some(peer) = self.conns.get_mut(&peer_id) else {
                return;
            };
            if peer.shutdown {
                // The machine shut the peer down: like a `Send` after `Shutdown`.
                tracing::debug!(id = %peer_id, len = n, "piped bytes after shutdown dropped");
            } else if let Err(e) = peer.out.write_slice(&mut peer.stream, &self.buf[..n]) {
                tracing::debug!(id = %peer_id, "pipe write failed: {e}");
                self.end_pipe(peer_id, true);
                return;
            }
            if short_read_drains && n < room {
                return;
            }
        }
        if let Some(conn) = self.conns.get(&id) {
            self.ready.push_back(conn.token);
        }
    }

    /// One side of a pipe failed (or was refused): report `Closed` for both, let
    /// each write what is queued for it (unless it failed), then close.
    pub(super) fn end_pipe(&mut self, id: ConnId, failed: bool) {
        let peer = match self.conns.get(&id).map(|c| c.state) {
            Some(ConnState::Piped(peer)) => Some(peer),
            Some(_) => None,
            None => return,
        };
        for (side, side_failed) in [(Some(id), failed), (peer, false)] {
            let Some(side) = side else { continue };
            let Some(conn) = self.forget(side) else {
                continue;
            };
            self.pending.retain(|r| report_conn(r) != Some(side));
            self.pending.push_back(OwnedInput::Closed { conn: side });
            if side_failed {
                continue; // dropped
            }
            self.linger(conn);
        }
    }

    pub(super) fn linger(&mut self, conn: Conn) {
        let Conn {
            mut stream,
            mut out,
            ..
        } = conn;
        if out.write_to(&mut stream).is_err() {
            return;
        }
        if out.is_empty() {
            finish(stream, out, &mut self.buf);
            return;
        }
        let token = self.token(Entry::Lingering);
        if self
            .poll
            .registry()
            .register(&mut stream, token, Interest::WRITABLE)
            .is_err()
        {
            self.tokens.remove(&token);
            return;
        }
        self.lingering.insert(
            token,
            Lingering {
                stream,
                out,
                deadline: Instant::now() + LINGER,
            },
        );
    }

    pub(super) fn linger_ready(&mut self, token: Token) {
        let Some(l) = self.lingering.get_mut(&token) else {
            return;
        };
        match l.out.write_to(&mut l.stream) {
            Ok(_) if l.out.is_empty() => {
                if let Some(mut l) = self.lingering.remove(&token) {
                    self.tokens.remove(&token);
                    let _ = self.poll.registry().deregister(&mut l.stream);
                    finish(l.stream, l.out, &mut self.buf);
                }
            }
            Ok(_) => {}
            Err(_) => self.drop_lingering(token),
        }
    }

    pub(super) fn drop_lingering(&mut self, token: Token) {
        if let Some(mut l) = self.lingering.remove(&token) {
            self.tokens.remove(&token);
            let _ = self.poll.registry().deregister(&mut l.stream);
        }
    }

    pub(super) fn bind_udp(&mut self, socket: SocketId, addr: SocketAddr) {
        let bound = UdpSocket::bind(addr).and_then(|s| Ok((s.local_addr()?, s)));
        let (local, mut udp) = match bound {
            Ok(bound) => bound,
            Err(e) => {
                self.pending.push_back(OwnedInput::UdpBindFailed {
                    socket,
                    error: format!("cannot bind UDP {addr}: {e}"),
                });
                return;
            }
        };
        let token = self.token(Entry::Udp(socket));
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut udp, token, Interest::READABLE)
        {
            self.tokens.remove(&token);
            self.pending.push_back(OwnedInput::UdpBindFailed {
                socket,
                error: e.to_string(),
            });
            return;
        }
        #[cfg(target_os = "linux")]
        let (train_max, gro) = (TRAIN_MAX_DATAGRAM, super::udp_gso::enable_gro(&udp));
        #[cfg(target_os = "linux")]
        let (rcvbuf, sndbuf) = super::udp_gso::grow_buffers(&udp);
        #[cfg(not(target_os = "linux"))]
        let (train_max, gro, rcvbuf, sndbuf) = (0, false, None::<i32>, None::<i32>);
        tracing::debug!(%socket, %local, gro, ?rcvbuf, ?sndbuf, "UDP socket bound");
        self.udps.insert(
            socket,
            Udp {
                socket: udp,
                token,
                queue: VecDeque::new(),
                want_write: false,
                train_max,
            },
        );
        self.pending
            .push_back(OwnedInput::UdpBound { socket, local });
    }

    pub(super) fn send_to(&mut self, id: SocketId, to: SocketAddr, data: Vec<u8>) {
        let Some(udp) = self.udps.get_mut(&id) else {
            return;
        };
        if udp.queue.len() >= UDP_QUEUE {
            tracing::debug!(%id, %to, "UDP queue full: datagram dropped");
            return;
        }
        udp.queue.push_back((to, data));
        if udp.queue.len() == 1 {
            if self.corked {
                self.corked_udps.push(id);
            } else {
                self.flush_udp(id);
            }
        }
    }

    /// From now until [`Sockets::uncork`], datagrams are queued, not sent:
    /// the driver corks while it reads a burst (e.g. TUN packets), so the
    /// datagrams the burst produces can leave as trains (`UDP_SEGMENT`).
    pub(super) fn cork(&mut self) {
        self.corked = true;
    }

    /// Send what queued while corked.
    pub(super) fn uncork(&mut self) {
        self.corked = false;
        while let Some(id) = self.corked_udps.pop() {
            self.flush_udp(id);
        }
        #[cfg(target_os = "linux")]
        self.flush_tun();
    }

    pub(super) fn flush_udp(&mut self, id: SocketId) {
        let Some(udp) = self.udps.get_mut(&id) else {
            return;
        };
        while let Some((to, data)) = udp.queue.front() {
            let to = *to;
            #[cfg(target_os = "linux")]
            let sent = match train(&udp.queue, udp.train_max) {
                Some((count, segment)) => {
                    let parts = udp.queue.iter().take(count).map(|(_, d)| d.as_slice());
                    match super::udp_gso::send_train(&udp.socket, to, parts, segment) {
                        Ok(_) => Ok(count),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // Too large for the path (EINVAL, EMSGSIZE): smaller
                            // trains only; anything else: no more trains.
                            let size =
                                matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EMSGSIZE));
                            udp.train_max = if size { usize::from(segment) - 1 } else { 0 };
                            tracing::debug!(%id, %to, train_max = udp.train_max, "UDP train refused ({e}); sending one by one");
                            continue;
                        }
                    }
                }
                None => udp.socket.send_to(data, to).map(|_| 1),
            };
            #[cfg(not(target_os = "linux"))]
            let sent = udp.socket.send_to(data, to).map(|_| 1);
            match sent {
                Ok(count) => {
                    udp.queue.drain(..count);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !udp.want_write {
                        udp.want_write = true;
                        let interest = Interest::READABLE | Interest::WRITABLE;
                        let token = udp.token;
                        if let Err(e) =
                            self.poll
                                .registry()
                                .reregister(&mut udp.socket, token, interest)
                        {
                            tracing::debug!(%id, "cannot wait for UDP writability: {e}");
                        }
                    }
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(%id, %to, "send_to failed, datagram dropped: {e}");
                    udp.queue.pop_front();
                }
            }
        }
        if udp.want_write {
            udp.want_write = false;
            let token = udp.token;
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(&mut udp.socket, token, Interest::READABLE)
            {
                tracing::debug!(%id, "cannot stop waiting for UDP writability: {e}");
            }
        }
    }
}

/// Datagrams up to this size are sent in trains; a path that refuses lowers it.
#[cfg(target_os = "linux")]
const TRAIN_MAX_DATAGRAM: usize = 1472;

/// The train at the head of `queue`: the longest run of at least two
/// datagrams to the same address, all of the first one's size (the last may
/// be shorter, and ends the run), at most `train_max` bytes each, within the
/// kernel's limits. Returns the run's length and segment size, or `None` to
/// send the head alone.
#[cfg(target_os = "linux")]
pub(super) fn train(
    queue: &VecDeque<(SocketAddr, Vec<u8>)>,
    train_max: usize,
) -> Option<(usize, u16)> {
    use super::udp_gso::{MAX_SEGMENTS, MAX_TRAIN};
    let (to, first) = queue.front()?;
    let segment = first.len();
    if segment == 0 || segment > train_max {
        return None;
    }
    let mut count = 0;
    let mut total = 0;
    for (addr, data) in queue.iter().take(MAX_SEGMENTS) {
        if addr != to || data.is_empty() || data.len() > segment || total + data.len() > MAX_TRAIN {
            break;
        }
        count += 1;
        total += data.len();
        if data.len() < segment {
            break;
        }
    }
    if count < 2 {
        return None;
    }
    Some((count, u16::try_from(segment).ok()?))
}

/// Close a stream the machine is done with: one non-blocking write of what is
/// queued, `FIN`, and a short drain of unread input (closing with unread input
/// makes the kernel send `RST`, which can destroy what we just wrote).
fn finish(mut stream: TcpStream, mut out: WriteQueue, buf: &mut [u8]) {
    let _ = out.write_to(&mut stream);
    let _ = stream.shutdown(Shutdown::Write);
    for _ in 0..4 {
        match stream.read(buf) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}
