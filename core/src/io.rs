//! The one IO vocabulary every ferry machine speaks, and the [`Machine`] trait.
//!
//! A machine never touches a socket, a clock or a random number generator. It is
//! told what happened ([`Input`]), what the embedding application wants
//! ([`Machine::handle_command`]) and what time it is (`now`), and it answers with
//! plain data: [`Action`]s the runtime must carry out, events for the application,
//! and the earliest deadline at which it wants to be woken.
//!
//! Three executors drive this vocabulary: the mio daemon (`ferry-mio`), the
//! async-std library runtime (`ferry-async-std`) and the deterministic simulator
//! (`ferry-conformance`). A new protocol adds a machine, never a new executor.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

/// The bit that marks an id as allocated by the core rather than by the runtime.
///
/// Ids are plain integers with a split allocation (as in quinn): the runtime
/// allocates ids for what *it* produces (accepted connections, a listener it
/// adopted), always with this bit clear; a machine allocates ids for what it
/// *asks* to open (`Listen`, `Connect`, `BindUdp`), always with this bit set.
/// So the two sides never collide and neither has to ask the other.
pub const CORE_ID_BIT: u64 = 1 << 63;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// True if a machine allocated this id (see [`CORE_ID_BIT`]).
            pub fn is_core_allocated(self) -> bool {
                self.0 & CORE_ID_BIT != 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if self.is_core_allocated() {
                    write!(f, concat!($prefix, "#c{}"), self.0 & !CORE_ID_BIT)
                } else {
                    write!(f, concat!($prefix, "#{}"), self.0)
                }
            }
        }
    };
}

id_type!(
    /// A TCP connection (accepted or connected).
    ConnId,
    "conn"
);
id_type!(
    /// A TCP listening socket.
    ListenerId,
    "listener"
);
id_type!(
    /// A UDP socket.
    SocketId,
    "udp"
);

/// The most bytes a runtime may still deliver for a connection after `PauseRead`.
pub const MAX_READ_AHEAD: usize = 256 << 10;

/// Hands out core-side ids (with [`CORE_ID_BIT`] set), in order, deterministically.
#[derive(Debug, Default, Clone)]
pub struct IdAllocator {
    next: u64,
}

impl IdAllocator {
    /// The next raw id, with the core bit set.
    pub fn next_raw(&mut self) -> u64 {
        let id = self.next | CORE_ID_BIT;
        self.next += 1;
        id
    }
}

