//! How the simulator carries out actions and moves bytes: the executor proper.

use std::collections::btree_map::Entry;
use std::net::{IpAddr, SocketAddr};

use ferry_core::io::{Action, ConnId, Input};

use super::tcp::{End, Link, Owner};
use super::udp::UdpOwner;
use super::{Chunking, ClientId, FIRST_EPHEMERAL_PORT, Op, Owned, Peer, Sim, TcpOwner};

impl Sim {
    // ---- internals -----------------------------------------------------------------

    pub(super) fn chunk(&mut self, available: usize) -> usize {
        match self.config.chunking {
            Chunking::Whole => available,
            Chunking::Random => self.rng.chunk(available, self.config.max_chunk),
        }
    }

    pub(super) fn alloc_conn(&mut self, node: usize) -> ConnId {
        let slot = &mut self.nodes[node];
        let conn = ConnId(slot.next_conn);
        slot.next_conn += 1;
        conn
    }

    pub(super) fn alloc_port(&mut self, ip: IpAddr) -> u16 {
        loop {
            let port = self.next_port;
            self.next_port = if port == u16::MAX {
                FIRST_EPHEMERAL_PORT
            } else {
                port + 1
            };
            let addr = SocketAddr::new(ip, port);
            if !self.tcp_bound.contains_key(&addr) && !self.udp_bound.contains_key(&addr) {
                return port;
            }
        }
    }

    /// A machine's own view of an address: loopback and unspecified mean its host.
    pub(super) fn local_view(&self, node: usize, addr: SocketAddr) -> SocketAddr {
        if addr.ip().is_unspecified() || addr.ip().is_loopback() {
            SocketAddr::new(self.nodes[node].ip, addr.port())
        } else {
            addr
        }
    }

    pub(super) fn bind_addr(&mut self, node: usize, addr: SocketAddr) -> SocketAddr {
        let addr = self.local_view(node, addr);
        if addr.port() == 0 {
            SocketAddr::new(addr.ip(), self.alloc_port(addr.ip()))
        } else {
            addr
        }
    }

    /// Execute the actions a machine queued, in order.
    pub(super) fn drain(&mut self, n: usize) {
        while let Some(action) = self.nodes[n].driven.next_action() {
            let bytes: &[u8] = match &action {
                Action::Send { data, .. }
                | Action::SendTo { data, .. }
                | Action::WriteTun(data) => data,
                _ => &[],
            };
            self.trace
                .record(self.offset, format!("n{n} -> {action:?}"), bytes);
            self.execute(n, action);
        }
    }

    pub(super) fn deliver(&mut self, n: usize, input: Input<'_>) {
        let (line, bytes): (String, &[u8]) = match input {
            Input::Received { conn, data } => {
                (format!("Received({conn}, {} bytes)", data.len()), data)
            }
            Input::Datagram { socket, from, data } => (
                format!("Datagram({socket}, {from}, {} bytes)", data.len()),
                data,
            ),
            Input::TunPacket(data) => (format!("TunPacket({} bytes)", data.len()), data),
            other => (format!("{other:?}"), &[]),
        };
        self.trace
            .record(self.offset, format!("n{n} <- {line}"), bytes);
        let now = self.now();
        self.nodes[n].driven.input(input, now);
        self.drain(n);
    }

    /// Deliver an answer to an earlier action, unless the machine has closed what
    /// it answers meanwhile ("no further input comes for it").
    pub(super) fn deliver_owned(&mut self, n: usize, owned: &Owned) {
        let slot = &mut self.nodes[n];
        let live = match owned {
            Owned::Accepted { conn, .. } | Owned::Connected { conn, .. } => {
                match slot.conns.get(conn) {
                    Some(&(l, e)) => {
                        self.links[l].ends[e].established = true;
                        true
                    }
                    None => false,
                }
            }
            Owned::ConnectFailed { conn, .. } | Owned::Closed { conn } => {
                !slot.cancelled.remove(conn)
            }
            Owned::Listening { listener, .. } => slot.listeners.contains_key(listener),
            Owned::UdpBound { socket, .. } => slot.sockets.contains_key(socket),
            Owned::ListenFailed { .. } | Owned::UdpBindFailed { .. } | Owned::TunPacket(_) => true,
            // Data is delivered straight from the links, never queued as an answer.
            Owned::Received { .. }
            | Owned::ReadClosed { .. }
            | Owned::Flushed { .. }
            | Owned::Datagram { .. } => true,
        };
        if live {
            self.deliver(n, owned.as_input());
        } else {
            let input = owned.as_input();
            self.record(format!("n{n} closed before {input:?}"), &[]);
        }
    }

