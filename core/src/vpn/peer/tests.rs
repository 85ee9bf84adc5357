//! One test per row of the peer state table (spec/vpn.md, VPN-S0..VPN-S22).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::*;
use crate::testing::test_epoch;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn public() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 20), 4000)
}

fn lan() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 7), 4001)
}

struct T {
    peer: Peer,
    timers: Timers,
    now: Instant,
    out: Vec<PeerOut>,
}

impl T {
    fn new() -> T {
        let timers = Timers::default();
        let now = test_epoch();
        T {
            peer: Peer::new(VIP, &timers, now),
            timers,
            now,
            out: Vec::new(),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    fn take(&mut self) -> Vec<PeerOut> {
        std::mem::take(&mut self.out)
    }

    fn forward(&mut self, p2p: bool) -> Vec<PeerOut> {
        self.peer
            .on_server_forward(p2p, &self.timers, self.now, &mut self.out);
        self.take()
    }

    fn tick(&mut self, stun: bool) -> Vec<PeerOut> {
        self.peer
            .on_tick(stun, &self.timers, self.now, &mut self.out);
        self.take()
    }

    fn stun(&mut self) -> Vec<PeerOut> {
        self.peer.on_stun(self.now, &mut self.out);
        self.take()
    }

    fn udp4conn(&mut self, endpoint: SocketAddrV4) -> Vec<PeerOut> {
        self.peer
            .on_public_endpoint(endpoint, true, self.now, &mut self.out);
        self.take()
    }

    fn heartbeat(&mut self, from: SocketAddrV4, ack: bool) -> Vec<PeerOut> {
        self.peer.on_heartbeat(from, ack, self.now, &mut self.out);
        self.take()
    }

    /// INIT → PREPARING → (peer's endpoint known) → CONNECTING.
    fn connecting(&mut self) {
        self.forward(true);
        self.udp4conn(public());
        self.stun();
        assert_eq!(self.peer.state(), PeerState::Connecting);
    }

    fn connected(&mut self) {
        self.connecting();
        self.heartbeat(public(), true);
        assert_eq!(self.peer.state(), PeerState::Connected);
    }
}

fn transition(from: PeerState, to: PeerState) -> PeerOut {
    PeerOut::Transition { from, to }
}

use PeerState::*;

#[test]
fn vpn_s1_server_forward_in_init_starts_preparing() {
    let mut t = T::new();
    assert_eq!(t.peer.state(), Init);
    assert_eq!(t.forward(true), [transition(Init, Preparing)]);
}

#[test]
fn vpn_s2_without_p2p_a_forward_fails_the_peer() {
    let mut t = T::new();
    assert_eq!(t.forward(false), [transition(Init, Failed)]);
    assert_eq!(t.tick(false), []);
}

#[test]
fn vpn_s3_forward_in_other_states_changes_nothing() {
    let mut t = T::new();
    t.forward(true);
    for _ in 0..3 {
        assert_eq!(t.forward(true), []);
        assert_eq!(t.peer.state(), Preparing);
    }
    let mut t = T::new();
    t.connected();
    assert_eq!(t.forward(true), []);
    assert_eq!(t.peer.state(), Connected);
}

#[test]
fn vpn_s4_preparing_ticks_heartbeat_the_lan_candidate_until_the_timer() {
    let mut t = T::new();
    t.forward(true);
    assert_eq!(
        t.tick(true),
        [],
        "no candidate yet: the node sends STUN only"
    );
    t.peer.on_local_endpoint(lan());
    t.advance(Duration::from_secs(1));
    assert_eq!(
        t.tick(true),
        [PeerOut::Heartbeat {
            to: lan(),
            ack: false
        }]
    );
    assert_eq!(t.peer.state(), Preparing);
}

#[test]
fn vpn_s5_preparing_fails_after_ten_seconds_or_without_stun() {
    let mut t = T::new();
    t.forward(true);
    t.advance(Duration::from_millis(9_999));
    assert_eq!(t.tick(true), []);
    t.advance(Duration::from_millis(1));
    assert_eq!(t.tick(true), [transition(Preparing, Failed)]);
    assert_eq!(t.peer.retry(), Duration::from_secs(30));

    let mut t = T::new();
    t.forward(true);
    assert_eq!(t.tick(false), [transition(Preparing, Failed)]);
}

#[test]
fn vpn_s6_stun_answer_without_the_peers_endpoint_synchronizes() {
    let mut t = T::new();
    t.forward(true);
    assert_eq!(
        t.stun(),
        [PeerOut::SendPublic, transition(Preparing, Synchronizing)]
    );
}

#[test]
fn vpn_s7_stun_answer_with_the_peers_endpoint_connects() {
    let mut t = T::new();
    t.forward(true);
    assert_eq!(t.udp4conn(public()), [PeerOut::SendLocal]);
    assert_eq!(
        t.stun(),
        [PeerOut::SendPublic, transition(Preparing, Connecting)]
    );
    // An answer outside PREPARING does nothing.
    assert_eq!(t.stun(), []);
}

#[test]
fn vpn_s8_synchronizing_heartbeats_without_ack() {
    let mut t = T::new();
    t.forward(true);
    t.peer.on_local_endpoint(lan());
    t.stun();
    t.advance(Duration::from_secs(1));
    assert_eq!(
        t.tick(true),
        [PeerOut::Heartbeat {
            to: lan(),
            ack: false
        }]
    );
    assert_eq!(t.peer.state(), Synchronizing);
}

#[test]
fn vpn_s9_synchronizing_fails_after_ten_seconds() {
    let mut t = T::new();
    t.forward(true);
    t.stun();
    t.advance(Duration::from_millis(9_999));
    assert_eq!(t.tick(true), []);
    t.advance(Duration::from_millis(1));
    assert_eq!(t.tick(true), [transition(Synchronizing, Failed)]);
}

#[test]
fn vpn_s10_peers_endpoint_in_synchronizing_connects() {
    let mut t = T::new();
    t.forward(true);
    t.stun();
    assert_eq!(
        t.udp4conn(public()),
        [transition(Synchronizing, Connecting)]
    );
    assert_eq!(t.peer.public(), Some(public()));
}

#[test]
fn vpn_s11_connecting_heartbeats_both_candidates_with_the_heard_flag() {
    let mut t = T::new();
    t.connecting();
    t.peer.on_local_endpoint(lan());
    t.advance(Duration::from_secs(1));
    assert_eq!(
        t.tick(true),
        [
            PeerOut::Heartbeat {
                to: public(),
                ack: false
            },
            PeerOut::Heartbeat {
                to: lan(),
                ack: false
            }
        ]
    );
    t.heartbeat(public(), false);
    t.advance(Duration::from_secs(1));
    assert!(
        t.tick(true)
            .iter()
            .all(|out| matches!(out, PeerOut::Heartbeat { ack: true, .. }))
    );
}

#[test]
fn vpn_s12_connecting_times_out_into_waiting_and_forgets() {
    let mut t = T::new();
    t.connecting();
    t.advance(Duration::from_secs(10));
    assert_eq!(t.tick(true), [transition(Connecting, Waiting)]);
    assert_eq!(t.peer.public(), None);
    assert_eq!(t.peer.local(), None);
}

#[test]
fn vpn_s13_heartbeat_without_ack_records_the_candidate() {
    for setup in [0, 1, 2] {
        let mut t = T::new();
        t.forward(true);
        if setup >= 1 {
            t.stun(); // SYNCHRONIZING
        }
        if setup == 2 {
            t.udp4conn(public()); // CONNECTING
        }
        let state = t.peer.state();
        let other = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 9), 5000);
        assert_eq!(t.heartbeat(other, false), []);
        assert_eq!(t.peer.state(), state);
        assert!(t.peer.heard());
        assert_eq!(t.peer.public(), Some(other));
        assert_eq!(t.heartbeat(lan(), false), []);
        assert_eq!(t.peer.local(), Some(lan()));
    }
}

