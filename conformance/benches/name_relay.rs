//! Name relay throughput and latency, relay vs direct loopback TCP, in one run.
//!
//! ```text
//! cargo bench -p ferry-conformance --bench name_relay
//! FERRY_BENCH_PAIRS=16 FERRY_BENCH_SMALL=50000 FERRY_BENCH_LARGE=1000 cargo bench -p ferry-conformance --bench name_relay
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

use ferry_core::name_relay::server::{Command, Config, Event, Server};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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
    // `cargo test --benches` passes --bench-less flags; run only under `cargo bench`.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pairs = env("FERRY_BENCH_PAIRS", 16);
    let small = Workload {
        pairs,
        size: 64,
        messages: env("FERRY_BENCH_SMALL", 50_000),
    };
    let large = Workload {
        pairs,
        size: 64 << 10,
        messages: env("FERRY_BENCH_LARGE", 1_000),
    };
    let (addr, relay) = start_relay();

    println!(
        "name relay benchmark: {pairs} sender/receiver pairs, relay = ferry_mio driver + core Server, one process"
    );
    println!(
        "{:<18} {:<7} {:>12} {:>10} {:>9} {:>9}",
        "workload", "path", "msgs/s", "MB/s", "p50 us", "p99 us"
    );
    let mut verdicts = Vec::new();
    for (run, w) in [small, large].into_iter().enumerate() {
        let label = format!("{} B x {}", w.size, w.messages);
        let mut direct = drive(direct_pairs(w.pairs), w);
        let mut relayed = drive(relay_pairs(addr, w.pairs, run), w);
        for (path, o) in [("direct", &mut direct), ("relay", &mut relayed)] {
            let (p50, p99) = (o.percentile(0.5), o.percentile(0.99));
            println!(
                "{label:<18} {path:<7} {:>12.0} {:>10.1} {p50:>9} {p99:>9}",
                o.msgs_per_sec(w),
                o.mb_per_sec(w)
            );
        }
        let ratio = relayed.msgs_per_sec(w) / direct.msgs_per_sec(w);
        println!("{label:<18} ratio relay/direct: throughput {ratio:.2}x");
        verdicts.push((w, ratio, relayed.msgs_per_sec(w)));
    }
    relay.shutdown();
    let (w_small, _, small_rate) = verdicts[0];
    let (_, large_ratio, _) = verdicts[1];
    println!(
        "target: >= 100000 relayed msgs/s for {} B with {} pairs: {:.0} ({})",
        w_small.size,
        w_small.pairs,
        small_rate,
        if small_rate >= 100_000.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "target: >= 0.5x direct throughput for 64 KiB messages: {large_ratio:.2}x ({})",
        if large_ratio >= 0.5 { "met" } else { "NOT met" }
    );
}
