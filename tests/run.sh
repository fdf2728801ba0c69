#!/usr/bin/env bash
# The whole test suite, as the README's test command: Rust unit and sqllogictest tests, then
# end-to-end tests that start the real `streampulse` binary and drive it with the ADBC Flight
# SQL driver, pyarrow.flight, and a local S3-compatible server (moto).
set -euo pipefail
cd "$(dirname "$0")/.."
# The same target folder as `cargo run` (README command 1) unless one is set: one build for both.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust (https://rustup.rs)" >&2
  exit 1
fi

echo "== Python test clients"
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

# One build: `cargo test` also builds the `streampulse` binary (the Rust end-to-end test runs
# it), with the same features, so the Python tests use that binary rather than a second build.
echo "== build and Rust tests (unit, sqllogictest, Flight SQL client)"
cargo test --workspace --locked

echo "== end-to-end tests (real server, real clients)"
export STREAMPULSE_BIN="$CARGO_TARGET_DIR/debug/streampulse"
python3 -m pytest -q tests "$@"
