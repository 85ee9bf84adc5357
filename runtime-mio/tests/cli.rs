//! The `ferry` binary end to end on loopback: the relay, two clients, `up`, signals.
//! Every process is killed by its guard; every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(15);

fn ferry() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.env("RUST_LOG", "info");
    command
}

/// A child process that is killed (and reaped) when the test ends, however it ends.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, command: &mut Command) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self { child, name }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout_lines(&mut self) -> Receiver<String> {
        let stdout: ChildStdout = self.child.stdout.take().expect("stdout piped");
        lines(stdout)
    }

    fn stderr_lines(&mut self) -> Receiver<String> {
        let stderr: ChildStderr = self.child.stderr.take().expect("stderr piped");
        lines(stderr)
    }

    /// Wait for the exit; panics after `WAIT`.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {WAIT:?}",
                self.name
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the exit and collect what is left of stdout and stderr.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let status = self.wait();
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).expect("stdout");
        }
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut err).expect("stderr");
        }
        (status, out, err)
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.pid());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(from: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The first line that `pick` accepts, within `WAIT`.
fn wait_line<T>(rx: &Receiver<String>, what: &str, mut pick: impl FnMut(&str) -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => match pick(&line) {
                Some(found) => return found,
                None => seen.push(line),
            },
            Err(_) => panic!("no {what} within {WAIT:?}; saw {seen:#?}"),
        }
    }
}

fn listening_line(rx: &Receiver<String>, server: &str) -> SocketAddr {
    let prefix = format!("{server} listening on ");
    wait_line(rx, &prefix, |line| {
        line.strip_prefix(&prefix)
            .map(|addr| addr.parse().expect("an address after the prefix"))
    })
}

/// Run to completion with a bounded wait.
fn output(name: &'static str, command: &mut Command) -> Output {
    let proc = Proc::spawn(name, command);
    let (status, stdout, stderr) = proc.finish();
    Output {
        status,
        stdout: stdout.into_bytes(),
        stderr: stderr.into_bytes(),
    }
}

fn start_relay() -> (Proc, SocketAddr, Receiver<String>) {
    let mut relay = Proc::spawn(
        "relay",
        ferry().args(["name-relay", "--listen", "127.0.0.1:0"]),
    );
    let stdout = relay.stdout_lines();
    let log = relay.stderr_lines();
    let addr = listening_line(&stdout, "name-relay");
    assert_ne!(addr.port(), 0, "the line shows the real port");
    (relay, addr, log)
}

fn wait_registered(log: &Receiver<String>, name: &str) {
    let field = format!("name={name}");
    wait_line(log, &format!("registration of {name}"), |line| {
        (line.contains("registered") && line.split_whitespace().any(|w| w == field)).then_some(())
    });
}

#[test]
fn two_clients_exchange_a_message_and_sigterm_stops_the_relay() {
    let (relay, addr, log) = start_relay();
    let port = addr.port().to_string();

    let receiver = Proc::spawn(
        "receiver",
        ferry().args(["name-client", "127.0.0.1", &port, "device_b", "--recv", "1"]),
    );
    wait_registered(&log, "device_b");

    let sent = output(
        "sender",
        ferry().args([
            "name-client",
            "localhost",
            &port,
            "device_a",
            "--send",
            "device_b",
            "--data",
            "hello relay",
        ]),
    );
    assert!(sent.status.success(), "sender: {sent:?}");

    let (status, stdout, stderr) = receiver.finish();
    assert!(status.success(), "receiver failed: {stderr}");
    assert_eq!(stdout, "device_a: hello relay\n");

    relay.terminate();
    let (status, _, _) = relay.finish();
    assert!(status.success(), "relay exit after SIGTERM: {status:?}");
    let stopping = log.try_iter().any(|line| line.contains("stopping"));
    assert!(stopping, "the relay logs that it stops");
}

