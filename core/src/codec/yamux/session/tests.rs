use std::collections::BTreeMap;

use quickcheck::{QuickCheck, TestResult};

use super::*;
use crate::codec::yamux::encode_header;
use crate::testing::test_epoch;

/// No keep-alive: most tests drive the clock by hand.
fn config() -> Config {
    Config {
        keepalive_interval: None,
        ..Config::default()
    }
}

/// A client and a server wired back to back in memory.
struct Pair {
    client: Session,
    server: Session,
    now: Instant,
}

impl Pair {
    fn new() -> Pair {
        Pair::with(config(), config())
    }

    fn with(client: Config, server: Config) -> Pair {
        let now = test_epoch();
        Pair {
            client: Session::new(Mode::Client, client, now),
            server: Session::new(Mode::Server, server, now),
            now,
        }
    }

    /// Client output -> server input.
    fn deliver_to_server(&mut self) -> Result<(), SessionError> {
        let bytes = self.client.take_output();
        self.server.receive(&bytes, self.now)
    }

    /// Server output -> client input.
    fn deliver_to_client(&mut self) -> Result<(), SessionError> {
        let bytes = self.server.take_output();
        self.client.receive(&bytes, self.now)
    }

    /// Move bytes both ways until neither side has output.
    fn pump(&mut self) {
        for _ in 0..100 {
            let a = self.client.take_output();
            let b = self.server.take_output();
            if a.is_empty() && b.is_empty() {
                return;
            }
            self.server.receive(&a, self.now).unwrap();
            self.client.receive(&b, self.now).unwrap();
        }
        panic!("the sessions never went quiet");
    }

    /// Client opens a stream and both sides see it established.
    fn open(&mut self) -> u32 {
        let id = self.client.open().unwrap();
        self.pump();
        assert_eq!(events(&mut self.server), vec![SessionEvent::Inbound(id)]);
        assert_eq!(
            events(&mut self.client),
            vec![SessionEvent::Established(id)]
        );
        id
    }
}

fn events(session: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

/// Every frame header in `bytes` (payloads skipped).
fn headers(mut bytes: &[u8]) -> Vec<Header> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match parse_header(bytes).unwrap() {
            Parsed::Done { value, consumed } => {
                let end = consumed + value.payload_len() as usize;
                bytes = &bytes[end..];
                out.push(value);
            }
            Parsed::Incomplete => panic!("trailing partial header"),
        }
    }
    out
}

fn frame(frame_type: FrameType, flags: Flags, stream_id: u32, length: u32) -> Vec<u8> {
    let mut out = Vec::new();
    encode_header(&Header::new(frame_type, flags, stream_id, length), &mut out);
    out
}

/// All stream data in `events`, concatenated per stream.
fn data_of(events: &[SessionEvent]) -> BTreeMap<u32, Vec<u8>> {
    let mut out: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for e in events {
        if let SessionEvent::Data { stream, data } = e {
            out.entry(*stream).or_default().extend_from_slice(data);
        }
    }
    out
}

fn is_protocol_error(r: Result<(), SessionError>) -> bool {
    matches!(r, Err(SessionError::Protocol(_)))
}

/// The session is dead and its last output is a GoAway (protocol error).
fn assert_protocol_go_away(session: &mut Session) {
    assert!(session.is_dead());
    assert_eq!(session.stream_count(), 0);
    let out = session.take_output();
    let last = headers(&out).pop().expect("a GoAway frame");
    assert_eq!(last.frame_type, FrameType::GoAway);
    assert_eq!(last.go_away_code(), Some(GoAwayCode::ProtocolError));
}

#[test]
fn open_sends_syn_in_a_window_update() {
    let mut p = Pair::new();
    assert_eq!(p.client.open(), Ok(1));
    assert_eq!(p.client.open(), Ok(3));
    assert_eq!(p.server.open(), Ok(2));
    assert_eq!(p.server.open(), Ok(4));
    assert_eq!(
        headers(&p.client.take_output()),
        vec![
            Header::new(FrameType::WindowUpdate, Flags::SYN, 1, 0),
            Header::new(FrameType::WindowUpdate, Flags::SYN, 3, 0),
        ]
    );
    p.server.take_output();
    assert_eq!(p.client.stream_count(), 2);
}

