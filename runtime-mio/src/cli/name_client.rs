//! `ferry name-client`: the seed's test client, on the core's client machine.
//!
//! Interactive without `--send`/`--recv` (prompts `Command > `, then `send` or
//! `recv` or `quit`); otherwise it sends once and/or receives N messages and
//! exits. Every received message is one stdout line `{from}: {data}`.

use std::collections::VecDeque;
use std::io::{self, BufRead, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::Args as ClapArgs;
use ferry_core::io::{Action, Input, Machine};
use ferry_core::name_relay::client::{Client, ClientCommand, ClientConfig, ClientEvent};
use ferry_mio::Handle;

use super::daemon::parse_secs;

/// Default `--timeout` for `--send` alone: how long its bytes may take to leave.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one address may take to connect before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `ferry name-client`.
#[derive(Debug, ClapArgs)]
#[command(after_help = "Examples:
  ferry name-client localhost 8080 device_a                 # interactive: send / recv / quit
  ferry name-client localhost 8080 device_a --recv 1        # print one message, exit
  ferry name-client localhost 8080 device_b --send device_a --data hello

Each received message is printed as one line `{from}: {data}`.")]
pub struct Args {
    /// The relay's host name or address.
    host: String,
    /// The relay's port.
    port: u16,
    /// The name to register.
    name: String,
    /// Send one message to this name, then exit (or go on with --recv).
    #[arg(long, value_name = "DEST", requires = "data")]
    send: Option<String>,
    /// The message to send with --send.
    #[arg(long, value_name = "TEXT", requires = "send")]
    data: Option<String>,
    /// Print N received messages, then exit.
    #[arg(long, value_name = "N")]
    recv: Option<usize>,
    /// Give up (exit 1) after this many seconds [default: none when interactive or with --recv
    /// (a receiver waits as long as it takes), 10 with --send alone].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,
}

/// What the client machine, wrapped by [`Tracked`], tells the terminal side.
enum Notice {
    Client(ClientEvent),
    /// Every byte handed to the socket so far is flushed, including all bytes of
    /// the first `commands` commands.
    Drained {
        commands: u64,
    },
}

/// The core's [`Client`], plus a `Drained` notice once what it sent is flushed:
/// the client machine itself reports no such thing, and `--send` must not exit
/// (and close) before its frame has left.
struct Tracked {
    client: Client,
    commands: u64,
    sent: u64,
    flushed: u64,
    drained: Option<u64>,
}

impl Machine for Tracked {
    type Command = ClientCommand;
    type Event = Notice;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        if let Input::Flushed { conn, bytes } = input
            && conn == self.client.conn()
        {
            self.flushed += bytes as u64;
            if self.flushed == self.sent {
                self.drained = Some(self.commands);
            }
        }
        self.client.handle_input(input, now);
    }

    fn handle_command(&mut self, command: ClientCommand, now: Instant) {
        self.commands += 1;
        self.client.handle_command(command, now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
    }

    fn poll_action(&mut self) -> Option<Action> {
        let action = self.client.poll_action()?;
        if let Action::Send { conn, data } = &action
            && *conn == self.client.conn()
        {
            self.sent += data.len() as u64;
        }
        Some(action)
    }

    fn poll_event(&mut self) -> Option<Notice> {
        if let Some(event) = self.client.poll_event() {
            return Some(Notice::Client(event));
        }
        self.drained
            .take()
            .map(|commands| Notice::Drained { commands })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.client.poll_timeout()
    }
}

/// What the terminal side waits for: its own input, or the client's notices.
enum Ui {
    Line(String),
    Eof,
    Notice(Notice),
}

struct Session {
    handle: Handle<ClientCommand>,
    rx: Receiver<Ui>,
    /// Messages not yet printed.
    backlog: VecDeque<(Vec<u8>, Vec<u8>)>,
    /// Lines of stdin not yet used; `None` is its end.
    lines: VecDeque<Option<String>>,
    /// The most commands known to be flushed.
    drained: u64,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
}

impl Session {
    /// Wait for one thing to happen and file it; a closed connection is an error.
    fn pump(&mut self, waiting_for: &str) -> anyhow::Result<()> {
        let ui = match self.deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(left) {
                    Ok(ui) => ui,
                    Err(RecvTimeoutError::Timeout) => {
                        let secs = self.timeout.unwrap_or_default().as_secs_f64();
                        bail!("timed out after {secs}s waiting for {waiting_for}");
                    }
                    Err(RecvTimeoutError::Disconnected) => bail!("the client stopped"),
                }
            }
            None => self.rx.recv().map_err(|_| anyhow!("the client stopped"))?,
        };
        match ui {
            Ui::Line(line) => self.lines.push_back(Some(line)),
            Ui::Eof => self.lines.push_back(None),
            Ui::Notice(Notice::Drained { commands }) => self.drained = self.drained.max(commands),
            Ui::Notice(Notice::Client(ClientEvent::Message { from, data })) => {
                self.backlog.push_back((from, data));
            }
            Ui::Notice(Notice::Client(ClientEvent::Closed { reason })) => {
                bail!("connection closed: {reason}")
            }
            Ui::Notice(Notice::Client(ClientEvent::SendRefused { dest })) => {
                eprintln!(
                    "not sent: {:?} is not a name (1 to 255 bytes without '|')",
                    String::from_utf8_lossy(&dest)
                );
            }
            Ui::Notice(Notice::Client(_)) => {}
        }
        Ok(())
    }

    fn message(&mut self, waiting_for: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        loop {
            if let Some(message) = self.backlog.pop_front() {
                return Ok(message);
            }
            self.pump(waiting_for)?;
        }
    }

    fn drained(&mut self, commands: u64) -> anyhow::Result<()> {
        while self.drained < commands {
            self.pump("the send to flush")?;
        }
        Ok(())
    }

    /// A line from stdin; `None` at end of input.
    fn line(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Ok(line);
            }
            self.pump("input")?;
        }
    }

    fn close(self) -> anyhow::Result<()> {
        let _ = self.handle.send(ClientCommand::Close);
        self.handle.shutdown();
        self.handle.join().context("client driver")
    }
}

