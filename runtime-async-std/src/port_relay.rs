//! The port relay (seed 001, spec/port-relay.md) over async-std: the relay on a
//! listener the caller bound ([`serve`]), and a forwarder exposing a local
//! server through a relay ([`forward`]).
//!
//! ```no_run
//! use ferry_core::port_relay::{Protocol, forwarder};
//! # async_std::task::block_on(async {
//! // The relay: clients connect to 7000 and each gets a public port.
//! let listener = ferry_async_std::TcpListener::bind("127.0.0.1:7000").await?;
//! async_std::task::spawn(ferry_async_std::port_relay::serve(listener, Default::default()));
//!
//! // A forwarder exposing a local redis through it.
//! let config = forwarder::Config::new(
//!     "127.0.0.1:7000".parse().unwrap(),
//!     "127.0.0.1:6379".parse().unwrap(),
//!     Protocol::Pool,
//! );
//! ferry_async_std::port_relay::forward(config, |event| {
//!     if let forwarder::Event::PublicPort { port } = event {
//!         println!("redis is reachable on port {port}");
//!     }
//! })
//! .await
//! # }).unwrap();
//! ```

use std::future::Future;
use std::io;
use std::pin::pin;

use ferry_core::port_relay::{forwarder, server};
use tracing::{debug, info, warn};

use crate::driver::{Driver, DriverConfig};
use crate::race::{Either, race};
use crate::rt::TcpListener;
use crate::serve::serve_machine;

/// Serve the port relay on `listener` until the listener fails. Ids are
/// seeded from the OS.
pub async fn serve(listener: TcpListener, config: server::Config) -> io::Result<()> {
    serve_until(listener, config, std::future::pending()).await
}

/// [`serve`] until `stop` resolves, then close every listener and connection
/// and return `Ok`.
pub async fn serve_until(
    listener: TcpListener,
    config: server::Config,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let seed = os_seed()?;
    let machine = server::Server::new(config, seed);
    let (outcome, _) = serve_machine(machine, listener, server::Command::Shutdown, stop, log).await;
    outcome
}

/// Run a forwarder until the driver stops; every event goes to `on_event`
/// (watch for [`forwarder::Event::PublicPort`]). It reconnects on its own.
pub async fn forward(
    config: forwarder::Config,
    on_event: impl FnMut(&forwarder::Event),
) -> io::Result<()> {
    forward_until(config, std::future::pending(), on_event).await
}

/// [`forward`] until `stop` resolves, then close its connections to the relay
/// and return `Ok`. Users already spliced to the local server are closed too.
pub async fn forward_until(
    config: forwarder::Config,
    stop: impl Future<Output = ()>,
    mut on_event: impl FnMut(&forwarder::Event),
) -> io::Result<()> {
    let driver = Driver::spawn(forwarder::Forwarder::new(config), DriverConfig::default());
    if driver.command(forwarder::Command::Start).await.is_err() {
        return Err(io::Error::other("the forwarder's driver stopped"));
    }
    let mut stop = pin!(stop);
    let outcome = loop {
        match race(stop.as_mut(), driver.next_event()).await {
            Either::Left(()) => break Ok(()),
            Either::Right(None) => break Err(io::Error::other("the forwarder's driver stopped")),
            Either::Right(Some(event)) => {
                log_forwarder(&event);
                on_event(&event);
            }
        }
    };
    let _ = driver.command(forwarder::Command::Stop).await;
    driver.stop().await;
    while let Some(event) = driver.next_event().await {
        on_event(&event);
    }
    driver.join().await;
    outcome
}

fn os_seed() -> io::Result<[u8; 32]> {
    use std::io::Read;
    let mut seed = [0; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

fn log(event: &server::Event) {
    use server::Event;
    match event {
        Event::Listening { listener, local } => info!(%listener, %local, "listening"),
        Event::ListenFailed { listener, error } => warn!(%listener, %error, "listen failed"),
        Event::ClientReady {
            client,
            protocol,
            public,
        } => info!(client, %protocol, %public, "client got a public port"),
        Event::ClientGone {
            client,
            protocol,
            reason,
        } => info!(client, %protocol, %reason, "client gone"),
        Event::Refused { conn, reason } => debug!(%conn, reason, "refused"),
    }
}

fn log_forwarder(event: &forwarder::Event) {
    use forwarder::Event;
    match event {
        Event::PublicPort { port } => info!(port, "the relay lent a public port"),
        Event::Lost { reason, retry_in } => {
            warn!(%reason, ?retry_in, "relay connection lost, retrying");
        }
        Event::LocalFailed { error } => warn!(%error, "cannot reach the local server"),
        Event::EventDropped => warn!("too many users being connected at once; one left unanswered"),
    }
}
