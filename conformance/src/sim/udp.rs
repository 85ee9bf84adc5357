//! The simulator's UDP model: datagrams between bound addresses, each with its
//! own delay, so they can arrive out of order, twice, or not at all.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ferry_core::io::{Input, SocketId};

use super::{Sim, UdpEndpoint};

/// How a path treats datagrams. Every draw comes from the simulation's seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UdpLink {
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is delivered twice.
    pub duplicate: f64,
    /// Shortest one-way delay.
    pub min_delay: Duration,
    /// Longest one-way delay; delays are uniform between the two, so datagrams sent
    /// less than `max_delay - min_delay` apart may be reordered.
    pub max_delay: Duration,
}

impl UdpLink {
    /// No loss, no duplicates, a fixed 1 ms delay.
    pub const PERFECT: UdpLink = UdpLink {
        loss: 0.0,
        duplicate: 0.0,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1),
    };
}

impl Default for UdpLink {
    fn default() -> Self {
        Self::PERFECT
    }
}

/// Who holds a bound UDP address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UdpOwner {
    Node { node: usize, socket: SocketId },
    Endpoint(usize),
}

/// A datagram on its way.
#[derive(Debug, Clone)]
pub(super) struct InFlight {
    pub(super) from: SocketAddr,
    pub(super) to: SocketAddr,
    pub(super) data: Vec<u8>,
}

/// A test-controlled UDP socket.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) local: SocketAddr,
    pub(super) inbox: Vec<(SocketAddr, Vec<u8>)>,
    pub(super) open: bool,
}

impl Sim {
    // ---- UDP ---------------------------------------------------------------------

    /// Bind a test UDP socket at `addr` (`0.0.0.0`: a new host; port 0: ephemeral).
    pub fn udp_bind(&mut self, addr: SocketAddr) -> UdpEndpoint {
        let local = self.test_bind_addr(addr);
        assert!(
            !self.nats.is_public(local.ip()),
            "udp_bind: {local} is a NAT's public address"
        );
        let id = self.endpoints.len();
        if self
            .udp_bound
            .insert(local, UdpOwner::Endpoint(id))
            .is_some()
        {
            panic!("udp_bind: {local} is already bound");
        }
        self.endpoints.push(Endpoint {
            local,
            inbox: Vec::new(),
            open: true,
        });
        UdpEndpoint(id)
    }

    /// Where the test socket is bound.
    pub fn udp_addr(&self, endpoint: UdpEndpoint) -> SocketAddr {
        self.endpoints[endpoint.0].local
    }

    /// Send a datagram from a test socket.
    pub fn udp_send(&mut self, endpoint: UdpEndpoint, to: SocketAddr, data: &[u8]) {
        let from = self.endpoints[endpoint.0].local;
        assert!(
            self.endpoints[endpoint.0].open,
            "udp_send on a closed endpoint"
        );
        self.transmit(from, to, data.to_vec());
    }

    /// Take the datagrams the test socket received: (sender, payload), in arrival order.
    pub fn udp_recv(&mut self, endpoint: UdpEndpoint) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.endpoints[endpoint.0].inbox)
    }

    /// Close a test socket; datagrams to its address are lost from now on.
    pub fn udp_close(&mut self, endpoint: UdpEndpoint) {
        let ep = &mut self.endpoints[endpoint.0];
        ep.open = false;
        let local = ep.local;
        self.udp_bound.remove(&local);
    }

    /// How every UDP path without its own setting behaves from now on.
    pub fn set_udp_link(&mut self, link: UdpLink) {
        self.config.udp = link;
    }

    /// How datagrams between hosts `a` and `b` (both ways) behave from now on.
    pub fn set_udp_path(&mut self, a: IpAddr, b: IpAddr, link: UdpLink) {
        self.udp_paths.insert((a, b), link);
        self.udp_paths.insert((b, a), link);
    }

    pub(super) fn transmit(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        // The path is the one between the real hosts (a NAT's public address
        // stands for the host behind it); a NATed source is translated now, so the
        // datagram travels with its public source (see `nat`).
        let hosts = (from.ip(), self.nats.real_host(to.ip()));
        let Some(from) = self.nat_outbound(from, to, &data) else {
            return;
        };
        let link = self
            .udp_paths
            .get(&hosts)
            .copied()
            .unwrap_or(self.config.udp);
        if self.rng.chance(link.loss) {
            self.record(format!("udp {from} -> {to} lost"), &data);
            return;
        }
        let copies = if self.rng.chance(link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let spread = link.max_delay.saturating_sub(link.min_delay);
            let extra = self
                .rng
                .range(0..=u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX));
            let at = self.offset + link.min_delay + Duration::from_nanos(extra);
            self.seq += 1;
            self.in_flight.insert(
                (at, self.seq),
                InFlight {
                    from,
                    to,
                    data: data.clone(),
                },
            );
        }
    }

    pub(super) fn arrive_datagram(&mut self) {
        let Some((_, datagram)) = self.in_flight.pop_first() else {
            return;
        };
        let InFlight { from, to, data } = datagram;
        // A NAT filters at arrival and hands what it admits to the private address.
        let Some(to) = self.nat_inbound(from, to, &data) else {
            return;
        };
        match self.udp_bound.get(&to).copied() {
            Some(UdpOwner::Node { node, socket }) => self.deliver(
                node,
                Input::Datagram {
                    socket,
                    from,
                    data: &data,
                },
            ),
            Some(UdpOwner::Endpoint(i)) => {
                self.record(format!("u{i} <- {from} {} bytes", data.len()), &data);
                self.endpoints[i].inbox.push((from, data));
            }
            None => self.record(format!("udp {from} -> {to}: nobody bound"), &data),
        }
    }
}
