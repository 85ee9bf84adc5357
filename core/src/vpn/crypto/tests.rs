use std::net::Ipv4Addr;
use std::time::Duration;

use quickcheck::{QuickCheck, TestResult};

use super::*;

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cheap master key (1000 iterations) shared by most tests.
fn master() -> MasterKey {
    MasterKey::derive(b"hunter2", "10.0.0.0/24", 1000)
}

fn seal(sealer: &mut Sealer, to: Ipv4Addr, plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    sealer.seal(to, plaintext, &mut out).unwrap();
    out
}

/// A sealer at A with a fixed session, and an opener at B for A.
fn pair() -> (Sealer, Opener) {
    let master = master();
    (
        Sealer::with_session(&master, A, 0xdead_beef),
        Opener::new(&master, A, B),
    )
}

#[test]
fn pbkdf2_known_answer() {
    // The well-known PBKDF2-HMAC-SHA256 vector ("password", "salt", c = 1, dkLen = 32).
    let mut out = [0; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(b"password", b"salt", 1, &mut out);
    assert_eq!(
        hex(&out),
        "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
    );
    pbkdf2::pbkdf2_hmac::<Sha256>(b"password", b"salt", 2, &mut out);
    assert_eq!(
        hex(&out),
        "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"
    );
}

#[test]
fn master_key_known_answer() {
    // Python: hashlib.pbkdf2_hmac('sha256', b'hunter2', b'ferry-vpn/1' + b'10.0.0.0/24', 1000, 32)
    assert_eq!(
        hex(&master().0),
        "c10d89ef2c08823cbad1a81f81e429bea91d5793243a95989b50b6b33c2155b5"
    );
}

#[test]
fn master_key_is_deterministic_and_depends_on_every_input() {
    let base = master();
    assert_eq!(base.0, master().0);
    assert_ne!(base.0, MasterKey::derive(b"hunter3", "10.0.0.0/24", 1000).0);
    assert_ne!(base.0, MasterKey::derive(b"hunter2", "10.0.1.0/24", 1000).0);
    assert_ne!(base.0, MasterKey::derive(b"hunter2", "10.0.0.0/24", 1001).0);
    // 0 iterations counts as 1.
    assert_eq!(
        MasterKey::derive(b"p", "n", 0).0,
        MasterKey::derive(b"p", "n", 1).0
    );
}

#[test]
fn debug_never_shows_key_bytes() {
    let master = master();
    assert_eq!(format!("{master:?}"), "MasterKey(..)");
    let keys = PeerKeys::derive(&master, A, 7);
    let shown = format!("{keys:?}");
    assert!(!shown.contains(&hex(&keys.key)), "{shown}");
    assert!(!shown.contains("key"), "{shown}");
    let (sealer, opener) = pair();
    assert!(!format!("{sealer:?} {opener:?}").contains(&hex(&master.0)));
}

#[test]
fn peer_key_known_answer() {
    // Python: HKDF-SHA256(salt = none, ikm = master,
    //   info = b'ferry-vpn peer key' + 10.0.0.2 + 0xdeadbeef (BE), L = 32)
    let keys = PeerKeys::derive(&master(), A, 0xdead_beef);
    assert_eq!(
        hex(&keys.key),
        "08170f7baed1e48fbb4ee5082083cb6424b4d70346c11003eb29e59441de3822"
    );
    assert_eq!((keys.sender(), keys.session()), (A, 0xdead_beef));
}

#[test]
fn datagram_known_answer() {
    // Python `cryptography`: AESGCM(peer key).encrypt(
    //   nonce = 0000 ‖ counter 1, b"hello, ferry", aad = header ‖ 10.0.0.3).
    let (mut sealer, mut opener) = pair();
    let datagram = seal(&mut sealer, B, b"hello, ferry");
    assert_eq!(
        hex(&datagram),
        "010a000002deadbeef0000000000000001\
         4efc22886069b3c2dd99cd80e98cbd41e8376b95120805081abe0244"
    );
    assert_eq!(datagram.len(), OVERHEAD + 12);
    assert_eq!(opener.open(&datagram).unwrap(), b"hello, ferry");
}

#[test]
fn auth_hash_known_answer() {
    // Python: hashlib.sha256(b'secret' + 10.0.0.2 + struct.pack('>q', 1700000000123))
    let hash = auth_hash(b"secret", A, 1_700_000_000_123);
    assert_eq!(
        hex(&hash),
        "c355399c42aab5c00edee0990e65cdf6642d182376ac8632cb8a34e34a8d2ee7"
    );
    assert!(auth_hash_matches(b"secret", A, 1_700_000_000_123, &hash));
    assert!(!auth_hash_matches(b"secret", A, 1_700_000_000_124, &hash));
    assert!(!auth_hash_matches(b"secret", B, 1_700_000_000_123, &hash));
    assert!(!auth_hash_matches(b"Secret", A, 1_700_000_000_123, &hash));
    assert!(!auth_hash_matches(
        b"secret",
        A,
        1_700_000_000_123,
        &hash[..31]
    ));
}

#[test]
fn round_trip_and_counters() {
    let (mut sealer, mut opener) = pair();
    assert_eq!(sealer.next_counter(), 1);
    for i in 0..10u8 {
        let payload = vec![i; usize::from(i) * 100];
        let datagram = seal(&mut sealer, B, &payload);
        let header = Header::parse(&datagram).unwrap();
        assert_eq!(
            header,
            Header {
                sender: A,
                session: 0xdead_beef,
                counter: u64::from(i) + 1
            }
        );
        assert_eq!(opener.open(&datagram).unwrap(), payload);
    }
    assert_eq!(opener.stats().opened, 10);
    assert_eq!(opener.stats().sessions, 1);
    assert_eq!(opener.current_session(), Some(0xdead_beef));
}

#[test]
fn sealer_session_comes_from_the_seed() {
    let master = master();
    let a = Sealer::new(&master, A, [1; 32]);
    let again = Sealer::new(&master, A, [1; 32]);
    let other = Sealer::new(&master, A, [2; 32]);
    assert_eq!(a.session(), again.session());
    assert_ne!(a.session(), other.session());
    assert_eq!(a.local(), A);
}

#[test]
fn every_flipped_bit_fails_and_leaves_the_window_alone() {
    let (mut sealer, mut opener) = pair();
    let first = seal(&mut sealer, B, b"first");
    assert!(opener.open(&first).is_ok());
    let datagram = seal(&mut sealer, B, b"a payload of some length");
    let window = opener.sessions[0].window.clone();
    for bit in 0..datagram.len() * 8 {
        let mut forged = datagram.clone();
        forged[bit / 8] ^= 1 << (bit % 8);
        let err = opener.open(&forged).unwrap_err();
        match bit / 8 {
            0 => assert_eq!(err, CryptoError::BadVersion(1 ^ (1 << (bit % 8)))),
            1..=4 => assert!(matches!(err, CryptoError::WrongSender { .. }), "{err:?}"),
            _ => assert!(
                matches!(
                    err,
                    CryptoError::AuthFailed | CryptoError::TooOld(_) | CryptoError::Replayed(_)
                ),
                "bit {bit}: {err:?}"
            ),
        }
        assert_eq!(
            opener.sessions.len(),
            1,
            "bit {bit}: a forged session was kept"
        );
        assert_eq!(
            opener.sessions[0].window, window,
            "bit {bit} moved the window"
        );
    }
    // Flips in the session, counter (upwards), ciphertext and tag are auth failures.
    assert!(opener.stats().auth_failed >= ((datagram.len() - 9) * 8) as u64 - 64);
    assert_eq!(opener.open(&datagram).unwrap(), b"a payload of some length");
}

#[test]
fn a_forged_high_counter_does_not_slide_the_window() {
    let (mut sealer, mut opener) = pair();
    let datagram = seal(&mut sealer, B, b"x");
    let mut forged = datagram.clone();
    forged[9..17].copy_from_slice(&1_000_000u64.to_be_bytes());
    assert_eq!(opener.open(&forged), Err(CryptoError::AuthFailed));
    assert_eq!(opener.sessions.len(), 0);
    assert_eq!(opener.open(&datagram).unwrap(), b"x");
    let mut forged = datagram.clone();
    forged[9..17].copy_from_slice(&1_000_000u64.to_be_bytes());
    assert_eq!(opener.open(&forged), Err(CryptoError::AuthFailed));
    assert_eq!(opener.sessions[0].window.top, 1);
}

#[test]
fn replay_is_rejected_and_counted() {
    let (mut sealer, mut opener) = pair();
    let datagram = seal(&mut sealer, B, b"once");
    assert!(opener.open(&datagram).is_ok());
    assert_eq!(opener.open(&datagram), Err(CryptoError::Replayed(1)));
    assert_eq!(opener.open(&datagram), Err(CryptoError::Replayed(1)));
    assert_eq!(opener.stats().replayed, 2);
    assert_eq!(opener.stats().opened, 1);
}

#[test]
fn reordered_within_the_window_open_once_each() {
    let (mut sealer, mut opener) = pair();
    let datagrams: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| seal(&mut sealer, B, &i.to_be_bytes()))
        .collect();
    // Newest first, then everything older that is still in the window.
    assert!(opener.open(&datagrams[2999]).is_ok());
    for (i, datagram) in datagrams.iter().enumerate().rev().skip(1) {
        let counter = i as u64 + 1;
        let result = opener.open(datagram);
        if 3000 - counter < WINDOW {
            assert_eq!(result.unwrap(), (i as u32).to_be_bytes());
        } else {
            assert_eq!(result, Err(CryptoError::TooOld(counter)));
        }
    }
    for datagram in &datagrams[3000 - WINDOW as usize..] {
        assert!(matches!(
            opener.open(datagram),
            Err(CryptoError::Replayed(_))
        ));
    }
    let stats = opener.stats();
    assert_eq!(stats.opened, WINDOW);
    assert_eq!(stats.too_old, 3000 - WINDOW);
}