#[test]
fn vpn_s14_heartbeat_with_ack_connects_and_probes() {
    for setup in [0, 1, 2] {
        let mut t = T::new();
        t.forward(true);
        if setup >= 1 {
            t.stun();
        }
        if setup == 2 {
            t.udp4conn(public());
        }
        let from = t.peer.state();
        assert_eq!(
            t.heartbeat(public(), true),
            [transition(from, Connected), PeerOut::Probe]
        );
        assert_eq!(t.peer.endpoint(&t.timers, t.now), Some(public()));
    }
}

#[test]
fn vpn_s15_connected_heartbeats_restart_the_loss_timer_and_prefer_the_lan() {
    let mut t = T::new();
    t.connected();
    for _ in 0..10 {
        t.advance(Duration::from_secs(2));
        assert_eq!(t.heartbeat(public(), true), []);
        t.tick(true);
        assert_eq!(t.peer.state(), Connected);
    }
    assert_eq!(t.heartbeat(lan(), true), []);
    assert_eq!(t.peer.endpoint(&t.timers, t.now), Some(lan()));
    // The LAN path goes quiet while the public one still works.
    t.advance(Duration::from_secs(2));
    t.heartbeat(public(), true);
    t.advance(Duration::from_secs(2));
    assert_eq!(t.peer.endpoint(&t.timers, t.now), Some(public()));
}

