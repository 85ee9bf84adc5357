//! The name relay server machine (spec/name-relay.md).
//!
//! One [`Server`] serves every connection of every listener it is given. Per
//! connection it keeps only: the registration state, the bytes of a frame not yet
//! complete, how many bytes it has queued to that connection and not yet seen
//! flushed, and which receiver it waits for when paused.
//!
//! # Delivery and back-pressure (NR-6, NR-12)
//!
//! A frame is delivered only when complete, as one `Send` of
//! `{sender}|{len}|{payload}`, so frames from different senders never interleave.
//! When the bytes queued to a receiver pass [`Config::max_queued_bytes`], the sender
//! of the frame that passed it gets `PauseRead` and waits, and so does any other
//! sender with a frame for that receiver (its frame stays in its own input, not in
//! the receiver's queue). When the receiver's queue drains to half the cap
//! (`Flushed`), every waiting sender is resumed. Nothing is dropped, and a
//! receiver's queue never exceeds the cap by more than one frame.
//! A paused sender is not idle: its idle timer restarts when it is resumed.
//!
//! # Timers (NR-3, NR-9)
//!
//! One deadline per connection: the registration deadline before a name, then the
//! idle deadline. The idle deadline is checked lazily: receiving bytes only records
//! `last_rx`; when the stored deadline fires early it is moved, so a busy
//! connection costs no timer work per read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use thiserror::Error;

use super::wire::{self, Parsed, WireError};
use crate::io::{Action, ConnId, IdAllocator, Input, ListenerId, Machine};

/// Tunables of the server. Every timeout and cap the spec names is here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// A new connection must register its name within this time (NR-3). Default 3 s.
    #[serde(with = "crate::serde_secs")]
    pub registration_timeout: Duration,
    /// A connection that sends no byte for longer than this is closed (NR-9). Default 30 s.
    #[serde(with = "crate::serde_secs")]
    pub idle_timeout: Duration,
    /// The largest payload a frame may announce (NR-5). Default 16 MiB.
    pub max_frame_len: usize,
    /// The longest name (NR-2). Default and upper bound 255.
    pub max_name_len: usize,
    /// Bytes queued to one receiver before its senders are paused (NR-12). Default 1 MiB.
    pub max_queued_bytes: usize,
    /// Connections served at once; one more is closed at once (NR-13). Default 10 000.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            registration_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(30),
            max_frame_len: 16 << 20,
            max_name_len: wire::MAX_NAME_LEN,
            max_queued_bytes: 1 << 20,
            max_connections: 10_000,
        }
    }
}

/// Why the relay closed a connection, or saw it go.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer closed the connection (or it failed).
    #[error("closed by peer")]
    PeerClosed,
    /// No name within the registration timeout (NR-3).
    #[error("no name within {0:?}")]
    RegistrationTimeout(Duration),
    /// The name is held by another connection (NR-7).
    #[error("name {0:?} is already registered")]
    DuplicateName(String),
    /// Nothing received for longer than the idle timeout (NR-9).
    #[error("idle for more than {0:?}")]
    IdleTimeout(Duration),
    /// Bytes that are not the protocol (NR-5).
    #[error("malformed input: {0}")]
    Malformed(#[from] WireError),
    /// Over the connection limit (NR-13).
    #[error("over the limit of {0} connections")]
    TooManyConnections(usize),
}

/// Orders from the embedding application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Open a listener at `addr`; the server accepts on it.
    Listen(SocketAddr),
    /// Close every listener and connection.
    Shutdown,
}

/// What the server reports. Names are shown lossily as UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A listener is bound.
    Listening {
        /// Its id.
        listener: ListenerId,
        /// Its address.
        local: SocketAddr,
    },
    /// A listener could not be bound.
    ListenFailed {
        /// Its id.
        listener: ListenerId,
        /// The OS error.
        error: String,
    },
    /// A connection registered a name.
    Registered {
        /// The connection.
        conn: ConnId,
        /// Its name.
        name: String,
    },
    /// A connection is gone, and why.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Its name, if it had registered one.
        name: Option<String>,
        /// Why.
        reason: CloseReason,
    },
    /// A frame for a name nobody holds was consumed and dropped (NR-8).
    Dropped {
        /// The sender's name.
        from: String,
        /// The unknown destination.
        dest: String,
        /// The payload length.
        len: usize,
    },
}