    pub(super) fn execute(&mut self, n: usize, action: Action) {
        match action {
            Action::Listen { listener, addr } => {
                let local = self.bind_addr(n, addr);
                if let Entry::Vacant(slot) = self.tcp_bound.entry(local) {
                    slot.insert(TcpOwner::Node { node: n, listener });
                    self.nodes[n].listeners.insert(listener, local);
                    self.pending
                        .push_back((n, Owned::Listening { listener, local }));
                } else {
                    let error = "address in use";
                    self.pending.push_back((
                        n,
                        Owned::ListenFailed {
                            listener,
                            error: error.into(),
                        },
                    ));
                }
            }
            Action::CloseListener { listener } => {
                if let Some(local) = self.nodes[n].listeners.remove(&listener) {
                    self.tcp_bound.remove(&local);
                }
            }
            Action::Connect { conn, addr } => self.machine_connect(n, conn, addr),
            Action::Send { conn, data } => {
                if let Some(&(l, e)) = self.nodes[n].conns.get(&conn) {
                    let link = &mut self.links[l];
                    // After a `Pipe` this is the spliced stream: the bytes go in order
                    // with what the pipe forwards (and are never reported as `Flushed`).
                    if link.ends[e].shutdown {
                        let line = format!("n{n} send after shutdown dropped ({conn})");
                        self.record(line, &[]);
                    } else if !link.ends[e].closed {
                        link.dirs[e].write(&data);
                    }
                }
            }
            Action::Shutdown { conn } => {
                if let Some(&(l, e)) = self.nodes[n].conns.get(&conn) {
                    // The FIN follows what is queued: the receiver reads EOF after it.
                    self.shut_down(l, e);
                }
            }
            Action::Close { conn } => {
                if let Some((l, e)) = self.nodes[n].conns.remove(&conn) {
                    let splice = self.links[l].ends[e].splice;
                    self.close_end(l, e, true, false);
                    if let Some((pl, pe)) = splice {
                        // A spliced pair ends together; the other side hears of it
                        // after this drain, as from a runtime.
                        self.close_node_end_later(pl, pe);
                    }
                } else if self.pending.iter().any(|(m, o)| {
                    *m == n
                        && matches!(o, Owned::ConnectFailed { conn: c, .. } | Owned::Closed { conn: c }
                            if *c == conn)
                }) {
                    self.nodes[n].cancelled.insert(conn);
                }
            }
            Action::PauseRead { conn } => {
                if let Some(&(l, e)) = self.nodes[n].conns.get(&conn) {
                    // Only the first `PauseRead` grants a read-ahead: what is left of it
                    // bounds everything delivered until `ResumeRead`.
                    let fresh = !self.links[l].ends[e].paused;
                    let ahead = if fresh && self.rng.chance(self.config.read_ahead) {
                        self.rng.range_usize(1..=self.config.max_read_ahead.max(1))
                    } else {
                        0
                    };
                    let end = &mut self.links[l].ends[e];
                    end.pauses += 1;
                    if fresh {
                        end.paused = true;
                        end.read_ahead = ahead;
                    }
                }
            }
            Action::ResumeRead { conn } => {
                if let Some(&(l, e)) = self.nodes[n].conns.get(&conn) {
                    let end = &mut self.links[l].ends[e];
                    end.paused = false;
                    end.read_ahead = 0;
                }
            }
            Action::Pipe { a, b } => self.pipe(n, a, b),
            Action::BindUdp { socket, addr } => {
                let local = self.bind_addr(n, addr);
                if let Entry::Vacant(slot) = self.udp_bound.entry(local) {
                    slot.insert(UdpOwner::Node { node: n, socket });
                    self.nodes[n].sockets.insert(socket, local);
                    self.pending
                        .push_back((n, Owned::UdpBound { socket, local }));
                } else {
                    let error = "address in use";
                    self.pending.push_back((
                        n,
                        Owned::UdpBindFailed {
                            socket,
                            error: error.into(),
                        },
                    ));
                }
            }
            Action::CloseUdp { socket } => {
                if let Some(local) = self.nodes[n].sockets.remove(&socket) {
                    self.udp_bound.remove(&local);
                }
            }
            Action::SendTo { socket, to, data } => {
                if let Some(&from) = self.nodes[n].sockets.get(&socket) {
                    let to = self.local_view(n, to);
                    self.transmit(from, to, data);
                }
            }
            Action::WriteTun(packet) => self.nodes[n].tun_out.push(packet),
        }
    }

