//! WebSocket messages: the reader that applies RFC 6455 §5's rules to a byte
//! stream, and the writers of whole messages.

use super::{
    MAX_HEADER_LEN, OpCode, Parsed, WsError, apply_mask, encode_frame, parse_frame_header,
};

/// The largest payload of a control frame (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Which end of the connection the reader is on; it decides the masking rule (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A server: it reads frames from a client, which must all be masked.
    Server,
    /// A client: it reads frames from a server, which must all be unmasked.
    Client,
}

/// The payload of a close frame (§5.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code (§7.4).
    pub code: u16,
    /// A UTF-8 reason, at most 123 bytes on the wire.
    pub reason: String,
}

/// One whole message, or one control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (its fragments joined), valid UTF-8.
    Text(String),
    /// A binary message (its fragments joined).
    Binary(Vec<u8>),
    /// A ping, at most 125 bytes; answer with a pong of the same payload.
    Ping(Vec<u8>),
    /// A pong, at most 125 bytes.
    Pong(Vec<u8>),
    /// A close, with a status code and reason unless its payload was empty.
    Close(Option<CloseFrame>),
}

/// True if `code` may appear in a close frame on the wire (§7.4): 1000-1003,
/// 1007-1011 and the application and private ranges 3000-4999.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// The outcome of one [`MessageReader::read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// Bytes of the input taken; the caller passes the rest to the next `read`.
    pub consumed: usize,
    /// The message completed by those bytes. `None` only when the whole input was
    /// consumed without completing one.
    pub message: Option<Message>,
}

/// What the frame being read is for.
#[derive(Debug, Clone, Copy)]
struct FrameInProgress {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    /// Payload bytes still to come.
    remaining: u64,
    /// Payload bytes already read (the masking offset).
    offset: usize,
}

/// Reads messages from the bytes of one connection, sans-IO.
///
/// # Use
///
/// Hand every received chunk to [`read`](Self::read) (or iterate
/// [`messages`](Self::messages)), in order. `read` stops after each completed
/// message and says how many bytes it took; call it again with the rest. A frame
/// or message split across any number of reads gives the same messages as one read.
///
/// Control frames (ping, pong, close) come out as soon as they are complete, even
/// between the fragments of a data message (§5.4). The reader does not answer
/// pings nor stop at a close: that is its owner's job.
///
/// # Errors
///
/// Any violation of §5 is a [`WsError`]; the connection must then be closed with
/// [`WsError::close_code`]. The error is sticky: every later `read` returns it again.
///
/// # Memory
///
/// The reader copies the input it takes into at most a partial frame header
/// ([`MAX_HEADER_LEN`] bytes), the message being assembled (at most
/// `max_message` bytes: a frame that would take it above is rejected from its
/// header, before its payload is read) and one control payload (at most
/// [`MAX_CONTROL_PAYLOAD`] bytes). Bytes not yet taken stay with the caller.
#[derive(Debug, Clone)]
pub struct MessageReader {
    role: Role,
    max_message: usize,
    header: [u8; MAX_HEADER_LEN],
    header_len: usize,
    frame: Option<FrameInProgress>,
    /// The opcode (text or binary) of the data message in progress.
    message: Option<OpCode>,
    data: Vec<u8>,
    control: Vec<u8>,
    error: Option<WsError>,
}

impl MessageReader {
    /// A reader for the given end of a connection, with a cap on each data
    /// message (the sum of its fragments).
    pub fn new(role: Role, max_message: usize) -> MessageReader {
        MessageReader {
            role,
            max_message,
            header: [0; MAX_HEADER_LEN],
            header_len: 0,
            frame: None,
            message: None,
            data: Vec::new(),
            control: Vec::new(),
            error: None,
        }
    }

    /// Bytes the reader currently holds (partial header, message and control payload).
    pub fn buffered(&self) -> usize {
        self.header_len + self.data.len() + self.control.len()
    }

