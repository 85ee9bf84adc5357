//! Running servers: one driver thread per server, all stopped together on
//! SIGINT/SIGTERM or when one of them fails.
//!
//! A new protocol adds a [`ServerSpec`] variant, its `start` arm and its event
//! logger; `ferry up` and the signal handling serve it unchanged.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args;
use ferry_core::Machine;
use ferry_core::name_relay::server::{CloseReason, Command, Config, Event, Server};
use ferry_core::port_relay::{forwarder, server as port_server};
use ferry_core::ws_relay;
use ferry_mio::tls::TlsServer;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long stopped servers get to close their sockets before we give up waiting.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `ferry name-relay`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  ferry name-relay --listen 0.0.0.0:8080 --idle-timeout 60
  # then, in two other terminals:
  ferry name-client localhost 8080 device_a --recv 1
  ferry name-client localhost 8080 device_b --send device_a --data hello

Prints `name-relay listening on <ADDR>` on stdout once bound (the real port with :0).")]
pub struct NameRelayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,
    /// Seconds a new connection has to register its name.
    #[arg(long, default_value = "3", value_name = "SECS", value_parser = parse_secs)]
    registration_timeout: Duration,
    /// Seconds without a byte from a client before it is closed.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_secs)]
    idle_timeout: Duration,
    /// Largest frame payload accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    max_frame_len: usize,
    /// Bytes queued to one receiver before its senders are paused [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_queued_bytes: Option<usize>,
    /// Connections served at once [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
}

/// Parse seconds, whole or fractional (`3`, `0.5`).
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

impl NameRelayArgs {
    /// The server these flags describe.
    pub fn into_spec(self) -> ServerSpec {
        let defaults = Config::default();
        ServerSpec::NameRelay {
            listen: self.listen,
            config: Config {
                registration_timeout: self.registration_timeout,
                idle_timeout: self.idle_timeout,
                max_frame_len: self.max_frame_len,
                max_queued_bytes: self.max_queued_bytes.unwrap_or(defaults.max_queued_bytes),
                max_connections: self.max_connections.unwrap_or(defaults.max_connections),
                ..defaults
            },
        }
    }
}

/// `ferry ws-relay`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  ADMIN_SECRET=s3cret ALLOWED_ORIGINS=http://localhost:8000 ferry ws-relay --listen 127.0.0.1:42102
  # a browser in the allowed origin then connects with:
  #   new WebSocket(\"ws://127.0.0.1:42102/v1?relayId=relay-1&peerId=peer-1\", [\"s3cret\"])
  ferry ws-relay --tls-cert cert.pem --tls-key key.pem   # serves wss:// (WS-16)

Environment: ADMIN_SECRET (required as Sec-WebSocket-Protocol when set),
ALLOWED_ORIGINS (comma-separated Origin values; others get 403).
Prints `ws-relay listening on <ADDR>` on stdout once bound.")]
pub struct WsRelayArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:42102", value_name = "ADDR")]
    listen: SocketAddr,
    /// Seconds between the relay's `ping` messages.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_secs)]
    ping_interval: Duration,
    /// Seconds of silence after which a connection is closed as stale.
    #[arg(long, default_value = "90", value_name = "SECS", value_parser = parse_secs)]
    stale_timeout: Duration,
    /// Largest message accepted, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_message: Option<usize>,
    /// Bytes queued to one peer before it is closed as a slow consumer [default: 4194304].
    #[arg(long, value_name = "BYTES")]
    max_queued_bytes: Option<usize>,
    /// Connections served at once [default: 10000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Serve wss://: the PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Serve wss://: the PEM private key (needs --tls-cert).
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl WsRelayArgs {
    /// The server these flags (and the environment) describe.
    pub fn into_spec(self) -> ServerSpec {
        let defaults = ws_relay::Config::default();
        let mut config = ws_relay::Config {
            ping_interval: self.ping_interval,
            stale_timeout: self.stale_timeout,
            max_message: self.max_message.unwrap_or(defaults.max_message),
            max_queued_bytes: self.max_queued_bytes.unwrap_or(defaults.max_queued_bytes),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            ..defaults
        };
        apply_ws_env(&mut config);
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None, // clap requires both or neither
        };
        ServerSpec::WsRelay {
            listen: self.listen,
            config,
            tls,
        }
    }
}

