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
//! - when both directions ended with FIN the conn is closed, but only once the
//!   runtime reported every byte sent to it flushed (a `Close` may drop what is
//!   still queued); a reset either way closes the other side at once; the
//!   control connection's end closes every linked conn (PR-5).
//!
//! The owner learns which conns the bridge closed from [`MuxBridge::take_closed`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use crate::codec::yamux::GoAwayCode;
use crate::codec::yamux::session::{Config, Mode, Session, SessionError, SessionEvent};
use crate::io::{Action, ConnId};

/// Above this many unflushed bytes on the control connection, links stop
/// feeding the session until the runtime catches up.
const CONTROL_HIGH_WATER: usize = 4 << 20;

/// Stream data stops at [`CONTROL_HIGH_WATER`] (plus at most a window), so only
/// the peer's own frames (pings, SYNs to refuse) can push the control queue past
/// this: then the control connection is not read until it drained to the high
/// water mark. (Pausing it at the high water mark itself could deadlock two
/// bridges that both send at full speed.)
const CONTROL_PAUSE: usize = 2 * CONTROL_HIGH_WATER;

/// How a bridge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BridgeEnd {
    /// The control connection closed.
    ControlClosed,
    /// The peer sent GoAway (and no stream was left, for a normal one).
    GoAway(GoAwayCode),
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
    /// Bytes sent to the conn the runtime has not reported flushed.
    unflushed: usize,
    /// The stream is over (FIN both ways); close the conn once `unflushed` is 0.
    draining: bool,
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
            unflushed: 0,
            draining: false,
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
    control_paused: bool,
    /// Links with pending bytes that stopped for the control high-water mark.
    blocked: Vec<u32>,
    /// Conns the bridge closed (or saw closed) since the owner last asked.
    closed: Vec<ConnId>,
    /// The peer sent a normal GoAway: end once the last link is gone.
    peer_going: bool,
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
            control_paused: false,
            blocked: Vec::new(),
            closed: Vec::new(),
            peer_going: false,
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

    /// The linked conns the bridge closed or forgot since the last call: the
    /// owner forgets them too.
    pub(crate) fn take_closed(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.closed)
    }

    /// Open a stream for an already connected `conn` (the relay's users).
    /// Refused (conn closed) if the session cannot open one.
    pub(crate) fn open_for(&mut self, conn: ConnId, out: &mut VecDeque<Action>) -> bool {
        match self.session.open() {
            Ok(stream) => {
                self.links.insert(stream, Link::new(conn, true));
                self.by_conn.insert(conn, stream);
                self.settle(out);
                true
            }
            Err(_) => {
                out.push_back(Action::Close { conn });
                false
            }
        }
    }

    /// Bytes on the control connection. `inbound` names a new conn and where
    /// to connect it for a stream the peer opened (or `None` to refuse it).
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
        if self.control_paused && self.control_unflushed <= CONTROL_HIGH_WATER {
            self.control_paused = false;
            out.push_back(Action::ResumeRead { conn: self.control });
        }
        if self.control_unflushed < CONTROL_HIGH_WATER / 2 && !self.blocked.is_empty() {
            for stream in std::mem::take(&mut self.blocked) {
                self.feed_stream(stream, out);
            }
        }
        self.settle(out);
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
            let data = std::mem::take(&mut link.early);
            link.unflushed += data.len();
            out.push_back(Action::Send { conn, data });
        }
        if link.stream_fin {
            out.push_back(Action::Shutdown { conn });
        }
        if link.draining && link.unflushed == 0 {
            self.drop_link(stream, true, out);
        }
        self.settle(out);
    }

    /// Bytes from a linked conn.
    pub(crate) fn conn_received(&mut self, conn: ConnId, data: &[u8], out: &mut VecDeque<Action>) {
        let Some(&stream) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(link) = self.links.get_mut(&stream) else {
            return;
        };
        // With nothing waiting, the window takes what it can straight from the
        // read: only the rest is copied into `pending`.
        let mut taken = 0;
        if link.pending.is_empty() && self.control_unflushed < CONTROL_HIGH_WATER {
            match self.session.send(stream, data) {
                Ok(n) => taken = n.min(data.len()),
                Err(_) => {
                    self.drop_link(stream, true, out);
                    self.session.reset(stream);
                    self.settle(out);
                    return;
                }
            }
        }
        if let Some(rest) = data.get(taken..)
            && !rest.is_empty()
        {
            link.pending.extend_from_slice(rest);
        }
        self.feed_stream(stream, out);
        self.settle(out);
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
        self.settle(out);
    }

    /// `bytes` sent to a linked conn reached its socket: credit the peer, and
    /// close a drained conn whose stream is over.
    pub(crate) fn conn_flushed(&mut self, conn: ConnId, bytes: usize, out: &mut VecDeque<Action>) {
        let Some(&stream) = self.by_conn.get(&conn) else {
            return;
        };
        let Some(link) = self.links.get_mut(&stream) else {
            return;
        };
        link.unflushed = link.unflushed.saturating_sub(bytes);
        if link.draining {
            if link.unflushed == 0 {
                self.drop_link(stream, true, out);
            }
        } else {
            self.session.consumed(stream, bytes);
        }
        self.settle(out);
    }

    /// A linked conn is gone (reset, failed connect, error): reset its stream.
    pub(crate) fn conn_closed(&mut self, conn: ConnId, out: &mut VecDeque<Action>) {
        if let Some(&stream) = self.by_conn.get(&conn) {
            let draining = self.links.get(&stream).is_some_and(|l| l.draining);
            self.drop_link(stream, false, out);
            if !draining {
                self.session.reset(stream);
            }
            self.settle(out);
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
        self.settle(out);
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            None
        } else {
            self.session.poll_timeout()
        }
    }

    /// Forget a link; `close`: ask the runtime to close its conn too.
    fn drop_link(&mut self, stream: u32, close: bool, out: &mut VecDeque<Action>) {
        if let Some(link) = self.links.remove(&stream) {
            self.by_conn.remove(&link.conn);
            self.closed.push(link.conn);
            if close {
                out.push_back(Action::Close { conn: link.conn });
            }
        }
        if self.peer_going && self.links.is_empty() {
            self.end(BridgeEnd::GoAway(GoAwayCode::Normal), out);
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
                        self.drop_link(stream, true, out);
                        self.session.reset(stream);
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
                self.drop_link(stream, true, out);
            }
        }
    }

    /// Flush the session's output to the control connection; stop reading it
    /// if the peer's frames piled up past [`CONTROL_PAUSE`].
    fn pump(&mut self, out: &mut VecDeque<Action>) {
        let bytes = self.session.take_output();
        if !bytes.is_empty() {
            self.control_unflushed += bytes.len();
            out.push_back(Action::Send {
                conn: self.control,
                data: bytes,
            });
        }
        if !self.control_paused && self.control_unflushed >= CONTROL_PAUSE {
            self.control_paused = true;
            out.push_back(Action::PauseRead { conn: self.control });
        }
    }

    /// After any call: act on what the session has to say (a FIN we sent may
    /// have closed a stream) and flush its output.
    fn settle(&mut self, out: &mut VecDeque<Action>) {
        if self.ended.is_none() {
            self.pump_events(out, &mut |_| None);
        }
    }

    /// Act on every session event, then flush the output.
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
                            link.unflushed += data.len();
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
                    if let Some(link) = self.links.get_mut(&stream) {
                        if link.connected && link.unflushed == 0 {
                            self.drop_link(stream, true, out);
                        } else {
                            link.draining = true;
                        }
                    }
                }
                SessionEvent::Reset(stream) => self.drop_link(stream, true, out),
                SessionEvent::GoAway(code) => {
                    if code != GoAwayCode::Normal || self.links.is_empty() {
                        self.pump(out);
                        self.end(BridgeEnd::GoAway(code), out);
                        return;
                    }
                    self.peer_going = true;
                }
            }
            if self.ended.is_some() {
                return;
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
            self.closed.push(link.conn);
            out.push_back(Action::Close { conn: link.conn });
        }
        self.by_conn.clear();
        self.blocked.clear();
    }
}
