//! Mount relay (seed 000) data path: relay point → listener point over
//! 127.0.0.1, against a raw UDP sender/receiver pair, in one run.
//!
//! ```text
//! cargo bench -p ferry-conformance --bench mount_relay
//! FERRY_BENCH_MR_MIB=16 FERRY_BENCH_MR_REPEAT=5 FERRY_BENCH_MR_PACED=0 cargo bench -p ferry-conformance --bench mount_relay
//! FERRY_BENCH_MR_PATHS=ferry cargo bench -p ferry-conformance --bench mount_relay
//! ```
//!
//! The source is `FERRY_BENCH_MR_MIB` MiB (default 64, cut to whole 504-byte
//! pieces); piece `i` starts with `i` (u64, little-endian), the rest is
//! pseudo-random, so every receiver checks each datagram's bytes against the
//! source (a mismatch is `corrupt`; the bench fails on one).
//!
//! - `raw`: a std `UdpSocket` thread sends every piece behind an 8-byte header
//!   (512 bytes, as ferry's datagrams) in a tight loop to a std `UdpSocket`
//!   receiver thread that counts.
//! - `ferry`: a tracker (`ferry_core::mount_relay::tracker::Tracker`) and a STUN
//!   responder (`ferry_core::stun::responder::Responder`), each on its own
//!   `ferry_mio` driver thread on 127.0.0.1 (ephemeral ports), shared by every
//!   run; per run a relay point and a listener point (`point::Point`, default
//!   config but `bind` 127.0.0.1:0, a fresh mount), each on its own `ferry_mio`
//!   driver thread, find each other through STUN and the tracker as in
//!   production. The relay is fed `CHUNK` (128 × 504) bytes per `NeedData`
//!   from its `on_event` (on its driver thread); `rate` is `None`.
//! - `ferry paced`: the same at `FERRY_BENCH_MR_PACED` % (default 80; 0 skips)
//!   of the median goodput `ferry` achieved, to show the loss-free rate.
//!
//! Neither receiver changes its socket buffers: both have the system's default
//! `SO_RCVBUF`. A run ends when every byte arrived, or when the sender is done
//! and nothing arrived for 200 ms, or after `FERRY_BENCH_MR_TIMEOUT` seconds
//! (default 30; the points must connect within 15 s). Figures, per run:
//! goodput (data bytes received / time from the first to the last datagram
//! received), datagrams received per second over the same span, loss (pieces
//! not received) and the sender's rate. `raw` and `ferry` alternate in
//! `FERRY_BENCH_MR_REPEAT` rounds (default 3), then the paced runs; min, median
//! and max are printed, and ferry/raw as the ratio of the medians.
//! `FERRY_BENCH_MR_PATHS` (default `raw,ferry,paced`) picks the measurements
//! (`paced` needs `ferry`), e.g. `ferry` alone under `perf record`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary: its output is the point

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ferry_conformance::bench::env_usize as env;
use ferry_core::mount_relay::point::{self, Point, Role};
use ferry_core::mount_relay::tracker;
use ferry_core::mount_relay::wire::{MAX_DATA, MAX_DATAGRAM};
use ferry_core::stun::responder;
use ferry_mio::{Driver, Remote};

/// Source bytes fed per `NeedData`: 128 stream datagrams (as `ferry mount relay`).
const CHUNK: usize = MAX_DATA * 128;
/// A run ends once the sender is done and nothing arrived for this long.
const IDLE: Duration = Duration::from_millis(200);
/// The points must be connected within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A driver that does not stop within this is reported, not waited for.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The target: ferry's goodput and datagrams/s at least this times raw's.
const TARGET: f64 = 0.7;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

#[derive(Clone, Copy)]
struct Settings {
    pieces: usize,
    repeat: usize,
    paced_percent: usize,
    timeout: Duration,
}

impl Settings {
    fn bytes(&self) -> usize {
        self.pieces * MAX_DATA
    }
}

/// `pieces` pieces of `MAX_DATA` bytes; piece `i` begins with `i`.
fn make_source(pieces: usize) -> Arc<Vec<u8>> {
    let mut source = vec![0u8; pieces * MAX_DATA];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, piece) in source.chunks_mut(MAX_DATA).enumerate() {
        piece[..8].copy_from_slice(&(i as u64).to_le_bytes());
        for b in &mut piece[8..] {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = (x >> 32) as u8;
        }
    }
    Arc::new(source)
}

