//! Name relay throughput and latency, relay vs direct loopback TCP, in one run.
//!
//! ```text
//! cargo bench -p ferry-conformance --bench name_relay
//! FERRY_BENCH_PAIRS=16 FERRY_BENCH_SMALL=200000 FERRY_BENCH_LARGE=2000 cargo bench -p ferry-conformance --bench name_relay
//! ```
//!
//! N sender/receiver pairs push the same bytes (`dest|len|payload` frames, each
//! payload starting with a send timestamp) first straight from sender to receiver
//! over loopback TCP, then through the name relay (the `ferry_mio` driver and the
//! core `Server`, in this process). The client code is the same for both paths;
//! only the path differs. Latency is measured per message under that full load.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary: its output is the point

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ferry_conformance::bench::env_usize as env;
use ferry_core::name_relay::server::{Command, Config, Event, Server};

#[derive(Clone, Copy)]
struct Workload {
    pairs: usize,
    size: usize,
    messages: usize,
}

struct Outcome {
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Outcome {
    fn msgs_per_sec(&self, w: Workload) -> f64 {
        (w.pairs * w.messages) as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_sec(&self, w: Workload) -> f64 {
        (w.pairs * w.messages * w.size) as f64 / self.elapsed.as_secs_f64() / 1e6
    }
    fn percentile(&mut self, p: f64) -> u32 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0)
    }
}

/// Send `messages` frames of `size` bytes to `dest`, batching small frames into large writes.
fn sender(mut stream: TcpStream, dest: &str, w: Workload, epoch: Instant) {
    let header = format!("{dest}|{}|", w.size).into_bytes();
    let per_batch = (64 << 10) / (header.len() + w.size) + 1;
    let mut batch = Vec::with_capacity(per_batch * (header.len() + w.size));
    let mut sent = 0;
    while sent < w.messages {
        batch.clear();
        for _ in 0..per_batch.min(w.messages - sent) {
            batch.extend_from_slice(&header);
            let ts = epoch.elapsed().as_nanos() as u64;
            batch.extend_from_slice(&ts.to_le_bytes());
            batch.resize(batch.len() + w.size - 8, 0xab);
            sent += 1;
        }
        stream.write_all(&batch).expect("sender write");
    }
}

/// Read `messages` frames `name|len|payload`, recording each one's latency.
fn receiver(mut stream: TcpStream, w: Workload, epoch: Instant) -> Vec<u32> {
    let mut buf = vec![0u8; 512 << 10];
    let (mut start, mut end) = (0, 0);
    let mut latencies = Vec::with_capacity(w.messages);
    while latencies.len() < w.messages {
        // Parse every whole frame in buf[start..end].
        loop {
            let avail = &buf[start..end];
            let Some(bar1) = avail.iter().position(|&b| b == b'|') else {
                break;
            };
            let Some(bar2) = avail[bar1 + 1..].iter().position(|&b| b == b'|') else {
                break;
            };
            let len: usize = std::str::from_utf8(&avail[bar1 + 1..bar1 + 1 + bar2])
                .unwrap()
                .parse()
                .unwrap();
            let body = bar1 + bar2 + 2;
            if avail.len() < body + len {
                break;
            }
            let ts = u64::from_le_bytes(avail[body..body + 8].try_into().unwrap());
            let now = epoch.elapsed().as_nanos() as u64;
            latencies.push((now.saturating_sub(ts) / 1000) as u32);
            start += body + len;
        }
        if start == end {
            start = 0;
            end = 0;
        } else if buf.len() - end < 64 << 10 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        if latencies.len() == w.messages {
            break; // one more read would wait for bytes that never come
        }
        let n = stream.read(&mut buf[end..]).expect("receiver read");
        assert!(n > 0, "connection closed early");
        end += n;
    }
    latencies
}

