//! The forwarder (PR-14): a relay client that exposes a local TCP server.
//!
//! It connects to the relay, asks for a public port in the chosen protocol,
//! reports it ([`Event::PublicPort`]) and connects every user the relay hands
//! over to the local server:
//!
//! - multiplex: each stream the relay opens becomes a connection to the local
//!   server, bridged by the crate-private `MuxBridge` (the forwarder is the yamux server);
//! - pool: it keeps `pool_size` idle connections joined to its pool; the first
//!   bytes on one mean a user took it, so it connects to the local server,
//!   splices the two and joins a fresh connection to replace it. (A pooled
//!   connection cannot tell a user who says nothing first: pool suits
//!   protocols where the client speaks first, like redis or HTTP.)
//! - event: for each `<id>\n` on the control connection it opens a connection
//!   to the local server and one to the relay that answers `event\n<id>\n`, and
//!   splices the two once both are up.
//!
//! When the relay goes away or refuses, the forwarder starts over after a
//! backoff (doubling from `reconnect_min` to `reconnect_max`) and reports the
//! new public port; users already connected keep their connections.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::bridge::{BridgeEnd, MuxBridge};
use super::server::MAX_WINDOW;
use super::{Line, Protocol, take_line};
use crate::codec::yamux::INITIAL_WINDOW;
use crate::codec::yamux::session::{self, Mode};
use crate::io::{Action, ConnId, IdAllocator, Input, Machine};
use crate::timer::Timers;

/// What a user may send before its local connection is up, before it is paused.
const EARLY_LIMIT: usize = 64 << 10;

/// Event answers being connected at once (the relay's default `max_waiting`).
const MAX_EVENT_PAIRS: usize = 128;

/// Forwarder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The relay's control address.
    pub relay: SocketAddr,
    /// The local server to expose.
    pub local: SocketAddr,
    /// How users are delivered.
    pub protocol: Protocol,
    /// Idle connections kept in the pool (pool only).
    pub pool_size: usize,
    /// The relay must answer the handshake within this.
    pub handshake_timeout: Duration,
    /// First delay before reconnecting; it doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest delay before reconnecting.
    pub reconnect_max: Duration,
    /// Keep-alive interval of the multiplex session; zero turns pings off.
    pub keepalive: Duration,
    /// The receive window each stream announces (multiplex), in bytes; see
    /// [`server::DEFAULT_WINDOW`](super::server::DEFAULT_WINDOW).
    pub window: u32,
}

impl Config {
    /// Defaults for everything but the addresses and the protocol.
    pub fn new(relay: SocketAddr, local: SocketAddr, protocol: Protocol) -> Config {
        Config {
            relay,
            local,
            protocol,
            pool_size: 8,
            handshake_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            keepalive: Duration::from_secs(30),
            window: super::server::DEFAULT_WINDOW,
        }
    }
}

/// What the application asks of the forwarder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Connect to the relay (the first time; later reconnects are automatic).
    Start,
    /// Close everything and stay stopped.
    Stop,
}

/// What the forwarder tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The relay lent this public port; users connecting to it reach the local server.
    PublicPort {
        /// The port on the relay's host.
        port: u16,
    },
    /// The relay connection was lost or refused; reconnecting after `retry_in`.
    Lost {
        /// Why.
        reason: String,
        /// The backoff.
        retry_in: Duration,
    },
    /// The relay announced more users than can be connected at once (128):
    /// this one was not answered (the relay closes it when its id expires).
    EventDropped,
    /// A user's connection to the local server failed; that user was closed.
    LocalFailed {
        /// The connect error.
        error: String,
    },
}

#[derive(Debug)]
enum Phase {
    Stopped,
    /// Waiting for the reconnect timer.
    Backoff,
    /// Control connection connecting, or waiting for the relay's answer.
    Handshake {
        control: ConnId,
        buf: Vec<u8>,
    },
    Multiplex(Box<MuxBridge>),
    Pool {
        id: String,
    },
    Event {
        control: ConnId,
        buf: Vec<u8>,
    },
}

