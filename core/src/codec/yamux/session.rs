//! The yamux session (hashicorp/yamux `spec.md`), sans-IO.
//!
//! A [`Session`] is the state of one yamux connection: bytes from the peer go in
//! through [`Session::receive`], bytes for the peer come out of
//! [`Session::take_output`], and what happened to streams comes out of
//! [`Session::poll_event`]. It never touches a socket or a clock: every call that
//! may need the time takes `now`.
//!
//! Flow control is credit based and the session buffers nothing beyond a window:
//! received stream data is handed out at once as [`SessionEvent::Data`]; the
//! application tells the session with [`Session::consumed`] when it has passed
//! those bytes on (for the relay: when they were flushed to the user's socket),
//! and only then does the session send WindowUpdate credit back. On the send
//! side [`Session::send`] takes at most the peer's current window and says how
//! much it took; [`SessionEvent::Writable`] says when more may be sent.
//!
//! # Design
//!
//! - **Parsing.** Input is parsed incrementally: up to 11 bytes of a partial
//!   header are kept, and a Data payload is handed out in pieces as its bytes
//!   arrive (one [`SessionEvent::Data`] per piece; consecutive pieces of one
//!   stream still queued are merged). The whole frame length is charged against
//!   the receive window when its header arrives, so a peer exceeding the window
//!   is caught before any of its payload is delivered. The session itself
//!   therefore holds at most 11 bytes of input; the events it queues hold at
//!   most one receive window per stream.
//! - **Opening.** [`Session::open`] sends a WindowUpdate with SYN at once
//!   (delta `receive_window - INITIAL_WINDOW`); an accepted inbound stream is
//!   answered at once by a WindowUpdate with ACK and the same delta. The
//!   client opens odd ids from 1, the server even ids from 2.
//! - **Receive credit.** Bytes handed out are owed to the peer only once
//!   [`Session::consumed`] reports them; a WindowUpdate returns the owed credit
//!   once it reaches half of `receive_window` (so at most two updates per window
//!   of data, and the peer never stalls as long as the application consumes
//!   everything). No credit is returned after the peer's FIN.
//! - **Send window.** Each stream starts with [`super::INITIAL_WINDOW`] and grows
//!   by the peer's WindowUpdate deltas (saturating). [`Session::send`] takes at
//!   most the window and splits it into Data frames of at most `max_frame`
//!   bytes. If it took less than offered, or left the window at 0, the stream
//!   waits for the next WindowUpdate that opens the window, which emits one
//!   [`SessionEvent::Writable`].
//! - **Closing.** FIN and RST go out in WindowUpdate frames with delta 0. A
//!   stream is forgotten after FIN both ways ([`SessionEvent::Closed`]) or RST
//!   either way ([`SessionEvent::Reset`] when it came from the peer, nothing when
//!   the application called [`Session::reset`]). Frames for unknown streams
//!   (e.g. one just reset) are ignored, their payload skipped.
//! - **Refusing.** An inbound SYN beyond `max_streams`, or after a GoAway
//!   either way, is answered with RST and no event.
//! - **Protocol errors** (bad version or type, a frame on the wrong stream id,
//!   SYN on an open stream or with the wrong parity, Data beyond the receive
//!   window or after the peer's FIN, an unknown GoAway code) queue a GoAway
//!   with [`GoAwayCode::ProtocolError`]; the session is dead and
//!   [`Session::receive`] returns the error (again on every later call).
//! - **Keep-alive.** Every `keepalive_interval` a Ping (SYN, opaque value
//!   counting up from 1) goes out unless one is outstanding; its answer emits
//!   [`SessionEvent::Pong`]. If neither the answer nor any other byte from
//!   the peer (its answer may be queued behind data) comes within
//!   `keepalive_timeout`, [`Session::handle_timeout`] fails with
//!   [`SessionError::KeepaliveTimeout`] (no GoAway is queued: the peer is not
//!   listening). Peer Pings are answered at once with ACK and the same value.
//! - **GoAway.** After a GoAway either way no stream can be opened and inbound
//!   SYNs are refused; existing streams go on. Once both sides sent one the
//!   session is dead. A dead session forgets its streams; queued events and
//!   output can still be drained.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::{
    Flags, FrameType, GoAwayCode, HEADER_LEN, Header, INITIAL_WINDOW, Parsed, data, go_away,
    is_client_stream, is_server_stream, parse_header, ping, validate_data_len, window_update,
};

