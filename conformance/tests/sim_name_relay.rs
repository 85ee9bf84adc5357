//! The name relay server (`ferry_core::name_relay::server::Server`) in the
//! deterministic simulator, checked against a reference model
//! (spec/name-relay.md, NR-1..NR-16).
//!
//! Every property draws its cases with quickcheck (a seed and a size) and prints,
//! on failure, the seed and the `FERRY_SIM_SEED=... cargo test ...` line that
//! replays it. Each test's name carries the requirement ids it checks.
//!
//! The model: a map name -> client, per receiver the frames it must get
//! (`{sender}|{len}|{payload}`), the relay's counters, and which connections the
//! relay must close and why. Scenarios settle the simulation after every step, so
//! the model knows the order of everything except frames of one burst from several
//! senders, whose per-sender order is checked (NR-6).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is a panic

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_conformance::sim::{
    self, Case, Chunking, ClientId, NodeId, Property, Sim, SimConfig, SimRng,
};
use ferry_core::ConnId;
use ferry_core::name_relay::client::{Client, ClientCommand, ClientConfig, ClientEvent};
use ferry_core::name_relay::server::{CloseReason, Command, Config, Event, Server, Stats};
use ferry_core::name_relay::wire::WireError;

const TEST: &str = env!("CARGO_CRATE_NAME");
const NS: Duration = Duration::from_nanos(1);

fn property(name: &'static str, cases: u64, max_size: usize) -> Property {
    Property {
        test: TEST,
        name,
        cases,
        max_size,
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

// ---- the relay in a simulation ------------------------------------------------------

struct Relay {
    sim: Sim,
    node: NodeId<Server>,
    addr: SocketAddr,
}

impl Relay {
    fn start(seed: u64, config: Config, sim_config: SimConfig) -> Self {
        let mut sim = Sim::with_config(seed, sim_config);
        let node = sim.add_machine(Server::new(config));
        sim.command(
            node,
            Command::Listen(SocketAddr::from(([127, 0, 0, 1], 8080))),
        );
        sim.run_until_idle();
        let addr = sim.listen_addr(node).expect("the relay listens");
        let events = sim.events(node);
        assert!(
            matches!(events.as_slice(), [Event::Listening { local, .. }] if *local == addr),
            "{events:?}"
        );
        Self { sim, node, addr }
    }

    fn server(&self) -> &Server {
        self.sim.machine(self.node)
    }

    fn stats(&self) -> Stats {
        self.server().stats()
    }

    /// A new client that sends `bytes` at once.
    fn connect(&mut self, bytes: &[u8]) -> ClientId {
        let client = self.sim.connect_client(self.addr);
        if !bytes.is_empty() {
            self.sim.client_send(client, bytes);
        }
        client
    }

    /// The `Closed` events since the last call, as (conn, reason).
    fn closes(&mut self) -> Vec<(ConnId, CloseReason)> {
        self.sim
            .events(self.node)
            .into_iter()
            .filter_map(|e| match e {
                Event::Closed { conn, reason, .. } => Some((conn, reason)),
                _ => None,
            })
            .collect()
    }
}

// ---- the wire, written independently of core's codec -----------------------------------

fn frame(name: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = name.to_vec();
    out.push(b'|');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b'|');
    out.extend_from_slice(payload);
    out
}

fn registration(name: &[u8]) -> Vec<u8> {
    let mut out = name.to_vec();
    out.push(b'|');
    out
}

/// A frame as a client reads it: (sender, payload).
type Delivery = (Vec<u8>, Vec<u8>);

/// Split a relay-to-client stream into frames; an error if it is not a sequence
/// of whole frames.
fn parse_stream(mut bytes: &[u8]) -> Result<Vec<Delivery>, String> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let at = frames.len();
        let bar = bytes
            .iter()
            .position(|&b| b == b'|')
            .ok_or_else(|| format!("frame {at}: no '|' after the sender"))?;
        let (sender, rest) = (&bytes[..bar], &bytes[bar + 1..]);
        let bar = rest
            .iter()
            .position(|&b| b == b'|')
            .ok_or_else(|| format!("frame {at}: no '|' after the length"))?;
        let len: usize = std::str::from_utf8(&rest[..bar])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("frame {at}: bad length {:?}", rest[..bar].escape_ascii()))?;
        let rest = &rest[bar + 1..];
        ensure!(
            rest.len() >= len,
            "frame {at}: {} payload bytes of {len}",
            rest.len()
        );
        frames.push((sender.to_vec(), rest[..len].to_vec()));
        bytes = &rest[len..];
    }
    Ok(frames)
}

fn show(name: &[u8]) -> String {
    format!("\"{}\"", name.escape_ascii())
}

// ---- the reference model ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Open,
    ClosedByRelay,
    ClosedBySelf,
}

/// A frame a receiver must get; frames of one epoch (one settled step) may
/// interleave across senders, never within one sender (NR-6).
#[derive(Debug, Clone)]
struct Expected {
    epoch: u64,
    sender: Vec<u8>,
    payload: Vec<u8>,
}

struct ModelClient {
    id: ClientId,
    name: Option<Vec<u8>>,
    fate: Fate,
    expected: Vec<Expected>,
}

/// What a client sends, as the model understands it.
#[derive(Debug, Clone)]
enum Msg {
    Register(Vec<u8>),
    Frame {
        dest: Vec<u8>,
        payload: Vec<u8>,
    },
    /// Bytes the relay must reject with this error (NR-2, NR-5).
    Malformed {
        bytes: Vec<u8>,
        error: WireError,
    },
}

impl Msg {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Msg::Register(name) => out.extend_from_slice(&registration(name)),
            Msg::Frame { dest, payload } => out.extend_from_slice(&frame(dest, payload)),
            Msg::Malformed { bytes, .. } => out.extend_from_slice(bytes),
        }
    }
}

fn encode(msgs: &[Msg]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    out
}

struct Model {
    config: Config,
    clients: Vec<ModelClient>,
    names: BTreeMap<Vec<u8>, usize>,
    /// Connections the relay holds.
    open: usize,
    stats: Stats,
    epoch: u64,
    /// Closes the relay must report for the current step: (client, reason).
    closes: Vec<(usize, CloseReason)>,
    rejected_duplicates: usize,
}

impl Model {
    fn new(config: Config) -> Self {
        Self {
            config,
            clients: Vec::new(),
            names: BTreeMap::new(),
            open: 0,
            stats: Stats::default(),
            epoch: 0,
            closes: Vec::new(),
            rejected_duplicates: 0,
        }
    }

    /// A new connection; `false` if the relay must refuse it (NR-13).
    fn accept(&mut self, id: ClientId) -> usize {
        let c = self.clients.len();
        self.clients.push(ModelClient {
            id,
            name: None,
            fate: Fate::Open,
            expected: Vec::new(),
        });
        if self.open >= self.config.max_connections {
            self.relay_closes(
                c,
                CloseReason::TooManyConnections(self.config.max_connections),
            );
        } else {
            self.open += 1;
        }
        c
    }

    fn relay_closes(&mut self, c: usize, reason: CloseReason) {
        let client = &mut self.clients[c];
        if client.fate != Fate::Open {
            return;
        }
        client.fate = Fate::ClosedByRelay;
        if !matches!(reason, CloseReason::TooManyConnections(_)) {
            self.open -= 1;
        }
        if let Some(name) = client.name.take() {
            self.names.remove(&name); // NR-14
        }
        self.stats.closed_by_relay += 1;
        self.closes.push((c, reason));
    }