#[test]
fn too_old_and_window_slides_across_large_jumps() {
    let (mut sealer, mut opener) = pair();
    let one = seal(&mut sealer, B, b"1");
    let two = seal(&mut sealer, B, b"2");
    assert!(opener.open(&two).is_ok());
    // Jump by exactly the window: counter 1 falls out only once top - 1 >= WINDOW.
    sealer.next = 1 + WINDOW - 1;
    let edge = seal(&mut sealer, B, b"edge");
    assert!(opener.open(&edge).is_ok());
    assert_eq!(opener.open(&one).unwrap(), b"1");
    sealer.next = 1 + WINDOW;
    let past = seal(&mut sealer, B, b"past");
    assert!(opener.open(&past).is_ok());
    let mut fresh = Opener::new(&master(), A, B);
    assert!(fresh.open(&past).is_ok());
    assert_eq!(fresh.open(&one), Err(CryptoError::TooOld(1)));
    // A huge jump clears everything; counters right below the new top are new.
    let mut below = Vec::new();
    sealer.next = 1 << 40;
    for _ in 0..200 {
        below.push(seal(&mut sealer, B, b"below"));
    }
    sealer.next = (1 << 40) + 5000;
    let high = seal(&mut sealer, B, b"high");
    assert!(opener.open(&high).is_ok());
    for datagram in &below {
        assert!(matches!(opener.open(datagram), Err(CryptoError::TooOld(_))));
    }
    sealer.next = (1 << 40) + 5000 - 100;
    let recent = seal(&mut sealer, B, b"recent");
    assert_eq!(opener.open(&recent).unwrap(), b"recent");
    assert!(matches!(
        opener.open(&recent),
        Err(CryptoError::Replayed(_))
    ));
    assert_eq!(opener.open(&edge), Err(CryptoError::TooOld(WINDOW)));
}

