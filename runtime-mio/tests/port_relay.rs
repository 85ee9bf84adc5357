//! The port relay end to end with real parts: the `ferry` relay and forwarder
//! processes, Debian's `redis-server`, `redis-cli` and `redis-benchmark`, and a
//! half-closing echo server, over loopback, in each of the three protocols.
//! Every process is killed by its guard; every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

use ferry_conformance::daemon::Daemon;

const WAIT: Duration = Duration::from_secs(20);
const PROTOCOLS: [&str; 3] = ["multiplex", "pool", "event"];

fn ferry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.env("RUST_LOG", "warn");
    command
}

/// A child killed (and reaped) when the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The relay on an OS-chosen loopback port.
fn relay() -> Daemon {
    let mut command = ferry();
    command.args(["port-relay", "--bind", "127.0.0.1", "0"]);
    Daemon::spawn(command, "port-relay")
}

/// A forwarder exposing `local` through `relay`; returns it and the public port.
fn forwarder(relay: SocketAddr, local: u16, protocol: &str) -> (Guard, Receiver<u16>) {
    let mut child = ferry()
        .arg("port-relay")
        .arg(format!("--local-forward-port={local}"))
        .args([
            "127.0.0.1",
            &relay.port().to_string(),
            "--protocol",
            protocol,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the forwarder");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line.strip_prefix("port-relay public port ") {
                let _ = tx.send(port.parse().expect("a port"));
            }
        }
    });
    (Guard(child), rx)
}

fn public_port(ports: &Receiver<u16>) -> u16 {
    ports
        .recv_timeout(WAIT)
        .expect("the forwarder printed its public port")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn redis() -> (Guard, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed (.ci/run installs redis-server)");
    let guard = Guard(child);
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        thread::sleep(Duration::from_millis(50));
    }
    (guard, port)
}

fn run(command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let (tx, rx) = channel();
    let pid = child.id();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(output) => output.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!("{command:?} did not finish in 120 s");
        }
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = run(Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args));
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn commands_processed(port: u16) -> u64 {
    redis_cli(port, &["info", "stats"])
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats has total_commands_processed")
}

/// PR-14, PR-12: redis-cli and `redis-benchmark -t set,get -n 20000` through the
/// public port, with zero errors and every request served by the real redis.
fn redis_through(protocol: &str) {
    let (_redis, redis_port) = redis();
    let relay = relay();
    let (_forwarder, ports) = forwarder(relay.addr, redis_port, protocol);
    let public = public_port(&ports);

    assert_eq!(redis_cli(public, &["ping"]), "PONG");
    assert_eq!(redis_cli(public, &["set", "ferry", protocol]), "OK");
    assert_eq!(redis_cli(redis_port, &["get", "ferry"]), protocol);

    let before = commands_processed(redis_port);
    let output = run(Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &public.to_string()])
        .args(["-t", "set,get", "-n", "20000", "-q"]));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{protocol}: {stdout}\n{stderr}");
    let report: Vec<&str> = stdout
        .split(['\r', '\n'])
        .filter(|l| l.contains("requests per second"))
        .collect();
    assert!(
        report.iter().any(|l| l.trim_start().starts_with("SET:"))
            && report.iter().any(|l| l.trim_start().starts_with("GET:")),
        "{protocol}: {stdout}"
    );
    for text in [&*stdout, &*stderr] {
        assert!(!text.to_lowercase().contains("error"), "{protocol}: {text}");
    }
    let served = commands_processed(redis_port) - before;
    assert!(
        served >= 40_000,
        "{protocol}: redis served only {served} commands"
    );
}

#[test]
fn pr14_redis_benchmark_through_multiplex() {
    redis_through("multiplex");
}

#[test]
fn pr14_redis_benchmark_through_pool() {
    redis_through("pool");
}

#[test]
fn pr14_redis_benchmark_through_event() {
    redis_through("event");
}

/// A local server that reads to end-of-stream, then answers with what it read
/// reversed, then closes: it only works if the user's FIN arrives after every byte.
fn half_close_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut all = Vec::new();
                if stream.read_to_end(&mut all).is_ok() {
                    all.reverse();
                    let _ = stream.write_all(&all);
                }
            });
        }
    });
    port
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn pr12_half_close_and_every_byte_in_order_in_each_protocol() {
    let local = half_close_echo();
    let relay = relay();
    for protocol in PROTOCOLS {
        let (_forwarder, ports) = forwarder(relay.addr, local, protocol);
        let public = public_port(&ports);
        let users: Vec<_> = (0..4u8)
            .map(|i| {
                thread::spawn(move || {
                    let data = pattern((3 << 20) + usize::from(i) * 7919, i);
                    let mut user = TcpStream::connect(("127.0.0.1", public)).expect("connect");
                    user.set_read_timeout(Some(WAIT)).expect("timeout");
                    let writer = {
                        let mut user = user.try_clone().expect("clone");
                        let data = data.clone();
                        thread::spawn(move || {
                            user.write_all(&data).expect("write");
                            user.shutdown(Shutdown::Write).expect("FIN");
                        })
                    };
                    let mut back = Vec::new();
                    user.read_to_end(&mut back)
                        .expect("read to the relay's FIN");
                    writer.join().expect("writer");
                    let mut expected = data;
                    expected.reverse();
                    assert!(back == expected, "{protocol}: {} bytes back", back.len());
                })
            })
            .collect();
        for user in users {
            user.join().expect("user");
        }
    }
}

#[test]
fn pr1_the_daemon_answers_a_bad_handshake_with_an_error_line() {
    let relay = relay();
    let mut conn = TcpStream::connect(relay.addr).expect("connect");
    conn.set_read_timeout(Some(WAIT)).expect("timeout");
    conn.write_all(b"udp\n").expect("write");
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("read to close");
    assert_eq!(reply, "error: unknown protocol\n");
}

#[test]
fn pr11_the_public_port_closes_when_the_forwarder_goes() {
    let local = half_close_echo();
    let relay = relay();
    for protocol in PROTOCOLS {
        let (forwarder, ports) = forwarder(relay.addr, local, protocol);
        let public = public_port(&ports);
        TcpStream::connect(("127.0.0.1", public)).expect("open while the forwarder runs");
        drop(forwarder);
        let deadline = Instant::now() + WAIT;
        // A pool keeps its port for its grace time (PR-8) only while empty of
        // connections it was never given: killing the forwarder closes its
        // idle ones, so the grace applies; the others close at once.
        if protocol == "pool" {
            continue;
        }
        while TcpStream::connect(("127.0.0.1", public)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{protocol}: port {public} still open"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}
