//! `ferry`: the daemon that serves ferry's relay protocols, and their clients.
//!
//! Logs go to stderr (filter from `RUST_LOG`, default `info`); stdout carries
//! only what scripts parse: `<server> listening on <addr>` lines and received
//! messages.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use cli::{config, daemon, name_client};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Relay protocols served from one sans-IO core",
    after_help = "Example:\n  ferry up --config runtime-mio/ferry.example.toml\n  ferry name-relay --listen 127.0.0.1:8080\n  ferry port-relay 7000\n  ferry port-relay --local-forward-port=6379 relay.example.net 7000\n  ferry mount listen --tracker tracker.example.net:7100 --mount radio --stun stun.example.net:3478 --out radio.ogg"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the name relay: TCP clients register a name, then send each other frames.
    NameRelay(daemon::NameRelayArgs),
    /// Run the WebSocket relay: rooms by relayId, broadcast and targeted messages.
    WsRelay(daemon::WsRelayArgs),
    /// Run the port relay (`ferry port-relay LOCALPORT`), or a forwarder exposing a
    /// local server through one (`ferry port-relay --local-forward-port=P HOST PORT`).
    PortRelay(cli::port_relay::PortRelayArgs),
    /// Run the mount relay's tracker (seed 000): points of a mount find each other.
    MountTracker(daemon::MountTrackerArgs),
    /// Run a STUN Binding responder (UDP clients learn their public address), or
    /// probe STUN servers for this host's public address (`--probe SERVER`).
    Stun(daemon::StunArgs),
    /// Run a mount relay point (`ferry mount relay`) or listener point (`ferry mount listen`).
    Mount(cli::mount::MountArgs),
    /// Talk to a name relay: interactively, or send once and/or receive N messages.
    NameClient(name_client::Args),
    /// The p2p VPN (seed 002): `ferry vpn server` runs its WebSocket server.
    Vpn(cli::vpn::VpnArgs),
    /// Run every server from a TOML config (each on loopback at its default port without one).
    Up(config::UpArgs),
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::NameRelay(args) => daemon::supervise(vec![args.into_spec()]),
        Command::WsRelay(args) => daemon::supervise(vec![args.into_spec()]),
        Command::PortRelay(args) => args
            .into_spec()
            .and_then(|spec| daemon::supervise(vec![spec])),
        Command::MountTracker(args) => daemon::supervise(vec![args.into_spec()]),
        Command::Stun(args) => match args.probe() {
            Some((servers, bind)) => return cli::mount::probe_main(servers, bind),
            None => daemon::supervise(vec![args.into_spec()]),
        },
        Command::Mount(args) => return cli::mount::main(args),
        Command::NameClient(args) => name_client::run(args),
        Command::Up(args) => config::up(args),
        Command::Vpn(args) => cli::vpn::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}
