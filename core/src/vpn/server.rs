//! The VPN server machine (spec/vpn.md, "Server", VPN-V1..VPN-V14).
//!
//! One [`Server`] listens on [`Config::listen`] (it asks for the listener from
//! its constructor) and serves every client node of one virtual network. A
//! connection is first a **handshake** (an HTTP/1.1 upgrade on any path, its
//! head capped by [`HeadLimits::default`]), then a **client**: a
//! [`MessageReader`] (server role, capped at [`Config::max_message`]), the VMAC
//! and the address EXPTTUN promised it, if any, and once AUTH succeeded the
//! virtual address it owns.
//!
//! # Before AUTH (VPN-V3..VPN-V6)
//!
//! VMAC and EXPTTUN may come first, each proven with the password and a
//! timestamp within ±30 s of [`Config::wall`]; EXPTTUN picks an address
//! (requested, else the VMAC's last, else the lowest free) and is answered
//! with the grant, proven with [`server_expttun_hash`]. Only an EXPTTUN the
//! server-wide EXPTTUN [`ReplayGuard`] has not seen reserves its pick, so a
//! replayed one holds nothing; a reservation made under a VMAC never blocks
//! another connection presenting the same (non-zero) VMAC. AUTH (hash, then
//! the server-wide [`AuthReplayGuard`], then the address) makes the connection
//! the owner of its address and is echoed with [`server_auth_hash`], which no
//! client AUTH equals. Anything else before AUTH, or no AUTH within
//! [`Config::auth_timeout`] of the upgrade, closes with 1008.
//!
//! # Relaying (VPN-V7..VPN-V9)
//!
//! FORWARD goes to the owner of the packet's destination; UDP4CONN, DISCOVERY
//! and GENERAL/LOCALUDP4CONN to the owner of their `dst`, their `src` checked
//! against the sender's address. Each is queued unchanged as one binary frame.
//! The sender is never paused and no receiver is closed for being slow: a
//! message that would take a receiver's unflushed bytes above
//! [`Config::max_queued_bytes`] is dropped and counted (IP is lossy).
//!
//! # Timers (VPN-V2, VPN-V6, VPN-V11)
//!
//! One deadline per connection: the handshake deadline, then the earlier of the
//! AUTH deadline and the idle deadline, then the idle deadline. Reads only
//! record `last_rx`; a deadline that fires early is moved.
//!
//! # Closing (VPN-V10, VPN-V12, VPN-V13)
//!
//! A server-initiated close queues a close frame then `Close`; a client's close
//! frame is echoed, then `Close`. Either way, and on [`Input::Closed`], the
//! connection's address and reservation are free at once ([`Event::Left`]).

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::codec::http1::{self, HeadLimits, RequestHead, Response};
use crate::codec::websocket::{
    CloseFrame, Message, MessageReader, OpCode, Read, Role, encode_close, encode_frame,
};
use crate::io::{Action, ConnId, IdAllocator, Input, ListenerId, Machine};
use crate::timer::{MAX_TIMEOUT, Timers};
use crate::vpn::crypto::{
    AuthReject, AuthReplayGuard, ReplayGuard, auth_hash_matches, expttun_hash, hash_eq,
    server_auth_hash, server_expttun_hash, vmac_hash,
};
use crate::vpn::parse_cidr;
use crate::vpn::wire::{CidrText, ServerMessage, SysRouteTable};

mod addresses;
mod config;
mod upgrade;

use addresses::Addresses;
pub use addresses::VMAC_MEMORY;
pub use config::{Config, ConfigError};
use upgrade::{decide, refusal};

/// The most a VMAC or EXPTTUN timestamp may differ from the server's clock, in
/// seconds (VPN-V3, VPN-V4); AUTH uses the same bound through its guard.
pub const MAX_SKEW_SECS: i64 = 30;

/// Sends to one connection are merged while they stay under this size.
const COALESCE_LIMIT: usize = 64 << 10;