    /// Take bytes from the front of `input` until a message completes or the input
    /// runs out. See the type's documentation.
    pub fn read(&mut self, input: &[u8]) -> Result<Read, WsError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        let result = self.read_inner(input);
        if let Err(error) = &result {
            self.error = Some(error.clone());
        }
        result
    }

    /// The messages in `input`, each an item, then an error if the input holds
    /// one (after which the iterator ends). A message incomplete at the end of
    /// `input` is kept for the next call.
    pub fn messages<'r, 'a>(&'r mut self, input: &'a [u8]) -> Messages<'r, 'a> {
        Messages {
            reader: self,
            input,
            failed: false,
        }
    }

    fn read_inner(&mut self, input: &[u8]) -> Result<Read, WsError> {
        let mut at = 0;
        loop {
            let frame = match self.frame {
                Some(frame) => frame,
                None => {
                    if at == input.len() {
                        return Ok(Read {
                            consumed: at,
                            message: None,
                        });
                    }
                    let rest = &input[at..];
                    let held = self.header_len;
                    let take = (MAX_HEADER_LEN - held).min(rest.len());
                    self.header[held..held + take].copy_from_slice(&rest[..take]);
                    match parse_frame_header(&self.header[..held + take])? {
                        Parsed::Incomplete => {
                            // A header is at most MAX_HEADER_LEN bytes, so an
                            // incomplete one took the whole input.
                            self.header_len += take;
                            at += take;
                            continue;
                        }
                        Parsed::Done { value, consumed } => {
                            at += consumed - held;
                            self.header_len = 0;
                            self.start_frame(value)?
                        }
                    }
                }
            };
            let rest = &input[at..];
            let take = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(rest.len());
            let target = if frame.opcode.is_control() {
                &mut self.control
            } else {
                &mut self.data
            };
            let start = target.len();
            extend_capped(target, &rest[..take], self.max_message);
            if let Some(key) = frame.mask {
                apply_mask(key, frame.offset, &mut target[start..]);
            }
            at += take;
            let frame = FrameInProgress {
                remaining: frame.remaining - take as u64,
                offset: frame.offset + take,
                ..frame
            };
            if frame.remaining > 0 {
                self.frame = Some(frame);
                return Ok(Read {
                    consumed: at,
                    message: None,
                });
            }
            self.frame = None;
            if let Some(message) = self.finish_frame(frame)? {
                return Ok(Read {
                    consumed: at,
                    message: Some(message),
                });
            }
        }
    }

    /// Check a new frame's header against the role and the message in progress.
    fn start_frame(&mut self, header: super::FrameHeader) -> Result<FrameInProgress, WsError> {
        if header.rsv != 0 {
            return Err(WsError::ReservedBits { rsv: header.rsv });
        }
        match (self.role, header.mask) {
            (Role::Server, None) => return Err(WsError::UnmaskedFrame),
            (Role::Client, Some(_)) => return Err(WsError::MaskedFrame),
            _ => {}
        }
        if header.opcode.is_control() {
            if !header.fin {
                return Err(WsError::FragmentedControl);
            }
            if header.len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(WsError::ControlTooLong { len: header.len });
            }
            self.control.clear();
        } else {
            match (header.opcode, self.message) {
                (OpCode::Continuation, None) => return Err(WsError::UnexpectedContinuation),
                (OpCode::Continuation, Some(_)) => {}
                (_, Some(_)) => return Err(WsError::MessageInProgress),
                (opcode, None) => self.message = Some(opcode),
            }
            let total = (self.data.len() as u64).saturating_add(header.len);
            if total > self.max_message as u64 {
                return Err(WsError::TooBig {
                    max: self.max_message,
                });
            }
        }
        Ok(FrameInProgress {
            opcode: header.opcode,
            fin: header.fin,
            mask: header.mask,
            remaining: header.len,
            offset: 0,
        })
    }

    /// The message a completed frame ends, if any.
    fn finish_frame(&mut self, frame: FrameInProgress) -> Result<Option<Message>, WsError> {
        let message = match frame.opcode {
            OpCode::Ping => Message::Ping(std::mem::take(&mut self.control)),
            OpCode::Pong => Message::Pong(std::mem::take(&mut self.control)),
            OpCode::Close => {
                Message::Close(parse_close_payload(&std::mem::take(&mut self.control))?)
            }
            _ if !frame.fin => return Ok(None),
            _ => {
                let data = std::mem::take(&mut self.data);
                match self.message.take() {
                    Some(OpCode::Text) => {
                        Message::Text(String::from_utf8(data).map_err(|_| WsError::InvalidUtf8)?)
                    }
                    _ => Message::Binary(data),
                }
            }
        };
        Ok(Some(message))
    }
}

/// Append `bytes` to `buf`, growing its capacity geometrically but never above
/// `cap` (unless `bytes` alone needs more; the caller checked the total).
fn extend_capped(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let needed = buf.len() + bytes.len();
    if needed > buf.capacity() {
        let target = (buf.capacity() * 2).min(cap).max(needed);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

/// The payload of a close frame (§5.5.1): empty, or a valid code and a UTF-8 reason.
fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, WsError> {
    match payload {
        [] => Ok(None),
        [_] => Err(WsError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::InvalidCloseCode { code });
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.to_owned(),
            }))
        }
    }
}

/// The messages in one input, from [`MessageReader::messages`].
#[derive(Debug)]
pub struct Messages<'r, 'a> {
    reader: &'r mut MessageReader,
    input: &'a [u8],
    failed: bool,
}

impl Iterator for Messages<'_, '_> {
    type Item = Result<Message, WsError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.reader.read(self.input) {
            Ok(Read { consumed, message }) => {
                self.input = &self.input[consumed..];
                message.map(Ok)
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

/// Append `message` to `out` as one frame, masked with `mask` if given (a client
/// must mask every frame with a fresh key, a server none; §5.3).
///
/// Control payloads are cut to fit a control frame: a ping or pong to 125 bytes,
/// a close reason as in [`encode_close`].
pub fn encode_message(message: &Message, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    match message {
        Message::Text(text) => encode_frame(OpCode::Text, true, mask, text.as_bytes(), out),
        Message::Binary(data) => encode_frame(OpCode::Binary, true, mask, data, out),
        Message::Ping(data) => encode_frame(OpCode::Ping, true, mask, control(data), out),
        Message::Pong(data) => encode_frame(OpCode::Pong, true, mask, control(data), out),
        Message::Close(None) => encode_frame(OpCode::Close, true, mask, &[], out),
        Message::Close(Some(frame)) => encode_close(frame.code, &frame.reason, mask, out),
    }
}

fn control(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)]
}

/// Append a close frame with `code` and `reason` to `out`, masked with `mask` if
/// given. The reason is cut at a character boundary to at most 123 bytes, so the
/// frame stays a valid control frame (§5.5). `code` is written as given; see
/// [`is_valid_close_code`].
pub fn encode_close(code: u16, reason: &str, mask: Option<[u8; 4]>, out: &mut Vec<u8>) {
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + cut].copy_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(OpCode::Close, true, mask, &payload[..2 + cut], out);
}

#[cfg(test)]
mod tests;