    /// Splice `a` and `b`. Like both runtimes, a pipe of an unknown, closed,
    /// already piped or identical connection ends at once: each side that exists
    /// (and what it was piped to) is closed and reported `Closed` after the drain.
    fn pipe(&mut self, n: usize, a: ConnId, b: ConnId) {
        let free = |conn: &ConnId| {
            self.nodes[n]
                .conns
                .get(conn)
                .filter(|&&(l, e)| self.links[l].ends[e].splice.is_none())
                .copied()
        };
        match (free(&a), free(&b)) {
            (Some(ea), Some(eb)) if a != b => {
                for ((l, e), other) in [(ea, eb), (eb, ea)] {
                    let end = &mut self.links[l].ends[e];
                    end.splice = Some(other);
                    end.paused = false;
                    end.read_ahead = 0;
                }
                // A FIN a half-closing machine was told of before is carried through.
                for ((l, e), (ol, oe)) in [(ea, eb), (eb, ea)] {
                    if self.links[l].ends[e].eof {
                        self.shut_down(ol, oe);
                    }
                }
                self.end_pipe_if_done(ea, true);
            }
            _ => {
                for conn in [a, b] {
                    if let Some(&(l, e)) = self.nodes[n].conns.get(&conn) {
                        let splice = self.links[l].ends[e].splice;
                        self.close_node_end_later(l, e);
                        if let Some((pl, pe)) = splice {
                            self.close_node_end_later(pl, pe);
                        }
                    }
                }
            }
        }
    }

    /// Shut end `e` of link `l` down for writing: later writes are dropped, the
    /// other end reads EOF after what was queued.
    pub(super) fn shut_down(&mut self, l: usize, e: usize) {
        let link = &mut self.links[l];
        link.ends[e].shutdown = true;
        link.dirs[e].fin = true;
    }

    /// A spliced end whose both directions carried their FIN through: the pipe
    /// ends, both sides close and are reported `Closed` (after the drain if `later`).
    pub(super) fn end_pipe_if_done(&mut self, (l, e): (usize, usize), later: bool) {
        let Some((pl, pe)) = self.links[l].ends[e].splice else {
            return;
        };
        let done = |(l, e): (usize, usize)| {
            let link = &self.links[l];
            let end = &link.ends[e];
            !end.closed && end.eof && link.dirs[e].fin && link.dirs[e].queue.is_empty()
        };
        if !done((l, e)) || !done((pl, pe)) {
            return;
        }
        self.record(
            format!("link {l} and link {pl}: pipe ended by both FINs"),
            &[],
        );
        if later {
            self.close_node_end_later(l, e);
            self.close_node_end_later(pl, pe);
        } else {
            let reports: Vec<_> = [(l, e), (pl, pe)]
                .into_iter()
                .filter_map(|(l, e)| self.end_for_machine(l, e))
                .collect();
            for (node, conn) in reports {
                self.deliver(node, Input::Closed { conn });
            }
        }
    }

    pub(super) fn machine_connect(&mut self, n: usize, conn: ConnId, addr: SocketAddr) {
        let target = self.local_view(n, addr);
        let ip = self.nodes[n].ip;
        let local = SocketAddr::new(ip, self.alloc_port(ip));
        let window = self.config.tcp_window;
        let l = self.links.len();
        match self.tcp_bound.get(&target).copied() {
            Some(TcpOwner::Node { node, listener }) => {
                let accepted = self.alloc_conn(node);
                self.links.push(Link::new(
                    End::new(Owner::Node { node: n, conn }, false),
                    End::new(
                        Owner::Node {
                            node,
                            conn: accepted,
                        },
                        false,
                    ),
                    window,
                ));
                self.nodes[n].conns.insert(conn, (l, 0));
                self.nodes[node].conns.insert(accepted, (l, 1));
                self.pending
                    .push_back((n, Owned::Connected { conn, local }));
                self.pending.push_back((
                    node,
                    Owned::Accepted {
                        listener,
                        conn: accepted,
                        peer: local,
                    },
                ));
            }
            Some(TcpOwner::Test(listener)) => {
                let peer = self.peers.len();
                self.links.push(Link::new(
                    End::new(Owner::Node { node: n, conn }, false),
                    End::new(Owner::Peer(peer), true),
                    window,
                ));
                self.peers.push(Peer {
                    addr: target,
                    link: Some((l, 1)),
                    inbox: Vec::new(),
                });
                self.listeners[listener].backlog.push_back(ClientId(peer));
                self.nodes[n].conns.insert(conn, (l, 0));
                self.pending
                    .push_back((n, Owned::Connected { conn, local }));
            }
            None => {
                let error = "connection refused";
                self.pending.push_back((
                    n,
                    Owned::ConnectFailed {
                        conn,
                        error: error.into(),
                    },
                ));
            }
        }
    }

