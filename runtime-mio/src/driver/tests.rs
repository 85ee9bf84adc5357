//! The driver against a probe machine whose commands are raw actions and whose
//! events are the inputs it was fed, over real loopback sockets.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::net::{
    SocketAddr, TcpListener as StdListener, TcpStream as StdStream, UdpSocket as StdUdp,
};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use ferry_conformance::puppet::{Do, HalfClosePuppet, Puppet, Seen};
use ferry_core::io::{Action, CORE_ID_BIT, ConnId, ListenerId, SocketId};

use super::write_queue::WriteQueue;
use super::{Driver, Handle, run, spawn};

const WAIT: Duration = Duration::from_secs(10);

/// Reports every input; optionally echoes what it receives. `Mark(Pong(n))`
/// answers a ping: every earlier command has been executed.
type Probe = Puppet<Seen>;
type Cmd = Do<Seen>;

struct Harness {
    handle: Handle<Cmd>,
    seen: Receiver<Seen>,
    pings: u32,
}

impl Harness {
    fn start(echo: bool) -> Self {
        Self::start_with(Probe::new(echo))
    }

    /// A probe with `HALF_CLOSE`: a FIN is `ReadClosed`.
    fn start_half_close(echo: bool) -> Self {
        Self::start_with(HalfClosePuppet::<Seen>::new(echo))
    }

    fn start_with<M>(probe: M) -> Self
    where
        M: ferry_core::io::Machine<Command = Cmd, Event = Seen> + Send + 'static,
    {
        let (tx, seen) = channel();
        let handle = spawn(probe, move |e| {
            let _ = tx.send(e);
        })
        .expect("spawn the driver");
        Self {
            handle,
            seen,
            pings: 0,
        }
    }

    /// A probe whose pipes copy through user space, as where there is no
    /// `splice(2)` (on Linux, `start` splices).
    fn start_copying(echo: bool) -> Self {
        let (tx, seen) = channel();
        let mut driver = Driver::new(Probe::new(echo)).expect("a driver");
        driver.sockets.splice = false;
        let remote = driver.remote();
        let thread = std::thread::spawn(move || {
            driver
                .run(move |e| {
                    let _ = tx.send(e);
                })
                .map(drop)
        });
        Self {
            handle: Handle { remote, thread },
            seen,
            pings: 0,
        }
    }

    fn act(&self, action: Action) {
        self.handle.send(Do::Act(action)).expect("driver runs");
    }

    /// The next event that `pick` accepts; others are skipped.
    fn wait_for<T>(&self, what: &str, mut pick: impl FnMut(&Seen) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.seen.recv_timeout(left) {
                Ok(seen) => match pick(&seen) {
                    Some(found) => return found,
                    None => skipped.push(seen),
                },
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("no {what} within {WAIT:?}; saw {skipped:?}")
                }
            }
        }
    }

    /// Wait until every command sent so far was executed; return what came meanwhile.
    fn sync(&mut self) -> Vec<Seen> {
        self.pings += 1;
        let n = self.pings;
        self.handle
            .send(Do::Mark(Seen::Pong(n)))
            .expect("driver runs");
        let mut before = Vec::new();
        self.wait_for("pong", |s| {
            if *s == Seen::Pong(n) {
                Some(())
            } else {
                before.push(s.clone());
                None
            }
        });
        before
    }

    fn listen(&self) -> (ListenerId, SocketAddr) {
        let listener = ListenerId(CORE_ID_BIT | 1);
        self.act(Action::Listen {
            listener,
            addr: loopback(),
        });
        let local = self.wait_for("listening", |s| match s {
            Seen::Listening(l, local) if *l == listener => Some(*local),
            _ => None,
        });
        (listener, local)
    }

    fn accept(&self, addr: SocketAddr) -> (StdStream, ConnId) {
        let stream = StdStream::connect(addr).expect("connect to the driver");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let conn = self.wait_for("accepted", |s| match s {
            Seen::Accepted(_, conn) => Some(*conn),
            _ => None,
        });
        (stream, conn)
    }

    fn received(&self, conn: ConnId, len: usize) -> Vec<u8> {
        let mut data = Vec::new();
        while data.len() < len {
            data.extend(self.wait_for("received", |s| match s {
                Seen::Received(c, d) if *c == conn => Some(d.clone()),
                _ => None,
            }));
        }
        data
    }

    fn stop(self) {
        self.handle.shutdown();
        self.handle.join().expect("driver ends cleanly");
    }
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn accepted_connection_gets_runtime_id_and_echo_roundtrips() {
    let h = Harness::start(true);
    let (_, addr) = h.listen();
    assert_ne!(addr.port(), 0, "Listening reports the real port");
    let (mut client, conn) = h.accept(addr);
    assert_eq!(
        conn,
        ConnId(1),
        "runtime ids count from 1 without the core bit"
    );
    client.write_all(b"hello").expect("write");
    let mut back = [0; 5];
    client.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"hello");
    h.stop();
}

