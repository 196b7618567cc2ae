#!/usr/bin/env bash
# Runs every test of fleetwire: formatting, lints, the no_std build, the
# Rust unit and integration tests (real promtool, Prometheus, aioquic and
# nats-server on loopback), the Python SDK (its independent codec against the
# golden vectors, and against a live server), and a short fuzz run. Installs
# what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "no_std build of fleetwire-proto"
cargo build -q -p fleetwire-proto --no-default-features
if rustup target list --installed 2>/dev/null | grep -q thumbv7em-none-eabihf; then
  cargo build -q -p fleetwire-proto --no-default-features --target thumbv7em-none-eabihf
  echo "built for thumbv7em-none-eabihf (Cortex-M4F, no std, no allocator)"
fi

step "cargo test --workspace"
cargo test --workspace

step "C SDK (sdk/c): gcc/clang -Werror, ASan+UBSan, C++, Cortex-M4 build and size table"
sdk/c/test.sh

step "Python SDK (sdk/python): golden vectors, sender, CLI, live server"
python3 -m pytest -q sdk/python

if command -v cargo-fuzz >/dev/null; then
  step "short fuzz runs (cargo fuzz: proto/fuzz decode, fuzz/ ingest)"
  for dir in proto/fuzz fuzz; do
    (cd "$dir" && for t in $(cargo fuzz list --fuzz-dir . 2>/dev/null); do
       mkdir -p "corpus/$t"
       # New inputs go to corpus/ (not tracked); seeds/ is read only.
       out=$(RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" --fuzz-dir . "corpus/$t" "seeds/$t" -- -max_total_time=20 2>&1) || { echo "$out" | grep -v "^#" | tail -n 60; echo "fuzz target $dir/$t failed"; exit 1; }
       echo "$dir/$t: $(echo "$out" | grep -E "^Done" || true)"
     done)
  done
fi

step "all tests passed"