    /// Close end `e` of link `l`: its owner gets nothing more. `drain` keeps what
    /// it queued flowing (a test client's close); otherwise one attempt moves what
    /// fits into the socket and the rest is dropped (`Action::Close`).
    pub(super) fn close_end(&mut self, l: usize, e: usize, by_owner: bool, drain: bool) {
        let link = &mut self.links[l];
        if link.ends[e].closed {
            return;
        }
        link.ends[e].closed = true;
        link.ends[e].closed_by_owner = by_owner;
        let receiver_gone = link.ends[1 - e].closed;
        let out = &mut link.dirs[e];
        if !drain {
            if !receiver_gone {
                out.flush(out.queue.len());
            }
            if self.config.close_linger.is_zero() || out.queue.is_empty() {
                out.queue.clear();
            } else {
                self.seq += 1;
                let until = self.offset + self.config.close_linger;
                self.lingers.insert((until, self.seq), (l, e));
            }
        }
        let link = &mut self.links[l];
        link.dirs[e].fin = true;
        // What was on its way to this end is lost with its socket.
        link.dirs[1 - e].socket.clear();
    }

    /// Close a machine's end that the machine did not ask to close, and tell it.
    pub(super) fn close_node_end(&mut self, l: usize, e: usize) {
        if let Some((node, conn)) = self.end_for_machine(l, e) {
            self.deliver(node, Input::Closed { conn });
        }
    }

    /// As [`Sim::close_node_end`], from inside a drain: the machine is told after
    /// the drain ends, like any other input (and not if it closes `conn` first).
    pub(super) fn close_node_end_later(&mut self, l: usize, e: usize) {
        if let Some((node, conn)) = self.end_for_machine(l, e) {
            self.pending.push_back((node, Owned::Closed { conn }));
        }
    }

    /// Close a machine's end for it; the machine and conn to tell, if any.
    fn end_for_machine(&mut self, l: usize, e: usize) -> Option<(usize, ConnId)> {
        let end = &self.links[l].ends[e];
        if end.closed {
            return None;
        }
        let (node, conn) = end.node_conn()?;
        let drain = end.splice.is_some();
        self.close_end(l, e, false, drain);
        self.nodes[node].conns.remove(&conn);
        Some((node, conn))
    }

    pub(super) fn ready_ops(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        let now = self.now();
        for (n, node) in self.nodes.iter().enumerate() {
            if node.driven.deadline().is_some_and(|d| d <= now) {
                ops.push(Op::Timer(n));
            }
        }
        if self
            .in_flight
            .keys()
            .next()
            .is_some_and(|(at, _)| *at <= self.offset)
        {
            ops.push(Op::Datagram);
        }
        if self
            .lingers
            .keys()
            .next()
            .is_some_and(|(at, _)| *at <= self.offset)
        {
            ops.push(Op::Linger);
        }
        for (l, link) in self.links.iter().enumerate() {
            for d in 0..2 {
                let (sender, receiver, pipe) = (&link.ends[d], &link.ends[1 - d], &link.dirs[d]);
                if !pipe.queue.is_empty()
                    && sender.established
                    && (receiver.closed || pipe.room() > 0)
                {
                    ops.push(Op::Flush(l, d));
                }
                let can_read = receiver.established && !receiver.closed;
                let splice_room = receiver
                    .splice
                    .is_none_or(|(pl, pe)| self.links[pl].dirs[pe].room() > 0);
                if can_read
                    && !pipe.socket.is_empty()
                    && (!receiver.paused || receiver.read_ahead > 0)
                    && splice_room
                {
                    ops.push(Op::Read(l, d));
                }
                if can_read && !receiver.eof && !receiver.paused && pipe.at_eof() {
                    ops.push(Op::Eof(l, d));
                }
            }
        }
        ops
    }

    pub(super) fn run_op(&mut self, op: Op) {
        match op {
            Op::Timer(n) => self.fire_timer(n),
            Op::Datagram => self.arrive_datagram(),
            Op::Linger => {
                if let Some((_, (l, e))) = self.lingers.pop_first() {
                    let dropped = self.links[l].dirs[e].queue.len();
                    self.links[l].dirs[e].queue.clear();
                    self.record(
                        format!("link {l} linger over, {dropped} bytes dropped"),
                        &[],
                    );
                }
            }
            Op::Flush(l, d) => self.flush(l, d),
            Op::Read(l, d) => self.read(l, d),
            Op::Eof(l, d) => self.eof(l, d),
        }
    }

