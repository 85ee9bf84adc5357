//! Yamux streams bridged to TCP connections, for both ends of `multiplex`.
//!
//! The relay bridges each user's connection to a stream it opens; the forwarder
//! bridges each stream the relay opened to a connection to the local server.
//! Either way a [`MuxBridge`] owns the yamux [`Session`] running over one
//! control connection and a set of links `stream <-> conn`, and turns what
//! happens on either side into [`Action`]s:
//!
//! - conn -> stream: bytes go into the stream as far as the peer's window
//!   allows; the rest waits here and the conn is paused until `Writable`. The
//!   conn's FIN becomes the stream's FIN once everything before it was sent.
//! - stream -> conn: bytes are sent to the conn at once and credited back to the
//!   peer (`Session::consumed`) only as the runtime reports them `Flushed`, so a
//!   slow conn closes the peer's window: nothing is buffered beyond it (PR-13).
//!   The stream's FIN becomes `Shutdown` of the conn.
//! - a reset either way closes the other side; the control connection's end
//!   closes every linked conn (PR-5).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use crate::codec::yamux::GoAwayCode;
use crate::codec::yamux::session::{Config, Mode, Session, SessionError, SessionEvent};
use crate::io::{Action, ConnId};

/// Above this many unflushed bytes on the control connection, links stop
/// feeding the session until the runtime catches up.
const CONTROL_HIGH_WATER: usize = 4 << 20;

/// How a bridge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BridgeEnd {
    /// The control connection closed.
    ControlClosed,
    /// The session failed (protocol error, keep-alive).
    Session(SessionError),
}

#[derive(Debug)]
struct Link {
    conn: ConnId,
    /// The conn is connected and may be written (the forwarder's local conns
    /// start unconnected; stream bytes wait in `early` until then).
    connected: bool,
    early: Vec<u8>,
    /// conn -> stream bytes the window did not take yet.
    pending: Vec<u8>,
    paused: bool,
    /// The conn sent FIN; the stream gets FIN once `pending` is empty.
    conn_eof: bool,
    fin_sent: bool,
    /// The stream sent FIN; the conn was (or will be, once connected) shut down.
    stream_fin: bool,
}

impl Link {
    fn new(conn: ConnId, connected: bool) -> Link {
        Link {
            conn,
            connected,
            early: Vec::new(),
            pending: Vec::new(),
            paused: false,
            conn_eof: false,
            fin_sent: false,
            stream_fin: false,
        }
    }
}

/// One yamux session over `control`, bridged to TCP connections.
#[derive(Debug)]
pub(crate) struct MuxBridge {
    control: ConnId,
    session: Session,
    links: BTreeMap<u32, Link>,
    by_conn: BTreeMap<ConnId, u32>,
    control_unflushed: usize,
    /// Links with pending bytes that stopped for the control high-water mark.
    blocked: Vec<u32>,
    ended: Option<BridgeEnd>,
}

impl MuxBridge {
    pub(crate) fn new(control: ConnId, mode: Mode, config: Config, now: Instant) -> MuxBridge {
        MuxBridge {
            control,
            session: Session::new(mode, config, now),
            links: BTreeMap::new(),
            by_conn: BTreeMap::new(),
            control_unflushed: 0,
            blocked: Vec::new(),
            ended: None,
        }
    }

    pub(crate) fn control(&self) -> ConnId {
        self.control
    }

    /// True if `conn` is one of this bridge's linked connections.
    pub(crate) fn owns(&self, conn: ConnId) -> bool {
        self.by_conn.contains_key(&conn)
    }

    /// Set once the bridge ended; the owner then forgets it.
    pub(crate) fn ended(&self) -> Option<&BridgeEnd> {
        self.ended.as_ref()
    }

    /// Open a stream for an already connected `conn` (the relay's users).
    /// Refused (conn closed) if the session cannot open one.
    pub(crate) fn open_for(&mut self, conn: ConnId, out: &mut VecDeque<Action>) -> bool {
        match self.session.open() {
            Ok(stream) => {
                self.links.insert(stream, Link::new(conn, true));
                self.by_conn.insert(conn, stream);
                self.pump(out);
                true
            }
            Err(_) => {
                out.push_back(Action::Close { conn });
                false
            }
        }
    }

