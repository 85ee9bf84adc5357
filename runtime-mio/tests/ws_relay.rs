//! The WebSocket relay (spec/ws-relay.md) as the `ferry ws-relay` daemon, driven
//! by a real third-party client: Python's `websockets`.

use std::process::Command;

use ferry_conformance::clients::ws_scenarios;
use ferry_conformance::daemon::Daemon;

/// A `ferry ws-relay` on a loopback port; `env` as the seed configures it.
fn start(env: &[(&str, &str)]) -> Daemon {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command
        .args(["ws-relay", "--listen", "127.0.0.1:0"])
        .env_remove("ADMIN_SECRET")
        .env_remove("ALLOWED_ORIGINS")
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn");
    Daemon::spawn(command, "ws-relay")
}

/// WS-1, WS-2, WS-6, WS-7, WS-8 with an open relay.
#[test]
fn ws_python_websockets_client_in_open_rooms() {
    let relay = start(&[]);
    ws_scenarios(&format!("ws://{}", relay.addr), &[]);
}

/// WS-3, WS-4 from the environment, as the seed configures them.
#[test]
fn ws3_ws4_secret_and_origins_from_the_environment() {
    let relay = start(&[
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