/// Orders from the embedding application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Close every client with 1001 and the listener (VPN-V13).
    Shutdown,
}

/// What the server reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The listener is bound.
    Listening {
        /// Its address (port 0 resolved).
        addr: SocketAddr,
    },
    /// The listener could not be bound, or failed.
    ListenFailed {
        /// The OS error.
        error: String,
    },
    /// An upgrade or a password proof was refused (VPN-V1..VPN-V5).
    Rejected {
        /// The connection.
        conn: ConnId,
        /// Its remote address.
        peer: SocketAddr,
        /// Why, as sent to it.
        reason: String,
    },
    /// A client authenticated and owns `ip` (VPN-V5).
    Joined {
        /// The connection.
        conn: ConnId,
        /// Its virtual address.
        ip: Ipv4Addr,
        /// Its remote address.
        peer: SocketAddr,
    },
    /// An authenticated client is gone; `ip` is free again (VPN-V12).
    Left {
        /// The connection.
        conn: ConnId,
        /// The virtual address it held.
        ip: Ipv4Addr,
        /// Why.
        reason: String,
    },
}

/// Counters since the server was made (`clients` is a gauge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Authenticated clients now.
    pub clients: u64,
    /// FORWARD messages relayed (VPN-V7).
    pub forwarded_packets: u64,
    /// Bytes of the IPv4 packets relayed (VPN-V7).
    pub forwarded_bytes: u64,
    /// UDP4CONN, DISCOVERY and LOCALUDP4CONN messages relayed (VPN-V9).
    pub relayed: u64,
    /// Messages for an address nobody (else) owns (VPN-V7, VPN-V9).
    pub unroutable: u64,
    /// Messages with a source the sender may not use (VPN-V7, VPN-V9).
    pub spoofed: u64,
    /// Messages dropped because the receiver's queue was full (VPN-V8).
    pub dropped_queue_full: u64,
    /// VMAC, EXPTTUN and AUTH refused, and AUTH timeouts (VPN-V3..VPN-V6).
    pub rejected_auth: u64,
    /// Upgrades refused or not completed in time (VPN-V1, VPN-V2).
    pub rejected_upgrades: u64,
    /// Messages of an unknown kind or subtype, ignored (VPN-V10).
    pub unknown_messages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The one deadline of a connection (see the module docs).
    Conn(ConnId),
}

struct Client {
    reader: MessageReader,
    /// When the upgrade was answered: the AUTH deadline counts from here.
    upgraded: Instant,
    vmac: Option<[u8; 16]>,
    /// The address EXPTTUN promised, until AUTH or close.
    pending: Option<Ipv4Addr>,
    /// The address owned since AUTH.
    ip: Option<Ipv4Addr>,
}

enum State {
    /// The request head so far (at most `max_head_bytes + 1` bytes).
    Handshake(Vec<u8>),
    Open(Box<Client>),
}

struct Conn {
    state: State,
    peer: SocketAddr,
    accepted: Instant,
    last_rx: Instant,
    /// Bytes sent to this connection and not yet reported flushed.
    queued: usize,
}

/// The first instant *more than* `timeout` after `from` (a deadline fires at `<= now`).
fn after(from: Instant, timeout: Duration) -> Instant {
    from + timeout + Duration::from_nanos(1)
}

/// One unmasked binary frame holding `payload`.
fn binary(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(OpCode::Binary, true, None, payload, &mut out);
    out
}

fn encoded(message: &ServerMessage<'_>) -> Vec<u8> {
    let mut payload = Vec::with_capacity(message.encoded_len());
    message.encode(&mut payload);
    binary(&payload)
}