#[test]
fn window_matches_a_set_model() {
    // Slides of every size, against a plain set of accepted counters.
    let mut window = ReplayWindow::new();
    let mut accepted = BTreeSet::new();
    let mut counter = 1u64;
    let mut step = 1u64;
    for round in 0..3000u64 {
        step = step
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let candidate = match step >> 61 {
            0..=3 => counter + (step >> 40) % 70,
            4 | 5 => counter.saturating_sub((step >> 40) % (WINDOW + 200)),
            6 => counter + (step >> 40) % 5000,
            _ => counter + round,
        }
        .max(1);
        let top = accepted.last().copied().unwrap_or(0);
        let expected = if candidate > top {
            Ok(())
        } else if top - candidate >= WINDOW {
            Err(CryptoError::TooOld(candidate))
        } else if accepted.contains(&candidate) {
            Err(CryptoError::Replayed(candidate))
        } else {
            Ok(())
        };
        assert_eq!(window.check(candidate), expected, "round {round}");
        if expected.is_ok() {
            window.accept(candidate);
            accepted.insert(candidate);
        }
        counter = candidate.max(counter);
    }
}

#[test]
fn counter_zero_and_exhaustion() {
    let (mut sealer, mut opener) = pair();
    sealer.next = 0;
    let zero = seal(&mut sealer, B, b"0");
    assert_eq!(opener.open(&zero), Err(CryptoError::TooOld(0)));
    sealer.next = u64::MAX - 1;
    let last = seal(&mut sealer, B, b"last");
    assert_eq!(opener.open(&last).unwrap(), b"last");
    let mut out = vec![1, 2, 3];
    assert_eq!(
        sealer.seal(B, b"more", &mut out),
        Err(CryptoError::CounterExhausted)
    );
    assert!(out.is_empty());
    assert_eq!(sealer.next_counter(), u64::MAX);
    assert_eq!(
        sealer.seal(B, &vec![0; MAX_PLAINTEXT + 1], &mut out),
        Err(CryptoError::TooLong)
    );
}

