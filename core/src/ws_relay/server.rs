//! The WebSocket relay server machine (spec/ws-relay.md, WS-1..WS-15).
//!
//! One [`Server`] serves every connection of every listener it is given. A
//! connection is first a **handshake** (its request head, buffered up to
//! [`HeadLimits::default`]), then an **open peer** in a room: a
//! [`MessageReader`] (server role, capped at [`Config::max_message`]), the time
//! it last sent anything, and how many bytes are queued to it and not yet
//! reported [`Input::Flushed`].
//!
//! # Handshake (WS-1..WS-5)
//!
//! On a complete head the server decides, in this order: path `/v1` (else 404),
//! a valid RFC 6455 upgrade (else 400, or 426 for a wrong version), `relayId` and
//! `peerId` (else 400 naming the parameter), the admin secret (else 401), the
//! origin (else 403), and room for one more peer (else 503). A refusal is one
//! `Send` of a plain-text answer, then `Close`, [`Event::Rejected`] and
//! [`Stats::rejected`]. A head over the caps gets 431 or 400; a head not complete
//! within [`Config::handshake_timeout`] is closed with no answer. Bytes after the
//! head in the same read are the start of the WebSocket stream.
//!
//! # Relaying (WS-6..WS-10)
//!
//! A data message is encoded once and queued as one `Send` per receiving peer,
//! in peerId order. A text starting with `{` (after JSON whitespace) and holding
//! `"targetPeerId"` is parsed as JSON and, if targeted, goes to one peer or
//! nowhere (WS-7). Texts `ping` / `pong` are answered / absorbed, never relayed
//! (WS-8). A newer connection with a peerId already in the room replaces the
//! older one, which is closed with 4001 (WS-10).
//!
//! # Back-pressure (WS-13)
//!
//! The sender is never paused: a `Send` that would take a receiver's queue above
//! [`Config::max_queued_bytes`] closes that receiver instead (1008 `slow
//! consumer`); nothing queued to anyone else is dropped.
//!
//! # Timers (WS-5, WS-9)
//!
//! One deadline per connection (the handshake deadline, then the staleness
//! deadline) and one periodic tick for the whole server, armed while at least one
//! peer is open, which sends text `ping` to every peer. Staleness is checked
//! lazily: a read only records `last_rx`; when the stored deadline fires early it
//! is moved.
//!
//! # Closing (WS-11, WS-12, WS-14, WS-15)
//!
//! A relay-initiated close queues a close frame then `Close` (the runtime writes
//! it within its bounded linger). A peer's close frame is answered with the same
//! code (1000 if it had none), then `Close`. Either way, and on
//! [`Input::Closed`], the peer leaves its room at once ([`Event::Left`]) and an
//! empty room is forgotten.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::handshake::{self, Refusal, Upgrade};
use crate::codec::http1::{self, HeadLimits, RequestHead, Response};
use crate::codec::websocket::{
    CloseFrame, Message, MessageReader, Read, Role, encode_close, encode_message,
};
use crate::io::{Action, ConnId, IdAllocator, Input, ListenerId, Machine};
use crate::timer::Timers;

