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
//! server's answer (its hash proves the server knows the password); then
//! AUTH, and wait for the server's AUTH echo. The WebSocket is pinged every
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
    MasterKey, OpenerSet, OpenerStats, Sealer, auth_hash, auth_hash_matches, expttun_hash, hash_eq,
    vmac_hash,
};
use super::peer::{Peer, PeerOut, PeerState, Timers};
use super::route::{Route, Routes};
use super::wire::{CidrText, Ipv4Packet, PeerMessage, ServerMessage, SysRoute};
use super::{Network, WallClock, parse_cidr};
use crate::codec::stun;
use crate::codec::websocket::{CloseFrame, Message};
use crate::io::{Action, ConnId, IdAllocator, Input, Machine, SocketId};
use crate::stun::client::{self as stun_client, Step, Transaction, TransactionIds};

mod link;

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
            openers: OpenerSet::new(master, ip),
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
                let proof = expttun_hash(&self.config.password, cidr.field(), timestamp);
                if !hash_eq(&proof, &hash) {
                    self.close_link(1008, "bad password", now);
                    return;
                }
                if timestamp.abs_diff(now_s) > 30 {
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
                if Some(ip) != self.own()
                    || !auth_hash_matches(&self.config.password, ip, timestamp, &hash)
                {
                    self.close_link(
                        1008,
                        "the server's AUTH echo does not prove the password",
                        now,
                    );
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

    // ---- peers -----------------------------------------------------------------

    fn p2p_on(&self) -> bool {
        self.config.p2p && self.udp_local.is_some()
    }

    /// Runs `f` on the peer `vip` (created in INIT if new and there is room)
    /// and carries out what it asks.
    fn with_peer(
        &mut self,
        vip: Ipv4Addr,
        now: Instant,
        f: impl FnOnce(&mut Peer, &PeerCtx<'_>, Instant, &mut Vec<PeerOut>),
    ) {
        let Some(network) = self.network else {
            return;
        };
        if !network.is_host(vip) || Some(vip) == self.own() {
            return;
        }
        if !self.peers.contains_key(&vip) {
            if self.peers.len() >= self.config.max_peers {
                return;
            }
            self.peers
                .insert(vip, Peer::new(vip, &self.config.timers, now));
        }
        let ctx = PeerCtx {
            p2p_on: self.p2p_on(),
            timers: &self.config.timers,
        };
        let mut out = Vec::new();
        if let Some(peer) = self.peers.get_mut(&vip) {
            f(peer, &ctx, now, &mut out);
        }
        self.peer_outs(vip, out, now);
    }

    fn peer_outs(&mut self, vip: Ipv4Addr, outs: Vec<PeerOut>, now: Instant) {
        for out in outs {
            match out {
                PeerOut::Transition { from, to } => {
                    let endpoint = self
                        .peers
                        .get(&vip)
                        .and_then(|p| p.endpoint(&self.config.timers, now));
                    self.events.push_back(Event::Peer {
                        vip,
                        from,
                        to,
                        endpoint,
                    });
                    if from == PeerState::Connected {
                        self.set_direct(vip, None);
                    }
                    if to == PeerState::Connected {
                        // VPN-R3: a new neighbour gets our whole table.
                        let routes: Vec<Route> = self.routes.direct_routes().collect();
                        for route in routes {
                            if route.dst != vip {
                                self.send_route(vip, route, now);
                            }
                        }
                    }
                }
                PeerOut::SendPublic => {
                    if let (Some(own), Some(public)) = (self.own(), self.public) {
                        self.send_server(&ServerMessage::Udp4Conn {
                            src: own,
                            dst: vip,
                            ip: *public.ip(),
                            port: public.port(),
                        });
                    }
                }
                PeerOut::SendLocal => {
                    if let Some(lan) = self.lan_endpoint()
                        && let Some(own) = self.own()
                    {
                        self.send_server(&ServerMessage::LocalUdp4Conn {
                            src: own,
                            dst: vip,
                            ip: *lan.ip(),
                            port: lan.port(),
                        });
                    }
                }
                PeerOut::Heartbeat { to, ack } => {
                    let (ip, port) = self
                        .public
                        .map_or((Ipv4Addr::UNSPECIFIED, 0), |p| (*p.ip(), p.port()));
                    if let Some(own) = self.own() {
                        let message = PeerMessage::Heartbeat {
                            tun: own,
                            ip,
                            port,
                            ack,
                        };
                        self.send_peer(vip, to, &message);
                    }
                }
                PeerOut::Probe => self.send_probe(vip, now),
            }
        }
    }

    /// Our LAN endpoint: the IP our server connection leaves from, with the
    /// peer socket's port.
    fn lan_endpoint(&self) -> Option<SocketAddrV4> {
        let ip = match self.link.as_ref()?.local? {
            SocketAddr::V4(v4) => *v4.ip(),
            SocketAddr::V6(_) => return None,
        };
        Some(SocketAddrV4::new(ip, self.udp_local?.port()))
    }

    fn send_peer(&mut self, vip: Ipv4Addr, to: SocketAddrV4, message: &PeerMessage<'_>) -> bool {
        let (Some(socket), Some(keys)) = (self.udp, &mut self.keys) else {
            return false;
        };
        self.plain.clear();
        message.encode(&mut self.plain);
        let mut out = Vec::new();
        if keys.sealer.seal(vip, &self.plain, &mut out).is_err() {
            return false;
        }
        self.actions.push_back(Action::SendTo {
            socket,
            to: SocketAddr::V4(to),
            data: out,
        });
        true
    }

    fn send_probe(&mut self, vip: Ipv4Addr, now: Instant) {
        let (Some(own), Some(to)) = (
            self.own(),
            self.peers
                .get(&vip)
                .and_then(|p| p.endpoint(&self.config.timers, now)),
        ) else {
            return;
        };
        let timestamp = self.clock_ms(now);
        self.send_peer(
            vip,
            to,
            &PeerMessage::Delay {
                src: own,
                dst: vip,
                timestamp,
            },
        );
    }

    fn clock_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn set_direct(&mut self, vip: Ipv4Addr, delay: Option<u64>) {
        let mut changes = Vec::new();
        let announcement = self.routes.set_direct(vip, delay, &mut changes);
        for change in changes {
            self.events.push_back(Event::Route(change));
        }
        if let Some(route) = announcement {
            // VPN-R3: to every CONNECTED neighbour but the destination itself.
            let neighbours: Vec<Ipv4Addr> = self
                .peers
                .values()
                .filter(|p| p.state() == PeerState::Connected && p.vip() != route.dst)
                .map(Peer::vip)
                .collect();
            let now = self.epoch; // endpoints do not depend on it for CONNECTED peers
            for n in neighbours {
                self.send_route(n, route, now);
            }
        }
    }

    fn send_route(&mut self, to_vip: Ipv4Addr, route: Route, now: Instant) {
        let Some(to) = self
            .peers
            .get(&to_vip)
            .and_then(|p| p.endpoint(&self.config.timers, now))
        else {
            return;
        };
        self.send_peer(
            to_vip,
            to,
            &PeerMessage::Route {
                dst: route.dst,
                next: route.next,
                delay: route.delay,
            },
        );
    }

    fn tick(&mut self, now: Instant) {
        let stun_on = self.config.stun.is_some() && self.p2p_on();
        let vips: Vec<Ipv4Addr> = self.peers.keys().copied().collect();
        for vip in vips {
            let mut out = Vec::new();
            if let Some(peer) = self.peers.get_mut(&vip) {
                peer.on_tick(stun_on, &self.config.timers, now, &mut out);
            }
            self.peer_outs(vip, out, now);
        }
        // VPN-S4: STUN while any peer is PREPARING.
        if stun_on
            && self.stun.is_none()
            && self
                .peers
                .values()
                .any(|p| p.state() == PeerState::Preparing)
        {
            self.start_stun(now);
        }
    }

    fn start_stun(&mut self, now: Instant) {
        let (Some(server), Some(socket), Some(local)) =
            (self.config.stun, self.udp, self.udp_local)
        else {
            return;
        };
        let id = self.stun_ids.next_id();
        let (tx, request) = Transaction::start(id, server, local, self.config.stun_client, now);
        self.stun = Some(tx);
        self.actions.push_back(Action::SendTo {
            socket,
            to: server,
            data: request,
        });
    }

    fn stun_timeout(&mut self, now: Instant) {
        let Some(tx) = &mut self.stun else {
            return;
        };
        match tx.handle_timeout(now) {
            Some(Step::Send(data)) => {
                if let Some(socket) = self.udp {
                    let to = tx.server();
                    self.actions.push_back(Action::SendTo { socket, to, data });
                }
            }
            Some(Step::Failed(failure)) => {
                let server = tx.server();
                self.stun = None;
                self.events.push_back(Event::StunFailed {
                    reason: format!("{server}: {failure}"),
                });
            }
            None => {}
        }
    }

    fn stun_answer(&mut self, message: &stun::Message, now: Instant) {
        let Some(tx) = &self.stun else {
            return;
        };
        let outcome = tx.handle_response(message);
        let Some(outcome) = outcome else {
            return;
        };
        self.stun = None;
        match outcome {
            Ok(SocketAddr::V4(public)) => {
                if self.public != Some(public) {
                    self.events.push_back(Event::Public { endpoint: public });
                }
                self.public = Some(public);
                // VPN-S6/S7: every PREPARING peer learns our endpoint.
                let preparing: Vec<Ipv4Addr> = self
                    .peers
                    .values()
                    .filter(|p| p.state() == PeerState::Preparing)
                    .map(Peer::vip)
                    .collect();
                for vip in preparing {
                    self.with_peer(vip, now, |peer, _, now, out| peer.on_stun(now, out));
                }
            }
            Ok(other) => self.events.push_back(Event::StunFailed {
                reason: format!("STUN mapped an IPv6 address {other}"),
            }),
            Err(failure) => self.events.push_back(Event::StunFailed {
                reason: failure.to_string(),
            }),
        }
    }

    fn datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        if stun::is_stun(data) {
            if let Ok(message) = stun::parse(data) {
                self.stun_answer(&message, now);
            }
            return;
        }
        let own = self.own();
        let network = self.network;
        let Some(keys) = &mut self.keys else {
            return;
        };
        // VPN-C6: a datagram that does not open is counted by the opener and dropped.
        let sender = match crate::vpn::crypto::Header::parse(data) {
            Ok(header) => header.sender,
            Err(_) => {
                let _ = keys.openers.open(data);
                return;
            }
        };
        if network.is_some_and(|n| n.is_host(sender)) && Some(sender) != own {
            keys.openers.add_peer(sender);
        }
        let Ok((sender, plain)) = keys.openers.open(data) else {
            return;
        };
        let SocketAddr::V4(from) = from else {
            self.stats.bad_peer_messages += 1;
            return;
        };
        match PeerMessage::parse(&plain) {
            Ok(PeerMessage::Heartbeat { tun, ack, .. }) if tun == sender => {
                self.with_peer(sender, now, |peer, _, now, out| {
                    peer.on_heartbeat(from, ack, now, out)
                });
            }
            Ok(PeerMessage::Forward(packet)) => {
                self.stats.direct_in += 1;
                self.route_packet(packet, Some(sender), now);
            }
            Ok(PeerMessage::Delay {
                src,
                dst,
                timestamp,
            }) => {
                let own = self.own();
                if Some(dst) == own && src == sender {
                    // VPN-R1: echoed back unprocessed.
                    self.send_peer(
                        sender,
                        from,
                        &PeerMessage::Delay {
                            src,
                            dst,
                            timestamp,
                        },
                    );
                } else if Some(src) == own && dst == sender {
                    let rtt = self.clock_ms(now).saturating_sub(timestamp);
                    if let Some(peer) = self.peers.get_mut(&sender)
                        && peer.state() == PeerState::Connected
                    {
                        peer.set_delay_ms(rtt);
                        self.set_direct(sender, Some(rtt));
                    }
                } else {
                    self.stats.bad_peer_messages += 1;
                }
            }
            Ok(PeerMessage::Route { dst, next, delay }) => {
                let mut changes = Vec::new();
                self.routes.announce(sender, dst, next, delay, &mut changes);
                for change in changes {
                    self.events.push_back(Event::Route(change));
                }
            }
            Ok(PeerMessage::Heartbeat { .. }) | Err(_) => self.stats.bad_peer_messages += 1,
        }
    }

    // ---- packets ---------------------------------------------------------------

    fn write_tun(&mut self, packet: &[u8]) {
        self.stats.tun_out += 1;
        self.actions.push_back(Action::WriteTun(packet.to_vec()));
    }

    fn tun_packet(&mut self, data: &[u8], now: Instant) {
        self.stats.tun_in += 1;
        match Ipv4Packet::new_checked(data) {
            Ok(packet) => self.route_packet(packet, None, now),
            Err(_) => self.stats.dropped_bad_packet += 1,
        }
    }

    /// Where a packet goes (VPN-S23, VPN-R4, VPN-R5): `came_from` is the
    /// neighbour that relayed it to us, `None` for our own TUN.
    fn route_packet(&mut self, packet: Ipv4Packet<'_>, came_from: Option<Ipv4Addr>, now: Instant) {
        let dst = packet.destination();
        if Some(dst) == self.own() {
            if came_from.is_some() {
                self.write_tun(packet.as_bytes());
            }
            return;
        }
        if !self.network.is_some_and(|n| n.is_host(dst)) {
            self.stats.dropped_bad_packet += 1;
            return;
        }
        let relaying = came_from.is_some();
        let mut bytes = packet.as_bytes().to_vec();
        if relaying {
            if bytes[8] < MIN_RELAY_TTL {
                self.stats.dropped_ttl += 1;
                return;
            }
            decrement_ttl(&mut bytes);
            self.stats.relayed += 1;
        }
        let direct = self
            .peers
            .get(&dst)
            .and_then(|p| p.endpoint(&self.config.timers, now))
            .map(|to| (dst, to));
        let via = direct.or_else(|| {
            let (next, _) = self.routes.next_hop(dst)?;
            if Some(next) == came_from {
                return None;
            }
            let to = self.peers.get(&next)?.endpoint(&self.config.timers, now)?;
            Some((next, to))
        });
        if let Some((vip, to)) = via {
            let mut plain = Vec::with_capacity(bytes.len() + 1);
            plain.push(super::wire::peer_kind::FORWARD);
            plain.extend_from_slice(&bytes);
            if self.send_sealed(vip, to, &plain) {
                self.stats.direct_out += 1;
                return;
            }
        }
        self.forward_via_server(&bytes);
    }

    fn send_sealed(&mut self, vip: Ipv4Addr, to: SocketAddrV4, plain: &[u8]) -> bool {
        let (Some(socket), Some(keys)) = (self.udp, &mut self.keys) else {
            return false;
        };
        let mut out = Vec::new();
        if keys.sealer.seal(vip, plain, &mut out).is_err() {
            return false;
        }
        self.actions.push_back(Action::SendTo {
            socket,
            to: SocketAddr::V4(to),
            data: out,
        });
        true
    }

    fn forward_via_server(&mut self, packet: &[u8]) {
        let room = self
            .link
            .as_ref()
            .is_some_and(|l| l.unflushed + packet.len() <= self.config.max_queued_bytes);
        if self.login != Login::Ready || !room {
            self.stats.dropped_no_path += 1;
            return;
        }
        let mut out = Vec::with_capacity(packet.len() + 1);
        out.push(super::wire::server_kind::FORWARD);
        out.extend_from_slice(packet);
        if self.send_ws(&Message::Binary(out)) {
            self.stats.server_out += 1;
        }
    }
}

/// What a peer callback may read of the node.
struct PeerCtx<'a> {
    p2p_on: bool,
    timers: &'a Timers,
}

/// TTL − 1 with the header checksum updated (RFC 1624).
fn decrement_ttl(header: &mut [u8]) {
    header[8] -= 1;
    let old = u16::from_be_bytes([header[10], header[11]]);
    // HC' = ~(~HC + ~m + m') with m the TTL/protocol word and m' = m − 0x0100,
    // so ~m + m' = 0xFFFF − 0x0100 in one's complement.
    let sum = u32::from(!old) + 0xFEFF;
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let new = !(u16::try_from(sum & 0xffff).unwrap_or(0));
    header[10..12].copy_from_slice(&new.to_be_bytes());
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
