//! `ferry mount-tracker` end to end over loopback: a relay point and a listener
//! point register with real HTTP/1.0 requests and find each other (MR-3..MR-7).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use ferry_conformance::daemon::Daemon;

fn ask(tracker: std::net::SocketAddr, request: &str) -> String {
    let mut conn = TcpStream::connect(tracker).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    conn.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .expect("the tracker answers and closes");
    answer
}

#[test]
fn mr5_mr7_points_find_each_other_through_the_daemon() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.args(["mount-tracker", "--listen", "127.0.0.1:0"]);
    let tracker = Daemon::spawn(command, "mount-tracker");

    let relay = ask(
        tracker.addr,
        "GET /Pi HTTP/1.0\r\nMount: radio\r\nMyAddr: 198.51.100.1:4000\r\nLatency: 20\r\nFlag: relay\r\n\r\n",
    );
    assert!(relay.starts_with("HTTP/1.0 200 OK\r\n"), "{relay}");
    assert!(relay.contains("\r\nServer: ferry/"), "{relay}");

    let listener = ask(
        tracker.addr,
        "GET /Pi HTTP/1.0\r\nMount: radio\r\nMyAddr: [2001:db8::9]:5000\r\n\r\n",
    );
    assert!(
        listener.contains("\r\nAddress: 198.51.100.1:4000\r\n"),
        "{listener}"
    );
    let relay = ask(
        tracker.addr,
        "GET /Pi HTTP/1.0\r\nMount: radio\r\nMyAddr: 198.51.100.1:4000\r\nLatency: 20\r\nFlag: relay\r\n\r\n",
    );
    assert!(
        relay.contains("\r\nAddress: [2001:db8::9]:5000\r\n"),
        "{relay}"
    );

    let connected = ask(
        tracker.addr,
        "GET /Pi HTTP/1.0\r\nConnected: [2001:db8::9]:5000,198.51.100.1:4000\r\n\r\n",
    );
    assert!(connected.starts_with("HTTP/1.0 200 OK\r\n"), "{connected}");
    let late = ask(
        tracker.addr,
        "GET /Pi HTTP/1.0\r\nMount: radio\r\nMyAddr: 203.0.113.5:6000\r\n\r\n",
    );
    assert!(
        late.contains("\r\nAddress: \r\n") || late.contains("\r\nAddress:\r\n"),
        "{late}"
    );

    let bad = ask(tracker.addr, "GET /Pi HTTP/1.0\r\nMount: radio\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.0 400 Bad Request\r\n"), "{bad}");
    assert!(bad.ends_with("missing MyAddr header\n"), "{bad}");
}
