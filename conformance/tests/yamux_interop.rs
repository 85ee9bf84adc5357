//! ferry's sans-IO yamux [`Session`] against an independent implementation, the
//! `yamux` crate (rust-libp2p's), over real loopback TCP on async-std.
//!
//! Our side is driven by a small loop in this file ([`ours`]): socket bytes go
//! into `Session::receive`, `take_output` goes to the socket, `poll_timeout`
//! bounds the wait. Application data waits in per-stream buffers until the
//! peer's window takes it (`Writable`); received data is credited back with
//! `consumed` as soon as it is handed to the test, or, when echoing, as soon as
//! the echo was taken by `send`, so flow control is exercised both ways.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};

use async_std::net::{TcpListener, TcpStream};
use async_std::task::{self, JoinHandle};
use ferry_core::codec::yamux::GoAwayCode;
use ferry_core::codec::yamux::session::{Config, Mode, Session, SessionEvent, StreamError};
use futures::{AsyncReadExt, AsyncWriteExt};

#[path = "common/yamux_crate.rs"]
mod yamux_crate;
use yamux_crate::{CrateCmd, crate_echoes, theirs};

/// Every test ends within this.
const LIMIT: Duration = Duration::from_secs(20);

/// More than four receive windows per stream: window updates must flow.
const BIG: usize = 1_500_000;

fn run<F: Future<Output = ()>>(test: F) {
    task::block_on(async {
        async_std::future::timeout(LIMIT, test)
            .await
            .expect("the test finished in time");
    });
}

/// Deterministic, stream-specific bytes.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    // The kernel completes the connect before `accept` is called.
    let connected = TcpStream::connect(addr).await.expect("connect");
    let (accepted, _) = listener.accept().await.expect("accept");
    connected.set_nodelay(true).expect("nodelay");
    accepted.set_nodelay(true).expect("nodelay");
    (connected, accepted)
}