#[test]
fn bigger_receive_window_is_announced_and_usable() {
    let big = Config {
        receive_window: 1 << 20,
        ..config()
    };
    let mut p = Pair::with(config(), big.clone());
    let id = p.client.open().unwrap();
    p.deliver_to_server().unwrap();
    assert_eq!(
        headers(&p.server.take_output()),
        vec![Header::new(
            FrameType::WindowUpdate,
            Flags::ACK,
            id,
            (1 << 20) - INITIAL_WINDOW
        )]
    );
    // Redo the exchange for real and use the whole megabyte.
    let mut p = Pair::with(config(), big);
    let id = p.open();
    let payload = vec![7u8; 1 << 20];
    assert_eq!(p.client.send(id, &payload), Ok(1 << 20));
    p.pump();
    assert_eq!(data_of(&events(&mut p.server))[&id], payload);
}

#[test]
fn data_both_ways_then_fin_both_ways_closes() {
    let mut p = Pair::new();
    let id = p.open();
    assert_eq!(p.client.send(id, b"hello"), Ok(5));
    assert_eq!(p.server.send(id, b"world!"), Ok(6));
    p.pump();
    assert_eq!(
        events(&mut p.server),
        vec![SessionEvent::Data {
            stream: id,
            data: b"hello".to_vec()
        }]
    );
    assert_eq!(
        events(&mut p.client),
        vec![SessionEvent::Data {
            stream: id,
            data: b"world!".to_vec()
        }]
    );

    p.client.finish(id).unwrap();
    assert_eq!(p.client.finish(id), Err(StreamError::WriteClosed(id)));
    assert_eq!(p.client.send(id, b"x"), Err(StreamError::WriteClosed(id)));
    p.pump();
    assert_eq!(events(&mut p.server), vec![SessionEvent::Finished(id)]);
    // Half-closed: the server still writes.
    assert_eq!(p.server.send(id, b"more"), Ok(4));
    p.server.finish(id).unwrap();
    assert_eq!(events(&mut p.server), vec![SessionEvent::Closed(id)]);
    assert_eq!(p.server.stream_count(), 0);
    p.pump();
    assert_eq!(
        events(&mut p.client),
        vec![
            SessionEvent::Data {
                stream: id,
                data: b"more".to_vec()
            },
            SessionEvent::Finished(id),
            SessionEvent::Closed(id),
        ]
    );
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.client.send(id, b"x"), Err(StreamError::Unknown(id)));
    assert_eq!(p.client.finish(id), Err(StreamError::Unknown(id)));
}

#[test]
fn send_splits_into_max_frame_frames() {
    let small = Config {
        max_frame: 1000,
        ..config()
    };
    let mut p = Pair::with(small, config());
    let id = p.open();
    let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
    assert_eq!(p.client.send(id, &payload), Ok(2500));
    let out = p.client.take_output();
    let lens: Vec<u32> = headers(&out).iter().map(|h| h.length).collect();
    assert_eq!(lens, vec![1000, 1000, 500]);
    p.server.receive(&out, p.now).unwrap();
    assert_eq!(data_of(&events(&mut p.server))[&id], payload);
}

#[test]
fn reset_by_either_side() {
    let mut p = Pair::new();
    let a = p.open();
    let b = p.open();
    p.client.reset(a);
    p.client.reset(a); // unknown now: ignored
    assert_eq!(p.client.stream_count(), 1);
    assert_eq!(
        headers(&p.client.take_output()),
        vec![Header::new(FrameType::WindowUpdate, Flags::RST, a, 0)]
    );
    let mut p2 = Pair::new();
    let a2 = p2.open();
    p2.client.reset(a2);
    p2.pump();
    assert_eq!(events(&mut p2.server), vec![SessionEvent::Reset(a2)]);
    assert_eq!(p2.server.stream_count(), 0);
    assert!(events(&mut p2.client).is_empty());

    p.server.take_output();
    p.server.reset(b);
    p.pump();
    assert_eq!(events(&mut p.client), vec![SessionEvent::Reset(b)]);
    assert_eq!(p.client.send(b, b"x"), Err(StreamError::Unknown(b)));
}

