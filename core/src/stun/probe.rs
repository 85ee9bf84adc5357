//! A one-shot STUN probe: bind a UDP socket, ask each server for the socket's
//! mapped address (ST-13..ST-15), report, done. `ferry stun --probe SERVER`
//! runs it; the interop tests drive it against coturn.
//!
//! Asking two servers from the same socket also tells whether the NAT in front
//! of it maps endpoint-independently (both see the same address) or per
//! destination (a symmetric NAT, through which hole punching cannot work).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::client::{Config, Failure, Step, Transaction, TransactionIds};
use crate::codec::stun;
use crate::io::{Action, IdAllocator, Input, Machine, SocketId};

/// What the application asks of the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Bind at `bind` and ask every server in `servers`, all at once.
    Start {
        /// Local address to bind (`0.0.0.0:0` for any).
        bind: SocketAddr,
        /// STUN servers to ask.
        servers: Vec<SocketAddr>,
    },
}

/// What the probe reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The socket is bound.
    Bound(SocketAddr),
    /// The socket could not be bound; the probe is done.
    BindFailed(String),
    /// `server` saw the socket as `mapped`.
    Mapped {
        /// The server asked.
        server: SocketAddr,
        /// The address it saw.
        mapped: SocketAddr,
    },
    /// Asking `server` failed.
    Failed {
        /// The server asked.
        server: SocketAddr,
        /// Why.
        failure: Failure,
    },
    /// Every transaction is over and the socket closed.
    Done,
}

/// The probe machine.
#[derive(Debug)]
pub struct Probe {
    config: Config,
    ids: TransactionIds,
    alloc: IdAllocator,
    socket: Option<(SocketId, Option<SocketAddr>)>,
    servers: Vec<SocketAddr>,
    transactions: Vec<Transaction>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Probe {
    /// A probe with retransmission `config`, transaction ids from `seed`.
    pub fn new(config: Config, seed: [u8; 32]) -> Probe {
        Probe {
            config,
            ids: TransactionIds::new(seed),
            alloc: IdAllocator::default(),
            socket: None,
            servers: Vec::new(),
            transactions: Vec::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn finish_if_done(&mut self) {
        if self.transactions.is_empty()
            && let Some((socket, _)) = self.socket.take()
        {
            self.actions.push_back(Action::CloseUdp { socket });
            self.events.push_back(Event::Done);
        }
    }
}

impl Machine for Probe {
    type Command = Command;
    type Event = Event;

    fn handle_input(&mut self, input: Input<'_>, now: Instant) {
        let Some((socket, local)) = self.socket else {
            return;
        };
        match input {
            Input::UdpBound {
                socket: s,
                local: bound,
            } if s == socket && local.is_none() => {
                self.socket = Some((socket, Some(bound)));
                self.events.push_back(Event::Bound(bound));
                for server in std::mem::take(&mut self.servers) {
                    let id = self.ids.next_id();
                    let (tx, request) = Transaction::start(id, server, bound, self.config, now);
                    self.transactions.push(tx);
                    self.actions.push_back(Action::SendTo {
                        socket,
                        to: server,
                        data: request,
                    });
                }
                self.finish_if_done();
            }
            Input::UdpBindFailed { socket: s, error } if s == socket => {
                self.socket = None;
                self.events.push_back(Event::BindFailed(error.to_owned()));
                self.events.push_back(Event::Done);
            }
            Input::Datagram {
                socket: s, data, ..
            } if s == socket && local.is_some() => {
                let Ok(message) = stun::parse(data) else {
                    return;
                };
                if let Some(i) = self.transactions.iter().position(|tx| tx.matches(&message)) {
                    let tx = self.transactions.swap_remove(i);
                    let server = tx.server();
                    self.events.push_back(match tx.handle_response(&message) {
                        Some(Ok(mapped)) => Event::Mapped { server, mapped },
                        Some(Err(failure)) => Event::Failed { server, failure },
                        None => return,
                    });
                    self.finish_if_done();
                }
            }
            _ => {}
        }
    }

    fn handle_command(&mut self, command: Command, _now: Instant) {
        let Command::Start { bind, servers } = command;
        if self.socket.is_some() {
            return;
        }
        let socket = SocketId(self.alloc.next_raw());
        self.socket = Some((socket, None));
        self.servers = servers;
        self.actions
            .push_back(Action::BindUdp { socket, addr: bind });
    }

    fn handle_timeout(&mut self, now: Instant) {
        let Some((socket, Some(_))) = self.socket else {
            return;
        };
        let mut i = 0;
        while i < self.transactions.len() {
            let tx = &mut self.transactions[i];
            match tx.handle_timeout(now) {
                Some(Step::Send(data)) => {
                    let to = tx.server();
                    self.actions.push_back(Action::SendTo { socket, to, data });
                    i += 1;
                }
                Some(Step::Failed(failure)) => {
                    let server = tx.server();
                    self.transactions.swap_remove(i);
                    self.events.push_back(Event::Failed { server, failure });
                }
                None => i += 1,
            }
        }
        self.finish_if_done();
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.transactions.iter().map(Transaction::deadline).min()
    }
}
