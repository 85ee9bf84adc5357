//! Black-box name relay scenarios over real loopback TCP (spec/name-relay.md).
//!
//! Each scenario takes a [`Target`]: the address of a running relay and the
//! timeouts it was started with. The same bodies run against the mio daemon
//! (`runtime-mio/tests/conformance.rs`, a spawned `ferry` process) and the
//! async-std runtime (`conformance/tests/async_std_name_relay.rs`) through
//! [`name_relay_conformance!`](crate::name_relay_conformance). They speak the
//! protocol with plain blocking `std::net` sockets, not with ferry's client.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// The relay under test and the settings it runs with. Runners start relays
/// with [`Target::TEST_SETTINGS`] so the timeout scenarios take about a second.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Where the relay listens.
    pub addr: SocketAddr,
    /// Its registration timeout (NR-3).
    pub registration_timeout: Duration,
    /// Its idle timeout (NR-9).
    pub idle_timeout: Duration,
    /// Its frame length cap (NR-5).
    pub max_frame_len: usize,
    /// Its connection limit (NR-13).
    pub max_connections: usize,
}

/// The settings runners start a relay with.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// NR-3.
    pub registration_timeout: Duration,
    /// NR-9.
    pub idle_timeout: Duration,
    /// NR-5.
    pub max_frame_len: usize,
    /// NR-12.
    pub max_queued_bytes: usize,
    /// NR-13.
    pub max_connections: usize,
}

impl Target {
    /// Short timeouts, small caps: what every runner passes to the relay it starts.
    pub const TEST_SETTINGS: Settings = Settings {
        registration_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(1500),
        max_frame_len: 1 << 20,
        max_queued_bytes: 256 << 10,
        max_connections: 64,
    };

    /// A target at `addr` running [`Target::TEST_SETTINGS`].
    pub fn new(addr: SocketAddr) -> Self {
        let s = Self::TEST_SETTINGS;
        Self {
            addr,
            registration_timeout: s.registration_timeout,
            idle_timeout: s.idle_timeout,
            max_frame_len: s.max_frame_len,
            max_connections: s.max_connections,
        }
    }
}

/// How long any single expected read may take before the scenario fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// A raw client connection.
pub struct Peer {
    stream: TcpStream,
}

impl Peer {
    /// Connect without registering.
    pub fn connect(target: &Target) -> Peer {
        let stream = TcpStream::connect(target.addr).expect("connect to relay");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        Peer { stream }
    }

    /// Connect and send `{name}|`.
    pub fn register(target: &Target, name: &str) -> Peer {
        let mut peer = Self::connect(target);
        peer.write(format!("{name}|").as_bytes());
        peer
    }

    /// Connect and register, then make sure the relay has taken the name by
    /// sending a frame to oneself and reading it back (NR-15).
    pub fn registered(target: &Target, name: &str) -> Peer {
        let mut peer = Self::register(target, name);
        peer.send(name, b"sync");
        assert_eq!(
            peer.read_frame(),
            (name.to_owned(), b"sync".to_vec()),
            "self-delivery of {name}"
        );
        peer
    }