#[test]
fn flushed_sums_equal_bytes_sent() {
    const LEN: usize = 8 << 20;
    let h = Harness::start(true);
    let (_, addr) = h.listen();
    let (client, conn) = h.accept(addr);
    let mut writer = client.try_clone().expect("clone");
    let sent = pattern(LEN);
    let expected = sent.clone();
    let writing = std::thread::spawn(move || writer.write_all(&sent));
    let mut reader = client;
    let mut back = vec![0; LEN];
    reader.read_exact(&mut back).expect("all bytes echoed");
    assert!(back == expected, "echoed bytes differ");
    writing.join().expect("writer").expect("write");
    drop(reader);

    let (mut received, mut flushed) = (0, 0);
    h.wait_for("closed", |s| match s {
        Seen::Received(c, d) if *c == conn => {
            received += d.len();
            None
        }
        Seen::Flushed(c, n) if *c == conn => {
            flushed += n;
            None
        }
        Seen::Closed(c) if *c == conn => Some(()),
        _ => None,
    });
    assert_eq!(received, LEN);
    assert_eq!(flushed, LEN, "every echoed byte is reported flushed, once");
    h.stop();
}

#[test]
fn pause_read_stops_reads_until_resume() {
    let mut h = Harness::start(false);
    let (_, addr) = h.listen();
    let (mut client, conn) = h.accept(addr);
    client.write_all(b"before").expect("write");
    assert_eq!(h.received(conn, 6), b"before");

    h.act(Action::PauseRead { conn });
    h.sync();
    client.write_all(b"while paused").expect("write");
    std::thread::sleep(Duration::from_millis(200));
    let meanwhile = h.sync();
    assert!(
        !meanwhile.iter().any(|s| matches!(s, Seen::Received(..))),
        "read while paused: {meanwhile:?}"
    );

    h.act(Action::ResumeRead { conn });
    assert_eq!(h.received(conn, 12), b"while paused");
    h.stop();
}

#[test]
fn close_sends_queued_bytes_and_brings_no_further_input() {
    let mut h = Harness::start(false);
    let (_, addr) = h.listen();
    let (mut client, conn) = h.accept(addr);
    client.write_all(b"x").expect("write");
    h.received(conn, 1);

    h.act(Action::Send {
        conn,
        data: b"bye".to_vec(),
    });
    h.act(Action::Close { conn });
    h.sync();
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("EOF after the queued bytes");
    assert_eq!(rest, b"bye");
    let _ = client.write_all(b"too late");
    drop(client);
    std::thread::sleep(Duration::from_millis(200));
    let after = h.sync();
    assert!(
        !after
            .iter()
            .any(|s| matches!(s, Seen::Received(c, _) | Seen::Closed(c) if *c == conn)),
        "input after Close: {after:?}"
    );
    h.stop();
}

#[test]
fn peer_close_is_reported_once() {
    let mut h = Harness::start(false);
    let (_, addr) = h.listen();
    let (client, conn) = h.accept(addr);
    drop(client);
    h.wait_for("closed", |s| (*s == Seen::Closed(conn)).then_some(()));
    std::thread::sleep(Duration::from_millis(100));
    let after = h.sync();
    assert!(
        !after.contains(&Seen::Closed(conn)),
        "closed twice: {after:?}"
    );
    h.stop();
}

