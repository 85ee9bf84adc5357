//! The deterministic simulator: a third executor of the IO vocabulary of
//! [`ferry_core::io`], for tests.
//!
//! A [`Sim`] hosts any number of machines (any [`Machine`], of any protocol) on
//! virtual hosts, plus endpoints the test drives by hand: TCP clients
//! ([`ClientId`]), TCP listeners ([`TestListener`]) and UDP sockets
//! ([`UdpEndpoint`]). It obeys every [`Action`](ferry_core::io::Action) and reports
//! every [`Input`](ferry_core::io::Input) the way a runtime does, with three differences that make tests
//! strong and fast:
//!
//! - **One seed decides everything.** How a byte stream is cut into reads and
//!   flushes, which ready connection moves next, each datagram's delay, loss and
//!   duplication: all are drawn from a SplitMix64 seeded by [`Sim::new`]. The same
//!   seed and the same test script give the same trace, byte for byte
//!   ([`Sim::trace_hash`]). Collections whose order is visible are `BTreeMap`s.
//! - **Virtual time.** The clock is a base `Instant`, taken once, plus an offset.
//!   Nothing sleeps: [`Sim::advance`] does all the work due at the current instant,
//!   then jumps to the next deadline (a machine's `poll_timeout`, a datagram's
//!   arrival). Thirty idle seconds cost microseconds.
//! - **Everything is observable.** What a machine sent to each client, whether it
//!   closed it, whether it paused reading from it, and the peak of every runtime
//!   write queue (the memory a machine must bound, see [`Sim::client_peak_queued`]).
//!
//! # The TCP model
//!
//! Each direction of a connection has a runtime-side write queue (what `Send`s
//! added and the socket has not taken; bytes leaving it are reported as
//! `Flushed`) and a socket of `window` bytes (kernel buffers plus the receiver's
//! window). A receiver that does not read ([`Sim::client_set_reading`], or a
//! machine after `PauseRead`) leaves the socket full, so the sender's queue stops
//! draining and `Flushed` stops: back-pressure, as on a real network. A machine that
//! paused a connection gets no `Received` for it (unless [`SimConfig::read_ahead`]
//! lets some read-ahead bytes through, as the contract allows) and its client's
//! bytes wait in the simulator.
//!
//! `Close` makes one attempt to move what is queued into the socket (or keeps
//! writing for [`SimConfig::close_linger`]), drops the rest, and the other end reads
//! EOF after the bytes that made it; nothing more is reported for that connection,
//! nor for a connection, listener or socket closed before its answer came.
//!
//! Each direction ends on its own with a FIN: a sender that closes or shuts down
//! (`Action::Shutdown`, [`Sim::client_shutdown`]) sets it behind what it queued,
//! and the receiver reads EOF once every byte before it was read, while the other
//! direction goes on. A machine reads a FIN as `ReadClosed` if it has
//! [`Machine::HALF_CLOSE`] (the connection stays writable until its `Close`),
//! else as `Closed` (the simulator closes the connection). A `Send` after a
//! `Shutdown` is dropped. A client's close reaches the machine as a FIN after all
//! the client's bytes were read; a machine that writes to a closed client while it
//! is not reading, or after it read the FIN, learns it from the failed write
//! (`Closed`), as with a real reset.
//!
//! `Pipe` splices two connections inside the simulator, bounded by the window; a
//! `Send` to a piped connection joins the spliced stream in order. A FIN read on
//! one side shuts the other side down behind what was forwarded (a FIN a
//! half-closing machine heard of before the `Pipe` at once); when both directions
//! ended so, both sides close and are reported `Closed`. A pipe's write to a peer
//! that has closed fails the pipe at once: both sides are closed and reported.
//! As in both runtimes, a `Pipe` of an unknown, closed, piped or identical
//! connection closes the sides that exist, and a `Closed` the simulator decides
//! while executing actions (the other side of a closed pipe) comes after the
//! drain, like any other input. A repeated `PauseRead` grants no new read-ahead.
//! TCP has no latency: order and splits are random, time does not pass.
//!
//! # UDP and TUN
//!
//! `SendTo` schedules the datagram for `now + delay`; delay, loss and duplication
//! follow a [`UdpLink`] (one for every path, or per pair of hosts), so datagrams
//! reorder whenever the delay spread allows. A datagram to an address nobody bound
//! is lost. `WriteTun` packets queue per machine ([`Sim::tun_take`]);
//! [`Sim::tun_inject`] feeds `TunPacket`.
//!
//! [`Sim::set_nat`] puts a host (a machine's or a test endpoint's IP) behind a
//! [`Nat`] of one of the RFC 4787 kinds ([`NatKind`]), in a private realm of its
//! own. A UDP datagram it sends to another address is translated when sent: it
//! travels with the mapping's public source (`FullCone`, `AddressRestricted` and
//! `PortRestricted` map each private ip:port to one public port for every
//! destination, preserving the port when it is free; `Symmetric` maps each
//! (private, remote) pair to a fresh port). A datagram reaching the public address
//! is filtered when it arrives (anyone; remote IPs the mapping sent to; exact
//! remote ip:ports it sent to) and delivered to the private address, or dropped
//! and recorded (`nat ...: filtered`). The private address is unreachable from
//! other hosts; a host talking to itself is not translated. A mapping lives
//! [`Nat::mapping_timeout`] after its last outbound datagram, checked lazily
//! against the virtual clock. Public ports come from a counter, not the RNG.
//! Delay, loss and duplication follow the [`UdpLink`] between the real hosts
//! ([`Sim::set_udp_path`] with the private address, not the public one). Only UDP
//! is translated: a NATed machine's TCP connections reach their destination from
//! its private address, and its listeners stay reachable.
//!
//! # Addresses
//!
//! Machine `n` lives at `10.0.0.{n+1}`; binding `0.0.0.0`, `127.0.0.1` or port 0
//! resolves to that address and an ephemeral port, reported in `Listening` /
//! `UdpBound`. Test clients connect from `192.0.2.x`.
//!
//! # Replaying a failure
//!
//! Properties run through [`check()`], which prints the seed and the command that
//! replays the failing case (`FERRY_SIM_SEED=... cargo test ...`). `FERRY_SIM_TRACE=1`
//! echoes the trace to stderr.
//!
//! # Layout
//!
//! This file: settings, ids, machines, running and the trace. `clients`: the test's
//! TCP endpoints; `udp`: datagrams; `nat`: the NAT model; `engine`: carrying out
//! actions and moving bytes; `tcp`: the link and pipe model; `check`: seeded
//! properties.

