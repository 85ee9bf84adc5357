//! The mount relay (seed 000, spec/mount-relay.md) over async-std: the tracker
//! on a listener the caller bound ([`tracker()`]), a STUN responder for the
//! points ([`StunResponder`]), and the two points: [`relay`] streams a source
//! to the listeners of a mount, [`listen`] writes what one relay streams.
//!
//! ```no_run
//! use ferry_core::mount_relay::point::{Config, Role};
//! # async_std::task::block_on(async {
//! let listener = ferry_async_std::TcpListener::bind("127.0.0.1:7100").await?;
//! async_std::task::spawn(ferry_async_std::mount_relay::tracker(listener, Default::default()));
//! let stun = ferry_async_std::mount_relay::StunResponder::bind("127.0.0.1:3478".parse().unwrap()).await?;
//!
//! let tracker = "127.0.0.1:7100".parse().unwrap();
//! let mut config = Config::new(Role::Relay, "radio", tracker, vec![stun.local_addr()]);
//! config.rate = Some(16_000);
//! let song = async_std::fs::File::open("song.ogg").await?;
//! let stats = ferry_async_std::mount_relay::relay(config, song).await?;
//! println!("{} bytes streamed", stats.source_bytes_sent);
//! # Ok::<(), std::io::Error>(())
//! # }).unwrap();
//! ```

use std::future::{Future, pending};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::{Duration, Instant};

// The futures-io traits (async-std re-exports them as `Read` and `Write`).
use async_std::io::{Read as AsyncRead, Write as AsyncWrite};
use ferry_core::mount_relay::point::{Command, Config, Event, Point, Stats};
use ferry_core::mount_relay::tracker;
use ferry_core::mount_relay::wire::MAX_DATA;
use ferry_core::stun::responder;
use tracing::{debug, info, warn};

use crate::driver::{Driver, DriverConfig};
use crate::race::{Either, race};
use crate::rt::{self, ReadExt, TcpListener, WriteExt};
use crate::serve::serve_machine;

/// Source bytes read per [`Event::NeedData`]: 128 stream datagrams.
pub const CHUNK: usize = MAX_DATA * 128;

/// How long [`relay`] keeps its listeners after the last source byte went
/// out, before it stops: time for the last datagrams to leave and be heard.
pub const LINGER: Duration = Duration::from_secs(1);

// ---- the tracker ------------------------------------------------------------------

/// Serve the mount tracker on `listener` until the listener fails.
pub async fn tracker(listener: TcpListener, config: tracker::Config) -> io::Result<()> {
    tracker_until(listener, config, pending()).await
}

/// [`tracker()`] until `stop` resolves, then close every connection and return `Ok`.
pub async fn tracker_until(
    listener: TcpListener,
    config: tracker::Config,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    let machine = tracker::Tracker::new(config);
    let (outcome, _) = serve_machine(
        machine,
        listener,
        tracker::Command::Shutdown,
        stop,
        log_tracker,
    )
    .await;
    outcome
}

fn log_tracker(event: &tracker::Event) {
    use tracker::Event;
    match event {
        Event::Listening { listener, local } => info!(%listener, %local, "mount tracker listening"),
        Event::ListenFailed { listener, error } => warn!(%listener, %error, "listen failed"),
        Event::Registered { mount, addr, relay } => {
            info!(%mount, %addr, relay, "point registered");
        }
        Event::Paired { a, b } => info!(%a, %b, "points connected"),
        Event::Rejected {
            conn,
            status,
            reason,
        } => debug!(%conn, status, %reason, "request refused"),
    }
}

// ---- the STUN responder -----------------------------------------------------------

/// A STUN Binding responder ([`responder::Responder`]) on a UDP socket of its
/// own, running until [`stop`](Self::stop) or until it is dropped.
pub struct StunResponder {
    driver: Driver<responder::Responder>,
    local: SocketAddr,
}

