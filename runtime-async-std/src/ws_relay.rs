//! The WebSocket relay (seed 003, spec/ws-relay.md) over async-std: run the
//! relay machine ([`ferry_core::ws_relay::Server`]) on a listener the caller bound.
//!
//! ```no_run
//! # async_std::task::block_on(async {
//! let listener = ferry_async_std::TcpListener::bind("127.0.0.1:42102").await?;
//! ferry_async_std::ws_relay::serve(listener, Default::default()).await
//! # }).unwrap();
//! ```

use std::future::Future;
use std::io;

use ferry_core::ws_relay::{Command, Config, Event, Server};
use tracing::{debug, info, warn};

use crate::rt::TcpListener;
use crate::serve::serve_machine;

/// Serve the WebSocket relay on `listener` until the listener fails.
pub async fn serve(listener: TcpListener, config: Config) -> io::Result<()> {
    serve_until(listener, config, std::future::pending()).await
}

/// [`serve`] until `stop` resolves, then close every peer (code 1001) and return `Ok`.
pub async fn serve_until(
    listener: TcpListener,
    config: Config,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let (outcome, server) =
        serve_machine(Server::new(config), listener, Command::Shutdown, stop, log).await;
    let stats = server.stats();
    info!(
        messages = stats.messages_in,
        deliveries = stats.deliveries,
        targeted_dropped = stats.targeted_dropped,
        "ws relay stopped"
    );
    outcome
}

fn log(event: &Event) {
    match event {
        Event::Listening { listener, local } => info!(%listener, %local, "listening"),
        Event::ListenFailed { listener, error } => warn!(%listener, %error, "listen failed"),
        Event::Rejected {
            conn,
            status,
            reason,
        } => info!(%conn, status, %reason, "handshake refused"),
        Event::Joined {
            conn,
            relay_id,
            peer_id,
        } => info!(%conn, %relay_id, %peer_id, "joined"),
        Event::Left {
            conn,
            relay_id,
            peer_id,
            code,
            reason,
        } => {
            info!(%conn, %relay_id, %peer_id, ?code, %reason, "left");
        }
        Event::Dropped { conn, why } => debug!(%conn, %why, "message not relayed"),
        other => debug!(event = ?other, "server event"),
    }
}