pub mod check;
mod clients;
mod engine;
mod nat;
mod node;
mod rng;
mod tcp;
mod trace;
mod udp;

#[cfg(test)]
mod nat_tests;
#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod tests;

pub use check::{Case, Property, Scenario, check, check_case, run_case};
pub use nat::{Nat, NatKind};
pub use node::NodeId;
pub use rng::SimRng;
pub use udp::UdpLink;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferry_core::io::{ConnId, ListenerId, MAX_READ_AHEAD, Machine, SocketId};

use nat::Nats;
use node::{Driven, Hosted};
use tcp::Link;
use trace::Trace;
use udp::{Endpoint, InFlight, UdpOwner};

/// How the simulator cuts byte streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Reads and flushes of random sizes (from single bytes to `max_chunk`).
    Random,
    /// Everything available at once: the split a test compares `Random` against.
    Whole,
}

/// Knobs of a simulation. The defaults model a fast, lossless LAN.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Bytes one direction of a TCP connection holds in its sockets (send buffer
    /// plus receive window). Default 256 KiB.
    pub tcp_window: usize,
    /// The largest single read or flush. Default 16 KiB.
    pub max_chunk: usize,
    /// How streams are cut. Default [`Chunking::Random`].
    pub chunking: Chunking,
    /// Probability that, after a `PauseRead`, the simulator still delivers some
    /// bytes (data a runtime had read ahead; the contract allows up to
    /// [`MAX_READ_AHEAD`]). Default 0.
    pub read_ahead: f64,
    /// The most bytes delivered after a `PauseRead` when it happens (a random amount
    /// up to this). Default [`MAX_READ_AHEAD`].
    pub max_read_ahead: usize,
    /// How long a closed connection keeps writing what was queued (`Action::Close`
    /// allows a short bounded linger). Zero, the default, is the strictest: one
    /// attempt, then what did not fit is dropped.
    pub close_linger: Duration,
    /// Every UDP path, unless [`Sim::set_udp_path`] says otherwise.
    pub udp: UdpLink,
    /// Steps at one instant before the simulator declares a livelock. Default 20 M.
    pub max_steps: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tcp_window: 256 << 10,
            max_chunk: 16 << 10,
            chunking: Chunking::Random,
            read_ahead: 0.0,
            max_read_ahead: MAX_READ_AHEAD,
            close_linger: Duration::ZERO,
            udp: UdpLink::PERFECT,
            max_steps: 20_000_000,
        }
    }
}