    fn client_closes(&mut self, c: usize) {
        let client = &mut self.clients[c];
        assert_eq!(client.fate, Fate::Open);
        client.fate = Fate::ClosedBySelf;
        if let Some(name) = client.name.take() {
            self.names.remove(&name); // NR-14
        }
        self.open -= 1;
        self.closes.push((c, CloseReason::PeerClosed));
    }

    /// The relay reads `msgs` from client `c`, in order.
    fn feed(&mut self, c: usize, msgs: &[Msg]) {
        for msg in msgs {
            if self.clients[c].fate != Fate::Open {
                return; // NR-7: what follows a rejected name is discarded
            }
            match msg {
                Msg::Register(name) => {
                    assert!(self.clients[c].name.is_none(), "model: registers twice");
                    if self.names.contains_key(name) {
                        let shown = String::from_utf8_lossy(name).into_owned();
                        self.rejected_duplicates += 1;
                        self.relay_closes(c, CloseReason::DuplicateName(shown)); // NR-7
                    } else {
                        self.names.insert(name.clone(), c);
                        self.clients[c].name = Some(name.clone());
                    }
                }
                Msg::Frame { dest, payload } => {
                    let sender = self.clients[c]
                        .name
                        .clone()
                        .expect("model: frame before name");
                    if *dest == sender && payload.is_empty() {
                        self.stats.keepalives += 1; // NR-10
                    } else if let Some(&r) = self.names.get(dest) {
                        // NR-6 (and NR-15 when r == c)
                        self.clients[r].expected.push(Expected {
                            epoch: self.epoch,
                            sender,
                            payload: payload.clone(),
                        });
                        self.stats.frames_delivered += 1;
                        self.stats.bytes_delivered += payload.len() as u64;
                    } else {
                        self.stats.frames_dropped += 1; // NR-8
                    }
                }
                Msg::Malformed { error, .. } => {
                    self.relay_closes(c, CloseReason::Malformed(error.clone())); // NR-5
                }
            }
        }
    }

    fn open_named(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&c| self.clients[c].fate == Fate::Open && self.clients[c].name.is_some())
            .collect()
    }
}

