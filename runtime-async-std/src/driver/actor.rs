//! The actor: owns the machine, feeds it inputs, executes its actions.

use std::collections::{BTreeMap, VecDeque};
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Poll;
use std::time::Instant;
use std::{io, mem};

use async_channel::{Receiver, RecvError, Sender, TryRecvError, TrySendError};
use ferry_core::io::OwnedInput;
use ferry_core::{Action, ConnId, Input, ListenerId, Machine, SocketId};
use tracing::{debug, trace, warn};

use super::tasks::{self, ConnIo, Control, Msg, Out};
use super::tun::{TunIo, TunPort};
use super::{Backlog, DriverConfig, Request, RuntimeIds};
use crate::rt;

/// Messages handled before the actor yields to other tasks.
const BATCH: usize = 128;
/// Datagrams waiting for a UDP socket before more are dropped.
const UDP_QUEUE: usize = 1024;

/// What the actor knows of one TCP connection.
struct Conn {
    io: ConnIo,
    /// `PauseRead` from the machine is in force.
    paused_by_machine: bool,
    /// Piped, and the peer's writer holds more than `pipe_buffer` bytes.
    paused_by_pipe: bool,
    /// The state last sent to the reader.
    read_paused: bool,
    /// The other side of a `Pipe`.
    pipe: Option<ConnId>,
    /// Bytes handed to the writer and not yet reported written.
    unflushed: usize,
    /// The reader read the peer's FIN (and ended).
    read_closed: bool,
    /// `Shutdown` was handed to the writer (by the machine or a pipe).
    shutdown: bool,
    /// The writer has shut the write direction down.
    write_closed: bool,
}

struct Listener {
    /// Dropped to stop the accept loop.
    _stop: Sender<()>,
}

struct Udp {
    outgoing: Sender<(SocketAddr, Vec<u8>)>,
    /// Dropped to stop the receive loop.
    _stop: Sender<()>,
}

type EventSend = Pin<Box<dyn Future<Output = bool> + Send>>;

/// What the actor waited for.
enum Wake<C> {
    Request(Result<Request<C>, RecvError>),
    Msg(Msg),
    Timer,
    EventSent(bool),
}

pub(super) struct Actor<M: Machine> {
    machine: M,
    config: DriverConfig,
    requests: Receiver<Request<M::Command>>,
    inbox: Sender<Msg>,
    inbox_rx: Receiver<Msg>,
    events: Sender<M::Event>,
    /// Events the full event channel did not take yet, in order.
    overflow: VecDeque<M::Event>,
    /// The send of the oldest overflowed event, in flight.
    event_send: Option<EventSend>,
    conns: BTreeMap<ConnId, Conn>,
    listeners: BTreeMap<ListenerId, Listener>,
    sockets: BTreeMap<SocketId, Udp>,
    /// `Closed` inputs produced while executing actions, fed after the drain.
    closed_later: VecDeque<ConnId>,
    timer: Option<(Instant, rt::Sleep)>,
    backlog: Arc<Backlog>,
    ids: Arc<RuntimeIds>,
    /// The TUN device's threads, if the driver has one.
    tun: Option<TunPort>,
    warned_tun: bool,
}

