//! `ferry vpn client`: a VPN node on a real TUN device (spec/vpn.md).
//!
//! Opens the TUN device (root or CAP_NET_ADMIN), runs the core's [`Node`] on a
//! mio driver thread with the device attached, and configures the device's
//! address when the node knows it (at once with `--address`, else once the
//! server assigns one). Runs until SIGINT/SIGTERM, or exits 1 when the server
//! refuses the password.
//!
//! stdout carries one line per fact a script may wait for:
//! `vpn-client address IP/LEN`, `vpn-client logged-in IP`,
//! `vpn-client peer VIP FROM -> TO [ENDPOINT]`, and with `--status SECS` a
//! `vpn-client status …` line every SECS seconds. Logs go to stderr.

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use ferry_core::vpn::node::{Command, Config, Event, Node, Status};
use ferry_core::vpn::wire::UNREACHABLE;
use ferry_core::vpn::{WallClock, parse_cidr};
use ferry_mio::tun::Tun;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vmac::vmac_for;

/// `ferry vpn client`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  FERRY_VPN_PASSWORD=s3cret ferry vpn client --server ws://vpn.example.net:41000 --tun ferry0 --stun stun.example.net:3478
  ferry vpn client --server ws://10.1.0.1:41000 --password-file vpn.pass --tun ferry0 --address 10.0.0.7/24 --no-p2p

Needs root (or CAP_NET_ADMIN) for the TUN device. Without --address the server
assigns one. Without --stun (or with --no-p2p) every packet goes through the
server. The password comes from exactly one of --password, --password-file or
FERRY_VPN_PASSWORD; every node of a network needs the same --kdf-iterations.")]
pub struct ClientArgs {
    /// The server, `ws://HOST:PORT[/PATH]`.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The network's password (visible in `ps`: prefer --password-file or the environment).
    #[arg(long, value_name = "P", conflicts_with = "password_file")]
    pub(super) password: Option<String>,
    /// A file whose first line is the password.
    #[arg(long, value_name = "FILE")]
    pub(super) password_file: Option<PathBuf>,
    /// The TUN device to create or attach to.
    #[arg(long, value_name = "NAME")]
    tun: String,
    /// This node's address and prefix (e.g. 10.0.0.7/24); else the server assigns one.
    #[arg(long, value_name = "IP/LEN")]
    address: Option<String>,
    /// A STUN server (HOST:PORT) for direct connections.
    #[arg(long, value_name = "ADDR")]
    stun: Option<String>,
    /// Never connect directly: every packet goes through the server.
    #[arg(long)]
    no_p2p: bool,
    /// Where to bind the UDP socket for peers.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    udp: SocketAddr,
    /// The TUN device's MTU (each packet gains 34 bytes of headers in UDP).
    #[arg(long, value_name = "BYTES", default_value_t = 1400)]
    mtu: u32,
    /// Open the TUN device without offloads: one packet per read and write
    /// (by default the kernel hands over TCP segments of up to 64 KiB, cut
    /// into MTU-sized packets for the wire, and received ones are joined).
    #[arg(long)]
    no_offload: bool,
    /// PBKDF2 iterations for the peer key; the same on every node.
    #[arg(long, value_name = "N", default_value_t = ferry_core::vpn::crypto::DEFAULT_ITERATIONS)]
    kdf_iterations: u32,
    /// Print a status line every SECS seconds.
    #[arg(long, value_name = "SECS")]
    status: Option<u64>,
}

/// What the main thread hears.
enum Notice {
    Signal(i32),
    Fatal(String),
}

