//! The port relay and the forwarder together in the deterministic simulator,
//! under random connection churn (PR-12, PR-13, PR-15, PR-16).
//!
//! A relay machine and a forwarder machine run on two simulated hosts; the
//! test plays the users (clients of the public port) and the local server (a
//! test listener the forwarder connects to). Each step of a case does one
//! random thing: a user connects, sends, half-closes or vanishes; the local
//! server answers, half-closes or drops a connection; time passes; now and then
//! the forwarder is stopped and started again. At the end every pair must
//! hold PR-12: what one side sent reached the other in order, complete unless
//! the connection was cut (then a prefix), with each FIN behind its bytes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ferry_conformance::sim::{Case, ClientId, NodeId, Property, Sim, SimRng, check};
use ferry_core::port_relay::{Protocol, forwarder, server};

/// A user's first bytes: who it is, so the local side can tell its connections apart.
fn tag(user: usize) -> Vec<u8> {
    format!("user-{user:05}\n").into_bytes()
}

const TAG_LEN: usize = 11;

struct User {
    id: ClientId,
    sent: Vec<u8>,
    fin: bool,
    aborted: bool,
    /// The forwarder was stopped while this user was connected: a cut is allowed.
    stopped: bool,
}

struct Local {
    id: ClientId,
    sent: Vec<u8>,
    fin: bool,
    aborted: bool,
}

struct World {
    sim: Sim,
    forwarder: NodeId<forwarder::Forwarder>,
    local: ferry_conformance::sim::TestListener,
    public: Option<SocketAddr>,
    relay_ip: std::net::IpAddr,
    users: Vec<User>,
    /// Local connections the forwarder opened, by the user tag they carry.
    locals: BTreeMap<usize, Local>,
    untagged: Vec<ClientId>,
    rng: SimRng,
    protocol: Protocol,
}

