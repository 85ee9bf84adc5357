//! The relay point and the listener point (`spec/mount-relay.md` MR-9..MR-16).
//!
//! One machine, [`Point`], plays either [`Role`]. It owns one UDP socket and
//! uses it for everything: STUN (so the mapping STUN reports is the one that
//! gets punched, ST-13..ST-15), the handshake, keep-alive and the stream.
//!
//! ```text
//! tick (500 ms) ──► STUN Binding ──► GET /Pi (Mount, MyAddr[, Latency, Flag: relay])
//!                                          │ Address: candidates of the other role
//!                                          ▼
//!           hello to every candidate at once, every tick (both NATs open)
//!                 relay: helloListener          listener: helloRelay
//!           on the other's hello, answer; done on the other's answer
//!                 relay: niceToMeetYouListener  listener: niceToMeetYouRelay
//!                                          │
//!               GET /Pi Connected: own,peer ▼
//!           relay streams its source, `-=`CRC32`=-`data, ≤ 512 B per datagram
//! ```
//!
//! A listener serves one relay and stops searching once connected; a relay
//! keeps registering and serves up to `max_listeners` listeners at once, every
//! one of them getting each byte of the source fed after it joined. After the
//! handshake each side repeats its answer every tick as keep-alive; a peer
//! silent for `peer_timeout` is lost, and a listener goes back to searching.
//! A listener that finds no relay within `search_timeout` gives up that search
//! with a reason ([`Event::SearchGaveUp`]) and starts a new one.
//!
//! The source is pulled: the relay asks for data ([`Event::NeedData`]) while it
//! is streaming and its buffer is below half of `source_buffer`, and sends at
//! most `rate` bytes per second (a token bucket; unlimited when `None`). The
//! stream has no retransmission (the seed's protocol has none): pacing is what
//! keeps a receiver's socket buffer from overflowing.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::wire::{self, Datagram, Hello, MAX_DATA, TrackerRequest};
use crate::codec::Parsed;
use crate::codec::http1::{HeadLimits, parse_response_head};
use crate::codec::stun;
use crate::io::{Action, ConnId, IdAllocator, Input, Machine, SocketId};
use crate::stun::client::{self, Step, Transaction, TransactionIds};

/// Which side of a mount a point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Has the stream; serves listeners.
    Relay,
    /// Wants the stream from one relay.
    Listener,
}

impl Role {
    fn hello(self) -> Hello {
        match self {
            Role::Relay => Hello::HelloListener,
            Role::Listener => Hello::HelloRelay,
        }
    }

    fn answer(self) -> Hello {
        match self {
            Role::Relay => Hello::NiceToMeetYouListener,
            Role::Listener => Hello::NiceToMeetYouRelay,
        }
    }

    /// The peer's hello and answer, as this role hears them.
    fn peer_hello(self) -> Hello {
        match self {
            Role::Relay => Hello::HelloRelay,
            Role::Listener => Hello::HelloListener,
        }
    }

    fn peer_answer(self) -> Hello {
        match self {
            Role::Relay => Hello::NiceToMeetYouRelay,
            Role::Listener => Hello::NiceToMeetYouListener,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Relay => "relay",
            Role::Listener => "listener",
        })
    }
}

/// Settings of a point. [`Config::new`] gives the original's timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Relay or listener.
    pub role: Role,
    /// The mount's name (1..=255 bytes).
    pub mount: String,
    /// The tracker's address.
    pub tracker: SocketAddr,
    /// STUN servers; the first one's answer is the address registered. With
    /// two or more, the point also learns whether its NAT maps per destination.
    pub stun: Vec<SocketAddr>,
    /// Where to bind the UDP socket.
    pub bind: SocketAddr,
    /// The keep-alive tick (MR-9): 500 ms.
    pub tick: Duration,
    /// How long a listener searches before it gives up and starts again, and
    /// how long a relay keeps trying an unanswered candidate (MR-11): 10 s.
    pub search_timeout: Duration,
    /// A connected peer silent this long is lost (MR-13): 5 s.
    pub peer_timeout: Duration,
    /// How long one tracker request may take: 5 s.
    pub tracker_timeout: Duration,
    /// STUN retransmission settings (ST-14).
    pub stun_client: client::Config,
    /// Relay: the most listeners served at once (16).
    pub max_listeners: usize,
    /// Relay: start reading the source once this many listeners are connected (1).
    pub min_listeners: usize,
    /// Relay: stream at most this many bytes per second; `None` for no limit.
    pub rate: Option<u64>,
    /// Relay: source bytes held (256 KiB); more are asked for below half.
    pub source_buffer: usize,
    /// Relay: the `Latency` reported; `None` for the STUN round trip in ms.
    pub latency: Option<u32>,
    /// The most unanswered candidates greeted at once (64); a relay's
    /// connected listeners are capped by `max_listeners` instead.
    pub max_candidates: usize,
}

