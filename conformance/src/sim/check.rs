//! Seeded properties: quickcheck draws the cases, a failing case is shrunk and
//! printed with the one command that replays it exactly.
//!
//! A case is a seed and a size (how many steps the scenario takes). Scenarios draw
//! everything else from the seed through [`Case::rng`], one named stream per
//! purpose, so a shorter case with the same seed runs the same first steps: that is
//! how a failure is shrunk.
//!
//! Environment:
//! - `FERRY_SIM_SEED=<u64>` (and optionally `FERRY_SIM_SIZE=<n>`): run exactly that case.
//! - `FERRY_SIM_CASES=<n>`: how many random cases each property runs.
//! - `FERRY_SIM_TRACE=1`: echo the simulator's trace to stderr (with `--nocapture`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult, Testable};

use super::rng::SimRng;

/// One run of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// Fixes every random choice of the run.
    pub seed: u64,
    /// How many steps the scenario takes (its meaning is the scenario's).
    pub size: usize,
}

impl Case {
    /// An independent random stream of this case, by purpose (`"scenario"`, ...).
    pub fn rng(&self, stream: &str) -> SimRng {
        SimRng::stream(self.seed, stream)
    }
}

/// A scenario: `Ok` if every check held, otherwise what went wrong.
pub type Scenario = fn(Case) -> Result<(), String>;

/// A named property: which test it is (to print the replay command), how many
/// random cases it runs and how big they get.
#[derive(Debug, Clone, Copy)]
pub struct Property {
    /// The integration test binary (`env!("CARGO_CRATE_NAME")` in the test file).
    pub test: &'static str,
    /// The `#[test]` function's name.
    pub name: &'static str,
    /// Random cases per run (overridden by `FERRY_SIM_CASES`).
    pub cases: u64,
    /// The largest `Case::size`.
    pub max_size: usize,
}

impl Property {
    fn replay_command(&self, case: Case) -> String {
        format!(
            "FERRY_SIM_SEED={} FERRY_SIM_SIZE={} cargo test -p ferry-conformance --test {} {} -- --exact",
            case.seed, case.size, self.test, self.name
        )
    }

    fn report(&self, case: Case, first: Case, message: &str) -> String {
        let shrunk = if first == case {
            String::new()
        } else {
            format!(" (shrunk from size {})", first.size)
        };
        format!(
            "\n[ferry-sim] {} failed with seed {} size {}{shrunk}\n{}\n[ferry-sim] replay: {}\n",
            self.name,
            case.seed,
            case.size,
            message.trim_end(),
            self.replay_command(case)
        )
    }
}

/// Run `scenario` once, turning a panic into an `Err`.
pub fn run_case(scenario: Scenario, case: Case) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| scenario(case))) {
        Ok(result) => result,
        Err(payload) => Err(if let Some(s) = payload.downcast_ref::<&str>() {
            format!("panicked: {s}")
        } else if let Some(s) = payload.downcast_ref::<String>() {
            format!("panicked: {s}")
        } else {
            "panicked".to_owned()
        }),
    }
}

/// The smallest size that still fails with the same seed (sizes are tried from 1
/// up, so the answer is the true minimum for this seed), within a time budget.
fn shrink(scenario: Scenario, failed: Case, message: String) -> (Case, String) {
    let started = Instant::now();
    for size in 1..failed.size {
        if started.elapsed().as_secs() >= 20 {
            break;
        }
        let case = Case { size, ..failed };
        if let Err(message) = run_case(scenario, case) {
            return (case, message);
        }
    }
    (failed, message)
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={value:?} is not an unsigned integer"),
    }
}

/// The case `FERRY_SIM_SEED` / `FERRY_SIM_SIZE` ask to replay, if any.
pub fn replay_case(max_size: usize) -> Option<Case> {
    let seed = env_u64("FERRY_SIM_SEED")?;
    let size = env_u64("FERRY_SIM_SIZE").map_or(max_size, |s| s as usize);
    Some(Case { seed, size })
}

struct Runner {
    property: Property,
    scenario: Scenario,
}

impl Testable for Runner {
    fn result(&self, g: &mut Gen) -> TestResult {
        let case = Case {
            seed: u64::arbitrary(g),
            size: 1 + usize::arbitrary(g) % self.property.max_size.max(1),
        };
        match run_case(self.scenario, case) {
            Ok(()) => TestResult::passed(),
            Err(message) => {
                let (small, message) = shrink(self.scenario, case, message);
                let report = self.property.report(small, case, &message);
                eprintln!("{report}");
                TestResult::error(report)
            }
        }
    }
}

/// Run `property`: the case from `FERRY_SIM_SEED` if set, otherwise `cases` random
/// ones. Panics (failing the test) with the seed and the replay command.
pub fn check(property: Property, scenario: Scenario) {
    if let Some(case) = replay_case(property.max_size) {
        eprintln!(
            "[ferry-sim] {}: replaying seed {} size {}",
            property.name, case.seed, case.size
        );
        if let Err(message) = run_case(scenario, case) {
            panic!("{}", property.report(case, case, &message));
        }
        return;
    }
    let cases = env_u64("FERRY_SIM_CASES").unwrap_or(property.cases).max(1);
    QuickCheck::new()
        .tests(cases)
        .max_tests(cases.saturating_mul(10))
        .quickcheck(Runner { property, scenario });
}

/// Run one fixed case (a deterministic test), or the one `FERRY_SIM_SEED` names.
pub fn check_case(property: Property, case: Case, scenario: Scenario) {
    let case = replay_case(case.size).unwrap_or(case);
    if let Err(message) = run_case(scenario, case) {
        panic!("{}", property.report(case, case, &message));
    }
}
