//! `ferry mount relay` and `ferry mount listen`: the mount relay's points
//! (seed 000, [`ferry_core::mount_relay::point`]) on the mio driver, and
//! `ferry stun --probe`, the one-shot STUN client ([`ferry_core::stun::probe`]).
//!
//! Both points run their driver on the main thread. The relay reads its source
//! on a thread of its own, one chunk each time the point asks
//! ([`Event::NeedData`]), so a slow source never blocks the driver. Each
//! prints `mount-relay bound on <ADDR>` / `mount-listener bound on <ADDR>` on
//! stdout once its UDP socket is bound (on stderr when the listener writes
//! the stream to stdout); logs go to stderr.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TrySendError, channel, sync_channel};
use std::thread;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use ferry_core::mount_relay::point::{Command, Config, Event, Point, Role, Stats};
use ferry_core::mount_relay::wire::MAX_DATA;
use ferry_core::stun::{client, probe};
use ferry_mio::{Driver, Remote};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle as SignalHandle, Signals};

use super::daemon::parse_secs;
use super::port_relay::os_seed;

/// Source bytes read per [`Event::NeedData`]: 128 stream datagrams.
pub const CHUNK: usize = MAX_DATA * 128;

/// `ferry mount`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  ferry mount-tracker --listen 0.0.0.0:7100 &     # on a public host
  ferry stun --listen 0.0.0.0:3478 &              # or any public STUN server
  ferry mount relay  --tracker tracker.example.net:7100 --mount radio \\
      --stun stun.example.net:3478 --source song.ogg --rate 16k
  ferry mount listen --tracker tracker.example.net:7100 --mount radio \\
      --stun stun.example.net:3478 --out song-copy.ogg")]
pub struct MountArgs {
    #[command(subcommand)]
    command: MountCommand,
}

#[derive(Debug, Subcommand)]
enum MountCommand {
    /// Share a stream (a file or stdin) on a mount with every listener that finds it.
    Relay(RelayArgs),
    /// Find a relay of a mount and write its stream to a file or stdout.
    Listen(ListenArgs),
}

/// What both points need.
#[derive(Debug, Args)]
struct PointArgs {
    /// The tracker's HOST:PORT (`ferry mount-tracker`).
    #[arg(long, value_name = "ADDR")]
    tracker: String,
    /// The mount's name (1 to 255 bytes).
    #[arg(long, value_name = "NAME")]
    mount: String,
    /// A STUN server's HOST:PORT; the address it reports is the one registered.
    /// Give a second one to learn whether this host's NAT maps per destination.
    #[arg(long = "stun", value_name = "ADDR", required = true)]
    stun: Vec<String>,
    /// The local UDP address [default: any address of the first STUN server's family, port 0].
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Seconds a listener searches before it gives up and starts again; seconds a
    /// relay keeps greeting a listener that does not answer.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_secs)]
    search_timeout: Duration,
}

/// `ferry mount relay`.
#[derive(Debug, Args)]
#[command(after_help = "Example:
  ferry mount relay --tracker 127.0.0.1:7100 --mount radio --stun 127.0.0.1:3478 \\
      --source song.ogg --rate 16k --min-listeners 2

Streams the source once to every listener connected when it is read (each
listener gets the bytes read after it joined), at most --rate bytes per second,
in CRC-checked datagrams of up to 504 data bytes; there is no retransmission.
Reading starts once --min-listeners are connected. After the source ends the
relay keeps its listeners (keep-alive) until SIGINT/SIGTERM, then exits 0.
Prints `mount-relay bound on <ADDR>` on stdout once its UDP socket is bound.")]
struct RelayArgs {
    #[command(flatten)]
    point: PointArgs,
    /// The stream to share: a file, or `-` for stdin.
    #[arg(long, default_value = "-", value_name = "FILE|-")]
    source: String,
    /// Bytes per second at most, decimal suffixes allowed (16k = 16000, 8M = 8000000)
    /// [default: no limit].
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = parse_rate)]
    rate: Option<u64>,
    /// Listeners served at once.
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_listeners: usize,
    /// Listeners connected before the source is read.
    #[arg(long, default_value_t = 1, value_name = "N")]
    min_listeners: usize,
}

