//! A name relay client machine: connects, registers its name, frames what the
//! application sends, parses what the relay delivers, and keeps the connection
//! alive with `{own name}|0|` when it has sent nothing for a while (NR-10).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::wire::{self, Parsed, WireError};
use crate::io::{Action, ConnId, IdAllocator, Input, Machine};

/// Client tunables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Send a keep-alive after this long without sending. Must stay below the
    /// relay's idle timeout (30 s by default). Default 10 s.
    pub keepalive_interval: Duration,
    /// The largest frame accepted from the relay. Default 16 MiB.
    pub max_frame_len: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::from_secs(10),
            max_frame_len: 16 << 20,
        }
    }
}

/// Why a client cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The name is empty, too long or contains `|`.
    #[error("invalid name: must be 1 to 255 bytes without '|'")]
    InvalidName,
}

/// What the application asks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientCommand {
    /// Send `data` to the client named `dest`.
    Send {
        /// The destination name.
        dest: Vec<u8>,
        /// The payload.
        data: Vec<u8>,
    },
    /// Close the connection.
    Close,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Connected and the name sent.
    Registered,
    /// A frame from another client.
    Message {
        /// The sender's name.
        from: Vec<u8>,
        /// The payload.
        data: Vec<u8>,
    },
    /// The connection is gone.
    Closed {
        /// Why, in words.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    Closed,
}

/// The client machine. It asks to connect as soon as it is made.
pub struct Client {
    name: Vec<u8>,
    config: ClientConfig,
    conn: ConnId,
    state: State,
    input: Vec<u8>,
    /// Frames asked for before the connection was up.
    early: Vec<u8>,
    last_tx: Option<Instant>,
    actions: VecDeque<Action>,
    events: VecDeque<ClientEvent>,
}

impl Client {
    /// A client that will register as `name` at the relay at `relay`.
    pub fn new(name: &[u8], relay: SocketAddr, config: ClientConfig) -> Result<Self, ClientError> {
        if name.is_empty() || name.len() > wire::MAX_NAME_LEN || name.contains(&wire::SEPARATOR) {
            return Err(ClientError::InvalidName);
        }
        let conn = ConnId(IdAllocator::default().next_raw());
        let mut actions = VecDeque::new();
        actions.push_back(Action::Connect { conn, addr: relay });
        Ok(Self {
            name: name.to_vec(),
            config,
            conn,
            state: State::Connecting,
            input: Vec::new(),
            early: Vec::new(),
            last_tx: None,
            actions,
            events: VecDeque::new(),
        })
    }

    /// The connection id the client uses.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// True once connected and not closed.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    fn transmit(&mut self, data: Vec<u8>, now: Instant) {
        self.last_tx = Some(now);
        self.actions.push_back(Action::Send {
            conn: self.conn,
            data,
        });
    }

    fn closed(&mut self, reason: String) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.events.push_back(ClientEvent::Closed { reason });
        }
    }

    fn parse(&mut self) -> Result<(), WireError> {
        let mut at = 0;
        while let Parsed::Done { value, consumed } = wire::parse_frame_header(
            &self.input[at..],
            wire::MAX_NAME_LEN,
            self.config.max_frame_len,
        )? {
            let start = at + consumed;
            let Some(data) = self.input.get(start..start + value.len) else {
                break;
            };
            self.events.push_back(ClientEvent::Message {
                from: value.name.to_vec(),
                data: data.to_vec(),
            });
            at = start + value.len;
        }
        self.input.drain(..at);
        Ok(())
    }
}

impl Machine for Client {
    type Command = ClientCommand;
    type Event = ClientEvent;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        match input {
            Input::Connected { conn, .. } if conn == self.conn => {
                self.state = State::Open;
                let mut hello = Vec::with_capacity(self.name.len() + 1 + self.early.len());
                wire::encode_registration(&self.name, &mut hello);
                hello.append(&mut self.early);
                self.transmit(hello, now);
                self.events.push_back(ClientEvent::Registered);
            }
            Input::ConnectFailed { conn, error } if conn == self.conn => {
                self.closed(format!("connect failed: {error}"));
            }
            Input::Received { conn, data } if conn == self.conn => {
                self.input.extend_from_slice(data);
                if let Err(e) = self.parse() {
                    self.actions.push_back(Action::Close { conn });
                    self.closed(format!("malformed frame from relay: {e}"));
                }
            }
            Input::Closed { conn } if conn == self.conn => {
                self.closed("closed by relay".to_owned());
            }
            _ => {}
        }
    }

    fn handle_command(&mut self, command: ClientCommand, now: Instant) {
        match command {
            ClientCommand::Send { dest, data } => {
                let mut frame =
                    Vec::with_capacity(wire::frame_header_len(&dest, data.len()) + data.len());
                wire::encode_frame(&dest, &data, &mut frame);
                match self.state {
                    State::Connecting => self.early.extend_from_slice(&frame),
                    State::Open => self.transmit(frame, now),
                    State::Closed => {}
                }
            }
            ClientCommand::Close => {
                if self.state != State::Closed {
                    self.actions.push_back(Action::Close { conn: self.conn });
                    self.closed("closed by application".to_owned());
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|due| due <= now) {
            let mut keepalive = Vec::new();
            wire::encode_frame(&self.name, &[], &mut keepalive);
            self.transmit(keepalive, now);
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.state, self.last_tx) {
            (State::Open, Some(last)) => Some(last + self.config.keepalive_interval),
            _ => None,
        }
    }
}