#[test]
fn malformed_datagrams() {
    let (mut sealer, mut opener) = pair();
    let datagram = seal(&mut sealer, B, b"");
    assert_eq!(datagram.len(), OVERHEAD);
    assert_eq!(
        opener.open(&datagram[..OVERHEAD - 1]),
        Err(CryptoError::TooShort)
    );
    assert_eq!(opener.open(&[]), Err(CryptoError::TooShort));
    let mut v2 = datagram.clone();
    v2[0] = 2;
    assert_eq!(opener.open(&v2), Err(CryptoError::BadVersion(2)));
    assert_eq!(opener.stats().malformed, 3);
    assert_eq!(opener.open(&datagram).unwrap(), b"");
}

#[test]
fn keys_differ_per_sender_session_and_receiver() {
    let master = master();
    let mut a = Sealer::with_session(&master, A, 1);
    let mut a_restarted = Sealer::with_session(&master, A, 2);
    let mut c = Sealer::with_session(&master, C, 1);
    assert_ne!(
        PeerKeys::derive(&master, A, 1).key,
        PeerKeys::derive(&master, C, 1).key
    );
    assert_ne!(
        PeerKeys::derive(&master, A, 1).key,
        PeerKeys::derive(&master, A, 2).key
    );
    let from_a = seal(&mut a, B, b"from a");
    let from_c = seal(&mut c, B, b"from c");

    // C's datagram relabelled as A's does not open under A's key.
    let mut relabelled = from_c.clone();
    relabelled[1..5].copy_from_slice(&A.octets());
    let mut at_b = Opener::new(&master, A, B);
    assert_eq!(at_b.open(&relabelled), Err(CryptoError::AuthFailed));
    assert_eq!(
        at_b.open(&from_c),
        Err(CryptoError::WrongSender {
            expected: A,
            got: C
        })
    );
    // A datagram for B does not open at C (receiver bound in the AAD).
    let mut at_c = Opener::new(&master, A, C);
    assert_eq!(at_c.open(&from_a), Err(CryptoError::AuthFailed));
    // Another network's key does not open it.
    let other = MasterKey::derive(b"hunter2", "10.0.1.0/24", 1000);
    assert_eq!(
        Opener::new(&other, A, B).open(&from_a),
        Err(CryptoError::AuthFailed)
    );
    // A session id swapped into the header does not open (key and AAD differ).
    let restarted = seal(&mut a_restarted, B, b"restarted");
    let mut swapped = restarted.clone();
    swapped[5..9].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(at_b.open(&swapped), Err(CryptoError::AuthFailed));
    assert_eq!(at_b.open(&from_a).unwrap(), b"from a");
    assert_eq!(at_b.open(&restarted).unwrap(), b"restarted");
}

#[test]
fn restarts_get_fresh_windows_and_old_sessions_keep_theirs() {
    let master = master();
    let mut opener = Opener::new(&master, A, B);
    let mut first = Sealer::with_session(&master, A, 10);
    let old = seal(&mut first, B, b"old");
    assert!(opener.open(&old).is_ok());
    // The peer restarts: counter 1 again, but a new session and key.
    let mut second = Sealer::with_session(&master, A, 20);
    let new = seal(&mut second, B, b"new");
    assert_eq!(opener.open(&new).unwrap(), b"new");
    assert_eq!(opener.current_session(), Some(20));
    // A straggler of the old session still opens; its replays do not.
    let straggler = seal(&mut first, B, b"straggler");
    assert!(opener.open(&straggler).is_ok());
    assert_eq!(opener.open(&old), Err(CryptoError::Replayed(1)));
    assert_eq!(opener.open(&new), Err(CryptoError::Replayed(1)));
    assert_eq!(opener.stats().sessions, 2);
    // At most MAX_SESSIONS are kept, least recently used evicted.
    for session in 100..100 + MAX_SESSIONS as u32 {
        let mut sealer = Sealer::with_session(&master, A, session);
        assert!(opener.open(&seal(&mut sealer, B, b"s")).is_ok());
    }
    assert_eq!(opener.sessions.len(), MAX_SESSIONS);
    assert!(opener.sessions.iter().all(|s| s.id >= 100));
}