/// Which side of the session this is: the client opens odd stream ids, the
/// server even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Opens streams 1, 3, 5, ...
    Client,
    /// Opens streams 2, 4, 6, ...
    Server,
}

/// Session limits and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The receive window of each stream, at least [`super::INITIAL_WINDOW`]
    /// (more is announced with a WindowUpdate on the stream's first frame).
    pub receive_window: u32,
    /// The most Data payload bytes per frame this side sends.
    pub max_frame: u32,
    /// The most streams open at once; an inbound SYN beyond it is answered RST.
    pub max_streams: usize,
    /// How often to send a keep-alive Ping; `None` for never.
    pub keepalive_interval: Option<Duration>,
    /// How long an unanswered keep-alive Ping may wait before the session fails.
    pub keepalive_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            receive_window: super::INITIAL_WINDOW,
            max_frame: 64 * 1024,
            max_streams: 1024,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(30),
        }
    }
}

/// What happened in the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The peer opened `stream` (SYN). The session accepted it (ACK goes out).
    Inbound(u32),
    /// The peer acknowledged a stream this side opened.
    Established(u32),
    /// Stream payload, in order. Call [`Session::consumed`] once it is passed on.
    Data {
        /// The stream.
        stream: u32,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The peer's window for `stream` grew after [`Session::send`] took less than
    /// it was offered: send more.
    Writable(u32),
    /// The peer half-closed `stream` (FIN), after all its data.
    Finished(u32),
    /// The peer reset `stream` (RST), or refused to open it. The stream is gone.
    Reset(u32),
    /// Both directions of `stream` ended with FIN; the stream is gone.
    Closed(u32),
    /// The peer sent GoAway: it opens no more streams and accepts none.
    GoAway(GoAwayCode),
    /// A keep-alive Ping came back after `rtt`.
    Pong {
        /// The round trip.
        rtt: Duration,
    },
}

/// Why a session ended. After any of these the session is dead: every call is a
/// no-op, [`Session::take_output`] may still hold a final GoAway to flush.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The peer broke the protocol; a GoAway (protocol error) was queued.
    #[error("yamux protocol error: {0}")]
    Protocol(String),
    /// A keep-alive Ping was not answered in time.
    #[error("yamux keep-alive timed out")]
    KeepaliveTimeout,
}

/// Why a stream operation was refused. These are the caller's mistakes or the
/// session's limits, never the peer's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such open stream.
    #[error("unknown yamux stream {0}")]
    Unknown(u32),
    /// This side already sent FIN (or RST) on the stream.
    #[error("yamux stream {0} is closed for writing")]
    WriteClosed(u32),
    /// The session is dead, or the peer sent GoAway, or the stream ids ran out,
    /// or `max_streams` are open.
    #[error("yamux session cannot open a stream: {0}")]
    CannotOpen(&'static str),
}

/// The state of one stream.
#[derive(Debug)]
struct Stream {
    /// This side opened it (SYN sent); false for an inbound stream.
    outbound: bool,
    /// The peer's ACK arrived (always true for inbound streams).
    established: bool,
    /// How many more Data bytes this side may send.
    send_window: u32,
    /// How many more Data bytes the peer may send.
    recv_window: u32,
    /// Bytes consumed by the application and not yet credited to the peer.
    owed: u32,
    /// The last `send` was short or emptied the window: emit `Writable` on the
    /// next WindowUpdate that opens it.
    want_writable: bool,
    /// This side sent FIN.
    write_closed: bool,
    /// The peer sent FIN.
    read_closed: bool,
}