#[derive(Debug)]
enum Role {
    Control,
    MuxLocal,
    PoolJoining,
    PoolIdle,
    /// A user took this pooled connection; its local connection is on the way.
    PoolUsed {
        local: ConnId,
        early: Vec<u8>,
    },
    PoolLocal {
        relay: ConnId,
    },
    /// `early`: what the user sent before the local connection was up.
    EventRelay {
        local: ConnId,
        up: bool,
        id: String,
        early: Vec<u8>,
        paused: bool,
    },
    /// `early`: what a local server that speaks first said before the relay
    /// connection was up.
    EventLocal {
        relay: ConnId,
        up: bool,
        early: Vec<u8>,
        paused: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Reconnect,
    Handshake,
    Mux,
}

/// The forwarder machine.
#[derive(Debug)]
pub struct Forwarder {
    config: Config,
    ids: IdAllocator,
    phase: Phase,
    conns: BTreeMap<ConnId, Role>,
    backoff: Duration,
    timers: Timers<Timer>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Forwarder {
    /// A stopped forwarder; send [`Command::Start`].
    pub fn new(config: Config) -> Forwarder {
        let backoff = config.reconnect_min;
        Forwarder {
            config,
            ids: IdAllocator::default(),
            phase: Phase::Stopped,
            conns: BTreeMap::new(),
            backoff,
            timers: Timers::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn connect(&mut self, addr: SocketAddr, role: Role) -> ConnId {
        let conn = ConnId(self.ids.next_raw());
        self.actions.push_back(Action::Connect { conn, addr });
        self.conns.insert(conn, role);
        conn
    }

    fn start(&mut self, now: Instant) {
        let control = self.connect(self.config.relay, Role::Control);
        self.phase = Phase::Handshake {
            control,
            buf: Vec::new(),
        };
        self.timers
            .set(Timer::Handshake, now + self.config.handshake_timeout);
    }

    /// The relay connection is gone: close what belongs to this attempt and
    /// retry after the backoff. Spliced users are the runtime's and live on.
    fn lose(&mut self, reason: String, now: Instant) {
        match std::mem::replace(&mut self.phase, Phase::Backoff) {
            Phase::Stopped => {
                self.phase = Phase::Stopped;
                return;
            }
            Phase::Backoff => return,
            Phase::Handshake { control, .. } | Phase::Event { control, .. } => {
                self.close(control);
            }
            Phase::Multiplex(mut bridge) => {
                bridge.control_closed(&mut self.actions);
                self.conns
                    .retain(|_, role| !matches!(role, Role::Control | Role::MuxLocal));
            }
            Phase::Pool { .. } => {
                let idle: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(_, r)| matches!(r, Role::PoolIdle | Role::PoolJoining))
                    .map(|(&c, _)| c)
                    .collect();
                for conn in idle {
                    self.close(conn);
                }
            }
        }
        self.timers.cancel(Timer::Handshake);
        self.timers.cancel(Timer::Mux);
        let retry_in = self.backoff;
        self.backoff = (self.backoff * 2).min(self.config.reconnect_max);
        self.timers.set(Timer::Reconnect, now + retry_in);
        self.events.push_back(Event::Lost { reason, retry_in });
    }

    fn close(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.actions.push_back(Action::Close { conn });
        }
    }

    fn connected(&mut self, conn: ConnId, now: Instant) {
        match self.conns.get_mut(&conn) {
            Some(Role::Control) => {
                if let Phase::Handshake { control, .. } = self.phase
                    && control == conn
                {
                    let hello = match self.config.protocol {
                        Protocol::Multiplex => "multiplex\n",
                        Protocol::Pool => "pool\nnew\n",
                        Protocol::Event => "event\nnew\n",
                    };
                    self.actions.push_back(Action::Send {
                        conn,
                        data: hello.as_bytes().to_vec(),
                    });
                }
            }
            Some(Role::PoolJoining) => {
                if let Phase::Pool { id } = &self.phase {
                    let data = format!("pool\n{id}\n").into_bytes();
                    self.actions.push_back(Action::Send { conn, data });
                    self.conns.insert(conn, Role::PoolIdle);
                } else {
                    self.close(conn);
                }
            }
            Some(Role::PoolLocal { relay }) => {
                let relay = *relay;
                self.conns.remove(&conn);
                if let Some(Role::PoolUsed { early, .. }) = self.conns.remove(&relay) {
                    if !early.is_empty() {
                        self.actions.push_back(Action::Send { conn, data: early });
                    }
                    self.actions.push_back(Action::ResumeRead { conn: relay });
                    self.actions.push_back(Action::Pipe { a: relay, b: conn });
                } else {
                    self.actions.push_back(Action::Close { conn });
                }
            }
            Some(Role::EventRelay { local, up, id, .. }) => {
                *up = true;
                let local = *local;
                let data = format!("event\n{id}\n").into_bytes();
                self.actions.push_back(Action::Send { conn, data });
                self.event_pair_ready(conn, local);
            }
            Some(Role::EventLocal { relay, up, .. }) => {
                *up = true;
                let relay = *relay;
                self.event_pair_ready(relay, conn);
            }
            Some(Role::MuxLocal) => {
                if let Phase::Multiplex(bridge) = &mut self.phase {
                    bridge.conn_connected(conn, &mut self.actions);
                }
                self.after_mux(now);
            }
            Some(Role::PoolIdle | Role::PoolUsed { .. }) | None => {}
        }
    }

    fn event_pair_ready(&mut self, relay: ConnId, local: ConnId) {
        let relay_up = matches!(
            self.conns.get(&relay),
            Some(Role::EventRelay { up: true, .. })
        );
        let local_up = matches!(
            self.conns.get(&local),
            Some(Role::EventLocal { up: true, .. })
        );
        if relay_up && local_up {
            // Each side's early bytes go to the other before the splice (the
            // relay side's handshake line was sent when it connected).
            for (from, to) in [(relay, local), (local, relay)] {
                if let Some(
                    Role::EventRelay { early, paused, .. } | Role::EventLocal { early, paused, .. },
                ) = self.conns.remove(&from)
                {
                    if !early.is_empty() {
                        self.actions.push_back(Action::Send {
                            conn: to,
                            data: early,
                        });
                    }
                    if paused {
                        self.actions.push_back(Action::ResumeRead { conn: from });
                    }
                }
            }
            self.actions.push_back(Action::Pipe { a: relay, b: local });
        }
    }

    fn connect_failed(&mut self, conn: ConnId, error: &str, now: Instant) {
        let Some(role) = self.conns.remove(&conn) else {
            return;
        };
        match role {
            Role::Control => self.lose(format!("cannot reach the relay: {error}"), now),
            Role::PoolJoining => self.lose(format!("cannot reach the relay: {error}"), now),
            Role::PoolLocal { relay } => {
                self.close(relay);
                self.events.push_back(Event::LocalFailed {
                    error: error.to_owned(),
                });
            }
            Role::EventRelay { local, .. } => self.close(local),
            Role::EventLocal { relay, .. } => {
                self.close(relay);
                self.events.push_back(Event::LocalFailed {
                    error: error.to_owned(),
                });
            }
            Role::MuxLocal => {
                if let Phase::Multiplex(bridge) = &mut self.phase {
                    bridge.conn_closed(conn, &mut self.actions);
                }
                self.events.push_back(Event::LocalFailed {
                    error: error.to_owned(),
                });
                self.after_mux(now);
            }
            Role::PoolIdle | Role::PoolUsed { .. } => {}
        }
    }

    fn receive(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        match self.conns.get_mut(&conn) {
            Some(Role::Control) => self.control_received(conn, data, now),
            Some(Role::MuxLocal) => {
                if let Phase::Multiplex(bridge) = &mut self.phase {
                    bridge.conn_received(conn, data, &mut self.actions);
                }
                self.after_mux(now);
            }
            Some(Role::PoolIdle) => self.pool_taken(conn, data, now),
            Some(Role::PoolUsed { early, .. }) => early.extend_from_slice(data),
            // The relay splices the user as soon as it reads our answer, so
            // the user's bytes may come before the local connection is up; a
            // local server may speak first, before the relay connection is up.
            Some(
                Role::EventRelay { early, paused, .. } | Role::EventLocal { early, paused, .. },
            ) => {
                early.extend_from_slice(data);
                if early.len() > EARLY_LIMIT && !*paused {
                    *paused = true;
                    self.actions.push_back(Action::PauseRead { conn });
                }
            }
            _ => {}
        }
    }

    /// The first bytes on an idle pooled connection: a user took it.
    fn pool_taken(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        // The relay's own refusals arrive as the first bytes of a joining
        // connection, just like a user's would; these exact lines are taken as
        // the relay's (a user would have to open with them word for word).
        if data == b"error: unknown pool\n" {
            return self.lose("the relay forgot our pool".to_owned(), now);
        }
        if data == b"error: pool full\n" {
            self.close(conn);
            return;
        }
        let local = self.connect(self.config.local, Role::PoolLocal { relay: conn });
        self.conns.insert(
            conn,
            Role::PoolUsed {
                local,
                early: data.to_vec(),
            },
        );
        self.actions.push_back(Action::PauseRead { conn });
        self.replenish();
    }

    /// Join connections until the pool has `pool_size` idle or joining ones.
    fn replenish(&mut self) {
        if !matches!(self.phase, Phase::Pool { .. }) {
            return;
        }
        let have = self
            .conns
            .values()
            .filter(|r| matches!(r, Role::PoolIdle | Role::PoolJoining))
            .count();
        for _ in have..self.config.pool_size.max(1) {
            self.connect(self.config.relay, Role::PoolJoining);
        }
    }

    fn control_received(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        match &mut self.phase {
            Phase::Handshake { control, buf } if *control == conn => {
                buf.extend_from_slice(data);
                self.handshake_reply(conn, now);
            }
            Phase::Multiplex(bridge) => {
                let ids = &mut self.ids;
                let local = self.config.local;
                let conns = &mut self.conns;
                bridge.control_received(data, now, &mut self.actions, &mut |_| {
                    let conn = ConnId(ids.next_raw());
                    conns.insert(conn, Role::MuxLocal);
                    Some((conn, local))
                });
                self.after_mux(now);
            }
            Phase::Event { control, buf } if *control == conn => {
                buf.extend_from_slice(data);
                self.event_lines(now);
            }
            _ => {}
        }
    }

    /// The relay's answer: `<port>\n`, and for a pool `<id>\n` (PR-3, PR-6, PR-9).
    fn handshake_reply(&mut self, conn: ConnId, now: Instant) {
        let Phase::Handshake { buf, .. } = &mut self.phase else {
            return;
        };
        let mut lines = Vec::new();
        let mut used = 0;
        let wanted = if self.config.protocol == Protocol::Pool {
            2
        } else {
            1
        };
        while lines.len() < wanted {
            match take_line(&buf[used..]) {
                Line::Done(line, n) => {
                    lines.push(String::from_utf8_lossy(line).into_owned());
                    used += n;
                }
                Line::Incomplete if lines.first().is_some_and(|l| l.starts_with("error:")) => {
                    break;
                }
                Line::Incomplete => return,
                Line::TooLong => return self.lose("relay sent a line too long".into(), now),
            }
        }
        let rest = buf.split_off(used);
        let first = lines.first().cloned().unwrap_or_default();
        if let Some(reason) = first.strip_prefix("error:") {
            return self.lose(format!("relay refused: {}", reason.trim()), now);
        }
        let Ok(port) = first.parse::<u16>() else {
            return self.lose(format!("relay sent {first:?}, not a port"), now);
        };
        self.timers.cancel(Timer::Handshake);
        self.backoff = self.config.reconnect_min;
        self.events.push_back(Event::PublicPort { port });
        match self.config.protocol {
            Protocol::Multiplex => {
                let session = session::Config {
                    keepalive_interval: (!self.config.keepalive.is_zero())
                        .then_some(self.config.keepalive),
                    keepalive_timeout: self.config.keepalive.max(Duration::from_secs(1)),
                    receive_window: self.config.window.clamp(INITIAL_WINDOW, MAX_WINDOW),
                    ..session::Config::default()
                };
                let bridge = MuxBridge::new(conn, Mode::Server, session, now);
                self.phase = Phase::Multiplex(Box::new(bridge));
                if rest.is_empty() {
                    self.after_mux(now);
                } else {
                    self.control_received(conn, &rest, now);
                }
            }
            Protocol::Pool => {
                let id = lines.get(1).cloned().unwrap_or_default();
                self.phase = Phase::Pool { id };
                self.conns.insert(conn, Role::PoolIdle);
                if !rest.is_empty() {
                    self.pool_taken(conn, &rest, now);
                }
                self.replenish();
            }
            Protocol::Event => {
                self.phase = Phase::Event {
                    control: conn,
                    buf: rest,
                };
                self.event_lines(now);
            }
        }
    }

    /// `<id>\n` lines on the event control connection (PR-10).
    fn event_lines(&mut self, now: Instant) {
        loop {
            let Phase::Event { buf, .. } = &mut self.phase else {
                return;
            };
            let id = match take_line(buf) {
                Line::Incomplete => return,
                Line::TooLong => return self.lose("relay sent a line too long".into(), now),
                Line::Done(line, used) => {
                    let id = String::from_utf8_lossy(line).into_owned();
                    buf.drain(..used);
                    id
                }
            };
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                continue;
            }
            // A relay announcing users faster than they can be connected (or
            // a hostile one) gets at most MAX_EVENT_PAIRS at once; the rest
            // expire at the relay and their users are closed there.
            let pairs = self
                .conns
                .values()
                .filter(|r| matches!(r, Role::EventRelay { .. }))
                .count();
            if pairs >= MAX_EVENT_PAIRS {
                self.events.push_back(Event::EventDropped);
                continue;
            }
            let relay = ConnId(self.ids.next_raw());
            let local = ConnId(self.ids.next_raw());
            self.actions.push_back(Action::Connect {
                conn: relay,
                addr: self.config.relay,
            });
            self.actions.push_back(Action::Connect {
                conn: local,
                addr: self.config.local,
            });
            self.conns.insert(
                relay,
                Role::EventRelay {
                    local,
                    up: false,
                    id,
                    early: Vec::new(),
                    paused: false,
                },
            );
            self.conns.insert(
                local,
                Role::EventLocal {
                    relay,
                    up: false,
                    early: Vec::new(),
                    paused: false,
                },
            );
        }
    }

