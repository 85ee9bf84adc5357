//! The simulator's NAT model: RFC 4787 mapping and filtering behaviours for UDP.
//!
//! A host put behind a [`Nat`] ([`Sim::set_nat`]) lives in its own private realm:
//! its address is reachable only from itself. A datagram it sends to any other
//! address is translated when sent (the datagram in flight already carries the
//! public source); a datagram that arrives at the NAT's public address is filtered
//! against the mapping's state when it arrives, then handed to the private
//! address. Mappings expire lazily: each operation first drops the mappings that
//! saw no outbound datagram for [`Nat::mapping_timeout`] of virtual time.
//!
//! Public ports come from a per-NAT counter (no random draws), so a trace is the
//! same for the same seed and script, and adding a NAT never shifts the
//! simulation's other random choices.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::Sim;

/// RFC 4787 behaviours.
///
/// | kind                | mapping (RFC 4787 §4.1)        | filtering (§5)                  |
/// |---------------------|--------------------------------|---------------------------------|
/// | `FullCone`          | endpoint-independent           | endpoint-independent (anyone)   |
/// | `AddressRestricted` | endpoint-independent           | address-dependent (remote IP)   |
/// | `PortRestricted`    | endpoint-independent           | address and port-dependent      |
/// | `Symmetric`         | address and port-dependent     | address and port-dependent      |
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NatKind {
    /// One public port per private ip:port; anyone may send to it once it exists.
    FullCone,
    /// One public port per private ip:port; only remote IPs it has sent to may
    /// send to it.
    AddressRestricted,
    /// One public port per private ip:port; only remote ip:ports it has sent to
    /// may send to it.
    PortRestricted,
    /// A fresh public port per (private ip:port, remote ip:port); only that remote
    /// ip:port may send to it.
    Symmetric,
}

impl NatKind {
    /// Every kind, from the most to the least permissive.
    pub const ALL: [NatKind; 4] = [
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// Whether one public port serves every destination (all kinds but `Symmetric`).
    pub fn endpoint_independent_mapping(self) -> bool {
        self != NatKind::Symmetric
    }
}

/// A NAT in front of one host ([`Sim::set_nat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat {
    /// How it maps and filters.
    pub kind: NatKind,
    /// The address the outside sees. One NAT per public IP, and no host may have it.
    pub public_ip: IpAddr,
    /// How long a mapping lives after its last outbound datagram (inbound
    /// datagrams do not refresh it).
    pub mapping_timeout: Duration,
}

impl Nat {
    /// The default [`Nat::mapping_timeout`]: 60 s.
    pub const DEFAULT_MAPPING_TIMEOUT: Duration = Duration::from_secs(60);

    /// A NAT of `kind` at `public_ip` whose mappings live 60 s.
    pub fn new(kind: NatKind, public_ip: IpAddr) -> Nat {
        Nat {
            kind,
            public_ip,
            mapping_timeout: Self::DEFAULT_MAPPING_TIMEOUT,
        }
    }

    /// The same NAT with another mapping timeout.
    pub fn with_mapping_timeout(mut self, timeout: Duration) -> Nat {
        self.mapping_timeout = timeout;
        self
    }
}

/// Where a NAT starts allocating public ports it cannot preserve.
const FIRST_NAT_PORT: u16 = 20000;

/// A mapping's key: the private source, and for `Symmetric` the remote too.
type MapKey = (SocketAddr, Option<SocketAddr>);

#[derive(Debug)]
struct Mapping {
    public_port: u16,
    /// Virtual time of the last outbound datagram through it.
    last_out: Duration,
    /// Every remote sent to through it: the filter's permissions.
    sent_to: BTreeSet<SocketAddr>,
}

#[derive(Debug)]
struct NatBox {
    nat: Nat,
    mappings: BTreeMap<MapKey, Mapping>,
    by_port: BTreeMap<u16, MapKey>,
    next_port: u16,
}

impl NatBox {
    fn live(&self, mapping: &Mapping, now: Duration) -> bool {
        now < mapping.last_out + self.nat.mapping_timeout
    }

