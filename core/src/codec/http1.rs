//! HTTP/1.x heads, sans-IO: request and response heads parsed with `httparse`
//! under size caps, and requests and responses encoded with no way to split them.
//!
//! # Parsing
//!
//! [`parse_request_head`] and [`parse_response_head`] are streaming: on a valid
//! prefix of a head they answer [`Parsed::Incomplete`], so a head split across any
//! number of reads parses the same as one read. A complete head answers
//! [`Parsed::Done`] with an owned value and `consumed` = the head's length
//! (through the blank line); the bytes after it (a body, or WebSocket frames after
//! an upgrade) are never consumed.
//!
//! Memory is bounded (ARCHITECTURE.md rule 5): only the first
//! [`HeadLimits::max_head_bytes`] bytes of the input are ever looked at. Once the
//! input is longer than that and still holds no complete head the answer is
//! [`HttpError::HeadTooLarge`], so the caller never needs to buffer more than
//! `max_head_bytes + 1` bytes to get an answer, however slowly or endlessly a peer
//! sends. Bad input is a typed [`HttpError`], never a panic (rule 7).
//!
//! # Encoding
//!
//! [`Response::encode`] and [`Request::encode`] are infallible and **sanitize**
//! rather than reject: whatever the fields hold, the output is exactly one
//! well-formed head (no response splitting, no header injection). See
//! [`Response::encode`] for the exact rules.

use std::fmt;

use thiserror::Error;

pub use super::Parsed;

/// The default cap on a head's size in bytes (8 KiB).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 8 << 10;
/// The default cap on the number of header fields in a head.
pub const DEFAULT_MAX_HEADERS: usize = 64;

/// Caps on what a peer may make the parser look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// The longest head accepted, in bytes, start line and blank line included.
    pub max_head_bytes: usize,
    /// The most header fields accepted in one head.
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
        }
    }
}

/// Why bytes are not an acceptable HTTP/1.x head.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HttpError {
    /// More than `max` bytes arrived without a complete head.
    #[error("head longer than {max} bytes")]
    HeadTooLarge {
        /// The cap ([`HeadLimits::max_head_bytes`]).
        max: usize,
    },
    /// The head has more than `max` header fields.
    #[error("more than {max} header fields")]
    TooManyHeaders {
        /// The cap ([`HeadLimits::max_headers`]).
        max: usize,
    },
    /// The bytes are not an HTTP/1.0 or HTTP/1.1 head.
    #[error("malformed head: {0}")]
    Malformed(Malformed),
}

impl HttpError {
    /// The status and reason phrase a server answers this error with before it
    /// closes the connection: 431 for a head over a cap, 400 otherwise.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. } => {
                (431, "Request Header Fields Too Large")
            }
            HttpError::Malformed(_) => (400, "Bad Request"),
        }
    }
}

/// Where a head broke the HTTP/1.x grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Malformed {
    /// A byte that cannot be in a header field name.
    #[error("invalid header name")]
    HeaderName,
    /// A byte that cannot be in a header field value.
    #[error("invalid header value")]
    HeaderValue,
    /// A bad line ending (e.g. CR not followed by LF).
    #[error("invalid line ending")]
    NewLine,
    /// A bad status line (responses).
    #[error("invalid status line")]
    Status,
    /// A bad method or request target.
    #[error("invalid token in request line")]
    Token,
    /// A version other than `HTTP/1.0` or `HTTP/1.1`.
    #[error("unsupported HTTP version")]
    Version,
}

impl From<httparse::Error> for HttpError {
    fn from(e: httparse::Error) -> Self {
        HttpError::Malformed(match e {
            httparse::Error::HeaderName => Malformed::HeaderName,
            httparse::Error::HeaderValue => Malformed::HeaderValue,
            httparse::Error::NewLine => Malformed::NewLine,
            httparse::Error::Status => Malformed::Status,
            httparse::Error::Version => Malformed::Version,
            // `TooManyHeaders` is mapped by the callers, which know the cap; the
            // remaining kind is a bad token.
            httparse::Error::Token | httparse::Error::TooManyHeaders => Malformed::Token,
        })
    }
}

/// The protocol version of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Version {
    /// `HTTP/1.0` (the tracker of seed 000).
    Http10,
    /// `HTTP/1.1`.
    #[default]
    Http11,
}

impl Version {
    /// The minor version number: 0 or 1.
    pub fn minor(self) -> u8 {
        match self {
            Version::Http10 => 0,
            Version::Http11 => 1,
        }
    }

    fn from_minor(minor: u8) -> Self {
        if minor == 0 {
            Version::Http10
        } else {
            Version::Http11
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        })
    }
}

/// A header field as received: the name as sent (a token, so ASCII) and the
/// value's bytes, without surrounding whitespace.
pub type HeaderField = (String, Vec<u8>);