/// A TCP connection end driven by the test (it connected to a machine, or a
/// machine connected to one of the test's listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(usize);

/// A TCP listener driven by the test: machines' `Connect`s to it become clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TestListener(usize);

/// A UDP socket driven by the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UdpEndpoint(usize);

struct NodeSlot {
    ip: IpAddr,
    driven: Box<dyn Driven>,
    /// Live connections: the machine's id to (link, end).
    conns: BTreeMap<ConnId, (usize, usize)>,
    next_conn: u64,
    next_listener: u64,
    listeners: BTreeMap<ListenerId, SocketAddr>,
    sockets: BTreeMap<SocketId, SocketAddr>,
    tun_out: Vec<Vec<u8>>,
    /// Connects the machine closed before their `ConnectFailed` was delivered.
    cancelled: BTreeSet<ConnId>,
    /// Consecutive timeouts that left the deadline in the past (livelock guard).
    stuck: u32,
}

struct Peer {
    addr: SocketAddr,
    /// `None` if the connection was refused.
    link: Option<(usize, usize)>,
    inbox: Vec<u8>,
}

struct TestListenerState {
    addr: SocketAddr,
    backlog: VecDeque<ClientId>,
}

#[derive(Debug, Clone, Copy)]
enum TcpOwner {
    Node { node: usize, listener: ListenerId },
    Test(usize),
}

/// An input waiting for its turn: the core's owned form of `Input`.
use ferry_core::io::OwnedInput as Owned;

/// One unit of work that can happen at the current instant.
#[derive(Debug, Clone, Copy)]
enum Op {
    Timer(usize),
    Datagram,
    /// A closed connection's linger is over: drop what it still queues.
    Linger,
    /// Move bytes of `links[l].dirs[d]` from the queue to the socket.
    Flush(usize, usize),
    /// The receiver of `links[l].dirs[d]` reads a chunk.
    Read(usize, usize),
    /// The receiver of `links[l].dirs[d]` reads end-of-stream.
    Eof(usize, usize),
}

const FIRST_EPHEMERAL_PORT: u16 = 49152;

/// The simulator. See the module docs.
pub struct Sim {
    seed: u64,
    config: SimConfig,
    rng: SimRng,
    base: Instant,
    offset: Duration,
    nodes: Vec<NodeSlot>,
    links: Vec<Link>,
    peers: Vec<Peer>,
    listeners: Vec<TestListenerState>,
    endpoints: Vec<Endpoint>,
    tcp_bound: BTreeMap<SocketAddr, TcpOwner>,
    udp_bound: BTreeMap<SocketAddr, UdpOwner>,
    udp_paths: BTreeMap<(IpAddr, IpAddr), UdpLink>,
    /// The NATs in front of hosts, by host (see `nat`).
    nats: Nats,
    in_flight: BTreeMap<(Duration, u64), InFlight>,
    seq: u64,
    /// Closed connections still writing: (until, seq) -> (link, end).
    lingers: BTreeMap<(Duration, u64), (usize, usize)>,
    pending: VecDeque<(usize, Owned)>,
    next_port: u16,
    next_host: u32,
    trace: Trace,
}