/// What happened in the world, as reported by the runtime.
///
/// Borrowed byte slices are only valid for the call: a machine copies what it keeps.
// Field names (`conn`, `listener`, `data`, ...) are the vocabulary itself; each
// variant's doc says what they carry.
#[allow(missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// An `Action::Listen` succeeded; `local` is the bound address (port 0 resolved).
    /// A runtime that adopts a listener the application bound itself reports it
    /// with this input too (with a runtime-allocated id), before any `Accepted` on it.
    Listening {
        listener: ListenerId,
        local: SocketAddr,
    },
    /// An `Action::Listen` failed, or a listener failed later (accept error):
    /// either way no further input comes for it.
    ListenFailed {
        listener: ListenerId,
        error: &'a str,
    },
    /// A connection arrived on `listener`; the runtime chose `conn`.
    Accepted {
        listener: ListenerId,
        conn: ConnId,
        peer: SocketAddr,
    },
    /// An `Action::Connect` succeeded.
    Connected { conn: ConnId, local: SocketAddr },
    /// An `Action::Connect` failed; no further input comes for `conn`.
    ConnectFailed { conn: ConnId, error: &'a str },
    /// Bytes read from `conn`, in order.
    Received { conn: ConnId, data: &'a [u8] },
    /// The peer half-closed `conn` (it sent FIN): no more bytes will arrive, but
    /// `conn` may still be written. Only machines with [`Machine::HALF_CLOSE`] get
    /// this; for the others a FIN is `Closed`. After it, `conn` lives until the
    /// machine closes it, or a write fails (`Closed`).
    ReadClosed { conn: ConnId },
    /// The peer closed `conn` or it failed (for machines without
    /// [`Machine::HALF_CLOSE`], a half-close counts); no further input comes for it.
    Closed { conn: ConnId },
    /// `bytes` more bytes of earlier `Action::Send`s on `conn` reached the socket.
    ///
    /// The sum of all `Flushed.bytes` for a connection never exceeds the sum of
    /// its `Send` lengths. Machines use it to bound what they queue (back-pressure).
    Flushed { conn: ConnId, bytes: usize },
    /// An `Action::BindUdp` succeeded.
    UdpBound { socket: SocketId, local: SocketAddr },
    /// An `Action::BindUdp` failed.
    UdpBindFailed { socket: SocketId, error: &'a str },
    /// A datagram arrived on `socket`.
    Datagram {
        socket: SocketId,
        from: SocketAddr,
        data: &'a [u8],
    },
    /// An IP packet read from the TUN device.
    TunPacket(&'a [u8]),
}

/// An [`Input`] that owns its data, for a runtime that reports an input later
/// than it learns of it (queued, or sent over a channel).
#[allow(missing_docs)] // as for `Input`: each variant is the `Input` of that name
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedInput {
    Listening {
        listener: ListenerId,
        local: SocketAddr,
    },
    ListenFailed {
        listener: ListenerId,
        error: String,
    },
    Accepted {
        listener: ListenerId,
        conn: ConnId,
        peer: SocketAddr,
    },
    Connected {
        conn: ConnId,
        local: SocketAddr,
    },
    ConnectFailed {
        conn: ConnId,
        error: String,
    },
    Received {
        conn: ConnId,
        data: Vec<u8>,
    },
    ReadClosed {
        conn: ConnId,
    },
    Closed {
        conn: ConnId,
    },
    Flushed {
        conn: ConnId,
        bytes: usize,
    },
    UdpBound {
        socket: SocketId,
        local: SocketAddr,
    },
    UdpBindFailed {
        socket: SocketId,
        error: String,
    },
    Datagram {
        socket: SocketId,
        from: SocketAddr,
        data: Vec<u8>,
    },
    TunPacket(Vec<u8>),
}

impl OwnedInput {
    /// The input borrowing this one's data, to hand to [`Machine::handle_input`].
    pub fn as_input(&self) -> Input<'_> {
        match self {
            OwnedInput::Listening { listener, local } => Input::Listening {
                listener: *listener,
                local: *local,
            },
            OwnedInput::ListenFailed { listener, error } => Input::ListenFailed {
                listener: *listener,
                error,
            },
            OwnedInput::Accepted {
                listener,
                conn,
                peer,
            } => Input::Accepted {
                listener: *listener,
                conn: *conn,
                peer: *peer,
            },
            OwnedInput::Connected { conn, local } => Input::Connected {
                conn: *conn,
                local: *local,
            },
            OwnedInput::ConnectFailed { conn, error } => {
                Input::ConnectFailed { conn: *conn, error }
            }
            OwnedInput::Received { conn, data } => Input::Received { conn: *conn, data },
            OwnedInput::ReadClosed { conn } => Input::ReadClosed { conn: *conn },
            OwnedInput::Closed { conn } => Input::Closed { conn: *conn },
            OwnedInput::Flushed { conn, bytes } => Input::Flushed {
                conn: *conn,
                bytes: *bytes,
            },
            OwnedInput::UdpBound { socket, local } => Input::UdpBound {
                socket: *socket,
                local: *local,
            },
            OwnedInput::UdpBindFailed { socket, error } => Input::UdpBindFailed {
                socket: *socket,
                error,
            },
            OwnedInput::Datagram { socket, from, data } => Input::Datagram {
                socket: *socket,
                from: *from,
                data,
            },
            OwnedInput::TunPacket(packet) => Input::TunPacket(packet),
        }
    }
}

impl From<Input<'_>> for OwnedInput {
    fn from(input: Input<'_>) -> Self {
        match input {
            Input::Listening { listener, local } => OwnedInput::Listening { listener, local },
            Input::ListenFailed { listener, error } => OwnedInput::ListenFailed {
                listener,
                error: error.to_owned(),
            },
            Input::Accepted {
                listener,
                conn,
                peer,
            } => OwnedInput::Accepted {
                listener,
                conn,
                peer,
            },
            Input::Connected { conn, local } => OwnedInput::Connected { conn, local },
            Input::ConnectFailed { conn, error } => OwnedInput::ConnectFailed {
                conn,
                error: error.to_owned(),
            },
            Input::Received { conn, data } => OwnedInput::Received {
                conn,
                data: data.to_vec(),
            },
            Input::ReadClosed { conn } => OwnedInput::ReadClosed { conn },
            Input::Closed { conn } => OwnedInput::Closed { conn },
            Input::Flushed { conn, bytes } => OwnedInput::Flushed { conn, bytes },
            Input::UdpBound { socket, local } => OwnedInput::UdpBound { socket, local },
            Input::UdpBindFailed { socket, error } => OwnedInput::UdpBindFailed {
                socket,
                error: error.to_owned(),
            },
            Input::Datagram { socket, from, data } => OwnedInput::Datagram {
                socket,
                from,
                data: data.to_vec(),
            },
            Input::TunPacket(packet) => OwnedInput::TunPacket(packet.to_vec()),
        }
    }
}

/// What a machine asks the runtime to do. Plain data; the runtime obeys and reports.
#[allow(missing_docs)] // as for `Input`
#[derive(Clone, PartialEq, Eq)]
pub enum Action {
    /// Bind a TCP listener; answer with `Listening` or `ListenFailed`.
    Listen {
        listener: ListenerId,
        addr: SocketAddr,
    },
    /// Stop accepting on `listener` and drop it. No further input for it.
    CloseListener { listener: ListenerId },
    /// Open a TCP connection; answer with `Connected` or `ConnectFailed`.
    Connect { conn: ConnId, addr: SocketAddr },
    /// Write `data` to `conn`, in order after every earlier `Send` to it.
    ///
    /// The runtime accepts every `Send` (it queues what the socket does not take
    /// at once) and reports progress with `Flushed`; bounding the queue is the
    /// machine's job, not the runtime's.
    Send { conn: ConnId, data: Vec<u8> },
    /// Close `conn`. The runtime writes what is still queued for it within a short
    /// bounded linger (at most a few seconds; it may be zero), then closes. No
    /// further input comes for `conn`.
    Close { conn: ConnId },
    /// Half-close `conn`: once every earlier `Send` is written, shut down its write
    /// direction (the peer reads end-of-stream). Reading goes on; the machine still
    /// ends `conn` with `Close`. A `Send` after `Shutdown` is a machine bug: the
    /// runtime drops it. Closing a socket whose peer already left is not an error
    /// the machine hears about beyond the usual `Closed`.
    Shutdown { conn: ConnId },
    /// Stop reading from `conn` until `ResumeRead`. A runtime that reads ahead may
    /// still deliver up to [`MAX_READ_AHEAD`] bytes it had already read as
    /// `Received` after this action; the machine buffers them.
    PauseRead { conn: ConnId },
    /// Read from `conn` again.
    ResumeRead { conn: ConnId },
    /// Splice two TCP streams in both directions; the machine never sees those
    /// bytes again, and gets no `Flushed` for them. Bytes the machine queued
    /// before the `Pipe` are written first. The runtime bounds what it holds per
    /// direction by pausing the faster side.
    ///
    /// Half-close is carried through: when one side reads end-of-stream (FIN), the
    /// runtime writes everything it read from that side to the other one and then
    /// shuts down the other side's write direction; the opposite direction goes on.
    /// The pipe ends when both directions have ended this way, or at once when
    /// either side fails (reset, write error). Then the runtime closes both and
    /// reports `Closed` for each one the machine did not close itself. Bytes still
    /// queued for a side when the pipe ends are written within a bounded linger
    /// (its length is up to the runtime) before that side closes.
    Pipe { a: ConnId, b: ConnId },
    /// Bind a UDP socket; answer with `UdpBound` or `UdpBindFailed`.
    BindUdp { socket: SocketId, addr: SocketAddr },
    /// Close a UDP socket. No further input for it.
    CloseUdp { socket: SocketId },
    /// Send one datagram.
    SendTo {
        socket: SocketId,
        to: SocketAddr,
        data: Vec<u8>,
    },
    /// Write one IP packet to the TUN device.
    WriteTun(Vec<u8>),
}

impl fmt::Debug for Action {
    // Payloads are shown by length only: logs of a relay must not dump user data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Listen { listener, addr } => write!(f, "Listen({listener}, {addr})"),
            Action::CloseListener { listener } => write!(f, "CloseListener({listener})"),
            Action::Connect { conn, addr } => write!(f, "Connect({conn}, {addr})"),
            Action::Send { conn, data } => write!(f, "Send({conn}, {} bytes)", data.len()),
            Action::Close { conn } => write!(f, "Close({conn})"),
            Action::Shutdown { conn } => write!(f, "Shutdown({conn})"),
            Action::PauseRead { conn } => write!(f, "PauseRead({conn})"),
            Action::ResumeRead { conn } => write!(f, "ResumeRead({conn})"),
            Action::Pipe { a, b } => write!(f, "Pipe({a}, {b})"),
            Action::BindUdp { socket, addr } => write!(f, "BindUdp({socket}, {addr})"),
            Action::CloseUdp { socket } => write!(f, "CloseUdp({socket})"),
            Action::SendTo { socket, to, data } => {
                write!(f, "SendTo({socket}, {to}, {} bytes)", data.len())
            }
            Action::WriteTun(data) => write!(f, "WriteTun({} bytes)", data.len()),
        }
    }
}

