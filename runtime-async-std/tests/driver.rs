//! The generic driver executing the IO vocabulary, scripted through a puppet
//! machine: every command is an action to execute, every input becomes an event.

use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use async_std::io::prelude::*;
use async_std::net::{TcpListener, TcpStream, UdpSocket};
use async_std::task;
use ferry_async_std::driver::READ_BUFFER;
use ferry_async_std::{Driver, DriverConfig};
use ferry_conformance::puppet::{self, Do, Seen};
use ferry_core::io::CORE_ID_BIT;
use ferry_core::{Action, ConnId, ListenerId, Machine, SocketId};

type Puppet = puppet::Puppet<Seen>;
/// A puppet with `HALF_CLOSE`: a FIN is `ReadClosed`.
type HalfClosePuppet = puppet::HalfClosePuppet<Seen>;

/// Either puppet.
trait Probe: Machine<Command = Do<Seen>, Event = Seen> + Send + 'static {}
impl<M: Machine<Command = Do<Seen>, Event = Seen> + Send + 'static> Probe for M {}

async fn within<T>(what: &str, secs: u64, future: impl Future<Output = T>) -> T {
    match async_std::future::timeout(Duration::from_secs(secs), future).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {secs} s: {what}"),
    }
}

fn puppet() -> Driver<Puppet> {
    Driver::spawn(Puppet::default(), DriverConfig::default())
}

async fn act<M: Probe>(driver: &Driver<M>, action: Action) {
    within("command", 5, driver.command(Do::Act(action)))
        .await
        .expect("driver running");
}

async fn send<M: Probe>(driver: &Driver<M>, conn: ConnId, data: &[u8]) {
    act(
        driver,
        Action::Send {
            conn,
            data: data.to_vec(),
        },
    )
    .await;
}

async fn next<M>(driver: &Driver<M>) -> Seen
where
    M: Machine<Event = Seen> + Send + 'static,
    M::Command: Send + 'static,
{
    within("an event", 10, driver.next_event())
        .await
        .expect("driver running")
}

/// The next event that is not `Flushed`.
async fn next_skipping_flushed<M: Probe>(driver: &Driver<M>) -> Seen {
    loop {
        match next(driver).await {
            Seen::Flushed(..) => {}
            other => return other,
        }
    }
}

/// Bytes the puppet receives on `conn` until it has `len` of them.
async fn received<M: Probe>(driver: &Driver<M>, conn: ConnId, len: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        match next_skipping_flushed(driver).await {
            Seen::Received(c, data) if c == conn => got.extend_from_slice(&data),
            other => panic!("expected bytes on {conn}, got {other:?}"),
        }
    }
    got
}

fn core_conn(n: u64) -> ConnId {
    ConnId(CORE_ID_BIT | n)
}

/// Have the puppet listen on a loopback port: what `Listening` said.
async fn listen<M: Probe>(driver: &Driver<M>, listener: ListenerId) -> (ListenerId, SocketAddr) {
    act(
        driver,
        Action::Listen {
            listener,
            addr: "127.0.0.1:0".parse().expect("addr"),
        },
    )
    .await;
    let Seen::Listening(l, addr) = next(driver).await else {
        panic!("expected Listening");
    };
    (l, addr)
}

/// Connect to the puppet's listener at `addr`: our side, and what `Accepted` said.
async fn accept<M>(driver: &Driver<M>, addr: SocketAddr) -> (TcpStream, ListenerId, ConnId)
where
    M: Machine<Event = Seen> + Send + 'static,
    M::Command: Send + 'static,
{
    let stream = within("connect", 5, TcpStream::connect(addr))
        .await
        .expect("connect");
    let Seen::Accepted(l, conn) = next(driver).await else {
        panic!("expected Accepted");
    };
    (stream, l, conn)
}

/// Have the puppet connect `conn` to a loopback listener: the peer's side.
async fn connected(driver: &Driver<Puppet>, conn: ConnId) -> TcpStream {
    let peer_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = peer_listener.local_addr().expect("addr");
    act(driver, Action::Connect { conn, addr }).await;
    let (peer, _) = within("accept", 5, peer_listener.accept())
        .await
        .expect("accept");
    assert_eq!(next(driver).await, Seen::Connected(conn));
    peer
}

