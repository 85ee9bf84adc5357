//! Random steps of clients, names and frames: what a scenario does next, and
//! how often each kind of step is drawn.

use ferry_conformance::sim::SimRng;
use ferry_core::name_relay::wire::WireError;

use crate::model::{Fate, Msg, encode};
use crate::scenario::Scenario;
use crate::support::show;

/// How often each step is drawn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mix {
    pub(crate) connect: u64,
    pub(crate) send: u64,
    pub(crate) burst: u64,
    pub(crate) close: u64,
    pub(crate) malformed: u64,
    /// Set `max_connections` below the number of clients (NR-13).
    pub(crate) limit: bool,
    /// Names in the pool beyond the number of clients (fewer: more collisions).
    pub(crate) spare_names: usize,
}

pub(crate) const FRAMES: Mix = Mix {
    connect: 3,
    send: 8,
    burst: 3,
    close: 0,
    malformed: 0,
    limit: false,
    spare_names: 3,
};

/// Few names and many connects and closes: collisions and reuse (NR-7, NR-14).
pub(crate) const NAMES: Mix = Mix {
    connect: 6,
    send: 3,
    burst: 1,
    close: 3,
    malformed: 0,
    limit: false,
    spare_names: 0,
};

/// Malformed input among the other steps (NR-2, NR-5).
pub(crate) const MALFORMED: Mix = Mix {
    connect: 4,
    send: 4,
    burst: 1,
    close: 1,
    malformed: 3,
    limit: false,
    spare_names: 2,
};

/// Many connects and closes under a connection limit (NR-13).
pub(crate) const LIMIT: Mix = Mix {
    connect: 6,
    send: 2,
    burst: 0,
    close: 3,
    malformed: 1,
    limit: true,
    spare_names: 4,
};

/// Every kind of step.
pub(crate) const MIXED: Mix = Mix {
    connect: 4,
    send: 6,
    burst: 2,
    close: 2,
    malformed: 1,
    limit: true,
    spare_names: 2,
};

/// One sender per step: each receiver's bytes are fully determined, whatever the
/// split (NR-11).
pub(crate) const SPLIT: Mix = Mix {
    connect: 4,
    send: 8,
    burst: 0,
    close: 1,
    malformed: 1,
    limit: false,
    spare_names: 2,
};

pub(crate) fn gen_name(rng: &mut SimRng, max_len: usize) -> Vec<u8> {
    let len = match rng.below(5) {
        0 => max_len,
        1 => 1,
        _ => rng.range_usize(1..=max_len.min(10)),
    };
    (0..len)
        .map(|_| {
            loop {
                let b = if rng.chance(0.3) {
                    rng.below(256) as u8
                } else {
                    b'a' + rng.below(26) as u8
                };
                if b != b'|' {
                    break b;
                }
            }
        })
        .collect()
}

pub(crate) fn gen_payload(rng: &mut SimRng, max_len: usize) -> Vec<u8> {
    let len = match rng.below(50) {
        0..=4 => 0,
        5..=24 => rng.range_usize(1..=16),
        25..=40 => rng.range_usize(17..=512),
        41..=48 => rng.range_usize(513..=4096),
        _ => rng.range_usize(4097..=max_len.max(4097)),
    }
    .min(max_len);
    let mut payload = rng.bytes(len);
    for b in &mut payload {
        if rng.chance(0.1) {
            *b = b'|'; // separators inside payloads must not confuse anyone
        }
    }
    payload
}

impl Scenario {
    /// A frame from `sender`: to a holder, to itself, to nobody, or a keep-alive.
    pub(crate) fn gen_frame(&mut self, sender: &[u8]) -> Msg {
        let held: Vec<Vec<u8>> = self.model.names.keys().cloned().collect();
        let max_len = self.config().max_frame_len;
        let max_name = self.config().max_name_len;
        let dest = match self.rng.below(20) {
            0..=2 => {
                return Msg::Frame {
                    dest: sender.to_vec(),
                    payload: Vec::new(),
                };
            } // NR-10
            3..=11 => self
                .rng
                .pick(&held)
                .cloned()
                .unwrap_or_else(|| sender.to_vec()),
            12..=13 => sender.to_vec(), // NR-15
            14..=17 => self.rng.pick(&self.pool).cloned().expect("pool"),
            _ => gen_name(&mut self.rng, max_name), // most likely nobody's (NR-8)
        };
        let payload = gen_payload(&mut self.rng, max_len);
        Msg::Frame { dest, payload }
    }

    pub(crate) fn gen_frames(&mut self, sender: &[u8], at_most: u64) -> Vec<Msg> {
        let n = self.rng.range(1..=at_most);
        (0..n).map(|_| self.gen_frame(sender)).collect()
    }