#[test]
fn vpn_s16_heartbeats_in_init_waiting_failed_are_ignored() {
    let mut t = T::new();
    assert_eq!(t.heartbeat(public(), true), []);
    assert_eq!(t.peer.state(), Init);
    assert!(!t.peer.heard());

    let mut t = T::new();
    t.forward(false);
    assert_eq!(t.heartbeat(public(), true), []);
    assert_eq!(t.peer.state(), Failed);

    let mut t = T::new();
    t.connecting();
    t.advance(Duration::from_secs(10));
    t.tick(true);
    assert_eq!(t.heartbeat(public(), true), []);
    assert_eq!(t.peer.state(), Waiting);
}

#[test]
fn vpn_s17_connected_ticks_heartbeat_and_probe_every_sixty() {
    let mut t = T::new();
    t.connected();
    let mut probes = 0;
    for _ in 0..120 {
        t.advance(Duration::from_secs(1));
        t.heartbeat(public(), true);
        let out = t.tick(true);
        assert!(out.contains(&PeerOut::Heartbeat {
            to: public(),
            ack: true
        }));
        probes += out.iter().filter(|o| **o == PeerOut::Probe).count();
    }
    assert_eq!(probes, 2);
}

#[test]
fn vpn_s18_connected_without_heartbeats_falls_back_to_init() {
    let mut t = T::new();
    t.connected();
    t.peer.set_delay_ms(12);
    assert_eq!(t.peer.delay_ms(), Some(12));
    t.advance(Duration::from_millis(2_999));
    assert_eq!(t.peer.state(), Connected);
    t.tick(true);
    assert_eq!(t.peer.state(), Connected);
    t.advance(Duration::from_millis(1));
    assert_eq!(t.tick(true), [transition(Connected, Init)]);
    assert_eq!(t.peer.delay_ms(), None);
    assert_eq!(t.peer.public(), None);
    assert_eq!(t.peer.retry(), Duration::from_secs(30));
}

#[test]
fn vpn_s19_waiting_backs_off_from_thirty_seconds_to_an_hour() {
    let mut t = T::new();
    let mut intervals = Vec::new();
    for _ in 0..9 {
        t.connecting();
        t.advance(Duration::from_secs(10));
        assert_eq!(t.tick(true), [transition(Connecting, Waiting)]);
        let interval = t.peer.retry();
        intervals.push(interval.as_secs());
        t.advance(interval - Duration::from_millis(1));
        assert_eq!(t.tick(true), []);
        t.advance(Duration::from_millis(1));
        assert_eq!(t.tick(true), [transition(Waiting, Init)]);
    }
    assert_eq!(intervals, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]);
}

