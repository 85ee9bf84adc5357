//! The mount relay end to end with real processes on 127.0.0.1 (seed 000):
//! `ferry mount-tracker`, `ferry stun`, `ferry mount relay` and `ferry mount
//! listen` stream a file byte for byte; `ferry stun --probe` against `ferry
//! stun` and against coturn's `turnserver` (ST-13..ST-15 interop).
//!
//! Every process is owned by a guard that kills and reaps it on drop, so a
//! failing assertion leaves nothing running.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use ferry_conformance::daemon::Daemon;
use ferry_conformance::netns;
use ferry_core::codec::stun;

/// The longest a listener may take to find the relay and write every byte.
const STREAM_LIMIT: Duration = Duration::from_secs(30);

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

/// A child process killed and reaped on drop, its stdout lines on a channel
/// and its stderr kept for failure messages.
struct Proc {
    name: &'static str,
    child: Child,
    stdout: Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
}

impl Proc {
    fn spawn(name: &'static str, command: &mut Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr");
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Proc {
            name,
            child,
            stdout: rx,
            stderr: Some(stderr),
        }
    }

    /// The address of the first stdout line `<prefix><ADDR>`, within 15 s.
    fn addr_line(&mut self, prefix: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix(prefix) {
                        return addr.parse().expect("an address");
                    }
                }
                Err(_) => {
                    let err = self.kill_and_stderr();
                    panic!(
                        "{} printed no `{prefix}<ADDR>` line; stderr:\n{err}",
                        self.name
                    );
                }
            }
        }
    }

    /// Wait for the exit within `limit`; on timeout kill it and fail.
    fn wait(&mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let err = self.stderr_text();
                return (status, err);
            }
            if Instant::now() >= deadline {
                let err = self.kill_and_stderr();
                panic!(
                    "{} still running after {limit:?}; stderr:\n{err}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every stdout line printed so far (after exit: all of them).
    fn stdout_lines(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }

    fn stderr_text(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }

    fn kill_and_stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr_text()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ferry-mount-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `len` random bytes from the OS, written to `path`.
fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut data = vec![0; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("random bytes");
    std::fs::write(path, &data).expect("write the source");
    data
}

/// A tracker and a STUN responder on loopback.
fn servers() -> (Daemon, Daemon) {
    let tracker = Daemon::spawn(
        {
            let mut c = ferry();
            c.args(["mount-tracker", "--listen", "127.0.0.1:0"]);
            c
        },
        "mount-tracker",
    );
    let stun = Daemon::spawn(
        {
            let mut c = ferry();
            c.args(["stun", "--listen", "127.0.0.1:0"]);
            c
        },
        "stun",
    );
    (tracker, stun)
}

fn point_args(command: &mut Command, tracker: &Daemon, stun: &Daemon, mount: &str) {
    command.args([
        "--tracker",
        &tracker.addr.to_string(),
        "--mount",
        mount,
        "--stun",
        &stun.addr.to_string(),
        "--bind",
        "127.0.0.1:0",
    ]);
}

fn relay(tracker: &Daemon, stun: &Daemon, mount: &str, source: &Path, extra: &[&str]) -> Proc {
    let mut command = ferry();
    command.args(["mount", "relay"]);
    point_args(&mut command, tracker, stun, mount);
    command
        .arg("--source")
        .arg(source)
        .args(["--rate", "8000000"])
        .args(extra);
    let mut relay = Proc::spawn("ferry mount relay", &mut command);
    let bound = relay.addr_line("mount-relay bound on ");
    assert_eq!(bound.ip(), std::net::Ipv4Addr::LOCALHOST);
    relay
}

fn listener(tracker: &Daemon, stun: &Daemon, mount: &str, out: &Path, bytes: usize) -> Proc {
    let mut command = ferry();
    command.args(["mount", "listen"]);
    point_args(&mut command, tracker, stun, mount);
    command
        .arg("--out")
        .arg(out)
        .args(["--bytes", &bytes.to_string()]);
    Proc::spawn("ferry mount listen", &mut command)
}

fn assert_same(expected: &[u8], path: &Path) {
    let got = std::fs::read(path).expect("the listener's output");
    assert_eq!(got.len(), expected.len(), "{} bytes written", got.len());
    assert!(got == expected, "the output differs from the source");
}

#[test]
fn mr15_a_relay_streams_a_file_to_a_listener_byte_for_byte() {
    let dir = TempDir::new("one");
    let (tracker, stun) = servers();
    let source = dir.path("source.bin");
    let data = random_file(&source, 2 << 20);
    let _relay = relay(&tracker, &stun, "radio", &source, &[]);

    let out = dir.path("out.bin");
    let started = Instant::now();
    let mut listener = listener(&tracker, &stun, "radio", &out, data.len());
    let (status, err) = listener.wait(STREAM_LIMIT);
    assert!(status.success(), "listener: {status:?}\n{err}");
    assert_same(&data, &out);
    assert!(
        err.contains("connected to relay 127.0.0.1:"),
        "a status line once connected:\n{err}"
    );
    assert!(
        err.contains("2097152 bytes written") && err.contains("0 with a bad CRC"),
        "the counters on exit:\n{err}"
    );
    let bound = listener.stdout_lines();
    assert!(
        bound
            .iter()
            .any(|l| l.starts_with("mount-listener bound on 127.0.0.1:")),
        "{bound:?}"
    );
    eprintln!("2 MiB at 8 MB/s streamed in {:?}", started.elapsed());
}

#[test]
fn mr16_one_relay_serves_two_listeners_the_same_bytes() {
    let dir = TempDir::new("two");
    let (tracker, stun) = servers();
    let source = dir.path("source.bin");
    let data = random_file(&source, 2 << 20);
    let _relay = relay(&tracker, &stun, "twins", &source, &["--min-listeners", "2"]);

    let (a, b) = (dir.path("a.bin"), dir.path("b.bin"));
    let mut first = listener(&tracker, &stun, "twins", &a, data.len());
    let mut second = listener(&tracker, &stun, "twins", &b, data.len());
    let (status, err) = first.wait(STREAM_LIMIT);
    assert!(status.success(), "first listener: {status:?}\n{err}");
    let (status, err) = second.wait(STREAM_LIMIT);
    assert!(status.success(), "second listener: {status:?}\n{err}");
    assert_same(&data, &a);
    assert_same(&data, &b);
}

#[test]
fn mr11_a_listener_with_no_relay_gives_up_with_the_reason() {
    let dir = TempDir::new("none");
    let (tracker, stun) = servers();
    let mut command = ferry();
    command.args(["mount", "listen"]);
    point_args(&mut command, &tracker, &stun, "silence");
    command.arg("--out").arg(dir.path("out.bin")).args([
        "--attempts",
        "1",
        "--search-timeout",
        "2",
    ]);
    let mut listener = Proc::spawn("ferry mount listen", &mut command);
    let (status, err) = listener.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("ferry mount listen: gave up after 1 search: "))
        .unwrap_or_else(|| panic!("no give-up line:\n{err}"));
    assert!(
        line.contains("no relay registered on mount \"silence\""),
        "{line}"
    );
}

#[test]
fn st13_the_probe_learns_its_address_from_ferry_stun() {
    let (_tracker, stun) = servers();
    let mut probe = Proc::spawn(
        "ferry stun --probe",
        ferry().args([
            "stun",
            "--probe",
            &stun.addr.to_string(),
            "--probe",
            &stun.addr.to_string(),
            "--bind",
            "127.0.0.1:0",
        ]),
    );
    let (status, err) = probe.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{err}");
    let lines = probe.stdout_lines();
    let prefix = format!("mapped {} -> 127.0.0.1:", stun.addr);
    assert_eq!(
        lines.iter().filter(|l| l.starts_with(&prefix)).count(),
        2,
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l == "nat: endpoint-independent"),
        "{lines:?}"
    );
}

