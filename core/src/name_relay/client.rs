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
    /// A `Send` was not sent: its destination is not a valid name (NR-2).
    SendRefused {
        /// The destination asked for.
        dest: Vec<u8>,
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
    pub fn new(
        name: &[u8],
        relay: SocketAddr,
        mut config: ClientConfig,
    ) -> Result<Self, ClientError> {
        if !wire::is_valid_name(name) {
            return Err(ClientError::InvalidName);
        }
        config.keepalive_interval = config.keepalive_interval.min(super::server::MAX_TIMEOUT);
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
                if !wire::is_valid_name(&dest) {
                    self.events.push_back(ClientEvent::SendRefused { dest });
                    return;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(c: &mut Client) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    fn connected(name: &[u8]) -> (Client, Instant) {
        let now = crate::testing::test_epoch();
        let relay = "127.0.0.1:8080".parse().unwrap();
        let mut c = Client::new(name, relay, ClientConfig::default()).unwrap();
        assert_eq!(
            drain(&mut c),
            vec![Action::Connect {
                conn: c.conn(),
                addr: relay
            }]
        );
        c.handle_command(
            ClientCommand::Send {
                dest: b"b".to_vec(),
                data: b"early".to_vec(),
            },
            now,
        );
        assert!(
            drain(&mut c).is_empty(),
            "nothing is sent before the connection is up"
        );
        let local = "127.0.0.1:5000".parse().unwrap();
        c.handle_input(
            Input::Connected {
                conn: c.conn(),
                local,
            },
            now,
        );
        (c, now)
    }

    #[test]
    fn nr16_registers_then_sends_what_was_asked_early() {
        let (mut c, _) = connected(b"a");
        let conn = c.conn();
        assert_eq!(
            drain(&mut c),
            vec![Action::Send {
                conn,
                data: b"a|b|5|early".to_vec()
            }]
        );
        assert_eq!(c.poll_event(), Some(ClientEvent::Registered));
    }

    #[test]
    fn nr16_keepalive_after_silence() {
        let (mut c, now) = connected(b"a");
        drain(&mut c);
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, now + Duration::from_secs(10));
        c.handle_timeout(due - Duration::from_millis(1));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(due);
        assert_eq!(
            drain(&mut c),
            vec![Action::Send {
                conn: c.conn(),
                data: b"a|0|".to_vec()
            }]
        );
        assert_eq!(c.poll_timeout(), Some(due + Duration::from_secs(10)));
    }

    #[test]
    fn nr6_parses_deliveries_split_anywhere() {
        let (mut c, now) = connected(b"a");
        drain(&mut c);
        c.poll_event();
        let conn = c.conn();
        for byte in b"device_b|5|hellox|0|" {
            c.handle_input(
                Input::Received {
                    conn,
                    data: &[*byte],
                },
                now,
            );
        }
        assert_eq!(
            std::iter::from_fn(|| c.poll_event()).collect::<Vec<_>>(),
            vec![
                ClientEvent::Message {
                    from: b"device_b".to_vec(),
                    data: b"hello".to_vec()
                },
                ClientEvent::Message {
                    from: b"x".to_vec(),
                    data: vec![]
                },
            ]
        );
    }

    #[test]
    fn malformed_delivery_closes() {
        let (mut c, now) = connected(b"a");
        drain(&mut c);
        let conn = c.conn();
        c.handle_input(
            Input::Received {
                conn,
                data: b"b|zz|",
            },
            now,
        );
        assert_eq!(drain(&mut c), vec![Action::Close { conn }]);
        assert!(!c.is_open());
    }

    #[test]
    fn nr2_invalid_destinations_are_refused_not_sent() {
        let (mut c, now) = connected(b"a");
        drain(&mut c);
        c.poll_event();
        for dest in [&b""[..], b"x|y"] {
            c.handle_command(
                ClientCommand::Send {
                    dest: dest.to_vec(),
                    data: b"d".to_vec(),
                },
                now,
            );
            assert!(drain(&mut c).is_empty());
            assert_eq!(
                c.poll_event(),
                Some(ClientEvent::SendRefused {
                    dest: dest.to_vec()
                })
            );
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        let relay = "127.0.0.1:1".parse().unwrap();
        for name in [&b""[..], b"a|b", &[b'x'; 256]] {
            assert!(Client::new(name, relay, ClientConfig::default()).is_err());
        }
    }
}