/// Counters since the server was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames delivered to a receiver.
    pub frames_delivered: u64,
    /// Payload bytes delivered.
    pub bytes_delivered: u64,
    /// Frames for an unknown destination, dropped (NR-8).
    pub frames_dropped: u64,
    /// Keep-alive frames (`{own name}|0|`) consumed (NR-10).
    pub keepalives: u64,
    /// Connections closed by the relay for a protocol reason.
    pub closed_by_relay: u64,
}

enum Registration {
    AwaitingName,
    Named(Arc<[u8]>),
}

struct Conn {
    registration: Registration,
    /// Bytes received and not yet consumed: a partial frame, or input held while paused.
    pending_input: Vec<u8>,
    last_rx: Instant,
    /// Bytes sent to this connection and not yet reported flushed.
    queued: usize,
    /// The receiver this connection is paused on.
    waiting_for: Option<ConnId>,
    /// Senders paused until this connection's queue drains.
    waiters: BTreeSet<ConnId>,
}

impl Conn {
    fn name(&self) -> Option<&Arc<[u8]>> {
        match &self.registration {
            Registration::Named(name) => Some(name),
            Registration::AwaitingName => None,
        }
    }
}

/// Outcome of consuming a connection's input.
enum Consumed {
    /// Stopped after `n` bytes: the rest is an incomplete message, or the connection is paused.
    Stopped(usize),
    /// The connection must be closed.
    Close(CloseReason),
}

/// The name relay server machine. See the module docs for its rules.
pub struct Server {
    config: Config,
    ids: IdAllocator,
    listeners: BTreeSet<ListenerId>,
    conns: BTreeMap<ConnId, Conn>,
    names: BTreeMap<Arc<[u8]>, ConnId>,
    deadlines: crate::timer::Timers<ConnId>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    stats: Stats,
}

/// The length of a delivered frame, `{sender}|{len}|{payload}`.
fn frame_len_out(sender: &[u8], len: usize) -> usize {
    wire::frame_header_len(sender, len) + len
}

/// How many more bytes a connection's held input needs to hold a whole message.
enum Need {
    /// The rest of a frame whose header is known: exactly this many.
    Exactly(usize),
    /// The header is not complete yet: at most this many finish (or reject) it.
    AtMost(usize),
}

fn missing(conn: &Conn, config: &Config) -> Need {
    const LONGEST_HEADER: usize = wire::MAX_NAME_LEN + 1 + 21;
    if conn.name().is_none() {
        return Need::AtMost(config.max_name_len + 1);
    }
    match wire::parse_frame_header(
        &conn.pending_input,
        config.max_name_len,
        config.max_frame_len,
    ) {
        Ok(Parsed::Done { value, consumed }) => Need::Exactly(
            (consumed + value.len)
                .saturating_sub(conn.pending_input.len())
                .max(1),
        ),
        _ => Need::AtMost(LONGEST_HEADER),
    }
}

/// Held-input buffers larger than this are freed once empty.
const SMALL_BUFFER: usize = 64 << 10;

/// The largest `max_frame_len` a server accepts (1 GiB): far above any sane frame,
/// and far from overflowing the length arithmetic.
pub const MAX_FRAME_LEN_LIMIT: usize = 1 << 30;

pub use crate::timer::MAX_TIMEOUT;