    pub(super) fn fire_timer(&mut self, n: usize) {
        let now = self.now();
        let before = self.nodes[n].driven.deadline();
        self.trace.record(self.offset, format!("n{n} timeout"), &[]);
        self.nodes[n].driven.timeout(now);
        self.drain(n);
        let after = self.nodes[n].driven.deadline();
        if after.is_some_and(|d| d <= now) && after == before {
            self.nodes[n].stuck += 1;
            if self.nodes[n].stuck > 10_000 {
                panic!(
                    "machine n{n} keeps a deadline in the past after handle_timeout\n{}",
                    self.describe()
                );
            }
        } else {
            self.nodes[n].stuck = 0;
        }
    }

    pub(super) fn flush(&mut self, l: usize, d: usize) {
        let link = &self.links[l];
        let (sender, receiver, pipe) = (&link.ends[d], &link.ends[1 - d], &link.dirs[d]);
        let receiver_gone = receiver.closed;
        let available = if receiver_gone {
            pipe.queue.len()
        } else {
            pipe.queue.len().min(pipe.room())
        };
        let to_report = sender
            .node_conn()
            .filter(|_| !sender.closed && sender.splice.is_none());
        if receiver_gone && (sender.paused || sender.eof) && to_report.is_some() {
            // A machine that does not read (or read EOF already, being half-closing)
            // learns of the close from the failed write.
            self.links[l].dirs[d].queue.clear();
            self.close_node_end(l, d);
            return;
        }
        if receiver_gone
            && !sender.closed
            && sender.node_conn().is_some()
            && let Some((pl, pe)) = sender.splice
        {
            // Writing a pipe's bytes to a peer that is gone fails: the pipe ends
            // at once, both sides are closed and reported.
            self.links[l].dirs[d].queue.clear();
            self.record(format!("link {l}: pipe write to a closed peer"), &[]);
            self.close_node_end(l, d);
            self.close_node_end(pl, pe);
            return;
        }
        let n = self.chunk(available);
        let pipe = &mut self.links[l].dirs[d];
        let moved = if receiver_gone {
            pipe.discard(n)
        } else {
            pipe.flush(n)
        };
        if let Some((node, conn)) = to_report {
            self.deliver(node, Input::Flushed { conn, bytes: moved });
        }
        // The last bytes before a pipe's FIN are out: the pipe may be over.
        self.end_pipe_if_done((l, d), false);
    }

    pub(super) fn read(&mut self, l: usize, d: usize) {
        let receiver = &self.links[l].ends[1 - d];
        let mut available = self.links[l].dirs[d].socket.len();
        if receiver.paused {
            available = available.min(receiver.read_ahead);
        }
        let n = self.chunk(available);
        let data = self.links[l].dirs[d].read(n);
        let receiver = &mut self.links[l].ends[1 - d];
        if receiver.paused {
            receiver.read_ahead -= data.len();
        }
        match (receiver.owner, receiver.splice) {
            (Owner::Peer(p), _) => {
                self.record(format!("c{p} <- {} bytes", data.len()), &data);
                self.peers[p].inbox.extend_from_slice(&data);
            }
            (Owner::Node { .. }, Some((pl, pe))) => {
                if self.links[pl].ends[pe].shutdown {
                    // The machine shut the other side down: like a `Send` after it.
                    let line = format!(
                        "link {pl}: {} piped bytes after shutdown dropped",
                        data.len()
                    );
                    self.record(line, &[]);
                } else {
                    self.links[pl].dirs[pe].write(&data);
                }
            }
            (Owner::Node { node, conn }, None) => {
                self.deliver(node, Input::Received { conn, data: &data });
            }
        }
    }

    pub(super) fn eof(&mut self, l: usize, d: usize) {
        let receiver = &mut self.links[l].ends[1 - d];
        receiver.eof = true;
        match (receiver.owner, receiver.splice) {
            (Owner::Peer(p), _) => self.record(format!("c{p} <- EOF"), &[]),
            (Owner::Node { .. }, Some((pl, pe))) => {
                // Half-close carried through: the other side gets a FIN after
                // everything read from this one; the opposite direction goes on.
                self.shut_down(pl, pe);
                self.end_pipe_if_done((l, 1 - d), false);
            }
            (Owner::Node { node, conn }, None) if self.nodes[node].driven.half_close() => {
                // Still writable, until `Close` or a failed write.
                self.deliver(node, Input::ReadClosed { conn });
            }
            (Owner::Node { .. }, None) => self.close_node_end(l, 1 - d),
        }
    }
}
