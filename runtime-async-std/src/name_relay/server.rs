//! The relay as an async function.

use std::future::Future;
use std::io;

use ferry_core::name_relay::server::{Command, Config, Event, Server};
use tracing::{debug, info, warn};

use crate::rt::TcpListener;
use crate::serve::serve_machine;

/// Serve the name relay on `listener` until the listener fails.
///
/// The listener is adopted as-is (the caller chose its address, e.g. port 0, and
/// can read `local_addr` first). Server events are logged with `tracing`:
/// registrations and closes (with their reason) at `info`, dropped frames at `debug`.
pub async fn serve(listener: TcpListener, config: Config) -> io::Result<()> {
    serve_until(listener, config, std::future::pending()).await
}

/// [`serve`] until `stop` resolves, then close every connection and return `Ok`.
///
/// Returns `Err` if the listener fails first (connections are closed then too).
pub async fn serve_until(
    listener: TcpListener,
    config: Config,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let (outcome, server) =
        serve_machine(Server::new(config), listener, Command::Shutdown, stop, log).await;
    let stats = server.stats();
    info!(
        frames = stats.frames_delivered,
        bytes = stats.bytes_delivered,
        dropped = stats.frames_dropped,
        "name relay stopped"
    );
    outcome
}

fn log(event: &Event) {
    match event {
        Event::Listening { listener, local } => info!(%listener, %local, "listening"),
        Event::ListenFailed { listener, error } => warn!(%listener, %error, "listen failed"),
        Event::Registered { conn, name } => info!(%conn, %name, "registered"),
        Event::Closed { conn, name, reason } => {
            info!(%conn, name = name.as_deref().unwrap_or("-"), %reason, "closed");
        }
        Event::Dropped { from, dest, len } => {
            debug!(%from, %dest, len, "frame for an unknown name dropped");
        }
        other => debug!(event = ?other, "server event"),
    }
}
