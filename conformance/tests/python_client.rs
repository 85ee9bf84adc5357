//! A second language: the Python client written from the spec
//! (`conformance/clients/test_client.py`, the seed's usage) against ferry.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_conformance::scenarios::name_relay::Peer;
use ferry_conformance::served::AsyncStdNameRelay;

fn client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/test_client.py")
}

/// NR-1, NR-4, NR-6: Python sends to a Rust peer and receives from it through ferry.
#[test]
fn nr6_python_client_interoperates_with_ferry() {
    let relay = AsyncStdNameRelay::start();
    let target = relay.target();
    let mut rust = Peer::registered(&target, "rust_a");

    let mut python = Command::new("python3")
        .arg(client_script())
        .arg("127.0.0.1")
        .arg(relay.addr().port().to_string())
        .arg("py_b")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed (.ci/run installs it)");
    let mut stdin = python.stdin.take().expect("stdin");
    stdin
        .write_all(b"send\nrust_a\nhello from python\nrecv\n")
        .expect("drive the prompt");
    drop(stdin); // after `recv` prints, end of input makes the client exit

    // Python's frame proves it registered (same connection, in order).
    assert_eq!(
        rust.read_frame(),
        ("py_b".to_owned(), b"hello from python".to_vec())
    );
    rust.send("py_b", b"hello from rust");

    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = python.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = python.kill();
            panic!("python client did not finish");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    python
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    let mut err = String::new();
    python
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert!(status.success(), "python exited with {status}: {err}");
    assert!(
        out.contains("b'hello from rust'"),
        "python printed {out:?}, stderr {err:?}"
    );
    assert!(
        out.contains("Command > Dest name > Data > "),
        "seed prompts: {out:?}"
    );
}

/// NR-5: a Python client that sends an invalid length is closed; the relay goes on.
#[test]
fn nr5_python_sees_the_relay_survive_a_bad_client() {
    let relay = AsyncStdNameRelay::start();
    let target = relay.target();
    let mut bad = Peer::registered(&target, "bad");
    bad.write(b"x|NaN|");
    bad.expect_closed(Duration::from_secs(10));
    let mut rust = Peer::registered(&target, "rust_a");
    let mut python = Command::new("python3")
        .arg(client_script())
        .args(["127.0.0.1", &relay.addr().port().to_string(), "py_c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("python3");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"send\nrust_a\nafter the bad one\n")
        .expect("drive");
    assert_eq!(
        rust.read_frame(),
        ("py_c".to_owned(), b"after the bad one".to_vec())
    );
    let _ = python.kill();
    let _ = python.wait();
}