impl StunResponder {
    /// Bind `addr` (port 0: any) and answer on it.
    pub async fn bind(addr: SocketAddr) -> io::Result<StunResponder> {
        let driver = Driver::spawn(responder::Responder::new(), DriverConfig::default());
        driver.command(responder::Command::Listen(addr)).await?;
        match driver.next_event().await {
            Some(responder::Event::Listening { local, .. }) => {
                info!(%local, "stun responder listening");
                Ok(StunResponder { driver, local })
            }
            Some(responder::Event::ListenFailed { error, .. }) => {
                driver.stop().await;
                driver.join().await;
                Err(io::Error::other(format!("cannot bind {addr}: {error}")))
            }
            None => Err(io::Error::other("the stun responder's driver stopped")),
        }
    }

    /// Where it answers.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Close the socket; what it answered.
    pub async fn stop(self) -> responder::Stats {
        let _ = self.driver.command(responder::Command::Shutdown).await;
        self.driver.stop().await;
        self.driver.join().await.stats()
    }
}

// ---- the points ---------------------------------------------------------------------

fn os_seed() -> io::Result<[u8; 32]> {
    use std::io::Read;
    let mut seed = [0; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

fn log_point(event: &Event) {
    match event {
        Event::Bound(local) => info!(%local, "point bound"),
        Event::BindFailed(error) => warn!(%error, "cannot bind"),
        Event::Mapped(public) => info!(%public, "STUN: public address"),
        Event::NatMapping {
            endpoint_independent: true,
            ..
        } => info!("NAT maps endpoint-independently"),
        Event::NatMapping {
            endpoint_independent: false,
            seen,
        } => warn!(
            ?seen,
            "NAT maps per destination (symmetric): hole punching will likely fail"
        ),
        Event::StunFailed(reason) => warn!(%reason, "STUN failed"),
        Event::Candidates(list) => info!(?list, "tracker candidates"),
        Event::TrackerFailed(reason) => warn!(%reason, "tracker request failed"),
        Event::Connected(peer) => info!(%peer, "connected"),
        Event::PeerLost { peer, reason } => warn!(%peer, %reason, "peer lost"),
        Event::SearchGaveUp { attempts, reason } => warn!(attempts, %reason, "search gave up"),
        Event::SourceDone { bytes } => info!(bytes, "source sent"),
        Event::NeedData | Event::Data(_) | Event::Stopped => {}
    }
}

/// Stop the point's driver, hand it the events still queued, and take its stats.
async fn finish(driver: Driver<Point>, on_event: &mut impl FnMut(&Event)) -> Stats {
    let _ = driver.command(Command::Stop).await;
    driver.stop().await;
    while let Some(event) = driver.next_event().await {
        log_point(&event);
        on_event(&event);
    }
    driver.join().await.stats()
}

/// Run a relay point with `config` (its `role` should be
/// [`Role::Relay`](ferry_core::mount_relay::point::Role::Relay)): register on
/// the mount, and once `min_listeners` are connected stream `source` to every
/// connected listener, read [`CHUNK`] bytes at a time as the point asks.
///
/// Returns the point's counters [`LINGER`] after the source ended and its last
/// byte was sent (a relay whose listeners never come waits for them forever:
/// see [`relay_until`]). Fails if the UDP socket cannot be bound or the source
/// cannot be read.
pub async fn relay(config: Config, source: impl AsyncRead + Unpin) -> io::Result<Stats> {
    relay_until(config, source, pending(), |_| {}).await
}

/// [`relay`] that also returns (`Ok`) as soon as `stop` resolves; every event
/// of the point goes to `on_event` too.
pub async fn relay_until(
    config: Config,
    mut source: impl AsyncRead + Unpin,
    stop: impl Future<Output = ()>,
    mut on_event: impl FnMut(&Event),
) -> io::Result<Stats> {
    let driver = Driver::spawn(Point::new(config, os_seed()?), DriverConfig::default());
    driver.command(Command::Start).await?;
    let mut stop = pin!(stop);
    let mut buf = vec![0; CHUNK];
    let mut asked = false;
    let mut done_at: Option<Instant> = None;
    let mut failure = None;
    loop {
        let (src, chunk) = (&mut source, &mut buf);
        // Reading is cancel-safe: a read that did not finish consumed nothing.
        let read = async move {
            if asked {
                src.read(chunk).await
            } else {
                pending().await
            }
        };
        let linger = async move {
            match done_at {
                Some(at) => rt::sleep_until(at + LINGER).await,
                None => pending().await,
            }
        };
        let woke = race(stop.as_mut(), race(driver.next_event(), race(read, linger))).await;
        match woke {
            Either::Left(()) => break,
            Either::Right(Either::Left(None)) => {
                failure = Some(io::Error::other("the relay's driver stopped"));
                break;
            }
            Either::Right(Either::Left(Some(event))) => {
                log_point(&event);
                on_event(&event);
                match event {
                    Event::NeedData => asked = true,
                    Event::SourceDone { .. } => done_at = Some(Instant::now()),
                    Event::BindFailed(error) => {
                        failure = Some(io::Error::other(format!("cannot bind: {error}")));
                        break;
                    }
                    Event::Stopped => break,
                    _ => {}
                }
            }
            Either::Right(Either::Right(Either::Left(read))) => match read {
                Ok(0) => {
                    asked = false;
                    driver.command(Command::EndOfSource).await?;
                }
                Ok(n) => {
                    asked = false;
                    driver.command(Command::Feed(buf[..n].to_vec())).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failure = Some(io::Error::new(
                        e.kind(),
                        format!("cannot read the source: {e}"),
                    ));
                    break;
                }
            },
            Either::Right(Either::Right(Either::Right(()))) => break,
        }
    }
    let stats = finish(driver, &mut on_event).await;
    match failure {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// Run a listener point with `config` (its `role` should be
/// [`Role::Listener`](ferry_core::mount_relay::point::Role::Listener)): find a
/// relay of the mount and write every datagram that passes its CRC check to
/// `out`, flushing after each.
///
/// With `bytes`, returns the point's counters once that many bytes are written
/// (the last datagram is cut to fit); without, it listens until the driver
/// stops (see [`listen_until`]). A search that finds no relay is logged and
/// starts again. Fails if the UDP socket cannot be bound or `out` fails.
pub async fn listen(
    config: Config,
    out: impl AsyncWrite + Unpin,
    bytes: Option<u64>,
) -> io::Result<Stats> {
    listen_until(config, out, bytes, pending(), |_| {}).await
}

/// [`listen`] that also returns (`Ok`) as soon as `stop` resolves; every event
/// of the point goes to `on_event` too (e.g. to give up after some
/// [`Event::SearchGaveUp`]: resolve `stop`).
pub async fn listen_until(
    config: Config,
    mut out: impl AsyncWrite + Unpin,
    bytes: Option<u64>,
    stop: impl Future<Output = ()>,
    mut on_event: impl FnMut(&Event),
) -> io::Result<Stats> {
    let driver = Driver::spawn(Point::new(config, os_seed()?), DriverConfig::default());
    driver.command(Command::Start).await?;
    let mut stop = pin!(stop);
    let mut written = 0u64;
    let mut failure = None;
    while bytes != Some(written) {
        let woke = race(stop.as_mut(), driver.next_event()).await;
        let event = match woke {
            Either::Left(()) => break,
            Either::Right(None) => {
                failure = Some(io::Error::other("the listener's driver stopped"));
                break;
            }
            Either::Right(Some(event)) => event,
        };
        log_point(&event);
        on_event(&event);
        match event {
            Event::Data(data) => {
                let room = bytes.map_or(u64::MAX, |limit| limit - written);
                let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                let wrote = match out.write_all(&data[..take]).await {
                    Ok(()) => out.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = wrote {
                    failure = Some(io::Error::new(
                        e.kind(),
                        format!("cannot write the output: {e}"),
                    ));
                    break;
                }
                written += take as u64;
            }
            Event::BindFailed(error) => {
                failure = Some(io::Error::other(format!("cannot bind: {error}")));
                break;
            }
            Event::Stopped => break,
            _ => {}
        }
    }
    let stats = finish(driver, &mut on_event).await;
    match failure {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}