    /// Forget the mappings that timed out, freeing their ports.
    fn purge(&mut self, now: Duration) {
        let timeout = self.nat.mapping_timeout;
        let expired: Vec<MapKey> = self
            .mappings
            .iter()
            .filter(|(_, m)| now >= m.last_out + timeout)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(m) = self.mappings.remove(&key) {
                self.by_port.remove(&m.public_port);
            }
        }
    }

    fn key(&self, private: SocketAddr, remote: SocketAddr) -> MapKey {
        if self.nat.kind.endpoint_independent_mapping() {
            (private, None)
        } else {
            (private, Some(remote))
        }
    }

    /// A free public port: the private one if the kind preserves and it is free,
    /// else the next free one from the counter (never the private port for
    /// `Symmetric`).
    fn alloc_port(&mut self, private: SocketAddr) -> u16 {
        let port = private.port();
        if self.nat.kind.endpoint_independent_mapping()
            && port != 0
            && !self.by_port.contains_key(&port)
        {
            return port;
        }
        for _ in 0..=u16::MAX {
            let candidate = self.next_port;
            self.next_port = if candidate == u16::MAX {
                FIRST_NAT_PORT
            } else {
                candidate + 1
            };
            if candidate != port && !self.by_port.contains_key(&candidate) {
                return candidate;
            }
        }
        panic!("nat {}: every public port is mapped", self.nat.public_ip);
    }

    /// Translate an outbound datagram: the public source, and whether the mapping is new.
    fn outbound(
        &mut self,
        private: SocketAddr,
        remote: SocketAddr,
        now: Duration,
    ) -> (SocketAddr, bool) {
        self.purge(now);
        let key = self.key(private, remote);
        let fresh = !self.mappings.contains_key(&key);
        if fresh {
            let public_port = self.alloc_port(private);
            self.by_port.insert(public_port, key);
            self.mappings.insert(
                key,
                Mapping {
                    public_port,
                    last_out: now,
                    sent_to: BTreeSet::new(),
                },
            );
        }
        let mapping = self
            .mappings
            .get_mut(&key)
            .expect("the mapping was just found or made");
        mapping.last_out = now;
        mapping.sent_to.insert(remote);
        (
            SocketAddr::new(self.nat.public_ip, mapping.public_port),
            fresh,
        )
    }

    /// Filter an inbound datagram to the public `port`: the private destination,
    /// or why it was dropped.
    fn inbound(
        &mut self,
        from: SocketAddr,
        port: u16,
        now: Duration,
    ) -> Result<SocketAddr, &'static str> {
        self.purge(now);
        let Some(key) = self.by_port.get(&port) else {
            return Err("filtered (no mapping)");
        };
        let mapping = &self.mappings[key];
        let admitted = match self.nat.kind {
            NatKind::FullCone => true,
            NatKind::AddressRestricted => mapping.sent_to.iter().any(|r| r.ip() == from.ip()),
            NatKind::PortRestricted | NatKind::Symmetric => mapping.sent_to.contains(&from),
        };
        if admitted { Ok(key.0) } else { Err("filtered") }
    }
}

/// Every NAT of a simulation.
#[derive(Debug, Default)]
pub(super) struct Nats {
    /// By the private host behind each.
    by_host: BTreeMap<IpAddr, NatBox>,
    /// Public IP to private host.
    by_public: BTreeMap<IpAddr, IpAddr>,
}

impl Nats {
    /// Whether `ip` is some NAT's public address.
    pub(super) fn is_public(&self, ip: IpAddr) -> bool {
        self.by_public.contains_key(&ip)
    }

    /// The host that really receives what is sent to `ip`: the private host if
    /// `ip` is a NAT's public address, else `ip` itself.
    pub(super) fn real_host(&self, ip: IpAddr) -> IpAddr {
        self.by_public.get(&ip).copied().unwrap_or(ip)
    }
}

impl Sim {
    // ---- NAT ---------------------------------------------------------------------

