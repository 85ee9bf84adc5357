//! The mio driver: one event loop that executes the IO vocabulary of
//! [`ferry_core::io`] for any [`Machine`].
//!
//! # Threading
//!
//! One thread owns the machine and every socket: [`Driver::run`] blocks on it,
//! [`spawn`] starts it on a thread of its own. Other threads talk to the loop
//! through a [`Remote`] (or the [`Handle`] returned by `spawn`): commands travel
//! over an `mpsc` channel and a [`mio::Waker`] interrupts the poll. Machine
//! events are handed to the `on_event` callback *on the loop thread*, in the
//! order the machine produced them; keep it short (log, forward to a channel).
//!
//! The loop ends when [`Remote::shutdown`] is called (every socket is dropped,
//! the machine is returned), or by itself when every `Remote` is gone and the
//! machine owns no socket and wants no timer: nobody could ever wake it again.
//!
//! # Which input follows which action
//!
//! | action | input(s) it leads to |
//! | --- | --- |
//! | `Listen` | `Listening` (real local address, port 0 resolved) or `ListenFailed`; then `Accepted` per connection |
//! | `CloseListener` | none |
//! | `Connect` | `Connected` or `ConnectFailed` (nothing after it) |
//! | `Send` | `Flushed` as bytes reach the socket; `Closed` if the socket fails |
//! | `Close` | none, ever, for that connection (one non-blocking write attempt, then shutdown and drop) |
//! | `Shutdown` | none: the write direction is shut down (`FIN`) once every earlier `Send` is written; later `Send`s are dropped; reading goes on |
//! | `PauseRead` / `ResumeRead` | no `Received` between them (none is buffered by the driver) |
//! | `Pipe{a, b}` | no `Received` for the spliced bytes and no `Flushed` for `a` or `b` (a later `Send` joins the spliced stream); `Closed` for **both** once both directions carried their `FIN` through, or at once when either side fails |
//! | `BindUdp` | `UdpBound` or `UdpBindFailed`; then `Datagram`s |
//! | `SendTo` / `CloseUdp` | none (UDP is lossy: a datagram the socket refuses is dropped) |
//! | `WriteTun` | none: the packet is written to the TUN device at once (see [`Driver::attach_tun`]); one the device refuses (`WouldBlock`, `ENOBUFS`, malformed) is dropped and counted, as IP may lose packets; without a device it is dropped with a warning |
//!
//! With a TUN device attached, every packet read from it is one `TunPacket`
//! (Linux only: [`crate::tun::Tun`]).
//!
//! On Linux, UDP uses the kernel's segmentation offload: the `SendTo`s of one
//! burst of input (a wakeup's TUN packets, or its received trains) are queued
//! and leave at the burst's end, runs of equal-sized datagrams to one address
//! in one `sendmsg` (`UDP_SEGMENT`), and sockets receive with `UDP_GRO`; each
//! datagram is still its own `Datagram` to the machine and on the wire. A path
//! that refuses a train gets single datagrams. This halves the CPU of the VPN's
//! direct path (`conformance/benches/vpn.rs`).
//!
//! A peer's `FIN` (a read of 0 bytes) is `Closed` and the connection is closed,
//! unless the machine has [`Machine::HALF_CLOSE`]: then it is `ReadClosed`, the
//! connection is no longer read but stays writable until the machine's `Close`
//! (or a failed write: `Closed`).
//!
//! Runtime-allocated ids (accepted connections) count up from 1 and never carry
//! [`CORE_ID_BIT`](ferry_core::io::CORE_ID_BIT). Actions naming an unknown id are
//! ignored.
//!
//! # How `Flushed` is reported
//!
//! A `Send` is appended to the connection's write queue and written at once, as
//! far as the socket takes it; the rest goes out when the socket is writable
//! again. Bytes written while the driver executes a batch of actions are summed
//! per connection, and once the machine's actions and events are drained the sums
//! are fed back as one `Flushed` per connection; then the machine is drained
//! again, until it has nothing more to say. The sum of `Flushed.bytes` for a
//! connection equals the bytes of its `Send`s that reached the socket, never
//! more, and no `Flushed` follows a `Closed` or a `Close`.
//!
//! # Reading and fairness
//!
//! Reads use one reused buffer of [`READ_BUFFER_SIZE`] (1 MiB). A connection
//! is read until the socket would block, at most 2 MiB per wakeup (16
//! datagrams for UDP, 64 packets for the TUN device); one that still has data
//! is put on a ready list served before the loop sleeps again, so no connection
//! starves the others. Each `Received` is fed, and the machine drained, before the next read,
//! so a `PauseRead` takes effect at once.
//!
//! # Pipes
//!
//! After `Pipe{a, b}` the driver moves bytes between the two streams itself.
//! On Linux each direction goes through a kernel pipe with `splice(2)` (socket
//! to pipe to socket: the bytes never cross into user space, but for a first
//! read of up to 16 KiB per wakeup when nothing waits for the destination,
//! copied as it is cheaper for small messages); that pipe (1 MiB where the
//! system allows, at least 64 KiB) is the direction's buffer, and a
//! side is not read while the pipe toward its peer is full. Bytes the machine
//! queued for a side (before the pipe, or by a later `Send`) keep their place:
//! everything read before them goes first, everything read after them follows.
//! Elsewhere, or when no kernel pipe can be had (out of descriptors, or of
//! pipe buffers), a direction copies through the read buffer, with at most
//! [`PIPE_BUFFER_SIZE`] (256 KiB) queued: a side is read only as far as its
//! destination's queue has room. Half-close is carried through, whatever the
//! machine's `HALF_CLOSE`: when a side reads `FIN`, the
//! other side's write direction is shut down once everything read before it was
//! written, and the opposite direction goes on. When both directions have ended
//! so, both sides are closed and reported `Closed`. When a side fails (reset,
//! write error), both are reported `Closed` at once; what is still queued for
//! the side that did not fail is written within 30 s (then `FIN`).
//!
//! # Timers
//!
//! The poll sleeps until `machine.poll_timeout()` (or forever without one), then
//! calls `handle_timeout(now)` once the deadline has passed.

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ferry_core::io::{ConnId, Input, ListenerId, Machine, SocketId};
use mio::{Events, Poll, Token, Waker};

