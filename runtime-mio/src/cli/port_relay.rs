//! `ferry port-relay`: the relay server (`ferry port-relay LOCALPORT`, the seed's
//! `relay <localport>`) and the forwarder (`ferry port-relay
//! --local-forward-port=6379 HOST PORT`, the seed's `relay --localForwardPort=`).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::Sender;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use ferry_core::port_relay::{Protocol, forwarder, server};

use super::daemon::{ServerSpec, parse_secs};

/// `ferry port-relay`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  # the relay: clients connect to port 7000, each gets a public port
  ferry port-relay 7000
  ferry port-relay --bind 127.0.0.1 --port-range 40000-40099 7000

  # a forwarder exposing a local redis through that relay
  redis-server --port 6379 --bind localhost
  ferry port-relay --local-forward-port=6379 relay.example.net 7000 --protocol pool
  redis-cli -h relay.example.net -p <the public port it prints>

The relay prints `port-relay listening on <ADDR>` once bound; the forwarder prints
`port-relay public port <PORT>` each time the relay lends it a port.")]
pub struct PortRelayArgs {
    /// Relay: LOCALPORT to listen on. Forwarder: HOST PORT of the relay.
    #[arg(value_name = "LOCALPORT | HOST PORT", num_args = 1..=2, required = true)]
    args: Vec<String>,
    /// Run as a forwarder exposing this local port (also `--localForwardPort=`).
    #[arg(long, alias = "localForwardPort", value_name = "PORT")]
    local_forward_port: Option<u16>,
    /// Forwarder: the local server's host.
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    local_host: IpAddr,
    /// Forwarder: how users are delivered.
    #[arg(long, default_value = "multiplex", value_name = "multiplex|pool|event")]
    protocol: Protocol,
    /// Forwarder, pool: idle connections to keep at the relay.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pool_size: usize,
    /// Relay: the address to listen on for clients.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    bind: IpAddr,
    /// Relay: the address public ports bind to (default: --bind).
    #[arg(long, value_name = "IP")]
    public_ip: Option<IpAddr>,
    /// Relay: public ports to lend, e.g. 40000-40099 (default: any the OS picks).
    #[arg(long, value_name = "LO-HI", value_parser = parse_range)]
    port_range: Option<(u16, u16)>,
    /// Relay: seconds a user waits for a pooled or event connection.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    wait: Duration,
    /// Relay: users waiting at once per client.
    #[arg(long, default_value_t = 128, value_name = "N")]
    max_waiting: usize,
    /// Relay: idle connections per pool.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_pool: usize,
    /// Relay: clients at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_clients: usize,
    /// Relay: connections tracked at once (handshakes, pooled, waiting, multiplexed).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    max_connections: usize,
    /// Multiplex: the receive window each stream announces, bytes (256 KiB to 16 MiB).
    #[arg(long, default_value_t = server::DEFAULT_WINDOW, value_name = "BYTES")]
    window: u32,
    /// Seconds between yamux keep-alive pings (multiplex; 0: off).
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_secs)]
    keepalive: Duration,
}

fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range like 40000-40099"))?;
    let lo: u16 = lo.trim().parse().map_err(|e| format!("{lo:?}: {e}"))?;
    let hi: u16 = hi.trim().parse().map_err(|e| format!("{hi:?}: {e}"))?;
    if lo == 0 || hi < lo {
        return Err(format!("{s:?}: need 1 <= LO <= HI"));
    }
    Ok((lo, hi))
}