    /// Bytes the relay must reject, and the error (NR-2, NR-5).
    pub(crate) fn gen_malformed(&mut self, registered: bool) -> Msg {
        let max_name = self.config().max_name_len;
        let max_len = self.config().max_frame_len;
        let dest = self.rng.pick(&self.pool).cloned().expect("pool");
        let long_name: Vec<u8> = vec![b'n'; max_name + self.rng.range_usize(1..=8)];
        let kind = if registered {
            self.rng.below(6)
        } else {
            self.rng.below(2)
        };
        let (mut bytes, error) = match kind {
            0 => (b"|".to_vec(), WireError::EmptyName),
            1 => (long_name, WireError::NameTooLong { max: max_name }),
            2 => ([&dest[..], b"||"].concat(), WireError::NonNumericLength),
            3 => {
                let bad: &[u8] = self
                    .rng
                    .pick(&[&b"12a|"[..], b"-1|", b" 5|", b"x|"])
                    .expect("non-empty");
                ([&dest[..], b"|", bad].concat(), WireError::NonNumericLength)
            }
            4 => {
                let len = max_len as u64 + self.rng.range(1..=1000);
                (
                    [&dest[..], format!("|{len}|").as_bytes()].concat(),
                    WireError::LengthTooLarge { len, max: max_len },
                )
            }
            _ => {
                let digits = vec![b'9'; self.rng.range_usize(21..=30)];
                (
                    [&dest[..], b"|", &digits[..]].concat(),
                    WireError::LengthTooLarge {
                        len: u64::MAX,
                        max: max_len,
                    },
                )
            }
        };
        // Garbage after the fault is never looked at. (Not after an endless length:
        // there a non-digit in the same read would make it a non-numeric length.)
        if kind < 5 && self.rng.chance(0.5) {
            let n = self.rng.range_usize(1..=40);
            bytes.extend_from_slice(&self.rng.bytes(n));
        }
        Msg::Malformed { bytes, error }
    }

    pub(crate) fn describe(msgs: &[Msg]) -> String {
        msgs.iter()
            .map(|m| match m {
                Msg::Register(n) => format!("register {}", show(n)),
                Msg::Frame { dest, payload } => format!("{}|{}|", show(dest), payload.len()),
                Msg::Malformed { error, .. } => format!("malformed({error:?})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) fn step(&mut self) {
        self.model.epoch += 1;
        let open_named = self.model.open_named();
        let open = self
            .model
            .clients
            .iter()
            .filter(|c| c.fate == Fate::Open)
            .count();
        let weights = [
            if open < self.max_open {
                self.mix.connect
            } else {
                0
            },
            if open_named.is_empty() {
                0
            } else {
                self.mix.send
            },
            if open_named.len() < 2 {
                0
            } else {
                self.mix.burst
            },
            if open_named.is_empty() {
                0
            } else {
                self.mix.close
            },
            if open_named.is_empty() {
                0
            } else {
                self.mix.malformed
            },
        ];
        let total: u64 = weights.iter().sum();
        if total == 0 {
            return;
        }
        let mut roll = self.rng.below(total);
        let mut kind = 0;
        while roll >= weights[kind] {
            roll -= weights[kind];
            kind += 1;
        }
        match kind {
            0 => {
                let name = self.rng.pick(&self.pool).cloned().expect("pool");
                let mut msgs = if self.mix.malformed > 0 && self.rng.chance(0.15) {
                    vec![self.gen_malformed(false)] // NR-2
                } else {
                    vec![Msg::Register(name.clone())]
                };
                if self.rng.chance(0.5) {
                    let extra = self.gen_frames(&name, 2); // NR-1
                    msgs.extend(extra);
                }
                let id = self.relay.connect(&[]);
                self.send(id, &encode(&msgs));
                let c = self.model.accept(id);
                self.model.feed(c, &msgs);
                self.log
                    .push(format!("client {c} connects: {}", Self::describe(&msgs)));
            }
            1 | 2 => {
                let senders = if kind == 1 {
                    vec![*self.rng.pick(&open_named).expect("some")]
                } else {
                    let mut s = open_named.clone();
                    let keep = self.rng.range_usize(2..=s.len().min(3));
                    while s.len() > keep {
                        s.remove(self.rng.index(s.len()));
                    }
                    s
                };
                for c in senders {
                    let name = self.model.clients[c].name.clone().expect("named");
                    let msgs = self.gen_frames(&name, 4);
                    let id = self.model.clients[c].id;
                    self.send(id, &encode(&msgs));
                    self.model.feed(c, &msgs);
                    self.log
                        .push(format!("client {c} sends: {}", Self::describe(&msgs)));
                }
            }
            3 => {
                let c = *self.rng.pick(&open_named).expect("some");
                self.relay.sim.client_close(self.model.clients[c].id);
                self.model.client_closes(c);
                self.log.push(format!("client {c} closes"));
            }
            _ => {
                let c = *self.rng.pick(&open_named).expect("some");
                let name = self.model.clients[c].name.clone().expect("named");
                let mut msgs = if self.rng.chance(0.5) {
                    self.gen_frames(&name, 2)
                } else {
                    Vec::new()
                };
                msgs.push(self.gen_malformed(true));
                let id = self.model.clients[c].id;
                self.send(id, &encode(&msgs));
                self.model.feed(c, &msgs);
                self.log
                    .push(format!("client {c} sends: {}", Self::describe(&msgs)));
            }
        }
    }
}