impl<M> Actor<M>
where
    M: Machine + Send + 'static,
    M::Command: Send + 'static,
    M::Event: Send + 'static,
{
    pub(super) fn new(
        machine: M,
        config: DriverConfig,
        requests: Receiver<Request<M::Command>>,
        events: Sender<M::Event>,
        backlog: Arc<Backlog>,
        ids: Arc<RuntimeIds>,
    ) -> Self {
        let (inbox, inbox_rx) = async_channel::bounded(config.inbox_capacity.max(1));
        Self {
            machine,
            config,
            requests,
            inbox,
            inbox_rx,
            events,
            overflow: VecDeque::new(),
            event_send: None,
            conns: BTreeMap::new(),
            listeners: BTreeMap::new(),
            sockets: BTreeMap::new(),
            closed_later: VecDeque::new(),
            timer: None,
            backlog,
            ids,
            tun: None,
            warned_tun: false,
        }
    }

    /// Start the TUN device's threads (before `run`).
    pub(super) fn attach_tun(&mut self, tun: TunIo, dropped: Arc<AtomicU64>) -> io::Result<()> {
        let port = TunPort::start(tun, self.inbox.clone(), self.config.tun_queue, dropped)?;
        self.tun = Some(port);
        Ok(())
    }

    pub(super) async fn run(mut self) -> M {
        // A machine may queue actions in its constructor (a client's Connect).
        self.drain();
        'run: loop {
            let mut budget = BATCH;
            while budget > 0 {
                let mut progress = false;
                match self.requests.try_recv() {
                    Ok(request) => {
                        progress = true;
                        if !self.request(request) {
                            break 'run;
                        }
                    }
                    Err(TryRecvError::Closed) => break 'run,
                    Err(TryRecvError::Empty) => {}
                }
                if let Ok(msg) = self.inbox_rx.try_recv() {
                    progress = true;
                    self.message(msg);
                }
                if !progress {
                    break;
                }
                budget -= 1;
            }
            self.fire_timer();
            if budget == 0 {
                rt::yield_now().await;
                continue;
            }
            match self.wait().await {
                Wake::Request(Ok(request)) => {
                    if !self.request(request) {
                        break;
                    }
                }
                Wake::Request(Err(_)) => break,
                Wake::Msg(msg) => self.message(msg),
                Wake::Timer => self.fire_timer(),
                Wake::EventSent(delivered) => self.event_sent(delivered),
            }
        }
        self.close_everything();
        self.machine
    }

    /// Wait for a request, an input, the machine's deadline or room for events.
    async fn wait(&mut self) -> Wake<M::Command> {
        match self.machine.poll_timeout() {
            Some(deadline) => {
                if self.timer.as_ref().map(|(at, _)| *at) != Some(deadline) {
                    self.timer = Some((deadline, rt::sleep_until(deadline)));
                }
            }
            None => self.timer = None,
        }
        let mut requests = pin!(self.requests.recv());
        let mut inbox = pin!(self.inbox_rx.recv());
        let timer = &mut self.timer;
        let event_send = &mut self.event_send;
        poll_fn(|cx| {
            if let Some(send) = event_send.as_mut()
                && let Poll::Ready(delivered) = send.as_mut().poll(cx)
            {
                *event_send = None;
                return Poll::Ready(Wake::EventSent(delivered));
            }
            if let Poll::Ready(request) = requests.as_mut().poll(cx) {
                return Poll::Ready(Wake::Request(request));
            }
            // The actor holds a sender, so the inbox never closes.
            if let Poll::Ready(Ok(msg)) = inbox.as_mut().poll(cx) {
                return Poll::Ready(Wake::Msg(msg));
            }
            if let Some((_, sleep)) = timer.as_mut()
                && sleep.as_mut().poll(cx).is_ready()
            {
                *timer = None;
                return Poll::Ready(Wake::Timer);
            }
            Poll::Pending
        })
        .await
    }

    fn fire_timer(&mut self) {
        let now = Instant::now();
        if self.machine.poll_timeout().is_some_and(|at| at <= now) {
            self.machine.handle_timeout(now);
            self.drain();
        }
    }

    /// Returns false when the actor must stop.
    fn request(&mut self, request: Request<M::Command>) -> bool {
        match request {
            Request::Command(command) => {
                self.machine.handle_command(command, Instant::now());
                self.drain();
            }
            Request::Adopt {
                listener,
                socket,
                failure,
            } => {
                let (stop, stop_rx) = async_channel::bounded(1);
                self.listeners.insert(listener, Listener { _stop: stop });
                let inbox = self.inbox.clone();
                let ids = self.ids.clone();
                let linger = self.config.close_linger;
                rt::spawn_detached(async move {
                    match socket.local_addr() {
                        Ok(local) => {
                            if inbox
                                .send(OwnedInput::Listening { listener, local }.into())
                                .await
                                .is_ok()
                            {
                                tasks::accept_loop(
                                    listener,
                                    socket,
                                    inbox,
                                    stop_rx,
                                    ids,
                                    linger,
                                    Some(failure),
                                )
                                .await;
                            }
                        }
                        Err(e) => {
                            let error = e.to_string();
                            let _ = failure.try_send(e);
                            let _ = inbox
                                .send(OwnedInput::ListenFailed { listener, error }.into())
                                .await;
                        }
                    }
                });
            }
            Request::Stop => return false,
        }
        true
    }

    fn message(&mut self, msg: Msg) {
        let input = match msg {
            Msg::Accepted {
                listener,
                conn,
                peer,
                io,
            } => {
                // A connection accepted after CloseListener is dropped, i.e. closed.
                if self.listeners.contains_key(&listener) {
                    self.insert_conn(conn, io);
                    self.feed(Input::Accepted {
                        listener,
                        conn,
                        peer,
                    });
                }
                return;
            }
            Msg::Input(OwnedInput::Received { conn, data }) => {
                let Some(c) = self.conns.get(&conn) else {
                    trace!(%conn, bytes = data.len(), "dropped input of a closed connection");
                    return;
                };
                c.io.handled(data.len());
                match c.pipe {
                    Some(peer) => self.forward(conn, peer, data),
                    None => self.feed(Input::Received { conn, data: &data }),
                }
                return;
            }
            Msg::Input(OwnedInput::Flushed { conn, bytes }) => return self.flushed(conn, bytes),
            Msg::Input(OwnedInput::ReadClosed { conn }) => return self.read_closed(conn),
            Msg::WriteClosed { conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.write_closed = true;
                    if let Some(peer) = c.pipe {
                        self.end_pipe_if_done(conn, peer);
                        self.drain();
                    }
                }
                return;
            }
            Msg::Input(input) => input,
        };
        // Inputs for what the machine no longer has are dropped.
        let known = match &input {
            OwnedInput::Listening { listener, .. } => self.listeners.contains_key(listener),
            OwnedInput::ListenFailed { listener, .. } => self.listeners.remove(listener).is_some(),
            OwnedInput::Connected { conn, .. } => self.conns.contains_key(conn),
            OwnedInput::ConnectFailed { conn, .. } => self.remove_conn(*conn).is_some(),
            OwnedInput::Closed { conn } => self.close_with_pipe(*conn),
            OwnedInput::UdpBound { socket, .. } | OwnedInput::Datagram { socket, .. } => {
                self.sockets.contains_key(socket)
            }
            OwnedInput::UdpBindFailed { socket, .. } => self.sockets.remove(socket).is_some(),
            // Tasks report these otherwise (see above) or never.
            OwnedInput::Accepted { .. }
            | OwnedInput::Received { .. }
            | OwnedInput::ReadClosed { .. }
            | OwnedInput::Flushed { .. } => false,
            OwnedInput::TunPacket(_) => self.tun.is_some(),
        };
        if known {
            self.feed(input.as_input());
        }
    }

    fn feed(&mut self, input: Input<'_>) {
        self.machine.handle_input(input, Instant::now());
        self.drain();
    }

    /// Execute every action and hand out every event, feeding the inputs that
    /// executing them produced, until the machine has nothing more.
    fn drain(&mut self) {
        loop {
            while let Some(action) = self.machine.poll_action() {
                self.execute(action);
            }
            while let Some(event) = self.machine.poll_event() {
                self.emit(event);
            }
            let Some(conn) = self.closed_later.pop_front() else {
                break;
            };
            self.machine
                .handle_input(Input::Closed { conn }, Instant::now());
        }
    }

    fn execute(&mut self, action: Action) {
        trace!(?action, "execute");
        match action {
            Action::Listen { listener, addr } => {
                let (stop, stop_rx) = async_channel::bounded(1);
                self.listeners.insert(listener, Listener { _stop: stop });
                rt::spawn_detached(tasks::listen(
                    listener,
                    addr,
                    self.inbox.clone(),
                    stop_rx,
                    self.ids.clone(),
                    self.config.close_linger,
                ));
            }
            Action::CloseListener { listener } => {
                self.listeners.remove(&listener);
            }
            Action::Connect { conn, addr } => {
                let (io, ends) = tasks::conn_channels();
                self.insert_conn(conn, io);
                rt::spawn_detached(tasks::connect(
                    conn,
                    addr,
                    ends,
                    self.inbox.clone(),
                    self.config.close_linger,
                ));
            }
            Action::Send { conn, data } => self.send(conn, data),
            Action::Close { conn } => {
                // A `Closed` not fed yet is not fed at all: the machine closed `conn`
                // itself (e.g. both sides of a pipe in one drain).
                self.closed_later.retain(|c| *c != conn);
                self.close_with_pipe(conn);
            }
            Action::Shutdown { conn } => self.shutdown(conn),
            Action::PauseRead { conn } => self.pause_by_machine(conn, true),
            Action::ResumeRead { conn } => self.pause_by_machine(conn, false),
            Action::Pipe { a, b } => self.pipe(a, b),
            Action::BindUdp { socket, addr } => {
                let (outgoing, outgoing_rx) = async_channel::bounded(UDP_QUEUE);
                let (stop, stop_rx) = async_channel::bounded(1);
                self.sockets.insert(
                    socket,
                    Udp {
                        outgoing,
                        _stop: stop,
                    },
                );
                rt::spawn_detached(tasks::udp(
                    socket,
                    addr,
                    self.inbox.clone(),
                    outgoing_rx,
                    stop_rx,
                ));
            }
            Action::CloseUdp { socket } => {
                self.sockets.remove(&socket);
            }
            Action::SendTo { socket, to, data } => {
                if let Some(udp) = self.sockets.get(&socket) {
                    // UDP may lose datagrams; a full queue loses this one.
                    if let Err(TrySendError::Full(_)) = udp.outgoing.try_send((to, data)) {
                        debug!(%socket, %to, "send queue full: datagram dropped");
                    }
                }
            }
            Action::WriteTun(packet) => match self.tun.as_mut() {
                Some(tun) => tun.write(packet),
                None => {
                    if !self.warned_tun {
                        self.warned_tun = true;
                        warn!("no TUN device: dropping packets written to it");
                    }
                    trace!(bytes = packet.len(), "TUN packet dropped");
                }
            },
        }
    }

    fn emit(&mut self, event: M::Event) {
        if self.sink_full() {
            self.overflow.push_back(event);
            return;
        }
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                self.overflow.push_back(event);
                self.start_event_send();
                self.update_all_readers();
            }
            // Nobody listens: the events are of no use to anyone.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    fn sink_full(&self) -> bool {
        self.event_send.is_some() || !self.overflow.is_empty()
    }

    /// Start waiting for room for the oldest overflowed event.
    fn start_event_send(&mut self) {
        if self.event_send.is_some() {
            return;
        }
        if let Some(event) = self.overflow.pop_front() {
            let events = self.events.clone();
            self.event_send = Some(Box::pin(async move { events.send(event).await.is_ok() }));
        }
    }

    fn event_sent(&mut self, delivered: bool) {
        if !delivered {
            self.overflow.clear();
        }
        while let Some(event) = self.overflow.pop_front() {
            match self.events.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    self.overflow.push_front(event);
                    self.start_event_send();
                    return;
                }
                Err(TrySendError::Closed(_)) => self.overflow.clear(),
            }
        }
        self.update_all_readers();
    }

    fn insert_conn(&mut self, conn: ConnId, io: ConnIo) {
        self.conns.insert(
            conn,
            Conn {
                io,
                paused_by_machine: false,
                paused_by_pipe: false,
                read_paused: false,
                pipe: None,
                unflushed: 0,
                read_closed: false,
                shutdown: false,
                write_closed: false,
            },
        );
        self.update_reader(conn);
    }

    /// Forget `conn`: dropping its `ConnIo` makes the writer write what is queued
    /// and close, and the reader stop.
    fn remove_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let removed = self.conns.remove(&conn)?;
        self.backlog.sub(removed.unflushed);
        Some(removed)
    }

    /// Forget `conn` and, if it was piped, its partner, whose `Closed` is fed
    /// after the drain. True if `conn` was known.
    fn close_with_pipe(&mut self, conn: ConnId) -> bool {
        let Some(closed) = self.remove_conn(conn) else {
            return false;
        };
        // One side of a pipe cannot go on alone: the other side goes too.
        if let Some(peer) = closed.pipe
            && self.remove_conn(peer).is_some()
        {
            self.closed_later.push_back(peer);
        }
        true
    }

    /// The peer's FIN: carried through a pipe, `ReadClosed` for a half-closing
    /// machine, `Closed` (and the connection closed) for the others.
    fn read_closed(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.read_closed = true;
        if let Some(peer) = c.pipe {
            self.shutdown(peer);
            self.end_pipe_if_done(conn, peer);
            self.drain();
        } else if M::HALF_CLOSE {
            self.feed(Input::ReadClosed { conn });
        } else if self.close_with_pipe(conn) {
            self.feed(Input::Closed { conn });
        }
    }

    /// Shut `conn`'s write direction down after what its writer holds.
    fn shutdown(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn)
            && !c.shutdown
        {
            c.shutdown = true;
            // An error means the writer failed; its Closed is on the way.
            let _ = c.io.writer.try_send(Out::Shutdown);
        }
    }

    /// Both directions of the pipe `a`-`b` carried their FIN through: the pipe
    /// ends, both sides are closed and reported `Closed` (after the drain).
    fn end_pipe_if_done(&mut self, a: ConnId, b: ConnId) {
        let done = |c: Option<&Conn>| c.is_some_and(|c| c.read_closed && c.write_closed);
        if !done(self.conns.get(&a)) || !done(self.conns.get(&b)) {
            return;
        }
        for conn in [a, b] {
            self.remove_conn(conn);
            self.closed_later.push_back(conn);
        }
    }

    fn send(&mut self, conn: ConnId, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.shutdown {
                debug!(%conn, len = data.len(), "send after shutdown dropped");
                return;
            }
            let len = data.len();
            // An error means the writer failed; its Closed is on the way.
            if c.io.writer.try_send(Out::Data(data)).is_ok() {
                c.unflushed += len;
                self.backlog.add(len);
            }
        }
    }

    fn flushed(&mut self, conn: ConnId, bytes: usize) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let bytes = bytes.min(c.unflushed);
        c.unflushed -= bytes;
        self.backlog.sub(bytes);
        match c.pipe {
            Some(peer) => {
                if c.unflushed <= self.config.pipe_buffer / 2
                    && let Some(p) = self.conns.get_mut(&peer)
                    && p.paused_by_pipe
                {
                    p.paused_by_pipe = false;
                    self.update_reader(peer);
                }
            }
            None => self.feed(Input::Flushed { conn, bytes }),
        }
    }

    fn pause_by_machine(&mut self, conn: ConnId, paused: bool) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.paused_by_machine = paused;
            self.update_reader(conn);
        }
    }

    fn pipe(&mut self, a: ConnId, b: ConnId) {
        let free = |c: Option<&Conn>| c.is_some_and(|c| c.pipe.is_none());
        if a == b || !free(self.conns.get(&a)) || !free(self.conns.get(&b)) {
            // One side is gone (or the pipe makes no sense): the pipe ends at once.
            // A side that was piped already takes its old partner with it (as mio).
            debug!(%a, %b, "pipe of a closed or piped connection: closing both");
            for conn in [a, b] {
                if self.close_with_pipe(conn) {
                    self.closed_later.push_back(conn);
                }
            }
            return;
        }
        for (this, peer) in [(a, b), (b, a)] {
            let peer_unflushed = self.conns.get(&peer).map_or(0, |p| p.unflushed);
            if let Some(c) = self.conns.get_mut(&this) {
                c.pipe = Some(peer);
                c.paused_by_machine = false;
                c.paused_by_pipe = peer_unflushed > self.config.pipe_buffer;
            }
            self.update_reader(this);
        }
        // A FIN a half-closing machine was told of before the pipe is carried
        // through at once.
        for (this, peer) in [(a, b), (b, a)] {
            if self.conns.get(&this).is_some_and(|c| c.read_closed) {
                self.shutdown(peer);
            }
        }
        // Both directions may have ended before the pipe (the machine shut both down).
        self.end_pipe_if_done(a, b);
    }

    /// Move bytes read from one side of a pipe to the other side's writer.
    fn forward(&mut self, from: ConnId, to: ConnId, data: Vec<u8>) {
        self.send(to, data);
        let over = self
            .conns
            .get(&to)
            .is_some_and(|c| c.unflushed > self.config.pipe_buffer);
        if over {
            if let Some(c) = self.conns.get_mut(&from) {
                c.paused_by_pipe = true;
            }
            self.update_reader(from);
        }
    }

    /// Tell `conn`'s reader to pause or resume if its wanted state changed.
    fn update_reader(&mut self, conn: ConnId) {
        let sink_full = self.sink_full();
        if let Some(c) = self.conns.get_mut(&conn) {
            let paused = match c.pipe {
                // Piped bytes make no events: only the peer's writer holds them back.
                Some(_) => c.paused_by_pipe,
                None => c.paused_by_machine || sink_full,
            };
            if paused != c.read_paused {
                c.read_paused = paused;
                let order = if paused {
                    Control::Pause
                } else {
                    Control::Resume
                };
                let _ = c.io.reader.try_send(order);
            }
        }
    }

    fn update_all_readers(&mut self) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.update_reader(conn);
        }
    }

    fn close_everything(&mut self) {
        // Stops the TUN threads (the reader at its next read).
        drop(mem::take(&mut self.tun));
        self.conns.clear();
        self.listeners.clear();
        self.sockets.clear();
        self.backlog.reset();
        // Overflowed events exist only while the channel is full, and waiting for
        // room could wait forever: they are dropped.
        self.event_send = None;
        self.overflow.clear();
    }
}
