//! P2P VPN (seed 002) throughput: iperf3 TCP from one network namespace to
//! another across ferry's overlay, direct p2p and through the server
//! (`--no-p2p`), against the same iperf3 over the plain routed veth path, in
//! one run. Needs root (namespaces, TUN devices), iperf3, coturn and nftables.
//!
//! ```text
//! cargo bench -p ferry-conformance --bench vpn
//! FERRY_BENCH_VPN_SECONDS=10 FERRY_BENCH_VPN_REPEAT=5 cargo bench -p ferry-conformance --bench vpn
//! ```
//!
//! The lab is `NatLab(None, None)`: host A (10.1.0.2) and host B (10.2.0.2),
//! each behind a forwarding router, the public segment (198.51.100.1) between
//! them. coturn (STUN only) and two `ferry vpn server`s live on the public
//! segment: one for the `direct` overlay (10.77.0.0/24, TUN `fvpn0`), one for
//! the `server` overlay (10.78.0.0/24, TUN `fvpn1`, clients with `--no-p2p`).
//! Each host runs one `ferry vpn client` per overlay (release build, default
//! MTU 1400), so all three paths exist at once and the rounds alternate
//! without restarts. `iperf3 -s` runs in host B; per round and path, `iperf3
//! -c` in host A sends for `FERRY_BENCH_VPN_SECONDS` (default 5) to
//!
//! - `plain`: host B's own address (veth → router → public → router → veth),
//! - `direct`: B's address on the direct overlay, after both clients reported
//!   the pair CONNECTED (encrypted UDP from node to node over the same veths),
//! - `server`: B's address on the `--no-p2p` overlay (WebSocket to the server
//!   and back).
//!
//! Figures: iperf3's received bits per second (its `sum_received`) and
//! retransmits; for the overlays the CPU time (utime + stime from
//! `/proc/PID/stat`) of the ferry processes on the path (both clients, plus
//! the server for `server`) per Gbit received. `FERRY_BENCH_VPN_REPEAT`
//! rounds (default 3); min, median and max, then each overlay's median over
//! plain's median. The target: direct ≥ 0.3 × plain. Last, the AEAD alone
//! (seal + open of 1400-byte packets on one core, in this process): the CPU
//! the direct path cannot go below.
//!
//! `FERRY_BENCH_VPN_NO_OFFLOAD=1` starts the clients with `--no-offload`
//! (one packet per TUN read and write), to see what the offloads bring.
//!
//! `FERRY_BIN` names the `ferry` binary; by default the bench builds it
//! (`cargo build --release -p ferry-mio --bin ferry`) into
//! `target/bench-ferry`, so that consecutive runs reuse it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // a benchmark binary: its output is the point

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_conformance::bench::env_usize as env;
use ferry_conformance::netns::{self, NatKind, NatLab, Site, Spawned};

