//! The name relay scenarios (spec/name-relay.md) against the `ferry` daemon:
//! a real `ferry name-relay` process on a loopback port, spoken to over TCP.

use std::process::Command;

use ferry_conformance::daemon::Daemon;
use ferry_conformance::scenarios::name_relay::Target;

/// A `ferry name-relay` process started with the scenarios' settings.
struct Relay(Daemon);

impl Relay {
    fn start() -> Self {
        let s = Target::TEST_SETTINGS;
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        command
            .args(["name-relay", "--listen", "127.0.0.1:0"])
            .args([
                "--registration-timeout",
                &s.registration_timeout.as_secs_f64().to_string(),
            ])
            .args(["--idle-timeout", &s.idle_timeout.as_secs_f64().to_string()])
            .args(["--max-frame-len", &s.max_frame_len.to_string()])
            .args(["--max-queued-bytes", &s.max_queued_bytes.to_string()])
            .args(["--max-connections", &s.max_connections.to_string()])
            .env("RUST_LOG", "warn");
        Self(Daemon::spawn(command, "name-relay"))
    }

    fn target(&self) -> Target {
        Target::new(self.0.addr)
    }
}

ferry_conformance::name_relay_conformance!(Relay::start());
