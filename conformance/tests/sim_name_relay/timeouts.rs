//! NR-3, NR-9 under random clock jumps: clients that never register, register
//! late or partly, go quiet, keep alive or talk, against a model of their deadlines.

use std::time::{Duration, Instant};

use ferry_conformance::sim::{Case, ClientId, SimConfig};
use ferry_core::ConnId;
use ferry_core::name_relay::server::{CloseReason, Config};

use crate::support::{Relay, frame, registration};

/// A client as the model of its deadlines sees it.
struct Timed {
    id: ClientId,
    name: Vec<u8>,
    accepted: Duration,
    registered: bool,
    /// Bytes of the registration already sent.
    partial: usize,
    last_rx: Duration,
    open: bool,
}

/// Random steps and clock jumps; after each, exactly the clients whose deadline
/// passed are closed, for their reason (NR-3, NR-9).
pub(crate) fn registration_and_idle_timeouts(case: Case) -> Result<(), String> {
    let wall = Instant::now();
    let mut rng = case.rng("scenario");
    let config = Config::default();
    let (reg, idle) = (config.registration_timeout, config.idle_timeout);
    let mut relay = Relay::start(case.seed, config, SimConfig::default());
    let mut clients: Vec<Timed> = Vec::new();
    let mut log: Vec<String> = Vec::new();
    let mut result = Ok(());
    for step in 0..case.size {
        let now = relay.sim.elapsed();
        let open: Vec<usize> = (0..clients.len()).filter(|&c| clients[c].open).collect();
        match rng.below(10) {
            0..=1 if open.len() < 6 => {
                // Connect; register now, later (maybe partly now), or never.
                let name = format!("c{}", clients.len()).into_bytes();
                let id = relay.connect(&[]);
                let registered = rng.chance(0.5);
                let partial = if registered {
                    relay.sim.client_send(id, &registration(&name));
                    0
                } else if rng.chance(0.5) {
                    relay.sim.client_send(id, &name[..1]);
                    1
                } else {
                    0
                };
                log.push(format!(
                    "{now:?}: c{} connects, registered {registered}",
                    clients.len()
                ));
                clients.push(Timed {
                    id,
                    name,
                    accepted: now,
                    registered,
                    partial,
                    last_rx: now,
                    open: true,
                });
            }
            2..=4 if !open.is_empty() => {
                let c = *rng.pick(&open).expect("some");
                let client = &mut clients[c];
                let bytes = if !client.registered {
                    client.registered = true;
                    registration(&client.name)[client.partial..].to_vec()
                } else if rng.chance(0.5) {
                    frame(&client.name, b"") // NR-10
                } else {
                    frame(b"nobody", b"any byte counts") // NR-9, NR-8
                };
                client.last_rx = now;
                relay.sim.client_send(client.id, &bytes);
                log.push(format!("{now:?}: c{c} sends {} bytes", bytes.len()));
            }
            _ => {
                let jump = if rng.chance(0.2) {
                    Duration::from_millis(rng.range(25_000..=45_000))
                } else {
                    Duration::from_millis(rng.range(1..=12_000))
                };
                relay.sim.advance(jump);
                log.push(format!("{now:?}: advance {jump:?}"));
            }
        }
        relay.sim.run_until_idle();
        let now = relay.sim.elapsed();
        let mut want: Vec<(ConnId, CloseReason)> = Vec::new();
        // "More than" the timeout (NR-3, NR-9): closed strictly after it.
        for client in clients.iter_mut().filter(|c| c.open) {
            let reason = if !client.registered && client.accepted + reg < now {
                Some(CloseReason::RegistrationTimeout(reg))
            } else if client.registered && client.last_rx + idle < now {
                Some(CloseReason::IdleTimeout(idle))
            } else {
                None
            };
            if let Some(reason) = reason {
                client.open = false;
                want.push((relay.sim.client_conn(client.id).expect("accepted"), reason));
            }
        }
        let mut got = relay.closes();
        got.sort_by_key(|(c, _)| *c);
        want.sort_by_key(|(c, _)| *c);
        if got != want {
            result = Err(format!(
                "step {step} at {now:?}: closes: relay {got:?}, model {want:?}"
            ));
            break;
        }
        if let Some(c) = clients
            .iter()
            .position(|c| relay.sim.client_closed_by_remote(c.id) == c.open)
        {
            result = Err(format!(
                "step {step}: c{c} open in the model: {}",
                clients[c].open
            ));
            break;
        }
    }
    let took = wall.elapsed();
    if result.is_ok() && took > Duration::from_secs(2) {
        result = Err(format!(
            "{:?} of virtual time took {took:?}",
            relay.sim.elapsed()
        ));
    }
    result.map_err(|e| {
        let tail: Vec<&String> = log.iter().rev().take(20).collect();
        format!(
            "{e}\n--- steps (last 20, newest first): {tail:#?}\n--- {}",
            relay.sim.describe()
        )
    })
}
