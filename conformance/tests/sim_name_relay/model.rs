//! The reference model of the name relay: who holds which name, what each
//! receiver must get, the counters, and which connections the relay must close
//! and why.

use std::collections::BTreeMap;

use ferry_conformance::sim::ClientId;
use ferry_core::name_relay::server::{CloseReason, Config, Stats};
use ferry_core::name_relay::wire::WireError;

use crate::support::{frame, parse_stream, registration, show};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Open,
    ClosedByRelay,
    ClosedBySelf,
}

/// A frame a receiver must get; frames of one epoch (one settled step) may
/// interleave across senders, never within one sender (NR-6).
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub(crate) epoch: u64,
    pub(crate) sender: Vec<u8>,
    pub(crate) payload: Vec<u8>,
}

pub(crate) struct ModelClient {
    pub(crate) id: ClientId,
    pub(crate) name: Option<Vec<u8>>,
    pub(crate) fate: Fate,
    pub(crate) expected: Vec<Expected>,
}

/// What a client sends, as the model understands it.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    Register(Vec<u8>),
    Frame {
        dest: Vec<u8>,
        payload: Vec<u8>,
    },
    /// Bytes the relay must reject with this error (NR-2, NR-5).
    Malformed {
        bytes: Vec<u8>,
        error: WireError,
    },
}

impl Msg {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Msg::Register(name) => out.extend_from_slice(&registration(name)),
            Msg::Frame { dest, payload } => out.extend_from_slice(&frame(dest, payload)),
            Msg::Malformed { bytes, .. } => out.extend_from_slice(bytes),
        }
    }
}

pub(crate) fn encode(msgs: &[Msg]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    out
}

pub(crate) struct Model {
    pub(crate) config: Config,
    pub(crate) clients: Vec<ModelClient>,
    pub(crate) names: BTreeMap<Vec<u8>, usize>,
    /// Connections the relay holds.
    pub(crate) open: usize,
    pub(crate) stats: Stats,
    pub(crate) epoch: u64,
    /// Closes the relay must report for the current step: (client, reason).
    pub(crate) closes: Vec<(usize, CloseReason)>,
    pub(crate) rejected_duplicates: usize,
}

impl Model {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            config,
            clients: Vec::new(),
            names: BTreeMap::new(),
            open: 0,
            stats: Stats::default(),
            epoch: 0,
            closes: Vec::new(),
            rejected_duplicates: 0,
        }
    }

    /// A new connection; `false` if the relay must refuse it (NR-13).
    pub(crate) fn accept(&mut self, id: ClientId) -> usize {
        let c = self.clients.len();
        self.clients.push(ModelClient {
            id,
            name: None,
            fate: Fate::Open,
            expected: Vec::new(),
        });
        if self.open >= self.config.max_connections {
            self.relay_closes(
                c,
                CloseReason::TooManyConnections(self.config.max_connections),
            );
        } else {
            self.open += 1;
        }
        c
    }

    pub(crate) fn relay_closes(&mut self, c: usize, reason: CloseReason) {
        let client = &mut self.clients[c];
        if client.fate != Fate::Open {
            return;
        }
        client.fate = Fate::ClosedByRelay;
        if !matches!(reason, CloseReason::TooManyConnections(_)) {
            self.open -= 1;
        }
        if let Some(name) = client.name.take() {
            self.names.remove(&name); // NR-14
        }
        self.stats.closed_by_relay += 1;
        self.closes.push((c, reason));
    }

    pub(crate) fn client_closes(&mut self, c: usize) {
        let client = &mut self.clients[c];
        assert_eq!(client.fate, Fate::Open);
        client.fate = Fate::ClosedBySelf;
        if let Some(name) = client.name.take() {
            self.names.remove(&name); // NR-14
        }
        self.open -= 1;
        self.closes.push((c, CloseReason::PeerClosed));
    }

    /// The relay reads `msgs` from client `c`, in order.
    pub(crate) fn feed(&mut self, c: usize, msgs: &[Msg]) {
        for msg in msgs {
            if self.clients[c].fate != Fate::Open {
                return; // NR-7: what follows a rejected name is discarded
            }
            match msg {
                Msg::Register(name) => {
                    assert!(self.clients[c].name.is_none(), "model: registers twice");
                    if self.names.contains_key(name) {
                        let shown = String::from_utf8_lossy(name).into_owned();
                        self.rejected_duplicates += 1;
                        self.relay_closes(c, CloseReason::DuplicateName(shown)); // NR-7
                    } else {
                        self.names.insert(name.clone(), c);
                        self.clients[c].name = Some(name.clone());
                    }
                }
                Msg::Frame { dest, payload } => {
                    let sender = self.clients[c]
                        .name
                        .clone()
                        .expect("model: frame before name");
                    if *dest == sender && payload.is_empty() {
                        self.stats.keepalives += 1; // NR-10
                    } else if let Some(&r) = self.names.get(dest) {
                        // NR-6 (and NR-15 when r == c)
                        self.clients[r].expected.push(Expected {
                            epoch: self.epoch,
                            sender,
                            payload: payload.clone(),
                        });
                        self.stats.frames_delivered += 1;
                        self.stats.bytes_delivered += payload.len() as u64;
                    } else {
                        self.stats.frames_dropped += 1; // NR-8
                    }
                }
                Msg::Malformed { error, .. } => {
                    self.relay_closes(c, CloseReason::Malformed(error.clone())); // NR-5
                }
            }
        }
    }

    pub(crate) fn open_named(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&c| self.clients[c].fate == Fate::Open && self.clients[c].name.is_some())
            .collect()
    }
}

