//! The tracker (`spec/mount-relay.md` MR-3..MR-8): an HTTP/1.0 server that pairs
//! relay points and listener points of a mount.
//!
//! Each connection carries one request (`GET /Pi`, MR-3/MR-4) and gets one
//! answer, then the tracker closes it. A registration lives for `ttl` unless
//! the point registers again (points re-register on every tick until they are
//! connected, MR-6); `Connected` takes both points off the lists (MR-7). A
//! registration is answered with the other role's candidates on the same mount,
//! best latency first (MR-5, MR-8).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::wire::{TrackerRequest, format_address_list};
use crate::codec::Parsed;
use crate::codec::http1::{HeadLimits, HttpError, Response, Version, parse_request_head};
use crate::io::{Action, ConnId, IdAllocator, Input, ListenerId, Machine};
use crate::timer::{MAX_TIMEOUT, Timers};

/// The `Server` header: `ferry/<version>`.
pub const SERVER: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// Tracker settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How long a registration lives without a refresh (MR-6).
    #[serde(with = "crate::serde_secs")]
    pub ttl: Duration,
    /// A request must arrive within this after the connection opened.
    #[serde(with = "crate::serde_secs")]
    pub request_timeout: Duration,
    /// The largest request head, in bytes (431 beyond).
    pub max_head_bytes: usize,
    /// Candidates listed in one answer at most.
    pub max_candidates: usize,
    /// Registrations held at once; one more is refused with 503.
    pub max_registrations: usize,
    /// Connections at once; one more is closed at once.
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            max_head_bytes: 4096,
            max_candidates: 64,
            max_registrations: 100_000,
            max_connections: 10_000,
        }
    }
}

/// What the application asks of the tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open a listener.
    Listen(SocketAddr),
    /// Close every listener and connection.
    Shutdown,
}

/// What the tracker tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A listener is bound.
    Listening {
        /// The listener.
        listener: ListenerId,
        /// Its address.
        local: SocketAddr,
    },
    /// A listener could not be bound.
    ListenFailed {
        /// The listener.
        listener: ListenerId,
        /// Why.
        error: String,
    },
    /// A point registered for the first time (refreshes are not reported).
    Registered {
        /// The mount.
        mount: String,
        /// The point's public address.
        addr: SocketAddr,
        /// A relay point (else a listener point).
        relay: bool,
    },
    /// Two points reported they are connected.
    Paired {
        /// One.
        a: SocketAddr,
        /// The other.
        b: SocketAddr,
    },
    /// A request was refused.
    Rejected {
        /// The connection.
        conn: ConnId,
        /// The status sent.
        status: u16,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    mount: String,
    relay: bool,
    addr: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    latency: Option<u32>,
    expires: Instant,
    /// Registration order, to list points without a latency oldest first.
    seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Request(ConnId),
    Purge,
}