/// `ADMIN_SECRET` and `ALLOWED_ORIGINS`, as the seed names them, override a config
/// file; an empty variable counts as unset.
pub fn apply_ws_env(config: &mut ws_relay::Config) {
    if let Ok(secret) = std::env::var("ADMIN_SECRET")
        && !secret.is_empty()
    {
        config.admin_secret = Some(secret);
    }
    if let Ok(origins) = std::env::var("ALLOWED_ORIGINS")
        && !origins.trim().is_empty()
    {
        config.allowed_origins = Some(ws_relay::Config::parse_origins(&origins));
    }
}

/// The PEM files that make a server speak TLS (WS-16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// A server to run, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSpec {
    /// Seed 004, the name relay.
    NameRelay {
        /// Where to listen.
        listen: SocketAddr,
        /// The server's tunables.
        config: Config,
    },
    /// Seed 003, the WebSocket relay.
    WsRelay {
        /// Where to listen.
        listen: SocketAddr,
        /// The server's tunables.
        config: ws_relay::Config,
        /// `Some`: serve `wss://` with these files, through [`ferry_mio::tls::TlsServer`].
        tls: Option<TlsFiles>,
    },
    /// Seed 001, the port relay server.
    PortRelay {
        /// Where clients connect.
        listen: SocketAddr,
        /// The relay's tunables.
        config: port_server::Config,
    },
    /// Seed 000, the mount relay's tracker.
    MountTracker {
        /// Where to listen.
        listen: SocketAddr,
        /// The tracker's tunables.
        config: ferry_core::mount_relay::tracker::Config,
    },
    /// A STUN Binding responder (for the points of seed 000).
    Stun {
        /// The UDP address to answer on.
        listen: SocketAddr,
    },
    /// Seed 001, a forwarder exposing a local server through a port relay.
    PortForward {
        /// Relay, local server, protocol.
        config: forwarder::Config,
    },
}