/// Run `ferry vpn client`.
pub fn run(args: ClientArgs, password: Vec<u8>) -> anyhow::Result<()> {
    let (server, host, path) = parse_server_url(&args.server)?;
    let stun = args
        .stun
        .as_deref()
        .map(|s| resolve_v4(s).with_context(|| format!("--stun {s}")))
        .transpose()?;
    let address = args
        .address
        .as_deref()
        .map(|text| parse_cidr(text).map_err(anyhow::Error::from))
        .transpose()
        .context("--address")?;
    let tun = if args.no_offload {
        Tun::open(&args.tun)?
    } else {
        Tun::open_with_offload(&args.tun)?
    };
    tun.set_mtu(args.mtu)?;
    if let Some((ip, prefix)) = address {
        tun.set_address(ip, prefix)?;
    }
    tun.up()?;
    let control = tun
        .try_clone()
        .context("cannot duplicate the TUN descriptor")?;
    tracing::info!(device = tun.name(), %server, "vpn client starting");

    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_millis();
    let now = Instant::now();
    let mut config = Config::new(
        server,
        password,
        WallClock::new(
            now,
            i64::try_from(unix_ms).context("the clock is out of range")?,
        ),
    );
    config.host = host;
    config.path = path;
    config.address = address;
    config.stun = stun;
    config.p2p = !args.no_p2p;
    config.udp_bind = args.udp;
    config.kdf_iterations = args.kdf_iterations;
    config.vmac = vmac_for(tun.name());
    let node = Node::new(config, super::port_relay::os_seed()?, now);

    let (notices, heard) = channel();
    let from_events = notices.clone();
    let handle = ferry_mio::spawn_with_tun(node, tun, move |event| {
        if let Some(notice) = node_event(event, &control) {
            let _ = from_events.send(notice);
        }
    })
    .context("cannot start the vpn client")?;
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    let signal_tx = notices.clone();
    thread::Builder::new()
        .name("vpn-signals".to_owned())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = signal_tx.send(Notice::Signal(signal));
            }
        })
        .context("cannot start the signal thread")?;

    let period = args.status.map(Duration::from_secs);
    let outcome = loop {
        let wait = period.unwrap_or(Duration::from_secs(3600));
        match heard.recv_timeout(wait) {
            Ok(Notice::Signal(signal)) => {
                tracing::info!(signal, "stopping");
                break Ok(());
            }
            Ok(Notice::Fatal(reason)) => break Err(anyhow::anyhow!(reason)),
            Err(RecvTimeoutError::Timeout) => {
                if period.is_some() {
                    let _ = handle.send(Command::Status);
                }
                if handle.is_finished() {
                    break Ok(());
                }
            }
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        }
    };
    let _ = handle.send(Command::Shutdown);
    handle.shutdown();
    let _ = handle.join();
    outcome
}

/// One line for scripts.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "vpn-client {line}");
    let _ = out.flush();
}

fn node_event(event: Event, tun: &Tun) -> Option<Notice> {
    match event {
        Event::Connecting { server } => tracing::info!(%server, "connecting to the server"),
        Event::Address { ip, prefix } => {
            if let Err(e) = tun.set_address(ip, prefix).and_then(|()| tun.up()) {
                return Some(Notice::Fatal(format!("{e}")));
            }
            tracing::info!(device = tun.name(), "address {ip}/{prefix}");
            say(format_args!("address {ip}/{prefix}"));
        }
        Event::LoggedIn { ip } => {
            tracing::info!(%ip, "logged in");
            say(format_args!("logged-in {ip}"));
        }
        Event::ServerLost { reason, retry_in } => {
            tracing::warn!(
                "server connection lost: {reason}; retrying in {} s",
                retry_in.as_secs()
            );
        }
        Event::Fatal { reason } => {
            tracing::error!("{reason}");
            return Some(Notice::Fatal(reason));
        }
        Event::Public { endpoint } => tracing::info!(%endpoint, "public endpoint (STUN)"),
        Event::StunFailed { reason } => tracing::warn!("STUN: {reason}"),
        Event::UdpFailed { reason } => tracing::warn!("no direct connections: {reason}"),
        Event::Peer {
            vip,
            from,
            to,
            endpoint,
        } => {
            let endpoint = endpoint.map(|e| format!(" {e}")).unwrap_or_default();
            tracing::info!("peer {vip}: {from} -> {to}{endpoint}");
            say(format_args!("peer {vip} {from} -> {to}{endpoint}"));
        }
        Event::Route(route) => {
            if route.delay == UNREACHABLE {
                tracing::info!("route to {} via {} withdrawn", route.dst, route.next);
            } else {
                tracing::info!(
                    "route to {} via {} ({} ms)",
                    route.dst,
                    route.next,
                    route.delay
                );
            }
        }
        Event::SysRoutes(routes) => tracing::info!(
            count = routes.len(),
            "system routes from the server (not installed)"
        ),
        Event::Status(status) => say(format_args!("status {}", status_line(&status))),
    }
    None
}