#[test]
fn frames_for_unknown_streams_are_ignored() {
    let mut p = Pair::new();
    let id = p.open();
    // The client resets while the server's data is in flight.
    p.client.reset(id);
    p.client.take_output();
    p.server.send(id, b"in flight").unwrap();
    p.server.finish(id).unwrap();
    p.deliver_to_client().unwrap();
    assert!(events(&mut p.client).is_empty());
    // Unknown ids of any kind, with payload, window updates, FIN, RST.
    let mut raw = frame(FrameType::Data, Flags::NONE, 99, 3);
    raw.extend_from_slice(b"abc");
    raw.extend(frame(FrameType::WindowUpdate, Flags::FIN, 77, 5));
    raw.extend(frame(FrameType::Data, Flags::RST, 8, 0));
    raw.extend(frame(FrameType::Data, Flags::ACK, 5, 0));
    raw.extend(frame(FrameType::Ping, Flags::SYN, 0, 42));
    p.client.receive(&raw, p.now).unwrap();
    assert!(events(&mut p.client).is_empty());
    assert!(!p.client.is_dead());
    // The Ping after the skipped payload was parsed and answered.
    assert_eq!(
        headers(&p.client.take_output()),
        vec![Header::new(FrameType::Ping, Flags::ACK, 0, 42)]
    );
}

#[test]
fn window_exhaustion_and_writable_after_consumed() {
    let mut p = Pair::new();
    let id = p.open();
    let payload = vec![1u8; 300 * 1024];
    let window = INITIAL_WINDOW as usize;
    assert_eq!(p.client.send(id, &payload), Ok(window));
    assert_eq!(p.client.send(id, &payload[window..]), Ok(0));
    p.pump();
    let got = data_of(&events(&mut p.server));
    assert_eq!(got[&id].len(), window);
    // Credit goes back only once consumed, and only from half a window.
    assert!(p.server.take_output().is_empty());
    p.server.consumed(id, 100 * 1024);
    assert!(p.server.take_output().is_empty());
    p.server.consumed(id, 28 * 1024);
    let out = p.server.take_output();
    assert_eq!(
        headers(&out),
        vec![Header::new(
            FrameType::WindowUpdate,
            Flags::NONE,
            id,
            128 * 1024
        )]
    );
    p.client.receive(&out, p.now).unwrap();
    assert_eq!(events(&mut p.client), vec![SessionEvent::Writable(id)]);
    assert_eq!(
        p.client.send(id, &payload[window..]),
        Ok(300 * 1024 - window)
    );
    // Over-reporting consumption credits no more than was delivered.
    p.pump();
    events(&mut p.server);
    p.server.consumed(id, usize::MAX);
    let out = p.server.take_output();
    // 128 KiB of the first window and the 44 KiB sent after it.
    assert_eq!(
        headers(&out),
        vec![Header::new(
            FrameType::WindowUpdate,
            Flags::NONE,
            id,
            (128 + 44) * 1024
        )]
    );
    p.server.consumed(id, usize::MAX);
    assert!(p.server.take_output().is_empty());
}

#[test]
fn writable_when_a_full_send_emptied_the_window() {
    let mut p = Pair::new();
    let id = p.open();
    let window = INITIAL_WINDOW as usize;
    assert_eq!(p.client.send(id, &vec![0; window]), Ok(window));
    p.pump();
    events(&mut p.server);
    p.server.consumed(id, window);
    p.pump();
    assert_eq!(events(&mut p.client), vec![SessionEvent::Writable(id)]);
    // A send that fits leaves nothing to wake up for.
    assert_eq!(p.client.send(id, b"abc"), Ok(3));
    p.server.consumed(id, 3);
    p.pump();
    assert!(events(&mut p.client).is_empty());
}