impl PortRelayArgs {
    /// The relay or forwarder these flags describe.
    pub fn into_spec(self) -> anyhow::Result<ServerSpec> {
        match (self.local_forward_port, self.args.as_slice()) {
            (None, [port]) => {
                let port: u16 = port
                    .parse()
                    .map_err(|e| anyhow!("LOCALPORT {port:?}: {e}"))?;
                let config = server::Config {
                    public_ip: self.public_ip,
                    port_range: self.port_range,
                    pool_wait: self.wait,
                    event_wait: self.wait,
                    max_waiting: self.max_waiting,
                    max_pool: self.max_pool,
                    max_clients: self.max_clients,
                    max_connections: self.max_connections,
                    keepalive: self.keepalive,
                    window: self.window,
                    ..server::Config::default()
                };
                Ok(ServerSpec::PortRelay {
                    listen: SocketAddr::new(self.bind, port),
                    config,
                })
            }
            (Some(local), [host, port]) => {
                let port: u16 = port.parse().map_err(|e| anyhow!("PORT {port:?}: {e}"))?;
                let relay = (host.as_str(), port)
                    .to_socket_addrs()
                    .with_context(|| format!("cannot resolve {host}"))?
                    .next()
                    .ok_or_else(|| anyhow!("{host} has no address"))?;
                let mut config = forwarder::Config::new(
                    relay,
                    SocketAddr::new(self.local_host, local),
                    self.protocol,
                );
                config.pool_size = self.pool_size.max(1);
                config.keepalive = self.keepalive;
                config.window = self.window;
                Ok(ServerSpec::PortForward { config })
            }
            (None, _) => bail!("the relay takes one LOCALPORT (or use --local-forward-port)"),
            (Some(_), _) => bail!("the forwarder takes HOST PORT of the relay"),
        }
    }
}

/// 32 bytes from the OS for the relay's id generator.
pub fn os_seed() -> io::Result<[u8; 32]> {
    let mut seed = [0; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    Ok(seed)
}

/// Log a relay event; a failed control listener stops the daemon.
pub fn relay_event(event: server::Event, failed: &Sender<String>) {
    use server::Event;
    match event {
        Event::Listening { local, .. } => {
            tracing::info!(%local, "port relay listening");
            super::daemon::announce("port-relay", local);
        }
        Event::ListenFailed { error, .. } => {
            let _ = failed.send(error);
        }
        Event::ClientReady {
            client,
            protocol,
            public,
        } => tracing::info!(client, %protocol, %public, "client got a public port"),
        Event::ClientGone {
            client,
            protocol,
            reason,
        } => tracing::info!(client, %protocol, reason = %reason, "client gone"),
        Event::Refused { conn, reason } => tracing::info!(%conn, reason, "refused"),
    }
}

/// Log a forwarder event; each public port is printed on stdout for scripts.
pub fn forwarder_event(event: forwarder::Event) {
    use forwarder::Event;
    match event {
        Event::PublicPort { port } => {
            tracing::info!(port, "the relay lent a public port");
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "port-relay public port {port}");
            let _ = out.flush();
        }
        Event::Lost { reason, retry_in } => {
            tracing::warn!(reason = %reason, ?retry_in, "relay connection lost, retrying");
        }
        Event::LocalFailed { error } => {
            tracing::warn!(error = %error, "cannot reach the local server; user closed");
        }
        Event::EventDropped => {
            tracing::warn!("too many users being connected at once; one left unanswered");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: PortRelayArgs,
    }

    fn spec(argv: &[&str]) -> anyhow::Result<ServerSpec> {
        let mut all = vec!["port-relay"];
        all.extend_from_slice(argv);
        Cli::try_parse_from(all)?.args.into_spec()
    }

    #[test]
    fn pr14_one_port_is_the_relay() {
        let ServerSpec::PortRelay { listen, config } = spec(&["7000"]).expect("parses") else {
            panic!()
        };
        assert_eq!(listen, "0.0.0.0:7000".parse().expect("addr"));
        assert_eq!(config.public_ip, None);
        let ServerSpec::PortRelay { config, .. } =
            spec(&["--port-range", "4000-4010", "--public-ip", "127.0.0.1", "0"]).expect("parses")
        else {
            panic!()
        };
        assert_eq!(config.port_range, Some((4000, 4010)));
        assert!(spec(&["--port-range", "9-1", "0"]).is_err());
    }

    #[test]
    fn pr14_both_forwarder_spellings_parse() {
        for flag in ["--local-forward-port=6379", "--localForwardPort=6379"] {
            let ServerSpec::PortForward { config } =
                spec(&[flag, "127.0.0.1", "7000", "--protocol", "event"]).expect("parses")
            else {
                panic!()
            };
            assert_eq!(config.local, "127.0.0.1:6379".parse().expect("addr"));
            assert_eq!(config.relay, "127.0.0.1:7000".parse().expect("addr"));
            assert_eq!(config.protocol, Protocol::Event);
        }
        assert!(spec(&["--local-forward-port=1", "127.0.0.1"]).is_err());
        assert!(spec(&["127.0.0.1", "7000"]).is_err());
        assert!(spec(&["--protocol", "udp", "--local-forward-port=1", "h", "1"]).is_err());
    }
}
