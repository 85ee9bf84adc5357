//! The generic driver: one actor task executes any [`Machine`]'s IO vocabulary
//! over async-std sockets.
//!
//! # Tasks and channels
//!
//! ```text
//!  application ──requests (bounded)──▶ ┌───────┐ ──events (bounded)──▶ application
//!                                       │ actor │   owns the machine, its ids, every table
//!  reader/writer/accept/udp tasks ──▶   └───────┘ ──▶ writer queues (unbounded: the machine
//!             inbox (bounded)               │          bounds them through Flushed)
//!                                           └──▶ reader controls (pause / resume / stop)
//! ```
//!
//! - One **reader** task per connection reads up to [`READ_BUFFER`] bytes at a time
//!   and delivers `Received`; at the peer's FIN it delivers `ReadClosed` and ends,
//!   on a read error `Closed`. The actor feeds a FIN to the machine as `ReadClosed`
//!   if it has [`Machine::HALF_CLOSE`] (the connection stays writable until its
//!   `Close`, or a failed write: `Closed`), else as `Closed`, closing the
//!   connection. A paused reader reads nothing; it may still deliver the one
//!   chunk it had read (the contract allows it).
//! - One **writer** task per connection writes every `Send` in order and reports
//!   each write as `Flushed`. `Shutdown` reaches it in order after the `Send`s: once
//!   they are written it shuts the write direction down (a `Send` after it is
//!   dropped, logged at debug). When the actor closes the connection the writer
//!   writes what is queued for at most [`DriverConfig::close_linger`], then shuts
//!   the socket down.
//! - The actor feeds inputs one at a time and, after every `handle_*`, drains
//!   actions and events, as [`Machine`] requires. An input for a connection it
//!   closed (or never knew) is dropped, so no input follows a `Close`.
//! - `Pipe{a, b}`: the actor forwards what `a`'s reader delivers to `b`'s writer and
//!   back, after whatever the machine had queued; it pauses a side whose peer has
//!   more than [`DriverConfig::pipe_buffer`] bytes unwritten. Half-close is carried
//!   through (whatever the machine's `HALF_CLOSE`): a side's FIN makes the other
//!   side's writer shut down after what it holds, and the opposite direction goes
//!   on. Once both directions ended so, or at once when either side fails, both
//!   are closed and the machine gets `Closed` for each one it did not close
//!   itself. A `Pipe` naming a closed or already piped connection ends at once:
//!   each side that exists, and its old partner, is closed and reported.
//! - Events go into a bounded channel. While it is full the actor keeps them and
//!   pauses every reader (not piped ones), so an application that stops reading
//!   events stops its peers instead of growing memory; commands and writes go on.
//!
//! - A TUN device ([`Driver::spawn_with_tun`]) is served by two plain threads:
//!   a **reader** that delivers each packet it reads as `TunPacket` (through the
//!   bounded inbox, so a slow machine leaves packets in the device's queue,
//!   where the kernel drops them), and a **writer** that writes each `WriteTun`
//!   packet, handed over through a queue of [`DriverConfig::tun_queue`] packets:
//!   a packet the full queue or the device refuses is dropped and counted
//!   ([`Driver::tun_dropped`]), as IP may lose packets. Both end once the actor
//!   has ended (the reader at its next read, see [`TunIo`]). Without a device,
//!   `WriteTun` is dropped with a warning.
//!
//! Runtime-allocated ids (accepted connections, adopted listeners) count up from 1
//! with [`ferry_core::io::CORE_ID_BIT`] clear.

mod actor;
mod tasks;
mod tun;

pub use tun::TunIo;

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use ferry_core::{ListenerId, Machine};

use crate::rt::{self, TcpListener};

/// Bytes asked of the socket per read.
pub const READ_BUFFER: usize = 64 << 10;