    fn gone(&mut self, conn: ConnId, eof: bool, now: Instant) {
        match self.conns.get(&conn) {
            Some(Role::Control) => {
                if let Phase::Multiplex(bridge) = &mut self.phase
                    && bridge.control() == conn
                {
                    bridge.control_closed(&mut self.actions);
                    self.conns.remove(&conn);
                    return self.after_mux(now);
                }
                self.conns.remove(&conn);
                self.actions.push_back(Action::Close { conn });
                self.lose("the relay closed the control connection".into(), now);
            }
            Some(Role::MuxLocal) => {
                if let Phase::Multiplex(bridge) = &mut self.phase {
                    if eof {
                        bridge.conn_read_closed(conn, &mut self.actions);
                    } else {
                        self.conns.remove(&conn);
                        bridge.conn_closed(conn, &mut self.actions);
                    }
                }
                self.after_mux(now);
            }
            Some(Role::PoolIdle | Role::PoolJoining) => {
                self.close(conn);
                self.replenish();
            }
            // The user's FIN stays in the socket; the splice reads it again.
            Some(Role::PoolUsed { .. }) if eof => {}
            Some(Role::PoolUsed { local, .. }) => {
                let local = *local;
                self.conns.remove(&conn);
                self.close(local);
            }
            Some(Role::PoolLocal { relay }) => {
                let relay = *relay;
                self.close(conn);
                self.close(relay);
            }
            // As for a pooled connection: the splice reads the FIN again.
            Some(Role::EventRelay { up: true, .. } | Role::EventLocal { up: true, .. }) if eof => {}
            Some(Role::EventRelay { local: other, .. })
            | Some(Role::EventLocal { relay: other, .. }) => {
                let other = *other;
                self.close(conn);
                self.close(other);
            }
            None => {}
        }
    }

