//! Port relay throughput, ferry (pool, event, multiplex) vs direct and vs socat, in one run.
//!
//! ```text
//! cargo bench -p ferry-conformance --bench port_relay
//! FERRY_BENCH_PR_MIB=64 FERRY_BENCH_PR_REPEAT=1 FERRY_BENCH_PR_REDIS_N=20000 cargo bench -p ferry-conformance --bench port_relay
//! FERRY_BENCH_PR_PATHS=direct,event FERRY_BENCH_PR_REDIS_REPEAT=10 cargo bench -p ferry-conformance --bench port_relay
//! ```
//!
//! Two local servers on 127.0.0.1: a sink (a std TCP server here, a thread per
//! connection: it reads an 8-byte length, that many bytes in 256 KiB reads,
//! then answers one byte) and `redis-server --save '' --appendonly no` (a child
//! process). Each is reached over five paths:
//!
//! - `direct`: the server's own port;
//! - `socat`: `socat TCP-LISTEN:<p>,fork,reuseaddr,bind=127.0.0.1,backlog=128 TCP:127.0.0.1:<server>`,
//!   a naive relay (a process per user, copying with read/write). `backlog=128`
//!   is what ferry's (mio's) listeners use; socat's default of 5 overflows when
//!   redis-benchmark opens 50 connections at once (`nstat TcpExtListenOverflows`),
//!   and now and then a connection then stalls for longer than the timeout;
//! - `pool`, `event`, `multiplex`: a port relay (`ferry_core::port_relay::server::Server`,
//!   default config, on its own `ferry_mio` driver thread) and a forwarder
//!   (`forwarder::Forwarder`, default config, on another driver thread, as two
//!   processes would be) exposing the server; the client uses the public port.
//!   One relay per protocol, one forwarder per server.
//!
//! Workloads, run path after path in rounds so that load from elsewhere on the
//! machine spreads over all paths:
//!
//! - bulk: one connection writes `FERRY_BENCH_PR_MIB` MiB (default 512) to the
//!   sink, timed from the first byte to the sink's answer (every byte arrived);
//!   then `FERRY_BENCH_PR_CONNS` connections (default 4) write that much in all,
//!   in parallel. Best of `FERRY_BENCH_PR_REPEAT` rounds (default 3).
//! - redis: `redis-benchmark -t set,get -n FERRY_BENCH_PR_REDIS_N -c FERRY_BENCH_PR_REDIS_C -q`
//!   (defaults 100000 and 50); best of `FERRY_BENCH_PR_REDIS_REPEAT` rounds (default 2).
//!
//! `FERRY_BENCH_PR_PATHS` (default `direct,socat,pool,event,multiplex`) picks
//! the paths; `FERRY_BENCH_PR_MIB=0` or `FERRY_BENCH_PR_REDIS_REPEAT=0` skips a
//! workload. Every transfer and every redis-benchmark run is bounded by
//! `FERRY_BENCH_PR_TIMEOUT` seconds (default 60; a bulk connection also fails
//! after 10 s without progress); one that does not finish is reported as a
//! FAIL, with what it had done, and left out of the figures. Child processes
//! are killed when the bench ends, also on a panic. The load average is printed
//! before and after: on a shared machine, compare runs with that in mind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary: its output is the point

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command as Process, Stdio};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ferry_conformance::bench::env_usize as env;
use ferry_core::port_relay::{Protocol, forwarder, server};

/// The size of the bulk client's writes and of the sink's reads.
const CHUNK: usize = 256 << 10;
/// A bulk connection that moves no byte for this long has stalled.
const NO_PROGRESS: Duration = Duration::from_secs(10);
/// The ratios the issue asks for.
const POOL_EVENT_VS_SOCAT: f64 = 1.5;
const POOL_EVENT_VS_DIRECT: f64 = 0.7;
const MULTIPLEX_VS_DIRECT: f64 = 0.5;

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

#[derive(Clone, Copy)]
struct Settings {
    bulk_bytes: u64,
    conns: usize,
    repeat: usize,
    redis_n: usize,
    redis_c: usize,
    redis_repeat: usize,
    timeout: Duration,
}

/// A child process, killed when dropped (also on a panic).
struct ChildGuard {
    name: String,
    child: Child,
}

impl ChildGuard {
    fn spawn(name: &str, command: &mut Process) -> Result<ChildGuard, String> {
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(ChildGuard {
            name: name.to_owned(),
            child,
        })
    }

