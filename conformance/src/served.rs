//! Relays served in this process for the black-box tests, stopped on drop.

use std::net::SocketAddr;
use std::thread::{self, JoinHandle};

use ferry_core::name_relay::server::Config;

use crate::scenarios::name_relay::Target;

/// The name relay config matching [`Target::TEST_SETTINGS`].
pub fn test_config() -> Config {
    let s = Target::TEST_SETTINGS;
    Config {
        registration_timeout: s.registration_timeout,
        idle_timeout: s.idle_timeout,
        max_frame_len: s.max_frame_len,
        max_queued_bytes: s.max_queued_bytes,
        max_connections: s.max_connections,
        ..Config::default()
    }
}

/// `ferry_async_std::name_relay::serve_until` on 127.0.0.1:0, on its own thread.
pub struct AsyncStdNameRelay {
    addr: SocketAddr,
    stop: async_channel::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl AsyncStdNameRelay {
    /// Start a relay with [`test_config`].
    pub fn start() -> Self {
        Self::start_with(test_config())
    }

    /// Start a relay with `config`.
    pub fn start_with(config: Config) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let thread = thread::spawn(move || {
            async_std::task::block_on(async move {
                let listener = ferry_async_std::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("report addr");
                let stop = async move {
                    let _ = stopped.recv().await;
                };
                ferry_async_std::name_relay::serve_until(listener, config, stop)
                    .await
                    .expect("serve");
            });
        });
        let addr = addr_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("relay started");
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The scenario target.
    pub fn target(&self) -> Target {
        Target::new(self.addr)
    }
}

impl Drop for AsyncStdNameRelay {
    fn drop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