impl Config {
    /// A point of `role` on `mount`, with the original's timers.
    pub fn new(role: Role, mount: &str, tracker: SocketAddr, stun: Vec<SocketAddr>) -> Config {
        Config {
            role,
            mount: mount.to_owned(),
            tracker,
            stun,
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            tick: Duration::from_millis(500),
            search_timeout: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(5),
            tracker_timeout: Duration::from_secs(5),
            stun_client: client::Config::default(),
            max_listeners: 16,
            min_listeners: 1,
            rate: None,
            source_buffer: 256 << 10,
            latency: None,
            max_candidates: 64,
        }
    }
}

/// What the application asks of a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Bind the socket and start searching.
    Start,
    /// Relay: more source bytes. Send them in answer to [`Event::NeedData`]:
    /// the point holds whatever it is fed (it does not cap a feed the
    /// embedder was not asked for), and asks only while it holds less than
    /// half of `source_buffer`.
    Feed(Vec<u8>),
    /// Relay: the source has ended; send what is buffered, ask for no more.
    EndOfSource,
    /// Close everything; [`Event::Stopped`] follows.
    Stop,
}

/// What a point reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The UDP socket is bound.
    Bound(SocketAddr),
    /// The UDP socket could not be bound; the point has stopped.
    BindFailed(String),
    /// STUN reported a (new) public address.
    Mapped(SocketAddr),
    /// Two STUN servers answered: whether the NAT maps endpoint-independently.
    NatMapping {
        /// True when every server saw the same address.
        endpoint_independent: bool,
        /// Each server and the address it saw.
        seen: Vec<(SocketAddr, SocketAddr)>,
    },
    /// A STUN transaction failed.
    StunFailed(String),
    /// The tracker listed a different set of candidates.
    Candidates(Vec<SocketAddr>),
    /// A tracker request failed.
    TrackerFailed(String),
    /// The handshake with `peer` is done.
    Connected(SocketAddr),
    /// A connected peer was lost.
    PeerLost {
        /// Its address.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// Listener: no relay answered within `search_timeout`; a new search starts.
    SearchGaveUp {
        /// How many searches have failed so far.
        attempts: u32,
        /// Why, as precisely as the point can tell.
        reason: String,
    },
    /// Relay: send more source bytes with [`Command::Feed`].
    NeedData,
    /// Relay: the source ended and every byte of it was sent.
    SourceDone {
        /// Source bytes sent.
        bytes: u64,
    },
    /// Listener: stream data that passed its CRC check, in order of arrival.
    Data(Vec<u8>),
    /// The point has closed everything.
    Stopped,
}

/// Counters, for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Stream datagrams sent (one per listener per piece).
    pub datagrams_sent: u64,
    /// Source bytes streamed (counted once per piece, whatever the listeners).
    pub source_bytes_sent: u64,
    /// Stream datagrams received with a good CRC.
    pub datagrams_received: u64,
    /// Data bytes delivered.
    pub bytes_received: u64,
    /// Stream datagrams dropped for a bad CRC (MR-1).
    pub bad_crc: u64,
    /// Datagrams ignored: from strangers, or neither STUN nor ours.
    pub ignored: u64,
    /// Tracker requests answered 200.
    pub registrations: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    /// Sending our hello.
    Hello,
    /// Heard theirs; sending our answer.
    Answered,
    /// Heard their answer (or, listener, their stream).
    Connected,
}

#[derive(Debug, Clone)]
struct Peer {
    state: PeerState,
    added: Instant,
    last_heard: Option<Instant>,
    /// The address the tracker listed (differs after an adoption, MR-11).
    listed: SocketAddr,
}

#[derive(Debug)]
enum Call {
    Register,
    Connected,
}

#[derive(Debug)]
struct TrackerCall {
    conn: ConnId,
    call: Call,
    deadline: Instant,
    request: Vec<u8>,
    buf: Vec<u8>,
}

/// The longest tracker answer read (a full `Address` list of 64 IPv6
/// candidates is about 3 KiB).
const MAX_ANSWER: usize = 64 << 10;

/// The most candidates a point holds back after they failed to answer.
const MAX_SKIPPED: usize = 1024;

/// A partial piece waits this long for more source before it is sent.
const FLUSH_DELAY: Duration = Duration::from_millis(5);

/// The most stream bytes a rate-limited relay sends back to back. The bucket
/// holds 2 ms of the rate (runtimes wake about once a millisecond, so a smaller
/// one would cap the rate), at least 2 and at most 128 pieces: a receiver's
/// default socket buffer on Linux (208 KiB, charged about 1.3 KiB per small
/// datagram) overflowed after about 166 back-to-back datagrams in our tests.
const MAX_BURST: u64 = 128 * MAX_DATA as u64;

