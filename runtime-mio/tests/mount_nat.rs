//! The mount relay through real NATs (issue 5): network namespaces for a
//! public segment (the tracker, coturn and `ferry stun`) and two private hosts,
//! each behind its own nftables masquerading router
//! (`ferry_conformance::netns`). The `ferry` binary runs in each namespace.
//!
//! Skips with a printed reason only where the machine cannot make namespaces;
//! `.ci/run` installs iproute2, nftables and coturn and sets
//! `FERRY_REQUIRE_NETNS`, so CI never skips.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_conformance::netns::{self, NatKind, NatLab, Site, Spawned};

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// The public servers every case uses: coturn and ferry's own STUN responder
/// (two servers, so a point can tell a symmetric NAT), and the tracker.
struct Public {
    _coturn: netns::CoturnStun,
    coturn: SocketAddr,
    stun: SocketAddr,
    tracker: SocketAddr,
}

fn start_public(lab: &mut NatLab) -> Public {
    let ip = lab.public_ip();
    let coturn = netns::spawn_coturn_stun(lab.public_ns(), ip, 3478).expect("coturn started");
    let coturn_addr = SocketAddr::from(coturn.addr());
    let mut stun = lab.command(lab.public_ns(), FERRY);
    stun.args(["stun", "--listen", &format!("{ip}:3479")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut stun = lab.spawn(stun).expect("ferry stun started");
    let stun_addr = listening(&mut stun, "stun");
    let mut tracker = lab.command(lab.public_ns(), FERRY);
    tracker
        .args(["mount-tracker", "--listen", &format!("{ip}:7100")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut tracker = lab.spawn(tracker).expect("ferry mount-tracker started");
    let tracker_addr = listening(&mut tracker, "mount-tracker");
    Public {
        _coturn: coturn,
        coturn: coturn_addr,
        stun: stun_addr,
        tracker: tracker_addr,
    }
}

fn listening(process: &mut Spawned, name: &str) -> SocketAddr {
    let line = process
        .next_line(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{name} did not say where it listens: {e}"));
    line.strip_prefix(&format!("{name} listening on "))
        .unwrap_or_else(|| panic!("unexpected first line from {name}: {line:?}"))
        .parse()
        .expect("an address")
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-mount-nat-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A few MB of bytes that no simple pattern reproduces.
fn write_source(path: &Path, len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut file = std::fs::File::create(path).expect("source file");
    file.write_all(&data).expect("source written");
    data
}

fn point_args(public: &Public, mount: &str) -> Vec<String> {
    vec![
        "--tracker".into(),
        public.tracker.to_string(),
        "--mount".into(),
        mount.into(),
        "--stun".into(),
        public.coturn.to_string(),
        "--stun".into(),
        public.stun.to_string(),
    ]
}

fn relay(lab: &mut NatLab, site: Site, public: &Public, mount: &str, source: &Path) {
    let mut relay = lab.command(lab.host_ns(site), FERRY);
    relay
        .args(["mount", "relay"])
        .args(point_args(public, mount))
        .arg("--source")
        .arg(source)
        .args(["--rate", "8000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.spawn(relay).expect("relay started");
}

fn listen(lab: &NatLab, site: Site, public: &Public, mount: &str) -> Command {
    let mut listen = lab.command(lab.host_ns(site), FERRY);
    listen
        .args(["mount", "listen"])
        .args(point_args(public, mount));
    listen
}

#[test]
fn mr_nat_a_file_crosses_two_endpoint_independent_nats_byte_for_byte() {
    let Some(mut lab) = NatLab::new(NatKind::EndpointIndependent, NatKind::EndpointIndependent)
    else {
        return;
    };
    let public = start_public(&mut lab);
    let dir = scratch_dir("eim");
    let source_path = dir.join("source.bin");
    let out_path = dir.join("out.bin");
    let source = write_source(&source_path, 4 << 20);
    relay(&mut lab, Site::A, &public, "radio", &source_path);
    let started = Instant::now();
    let mut listener = listen(&lab, Site::B, &public, "radio");
    listener
        .arg("--out")
        .arg(&out_path)
        .args(["--bytes", &source.len().to_string()]);
    let output = netns::output_within(&mut listener, Duration::from_secs(90))
        .expect("the listener finished in time");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "listener failed: {stderr}");
    let got = std::fs::read(&out_path).expect("output file");
    eprintln!(
        "{} bytes through two NATs in {:?}",
        got.len(),
        started.elapsed()
    );
    assert_eq!(got.len(), source.len(), "length; listener said: {stderr}");
    assert!(got == source, "the output differs from the source");
    drop(public);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mr_nat_a_symmetric_nat_fails_with_a_clear_reason() {
    let Some(mut lab) = NatLab::new(NatKind::EndpointIndependent, NatKind::Symmetric) else {
        return;
    };
    let public = start_public(&mut lab);
    let dir = scratch_dir("symmetric");
    let source_path = dir.join("source.bin");
    write_source(&source_path, 64 << 10);
    relay(&mut lab, Site::A, &public, "radio", &source_path);
    let started = Instant::now();
    let mut listener = listen(&lab, Site::B, &public, "radio");
    listener
        .arg("--out")
        .arg(dir.join("out.bin"))
        .args(["--attempts", "1"]);
    let output = netns::output_within(&mut listener, Duration::from_secs(40))
        .expect("the listener gave up instead of hanging");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("gave up after {:?}: {stderr}", started.elapsed());
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gave up after 1 search"), "{stderr}");
    assert!(stderr.contains("symmetric"), "{stderr}");
    assert!(stderr.contains("hole punching cannot work"), "{stderr}");
    drop(public);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
