//! The port relay (seed 001, `spec/port-relay.md`): a relay lends each client a
//! public port and carries the users who connect to it back to the client.
//!
//! - [`server`]: the relay. One control listener; per client a public listener;
//!   users reach the client by yamux streams (`multiplex`), by a pool of
//!   spare connections (`pool`) or by connections opened on demand (`event`).
//! - [`forwarder`]: the other side, a relay client that exposes a local TCP
//!   server (e.g. redis) through the relay, in any of the three protocols.
//!
//! Both are [`Machine`](crate::io::Machine)s with `HALF_CLOSE`: a user's FIN is
//! carried through to the local server (a yamux FIN, or the runtime's spliced
//! half-close) and the other way round.
//!
//! The handshake lines and ids are small enough to parse by hand here; yamux is
//! [`crate::codec::yamux`]. Ids come from a ChaCha20 generator the embedding
//! seeds (the daemon from the OS): the core itself has no randomness.

mod bridge;
pub mod forwarder;
pub mod server;

use std::fmt;

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// The longest handshake line accepted, `\n` excluded (PR-1).
pub const MAX_LINE: usize = 64;

/// How a relay client wants its users delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// One yamux session; each user is a stream the relay opens (PR-3, PR-4).
    Multiplex,
    /// Spare connections the client keeps open; each user takes one (PR-6..PR-8).
    Pool,
    /// The relay announces each user by id; the client connects for it (PR-9..PR-11).
    Event,
}

impl Protocol {
    /// The handshake word (`multiplex`, `pool`, `event`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Multiplex => "multiplex",
            Protocol::Pool => "pool",
            Protocol::Event => "event",
        }
    }

    /// The protocol named by a handshake word.
    pub fn from_word(word: &[u8]) -> Option<Protocol> {
        match word {
            b"multiplex" => Some(Protocol::Multiplex),
            b"pool" => Some(Protocol::Pool),
            b"event" => Some(Protocol::Event),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::from_word(s.as_bytes())
            .ok_or_else(|| format!("unknown protocol {s:?} (expected multiplex, pool or event)"))
    }
}

/// One handshake line taken off the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// A complete line, `\n` and a `\r` before it removed, and the bytes used.
    Done(&'a [u8], usize),
    /// No `\n` yet, and not too long yet.
    Incomplete,
    /// More than [`MAX_LINE`] bytes without a `\n`.
    TooLong,
}

/// Take one line off the front of `buf` (PR-1).
pub(crate) fn take_line(buf: &[u8]) -> Line<'_> {
    match buf.iter().take(MAX_LINE + 2).position(|&b| b == b'\n') {
        Some(end) => {
            let line = &buf[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.len() > MAX_LINE {
                Line::TooLong
            } else {
                Line::Done(line, end + 1)
            }
        }
        None if buf.len() > MAX_LINE + 1 => Line::TooLong,
        None => Line::Incomplete,
    }
}

/// The error line the relay sends before closing a connection.
pub(crate) fn error_line(reason: &str) -> Vec<u8> {
    format!("error: {reason}\n").into_bytes()
}

/// Fresh unguessable ids: 128 bits from a seeded ChaCha20, as 32 lowercase hex
/// digits (PR-6, PR-10).
pub(crate) struct IdGen(ChaCha20Rng);

impl IdGen {
    pub(crate) fn new(seed: [u8; 32]) -> IdGen {
        IdGen(ChaCha20Rng::from_seed(seed))
    }

    pub(crate) fn next(&mut self) -> String {
        let (a, b) = (self.0.next_u64(), self.0.next_u64());
        format!("{a:016x}{b:016x}")
    }
}

impl fmt::Debug for IdGen {
    // The generator state is the secret behind every id: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdGen(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr1_lines_are_cut_at_newline_with_an_optional_cr() {
        assert_eq!(take_line(b"pool\nnew\n"), Line::Done(b"pool", 5));
        assert_eq!(take_line(b"event\r\nx"), Line::Done(b"event", 7));
        assert_eq!(take_line(b"multi"), Line::Incomplete);
        assert_eq!(take_line(&[b'a'; MAX_LINE]), Line::Incomplete);
        let mut long = vec![b'a'; MAX_LINE];
        long.push(b'\n');
        assert_eq!(
            take_line(&long),
            Line::Done(&long[..MAX_LINE], MAX_LINE + 1)
        );
        long.insert(0, b'a');
        assert_eq!(take_line(&long), Line::TooLong);
        assert_eq!(take_line(&[b'a'; MAX_LINE + 2]), Line::TooLong);
    }

    #[test]
    fn pr6_ids_are_128_bit_hex_and_differ_by_seed() {
        let mut a = IdGen::new([1; 32]);
        let mut b = IdGen::new([2; 32]);
        let (x, y) = (a.next(), a.next());
        assert_eq!(x.len(), 32);
        assert!(
            x.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(x, y);
        assert_ne!(x, b.next());
        assert_eq!(IdGen::new([1; 32]).next(), x, "same seed, same ids");
    }

    #[test]
    fn protocol_words_round_trip() {
        for p in [Protocol::Multiplex, Protocol::Pool, Protocol::Event] {
            assert_eq!(Protocol::from_word(p.as_str().as_bytes()), Some(p));
            assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
        }
        assert_eq!(Protocol::from_word(b"Pool"), None);
        assert!("tcp".parse::<Protocol>().is_err());
    }
}