/// What a receiver saw, written by its thread, read by the main thread.
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    datagrams: AtomicU64,
    corrupt: AtomicU64,
    out_of_order: AtomicU64,
    /// Nanoseconds since the run's base + 1, 0 for none yet.
    first_ns: AtomicU64,
    last_ns: AtomicU64,
    last_index: AtomicU64,
    /// The longest time between two datagrams, in nanoseconds.
    max_gap_ns: AtomicU64,
}

impl Progress {
    /// Count one datagram's data and check it against the source.
    fn record(&self, source: &[u8], payload: &[u8], base: Instant) {
        let now = base.elapsed().as_nanos() as u64 + 1;
        if self.first_ns.load(Ordering::Relaxed) == 0 {
            self.first_ns.store(now, Ordering::Relaxed);
        }
        let gap = now.saturating_sub(self.last_ns.swap(now, Ordering::Relaxed));
        if self.datagrams.load(Ordering::Relaxed) > 0
            && gap > self.max_gap_ns.load(Ordering::Relaxed)
        {
            self.max_gap_ns.store(gap, Ordering::Relaxed);
        }
        self.bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        let n = self.datagrams.fetch_add(1, Ordering::Relaxed);
        let index = payload
            .get(..8)
            .map(|h| u64::from_le_bytes(h.try_into().unwrap()));
        let expected = index.and_then(|i| {
            let start = usize::try_from(i).ok()?.checked_mul(MAX_DATA)?;
            source.get(start..start.checked_add(payload.len())?)
        });
        if expected != Some(payload) {
            self.corrupt.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let index = index.unwrap_or(0);
        if n > 0 && index <= self.last_index.load(Ordering::Relaxed) {
            self.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
        self.last_index.store(index, Ordering::Relaxed);
    }
}

/// When the sender started and finished (nanoseconds since the base + 1, 0 for not yet).
#[derive(Default)]
struct SendTimes {
    started_ns: AtomicU64,
    done_ns: AtomicU64,
    sent: AtomicU64,
}

fn since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64 + 1
}

/// One run's figures.
#[derive(Clone, Copy)]
struct Run {
    bytes: u64,
    datagrams: u64,
    /// From the first datagram received to the last.
    span: Duration,
    /// Datagrams the sender handed to its socket, and how long it took.
    sent: u64,
    send_time: Duration,
    corrupt: u64,
    out_of_order: u64,
    /// The longest time between two datagrams received.
    max_gap: Duration,
    timed_out: bool,
    pieces: u64,
}

impl Run {
    fn goodput_mbs(&self) -> f64 {
        self.bytes as f64 / self.span.as_secs_f64().max(1e-9) / 1e6
    }

    fn datagrams_per_s(&self) -> f64 {
        self.datagrams as f64 / self.span.as_secs_f64().max(1e-9)
    }

    fn loss_percent(&self) -> f64 {
        100.0 * (1.0 - self.datagrams as f64 / self.pieces.max(1) as f64)
    }

