//! A scenario: the relay in a simulation, the reference model beside it, and the
//! checks that they agree after every settled step.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ferry_conformance::sim::{Case, Chunking, ClientId, SimConfig, SimRng};
use ferry_core::ConnId;
use ferry_core::name_relay::server::{CloseReason, Config, Stats};

use crate::model::{Fate, Model, check_stream};
use crate::steps::{Mix, gen_name};
use crate::support::{Relay, show};

pub(crate) struct Scenario {
    pub(crate) relay: Relay,
    pub(crate) rng: SimRng,
    pub(crate) model: Model,
    pub(crate) mix: Mix,
    pub(crate) max_open: usize,
    pub(crate) pool: Vec<Vec<u8>>,
    pub(crate) log: Vec<String>,
}

impl Scenario {
    pub(crate) fn new(case: Case, mix: Mix, chunking: Chunking) -> Self {
        let mut rng = case.rng("scenario");
        let max_open = rng.range_usize(2..=8);
        let max_name_len = if rng.chance(0.5) {
            255
        } else {
            rng.range_usize(3..=32)
        };
        let config = Config {
            max_name_len,
            max_frame_len: rng.range_usize(4096..=70_000),
            max_connections: if mix.limit {
                rng.range_usize(1..=max_open)
            } else {
                10_000
            },
            ..Config::default()
        };
        let sim_config = SimConfig {
            chunking,
            max_chunk: *rng.pick(&[7, 512, 16 << 10]).expect("non-empty"),
            ..SimConfig::default()
        };
        let mut pool: Vec<Vec<u8>> = Vec::new();
        while pool.len() < max_open + mix.spare_names {
            let name = gen_name(&mut rng, max_name_len);
            if !pool.contains(&name) {
                pool.push(name);
            }
        }
        let relay = Relay::start(case.seed, config.clone(), sim_config);
        Self {
            relay,
            rng,
            model: Model::new(config),
            mix,
            max_open,
            pool,
            log: Vec::new(),
        }
    }

    pub(crate) fn config(&self) -> &Config {
        &self.model.config
    }

    /// Send `bytes` from `client`, in one to three writes.
    pub(crate) fn send(&mut self, client: ClientId, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = if self.rng.chance(0.7) {
                rest.len()
            } else {
                self.rng.range_usize(1..=rest.len())
            };
            self.relay.sim.client_send(client, &rest[..n]);
            rest = &rest[n..];
        }
    }

    /// After a settled step: the relay agrees with the model.
    pub(crate) fn check_step(&mut self) -> Result<(), String> {
        let by_conn: BTreeMap<ConnId, usize> = (0..self.model.clients.len())
            .filter_map(|c| Some((self.relay.sim.client_conn(self.model.clients[c].id)?, c)))
            .collect();
        let mut got: Vec<(usize, CloseReason)> = Vec::new();
        for (conn, reason) in self.relay.closes() {
            let c = by_conn
                .get(&conn)
                .ok_or_else(|| format!("relay closed unknown {conn}"))?;
            got.push((*c, reason));
        }
        let mut want = std::mem::take(&mut self.model.closes);
        got.sort_by_key(|(c, _)| *c);
        want.sort_by_key(|(c, _)| *c);
        ensure!(got == want, "closes: relay {got:?}, model {want:?}");

        let stats = self.relay.stats();
        ensure!(
            stats == self.model.stats,
            "stats: relay {stats:?}, model {:?}",
            self.model.stats
        );
        let count = self.relay.server().connection_count();
        ensure!(
            count == self.model.open,
            "connections: relay {count}, model {}",
            self.model.open
        );
        for name in &self.pool {
            let holder = self.relay.server().holder_of(name);
            let want = self
                .model
                .names
                .get(name)
                .and_then(|&c| self.relay.sim.client_conn(self.model.clients[c].id));
            ensure!(
                holder == want,
                "holder of {}: relay {holder:?}, model {want:?}",
                show(name)
            );
        }
        for (c, client) in self.model.clients.iter().enumerate() {
            let closed = self.relay.sim.client_closed_by_remote(client.id);
            ensure!(
                closed == (client.fate == Fate::ClosedByRelay),
                "client {c}: closed by the relay: {closed}, model says {:?}",
                client.fate
            );
        }
        Ok(())
    }

    pub(crate) fn check_streams(&self) -> Result<(), String> {
        for (c, client) in self.model.clients.iter().enumerate() {
            check_stream(self.relay.sim.client_received(client.id), &client.expected)
                .map_err(|e| format!("client {c} ({:?}): {e}", client.name.as_deref().map(show)))?;
        }
        Ok(())
    }

    pub(crate) fn run(&mut self, steps: usize) -> Result<(), String> {
        for _ in 0..steps {
            self.step();
            self.relay.sim.run_until_idle();
            self.check_step()?;
        }
        self.check_streams()
    }

    pub(crate) fn context(&self, error: String) -> String {
        let mut out = format!("{error}\n--- steps (last 30 of {}):\n", self.log.len());
        for (i, line) in self
            .log
            .iter()
            .enumerate()
            .skip(self.log.len().saturating_sub(30))
        {
            let _ = writeln!(out, "  {i}: {line}");
        }
        out.push_str("--- ");
        out.push_str(&self.relay.sim.describe());
        out
    }

    /// Everything each client read, the counters, and the trace hash.
    pub(crate) fn outcome(&self) -> (Vec<Vec<u8>>, Stats, u64) {
        let streams = self
            .model
            .clients
            .iter()
            .map(|c| self.relay.sim.client_received(c.id).to_vec())
            .collect();
        (streams, self.relay.stats(), self.relay.sim.trace_hash())
    }
}

pub(crate) fn run_mix(case: Case, mix: Mix, chunking: Chunking) -> Result<Scenario, String> {
    let mut scenario = Scenario::new(case, mix, chunking);
    match scenario.run(case.size) {
        Ok(()) => Ok(scenario),
        Err(e) => Err(scenario.context(e)),
    }
}

/// A scenario of `mix`, streams cut at random: the relay agrees with the model.
pub(crate) fn matches_model(case: Case, mix: Mix) -> Result<(), String> {
    run_mix(case, mix, Chunking::Random).map(drop)
}