/// Tunables of the relay. Every interval and cap the spec names is here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// When set (and not empty), a peer must offer it in `Sec-WebSocket-Protocol`
    /// (WS-3). The runtimes read it from `ADMIN_SECRET`.
    pub admin_secret: Option<String>,
    /// When set, the `Origin` a request must carry, one of these exactly (WS-4).
    /// The runtimes read it from `ALLOWED_ORIGINS` with [`Config::parse_origins`].
    pub allowed_origins: Option<Vec<String>>,
    /// The interval of the text `ping` sent to every peer (WS-9). Default 30 s.
    #[serde(with = "crate::serde_secs")]
    pub ping_interval: Duration,
    /// A peer that sends nothing for longer than this is closed (WS-9). Default 90 s.
    #[serde(with = "crate::serde_secs")]
    pub stale_timeout: Duration,
    /// A request head must be complete within this time (WS-5). Default 10 s.
    #[serde(with = "crate::serde_secs")]
    pub handshake_timeout: Duration,
    /// The largest data message, in bytes (WS-11). Default 1 MiB.
    pub max_message: usize,
    /// The most bytes queued to one peer (WS-13). Default 4 MiB.
    pub max_queued_bytes: usize,
    /// The most open peers; the next upgrade gets 503. Also the most handshakes
    /// in progress at once (more are answered 503 when accepted). Default 10 000.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin_secret: None,
            allowed_origins: None,
            ping_interval: Duration::from_secs(30),
            stale_timeout: Duration::from_secs(90),
            handshake_timeout: Duration::from_secs(10),
            max_message: 1 << 20,
            max_queued_bytes: 4 << 20,
            max_connections: 10_000,
        }
    }
}

impl Config {
    /// Split an `ALLOWED_ORIGINS` value: comma-separated, each item trimmed,
    /// empty items dropped (WS-4).
    pub fn parse_origins(list: &str) -> Vec<String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Sends to one connection are merged while they stay under this size.
const COALESCE_LIMIT: usize = 64 << 10;

/// Orders from the embedding application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Open a listener at `addr`; the server accepts on it.
    Listen(SocketAddr),
    /// Close every peer with 1001 and every listener.
    Shutdown,
}

/// What the server reports.
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
    /// A listener could not be bound (or failed).
    ListenFailed {
        /// Its id.
        listener: ListenerId,
        /// The OS error.
        error: String,
    },
    /// A handshake was refused (WS-1..WS-5). For a head not complete in time the
    /// status is 408 and nothing was sent.
    Rejected {
        /// The connection.
        conn: ConnId,
        /// The HTTP status answered.
        status: u16,
        /// Why, as sent in the body.
        reason: String,
    },
    /// A peer joined a room.
    Joined {
        /// The connection.
        conn: ConnId,
        /// The room.
        relay_id: String,
        /// The peer.
        peer_id: String,
    },
    /// A peer left its room.
    Left {
        /// The connection.
        conn: ConnId,
        /// The room.
        relay_id: String,
        /// The peer.
        peer_id: String,
        /// The WebSocket close code: the relay's, or the peer's close frame's;
        /// `None` if the connection just ended or the close frame had no code.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
    /// A targeted message was not relayed (WS-7).
    Dropped {
        /// The sender.
        conn: ConnId,
        /// Why.
        why: String,
    },
}

/// Counters since the server was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Data messages (text or binary) received from peers, `ping`/`pong` included.
    pub messages_in: u64,
    /// Data messages queued to a receiving peer (one per receiver).
    pub deliveries: u64,
    /// Targeted messages not relayed (WS-7).
    pub targeted_dropped: u64,
    /// Peers closed because their queue would overflow (WS-13).
    pub slow_consumers_closed: u64,
    /// Handshakes refused (WS-1..WS-5).
    pub rejected: u64,
}

/// The largest `max_message` a server accepts (1 GiB).
pub const MAX_MESSAGE_LIMIT: usize = 1 << 30;

/// The longest interval or timeout a server accepts (a year).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shortest ping interval a server accepts.
pub const MIN_PING_INTERVAL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The periodic text `ping` to every peer (WS-9).
    Ping,
    /// The handshake deadline, then the staleness deadline, of one connection.
    Conn(ConnId),
}

struct Peer {
    reader: MessageReader,
    relay_id: Arc<str>,
    peer_id: Arc<str>,
}

enum State {
    /// The request head so far (at most `max_head_bytes + 1` bytes).
    Handshake(Vec<u8>),
    Open(Box<Peer>),
}

struct Conn {
    state: State,
    last_rx: Instant,
    /// Bytes sent to this connection and not yet reported flushed.
    queued: usize,
}