/// A relay or listener point.
#[derive(Debug)]
pub struct Point {
    config: Config,
    ids: TransactionIds,
    alloc: IdAllocator,
    socket: Option<SocketId>,
    local: Option<SocketAddr>,
    stopped: bool,
    next_tick: Option<Instant>,
    stun: Vec<Transaction>,
    seen: BTreeMap<SocketAddr, SocketAddr>,
    nat_reported: bool,
    endpoint_independent: Option<bool>,
    public: Option<SocketAddr>,
    rtt_ms: Option<u32>,
    tracker: Option<TrackerCall>,
    reports: VecDeque<SocketAddr>,
    candidates: Vec<SocketAddr>,
    peers: BTreeMap<SocketAddr, Peer>,
    search_started: Option<Instant>,
    /// Candidates left out until the instant given (MR-11).
    skip: BTreeMap<SocketAddr, Instant>,
    /// Tracker answers in the current search.
    search_registrations: u64,
    attempts: u32,
    hints: Vec<String>,
    last_tracker_error: Option<String>,
    last_stun_error: Option<String>,
    // Relay streaming.
    /// Source bytes; `source[source_pos..]` are still to be sent.
    source: Vec<u8>,
    source_pos: usize,
    source_ended: bool,
    source_done: bool,
    asked: bool,
    streaming: bool,
    tokens: u64,
    refilled: Option<Instant>,
    partial_since: Option<Instant>,
    stats: Stats,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Point {
    /// A point with `config`; STUN transaction ids come from `seed`.
    pub fn new(mut config: Config, seed: [u8; 32]) -> Point {
        config.tick = config.tick.max(Duration::from_millis(1));
        config.max_listeners = config.max_listeners.max(1);
        config.min_listeners = config.min_listeners.clamp(1, config.max_listeners);
        config.max_candidates = config.max_candidates.max(1);
        config.source_buffer = config.source_buffer.max(2 * MAX_DATA);
        Point {
            config,
            ids: TransactionIds::new(seed),
            alloc: IdAllocator::default(),
            socket: None,
            local: None,
            stopped: false,
            next_tick: None,
            stun: Vec::new(),
            seen: BTreeMap::new(),
            nat_reported: false,
            endpoint_independent: None,
            public: None,
            rtt_ms: None,
            tracker: None,
            reports: VecDeque::new(),
            candidates: Vec::new(),
            peers: BTreeMap::new(),
            search_started: None,
            skip: BTreeMap::new(),
            search_registrations: 0,
            attempts: 0,
            hints: Vec::new(),
            last_tracker_error: None,
            last_stun_error: None,
            source: Vec::new(),
            source_pos: 0,
            source_ended: false,
            source_done: false,
            asked: false,
            streaming: false,
            tokens: 0,
            refilled: None,
            partial_since: None,
            stats: Stats::default(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The settings in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The public address STUN reported last.
    pub fn public_addr(&self) -> Option<SocketAddr> {
        self.public
    }

    /// The peers the handshake completed with.
    pub fn connected_peers(&self) -> Vec<SocketAddr> {
        self.peers
            .iter()
            .filter(|(_, p)| p.state == PeerState::Connected)
            .map(|(a, _)| *a)
            .collect()
    }

    fn connected_count(&self) -> usize {
        self.peers
            .values()
            .filter(|p| p.state == PeerState::Connected)
            .count()
    }

    /// Whether the point looks for peers now (MR-10): a listener until it is
    /// connected, a relay while it has room for another listener.
    fn searching(&self) -> bool {
        match self.config.role {
            Role::Listener => self.connected_count() == 0,
            // A relay whose source is over has nothing for a new listener.
            Role::Relay => !self.source_done && self.connected_count() < self.config.max_listeners,
        }
    }

    fn send_to(&mut self, to: SocketAddr, data: Vec<u8>) {
        if let Some(socket) = self.socket {
            self.actions.push_back(Action::SendTo { socket, to, data });
        }
    }

    fn send_hello(&mut self, to: SocketAddr, hello: Hello) {
        self.send_to(to, hello.as_bytes().to_vec());
    }

    // ---- ticks -----------------------------------------------------------------

    fn tick(&mut self, now: Instant) {
        self.next_tick = Some(now + self.config.tick);
        let searching = self.searching();
        if searching {
            self.start_stun(now);
            if self.public.is_some() && self.tracker.is_none() {
                self.call_tracker(now);
            }
        }
        if self.config.role == Role::Listener && searching {
            let started = *self.search_started.get_or_insert(now);
            if now.saturating_duration_since(started) >= self.config.search_timeout {
                self.give_up_search(now);
            }
        }
        // Handshake, keep-alive and loss (MR-11..MR-13).
        let mut lost = Vec::new();
        let mut dropped = Vec::new();
        let mut sends = Vec::new();
        for (&addr, peer) in &self.peers {
            match peer.state {
                PeerState::Connected => {
                    let heard = peer.last_heard.unwrap_or(peer.added);
                    if now.saturating_duration_since(heard) >= self.config.peer_timeout {
                        lost.push(addr);
                    } else {
                        sends.push((addr, self.config.role.answer()));
                    }
                }
                PeerState::Hello | PeerState::Answered => {
                    if self.config.role == Role::Relay
                        && now.saturating_duration_since(peer.added) >= self.config.search_timeout
                    {
                        dropped.push(addr);
                    } else if peer.state == PeerState::Hello {
                        sends.push((addr, self.config.role.hello()));
                    } else {
                        sends.push((addr, self.config.role.answer()));
                    }
                }
            }
        }
        for (addr, hello) in sends {
            self.send_hello(addr, hello);
        }
        for addr in dropped {
            if let Some(peer) = self.peers.remove(&addr) {
                self.backoff(peer.listed, now);
            }
        }
        self.skip.retain(|_, until| *until > now);
        for peer in lost {
            self.lose_peer(peer, now);
        }
    }

    /// Leave `listed` out of the next candidate lists for a while, so that
    /// candidates that never answer cannot keep the others from being tried.
    fn backoff(&mut self, listed: SocketAddr, now: Instant) {
        if self.skip.len() < MAX_SKIPPED {
            self.skip
                .insert(listed, now + 3 * self.config.search_timeout);
        }
    }

    fn give_up_search(&mut self, now: Instant) {
        self.attempts += 1;
        let reason = self.search_failure_reason();
        self.events.push_back(Event::SearchGaveUp {
            attempts: self.attempts,
            reason,
        });
        self.peers.clear();
        self.candidates.clear();
        self.hints.clear();
        self.search_started = Some(now);
        self.search_registrations = 0;
    }

    /// Why a listener's search found nothing, as precisely as it can tell.
    fn search_failure_reason(&self) -> String {
        let secs = self.config.search_timeout.as_secs_f64();
        let mut reason = if self.public.is_none() {
            match &self.last_stun_error {
                Some(e) => format!("no public address: {e}"),
                None => format!("no STUN answer within {secs:.1} s"),
            }
        } else if self.search_registrations == 0 {
            match &self.last_tracker_error {
                Some(e) => format!("the tracker did not answer: {e}"),
                None => format!("no tracker answer within {secs:.1} s"),
            }
        } else if self.peers.is_empty() {
            let mut reason = format!(
                "no relay registered on mount {:?} within {secs:.1} s",
                self.config.mount
            );
            if let Some(e) = &self.last_tracker_error {
                reason.push_str(&format!(" (the last tracker request failed: {e})"));
            }
            reason
        } else {
            let list: Vec<String> = self.peers.keys().map(|a| wire::format_addr(*a)).collect();
            format!(
                "no answer within {secs:.1} s from {} relay candidate(s) ({})",
                self.peers.len(),
                list.join(", ")
            )
        };
        if self.endpoint_independent == Some(false) {
            reason.push_str(&format!(
                "; this host's NAT maps each destination to a different public port \
                 (symmetric: {}), so UDP hole punching cannot work through it unless the \
                 relay's NAT filters by IP address only (full-cone or address-restricted)",
                self.seen_list()
            ));
        }
        for hint in &self.hints {
            reason.push_str("; ");
            reason.push_str(hint);
        }
        if !self.peers.is_empty()
            && self.endpoint_independent != Some(false)
            && self.hints.is_empty()
        {
            reason.push_str(
                "; a NAT that maps per destination (symmetric) or a firewall on either side \
                 would explain it",
            );
        }
        reason
    }

    fn seen_list(&self) -> String {
        let seen: Vec<String> = self
            .seen
            .iter()
            .map(|(server, mapped)| format!("{server} saw {mapped}"))
            .collect();
        seen.join(", ")
    }

    fn lose_peer(&mut self, peer: SocketAddr, now: Instant) {
        self.peers.remove(&peer);
        let secs = self.config.peer_timeout.as_secs_f64();
        self.events.push_back(Event::PeerLost {
            peer,
            reason: format!("nothing heard for {secs:.1} s"),
        });
        if self.config.role == Role::Listener && self.connected_count() == 0 {
            // Back to searching (MR-13): a fresh search with fresh candidates.
            self.peers.clear();
            self.candidates.clear();
            self.search_started = Some(now);
            self.search_registrations = 0;
            self.public = None;
            self.seen.clear();
        }
    }

    // ---- STUN ------------------------------------------------------------------

    fn start_stun(&mut self, now: Instant) {
        let Some(local) = self.local else {
            return;
        };
        // One transaction per server at a time: a dead server does not hold
        // back the refresh of a live one (MR-9).
        for server in self.config.stun.clone() {
            if self.stun.iter().any(|tx| tx.server() == server) {
                continue;
            }
            let id = self.ids.next_id();
            let (tx, request) = Transaction::start(id, server, local, self.config.stun_client, now);
            self.stun.push(tx);
            self.send_to(server, request);
        }
    }

    fn stun_timeouts(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.stun.len() {
            match self.stun[i].handle_timeout(now) {
                Some(Step::Send(data)) => {
                    let to = self.stun[i].server();
                    self.send_to(to, data);
                    i += 1;
                }
                Some(Step::Failed(failure)) => {
                    let server = self.stun[i].server();
                    self.stun.swap_remove(i);
                    let text = format!("{server}: {failure}");
                    self.last_stun_error = Some(text.clone());
                    self.events.push_back(Event::StunFailed(text));
                }
                None => i += 1,
            }
        }
    }

    fn stun_datagram(&mut self, message: &stun::Message, now: Instant) {
        let Some(i) = self.stun.iter().position(|tx| tx.matches(message)) else {
            self.stats.ignored += 1;
            return;
        };
        let tx = self.stun.swap_remove(i);
        let server = tx.server();
        match tx.handle_response(message) {
            Some(Ok(mapped)) => {
                self.seen.insert(server, mapped);
                if self.config.stun.first() == Some(&server) {
                    // A retransmitted request's answer says nothing exact
                    // about the round trip (Karn): keep the last estimate.
                    if !tx.retransmitted() {
                        let rtt = now.saturating_duration_since(tx.started());
                        self.rtt_ms = Some(u32::try_from(rtt.as_millis()).unwrap_or(u32::MAX));
                    }
                    if self.public != Some(mapped) {
                        self.public = Some(mapped);
                        self.events.push_back(Event::Mapped(mapped));
                    }
                    if self.searching() && self.tracker.is_none() {
                        self.call_tracker(now);
                    }
                }
                self.check_nat_mapping();
            }
            Some(Err(failure)) => {
                let text = format!("{server}: {failure}");
                self.last_stun_error = Some(text.clone());
                self.events.push_back(Event::StunFailed(text));
            }
            None => {}
        }
    }

    fn check_nat_mapping(&mut self) {
        if self.nat_reported || self.config.stun.len() < 2 {
            return;
        }
        if !self.config.stun.iter().all(|s| self.seen.contains_key(s)) {
            return;
        }
        let mut values = self.seen.values();
        let first = values.next().copied();
        let independent = values.all(|v| Some(*v) == first);
        self.nat_reported = true;
        self.endpoint_independent = Some(independent);
        self.events.push_back(Event::NatMapping {
            endpoint_independent: independent,
            seen: self.seen.iter().map(|(s, m)| (*s, *m)).collect(),
        });
    }

    // ---- tracker ---------------------------------------------------------------

    /// Start the next tracker request: a pending `Connected` report first, else
    /// a registration while searching (MR-10, MR-14).
    fn call_tracker(&mut self, now: Instant) {
        if self.tracker.is_some() || self.stopped {
            return;
        }
        let Some(own) = self.public else {
            return;
        };
        let (call, request) = if let Some(peer) = self.reports.pop_front() {
            (Call::Connected, TrackerRequest::Connected { own, peer })
        } else if self.searching() {
            let relay = self.config.role == Role::Relay;
            let latency = relay.then(|| self.config.latency.or(self.rtt_ms).unwrap_or(0));
            (
                Call::Register,
                TrackerRequest::Register {
                    mount: self.config.mount.clone(),
                    my_addr: own,
                    latency,
                    relay,
                },
            )
        } else {
            return;
        };
        let mut bytes = Vec::new();
        request.encode(&mut bytes);
        let conn = ConnId(self.alloc.next_raw());
        self.actions.push_back(Action::Connect {
            conn,
            addr: self.config.tracker,
        });
        self.tracker = Some(TrackerCall {
            conn,
            call,
            deadline: now + self.config.tracker_timeout,
            request: bytes,
            buf: Vec::new(),
        });
    }

    /// A request failed: close it, say why. A lost `Connected` report is not
    /// retried: the pair's registrations expire anyway once they stop (MR-6).
    fn tracker_failed(&mut self, reason: String) {
        if let Some(call) = self.tracker.take() {
            self.actions.push_back(Action::Close { conn: call.conn });
        }
        self.last_tracker_error = Some(reason.clone());
        self.events.push_back(Event::TrackerFailed(reason));
    }

    fn tracker_input(&mut self, input: Input<'_>, now: Instant) {
        let Some(call) = self.tracker.as_mut() else {
            return;
        };
        match input {
            Input::Connected { conn, .. } if conn == call.conn => {
                let data = std::mem::take(&mut call.request);
                self.actions.push_back(Action::Send { conn, data });
            }
            Input::ConnectFailed { conn, error } if conn == call.conn => {
                self.tracker = None;
                let reason = format!("tracker {}: {error}", self.config.tracker);
                self.last_tracker_error = Some(reason.clone());
                self.events.push_back(Event::TrackerFailed(reason));
            }
            Input::Received { conn, data } if conn == call.conn => {
                call.buf.extend_from_slice(data);
                if call.buf.len() > MAX_ANSWER {
                    self.tracker_failed("tracker answer too long".into());
                    return;
                }
                self.try_answer(false, now);
            }
            Input::Closed { conn } if conn == call.conn => {
                self.try_answer(true, now);
                if self.tracker.take().is_some() {
                    let reason = "the tracker closed the connection without an answer";
                    self.last_tracker_error = Some(reason.into());
                    self.events.push_back(Event::TrackerFailed(reason.into()));
                }
            }
            _ => {}
        }
    }

    /// Act on the tracker's answer once its head is in (a 200) or once the
    /// connection ended (anything else, with the body as the reason).
    fn try_answer(&mut self, closed: bool, now: Instant) {
        let Some(call) = self.tracker.as_ref() else {
            return;
        };
        let head = match parse_response_head(&call.buf, &HeadLimits::default()) {
            Ok(Parsed::Done { value, consumed }) => (value, consumed),
            Ok(Parsed::Incomplete) => {
                if closed {
                    self.tracker = None;
                    let reason = "the tracker closed the connection mid-answer";
                    self.last_tracker_error = Some(reason.into());
                    self.events.push_back(Event::TrackerFailed(reason.into()));
                }
                return;
            }
            Err(e) => {
                self.tracker_failed(format!("bad tracker answer: {e}"));
                return;
            }
        };
        let (head, consumed) = head;
        if head.status != 200 {
            if !closed {
                return;
            }
            let body = String::from_utf8_lossy(&call.buf[consumed..])
                .trim()
                .to_owned();
            self.tracker_failed(format!(
                "tracker answered {} {}: {body}",
                head.status, head.reason
            ));
            return;
        }
        let Some(call) = self.tracker.take() else {
            return;
        };
        if !closed {
            self.actions.push_back(Action::Close { conn: call.conn });
        }
        self.stats.registrations += 1;
        self.search_registrations += 1;
        self.last_tracker_error = None;
        if let Call::Register = call.call {
            let list = head.header_str("Address").unwrap_or("");
            match wire::parse_address_list(list) {
                Ok(addrs) => self.take_candidates(addrs, now),
                Err(e) => {
                    let reason = format!("bad Address list from the tracker: {e:?}");
                    self.last_tracker_error = Some(reason.clone());
                    self.events.push_back(Event::TrackerFailed(reason));
                }
            }
        }
        // A report queued meanwhile goes out at once.
        if !self.reports.is_empty() {
            self.call_tracker(now);
        }
    }

    /// New candidates get a hello at once and on every tick (MR-11).
    fn take_candidates(&mut self, addrs: Vec<SocketAddr>, now: Instant) {
        if addrs != self.candidates {
            self.events.push_back(Event::Candidates(addrs.clone()));
            self.candidates = addrs.clone();
        }
        if !self.searching() {
            return;
        }
        let family = self.local.map(|l| l.is_ipv6());
        for addr in addrs {
            if Some(addr) == self.public
                || self.peers.contains_key(&addr)
                || self.peers.values().any(|p| p.listed == addr)
                || self.skip.contains_key(&addr)
                || family.is_some_and(|v6| v6 != addr.is_ipv6())
            {
                continue;
            }
            let unanswered = self
                .peers
                .values()
                .filter(|p| p.state != PeerState::Connected)
                .count();
            if unanswered >= self.config.max_candidates {
                break;
            }
            if self.config.role == Role::Listener && self.chosen().is_some() {
                break;
            }
            self.peers.insert(
                addr,
                Peer {
                    state: PeerState::Hello,
                    added: now,
                    last_heard: None,
                    listed: addr,
                },
            );
            self.send_hello(addr, self.config.role.hello());
        }
    }

    /// Listener: the relay it answered, if any.
    fn chosen(&self) -> Option<SocketAddr> {
        self.peers
            .iter()
            .find(|(_, p)| p.state != PeerState::Hello)
            .map(|(a, _)| *a)
    }

    // ---- the peer protocol ---------------------------------------------------

    fn peer_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        if !self.peers.contains_key(&from) && !self.adopt(from, data) {
            self.stranger(from);
            return;
        }
        if self.config.role == Role::Listener
            && let Some(chosen) = self.chosen()
            && chosen != from
        {
            self.stats.ignored += 1;
            return;
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.last_heard = Some(now);
        }
        match wire::classify(data) {
            Datagram::General(bytes) => match Hello::parse(bytes) {
                Some(hello) if hello == self.config.role.peer_hello() => {
                    self.heard_hello(from);
                }
                Some(hello) if hello == self.config.role.peer_answer() => {
                    self.heard_answer(from, now);
                }
                _ => self.stats.ignored += 1,
            },
            Datagram::Data(payload) => {
                let state = self.peers.get(&from).map(|p| p.state);
                if self.config.role == Role::Listener
                    && matches!(state, Some(PeerState::Answered | PeerState::Connected))
                {
                    if state == Some(PeerState::Answered) {
                        self.connect(from, now);
                    }
                    self.stats.datagrams_received += 1;
                    self.stats.bytes_received += payload.len() as u64;
                    self.events.push_back(Event::Data(payload.to_vec()));
                } else {
                    self.stats.ignored += 1;
                }
            }
            Datagram::BadCrc { .. } => self.stats.bad_crc += 1,
        }
    }

    /// A handshake string from a candidate's IP at another port: the peer's NAT
    /// gave this path its own port (a symmetric NAT). Where exactly one
    /// unanswered candidate has that IP, the observed address replaces it (a
    /// peer-reflexive candidate, as in ICE), so a symmetric NAT facing a NAT
    /// that filters by IP only still connects (MR-11). Stream data never
    /// adopts.
    fn adopt(&mut self, from: SocketAddr, data: &[u8]) -> bool {
        let Some(hello) = Hello::parse(data) else {
            return false;
        };
        let role = self.config.role;
        if hello != role.peer_hello() && hello != role.peer_answer() {
            return false;
        }
        if role == Role::Listener && self.chosen().is_some() {
            return false;
        }
        let mut same_ip = self
            .peers
            .iter()
            .filter(|(a, p)| a.ip() == from.ip() && p.state == PeerState::Hello)
            .map(|(a, _)| *a);
        let (Some(known), None) = (same_ip.next(), same_ip.next()) else {
            return false;
        };
        if let Some(peer) = self.peers.remove(&known) {
            self.peers.insert(from, peer);
        }
        true
    }

    /// A datagram from an address that is no candidate: ignored (SEED-NOTES),
    /// but a hello from a candidate's IP at another port is a telling sign.
    fn stranger(&mut self, from: SocketAddr) {
        self.stats.ignored += 1;
        let Some(known) = self
            .peers
            .keys()
            .find(|a| a.ip() == from.ip() && a.port() != from.port())
            .copied()
        else {
            return;
        };
        let hint = format!(
            "heard from {from} although the tracker listed {known}: the peer's NAT maps per \
             destination (symmetric)"
        );
        if !self.hints.contains(&hint) && self.hints.len() < 4 {
            self.hints.push(hint);
        }
    }

    fn heard_hello(&mut self, from: SocketAddr) {
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        if peer.state == PeerState::Hello {
            peer.state = PeerState::Answered;
        }
        if self.config.role == Role::Listener {
            // The first relay that answers is the one (MR-12).
            self.peers.retain(|a, _| *a == from);
        }
        self.send_hello(from, self.config.role.answer());
    }

    fn heard_answer(&mut self, from: SocketAddr, now: Instant) {
        let state = self.peers.get(&from).map(|p| p.state);
        if state == Some(PeerState::Connected) {
            return;
        }
        if self.config.role == Role::Listener {
            self.peers.retain(|a, _| *a == from);
            // The relay may not have our answer yet: send it now.
            self.send_hello(from, self.config.role.answer());
        }
        self.connect(from, now);
    }

    fn connect(&mut self, peer: SocketAddr, now: Instant) {
        if self.config.role == Role::Relay && self.connected_count() >= self.config.max_listeners {
            // Full: this one may come back through the tracker later.
            if let Some(p) = self.peers.remove(&peer) {
                self.backoff(p.listed, now);
            }
            return;
        }
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.state = PeerState::Connected;
        p.last_heard = Some(now);
        self.events.push_back(Event::Connected(peer));
        self.reports.push_back(peer);
        self.search_started = None;
        if self.config.role == Role::Listener {
            self.stun.clear();
        }
        self.call_tracker(now);
        if self.config.role == Role::Relay {
            if self.connected_count() >= self.config.min_listeners {
                self.streaming = true;
            }
            self.pump(now);
        }
    }

    // ---- the stream (relay) --------------------------------------------------

    fn refill(&mut self, now: Instant) {
        let Some(rate) = self.config.rate else {
            return;
        };
        let burst = (rate / 500).clamp(2 * MAX_DATA as u64, MAX_BURST);
        let Some(last) = self.refilled else {
            self.refilled = Some(now);
            self.tokens = burst;
            return;
        };
        let elapsed = now.saturating_duration_since(last);
        let earned = u128::from(rate) * elapsed.as_nanos() / 1_000_000_000;
        if earned > 0 {
            let earned = u64::try_from(earned).unwrap_or(u64::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(burst);
            // Keep the remainder: advance by exactly the time the tokens took.
            let used = u128::from(earned) * 1_000_000_000 / u128::from(rate.max(1));
            let used = Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX));
            self.refilled = Some(if self.tokens == burst {
                now
            } else {
                last + used
            });
        }
    }

    /// Send what the buffer, the rate and the listeners allow (MR-15).
    fn pump(&mut self, now: Instant) {
        if self.config.role != Role::Relay || !self.streaming {
            return;
        }
        let listeners = self.connected_peers();
        if listeners.is_empty() {
            return;
        }
        self.refill(now);
        loop {
            let available = self.pending_source();
            if available == 0 {
                self.partial_since = None;
                break;
            }
            let size = available.min(MAX_DATA);
            if size < MAX_DATA && !self.source_ended {
                let since = *self.partial_since.get_or_insert(now);
                if now.saturating_duration_since(since) < FLUSH_DELAY {
                    break;
                }
            }
            if self.config.rate.is_some() && self.tokens < size as u64 {
                break;
            }
            self.tokens = self.tokens.saturating_sub(size as u64);
            self.partial_since = None;
            let piece = &self.source[self.source_pos..self.source_pos + size];
            self.source_pos += size;
            let mut datagram = Vec::with_capacity(wire::HEADER_LEN + size);
            wire::encode_data(piece, &mut datagram);
            if let Some((&last, rest)) = listeners.split_last() {
                for &to in rest {
                    self.send_to(to, datagram.clone());
                }
                self.send_to(last, datagram);
            }
            self.stats.datagrams_sent += listeners.len() as u64;
            self.stats.source_bytes_sent += size as u64;
        }
        self.ask_for_data();
        if self.source_ended && self.pending_source() == 0 && !self.source_done {
            self.source_done = true;
            self.events.push_back(Event::SourceDone {
                bytes: self.stats.source_bytes_sent,
            });
        }
    }

    /// Source bytes not sent yet.
    fn pending_source(&self) -> usize {
        self.source.len() - self.source_pos
    }

    fn ask_for_data(&mut self) {
        if self.streaming
            && !self.source_ended
            && !self.asked
            && self.pending_source() < self.config.source_buffer / 2
        {
            self.asked = true;
            self.events.push_back(Event::NeedData);
        }
    }

    /// When the pump can send next, if it is waiting for tokens or a flush.
    fn pump_deadline(&self) -> Option<Instant> {
        if !self.streaming || self.pending_source() == 0 || self.connected_count() == 0 {
            return None;
        }
        let size = self.pending_source().min(MAX_DATA);
        // A short piece waits for the flush delay, and every piece for its
        // tokens: the later of the two (never one already served).
        let flush = (size < MAX_DATA && !self.source_ended)
            .then_some(self.partial_since)
            .flatten()
            .map(|since| since + FLUSH_DELAY);
        let tokens = match (self.config.rate, self.refilled) {
            (Some(rate), Some(last)) => {
                let missing = (size as u64).saturating_sub(self.tokens);
                // Rounded up, so that at the deadline `refill` has earned them.
                let wait = (u128::from(missing) * 1_000_000_000).div_ceil(u128::from(rate.max(1)));
                let wait = Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX));
                Some(last + wait.max(Duration::from_micros(100)))
            }
            _ => None,
        };
        match (flush, tokens) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        if let Some(call) = self.tracker.take() {
            self.actions.push_back(Action::Close { conn: call.conn });
        }
        if let Some(socket) = self.socket.take() {
            self.actions.push_back(Action::CloseUdp { socket });
        }
        self.peers.clear();
        self.stun.clear();
        self.next_tick = None;
        self.events.push_back(Event::Stopped);
    }
}

