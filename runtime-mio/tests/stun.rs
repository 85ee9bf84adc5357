//! `ferry stun` against an independent STUN client, the `stunclient` crate
//! (ST-10), and against raw requests the crate does not send (ST-11, ST-12).

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use ferry_conformance::daemon::Daemon;
use ferry_core::codec::stun::{self, Attribute, Class, Message};

fn responder() -> Daemon {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.args(["stun", "--listen", "127.0.0.1:0"]);
    Daemon::spawn(command, "stun")
}

#[test]
fn st10_the_stunclient_crate_learns_its_address_from_ferry() {
    let server = responder();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut client = stunclient::StunClient::new(server.addr);
    client.set_timeout(Duration::from_secs(5));
    let mapped = client
        .query_external_address(&socket)
        .expect("an answer from ferry");
    assert_eq!(mapped, socket.local_addr().expect("addr"));
}

#[test]
fn st11_st12_errors_and_silence_over_real_udp() {
    let server = responder();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut request = Message::binding_request([9; 12]);
    request.attributes.push(Attribute::Unknown {
        kind: 0x0077,
        value: vec![0; 4],
    });
    let mut bytes = Vec::new();
    stun::encode(&request, &mut bytes).expect("encode");
    socket.send_to(&bytes, server.addr).expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut buf).expect("an error response");
    let answer = stun::parse(&buf[..n]).expect("valid");
    assert_eq!(answer.class, Class::ErrorResponse);
    assert_eq!(answer.error_code().map(|(c, _)| c), Some(420));

    // Noise gets no answer; a real request after it still does.
    socket.send_to(b"helloRelay", server.addr).expect("send");
    let mut bytes = Vec::new();
    stun::encode(&Message::binding_request([8; 12]), &mut bytes).expect("encode");
    socket.send_to(&bytes, server.addr).expect("send");
    let (n, _) = socket.recv_from(&mut buf).expect("an answer");
    let answer = stun::parse(&buf[..n]).expect("valid");
    assert_eq!(answer.transaction_id, [8; 12], "the noise was not answered");
}