#[test]
fn opener_set_dispatches_by_sender() {
    let master = master();
    let mut set = OpenerSet::new(master.clone(), B);
    let mut a = Sealer::with_session(&master, A, 1);
    let mut c = Sealer::with_session(&master, C, 1);
    let from_a = seal(&mut a, B, b"a");
    let from_c = seal(&mut c, B, b"c");
    assert_eq!(set.open(&from_a), Err(CryptoError::UnknownSender(A)));
    set.add_peer(A);
    set.add_peer(C);
    assert_eq!(set.open(&from_a).unwrap(), (A, b"a".to_vec()));
    assert_eq!(set.open(&from_c).unwrap(), (C, b"c".to_vec()));
    assert_eq!(set.open(&from_a), Err(CryptoError::Replayed(1)));
    assert_eq!(set.open(&[0; 3]), Err(CryptoError::TooShort));
    assert_eq!(set.opener(A).unwrap().stats().opened, 1);
    assert_eq!(set.opener(A).unwrap().stats().replayed, 1);
    let stats = set.stats();
    assert_eq!(
        (
            stats.opened,
            stats.replayed,
            stats.unknown_sender,
            stats.malformed
        ),
        (2, 1, 1, 1)
    );
    assert!(set.remove_peer(C).is_some());
    assert_eq!(set.open(&from_c), Err(CryptoError::UnknownSender(C)));
}

#[test]
fn vpn_c8_replayed_old_sessions_never_reopen_the_current_one() {
    // The review's scenario: one captured datagram from each of four older
    // sessions pushes the current session out of the opener.
    let master = master();
    let mut opener = Opener::new(&master, A, B);
    let old: Vec<Vec<u8>> = (1..=MAX_SESSIONS as u32)
        .map(|s| seal(&mut Sealer::with_session(&master, A, s), B, b"old"))
        .collect();
    let mut current = Sealer::with_session(&master, A, 99);
    let captured: Vec<Vec<u8>> = (0..3).map(|_| seal(&mut current, B, b"cur")).collect();
    for d in &captured {
        assert!(opener.open(d).is_ok());
    }
    // Never held: each opens once (the stated limit, VPN-C8) and 99 retires.
    for o in &old {
        assert!(opener.open(o).is_ok());
    }
    assert!(opener.sessions.iter().all(|s| s.id != 99));
    for round in 0..3 {
        for o in &old {
            assert_eq!(
                opener.open(o),
                Err(CryptoError::Replayed(1)),
                "round {round}"
            );
        }
        for (i, d) in captured.iter().enumerate() {
            assert_eq!(
                opener.open(d),
                Err(CryptoError::Replayed(i as u64 + 1)),
                "round {round}"
            );
        }
    }
    // The live sender goes on: session 99 is taken back above its counter,
    // and its old datagrams still never open again.
    assert_eq!(
        opener.open(&seal(&mut current, B, b"next")).unwrap(),
        b"next"
    );
    assert_eq!(opener.current_session(), Some(99));
    for d in captured.iter().chain(&old) {
        assert!(opener.open(d).is_err());
    }
    assert_eq!(opener.stats().opened, 3 + 4 + 1);
    // Memory stays bounded however many sessions come and go.
    for session in 1000..1200 {
        let mut sealer = Sealer::with_session(&master, A, session);
        assert!(opener.open(&seal(&mut sealer, B, b"s")).is_ok());
    }
    assert_eq!(opener.sessions.len(), MAX_SESSIONS);
    assert_eq!(opener.retired.len(), MAX_RETIRED);
}

#[test]
fn vpn_c7_a_resumed_window_refuses_everything_up_to_its_top() {
    for top in [1u64, 63, 64, 65, 2047, 2048, 5000] {
        let window = ReplayWindow::resume(top);
        for c in top.saturating_sub(WINDOW + 2)..=top {
            assert!(window.check(c).is_err(), "top {top} counter {c}");
        }
        let mut window = window;
        for c in [top + 1, top + 3, top + 2, top + 200] {
            assert_eq!(window.check(c), Ok(()), "top {top} counter {c}");
            window.accept(c);
        }
        assert!(window.check(top + 3).is_err());
        assert_eq!(window.check(top + 4), Ok(()));
    }
}

