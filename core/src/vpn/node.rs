//! The VPN client node (spec/vpn.md): one TUN device, one WebSocket to the
//! server, one UDP socket for STUN and for peers.
//!
//! # Paths of a packet read from the TUN (VPN-S23, VPN-R4)
//!
//! 1. to a CONNECTED peer: sealed (VPN-C1) and sent over UDP to its endpoint;
//! 2. else along a one-relay route (a CONNECTED neighbour that is CONNECTED
//!    to the destination, [`super::route`]);
//! 3. else through the server as a FORWARD, once logged in; else dropped.
//!
//! # Signalling (VPN-V…, spec/vpn.md "Server")
//!
//! Connect, upgrade, send VMAC; with no address yet send EXPTTUN and take the
//! server's answer (its hash, [`server_expttun_hash`] over our request's
//! timestamp, proves the server knows the password); then AUTH, and wait for
//! the server's AUTH echo, proven with [`server_auth_hash`] over our AUTH's
//! timestamp. Both answers must carry a timestamp within ±[`MAX_SKEW_SECS`]
//! of our clock; a client proof reflected back never verifies. The WebSocket is pinged every
//! [`Config::ping_interval`]; silence for [`Config::server_timeout`], a close
//! or an error drops it, and the node reconnects with back-off (1 s doubling
//! to 30 s). Peers that are CONNECTED keep working while the server is away.
//! A refusal for a wrong password is final: [`Event::Fatal`], no retry.
//!
//! # Keys
//!
//! The master key (VPN-C2) needs the network, known from the configured
//! address or from the server's EXPTTUN answer; it is derived once, then, on
//! the caller's thread (PBKDF2 with [`Config::kdf_iterations`]: a fraction of
//! a second at the default in an optimised build).

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use super::crypto::{
    MasterKey, OpenerSet, OpenerStats, Sealer, auth_hash, expttun_hash, hash_eq, server_auth_hash,
    server_expttun_hash, vmac_hash,
};
use super::peer::{Peer, PeerOut, PeerState, Timers};
use super::route::{Route, Routes};
use super::server::MAX_SKEW_SECS;
use super::wire::{CidrText, Ipv4Packet, PeerMessage, ServerMessage, SysRoute};
use super::{Network, WallClock, parse_cidr};
use crate::codec::stun;
use crate::codec::websocket::{CloseFrame, Message};
use crate::io::{Action, ConnId, IdAllocator, Input, Machine, SocketId};
use crate::stun::client::{self as stun_client, Step, Transaction, TransactionIds};

mod link;
mod packets;
mod peers;

use link::Link;

/// How the node is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's address.
    pub server: SocketAddr,
    /// The `Host` header of the upgrade request.
    pub host: String,
    /// The upgrade request's path.
    pub path: String,
    /// The shared password.
    pub password: Vec<u8>,
    /// This node's address and prefix length, if fixed; else the server assigns one.
    pub address: Option<(Ipv4Addr, u8)>,
    /// Sixteen bytes identifying this node across restarts (VMAC).
    pub vmac: [u8; 16],
    /// The STUN server; `None` leaves every peer FAILED (VPN-S2, S5).
    pub stun: Option<SocketAddr>,
    /// Whether to make direct connections at all (`--no-p2p` clears it).
    pub p2p: bool,
    /// Where to bind the peer socket (port 0: any).
    pub udp_bind: SocketAddr,
    /// The peer state machine's timers.
    pub timers: Timers,
    /// STUN retransmission.
    pub stun_client: stun_client::Config,
    /// PBKDF2 iterations for the master key (VPN-C2); every node of a network
    /// must use the same.
    pub kdf_iterations: u32,
    /// Unix time.
    pub wall: WallClock,
    /// WebSocket ping interval.
    pub ping_interval: Duration,
    /// Reconnect after this long without a byte from the server.
    pub server_timeout: Duration,
    /// Most bytes queued to the server and not yet flushed; FORWARDs beyond it are dropped.
    pub max_queued_bytes: usize,
    /// Most peers tracked at once.
    pub max_peers: usize,
}

