//! The port relay served by the async-std runtime
//! (`ferry_async_std::port_relay::serve_until`), with the relay clients a user
//! of the seed would write: a multiplex client built on the independent
//! `yamux` crate (it is the yamux *server*, as the seed says), and pool and
//! event clients speaking the seed's text handshake by hand. Users connect to
//! the public port over real loopback TCP.

use std::time::Duration;

use async_std::io::{BufReader, prelude::BufReadExt};
use async_std::net::TcpStream;
use async_std::task;
use ferry_core::port_relay::{Protocol, forwarder, server};
use futures::{AsyncReadExt, AsyncWriteExt};

#[path = "common/yamux_crate.rs"]
mod yamux_crate;
use yamux_crate::{crate_echoes, theirs};

const LIMIT: Duration = Duration::from_secs(20);

fn run(test: impl Future<Output = ()>) {
    task::block_on(async {
        async_std::future::timeout(LIMIT, test)
            .await
            .expect("the test finished in time");
    });
}

/// A relay on an OS-chosen loopback port; stops when the returned sender drops.
async fn relay() -> (std::net::SocketAddr, async_channel::Sender<()>) {
    let listener = ferry_async_std::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    task::spawn(async move {
        let stop = async move {
            let _ = stop_rx.recv().await;
        };
        ferry_async_std::port_relay::serve_until(listener, server::Config::default(), stop)
            .await
            .expect("the relay ran");
    });
    (addr, stop_tx)
}

async fn line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("a line");
    assert!(line.ends_with('\n'), "{line:?}");
    line.trim_end().to_owned()
}

/// A user: send `data`, half-close, read everything back.
async fn user_round_trip(port: u16, data: Vec<u8>) -> Vec<u8> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut r, mut w) = (stream.clone(), stream.clone());
    let write = async move {
        w.write_all(&data).await.expect("user write");
        stream.shutdown(std::net::Shutdown::Write).expect("FIN");
    };
    let read = async move {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.expect("user read");
        back
    };
    futures::future::join(write, read).await.1
}

/// Echo everything back, then FIN (the relay client's side of a user).
async fn echo(c: TcpStream) {
    let (mut r, mut w) = (c.clone(), c.clone());
    futures::io::copy(&mut r, &mut w).await.expect("echo");
    c.shutdown(std::net::Shutdown::Write).expect("FIN");
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

#[test]
fn pr3_pr4_a_yamux_crate_client_serves_users_over_streams_the_relay_opens() {
    run(async {
        let (relay, _stop) = relay().await;
        let control = TcpStream::connect(relay).await.expect("connect");
        control
            .clone()
            .write_all(b"multiplex\n")
            .await
            .expect("hello");
        // Read the port byte by byte: nothing of the yamux session may be consumed.
        let mut port = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            (&control).read_exact(&mut byte).await.expect("port line");
            if byte[0] == b'\n' {
                break;
            }
            port.push(byte[0]);
        }
        let port: u16 = String::from_utf8(port)
            .expect("ascii")
            .parse()
            .expect("a port");
        let client = theirs(control, yamux::Mode::Server);
        crate_echoes(&client);
        let users: Vec<_> = (0..4u8)
            .map(|i| {
                let data = pattern(i, 700_000 + usize::from(i));
                task::spawn(async move { (user_round_trip(port, data.clone()).await, data) })
            })
            .collect();
        for user in users {
            let (back, sent) = user.await;
            assert!(
                back == sent,
                "{} of {} bytes echoed",
                back.len(),
                sent.len()
            );
        }
    });
}

#[test]
fn pr6_pr8_a_hand_written_pool_client_serves_users() {
    run(async {
        let (relay, _stop) = relay().await;
        let first = TcpStream::connect(relay).await.expect("connect");
        first
            .clone()
            .write_all(b"pool\nnew\n")
            .await
            .expect("hello");
        let mut reader = BufReader::new(first.clone());
        let port: u16 = line(&mut reader).await.parse().expect("port");
        let id = line(&mut reader).await;
        assert_eq!(id.len(), 32);
        let mut pooled = vec![first];
        for _ in 0..2 {
            let c = TcpStream::connect(relay).await.expect("join");
            c.clone()
                .write_all(format!("pool\n{id}\n").as_bytes())
                .await
                .expect("join");
            pooled.push(c);
        }
        // Each pooled connection echoes the one user it gets.
        for c in pooled {
            task::spawn(echo(c));
        }
        for i in 0..3u8 {
            let data = pattern(i, 300_000);
            assert!(user_round_trip(port, data.clone()).await == data);
        }
    });
}

#[test]
fn pr9_pr10_a_hand_written_event_client_serves_users() {
    run(async {
        let (relay, _stop) = relay().await;
        let control = TcpStream::connect(relay).await.expect("connect");
        control
            .clone()
            .write_all(b"event\nnew\n")
            .await
            .expect("hello");
        let mut reader = BufReader::new(control.clone());
        let port: u16 = line(&mut reader).await.parse().expect("port");
        task::spawn(async move {
            loop {
                let id = line(&mut reader).await;
                let c = TcpStream::connect(relay).await.expect("answer");
                c.clone()
                    .write_all(format!("event\n{id}\n").as_bytes())
                    .await
                    .expect("answer");
                task::spawn(echo(c));
            }
        });
        let users: Vec<_> = (0..3u8)
            .map(|i| {
                let data = pattern(i, 200_000);
                task::spawn(async move { (user_round_trip(port, data.clone()).await, data) })
            })
            .collect();
        for user in users {
            let (back, sent) = user.await;
            assert!(back == sent);
        }
        drop(control);
    });
}

#[test]
fn pr14_the_async_std_forwarder_exposes_a_local_server_in_each_protocol() {
    run(async {
        let (relay, _stop) = relay().await;
        // The local server: echo, then FIN.
        let local = async_std::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let local_addr = local.local_addr().expect("addr");
        task::spawn(async move {
            loop {
                let (c, _) = local.accept().await.expect("accept");
                task::spawn(echo(c));
            }
        });
        for protocol in [Protocol::Multiplex, Protocol::Pool, Protocol::Event] {
            let (port_tx, port_rx) = async_channel::unbounded();
            let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
            let config = forwarder::Config::new(relay, local_addr, protocol);
            let forwarding = task::spawn(async move {
                let stop = async move {
                    let _ = stop_rx.recv().await;
                };
                ferry_async_std::port_relay::forward_until(config, stop, |event| {
                    if let forwarder::Event::PublicPort { port } = event {
                        let _ = port_tx.try_send(*port);
                    }
                })
                .await
            });
            let port = port_rx.recv().await.expect("a public port");
            for i in 0..3u8 {
                let data = pattern(i, 400_000);
                assert!(
                    user_round_trip(port, data.clone()).await == data,
                    "{protocol}"
                );
            }
            drop(stop_tx);
            forwarding.await.expect("the forwarder stopped cleanly");
        }
    });
}
