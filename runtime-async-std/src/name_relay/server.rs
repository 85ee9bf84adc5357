//! The relay as an async function.

use std::future::Future;
use std::io;
use std::pin::pin;

use ferry_core::name_relay::server::{Command, Config, Event, Server};
use tracing::{debug, info, warn};

use crate::driver::{Driver, DriverConfig};
use crate::race::{Either, race};
use crate::rt::TcpListener;

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
    let driver = Driver::spawn(Server::new(config), DriverConfig::default());
    let adopted = driver.adopt_listener(listener).await?;
    let mut stop = pin!(stop);
    let outcome = loop {
        let woke = race(stop.as_mut(), race(adopted.ended(), driver.next_event())).await;
        match woke {
            Either::Left(()) => break Ok(()),
            Either::Right(Either::Left(Some(error))) => break Err(error),
            Either::Right(Either::Left(None)) | Either::Right(Either::Right(None)) => {
                break Err(io::Error::other("the relay's driver stopped"));
            }
            Either::Right(Either::Right(Some(event))) => log(&event),
        }
    };
    // Shutdown closes every connection (their queued bytes get the linger time).
    let _ = driver.command(Command::Shutdown).await;
    driver.stop().await;
    while let Some(event) = driver.next_event().await {
        log(&event);
    }
    let server = driver.join().await;
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