/// A port free for both UDP and TCP on 127.0.0.1 (coturn listens on both).
fn free_port() -> u16 {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP")
}

/// Whether a STUN server answers a Binding request at `addr` within 200 ms.
fn stun_answers(addr: SocketAddr) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut request = Vec::new();
    stun::encode(&stun::Message::binding_request([7; 12]), &mut request).expect("encode");
    if socket.send_to(&request, addr).is_err() {
        return false;
    }
    let mut buf = [0; 1500];
    matches!(socket.recv_from(&mut buf), Ok((n, _)) if stun::parse(&buf[..n]).is_ok())
}

#[test]
fn st13_the_probe_learns_its_address_from_coturn() {
    let dir = TempDir::new("coturn");
    let port = free_port();
    let mut command = Command::new("turnserver");
    command
        .args(netns::coturn_stun_args(Ipv4Addr::LOCALHOST, port, &dir.0))
        .current_dir(&dir.0)
        .env_remove("NOTIFY_SOCKET");
    let spawned = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "coturn's `turnserver` is not installed ({e}): this interop test needs it; \
             .ci/run installs coturn (apt-get install coturn)"
        ),
        Err(e) => panic!("cannot start turnserver: {e}"),
    };
    let mut coturn = Proc {
        name: "turnserver",
        child,
        stdout: mpsc::channel().1,
        stderr: None,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stun_answers(addr) {
        if let Some(status) = coturn.child.try_wait().expect("try_wait") {
            panic!("turnserver exited before answering: {status:?}");
        }
        assert!(
            Instant::now() < deadline,
            "turnserver did not answer on {addr} within 15 s"
        );
    }

    let mut probe = Proc::spawn(
        "ferry stun --probe",
        ferry().args(["stun", "--probe", &addr.to_string()]),
    );
    let (status, err) = probe.wait(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{err}");
    let lines = probe.stdout_lines();
    let prefix = format!("mapped {addr} -> 127.0.0.1:");
    assert!(
        lines.iter().any(|l| l.starts_with(&prefix)),
        "{lines:?}\n{err}"
    );
    drop(coturn);
}
