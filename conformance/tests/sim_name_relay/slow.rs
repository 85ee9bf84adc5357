//! NR-12: a receiver that does not read, the senders the relay must pause, a
//! bystander pair it must not, and the checks that nothing is lost or over the cap.

use ferry_conformance::sim::{Case, ClientId, SimConfig, SimRng};
use ferry_core::name_relay::server::{CloseReason, Config};
use ferry_core::name_relay::wire::WireError;

use crate::support::{Delivery, Relay, frame, parse_stream, register, show};

/// How a back-pressure run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The receiver reads everything.
    Reads,
    /// The receiver leaves without reading: paused senders resume, their frames
    /// for it are dropped (NR-12, NR-8).
    Leaves,
}

struct SlowReceiver {
    relay: Relay,
    rng: SimRng,
    cap: usize,
    window: usize,
    max_payload: usize,
    receiver: ClientId,
    /// Who sends to the receiver (the receiver itself among them, sometimes: NR-15).
    senders: Vec<(ClientId, Vec<u8>)>,
    /// Per sender: the frames it sent to the receiver, in order.
    sent: Vec<Vec<Vec<u8>>>,
    /// The sender that ended with malformed bytes (NR-5), if any.
    malformed: Option<usize>,
    bystanders: (ClientId, ClientId),
    bystander_sent: Vec<Vec<u8>>,
    bytes_to_receiver: usize,
    toggle: bool,
    ending: Ending,
}

impl SlowReceiver {
    /// `others` senders, plus the receiver itself if `self_send`.
    fn new(case: Case, others: usize, self_send: bool) -> Self {
        let mut rng = case.rng("scenario");
        let cap = rng.range_usize(1024..=32 << 10);
        let max_payload = rng.range_usize(1..=8 << 10);
        let config = Config {
            max_queued_bytes: cap,
            max_frame_len: 64 << 10,
            ..Config::default()
        };
        let sim_config = SimConfig {
            // Half the cases deliver read-ahead bytes after PauseRead (up to the
            // contract's MAX_READ_AHEAD).
            read_ahead: if rng.chance(0.5) { 0.5 } else { 0.0 },
            max_chunk: *rng.pick(&[64, 4096, 16 << 10]).expect("non-empty"),
            ..SimConfig::default()
        };
        let toggle = rng.chance(0.3);
        let ending = if self_send || rng.chance(0.7) {
            Ending::Reads
        } else {
            Ending::Leaves
        };
        let mut relay = Relay::start(case.seed, config, sim_config);
        let receiver = register(&mut relay, b"receiver");
        relay.sim.client_set_reading(receiver, false);
        let window = rng.range_usize(512..=16 << 10);
        relay.sim.client_set_window(receiver, window);
        let mut senders: Vec<(ClientId, Vec<u8>)> = (0..others)
            .map(|i| {
                let name = format!("sender{i}").into_bytes();
                (register(&mut relay, &name), name)
            })
            .collect();
        if self_send {
            senders.push((receiver, b"receiver".to_vec())); // NR-15 under NR-12
        }
        let bystanders = (register(&mut relay, b"x"), register(&mut relay, b"y"));
        Self {
            relay,
            rng,
            cap,
            window,
            max_payload,
            receiver,
            sent: vec![Vec::new(); senders.len()],
            senders,
            malformed: None,
            bystanders,
            bystander_sent: Vec::new(),
            bytes_to_receiver: 0,
            toggle,
            ending,
        }
    }

    /// The largest frame the relay can queue to the receiver.
    fn one_frame(&self) -> usize {
        let longest = self.senders.iter().map(|(_, n)| n.len()).max().unwrap_or(0);
        frame(&vec![b'n'; longest], &vec![0; self.max_payload]).len()
    }

    fn senders_step(&mut self) {
        let s = self.rng.index(self.senders.len());
        let n = self.rng.range(1..=4);
        let mut bytes = Vec::new();
        for _ in 0..n {
            let len = self.rng.range_usize(0..=self.max_payload);
            let payload = self.rng.bytes(len);
            if payload.is_empty() && self.senders[s].0 == self.receiver {
                continue; // that would be a keep-alive (NR-10)
            }
            let f = frame(&self.senders[s].1, &payload);
            self.bytes_to_receiver += f.len();
            bytes.extend_from_slice(&frame(b"receiver", &payload));
            self.sent[s].push(payload);
        }
        self.relay.sim.client_send(self.senders[s].0, &bytes);
    }

    fn bystander_step(&mut self) {
        let len = self.rng.range_usize(0..=2000);
        let payload = self.rng.bytes(len);
        self.relay
            .sim
            .client_send(self.bystanders.0, &frame(b"y", &payload));
        self.bystander_sent.push(payload);
    }

    fn check_bounded(&self) -> Result<(), String> {
        let peak = self.relay.sim.client_peak_queued(self.receiver);
        let bound = self.cap + self.one_frame();
        ensure!(
            peak <= bound,
            "NR-12: the relay queued {peak} bytes to the receiver, more than the cap {} plus one frame ({bound})",
            self.cap
        );
        Ok(())
    }

    /// Others are unaffected: the bystander's frames all arrived, in order.
    fn check_bystanders(&self) -> Result<(), String> {
        let (x, y) = self.bystanders;
        ensure!(
            !self.relay.sim.client_paused(x),
            "NR-12: an unrelated sender is paused"
        );
        let want: Vec<Delivery> = self
            .bystander_sent
            .iter()
            .map(|p| (b"x".to_vec(), p.clone()))
            .collect();
        let got = parse_stream(self.relay.sim.client_received(y))?;
        ensure!(
            got == want,
            "NR-12: the bystander got {} frames of {}",
            got.len(),
            want.len()
        );
        Ok(())
    }

