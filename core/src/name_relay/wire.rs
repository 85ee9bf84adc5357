//! The name relay's wire format (spec/name-relay.md, NR-1..NR-4).
//!
//! ```text
//! registration   = name "|"                       ; client -> relay, once
//! frame          = name "|" length "|" payload    ; both directions
//! name           = 1*255(any byte except "|")
//! length         = 1*DIGIT                        ; decimal, <= the configured cap
//! ```
//!
//! Client to relay, `name` is the destination; relay to client, it is the sender.
//! The parsers are nom *streaming* parsers: on a prefix of a valid message they
//! answer [`Parsed::Incomplete`], so a message split across any number of reads
//! parses the same as one read. They never need more than `max_name + 1` bytes
//! (resp. `max_name + 22`) to reject a malformed header, so an attacker cannot
//! make the relay buffer an endless name or length.

use nom::bytes::streaming::{tag, take_till};
use nom::character::streaming::digit1;
use nom::sequence::terminated;
use nom::{IResult, Parser};
use thiserror::Error;

pub use crate::codec::Parsed;

/// The field separator.
pub const SEPARATOR: u8 = b'|';
/// The longest name the protocol allows (NR-2).
pub const MAX_NAME_LEN: usize = 255;
/// More decimal digits than any `usize` length needs; a longer length field is malformed.
const MAX_LENGTH_DIGITS: usize = 20;

/// True if `name` can be registered or addressed: 1 to 255 bytes, no `|` (NR-2).
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.contains(&SEPARATOR)
}

/// Why bytes are not a valid name relay message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// `|` with no name before it.
    #[error("empty name")]
    EmptyName,
    /// A name longer than the cap.
    #[error("name longer than {max} bytes")]
    NameTooLong {
        /// The cap.
        max: usize,
    },
    /// The length field is empty or holds something other than decimal digits.
    #[error("length is not a decimal number")]
    NonNumericLength,
    /// The length is above the configured cap.
    #[error("length {len} is above the cap of {max} bytes")]
    LengthTooLarge {
        /// The announced length (saturated at `u64::MAX`).
        len: u64,
        /// The cap.
        max: usize,
    },
}

/// The header of a frame: `name|length|`. The payload follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader<'a> {
    /// Destination (client to relay) or sender (relay to client).
    pub name: &'a [u8],
    /// Payload length in bytes.
    pub len: usize,
}

fn field(input: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(take_till(|b| b == SEPARATOR), tag(&[SEPARATOR][..])).parse(input)
}

fn length_field(input: &[u8]) -> IResult<&[u8], &[u8]> {
    terminated(digit1, tag(&[SEPARATOR][..])).parse(input)
}

/// Parse `name|`, the name at the front of `input`, capped at `max_name` bytes.
fn name(input: &[u8], max_name: usize) -> Result<Parsed<&[u8]>, WireError> {
    match field(input) {
        Ok((_, [])) => Err(WireError::EmptyName),
        Ok((_, name)) if name.len() > max_name => Err(WireError::NameTooLong { max: max_name }),
        Ok((_, name)) => Ok(Parsed::Done {
            value: name,
            consumed: name.len() + 1,
        }),
        Err(nom::Err::Incomplete(_)) if input.len() > max_name => {
            Err(WireError::NameTooLong { max: max_name })
        }
        // `take_till` then `tag` can only be incomplete on this input.
        Err(_) => Ok(Parsed::Incomplete),
    }
}

/// Parse a registration, `name|` (NR-1, NR-2).
pub fn parse_registration(input: &[u8], max_name: usize) -> Result<Parsed<&[u8]>, WireError> {
    name(input, max_name)
}

