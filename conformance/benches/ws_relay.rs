//! WebSocket relay fan-out throughput and latency, ferry vs a Python baseline, in one run.
//!
//! ```text
//! cargo bench -p ferry-conformance --bench ws_relay
//! FERRY_BENCH_WS_MSGS=20000 FERRY_BENCH_WS_PY_MSGS=5000 cargo bench -p ferry-conformance --bench ws_relay
//! FERRY_BENCH_WS_RELAYS=ferry cargo bench -p ferry-conformance --bench ws_relay
//! ```
//!
//! Two workloads of 64-byte text messages, each message starting with its send
//! time (decimal nanoseconds since a shared epoch, space-padded):
//!
//! - one room of 16 peers, each sending M messages: every message is delivered to
//!   the 15 others (16 x 15 x M deliveries);
//! - 64 rooms of 2 peers, each peer sending M messages to the other.
//!
//! Each runs against ferry (the `ferry_mio` driver and `ferry_core::ws_relay::Server`
//! with the default config, in this process, on 127.0.0.1:0) and against
//! `ws_baseline_relay.py`, a minimal relay on the Python `websockets` asyncio
//! server (a child process: `conformance/.venv/bin/python`, or `$FERRY_PYTHON`).
//! The client is the same for both: blocking `std` sockets, ferry_core's codec,
//! a sender thread (many frames per `write_all`) and a reader thread per peer.
//! Messages per peer: `FERRY_BENCH_WS_MSGS` (default 5000) for ferry,
//! `FERRY_BENCH_WS_PY_MSGS` (default 2000) for Python: compare rates, not totals.
//! `FERRY_BENCH_WS_RELAYS` (default `ferry,python`) picks the relays to run.
//! Latency is per delivery, send to receipt, under that full load; with the
//! window below it is mostly queueing (Little's law: in flight / rate).
//!
//! Flow control: a sender stays at most `FERRY_BENCH_WS_WINDOW` (default 256)
//! messages ahead of what the slowest other peer of its room has received (per
//! sender), so at most 15 x window x 66 bytes (250 KB by default) are in flight
//! to any receiver: under the relay's 4 MiB slow-consumer limit (WS-13). A
//! connection the relay closes is reported as an error, and each workload stops
//! at `FERRY_BENCH_WS_TIMEOUT` seconds (default 30), reported as INCOMPLETE
//! (its rate is then left out of the ratios and targets).
//!
//! Simplifications, fine for a benchmark on loopback: every peer sends the same
//! `Sec-WebSocket-Key` (the RFC 6455 sample) and masks with one fixed key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary: its output is the point

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use ferry_conformance::bench::env_usize as env;
use ferry_core::codec::websocket::{
    Message, MessageReader, OpCode, Role, accept_key, encode_frame,
};
use ferry_core::ws_relay::{Command, Config, Event, Server};

/// The sample key of RFC 6455 §1.3, sent by every peer (a benchmark needs no nonce).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// One masking key for every frame; RFC 6455 wants a fresh one per frame, which
/// matters against proxies, not for a loopback benchmark.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// The payload size of every benchmark message.
const SIZE: usize = 64;
/// Most frames per `write_all`.
const BATCH: usize = 256;
/// The default of `FERRY_BENCH_WS_WINDOW`.
const WINDOW: usize = 256;

#[derive(Clone, Copy)]
struct Workload {
    rooms: usize,
    peers: usize,
    messages: usize,
}

impl Workload {
    fn expected(&self) -> usize {
        self.rooms * self.peers * (self.peers - 1) * self.messages
    }
    fn label(&self) -> String {
        format!(
            "{}x{} peers, 64 B x {}",
            self.rooms, self.peers, self.messages
        )
    }
}

struct Outcome {
    deliveries: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    errors: Vec<String>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.deliveries as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&mut self, p: f64) -> u32 {
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0)
    }
}

/// An open WebSocket client connection: the socket, the reader, and bytes read
/// past the handshake response.
struct Peer {
    stream: TcpStream,
    reader: MessageReader,
    leftover: Vec<u8>,
}

fn text_frame(text: &[u8], out: &mut Vec<u8>) {
    encode_frame(OpCode::Text, true, Some(MASK), text, out);
}