/// The first instant *more than* `timeout` after `from`: the spec's timeouts are
/// strict ("more than 30 s"), and a deadline fires at `<= now`.
fn after(from: Instant, timeout: Duration) -> Instant {
    from + timeout + Duration::from_nanos(1)
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl Server {
    /// A server with no listener yet: send [`Command::Listen`], or feed `Accepted`
    /// inputs from a listener the runtime owns.
    /// Values beyond the limits the spec states are clamped to them: names to
    /// 1..=255 bytes, frames to [`MAX_FRAME_LEN_LIMIT`], timeouts to [`MAX_TIMEOUT`].
    pub fn new(mut config: Config) -> Self {
        config.max_name_len = config.max_name_len.clamp(1, wire::MAX_NAME_LEN);
        config.max_frame_len = config.max_frame_len.min(MAX_FRAME_LEN_LIMIT);
        config.registration_timeout = config.registration_timeout.min(MAX_TIMEOUT);
        config.idle_timeout = config.idle_timeout.min(MAX_TIMEOUT);
        Self {
            config,
            ids: IdAllocator::default(),
            listeners: BTreeSet::new(),
            conns: BTreeMap::new(),
            names: BTreeMap::new(),
            deadlines: crate::timer::Timers::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Connections currently open (registered or not).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Bytes allocated for input held across reads (partial frames, input held
    /// while paused), over every connection: what NR-12 bounds.
    pub fn held_input_bytes(&self) -> usize {
        self.conns
            .values()
            .map(|c| c.pending_input.capacity())
            .sum()
    }

    /// The connection holding `name`, if any.
    pub fn holder_of(&self, name: &[u8]) -> Option<ConnId> {
        self.names.get(name).copied()
    }

    /// Queue `len` bytes for `conn`, written by `bytes`.
    ///
    /// A Send to the same connection queued just before is extended instead (many
    /// small frames from one read become one write). `room` (at least `len`) is
    /// what the caller may still append to it, e.g. the rest of the read being
    /// parsed: it is reserved when the buffer must grow, so a run of frames grows
    /// it once, and never by more than one read.
    fn send(&mut self, conn: ConnId, len: usize, room: usize, bytes: impl FnOnce(&mut Vec<u8>)) {
        if let Some(Action::Send { conn: last, data }) = self.actions.back_mut()
            && *last == conn
        {
            if data.capacity() - data.len() < len {
                data.reserve(room.max(len));
            }
            bytes(data);
            return;
        }
        let mut data = Vec::with_capacity(len);
        bytes(&mut data);
        self.actions.push_back(Action::Send { conn, data });
    }

    fn accept(&mut self, conn: ConnId, now: Instant) {
        if self.conns.len() >= self.config.max_connections {
            self.stats.closed_by_relay += 1;
            self.actions.push_back(Action::Close { conn });
            self.events.push_back(Event::Closed {
                conn,
                name: None,
                reason: CloseReason::TooManyConnections(self.config.max_connections),
            });
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                registration: Registration::AwaitingName,
                pending_input: Vec::new(),
                last_rx: now,
                queued: 0,
                waiting_for: None,
                waiters: BTreeSet::new(),
            },
        );
        self.deadlines
            .set(conn, after(now, self.config.registration_timeout));
    }

    fn receive(&mut self, id: ConnId, mut data: &[u8], now: Instant) {
        // First finish the message held from earlier reads, topping it up with only
        // the bytes it still needs: a read is never copied whole behind a partial frame.
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            conn.last_rx = now;
            if conn.waiting_for.is_some() {
                conn.pending_input.extend_from_slice(data);
                return;
            }
            if conn.pending_input.is_empty() || data.is_empty() {
                break;
            }
            let take = match missing(conn, &self.config) {
                Need::Exactly(n) => {
                    // Grow with the bytes that actually arrive, doubling, but never past
                    // the end of the frame: an announced length reserves nothing (NR-12).
                    let held = &mut conn.pending_input;
                    let at_hand = n.min(data.len());
                    if held.capacity() - held.len() < at_hand {
                        held.reserve_exact(at_hand.max(held.len()).min(n));
                    }
                    n
                }
                Need::AtMost(n) => n,
            };
            let take = take.min(data.len());
            conn.pending_input.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.consume_pending(id, now);
        }
        if data.is_empty() {
            return;
        }
        // Fast path: parse straight from the read buffer, keep only the leftover.
        match self.consume(id, data, now) {
            Consumed::Stopped(n) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.pending_input.extend_from_slice(&data[n..]);
                }
            }
            Consumed::Close(reason) => self.close(id, reason, now),
        }
    }

    fn consume_pending(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let input = std::mem::take(&mut conn.pending_input);
        match self.consume(id, &input, now) {
            Consumed::Stopped(n) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    let mut input = input;
                    input.drain(..n);
                    if input.is_empty() && input.capacity() > SMALL_BUFFER {
                        input = Vec::new(); // an idle connection keeps no big frame buffer
                    }
                    conn.pending_input = input;
                }
            }
            Consumed::Close(reason) => self.close(id, reason, now),
        }
    }

    /// Consume whole messages from the front of `input` for connection `id`.
    fn consume(&mut self, id: ConnId, input: &[u8], now: Instant) -> Consumed {
        let mut at = 0;
        loop {
            let Some(conn) = self.conns.get(&id) else {
                return Consumed::Stopped(at);
            };
            if conn.waiting_for.is_some() {
                return Consumed::Stopped(at);
            }
            let rest = &input[at..];
            let Some(sender) = conn.name().cloned() else {
                match wire::parse_registration(rest, self.config.max_name_len) {
                    Ok(Parsed::Incomplete) => return Consumed::Stopped(at),
                    Ok(Parsed::Done { value, consumed }) => {
                        if let Some(reason) = self.register(id, value, now) {
                            return Consumed::Close(reason);
                        }
                        at += consumed;
                        continue;
                    }
                    Err(e) => return Consumed::Close(e.into()),
                }
            };
            let header =
                wire::parse_frame_header(rest, self.config.max_name_len, self.config.max_frame_len);
            let (header, header_len) = match header {
                Ok(Parsed::Done { value, consumed }) => (value, consumed),
                Ok(Parsed::Incomplete) => return Consumed::Stopped(at),
                Err(e) => return Consumed::Close(e.into()),
            };
            let Some(payload) = rest.get(header_len..header_len + header.len) else {
                return Consumed::Stopped(at);
            };
            let frame_end = at + header_len + header.len;
            if header.len == 0 && header.name == &*sender {
                self.stats.keepalives += 1; // NR-10
                at = frame_end;
                continue;
            }
            let Some(&dest) = self.names.get(header.name) else {
                // NR-8: no error reply exists; consume, drop, count.
                self.stats.frames_dropped += 1;
                self.events.push_back(Event::Dropped {
                    from: lossy(&sender),
                    dest: lossy(header.name),
                    len: header.len,
                });
                at = frame_end;
                continue;
            };
            if self.is_full(dest) {
                // NR-12: the receiver is over its cap already; this frame waits
                // in the sender's input, so the cap is passed by one frame at most.
                self.wait_for(id, dest);
                return Consumed::Stopped(at);
            }
            // Frames later in this input may follow this one into the same Send.
            let room = frame_len_out(&sender, header.len) + (input.len() - frame_end);
            self.deliver(&sender, dest, payload, room);
            at = frame_end;
            if self.is_full(dest) {
                self.wait_for(id, dest);
            }
        }
    }

    /// Returns the reason to close `id` if the name cannot be taken.
    fn register(&mut self, id: ConnId, name: &[u8], now: Instant) -> Option<CloseReason> {
        if self.names.contains_key(name) {
            return Some(CloseReason::DuplicateName(lossy(name))); // NR-7
        }
        let name: Arc<[u8]> = name.into();
        self.names.insert(name.clone(), id);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.registration = Registration::Named(name.clone());
        }
        self.deadlines.set(id, after(now, self.config.idle_timeout));
        self.events.push_back(Event::Registered {
            conn: id,
            name: lossy(&name),
        });
        None
    }

    fn deliver(&mut self, sender: &[u8], dest: ConnId, payload: &[u8], room: usize) {
        let frame_len = frame_len_out(sender, payload.len());
        self.send(dest, frame_len, room, |out| {
            wire::encode_frame(sender, payload, out);
        });
        self.stats.frames_delivered += 1;
        self.stats.bytes_delivered += payload.len() as u64;
        if let Some(receiver) = self.conns.get_mut(&dest) {
            receiver.queued += frame_len;
        }
    }

    /// True if the bytes queued to `dest` are over the cap (NR-12).
    fn is_full(&self, dest: ConnId) -> bool {
        self.conns
            .get(&dest)
            .is_some_and(|r| r.queued > self.config.max_queued_bytes)
    }

    /// Pause `sender` until `receiver` drains (NR-12).
    fn wait_for(&mut self, sender: ConnId, receiver: ConnId) {
        if let Some(r) = self.conns.get_mut(&receiver) {
            r.waiters.insert(sender);
        }
        if let Some(s) = self.conns.get_mut(&sender) {
            s.waiting_for = Some(receiver);
        }
        self.actions.push_back(Action::PauseRead { conn: sender });
    }

    fn flushed(&mut self, id: ConnId, bytes: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.queued = conn.queued.saturating_sub(bytes);
        if conn.queued <= self.config.max_queued_bytes / 2 && !conn.waiters.is_empty() {
            let waiters = std::mem::take(&mut conn.waiters);
            for waiter in waiters {
                self.resume(waiter, now);
            }
        }
    }

    fn resume(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.waiting_for = None;
        conn.last_rx = now; // paused time is not idle time
        self.consume_pending(id, now);
        if self.conns.get(&id).is_some_and(|c| c.waiting_for.is_none()) {
            self.actions.push_back(Action::ResumeRead { conn: id });
        }
    }

    /// Close `id` for `reason` (the relay's decision).
    fn close(&mut self, id: ConnId, reason: CloseReason, now: Instant) {
        self.stats.closed_by_relay += 1;
        self.actions.push_back(Action::Close { conn: id });
        self.forget(id, reason, now);
    }

    /// Drop every trace of `id` and report why it went.
    fn forget(&mut self, id: ConnId, reason: CloseReason, now: Instant) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.deadlines.cancel(id);
        let name = conn.name().map(|n| lossy(n));
        if let Registration::Named(name) = &conn.registration {
            self.names.remove(name);
        }
        if let Some(receiver) = conn.waiting_for.and_then(|r| self.conns.get_mut(&r)) {
            receiver.waiters.remove(&id);
        }
        self.events.push_back(Event::Closed {
            conn: id,
            name,
            reason,
        });
        // Senders paused on a receiver that is gone go on; what they still hold
        // for it is now for an unknown name (NR-8).
        for waiter in conn.waiters {
            self.resume(waiter, now);
        }
    }

    fn expire(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let reason = match conn.registration {
            Registration::AwaitingName => {
                CloseReason::RegistrationTimeout(self.config.registration_timeout)
            }
            Registration::Named(_) => {
                let due = after(conn.last_rx, self.config.idle_timeout);
                if conn.waiting_for.is_some() {
                    // Paused by us: not idle (NR-12). Look again later.
                    self.deadlines.set(id, after(now, self.config.idle_timeout));
                    return;
                }
                if due > now {
                    self.deadlines.set(id, due);
                    return;
                }
                CloseReason::IdleTimeout(self.config.idle_timeout)
            }
        };
        self.close(id, reason, now);
    }

    fn shutdown(&mut self, now: Instant) {
        for listener in std::mem::take(&mut self.listeners) {
            self.actions.push_back(Action::CloseListener { listener });
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.actions.push_back(Action::Close { conn: id });
            self.forget(id, CloseReason::PeerClosed, now);
        }
    }
}