/// Where a text message goes (WS-7).
enum Targeting {
    Broadcast,
    To(String),
    Drop(&'static str),
}

/// The WebSocket relay machine. See the module docs for its rules.
pub struct Server {
    config: Config,
    ids: IdAllocator,
    listeners: BTreeSet<ListenerId>,
    conns: BTreeMap<ConnId, Conn>,
    /// relayId -> peerId -> connection.
    rooms: BTreeMap<Arc<str>, BTreeMap<Arc<str>, ConnId>>,
    handshakes: usize,
    peers: usize,
    timers: Timers<Timer>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    stats: Stats,
}

/// The first instant *more than* `timeout` after `from` (the spec's timeouts are
/// strict, and a deadline fires at `<= now`).
fn after(from: Instant, timeout: Duration) -> Instant {
    from + timeout + Duration::from_nanos(1)
}

fn frame(message: &Message) -> Vec<u8> {
    let mut out = Vec::new();
    encode_message(message, None, &mut out);
    out
}

/// WS-7: only a text that looks like a targeted JSON object is parsed.
fn targeting(text: &str) -> Targeting {
    let start = text.trim_start_matches([' ', '\t', '\n', '\r']);
    if !start.starts_with('{') || !text.contains("\"targetPeerId\"") {
        return Targeting::Broadcast;
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(_) => Targeting::Drop("targeted message is not valid JSON"),
        Ok(serde_json::Value::Object(map)) => match map.get("targetPeerId") {
            None => Targeting::Broadcast,
            Some(serde_json::Value::String(target)) => Targeting::To(target.clone()),
            Some(_) => Targeting::Drop("targetPeerId is not a string"),
        },
        Ok(_) => Targeting::Broadcast,
    }
}

impl Server {
    /// A server with no listener yet: send [`Command::Listen`], or feed `Accepted`
    /// inputs from a listener the runtime owns. Values beyond sane limits are
    /// clamped: `max_message` to [`MAX_MESSAGE_LIMIT`], intervals to
    /// [`MAX_TIMEOUT`], the ping interval to at least [`MIN_PING_INTERVAL`].
    pub fn new(mut config: Config) -> Self {
        config.max_message = config.max_message.min(MAX_MESSAGE_LIMIT);
        config.ping_interval = config.ping_interval.clamp(MIN_PING_INTERVAL, MAX_TIMEOUT);
        config.stale_timeout = config.stale_timeout.min(MAX_TIMEOUT);
        config.handshake_timeout = config.handshake_timeout.min(MAX_TIMEOUT);
        Self {
            config,
            ids: IdAllocator::default(),
            listeners: BTreeSet::new(),
            conns: BTreeMap::new(),
            rooms: BTreeMap::new(),
            handshakes: 0,
            peers: 0,
            timers: Timers::new(),
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

    /// Open peers (handshake done), over every room.
    pub fn peer_count(&self) -> usize {
        self.peers
    }

    fn accept(&mut self, id: ConnId, now: Instant) {
        if self.conns.contains_key(&id) {
            return;
        }
        self.conns.insert(
            id,
            Conn {
                state: State::Handshake(Vec::new()),
                last_rx: now,
                queued: 0,
            },
        );
        self.handshakes += 1;
        if self.handshakes > self.config.max_connections {
            // Bounded memory: pending heads are capped like peers.
            self.reject(id, Refusal::new(503, "too many connections"));
            return;
        }
        self.timers
            .set(Timer::Conn(id), after(now, self.config.handshake_timeout));
    }

    fn receive(&mut self, id: ConnId, data: &[u8], now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.last_rx = now;
        let State::Handshake(head) = &mut conn.state else {
            self.read_messages(id, data);
            return;
        };
        // WS-5: at most max_head_bytes + 1 bytes are held.
        match http1::buffer_request_head(head, data, &HeadLimits::default()) {
            Ok(None) => {}
            Ok(Some((value, rest))) => self.upgrade(id, &value, &data[rest..], now),
            Err(e) => {
                let (status, _) = e.status();
                self.reject(id, Refusal::new(status, e.to_string()));
            }
        }
    }

    fn upgrade(&mut self, id: ConnId, head: &RequestHead, rest: &[u8], now: Instant) {
        let up = match handshake::decide(head, &self.config) {
            Ok(up) => up,
            Err(refusal) => return self.reject(id, refusal),
        };
        if self.peers >= self.config.max_connections {
            return self.reject(id, Refusal::new(503, "too many connections"));
        }
        let Upgrade {
            accept,
            protocol,
            relay_id,
            peer_id,
        } = up;
        let mut answer = Vec::new();
        Response::switching_protocols(&accept, protocol.as_deref()).encode(&mut answer);
        let relay_id: Arc<str> = relay_id.into();
        let peer_id: Arc<str> = peer_id.into();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.queued += answer.len();
        conn.state = State::Open(Box::new(Peer {
            reader: MessageReader::new(Role::Server, self.config.max_message),
            relay_id: relay_id.clone(),
            peer_id: peer_id.clone(),
        }));
        self.actions.push_back(Action::Send {
            conn: id,
            data: answer,
        });
        self.handshakes -= 1;
        self.peers += 1;
        let older = self
            .rooms
            .entry(relay_id.clone())
            .or_default()
            .insert(peer_id.clone(), id);
        if let Some(older) = older {
            // WS-10: the newest connection is the live one.
            self.close_peer(older, 4001, "replaced by a newer connection");
        }
        self.events.push_back(Event::Joined {
            conn: id,
            relay_id: relay_id.to_string(),
            peer_id: peer_id.to_string(),
        });
        self.timers
            .set(Timer::Conn(id), after(now, self.config.stale_timeout));
        if self.timers.get(Timer::Ping).is_none() {
            self.timers
                .set(Timer::Ping, now + self.config.ping_interval);
        }
        if !rest.is_empty() {
            self.read_messages(id, rest);
        }
    }

    /// Answer a handshake with an HTTP error and close it.
    fn reject(&mut self, id: ConnId, refusal: Refusal) {
        let mut answer = Vec::new();
        refusal.encode(&mut answer);
        self.actions.push_back(Action::Send {
            conn: id,
            data: answer,
        });
        self.actions.push_back(Action::Close { conn: id });
        self.stats.rejected += 1;
        self.forget(id, None, String::new());
        self.events.push_back(Event::Rejected {
            conn: id,
            status: refusal.status,
            reason: refusal.reason,
        });
    }

    fn read_messages(&mut self, id: ConnId, mut input: &[u8]) {
        loop {
            let Some(Conn {
                state: State::Open(peer),
                ..
            }) = self.conns.get_mut(&id)
            else {
                return;
            };
            match peer.reader.read(input) {
                Ok(Read { consumed, message }) => {
                    input = &input[consumed.min(input.len())..];
                    let Some(message) = message else {
                        return;
                    };
                    self.on_message(id, message);
                }
                Err(e) => {
                    // WS-11, WS-12: only this connection is affected.
                    self.close_peer(id, e.close_code(), &e.to_string());
                    return;
                }
            }
        }
    }

    fn on_message(&mut self, id: ConnId, message: Message) {
        match message {
            Message::Text(text) if text == "ping" => {
                // WS-8: answered to the sender only, never relayed.
                self.stats.messages_in += 1;
                self.deliver(id, frame(&Message::Text("pong".into())));
            }
            Message::Text(text) if text == "pong" => self.stats.messages_in += 1,
            Message::Text(text) => {
                self.stats.messages_in += 1;
                match targeting(&text) {
                    Targeting::Broadcast => self.broadcast(id, Message::Text(text)),
                    Targeting::To(target) => self.send_to(id, &target, Message::Text(text)),
                    Targeting::Drop(why) => self.drop_targeted(id, why.to_owned()),
                }
            }
            Message::Binary(data) => {
                self.stats.messages_in += 1;
                self.broadcast(id, Message::Binary(data));
            }
            // WS-8: RFC 6455 §5.5.2.
            Message::Ping(payload) => {
                self.deliver(id, frame(&Message::Pong(payload)));
            }
            Message::Pong(_) => {}
            Message::Close(close) => self.peer_closed(id, close),
        }
    }

    /// The room and peer id of an open connection.
    fn membership(&self, id: ConnId) -> Option<(Arc<str>, Arc<str>)> {
        match &self.conns.get(&id)?.state {
            State::Open(peer) => Some((peer.relay_id.clone(), peer.peer_id.clone())),
            State::Handshake(_) => None,
        }
    }

    /// WS-6: to every other peer of the sender's room, encoded once.
    fn broadcast(&mut self, id: ConnId, message: Message) {
        let Some((relay_id, _)) = self.membership(id) else {
            return;
        };
        let receivers: Vec<ConnId> = self
            .rooms
            .get(&relay_id)
            .map(|room| room.values().copied().filter(|&c| c != id).collect())
            .unwrap_or_default();
        if receivers.is_empty() {
            return;
        }
        let bytes = frame(&message);
        for receiver in receivers {
            if self.deliver(receiver, bytes.clone()) {
                self.stats.deliveries += 1;
            }
        }
    }

    /// WS-7: to one other peer of the sender's room, or nowhere.
    fn send_to(&mut self, id: ConnId, target: &str, message: Message) {
        let Some((relay_id, peer_id)) = self.membership(id) else {
            return;
        };
        let receiver = self
            .rooms
            .get(&relay_id)
            .and_then(|room| room.get(target))
            .copied();
        match receiver {
            Some(receiver) if &*peer_id != target => {
                if self.deliver(receiver, frame(&message)) {
                    self.stats.deliveries += 1;
                }
            }
            Some(_) => self.drop_targeted(id, "targetPeerId names the sender".into()),
            None => self.drop_targeted(id, format!("no peer {target:?} in the room")),
        }
    }

    fn drop_targeted(&mut self, id: ConnId, why: String) {
        self.stats.targeted_dropped += 1;
        self.events.push_back(Event::Dropped { conn: id, why });
    }

    /// Queue `bytes` to `id`, or close it if its queue would overflow (WS-13).
    /// True if queued.
    fn deliver(&mut self, id: ConnId, bytes: Vec<u8>) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        if conn.queued.saturating_add(bytes.len()) > self.config.max_queued_bytes {
            self.stats.slow_consumers_closed += 1;
            self.close_peer(id, 1008, "slow consumer");
            return false;
        }
        conn.queued += bytes.len();
        // Small frames for the connection just written to join that Send: a read
        // full of pings is answered by one write, not one allocation per pong.
        if let Some(Action::Send { conn: last, data }) = self.actions.back_mut()
            && *last == id
            && data.len() + bytes.len() <= COALESCE_LIMIT
        {
            data.extend_from_slice(&bytes);
        } else {
            self.actions.push_back(Action::Send {
                conn: id,
                data: bytes,
            });
        }
        true
    }

    /// WS-14: answer a peer's close frame with the same code, then close.
    fn peer_closed(&mut self, id: ConnId, close: Option<CloseFrame>) {
        let mut answer = Vec::new();
        encode_close(
            close.as_ref().map_or(1000, |c| c.code),
            "",
            None,
            &mut answer,
        );
        self.actions.push_back(Action::Send {
            conn: id,
            data: answer,
        });
        self.actions.push_back(Action::Close { conn: id });
        let (code, reason) = match close {
            Some(CloseFrame { code, reason }) if !reason.is_empty() => (Some(code), reason),
            Some(CloseFrame { code, .. }) => (Some(code), "close frame from peer".into()),
            None => (None, "close frame from peer".into()),
        };
        self.forget(id, code, reason);
    }

    /// A relay-initiated close of an open peer: close frame, then `Close` (WS-14).
    fn close_peer(&mut self, id: ConnId, code: u16, reason: &str) {
        let mut bytes = Vec::new();
        encode_close(code, reason, None, &mut bytes);
        self.actions.push_back(Action::Send {
            conn: id,
            data: bytes,
        });
        self.actions.push_back(Action::Close { conn: id });
        self.forget(id, Some(code), reason.to_owned());
    }

    /// WS-15: drop every trace of `id`; an open peer leaves its room at once.
    fn forget(&mut self, id: ConnId, code: Option<u16>, reason: String) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.timers.cancel(Timer::Conn(id));
        let peer = match conn.state {
            State::Handshake(_) => {
                self.handshakes -= 1;
                return;
            }
            State::Open(peer) => peer,
        };
        self.peers -= 1;
        if let Some(room) = self.rooms.get_mut(&peer.relay_id) {
            // After WS-10 the peerId may already belong to the newer connection.
            if room.get(&peer.peer_id) == Some(&id) {
                room.remove(&peer.peer_id);
            }
            if room.is_empty() {
                self.rooms.remove(&peer.relay_id);
            }
        }
        if self.peers == 0 {
            self.timers.cancel(Timer::Ping);
        }
        self.events.push_back(Event::Left {
            conn: id,
            relay_id: peer.relay_id.to_string(),
            peer_id: peer.peer_id.to_string(),
            code,
            reason,
        });
    }