/// Open `/v1?relayId=..&peerId=..` and check the 101 and its `Sec-WebSocket-Accept`.
fn connect(addr: SocketAddr, relay_id: &str, peer_id: &str) -> Result<Peer, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!(
        "GET /v1?relayId={relay_id}&peerId={peer_id} HTTP/1.1\r\nHost: {addr}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("handshake write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 8192 {
            return Err("handshake response head over 8 KiB".into());
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("handshake read: {e}"))?;
        if n == 0 {
            return Err("connection closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("handshake refused: {status}"));
    }
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, value)| value.trim().to_owned());
    if accept.as_deref() != Some(accept_key(KEY).as_str()) {
        return Err(format!("bad Sec-WebSocket-Accept: {accept:?}"));
    }
    Ok(Peer {
        stream,
        reader: MessageReader::new(Role::Client, 1 << 20),
        leftover: buf[head_end..].to_vec(),
    })
}

/// Block until `peer` receives the text `want` (other texts are skipped).
fn wait_for_text(peer: &mut Peer, want: &str) -> Result<(), String> {
    let mut pending = std::mem::take(&mut peer.leftover);
    let mut chunk = [0u8; 4096];
    loop {
        let mut read = 0;
        while read < pending.len() {
            let r = peer
                .reader
                .read(&pending[read..])
                .map_err(|e| e.to_string())?;
            read += r.consumed;
            match r.message {
                Some(Message::Text(t)) if t == want => {
                    peer.leftover = pending[read..].to_vec();
                    return Ok(());
                }
                Some(Message::Close(c)) => return Err(format!("closed by the relay: {c:?}")),
                _ => {}
            }
        }
        pending.clear();
        let n = peer
            .stream
            .read(&mut chunk)
            .map_err(|e| format!("waiting for {want:?}: {e}"))?;
        if n == 0 {
            return Err(format!("connection closed while waiting for {want:?}"));
        }
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// What the peers of one room have received, for the senders' flow control.
struct Room {
    received: Vec<AtomicUsize>,
    /// Senders waiting for `progressed`; readers skip the notification when none.
    waiting: AtomicUsize,
    /// A sender waits until it may send this many (or all it has left); readers
    /// notify when their count per sender crosses a multiple of it. Waking 15
    /// senders per read would cost more CPU than the relay itself.
    step: usize,
    lock: Mutex<()>,
    progressed: Condvar,
}

impl Room {
    /// How many messages peer `me` may have sent by now.
    fn allowance(&self, me: usize, window: usize) -> usize {
        let others = self.received.len() - 1;
        let slowest = (0..self.received.len())
            .filter(|&j| j != me)
            .map(|j| self.received[j].load(Ordering::Acquire))
            .min()
            .unwrap_or(0);
        slowest / others + window
    }
}

/// Send `messages` 64-byte texts, each starting with its send time, in batches.
fn sender(
    mut stream: TcpStream,
    me: usize,
    room: &Room,
    messages: usize,
    window: usize,
    epoch: Instant,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut batch = Vec::with_capacity(BATCH * (SIZE + 8));
    let mut payload = [b' '; SIZE];
    let mut sent = 0;
    while sent < messages {
        let allowed = {
            let mut guard = room.lock.lock().unwrap();
            loop {
                let allowed = room.allowance(me, window);
                let want = room.step.min(messages - sent);
                if allowed >= sent + want || stop.load(Ordering::Relaxed) {
                    break allowed;
                }
                room.waiting.fetch_add(1, Ordering::SeqCst);
                guard = room
                    .progressed
                    // Notifications come per step; the timeout covers the last partial one.
                    .wait_timeout(guard, Duration::from_millis(2))
                    .unwrap()
                    .0;
                room.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        };
        if stop.load(Ordering::Relaxed) {
            return Err(format!("stopped after sending {sent} of {messages}"));
        }
        batch.clear();
        for _ in 0..BATCH.min(messages - sent).min(allowed - sent) {
            let ts = epoch.elapsed().as_nanos() as u64;
            payload.fill(b' ');
            let mut cursor = &mut payload[..];
            write!(cursor, "{ts}").unwrap();
            text_frame(&payload, &mut batch);
            sent += 1;
        }
        stream
            .write_all(&batch)
            .map_err(|e| format!("write after {sent} of {messages}: {e}"))?;
    }
    Ok(())
}

/// Read until `expect` timestamped texts have arrived, recording each latency.
fn reader(
    mut peer: Peer,
    me: usize,
    room: &Room,
    expect: usize,
    epoch: Instant,
    stop: &AtomicBool,
) -> Result<Vec<u32>, (Vec<u32>, String)> {
    peer.stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut latencies = Vec::with_capacity(expect);
    let mut buf = vec![0u8; 256 << 10];
    let mut pending = std::mem::take(&mut peer.leftover);
    let mut notified = 0;
    loop {
        for message in peer.reader.messages(&pending) {
            match message {
                Ok(Message::Text(text)) => {
                    let digits = text.split(' ').next().unwrap_or_default();
                    // Other texts: the joins of later peers, the relay's `ping`.
                    if let Ok(ts) = digits.parse::<u64>() {
                        let now = epoch.elapsed().as_nanos() as u64;
                        latencies.push((now.saturating_sub(ts) / 1000) as u32);
                    }
                }
                Ok(Message::Close(close)) => {
                    let why = format!(
                        "closed by the relay after {} of {expect}: {close:?}",
                        latencies.len()
                    );
                    return Err((latencies, why));
                }
                Ok(_) => {}
                Err(e) => {
                    let why = format!("protocol error after {}: {e}", latencies.len());
                    return Err((latencies, why));
                }
            }
        }
        room.received[me].store(latencies.len(), Ordering::SeqCst);
        let level = latencies.len() / (room.received.len() - 1) / room.step;
        if level != notified && room.waiting.load(Ordering::SeqCst) > 0 {
            notified = level;
            drop(room.lock.lock().unwrap());
            room.progressed.notify_all();
        }
        if latencies.len() >= expect {
            return Ok(latencies);
        }
        pending.clear();
        match peer.stream.read(&mut buf) {
            Ok(0) if stop.load(Ordering::Relaxed) => {
                let why = format!("stopped after {} of {expect}", latencies.len());
                return Err((latencies, why));
            }
            Ok(0) => {
                let why = format!("connection closed after {} of {expect}", latencies.len());
                return Err((latencies, why));
            }
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Relaxed) {
                    let why = format!("stopped after {} of {expect}", latencies.len());
                    return Err((latencies, why));
                }
            }
            Err(e) => {
                let why = if stop.load(Ordering::Relaxed) {
                    format!("stopped after {} of {expect}", latencies.len())
                } else {
                    format!("read after {}: {e}", latencies.len())
                };
                return Err((latencies, why));
            }
        }
    }
}

/// Connect every peer of `w` to the relay at `addr`, each room checked complete:
/// each new peer sends `join` and the room's first peer waits for it, so every
/// earlier peer is in the room and the new one is too.
fn join_rooms(addr: SocketAddr, w: Workload, tag: &str) -> Result<Vec<Vec<Peer>>, String> {
    let mut rooms = Vec::new();
    for r in 0..w.rooms {
        let relay_id = format!("{tag}-{r}");
        let mut peers = vec![connect(addr, &relay_id, "p0")?];
        for p in 1..w.peers {
            let mut peer = connect(addr, &relay_id, &format!("p{p}"))?;
            let join = format!("join {p}");
            let mut frame = Vec::new();
            text_frame(join.as_bytes(), &mut frame);
            peer.stream
                .write_all(&frame)
                .map_err(|e| format!("join write: {e}"))?;
            wait_for_text(&mut peers[0], &join)?;
            peers.push(peer);
        }
        rooms.push(peers);
    }
    Ok(rooms)
}

/// Run `w` against the relay at `addr`.
fn drive(addr: SocketAddr, w: Workload, tag: &str) -> Result<Outcome, String> {
    let window = env("FERRY_BENCH_WS_WINDOW", WINDOW).max(1);
    let timeout = Duration::from_secs(env("FERRY_BENCH_WS_TIMEOUT", 30) as u64);
    let peer_rooms = join_rooms(addr, w, tag)?;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(w.rooms * w.peers * 2 + 1));
    let (done_tx, done_rx) = mpsc::channel();
    let mut streams = Vec::new();
    let mut senders = Vec::new();
    for peers in peer_rooms {
        let room = Arc::new(Room {
            received: (0..w.peers).map(|_| AtomicUsize::new(0)).collect(),
            waiting: AtomicUsize::new(0),
            step: BATCH.min(window.div_ceil(4)),
            lock: Mutex::new(()),
            progressed: Condvar::new(),
        });
        for (me, peer) in peers.into_iter().enumerate() {
            let tx_stream = peer.stream.try_clone().unwrap();
            streams.push(peer.stream.try_clone().unwrap());
            let expect = (w.peers - 1) * w.messages;
            let (room_r, stop_r, barrier_r, done) =
                (room.clone(), stop.clone(), barrier.clone(), done_tx.clone());
            thread::spawn(move || {
                barrier_r.wait();
                let result = reader(peer, me, &room_r, expect, epoch, &stop_r);
                let _ = done.send((result, Instant::now()));
            });
            let (room_s, stop_s, barrier_s) = (room.clone(), stop.clone(), barrier.clone());
            senders.push(thread::spawn(move || {
                barrier_s.wait();
                sender(tx_stream, me, &room_s, w.messages, window, epoch, &stop_s)
            }));
        }
    }
    drop(done_tx);
    barrier.wait();
    let start = Instant::now();
    let deadline = start + timeout;
    let mut outcome = Outcome {
        deliveries: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::with_capacity(w.expected()),
        errors: Vec::new(),
    };
    let mut last = start;
    for _ in 0..w.rooms * w.peers {
        let wait = deadline.saturating_duration_since(Instant::now());
        let (result, at) = match done_rx.recv_timeout(wait) {
            Ok(done) => done,
            Err(_) if !stop.swap(true, Ordering::Relaxed) => {
                // Past the deadline: unblock every reader and sender.
                outcome
                    .errors
                    .insert(0, format!("deadline of {} s passed", timeout.as_secs()));
                for s in &streams {
                    let _ = s.shutdown(Shutdown::Both);
                }
                done_rx.recv().expect("a reader result")
            }
            Err(_) => done_rx.recv().expect("a reader result"),
        };
        last = last.max(at);
        match result {
            Ok(latencies) => outcome.latencies_us.extend(latencies),
            Err((latencies, why)) => {
                outcome.latencies_us.extend(latencies);
                outcome.errors.push(why);
                // One failed peer starves the senders of its room: stop them all.
                if !stop.swap(true, Ordering::Relaxed) {
                    for s in &streams {
                        let _ = s.shutdown(Shutdown::Both);
                    }
                }
            }
        }
    }
    outcome.elapsed = last - start;
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        match s.join() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => outcome.errors.push(format!("sender: {why}")),
            Err(_) => outcome.errors.push("sender panicked".into()),
        }
    }
    outcome.deliveries = outcome.latencies_us.len();
    Ok(outcome)
}

