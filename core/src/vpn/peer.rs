//! One remote node as this node sees it: the peer state machine of seed 002
//! (spec/vpn.md, VPN-S0..VPN-S23).
//!
//! A [`Peer`] owns no socket and sends nothing itself. The node calls one method
//! per trigger of the state table (a server FORWARD from the peer, a tick, a
//! STUN answer, a heartbeat, the peer's endpoints relayed by the server) and
//! each call appends what the node must do to a `Vec<PeerOut>`: send a
//! heartbeat or a latency probe, tell the peer our endpoints through the
//! server, report a transition. Keeping the table in one small pure type means
//! each row is tested on its own (`peer/tests.rs`), without sockets or crypto.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// The seven states of the seed's peer state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerState {
    /// Nothing known; traffic goes through the server.
    Init,
    /// Waiting for our own public endpoint from STUN.
    Preparing,
    /// Our endpoint sent; the peer's not yet known.
    Synchronizing,
    /// Both endpoints known; punching with heartbeats.
    Connecting,
    /// Heartbeats flow both ways: packets go direct over UDP.
    Connected,
    /// Punching failed; retry after the back-off interval.
    Waiting,
    /// The peer does not do p2p (or we do not); only its own move wakes it.
    Failed,
}

impl PeerState {
    /// The seed's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            PeerState::Init => "INIT",
            PeerState::Preparing => "PREPARING",
            PeerState::Synchronizing => "SYNCHRONIZING",
            PeerState::Connecting => "CONNECTING",
            PeerState::Connected => "CONNECTED",
            PeerState::Waiting => "WAITING",
            PeerState::Failed => "FAILED",
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The state machine's timers (VPN-S0); the defaults are the original's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// How often the node ticks its peers (1 s).
    pub tick: Duration,
    /// PREPARING without progress for this long → FAILED (10 s).
    pub preparing: Duration,
    /// SYNCHRONIZING for this long → FAILED (10 s).
    pub synchronizing: Duration,
    /// CONNECTING for this long → WAITING (10 s).
    pub connecting: Duration,
    /// CONNECTED with no heartbeat for this long → INIT (3 s).
    pub heartbeat_loss: Duration,
    /// WAITING's first interval (30 s); doubles on each WAITING → INIT.
    pub retry_min: Duration,
    /// WAITING's longest interval (1 h).
    pub retry_max: Duration,
    /// A latency probe every this many CONNECTED ticks (60).
    pub probe_every: u32,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            tick: Duration::from_secs(1),
            preparing: Duration::from_secs(10),
            synchronizing: Duration::from_secs(10),
            connecting: Duration::from_secs(10),
            heartbeat_loss: Duration::from_secs(3),
            retry_min: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            probe_every: 60,
        }
    }
}

/// What the node must do for a peer, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOut {
    /// The peer moved from one state to another.
    Transition {
        /// The state left.
        from: PeerState,
        /// The state entered.
        to: PeerState,
    },
    /// Send our public endpoint to the peer through the server (UDP4CONN).
    SendPublic,
    /// Send our LAN endpoint to the peer through the server (LOCALUDP4CONN).
    SendLocal,
    /// Send a heartbeat to `to`.
    Heartbeat {
        /// Where.
        to: SocketAddrV4,
        /// The "heard" flag (VPN-3).
        ack: bool,
    },
    /// Send a latency probe over the direct path (VPN-R1).
    Probe,
}

/// Whether `ip` is in a range the original treats as a LAN address.
pub fn is_private(ip: Ipv4Addr) -> bool {
    ip.is_private() || ip.is_loopback() || ip.is_link_local()
}

/// One remote node's state machine.
#[derive(Debug, Clone)]
pub struct Peer {
    vip: Ipv4Addr,
    state: PeerState,
    /// Last activity: timers count from here (VPN-S0).
    since: Instant,
    retry: Duration,
    public: Option<SocketAddrV4>,
    local: Option<SocketAddrV4>,
    heard: bool,
    /// When a heartbeat last arrived from each candidate (CONNECTED).
    public_heard: Option<Instant>,
    local_heard: Option<Instant>,
    last_heartbeat: Option<Instant>,
    connected_ticks: u32,
    delay_ms: Option<u64>,
    /// When the peer was last heard of (server FORWARD, its endpoints, any
    /// authenticated datagram): how idle it is (VPN-N5).
    last_traffic: Instant,
}

