//! `ferry up`: every server from one TOML file (see `ferry.example.toml`).
//!
//! Each server has a section named after it. `enabled` (default `true`) and
//! `listen` belong to the runtime, and so do `[ws_relay]`'s `tls_cert` and
//! `tls_key` (PEM paths, both or neither: serve `wss://`); every other key is the protocol machine's own
//! `Config` (durations in seconds), parsed by that type so unknown keys are errors.
//! `[stun]`, the STUN responder the mount relay's points ask, has no other key.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use ferry_core::name_relay::server::Config as NameRelayConfig;
use ferry_core::port_relay::{Protocol, forwarder, server::Config as PortRelayConfig};
use ferry_core::ws_relay::Config as WsRelayConfig;
use toml::{Table, Value};

use super::daemon::{ServerSpec, TlsFiles, apply_ws_env, supervise};

/// The name relay's port when the config does not say (the seed's).
const NAME_RELAY_LISTEN: &str = "127.0.0.1:8080";
/// The WebSocket relay's port when the config does not say (the seed's).
const WS_RELAY_LISTEN: &str = "127.0.0.1:42102";
/// The port relay's control port when the config does not say (the seed has none).
const PORT_RELAY_LISTEN: &str = "127.0.0.1:7000";
/// The mount tracker's port when the config does not say (the seed has none).
const MOUNT_TRACKER_LISTEN: &str = "127.0.0.1:7100";
/// The STUN responder's UDP port when the config does not say (RFC 8489's).
const STUN_LISTEN: &str = "127.0.0.1:3478";

/// `[port_forward]`: a forwarder needs a relay, so it runs only when configured.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PortForwardSection {
    #[serde(default = "yes")]
    enabled: bool,
    /// `host:port` of the relay.
    relay: String,
    local_port: u16,
    #[serde(default = "loopback")]
    local_host: std::net::IpAddr,
    #[serde(default = "multiplex")]
    protocol: String,
    #[serde(default)]
    pool_size: Option<usize>,
    /// Seconds between yamux keep-alive pings; 0 turns them off.
    #[serde(default)]
    keepalive: Option<f64>,
    /// The receive window each multiplexed stream announces, bytes.
    #[serde(default)]
    window: Option<u32>,
}

fn yes() -> bool {
    true
}

fn loopback() -> std::net::IpAddr {
    std::net::Ipv4Addr::LOCALHOST.into()
}

fn multiplex() -> String {
    "multiplex".to_owned()
}

/// `ferry up`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  ferry up                        # every server on loopback at its default port
  ferry up --config ferry.toml    # see runtime-mio/ferry.example.toml

Prints one `<server> listening on <ADDR>` line per server on stdout.")]
pub struct UpArgs {
    /// The TOML config; without it every server starts with its defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Run what the config enables until SIGINT/SIGTERM.
pub fn up(args: UpArgs) -> anyhow::Result<()> {
    let text = match &args.config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => String::new(),
    };
    let specs = parse(&text).with_context(|| match &args.config {
        Some(path) => format!("bad config {}", path.display()),
        None => "bad default config".to_owned(),
    })?;
    supervise(specs)
}

/// The servers a config enables, in a fixed order.
pub fn parse(text: &str) -> anyhow::Result<Vec<ServerSpec>> {
    let mut root: Table = toml::from_str(text)?;
    let mut specs = Vec::new();
    if let Some(section) = Section::take(&mut root, "name_relay", NAME_RELAY_LISTEN)? {
        let config: NameRelayConfig = section
            .rest
            .try_into()
            .map_err(|e| anyhow!("[name_relay]: {e}"))?;
        specs.push(ServerSpec::NameRelay {
            listen: section.listen,
            config,
        });
    }
    if let Some(mut section) = Section::take(&mut root, "ws_relay", WS_RELAY_LISTEN)? {
        let tls = take_tls(&mut section.rest)?;
        let mut config: WsRelayConfig = section
            .rest
            .try_into()
            .map_err(|e| anyhow!("[ws_relay]: {e}"))?;
        apply_ws_env(&mut config);
        specs.push(ServerSpec::WsRelay {
            listen: section.listen,
            config,
            tls,
        });
    }
    if let Some(section) = Section::take(&mut root, "port_relay", PORT_RELAY_LISTEN)? {
        let config: PortRelayConfig = section
            .rest
            .try_into()
            .map_err(|e| anyhow!("[port_relay]: {e}"))?;
        specs.push(ServerSpec::PortRelay {
            listen: section.listen,
            config,
        });
    }
    if let Some(section) = Section::take(&mut root, "mount_tracker", MOUNT_TRACKER_LISTEN)? {
        let config: ferry_core::mount_relay::tracker::Config = section
            .rest
            .try_into()
            .map_err(|e| anyhow!("[mount_tracker]: {e}"))?;
        specs.push(ServerSpec::MountTracker {
            listen: section.listen,
            config,
        });
    }
    if let Some(section) = Section::take(&mut root, "stun", STUN_LISTEN)? {
        if let Some(unknown) = section.rest.keys().next() {
            bail!("[stun]: unknown key {unknown:?}; known: enabled, listen");
        }
        specs.push(ServerSpec::Stun {
            listen: section.listen,
        });
    }
    if let Some(section) = root.remove("port_forward") {
        let section: PortForwardSection = section
            .try_into()
            .map_err(|e| anyhow!("[port_forward]: {e}"))?;
        if section.enabled {
            specs.push(port_forward(section)?);
        }
    }
    if let Some(unknown) = root.keys().next() {
        bail!(
            "unknown section [{unknown}]; known: [name_relay], [ws_relay], [port_relay], [mount_tracker], [stun], [port_forward]"
        );
    }
    Ok(specs)
}