/// A protocol machine: event in, action out.
///
/// # Call order
///
/// The driver (a runtime or the simulator) owns the machine and calls it from one
/// thread. After **every** `handle_*` call it drains [`poll_action`](Self::poll_action)
/// and [`poll_event`](Self::poll_event) until both return `None`, executes the
/// actions in order, and then asks [`poll_timeout`](Self::poll_timeout) for the next
/// deadline. When that deadline passes it calls [`handle_timeout`](Self::handle_timeout)
/// (calling it early is harmless: a machine acts only on deadlines `<= now`).
///
/// # Time and randomness
///
/// Every mutating call carries `now`; `now` never goes backwards across calls.
/// Machines that need randomness take a seed in their constructor and use a
/// seeded generator, so the same seed and inputs give the same actions, byte for byte.
///
/// # Ids
///
/// The runtime allocates ids for what it accepts; the machine allocates ids (with
/// [`CORE_ID_BIT`]) for what it asks to open. Inputs for unknown ids are ignored.
///
/// # Back-pressure
///
/// The runtime queues every `Send` and reports `Flushed` as bytes leave; the machine
/// bounds each queue by answering a full one with `PauseRead` on the connections that
/// feed it (or with an explicit close), never with silent loss or unbounded growth.
pub trait Machine {
    /// What the embedding application asks of the machine.
    type Command;
    /// What the machine tells the embedding application.
    type Event;

    /// Whether this machine handles half-closed connections: if true, a peer's FIN
    /// is reported as [`Input::ReadClosed`] and the connection stays writable; if
    /// false (the default) it is reported as [`Input::Closed`] and the runtime
    /// closes the connection.
    const HALF_CLOSE: bool = false;

    /// Something happened on a socket the machine owns.
    fn handle_input(&mut self, input: Input<'_>, now: Instant);
    /// The application asks for something.
    fn handle_command(&mut self, command: Self::Command, now: Instant);
    /// Time passed; act on every deadline `<= now`.
    fn handle_timeout(&mut self, now: Instant);
    /// The next action to execute, in order. Drain to `None` after every `handle_*`.
    fn poll_action(&mut self) -> Option<Action>;
    /// The next event for the application. Drain to `None` after every `handle_*`.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// The earliest deadline at which `handle_timeout` must be called, if any.
    fn poll_timeout(&self) -> Option<Instant>;
}
