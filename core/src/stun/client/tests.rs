//! ST-13..ST-15: the client transaction.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::codec::stun::Attribute;
use crate::testing::test_epoch;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

const SERVER: &str = "198.51.100.1:3478";
const LOCAL: &str = "10.0.0.2:40000";

#[test]
fn st13_ids_are_fresh_and_seeded() {
    let mut a = TransactionIds::new([7; 32]);
    let first = a.next_id();
    let second = a.next_id();
    assert_ne!(first, second, "each transaction gets a new id");
    assert_eq!(
        TransactionIds::new([7; 32]).next_id(),
        first,
        "same seed, same ids"
    );
    assert_ne!(TransactionIds::new([8; 32]).next_id(), first);
}

#[test]
fn st13_the_request_is_a_fingerprinted_binding_request_with_the_id() {
    let now = test_epoch();
    let (tx, request) =
        Transaction::start([3; 12], addr(SERVER), addr(LOCAL), Config::default(), now);
    let message = stun::parse(&request).expect("our request parses");
    assert!(message.is_binding_request());
    assert_eq!(message.transaction_id, [3; 12]);
    assert!(message.fingerprint().is_some(), "sent with a FINGERPRINT");
    assert_eq!(tx.id(), [3; 12]);
    assert_eq!(tx.server(), addr(SERVER));
}

#[test]
fn st14_retransmits_at_the_rfc_schedule_then_fails_at_39_5_s() {
    let t0 = test_epoch();
    let (mut tx, first) =
        Transaction::start([1; 12], addr(SERVER), addr(LOCAL), Config::default(), t0);
    let mut sends = vec![Duration::ZERO];
    let failed_at;
    loop {
        let at = tx.deadline();
        // Early calls are harmless.
        assert_eq!(tx.handle_timeout(at - Duration::from_millis(1)), None);
        match tx.handle_timeout(at) {
            Some(Step::Send(again)) => {
                assert_eq!(
                    again, first,
                    "a retransmission is the same request, same id"
                );
                sends.push(at - t0);
            }
            Some(Step::Failed(Failure::Timeout { sent, after })) => {
                assert_eq!(sent, 7);
                assert_eq!(after, at - t0);
                failed_at = at - t0;
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let ms: Vec<u128> = sends.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(failed_at, Duration::from_millis(39_500));
    assert_eq!(
        Config::default().give_up_after(),
        Duration::from_millis(39_500)
    );
}

#[test]
fn st14_the_settings_are_configuration() {
    let t0 = test_epoch();
    let config = Config {
        rto: Duration::from_millis(100),
        rc: 2,
        rm: 3,
    };
    let (mut tx, _) = Transaction::start([1; 12], addr(SERVER), addr(LOCAL), config, t0);
    assert!(matches!(
        tx.handle_timeout(t0 + Duration::from_millis(100)),
        Some(Step::Send(_))
    ));
    assert_eq!(tx.deadline() - t0, Duration::from_millis(400));
    assert!(matches!(
        tx.handle_timeout(tx.deadline()),
        Some(Step::Failed(_))
    ));
    assert_eq!(config.give_up_after(), Duration::from_millis(400));
}

fn success(id: [u8; 12], mapped: SocketAddr) -> Message {
    Message::binding_success(id, mapped, None)
}

#[test]
fn st15_only_a_binding_response_with_our_id_is_an_answer() {
    let now = test_epoch();
    let (tx, _) = Transaction::start([5; 12], addr(SERVER), addr(LOCAL), Config::default(), now);
    let mapped = addr("203.0.113.9:61000");
    assert_eq!(
        tx.handle_response(&success([6; 12], mapped)),
        None,
        "other id"
    );
    assert_eq!(
        tx.handle_response(&Message::binding_request([5; 12])),
        None,
        "a request"
    );
    let mut indication = success([5; 12], mapped);
    indication.class = Class::Indication;
    assert_eq!(tx.handle_response(&indication), None, "an indication");
    let mut other_method = success([5; 12], mapped);
    other_method.method = Method(0x003);
    assert_eq!(tx.handle_response(&other_method), None, "another method");
    assert_eq!(
        tx.handle_response(&success([5; 12], mapped)),
        Some(Ok(mapped))
    );
}

#[test]
fn st15_xor_mapped_is_preferred_over_mapped() {
    let now = test_epoch();
    let (tx, _) = Transaction::start([5; 12], addr(SERVER), addr(LOCAL), Config::default(), now);
    let mut message = Message::new(Class::SuccessResponse, Method::BINDING, [5; 12]);
    message
        .attributes
        .push(Attribute::MappedAddress(addr("192.0.2.1:1")));
    message
        .attributes
        .push(Attribute::XorMappedAddress(addr("192.0.2.2:2")));
    assert_eq!(tx.handle_response(&message), Some(Ok(addr("192.0.2.2:2"))));
    let mut legacy = Message::new(Class::SuccessResponse, Method::BINDING, [5; 12]);
    legacy
        .attributes
        .push(Attribute::MappedAddress(addr("192.0.2.1:1")));
    assert_eq!(
        tx.handle_response(&legacy),
        Some(Ok(addr("192.0.2.1:1"))),
        "RFC 3489 servers"
    );
}

#[test]
fn st15_failures_error_response_no_address_wrong_family() {
    let now = test_epoch();
    let (tx, _) = Transaction::start([5; 12], addr(SERVER), addr(LOCAL), Config::default(), now);
    let error = Message::binding_error([5; 12], 400, "Bad Request");
    assert_eq!(
        tx.handle_response(&error),
        Some(Err(Failure::ErrorResponse {
            code: 400,
            reason: "Bad Request".into()
        }))
    );
    let bare = Message::new(Class::SuccessResponse, Method::BINDING, [5; 12]);
    assert_eq!(tx.handle_response(&bare), Some(Err(Failure::NoAddress)));
    let v6 = addr("[2001:db8::1]:5");
    assert_eq!(
        tx.handle_response(&success([5; 12], v6)),
        Some(Err(Failure::WrongFamily(v6)))
    );
    let (tx6, _) = Transaction::start(
        [5; 12],
        addr("[2001:db8::9]:3478"),
        addr("[::]:1"),
        Config::default(),
        now,
    );
    assert_eq!(tx6.handle_response(&success([5; 12], v6)), Some(Ok(v6)));
    assert!(
        Failure::NoAddress
            .to_string()
            .contains("without a mapped address")
    );
}
