//! Every call specific to async-std: spawning, timers and socket types.
//!
//! The rest of the crate is written against these names, `async-channel` and the
//! `futures-io` extension traits re-exported here, so moving to smol means
//! rewriting this one module (`smol::spawn(..).detach()`, `async_io::Timer`,
//! `smol::net::*`, `futures_lite::io::*Ext`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

pub(crate) use async_std::io::{ReadExt, WriteExt};
pub use async_std::net::{TcpListener, TcpStream, UdpSocket};

/// A task that can be awaited for its output.
pub(crate) type Task<T> = async_std::task::JoinHandle<T>;

/// A pending timer.
pub(crate) type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawn a task whose output is awaited.
pub(crate) fn spawn<F>(future: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    async_std::task::spawn(future)
}

/// Spawn a task that runs to its end on its own.
pub(crate) fn spawn_detached<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    // An async-std JoinHandle detaches when dropped (smol's Task would cancel: `.detach()`).
    drop(async_std::task::spawn(future));
}

/// A timer that fires at `deadline` (at once if it has passed).
pub(crate) fn sleep_until(deadline: Instant) -> Sleep {
    Box::pin(async_std::task::sleep(
        deadline.saturating_duration_since(Instant::now()),
    ))
}

/// Wait for `duration`.
pub(crate) async fn sleep(duration: Duration) {
    async_std::task::sleep(duration).await;
}

/// Run `future` until `deadline`; `None` if the deadline came first.
pub(crate) async fn timeout_at<F: Future>(deadline: Instant, future: F) -> Option<F::Output> {
    let left = deadline.saturating_duration_since(Instant::now());
    async_std::future::timeout(left, future).await.ok()
}

/// Let other tasks run.
pub(crate) async fn yield_now() {
    async_std::task::yield_now().await;
}

/// Open a TCP connection.
pub(crate) async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    TcpStream::connect(addr).await
}

/// Bind a TCP listener.
pub(crate) async fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Bind a UDP socket.
pub(crate) async fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr).await
}
