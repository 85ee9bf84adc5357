//! Routes (VPN-R2..VPN-R5): single-table rules, then whole networks of tables
//! exchanging announcements until quiet, checked for loops.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;

use quickcheck::{QuickCheck, TestResult};

use super::*;

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

fn route(dst: u8, next: u8, delay: u64) -> Route {
    Route {
        dst: ip(dst),
        next: ip(next),
        delay,
    }
}

#[test]
fn vpn_r2_a_connected_neighbour_is_a_direct_route() {
    let mut table = Routes::new(ip(1), 64);
    let mut changes = Vec::new();
    assert_eq!(
        table.set_direct(ip(2), Some(10), &mut changes),
        Some(route(2, 2, 10))
    );
    assert_eq!(changes, [route(2, 2, 10)]);
    assert_eq!(table.next_hop(ip(2)), Some((ip(2), 10)));
    changes.clear();
    assert_eq!(table.set_direct(ip(2), Some(10), &mut changes), None);
    assert_eq!(changes, [], "same delay: no change to announce");
    assert_eq!(
        table.set_direct(ip(2), None, &mut changes),
        Some(route(2, 2, UNREACHABLE))
    );
    assert_eq!(changes, [route(2, 2, UNREACHABLE)]);
    assert_eq!(table.set_direct(ip(2), None, &mut changes), None);
    assert_eq!(table.next_hop(ip(2)), None);
}

#[test]
fn vpn_r4_lowest_delay_wins_ties_prefer_direct_then_lower_neighbour() {
    let mut table = Routes::new(ip(1), 64);
    let mut changes = Vec::new();
    table.set_direct(ip(2), Some(10), &mut changes);
    table.set_direct(ip(3), Some(10), &mut changes);
    table.set_direct(ip(4), Some(30), &mut changes);
    changes.clear();
    // 4 is 30 direct; via 3 it is 10 + 5.
    table.announce(ip(3), ip(4), ip(4), 5, &mut changes);
    assert_eq!(changes, [route(4, 3, 15)]);
    // via 2 is a tie with via 3: the lower neighbour wins.
    changes.clear();
    table.announce(ip(2), ip(4), ip(4), 5, &mut changes);
    assert_eq!(changes, [route(4, 2, 15)]);
    // A direct path as good as any other wins the tie.
    changes.clear();
    table.set_direct(ip(4), Some(15), &mut changes);
    assert_eq!(changes, [route(4, 4, 15)]);
    // A destination known only through a neighbour.
    changes.clear();
    table.announce(ip(3), ip(9), ip(9), 100, &mut changes);
    assert_eq!(changes, [route(9, 3, 110)]);
    // A neighbour's route through a third node is not used (one relay at most).
    changes.clear();
    table.announce(ip(2), ip(11), ip(12), 1, &mut changes);
    assert_eq!(changes, []);
}

#[test]
fn vpn_r5_routes_through_this_node_and_from_strangers_are_ignored() {
    let mut table = Routes::new(ip(1), 64);
    let mut changes = Vec::new();
    table.set_direct(ip(2), Some(10), &mut changes);
    changes.clear();
    table.announce(ip(2), ip(5), ip(1), 3, &mut changes);
    assert_eq!(changes, [], "next = us: split horizon");
    table.announce(ip(7), ip(5), ip(7), 3, &mut changes);
    assert_eq!(changes, [], "7 is not a CONNECTED neighbour");
    table.announce(ip(2), ip(1), ip(2), 3, &mut changes);
    assert_eq!(changes, [], "a route to ourselves");
    // A route learnt, then poisoned by the same neighbour.
    table.announce(ip(2), ip(5), ip(5), 3, &mut changes);
    assert_eq!(changes, [route(5, 2, 13)]);
    changes.clear();
    table.announce(ip(2), ip(5), ip(1), 3, &mut changes);
    assert_eq!(changes, [route(5, 2, UNREACHABLE)]);
}

#[test]
fn vpn_r5_withdrawals_and_lost_neighbours_remove_their_routes() {
    let mut table = Routes::new(ip(1), 64);
    let mut changes = Vec::new();
    table.set_direct(ip(2), Some(10), &mut changes);
    table.announce(ip(2), ip(5), ip(5), 3, &mut changes);
    table.announce(ip(2), ip(6), ip(6), 8, &mut changes);
    changes.clear();
    table.announce(ip(2), ip(5), ip(5), UNREACHABLE, &mut changes);
    assert_eq!(changes, [route(5, 2, UNREACHABLE)]);
    changes.clear();
    table.set_direct(ip(2), None, &mut changes);
    assert_eq!(
        changes,
        [route(2, 2, UNREACHABLE), route(6, 2, UNREACHABLE)]
    );
    assert_eq!(table.table().count(), 0);
    // UNREACHABLE plus anything stays UNREACHABLE.
    table.set_direct(ip(3), Some(u64::MAX - 1), &mut changes);
    changes.clear();
    table.announce(ip(3), ip(8), ip(8), 5, &mut changes);
    assert_eq!(changes, []);
}