    /// Fails if the child has already exited.
    fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited: {status}", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now (the OS's pick; a race we accept).
fn free_port() -> u16 {
    TcpListener::bind((LOOPBACK, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Wait until `addr` accepts a connection (and close it), bounded.
fn wait_listening(addr: SocketAddr, child: &mut ChildGuard) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(());
        }
        child.check_running()?;
        if Instant::now() > deadline {
            return Err(format!("{} does not listen on {addr}", child.name));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The bulk sink: per connection, an 8-byte length, that many bytes, one byte back.
fn start_sink() -> SocketAddr {
    let listener = TcpListener::bind((LOOPBACK, 0)).expect("sink bind");
    let addr = listener.local_addr().unwrap();
    thread::Builder::new()
        .name("sink".to_owned())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = thread::Builder::new()
                    .name("sink-conn".to_owned())
                    .spawn(move || sink_conn(stream));
            }
        })
        .expect("sink thread");
    addr
}

fn sink_conn(mut stream: TcpStream) {
    // Probes (`wait_listening`) close at once; a stalled transfer gives up.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let mut header = [0u8; 8];
    if stream.read_exact(&mut header).is_err() {
        return;
    }
    let mut left = u64::from_le_bytes(header);
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        match stream.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n as u64,
        }
    }
    let _ = stream.write_all(b"k");
    // Wait for the client to close, so that our close never resets its read.
    let _ = stream.read(&mut buf[..1]);
}

/// Write `bytes` (after the length) to the sink through `stream`, then wait for its answer.
fn push(
    mut stream: TcpStream,
    bytes: u64,
    barrier: &Barrier,
    deadline: Instant,
) -> Result<(), String> {
    stream.set_write_timeout(Some(NO_PROGRESS)).unwrap();
    stream.set_read_timeout(Some(NO_PROGRESS)).unwrap();
    let buf = vec![0xa5u8; CHUNK];
    barrier.wait();
    let mut sent = 0u64;
    let stalled = |sent: u64, what: &str| format!("{what} after {sent} of {bytes} bytes written");
    stream
        .write_all(&bytes.to_le_bytes())
        .map_err(|e| stalled(0, &format!("write: {e}")))?;
    while sent < bytes {
        let n = buf
            .len()
            .min(usize::try_from(bytes - sent).unwrap_or(usize::MAX));
        stream
            .write_all(&buf[..n])
            .map_err(|e| stalled(sent, &format!("write: {e}")))?;
        sent += n as u64;
        if Instant::now() > deadline {
            return Err(stalled(sent, "timed out"));
        }
    }
    let mut answer = [0u8];
    loop {
        match stream.read(&mut answer) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(stalled(sent, "closed before the sink's answer")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stalled(sent, &format!("no answer from the sink: {e}"))),
        }
    }
}

/// Move `total` bytes to the sink at `addr` over `conns` parallel connections;
/// returns the rate in MB/s (10^6 bytes).
fn bulk(addr: SocketAddr, total: u64, conns: usize, timeout: Duration) -> Result<f64, String> {
    let streams = (0..conns)
        .map(|_| TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let share = total / conns as u64;
    let barrier = Arc::new(Barrier::new(conns + 1));
    let workers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let barrier = barrier.clone();
            thread::spawn(move || push(stream, share, &barrier, Instant::now() + timeout))
        })
        .collect();
    barrier.wait();
    let began = Instant::now();
    let mut errors = Vec::new();
    for (i, w) in workers.into_iter().enumerate() {
        if let Err(e) = w.join().expect("bulk worker") {
            errors.push(format!("conn {i}: {e}"));
        }
    }
    let elapsed = began.elapsed();
    if errors.is_empty() {
        Ok((share * conns as u64) as f64 / elapsed.as_secs_f64() / 1e6)
    } else {
        Err(errors.join("; "))
    }
}