#[test]
fn peer_exceeding_the_window_is_a_protocol_error() {
    let mut p = Pair::new();
    let id = p.open();
    let mut raw = frame(FrameType::Data, Flags::NONE, id, INITIAL_WINDOW + 1);
    raw.extend_from_slice(b"partial");
    assert!(is_protocol_error(p.server.receive(&raw, p.now)));
    assert_protocol_go_away(&mut p.server);
    // Dead: everything is a no-op, receive repeats the error.
    assert!(is_protocol_error(p.server.receive(b"more", p.now)));
    assert!(matches!(p.server.open(), Err(StreamError::CannotOpen(_))));
    assert_eq!(p.server.send(id, b"x"), Err(StreamError::Unknown(id)));
    assert!(p.server.poll_timeout().is_none());
    assert!(p.server.take_output().is_empty());

    // Within the window in two frames, then one byte too many.
    let mut p = Pair::new();
    let id = p.open();
    let mut raw = frame(FrameType::Data, Flags::NONE, id, INITIAL_WINDOW - 1);
    raw.extend(vec![0; INITIAL_WINDOW as usize - 1]);
    raw.extend(frame(FrameType::Data, Flags::NONE, id, 1));
    raw.push(1);
    p.server.receive(&raw, p.now).unwrap();
    assert!(is_protocol_error(
        p.server
            .receive(&frame(FrameType::Data, Flags::NONE, id, 1), p.now)
    ));
    assert_protocol_go_away(&mut p.server);
}

#[test]
fn syn_of_the_wrong_parity_is_a_protocol_error() {
    let mut p = Pair::new();
    let r = p
        .server
        .receive(&frame(FrameType::WindowUpdate, Flags::SYN, 2, 0), p.now);
    assert!(is_protocol_error(r));
    assert_protocol_go_away(&mut p.server);

    let mut p = Pair::new();
    let r = p
        .client
        .receive(&frame(FrameType::Data, Flags::SYN, 7, 0), p.now);
    assert!(is_protocol_error(r));
    assert_protocol_go_away(&mut p.client);
}

#[test]
fn duplicate_syn_is_a_protocol_error() {
    let mut p = Pair::new();
    let syn = frame(FrameType::WindowUpdate, Flags::SYN, 1, 0);
    p.server.receive(&syn, p.now).unwrap();
    assert_eq!(events(&mut p.server), vec![SessionEvent::Inbound(1)]);
    assert!(is_protocol_error(p.server.receive(&syn, p.now)));
    assert_protocol_go_away(&mut p.server);
}

#[test]
fn bad_headers_are_protocol_errors() {
    let cases = [
        {
            let mut f = frame(FrameType::Ping, Flags::SYN, 0, 0);
            f[0] = 1; // version
            f
        },
        {
            let mut f = frame(FrameType::Ping, Flags::SYN, 0, 0);
            f[1] = 9; // type
            f
        },
        frame(FrameType::Ping, Flags::SYN, 3, 0),
        frame(FrameType::Data, Flags::NONE, 0, 0),
        frame(FrameType::GoAway, Flags::NONE, 0, 7),
    ];
    for case in cases {
        let mut p = Pair::new();
        assert!(
            is_protocol_error(p.client.receive(&case, p.now)),
            "{case:?}"
        );
        assert_protocol_go_away(&mut p.client);
    }
}

#[test]
fn data_after_fin_is_a_protocol_error() {
    let mut p = Pair::new();
    let id = p.open();
    p.client.send(id, b"a").unwrap();
    p.client.finish(id).unwrap();
    p.pump();
    let mut raw = frame(FrameType::Data, Flags::NONE, id, 1);
    raw.push(b'z');
    assert!(is_protocol_error(p.server.receive(&raw, p.now)));
    assert_protocol_go_away(&mut p.server);
}