impl Peer {
    /// A peer in INIT.
    pub fn new(vip: Ipv4Addr, timers: &Timers, now: Instant) -> Peer {
        Peer {
            vip,
            state: PeerState::Init,
            since: now,
            retry: timers.retry_min,
            public: None,
            local: None,
            heard: false,
            public_heard: None,
            local_heard: None,
            last_heartbeat: None,
            connected_ticks: 0,
            delay_ms: None,
            last_traffic: now,
        }
    }

    /// Something arrived from the peer at `now` (no state change).
    pub fn note_traffic(&mut self, now: Instant) {
        self.last_traffic = self.last_traffic.max(now);
    }

    /// How long nothing arrived from the peer.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_traffic)
    }

    /// The peer's virtual address.
    pub fn vip(&self) -> Ipv4Addr {
        self.vip
    }

    /// Its state.
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// WAITING's current interval.
    pub fn retry(&self) -> Duration {
        self.retry
    }

    /// Its public candidate, if known.
    pub fn public(&self) -> Option<SocketAddrV4> {
        self.public
    }

    /// Its LAN candidate, if known.
    pub fn local(&self) -> Option<SocketAddrV4> {
        self.local
    }

    /// Whether we have heard its heartbeat (the `ack` we send).
    pub fn heard(&self) -> bool {
        self.heard
    }

    /// The last measured round trip in ms (VPN-R2), while CONNECTED.
    pub fn delay_ms(&self) -> Option<u64> {
        self.delay_ms.filter(|_| self.state == PeerState::Connected)
    }

    /// Records a probe's round trip.
    pub fn set_delay_ms(&mut self, delay: u64) {
        if self.state == PeerState::Connected {
            self.delay_ms = Some(delay);
        }
    }

    /// Where direct packets go: once CONNECTED, the LAN candidate while its
    /// heartbeats arrive, else the public one.
    pub fn endpoint(&self, timers: &Timers, now: Instant) -> Option<SocketAddrV4> {
        if self.state != PeerState::Connected {
            return None;
        }
        let fresh = |at: Option<Instant>| {
            at.is_some_and(|at| now.saturating_duration_since(at) < timers.heartbeat_loss)
        };
        if fresh(self.local_heard) {
            return self.local;
        }
        if fresh(self.public_heard) {
            return self.public;
        }
        self.local.or(self.public)
    }

    fn enter(&mut self, to: PeerState, now: Instant, out: &mut Vec<PeerOut>) {
        let from = self.state;
        self.since = now;
        if matches!(to, PeerState::Init | PeerState::Waiting | PeerState::Failed) {
            self.public = None;
            self.local = None;
            self.heard = false;
            self.public_heard = None;
            self.local_heard = None;
            self.last_heartbeat = None;
            self.delay_ms = None;
        }
        if to == PeerState::Connected {
            self.connected_ticks = 0;
        }
        if from != to {
            out.push(PeerOut::Transition { from, to });
        }
        self.state = to;
    }

    fn reset_retry(&mut self, timers: &Timers) {
        self.retry = timers.retry_min;
    }

    fn elapsed(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }

    /// The server relayed an IPv4 packet from this peer (VPN-S1..S3).
    pub fn on_server_forward(
        &mut self,
        p2p: bool,
        timers: &Timers,
        now: Instant,
        out: &mut Vec<PeerOut>,
    ) {
        if self.state != PeerState::Init {
            return; // VPN-S3
        }
        if p2p {
            self.enter(PeerState::Preparing, now, out); // VPN-S1
        } else {
            self.reset_retry(timers);
            self.enter(PeerState::Failed, now, out); // VPN-S2
        }
    }

    /// The node's periodic tick (VPN-S4, S5, S8, S9, S11, S12, S17..S19).
    /// `stun` says whether a STUN server is configured.
    pub fn on_tick(&mut self, stun: bool, timers: &Timers, now: Instant, out: &mut Vec<PeerOut>) {
        let elapsed = self.elapsed(now);
        match self.state {
            PeerState::Init | PeerState::Failed => {}
            PeerState::Preparing => {
                if !stun || elapsed >= timers.preparing {
                    self.reset_retry(timers);
                    self.enter(PeerState::Failed, now, out); // VPN-S5
                } else if let Some(local) = self.local {
                    out.push(PeerOut::Heartbeat {
                        to: local,
                        ack: self.heard,
                    }); // VPN-S4 (the node sends STUN for all PREPARING peers)
                }
            }
            PeerState::Synchronizing => {
                if elapsed >= timers.synchronizing {
                    self.reset_retry(timers);
                    self.enter(PeerState::Failed, now, out); // VPN-S9
                } else if let Some(local) = self.local {
                    out.push(PeerOut::Heartbeat {
                        to: local,
                        ack: self.heard,
                    }); // VPN-S8
                }
            }
            PeerState::Connecting => {
                if elapsed >= timers.connecting {
                    self.enter(PeerState::Waiting, now, out); // VPN-S12
                } else {
                    for to in [self.public, self.local].into_iter().flatten() {
                        out.push(PeerOut::Heartbeat {
                            to,
                            ack: self.heard,
                        }); // VPN-S11
                    }
                }
            }
            PeerState::Connected => {
                let silent = self
                    .last_heartbeat
                    .is_none_or(|at| now.saturating_duration_since(at) >= timers.heartbeat_loss);
                if silent {
                    self.reset_retry(timers);
                    self.enter(PeerState::Init, now, out); // VPN-S18
                    return;
                }
                if let Some(to) = self.endpoint(timers, now) {
                    out.push(PeerOut::Heartbeat { to, ack: true }); // VPN-S17
                }
                self.connected_ticks += 1;
                if timers.probe_every > 0 && self.connected_ticks.is_multiple_of(timers.probe_every)
                {
                    out.push(PeerOut::Probe);
                }
            }
            PeerState::Waiting => {
                if elapsed >= self.retry {
                    self.retry = self.retry.saturating_mul(2).min(timers.retry_max);
                    self.enter(PeerState::Init, now, out); // VPN-S19
                }
            }
        }
    }

    /// STUN answered with our public endpoint; `self` is PREPARING (VPN-S6, S7).
    pub fn on_stun(&mut self, now: Instant, out: &mut Vec<PeerOut>) {
        if self.state != PeerState::Preparing {
            return;
        }
        out.push(PeerOut::SendPublic);
        if self.public.is_some() {
            self.enter(PeerState::Connecting, now, out); // VPN-S7
        } else {
            self.enter(PeerState::Synchronizing, now, out); // VPN-S6
        }
    }

    /// The server relayed the peer's public endpoint (UDP4CONN; VPN-S10, S20, S21).
    pub fn on_public_endpoint(
        &mut self,
        endpoint: SocketAddrV4,
        p2p: bool,
        now: Instant,
        out: &mut Vec<PeerOut>,
    ) {
        if !p2p {
            return;
        }
        match self.state {
            PeerState::Init | PeerState::Preparing | PeerState::Waiting | PeerState::Failed => {
                if self.state != PeerState::Preparing {
                    self.enter(PeerState::Preparing, now, out);
                } else {
                    self.since = now; // re-entering restarts the timer
                }
                self.public = Some(endpoint);
                out.push(PeerOut::SendLocal); // VPN-S20
            }
            PeerState::Synchronizing => {
                self.public = Some(endpoint);
                self.enter(PeerState::Connecting, now, out); // VPN-S10
            }
            PeerState::Connecting | PeerState::Connected => {
                self.public = Some(endpoint); // VPN-S21
            }
        }
    }

    /// The server relayed the peer's LAN endpoint (LOCALUDP4CONN; VPN-S22):
    /// recorded, except in INIT, WAITING and FAILED (which forget endpoints).
    pub fn on_local_endpoint(&mut self, endpoint: SocketAddrV4) {
        if !matches!(
            self.state,
            PeerState::Init | PeerState::Waiting | PeerState::Failed
        ) {
            self.local = Some(endpoint);
        }
    }

    /// A heartbeat arrived from `from` (VPN-S13..S16).
    pub fn on_heartbeat(
        &mut self,
        from: SocketAddrV4,
        ack: bool,
        now: Instant,
        out: &mut Vec<PeerOut>,
    ) {
        match self.state {
            PeerState::Init | PeerState::Waiting | PeerState::Failed => {} // VPN-S16
            PeerState::Preparing | PeerState::Synchronizing | PeerState::Connecting => {
                self.record(from, now);
                self.heard = true; // VPN-S13
                if ack {
                    self.enter(PeerState::Connected, now, out); // VPN-S14
                    self.last_heartbeat = Some(now);
                    out.push(PeerOut::Probe);
                }
            }
            PeerState::Connected => {
                self.record(from, now); // VPN-S15
                self.since = now;
                self.last_heartbeat = Some(now);
            }
        }
    }

    fn record(&mut self, from: SocketAddrV4, now: Instant) {
        if is_private(*from.ip()) {
            self.local = Some(from);
            self.local_heard = Some(now);
        } else {
            self.public = Some(from);
            self.public_heard = Some(now);
        }
    }
}

#[cfg(test)]
mod tests;