/// `ferry mount listen`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  ferry mount listen --tracker 127.0.0.1:7100 --mount radio --stun 127.0.0.1:3478 --out copy.ogg
  ferry mount listen --tracker 127.0.0.1:7100 --mount radio --stun 127.0.0.1:3478 | mpv -

Writes every datagram that passes its CRC check, in order of arrival; a lost
datagram is a gap (the protocol has no retransmission). A search that finds no
relay within --search-timeout is logged with the reason and starts again; after
--attempts failed searches it exits 1 with `ferry mount listen: gave up after N
searches: <reason>`. Prints `mount-listener bound on <ADDR>` on stdout once its
UDP socket is bound (on stderr with --out -), a status line on stderr once
connected, and its counters on stderr when it exits.")]
struct ListenArgs {
    #[command(flatten)]
    point: PointArgs,
    /// Where the stream goes: a file (created or truncated), or `-` for stdout.
    #[arg(long, default_value = "-", value_name = "FILE|-")]
    out: String,
    /// Failed searches before giving up (exit 1); 0 searches forever.
    #[arg(long, default_value_t = 3, value_name = "N")]
    attempts: u32,
    /// Exit 0 once N bytes are written (the last datagram is cut to fit).
    #[arg(long, value_name = "N")]
    bytes: Option<u64>,
}

/// Parse a rate in bytes per second: `8000000`, `16k`, `8M`, `1G` (decimal).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let (digits, unit) = match trimmed.char_indices().last() {
        Some((i, 'k' | 'K')) => (&trimmed[..i], 1_000),
        Some((i, 'm' | 'M')) => (&trimmed[..i], 1_000_000),
        Some((i, 'g' | 'G')) => (&trimmed[..i], 1_000_000_000),
        _ => (trimmed, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a rate like 8000000, 16k or 8M"))?;
    match n.checked_mul(unit) {
        Some(0) => Err("the rate must be above 0 (leave --rate out for no limit)".to_owned()),
        Some(rate) => Ok(rate),
        None => Err(format!("{text:?} is too large")),
    }
}

/// Every address `text` (HOST:PORT) resolves to; an error naming `what` if none.
fn resolve(what: &str, text: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .with_context(|| format!("{what} {text:?} does not resolve (expected HOST:PORT)"))?
        .collect();
    if addrs.is_empty() {
        bail!("{what} {text:?} resolves to no address");
    }
    Ok(addrs)
}

/// The local address and the STUN servers: all of one family, the bind
/// address's if given, else the first server's.
fn resolve_udp(
    bind: Option<&str>,
    servers: &[String],
) -> anyhow::Result<(SocketAddr, Vec<SocketAddr>)> {
    let bind = match bind {
        Some(text) => Some(resolve("--bind", text)?[0]),
        None => None,
    };
    let mut resolved = Vec::new();
    for text in servers {
        let addrs = resolve("STUN server", text)?;
        let want_v4 = match (bind, resolved.first()) {
            (Some(b), _) => Some(b.is_ipv4()),
            (None, Some(first)) => Some(SocketAddr::is_ipv4(first)),
            (None, None) => None,
        };
        let addr = match want_v4 {
            None => addrs[0],
            Some(v4) => *addrs.iter().find(|a| a.is_ipv4() == v4).ok_or_else(|| {
                let family = if v4 { "IPv4" } else { "IPv6" };
                anyhow!("STUN server {text:?} has no {family} address (the socket is {family})")
            })?,
        };
        resolved.push(addr);
    }
    let Some(first) = resolved.first() else {
        bail!("give at least one STUN server");
    };
    let bind = bind.unwrap_or_else(|| {
        if first.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        }
    });
    Ok((bind, resolved))
}