#[test]
fn vpn_c12_only_authenticated_senders_get_an_opener_within_capacity() {
    const D: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    let master = master();
    let mut set = OpenerSet::with_capacity(master.clone(), B, 2);
    // Forged datagrams from a thousand senders leave nothing behind.
    for i in 0..1000u32 {
        let mut forged = vec![VERSION];
        forged.extend_from_slice(&Ipv4Addr::from(0x0a00_1000 + i).octets());
        forged.extend_from_slice(&7u32.to_be_bytes());
        forged.extend_from_slice(&1u64.to_be_bytes());
        forged.extend_from_slice(&[0; 20]);
        assert_eq!(
            set.open_or_admit(&forged, |_| true, |_| true),
            Err(CryptoError::AuthFailed)
        );
    }
    assert!(set.is_empty());
    assert_eq!(set.stats().auth_failed, 1000);
    let mut a = Sealer::with_session(&master, A, 1);
    let from_a = seal(&mut a, B, b"a");
    // Not admitted by the caller (e.g. outside the network): unknown.
    assert_eq!(
        set.open_or_admit(&from_a, |_| false, |_| true),
        Err(CryptoError::UnknownSender(A))
    );
    assert_eq!(
        set.open_or_admit(&from_a, |s| s == A, |_| false).unwrap(),
        (A, b"a".to_vec())
    );
    assert_eq!(
        set.open_or_admit(&from_a, |_| true, |_| false),
        Err(CryptoError::Replayed(1))
    );
    let mut c = Sealer::with_session(&master, C, 1);
    assert!(
        set.open_or_admit(&seal(&mut c, B, b"c"), |_| true, |_| false)
            .is_ok()
    );
    assert!(set.open(&seal(&mut a, B, b"a2")).is_ok());
    assert_eq!(set.len(), 2);
    // Full and nobody evictable: refused, undecrypted.
    let mut d = Sealer::with_session(&master, D, 1);
    let from_d = seal(&mut d, B, b"d");
    assert_eq!(
        set.open_or_admit(&from_d, |_| true, |_| false),
        Err(CryptoError::NoRoom(D))
    );
    // A forgery never evicts anyone.
    let mut forged = from_d.clone();
    forged[HEADER_LEN] ^= 1;
    assert_eq!(
        set.open_or_admit(&forged, |_| true, |_| true),
        Err(CryptoError::AuthFailed)
    );
    assert!(set.opener(A).is_some() && set.opener(C).is_some());
    // Authenticated, with room made from the least recently used evictable
    // sender (C: A opened since).
    assert_eq!(
        set.open_or_admit(&from_d, |_| true, |_| true).unwrap(),
        (D, b"d".to_vec())
    );
    assert!(set.opener(A).is_some() && set.opener(C).is_none());
    assert_eq!(set.len(), 2);
    let stats = set.stats();
    assert_eq!((stats.opened, stats.no_room), (4, 1), "{stats:?}");
}

#[test]
fn auth_guard_accepts_once_within_skew() {
    let mut guard = AuthReplayGuard::new(Duration::from_secs(30), 100);
    let now = 1_700_000_000_000;
    let hash = auth_hash(b"pw", A, now - 1000);
    assert_eq!(guard.verify(b"pw", A, now - 1000, &hash, now), Ok(()));
    assert_eq!(
        guard.verify(b"pw", A, now - 1000, &hash, now),
        Err(AuthReject::Replayed)
    );
    // Another peer with the same timestamp is a different AUTH.
    assert_eq!(guard.check(B, now - 1000, now), Ok(()));
    assert_eq!(
        guard.verify(b"wrong", A, now, &auth_hash(b"pw", A, now), now),
        Err(AuthReject::BadHash)
    );
    assert_eq!(guard.len(), 2);
    assert_eq!(guard.check(A, now - 30_001, now), Err(AuthReject::Skewed));
    assert_eq!(guard.check(A, now + 30_001, now), Err(AuthReject::Skewed));
    assert_eq!(guard.check(A, now + 30_000, now), Ok(()));
    assert_eq!(guard.check(A, i64::MIN, now), Err(AuthReject::Skewed));
    assert_eq!(guard.check(A, i64::MAX, i64::MIN), Err(AuthReject::Skewed));
}