/// The tracker machine.
#[derive(Debug)]
pub struct Tracker {
    config: Config,
    ids: IdAllocator,
    listeners: Vec<ListenerId>,
    conns: BTreeMap<ConnId, Vec<u8>>,
    points: BTreeMap<Key, Entry>,
    seq: u64,
    timers: Timers<Timer>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Tracker {
    /// A tracker; durations are capped at [`MAX_TIMEOUT`].
    pub fn new(mut config: Config) -> Tracker {
        config.ttl = config.ttl.clamp(Duration::from_millis(1), MAX_TIMEOUT);
        config.request_timeout = config.request_timeout.min(MAX_TIMEOUT);
        Tracker {
            config,
            ids: IdAllocator::default(),
            listeners: Vec::new(),
            conns: BTreeMap::new(),
            points: BTreeMap::new(),
            seq: 0,
            timers: Timers::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Registrations held now (expired ones may linger until the next purge).
    pub fn registrations(&self) -> usize {
        self.points.len()
    }

    fn respond(&mut self, conn: ConnId, response: Response) {
        let mut out = Vec::new();
        response
            .with_version(Version::Http10)
            .with_header("Server", SERVER)
            .encode(&mut out);
        self.actions.push_back(Action::Send { conn, data: out });
        self.actions.push_back(Action::Close { conn });
        self.conns.remove(&conn);
        self.timers.cancel(Timer::Request(conn));
    }

    fn reject(&mut self, conn: ConnId, status: u16, reason_phrase: &str, why: String) {
        self.respond(
            conn,
            Response::text(status, reason_phrase, format!("{why}\n")),
        );
        self.events.push_back(Event::Rejected {
            conn,
            status,
            reason: why,
        });
    }

    fn receive(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        let Some(buf) = self.conns.get_mut(&conn) else {
            return;
        };
        buf.extend_from_slice(data);
        let limits = HeadLimits {
            max_head_bytes: self.config.max_head_bytes,
            ..HeadLimits::default()
        };
        match parse_request_head(buf, &limits) {
            Ok(Parsed::Incomplete) => {}
            Ok(Parsed::Done { value, .. }) => match TrackerRequest::from_head(&value) {
                Ok(request) => self.handle(conn, request, now),
                Err(e) => self.reject(conn, 400, "Bad Request", e.to_string()),
            },
            Err(e @ HttpError::HeadTooLarge { .. }) => {
                self.reject(conn, 431, "Request Header Fields Too Large", e.to_string());
            }
            Err(e) => self.reject(conn, 400, "Bad Request", e.to_string()),
        }
    }

    fn handle(&mut self, conn: ConnId, request: TrackerRequest, now: Instant) {
        match request {
            TrackerRequest::Register {
                mount,
                my_addr,
                latency,
                relay,
            } => {
                let key = Key {
                    mount,
                    relay,
                    addr: my_addr,
                };
                let fresh = !self.points.contains_key(&key);
                if fresh && self.points.len() >= self.config.max_registrations {
                    self.purge(now);
                    if self.points.len() >= self.config.max_registrations {
                        return self.reject(
                            conn,
                            503,
                            "Service Unavailable",
                            "too many registrations".into(),
                        );
                    }
                }
                let seq = match self.points.get(&key) {
                    Some(entry) => entry.seq,
                    None => {
                        self.seq += 1;
                        self.seq
                    }
                };
                self.points.insert(
                    key.clone(),
                    Entry {
                        latency,
                        expires: now + self.config.ttl,
                        seq,
                    },
                );
                if self.timers.get(Timer::Purge).is_none() {
                    self.timers.set(Timer::Purge, now + self.config.ttl);
                }
                if fresh {
                    self.events.push_back(Event::Registered {
                        mount: key.mount.clone(),
                        addr: key.addr,
                        relay: key.relay,
                    });
                }
                let candidates = self.candidates(&key.mount, !key.relay, now);
                let response = Response::new(200, "OK")
                    .with_header("Address", &format_address_list(&candidates));
                self.respond(conn, response);
            }
            TrackerRequest::Connected { own, peer } => {
                self.points
                    .retain(|key, _| key.addr != own && key.addr != peer);
                self.events.push_back(Event::Paired { a: own, b: peer });
                self.respond(conn, Response::new(200, "OK"));
            }
        }
    }

    /// The live points of `role` on `mount`: best latency first, then oldest.
    fn candidates(&self, mount: &str, relay: bool, now: Instant) -> Vec<SocketAddr> {
        let mut found: Vec<(Option<u32>, u64, SocketAddr)> = self
            .points
            .range(
                Key {
                    mount: mount.to_owned(),
                    relay,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                }..,
            )
            .take_while(|(key, _)| key.mount == mount && key.relay == relay)
            .filter(|(_, entry)| entry.expires > now)
            .map(|(key, entry)| (entry.latency, entry.seq, key.addr))
            .collect();
        found.sort_by_key(|&(latency, seq, _)| (latency.unwrap_or(u32::MAX), seq));
        found
            .into_iter()
            .take(self.config.max_candidates)
            .map(|(_, _, addr)| addr)
            .collect()
    }

    fn purge(&mut self, now: Instant) {
        self.points.retain(|_, entry| entry.expires > now);
    }

    fn shutdown(&mut self) {
        for listener in std::mem::take(&mut self.listeners) {
            self.actions.push_back(Action::CloseListener { listener });
        }
        for (conn, _) in std::mem::take(&mut self.conns) {
            self.actions.push_back(Action::Close { conn });
        }
        self.timers = Timers::new();
    }
}

impl Machine for Tracker {
    type Command = Command;
    type Event = Event;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Listening { listener, local } => {
                self.listeners.push(listener);
                self.events.push_back(Event::Listening { listener, local });
            }
            Input::ListenFailed { listener, error } => {
                self.listeners.retain(|l| *l != listener);
                self.events.push_back(Event::ListenFailed {
                    listener,
                    error: error.to_owned(),
                });
            }
            Input::Accepted { conn, .. } => {
                if self.conns.len() >= self.config.max_connections {
                    self.actions.push_back(Action::Close { conn });
                    return;
                }
                self.conns.insert(conn, Vec::new());
                self.timers
                    .set(Timer::Request(conn), now + self.config.request_timeout);
            }
            Input::Received { conn, data } => self.receive(conn, data, now),
            Input::Closed { conn } | Input::ReadClosed { conn } => {
                if self.conns.remove(&conn).is_some() {
                    self.timers.cancel(Timer::Request(conn));
                }
            }
            // Answers are small and each connection is closed after one.
            Input::Flushed { .. }
            | Input::Connected { .. }
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
            match timer {
                Timer::Request(conn) => {
                    self.reject(conn, 408, "Request Timeout", "no request in time".into());
                }
                Timer::Purge => {
                    self.purge(now);
                    if !self.points.is_empty() {
                        self.timers.set(Timer::Purge, now + self.config.ttl);
                    }
                }
            }
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
