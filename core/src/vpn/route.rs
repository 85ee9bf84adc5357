//! The node's peer routes (spec/vpn.md, VPN-R2..VPN-R5): which CONNECTED
//! neighbour to hand a packet to when its destination has no direct path.
//!
//! The table holds the direct delay to each CONNECTED neighbour (its latency
//! probes, VPN-R1) and what each neighbour announced (ROUTE messages).
//!
//! **One relay at most.** A node announces only its *direct* paths
//! (`{dst, next = dst, delay}`, VPN-R3), and uses only such announcements, so
//! every route is either direct or through one neighbour that is itself
//! CONNECTED to the destination. A full distance-vector protocol over these
//! messages counts to infinity when a link in a cycle breaks (the `next`
//! field only rules out two-node loops); two-hop routes cannot, and they cover
//! the case the seed has in mind: two nodes that cannot punch through to each
//! other, both reachable from a third. Every change of a destination's best
//! route is returned for the embedder's events.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::wire::UNREACHABLE;

/// One route: `dst` is reached through `next` with `delay` ms.
/// `delay == UNREACHABLE` withdraws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The destination's virtual address.
    pub dst: Ipv4Addr,
    /// The neighbour packets for `dst` go to (`dst` itself for a direct path).
    pub next: Ipv4Addr,
    /// Delay in ms, [`UNREACHABLE`] for a withdrawal.
    pub delay: u64,
}

/// The table of one node.
#[derive(Debug, Clone)]
pub struct Routes {
    own: Ipv4Addr,
    /// CONNECTED neighbours and their measured delay.
    direct: BTreeMap<Ipv4Addr, u64>,
    /// What each neighbour announced: destination → its delay.
    heard: BTreeMap<Ipv4Addr, BTreeMap<Ipv4Addr, u64>>,
    /// The best route per destination.
    best: BTreeMap<Ipv4Addr, (Ipv4Addr, u64)>,
    /// Most destinations one neighbour may announce (memory bound).
    max_per_neighbour: usize,
}

impl Routes {
    /// An empty table for the node `own`; a neighbour's announcements beyond
    /// `max_per_neighbour` destinations are ignored.
    pub fn new(own: Ipv4Addr, max_per_neighbour: usize) -> Routes {
        Routes {
            own,
            direct: BTreeMap::new(),
            heard: BTreeMap::new(),
            best: BTreeMap::new(),
            max_per_neighbour,
        }
    }

    /// The best route to `dst`: `(next, delay)`.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Option<(Ipv4Addr, u64)> {
        self.best.get(&dst).copied()
    }

    /// Every best route, by destination.
    pub fn table(&self) -> impl Iterator<Item = Route> + '_ {
        self.best
            .iter()
            .map(|(&dst, &(next, delay))| Route { dst, next, delay })
    }

    /// The direct delay to `peer` became `delay` (VPN-R2): `Some` while it is
    /// CONNECTED and measured, `None` once it is not (its announcements go too).
    ///
    /// Returns the announcement to broadcast to every CONNECTED neighbour if
    /// the direct path changed (VPN-R3): `{peer, peer, delay}`, or
    /// `{peer, peer, UNREACHABLE}` when it is lost.
    pub fn set_direct(
        &mut self,
        peer: Ipv4Addr,
        delay: Option<u64>,
        changes: &mut Vec<Route>,
    ) -> Option<Route> {
        if peer == self.own {
            return None;
        }
        let delay = delay.filter(|&delay| delay != UNREACHABLE);
        let old = match delay {
            Some(delay) => self.direct.insert(peer, delay),
            None => self.direct.remove(&peer),
        };
        if old == delay {
            return None;
        }
        let mut affected = vec![peer];
        if delay.is_none() {
            if let Some(heard) = self.heard.remove(&peer) {
                affected.extend(heard.into_keys());
            }
        } else if let Some(heard) = self.heard.get(&peer) {
            affected.extend(heard.keys().copied());
        }
        affected.sort_unstable();
        affected.dedup();
        for dst in affected {
            self.recompute(dst, changes);
        }
        Some(Route {
            dst: peer,
            next: peer,
            delay: delay.unwrap_or(UNREACHABLE),
        })
    }

    /// The announcements a newly CONNECTED neighbour gets (VPN-R3): every
    /// direct path.
    pub fn direct_routes(&self) -> impl Iterator<Item = Route> + '_ {
        self.direct.iter().map(|(&dst, &delay)| Route {
            dst,
            next: dst,
            delay,
        })
    }

    /// Neighbour `from` announced `{dst, next, delay}` (VPN-R4, VPN-R5). Only
    /// a direct path (`next == dst`) is a route; anything else withdraws what
    /// `from` announced for `dst` (a route through us, or through a third node,
    /// is no route for us).
    pub fn announce(
        &mut self,
        from: Ipv4Addr,
        dst: Ipv4Addr,
        next: Ipv4Addr,
        delay: u64,
        changes: &mut Vec<Route>,
    ) {
        if !self.direct.contains_key(&from) || dst == self.own || dst == from {
            return;
        }
        let heard = self.heard.entry(from).or_default();
        let changed = if next != dst || delay == UNREACHABLE {
            heard.remove(&dst).is_some()
        } else {
            let full = heard.len() >= self.max_per_neighbour && !heard.contains_key(&dst);
            !full && heard.insert(dst, delay) != Some(delay)
        };
        if changed {
            self.recompute(dst, changes);
        }
    }

    fn recompute(&mut self, dst: Ipv4Addr, changes: &mut Vec<Route>) {
        let direct = self.direct.get(&dst).map(|&delay| (delay, false, dst));
        let via = self.heard.iter().filter_map(|(&neighbour, heard)| {
            let first = *self.direct.get(&neighbour)?;
            let rest = *heard.get(&dst)?;
            let delay = first.saturating_add(rest);
            (delay != UNREACHABLE).then_some((delay, true, neighbour))
        });
        // Lowest delay; ties: the direct path, then the lower neighbour (VPN-R4).
        let best = direct.into_iter().chain(via).min();
        let old = self.best.get(&dst).copied();
        match best {
            Some((delay, _, next)) => {
                if old != Some((next, delay)) {
                    self.best.insert(dst, (next, delay));
                    changes.push(Route { dst, next, delay });
                }
            }
            None => {
                if let Some((next, _)) = self.best.remove(&dst) {
                    changes.push(Route {
                        dst,
                        next,
                        delay: UNREACHABLE,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
