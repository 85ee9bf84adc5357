//! What the TUN tests of both runtimes share (`runtime-mio/tests/tun.rs`, and
//! `runtime-async-std/tests/tun.rs` which includes this file by path): a
//! fresh network namespace per test, and a machine that answers pings.
//!
//! A TUN device is only ever made inside such a namespace: the test moves a
//! thread of its own into it (`setns`) and opens the device from there.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ferry_conformance::netns::{REQUIRE_ENV, netns_command, output_within};
use ferry_core::{Action, Input, Machine};

/// The TUN device's address (a /24).
pub const TUN_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub const TUN_PREFIX: u8 = 24;
/// The address pinged: routed into the device, answered by [`IcmpEcho`].
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Skip `test` (printing why), or panic when CI requires the namespace tests.
pub fn skip<T>(test: &str, why: &str) -> Option<T> {
    if std::env::var_os(REQUIRE_ENV).is_some() {
        panic!("{test}: {why} (and {REQUIRE_ENV} is set, so it may not skip)");
    }
    eprintln!("skipping {test}: {why}");
    None
}

/// A fresh namespace for `test`, with `lo` up; `None` (after printing why) if
/// this machine cannot make one. `tools` must be on the PATH too.
pub fn lab(test: &str, tools: &[&str]) -> Option<Netns> {
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if euid != Some(0) {
        return skip(test, "needs root (network namespaces and TUN devices)");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return skip(test, "no /dev/net/tun (modprobe tun)");
    }
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return skip(test, &format!("`{tool}` is not installed"));
        }
    }
    match Netns::create() {
        Ok(ns) => Some(ns),
        Err(why) => skip(test, &why),
    }
}

/// A network namespace made with `ip netns add`, deleted on drop (on panic too).
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create() -> Result<Netns, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "ferry-tun-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))
            .map_err(|e| format!("`ip netns add` failed: {e}"))?;
        let ns = Netns { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))
            .map_err(|e| format!("`ip -n {} link set lo up` failed: {e}", ns.name))?;
        Ok(ns)
    }

    /// Run `body` on a new thread that first enters this namespace; threads it
    /// spawns are in the namespace too. A panic in `body` is re-raised here.
    pub fn run_inside<T: Send + 'static>(&self, body: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.name.clone();
        let thread = thread::spawn(move || {
            enter(&name).unwrap_or_else(|e| panic!("cannot enter namespace {name}: {e}"));
            body()
        });
        match thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// `ip -n NS ARGS...`: its stdout, or a panic with what it said.
    pub fn ip(&self, args: &[&str]) -> String {
        let output = run(Command::new("ip").arg("-n").arg(&self.name).args(args))
            .unwrap_or_else(|e| panic!("ip -n {} {args:?}: {e}", self.name));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `ping -c COUNT -W 2 -i 0.2 IP` inside the namespace.
    pub fn ping(&self, ip: Ipv4Addr, count: u32) -> Output {
        let mut command = netns_command(&self.name, "ping");
        command.args(["-n", "-c", &count.to_string(), "-W", "2", "-i", "0.2"]);
        command.arg(ip.to_string());
        output_within(&mut command, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("ping in {}: {e}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "delete", &self.name]));
    }
}

/// Move the calling thread into the namespace `ip netns` calls `name`.
fn enter(name: &str) -> io::Result<()> {
    let file = File::open(format!("/var/run/netns/{name}"))?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )?;
    Ok(())
}

fn run(command: &mut Command) -> io::Result<Output> {
    let output = output_within(command, SETUP_TIMEOUT)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(io::Error::other(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Assert that `ping` got `count` replies out of `count`.
pub fn assert_all_replied(output: &Output, count: u32) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(&format!("{count} received")),
        "ping failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// A machine that answers every ICMP echo request read from the TUN device
/// with its echo reply (source and destination swapped), written back to it.
/// Its events count the replies.
#[derive(Debug, Default)]
pub struct IcmpEcho {
    actions: VecDeque<Action>,
    events: VecDeque<usize>,
    replies: usize,
}

impl Machine for IcmpEcho {
    type Command = ();
    type Event = usize;

    fn handle_input(&mut self, input: Input<'_>, _now: Instant) {
        if let Input::TunPacket(packet) = input
            && let Some(reply) = echo_reply(packet)
        {
            self.replies += 1;
            self.actions.push_back(Action::WriteTun(reply));
            self.events.push_back(self.replies);
        }
    }

    fn handle_command(&mut self, _command: (), _now: Instant) {}

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<usize> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// The echo reply to an IPv4 ICMP echo request; `None` for anything else.
pub fn echo_reply(packet: &[u8]) -> Option<Vec<u8>> {
    let header = usize::from(*packet.first()? & 0x0f) * 4;
    if packet[0] >> 4 != 4 || header < 20 || packet.len() < header + 8 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total > packet.len() || total < header + 8 || packet[9] != 1 || packet[header] != 8 {
        return None;
    }
    let mut reply = packet[..total].to_vec();
    let (source, destination) = reply[12..20].split_at_mut(4);
    source.swap_with_slice(destination);
    reply[8] = 64; // a fresh TTL
    reply[header] = 0; // echo reply, same code, id, sequence and data
    reply[header + 2..header + 4].fill(0);
    let sum = checksum(&reply[header..]);
    reply[header + 2..header + 4].copy_from_slice(&sum.to_be_bytes());
    reply[10..12].fill(0);
    let sum = checksum(&reply[..header]);
    reply[10..12].copy_from_slice(&sum.to_be_bytes());
    Some(reply)
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request from `source` to `destination` (id 0x1234, 4 data bytes).
#[allow(dead_code)] // each test crate uses what it needs
pub fn echo_request(source: Ipv4Addr, destination: Ipv4Addr, sequence: u16) -> Vec<u8> {
    let mut request = vec![0x45, 0, 0, 32, 0, 1, 0x40, 0, 64, 1, 0, 0];
    request.extend_from_slice(&source.octets());
    request.extend_from_slice(&destination.octets());
    request.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34]);
    request.extend_from_slice(&sequence.to_be_bytes());
    request.extend_from_slice(&[1, 2, 3, 4]);
    let sum = checksum(&request[20..]);
    request[22..24].copy_from_slice(&sum.to_be_bytes());
    let sum = checksum(&request[..20]);
    request[10..12].copy_from_slice(&sum.to_be_bytes());
    request
}

#[test]
fn echo_reply_swaps_addresses_and_checksums_verify() {
    let request = echo_request(TUN_IP, PEER_IP, 1);
    assert_eq!(checksum(&request[..20]), 0);
    let reply = echo_reply(&request).expect("an echo request");
    assert_eq!(&reply[12..16], &[10, 250, 0, 2]);
    assert_eq!(&reply[16..20], &[10, 250, 0, 1]);
    assert_eq!(reply[20], 0);
    assert_eq!(&reply[24..], &request[24..]);
    // A correct checksum sums (with itself) to zero.
    assert_eq!(checksum(&reply[..20]), 0);
    assert_eq!(checksum(&reply[20..]), 0);
    let mut udp = request.clone();
    udp[9] = 17;
    assert!(echo_reply(&udp).is_none());
    assert!(echo_reply(&request[..10]).is_none());
}
