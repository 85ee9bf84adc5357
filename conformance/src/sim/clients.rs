//! The test's own TCP endpoints: clients that connect to machines, and
//! listeners that machines connect to.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ferry_core::io::ConnId;

use super::tcp::{End, Link, Owner};
use super::{ClientId, Owned, Peer, Sim, TcpOwner, TestListener, TestListenerState};

impl Sim {
    // ---- test clients -----------------------------------------------------------

    pub(super) fn new_host_ip(&mut self) -> IpAddr {
        self.next_host += 1;
        IpAddr::V4(Ipv4Addr::from(0xc000_0200_u32 + self.next_host))
    }

    /// Open a TCP connection from a new test client to `addr`. If a machine listens
    /// there it gets `Accepted` at the next step; if nobody does, the client is
    /// refused ([`Sim::client_refused`]). The client reads from the start.
    pub fn connect_client(&mut self, addr: SocketAddr) -> ClientId {
        let id = self.peers.len();
        let from = SocketAddr::new(self.new_host_ip(), 40000);
        let target = self.tcp_bound.get(&addr).copied().or_else(|| {
            // `127.0.0.1:port` from a test: the only machine listening on that port.
            (addr.ip().is_loopback() || addr.ip().is_unspecified())
                .then(|| {
                    self.tcp_bound
                        .iter()
                        .find(|(a, _)| a.port() == addr.port())
                        .map(|(_, owner)| *owner)
                })
                .flatten()
        });
        let window = self.config.tcp_window;
        let link = match target {
            Some(TcpOwner::Node { node, listener }) => {
                let conn = self.alloc_conn(node);
                let l = self.links.len();
                self.links.push(Link::new(
                    End::new(Owner::Peer(id), true),
                    End::new(Owner::Node { node, conn }, false),
                    window,
                ));
                self.nodes[node].conns.insert(conn, (l, 1));
                self.pending.push_back((
                    node,
                    Owned::Accepted {
                        listener,
                        conn,
                        peer: from,
                    },
                ));
                Some((l, 0))
            }
            Some(TcpOwner::Test(listener)) => {
                let other = id + 1;
                let l = self.links.len();
                self.links.push(Link::new(
                    End::new(Owner::Peer(id), true),
                    End::new(Owner::Peer(other), true),
                    window,
                ));
                self.peers.push(Peer {
                    addr: from,
                    link: Some((l, 0)),
                    inbox: Vec::new(),
                });
                self.peers.push(Peer {
                    addr: self.listeners[listener].addr,
                    link: Some((l, 1)),
                    inbox: Vec::new(),
                });
                self.listeners[listener].backlog.push_back(ClientId(other));
                self.record(format!("c{id} connect {addr} -> c{other}"), &[]);
                return ClientId(id);
            }
            None => None,
        };
        self.peers.push(Peer {
            addr: from,
            link,
            inbox: Vec::new(),
        });
        let outcome = if link.is_some() { "" } else { " refused" };
        self.record(format!("c{id} connect {addr}{outcome}"), &[]);
        ClientId(id)
    }

    /// Where a test endpoint (listener or UDP socket) binds `addr`: an
    /// unspecified address means a new test host, port 0 an ephemeral port.
    pub(super) fn test_bind_addr(&mut self, addr: SocketAddr) -> SocketAddr {
        let ip = if addr.ip().is_unspecified() {
            self.new_host_ip()
        } else {
            addr.ip()
        };
        let port = if addr.port() == 0 {
            self.alloc_port(ip)
        } else {
            addr.port()
        };
        SocketAddr::new(ip, port)
    }

    pub(super) fn peer_end(&self, client: ClientId) -> Option<(usize, usize)> {
        self.peers[client.0].link
    }

    /// Write `data` from the client. It reaches the other side in chunks of any
    /// size, as that side reads. Dropped if the other side has closed.
    pub fn client_send(&mut self, client: ClientId, data: &[u8]) {
        let Some((l, e)) = self.peer_end(client) else {
            return;
        };
        let link = &mut self.links[l];
        assert!(
            !link.ends[e].closed && !link.ends[e].shutdown,
            "client_send on client {} after client_close or client_shutdown",
            client.0
        );
        self.record(format!("c{} send {} bytes", client.0, data.len()), data);
        let link = &mut self.links[l];
        if !link.ends[1 - e].closed {
            link.dirs[e].write(data);
        }
    }

    /// Close the client's socket. Its bytes still reach the other side, then EOF.
    pub fn client_close(&mut self, client: ClientId) {
        self.record(format!("c{} close", client.0), &[]);
        if let Some((l, e)) = self.peer_end(client) {
            self.close_end(l, e, true, true);
        }
    }

    /// Half-close the client's socket (`shutdown(Write)`): its bytes still reach
    /// the other side, then EOF; the client goes on reading. A machine with
    /// `HALF_CLOSE` hears `ReadClosed`, the others `Closed`.
    pub fn client_shutdown(&mut self, client: ClientId) {
        self.record(format!("c{} shutdown", client.0), &[]);
        if let Some((l, e)) = self.peer_end(client)
            && !self.links[l].ends[e].closed
        {
            self.shut_down(l, e);
        }
    }