    /// After the end: nobody is left paused; the malformed sender, and only it,
    /// was closed, for its error.
    fn check_senders(&mut self) -> Result<(), String> {
        for (s, (id, name)) in self.senders.iter().enumerate() {
            let closed = self.relay.sim.client_closed_by_remote(*id);
            if Some(s) == self.malformed {
                ensure!(
                    closed,
                    "NR-5: {} sent malformed bytes and is open",
                    show(name)
                );
            } else if *id != self.receiver {
                ensure!(!closed, "{} was closed", show(name));
                ensure!(
                    !self.relay.sim.client_paused(*id),
                    "{} still paused",
                    show(name)
                );
            }
        }
        let closes = self.relay.closes();
        let malformed: Vec<_> = closes
            .iter()
            .filter(|(_, r)| matches!(r, CloseReason::Malformed(_)))
            .collect();
        ensure!(
            malformed.len() == usize::from(self.malformed.is_some())
                && malformed
                    .iter()
                    .all(|(_, r)| *r == CloseReason::Malformed(WireError::EmptyName)),
            "NR-5: closes {closes:?}"
        );
        Ok(())
    }

    fn check_all_delivered(&mut self) -> Result<(), String> {
        let got = parse_stream(self.relay.sim.client_received(self.receiver))?;
        for (s, (_, name)) in self.senders.iter().enumerate() {
            let from: Vec<&Vec<u8>> = got
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, p)| p)
                .collect();
            let want: Vec<&Vec<u8>> = self.sent[s].iter().collect();
            ensure!(
                from == want,
                "NR-12: the receiver got {} of the {} frames of {} (or in another order)",
                from.len(),
                want.len(),
                show(name)
            );
        }
        let total: usize = self.sent.iter().map(Vec::len).sum();
        ensure!(
            got.len() == total,
            "NR-12: {} frames, {total} sent",
            got.len()
        );
        let stats = self.relay.stats();
        ensure!(
            stats.frames_dropped == 0
                && stats.closed_by_relay == u64::from(self.malformed.is_some()),
            "NR-12: nothing is dropped or closed: {stats:?}"
        );
        Ok(())
    }

    /// The receiver left: every frame was either queued to it before it left, or
    /// dropped as for an unknown name; none is lost or left waiting.
    fn check_all_handled(&mut self) -> Result<(), String> {
        let total: u64 = self.sent.iter().map(|s| s.len() as u64).sum();
        let stats = self.relay.stats();
        ensure!(
            stats.frames_delivered - self.bystander_sent.len() as u64 + stats.frames_dropped
                == total,
            "NR-12, NR-8: {total} frames for the receiver, {stats:?}"
        );
        for (id, name) in &self.senders {
            ensure!(
                self.relay.sim.client_unread(*id) == 0,
                "{} has unread bytes",
                show(name)
            );
        }
        Ok(())
    }

    /// Phase one: the receiver does not read (or only sometimes); phase two: it
    /// reads, or leaves.
    fn run(&mut self, steps: usize) -> Result<(), String> {
        for _ in 0..steps {
            if self.rng.chance(0.75) {
                self.senders_step();
            } else {
                self.bystander_step();
            }
            if self.toggle && self.rng.chance(0.2) {
                let reading = self.rng.chance(0.5);
                self.relay.sim.client_set_reading(self.receiver, reading);
            }
            self.relay.sim.run_until_idle();
            self.check_bounded()?;
            self.check_bystanders()?;
        }
        if !self.toggle {
            // Unpaused, the relay would hold all but a window of it: over the cap.
            let sent = self.bytes_to_receiver;
            let paused = self
                .senders
                .iter()
                .any(|(id, _)| self.relay.sim.client_paused(*id));
            ensure!(
                sent <= self.cap + self.window || paused,
                "NR-12: {sent} bytes for a receiver that does not read, cap {}, and no sender is paused",
                self.cap
            );
        }
        if self.rng.chance(0.3) {
            // A (maybe paused) sender ends with bytes that are not the protocol.
            let s = self.rng.index(self.senders.len());
            if self.senders[s].0 != self.receiver {
                self.relay.sim.client_send(self.senders[s].0, b"|5|oops");
                self.malformed = Some(s);
            }
        }
        match self.ending {
            Ending::Reads => {
                self.relay.sim.client_set_reading(self.receiver, true);
                self.relay.sim.run_until_idle();
                self.check_bounded()?;
                self.check_all_delivered()?;
            }
            Ending::Leaves => {
                self.relay.sim.client_close(self.receiver);
                self.relay.sim.run_until_idle();
                self.check_all_handled()?;
            }
        }
        self.check_bystanders()?;
        self.check_senders()
    }

    fn context(&self, error: String) -> String {
        format!(
            "{error}\ncap {}, window {}, largest frame {}, {} bytes sent to the receiver, \
             toggle {}, ending {:?}, malformed {:?}, senders {:?}\n--- {}",
            self.cap,
            self.window,
            self.one_frame(),
            self.bytes_to_receiver,
            self.toggle,
            self.ending,
            self.malformed,
            self.senders
                .iter()
                .map(|(_, n)| String::from_utf8_lossy(n))
                .collect::<Vec<_>>(),
            self.relay.sim.describe()
        )
    }
}

pub(crate) fn slow_receiver(case: Case, others: usize, self_send: bool) -> Result<(), String> {
    let mut s = SlowReceiver::new(case, others, self_send);
    s.run(case.size).map_err(|e| s.context(e))
}