impl World {
    fn new(case: Case, protocol: Protocol) -> World {
        let mut sim = Sim::new(case.seed);
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&case.seed.to_le_bytes());
        let relay = sim.add_machine(server::Server::new(server::Config::default(), seed));
        sim.command(
            relay,
            server::Command::Listen("0.0.0.0:7000".parse().expect("addr")),
        );
        sim.run_until_idle();
        let relay_addr = sim.listen_addr(relay).expect("the relay listens");
        let local = sim.listen("0.0.0.0:6379".parse().expect("addr"));
        let mut config = forwarder::Config::new(relay_addr, sim.listener_addr(local), protocol);
        config.pool_size = 3;
        let forwarder = sim.add_machine(forwarder::Forwarder::new(config));
        sim.command(forwarder, forwarder::Command::Start);
        let mut world = World {
            sim,
            forwarder,
            local,
            public: None,
            relay_ip: relay_addr.ip(),
            users: Vec::new(),
            locals: BTreeMap::new(),
            untagged: Vec::new(),
            rng: case.rng("scenario"),
            protocol,
        };
        world.settle();
        assert!(world.public.is_some(), "the forwarder got a public port");
        world
    }

    /// Run until idle; take new public ports and new local connections.
    fn settle(&mut self) {
        self.sim.run_until_idle();
        for event in self.sim.events(self.forwarder) {
            if let forwarder::Event::PublicPort { port } = event {
                self.public = Some(SocketAddr::new(self.relay_ip, port));
            }
        }
        while let Some(id) = self.sim.accept(self.local) {
            self.untagged.push(id);
        }
        let sim = &self.sim;
        let mut still = Vec::new();
        for id in std::mem::take(&mut self.untagged) {
            let got = sim.client_received(id);
            if got.len() >= TAG_LEN {
                let user: usize = std::str::from_utf8(&got[5..TAG_LEN - 1])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("a local connection began with {got:?}"));
                let old = self.locals.insert(
                    user,
                    Local {
                        id,
                        sent: Vec::new(),
                        fin: false,
                        aborted: false,
                    },
                );
                assert!(old.is_none(), "user {user} reached the local server twice");
            } else {
                still.push(id);
            }
        }
        self.untagged = still;
    }

    fn step(&mut self) {
        let live_users: Vec<usize> = (0..self.users.len())
            .filter(|&u| !self.users[u].aborted && !self.users[u].fin)
            .collect();
        let live_locals: Vec<usize> = self
            .locals
            .iter()
            .filter(|(_, l)| !l.aborted && !l.fin)
            .map(|(&u, _)| u)
            .collect();
        match self.rng.below(100) {
            0..=14 if live_users.len() < 12 => {
                let public = self.public.expect("a public port");
                let id = self.sim.connect_client(public);
                let user = self.users.len();
                self.sim.client_send(id, &tag(user));
                self.users.push(User {
                    id,
                    sent: tag(user),
                    fin: false,
                    aborted: false,
                    stopped: false,
                });
            }
            15..=49 => {
                if let Some(&u) = self.rng.pick(&live_users) {
                    let n = self.rng.range_usize(1..=3000);
                    let data = self.rng.bytes(n);
                    self.sim.client_send(self.users[u].id, &data);
                    self.users[u].sent.extend_from_slice(&data);
                }
            }
            50..=54 => {
                if let Some(&u) = self.rng.pick(&live_users) {
                    self.sim.client_shutdown(self.users[u].id);
                    self.users[u].fin = true;
                }
            }
            55..=57 => {
                if let Some(&u) = self.rng.pick(&live_users) {
                    self.sim.client_close(self.users[u].id);
                    self.users[u].aborted = true;
                }
            }
            58..=82 => {
                if let Some(&u) = self.rng.pick(&live_locals) {
                    let n = self.rng.range_usize(1..=3000);
                    let data = self.rng.bytes(n);
                    let local = self.locals.get_mut(&u).expect("local");
                    self.sim.client_send(local.id, &data);
                    local.sent.extend_from_slice(&data);
                }
            }
            83..=87 => {
                if let Some(&u) = self.rng.pick(&live_locals) {
                    let local = self.locals.get_mut(&u).expect("local");
                    self.sim.client_shutdown(local.id);
                    local.fin = true;
                }
            }
            88..=89 => {
                if let Some(&u) = self.rng.pick(&live_locals) {
                    let local = self.locals.get_mut(&u).expect("local");
                    self.sim.client_close(local.id);
                    local.aborted = true;
                }
            }
            90 => {
                // The forwarder goes away and comes back: a new public port.
                // Multiplexed users go with it; pool and event users already
                // spliced to the local server are the runtime's and live on.
                let multiplex = self.protocol == Protocol::Multiplex;
                for (u, user) in self.users.iter_mut().enumerate() {
                    if multiplex || !self.locals.contains_key(&u) {
                        user.stopped = true;
                    }
                }
                self.sim.command(self.forwarder, forwarder::Command::Stop);
                self.settle();
                self.sim.command(self.forwarder, forwarder::Command::Start);
            }
            _ => {
                let ms = self.rng.range(0..=400);
                self.sim.advance(Duration::from_millis(ms));
            }
        }
        self.settle();
    }

    /// PR-12 for every pair, once everything settled.
    /// Returns how many pairs were intact (checked byte for byte).
    fn verify(&mut self) -> Result<usize, String> {
        self.sim.advance(Duration::from_secs(1));
        self.settle();
        let mut intact = 0;
        for (u, user) in self.users.iter().enumerate() {
            let to_user = self.sim.client_received(user.id).to_vec();
            let user_eof = self.sim.client_eof(user.id);
            let Some(local) = self.locals.get(&u) else {
                // Never reached the local server: the user must have been cut
                // off (or left, or is still waiting within its bound).
                if !user.aborted && !to_user.is_empty() {
                    return Err(format!("user {u} got bytes without a local connection"));
                }
                continue;
            };
            let at_local = self.sim.client_received(local.id);
            let local_eof = self.sim.client_eof(local.id);
            if !user.sent.starts_with(at_local) {
                return Err(format!(
                    "user {u}: the local server got {} bytes that are not a prefix of the {} sent",
                    at_local.len(),
                    user.sent.len()
                ));
            }
            if !local.sent.starts_with(&to_user) {
                return Err(format!(
                    "user {u}: the user got {} bytes that are not a prefix of the {} the server sent",
                    to_user.len(),
                    local.sent.len()
                ));
            }
            // A cut connection may lose its tail; an intact one loses nothing,
            // and each FIN arrives exactly when it was sent, behind its bytes.
            let cut = user.aborted || local.aborted || user.stopped;
            if cut {
                continue;
            }
            let show = |what: &str| {
                format!(
                    "user {u}: {what} (user sent {} fin {}, local got {} eof {}; local sent {} fin {}, user got {} eof {})",
                    user.sent.len(),
                    user.fin,
                    at_local.len(),
                    local_eof,
                    local.sent.len(),
                    local.fin,
                    to_user.len(),
                    user_eof
                )
            };
            if at_local.len() != user.sent.len() {
                return Err(show("bytes to the local server went missing"));
            }
            if to_user.len() != local.sent.len() {
                return Err(show("bytes to the user went missing"));
            }
            if user.fin != local_eof {
                return Err(show("the user's FIN was not carried exactly"));
            }
            if local.fin != user_eof {
                return Err(show("the server's FIN was not carried exactly"));
            }
            intact += 1;
        }
        Ok(intact)
    }
}