impl Stream {
    fn new(outbound: bool, recv_window: u32) -> Stream {
        Stream {
            outbound,
            established: !outbound,
            send_window: INITIAL_WINDOW,
            recv_window,
            owed: 0,
            want_writable: false,
            write_closed: false,
            read_closed: false,
        }
    }
}

/// Where the parser is in the input.
#[derive(Debug)]
enum ReadState {
    /// Collecting a header: `len` bytes of `buf` so far.
    Header { buf: [u8; HEADER_LEN], len: usize },
    /// Inside a Data payload: `remaining` bytes to go. `deliver` is false when
    /// the payload is skipped (unknown or refused stream); `flags` (FIN / RST)
    /// apply once the payload is through.
    Payload {
        stream: u32,
        remaining: u32,
        deliver: bool,
        flags: Flags,
    },
}

impl ReadState {
    fn header() -> ReadState {
        ReadState::Header {
            buf: [0; HEADER_LEN],
            len: 0,
        }
    }
}

/// One yamux session.
#[derive(Debug)]
pub struct Session {
    mode: Mode,
    config: Config,
    /// The id the next [`Session::open`] takes; `None` once they ran out.
    next_id: Option<u32>,
    streams: BTreeMap<u32, Stream>,
    events: VecDeque<SessionEvent>,
    output: Vec<u8>,
    read: ReadState,
    /// When the next keep-alive Ping is due (none outstanding).
    next_ping: Option<Instant>,
    /// The outstanding keep-alive Ping: its opaque value and when it was sent.
    ping_sent: Option<(u32, Instant)>,
    /// When bytes last came from the peer: a busy peer whose answer is stuck
    /// behind our own queued data is alive all the same.
    heard: Option<Instant>,
    /// The opaque value of the last Ping sent.
    ping_counter: u32,
    local_go_away: bool,
    remote_go_away: bool,
    failed: Option<SessionError>,
}

impl Session {
    /// A new session; `now` starts the keep-alive timer.
    ///
    /// `receive_window` is raised to at least [`super::INITIAL_WINDOW`] and
    /// `max_frame` to at least 1.
    pub fn new(mode: Mode, mut config: Config, now: Instant) -> Session {
        config.receive_window = config.receive_window.max(INITIAL_WINDOW);
        config.max_frame = config.max_frame.max(1);
        let next_ping = config
            .keepalive_interval
            .and_then(|interval| now.checked_add(interval));
        Session {
            mode,
            next_id: Some(match mode {
                Mode::Client => 1,
                Mode::Server => 2,
            }),
            config,
            streams: BTreeMap::new(),
            events: VecDeque::new(),
            output: Vec::new(),
            read: ReadState::header(),
            next_ping,
            ping_sent: None,
            heard: None,
            ping_counter: 0,
            local_go_away: false,
            remote_go_away: false,
            failed: None,
        }
    }