impl ServerSpec {
    fn name(&self) -> &'static str {
        match self {
            ServerSpec::NameRelay { .. } => "name-relay",
            ServerSpec::WsRelay { .. } => "ws-relay",
            ServerSpec::PortRelay { .. } => "port-relay",
            ServerSpec::PortForward { .. } => "port-forward",
            ServerSpec::MountTracker { .. } => "mount-tracker",
            ServerSpec::Stun { .. } => "stun",
        }
    }

    fn start(self, notices: Sender<Notice>) -> io::Result<Running> {
        let name = self.name();
        match self {
            ServerSpec::NameRelay { listen, config } => run_machine(
                name,
                Server::new(config),
                [Command::Listen(listen), Command::Shutdown],
                move |event| name_relay_event(event, &notices),
            ),
            ServerSpec::WsRelay {
                listen,
                config,
                tls: None,
            } => run_machine(
                name,
                ws_relay::Server::new(config),
                [
                    ws_relay::Command::Listen(listen),
                    ws_relay::Command::Shutdown,
                ],
                move |event| ws_relay_event(event, false, &notices),
            ),
            ServerSpec::WsRelay {
                listen,
                config,
                tls: Some(files),
            } => {
                let tls = ferry_mio::tls::server_config(&files.cert, &files.key)
                    .map_err(io::Error::other)?;
                run_machine(
                    name,
                    TlsServer::new(ws_relay::Server::new(config), tls),
                    [
                        ws_relay::Command::Listen(listen),
                        ws_relay::Command::Shutdown,
                    ],
                    move |event| ws_relay_event(event, true, &notices),
                )
            }
            ServerSpec::PortRelay { listen, config } => {
                let seed = super::port_relay::os_seed()?;
                let (failed, failures) = std::sync::mpsc::channel();
                thread::Builder::new()
                    .name("port-relay-failures".to_owned())
                    .spawn(move || {
                        if let Ok(error) = failures.recv() {
                            let _ = notices.send(Notice::Failed {
                                server: "port-relay",
                                error,
                            });
                        }
                    })?;
                run_machine(
                    name,
                    port_server::Server::new(config, seed),
                    [
                        port_server::Command::Listen(listen),
                        port_server::Command::Shutdown,
                    ],
                    move |event| super::port_relay::relay_event(event, &failed),
                )
            }
            ServerSpec::MountTracker { listen, config } => {
                use ferry_core::mount_relay::tracker;
                run_machine(
                    name,
                    tracker::Tracker::new(config),
                    [tracker::Command::Listen(listen), tracker::Command::Shutdown],
                    move |event| mount_tracker_event(event, &notices),
                )
            }
            ServerSpec::Stun { listen } => {
                use ferry_core::stun::responder;
                run_machine(
                    name,
                    responder::Responder::new(),
                    [
                        responder::Command::Listen(listen),
                        responder::Command::Shutdown,
                    ],
                    move |event| match event {
                        responder::Event::Listening { local, .. } => {
                            tracing::info!(%local, "stun responder listening");
                            announce("stun", local);
                        }
                        responder::Event::ListenFailed { error, .. } => {
                            let _ = notices.send(Notice::Failed {
                                server: "stun",
                                error,
                            });
                        }
                    },
                )
            }
            ServerSpec::PortForward { config } => {
                tracing::info!(relay = %config.relay, local = %config.local, protocol = %config.protocol, "forwarding");
                run_machine(
                    name,
                    forwarder::Forwarder::new(config),
                    [forwarder::Command::Start, forwarder::Command::Stop],
                    super::port_relay::forwarder_event,
                )
            }
        }
    }
}

/// Start `machine` on its own driver thread and send it `listen`; stopping sends
/// it `shutdown` (close every connection cleanly), then ends the loop.
fn run_machine<M>(
    name: &'static str,
    machine: M,
    [listen, shutdown]: [M::Command; 2],
    on_event: impl FnMut(M::Event) + Send + 'static,
) -> io::Result<Running>
where
    M: Machine + Send + 'static,
    M::Command: Send + 'static,
{
    let handle = ferry_mio::spawn(machine, on_event)?;
    handle.send(listen)?;
    let remote = handle.remote();
    let shutdown = std::sync::Mutex::new(Some(shutdown));
    Ok(Running {
        name,
        stop: Box::new(move || {
            if let Some(command) = shutdown.lock().ok().and_then(|mut c| c.take()) {
                let _ = remote.send(command);
            }
            remote.shutdown();
        }),
        join: Box::new(move || handle.join()),
    })
}

/// What the supervisor hears about.
enum Notice {
    Signal(i32),
    Failed {
        server: &'static str,
        error: String,
    },
    Exited {
        server: &'static str,
        result: io::Result<()>,
    },
}

struct Running {
    name: &'static str,
    stop: Box<dyn Fn() + Send>,
    join: Box<dyn FnOnce() -> io::Result<()> + Send>,
}

/// The line scripts wait for: `<server> listening on <addr>`.
pub fn announce(server: &str, local: SocketAddr) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{server} listening on {local}");
    let _ = out.flush();
}

fn name_relay_event(event: Event, notices: &Sender<Notice>) {
    match event {
        Event::Listening { local, .. } => {
            tracing::info!(%local, "name relay listening");
            announce("name-relay", local);
        }
        Event::ListenFailed { error, .. } => {
            let _ = notices.send(Notice::Failed {
                server: "name-relay",
                error,
            });
        }
        Event::Registered { conn, name } => tracing::info!(%conn, name = %name, "registered"),
        Event::Closed { conn, name, reason } => {
            let name = name.unwrap_or_default();
            match reason {
                CloseReason::PeerClosed => tracing::info!(%conn, name = %name, "closed"),
                CloseReason::RegistrationTimeout(_) | CloseReason::IdleTimeout(_) => {
                    tracing::info!(%conn, name = %name, %reason, "closed by the relay");
                }
                reason => tracing::warn!(%conn, name = %name, %reason, "closed by the relay"),
            }
        }
        Event::Dropped { from, dest, len } => {
            tracing::debug!(from = %from, dest = %dest, len, "frame for an unknown name dropped");
        }
        other => tracing::debug!(?other, "name relay event"),
    }
}