impl Config {
    /// Defaults for everything but the server, password, wall clock.
    pub fn new(server: SocketAddr, password: impl Into<Vec<u8>>, wall: WallClock) -> Config {
        Config {
            server,
            host: server.to_string(),
            path: "/".to_owned(),
            password: password.into(),
            address: None,
            vmac: [0; 16],
            stun: None,
            p2p: true,
            udp_bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            timers: Timers::default(),
            stun_client: stun_client::Config::default(),
            kdf_iterations: super::crypto::DEFAULT_ITERATIONS,
            wall,
            ping_interval: Duration::from_secs(20),
            server_timeout: Duration::from_secs(60),
            max_queued_bytes: 4 << 20,
            max_peers: 4096,
        }
    }
}

/// What the application may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Report an [`Event::Status`].
    Status,
    /// Close the server connection and the socket; stop.
    Shutdown,
}

/// One peer in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its virtual address.
    pub vip: Ipv4Addr,
    /// Its state.
    pub state: PeerState,
    /// Where direct packets go, while CONNECTED.
    pub endpoint: Option<SocketAddrV4>,
    /// The last measured round trip, while CONNECTED.
    pub delay_ms: Option<u64>,
}

/// A snapshot of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Our address and prefix, once known.
    pub address: Option<(Ipv4Addr, u8)>,
    /// Whether the server has accepted our AUTH on the current connection.
    pub logged_in: bool,
    /// Our public endpoint as STUN last reported it.
    pub public: Option<SocketAddrV4>,
    /// Every peer.
    pub peers: Vec<PeerStatus>,
    /// Routes through a relay: destination, next hop, delay.
    pub routes: Vec<Route>,
    /// Counters.
    pub stats: Stats,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets read from the TUN.
    pub tun_in: u64,
    /// Packets written to the TUN.
    pub tun_out: u64,
    /// Packets sent to peers over UDP (our own and relayed).
    pub direct_out: u64,
    /// Packets received from peers over UDP.
    pub direct_in: u64,
    /// Packets sent through the server.
    pub server_out: u64,
    /// Packets received through the server.
    pub server_in: u64,
    /// Packets relayed for another node.
    pub relayed: u64,
    /// Packets dropped: no path (not logged in, or the server queue full).
    pub dropped_no_path: u64,
    /// Packets dropped: not a valid IPv4 packet, or outside the network.
    pub dropped_bad_packet: u64,
    /// Relayed packets dropped because their TTL ran out.
    pub dropped_ttl: u64,
    /// Peer datagrams that opened but did not parse or lied about their sender.
    pub bad_peer_messages: u64,
    /// Server messages of unknown kinds, ignored.
    pub unknown_server_messages: u64,
    /// The datagram opener's counters (failed authentication, replays, …).
    pub crypto: OpenerStats,
}

/// What the node tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connecting to the server.
    Connecting {
        /// Where.
        server: SocketAddr,
    },
    /// Our virtual address is known: configure the TUN device with it.
    Address {
        /// The address.
        ip: Ipv4Addr,
        /// Its prefix length.
        prefix: u8,
    },
    /// The server accepted our AUTH.
    LoggedIn {
        /// The address we logged in with.
        ip: Ipv4Addr,
    },
    /// The server connection is gone; the node retries after `retry_in`.
    ServerLost {
        /// Why.
        reason: String,
        /// When the node reconnects.
        retry_in: Duration,
    },
    /// The server refused us for good (wrong password): the node stopped.
    Fatal {
        /// Why.
        reason: String,
    },
    /// STUN reported our public endpoint.
    Public {
        /// It.
        endpoint: SocketAddrV4,
    },
    /// A STUN transaction failed.
    StunFailed {
        /// Why.
        reason: String,
    },
    /// The peer socket could not be bound: no direct connections.
    UdpFailed {
        /// Why.
        reason: String,
    },
    /// A peer changed state.
    Peer {
        /// Its virtual address.
        vip: Ipv4Addr,
        /// The state it left.
        from: PeerState,
        /// The state it entered.
        to: PeerState,
        /// Its direct endpoint, when `to` is CONNECTED.
        endpoint: Option<SocketAddrV4>,
    },
    /// The best route to a destination changed (`delay == UNREACHABLE`: gone).
    Route(Route),
    /// The server pushed system routes (ROUTE).
    SysRoutes(Vec<SysRoute>),
    /// The answer to [`Command::Status`].
    Status(Box<Status>),
}

/// Where the login stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    /// No open WebSocket.
    Offline,
    /// EXPTTUN sent; waiting for the address.
    AwaitAddress,
    /// AUTH sent with this address.
    AwaitAuth,
    /// The server echoed our AUTH.
    Ready,
}