#[test]
fn connect_send_receive_flushed_and_closed() {
    task::block_on(async {
        let driver = puppet();
        let conn = core_conn(0);
        let mut peer = connected(&driver, conn).await;

        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        send(&driver, conn, &data).await;
        let mut got = vec![0u8; data.len()];
        within("peer reads", 5, peer.read_exact(&mut got))
            .await
            .expect("read");
        assert_eq!(got, data);
        let mut flushed = 0;
        while flushed < data.len() {
            match next(&driver).await {
                Seen::Flushed(c, n) if c == conn => flushed += n,
                other => panic!("expected Flushed, got {other:?}"),
            }
        }
        assert_eq!(flushed, data.len(), "Flushed never exceeds what was sent");

        within("peer writes", 5, peer.write_all(b"hello machine"))
            .await
            .expect("write");
        assert_eq!(received(&driver, conn, 13).await, b"hello machine");
        drop(peer);
        assert_eq!(next(&driver).await, Seen::Closed(conn));
    });
}

#[test]
fn connect_to_a_closed_port_fails() {
    task::block_on(async {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let driver = puppet();
        act(
            &driver,
            Action::Connect {
                conn: core_conn(7),
                addr,
            },
        )
        .await;
        assert_eq!(next(&driver).await, Seen::ConnectFailed(core_conn(7)));
    });
}

#[test]
fn listen_accepts_with_runtime_ids_and_close_flushes_then_stops_inputs() {
    task::block_on(async {
        let driver = puppet();
        let listener = ListenerId(CORE_ID_BIT | 1);
        let (l, addr) = listen(&driver, listener).await;
        assert_eq!(l, listener);

        let (mut a, l, conn) = accept(&driver, addr).await;
        assert_eq!(l, listener);
        assert!(
            !conn.is_core_allocated() && conn.0 >= 1,
            "runtime ids have the top bit clear"
        );
        let (mut b, _, conn_b) = accept(&driver, addr).await;
        assert_ne!(conn, conn_b);

        // Send then Close at once: the queued bytes go out, then the close.
        let data = vec![0x5a; 3 << 20];
        send(&driver, conn, &data).await;
        act(&driver, Action::Close { conn }).await;
        let mut got = Vec::new();
        within("read to the close", 10, a.read_to_end(&mut got))
            .await
            .expect("read");
        assert_eq!(got.len(), data.len());

        // Nothing more is said about the closed connection; the other one still works.
        within("write", 5, b.write_all(b"b")).await.expect("write");
        assert_eq!(received(&driver, conn_b, 1).await, b"b");

        act(&driver, Action::CloseListener { listener }).await;
        send(&driver, conn_b, b"x").await;
        let mut one = [0u8; 1];
        within("read", 5, b.read_exact(&mut one))
            .await
            .expect("read");
        assert!(matches!(next(&driver).await, Seen::Flushed(c, 1) if c == conn_b));
        let refused = within("connect after CloseListener", 5, TcpStream::connect(addr)).await;
        if let Ok(mut late) = refused {
            // Accepted by the kernel before the close took effect: it must be dropped.
            let mut buf = [0u8; 1];
            let read = within("late connection is closed", 5, late.read(&mut buf)).await;
            assert!(matches!(read, Ok(0) | Err(_)));
        }
        assert!(
            driver.try_next_event().is_none(),
            "no input for closed things"
        );
    });
}

#[test]
fn pause_read_holds_bytes_until_resume() {
    task::block_on(async {
        let driver = puppet();
        let conn = core_conn(1);
        let mut peer = connected(&driver, conn).await;

        act(&driver, Action::PauseRead { conn }).await;
        // A round trip through the actor makes sure the pause was executed.
        send(&driver, conn, b"p").await;
        let mut one = [0u8; 1];
        within("read", 5, peer.read_exact(&mut one))
            .await
            .expect("read");
        assert!(matches!(next(&driver).await, Seen::Flushed(..)));

        within("write", 5, peer.write_all(b"held back"))
            .await
            .expect("write");
        task::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            driver.try_next_event(),
            None,
            "a paused connection delivers nothing"
        );
        act(&driver, Action::ResumeRead { conn }).await;
        assert_eq!(received(&driver, conn, 9).await, b"held back");
    });
}