fn port_forward(section: PortForwardSection) -> anyhow::Result<ServerSpec> {
    use std::net::ToSocketAddrs;
    let relay = section
        .relay
        .to_socket_addrs()
        .map_err(|e| anyhow!("[port_forward] relay = {:?}: {e}", section.relay))?
        .next()
        .ok_or_else(|| anyhow!("[port_forward] relay {:?} has no address", section.relay))?;
    let protocol: Protocol = section
        .protocol
        .parse()
        .map_err(|e| anyhow!("[port_forward] {e}"))?;
    let local = std::net::SocketAddr::new(section.local_host, section.local_port);
    let mut config = forwarder::Config::new(relay, local, protocol);
    if let Some(n) = section.pool_size {
        config.pool_size = n.max(1);
    }
    if let Some(window) = section.window {
        config.window = window;
    }
    if let Some(secs) = section.keepalive {
        config.keepalive = std::time::Duration::try_from_secs_f64(secs)
            .map_err(|e| anyhow!("[port_forward] keepalive = {secs}: {e}"))?;
    }
    Ok(ServerSpec::PortForward { config })
}

/// `[ws_relay]`'s `tls_cert` and `tls_key`, taken out of the section.
fn take_tls(rest: &mut Table) -> anyhow::Result<Option<TlsFiles>> {
    let mut path = |key: &str| match rest.remove(key) {
        Some(Value::String(path)) => Ok(Some(PathBuf::from(path))),
        Some(_) => bail!("[ws_relay] {key} must be a string (a PEM file's path)"),
        None => Ok(None),
    };
    match (path("tls_cert")?, path("tls_key")?) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        _ => bail!("[ws_relay] tls_cert and tls_key go together: set both or neither"),
    }
}

/// One server's section, with the runtime's keys taken out.
struct Section {
    listen: SocketAddr,
    rest: Table,
}