#[test]
fn auth_guard_memory_is_bounded_and_forgetting_is_safe() {
    let mut guard = AuthReplayGuard::new(Duration::from_secs(30), 3);
    let now = 1_000_000;
    for ts in 0..5 {
        assert_eq!(guard.check(A, now + ts, now), Ok(()));
    }
    assert_eq!(guard.len(), 3);
    // The evicted ones are refused, not accepted again.
    assert_eq!(guard.check(A, now, now), Err(AuthReject::Forgotten));
    assert_eq!(guard.check(A, now + 1, now), Err(AuthReject::Forgotten));
    assert_eq!(guard.check(A, now + 4, now), Err(AuthReject::Replayed));
    // Time passes: everything is pruned, and the clock going back does not revive them.
    let later = now + 60_000;
    assert_eq!(guard.check(A, later, later), Ok(()));
    assert_eq!(guard.len(), 1);
    assert_eq!(guard.check(A, now + 4, now), Err(AuthReject::Forgotten));
    assert!(!guard.is_empty());
}

#[test]
fn quickcheck_open_never_panics() {
    fn prop(mut bytes: Vec<u8>, version_one: bool, sender_a: bool) -> bool {
        let (_, mut opener) = pair();
        if version_one && !bytes.is_empty() {
            bytes[0] = VERSION;
        }
        if sender_a && bytes.len() >= 5 {
            bytes[1..5].copy_from_slice(&A.octets());
        }
        let before = opener.sessions.len();
        let result = opener.open(&bytes);
        // Random bytes never authenticate, and leave no state behind.
        result.is_err() && opener.sessions.len() == before
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Vec<u8>, bool, bool) -> bool);
}

#[test]
fn quickcheck_round_trip_in_any_order() {
    fn prop(payloads: Vec<Vec<u8>>, order: Vec<usize>, session: u32) -> TestResult {
        if payloads.is_empty() {
            return TestResult::discard();
        }
        let master = MasterKey::from_bytes([7; 32]);
        let mut sealer = Sealer::with_session(&master, A, session);
        let mut opener = Opener::new(&master, A, B);
        let datagrams: Vec<Vec<u8>> = payloads.iter().map(|p| seal(&mut sealer, B, p)).collect();
        // A permutation from `order`: repeatedly take the item it points at.
        let mut left: Vec<usize> = (0..datagrams.len()).collect();
        let mut delivery = Vec::new();
        let mut picks = order.into_iter().chain(std::iter::repeat(0));
        while !left.is_empty() {
            let pick = picks.next().unwrap_or(0) % left.len();
            delivery.push(left.remove(pick));
        }
        for &i in &delivery {
            if opener.open(&datagrams[i]).as_ref() != Ok(&payloads[i]) {
                return TestResult::failed();
            }
        }
        for &i in &delivery {
            if opener.open(&datagrams[i]) != Err(CryptoError::Replayed(i as u64 + 1)) {
                return TestResult::failed();
            }
        }
        TestResult::from_bool(opener.stats().opened == datagrams.len() as u64)
    }
    QuickCheck::new()
        .tests(200)
        .quickcheck(prop as fn(Vec<Vec<u8>>, Vec<usize>, u32) -> TestResult);
}

/// Known answers from Python's `hashlib` (VPN-V4 and VPN-V3 of the server).
#[test]
fn expttun_and_vmac_hash_known_answers() {
    let mut field = [0u8; 32];
    field[..11].copy_from_slice(b"10.0.0.7/24");
    assert_eq!(
        hex(&expttun_hash(b"secret", &field, 1_700_000_000)),
        "3f12e056f91ea9e30d3c2e1fe10f240502a8fe20371631ffa918832c9d58567c"
    );
    let vmac: [u8; 16] = std::array::from_fn(|i| i as u8);
    assert_eq!(
        hex(&vmac_hash(b"secret", &vmac, 1_700_000_000)),
        "b8f0115c613fd0dd3898e88a26a25b597ff0c72ddb04f586e8b0c2f4453dbb3b"
    );
    // Every input is bound: password, field, vmac and timestamp.
    assert_ne!(
        expttun_hash(b"secret", &field, 1_700_000_001),
        expttun_hash(b"secret", &field, 1_700_000_000)
    );
    assert_ne!(
        expttun_hash(b"Secret", &field, 1_700_000_000),
        expttun_hash(b"secret", &field, 1_700_000_000)
    );
    assert_ne!(
        vmac_hash(b"secret", &[0; 16], 1_700_000_000),
        vmac_hash(b"secret", &vmac, 1_700_000_000)
    );
}