/// Give a parsed head (a type with `headers: Vec<HeaderField>`) its header
/// lookups. Names compare ASCII-case-insensitively, as HTTP requires.
macro_rules! header_lookups {
    ($head:ty) => {
        impl $head {
            /// The value of the first `name` field (case-insensitive), if any.
            pub fn header(&self, name: &str) -> Option<&[u8]> {
                self.headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_slice())
            }

            /// The value of the first `name` field as text; `None` if absent or not UTF-8.
            pub fn header_str(&self, name: &str) -> Option<&str> {
                self.header(name).and_then(|v| std::str::from_utf8(v).ok())
            }

            /// The values of every `name` field, in order.
            pub fn headers_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
                self.headers
                    .iter()
                    .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_slice())
            }

            /// True if a `name` field lists `token` (comma-separated, case-insensitive),
            /// e.g. `has_token("Connection", "upgrade")` for `Connection: keep-alive, Upgrade`.
            pub fn has_token(&self, name: &str, token: &str) -> bool {
                self.headers_all(name).any(|value| {
                    value
                        .split(|&b| b == b',')
                        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
                })
            }
        }
    };
}

header_lookups!(RequestHead);
header_lookups!(ResponseHead);

/// A request head (start line and header fields), owned.
///
/// Produced by [`parse_request_head`]. The target is kept exactly as sent;
/// [`path`](Self::path), [`query`](Self::query) and
/// [`query_param`](Self::query_param) split it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, e.g. `GET` (a token, case as sent).
    pub method: String,
    /// The request target as sent, e.g. `/v1?relayId=r1&peerId=p1`.
    pub target: String,
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: Version,
    /// The header fields in the order received, repeats included.
    pub headers: Vec<HeaderField>,
}

impl RequestHead {
    /// The target without its query (and fragment), not percent-decoded: `/v1`.
    pub fn path(&self) -> &str {
        let end = self.target.find(['?', '#']).unwrap_or(self.target.len());
        &self.target[..end]
    }

    /// The raw query after `?` (without any fragment), if the target has one.
    pub fn query(&self) -> Option<&str> {
        let start = self.target.find('?')? + 1;
        let rest = &self.target[start..];
        Some(rest.find('#').map_or(rest, |end| &rest[..end]))
    }

    /// The first query parameter called `name`, decoded as
    /// `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte).
    ///
    /// Returns `None` if there is no such parameter, **or if its value is not
    /// decodable** (a bad `%` escape, or bytes that are not UTF-8): a caller
    /// treats a mangled parameter like a missing one. Keys are decoded the same
    /// way before comparing; a key that cannot be decoded matches nothing. A
    /// parameter without `=` has the empty value.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?
            .split('&')
            .filter(|pair| !pair.is_empty())
            .find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode_form_component(key).as_deref() == Some(name)).then_some(value)
            })
            .and_then(decode_form_component)
    }
}

/// Decode one `application/x-www-form-urlencoded` component: `+` is a space and
/// `%XX` (hex, either case) a byte. `None` on a bad escape or non-UTF-8 result.
pub fn decode_form_component(s: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex(bytes.next()?)?;
                let lo = hex(bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Append `s` to `out` encoded as one `application/x-www-form-urlencoded`
/// component (the inverse of [`decode_form_component`]): unreserved bytes as
/// they are, space as `+`, everything else as `%XX`.
pub fn encode_form_component(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

/// A response head (status line and header fields), owned.
///
/// Produced by [`parse_response_head`]; a client (the tracker client of seed
/// 000) reads the body itself after `consumed` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// `HTTP/1.0` or `HTTP/1.1`.
    pub version: Version,
    /// The status code, three digits.
    pub status: u16,
    /// The reason phrase; empty if absent or if it held non-ASCII bytes.
    pub reason: String,
    /// The header fields in the order received, repeats included.
    pub headers: Vec<HeaderField>,
}

impl ResponseHead {
    /// The `Content-Length`, if present and a plain decimal number.
    pub fn content_length(&self) -> Option<u64> {
        let value = self.header("Content-Length")?;
        if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(value).ok()?.parse().ok()
    }
}

/// The part of `input` the parser may look at, and a scratch header table big
/// enough for every head that fits in it.
fn bounded<'a>(input: &'a [u8], limits: &HeadLimits) -> (&'a [u8], Vec<httparse::Header<'a>>) {
    let window = &input[..input.len().min(limits.max_head_bytes)];
    // A header field takes at least 3 bytes (`a:` and LF), so no head within the
    // window has more fields than this: a huge `max_headers` allocates nothing.
    let slots = limits.max_headers.min(limits.max_head_bytes / 3 + 1);
    (window, vec![httparse::EMPTY_HEADER; slots])
}

/// Turn httparse's answer on the window into ours.
fn finish<T>(
    status: Result<httparse::Status<usize>, httparse::Error>,
    input_len: usize,
    limits: &HeadLimits,
    value: impl FnOnce() -> T,
) -> Result<Parsed<T>, HttpError> {
    match status {
        Ok(httparse::Status::Complete(consumed)) => Ok(Parsed::Done {
            value: value(),
            consumed,
        }),
        Ok(httparse::Status::Partial) if input_len > limits.max_head_bytes => {
            Err(HttpError::HeadTooLarge {
                max: limits.max_head_bytes,
            })
        }
        Ok(httparse::Status::Partial) => Ok(Parsed::Incomplete),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders {
            max: limits.max_headers,
        }),
        Err(e) => Err(e.into()),
    }
}