impl Sim {
    /// A simulation with default settings whose every random choice follows `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, SimConfig::default())
    }

    /// A simulation with `config`.
    pub fn with_config(seed: u64, config: SimConfig) -> Self {
        Self {
            seed,
            config,
            rng: SimRng::stream(seed, "sim"),
            // The one real clock reading: every later instant is this plus virtual time.
            base: Instant::now(),
            offset: Duration::ZERO,
            nodes: Vec::new(),
            links: Vec::new(),
            peers: Vec::new(),
            listeners: Vec::new(),
            endpoints: Vec::new(),
            tcp_bound: BTreeMap::new(),
            udp_bound: BTreeMap::new(),
            udp_paths: BTreeMap::new(),
            nats: Nats::default(),
            in_flight: BTreeMap::new(),
            seq: 0,
            lingers: BTreeMap::new(),
            pending: VecDeque::new(),
            next_port: FIRST_EPHEMERAL_PORT,
            next_host: 0,
            trace: Trace::new(),
        }
    }

    /// The seed this simulation runs on.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The settings in force.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The virtual now.
    pub fn now(&self) -> Instant {
        self.base + self.offset
    }

    /// Virtual time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.offset
    }

    // ---- machines -------------------------------------------------------------

    /// Host `machine` on a new virtual host (`10.0.0.{n+1}`). Actions it already
    /// queued (a client's `Connect`, say) are carried out at the next step.
    pub fn add_machine<M>(&mut self, machine: M) -> NodeId<M>
    where
        M: Machine + 'static,
        M::Event: 'static,
    {
        let index = self.nodes.len();
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0001_u32 + index as u32));
        self.nodes.push(NodeSlot {
            ip,
            driven: Box::new(Hosted {
                machine,
                events: Vec::new(),
            }),
            conns: BTreeMap::new(),
            next_conn: 1,
            next_listener: 1,
            listeners: BTreeMap::new(),
            sockets: BTreeMap::new(),
            tun_out: Vec::new(),
            cancelled: BTreeSet::new(),
            stuck: 0,
        });
        NodeId::new(index)
    }

    fn hosted<M>(&self, node: NodeId<M>) -> &Hosted<M>
    where
        M: Machine + 'static,
        M::Event: 'static,
    {
        self.nodes[node.index]
            .driven
            .as_any()
            .downcast_ref::<Hosted<M>>()
            .expect("a NodeId<M> names a node hosting an M")
    }

    fn hosted_mut<M>(&mut self, node: NodeId<M>) -> &mut Hosted<M>
    where
        M: Machine + 'static,
        M::Event: 'static,
    {
        self.nodes[node.index]
            .driven
            .as_any_mut()
            .downcast_mut::<Hosted<M>>()
            .expect("a NodeId<M> names a node hosting an M")
    }

    /// The machine, to inspect it.
    pub fn machine<M>(&self, node: NodeId<M>) -> &M
    where
        M: Machine + 'static,
        M::Event: 'static,
    {
        &self.hosted(node).machine
    }

    /// The machine, to change it directly; actions it queues run at the next step.
    pub fn machine_mut<M>(&mut self, node: NodeId<M>) -> &mut M
    where
        M: Machine + 'static,
        M::Event: 'static,
    {
        &mut self.hosted_mut(node).machine
    }

    /// Give the machine an application command, and carry out its answer.
    pub fn command<M>(&mut self, node: NodeId<M>, command: M::Command)
    where
        M: Machine + 'static,
        M::Event: 'static,
    {
        let now = self.now();
        let hosted = self.hosted_mut(node);
        hosted.machine.handle_command(command, now);
        hosted.collect_events();
        self.record(format!("n{} command", node.index), &[]);
        self.drain(node.index);
    }

    /// Take the events the machine reported since the last call, in order.
    pub fn events<M>(&mut self, node: NodeId<M>) -> Vec<M::Event>
    where
        M: Machine + 'static,
        M::Event: 'static,
    {
        std::mem::take(&mut self.hosted_mut(node).events)
    }

    /// The virtual host address of a machine.
    pub fn node_ip<M>(&self, node: NodeId<M>) -> IpAddr {
        self.nodes[node.index].ip
    }

    /// The machine's bound TCP listeners.
    pub fn listeners<M>(&self, node: NodeId<M>) -> Vec<(ListenerId, SocketAddr)> {
        let slot = &self.nodes[node.index];
        slot.listeners.iter().map(|(l, a)| (*l, *a)).collect()
    }

    /// The address of the machine's first listener, once it is bound.
    pub fn listen_addr<M>(&self, node: NodeId<M>) -> Option<SocketAddr> {
        self.nodes[node.index].listeners.values().next().copied()
    }

    /// The machine's bound UDP sockets.
    pub fn udp_sockets<M>(&self, node: NodeId<M>) -> Vec<(SocketId, SocketAddr)> {
        let slot = &self.nodes[node.index];
        slot.sockets.iter().map(|(s, a)| (*s, *a)).collect()
    }

    /// Bind a listener the runtime owns and hands to the machine (no `Listen`
    /// action): the machine gets `Listening` with a runtime-allocated id (no core
    /// bit) at the next step, then `Accepted`s.
    pub fn adopt_listener<M>(
        &mut self,
        node: NodeId<M>,
        addr: SocketAddr,
    ) -> (ListenerId, SocketAddr) {
        let n = node.index;
        let listener = ListenerId(self.nodes[n].next_listener);
        self.nodes[n].next_listener += 1;
        let local = self.bind_addr(n, addr);
        if self.tcp_bound.contains_key(&local) {
            panic!("adopt_listener: {local} is already bound");
        }
        self.tcp_bound
            .insert(local, TcpOwner::Node { node: n, listener });
        self.nodes[n].listeners.insert(listener, local);
        self.pending
            .push_back((n, Owned::Listening { listener, local }));
        (listener, local)
    }

    /// Bytes now queued by the runtime on the machine's connection `conn`
    /// (sent, not yet flushed), if it is open.
    pub fn conn_queued<M>(&self, node: NodeId<M>, conn: ConnId) -> Option<usize> {
        let &(l, e) = self.nodes[node.index].conns.get(&conn)?;
        Some(self.links[l].dirs[e].queue.len())
    }

    /// The most bytes the runtime ever held queued on the machine's connection `conn`.
    pub fn conn_peak_queued<M>(&self, node: NodeId<M>, conn: ConnId) -> Option<usize> {
        let &(l, e) = self.nodes[node.index].conns.get(&conn)?;
        Some(self.links[l].dirs[e].peak_queue)
    }

    /// Feed the machine an IP packet from its TUN device.
    pub fn tun_inject<M>(&mut self, node: NodeId<M>, packet: Vec<u8>) {
        self.pending
            .push_back((node.index, Owned::TunPacket(packet)));
    }

    /// Take the IP packets the machine wrote to its TUN device.
    pub fn tun_take<M>(&mut self, node: NodeId<M>) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.nodes[node.index].tun_out)
    }

    // ---- running -----------------------------------------------------------------

    /// Do one unit of work at the current instant: a pending answer to an action, a
    /// due timer or datagram, or one chunk of TCP progress (chosen at random among
    /// the ready ones). `false` if nothing can happen without time passing.
    pub fn step(&mut self) -> bool {
        for n in 0..self.nodes.len() {
            self.drain(n);
        }
        if let Some((n, owned)) = self.pending.pop_front() {
            self.deliver_owned(n, &owned);
            return true;
        }
        let ops = self.ready_ops();
        let Some(&op) = self.rng.pick(&ops) else {
            return false;
        };
        self.run_op(op);
        true
    }

    /// Do everything that can happen without the clock moving. Returns the steps taken.
    pub fn run_until_idle(&mut self) -> u64 {
        let mut steps = 0;
        while self.step() {
            steps += 1;
            if steps > self.config.max_steps {
                panic!(
                    "livelock: more than {} steps at one instant\n{}",
                    self.config.max_steps,
                    self.describe()
                );
            }
        }
        steps
    }

    /// Let `duration` of virtual time pass: do what is due, jump to the next
    /// deadline or datagram arrival, and so on, then stop at exactly now + `duration`.
    pub fn advance(&mut self, duration: Duration) {
        let target = self.offset + duration;
        loop {
            self.run_until_idle();
            match self.next_event_offset() {
                Some(at) if at <= target => self.offset = self.offset.max(at),
                _ => break,
            }
        }
        self.offset = target;
        self.run_until_idle();
    }

    /// Run (jumping the clock as [`Sim::advance`] does) until `done` holds or
    /// `limit` of virtual time has passed; true if `done` held. `done` is checked
    /// whenever the simulation is idle at an instant.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let target = self.offset + limit;
        loop {
            self.run_until_idle();
            if done(self) {
                return true;
            }
            match self.next_event_offset() {
                Some(at) if at <= target => self.offset = self.offset.max(at),
                _ => break,
            }
        }
        self.offset = target;
        self.run_until_idle();
        done(self)
    }

    /// How long until something is due (a timer or a datagram), if anything is.
    pub fn next_event_in(&self) -> Option<Duration> {
        self.next_event_offset()
            .map(|at| at.saturating_sub(self.offset))
    }

    fn next_event_offset(&self) -> Option<Duration> {
        let timers = self
            .nodes
            .iter()
            .filter_map(|n| n.driven.deadline())
            .map(|d| d.saturating_duration_since(self.base));
        let datagram = self.in_flight.keys().next().map(|(at, _)| *at);
        let linger = self.lingers.keys().next().map(|(at, _)| *at);
        timers.chain(datagram).chain(linger).min()
    }

    // ---- the trace -----------------------------------------------------------------

    /// A hash of everything that happened (every action, input and client operation
    /// with its bytes and time). Two runs with the same seed and script are equal.
    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    /// How many things happened.
    pub fn trace_len(&self) -> u64 {
        self.trace.len()
    }

    /// The seed, the virtual time and the last lines of the trace: for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "sim seed {} at virtual time {:?}, {} trace lines; the last ones:\n{}",
            self.seed,
            self.offset,
            self.trace.len(),
            self.trace.tail(40)
        )
    }

    fn record(&mut self, line: String, bytes: &[u8]) {
        self.trace.record(self.offset, line, bytes);
    }
}
