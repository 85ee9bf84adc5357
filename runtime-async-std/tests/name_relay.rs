//! The name relay over real loopback sockets: `serve` with `NameClient`s and raw streams.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_std::io::prelude::*;
use async_std::net::{TcpListener, TcpStream};
use async_std::task;
use ferry_async_std::name_relay::{NameClient, serve_until};
use ferry_async_std::{Driver, DriverConfig};
use ferry_core::name_relay::server::{Command, Config, Server};

/// Every wait in these tests is bounded: a bug fails the test, never hangs it.
async fn within<T>(what: &str, secs: u64, future: impl Future<Output = T>) -> T {
    match async_std::future::timeout(Duration::from_secs(secs), future).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {secs} s: {what}"),
    }
}

/// A relay on 127.0.0.1:0 that stops when the returned sender is dropped.
async fn start_relay(
    config: Config,
) -> (
    SocketAddr,
    async_channel::Sender<()>,
    task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let relay = task::spawn(serve_until(listener, config, async move {
        let _ = stopped.recv().await;
    }));
    (addr, stop, relay)
}

/// Registration has no acknowledgement: send until `to` hears from `from`, so both
/// names are known to the relay. Later `sync` leftovers are skipped by `recv_data`.
async fn sync(from: &NameClient, to: &NameClient) {
    for _ in 0..100 {
        from.send(to.name(), b"sync").await.expect("send sync");
        if let Ok(got) = async_std::future::timeout(Duration::from_millis(50), to.recv()).await {
            let (sender, data) = got.expect("recv sync");
            assert_eq!(
                (sender.as_str(), data.as_slice()),
                (from.name(), &b"sync"[..])
            );
            return;
        }
    }
    panic!("{} never heard from {}", to.name(), from.name());
}

/// "alice" and "bob" connected to the relay at `addr`, alice known to have reached bob.
async fn alice_and_bob(addr: SocketAddr) -> (NameClient, NameClient) {
    let alice = within("connect", 5, NameClient::connect(addr, "alice"))
        .await
        .expect("alice");
    let bob = within("connect", 5, NameClient::connect(addr, "bob"))
        .await
        .expect("bob");
    within("sync", 10, sync(&alice, &bob)).await;
    (alice, bob)
}

/// The next message that is not a leftover sync message.
async fn recv_data(client: &NameClient) -> (String, Vec<u8>) {
    loop {
        let got = within("recv", 5, client.recv()).await.expect("recv");
        if got.1 != b"sync" {
            return got;
        }
    }
}

#[test]
fn two_clients_exchange_messages_both_ways() {
    task::block_on(async {
        let (addr, _stop, _relay) = start_relay(Config::default()).await;
        let (alice, bob) = alice_and_bob(addr).await;
        within("sync", 10, sync(&bob, &alice)).await;

        for i in 0..20u32 {
            let msg = format!("alice->bob #{i}");
            within("send", 5, alice.send("bob", msg.as_bytes()))
                .await
                .expect("send");
            let reply = format!("bob->alice #{i}");
            within("send", 5, bob.send("alice", reply.as_bytes()))
                .await
                .expect("send");
        }
        for i in 0..20u32 {
            let (from, data) = recv_data(&bob).await;
            assert_eq!(from, "alice");
            assert_eq!(data, format!("alice->bob #{i}").into_bytes());
            let (from, data) = recv_data(&alice).await;
            assert_eq!(from, "bob");
            assert_eq!(data, format!("bob->alice #{i}").into_bytes());
        }

        // Binary payloads, empty and large, arrive whole.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        within("send", 5, alice.send("bob", &big))
            .await
            .expect("send big");
        within("send", 5, alice.send("bob", b""))
            .await
            .expect("send empty");
        assert_eq!(recv_data(&bob).await, ("alice".to_owned(), big));
        assert_eq!(recv_data(&bob).await, ("alice".to_owned(), Vec::new()));
    });
}

#[test]
fn malformed_header_closes_only_that_connection() {
    task::block_on(async {
        let (addr, _stop, _relay) = start_relay(Config::default()).await;
        let (alice, bob) = alice_and_bob(addr).await;

        let mut raw = within("connect raw", 5, TcpStream::connect(addr))
            .await
            .expect("raw");
        within("write", 5, raw.write_all(b"mallory|bob|12x|hello"))
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let read = within(
            "the relay closes the malformed connection",
            5,
            raw.read(&mut buf),
        )
        .await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "expected a close, got {read:?}"
        );

        // The registered clients are untouched.
        within("send", 5, alice.send("bob", b"still here"))
            .await
            .expect("send");
        assert_eq!(
            recv_data(&bob).await,
            ("alice".to_owned(), b"still here".to_vec())
        );
        within("send", 5, bob.send("alice", b"me too"))
            .await
            .expect("send");
        assert_eq!(
            recv_data(&alice).await,
            ("bob".to_owned(), b"me too".to_vec())
        );
    });
}

