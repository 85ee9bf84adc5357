//! The mount relay (seed 000) on the async-std runtime, over real loopback
//! sockets: `ferry_async_std::mount_relay`'s tracker, its STUN responder, a
//! relay point and a listener point stream 1 MiB at 8 MB/s, byte for byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_std::task;
use ferry_async_std::mount_relay;
use ferry_core::mount_relay::point::{Config, Event, Role};

const LIMIT: Duration = Duration::from_secs(30);

fn run(test: impl Future<Output = ()>) {
    task::block_on(async {
        async_std::future::timeout(LIMIT, test)
            .await
            .expect("the test finished in time");
    });
}

/// Bytes no two runs share a pattern in (xorshift, seeded by the clock).
fn noise(len: usize) -> Vec<u8> {
    let mut x = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1),
    ) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn point(role: Role, tracker: SocketAddr, stun: SocketAddr) -> Config {
    let mut config = Config::new(role, "async-radio", tracker, vec![stun]);
    config.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    config
}

#[test]
fn mr15_async_std_relay_streams_1_mib_to_a_listener() {
    run(async {
        let listener = ferry_async_std::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tracker = listener.local_addr().expect("addr");
        let (stop_tracker, stopped) = async_channel::bounded::<()>(1);
        let tracker_task = task::spawn(mount_relay::tracker_until(
            listener,
            Default::default(),
            async move {
                let _ = stopped.recv().await;
            },
        ));
        let stun = mount_relay::StunResponder::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("a STUN responder");

        let data = noise(1 << 20);
        let mut config = point(Role::Relay, tracker, stun.local_addr());
        config.rate = Some(8_000_000);
        let source = async_std::io::Cursor::new(data.clone());
        let relay = task::spawn(mount_relay::relay(config, source));

        let started = Instant::now();
        let mut out = Vec::new();
        let mut connected = None;
        let mut connected_at = None;
        let stats = mount_relay::listen_until(
            point(Role::Listener, tracker, stun.local_addr()),
            &mut out,
            Some(data.len() as u64),
            std::future::pending(),
            |event| {
                if let Event::Connected(peer) = event {
                    connected = Some(*peer);
                    connected_at = Some(Instant::now());
                }
            },
        )
        .await
        .expect("the listener ran");
        let elapsed = started.elapsed();
        let streaming = connected_at.map(|at| at.elapsed());
        assert_eq!(out.len(), data.len(), "bytes written");
        assert!(out == data, "the output differs from the source");
        assert_eq!(stats.bad_crc, 0);
        assert!(
            connected.is_some_and(|peer| peer.ip().is_loopback()),
            "{connected:?}"
        );

        // The relay returns by itself once its source is out (and LINGER passed).
        let relay_stats = relay.await.expect("the relay ran");
        assert_eq!(relay_stats.source_bytes_sent, data.len() as u64);
        // A burst of at most 64 pieces, then 8 MB/s: at least ~127 ms for 1 MiB.
        assert!(
            streaming.is_some_and(|s| s >= Duration::from_millis(90)),
            "1 MiB at 8 MB/s took {streaming:?} from the handshake"
        );

        let stun_stats = stun.stop().await;
        assert!(stun_stats.answered >= 2, "{stun_stats:?}");
        drop(stop_tracker);
        tracker_task.await.expect("the tracker stopped cleanly");
        eprintln!("1 MiB at 8 MB/s: {elapsed:?} in all, {streaming:?} from the handshake");
    });
}
