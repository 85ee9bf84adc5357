//! Real TUN devices, each test in a fresh network namespace of its own (root
//! only: skipped with a printed reason otherwise, unless `FERRY_REQUIRE_NETNS`
//! is set). Nothing is ever made in the machine's own namespace: a thread
//! enters the test's namespace and opens the device from there.

#![cfg(target_os = "linux")]

#[path = "support/tun_lab.rs"]
mod tun_lab;

use std::io;
use std::sync::mpsc;
use std::time::Duration;

use ferry_conformance::netns::{netns_command, output_within};
use ferry_mio::tun::Tun;
use tun_lab::{IcmpEcho, PEER_IP, TUN_IP, TUN_PREFIX, assert_all_replied, lab};

#[test]
fn the_mio_driver_answers_pings_through_a_tun_device() {
    let Some(ns) = lab(
        "the_mio_driver_answers_pings_through_a_tun_device",
        &["ping"],
    ) else {
        return;
    };
    let (replies, replies_rx) = mpsc::channel();
    let (driver, name) = ns.run_inside(move || {
        // "": the kernel names it (tun0 in a fresh namespace).
        let tun = Tun::open("").expect("a TUN device in the namespace");
        tun.set_address(TUN_IP, TUN_PREFIX).expect("an address");
        tun.set_mtu(1400).expect("an MTU");
        tun.up().expect("the device up");
        let name = tun.name().to_owned();
        let driver = ferry_mio::spawn_with_tun(IcmpEcho::default(), tun, move |n| {
            let _ = replies.send(n);
        })
        .expect("the driver");
        (driver, name)
    });
    assert!(name.starts_with("tun"), "the kernel's name: {name}");
    let addr = ns.ip(&["-4", "addr", "show", "dev", &name]);
    assert!(addr.contains("inet 10.250.0.1/24"), "{addr}");
    let link = ns.ip(&["link", "show", "dev", &name]);
    assert!(link.contains("UP") && link.contains("mtu 1400"), "{link}");
    let routes = ns.ip(&["-4", "route", "show"]);
    assert!(
        routes.contains(&format!("10.250.0.0/24 dev {name}")),
        "{routes}"
    );

    let output = ns.ping(PEER_IP, 3);
    assert_all_replied(&output, 3);
    let answered = replies_rx.try_iter().last();
    assert!(answered >= Some(3), "the machine answered {answered:?}");

    driver.shutdown();
    driver.join().expect("the driver stops cleanly");
    // The driver held the only descriptor: the device went with it.
    let links = ns.ip(&["link", "show"]);
    assert!(!links.contains(&name), "{links}");
}

#[test]
fn set_mtu_is_what_ip_link_reports_and_a_held_device_is_busy() {
    let Some(ns) = lab("set_mtu_is_what_ip_link_reports", &[]) else {
        return;
    };
    let tun = ns.run_inside(|| {
        let tun = Tun::open("ferry-mtu").expect("a TUN device in the namespace");
        tun.set_mtu(1280).expect("an MTU");
        tun
    });
    assert_eq!(tun.name(), "ferry-mtu");
    let link = ns.ip(&["link", "show", "dev", "ferry-mtu"]);
    assert!(link.contains("mtu 1280"), "{link}");

    let busy = ns.run_inside(|| Tun::open("ferry-mtu").expect_err("the device is held"));
    assert!(
        busy.to_string()
            .starts_with("TUN device ferry-mtu is in use"),
        "{busy}"
    );

    let bad = tun.set_mtu(10).expect_err("an MTU below IPv4's minimum");
    assert!(
        bad.to_string()
            .starts_with("TUN device ferry-mtu: set MTU: "),
        "{bad}"
    );
    let copy = tun.try_clone().expect("a second descriptor");
    assert_eq!(copy.name(), "ferry-mtu");
    let mut buf = [0; 2048];
    let idle = copy.read(&mut buf).expect_err("no packet waits");
    assert_eq!(idle.kind(), io::ErrorKind::WouldBlock);
}

/// Set in the child process of the test below, which runs as `nobody`.
const UNPRIVILEGED_CHILD: &str = "FERRY_TUN_UNPRIVILEGED_CHILD";

#[test]
fn opening_without_privileges_says_what_is_needed() {
    if std::env::var_os(UNPRIVILEGED_CHILD).is_some() {
        let e = Tun::open("ferry-nobody").expect_err("nobody may not open a TUN device");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(
            e.to_string()
                .starts_with("opening TUN device ferry-nobody needs root or CAP_NET_ADMIN"),
            "{e}"
        );
        return;
    }
    let Some(ns) = lab(
        "opening_without_privileges_says_what_is_needed",
        &["setpriv"],
    ) else {
        return;
    };
    let exe = std::env::current_exe().expect("the test binary");
    // Inside the namespace too: were the check wrong, no device lands outside.
    let mut command = netns_command(&ns.name, "setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(exe)
        .args([
            "--exact",
            "opening_without_privileges_says_what_is_needed",
            "--nocapture",
        ])
        .env(UNPRIVILEGED_CHILD, "1");
    let output = output_within(&mut command, Duration::from_secs(60)).expect("the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
