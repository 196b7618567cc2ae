#!/usr/bin/env bash
# The benchmark suite: builds release binaries and runs bench/run.py.
#   bench/run.sh           the full run written down in BENCHMARKS.md (~27 min)
#   bench/run.sh --quick   a short smoke run
# Loopback only; nothing else should be running on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q
exec python3 bench/run.py "$@"