struct Keys {
    sealer: Sealer,
    openers: OpenerSet,
}

/// The client node machine.
pub struct Node {
    config: Config,
    rng: ChaCha20Rng,
    ids: IdAllocator,
    epoch: Instant,
    link: Option<Link>,
    login: Login,
    /// The timestamp of our last EXPTTUN or AUTH on this link: the server's
    /// answer must prove it (VPN-N1).
    sent_ts: i64,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    last_rx: Instant,
    next_ping: Option<Instant>,
    stopped: bool,
    address: Option<(Ipv4Addr, u8)>,
    network: Option<Network>,
    keys: Option<Keys>,
    udp: Option<SocketId>,
    udp_local: Option<SocketAddr>,
    public: Option<SocketAddrV4>,
    stun_ids: TransactionIds,
    stun: Option<Transaction>,
    peers: BTreeMap<Ipv4Addr, Peer>,
    routes: Routes,
    next_tick: Instant,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    stats: Stats,
    plain: Vec<u8>,
}

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A packet relayed for another node leaves with its TTL one lower (as a router).
const MIN_RELAY_TTL: u8 = 2;

impl Node {
    /// A node that starts connecting at once. `seed` must be fresh on every
    /// start (it seeds the datagram session id, VPN-C5).
    pub fn new(config: Config, seed: [u8; 32], now: Instant) -> Node {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut stun_seed = [0; 32];
        rng.fill_bytes(&mut stun_seed);
        let mut node = Node {
            rng,
            ids: IdAllocator::default(),
            epoch: now,
            link: None,
            login: Login::Offline,
            sent_ts: 0,
            reconnect_at: Some(now),
            backoff: MIN_BACKOFF,
            last_rx: now,
            next_ping: None,
            stopped: false,
            address: None,
            network: None,
            keys: None,
            udp: None,
            udp_local: None,
            public: None,
            stun_ids: TransactionIds::new(stun_seed),
            stun: None,
            peers: BTreeMap::new(),
            routes: Routes::new(Ipv4Addr::UNSPECIFIED, 256),
            next_tick: now + config.timers.tick,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            plain: Vec::new(),
            config,
        };
        if node.config.p2p {
            let socket = SocketId(node.ids.next_raw());
            node.udp = Some(socket);
            node.actions.push_back(Action::BindUdp {
                socket,
                addr: node.config.udp_bind,
            });
        }
        if let Some((ip, prefix)) = node.config.address {
            node.set_address(ip, prefix);
        }
        node.connect(now);
        node
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        let mut stats = self.stats;
        if let Some(keys) = &self.keys {
            stats.crypto = keys.openers.stats();
        }
        stats
    }

    /// A snapshot.
    pub fn status(&self, now: Instant) -> Status {
        Status {
            address: self.address,
            logged_in: self.login == Login::Ready,
            public: self.public,
            peers: self
                .peers
                .values()
                .map(|peer| PeerStatus {
                    vip: peer.vip(),
                    state: peer.state(),
                    endpoint: peer.endpoint(&self.config.timers, now),
                    delay_ms: peer.delay_ms(),
                })
                .collect(),
            routes: self.routes.table().filter(|r| r.next != r.dst).collect(),
            stats: self.stats(),
        }
    }

    /// The state of the peer `vip`, if known.
    pub fn peer_state(&self, vip: Ipv4Addr) -> Option<PeerState> {
        self.peers.get(&vip).map(Peer::state)
    }

    fn own(&self) -> Option<Ipv4Addr> {
        self.address.map(|(ip, _)| ip)
    }

    fn set_address(&mut self, ip: Ipv4Addr, prefix: u8) {
        let Ok(network) = Network::new(ip, prefix) else {
            self.fatal(format!("{ip}/{prefix} is not a usable address"));
            return;
        };
        if self.address == Some((ip, prefix)) {
            return;
        }
        self.address = Some((ip, prefix));
        self.network = Some(network);
        let master = MasterKey::derive(
            &self.config.password,
            &network.to_string(),
            self.config.kdf_iterations,
        );
        let mut seed = [0; 32];
        self.rng.fill_bytes(&mut seed);
        self.keys = Some(Keys {
            sealer: Sealer::new(&master, ip, seed),
            openers: OpenerSet::with_capacity(master, ip, self.config.max_peers),
        });
        self.routes = Routes::new(ip, 256);
        self.peers.clear();
        self.events.push_back(Event::Address { ip, prefix });
    }

