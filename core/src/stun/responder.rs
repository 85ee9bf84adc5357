//! A stateless STUN Binding responder (`spec/stun.md` ST-10..ST-12).
//!
//! Every Binding request gets its source address back (XOR-MAPPED-ADDRESS and
//! MAPPED-ADDRESS), SOFTWARE `ferry/<version>` and a FINGERPRINT; requests with
//! comprehension-required attributes it does not understand get 420, other
//! methods 400; everything else is ignored. Nothing is kept per request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::codec::stun::{self, Attribute, Class, Message, kind};
use crate::io::{Action, IdAllocator, Input, Machine, SocketId};

/// SOFTWARE in every answer.
pub const SOFTWARE: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// What the application asks of the responder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Bind a UDP socket and answer on it.
    Listen(SocketAddr),
    /// Close every socket.
    Shutdown,
}

/// What the responder tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A socket is bound.
    Listening {
        /// The socket.
        socket: SocketId,
        /// Its address.
        local: SocketAddr,
    },
    /// A socket could not be bound.
    ListenFailed {
        /// The socket.
        socket: SocketId,
        /// Why.
        error: String,
    },
}

/// Counters, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Binding success responses sent (ST-10).
    pub answered: u64,
    /// Error responses sent (ST-11).
    pub refused: u64,
    /// Datagrams ignored (ST-12).
    pub ignored: u64,
}

/// The responder machine.
#[derive(Debug, Default)]
pub struct Responder {
    ids: IdAllocator,
    sockets: Vec<SocketId>,
    stats: Stats,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Responder {
    /// A responder with no socket yet: send [`Command::Listen`].
    pub fn new() -> Responder {
        Responder::default()
    }

    /// What it did so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The answer to one datagram, if any (ST-10..ST-12).
    pub fn answer(datagram: &[u8], from: SocketAddr) -> Option<Message> {
        let request = stun::parse(datagram).ok()?;
        if request.class != Class::Request {
            return None;
        }
        let id = request.transaction_id;
        let mut unknown: Vec<u16> = request
            .unknown_comprehension_required()
            .into_iter()
            .filter(|k| {
                ![
                    kind::USERNAME,
                    kind::MESSAGE_INTEGRITY,
                    kind::MESSAGE_INTEGRITY_SHA256,
                ]
                .contains(k)
            })
            .collect();
        // One address only: a request to answer from another is not understood.
        let wants_change = request.attributes.iter().any(|a| {
            matches!(a, Attribute::ChangeRequest { change_ip, change_port } if *change_ip || *change_port)
        });
        if wants_change && !unknown.contains(&kind::CHANGE_REQUEST) {
            unknown.push(kind::CHANGE_REQUEST);
        }
        let mut answer = if !request.is_binding_request() {
            Message::binding_error(id, 400, "Bad Request")
        } else if !unknown.is_empty() {
            let mut m = Message::binding_error(id, 420, "Unknown Attribute");
            m.attributes.push(Attribute::UnknownAttributes(unknown));
            m
        } else {
            return Some(Message::binding_success(id, from, Some(SOFTWARE)));
        };
        answer.method = request.method;
        answer
            .attributes
            .push(Attribute::Software(SOFTWARE.to_owned()));
        Some(answer)
    }
}

impl Machine for Responder {
    type Command = Command;
    type Event = Event;

    fn handle_input(&mut self, input: Input<'_>, _now: Instant) {
        match input {
            Input::UdpBound { socket, local } => {
                self.sockets.push(socket);
                self.events.push_back(Event::Listening { socket, local });
            }
            Input::UdpBindFailed { socket, error } => {
                self.sockets.retain(|s| *s != socket);
                self.events.push_back(Event::ListenFailed {
                    socket,
                    error: error.to_owned(),
                });
            }
            Input::Datagram { socket, from, data } => {
                let Some(answer) = Responder::answer(data, from) else {
                    self.stats.ignored += 1;
                    return;
                };
                let mut out = Vec::new();
                if stun::encode_with_fingerprint(&answer, &mut out).is_err() {
                    self.stats.ignored += 1;
                    return;
                }
                if answer.class == Class::SuccessResponse {
                    self.stats.answered += 1;
                } else {
                    self.stats.refused += 1;
                }
                self.actions.push_back(Action::SendTo {
                    socket,
                    to: from,
                    data: out,
                });
            }
            // UDP only.
            Input::Listening { .. }
            | Input::ListenFailed { .. }
            | Input::Accepted { .. }
            | Input::Connected { .. }
            | Input::ConnectFailed { .. }
            | Input::Received { .. }
            | Input::ReadClosed { .. }
            | Input::Closed { .. }
            | Input::Flushed { .. }
            | Input::TunPacket(_) => {}
        }
    }