fn status_line(status: &Status) -> String {
    let s = &status.stats;
    let mut line = format!(
        "logged_in={} tun_in={} tun_out={} direct_out={} direct_in={} server_out={} server_in={} relayed={} dropped={} auth_failed={} replayed={}",
        status.logged_in,
        s.tun_in,
        s.tun_out,
        s.direct_out,
        s.direct_in,
        s.server_out,
        s.server_in,
        s.relayed,
        s.dropped_no_path + s.dropped_bad_packet + s.dropped_ttl,
        s.crypto.auth_failed,
        s.crypto.replayed,
    );
    for peer in &status.peers {
        line.push_str(&format!(" peer={}:{}", peer.vip, peer.state));
        if let Some(delay) = peer.delay_ms {
            line.push_str(&format!(":{delay}ms"));
        }
    }
    line
}

/// `ws://HOST:PORT[/PATH]` → the address, the Host header and the path.
fn parse_server_url(url: &str) -> anyhow::Result<(SocketAddr, String, String)> {
    let Some(rest) = url.strip_prefix("ws://") else {
        if url.starts_with("wss://") {
            bail!(
                "--server {url}: wss:// is not supported yet; run the server behind no TLS or a TLS terminator on ws://"
            );
        }
        bail!("--server {url}: expected ws://HOST:PORT[/PATH]");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    if authority.is_empty() {
        bail!("--server {url}: no host");
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = resolve_v4(&with_port).with_context(|| format!("--server {url}"))?;
    Ok((addr, authority.to_owned(), path))
}

/// The first IPv4 address `host:port` resolves to (the VPN's UDP is IPv4).
fn resolve_v4(text: &str) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {text}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .with_context(|| format!("{text} has no IPv4 address"))
}

mod vmac {
    //! The VMAC: sixteen bytes that stay the same across restarts of one node,
    //! so the server hands it the same address again.

    /// FNV-1a over the host name and the device name, twice with different
    /// offsets: stable, not secret (the server only uses it to remember).
    pub fn vmac_for(device: &str) -> [u8; 16] {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
        let text = format!("{}|{}|{device}", machine.trim(), host.trim());
        let mut out = [0; 16];
        for (half, basis) in [(0, 0xcbf2_9ce4_8422_2325_u64), (8, 0x6c62_272e_07bb_0142)] {
            let mut hash = basis;
            for byte in text.bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            out[half..half + 8].copy_from_slice(&hash.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        let (addr, host, path) = parse_server_url("ws://127.0.0.1:41000").unwrap();
        assert_eq!(addr, "127.0.0.1:41000".parse().unwrap());
        assert_eq!((host.as_str(), path.as_str()), ("127.0.0.1:41000", "/"));
        let (_, _, path) = parse_server_url("ws://127.0.0.1:41000/vpn").unwrap();
        assert_eq!(path, "/vpn");
        let (addr, ..) = parse_server_url("ws://127.0.0.1").unwrap();
        assert_eq!(addr.port(), 80);
        for bad in ["http://x:1", "wss://x:1", "ws://", "127.0.0.1:1"] {
            assert!(parse_server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn vmac_is_stable_per_device() {
        assert_eq!(vmac_for("ferry0"), vmac_for("ferry0"));
        assert_ne!(vmac_for("ferry0"), vmac_for("ferry1"));
    }
}