    fn flushed(&mut self, conn: ConnId, bytes: usize, now: Instant) {
        if let Phase::Multiplex(bridge) = &mut self.phase {
            if bridge.control() == conn {
                bridge.control_flushed(bytes, &mut self.actions);
            } else if bridge.owns(conn) {
                bridge.conn_flushed(conn, bytes, &mut self.actions);
            } else {
                return;
            }
            self.after_mux(now);
        }
    }

    fn after_mux(&mut self, now: Instant) {
        let Phase::Multiplex(bridge) = &mut self.phase else {
            return;
        };
        for conn in bridge.take_closed() {
            self.conns.remove(&conn);
        }
        match bridge.ended().cloned() {
            Some(end) => {
                let reason = match end {
                    BridgeEnd::ControlClosed => "the relay closed the session".to_owned(),
                    BridgeEnd::GoAway(code) => format!("the relay sent GoAway ({code:?})"),
                    BridgeEnd::Session(e) => e.to_string(),
                };
                self.lose(reason, now);
            }
            None => match bridge.poll_timeout() {
                Some(at) => self.timers.set(Timer::Mux, at),
                None => self.timers.cancel(Timer::Mux),
            },
        }
    }

    fn stop(&mut self) {
        if let Phase::Multiplex(bridge) = &mut self.phase {
            // The bridge closes the session and every local conn itself.
            bridge.go_away(&mut self.actions);
            self.conns
                .retain(|_, role| !matches!(role, Role::Control | Role::MuxLocal));
        }
        self.phase = Phase::Stopped;
        for (conn, _) in std::mem::take(&mut self.conns) {
            self.actions.push_back(Action::Close { conn });
        }
        self.timers = Timers::new();
    }
}

impl Machine for Forwarder {
    type Command = Command;
    type Event = Event;
    const HALF_CLOSE: bool = true;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Connected { conn, .. } => self.connected(conn, now),
            Input::ConnectFailed { conn, error } => self.connect_failed(conn, error, now),
            Input::Received { conn, data } => self.receive(conn, data, now),
            Input::ReadClosed { conn } => self.gone(conn, true, now),
            Input::Closed { conn } => self.gone(conn, false, now),
            Input::Flushed { conn, bytes } => self.flushed(conn, bytes, now),
            // The forwarder listens on nothing and has no UDP or tunnel.
            Input::Listening { .. }
            | Input::ListenFailed { .. }
            | Input::Accepted { .. }
            | Input::UdpBound { .. }
            | Input::UdpBindFailed { .. }
            | Input::Datagram { .. }
            | Input::TunPacket(_) => {}
        }
    }

    fn handle_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Start => {
                if matches!(self.phase, Phase::Stopped) {
                    self.start(now);
                }
            }
            Command::Stop => self.stop(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_expired(now) {
            match timer {
                Timer::Reconnect => {
                    if matches!(self.phase, Phase::Backoff) {
                        self.start(now);
                    }
                }
                Timer::Handshake => {
                    if matches!(self.phase, Phase::Handshake { .. }) {
                        self.lose("the relay did not answer the handshake".into(), now);
                    }
                }
                Timer::Mux => {
                    if let Phase::Multiplex(bridge) = &mut self.phase {
                        bridge.handle_timeout(now, &mut self.actions);
                    }
                    self.after_mux(now);
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