#[test]
fn connect_reports_connected_then_bytes_flow() {
    let h = Harness::start(false);
    let server = StdListener::bind(loopback()).expect("bind");
    let conn = ConnId(CORE_ID_BIT | 7);
    h.act(Action::Connect {
        conn,
        addr: server.local_addr().expect("addr"),
    });
    // Sent before the connection is up: queued, written once connected.
    h.act(Action::Send {
        conn,
        data: b"early".to_vec(),
    });
    let (mut peer, _) = server.accept().expect("accept");
    peer.set_read_timeout(Some(WAIT)).expect("timeout");
    h.wait_for("connected", |s| (*s == Seen::Connected(conn)).then_some(()));
    let mut early = [0; 5];
    peer.read_exact(&mut early).expect("early bytes");
    assert_eq!(&early, b"early");
    peer.write_all(b"pong").expect("write");
    assert_eq!(h.received(conn, 4), b"pong");
    h.stop();
}

#[test]
fn connect_to_a_closed_port_fails() {
    let h = Harness::start(false);
    let closed = StdListener::bind(loopback())
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let conn = ConnId(CORE_ID_BIT | 1);
    h.act(Action::Connect { conn, addr: closed });
    h.wait_for("connect failed", |s| {
        (*s == Seen::ConnectFailed(conn)).then_some(())
    });
    h.stop();
}

#[test]
fn listen_on_a_taken_address_fails() {
    let h = Harness::start(false);
    let taken = StdListener::bind(loopback()).expect("bind");
    let listener = ListenerId(CORE_ID_BIT | 3);
    h.act(Action::Listen {
        listener,
        addr: taken.local_addr().expect("addr"),
    });
    h.wait_for("listen failed", |s| {
        (*s == Seen::ListenFailed(listener)).then_some(())
    });
    h.stop();
}

#[test]
fn pipe_splices_both_ways_and_closes_both() {
    const LEN: usize = 4 << 20;
    let mut h = Harness::start(false);
    let (_, addr) = h.listen();
    let (mut left, a) = h.accept(addr);
    let (mut right, b) = h.accept(addr);
    h.act(Action::Pipe { a, b });
    h.sync();

    left.write_all(b"ping").expect("write");
    let mut got = [0; 4];
    right.read_exact(&mut got).expect("spliced to the right");
    assert_eq!(&got, b"ping");
    right.write_all(b"pong").expect("write");
    left.read_exact(&mut got).expect("spliced to the left");
    assert_eq!(&got, b"pong");

    // More than the pipe buffer, so back-pressure must hold and release.
    let data = pattern(LEN);
    let expected = data.clone();
    let mut writer = left.try_clone().expect("clone");
    let writing = std::thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut out = Vec::new();
    right.read_to_end(&mut out).expect("all bytes, then EOF");
    writing.join().expect("writer").expect("write");
    assert!(
        out == expected,
        "spliced bytes differ ({} of {LEN})",
        out.len()
    );
    // The FIN was carried through; the pipe ends once the other side's is too.
    right.shutdown(std::net::Shutdown::Write).expect("shutdown");
    assert_eq!(left.read(&mut got).expect("EOF"), 0);

    let mut closed = Vec::new();
    h.wait_for("both closed", |s| {
        if let Seen::Closed(c) = s {
            closed.push(*c);
        }
        (closed.len() == 2).then_some(())
    });
    closed.sort();
    assert_eq!(closed, vec![a, b]);
    let after = h.sync();
    assert!(
        !after.iter().any(|s| matches!(s, Seen::Received(..))),
        "the machine saw piped bytes: {after:?}"
    );
    h.stop();
}

#[test]
fn closing_one_piped_side_reports_only_the_other() {
    let mut h = Harness::start(false);
    let (_, addr) = h.listen();
    let (mut left, a) = h.accept(addr);
    let (mut right, b) = h.accept(addr);
    h.act(Action::Pipe { a, b });
    h.act(Action::Close { conn: a });
    h.wait_for("the other side closed", |s| {
        (*s == Seen::Closed(b)).then_some(())
    });
    let after = h.sync();
    assert!(
        !after.contains(&Seen::Closed(a)),
        "input after Close: {after:?}"
    );
    let mut buf = [0; 1];
    assert_eq!(left.read(&mut buf).expect("EOF"), 0);
    assert_eq!(right.read(&mut buf).expect("EOF"), 0);
    h.stop();
}