/// `redis-server` on a free loopback port, answering PING.
fn start_redis() -> Result<(SocketAddr, ChildGuard), String> {
    let port = free_port();
    let mut child = ChildGuard::spawn(
        "redis-server",
        Process::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let addr = SocketAddr::from((LOOPBACK, port));
    wait_listening(addr, &mut child)?;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("redis: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PING\r\n")
        .map_err(|e| format!("redis: {e}"))?;
    let mut pong = [0u8; 7];
    s.read_exact(&mut pong).map_err(|e| format!("redis: {e}"))?;
    if &pong != b"+PONG\r\n" {
        return Err(format!(
            "redis answered {:?}",
            String::from_utf8_lossy(&pong)
        ));
    }
    Ok((addr, child))
}

/// socat relaying a fresh loopback port to `target`.
fn start_socat(target: SocketAddr) -> Result<(SocketAddr, ChildGuard), String> {
    let mut last = String::new();
    for _ in 0..3 {
        let port = free_port();
        let mut child = ChildGuard::spawn(
            "socat",
            Process::new("socat")
                .arg(format!(
                    "TCP-LISTEN:{port},fork,reuseaddr,bind=127.0.0.1,backlog=128"
                ))
                .arg(format!("TCP:{target}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        let addr = SocketAddr::from((LOOPBACK, port));
        match wait_listening(addr, &mut child) {
            Ok(()) => return Ok((addr, child)),
            Err(e) => last = e, // e.g. the port was taken meanwhile: try another
        }
    }
    Err(last)
}

/// What the relays and forwarders reported that a healthy run would not.
type Log = Arc<Mutex<Vec<String>>>;

/// One protocol's relay and the forwarders exposing the sink and redis through it.
struct Ferry {
    protocol: Protocol,
    relay: Option<ferry_mio::Handle<server::Command>>,
    forwarders: Vec<ferry_mio::Handle<forwarder::Command>>,
    log: Log,
}

impl Ferry {
    fn start(protocol: Protocol, seed: u8, log: &Log) -> Result<(Ferry, SocketAddr), String> {
        let (tx, rx) = mpsc::channel();
        let relay_log = log.clone();
        let relay = ferry_mio::spawn(
            server::Server::new(server::Config::default(), [seed; 32]),
            move |event| match event {
                server::Event::Listening { local, .. } => {
                    let _ = tx.send(local);
                }
                server::Event::ClientReady { .. } => {}
                other => relay_log
                    .lock()
                    .unwrap()
                    .push(format!("{protocol} relay: {other:?}")),
            },
        )
        .map_err(|e| format!("spawn relay: {e}"))?;
        relay
            .send(server::Command::Listen(SocketAddr::from((LOOPBACK, 0))))
            .map_err(|e| format!("relay: {e}"))?;
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| format!("{protocol} relay does not listen"))?;
        let ferry = Ferry {
            protocol,
            relay: Some(relay),
            forwarders: Vec::new(),
            log: log.clone(),
        };
        Ok((ferry, addr))
    }

    /// Expose `local` through the relay at `relay`; returns the public address.
    fn expose(&mut self, relay: SocketAddr, local: SocketAddr) -> Result<SocketAddr, String> {
        let protocol = self.protocol;
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        let handle = ferry_mio::spawn(
            forwarder::Forwarder::new(forwarder::Config::new(relay, local, protocol)),
            move |event| match event {
                forwarder::Event::PublicPort { port } => {
                    let _ = tx.send(port);
                }
                other => log
                    .lock()
                    .unwrap()
                    .push(format!("{protocol} forwarder of {local}: {other:?}")),
            },
        )
        .map_err(|e| format!("spawn forwarder: {e}"))?;
        handle
            .send(forwarder::Command::Start)
            .map_err(|e| format!("forwarder: {e}"))?;
        self.forwarders.push(handle);
        let port = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| format!("{protocol} forwarder got no public port"))?;
        Ok(SocketAddr::from((LOOPBACK, port)))
    }
}

impl Drop for Ferry {
    fn drop(&mut self) {
        let mut joins = Vec::new();
        for f in self.forwarders.drain(..) {
            let _ = f.send(forwarder::Command::Stop);
            f.shutdown();
            joins.push(thread::spawn(move || f.join()));
        }
        if let Some(relay) = self.relay.take() {
            let _ = relay.send(server::Command::Shutdown);
            relay.shutdown();
            joins.push(thread::spawn(move || relay.join()));
        }
        // Bounded: a driver that does not stop is reported, not waited for.
        let deadline = Instant::now() + Duration::from_secs(5);
        for j in joins {
            while !j.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if !j.is_finished() {
                println!(
                    "warning: a {} driver did not stop within 5 s",
                    self.protocol
                );
            } else if let Ok(Err(e)) = j.join() {
                println!("warning: a {} driver ended with {e}", self.protocol);
            }
        }
    }
}

/// One redis-benchmark test's result.
#[derive(Clone, Copy)]
struct Redis {
    rps: f64,
    p50_ms: f64,
}

/// The `SET:`/`GET:` summary lines of `redis-benchmark -q`.
fn parse_redis(out: &str, test: &str) -> Option<Redis> {
    let line = out
        .split(['\r', '\n'])
        .map(str::trim)
        .rfind(|l| l.starts_with(test) && l.contains("requests per second"))?;
    let rest = line.strip_prefix(test)?.trim_start_matches(':').trim();
    let rps = rest.split_whitespace().next()?.parse().ok()?;
    let p50_ms = rest
        .split("p50=")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(f64::NAN);
    Some(Redis { rps, p50_ms })
}

/// The last progress line redis-benchmark printed (to show where a stall was).
fn last_progress(out: &str) -> String {
    out.split(['\r', '\n'])
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("(nothing)")
        .to_owned()
}

/// `redis-benchmark -t set,get` against `addr`, bounded by `timeout`.
fn redis_benchmark(addr: SocketAddr, s: Settings) -> Result<(Redis, Redis), String> {
    let mut child = ChildGuard::spawn(
        "redis-benchmark",
        Process::new("redis-benchmark")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
            .args(["-t", "set,get", "-n", &s.redis_n.to_string()])
            .args(["-c", &s.redis_c.to_string(), "-q"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.child.stdout.take().map(|p| Box::new(p) as _),
        child.child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for mut pipe in pipes.into_iter().flatten() {
        let output = output.clone();
        readers.push(thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }));
    }
    let began = Instant::now();
    let status = loop {
        match child.child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if began.elapsed() > s.timeout => break None,
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("redis-benchmark: {e}")),
        }
    };
    drop(child); // kills it if still running, which closes the pipes
    for r in readers {
        let _ = r.join();
    }
    let out = String::from_utf8_lossy(&output.lock().unwrap()).into_owned();
    let Some(status) = status else {
        return Err(format!(
            "timed out after {} s; last output: {:?}",
            s.timeout.as_secs(),
            last_progress(&out)
        ));
    };
    match (parse_redis(&out, "SET"), parse_redis(&out, "GET")) {
        (Some(set), Some(get)) if status.success() => Ok((set, get)),
        _ => Err(format!(
            "redis-benchmark {status}; last output: {:?}",
            last_progress(&out)
        )),
    }
}

/// A measurement: the best of its rounds, or why it could not be made.
#[derive(Clone)]
enum Cell {
    Value(f64),
    Failed(String),
}

impl Cell {
    fn value(&self) -> Option<f64> {
        match self {
            Cell::Value(v) => Some(*v),
            Cell::Failed(_) => None,
        }
    }

    /// Keep the best round; one failed round marks the cell failed (a stall is news).
    fn record(slot: &mut Option<Cell>, result: Result<f64, String>) {
        *slot = Some(match (slot.take(), result) {
            (Some(Cell::Failed(e)), _) | (_, Err(e)) => Cell::Failed(e),
            (Some(Cell::Value(a)), Ok(b)) => Cell::Value(a.max(b)),
            (None, Ok(b)) => Cell::Value(b),
        });
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Value(v) => write!(f, "{v:.0}"),
            Cell::Failed(_) => f.write_str("FAIL"),
        }
    }
}