fn own_headers(headers: &[httparse::Header<'_>]) -> Vec<HeaderField> {
    headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

/// Parse a request head at the front of `input` (HTTP/1.0 or HTTP/1.1).
///
/// - `Ok(Done { value, consumed })`: a complete head; `consumed` is its length
///   (leading blank lines, which RFC 9112 lets a server skip, included). The
///   bytes after it are not looked at.
/// - `Ok(Incomplete)`: `input` is a valid prefix of a head no longer than
///   `limits.max_head_bytes`; call again with more bytes.
/// - `Err(HeadTooLarge)`: `input` is longer than `max_head_bytes` and its first
///   `max_head_bytes` bytes hold no complete head.
/// - `Err(TooManyHeaders)` / `Err(Malformed(_))`: not an acceptable head, now
///   or with any further bytes; answer 400 (or 431) and close.
///
/// The answer depends only on `input[..max_head_bytes]` and on whether `input`
/// is longer, so it does not depend on how the bytes were split into reads.
pub fn parse_request_head(
    input: &[u8],
    limits: &HeadLimits,
) -> Result<Parsed<RequestHead>, HttpError> {
    let (window, mut slots) = bounded(input, limits);
    let mut req = httparse::Request::new(&mut slots);
    let status = req.parse(window);
    finish(status, input.len(), limits, || RequestHead {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        version: Version::from_minor(req.version.unwrap_or(1)),
        headers: own_headers(req.headers),
    })
}

/// Collect a request head that arrives in pieces: append to `held` what the
/// parser may still need of `data` (so `held` never exceeds
/// `max_head_bytes + 1` bytes) and parse. `Ok(Some((head, rest)))` once the head
/// is complete, `rest` being where the bytes after it (a body, WebSocket frames)
/// start in `data`; `Ok(None)` while incomplete; the parser's errors as they are.
/// `held` must hold only earlier pieces that were not a complete head.
pub fn buffer_request_head(
    held: &mut Vec<u8>,
    data: &[u8],
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let before = held.len();
    let take = (limits.max_head_bytes + 1)
        .saturating_sub(before)
        .min(data.len());
    held.extend_from_slice(&data[..take]);
    match parse_request_head(held, limits)? {
        Parsed::Incomplete => Ok(None),
        // The held bytes were no complete head, so it ends in `data`.
        Parsed::Done { value, consumed } => Ok(Some((
            value,
            consumed.saturating_sub(before).min(data.len()),
        ))),
    }
}

/// Parse a response head at the front of `input`; same contract as
/// [`parse_request_head`].
pub fn parse_response_head(
    input: &[u8],
    limits: &HeadLimits,
) -> Result<Parsed<ResponseHead>, HttpError> {
    let (window, mut slots) = bounded(input, limits);
    let mut res = httparse::Response::new(&mut slots);
    let status = res.parse(window);
    finish(status, input.len(), limits, || ResponseHead {
        version: Version::from_minor(res.version.unwrap_or(1)),
        status: res.code.unwrap_or_default(),
        reason: res.reason.unwrap_or_default().to_owned(),
        headers: own_headers(res.headers),
    })
}

/// RFC 9110 `tchar`: the bytes of a token (method, header name).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Write `token`, with each byte that cannot be in a token replaced by `_`
/// (an empty token becomes `_`), so it cannot end the line or the field name.
fn put_token(token: &str, out: &mut Vec<u8>) {
    if token.is_empty() {
        out.push(b'_');
    }
    out.extend(token.bytes().map(|b| if is_tchar(b) { b } else { b'_' }));
}

/// Write a header value or reason phrase, with each control byte but HTAB
/// (CR and LF above all) replaced by a space, so it cannot end the line.
fn put_text(text: &str, out: &mut Vec<u8>) {
    out.extend(text.bytes().map(|b| {
        if (b < 0x20 && b != b'\t') || b == 0x7f {
            b' '
        } else {
            b
        }
    }));
}

/// Write a request target, with every byte that cannot be in one (controls,
/// space) percent-encoded; an empty target becomes `/`.
fn put_target(target: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    if target.is_empty() {
        out.push(b'/');
    }
    for b in target.bytes() {
        if b <= b' ' || b == 0x7f {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        } else {
            out.push(b);
        }
    }
}

/// Write the header fields, a `Content-Length` for `body` if `add_length` and
/// the caller did not frame the body itself, the blank line, then `body`.
fn put_fields_and_body(
    headers: &[(String, String)],
    body: &[u8],
    add_length: bool,
    out: &mut Vec<u8>,
) {
    for (name, value) in headers {
        put_token(name, out);
        out.extend_from_slice(b": ");
        put_text(value, out);
        out.extend_from_slice(b"\r\n");
    }
    if add_length && !has_framing(headers) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Give a message to encode (a type with `headers: Vec<(String, String)>` and
/// `body: Vec<u8>`) its `with_header` and `with_body` builders; `$what` names it
/// in their docs.
macro_rules! message_builders {
    ($message:ty, $what:literal) => {
        impl $message {
            #[doc = concat!("This ", $what, " with `name: value` appended to its header fields.")]
            pub fn with_header(mut self, name: &str, value: &str) -> Self {
                self.headers.push((name.to_owned(), value.to_owned()));
                self
            }

            #[doc = concat!("This ", $what, " with `body`.")]
            pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
                self.body = body.into();
                self
            }
        }
    };
}

message_builders!(Response, "response");
message_builders!(Request, "request");

/// True if the caller already framed the body.
fn has_framing(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("Content-Length") || n.eq_ignore_ascii_case("Transfer-Encoding")
    })
}

/// A response to encode.
///
/// Build one with [`Response::new`], [`Response::text`] or
/// [`Response::switching_protocols`], adjust with the `with_*` methods, then
/// [`encode`](Self::encode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// `HTTP/1.1` by default; `HTTP/1.0` for the tracker of seed 000.
    pub version: Version,
    /// The status code; written as 500 if outside `100..=999`.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// Header fields, written in order.
    pub headers: Vec<(String, String)>,
    /// The body, written as is after the head.
    pub body: Vec<u8>,
}

