//! Serving a protocol server machine on a listener the caller bound: the loop
//! every `serve` function of this crate shares.

use std::future::Future;
use std::io;
use std::pin::pin;

use ferry_core::Machine;

use crate::driver::{Driver, DriverConfig};
use crate::race::{Either, race};
use crate::rt::TcpListener;

/// Run `machine` on `listener` until `stop` resolves (then send it `shutdown`,
/// which closes every connection, and return `Ok`) or the listener fails (`Err`).
/// Every event goes to `log`. Returns the machine, for its final statistics.
pub(crate) async fn serve_machine<M>(
    machine: M,
    listener: TcpListener,
    shutdown: M::Command,
    stop: impl Future<Output = ()>,
    mut log: impl FnMut(&M::Event),
) -> (io::Result<()>, M)
where
    M: Machine + Send + 'static,
    M::Command: Send + 'static,
    M::Event: Send + 'static,
{
    let driver = Driver::spawn(machine, DriverConfig::default());
    let adopted = match driver.adopt_listener(listener).await {
        Ok(adopted) => adopted,
        Err(e) => {
            driver.stop().await;
            return (Err(e.into()), driver.join().await);
        }
    };
    let mut stop = pin!(stop);
    let outcome = loop {
        let woke = race(stop.as_mut(), race(adopted.ended(), driver.next_event())).await;
        match woke {
            Either::Left(()) => break Ok(()),
            Either::Right(Either::Left(Some(error))) => break Err(error),
            Either::Right(Either::Left(None)) | Either::Right(Either::Right(None)) => {
                break Err(io::Error::other("the server's driver stopped"));
            }
            Either::Right(Either::Right(Some(event))) => log(&event),
        }
    };
    // Shutdown closes every connection (their queued bytes get the linger time).
    let _ = driver.command(shutdown).await;
    driver.stop().await;
    while let Some(event) = driver.next_event().await {
        log(&event);
    }
    (outcome, driver.join().await)
}
