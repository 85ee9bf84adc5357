//! [`TlsServer`] around an echoing puppet, against an in-memory rustls client.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ferry_conformance::puppet::{Puppet, Seen};
use ferry_core::io::{Action, ConnId, Input, ListenerId, Machine};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};

use super::{TlsConfigError, TlsServer, server_config};

type Probe = Puppet<Seen>;

const LISTENER: ListenerId = ListenerId(1);

/// A self-signed certificate for 127.0.0.1, written as PEM into a directory of
/// its own (removed on drop).
struct Pem {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pem {
    fn new(name: &str) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("a self-signed certificate");
        let dir = std::env::temp_dir().join(format!("ferry-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, certified.cert.pem()).expect("write the cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write the key");
        let der = certified.cert.der().clone();
        Self {
            dir,
            cert,
            key,
            der,
        }
    }

    fn client(&self) -> ClientConnection {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("a root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").expect("a name");
        ClientConnection::new(Arc::new(config), name).expect("a client")
    }
}

impl Drop for Pem {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn peer() -> SocketAddr {
    "127.0.0.1:50000".parse().expect("an address")
}

/// The adapter around an echo puppet; ciphertext it sends is held per
/// connection until the test flushes it.
struct Server {
    machine: TlsServer<Probe>,
    now: Instant,
    seen: Vec<Seen>,
    /// Ciphertext sent on each connection, not yet handed to its client.
    wire: Vec<(ConnId, Vec<u8>)>,
    /// Ciphertext bytes sent and not yet reported `Flushed`, per connection.
    unflushed: Vec<(ConnId, usize)>,
    closed: Vec<ConnId>,
}

impl Server {
    fn new(pem: &Pem) -> Self {
        let config = server_config(&pem.cert, &pem.key).expect("a server config");
        Self {
            machine: TlsServer::new(Probe::new(true), config),
            now: Instant::now(),
            seen: Vec::new(),
            wire: Vec::new(),
            unflushed: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn input(&mut self, input: Input<'_>) {
        self.machine.handle_input(input, self.now);
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(action) = self.machine.poll_action() {
            match action {
                Action::Send { conn, data } => {
                    assert!(!self.closed.contains(&conn), "Send after Close on {conn}");
                    add(&mut self.unflushed, conn, data.len());
                    match self.wire.iter_mut().find(|(c, _)| *c == conn) {
                        Some((_, wire)) => wire.extend_from_slice(&data),
                        None => self.wire.push((conn, data)),
                    }
                }
                Action::Close { conn } => self.closed.push(conn),
                other => panic!("unexpected {other:?}"),
            }
        }
        while let Some(seen) = self.machine.poll_event() {
            self.seen.push(seen);
        }
    }

    fn accept(&mut self, conn: ConnId) {
        self.input(Input::Accepted {
            listener: LISTENER,
            conn,
            peer: peer(),
        });
    }

    fn take_wire(&mut self, conn: ConnId) -> Vec<u8> {
        self.wire
            .iter_mut()
            .find(|(c, _)| *c == conn)
            .map(|(_, wire)| std::mem::take(wire))
            .unwrap_or_default()
    }

    /// Report every sent ciphertext byte of `conn` flushed, `step` bytes at a time.
    fn flush_all(&mut self, conn: ConnId, step: usize) {
        let Some((_, left)) = self.unflushed.iter_mut().find(|(c, _)| *c == conn) else {
            return;
        };
        let mut left = std::mem::take(left);
        while left > 0 {
            let bytes = step.min(left);
            left -= bytes;
            self.input(Input::Flushed { conn, bytes });
        }
    }

    /// Plaintext bytes the puppet was told were flushed on `conn`.
    fn flushed_plaintext(&self, conn: ConnId) -> usize {
        self.seen
            .iter()
            .map(|s| match s {
                Seen::Flushed(c, n) if *c == conn => *n,
                _ => 0,
            })
            .sum()
    }

    fn received(&self, conn: ConnId) -> Vec<u8> {
        self.seen
            .iter()
            .flat_map(|s| match s {
                Seen::Received(c, data) if *c == conn => data.clone(),
                _ => Vec::new(),
            })
            .collect()
    }
}

fn add(counts: &mut Vec<(ConnId, usize)>, conn: ConnId, n: usize) {
    match counts.iter_mut().find(|(c, _)| *c == conn) {
        Some((_, count)) => *count += n,
        None => counts.push((conn, n)),
    }
}

/// Move bytes both ways between `client` and the server's `conn` until neither
/// has anything to say; return the plaintext the client read.
fn exchange(server: &mut Server, conn: ConnId, client: &mut ClientConnection) -> Vec<u8> {
    let mut plaintext = Vec::new();
    for _ in 0..64 {
        let mut to_server = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("client output");
        }
        if !to_server.is_empty() {
            server.input(Input::Received {
                conn,
                data: &to_server,
            });
        }
        let to_client = server.take_wire(conn);
        if to_server.is_empty() && to_client.is_empty() {
            return plaintext;
        }
        let mut rd = to_client.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).expect("client input");
            client
                .process_new_packets()
                .expect("valid TLS from the server");
            let mut chunk = [0; 4096];
            loop {
                match client.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => plaintext.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }
    }
    panic!("the exchange does not settle");
}

#[test]
fn handshake_completes_and_plaintext_roundtrips() {
    let pem = Pem::new("roundtrip");
    let mut server = Server::new(&pem);
    let mut client = pem.client();
    let conn = ConnId(1);
    server.accept(conn);
    assert_eq!(server.seen, vec![Seen::Accepted(LISTENER, conn)]);

    assert!(exchange(&mut server, conn, &mut client).is_empty());
    assert!(!client.is_handshaking(), "the handshake completes");

    let message = b"hello over TLS".repeat(1000); // several records
    client.writer().write_all(&message).expect("client write");
    let echoed = exchange(&mut server, conn, &mut client);
    assert_eq!(server.received(conn), message, "the puppet gets plaintext");
    assert_eq!(echoed, message, "the puppet's plaintext reaches the client");
    assert!(server.closed.is_empty());
}

#[test]
fn flushed_reports_exactly_the_plaintext_sent() {
    let pem = Pem::new("flushed");
    let mut server = Server::new(&pem);
    let mut client = pem.client();
    let conn = ConnId(1);
    server.accept(conn);
    exchange(&mut server, conn, &mut client);
    // The handshake records carry no plaintext of the puppet's.
    server.flush_all(conn, 100);
    assert_eq!(server.flushed_plaintext(conn), 0);

    let mut sent = 0;
    for (round, size) in [1, 17, 5000, 40_000, 3].into_iter().enumerate() {
        client
            .writer()
            .write_all(&vec![round as u8; size])
            .expect("client write");
        exchange(&mut server, conn, &mut client);
        sent += size;
        // Odd steps split records, so some flushes credit a share of one.
        server.flush_all(conn, 7 + round * 1001);
        assert!(server.flushed_plaintext(conn) <= sent);
        assert_eq!(server.flushed_plaintext(conn), sent, "round {round}");
    }
    let shares = server
        .seen
        .iter()
        .filter(|s| matches!(s, Seen::Flushed(..)))
        .count();
    assert!(shares > 5, "partial flushes are reported as they happen");
}

#[test]
fn garbage_instead_of_a_client_hello_closes_only_that_connection() {
    let pem = Pem::new("garbage");
    let mut server = Server::new(&pem);
    let (bad, good) = (ConnId(1), ConnId(2));
    server.accept(bad);
    server.accept(good);
    server.input(Input::Received {
        conn: bad,
        data: b"GET /v1?relayId=r&peerId=p HTTP/1.1\r\nHost: x\r\n\r\n",
    });
    assert_eq!(server.closed, vec![bad]);
    assert!(server.seen.contains(&Seen::Closed(bad)));
    assert!(
        server.received(bad).is_empty(),
        "no garbage reaches the puppet"
    );

    let mut client = pem.client();
    exchange(&mut server, good, &mut client);
    client.writer().write_all(b"still fine").expect("write");
    assert_eq!(exchange(&mut server, good, &mut client), b"still fine");
    assert_eq!(server.closed, vec![bad]);
    assert!(!server.seen.contains(&Seen::Closed(good)));
}

#[test]
fn inner_close_sends_close_notify_and_peer_close_notify_closes() {
    let pem = Pem::new("close");
    let mut server = Server::new(&pem);
    let (first, second) = (ConnId(1), ConnId(2));
    server.accept(first);
    let mut client = pem.client();
    exchange(&mut server, first, &mut client);
    server.machine.handle_command(
        ferry_conformance::puppet::Do::Act(Action::Close { conn: first }),
        server.now,
    );
    server.drain();
    assert_eq!(server.closed, vec![first]);
    let notify = server.take_wire(first);
    let mut rd = notify.as_slice();
    client.read_tls(&mut rd).expect("read");
    let state = client.process_new_packets().expect("a clean close_notify");
    assert!(state.peer_has_closed());

    server.accept(second);
    let mut client = pem.client();
    exchange(&mut server, second, &mut client);
    client.send_close_notify();
    exchange(&mut server, second, &mut client);
    assert!(server.seen.contains(&Seen::Closed(second)));
    assert_eq!(server.closed, vec![first, second]);
}

#[test]
fn plain_connections_and_other_inputs_pass_through() {
    let pem = Pem::new("plain");
    let mut server = Server::new(&pem);
    let conn = ConnId(7);
    // Never accepted: e.g. a connection the inner machine opened itself.
    server.input(Input::Received { conn, data: b"raw" });
    assert_eq!(server.take_wire(conn), b"raw", "echoed without TLS");
    server.input(Input::Flushed { conn, bytes: 3 });
    assert_eq!(server.flushed_plaintext(conn), 3);
}

#[test]
fn missing_or_bad_pem_files_are_clear_errors() {
    let pem = Pem::new("errors");
    let missing = pem.dir.join("missing.pem");
    let err = server_config(&missing, &pem.key).expect_err("no cert file");
    assert!(matches!(err, TlsConfigError::Cert { .. }), "{err}");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let err = server_config(&pem.cert, &missing).expect_err("no key file");
    assert!(matches!(err, TlsConfigError::Key { .. }), "{err}");
    // A key where the certificate should be: no certificate in it.
    let err = server_config(&pem.key, &pem.key).expect_err("not a cert");
    assert!(matches!(err, TlsConfigError::Cert { .. }), "{err}");
    let err = server_config(&pem.cert, &pem.cert).expect_err("not a key");
    assert!(matches!(err, TlsConfigError::Key { .. }), "{err}");
}