impl Response {
    /// An `HTTP/1.1` response with no header fields and no body.
    pub fn new(status: u16, reason: &str) -> Self {
        Response {
            version: Version::Http11,
            status,
            reason: reason.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A plain-text response that closes the connection, e.g. an error answer:
    /// `Content-Type: text/plain; charset=utf-8`, `Connection: close`.
    pub fn text(status: u16, reason: &str, body: impl Into<Vec<u8>>) -> Self {
        Response::new(status, reason)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_header("Connection", "close")
            .with_body(body)
    }

    /// The `101 Switching Protocols` answer to a WebSocket upgrade (RFC 6455
    /// section 4.2.2): `Upgrade: websocket`, `Connection: Upgrade`,
    /// `Sec-WebSocket-Accept: accept_key` and, if given, the chosen
    /// `Sec-WebSocket-Protocol`.
    pub fn switching_protocols(accept_key: &str, protocol: Option<&str>) -> Self {
        let mut response = Response::new(101, "Switching Protocols")
            .with_header("Upgrade", "websocket")
            .with_header("Connection", "Upgrade")
            .with_header("Sec-WebSocket-Accept", accept_key);
        if let Some(protocol) = protocol {
            response = response.with_header("Sec-WebSocket-Protocol", protocol);
        }
        response
    }

    /// This response with `version` (e.g. [`Version::Http10`]).
    pub fn with_version(mut self, version: Version) -> Self {
        self.version = version;
        self
    }

    /// Append the response, head then body, to `out`.
    ///
    /// `Content-Length` is added after the given fields unless one of them is
    /// `Content-Length` or `Transfer-Encoding`, or the status is 1xx, 204 or 304
    /// (which must not carry one); it is added for an empty body too, so a client
    /// on a kept-alive connection knows where the response ends.
    ///
    /// Encoding never fails and never writes more than one head: it sanitizes.
    /// In header values and the reason phrase, every control byte except HTAB
    /// (CR and LF above all) becomes a space; in header names, every byte that
    /// is not a token byte becomes `_` (an empty name becomes `_`). So a value
    /// holding `\r\nSet-Cookie: x` stays inside its own field.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let status = if (100..=999).contains(&self.status) {
            self.status
        } else {
            500
        };
        out.extend_from_slice(format!("{} {status:03} ", self.version).as_bytes());
        put_text(&self.reason, out);
        out.extend_from_slice(b"\r\n");
        let bodiless = status < 200 || status == 204 || status == 304;
        put_fields_and_body(&self.headers, &self.body, !bodiless, out);
    }
}

/// A request to encode (a client's, e.g. the tracker client of seed 000).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target, e.g. `/Pi`.
    pub target: String,
    /// `HTTP/1.1` by default.
    pub version: Version,
    /// Header fields, written in order.
    pub headers: Vec<(String, String)>,
    /// The body, written as is after the head.
    pub body: Vec<u8>,
}

