//! TLS for any machine: [`TlsServer`] wraps a [`Machine`] and terminates TLS on
//! every connection it accepts, with rustls's sans-IO [`ServerConnection`].
//!
//! TLS lives here, in the runtime, and not in `ferry-core`: rustls draws OS
//! randomness, which the core must never do (see `core/clippy.toml`). The
//! adapter is still a plain [`Machine`], so the [`driver`](crate::driver) runs it
//! unchanged: `ferry_mio::spawn(TlsServer::new(machine, config), on_event)`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ferry_core::io::{Action, ConnId, Input, Machine, OwnedInput};
use rustls::{ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Plaintext read out of a session per `read` call.
const PLAINTEXT_CHUNK: usize = 16 * 1024;

/// Why a certificate and key could not be made into a [`ServerConfig`].
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// The certificate file is missing, unreadable or holds no PEM certificate.
    Cert {
        /// The file named.
        path: String,
        /// What went wrong.
        error: String,
    },
    /// The key file is missing, unreadable or holds no PEM private key.
    Key {
        /// The file named.
        path: String,
        /// What went wrong.
        error: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    Config(rustls::Error),
}

impl fmt::Display for TlsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsConfigError::Cert { path, error } => {
                write!(f, "TLS certificate {path}: {error}")
            }
            TlsConfigError::Key { path, error } => write!(f, "TLS key {path}: {error}"),
            TlsConfigError::Config(e) => write!(f, "TLS certificate and key: {e}"),
        }
    }
}

impl std::error::Error for TlsConfigError {}

/// A server config (ring provider, TLS 1.2 and 1.3, no client authentication)
/// from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
///
/// It sends no TLS 1.3 session tickets: resumption buys little for long-lived
/// WebSocket connections, and tickets arriving right after the handshake raced
/// with clients that read and write one TLS socket from two threads (Python
/// `websockets`' sync client then never sent its upgrade request, about one
/// connection in twenty).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let cert_error = |error: String| TlsConfigError::Cert {
        path: cert.display().to_string(),
        error,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no PEM certificate in the file".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsConfigError::Key {
        path: key.display().to_string(),
        error: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsConfigError::Config)?;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A machine that speaks TLS on every connection it accepts, and hands the
/// plaintext to the machine it wraps, `M`.
///
/// `TlsServer<M>` has `M`'s commands, events and timers; only the bytes of
/// accepted connections change. Connections `M` opens itself (`Connect`) stay
/// plain, and inputs and actions for them pass through untouched, as do
/// listeners, UDP and TUN.
///
/// # Per accepted connection
///
/// | from the runtime / from `M` | what the adapter does |
/// | --- | --- |
/// | `Input::Accepted` | starts a rustls [`ServerConnection`], then passes `Accepted` to `M` at once (so `M`'s own timers, e.g. the ws relay's handshake timeout WS-5, also bound a stalled TLS handshake) |
/// | `Input::Received` (ciphertext) | fed to rustls; the plaintext it yields goes to `M` as `Received`, what rustls answers (handshake records, alerts) goes out as `Action::Send` |
/// | `M`'s `Action::Send` (plaintext) | encrypted; the records go out as one `Action::Send`. Before the handshake completes rustls holds the plaintext and sends it once it does |
/// | `M`'s `Action::Close` | `close_notify`, then `Close` |
/// | `Input::Flushed` (ciphertext bytes) | translated to plaintext bytes, see below |
/// | `Input::Closed` | passed on |
/// | `M`'s `Action::Shutdown` | passed on: the TCP write side is shut down after what was sent, without `close_notify` |
/// | `PauseRead`, `ResumeRead`, ... | passed on unchanged |
/// | `M`'s `Action::Pipe` of a TLS connection | refused: splicing would bypass TLS; both sides are closed and `M` gets `Closed` for each |
///
/// # Errors
///
/// A TLS failure (a bad handshake, bytes that are not TLS, a bad record) closes
/// that one connection: the adapter sends rustls's alert, closes, logs a
/// warning (`tracing::warn!`) and reports `Closed` to `M`. A peer's
/// `close_notify` counts as the peer closing (`Input::Closed`, as a half-close does).
///
/// # Half-close
///
/// TLS half-close is not supported: `TlsServer` keeps [`Machine::HALF_CLOSE`]
/// `false` whatever `M` says, so a peer's FIN (or `close_notify`) reaches `M` as
/// `Closed`, never `ReadClosed`. An `Action::Shutdown` from `M` is passed on as
/// is (see the table), which a strict TLS peer may read as a truncation.
///
/// # Back-pressure (`Flushed`)
///
/// `M` counts plaintext; the runtime counts ciphertext. Each `Send` the adapter
/// emits records, in a per-connection FIFO, how many ciphertext bytes it holds
/// and how many of `M`'s plaintext bytes they carry (zero for handshake records).
/// A runtime `Flushed{bytes}` consumes that FIFO from the front: a whole entry
/// credits its plaintext, a part of one credits its share, rounded down (the
/// rest follows with the entry's last byte). So `M` gets `Flushed` for exactly
/// the plaintext it sent once all ciphertext is flushed, and never more than it
/// sent before. rustls's own buffers are unbounded here (`set_buffer_limit(None)`):
/// bounding what is queued stays `M`'s job, done on plaintext counts.
///
/// # Call order
///
/// As for any [`Machine`]. After each call into `M` the adapter drains `M`'s
/// actions at once and translates them in order (so ciphertext leaves in the
/// order rustls made it); `M`'s events are passed through as they are polled.
pub struct TlsServer<M: Machine> {
    inner: M,
    config: Arc<ServerConfig>,
    sessions: BTreeMap<ConnId, Session>,
    actions: VecDeque<Action>,
    /// Inputs the adapter itself owes `M` (`Closed` after a TLS failure).
    to_inner: VecDeque<OwnedInput>,
}