    /// Start or stop reading. A client that does not read takes at most
    /// [`SimConfig::tcp_window`](super::SimConfig::tcp_window) bytes (see [`Sim::client_set_window`]); then the
    /// sender's queue stops draining.
    pub fn client_set_reading(&mut self, client: ClientId, reading: bool) {
        self.record(format!("c{} reading {reading}", client.0), &[]);
        if let Some((l, e)) = self.peer_end(client) {
            self.links[l].ends[e].paused = !reading;
        }
    }

    /// Set how many bytes can be on their way to the client (its socket buffers).
    pub fn client_set_window(&mut self, client: ClientId, window: usize) {
        if let Some((l, e)) = self.peer_end(client) {
            self.links[l].dirs[1 - e].window = window.max(1);
        }
    }

    /// Every byte the client has read (since the last [`Sim::client_take`]).
    pub fn client_received(&self, client: ClientId) -> &[u8] {
        &self.peers[client.0].inbox
    }

    /// Take the bytes the client has read.
    pub fn client_take(&mut self, client: ClientId) -> Vec<u8> {
        std::mem::take(&mut self.peers[client.0].inbox)
    }

    /// Nobody listened at the address the client connected to.
    pub fn client_refused(&self, client: ClientId) -> bool {
        self.peers[client.0].link.is_none()
    }

    /// The client has read end-of-stream.
    pub fn client_eof(&self, client: ClientId) -> bool {
        self.peer_end(client)
            .is_some_and(|(l, e)| self.links[l].ends[e].eof)
    }

    /// The other side closed the connection by its own decision (`Action::Close`),
    /// whether or not the client has read up to the EOF yet.
    pub fn client_closed_by_remote(&self, client: ClientId) -> bool {
        self.peer_end(client)
            .is_some_and(|(l, e)| self.links[l].ends[1 - e].closed_by_owner)
    }

    /// The other side is gone, for any reason (closed it, or saw it close).
    pub fn client_remote_gone(&self, client: ClientId) -> bool {
        self.peer_end(client)
            .is_none_or(|(l, e)| self.links[l].ends[1 - e].closed)
    }

    /// The id the machine knows this client's connection by.
    pub fn client_conn(&self, client: ClientId) -> Option<ConnId> {
        let (l, e) = self.peer_end(client)?;
        self.links[l].ends[1 - e].node_conn().map(|(_, conn)| conn)
    }

    /// The client's own address, as the machine sees it.
    pub fn client_addr(&self, client: ClientId) -> SocketAddr {
        self.peers[client.0].addr
    }

    /// The machine has paused reading from this client (`PauseRead` in force).
    pub fn client_paused(&self, client: ClientId) -> bool {
        self.peer_end(client).is_some_and(|(l, e)| {
            let remote = &self.links[l].ends[1 - e];
            remote.paused && !remote.closed
        })
    }

    /// How many `PauseRead`s the machine issued for this client's connection.
    pub fn client_pause_count(&self, client: ClientId) -> u64 {
        self.peer_end(client)
            .map_or(0, |(l, e)| self.links[l].ends[1 - e].pauses)
    }

    /// Bytes the client wrote that the other side has not read yet.
    pub fn client_unread(&self, client: ClientId) -> usize {
        self.peer_end(client).map_or(0, |(l, e)| {
            let pipe = &self.links[l].dirs[e];
            pipe.queue.len() + pipe.socket.len()
        })
    }

    /// Bytes the other side's runtime holds queued for this client right now.
    pub fn client_queued(&self, client: ClientId) -> usize {
        self.peer_end(client)
            .map_or(0, |(l, e)| self.links[l].dirs[1 - e].queue.len())
    }

    /// The most bytes the other side's runtime ever held queued for this client:
    /// the memory the machine made its runtime spend on this connection.
    pub fn client_peak_queued(&self, client: ClientId) -> usize {
        self.peer_end(client)
            .map_or(0, |(l, e)| self.links[l].dirs[1 - e].peak_queue)
    }

    // ---- test listeners ----------------------------------------------------------

    /// Listen at `addr` (port 0: an ephemeral port) for machines' `Connect`s.
    pub fn listen(&mut self, addr: SocketAddr) -> TestListener {
        let addr = self.test_bind_addr(addr);
        let id = self.listeners.len();
        if self.tcp_bound.insert(addr, TcpOwner::Test(id)).is_some() {
            panic!("listen: {addr} is already bound");
        }
        self.listeners.push(TestListenerState {
            addr,
            backlog: VecDeque::new(),
        });
        TestListener(id)
    }

    /// Where the listener is bound.
    pub fn listener_addr(&self, listener: TestListener) -> SocketAddr {
        self.listeners[listener.0].addr
    }

    /// The next connection a machine opened to the listener, as a client the test drives.
    pub fn accept(&mut self, listener: TestListener) -> Option<ClientId> {
        self.listeners[listener.0].backlog.pop_front()
    }

    /// Stop listening: later `Connect`s to its address are refused.
    pub fn close_listener(&mut self, listener: TestListener) {
        let addr = self.listeners[listener.0].addr;
        if matches!(self.tcp_bound.get(&addr), Some(TcpOwner::Test(i)) if *i == listener.0) {
            self.tcp_bound.remove(&addr);
        }
    }
}