impl Request {
    /// A `GET target` request with no header fields, in `version`.
    pub fn get(target: &str, version: Version) -> Self {
        Request {
            method: "GET".to_owned(),
            target: target.to_owned(),
            version,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Append the request, head then body, to `out`.
    ///
    /// `Content-Length` is added when the body is not empty and no
    /// `Content-Length` or `Transfer-Encoding` field was given. Sanitizes like
    /// [`Response::encode`]; besides, a method byte that is not a token byte
    /// becomes `_`, and a target byte that is a control or a space is
    /// percent-encoded (an empty target becomes `/`).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_token(&self.method, out);
        out.push(b' ');
        put_target(&self.target, out);
        out.extend_from_slice(format!(" {}\r\n", self.version).as_bytes());
        put_fields_and_body(&self.headers, &self.body, !self.body.is_empty(), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

    fn done<T>(p: Result<Parsed<T>, HttpError>) -> (T, usize) {
        match p {
            Ok(Parsed::Done { value, consumed }) => (value, consumed),
            other => panic!("not done: {:?}", other.err()),
        }
    }

    fn request(bytes: &[u8]) -> (RequestHead, usize) {
        done(parse_request_head(bytes, &HeadLimits::default()))
    }

    /// What Chrome sends for `new WebSocket(url, ["s3cret"])` (seed 003).
    const BROWSER_UPGRADE: &[u8] = b"GET /v1?relayId=room%201%2Fa&peerId=peer+one&x HTTP/1.1\r\n\
        Host: relay.example:42102\r\n\
        Connection: Upgrade\r\n\
        Pragma: no-cache\r\n\
        Cache-Control: no-cache\r\n\
        User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36\r\n\
        Upgrade: websocket\r\n\
        Origin: https://app.example\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Accept-Encoding: gzip, deflate, br\r\n\
        Accept-Language: en-US,en;q=0.9\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
        Sec-WebSocket-Protocol: s3cret\r\n\
        \r\n";

    #[test]
    fn browser_websocket_upgrade_parses_with_decoded_query_params() {
        let (head, consumed) = request(BROWSER_UPGRADE);
        assert_eq!(consumed, BROWSER_UPGRADE.len());
        assert_eq!(head.method, "GET");
        assert_eq!(head.version, Version::Http11);
        assert_eq!(head.path(), "/v1");
        assert_eq!(head.query(), Some("relayId=room%201%2Fa&peerId=peer+one&x"));
        assert_eq!(head.query_param("relayId").as_deref(), Some("room 1/a"));
        assert_eq!(head.query_param("peerId").as_deref(), Some("peer one"));
        assert_eq!(head.query_param("x").as_deref(), Some(""));
        assert_eq!(head.query_param("missing"), None);
        assert_eq!(head.headers.len(), 13);
        assert_eq!(head.header_str("Sec-WebSocket-Protocol"), Some("s3cret"));
        assert_eq!(head.header_str("Origin"), Some("https://app.example"));
        assert!(head.has_token("Connection", "upgrade"));
        assert!(head.has_token("Upgrade", "WebSocket"));
        assert!(!head.has_token("Connection", "close"));
    }

    #[test]
    fn query_param_with_bad_percent_escape_is_none() {
        let (head, _) = request(b"GET /v1?a=%zz&b=%4&c=%ff&d=%41%62&a=ok HTTP/1.1\r\n\r\n");
        // `a`'s first occurrence is undecodable: None, not the later `a=ok`.
        assert_eq!(head.query_param("a"), None);
        assert_eq!(head.query_param("b"), None);
        assert_eq!(head.query_param("c"), None, "not UTF-8");
        assert_eq!(head.query_param("d").as_deref(), Some("Ab"));
        let (head, _) = request(b"GET /plain#frag HTTP/1.1\r\n\r\n");
        assert_eq!((head.path(), head.query()), ("/plain", None));
        assert_eq!(head.query_param("a"), None);
    }

    #[test]
    fn form_component_encode_then_decode_is_identity() {
        fn prop(s: String) -> bool {
            let mut encoded = String::new();
            encode_form_component(&s, &mut encoded);
            decode_form_component(&encoded) == Some(s)
        }
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(String) -> bool);
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_first_match() {
        let (head, _) = request(
            b"GET / HTTP/1.0\r\nX-Thing: one\r\nhost: h\r\nx-thing: two\r\nX-BIN: \xff\r\n\r\n",
        );
        assert_eq!(head.version, Version::Http10);
        assert_eq!(head.header("HOST"), Some(&b"h"[..]));
        assert_eq!(head.header("x-THING"), Some(&b"one"[..]));
        let all: Vec<&[u8]> = head.headers_all("X-Thing").collect();
        assert_eq!(all, [&b"one"[..], &b"two"[..]]);
        assert_eq!(head.header("x-bin"), Some(&b"\xff"[..]));
        assert_eq!(head.header_str("x-bin"), None, "not UTF-8");
        assert_eq!(head.header("absent"), None);
    }

    #[test]
    fn body_after_head_is_not_consumed() {
        let head = b"POST /submit HTTP/1.1\r\nContent-Length: 5\r\n\r\n";
        let input = [&head[..], b"hello", b"GET / HTTP/1.1\r\n"].concat();
        let (parsed, consumed) = request(&input);
        assert_eq!(consumed, head.len());
        assert_eq!(parsed.header_str("content-length"), Some("5"));
        assert_eq!(&input[consumed..consumed + 5], b"hello");
    }

    #[test]
    fn endless_head_is_rejected_as_soon_as_it_exceeds_the_cap() {
        let limits = HeadLimits {
            max_head_bytes: 100,
            max_headers: 64,
        };
        let mut endless = b"GET / HTTP/1.1\r\nX-Long: ".to_vec();
        endless.resize(500, b'a');
        for len in 0..=100 {
            assert_eq!(
                parse_request_head(&endless[..len], &limits),
                Ok(Parsed::Incomplete),
                "at {len}"
            );
        }
        for len in 101..=500 {
            assert_eq!(
                parse_request_head(&endless[..len], &limits),
                Err(HttpError::HeadTooLarge { max: 100 }),
                "at {len}"
            );
        }
        // A head of exactly the cap is accepted, with any bytes after it.
        let mut exact = b"GET / HTTP/1.1\r\nX: ".to_vec();
        exact.resize(96, b'b');
        exact.extend_from_slice(b"\r\n\r\nbody");
        let (_, consumed) = done(parse_request_head(&exact, &limits));
        assert_eq!(consumed, 100);
        // Responses are capped the same way.
        let endless = [&b"HTTP/1.0 200 OK\r\n"[..], &[b'x'; 200]].concat();
        assert_eq!(
            parse_response_head(&endless, &limits),
            Err(HttpError::HeadTooLarge { max: 100 })
        );
    }

    #[test]
    fn too_many_headers_is_rejected() {
        let limits = HeadLimits {
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_headers: 3,
        };
        let three = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n";
        assert_eq!(done(parse_request_head(three, &limits)).0.headers.len(), 3);
        let four = b"GET / HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n";
        assert_eq!(
            parse_request_head(four, &limits),
            Err(HttpError::TooManyHeaders { max: 3 })
        );
        let none = HeadLimits {
            max_head_bytes: 64,
            max_headers: 0,
        };
        assert_eq!(
            parse_request_head(b"GET / HTTP/1.1\r\na: 1\r\n\r\n", &none),
            Err(HttpError::TooManyHeaders { max: 0 })
        );
        // A huge cap is bounded by the byte cap, not allocated.
        let huge = HeadLimits {
            max_head_bytes: 64,
            max_headers: usize::MAX,
        };
        assert_eq!(done(parse_request_head(three, &huge)).0.headers.len(), 3);
    }

    #[test]
    fn malformed_heads_are_typed_errors() {
        let limits = HeadLimits::default();
        let cases: [(&[u8], Malformed); 5] = [
            (b"GET / HTTP/2.0\r\n\r\n", Malformed::Version),
            (
                b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                Malformed::HeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nA: x\x01y\r\n\r\n",
                Malformed::HeaderValue,
            ),
            (b"GET / HTTP/1.1\rX", Malformed::NewLine),
            (b"G(T / HTTP/1.1\r\n\r\n", Malformed::Token),
        ];
        for (input, reason) in cases {
            assert_eq!(
                parse_request_head(input, &limits),
                Err(HttpError::Malformed(reason)),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(
            parse_response_head(b"HTTP/1.1 20x OK\r\n\r\n", &limits),
            Err(HttpError::Malformed(Malformed::Status))
        );
    }

    /// A random, valid header field: a token name and a value with no
    /// surrounding whitespace (httparse trims it) and no control bytes.
    #[derive(Debug, Clone)]
    struct Field(String, String);

    impl Arbitrary for Field {
        fn arbitrary(g: &mut Gen) -> Self {
            const NAME: &[u8] = b"abcXYZ019-_!#$%&'*+.^`|~";
            const VALUE: &[u8] = b"abcXYZ019 \t:;,=/\"()<>@[]?{}\\~";
            let name_len = 1 + usize::arbitrary(g) % 12;
            let name = (0..name_len)
                .map(|_| char::from(*g.choose(NAME).unwrap_or(&b'a')))
                .collect();
            let value_len = usize::arbitrary(g) % 40;
            let mut value: String = (0..value_len)
                .map(|_| char::from(*g.choose(VALUE).unwrap_or(&b'a')))
                .collect();
            if bool::arbitrary(g) {
                value.push('é'); // obs-text survives as bytes
            }
            Field(name, value.trim_matches([' ', '\t']).to_owned())
        }
    }

    /// A random valid request, as the encoder writes it.
    #[derive(Debug, Clone)]
    struct ValidRequest(Request);

    impl Arbitrary for ValidRequest {
        fn arbitrary(g: &mut Gen) -> Self {
            let methods = ["GET", "POST", "PUT", "OPTIONS", "X-CUSTOM"];
            let targets = ["/", "/Pi", "/v1?relayId=a%20b&peerId=c+d", "*", "/a/b?"];
            let fields: Vec<Field> = Arbitrary::arbitrary(g);
            ValidRequest(Request {
                method: (*g.choose(&methods).unwrap_or(&"GET")).to_owned(),
                target: (*g.choose(&targets).unwrap_or(&"/")).to_owned(),
                version: if bool::arbitrary(g) {
                    Version::Http10
                } else {
                    Version::Http11
                },
                headers: fields.into_iter().take(20).map(|f| (f.0, f.1)).collect(),
                body: Arbitrary::arbitrary(g),
            })
        }
    }

    fn encoded(r: &Request) -> Vec<u8> {
        let mut out = Vec::new();
        r.encode(&mut out);
        out
    }

    fn as_fields(headers: &[(String, String)]) -> Vec<HeaderField> {
        headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
            .collect()
    }

    #[test]
    fn request_encode_then_parse_roundtrips() {
        fn prop(r: ValidRequest) -> bool {
            let r = r.0;
            let out = encoded(&r);
            let (head, consumed) = request(&out);
            let mut expected = as_fields(&r.headers);
            if !r.body.is_empty() {
                expected.push(("Content-Length".into(), r.body.len().to_string().into()));
            }
            head.method == r.method
                && head.target == r.target
                && head.version == r.version
                && head.headers == expected
                && out[consumed..] == r.body[..]
        }
        QuickCheck::new()
            .tests(200)
            .quickcheck(prop as fn(ValidRequest) -> bool);
    }

    #[test]
    fn every_strict_prefix_of_a_head_is_incomplete() {
        fn prop(r: ValidRequest) -> bool {
            let out = encoded(&r.0);
            let head_len = out.len() - r.0.body.len();
            (0..head_len).all(|cut| {
                parse_request_head(&out[..cut], &HeadLimits::default()) == Ok(Parsed::Incomplete)
            })
        }
        QuickCheck::new()
            .tests(60)
            .quickcheck(prop as fn(ValidRequest) -> bool);
    }

    #[test]
    fn any_split_into_growing_prefixes_gives_the_same_head() {
        fn prop(r: ValidRequest, cuts: Vec<usize>) -> bool {
            let out = encoded(&r.0);
            let whole = parse_request_head(&out, &HeadLimits::default());
            let mut ends: Vec<usize> = cuts.iter().map(|c| c % (out.len() + 1)).collect();
            ends.push(out.len());
            ends.sort_unstable();
            // Feed as a reader would: each read appends, then the buffer is parsed.
            let mut buffer = Vec::new();
            let mut start = 0;
            for end in ends {
                buffer.extend_from_slice(&out[start..end]);
                start = end;
                match parse_request_head(&buffer, &HeadLimits::default()) {
                    Ok(Parsed::Incomplete) => {}
                    answer => return answer == whole && end >= out.len() - r.0.body.len(),
                }
            }
            false
        }
        QuickCheck::new()
            .tests(200)
            .quickcheck(prop as fn(ValidRequest, Vec<usize>) -> bool);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_overread() {
        fn prop(bytes: Vec<u8>, small: bool) -> TestResult {
            let limits = if small {
                HeadLimits {
                    max_head_bytes: 16,
                    max_headers: 2,
                }
            } else {
                HeadLimits::default()
            };
            let req = parse_request_head(&bytes, &limits);
            let res = parse_response_head(&bytes, &limits);
            let ok = |consumed: usize| consumed <= bytes.len().min(limits.max_head_bytes);
            let fits = bytes.len() <= limits.max_head_bytes;
            TestResult::from_bool(
                match req {
                    Ok(Parsed::Done { consumed, .. }) => ok(consumed),
                    Ok(Parsed::Incomplete) => fits,
                    Err(_) => true,
                } && match res {
                    Ok(Parsed::Done { consumed, .. }) => ok(consumed),
                    Ok(Parsed::Incomplete) => fits,
                    Err(_) => true,
                },
            )
        }
        QuickCheck::new()
            .tests(1000)
            .quickcheck(prop as fn(Vec<u8>, bool) -> TestResult);
        // And bytes that start like a head, so the parser gets past the start line.
        fn prop_prefixed(tail: Vec<u8>) -> bool {
            let input = [&b"GET /x HTTP/1.1\r\nA: b\r\n"[..], &tail].concat();
            let _ = parse_request_head(&input, &HeadLimits::default());
            let input = [&b"HTTP/1.0 200 OK\r\n"[..], &tail].concat();
            let _ = parse_response_head(&input, &HeadLimits::default());
            true
        }
        QuickCheck::new()
            .tests(500)
            .quickcheck(prop_prefixed as fn(Vec<u8>) -> bool);
    }

    #[test]
    fn response_encode_then_parse_roundtrips() {
        fn prop(status: u16, reason: String, fields: Vec<Field>, body: Vec<u8>, old: bool) -> bool {
            let status = 100 + status % 900;
            let reason: String = reason
                .chars()
                .filter(|c| c.is_ascii_graphic() || *c == ' ')
                .collect();
            let response = Response {
                version: if old {
                    Version::Http10
                } else {
                    Version::Http11
                },
                status,
                reason: reason.clone(),
                headers: fields.into_iter().take(20).map(|f| (f.0, f.1)).collect(),
                body: body.clone(),
            };
            let mut out = Vec::new();
            response.encode(&mut out);
            let (head, consumed) = done(parse_response_head(&out, &HeadLimits::default()));
            let mut expected = as_fields(&response.headers);
            let bodiless = status < 200 || status == 204 || status == 304;
            if !bodiless && !has_framing(&response.headers) {
                expected.push(("Content-Length".into(), body.len().to_string().into()));
            }
            head.version == response.version
                && head.status == status
                && head.reason == reason
                && head.headers == expected
                && out[consumed..] == body[..]
                && (bodiless || head.content_length().is_some())
        }
        QuickCheck::new()
            .tests(300)
            .quickcheck(prop as fn(u16, String, Vec<Field>, Vec<u8>, bool) -> bool);
    }

    #[test]
    fn text_and_switching_protocols_encode_exactly() {
        let mut out = Vec::new();
        Response::text(403, "Forbidden", "origin not allowed\n").encode(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 403 Forbidden\r\n\
              Content-Type: text/plain; charset=utf-8\r\n\
              Connection: close\r\n\
              Content-Length: 19\r\n\
              \r\n\
              origin not allowed\n"
        );
        out.clear();
        Response::switching_protocols("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", Some("s3cret"))
            .encode(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              Sec-WebSocket-Protocol: s3cret\r\n\
              \r\n"
        );
        out.clear();
        Response::switching_protocols("k", None).encode(&mut out);
        assert!(!out.windows(22).any(|w| w == b"Sec-WebSocket-Protocol"));
        // The tracker's answer (seed 000), in HTTP/1.0.
        out.clear();
        Response::new(200, "OK")
            .with_version(Version::Http10)
            .with_header("Server", "ferry/0.1")
            .with_header("Address", "1.2.3.4:5:6.7.8.9:10")
            .encode(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.0 200 OK\r\nServer: ferry/0.1\r\nAddress: 1.2.3.4:5:6.7.8.9:10\r\n\
              Content-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn tracker_request_encodes_as_seed_000_shows() {
        let mut out = Vec::new();
        Request::get("/Pi", Version::Http10)
            .with_header("Mount", "radio")
            .with_header("MyAddr", "1.2.3.4:5000")
            .encode(&mut out);
        assert_eq!(
            out,
            b"GET /Pi HTTP/1.0\r\nMount: radio\r\nMyAddr: 1.2.3.4:5000\r\n\r\n"
        );
    }

    #[test]
    fn cr_lf_in_a_header_value_cannot_split_a_response() {
        let response = Response::new(200, "OK\r\nX-Evil: 1")
            .with_header("Location", "/x\r\nSet-Cookie: evil=1\r\n\r\n<html>")
            .with_header("Bad\r\nName", "v\nw\rz\0")
            .with_body("ok");
        let mut out = Vec::new();
        response.encode(&mut out);
        let (head, consumed) = done(parse_response_head(&out, &HeadLimits::default()));
        assert_eq!(head.reason, "OK  X-Evil: 1");
        assert_eq!(head.header("Set-Cookie"), None);
        assert_eq!(head.header("X-Evil"), None);
        assert_eq!(
            head.header_str("Location"),
            Some("/x  Set-Cookie: evil=1    <html>")
        );
        assert_eq!(head.header_str("Bad__Name"), Some("v w z"));
        assert_eq!(head.headers.len(), 3, "Location, Bad__Name, Content-Length");
        assert_eq!(&out[consumed..], b"ok");
        // The same holds for requests, target included.
        let mut out = Vec::new();
        Request::get("/a b\r\nHost: evil", Version::Http11)
            .with_header("Host", "h\r\nX-Evil: 1")
            .encode(&mut out);
        let (head, _) = request(&out);
        assert_eq!(head.target, "/a%20b%0D%0AHost:%20evil");
        assert_eq!(head.headers.len(), 1);
        assert_eq!(head.header_str("Host"), Some("h  X-Evil: 1"));
    }

    #[test]
    fn errors_map_to_431_or_400() {
        assert_eq!(HttpError::HeadTooLarge { max: 1 }.status().0, 431);
        assert_eq!(HttpError::TooManyHeaders { max: 1 }.status().0, 431);
        assert_eq!(HttpError::Malformed(Malformed::Token).status().0, 400);
    }

    #[test]
    fn out_of_range_status_is_written_as_500() {
        let mut out = Vec::new();
        Response::new(42, "Odd").encode(&mut out);
        let (head, _) = done(parse_response_head(&out, &HeadLimits::default()));
        assert_eq!(head.status, 500);
    }
}
