//! A puppet machine for testing executors: every command is something to do (an
//! action to emit, a deadline to be woken at), every input it gets is recorded
//! as an event.
//!
//! The event type is the test's ([`Record`] says how an input is recorded), so
//! a suite can keep the shape its assertions compare against; [`Seen`] is the
//! one the runtimes' driver suites share.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ferry_core::io::{Action, ConnId, IdAllocator, Input, ListenerId, Machine, SocketId};

/// How a test records what its puppet was told.
pub trait Record: Sized {
    /// What `input` is recorded as; `None` records nothing.
    fn input(input: Input<'_>) -> Option<Self>;
    /// Recorded when the puppet's wake-up deadline passes.
    fn woken() -> Self;
}

/// What a puppet saw: the ids and payloads of each input, owned.
#[allow(missing_docs)] // each variant is the `Input` of that name
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Listening(ListenerId, SocketAddr),
    ListenFailed(ListenerId),
    Accepted(ListenerId, ConnId),
    Connected(ConnId),
    ConnectFailed(ConnId),
    Received(ConnId, Vec<u8>),
    ReadClosed(ConnId),
    Closed(ConnId),
    Flushed(ConnId, usize),
    UdpBound(SocketId, SocketAddr),
    Datagram(SocketId, SocketAddr, Vec<u8>),
    /// The wake-up deadline passed.
    Timeout,
    /// A ping, recorded for `Do::Mark(Seen::Pong(n))`: every earlier command ran.
    Pong(u32),
    /// Any other input (`UdpBindFailed`, `TunPacket`).
    Other,
}

impl Record for Seen {
    fn input(input: Input<'_>) -> Option<Self> {
        Some(match input {
            Input::Listening { listener, local } => Seen::Listening(listener, local),
            Input::ListenFailed { listener, .. } => Seen::ListenFailed(listener),
            Input::Accepted { listener, conn, .. } => Seen::Accepted(listener, conn),
            Input::Connected { conn, .. } => Seen::Connected(conn),
            Input::ConnectFailed { conn, .. } => Seen::ConnectFailed(conn),
            Input::Received { conn, data } => Seen::Received(conn, data.to_vec()),
            Input::ReadClosed { conn } => Seen::ReadClosed(conn),
            Input::Closed { conn } => Seen::Closed(conn),
            Input::Flushed { conn, bytes } => Seen::Flushed(conn, bytes),
            Input::UdpBound { socket, local } => Seen::UdpBound(socket, local),
            Input::Datagram { socket, from, data } => Seen::Datagram(socket, from, data.to_vec()),
            Input::UdpBindFailed { .. } | Input::TunPacket(_) => Seen::Other,
        })
    }

    fn woken() -> Self {
        Seen::Timeout
    }
}

/// What a puppet is told to do.
pub enum Do<E> {
    /// Emit this action.
    Act(Action),
    /// Send every byte received back: on the same connection, to the datagram's
    /// sender, or to the TUN device.
    Echo(bool),
    /// Be woken at this instant.
    WakeAt(Instant),
    /// Be woken this long after the command.
    WakeIn(Duration),
    /// Record this event as is (e.g. a marker that every earlier command ran).
    Mark(E),
}

/// Does what it is told and records every input it gets.
///
/// `HALF_CLOSE` is the machine's [`Machine::HALF_CLOSE`]: with `true` a peer's FIN
/// is recorded as `ReadClosed` and the connection stays writable (see
/// [`HalfClosePuppet`]).
pub struct Puppet<E, const HALF_CLOSE: bool = false> {
    ids: IdAllocator,
    echo: bool,
    wake: Option<Instant>,
    actions: VecDeque<Action>,
    events: VecDeque<E>,
}

/// A [`Puppet`] that handles half-closed connections ([`Machine::HALF_CLOSE`]).
pub type HalfClosePuppet<E> = Puppet<E, true>;

impl<E, const HALF_CLOSE: bool> Default for Puppet<E, HALF_CLOSE> {
    fn default() -> Self {
        Self {
            ids: IdAllocator::default(),
            echo: false,
            wake: None,
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }
}

impl<E, const HALF_CLOSE: bool> Puppet<E, HALF_CLOSE> {
    /// A puppet that echoes from the start if `echo` (see [`Do::Echo`]).
    pub fn new(echo: bool) -> Self {
        Self {
            echo,
            ..Self::default()
        }
    }

    /// The next core-side id (see [`IdAllocator`]).
    pub fn next_id(&mut self) -> u64 {
        self.ids.next_raw()
    }

    /// True if no action waits to be polled.
    pub fn is_idle(&self) -> bool {
        self.actions.is_empty()
    }
}

impl<E: Record, const HALF_CLOSE: bool> Machine for Puppet<E, HALF_CLOSE> {
    type Command = Do<E>;
    type Event = E;

    const HALF_CLOSE: bool = HALF_CLOSE;

    fn handle_input(&mut self, input: Input<'_>, _now: Instant) {
        if self.echo {
            match input {
                Input::Received { conn, data } => self.actions.push_back(Action::Send {
                    conn,
                    data: data.to_vec(),
                }),
                Input::Datagram { socket, from, data } => {
                    self.actions.push_back(Action::SendTo {
                        socket,
                        to: from,
                        data: data.to_vec(),
                    });
                }
                Input::TunPacket(packet) => {
                    self.actions.push_back(Action::WriteTun(packet.to_vec()))
                }
                _ => {}
            }
        }
        if let Some(event) = E::input(input) {
            self.events.push_back(event);
        }
    }

    fn handle_command(&mut self, command: Do<E>, now: Instant) {
        match command {
            Do::Act(action) => self.actions.push_back(action),
            Do::Echo(on) => self.echo = on,
            Do::WakeAt(at) => self.wake = Some(at),
            Do::WakeIn(after) => self.wake = Some(now + after),
            Do::Mark(event) => self.events.push_back(event),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.wake.is_some_and(|at| at <= now) {
            self.wake = None;
            self.events.push_back(E::woken());
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<E> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.wake
    }
}