    /// Put host `host` (a machine's or an endpoint's IP) behind `nat`: from now on
    /// its UDP datagrams to other hosts leave from `nat.public_ip`, datagrams to
    /// that address are filtered as `nat.kind` says, and its own address is
    /// unreachable from other hosts. TCP is not translated.
    ///
    /// Panics if `host` is already behind a NAT or is a NAT's public address, or if
    /// `nat.public_ip` is another NAT's, a known host's, or `host` itself.
    pub fn set_nat(&mut self, host: IpAddr, nat: Nat) {
        let public = nat.public_ip;
        assert!(
            !host.is_unspecified() && !host.is_loopback(),
            "set_nat: {host} is not a host address"
        );
        assert!(
            !public.is_unspecified() && !public.is_loopback(),
            "set_nat: {public} cannot be a public address"
        );
        assert!(
            !self.nats.by_host.contains_key(&host),
            "set_nat: {host} is already behind a NAT"
        );
        assert!(
            !self.nats.is_public(host),
            "set_nat: {host} is a NAT's public address, not a host"
        );
        if let Some(other) = self.nats.by_public.get(&public) {
            panic!(
                "set_nat: public address {public} is already the NAT of {other} (one NAT per public IP)"
            );
        }
        assert!(
            public != host && !self.nats.by_host.contains_key(&public) && !self.known_host(public),
            "set_nat: public address {public} is a host's address"
        );
        self.record(
            format!("nat {public}: {:?} in front of {host}", nat.kind),
            &[],
        );
        self.nats.by_public.insert(public, host);
        self.nats.by_host.insert(
            host,
            NatBox {
                nat,
                mappings: BTreeMap::new(),
                by_port: BTreeMap::new(),
                next_port: FIRST_NAT_PORT,
            },
        );
    }

    /// The public address currently mapped for (private source, remote), if any
    /// (for assertions). Expired mappings count as gone, and a host's datagrams to
    /// itself have none.
    pub fn nat_mapping(&self, host_private: SocketAddr, remote: SocketAddr) -> Option<SocketAddr> {
        if remote.ip() == host_private.ip() {
            return None;
        }
        let nat = self.nats.by_host.get(&host_private.ip())?;
        let mapping = nat.mappings.get(&nat.key(host_private, remote))?;
        nat.live(mapping, self.offset)
            .then(|| SocketAddr::new(nat.nat.public_ip, mapping.public_port))
    }

    /// Whether some machine, endpoint, listener or client already uses `ip`.
    fn known_host(&self, ip: IpAddr) -> bool {
        self.nodes.iter().any(|n| n.ip == ip)
            || self.udp_bound.keys().any(|a| a.ip() == ip)
            || self.tcp_bound.keys().any(|a| a.ip() == ip)
            || self.endpoints.iter().any(|e| e.local.ip() == ip)
            || self.peers.iter().any(|p| p.addr.ip() == ip)
            || self.listeners.iter().any(|l| l.addr.ip() == ip)
    }

    /// A datagram leaves `from` for `to`: its source as the network sees it, or
    /// `None` if it was dropped (recorded) because `to` is a private address.
    pub(super) fn nat_outbound(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        data: &[u8],
    ) -> Option<SocketAddr> {
        if self.nats.by_host.is_empty() {
            return Some(from);
        }
        assert!(
            !self.nats.is_public(from.ip()),
            "udp: {from} sends from a NAT's public address; bind hosts elsewhere"
        );
        if from.ip() == to.ip() {
            // A host talking to itself never reaches its NAT.
            return Some(from);
        }
        let now = self.offset;
        let mut source = from;
        if let Some(nat) = self.nats.by_host.get_mut(&from.ip()) {
            let (public, fresh) = nat.outbound(from, to, now);
            if fresh {
                let line = format!("nat {}: map {from} -> {public} for {to}", public.ip());
                self.record(line, &[]);
            }
            source = public;
        }
        if self.nats.by_host.contains_key(&to.ip()) {
            let line = format!("nat {}: {source} -> {to} unroutable (private)", to.ip());
            self.record(line, data);
            return None;
        }
        Some(source)
    }

    /// A datagram from `from` arrives at `to`: where it is delivered, or `None` if
    /// a NAT filtered it (recorded).
    pub(super) fn nat_inbound(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        data: &[u8],
    ) -> Option<SocketAddr> {
        let Some(&host) = self.nats.by_public.get(&to.ip()) else {
            return Some(to);
        };
        let now = self.offset;
        let nat = self
            .nats
            .by_host
            .get_mut(&host)
            .expect("every public address has its NAT");
        match nat.inbound(from, to.port(), now) {
            Ok(private) => Some(private),
            Err(why) => {
                self.record(format!("nat {}: {from} -> {to} {why}", to.ip()), data);
                None
            }
        }
    }
}