/// Sizes and timeouts of a [`Driver`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DriverConfig {
    /// Inputs waiting for the actor; readers and writers wait when it is full. Default 1024.
    pub inbox_capacity: usize,
    /// Commands waiting for the actor; [`Driver::command`] waits when it is full. Default 64.
    pub command_capacity: usize,
    /// Events waiting for the application before readers are paused. Default 1024.
    pub event_capacity: usize,
    /// Unwritten bytes towards one side of a `Pipe` before the other side is paused
    /// (it resumes at half). Default 1 MiB.
    pub pipe_buffer: usize,
    /// How long a closed connection may take to write what was queued. Default 2 s.
    pub close_linger: Duration,
    /// Packets waiting for the TUN writer thread; more are dropped. Default 256.
    pub tun_queue: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            inbox_capacity: 1024,
            command_capacity: 64,
            event_capacity: 1024,
            pipe_buffer: 1 << 20,
            close_linger: Duration::from_secs(2),
            tun_queue: 256,
        }
    }
}

impl DriverConfig {
    /// The defaults with `event_capacity` set.
    pub fn with_event_capacity(mut self, event_capacity: usize) -> Self {
        self.event_capacity = event_capacity;
        self
    }
}

/// The driver's actor has ended (stopped, or every handle dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverStopped;

impl fmt::Display for DriverStopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the ferry driver has stopped")
    }
}

impl std::error::Error for DriverStopped {}

impl From<DriverStopped> for io::Error {
    fn from(e: DriverStopped) -> Self {
        io::Error::new(io::ErrorKind::NotConnected, e)
    }
}

/// Bytes handed to writers and not yet written, over every connection of a driver.
///
/// The machine bounds each connection's queue; this total lets an application
/// bound what *it* asks for, e.g. wait before sending more (see [`Backlog::wait_at_most`]).
#[derive(Debug, Default)]
pub struct Backlog {
    bytes: AtomicUsize,
    waiters: Mutex<Vec<Waker>>,
}