impl PointArgs {
    fn config(&self, role: Role) -> anyhow::Result<Config> {
        let mount = &self.mount;
        if mount.is_empty() || mount.len() > 255 {
            bail!("--mount must be 1 to 255 bytes, not {}", mount.len());
        }
        if mount.chars().any(char::is_control) {
            bail!("--mount {mount:?} has a control character");
        }
        let (bind, stun) = resolve_udp(self.bind.as_deref(), &self.stun)?;
        // `localhost` may list ::1 first while the tracker listens on IPv4
        // only: prefer the family of the point's own socket.
        let trackers = resolve("tracker", &self.tracker)?;
        let tracker = trackers
            .iter()
            .find(|a| a.is_ipv4() == bind.is_ipv4())
            .unwrap_or(&trackers[0]);
        let tracker = *tracker;
        let mut config = Config::new(role, mount, tracker, stun);
        config.bind = bind;
        config.search_timeout = self.search_timeout;
        Ok(config)
    }
}

/// Run `ferry mount ...`; errors are printed as `ferry mount relay: ...`.
pub fn main(args: MountArgs) -> ExitCode {
    let (name, result) = match args.command {
        MountCommand::Relay(args) => ("ferry mount relay", relay(args)),
        MountCommand::Listen(args) => ("ferry mount listen", listen(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The line scripts wait for: `<point> bound on <addr>`, on stdout (or stderr).
fn bound_line(point: &str, local: SocketAddr, on_stderr: bool) {
    if on_stderr {
        let mut out = io::stderr().lock();
        let _ = writeln!(out, "{point} bound on {local}");
        let _ = out.flush();
    } else {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{point} bound on {local}");
        let _ = out.flush();
    }
}

/// On the first SIGINT/SIGTERM, stop the point (its `Stopped` ends the driver).
fn stop_on_signal(remote: Remote<Command>) -> anyhow::Result<SignalHandle> {
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("cannot install signal handlers")?;
    let handle = signals.handle();
    thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            for signal in signals.forever() {
                tracing::info!(signal, "stopping");
                let _ = remote.send(Command::Stop);
                remote.shutdown();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(handle)
}

/// Log what both points report alike.
fn log_common(event: &Event) {
    match event {
        Event::Mapped(public) => tracing::info!(%public, "STUN: public address"),
        Event::NatMapping {
            endpoint_independent: true,
            seen,
        } => tracing::info!(
            ?seen,
            "NAT maps endpoint-independently: hole punching can work"
        ),
        Event::NatMapping {
            endpoint_independent: false,
            seen,
        } => tracing::warn!(
            ?seen,
            "this host's NAT maps each destination to a different public port (symmetric): \
             hole punching will likely fail"
        ),
        Event::StunFailed(reason) => tracing::warn!(reason = %reason, "STUN failed"),
        Event::Candidates(list) => {
            let list: Vec<String> = list.iter().map(ToString::to_string).collect();
            tracing::info!(count = list.len(), candidates = %list.join(" "), "tracker candidates");
        }
        Event::TrackerFailed(reason) => tracing::warn!(reason = %reason, "tracker request failed"),
        Event::PeerLost { peer, reason } => tracing::warn!(%peer, reason = %reason, "peer lost"),
        other => tracing::debug!(?other, "point event"),
    }
}

fn log_stats(role: Role, stats: &Stats) {
    tracing::info!(
        role = %role,
        datagrams_sent = stats.datagrams_sent,
        source_bytes_sent = stats.source_bytes_sent,
        datagrams_received = stats.datagrams_received,
        bytes_received = stats.bytes_received,
        bad_crc = stats.bad_crc,
        ignored = stats.ignored,
        registrations = stats.registrations,
        "point stopped"
    );
}

// ---- the relay ------------------------------------------------------------------

fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let mut config = args.point.config(Role::Relay)?;
    if args.max_listeners == 0 {
        bail!("--max-listeners must be at least 1");
    }
    if args.min_listeners > args.max_listeners {
        bail!(
            "--min-listeners {} is more than --max-listeners {}",
            args.min_listeners,
            args.max_listeners
        );
    }
    config.rate = args.rate;
    config.max_listeners = args.max_listeners;
    config.min_listeners = args.min_listeners.max(1);
    let source: Box<dyn Read + Send> = if args.source == "-" {
        Box::new(io::stdin())
    } else {
        let file = File::open(&args.source)
            .with_context(|| format!("cannot open the source {}", args.source))?;
        Box::new(file)
    };
    tracing::info!(
        mount = %config.mount,
        tracker = %config.tracker,
        stun = ?config.stun,
        rate = ?config.rate,
        "mount relay starting"
    );

    let driver = Driver::new(Point::new(config, os_seed()?))?;
    let remote = driver.remote();
    let (need_tx, need_rx) = channel();
    let (failed_tx, failed_rx) = channel();
    {
        let remote = remote.clone();
        thread::Builder::new()
            .name("mount-source".to_owned())
            .spawn(move || read_source(source, &need_rx, &remote, &failed_tx))
            .context("cannot start the source thread")?;
    }
    let signals = stop_on_signal(remote.clone())?;
    remote.send(Command::Start)?;
    let mut bind_failed = None;
    let point = driver.run(|event| match event {
        Event::Bound(local) => {
            tracing::info!(%local, "mount relay bound");
            bound_line("mount-relay", local, false);
        }
        Event::BindFailed(error) => bind_failed = Some(error),
        Event::Connected(peer) => tracing::info!(%peer, "listener connected"),
        Event::NeedData => {
            let _ = need_tx.send(());
        }
        Event::SourceDone { bytes } => {
            tracing::info!(
                bytes,
                "source sent; serving keep-alives until SIGINT/SIGTERM"
            );
        }
        Event::Stopped => remote.shutdown(),
        other => log_common(&other),
    });
    signals.close();
    let point = point?;
    log_stats(Role::Relay, &point.stats());
    if let Some(error) = bind_failed {
        bail!("cannot bind {}: {error}", point.config().bind);
    }
    if let Ok(error) = failed_rx.try_recv() {
        bail!("{error}");
    }
    Ok(())
}

/// The source thread: one chunk per request, `EndOfSource` at its end. A read
/// error stops the relay.
fn read_source(
    mut source: Box<dyn Read + Send>,
    need: &Receiver<()>,
    remote: &Remote<Command>,
    failed: &Sender<String>,
) {
    let mut buf = vec![0; CHUNK];
    while need.recv().is_ok() {
        let n = loop {
            match source.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = failed.send(format!("cannot read the source: {e}"));
                    let _ = remote.send(Command::Stop);
                    return;
                }
            }
        };
        if n == 0 {
            tracing::info!("end of the source");
            let _ = remote.send(Command::EndOfSource);
            return;
        }
        if remote.send(Command::Feed(buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

// ---- the listener ---------------------------------------------------------------

/// Datagrams' data waiting for the writer thread (about 2 MiB): a slow output
/// (a paused player on a pipe, a slow disk) must not stop the driver from
/// reading, answering keep-alives and running its timers.
const OUTPUT_QUEUE: usize = 4096;

struct Listening {
    out: SyncSender<Vec<u8>>,
    /// Data dropped because the output did not keep up.
    dropped: u64,
    to_stdout: bool,
    written: u64,
    limit: Option<u64>,
    attempts: u32,
    outcome: Option<anyhow::Result<()>>,
    bind_failed: Option<String>,
}

impl Listening {
    fn finish(&mut self, outcome: anyhow::Result<()>, remote: &Remote<Command>) {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
            let _ = remote.send(Command::Stop);
        }
    }

    fn event(&mut self, event: Event, remote: &Remote<Command>) {
        match event {
            Event::Bound(local) => {
                tracing::info!(%local, "mount listener bound");
                bound_line("mount-listener", local, self.to_stdout);
            }
            Event::BindFailed(error) => self.bind_failed = Some(error),
            Event::Connected(peer) => {
                tracing::info!(%peer, "connected to a relay");
                eprintln!("ferry mount listen: connected to relay {peer}, receiving");
            }
            Event::Data(data) => self.data(&data, remote),
            Event::SearchGaveUp { attempts, reason } => {
                tracing::warn!(attempts, reason = %reason, "search gave up");
                if self.attempts != 0 && attempts >= self.attempts {
                    self.finish(
                        Err(anyhow!(
                            "gave up after {attempts} search{}: {reason}",
                            if attempts == 1 { "" } else { "es" }
                        )),
                        remote,
                    );
                }
            }
            Event::Stopped => remote.shutdown(),
            other => log_common(&other),
        }
    }

    fn data(&mut self, data: &[u8], remote: &Remote<Command>) {
        if self.outcome.is_some() {
            return;
        }
        let room = self.limit.map_or(u64::MAX, |l| l - self.written);
        let take = data.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        match self.out.try_send(data[..take].to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.dropped == 0 {
                    tracing::warn!("the output does not keep up with the stream: data dropped");
                }
                self.dropped += take as u64;
                return;
            }
            // The writer failed; it said why and stopped the point.
            Err(TrySendError::Disconnected(_)) => return,
        }
        self.written += take as u64;
        if self.limit == Some(self.written) {
            tracing::info!(bytes = self.written, "every byte asked for is written");
            self.finish(Ok(()), remote);
        }
    }
}

fn listen(args: ListenArgs) -> anyhow::Result<()> {
    let config = args.point.config(Role::Listener)?;
    let to_stdout = args.out == "-";
    let mut out: Box<dyn Write + Send> = if to_stdout {
        Box::new(io::stdout())
    } else {
        Box::new(
            File::create(&args.out)
                .with_context(|| format!("cannot create the output {}", args.out))?,
        )
    };
    tracing::info!(
        mount = %config.mount,
        tracker = %config.tracker,
        stun = ?config.stun,
        "mount listener starting"
    );
    let (out_tx, out_rx) = sync_channel::<Vec<u8>>(OUTPUT_QUEUE);
    let (write_failed, write_error) = channel::<String>();
    let mut state = Listening {
        out: out_tx,
        dropped: 0,
        to_stdout,
        written: 0,
        limit: args.bytes,
        attempts: args.attempts,
        outcome: None,
        bind_failed: None,
    };
    let driver = Driver::new(Point::new(config, os_seed()?))?;
    let remote = driver.remote();
    let writer_remote = driver.remote();
    let writer = thread::Builder::new()
        .name("mount-output".to_owned())
        .spawn(move || {
            for data in out_rx {
                if let Err(e) = out.write_all(&data).and_then(|()| out.flush()) {
                    let _ = write_failed.send(format!("cannot write the output: {e}"));
                    let _ = writer_remote.send(Command::Stop);
                    return;
                }
            }
        })
        .context("cannot start the output thread")?;
    let signals = stop_on_signal(remote.clone())?;
    remote.send(Command::Start)?;
    if args.bytes == Some(0) {
        state.finish(Ok(()), &remote);
    }
    let point = driver.run(|event| state.event(event, &remote));
    signals.close();
    // Every queued byte is written before the counters are printed.
    let Listening {
        out,
        dropped,
        written,
        outcome,
        bind_failed,
        ..
    } = state;
    drop(out);
    let _ = writer.join();
    let point = point?;
    let stats = point.stats();
    log_stats(Role::Listener, &stats);
    eprintln!(
        "ferry mount listen: {written} bytes written; {} datagrams received, {} with a bad \
         CRC, {} ignored; {dropped} bytes dropped because the output was slow",
        stats.datagrams_received, stats.bad_crc, stats.ignored
    );
    if let Some(error) = bind_failed {
        bail!("cannot bind {}: {error}", point.config().bind);
    }
    if let Ok(error) = write_error.try_recv() {
        bail!("{error}");
    }
    outcome.unwrap_or(Ok(()))
}

// ---- ferry stun --probe ---------------------------------------------------------

/// `ferry stun --probe SERVER [--probe SERVER2] [--bind ADDR]`: print each
/// server's `mapped SERVER -> ADDR`, and with two answers whether the NAT maps
/// endpoint-independently; exit 1 if any server did not answer.
pub fn probe_main(servers: &[String], bind: Option<&str>) -> ExitCode {
    match probe(servers, bind) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry stun --probe: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn probe(servers: &[String], bind: Option<&str>) -> anyhow::Result<()> {
    let (bind, servers) = resolve_udp(bind, servers)?;
    let driver = Driver::new(probe::Probe::new(client::Config::default(), os_seed()?))?;
    // The probe ends by itself once every server answered or timed out: no
    // remote is kept, so the driver exits when the probe closes its socket.
    driver.remote().send(probe::Command::Start {
        bind,
        servers: servers.clone(),
    })?;
    let mut mapped = Vec::new();
    let mut failures = Vec::new();
    driver.run(|event| match event {
        probe::Event::Bound(local) => tracing::debug!(%local, "probe bound"),
        probe::Event::BindFailed(error) => failures.push(format!("cannot bind {bind}: {error}")),
        probe::Event::Mapped {
            server,
            mapped: addr,
        } => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "mapped {server} -> {addr}");
            let _ = out.flush();
            mapped.push(addr);
        }
        probe::Event::Failed { server, failure } => failures.push(format!("{server}: {failure}")),
        probe::Event::Done => {}
    })?;
    if mapped.len() >= 2 {
        let line = if mapped.iter().all(|a| *a == mapped[0]) {
            "nat: endpoint-independent"
        } else {
            "nat: symmetric (per-destination mapping)"
        };
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: MountArgs,
    }

    #[test]
    fn rates_take_decimal_suffixes() {
        assert_eq!(parse_rate("8000000"), Ok(8_000_000));
        assert_eq!(parse_rate("16k"), Ok(16_000));
        assert_eq!(parse_rate("8M"), Ok(8_000_000));
        assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("99999999999999999999G").is_err());
    }

    #[test]
    fn relay_and_listen_parse() {
        let cli = Cli::try_parse_from([
            "mount",
            "relay",
            "--tracker",
            "127.0.0.1:7100",
            "--mount",
            "radio",
            "--stun",
            "127.0.0.1:3478",
            "--stun",
            "127.0.0.1:3479",
            "--rate",
            "8M",
            "--min-listeners",
            "2",
        ])
        .expect("parses");
        let MountCommand::Relay(relay) = cli.args.command else {
            panic!("a relay");
        };
        let config = relay.point.config(Role::Relay).expect("a config");
        assert_eq!(config.stun.len(), 2);
        assert_eq!(config.bind, SocketAddr::from(([0, 0, 0, 0], 0)));
        assert_eq!(relay.rate, Some(8_000_000));
        assert_eq!(relay.min_listeners, 2);

        let cli = Cli::try_parse_from([
            "mount",
            "listen",
            "--tracker",
            "localhost:7100",
            "--mount",
            "radio",
            "--stun",
            "127.0.0.1:3478",
            "--attempts",
            "0",
            "--bytes",
            "10",
            "--search-timeout",
            "1.5",
        ])
        .expect("parses");
        let MountCommand::Listen(listen) = cli.args.command else {
            panic!("a listener");
        };
        let config = listen.point.config(Role::Listener).expect("a config");
        assert_eq!(config.search_timeout, Duration::from_millis(1500));
        assert_eq!((listen.attempts, listen.bytes), (0, Some(10)));

        assert!(
            Cli::try_parse_from(["mount", "listen", "--tracker", "x:1", "--mount", "m"]).is_err(),
            "--stun is required"
        );
    }

    #[test]
    fn unresolvable_addresses_are_clear_errors() {
        let error = resolve("tracker", "no-port-here").expect_err("no port");
        assert!(
            error.to_string().contains("tracker \"no-port-here\""),
            "{error}"
        );
        let error = resolve_udp(Some("127.0.0.1:0"), &["[::1]:3478".to_owned()])
            .expect_err("families differ");
        assert!(error.to_string().contains("no IPv4 address"), "{error}");
    }
}