/// Run a case; how many user/server pairs were checked whole.
fn scenario(case: Case, protocol: Protocol) -> Result<usize, String> {
    let mut world = World::new(case, protocol);
    for _ in 0..case.size {
        world.step();
    }
    world.verify()
}

fn property(name: &'static str) -> Property {
    Property {
        test: env!("CARGO_CRATE_NAME"),
        name,
        cases: 24,
        max_size: 300,
    }
}

#[test]
fn pr12_churn_multiplex() {
    check(property("pr12_churn_multiplex"), |case| {
        scenario(case, Protocol::Multiplex).map(drop)
    });
}

#[test]
fn pr12_churn_pool() {
    check(property("pr12_churn_pool"), |case| {
        scenario(case, Protocol::Pool).map(drop)
    });
}

#[test]
fn pr12_churn_event() {
    check(property("pr12_churn_event"), |case| {
        scenario(case, Protocol::Event).map(drop)
    });
}

/// The churn properties are not vacuous: a fixed long case checks many pairs
/// whole (not only cut ones) in each protocol.
#[test]
fn pr12_churn_checks_whole_pairs() {
    for protocol in [Protocol::Multiplex, Protocol::Pool, Protocol::Event] {
        let case = Case {
            seed: 11,
            size: 300,
        };
        let intact = scenario(case, protocol).unwrap_or_else(|e| panic!("{protocol}: {e}"));
        assert!(intact >= 5, "{protocol}: only {intact} pairs checked whole");
    }
}

/// PR-12: a user sends a request and FIN and reads the reply late; the local
/// server answers with more than the relay can hold and FIN. The stream is over
/// on both sides long before the user's socket took the reply: nothing of it
/// may be dropped by an early close (a review found exactly that).
#[test]
fn pr12_a_reply_after_both_fins_reaches_a_slow_user_whole() {
    for protocol in [Protocol::Multiplex, Protocol::Pool, Protocol::Event] {
        let config = ferry_conformance::sim::SimConfig {
            tcp_window: 16 << 10,
            ..Default::default()
        };
        let mut sim = Sim::with_config(7, config);
        let relay = sim.add_machine(server::Server::new(server::Config::default(), [3; 32]));
        sim.command(
            relay,
            server::Command::Listen("0.0.0.0:7000".parse().expect("addr")),
        );
        sim.run_until_idle();
        let relay_addr = sim.listen_addr(relay).expect("listening");
        let local = sim.listen("0.0.0.0:6379".parse().expect("addr"));
        let config = forwarder::Config::new(relay_addr, sim.listener_addr(local), protocol);
        let fwd = sim.add_machine(forwarder::Forwarder::new(config));
        sim.command(fwd, forwarder::Command::Start);
        sim.run_until_idle();
        let port = sim
            .events(fwd)
            .into_iter()
            .find_map(|e| match e {
                forwarder::Event::PublicPort { port } => Some(port),
                _ => None,
            })
            .expect("a public port");
        let user = sim.connect_client(SocketAddr::new(relay_addr.ip(), port));
        sim.client_set_reading(user, false);
        sim.client_send(user, b"GET\n");
        sim.client_shutdown(user);
        sim.run_until_idle();
        let l = sim.accept(local).expect("a local connection");
        sim.run_until_idle();
        assert_eq!(sim.client_received(l), b"GET\n", "{protocol}");
        assert!(sim.client_eof(l), "{protocol}: the user's FIN");
        let reply: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        sim.client_send(l, &reply);
        sim.client_shutdown(l);
        sim.advance(Duration::from_secs(1));
        sim.client_set_reading(user, true);
        sim.advance(Duration::from_secs(1));
        assert!(sim.client_eof(user), "{protocol}: the server's FIN");
        assert!(
            sim.client_received(user) == reply.as_slice(),
            "{protocol}: the user got {} of {} bytes",
            sim.client_received(user).len(),
            reply.len()
        );
    }
}
