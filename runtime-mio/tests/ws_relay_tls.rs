//! WS-16: `ferry ws-relay --tls-cert --tls-key` serves `wss://`, driven by
//! Python's `websockets` verifying a self-signed certificate made for the test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_conformance::clients::ws_scenarios;
use ferry_conformance::daemon::Daemon;

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files in a
/// temp directory of their own (removed on drop).
struct Pem {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pem {
    fn new(name: &str) -> Self {
        let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("a self-signed certificate");
        let dir =
            std::env::temp_dir().join(format!("ferry-ws-relay-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, certified.cert.pem()).expect("write the cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write the key");
        Self { dir, cert, key }
    }
}

impl Drop for Pem {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ferry(pem: &Pem, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(["ws-relay", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&pem.cert)
        .arg("--tls-key")
        .arg(&pem.key)
        .env_remove("ADMIN_SECRET")
        .env_remove("ALLOWED_ORIGINS")
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    command
}

/// A `ferry ws-relay` with TLS on a loopback port.
fn start(pem: &Pem, env: &[(&str, &str)]) -> Daemon {
    Daemon::spawn(ferry(pem, env), "ws-relay")
}

/// WS-16 with WS-1, WS-2, WS-6, WS-7, WS-8 in open rooms, over wss://.
#[test]
fn ws16_python_websockets_over_wss() {
    let pem = Pem::new("open");
    let relay = start(&pem, &[]);
    let cafile = pem.cert.to_str().expect("a UTF-8 temp path");
    ws_scenarios(
        &format!("wss://127.0.0.1:{}", relay.addr.port()),
        &["--cafile", cafile],
    );
}

/// WS-16 with WS-3, WS-4: the secret and origin checks behind TLS.
#[test]
fn ws16_secret_and_origins_over_wss() {
    let pem = Pem::new("secret");
    let relay = start(
        &pem,
        &[
            ("ADMIN_SECRET", "s3cret"),
            ("ALLOWED_ORIGINS", "http://good.example"),
        ],
    );
    let cafile = pem.cert.to_str().expect("a UTF-8 temp path");
    ws_scenarios(
        &format!("wss://127.0.0.1:{}", relay.addr.port()),
        &[
            "--cafile",
            cafile,
            "--secret",
            "s3cret",
            "--origin",
            "http://good.example",
        ],
    );
}

/// A plain ws:// upgrade on the TLS port gets no HTTP answer, only a TLS
/// alert and a close.
#[test]
fn ws16_plain_ws_on_the_tls_port_is_not_upgraded() {
    let pem = Pem::new("plain");
    let relay = start(&pem, &[]);
    let mut stream = TcpStream::connect(relay.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(
            b"GET /v1?relayId=r&peerId=p HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("write");
    let mut answer = Vec::new();
    // The relay closes the connection: read to the end (or a reset).
    let _ = stream.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "a plain request got an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // The daemon serves others afterwards.
    let cafile = pem.cert.to_str().expect("a UTF-8 temp path");
    ws_scenarios(
        &format!("wss://127.0.0.1:{}", relay.addr.port()),
        &["--cafile", cafile],
    );
}

/// A missing key file stops the daemon with an error naming the file; a
/// certificate without a key is a usage error.
#[test]
fn ws16_bad_tls_flags_are_clear_errors() {
    let pem = Pem::new("flags");
    std::fs::remove_file(&pem.key).expect("remove the key");
    let out = ferry(&pem, &[]).output().expect("run ferry");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("key.pem") && stderr.contains("TLS key"),
        "{stderr}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["ws-relay", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&pem.cert)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}