use sockets::{ConnState, Entry, Sockets, connect_result};

/// The size of the one read buffer. Larger than a datagram can be; 1 MiB rather
/// than 64 KiB because fewer, larger reads measured ~0.45x instead of ~0.33x of
/// direct loopback throughput for 64 KiB relayed messages (fewer syscalls, and
/// fewer frames split across reads that the machine must buffer).
pub const READ_BUFFER_SIZE: usize = 1024 * 1024;
/// Bytes read from one connection per wakeup before the others get their turn.
/// Two full reads: more only raised the tail latency of the other connections.
const READ_BUDGET: usize = 2 * READ_BUFFER_SIZE;
/// Reads (a datagram, or a train of them with `UDP_GRO`) from one UDP socket
/// per wakeup. One burst: the TUN writes of a wakeup's trains are joined
/// (direct VPN path 0.28x -> 0.31x plain veth: fewer, larger TUN writes and
/// fewer ACKs).
const DATAGRAMS_PER_WAKEUP: usize = 16;
/// Packets read from the TUN device per wakeup.
#[cfg(target_os = "linux")]
const TUN_PACKETS_PER_WAKEUP: usize = 64;
/// Accepts per listener per wakeup.
const ACCEPTS_PER_WAKEUP: usize = 64;
/// Bytes queued per copied pipe direction before the source is no longer read
/// (a spliced direction is bounded by its kernel pipe instead).
pub const PIPE_BUFFER_SIZE: usize = 256 * 1024;
/// A spliced pipe direction first reads this much by copying when nothing
/// waits for the destination: a small message costs two cheap syscalls then,
/// and only what is more goes through the kernel pipe.
const SPLICE_MIN: usize = 16 * 1024;
/// How long a pipe side that ended may take to write what is queued for it.
const LINGER: Duration = Duration::from_secs(30);
/// Datagrams queued per UDP socket while it would block; more are dropped.
const UDP_QUEUE: usize = 1024;
/// Pause before accepting again after an error such as "too many open files".
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Buffers handed to one `writev`.
const MAX_IO_SLICES: usize = 32;