/// One accepted connection's TLS state.
struct Session {
    tls: ServerConnection,
    /// `M`'s plaintext written to rustls but not yet in an emitted `Send`.
    unsent_plaintext: usize,
    /// Per emitted `Send`, oldest first: (ciphertext bytes not yet flushed,
    /// plaintext bytes not yet credited to `M`).
    in_flight: VecDeque<(usize, usize)>,
}

impl Session {
    /// Move what rustls has to send into one `Send`, with its FIFO entry.
    fn drain(&mut self, conn: ConnId, actions: &mut VecDeque<Action>) {
        let mut data = Vec::new();
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%conn, "TLS output lost: {e}");
                    break;
                }
            }
        }
        if data.is_empty() {
            return;
        }
        // Once the handshake is over, rustls encrypts on write and has just
        // released anything it held: every plaintext byte so far is in `data`.
        let plaintext = if self.tls.is_handshaking() {
            0
        } else {
            std::mem::take(&mut self.unsent_plaintext)
        };
        self.in_flight.push_back((data.len(), plaintext));
        actions.push_back(Action::Send { conn, data });
    }

    /// The plaintext bytes that `flushed` ciphertext bytes carried.
    fn credit(&mut self, mut flushed: usize) -> usize {
        let mut plaintext = 0;
        while flushed > 0 {
            let Some((cipher, plain)) = self.in_flight.front_mut() else {
                break;
            };
            if flushed >= *cipher {
                flushed -= *cipher;
                plaintext += *plain;
                self.in_flight.pop_front();
            } else {
                // `flushed < cipher`, so the share is below `plain` and fits.
                let share = (*plain as u128 * flushed as u128 / *cipher as u128) as usize;
                *cipher -= flushed;
                *plain -= share;
                plaintext += share;
                flushed = 0;
            }
        }
        plaintext
    }

    /// Take whatever plaintext rustls has decrypted; `Ok(true)` if the peer
    /// sent `close_notify`.
    fn read_plaintext(&mut self, out: &mut Vec<u8>) -> io::Result<bool> {
        let mut chunk = [0; PLAINTEXT_CHUNK];
        loop {
            match self.tls.reader().read(&mut chunk) {
                Ok(0) => return Ok(true),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }
}

impl<M: Machine> TlsServer<M> {
    /// `inner`, with TLS from `config` on every connection it accepts.
    pub fn new(inner: M, config: Arc<ServerConfig>) -> Self {
        Self {
            inner,
            config,
            sessions: BTreeMap::new(),
            actions: VecDeque::new(),
            to_inner: VecDeque::new(),
        }
    }

    /// The wrapped machine.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Translate everything `M` asks for, and feed it what the adapter owes it,
    /// until both are done.
    fn pump(&mut self, now: Instant) {
        loop {
            while let Some(action) = self.inner.poll_action() {
                self.translate(action);
            }
            match self.to_inner.pop_front() {
                Some(input) => self.inner.handle_input(input.as_input(), now),
                None => return,
            }
        }
    }

    fn translate(&mut self, action: Action) {
        match action {
            Action::Send { conn, data } => match self.sessions.get_mut(&conn) {
                Some(session) => {
                    if let Err(e) = session.tls.writer().write_all(&data) {
                        // Unreachable with no buffer limit; fail the connection loudly.
                        tracing::warn!(%conn, "TLS write failed: {e}");
                        self.fail(conn);
                        return;
                    }
                    session.unsent_plaintext += data.len();
                    session.drain(conn, &mut self.actions);
                }
                None => self.actions.push_back(Action::Send { conn, data }),
            },
            Action::Close { conn } => {
                if let Some(mut session) = self.sessions.remove(&conn) {
                    session.tls.send_close_notify();
                    session.drain(conn, &mut self.actions);
                }
                self.actions.push_back(Action::Close { conn });
            }
            Action::Pipe { a, b }
                if self.sessions.contains_key(&a) || self.sessions.contains_key(&b) =>
            {
                tracing::warn!(%a, %b, "cannot splice a TLS connection: closing both");
                for conn in [a, b] {
                    self.translate(Action::Close { conn });
                    self.to_inner.push_back(OwnedInput::Closed { conn });
                }
            }
            other => self.actions.push_back(other),
        }
    }

    /// Close `conn` after a TLS failure (rustls's alert goes first) and tell `M`.
    fn fail(&mut self, conn: ConnId) {
        if let Some(mut session) = self.sessions.remove(&conn) {
            session.drain(conn, &mut self.actions);
            self.actions.push_back(Action::Close { conn });
            self.to_inner.push_back(OwnedInput::Closed { conn });
        }
    }

    /// Ciphertext arrived on a TLS connection.
    fn receive(&mut self, conn: ConnId, mut data: &[u8], now: Instant) {
        while !data.is_empty() {
            let Some(session) = self.sessions.get_mut(&conn) else {
                return; // `M` closed it meanwhile
            };
            let mut plaintext = Vec::new();
            let outcome = session
                .tls
                .read_tls(&mut data)
                .map_err(|e| e.to_string())
                .and_then(|_| session.tls.process_new_packets().map_err(|e| e.to_string()))
                .and_then(|_| {
                    session
                        .read_plaintext(&mut plaintext)
                        .map_err(|e| e.to_string())
                });
            let peer_closed = match outcome {
                Ok(peer_closed) => peer_closed,
                Err(error) => {
                    tracing::warn!(%conn, "TLS failed: {error}");
                    self.fail(conn);
                    self.pump(now);
                    return;
                }
            };
            session.drain(conn, &mut self.actions);
            if !plaintext.is_empty() {
                let input = Input::Received {
                    conn,
                    data: &plaintext,
                };
                self.inner.handle_input(input, now);
                self.pump(now);
            }
            if peer_closed && let Some(session) = self.sessions.remove(&conn) {
                tracing::debug!(%conn, "TLS close_notify from the peer");
                drop(session);
                self.actions.push_back(Action::Close { conn });
                self.inner.handle_input(Input::Closed { conn }, now);
                self.pump(now);
                return;
            }
        }
    }
}

impl<M: Machine> Machine for TlsServer<M> {
    type Command = M::Command;
    type Event = M::Event;

    /// TLS half-close is not supported (see "Half-close" above), whatever `M` says.
    const HALF_CLOSE: bool = false;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Accepted { conn, .. } => match ServerConnection::new(self.config.clone()) {
                Ok(mut tls) => {
                    tls.set_buffer_limit(None);
                    let session = Session {
                        tls,
                        unsent_plaintext: 0,
                        in_flight: VecDeque::new(),
                    };
                    self.sessions.insert(conn, session);
                    self.inner.handle_input(input, now);
                }
                Err(e) => {
                    tracing::warn!(%conn, "cannot start TLS: {e}");
                    self.actions.push_back(Action::Close { conn });
                }
            },
            Input::Received { conn, data } if self.sessions.contains_key(&conn) => {
                self.receive(conn, data, now);
            }
            Input::Flushed { conn, bytes } => match self.sessions.get_mut(&conn) {
                Some(session) => {
                    let bytes = session.credit(bytes);
                    if bytes > 0 {
                        self.inner.handle_input(Input::Flushed { conn, bytes }, now);
                    }
                }
                None => self.inner.handle_input(input, now),
            },
            Input::Closed { conn } => {
                self.sessions.remove(&conn);
                self.inner.handle_input(input, now);
            }
            other => self.inner.handle_input(other, now),
        }
        self.pump(now);
    }

    fn handle_command(&mut self, command: M::Command, now: Instant) {
        self.inner.handle_command(command, now);
        self.pump(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
        self.pump(now);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<M::Event> {
        self.inner.poll_event()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }
}

#[cfg(test)]
mod tests;