fn ws_relay_event(event: ws_relay::Event, tls: bool, notices: &Sender<Notice>) {
    use ws_relay::Event;
    match event {
        Event::Listening { local, .. } => {
            tracing::info!(%local, tls, "ws relay listening");
            announce("ws-relay", local);
        }
        Event::ListenFailed { error, .. } => {
            let _ = notices.send(Notice::Failed {
                server: "ws-relay",
                error,
            });
        }
        Event::Rejected {
            conn,
            status,
            reason,
        } => {
            tracing::info!(%conn, status, reason = %reason, "handshake refused");
        }
        Event::Joined {
            conn,
            relay_id,
            peer_id,
        } => {
            tracing::info!(%conn, relay_id = %relay_id, peer_id = %peer_id, "joined");
        }
        Event::Left {
            conn,
            relay_id,
            peer_id,
            code,
            reason,
        } => match code {
            Some(1008) => {
                tracing::warn!(%conn, relay_id = %relay_id, peer_id = %peer_id, reason = %reason, "closed by the relay")
            }
            _ => {
                tracing::info!(%conn, relay_id = %relay_id, peer_id = %peer_id, ?code, reason = %reason, "left")
            }
        },
        Event::Dropped { conn, why } => tracing::debug!(%conn, why = %why, "message not relayed"),
        other => tracing::debug!(?other, "ws relay event"),
    }
}

fn mount_tracker_event(event: ferry_core::mount_relay::tracker::Event, notices: &Sender<Notice>) {
    use ferry_core::mount_relay::tracker::Event;
    match event {
        Event::Listening { local, .. } => {
            tracing::info!(%local, "mount tracker listening");
            announce("mount-tracker", local);
        }
        Event::ListenFailed { error, .. } => {
            let _ = notices.send(Notice::Failed {
                server: "mount-tracker",
                error,
            });
        }
        Event::Registered { mount, addr, relay } => {
            tracing::info!(mount = %mount, %addr, relay, "point registered");
        }
        Event::Paired { a, b } => tracing::info!(%a, %b, "points connected"),
        Event::Rejected {
            conn,
            status,
            reason,
        } => tracing::info!(%conn, status, reason = %reason, "request refused"),
    }
}

/// `ferry mount-tracker`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  ferry mount-tracker --listen 0.0.0.0:7100
  # points register with: GET /Pi HTTP/1.0 / Mount: NAME / MyAddr: IP:PORT [/ Latency: MS / Flag: relay]

Prints `mount-tracker listening on <ADDR>` on stdout once bound.")]
pub struct MountTrackerArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:7100", value_name = "ADDR")]
    listen: SocketAddr,
    /// Seconds a registration lives without a refresh.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    ttl: Duration,
}

impl MountTrackerArgs {
    /// The server these flags describe.
    pub fn into_spec(self) -> ServerSpec {
        ServerSpec::MountTracker {
            listen: self.listen,
            config: ferry_core::mount_relay::tracker::Config {
                ttl: self.ttl,
                ..Default::default()
            },
        }
    }
}

/// `ferry stun`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  ferry stun --listen 0.0.0.0:3478                      # the responder
  ferry stun --probe stun.example.net:3478              # the client: this host's public address
  ferry stun --probe 127.0.0.1:3478 --probe 127.0.0.1:3479