#[test]
fn syn_beyond_max_streams_is_refused_with_rst() {
    let one = Config {
        max_streams: 1,
        ..config()
    };
    let mut p = Pair::with(config(), one);
    let a = p.open();
    let b = p.client.open().unwrap();
    p.deliver_to_server().unwrap();
    assert!(events(&mut p.server).is_empty());
    assert_eq!(p.server.stream_count(), 1);
    let out = p.server.take_output();
    assert_eq!(
        headers(&out),
        vec![Header::new(FrameType::WindowUpdate, Flags::RST, b, 0)]
    );
    p.client.receive(&out, p.now).unwrap();
    assert_eq!(events(&mut p.client), vec![SessionEvent::Reset(b)]);
    // A refused SYN with a payload: the payload is skipped.
    let mut raw = frame(FrameType::Data, Flags::SYN, 5, 4);
    raw.extend_from_slice(b"skip");
    raw.extend(frame(FrameType::Data, Flags::NONE, a, 2));
    raw.extend_from_slice(b"ok");
    p.server.receive(&raw, p.now).unwrap();
    assert_eq!(
        events(&mut p.server),
        vec![SessionEvent::Data {
            stream: a,
            data: b"ok".to_vec()
        }]
    );
    // The limit also binds this side's opens.
    assert!(matches!(p.server.open(), Err(StreamError::CannotOpen(_))));
}

#[test]
fn ping_is_answered_and_keepalive_gets_pong() {
    let keepalive = Config {
        keepalive_interval: Some(Duration::from_secs(10)),
        keepalive_timeout: Duration::from_secs(5),
        ..config()
    };
    let mut p = Pair::with(keepalive, config());
    let t0 = p.now;
    assert_eq!(p.client.poll_timeout(), Some(t0 + Duration::from_secs(10)));
    assert_eq!(p.server.poll_timeout(), None);
    p.client
        .handle_timeout(t0 + Duration::from_secs(9))
        .unwrap();
    assert!(p.client.take_output().is_empty());
    let t1 = t0 + Duration::from_secs(10);
    p.client.handle_timeout(t1).unwrap();
    let out = p.client.take_output();
    let ping_header = headers(&out)[0];
    assert_eq!(ping_header.frame_type, FrameType::Ping);
    assert_eq!(ping_header.flags, Flags::SYN);
    assert_eq!(p.client.poll_timeout(), Some(t1 + Duration::from_secs(5)));
    // Not twice while one is outstanding.
    p.client
        .handle_timeout(t1 + Duration::from_secs(1))
        .unwrap();
    assert!(p.client.take_output().is_empty());

    p.server.receive(&out, t1).unwrap();
    let answer = p.server.take_output();
    assert_eq!(
        headers(&answer),
        vec![Header::new(
            FrameType::Ping,
            Flags::ACK,
            0,
            ping_header.length
        )]
    );
    assert!(events(&mut p.server).is_empty());
    let t2 = t1 + Duration::from_millis(30);
    p.client.receive(&answer, t2).unwrap();
    assert_eq!(
        events(&mut p.client),
        vec![SessionEvent::Pong {
            rtt: Duration::from_millis(30)
        }]
    );
    assert_eq!(p.client.poll_timeout(), Some(t1 + Duration::from_secs(10)));
    // A stray or repeated ACK is ignored.
    p.client.receive(&answer, t2).unwrap();
    assert!(events(&mut p.client).is_empty());
}

#[test]
fn unanswered_keepalive_times_out() {
    let keepalive = Config {
        keepalive_interval: Some(Duration::from_secs(10)),
        keepalive_timeout: Duration::from_secs(5),
        ..config()
    };
    let mut p = Pair::with(config(), keepalive);
    let t1 = p.now + Duration::from_secs(10);
    p.server.handle_timeout(t1).unwrap();
    assert_eq!(
        headers(&p.server.take_output())[0].frame_type,
        FrameType::Ping
    );
    p.server
        .handle_timeout(t1 + Duration::from_millis(4999))
        .unwrap();
    assert_eq!(
        p.server.handle_timeout(t1 + Duration::from_secs(5)),
        Err(SessionError::KeepaliveTimeout)
    );
    assert!(p.server.is_dead());
    assert_eq!(p.server.poll_timeout(), None);
    assert_eq!(
        p.server.receive(b"", t1),
        Err(SessionError::KeepaliveTimeout)
    );
}