/// Check a receiver's bytes against the model: whole frames (NR-6), the frames of
/// each step in the model's order per sender, nothing missing, nothing extra.
fn check_stream(actual: &[u8], expected: &[Expected]) -> Result<(), String> {
    let frames = parse_stream(actual)?;
    let mut at = 0;
    while at < expected.len() {
        let epoch = expected[at].epoch;
        let end = at
            + expected[at..]
                .iter()
                .take_while(|e| e.epoch == epoch)
                .count();
        ensure!(
            frames.len() >= end,
            "got {} frames, expected {} (missing from step {epoch} on: {} from {})",
            frames.len(),
            expected.len(),
            expected[frames.len().max(at)].payload.len(),
            show(&expected[frames.len().max(at)].sender)
        );
        let mut want: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
        let mut got: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
        for e in &expected[at..end] {
            want.entry(&e.sender).or_default().push(&e.payload);
        }
        for (sender, payload) in &frames[at..end] {
            got.entry(sender).or_default().push(payload);
        }
        if want != got {
            let summary = |m: &BTreeMap<&[u8], Vec<&[u8]>>| {
                m.iter()
                    .map(|(s, p)| {
                        format!(
                            "{}: {:?}",
                            show(s),
                            p.iter().map(|p| p.len()).collect::<Vec<_>>()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            // The first payload that differs, and where.
            let mut first = String::new();
            for (sender, payloads) in &want {
                let theirs = got.get(sender).map(Vec::as_slice).unwrap_or_default();
                let mismatch = payloads
                    .iter()
                    .zip(theirs)
                    .enumerate()
                    .find(|(_, (a, b))| a != b);
                if let Some((i, (a, b))) = mismatch {
                    let byte = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
                    first = format!("; frame {i} from {} differs at byte {byte}", show(sender));
                    break;
                }
            }
            return Err(format!(
                "frames {at}..{end} (step {epoch}) differ: expected {{{}}} got {{{}}} (payload lengths){first}",
                summary(&want),
                summary(&got)
            ));
        }
        at = end;
    }
    ensure!(
        frames.len() == expected.len(),
        "got {} frames, expected {}; first extra from {} ({} bytes)",
        frames.len(),
        expected.len(),
        show(&frames[expected.len()].0),
        frames[expected.len()].1.len()
    );
    Ok(())
}

// ---- random scenarios of clients, names and frames --------------------------------------

/// How often each step is drawn.
#[derive(Debug, Clone, Copy)]
struct Mix {
    connect: u64,
    send: u64,
    burst: u64,
    close: u64,
    malformed: u64,
    /// Set `max_connections` below the number of clients (NR-13).
    limit: bool,
    /// Names in the pool beyond the number of clients (fewer: more collisions).
    spare_names: usize,
}

const FRAMES: Mix = Mix {
    connect: 3,
    send: 8,
    burst: 3,
    close: 0,
    malformed: 0,
    limit: false,
    spare_names: 3,
};

/// Few names and many connects and closes: collisions and reuse (NR-7, NR-14).
const NAMES: Mix = Mix {
    connect: 6,
    send: 3,
    burst: 1,
    close: 3,
    malformed: 0,
    limit: false,
    spare_names: 0,
};

struct Scenario {
    relay: Relay,
    rng: SimRng,
    model: Model,
    mix: Mix,
    max_open: usize,
    pool: Vec<Vec<u8>>,
    log: Vec<String>,
}

fn gen_name(rng: &mut SimRng, max_len: usize) -> Vec<u8> {
    let len = match rng.below(5) {
        0 => max_len,
        1 => 1,
        _ => rng.range_usize(1..=max_len.min(10)),
    };
    (0..len)
        .map(|_| {
            loop {
                let b = if rng.chance(0.3) {
                    rng.below(256) as u8
                } else {
                    b'a' + rng.below(26) as u8
                };
                if b != b'|' {
                    break b;
                }
            }
        })
        .collect()
}

fn gen_payload(rng: &mut SimRng, max_len: usize) -> Vec<u8> {
    let len = match rng.below(50) {
        0..=4 => 0,
        5..=24 => rng.range_usize(1..=16),
        25..=40 => rng.range_usize(17..=512),
        41..=48 => rng.range_usize(513..=4096),
        _ => rng.range_usize(4097..=max_len.max(4097)),
    }
    .min(max_len);
    let mut payload = rng.bytes(len);
    for b in &mut payload {
        if rng.chance(0.1) {
            *b = b'|'; // separators inside payloads must not confuse anyone
        }
    }
    payload
}

impl Scenario {
    fn new(case: Case, mix: Mix, chunking: Chunking) -> Self {
        let mut rng = case.rng("scenario");
        let max_open = rng.range_usize(2..=8);
        let max_name_len = if rng.chance(0.5) {
            255
        } else {
            rng.range_usize(3..=32)
        };
        let config = Config {
            max_name_len,
            max_frame_len: rng.range_usize(4096..=70_000),
            max_connections: if mix.limit {
                rng.range_usize(1..=max_open)
            } else {
                10_000
            },
            ..Config::default()
        };
        let sim_config = SimConfig {
            chunking,
            max_chunk: *rng.pick(&[7, 512, 16 << 10]).expect("non-empty"),
            ..SimConfig::default()
        };
        let mut pool: Vec<Vec<u8>> = Vec::new();
        while pool.len() < max_open + mix.spare_names {
            let name = gen_name(&mut rng, max_name_len);
            if !pool.contains(&name) {
                pool.push(name);
            }
        }
        let relay = Relay::start(case.seed, config.clone(), sim_config);
        Self {
            relay,
            rng,
            model: Model::new(config),
            mix,
            max_open,
            pool,
            log: Vec::new(),
        }
    }

    fn config(&self) -> &Config {
        &self.model.config
    }

    /// A frame from `sender`: to a holder, to itself, to nobody, or a keep-alive.
    fn gen_frame(&mut self, sender: &[u8]) -> Msg {
        let held: Vec<Vec<u8>> = self.model.names.keys().cloned().collect();
        let max_len = self.config().max_frame_len;
        let max_name = self.config().max_name_len;
        let dest = match self.rng.below(20) {
            0..=2 => {
                return Msg::Frame {
                    dest: sender.to_vec(),
                    payload: Vec::new(),
                };
            } // NR-10
            3..=11 => self
                .rng
                .pick(&held)
                .cloned()
                .unwrap_or_else(|| sender.to_vec()),
            12..=13 => sender.to_vec(), // NR-15
            14..=17 => self.rng.pick(&self.pool).cloned().expect("pool"),
            _ => gen_name(&mut self.rng, max_name), // most likely nobody's (NR-8)
        };
        let payload = gen_payload(&mut self.rng, max_len);
        Msg::Frame { dest, payload }
    }

    fn gen_frames(&mut self, sender: &[u8], at_most: u64) -> Vec<Msg> {
        let n = self.rng.range(1..=at_most);
        (0..n).map(|_| self.gen_frame(sender)).collect()
    }

    /// Bytes the relay must reject, and the error (NR-2, NR-5).
    fn gen_malformed(&mut self, registered: bool) -> Msg {
        let max_name = self.config().max_name_len;
        let max_len = self.config().max_frame_len;
        let dest = self.rng.pick(&self.pool).cloned().expect("pool");
        let long_name: Vec<u8> = vec![b'n'; max_name + self.rng.range_usize(1..=8)];
        let kind = if registered {
            self.rng.below(6)
        } else {
            self.rng.below(2)
        };
        let (mut bytes, error) = match kind {
            0 => (b"|".to_vec(), WireError::EmptyName),
            1 => (long_name, WireError::NameTooLong { max: max_name }),
            2 => ([&dest[..], b"||"].concat(), WireError::NonNumericLength),
            3 => {
                let bad: &[u8] = self
                    .rng
                    .pick(&[&b"12a|"[..], b"-1|", b" 5|", b"x|"])
                    .expect("non-empty");
                ([&dest[..], b"|", bad].concat(), WireError::NonNumericLength)
            }
            4 => {
                let len = max_len as u64 + self.rng.range(1..=1000);
                (
                    [&dest[..], format!("|{len}|").as_bytes()].concat(),
                    WireError::LengthTooLarge { len, max: max_len },
                )
            }
            _ => {
                let digits = vec![b'9'; self.rng.range_usize(21..=30)];
                (
                    [&dest[..], b"|", &digits[..]].concat(),
                    WireError::LengthTooLarge {
                        len: u64::MAX,
                        max: max_len,
                    },
                )
            }
        };
        // Garbage after the fault is never looked at. (Not after an endless length:
        // there a non-digit in the same read would make it a non-numeric length.)
        if kind < 5 && self.rng.chance(0.5) {
            let n = self.rng.range_usize(1..=40);
            bytes.extend_from_slice(&self.rng.bytes(n));
        }
        Msg::Malformed { bytes, error }
    }

    /// Send `bytes` from `client`, in one to three writes.
    fn send(&mut self, client: ClientId, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = if self.rng.chance(0.7) {
                rest.len()
            } else {
                self.rng.range_usize(1..=rest.len())
            };
            self.relay.sim.client_send(client, &rest[..n]);
            rest = &rest[n..];
        }
    }

    fn describe(msgs: &[Msg]) -> String {
        msgs.iter()
            .map(|m| match m {
                Msg::Register(n) => format!("register {}", show(n)),
                Msg::Frame { dest, payload } => format!("{}|{}|", show(dest), payload.len()),
                Msg::Malformed { error, .. } => format!("malformed({error:?})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn step(&mut self) {
        self.model.epoch += 1;
        let open_named = self.model.open_named();
        let open = self
            .model
            .clients
            .iter()
            .filter(|c| c.fate == Fate::Open)
            .count();
        let weights = [
            if open < self.max_open {
                self.mix.connect
            } else {
                0
            },
            if open_named.is_empty() {
                0
            } else {
                self.mix.send
            },
            if open_named.len() < 2 {
                0
            } else {
                self.mix.burst
            },
            if open_named.is_empty() {
                0
            } else {
                self.mix.close
            },
            if open_named.is_empty() {
                0
            } else {
                self.mix.malformed
            },
        ];
        let total: u64 = weights.iter().sum();
        if total == 0 {
            return;
        }
        let mut roll = self.rng.below(total);
        let mut kind = 0;
        while roll >= weights[kind] {
            roll -= weights[kind];
            kind += 1;
        }
        match kind {
            0 => {
                let name = self.rng.pick(&self.pool).cloned().expect("pool");
                let mut msgs = if self.mix.malformed > 0 && self.rng.chance(0.15) {
                    vec![self.gen_malformed(false)] // NR-2
                } else {
                    vec![Msg::Register(name.clone())]
                };
                if self.rng.chance(0.5) {
                    let extra = self.gen_frames(&name, 2); // NR-1
                    msgs.extend(extra);
                }
                let id = self.relay.connect(&[]);
                self.send(id, &encode(&msgs));
                let c = self.model.accept(id);
                self.model.feed(c, &msgs);
                self.log
                    .push(format!("client {c} connects: {}", Self::describe(&msgs)));
            }
            1 | 2 => {
                let senders = if kind == 1 {
                    vec![*self.rng.pick(&open_named).expect("some")]
                } else {
                    let mut s = open_named.clone();
                    let keep = self.rng.range_usize(2..=s.len().min(3));
                    while s.len() > keep {
                        s.remove(self.rng.index(s.len()));
                    }
                    s
                };
                for c in senders {
                    let name = self.model.clients[c].name.clone().expect("named");
                    let msgs = self.gen_frames(&name, 4);
                    let id = self.model.clients[c].id;
                    self.send(id, &encode(&msgs));
                    self.model.feed(c, &msgs);
                    self.log
                        .push(format!("client {c} sends: {}", Self::describe(&msgs)));
                }
            }
            3 => {
                let c = *self.rng.pick(&open_named).expect("some");
                self.relay.sim.client_close(self.model.clients[c].id);
                self.model.client_closes(c);
                self.log.push(format!("client {c} closes"));
            }
            _ => {
                let c = *self.rng.pick(&open_named).expect("some");
                let name = self.model.clients[c].name.clone().expect("named");
                let mut msgs = if self.rng.chance(0.5) {
                    self.gen_frames(&name, 2)
                } else {
                    Vec::new()
                };
                msgs.push(self.gen_malformed(true));
                let id = self.model.clients[c].id;
                self.send(id, &encode(&msgs));
                self.model.feed(c, &msgs);
                self.log
                    .push(format!("client {c} sends: {}", Self::describe(&msgs)));
            }
        }
    }

    /// After a settled step: the relay agrees with the model.
    fn check_step(&mut self) -> Result<(), String> {
        let by_conn: BTreeMap<ConnId, usize> = (0..self.model.clients.len())
            .filter_map(|c| Some((self.relay.sim.client_conn(self.model.clients[c].id)?, c)))
            .collect();
        let mut got: Vec<(usize, CloseReason)> = Vec::new();
        for (conn, reason) in self.relay.closes() {
            let c = by_conn
                .get(&conn)
                .ok_or_else(|| format!("relay closed unknown {conn}"))?;
            got.push((*c, reason));
        }
        let mut want = std::mem::take(&mut self.model.closes);
        got.sort_by_key(|(c, _)| *c);
        want.sort_by_key(|(c, _)| *c);
        ensure!(got == want, "closes: relay {got:?}, model {want:?}");

        let stats = self.relay.stats();
        ensure!(
            stats == self.model.stats,
            "stats: relay {stats:?}, model {:?}",
            self.model.stats
        );
        let count = self.relay.server().connection_count();
        ensure!(
            count == self.model.open,
            "connections: relay {count}, model {}",
            self.model.open
        );
        for name in &self.pool {
            let holder = self.relay.server().holder_of(name);
            let want = self
                .model
                .names
                .get(name)
                .and_then(|&c| self.relay.sim.client_conn(self.model.clients[c].id));
            ensure!(
                holder == want,
                "holder of {}: relay {holder:?}, model {want:?}",
                show(name)
            );
        }
        for (c, client) in self.model.clients.iter().enumerate() {
            let closed = self.relay.sim.client_closed_by_remote(client.id);
            ensure!(
                closed == (client.fate == Fate::ClosedByRelay),
                "client {c}: closed by the relay: {closed}, model says {:?}",
                client.fate
            );
        }
        Ok(())
    }

    fn check_streams(&self) -> Result<(), String> {
        for (c, client) in self.model.clients.iter().enumerate() {
            check_stream(self.relay.sim.client_received(client.id), &client.expected)
                .map_err(|e| format!("client {c} ({:?}): {e}", client.name.as_deref().map(show)))?;
        }
        Ok(())
    }

    fn run(&mut self, steps: usize) -> Result<(), String> {
        for _ in 0..steps {
            self.step();
            self.relay.sim.run_until_idle();
            self.check_step()?;
        }
        self.check_streams()
    }

    fn context(&self, error: String) -> String {
        let mut out = format!("{error}\n--- steps (last 30 of {}):\n", self.log.len());
        for (i, line) in self
            .log
            .iter()
            .enumerate()
            .skip(self.log.len().saturating_sub(30))
        {
            let _ = writeln!(out, "  {i}: {line}");
        }
        out.push_str("--- ");
        out.push_str(&self.relay.sim.describe());
        out
    }

    /// Everything each client read, the counters, and the trace hash.
    fn outcome(&self) -> (Vec<Vec<u8>>, Stats, u64) {
        let streams = self
            .model
            .clients
            .iter()
            .map(|c| self.relay.sim.client_received(c.id).to_vec())
            .collect();
        (streams, self.relay.stats(), self.relay.sim.trace_hash())
    }
}

fn run_mix(case: Case, mix: Mix, chunking: Chunking) -> Result<Scenario, String> {
    let mut scenario = Scenario::new(case, mix, chunking);
    match scenario.run(case.size) {
        Ok(()) => Ok(scenario),
        Err(e) => Err(scenario.context(e)),
    }
}

/// NR-1, NR-4, NR-6, NR-8, NR-10, NR-15: clients register and send frames to
/// holders, to themselves, to nobody, keep-alives, several in one write, several
/// senders at once; every receiver gets exactly the model's frames.
#[test]
fn nr1_nr4_nr6_nr8_nr10_nr15_frames_match_the_reference_model() {
    fn scenario(case: Case) -> Result<(), String> {
        run_mix(case, FRAMES, Chunking::Random).map(drop)
    }
    sim::check(
        property(
            "nr1_nr4_nr6_nr8_nr10_nr15_frames_match_the_reference_model",
            60,
            60,
        ),
        scenario,
    );
}

/// NR-7, NR-14: a name already held closes the newcomer (what it sent after the
/// name is discarded) and the holder keeps it; a closed client's name is free at once.
#[test]
fn nr7_nr14_duplicate_names_are_rejected_and_freed_on_close() {
    fn scenario(case: Case) -> Result<(), String> {
        run_mix(case, NAMES, Chunking::Random).map(drop)
    }
    sim::check(
        property(
            "nr7_nr14_duplicate_names_are_rejected_and_freed_on_close",
            60,
            60,
        ),
        scenario,
    );
    // Not vacuous: with as many names as clients, newcomers do collide.
    let rejected: usize = (1..=5)
        .map(|seed| {
            let s = run_mix(Case { seed, size: 60 }, NAMES, Chunking::Random).expect("passes");
            s.model.rejected_duplicates
        })
        .sum();
    assert!(rejected > 0, "no duplicate registration in five runs");
}

/// NR-2, NR-5: empty or overlong names, non-numeric, empty, oversized or endless
/// lengths close that client, with that error, and only that one.
#[test]
fn nr2_nr5_malformed_input_closes_only_that_connection() {
    fn scenario(case: Case) -> Result<(), String> {
        let mix = Mix {
            connect: 4,
            send: 4,
            burst: 1,
            close: 1,
            malformed: 3,
            limit: false,
            spare_names: 2,
        };
        run_mix(case, mix, Chunking::Random).map(drop)
    }
    sim::check(
        property(
            "nr2_nr5_malformed_input_closes_only_that_connection",
            60,
            60,
        ),
        scenario,
    );
}

/// NR-13: beyond `max_connections` a new connection is closed at once, and a
/// closed one makes room.
#[test]
fn nr13_connections_beyond_the_limit_are_closed() {
    fn scenario(case: Case) -> Result<(), String> {
        let mix = Mix {
            connect: 6,
            send: 2,
            burst: 0,
            close: 3,
            malformed: 1,
            limit: true,
            spare_names: 4,
        };
        run_mix(case, mix, Chunking::Random).map(drop)
    }
    sim::check(
        property("nr13_connections_beyond_the_limit_are_closed", 40, 60),
        scenario,
    );
}

/// Everything at once: every kind of step, every requirement above.
#[test]
fn all_steps_mixed_match_the_reference_model() {
    fn scenario(case: Case) -> Result<(), String> {
        let mix = Mix {
            connect: 4,
            send: 6,
            burst: 2,
            close: 2,
            malformed: 1,
            limit: case.seed.is_multiple_of(3),
            spare_names: 2,
        };
        run_mix(case, mix, Chunking::Random).map(drop)
    }
    sim::check(
        property("all_steps_mixed_match_the_reference_model", 40, 100),
        scenario,
    );
}

/// NR-11: the same steps with streams cut at random and delivered whole give
/// byte-identical results for every client.
#[test]
fn nr11_any_split_is_handled_as_one_read() {
    fn scenario(case: Case) -> Result<(), String> {
        let mix = Mix {
            connect: 4,
            send: 8,
            burst: 0, // one sender per step: each receiver's bytes are fully determined
            close: 1,
            malformed: 1,
            limit: false,
            spare_names: 2,
        };
        let random = run_mix(case, mix, Chunking::Random)?.outcome();
        let whole = run_mix(case, mix, Chunking::Whole)?.outcome();
        for (c, (a, b)) in random.0.iter().zip(&whole.0).enumerate() {
            ensure!(
                a == b,
                "client {c}: {} bytes when split, {} when whole",
                a.len(),
                b.len()
            );
        }
        ensure!(
            random.1 == whole.1,
            "stats: split {:?}, whole {:?}",
            random.1,
            whole.1
        );
        Ok(())
    }
    sim::check(
        property("nr11_any_split_is_handled_as_one_read", 40, 60),
        scenario,
    );
}

/// Determinism: the same seed gives the same trace (every action, input and byte)
/// and the same bytes at every client; another seed cuts streams differently.
#[test]
fn determinism_same_seed_same_trace_and_bytes() {
    fn scenario(case: Case) -> Result<(), String> {
        let mix = Mix {
            connect: 4,
            send: 6,
            burst: 2,
            close: 2,
            malformed: 1,
            limit: true,
            spare_names: 2,
        };
        let first = run_mix(case, mix, Chunking::Random)?.outcome();
        let second = run_mix(case, mix, Chunking::Random)?.outcome();
        ensure!(
            first.2 == second.2,
            "trace hashes differ: {:x} vs {:x}",
            first.2,
            second.2
        );
        ensure!(first == second, "same trace hash, different bytes or stats");
        Ok(())
    }
    sim::check(
        property("determinism_same_seed_same_trace_and_bytes", 20, 40),
        scenario,
    );
    // Another seed: another interleaving (a fixed pair, so this cannot flake).
    let a = run_mix(Case { seed: 1, size: 30 }, FRAMES, Chunking::Random).expect("seed 1");
    let b = run_mix(Case { seed: 2, size: 30 }, FRAMES, Chunking::Random).expect("seed 2");
    assert_ne!(a.outcome().2, b.outcome().2);
}

// ---- back-pressure (NR-12) -------------------------------------------------------------

/// Register `name` on a new client and settle.
fn register(relay: &mut Relay, name: &[u8]) -> ClientId {
    let id = relay.connect(&registration(name));
    relay.sim.run_until_idle();
    id
}

/// How a back-pressure run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The receiver reads everything.
    Reads,
    /// The receiver leaves without reading: paused senders resume, their frames
    /// for it are dropped (NR-12, NR-8).
    Leaves,
}

struct SlowReceiver {
    relay: Relay,
    rng: SimRng,
    cap: usize,
    window: usize,
    max_payload: usize,
    receiver: ClientId,
    /// Who sends to the receiver (the receiver itself among them, sometimes: NR-15).
    senders: Vec<(ClientId, Vec<u8>)>,
    /// Per sender: the frames it sent to the receiver, in order.
    sent: Vec<Vec<Vec<u8>>>,
    /// The sender that ended with malformed bytes (NR-5), if any.
    malformed: Option<usize>,
    bystanders: (ClientId, ClientId),
    bystander_sent: Vec<Vec<u8>>,
    bytes_to_receiver: usize,
    toggle: bool,
    ending: Ending,
}

impl SlowReceiver {
    /// `others` senders, plus the receiver itself if `self_send`.
    fn new(case: Case, others: usize, self_send: bool) -> Self {
        let mut rng = case.rng("scenario");
        let cap = rng.range_usize(1024..=32 << 10);
        let max_payload = rng.range_usize(1..=8 << 10);
        let config = Config {
            max_queued_bytes: cap,
            max_frame_len: 64 << 10,
            ..Config::default()
        };
        let sim_config = SimConfig {
            // Half the cases deliver read-ahead bytes after PauseRead (up to the
            // contract's MAX_READ_AHEAD).
            read_ahead: if rng.chance(0.5) { 0.5 } else { 0.0 },
            max_chunk: *rng.pick(&[64, 4096, 16 << 10]).expect("non-empty"),
            ..SimConfig::default()
        };
        let toggle = rng.chance(0.3);
        let ending = if self_send || rng.chance(0.7) {
            Ending::Reads
        } else {
            Ending::Leaves
        };
        let mut relay = Relay::start(case.seed, config, sim_config);
        let receiver = register(&mut relay, b"receiver");
        relay.sim.client_set_reading(receiver, false);
        let window = rng.range_usize(512..=16 << 10);
        relay.sim.client_set_window(receiver, window);
        let mut senders: Vec<(ClientId, Vec<u8>)> = (0..others)
            .map(|i| {
                let name = format!("sender{i}").into_bytes();
                (register(&mut relay, &name), name)
            })
            .collect();
        if self_send {
            senders.push((receiver, b"receiver".to_vec())); // NR-15 under NR-12
        }
        let bystanders = (register(&mut relay, b"x"), register(&mut relay, b"y"));
        Self {
            relay,
            rng,
            cap,
            window,
            max_payload,
            receiver,
            sent: vec![Vec::new(); senders.len()],
            senders,
            malformed: None,
            bystanders,
            bystander_sent: Vec::new(),
            bytes_to_receiver: 0,
            toggle,
            ending,
        }
    }

    /// The largest frame the relay can queue to the receiver.
    fn one_frame(&self) -> usize {
        let longest = self.senders.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
        frame(&vec![b'n'; longest], &vec![0; self.max_payload]).len()
    }

    fn senders_step(&mut self) {
        let s = self.rng.index(self.senders.len());
        let n = self.rng.range(1..=4);
        let mut bytes = Vec::new();
        for _ in 0..n {
            let len = self.rng.range_usize(0..=self.max_payload);
            let payload = self.rng.bytes(len);
            if payload.is_empty() && self.senders[s].0 == self.receiver {
                continue; // that would be a keep-alive (NR-10)
            }
            let f = frame(&self.senders[s].1, &payload);
            self.bytes_to_receiver += f.len();
            bytes.extend_from_slice(&frame(b"receiver", &payload));
            self.sent[s].push(payload);
        }
        self.relay.sim.client_send(self.senders[s].0, &bytes);
    }

    fn bystander_step(&mut self) {
        let len = self.rng.range_usize(0..=2000);
        let payload = self.rng.bytes(len);
        self.relay
            .sim
            .client_send(self.bystanders.0, &frame(b"y", &payload));
        self.bystander_sent.push(payload);
    }

    fn check_bounded(&self) -> Result<(), String> {
        let peak = self.relay.sim.client_peak_queued(self.receiver);
        let bound = self.cap + self.one_frame();
        ensure!(
            peak <= bound,
            "NR-12: the relay queued {peak} bytes to the receiver, more than the cap {} plus one frame ({bound})",
            self.cap
        );
        Ok(())
    }

    /// Others are unaffected: the bystander's frames all arrived, in order.
    fn check_bystanders(&self) -> Result<(), String> {
        let (x, y) = self.bystanders;
        ensure!(
            !self.relay.sim.client_paused(x),
            "NR-12: an unrelated sender is paused"
        );
        let want: Vec<Delivery> = self
            .bystander_sent
            .iter()
            .map(|p| (b"x".to_vec(), p.clone()))
            .collect();
        let got = parse_stream(self.relay.sim.client_received(y))?;
        ensure!(
            got == want,
            "NR-12: the bystander got {} frames of {}",
            got.len(),
            want.len()
        );
        Ok(())
    }

    /// After the end: nobody is left paused; the malformed sender, and only it,
    /// was closed, for its error.
    fn check_senders(&mut self) -> Result<(), String> {
        for (s, (id, name)) in self.senders.iter().enumerate() {
            let closed = self.relay.sim.client_closed_by_remote(*id);
            if Some(s) == self.malformed {
                ensure!(
                    closed,
                    "NR-5: {} sent malformed bytes and is open",
                    show(name)
                );
            } else if *id != self.receiver {
                ensure!(!closed, "{} was closed", show(name));
                ensure!(
                    !self.relay.sim.client_paused(*id),
                    "{} still paused",
                    show(name)
                );
            }
        }
        let closes = self.relay.closes();
        let malformed: Vec<_> = closes
            .iter()
            .filter(|(_, r)| matches!(r, CloseReason::Malformed(_)))
            .collect();
        ensure!(
            malformed.len() == usize::from(self.malformed.is_some())
                && malformed
                    .iter()
                    .all(|(_, r)| *r == CloseReason::Malformed(WireError::EmptyName)),
            "NR-5: closes {closes:?}"
        );
        Ok(())
    }

    fn check_all_delivered(&mut self) -> Result<(), String> {
        let got = parse_stream(self.relay.sim.client_received(self.receiver))?;
        for (s, (_, name)) in self.senders.iter().enumerate() {
            let from: Vec<&Vec<u8>> = got
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, p)| p)
                .collect();
            let want: Vec<&Vec<u8>> = self.sent[s].iter().collect();
            ensure!(
                from == want,
                "NR-12: the receiver got {} of the {} frames of {} (or in another order)",
                from.len(),
                want.len(),
                show(name)
            );
        }
        let total: usize = self.sent.iter().map(Vec::len).sum();
        ensure!(
            got.len() == total,
            "NR-12: {} frames, {total} sent",
            got.len()
        );
        let stats = self.relay.stats();
        ensure!(
            stats.frames_dropped == 0
                && stats.closed_by_relay == u64::from(self.malformed.is_some()),
            "NR-12: nothing is dropped or closed: {stats:?}"
        );
        Ok(())
    }

    /// The receiver left: every frame was either queued to it before it left, or
    /// dropped as for an unknown name; none is lost or left waiting.
    fn check_all_handled(&mut self) -> Result<(), String> {
        let total: u64 = self.sent.iter().map(|s| s.len() as u64).sum();
        let stats = self.relay.stats();
        ensure!(
            stats.frames_delivered - self.bystander_sent.len() as u64 + stats.frames_dropped
                == total,
            "NR-12, NR-8: {total} frames for the receiver, {stats:?}"
        );
        for (id, name) in &self.senders {
            ensure!(
                self.relay.sim.client_unread(*id) == 0,
                "{} has unread bytes",
                show(name)
            );
        }
        Ok(())
    }

    /// Phase one: the receiver does not read (or only sometimes); phase two: it
    /// reads, or leaves.
    fn run(&mut self, steps: usize) -> Result<(), String> {
        for _ in 0..steps {
            if self.rng.chance(0.75) {
                self.senders_step();
            } else {
                self.bystander_step();
            }
            if self.toggle && self.rng.chance(0.2) {
                let reading = self.rng.chance(0.5);
                self.relay.sim.client_set_reading(self.receiver, reading);
            }
            self.relay.sim.run_until_idle();
            self.check_bounded()?;
            self.check_bystanders()?;
        }
        if !self.toggle {
            // Unpaused, the relay would hold all but a window of it: over the cap.
            let sent = self.bytes_to_receiver;
            let paused = self
                .senders
                .iter()
                .any(|(id, _)| self.relay.sim.client_paused(*id));
            ensure!(
                sent <= self.cap + self.window || paused,
                "NR-12: {sent} bytes for a receiver that does not read, cap {}, and no sender is paused",
                self.cap
            );
        }
        if self.rng.chance(0.3) {
            // A (maybe paused) sender ends with bytes that are not the protocol.
            let s = self.rng.index(self.senders.len());
            if self.senders[s].0 != self.receiver {
                self.relay.sim.client_send(self.senders[s].0, b"|5|oops");
                self.malformed = Some(s);
            }
        }
        match self.ending {
            Ending::Reads => {
                self.relay.sim.client_set_reading(self.receiver, true);
                self.relay.sim.run_until_idle();
                self.check_bounded()?;
                self.check_all_delivered()?;
            }
            Ending::Leaves => {
                self.relay.sim.client_close(self.receiver);
                self.relay.sim.run_until_idle();
                self.check_all_handled()?;
            }
        }
        self.check_bystanders()?;
        self.check_senders()
    }

    fn context(&self, error: String) -> String {
        format!(
            "{error}\ncap {}, window {}, largest frame {}, {} bytes sent to the receiver, \
             toggle {}, ending {:?}, malformed {:?}, senders {:?}\n--- {}",
            self.cap,
            self.window,
            self.one_frame(),
            self.bytes_to_receiver,
            self.toggle,
            self.ending,
            self.malformed,
            self.senders
                .iter()
                .map(|(_, n)| String::from_utf8_lossy(n))
                .collect::<Vec<_>>(),
            self.relay.sim.describe()
        )
    }
}

fn slow_receiver(case: Case, others: usize, self_send: bool) -> Result<(), String> {
    let mut s = SlowReceiver::new(case, others, self_send);
    s.run(case.size).map_err(|e| s.context(e))
}

/// NR-12: a receiver that does not read makes the relay pause the sender (its
/// bytes wait in the network), the relay's queue to the receiver stays within the
/// cap plus one frame, a bystander pair is unaffected, and once the receiver reads
/// every frame arrives in order.
#[test]
fn nr12_slow_receiver_pauses_sender_and_loses_nothing() {
    fn scenario(case: Case) -> Result<(), String> {
        // One sender: another client, or (one case in five) the receiver itself
        // (NR-15), which then may only end by reading.
        if case.seed.is_multiple_of(5) {
            slow_receiver(case, 0, true)
        } else {
            slow_receiver(case, 1, false)
        }
    }
    sim::check(
        property("nr12_slow_receiver_pauses_sender_and_loses_nothing", 50, 80),
        scenario,
    );
}

/// NR-12 with several senders to one slow receiver: the spec bounds the relay's
/// memory per receiver by the cap plus one frame, whatever the number of senders.
#[test]
fn nr12_many_senders_to_one_slow_receiver_stay_within_cap_plus_one_frame() {
    fn scenario(case: Case) -> Result<(), String> {
        let others = 1 + (case.seed % 3) as usize;
        slow_receiver(case, others, others == 1 || case.seed.is_multiple_of(2))
    }
    sim::check(
        property(
            "nr12_many_senders_to_one_slow_receiver_stay_within_cap_plus_one_frame",
            50,
            80,
        ),
        scenario,
    );
}

/// NR-12, the smallest case of the property above: `a` crosses the cap of a
/// receiver that does not read and is paused; then `b`, not paused, sends one frame
/// to the same receiver: the relay must not queue it on top of the cap and `a`'s
/// frame (it should pause `b` before queueing).
#[test]
fn nr12_two_senders_to_a_full_receiver_stay_within_cap_plus_one_frame() {
    fn scenario(case: Case) -> Result<(), String> {
        let cap = 1000;
        let config = Config {
            max_queued_bytes: cap,
            ..Config::default()
        };
        let mut relay = Relay::start(case.seed, config, SimConfig::default());
        let r = register(&mut relay, b"r");
        relay.sim.client_set_reading(r, false);
        relay.sim.client_set_window(r, 1);
        let a = register(&mut relay, b"a");
        let b = register(&mut relay, b"b");
        let payload = [b'x'; 500];
        let one_frame = frame(b"a", &payload).len(); // 506
        let two = [frame(b"r", &payload), frame(b"r", &payload)].concat();
        relay.sim.client_send(a, &two);
        relay.sim.run_until_idle();
        ensure!(
            relay.sim.client_paused(a),
            "a crossed the cap and is paused"
        );
        relay.sim.client_send(b, &frame(b"r", &payload));
        relay.sim.run_until_idle();
        let peak = relay.sim.client_peak_queued(r);
        ensure!(
            peak <= cap + one_frame,
            "NR-12: {peak} bytes queued to r, above the cap plus one frame ({}); b paused: {}",
            cap + one_frame,
            relay.sim.client_paused(b)
        );
        relay.sim.client_set_reading(r, true);
        relay.sim.run_until_idle();
        let got = parse_stream(relay.sim.client_received(r))?;
        ensure!(
            got.len() == 3,
            "NR-12: nothing lost: {} frames of 3",
            got.len()
        );
        Ok(())
    }
    sim::check_case(
        property(
            "nr12_two_senders_to_a_full_receiver_stay_within_cap_plus_one_frame",
            1,
            1,
        ),
        Case { seed: 12, size: 1 },
        scenario,
    );
}

/// NR-12 with NR-9 and NR-8: a paused sender is not idle however long it waits;
/// when the receiver goes (idle timeout), the sender resumes, its frames for the
/// gone name are dropped and counted, and its idle clock restarts at the resume.
#[test]
fn nr12_nr9_paused_sender_is_not_idle_and_a_gone_receiver_resumes_it() {
    fn scenario(case: Case) -> Result<(), String> {
        let wall = Instant::now();
        let config = Config {
            max_queued_bytes: 4096,
            ..Config::default()
        };
        let sim_config = SimConfig {
            read_ahead: 0.5,
            max_read_ahead: 8 << 10, // less than the sender sends: some must wait
            ..SimConfig::default()
        };
        let mut relay = Relay::start(case.seed, config, sim_config);
        let receiver = register(&mut relay, b"r");
        relay.sim.client_set_reading(receiver, false);
        relay.sim.client_set_window(receiver, 1000);
        let sender = register(&mut relay, b"s");
        let frames = 40;
        for _ in 0..frames {
            relay.sim.client_send(sender, &frame(b"r", &[b'p'; 1000]));
        }
        relay.sim.run_until_idle();
        ensure!(relay.sim.client_paused(sender), "the sender is paused");
        ensure!(
            relay.sim.client_unread(sender) > 0,
            "its bytes wait in the network"
        );

        // 100 s paused; the receiver keeps itself alive, the sender sends nothing.
        for _ in 0..10 {
            relay.sim.advance(Duration::from_secs(10));
            relay.sim.client_send(receiver, &frame(b"r", b""));
            relay.sim.run_until_idle();
        }
        ensure!(
            !relay.sim.client_closed_by_remote(sender),
            "NR-12: a paused sender is not idle"
        );
        ensure!(relay.sim.client_paused(sender), "still paused");

        // The receiver goes quiet: closed when idle *more than* 30 s.
        relay.sim.advance(Duration::from_secs(30));
        ensure!(
            !relay.sim.client_closed_by_remote(receiver),
            "NR-9: not at 30 s"
        );
        relay.sim.advance(NS);
        ensure!(
            relay.sim.client_closed_by_remote(receiver),
            "NR-9: closed after 30 s"
        );
        let closes = relay.closes();
        ensure!(
            closes
                .iter()
                .any(|(c, r)| Some(*c) == relay.sim.client_conn(receiver)
                    && *r == CloseReason::IdleTimeout(Duration::from_secs(30))),
            "the receiver's close: {closes:?}"
        );
        ensure!(
            !relay.sim.client_paused(sender),
            "NR-12: the sender resumes"
        );
        ensure!(relay.sim.client_unread(sender) == 0, "its frames were read");
        let stats = relay.stats();
        ensure!(
            stats.frames_delivered + stats.frames_dropped == frames,
            "NR-8: every frame delivered or dropped: {stats:?}"
        );
        ensure!(
            stats.frames_dropped > 0,
            "NR-8: frames for the gone receiver dropped: {stats:?}"
        );
        ensure!(
            !relay.sim.client_closed_by_remote(sender),
            "the sender stays"
        );

        // The sender's idle clock restarted when it resumed, just now.
        relay.sim.advance(Duration::from_secs(30));
        ensure!(
            !relay.sim.client_closed_by_remote(sender),
            "NR-12: idle counts from the resume"
        );
        relay.sim.advance(NS);
        ensure!(
            relay.sim.client_closed_by_remote(sender),
            "NR-9: idle 30 s after the resume"
        );
        ensure!(
            wall.elapsed() < Duration::from_secs(2),
            "{:?} of virtual time took {:?}",
            relay.sim.elapsed(),
            wall.elapsed()
        );
        Ok(())
    }
    sim::check(
        property(
            "nr12_nr9_paused_sender_is_not_idle_and_a_gone_receiver_resumes_it",
            10,
            1,
        ),
        scenario,
    );
}

// ---- timeouts (NR-3, NR-9) ----------------------------------------------------------------

/// NR-3, NR-9: clients that never register, register late or partly, go quiet,
/// keep alive or talk, under random clock jumps: each is closed exactly when the
/// model says, for the model's reason; hours of virtual time take milliseconds.
#[test]
fn nr3_nr9_registration_and_idle_timeouts_by_clock_jumps() {
    struct Timed {
        id: ClientId,
        name: Vec<u8>,
        accepted: Duration,
        registered: bool,
        /// Bytes of the registration already sent.
        partial: usize,
        last_rx: Duration,
        open: bool,
    }

    fn scenario(case: Case) -> Result<(), String> {
        let wall = Instant::now();
        let mut rng = case.rng("scenario");
        let config = Config::default();
        let (reg, idle) = (config.registration_timeout, config.idle_timeout);
        let mut relay = Relay::start(case.seed, config, SimConfig::default());
        let mut clients: Vec<Timed> = Vec::new();
        let mut log: Vec<String> = Vec::new();
        let mut result = Ok(());
        for step in 0..case.size {
            let now = relay.sim.elapsed();
            let open: Vec<usize> = (0..clients.len()).filter(|&c| clients[c].open).collect();
            match rng.below(10) {
                0..=1 if open.len() < 6 => {
                    // Connect; register now, later (maybe partly now), or never.
                    let name = format!("c{}", clients.len()).into_bytes();
                    let id = relay.connect(&[]);
                    let registered = rng.chance(0.5);
                    let partial = if registered {
                        relay.sim.client_send(id, &registration(&name));
                        0
                    } else if rng.chance(0.5) {
                        relay.sim.client_send(id, &name[..1]);
                        1
                    } else {
                        0
                    };
                    log.push(format!(
                        "{now:?}: c{} connects, registered {registered}",
                        clients.len()
                    ));
                    clients.push(Timed {
                        id,
                        name,
                        accepted: now,
                        registered,
                        partial,
                        last_rx: now,
                        open: true,
                    });
                }
                2..=4 if !open.is_empty() => {
                    let c = *rng.pick(&open).expect("some");
                    let client = &mut clients[c];
                    let bytes = if !client.registered {
                        client.registered = true;
                        registration(&client.name)[client.partial..].to_vec()
                    } else if rng.chance(0.5) {
                        frame(&client.name, b"") // NR-10
                    } else {
                        frame(b"nobody", b"any byte counts") // NR-9, NR-8
                    };
                    client.last_rx = now;
                    relay.sim.client_send(client.id, &bytes);
                    log.push(format!("{now:?}: c{c} sends {} bytes", bytes.len()));
                }
                _ => {
                    let jump = if rng.chance(0.2) {
                        Duration::from_millis(rng.range(25_000..=45_000))
                    } else {
                        Duration::from_millis(rng.range(1..=12_000))
                    };
                    relay.sim.advance(jump);
                    log.push(format!("{now:?}: advance {jump:?}"));
                }
            }
            relay.sim.run_until_idle();
            let now = relay.sim.elapsed();
            let mut want: Vec<(ConnId, CloseReason)> = Vec::new();
            // "More than" the timeout (NR-3, NR-9): closed strictly after it.
            for client in clients.iter_mut().filter(|c| c.open) {
                let reason = if !client.registered && client.accepted + reg < now {
                    Some(CloseReason::RegistrationTimeout(reg))
                } else if client.registered && client.last_rx + idle < now {
                    Some(CloseReason::IdleTimeout(idle))
                } else {
                    None
                };
                if let Some(reason) = reason {
                    client.open = false;
                    want.push((relay.sim.client_conn(client.id).expect("accepted"), reason));
                }
            }
            let mut got = relay.closes();
            got.sort_by_key(|(c, _)| *c);
            want.sort_by_key(|(c, _)| *c);
            if got != want {
                result = Err(format!(
                    "step {step} at {now:?}: closes: relay {got:?}, model {want:?}"
                ));
                break;
            }
            if let Some(c) = clients
                .iter()
                .position(|c| relay.sim.client_closed_by_remote(c.id) == c.open)
            {
                result = Err(format!(
                    "step {step}: c{c} open in the model: {}",
                    clients[c].open
                ));
                break;
            }
        }
        let took = wall.elapsed();
        if result.is_ok() && took > Duration::from_secs(2) {
            result = Err(format!(
                "{:?} of virtual time took {took:?}",
                relay.sim.elapsed()
            ));
        }
        result.map_err(|e| {
            let tail: Vec<&String> = log.iter().rev().take(20).collect();
            format!(
                "{e}\n--- steps (last 20, newest first): {tail:#?}\n--- {}",
                relay.sim.describe()
            )
        })
    }
    sim::check(
        property(
            "nr3_nr9_registration_and_idle_timeouts_by_clock_jumps",
            60,
            80,
        ),
        scenario,
    );
}

/// NR-3, NR-9 by hand: closed *more than* 3 s after the accept without a name and
/// more than 30 s after the last byte, to the nanosecond, and no wall time.
#[test]
fn nr3_nr9_deadlines_to_the_nanosecond_without_waiting() {
    fn scenario(case: Case) -> Result<(), String> {
        let wall = Instant::now();
        let mut relay = Relay::start(case.seed, Config::default(), SimConfig::default());
        let silent = relay.connect(b"");
        let quiet = register(&mut relay, b"quiet");
        relay.sim.advance(Duration::from_secs(3));
        ensure!(
            !relay.sim.client_closed_by_remote(silent),
            "NR-3: not at 3 s"
        );
        relay.sim.advance(NS);
        ensure!(
            relay.sim.client_closed_by_remote(silent),
            "NR-3: closed after 3 s"
        );
        ensure!(relay.sim.client_eof(silent), "the client reads EOF");
        relay.sim.advance(Duration::from_secs(27) - NS);
        ensure!(
            !relay.sim.client_closed_by_remote(quiet),
            "NR-9: not at 30 s"
        );
        relay.sim.advance(NS);
        ensure!(
            relay.sim.client_closed_by_remote(quiet),
            "NR-9: closed after 30 s"
        );
        let took = wall.elapsed();
        ensure!(
            took < Duration::from_millis(500),
            "30 s of virtual time took {took:?}"
        );
        Ok(())
    }
    sim::check_case(
        property("nr3_nr9_deadlines_to_the_nanosecond_without_waiting", 1, 1),
        Case { seed: 3, size: 1 },
        scenario,
    );
}

// ---- the client machine (NR-16) ------------------------------------------------------------

/// NR-16: two client machines connect to the relay machine (machine to machine in
/// the simulator), exchange frames, and their keep-alives hold their connections
/// open for minutes; a client whose keep-alive comes too late is closed (NR-9).
#[test]
fn nr16_client_machines_exchange_frames_and_keep_alive() {
    fn scenario(case: Case) -> Result<(), String> {
        let mut rng = case.rng("scenario");
        let mut relay = Relay::start(case.seed, Config::default(), SimConfig::default());
        let addr = relay.addr;
        let new_client = |name: &[u8], keepalive: Duration| {
            let config = ClientConfig {
                keepalive_interval: keepalive,
                ..ClientConfig::default()
            };
            Client::new(name, addr, config).expect("valid name")
        };
        let sim = &mut relay.sim;
        let alice = sim.add_machine(new_client(b"alice", Duration::from_secs(10)));
        let bob = sim.add_machine(new_client(b"bob", Duration::from_secs(10)));
        let late = sim.add_machine(new_client(b"late", Duration::from_secs(31)));
        sim.run_until_idle();
        for node in [alice, bob, late] {
            let events = sim.events(node);
            ensure!(events == vec![ClientEvent::Registered], "{events:?}");
        }
        let mut to_bob = Vec::new();
        let mut to_alice = Vec::new();
        for _ in 0..case.size {
            let len = rng.range_usize(0..=3000);
            let data = rng.bytes(len);
            let (from, dest, log) = if rng.chance(0.5) {
                (alice, &b"bob"[..], &mut to_bob)
            } else {
                (bob, &b"alice"[..], &mut to_alice)
            };
            sim.command(
                from,
                ClientCommand::Send {
                    dest: dest.to_vec(),
                    data: data.clone(),
                },
            );
            log.push(data);
            if rng.chance(0.3) {
                sim.advance(Duration::from_millis(rng.range(0..=20_000)));
            }
        }
        sim.run_until_idle();
        let messages = |events: Vec<ClientEvent>, from: &[u8]| -> Result<Vec<Vec<u8>>, String> {
            events
                .into_iter()
                .map(|e| match e {
                    ClientEvent::Message { from: f, data } if f == from => Ok(data),
                    other => Err(format!("unexpected {other:?}")),
                })
                .collect()
        };
        ensure!(
            messages(sim.events(bob), b"alice")? == to_bob,
            "bob's messages"
        );
        ensure!(
            messages(sim.events(alice), b"bob")? == to_alice,
            "alice's messages"
        );

        sim.advance(Duration::from_secs(300));
        ensure!(
            sim.machine(alice).is_open() && sim.machine(bob).is_open(),
            "NR-16: keep-alives hold the connections"
        );
        let events = sim.events(late);
        ensure!(
            matches!(events.as_slice(), [ClientEvent::Closed { .. }]),
            "NR-9: a keep-alive after 31 s is too late: {events:?}"
        );
        let stats = relay.stats();
        ensure!(
            stats.keepalives >= 2 * 25,
            "NR-10: keep-alives counted: {stats:?}"
        );
        ensure!(
            relay.server().connection_count() == 2,
            "alice and bob remain"
        );
        Ok(())
    }
    sim::check(
        property(
            "nr16_client_machines_exchange_frames_and_keep_alive",
            20,
            40,
        ),
        scenario,
    );
}

/// `Command::Shutdown`: every connection is closed (its client reads EOF after
/// what was already delivered), the listener is closed, a new client is refused.
#[test]
fn shutdown_closes_every_connection_and_the_listener() {
    fn scenario(case: Case) -> Result<(), String> {
        let mut relay = Relay::start(case.seed, Config::default(), SimConfig::default());
        let a = register(&mut relay, b"a");
        let b = register(&mut relay, b"b");
        let silent = relay.connect(b"");
        relay.sim.client_send(a, &frame(b"b", b"before"));
        relay.sim.run_until_idle();
        relay.sim.command(relay.node, Command::Shutdown);
        relay.sim.run_until_idle();
        for (c, name) in [(a, "a"), (b, "b"), (silent, "silent")] {
            ensure!(relay.sim.client_eof(c), "{name} reads EOF");
        }
        ensure!(
            parse_stream(relay.sim.client_received(b))?
                == vec![(b"a".to_vec(), b"before".to_vec())],
            "b got what was sent before the shutdown"
        );
        ensure!(relay.server().connection_count() == 0, "no connection left");
        ensure!(
            relay.sim.listen_addr(relay.node).is_none(),
            "the listener is closed"
        );
        let late = relay.sim.connect_client(relay.addr);
        ensure!(relay.sim.client_refused(late), "a new client is refused");
        Ok(())
    }
    sim::check(
        property("shutdown_closes_every_connection_and_the_listener", 20, 1),
        scenario,
    );
}
