//! Servers run in this process for the black-box tests, stopped on drop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::thread::{self, JoinHandle};
use std::time::Duration;

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

/// The future that tells a server to stop.
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An async-std `serve_until` on 127.0.0.1:0, on its own thread.
pub struct AsyncStd {
    addr: SocketAddr,
    stop: async_channel::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl AsyncStd {
    /// Bind 127.0.0.1:0 and run `serve(listener, stop)` until dropped.
    pub fn start<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(ferry_async_std::TcpListener, Stop) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<()>>,
    {
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
                let stop: Stop = Box::pin(async move {
                    let _ = stopped.recv().await;
                });
                serve(listener, stop).await.expect("serve");
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server started");
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

    /// The name relay scenario target (for a name relay started with [`test_config`]).
    pub fn target(&self) -> Target {
        Target::new(self.addr)
    }
}

impl Drop for AsyncStd {
    fn drop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `ferry_async_std::name_relay::serve_until` with [`test_config`].
pub struct AsyncStdNameRelay;

impl AsyncStdNameRelay {
    /// Start a relay with [`test_config`].
    pub fn start() -> AsyncStd {
        Self::start_with(test_config())
    }

    /// Start a relay with `config`.
    pub fn start_with(config: Config) -> AsyncStd {
        AsyncStd::start(move |listener, stop| {
            ferry_async_std::name_relay::serve_until(listener, config, stop)
        })
    }
}