#[test]
fn announcements_per_neighbour_are_bounded() {
    let mut table = Routes::new(ip(1), 2);
    let mut changes = Vec::new();
    table.set_direct(ip(2), Some(1), &mut changes);
    for dst in 10..20 {
        table.announce(ip(2), ip(dst), ip(dst), 1, &mut changes);
    }
    assert_eq!(table.table().count(), 3);
}

/// A network of tables: `links` are CONNECTED pairs with a delay; every change
/// is announced to every neighbour, and a newly connected neighbour gets the
/// whole table (VPN-R3). Returns the tables once no message is in flight.
struct Net {
    tables: Vec<Routes>,
    links: BTreeMap<(usize, usize), u64>,
    queue: VecDeque<(usize, usize, Route)>,
    messages: usize,
}

impl Net {
    fn new(n: usize) -> Net {
        Net {
            tables: (0..n).map(|i| Routes::new(ip(i as u8 + 1), 256)).collect(),
            links: BTreeMap::new(),
            queue: VecDeque::new(),
            messages: 0,
        }
    }

    fn neighbours(&self, i: usize) -> Vec<usize> {
        self.links
            .keys()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    fn broadcast(&mut self, from: usize, announcement: Option<Route>) {
        for to in self.neighbours(from) {
            if let Some(route) = announcement {
                self.queue.push_back((from, to, route));
            }
        }
    }

    fn link(&mut self, a: usize, b: usize, delay: u64) {
        self.links.insert((a.min(b), a.max(b)), delay);
        for (x, y) in [(a, b), (b, a)] {
            let mut changes = Vec::new();
            let announcement =
                self.tables[x].set_direct(ip(y as u8 + 1), Some(delay), &mut changes);
            self.broadcast(x, announcement);
            let whole: Vec<Route> = self.tables[x].direct_routes().collect();
            for route in whole {
                self.queue.push_back((x, y, route));
            }
        }
    }

    fn unlink(&mut self, a: usize, b: usize) {
        self.links.remove(&(a.min(b), a.max(b)));
        for (x, y) in [(a, b), (b, a)] {
            let mut changes = Vec::new();
            let announcement = self.tables[x].set_direct(ip(y as u8 + 1), None, &mut changes);
            self.broadcast(x, announcement);
        }
    }

    /// Deliver until quiet; false if it does not settle within `limit` messages.
    fn settle(&mut self, limit: usize) -> bool {
        while let Some((from, to, route)) = self.queue.pop_front() {
            self.messages += 1;
            if self.messages > limit {
                return false;
            }
            if !self.links.contains_key(&(from.min(to), from.max(to))) {
                continue; // in flight on a link that went down
            }
            let mut changes = Vec::new();
            self.tables[to].announce(
                ip(from as u8 + 1),
                route.dst,
                route.next,
                route.delay,
                &mut changes,
            );
        }
        true
    }

    /// Follows next hops from `src` to `dst`, as relaying nodes do: Ok(hops) when it arrives,
    /// Err(path) on a loop or a dead end.
    fn walk(&self, src: usize, dst: usize) -> Result<usize, Vec<usize>> {
        let mut at = src;
        let mut path = vec![src];
        let mut seen = BTreeSet::from([src]);
        while at != dst {
            // As the node does (VPN-S23): a CONNECTED peer is sent to directly.
            let next = if self.delay(at, dst).is_some() {
                dst
            } else {
                let Some((next, _)) = self.tables[at].next_hop(ip(dst as u8 + 1)) else {
                    return Err(path);
                };
                usize::from(next.octets()[3] - 1)
            };
            if !self.links.contains_key(&(at.min(next), at.max(next))) || !seen.insert(next) {
                path.push(next);
                return Err(path);
            }
            path.push(next);
            at = next;
        }
        Ok(path.len() - 1)
    }

    /// Hops between `src` and `dst` in the link graph (breadth first).
    fn distance(&self, src: usize, dst: usize) -> Option<usize> {
        let mut seen = BTreeSet::from([src]);
        let mut frontier = vec![src];
        let mut hops = 0;
        while !frontier.is_empty() {
            if frontier.contains(&dst) {
                return Some(hops);
            }
            hops += 1;
            let mut next = Vec::new();
            for at in frontier {
                for n in self.neighbours(at) {
                    if seen.insert(n) {
                        next.push(n);
                    }
                }
            }
            frontier = next;
        }
        None
    }

    fn delay(&self, a: usize, b: usize) -> Option<u64> {
        self.links.get(&(a.min(b), a.max(b))).copied()
    }

    /// The lowest delay over the direct link and every one-relay path.
    fn best_delay(&self, src: usize, dst: usize) -> Option<u64> {
        let relayed =
            (0..self.tables.len()).filter_map(|n| Some(self.delay(src, n)? + self.delay(n, dst)?));
        self.delay(src, dst).into_iter().chain(relayed).min()
    }

    /// After settling: a pair one or two links apart routes there without a
    /// loop (VPN-R4: at most one relay); any other pair has no route (the
    /// server carries it).
    fn check(&self) -> Result<(), String> {
        let n = self.tables.len();
        for src in 0..n {
            for dst in 0..n {
                if src == dst {
                    continue;
                }
                let distance = self.distance(src, dst);
                let best = self.best_delay(src, dst);
                let delay = self.tables[src].next_hop(ip(dst as u8 + 1)).map(|(_, d)| d);
                if delay != best {
                    return Err(format!("{src}->{dst}: delay {delay:?}, best {best:?}"));
                }
                match (distance, self.walk(src, dst)) {
                    (Some(1 | 2), Ok(hops)) if hops <= 2 => {}
                    (None | Some(3..), Err(path)) if path.len() == 1 => {}
                    (distance, walk) => {
                        return Err(format!(
                            "{src}->{dst}: distance {distance:?}, walk {walk:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[test]
fn vpn_r4_a_chain_routes_through_one_relay_and_forgets_a_cut() {
    let mut net = Net::new(4);
    net.link(0, 1, 10);
    net.link(1, 2, 10);
    net.link(2, 3, 10);
    assert!(net.settle(10_000));
    net.check().unwrap();
    assert_eq!(net.tables[0].next_hop(ip(3)), Some((ip(2), 20)));
    assert_eq!(
        net.tables[0].next_hop(ip(4)),
        None,
        "two relays: the server's job"
    );
    net.unlink(1, 2);
    assert!(net.settle(10_000));
    net.check().unwrap();
    assert_eq!(net.tables[0].next_hop(ip(3)), None);
    assert_eq!(net.tables[1].next_hop(ip(4)), None);
}

#[test]
fn vpn_r5_a_triangle_prefers_the_cheaper_detour_and_survives_a_cut() {
    let mut net = Net::new(3);
    net.link(0, 1, 100);
    net.link(0, 2, 10);
    net.link(1, 2, 10);
    assert!(net.settle(10_000));
    net.check().unwrap();
    assert_eq!(net.tables[0].next_hop(ip(2)), Some((ip(3), 20)));
    net.unlink(1, 2);
    assert!(net.settle(10_000));
    net.check().unwrap();
    assert_eq!(net.tables[0].next_hop(ip(2)), Some((ip(2), 100)));
}

#[test]
fn vpn_r5_random_networks_settle_without_loops() {
    fn prop(nodes: u8, edges: Vec<(u8, u8, u8)>, cuts: Vec<u8>) -> TestResult {
        let n = usize::from(nodes % 6) + 3;
        let mut net = Net::new(n);
        for &(a, b, delay) in &edges {
            let (a, b) = (usize::from(a) % n, usize::from(b) % n);
            if a != b {
                net.link(a, b, u64::from(delay) + 1);
            }
        }
        if !net.settle(200_000) {
            return TestResult::error("did not settle after linking");
        }
        if let Err(e) = net.check() {
            return TestResult::error(e);
        }
        for cut in cuts {
            let links: Vec<(usize, usize)> = net.links.keys().copied().collect();
            if links.is_empty() {
                break;
            }
            let (a, b) = links[usize::from(cut) % links.len()];
            net.unlink(a, b);
            if !net.settle(200_000) {
                return TestResult::error("did not settle after a cut");
            }
            if let Err(e) = net.check() {
                return TestResult::error(e);
            }
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(300)
        .quickcheck(prop as fn(u8, Vec<(u8, u8, u8)>, Vec<u8>) -> TestResult);
}
