//! Where packets go (VPN-S23, VPN-R4, VPN-R5): to the TUN, to a CONNECTED
//! peer, through a relaying neighbour, or through the server.

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use super::*;

impl Node {
    pub(super) fn write_tun(&mut self, packet: &[u8]) {
        self.stats.tun_out += 1;
        self.actions.push_back(Action::WriteTun(packet.to_vec()));
    }

    /// [`Node::write_tun`] of `buf[range]`, reusing `buf`.
    pub(super) fn write_tun_owned(&mut self, mut buf: Vec<u8>, range: std::ops::Range<usize>) {
        self.stats.tun_out += 1;
        buf.truncate(range.end);
        buf.drain(..range.start);
        self.actions.push_back(Action::WriteTun(buf));
    }

    pub(super) fn tun_packet(&mut self, data: &[u8], now: Instant) {
        self.stats.tun_in += 1;
        match Ipv4Packet::new_checked(data) {
            Ok(packet) => self.route_packet(packet, None, now),
            Err(_) => self.stats.dropped_bad_packet += 1,
        }
    }

    /// Where a packet goes (VPN-S23, VPN-R4, VPN-R5): `came_from` is the
    /// neighbour that relayed it to us, `None` for our own TUN.
    pub(super) fn route_packet(
        &mut self,
        packet: Ipv4Packet<'_>,
        came_from: Option<Ipv4Addr>,
        now: Instant,
    ) {
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
        // Our own packets go as they are; a relayed one loses a hop (copied).
        let bytes: Cow<'_, [u8]> = if came_from.is_some() {
            let mut bytes = packet.as_bytes().to_vec();
            if bytes[8] < MIN_RELAY_TTL {
                self.stats.dropped_ttl += 1;
                return;
            }
            decrement_ttl(&mut bytes);
            self.stats.relayed += 1;
            Cow::Owned(bytes)
        } else {
            Cow::Borrowed(packet.as_bytes())
        };
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
            let kind = [crate::vpn::wire::peer_kind::FORWARD];
            if self.send_sealed(vip, to, &kind, &bytes) {
                self.stats.direct_out += 1;
                return;
            }
        }
        self.forward_via_server(&bytes);
    }

    /// Seal the plaintext `first ‖ rest` for `vip` and send it to `to`.
    pub(super) fn send_sealed(
        &mut self,
        vip: Ipv4Addr,
        to: SocketAddrV4,
        first: &[u8],
        rest: &[u8],
    ) -> bool {
        let (Some(socket), Some(keys)) = (self.udp, &mut self.keys) else {
            return false;
        };
        let mut out = Vec::new();
        if keys.sealer.seal_parts(vip, first, rest, &mut out).is_err() {
            return false;
        }
        self.actions.push_back(Action::SendTo {
            socket,
            to: SocketAddr::V4(to),
            data: out,
        });
        true
    }

    pub(super) fn forward_via_server(&mut self, packet: &[u8]) {
        let room = self
            .link
            .as_ref()
            .is_some_and(|l| l.unflushed + packet.len() <= self.config.max_queued_bytes);
        if self.login != Login::Ready || !room {
            self.stats.dropped_no_path += 1;
            return;
        }
        let mut out = Vec::with_capacity(packet.len() + 1);
        out.push(crate::vpn::wire::server_kind::FORWARD);
        out.extend_from_slice(packet);
        if self.send_ws(&Message::Binary(out)) {
            self.stats.server_out += 1;
        }
    }
}

/// TTL − 1 with the header checksum updated (RFC 1624).
pub(super) fn decrement_ttl(header: &mut [u8]) {
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