#[test]
fn duplicate_name_is_closed_and_the_holder_keeps_it() {
    task::block_on(async {
        let (addr, _stop, _relay) = start_relay(Config::default()).await;
        let (alice, bob) = alice_and_bob(addr).await;

        let impostor = within("connect", 5, NameClient::connect(addr, "alice"))
            .await
            .expect("connects");
        let err = within("the relay closes the duplicate", 5, impostor.recv()).await;
        assert!(err.is_err(), "a duplicate name must be closed (NR-7)");
        assert!(within("send", 5, impostor.send("bob", b"x")).await.is_err());

        within("send", 5, bob.send("alice", b"for the real alice"))
            .await
            .expect("send");
        assert_eq!(
            recv_data(&alice).await,
            ("bob".to_owned(), b"for the real alice".to_vec())
        );
    });
}

#[test]
fn stopping_the_relay_closes_its_clients() {
    task::block_on(async {
        let (addr, stop, relay) = start_relay(Config::default()).await;
        let (alice, bob) = alice_and_bob(addr).await;
        drop(stop);
        within("serve_until returns", 5, relay)
            .await
            .expect("a clean stop");
        assert!(
            within("alice sees the close", 5, alice.recv())
                .await
                .is_err()
        );
        assert!(within("bob sees the close", 5, bob.recv()).await.is_err());
        // The listener is gone too.
        let refused = within("connect after stop", 5, TcpStream::connect(addr)).await;
        assert!(refused.is_err(), "the listener must be closed");
    });
}

const FRAME: usize = 64 << 10;

/// The payload of data frame `i`: its index, then a byte pattern of it.
fn payload(i: usize) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8; FRAME];
    p[..8].copy_from_slice(&(i as u64).to_le_bytes());
    p
}

/// Read one `name|len|payload` frame.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some(bar1) = buf.iter().position(|&b| b == b'|')
            && let Some(bar2) = buf[bar1 + 1..].iter().position(|&b| b == b'|')
        {
            let bar2 = bar1 + 1 + bar2;
            let len: usize = std::str::from_utf8(&buf[bar1 + 1..bar2])
                .expect("utf8 length")
                .parse()
                .expect("numeric length");
            if buf.len() >= bar2 + 1 + len {
                let name = buf[..bar1].to_vec();
                let data = buf[bar2 + 1..bar2 + 1 + len].to_vec();
                buf.drain(..bar2 + 1 + len);
                return (name, data);
            }
        }
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the relay closed the receiver");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn slow_receiver_back_pressures_sender_without_loss() {
    // Loopback buffers here hold about 10 MB before the sender stalls.
    const TOTAL: usize = 32 << 20;
    const FRAMES: usize = TOTAL / FRAME;
    task::block_on(async {
        // The relay is the Server machine on the generic driver (what `serve` runs),
        // so the test can watch how much the runtime holds queued.
        let config = Config {
            max_frame_len: 1 << 20,
            ..Config::default()
        };
        let max_queued = config.max_queued_bytes;
        let driver = Driver::spawn(Server::new(config), DriverConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        within("adopt", 5, driver.adopt_listener(listener))
            .await
            .expect("adopt");

        let mut sink = within("connect", 5, TcpStream::connect(addr))
            .await
            .expect("sink");
        within("register", 5, sink.write_all(b"sink|"))
            .await
            .expect("register");
        let mut source = within("connect", 5, TcpStream::connect(addr))
            .await
            .expect("source");
        within("register", 5, source.write_all(b"source|"))
            .await
            .expect("register");

        // Until the sink hears from the source, both names are not yet known.
        let mut buf = Vec::new();
        let mut first = [0u8; 64];
        let synced = within("sync", 10, async {
            loop {
                source.write_all(b"sink|4|sync").await.expect("write sync");
                if let Ok(read) =
                    async_std::future::timeout(Duration::from_millis(50), sink.read(&mut first))
                        .await
                {
                    break read.expect("read sync");
                }
            }
        })
        .await;
        buf.extend_from_slice(&first[..synced]);

        // The source pushes TOTAL bytes while the sink reads nothing.
        let written = Arc::new(AtomicUsize::new(0));
        let progress = written.clone();
        let mut writer = source.clone();
        let pushing = task::spawn(async move {
            for i in 0..FRAMES {
                let mut frame = format!("sink|{FRAME}|").into_bytes();
                frame.extend_from_slice(&payload(i));
                writer.write_all(&frame).await.expect("source write");
                progress.fetch_add(frame.len(), Ordering::Relaxed);
            }
        });

        // The sender stalls: its progress stops short of TOTAL.
        let started = Instant::now();
        let mut last = 0;
        let stalled_at = loop {
            task::sleep(Duration::from_millis(300)).await;
            let now = written.load(Ordering::Relaxed);
            if now == last && now > 0 {
                break now;
            }
            assert!(
                now < TOTAL,
                "the sender wrote all {TOTAL} bytes to a receiver that reads nothing"
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the sender never stalled"
            );
            last = now;
        };
        assert!(stalled_at < TOTAL);
        // And the relay holds at most its cap plus one frame for the receiver.
        let held = driver.backlog().bytes();
        assert!(
            held <= max_queued + FRAME + 64,
            "the runtime holds {held} bytes for a stalled receiver"
        );
        eprintln!("sender stalled after {stalled_at} of {TOTAL} bytes; relay holds {held} bytes");

        // The receiver reads everything, in order, nothing dropped.
        within("drain the sink", 60, async {
            let mut next = 0;
            while next < FRAMES {
                let (from, data) = read_frame(&mut sink, &mut buf).await;
                assert_eq!(from, b"source");
                if data == b"sync" {
                    continue;
                }
                assert_eq!(data.len(), FRAME, "frame {next}");
                assert!(
                    data == payload(next),
                    "frame {next} corrupted or out of order"
                );
                next += 1;
            }
        })
        .await;
        within("the sender finishes", 10, pushing).await;
        assert_eq!(
            written.load(Ordering::Relaxed),
            FRAMES * (FRAME + format!("sink|{FRAME}|").len())
        );

        let _ = driver.command(Command::Shutdown).await;
        driver.stop().await;
        let server = within("the driver stops", 5, driver.join()).await;
        // (Early sync frames may have been dropped before `sink` was registered, NR-8.)
        assert!(server.stats().frames_delivered as usize > FRAMES);
    });
}