/// One path to the two servers and its figures.
struct Path {
    name: &'static str,
    sink: Result<SocketAddr, String>,
    redis: Result<SocketAddr, String>,
    /// Bulk MB/s: one connection, then `conns`.
    bulk: [Option<Cell>; 2],
    /// redis-benchmark requests/s: SET, GET; and their p50 in ms (of the best round).
    rps: [Option<Cell>; 2],
    p50_ms: [f64; 2],
}

impl Path {
    fn new(
        name: &'static str,
        sink: Result<SocketAddr, String>,
        redis: Result<SocketAddr, String>,
    ) -> Path {
        Path {
            name,
            sink,
            redis,
            bulk: [None, None],
            rps: [None, None],
            p50_ms: [f64::NAN; 2],
        }
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute figures, and the CPU count.
fn load_average() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    format!("{} ({cpus} CPUs)", load.join(" "))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? / b?)
}

fn show_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"))
}

fn cell_value(c: &Option<Cell>) -> Option<f64> {
    c.as_ref().and_then(Cell::value)
}

fn show_cell(c: &Option<Cell>) -> String {
    c.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn main() {
    // `cargo test --benches` lists targets; run only under `cargo bench`.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let s = Settings {
        bulk_bytes: env("FERRY_BENCH_PR_MIB", 512) as u64 * (1 << 20),
        conns: env("FERRY_BENCH_PR_CONNS", 4).max(1),
        repeat: env("FERRY_BENCH_PR_REPEAT", 3).max(1),
        redis_n: env("FERRY_BENCH_PR_REDIS_N", 100_000),
        redis_c: env("FERRY_BENCH_PR_REDIS_C", 50).max(1),
        redis_repeat: env("FERRY_BENCH_PR_REDIS_REPEAT", 2),
        timeout: Duration::from_secs(env("FERRY_BENCH_PR_TIMEOUT", 60).max(1) as u64),
    };
    let wanted = std::env::var("FERRY_BENCH_PR_PATHS")
        .unwrap_or_else(|_| "direct,socat,pool,event,multiplex".to_owned());
    let wanted: Vec<&str> = wanted.split(',').map(str::trim).collect();

    // Everything that must die with the bench lives in these two.
    let mut children: Vec<ChildGuard> = Vec::new();
    let mut ferries: Vec<Ferry> = Vec::new();
    let log: Log = Arc::default();

    let sink = start_sink();
    let redis = match start_redis() {
        Ok((addr, child)) => {
            children.push(child);
            Ok(addr)
        }
        Err(e) => Err(e),
    };
    let mut paths = Vec::new();
    if wanted.contains(&"direct") {
        paths.push(Path::new("direct", Ok(sink), redis.clone()));
    }
    if wanted.contains(&"socat") {
        let mut via_socat = |target: Result<SocketAddr, String>| {
            let (addr, child) = start_socat(target?)?;
            children.push(child);
            Ok(addr)
        };
        let (sink, redis) = (via_socat(Ok(sink)), via_socat(redis.clone()));
        paths.push(Path::new("socat", sink, redis));
    }
    for (seed, (name, protocol)) in [
        ("pool", Protocol::Pool),
        ("event", Protocol::Event),
        ("multiplex", Protocol::Multiplex),
    ]
    .into_iter()
    .enumerate()
    {
        if !wanted.contains(&name) {
            continue;
        }
        match Ferry::start(protocol, seed as u8 + 1, &log) {
            Ok((mut ferry, relay)) => {
                let sink = ferry.expose(relay, sink);
                let redis = redis.clone().and_then(|r| ferry.expose(relay, r));
                ferries.push(ferry);
                paths.push(Path::new(name, sink, redis));
            }
            Err(e) => paths.push(Path::new(name, Err(e.clone()), Err(e))),
        }
    }

    println!(
        "port relay benchmark: ferry = core port_relay Server + Forwarder (default configs), each on its own ferry_mio driver thread in this process"
    );
    println!("load average before: {}", load_average());
    println!(
        "bulk: {} MiB to a sink over 1 connection, then over {} in parallel, best of {}; redis: redis-benchmark -t set,get -n {} -c {} -q, best of {}",
        s.bulk_bytes >> 20,
        s.conns,
        s.repeat,
        s.redis_n,
        s.redis_c,
        s.redis_repeat
    );
    let mut failures = Vec::new();
    let bulk_rounds = if s.bulk_bytes == 0 { 0 } else { s.repeat };
    for round in 0..bulk_rounds {
        for p in &mut paths {
            for (i, conns) in [1, s.conns].into_iter().enumerate() {
                let result = match &p.sink {
                    Ok(addr) => bulk(*addr, s.bulk_bytes, conns, s.timeout),
                    Err(e) => Err(e.clone()),
                };
                if let Err(e) = &result {
                    failures.push(format!(
                        "bulk {} conn(s), {}, round {}: {e}",
                        conns,
                        p.name,
                        round + 1
                    ));
                }
                Cell::record(&mut p.bulk[i], result);
            }
        }
    }
    for round in 0..s.redis_repeat {
        for p in &mut paths {
            let result = match &p.redis {
                Ok(addr) => redis_benchmark(*addr, s),
                Err(e) => Err(e.clone()),
            };
            match result {
                Ok((set, get)) => {
                    for (i, r) in [set, get].into_iter().enumerate() {
                        if cell_value(&p.rps[i]).is_none_or(|best| r.rps > best) {
                            p.p50_ms[i] = r.p50_ms;
                        }
                        Cell::record(&mut p.rps[i], Ok(r.rps));
                    }
                }
                Err(e) => {
                    failures.push(format!(
                        "redis-benchmark, {}, round {}: {e}",
                        p.name,
                        round + 1
                    ));
                    for slot in &mut p.rps {
                        Cell::record(slot, Err(e.clone()));
                    }
                }
            }
        }
    }

    let find = |name: &str| paths.iter().find(|p| p.name == name);
    let direct = find("direct");
    let socat = find("socat");
    let base_bulk = |p: Option<&Path>, i: usize| p.and_then(|p| cell_value(&p.bulk[i]));
    let base_rps = |p: Option<&Path>, i: usize| p.and_then(|p| cell_value(&p.rps[i]));

    println!();
    println!(
        "{:<10} {:>12} {:>8} {:>8} {:>14} {:>8} {:>8}",
        "bulk",
        "1 conn MB/s",
        "x direct",
        "x socat",
        format!("{} conns MB/s", s.conns),
        "x direct",
        "x socat"
    );
    for p in &paths {
        let mut line = format!("{:<10}", p.name);
        for i in 0..2 {
            let v = cell_value(&p.bulk[i]);
            let width = if i == 0 { 12 } else { 14 };
            line += &format!(
                " {:>width$} {:>8} {:>8}",
                show_cell(&p.bulk[i]),
                show_ratio(ratio(v, base_bulk(direct, i))),
                show_ratio(ratio(v, base_bulk(socat, i)))
            );
        }
        println!("{line}");
    }
    println!();
    println!(
        "{:<10} {:>9} {:>8} {:>8} {:>7} {:>9} {:>8} {:>8} {:>7}",
        "redis",
        "SET rps",
        "x direct",
        "x socat",
        "p50 ms",
        "GET rps",
        "x direct",
        "x socat",
        "p50 ms"
    );
    for p in &paths {
        let mut line = format!("{:<10}", p.name);
        for i in 0..2 {
            let v = cell_value(&p.rps[i]);
            let p50 = match v {
                Some(_) if p.p50_ms[i].is_finite() => format!("{:.3}", p.p50_ms[i]),
                _ => "-".to_owned(),
            };
            line += &format!(
                " {:>9} {:>8} {:>8} {p50:>7}",
                show_cell(&p.rps[i]),
                show_ratio(ratio(v, base_rps(direct, i))),
                show_ratio(ratio(v, base_rps(socat, i))),
            );
        }
        println!("{line}");
    }

    println!();
    println!(
        "targets (the issue's: pool/event >= {POOL_EVENT_VS_SOCAT}x socat and >= {POOL_EVENT_VS_DIRECT}x direct; multiplex >= {MULTIPLEX_VS_DIRECT}x direct):"
    );
    let targets: [(&str, &str, f64); 5] = [
        ("pool", "socat", POOL_EVENT_VS_SOCAT),
        ("pool", "direct", POOL_EVENT_VS_DIRECT),
        ("event", "socat", POOL_EVENT_VS_SOCAT),
        ("event", "direct", POOL_EVENT_VS_DIRECT),
        ("multiplex", "direct", MULTIPLEX_VS_DIRECT),
    ];
    let conns_label = format!("bulk {}c", s.conns);
    for (name, base, want) in targets {
        let (Some(p), Some(b)) = (find(name), find(base)) else {
            continue;
        };
        let measures = [
            (
                "bulk 1c",
                ratio(cell_value(&p.bulk[0]), cell_value(&b.bulk[0])),
            ),
            (
                conns_label.as_str(),
                ratio(cell_value(&p.bulk[1]), cell_value(&b.bulk[1])),
            ),
            ("SET", ratio(cell_value(&p.rps[0]), cell_value(&b.rps[0]))),
            ("GET", ratio(cell_value(&p.rps[1]), cell_value(&b.rps[1]))),
        ];
        let verdicts: Vec<String> = measures
            .iter()
            .map(|(label, r)| match r {
                Some(r) if *r >= want => format!("{label} {r:.2} met"),
                Some(r) => format!("{label} {r:.2} MISSED"),
                None => format!("{label} - n/a"),
            })
            .collect();
        println!(
            "  {:<26} {}",
            format!("{name} >= {want}x {base}:"),
            verdicts.join(" | ")
        );
    }
    if !failures.is_empty() {
        println!();
        println!("failures (FAIL cells, left out of the figures):");
        for f in &failures {
            println!("  {f}");
        }
    }
    println!();
    println!("load average after: {}", load_average());
    let log = log.lock().unwrap().clone();
    if !log.is_empty() {
        println!();
        println!("relay/forwarder events during the run:");
        for l in log.iter().take(20) {
            println!("  {l}");
        }
        if log.len() > 20 {
            println!("  ... and {} more", log.len() - 20);
        }
    }
    drop(ferries);
    drop(children);
}
