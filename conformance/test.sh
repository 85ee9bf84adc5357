#!/usr/bin/env bash
# Every test of ferry: formatting, lints (the core's determinism rules among them),
# unit, simulation, conformance over real sockets, and the Python client.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# Third-party clients (Python `websockets`, ...) live in a venv of their own.
if [ -z "${FERRY_PYTHON:-}" ]; then
  if ! conformance/.venv/bin/python -c 'import websockets' 2>/dev/null; then
    python3 -m venv conformance/.venv
    conformance/.venv/bin/pip install --quiet -r conformance/clients/requirements.txt
  fi
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --locked