impl Machine for Point {
    type Command = Command;
    type Event = Event;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        if self.stopped {
            return;
        }
        match input {
            Input::UdpBound { socket, local } if Some(socket) == self.socket => {
                self.local = Some(local);
                self.events.push_back(Event::Bound(local));
                self.search_started = Some(now);
                self.tick(now);
            }
            Input::UdpBindFailed { socket, error } if Some(socket) == self.socket => {
                self.socket = None;
                self.events.push_back(Event::BindFailed(error.to_owned()));
                self.stop();
            }
            Input::Datagram { socket, from, data } if Some(socket) == self.socket => {
                if stun::is_stun(data) {
                    match stun::parse(data) {
                        Ok(message) => self.stun_datagram(&message, now),
                        Err(_) => self.stats.ignored += 1,
                    }
                } else {
                    self.peer_datagram(from, data, now);
                }
            }
            Input::Connected { .. }
            | Input::ConnectFailed { .. }
            | Input::Received { .. }
            | Input::Closed { .. } => self.tracker_input(input, now),
            _ => {}
        }
        if !self.stopped && self.tracker.is_none() && !self.reports.is_empty() {
            self.call_tracker(now);
        }
    }

    fn handle_command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Start => {
                if self.socket.is_some() || self.stopped {
                    return;
                }
                let socket = SocketId(self.alloc.next_raw());
                self.socket = Some(socket);
                self.actions.push_back(Action::BindUdp {
                    socket,
                    addr: self.config.bind,
                });
            }
            Command::Feed(data) => {
                if self.config.role == Role::Relay && !self.source_ended && !self.stopped {
                    self.asked = false;
                    // Drop what was sent before growing (one move per feed).
                    self.source.drain(..self.source_pos);
                    self.source_pos = 0;
                    self.source.extend_from_slice(&data);
                    self.pump(now);
                }
            }
            Command::EndOfSource => {
                if self.config.role == Role::Relay && !self.source_ended && !self.stopped {
                    self.source_ended = true;
                    self.streaming_end_check(now);
                }
            }
            Command::Stop => self.stop(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.stopped || self.local.is_none() {
            return;
        }
        self.stun_timeouts(now);
        if self
            .tracker
            .as_ref()
            .is_some_and(|call| now >= call.deadline)
        {
            let secs = self.config.tracker_timeout.as_secs_f64();
            self.tracker_failed(format!("no tracker answer within {secs:.1} s"));
        }
        if self.next_tick.is_some_and(|t| now >= t) {
            self.tick(now);
        }
        self.pump(now);
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
            self.next_tick,
            self.stun.iter().map(Transaction::deadline).min(),
            self.tracker.as_ref().map(|c| c.deadline),
            self.pump_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

impl Point {
    fn streaming_end_check(&mut self, now: Instant) {
        if self.streaming {
            self.pump(now);
        } else if self.pending_source() == 0 && !self.source_done {
            self.source_done = true;
            self.events.push_back(Event::SourceDone {
                bytes: self.stats.source_bytes_sent,
            });
        }
    }
}

#[cfg(test)]
mod tests;