#[test]
fn pipe_splices_two_connections_both_ways() {
    task::block_on(async {
        let driver = puppet();
        let listener = ListenerId(CORE_ID_BIT | 1);
        let (_, addr) = listen(&driver, listener).await;
        let (mut a, _, conn_a) = accept(&driver, addr).await;
        let (mut b, _, conn_b) = accept(&driver, addr).await;

        // What the machine queued before the pipe comes first.
        send(&driver, conn_b, b"hello b|").await;
        act(
            &driver,
            Action::Pipe {
                a: conn_a,
                b: conn_b,
            },
        )
        .await;

        // A large transfer a -> b while b -> a also flows.
        let big: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 241) as u8).collect();
        let mut a_writer = a.clone();
        let sent = big.clone();
        let pushing = task::spawn(async move { a_writer.write_all(&sent).await });
        within("b writes", 5, b.write_all(b"from b"))
            .await
            .expect("write");
        let mut got = vec![0u8; 8 + big.len()];
        within("b reads", 30, b.read_exact(&mut got))
            .await
            .expect("read");
        assert_eq!(&got[..8], b"hello b|");
        assert!(got[8..] == big[..], "piped bytes corrupted");
        within("a finishes", 10, pushing).await.expect("a wrote");
        let mut back = [0u8; 6];
        within("a reads", 5, a.read_exact(&mut back))
            .await
            .expect("read");
        assert_eq!(&back, b"from b");

        // One side ends: its FIN is carried through; once the other side ends
        // too, both are closed and reported.
        drop(a);
        let mut rest = Vec::new();
        within("b sees the close", 5, b.read_to_end(&mut rest))
            .await
            .expect("eof");
        drop(b);
        let mut closed = vec![
            next_skipping_flushed(&driver).await,
            next_skipping_flushed(&driver).await,
        ];
        closed.sort_by_key(|s| format!("{s:?}"));
        let mut want = vec![Seen::Closed(conn_a), Seen::Closed(conn_b)];
        want.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(closed, want);
    });
}

#[test]
fn udp_bind_receive_and_send() {
    task::block_on(async {
        let driver = puppet();
        let socket = SocketId(CORE_ID_BIT | 3);
        act(
            &driver,
            Action::BindUdp {
                socket,
                addr: "127.0.0.1:0".parse().expect("addr"),
            },
        )
        .await;
        let Seen::UdpBound(s, local) = next(&driver).await else {
            panic!("expected UdpBound");
        };
        assert_eq!(s, socket);

        let peer = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let peer_addr = peer.local_addr().expect("addr");
        within("send", 5, peer.send_to(b"ping", local))
            .await
            .expect("send");
        assert_eq!(
            next(&driver).await,
            Seen::Datagram(socket, peer_addr, b"ping".to_vec())
        );

        act(
            &driver,
            Action::SendTo {
                socket,
                to: peer_addr,
                data: b"pong".to_vec(),
            },
        )
        .await;
        let mut buf = [0u8; 16];
        let (n, from) = within("recv", 5, peer.recv_from(&mut buf))
            .await
            .expect("recv");
        assert_eq!((&buf[..n], from), (&b"pong"[..], local));

        act(&driver, Action::CloseUdp { socket }).await;
        task::sleep(Duration::from_millis(100)).await;
        let _ = peer.send_to(b"late", local).await;
        task::sleep(Duration::from_millis(100)).await;
        assert_eq!(driver.try_next_event(), None, "no input after CloseUdp");
    });
}