    /// Bytes on the control connection.
    pub(crate) fn control_received(
        &mut self,
        data: &[u8],
        now: Instant,
        out: &mut VecDeque<Action>,
        inbound: &mut dyn FnMut(u32) -> Option<(ConnId, SocketAddr)>,
    ) {
        if let Err(e) = self.session.receive(data, now) {
            self.fail(BridgeEnd::Session(e), out);
            return;
        }
        self.pump_events(out, inbound);
    }

    pub(crate) fn control_flushed(&mut self, bytes: usize, out: &mut VecDeque<Action>) {
        self.control_unflushed = self.control_unflushed.saturating_sub(bytes);
        if self.control_unflushed < CONTROL_HIGH_WATER / 2 && !self.blocked.is_empty() {
            for stream in std::mem::take(&mut self.blocked) {
                self.feed_stream(stream, out);
            }
            self.pump(out);
        }
    }

    /// The control connection ended (FIN or close): everything ends.
    pub(crate) fn control_closed(&mut self, out: &mut VecDeque<Action>) {
        self.end(BridgeEnd::ControlClosed, out);
    }

    /// Stop the session on purpose (shutdown): GoAway, then close it all.
    pub(crate) fn go_away(&mut self, out: &mut VecDeque<Action>) {
        self.session.go_away(GoAwayCode::Normal);
        self.pump(out);
        self.end(BridgeEnd::ControlClosed, out);
    }

    /// A linked conn finished connecting (forwarder).
    pub(crate) fn conn_connected(&mut self, conn: ConnId, out: &mut VecDeque<Action>) {
        let Some(&stream) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(link) = self.links.get_mut(&stream) else {
            return;
        };
        link.connected = true;
        if !link.early.is_empty() {
            out.push_back(Action::Send {
                conn,
                data: std::mem::take(&mut link.early),
            });
        }
        if link.stream_fin {
            out.push_back(Action::Shutdown { conn });
        }
    }

    /// Bytes from a linked conn.
    pub(crate) fn conn_received(&mut self, conn: ConnId, data: &[u8], out: &mut VecDeque<Action>) {
        let Some(&stream) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(link) = self.links.get_mut(&stream) else {
            return;
        };
        link.pending.extend_from_slice(data);
        self.feed_stream(stream, out);
        self.pump(out);
    }

    /// A linked conn sent FIN.
    pub(crate) fn conn_read_closed(&mut self, conn: ConnId, out: &mut VecDeque<Action>) {
        let Some(&stream) = self.by_conn.get(&conn) else {
            return;
        };
        if let Some(link) = self.links.get_mut(&stream) {
            link.conn_eof = true;
        }
        self.feed_stream(stream, out);
        self.pump(out);
    }

    /// `bytes` sent to a linked conn reached its socket: credit the peer.
    pub(crate) fn conn_flushed(&mut self, conn: ConnId, bytes: usize, out: &mut VecDeque<Action>) {
        if let Some(&stream) = self.by_conn.get(&conn) {
            self.session.consumed(stream, bytes);
            self.pump(out);
        }
    }

    /// A linked conn is gone (reset, failed connect, error): reset its stream.
    pub(crate) fn conn_closed(&mut self, conn: ConnId, out: &mut VecDeque<Action>) {
        if let Some(stream) = self.by_conn.remove(&conn) {
            self.links.remove(&stream);
            self.session.reset(stream);
            self.pump(out);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        if self.ended.is_some() {
            return;
        }
        if let Err(e) = self.session.handle_timeout(now) {
            self.fail(BridgeEnd::Session(e), out);
            return;
        }
        // Timers make pings and pongs, never streams.
        self.pump_events(out, &mut |_| None);
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            None
        } else {
            self.session.poll_timeout()
        }
    }