#[test]
fn go_away_out_and_in() {
    let mut p = Pair::new();
    let id = p.open();
    p.client.go_away(GoAwayCode::Normal);
    p.client.go_away(GoAwayCode::InternalError); // only once
    let out = p.client.take_output();
    assert_eq!(
        headers(&out),
        vec![Header::new(
            FrameType::GoAway,
            Flags::NONE,
            0,
            GoAwayCode::Normal as u32
        )]
    );
    assert!(matches!(p.client.open(), Err(StreamError::CannotOpen(_))));
    assert!(!p.client.is_dead());
    p.server.receive(&out, p.now).unwrap();
    assert_eq!(
        events(&mut p.server),
        vec![SessionEvent::GoAway(GoAwayCode::Normal)]
    );
    assert!(matches!(p.server.open(), Err(StreamError::CannotOpen(_))));
    // Existing streams go on.
    p.client.send(id, b"still").unwrap();
    p.server.send(id, b"here").unwrap();
    p.pump();
    assert_eq!(data_of(&events(&mut p.server))[&id], b"still");
    assert_eq!(data_of(&events(&mut p.client))[&id], b"here");
    // An inbound SYN after GoAway is refused.
    p.server
        .receive(&frame(FrameType::WindowUpdate, Flags::SYN, 9, 0), p.now)
        .unwrap();
    assert!(events(&mut p.server).is_empty());
    assert_eq!(
        headers(&p.server.take_output()),
        vec![Header::new(FrameType::WindowUpdate, Flags::RST, 9, 0)]
    );
    // GoAway back: both sides sent one, both are dead.
    p.server.go_away(GoAwayCode::Normal);
    assert!(p.server.is_dead());
    assert_eq!(p.server.stream_count(), 0);
    p.deliver_to_client().unwrap();
    assert_eq!(
        events(&mut p.client),
        vec![SessionEvent::GoAway(GoAwayCode::Normal)]
    );
    assert!(p.client.is_dead());
    assert_eq!(p.client.stream_count(), 0);
    assert_eq!(p.client.receive(b"ignored", p.now), Ok(()));
}

#[test]
fn local_go_away_refuses_inbound_syn() {
    let mut p = Pair::new();
    p.server.go_away(GoAwayCode::Normal);
    let id = p.client.open().unwrap();
    p.pump();
    assert!(events(&mut p.server).is_empty());
    assert_eq!(
        events(&mut p.client),
        vec![
            SessionEvent::GoAway(GoAwayCode::Normal),
            SessionEvent::Reset(id)
        ]
    );
}

#[test]
fn partial_payload_is_delivered_in_pieces() {
    let mut p = Pair::new();
    let id = p.open();
    p.client.send(id, b"abcdef").unwrap();
    let out = p.client.take_output();
    p.server.receive(&out[..5], p.now).unwrap();
    assert!(events(&mut p.server).is_empty());
    p.server.receive(&out[5..14], p.now).unwrap();
    assert_eq!(
        events(&mut p.server),
        vec![SessionEvent::Data {
            stream: id,
            data: b"ab".to_vec()
        }]
    );
    p.server.receive(&out[14..], p.now).unwrap();
    assert_eq!(
        events(&mut p.server),
        vec![SessionEvent::Data {
            stream: id,
            data: b"cdef".to_vec()
        }]
    );
}

/// What a side of the property test does with its streams.
#[derive(Default)]
struct Side {
    /// Bytes written by the application, not yet taken by `send`.
    pending: BTreeMap<u32, Vec<u8>>,
    /// Streams whose last `send` was short: wait for `Writable`.
    blocked: BTreeMap<u32, bool>,
    sent: BTreeMap<u32, Vec<u8>>,
    received: BTreeMap<u32, Vec<u8>>,
}

impl Side {
    fn flush(&mut self, session: &mut Session) {
        for (id, bytes) in &mut self.pending {
            if bytes.is_empty() || self.blocked.get(id).copied().unwrap_or(false) {
                continue;
            }
            let n = session.send(*id, bytes).unwrap();
            if n < bytes.len() {
                self.blocked.insert(*id, true);
            }
            bytes.drain(..n);
        }
    }