#[test]
fn timeout_fires_at_the_deadline() {
    task::block_on(async {
        let driver = puppet();
        let start = Instant::now();
        within(
            "command",
            5,
            driver.command(Do::WakeAt(start + Duration::from_millis(80))),
        )
        .await
        .expect("running");
        assert_eq!(next(&driver).await, Seen::Timeout);
        assert!(start.elapsed() >= Duration::from_millis(80));
    });
}

#[test]
fn stop_returns_the_machine_and_closes_connections() {
    task::block_on(async {
        let driver = puppet();
        let mut peer = connected(&driver, core_conn(2)).await;
        driver.stop().await;
        let machine = within("join", 5, driver.join()).await;
        assert!(machine.poll_timeout().is_none());
        let mut rest = Vec::new();
        within("peer sees the close", 5, peer.read_to_end(&mut rest))
            .await
            .expect("eof");
    });
}

#[test]
fn pipe_back_pressure_bounds_what_the_runtime_holds() {
    const TOTAL: usize = 32 << 20;
    task::block_on(async {
        let config = DriverConfig::default();
        let pipe_buffer = config.pipe_buffer;
        let driver = Driver::spawn(Puppet::default(), config);
        let listener = ListenerId(CORE_ID_BIT | 1);
        let (_, addr) = listen(&driver, listener).await;
        let (a, _, conn_a) = accept(&driver, addr).await;
        let (mut b, _, conn_b) = accept(&driver, addr).await;
        act(
            &driver,
            Action::Pipe {
                a: conn_a,
                b: conn_b,
            },
        )
        .await;

        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let progress = written.clone();
        let mut a_writer = a.clone();
        let pushing = task::spawn(async move {
            let chunk: Vec<u8> = (0..(64u32 << 10)).map(|i| (i % 239) as u8).collect();
            for _ in 0..TOTAL / chunk.len() {
                a_writer.write_all(&chunk).await.expect("write");
                progress.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            }
        });
        let mut last = usize::MAX;
        let started = Instant::now();
        loop {
            task::sleep(Duration::from_millis(300)).await;
            let now = written.load(std::sync::atomic::Ordering::Relaxed);
            if now == last {
                break;
            }
            assert!(now < TOTAL, "a wrote everything into a pipe nobody reads");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "a never stalled"
            );
            last = now;
        }
        let held = driver.backlog().bytes();
        assert!(
            // The chunk that crossed the cap, plus what the reader had read ahead.
            held <= pipe_buffer + 4 * READ_BUFFER,
            "the runtime holds {held} bytes for a stalled pipe"
        );

        within("b reads everything", 60, async {
            let mut buf = vec![0u8; 64 << 10];
            let mut at = 0usize;
            while at < TOTAL {
                let n = b.read(&mut buf).await.expect("read");
                assert!(n > 0, "pipe closed early");
                for (k, &byte) in buf[..n].iter().enumerate() {
                    assert_eq!(
                        byte,
                        (((at + k) % (64 << 10)) % 239) as u8,
                        "byte {}",
                        at + k
                    );
                }
                at += n;
            }
        })
        .await;
        within("a finishes", 10, pushing).await;
        drop(a);
    });
}

/// The shared puppet, told several things at once: the actions of one command
/// are executed in one drain.
#[derive(Default)]
struct Batched(Puppet);

impl Machine for Batched {
    type Command = Vec<Do<Seen>>;
    type Event = Seen;

    fn handle_input(&mut self, input: ferry_core::Input<'_>, now: Instant) {
        self.0.handle_input(input, now);
    }

