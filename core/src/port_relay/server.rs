//! The port relay server (`spec/port-relay.md`, PR-1..PR-13).
//!
//! Every connection to a control listener starts in the handshake (PR-1). A
//! client that asks for a port (`multiplex`, `pool`+`new`, `event`+`new`) gets
//! its own public listener (PR-2); users accepted there are carried to the
//! client by its protocol:
//!
//! - multiplex: a yamux stream per user, opened by the relay (the crate-private `MuxBridge`);
//! - pool: the user takes the oldest idle pooled connection and the runtime
//!   splices the two (`Action::Pipe`); with none idle the user waits, bounded;
//! - event: the relay announces `<id>\n` on the control connection and splices
//!   the user to whichever connection presents `event\n<id>\n`.
//!
//! Bytes a user sends while waiting are kept (the user is paused past 64 KiB)
//! and written to the client's connection before the splice, so none is lost.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::bridge::{BridgeEnd, MuxBridge};
use super::{IdGen, Line, Protocol, error_line, take_line};
use crate::codec::yamux::INITIAL_WINDOW;
use crate::codec::yamux::session::{self, Mode};
use crate::io::{Action, ConnId, IdAllocator, Input, ListenerId, Machine};
use crate::timer::{MAX_TIMEOUT, Timers};

/// What a waiting user or an idle pooled connection may send before the splice
/// is kept up to this much; past it the connection is paused (a waiting user)
/// or refused (a pooled connection has no business talking first).
const EARLY_LIMIT: usize = 64 << 10;

/// Relay settings; the defaults are the spec's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The address public listeners bind to (their port is chosen per client);
    /// `None`: the address of the control listener.
    pub public_ip: Option<IpAddr>,
    /// Public ports to use, first free first; `None`: the OS chooses (PR-2).
    pub port_range: Option<(u16, u16)>,
    /// A handshake must complete within this (PR-1).
    #[serde(with = "crate::serde_secs")]
    pub handshake_timeout: Duration,
    /// How long a user waits for an idle pooled connection (PR-8).
    #[serde(with = "crate::serde_secs")]
    pub pool_wait: Duration,
    /// How long an empty pool keeps its port and id (PR-8).
    #[serde(with = "crate::serde_secs")]
    pub pool_grace: Duration,
    /// How long an event id waits for its connection (PR-10).
    #[serde(with = "crate::serde_secs")]
    pub event_wait: Duration,
    /// Users waiting at once per client (PR-8, PR-10).
    pub max_waiting: usize,
    /// Idle connections per pool (PR-7).
    pub max_pool: usize,
    /// Clients (public listeners) at once; one more is refused.
    pub max_clients: usize,
    /// Connections the relay tracks at once (handshakes, control, pooled,
    /// waiting and multiplexed users; spliced pairs are the runtime's): one
    /// more is closed at once, before a byte is read, bounding what a flood
    /// of idle connections can hold until the handshake timeout.
    pub max_connections: usize,
    /// Keep-alive interval of multiplex sessions; 0 turns pings off (PR-5).
    #[serde(with = "crate::serde_secs")]
    pub keepalive: Duration,
    /// The receive window each multiplexed stream announces, in bytes
    /// ([`DEFAULT_WINDOW`]; at least yamux's 256 KiB, at most [`MAX_WINDOW`]).
    /// It bounds what the relay holds per stream for a user (PR-13).
    pub window: u32,
}

/// The yamux receive window ferry announces per stream: with yamux's own
/// 256 KiB a bulk stream waits for credit half the time on loopback; 2 MiB
/// measured 0.51-0.53x direct against 0.32-0.38x (`conformance/benches/port_relay.rs`).
pub const DEFAULT_WINDOW: u32 = 2 << 20;

/// The largest receive window a relay or forwarder announces.
pub const MAX_WINDOW: u32 = 16 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            public_ip: None,
            port_range: None,
            handshake_timeout: Duration::from_secs(10),
            pool_wait: Duration::from_secs(10),
            pool_grace: Duration::from_secs(30),
            event_wait: Duration::from_secs(10),
            max_waiting: 128,
            max_pool: 64,
            max_clients: 1024,
            max_connections: 10_000,
            keepalive: Duration::from_secs(30),
            window: DEFAULT_WINDOW,
        }
    }
}