    fn fatal(&mut self, reason: String) {
        self.stopped = true;
        self.reconnect_at = None;
        if let Some(link) = self.link.take() {
            self.actions.push_back(Action::Close { conn: link.conn });
        }
        self.events.push_back(Event::Fatal { reason });
    }

    // ---- the server link -------------------------------------------------------

    fn connect(&mut self, now: Instant) {
        self.reconnect_at = None;
        let conn = ConnId(self.ids.next_raw());
        self.link = Some(Link::new(conn, 65_536 + 64));
        self.login = Login::Offline;
        self.last_rx = now;
        self.next_ping = None;
        self.actions.push_back(Action::Connect {
            conn,
            addr: self.config.server,
        });
        self.events.push_back(Event::Connecting {
            server: self.config.server,
        });
    }

    fn lose_server(&mut self, reason: String, now: Instant) {
        let Some(link) = self.link.take() else {
            return;
        };
        self.actions.push_back(Action::Close { conn: link.conn });
        if self.login == Login::Ready {
            self.backoff = MIN_BACKOFF;
        }
        self.login = Login::Offline;
        self.next_ping = None;
        if self.stopped {
            return;
        }
        let retry_in = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.reconnect_at = Some(now + retry_in);
        self.events
            .push_back(Event::ServerLost { reason, retry_in });
    }

    fn mask(&mut self) -> [u8; 4] {
        let mut mask = [0; 4];
        self.rng.fill_bytes(&mut mask);
        mask
    }

    fn send_ws(&mut self, message: &Message) -> bool {
        let mask = self.mask();
        let Some(link) = &mut self.link else {
            return false;
        };
        let data = Link::encode(message, mask);
        link.unflushed += data.len();
        self.actions.push_back(Action::Send {
            conn: link.conn,
            data,
        });
        true
    }

    fn send_server(&mut self, message: &ServerMessage<'_>) -> bool {
        let mut out = Vec::with_capacity(message.encoded_len());
        message.encode(&mut out);
        self.send_ws(&Message::Binary(out))
    }

    fn close_link(&mut self, code: u16, reason: &str, now: Instant) {
        let mask = self.mask();
        if let Some(link) = &self.link {
            self.actions.push_back(Action::Send {
                conn: link.conn,
                data: Link::encode_close(code, reason, mask),
            });
        }
        self.lose_server(reason.to_owned(), now);
    }

    fn link_opened(&mut self, now: Instant) {
        let ts = self.config.wall.unix_secs(now);
        let vmac = self.config.vmac;
        self.send_server(&ServerMessage::VirtualMac {
            vmac,
            timestamp: ts,
            hash: vmac_hash(&self.config.password, &vmac, ts),
        });
        match self.address {
            Some((ip, _)) => self.send_auth(ip, now),
            None => {
                let text = self
                    .config
                    .address
                    .map(|(ip, prefix)| format!("{ip}/{prefix}"))
                    .unwrap_or_default();
                let cidr = CidrText::new(&text).unwrap_or_else(|_| {
                    CidrText::new("").unwrap_or_else(|_| unreachable!("empty text is valid"))
                });
                let hash = expttun_hash(&self.config.password, cidr.field(), ts);
                self.send_server(&ServerMessage::ExpectedTun {
                    timestamp: ts,
                    cidr,
                    hash,
                });
                self.sent_ts = ts;
                self.login = Login::AwaitAddress;
            }
        }
        self.next_ping = Some(now + self.config.ping_interval);
    }

    fn send_auth(&mut self, ip: Ipv4Addr, now: Instant) {
        let ts = self.config.wall.unix_secs(now);
        let hash = auth_hash(&self.config.password, ip, ts);
        self.send_server(&ServerMessage::Auth {
            ip,
            timestamp: ts,
            hash,
        });
        self.sent_ts = ts;
        self.login = Login::AwaitAuth;
    }

