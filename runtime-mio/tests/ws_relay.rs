//! The WebSocket relay (spec/ws-relay.md) as the `ferry ws-relay` daemon, driven
//! by a real third-party client: Python's `websockets`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ferry_conformance::clients::ws_scenarios;

/// A `ferry ws-relay` process on a loopback port, killed on drop.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["ws-relay", "--listen", "127.0.0.1:0"])
            .env_remove("ADMIN_SECRET")
            .env_remove("ALLOWED_ORIGINS")
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ferry ws-relay");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("ferry ws-relay prints where it listens");
        let addr = line
            .strip_prefix("ws-relay listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        Self { child, addr }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// WS-1, WS-2, WS-6, WS-7, WS-8 with an open relay.
#[test]
fn ws_python_websockets_client_in_open_rooms() {
    let relay = Daemon::start(&[]);
    ws_scenarios(&format!("ws://{}", relay.addr), &[]);
}

/// WS-3, WS-4 from the environment, as the seed configures them.
#[test]
fn ws3_ws4_secret_and_origins_from_the_environment() {
    let relay = Daemon::start(&[
        ("ADMIN_SECRET", "s3cret"),
        (
            "ALLOWED_ORIGINS",
            "http://good.example,http://other.example",
        ),
    ]);
    let base = format!("ws://{}", relay.addr);
    ws_scenarios(
        &base,
        &["--secret", "s3cret", "--origin", "http://good.example"],
    );
}