impl Config {
    fn session(&self) -> session::Config {
        session::Config {
            keepalive_interval: (!self.keepalive.is_zero()).then_some(self.keepalive),
            keepalive_timeout: self.keepalive.max(Duration::from_secs(1)),
            receive_window: self.window.clamp(INITIAL_WINDOW, MAX_WINDOW),
            ..session::Config::default()
        }
    }
}

/// What the application asks of the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Open a control listener.
    Listen(SocketAddr),
    /// Close every listener and connection.
    Shutdown,
}

/// What the relay tells the application (for logs; ids are never included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A control listener is bound.
    Listening {
        /// The listener.
        listener: ListenerId,
        /// Its address.
        local: SocketAddr,
    },
    /// A control listener could not be bound.
    ListenFailed {
        /// The listener.
        listener: ListenerId,
        /// Why.
        error: String,
    },
    /// A client got its public port.
    ClientReady {
        /// A number for logs.
        client: u64,
        /// Its protocol.
        protocol: Protocol,
        /// The public listener's address.
        public: SocketAddr,
    },
    /// A client's public listener closed.
    ClientGone {
        /// The number of [`Event::ClientReady`].
        client: u64,
        /// Its protocol.
        protocol: Protocol,
        /// Why.
        reason: String,
    },
    /// A connection was refused with an error line.
    Refused {
        /// The connection.
        conn: ConnId,
        /// The error line's reason.
        reason: &'static str,
    },
}

type ClientKey = u64;

#[derive(Debug)]
enum Role {
    Handshake {
        buf: Vec<u8>,
        protocol: Option<Protocol>,
    },
    /// A new client's connection, waiting for its public listener.
    Opening(ClientKey),
    MuxControl(ClientKey),
    MuxUser(ClientKey),
    EventControl(ClientKey),
    PoolIdle {
        client: ClientKey,
        early: Vec<u8>,
    },
    /// A user waiting for a pooled connection (`id: None`) or an event answer.
    Waiting {
        client: ClientKey,
        early: Vec<u8>,
        paused: bool,
        id: Option<String>,
    },
}

#[derive(Debug)]
enum Kind {
    Multiplex(Box<MuxBridge>),
    Pool {
        id: String,
        idle: VecDeque<ConnId>,
        waiting: VecDeque<ConnId>,
    },
    Event {
        control: ConnId,
        waiting: BTreeSet<ConnId>,
        /// Id lines sent on `control` not yet flushed.
        unflushed: usize,
    },
    /// Not open yet: the connection that asked, and bytes it sent past the handshake.
    Opening {
        conn: ConnId,
        early: Vec<u8>,
    },
}

#[derive(Debug)]
struct Client {
    protocol: Protocol,
    listener: ListenerId,
    public: Option<SocketAddr>,
    /// Ports of the range still to try.
    ports_left: usize,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Handshake(ConnId),
    Wait(ConnId),
    Grace(ClientKey),
    Mux(ClientKey),
}