    fn handle(&mut self, session: &mut Session) -> bool {
        let mut any = false;
        while let Some(e) = session.poll_event() {
            any = true;
            match e {
                SessionEvent::Data { stream, data } => {
                    session.consumed(stream, data.len());
                    self.received.entry(stream).or_default().extend(data);
                }
                SessionEvent::Writable(stream) => {
                    self.blocked.insert(stream, false);
                }
                _ => {}
            }
        }
        any
    }
}

/// Feed `bytes` to `session` in pieces whose sizes cycle through `splits`.
fn feed(session: &mut Session, bytes: &[u8], splits: &[usize], at: &mut usize, now: Instant) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let size = splits.get(*at % splits.len().max(1)).copied().unwrap_or(7);
        *at += 1;
        let (piece, tail) = rest.split_at(size.clamp(1, rest.len()));
        session.receive(piece, now).unwrap();
        rest = tail;
    }
}

#[test]
fn writes_arrive_intact_and_in_order_through_any_split() {
    fn prop(writes: Vec<(u8, bool, u16)>, splits: Vec<u16>, max_frame: u16) -> bool {
        let splits: Vec<usize> = splits
            .iter()
            .map(|&s| {
                if s % 4 == 0 {
                    1 + s as usize % 13
                } else {
                    1 + s as usize % 40_000
                }
            })
            .collect();
        let cfg = Config {
            max_frame: 512 + u32::from(max_frame) % 65_536,
            ..config()
        };
        let mut p = Pair::with(cfg.clone(), cfg);
        let ids: Vec<u32> = (0..2).map(|_| p.open()).collect();
        let (mut c, mut s) = (Side::default(), Side::default());
        let mut counter = 0u32;
        for (stream, deliver_to_server, len) in writes {
            let id = ids[stream as usize % ids.len()];
            let bytes: Vec<u8> = (0..usize::from(len))
                .map(|_| {
                    counter = counter.wrapping_add(1);
                    (counter.wrapping_mul(2_654_435_761) >> 24) as u8
                })
                .collect();
            let side = if deliver_to_server { &mut c } else { &mut s };
            side.sent.entry(id).or_default().extend_from_slice(&bytes);
            side.pending.entry(id).or_default().extend(bytes);
        }
        let (mut at_c, mut at_s) = (0, 0);
        for _ in 0..10_000 {
            c.flush(&mut p.client);
            s.flush(&mut p.server);
            let a = p.client.take_output();
            let b = p.server.take_output();
            feed(&mut p.server, &a, &splits, &mut at_s, p.now);
            feed(&mut p.client, &b, &splits, &mut at_c, p.now);
            let busy = s.handle(&mut p.server) | c.handle(&mut p.client);
            if a.is_empty() && b.is_empty() && !busy {
                break;
            }
        }
        for &id in &ids {
            p.client.finish(id).unwrap();
            p.server.finish(id).unwrap();
        }
        p.pump();
        let closed =
            |es: Vec<SessionEvent>| ids.iter().all(|id| es.contains(&SessionEvent::Closed(*id)));
        let empty = |m: &BTreeMap<u32, Vec<u8>>| m.values().all(Vec::is_empty);
        let strip = |m: BTreeMap<u32, Vec<u8>>| -> BTreeMap<u32, Vec<u8>> {
            m.into_iter().filter(|(_, v)| !v.is_empty()).collect()
        };
        empty(&c.pending)
            && empty(&s.pending)
            && strip(c.sent) == strip(s.received)
            && strip(s.sent) == strip(c.received)
            && closed(events(&mut p.client))
            && closed(events(&mut p.server))
            && p.client.stream_count() == 0
            && p.server.stream_count() == 0
    }
    QuickCheck::new()
        .tests(60)
        .quickcheck(prop as fn(Vec<(u8, bool, u16)>, Vec<u16>, u16) -> bool);
}

