//! A name relay and two clients in one process.
//!
//! ```text
//! cargo run -p ferry-async-std --example name_relay
//! ```
//!
//! Binds 127.0.0.1:0, serves the relay, registers `alice` and `bob`, sends one
//! message each way, prints them and stops the relay.

use std::io;
use std::time::Duration;

use async_std::io::timeout;
use ferry_async_std::TcpListener;
use ferry_async_std::name_relay::{NameClient, serve_until};
use ferry_core::name_relay::server::Config;

#[allow(clippy::print_stdout, reason = "an example: its output is the point")]
fn main() -> io::Result<()> {
    async_std::task::block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        println!("relay listening on {addr}");

        let (stop, stopped) = async_channel::bounded::<()>(1);
        let relay = async_std::task::spawn(serve_until(listener, Config::default(), async move {
            let _ = stopped.recv().await;
        }));

        let alice = NameClient::connect(addr, "alice").await?;
        let bob = NameClient::connect(addr, "bob").await?;
        // Registration has no acknowledgement, and a frame for a name the relay
        // does not know yet is dropped (NR-8): resend until bob hears it.
        let (from, data) = 'delivered: {
            for _ in 0..50 {
                alice.send("bob", b"hello bob, this is alice").await?;
                if let Ok(got) = timeout(Duration::from_millis(100), bob.recv()).await {
                    break 'delivered got;
                }
            }
            return Err(io::Error::other("bob never heard from alice"));
        };
        println!("bob got from {from}: {}", String::from_utf8_lossy(&data));

        bob.send("alice", b"hi alice").await?;
        let (from, data) = timeout(Duration::from_secs(5), alice.recv()).await?;
        println!("alice got from {from}: {}", String::from_utf8_lossy(&data));

        alice.close().await;
        bob.close().await;
        drop(stop);
        relay.await
    })
}
