//! The node's peers: the state machines' triggers and what they ask for
//! (heartbeats, endpoints through the server, probes), STUN, route
//! announcements, and datagrams from peers (spec/vpn.md VPN-S…, VPN-R…).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::*;

/// A peer in INIT or FAILED that nothing came from for this long may be
/// evicted to make room for a new one when the table is full (VPN-N5).
pub(super) const IDLE_PEER: Duration = Duration::from_secs(60);

/// Whether a peer (or a sender without one) may lose its table entry or its
/// datagram opener to a newcomer: INIT or FAILED and idle for [`IDLE_PEER`].
fn evictable(peer: Option<&Peer>, now: Instant) -> bool {
    peer.is_none_or(|p| {
        matches!(p.state(), PeerState::Init | PeerState::Failed) && p.idle_for(now) >= IDLE_PEER
    })
}

impl Node {
    pub(super) fn p2p_on(&self) -> bool {
        self.config.p2p && self.udp_local.is_some()
    }

    /// Runs `f` on the peer `vip` (created in INIT if new and there is room)
    /// and carries out what it asks.
    pub(super) fn with_peer(
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
                // VPN-N5: the most idle INIT/FAILED peer makes room, if any.
                let victim = self
                    .peers
                    .values()
                    .filter(|p| evictable(Some(p), now))
                    .max_by_key(|p| p.idle_for(now))
                    .map(Peer::vip);
                let Some(victim) = victim else {
                    return;
                };
                self.peers.remove(&victim);
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
            peer.note_traffic(now);
            f(peer, &ctx, now, &mut out);
        }
        self.peer_outs(vip, out, now);
    }

    pub(super) fn peer_outs(&mut self, vip: Ipv4Addr, outs: Vec<PeerOut>, now: Instant) {
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
                        self.set_direct(vip, None, now);
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
    pub(super) fn lan_endpoint(&self) -> Option<SocketAddrV4> {
        let ip = match self.link.as_ref()?.local? {
            SocketAddr::V4(v4) => *v4.ip(),
            SocketAddr::V6(_) => return None,
        };
        Some(SocketAddrV4::new(ip, self.udp_local?.port()))
    }

    pub(super) fn send_peer(
        &mut self,
        vip: Ipv4Addr,
        to: SocketAddrV4,
        message: &PeerMessage<'_>,
    ) -> bool {
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

    pub(super) fn send_probe(&mut self, vip: Ipv4Addr, now: Instant) {
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

    pub(super) fn clock_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn set_direct(&mut self, vip: Ipv4Addr, delay: Option<u64>, now: Instant) {
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
            // The real `now`: a LAN endpoint counts only while its heartbeats arrive.
            for n in neighbours {
                self.send_route(n, route, now);
            }
        }
    }

    pub(super) fn send_route(&mut self, to_vip: Ipv4Addr, route: Route, now: Instant) {
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

    pub(super) fn tick(&mut self, now: Instant) {
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

    pub(super) fn start_stun(&mut self, now: Instant) {
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

    pub(super) fn stun_timeout(&mut self, now: Instant) {
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

    pub(super) fn stun_answer(&mut self, message: &stun::Message, now: Instant) {
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

    pub(super) fn datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        if stun::is_stun(data) {
            if let Ok(message) = stun::parse(data) {
                self.stun_answer(&message, now);
            }
            return;
        }
        let own = self.own();
        let network = self.network;
        let peers = &self.peers;
        let Some(keys) = &mut self.keys else {
            return;
        };
        // VPN-C6: a datagram that does not open is counted by the opener and
        // dropped. VPN-C12: a new sender's opener is kept only once its
        // datagram authenticated, and only in room made from idle peers.
        let opened = keys.openers.open_or_admit(
            data,
            |sender| network.is_some_and(|n| n.is_host(sender)) && Some(sender) != own,
            |sender| evictable(peers.get(&sender), now),
        );
        let Ok((sender, plain)) = opened else {
            return;
        };
        if let Some(peer) = self.peers.get_mut(&sender) {
            peer.note_traffic(now);
        }
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
                // VPN-N4: a peer relays only packets from hosts of the overlay.
                if !network.is_some_and(|n| n.is_host(packet.source())) {
                    self.stats.dropped_bad_packet += 1;
                } else if Some(packet.destination()) == own {
                    // Ours (what `route_packet` would write to the TUN): the
                    // plaintext, behind its kind byte, is the write.
                    let len = packet.as_bytes().len();
                    self.write_tun_owned(plain, 1..1 + len);
                } else {
                    self.route_packet(packet, Some(sender), now);
                }
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
                        self.set_direct(sender, Some(rtt), now);
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
}

/// What a peer callback may read of the node.
pub(super) struct PeerCtx<'a> {
    pub(super) p2p_on: bool,
    pub(super) timers: &'a Timers,
}