const WAKER: Token = Token(0);

enum Message<C> {
    Command(C),
    Shutdown,
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the ferry driver has stopped")
}

/// Sends commands to a running driver, or stops it. Cheap to clone; usable from
/// any thread.
pub struct Remote<C> {
    // An `Option` only so that `Drop` can disconnect the channel *before* it wakes
    // the loop, which then sees that the last `Remote` is gone.
    tx: Option<Sender<Message<C>>>,
    waker: Arc<Waker>,
}

impl<C> Clone for Remote<C> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<C> Drop for Remote<C> {
    fn drop(&mut self) {
        drop(self.tx.take());
        let _ = self.waker.wake();
    }
}

impl<C> Remote<C> {
    fn post(&self, message: Message<C>) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.send(message).map_err(|_| stopped())?;
        self.waker.wake()
    }

    /// Hand `command` to the machine (`handle_command` on the loop thread).
    /// Fails once the driver has stopped.
    pub fn send(&self, command: C) -> io::Result<()> {
        self.post(Message::Command(command))
    }

    /// Make the loop exit after the commands sent before this one; every socket
    /// is dropped. Does nothing if the driver has already stopped.
    pub fn shutdown(&self) {
        let _ = self.post(Message::Shutdown);
    }
}

/// A driver running on its own thread (see [`spawn`]).
pub struct Handle<C> {
    remote: Remote<C>,
    thread: JoinHandle<io::Result<()>>,
}

impl<C> Handle<C> {
    /// Hand `command` to the machine. Fails once the driver has stopped.
    pub fn send(&self, command: C) -> io::Result<()> {
        self.remote.send(command)
    }

    /// Make the loop exit (see [`Remote::shutdown`]); [`join`](Self::join) waits for it.
    pub fn shutdown(&self) {
        self.remote.shutdown();
    }

    /// Another way to reach the driver, e.g. for a signal handler thread.
    pub fn remote(&self) -> Remote<C> {
        self.remote.clone()
    }

    /// True once the loop has exited.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the loop to exit; the error is the one that ended it (a failed
    /// `poll`, or a panic of the machine or of `on_event`).
    pub fn join(self) -> io::Result<()> {
        let Handle { remote, thread } = self;
        drop(remote);
        thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the ferry driver thread panicked")))
    }
}

/// Run `machine` on a new thread; `on_event` receives its events on that thread.
pub fn spawn<M>(
    machine: M,
    on_event: impl FnMut(M::Event) + Send + 'static,
) -> io::Result<Handle<M::Command>>
where
    M: Machine + Send + 'static,
    M::Command: Send + 'static,
{
    spawn_driver(Driver::new(machine)?, on_event)
}

/// [`spawn`], with `tun` attached (see [`Driver::attach_tun`]): the machine gets
/// every packet read from it as `TunPacket`, and its `WriteTun`s go to it.
///
/// The device stays in the network namespace it was opened in, whichever
/// thread runs the loop.
#[cfg(target_os = "linux")]
pub fn spawn_with_tun<M>(
    machine: M,
    tun: crate::tun::Tun,
    on_event: impl FnMut(M::Event) + Send + 'static,
) -> io::Result<Handle<M::Command>>
where
    M: Machine + Send + 'static,
    M::Command: Send + 'static,
{
    let mut driver = Driver::new(machine)?;
    driver.attach_tun(tun)?;
    spawn_driver(driver, on_event)
}

fn spawn_driver<M>(
    driver: Driver<M>,
    on_event: impl FnMut(M::Event) + Send + 'static,
) -> io::Result<Handle<M::Command>>
where
    M: Machine + Send + 'static,
    M::Command: Send + 'static,
{
    let remote = driver.remote();
    let thread = thread::Builder::new()
        .name("ferry-mio".to_owned())
        .spawn(move || driver.run(on_event).map(drop))?;
    Ok(Handle { remote, thread })
}