    /// Register `name` as soon as the relay lets it: after a close, the relay
    /// frees a name or a place only when it sees the close, asynchronously.
    /// Retries (each try a new connection) until a frame to oneself comes back.
    pub fn registered_eventually(target: &Target, name: &str) -> Peer {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut p = Peer::register(target, name);
            p.send(name, b"in");
            p.stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let want = format!("{name}|2|in");
            let mut got = vec![0u8; want.len()];
            if p.stream.read_exact(&mut got).is_ok() {
                assert_eq!(got, want.as_bytes());
                p.stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{name} could not register within {PATIENCE:?}"
            );
        }
    }

    /// Write raw bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to relay");
    }

    /// Send one frame `dest|len|payload`.
    pub fn send(&mut self, dest: &str, payload: &[u8]) {
        let mut frame = format!("{dest}|{}|", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        self.write(&frame);
    }

    /// Read one delivered frame `sender|len|payload`.
    pub fn read_frame(&mut self) -> (String, Vec<u8>) {
        let sender = self.read_field();
        let len: usize = self
            .read_field()
            .parse()
            .expect("decimal length from relay");
        let mut payload = vec![0; len];
        self.stream.read_exact(&mut payload).expect("payload");
        (sender, payload)
    }

    fn read_field(&mut self) -> String {
        let mut field = Vec::new();
        let mut byte = [0u8];
        loop {
            self.stream
                .read_exact(&mut byte)
                .expect("frame header from relay");
            if byte[0] == b'|' {
                return String::from_utf8(field).expect("utf-8 field");
            }
            field.push(byte[0]);
        }
    }

    /// Assert the relay closes this connection within `within` (reading and
    /// discarding anything still queued), and return how long it took.
    pub fn expect_closed(&mut self, within: Duration) -> Duration {
        let start = Instant::now();
        self.stream.set_read_timeout(Some(within)).expect("timeout");
        let mut sink = [0u8; 4096];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return start.elapsed(),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return start.elapsed(),
                Err(e) => panic!("relay did not close the connection within {within:?}: {e}"),
            }
        }
    }

    /// Assert nothing arrives for `quiet` and the connection stays open.
    pub fn expect_silence(&mut self, quiet: Duration) {
        self.stream.set_read_timeout(Some(quiet)).expect("timeout");
        let mut byte = [0u8];
        match self.stream.read(&mut byte) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(0) => panic!("relay closed the connection"),
            Ok(_) => panic!("unexpected byte {:?} from relay", byte[0] as char),
            Err(e) => panic!("read failed: {e}"),
        }
        self.stream
            .set_read_timeout(Some(PATIENCE))
            .expect("timeout");
    }

    /// Close our side.
    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// NR-1, NR-4, NR-6: register, send, and the receiver gets the frame with the sender's name.
pub fn nr1_nr4_nr6_register_and_deliver(t: &Target) {
    let mut a = Peer::registered(t, "device_a");
    let mut b = Peer::registered(t, "device_b");
    b.send("device_a", b"hello");
    assert_eq!(a.read_frame(), ("device_b".into(), b"hello".to_vec()));
    a.send("device_b", b"");
    a.send("device_b", &[0, 255, b'|', 10]);
    assert_eq!(b.read_frame(), ("device_a".into(), vec![]));
    assert_eq!(b.read_frame(), ("device_a".into(), vec![0, 255, b'|', 10]));
}

/// NR-1: frames in the same write as the registration are handled.
pub fn nr1_frames_may_follow_the_name_in_one_write(t: &Target) {
    let mut a = Peer::registered(t, "a");
    let mut b = Peer::connect(t);
    b.write(b"b|a|3|one");
    assert_eq!(a.read_frame(), ("b".into(), b"one".to_vec()));
}

/// NR-2: an empty name closes the connection.
pub fn nr2_empty_name_is_closed(t: &Target) {
    let mut p = Peer::connect(t);
    p.write(b"|");
    p.expect_closed(PATIENCE);
}

/// NR-2: a name longer than 255 bytes closes the connection, without waiting for a `|`.
pub fn nr2_overlong_name_is_closed(t: &Target) {
    let mut p = Peer::connect(t);
    p.write(&[b'x'; 256]);
    p.expect_closed(t.registration_timeout / 2);
}

/// NR-3: no name within the registration timeout closes the connection, not earlier.
pub fn nr3_registration_deadline(t: &Target) {
    let mut p = Peer::connect(t);
    p.write(b"slow");
    let took = p.expect_closed(t.registration_timeout + PATIENCE);
    assert!(
        took + Duration::from_millis(50) >= t.registration_timeout,
        "closed after {took:?}, before the {:?} deadline",
        t.registration_timeout
    );
}