const PASSWORD: &str = "bench overlay password";
/// The target: direct p2p throughput at least this times the plain veth path.
const TARGET: f64 = 0.3;
/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`; 100
/// on every Linux this runs on).
const CLK_TCK: f64 = 100.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Plain,
    Direct,
    Server,
}

impl Path {
    const ALL: [Path; 3] = [Path::Plain, Path::Direct, Path::Server];

    fn name(self) -> &'static str {
        match self {
            Path::Plain => "plain veth",
            Path::Direct => "ferry direct p2p",
            Path::Server => "ferry via server",
        }
    }
}

/// One overlay: its server and the client on each host.
struct Overlay {
    server: Spawned,
    clients: [Spawned; 2],
    /// Host B's overlay address.
    b: String,
}

impl Overlay {
    /// The ferry processes a packet of this overlay crosses.
    fn pids(&self, path: Path) -> Vec<u32> {
        let mut pids = vec![self.clients[0].pid, self.clients[1].pid];
        if path == Path::Server {
            pids.push(self.server.pid);
        }
        pids
    }
}

/// One iperf3 run.
struct Sample {
    bits_per_second: f64,
    bytes: f64,
    retransmits: u64,
    /// CPU seconds of the path's ferry processes during the run.
    cpu: Option<f64>,
}

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let seconds = env("FERRY_BENCH_VPN_SECONDS", 5).max(1);
    let repeat = env("FERRY_BENCH_VPN_REPEAT", 3).max(1);
    let ferry = ferry_binary();
    println!(
        "vpn bench: iperf3 TCP {seconds} s per run, {repeat} rounds, ferry = {}",
        ferry.display()
    );
    let Some(mut lab) = NatLab::new(NatKind::None, NatKind::None) else {
        println!("vpn bench: cannot build the namespace lab here (root, ip netns, nft needed)");
        return 1;
    };
    let ip = lab.public_ip();
    let _coturn = netns::spawn_coturn_stun(lab.public_ns(), ip, 3478).expect("coturn started");
    let direct = start_overlay(&mut lab, &ferry, 41000, "10.77.0", "fvpn0", true);
    let via_server = start_overlay(&mut lab, &ferry, 41001, "10.78.0", "fvpn1", false);
    let mut iperf_server = lab.command(lab.host_ns(Site::B), "iperf3");
    iperf_server
        .args(["-s", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    lab.spawn(iperf_server).expect("iperf3 -s started");
    let mut overlays = [direct, via_server];

    // Warm up: the first packets go through the server and start the punching.
    let plain_b = lab.host_ip(Site::B).to_string();
    wait_ping(&lab, &plain_b);
    for overlay in &overlays {
        wait_ping(&lab, &overlay.b);
    }
    for (site, peer) in [(0, "10.77.0.3"), (1, "10.77.0.2")] {
        wait_for(
            &mut overlays[0].clients[site],
            &format!("peer {peer} CONNECTING -> CONNECTED"),
            Duration::from_secs(30),
        );
    }
    println!("vpn bench: the direct pair is CONNECTED");

    let mut samples: Vec<(Path, Sample)> = Vec::new();
    for round in 1..=repeat {
        for path in Path::ALL {
            let (target, pids) = match path {
                Path::Plain => (plain_b.clone(), Vec::new()),
                Path::Direct => (overlays[0].b.clone(), overlays[0].pids(path)),
                Path::Server => (overlays[1].b.clone(), overlays[1].pids(path)),
            };
            let sample = iperf(&lab, &target, seconds, &pids);
            println!(
                "round {round} {:<17} {:>8.3} Gbit/s  retransmits {:>6}{}",
                path.name(),
                sample.bits_per_second / 1e9,
                sample.retransmits,
                sample
                    .cpu
                    .map(|c| format!("  ferry CPU {:.2} s/Gbit", c / (sample.bytes * 8.0 / 1e9)))
                    .unwrap_or_default()
            );
            samples.push((path, sample));
        }
        // Keep the clients' stdout pipes drained (status lines are off, but
        // transitions still print).
        for overlay in &mut overlays {
            for client in &mut overlay.clients {
                while client.next_line(Duration::from_millis(1)).is_ok() {}
            }
        }
    }
    report(&samples, seconds, repeat);
    aead_ceiling();
    drop(overlays);
    drop(lab);
    0
}

/// Start a server on `port` of the public address for `{prefix}.0/24` and
/// one client per host (`{prefix}.2` in A, `{prefix}.3` in B) on TUN `tun`;
/// returns once both are logged in.
fn start_overlay(
    lab: &mut NatLab,
    ferry: &PathBuf,
    port: u16,
    prefix: &str,
    tun: &str,
    p2p: bool,
) -> Overlay {
    let ip = lab.public_ip();
    let mut server = lab.command(lab.public_ns(), ferry);
    server
        .args(["vpn", "server", "--listen", &format!("{ip}:{port}")])
        .args([
            "--network",
            &format!("{prefix}.0/24"),
            "--password",
            PASSWORD,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut server = lab.spawn(server).expect("ferry vpn server started");
    let line = server
        .next_line(Duration::from_secs(15))
        .expect("the server announces itself");
    assert_eq!(line, format!("vpn-server listening on {ip}:{port}"));
    let clients = Site::ALL.map(|site| {
        let host = if site == Site::A { 2 } else { 3 };
        let mut client = lab.command(lab.host_ns(site), ferry);
        client
            .args(["vpn", "client", "--server", &format!("ws://{ip}:{port}")])
            .args(["--password", PASSWORD, "--tun", tun])
            .args(["--address", &format!("{prefix}.{host}/24")])
            .args(["--stun", &format!("{ip}:3478")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !p2p {
            client.arg("--no-p2p");
        }
        if std::env::var_os("FERRY_BENCH_VPN_NO_OFFLOAD").is_some_and(|v| v == "1") {
            client.arg("--no-offload");
        }
        if let Ok(mtu) = std::env::var("FERRY_BENCH_VPN_MTU") {
            client.args(["--mtu", &mtu]);
        }
        let mut client = lab.spawn(client).expect("ferry vpn client started");
        wait_for(&mut client, "logged-in", Duration::from_secs(30));
        client
    });
    Overlay {
        server,
        clients,
        b: format!("{prefix}.3"),
    }
}

/// Reads the client's stdout until a line containing `needle`.
fn wait_for(client: &mut Spawned, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_line(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(line) => seen.push(line),
            Err(e) => panic!(
                "no `{needle}` from pid {} ({e}); it said: {seen:#?}",
                client.pid
            ),
        }
    }
}

/// Ping `to` from host A until it answers (≤ 20 s).
fn wait_ping(lab: &NatLab, to: &str) {
    let mut ping = lab.command(lab.host_ns(Site::A), "ping");
    ping.args(["-c", "3", "-i", "0.2", "-w", "20", to]);
    let output = netns::output_within(&mut ping, Duration::from_secs(30)).expect("ping ran");
    assert!(
        output.status.success(),
        "ping {to}: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// One `iperf3 -c to` from host A, with the CPU time `pids` spent meanwhile.
fn iperf(lab: &NatLab, to: &str, seconds: usize, pids: &[u32]) -> Sample {
    let before: Option<f64> = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let mut client = lab.command(lab.host_ns(Site::A), "iperf3");
    client.args(["-c", to, "-p", "5201", "-J", "-t", &seconds.to_string()]);
    let timeout = Duration::from_secs(seconds as u64 + 30);
    let output = netns::output_within(&mut client, timeout).expect("iperf3 -c ran");
    let after: Option<f64> = pids.iter().map(|&p| cpu_seconds(p)).sum();
    let json = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "iperf3 -c {to} failed: {json}");
    let received = section(&json, "\"sum_received\"").expect("iperf3's sum_received");
    let sent = section(&json, "\"sum_sent\"").expect("iperf3's sum_sent");
    Sample {
        bits_per_second: number(received, "\"bits_per_second\"").expect("bits_per_second"),
        bytes: number(received, "\"bytes\"").expect("bytes"),
        retransmits: number(sent, "\"retransmits\"").map_or(0, |r| r as u64),
        cpu: if pids.is_empty() {
            None
        } else {
            before.zip(after).map(|(b, a)| a - b)
        },
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// The `{...}` object following `key` in iperf3's JSON.
fn section<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(key)?;
    let open = start + json[start..].find('{')?;
    let close = open + json[open..].find('}')?;
    Some(&json[open..=close])
}

/// The number after `key:` in a flat JSON object.
fn number(object: &str, key: &str) -> Option<f64> {
    let at = object.find(key)? + key.len();
    let value = object[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = value
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+')))
        .unwrap_or(value.len());
    value[..end].parse().ok()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn report(samples: &[(Path, Sample)], seconds: usize, repeat: usize) {
    println!();
    println!("### vpn: iperf3 TCP, host A -> host B, {seconds} s x {repeat} rounds");
    println!();
    println!("| path | Gbit/s min | median | max | ferry CPU s/Gbit (median) | / plain |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let mut medians = Vec::new();
    for path in Path::ALL {
        let mut rates: Vec<f64> = samples
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, s)| s.bits_per_second / 1e9)
            .collect();
        let mut cpu: Vec<f64> = samples
            .iter()
            .filter(|(p, _)| *p == path)
            .filter_map(|(_, s)| s.cpu.map(|c| c / (s.bytes * 8.0 / 1e9)))
            .collect();
        let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rates.iter().copied().fold(0.0, f64::max);
        let med = median(&mut rates);
        medians.push(med);
        let cpu = if cpu.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.2}", median(&mut cpu))
        };
        println!(
            "| {} | {min:.3} | {med:.3} | {max:.3} | {cpu} | {:.2} |",
            path.name(),
            med / medians[0]
        );
    }
    let ratio = medians[1] / medians[0];
    println!();
    let verdict = if ratio >= TARGET { "met" } else { "MISSED" };
    println!("direct/plain {ratio:.3} (target >= {TARGET}: {verdict})");
}

/// The AEAD alone, in this process on one core: seal and open 1400-byte
/// packets (the TUN's default MTU) for a second; every byte the direct path
/// carries is sealed once and opened once, so this is a floor on its CPU.
fn aead_ceiling() {
    use ferry_core::vpn::crypto::{MasterKey, Opener, Sealer};
    let master = MasterKey::from_bytes([7; 32]);
    let (a, b) = (Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 3));
    let mut sealer = Sealer::new(&master, a, [9; 32]);
    let mut opener = Opener::new(&master, a, b);
    let packet = vec![0x45u8; 1400];
    let mut sealed = Vec::new();
    let started = Instant::now();
    let mut bytes = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        for _ in 0..256 {
            sealer.seal(b, &packet, &mut sealed).expect("sealed");
            let opened = opener.open(&sealed).expect("opened");
            assert_eq!(opened.len(), packet.len());
            bytes += packet.len() as u64;
        }
    }
    let gbit = bytes as f64 * 8.0 / 1e9;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "AEAD alone (AES-256-GCM seal + open, 1400-byte packets, one core): {:.2} Gbit/s = {:.2} CPU s/Gbit",
        gbit / seconds,
        seconds / gbit
    );
}

/// `FERRY_BIN`, or the release `ferry`, built first into its own target
/// directory (`target/bench-ferry`): built next to this bench, it would be
/// rebuilt on every run, because `cargo bench` resolves the shared crates'
/// features with the dev-dependencies and overwrites the artifacts.
fn ferry_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("FERRY_BIN") {
        return PathBuf::from(bin);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_owned();
    // This bench runs as TARGET/release/deps/vpn-HASH.
    let exe = std::env::current_exe().expect("the bench's own path");
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the target directory")
        .join("bench-ferry");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "-p", "ferry-mio", "--bin", "ferry"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&workspace)
        .status()
        .expect("cargo ran");
    assert!(
        status.success(),
        "cargo build --release -p ferry-mio failed"
    );
    target.join("release").join("ferry")
}