/// Parse a frame header, `name|length|` (NR-4). The payload is *not* required to
/// be present: `consumed` is the header length, `value.len` the payload length.
pub fn parse_frame_header(
    input: &[u8],
    max_name: usize,
    max_len: usize,
) -> Result<Parsed<FrameHeader<'_>>, WireError> {
    let (name, name_len) = match name(input, max_name)? {
        Parsed::Done { value, consumed } => (value, consumed),
        Parsed::Incomplete => return Ok(Parsed::Incomplete),
    };
    let rest = &input[name_len..];
    let digits = match length_field(rest) {
        Ok((_, digits)) => digits,
        Err(nom::Err::Incomplete(_)) => {
            if rest.len() > MAX_LENGTH_DIGITS {
                return Err(WireError::LengthTooLarge {
                    len: u64::MAX,
                    max: max_len,
                });
            }
            return Ok(Parsed::Incomplete);
        }
        // A run of digits too long to be a length is "too large" whatever follows
        // it, so the reason does not depend on where a read ended (NR-11).
        Err(_) if rest.iter().take_while(|b| b.is_ascii_digit()).count() > MAX_LENGTH_DIGITS => {
            return Err(WireError::LengthTooLarge {
                len: u64::MAX,
                max: max_len,
            });
        }
        Err(_) => return Err(WireError::NonNumericLength),
    };
    if digits.len() > MAX_LENGTH_DIGITS {
        return Err(WireError::LengthTooLarge {
            len: u64::MAX,
            max: max_len,
        });
    }
    let len = digits
        .iter()
        .try_fold(0u64, |acc, d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .unwrap_or(u64::MAX);
    match usize::try_from(len) {
        Ok(len) if len <= max_len => Ok(Parsed::Done {
            value: FrameHeader { name, len },
            consumed: name_len + digits.len() + 1,
        }),
        _ => Err(WireError::LengthTooLarge { len, max: max_len }),
    }
}

/// Append `name|` to `out`.
pub fn encode_registration(name: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.push(SEPARATOR);
}