/// `{from}: {data}`, data as lossy UTF-8.
fn print_message(from: &[u8], data: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{}: {}",
        String::from_utf8_lossy(from),
        String::from_utf8_lossy(data)
    )?;
    out.flush()
}

fn prompt(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Run the client as `args` says.
pub fn run(args: Args) -> anyhow::Result<()> {
    let addrs: Vec<SocketAddr> = (args.host.as_str(), args.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", args.host))?
        .collect();
    let interactive = args.send.is_none() && args.recv.is_none();
    let send_only = args.send.is_some() && args.recv.is_none();
    let timeout = args.timeout.or(send_only.then_some(BATCH_TIMEOUT));
    let deadline = timeout.map(|t| Instant::now() + t);
    let (tx, rx) = channel();
    let (handle, relay) = connect(&addrs, args.name.as_bytes(), deadline, &tx, &rx)?;
    tracing::info!(%relay, name = %args.name, "registered");
    let mut session = Session {
        handle,
        rx,
        backlog: VecDeque::new(),
        lines: VecDeque::new(),
        drained: 0,
        deadline,
        timeout,
    };
    let result = if interactive {
        spawn_stdin_reader(tx)?;
        interact(&mut session)
    } else {
        drop(tx);
        batch(&mut session, args.send.zip(args.data), args.recv)
    };
    let closed = session.close();
    result.and(closed)
}

/// Try each address in turn until one connects.
fn connect(
    addrs: &[SocketAddr],
    name: &[u8],
    deadline: Option<Instant>,
    tx: &Sender<Ui>,
    rx: &Receiver<Ui>,
) -> anyhow::Result<(Handle<ClientCommand>, SocketAddr)> {
    let mut last_error = anyhow!("no address to connect to");
    for &addr in addrs {
        let client = Client::new(name, addr, ClientConfig::default())?;
        let tracked = Tracked {
            client,
            commands: 0,
            sent: 0,
            flushed: 0,
            drained: None,
        };
        let notices = tx.clone();
        let handle = ferry_mio::spawn(tracked, move |notice| {
            let _ = notices.send(Ui::Notice(notice));
        })?;
        let give_up = Instant::now() + CONNECT_TIMEOUT;
        let give_up = deadline.map_or(give_up, |d| d.min(give_up));
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ui::Notice(Notice::Client(ClientEvent::Registered))) => {
                    return Ok((handle, addr));
                }
                Ok(Ui::Notice(Notice::Client(ClientEvent::Closed { reason }))) => {
                    last_error = anyhow!("{addr}: {reason}");
                    break;
                }
                Ok(_) => {}
                Err(_) => {
                    last_error = anyhow!(
                        "{addr}: no connection within {:?}",
                        left.max(Duration::ZERO)
                    );
                    break;
                }
            }
        }
        handle.shutdown();
        let _ = handle.join();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            break;
        }
    }
    Err(last_error.context("cannot reach the relay"))
}

fn spawn_stdin_reader(tx: Sender<Ui>) -> anyhow::Result<()> {
    thread::Builder::new()
        .name("stdin".to_owned())
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if tx.send(Ui::Line(line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Ui::Eof);
        })
        .context("cannot read stdin")?;
    Ok(())
}

fn interact(session: &mut Session) -> anyhow::Result<()> {
    loop {
        prompt("Command > ")?;
        let Some(command) = session.line()? else {
            return Ok(());
        };
        match command.trim() {
            "send" => {
                prompt("Dest name > ")?;
                let Some(dest) = session.line()? else {
                    return Ok(());
                };
                prompt("Data > ")?;
                let Some(data) = session.line()? else {
                    return Ok(());
                };
                session.handle.send(ClientCommand::Send {
                    dest: dest.trim().as_bytes().to_vec(),
                    data: data.into_bytes(),
                })?;
            }
            "recv" => {
                let (from, data) = session.message("a message")?;
                print_message(&from, &data)?;
            }
            "quit" | "exit" => return Ok(()),
            "" => {}
            other => eprintln!("unknown command {other:?}: use send, recv or quit"),
        }
    }
}

fn batch(
    session: &mut Session,
    send: Option<(String, String)>,
    recv: Option<usize>,
) -> anyhow::Result<()> {
    if let Some((dest, data)) = send {
        session.handle.send(ClientCommand::Send {
            dest: dest.into_bytes(),
            data: data.into_bytes(),
        })?;
        session.drained(1)?;
    }
    let wanted = recv.unwrap_or(0);
    for got in 0..wanted {
        let (from, data) = session.message(&format!("message {} of {wanted}", got + 1))?;
        print_message(&from, &data)?;
    }
    Ok(())
}
