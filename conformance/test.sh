#!/usr/bin/env bash
# Every test of ferry: formatting, lints (the core's determinism rules among them),
# unit, simulation, conformance over real sockets, and the Python client.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --locked