/// Run `machine` on the current thread, with no way to send it commands: it
/// returns once the machine owns no socket and wants no timer (e.g. a client
/// whose connection closed). Use [`Driver::new`], [`Driver::remote`] and
/// [`Driver::run`] to keep a way in.
pub fn run<M: Machine>(machine: M, on_event: impl FnMut(M::Event)) -> io::Result<M> {
    Driver::new(machine)?.run(on_event)
}

/// The event loop and the machine it drives. Make it, take a [`Remote`], then
/// [`run`](Self::run) it (on this thread or one you spawn).
pub struct Driver<M: Machine> {
    machine: M,
    sockets: Sockets,
    commands: Receiver<Message<M::Command>>,
    /// The first remote, cloned by [`Driver::remote`]; dropped when `run` starts.
    remote: Option<Remote<M::Command>>,
    /// Kept here too: closing the waker's fd while a wakeup is pending would
    /// discard that wakeup (and the shutdown it announces).
    _waker: Arc<Waker>,
    stopping: bool,
    remotes_gone: bool,
}

impl<M: Machine> Driver<M> {
    /// A driver for `machine`, with its poll and waker ready.
    pub fn new(machine: M) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, commands) = mpsc::channel();
        Ok(Self {
            machine,
            sockets: Sockets::new(poll),
            commands,
            remote: Some(Remote {
                tx: Some(tx),
                waker: waker.clone(),
            }),
            _waker: waker,
            stopping: false,
            remotes_gone: false,
        })
    }

    /// A way to send commands to (and stop) this driver once it runs.
    ///
    /// # Panics
    ///
    /// Never: `run` consumes the driver, so a remote can only be taken before.
    pub fn remote(&self) -> Remote<M::Command> {
        match &self.remote {
            Some(remote) => remote.clone(),
            None => unreachable!("the first remote lives until run()"),
        }
    }

    /// Read packets from `tun` and feed each as `Input::TunPacket`; execute
    /// `WriteTun` by writing to it. A device attached before is closed. While a
    /// device is attached the loop never ends by itself (only by
    /// [`Remote::shutdown`]); when it ends, the device is closed.
    #[cfg(target_os = "linux")]
    pub fn attach_tun(&mut self, tun: crate::tun::Tun) -> io::Result<()> {
        self.sockets.attach_tun(tun)
    }

    /// The machine, e.g. to read its statistics before running.
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// Run the loop on this thread until shutdown; returns the machine.
    pub fn run(mut self, mut on_event: impl FnMut(M::Event)) -> io::Result<M> {
        drop(self.remote.take());
        let on_event: &mut dyn FnMut(M::Event) = &mut on_event;
        let mut events = Events::with_capacity(1024);
        // A machine may ask for things from its constructor (a client connects).
        self.settle(on_event);
        loop {
            self.receive_commands(on_event);
            if self.stopping {
                break;
            }
            if self.remotes_gone && self.sockets.is_idle() && self.machine.poll_timeout().is_none()
            {
                tracing::debug!("no remote, no socket, no timer: driver exits");
                break;
            }
            let now = Instant::now();
            let deadline = earliest(self.machine.poll_timeout(), self.sockets.next_deadline());
            let timeout = if self.sockets.ready.is_empty() {
                deadline.map(|d| d.saturating_duration_since(now))
            } else {
                Some(Duration::ZERO)
            };
            match self.sockets.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                let token = event.token();
                if token == WAKER {
                    continue; // commands are read at the top of the loop
                }
                let readiness = Readiness {
                    readable: event.is_readable(),
                    // Data and FIN may sit in one edge: then read to the end.
                    short_read_drains: !event.is_read_closed(),
                    writable: event.is_writable(),
                    error: event.is_error(),
                };
                self.dispatch(token, readiness, on_event);
            }
            // Work the sockets that still had data after their share of reads.
            for _ in 0..self.sockets.ready.len() {
                let Some(token) = self.sockets.ready.pop_front() else {
                    break;
                };
                self.dispatch(token, Readiness::RETRY, on_event);
            }
            let now = Instant::now();
            if self.machine.poll_timeout().is_some_and(|t| t <= now) {
                self.machine.handle_timeout(now);
                self.settle(on_event);
            }
            self.sockets.expire(now);
        }
        Ok(self.machine)
    }

    fn receive_commands(&mut self, on_event: &mut dyn FnMut(M::Event)) {
        while !self.stopping {
            match self.commands.try_recv() {
                Ok(Message::Command(command)) => {
                    self.machine.handle_command(command, Instant::now());
                    self.settle(on_event);
                }
                Ok(Message::Shutdown) => self.stopping = true,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.remotes_gone = true;
                    return;
                }
            }
        }
    }

    /// Drain the machine, execute its actions, feed back what they produced,
    /// until nothing is left (the drive-loop contract, step 3).
    fn settle(&mut self, on_event: &mut dyn FnMut(M::Event)) {
        loop {
            while let Some(action) = self.machine.poll_action() {
                self.sockets.execute(action);
            }
            self.sockets.flush_unsent();
            while let Some(event) = self.machine.poll_event() {
                on_event(event);
            }
            if let Some(report) = self.sockets.pending.pop_front() {
                self.machine.handle_input(report.as_input(), Instant::now());
            } else if let Some((conn, bytes)) = self.sockets.take_flushed() {
                self.machine
                    .handle_input(Input::Flushed { conn, bytes }, Instant::now());
            } else {
                return;
            }
        }
    }

    fn feed(&mut self, input: Input<'_>, on_event: &mut dyn FnMut(M::Event)) {
        self.machine.handle_input(input, Instant::now());
        self.settle(on_event);
    }

    fn dispatch(&mut self, token: Token, ready: Readiness, on_event: &mut dyn FnMut(M::Event)) {
        match self.sockets.tokens.get(&token).copied() {
            Some(Entry::Listener(listener)) => self.accept(listener, on_event),
            Some(Entry::Conn(conn)) => self.conn_ready(conn, ready, on_event),
            Some(Entry::Udp(socket)) => self.udp_ready(socket, ready, on_event),
            Some(Entry::Lingering) => self.sockets.linger_ready(token),
            #[cfg(target_os = "linux")]
            Some(Entry::Tun) => self.tun_ready(on_event),
            #[cfg(not(target_os = "linux"))]
            Some(Entry::Tun) => {}
            None => {}
        }
    }

    fn accept(&mut self, listener: ListenerId, on_event: &mut dyn FnMut(M::Event)) {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            let Some(entry) = self.sockets.listeners.get(&listener) else {
                return;
            };
            match entry.socket.accept() {
                Ok((stream, peer)) => match self.sockets.adopt(stream) {
                    Ok(conn) => self.feed(
                        Input::Accepted {
                            listener,
                            conn,
                            peer,
                        },
                        on_event,
                    ),
                    Err(e) => {
                        tracing::warn!(%listener, %peer, "cannot register accepted connection: {e}")
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // E.g. out of file descriptors: the pending connection stays
                    // in the backlog and brings no new edge, so look again later.
                    tracing::warn!(%listener, "accept failed: {e}");
                    let token = entry.token;
                    self.sockets
                        .retry_accept
                        .push((Instant::now() + ACCEPT_RETRY, token));
                    return;
                }
            }
        }
        if let Some(entry) = self.sockets.listeners.get(&listener) {
            self.sockets.ready.push_back(entry.token);
        }
    }

    fn conn_ready(&mut self, id: ConnId, ready: Readiness, on_event: &mut dyn FnMut(M::Event)) {
        let Some(conn) = self.sockets.conns.get_mut(&id) else {
            return;
        };
        let mut ready = ready;
        if conn.state == ConnState::Connecting {
            match connect_result(&conn.stream) {
                None => return,
                Some(Err(e)) => {
                    self.sockets.forget(id);
                    let error = e.to_string();
                    self.feed(
                        Input::ConnectFailed {
                            conn: id,
                            error: &error,
                        },
                        on_event,
                    );
                    return;
                }
                Some(Ok(local)) => {
                    conn.state = ConnState::Open;
                    let _ = conn.stream.set_nodelay(true);
                    self.feed(Input::Connected { conn: id, local }, on_event);
                    // Whatever was queued meanwhile goes out; data may already wait.
                    ready = Readiness::RETRY;
                }
            }
        }
        if ready.error
            && !ready.readable
            && let Some(conn) = self.sockets.conns.get(&id)
            && let Ok(Some(e)) | Err(e) = conn.stream.take_error()
        {
            tracing::debug!(%id, "socket error: {e}");
            self.sockets.lose(id);
            self.settle(on_event);
            return;
        }
        if ready.writable {
            self.sockets.flush(id);
        }
        if ready.readable {
            self.read(id, ready.short_read_drains, on_event);
        }
        self.settle(on_event);
    }

    fn read(&mut self, id: ConnId, short_read_drains: bool, on_event: &mut dyn FnMut(M::Event)) {
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let Some(conn) = self.sockets.conns.get_mut(&id) else {
                return;
            };
            match conn.state {
                ConnState::Open if !conn.paused && !conn.read_closed => {}
                ConnState::Piped(_) => {
                    self.sockets.pump(id, short_read_drains);
                    return;
                }
                _ => return,
            }
            match conn.stream.read(&mut self.sockets.buf) {
                Ok(0) if M::HALF_CLOSE => {
                    // The peer half-closed: `id` stays writable until `Close`.
                    self.sockets.set_read_closed(id);
                    self.feed(Input::ReadClosed { conn: id }, on_event);
                    return;
                }
                Ok(0) => {
                    self.sockets.lose(id);
                    self.settle(on_event);
                    return;
                }
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    // What one read makes the machine send or write (e.g. a
                    // VPN's packets from its server) leaves as one burst.
                    self.sockets.cork();
                    let data = &self.sockets.buf[..n];
                    self.machine
                        .handle_input(Input::Received { conn: id, data }, Instant::now());
                    self.settle(on_event);
                    self.sockets.uncork();
                    // A short read emptied the socket; the next byte brings a new edge.
                    if short_read_drains && n < self.sockets.buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(%id, "read failed: {e}");
                    self.sockets.lose(id);
                    self.settle(on_event);
                    return;
                }
            }
        }
        if let Some(conn) = self.sockets.conns.get(&id) {
            self.sockets.ready.push_back(conn.token);
        }
    }

    fn udp_ready(&mut self, id: SocketId, ready: Readiness, on_event: &mut dyn FnMut(M::Event)) {
        if ready.writable {
            self.sockets.flush_udp(id);
        }
        if !ready.readable {
            return;
        }
        // The wakeup's trains (UDP_GRO) are fed datagram by datagram, corked:
        // the packets they bring are joined for the TUN across trains, and
        // the datagrams their handling sends leave as trains too.
        self.sockets.cork();
        let drained = self.read_udp(id, on_event);
        self.sockets.uncork();
        if !drained && let Some(udp) = self.sockets.udps.get(&id) {
            self.sockets.ready.push_back(udp.token);
        }
    }

    /// Read up to [`DATAGRAMS_PER_WAKEUP`] trains; false if there may be more.
    fn read_udp(&mut self, id: SocketId, on_event: &mut dyn FnMut(M::Event)) -> bool {
        for _ in 0..DATAGRAMS_PER_WAKEUP {
            let Some(udp) = self.sockets.udps.get(&id) else {
                return true;
            };
            #[cfg(target_os = "linux")]
            let received = udp_gso::recv_train(&udp.socket, &mut self.sockets.buf);
            #[cfg(not(target_os = "linux"))]
            let received = udp
                .socket
                .recv_from(&mut self.sockets.buf)
                .map(|(n, from)| (n, from, None));
            match received {
                Ok((n, from, segment)) => {
                    let now = Instant::now();
                    let mut at = 0;
                    while at < n {
                        let len = segment.unwrap_or(n).min(n - at).max(1);
                        let data = &self.sockets.buf[at..at + len];
                        at += len;
                        let input = Input::Datagram {
                            socket: id,
                            from,
                            data,
                        };
                        self.machine.handle_input(input, now);
                        self.settle(on_event);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                // ICMP errors surface here (e.g. port unreachable): not fatal for UDP.
                Err(e) => tracing::debug!(%id, "recv_from failed: {e}"),
            }
        }
        false
    }

    /// Read up to [`TUN_PACKETS_PER_WAKEUP`] packets, each fed (and the
    /// machine drained) before the next read, as for datagrams.
    #[cfg(target_os = "linux")]
    fn tun_ready(&mut self, on_event: &mut dyn FnMut(M::Event)) {
        // The burst's datagrams leave as trains (`UDP_SEGMENT`) at the end.
        self.sockets.cork();
        self.read_tun(on_event);
        self.sockets.uncork();
    }

    #[cfg(target_os = "linux")]
    fn read_tun(&mut self, on_event: &mut dyn FnMut(M::Event)) {
        for _ in 0..TUN_PACKETS_PER_WAKEUP {
            let Some(port) = self.sockets.tun.as_mut() else {
                return;
            };
            if port.dev.vnet_hdr() {
                let mut buf = std::mem::take(&mut port.read_buf);
                let more = self.read_tun_offload(&mut buf, on_event);
                if let Some(port) = self.sockets.tun.as_mut() {
                    port.read_buf = buf;
                }
                if !more {
                    return;
                }
                continue;
            }
            match port.dev.read(&mut self.sockets.buf) {
                Ok(0) => return,
                Ok(n) => {
                    let packet = &self.sockets.buf[..n];
                    self.machine
                        .handle_input(Input::TunPacket(packet), Instant::now());
                    self.settle(on_event);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(
                        device = port.dev.name(),
                        "reading the TUN device failed: {e}"
                    );
                    return;
                }
            }
        }
        if let Some(port) = &self.sockets.tun {
            self.sockets.ready.push_back(port.token);
        }
    }

    /// One read of a device with offloads into `buf`: its packet, or each
    /// segment of its TCP super-packet, fed. False when nothing more waits.
    #[cfg(target_os = "linux")]
    fn read_tun_offload(&mut self, buf: &mut [u8], on_event: &mut dyn FnMut(M::Event)) -> bool {
        use ferry_core::vpn::offload::{self, Split, VNET_HDR_LEN, VnetHdr};
        let Some(port) = self.sockets.tun.as_mut() else {
            return false;
        };
        let n = match port.dev.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return true,
            Err(e) => {
                tracing::warn!(
                    device = port.dev.name(),
                    "reading the TUN device failed: {e}"
                );
                return false;
            }
        };
        let Some(hdr) = VnetHdr::parse(&buf[..n]) else {
            return true;
        };
        let packet = &mut buf[VNET_HDR_LEN..n];
        match offload::split(&hdr, packet) {
            Ok(Split::Whole) => {
                self.machine
                    .handle_input(Input::TunPacket(packet), Instant::now());
                self.settle(on_event);
            }
            Ok(Split::Tcp(plan)) => {
                let mut segment = std::mem::take(&mut port.segment);
                let now = Instant::now();
                for i in 0..plan.count() {
                    plan.segment(packet, i, &mut segment);
                    self.machine.handle_input(Input::TunPacket(&segment), now);
                    self.settle(on_event);
                }
                if let Some(port) = self.sockets.tun.as_mut() {
                    port.segment = segment;
                }
                // A super-packet's datagrams leave now, as trains, rather
                // than queue behind the rest of the wakeup's reads.
                self.sockets.uncork();
                self.sockets.cork();
            }
            Err(e) => tracing::debug!(
                device = port.dev.name(),
                ?hdr,
                len = packet.len(),
                "TUN packet dropped: {e}"
            ),
        }
        true
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[derive(Debug, Clone, Copy)]
struct Readiness {
    readable: bool,
    /// A read shorter than the buffer means the socket is empty (no FIN seen yet).
    short_read_drains: bool,
    writable: bool,
    error: bool,
}

impl Readiness {
    /// Try everything, without an edge to tell what is ready.
    const RETRY: Readiness = Readiness {
        readable: true,
        short_read_drains: false,
        writable: true,
        error: false,
    };
}

mod sockets;
mod splice;
#[cfg(target_os = "linux")]
mod tun;
#[cfg(target_os = "linux")]
mod udp_gso;
mod write_queue;

#[cfg(test)]
mod tests;
