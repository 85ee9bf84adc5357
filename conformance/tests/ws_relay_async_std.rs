//! The WebSocket relay (spec/ws-relay.md) on the async-std runtime, driven by a
//! real third-party client: Python's `websockets`.

use ferry_conformance::clients::ws_scenarios;
use ferry_conformance::served::AsyncStd;
use ferry_core::ws_relay::Config;

fn start(config: Config) -> AsyncStd {
    AsyncStd::start(move |listener, stop| {
        ferry_async_std::ws_relay::serve_until(listener, config, stop)
    })
}

/// WS-1, WS-2, WS-6, WS-7, WS-8 with an open relay.
#[test]
fn ws_python_websockets_client_in_open_rooms() {
    let relay = start(Config::default());
    ws_scenarios(&format!("ws://{}", relay.addr()), &[]);
}

/// WS-3, WS-4 (and the rest through them) with an admin secret and allowed origins.
#[test]
fn ws3_ws4_python_websockets_client_with_secret_and_origins() {
    let relay = start(Config {
        admin_secret: Some("s3cret".to_owned()),
        allowed_origins: Some(Config::parse_origins(
            "http://good.example, http://other.example",
        )),
        ..Config::default()
    });
    let base = format!("ws://{}", relay.addr());
    ws_scenarios(
        &base,
        &["--secret", "s3cret", "--origin", "http://other.example"],
    );
}