    fn sent_per_s(&self) -> f64 {
        self.sent as f64 / self.send_time.as_secs_f64().max(1e-9)
    }
}

/// Wait until every byte arrived, or the sender is done and the receiver was
/// idle for [`IDLE`], or `timeout`; then read the receiver's figures (the
/// sender's come from [`Run::sender`] once it has stopped).
fn finish(progress: &Progress, send: &SendTimes, base: Instant, s: &Settings) -> Run {
    let started = Instant::now();
    let expected = s.bytes() as u64;
    let mut timed_out = false;
    loop {
        if progress.bytes.load(Ordering::Relaxed) >= expected {
            break;
        }
        let done = send.done_ns.load(Ordering::Relaxed);
        if done != 0 {
            let last = progress.last_ns.load(Ordering::Relaxed).max(done);
            let now = since(base);
            if now.saturating_sub(last) >= IDLE.as_nanos() as u64 {
                break;
            }
        }
        if started.elapsed() > s.timeout {
            timed_out = true;
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    let first = progress.first_ns.load(Ordering::Relaxed);
    let last = progress.last_ns.load(Ordering::Relaxed);
    Run {
        bytes: progress.bytes.load(Ordering::Relaxed),
        datagrams: progress.datagrams.load(Ordering::Relaxed),
        span: Duration::from_nanos(last.saturating_sub(first)),
        sent: 0,
        send_time: Duration::ZERO,
        corrupt: progress.corrupt.load(Ordering::Relaxed),
        out_of_order: progress.out_of_order.load(Ordering::Relaxed),
        max_gap: Duration::from_nanos(progress.max_gap_ns.load(Ordering::Relaxed)),
        timed_out,
        pieces: s.pieces as u64,
    }
}

impl Run {
    /// Take the sender's figures, once it has stopped.
    fn sender(&mut self, send: &SendTimes, sent: u64) {
        let started = send.started_ns.load(Ordering::Relaxed);
        let done = send.done_ns.load(Ordering::Relaxed);
        self.sent = sent;
        self.send_time = Duration::from_nanos(if done == 0 {
            0
        } else {
            done.saturating_sub(started)
        });
    }
}

/// The raw pair: std sockets, default buffers, a tight send loop.
fn raw_run(source: &Arc<Vec<u8>>, s: &Settings) -> Result<Run, String> {
    let rx = UdpSocket::bind((LOOPBACK, 0)).map_err(|e| format!("raw bind: {e}"))?;
    let to = rx.local_addr().map_err(|e| format!("raw: {e}"))?;
    rx.set_read_timeout(Some(Duration::from_millis(20)))
        .map_err(|e| format!("raw: {e}"))?;
    let tx = UdpSocket::bind((LOOPBACK, 0)).map_err(|e| format!("raw bind: {e}"))?;
    let progress = Arc::new(Progress::default());
    let send = Arc::new(SendTimes::default());
    let stop = Arc::new(AtomicBool::new(false));
    let base = Instant::now();

    let receiver = {
        let (progress, stop, source) = (progress.clone(), stop.clone(), source.clone());
        thread::Builder::new()
            .name("raw-rx".to_owned())
            .spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    match rx.recv_from(&mut buf) {
                        Ok((n, _)) if n > 8 => progress.record(&source, &buf[8..n], base),
                        Ok(_) | Err(_) => {}
                    }
                }
            })
            .map_err(|e| format!("raw receiver: {e}"))?
    };
    let sender = {
        let (send, source) = (send.clone(), source.clone());
        thread::Builder::new()
            .name("raw-tx".to_owned())
            .spawn(move || {
                let mut datagram = [0u8; MAX_DATAGRAM];
                send.started_ns.store(since(base), Ordering::Relaxed);
                let mut sent = 0u64;
                for (i, piece) in source.chunks(MAX_DATA).enumerate() {
                    datagram[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    datagram[8..8 + piece.len()].copy_from_slice(piece);
                    if tx.send_to(&datagram[..8 + piece.len()], to).is_ok() {
                        sent += 1;
                    }
                }
                send.sent.store(sent, Ordering::Relaxed);
                send.done_ns.store(since(base), Ordering::Relaxed);
            })
            .map_err(|e| format!("raw sender: {e}"))?
    };
    let mut run = finish(&progress, &send, base, s);
    let _ = sender.join();
    stop.store(true, Ordering::Relaxed);
    let _ = receiver.join();
    run.sender(&send, send.sent.load(Ordering::Relaxed));
    Ok(run)
}

/// What the drivers reported that a healthy run would not.
type Log = Arc<Mutex<Vec<String>>>;

/// The tracker and the STUN responder every ferry run uses.
struct Infra {
    tracker: SocketAddr,
    stun: SocketAddr,
    tracker_handle: Option<ferry_mio::Handle<tracker::Command>>,
    stun_handle: Option<ferry_mio::Handle<responder::Command>>,
}

impl Infra {
    fn start(log: &Log) -> Result<Infra, String> {
        let (tx, rx) = mpsc::channel();
        let tracker_log = log.clone();
        let tracker_handle = ferry_mio::spawn(
            tracker::Tracker::new(tracker::Config::default()),
            move |event| match event {
                tracker::Event::Listening { local, .. } => {
                    let _ = tx.send(Ok(local));
                }
                tracker::Event::ListenFailed { error, .. } => {
                    let _ = tx.send(Err(error));
                }
                tracker::Event::Registered { .. } | tracker::Event::Paired { .. } => {}
                other => tracker_log
                    .lock()
                    .unwrap()
                    .push(format!("tracker: {other:?}")),
            },
        )
        .map_err(|e| format!("spawn tracker: {e}"))?;
        let mut infra = Infra {
            tracker: SocketAddr::from((LOOPBACK, 0)),
            stun: SocketAddr::from((LOOPBACK, 0)),
            tracker_handle: Some(tracker_handle),
            stun_handle: None,
        };
        if let Some(h) = &infra.tracker_handle {
            h.send(tracker::Command::Listen(SocketAddr::from((LOOPBACK, 0))))
                .map_err(|e| format!("tracker: {e}"))?;
        }
        infra.tracker = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the tracker does not listen".to_owned())?
            .map_err(|e| format!("tracker listen failed: {e}"))?;

        let (tx, rx) = mpsc::channel();
        let stun_handle = ferry_mio::spawn(responder::Responder::new(), move |event| match event {
            responder::Event::Listening { local, .. } => {
                let _ = tx.send(Ok(local));
            }
            responder::Event::ListenFailed { error, .. } => {
                let _ = tx.send(Err(error));
            }
        })
        .map_err(|e| format!("spawn STUN responder: {e}"))?;
        stun_handle
            .send(responder::Command::Listen(SocketAddr::from((LOOPBACK, 0))))
            .map_err(|e| format!("STUN responder: {e}"))?;
        infra.stun_handle = Some(stun_handle);
        infra.stun = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the STUN responder does not listen".to_owned())?
            .map_err(|e| format!("STUN listen failed: {e}"))?;
        Ok(infra)
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        let mut joins = Vec::new();
        if let Some(h) = self.tracker_handle.take() {
            let _ = h.send(tracker::Command::Shutdown);
            h.shutdown();
            joins.push(("tracker", thread::spawn(move || h.join())));
        }
        if let Some(h) = self.stun_handle.take() {
            let _ = h.send(responder::Command::Shutdown);
            h.shutdown();
            joins.push(("STUN responder", thread::spawn(move || h.join())));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for (name, j) in joins {
            while !j.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if !j.is_finished() {
                println!("warning: the {name} driver did not stop within 5 s");
            } else if let Ok(Err(e)) = j.join() {
                println!("warning: the {name} driver ended with {e}");
            }
        }
    }
}

/// A point on a driver thread of its own (so that its stats come back).
struct RunningPoint {
    remote: Remote<point::Command>,
    thread: JoinHandle<io::Result<Point>>,
}

impl RunningPoint {
    fn start(
        role: Role,
        config: point::Config,
        seed: u8,
        on_event: impl FnMut(point::Event) + Send + 'static,
        make_on_event: impl FnOnce(Remote<point::Command>) -> Box<dyn FnMut(point::Event) + Send>,
    ) -> Result<RunningPoint, String> {
        let driver = Driver::new(Point::new(config, [seed; 32]))
            .map_err(|e| format!("{role} driver: {e}"))?;
        let remote = driver.remote();
        let mut extra = make_on_event(remote.clone());
        let mut on_event = on_event;
        let thread = thread::Builder::new()
            .name(format!("mr-{role}"))
            .spawn(move || {
                driver.run(move |event| {
                    if let point::Event::Data(_) | point::Event::NeedData = event {
                        extra(event);
                    } else {
                        on_event(event);
                    }
                })
            })
            .map_err(|e| format!("{role} thread: {e}"))?;
        remote
            .send(point::Command::Start)
            .map_err(|e| format!("{role}: {e}"))?;
        Ok(RunningPoint { remote, thread })
    }