/// The VPN server machine. See the module docs for its rules.
pub struct Server {
    config: Config,
    routes: SysRouteTable,
    listener: Option<ListenerId>,
    conns: BTreeMap<ConnId, Conn>,
    addresses: Addresses,
    guard: AuthReplayGuard,
    /// EXPTTUN requests seen, by hash: only a fresh, unseen one reserves (VPN-V4).
    expttun_guard: ReplayGuard<[u8; 32]>,
    timers: Timers<Timer>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Server {
    /// A server for `config`; its first action is the `Listen` on
    /// [`Config::listen`]. Timeouts are clamped to [`MAX_TIMEOUT`]; `max_clients`
    /// is at least 1. Fails if the routes do not fit one ROUTE message.
    pub fn new(mut config: Config) -> Result<Server, ConfigError> {
        let routes = SysRouteTable::new(config.routes.clone()).map_err(ConfigError::Routes)?;
        config.handshake_timeout = config.handshake_timeout.min(MAX_TIMEOUT);
        config.auth_timeout = config.auth_timeout.min(MAX_TIMEOUT);
        config.idle_timeout = config.idle_timeout.min(MAX_TIMEOUT);
        config.max_clients = config.max_clients.max(1);
        let mut ids = IdAllocator::default();
        let listener = ListenerId(ids.next_raw());
        let mut actions = VecDeque::new();
        actions.push_back(Action::Listen {
            listener,
            addr: config.listen,
        });
        Ok(Server {
            addresses: Addresses::new(config.network),
            config,
            routes,
            listener: Some(listener),
            conns: BTreeMap::new(),
            guard: AuthReplayGuard::default(),
            expttun_guard: ReplayGuard::default(),
            timers: Timers::new(),
            actions,
            events: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The connection owning `ip`, if an authenticated one does.
    pub fn owner(&self, ip: Ipv4Addr) -> Option<ConnId> {
        self.addresses.owner(ip)
    }

    fn accept(&mut self, id: ConnId, peer: SocketAddr, now: Instant) {
        if self.conns.contains_key(&id) {
            return;
        }
        self.conns.insert(
            id,
            Conn {
                state: State::Handshake(Vec::new()),
                peer,
                accepted: now,
                last_rx: now,
                queued: 0,
            },
        );
        if self.conns.len() > self.config.max_clients {
            // VPN-V1: bounded memory, handshakes count like clients.
            self.refuse(id, 503, "too many clients");
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
            self.read_messages(id, data, now);
            return;
        };
        match http1::buffer_request_head(head, data, &HeadLimits::default()) {
            Ok(None) => {}
            Ok(Some((value, rest))) => self.upgrade(id, &value, &data[rest..], now),
            Err(e) => {
                let (status, _) = e.status();
                self.refuse(id, status, &e.to_string());
            }
        }
    }

    /// VPN-V1: any path; a valid RFC 6455 upgrade gets 101.
    fn upgrade(&mut self, id: ConnId, head: &RequestHead, rest: &[u8], now: Instant) {
        let accept = match decide(head) {
            Ok(accept) => accept,
            Err((status, reason)) => return self.refuse(id, status, &reason),
        };
        let mut answer = Vec::new();
        Response::switching_protocols(&accept, None).encode(&mut answer);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.queued += answer.len();
        conn.state = State::Open(Box::new(Client {
            reader: MessageReader::new(Role::Server, self.config.max_message),
            upgraded: now,
            vmac: None,
            pending: None,
            ip: None,
        }));
        self.actions.push_back(Action::Send {
            conn: id,
            data: answer,
        });
        self.arm(id, now);
        if !rest.is_empty() {
            self.read_messages(id, rest, now);
        }
    }

    /// Answer a handshake with an HTTP error and close it.
    fn refuse(&mut self, id: ConnId, status: u16, reason: &str) {
        self.actions.push_back(Action::Send {
            conn: id,
            data: refusal(status, reason),
        });
        self.actions.push_back(Action::Close { conn: id });
        self.stats.rejected_upgrades += 1;
        self.reject_event(id, format!("{status} {reason}"));
        self.forget(id, String::new());
    }

    fn reject_event(&mut self, id: ConnId, reason: String) {
        if let Some(conn) = self.conns.get(&id) {
            self.events.push_back(Event::Rejected {
                conn: id,
                peer: conn.peer,
                reason,
            });
        }
    }

    fn read_messages(&mut self, id: ConnId, mut input: &[u8], now: Instant) {
        loop {
            let Some(Conn {
                state: State::Open(client),
                ..
            }) = self.conns.get_mut(&id)
            else {
                return;
            };
            match client.reader.read(input) {
                Ok(Read { consumed, message }) => {
                    input = &input[consumed.min(input.len())..];
                    let Some(message) = message else {
                        return;
                    };
                    self.on_message(id, message, now);
                }
                Err(e) => {
                    self.close_client(id, e.close_code(), &e.to_string());
                    return;
                }
            }
        }
    }

    /// VPN-V10: the WebSocket level.
    fn on_message(&mut self, id: ConnId, message: Message, now: Instant) {
        match message {
            Message::Binary(bytes) => match ServerMessage::parse(&bytes) {
                Ok(parsed) => self.on_server_message(id, parsed, &bytes, now),
                Err(e) if e.is_unknown() => self.stats.unknown_messages += 1,
                Err(e) => self.close_client(id, 1002, &e.to_string()),
            },
            Message::Text(_) => self.close_client(id, 1003, "text messages are not accepted"),
            Message::Ping(payload) => {
                let mut pong = Vec::new();
                encode_frame(OpCode::Pong, true, None, &payload, &mut pong);
                self.reply(id, pong);
            }
            Message::Pong(_) => {}
            Message::Close(close) => self.client_closed(id, close),
        }
    }

    fn on_server_message(
        &mut self,
        id: ConnId,
        message: ServerMessage<'_>,
        bytes: &[u8],
        now: Instant,
    ) {
        let Some(Conn {
            state: State::Open(client),
            ..
        }) = self.conns.get(&id)
        else {
            return;
        };
        match (client.ip, message) {
            (
                None,
                ServerMessage::VirtualMac {
                    vmac,
                    timestamp,
                    hash,
                },
            ) => self.vmac(id, vmac, timestamp, &hash, now),
            (
                None,
                ServerMessage::ExpectedTun {
                    timestamp,
                    cidr,
                    hash,
                },
            ) => self.expttun(id, timestamp, &cidr, &hash, now),
            (
                None,
                ServerMessage::Auth {
                    ip,
                    timestamp,
                    hash,
                },
            ) => self.auth(id, ip, timestamp, &hash, now),
            (Some(_), ServerMessage::Auth { .. }) => {
                self.close_client(id, 1002, "already authenticated")
            }
            // VPN-V6: ignored after AUTH; a client's ROUTE always.
            (Some(_), ServerMessage::VirtualMac { .. } | ServerMessage::ExpectedTun { .. })
            | (_, ServerMessage::SysRoutes(_)) => {}
            (None, _) => self.close_client(id, 1008, "not authenticated"),
            (Some(_), ServerMessage::Forward(packet)) => {
                self.forward(id, packet.source(), packet.destination(), bytes)
            }
            (
                Some(own),
                ServerMessage::Udp4Conn { src, dst, .. }
                | ServerMessage::Discovery { src, dst }
                | ServerMessage::LocalUdp4Conn { src, dst, .. },
            ) => self.signal(id, own, src, dst, bytes),
        }
    }

    /// Unix milliseconds now, and whether `timestamp` (seconds) is within the skew.
    fn fresh(&self, timestamp: i64, now: Instant) -> bool {
        let now_ms = self.config.wall.unix_ms(now);
        timestamp.saturating_mul(1000).abs_diff(now_ms) <= (MAX_SKEW_SECS as u64) * 1000
    }

    /// A password proof failed: count, report, close 1008.
    fn refuse_auth(&mut self, id: ConnId, reason: &str) {
        self.stats.rejected_auth += 1;
        self.reject_event(id, reason.to_owned());
        self.close_client(id, 1008, reason);
    }

    /// VPN-V3.
    fn vmac(&mut self, id: ConnId, vmac: [u8; 16], timestamp: i64, hash: &[u8], now: Instant) {
        if !hash_eq(&vmac_hash(&self.config.password, &vmac, timestamp), hash) {
            return self.refuse_auth(id, "bad password");
        }
        if !self.fresh(timestamp, now) {
            return self.refuse_auth(id, "clock skew");
        }
        if let Some(client) = self.client_mut(id) {
            client.vmac = Some(vmac);
        }
    }

    /// VPN-V4. A request the EXPTTUN guard has seen (a replay, or the same
    /// bytes from another node in the same second) is answered but reserves
    /// nothing and leaves the connection's reservation as it was.
    fn expttun(&mut self, id: ConnId, client_ts: i64, cidr: &CidrText, hash: &[u8], now: Instant) {
        let expected = expttun_hash(&self.config.password, cidr.field(), client_ts);
        if !hash_eq(&expected, hash) {
            return self.refuse_auth(id, "bad password");
        }
        if !self.fresh(client_ts, now) {
            return self.refuse_auth(id, "clock skew");
        }
        let unseen = self
            .expttun_guard
            .check(
                expected,
                client_ts.saturating_mul(1000),
                self.config.wall.unix_ms(now),
            )
            .is_ok();
        let Some(client) = self.client_mut(id) else {
            return;
        };
        let (vmac, previous) = (client.vmac, client.pending);
        let prefix = self.config.network.prefix();
        let requested = parse_cidr(cidr.as_str())
            .ok()
            .filter(|&(_, p)| p == prefix)
            .map(|(addr, _)| addr);
        let Some(addr) = self.addresses.pick(id, requested, vmac.as_ref()) else {
            return self.close_client(id, 1008, "network full");
        };
        if unseen {
            self.addresses.reserve(id, addr, previous, vmac.as_ref());
            if let Some(client) = self.client_mut(id) {
                client.pending = Some(addr);
            }
        }
        let timestamp = self.config.wall.unix_secs(now);
        let text = self.config.network.host_cidr(addr);
        // "255.255.255.255/30" is 18 bytes: every grant fits the field.
        let Ok(cidr) = CidrText::new(&text) else {
            return self.close_client(id, 1011, "address does not fit EXPTTUN");
        };
        let hash = server_expttun_hash(&self.config.password, cidr.field(), client_ts, timestamp);
        let grant = encoded(&ServerMessage::ExpectedTun {
            timestamp,
            cidr,
            hash,
        });
        self.reply(id, grant);
    }

    /// VPN-V5.
    fn auth(&mut self, id: ConnId, ip: Ipv4Addr, client_ts: i64, hash: &[u8], now: Instant) {
        let password = &self.config.password;
        if !auth_hash_matches(password, ip, client_ts, hash) {
            return self.refuse_auth(id, "bad password");
        }
        let checked = self.guard.check(
            ip,
            client_ts.saturating_mul(1000),
            self.config.wall.unix_ms(now),
        );
        match checked {
            Ok(()) => {}
            Err(AuthReject::Skewed) => return self.refuse_auth(id, "clock skew"),
            Err(AuthReject::Replayed | AuthReject::Forgotten) => {
                return self.refuse_auth(id, "replayed auth");
            }
            Err(AuthReject::BadHash) => return self.refuse_auth(id, "bad password"),
        }
        let network = self.config.network;
        if !network.is_host(ip) {
            return self.refuse_auth(id, &format!("address {ip} outside {network}"));
        }
        let vmac = self.client_mut(id).and_then(|client| client.vmac);
        if !self.addresses.is_free_for(ip, id, vmac.as_ref()) {
            return self.refuse_auth(id, &format!("address {ip} in use"));
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let peer = conn.peer;
        let State::Open(client) = &mut conn.state else {
            return;
        };
        if let Some(pending) = client.pending.take() {
            self.addresses.unreserve(id, pending);
        }
        client.ip = Some(ip);
        let vmac = client.vmac;
        self.addresses.claim(id, ip);
        if let Some(vmac) = vmac {
            self.addresses.remember(vmac, ip);
        }
        self.stats.clients = self.addresses.owned() as u64;
        let timestamp = self.config.wall.unix_secs(now);
        let echo = encoded(&ServerMessage::Auth {
            ip,
            timestamp,
            hash: server_auth_hash(&self.config.password, ip, client_ts, timestamp),
        });
        self.reply(id, echo);
        if !self.routes.routes().is_empty() {
            let routes = encoded(&ServerMessage::SysRoutes(self.routes.clone()));
            self.reply(id, routes);
        }
        self.events.push_back(Event::Joined { conn: id, ip, peer });
        self.arm(id, now);
    }

    /// VPN-V7.
    fn forward(&mut self, id: ConnId, src: Ipv4Addr, dst: Ipv4Addr, bytes: &[u8]) {
        if !self.config.network.contains(src) {
            self.stats.spoofed += 1;
            return;
        }
        match self.addresses.owner(dst) {
            Some(receiver) if receiver != id => {
                if self.deliver(receiver, binary(bytes)) {
                    self.stats.forwarded_packets += 1;
                    self.stats.forwarded_bytes += (bytes.len() - 1) as u64;
                }
            }
            _ => self.stats.unroutable += 1,
        }
    }

    /// VPN-V9.
    fn signal(&mut self, id: ConnId, own: Ipv4Addr, src: Ipv4Addr, dst: Ipv4Addr, bytes: &[u8]) {
        if src != own {
            self.stats.spoofed += 1;
            return;
        }
        match self.addresses.owner(dst) {
            Some(receiver) if receiver != id => {
                if self.deliver(receiver, binary(bytes)) {
                    self.stats.relayed += 1;
                }
            }
            _ => self.stats.unroutable += 1,
        }
    }

    fn client_mut(&mut self, id: ConnId) -> Option<&mut Client> {
        match &mut self.conns.get_mut(&id)?.state {
            State::Open(client) => Some(client),
            State::Handshake(_) => None,
        }
    }

    /// VPN-V8: queue relayed bytes to `id` unless its queue would overflow;
    /// then drop them and count. True if queued.
    fn deliver(&mut self, id: ConnId, bytes: Vec<u8>) -> bool {
        let Some(conn) = self.conns.get(&id) else {
            return false;
        };
        if conn.queued.saturating_add(bytes.len()) > self.config.max_queued_bytes {
            self.stats.dropped_queue_full += 1;
            return false;
        }
        self.queue(id, bytes);
        true
    }

    /// The server's own answer to `id` (grant, echo, routes, pong). A client
    /// that does not read its answers is closed (VPN-V14: bounded memory).
    fn reply(&mut self, id: ConnId, bytes: Vec<u8>) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.queued.saturating_add(bytes.len()) > self.config.max_queued_bytes {
            self.close_client(id, 1008, "slow consumer");
            return;
        }
        self.queue(id, bytes);
    }

    fn queue(&mut self, id: ConnId, bytes: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.queued += bytes.len();
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
    }

    /// VPN-V10: echo a client's close frame, then close.
    fn client_closed(&mut self, id: ConnId, close: Option<CloseFrame>) {
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
        let reason = match close {
            Some(CloseFrame { code, reason }) if !reason.is_empty() => {
                format!("closed by the client ({code} {reason})")
            }
            Some(CloseFrame { code, .. }) => format!("closed by the client ({code})"),
            None => "closed by the client".to_owned(),
        };
        self.forget(id, reason);
    }

    /// A server-initiated close of an open connection: close frame, then `Close`.
    fn close_client(&mut self, id: ConnId, code: u16, reason: &str) {
        let mut bytes = Vec::new();
        encode_close(code, reason, None, &mut bytes);
        self.actions.push_back(Action::Send {
            conn: id,
            data: bytes,
        });
        self.actions.push_back(Action::Close { conn: id });
        self.forget(id, format!("{code} {reason}"));
    }

    /// VPN-V12: drop every trace of `id`; its address and reservation are free.
    fn forget(&mut self, id: ConnId, reason: String) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.timers.cancel(Timer::Conn(id));
        let State::Open(client) = conn.state else {
            return;
        };
        if let Some(pending) = client.pending {
            self.addresses.unreserve(id, pending);
        }
        if let Some(ip) = client.ip {
            self.addresses.release(id, ip);
            self.stats.clients = self.addresses.owned() as u64;
            self.events.push_back(Event::Left {
                conn: id,
                ip,
                reason,
            });
        }
    }

    /// Set the connection's one deadline from its state.
    fn arm(&mut self, id: ConnId, now: Instant) {
        if let Some(due) = self.due(id) {
            if due > now {
                self.timers.set(Timer::Conn(id), due);
            } else {
                self.expire(id, now);
            }
        }
    }

    /// The connection's next deadline (VPN-V2, VPN-V6, VPN-V11).
    fn due(&self, id: ConnId) -> Option<Instant> {
        let conn = self.conns.get(&id)?;
        let idle = after(conn.last_rx, self.config.idle_timeout);
        Some(match &conn.state {
            State::Handshake(_) => after(conn.accepted, self.config.handshake_timeout),
            State::Open(client) if client.ip.is_none() => {
                idle.min(after(client.upgraded, self.config.auth_timeout))
            }
            State::Open(_) => idle,
        })
    }

    fn expire(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let idle = after(conn.last_rx, self.config.idle_timeout);
        match &conn.state {
            State::Handshake(_) => {
                // VPN-V2: no head in time: closed with no answer.
                self.actions.push_back(Action::Close { conn: id });
                self.stats.rejected_upgrades += 1;
                let reason = format!(
                    "no upgrade request within {:?}",
                    self.config.handshake_timeout
                );
                self.reject_event(id, reason);
                self.forget(id, String::new());
            }
            State::Open(client)
                if client.ip.is_none()
                    && after(client.upgraded, self.config.auth_timeout) <= now =>
            {
                self.stats.rejected_auth += 1;
                self.reject_event(id, "authentication timeout".into());
                self.close_client(id, 1008, "authentication timeout");
            }
            State::Open(_) if idle <= now => self.close_client(id, 1001, "idle"),
            State::Open(_) => self.arm(id, now),
        }
    }

    fn shutdown(&mut self) {
        if let Some(listener) = self.listener.take() {
            self.actions.push_back(Action::CloseListener { listener });
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            if self.client_mut(id).is_some() {
                self.close_client(id, 1001, "server shutting down");
            } else {
                self.actions.push_back(Action::Close { conn: id });
                self.forget(id, String::new());
            }
        }
    }
}

impl Machine for Server {
    type Command = Command;
    type Event = Event;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Listening { local, .. } => {
                self.events.push_back(Event::Listening { addr: local });
            }
            Input::ListenFailed { listener, error } => {
                if self.listener == Some(listener) {
                    self.listener = None;
                }
                self.events.push_back(Event::ListenFailed {
                    error: error.to_owned(),
                });
            }
            Input::Accepted { conn, peer, .. } => self.accept(conn, peer, now),
            Input::Received { conn, data } => self.receive(conn, data, now),
            Input::Flushed { conn, bytes } => {
                if let Some(conn) = self.conns.get_mut(&conn) {
                    conn.queued = conn.queued.saturating_sub(bytes);
                }
            }
            // Not HALF_CLOSE: a runtime reports a FIN as `Closed`.
            Input::Closed { conn } | Input::ReadClosed { conn } => {
                self.forget(conn, "connection closed".into())
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
            Command::Shutdown => self.shutdown(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        while let Some(Timer::Conn(id)) = self.timers.pop_expired(now) {
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
        self.timers.next()
    }
}

#[cfg(test)]
mod tests;