/// Run the workload over already-connected (sender, receiver, dest name) triples.
fn drive(pairs: Vec<(TcpStream, TcpStream, String)>, w: Workload) -> Outcome {
    let epoch = Instant::now();
    let barrier = Arc::new(Barrier::new(pairs.len() * 2 + 1));
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (tx, rx, dest) in pairs {
        let b = barrier.clone();
        receivers.push(thread::spawn(move || {
            b.wait();
            receiver(rx, w, epoch)
        }));
        let b = barrier.clone();
        senders.push(thread::spawn(move || {
            b.wait();
            sender(tx, &dest, w, epoch);
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut latencies_us = Vec::new();
    for r in receivers {
        latencies_us.extend(r.join().expect("receiver"));
    }
    let elapsed = start.elapsed();
    for s in senders {
        s.join().expect("sender");
    }
    Outcome {
        elapsed,
        latencies_us,
    }
}

/// Read one frame `name|len|payload` (blocking), returning the payload.
fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut fields = [0usize; 2];
    for field in &mut fields {
        let mut byte = [0u8];
        let mut digits = Vec::new();
        loop {
            stream.read_exact(&mut byte).expect("frame header");
            if byte[0] == b'|' {
                break;
            }
            digits.push(byte[0]);
        }
        *field = std::str::from_utf8(&digits).unwrap().parse().unwrap_or(0);
    }
    let mut payload = vec![0; fields[1]];
    stream.read_exact(&mut payload).expect("payload");
    payload
}

/// Unloaded round trips of 64-byte frames A -> B -> A; returns RTT percentiles in us.
fn ping_pong(pair: (TcpStream, TcpStream, String), reply_to: &str, rounds: usize) -> (u32, u32) {
    let (mut a, mut b, dest) = pair;
    let reply_to = reply_to.to_owned();
    let echo = thread::spawn(move || {
        for _ in 0..rounds {
            let payload = read_frame(&mut b);
            let mut frame = format!("{reply_to}|{}|", payload.len()).into_bytes();
            frame.extend_from_slice(&payload);
            b.write_all(&frame).unwrap();
        }
    });
    let mut frame = format!("{dest}|64|").into_bytes();
    frame.resize(frame.len() + 64, 0x5a);
    let mut rtts: Vec<u32> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            a.write_all(&frame).unwrap();
            assert_eq!(read_frame(&mut a).len(), 64);
            start.elapsed().as_micros() as u32
        })
        .collect();
    echo.join().unwrap();
    rtts.sort_unstable();
    (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
}

fn direct_pairs(n: usize) -> Vec<(TcpStream, TcpStream, String)> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    (0..n)
        .map(|i| {
            let tx = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (rx, _) = listener.accept().unwrap();
            tx.set_nodelay(true).unwrap();
            rx.set_nodelay(true).unwrap();
            (tx, rx, format!("rx{i}"))
        })
        .collect()
}

fn registered(addr: SocketAddr, name: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    // Register, then wait for a frame to ourselves: the name is taken.
    s.write_all(format!("{name}|{name}|1|!").as_bytes())
        .unwrap();
    let want = format!("{name}|1|!");
    let mut got = vec![0; want.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, want.as_bytes());
    s
}

fn relay_pairs(addr: SocketAddr, n: usize, run: usize) -> Vec<(TcpStream, TcpStream, String)> {
    (0..n)
        .map(|i| {
            let rx_name = format!("rx{run}-{i}");
            let rx = registered(addr, &rx_name);
            let tx = registered(addr, &format!("tx{run}-{i}"));
            (tx, rx, rx_name)
        })
        .collect()
}

fn start_relay() -> (SocketAddr, ferry_mio::Handle<Command>) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let handle = ferry_mio::spawn(Server::new(Config::default()), move |event| {
        if let Event::Listening { local, .. } = event {
            let _ = addr_tx.send(local);
        }
    })
    .expect("spawn relay");
    handle
        .send(Command::Listen("127.0.0.1:0".parse().unwrap()))
        .expect("listen");
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("relay listening");
    (addr, handle)
}

fn main() {
    // `cargo test --benches` lists targets; run only under `cargo bench`.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pairs = env("FERRY_BENCH_PAIRS", 16);
    let small = Workload {
        pairs,
        size: 64,
        messages: env("FERRY_BENCH_SMALL", 200_000),
    };
    let large = Workload {
        pairs,
        size: 64 << 10,
        messages: env("FERRY_BENCH_LARGE", 2_000),
    };
    // One pair leaves a core free; 16 pairs saturate both (see the README).
    let large_one_pair = Workload {
        pairs: 1,
        messages: large.messages * pairs,
        ..large
    };
    let (addr, relay) = start_relay();

    println!(
        "name relay benchmark: relay = ferry_mio driver + core Server, in this process; baseline = the same clients over direct loopback TCP"
    );
    println!(
        "{:<26} {:<7} {:>12} {:>10} {:>9} {:>9}",
        "workload", "path", "msgs/s", "MB/s", "p50 us", "p99 us"
    );
    let mut results = Vec::new();
    for (run, w) in [small, large, large_one_pair].into_iter().enumerate() {
        let label = format!("{} pairs, {} B x {}", w.pairs, w.size, w.messages);
        let mut direct = drive(direct_pairs(w.pairs), w);
        let mut relayed = drive(relay_pairs(addr, w.pairs, run), w);
        for (path, o) in [("direct", &mut direct), ("relay", &mut relayed)] {
            let (p50, p99) = (o.percentile(0.5), o.percentile(0.99));
            println!(
                "{label:<26} {path:<7} {:>12.0} {:>10.1} {p50:>9} {p99:>9}",
                o.msgs_per_sec(w),
                o.mb_per_sec(w)
            );
        }
        let ratio = relayed.msgs_per_sec(w) / direct.msgs_per_sec(w);
        println!("{label:<26} ratio relay/direct: {ratio:.2}x");
        results.push((ratio, relayed.msgs_per_sec(w)));
    }
    let rounds = env("FERRY_BENCH_ROUNDS", 5_000);
    let mut direct = direct_pairs(1);
    let (d50, d99) = ping_pong(direct.remove(0), "unused", rounds);
    let mut relayed = relay_pairs(addr, 1, 9);
    let (r50, r99) = ping_pong(relayed.remove(0), "tx9-0", rounds);
    println!(
        "unloaded round trip, 64 B x {rounds}: direct p50 {d50} us p99 {d99} us; relay p50 {r50} us p99 {r99} us"
    );
    relay.shutdown();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let small_rate = results[0].1;
    println!(
        "target: >= 100000 relayed msgs/s, 64 B, {pairs} pairs: {small_rate:.0} ({})",
        verdict(small_rate >= 100_000.0)
    );
    for (i, ratio) in [(1, results[1].0), (2, results[2].0)] {
        let w = [small, large, large_one_pair][i];
        println!(
            "target: >= 0.5x direct throughput, 64 KiB, {} pairs: {ratio:.2}x ({})",
            w.pairs,
            verdict(ratio >= 0.5)
        );
    }
}
