//! What every test of the name relay shares: the relay in a simulation, the
//! wire written independently of core's codec, and small helpers.

use std::net::SocketAddr;
use std::time::Duration;

use ferry_conformance::sim::{ClientId, NodeId, Property, Sim, SimConfig};
use ferry_core::ConnId;
use ferry_core::name_relay::server::{CloseReason, Command, Config, Event, Server, Stats};

pub(crate) const TEST: &str = env!("CARGO_CRATE_NAME");
pub(crate) const NS: Duration = Duration::from_nanos(1);

pub(crate) fn property(name: &'static str, cases: u64, max_size: usize) -> Property {
    Property {
        test: TEST,
        name,
        cases,
        max_size,
    }
}

/// Return an error with the message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

// ---- the relay in a simulation ------------------------------------------------------

pub(crate) struct Relay {
    pub(crate) sim: Sim,
    pub(crate) node: NodeId<Server>,
    pub(crate) addr: SocketAddr,
}

impl Relay {
    pub(crate) fn start(seed: u64, config: Config, sim_config: SimConfig) -> Self {
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

    /// A relay with default settings in a default simulation.
    pub(crate) fn start_default(seed: u64) -> Self {
        Self::start(seed, Config::default(), SimConfig::default())
    }

    pub(crate) fn server(&self) -> &Server {
        self.sim.machine(self.node)
    }

    pub(crate) fn stats(&self) -> Stats {
        self.server().stats()
    }

    /// A new client that sends `bytes` at once.
    pub(crate) fn connect(&mut self, bytes: &[u8]) -> ClientId {
        let client = self.sim.connect_client(self.addr);
        if !bytes.is_empty() {
            self.sim.client_send(client, bytes);
        }
        client
    }

    /// The `Closed` events since the last call, as (conn, reason).
    pub(crate) fn closes(&mut self) -> Vec<(ConnId, CloseReason)> {
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

pub(crate) fn frame(name: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = name.to_vec();
    out.push(b'|');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b'|');
    out.extend_from_slice(payload);
    out
}

pub(crate) fn registration(name: &[u8]) -> Vec<u8> {
    let mut out = name.to_vec();
    out.push(b'|');
    out
}

/// A frame as a client reads it: (sender, payload).
pub(crate) type Delivery = (Vec<u8>, Vec<u8>);

/// Split a relay-to-client stream into frames; an error if it is not a sequence
/// of whole frames.
pub(crate) fn parse_stream(mut bytes: &[u8]) -> Result<Vec<Delivery>, String> {
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

pub(crate) fn show(name: &[u8]) -> String {
    format!("\"{}\"", name.escape_ascii())
}

/// Register `name` on a new client and settle.
pub(crate) fn register(relay: &mut Relay, name: &[u8]) -> ClientId {
    let id = relay.connect(&registration(name));
    relay.sim.run_until_idle();
    id
}

/// NR-3, NR-9 to the nanosecond: after `wait` more the relay still holds `client`
/// (else the error `messages.0`); one nanosecond later it has closed it (else
/// `messages.1`).
pub(crate) fn closed_just_after(
    relay: &mut Relay,
    client: ClientId,
    wait: Duration,
    messages: (&str, &str),
) -> Result<(), String> {
    relay.sim.advance(wait);
    ensure!(!relay.sim.client_closed_by_remote(client), "{}", messages.0);
    relay.sim.advance(NS);
    ensure!(relay.sim.client_closed_by_remote(client), "{}", messages.1);
    Ok(())
}