    /// Push a link's pending bytes into its stream, as far as the window and
    /// the control high-water mark allow; pause or resume the conn to match.
    fn feed_stream(&mut self, stream: u32, out: &mut VecDeque<Action>) {
        let Some(link) = self.links.get_mut(&stream) else {
            return;
        };
        if !link.pending.is_empty() {
            if self.control_unflushed >= CONTROL_HIGH_WATER {
                if !self.blocked.contains(&stream) {
                    self.blocked.push(stream);
                }
            } else {
                match self.session.send(stream, &link.pending) {
                    Ok(n) => {
                        link.pending.drain(..n.min(link.pending.len()));
                    }
                    Err(_) => {
                        // The stream can no longer be written (the peer reset it
                        // or we are past FIN): what the conn sent cannot arrive.
                        let conn = link.conn;
                        self.links.remove(&stream);
                        self.by_conn.remove(&conn);
                        self.session.reset(stream);
                        out.push_back(Action::Close { conn });
                        return;
                    }
                }
            }
        }
        // A runtime may still deliver MAX_READ_AHEAD bytes after PauseRead;
        // pausing on any backlog keeps `pending` within that plus one read.
        let backlog = !link.pending.is_empty();
        if backlog && !link.paused && !link.conn_eof {
            link.paused = true;
            out.push_back(Action::PauseRead { conn: link.conn });
        } else if !backlog && link.paused && !link.conn_eof {
            link.paused = false;
            out.push_back(Action::ResumeRead { conn: link.conn });
        }
        if !backlog && link.conn_eof && !link.fin_sent {
            link.fin_sent = true;
            if self.session.finish(stream).is_err() {
                let conn = link.conn;
                self.links.remove(&stream);
                self.by_conn.remove(&conn);
                out.push_back(Action::Close { conn });
            }
        }
    }

    /// Flush the session's output to the control connection.
    fn pump(&mut self, out: &mut VecDeque<Action>) {
        let bytes = self.session.take_output();
        if !bytes.is_empty() {
            self.control_unflushed += bytes.len();
            out.push_back(Action::Send {
                conn: self.control,
                data: bytes,
            });
        }
    }

    /// Act on every session event. `inbound` names a new conn and where to
    /// connect it for a stream the peer opened (or `None` to refuse the stream).
    fn pump_events(
        &mut self,
        out: &mut VecDeque<Action>,
        inbound: &mut dyn FnMut(u32) -> Option<(ConnId, SocketAddr)>,
    ) {
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::Inbound(stream) => match inbound(stream) {
                    Some((conn, addr)) => {
                        out.push_back(Action::Connect { conn, addr });
                        self.links.insert(stream, Link::new(conn, false));
                        self.by_conn.insert(conn, stream);
                    }
                    None => self.session.reset(stream),
                },
                SessionEvent::Established(_) | SessionEvent::Pong { .. } => {}
                SessionEvent::Data { stream, data } => {
                    if let Some(link) = self.links.get_mut(&stream) {
                        if link.connected {
                            out.push_back(Action::Send {
                                conn: link.conn,
                                data,
                            });
                        } else {
                            link.early.extend_from_slice(&data);
                        }
                    }
                }
                SessionEvent::Writable(stream) => self.feed_stream(stream, out),
                SessionEvent::Finished(stream) => {
                    if let Some(link) = self.links.get_mut(&stream) {
                        link.stream_fin = true;
                        if link.connected {
                            out.push_back(Action::Shutdown { conn: link.conn });
                        }
                    }
                }
                SessionEvent::Closed(stream) => {
                    if let Some(link) = self.links.remove(&stream) {
                        self.by_conn.remove(&link.conn);
                        out.push_back(Action::Close { conn: link.conn });
                    }
                }
                SessionEvent::Reset(stream) => {
                    if let Some(link) = self.links.remove(&stream) {
                        self.by_conn.remove(&link.conn);
                        out.push_back(Action::Close { conn: link.conn });
                    }
                }
                SessionEvent::GoAway(_) => {}
            }
        }
        self.pump(out);
    }

    fn fail(&mut self, end: BridgeEnd, out: &mut VecDeque<Action>) {
        self.pump(out);
        self.end(end, out);
    }

    /// Close the control connection and every linked conn, once.
    fn end(&mut self, end: BridgeEnd, out: &mut VecDeque<Action>) {
        if self.ended.is_some() {
            return;
        }
        self.ended = Some(end);
        out.push_back(Action::Close { conn: self.control });
        for (_, link) in std::mem::take(&mut self.links) {
            out.push_back(Action::Close { conn: link.conn });
        }
        self.by_conn.clear();
        self.blocked.clear();
    }
}