    /// Stop the point and return its stats (bounded).
    fn stop(self) -> Result<point::Stats, String> {
        let _ = self.remote.send(point::Command::Stop);
        self.remote.shutdown();
        drop(self.remote);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !self.thread.is_finished() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if !self.thread.is_finished() {
            return Err("a point's driver did not stop within 5 s".to_owned());
        }
        match self.thread.join() {
            Ok(Ok(point)) => Ok(point.stats()),
            Ok(Err(e)) => Err(format!("a point's driver ended with {e}")),
            Err(_) => Err("a point's driver panicked".to_owned()),
        }
    }
}

/// What one ferry run gives besides the figures.
struct FerryRun {
    run: Run,
    relay: point::Stats,
    listener: point::Stats,
    connect_time: Duration,
}

/// A relay point and a listener point on a fresh mount; the relay streams the source.
fn ferry_run(
    infra: &Infra,
    source: &Arc<Vec<u8>>,
    s: &Settings,
    n: usize,
    rate: Option<u64>,
    log: &Log,
) -> Result<FerryRun, String> {
    let mount = format!("bench-{n}");
    let config = |role: Role| {
        let mut c = point::Config::new(role, &mount, infra.tracker, vec![infra.stun]);
        c.bind = SocketAddr::from((LOOPBACK, 0));
        if role == Role::Relay {
            c.rate = rate;
        }
        c
    };
    let progress = Arc::new(Progress::default());
    let send = Arc::new(SendTimes::default());
    let base = Instant::now();
    let (connected_tx, connected_rx) = mpsc::channel();

    // The relay: feed a chunk per NeedData, from its driver thread.
    let relay_log = log.clone();
    let relay_send = send.clone();
    let feed_send = send.clone();
    let feed_source = source.clone();
    let relay = RunningPoint::start(
        Role::Relay,
        config(Role::Relay),
        (2 * n) as u8,
        move |event| match event {
            point::Event::SourceDone { .. } => {
                relay_send.done_ns.store(since(base), Ordering::Relaxed);
            }
            point::Event::Bound(_)
            | point::Event::Mapped(_)
            | point::Event::Candidates(_)
            | point::Event::Connected(_)
            | point::Event::Stopped => {}
            other => relay_log
                .lock()
                .unwrap()
                .push(format!("run {n} relay: {other:?}")),
        },
        move |remote| {
            let mut offset = 0usize;
            Box::new(move |_need_data| {
                if feed_send.started_ns.load(Ordering::Relaxed) == 0 {
                    feed_send.started_ns.store(since(base), Ordering::Relaxed);
                }
                if offset >= feed_source.len() {
                    let _ = remote.send(point::Command::EndOfSource);
                    return;
                }
                let end = (offset + CHUNK).min(feed_source.len());
                let _ = remote.send(point::Command::Feed(feed_source[offset..end].to_vec()));
                offset = end;
                if offset >= feed_source.len() {
                    let _ = remote.send(point::Command::EndOfSource);
                }
            })
        },
    )?;

    // The listener: count and check every Data, on its driver thread.
    let listener_log = log.clone();
    let data_progress = progress.clone();
    let data_source = source.clone();
    let listener = RunningPoint::start(
        Role::Listener,
        config(Role::Listener),
        (2 * n + 1) as u8,
        move |event| match event {
            point::Event::Connected(peer) => {
                let _ = connected_tx.send(peer);
            }
            point::Event::Bound(_)
            | point::Event::Mapped(_)
            | point::Event::Candidates(_)
            | point::Event::Stopped => {}
            other => listener_log
                .lock()
                .unwrap()
                .push(format!("run {n} listener: {other:?}")),
        },
        move |_remote| {
            Box::new(move |event| {
                if let point::Event::Data(data) = event {
                    data_progress.record(&data_source, &data, base);
                }
            })
        },
    );
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            let _ = relay.stop();
            return Err(e);
        }
    };
    let connected = connected_rx.recv_timeout(CONNECT_TIMEOUT);
    let connect_time = base.elapsed();
    let outcome = match connected {
        Ok(_) => Ok(finish(&progress, &send, base, s)),
        Err(_) => Err(format!(
            "the points did not connect within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    };
    let relay_stats = relay.stop();
    let listener_stats = listener.stop();
    let mut run = outcome?;
    let relay = relay_stats?;
    run.sender(&send, relay.datagrams_sent);
    Ok(FerryRun {
        run,
        relay,
        listener: listener_stats?,
        connect_time,
    })
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    })
}

/// `min / median / max` of `values`, `decimals` after the point.
fn spread(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match median(values) {
        Some(m) => format!("{min:.decimals$} / {m:.decimals$} / {max:.decimals$}"),
        None => "-".to_owned(),
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures, and the CPU count.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    format!("{} ({cpus} CPUs)", load.join(" "))
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
        .map_or_else(|_| "?".to_owned(), |v| v.trim().to_owned())
}

/// One line of the per-run table.
fn run_line(path: &str, round: usize, r: &Run, extra: &str) -> String {
    let mut line = format!(
        "{path:<12} {round:>3} {:>9.1} {:>11.0} {:>7.2} {:>11.0} {:>8.1} {:>8.2}",
        r.goodput_mbs(),
        r.datagrams_per_s(),
        r.loss_percent(),
        r.sent_per_s(),
        r.span.as_secs_f64() * 1e3,
        r.max_gap.as_secs_f64() * 1e3,
    );
    if r.corrupt > 0 || r.out_of_order > 0 {
        let _ = write!(
            line,
            "  corrupt {} out-of-order {}",
            r.corrupt, r.out_of_order
        );
    }
    if r.timed_out {
        line.push_str("  TIMED OUT");
    }
    line + extra
}

fn main() {
    // `cargo test --benches` lists targets; run only under `cargo bench`.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let wall = Instant::now();
    let mib = env("FERRY_BENCH_MR_MIB", 64).max(1);
    let s = Settings {
        pieces: (mib << 20) / MAX_DATA,
        repeat: env("FERRY_BENCH_MR_REPEAT", 3).max(1),
        paced_percent: env("FERRY_BENCH_MR_PACED", 80),
        timeout: Duration::from_secs(env("FERRY_BENCH_MR_TIMEOUT", 30).max(1) as u64),
    };
    let paths =
        std::env::var("FERRY_BENCH_MR_PATHS").unwrap_or_else(|_| "raw,ferry,paced".to_owned());
    let paths: Vec<&str> = paths.split(',').map(str::trim).collect();
    let source = make_source(s.pieces);
    let log: Log = Arc::default();

    println!(
        "mount relay benchmark: relay point -> listener point (core mount_relay::point, each on its own ferry_mio driver thread; tracker and STUN responder on two more) vs a raw std UdpSocket pair, over 127.0.0.1"
    );
    println!(
        "{} MiB per run = {} datagrams of {} data bytes + 8 header; {} round(s); receive buffers: system default on both (net.core.rmem_default = {}, wmem_default = {})",
        mib,
        s.pieces,
        MAX_DATA,
        s.repeat,
        sysctl("rmem_default"),
        sysctl("wmem_default"),
    );
    println!("load average before: {}", load_average());

    let infra = match Infra::start(&log) {
        Ok(i) => i,
        Err(e) => {
            println!("cannot start the tracker / STUN responder: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "tracker on {}, STUN responder on {}",
        infra.tracker, infra.stun
    );

    let mut raw: Vec<Run> = Vec::new();
    let mut ferry: Vec<FerryRun> = Vec::new();
    let mut paced: Vec<FerryRun> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    let mut runs = 0usize;
    let listener_extra = |f: &FerryRun| {
        format!(
            "  connect {:.2} s; listener rx {} dg / {} B, bad_crc {}, ignored {}; relay sent {} dg",
            f.connect_time.as_secs_f64(),
            f.listener.datagrams_received,
            f.listener.bytes_received,
            f.listener.bad_crc,
            f.listener.ignored,
            f.relay.datagrams_sent,
        )
    };
    for round in 1..=s.repeat {
        if paths.contains(&"raw") {
            match raw_run(&source, &s) {
                Ok(r) => {
                    lines.push(run_line("raw", round, &r, ""));
                    raw.push(r);
                }
                Err(e) => failures.push(format!("raw, round {round}: {e}")),
            }
        }
        if !paths.contains(&"ferry") {
            continue;
        }
        runs += 1;
        match ferry_run(&infra, &source, &s, runs, None, &log) {
            Ok(f) => {
                lines.push(run_line("ferry", round, &f.run, &listener_extra(&f)));
                ferry.push(f);
            }
            Err(e) => failures.push(format!("ferry, round {round}: {e}")),
        }
    }
    let ferry_goodput: Vec<f64> = ferry.iter().map(|f| f.run.goodput_mbs()).collect();
    let rate = median(&ferry_goodput)
        .filter(|_| s.paced_percent > 0 && paths.contains(&"paced"))
        .map(|mbs| (mbs * 1e6 * s.paced_percent as f64 / 100.0) as u64)
        .filter(|r| *r > 0);
    if let Some(rate) = rate {
        for round in 1..=s.repeat {
            runs += 1;
            match ferry_run(&infra, &source, &s, runs, Some(rate), &log) {
                Ok(f) => {
                    lines.push(run_line("ferry paced", round, &f.run, &listener_extra(&f)));
                    paced.push(f);
                }
                Err(e) => failures.push(format!("ferry paced, round {round}: {e}")),
            }
        }
    }

    println!();
    println!(
        "{:<12} {:>3} {:>9} {:>11} {:>7} {:>11} {:>8} {:>8}",
        "run", "#", "MB/s", "dgrams/s", "loss %", "sent dg/s", "span ms", "gap ms"
    );
    for l in &lines {
        println!("{l}");
    }

    println!();
    println!(
        "{:<24} {:>26} {:>30} {:>22}",
        "min / median / max", "goodput MB/s", "datagrams/s received", "loss %"
    );
    let paced_label = rate.map_or_else(
        || "ferry paced".to_owned(),
        |r| format!("ferry paced {:.1} MB/s", r as f64 / 1e6),
    );
    let ferry_runs: Vec<Run> = ferry.iter().map(|f| f.run).collect();
    let paced_runs: Vec<Run> = paced.iter().map(|f| f.run).collect();
    let groups: [(&str, &[Run]); 3] = [
        ("raw", &raw),
        ("ferry (unpaced)", &ferry_runs),
        (&paced_label, &paced_runs),
    ];
    for (name, runs) in groups {
        if runs.is_empty() {
            continue;
        }
        let goodput: Vec<f64> = runs.iter().map(Run::goodput_mbs).collect();
        let dps: Vec<f64> = runs.iter().map(Run::datagrams_per_s).collect();
        let loss: Vec<f64> = runs.iter().map(Run::loss_percent).collect();
        println!(
            "{name:<24} {:>26} {:>30} {:>22}",
            spread(&goodput, 1),
            spread(&dps, 0),
            spread(&loss, 2)
        );
    }

    println!();
    let med = |runs: &[Run], f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let verdict = |r: Option<f64>| match r {
        Some(r) if r >= TARGET => format!("{r:.2} (target >= {TARGET}: met)"),
        Some(r) => format!("{r:.2} (target >= {TARGET}: MISSED)"),
        None => "- (n/a)".to_owned(),
    };
    println!(
        "ferry/raw, medians: goodput {}; datagrams/s {}",
        verdict(ratio(
            med(&ferry_runs, Run::goodput_mbs),
            med(&raw, Run::goodput_mbs)
        )),
        verdict(ratio(
            med(&ferry_runs, Run::datagrams_per_s),
            med(&raw, Run::datagrams_per_s)
        )),
    );
    if !paced_runs.is_empty() {
        println!(
            "ferry paced/raw, medians: goodput {:.2}; loss {:.2} %",
            ratio(
                med(&paced_runs, Run::goodput_mbs),
                med(&raw, Run::goodput_mbs)
            )
            .unwrap_or(f64::NAN),
            med(&paced_runs, Run::loss_percent).unwrap_or(f64::NAN),
        );
    }

    if !failures.is_empty() {
        println!();
        println!("failures:");
        for f in &failures {
            println!("  {f}");
        }
    }
    let log = log.lock().unwrap().clone();
    if !log.is_empty() {
        println!();
        println!("point/tracker events during the run:");
        for l in log.iter().take(20) {
            println!("  {l}");
        }
        if log.len() > 20 {
            println!("  ... and {} more", log.len() - 20);
        }
    }
    println!();
    println!("load average after: {}", load_average());
    drop(infra);
    println!("wall time: {:.1} s", wall.elapsed().as_secs_f64());

    // The checks the bench stands for: no bad CRC, no corrupted byte, no failed run.
    let bad_crc: u64 = ferry.iter().chain(&paced).map(|f| f.listener.bad_crc).sum();
    let corrupt: u64 = raw
        .iter()
        .chain(&ferry_runs)
        .chain(&paced_runs)
        .map(|r| r.corrupt)
        .sum();
    assert_eq!(bad_crc, 0, "the listener saw datagrams with a bad CRC");
    assert_eq!(
        corrupt, 0,
        "a receiver got bytes that differ from the source"
    );
    assert!(failures.is_empty(), "some runs failed");
}