/// Check a receiver's bytes against the model: whole frames (NR-6), the frames of
/// each step in the model's order per sender, nothing missing, nothing extra.
pub(crate) fn check_stream(actual: &[u8], expected: &[Expected]) -> Result<(), String> {
    let frames = parse_stream(actual)?;
    let mut at = 0;
    while at < expected.len() {
        let epoch = expected[at].epoch;
        let end = at
            + expected[at..]
                .iter()
                .take_while(|e| e.epoch == epoch)
                .count();
        ensure!(
            frames.len() >= end,
            "got {} frames, expected {} (missing from step {epoch} on: {} from {})",
            frames.len(),
            expected.len(),
            expected[frames.len().max(at)].payload.len(),
            show(&expected[frames.len().max(at)].sender)
        );
        let mut want: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
        let mut got: BTreeMap<&[u8], Vec<&[u8]>> = BTreeMap::new();
        for e in &expected[at..end] {
            want.entry(&e.sender).or_default().push(&e.payload);
        }
        for (sender, payload) in &frames[at..end] {
            got.entry(sender).or_default().push(payload);
        }
        if want != got {
            let summary = |m: &BTreeMap<&[u8], Vec<&[u8]>>| {
                m.iter()
                    .map(|(s, p)| {
                        format!(
                            "{}: {:?}",
                            show(s),
                            p.iter().map(|p| p.len()).collect::<Vec<_>>()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            // The first payload that differs, and where.
            let mut first = String::new();
            for (sender, payloads) in &want {
                let theirs = got.get(sender).map(Vec::as_slice).unwrap_or_default();
                let mismatch = payloads
                    .iter()
                    .zip(theirs)
                    .enumerate()
                    .find(|(_, (a, b))| a != b);
                if let Some((i, (a, b))) = mismatch {
                    let byte = a.iter().zip(b.iter()).take_while(|(x, y)| x == y).count();
                    first = format!("; frame {i} from {} differs at byte {byte}", show(sender));
                    break;
                }
            }
            return Err(format!(
                "frames {at}..{end} (step {epoch}) differ: expected {{{}}} got {{{}}} (payload lengths){first}",
                summary(&want),
                summary(&got)
            ));
        }
        at = end;
    }
    ensure!(
        frames.len() == expected.len(),
        "got {} frames, expected {}; first extra from {} ({} bytes)",
        frames.len(),
        expected.len(),
        show(&frames[expected.len()].0),
        frames[expected.len()].1.len()
    );
    Ok(())
}