#[test]
fn client_that_stops_receiving_stalls_its_sender_without_loss() {
    const MESSAGE: usize = 16 << 10;
    const MESSAGES: usize = 2048; // 32 MiB
    task::block_on(async {
        let (addr, _stop, _relay) = start_relay(Config::default()).await;
        let (alice, bob) = alice_and_bob(addr).await;
        let alice = Arc::new(alice);

        let sent = Arc::new(AtomicUsize::new(0));
        let (progress, sender) = (sent.clone(), alice.clone());
        let pushing = task::spawn(async move {
            for i in 0..MESSAGES {
                let mut m = vec![(i % 251) as u8; MESSAGE];
                m[..8].copy_from_slice(&(i as u64).to_le_bytes());
                sender.send("bob", &m).await.expect("send");
                progress.fetch_add(1, Ordering::Relaxed);
            }
        });

        // bob does not call recv: alice's sends stall (bob's client stops reading,
        // the relay pauses alice, alice's client stops taking sends).
        let mut last = usize::MAX;
        let started = Instant::now();
        loop {
            task::sleep(Duration::from_millis(300)).await;
            let now = sent.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            assert!(
                now < MESSAGES,
                "all sends went through to a client that receives nothing"
            );
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the sender never stalled"
            );
            last = now;
        }

        within("bob drains", 60, async {
            let mut i = 0;
            while i < MESSAGES {
                let (from, data) = recv_data(&bob).await;
                assert_eq!(from, "alice");
                assert_eq!(data.len(), MESSAGE);
                assert_eq!(
                    data[..8],
                    (i as u64).to_le_bytes(),
                    "message {i} lost or reordered"
                );
                assert!(data[8..].iter().all(|&b| b == (i % 251) as u8));
                i += 1;
            }
        })
        .await;
        within("alice finishes", 10, pushing).await;
    });
}

#[test]
fn client_errors_are_reported_not_panicked() {
    task::block_on(async {
        let closed_port = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let refused = within("connect", 10, NameClient::connect(closed_port, "alice")).await;
        assert!(refused.is_err(), "no relay there");

        let (addr, _stop, _relay) = start_relay(Config::default()).await;
        for bad in ["", "a|b", &"x".repeat(256)] {
            let err = within("connect", 5, NameClient::connect(addr, bad))
                .await
                .expect_err("invalid name");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        }
        let alice = within("connect", 5, NameClient::connect(addr, "alice"))
            .await
            .expect("alice");
        let err = within("send", 5, alice.send("b|ob", b"x"))
            .await
            .expect_err("invalid dest");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        alice.close().await;
        assert!(
            within("send after close", 5, alice.send("bob", b"x"))
                .await
                .is_err()
        );
        assert!(within("recv after close", 5, alice.recv()).await.is_err());
    });
}
