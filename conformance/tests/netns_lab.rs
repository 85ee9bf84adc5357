//! The network-namespace NAT lab checks itself: mapping behaviour of each NAT
//! kind, hole punching, coturn STUN through NAT, and cleanup. Root only: every
//! test skips (with a reason on stderr) when `NatLab::new` returns `None`.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_conformance::netns::{self, NatKind, NatLab, Site, Spawned};

/// `python3 -c PROBE IP PORT...`: one socket asks the reflector on each port and
/// prints `LOCAL_PORT OBSERVED...`.
const PROBE_PY: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
s.settimeout(1)
seen = []
for port in sys.argv[2:]:
    for attempt in range(5):
        s.sendto(b"?", (sys.argv[1], int(port)))
        try:
            seen.append(s.recvfrom(2048)[0].decode())
            break
        except socket.timeout:
            pass
    else:
        sys.exit("no answer from port " + port)
print(s.getsockname()[1], " ".join(seen))
"#;

/// `python3 -c PUNCH REFLECTOR_IP PORT NAME`: learns its public address from the
/// reflector (prints `public IP:PORT`), reads `PEER_IP:PORT SECONDS` on stdin,
/// then sends to the peer every 100 ms, for at most SECONDS, until it has
/// heard the peer and sent 5 more; prints `got MESSAGE` or `got nothing`.
const PUNCH_PY: &str = r#"
import select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
s.settimeout(1)
for attempt in range(5):
    s.sendto(b"?", (sys.argv[1], int(sys.argv[2])))
    try:
        public = s.recvfrom(2048)[0].decode()
        break
    except socket.timeout:
        pass
else:
    sys.exit("no answer from the reflector")
print("public " + public, flush=True)
peer, window = sys.stdin.readline().split()
host, port = peer.rsplit(":", 1)
peer = (host, int(port))
deadline = time.monotonic() + float(window)
got, after = None, 0
while time.monotonic() < deadline and after < 5:
    s.sendto(("hello from " + sys.argv[3]).encode(), peer)
    if got is not None:
        after += 1
    end = time.monotonic() + 0.1
    while time.monotonic() < end:
        if select.select([s], [], [], max(0, end - time.monotonic()))[0]:
            data, addr = s.recvfrom(2048)
            if addr == peer and got is None:
                got = data.decode()
print("got " + (got or "nothing"), flush=True)
"#;

/// `python3 -c STUN SERVER_IP PORT`: an RFC 5389 Binding request built by hand;
/// prints `LOCAL_PORT MAPPED_IP:PORT` from the XOR-MAPPED-ADDRESS.
const STUN_PY: &str = r#"
import os, socket, struct, sys
MAGIC = 0x2112A442
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
s.settimeout(1)
tid = os.urandom(12)
request = struct.pack("!HHI", 0x0001, 0, MAGIC) + tid
for attempt in range(5):
    s.sendto(request, (sys.argv[1], int(sys.argv[2])))
    try:
        data = s.recvfrom(2048)[0]
        break
    except socket.timeout:
        pass
else:
    sys.exit("no answer from the STUN server")
kind, length, magic = struct.unpack("!HHI", data[:8])
if kind != 0x0101 or magic != MAGIC or data[8:20] != tid:
    sys.exit("not our Binding success response: %r" % data)
pos = 20
while pos + 4 <= 20 + length:
    attr, alen = struct.unpack("!HH", data[pos:pos + 4])
    value = data[pos + 4:pos + 4 + alen]
    if attr == 0x0020 and value[1] == 0x01:
        port = struct.unpack("!H", value[2:4])[0] ^ (MAGIC >> 16)
        ip = struct.unpack("!I", value[4:8])[0] ^ MAGIC
        print(s.getsockname()[1], "%s:%d" % (socket.inet_ntoa(struct.pack("!I", ip)), port))
        sys.exit(0)
    pos += 4 + alen + (-alen % 4)
sys.exit("no IPv4 XOR-MAPPED-ADDRESS in %r" % data)
"#;

const REFLECTOR_PORTS: [u16; 2] = [3001, 3002];

fn lab(a: NatKind, b: NatKind) -> Option<NatLab> {
    let started = Instant::now();
    let lab = NatLab::new(a, b)?;
    eprintln!("lab {a:?}/{b:?} built in {:?}", started.elapsed());
    Some(lab)
}