    fn handle_command(&mut self, commands: Vec<Do<Seen>>, now: Instant) {
        for command in commands {
            self.0.handle_command(command, now);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.0.poll_action()
    }

    fn poll_event(&mut self) -> Option<Seen> {
        self.0.poll_event()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }
}

async fn batch(driver: &Driver<Batched>, commands: Vec<Do<Seen>>) {
    within("command", 5, driver.command(commands))
        .await
        .expect("driver running");
}

/// The events before `Pong(n)`, asked for after every earlier command.
async fn until_pong(driver: &Driver<Batched>, n: u32) -> Vec<Seen> {
    batch(driver, vec![Do::Mark(Seen::Pong(n))]).await;
    let mut before = Vec::new();
    loop {
        match next(driver).await {
            Seen::Pong(m) if m == n => return before,
            other => before.push(other),
        }
    }
}

async fn read_eof(stream: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    within(what, 5, stream.read_to_end(&mut rest))
        .await
        .expect("eof");
}

#[test]
fn closing_both_piped_sides_in_one_drain_reports_neither() {
    task::block_on(async {
        let driver = Driver::spawn(Batched::default(), DriverConfig::default());
        let listener = ListenerId(CORE_ID_BIT | 1);
        batch(
            &driver,
            vec![Do::Act(Action::Listen {
                listener,
                addr: "127.0.0.1:0".parse().expect("addr"),
            })],
        )
        .await;
        let Seen::Listening(_, addr) = next(&driver).await else {
            panic!("expected Listening");
        };
        let (mut a, _, conn_a) = accept(&driver, addr).await;
        let (mut b, _, conn_b) = accept(&driver, addr).await;
        batch(
            &driver,
            vec![Do::Act(Action::Pipe {
                a: conn_a,
                b: conn_b,
            })],
        )
        .await;
        batch(
            &driver,
            vec![
                Do::Act(Action::Close { conn: conn_a }),
                Do::Act(Action::Close { conn: conn_b }),
            ],
        )
        .await;
        let seen = until_pong(&driver, 1).await;
        assert!(
            !seen.iter().any(|s| matches!(s, Seen::Closed(..))),
            "Closed for a connection the machine closed: {seen:?}"
        );
        read_eof(&mut a, "a sees the close").await;
        read_eof(&mut b, "b sees the close").await;
    });
}

#[test]
fn piping_a_piped_connection_again_ends_the_old_pipe_too() {
    task::block_on(async {
        let driver = Driver::spawn(Batched::default(), DriverConfig::default());
        let listener = ListenerId(CORE_ID_BIT | 1);
        batch(
            &driver,
            vec![Do::Act(Action::Listen {
                listener,
                addr: "127.0.0.1:0".parse().expect("addr"),
            })],
        )
        .await;
        let Seen::Listening(_, addr) = next(&driver).await else {
            panic!("expected Listening");
        };
        let (mut a, _, conn_a) = accept(&driver, addr).await;
        let (mut b, _, conn_b) = accept(&driver, addr).await;
        let (mut c, _, conn_c) = accept(&driver, addr).await;
        let pipe = |a, b| Do::Act(Action::Pipe { a, b });
        batch(&driver, vec![pipe(conn_a, conn_b)]).await;
        batch(&driver, vec![pipe(conn_a, conn_c)]).await;
        let mut closed = until_pong(&driver, 1).await;
        closed.sort_by_key(|s| format!("{s:?}"));
        let mut want = vec![
            Seen::Closed(conn_a),
            Seen::Closed(conn_b),
            Seen::Closed(conn_c),
        ];
        want.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(closed, want, "every side, the old partner included");
        read_eof(&mut a, "a sees the close").await;
        read_eof(&mut b, "the old partner sees the close").await;
        read_eof(&mut c, "c sees the close").await;

        // The machine closing the old partner itself, in the same drain: not reported.
        let (_d, _, conn_d) = accept(&driver, addr).await;
        let (_e, _, conn_e) = accept(&driver, addr).await;
        let (_f, _, conn_f) = accept(&driver, addr).await;
        batch(&driver, vec![pipe(conn_d, conn_e)]).await;
        batch(
            &driver,
            vec![
                pipe(conn_d, conn_f),
                Do::Act(Action::Close { conn: conn_e }),
            ],
        )
        .await;
        let mut closed = until_pong(&driver, 2).await;
        closed.sort_by_key(|s| format!("{s:?}"));
        let mut want = vec![Seen::Closed(conn_d), Seen::Closed(conn_f)];
        want.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(closed, want);
    });
}

/// The events before `Pong(n)`: every earlier command was executed.
async fn sync<M: Probe>(driver: &Driver<M>, n: u32) -> Vec<Seen> {
    within("command", 5, driver.command(Do::Mark(Seen::Pong(n))))
        .await
        .expect("driver running");
    let mut before = Vec::new();
    loop {
        match next(driver).await {
            Seen::Pong(m) if m == n => return before,
            other => before.push(other),
        }
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn half_close_machine_gets_read_closed_and_replies_before_its_shutdown() {
    task::block_on(async {
        let driver = Driver::spawn(HalfClosePuppet::default(), DriverConfig::default());
        let (_, addr) = listen(&driver, ListenerId(CORE_ID_BIT | 1)).await;
        let (mut client, _, conn) = accept(&driver, addr).await;
        within("write", 5, client.write_all(b"request"))
            .await
            .expect("write");
        client.shutdown(Shutdown::Write).expect("half-close");
        assert_eq!(received(&driver, conn, 7).await, b"request");
        assert_eq!(next_skipping_flushed(&driver).await, Seen::ReadClosed(conn));

        // Still writable: the reply, then a FIN; a Send after Shutdown is dropped.
        send(&driver, conn, b"reply").await;
        act(&driver, Action::Shutdown { conn }).await;
        send(&driver, conn, b"dropped").await;
        act(
            &driver,
            Action::Shutdown {
                conn: core_conn(77),
            },
        )
        .await;
        let mut back = Vec::new();
        within("reply, then EOF", 10, client.read_to_end(&mut back))
            .await
            .expect("read");
        assert_eq!(back, b"reply");
        // The writer reports what it wrote after the peer may have read it.
        let mut flushed = 0;
        while flushed < 5 {
            match next(&driver).await {
                Seen::Flushed(c, n) if c == conn => flushed += n,
                other => panic!("a half-closed connection lives until Close: {other:?}"),
            }
        }
        let after = sync(&driver, 1).await;
        assert!(
            after.is_empty(),
            "the dropped Send is never Flushed, nothing else comes: {after:?}"
        );
        act(&driver, Action::Close { conn }).await;
        let after = sync(&driver, 2).await;
        assert!(
            !after.iter().any(|s| matches!(s, Seen::Closed(_))),
            "input after Close: {after:?}"
        );
    });
}

#[test]
fn shutdown_keeps_reading_for_a_machine_without_half_close() {
    task::block_on(async {
        let driver = puppet();
        let (_, addr) = listen(&driver, ListenerId(CORE_ID_BIT | 1)).await;
        let (mut client, _, conn) = accept(&driver, addr).await;
        send(&driver, conn, b"bye").await;
        act(&driver, Action::Shutdown { conn }).await;
        let mut back = Vec::new();
        within("bytes, then EOF", 10, client.read_to_end(&mut back))
            .await
            .expect("read");
        assert_eq!(back, b"bye");
        within("write", 5, client.write_all(b"still read"))
            .await
            .expect("write");
        assert_eq!(received(&driver, conn, 10).await, b"still read");
        drop(client);
        assert_eq!(next_skipping_flushed(&driver).await, Seen::Closed(conn));
        let after = sync(&driver, 1).await;
        assert!(!after.iter().any(|s| matches!(s, Seen::ReadClosed(_))));
    });
}

/// `from` writes `data` and half-closes; what `to` reads until EOF (late, and
/// slowly: a pause after every read, so its socket stays full).
async fn half_close_transfer(from: &TcpStream, to: &TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut writer = from.clone();
    let writing = task::spawn(async move {
        writer.write_all(&data).await?;
        writer.shutdown(Shutdown::Write)
    });
    // Let the writer get ahead (and its FIN, if the data fits in the buffers).
    task::sleep(Duration::from_millis(200)).await;
    let mut reader = to.clone();
    let reading = async {
        let mut got = Vec::new();
        let mut buf = vec![0; 64 << 10];
        loop {
            let n = reader.read(&mut buf).await.expect("read before EOF");
            if n == 0 {
                return got;
            }
            got.extend_from_slice(&buf[..n]);
            task::sleep(Duration::from_millis(1)).await;
        }
    };
    let got = within("read until EOF", 30, reading).await;
    within("write, then shutdown", 10, writing)
        .await
        .expect("write, then shutdown");
    got
}

/// The machine hears `Closed` for both sides of a pipe, and nothing else after.
async fn expect_pipe_closed<M: Probe>(driver: &Driver<M>, a: ConnId, b: ConnId, ping: u32) {
    let mut closed = Vec::new();
    while closed.len() < 2 {
        match next(driver).await {
            Seen::Closed(c) => closed.push(c),
            Seen::Flushed(..) => {}
            other => panic!("the machine saw {other:?}"),
        }
    }
    closed.sort();
    assert_eq!(closed, vec![a, b]);
    let after = sync(driver, ping).await;
    assert!(after.is_empty(), "after the pipe ended: {after:?}");
}

/// Two clients piped together; each half-closes in turn after sending `len` bytes.
async fn pipe_half_close<M: Probe>(driver: Driver<M>, len: usize) {
    let (_, addr) = listen(&driver, ListenerId(CORE_ID_BIT | 1)).await;
    let (x, _, a) = accept(&driver, addr).await;
    let (y, _, b) = accept(&driver, addr).await;
    act(&driver, Action::Pipe { a, b }).await;
    sync(&driver, 1).await;

    let request = pattern(len);
    let response: Vec<u8> = request.iter().rev().copied().collect();
    // X sends its request and half-closes; Y reads it all, then EOF.
    let got = half_close_transfer(&x, &y, request.clone()).await;
    assert!(
        got == request,
        "Y read other bytes ({} of {len})",
        got.len()
    );
    // The other direction still works after the first FIN.
    let got = half_close_transfer(&y, &x, response.clone()).await;
    assert!(
        got == response,
        "X read other bytes ({} of {len})",
        got.len()
    );
    expect_pipe_closed(&driver, a, b, 2).await;
}

#[test]
fn pipe_carries_half_close_both_ways() {
    task::block_on(async {
        let half = Driver::spawn(HalfClosePuppet::default(), DriverConfig::default());
        pipe_half_close(half, 7).await;
        pipe_half_close(puppet(), 7).await;
    });
}

#[test]
fn pipe_carries_half_close_after_large_transfers() {
    task::block_on(async {
        let half = Driver::spawn(HalfClosePuppet::default(), DriverConfig::default());
        pipe_half_close(half, 8 << 20).await;
    });
}

/// A FIN the half-closing machine heard of before the `Pipe` is carried through
/// at once, but only after the 8 MiB the machine queued for the other side
/// (more than its socket takes: the driver still holds megabytes then).
#[test]
fn pipe_carries_an_earlier_fin_after_the_bytes_still_queued() {
    const LEN: usize = 8 << 20;
    task::block_on(async {
        let driver = Driver::spawn(HalfClosePuppet::default(), DriverConfig::default());
        let (_, addr) = listen(&driver, ListenerId(CORE_ID_BIT | 1)).await;
        let (mut x, _, a) = accept(&driver, addr).await;
        let (mut y, _, b) = accept(&driver, addr).await;
        within("write", 5, x.write_all(b"request"))
            .await
            .expect("write");
        x.shutdown(Shutdown::Write).expect("half-close");
        assert_eq!(received(&driver, a, 7).await, b"request");
        assert_eq!(next_skipping_flushed(&driver).await, Seen::ReadClosed(a));
        let queued = pattern(LEN);
        send(&driver, b, &queued).await;
        act(&driver, Action::Pipe { a, b }).await;
        // Flushed for b's bytes may come before the Pipe is executed.
        let before = sync(&driver, 1).await;
        assert!(
            before.iter().all(|s| matches!(s, Seen::Flushed(..))),
            "{before:?}"
        );

        let got = half_close_transfer(&y, &x, b"response".to_vec()).await;
        assert_eq!(got, b"response");
        let mut got = Vec::new();
        within("the queued bytes, then EOF", 30, y.read_to_end(&mut got))
            .await
            .expect("read");
        assert!(got == queued, "Y read other bytes ({} of {LEN})", got.len());
        expect_pipe_closed(&driver, a, b, 2).await;
    });
}