The responder answers STUN Binding requests (RFC 8489) with the requester's
address and prints `stun listening on <ADDR>` on stdout once bound.
With --probe it is a client instead: it asks each server from one UDP socket and
prints `mapped <SERVER> -> <ADDR>` per answer, then, when two servers answered,
`nat: endpoint-independent` or `nat: symmetric (per-destination mapping)`. It
exits 1 if a server did not answer (RFC 8489 retransmissions: 39.5 s).")]
pub struct StunArgs {
    /// The UDP address to answer on.
    #[arg(
        long,
        default_value = "127.0.0.1:3478",
        value_name = "ADDR",
        conflicts_with = "probe"
    )]
    listen: SocketAddr,
    /// Be a client: ask this STUN server (HOST:PORT) for this host's public
    /// address; give it twice to learn whether the NAT maps per destination.
    #[arg(long, value_name = "SERVER")]
    probe: Vec<String>,
    /// With --probe: the local UDP address [default: any, of the first server's family].
    #[arg(long, value_name = "ADDR", requires = "probe")]
    bind: Option<String>,
}

impl StunArgs {
    /// With `--probe`: the servers to ask and the local address, for
    /// [`super::mount::probe_main`]; `None` for the responder.
    pub fn probe(&self) -> Option<(&[String], Option<&str>)> {
        (!self.probe.is_empty()).then_some((self.probe.as_slice(), self.bind.as_deref()))
    }

    /// The server these flags describe.
    pub fn into_spec(self) -> ServerSpec {
        ServerSpec::Stun {
            listen: self.listen,
        }
    }
}

/// Run `specs` until SIGINT/SIGTERM (`Ok`) or until one fails (`Err`).
pub fn supervise(specs: Vec<ServerSpec>) -> anyhow::Result<()> {
    if specs.is_empty() {
        bail!("no server is enabled");
    }
    let (tx, notices) = channel();
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    let signal_handle = signals.handle();
    let signal_tx = tx.clone();
    thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            for signal in signals.forever() {
                if signal_tx.send(Notice::Signal(signal)).is_err() {
                    return;
                }
            }
        })
        .context("cannot start the signal thread")?;

    let mut stops = Vec::new();
    let mut outcome = Ok(());
    for spec in specs {
        let name = spec.name();
        match spec.start(tx.clone()) {
            Ok(running) => {
                stops.push(running.stop);
                let join = running.join;
                let exited = tx.clone();
                let joiner = thread::Builder::new().spawn(move || {
                    let result = join();
                    let _ = exited.send(Notice::Exited {
                        server: running.name,
                        result,
                    });
                });
                if let Err(e) = joiner {
                    outcome = Err(anyhow!("cannot watch {name}: {e}"));
                    break;
                }
            }
            Err(e) => {
                outcome = Err(anyhow!("cannot start {name}: {e}"));
                break;
            }
        }
    }
    drop(tx);

    let mut running = stops.len();
    if outcome.is_ok() {
        outcome = match notices.recv() {
            Ok(Notice::Signal(signal)) => {
                tracing::info!(signal, "stopping");
                Ok(())
            }
            Ok(Notice::Failed { server, error }) => Err(anyhow!("{server}: {error}")),
            Ok(Notice::Exited { server, result }) => {
                running -= 1;
                match result {
                    Ok(()) => Err(anyhow!("{server} stopped unexpectedly")),
                    Err(e) => Err(anyhow!("{server} failed: {e}")),
                }
            }
            Err(_) => Err(anyhow!("every server is gone")),
        };
    }
    for stop in &stops {
        stop();
    }
    let deadline = Instant::now() + STOP_GRACE;
    while running > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match notices.recv_timeout(left) {
            Ok(Notice::Exited { server, result }) => {
                running -= 1;
                if let Err(e) = result {
                    tracing::warn!("{server} ended with an error: {e}");
                }
            }
            Ok(Notice::Signal(_)) => {
                tracing::warn!("second signal: exiting at once");
                break;
            }
            Ok(Notice::Failed { .. }) => {}
            Err(_) => {
                tracing::warn!("servers still running after {STOP_GRACE:?}: exiting anyway");
                break;
            }
        }
    }
    signal_handle.close();
    outcome
}