/// NR-5: malformed headers close only the offender; others go on.
pub fn nr5_malformed_input_closes_only_the_offender(t: &Target) {
    let mut a = Peer::registered(t, "a");
    let mut b = Peer::registered(t, "b");
    let oversized = format!("a|{}|", t.max_frame_len + 1);
    for (i, bad) in [
        &b"a|x|"[..],
        b"a||",
        b"|3|abc",
        b"a|-1|",
        b"a|123456789012345678901|",
        oversized.as_bytes(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut bad_peer = Peer::registered(t, &format!("bad{i}"));
        bad_peer.write(bad);
        bad_peer.expect_closed(PATIENCE);
        b.send("a", format!("still {i}").as_bytes());
        assert_eq!(
            a.read_frame(),
            ("b".into(), format!("still {i}").into_bytes())
        );
    }
}

/// NR-7: a second registration of a held name is closed; the holder keeps it.
pub fn nr7_duplicate_name_closes_the_newcomer(t: &Target) {
    let mut holder = Peer::registered(t, "taken");
    let mut dup = Peer::register(t, "taken");
    dup.write(b"taken|5|stolen");
    dup.expect_closed(PATIENCE);
    let mut other = Peer::registered(t, "other");
    other.send("taken", b"for the holder");
    assert_eq!(
        holder.read_frame(),
        ("other".into(), b"for the holder".to_vec())
    );
}

/// NR-8: a frame for an unknown name is consumed and dropped; the sender stays.
pub fn nr8_unknown_destination_is_dropped(t: &Target) {
    let mut a = Peer::registered(t, "a");
    let mut b = Peer::registered(t, "b");
    // The payload contains something that would look like a frame if it were not consumed.
    b.send("nobody", b"a|4|evil");
    b.send("a", b"ok");
    assert_eq!(a.read_frame(), ("b".into(), b"ok".to_vec()));
    a.expect_silence(Duration::from_millis(200));
}

/// NR-9: a registered connection that sends nothing is closed after the idle timeout.
pub fn nr9_idle_connection_is_closed(t: &Target) {
    let mut a = Peer::registered(t, "idle");
    let took = a.expect_closed(t.idle_timeout + PATIENCE);
    assert!(
        took + Duration::from_millis(100) >= t.idle_timeout,
        "closed after {took:?}, before the {:?} idle timeout",
        t.idle_timeout
    );
}

/// NR-10: `{own name}|0|` keeps a connection alive and delivers nothing.
pub fn nr10_keepalive_keeps_the_connection(t: &Target) {
    let mut a = Peer::registered(t, "alive");
    let start = Instant::now();
    while start.elapsed() < t.idle_timeout * 2 {
        a.write(b"alive|0|");
        a.expect_silence(t.idle_timeout / 4);
    }
    let mut b = Peer::registered(t, "b");
    b.send("alive", b"still here");
    assert_eq!(a.read_frame(), ("b".into(), b"still here".to_vec()));
}

/// NR-11: a frame written one byte at a time is delivered whole.
pub fn nr11_split_frames_are_reassembled(t: &Target) {
    let mut a = Peer::registered(t, "a");
    let mut b = Peer::registered(t, "b");
    for byte in b"a|11|hello world" {
        b.write(&[*byte]);
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(a.read_frame(), ("b".into(), b"hello world".to_vec()));
}

/// NR-12: a receiver that does not read stalls its sender; nothing is lost.
pub fn nr12_slow_receiver_stalls_sender_and_loses_nothing(t: &Target) {
    const FRAME: usize = 64 << 10;
    const FRAMES: usize = 768; // 48 MiB: more than every socket buffer on the path
    let mut receiver = Peer::registered(t, "sink");
    let sender = Peer::registered(t, "source");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        thread::spawn(move || {
            let mut sender = sender;
            for i in 0..FRAMES {
                let payload = vec![(i % 251) as u8; FRAME];
                sender.send("sink", &payload);
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            sender
        })
    };
    thread::sleep(Duration::from_millis(800));
    assert!(
        !done.load(std::sync::atomic::Ordering::SeqCst),
        "the relay took 48 MiB for a receiver that reads nothing: it must pause the sender"
    );
    for i in 0..FRAMES {
        if i % 32 == 0 {
            // A receiver that only reads is idle to the relay (NR-9): keep alive
            // (NR-10), or a slow machine would see it closed mid-transfer.
            receiver.write(b"sink|0|");
        }
        let (from, payload) = receiver.read_frame();
        assert_eq!(from, "source");
        assert_eq!(payload.len(), FRAME, "frame {i}");
        assert!(
            payload.iter().all(|&b| b == (i % 251) as u8),
            "frame {i} content"
        );
    }
    let sender = writer.join().expect("writer");
    sender.close();
}

/// NR-14: a name is free again as soon as its holder leaves.
pub fn nr14_name_is_released_on_close(t: &Target) {
    let first = Peer::registered(t, "reused");
    first.close();
    let mut again = Peer::registered_eventually(t, "reused");
    again.send("reused", b"mine");
    assert_eq!(again.read_frame(), ("reused".into(), b"mine".to_vec()));
}

/// NR-13: beyond the connection limit a new connection is closed at once; the
/// others are unaffected, and a freed place can be taken again.
pub fn nr13_connection_limit(t: &Target) {
    let mut peers: Vec<Peer> = (0..t.max_connections)
        .map(|i| Peer::registered(t, &format!("p{i}")))
        .collect();
    let mut extra = Peer::connect(t);
    extra.expect_closed(PATIENCE);
    peers[1].send("p0", b"still served");
    assert_eq!(
        peers[0].read_frame(),
        ("p1".into(), b"still served".to_vec())
    );
    peers.pop().expect("a peer").close();
    Peer::registered_eventually(t, "late");
}

/// NR-15: a frame to oneself with a payload comes back.
pub fn nr15_self_delivery(t: &Target) {
    let mut a = Peer::registered(t, "me");
    a.send("me", b"echo");
    assert_eq!(a.read_frame(), ("me".into(), b"echo".to_vec()));
}

/// NR-6: many pairs at once, frames from each sender in order, none mixed up.
pub fn nr6_many_pairs_in_parallel_keep_order(t: &Target) {
    let t = *t;
    let handles: Vec<_> = (0..8)
        .map(|pair| {
            thread::spawn(move || {
                let mut rx = Peer::registered(&t, &format!("rx{pair}"));
                let mut tx = Peer::registered(&t, &format!("tx{pair}"));
                for i in 0..200u32 {
                    tx.send(&format!("rx{pair}"), format!("{pair}:{i}").as_bytes());
                }
                for i in 0..200u32 {
                    assert_eq!(
                        rx.read_frame(),
                        (format!("tx{pair}"), format!("{pair}:{i}").into_bytes())
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("pair");
    }
}

/// Every scenario's test function, for runners that generate one `#[test]` each.
///
/// `$start` is an expression producing a guard that serves a relay started with
/// [`Target::TEST_SETTINGS`] and has a `target(&self) -> Target` method; the guard
/// stops the relay when dropped.
#[macro_export]
macro_rules! name_relay_conformance {
    ($start:expr) => {
        $crate::name_relay_conformance!(@tests $start;
            nr1_nr4_nr6_register_and_deliver,
            nr1_frames_may_follow_the_name_in_one_write,
            nr2_empty_name_is_closed,
            nr2_overlong_name_is_closed,
            nr3_registration_deadline,
            nr5_malformed_input_closes_only_the_offender,
            nr7_duplicate_name_closes_the_newcomer,
            nr8_unknown_destination_is_dropped,
            nr9_idle_connection_is_closed,
            nr10_keepalive_keeps_the_connection,
            nr11_split_frames_are_reassembled,
            nr12_slow_receiver_stalls_sender_and_loses_nothing,
            nr13_connection_limit,
            nr14_name_is_released_on_close,
            nr15_self_delivery,
            nr6_many_pairs_in_parallel_keep_order,
        );
    };
    (@tests $start:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let served = $start;
                $crate::scenarios::name_relay::$name(&served.target());
            }
        )*
    };
}