/// Run `ops` against a session fed `input` in pieces; any outcome but a panic
/// passes, as long as an error leaves the session dead.
fn chaos(mode: Mode, input: &[u8], splits: &[u8], ops: &[u8]) -> TestResult {
    let now = test_epoch();
    let cfg = Config {
        max_streams: 4,
        max_frame: 7,
        keepalive_interval: Some(Duration::from_millis(3)),
        keepalive_timeout: Duration::from_millis(2),
        ..Config::default()
    };
    let mut session = Session::new(mode, cfg, now);
    let mut rest = input;
    let mut i = 0usize;
    while !rest.is_empty() {
        let size = 1 + splits.get(i % splits.len().max(1)).copied().unwrap_or(5) as usize;
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        let t = now + Duration::from_millis(i as u64);
        if session.receive(piece, t).is_err() && !session.is_dead() {
            return TestResult::failed();
        }
        if let Some(&op) = ops.get(i % ops.len().max(1)) {
            let stream = u32::from(op >> 3);
            match op % 8 {
                0 => drop(session.open()),
                1 => drop(session.send(stream, &[op; 20])),
                2 => session.consumed(stream, usize::from(op) * 100),
                3 => drop(session.finish(stream)),
                4 => session.reset(stream),
                5 => session.go_away(GoAwayCode::Normal),
                6 => drop(session.handle_timeout(t)),
                _ => drop(session.poll_timeout()),
            }
        }
        while session.poll_event().is_some() {}
        session.take_output();
        i += 1;
    }
    TestResult::passed()
}

#[test]
fn never_panics_on_random_bytes() {
    fn prop(input: Vec<u8>, splits: Vec<u8>, ops: Vec<u8>, client: bool) -> TestResult {
        let mode = if client { Mode::Client } else { Mode::Server };
        chaos(mode, &input, &splits, &ops)
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Vec<u8>, Vec<u8>, Vec<u8>, bool) -> TestResult);
}

#[test]
fn never_panics_on_random_frames() {
    // Well-formed headers with random fields get far past the header checks.
    fn prop(
        frames: Vec<(u8, u8, u8, u32, Vec<u8>)>,
        splits: Vec<u8>,
        ops: Vec<u8>,
        client: bool,
    ) -> TestResult {
        let mut input = Vec::new();
        for (frame_type, flags, stream, length, payload) in frames {
            let frame_type = frame_type % 4;
            let length = if frame_type == 0 {
                payload.len() as u32
            } else {
                length % 8
            };
            input.extend([0, frame_type, 0, flags % 16]);
            input.extend(u32::from(stream % 8).to_be_bytes());
            input.extend(length.to_be_bytes());
            if frame_type == 0 {
                input.extend(payload);
            }
        }
        let mode = if client { Mode::Client } else { Mode::Server };
        chaos(mode, &input, &splits, &ops)
    }
    QuickCheck::new().tests(500).quickcheck(
        prop as fn(Vec<(u8, u8, u8, u32, Vec<u8>)>, Vec<u8>, Vec<u8>, bool) -> TestResult,
    );
}

#[test]
fn a_busy_peer_is_alive_while_its_pong_is_queued() {
    let t0 = test_epoch();
    let config = Config {
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let mut a = Session::new(Mode::Client, config.clone(), t0);
    let mut b = Session::new(Mode::Server, config, t0);
    let s = a.open().expect("open");
    b.receive(&a.take_output(), t0).expect("syn");
    a.handle_timeout(t0 + Duration::from_secs(30))
        .expect("ping out");
    let _ping = a.take_output(); // stuck behind data: b never reads it
    // b keeps sending data; a hears it every 10 s.
    for i in 1..=6u64 {
        let now = t0 + Duration::from_secs(30 + 10 * i);
        b.send(s, b"busy").expect("send");
        a.receive(&b.take_output(), now).expect("data");
        assert_eq!(a.handle_timeout(now), Ok(()), "alive at {i}");
    }
    // Then silence: the timeout runs from the last byte heard.
    let last = t0 + Duration::from_secs(90);
    assert_eq!(a.handle_timeout(last + Duration::from_secs(29)), Ok(()));
    assert_eq!(
        a.handle_timeout(last + Duration::from_secs(30)),
        Err(SessionError::KeepaliveTimeout)
    );
}