impl Section {
    /// `None` if the section says `enabled = false`; a missing section is all defaults.
    fn take(root: &mut Table, name: &str, default_listen: &str) -> anyhow::Result<Option<Section>> {
        let mut rest = match root.remove(name) {
            Some(Value::Table(table)) => table,
            Some(_) => bail!("[{name}] must be a table"),
            None => Table::new(),
        };
        let enabled = match rest.remove("enabled") {
            Some(Value::Boolean(enabled)) => enabled,
            Some(_) => bail!("[{name}] enabled must be true or false"),
            None => true,
        };
        let listen = match rest.remove("listen") {
            Some(Value::String(addr)) => addr,
            Some(_) => bail!("[{name}] listen must be a string like \"127.0.0.1:8080\""),
            None => default_listen.to_owned(),
        };
        let listen = listen
            .parse()
            .map_err(|e| anyhow!("[{name}] listen = {listen:?}: {e}"))?;
        Ok(enabled.then_some(Section { listen, rest }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn empty_config_starts_every_server_at_its_default() {
        let specs = parse("").expect("parses");
        let mut ws = WsRelayConfig::default();
        apply_ws_env(&mut ws);
        assert_eq!(
            specs,
            vec![
                ServerSpec::NameRelay {
                    listen: NAME_RELAY_LISTEN.parse().expect("addr"),
                    config: NameRelayConfig::default(),
                },
                ServerSpec::WsRelay {
                    listen: WS_RELAY_LISTEN.parse().expect("addr"),
                    config: ws,
                    tls: None,
                },
                ServerSpec::PortRelay {
                    listen: PORT_RELAY_LISTEN.parse().expect("addr"),
                    config: PortRelayConfig::default(),
                },
                ServerSpec::MountTracker {
                    listen: MOUNT_TRACKER_LISTEN.parse().expect("addr"),
                    config: Default::default(),
                },
                ServerSpec::Stun {
                    listen: STUN_LISTEN.parse().expect("addr"),
                },
            ]
        );
    }

    #[test]
    fn section_sets_listen_and_machine_config() {
        let specs = parse(
            "[name_relay]\nlisten = \"0.0.0.0:9000\"\nidle_timeout = 2.5\nmax_connections = 7\n",
        )
        .expect("parses");
        let ServerSpec::NameRelay { listen, config } = &specs[0] else {
            panic!("the name relay comes first: {specs:?}");
        };
        assert_eq!(listen.port(), 9000);
        assert_eq!(config.idle_timeout, Duration::from_millis(2500));
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.registration_timeout, Duration::from_secs(3));
    }

    #[test]
    fn disabled_section_starts_nothing() {
        let all_off = "[name_relay]\nenabled = false\n[ws_relay]\nenabled = false\n[port_relay]\nenabled = false\n[mount_tracker]\nenabled = false\n[stun]\nenabled = false\n";
        assert!(parse(all_off).expect("parses").is_empty());
        let specs = parse(
            "[name_relay]\nenabled = false\n[port_relay]\nenabled = false\n[mount_tracker]\nenabled = false\n[stun]\nenabled = false\n",
        )
            .expect("parses");
        assert!(matches!(specs.as_slice(), [ServerSpec::WsRelay { .. }]));
    }

    #[test]
    fn ws_relay_section_reads_its_config() {
        let specs = parse(
            "[name_relay]\nenabled = false\n[port_relay]\nenabled = false\n[mount_tracker]\nenabled = false\n[stun]\nenabled = false\n[ws_relay]\nlisten = \"127.0.0.1:9100\"\nping_interval = 5\nallowed_origins = [\"http://a\"]\n",
        )
        .expect("parses");
        let [
            ServerSpec::WsRelay {
                listen,
                config,
                tls,
            },
        ] = specs.as_slice()
        else {
            panic!("{specs:?}");
        };
        assert_eq!(listen.port(), 9100);
        assert_eq!(config.ping_interval, Duration::from_secs(5));
        assert_eq!(*tls, None);
        if std::env::var_os("ALLOWED_ORIGINS").is_none() {
            assert_eq!(config.allowed_origins, Some(vec!["http://a".to_owned()]));
        }
        assert!(parse("[ws_relay]\npign_interval = 5\n").is_err());
    }

    #[test]
    fn ws_relay_tls_keys_belong_to_the_runtime() {
        let specs = parse(
            "[name_relay]\nenabled = false\n[port_relay]\nenabled = false\n[mount_tracker]\nenabled = false\n[stun]\nenabled = false\n[ws_relay]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nping_interval = 5\n",
        )
        .expect("parses");
        let [ServerSpec::WsRelay { tls, .. }] = specs.as_slice() else {
            panic!("{specs:?}");
        };
        let files = TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        };
        assert_eq!(tls.as_ref(), Some(&files));
        assert!(parse("[ws_relay]\ntls_cert = \"c.pem\"\n").is_err());
        assert!(parse("[ws_relay]\ntls_key = \"k.pem\"\n").is_err());
        assert!(parse("[ws_relay]\ntls_cert = 1\ntls_key = \"k.pem\"\n").is_err());
    }

    #[test]
    fn unknown_keys_and_sections_are_errors() {
        assert!(parse("[name_relay]\nidle_timeuot = 3\n").is_err());
        assert!(parse("[nmae_relay]\n").is_err());
        assert!(parse("[name_relay]\nlisten = \"nowhere\"\n").is_err());
    }

    #[test]
    fn the_example_config_parses() {
        let text = include_str!("../../ferry.example.toml");
        assert_eq!(parse(text).expect("parses").len(), 5);
    }

    #[test]
    fn stun_section_sets_listen_and_rejects_other_keys() {
        let specs = parse(
            "[name_relay]\nenabled = false\n[ws_relay]\nenabled = false\n[port_relay]\nenabled = false\n[mount_tracker]\nenabled = false\n[stun]\nlisten = \"127.0.0.1:3479\"\n",
        )
        .expect("parses");
        assert_eq!(
            specs,
            vec![ServerSpec::Stun {
                listen: "127.0.0.1:3479".parse().expect("addr"),
            }]
        );
        assert!(parse("[stun]\nlisten = \"127.0.0.1:3479\"\nttl = 3\n").is_err());
        assert!(parse("[stun]\nenabled = 1\n").is_err());
    }

    #[test]
    fn pr14_port_relay_and_forwarder_sections() {
        let specs = parse(
            "[name_relay]\nenabled = false\n[ws_relay]\nenabled = false\n[mount_tracker]\nenabled = false\n[stun]\nenabled = false\n[port_relay]\nlisten = \"127.0.0.1:7100\"\npool_wait = 3\nport_range = [5000, 5010]\npublic_ip = \"127.0.0.1\"\n[port_forward]\nrelay = \"127.0.0.1:7100\"\nlocal_port = 6379\nprotocol = \"pool\"\npool_size = 4\n",
        )
        .expect("parses");
        let [
            ServerSpec::PortRelay { listen, config },
            ServerSpec::PortForward { config: forward },
        ] = specs.as_slice()
        else {
            panic!("{specs:?}");
        };
        assert_eq!(listen.port(), 7100);
        assert_eq!(config.pool_wait, Duration::from_secs(3));
        assert_eq!(config.port_range, Some((5000, 5010)));
        assert_eq!(forward.local, "127.0.0.1:6379".parse().expect("addr"));
        assert_eq!(forward.protocol, Protocol::Pool);
        assert_eq!(forward.pool_size, 4);
        assert!(
            parse("[port_forward]\nrelay = \"127.0.0.1:1\"\n").is_err(),
            "needs local_port"
        );
        assert!(parse("[port_relay]\npool_wiat = 3\n").is_err());
    }
}
