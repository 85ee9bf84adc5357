//! A real TUN device on the async-std driver, in a fresh network namespace
//! (root only: skipped with a printed reason otherwise, unless
//! `FERRY_REQUIRE_NETNS` is set). The device is opened with ferry-mio's `Tun`
//! (a dev-dependency only) by a thread that entered the namespace.

#![cfg(target_os = "linux")]

#[path = "support/fake_tun.rs"]
mod fake_tun;
#[path = "../../runtime-mio/tests/support/tun_lab.rs"]
mod tun_lab;

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use fake_tun::FakeReader;
use ferry_async_std::driver::TunIo;
use ferry_async_std::{Driver, DriverConfig};
use ferry_mio::tun::Tun;
use tun_lab::{
    IcmpEcho, PEER_IP, TUN_IP, TUN_PREFIX, assert_all_replied, echo_reply, echo_request, lab,
};

#[test]
fn the_async_std_driver_answers_pings_through_a_tun_device() {
    let Some(ns) = lab(
        "the_async_std_driver_answers_pings_through_a_tun_device",
        &["ping"],
    ) else {
        return;
    };
    let tun = ns.run_inside(|| {
        let tun = Tun::open("ferry-async").expect("a TUN device in the namespace");
        tun.set_address(TUN_IP, TUN_PREFIX).expect("an address");
        tun.up().expect("the device up");
        tun
    });
    // The device stays in its namespace whichever threads read and write it.
    let reader = tun.reader(Duration::from_millis(100)).expect("a reader");
    let driver = Driver::spawn_with_tun(
        IcmpEcho::default(),
        DriverConfig::default(),
        TunIo::new(reader, tun),
    )
    .expect("the driver and its TUN threads");

    let output = ns.ping(PEER_IP, 3);
    assert_all_replied(&output, 3);
    let mut answered = 0;
    while let Some(n) = driver.try_next_event() {
        answered = n;
    }
    assert!(answered >= 3, "the machine answered {answered}");
    assert_eq!(driver.tun_dropped(), 0);

    async_std::task::block_on(async {
        driver.stop().await;
        driver.join().await;
    });
    // Both threads closed their descriptors: the device is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let links = ns.ip(&["link", "show"]);
        if !links.contains("ferry-async") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TUN threads did not end: {links}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The write half: what the driver writes is received, unless writes are
/// refused (then `WouldBlock`).
struct FakeWriter {
    written: Sender<Vec<u8>>,
    refuse: Arc<AtomicBool>,
}

impl Write for FakeWriter {
    fn write(&mut self, packet: &[u8]) -> io::Result<usize> {
        if self.refuse.load(Ordering::Acquire) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let _ = self.written.send(packet.to_vec());
        Ok(packet.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// No root needed: the driver's TUN threads carry packets both ways, count
/// the packets the device refuses, and end with the driver.
#[test]
fn tun_packets_flow_refusals_are_counted_and_the_threads_end() {
    let (to_read, packets) = mpsc::channel();
    let (written, from_write) = mpsc::channel();
    let reader_ended = Arc::new(AtomicBool::new(false));
    let refuse = Arc::new(AtomicBool::new(false));
    let reader = FakeReader {
        packets,
        ended: reader_ended.clone(),
    };
    let writer = FakeWriter {
        written,
        refuse: refuse.clone(),
    };
    let driver = Driver::spawn_with_tun(
        IcmpEcho::default(),
        DriverConfig::default(),
        TunIo::new(reader, writer),
    )
    .expect("the driver and its TUN threads");

    let request = echo_request(PEER_IP, TUN_IP, 1);
    to_read.send(request.clone()).expect("the reader runs");
    let reply = from_write
        .recv_timeout(Duration::from_secs(5))
        .expect("the reply written to the device");
    assert_eq!(Some(reply), echo_reply(&request));
    assert_eq!(driver.tun_dropped(), 0);

    refuse.store(true, Ordering::Release);
    to_read
        .send(echo_request(PEER_IP, TUN_IP, 2))
        .expect("the reader runs");
    let deadline = Instant::now() + Duration::from_secs(5);
    while driver.tun_dropped() == 0 {
        assert!(
            Instant::now() < deadline,
            "the refused packet was not counted"
        );
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(driver.tun_dropped(), 1);

    async_std::task::block_on(async {
        driver.stop().await;
        driver.join().await;
    });
    // The reader is still connected (`to_read` lives): it ends because the
    // driver did, at its next read.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reader_ended.load(Ordering::Acquire) {
        assert!(
            Instant::now() < deadline,
            "the TUN reader thread did not end"
        );
        thread::sleep(Duration::from_millis(5));
    }
    // The writer thread dropped its end of `written` when it ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match from_write.recv_timeout(Duration::from_millis(50)) {
            Err(RecvTimeoutError::Disconnected) => break,
            _ => assert!(
                Instant::now() < deadline,
                "the TUN writer thread did not end"
            ),
        }
    }
    drop(to_read);
}
