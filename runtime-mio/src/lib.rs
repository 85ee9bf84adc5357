//! # ferry-mio: the mio runtime of ferry
//!
//! One generic [`driver`] executes the IO vocabulary of [`ferry_core::io`] for
//! any [`Machine`](ferry_core::io::Machine) over mio: listeners, TCP streams,
//! pipes, UDP sockets and timers, on one event-loop thread. The `ferry` binary
//! of this crate runs the protocol servers and clients on it. [`tls::TlsServer`]
//! wraps any machine to serve TLS on the connections it accepts (rustls).
//! [`tun::Tun`] opens a Linux TUN device; [`Driver::attach_tun`] (or
//! [`spawn_with_tun`]) feeds its packets to the machine as `TunPacket` and
//! writes its `WriteTun`s.
//!
//! ```no_run
//! use ferry_core::name_relay::server::{Command, Config, Event, Server};
//!
//! let (tx, rx) = std::sync::mpsc::channel();
//! let relay = ferry_mio::spawn(Server::new(Config::default()), move |event| {
//!     if let Event::Listening { local, .. } = event {
//!         let _ = tx.send(local);
//!     }
//! })?;
//! relay.send(Command::Listen("127.0.0.1:0".parse().expect("an address")))?;
//! let local = rx.recv().expect("the relay listens");
//! println!("relay on {local}");
//! relay.shutdown();
//! relay.join()?;
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod driver;
pub mod tls;
#[cfg(target_os = "linux")]
pub mod tun;

#[cfg(target_os = "linux")]
pub use driver::spawn_with_tun;
pub use driver::{Driver, Handle, Remote, run, spawn};
