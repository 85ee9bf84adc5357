//! The name relay scenarios (spec/name-relay.md) against the `ferry` daemon:
//! a real `ferry name-relay` process on a loopback port, spoken to over TCP.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ferry_conformance::scenarios::name_relay::Target;

/// A `ferry name-relay` process started with the scenarios' settings, killed on drop.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start() -> Self {
        let s = Target::TEST_SETTINGS;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["name-relay", "--listen", "127.0.0.1:0"])
            .args([
                "--registration-timeout",
                &s.registration_timeout.as_secs_f64().to_string(),
            ])
            .args(["--idle-timeout", &s.idle_timeout.as_secs_f64().to_string()])
            .args(["--max-frame-len", &s.max_frame_len.to_string()])
            .args(["--max-queued-bytes", &s.max_queued_bytes.to_string()])
            .args(["--max-connections", &s.max_connections.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ferry name-relay");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(15))
            .expect("ferry name-relay prints where it listens");
        let addr = line
            .strip_prefix("name-relay listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("an address");
        Self { child, addr }
    }

    fn target(&self) -> Target {
        Target::new(self.addr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

ferry_conformance::name_relay_conformance!(Daemon::start());