    fn link_received(&mut self, data: &[u8], now: Instant) {
        let Some(link) = &mut self.link else {
            return;
        };
        self.last_rx = now;
        let arrived = link.received(data);
        if arrived.opened {
            self.link_opened(now);
        }
        for message in arrived.messages {
            if self.link.is_none() {
                return;
            }
            match message {
                Message::Binary(bytes) => self.server_message(&bytes, now),
                Message::Text(_) => self.close_link(1003, "text message", now),
                Message::Ping(payload) => {
                    self.send_ws(&Message::Pong(payload));
                }
                Message::Pong(_) => {}
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|CloseFrame { code, reason }| (code, reason))
                        .unwrap_or((1005, String::new()));
                    self.server_closed(code, &reason, now);
                }
            }
        }
        if let Some(error) = arrived.error {
            self.close_link(1002, "protocol error", now);
            if let Some(Event::ServerLost { reason, .. }) = self.events.back_mut() {
                *reason = error;
            }
        }
    }

    fn server_closed(&mut self, code: u16, reason: &str, now: Instant) {
        let text = if reason.is_empty() {
            format!("the server closed the connection ({code})")
        } else {
            format!("the server closed the connection ({code} {reason})")
        };
        if code == 1008 && reason.starts_with("bad password") {
            self.fatal(text);
            return;
        }
        self.lose_server(text, now);
    }

    fn server_message(&mut self, bytes: &[u8], now: Instant) {
        let message = match ServerMessage::parse(bytes) {
            Ok(message) => message,
            Err(e) if e.is_unknown() => {
                self.stats.unknown_server_messages += 1;
                return;
            }
            Err(e) => {
                let reason = format!("bad message from the server: {e}");
                self.close_link(1002, "protocol error", now);
                if let Some(Event::ServerLost { reason: r, .. }) = self.events.back_mut() {
                    *r = reason;
                }
                return;
            }
        };
        match message {
            ServerMessage::ExpectedTun {
                timestamp,
                cidr,
                hash,
            } if self.login == Login::AwaitAddress => {
                let now_s = self.config.wall.unix_secs(now);
                let proof = server_expttun_hash(
                    &self.config.password,
                    cidr.field(),
                    self.sent_ts,
                    timestamp,
                );
                if !hash_eq(&proof, &hash) {
                    self.close_link(1008, "bad password", now);
                    return;
                }
                if timestamp.abs_diff(now_s) > MAX_SKEW_SECS.unsigned_abs() {
                    self.close_link(1008, "clock skew", now);
                    return;
                }
                match parse_cidr(cidr.as_str()) {
                    Ok((ip, prefix)) if Network::new(ip, prefix).is_ok_and(|n| n.is_host(ip)) => {
                        self.set_address(ip, prefix);
                        if !self.stopped {
                            self.send_auth(ip, now);
                        }
                    }
                    _ => self.close_link(1002, "bad address from the server", now),
                }
            }
            ServerMessage::Auth {
                ip,
                timestamp,
                hash,
            } if self.login == Login::AwaitAuth => {
                let proof = server_auth_hash(&self.config.password, ip, self.sent_ts, timestamp);
                if Some(ip) != self.own() || !hash_eq(&proof, &hash) {
                    self.close_link(
                        1008,
                        "the server's AUTH echo does not prove the password",
                        now,
                    );
                    return;
                }
                let now_s = self.config.wall.unix_secs(now);
                if timestamp.abs_diff(now_s) > MAX_SKEW_SECS.unsigned_abs() {
                    self.close_link(1008, "clock skew", now);
                    return;
                }
                self.login = Login::Ready;
                self.backoff = MIN_BACKOFF;
                self.events.push_back(Event::LoggedIn { ip });
            }
            _ if self.login != Login::Ready => {
                // Anything before our login completes is out of order.
                self.close_link(1002, "unexpected message before login", now);
            }
            ServerMessage::Forward(packet) => self.server_forward(packet, now),
            ServerMessage::Udp4Conn { src, dst, ip, port } => {
                if Some(dst) == self.own() {
                    let endpoint = SocketAddrV4::new(ip, port);
                    self.with_peer(src, now, |peer, c, now, out| {
                        peer.on_public_endpoint(endpoint, c.p2p_on, now, out)
                    });
                }
            }
            ServerMessage::LocalUdp4Conn { src, dst, ip, port } => {
                if Some(dst) == self.own() {
                    let endpoint = SocketAddrV4::new(ip, port);
                    self.with_peer(src, now, |peer, _, _, _| peer.on_local_endpoint(endpoint));
                }
            }
            ServerMessage::Discovery { src, dst } => {
                if Some(dst) == self.own() || dst == Ipv4Addr::BROADCAST {
                    self.with_peer(src, now, |peer, c, now, out| {
                        peer.on_server_forward(c.p2p_on, c.timers, now, out)
                    });
                }
            }
            ServerMessage::SysRoutes(table) => {
                self.events
                    .push_back(Event::SysRoutes(table.routes().to_vec()));
            }
            ServerMessage::Auth { .. }
            | ServerMessage::ExpectedTun { .. }
            | ServerMessage::VirtualMac { .. } => {}
        }
    }

    fn server_forward(&mut self, packet: Ipv4Packet<'_>, now: Instant) {
        self.stats.server_in += 1;
        let src = packet.source();
        if self.network.is_some_and(|n| n.is_host(src)) && Some(src) != self.own() {
            self.with_peer(src, now, |peer, c, now, out| {
                peer.on_server_forward(c.p2p_on, c.timers, now, out)
            });
        }
        if Some(packet.destination()) == self.own() {
            self.write_tun(packet.as_bytes());
        } else {
            self.stats.dropped_bad_packet += 1;
        }
    }
}