fn quiet() -> Config {
    Config {
        keepalive_interval: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Our side: a Session driven over a TcpStream.

enum Input {
    Net(Vec<u8>),
    NetClosed,
    Open(async_channel::Sender<Result<u32, StreamError>>),
    Send(u32, Vec<u8>),
    Finish(u32),
    Reset(u32),
    GoAway(GoAwayCode),
}

/// A running session of ours: commands in, events out.
struct Ours {
    input: async_channel::Sender<Input>,
    events: async_channel::Receiver<SessionEvent>,
    task: JoinHandle<Result<(), String>>,
}

impl Ours {
    fn cmd(&self, input: Input) {
        self.input.try_send(input).expect("our driver is running");
    }

    async fn open(&self) -> u32 {
        let (tx, rx) = async_channel::bounded(1);
        self.cmd(Input::Open(tx));
        rx.recv()
            .await
            .expect("an answer")
            .expect("our session opened a stream")
    }

    async fn event(&self) -> SessionEvent {
        self.events.recv().await.expect("our driver is running")
    }

    /// Events until `stop` matches one (which is returned last).
    async fn until(&self, stop: impl Fn(&SessionEvent) -> bool) -> Vec<SessionEvent> {
        let mut seen = Vec::new();
        loop {
            let e = self.event().await;
            let done = stop(&e);
            seen.push(e);
            if done {
                return seen;
            }
        }
    }
}

/// The application side of our driver.
#[derive(Default)]
struct App {
    echo: bool,
    pending: BTreeMap<u32, Vec<u8>>,
    blocked: BTreeSet<u32>,
    fin_wanted: BTreeSet<u32>,
}

impl App {
    /// Give `stream`'s pending bytes to the session as far as its window goes;
    /// FIN once they are all taken, if asked for.
    fn flush(&mut self, session: &mut Session, stream: u32) {
        if self.blocked.contains(&stream) {
            return;
        }
        let pending = self.pending.entry(stream).or_default();
        if !pending.is_empty() {
            let Ok(n) = session.send(stream, pending) else {
                pending.clear();
                return;
            };
            pending.drain(..n);
            if self.echo {
                session.consumed(stream, n);
            }
            if !pending.is_empty() {
                self.blocked.insert(stream);
                return;
            }
        }
        if self.fin_wanted.remove(&stream) {
            let _ = session.finish(stream);
        }
    }

    fn forget(&mut self, stream: u32) {
        self.pending.remove(&stream);
        self.blocked.remove(&stream);
        self.fin_wanted.remove(&stream);
    }

    fn handle(&mut self, session: &mut Session, events: &async_channel::Sender<SessionEvent>) {
        while let Some(e) = session.poll_event() {
            match &e {
                SessionEvent::Data { stream, data } => {
                    if self.echo {
                        self.pending
                            .entry(*stream)
                            .or_default()
                            .extend_from_slice(data);
                        self.flush(session, *stream);
                    } else {
                        session.consumed(*stream, data.len());
                    }
                }
                SessionEvent::Writable(stream) => {
                    self.blocked.remove(stream);
                    self.flush(session, *stream);
                }
                SessionEvent::Finished(stream) if self.echo => {
                    self.fin_wanted.insert(*stream);
                    self.flush(session, *stream);
                }
                SessionEvent::Reset(stream) | SessionEvent::Closed(stream) => {
                    self.forget(*stream);
                }
                _ => {}
            }
            if !(self.echo && matches!(e, SessionEvent::Data { .. })) {
                let _ = events.try_send(e);
            }
        }
    }
}

/// Start our session on `socket`. With `echo`, every stream's data is sent
/// back on it, and its FIN too (Data events are then not reported).
fn ours(socket: TcpStream, mode: Mode, config: Config, echo: bool) -> Ours {
    let (input, rx) = async_channel::unbounded();
    let (events_tx, events) = async_channel::unbounded();
    let net = input.clone();
    let mut reader = socket.clone();
    task::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = net.send(Input::NetClosed).await;
                    return;
                }
                Ok(n) => {
                    if net.send(Input::Net(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let task = task::spawn(async move {
        let result = drive(socket, mode, config, echo, rx, events_tx).await;
        if let Err(e) = &result {
            eprintln!("our {mode:?} session ended: {e}");
        }
        result
    });
    Ours {
        input,
        events,
        task,
    }
}

async fn drive(
    mut socket: TcpStream,
    mode: Mode,
    config: Config,
    echo: bool,
    rx: async_channel::Receiver<Input>,
    events: async_channel::Sender<SessionEvent>,
) -> Result<(), String> {
    let mut session = Session::new(mode, config, Instant::now());
    let mut app = App {
        echo,
        ..App::default()
    };
    loop {
        if session.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            let r = session.handle_timeout(Instant::now());
            flush_output(&mut session, &mut socket).await?;
            r.map_err(|e| e.to_string())?;
        }
        let next = match session.poll_timeout() {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                match async_std::future::timeout(wait, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => continue, // the timer is handled at the loop's top
                }
            }
            None => rx.recv().await,
        };
        let Ok(next) = next else {
            return Ok(());
        };
        let result = match next {
            Input::Net(bytes) => session.receive(&bytes, Instant::now()),
            Input::NetClosed => return Ok(()),
            Input::Open(reply) => {
                let _ = reply.try_send(session.open());
                Ok(())
            }
            Input::Send(stream, data) => {
                app.pending.entry(stream).or_default().extend(data);
                app.flush(&mut session, stream);
                Ok(())
            }
            Input::Finish(stream) => {
                app.fin_wanted.insert(stream);
                app.flush(&mut session, stream);
                Ok(())
            }
            Input::Reset(stream) => {
                session.reset(stream);
                app.forget(stream);
                Ok(())
            }
            Input::GoAway(code) => {
                session.go_away(code);
                Ok(())
            }
        };
        app.handle(&mut session, &events);
        flush_output(&mut session, &mut socket).await?;
        result.map_err(|e| e.to_string())?;
    }
}

async fn flush_output(session: &mut Session, socket: &mut TcpStream) -> Result<(), String> {
    let out = session.take_output();
    if !out.is_empty() {
        socket.write_all(&out).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Write `data` on a crate stream and close it, while reading everything back.
///
/// Both halves run in one task: a `yamux::Stream` keeps one waker for its
/// command channel, so halves polled from two tasks can lose a wake-up.
async fn crate_round_trip(stream: yamux::Stream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = stream.split();
    let write = async move {
        w.write_all(&data).await.expect("crate write");
        w.close().await.expect("crate close");
    };
    let read = async move {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.expect("crate read");
        back
    };
    futures::future::join(write, read).await.1
}

/// Collect our events until every stream in `streams` is `Closed` (each after
/// its `Finished`, with no data after it); the data received per stream.
async fn collect_until_closed(ours: &Ours, streams: &[u32]) -> BTreeMap<u32, Vec<u8>> {
    let mut data: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut finished = BTreeSet::new();
    let mut open: BTreeSet<u32> = streams.iter().copied().collect();
    while !open.is_empty() {
        match ours.event().await {
            SessionEvent::Data { stream, data: d } => {
                assert!(!finished.contains(&stream), "data after FIN on {stream}");
                data.entry(stream).or_default().extend(d);
            }
            SessionEvent::Finished(stream) => {
                finished.insert(stream);
            }
            SessionEvent::Closed(stream) => {
                assert!(finished.contains(&stream), "Closed before Finished");
                open.remove(&stream);
            }
            SessionEvent::Reset(stream) => panic!("stream {stream} reset"),
            _ => {}
        }
    }
    data
}

// ---------------------------------------------------------------------------

/// (a) The crate as client opens several streams to our server-mode session,
/// which echoes; 1.5 MB each way per stream needs window updates both ways.
#[test]
fn crate_client_to_our_echo_server() {
    run(async {
        let (c, s) = tcp_pair().await;
        let server = ours(s, Mode::Server, quiet(), true);
        let client = theirs(c, yamux::Mode::Client);
        let mut rounds = Vec::new();
        for i in 0..4u32 {
            let stream = client.open().await;
            let data = pattern(i, BIG + i as usize * 1000);
            rounds.push(task::spawn(async move {
                let back = crate_round_trip(stream, data.clone()).await;
                assert!(back == data, "stream {i}: echo differs");
            }));
        }
        for r in rounds {
            r.await;
        }
        // Our side saw every stream open and close cleanly.
        let mut inbound = BTreeSet::new();
        let mut closed = BTreeSet::new();
        while closed.len() < 4 {
            match server.event().await {
                SessionEvent::Inbound(id) => assert!(inbound.insert(id)),
                SessionEvent::Closed(id) => assert!(closed.insert(id)),
                SessionEvent::Reset(id) => panic!("stream {id} reset"),
                _ => {}
            }
        }
        assert_eq!(inbound, closed);
        assert!(inbound.iter().all(|id| id % 2 == 1), "client ids are odd");
    });
}

/// (b) Our session as client opens streams to the crate as server, which echoes.
#[test]
fn our_client_to_crate_echo_server() {
    run(async {
        let (c, s) = tcp_pair().await;
        let server = theirs(s, yamux::Mode::Server);
        crate_echoes(&server);
        let client = ours(c, Mode::Client, quiet(), false);
        let mut sent = BTreeMap::new();
        for i in 0..4u32 {
            let id = client.open().await;
            assert_eq!(id, 1 + 2 * i);
            let data = pattern(100 + i, BIG + i as usize * 777);
            client.cmd(Input::Send(id, data.clone()));
            client.cmd(Input::Finish(id));
            sent.insert(id, data);
        }
        let got = collect_until_closed(&client, &sent.keys().copied().collect::<Vec<_>>()).await;
        assert_eq!(got.len(), sent.len());
        for (id, data) in &sent {
            assert!(got.get(id) == Some(data), "stream {id}: echo differs");
        }
    });
}

/// (c) Half-close both ways: one side finishes writing, the other still
/// answers after seeing EOF, then finishes.
#[test]
fn half_close_both_ways() {
    run(async {
        // Ours writes and finishes first; the crate answers after EOF.
        let (c, s) = tcp_pair().await;
        let server = theirs(s, yamux::Mode::Server);
        let client = ours(c, Mode::Client, quiet(), false);
        let request = pattern(7, 300_000);
        let answer = pattern(8, 700_000);
        let expect_request = request.clone();
        let reply = answer.clone();
        let inbound = server.inbound.clone();
        let responder = task::spawn(async move {
            let stream = inbound.recv().await.expect("inbound stream");
            let (mut r, mut w) = stream.split();
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.expect("read to EOF");
            assert!(got == expect_request, "request differs");
            w.write_all(&reply).await.expect("answer");
            w.close().await.expect("close");
        });
        let id = client.open().await;
        client.cmd(Input::Send(id, request));
        client.cmd(Input::Finish(id));
        let got = collect_until_closed(&client, &[id]).await;
        assert!(got.get(&id) == Some(&answer), "answer differs");
        responder.await;

        // The crate writes and finishes first; ours answers after Finished.
        let (c, s) = tcp_pair().await;
        let server = ours(s, Mode::Server, quiet(), false);
        let client = theirs(c, yamux::Mode::Client);
        let stream = client.open().await;
        let request = pattern(9, 300_000);
        let answer = pattern(10, 700_000);
        let (mut r, mut w) = stream.split();
        w.write_all(&request).await.expect("crate write");
        w.close().await.expect("crate close");
        let mut got = Vec::new();
        let mut id = None;
        loop {
            match server.event().await {
                SessionEvent::Inbound(s) => id = Some(s),
                SessionEvent::Data { data, .. } => got.extend(data),
                SessionEvent::Finished(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        let id = id.expect("an inbound stream");
        assert!(got == request, "request differs");
        server.cmd(Input::Send(id, answer.clone()));
        server.cmd(Input::Finish(id));
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.expect("crate read");
        assert!(back == answer, "answer differs");
        assert_eq!(
            server
                .until(|e| matches!(e, SessionEvent::Closed(_)))
                .await
                .pop(),
            Some(SessionEvent::Closed(id))
        );
    });
}

/// (d) Reset either way: ours resets a crate stream mid-transfer; the crate
/// drops a stream without closing it. The sessions go on.
#[test]
fn reset_either_way() {
    run(async {
        let (c, s) = tcp_pair().await;
        let server = ours(s, Mode::Server, quiet(), false);
        let client = theirs(c, yamux::Mode::Client);

        // Ours resets: the crate's writes fail, its reads end.
        let stream = client.open().await;
        let (mut r, mut w) = stream.split();
        w.write_all(b"first").await.expect("crate write");
        w.flush().await.expect("flush");
        let id = match server.event().await {
            SessionEvent::Inbound(id) => id,
            other => panic!("unexpected {other:?}"),
        };
        server
            .until(|e| matches!(e, SessionEvent::Data { .. }))
            .await;
        server.cmd(Input::Reset(id));
        let chunk = vec![0u8; 64 * 1024];
        let mut failed = false;
        for _ in 0..10_000 {
            if w.write_all(&chunk).await.is_err() {
                failed = true;
                break;
            }
            task::sleep(Duration::from_millis(1)).await;
        }
        assert!(failed, "writes on a reset stream fail");
        let mut rest = Vec::new();
        assert_eq!(r.read_to_end(&mut rest).await.expect("EOF"), 0);

        // The crate drops a stream without closing it: RST.
        let stream = client.open().await;
        let (r2, mut w2) = stream.split();
        w2.write_all(b"bye").await.expect("crate write");
        w2.flush().await.expect("flush");
        let id2 = match server
            .until(|e| matches!(e, SessionEvent::Inbound(_)))
            .await
            .pop()
        {
            Some(SessionEvent::Inbound(id)) => id,
            other => panic!("unexpected {other:?}"),
        };
        assert_ne!(id2, id);
        server
            .until(|e| matches!(e, SessionEvent::Data { .. }))
            .await;
        drop((r2, w2));
        let seen = server.until(|e| matches!(e, SessionEvent::Reset(_))).await;
        assert_eq!(seen.last(), Some(&SessionEvent::Reset(id2)));

        // Still healthy: a fresh stream round-trips.
        let stream = client.open().await;
        let (mut r3, mut w3) = stream.split();
        w3.write_all(b"ping?").await.expect("crate write");
        w3.flush().await.expect("flush");
        let id3 = match server
            .until(|e| matches!(e, SessionEvent::Inbound(_)))
            .await
            .pop()
        {
            Some(SessionEvent::Inbound(id)) => id,
            other => panic!("unexpected {other:?}"),
        };
        server.cmd(Input::Send(id3, b"pong!".to_vec()));
        let mut buf = [0u8; 5];
        r3.read_exact(&mut buf).await.expect("answer");
        assert_eq!(&buf, b"pong!");
    });
}

/// (e) Our keep-alive Pings are answered by the crate: Pong events, no timeout.
#[test]
fn keepalive_pings_answered_by_crate() {
    run(async {
        let (c, s) = tcp_pair().await;
        let _server = theirs(s, yamux::Mode::Server);
        let client = ours(
            c,
            Mode::Client,
            Config {
                keepalive_interval: Some(Duration::from_millis(50)),
                keepalive_timeout: Duration::from_secs(5),
                ..Config::default()
            },
            false,
        );
        for _ in 0..3 {
            match client
                .until(|e| matches!(e, SessionEvent::Pong { .. }))
                .await
                .pop()
            {
                Some(SessionEvent::Pong { rtt }) => assert!(rtt < Duration::from_secs(5)),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
}

/// (f) GoAway from our side ends the crate's connection; GoAway from the crate
/// (closing its connection) is our `GoAway` event.
#[test]
fn go_away_both_directions() {
    run(async {
        // Ours sends GoAway.
        let (c, s) = tcp_pair().await;
        let server = ours(s, Mode::Server, quiet(), false);
        let client = theirs(c, yamux::Mode::Client);
        let stream = client.open().await;
        let (_r, mut w) = stream.split();
        w.write_all(b"hello").await.expect("crate write");
        w.flush().await.expect("flush");
        server
            .until(|e| matches!(e, SessionEvent::Data { .. }))
            .await;
        server.cmd(Input::GoAway(GoAwayCode::Normal));
        // The crate treats GoAway as the end of the connection.
        let ended = client.task.await;
        assert!(ended.is_ok(), "crate connection ended cleanly: {ended:?}");
        assert_eq!(server.task.await, Ok(()), "ours saw the socket close");

        // The crate closes: GoAway reaches us.
        let (c, s) = tcp_pair().await;
        let server = theirs(s, yamux::Mode::Server);
        let client = ours(c, Mode::Client, quiet(), false);
        let id = client.open().await;
        client.cmd(Input::Send(id, b"hi".to_vec()));
        // Read what ours sent, so the crate's socket holds nothing unread
        // when it closes (unread bytes would turn its close into a TCP RST).
        let mut accepted = server.accept().await;
        let mut hi = [0u8; 2];
        accepted.read_exact(&mut hi).await.expect("crate read");
        assert_eq!(&hi, b"hi");
        server
            .cmds
            .unbounded_send(CrateCmd::Close)
            .expect("crate running");
        let seen = client.until(|e| matches!(e, SessionEvent::GoAway(_))).await;
        assert_eq!(seen.last(), Some(&SessionEvent::GoAway(GoAwayCode::Normal)));
        assert!(server.task.await.is_ok());
        assert_eq!(client.task.await, Ok(()));
        // After GoAway no stream can be opened: the driver is gone with the
        // socket, so check on a fresh session fed the same GoAway frame.
        let mut session = Session::new(Mode::Client, quiet(), Instant::now());
        session
            .receive(&[0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], Instant::now())
            .expect("GoAway parses");
        assert!(matches!(session.open(), Err(StreamError::CannotOpen(_))));
    });
}