#[test]
fn vpn_s20_peers_endpoint_wakes_init_waiting_failed_into_preparing() {
    // INIT
    let mut t = T::new();
    assert_eq!(
        t.udp4conn(public()),
        [transition(Init, Preparing), PeerOut::SendLocal]
    );
    // FAILED: the seed's passive re-entry.
    let mut t = T::new();
    t.forward(false);
    assert_eq!(
        t.udp4conn(public()),
        [transition(Failed, Preparing), PeerOut::SendLocal]
    );
    // WAITING
    let mut t = T::new();
    t.connecting();
    t.advance(Duration::from_secs(10));
    t.tick(true);
    assert_eq!(
        t.udp4conn(public()),
        [transition(Waiting, Preparing), PeerOut::SendLocal]
    );
    // PREPARING: stays, and the 10 s restart.
    let mut t = T::new();
    t.forward(true);
    t.advance(Duration::from_secs(9));
    assert_eq!(t.udp4conn(public()), [PeerOut::SendLocal]);
    t.advance(Duration::from_secs(9));
    assert_eq!(t.tick(true), []);
    assert_eq!(t.peer.state(), Preparing);
    // Without p2p nothing moves.
    let mut t = T::new();
    t.forward(false);
    t.peer
        .on_public_endpoint(public(), false, t.now, &mut t.out);
    assert_eq!(t.take(), []);
    assert_eq!(t.peer.state(), Failed);
}

#[test]
fn vpn_s21_peers_endpoint_while_connecting_or_connected_is_recorded() {
    let other = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 9);
    let mut t = T::new();
    t.connecting();
    assert_eq!(t.udp4conn(other), []);
    assert_eq!(t.peer.public(), Some(other));
    let mut t = T::new();
    t.connected();
    assert_eq!(t.udp4conn(other), []);
    assert_eq!(t.peer.state(), Connected);
    assert_eq!(t.peer.public(), Some(other));
}

#[test]
fn vpn_s22_lan_endpoint_is_recorded_outside_idle_states() {
    let mut t = T::new();
    t.peer.on_local_endpoint(lan());
    assert_eq!(t.peer.local(), None, "INIT forgets endpoints");
    t.forward(true);
    t.peer.on_local_endpoint(lan());
    assert_eq!(t.peer.local(), Some(lan()));
}

#[test]
fn vpn_s0_entering_init_waiting_failed_forgets_and_retry_resets() {
    let mut t = T::new();
    // Back off once, then fail from SYNCHRONIZING: the interval resets.
    t.connecting();
    t.advance(Duration::from_secs(10));
    t.tick(true);
    t.advance(Duration::from_secs(30));
    t.tick(true);
    assert_eq!(t.peer.retry(), Duration::from_secs(60));
    t.forward(true);
    t.stun();
    t.advance(Duration::from_secs(10));
    assert_eq!(t.tick(true), [transition(Synchronizing, Failed)]);
    assert_eq!(t.peer.retry(), Duration::from_secs(30));
    assert!(!t.peer.heard());
}

#[test]
fn private_ranges_are_the_originals() {
    for ip in [
        Ipv4Addr::new(10, 1, 2, 3),
        Ipv4Addr::new(172, 16, 0, 1),
        Ipv4Addr::new(172, 31, 255, 255),
        Ipv4Addr::new(192, 168, 0, 1),
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(169, 254, 1, 1),
    ] {
        assert!(is_private(ip), "{ip}");
    }
    for ip in [
        Ipv4Addr::new(172, 32, 0, 1),
        Ipv4Addr::new(198, 51, 100, 1),
        Ipv4Addr::new(8, 8, 8, 8),
    ] {
        assert!(!is_private(ip), "{ip}");
    }
}