/// Known answers from Python's `hashlib` for the server's proofs (VPN-C10).
#[test]
fn server_proof_known_answers() {
    let ip = Ipv4Addr::new(10, 0, 0, 1);
    assert_eq!(
        hex(&server_auth_hash(
            b"secret",
            ip,
            1_700_000_000,
            1_700_000_001
        )),
        "890334c0087d8d61968d469592cf97f2a181b59286c0f8be81bcadf4e88681ea"
    );
    let mut field = [0u8; 32];
    field[..11].copy_from_slice(b"10.0.0.7/24");
    assert_eq!(
        hex(&server_expttun_hash(
            b"secret",
            &field,
            1_700_000_000,
            1_700_000_001
        )),
        "e1837fa0094c000322fa667f57feded806312f30a09f00d7427a3dac1cdea075"
    );
    // Both timestamps are bound.
    assert_ne!(
        server_auth_hash(b"secret", ip, 1_700_000_000, 1_700_000_001),
        server_auth_hash(b"secret", ip, 1_700_000_001, 1_700_000_000)
    );
    assert_ne!(
        server_expttun_hash(b"secret", &field, 1_700_000_000, 1_700_000_001),
        server_expttun_hash(b"secret", &field, 1_700_000_000, 1_700_000_002)
    );
}

/// VPN-C10: no server proof is a client proof, whatever the timestamps, so a
/// server's AUTH echo is never a valid AUTH and a client's message reflected
/// back never proves the server knows the password.
#[test]
fn vpn_c10_server_proofs_are_never_client_proofs() {
    let mut field = [0u8; 32];
    field[..11].copy_from_slice(b"10.0.0.7/24");
    for (client_ts, server_ts) in [
        (1_700_000_000, 1_700_000_000),
        (1_700_000_000, 1_700_000_001),
    ] {
        let echo = server_auth_hash(b"pw", A, client_ts, server_ts);
        for ts in [client_ts, server_ts] {
            assert!(!auth_hash_matches(b"pw", A, ts, &echo));
            assert!(!hash_eq(&echo, &auth_hash(b"pw", A, ts)));
        }
        let answer = server_expttun_hash(b"pw", &field, client_ts, server_ts);
        for ts in [client_ts, server_ts] {
            assert!(!hash_eq(&answer, &expttun_hash(b"pw", &field, ts)));
        }
        assert_ne!(echo, answer);
    }
}

/// A guard keyed by something else than an ip (the server's EXPTTUN guard)
/// works the same way: once per key and timestamp, within the skew.
#[test]
fn replay_guard_with_hash_keys() {
    let mut guard = ReplayGuard::<[u8; 32]>::new(Duration::from_secs(30), 100);
    let now = 1_700_000_000_000;
    assert_eq!(guard.check([1; 32], now, now), Ok(()));
    assert_eq!(guard.check([1; 32], now, now), Err(AuthReject::Replayed));
    assert_eq!(guard.check([2; 32], now, now), Ok(()));
    assert_eq!(
        guard.check([3; 32], now - 30_001, now),
        Err(AuthReject::Skewed)
    );
    assert_eq!(guard.len(), 2);
}

#[test]
fn hash_eq_is_equality() {
    assert!(hash_eq(b"", b""));
    assert!(hash_eq(&[7; 32], &[7; 32]));
    assert!(!hash_eq(&[7; 32], &[7; 31]));
    assert!(!hash_eq(&[7; 31], &[7; 32]));
    let mut other = [7u8; 32];
    other[31] = 6;
    assert!(!hash_eq(&[7; 32], &other));
    other = [7; 32];
    other[0] = 0;
    assert!(!hash_eq(&other, &[7; 32]));
    assert!(!hash_eq(b"abc\0", b"abc"));
}

#[test]
fn quickcheck_hash_eq_matches_slice_equality() {
    fn prop(a: Vec<u8>, b: Vec<u8>) -> bool {
        hash_eq(&a, &b) == (a == b) && hash_eq(&a, &a)
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Vec<u8>, Vec<u8>) -> bool);
}

/// `seal_parts` is `seal` of the parts put together: the same datagram.
#[test]
fn sealing_in_parts_is_sealing_the_whole() {
    let master = master();
    let mut whole = Sealer::with_session(&master, A, 7);
    let mut parts = Sealer::with_session(&master, A, 7);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    whole.seal(B, b"\x01packet bytes", &mut a).unwrap();
    parts
        .seal_parts(B, b"\x01", b"packet bytes", &mut b)
        .unwrap();
    assert_eq!(a, b);
    let mut opener = Opener::new(&master, A, B);
    assert_eq!(opener.open(&b).unwrap(), b"\x01packet bytes");
    let too_long = vec![0; MAX_PLAINTEXT];
    assert_eq!(
        parts.seal_parts(B, b"\x01", &too_long, &mut b),
        Err(CryptoError::TooLong)
    );
}