fn start_ferry() -> (SocketAddr, ferry_mio::Handle<Command>) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let handle = ferry_mio::spawn(Server::new(Config::default()), move |event| match event {
        Event::Listening { local, .. } => {
            let _ = addr_tx.send(local);
        }
        Event::Left {
            code: Some(code),
            reason,
            peer_id,
            ..
        } if code != 1000 => println!("ferry: {peer_id} closed with {code} ({reason})"),
        _ => {}
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

/// The Python relay child process, killed when dropped (also on panic).
struct PythonRelay(Child);

impl Drop for PythonRelay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_python() -> Result<(SocketAddr, PythonRelay), String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let python =
        std::env::var("FERRY_PYTHON").unwrap_or_else(|_| format!("{dir}/.venv/bin/python"));
    let mut child = Process::new(&python)
        .arg(format!("{dir}/benches/ws_baseline_relay.py"))
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{python}: {e}"))?;
    let stdout = child.stdout.take().unwrap();
    let guard = PythonRelay(child);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "the Python relay did not start in 20 s".to_owned())?;
    let port: u16 = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("the Python relay said {line:?}"))?;
    Ok((SocketAddr::from(([127, 0, 0, 1], port)), guard))
}

fn main() {
    // `cargo test --benches` lists targets; run only under `cargo bench`.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let msgs = env("FERRY_BENCH_WS_MSGS", 5_000);
    let py_msgs = env("FERRY_BENCH_WS_PY_MSGS", 2_000);
    let shapes = [(1, 16), (64, 2)];
    let relays = std::env::var("FERRY_BENCH_WS_RELAYS").unwrap_or_else(|_| "ferry,python".into());

    let (ferry_addr, ferry) = start_ferry();
    let python = if relays.split(',').any(|r| r == "python") {
        start_python()
    } else {
        Err("not selected in FERRY_BENCH_WS_RELAYS".to_owned())
    };
    println!(
        "WebSocket relay benchmark: ferry = ferry_mio driver + core ws_relay::Server, in this process; \
         python = benches/ws_baseline_relay.py (websockets {}), a child process; same client for both",
        python_websockets_version()
    );
    println!(
        "client: blocking std sockets, a sender and a reader thread per peer, on the same {} CPU(s); \
         window {} messages per sender (latency is mostly that queue)",
        thread::available_parallelism().map_or(0, |n| n.get()),
        env("FERRY_BENCH_WS_WINDOW", WINDOW).max(1)
    );
    println!(
        "{:<26} {:<7} {:>12} {:>12} {:>9} {:>9}",
        "workload", "relay", "deliveries", "deliv/s", "p50 us", "p99 us"
    );
    let mut rates = Vec::new();
    for (i, (rooms, peers)) in shapes.into_iter().enumerate() {
        let mut row = Vec::new();
        let runs = [
            ("ferry", msgs, Ok(ferry_addr)),
            (
                "python",
                py_msgs,
                python.as_ref().map(|(a, _)| *a).map_err(Clone::clone),
            ),
        ];
        for (relay, messages, addr) in runs {
            if !relays.split(',').any(|r| r == relay) {
                row.push(None);
                continue;
            }
            let w = Workload {
                rooms,
                peers,
                messages,
            };
            let label = w.label();
            let result = addr.and_then(|a| drive(a, w, &format!("{relay}{i}")));
            match result {
                Ok(mut o) => {
                    let (p50, p99) = (o.percentile(0.5), o.percentile(0.99));
                    println!(
                        "{label:<26} {relay:<7} {:>12} {:>12.0} {p50:>9} {p99:>9}",
                        o.deliveries,
                        o.rate()
                    );
                    if o.errors.is_empty() {
                        row.push(Some(o.rate()));
                    } else {
                        println!(
                            "  INCOMPLETE: {} of {} delivered; {} error(s), first: {}",
                            o.deliveries,
                            w.expected(),
                            o.errors.len(),
                            o.errors[0]
                        );
                        row.push(None);
                    }
                }
                Err(why) => {
                    println!("{label:<26} {relay:<7} error: {why}");
                    row.push(None);
                }
            }
        }
        rates.push(row);
    }
    ferry.shutdown();
    drop(python);

    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    for (i, (rooms, peers)) in shapes.into_iter().enumerate() {
        if let [Some(f), Some(p)] = rates[i][..] {
            println!(
                "{rooms}x{peers} peers: ratio ferry/python deliveries/s: {:.1}x",
                f / p
            );
        }
    }
    for (i, (rooms, peers)) in shapes.into_iter().enumerate() {
        match rates[i][..] {
            [Some(f), Some(p)] => println!(
                "target: >= 10x python deliveries/s, {rooms}x{peers} peers: {:.1}x ({})",
                f / p,
                verdict(f >= 10.0 * p)
            ),
            _ => println!(
                "target: >= 10x python deliveries/s, {rooms}x{peers} peers: not measured (NOT met)"
            ),
        }
    }
    match rates[0][0] {
        Some(f) => println!(
            "target: >= 200000 deliveries/s, 64 B, 1 room of 16 peers: {f:.0} ({})",
            verdict(f >= 200_000.0)
        ),
        None => println!(
            "target: >= 200000 deliveries/s, 64 B, 1 room of 16 peers: not measured (NOT met)"
        ),
    }
}

/// The `websockets` version the baseline runs on, for the header line.
fn python_websockets_version() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let python =
        std::env::var("FERRY_PYTHON").unwrap_or_else(|_| format!("{dir}/.venv/bin/python"));
    Process::new(python)
        .args(["-c", "import websockets; print(websockets.__version__)"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}