impl Backlog {
    /// Bytes queued and not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Resolve once at most `limit` bytes are queued.
    pub async fn wait_at_most(&self, limit: usize) {
        poll_fn(|cx| {
            if self.bytes() <= limit {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            drop(waiters);
            // Checked again after registering, so a drain in between is not missed.
            if self.bytes() <= limit {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }

    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn sub(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        let waiters =
            std::mem::take(&mut *self.waiters.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in waiters {
            waker.wake();
        }
    }

    fn reset(&self) {
        let n = self.bytes.load(Ordering::Acquire);
        self.sub(n);
    }
}

/// Hands out runtime-side ids: from 1 up, [`ferry_core::io::CORE_ID_BIT`] clear.
#[derive(Debug)]
pub(crate) struct RuntimeIds(AtomicU64);

impl RuntimeIds {
    fn new() -> Self {
        Self(AtomicU64::new(1))
    }

    pub(crate) fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// What the application asks of the actor.
pub(crate) enum Request<C> {
    Command(C),
    Adopt {
        listener: ListenerId,
        socket: TcpListener,
        failure: Sender<io::Error>,
    },
    Stop,
}

/// A listener handed to a driver with [`Driver::adopt_listener`].
#[derive(Debug)]
pub struct AdoptedListener {
    id: ListenerId,
    failure: Receiver<io::Error>,
}

impl AdoptedListener {
    /// The id the machine knows it by.
    pub fn id(&self) -> ListenerId {
        self.id
    }

    /// Resolve when accepting stops: `Some(error)` if the listener failed, `None`
    /// if it was closed (`CloseListener`, or the driver stopped).
    pub async fn ended(&self) -> Option<io::Error> {
        self.failure.recv().await.ok()
    }
}

/// A running machine: send it commands, read its events, stop it.
///
/// Dropping the driver stops the actor (after the commands already sent); the
/// connections it had are closed as by `Close`.
pub struct Driver<M: Machine> {
    requests: Sender<Request<M::Command>>,
    events: Receiver<M::Event>,
    backlog: Arc<Backlog>,
    ids: Arc<RuntimeIds>,
    tun_dropped: Arc<AtomicU64>,
    task: rt::Task<M>,
}

impl<M> Driver<M>
where
    M: Machine + Send + 'static,
    M::Command: Send + 'static,
    M::Event: Send + 'static,
{
    /// Start driving `machine` on a new task. Actions the machine queued before
    /// (e.g. a client's `Connect`) are executed at once.
    pub fn spawn(machine: M, config: DriverConfig) -> Self {
        match Self::start(machine, config, None) {
            Ok(driver) => driver,
            Err(_) => unreachable!("no thread to start without a TUN device"),
        }
    }

    /// [`spawn`](Self::spawn), with a TUN device: every packet its reader
    /// returns is fed as `Input::TunPacket`, every `WriteTun` goes to its
    /// writer (see the [module docs](self)). Fails if a thread cannot be started.
    pub fn spawn_with_tun(machine: M, config: DriverConfig, tun: TunIo) -> io::Result<Self> {
        Self::start(machine, config, Some(tun))
    }

    fn start(machine: M, config: DriverConfig, tun: Option<TunIo>) -> io::Result<Self> {
        let (requests, requests_rx) = async_channel::bounded(config.command_capacity.max(1));
        let (events_tx, events) = async_channel::bounded(config.event_capacity.max(1));
        let backlog = Arc::new(Backlog::default());
        let ids = Arc::new(RuntimeIds::new());
        let tun_dropped = Arc::new(AtomicU64::new(0));
        let mut actor = actor::Actor::new(
            machine,
            config,
            requests_rx,
            events_tx,
            backlog.clone(),
            ids.clone(),
        );
        if let Some(tun) = tun {
            actor.attach_tun(tun, tun_dropped.clone())?;
        }
        let task = rt::spawn(actor.run());
        Ok(Self {
            requests,
            events,
            backlog,
            ids,
            tun_dropped,
            task,
        })
    }

    /// Hand `command` to the machine (waits while the command queue is full).
    pub async fn command(&self, command: M::Command) -> Result<(), DriverStopped> {
        self.requests
            .send(Request::Command(command))
            .await
            .map_err(|_| DriverStopped)
    }

    /// The next event of the machine; `None` once the driver has stopped and every
    /// event was read.
    pub async fn next_event(&self) -> Option<M::Event> {
        self.events.recv().await.ok()
    }

    /// An event if one is ready.
    pub fn try_next_event(&self) -> Option<M::Event> {
        self.events.try_recv().ok()
    }

    /// Make every pending and later [`next_event`](Self::next_event) return `None`.
    pub(crate) fn close_events(&self) {
        self.events.close();
    }

    /// Accept on a listener the application bound. The machine is told
    /// `Listening{listener, local}` with a runtime-allocated id, then `Accepted`
    /// for each connection, exactly as for a listener it asked for.
    pub async fn adopt_listener(
        &self,
        socket: TcpListener,
    ) -> Result<AdoptedListener, DriverStopped> {
        let id = ListenerId(self.ids.next());
        let (failure, failure_rx) = async_channel::bounded(1);
        self.requests
            .send(Request::Adopt {
                listener: id,
                socket,
                failure,
            })
            .await
            .map_err(|_| DriverStopped)?;
        Ok(AdoptedListener {
            id,
            failure: failure_rx,
        })
    }

    /// Packets for the TUN device dropped so far: the writer's queue was full,
    /// or the device refused them (e.g. `ENOBUFS`).
    pub fn tun_dropped(&self) -> u64 {
        self.tun_dropped.load(Ordering::Relaxed)
    }

    /// Unwritten bytes over every connection.
    pub fn backlog(&self) -> &Backlog {
        &self.backlog
    }

    /// Ask the actor to stop after the requests already sent. Its connections,
    /// listeners and sockets are closed (queued bytes get
    /// [`DriverConfig::close_linger`] to go out); events not yet taken from a
    /// full event queue are dropped.
    pub async fn stop(&self) {
        // An error means it has stopped already.
        let _ = self.requests.send(Request::Stop).await;
    }

    /// Wait for the actor to end (after [`stop`](Self::stop)) and take the machine back.
    pub async fn join(self) -> M {
        let Self { requests, task, .. } = self;
        // Dropping our request sender also stops an actor nobody else can reach.
        drop(requests);
        task.await
    }
}