#[test]
fn interactive_client_sends_and_receives() {
    let (_relay, addr, log) = start_relay();
    let port = addr.port().to_string();

    let mut receiver = ferry()
        .args(["name-client", "127.0.0.1", &port, "b"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the receiver");
    let mut stdin = receiver.stdin.take().expect("stdin piped");
    let receiver = Proc {
        child: receiver,
        name: "interactive receiver",
    };
    stdin.write_all(b"recv\n").expect("type recv");
    wait_registered(&log, "b");

    let mut sender = ferry()
        .args(["name-client", "127.0.0.1", &port, "a"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the sender");
    let mut sender_in = sender.stdin.take().expect("stdin piped");
    let sender = Proc {
        child: sender,
        name: "interactive sender",
    };
    sender_in
        .write_all(b"send\nb\nhi there\n")
        .expect("type send");

    stdin.write_all(b"quit\n").expect("type quit");
    let (status, stdout, stderr) = receiver.finish();
    assert!(status.success(), "receiver: {stderr}");
    assert!(stdout.starts_with("Command > "), "prompt: {stdout:?}");
    assert!(stdout.contains("a: hi there\n"), "message: {stdout:?}");

    drop(sender_in); // end of input: the client quits
    let (status, stdout, stderr) = sender.finish();
    assert!(status.success(), "sender: {stderr}");
    assert!(
        stdout.contains("Dest name > Data > "),
        "prompts: {stdout:?}"
    );
}

#[test]
fn client_without_messages_times_out_with_status_1() {
    let (_relay, addr, _log) = start_relay();
    let out = output(
        "waiting client",
        ferry().args([
            "name-client",
            "127.0.0.1",
            &addr.port().to_string(),
            "lonely",
            "--recv",
            "1",
            "--timeout",
            "0.3",
        ]),
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
}

#[test]
fn relay_on_a_taken_address_exits_with_status_1() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = output("relay", ferry().args(["name-relay", "--listen", &addr]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

#[test]
fn name_relay_help_has_an_example() {
    let out = output("help", ferry().args(["name-relay", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Example"), "{help}");
    assert!(help.contains("--idle-timeout"), "{help}");
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn up_starts_the_relay_on_the_configured_port() {
    let port = free_port();
    let config =
        TempFile(std::env::temp_dir().join(format!("ferry-up-{}-{port}.toml", std::process::id())));
    std::fs::write(
        &config.0,
        format!("[name_relay]\nlisten = \"127.0.0.1:{port}\"\nidle_timeout = 5\n"),
    )
    .expect("write the config");

    let mut up = Proc::spawn("up", ferry().arg("up").arg("--config").arg(&config.0));
    let stdout = up.stdout_lines();
    let addr = listening_line(&stdout, "name-relay");
    assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], port)));

    // The relay speaks: a duplicate name is disconnected (NR-7).
    let mut first = TcpStream::connect(addr).expect("connect");
    first.write_all(b"twin|").expect("register");
    thread::sleep(Duration::from_millis(100));
    let mut second = TcpStream::connect(addr).expect("connect");
    second.set_read_timeout(Some(WAIT)).expect("timeout");
    second.write_all(b"twin|").expect("register");
    let mut buf = [0; 1];
    assert_eq!(second.read(&mut buf).expect("closed by the relay"), 0);

    up.terminate();
    let (status, _, _) = up.finish();
    assert!(status.success(), "up after SIGTERM: {status:?}");
}

#[test]
fn up_rejects_an_unknown_key() {
    let config =
        TempFile(std::env::temp_dir().join(format!("ferry-up-bad-{}.toml", std::process::id())));
    std::fs::write(&config.0, "[name_relay]\nidle_timeuot = 5\n").expect("write");
    let out = output("up", ferry().arg("up").arg("--config").arg(&config.0));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("idle_timeuot"));
}

/// NR-5: the relay closes a connection with a malformed frame and logs why;
/// SIGINT stops it cleanly too.
#[test]
fn nr5_malformed_frame_reason_is_logged_and_sigint_stops() {
    let (relay, addr, log) = start_relay();
    let mut bad = TcpStream::connect(addr).expect("connect");
    bad.write_all(b"bad|x|NaN|").expect("write");
    bad.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "nothing is sent back, the connection is closed"
    );
    wait_line(&log, "the reason of the close", |line| {
        (line.contains("name=bad") && line.contains("length is not a decimal number")).then_some(())
    });
    // SIGINT by the `kill` command, as a shell would send it.
    let status = Command::new("kill")
        .args(["-INT", &relay.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let (status, _, _) = relay.finish();
    assert!(status.success(), "relay exit after SIGINT: {status:?}");
}