    fn expire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Ping => {
                // WS-9: one tick for every peer.
                let ping = frame(&Message::Text("ping".into()));
                let open: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| matches!(c.state, State::Open(_)))
                    .map(|(&id, _)| id)
                    .collect();
                for id in open {
                    self.deliver(id, ping.clone());
                }
                if self.peers > 0 {
                    self.timers
                        .set(Timer::Ping, now + self.config.ping_interval);
                }
            }
            Timer::Conn(id) => {
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                match conn.state {
                    State::Handshake(_) => {
                        // WS-5: no head in time: closed with no answer.
                        self.actions.push_back(Action::Close { conn: id });
                        self.stats.rejected += 1;
                        self.forget(id, None, String::new());
                        self.events.push_back(Event::Rejected {
                            conn: id,
                            status: 408,
                            reason: format!(
                                "no request head within {:?}",
                                self.config.handshake_timeout
                            ),
                        });
                    }
                    State::Open(_) => {
                        let due = after(conn.last_rx, self.config.stale_timeout);
                        if due > now {
                            self.timers.set(Timer::Conn(id), due);
                        } else {
                            self.close_peer(id, 1001, "stale");
                        }
                    }
                }
            }
        }
    }

    fn shutdown(&mut self) {
        for listener in std::mem::take(&mut self.listeners) {
            self.actions.push_back(Action::CloseListener { listener });
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if self.membership(id).is_some() {
                self.close_peer(id, 1001, "server shutting down");
            } else {
                self.actions.push_back(Action::Close { conn: id });
                self.forget(id, None, String::new());
            }
        }
        self.timers.cancel(Timer::Ping);
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
            Input::Flushed { conn, bytes } => {
                if let Some(conn) = self.conns.get_mut(&conn) {
                    conn.queued = conn.queued.saturating_sub(bytes);
                }
            }
            // Not HALF_CLOSE: a runtime reports a FIN as `Closed`.
            Input::Closed { conn } | Input::ReadClosed { conn } => {
                self.forget(conn, None, "closed by peer".into())
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

    fn handle_command(&mut self, command: Command, _now: Instant) {
        match command {
            Command::Listen(addr) => {
                let listener = ListenerId(self.ids.next_raw());
                self.actions.push_back(Action::Listen { listener, addr });
            }
            Command::Shutdown => self.shutdown(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_expired(now) {
            self.expire(timer, now);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }
}

#[cfg(test)]
mod tests;