impl Machine for Node {
    type Command = Command;
    type Event = Event;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        if self.stopped {
            return;
        }
        let link_conn = self.link.as_ref().map(|l| l.conn);
        match input {
            Input::Connected { conn, local } if Some(conn) == link_conn => {
                let mut nonce = [0; 16];
                self.rng.fill_bytes(&mut nonce);
                let (host, path) = (self.config.host.clone(), self.config.path.clone());
                if let Some(link) = &mut self.link {
                    let request = link.connected(local, &host, &path, nonce);
                    link.unflushed += request.len();
                    self.actions.push_back(Action::Send {
                        conn,
                        data: request,
                    });
                }
                self.last_rx = now;
            }
            Input::ConnectFailed { conn, error } if Some(conn) == link_conn => {
                self.lose_server(format!("cannot connect to the server: {error}"), now);
            }
            Input::Received { conn, data } if Some(conn) == link_conn => {
                self.link_received(data, now);
            }
            Input::Closed { conn } | Input::ReadClosed { conn } if Some(conn) == link_conn => {
                self.lose_server("the server closed the connection".to_owned(), now);
            }
            Input::Flushed { conn, bytes } if Some(conn) == link_conn => {
                if let Some(link) = &mut self.link {
                    link.unflushed = link.unflushed.saturating_sub(bytes);
                }
            }
            Input::UdpBound { socket, local } if Some(socket) == self.udp => {
                self.udp_local = Some(local);
            }
            Input::UdpBindFailed { socket, error } if Some(socket) == self.udp => {
                self.udp = None;
                self.events.push_back(Event::UdpFailed {
                    reason: format!("cannot bind {}: {error}", self.config.udp_bind),
                });
            }
            Input::Datagram { socket, from, data } if Some(socket) == self.udp => {
                self.datagram(from, data, now);
            }
            Input::TunPacket(data) => self.tun_packet(data, now),
            _ => {}
        }
    }

    fn handle_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Status => {
                let status = self.status(now);
                self.events.push_back(Event::Status(Box::new(status)));
            }
            Command::Shutdown => {
                self.stopped = true;
                self.reconnect_at = None;
                if let Some(link) = self.link.take() {
                    self.actions.push_back(Action::Close { conn: link.conn });
                }
                if let Some(socket) = self.udp.take() {
                    self.actions.push_back(Action::CloseUdp { socket });
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        if self.reconnect_at.is_some_and(|at| at <= now) {
            self.connect(now);
        }
        if self.link.is_some()
            && now.saturating_duration_since(self.last_rx) >= self.config.server_timeout
        {
            let silence = self.config.server_timeout.as_secs();
            self.close_link(1001, "server silent", now);
            if let Some(Event::ServerLost { reason, .. }) = self.events.back_mut() {
                *reason = format!("nothing from the server for {silence} s");
            }
        }
        if let Some(at) = self.next_ping
            && at <= now
            && self.link.as_ref().is_some_and(Link::is_open)
        {
            self.send_ws(&Message::Ping(Vec::new()));
            self.next_ping = Some(now + self.config.ping_interval);
        }
        self.stun_timeout(now);
        if self.next_tick <= now {
            self.tick(now);
            while self.next_tick <= now {
                self.next_tick += self.config.timers.tick;
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
        if self.stopped {
            return None;
        }
        [
            Some(self.next_tick),
            self.reconnect_at,
            self.next_ping,
            self.link
                .as_ref()
                .map(|_| self.last_rx + self.config.server_timeout),
            self.stun.as_ref().map(Transaction::deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests;
