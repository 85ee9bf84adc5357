//! The server's address book (VPN-V4, VPN-V5): who owns which virtual address,
//! which addresses EXPTTUN has promised and to whom (and under which VMAC), and
//! the address each VMAC last held, bounded and least recently used first out.
//!
//! A promise made under a VMAC does not hold against another connection that
//! presents the same VMAC: VMAC messages can be replayed, so a promise under
//! someone's VMAC must not lock its owner out (VPN-V4). The all-zero VMAC (the
//! original's "none") is no identity and never matches.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::io::ConnId;
use crate::vpn::Network;

/// How many VMAC → address memories the server keeps (VPN-V4).
pub const VMAC_MEMORY: usize = 4096;

/// Owners, reservations and VMAC memories of one network.
#[derive(Debug, Clone)]
pub(super) struct Addresses {
    network: Network,
    /// Addresses of authenticated connections.
    owners: BTreeMap<Ipv4Addr, ConnId>,
    /// Addresses EXPTTUN promised to a connection not yet authenticated, with
    /// the (non-zero) VMAC that connection had presented.
    pending: BTreeMap<Ipv4Addr, (ConnId, Option<[u8; 16]>)>,
    /// VMAC → (last use, address).
    sticky: BTreeMap<[u8; 16], (u64, Ipv4Addr)>,
    /// Last use → VMAC, oldest first, to evict.
    sticky_order: BTreeMap<u64, [u8; 16]>,
    clock: u64,
}

impl Addresses {
    pub(super) fn new(network: Network) -> Addresses {
        Addresses {
            network,
            owners: BTreeMap::new(),
            pending: BTreeMap::new(),
            sticky: BTreeMap::new(),
            sticky_order: BTreeMap::new(),
            clock: 0,
        }
    }

    /// The authenticated connection owning `addr`.
    pub(super) fn owner(&self, addr: Ipv4Addr) -> Option<ConnId> {
        self.owners.get(&addr).copied()
    }

    /// How many addresses authenticated connections hold.
    pub(super) fn owned(&self) -> usize {
        self.owners.len()
    }

    /// Neither owned nor promised to a connection other than `conn`, unless
    /// that promise was made under `vmac` (the VMAC `conn` presented).
    pub(super) fn is_free_for(
        &self,
        addr: Ipv4Addr,
        conn: ConnId,
        vmac: Option<&[u8; 16]>,
    ) -> bool {
        let vmac = identity(vmac);
        !self.owners.contains_key(&addr)
            && self
                .pending
                .get(&addr)
                .is_none_or(|&(c, v)| c == conn || (v.is_some() && v == vmac))
    }

    /// VPN-V4: the requested address if it is a free host, else the one `vmac`
    /// last held if free, else the lowest free host; `None` if the network is full.
    pub(super) fn pick(
        &self,
        conn: ConnId,
        requested: Option<Ipv4Addr>,
        vmac: Option<&[u8; 16]>,
    ) -> Option<Ipv4Addr> {
        let usable =
            |addr: Ipv4Addr| self.network.is_host(addr) && self.is_free_for(addr, conn, vmac);
        if let Some(addr) = requested.filter(|&a| usable(a)) {
            return Some(addr);
        }
        if let Some(addr) = vmac.and_then(|v| self.remembered(v)).filter(|&a| usable(a)) {
            return Some(addr);
        }
        // Each address skipped is held by a connection, so this stops after at
        // most (connections + 1) steps unless the network itself is that small.
        self.network
            .hosts()
            .find(|&a| self.is_free_for(a, conn, vmac))
    }

    /// Promise `addr` to `conn` (which presented `vmac`), dropping whatever it
    /// was promised before; a promise of `addr` to another connection (only
    /// possible under the same VMAC, see [`Addresses::is_free_for`]) is replaced.
    pub(super) fn reserve(
        &mut self,
        conn: ConnId,
        addr: Ipv4Addr,
        previous: Option<Ipv4Addr>,
        vmac: Option<&[u8; 16]>,
    ) {
        if let Some(previous) = previous {
            self.unreserve(conn, previous);
        }
        self.pending.insert(addr, (conn, identity(vmac)));
    }

    /// Forget the promise of `addr` to `conn` (not one to another connection).
    pub(super) fn unreserve(&mut self, conn: ConnId, addr: Ipv4Addr) {
        if self.pending.get(&addr).is_some_and(|&(c, _)| c == conn) {
            self.pending.remove(&addr);
        }
    }

    /// `conn` now owns `addr` (VPN-V5); any promise of `addr` is spent (the
    /// caller checked [`Addresses::is_free_for`]: it was `conn`'s, or made
    /// under `conn`'s VMAC).
    pub(super) fn claim(&mut self, conn: ConnId, addr: Ipv4Addr) {
        self.pending.remove(&addr);
        self.owners.insert(addr, conn);
    }

    /// `conn` no longer owns `addr` (VPN-V9).
    pub(super) fn release(&mut self, conn: ConnId, addr: Ipv4Addr) {
        if self.owners.get(&addr) == Some(&conn) {
            self.owners.remove(&addr);
        }
    }

    /// The address `vmac` last authenticated with, if remembered.
    pub(super) fn remembered(&self, vmac: &[u8; 16]) -> Option<Ipv4Addr> {
        self.sticky.get(vmac).map(|&(_, addr)| addr)
    }

    /// Remember that `vmac` holds `addr`, evicting the least recently used
    /// memory beyond [`VMAC_MEMORY`].
    pub(super) fn remember(&mut self, vmac: [u8; 16], addr: Ipv4Addr) {
        self.clock += 1;
        if let Some((used, _)) = self.sticky.insert(vmac, (self.clock, addr)) {
            self.sticky_order.remove(&used);
        }
        self.sticky_order.insert(self.clock, vmac);
        while self.sticky.len() > VMAC_MEMORY {
            let Some((_, oldest)) = self.sticky_order.pop_first() else {
                break;
            };
            self.sticky.remove(&oldest);
        }
    }

    #[cfg(test)]
    pub(super) fn memories(&self) -> usize {
        debug_assert_eq!(self.sticky.len(), self.sticky_order.len());
        self.sticky.len()
    }

    #[cfg(test)]
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// A VMAC as an identity: the all-zero VMAC is none.
fn identity(vmac: Option<&[u8; 16]>) -> Option<[u8; 16]> {
    vmac.copied().filter(|v| *v != [0; 16])
}
