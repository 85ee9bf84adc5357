//! `ferry vpn`: the peer-to-peer VPN of seed 002 (spec/vpn.md).
//!
//! `ferry vpn server` runs the core's [`Server`] on one mio driver thread until
//! SIGINT/SIGTERM, printing `vpn-server listening on <ADDR>` once bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use ferry_core::vpn::server::{Command, Config, Event, Server};
use ferry_core::vpn::{Network, WallClock};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::daemon::{announce, parse_secs};

/// The environment variable `ferry vpn server` reads the password from.
pub const PASSWORD_ENV: &str = "FERRY_VPN_PASSWORD";

/// How long a stopping server gets to close its connections.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `ferry vpn`.
#[derive(Debug, Args)]
pub struct VpnArgs {
    #[command(subcommand)]
    command: VpnCommand,
}

#[derive(Debug, Subcommand)]
enum VpnCommand {
    /// Run the VPN server: client nodes authenticate over a WebSocket, get a
    /// virtual address, and exchange packets and endpoints through it.
    Server(ServerArgs),
    /// Run a VPN node on a TUN device: packets go to peers directly over
    /// encrypted UDP once hole punching succeeds, else through the server.
    Client(super::vpn_client::ClientArgs),
}

/// `ferry vpn server`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  FERRY_VPN_PASSWORD=s3cret ferry vpn server --listen 0.0.0.0:41000 --network 10.0.0.0/24
  ferry vpn server --listen 127.0.0.1:0 --network 10.0.0.0/24 --password-file /etc/ferry/vpn.pass

The password comes from exactly one of --password, --password-file (its first
line) or the environment variable FERRY_VPN_PASSWORD.
Prints `vpn-server listening on <ADDR>` on stdout once bound (the real port with :0).")]
pub struct ServerArgs {
    /// Address to listen on (WebSocket, any path).
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// The network's password (visible in `ps`: prefer --password-file or the environment).
    #[arg(long, value_name = "P", conflicts_with = "password_file")]
    password: Option<String>,
    /// A file whose first line is the password.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// The virtual network, e.g. 10.0.0.0/24; client addresses are its hosts.
    #[arg(long, value_name = "CIDR")]
    network: Network,
    /// Connections served at once, handshakes included [default: 1024].
    #[arg(long, value_name = "N")]
    max_clients: Option<usize>,
    /// Seconds without a message after which a client is closed [default: 60].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    idle_timeout: Option<Duration>,
}

/// Run `ferry vpn ...`.
pub fn run(args: VpnArgs) -> anyhow::Result<()> {
    match args.command {
        VpnCommand::Server(args) => run_server(args),
        VpnCommand::Client(args) => {
            let password = password(
                args.password.as_deref(),
                args.password_file.as_deref(),
                std::env::var(PASSWORD_ENV).ok(),
            )?;
            super::vpn_client::run(args, password)
        }
    }
}

/// The password from exactly one of the flag, the file and the environment.
fn server_password(args: &ServerArgs, env: Option<String>) -> anyhow::Result<Vec<u8>> {
    password(args.password.as_deref(), args.password_file.as_deref(), env)
}

/// The password from exactly one of `--password`, `--password-file` and the
/// environment (server and client alike).
pub fn password(
    flag: Option<&str>,
    file: Option<&Path>,
    env: Option<String>,
) -> anyhow::Result<Vec<u8>> {
    let env = env.filter(|p| !p.is_empty());
    let given = [flag.is_some(), file.is_some(), env.is_some()];
    let password = match given {
        [true, false, false] => flag.unwrap_or_default().to_owned(),
        [false, true, false] => match file {
            Some(path) => read_password_file(path)?,
            None => unreachable!("checked above"),
        },
        [false, false, true] => env.unwrap_or_default(),
        [false, false, false] => bail!(
            "no password: give --password, --password-file or the environment variable {PASSWORD_ENV}"
        ),
        _ => bail!(
            "more than one password: give only one of --password, --password-file and {PASSWORD_ENV}"
        ),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password.into_bytes())
}

fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the password file {}", path.display()))?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// The server's configuration from the flags and the environment.
fn server_config(args: &ServerArgs, env: Option<String>) -> anyhow::Result<Config> {
    let password = server_password(args, env)?;
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_millis();
    let wall = WallClock::new(
        Instant::now(),
        i64::try_from(unix_ms).context("the system clock is out of range")?,
    );
    let mut config = Config::new(args.listen, password, args.network, wall);
    if let Some(max) = args.max_clients {
        config.max_clients = max;
    }
    if let Some(idle) = args.idle_timeout {
        config.idle_timeout = idle;
    }
    Ok(config)
}

/// What the supervising thread hears.
enum Notice {
    Signal(i32),
    Failed(String),
}

fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let config = server_config(&args, std::env::var(PASSWORD_ENV).ok())?;
    tracing::info!(network = %config.network, "vpn server starting");
    let server = Server::new(config).map_err(|e| anyhow!(e))?;
    let (notices, heard) = channel();
    let failures = notices.clone();
    let handle = ferry_mio::spawn(server, move |event| server_event(event, &failures))
        .context("cannot start the vpn server")?;
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    thread::Builder::new()
        .name("vpn-signals".to_owned())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = notices.send(Notice::Signal(signal));
            }
        })?;
    let outcome = loop {
        match heard.recv_timeout(Duration::from_millis(200)) {
            Ok(Notice::Signal(signal)) => {
                tracing::info!(signal, "stopping");
                break Ok(());
            }
            Ok(Notice::Failed(error)) => break Err(anyhow!("vpn-server: {error}")),
            Err(RecvTimeoutError::Timeout) if handle.is_finished() => {
                break Err(anyhow!("vpn-server: the driver stopped"));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break Ok(()),
        }
    };
    let _ = handle.send(Command::Shutdown);
    handle.shutdown();
    let deadline = Instant::now() + STOP_GRACE;
    while !handle.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    if handle.is_finished() {
        handle.join().context("vpn-server")?;
    }
    outcome
}

fn server_event(event: Event, failures: &Sender<Notice>) {
    match event {
        Event::Listening { addr } => {
            tracing::info!(%addr, "vpn server listening");
            announce("vpn-server", addr);
        }
        Event::ListenFailed { error } => {
            let _ = failures.send(Notice::Failed(error));
        }
        Event::Joined { conn, ip, peer } => tracing::info!(%conn, %ip, %peer, "joined"),
        Event::Left { conn, ip, reason } => tracing::info!(%conn, %ip, reason = %reason, "left"),
        Event::Rejected { conn, peer, reason } => {
            tracing::info!(%conn, %peer, reason = %reason, "rejected")
        }
        other => tracing::debug!(?other, "vpn server event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: VpnCommand,
    }

    fn parse(args: &[&str]) -> ServerArgs {
        let mut all = vec!["ferry", "server", "--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).unwrap().command {
            VpnCommand::Server(args) => args,
            VpnCommand::Client(_) => panic!("parsed a server command as a client"),
        }
    }

    #[test]
    fn password_from_exactly_one_source() {
        let flag = parse(&["--network", "10.0.0.0/24", "--password", "pw"]);
        assert_eq!(server_password(&flag, None).unwrap(), b"pw");
        let none = parse(&["--network", "10.0.0.0/24"]);
        assert_eq!(server_password(&none, Some("env".into())).unwrap(), b"env");
        assert!(
            server_password(&none, None)
                .unwrap_err()
                .to_string()
                .contains("no password")
        );
        assert!(
            server_password(&flag, Some("env".into()))
                .unwrap_err()
                .to_string()
                .contains("more than one")
        );
        let dir = std::env::temp_dir().join(format!("ferry-vpn-pw-{}", std::process::id()));
        std::fs::write(&dir, "from file\nsecond line\n").unwrap();
        let file = parse(&[
            "--network",
            "10.0.0.0/24",
            "--password-file",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(server_password(&file, None).unwrap(), b"from file");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn flags_set_the_config() {
        let args = parse(&[
            "--network",
            "10.1.0.0/16",
            "--password",
            "pw",
            "--max-clients",
            "7",
            "--idle-timeout",
            "2.5",
        ]);
        let config = server_config(&args, None).unwrap();
        assert_eq!(config.max_clients, 7);
        assert_eq!(config.idle_timeout, Duration::from_millis(2500));
        assert_eq!(config.network.to_string(), "10.1.0.0/16");
    }
}
