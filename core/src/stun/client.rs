//! A STUN Binding client transaction (`spec/stun.md` ST-13..ST-15).
//!
//! Not a machine of its own: a [`Transaction`] lives inside a machine that owns
//! a UDP socket (the mount relay's points, [`super::probe::Probe`]) and shares
//! that socket with the machine's other traffic, so the mapping STUN reports is
//! the one the machine then punches. The owner sends what the transaction hands
//! it, routes datagrams that parse as STUN to [`Transaction::handle_response`],
//! and calls [`Transaction::handle_timeout`] at [`Transaction::deadline`].
//!
//! Ids come from [`TransactionIds`], a ChaCha20 generator seeded by the
//! embedder (the core draws no OS randomness).

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::codec::stun::{self, Class, Message, Method};

/// Retransmission settings (ST-14): RFC 8489's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The first retransmission timeout; doubles after each retransmission.
    pub rto: Duration,
    /// How many requests are sent in all (the first one included).
    pub rc: u32,
    /// After the last request, wait `rm` × `rto` for an answer.
    pub rm: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            rto: Duration::from_millis(500),
            rc: 7,
            rm: 16,
        }
    }
}

impl Config {
    /// How long a transaction that is never answered lasts (39.5 s by default).
    pub fn give_up_after(&self) -> Duration {
        let mut at = Duration::ZERO;
        let mut rto = self.rto;
        for _ in 1..self.rc.max(1) {
            at += rto;
            rto = rto.saturating_mul(2);
        }
        at + self.rto.saturating_mul(self.rm)
    }
}

/// Fresh 96-bit transaction ids from a seeded ChaCha20 (ST-13).
pub struct TransactionIds(ChaCha20Rng);

impl TransactionIds {
    /// A generator; the same seed gives the same ids.
    pub fn new(seed: [u8; 32]) -> TransactionIds {
        TransactionIds(ChaCha20Rng::from_seed(seed))
    }

    /// The next id.
    pub fn next_id(&mut self) -> [u8; 12] {
        let mut id = [0; 12];
        self.0.fill_bytes(&mut id);
        id
    }
}

impl fmt::Debug for TransactionIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransactionIds(..)")
    }
}

/// Why a transaction failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer to `sent` requests within `after` (ST-14).
    Timeout {
        /// Requests sent.
        sent: u32,
        /// Time from the first request to giving up.
        after: Duration,
    },
    /// The server answered with an error response (ST-15).
    ErrorResponse {
        /// ERROR-CODE's code (0 when the response had none).
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// A success response without a usable address (ST-15).
    NoAddress,
    /// A success response with an address of the other family (ST-15).
    WrongFamily(SocketAddr),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout { sent, after } => write!(
                f,
                "no STUN answer to {sent} requests in {:.1} s",
                after.as_secs_f64()
            ),
            Failure::ErrorResponse { code, reason } => {
                write!(f, "STUN error response {code} {reason}")
            }
            Failure::NoAddress => f.write_str("STUN success response without a mapped address"),
            Failure::WrongFamily(addr) => {
                write!(
                    f,
                    "STUN mapped address {addr} is not of the socket's family"
                )
            }
        }
    }
}

/// What a timeout asks of the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this request (again) to [`Transaction::server`].
    Send(Vec<u8>),
    /// The transaction is over without an answer.
    Failed(Failure),
}

/// One outstanding Binding transaction.
#[derive(Debug, Clone)]
pub struct Transaction {
    id: [u8; 12],
    server: SocketAddr,
    request: Vec<u8>,
    config: Config,
    started: Instant,
    sent: u32,
    rto: Duration,
    deadline: Instant,
    ipv6: bool,
}

impl Transaction {
    /// Start a transaction to `server` from a socket of `local`'s family; the
    /// returned bytes are the first request, to send now.
    pub fn start(
        id: [u8; 12],
        server: SocketAddr,
        local: SocketAddr,
        config: Config,
        now: Instant,
    ) -> (Transaction, Vec<u8>) {
        let mut request = Vec::new();
        // A bare Binding request always encodes.
        let _ = stun::encode_with_fingerprint(&Message::binding_request(id), &mut request);
        let config = Config {
            rc: config.rc.max(1),
            ..config
        };
        let tx = Transaction {
            id,
            server,
            request: request.clone(),
            config,
            started: now,
            sent: 1,
            rto: config.rto,
            deadline: now
                + if config.rc > 1 {
                    config.rto
                } else {
                    config.rto * config.rm
                },
            ipv6: local.is_ipv6(),
        };
        (tx, request)
    }

    /// The server asked.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The transaction id.
    pub fn id(&self) -> [u8; 12] {
        self.id
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the request was sent more than once (an answer then gives no
    /// exact round trip).
    pub fn retransmitted(&self) -> bool {
        self.sent > 1
    }

    /// When the transaction started (for an RTT estimate).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Retransmit or give up, if the deadline passed; `None` otherwise.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Step> {
        if now < self.deadline {
            return None;
        }
        if self.sent < self.config.rc {
            self.sent += 1;
            self.rto = self.rto.saturating_mul(2);
            self.deadline = if self.sent < self.config.rc {
                self.deadline + self.rto
            } else {
                self.deadline + self.config.rto.saturating_mul(self.config.rm)
            };
            return Some(Step::Send(self.request.clone()));
        }
        Some(Step::Failed(Failure::Timeout {
            sent: self.sent,
            after: now.saturating_duration_since(self.started),
        }))
    }

    /// Whether `message` answers this transaction (ST-15): a Binding success or
    /// error response with its id. Anything else is not ours.
    pub fn matches(&self, message: &Message) -> bool {
        message.transaction_id == self.id
            && message.method == Method::BINDING
            && matches!(message.class, Class::SuccessResponse | Class::ErrorResponse)
    }

    /// The outcome `message` gives this transaction, or `None` if it is not an
    /// answer to it ([`matches`](Self::matches)). After `Some`, the transaction is over.
    pub fn handle_response(&self, message: &Message) -> Option<Result<SocketAddr, Failure>> {
        if !self.matches(message) {
            return None;
        }
        if message.class == Class::ErrorResponse {
            let (code, reason) = message.error_code().unwrap_or((0, ""));
            return Some(Err(Failure::ErrorResponse {
                code,
                reason: reason.to_owned(),
            }));
        }
        Some(match message.mapped_address() {
            None => Err(Failure::NoAddress),
            Some(addr) if addr.is_ipv6() != self.ipv6 => Err(Failure::WrongFamily(addr)),
            Some(addr) => Ok(addr),
        })
    }
}

#[cfg(test)]
mod tests;
