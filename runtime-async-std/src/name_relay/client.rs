//! A name relay client as an async handle.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use ferry_core::name_relay::client::{Client, ClientCommand, ClientConfig, ClientEvent};
use ferry_core::name_relay::wire;

use crate::driver::{Driver, DriverConfig};

/// Bytes queued towards the relay before [`NameClient::send`] waits.
const SEND_BACKLOG: usize = 1 << 20;
/// Messages received and not yet taken by [`NameClient::recv`] before the client
/// stops reading from the relay (which then holds back the senders, NR-12).
const RECEIVED_MESSAGES: usize = 64;

/// A registered name at a name relay.
///
/// All methods take `&self`: one task may `recv` while others `send`. Dropping the
/// client closes its connection (what was sent goes out first, within a bound).
pub struct NameClient {
    name: String,
    driver: Driver<Client>,
    /// Why the connection ended, once known.
    closed: Mutex<Option<String>>,
}

impl NameClient {
    /// Connect to the relay at `addr` and register `name` (NR-1).
    ///
    /// Resolves once connected and the name is sent: the protocol has no
    /// acknowledgement, so a name already taken (NR-7) shows as the connection
    /// closing, i.e. as an `Err` from [`recv`](Self::recv).
    pub async fn connect(addr: SocketAddr, name: &str) -> io::Result<Self> {
        Self::connect_with(addr, name, ClientConfig::default()).await
    }

    /// [`connect`](Self::connect) with explicit keep-alive and frame settings.
    pub async fn connect_with(
        addr: SocketAddr,
        name: &str,
        config: ClientConfig,
    ) -> io::Result<Self> {
        let machine = Client::new(name.as_bytes(), addr, config)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let driver = Driver::spawn(
            machine,
            DriverConfig::default().with_event_capacity(RECEIVED_MESSAGES),
        );
        match driver.next_event().await {
            Some(ClientEvent::Registered) => Ok(Self {
                name: name.to_owned(),
                driver,
                closed: Mutex::new(None),
            }),
            Some(ClientEvent::Closed { reason }) => {
                Err(io::Error::new(io::ErrorKind::ConnectionRefused, reason))
            }
            _ => Err(io::Error::other("the client stopped before registering")),
        }
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Send `data` to the client registered as `dest` (NR-4).
    ///
    /// Resolves once the frame is queued for the relay, waiting while more than
    /// 1 MiB is queued. A destination nobody holds loses the frame silently (NR-8).
    pub async fn send(&self, dest: &str, data: &[u8]) -> io::Result<()> {
        let dest = dest.as_bytes();
        if !wire::is_valid_name(dest) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "destination must be 1 to 255 bytes without '|'",
            ));
        }
        if let Some(reason) = self.closed_reason() {
            return Err(io::Error::new(io::ErrorKind::NotConnected, reason));
        }
        self.driver.backlog().wait_at_most(SEND_BACKLOG).await;
        self.driver
            .command(ClientCommand::Send {
                dest: dest.to_vec(),
                data: data.to_vec(),
            })
            .await?;
        Ok(())
    }

    /// The next message: `(sender name, payload)`. `Err` once the connection is closed.
    pub async fn recv(&self) -> io::Result<(String, Vec<u8>)> {
        loop {
            match self.driver.next_event().await {
                Some(ClientEvent::Message { from, data }) => {
                    return Ok((String::from_utf8_lossy(&from).into_owned(), data));
                }
                Some(ClientEvent::Closed { reason }) => {
                    self.set_closed(reason);
                    // Wake every other task waiting in recv.
                    self.driver.close_events();
                    return Err(self.closed_error());
                }
                Some(_) => {}
                None => return Err(self.closed_error()),
            }
        }
    }

    /// Close the connection; what was sent before goes out first (within a bound).
    /// Later `send`s fail and `recv` returns `Err`.
    pub async fn close(&self) {
        self.set_closed("closed by application".to_owned());
        let _ = self.driver.command(ClientCommand::Close).await;
    }

    fn closed_reason(&self) -> Option<String> {
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_closed(&self, reason: String) {
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(reason);
    }

    fn closed_error(&self) -> io::Error {
        let reason = self
            .closed_reason()
            .unwrap_or_else(|| "connection closed".to_owned());
        io::Error::new(io::ErrorKind::ConnectionAborted, reason)
    }
}

impl std::fmt::Debug for NameClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameClient")
            .field("name", &self.name)
            .field("closed", &self.closed_reason())
            .finish_non_exhaustive()
    }
}