/// Run `python3 -c script args` in `ns` (≤ 20 s) and return its stdout words.
fn python(lab: &NatLab, ns: &str, script: &str, args: &[String]) -> Vec<String> {
    let mut command = lab.command(ns, "python3");
    command.arg("-c").arg(script).args(args);
    let out = netns::output_within(&mut command, Duration::from_secs(20)).expect("python ran");
    assert!(
        out.status.success(),
        "python in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Start the reflector on [`REFLECTOR_PORTS`] of the public address.
fn start_reflector(lab: &mut NatLab) {
    let (ns, ip) = (lab.public_ns().to_owned(), lab.public_ip());
    lab.spawn_udp_reflector(&ns, ip, &REFLECTOR_PORTS)
        .expect("reflector started");
}

/// From `site`'s host, one socket asks the reflector at each port: returns
/// (local port, observed source per port).
fn probe(lab: &NatLab, site: Site) -> (u16, Vec<SocketAddrV4>) {
    let ip = lab.public_ip();
    let mut args = vec![ip.to_string()];
    args.extend(REFLECTOR_PORTS.iter().map(u16::to_string));
    let words = python(lab, lab.host_ns(site), PROBE_PY, &args);
    let local = words[0].parse().expect("a local port");
    let seen = words[1..]
        .iter()
        .map(|w| w.parse().expect("an observed address"))
        .collect();
    (local, seen)
}

#[test]
fn eim_nat_maps_one_socket_to_one_public_port_for_every_destination() {
    let Some(mut lab) = lab(NatKind::EndpointIndependent, NatKind::EndpointIndependent) else {
        return;
    };
    start_reflector(&mut lab);
    let (local, seen) = probe(&lab, Site::A);
    eprintln!("local port {local}, seen as {seen:?}");
    assert_eq!(seen.len(), REFLECTOR_PORTS.len());
    for addr in &seen {
        assert_eq!(*addr.ip(), lab.router_wan_ip(Site::A), "seen as the router");
        assert_eq!(addr.port(), seen[0].port(), "same public port everywhere");
    }
    assert_eq!(
        seen[0].port(),
        local,
        "plain masquerade keeps a free source port"
    );
}

#[test]
fn symmetric_nat_maps_each_destination_to_its_own_public_port() {
    let Some(mut lab) = lab(NatKind::Symmetric, NatKind::EndpointIndependent) else {
        return;
    };
    start_reflector(&mut lab);
    let (local, seen) = probe(&lab, Site::A);
    eprintln!("local port {local}, seen as {seen:?}");
    assert_eq!(seen.len(), 2);
    for addr in &seen {
        assert_eq!(*addr.ip(), lab.router_wan_ip(Site::A), "seen as the router");
    }
    assert_ne!(
        seen[0].port(),
        seen[1].port(),
        "one public port per destination"
    );
}

#[test]
fn site_without_nat_is_seen_at_its_private_address() {
    let Some(mut lab) = lab(NatKind::None, NatKind::EndpointIndependent) else {
        return;
    };
    start_reflector(&mut lab);
    let (local, seen) = probe(&lab, Site::A);
    for addr in &seen {
        assert_eq!(*addr, SocketAddrV4::new(lab.host_ip(Site::A), local));
    }
    // ...and B, behind its NAT, still sees the routed network.
    let (_, seen_b) = probe(&lab, Site::B);
    assert_eq!(*seen_b[0].ip(), lab.router_wan_ip(Site::B));
}

/// Both hosts learn their public address, then punch simultaneously; returns
/// what each received from the other (`None` for nothing).
fn punch(lab: &mut NatLab, window: Duration) -> [Option<String>; 2] {
    start_reflector(lab);
    let ip = lab.public_ip();
    let mut peers: Vec<(Spawned, String)> = Vec::new();
    for (site, name) in [(Site::A, "A"), (Site::B, "B")] {
        let mut command = lab.command(lab.host_ns(site), "python3");
        command
            .args([
                "-c",
                PUNCH_PY,
                &ip.to_string(),
                &REFLECTOR_PORTS[0].to_string(),
                name,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut peer = lab.spawn(command).expect("puncher started");
        let line = peer
            .next_line(Duration::from_secs(20))
            .expect("public address");
        let public = line
            .strip_prefix("public ")
            .expect("`public IP:PORT`")
            .to_owned();
        let public_ip: SocketAddrV4 = public.parse().expect("an address");
        assert_eq!(*public_ip.ip(), lab.router_wan_ip(site));
        peers.push((peer, public));
    }
    let publics: Vec<String> = peers.iter().map(|(_, public)| public.clone()).collect();
    eprintln!("public addresses: {publics:?}");
    for (i, (peer, _)) in peers.iter_mut().enumerate() {
        peer.send_line(&format!("{} {}", publics[1 - i], window.as_secs_f64()))
            .expect("told the peer");
    }
    let mut got = [None, None];
    for (i, (peer, _)) in peers.iter_mut().enumerate() {
        let line = peer
            .next_line(window + Duration::from_secs(10))
            .expect("a result");
        got[i] = match line.strip_prefix("got ").expect("`got …`") {
            "nothing" => None,
            message => Some(message.to_owned()),
        };
    }
    got
}

#[test]
fn hole_punch_succeeds_between_two_eim_nats() {
    let Some(mut lab) = lab(NatKind::EndpointIndependent, NatKind::EndpointIndependent) else {
        return;
    };
    let got = punch(&mut lab, Duration::from_secs(5));
    assert_eq!(got[0].as_deref(), Some("hello from B"), "A heard B");
    assert_eq!(got[1].as_deref(), Some("hello from A"), "B heard A");
}

#[test]
fn hole_punch_fails_when_one_side_is_symmetric() {
    let Some(mut lab) = lab(NatKind::Symmetric, NatKind::EndpointIndependent) else {
        return;
    };
    let got = punch(&mut lab, Duration::from_secs(2));
    assert_eq!(got, [None, None], "no direct path through a symmetric NAT");
}

#[test]
fn coturn_stun_reports_the_router_wan_address() {
    let Some(lab) = lab(NatKind::EndpointIndependent, NatKind::EndpointIndependent) else {
        return;
    };
    let started = Instant::now();
    let coturn =
        netns::spawn_coturn_stun(lab.public_ns(), lab.public_ip(), 3478).expect("coturn started");
    eprintln!("coturn listening after {:?}", started.elapsed());
    let server = coturn.addr();
    let words = python(
        &lab,
        lab.host_ns(Site::A),
        STUN_PY,
        &[server.ip().to_string(), server.port().to_string()],
    );
    let local: u16 = words[0].parse().expect("a local port");
    let mapped: SocketAddrV4 = words[1].parse().expect("a mapped address");
    eprintln!("local port {local}, coturn says {mapped}");
    assert_eq!(mapped, SocketAddrV4::new(lab.router_wan_ip(Site::A), local));
    // The guard kills coturn (and removes its directory) before the lab goes.
    let pid = coturn.pid();
    drop(coturn);
    assert!(!process_exists(pid), "coturn {pid} still running");
}

#[test]
fn dropping_the_lab_removes_its_namespaces_and_processes() {
    let Some(mut lab) = lab(NatKind::Symmetric, NatKind::None) else {
        return;
    };
    let names: Vec<String> = lab.namespaces().into_iter().map(str::to_owned).collect();
    let mut sleeper = lab.command(lab.host_ns(Site::B), "sleep");
    sleeper.arg("600").stdin(Stdio::null());
    let pid = lab.spawn(sleeper).expect("sleep started").pid;
    // A stray process started outside `spawn` goes too.
    let mut stray = lab.command(lab.router_ns(Site::A), "sleep");
    let mut stray = stray
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .expect("stray");
    let listed = netns_list();
    for name in &names {
        assert!(listed.contains(name), "{name} exists while the lab lives");
    }
    assert!(process_exists(pid));
    drop(lab);
    let listed = netns_list();
    for name in &names {
        assert!(!listed.contains(name), "{name} left behind");
    }
    assert!(!process_exists(pid), "spawned {pid} still running");
    let status = stray.wait().expect("stray reaped");
    assert!(!status.success(), "stray was killed");
}

fn netns_list() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn lab_addresses_are_the_documented_ones() {
    let Some(lab) = lab(NatKind::None, NatKind::None) else {
        return;
    };
    assert_eq!(lab.public_ip(), Ipv4Addr::new(198, 51, 100, 1));
    assert_eq!(lab.router_wan_ip(Site::B), Ipv4Addr::new(198, 51, 100, 20));
    assert_eq!(lab.host_ip(Site::B), Ipv4Addr::new(10, 2, 0, 2));
    // Routed without NAT: host B reaches host A at its private address.
    let (ns, ip) = (lab.host_ns(Site::A).to_owned(), lab.host_ip(Site::A));
    let mut lab = lab;
    lab.spawn_udp_reflector(&ns, ip, &[4000])
        .expect("reflector in host A");
    let words = python(
        &lab,
        lab.host_ns(Site::B),
        PROBE_PY,
        &[ip.to_string(), "4000".into()],
    );
    assert_eq!(words[1], format!("{}:{}", lab.host_ip(Site::B), words[0]));
}
