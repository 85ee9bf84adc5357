//! The p2p VPN end to end through real TUN devices (issue 6): `ferry vpn
//! server` and coturn on the lab's public segment, one `ferry vpn client` in
//! each site's host namespace, first directly routed, then each behind its
//! own nftables NAT, then with `--no-p2p`. `ping` and a checked TCP transfer
//! cross the overlay; the clients' stdout shows the pair reaching CONNECTED
//! (direct UDP), and their status lines where the packets went.
//!
//! Skips with a printed reason only where the machine cannot make namespaces;
//! `.ci/run` installs iproute2, nftables, coturn and iputils-ping and
//! sets `FERRY_REQUIRE_NETNS`, so CI never skips.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_conformance::netns::{self, NatKind, NatLab, Site, Spawned};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");
const PASSWORD: &str = "e2e overlay password";
const NETWORK: &str = "10.77.0.0/24";

fn vip(site: Site) -> &'static str {
    match site {
        Site::A => "10.77.0.2",
        Site::B => "10.77.0.3",
    }
}

struct Overlay {
    lab: NatLab,
    _coturn: netns::CoturnStun,
    clients: Vec<Spawned>,
}

/// The server, coturn and one client per site; returns once both clients
/// are logged in.
fn start(a: NatKind, b: NatKind, p2p: bool) -> Option<Overlay> {
    let mut lab = NatLab::new(a, b)?;
    let ip = lab.public_ip();
    let coturn = netns::spawn_coturn_stun(lab.public_ns(), ip, 3478).expect("coturn started");
    let mut server = lab.command(lab.public_ns(), FERRY);
    server
        .args(["vpn", "server", "--listen", &format!("{ip}:41000")])
        .args(["--network", NETWORK, "--password", PASSWORD])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = lab.spawn(server).expect("ferry vpn server started");
    let line = server
        .next_line(Duration::from_secs(15))
        .expect("the server announces itself");
    assert_eq!(line, format!("vpn-server listening on {ip}:41000"));
    let mut clients = Vec::new();
    for site in Site::ALL {
        let mut client = lab.command(lab.host_ns(site), FERRY);
        client
            .args(["vpn", "client", "--server", &format!("ws://{ip}:41000")])
            .args(["--password", PASSWORD, "--tun", "fvpn0"])
            .args(["--address", &format!("{}/24", vip(site))])
            .args(["--stun", &format!("{ip}:3478"), "--status", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !p2p {
            client.arg("--no-p2p");
        }
        let mut client = lab.spawn(client).expect("ferry vpn client started");
        wait_for(&mut client, "logged-in", Duration::from_secs(30));
        clients.push(client);
    }
    Some(Overlay {
        lab,
        _coturn: coturn,
        clients,
    })
}

/// Reads the client's stdout until a line containing `needle`; every line read
/// is returned (for the caller's later checks).
fn wait_for(client: &mut Spawned, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_line(left) {
            Ok(line) => {
                let done = line.contains(needle);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no `{needle}` from the client ({e}); it said: {seen:#?}"),
        }
    }
}

impl Overlay {
    fn client(&mut self, site: Site) -> &mut Spawned {
        &mut self.clients[usize::from(site == Site::B)]
    }

    /// Skips what the client said so far, then the lines up to its next
    /// status line (printed every second): a fresh view of its counters.
    fn fresh_status(&mut self, site: Site) -> Vec<String> {
        let client = self.client(site);
        let mut seen = Vec::new();
        while let Ok(line) = client.next_line(Duration::from_millis(100)) {
            seen.push(line);
        }
        let mut fresh = wait_for(client, "vpn-client status", Duration::from_secs(5));
        seen.append(&mut fresh);
        seen
    }

    fn ping(&self, from: Site, to: Site, count: u32) {
        let mut ping = self.lab.command(self.lab.host_ns(from), "ping");
        ping.args(["-c", &count.to_string(), "-W", "2", "-i", "0.2", vip(to)]);
        let output = netns::output_within(&mut ping, Duration::from_secs(30)).expect("ping ran");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ping {} -> {} failed: {text}",
            vip(from),
            vip(to)
        );
    }

    /// `bytes` of pseudo-random data over TCP from A to B across the overlay
    /// (Python sockets on both ends); panics unless B received exactly them,
    /// checked by length and SHA-256.
    fn transfer(&mut self, bytes: u64) {
        let mut receiver = self.lab.command(self.lab.host_ns(Site::B), "python3");
        receiver
            .args(["-c", RECEIVER, vip(Site::B), &bytes.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut receiver = self.lab.spawn(receiver).expect("the receiver started");
        let ready = receiver
            .next_line(Duration::from_secs(10))
            .expect("the receiver listens");
        assert_eq!(ready, "listening");
        let mut sender = self.lab.command(self.lab.host_ns(Site::A), "python3");
        sender.args(["-c", SENDER, vip(Site::B), &bytes.to_string()]);
        let sent =
            netns::output_within(&mut sender, Duration::from_secs(120)).expect("the sender ran");
        assert!(
            sent.status.success(),
            "{}",
            String::from_utf8_lossy(&sent.stderr)
        );
        let sent = String::from_utf8_lossy(&sent.stdout).trim().to_owned();
        let received = receiver
            .next_line(Duration::from_secs(60))
            .expect("the receiver reports");
        assert_eq!(received, sent, "received vs sent (length and SHA-256)");
        assert!(sent.starts_with(&format!("{bytes} ")), "{sent}");
    }
}

/// Accepts one connection on port 5300, prints `listening` first, then the
/// byte count and SHA-256 of everything received.
const RECEIVER: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5300))
s.listen(1)
print("listening", flush=True)
s.settimeout(60)
c, _ = s.accept()
c.settimeout(60)
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(1 << 16)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest(), flush=True)
"#;

/// Sends `bytes` bytes of a SHA-256 counter stream to port 5300, then prints
/// the count and SHA-256 of what it sent.
const SENDER: &str = r#"
import hashlib, socket, sys
total = int(sys.argv[2])
c = socket.create_connection((sys.argv[1], 5300), timeout=60)
h, n, i = hashlib.sha256(), 0, 0
while n < total:
    block = b"".join(hashlib.sha256(b"%d.%d" % (i, k)).digest() for k in range(2048))[: total - n]
    c.sendall(block)
    h.update(block)
    n += len(block)
    i += 1
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(n, h.hexdigest(), flush=True)
"#;

/// The last status line's counter `name`.
fn counter(lines: &[String], name: &str) -> u64 {
    let line = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("vpn-client status "))
        .unwrap_or_else(|| panic!("no status line in {lines:#?}"));
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

fn direct_case(a: NatKind, b: NatKind) {
    let Some(mut overlay) = start(a, b, true) else {
        return;
    };
    // The first packets go through the server and start the punching.
    overlay.ping(Site::A, Site::B, 5);
    for (site, peer) in [(Site::A, Site::B), (Site::B, Site::A)] {
        wait_for(
            overlay.client(site),
            &format!("peer {} CONNECTING -> CONNECTED", vip(peer)),
            Duration::from_secs(30),
        );
    }
    overlay.ping(Site::A, Site::B, 3);
    overlay.transfer(8 << 20);
    // The transfer went over the direct path: A's counters say so.
    let lines = overlay.fresh_status(Site::A);
    let direct = counter(&lines, "direct_out");
    let via_server = counter(&lines, "server_out");
    assert!(
        direct > 4_000,
        "direct_out {direct}, server_out {via_server}"
    );
    assert!(
        via_server < direct / 10,
        "direct_out {direct}, server_out {via_server}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains(&format!("peer={}:CONNECTED", vip(Site::B))))
    );
}

#[test]
fn vpn_e2e_directly_routed_pair_goes_direct() {
    direct_case(NatKind::None, NatKind::None);
}

#[test]
fn vpn_e2e_pair_behind_two_nats_goes_direct() {
    direct_case(NatKind::EndpointIndependent, NatKind::EndpointIndependent);
}

#[test]
fn vpn_e2e_without_p2p_everything_crosses_the_server() {
    let Some(mut overlay) = start(NatKind::None, NatKind::None, false) else {
        return;
    };
    overlay.ping(Site::A, Site::B, 3);
    overlay.transfer(4 << 20);
    let lines = overlay.fresh_status(Site::A);
    assert_eq!(counter(&lines, "direct_out"), 0);
    assert!(counter(&lines, "server_out") > 2_000);
    assert!(
        !lines.iter().any(|l| l.contains("-> CONNECTED")),
        "{lines:#?}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.contains(&format!("peer={}:FAILED", vip(Site::B))))
    );
}

#[test]
fn vpn_e2e_wrong_password_exits_with_a_clear_error() {
    let Some(mut overlay) = start(NatKind::None, NatKind::None, true) else {
        return;
    };
    let ip = overlay.lab.public_ip();
    let mut bad = overlay.lab.command(overlay.lab.host_ns(Site::A), FERRY);
    bad.args(["vpn", "client", "--server", &format!("ws://{ip}:41000")])
        .args(["--password", "not the password", "--tun", "fvpn1"]);
    let output = netns::output_within(&mut bad, Duration::from_secs(30)).expect("the client ran");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad password"), "{stderr}");
    // The others are unaffected.
    overlay.ping(Site::A, Site::B, 2);
    let _ = overlay.client(Site::A);
}