/// The port relay machine.
#[derive(Debug)]
pub struct Server {
    config: Config,
    ids: IdAllocator,
    rng: IdGen,
    control_listeners: BTreeSet<ListenerId>,
    /// The first control listener's address, for public listeners by default.
    control_ip: Option<IpAddr>,
    conns: BTreeMap<ConnId, Role>,
    clients: BTreeMap<ClientKey, Client>,
    by_listener: BTreeMap<ListenerId, ClientKey>,
    pools: BTreeMap<String, ClientKey>,
    events_pending: BTreeMap<String, (ClientKey, ConnId)>,
    timers: Timers<Timer>,
    next_client: ClientKey,
    next_port: u16,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Server {
    /// A relay; `seed` keys the id generator and must be secret and random
    /// (the daemon takes it from the OS).
    ///
    /// Absurd settings are clamped, never a panic later: a reversed port range
    /// is put in order (port 0 excluded), timeouts are capped at [`MAX_TIMEOUT`].
    pub fn new(mut config: Config, seed: [u8; 32]) -> Server {
        config.port_range = config
            .port_range
            .map(|(a, b)| (a.min(b).max(1), a.max(b).max(1)));
        for timeout in [
            &mut config.handshake_timeout,
            &mut config.pool_wait,
            &mut config.pool_grace,
            &mut config.event_wait,
            &mut config.keepalive,
        ] {
            *timeout = (*timeout).min(MAX_TIMEOUT);
        }
        let next_port = config.port_range.map_or(0, |(lo, _)| lo);
        Server {
            config,
            ids: IdAllocator::default(),
            rng: IdGen::new(seed),
            control_listeners: BTreeSet::new(),
            control_ip: None,
            conns: BTreeMap::new(),
            clients: BTreeMap::new(),
            by_listener: BTreeMap::new(),
            pools: BTreeMap::new(),
            events_pending: BTreeMap::new(),
            timers: Timers::new(),
            next_client: 1,
            next_port,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Connections the relay tracks now (handshakes, control and pooled
    /// connections, waiting and multiplexed users; spliced pairs are the runtime's).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Clients with a public listener (or asking for one) now.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    fn reject(&mut self, conn: ConnId, reason: &'static str) {
        self.conns.remove(&conn);
        self.timers.cancel(Timer::Handshake(conn));
        self.actions.push_back(Action::Send {
            conn,
            data: error_line(reason),
        });
        self.actions.push_back(Action::Close { conn });
        self.events.push_back(Event::Refused { conn, reason });
    }

    fn accept(&mut self, listener: ListenerId, conn: ConnId, now: Instant) {
        if self.conns.len() >= self.config.max_connections {
            self.actions.push_back(Action::Close { conn });
            self.events.push_back(Event::Refused {
                conn,
                reason: "too many connections",
            });
            return;
        }
        if self.control_listeners.contains(&listener) {
            self.conns.insert(
                conn,
                Role::Handshake {
                    buf: Vec::new(),
                    protocol: None,
                },
            );
            self.timers
                .set(Timer::Handshake(conn), now + self.config.handshake_timeout);
            return;
        }
        let Some(&key) = self.by_listener.get(&listener) else {
            self.actions.push_back(Action::Close { conn });
            return;
        };
        self.user_arrived(key, conn, now);
    }

    /// A user connected to `key`'s public port (PR-4, PR-8, PR-10).
    fn user_arrived(&mut self, key: ClientKey, conn: ConnId, now: Instant) {
        let Some(client) = self.clients.get_mut(&key) else {
            self.actions.push_back(Action::Close { conn });
            return;
        };
        let max_waiting = self.config.max_waiting;
        match &mut client.kind {
            Kind::Multiplex(bridge) => {
                if bridge.open_for(conn, &mut self.actions) {
                    self.conns.insert(conn, Role::MuxUser(key));
                }
                self.after_mux(key);
            }
            Kind::Pool { idle, waiting, .. } => {
                if let Some(pooled) = idle.pop_front() {
                    let empty = idle.is_empty();
                    self.splice(conn, Vec::new(), pooled);
                    if empty {
                        self.timers
                            .set(Timer::Grace(key), now + self.config.pool_grace);
                    }
                } else if waiting.len() < max_waiting {
                    waiting.push_back(conn);
                    self.wait(key, conn, None, now + self.config.pool_wait);
                } else {
                    self.actions.push_back(Action::Close { conn });
                }
            }
            Kind::Event {
                control,
                waiting,
                unflushed,
            } => {
                // A client that does not read its announcements gets no more users.
                if waiting.len() >= max_waiting || *unflushed > EARLY_LIMIT {
                    self.actions.push_back(Action::Close { conn });
                    return;
                }
                waiting.insert(conn);
                let control = *control;
                let id = self.rng.next();
                let line = format!("{id}\n").into_bytes();
                *unflushed += line.len();
                self.actions.push_back(Action::Send {
                    conn: control,
                    data: line,
                });
                self.events_pending.insert(id.clone(), (key, conn));
                self.wait(key, conn, Some(id), now + self.config.event_wait);
            }
            Kind::Opening { .. } => self.actions.push_back(Action::Close { conn }),
        }
    }

    fn wait(&mut self, client: ClientKey, conn: ConnId, id: Option<String>, until: Instant) {
        self.conns.insert(
            conn,
            Role::Waiting {
                client,
                early: Vec::new(),
                paused: false,
                id,
            },
        );
        self.timers.set(Timer::Wait(conn), until);
    }

    /// Hand `user` to the client's connection `other`: what either sent early
    /// goes first, then the runtime splices them (PR-8, PR-10).
    fn splice(&mut self, user: ConnId, from_other: Vec<u8>, other: ConnId) {
        let mut user_early = Vec::new();
        let mut paused = false;
        if let Some(Role::Waiting {
            early, paused: p, ..
        }) = self.conns.remove(&user)
        {
            user_early = early;
            paused = p;
        }
        let mut other_early = from_other;
        if let Some(Role::PoolIdle { early, .. }) = self.conns.remove(&other) {
            other_early.splice(0..0, early);
        }
        self.timers.cancel(Timer::Wait(user));
        self.timers.cancel(Timer::Handshake(other));
        if !user_early.is_empty() {
            self.actions.push_back(Action::Send {
                conn: other,
                data: user_early,
            });
        }
        if !other_early.is_empty() {
            self.actions.push_back(Action::Send {
                conn: user,
                data: other_early,
            });
        }
        if paused {
            self.actions.push_back(Action::ResumeRead { conn: user });
        }
        self.actions.push_back(Action::Pipe { a: user, b: other });
    }

    fn receive(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        let Some(role) = self.conns.get_mut(&conn) else {
            return;
        };
        match role {
            Role::Handshake { buf, .. } => {
                buf.extend_from_slice(data);
                self.handshake(conn, now);
            }
            Role::Opening(key) => {
                let key = *key;
                if let Some(Client {
                    kind: Kind::Opening { early, .. },
                    ..
                }) = self.clients.get_mut(&key)
                {
                    early.extend_from_slice(data);
                    if early.len() > EARLY_LIMIT {
                        self.end_client(key, "client talked before its port");
                    }
                }
            }
            Role::MuxControl(key) => {
                let key = *key;
                if let Some(Client {
                    kind: Kind::Multiplex(bridge),
                    ..
                }) = self.clients.get_mut(&key)
                {
                    bridge.control_received(data, now, &mut self.actions, &mut |_| None);
                }
                self.after_mux(key);
            }
            Role::MuxUser(key) => {
                let key = *key;
                if let Some(Client {
                    kind: Kind::Multiplex(bridge),
                    ..
                }) = self.clients.get_mut(&key)
                {
                    bridge.conn_received(conn, data, &mut self.actions);
                }
                self.after_mux(key);
            }
            // Nothing is expected from an event client after its handshake.
            Role::EventControl(_) => {}
            Role::PoolIdle { early, .. } => {
                early.extend_from_slice(data);
                if early.len() > EARLY_LIMIT {
                    self.drop_idle(conn, now);
                    self.actions.push_back(Action::Close { conn });
                }
            }
            Role::Waiting { early, paused, .. } => {
                early.extend_from_slice(data);
                if early.len() > EARLY_LIMIT && !*paused {
                    *paused = true;
                    self.actions.push_back(Action::PauseRead { conn });
                }
            }
        }
    }

    /// Run the handshake as far as the buffered lines go (PR-1, PR-6, PR-7, PR-9, PR-10).
    fn handshake(&mut self, conn: ConnId, now: Instant) {
        loop {
            let Some(Role::Handshake { buf, protocol }) = self.conns.get_mut(&conn) else {
                return;
            };
            let (line, used) = match take_line(buf) {
                Line::Incomplete => return,
                Line::TooLong => return self.reject(conn, "line too long"),
                Line::Done(line, used) => (line.to_vec(), used),
            };
            let rest = buf.split_off(used);
            match *protocol {
                None => match Protocol::from_word(&line) {
                    None => return self.reject(conn, "unknown protocol"),
                    Some(Protocol::Multiplex) => {
                        return self.open_client(conn, Protocol::Multiplex, rest);
                    }
                    Some(p) => {
                        *protocol = Some(p);
                        *buf = rest;
                    }
                },
                Some(p) if line == b"new" => return self.open_client(conn, p, rest),
                Some(Protocol::Pool) => return self.join_pool(conn, &line, rest, now),
                Some(_) => return self.answer_event(conn, &line, rest),
            }
        }
    }

    /// A new client: bind its public listener (PR-2).
    fn open_client(&mut self, conn: ConnId, protocol: Protocol, early: Vec<u8>) {
        if self.clients.len() >= self.config.max_clients {
            return self.reject(conn, "too many clients");
        }
        self.timers.cancel(Timer::Handshake(conn));
        let key = self.next_client;
        self.next_client += 1;
        let ports_left = self
            .config
            .port_range
            .map_or(1, |(lo, hi)| usize::from(hi.saturating_sub(lo)) + 1);
        let listener = ListenerId(self.ids.next_raw());
        self.clients.insert(
            key,
            Client {
                protocol,
                listener,
                public: None,
                ports_left,
                kind: Kind::Opening { conn, early },
            },
        );
        self.conns.insert(conn, Role::Opening(key));
        self.listen_public(key);
    }

    fn listen_public(&mut self, key: ClientKey) {
        let Some(client) = self.clients.get_mut(&key) else {
            return;
        };
        client.ports_left = client.ports_left.saturating_sub(1);
        let port = match self.config.port_range {
            None => 0,
            Some((lo, hi)) => {
                let port = self.next_port.clamp(lo, hi);
                self.next_port = if port >= hi { lo } else { port + 1 };
                port
            }
        };
        let listener = ListenerId(self.ids.next_raw());
        self.by_listener.remove(&client.listener);
        client.listener = listener;
        self.by_listener.insert(listener, key);
        self.actions.push_back(Action::Listen {
            listener,
            addr: SocketAddr::new(
                self.config
                    .public_ip
                    .or(self.control_ip)
                    .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                port,
            ),
        });
    }

    /// The public listener is bound: answer the client (PR-3, PR-6, PR-9).
    fn client_listening(&mut self, key: ClientKey, local: SocketAddr, now: Instant) {
        let Some(client) = self.clients.get_mut(&key) else {
            return;
        };
        // Only a client still waiting for its port: a repeated `Listening`
        // must not replace a live session or pool.
        let Kind::Opening { conn, early } = &mut client.kind else {
            return;
        };
        let (conn, early) = (*conn, std::mem::take(early));
        client.public = Some(local);
        let port = local.port();
        let protocol = client.protocol;
        match protocol {
            Protocol::Multiplex => {
                self.actions.push_back(Action::Send {
                    conn,
                    data: format!("{port}\n").into_bytes(),
                });
                let bridge = MuxBridge::new(conn, Mode::Client, self.config.session(), now);
                client.kind = Kind::Multiplex(Box::new(bridge));
                self.conns.insert(conn, Role::MuxControl(key));
                if !early.is_empty() {
                    self.receive(conn, &early, now);
                }
                self.sync_mux_timer(key);
            }
            Protocol::Pool => {
                let id = self.rng.next();
                self.actions.push_back(Action::Send {
                    conn,
                    data: format!("{port}\n{id}\n").into_bytes(),
                });
                self.pools.insert(id.clone(), key);
                client.kind = Kind::Pool {
                    id,
                    idle: VecDeque::from([conn]),
                    waiting: VecDeque::new(),
                };
                self.conns
                    .insert(conn, Role::PoolIdle { client: key, early });
            }
            Protocol::Event => {
                self.actions.push_back(Action::Send {
                    conn,
                    data: format!("{port}\n").into_bytes(),
                });
                client.kind = Kind::Event {
                    control: conn,
                    waiting: BTreeSet::new(),
                    unflushed: 0,
                };
                self.conns.insert(conn, Role::EventControl(key));
            }
        }
        self.events.push_back(Event::ClientReady {
            client: key,
            protocol,
            public: local,
        });
    }

    fn client_listen_failed(&mut self, key: ClientKey) {
        match self.clients.get(&key) {
            Some(client) if client.ports_left > 0 => self.listen_public(key),
            Some(client) => {
                if let Kind::Opening { conn, .. } = client.kind {
                    self.reject(conn, "no port available");
                }
                self.end_client(key, "no port available");
            }
            None => {}
        }
    }

    /// `pool\n<id>\n` (PR-7).
    fn join_pool(&mut self, conn: ConnId, id: &[u8], early: Vec<u8>, now: Instant) {
        let Some(&key) = std::str::from_utf8(id)
            .ok()
            .and_then(|id| self.pools.get(id))
        else {
            return self.reject(conn, "unknown pool");
        };
        let max_pool = self.config.max_pool;
        let Some(Client {
            kind: Kind::Pool { idle, waiting, .. },
            ..
        }) = self.clients.get_mut(&key)
        else {
            return self.reject(conn, "unknown pool");
        };
        if idle.len() >= max_pool {
            return self.reject(conn, "pool full");
        }
        if early.len() > EARLY_LIMIT {
            return self.reject(conn, "pooled connection talked first");
        }
        self.timers.cancel(Timer::Handshake(conn));
        self.timers.cancel(Timer::Grace(key));
        if let Some(user) = waiting.pop_front() {
            self.conns.remove(&conn);
            self.splice(user, early, conn);
            if let Some(Client {
                kind: Kind::Pool { idle, .. },
                ..
            }) = self.clients.get(&key)
                && idle.is_empty()
            {
                self.timers
                    .set(Timer::Grace(key), now + self.config.pool_grace);
            }
        } else {
            idle.push_back(conn);
            self.conns
                .insert(conn, Role::PoolIdle { client: key, early });
        }
    }

    /// `event\n<id>\n` (PR-10).
    fn answer_event(&mut self, conn: ConnId, id: &[u8], early: Vec<u8>) {
        let Some((key, user)) = std::str::from_utf8(id)
            .ok()
            .and_then(|id| self.events_pending.remove(id))
        else {
            return self.reject(conn, "unknown event");
        };
        if let Some(Client {
            kind: Kind::Event { waiting, .. },
            ..
        }) = self.clients.get_mut(&key)
        {
            waiting.remove(&user);
        }
        self.conns.remove(&conn);
        self.splice(user, early, conn);
    }

    /// An idle pooled connection left (PR-8).
    fn drop_idle(&mut self, conn: ConnId, now: Instant) {
        let Some(Role::PoolIdle { client: key, .. }) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(Client {
            kind: Kind::Pool { idle, .. },
            ..
        }) = self.clients.get_mut(&key)
        {
            idle.retain(|&c| c != conn);
            if idle.is_empty() {
                self.timers
                    .set(Timer::Grace(key), now + self.config.pool_grace);
            }
        }
    }

    /// A waiting user left or timed out: forget it everywhere.
    fn drop_waiting(&mut self, conn: ConnId) {
        let Some(Role::Waiting { client, id, .. }) = self.conns.remove(&conn) else {
            return;
        };
        self.timers.cancel(Timer::Wait(conn));
        if let Some(id) = id {
            self.events_pending.remove(&id);
        }
        match self.clients.get_mut(&client).map(|c| &mut c.kind) {
            Some(Kind::Pool { waiting, .. }) => waiting.retain(|&c| c != conn),
            Some(Kind::Event { waiting, .. }) => {
                waiting.remove(&conn);
            }
            _ => {}
        }
    }

    /// Close a client's listener and everything waiting on it (PR-2, PR-5, PR-8, PR-11).
    fn end_client(&mut self, key: ClientKey, reason: &str) {
        let Some(client) = self.clients.remove(&key) else {
            return;
        };
        self.by_listener.remove(&client.listener);
        self.timers.cancel(Timer::Grace(key));
        self.timers.cancel(Timer::Mux(key));
        if client.public.is_some() || matches!(client.kind, Kind::Opening { .. }) {
            self.actions.push_back(Action::CloseListener {
                listener: client.listener,
            });
        }
        let mut close = Vec::new();
        match client.kind {
            Kind::Opening { conn, .. } => close.push(conn),
            Kind::Multiplex(mut bridge) => {
                bridge.control_closed(&mut self.actions);
            }
            Kind::Pool {
                id, idle, waiting, ..
            } => {
                self.pools.remove(&id);
                close.extend(idle);
                close.extend(waiting);
            }
            Kind::Event {
                control, waiting, ..
            } => {
                close.push(control);
                close.extend(waiting);
            }
        }
        for conn in close {
            if let Some(Role::Waiting { id: Some(id), .. }) = self.conns.get(&conn) {
                self.events_pending.remove(id);
            }
            self.timers.cancel(Timer::Wait(conn));
            if self.conns.remove(&conn).is_some() {
                self.actions.push_back(Action::Close { conn });
            }
        }
        self.conns.retain(|_, role| match role {
            Role::MuxControl(k) | Role::MuxUser(k) | Role::Opening(k) => *k != key,
            _ => true,
        });
        if client.public.is_some() {
            self.events.push_back(Event::ClientGone {
                client: key,
                protocol: client.protocol,
                reason: reason.to_owned(),
            });
        }
    }

    /// After anything touched a multiplex client: end it if its bridge ended,
    /// and keep its timer in step.
    fn after_mux(&mut self, key: ClientKey) {
        let (ended, closed) = match self.clients.get_mut(&key).map(|c| &mut c.kind) {
            Some(Kind::Multiplex(bridge)) => (bridge.ended().cloned(), bridge.take_closed()),
            _ => return,
        };
        for conn in closed {
            self.conns.remove(&conn);
        }
        match ended {
            Some(BridgeEnd::ControlClosed) => self.end_client(key, "control connection closed"),
            Some(BridgeEnd::GoAway(code)) => {
                self.end_client(key, &format!("the client sent GoAway ({code:?})"));
            }
            Some(BridgeEnd::Session(e)) => self.end_client(key, &e.to_string()),
            None => self.sync_mux_timer(key),
        }
    }

    fn sync_mux_timer(&mut self, key: ClientKey) {
        if let Some(Client {
            kind: Kind::Multiplex(bridge),
            ..
        }) = self.clients.get(&key)
        {
            match bridge.poll_timeout() {
                Some(at) => self.timers.set(Timer::Mux(key), at),
                None => self.timers.cancel(Timer::Mux(key)),
            }
        }
    }

    /// The peer's FIN, or the connection's end (`eof` false).
    fn gone(&mut self, conn: ConnId, eof: bool, now: Instant) {
        let Some(role) = self.conns.get(&conn) else {
            return;
        };
        match *role {
            Role::Handshake { .. } => {
                self.conns.remove(&conn);
                self.timers.cancel(Timer::Handshake(conn));
                self.actions.push_back(Action::Close { conn });
            }
            Role::Opening(key) | Role::MuxControl(key) | Role::EventControl(key) => {
                self.end_client(key, "control connection closed");
            }
            Role::MuxUser(key) => {
                if let Some(Client {
                    kind: Kind::Multiplex(bridge),
                    ..
                }) = self.clients.get_mut(&key)
                {
                    if eof {
                        bridge.conn_read_closed(conn, &mut self.actions);
                    } else {
                        self.conns.remove(&conn);
                        bridge.conn_closed(conn, &mut self.actions);
                    }
                }
                self.after_mux(key);
            }
            Role::PoolIdle { .. } => {
                self.drop_idle(conn, now);
                self.actions.push_back(Action::Close { conn });
            }
            // A waiting user's FIN is kept by the socket: once spliced, the
            // runtime reads it again and carries it through (PR-12).
            Role::Waiting { .. } if eof => {}
            Role::Waiting { .. } => self.drop_waiting(conn),
        }
    }

    fn flushed(&mut self, conn: ConnId, bytes: usize) {
        match self.conns.get(&conn) {
            Some(&Role::MuxControl(key)) | Some(&Role::MuxUser(key)) => {
                if let Some(Client {
                    kind: Kind::Multiplex(bridge),
                    ..
                }) = self.clients.get_mut(&key)
                {
                    if bridge.control() == conn {
                        bridge.control_flushed(bytes, &mut self.actions);
                    } else {
                        bridge.conn_flushed(conn, bytes, &mut self.actions);
                    }
                }
                self.after_mux(key);
            }
            Some(&Role::EventControl(key)) => {
                if let Some(Client {
                    kind: Kind::Event { unflushed, .. },
                    ..
                }) = self.clients.get_mut(&key)
                {
                    *unflushed = unflushed.saturating_sub(bytes);
                }
            }
            _ => {}
        }
    }

    fn shutdown(&mut self) {
        for listener in std::mem::take(&mut self.control_listeners) {
            self.actions.push_back(Action::CloseListener { listener });
        }
        let keys: Vec<ClientKey> = self.clients.keys().copied().collect();
        for key in keys {
            if let Some(Client {
                kind: Kind::Multiplex(bridge),
                ..
            }) = self.clients.get_mut(&key)
            {
                bridge.go_away(&mut self.actions);
            }
            self.end_client(key, "relay shutting down");
        }
        for (conn, _) in std::mem::take(&mut self.conns) {
            self.actions.push_back(Action::Close { conn });
        }
        self.timers = Timers::new();
    }
}

impl Machine for Server {
    type Command = Command;
    type Event = Event;
    const HALF_CLOSE: bool = true;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Listening { listener, local } => {
                if let Some(&key) = self.by_listener.get(&listener) {
                    self.client_listening(key, local, now);
                } else {
                    self.control_listeners.insert(listener);
                    self.control_ip.get_or_insert(local.ip());
                    self.events.push_back(Event::Listening { listener, local });
                }
            }
            Input::ListenFailed { listener, error } => {
                if let Some(&key) = self.by_listener.get(&listener) {
                    if self.clients.get(&key).is_some_and(|c| c.public.is_some()) {
                        self.end_client(key, &format!("public listener failed: {error}"));
                    } else {
                        self.client_listen_failed(key);
                    }
                } else {
                    self.control_listeners.remove(&listener);
                    self.events.push_back(Event::ListenFailed {
                        listener,
                        error: error.to_owned(),
                    });
                }
            }
            Input::Accepted { listener, conn, .. } => self.accept(listener, conn, now),
            Input::Received { conn, data } => self.receive(conn, data, now),
            Input::ReadClosed { conn } => self.gone(conn, true, now),
            Input::Closed { conn } => self.gone(conn, false, now),
            Input::Flushed { conn, bytes } => self.flushed(conn, bytes),
            // The relay opens no connection, socket or tunnel of its own.
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
            match timer {
                Timer::Handshake(conn) => self.reject(conn, "handshake timeout"),
                Timer::Wait(conn) => {
                    if self.conns.contains_key(&conn) {
                        self.drop_waiting(conn);
                        self.actions.push_back(Action::Close { conn });
                    }
                }
                Timer::Grace(key) => {
                    let empty = matches!(
                        self.clients.get(&key).map(|c| &c.kind),
                        Some(Kind::Pool { idle, .. }) if idle.is_empty()
                    );
                    if empty {
                        self.end_client(key, "pool empty past its grace time");
                    }
                }
                Timer::Mux(key) => {
                    if let Some(Client {
                        kind: Kind::Multiplex(bridge),
                        ..
                    }) = self.clients.get_mut(&key)
                    {
                        bridge.handle_timeout(now, &mut self.actions);
                    }
                    self.after_mux(key);
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