    fn handle_command(&mut self, command: Command, _now: Instant) {
        match command {
            Command::Listen(addr) => {
                let socket = SocketId(self.ids.next_raw());
                self.actions.push_back(Action::BindUdp { socket, addr });
            }
            Command::Shutdown => {
                for socket in std::mem::take(&mut self.sockets) {
                    self.actions.push_back(Action::CloseUdp { socket });
                }
            }
        }
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Harness;

    const FROM: &str = "198.51.100.7:40000";

    fn ask(request: &Message) -> Option<Message> {
        let mut h = Harness::with_machine(Responder::new());
        h.command(Command::Listen("127.0.0.1:0".parse().unwrap()));
        let socket = SocketId(crate::io::CORE_ID_BIT);
        h.input(Input::UdpBound {
            socket,
            local: "127.0.0.1:3478".parse().unwrap(),
        });
        let mut bytes = Vec::new();
        stun::encode(request, &mut bytes).unwrap();
        let actions = h.input(Input::Datagram {
            socket,
            from: FROM.parse().unwrap(),
            data: &bytes,
        });
        match &actions[..] {
            [] => None,
            [Action::SendTo { to, data, .. }] => {
                assert_eq!(*to, FROM.parse().unwrap());
                let answer = stun::parse(data).expect("a valid answer");
                assert!(answer.fingerprint().is_some(), "ST-10: FINGERPRINT");
                assert_eq!(answer.software(), Some(SOFTWARE));
                Some(answer)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn st10_a_binding_request_gets_its_source_address() {
        let id = [7; 12];
        let answer = ask(&Message::binding_request(id)).unwrap();
        assert_eq!(answer.class, Class::SuccessResponse);
        assert_eq!(answer.transaction_id, id);
        assert_eq!(answer.mapped_address(), Some(FROM.parse().unwrap()));
        assert!(
            answer
                .attributes
                .contains(&Attribute::MappedAddress(FROM.parse().unwrap()))
        );
    }

    #[test]
    fn st11_unknown_required_attributes_get_420_listing_them() {
        let mut request = Message::binding_request([1; 12]);
        request.attributes.push(Attribute::Unknown {
            kind: 0x0042,
            value: vec![1, 2, 3, 4],
        });
        request.attributes.push(Attribute::Unknown {
            kind: kind::MESSAGE_INTEGRITY,
            value: vec![0; 20],
        });
        request.attributes.push(Attribute::Unknown {
            kind: 0x8042,
            value: vec![],
        });
        let answer = ask(&request).unwrap();
        assert_eq!(answer.class, Class::ErrorResponse);
        assert_eq!(answer.error_code().map(|(c, _)| c), Some(420));
        assert!(
            answer
                .attributes
                .contains(&Attribute::UnknownAttributes(vec![0x0042]))
        );
    }

    #[test]
    fn st11_change_request_to_move_is_420_and_other_methods_400() {
        let mut request = Message::binding_request([2; 12]);
        request.attributes.push(Attribute::ChangeRequest {
            change_ip: false,
            change_port: true,
        });
        let answer = ask(&request).unwrap();
        assert!(
            answer
                .attributes
                .contains(&Attribute::UnknownAttributes(vec![kind::CHANGE_REQUEST]))
        );
        let mut still = Message::binding_request([3; 12]);
        still.attributes.push(Attribute::ChangeRequest {
            change_ip: false,
            change_port: false,
        });
        assert_eq!(ask(&still).unwrap().class, Class::SuccessResponse);
        let other = Message::new(Class::Request, stun::Method(0x003), [4; 12]);
        let answer = ask(&other).unwrap();
        assert_eq!(answer.error_code().map(|(c, _)| c), Some(400));
        assert_eq!(answer.method, stun::Method(0x003));
    }

    #[test]
    fn st12_everything_else_is_ignored() {
        let indication = Message::new(Class::Indication, stun::Method::BINDING, [5; 12]);
        assert_eq!(ask(&indication), None);
        let response = Message::binding_success([6; 12], FROM.parse().unwrap(), None);
        assert_eq!(ask(&response), None);
        assert_eq!(
            Responder::answer(b"helloRelay", FROM.parse().unwrap()),
            None
        );
    }
}