    /// Bytes from the peer, any split. On error the session is dead.
    ///
    /// A dead session returns its error again (or `Ok` if it ended by GoAway
    /// both ways) and ignores `data`.
    pub fn receive(&mut self, mut data: &[u8], now: Instant) -> Result<(), SessionError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if !data.is_empty() {
            self.heard = Some(now);
        }
        while !data.is_empty() && !self.is_dead() {
            data = match &mut self.read {
                ReadState::Header { buf, len } => {
                    let have = (*len).min(HEADER_LEN);
                    let take = (HEADER_LEN - have).min(data.len());
                    let (head, rest) = data.split_at(take);
                    if let Some(dst) = buf.get_mut(have..have + take) {
                        dst.copy_from_slice(head);
                    }
                    *len = have + take;
                    if *len == HEADER_LEN {
                        let bytes = *buf;
                        self.read = ReadState::header();
                        self.on_header(&bytes, now)?;
                    }
                    rest
                }
                ReadState::Payload {
                    stream,
                    remaining,
                    deliver,
                    flags,
                } => {
                    let take = data.len().min(*remaining as usize);
                    let (piece, rest) = data.split_at(take);
                    // `take <= remaining`, so this fits.
                    *remaining -= take as u32;
                    let (stream, deliver, flags, done) =
                        (*stream, *deliver, *flags, *remaining == 0);
                    if deliver && !piece.is_empty() && self.streams.contains_key(&stream) {
                        self.push_data(stream, piece);
                    }
                    if done {
                        self.read = ReadState::header();
                        if deliver {
                            self.close_flags(stream, flags);
                        }
                    }
                    rest
                }
            };
        }
        Ok(())
    }

    /// Open a stream (SYN goes out at once, in a WindowUpdate).
    pub fn open(&mut self) -> Result<u32, StreamError> {
        if self.is_dead() {
            return Err(StreamError::CannotOpen("the session is dead"));
        }
        if self.remote_go_away {
            return Err(StreamError::CannotOpen("the peer sent GoAway"));
        }
        if self.local_go_away {
            return Err(StreamError::CannotOpen("this side sent GoAway"));
        }
        if self.streams.len() >= self.config.max_streams {
            return Err(StreamError::CannotOpen("max_streams are open"));
        }
        let Some(id) = self.next_id else {
            return Err(StreamError::CannotOpen("stream ids ran out"));
        };
        self.next_id = id.checked_add(2);
        self.streams
            .insert(id, Stream::new(true, self.config.receive_window));
        window_update(id, Flags::SYN, self.window_delta(), &mut self.output);
        Ok(id)
    }

    /// Send up to the peer's window of `data` on `stream`; returns how many bytes
    /// were taken (0 when the window is closed: wait for `Writable`).
    pub fn send(&mut self, stream: u32, data: &[u8]) -> Result<usize, StreamError> {
        let max_frame = self.config.max_frame as usize;
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::Unknown(stream))?;
        if s.write_closed {
            return Err(StreamError::WriteClosed(stream));
        }
        if data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(s.send_window as usize);
        let (taken, _) = data.split_at(n);
        for chunk in taken.chunks(max_frame) {
            self::data(stream, Flags::NONE, chunk, &mut self.output);
        }
        // `n <= send_window`, so this fits.
        s.send_window -= n as u32;
        s.want_writable = n < data.len() || s.send_window == 0;
        Ok(n)
    }

    /// The application passed on `bytes` of `stream`'s received data: credit the
    /// peer (a WindowUpdate goes out once at least half a window is owed).
    ///
    /// Bytes beyond those handed out and not yet reported are ignored, as are
    /// unknown streams and streams the peer finished.
    pub fn consumed(&mut self, stream: u32, bytes: usize) {
        let window = self.config.receive_window;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.read_closed {
            return;
        }
        let outstanding = window.saturating_sub(s.recv_window).saturating_sub(s.owed);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX).min(outstanding);
        s.owed = s.owed.saturating_add(bytes);
        if s.owed > 0 && s.owed >= window / 2 {
            let delta = s.owed;
            s.recv_window = s.recv_window.saturating_add(delta);
            s.owed = 0;
            window_update(stream, Flags::NONE, delta, &mut self.output);
        }
    }

    /// Half-close `stream` (FIN).
    pub fn finish(&mut self, stream: u32) -> Result<(), StreamError> {
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(StreamError::Unknown(stream))?;
        if s.write_closed {
            return Err(StreamError::WriteClosed(stream));
        }
        s.write_closed = true;
        s.want_writable = false;
        let closed = s.read_closed;
        window_update(stream, Flags::FIN, 0, &mut self.output);
        if closed {
            self.streams.remove(&stream);
            self.events.push_back(SessionEvent::Closed(stream));
        }
        Ok(())
    }

    /// Reset `stream` (RST); it is gone at once. Unknown streams are ignored.
    pub fn reset(&mut self, stream: u32) {
        if self.streams.remove(&stream).is_some() {
            window_update(stream, Flags::RST, 0, &mut self.output);
        }
    }

    /// Send GoAway with `code`: no more streams either way. Only the first call
    /// sends; a dead session sends nothing.
    pub fn go_away(&mut self, code: GoAwayCode) {
        if self.is_dead() || self.local_go_away {
            return;
        }
        go_away(code, &mut self.output);
        self.local_go_away = true;
        if self.is_dead() {
            self.streams.clear();
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Bytes to write to the peer (empty if none), in order.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Act on timers `<= now` (keep-alive). On error the session is dead.
    ///
    /// A session that already failed returns its error again.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.is_dead() {
            return Ok(());
        }
        if self.ping_sent.is_some() {
            let expired = self.ping_deadline().is_some_and(|deadline| now >= deadline);
            if expired {
                return Err(self.fail(SessionError::KeepaliveTimeout, false));
            }
        } else if self.next_ping.is_some_and(|at| now >= at) {
            self.ping_counter = self.ping_counter.wrapping_add(1);
            ping(Flags::SYN, self.ping_counter, &mut self.output);
            self.ping_sent = Some((self.ping_counter, now));
            self.next_ping = self
                .config
                .keepalive_interval
                .and_then(|interval| now.checked_add(interval));
        }
        Ok(())
    }

    /// The next deadline, if any: the outstanding keep-alive Ping's timeout, or
    /// when the next one is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_dead() {
            return None;
        }
        match self.ping_sent {
            Some(_) => self.ping_deadline(),
            None => self.next_ping,
        }
    }

    /// When the outstanding Ping times out: `keepalive_timeout` after it was
    /// sent or after the peer was last heard from, whichever is later.
    fn ping_deadline(&self) -> Option<Instant> {
        let (_, sent) = self.ping_sent?;
        let since = self.heard.map_or(sent, |heard| heard.max(sent));
        since.checked_add(self.config.keepalive_timeout)
    }

    /// Streams open now.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// True once the session failed or both sides sent GoAway.
    pub fn is_dead(&self) -> bool {
        self.failed.is_some() || (self.local_go_away && self.remote_go_away)
    }

    /// The delta announcing this side's receive window beyond the initial one.
    fn window_delta(&self) -> u32 {
        self.config.receive_window.saturating_sub(INITIAL_WINDOW)
    }

    /// The session failed with `error`: queue GoAway (protocol error) if
    /// `go_away`, forget every stream.
    fn fail(&mut self, error: SessionError, go_away: bool) -> SessionError {
        if go_away {
            self::go_away(GoAwayCode::ProtocolError, &mut self.output);
            self.local_go_away = true;
        }
        self.streams.clear();
        self.read = ReadState::header();
        self.failed = Some(error.clone());
        error
    }

    fn protocol_error(&mut self, why: String) -> SessionError {
        self.fail(SessionError::Protocol(why), true)
    }

    /// Queue payload bytes of `stream`, merged into the last event if it is
    /// data of the same stream.
    fn push_data(&mut self, stream: u32, piece: &[u8]) {
        if let Some(SessionEvent::Data { stream: last, data }) = self.events.back_mut()
            && *last == stream
        {
            data.extend_from_slice(piece);
            return;
        }
        self.events.push_back(SessionEvent::Data {
            stream,
            data: piece.to_vec(),
        });
    }

    /// A whole header arrived.
    fn on_header(&mut self, bytes: &[u8; HEADER_LEN], now: Instant) -> Result<(), SessionError> {
        let header = match parse_header(bytes) {
            Ok(Parsed::Done { value, .. }) => value,
            // 12 bytes always make a header or an error.
            Ok(Parsed::Incomplete) => return Err(self.protocol_error("short header".into())),
            Err(e) => return Err(self.protocol_error(e.to_string())),
        };
        if let Err(e) = header.validate() {
            return Err(self.protocol_error(e.to_string()));
        }
        match header.frame_type {
            FrameType::Ping => {
                self.on_ping(&header, now);
                Ok(())
            }
            FrameType::GoAway => self.on_go_away(&header),
            FrameType::Data | FrameType::WindowUpdate => self.on_stream_frame(&header),
        }
    }

    fn on_ping(&mut self, header: &Header, now: Instant) {
        if header.flags.contains(Flags::SYN) {
            ping(Flags::ACK, header.length, &mut self.output);
        } else if header.flags.contains(Flags::ACK)
            && let Some((opaque, sent)) = self.ping_sent
            && opaque == header.length
        {
            self.ping_sent = None;
            self.events.push_back(SessionEvent::Pong {
                rtt: now.saturating_duration_since(sent),
            });
        }
    }

    fn on_go_away(&mut self, header: &Header) -> Result<(), SessionError> {
        let Some(code) = header.go_away_code() else {
            return Err(self.protocol_error(format!("unknown GoAway code {}", header.length)));
        };
        if !self.remote_go_away {
            self.remote_go_away = true;
            self.events.push_back(SessionEvent::GoAway(code));
            if self.is_dead() {
                self.streams.clear();
            }
        }
        Ok(())
    }

    /// A Data or WindowUpdate header (on a non-zero stream id).
    fn on_stream_frame(&mut self, header: &Header) -> Result<(), SessionError> {
        let id = header.stream_id;
        let flags = header.flags;
        let mut known = self.streams.contains_key(&id);
        if flags.contains(Flags::SYN) {
            if known {
                return Err(self.protocol_error(format!("SYN on open stream {id}")));
            }
            let peer_parity = match self.mode {
                Mode::Client => is_server_stream(id),
                Mode::Server => is_client_stream(id),
            };
            if !peer_parity {
                return Err(self.protocol_error(format!("SYN on stream {id} of the wrong parity")));
            }
            if self.local_go_away
                || self.remote_go_away
                || self.streams.len() >= self.config.max_streams
            {
                window_update(id, Flags::RST, 0, &mut self.output);
            } else {
                self.streams
                    .insert(id, Stream::new(false, self.config.receive_window));
                window_update(id, Flags::ACK, self.window_delta(), &mut self.output);
                self.events.push_back(SessionEvent::Inbound(id));
                known = true;
            }
        }
        if known
            && flags.contains(Flags::ACK)
            && let Some(s) = self.streams.get_mut(&id)
            && s.outbound
            && !s.established
        {
            s.established = true;
            self.events.push_back(SessionEvent::Established(id));
        }
        match header.frame_type {
            FrameType::WindowUpdate => {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.send_window = s.send_window.saturating_add(header.length);
                    if s.want_writable && !s.write_closed && s.send_window > 0 {
                        s.want_writable = false;
                        self.events.push_back(SessionEvent::Writable(id));
                    }
                }
                self.close_flags(id, flags);
            }
            _ => {
                let len = header.length;
                let deliver = match self.streams.get_mut(&id) {
                    None => false,
                    Some(s) if s.read_closed => {
                        return Err(self.protocol_error(format!("data on stream {id} after FIN")));
                    }
                    Some(s) => {
                        if let Err(e) = validate_data_len(len, s.recv_window) {
                            return Err(self.protocol_error(format!("stream {id}: {e}")));
                        }
                        s.recv_window -= len;
                        true
                    }
                };
                if len == 0 {
                    if deliver {
                        self.close_flags(id, flags);
                    }
                } else {
                    self.read = ReadState::Payload {
                        stream: id,
                        remaining: len,
                        deliver,
                        flags,
                    };
                }
            }
        }
        Ok(())
    }

    /// Apply RST / FIN from the peer to `stream`, if it is known.
    fn close_flags(&mut self, stream: u32, flags: Flags) {
        if flags.contains(Flags::RST) {
            if self.streams.remove(&stream).is_some() {
                self.events.push_back(SessionEvent::Reset(stream));
            }
            return;
        }
        if flags.contains(Flags::FIN)
            && let Some(s) = self.streams.get_mut(&stream)
            && !s.read_closed
        {
            s.read_closed = true;
            s.owed = 0;
            let closed = s.write_closed;
            self.events.push_back(SessionEvent::Finished(stream));
            if closed {
                self.streams.remove(&stream);
                self.events.push_back(SessionEvent::Closed(stream));
            }
        }
    }
}

#[cfg(test)]
mod tests;