impl Machine for Server {
    type Command = Command;
    type Event = Event;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Listening { listener, local } => {
                self.listeners.insert(listener);
                self.events.push_back(Event::Listening { listener, local });
            }
            Input::ListenFailed { listener, error } => {
                self.listeners.remove(&listener);
                self.events.push_back(Event::ListenFailed {
                    listener,
                    error: error.to_owned(),
                });
            }
            Input::Accepted { conn, .. } => self.accept(conn, now),
            Input::Received { conn, data } => self.receive(conn, data, now),
            Input::Flushed { conn, bytes } => self.flushed(conn, bytes, now),
            // Not HALF_CLOSE: a runtime reports a FIN as `Closed`.
            Input::Closed { conn } | Input::ReadClosed { conn } => {
                self.forget(conn, CloseReason::PeerClosed, now)
            }
            // The server opens no connection, socket or tunnel of its own.
            Input::Connected { .. }
            | Input::ConnectFailed { .. }
            | Input::UdpBound { .. }
            | Input::UdpBindFailed { .. }
            | Input::Datagram { .. }
            | Input::TunPacket(_) => {}
        }
    }

    fn handle_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Listen(addr) => {
                let listener = ListenerId(self.ids.next_raw());
                self.actions.push_back(Action::Listen { listener, addr });
            }
            Command::Shutdown => self.shutdown(now),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(id) = self.deadlines.pop_expired(now) {
            self.expire(id, now);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.next()
    }
}

#[cfg(test)]
mod tests;