#[test]
fn a_send_to_a_piped_connection_goes_out_in_order_without_flushed() {
    let mut h = Harness::start(false);
    let (_, addr) = h.listen();
    let (mut left, a) = h.accept(addr);
    let (mut right, b) = h.accept(addr);
    h.act(Action::Pipe { a, b });
    h.sync();

    right.write_all(b"1-").expect("write");
    let mut got = [0; 2];
    left.read_exact(&mut got).expect("spliced to the left");
    assert_eq!(&got, b"1-");
    h.act(Action::Send {
        conn: a,
        data: b"2-".to_vec(),
    });
    let mut after = h.sync();
    right.write_all(b"3").expect("write");
    let mut got = [0; 3];
    left.read_exact(&mut got)
        .expect("the Send, then the pipe's bytes");
    assert_eq!(&got, b"2-3");

    after.extend(h.sync());
    assert!(
        !after.iter().any(|s| matches!(s, Seen::Flushed(..))),
        "a piped connection was reported Flushed: {after:?}"
    );
    h.stop();
}

#[test]
fn half_close_machine_gets_read_closed_and_replies_before_its_shutdown() {
    let mut h = Harness::start_half_close(false);
    let (_, addr) = h.listen();
    let (mut client, conn) = h.accept(addr);
    client.write_all(b"request").expect("write");
    client.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(h.received(conn, 7), b"request");
    h.wait_for("read closed", |s| {
        (*s == Seen::ReadClosed(conn)).then_some(())
    });

    // Still writable: the reply, then a FIN; a Send after Shutdown is dropped.
    h.act(Action::Send {
        conn,
        data: b"reply".to_vec(),
    });
    h.act(Action::Shutdown { conn });
    h.act(Action::Send {
        conn,
        data: b"dropped".to_vec(),
    });
    h.act(Action::Shutdown {
        conn: ConnId(CORE_ID_BIT | 77),
    });
    let mut back = Vec::new();
    client.read_to_end(&mut back).expect("the reply, then EOF");
    assert_eq!(back, b"reply");
    let after = h.sync();
    assert!(
        !after.contains(&Seen::Closed(conn)),
        "a half-closed connection lives until Close: {after:?}"
    );
    let flushed: usize = after
        .iter()
        .map(|s| match s {
            Seen::Flushed(c, n) if *c == conn => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(flushed, 5, "the dropped Send is never Flushed");
    h.act(Action::Close { conn });
    let after = h.sync();
    assert!(
        !after.iter().any(|s| matches!(s, Seen::Closed(_))),
        "input after Close: {after:?}"
    );
    h.stop();
}

#[test]
fn shutdown_keeps_reading_for_a_machine_without_half_close() {
    let mut h = Harness::start(false);
    let (_, addr) = h.listen();
    let (mut client, conn) = h.accept(addr);
    h.act(Action::Send {
        conn,
        data: b"bye".to_vec(),
    });
    h.act(Action::Shutdown { conn });
    let mut back = Vec::new();
    client.read_to_end(&mut back).expect("bytes, then EOF");
    assert_eq!(back, b"bye");
    client.write_all(b"still read").expect("write");
    assert_eq!(h.received(conn, 10), b"still read");
    drop(client);
    h.wait_for("closed", |s| (*s == Seen::Closed(conn)).then_some(()));
    let after = h.sync();
    assert!(!after.iter().any(|s| matches!(s, Seen::ReadClosed(_))));
    h.stop();
}

/// `from` writes `data` and half-closes; what `to` reads until EOF (late, and
/// slowly: a pause after every read, so its socket stays full).
fn half_close_transfer(from: &StdStream, to: &StdStream, data: Vec<u8>) -> Vec<u8> {
    let mut writer = from.try_clone().expect("clone");
    let writing = std::thread::spawn(move || {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    // Let the writer get ahead (and its FIN, if the data fits in the buffers).
    std::thread::sleep(Duration::from_millis(200));
    let mut reader = to.try_clone().expect("clone");
    let mut got = Vec::new();
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = reader.read(&mut buf).expect("read before EOF");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(1));
    }
    writing
        .join()
        .expect("writer")
        .expect("write, then shutdown");
    got
}

/// Two clients piped together; each half-closes in turn after sending `len` bytes.
fn pipe_half_close(half_close: bool, len: usize) {
    let h = if half_close {
        Harness::start_half_close(false)
    } else {
        Harness::start(false)
    };
    pipe_half_close_in(h, len);
}

fn pipe_half_close_in(mut h: Harness, len: usize) {
    let (_, addr) = h.listen();
    let (x, a) = h.accept(addr);
    let (y, b) = h.accept(addr);
    h.act(Action::Pipe { a, b });
    h.sync();

    let request = pattern(len);
    let response: Vec<u8> = request.iter().rev().copied().collect();
    // X sends its request and half-closes; Y reads it all, then EOF.
    let got = half_close_transfer(&x, &y, request.clone());
    assert!(
        got == request,
        "Y read other bytes ({} of {len})",
        got.len()
    );
    // The other direction still works after the first FIN.
    let got = half_close_transfer(&y, &x, response.clone());
    assert!(
        got == response,
        "X read other bytes ({} of {len})",
        got.len()
    );
    expect_pipe_closed(&mut h, a, b);
    h.stop();
}

/// The machine hears `Closed` for both sides of a pipe, and nothing else after.
fn expect_pipe_closed(h: &mut Harness, a: ConnId, b: ConnId) {
    let mut closed = Vec::new();
    h.wait_for("both closed", |s| {
        match s {
            Seen::Closed(c) => closed.push(*c),
            Seen::Received(..) | Seen::ReadClosed(_) => panic!("the machine saw {s:?}"),
            _ => {}
        }
        (closed.len() == 2).then_some(())
    });
    closed.sort();
    assert_eq!(closed, vec![a, b]);
    let after = h.sync();
    assert!(
        !after.iter().any(|s| matches!(
            s,
            Seen::Received(..) | Seen::ReadClosed(_) | Seen::Closed(_)
        )),
        "after the pipe ended: {after:?}"
    );
}

#[test]
fn pipe_carries_half_close_both_ways() {
    pipe_half_close(true, 7);
    pipe_half_close(false, 7);
}

#[test]
fn pipe_carries_half_close_after_large_transfers() {
    pipe_half_close(true, 8 << 20);
}

/// A FIN the half-closing machine heard of before the `Pipe` is carried through
/// at once, but only after the 8 MiB the machine queued for the other side
/// (more than its socket takes: the driver still holds megabytes then).
#[test]
fn pipe_carries_an_earlier_fin_after_the_bytes_still_queued() {
    const LEN: usize = 8 << 20;
    let mut h = Harness::start_half_close(false);
    let (_, addr) = h.listen();
    let (mut x, a) = h.accept(addr);
    let (y, b) = h.accept(addr);
    x.write_all(b"request").expect("write");
    x.shutdown(Shutdown::Write).expect("half-close");
    assert_eq!(h.received(a, 7), b"request");
    h.wait_for("read closed", |s| (*s == Seen::ReadClosed(a)).then_some(()));
    let queued = pattern(LEN);
    h.act(Action::Send {
        conn: b,
        data: queued.clone(),
    });
    h.act(Action::Pipe { a, b });
    h.sync();

    let got = half_close_transfer(&y, &x, b"response".to_vec());
    assert_eq!(got, b"response");
    let mut y = y;
    let mut got = Vec::new();
    y.read_to_end(&mut got).expect("the queued bytes, then EOF");
    assert!(got == queued, "Y read other bytes ({} of {LEN})", got.len());
    expect_pipe_closed(&mut h, a, b);
    h.stop();
}

#[test]
fn copied_pipe_carries_half_close_both_ways_after_large_transfers() {
    pipe_half_close_in(Harness::start_copying(false), 7);
    pipe_half_close_in(Harness::start_copying(false), 8 << 20);
}

/// Bytes the machine queued for Y before the `Pipe` (more than its socket
/// takes), then 16 MiB from X, far more than a kernel pipe holds: Y reads the
/// queued bytes first, then X's, byte for byte; then the other way.
fn queued_then_piped(mut h: Harness) {
    const QUEUED: usize = 4 << 20;
    const PIPED: usize = 16 << 20;
    let (_, addr) = h.listen();
    let (x, a) = h.accept(addr);
    let (y, b) = h.accept(addr);
    let queued: Vec<u8> = pattern(QUEUED + 7).into_iter().rev().take(QUEUED).collect();
    h.act(Action::Send {
        conn: b,
        data: queued.clone(),
    });
    h.act(Action::Pipe { a, b });
    h.sync();

    let piped = pattern(PIPED);
    let got = half_close_transfer(&x, &y, piped.clone());
    assert_eq!(got.len(), QUEUED + PIPED, "Y read another length");
    assert!(got[..QUEUED] == queued[..], "the queued bytes differ");
    assert!(got[QUEUED..] == piped[..], "the piped bytes differ");
    let got = half_close_transfer(&y, &x, b"and back".to_vec());
    assert_eq!(got, b"and back");
    expect_pipe_closed(&mut h, a, b);
    h.stop();
}

#[test]
fn queued_bytes_then_a_large_spliced_transfer_arrive_in_order() {
    queued_then_piped(Harness::start(false));
}

#[test]
fn queued_bytes_then_a_large_copied_transfer_arrive_in_order() {
    queued_then_piped(Harness::start_copying(false));
}

/// X writes 16 MiB that Y does not read yet, so the pipe holds some (in the
/// kernel pipe, when spliced); a `Send` to Y meanwhile goes after every byte
/// read from X before it and before every byte read after it.
fn send_between_piped_bytes(mut h: Harness) {
    const LEN: usize = 16 << 20;
    // `pattern` never makes these bytes.
    const MARK: &[u8] = &[251, 252, 253, 254, 255];
    let (_, addr) = h.listen();
    let (x, a) = h.accept(addr);
    let (mut y, b) = h.accept(addr);
    h.act(Action::Pipe { a, b });
    h.sync();

    let data = pattern(LEN);
    let mut writer = x.try_clone().expect("clone");
    let sent = data.clone();
    let writing = std::thread::spawn(move || {
        writer.write_all(&sent)?;
        writer.shutdown(Shutdown::Write)
    });
    // Let the writer fill every buffer on the way (Y reads nothing yet).
    std::thread::sleep(Duration::from_millis(300));
    h.act(Action::Send {
        conn: b,
        data: MARK.to_vec(),
    });
    let after = h.sync();
    let mut got = Vec::new();
    y.read_to_end(&mut got).expect("all bytes, then EOF");
    writing
        .join()
        .expect("writer")
        .expect("write, then shutdown");
    assert_eq!(got.len(), LEN + MARK.len(), "Y read another length");
    let at = got
        .iter()
        .position(|&byte| byte == MARK[0])
        .expect("the Send arrived");
    assert!(at > 0, "the Send overtook the bytes already read");
    assert_eq!(&got[at..at + MARK.len()], MARK, "the Send was split");
    assert!(got[..at] == data[..at], "the bytes before the Send differ");
    assert!(
        got[at + MARK.len()..] == data[at..],
        "the bytes after the Send differ"
    );
    assert!(
        !after.iter().any(|s| matches!(s, Seen::Flushed(..))),
        "a piped connection was reported Flushed: {after:?}"
    );
    y.shutdown(Shutdown::Write).expect("shutdown");
    let mut x = x;
    assert_eq!(x.read(&mut [0; 1]).expect("EOF"), 0);
    expect_pipe_closed(&mut h, a, b);
    h.stop();
}

#[test]
fn a_send_while_spliced_bytes_wait_goes_between_them_in_order() {
    send_between_piped_bytes(Harness::start(false));
}

#[test]
fn a_send_while_copied_bytes_wait_goes_between_them_in_order() {
    send_between_piped_bytes(Harness::start_copying(false));
}

/// Y does not read and the machine queued 12 MiB for it before the `Pipe`, so
/// what X sends next waits in the kernel pipe; a `Send` to Y then goes after
/// those bytes, and before what X sends after it.
#[cfg(target_os = "linux")]
#[test]
fn a_send_goes_after_the_bytes_the_kernel_pipe_holds() {
    const QUEUED: usize = 12 << 20;
    const MARK: &[u8] = &[251, 252, 253, 254, 255];
    let mut h = Harness::start(false);
    let (_, addr) = h.listen();
    let (mut x, a) = h.accept(addr);
    let (mut y, b) = h.accept(addr);
    let queued: Vec<u8> = pattern(QUEUED + 3).into_iter().rev().take(QUEUED).collect();
    h.act(Action::Send {
        conn: b,
        data: queued.clone(),
    });
    h.act(Action::Pipe { a, b });
    h.sync();

    let first = pattern(64 << 10);
    x.write_all(&first).expect("write");
    // The driver splices it into the kernel pipe; Y's side is full.
    std::thread::sleep(Duration::from_millis(800));
    h.act(Action::Send {
        conn: b,
        data: MARK.to_vec(),
    });
    h.sync();
    let second: Vec<u8> = first.iter().rev().copied().collect();
    x.write_all(&second).expect("write");
    x.shutdown(Shutdown::Write).expect("shutdown");

    let mut got = Vec::new();
    y.read_to_end(&mut got).expect("all bytes, then EOF");
    let expected = [&queued[..], &first, MARK, &second].concat();
    assert_eq!(got.len(), expected.len(), "Y read another length");
    assert!(got[..QUEUED] == queued[..], "the queued bytes differ");
    assert!(
        got[QUEUED..] == expected[QUEUED..],
        "the Send is not right after the bytes the pipe held"
    );
    y.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(x.read(&mut [0; 1]).expect("EOF"), 0);
    expect_pipe_closed(&mut h, a, b);
    h.stop();
}

/// The largest value of a `min default max` sysctl, if readable.
fn sysctl_max(path: &str) -> Option<usize> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Y never reads: X's writes must block once the buffers on the way are full
/// (X's send buffer, A's receive buffer, the pipe, B's send buffer, Y's
/// receive buffer), not once the relay holds everything; then Y reads it all.
fn stalled_reader_blocks_the_writer(mut h: Harness) {
    let rmem = sysctl_max("/proc/sys/net/ipv4/tcp_rmem").unwrap_or(32 << 20);
    let wmem = sysctl_max("/proc/sys/net/ipv4/tcp_wmem").unwrap_or(32 << 20);
    // Two of each socket buffer, plus the pipe's own (1 MiB at most) and slack.
    let limit = 2 * (rmem + wmem) + (2 << 20);
    let (_, addr) = h.listen();
    let (mut x, a) = h.accept(addr);
    let (mut y, b) = h.accept(addr);
    h.act(Action::Pipe { a, b });
    h.sync();

    x.set_nonblocking(true).expect("non-blocking");
    let chunk = pattern(251 * 1024);
    let mut sent = 0;
    let deadline = Instant::now() + 3 * WAIT;
    let mut last_progress = Instant::now();
    // Stalled: no byte taken for half a second (a busy machine may stall
    // sooner than the buffers are full; the bound holds all the same).
    while last_progress.elapsed() < Duration::from_millis(500) {
        assert!(Instant::now() < deadline, "the writer never blocked");
        assert!(
            sent <= limit,
            "{sent} bytes taken while nobody reads: buffered without bound"
        );
        match x.write(&chunk[sent % 251..]) {
            Ok(n) => {
                sent += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    x.set_nonblocking(false).expect("blocking");
    x.shutdown(Shutdown::Write).expect("shutdown");

    // Nothing was lost on the way.
    let mut got = 0;
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = y.read(&mut buf).expect("read before EOF");
        if n == 0 {
            break;
        }
        let expected = (got..got + n).map(|i| (i % 251) as u8);
        assert!(
            buf[..n].iter().copied().eq(expected),
            "bytes differ after {got}"
        );
        got += n;
    }
    assert_eq!(got, sent, "Y read another length");
    y.shutdown(Shutdown::Write).expect("shutdown");
    assert_eq!(x.read(&mut [0; 1]).expect("EOF"), 0);
    expect_pipe_closed(&mut h, a, b);
    h.stop();
}

#[test]
fn a_stalled_reader_blocks_the_writer_through_a_spliced_pipe() {
    stalled_reader_blocks_the_writer(Harness::start(false));
}

#[test]
fn a_stalled_reader_blocks_the_writer_through_a_copied_pipe() {
    stalled_reader_blocks_the_writer(Harness::start_copying(false));
}

#[test]
fn udp_datagrams_both_ways() {
    let h = Harness::start(false);
    let socket = SocketId(CORE_ID_BIT | 1);
    h.act(Action::BindUdp {
        socket,
        addr: loopback(),
    });
    let local = h.wait_for("bound", |s| match s {
        Seen::UdpBound(id, local) if *id == socket => Some(*local),
        _ => None,
    });
    let peer = StdUdp::bind(loopback()).expect("bind");
    peer.set_read_timeout(Some(WAIT)).expect("timeout");
    peer.send_to(b"hi relay", local).expect("send");
    let from = h.wait_for("datagram", |s| match s {
        Seen::Datagram(id, from, data) if *id == socket && data == b"hi relay" => Some(*from),
        _ => None,
    });
    assert_eq!(from, peer.local_addr().expect("addr"));
    h.act(Action::SendTo {
        socket,
        to: from,
        data: b"hi peer".to_vec(),
    });
    let mut buf = [0; 64];
    let (n, sender) = peer.recv_from(&mut buf).expect("reply");
    assert_eq!(&buf[..n], b"hi peer");
    assert_eq!(sender, local);
    h.act(Action::CloseUdp { socket });
    h.act(Action::WriteTun(vec![0x45, 0, 0, 20]));
    h.stop();
}

#[test]
fn timer_fires_after_its_deadline() {
    let h = Harness::start(false);
    let start = Instant::now();
    h.handle
        .send(Do::WakeIn(Duration::from_millis(50)))
        .expect("send");
    h.wait_for("timeout", |s| (*s == Seen::Timeout).then_some(()));
    assert!(start.elapsed() >= Duration::from_millis(50));
    h.stop();
}

#[test]
fn shutdown_drops_every_socket() {
    let h = Harness::start(true);
    let (_, addr) = h.listen();
    let (mut client, _) = h.accept(addr);
    h.stop();
    let mut buf = [0; 1];
    assert_eq!(client.read(&mut buf).expect("EOF"), 0);
    assert!(StdStream::connect(addr).is_err(), "the listener is gone");
}

#[test]
fn run_returns_when_nothing_can_happen_any_more() {
    let probe = run(Probe::default(), |_| {}).expect("runs");
    assert!(probe.is_idle());
}

#[test]
fn write_queue_consumes_across_buffers() {
    let mut q = WriteQueue::default();
    q.push(b"abc".to_vec());
    q.push(Vec::new());
    q.push(b"defg".to_vec());
    let mut out = Vec::new();
    q.consume(2);
    assert_eq!(q.write_to(&mut out).expect("write"), 5);
    assert_eq!(out, b"cdefg");
    assert!(q.is_empty() && q.bufs.is_empty() && q.head == 0);
}

#[test]
fn write_queue_merges_tiny_sends_and_keeps_the_order() {
    let mut q = WriteQueue::default();
    for i in 0..10_000u16 {
        q.push(i.to_be_bytes().to_vec());
    }
    assert!(
        q.bufs.len() <= 10_000 * 2 / 4096 + 1,
        "{} buffers",
        q.bufs.len()
    );
    q.push(vec![7; 8192]); // a big one stays its own buffer
    q.consume(1);
    q.push(b"end".to_vec());
    let mut out = Vec::new();
    assert_eq!(q.write_to(&mut out).expect("write"), 20_000 - 1 + 8192 + 3);
    let mut want: Vec<u8> = (0..10_000u16).flat_map(u16::to_be_bytes).collect();
    want.extend_from_slice(&[7; 8192]);
    want.extend_from_slice(b"end");
    assert_eq!(out, want[1..]);
}

/// Trains (`UDP_SEGMENT`): only runs of equal-sized datagrams to one
/// address, the last possibly shorter, within the kernel's limits.
#[cfg(target_os = "linux")]
#[test]
fn udp_trains_are_equal_sized_runs_to_one_address() {
    use std::collections::VecDeque;

    use super::sockets::train;

    let a: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
    let b: SocketAddr = "127.0.0.1:2000".parse().expect("addr");
    let queue = |items: &[(SocketAddr, usize)]| -> VecDeque<(SocketAddr, Vec<u8>)> {
        items
            .iter()
            .enumerate()
            .map(|(i, &(to, len))| (to, vec![u8::try_from(i).expect("small"); len]))
            .collect()
    };
    // Three full ones and a shorter last one; the run stops at the short one.
    let q = queue(&[(a, 1000), (a, 1000), (a, 1000), (a, 400), (a, 1000)]);
    assert_eq!(train(&q, 1472), Some((4, 1000)));
    // Another address ends the run; a lone datagram is no train.
    let q = queue(&[(a, 1000), (a, 1000), (b, 1000)]);
    assert_eq!(train(&q, 1472), Some((2, 1000)));
    assert_eq!(train(&queue(&[(a, 1000), (b, 1000)]), 1472), None);
    // A longer one ends it too; larger than train_max: sent alone.
    let q = queue(&[(a, 500), (a, 1000)]);
    assert_eq!(train(&q, 1472), None);
    assert_eq!(train(&queue(&[(a, 1000), (a, 1000)]), 999), None);
    // At most 64 datagrams and 65,000 bytes.
    let q = queue(&[(a, 100); 100]);
    assert_eq!(train(&q, 1472), Some((64, 100)));
    let q = queue(&[(a, 1472); 60]);
    assert_eq!(train(&q, 1472), Some((44, 1472)));
}