/// Append `name|len|` to `out`.
pub fn encode_frame_header(name: &[u8], len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    out.push(SEPARATOR);
    let mut digits = [0u8; MAX_LENGTH_DIGITS];
    let mut at = digits.len();
    let mut n = len;
    loop {
        at -= 1;
        // `n % 10` is a single digit, so the cast cannot truncate.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.push(SEPARATOR);
}

/// Append a whole frame, `name|len|payload`, to `out`.
pub fn encode_frame(name: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    encode_frame_header(name, payload.len(), out);
    out.extend_from_slice(payload);
}

/// The exact encoded length of a frame header.
pub fn frame_header_len(name: &[u8], len: usize) -> usize {
    let mut digits = 1;
    let mut n = len / 10;
    while n > 0 {
        digits += 1;
        n /= 10;
    }
    name.len() + digits + 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};

    const CAP: usize = 16 << 20;

    fn done<T>(p: Parsed<T>) -> (T, usize) {
        match p {
            Parsed::Done { value, consumed } => (value, consumed),
            Parsed::Incomplete => panic!("incomplete"),
        }
    }

    #[test]
    fn nr1_registration_is_name_and_bar() {
        assert_eq!(
            done(parse_registration(b"device_a|rest", 255).unwrap()),
            (&b"device_a"[..], 9)
        );
        assert_eq!(parse_registration(b"device_a", 255), Ok(Parsed::Incomplete));
        assert_eq!(parse_registration(b"", 255), Ok(Parsed::Incomplete));
    }

    #[test]
    fn nr2_empty_and_overlong_names_are_rejected() {
        assert_eq!(parse_registration(b"|", 255), Err(WireError::EmptyName));
        let long = vec![b'a'; 256];
        assert_eq!(
            parse_registration(&long, 255),
            Err(WireError::NameTooLong { max: 255 })
        );
        let mut exact = vec![b'a'; 255];
        exact.push(b'|');
        assert_eq!(done(parse_registration(&exact, 255).unwrap()).1, 256);
    }

    #[test]
    fn nr4_frame_header() {
        let (h, n) = done(parse_frame_header(b"device_b|5|hello", 255, CAP).unwrap());
        assert_eq!((h.name, h.len, n), (&b"device_b"[..], 5, 11));
        let (h, _) = done(parse_frame_header(b"me|0|", 255, CAP).unwrap());
        assert_eq!(h.len, 0);
        assert_eq!(
            parse_frame_header(b"device_b|12", 255, CAP),
            Ok(Parsed::Incomplete)
        );
    }

    #[test]
    fn nr5_malformed_lengths_are_rejected() {
        assert_eq!(
            parse_frame_header(b"b||", 255, CAP),
            Err(WireError::NonNumericLength)
        );
        assert_eq!(
            parse_frame_header(b"b|-1|", 255, CAP),
            Err(WireError::NonNumericLength)
        );
        assert_eq!(
            parse_frame_header(b"b|1x|", 255, CAP),
            Err(WireError::NonNumericLength)
        );
        assert_eq!(
            parse_frame_header(b"b|17|", 255, 16),
            Err(WireError::LengthTooLarge { len: 17, max: 16 })
        );
        let endless = [b"b|".as_slice(), &[b'9'; 30]].concat();
        assert!(matches!(
            parse_frame_header(&endless, 255, CAP),
            Err(WireError::LengthTooLarge { .. })
        ));
        let digits_then_junk = [b"b|".as_slice(), &[b'1'; 21], b"x"].concat();
        assert!(matches!(
            parse_frame_header(&digits_then_junk, 255, CAP),
            Err(WireError::LengthTooLarge { .. })
        ));
        let huge = b"b|99999999999999999999|";
        assert!(matches!(
            parse_frame_header(huge, 255, CAP),
            Err(WireError::LengthTooLarge { .. })
        ));
    }

    #[test]
    fn header_length_is_exact() {
        for len in [0, 1, 9, 10, 99, 100, 65_536, usize::MAX] {
            let mut out = Vec::new();
            encode_frame_header(b"abc", len, &mut out);
            assert_eq!(out.len(), frame_header_len(b"abc", len));
            assert_eq!(out, format!("abc|{len}|").into_bytes());
        }
    }

    /// Names are any bytes but `|`, 1..=255 of them.
    fn to_name(raw: Vec<u8>) -> Vec<u8> {
        let mut name: Vec<u8> = raw
            .into_iter()
            .filter(|&b| b != SEPARATOR)
            .take(MAX_NAME_LEN)
            .collect();
        if name.is_empty() {
            name.push(b'n');
        }
        name
    }

    #[test]
    fn nr4_roundtrip_any_name_and_payload() {
        fn prop(raw_name: Vec<u8>, payload: Vec<u8>) -> bool {
            let name = to_name(raw_name);
            let mut out = Vec::new();
            encode_frame(&name, &payload, &mut out);
            let (h, n) = done(parse_frame_header(&out, 255, CAP).expect("valid"));
            h.name == name.as_slice() && h.len == payload.len() && &out[n..] == payload.as_slice()
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop as fn(Vec<u8>, Vec<u8>) -> bool);
    }

    #[test]
    fn nr4_every_strict_prefix_is_incomplete() {
        fn prop(raw_name: Vec<u8>, len: u32) -> bool {
            let name = to_name(raw_name);
            let mut out = Vec::new();
            encode_frame_header(&name, len as usize, &mut out);
            (0..out.len()).all(|cut| {
                parse_frame_header(&out[..cut], 255, usize::MAX) == Ok(Parsed::Incomplete)
            })
        }
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(Vec<u8>, u32) -> bool);
    }

    #[test]
    fn never_panics_and_never_overreads() {
        fn prop(bytes: Vec<u8>) -> TestResult {
            match parse_frame_header(&bytes, 255, CAP) {
                Ok(Parsed::Done { consumed, .. }) => TestResult::from_bool(consumed <= bytes.len()),
                Ok(Parsed::Incomplete) => TestResult::from_bool(bytes.len() <= 255 + 1 + 20),
                Err(_) => TestResult::passed(),
            }
        }
        QuickCheck::new()
            .tests(2000)
            .quickcheck(prop as fn(Vec<u8>) -> TestResult);
    }
}
