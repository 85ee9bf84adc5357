//! The VPN server (spec/vpn.md, VPN-V…) over real loopback sockets: the core's
//! machine on the mio driver, and the `ferry vpn server` binary, talked to by a
//! small blocking WebSocket client written here on `std::net::TcpStream`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_conformance::daemon::Daemon;
use ferry_core::codec::Parsed;
use ferry_core::codec::http1::{HeadLimits, Request, Version, parse_response_head};
use ferry_core::codec::websocket::{CloseFrame, Message, MessageReader, Role, encode_message};
use ferry_core::vpn::crypto::{
    auth_hash, auth_hash_matches, expttun_hash, server_auth_hash, server_expttun_hash,
};
use ferry_core::vpn::server::{Command as ServerCommand, Config, Event, Server};
use ferry_core::vpn::wire::{CidrText, Ipv4Packet, ServerMessage};
use ferry_core::vpn::{WallClock, parse_cidr};
use ferry_mio::Handle;

const PASSWORD: &str = "correct horse";

fn unix_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("in a test")
        .as_secs() as i64
}

/// A blocking WebSocket client node: masked frames out, frames in.
struct Node {
    stream: TcpStream,
    reader: MessageReader,
    buffered: Vec<u8>,
    mask: u32,
}

impl Node {
    fn connect(server: SocketAddr) -> Node {
        let mut stream = TcpStream::connect(server).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("in a test");
        let mut request = Vec::new();
        Request::get("/", Version::Http11)
            .with_header("Host", "vpn.test")
            .with_header("Upgrade", "websocket")
            .with_header("Connection", "Upgrade")
            .with_header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .with_header("Sec-WebSocket-Version", "13")
            .encode(&mut request);
        stream.write_all(&request).expect("in a test");
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).expect("the 101 answer");
            assert!(n > 0, "closed during the handshake");
            head.extend_from_slice(&chunk[..n]);
            if let Parsed::Done { value, consumed } =
                parse_response_head(&head, &HeadLimits::default()).expect("in a test")
            {
                assert_eq!(value.status, 101);
                return Node {
                    stream,
                    reader: MessageReader::new(Role::Client, 1 << 20),
                    buffered: head[consumed..].to_vec(),
                    mask: 0x1234_5678,
                };
            }
        }
    }

    fn send(&mut self, message: &ServerMessage<'_>) {
        let mut payload = Vec::new();
        message.encode(&mut payload);
        self.send_raw(&Message::Binary(payload));
    }

    fn send_raw(&mut self, message: &Message) {
        self.mask = self.mask.wrapping_mul(2_654_435_761).wrapping_add(1);
        let mut frame = Vec::new();
        encode_message(message, Some(self.mask.to_be_bytes()), &mut frame);
        self.stream.write_all(&frame).expect("in a test");
    }

    /// The next WebSocket message, or `None` once the server closed the TCP stream.
    fn next(&mut self) -> Option<Message> {
        loop {
            let read = self.reader.read(&self.buffered).expect("valid frames");
            self.buffered.drain(..read.consumed);
            if let Some(message) = read.message {
                return Some(message);
            }
            let mut chunk = [0u8; 65_536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn next_binary(&mut self) -> Vec<u8> {
        match self.next() {
            Some(Message::Binary(bytes)) => bytes,
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    /// The close frame the server sends.
    fn close_frame(&mut self) -> CloseFrame {
        loop {
            match self.next() {
                Some(Message::Close(Some(frame))) => return frame,
                Some(Message::Close(None)) | None => panic!("closed without a code"),
                Some(_) => {}
            }
        }
    }

    fn auth(&mut self, ip: Ipv4Addr, timestamp: i64, password: &str) {
        self.send(&ServerMessage::Auth {
            ip,
            timestamp,
            hash: auth_hash(password.as_bytes(), ip, timestamp),
        });
    }

    /// AUTH as `ip` and check the server's echo and proof.
    fn login(&mut self, ip: Ipv4Addr) {
        let sent = unix_secs();
        self.auth(ip, sent, PASSWORD);
        let echo = self.next_binary();
        match ServerMessage::parse(&echo).expect("in a test") {
            ServerMessage::Auth {
                ip: echoed,
                timestamp,
                hash,
            } => {
                assert_eq!(echoed, ip);
                assert!((timestamp - unix_secs()).abs() <= 2);
                assert_eq!(
                    hash,
                    server_auth_hash(PASSWORD.as_bytes(), ip, sent, timestamp)
                );
                // The echo is no client AUTH: it cannot be replayed as one.
                assert!(!auth_hash_matches(
                    PASSWORD.as_bytes(),
                    ip,
                    timestamp,
                    &hash
                ));
            }
            other => panic!("{other:?}"),
        }
    }
}

/// The core's server on the mio driver, on a loopback port.
struct Running {
    handle: Handle<ServerCommand>,
    addr: SocketAddr,
}

impl Running {
    fn start() -> Running {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("in a test")
            .as_millis() as i64;
        let config = Config::new(
            "127.0.0.1:0".parse().expect("in a test"),
            PASSWORD,
            "10.0.0.0/24".parse().expect("in a test"),
            WallClock::new(Instant::now(), unix_ms),
        );
        let (tx, rx) = channel();
        let handle = ferry_mio::spawn(Server::new(config).expect("in a test"), move |event| {
            let _ = tx.send(event);
        })
        .expect("in a test");
        // The first event is the listener's.
        let addr = match rx.recv_timeout(Duration::from_secs(10)).expect("listening") {
            Event::Listening { addr } => addr,
            other => panic!("{other:?}"),
        };
        Running { handle, addr }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.handle.send(ServerCommand::Shutdown);
        self.handle.shutdown();
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, body: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + body.len()).expect("in a test");
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(body);
    p
}

/// VPN-V5, VPN-V7: two nodes log in; a FORWARD from one arrives byte for byte.
#[test]
fn vpn_v7_forward_between_two_clients_over_loopback() {
    let server = Running::start();
    let mut a = Node::connect(server.addr);
    let mut b = Node::connect(server.addr);
    a.login(ip(1));
    b.login(ip(2));
    // A big packet crosses several TCP reads.
    let body: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let packet = ipv4(ip(1), ip(2), &body);
    a.send(&ServerMessage::Forward(
        Ipv4Packet::new_checked(&packet).expect("in a test"),
    ));
    let got = b.next_binary();
    assert_eq!(got[0], 1);
    assert_eq!(&got[1..], &packet[..]);
    // And back, with ping/pong on the way.
    b.send_raw(&Message::Ping(b"hi".to_vec()));
    assert_eq!(b.next(), Some(Message::Pong(b"hi".to_vec())));
    let back = ipv4(ip(2), ip(1), b"reply");
    b.send(&ServerMessage::Forward(
        Ipv4Packet::new_checked(&back).expect("in a test"),
    ));
    assert_eq!(&a.next_binary()[1..], &back[..]);
}

/// VPN-V5: the same AUTH bytes on a new connection are refused.
#[test]
fn vpn_v5_replayed_auth_refused_over_loopback() {
    let server = Running::start();
    let ts = unix_secs();
    let mut first = Node::connect(server.addr);
    first.auth(ip(7), ts, PASSWORD);
    assert_eq!(first.next_binary()[0], 0);
    drop(first);
    // The server may take a moment to see the first one go; the replay is
    // refused whatever it knows by then.
    let mut second = Node::connect(server.addr);
    second.auth(ip(7), ts, PASSWORD);
    let close = second.close_frame();
    assert_eq!(close.code, 1008);
    assert!(
        close.reason == "replayed auth" || close.reason == "address 10.0.0.7 in use",
        "{close:?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let mut third = Node::connect(server.addr);
    third.auth(ip(7), ts, PASSWORD);
    assert_eq!(
        third.close_frame(),
        CloseFrame {
            code: 1008,
            reason: "replayed auth".into()
        }
    );
}

/// VPN-V5: a second node claiming a held address is closed; the first stays.
#[test]
fn vpn_v5_duplicate_address_refused_over_loopback() {
    let server = Running::start();
    let mut a = Node::connect(server.addr);
    let mut b = Node::connect(server.addr);
    let mut c = Node::connect(server.addr);
    a.login(ip(3));
    c.login(ip(4));
    std::thread::sleep(Duration::from_millis(1100));
    b.auth(ip(3), unix_secs(), PASSWORD);
    assert_eq!(
        b.close_frame(),
        CloseFrame {
            code: 1008,
            reason: "address 10.0.0.3 in use".into()
        }
    );
    // The first still owns it: traffic reaches it.
    let packet = ipv4(ip(4), ip(3), b"still there");
    c.send(&ServerMessage::Forward(
        Ipv4Packet::new_checked(&packet).expect("in a test"),
    ));
    assert_eq!(&a.next_binary()[1..], &packet[..]);
}

/// VPN-V4: EXPTTUN grants the lowest free address, proven with the password.
#[test]
fn vpn_v4_expttun_assignment_over_loopback() {
    let server = Running::start();
    let mut a = Node::connect(server.addr);
    a.login(ip(1));
    let mut b = Node::connect(server.addr);
    let ts = unix_secs();
    let cidr = CidrText::new("").expect("in a test");
    b.send(&ServerMessage::ExpectedTun {
        timestamp: ts,
        cidr,
        hash: expttun_hash(PASSWORD.as_bytes(), cidr.field(), ts),
    });
    let grant = b.next_binary();
    let addr = match ServerMessage::parse(&grant).expect("in a test") {
        ServerMessage::ExpectedTun {
            timestamp,
            cidr,
            hash,
        } => {
            assert_eq!(
                hash,
                server_expttun_hash(PASSWORD.as_bytes(), cidr.field(), ts, timestamp)
            );
            assert_eq!(cidr.as_str(), "10.0.0.2/24");
            parse_cidr(cidr.as_str()).expect("in a test").0
        }
        other => panic!("{other:?}"),
    };
    b.login(addr);
}

/// VPN-V5: a wrong password gets a close frame 1008.
#[test]
fn vpn_v5_wrong_password_closed_1008_over_loopback() {
    let server = Running::start();
    let mut node = Node::connect(server.addr);
    node.auth(ip(9), unix_secs(), "wrong");
    assert_eq!(
        node.close_frame(),
        CloseFrame {
            code: 1008,
            reason: "bad password".into()
        }
    );
    assert_eq!(node.next(), None);
}

/// The `ferry vpn server` binary: announces its address, serves AUTH and FORWARD,
/// refuses a wrong password.
#[test]
fn vpn_server_binary_serves_clients() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args([
            "vpn",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--network",
            "10.0.0.0/24",
        ])
        .env("FERRY_VPN_PASSWORD", PASSWORD)
        .env("RUST_LOG", "warn");
    let daemon = Daemon::spawn(command, "vpn-server");
    let mut a = Node::connect(daemon.addr);
    let mut b = Node::connect(daemon.addr);
    a.login(ip(10));
    b.login(ip(11));
    let packet = ipv4(ip(11), ip(10), b"through the binary");
    b.send(&ServerMessage::Forward(
        Ipv4Packet::new_checked(&packet).expect("in a test"),
    ));
    assert_eq!(&a.next_binary()[1..], &packet[..]);
    let mut wrong = Node::connect(daemon.addr);
    wrong.auth(ip(12), unix_secs(), "not it");
    assert_eq!(wrong.close_frame().code, 1008);
}

/// `ferry vpn server` without a password, or with two, exits 1 with a clear error.
#[test]
fn vpn_server_binary_needs_exactly_one_password() {
    for (extra, env, needle) in [
        (&[][..], None, "no password"),
        (
            &["--password", "a"][..],
            Some("b"),
            "more than one password",
        ),
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .args([
                "vpn",
                "server",
                "--listen",
                "127.0.0.1:0",
                "--network",
                "10.0.0.0/24",
            ])
            .args(extra)
            .env_remove("FERRY_VPN_PASSWORD")
            .stdin(Stdio::null());
        if let Some(env) = env {
            command.env("FERRY_VPN_PASSWORD", env);
        }
        let output = command.output().expect("in a test");
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{stderr}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["vpn", "server", "--help"])
        .output()
        .expect("in a test");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Example:") && text.contains("--password-file"),
        "{text}"
    );
}
